#include "http/stripe_signature.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace ledger::http {
namespace {

constexpr int64_t kSecond = 1'000'000;

// Vectors made by Stripe's own library, not by the code under test: stripe-node 23.1.0
// (`npm install stripe` in a scratch directory), with
//   stripe.webhooks.generateTestHeaderString({payload, secret, timestamp})
// and each header checked by the same library's stripe.webhooks.constructEvent(payload, header,
// secret, 300, undefined, timestamp * 1000) before it was copied here.
struct ReferenceVector {
  std::string payload;
  std::string secret;
  int64_t timestamp;
  std::string header;
};

const std::vector<ReferenceVector>& StripeNodeVectors() {
  static const std::vector<ReferenceVector> vectors = {
      {R"({"id":"evt_1NodeVector","object":"event","type":"customer.subscription.updated","created":1700000000,"data":{"object":{"id":"sub_1"}}})",
       "whsec_test_secret_one", 1700000000,
       "t=1700000000,v1=7c0f94cd33215c871989725d1095ba5e449a500f1de77d5977685d5baf592bc4"},
      // Pretty-printed, with non-ASCII text: the signed bytes are the body's UTF-8 bytes as sent.
      {"{\n  \"id\": \"evt_2NodeVector\",\n  \"object\": \"event\",\n  \"type\": \"invoice.paid\",\n"
       "  \"note\": \"caf\xc3\xa9 \xe2\x98\x83\"\n}",
       "whsec_5c1bdb2a7f9e4d3c8b6a", 1731000000,
       "t=1731000000,v1=a893b81b4ed46bfe3dac0b277ee51684514590a1b9a21f81765b2d6767e90e60"},
      // A secret that looks like base64: it is used as plain bytes, never decoded.
      {R"({"id":"evt_3NodeVector","type":"checkout.session.completed","created":1600000000})",
       "whsec_rotated+/=base64looking", 1600000123,
       "t=1600000123,v1=70a6bd63a79d20985a9387ea7f346099f7c204131b2c8bc109e9d06fa29f4c40"},
  };
  return vectors;
}

constexpr char kSecret[] = "whsec_primary";
constexpr char kOtherSecret[] = "whsec_rotated";
constexpr char kPayload[] = R"({"id":"evt_1","type":"invoice.paid","created":1700000000})";
constexpr int64_t kT = 1'700'000'000;

std::string V1(std::string_view secret, int64_t t, std::string_view payload) {
  return ComputeStripeSignature(secret, t, payload);
}

TEST(StripeSignatureTest, MatchesStripeNodeReferenceVectors) {
  for (const ReferenceVector& v : StripeNodeVectors()) {
    EXPECT_EQ(MakeStripeSignatureHeader({v.secret}, v.timestamp, v.payload), v.header);
    ManualClock clock(v.timestamp * kSecond);
    StripeSignatureVerifier verifier({v.secret}, &clock);
    Status s = verifier.Verify(v.header, v.payload);
    EXPECT_TRUE(s.ok()) << s.ToString() << " for " << v.header;
    // One flipped byte of the body breaks it.
    std::string tampered = v.payload;
    tampered[tampered.size() / 2] ^= 1;
    EXPECT_EQ(verifier.Verify(v.header, tampered).problem(), "invalid_signature");
  }
}

TEST(StripeSignatureTest, AcceptsValidSignature) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  std::string header = "t=" + std::to_string(kT) + ",v1=" + V1(kSecret, kT, kPayload);
  EXPECT_TRUE(verifier.Verify(header, kPayload).ok());
}

TEST(StripeSignatureTest, AcceptsWhenOnlyTheSecondV1Matches) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  std::string header = "t=" + std::to_string(kT) + ",v1=" + V1("whsec_unknown", kT, kPayload) +
                       ",v1=" + V1(kSecret, kT, kPayload);
  EXPECT_TRUE(verifier.Verify(header, kPayload).ok());
  // And with v0 and unknown schemes mixed in, which are ignored.
  header = "t=" + std::to_string(kT) + ",v0=" + V1(kSecret, kT, kPayload) +
           ",v1=deadbeef,x9=whatever,v1=" + V1(kSecret, kT, kPayload);
  EXPECT_TRUE(verifier.Verify(header, kPayload).ok());
}

