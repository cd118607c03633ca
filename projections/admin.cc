#include "projections/admin.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <unordered_map>
#include <utility>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/usage.h"

namespace ledger::projections {

namespace {

using JsonWriter = json::Writer;

// A Stripe time as Stripe gives it (and every other route that shows a subscription): Unix
// seconds.
void OptTime(JsonWriter* w, const std::optional<int64_t>& t_s) {
  if (t_s) {
    w->Int64(*t_s);
  } else {
    w->Null();
  }
}
void OptStatus(JsonWriter* w, const std::optional<SubscriptionStatus>& status) {
  if (status) {
    json::String(w, SubscriptionStatusName(*status));
  } else {
    w->Null();
  }
}
// Cents as dollars with two decimals ("1234.50"), for the human-facing members.
std::string Dollars(int64_t cents) {
  std::string out = std::to_string(cents / 100);
  const int64_t rest = std::abs(cents % 100);
  out.push_back('.');
  out.push_back(static_cast<char>('0' + rest / 10));
  out.push_back(static_cast<char>('0' + rest % 10));
  return out;
}
double Ratio(int64_t part, int64_t whole) {
  if (whole <= 0) return 0.0;
  return std::round(static_cast<double>(part) * 10000.0 / static_cast<double>(whole)) / 10000.0;
}

std::string LowerAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// Active, or past due after it paid once, and not past its scheduled end at `now_s`: a trial past
// due since its first charge failed never paid (it counted as paying, its price in the MRR, while
// trial conversion said not converted); a subscription canceled at its period's end still counted
// until Stripe's deletion arrived (Starter's MRR next to subscribers 0, and 1900 + 4900 for a user
// who bought Professional in that gap). Past due with Stripe's retries over
// (payment_abandoned) pays no more: it counted in the MRR for good while consume refused it.
bool IsPaying(const UserSubscription& sub, int64_t now_s) {
  return sub.has_subscription && sub.subscription.plan_id &&
         (sub.subscription.status == SubscriptionStatus::kActive ||
          (sub.subscription.status == SubscriptionStatus::kPastDue &&
           !sub.never_paid_after_trial() && !sub.payment_abandoned())) &&
         !EndedBySchedule(sub.subscription, now_s);
}

}  // namespace

// The status the admin views show and count a user under at `now_s` (admin.h). Past its
// scheduled end (UserAccess::EndedAt) a subscription is "canceled", as Stripe's deletion will
// record it (the overview counted it active next to churned 1 and paying 0 while that webhook
// was late); a trial that has ended (402 trial_expired: an admin's trial past its days, a Stripe
// trial past its end) in a status that grants access is "trial_expired" (an admin's trial was
// counted trialing for good, next to access none and comped 0). A past-due trial whose first
// charge failed stays past_due: Stripe still retries it (trial conversion's awaiting_payment).
// The list's rows and its ?status= filter use it too, so that list?status=<key> finds the
// overview's by_status[key] users: with the stored status, a cancel_at_period_end an hour past
// its period, the deletion late, was by_status.canceled 1 but listed under ?status=active with
// "status":"active".
std::string_view EffectiveStatusAt(const UserAccess& access, int64_t now_s) {
  if (!access.status) return access.status_name();
  // A status that would grant access with no catalog plan to grant (a Dashboard add-on alone, an
  // override's status over no plan) grants nothing: consume refuses it as it refuses a user with
  // no subscription (402 subscription_required). It was by_status.active next to access none.
  if (!access.plan && AccessFor(*access.status) != AccessLevel::kNone) return "none";
  if (!IsTerminal(*access.status) && access.EndedAt(now_s)) {
    return SubscriptionStatusName(SubscriptionStatus::kCanceled);
  }
  if (AccessFor(*access.status) == AccessLevel::kGranted &&
      AccessRefusalAt(access, now_s) == "trial_expired") {
    return kTrialExpiredStatus;
  }
  return access.status_name();
}

namespace {

// Billed yearly: Stripe's interval says so, or (when a webhook left it out) the item's price is
// the plan's yearly price.
bool IsYearly(const Plan& plan, const SubscriptionRecord& record) {
  if (record.interval) return *record.interval == "year";
  return record.price_id && plan.stripe_price_yearly &&
         *record.price_id == *plan.stripe_price_yearly;
}

// What Stripe bills one subscription in a year, in cents, when its delivery said (unit_amount ×
// quantity every interval_count intervals, in the plan's currency); nullopt otherwise.
std::optional<int64_t> BilledPerYear(const Plan& plan, const SubscriptionRecord& r) {
  // (A quantity out of limits::kStripeQuantityMax was not kept: the catalog price stands in.)
  if (!r.unit_amount || !r.quantity || !r.interval ||
      (r.currency && *r.currency != plan.currency)) {
    return std::nullopt;
  }
  const int64_t amount = *r.unit_amount * *r.quantity;
  const int64_t count = std::max<int64_t>(1, r.interval_count.value_or(1));
  if (*r.interval == "year") return amount / count;
  if (*r.interval == "month") return amount * 12 / count;
  if (*r.interval == "week") return amount * 52 / count;
  if (*r.interval == "day") return amount * 365 / count;
  return std::nullopt;
}

// The monthly revenue of one paying subscription on `plan`, × 12 (exact in cents): what Stripe
// bills it (a subscriber keeps the price it signed up at when an admin edits the plan's), else
// the plan's catalog price for its interval.
int64_t MonthlyRevenueTimes12(const Plan& plan, const SubscriptionRecord& record) {
  if (std::optional<int64_t> billed = BilledPerYear(plan, record)) return *billed;
  if (IsYearly(plan, record) && plan.price_yearly_cents) return *plan.price_yearly_cents;
  return plan.price_monthly_cents * 12;
}

// MRR in cents from a sum of (monthly revenue × 12), rounded half up once.
int64_t MrrCents(int64_t times12) { return times12 / 12 + (times12 % 12 >= 6 ? 1 : 0); }

// Sums of revenue stop at INT64_MAX instead of overflowing (one subscription is at most
// ~3.7e16 cents a year: limits::kStripeUnitAmountMax × kStripeQuantityMax × 365).
void AddRevenue(int64_t* sum, int64_t value) {
  if (__builtin_add_overflow(*sum, value, sum)) *sum = std::numeric_limits<int64_t>::max();
}

// Catalog plans by id (retired included), read once per view.
Status LoadPlans(const StateReader& state, std::vector<Plan>* plans,
                 std::unordered_map<std::string, const Plan*>* by_id) {
  LEDGER_RETURN_IF_ERROR(ListPlans(state, /*include_inactive=*/true, plans));
  by_id->clear();
  for (const Plan& plan : *plans) by_id->emplace(plan.id, &plan);
  return Status::OK();
}

// The catalog plan of one subscription (its resolved plan_id), nullptr when it has none.
const Plan* CatalogPlan(const std::unordered_map<std::string, const Plan*>& by_id,
                        const UserSubscription& sub) {
  if (!sub.has_subscription || !sub.subscription.plan_id) return nullptr;
  auto it = by_id.find(*sub.subscription.plan_id);
  return it != by_id.end() ? it->second : nullptr;
}

using Subscriptions = std::vector<UserSubscription>;

// Calls fn(access at `now_s`, every subscription of the user) for every user the projection
// knows, in user id order.
Status ForEachSubscriber(const StateReader& state, int64_t now_s,
                         const std::function<Status(const UserAccess&, const Subscriptions&)>& fn) {
  Status inner;
  Subscriptions every;
  Status s = ScanUsers(state, "", [&](std::string_view user_id, std::string_view) {
    UserAccess access;
    inner = GetUserAccess(state, user_id, &access, &every);
    if (!inner.ok()) return false;
    // As consume decides at `now_s` (GetUserAccessAt): the subscriptions are what Stripe bills,
    // whatever the clock.
    access.ResolveAt(now_s);
    inner = fn(access, every);
    return inner.ok();
  });
  LEDGER_RETURN_IF_ERROR(s);
  return inner;
}

bool Matches(const SubscriberFilter& filter, const UserAccess& access, int64_t now_s) {
  if (filter.status && EffectiveStatusAt(access, now_s) != *filter.status) return false;
  if (filter.tier && (!access.plan || access.plan->id != *filter.tier)) return false;
  if (filter.q) {
    const std::string q = LowerAscii(*filter.q);
    if (LowerAscii(access.subscription.email).find(q) == std::string::npos &&
        LowerAscii(access.subscription.user_id).find(q) == std::string::npos) {
      return false;
    }
  }
  return true;
}

void WriteOverride(JsonWriter* w, const std::optional<AdminOverride>& value, bool with_audit) {
  if (!value) {
    w->Null();
    return;
  }
  w->StartObject();
  w->Key("plan_id");
  json::OptString(w, value->plan_id);
  w->Key("status");
  OptStatus(w, value->status);
  w->Key("notes");
  json::OptString(w, value->notes);
  if (with_audit) {
    w->Key("admin");
    json::String(w, value->admin);
    w->Key("set_at");
    json::String(w, FormatRfc3339Micros(value->set_at_us));
  }
  w->EndObject();
}

}  // namespace

// ---- the list ----------------------------------------------------------------------------------

AccessLevel EffectiveAccessAt(const UserAccess& access, int64_t now_s) {
  return AccessRefusalAt(access, now_s).empty() ? access.access : AccessLevel::kNone;
}

std::string SubscriberJson(const UserAccess& access, int64_t now_s) {
  const UserSubscription& sub = access.subscription;
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, sub.user_id);
  w.Key("email");
  if (sub.email.empty()) {
    w.Null();
  } else {
    json::String(&w, sub.email);
  }
  w.Key("status");
  json::String(&w, EffectiveStatusAt(access, now_s));
  w.Key("access");
  json::String(&w, AccessLevelName(EffectiveAccessAt(access, now_s)));
  w.Key("plan_id");
  json::OptString(&w, access.plan_id());
  w.Key("overridden");
  w.Bool(access.overridden());
  w.Key("override_superseded");
  w.Bool(access.override_superseded);
  w.Key("stripe");
  if (sub.has_subscription) {
    const SubscriptionRecord& r = sub.subscription;
    w.StartObject();
    w.Key("subscription_id");
    json::String(&w, r.subscription_id);
    w.Key("customer_id");
    json::String(&w, r.customer_id);
    w.Key("status");
    json::String(&w, SubscriptionStatusName(r.status));
    w.Key("plan_id");
    json::OptString(&w, r.plan_id);
    w.Key("interval");
    json::OptString(&w, r.interval);
    w.Key("unit_amount");
    json::OptInt(&w, r.unit_amount);
    w.Key("quantity");
    json::OptInt(&w, r.quantity);
    w.Key("interval_count");
    json::OptInt(&w, r.interval_count);
    w.Key("currency");
    json::OptString(&w, r.currency);
    w.Key("current_period_start");
    OptTime(&w, r.current_period_start);
    w.Key("current_period_end");
    OptTime(&w, r.current_period_end);
    w.Key("cancel_at_period_end");
    w.Bool(r.cancel_at_period_end);
    w.Key("trial_start");
    OptTime(&w, r.trial_start);
    w.Key("trial_end");
    OptTime(&w, r.trial_end);
    w.Key("canceled_at");
    OptTime(&w, r.canceled_at);
    w.EndObject();
  } else {
    w.Null();
  }
  w.Key("override");
  WriteOverride(&w, access.override, /*with_audit=*/true);
  w.EndObject();
  return json::Text(buf);
}

