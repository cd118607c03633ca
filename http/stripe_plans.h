// How catalog plans map to Stripe products and prices: shared by the billing routes (which price a
// checkout or a plan change uses) and `ledgerctl stripe-setup` (which products and prices exist).
//
//   paid plan P          product "ledgerd_<P>" (with '-' written as '_'),
//                        recurring monthly price, lookup key "ledgerd_<P>_monthly" (price_monthly_cents)
//                        recurring yearly price,  lookup key "ledgerd_<P>_yearly"  (price_yearly_cents)
//   trial plan T         (trial_days > 0) price_monthly_cents is a ONE-TIME fee: one-time price,
//                        lookup key "ledgerd_<T>_fee", recorded as T's stripe_price_monthly.
//                        Checkout for T = Starter's monthly price (line_items[0]) + the fee
//                        (line_items[1]) + subscription_data[trial_period_days] = T.trial_days:
//                        Stripe trials are free, so the $1 is a one-time price on the first
//                        invoice, and the subscription converts to Starter unless canceled.
//                        metadata[plan_id] = T tags it, so the subscription projection reports
//                        the trial plan while the subscription is trialing.
//   free plan            (price 0) nothing at Stripe; not purchasable.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "events/fold.h"
#include "events/status.h"
#include "http/stripe_client.h"
#include "projections/plan_catalog.h"

namespace ledger::http {

using projections::kTrialConversionPlanId;

enum class BillingCycle { kMonthly, kYearly };
// "monthly" | "yearly".
bool ParseBillingCycle(std::string_view text, BillingCycle* out);
std::string_view BillingCycleName(BillingCycle cycle);

// A plan whose price is a one-time trial fee (trial_days > 0).
bool IsTrialFeePlan(const projections::Plan& plan);

// Stripe ids and lookup keys we own.
std::string StripeProductIdForPlan(std::string_view plan_id);
// kind: "monthly", "yearly" or "fee".
std::string StripeLookupKeyForPlan(std::string_view plan_id, std::string_view kind);

// What a Checkout Session for `plan` and `cycle` contains.
struct CheckoutPrices {
  std::string recurring_price_id;  // line_items[0][price]
  std::string one_time_price_id;   // line_items[1][price] (trial fee), or ""
  int64_t trial_period_days = 0;   // 0 = no trial
};

// Errors (problem "plan_not_purchasable"):
//   kUnprocessable  the plan is retired, free, or a trial asked for yearly billing
//   kConflict       the plan (or, for a trial, the plan it converts to) has no Stripe price for
//                   the cycle yet: an operator must run `ledgerctl stripe-setup` (or set it)
Status ResolveCheckoutPrices(const StateReader& state, const projections::Plan& plan,
                             BillingCycle cycle, CheckoutPrices* out);

// The recurring price a subscription moves to on a plan change. Same errors; a trial plan is
// kUnprocessable (a trial is started through checkout, not by changing a subscription).
Status ResolveChangePrice(const projections::Plan& plan, BillingCycle cycle,
                          std::string* price_id);

// What Stripe says of the price `price_id` (GET /v1/prices/{id}), for
// projections::StripePriceMismatch: the admin plan routes before recording a price an admin
// names, stripe-setup before keeping one the catalog names. A price Stripe does not have is
// `exists` false and OK; other failures are the client's (kBadGateway, kUnavailable, ...).
Status ReadStripePrice(StripeApi* stripe, std::string_view price_id,
                       projections::StripePriceAtStripe* out);

}  // namespace ledger::http
