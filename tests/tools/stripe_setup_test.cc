// ledgerctl stripe-setup against the fake Stripe: what it creates, that a second run creates and
// appends nothing, price changes, retries, dry runs, the lock of a running daemon, and the binary.
#include "tools/stripe_setup.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <tuple>

#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::tools {
namespace {

using ledger::testing::FakeStripe;
using ledger::testing::kFakeStripeSecretKey;
namespace pc = ledger::projections;

class StripeSetupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fake_.Start().ok());
    http::StripeClientOptions options;
    options.api_base = fake_.base_url();
    options.secret_key = kFakeStripeSecretKey;
    options.read_timeout_ms = 1000;
    options.backoff_initial_ms = 1;
    options.backoff_max_ms = 2;
    options.sleep = [](int64_t) {};
    ASSERT_TRUE(http::HttpStripeClient::Create(options, &client_).ok());
    OpenLedger();
  }

  void OpenLedger() {
    LedgerOptions options;
    options.path = dir_.Sub("data");
    options.folds = pc::AllFolds();
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
  }

  void TearDown() override {
    if (!ledger_) return;
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000, EventFilter{}, &events).ok());
    for (const Event& e : events) {
      EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type << " " << e.data;
      EXPECT_EQ(e.data.find(kFakeStripeSecretKey), std::string::npos) << e.data;
      EXPECT_EQ(e.data.find("sk_test_"), std::string::npos) << e.data;
    }
  }

  Status Run(StripeSetupReport* report, bool dry_run = false) {
    StripeSetupOptions options;
    options.dry_run = dry_run;
    return SetUpStripeCatalog(ledger_.get(), client_.get(), options, report);
  }

  pc::Plan Plan(const std::string& id) {
    pc::Plan plan;
    auto view = ledger_->Snapshot();
    EXPECT_TRUE(pc::GetPlan(*view, id, &plan).ok()) << id;
    return plan;
  }

  // An admin's monthly price for `plan_id`, made in the Dashboard and named in the catalog.
  void NameAnAdminsMonthlyPrice(const std::string& plan_id, const std::string& title,
                                const std::string& price_id, int64_t cents) {
    fake_.AddProduct("prod_admin", title + " (made in the Dashboard)");
    fake_.AddPrice(price_id, "prod_admin", cents, "month");
    pc::PlanInput input;
    input.plan = Plan(plan_id);
    input.given.set();
    input.plan.stripe_price_monthly = price_id;
    pc::UpdatePlan update(input, pc::Actor::Admin("root", ""));
    ASSERT_TRUE(ledger_->Submit(&update).status.ok());
  }

  std::map<std::string, FakeStripe::Price> PricesById() {
    std::map<std::string, FakeStripe::Price> out;
    for (const auto& p : fake_.prices()) out[p.id] = p;
    return out;
  }

  ledger::testing::TempDir dir_;
  FakeStripe fake_;
  std::unique_ptr<http::HttpStripeClient> client_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(StripeSetupTest, CreatesProductsAndPricesAndRecordsThem) {
  StripeSetupReport report;
  Status s = Run(&report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.products_created, 4u);
  EXPECT_EQ(report.prices_created, 7u);  // trial fee + 3 × (monthly, yearly)
  EXPECT_EQ(report.plans_updated, 4u);
  EXPECT_EQ(fake_.product_ids(), (std::vector<std::string>{"ledgerd_enterprise",
                                                           "ledgerd_professional",
                                                           "ledgerd_starter", "ledgerd_trial"}));
  auto prices = PricesById();
  ASSERT_EQ(prices.size(), 7u);

  pc::Plan trial = Plan("trial");
  ASSERT_TRUE(trial.stripe_price_monthly.has_value());
  EXPECT_FALSE(trial.stripe_price_yearly.has_value());
  const FakeStripe::Price& fee = prices.at(*trial.stripe_price_monthly);
  EXPECT_EQ(fee.unit_amount, 100);
  EXPECT_EQ(fee.interval, "");  // one-time
  EXPECT_EQ(fee.lookup_key, "ledgerd_trial_fee");
  EXPECT_EQ(fee.product, "ledgerd_trial");

  for (const auto& [id, monthly_cents, yearly_cents] :
       std::vector<std::tuple<std::string, int64_t, int64_t>>{
           {"starter", 1900, 19000}, {"professional", 4900, 49000}, {"enterprise", 9900, 99000}}) {
    pc::Plan plan = Plan(id);
    ASSERT_TRUE(plan.stripe_price_monthly && plan.stripe_price_yearly) << id;
    const FakeStripe::Price& m = prices.at(*plan.stripe_price_monthly);
    const FakeStripe::Price& y = prices.at(*plan.stripe_price_yearly);
    EXPECT_EQ(m.unit_amount, monthly_cents);
    EXPECT_EQ(m.interval, "month");
    EXPECT_EQ(m.currency, "usd");
    EXPECT_EQ(m.lookup_key, "ledgerd_" + id + "_monthly");
    EXPECT_EQ(m.product, "ledgerd_" + id);
    EXPECT_EQ(m.metadata.at("ledgerd_plan_id"), id);
    EXPECT_EQ(y.unit_amount, yearly_cents);
    EXPECT_EQ(y.interval, "year");
    EXPECT_EQ(y.lookup_key, "ledgerd_" + id + "_yearly");
  }

  // Every POST carried an Idempotency-Key; the catalog changes are plan.updated.v1 by ledgerctl.
  for (const auto& r : fake_.requests()) {
    if (r.method == "POST") {
      EXPECT_FALSE(r.idempotency_key.empty()) << r.path;
    }
  }
  std::vector<Event> updates;
  EventFilter filter;
  filter.type = "plan.updated.v1";
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 100, filter, &updates).ok());
  ASSERT_EQ(updates.size(), 4u);
  for (const Event& e : updates) {
    EXPECT_NE(e.data.find(R"("actor":{"kind":"system","sub":"ledgerctl")"), std::string::npos)
        << e.data;
  }
}

