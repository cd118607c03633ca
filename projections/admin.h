// Admin views of subscribers and the business (the routes under /api/v1/admin/subscriptions,
// http/admin_routes.cc), and the admin override command.
//
// Everything here is a pure function of a StateReader (a Ledger::Snapshot() view) and of the
// `now_s` the caller passes: nothing reads a clock or does I/O. The views are computed at query
// time from the subscriptions, plans and usage projections instead of from aggregate rows kept by
// a fold, so that they are always what the rows say (no aggregate to correct when a row changes),
// at the cost of a scan: O(users) for the list's
// filters (bounded per page by kSubscriberScanMax) and for the overview and revenue views,
// O(usage windows in the range) for usage statistics.
//
// Definitions (what the numbers mean):
//   effective status / plan   what access is decided on at `now_s`: an admin override's, else
//                             Stripe's (GetUserAccessAt: past the scheduled end of a plan the
//                             user bought over an override, the override's, as consume decides,
//                             before Stripe's deletion arrives); "none" when there is neither.
//   ended (a subscription)    past its scheduled end at `now_s` (ScheduledEnd: cancel_at, or
//                             the period's end with cancel_at_period_end), not yet canceled in
//                             the log: judged as Stripe's deletion will say (canceled, ended at
//                             that end), which can come days late; consume grants nothing there.
//   paying subscription       a Stripe subscription that is `active`, or `past_due` but not
//                             never_paid_after_trial (subscriptions.h: past due since the first
//                             charge after its trial failed) nor payment_abandoned (Stripe's
//                             retries of its latest invoice are over), on a plan of the catalog,
//                             and not past its scheduled end (above: Stripe bills it no more).
//                             Every subscription attached to a user is judged on its own (its
//                             status, its invoices), not only the one access is decided on:
//                             Stripe bills a user who checked out twice, or kept a plan
//                             scheduled to end next to a new one, for both.
//   paying subscriber         a user with at least one paying subscription.
//                             Overrides do not make revenue: Stripe bills what Stripe has.
//   MRR                       the sum over paying subscriptions of what Stripe bills a month:
//                             the item's unit_amount × quantity per interval_count intervals
//                             (a year's / 12, a week's × 52 / 12, a day's × 365 / 12), as the
//                             latest delivery said, so a subscriber keeps its own price when an
//                             admin edits the plan's; where the delivery did not say (tiered
//                             prices, events before the amount was kept, another currency than
//                             the plan's) the plan's monthly price, or its yearly price / 12 for
//                             a yearly subscription (interval "year", or without an interval the
//                             plan's yearly Stripe price). In cents, rounded to the cent once;
//                             ARR = the sum of each subscription's year (in whole cents: a year
//                             of weekly prices is 52 weeks, a price billed every n intervals is
//                             divided by n and truncated; ARR may differ from 12 × MRR by cents).
//                             Discounts (coupons) are not taken off.
//   paid after its trial      (a subscription that had one, `trial_end`; one that had none
//                             always counts) as far as the log tells: an invoice paid (a positive
//                             amount) at or after the trial's end; else its period moved past the
//                             trial (not never_paid_after_trial: a renewal whose invoice the log
//                             may not hold; without a period, only the invoice), but not when
//                             it is unpaid or past due with Stripe's retries over (Stripe rolls
//                             such a subscription's periods on regardless), nor, neither active
//                             nor past due (canceled), when its latest invoice is a charge after
//                             the trial that failed. One that did not pay after its trial is a
//                             lost trial, never a paying customer, whatever its status becomes.
//   churned (window)          a user whose Stripe subscription on a catalog plan was canceled
//                             (not incomplete_expired: that one never started) at `ended_at`
//                             (else `canceled_at`; one ended, above: at its scheduled end)
//                             inside the last `churn_days`, after its trial if it had one
//                             (`trial_end`) and having paid after it (above).
//   paying at start           a user paying when the churn window began on any of its
//                             subscriptions (a plan left inside the window for another, or billed
//                             next to one bought inside it, counts): one on a catalog plan, paying
//                             since before it (`trial_end` when it had a trial, else `created`),
//                             and now active, or past_due, unpaid or paused having paid after
//                             its trial (above), or ended inside the window as churned counts
//                             (above); one not active now (or ended, above) only while it still
//                             paid when the window began: its current period (as last
//                             delivered) and its scheduled end do not end before the window's
//                             start, and its latest invoice is not a failed charge from before
//                             it (without either date it counts). Churn
//                             rate = those of them churned / paying at start (`churned` also
//                             counts customers won and lost inside the window, and ones that had
//                             stopped paying before it, which are not in the base).
//   trial conversion          among users with a subscription on a catalog plan (as churned:
//                             not a Dashboard add-on) that had a trial (`trial_start`) or is on
//                             a trial plan, judged on that one (the user's subscription when it
//                             had the trial, else the newest by `created` that had one: a
//                             converted trial left for a plan without one stays converted; one
//                             that lapsed unpaid converted once the user pays now on a
//                             non-trial plan bought after it):
//                             converted = now paying on a non-trial plan, or out of
//                             its trial (not trialing) having paid after it (above: churn's
//                             paying customer) whatever its status now (converted, then unpaid,
//                             past due with Stripe's retries over, or canceled after a failed
//                             renewal);
//                             awaiting payment = past_due in the first period after the trial
//                             (current_period_start at or before trial_end, or none) without a paid
//                             invoice since: the first charge failed and Stripe retries it (not
//                             once its retries are over, payment_abandoned: lost);
//                             or still trialing past its trial's end as consume judges it
//                             (status trial_expired, below): Stripe's trial-end update, and so
//                             its first charge's outcome, not arrived yet; in its trial =
//                             trialing otherwise;
//                             lost = none of these; rate = converted / (converted + lost). One
//                             ended (above) is neither in its trial nor awaiting payment.
//   effective access          what the effective status grants, none where consume refuses
//                             access before the service and the quota (EffectiveAccessAt): past
//                             a scheduled end, or a trial past its end (an admin's too).
//   comped                    effective access granted by an override with no paying subscription.
//   status                    EffectiveStatusAt: the effective status as consume judges it at
//                             `now_s`, one function for the list's "status" and ?status= filter,
//                             the one subscriber's "status" and the overview's by_status: Stripe's
//                             status of a subscription that has ended (above; not an override's
//                             status) is "canceled", as Stripe's deletion will record it;
//                             a trial that has ended (consume's 402 trial_expired: an admin's
//                             trial past its days, or a Stripe trial past its end) in a status
//                             that grants access (trialing, active) is "trial_expired"; a past-due
//                             trial whose first charge failed stays "past_due" (Stripe retries
//                             it: awaiting payment, below). `trialing` is by_status's trialing.
//                             A status that would grant access with no catalog plan to grant
//                             (a Dashboard add-on alone) is "none": consume refuses it as a user
//                             with no subscription (402 subscription_required).
//                             What was stored stays in the subscriber's stripe.status and
//                             override.status.
//
// What each figure counts. Users: subscribers.total, by_status, paying, trialing and comped; a
// tier's `subscribers`; churn (churned: of the user's subscription, the one UserSubscription
// chooses, so that a switch of plans is no churn -- when that one never started, incomplete or
// incomplete_expired, the one chosen without it; paying_at_start: of any of the user's
// subscriptions); trial conversion (of the subscription that had the trial). Subscriptions: MRR
// and ARR (overview, tiers, total), and revenue by tier's `paying`, `paying_monthly`,
// `paying_yearly` and total `paying` -- each paying subscription on its own plan and interval, so
// a user paying for Starter and for Professional is paying on both tiers, and total `paying` can
// exceed the overview's `subscribers.paying`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"
#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"

