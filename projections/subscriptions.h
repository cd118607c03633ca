// The subscription projection: what ledgerd knows about each user's Stripe subscription, derived
// only from Stripe-signed webhook deliveries (projections/stripe_webhook.h decides the events).
//
// Events this fold applies (schemas in schemas/events/<type>.schema.json):
//   customer.linked.v1                 a user id <-> Stripe customer link (and the email)
//   subscription.checkout_completed.v1 a Checkout Session completed (user, customer, subscription)
//   subscription.state_changed.v1      a subscription's state as of one Stripe event
//   invoice.paid.v1, invoice.payment_failed.v1
// (stripe.webhook_received.v1 is the verbatim delivery; this fold does not read it.)
//
// Out of order and duplicates. Stripe delivers at least once and in no order. Each Stripe object
// row keeps the ordering key of the event it was last set from; an event whose key is not
// greater never changes the row. For a subscription the key is
//   (terminal, event created, event kind (created < updated < deleted), status rank, follows,
//    event id)
// where terminal = a `deleted` event or a status of canceled/incomplete_expired (Stripe never
// revives those), so a cancellation wins over any update, even a later-stamped one. `created`
// is whole seconds and Stripe's event ids are not in time order: of two states equal up to the
// status rank, the one that follows the other wins (FollowsSubscriptionState: its event's
// data.previous_attributes name a change of a kept field, each from the other's value), else
// the greater event id, so ties within one second converge. Every row is a max (or a set union)
// over the events applied, so the rows after a set of events are the same bytes whatever order
// they arrived in (for `follows`: as long as at most two states of one subscription share a
// second and the rest of the key; a third unrelated to one of them is ordered by the event id,
// which may not be the order Stripe made them in).
//
// Links. A subscription is attached to a user when any of these is known, in any order:
// the subscription's metadata.user_id; a Checkout Session ledgerd opened for the user naming it
// (session/<id>: never the session's own client_reference_id, which a Payment Link takes from its
// URL); or a link of its customer to the user. Until then it is kept under its own id and its
// customer's, and queries pick it up as soon as a link arrives. A subscription has one owner
// (GetUserSubscription): the user its customer is linked to, whatever its metadata.user_id says;
// its tag's user only while the customer is linked to nobody.
//
// Rows (column family "subscriptions"; all keys are ASCII, ids are Stripe's or our user ids):
//   sub/<subscription_id>            subscription JSON (SubscriptionRecord)
//   cus/<customer_id>                {"customer_id","user_id","email","email_created",
//                                    "linked_created"}
//   user/<user_id>                   {"user_id","email","email_created"}
//   inv/<invoice_id>                 invoice JSON (InvoiceRecord)
//   user_cus/<user_id>/<customer_id> ""   index: a user's customers
//   user_sub/<user_id>/<sub_id>      ""   index: subscriptions named for a user
//   cus_sub/<customer_id>/<sub_id>   ""   index: a customer's subscriptions
//   sub_inv/<sub_id>/<invoice_id>    ""   index: a subscription's invoices
//   status/<status>/<sub_id>         ""   index: subscriptions by status (admin listing)
//   email/<lowercased email>/<user>  ""   index: users by email (admin lookup)
//   override/<user_id>               an admin's tier/status override and notes (AdminOverride JSON),
//                                    from subscription.override_set.v1; deleted when all are unset
//   override_at/<user_id>            the time (µs, decimal) of the subscription.override_set.v1
//                                    that last changed the override's tier or status
//                                    (AdminOverride::decided_at_us); deleted when both are unset
//   session/<checkout_session_id>    <user_id>: from stripe.checkout_session_created.v1 (our own
//                                    record of POST /checkout/create), the owner of the session
//                                    when it completes (one without this row links nothing)
//   cus_deleted/<customer_id>        ""   from customer.deleted.v1: never named to Stripe again
//   user_session/<user_id>/<session_id>  the append time (µs) of that record; deleted when the
//                                    session's completion arrives (ListOpenCheckouts)
// User ids must not contain '/' (the webhook decider refuses such links).
//
// Thread safety: the fold and the queries are pure functions of the StateReader they are given;
// call them from any thread with a ReadView from Ledger::Snapshot() (or a DecideContext's state).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/fold.h"
#include "events/status.h"
#include "projections/plan_catalog.h"