TEST_F(StripeSetupTest, ASecondRunCreatesAndAppendsNothing) {
  StripeSetupReport first;
  ASSERT_TRUE(Run(&first).ok());
  const uint64_t head = ledger_->Head().value();
  fake_.ClearRequests();
  StripeSetupReport second;
  ASSERT_TRUE(Run(&second).ok());
  EXPECT_EQ(second.products_created, 0u);
  EXPECT_EQ(second.prices_created, 0u);
  EXPECT_EQ(second.plans_updated, 0u);
  EXPECT_EQ(ledger_->Head().value(), head);
  EXPECT_EQ(fake_.RequestsTo("POST", "/").size(), 0u);
  EXPECT_EQ(fake_.product_count(), 4u);
  EXPECT_EQ(fake_.prices().size(), 7u);
  for (size_t i = 0; i < first.plans.size(); ++i) {
    EXPECT_EQ(second.plans[i].monthly_price, first.plans[i].monthly_price);
    EXPECT_EQ(second.plans[i].yearly_price, first.plans[i].yearly_price);
  }
  std::string text = FormatStripeSetupReport(second, false);
  EXPECT_NE(text.find("OK created 0 product(s), 0 price(s); 0 plan(s) updated"), std::string::npos)
      << text;
}

TEST_F(StripeSetupTest, AChangedPriceGetsANewStripePriceAndTheLookupKey) {
  StripeSetupReport first;
  ASSERT_TRUE(Run(&first).ok());
  const std::string old_monthly = *Plan("starter").stripe_price_monthly;
  const std::string old_yearly = *Plan("starter").stripe_price_yearly;

  pc::PlanInput input;
  input.plan = Plan("starter");
  input.given.set();
  input.plan.price_monthly_cents = 2900;
  // The old Stripe price bills 1900: the change cannot keep it (409 stripe_price_stale) and
  // nulls it for stripe-setup to replace.
  pc::UpdatePlan stale(input, pc::Actor::Admin("root", ""));
  EXPECT_EQ(ledger_->Submit(&stale).status.problem(), "stripe_price_stale");
  input.plan.stripe_price_monthly.reset();
  pc::UpdatePlan update(input, pc::Actor::Admin("root", ""));
  ASSERT_TRUE(ledger_->Submit(&update).status.ok());

  fake_.ClearRequests();
  StripeSetupReport second;
  ASSERT_TRUE(Run(&second).ok());
  EXPECT_EQ(second.prices_created, 1u);
  EXPECT_EQ(second.plans_updated, 1u);
  pc::Plan starter = Plan("starter");
  EXPECT_NE(*starter.stripe_price_monthly, old_monthly);
  EXPECT_EQ(*starter.stripe_price_yearly, old_yearly);
  auto prices = PricesById();
  EXPECT_EQ(prices.at(*starter.stripe_price_monthly).unit_amount, 2900);
  EXPECT_EQ(prices.at(*starter.stripe_price_monthly).lookup_key, "ledgerd_starter_monthly");
  EXPECT_EQ(prices.at(old_monthly).lookup_key, "");  // moved
  auto posts = fake_.RequestsTo("POST", "/v1/prices");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(posts[0].Param("transfer_lookup_key"), "true");
}