namespace ledger::projections {

inline constexpr size_t kSubscriberPageMax = 200;      // users per page of the list
inline constexpr size_t kSubscriberPageDefault = 50;
inline constexpr size_t kSubscriberScanMax = 5000;     // users examined per list request
inline constexpr size_t kAdminQueryBytesMax = 320;     // `q`, `tier`, `status` filters
inline constexpr size_t kOverrideNotesBytesMax = 2000;
inline constexpr int64_t kUsageStatsRangeSecondsMax = 400 * 86400;
inline constexpr size_t kUsageStatsTopUsers = 10;

// ---- the list --------------------------------------------------------------------------------

struct SubscriberFilter {
  std::optional<std::string> status;  // EffectiveStatusAt's: Stripe's, "none", "trial_expired"
  std::optional<std::string> tier;    // effective plan id
  std::optional<std::string> q;       // case-insensitive substring of the email or the user id
};

struct SubscriberPage {
  std::vector<std::string> json;  // one SubscriberJson per user, in user id order
  // The last user id examined when the page stopped before the end (the page is full, or
  // kSubscriberScanMax users were examined): pass it back as `after` for the next page.
  std::optional<std::string> next_after;
  size_t examined = 0;
};

// Users the subscriptions projection knows, after `after` (a user id; "" = from the first), as
// access is at `now_s` (the filters match the effective status, EffectiveStatusAt, and plan then).
Status ListSubscribers(const StateReader& state, int64_t now_s, const SubscriberFilter& filter,
                       std::string_view after, size_t limit, SubscriberPage* out);

// What `access` grants at `now_s` as consume and my-access decide (usage.h AccessRefusalAt, the
// one decision): none when a consume would be refused with 402 before its service and quota --
// once the subscription's cancel_at / period end (cancel_at_period_end) has passed, though
// Stripe's deletion has not arrived (UserAccess::EndedAt), or once a trial has ended (402
// trial_expired, whatever Stripe's status still says); else its status's access. The admin
// views' effective access: past the end, the list showed access "granted" and revenue by tier
// counted the user while consume answered 402 and my-access has_access false.
AccessLevel EffectiveAccessAt(const UserAccess& access, int64_t now_s);

// The effective status at `now_s` (see "status" above): Stripe's status name, "none" (also for
// a status that would grant access with no catalog plan), "canceled" past a scheduled end, or
// kTrialExpiredStatus for a trial that has ended. What the list shows and filters on and the
// overview counts by, so that list?status=<key> holds the overview's by_status[key] users.
std::string_view EffectiveStatusAt(const UserAccess& access, int64_t now_s);

// One subscriber as the admin views show it at `now_s`:
// {"user_id","email","status" (EffectiveStatusAt),"access" (EffectiveAccessAt),"plan_id",
//  "overridden",
//  "override_superseded" (the override is set but the user's own later subscription decides:
//  subscriptions.h),
//  "stripe":{"subscription_id","customer_id","status","plan_id","interval","unit_amount",
//            "quantity","interval_count","currency" (the price item as the latest delivery
//            said, null where it did not: what MRR is computed from),
//            "current_period_start","current_period_end","cancel_at_period_end","trial_start",
//            "trial_end","canceled_at"} | null,
//  "override":{"plan_id","status","notes","admin","set_at"} | null}
std::string SubscriberJson(const UserAccess& access, int64_t now_s);

// ---- overrides --------------------------------------------------------------------------------

// A PATCH: each member absent = unchanged, present = set, present with nullopt = cleared.
struct OverrideChange {
  std::optional<std::optional<std::string>> plan_id;
  std::optional<std::optional<SubscriptionStatus>> status;
  std::optional<std::optional<std::string>> notes;
  bool empty() const { return !plan_id && !status && !notes; }
};

// Applies `change` to the override of every user `email` names (FindUsersByEmailOrId, the
// email's at most limits::kUserSubscriptionsMax; with an '@' no user has as an email, the user
// whose id it is, known or not): one subscription.override_set.v1 per user whose override
// changes (subject = the user id; data: the override after the change and the actor). A change
// that changes nothing appends nothing. 404 "not_found" when it names nobody; 422
// "unknown_plan" when the tier is not a catalog plan. Judged per user, a change that sets the
// tier or the status and leaves a user a tier without a status while that user has no live
// subscription (none; canceled or incomplete_expired; past its scheduled end at the writer's
// clock) is "status_required" (a tier alone takes its status from the subscription and would
// grant nothing), and one that leaves a user a status that grants access without a tier while
// that user's subscription is on no catalog plan (none, or a Dashboard add-on alone) is
// "validation_failed" naming the tier (a status alone takes its plan from the subscription; a
// suspension needs no plan): that user is skipped (nothing appended for them, `skipped` says
// why) while the others change; when every user named would be, that first user's 422 and
// nothing is appended. Body: {"email","users":[{"user_id","changed","override":{"plan_id",
// "status","notes"}|null,"skipped":{"type","detail"}|null}]}.
class SetAdminOverride final : public Command {
 public:
  SetAdminOverride(std::string email, OverrideChange change, Actor actor);
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string email_;
  OverrideChange change_;
  Actor actor_;
};

// ---- analytics ----------------------------------------------------------------------------------

// The effective status, next to Stripe's eight and "none", of a user whose trial has ended while
// its status still grants access (see "status" above): a by_status key, a list row's "status"
// and a ?status= filter.
inline constexpr std::string_view kTrialExpiredStatus = "trial_expired";

// {"as_of","subscribers":{"total","by_status":{Stripe's eight statuses, "none",
//  "trial_expired"},"paying","trialing","comped"},
//  "revenue":{"currency":"usd","mrr_cents","arr_cents","mrr","arr"},
//  "churn":{"window_days","churned","paying_at_start","rate"},
//  "trial_conversion":{"trials","converted","lost","in_trial","awaiting_payment","rate"}}
Status AnalyticsOverviewJson(const StateReader& state, int64_t now_s, int64_t churn_days,
                             std::string* out);

// {"currency":"usd","tiers":[{"plan_id","display_name","active","price_monthly_cents",
//  "price_yearly_cents","subscribers","paying","paying_monthly","paying_yearly","mrr_cents",
//  "arr_cents","mrr_share"}], "total":{"paying","mrr_cents","arr_cents"}}: every catalog plan
// (retired ones too), in catalog order; `subscribers` counts users with effective access on the
// plan, `paying` (monthly + yearly) paying subscriptions on it (see "What each figure counts").
Status RevenueByTierJson(const StateReader& state, int64_t now_s, std::string* out);

// Usage recorded in windows starting in [from_s, to_s), each window counted whole in the one range
// that holds its start (adjacent ranges add up; a billing month from the 20th is the month's of
// its start, not of its end):
// {"from","to","windows","users","calls","recorded","resets","by_service":{...},
//  "by_plan":{...},"top_users":[{"user_id","calls"}]} — `calls` is what counts against quotas
// (after resets; what a restarted period carried into a window, UsageCounter::carried, counted
// once, in the window that used it), `recorded` everything recorded; by_plan keys are effective
// plan ids now at `now_s` ("none" without one); top_users by calls, at most kUsageStatsTopUsers.
Status UsageStatsJson(const StateReader& state, int64_t now_s, int64_t from_s, int64_t to_s,
                      std::string* out);

}  // namespace ledger::projections