TEST(StripeSignatureTest, RejectsOnlyV0) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  // v0 carries a *correct* v1-style HMAC: it must still not count.
  std::string header = "t=" + std::to_string(kT) + ",v0=" + V1(kSecret, kT, kPayload);
  Status s = verifier.Verify(header, kPayload);
  EXPECT_EQ(s.problem(), "invalid_signature");
  EXPECT_NE(s.message().find("no v1"), std::string::npos) << s.message();
}

TEST(StripeSignatureTest, RejectsTamperedBody) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  std::string header = MakeStripeSignatureHeader({kSecret}, kT, kPayload);
  std::string tampered = kPayload;
  tampered.replace(tampered.find("invoice.paid"), 12, "invoice.void");
  EXPECT_EQ(verifier.Verify(header, tampered).problem(), "invalid_signature");
  // Whitespace counts: the raw body is signed, not its JSON value.
  EXPECT_EQ(verifier.Verify(header, std::string(kPayload) + "\n").problem(), "invalid_signature");
  // A signature over the same body at another timestamp does not transfer.
  std::string moved = "t=" + std::to_string(kT + 1) + ",v1=" + V1(kSecret, kT, kPayload);
  EXPECT_EQ(verifier.Verify(moved, kPayload).problem(), "invalid_signature");
}

TEST(StripeSignatureTest, EnforcesToleranceBothWays) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  auto header_at = [](int64_t t) { return MakeStripeSignatureHeader({kSecret}, t, kPayload); };
  EXPECT_TRUE(verifier.Verify(header_at(kT - 300), kPayload).ok());
  EXPECT_TRUE(verifier.Verify(header_at(kT + 300), kPayload).ok());
  Status old = verifier.Verify(header_at(kT - 301), kPayload);
  EXPECT_EQ(old.problem(), "invalid_signature");
  EXPECT_NE(old.message().find("tolerance"), std::string::npos);
  EXPECT_EQ(verifier.Verify(header_at(kT + 301), kPayload).problem(), "invalid_signature");
  EXPECT_EQ(verifier.Verify(header_at(0), kPayload).problem(), "invalid_signature");
  // The clock moving is what makes a once-valid delivery stale.
  std::string header = header_at(kT);
  clock.Advance(300 * kSecond);
  EXPECT_TRUE(verifier.Verify(header, kPayload).ok());
  clock.Advance(1 * kSecond);
  EXPECT_EQ(verifier.Verify(header, kPayload).problem(), "invalid_signature");
}

TEST(StripeSignatureTest, AcceptsAnyConfiguredSecretForRotation) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret, kOtherSecret}, &clock);
  // Signed with the second configured secret only.
  EXPECT_TRUE(verifier.Verify(MakeStripeSignatureHeader({kOtherSecret}, kT, kPayload), kPayload)
                  .ok());
  // Stripe during rotation: one v1 per active secret.
  EXPECT_TRUE(verifier
                  .Verify(MakeStripeSignatureHeader({"whsec_old_gone", kOtherSecret}, kT,
                                                    kPayload),
                          kPayload)
                  .ok());
  StripeSignatureVerifier only_first({kSecret}, &clock);
  EXPECT_EQ(only_first.Verify(MakeStripeSignatureHeader({kOtherSecret}, kT, kPayload), kPayload)
                .problem(),
            "invalid_signature");
}

// The route binds each secret to a mode, so it must know which secret signed a delivery.
TEST(StripeSignatureTest, SaysWhichSecretsSigned) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret, kOtherSecret}, &clock);
  std::vector<bool> matched;
  ASSERT_TRUE(verifier
                  .Verify(MakeStripeSignatureHeader({kOtherSecret}, kT, kPayload), kPayload,
                          &matched)
                  .ok());
  EXPECT_EQ(matched, (std::vector<bool>{false, true}));
  ASSERT_TRUE(verifier
                  .Verify(MakeStripeSignatureHeader({kOtherSecret, kSecret}, kT, kPayload),
                          kPayload, &matched)
                  .ok());
  EXPECT_EQ(matched, (std::vector<bool>{true, true}));
}