namespace ledger::projections {

inline constexpr std::string_view kSubscriptionsFamily = "subscriptions";

inline constexpr std::string_view kCustomerLinkedV1 = "customer.linked.v1";
inline constexpr std::string_view kCustomerDeletedV1 = "customer.deleted.v1";
inline constexpr std::string_view kSubscriptionCheckoutCompletedV1 =
    "subscription.checkout_completed.v1";
inline constexpr std::string_view kSubscriptionStateChangedV1 = "subscription.state_changed.v1";
inline constexpr std::string_view kInvoicePaidV1 = "invoice.paid.v1";
inline constexpr std::string_view kInvoicePaymentFailedV1 = "invoice.payment_failed.v1";
inline constexpr std::string_view kSubscriptionOverrideSetV1 = "subscription.override_set.v1";

// ---------------------------------------------------------------------------------------------
// Status and access

// Stripe's eight subscription statuses.
enum class SubscriptionStatus {
  kIncomplete,
  kIncompleteExpired,
  kTrialing,
  kActive,
  kPastDue,
  kCanceled,
  kUnpaid,
  kPaused,
};

// Stripe's spelling: "incomplete", "incomplete_expired", "trialing", "active", "past_due",
// "canceled", "unpaid", "paused".
std::string_view SubscriptionStatusName(SubscriptionStatus status);
// False for anything that is not one of the eight names.
bool ParseSubscriptionStatus(std::string_view name, SubscriptionStatus* out);

// What a status means for access (PROTOCOLS.md): trialing/active grant; past_due is a grace
// period (access kept while Stripe retries: UserAccess::PaymentAbandoned ends it at query time);
// incomplete has not started yet; canceled/unpaid/incomplete_expired
// revoke; paused (a trial ended without a payment method) grants nothing.
enum class AccessLevel { kNone, kGranted, kGrace };
AccessLevel AccessFor(SubscriptionStatus status);
std::string_view AccessLevelName(AccessLevel level);  // "none", "granted", "grace"
// canceled and incomplete_expired: the subscription can never become active again.
bool IsTerminal(SubscriptionStatus status);

// ---------------------------------------------------------------------------------------------
// Rows

// What an event's data.previous_attributes (customer.subscription.updated: the values before the
// event of the fields it changed) said of the fields a SubscriptionRecord keeps: each set only
// when the event named the field (and the value could be read); for the times, an inner nullopt
// is a null. price_id is the plan item's price (PlanItem) among the previous `items`, else the
// legacy `plan`'s id; the billing period is top-level or on that item, as in the record.
struct PreviousAttributes {
  std::optional<std::string> price_id;
  std::optional<SubscriptionStatus> status;
  std::optional<bool> cancel_at_period_end;
  std::optional<std::optional<int64_t>> cancel_at;
  std::optional<std::optional<int64_t>> current_period_start;
  std::optional<std::optional<int64_t>> current_period_end;
  std::optional<std::optional<int64_t>> trial_end;