// Price changes back and forth within Stripe's 24 h idempotency window, each nulling the stale
// price for stripe-setup to replace: every run creates the price it reports (the fake replays a
// key it has seen, as Stripe does), and the one recorded holds the lookup key.
TEST_F(StripeSetupTest, APriceChangedBackAndForthGetsANewPriceEachTime) {
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report).ok());
  for (int64_t cents : {2900, 1900, 2900}) {
    SCOPED_TRACE(cents);
    pc::PlanInput input;
    input.plan = Plan("starter");
    input.given.set();
    input.plan.price_monthly_cents = cents;
    input.plan.stripe_price_monthly.reset();
    pc::UpdatePlan update(input, pc::Actor::Admin("root", ""));
    ASSERT_TRUE(ledger_->Submit(&update).status.ok());
    const size_t prices_before = fake_.prices().size();
    Status s = Run(&report);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(report.prices_created, 1u);
    EXPECT_EQ(fake_.prices().size() - prices_before, report.prices_created);
    pc::Plan starter = Plan("starter");
    ASSERT_TRUE(starter.stripe_price_monthly.has_value());
    const FakeStripe::Price recorded = PricesById().at(*starter.stripe_price_monthly);
    EXPECT_EQ(recorded.unit_amount, cents);
    EXPECT_EQ(recorded.lookup_key, "ledgerd_starter_monthly");
  }

  // A rerun of a failed run, the catalog unchanged, sends the same key (Stripe may have made the
  // price before the answer was lost).
  pc::PlanInput input;
  input.plan = Plan("starter");
  input.given.set();
  input.plan.price_monthly_cents = 1900;
  input.plan.stripe_price_monthly.reset();
  pc::UpdatePlan update(input, pc::Actor::Admin("root", ""));
  ASSERT_TRUE(ledger_->Submit(&update).status.ok());
  fake_.ClearRequests();
  fake_.InjectFault(FakeStripe::Fault::kServerError, 3, "POST", "/v1/prices");  // every attempt
  EXPECT_EQ(Run(&report).problem(), "stripe_error");
  ASSERT_TRUE(Run(&report).ok());
  auto posts = fake_.RequestsTo("POST", "/v1/prices");
  ASSERT_EQ(posts.size(), 4u);
  EXPECT_TRUE(posts[0].faulted);
  EXPECT_FALSE(posts[3].faulted);
  EXPECT_EQ(posts[3].idempotency_key, posts[0].idempotency_key);
}

