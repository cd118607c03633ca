// The Stripe-calling billing routes (CONTRACT.md §3 "Stripe payments"), policy `user`:
//   POST /api/v1/billing/checkout/create      {plan_id, billing_cycle} -> {session_id, url}
//                                              + stripe.checkout_session_created.v1
//   POST /api/v1/billing/portal/create        -> {url} + stripe.portal_session_created.v1
//   GET  /api/v1/billing/payment-methods      -> [...] + X-Has-More when past 100 (a read: no event)
//   POST /api/v1/billing/subscription/cancel  {at_period_end} -> the subscription's state
//                                              + stripe.subscription_cancel_requested.v1
//   POST /api/v1/billing/subscription/upgrade {plan_id, billing_cycle} -> the new plan/price
//                                              + stripe.subscription_change_requested.v1
// (GET /subscription-status and the webhook are answered from projections elsewhere.)
// Every one of them is limited per user (BillingGuards): 429 rate_limited + Retry-After, nothing
// asked of Stripe, nothing appended.
//
// Order of work for a mutating route:
//   1. Body within 4 KiB? (413, before anything else: it costs nothing), Stripe configured? (503
//      stripe_not_configured), body valid? (400/422).
//   2. With a client Idempotency-Key: a probe through the writer answers a retry from its stored
//      result (or 409 idempotency_key_reused) *before* anything else -- before the state checks
//      too, which the request's own effect may have changed since (a cancel's webhook ends the
//      subscription: the retry must still get the stored 200, not 409). A retry answered from
//      its record calls nobody and appends nothing, so it spends no budget and is never refused.
//   3. State allows it? (409/422 from the snapshot: plan, customer, subscription). Nothing
//      appended on any error. Then the user's budget of Stripe calls is spent (SpendStripeCall,
//      429 rate_limited), just before Stripe is first asked: a refusal from ledgerd's own state
//      spends nothing.
//   4. Stripe's Idempotency-Key is derived from our command: from (user, route, client key,
//      request hash) when the client sent a key, else from a fresh command id (UUID).
//   5. Call Stripe (the client retries network errors/429/5xx with that same key). A failure is a
//      502/503 problem and appends nothing.
//   6. ONE command appends the event (what was asked, Stripe's ids in the answer; never a secret or
//      a session URL) and stores the response under the client's Idempotency-Key.
//
// Crash window: between 5 and 6 Stripe has acted and the log does not know yet (a crash, or step 6
// refused: a full write queue's 503). A client that retries with its Idempotency-Key sends Stripe
// the same key, so Stripe replays the same object (for 24 h) and step 6 records it then. (An
// upgrade's retry finds the subscription already on the plan: the change's metadata names the
// request, so the route knows it for its own and re-sends it instead of answering 409. A
// cancel-now's DELETE carries no key: its cancellation_details.comment names the request by a
// marker only this server can make, so a retry finds the subscription it ended -- ended in the
// log since, or the user's earlier one after they subscribed again -- and is recorded as done
// instead of answered 409 or cancelling the new one; see CancelSubscription.) Without a client
// key, the effect is still reported by Stripe's webhooks (the source of truth for subscription
// state); an unrecorded Checkout or portal session simply expires unused. Recording an intent
// event before the call would not close the window (the call can still happen or not after a
// crash) and would double the fsyncs.
//
// Thread safety: handlers run on server threads; they share only the AppContext (read-only), the
// thread-safe Ledger and StripeApi, and the route table's BillingGuards (thread-safe).
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "http/idempotency.h"
#include "http/problem.h"
#include "http/routes.h"
#include "http/stripe_client.h"
#include "http/stripe_plans.h"
#include "http/user_limiter.h"
#include "projections/json_util.h"
#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"

namespace ledger::http {

namespace {

namespace pc = ledger::projections;

constexpr char kCheckoutPath[] = "/api/v1/billing/checkout/create";
constexpr char kPortalPath[] = "/api/v1/billing/portal/create";
constexpr char kPaymentMethodsPath[] = "/api/v1/billing/payment-methods";
constexpr char kCancelPath[] = "/api/v1/billing/subscription/cancel";
constexpr char kUpgradePath[] = "/api/v1/billing/subscription/upgrade";

constexpr char kCheckoutSessionCreatedV1[] = "stripe.checkout_session_created.v1";
constexpr char kPortalSessionCreatedV1[] = "stripe.portal_session_created.v1";
constexpr char kSubscriptionCancelRequestedV1[] = "stripe.subscription_cancel_requested.v1";
constexpr char kSubscriptionChangeRequestedV1[] = "stripe.subscription_change_requested.v1";

// Stripe's bound on client_reference_id; our user ids go there and into row keys.
constexpr size_t kUserIdBytesMax = 200;
constexpr size_t kBillingBodyBytesMax = 4096;

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Per-user limits of the routes' table. Each checkout, portal session, cancel or plan change
// makes Stripe calls and appends a permanent event (a checkout also a permanent session/<id> row),
// published to Kafka too: a user looping on POST /portal/create got 200 every time, growing the
// log without end and spending Stripe's per-ACCOUNT rate limit (~100 requests/s live), so every
// other customer's checkout, upgrade and cancel answered 503 stripe_rate_limited. One bucket for
// the four (a UI makes one or two such calls per visit): a burst of 10, then one per 6 s -- at
// most ~14,400 events, 5 to 10 MB of log, per user a day. Listing payment methods asks Stripe each
// time and appends nothing: its own bucket, so that a billing page reloaded a few times does not
// use up the budget of the checkout that follows -- a burst of 10, then one per 3 s.
constexpr int64_t kStripeCallBurst = 10;
constexpr int64_t kStripeCallIntervalUs = 6'000'000;
constexpr int64_t kCardListBurst = 10;
constexpr int64_t kCardListIntervalUs = 3'000'000;

// Serializes a user's checkouts (expire the earlier sessions, create, record): two at once would
// each find no open session of the other's. Per user, and only per user: the lock was one of 256
// mutexes picked by a hash of the user id, so unrelated users shared one -- bob, whose id fell on
// alice's, waited up to 10 s while her checkout was slow at Stripe and got 409
// checkout_in_progress. An entry lives only while a checkout of its user holds or awaits it (at
// most one per request in flight, each on a server worker). A checkout that cannot have its turn
// in time (Stripe slow for the user's other one) answers 409 checkout_in_progress rather than
// hold a worker.
class CheckoutTurns {
 public:
  // `user`'s turn while alive, when held(): it came within `wait`.
  class Turn {
   public:
    Turn(CheckoutTurns* turns, const std::string& user, std::chrono::milliseconds wait)
        : turns_(turns), user_(user), held_(turns->Acquire(user, wait)) {}
    ~Turn() {
      if (held_) turns_->Release(user_);
    }
    Turn(const Turn&) = delete;
    Turn& operator=(const Turn&) = delete;
    bool held() const { return held_; }

   private:
    CheckoutTurns* const turns_;
    const std::string user_;
    const bool held_;
  };

 private:
  struct Entry {
    bool held = false;
    int users = 0;  // holding or waiting
    std::condition_variable idle;
  };

  bool Acquire(const std::string& user, std::chrono::milliseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    Entry& entry = entries_[user];  // a node: stays where it is while others come and go
    ++entry.users;
    const bool had = entry.idle.wait_for(lock, wait, [&entry] { return !entry.held; });
    if (had) {
      entry.held = true;
    } else if (--entry.users == 0) {
      entries_.erase(user);
    }
    return had;
  }

