// FakeStripe: a local stand-in for api.stripe.com that checks every request the way Stripe would
// (and a little stricter where ledgerd's contract is), for tests of the Stripe client, the billing
// routes and `ledgerctl stripe-setup`.
//
// An httplib::Server on 127.0.0.1, port 0, serving on its own thread. Per request it checks, in
// this order, and answers with Stripe-shaped JSON (`{"error":{"type","message","param"}}` and the
// status Stripe uses):
//   1. injected faults (see InjectFault) — these happen "in front of" Stripe: nothing is stored;
//   2. `Authorization: Bearer <the exact key>` (401 otherwise, quoting the key redacted as
//      Stripe does: "sk_test_****abcd");
//   3. POST: `Content-Type: application/x-www-form-urlencoded`, an `Idempotency-Key` (1..255
//      bytes; ledgerd sends one on every POST, so a missing one is a 400 here), the form body
//      parsed strictly (a repeated key or an unknown parameter is a 400 "Received unknown
//      parameter: ..." as at Stripe);
//   4. idempotency as Stripe does it: a key seen before with the same method, path and body
//      replays the stored answer (header `Idempotent-Replayed: true`); with anything different it
//      is 400 `idempotency_error`. Only successful answers are stored;
//   5. the endpoint's own rules (required parameters, referenced objects exist, ...).
//
// Endpoints: POST /v1/checkout/sessions, POST /v1/billing_portal/sessions,
// GET /v1/customers/{id}/payment_methods, GET|POST|DELETE /v1/subscriptions/{id},
// GET /v1/products/{id}, POST /v1/products, GET /v1/prices, GET /v1/prices/{id}, POST /v1/prices.
//
// Every request is recorded (requests()) with its parsed form/query, headers and the status it
// got, faulted ones included, so tests can assert shapes, counts and that retries reuse the same
// Idempotency-Key.
//
// Thread safety: every public method may be called from any thread while the server runs.
#pragma once

#include <httplib.h>

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "events/status.h"
#include "http/stripe_client.h"

namespace ledger::testing {

// The key the fake accepts by default (a made-up test key).
inline constexpr char kFakeStripeSecretKey[] = "sk_test_51LedgerdFakeKey0123456789abcdefXYZ";

class FakeStripe {
 public:
  enum class Fault {
    kServerError,  // 500 api_error (before Stripe ran the request: not saved under its key)
    // 500 api_error of a request Stripe began to run: saved under its Idempotency-Key and replayed
    // to every later request with that key, as Stripe does (for 24 h).
    kSavedServerError,
    kRateLimited,  // 429 rate_limit
    kHang,         // no answer for hang_ms (longer than the client's read timeout)
    kReset,        // the connection is dropped in the middle of the answer
  };

  struct Request {
    std::string method;
    std::string path;  // without the query
    std::string authorization;
    std::string idempotency_key;  // "" when absent
    std::string stripe_version;   // the Stripe-Version header ("" when absent)
    bool has_idempotency_key = false;
    std::string content_type;
    std::string body;
    http::FormParams params;  // the form body (POST) or the query (GET/DELETE), in order
    int status = 0;           // what the fake answered (0: hang/reset)
    bool replayed = false;    // answered from the idempotency store
    bool faulted = false;     // an injected fault answered it

    // The (first) value of `key`, or "" when absent.
    std::string Param(std::string_view key) const;
    bool HasParam(std::string_view key) const;
  };

  struct Price {
    std::string id;
    std::string product;
    int64_t unit_amount = 0;
    std::string currency = "usd";
    std::string interval;  // "" = one-time
    int64_t interval_count = 1;  // recurring[interval_count] (a recurring price only)
    std::string lookup_key;
    bool active = true;
    std::map<std::string, std::string> metadata;
  };

  struct Subscription {
    std::string id;
    std::string customer;
    std::string status = "active";
    std::string item_id;
    std::string price_id;
    bool cancel_at_period_end = false;
    int64_t current_period_start = 1'700'000'000;
    int64_t current_period_end = 1'702'592'000;
    std::optional<int64_t> canceled_at;
    std::optional<int64_t> ended_at;  // set when it has ended (a DELETE: at once)
    std::map<std::string, std::string> metadata;
    std::string last_proration_behavior;
    // cancellation_details as the cancel (DELETE) set them; "" is null.
    std::string cancellation_comment;
    std::string cancellation_feedback;
    // The subscription schedule managing it ("" = none): an update of cancel_at_period_end is
    // then refused (400) as at Stripe; a price change and a cancel (DELETE) are not.
    std::string schedule;
  };

