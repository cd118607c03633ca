#include "http/stripe_signature.h"

#include <limits>
#include <utility>

#include "events/types.h"

namespace ledger::http {

namespace {

Status Invalid(std::string message) {
  return Status::InvalidArgument("invalid_signature", std::move(message));
}

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A non-negative decimal number of seconds, at most 18 digits (no sign, no spaces).
bool ParseSeconds(std::string_view s, int64_t* out) {
  if (s.empty() || s.size() > 18) return false;
  int64_t value = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + (c - '0');
  }
  *out = value;
  return true;
}

}  // namespace

Status ParseStripeSignatureHeader(std::string_view header, StripeSignatureHeader* out) {
  *out = StripeSignatureHeader();
  if (header.empty()) return Invalid("missing Stripe-Signature header");
  if (header.size() > kStripeSignatureHeaderBytesMax) {
    return Invalid("Stripe-Signature header too long");
  }
  bool have_timestamp = false;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::string_view item = TrimSpaces(header.substr(0, comma));
    header = comma == std::string_view::npos ? std::string_view() : header.substr(comma + 1);
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) return Invalid("malformed Stripe-Signature item");
    std::string_view key = item.substr(0, eq);
    std::string_view value = item.substr(eq + 1);
    if (key == "t") {
      if (have_timestamp) return Invalid("more than one timestamp in Stripe-Signature");
      if (!ParseSeconds(value, &out->timestamp)) {
        return Invalid("malformed timestamp in Stripe-Signature");
      }
      have_timestamp = true;
    } else if (key == "v1") {
      if (out->v1.size() == kStripeSignatureV1Max) {
        return Invalid("too many v1 signatures in Stripe-Signature");
      }
      out->v1.emplace_back(value);
    }
    // v0 and unknown schemes are ignored.
  }
  if (!have_timestamp) return Invalid("no timestamp in Stripe-Signature");
  if (out->v1.empty()) return Invalid("no v1 signature in Stripe-Signature");
  return Status::OK();
}

std::string ComputeStripeSignature(std::string_view secret, int64_t timestamp,
                                   std::string_view payload) {
  std::string message = std::to_string(timestamp);
  message.push_back('.');
  message.append(payload);
  return HexEncode(HmacSha256(secret, message));
}

std::string MakeStripeSignatureHeader(const std::vector<std::string>& secrets, int64_t timestamp,
                                      std::string_view payload) {
  std::string header = "t=" + std::to_string(timestamp);
  for (const std::string& secret : secrets) {
    header += ",v1=" + ComputeStripeSignature(secret, timestamp, payload);
  }
  return header;
}

StripeWebhookSecret ParseStripeWebhookSecret(std::string_view entry,
                                             std::optional<bool> key_livemode) {
  for (auto [prefix, livemode] : {std::pair{std::string_view("live:"), true},
                                  std::pair{std::string_view("test:"), false}}) {
    if (entry.substr(0, prefix.size()) == prefix) {
      return StripeWebhookSecret{std::string(entry.substr(prefix.size())), livemode};
    }
  }
  return StripeWebhookSecret{std::string(entry), key_livemode, /*bare=*/true};
}

StripeSignatureVerifier::StripeSignatureVerifier(std::vector<std::string> secrets,
                                                 const Clock* clock, int64_t tolerance_seconds)
    : secrets_(std::move(secrets)),
      clock_(clock != nullptr ? clock : SystemClock::Default()),
      tolerance_seconds_(tolerance_seconds) {}

Status StripeSignatureVerifier::Verify(std::string_view header, std::string_view payload,
                                       std::vector<bool>* matched_secrets) const {
  if (secrets_.empty()) {
    return Status::Unavailable("stripe_webhook_not_configured",
                               "no Stripe webhook secret is configured (STRIPE_WEBHOOK_SECRET)");
  }
  StripeSignatureHeader parsed;
  LEDGER_RETURN_IF_ERROR(ParseStripeSignatureHeader(header, &parsed));
  // Floor division: a clock before the epoch is a test artefact, not a reason to misjudge.
  int64_t now_us = clock_->NowMicros();
  int64_t now_seconds = now_us >= 0 ? now_us / 1'000'000 : -((-now_us + 999'999) / 1'000'000);
  int64_t age = now_seconds - parsed.timestamp;
  if (age > tolerance_seconds_ || -age > tolerance_seconds_) {
    return Invalid("timestamp outside the tolerance zone");
  }
  bool matched = false;
  std::vector<bool> by_secret(secrets_.size(), false);
  for (size_t i = 0; i < secrets_.size(); ++i) {
    std::string expected = ComputeStripeSignature(secrets_[i], parsed.timestamp, payload);
    // Every candidate is compared (no early exit), each comparison in constant time.
    bool this_one = false;
    for (const std::string& candidate : parsed.v1) {
      this_one |= ConstantTimeEquals(expected, candidate);
    }
    by_secret[i] = this_one;
    matched |= this_one;
  }
  if (!matched) return Invalid("no signature matches the payload");
  if (matched_secrets != nullptr) *matched_secrets = std::move(by_secret);
  return Status::OK();
}

}  // namespace ledger::http