// CONTRACT §4: price ids are set by admins or by stripe-setup. An id the catalog names that
// bills what the plan sells at Stripe is the admin's choice and is kept; stripe-setup fills the
// null ones.
TEST_F(StripeSetupTest, APriceTheCatalogNamesIsKept) {
  ASSERT_TRUE(pc::SeedPlanCatalog(ledger_.get(), nullptr).ok());
  NameAnAdminsMonthlyPrice("starter", "Starter", "price_admin", 1900);
  if (HasFatalFailure()) return;

  StripeSetupReport report;
  Status s = Run(&report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  pc::Plan starter = Plan("starter");
  EXPECT_EQ(starter.stripe_price_monthly, "price_admin");
  ASSERT_TRUE(starter.stripe_price_yearly.has_value());  // the null one is filled
  for (const auto& post : fake_.RequestsTo("POST", "/v1/prices")) {
    EXPECT_NE(post.Param("lookup_key"), "ledgerd_starter_monthly");
  }
  EXPECT_EQ(report.prices_created, 6u);
  const StripeSetupPlanResult* result = nullptr;
  for (const auto& plan : report.plans) {
    if (plan.plan_id == "starter") result = &plan;
  }
  ASSERT_NE(result, nullptr);
  EXPECT_EQ(result->monthly_price, "price_admin");
  EXPECT_EQ(result->prices_kept, (std::vector<std::string>{"price_admin"}));
  EXPECT_EQ(result->prices_created, (std::vector<std::string>{*starter.stripe_price_yearly}));
  std::string text = FormatStripeSetupReport(report, false);
  EXPECT_NE(text.find("monthly/fee price price_admin, yearly price " +
                      *starter.stripe_price_yearly + ", 1 named in the catalog (kept)"),
            std::string::npos)
      << text;

  // A plan that names both prices asks Stripe for each by id, and for nothing by lookup key.
  fake_.ClearRequests();
  ASSERT_TRUE(Run(&report).ok());
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/prices/price_admin").size(), 1u);
  for (const auto& get : fake_.RequestsTo("GET", "/v1/prices")) {
    EXPECT_FALSE(get.HasParam("lookup_keys[]")) << get.path;
  }
  EXPECT_EQ(report.prices_created, 0u);
  EXPECT_EQ(report.plans_updated, 0u);
  EXPECT_EQ(Plan("starter").stripe_price_monthly, "price_admin");
}

// A recorded price archived in the Dashboard is not kept: checkout cannot sell it. The run
// replaces it with an active price (the lookup key moves to it) and says so.
TEST_F(StripeSetupTest, AnArchivedNamedPriceIsReplaced) {
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report).ok());
  const std::string archived = *Plan("starter").stripe_price_monthly;
  const std::string yearly = *Plan("starter").stripe_price_yearly;
  FakeStripe::Price price = PricesById().at(archived);
  price.active = false;
  fake_.AddPrice(price);

  Status s = Run(&report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.prices_created, 1u);
  EXPECT_EQ(report.plans_updated, 1u);
  pc::Plan starter = Plan("starter");
  ASSERT_TRUE(starter.stripe_price_monthly.has_value());
  EXPECT_NE(*starter.stripe_price_monthly, archived);
  EXPECT_EQ(starter.stripe_price_yearly, yearly);  // active and right: kept
  const FakeStripe::Price recorded = PricesById().at(*starter.stripe_price_monthly);
  EXPECT_TRUE(recorded.active);
  EXPECT_EQ(recorded.unit_amount, 1900);
  EXPECT_EQ(recorded.interval, "month");
  EXPECT_EQ(recorded.lookup_key, "ledgerd_starter_monthly");
  const StripeSetupPlanResult* result = nullptr;
  for (const auto& plan : report.plans) {
    if (plan.plan_id == "starter") result = &plan;
  }
  ASSERT_NE(result, nullptr);
  EXPECT_EQ(result->prices_replaced,
            (std::vector<std::string>{archived + " (is archived (inactive) at Stripe)"}));
  EXPECT_EQ(result->prices_kept, (std::vector<std::string>{yearly}));
  std::string text = FormatStripeSetupReport(report, false);
  EXPECT_NE(text.find("replaced: " + archived + " (is archived (inactive) at Stripe)"),
            std::string::npos)
      << text;

  // Replaced once: the next run keeps the new price.
  ASSERT_TRUE(Run(&report).ok());
  EXPECT_EQ(report.prices_created, 0u);
  EXPECT_EQ(report.plans_updated, 0u);
}