  void Release(const std::string& user) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(user);
    it->second.held = false;
    if (--it->second.users == 0) {
      entries_.erase(it);
    } else {
      it->second.idle.notify_one();
    }
  }

  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;  // guarded by mu_
};

struct BillingGuards {
  UserLimiter stripe_calls{kStripeCallBurst, kStripeCallIntervalUs};
  UserLimiter card_lists{kCardListBurst, kCardListIntervalUs};
  CheckoutTurns checkouts;
};

int64_t NowMicros(const AppContext& context) {
  return (context.clock != nullptr ? context.clock : SystemClock::Default())->NowMicros();
}

// Step 2's budget: false after a 429 rate_limited.
bool SpendStripeCall(const AppContext& context, BillingGuards& guards, const Identity& identity,
                     httplib::Response& res) {
  return guards.stripe_calls.TakeOrRefuse(
      identity.subject, NowMicros(context),
      "checkouts, portal sessions, cancels and plan changes are made", res);
}

void Str(JsonWriter& w, const char* key, std::string_view value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

void StrOrNull(JsonWriter& w, const char* key, std::string_view value) {
  w.Key(key);
  if (value.empty()) {
    w.Null();
  } else {
    w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
  }
}

void IntOrNull(JsonWriter& w, const char* key, const std::optional<int64_t>& value) {
  w.Key(key);
  if (value.has_value()) {
    w.Int64(*value);
  } else {
    w.Null();
  }
}

// Appends the prepared events and answers the prepared body: the record of a Stripe call that
// already succeeded. Decide() does no checks on purpose — the call happened; the log must say so.
class RecordStripeCall final : public Command {
 public:
  Status Decide(const DecideContext&, Decision* decision) override {
    decision->events = std::move(events);
    decision->http_status = http_status;
    decision->body = std::move(body);
    return Status::OK();
  }

  std::vector<NewEvent> events;
  int http_status = 200;
  std::string body;
};

bool RequireStripe(const AppContext& context, httplib::Response& res) {
  if (context.ledger == nullptr) {
    WriteProblem(503, "storage_unavailable", "the event store is not open", &res);
    return false;
  }
  if (context.stripe == nullptr) {
    WriteProblem(503, "stripe_not_configured",
                 "Stripe is not configured on this server (STRIPE_SECRET_KEY is not set)", &res);
    return false;
  }
  return true;
}

// The routes' own body limit, checked first: a 5,000-byte body was 503 stripe_not_configured on a
// server without Stripe instead of its 413.
bool RequireSmallBody(const httplib::Request& req, httplib::Response& res) {
  if (req.body.size() <= kBillingBodyBytesMax) return true;
  WriteProblem(413, "payload_too_large", "the body is over 4 KiB", &res);
  return false;
}

// The token's subject is a user id (http/jwt.h checks it for every route), but one of 201 to 255
// bytes is over Stripe's bound for the client_reference_id checkout sends.
bool RequireUsableUserId(const Identity& identity, httplib::Response& res) {
  if (identity.subject.size() <= kUserIdBytesMax) return true;
  WriteProblem(422, "invalid_user_id",
               "the token's subject cannot be used as a Stripe client_reference_id (at most 200 "
               "bytes)",
               &res);
  return false;
}

// Parses an optional JSON object body whose members must be among `allowed`. An empty body is an
// empty object when `empty_ok`.
Status ParseBody(std::string_view body, std::initializer_list<std::string_view> allowed,
                 bool empty_ok, rapidjson::Document* doc) {
  if (body.size() > kBillingBodyBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large", "the body is too large");
  }
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    if (!empty_ok) return Status::InvalidArgument("invalid_json", "a JSON object body is required");
    doc->SetObject();
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(pc::ParseJsonObject(body, doc));
  for (const auto& member : doc->GetObject()) {
    std::string_view name(member.name.GetString(), member.name.GetStringLength());
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pc::Truncated(name) + "'");
    }
  }
  return Status::OK();
}

// {plan_id, billing_cycle?}: `*cycle` stays nullopt without billing_cycle.
Status ParsePlanChoice(const rapidjson::Document& doc, std::string* plan_id,
                       std::optional<BillingCycle>* cycle) {
  pc::ObjectReader reader(doc);
  LEDGER_RETURN_IF_ERROR(reader.String("plan_id", true, plan_id));
  std::string cycle_text;
  bool given = false;
  LEDGER_RETURN_IF_ERROR(reader.String("billing_cycle", false, &cycle_text, &given));
  cycle->reset();
  if (!given) return Status::OK();
  BillingCycle parsed;
  if (!ParseBillingCycle(cycle_text, &parsed)) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "billing_cycle: must be \"monthly\" or \"yearly\"");
  }
  *cycle = parsed;
  return Status::OK();
}

// Loads a plan named in a request body: 422 unknown_plan when the catalog has none.
Status LoadPlan(const StateReader& state, const std::string& plan_id, pc::Plan* plan) {
  Status s = pc::GetPlan(state, plan_id, plan);
  if (s.IsNotFound()) {
    return Status::Make(Code::kUnprocessable, "unknown_plan",
                        "no plan '" + pc::Truncated(plan_id) + "' in the catalog");
  }
  return s;
}

void WriteProblemAt(const Status& status, Position position, httplib::Response& res) {
  WriteStatusProblem(status, &res);
  SetPositionHeader(position, &res);
}

// Steps 2 and 4 of the file comment. Returns false when the response is written (a bad
// Idempotency-Key, a stored result, a reused key, the ledger unavailable).
bool BeginStripeCall(const AppContext& context, const httplib::Request& req,
                     const Identity& identity, const char* route_name, std::string_view operation,
                     RecordStripeCall* command, std::string* stripe_key, httplib::Response& res) {
  if (!ApplyIdempotencyKey(req, route_name, identity, command, &res)) return false;
  if (command->idempotency_key.empty()) {
    *stripe_key = StripeIdempotencyKey(operation, identity.subject, "command:" + NewUuid());
    return true;
  }
  if (AnswerStoredRetry(context.ledger, *command, &res)) return false;
  *stripe_key = StripeIdempotencyKey(
      operation, identity.subject,
      "client:" + command->idempotency_key + ":" + HexEncode(command->request_hash));
  return true;
}

// Step 5: appends `event` and answers `body`.
void FinishStripeCall(const AppContext& context, RecordStripeCall* command, NewEvent event,
                      std::string body, httplib::Response& res) {
  command->events.push_back(std::move(event));
  command->body = std::move(body);
  CommandResult result = context.ledger->Submit(command);
  WriteCommandResult(result, &res);
}

// 409 account_suspended while an admin's suspension (an override whose status grants nothing)
// is set: it decides access whatever the user pays for, so a plan bought or raised would be
// charged and never honoured (consume answered 402). Cancelling and the portal stay open.
Status RefuseSuspended(const StateReader& state, const Identity& identity, std::string_view doing) {
  std::optional<pc::AdminOverride> override;
  LEDGER_RETURN_IF_ERROR(pc::GetAdminOverride(state, identity.subject, &override));
  if (override && override->revokes()) {
    return Status::Conflict("account_suspended", "this account is suspended; contact support "
                                                 "before " + std::string(doing));
  }
  return Status::OK();
}

// ---- POST /checkout/create --------------------------------------------------------------------