  bool empty() const {
    return !price_id && !status && !cancel_at_period_end && !cancel_at && !current_period_start &&
           !current_period_end && !trial_end;
  }
  bool operator==(const PreviousAttributes&) const = default;
};

// One Stripe subscription as of the last Stripe event applied to it. Times are Unix seconds,
// as Stripe sends them; nullopt where Stripe sent null or nothing.
struct SubscriptionRecord {
  std::string subscription_id;           // sub_...
  std::string customer_id;               // cus_...
  SubscriptionStatus status = SubscriptionStatus::kIncomplete;
  std::optional<std::string> plan_id;    // our plan (from the price, see PlanForSubscription)
  std::optional<std::string> price_id;   // the recurring price of the subscription's item
  std::optional<std::string> item_id;    // si_...: what POST /v1/subscriptions/{id} items[0][id] needs
  std::optional<std::string> interval;   // price.recurring.interval: "month", "year", ...
  // What Stripe bills for the item: unit_amount (smallest currency unit) × quantity every
  // interval_count intervals, in `currency`. nullopt where the delivery did not say (a tiered or
  // decimal price has no unit_amount) or the event was written before ledgerd kept them.
  std::optional<int64_t> unit_amount;     // price.unit_amount
  std::optional<int64_t> quantity;        // items.data[].quantity
  std::optional<int64_t> interval_count;  // price.recurring.interval_count
  std::optional<std::string> currency;    // price.currency, else the subscription's
  std::optional<int64_t> current_period_start;  // items.data[].current_period_* or top-level
  std::optional<int64_t> current_period_end;
  bool cancel_at_period_end = false;
  std::optional<int64_t> cancel_at;
  std::optional<int64_t> canceled_at;
  std::optional<int64_t> ended_at;
  std::optional<int64_t> trial_start;
  std::optional<int64_t> trial_end;
  std::optional<int64_t> created;        // the subscription object's own `created`
  std::optional<std::string> metadata_user_id;  // metadata.user_id, as sent
  std::optional<std::string> metadata_plan_id;  // metadata.plan_id, as sent
  bool deleted = false;                  // a customer.subscription.deleted was applied
  // The Stripe event this state comes from (the ordering key, see the file comment).
  std::string event_id;                  // evt_...
  std::string event_type;                // e.g. "customer.subscription.updated"
  int64_t event_created = 0;
  // That event's previous_attributes: what the state it followed was, so that a state delivered
  // later but made before it in the same second does not replace it (FollowsSubscriptionState).
  // Empty for events without them (created, deleted) and events written before ledgerd kept them.
  PreviousAttributes previous_attributes;

  bool operator==(const SubscriptionRecord&) const = default;
};

// One invoice, as of its last applied event. `paid` is final: a failure never undoes it.
struct InvoiceRecord {
  std::string invoice_id;                   // in_...
  std::optional<std::string> customer_id;
  std::optional<std::string> subscription_id;  // top-level `subscription` or
                                               // parent.subscription_details.subscription
  bool paid = false;                        // invoice.paid applied; else payment failed
  std::optional<int64_t> amount_due;        // cents
  std::optional<int64_t> amount_paid;
  std::optional<std::string> currency;
  std::optional<int64_t> attempt_count;
  std::optional<std::string> billing_reason;
  std::optional<int64_t> next_payment_attempt;
  std::string event_id;
  int64_t event_created = 0;

