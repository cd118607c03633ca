// The Stripe API client: the calls ledgerd makes to Stripe (PROTOCOLS.md "Stripe API calls"),
// behind the StripeApi interface so that routes and tools can be tested against fakes.
//
// HttpStripeClient speaks Stripe's wire protocol with cpp-httplib (Debian builds it with
// OpenSSL, so both http:// and https:// bases work):
//   - form-encoded bodies with bracket nesting (`line_items[0][price]`, `metadata[user_id]`),
//   - `Authorization: Bearer <secret key>`,
//   - an `Idempotency-Key` on every POST, supplied by the caller and derived from our own command
//     id (so a retry, also one after a crash, sends the same key); GET and DELETE carry none,
//   - bounded connect/read/write timeouts per attempt and an overall deadline, which also ends an
//     attempt whose answer is still arriving (http/call_deadline.h),
//   - retries with exponential backoff and jitter on network errors, 409 (a concurrent request
//     with the same key), 429 and 5xx, honouring Stripe's `Stripe-Should-Retry` header (an
//     explicit "false" or "true" decides) and `Retry-After` when it is short,
//   - errors mapped to Status (see StripeErrorProblem below); a message never carries the secret
//     key (Stripe's own 401 message quotes part of it, so it is replaced).
//
// Thread safety: HttpStripeClient is immutable after construction; every call builds its own
// connection, so any thread may call any method concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "events/status.h"