StripeCheckoutParams CheckoutParamsFor(const AppContext& context, const Identity& identity,
                                       const pc::Plan& plan, BillingCycle cycle,
                                       const CheckoutPrices& prices, const std::string& customer) {
  StripeCheckoutParams params;
  params.recurring_price_id = prices.recurring_price_id;
  params.one_time_price_id = prices.one_time_price_id;
  params.trial_period_days = prices.trial_period_days;
  params.success_url = context.stripe_success_url;
  params.cancel_url = context.stripe_cancel_url;
  params.client_reference_id = identity.subject;
  // A known customer keeps one customer per user at Stripe; otherwise Checkout creates one.
  params.customer = customer;
  if (customer.empty()) params.customer_email = identity.email;
  params.metadata = {{"user_id", identity.subject},
                     {"plan_id", plan.id},
                     {"billing_cycle", std::string(BillingCycleName(cycle))}};
  return params;
}

// stripe.checkout_session_created.v1 (no URL: it is a bearer link to the payment page).
std::string CheckoutEventData(const StripeCheckoutParams& params, const pc::Plan& plan,
                              BillingCycle cycle, const StripeCheckoutSession& session,
                              const std::string& stripe_key,
                              const std::vector<std::string>& closed_sessions) {
  rapidjson::StringBuffer data;
  JsonWriter w(data);
  w.StartObject();
  Str(w, "user_id", params.client_reference_id);
  Str(w, "plan_id", plan.id);
  Str(w, "billing_cycle", BillingCycleName(cycle));
  Str(w, "session_id", session.id);
  StrOrNull(w, "customer", params.customer);
  Str(w, "price_id", params.recurring_price_id);
  StrOrNull(w, "one_time_price_id", params.one_time_price_id);
  IntOrNull(w, "trial_period_days", params.trial_period_days > 0
                                        ? std::optional<int64_t>(params.trial_period_days)
                                        : std::nullopt);
  Str(w, "stripe_idempotency_key", stripe_key);
  if (!closed_sessions.empty()) {
    w.Key("closed_session_ids");
    w.StartArray();
    for (const std::string& id : closed_sessions) w.String(id.data(), id.size());
    w.EndArray();
  }
  w.EndObject();
  return data.GetString();
}

// A Checkout Session stays payable for 24 hours (Stripe's default and longest). One of the user's
// own still open beside a new one could be paid too -- two subscriptions billing, the second out
// of sight of every route. So the earlier ones are expired at Stripe first, and one already paid
// whose completion has not arrived yet refuses the new checkout (409 checkout_completed) while
// its subscription may bill, and a trial (409 trial_already_used) once it has ended: that
// subscription existed, as CheckAwaitedSubscriptions judges one whose completion did arrive.
// Those never paid are named in the new session's event (`closed_session_ids`) and not looked at
// again; a paid one stays listed until its completion arrives, or a later trial would find
// nothing of it. An old one is asked about too: one paid whose webhooks have failed for more than
// a day (Stripe retries for three) is not expired. (A session created at Stripe but never
// recorded -- the crash window above -- is not known here.)
constexpr size_t kOpenCheckoutsListed = 100;  // rows read; more wait for the next checkout
constexpr size_t kOpenCheckoutsAsked = 20;    // the newest ones asked about at Stripe
constexpr size_t kAwaitedSubscriptionsAsked = 20;

const char kCheckoutCompletedDetail[] =
    "a checkout of yours was just paid; its subscription is on its way "
    "(see /api/v1/billing/subscription-status)";
const char kTrialUsedDetail[] = "the trial is for new customers: subscribe to a paid plan instead";

// Whether a subscription Stripe reports in `status` may still bill (not canceled or expired).
bool MayBill(std::string_view status) {
  return status != "canceled" && status != "incomplete_expired";
}

// A paid session's subscription, asked of Stripe: whether it may still bill (unknown: yes).
Status PaidSessionMayBill(const AppContext& context, const StripeCheckoutSession& session,
                          bool* may_bill) {
  *may_bill = true;
  if (session.subscription.empty()) return Status::OK();
  StripeSubscription subscription;
  Status s = context.stripe->GetSubscription(session.subscription, &subscription);
  if (s.problem() == "stripe_resource_missing") return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  *may_bill = MayBill(subscription.status);
  return Status::OK();
}

// `stripe_key` is the new checkout's own Stripe Idempotency-Key; each expire's key is derived
// from it. Stripe saves the first answer for a key, a 500 included, and replays it for 24 h: with
// a key derived from the session alone, one 500 on an expire refused every later checkout of the
// user (502) until the old session expired by itself. A new checkout now sends a new key; a retry
// of the same request (same client Idempotency-Key) sends the same one.
Status ExpireEarlierCheckouts(const AppContext& context, const ReadView& view,
                              const std::string& user_id, const std::string& stripe_key,
                              bool trial, std::vector<std::string>* closed) {
  std::vector<pc::OpenCheckout> sessions;
  LEDGER_RETURN_IF_ERROR(pc::ListOpenCheckouts(view, user_id, kOpenCheckoutsListed, &sessions));
  size_t asked = 0;
  for (const pc::OpenCheckout& open : sessions) {  // newest first
    if (asked++ == kOpenCheckoutsAsked) break;
    StripeCheckoutSession earlier;
    Status s = context.stripe->GetCheckoutSession(open.session_id, &earlier);
    if (s.problem() == "stripe_resource_missing") {  // not this account's (any more)
      closed->push_back(open.session_id);
      continue;
    }
    LEDGER_RETURN_IF_ERROR(s);
    if (earlier.status == "open") {
      s = context.stripe->ExpireCheckoutSession(
          open.session_id,
          StripeIdempotencyKey("checkout_expire", user_id, stripe_key + ":" + open.session_id),
          &earlier);
      if (!s.ok()) {  // paid meanwhile?
        LEDGER_RETURN_IF_ERROR(context.stripe->GetCheckoutSession(open.session_id, &earlier));
        if (earlier.status == "open") return s;
      }
    }
    if (earlier.status == "complete") {
      bool may_bill = true;
      LEDGER_RETURN_IF_ERROR(PaidSessionMayBill(context, earlier, &may_bill));
      if (may_bill) return Status::Conflict("checkout_completed", kCheckoutCompletedDetail);
      if (trial) return Status::Conflict("trial_already_used", kTrialUsedDetail);
      continue;
    }
    closed->push_back(open.session_id);
  }
  return Status::OK();
}

// A checkout whose completion arrived before its subscription's own events (or without them)
// names a subscription the log has no state for (UserSubscription::awaited_subscription_ids):
// Stripe is asked about it. One that may still bill refuses a new checkout as a known one does
// (two subscriptions billing); any that existed at all has used the trial.
Status CheckAwaitedSubscriptions(const AppContext& context, const pc::UserSubscription& current,
                                 bool trial) {
  size_t asked = 0;
  for (const std::string& id : current.awaited_subscription_ids) {
    if (asked++ == kAwaitedSubscriptionsAsked) break;
    StripeSubscription subscription;
    Status s = context.stripe->GetSubscription(id, &subscription);
    if (s.problem() == "stripe_resource_missing") continue;  // not this account's
    LEDGER_RETURN_IF_ERROR(s);
    if (MayBill(subscription.status)) {
      return Status::Conflict("checkout_completed", kCheckoutCompletedDetail);
    }
    if (trial) {
      return Status::Conflict("trial_already_used", kTrialUsedDetail);
    }
  }
  return Status::OK();
}

// How long a checkout waits for the user's other one (CheckoutTurns) before 409.
constexpr auto kCheckoutLockWait = std::chrono::seconds(10);