Status ListSubscribers(const StateReader& state, int64_t now_s, const SubscriberFilter& filter,
                       std::string_view after, size_t limit, SubscriberPage* out) {
  *out = SubscriberPage();
  limit = std::clamp<size_t>(limit, 1, kSubscriberPageMax);
  Status inner;
  std::string last;
  bool stopped = false;
  Status s = ScanUsers(state, after, [&](std::string_view user_id, std::string_view) {
    if (out->json.size() >= limit || out->examined >= kSubscriberScanMax) {
      stopped = true;  // there is at least one more user: the page continues after `last`
      return false;
    }
    ++out->examined;
    last.assign(user_id);
    UserAccess access;
    inner = GetUserAccessAt(state, user_id, now_s, &access);
    if (!inner.ok()) return false;
    if (Matches(filter, access, now_s)) out->json.push_back(SubscriberJson(access, now_s));
    return true;
  });
  LEDGER_RETURN_IF_ERROR(s);
  LEDGER_RETURN_IF_ERROR(inner);
  if (stopped) out->next_after = last;
  return Status::OK();
}

// ---- overrides ----------------------------------------------------------------------------------

namespace {

// The user's subscription (UserSubscription's choice at `now_s`) can still grant access then:
// there is one, Stripe has not ended it (canceled, incomplete_expired) and it is not past its
// scheduled end (EndedBySchedule: canceled there, its deletion late).
Status HasLiveSubscription(const StateReader& state, std::string_view user_id, int64_t now_s,
                           bool* live) {
  UserSubscription sub;
  LEDGER_RETURN_IF_ERROR(GetUserSubscriptionAt(state, user_id, now_s, &sub));
  *live = sub.has_subscription && !IsTerminal(sub.subscription.status) &&
          !EndedBySchedule(sub.subscription, now_s);
  return Status::OK();
}

// The user's subscription (UserSubscription's choice) names a plan of the catalog: what an
// override's status without a tier grants access on (DecideAccess), live or not (a status comps
// the plan of a canceled subscription). None without a subscription, or for one to a price the
// catalog does not know (a Dashboard add-on).
Status HasSubscriptionPlan(const StateReader& state, std::string_view user_id, bool* has_plan) {
  UserSubscription sub;
  LEDGER_RETURN_IF_ERROR(GetUserSubscription(state, user_id, &sub));
  *has_plan = false;
  const std::optional<std::string> plan_id = sub.plan_id();
  if (!plan_id) return Status::OK();
  Plan plan;
  Status s = GetPlan(state, *plan_id, &plan);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  *has_plan = true;
  return Status::OK();
}

// One user's part of a PATCH: the override before and after the change, and why the change
// would grant that user nothing (OK when it can be applied).
struct OverrideStep {
  std::optional<AdminOverride> current;
  AdminOverride next;
  Status refusal;
};

Status PlanOverrideStep(const StateReader& state, const std::string& user_id,
                        const OverrideChange& change, int64_t now_s, OverrideStep* step) {
  LEDGER_RETURN_IF_ERROR(GetAdminOverride(state, user_id, &step->current));
  AdminOverride& next = step->next;
  next = step->current.value_or(AdminOverride());
  if (change.plan_id) next.plan_id = *change.plan_id;
  if (change.status) next.status = *change.status;
  if (change.notes) next.notes = *change.notes;
  step->refusal = Status::OK();
  // A tier alone takes its status from the user's subscription (DecideAccess): without a live
  // one it grants nothing, and a subscription the user starts later supersedes it. PATCH
  // {"tier":"enterprise"} of an account that never subscribed (or whose subscription ended)
  // answered 200 changed:true and appended an override that comped nothing.
  if ((change.plan_id || change.status) && next.plan_id && !next.status) {
    bool live = false;
    LEDGER_RETURN_IF_ERROR(HasLiveSubscription(state, user_id, now_s, &live));
    if (!live) {
      step->refusal = Status::Make(
          Code::kUnprocessable, "status_required",
          "user '" + Truncated(user_id) +
              "' has no live subscription, so a tier alone grants nothing: give a status with it "
              "(e.g. active or trialing), or clear the tier");
    }
    return Status::OK();
  }
  // The mirror: a status that grants access takes its plan from the user's subscription, and
  // without one on a catalog plan grants nothing. PATCH {"status":"active"} of an account that
  // never subscribed answered 200 changed:true: listed active, counted by_status.active, and
  // consume answered 402. A suspension (a status that grants nothing) needs no plan.
  if ((change.plan_id || change.status) && next.status && !next.plan_id && !next.revokes()) {
    bool has_plan = false;
    LEDGER_RETURN_IF_ERROR(HasSubscriptionPlan(state, user_id, &has_plan));
    if (!has_plan) {
      step->refusal = Status::Make(
          Code::kUnprocessable, "validation_failed",
          "tier: user '" + Truncated(user_id) +
              "' has no subscription to a catalog plan, so a status alone grants nothing: give a "
              "tier with it, or clear the status");
    }
  }
  return Status::OK();
}

}  // namespace