namespace ledger::http {

// ---------------------------------------------------------------------------------------------
// Form encoding (application/x-www-form-urlencoded as Stripe reads it)

// Parameters in the order they are sent. Nested keys are spelled out: "metadata[user_id]".
using FormParams = std::vector<std::pair<std::string, std::string>>;

// `key=value&...`, keys and values percent-encoded, except that '[' and ']' in keys stay literal
// (as Stripe's SDKs send them).
std::string FormUrlEncode(const FormParams& params);
// The inverse, for servers (the fake Stripe): '+' is a space, %XX is decoded. InvalidArgument on
// a malformed escape.
Status FormUrlDecode(std::string_view body, FormParams* out);

// projections::IsStripeId (letters, digits, '_', '-'; 1..limits::kStripeIdBytesMax bytes), the
// rule the catalog's price ids follow too. Ids are checked before they go into a URL path.
bool IsStripeId(std::string_view id);

// ---------------------------------------------------------------------------------------------
// Stripe objects, reduced to the fields ledgerd uses.

struct StripeCheckoutSession {
  std::string id;      // cs_...
  std::string url;     // where the browser goes; a bearer link: never put it in an event
  std::string status;  // open | complete | expired
  std::string subscription;  // sub_... once complete; "" when none (yet)
};

struct StripePortalSession {
  std::string id;   // bps_...
  std::string url;  // a short-lived login link: never put it in an event
};

struct StripeCard {
  std::string id;  // pm_...
  std::string brand;
  std::string last4;
  int64_t exp_month = 0;
  int64_t exp_year = 0;
};

struct StripeSubscriptionItem {
  std::string id;        // si_...
  std::string price_id;  // price_...
  std::string interval;  // "month", "year", ... ("" when the price is not recurring)
};

struct StripeSubscription {
  std::string id;  // sub_...
  std::string customer;
  std::string status;  // incomplete, trialing, active, past_due, canceled, unpaid, ...
  bool cancel_at_period_end = false;
  std::optional<int64_t> current_period_end;  // top level, or items.data[0] (2025-03-31+)
  std::optional<int64_t> cancel_at;
  std::optional<int64_t> ended_at;  // when it ended (canceled, incomplete_expired); else none
  std::vector<StripeSubscriptionItem> items;
  std::map<std::string, std::string> metadata;  // string values only
  // cancellation_details.comment: what the cancel left (ledgerd's names the request, see
  // CancelSubscriptionNow); "" when none.
  std::string cancellation_comment;
  // The subscription schedule managing it (sub_sched_...: a downgrade the Billing Portal or the
  // Dashboard scheduled for the period's end); "" when none.
  std::string schedule;
};

// 409 subscription_scheduled: a schedule manages the subscription (StripeSubscription::schedule);
// `consequence` says what that means for the change asked, and the detail points to the portal.
Status ManagedBySchedule(std::string_view consequence);

struct StripeProduct {
  std::string id;
  std::string name;
  bool active = true;
};

struct StripePrice {
  std::string id;  // price_...
  std::string product;
  std::string currency;
  std::string lookup_key;  // "" when none
  std::string interval;    // "" = one-time
  int64_t interval_count = 0;  // recurring[interval_count]; 0 for a one-time price
  // unit_amount; nullopt when Stripe has none (a tiered or customer-chosen price).
  std::optional<int64_t> unit_amount_or_none;
  int64_t unit_amount = 0;  // unit_amount_or_none, or 0
  bool active = true;
};

// ---------------------------------------------------------------------------------------------
// Call parameters

// POST /v1/checkout/sessions in subscription mode.
struct StripeCheckoutParams {
  std::string recurring_price_id;  // line_items[0][price], quantity 1
  std::string one_time_price_id;   // optional line_items[1][price] (the trial fee), quantity 1
  int64_t trial_period_days = 0;   // subscription_data[trial_period_days] when > 0
  std::string success_url;
  std::string cancel_url;
  std::string client_reference_id;  // our user id
  std::string customer;             // cus_... when known; otherwise customer_email is sent
  std::string customer_email;       // optional
  // Sent both as metadata[k] (the session) and subscription_data[metadata][k] (the subscription).
  std::vector<std::pair<std::string, std::string>> metadata;
};

// POST /v1/subscriptions/{id} with one item's price replaced, prorated.
struct StripePriceChangeParams {
  std::string subscription_id;
  std::string item_id;   // items[0][id]
  std::string price_id;  // items[0][price]
  std::string proration_behavior = "create_prorations";
  bool end_trial = false;  // trial_end=now: the change ends a trial (Stripe would keep it going)
  std::vector<std::pair<std::string, std::string>> metadata;  // metadata[k] (e.g. plan_id)
};

// POST /v1/products.
struct StripeProductParams {
  std::string id;  // our deterministic id (e.g. "ledgerd_starter"), so lookups are exact
  std::string name;
  std::string description;  // optional
  std::vector<std::pair<std::string, std::string>> metadata;
};

// POST /v1/prices.
struct StripePriceParams {
  std::string product;
  int64_t unit_amount = 0;  // cents
  std::string currency = "usd";
  std::string interval;  // recurring[interval]: "month" | "year"; "" = one-time price
  std::string lookup_key;
  bool transfer_lookup_key = false;  // move the key from the price that has it now
  std::string nickname;              // optional
  std::vector<std::pair<std::string, std::string>> metadata;
};

// ---------------------------------------------------------------------------------------------
// The interface

// Errors every method may return (Status::problem() in parentheses):
//   kUnavailable  (stripe_unavailable)  Stripe could not be reached or did not answer in time,
//                                       after the retries; or 429 after the retries
//                                       (stripe_rate_limited)
//   kBadGateway   (stripe_error)        5xx after the retries, or an unreadable answer
//                 (stripe_auth_failed)  401/403: the configured key was refused
//                 (stripe_resource_missing) 404 resource_missing: an object we named
//                 (stripe_idempotency_error) the key was used with other parameters
//                 (stripe_request_failed) any other 4xx; the message is Stripe's (sanitized)
//   kInvalidArgument (invalid_argument) we were asked to send something invalid (bad id, a POST
//                                       without an idempotency key, a key over 255 bytes)
class StripeApi {
 public:
  virtual ~StripeApi() = default;