void CreateCheckout(const AppContext& context, const httplib::Request& req,
                    const Identity& identity, httplib::Response& res, BillingGuards& guards) {
  if (!RequireSmallBody(req, res) || !RequireStripe(context, res)) return;
  if (context.stripe_success_url.empty()) {
    WriteProblem(503, "stripe_not_configured",
                 "Stripe Checkout is not configured on this server (STRIPE_SUCCESS_URL is not set)",
                 &res);
    return;
  }
  if (!RequireUsableUserId(identity, res)) return;
  rapidjson::Document doc;
  std::string plan_id;
  std::optional<BillingCycle> chosen_cycle;
  Status s = ParseBody(req.body, {"plan_id", "billing_cycle"}, false, &doc);
  if (s.ok()) s = ParsePlanChoice(doc, &plan_id, &chosen_cycle);
  if (!s.ok()) return WriteStatusProblem(s, &res);
  const BillingCycle cycle = chosen_cycle.value_or(BillingCycle::kMonthly);
  RecordStripeCall command;
  std::string stripe_key;
  if (!BeginStripeCall(context, req, identity, kCheckoutPath, "checkout", &command, &stripe_key,
                       res)) {
    return;
  }

  const CheckoutTurns::Turn checkout_turn(&guards.checkouts, identity.subject, kCheckoutLockWait);
  if (!checkout_turn.held()) {
    WriteProblem(409, "checkout_in_progress",
                 "another checkout is being created; retry in a few seconds", &res);
    res.set_header("Retry-After", "5");
    return;
  }
  // A retry of this very request that waited for the lock while the first one recorded its
  // session gets that answer (else it would expire the session it is about to be answered).
  if (!command.idempotency_key.empty() && AnswerStoredRetry(context.ledger, command, &res)) return;
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::Plan plan;
  CheckoutPrices prices;
  pc::UserSubscription current;
  s = LoadPlan(*view, plan_id, &plan);
  // Before what the plan or the subscription would refuse: a plan without a Stripe price yet
  // (409 plan_not_purchasable) told a suspended user to wait for stripe-setup.
  if (s.ok()) s = RefuseSuspended(*view, identity, "subscribing");
  // Not terminal is enough to refuse: an unpaid, paused or incomplete subscription grants nothing
  // now but comes back when its invoice is paid -- with a second one beside it, both would bill.
  // Past its scheduled end (canceled at its period's end) it bills no more, though Stripe's
  // deletion may not have arrived yet (pc::ScheduledEnd): the user subscribes again -- unless
  // another of theirs is still live, which the choice at `now_s` then is (a Professional kept to
  // its period's end next to a Starter still billed let the user buy a third plan).
  const int64_t now_s =
      (context.clock != nullptr ? context.clock : SystemClock::Default())->NowMicros() / 1'000'000;
  if (s.ok()) s = ResolveCheckoutPrices(*view, plan, cycle, &prices);
  if (s.ok()) s = pc::GetUserSubscriptionAt(*view, identity.subject, now_s, &current);
  const std::optional<int64_t> ends = current.has_subscription
                                          ? pc::ScheduledEnd(current.subscription)
                                          : std::nullopt;
  // Only a subscription to a plan of the catalog counts, here and for the trial below: one to a
  // price outside it (an add-on made in Stripe's Dashboard with metadata.user_id) is chosen only
  // when the user has no plan subscription at all (pc::UserSubscription), and refused every plan
  // to its owner (409 subscription_exists; a trial: trial_already_used).
  const bool has_plan_subscription = current.has_subscription && current.plan_id().has_value();
  if (s.ok() && has_plan_subscription && !pc::IsTerminal(current.subscription.status) &&
      !(ends && now_s >= *ends)) {
    s = Status::Conflict("subscription_exists",
                         "you already have a subscription (" + std::string(current.status_name()) +
                             "); change it with /api/v1/billing/subscription/upgrade or the portal");
  }
  // The $1 trial is for new customers: once any subscription of theirs existed (a trial that
  // ended, or a plan), another trial would restart the 7 days and 700 calls for $1 a week.
  if (s.ok() && IsTrialFeePlan(plan) && has_plan_subscription) {
    s = Status::Conflict("trial_already_used", kTrialUsedDetail);
  }
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  if (!SpendStripeCall(context, guards, identity, res)) return;
  s = CheckAwaitedSubscriptions(context, current, IsTrialFeePlan(plan));
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  std::vector<std::string> closed_sessions;
  s = ExpireEarlierCheckouts(context, *view, identity.subject, stripe_key, IsTrialFeePlan(plan),
                             &closed_sessions);
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  StripeCheckoutParams params =
      CheckoutParamsFor(context, identity, plan, cycle, prices, current.customer_id);
  StripeCheckoutSession session;
  s = context.stripe->CreateCheckoutSession(params, stripe_key, &session);
  // The user's customer was deleted at Stripe (the Dashboard, an erasure) and no customer.deleted
  // reached this endpoint (one not subscribed to it): Stripe refuses the customer, and every
  // checkout of the user was a 502 for good. Checkout then creates a new customer, as after
  // customer.deleted, which the session's completion links to the user. Under its own Stripe key:
  // the parameters differ (a retry of this request asks both again, and Stripe replays each).
  if (s.problem() == "stripe_customer_missing" && !params.customer.empty()) {
    spdlog::warn("checkout: Stripe no longer has the user's customer {}; Checkout creates a new "
                 "one (subscribe the webhook endpoint to customer.deleted)",
                 params.customer);
    params = CheckoutParamsFor(context, identity, plan, cycle, prices, "");
    s = context.stripe->CreateCheckoutSession(params, stripe_key + "-new-customer", &session);
  }
  if (!s.ok()) return WriteStatusProblem(s, &res);
  rapidjson::StringBuffer body;
  JsonWriter b(body);
  b.StartObject();
  Str(b, "session_id", session.id);
  Str(b, "url", session.url);
  b.EndObject();
  FinishStripeCall(context, &command,
                   NewEvent{kCheckoutSessionCreatedV1, identity.subject,
                            CheckoutEventData(params, plan, cycle, session, stripe_key,
                                              closed_sessions)},
                   body.GetString(), res);
}

// ---- POST /portal/create ----------------------------------------------------------------------

void CreatePortal(const AppContext& context, const httplib::Request& req,
                  const Identity& identity, httplib::Response& res, BillingGuards& guards) {
  if (!RequireSmallBody(req, res) || !RequireStripe(context, res)) return;
  rapidjson::Document doc;
  Status s = ParseBody(req.body, {}, true, &doc);
  if (!s.ok()) return WriteStatusProblem(s, &res);
  RecordStripeCall command;
  std::string stripe_key;
  if (!BeginStripeCall(context, req, identity, kPortalPath, "portal", &command, &stripe_key, res)) {
    return;
  }
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::UserSubscription current;
  // The customer subscription-status shows and checkout uses: the subscription chosen at the
  // request's time (past a newer plan's scheduled end on another customer, the portal opened that
  // customer's, not the one of the plan still billed).
  s = pc::GetUserSubscriptionAt(*view, identity.subject, NowMicros(context) / 1'000'000, &current);
  if (s.ok() && current.customer_id.empty()) {
    s = Status::Conflict("no_stripe_customer",
                         "there is no Stripe customer for you yet: subscribe through checkout first");
  }
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  if (!SpendStripeCall(context, guards, identity, res)) return;
  StripePortalSession session;
  s = context.stripe->CreatePortalSession(current.customer_id, context.stripe_portal_return_url,
                                          stripe_key, &session);
  if (!s.ok()) return WriteStatusProblem(s, &res);

  rapidjson::StringBuffer data;
  JsonWriter w(data);
  w.StartObject();
  Str(w, "user_id", identity.subject);
  Str(w, "customer", current.customer_id);
  StrOrNull(w, "session_id", session.id);
  Str(w, "stripe_idempotency_key", stripe_key);
  w.EndObject();
  FinishStripeCall(context, &command,
                   NewEvent{kPortalSessionCreatedV1, identity.subject, data.GetString()},
                   "{\"url\":" + JsonQuote(session.url) + "}", res);
}