  bool operator==(const InvoiceRecord&) const = default;
};

// ---------------------------------------------------------------------------------------------
// The fold

class SubscriptionFold final : public Fold {
 public:
  std::string_view Name() const override { return kSubscriptionsFamily; }
  // Raise with any change to the rows Apply writes: the store's rows are rebuilt (fold.h).
  // 2: cus/ rows carry linked_created.
  // 3: a previous_attributes value equal to the event's own is no change (FollowsSubscriptionState).
  uint32_t Version() const override { return 3; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override;
};

// ---------------------------------------------------------------------------------------------
// Queries (any thread)

// Everything the projection knows about one user's billing relationship. Always answered: a user
// ledgerd knows nothing about gets OK with has_subscription == false and empty ids.
struct UserSubscription {
  std::string user_id;
  std::string email;          // from the Checkout Session / customer link; may be empty
  // The Stripe customer to use for this user (portal, payment methods, the next checkout):
  // the chosen subscription's customer, else the user's most recently linked customer (by the
  // Stripe event time of its link; ties: the greater id) that was not deleted; empty when none
  // is known.
  std::string customer_id;
  bool has_subscription = false;
  // The user's current subscription when has_subscription: among every subscription attached to the
  // user and owned by it (never one on a customer linked to another user -- its customer would
  // become this user's customer_id --, nor one tagged for another user on a customer linked to
  // nobody; one on the user's own customer is theirs whatever its tag), one with a plan of the
  // catalog before one without (an add-on price), then the one that grants access (granted, then
  // grace), else the one not terminal, else the most recently created (ties: the greater id).
  // Chosen as a request at a time sees it (GetUserSubscriptionAt, GetUserAccessAt), one past its
  // ScheduledEnd ranks as canceled, as Stripe's late deletion will record it: a plan kept to its
  // period's end next to an older one still billed was chosen past that end for being newer,
  // and the user got 402 subscription_required while paying for the other; among those past
  // their ScheduledEnds, the one that ended last (before the most recently created: past the
  // ends of both, a newer plan ended at T1 was chosen over an older one that lasted to T2). Its
  // plan_id is decided from the catalog (PlanIdForSubscription) whenever its price maps to a plan
  // (price/<id> rows), and when the row has none; the row's stands only for a price that maps to
  // nothing. A subscription tagged with a trial plan (metadata.plan_id) that never paid after its
  // trial (never_paid_after_trial) and that Stripe does not call trialing or active -- past_due
  // after a declined first charge, unpaid, canceled -- is on that trial plan, not on the price
  // Stripe moved it to: its trial has ended (trial_expired) until an invoice is paid.
  SubscriptionRecord subscription;
  std::optional<InvoiceRecord> latest_invoice;  // of that subscription, by (created, id)
  // Some invoice of that subscription (any, not only the latest: a trial that converted and then
  // failed a renewal did pay) was paid, a positive amount, at or after its trial_end.
  bool paid_after_trial = false;
  // Subscriptions attached to the user (a completed Checkout Session named them) whose own state
  // has not arrived yet: Stripe's events come in no particular order, and a failed delivery is
  // retried for hours. Not in has_subscription/subscription; by id.
  std::vector<std::string> awaited_subscription_ids;
  // The user's other subscriptions: attached as `subscription` is but not chosen (awaited ones
  // are not here), the most recent first (by the latest of ended_at, canceled_at and created;
  // ties: the greater id). A cancel-now's retry looks among them for the one its first attempt
  // ended before it touches the current one (http/billing_routes.cc): the user may have
  // subscribed again since.
  std::vector<std::string> other_subscription_ids;

  // The subscription had a trial and has not paid for a period after it: no invoice paid after
  // its trial_end (paid_after_trial), and it is still in the first period after the trial (a
  // renewal since means a payment the log may not hold). Its first charge failed or is still
  // pending, whatever dunning made of its status: not converted, not paying. (True while it is
  // still trialing, too.) The one definition access (above) and the admin analytics use.
  // Without a period (deliveries that carry none, as README's stripe_send) no renewal says it
  // paid, only an invoice: a trial canceled at its end with nothing paid counted converted, and
  // one past due since its first charge failed paying, on Starter's grace.
  bool never_paid_after_trial() const {
    const SubscriptionRecord& r = subscription;
    return has_subscription && r.trial_end && !paid_after_trial &&
           (!r.current_period_start || *r.current_period_start <= *r.trial_end);
  }

  // Past due, and Stripe has stopped retrying its latest invoice: that invoice's payment failed
  // (attempted at least once) and Stripe named no next attempt, as it does after its last retry
  // (Billing's "if all retries fail" set to leave the subscription past-due). Not a grace period
  // any more: a card declined on every retry was served for good. While Stripe will retry
  // (next_payment_attempt set), past_due keeps its grace. The one definition access
  // (UserAccess::PaymentAbandoned) and the admin analytics (not paying) use.
  bool payment_abandoned() const {
    const std::optional<InvoiceRecord>& invoice = latest_invoice;
    return has_subscription && subscription.status == SubscriptionStatus::kPastDue && invoice &&
           !invoice->paid && invoice->attempt_count && *invoice->attempt_count >= 1 &&
           !invoice->next_payment_attempt;
  }