SetAdminOverride::SetAdminOverride(std::string email, OverrideChange change, Actor actor)
    : email_(std::move(email)), change_(std::move(change)), actor_(std::move(actor)) {}

Status SetAdminOverride::Decide(const DecideContext& context, Decision* decision) {
  LEDGER_RETURN_IF_ERROR(ValidateActor(actor_));
  if (change_.empty()) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "nothing to change: give tier, status or notes");
  }
  if (change_.plan_id && *change_.plan_id) {
    Plan plan;
    Status s = GetPlan(*context.state, **change_.plan_id, &plan);
    if (s.IsNotFound()) {
      return Status::Make(Code::kUnprocessable, "unknown_plan",
                          "tier: no plan '" + Truncated(**change_.plan_id) + "' in the catalog");
    }
    LEDGER_RETURN_IF_ERROR(s);
  }
  std::vector<std::string> user_ids;
  LEDGER_RETURN_IF_ERROR(FindUsersByEmailOrId(*context.state, email_, &user_ids));
  // An '@' no user has as an email names the user whose id it is, known or not, as a user id
  // without one does: an IdP may use the email as sub, and one who never paid was a 404 here
  // while README's PATCH is to comp them. (GET and reset-usage have nothing to show or reset for
  // a user ledgerd does not know: 404 there.)
  if (user_ids.empty() && IsValidUserId(email_)) user_ids.push_back(email_);
  if (user_ids.empty()) return Status::NotFound("no subscriber with that email");

  // Judged per user: an '@' names the email's users and the user whose id it is, and a change
  // that would grant one of them nothing failed the whole request for the others (PATCH
  // {"tier"} of an email whose user pays, beside an id-user who never did). Such a user is
  // skipped -- nothing appended for them, the reason in their answer -- unless every user named
  // would be: then the first one's 422, as for one user.
  const int64_t now_s = context.now_us / 1'000'000;
  std::vector<OverrideStep> steps(user_ids.size());
  bool any_applies = false;
  for (size_t i = 0; i < user_ids.size(); ++i) {
    LEDGER_RETURN_IF_ERROR(PlanOverrideStep(*context.state, user_ids[i], change_, now_s,
                                            &steps[i]));
    any_applies = any_applies || steps[i].refusal.ok();
  }
  if (!any_applies) return steps.front().refusal;

  const std::string actor = ActorJson(actor_);
  rapidjson::StringBuffer out;
  JsonWriter body(out);
  body.StartObject();
  body.Key("email");
  json::String(&body, email_);
  body.Key("users");
  body.StartArray();
  for (size_t i = 0; i < user_ids.size(); ++i) {
    const std::string& user_id = user_ids[i];
    const OverrideStep& step = steps[i];
    const std::optional<AdminOverride>& current = step.current;
    const AdminOverride& next = step.next;
    const bool changed = step.refusal.ok() &&
                         (!current ? !next.empty()
                                   : (next.plan_id != current->plan_id ||
                                      next.status != current->status || next.notes != current->notes));
    std::optional<AdminOverride> after;
    if (!next.empty()) after = next;
    if (changed) {
      rapidjson::StringBuffer buf;
      JsonWriter w(buf);
      w.StartObject();
      w.Key("user_id");
      json::String(&w, user_id);
      w.Key("email");
      json::String(&w, email_);
      w.Key("plan_id");
      json::OptString(&w, next.plan_id);
      w.Key("status");
      OptStatus(&w, next.status);
      w.Key("notes");
      json::OptString(&w, next.notes);
      w.Key("actor");
      w.RawValue(actor.data(), actor.size(), rapidjson::kObjectType);
      w.EndObject();
      decision->events.push_back(
          NewEvent{std::string(kSubscriptionOverrideSetV1), user_id, json::Text(buf)});
    } else {
      after = current;
    }
    body.StartObject();
    body.Key("user_id");
    json::String(&body, user_id);
    body.Key("changed");
    body.Bool(changed);
    body.Key("override");
    WriteOverride(&body, after, /*with_audit=*/false);
    body.Key("skipped");
    if (step.refusal.ok()) {
      body.Null();
    } else {
      body.StartObject();
      body.Key("type");
      json::String(&body, step.refusal.problem());
      body.Key("detail");
      json::String(&body, step.refusal.message());
      body.EndObject();
    }
    body.EndObject();
  }
  body.EndArray();
  body.EndObject();
  decision->http_status = 200;
  decision->body = json::Text(out);
  return Status::OK();
}