// ---- GET /payment-methods ---------------------------------------------------------------------

void ListPaymentMethods(const AppContext& context, const Identity& identity,
                        httplib::Response& res, BillingGuards& guards) {
  if (!RequireStripe(context, res)) return;
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::UserSubscription current;
  // The customer subscription-status shows, as the portal's.
  Status s =
      pc::GetUserSubscriptionAt(*view, identity.subject, NowMicros(context) / 1'000'000, &current);
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  std::vector<StripeCard> cards;
  bool has_more = false;
  // No customer yet: no cards (Stripe is not asked).
  if (!current.customer_id.empty()) {
    if (!guards.card_lists.TakeOrRefuse(identity.subject, NowMicros(context),
                                        "payment methods are listed", res)) {
      return;
    }
    s = context.stripe->ListCards(current.customer_id, &cards, &has_more);
    if (!s.ok()) return WriteStatusProblem(s, &res);
  }
  // A bare list, as the seed's `List[PaymentMethod]`; more than Stripe's 100 is said in a header.
  rapidjson::StringBuffer body;
  JsonWriter w(body);
  w.StartArray();
  for (const StripeCard& card : cards) {
    w.StartObject();
    Str(w, "id", card.id);
    Str(w, "type", "card");
    Str(w, "brand", card.brand);
    Str(w, "last4", card.last4);
    w.Key("exp_month");
    w.Int64(card.exp_month);
    w.Key("exp_year");
    w.Int64(card.exp_year);
    w.EndObject();
  }
  w.EndArray();
  WriteJsonAt(200, body.GetString(), view->position(), &res);
  res.set_header("X-Has-More", has_more ? "true" : "false");
}

// ---- Subscription changes ---------------------------------------------------------------------

// Whether the current subscription has ended by `now_s`: terminal, or past its scheduled end
// (pc::ScheduledEnd: Stripe has canceled it, its deletion's webhook may be late).
bool EndedAt(const pc::UserSubscription& current, int64_t now_s) {
  return pc::IsTerminal(current.subscription.status) ||
         pc::EndedBySchedule(current.subscription, now_s).has_value();
}

// The caller's current subscription, when it can still be changed: 409 no_active_subscription
// otherwise. Chosen at the request's time, as subscription-status shows it: past a newer plan's
// scheduled end (its deletion late) the user's older plan still billed is the one -- cancel {}
// acted on the ended one (Stripe: already canceled, 200) and left the other billing, and upgrade
// answered 409 no_active_subscription after spending a Stripe call.
// Past its own scheduled end (every plan of the user's past theirs, the deletions late) it has
// ended as a terminal row has: upgrade spent a Stripe call to be told 409 no_active_subscription,
// and a cancel-now asked Stripe to DELETE what it had already canceled. Only a cancel at the
// period's end (`past_its_end_too`) still asks Stripe then: one Stripe ended there is what was
// asked (200, its canceled state), one it ended before then some other way 409.
Status ChangeableSubscription(const StateReader& state, const Identity& identity, int64_t now_s,
                              bool past_its_end_too, pc::UserSubscription* current) {
  LEDGER_RETURN_IF_ERROR(pc::GetUserSubscriptionAt(state, identity.subject, now_s, current));
  if (!current->has_subscription || current->subscription_id().empty() ||
      (past_its_end_too ? pc::IsTerminal(current->subscription.status)
                        : EndedAt(*current, now_s))) {
    return Status::Conflict("no_active_subscription", "you have no subscription to change");
  }
  return Status::OK();
}

// A plan change needs a subscription whose invoices are paid. Within the interval a change
// invoices nothing now (proration waits for the next invoice), so payment_behavior
// error_if_incomplete refuses nothing and Stripe applies the new price at once: a trial converted
// to Starter whose first invoice failed (past_due, which keeps access as a grace period) moved to
// Enterprise would use Enterprise free through dunning, and the proration credit for the old price
// of an unpaid, incomplete or paused subscription would be a credit for money never paid. Refused
// until the open invoice is settled (the portal); cancelling stays possible.
bool OwesAnInvoice(pc::SubscriptionStatus status) {
  return status == pc::SubscriptionStatus::kPastDue || status == pc::SubscriptionStatus::kUnpaid ||
         status == pc::SubscriptionStatus::kIncomplete || status == pc::SubscriptionStatus::kPaused;
}

Status PaymentRequiredToChange(std::string_view status) {
  return Status::Conflict("payment_required",
                          "your subscription is " + std::string(status) +
                              ": settle its open invoice (or add a payment method) in the "
                              "customer portal (/api/v1/billing/portal/create) before changing "
                              "the plan");
}

std::string SubscriptionStateJson(const StripeSubscription& sub, bool at_period_end) {
  rapidjson::StringBuffer body;
  JsonWriter w(body);
  w.StartObject();
  Str(w, "subscription_id", sub.id);
  Str(w, "status", sub.status);
  w.Key("at_period_end");
  w.Bool(at_period_end);
  w.Key("cancel_at_period_end");
  w.Bool(sub.cancel_at_period_end);
  IntOrNull(w, "cancel_at", sub.cancel_at);
  IntOrNull(w, "current_period_end", sub.current_period_end);
  w.EndObject();
  return body.GetString();
}

// What a cancel-now leaves on Stripe's subscription as cancellation_details[comment]: the
// request's marker (StripeApi::RequestMarker of its derived Stripe Idempotency-Key; DELETE itself
// sends no key). Sent on every cancel-now; only a client's Idempotency-Key makes a retry that can
// match it. Not the key itself: a user can type any comment when cancelling in the portal, and
// the key is computable from their own request (a hash of the user, the client's key and the
// body), so a comment of `ledgerd_request:<that key>` made their own cancel pass for this one's
// and recorded a cancel ledgerd never made. The marker is keyed by the server's secret.
constexpr char kCancelRequestCommentPrefix[] = "ledgerd_request:";

std::string CancelRequestComment(const AppContext& context, const std::string& stripe_key) {
  return kCancelRequestCommentPrefix + context.stripe->RequestMarker(stripe_key);
}

// A retry of a cancel-now whose first attempt Stripe carried out but the log never recorded (a
// crash, a full write queue's 503, the answer lost). Its subscription has ended at Stripe, and
// the log may have heard so since (customer.subscription.deleted folded): then the caller's
// subscription is terminal and ChangeableSubscription refuses it (409 no_active_subscription) --
// the client would be told its cancel failed although Stripe did it, and the event never
// recorded. Or the user has subscribed again since: then the current subscription is the new
// one, and the retry cancelled it (the user lost the plan just bought, charged for nothing). So
// before the current one is touched, Stripe is asked about the subscription the first attempt
// may have ended: the current one when it has ended (EndedAt: also past its scheduled end, the
// deletion late -- a cancel-now made before that end), and the user's others
// (UserSubscription::other_subscription_ids, the most recent first, at most
// kEarlierSubscriptionsAsked) -- only the one named when the body names one. Asked only when the
// request can be such a retry (a client Idempotency-Key, cancel-now), first attempts included:
// they cannot be told apart. `*canceled` is true when Stripe shows one canceled with this
// request's comment (`*sub` holds it then). A Stripe error other than a missing subscription is
// returned (the client may retry: it is not decided yet); anything else leaves the current one
// to act on. `*asked_stripe` is true once Stripe was asked.
constexpr size_t kEarlierSubscriptionsAsked = 20;

