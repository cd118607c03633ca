// The plan catalog on a real Ledger: seeding at startup, reopen, commands through the writer,
// snapshots, idempotency and replay.
#include <gtest/gtest.h>

#include "events/ledger.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"

namespace ledger::projections {
namespace {

using ledger::testing::EnvelopeMatchesSchema;
using ledger::testing::TempDir;

std::unique_ptr<Ledger> OpenLedger(const std::string& path, const Clock* clock = nullptr) {
  LedgerOptions options;
  options.path = path;
  options.folds = AllFolds();
  options.clock = clock;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ledger;
}

Plan TeamPlan() {
  PlanInput input;
  EXPECT_TRUE(ParsePlanInput(R"({"id":"team","display_name":"Team","price_monthly_cents":2900,)"
                             R"("api_calls_limit":5000,"services":["chat"]})",
                             "", &input)
                  .ok());
  return input.plan;
}

std::vector<Event> AllEvents(const Ledger& ledger) {
  std::vector<Event> events;
  EXPECT_TRUE(ledger.ReadEvents(Position(0), 10000, EventFilter{}, &events).ok());
  return events;
}

TEST(PlanCatalogLedgerTest, RegisteredInAllFolds) {
  bool found = false;
  for (const Fold* fold : AllFolds()) found |= fold->Name() == kPlansFamily;
  EXPECT_TRUE(found);
}

TEST(PlanCatalogLedgerTest, SeedsOnFirstStartOnly) {
  TempDir dir;
  {
    auto ledger = OpenLedger(dir.path());
    ASSERT_TRUE(ledger);
    bool seeded = false;
    ASSERT_TRUE(SeedPlanCatalog(ledger.get(), &seeded).ok());
    EXPECT_TRUE(seeded);
    EXPECT_EQ(ledger->Head(), Position(4));
    // A second call in the same process appends nothing either.
    ASSERT_TRUE(SeedPlanCatalog(ledger.get(), &seeded).ok());
    EXPECT_FALSE(seeded);
    EXPECT_EQ(ledger->Head(), Position(4));
  }
  auto ledger = OpenLedger(dir.path());
  ASSERT_TRUE(ledger);
  bool seeded = true;
  ASSERT_TRUE(SeedPlanCatalog(ledger.get(), &seeded).ok());
  EXPECT_FALSE(seeded);
  EXPECT_EQ(ledger->Head(), Position(4));

  std::unique_ptr<ReadView> view = ledger->Snapshot();
  EXPECT_EQ(view->position(), Position(4));
  std::vector<Plan> plans;
  ASSERT_TRUE(ListPlans(*view, false, &plans).ok());
  EXPECT_EQ(plans, InitialPlans());

  std::vector<Event> events = AllEvents(*ledger);
  ASSERT_EQ(events.size(), 4u);
  for (const Event& e : events) {
    EXPECT_EQ(e.type, kPlanCreatedV1);
    EXPECT_TRUE(EnvelopeMatchesSchema(e));
  }
  EXPECT_EQ(events[0].subject, "plan:trial");
  EXPECT_EQ(events[3].subject, "plan:enterprise");
}

TEST(PlanCatalogLedgerTest, CommandsThroughTheWriter) {
  TempDir dir;
  ManualClock clock(1'790'000'000'000'000);
  auto ledger = OpenLedger(dir.path(), &clock);
  ASSERT_TRUE(ledger);
  ASSERT_TRUE(SeedPlanCatalog(ledger.get(), nullptr).ok());

  CreatePlan create(TeamPlan(), Actor::Admin("admin-1", "admin@example.com"));
  CommandResult created = ledger->Submit(&create);
  ASSERT_TRUE(created.status.ok()) << created.status.ToString();
  EXPECT_EQ(created.http_status, 201);
  EXPECT_EQ(created.position, Position(5));
  EXPECT_EQ(created.body, PlanToJson(TeamPlan()));

  CreatePlan duplicate(TeamPlan(), Actor::Admin("admin-1", ""));
  CommandResult conflict = ledger->Submit(&duplicate);
  EXPECT_EQ(conflict.status.problem(), "plan_exists");
  EXPECT_EQ(ledger->Head(), Position(5));

  RetirePlan retire("trial", Actor::Admin("admin-2", ""));
  CommandResult retired = ledger->Submit(&retire);
  ASSERT_TRUE(retired.status.ok());
  EXPECT_EQ(retired.position, Position(6));

  RetirePlan missing("nope", Actor::Admin("admin-2", ""));
  EXPECT_TRUE(ledger->Submit(&missing).status.IsNotFound());

  std::unique_ptr<ReadView> view = ledger->Snapshot();
  EXPECT_EQ(view->position(), Position(6));
  std::vector<Plan> active, all;
  ASSERT_TRUE(ListPlans(*view, false, &active).ok());
  ASSERT_TRUE(ListPlans(*view, true, &all).ok());
  EXPECT_EQ(active.size(), 4u);  // starter, team, professional, enterprise
  EXPECT_EQ(all.size(), 5u);
  Plan trial;
  ASSERT_TRUE(GetPlan(*view, "trial", &trial).ok());
  EXPECT_FALSE(trial.active);

  for (const Event& e : AllEvents(*ledger)) EXPECT_TRUE(EnvelopeMatchesSchema(e)) << e.type;
}

TEST(PlanCatalogLedgerTest, IdempotentRetryReturnsTheStoredAnswer) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  ASSERT_TRUE(ledger);
  Hash request = Sha256("POST /api/v1/subscriptions/plans\nbody");

  CreatePlan first(TeamPlan(), Actor::Admin("admin-1", ""));
  first.idempotency_scope = "admin-1|POST /api/v1/subscriptions/plans";
  first.idempotency_key = "k1";
  first.request_hash = request;
  CommandResult a = ledger->Submit(&first);
  ASSERT_TRUE(a.status.ok());

  CreatePlan retry(TeamPlan(), Actor::Admin("admin-1", ""));
  retry.idempotency_scope = first.idempotency_scope;
  retry.idempotency_key = "k1";
  retry.request_hash = request;
  CommandResult b = ledger->Submit(&retry);
  ASSERT_TRUE(b.status.ok()) << b.status.ToString();  // not 409 plan_exists
  EXPECT_TRUE(b.replayed);
  EXPECT_EQ(b.http_status, 201);
  EXPECT_EQ(b.body, a.body);
  EXPECT_EQ(ledger->Head(), Position(1));
}

TEST(PlanCatalogLedgerTest, ReplayIntoAFreshLedgerGivesTheSameRows) {
  TempDir dir;
  auto live = OpenLedger(dir.Sub("live"));
  ASSERT_TRUE(live);
  ASSERT_TRUE(SeedPlanCatalog(live.get(), nullptr).ok());
  CreatePlan create(TeamPlan(), Actor::Admin("admin-1", ""));
  ASSERT_TRUE(live->Submit(&create).status.ok());
  SetPlanStripePrices prices("starter", "price_s", "price_sy", Actor::System("ledgerctl"));
  ASSERT_TRUE(live->Submit(&prices).status.ok());
  RetirePlan retire("team", Actor::Admin("admin-1", ""));
  ASSERT_TRUE(live->Submit(&retire).status.ok());

  auto replica = OpenLedger(dir.Sub("replica"));
  ASSERT_TRUE(replica);
  std::vector<Event> events = AllEvents(*live);
  ASSERT_EQ(events.size(), 7u);
  ASSERT_TRUE(replica->ImportEvents(events).ok());
  Hash live_digest{}, replica_digest{};
  ASSERT_TRUE(live->ProjectionDigest(&live_digest).ok());
  ASSERT_TRUE(replica->ProjectionDigest(&replica_digest).ok());
  EXPECT_EQ(live_digest, replica_digest);
  // Seeding the replica afterwards does nothing: its catalog came from the log.
  bool seeded = true;
  ASSERT_TRUE(SeedPlanCatalog(replica.get(), &seeded).ok());
  EXPECT_FALSE(seeded);
}

}  // namespace
}  // namespace ledger::projections
