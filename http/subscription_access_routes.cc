// Access, answered from the subscription projection (projections/subscriptions.h) and the plan
// catalog at one Ledger::Snapshot(); never from Stripe. Every answer carries X-Ledger-Position.
//
//   GET  /api/v1/subscriptions/my-access                      user
//   POST /api/v1/subscriptions/check-access/{service}         user (itself) or service (?user_id=)
//   GET  /api/v1/subscriptions/admin/user-access/{user_id}    admin: my-access for that user
//   GET  /api/v1/billing/subscription-status                  user
//
// A user without a subscription gets ordinary answers ("status":"none", no plan, no services);
// check-access then says {"allowed":false,"reason":"no_subscription"}. A user naming another
// user's id on check-access gets 404 (CONTRACT.md §2: another user's objects are not found).
//
// my-access (and admin user-access) report the plan's quota with the current window's usage
// (projections/usage.h GetCurrentUsage): "quota": {"limit", "window", "used", "remaining",
// "window_start", "window_end", "window_kind"} — limit/remaining null when unlimited; remaining
// includes a trial's total cap and is 0 once the trial has ended.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <memory>
#include <string>

#include "http/problem.h"
#include "http/routes.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"

namespace ledger::http {

namespace {

namespace pj = ledger::projections;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr char kMyAccessPath[] = "/api/v1/subscriptions/my-access";
constexpr char kCheckAccessPattern[] = R"(/api/v1/subscriptions/check-access/([^/]+))";
constexpr char kCheckAccessName[] = "/api/v1/subscriptions/check-access/{service}";
constexpr char kUserAccessPattern[] = R"(/api/v1/subscriptions/admin/user-access/([^/]+))";
constexpr char kUserAccessName[] = "/api/v1/subscriptions/admin/user-access/{user_id}";
constexpr char kStatusPath[] = "/api/v1/billing/subscription-status";
constexpr size_t kServiceIdBytesMax = 64;

// The subscription's public fields (no Stripe event bookkeeping).
void WriteSubscription(JsonWriter* w, const pj::SubscriptionRecord& r) {
  w->StartObject();
  w->Key("id");
  json::String(w, r.subscription_id);
  w->Key("status");
  json::String(w, pj::SubscriptionStatusName(r.status));
  w->Key("plan_id");
  json::OptString(w, r.plan_id);
  w->Key("price_id");
  json::OptString(w, r.price_id);
  w->Key("interval");
  json::OptString(w, r.interval);
  w->Key("current_period_start");
  json::OptInt(w, r.current_period_start);
  w->Key("current_period_end");
  json::OptInt(w, r.current_period_end);
  w->Key("cancel_at_period_end");
  w->Bool(r.cancel_at_period_end);
  w->Key("cancel_at");
  json::OptInt(w, r.cancel_at);
  w->Key("canceled_at");
  json::OptInt(w, r.canceled_at);
  w->Key("ended_at");
  json::OptInt(w, r.ended_at);
  w->Key("trial_start");
  json::OptInt(w, r.trial_start);
  w->Key("trial_end");
  json::OptInt(w, r.trial_end);
  w->Key("created");
  json::OptInt(w, r.created);
  w->Key("updated_by_event_created");
  w->Int64(r.event_created);
  w->EndObject();
}

void WriteInvoice(JsonWriter* w, const std::optional<pj::InvoiceRecord>& invoice) {
  if (!invoice) {
    w->Null();
    return;
  }
  w->StartObject();
  w->Key("id");
  json::String(w, invoice->invoice_id);
  w->Key("status");
  json::String(w, invoice->paid ? "paid" : "payment_failed");
  w->Key("amount_due");
  json::OptInt(w, invoice->amount_due);
  w->Key("amount_paid");
  json::OptInt(w, invoice->amount_paid);
  w->Key("currency");
  json::OptString(w, invoice->currency);
  w->Key("attempt_count");
  json::OptInt(w, invoice->attempt_count);
  w->Key("next_payment_attempt");
  json::OptInt(w, invoice->next_payment_attempt);
  w->Key("created");
  w->Int64(invoice->event_created);
  w->EndObject();
}

// What my-access (and admin user-access) says about a user. `ended` is why the access its status
// grants is over (projections/usage.h AccessEndedReason: the problem a consume would answer 402
// with), or "" when it is not.
std::string AccessJson(const pj::UserAccess& access, const pj::CurrentUsage& usage,
                       std::string_view ended) {
  const pj::UserSubscription& sub = access.subscription;
  const bool usable = access.access != pj::AccessLevel::kNone && ended.empty();
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, sub.user_id);
  w.Key("email");
  json::NonEmptyOrNull(&w, sub.email);
  w.Key("has_access");
  w.Bool(usable);
  w.Key("access");
  json::String(&w, pj::AccessLevelName(access.access));
  w.Key("access_ended");
  if (ended.empty()) {
    w.Null();
  } else {
    json::String(&w, ended);
  }
  w.Key("status");
  json::String(&w, access.status_name());
  w.Key("plan_id");
  json::OptString(&w, access.plan_id());
  w.Key("overridden");
  w.Bool(access.overridden());
  w.Key("plan");
  if (access.plan) {
    w.StartObject();
    w.Key("id");
    json::String(&w, access.plan->id);
    w.Key("display_name");
    json::String(&w, access.plan->display_name);
    w.Key("active");
    w.Bool(access.plan->active);
    w.EndObject();
  } else {
    w.Null();
  }
  // Only what the user may use now: nothing while the subscription grants no access.
  w.Key("services");
  w.StartArray();
  if (usable) {
    for (const std::string& service : access.plan->services) json::String(&w, service);
  }
  w.EndArray();
  w.Key("quota");
  if (usable) {
    w.StartObject();
    w.Key("limit");
    json::OptInt(&w, access.plan->api_calls_limit);
    w.Key("window");
    if (access.plan->limit_window == pj::LimitWindow::kNone) {
      w.Null();
    } else {
      json::String(&w, pj::LimitWindowName(access.plan->limit_window));
    }
    w.Key("used");
    w.Int64(usage.used);
    w.Key("remaining");
    json::OptInt(&w, usage.remaining);
    w.Key("window_start");
    json::String(&w, pj::FormatRfc3339Seconds(usage.terms.window.start_s));
    w.Key("window_end");
    json::String(&w, pj::FormatRfc3339Seconds(usage.terms.window.end_s));
    w.Key("window_kind");
    json::String(&w, pj::WindowKindName(usage.terms.window.kind));
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("byok_enabled");
  w.Bool(usable && access.plan->byok_enabled);
  w.Key("team_seats");
  if (usable) {
    w.Int64(access.plan->team_seats);
  } else {
    w.Null();
  }
  w.Key("subscription");
  if (sub.has_subscription) {
    WriteSubscription(&w, sub.subscription);
  } else {
    w.Null();
  }
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string StatusJson(const pj::UserSubscription& sub) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, sub.user_id);
  w.Key("has_subscription");
  w.Bool(sub.has_subscription);
  w.Key("status");
  json::String(&w, sub.status_name());
  w.Key("access");
  json::String(&w, pj::AccessLevelName(sub.access()));
  w.Key("plan_id");
  json::OptString(&w, sub.plan_id());
  w.Key("customer_id");
  json::NonEmptyOrNull(&w, sub.customer_id);
  w.Key("subscription");
  if (sub.has_subscription) {
    WriteSubscription(&w, sub.subscription);
  } else {
    w.Null();
  }
  w.Key("latest_invoice");
  WriteInvoice(&w, sub.latest_invoice);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

void WriteAccess(Ledger* ledger, const Clock* clock, std::string_view user_id,
                 httplib::Response& res) {
  std::unique_ptr<ReadView> view = ledger->Snapshot();
  pj::MeteringSubject subject;
  const int64_t now_s =
      (clock != nullptr ? clock : SystemClock::Default())->NowMicros() / 1'000'000;
  Status s = pj::GetUserAccessAt(*view, user_id, now_s, &subject.access);
  pj::CurrentUsage usage;
  if (s.ok()) s = pj::GetCurrentUsage(*view, subject, user_id, now_s, &usage);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  const std::string ended = pj::AccessEndedReason(subject, usage);
  WriteJsonAt(200, AccessJson(subject.access, usage, ended), view->position(), &res);
}

void MyAccess(Ledger* ledger, const Clock* clock, const httplib::Request&, httplib::Response& res,
              const Identity& identity) {
  if (!RequireLedger(ledger, res)) return;
  WriteAccess(ledger, clock, identity.subject, res);
}

void AdminUserAccess(Ledger* ledger, const Clock* clock, const httplib::Request& req,
                     httplib::Response& res, const Identity&) {
  if (!RequireLedger(ledger, res)) return;
  const std::string user_id = req.matches[1].str();
  if (!pj::IsValidUserId(user_id)) {
    WriteProblem(400, "invalid_parameter",
                 "user_id: 1 to 255 bytes of UTF-8 without '/' or control characters", &res);
    return;
  }
  WriteAccess(ledger, clock, user_id, res);
}

// Whose access check-access answers: a service names the user; a user is always itself.
bool CheckAccessUser(const httplib::Request& req, const Identity& identity, std::string* user_id,
                     httplib::Response& res) {
  const size_t count = req.get_param_value_count("user_id");
  if (count > 1) {
    WriteProblem(400, "invalid_parameter", "user_id: given more than once", &res);
    return false;
  }
  const std::string requested = count == 1 ? req.get_param_value("user_id") : std::string();
  if (identity.IsService()) {
    if (!pj::IsValidUserId(requested)) {
      WriteProblem(400, "invalid_parameter",
                   "user_id: a service token must name the user (?user_id=, 1 to 255 "
                   "bytes of UTF-8 without '/' or control characters)",
                   &res);
      return false;
    }
    *user_id = requested;
    return true;
  }
  if (count == 1 && requested != identity.subject) {
    WriteProblem(404, "not_found", "no such user", &res);
    return false;
  }
  *user_id = identity.subject;
  return true;
}

void CheckAccess(Ledger* ledger, const Clock* clock, const httplib::Request& req,
                 httplib::Response& res, const Identity& identity) {
  if (!RequireLedger(ledger, res)) return;
  const std::string service = req.matches[1].str();
  if (service.size() > kServiceIdBytesMax || !pj::IsValidUtf8(service)) {
    WriteProblem(400, "invalid_parameter", "service: too long or not UTF-8", &res);
    return;
  }
  std::string user_id;
  if (!CheckAccessUser(req, identity, &user_id, res)) return;
  std::unique_ptr<ReadView> view = ledger->Snapshot();
  pj::MeteringSubject subject;
  const pj::UserAccess& access = subject.access;
  const int64_t now_s =
      (clock != nullptr ? clock : SystemClock::Default())->NowMicros() / 1'000'000;
  Status s = pj::GetUserAccessAt(*view, user_id, now_s, &subject.access);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  pj::ServiceAccess decision = pj::CheckServiceAccess(access, service);
  // The terms a consume is held to: a gateway gating on this answer and metering through
  // /usage/events would otherwise give an ended trial unlimited access. In consume's order: an
  // ended plan (402) before the service (403) -- a trial past its end asked for tts said
  // service_not_in_plan while consume answered 402 trial_expired -- and calls used up for good
  // (402) after it, as consume checks the quota after the service.
  std::string ended;
  if (decision.allowed || decision.reason == "service_not_in_plan") {
    s = decision.allowed ? pj::GetAccessEnded(*view, subject, user_id, now_s, &ended)
                         : pj::GetPlanEnded(subject, now_s, &ended);
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    if (!ended.empty()) {
      decision.allowed = false;
      decision.reason = ended;
    }
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("allowed");
  w.Bool(decision.allowed);
  w.Key("reason");
  json::String(&w, decision.reason);
  w.Key("service");
  json::String(&w, service);
  w.Key("user_id");
  json::String(&w, user_id);
  w.Key("status");
  json::String(&w, access.status_name());
  w.Key("access");
  json::String(&w, pj::AccessLevelName(access.access));
  w.Key("plan_id");
  json::OptString(&w, access.plan_id());
  w.EndObject();
  WriteJsonAt(200, std::string(buf.GetString(), buf.GetSize()), view->position(), &res);
}

// The subscription access is decided on now (GetUserSubscriptionAt: past its scheduled end, the
// user's other live one is).
void GetSubscriptionStatus(Ledger* ledger, const Clock* clock, const httplib::Request&,
                           httplib::Response& res, const Identity& identity) {
  if (!RequireLedger(ledger, res)) return;
  std::unique_ptr<ReadView> view = ledger->Snapshot();
  pj::UserSubscription sub;
  const int64_t now_s =
      (clock != nullptr ? clock : SystemClock::Default())->NowMicros() / 1'000'000;
  Status s = pj::GetUserSubscriptionAt(*view, identity.subject, now_s, &sub);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  WriteJsonAt(200, StatusJson(sub), view->position(), &res);
}

}  // namespace

void AddSubscriptionAccessRoutes(const AppContext& context, RouteTable* routes) {
  Ledger* ledger = context.ledger;
  const Clock* clock = context.clock;
  auto bind_clock = [ledger, clock](auto handler) {
    return [ledger, clock, handler](const httplib::Request& req, httplib::Response& res,
                                    const Identity& identity) {
      handler(ledger, clock, req, res, identity);
    };
  };
  routes->Add("GET", kMyAccessPath, kMyAccessPath, Policy::kUser, bind_clock(MyAccess));
  routes->Add("POST", kCheckAccessPattern, kCheckAccessName, Policy::kUserOrService,
              bind_clock(CheckAccess));
  routes->Add("GET", kUserAccessPattern, kUserAccessName, Policy::kAdmin,
              bind_clock(AdminUserAccess));
  routes->Add("GET", kStatusPath, kStatusPath, Policy::kUser, bind_clock(GetSubscriptionStatus));
}

}  // namespace ledger::http
