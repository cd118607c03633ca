// The plan catalog of CONTRACT.md §4 with Stripe price ids set, as `ledgerctl stripe-setup` would
// leave it, on a real Ledger or on in-memory rows; and delivering Stripe webhooks straight to the
// projections (no HTTP, no signature: the command the webhook route submits).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/ledger.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "projections/stripe_webhook.h"
#include "tests/support/memory_state.h"

namespace ledger::testing {

struct TestPlanPrices {
  const char* plan_id;
  const char* monthly;
  const char* yearly;  // nullptr: not sold yearly
  int64_t monthly_cents;  // the prices' unit_amount: the seeded catalog's prices
  int64_t yearly_cents;
};

// trial's "monthly" price is the one-time $1 fee: it never appears on a subscription item.
inline const std::vector<TestPlanPrices>& TestStripePrices() {
  static const std::vector<TestPlanPrices> prices = {
      {"trial", "price_trial_fee", nullptr, 100, 0},
      {"starter", "price_starter_monthly", "price_starter_yearly", 1900, 19000},
      {"professional", "price_professional_monthly", "price_professional_yearly", 4900, 49000},
      {"enterprise", "price_enterprise_monthly", "price_enterprise_yearly", 9900, 99000},
  };
  return prices;
}

inline std::vector<std::unique_ptr<Command>> CatalogCommands() {
  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(std::make_unique<projections::SeedCatalog>());
  for (const TestPlanPrices& p : TestStripePrices()) {
    commands.push_back(std::make_unique<projections::SetPlanStripePrices>(
        p.plan_id, std::string(p.monthly),
        p.yearly ? std::optional<std::string>(p.yearly) : std::nullopt,
        projections::Actor::System("test")));
  }
  return commands;
}

inline Status SeedCatalogWithPrices(Ledger* ledger) {
  for (auto& command : CatalogCommands()) {
    CommandResult r = ledger->Submit(command.get());
    LEDGER_RETURN_IF_ERROR(r.status);
  }
  return Status::OK();
}

inline Status SeedCatalogWithPrices(MemoryState* state, Position* head, int64_t now_us) {
  for (auto& command : CatalogCommands()) {
    Decision decision;
    LEDGER_RETURN_IF_ERROR(
        RunCommand(command.get(), projections::AllFolds(), state, head, now_us, &decision));
  }
  return Status::OK();
}

// Parses `raw` as a verified delivery and runs the webhook command against `state` (no
// idempotency: MemoryState has no idempotency records; use a Ledger for duplicates).
inline Status DeliverWebhook(MemoryState* state, Position* head, std::string_view raw,
                             int64_t now_us, Decision* decision,
                             std::vector<Event>* applied = nullptr) {
  projections::StripeWebhook webhook;
  LEDGER_RETURN_IF_ERROR(projections::ParseStripeWebhook(raw, &webhook));
  projections::IngestStripeWebhook command(std::move(webhook));
  return RunCommand(&command, projections::AllFolds(), state, head, now_us, decision, applied);
}

// The same through a Ledger (idempotency included).
inline CommandResult SubmitWebhook(Ledger* ledger, std::string_view raw) {
  projections::StripeWebhook webhook;
  CommandResult result;
  result.status = projections::ParseStripeWebhook(raw, &webhook);
  if (!result.status.ok()) return result;
  projections::IngestStripeWebhook command(std::move(webhook));
  return ledger->Submit(&command);
}

}  // namespace ledger::testing