  // Shortcuts into `subscription` (empty / kNone when !has_subscription).
  const std::string& subscription_id() const { return subscription.subscription_id; }
  std::optional<std::string> plan_id() const {
    return has_subscription ? subscription.plan_id : std::nullopt;
  }
  AccessLevel access() const {
    return has_subscription ? AccessFor(subscription.status) : AccessLevel::kNone;
  }
  // Stripe's status name, or "none".
  std::string_view status_name() const {
    return has_subscription ? SubscriptionStatusName(subscription.status) : "none";
  }
};

// When a subscription is scheduled to end (Unix seconds): cancel_at, or current_period_end when
// cancel_at_period_end, whichever is earlier; nullopt when it is not. Past that time it grants
// nothing even while its row still says active: Stripe's customer.subscription.deleted can come
// days late (retried for up to 3 days, or ledgerd was down), and until then months went on past
// the period with a fresh quota. Judged against the request's clock by the access checks
// (UserAccess::EndedAt); the fold itself reads no clock.
std::optional<int64_t> ScheduledEnd(const SubscriptionRecord& record);

// When `now_s` is past the ScheduledEnd of a subscription not terminal in its row, that end; else
// nullopt. Stripe canceled it there and bills it no more, though its
// customer.subscription.deleted may not have arrived: the request-time judgements (the admin
// views, choosing a user's subscription, the billing routes) treat it as that deletion will.
std::optional<int64_t> EndedBySchedule(const SubscriptionRecord& record, int64_t now_s);

// The user's subscription (see UserSubscription). Errors only for storage/corruption.
Status GetUserSubscription(const StateReader& state, std::string_view user_id,
                           UserSubscription* out);
// The same as a request at `now_s` chooses it: a subscription past its ScheduledEnd by then ranks
// as canceled (UserSubscription). What checkout refuses and the status route shows.
Status GetUserSubscriptionAt(const StateReader& state, std::string_view user_id, int64_t now_s,
                             UserSubscription* out);

// One subscription by Stripe id; NotFound when unknown.
Status GetSubscription(const StateReader& state, std::string_view subscription_id,
                       SubscriptionRecord* out);

// The user linked to a Stripe customer; NotFound when the customer is not linked.
Status GetCustomerUser(const StateReader& state, std::string_view customer_id,
                       std::string* user_id);

// Subscription ids with a given status, in id order, at most `limit` (admin listing).
Status ListSubscriptionsByStatus(const StateReader& state, SubscriptionStatus status,
                                 size_t limit, std::vector<std::string>* subscription_ids);

// The user who opened a Checkout Session through POST /api/v1/billing/checkout/create;
// NotFound when ledgerd did not create it.
Status GetCheckoutSessionUser(const StateReader& state, std::string_view session_id,
                              std::string* user_id);

// The Checkout Sessions `user_id` opened through POST /checkout/create whose completion has not
// arrived (subscription.checkout_completed.v1) and that no later checkout closed
// (closed_session_ids), at most `limit`, newest first. Expired ones may be listed: Stripe
// knows, not the log.
struct OpenCheckout {
  std::string session_id;
  int64_t created_us = 0;  // the append time of its stripe.checkout_session_created.v1
};
Status ListOpenCheckouts(const StateReader& state, std::string_view user_id, size_t limit,
                         std::vector<OpenCheckout>* sessions);

// The users the admin routes' `{email}` names: with an '@', those whose linked email equals it
// (FindUsersByEmail) and the user whose id is exactly it if the projections know that user (a
// user/ row: a checkout, a subscription or an override), in id order (PATCH also names one they
// do not know when no user has the email, SetAdminOverride); without, the one user with that id,
// known to the projections or not (an account to look at, comp or reset before it ever paid).
// None for an invalid user id.
Status FindUsersByEmailOrId(const StateReader& state, std::string_view email_or_id,
                            std::vector<std::string>* user_ids);

// User ids whose linked email equals `email` (case-insensitive), in id order.
Status FindUsersByEmail(const StateReader& state, std::string_view email,
                        std::vector<std::string>* user_ids);

// ---------------------------------------------------------------------------------------------
// Admin overrides (PATCH /api/v1/admin/subscriptions/{email}, projections/admin.h)

// What an admin set for one user. The tier and status replace the Stripe subscription's plan and
// status wherever access is decided (GetUserAccess): a comped account (no Stripe subscription,
// tier + status set), a suspension (status "canceled"), a tier granted by hand. The Stripe
// subscription row itself is never changed: billing routes and analytics of revenue still see
// what Stripe says. Every field is optional; a row with none set is deleted.
//
// Granting and revoking. An override whose status grants no access (canceled, unpaid, paused,
// ...: a suspension) revokes: it decides access for as long as it is set, whatever the user buys,
// and checkout refuses (409 account_suspended) rather than sell a plan it would not honour. Any
// other override with a tier or a status grants (a comp, a trial, a tier by hand): it decides
// until the user starts a Stripe subscription of their own -- one Stripe `created` at or after
// decided_at_us, to a catalog plan, in a status that grants access (trialing, active, past_due)
// -- which then supersedes it (UserAccess::override_superseded): the user pays for a plan and
// gets that plan, not the granted trial that ends on day 7. When that subscription ends, the
// override decides again: at Stripe's deletion, or already at its scheduled end (ScheduledEnd,
// judged with the request's clock: UserAccess::ResolveAt), not when the end is merely scheduled
// (the rest of the period was paid for). A subscription that existed when the admin set the
// override does not supersede it (a tier granted over a plan). Both times come from events
// (Stripe's object, the override's event): no clock is read.
struct AdminOverride {
  std::optional<std::string> plan_id;
  std::optional<SubscriptionStatus> status;
  std::optional<std::string> notes;
  std::string admin;   // JWT subject of the admin who made the last change
  int64_t set_at_us = 0;  // the time of that change's event
  // The time of the event that set `plan_id` to its value (an admin's trial runs from then; a
  // later change of the notes or the status does not move it). Rows written before this field
  // existed read it as set_at_us, which is later when the notes or status changed after the tier:
  // such a store's live rows then differ from a replay's (`ledgerctl replay` reports it) until
  // the subscriptions projection is rebuilt from the log.
  int64_t tier_set_at_us = 0;
  // The time of the event that last changed `plan_id` or `status` (what the override decides; a
  // change of the notes does not move it): what a superseding subscription must not predate.
  // Read from the override_at/ row; overrides set before that row existed read set_at_us until
  // their tier or status next changes.
  int64_t decided_at_us = 0;

