// The plan catalog: the plans users can subscribe to (CONTRACT.md §4) and the fixed service
// catalog they grant access to.
//
// Every catalog change is an event with subject "plan:<id>":
//   plan.created.v1  {"plan": <plan>, "actor": <actor>}
//   plan.updated.v1  {"plan": <plan>, "actor": <actor>}   the full plan after the change
//   plan.retired.v1  {"plan_id": "<id>", "actor": <actor>}
// where <actor> is {"kind": "admin"|"system", "sub": "...", "email": "..."|null}: the admin whose
// JWT made the change, or the component (e.g. "seed", "ledgerctl") that made it.
// Schemas: schemas/events/plan.*.schema.json.
//
// PlanCatalogFold keeps one row per plan in the column family "plans": key = plan id, value = the
// plan's canonical JSON (PlanToJson). Retired plans keep their row with "active": false, so
// existing subscribers can still resolve them. It also keeps one row per Stripe price id a plan
// has ever named: key = "price/<price id>", value = the plan id, kept when a price change
// replaces the price (its subscribers stay on it: PlanForStripePrice).
//
// Deciders (CreatePlan, UpdatePlan, RetirePlan, SetPlanStripePrices, SeedCatalog) run on the
// ledger's writer thread against the fold's rows; everything else here is pure and thread-safe.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"

namespace ledger::projections {

inline constexpr std::string_view kPlansFamily = "plans";
inline constexpr std::string_view kPlanCreatedV1 = "plan.created.v1";
inline constexpr std::string_view kPlanUpdatedV1 = "plan.updated.v1";
inline constexpr std::string_view kPlanRetiredV1 = "plan.retired.v1";
inline constexpr std::string_view kStripePriceKeyPrefix = "price/";

// The plan a trial (a plan with trial_days > 0, sold as this plan's monthly price with a trial
// and a one-time fee: http/stripe_plans.h) converts to when its trial ends.
inline constexpr std::string_view kTrialConversionPlanId = "starter";

// ---------------------------------------------------------------------------------------------
// Services

struct ServiceInfo {
  std::string_view id;
  std::string_view display_name;
  std::string_view description;
};

// The seven services, in the order the plans page shows them.
const std::array<ServiceInfo, 7>& ServiceCatalog();
bool IsKnownService(std::string_view id);
// {"services":[{"id","display_name","description"}, ...]}
std::string ServiceCatalogJson();

// ---------------------------------------------------------------------------------------------
// Plans

enum class LimitWindow { kNone, kDay, kMonth };  // kNone <=> "limit_window": null
std::string_view LimitWindowName(LimitWindow window);  // "day", "month", "" for kNone

struct Plan {
  std::string id;                           // [a-z0-9][a-z0-9-]*, immutable
  std::string display_name;                 // non-empty
  std::string description;
  std::string currency = "usd";             // only "usd" today
  int64_t price_monthly_cents = 0;          // the trial's one-time $1 fee is 100 here
  std::optional<int64_t> price_yearly_cents;  // nullopt: not sold yearly
  std::optional<int64_t> api_calls_limit;     // nullopt: unlimited
  LimitWindow limit_window = LimitWindow::kNone;  // set iff api_calls_limit is set
  int64_t trial_days = 0;
  std::vector<std::string> services;        // ids from ServiceCatalog(), no duplicates
  std::vector<std::string> features;        // lines for the plans page
  bool byok_enabled = false;
  int64_t team_seats = 1;                   // >= 1
  std::optional<std::string> stripe_price_monthly;  // Stripe price ids (set by admins/stripe-setup)
  std::optional<std::string> stripe_price_yearly;
  bool active = true;                       // false: retired, not offered to new subscribers

  bool operator==(const Plan&) const = default;
  bool HasService(std::string_view service) const;
};

// Checks every field against CONTRACT.md §4 and projections/limits.h. Returns kUnprocessable
// ("validation_failed" or "unknown_service") naming the first bad field.
Status ValidatePlan(const Plan& plan);

// The plan's canonical JSON: every field, in a fixed order, nulls written out.
std::string PlanToJson(const Plan& plan);
// {"plans":[<plan>, ...]}
std::string PlanListToJson(const std::vector<Plan>& plans);

// Parses a canonical plan (a fold row or the "plan" of an event): every field must be present,
// no others. Validates.
Status ParsePlanJson(std::string_view json, Plan* out);

// A plan as an admin sends it (POST body, or PUT body with the id from the path).
//
// POST: required id, display_name, price_monthly_cents, api_calls_limit (null = unlimited, said
// explicitly), services. Defaults: description "", currency "usd", price_yearly_cents 10 ×
// price_monthly_cents (null for a free plan or one with trial_days; explicit null: not sold
// yearly), limit_window "month" when api_calls_limit is a number (else null), trial_days 0,
// features [], byok_enabled false, team_seats 1, stripe_price_* null, active true.
//
// PUT: every field is optional (the id, if given, must equal the path's); a field left out keeps
// the stored plan's value (UpdatePlan merges), so fixing a typo cannot take BYOK or seats away
// from the plan's subscribers. limit_window left out stays, or becomes the default above when
// api_calls_limit turns a number, or null when it turns null. Explicit null clears a nullable
// field. Unknown fields are rejected either way.
//
// Either way the plan (a PUT's merged result, when the PUT names a price) must be sellable: free
// (monthly 0, yearly 0 or null) or paid in every cycle it sells (no 0 beside a non-zero price),
// and a trial has no yearly price -- 422 validation_failed. A display_name, description or
// features the request names is text people read (IsDisplayText: no control characters, no
// bidirectional overrides), else 422 validation_failed naming the field; a stored plan from
// before that rule still reads.
struct PlanInput {
  Plan plan;  // POST: the whole plan; PUT: only the fields in `given` mean anything
  std::bitset<16> given;  // by index in the plan's field list (PlanFieldIndex)

