// Admin subscription management and analytics (policy admin; projections/admin.h defines every
// number):
//   GET   /api/v1/admin/subscriptions/list?status=&tier=&q=&limit=&cursor=
//         {"subscribers":[subscriber...], "next_cursor": string|null, "examined": n}: users in
//         user id order; `status` is an effective status name, "none", or a name PATCH takes
//         (`cancelled` and `suspended` are canceled, `trial` trialing), `tier` a plan id of the
//         catalog (retired ones too; another, or an empty one, is a 400), `q` a
//         case-insensitive substring of the email or the user id; `limit` 1..200 (default 50).
//         A page examines at most 5,000 users, so a selective filter may return a short page with
//         a next_cursor: follow it until it is null.
//   GET   /api/v1/admin/subscriptions/{email}
//         {"email","users":[{"subscriber":{...},"usage":{window, used, limit, remaining,
//         access_refusal}}]}: the window a reset-usage would reset (GetResetUsage) and its calls;
//         `remaining` null = unlimited, 0 whenever a consume would be refused now, and
//         `access_refusal` that consume's 402 problem type (null when it would be accepted). 404
//         when no user has that email.
//   PATCH /api/v1/admin/subscriptions/{email}   body {"tier","status","notes"} (each optional;
//         null clears it): the admin override (projections/subscriptions.h AdminOverride),
//         one subscription.override_set.v1 per user whose override changes, naming the admin.
//         `Idempotency-Key` honoured. A tier without a status for a user with no live
//         subscription is status_required (it would grant nothing), decided by the writer;
//         a granting status without a tier for a user whose subscription is on no catalog plan is
//         validation_failed naming the tier (the same: it would grant nothing): such a user is
//         skipped (`skipped` in their answer) while the others change, 422 when all would be.
//   GET   /api/v1/admin/subscriptions/analytics/overview?churn_days=   (1..365, default 30)
//   GET   /api/v1/admin/subscriptions/analytics/revenue-by-tier
//   GET   /api/v1/admin/subscriptions/analytics/usage-stats?from=&to=
//         windows starting in [from, to), each counted whole in the range holding its start
//         (adjacent ranges add up; a billing month from the 20th is the month's of its start):
//         RFC 3339 or Unix seconds; default the current UTC calendar month up to now; at most
//         400 days. {"usage": {...}, "denials_since_start"}
//         (refused consumes since the daemon started, from the usage meter: refusals are not
//         events).
// {email} is an email (and a known user whose id is exactly it), or a user id when it has no '@'
// (FindUsersByEmailOrId; `list` and `analytics` are never taken for one: the pattern excludes
// them).
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <functional>
#include <memory>
#include <string>

#include "http/base64.h"
#include "http/idempotency.h"
#include "http/limits.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/admin.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/usage.h"