  struct CheckoutSession {
    std::string id;
    std::string url;
    http::FormParams params;
    std::string status = "open";  // open | complete | expired
    std::string subscription;     // set by CompleteCheckoutSession
  };

  explicit FakeStripe(std::string secret_key = kFakeStripeSecretKey);
  ~FakeStripe();
  FakeStripe(const FakeStripe&) = delete;
  FakeStripe& operator=(const FakeStripe&) = delete;

  // Binds 127.0.0.1:0 and serves on a thread. Stop() is idempotent (the destructor calls it) and
  // ends any hanging answer at once.
  Status Start();
  void Stop();
  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& secret_key() const { return secret_key_; }

  // ---- State ----
  void AddProduct(const std::string& id, const std::string& name, bool active = true);
  // Returns the new price's id.
  std::string AddPrice(Price price);
  // An active USD price of `cents` once per `interval` ("month", "year"; "" = one-time).
  std::string AddPrice(const std::string& id, const std::string& product, int64_t cents,
                       const std::string& interval);
  void AddCustomer(const std::string& id, const std::string& email = "");
  void AddCard(const std::string& customer, const std::string& pm_id, const std::string& brand,
               const std::string& last4, int64_t exp_month, int64_t exp_year);
  // From now on every charge of `customer` is declined: a change that invoices at once (ending a
  // trial, another interval, always_invoice) leaves the subscription past_due, or answers 402
  // card_declined under payment_behavior=error_if_incomplete.
  void DeclinePayments(const std::string& customer);
  // The customer is deleted, as in the Dashboard: requests naming it get Stripe's 400
  // resource_missing (no webhook is sent; a test delivers customer.deleted when it wants one).
  void DeleteCustomer(const std::string& customer);
  void AddSubscription(Subscription subscription);

  std::optional<Subscription> GetSubscription(const std::string& id) const;
  std::vector<Price> prices() const;
  size_t product_count() const;
  std::vector<std::string> product_ids() const;
  std::vector<CheckoutSession> checkout_sessions() const;
  // The customer paid the session (its webhook is up to the test); `subscription_id`, when given,
  // is the session's subscription (add it with AddSubscription for GETs of it to find it).
  void CompleteCheckoutSession(const std::string& id, const std::string& subscription_id = "");
  size_t portal_session_count() const;

  // ---- Requests ----
  std::vector<Request> requests() const;
  // Requests whose method matches and whose path starts with `path_prefix`.
  std::vector<Request> RequestsTo(std::string_view method, std::string_view path_prefix) const;
  void ClearRequests();

  // ---- Faults ----
  // The next `count` requests whose method matches (`method` "" = any) and whose path starts with
  // `path_prefix` fail with `fault`. Faults are consumed in the order they were injected.
  void InjectFault(Fault fault, int count, std::string method = "", std::string path_prefix = "");
  // Like InjectFault but answering `status` with a Stripe error of `type` and `message` (and
  // `code`, e.g. "idempotency_key_in_use", when not "").
  void InjectError(int status, std::string type, std::string message, int count,
                   std::string method = "", std::string path_prefix = "", std::string code = "");
  // How long a kHang fault holds the answer (default 5 s; Stop() ends it early).
  void set_hang_ms(int64_t ms);
  // Sent as `Stripe-Should-Retry` with every injected error answer ("" = not sent).
  void set_should_retry_header(std::string value);

  struct State;  // the .cc's

 private:
  struct Injected {
    Fault fault;
    int status = 0;  // InjectError
    std::string type;
    std::string message;
    std::string code;
    int remaining = 0;
    std::string method;
    std::string path_prefix;
  };

  void Handle(const httplib::Request& req, httplib::Response& res);
  // True (after answering and recording it) when an injected fault applies to this request.
  bool ApplyFault(const httplib::Request& req, Request* record, httplib::Response& res);
  void Record(Request record);

  const std::string secret_key_;
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  bool started_ = false;

  mutable std::mutex mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  int64_t hang_ms_ = 5000;
  std::string should_retry_header_;
  std::vector<Injected> faults_;
  std::vector<Request> requests_;
  std::unique_ptr<State> state_;
};

}  // namespace ledger::testing