TEST(StripeSignatureTest, AWebhookSecretEntrySaysItsModeOrTakesTheKeys) {
  StripeWebhookSecret s = ParseStripeWebhookSecret("test:whsec_a", true);
  EXPECT_EQ(s.secret, "whsec_a");
  EXPECT_EQ(s.livemode, std::optional<bool>(false));
  s = ParseStripeWebhookSecret("live:whsec_b", false);
  EXPECT_EQ(s.secret, "whsec_b");
  EXPECT_EQ(s.livemode, std::optional<bool>(true));
  s = ParseStripeWebhookSecret("whsec_c", true);  // bare: the key's mode
  EXPECT_EQ(s.secret, "whsec_c");
  EXPECT_EQ(s.livemode, std::optional<bool>(true));
  EXPECT_EQ(ParseStripeWebhookSecret("whsec_c", std::nullopt).livemode, std::nullopt);
}

TEST(StripeSignatureTest, RejectsMalformedHeaders) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  const std::string good = V1(kSecret, kT, kPayload);
  const std::string t = std::to_string(kT);
  const std::vector<std::string> malformed = {
      "",
      ",,,",
      "garbage",
      "v1=" + good,                                // no t
      "t=" + t,                                    // no v1
      "t=" + t + ",v1",                            // item without '='
      "t=,v1=" + good,                             // empty t
      "t=abc,v1=" + good,                          // t not a number
      "t=-" + t + ",v1=" + good,                   // signed t
      "t=" + t + "5,v1=" + good,                   // another t (outside tolerance)
      "t=" + t + ",t=" + t + ",v1=" + good,        // two t
      "t=1e9,v1=" + good,                          // t not decimal digits
      "t=" + t + ",v1=" + good.substr(0, 63),      // truncated signature
      "t=" + t + ",v1=" + std::string(good.size(), '0'),
      "T=" + t + ",V1=" + good,                    // keys are case-sensitive
      std::string(kStripeSignatureHeaderBytesMax + 1, 'a'),
  };
  for (const std::string& header : malformed) {
    Status s = verifier.Verify(header, kPayload);
    EXPECT_EQ(s.problem(), "invalid_signature") << "header: " << header.substr(0, 80);
  }
  // Uppercase hex is not what Stripe sends; the SDKs compare strings, so neither do we accept it.
  std::string upper = good;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  EXPECT_EQ(verifier.Verify("t=" + t + ",v1=" + upper, kPayload).problem(), "invalid_signature");
  // Too many v1 items.
  std::string many = "t=" + t;
  for (size_t i = 0; i <= kStripeSignatureV1Max; ++i) many += ",v1=" + good;
  EXPECT_EQ(verifier.Verify(many, kPayload).problem(), "invalid_signature");
  // Spaces around items are tolerated.
  EXPECT_TRUE(verifier.Verify(" t=" + t + " , v1=" + good + " ", kPayload).ok());
}

TEST(StripeSignatureTest, ParsesEveryV1InOrder) {
  StripeSignatureHeader parsed;
  ASSERT_TRUE(ParseStripeSignatureHeader("t=12,v1=aa,v0=bb,v1=cc,scheme=dd", &parsed).ok());
  EXPECT_EQ(parsed.timestamp, 12);
  EXPECT_EQ(parsed.v1, (std::vector<std::string>{"aa", "cc"}));
}

TEST(StripeSignatureTest, UnconfiguredIsUnavailableNotInvalid) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({}, &clock);
  EXPECT_FALSE(verifier.configured());
  Status s = verifier.Verify(MakeStripeSignatureHeader({kSecret}, kT, kPayload), kPayload);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.problem(), "stripe_webhook_not_configured");
}

TEST(StripeSignatureTest, MessagesNeverEchoSecretsOrSignatures) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret}, &clock);
  std::string v1 = V1(kSecret, kT, "other body");
  Status s = verifier.Verify("t=" + std::to_string(kT) + ",v1=" + v1, kPayload);
  EXPECT_EQ(s.message().find(v1), std::string::npos);
  EXPECT_EQ(s.message().find(kSecret), std::string::npos);
}

// A strict reading of a delivery: the body as signed, exactly one `t` item whose decimal digits
// are the signed timestamp (leading zeros allowed: Stripe's SDKs sign the parsed number), and a
// `v1` item equal to the expected signature, byte for byte (items split at ',', spaces and tabs
// around them trimmed). The verifier may accept an edited delivery only when this does.
bool StrictlyValid(std::string_view header, std::string_view body, std::string_view expected_v1) {
  if (body != kPayload) return false;
  int t_items = 0;
  bool t_ok = false, v1_ok = false;
  size_t at = 0;
  while (at <= header.size()) {
    size_t comma = header.find(',', at);
    if (comma == std::string_view::npos) comma = header.size();
    std::string_view item = header.substr(at, comma - at);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (item.substr(0, 2) == "t=") {
      ++t_items;
      std::string_view digits = item.substr(2);
      t_ok = !digits.empty() &&
             std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
      while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
      t_ok = t_ok && digits == std::to_string(kT);
    }
    if (item.substr(0, 3) == "v1=" && item.substr(3) == expected_v1) v1_ok = true;
    at = comma + 1;
  }
  return t_items == 1 && t_ok && v1_ok;
}

