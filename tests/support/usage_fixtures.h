// Putting users on plans for the usage-metering tests: Stripe subscription deliveries (as the
// webhook route would ingest them) naming a plan, a status and a billing period, and a custom
// plan with a small quota.
//
//   UsageWorld world;                                   // MemoryState + seeded catalog
//   ASSERT_TRUE(world.Subscribe(OnPlan("u1", "starter")).ok());
//   world.Run(&command, now_us, &decision);
//
//   SubscribeOnLedger(ledger, OnPlan("u1", "tiny"));     // through a Ledger
#pragma once

#include <atomic>
#include <optional>
#include <string>

#include "events/ledger.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/memory_state.h"
#include "tests/support/stripe_events.h"

namespace ledger::testing {

struct TestSubscription {
  std::string user_id = "user-1";
  std::string plan_id = "starter";  // a catalog plan, "trial", or a custom plan (by metadata)
  std::string status = "active";
  int64_t period_start = kStripeT0;
  int64_t period_end = kStripeT0 + 30 * 86400;
  std::optional<int64_t> trial_start;  // trial: defaults to period_start
  std::optional<int64_t> trial_end;
  std::optional<int64_t> canceled_at;
  std::optional<int64_t> ended_at;
  bool cancel_at_period_end = false;
  std::optional<int64_t> cancel_at;
  std::string interval = "month";
  bool interval_in_event = true;  // false: the price's `recurring` is null in the delivery
  // The price's unit_amount: by default the catalog plan's price for the interval (null for a
  // plan without test prices).
  std::optional<int64_t> unit_amount;
  int64_t quantity = 1;
  // Defaults derived from user_id: "sub_<user>", "cus_<user>".
  std::string subscription_id;
  std::string customer_id;
};

inline TestSubscription OnPlan(std::string user_id, std::string plan_id,
                               std::string status = "active") {
  TestSubscription t;
  t.user_id = std::move(user_id);
  t.plan_id = std::move(plan_id);
  t.status = std::move(status);
  return t;
}

inline TestSubscription OnPlan(std::string user_id, std::string plan_id, int64_t period_start,
                               int64_t period_end) {
  TestSubscription t = OnPlan(std::move(user_id), std::move(plan_id));
  t.period_start = period_start;
  t.period_end = period_end;
  return t;
}

// A unique Stripe event id and a strictly increasing `created`, so each delivery supersedes the
// previous state of its subscription.
inline int64_t NextStripeSequence() {
  static std::atomic<int64_t> sequence{0};
  return ++sequence;
}

inline std::string SubscriptionDelivery(const TestSubscription& t) {
  const int64_t n = NextStripeSequence();
  StripeSubscriptionSpec spec;
  spec.event_id = "evt_usage_" + std::to_string(n);
  spec.event_type = "customer.subscription.updated";
  spec.event_created = kStripeT0 + n;
  spec.subscription_id = t.subscription_id.empty() ? "sub_" + t.user_id : t.subscription_id;
  spec.customer_id = t.customer_id.empty() ? "cus_" + t.user_id : t.customer_id;
  spec.item_id = "si_" + t.user_id;
  spec.status = t.status;
  spec.metadata_user_id = t.user_id;
  spec.created = t.period_start;
  spec.period_start = t.period_start;
  spec.period_end = t.period_end;
  spec.interval = t.interval;
  spec.price_id = "price_unknown";
  spec.unit_amount = std::nullopt;
  for (const TestPlanPrices& p : TestStripePrices()) {
    if (t.plan_id == p.plan_id && t.plan_id != "trial") {
      const bool yearly = t.interval == "year" && p.yearly != nullptr;
      spec.price_id = yearly ? p.yearly : p.monthly;
      spec.unit_amount = yearly ? p.yearly_cents : p.monthly_cents;
    }
  }
  if (t.unit_amount) spec.unit_amount = t.unit_amount;
  spec.quantity = t.quantity;
  spec.metadata_plan_id = t.plan_id;
  spec.canceled_at = t.canceled_at;
  spec.ended_at = t.ended_at;
  spec.cancel_at_period_end = t.cancel_at_period_end;
  spec.cancel_at = t.cancel_at;
  if (!t.interval_in_event) spec.interval.clear();
  if (t.plan_id == "trial") {
    spec.price_id = "price_starter_monthly";
    spec.unit_amount = t.unit_amount.value_or(1900);
    spec.trial_start = t.trial_start.value_or(t.period_start);
    spec.trial_end = t.trial_end;
  } else {
    spec.trial_start = t.trial_start;
    spec.trial_end = t.trial_end;
  }
  return StripeSubscriptionEventJson(spec);
}

// A plan "<id>" with `limit` calls per billing month (nullopt: unlimited) and the given services.
inline projections::Plan SmallPlan(std::string id, std::optional<int64_t> limit,
                                   std::vector<std::string> services = {"chat", "search"}) {
  projections::Plan plan;
  plan.id = std::move(id);
  plan.display_name = "Test " + plan.id;
  plan.price_monthly_cents = 500;
  plan.api_calls_limit = limit;
  plan.limit_window = limit ? projections::LimitWindow::kMonth : projections::LimitWindow::kNone;
  plan.services = std::move(services);
  return plan;
}

// Rows + head for running commands without a Ledger.
struct UsageWorld {
  MemoryState state;
  Position head;
  int64_t setup_us = kStripeT0 * 1'000'000;

  UsageWorld() { SeedCatalogWithPrices(&state, &head, setup_us).IgnoreError(); }

  Status Run(Command* command, int64_t now_us, Decision* decision,
             std::vector<Event>* applied = nullptr) {
    return RunCommand(command, projections::AllFolds(), &state, &head, now_us, decision, applied);
  }
  Status Subscribe(const TestSubscription& t) {
    Decision decision;
    return DeliverWebhook(&state, &head, SubscriptionDelivery(t), setup_us, &decision);
  }
  Status AddPlan(const projections::Plan& plan) {
    projections::CreatePlan command(plan, projections::Actor::System("test"));
    Decision decision;
    return Run(&command, setup_us, &decision);
  }
};

inline Status SubscribeOnLedger(Ledger* ledger, const TestSubscription& t) {
  return SubmitWebhook(ledger, SubscriptionDelivery(t)).status;
}

inline Status AddPlanOnLedger(Ledger* ledger, const projections::Plan& plan) {
  projections::CreatePlan command(plan, projections::Actor::System("test"));
  return ledger->Submit(&command).status;
}

}  // namespace ledger::testing