Status CanceledByThisRequest(const AppContext& context, const RecordStripeCall& command,
                             bool at_period_end, const pc::UserSubscription& current,
                             int64_t now_s, const std::optional<std::string>& named,
                             const std::string& stripe_key, StripeSubscription* sub,
                             bool* canceled, bool* asked_stripe) {
  *canceled = false;
  *asked_stripe = false;
  if (at_period_end || command.idempotency_key.empty()) return Status::OK();
  std::vector<std::string> asked;
  if (current.has_subscription && !current.subscription_id().empty() &&
      EndedAt(current, now_s)) {
    asked.push_back(current.subscription_id());
  }
  for (const std::string& id : current.other_subscription_ids) {
    if (asked.size() == kEarlierSubscriptionsAsked) break;
    asked.push_back(id);
  }
  for (const std::string& id : asked) {
    if (named && *named != id) continue;
    *asked_stripe = true;
    Status s = context.stripe->GetSubscription(id, sub);
    if (s.problem() == "stripe_resource_missing") continue;
    LEDGER_RETURN_IF_ERROR(s);
    if (sub->status == "canceled" &&
        sub->cancellation_comment == CancelRequestComment(context, stripe_key)) {
      *canceled = true;
      return Status::OK();
    }
  }
  return Status::OK();
}

// The subscription a cancel names (`subscription_id`) when it is not the caller's current one: one
// of the caller's others (UserSubscription::other_subscription_ids) that can still bill. A user
// may have two live at once -- a second checkout, one made in Stripe's Dashboard -- and the older
// one is not the current one (Preferred chose the newer): naming it answered 404 though it was
// theirs, and without naming it the cancel hit the newer one, so it billed on. `*id` is set when
// it is one; one of theirs that has ended is 409 no_active_subscription; anything else (another
// user's, an unknown id) stays 404.
Status NamedOtherSubscription(const StateReader& state, const pc::UserSubscription& current,
                              const std::string& named, std::string* id) {
  const std::vector<std::string>& others = current.other_subscription_ids;
  if (std::find(others.begin(), others.end(), named) == others.end()) {
    return Status::NotFound("no such subscription of the caller's");  // another's is not found
  }
  pc::SubscriptionRecord record;
  LEDGER_RETURN_IF_ERROR(pc::GetSubscription(state, named, &record));
  if (record.deleted || pc::IsTerminal(record.status)) {
    return Status::Conflict("no_active_subscription", "that subscription has ended");
  }
  *id = named;
  return Status::OK();
}

// {at_period_end (default true), subscription_id (optional: one of the caller's that can still
// bill; without it, the current one)}.
// At the period end: POST cancel_at_period_end=true under the request's Stripe key. Now: DELETE
// ?invoice_now=true with cancellation_details[comment] naming the request (CancelRequestComment);
// a retry under the same client Idempotency-Key finds that comment at Stripe on the subscription
// its first attempt ended -- ended since in the log, or the user's earlier one when they have
// subscribed again -- and is answered as the first attempt would have been (the event recorded
// once; the new subscription untouched).
void CancelSubscription(const AppContext& context, const httplib::Request& req,
                        const Identity& identity, httplib::Response& res, BillingGuards& guards) {
  if (!RequireSmallBody(req, res) || !RequireStripe(context, res)) return;
  rapidjson::Document doc;
  bool at_period_end = true;
  // The seed's clients also name the subscription: it must be the caller's own.
  std::string named_subscription;
  bool named = false;
  Status s = ParseBody(req.body, {"at_period_end", "subscription_id"}, true, &doc);
  if (s.ok()) s = pc::ObjectReader(doc).Bool("at_period_end", false, &at_period_end);
  if (s.ok()) {
    s = pc::ObjectReader(doc).String("subscription_id", false, &named_subscription, &named);
  }
  if (!s.ok()) return WriteStatusProblem(s, &res);
  RecordStripeCall command;
  std::string stripe_key;
  if (!BeginStripeCall(context, req, identity, kCancelPath,
                       at_period_end ? "cancel_at_period_end" : "cancel_now", &command,
                       &stripe_key, res)) {
    return;
  }
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::UserSubscription current;
  const int64_t now_s = NowMicros(context) / 1'000'000;
  s = ChangeableSubscription(*view, identity, now_s, at_period_end, &current);
  // Whether this request ended a subscription already (a retry whose record was lost), asked
  // before the current one is touched: it may be a new one the user subscribed to since.
  StripeSubscription sub;
  bool canceled_already = false;
  // The budget is spent where Stripe is first asked; a refusal from ledgerd's own state spends
  // nothing (a past_due user's refused clicks left no budget for the portal that pays). It is
  // taken before CanceledByThisRequest, which may ask Stripe, and given back below when the
  // request is refused without Stripe asked: ten `POST /subscription/cancel {}` of a user with
  // no subscription (409) or naming another's (404) left no budget for the checkout that
  // followed (429).
  bool spent = false;
  bool asked_stripe = false;
  if (s.ok() || s.problem() == "no_active_subscription") {
    if (!SpendStripeCall(context, guards, identity, res)) return;
    spent = true;
    Status asked = CanceledByThisRequest(
        context, command, at_period_end, current, now_s,
        named ? std::optional<std::string>(named_subscription) : std::nullopt, stripe_key, &sub,
        &canceled_already, &asked_stripe);
    if (!asked.ok()) return WriteStatusProblem(asked, &res);
    if (canceled_already) s = Status::OK();
  }
  // The subscription acted on: the current one, or another of the caller's that the body names.
  // An id that is none of theirs is 404 whether or not they have a subscription to change.
  std::string target = current.subscription_id();
  if (named && !canceled_already && named_subscription != current.subscription_id() &&
      (s.ok() || s.problem() == "no_active_subscription")) {
    s = NamedOtherSubscription(*view, current, named_subscription, &target);
  }
  if (!s.ok()) {
    if (spent && !asked_stripe) guards.stripe_calls.GiveBack(identity.subject);
    return WriteProblemAt(s, view->position(), res);
  }
  if (at_period_end) {
    // Asked even when ledgerd's state says the subscription is already set to end then: that
    // state may be stale. Alice cancels, Stripe's update arrives, she clicks "Renew" in the portal
    // (Stripe: cancel_at_period_end=false, its webhook still retrying) and cancels again -- this
    // answered 200 from the projection, asked nothing, and Stripe renewed and charged her. The
    // update is idempotent at Stripe; the budget bounds a loop of clicks.
    s = context.stripe->SetCancelAtPeriodEnd(target, true, stripe_key, &sub);
  } else if (!canceled_already) {
    s = context.stripe->CancelSubscriptionNow(target, CancelRequestComment(context, stripe_key),
                                              &sub);
  }
  if (!s.ok()) return WriteStatusProblem(s, &res);
  // DELETE carries no Idempotency-Key at Stripe (it is idempotent by itself).
  if (!at_period_end) stripe_key.clear();

  rapidjson::StringBuffer data;
  JsonWriter w(data);
  w.StartObject();
  Str(w, "user_id", identity.subject);
  Str(w, "subscription_id", sub.id);
  StrOrNull(w, "customer", sub.customer.empty() ? current.customer_id : sub.customer);
  w.Key("at_period_end");
  w.Bool(at_period_end);
  Str(w, "status", sub.status);
  w.Key("cancel_at_period_end");
  w.Bool(sub.cancel_at_period_end);
  IntOrNull(w, "cancel_at", sub.cancel_at);
  IntOrNull(w, "current_period_end", sub.current_period_end);
  StrOrNull(w, "stripe_idempotency_key", stripe_key);
  w.EndObject();
  FinishStripeCall(context, &command,
                   NewEvent{kSubscriptionCancelRequestedV1, identity.subject, data.GetString()},
                   SubscriptionStateJson(sub, at_period_end), res);
}

