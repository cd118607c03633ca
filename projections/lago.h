// Lago webhooks and the Lago projection: from a verified delivery (http/lago_webhook_routes.cc
// checks the signature over the raw body first) to ONE command that appends the delivery and the
// state changes derived from it, and the fold that tracks Lago invoices and subscriptions.
//
//   ParseLagoWebhook(raw body, unique key) -> LagoWebhook (envelope, redacted copy, parsed doc)
//   IngestLagoWebhook(webhook)             -> Command: dedupe on the unique key, then append
//       lago.webhook_received.v1       always (the delivery, verbatim but for redacted secrets)
//       lago.invoice_updated.v1        object_type "invoice" whose state supersedes the stored one
//       lago.subscription_updated.v1   object_type "subscription" that supersedes the stored one
//   Other object types (fees, credit notes, wallets, customers, ...) append only the delivery.
//
// Dedupe. Lago delivers at least once and retries a delivery (up to LAGO_WEBHOOK_ATTEMPTS) with
// the same `X-Lago-Unique-Key` (the id of its webhook row). The command's idempotency record is
// (scope "lago.webhook", key = X-Lago-Unique-Key) with a request hash of the key alone, so a
// redelivery is answered from the record with nothing appended.
//
// Repeated bodies. A body under a NEW unique key is always recorded, even when the same bytes
// were delivered before: some Lago payloads carry no timestamp or per-delivery id
// (invoice.payment_failure with payment_provider_invoice_payment_error,
// customer.payment_provider_error, identical events.errors), so a dunning retry declined the
// same way days later is a new webhook with a byte-identical body. The fold remembers the first
// unique key that delivered each body (delivery/<raw_sha256>); a later delivery of that body
// carries it as `repeat_of_unique_key` in its lago.webhook_received.v1 and in the answer
// ("duplicate":false).
// The unique key is not covered by Lago's signature and Lago's signatures carry no timestamp, so
// such a delivery may also be a captured one replayed under a fresh key: consumers that must not
// count it twice use repeat_of_unique_key, and one body is recorded again at most
// limits::kLagoBodyRepeatsMax (64) times (counted in delivery_repeats/<raw_sha256>); past that a
// repeat is 409 "repeat_limit_reached" with nothing appended. Either way it changes no derived state: the stored
// invoice/subscription already has the body's ordering key, which a repeat cannot exceed. (A
// delivery from a Lago too old to send unique keys is named "sha256:<hex of the body>" by the
// route, so there a repeated body IS the same delivery: answered from its idempotency record.)
//
// Out of order. Each tracked object keeps the ordering key of the state it was last set from; a
// delivery whose key is not greater never changes it, so the rows after a set of deliveries are
// the same whatever order they arrived in:
//   invoice       (updated_at (else created_at), status rank, payment_status rank), where
//                 status: draft|pending < finalized|failed < voided and
//                 payment_status: pending < failed < succeeded (ties within one second converge)
//   subscription  per Lago subscription (lago_id): (status rank, latest of started_at,
//                 trial_ended_at, terminated_at, canceled_at), status: pending < active <
//                 terminated|canceled. Lago serializes no updated_at for subscriptions, so a
//                 change that moves neither (e.g. a new `name` or `ending_at` alone) is not
//                 applied over an equal key.
// A Lago plan change creates a NEW subscription (new lago_id) under the same external_id and
// terminates the old one; both are kept, and GetLagoSubscription() answers the effective one
// (an active one, else the newest pending, else the most recently ended), so a late
// "terminated" for the old subscription never hides the new one.
//
// Secrets never enter an event: the stored payload is the delivery re-serialized compactly
// (numbers and strings exactly as received) with the value of every member named in
// IsLagoSecretMemberName() replaced by "[redacted]"; `raw_sha256` is the SHA-256 of the exact
// bytes received.
//
// Rows (column family "lago"; id parts are escaped: '%' -> "%25", '/' -> "%2F"):
//   delivery/<raw_sha256>                            the first unique key that delivered this body
//   inv/<lago_id>                                    invoice JSON (LagoInvoice)
//   cust_inv/<external_customer_id>/<lago_id>        ""  index: a customer's invoices
//   sub/<external_id>/<lago_id>                      subscription JSON (LagoSubscription)
//   cust_sub/<external_customer_id>/<external_id>    ""  index: a customer's subscriptions
//
// Thread safety: ParseLagoWebhook, the fold and the queries are pure; the command is used by one
// request thread and then decided on the ledger's writer thread.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"