// ---- analytics ----------------------------------------------------------------------------------

namespace {

// How churn and trial conversion judge one subscription on a catalog plan at `now_s`, the churn
// window beginning at `churn_from` (admin.h: "paid after its trial", "churned", "paying at
// start").
struct ChurnStanding {
  // Past its scheduled end at `now_s` (EndedBySchedule): that end, else nullopt.
  std::optional<int64_t> scheduled_end;
  bool never_paid_after_trial = false;
  bool paid_since_trial = false;
  bool churned_in_window = false;  // a paying customer lost inside the window
  bool paying_at_start = false;    // paying when the window began: the rate's base
};

ChurnStanding JudgeChurn(const UserSubscription& sub, int64_t now_s, int64_t churn_from) {
  ChurnStanding out;
  const SubscriptionRecord& r = sub.subscription;
  // Any invoice paid at or after its trial's end: it converted (one that converted and was
  // canceled after a failed renewal too: judged by its latest invoice, it was a lost trial).
  const bool paid_after_trial = sub.paid_after_trial;
  // The first charge after the trial never succeeded -- a trial lost (or still being retried),
  // not a paying customer, whatever dunning made of its status (UserSubscription).
  out.never_paid_after_trial = sub.never_paid_after_trial();
  // It paid after its trial as far as the log tells (true without a trial): an invoice paid at
  // or after its end does, and so does a period past it -- a renewal whose invoice the log may
  // not hold -- unless Stripe's dunning is over (unpaid, or past due with its retries over: it
  // keeps rolling such a subscription's periods) or, neither active nor past due (canceled),
  // its latest invoice is a charge after the trial that failed: its first charge failed and
  // none was paid since (canceled, it was counted converted and churned). One that did not pay
  // is a lost trial and never a paying customer: churn, its base and trial conversion alike.
  const bool dunning_over = r.status == SubscriptionStatus::kUnpaid || sub.payment_abandoned();
  const bool failed_after_trial = r.trial_end && sub.latest_invoice &&
                                  !sub.latest_invoice->paid &&
                                  sub.latest_invoice->event_created >= *r.trial_end;
  const bool ended_unpaid = failed_after_trial && r.status != SubscriptionStatus::kActive &&
                            r.status != SubscriptionStatus::kPastDue;
  out.paid_since_trial =
      paid_after_trial ||
      (!out.never_paid_after_trial && !(r.trial_end && (dunning_over || ended_unpaid)));
  // Churn is paying customers lost, dated by when the subscription ended (a cancellation at the
  // period's end is asked for weeks before): not a checkout that never completed
  // (incomplete_expired), nor a trial that ended within its trial or never paid after it (trial
  // conversion counts those), nor a subscription to a price outside the catalog (an add-on made
  // in Stripe's Dashboard: never a paying subscriber here, so never one lost; the caller judges
  // catalog plans only).
  // Past its scheduled end it was canceled there, as Stripe's deletion will say
  // (EndedBySchedule): it counted as paying, never as churned, until the deletion arrived.
  out.scheduled_end = EndedBySchedule(r, now_s);
  const std::optional<int64_t>& scheduled_end = out.scheduled_end;
  if (r.status == SubscriptionStatus::kCanceled || scheduled_end) {
    const std::optional<int64_t> ended =
        scheduled_end ? scheduled_end : (r.ended_at ? r.ended_at : r.canceled_at);
    const bool within_trial = ended && r.trial_end && *ended <= *r.trial_end;
    out.churned_in_window = ended && !within_trial && out.paid_since_trial &&
                            *ended >= churn_from && (scheduled_end || *ended < now_s);
  }
  // The rate's base: customers paying when the window began (paying since before it -- past
  // any trial -- and still paying or lost inside it); customers won inside the window are not
  // in it, so new sign-ups do not dilute the rate.
  const std::optional<int64_t> paying_since =
      r.trial_end ? r.trial_end : (r.created ? r.created : r.current_period_start);
  // Past due, unpaid and paused subscriptions paid once (dunning or a pause came later): in the
  // base -- unless they never paid after a trial (paid_since_trial).
  const bool paid_once = r.status == SubscriptionStatus::kActive ||
                         ((r.status == SubscriptionStatus::kPastDue ||
                           r.status == SubscriptionStatus::kUnpaid ||
                           r.status == SubscriptionStatus::kPaused) &&
                          out.paid_since_trial);
  // ...and only while they still paid when the window began: an active one pays now; one that
  // stopped (past due, unpaid, paused, or canceled inside the window) paid until the end of the
  // period the fold last heard of, and not past a charge that failed (its latest invoice, not
  // paid) before the window began -- Stripe moves an unpaid subscription's period on after
  // dunning gave up. A subscription unpaid since last year sat in every window's base: 10 of
  // them, 10 active and 1 canceled 3 days ago made a rate of 1/21, not 1/11. Without a period
  // or an invoice the fold cannot date it: counted.
  const bool failed_before_window = sub.latest_invoice && !sub.latest_invoice->paid &&
                                    sub.latest_invoice->event_created < churn_from;
  // (Active, but past its scheduled end: paid until that end.)
  const bool paying_at_window_start =
      (r.status == SubscriptionStatus::kActive && !scheduled_end) ||
      ((!r.current_period_end || *r.current_period_end >= churn_from) &&
       !(scheduled_end && *scheduled_end < churn_from) && !failed_before_window);
  out.paying_at_start = (!paying_since || *paying_since < churn_from) &&
                        (paid_once || out.churned_in_window) && paying_at_window_start;
  return out;
}

// Churn is judged on the user's subscription (UserSubscription's choice), so that a user who left
// a plan for another is no customer lost -- but a checkout that never started (incomplete, or
// incomplete_expired: abandoned) is no other plan. Chosen over a Starter canceled inside the
// window, such a checkout hid that churn while the Starter kept the user in the rate's base.
// Then the subscription the user would have without the never-started ones, if any.
const UserSubscription& ChurnSubject(const UserSubscription& chosen, const Subscriptions& every,
                                     int64_t now_s) {
  const auto never_started = [](const SubscriptionRecord& r) {
    return r.status == SubscriptionStatus::kIncomplete ||
           r.status == SubscriptionStatus::kIncompleteExpired;
  };
  if (!never_started(chosen.subscription)) return chosen;
  const UserSubscription* subject = nullptr;
  for (const UserSubscription& each : every) {
    if (never_started(each.subscription)) continue;
    if (subject == nullptr ||
        PreferredSubscription(each.subscription, subject->subscription, now_s)) {
      subject = &each;
    }
  }
  return subject != nullptr ? *subject : chosen;
}

// A subscription on a catalog plan that had a trial: a Stripe trial (`trial_start`), or on a
// trial plan. Trials of catalog-plan subscriptions only, as churn counts: a Dashboard add-on's
// trial made no trial of ours, and no customer won.
bool HadTrial(const UserSubscription& sub, const Plan* plan) {
  return plan != nullptr && (sub.subscription.trial_start || IsTrialPlan(*plan));
}

}  // namespace