// Set up with sk_test_, then STRIPE_SECRET_KEY switched to sk_live_: live mode has none of the
// test-mode ids the catalog names (every checkout would be 502), so each is replaced by a price
// of the live account, created there with its product.
TEST_F(StripeSetupTest, PricesUnknownToTheKeysModeAreReplaced) {
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report).ok());
  std::map<std::string, pc::Plan> test_mode;
  for (const char* id : {"trial", "starter", "professional", "enterprise"}) {
    test_mode[id] = Plan(id);
  }

  FakeStripe live;  // another Stripe: knows none of the first one's ids
  ASSERT_TRUE(live.Start().ok());
  http::StripeClientOptions options;
  options.api_base = live.base_url();
  options.secret_key = kFakeStripeSecretKey;
  options.sleep = [](int64_t) {};
  std::unique_ptr<http::HttpStripeClient> live_client;
  ASSERT_TRUE(http::HttpStripeClient::Create(options, &live_client).ok());
  Status s = SetUpStripeCatalog(ledger_.get(), live_client.get(), StripeSetupOptions{}, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.products_created, 4u);
  EXPECT_EQ(report.prices_created, 7u);
  EXPECT_EQ(report.plans_updated, 4u);
  std::map<std::string, FakeStripe::Price> live_prices;
  for (const auto& p : live.prices()) live_prices[p.id] = p;
  for (const auto& [id, before] : test_mode) {
    SCOPED_TRACE(id);
    pc::Plan plan = Plan(id);
    ASSERT_TRUE(plan.stripe_price_monthly.has_value());
    EXPECT_NE(plan.stripe_price_monthly, before.stripe_price_monthly);
    EXPECT_EQ(live_prices.count(*plan.stripe_price_monthly), 1u);
    EXPECT_EQ(plan.stripe_price_yearly.has_value(), before.stripe_price_yearly.has_value());
    if (plan.stripe_price_yearly) {
      EXPECT_EQ(live_prices.count(*plan.stripe_price_yearly), 1u);
    }
  }
  const StripeSetupPlanResult* result = nullptr;
  for (const auto& plan : report.plans) {
    if (plan.plan_id == "starter") result = &plan;
  }
  ASSERT_NE(result, nullptr);
  EXPECT_TRUE(result->prices_kept.empty());
  const std::string why = " (does not exist at Stripe (in the configured key's mode))";
  EXPECT_EQ(result->prices_replaced,
            (std::vector<std::string>{*test_mode["starter"].stripe_price_monthly + why,
                                      *test_mode["starter"].stripe_price_yearly + why}));
}

// A named price Stripe cannot be asked about fails the run before anything is created at Stripe
// or recorded (ledgerctl: exit 69); a rerun finishes.
TEST_F(StripeSetupTest, AFailedReadOfANamedPriceFailsTheRunWithNothingDone) {
  ASSERT_TRUE(pc::SeedPlanCatalog(ledger_.get(), nullptr).ok());
  NameAnAdminsMonthlyPrice("professional", "Professional", "price_admin_pro", 4900);
  if (HasFatalFailure()) return;
  const uint64_t head = ledger_->Head().value();

  fake_.ClearRequests();
  fake_.InjectFault(FakeStripe::Fault::kServerError, 3, "GET", "/v1/prices/");  // every attempt
  StripeSetupReport report;
  Status s = Run(&report);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.problem(), "stripe_error") << s.ToString();
  EXPECT_EQ(ledger_->Head().value(), head);
  EXPECT_EQ(fake_.RequestsTo("POST", "/").size(), 0u);
  EXPECT_EQ(fake_.product_count(), 1u);

  ASSERT_TRUE(Run(&report).ok());
  EXPECT_EQ(Plan("professional").stripe_price_monthly, "price_admin_pro");
}

