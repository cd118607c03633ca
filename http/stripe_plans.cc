#include "http/stripe_plans.h"

#include <algorithm>

namespace ledger::http {

namespace {

Status NotPurchasable(Code code, std::string message) {
  return Status::Make(code, "plan_not_purchasable", std::move(message));
}

// The plan's recurring price for `cycle`, or a plan_not_purchasable error.
Status RecurringPrice(const projections::Plan& plan, BillingCycle cycle, std::string* price_id) {
  if (!plan.active) {
    return NotPurchasable(Code::kUnprocessable, "plan '" + plan.id + "' is retired");
  }
  if (plan.price_monthly_cents == 0 && plan.price_yearly_cents.value_or(0) == 0) {
    return NotPurchasable(Code::kUnprocessable, "plan '" + plan.id + "' is free");
  }
  if (cycle == BillingCycle::kYearly && !plan.price_yearly_cents.has_value()) {
    return NotPurchasable(Code::kUnprocessable, "plan '" + plan.id + "' is not sold yearly");
  }
  const std::optional<std::string>& price =
      cycle == BillingCycle::kMonthly ? plan.stripe_price_monthly : plan.stripe_price_yearly;
  if (!price.has_value() || price->empty()) {
    return NotPurchasable(Code::kConflict, "plan '" + plan.id + "' has no Stripe " +
                                               std::string(BillingCycleName(cycle)) +
                                               " price yet (run ledgerctl stripe-setup)");
  }
  *price_id = *price;
  return Status::OK();
}

}  // namespace

bool ParseBillingCycle(std::string_view text, BillingCycle* out) {
  if (text == "monthly") {
    *out = BillingCycle::kMonthly;
    return true;
  }
  if (text == "yearly") {
    *out = BillingCycle::kYearly;
    return true;
  }
  return false;
}

std::string_view BillingCycleName(BillingCycle cycle) {
  return cycle == BillingCycle::kMonthly ? "monthly" : "yearly";
}

bool IsTrialFeePlan(const projections::Plan& plan) { return plan.trial_days > 0; }

std::string StripeProductIdForPlan(std::string_view plan_id) {
  std::string id = "ledgerd_" + std::string(plan_id);
  std::replace(id.begin(), id.end(), '-', '_');
  return id;
}

std::string StripeLookupKeyForPlan(std::string_view plan_id, std::string_view kind) {
  return StripeProductIdForPlan(plan_id) + "_" + std::string(kind);
}

Status ResolveCheckoutPrices(const StateReader& state, const projections::Plan& plan,
                             BillingCycle cycle, CheckoutPrices* out) {
  *out = CheckoutPrices{};
  if (!IsTrialFeePlan(plan)) return RecurringPrice(plan, cycle, &out->recurring_price_id);

  if (!plan.active) {
    return NotPurchasable(Code::kUnprocessable, "plan '" + plan.id + "' is retired");
  }
  if (cycle != BillingCycle::kMonthly) {
    return NotPurchasable(Code::kUnprocessable,
                          "the trial is a one-time fee: billing_cycle must be monthly");
  }
  projections::Plan target;
  Status s = projections::GetPlan(state, kTrialConversionPlanId, &target);
  if (s.IsNotFound()) {
    return NotPurchasable(Code::kConflict, "the plan the trial converts to ('" +
                                               std::string(kTrialConversionPlanId) +
                                               "') is not in the catalog");
  }
  LEDGER_RETURN_IF_ERROR(s);
  LEDGER_RETURN_IF_ERROR(RecurringPrice(target, BillingCycle::kMonthly, &out->recurring_price_id));
  if (plan.price_monthly_cents > 0) {
    if (!plan.stripe_price_monthly.has_value() || plan.stripe_price_monthly->empty()) {
      return NotPurchasable(Code::kConflict, "plan '" + plan.id +
                                                 "' has no Stripe price for its trial fee yet "
                                                 "(run ledgerctl stripe-setup)");
    }
    out->one_time_price_id = *plan.stripe_price_monthly;
  }
  out->trial_period_days = plan.trial_days;
  return Status::OK();
}

Status ResolveChangePrice(const projections::Plan& plan, BillingCycle cycle,
                          std::string* price_id) {
  if (IsTrialFeePlan(plan)) {
    return NotPurchasable(Code::kUnprocessable,
                          "a trial is started through checkout, not by changing a subscription");
  }
  return RecurringPrice(plan, cycle, price_id);
}

Status ReadStripePrice(StripeApi* stripe, std::string_view price_id,
                       projections::StripePriceAtStripe* out) {
  StripePrice price;
  Status s = stripe->GetPrice(price_id, &price);
  if (!s.ok() && !s.IsNotFound()) return s;
  *out = projections::StripePriceAtStripe{};
  out->id = std::string(price_id);
  out->exists = s.ok();
  out->active = price.active;
  out->currency = price.currency;
  out->unit_amount = price.unit_amount_or_none;
  out->interval = price.interval;
  out->interval_count = price.interval_count;
  return Status::OK();
}

}  // namespace ledger::http
