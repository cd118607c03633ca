// Stripe webhook signatures (`Stripe-Signature`), as Stripe's SDKs verify them
// (stripe-node src/Webhooks.ts, stripe-python stripe/_webhook.py; ../shared/design/PROTOCOLS.md):
//
//   header   = item *("," item), item = key "=" value; exactly one `t` (Unix seconds), every `v1`
//              is a candidate signature, `v0` and unknown keys are ignored; no `v1` = rejected.
//   expected = lowercase hex HMAC-SHA256(key = the `whsec_...` secret's UTF-8 bytes as they are,
//              not base64-decoded; message = "<t>." + the raw request body, byte for byte).
//   accepted when any `v1` equals the expected value of any configured secret (constant-time
//   comparison; several secrets = rotation) and |now - t| <= tolerance (300 s; Stripe's SDKs
//   only bound the age, we also refuse timestamps that far in the future).
//
// Stripe's whsec_ values do not say their mode (a live and a test endpoint may share a URL), so
// each configured secret is bound to one (StripeWebhookSecret) and a delivery is of the mode of
// the secret that signed it, never of its body's `livemode` alone: anyone with the test secret
// could otherwise sign a body claiming `"livemode":true`.
//
// Pure: no HTTP, no I/O; time comes from the injected Clock. Thread safety: immutable after
// construction; Verify() may be called from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/clock.h"
#include "events/status.h"

namespace ledger::http {

inline constexpr int64_t kStripeSignatureToleranceSeconds = 300;
// Bounds on what a header may contain; beyond them it is malformed.
inline constexpr size_t kStripeSignatureHeaderBytesMax = 8 * 1024;
inline constexpr size_t kStripeSignatureV1Max = 16;

struct StripeSignatureHeader {
  int64_t timestamp = 0;            // `t`
  std::vector<std::string> v1;      // every `v1` value, in header order
};

// Parses a `Stripe-Signature` value. InvalidArgument "invalid_signature" when it is empty, too
// long, has an item without '=', no `t` or more than one, a `t` that is not a decimal number of
// seconds, no `v1`, or more than kStripeSignatureV1Max of them. Spaces around items are ignored.
Status ParseStripeSignatureHeader(std::string_view header, StripeSignatureHeader* out);

// Lowercase hex HMAC-SHA256(secret, "<timestamp>.<payload>").
std::string ComputeStripeSignature(std::string_view secret, int64_t timestamp,
                                   std::string_view payload);

// "t=<timestamp>,v1=<ComputeStripeSignature(...)>" for each secret in order (tests, fakes).
std::string MakeStripeSignatureHeader(const std::vector<std::string>& secrets, int64_t timestamp,
                                      std::string_view payload);

// One STRIPE_WEBHOOK_SECRET entry: `test:whsec_...` signs test-mode deliveries, `live:whsec_...`
// live ones and a bare `whsec_...` those of `key_livemode`, STRIPE_SECRET_KEY's mode
// (StripeKeyLivemode; nullopt = unknown, bound to no mode). The entry is not validated here
// (daemon/config.cc refuses another prefix or an empty secret).
struct StripeWebhookSecret {
  std::string secret;            // whsec_...
  std::optional<bool> livemode;  // true live, false test, nullopt either
  bool bare = false;             // no prefix: of the key's mode
};
StripeWebhookSecret ParseStripeWebhookSecret(std::string_view entry,
                                             std::optional<bool> key_livemode);

class StripeSignatureVerifier {
 public:
  // `secrets`: the configured endpoint secrets (STRIPE_WEBHOOK_SECRET, comma-separated there).
  // `clock` must outlive the verifier; nullptr = SystemClock.
  StripeSignatureVerifier(std::vector<std::string> secrets, const Clock* clock,
                          int64_t tolerance_seconds = kStripeSignatureToleranceSeconds);

  bool configured() const { return !secrets_.empty(); }

  // OK when `header` carries a valid signature of `payload` (the raw body). Otherwise
  // InvalidArgument "invalid_signature" with the reason (no header, malformed header, timestamp
  // outside the tolerance, no signature matches); Unavailable "stripe_webhook_not_configured"
  // when no secret is configured. The message never contains a secret or a signature.
  // `matched` (optional), when OK: one flag per secret, in order, set when it signed `payload`.
  Status Verify(std::string_view header, std::string_view payload,
                std::vector<bool>* matched = nullptr) const;

 private:
  std::vector<std::string> secrets_;
  const Clock* clock_;
  int64_t tolerance_seconds_;
};

}  // namespace ledger::http