TEST_F(StripeSetupTest, StripeFailuresAreRetriedWithTheSameKeyAndARerunFinishes) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 1, "POST", "/v1/prices");
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report).ok());
  auto posts = fake_.RequestsTo("POST", "/v1/prices");
  ASSERT_GE(posts.size(), 2u);
  EXPECT_TRUE(posts[0].faulted);
  EXPECT_EQ(posts[0].idempotency_key, posts[1].idempotency_key);
  EXPECT_EQ(fake_.prices().size(), 7u);

  // A run that fails half-way leaves a state a rerun completes without duplicates.
  testing::TempDir other;
  LedgerOptions options;
  options.path = other.Sub("data");
  options.folds = pc::AllFolds();
  std::unique_ptr<Ledger> second;
  ASSERT_TRUE(Ledger::Open(options, &second).ok());
  FakeStripe fresh;
  ASSERT_TRUE(fresh.Start().ok());
  http::StripeClientOptions client_options;
  client_options.api_base = fresh.base_url();
  client_options.secret_key = kFakeStripeSecretKey;
  client_options.backoff_initial_ms = 1;
  client_options.backoff_max_ms = 2;
  client_options.sleep = [](int64_t) {};
  std::unique_ptr<http::HttpStripeClient> client;
  ASSERT_TRUE(http::HttpStripeClient::Create(client_options, &client).ok());
  // One call's attempts.
  fresh.InjectFault(FakeStripe::Fault::kServerError, 3, "POST", "/v1/prices");
  StripeSetupReport failed;
  Status s = SetUpStripeCatalog(second.get(), client.get(), {}, &failed);
  EXPECT_EQ(s.problem(), "stripe_error");
  StripeSetupReport finished;
  ASSERT_TRUE(SetUpStripeCatalog(second.get(), client.get(), {}, &finished).ok());
  EXPECT_EQ(fresh.product_count(), 4u);
  EXPECT_EQ(fresh.prices().size(), 7u);
}

TEST_F(StripeSetupTest, ADryRunCreatesAndRecordsNothing) {
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report, /*dry_run=*/true).ok());
  EXPECT_EQ(report.products_created, 4u);
  EXPECT_EQ(report.prices_created, 7u);
  EXPECT_EQ(fake_.RequestsTo("POST", "/").size(), 0u);
  EXPECT_EQ(ledger_->Head().value(), 0u);
  EXPECT_NE(FormatStripeSetupReport(report, true).find("dry run: would create 4 product(s)"),
            std::string::npos);
}

TEST_F(StripeSetupTest, ADryRunOnlyReadsTheStore) {
  ASSERT_TRUE(pc::SeedPlanCatalog(ledger_.get(), nullptr).ok());
  const uint64_t head = ledger_->Head().value();
  StripeSetupRunOptions options;
  options.data_dir = dir_.Sub("data");  // ledger_ holds its lock, as a running ledgerd would
  options.stripe.api_base = fake_.base_url();
  options.stripe.secret_key = kFakeStripeSecretKey;
  options.setup.dry_run = true;
  StripeSetupReport report;
  Status s = RunStripeSetup(options, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.products_created, 4u);
  EXPECT_EQ(ledger_->Head().value(), head);
  // A directory without a store stays without one.
  options.data_dir = dir_.Sub("typo");
  s = RunStripeSetup(options, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.products_created, 4u);
  EXPECT_FALSE(std::filesystem::exists(dir_.Sub("typo")));
  EXPECT_EQ(fake_.RequestsTo("POST", "/").size(), 0u);
}

TEST_F(StripeSetupTest, RetiredAndFreePlansAreSkipped) {
  ASSERT_TRUE(pc::SeedPlanCatalog(ledger_.get(), nullptr).ok());
  pc::RetirePlan retire("enterprise", pc::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&retire).status.ok());
  pc::Plan free = pc::InitialPlans()[1];
  free.id = "free";
  free.price_monthly_cents = 0;
  free.price_yearly_cents.reset();
  pc::CreatePlan create(free, pc::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&create).status.ok());
  StripeSetupReport report;
  ASSERT_TRUE(Run(&report).ok());
  EXPECT_EQ(report.products_created, 3u);
  EXPECT_EQ(report.skipped, (std::vector<std::string>{"free: free", "enterprise: retired"}));
}