// Metadata the change leaves on Stripe's subscription: the request (its Stripe Idempotency-Key)
// and the price it replaced, so that a client's retry of a change Stripe made but the log never
// recorded (a crash, a full write queue) is known for what it is.
constexpr char kChangeRequestMetadata[] = "ledgerd_request";
constexpr char kChangeFromPriceMetadata[] = "ledgerd_from_price";
constexpr char kChangeEndedTrialMetadata[] = "ledgerd_ended_trial";

// Whether `item` already bills `plan` in `cycle` on a price the catalog has since replaced: its
// price is one the plan named before (price/<id> rows: a price once named keeps its plan) and
// Stripe's price interval is the cycle's. A subscriber kept on Professional's old price after an
// admin repriced it, choosing Professional monthly again, was moved to the new price with
// prorations (the change only compared the item's price with the catalog's current one). While
// Stripe still calls it trialing the change goes on: it ends the trial (the trial -> Starter case).
Status OnAFormerPriceOfThePlan(const StateReader& state, const StripeSubscriptionItem& item,
                               const pc::Plan& plan, BillingCycle cycle, bool trialing,
                               bool* on_plan) {
  *on_plan = false;
  const std::string_view interval = cycle == BillingCycle::kYearly ? "year" : "month";
  if (trialing || item.interval != interval) return Status::OK();
  std::optional<std::string> owner;
  LEDGER_RETURN_IF_ERROR(pc::PlanForStripePrice(state, item.price_id, &owner));
  *on_plan = owner == plan.id;
  return Status::OK();
}

Status AlreadyOnPlan(const pc::Plan& plan, BillingCycle cycle) {
  return Status::Conflict("already_on_plan", "the subscription is already on plan '" + plan.id +
                                                 "' (" + std::string(BillingCycleName(cycle)) +
                                                 ")");
}

// The recurring item of Stripe's subscription that a change to `price_id` replaces, and the price
// the change replaces (`*from_price`). 409 no_plan_subscription when no item bills a plan of the
// catalog (an add-on's subscription). 409 no_active_subscription when it ended at Stripe, 409
// payment_required when it owes an invoice there (past_due, unpaid, incomplete, paused), 409
// already_on_plan when nothing would change -- unless this very request (`stripe_key`) made that
// change: then it is sent again (Stripe replays it) and recorded -- or when the item is on a
// price the plan named before in that cycle (OnAFormerPriceOfThePlan), 409 subscription_scheduled
// when a schedule manages it (ManagedBySchedule). 502 when Stripe shows no recurring item.
Status ItemToChange(const StateReader& state, const StripeSubscription& before,
                    const pc::Plan& plan, BillingCycle cycle, const std::string& price_id,
                    const std::string& stripe_key, const StripeSubscriptionItem** item,
                    std::string* from_price, bool* end_trial) {
  // Stripe keeps a trial running through a price change and prorates nothing during it: a
  // trialing subscription changed to Enterprise would get Enterprise free until the trial's
  // end (and cancel before it). A change ends the trial now, so the new price is invoiced.
  *end_trial = before.status == "trialing";
  pc::SubscriptionStatus status;
  if (pc::ParseSubscriptionStatus(before.status, &status) && pc::IsTerminal(status)) {
    return Status::Conflict("no_active_subscription", "the subscription has ended at Stripe");
  }
  // Stripe's own status too: the projection may not have heard of the failed invoice yet.
  if (pc::ParseSubscriptionStatus(before.status, &status) && OwesAnInvoice(status)) {
    return PaymentRequiredToChange(before.status);
  }
  // The item billing a plan of the catalog (a price a plan names or once named), never an
  // add-on's: the first recurring item of a subscription holding only an add-on (a price made in
  // Stripe's Dashboard), chosen when the user had no plan subscription, had its price replaced by
  // the plan's -- the add-on gone, the plan billed in its place.
  *item = nullptr;
  bool recurring = false;
  for (const StripeSubscriptionItem& candidate : before.items) {
    if (candidate.interval.empty() || candidate.id.empty()) continue;
    recurring = true;
    std::optional<std::string> billed_plan;
    LEDGER_RETURN_IF_ERROR(pc::PlanForStripePrice(state, candidate.price_id, &billed_plan));
    if (billed_plan) {
      *item = &candidate;
      break;
    }
  }
  if (!recurring) {
    return Status::Make(Code::kBadGateway, "stripe_error",
                        "the subscription at Stripe has no recurring item");
  }
  if (*item == nullptr) {
    return Status::Conflict("no_plan_subscription",
                            "you have no subscription to a plan to change (yours bills no plan "
                            "of the catalog): subscribe to one through "
                            "/api/v1/billing/checkout/create");
  }
  // Same price: nothing to do -- what decides is the price Stripe bills, not the plan_id tag. A
  // trial that converted by itself (checkout tagged it "trial", Stripe moved it to Starter's
  // price at the trial's end, the tag stayed) or a Dashboard subscription with no tag, changed
  // to Starter, was sent to Stripe and recorded as a change from Starter to Starter. While
  // Stripe still calls it trialing, the same price under another tag is the trial -> Starter
  // case: the change ends the trial now (only the tag and trial_end change).
  *from_price = (*item)->price_id;
  auto tagged = before.metadata.find("plan_id");
  const bool tagged_with_plan = tagged != before.metadata.end() && tagged->second == plan.id;
  if ((*item)->price_id == price_id && (tagged_with_plan || !*end_trial)) {
    auto request = before.metadata.find(kChangeRequestMetadata);
    auto from = before.metadata.find(kChangeFromPriceMetadata);
    if (request != before.metadata.end() && request->second == stripe_key &&
        from != before.metadata.end()) {
      *from_price = from->second;
      // The retry must send what the first request sent (Stripe replays it by its key).
      auto ended = before.metadata.find(kChangeEndedTrialMetadata);
      *end_trial = ended != before.metadata.end() && ended->second == stripe_key;
      return Status::OK();
    }
    return AlreadyOnPlan(plan, cycle);
  }
  bool on_former_price = false;
  if ((*item)->price_id != price_id) {
    LEDGER_RETURN_IF_ERROR(
        OnAFormerPriceOfThePlan(state, **item, plan, cycle, *end_trial, &on_former_price));
  }
  if (on_former_price) return AlreadyOnPlan(plan, cycle);
  // A subscription a schedule manages takes a price change -- Stripe refuses only a change of its
  // cancelation -- but when the schedule's next phase starts, Stripe sets its items to that
  // phase's: the dearer plan charged now (prorated) was replaced at the period's end by the price
  // scheduled, while the log said the plan had changed.
  if (!before.schedule.empty()) {
    return ManagedBySchedule("it would undo this change when it takes effect");
  }
  return Status::OK();
}