Status AnalyticsOverviewJson(const StateReader& state, int64_t now_s, int64_t churn_days,
                             std::string* out) {
  std::vector<Plan> plans;
  std::unordered_map<std::string, const Plan*> by_id;
  LEDGER_RETURN_IF_ERROR(LoadPlans(state, &plans, &by_id));
  std::map<std::string, int64_t> by_status;
  for (std::string_view name : {"none", "incomplete", "incomplete_expired", "trialing", "active",
                                "past_due", "canceled", "unpaid", "paused"}) {
    by_status[std::string(name)] = 0;
  }
  by_status[std::string(kTrialExpiredStatus)] = 0;
  int64_t total = 0, paying = 0, trialing = 0, comped = 0, revenue12 = 0, churned = 0;
  int64_t paying_at_start = 0, churned_of_those = 0;
  int64_t trials = 0, converted = 0, lost = 0, in_trial = 0, awaiting_payment = 0;
  const int64_t churn_from = now_s - churn_days * kSecondsPerDay;
  LEDGER_RETURN_IF_ERROR(ForEachSubscriber(state, now_s, [&](const UserAccess& access,
                                                             const Subscriptions& every) {
    ++total;
    const std::string_view status = EffectiveStatusAt(access, now_s);
    ++by_status[std::string(status)];
    // Revenue is every paying subscription's, each at its own price and interval: a user Stripe
    // bills for two (a second checkout from another portal session, Starter and Professional)
    // added only the one access is decided on, and MRR understated what Stripe bills. `paying`
    // counts the user once.
    bool user_pays = false;
    for (const UserSubscription& each : every) {
      const Plan* each_plan = CatalogPlan(by_id, each);
      if (!IsPaying(each, now_s) || each_plan == nullptr) continue;
      user_pays = true;
      AddRevenue(&revenue12, MonthlyRevenueTimes12(*each_plan, each.subscription));
    }
    if (user_pays) ++paying;
    if (status == SubscriptionStatusName(SubscriptionStatus::kTrialing)) ++trialing;
    if (!user_pays && EffectiveAccessAt(access, now_s) != AccessLevel::kNone &&
        access.overridden()) {
      ++comped;
    }
    // Churned is judged on the user's subscription (UserSubscription's choice): a user who left
    // a plan for another (kept one to its period's end and bought the next, or canceled and
    // subscribed again) is not a customer lost. A checkout that never started is no other plan
    // (ChurnSubject).
    const UserSubscription& sub = access.subscription;
    if (!sub.has_subscription) return Status::OK();
    const Plan* plan = CatalogPlan(by_id, sub);
    const UserSubscription& churn_subject = ChurnSubject(sub, every, now_s);
    const bool churned_in_window =
        CatalogPlan(by_id, churn_subject) != nullptr &&
        JudgeChurn(churn_subject, now_s, churn_from).churned_in_window;
    if (churned_in_window) ++churned;
    // The base is of every subscription the user has on a catalog plan: a user paying when the
    // window began on any of them. Judged on the chosen one alone, a user who switched plans
    // inside the window (the new one started inside it) left the base without being churned,
    // and raised the rate.
    const bool in_base = std::any_of(every.begin(), every.end(), [&](const UserSubscription& each) {
      return CatalogPlan(by_id, each) != nullptr &&
             JudgeChurn(each, now_s, churn_from).paying_at_start;
    });
    if (in_base) {
      ++paying_at_start;
      if (churned_in_window) ++churned_of_those;
    }
    // Trial conversion is of the subscription that had the trial: the user's subscription when
    // it had one, else the newest of the user's others that had one (by `created`, ties: the
    // greater id). A trial that converted stays converted when the user later leaves it for a
    // plan without a trial: judged on that plan, it dropped out of trials and converted. One
    // that lapsed unpaid converted all the same once the user pays on a plan bought after it.
    const UserSubscription* trial_sub = HadTrial(sub, plan) ? &sub : nullptr;
    if (trial_sub == nullptr) {
      for (const UserSubscription& each : every) {
        if (!HadTrial(each, CatalogPlan(by_id, each))) continue;
        if (trial_sub == nullptr ||
            std::make_pair(each.subscription.created.value_or(0), each.subscription_id()) >
                std::make_pair(trial_sub->subscription.created.value_or(0),
                               trial_sub->subscription_id())) {
          trial_sub = &each;
        }
      }
    }
    if (trial_sub != nullptr) {
      const SubscriptionRecord& r = trial_sub->subscription;
      const Plan* trial_sub_plan = CatalogPlan(by_id, *trial_sub);
      const ChurnStanding standing = JudgeChurn(*trial_sub, now_s, churn_from);
      const bool trial_plan = IsTrialPlan(*trial_sub_plan);
      ++trials;
      // Past due in the first period after its trial, its latest invoice not paid: the first
      // payment failed and Stripe is still retrying it; not converted (nor lost) yet.
      // Past its scheduled end it ended there, as its deletion will say: neither awaiting a
      // payment nor in its trial any more.
      // Out of its trial (a trialing one past its scheduled end ended within it) and not awaiting
      // its first payment, it converted when it paid after its trial (paid_since_trial, as churn
      // judges a paying customer) whatever its status now: unpaid, past due with Stripe's
      // retries over (payment_abandoned) and canceled after a renewal were counted lost, the
      // last both churned and lost.
      // Not once Stripe gave up retrying (payment_abandoned: past due left so by Billing's "if
      // all retries fail" setting): that one is lost, as consume's 402 trial_expired says.
      const bool first_payment_failed = r.status == SubscriptionStatus::kPastDue &&
                                         standing.never_paid_after_trial &&
                                         !standing.scheduled_end &&
                                         !trial_sub->payment_abandoned();
      // Still trialing past its trial's end as consume judges it (ComputeUsageTerms: 402
      // trial_expired, the status EffectiveStatusAt shows): Stripe's trial-end update, and the
      // outcome of its first charge, have not arrived. Awaiting that payment, not in its trial:
      // it was counted in_trial next to by_status.trial_expired 1 while consume refused it.
      UsageTerms terms;
      const bool trial_over =
          trial_plan && r.status == SubscriptionStatus::kTrialing && !standing.scheduled_end &&
          ComputeUsageTerms(trial_sub_plan, &r, now_s, &terms).problem() == "trial_expired";
      if (first_payment_failed || trial_over) {
        ++awaiting_payment;
      } else if (IsPaying(*trial_sub, now_s) && !trial_plan) {
        ++converted;
      } else if (r.status == SubscriptionStatus::kTrialing && !standing.scheduled_end) {
        ++in_trial;
      } else if (r.status != SubscriptionStatus::kTrialing && standing.paid_since_trial) {
        ++converted;
      } else if (trial_sub != &sub && plan != nullptr && !IsTrialPlan(*plan) &&
                 IsPaying(sub, now_s)) {
        // Its trial lapsed unpaid, and the user pays now on a plan bought since: a customer the
        // trial won, later (judged on the trial alone, a paying customer counted lost).
        ++converted;
      } else {
        ++lost;
      }
    }
    return Status::OK();
  }));

  const int64_t mrr = MrrCents(revenue12);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("as_of");
  json::String(&w, FormatRfc3339Seconds(now_s));
  w.Key("subscribers");
  w.StartObject();
  w.Key("total");
  w.Int64(total);
  w.Key("by_status");
  w.StartObject();
  for (const auto& [name, count] : by_status) {
    json::String(&w, name);
    w.Int64(count);
  }
  w.EndObject();
  w.Key("paying");
  w.Int64(paying);
  w.Key("trialing");
  w.Int64(trialing);
  w.Key("comped");
  w.Int64(comped);
  w.EndObject();
  w.Key("revenue");
  w.StartObject();
  w.Key("currency");
  w.String("usd");
  w.Key("mrr_cents");
  w.Int64(mrr);
  w.Key("arr_cents");
  w.Int64(revenue12);
  w.Key("mrr");
  json::String(&w, Dollars(mrr));
  w.Key("arr");
  json::String(&w, Dollars(revenue12));
  w.EndObject();
  w.Key("churn");
  w.StartObject();
  w.Key("window_days");
  w.Int64(churn_days);
  w.Key("churned");
  w.Int64(churned);
  w.Key("paying_at_start");
  w.Int64(paying_at_start);
  w.Key("rate");
  w.Double(Ratio(churned_of_those, paying_at_start));
  w.EndObject();
  w.Key("trial_conversion");
  w.StartObject();
  w.Key("trials");
  w.Int64(trials);
  w.Key("converted");
  w.Int64(converted);
  w.Key("lost");
  w.Int64(lost);
  w.Key("in_trial");
  w.Int64(in_trial);
  w.Key("awaiting_payment");
  w.Int64(awaiting_payment);
  w.Key("rate");
  w.Double(Ratio(converted, converted + lost));
  w.EndObject();
  w.EndObject();
  *out = json::Text(buf);
  return Status::OK();
}