  bool empty() const { return !plan_id && !status && !notes; }
  // A status that grants no access: a suspension (see above).
  bool revokes() const { return status && AccessFor(*status) == AccessLevel::kNone; }
  bool operator==(const AdminOverride&) const = default;
};

// The override of a user, nullopt when none is set.
Status GetAdminOverride(const StateReader& state, std::string_view user_id,
                        std::optional<AdminOverride>* out);
std::string AdminOverrideToJson(const AdminOverride& value);
Status ParseAdminOverride(std::string_view json, AdminOverride* out);

// Calls fn(user_id, email) for every user the projection knows (a `user/` row: linked by a
// checkout or a Stripe customer), in user id order, starting after `after` ("" = from the
// first), until fn returns false.
Status ScanUsers(const StateReader& state, std::string_view after,
                 const std::function<bool(std::string_view, std::string_view)>& fn);

// ---------------------------------------------------------------------------------------------
// Access (for my-access, check-access, usage metering)

struct UserAccess {
  UserSubscription subscription;  // what Stripe says (never changed by an override)
  std::optional<AdminOverride> override;  // an admin's override, when one is set
  // A granting override the user's own later subscription supersedes (AdminOverride): it is
  // kept (and shown) but decides nothing.
  bool override_superseded = false;
  // The chosen subscription's ScheduledEnd, when what decides changes there: from then on access
  // is `override_decides` (ResolveAt, with the request's clock) -- the superseded override
  // deciding again, or another subscription of the user chosen in its place (UserSubscription:
  // past its end it ranks as canceled). An admin's trial decided again as soon as the user
  // bought Professional and cancelled it at its period's end: 402 trial_expired, tts 403, for
  // the rest of the month the user had paid for.
  std::optional<int64_t> superseded_until;
  // Set with superseded_until: GetUserAccess as of that time (itself with a later change, when
  // the subscription chosen then is also scheduled to end).
  std::shared_ptr<const UserAccess> override_decides;
  // The status access is decided on: the deciding override's, else the subscription's; nullopt
  // when there is neither (no subscription).
  std::optional<SubscriptionStatus> status;
  // The plan access is decided on (the deciding override's tier, else the subscription's plan)
  // from the catalog (retired plans too).
  std::optional<Plan> plan;
  AccessLevel access = AccessLevel::kNone;  // kNone also when the plan is unknown