namespace ledger::projections {

inline constexpr std::string_view kLagoFamily = "lago";
inline constexpr std::string_view kLagoWebhookReceivedV1 = "lago.webhook_received.v1";
inline constexpr std::string_view kLagoInvoiceUpdatedV1 = "lago.invoice_updated.v1";
inline constexpr std::string_view kLagoSubscriptionUpdatedV1 = "lago.subscription_updated.v1";
inline constexpr std::string_view kLagoWebhookIdempotencyScope = "lago.webhook";

// Members whose values are redacted from stored deliveries: credentials (`api_key`, `hmac_key`,
// `secret`, `client_secret`, `password`, `token`, `access_token`, `refresh_token`, `secret_key`,
// `webhook_secret`, `private_key`) and bearer links (`checkout_url`, `payment_url`, the PDFs and
// e-invoices behind `file_url` and `xml_url`, the customer portal's `portal_url`, a payment's
// Stripe `next_action`, any other `url`).
bool IsLagoSecretMemberName(std::string_view name);

// True for an X-Lago-Unique-Key we accept: 1..255 visible ASCII characters (Lago sends a UUID).
bool IsLagoUniqueKey(std::string_view key);

struct LagoWebhook {
  std::string unique_key;           // X-Lago-Unique-Key
  std::string signature_algorithm;  // "hmac" | "jwt": how the delivery was verified
  std::string webhook_type;         // e.g. "invoice.payment_status_updated"
  std::string object_type;          // e.g. "invoice"
  std::string raw_sha256;           // lowercase hex of SHA-256(raw body)
  size_t raw_bytes = 0;
  std::string redacted_payload;                        // compact JSON, secrets redacted
  std::shared_ptr<const rapidjson::Document> payload;  // the parsed (redacted) payload
};

// Parses a delivery's raw body. InvalidArgument "malformed_event" when it is not a JSON object
// (UTF-8, bounded nesting, no duplicate names) or `webhook_type` / `object_type` (lowercase
// dotted names, 1..128 bytes) are missing; "invalid_unique_key" when `unique_key` is not
// IsLagoUniqueKey(). PayloadTooLarge "payload_too_large" beyond limits::kLagoWebhookBytesMax
// (jwt mode) or kLagoWebhookPayloadBytesMax (hmac mode), or when the redacted payload is over
// kLagoWebhookPayloadBytesMax.
Status ParseLagoWebhook(std::string_view raw_body, std::string_view unique_key,
                        std::string_view signature_algorithm, LagoWebhook* out);

// The decided response body: {"received":true,"unique_key":...,"webhook_type":...,
// "duplicate":<bool>,"repeat_of_unique_key":<first key that delivered this body, or null>,
// "derived":[<types>]}.
class IngestLagoWebhook final : public Command {
 public:
  explicit IngestLagoWebhook(LagoWebhook webhook);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  LagoWebhook webhook_;
};

// The response body for a redelivery, given the original's stored body: "duplicate":true and
// "derived":[] (DuplicateDeliveryBody).
std::string DuplicateLagoWebhookBody(std::string_view stored_body);

// ---------------------------------------------------------------------------------------------
// The projection

// A Lago invoice as of the newest delivery applied (field names are Lago's).
struct LagoInvoice {
  std::string lago_id;
  std::string status;                         // draft, finalized, voided, failed, pending
  std::optional<std::string> payment_status;  // pending, succeeded, failed
  std::optional<std::string> number;
  std::optional<std::string> invoice_type;  // subscription, add_on, credit, one_off, ...
  std::optional<std::string> currency;
  std::optional<int64_t> fees_amount_cents;
  std::optional<int64_t> taxes_amount_cents;
  std::optional<int64_t> total_amount_cents;
  std::optional<int64_t> total_due_amount_cents;
  std::optional<int64_t> total_paid_amount_cents;
  std::optional<bool> payment_overdue;
  std::optional<std::string> issuing_date;
  std::optional<std::string> external_customer_id;     // customer.external_id
  std::optional<std::string> lago_customer_id;         // customer.lago_id
  std::vector<std::string> external_subscription_ids;  // subscriptions[].external_id
  std::optional<std::string> updated_at;               // as Lago sent it
  int64_t order_ms = 0;  // updated_at (else created_at) in Unix ms: the ordering key's first part
  std::string webhook_type;  // of the delivery that set this state
  std::string unique_key;
};

// A Lago subscription (one lago_id) as of the newest delivery applied.
struct LagoSubscription {
  std::string external_id;
  std::string lago_id;
  std::string status;  // pending, active, terminated, canceled
  std::optional<std::string> plan_code;
  std::optional<std::string> name;
  std::optional<std::string> external_customer_id;
  std::optional<std::string> lago_customer_id;
  std::optional<std::string> billing_time;  // calendar, anniversary
  std::optional<std::string> created_at;
  std::optional<std::string> started_at;
  std::optional<std::string> trial_ended_at;
  std::optional<std::string> ending_at;
  std::optional<std::string> terminated_at;
  std::optional<std::string> canceled_at;
  std::optional<std::string> previous_plan_code;
  std::optional<std::string> next_plan_code;
  std::optional<std::string> downgrade_plan_date;
  int64_t created_ms = 0;     // created_at in Unix ms (0 when absent)
  int64_t transition_ms = 0;  // the ordering key's time part
  std::string webhook_type;
  std::string unique_key;
};

std::string LagoInvoiceToJson(const LagoInvoice& invoice);
Status ParseLagoInvoice(std::string_view json, LagoInvoice* out);
std::string LagoSubscriptionToJson(const LagoSubscription& subscription);
Status ParseLagoSubscription(std::string_view json, LagoSubscription* out);

// True when `candidate` is newer than `current` by the ordering keys above.
bool SupersedesLagoInvoice(const LagoInvoice& candidate, const LagoInvoice& current);
bool SupersedesLagoSubscription(const LagoSubscription& candidate, const LagoSubscription& current);

// Applies lago.webhook_received.v1, lago.invoice_updated.v1 and lago.subscription_updated.v1.
class LagoFold final : public Fold {
 public:
  std::string_view Name() const override { return kLagoFamily; }
  // Raise with any change to the rows Apply writes: the store's rows are rebuilt (fold.h).
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override;
};

// NotFound when unknown.
Status GetLagoInvoice(const StateReader& state, std::string_view lago_id, LagoInvoice* out);
// Every Lago subscription stored under `external_id` (one per lago_id), in lago_id order.
Status ListLagoSubscriptions(const StateReader& state, std::string_view external_id,
                             std::vector<LagoSubscription>* out);
// The effective subscription for `external_id`: an active one (the most recently started),
// else the newest pending one, else the most recently ended one. NotFound when none.
Status GetLagoSubscription(const StateReader& state, std::string_view external_id,
                           LagoSubscription* out);
// The invoices of a Lago customer (by external_customer_id), in lago_id order, at most
// `limit`.
Status ListLagoCustomerInvoices(const StateReader& state, std::string_view external_customer_id,
                                size_t limit, std::vector<LagoInvoice>* out);

// "2022-04-29T08:59:51Z", with optional fractional seconds and a Z or +hh:mm / -hh:mm offset,
// to Unix milliseconds. nullopt when malformed.
std::optional<int64_t> ParseLagoTimeMs(std::string_view text);

}  // namespace ledger::projections