// stripe.subscription_change_requested.v1.
std::string ChangeEventData(const Identity& identity, const pc::UserSubscription& current,
                            const StripeSubscriptionItem& item, const std::string& from_price,
                            const StripePriceChangeParams& change, const StripeSubscription& after,
                            const pc::Plan& plan, BillingCycle cycle,
                            const std::string& stripe_key) {
  rapidjson::StringBuffer data;
  JsonWriter w(data);
  w.StartObject();
  Str(w, "user_id", identity.subject);
  Str(w, "subscription_id", after.id);
  StrOrNull(w, "customer", after.customer.empty() ? current.customer_id : after.customer);
  Str(w, "item_id", item.id);
  Str(w, "from_price_id", from_price);
  StrOrNull(w, "from_plan_id", current.plan_id().value_or(""));
  Str(w, "to_plan_id", plan.id);
  Str(w, "billing_cycle", BillingCycleName(cycle));
  Str(w, "price_id", change.price_id);
  Str(w, "proration_behavior", change.proration_behavior);
  Str(w, "status", after.status);
  Str(w, "stripe_idempotency_key", stripe_key);
  w.EndObject();
  return data.GetString();
}

// The catalog's refusal of a change to `plan`, decided before the budget is spent and Stripe
// asked (a user choosing the trial again and again spent it on a GET each, their portal then
// 429). Without a chosen cycle, Stripe's interval decides only when one cycle is sellable (then
// the route refuses the other after asking); sold in neither, the monthly refusal is answered.
Status RefuseUnsellableChange(const pc::Plan& plan, std::optional<BillingCycle> chosen_cycle) {
  std::string unused;
  if (chosen_cycle) return ResolveChangePrice(plan, *chosen_cycle, &unused);
  Status monthly = ResolveChangePrice(plan, BillingCycle::kMonthly, &unused);
  if (monthly.ok() || ResolveChangePrice(plan, BillingCycle::kYearly, &unused).ok()) {
    return Status::OK();
  }
  return monthly;
}

void UpgradeSubscription(const AppContext& context, const httplib::Request& req,
                         const Identity& identity, httplib::Response& res,
                         BillingGuards& guards) {
  if (!RequireSmallBody(req, res) || !RequireStripe(context, res)) return;
  rapidjson::Document doc;
  std::string plan_id;
  std::optional<BillingCycle> chosen_cycle;
  Status s = ParseBody(req.body, {"plan_id", "billing_cycle"}, false, &doc);
  if (s.ok()) s = ParsePlanChoice(doc, &plan_id, &chosen_cycle);
  if (!s.ok()) return WriteStatusProblem(s, &res);
  RecordStripeCall command;
  std::string stripe_key;
  if (!BeginStripeCall(context, req, identity, kUpgradePath, "change_plan", &command, &stripe_key,
                       res)) {
    return;
  }

  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::Plan plan;
  std::string price_id;
  pc::UserSubscription current;
  s = LoadPlan(*view, plan_id, &plan);
  // First, as for checkout: 409 payment_required sent a suspended user to pay an invoice for a
  // change that would still be refused.
  if (s.ok()) s = RefuseSuspended(*view, identity, "changing plans");
  if (s.ok()) {
    s = ChangeableSubscription(*view, identity, NowMicros(context) / 1'000'000, false, &current);
  }
  if (s.ok() && OwesAnInvoice(current.subscription.status)) {
    s = PaymentRequiredToChange(current.status_name());
  }
  if (s.ok()) s = RefuseUnsellableChange(plan, chosen_cycle);
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  if (!SpendStripeCall(context, guards, identity, res)) return;
  // Stripe's own view of the subscription: the item to change and its current price (the
  // projection can lag behind a webhook).
  StripeSubscription before;
  s = context.stripe->GetSubscription(current.subscription_id(), &before);
  if (!s.ok()) return WriteStatusProblem(s, &res);
  // Without billing_cycle a change keeps the subscription's interval at Stripe: a yearly
  // subscriber moved to a monthly price would be re-anchored and invoiced at once, the year's
  // rest left as credit.
  BillingCycle cycle = BillingCycle::kMonthly;
  if (chosen_cycle) {
    cycle = *chosen_cycle;
  } else {
    for (const StripeSubscriptionItem& item : before.items) {
      if (item.interval.empty()) continue;
      if (item.interval == "year") cycle = BillingCycle::kYearly;
      break;
    }
  }
  s = ResolveChangePrice(plan, cycle, &price_id);
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  const StripeSubscriptionItem* item = nullptr;
  std::string from_price;
  bool end_trial = false;
  s = ItemToChange(*view, before, plan, cycle, price_id, stripe_key, &item, &from_price,
                   &end_trial);
  if (!s.ok()) return WriteProblemAt(s, view->position(), res);
  StripePriceChangeParams change;
  change.subscription_id = before.id;
  change.item_id = item->id;
  change.price_id = price_id;
  change.end_trial = end_trial;
  change.metadata = {{"plan_id", plan.id},
                     {"billing_cycle", std::string(BillingCycleName(cycle))},
                     {kChangeRequestMetadata, stripe_key},
                     {kChangeFromPriceMetadata, from_price}};
  // Always sent (Stripe merges metadata: a key set once stays): the request that ended the trial,
  // or "" (which removes the key).
  change.metadata.emplace_back(kChangeEndedTrialMetadata, end_trial ? stripe_key : "");
  StripeSubscription after;
  s = context.stripe->ChangeSubscriptionPrice(change, stripe_key, &after);
  if (!s.ok()) return WriteStatusProblem(s, &res);

  rapidjson::StringBuffer body;
  JsonWriter b(body);
  b.StartObject();
  Str(b, "subscription_id", after.id);
  Str(b, "plan_id", plan.id);
  Str(b, "billing_cycle", BillingCycleName(cycle));
  Str(b, "price_id", price_id);
  Str(b, "status", after.status);
  Str(b, "proration_behavior", change.proration_behavior);
  b.EndObject();
  FinishStripeCall(context, &command,
                   NewEvent{kSubscriptionChangeRequestedV1, identity.subject,
                            ChangeEventData(identity, current, *item, from_price, change, after,
                                            plan, cycle, stripe_key)},
                   body.GetString(), res);
}

}  // namespace

void AddBillingRoutes(const AppContext& context, RouteTable* routes) {
  auto guards = std::make_shared<BillingGuards>();
  routes->Add("POST", kCheckoutPath, kCheckoutPath, Policy::kUser,
              [context, guards](const httplib::Request& req, httplib::Response& res,
                                const Identity& identity) {
                CreateCheckout(context, req, identity, res, *guards);
              });
  routes->Add("POST", kPortalPath, kPortalPath, Policy::kUser,
              [context, guards](const httplib::Request& req, httplib::Response& res,
                                const Identity& identity) {
                CreatePortal(context, req, identity, res, *guards);
              });
  routes->Add("GET", kPaymentMethodsPath, kPaymentMethodsPath, Policy::kUser,
              [context, guards](const httplib::Request&, httplib::Response& res,
                                const Identity& identity) {
                ListPaymentMethods(context, identity, res, *guards);
              });
  routes->Add("POST", kCancelPath, kCancelPath, Policy::kUser,
              [context, guards](const httplib::Request& req, httplib::Response& res,
                                const Identity& identity) {
                CancelSubscription(context, req, identity, res, *guards);
              });
  routes->Add("POST", kUpgradePath, kUpgradePath, Policy::kUser,
              [context, guards](const httplib::Request& req, httplib::Response& res,
                                const Identity& identity) {
                UpgradeSubscription(context, req, identity, res, *guards);
              });
}

}  // namespace ledger::http