  bool Given(std::string_view field) const;
};

// `path_id` empty: a POST body. Errors: kInvalidArgument "invalid_json" (not a JSON object,
// invalid UTF-8, duplicate member names); kUnprocessable "validation_failed", "unknown_field",
// "unknown_service", "plan_id_mismatch".
Status ParsePlanInput(std::string_view body, std::string_view path_id, PlanInput* out);

// The four plans of CONTRACT.md §4, as seeded on first start.
std::vector<Plan> InitialPlans();

std::string PlanSubject(std::string_view plan_id);  // "plan:<id>"

// ---------------------------------------------------------------------------------------------
// Who made a catalog change.

struct Actor {
  enum class Kind { kAdmin, kSystem };
  Kind kind = Kind::kSystem;
  std::string subject;  // JWT sub, or the component's name ("seed", "ledgerctl")
  std::string email;    // empty is written as null

  static Actor Admin(std::string subject, std::string email) {
    return Actor{Kind::kAdmin, std::move(subject), std::move(email)};
  }
  static Actor System(std::string name) { return Actor{Kind::kSystem, std::move(name), ""}; }
};

// {"kind":"admin"|"system","sub","email"} as the events that name an actor carry it.
std::string ActorJson(const Actor& actor);
// InvalidArgument unless the subject is 1..255 bytes and the email at most 320, both UTF-8.
Status ValidateActor(const Actor& actor);

// ---------------------------------------------------------------------------------------------
// The fold

class PlanCatalogFold final : public Fold {
 public:
  std::string_view Name() const override { return kPlansFamily; }
  // Raise with any change to the rows Apply writes: the store's rows are rebuilt (fold.h).
  // 2: a price/<Stripe price id> row for every price a plan has named.
  uint32_t Version() const override { return 2; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override;
};

// ---------------------------------------------------------------------------------------------
// Queries (any thread; pass a ReadView from Ledger::Snapshot() or a DecideContext's state).

// Plans ordered by price_monthly_cents, then id (trial, starter, professional, enterprise).
Status ListPlans(const StateReader& state, bool include_inactive, std::vector<Plan>* out);
// NotFound ("not_found") when there is no such plan. Retired plans are found.
Status GetPlan(const StateReader& state, std::string_view plan_id, Plan* out);
// The plan that named Stripe price `price_id` last, whether or not it still names it (a price
// change replaced it: the plan's subscribers still renew on it); nullopt when none ever did.
Status PlanForStripePrice(const StateReader& state, std::string_view price_id,
                          std::optional<std::string>* plan_id);

// ---------------------------------------------------------------------------------------------
// Stripe prices an admin names

// A Stripe price as Stripe describes it (GET /v1/prices/{id}), read by the admin plan routes
// before the command (a decider does no I/O) and compared with the plan by it.
struct StripePriceAtStripe {
  std::string id;
  bool exists = true;  // false: Stripe has no such price
  bool active = false;
  std::string currency;
  std::optional<int64_t> unit_amount;  // nullopt: none (tiered, customer-chosen)
  std::string interval;                // "month", "year", ...; "" = one-time
  int64_t interval_count = 0;
};
// What Stripe said of each price a CreatePlan / UpdatePlan names; nullopt when Stripe is not
// configured (dev: nothing to ask, the ids are taken as given).
using StripePricesAtStripe = std::optional<std::vector<StripePriceAtStripe>>;

// The Stripe price ids `plan` names that `before` (null for a new plan) did not name in the same
// field, as {field, id}: the ones to check at Stripe.
std::vector<std::pair<std::string_view, std::string>> NewlyNamedStripePrices(const Plan& plan,
                                                                            const Plan* before);

// Why `seen` cannot be `plan`'s price in `field` ("stripe_price_monthly" | "stripe_price_yearly"),
// e.g. "is archived (inactive) at Stripe"; "" when it bills what the plan sells there: it exists,
// is active, in the plan's currency, of its unit_amount, recurring every month / year (interval
// count 1) as the field says -- or, for a trial plan's stripe_price_monthly (its fee), one-time.
// The rule of 409 stripe_price_mismatch, and of the named prices stripe-setup keeps.
std::string StripePriceMismatch(const Plan& plan, std::string_view field,
                                const StripePriceAtStripe& seen);

// ---------------------------------------------------------------------------------------------
// Commands. Each answers Decision.body = the plan's JSON (SeedCatalog: a summary).

// 201 + plan.created.v1. 409 "plan_exists" when the id exists (retired plans included);
// 409 "conversion_plan_not_on_sale" for a trial plan (trial_days > 0) on sale while the plan it
// converts to (kTrialConversionPlanId) is retired, free (price_monthly_cents 0) or missing;
// 422 "plan_catalog_full" beyond limits::kPlansMax.
// With `at_stripe` (Stripe configured), 409 "stripe_price_mismatch" (also UpdatePlan) when a
// price the plan newly names does not bill what the plan sells in its field: missing at Stripe,
// inactive, another currency, another unit_amount, not recurring every month
// (stripe_price_monthly) or every year (stripe_price_yearly) -- or, for a trial plan's
// stripe_price_monthly (its fee), not a one-time price of price_monthly_cents -- or named for a
// cycle the plan does not sell; 409 "stripe_price_unchecked" when it names a price `at_stripe`
// does not describe (the plan changed between the route's read and the writer: retry).
class CreatePlan final : public Command {
 public:
  CreatePlan(Plan plan, Actor actor, StripePricesAtStripe at_stripe = std::nullopt)
      : plan_(std::move(plan)), actor_(std::move(actor)), at_stripe_(std::move(at_stripe)) {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  Plan plan_;
  Actor actor_;
  StripePricesAtStripe at_stripe_;
};

// A PUT's plan: `input` (ParsePlanInput with the path's id) merged over the stored `current`,
// refused as UpdatePlan refuses it before it reads the rest of the catalog: 409
// "plan_kind_change" (trial_days turning a paid plan into a trial, or back), 422 as
// ParsePlanInput for the merged plan. No I/O: the admin route runs it before asking Stripe about
// the prices the plan names, the command again on the writer's state.
Status MergePlanUpdate(const PlanInput& input, const Plan& current, Plan* next);

// 200 + plan.updated.v1 (the stored plan with the given fields replaced, see PlanInput). 404 when
// missing. A change that leaves the plan as stored appends nothing. 409 "conversion_plan_in_use"
// for "active":false or "price_monthly_cents":0 of kTrialConversionPlanId while a trial plan is on
// sale (also RetirePlan), "conversion_plan_not_on_sale" for "active":true of a retired trial plan
// while it is not.
// 409 "stripe_price_in_use" (also CreatePlan, SetPlanStripePrices) for a Stripe price another
// plan names, or named before a price change replaced it (PlanForStripePrice). With `at_stripe`,
// 409 "stripe_price_mismatch" / "stripe_price_unchecked" as CreatePlan, for the prices the
// change names anew (a price the plan already names in that field is not asked about again).
class UpdatePlan final : public Command {
 public:
  UpdatePlan(PlanInput input, Actor actor, StripePricesAtStripe at_stripe = std::nullopt)
      : input_(std::move(input)), actor_(std::move(actor)), at_stripe_(std::move(at_stripe)) {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  PlanInput input_;
  Actor actor_;
  StripePricesAtStripe at_stripe_;
};

// 200 + plan.retired.v1 (the plan stays, "active": false). 404 when missing. Retiring a retired
// plan appends nothing.
class RetirePlan final : public Command {
 public:
  RetirePlan(std::string plan_id, Actor actor)
      : plan_id_(std::move(plan_id)), actor_(std::move(actor)) {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string plan_id_;
  Actor actor_;
};

// Sets the Stripe price ids of one plan (for `ledgerctl stripe-setup`): a read-modify-write done
// on the writer thread, so it cannot lose a concurrent admin edit. nullopt leaves a price id as it
// is; an empty string clears it. 200 + plan.updated.v1, or nothing when unchanged. 404 when missing.
class SetPlanStripePrices final : public Command {
 public:
  SetPlanStripePrices(std::string plan_id, std::optional<std::string> monthly,
                      std::optional<std::string> yearly, Actor actor)
      : plan_id_(std::move(plan_id)),
        monthly_(std::move(monthly)),
        yearly_(std::move(yearly)),
        actor_(std::move(actor)) {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string plan_id_;
  std::optional<std::string> monthly_;
  std::optional<std::string> yearly_;
  Actor actor_;
};

// Creates InitialPlans() (actor system "seed") when the catalog has no plan at all; otherwise
// appends nothing. Body: {"seeded": true|false, "plans": <count after>}.
class SeedCatalog final : public Command {
 public:
  Status Decide(const DecideContext& context, Decision* decision) override;
};

// Submits SeedCatalog. The daemon calls it once at startup, after Ledger::Open and before it
// serves HTTP. `*seeded` (optional) tells whether plans were created.
Status SeedPlanCatalog(Ledger* ledger, bool* seeded);

}  // namespace ledger::projections