  // Stripe's name of `status`, or "none".
  std::string_view status_name() const {
    return status ? SubscriptionStatusName(*status) : "none";
  }
  // The id of `plan`, else the subscription's plan id (one the catalog does not know).
  std::optional<std::string> plan_id() const {
    return plan ? std::optional<std::string>(plan->id) : subscription.plan_id();
  }
  // An override sets the tier or the status (notes alone change nothing), and is not superseded.
  bool overridden() const {
    return override && !override_superseded && (override->plan_id || override->status);
  }
  // The subscription's ScheduledEnd when its status is what access is decided on (not when the
  // deciding override sets the status: a comp outlives the subscription it was set over).
  std::optional<int64_t> scheduled_end() const {
    if (!subscription.has_subscription || (overridden() && override->status)) return std::nullopt;
    return ScheduledEnd(subscription.subscription);
  }
  // When access ends with no retry to wait for: the scheduled end, unless an override decides
  // from then on and grants access (a comp the bought plan superseded comes back there, so a
  // quota used up before that end is a 429 until it, not the 402 "subscribe to continue" that
  // told a paying user to buy a plan and had gateways drop them).
  std::optional<int64_t> access_end() const {
    const std::optional<int64_t> end = scheduled_end();
    if (!end || !superseded_until || !override_decides) return end;
    const UserAccess& then = *override_decides;
    if (then.access == AccessLevel::kNone || then.EndedAt(*end)) return end;
    // An admin's trial that has run out by then grants nothing either (402 trial_expired).
    if (then.overridden() && then.override->plan_id && then.plan && then.plan->trial_days > 0 &&
        then.override->tier_set_at_us / 1'000'000 + int64_t{then.plan->trial_days} * 86'400 <=
            *end) {
      return end;
    }
    // What decides then grants: access ends when that ends, if ever.
    return then.access_end();
  }
  // What access is at `now_s`: past `superseded_until`, what decides from then on (a comp comes
  // back at the end of the plan that superseded it, the user's other plan is chosen past the end
  // of the one kept to its period's end, as at Stripe's deletion, which can come days late).
  // Every request-time decision takes its UserAccess through this
  // (GetUserAccessAt); GetUserAccess alone is what the state says, for the cache.
  bool SupersessionEndedAt(int64_t now_s) const {
    return superseded_until && now_s >= *superseded_until && override_decides;
  }
  void ResolveAt(int64_t now_s) {
    while (SupersessionEndedAt(now_s)) {
      UserAccess then = *override_decides;  // copied first: assigning releases override_decides
      *this = std::move(then);
    }
  }
  // The subscription's payment_abandoned when its status is what access is decided on (an
  // override that sets the status decides instead): consume, check-access, my-access, the usage
  // summary, BYOK and the admin views grant nothing (402 payment_failed, SubjectUsageTerms)
  // until an invoice is paid. Read at query time from the invoice rows: the fold is unchanged.
  bool PaymentAbandoned() const {
    return !(overridden() && override->status) && subscription.payment_abandoned();
  }
  // Access has ended by `now_s` because the subscription was scheduled to end by then:
  // check-access, consume, my-access, the usage summary and BYOK grant nothing (checkout, with
  // ScheduledEnd, sells a new plan).
  bool EndedAt(int64_t now_s) const {
    const std::optional<int64_t> end = scheduled_end();
    return end && now_s >= *end;
  }
};

// With `every`, also each subscription attached to the user -- the ones UserSubscription's is
// chosen from, awaited ones aside -- as a UserSubscription of its own (its record with the plan
// resolved as for the chosen one, its own invoices, its own customer_id), in subscription id
// order, the chosen one among them. The admin revenue figures read them all: Stripe bills every
// one (a second checkout, a plan kept to its period's end next to a new one), not only the one
// access is decided on.
Status GetUserAccess(const StateReader& state, std::string_view user_id, UserAccess* out,
                     std::vector<UserSubscription>* every = nullptr);
// True when UserSubscription would be `a` rather than `b`, both records with their plans resolved
// (as `every`'s), judged at `ended_by` as GetUserAccessAt judges (nullopt: the state alone).
bool PreferredSubscription(const SubscriptionRecord& a, const SubscriptionRecord& b,
                           std::optional<int64_t> ended_by);
// GetUserAccess, then ResolveAt(now_s): what a request at `now_s` decides on.
Status GetUserAccessAt(const StateReader& state, std::string_view user_id, int64_t now_s,
                       UserAccess* out);

// Why a service is or is not available to a user. Reasons (stable, snake_case):
//   "ok", "unknown_service", "no_subscription", "subscription_inactive", "unknown_plan",
//   "service_not_in_plan". (check-access adds "trial_expired", "trial_exhausted",
//   "subscription_required" and "payment_failed" from the usage terms: http/.)
struct ServiceAccess {
  bool allowed = false;
  std::string_view reason;
};
ServiceAccess CheckServiceAccess(const UserAccess& access, std::string_view service);

// The plan a subscription's state maps to, from the catalog in `state`:
//   1. while trialing, metadata.plan_id when it names a plan with trial_days > 0 (the trial plan
//      is Starter's recurring price plus a trial, tagged plan_id=trial at checkout);
//   2. the plan whose stripe_price_monthly or stripe_price_yearly equals `price_id`, else
//      `price_plan_id`: the plan that named `price_id` before a price change replaced it
//      (PlanForStripePrice; its subscribers renew on it, whatever their metadata says);
//   3. metadata.plan_id when it names a catalog plan -- past its trial, a trial plan's tag means
//      kTrialConversionPlanId (the trial converted on a price the catalog has since replaced);
//   4. nullopt.
std::optional<std::string> PlanIdForSubscription(const std::vector<Plan>& plans,
                                                 SubscriptionStatus status,
                                                 const std::optional<std::string>& price_id,
                                                 const std::optional<std::string>& price_plan_id,
                                                 const std::optional<std::string>& metadata_plan_id);
// The same, with the catalog read from `state`.
Status PlanForSubscription(const StateReader& state, SubscriptionStatus status,
                           const std::optional<std::string>& price_id,
                           const std::optional<std::string>& metadata_plan_id,
                           std::optional<std::string>* plan_id);

// ---------------------------------------------------------------------------------------------
// Row encoding (shared with the webhook decider; exposed for tests)

std::string SubscriptionRowKey(std::string_view subscription_id);
std::string SubscriptionRecordToJson(const SubscriptionRecord& record);
Status ParseSubscriptionRecord(std::string_view json, SubscriptionRecord* out);
std::string InvoiceRowKey(std::string_view invoice_id);
std::string InvoiceRecordToJson(const InvoiceRecord& record);
Status ParseInvoiceRecord(std::string_view json, InvoiceRecord* out);

// True when `later`'s event changed the subscription from `earlier`'s state: its
// previous_attributes name at least one field with a value other than `later`'s own (a change)
// and each such value is `earlier`'s. A value equal to `later`'s own names no change (Stripe
// sends `items` whole when any item changed, a seat count or an add-on) and is not compared.
bool FollowsSubscriptionState(const SubscriptionRecord& later, const SubscriptionRecord& earlier);

// True when a subscription state from event (`candidate`) must replace `current` (the ordering
// key above is strictly greater; `follows` counts only when one follows the other and not the
// other way round).
bool SupersedesSubscription(const SubscriptionRecord& candidate,
                            const SubscriptionRecord& current);
// Same for invoices: key (paid, event created, event id).
bool SupersedesInvoice(const InvoiceRecord& candidate, const InvoiceRecord& current);

}  // namespace ledger::projections
