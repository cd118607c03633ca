// Stripe webhook ingestion: from a verified delivery (http/stripe_webhook_routes.cc checks the
// signature over the raw body first) to ONE command that appends the delivery and the domain
// events derived from it.
//
//   ParseStripeWebhook(raw body)  -> StripeWebhook (envelope fields, redacted copy, parsed doc)
//   IngestStripeWebhook(webhook)  -> Command: dedupe on the Stripe event id, then append
//       stripe.webhook_received.v1                      always (the delivery, secrets and personal
//                                                       details redacted)
//       customer.linked.v1                              a new user <-> customer link / email /
//                                                       earlier link time
//       subscription.checkout_completed.v1              checkout.session.completed
//       subscription.state_changed.v1                   customer.subscription.* (a subscription
//                                                       object) newer than the stored state
//       invoice.paid.v1 / invoice.payment_failed.v1     invoice.paid / invoice.payment_failed
//       customer.deleted.v1                             customer.deleted
//   Other types (and stale subscription/invoice states) append only the delivery.
//   A delivery that is not this server's to apply appends only the delivery too, with
//   "ignored" saying why (answered 200, so that Stripe stops sending it):
//       livemode_mismatch   its `livemode` differs from the configured API key's mode (a test-mode
//                           event at a live server, or the reverse, when one endpoint gets both:
//                           STRIPE_WEBHOOK_SECRET=whsec_live,test:whsec_test), or from the mode
//                           of the secret that signed it (a body claiming live signed with the
//                           test secret)
//       connected_account   it carries `account`: a Connect event of a connected account, whose
//                           customers and subscriptions are not ours
//
// Dedupe: the command's idempotency record is (scope "stripe.webhook", key = the event id) with a
// request hash of the event id alone, so a redelivery -- even one whose body differs, which
// Stripe never sends but a replaying attacker with a leaked secret might -- is answered from the
// record with nothing appended.
//
// Secrets never enter an event: the stored payload is the delivery's JSON re-serialized
// compactly (numbers and strings exactly as received) with the value of every member named
// `client_secret`, `secret`, `hosted_invoice_url`, `invoice_pdf`, `receipt_url`, `pdf`, `url`,
// `hosted_instructions_url`, `hosted_verification_url` or `next_action` (bearer links: an
// invoice's payment page and PDF, a receipt, a credit note's PDF, the customer portal's login
// link, a checkout page; a payment's vouchers, QR codes and redirects) replaced by "[redacted]";
// so is every member that tells who the customer is or the payment instrument beyond brand,
// last4 and expiry (names, phones, addresses, billing_details, shipping, tax ids, IP addresses,
// the card's fingerprint, IIN, checks, 3-D Secure, wallet: IsPersonalDetailMemberName in the
// .cc), none of which the decider or a fold reads (`email` and `customer_email` are read, and
// kept). `raw_sha256` is the SHA-256 of the exact bytes received, so the original delivery can
// still be matched against Stripe's copy; nothing re-verifies a stored payload.
//
// Thread safety: ParseStripeWebhook is pure; the command is used by one request thread and then
// decided on the ledger's writer thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <rapidjson/document.h>

#include "events/ledger.h"
#include "events/status.h"

namespace ledger::projections {

inline constexpr std::string_view kStripeWebhookReceivedV1 = "stripe.webhook_received.v1";
inline constexpr std::string_view kStripeWebhookIdempotencyScope = "stripe.webhook";
// Value written in place of a redacted secret.
inline constexpr std::string_view kRedacted = "[redacted]";

struct StripeWebhook {
  std::string event_id;                    // evt_...
  std::string type;                        // e.g. "customer.subscription.updated"
  int64_t created = 0;                     // Unix seconds
  std::optional<std::string> api_version;  // e.g. "2025-03-31.basil"; null for some events
  bool livemode = false;                   // false when absent
  std::optional<std::string> account;      // Connect: the connected account's acct_... id
  std::string raw_sha256;                  // lowercase hex of SHA-256(raw body)
  size_t raw_bytes = 0;
  std::string redacted_payload;            // compact JSON, secrets and personal details redacted
  std::shared_ptr<const rapidjson::Document> payload;  // the parsed (redacted) payload
};

// Parses a delivery's raw body. InvalidArgument "malformed_event" when it is not a JSON object
// (UTF-8, bounded nesting, no duplicate names), or `id` (a Stripe id), `type` (lowercase dotted
// name) or `created` (integer >= 0) is missing or wrong; `api_version` must be a string or null,
// `livemode` a boolean and `account` a string or null when present. PayloadTooLarge
// "payload_too_large" beyond limits::kStripeWebhookBytesMax.
Status ParseStripeWebhook(std::string_view raw_body, StripeWebhook* out);

// The decided response body: {"received":true,"event_id":...,"type":...,"duplicate":<bool>,
// "derived":[<types>]} ("derived" lists what this delivery appended besides itself; a duplicate
// answers with the original delivery's list), and "ignored":<reason> for a delivery that derived
// nothing because it is not this server's (see above).
//
// `expected_livemode` is the mode of the configured Stripe API key (StripeKeyLivemode in
// http/stripe_client.h); nullopt (no key, or a prefix not known) = deliveries are not judged by
// their mode. `signed_in_its_mode` is false when no secret that verified the delivery is bound
// to its `livemode` (http/stripe_signature.h, StripeWebhookSecret): ignored as livemode_mismatch.
class IngestStripeWebhook final : public Command {
 public:
  explicit IngestStripeWebhook(StripeWebhook webhook,
                               std::optional<bool> expected_livemode = std::nullopt,
                               bool signed_in_its_mode = true);
  Status Decide(const DecideContext& context, Decision* decision) override;

  const StripeWebhook& webhook() const { return webhook_; }

 private:
  StripeWebhook webhook_;
  std::optional<bool> expected_livemode_;
  bool signed_in_its_mode_;
};

// The response body for a duplicate delivery, given the original's stored body: "duplicate":true
// and "derived":[] (DuplicateDeliveryBody).
std::string DuplicateWebhookBody(std::string_view stored_body);

// The one rule for a Stripe id ledgerd names to Stripe -- a catalog price id (plan_catalog.h), an
// id in an API call (http/stripe_client.h) -- and so for one a delivery names back: 1 to
// limits::kStripeIdBytesMax of [A-Za-z0-9_-]. Stripe's generated ids are a prefix, '_' and
// letters and digits; ids an account chose (customers, products, legacy plans used as prices)
// have been limited to [A-Za-z0-9_-] on creation since API version 2018-05-21. An older custom
// id with other characters ('.', spaces) cannot be sold or changed to through the catalog.
bool IsStripeId(std::string_view id);
// An id as a delivery carries it: IsStripeId's, and any other visible ASCII but '/' (our
// row-key separator), up to the same length -- a customer with an id made before 2018-05-21 is
// still linked. Only ever a row key, never put into a URL.
bool IsDeliveredStripeId(std::string_view id);

}  // namespace ledger::projections
