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

// What POST /api/v1/billing/checkout/create appends once Stripe made a Checkout Session
// (stripe.checkout_session_created.v1): ledgerd's record that `user_id` opened `session_id`. Only
// such a session names its user when its checkout.session.completed arrives; one opened
// elsewhere (a Payment Link) links nothing.
class RecordCheckoutSessionOpened final : public Command {
 public:
  RecordCheckoutSessionOpened(std::string session_id, std::string user_id)
      : session_id_(std::move(session_id)), user_id_(std::move(user_id)) {}

  Status Decide(const DecideContext&, Decision* decision) override {
    decision->events.push_back(NewEvent{
        "stripe.checkout_session_created.v1", user_id_,
        R"({"user_id":")" + user_id_ +
            R"(","plan_id":"starter","billing_cycle":"monthly","session_id":")" + session_id_ +
            R"(","customer":null,"price_id":"price_starter_monthly","one_time_price_id":null,)"
            R"("trial_period_days":null,"stripe_idempotency_key":"ledgerd-checkout-)" +
            std::string(64, '0') + R"("})"});
    return Status::OK();
  }

 private:
  const std::string session_id_;
  const std::string user_id_;
};

inline Status OpenCheckoutSession(MemoryState* state, Position* head, const std::string& session_id,
                                  const std::string& user_id, int64_t now_us,
                                  std::vector<Event>* applied = nullptr) {
  RecordCheckoutSessionOpened command(session_id, user_id);
  Decision decision;
  return RunCommand(&command, projections::AllFolds(), state, head, now_us, &decision, applied);
}

inline Status OpenCheckoutSession(Ledger* ledger, const std::string& session_id,
                                  const std::string& user_id) {
  RecordCheckoutSessionOpened command(session_id, user_id);
  return ledger->Submit(&command).status;
}

}  // namespace ledger::testing
