// Stripe-Signature parsing and verification (http/stripe_signature.h). Input: the header value,
// a line feed, then the raw body. A header that parses says the same once written back; the
// header Stripe would send for the body verifies, and the fuzzed one verifies only when one of
// its v1 values is that signature.
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "events/clock.h"
#include "http/stripe_signature.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

int FuzzStripeSignature(const uint8_t* data, size_t size) {
  constexpr int64_t kNowS = 1'750'000'000;
  static const ManualClock clock(kNowS * 1'000'000);
  static const std::vector<std::string> secrets = {"whsec_fuzz_live", "whsec_fuzz_test"};
  static const http::StripeSignatureVerifier verifier(secrets, &clock);
  std::string_view rest = AsText(data, size);
  const std::string header(TakeLine(&rest));
  const std::string payload(rest);

  http::StripeSignatureHeader parsed;
  if (http::ParseStripeSignatureHeader(header, &parsed).ok()) {
    LEDGER_FUZZ_CHECK(parsed.timestamp >= 0);
    LEDGER_FUZZ_CHECK(!parsed.v1.empty() && parsed.v1.size() <= http::kStripeSignatureV1Max);
    std::string written = "t=" + std::to_string(parsed.timestamp);
    bool plain = true;  // values without ',' or edge blanks survive being written back
    for (const std::string& v1 : parsed.v1) {
      written += ",v1=" + v1;
      plain = plain && v1.find(',') == std::string::npos && !v1.empty() && v1.front() != ' ' &&
              v1.front() != '\t' && v1.back() != ' ' && v1.back() != '\t';
    }
    http::StripeSignatureHeader again;
    if (plain && written.size() <= http::kStripeSignatureHeaderBytesMax) {
      LEDGER_FUZZ_CHECK(http::ParseStripeSignatureHeader(written, &again).ok());
      LEDGER_FUZZ_CHECK(again.timestamp == parsed.timestamp && again.v1 == parsed.v1);
    }
  }

  std::vector<bool> matched;
  const Status verified = verifier.Verify(header, payload, &matched);
  if (verified.ok()) {
    LEDGER_FUZZ_CHECK(matched.size() == secrets.size());
    LEDGER_FUZZ_CHECK(std::find(parsed.v1.begin(), parsed.v1.end(),
                                http::ComputeStripeSignature(secrets[0], parsed.timestamp,
                                                             payload)) != parsed.v1.end() ||
                      std::find(parsed.v1.begin(), parsed.v1.end(),
                                http::ComputeStripeSignature(secrets[1], parsed.timestamp,
                                                             payload)) != parsed.v1.end());
  } else {
    // Never the secret nor a signature in the message.
    LEDGER_FUZZ_CHECK(verified.message().find("whsec_") == std::string::npos);
  }
  const std::string signed_header = http::MakeStripeSignatureHeader({secrets[1]}, kNowS, payload);
  LEDGER_FUZZ_CHECK(verifier.Verify(signed_header, payload, &matched).ok());
  LEDGER_FUZZ_CHECK(!matched[0] && matched[1]);
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzStripeSignature)