namespace ledger::http {

namespace {

namespace pj = ledger::projections;
using JsonWriter = json::Writer;

constexpr char kListPath[] = "/api/v1/admin/subscriptions/list";
constexpr char kOverviewPath[] = "/api/v1/admin/subscriptions/analytics/overview";
constexpr char kRevenuePath[] = "/api/v1/admin/subscriptions/analytics/revenue-by-tier";
constexpr char kUsageStatsPath[] = "/api/v1/admin/subscriptions/analytics/usage-stats";
// `{email}`, or a user id; not the literal segments of the other admin routes.
constexpr char kSubscriberPattern[] =
    R"(/api/v1/admin/subscriptions/((?!list$|analytics$)[^/]+))";
constexpr char kSubscriberName[] = "/api/v1/admin/subscriptions/{email}";
constexpr int64_t kChurnDaysDefault = 30;
constexpr int64_t kChurnDaysMax = 365;
constexpr size_t kPatchBodyBytesMax = 8 * 1024;

struct AdminRouteContext {
  Ledger* ledger = nullptr;
  const Clock* clock = nullptr;
  pj::UsageMeter* meter = nullptr;  // may be null: no denial counts
};

int64_t NowSeconds(const AdminRouteContext& c) {
  return (c.clock != nullptr ? c.clock : SystemClock::Default())->NowMicros() / 1'000'000;
}

// A status an admin names: Stripe's names, and the seed's (`cancelled` and `suspended` are
// canceled: no access; `trial` is trialing). One mapping for PATCH and the list's filter, so a
// list can find what a PATCH set by the name it was set with.
bool ParseAdminStatus(std::string_view name, pj::SubscriptionStatus* out) {
  const std::string_view stripe_name = name == "cancelled" || name == "suspended"
                                           ? std::string_view("canceled")
                                       : name == "trial" ? std::string_view("trialing")
                                                         : name;
  return pj::ParseSubscriptionStatus(stripe_name, out);
}

// A decimal integer in [min, max].
bool ParseDecimalInRange(const std::string& text, int64_t min, int64_t max, int64_t* out) {
  int64_t value = 0;
  bool ok = !text.empty() && text.size() <= 18;
  for (char ch : text) {
    if (ch < '0' || ch > '9') ok = false;
    if (ok) value = value * 10 + (ch - '0');
  }
  if (!ok || value < min || value > max) return false;
  *out = value;
  return true;
}

// A decimal integer in [min, max]; false (and a 400) otherwise.
bool ParseIntParam(const std::string& text, const char* name, int64_t min, int64_t max,
                   int64_t* out, httplib::Response& res) {
  if (ParseDecimalInRange(text, min, max, out)) return true;
  WriteProblem(400, "invalid_parameter",
               std::string(name) + ": an integer from " + std::to_string(min) + " to " +
                   std::to_string(max),
               &res);
  return false;
}

// RFC 3339 or Unix seconds (through 9999-12-31); false (and a 400 naming both forms) otherwise:
// "from: an integer from 0 to 253402300799" hid that a time was taken too.
bool ParseTimeParam(const std::string& text, const char* name, int64_t* out_s,
                    httplib::Response& res) {
  int64_t us = 0;
  if (pj::ParseRfc3339(text, &us)) {
    *out_s = us / 1'000'000;
    return true;
  }
  if (ParseDecimalInRange(text, 0, 253'402'300'799, out_s)) return true;
  WriteProblem(400, "invalid_parameter",
               std::string(name) +
                   ": an RFC 3339 time (e.g. 2026-01-31T00:00:00Z) or Unix seconds from 0 to "
                   "253402300799",
               &res);
  return false;
}

// `{email}`: a subscriber's email, or a user id (FindUsersByEmailOrId: with an '@' both).
bool EmailParam(const httplib::Request& req, std::string* email, httplib::Response& res) {
  *email = req.matches[1].str();
  const bool is_email = email->find('@') != std::string::npos && email->size() >= 3 &&
                        email->size() <= pj::limits::kEmailBytesMax && pj::IsValidUtf8(*email);
  if (!is_email && !pj::IsValidUserId(*email)) {
    WriteProblem(400, "invalid_parameter",
                 "email: 3 to 320 bytes of UTF-8 with an '@', or a user id", &res);
    return false;
  }
  return true;
}

void List(const AdminRouteContext& c, const httplib::Request& req, httplib::Response& res,
          const Identity&) {
  if (!RequireLedger(c.ledger, res)) return;
  std::string status, tier, q, limit_text, cursor;
  if (!QueryParam(req, "status", pj::kAdminQueryBytesMax, &status, res) ||
      !QueryParam(req, "tier", pj::kAdminQueryBytesMax, &tier, res) ||
      !QueryParam(req, "q", pj::kAdminQueryBytesMax, &q, res) ||
      !QueryParam(req, "limit", limits::kQueryValueBytesMax, &limit_text, res) ||
      !QueryParam(req, "cursor", limits::kQueryValueBytesMax, &cursor, res)) {
    return;
  }
  pj::SubscriberFilter filter;
  if (req.has_param("status")) {
    // Every key of the overview's by_status (EffectiveStatusAt's names): trial_expired was 400,
    // so the overview's count of ended trials had no list behind it.
    pj::SubscriptionStatus parsed;
    if (status == "none" || status == pj::kTrialExpiredStatus) {
      filter.status = status;
    } else if (ParseAdminStatus(status, &parsed)) {
      filter.status = std::string(pj::SubscriptionStatusName(parsed));
    } else {
      WriteProblem(400, "invalid_parameter",
                   "status: none, trial_expired, one of Stripe's subscription statuses, or "
                   "cancelled, suspended, trial",
                   &res);
      return;
    }
  }
  if (req.has_param("q")) {
    if (q.empty() || !pj::IsValidUtf8(q)) {
      WriteProblem(400, "invalid_parameter", "q: 1 to 320 bytes of UTF-8", &res);
      return;
    }
    filter.q = q;
  }
  int64_t limit = static_cast<int64_t>(pj::kSubscriberPageDefault);
  if (req.has_param("limit") &&
      !ParseIntParam(limit_text, "limit", 1, static_cast<int64_t>(pj::kSubscriberPageMax), &limit,
                     res)) {
    return;
  }
  std::string after;
  if (req.has_param("cursor") && (!Base64UrlDecode(cursor, &after) || after.empty())) {
    WriteProblem(400, "invalid_parameter", "cursor: not a cursor this route returned", &res);
    return;
  }
  std::unique_ptr<ReadView> view = c.ledger->Snapshot();
  if (req.has_param("tier")) {
    // A tier is a catalog plan (retired ones too: their subscribers keep them), as PATCH takes
    // it: any other matches nobody, and `?tier=platinum` answered empty pages until the cursor
    // had walked every user.
    pj::Plan plan;
    Status s = tier.empty() ? Status::NotFound("no plan") : pj::GetPlan(*view, tier, &plan);
    if (s.IsNotFound()) {
      WriteProblem(400, "invalid_parameter", "tier: a plan id of the catalog", &res);
      return;
    }
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    filter.tier = tier;
  }
  pj::SubscriberPage page;
  Status s = pj::ListSubscribers(*view, NowSeconds(c), filter, after, static_cast<size_t>(limit),
                                 &page);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("subscribers");
  w.StartArray();
  for (const std::string& subscriber : page.json) json::RawObject(&w, subscriber);
  w.EndArray();
  w.Key("next_cursor");
  if (page.next_after) {
    json::String(&w, Base64UrlEncode(*page.next_after));
  } else {
    w.Null();
  }
  w.Key("examined");
  w.Uint64(page.examined);
  w.EndObject();
  WriteJsonAt(200, json::Text(buf), view->position(), &res);
}

void GetSubscriber(const AdminRouteContext& c, const httplib::Request& req, httplib::Response& res,
                   const Identity&) {
  if (!RequireLedger(c.ledger, res)) return;
  std::string email;
  if (!EmailParam(req, &email, res)) return;
  std::unique_ptr<ReadView> view = c.ledger->Snapshot();
  std::vector<std::string> user_ids;
  Status s = pj::FindUsersByEmailOrId(*view, email, &user_ids);
  if (s.ok() && user_ids.empty()) s = Status::NotFound("no subscriber with that email");
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("email");
  json::String(&w, email);
  w.Key("users");
  w.StartArray();
  const int64_t now_s = NowSeconds(c);
  for (size_t i = 0; s.ok() && i < user_ids.size(); ++i) {
    pj::MeteringSubject subject;
    s = pj::GetUserAccessAt(*view, user_ids[i], now_s, &subject.access);
    // The window a reset-usage would reset, with its calls (GetResetUsage): past due with
    // Stripe's retries over it showed the empty calendar month while the reset restarted the
    // billing month's calls.
    pj::CurrentUsage usage;
    if (s.ok()) s = pj::GetResetUsage(*view, subject, user_ids[i], now_s, &usage);
    if (!s.ok()) break;
    w.StartObject();
    w.Key("subscriber");
    json::RawObject(&w, pj::SubscriberJson(subject.access, now_s));
    w.Key("usage");
    w.StartObject();
    w.Key("window_start");
    json::String(&w, pj::FormatRfc3339Seconds(usage.terms.window.start_s));
    w.Key("window_end");
    json::String(&w, pj::FormatRfc3339Seconds(usage.terms.window.end_s));
    w.Key("window_kind");
    json::String(&w, pj::WindowKindName(usage.terms.window.kind));
    w.Key("used");
    w.Int64(usage.used);
    w.Key("limit");
    if (usage.terms.limit) {
      w.Int64(*usage.terms.limit);
    } else {
      w.Null();
    }
    // Null is unlimited: where consume refuses (no plan, suspended, past a scheduled end, a trial
    // ended, payment failed, and calls used up for good -- a trial's last day, the window a
    // scheduled end closes: my-access's access_ended) nothing remains, and access_refusal says
    // why (limit and remaining null made a suspended user look unlimited).
    const std::string refusal = !usage.error.ok() ? usage.error.problem()
                                                  : pj::AccessEndedReason(subject, usage);
    w.Key("remaining");
    if (!refusal.empty()) {
      w.Int64(0);
    } else if (usage.remaining) {
      w.Int64(*usage.remaining);
    } else {
      w.Null();
    }
    w.Key("access_refusal");
    if (refusal.empty()) {
      w.Null();
    } else {
      json::String(&w, refusal);
    }
    w.EndObject();
    w.EndObject();
  }
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  w.EndArray();
  w.EndObject();
  WriteJsonAt(200, json::Text(buf), view->position(), &res);
}

// {"tier","status","notes"}: each optional, null clears. Unknown members are refused. `status`
// takes Stripe's names and the seed's (`cancelled` and `suspended` are canceled, `trial` is
// trialing).
Status ParseOverrideChange(const std::string& body, pj::OverrideChange* out) {
  if (body.size() > kPatchBodyBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large", "the body is over 8 KiB");
  }
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(pj::ParseJsonObject(body, &doc));
  // Names first, every member: {"x":5} was 422 validation_failed "x: a string or null" while
  // {"x":"hello"} was unknown_field -- a misspelt field is reported as one whatever its value.
  for (const auto& m : doc.GetObject()) {
    const std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name != "tier" && name != "status" && name != "notes") {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pj::Truncated(name) + "'");
    }
  }
  for (const auto& m : doc.GetObject()) {
    const std::string_view name(m.name.GetString(), m.name.GetStringLength());
    const bool null = m.value.IsNull();
    if (!null && !m.value.IsString()) {
      return Status::Make(Code::kUnprocessable, "validation_failed",
                          std::string(name) + ": a string or null");
    }
    const std::string value =
        null ? "" : std::string(m.value.GetString(), m.value.GetStringLength());
    if (name == "tier") {
      if (!null && (value.empty() || value.size() > pj::limits::kPlanIdBytesMax)) {
        return Status::Make(Code::kUnprocessable, "validation_failed", "tier: a plan id");
      }
      out->plan_id = null ? std::optional<std::string>() : value;
    } else if (name == "status") {
      pj::SubscriptionStatus status;
      if (!null && !ParseAdminStatus(value, &status)) {
        return Status::Make(Code::kUnprocessable, "validation_failed",
                            "status: one of Stripe's subscription statuses, or cancelled, "
                            "suspended, trial");
      }
      out->status = null ? std::optional<pj::SubscriptionStatus>() : status;
    } else {  // notes
      if (value.size() > pj::kOverrideNotesBytesMax) {
        return Status::Make(Code::kUnprocessable, "validation_failed",
                            "notes: at most 2000 bytes");
      }
      // Text admins read in the list and in a terminal: "a\u0000b" or an escape sequence was
      // stored and served as it came.
      if (!pj::IsMultilineDisplayText(value)) {
        return Status::Make(Code::kUnprocessable, "validation_failed",
                            "notes: text without control characters (line feeds and tabs "
                            "allowed) or bidirectional overrides");
      }
      out->notes = null ? std::optional<std::string>() : value;
    }
  }
  return Status::OK();
}

void PatchSubscriber(const AdminRouteContext& c, const httplib::Request& req,
                     httplib::Response& res, const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  std::string email;
  if (!EmailParam(req, &email, res)) return;
  pj::OverrideChange change;
  Status parsed = ParseOverrideChange(req.body, &change);
  if (!parsed.ok()) {
    WriteStatusProblem(parsed, &res);
    return;
  }
  pj::SetAdminOverride command(email, std::move(change),
                               pj::Actor::Admin(identity.subject, identity.email));
  if (!ApplyIdempotencyKey(req, kSubscriberName, identity, &command, &res)) return;
  WriteCommandResult(c.ledger->Submit(&command), &res);
}

// 200 with what `view_json` computes on a fresh snapshot (and its position), else its problem.
void WriteViewJson(const AdminRouteContext& c, httplib::Response& res,
                   const std::function<Status(const ReadView&, std::string*)>& view_json) {
  std::unique_ptr<ReadView> view = c.ledger->Snapshot();
  std::string body;
  Status s = view_json(*view, &body);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  WriteJsonAt(200, std::move(body), view->position(), &res);
}

void Overview(const AdminRouteContext& c, const httplib::Request& req, httplib::Response& res,
              const Identity&) {
  if (!RequireLedger(c.ledger, res)) return;
  std::string text;
  if (!QueryParam(req, "churn_days", limits::kQueryValueBytesMax, &text, res)) return;
  int64_t churn_days = kChurnDaysDefault;
  if (req.has_param("churn_days") &&
      !ParseIntParam(text, "churn_days", 1, kChurnDaysMax, &churn_days, res)) {
    return;
  }
  const int64_t now_s = NowSeconds(c);
  WriteViewJson(c, res, [&](const ReadView& view, std::string* body) {
    return pj::AnalyticsOverviewJson(view, now_s, churn_days, body);
  });
}

void RevenueByTier(const AdminRouteContext& c, const httplib::Request&, httplib::Response& res,
                   const Identity&) {
  if (!RequireLedger(c.ledger, res)) return;
  const int64_t now_s = NowSeconds(c);
  WriteViewJson(c, res, [&](const ReadView& view, std::string* body) {
    return pj::RevenueByTierJson(view, now_s, body);
  });
}

void UsageStats(const AdminRouteContext& c, const httplib::Request& req, httplib::Response& res,
                const Identity&) {
  if (!RequireLedger(c.ledger, res)) return;
  std::string from_text, to_text;
  if (!QueryParam(req, "from", limits::kQueryValueBytesMax, &from_text, res) ||
      !QueryParam(req, "to", limits::kQueryValueBytesMax, &to_text, res)) {
    return;
  }
  const int64_t now_s = NowSeconds(c);
  int64_t from_s = pj::UtcMonthStart(now_s);
  int64_t to_s = now_s + 1;
  if (req.has_param("from") && !ParseTimeParam(from_text, "from", &from_s, res)) return;
  if (req.has_param("to") && !ParseTimeParam(to_text, "to", &to_s, res)) return;
  if (to_s <= from_s || to_s - from_s > pj::kUsageStatsRangeSecondsMax) {
    WriteProblem(400, "invalid_parameter", "from must be before to, at most 400 days apart", &res);
    return;
  }
  std::unique_ptr<ReadView> view = c.ledger->Snapshot();
  std::string stats;
  Status s = pj::UsageStatsJson(*view, now_s, from_s, to_s, &stats);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("usage");
  json::RawObject(&w, stats);
  w.Key("denials_since_start");
  w.StartObject();
  const pj::UsageMeter* m = c.meter;
  for (const auto& [name, counter] :
       {std::pair<const char*, const Counter*>{"quota_exceeded",
                                               m ? &m->denied_quota_exceeded : nullptr},
        {"subscription_required", m ? &m->denied_subscription_required : nullptr},
        {"trial_expired", m ? &m->denied_trial_expired : nullptr},
        {"trial_exhausted", m ? &m->denied_trial_exhausted : nullptr},
        {"payment_failed", m ? &m->denied_payment_failed : nullptr},
        {"service_not_in_plan", m ? &m->denied_service_not_in_plan : nullptr},
        {"quantity_exceeds_quota", m ? &m->denied_quantity_exceeds_quota : nullptr}}) {
    w.Key(name);
    w.Uint64(counter != nullptr ? counter->Value() : 0);
  }
  w.EndObject();
  w.EndObject();
  WriteJsonAt(200, json::Text(buf), view->position(), &res);
}

}  // namespace

void AddAdminRoutes(const AppContext& context, RouteTable* routes) {
  auto c = std::make_shared<AdminRouteContext>();
  c->ledger = context.ledger;
  c->clock = context.clock;
  c->meter = context.usage_meter;
  routes->Add("GET", kListPath, kListPath, Policy::kAdmin, WithContext(c, List));
  routes->Add("GET", kOverviewPath, kOverviewPath, Policy::kAdmin, WithContext(c, Overview));
  routes->Add("GET", kRevenuePath, kRevenuePath, Policy::kAdmin, WithContext(c, RevenueByTier));
  routes->Add("GET", kUsageStatsPath, kUsageStatsPath, Policy::kAdmin, WithContext(c, UsageStats));
  routes->Add("GET", kSubscriberPattern, kSubscriberName, Policy::kAdmin,
              WithContext(c, GetSubscriber));
  routes->Add("PATCH", kSubscriberPattern, kSubscriberName, Policy::kAdmin,
              WithContext(c, PatchSubscriber));
}

}  // namespace ledger::http