Status RevenueByTierJson(const StateReader& state, int64_t now_s, std::string* out) {
  std::vector<Plan> plans;
  std::unordered_map<std::string, const Plan*> by_id;
  LEDGER_RETURN_IF_ERROR(LoadPlans(state, &plans, &by_id));
  struct Tier {
    int64_t subscribers = 0, paying = 0, monthly = 0, yearly = 0, revenue12 = 0;
  };
  std::unordered_map<std::string, Tier> tiers;
  LEDGER_RETURN_IF_ERROR(ForEachSubscriber(state, now_s, [&](const UserAccess& access,
                                                             const Subscriptions& every) {
    if (access.plan && EffectiveAccessAt(access, now_s) != AccessLevel::kNone) {
      ++tiers[access.plan->id].subscribers;
    }
    // Every paying subscription of the user on its own plan and interval (AnalyticsOverviewJson).
    for (const UserSubscription& each : every) {
      const Plan* plan = CatalogPlan(by_id, each);
      if (!IsPaying(each, now_s) || plan == nullptr) continue;
      Tier& tier = tiers[plan->id];
      ++tier.paying;
      ++(IsYearly(*plan, each.subscription) ? tier.yearly : tier.monthly);
      AddRevenue(&tier.revenue12, MonthlyRevenueTimes12(*plan, each.subscription));
    }
    return Status::OK();
  }));
  int64_t total_paying = 0, total_revenue12 = 0;
  for (const auto& [id, tier] : tiers) {
    total_paying += tier.paying;
    AddRevenue(&total_revenue12, tier.revenue12);
  }
  const int64_t total_mrr = MrrCents(total_revenue12);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("currency");
  w.String("usd");
  w.Key("tiers");
  w.StartArray();
  for (const Plan& plan : plans) {
    const Tier tier = tiers.count(plan.id) != 0 ? tiers[plan.id] : Tier();
    const int64_t mrr = MrrCents(tier.revenue12);
    w.StartObject();
    w.Key("plan_id");
    json::String(&w, plan.id);
    w.Key("display_name");
    json::String(&w, plan.display_name);
    w.Key("active");
    w.Bool(plan.active);
    w.Key("price_monthly_cents");
    w.Int64(plan.price_monthly_cents);
    w.Key("price_yearly_cents");
    if (plan.price_yearly_cents) {
      w.Int64(*plan.price_yearly_cents);
    } else {
      w.Null();
    }
    w.Key("subscribers");
    w.Int64(tier.subscribers);
    w.Key("paying");
    w.Int64(tier.paying);
    w.Key("paying_monthly");
    w.Int64(tier.monthly);
    w.Key("paying_yearly");
    w.Int64(tier.yearly);
    w.Key("mrr_cents");
    w.Int64(mrr);
    w.Key("arr_cents");
    w.Int64(tier.revenue12);
    w.Key("mrr_share");
    w.Double(Ratio(mrr, total_mrr));
    w.EndObject();
  }
  w.EndArray();
  w.Key("total");
  w.StartObject();
  w.Key("paying");
  w.Int64(total_paying);
  w.Key("mrr_cents");
  w.Int64(total_mrr);
  w.Key("arr_cents");
  w.Int64(total_revenue12);
  w.EndObject();
  w.EndObject();
  *out = json::Text(buf);
  return Status::OK();
}