  virtual Status CreateCheckoutSession(const StripeCheckoutParams& params,
                                       std::string_view idempotency_key,
                                       StripeCheckoutSession* out) = 0;
  // GET /v1/checkout/sessions/{id}.
  virtual Status GetCheckoutSession(std::string_view session_id, StripeCheckoutSession* out) = 0;
  // POST /v1/checkout/sessions/{id}/expire: an open session can no longer be paid. Stripe
  // refuses one that is not open (stripe_request_failed).
  virtual Status ExpireCheckoutSession(std::string_view session_id,
                                       std::string_view idempotency_key,
                                       StripeCheckoutSession* out) = 0;
  // POST /v1/billing_portal/sessions {customer, return_url (optional)}.
  virtual Status CreatePortalSession(std::string_view customer, std::string_view return_url,
                                     std::string_view idempotency_key,
                                     StripePortalSession* out) = 0;
  // GET /v1/customers/{customer}/payment_methods?type=card (first page; *has_more says if more).
  virtual Status ListCards(std::string_view customer, std::vector<StripeCard>* out,
                           bool* has_more) = 0;
  // GET /v1/subscriptions/{id}.
  virtual Status GetSubscription(std::string_view subscription_id, StripeSubscription* out) = 0;
  // DELETE /v1/subscriptions/{id}?invoice_now=true: what is pending is invoiced now (an
  // upgrade's proration items wait for the next renewal, and a cancel without invoice_now drops
  // them: the dearer plan used for free). A subscription that is already canceled with `comment`
  // is success (a retry of a DELETE whose first answer was lost finds it canceled); one canceled
  // with another comment (or none), or expired unpaid (incomplete_expired), ended some other way:
  // 409 no_active_subscription. `comment`, when not "", is sent as cancellation_details[comment]
  // (at most 5000 bytes; Stripe keeps it on the canceled subscription): DELETE carries no
  // Idempotency-Key, so this is how a later retry knows the cancel for its own.
  virtual Status CancelSubscriptionNow(std::string_view subscription_id, std::string_view comment,
                                       StripeSubscription* out) = 0;
  // What names a request in such a comment, only this server can make: base64url (no padding)
  // of HMAC-SHA256 over `request_key` (the request's Stripe Idempotency-Key), under a key derived
  // from the secret key, cut to 32 characters (192 bits). The request key is no secret -- a hash
  // of the user, the client's Idempotency-Key and the body -- and a user can leave any comment on
  // their own cancellation (the portal's form): a marker anyone could compute would let them pass
  // a cancel of theirs off as one ledgerd made. Neither the secret key nor the derived key is in
  // it. A key rolled between a cancel-now and its retry makes another marker: the retry does not
  // know the cancel for its own.
  virtual std::string RequestMarker(std::string_view request_key) const = 0;
  // POST /v1/subscriptions/{id} cancel_at_period_end=true|false. Asked to end it at the period's
  // end, a subscription Stripe has already ended there (set to, or ended at or after its period's
  // end; its deletion's webhook may be days late) is success, with its canceled state; one that
  // ended otherwise (canceled mid-period elsewhere, incomplete_expired) is 409
  // no_active_subscription. One a subscription schedule manages, Stripe refuses (400: only the
  // schedule may change its cancelation): 409 subscription_scheduled.
  virtual Status SetCancelAtPeriodEnd(std::string_view subscription_id, bool cancel,
                                      std::string_view idempotency_key,
                                      StripeSubscription* out) = 0;
  virtual Status ChangeSubscriptionPrice(const StripePriceChangeParams& params,
                                         std::string_view idempotency_key,
                                         StripeSubscription* out) = 0;

  // Catalog set-up (ledgerctl stripe-setup).
  // GET /v1/products/{id}: kNotFound ("not_found") when Stripe has no such product.
  virtual Status GetProduct(std::string_view product_id, StripeProduct* out) = 0;
  virtual Status CreateProduct(const StripeProductParams& params, std::string_view idempotency_key,
                               StripeProduct* out) = 0;
  // GET /v1/prices/{id}: kNotFound ("not_found") when Stripe has no such price (the admin
  // plan routes check a price an admin names against the plan before recording it).
  virtual Status GetPrice(std::string_view price_id, StripePrice* out) = 0;
  // GET /v1/prices?lookup_keys[]=... (at most 10 keys per Stripe call; more are split).
  virtual Status FindPricesByLookupKeys(const std::vector<std::string>& lookup_keys,
                                        std::vector<StripePrice>* out) = 0;
  virtual Status CreatePrice(const StripePriceParams& params, std::string_view idempotency_key,
                             StripePrice* out) = 0;
};

// ---------------------------------------------------------------------------------------------
// The cpp-httplib implementation

inline constexpr std::string_view kStripeApiVersion = "2025-03-31.basil";
// The shape of a Stripe API version: a date, then optionally ".<release name>" (64 bytes at most,
// no blanks or control bytes).
bool IsStripeApiVersion(std::string_view version);

struct StripeClientOptions {
  // scheme://host[:port][/prefix], http or https. Default: Stripe itself.
  std::string api_base = "https://api.stripe.com";
  // The secret key (sk_live_/sk_test_/rk_...). Secret: never logged, never in a Status.
  std::string secret_key;
  // PEM file of trusted CAs for https; "" = the system trust store (ca-certificates).
  std::string ca_cert_file;
  // Per attempt. Crash semantics: none (nothing is persisted here).
  int64_t connect_timeout_ms = 5'000;
  int64_t read_timeout_ms = 15'000;
  int64_t write_timeout_ms = 10'000;
  // Attempts in total (first try + retries), and the overall budget across them: no attempt
  // starts after it, each attempt's read timeout is cut to what is left, and an attempt still
  // running at it is cut off there (a network timeout), however its answer trickles in.
  int max_attempts = 3;
  int64_t deadline_ms = 30'000;
  // Backoff before retry n (1-based): min(max, initial * 2^(n-1)), times a random factor in
  // [0.5, 1.0). A `Retry-After` up to backoff_max_ms is honoured instead.
  int64_t backoff_initial_ms = 500;
  int64_t backoff_max_ms = 5'000;
  // Largest response body read; a larger one is an error (stripe_error).
  size_t response_bytes_max = 4u << 20;
  // Stripe-Version header: the API version whose shapes the parsers were written against (both
  // period layouts are read, PROTOCOLS.md), so that an upgrade of the account's default in the
  // Dashboard changes nothing here. "" = the account's default version.
  std::string api_version = std::string(kStripeApiVersion);
  // Sleeps between attempts; tests inject a recorder. Default: std::this_thread::sleep_for.
  std::function<void(int64_t ms)> sleep;
};

class HttpStripeClient final : public StripeApi {
 public:
  // InvalidArgument when the base URL is not http(s)://host[:port][/prefix] or the key is empty.
  static Status Create(StripeClientOptions options, std::unique_ptr<HttpStripeClient>* out);
  ~HttpStripeClient() override;