// Seeded random edits of a valid delivery: a byte of the header or the body replaced, dropped or
// added, items dropped, repeated or swapped, the timestamp moved. None is accepted unless the
// strict reading above accepts it too, and no answer echoes the signature. Edits that keep the
// signature — spaces around items, `v0`, unknown and other `v1` items, any order — are accepted.
TEST(StripeSignatureTest, RandomEditsAreAcceptedOnlyWhenTheSignatureStillHolds) {
  ManualClock clock(kT * kSecond);
  StripeSignatureVerifier verifier({kSecret, kOtherSecret}, &clock);
  const std::string good = V1(kSecret, kT, kPayload);
  const std::string t_item = "t=" + std::to_string(kT);
  const char* seed = std::getenv("LEDGER_FUZZ_SEED");  // another seed: LEDGER_FUZZ_SEED=N
  std::mt19937_64 rng(seed != nullptr ? std::strtoull(seed, nullptr, 10) : 20261205);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  static constexpr char kChars[] = "tv01=, abcdef0123456789x-\t\"{}";
  auto join = [&](std::vector<std::string> items) {
    std::string header;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) header += ',';
      header += std::string(pick(3), ' ') + items[i] + std::string(pick(3), ' ');
    }
    return header;
  };
  int accepted_neutral = 0, refused = 0;
  for (int i = 0; i < 1500; ++i) {
    std::vector<std::string> items = {t_item, "v1=" + good};
    // Neutral additions.
    if (pick(2) == 0) items.push_back("v0=" + V1("whsec_legacy", kT, kPayload));
    if (pick(2) == 0) items.push_back("x" + std::to_string(pick(9)) + "=ignored");
    if (pick(2) == 0) items.push_back("v1=" + V1("whsec_not_configured", kT, kPayload));
    std::shuffle(items.begin(), items.end(), rng);
    std::string header = join(items);
    std::string body = kPayload;
    if (i % 3 == 0) {
      Status s = verifier.Verify(header, body);
      EXPECT_TRUE(s.ok()) << s.ToString() << " for " << header;
      accepted_neutral += s.ok();
      continue;
    }
    const size_t edits = 1 + pick(3);
    for (size_t e = 0; e < edits; ++e) {
      std::string& target = pick(4) == 0 ? body : header;
      switch (pick(7)) {
        case 0:
          if (!target.empty()) target[pick(target.size())] = kChars[pick(sizeof(kChars) - 1)];
          break;
        case 1:
          if (!target.empty()) target.erase(pick(target.size()), 1);
          break;
        case 2: target.insert(pick(target.size() + 1), 1, kChars[pick(sizeof(kChars) - 1)]); break;
        case 3: {  // an item dropped
          std::vector<std::string> fewer = items;
          fewer.erase(fewer.begin() + static_cast<long>(pick(fewer.size())));
          header = join(fewer);
          break;
        }
        case 4: header += "," + t_item; break;  // `t` twice
        case 5: {  // the timestamp moved, the signature kept
          items[0] = "t=" + std::to_string(kT + 1 + static_cast<int64_t>(pick(100)));
          header = join(items);
          break;
        }
        default: header = join({t_item, "v1=" + good.substr(0, 1 + pick(good.size() - 1))}); break;
      }
    }
    Status s = verifier.Verify(header, body);
    if (s.ok()) {
      EXPECT_TRUE(StrictlyValid(header, body, good))
          << "accepted an edited delivery: header " << header << " body " << body;
      continue;
    }
    ++refused;
    EXPECT_EQ(s.problem(), "invalid_signature") << header;
    EXPECT_EQ(s.message().find(good), std::string::npos) << "the signature is echoed: " << s.message();
    EXPECT_EQ(s.message().find(kSecret), std::string::npos) << s.message();
  }
  EXPECT_EQ(accepted_neutral, 500);
  EXPECT_GT(refused, 800);
}

}  // namespace
}  // namespace ledger::http