TEST_F(StripeSetupTest, RefusesADataDirectoryARunningDaemonHolds) {
  StripeSetupRunOptions options;
  options.data_dir = dir_.Sub("data");  // ledger_ holds its lock, as ledgerd would
  options.stripe.api_base = fake_.base_url();
  options.stripe.secret_key = kFakeStripeSecretKey;
  StripeSetupReport report;
  Status s = RunStripeSetup(options, &report);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("ledgerd must be stopped"), std::string::npos) << s.ToString();
  EXPECT_TRUE(fake_.requests().empty());  // nothing was created at Stripe

  options.stripe.secret_key.clear();
  EXPECT_EQ(RunStripeSetup(options, &report).code(), Code::kInvalidArgument);
}

TEST_F(StripeSetupTest, TheLedgerctlSubcommand) {
  ledger_.reset();  // "stop the daemon"
  const std::string args = "stripe-setup --data-dir " + dir_.Sub("data") + " --api-base " +
                           fake_.base_url();
  ::unsetenv("STRIPE_SECRET_KEY");
  EXPECT_EQ(ledger::testing::RunLedgerctl(args).exit_code, 78);
  ::setenv("STRIPE_SECRET_KEY", kFakeStripeSecretKey, 1);
  auto first = ledger::testing::RunLedgerctl(args + " -q");
  EXPECT_EQ(first.exit_code, 0) << first.out;
  EXPECT_NE(first.out.find("OK created 4 product(s), 7 price(s); 4 plan(s) updated"),
            std::string::npos)
      << first.out;
  for (const auto& request : fake_.requests()) {
    EXPECT_EQ(request.stripe_version, http::kStripeApiVersion) << request.path;
  }
  fake_.ClearRequests();
  // STRIPE_API_VERSION as ledgerd reads it: another version; --api-version "" for the account's
  // default (as ledgerd's --stripe-api-version "").
  ::setenv("STRIPE_API_VERSION", "2024-06-20", 1);
  auto second = ledger::testing::RunLedgerctl(args + " -q");
  EXPECT_EQ(second.exit_code, 0) << second.out;
  EXPECT_NE(second.out.find("OK created 0 product(s), 0 price(s); 0 plan(s) updated"),
            std::string::npos)
      << second.out;
  ASSERT_FALSE(fake_.requests().empty());
  for (const auto& request : fake_.requests()) EXPECT_EQ(request.stripe_version, "2024-06-20");
  fake_.ClearRequests();
  EXPECT_EQ(ledger::testing::RunLedgerctl(args + " -q --dry-run --api-version ''").exit_code, 0);
  ASSERT_FALSE(fake_.requests().empty());
  for (const auto& request : fake_.requests()) EXPECT_EQ(request.stripe_version, "");
  // The variable set but empty means the same (it was taken for unset: the pinned version).
  fake_.ClearRequests();
  ::setenv("STRIPE_API_VERSION", "", 1);
  EXPECT_EQ(ledger::testing::RunLedgerctl(args + " -q --dry-run").exit_code, 0);
  ASSERT_FALSE(fake_.requests().empty());
  for (const auto& request : fake_.requests()) EXPECT_EQ(request.stripe_version, "");
  // A malformed version, or a key with a newline left in from a file: configuration (78), as
  // ledgerd says; nothing is sent.
  fake_.ClearRequests();
  ::setenv("STRIPE_API_VERSION", "latest", 1);
  EXPECT_EQ(ledger::testing::RunLedgerctl(args).exit_code, 78);
  ::unsetenv("STRIPE_API_VERSION");
  ::setenv("STRIPE_SECRET_KEY", (std::string(kFakeStripeSecretKey) + "\n").c_str(), 1);
  EXPECT_EQ(ledger::testing::RunLedgerctl(args).exit_code, 78);
  EXPECT_TRUE(fake_.requests().empty());
  // A refused key: 69 (EX_UNAVAILABLE), and the key is not printed.
  ::setenv("STRIPE_SECRET_KEY", "sk_test_51WrongWrongWrong", 1);
  auto refused = ledger::testing::RunLedgerctl(args, /*keep_stderr=*/true);
  EXPECT_EQ(refused.exit_code, 69) << refused.out;
  EXPECT_EQ(refused.out.find("sk_test"), std::string::npos) << refused.out;
  EXPECT_EQ(refused.out.find("Wrong"), std::string::npos) << refused.out;
  ::unsetenv("STRIPE_SECRET_KEY");
  OpenLedger();  // for TearDown's schema and secret checks
}