  Status CreateCheckoutSession(const StripeCheckoutParams& params,
                               std::string_view idempotency_key,
                               StripeCheckoutSession* out) override;
  Status GetCheckoutSession(std::string_view session_id, StripeCheckoutSession* out) override;
  Status ExpireCheckoutSession(std::string_view session_id, std::string_view idempotency_key,
                               StripeCheckoutSession* out) override;
  Status CreatePortalSession(std::string_view customer, std::string_view return_url,
                             std::string_view idempotency_key, StripePortalSession* out) override;
  Status ListCards(std::string_view customer, std::vector<StripeCard>* out,
                   bool* has_more) override;
  Status GetSubscription(std::string_view subscription_id, StripeSubscription* out) override;
  Status CancelSubscriptionNow(std::string_view subscription_id, std::string_view comment,
                               StripeSubscription* out) override;
  std::string RequestMarker(std::string_view request_key) const override;
  Status SetCancelAtPeriodEnd(std::string_view subscription_id, bool cancel,
                              std::string_view idempotency_key,
                              StripeSubscription* out) override;
  Status ChangeSubscriptionPrice(const StripePriceChangeParams& params,
                                 std::string_view idempotency_key,
                                 StripeSubscription* out) override;
  Status GetProduct(std::string_view product_id, StripeProduct* out) override;
  Status CreateProduct(const StripeProductParams& params, std::string_view idempotency_key,
                       StripeProduct* out) override;
  Status GetPrice(std::string_view price_id, StripePrice* out) override;
  Status FindPricesByLookupKeys(const std::vector<std::string>& lookup_keys,
                                std::vector<StripePrice>* out) override;
  Status CreatePrice(const StripePriceParams& params, std::string_view idempotency_key,
                     StripePrice* out) override;

  // Form bodies as sent (exposed for tests of the exact parameter lists).
  static FormParams CheckoutForm(const StripeCheckoutParams& params);
  static FormParams PriceChangeForm(const StripePriceChangeParams& params);
  static FormParams ProductForm(const StripeProductParams& params);
  static FormParams PriceForm(const StripePriceParams& params);

  struct Impl;

 private:
  explicit HttpStripeClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Replaces anything that looks like a Stripe secret (sk_/rk_ keys, whsec_ secrets, and `secret`
// itself when non-empty) with "[redacted]", and bounds the text to 300 bytes of valid UTF-8.
std::string RedactStripeSecrets(std::string_view text, std::string_view secret);

// The mode of a Stripe API key, from its prefix: true for sk_live_/rk_live_, false for
// sk_test_/rk_test_, nullopt for anything else (empty, or a prefix not known). The mode is not a
// secret; the key is.
std::optional<bool> StripeKeyLivemode(std::string_view secret_key);

// Stripe's Idempotency-Key for a call made on behalf of a command (≤ 255 bytes):
//   "ledgerd-<operation>-<64 hex>" where the hex is SHA-256 over (user, operation, seed).
// `seed` is the client's Idempotency-Key plus our request hash when the client sent one (so its
// retry reuses Stripe's idempotency), or a fresh command id (a UUID) otherwise.
std::string StripeIdempotencyKey(std::string_view operation, std::string_view user_id,
                                 std::string_view seed);

}  // namespace ledger::http