Status UsageStatsJson(const StateReader& state, int64_t now_s, int64_t from_s, int64_t to_s,
                      std::string* out) {
  int64_t windows = 0, calls = 0, recorded = 0, resets = 0;
  std::map<std::string, int64_t, std::less<>> by_service;
  std::map<std::string, int64_t, std::less<>> by_plan;
  std::map<std::string, int64_t, std::less<>> per_user;
  std::unordered_map<std::string, std::string> plan_of;  // user -> effective plan id or "none"
  Status inner;
  // Windows starting in the range, each counted whole in the range that holds its start: a
  // billing month from Jan 20 to Feb 20 is January's. (Counting every window that overlapped the
  // range counted it in January's and in February's: adjacent ranges did not add up.)
  Status s = ScanUsageWindows(state, from_s, to_s, [&](int64_t window_start,
                                                      std::string_view user, WindowKind kind) {
    UsageCounter counter;
    inner = GetUsageCounter(state, user, window_start, kind, &counter);
    if (inner.IsNotFound()) {
      inner = Status::OK();  // an index row without its counter: nothing to count
      return true;
    }
    if (!inner.ok()) return false;
    // What a restarted period carried into the window was counted in the window that used it
    // (UsageCounter::carried): counted again, a cycle switch doubled the user's calls.
    const int64_t used = counter.used - counter.CarriedCalls();
    ++windows;
    calls += used;
    recorded += counter.recorded;
    resets += counter.resets;
    for (const auto& [service, count] : counter.services) {
      int64_t carried = 0;
      for (const UsageCarry& part : counter.carried) {
        auto it = part.services.find(service);
        if (it != part.services.end()) carried += it->second;
      }
      by_service[service] += count - carried;
    }
    per_user[std::string(user)] += used;
    auto it = plan_of.find(std::string(user));
    if (it == plan_of.end()) {
      UserAccess access;
      inner = GetUserAccessAt(state, user, now_s, &access);
      if (!inner.ok()) return false;
      it = plan_of.emplace(std::string(user), access.plan ? access.plan->id : "none").first;
    }
    by_plan[it->second] += used;
    return true;
  });
  LEDGER_RETURN_IF_ERROR(s);
  LEDGER_RETURN_IF_ERROR(inner);

  std::vector<std::pair<std::string, int64_t>> top(per_user.begin(), per_user.end());
  const size_t top_n = std::min(top.size(), kUsageStatsTopUsers);
  std::partial_sort(top.begin(), top.begin() + static_cast<std::ptrdiff_t>(top_n), top.end(),
                    [](const auto& a, const auto& b) {
                      return a.second != b.second ? a.second > b.second : a.first < b.first;
                    });
  top.resize(top_n);

  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("from");
  json::String(&w, FormatRfc3339Seconds(from_s));
  w.Key("to");
  json::String(&w, FormatRfc3339Seconds(to_s));
  w.Key("windows");
  w.Int64(windows);
  w.Key("users");
  w.Int64(static_cast<int64_t>(per_user.size()));
  w.Key("calls");
  w.Int64(calls);
  w.Key("recorded");
  w.Int64(recorded);
  w.Key("resets");
  w.Int64(resets);
  for (const auto& [key, map] : {std::pair<const char*, const std::map<std::string, int64_t, std::less<>>*>{
                                     "by_service", &by_service},
                                 {"by_plan", &by_plan}}) {
    w.Key(key);
    w.StartObject();
    for (const auto& [name, value] : *map) {
      json::String(&w, name);
      w.Int64(value);
    }
    w.EndObject();
  }
  w.Key("top_users");
  w.StartArray();
  for (const auto& [user, used] : top) {
    w.StartObject();
    w.Key("user_id");
    json::String(&w, user);
    w.Key("calls");
    w.Int64(used);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  *out = json::Text(buf);
  return Status::OK();
}

}  // namespace ledger::projections