// A new ledgerctl's dry run beside an older ledgerd: the store has no column family for a fold
// of this build (byok), which the read-only open cannot create. The dry run reads only the
// catalog, and exited 74 all the same.
TEST(StripeSetupCliTest, ADryRunReadsAStoreWithoutAFoldItDoesNotNeed) {
  FakeStripe fake;
  ASSERT_TRUE(fake.Start().ok());
  ledger::testing::TempDir dir;
  std::vector<const Fold*> folds;
  for (const Fold* fold : pc::AllFolds()) {
    if (fold->Name() != "byok") folds.push_back(fold);
  }
  ASSERT_EQ(folds.size() + 1, pc::AllFolds().size());
  {
    LedgerOptions options;
    options.path = dir.Sub("data");
    options.folds = folds;
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    ASSERT_TRUE(pc::SeedPlanCatalog(ledger.get(), nullptr).ok());
    pc::RetirePlan retire("enterprise", pc::Actor::System("test"));
    ASSERT_TRUE(ledger->Submit(&retire).status.ok());  // the store's catalog is read
  }
  ::setenv("STRIPE_SECRET_KEY", kFakeStripeSecretKey, 1);
  const auto r = ledger::testing::RunLedgerctl("stripe-setup --dry-run -q --data-dir " +
                                               dir.Sub("data") + " --api-base " + fake.base_url(),
                                               /*keep_stderr=*/true);
  ::unsetenv("STRIPE_SECRET_KEY");
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("dry run: would create 3 product(s)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("skipped enterprise: retired"), std::string::npos) << r.out;
  EXPECT_EQ(fake.RequestsTo("POST", "/").size(), 0u);
}

// CLI11 takes an empty variable for an unset one: `LEDGER_DATA_DIR=$DATA ledgerctl stripe-setup`
// with DATA unset created ./data, seeded the catalog in it and called Stripe. ledgerd refuses
// an empty LEDGER_DATA_DIR (78); so does ledgerctl now, touching nothing, and an empty
// --data-dir too.
TEST(StripeSetupCliTest, AnEmptyDataDirVariableIsAConfigurationError) {
  FakeStripe fake;
  ASSERT_TRUE(fake.Start().ok());
  ledger::testing::TempDir cwd;
  ::setenv("STRIPE_SECRET_KEY", kFakeStripeSecretKey, 1);
  const std::string setup = "stripe-setup --api-base " + fake.base_url();
  for (const auto& [env, args] : std::vector<std::pair<std::string, std::string>>{
           {"LEDGER_DATA_DIR=", setup},
           {"LEDGER_DATA_DIR=", setup + " --dry-run"},
           {"", setup + " --data-dir ''"},
           {"LEDGER_DATA_DIR=elsewhere", setup + " --data-dir ''"},
           // Written with '=': CLI11 failed "1 required TEXT missing" (64).
           {"", setup + " --data-dir="},
           {"", "verify --data-dir="},
           {"", "--data-dir= verify"}}) {
    SCOPED_TRACE(env + " " + args);
    const auto r = ledger::testing::RunLedgerctlIn(cwd.path(), env, args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 78) << r.out;
    const char* why = env == "LEDGER_DATA_DIR=" ? "LEDGER_DATA_DIR is set but empty"
                                                : "--data-dir is given empty";
    EXPECT_NE(r.out.find(why), std::string::npos) << r.out;
  }
  EXPECT_TRUE(std::filesystem::is_empty(cwd.path()));  // no ./data, nor any other store
  EXPECT_TRUE(fake.requests().empty());
  // A variable that is set is taken (a dry run creates no store).
  const auto dry = ledger::testing::RunLedgerctlIn(cwd.path(), "LEDGER_DATA_DIR=elsewhere",
                                                   setup + " --dry-run -q");
  EXPECT_EQ(dry.exit_code, 0) << dry.out;
  ::unsetenv("STRIPE_SECRET_KEY");
}

}  // namespace
}  // namespace ledger::tools
