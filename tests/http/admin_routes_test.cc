// The admin subscription routes over real HTTP on loopback against a real Ledger
// (http/admin_routes.cc, projections/admin.h): the subscriber list with filters and cursor
// pages, one subscriber by email, overrides (and what they do to access and metering), and the
// three analytics views, with figures worked out by hand from Stripe deliveries. Bad input is a
// problem that appends nothing. Every event appended is checked against its schema.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "events/ledger.h"
#include "http/app_context.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/registry.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/usage_fixtures.h"

namespace ledger::http {
namespace {

using ledger::testing::HttpReply;
using ledger::testing::kStripeT0;
using ledger::testing::OnPlan;
using ledger::testing::TestHttpClient;
using ledger::testing::TestSubscription;
using ledger::testing::TokenClaims;
namespace pj = ledger::projections;

constexpr char kAdminBase[] = "/api/v1/admin/subscriptions/";
constexpr char kServiceToken[] = "svc-admin-test-token-0123456789";
constexpr int64_t kUs = 1'000'000;
constexpr int64_t kDay = 86400;
constexpr int64_t kNow = kStripeT0 + 40 * kDay;

// A subscription on `plan_id` for the period [start, end), canceled at its end and ended there.
TestSubscription CanceledAtItsEnd(std::string user_id, std::string plan_id, int64_t start,
                                  int64_t end) {
  TestSubscription t = OnPlan(std::move(user_id), std::move(plan_id), "canceled");
  t.period_start = start;
  t.period_end = end;
  t.canceled_at = t.ended_at = end;
  return t;
}

// A trial of [trial_start, trial_end) on the trial plan whose first charge failed at its end: past
// due in the period from its end to `period_end`.
TestSubscription TrialPastDue(std::string user_id, int64_t trial_start, int64_t trial_end,
                              int64_t period_end) {
  TestSubscription t = OnPlan(std::move(user_id), "trial", "past_due");
  t.trial_start = trial_start;
  t.trial_end = t.period_start = trial_end;
  t.period_end = period_end;
  return t;
}

class AdminRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = pj::AllFolds();
    options.clock = &clock_;
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());

    AppContext context;
    context.ledger = ledger_.get();
    context.clock = &clock_;
    context.usage_meter = &meter_;
    RouteTable routes;
    AddSubscriptionAccessRoutes(context, &routes);
    AddUsageRoutes(context, &routes);
    AddAdminRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    auth.service_tokens = {ServiceToken{"gateway", kServiceToken}};
    stack_ = std::make_unique<ledger::testing::TestHttpStack>();
    s = stack_->Start(std::move(routes), auth, &clock_,
                      ledger::testing::TestHttpStack::DefaultOptions());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    if (stack_) stack_->Stop();
    std::vector<Event> events;
    Position after(0);
    for (;;) {
      ASSERT_TRUE(ledger_->ReadEvents(after, 1000, EventFilter{}, &events).ok());
      if (events.empty()) break;
      for (const Event& e : events) {
        EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type << " " << e.data;
      }
      after = events.back().position;
    }
  }

  // A subscriber: a completed checkout (links the user, the customer and the email), then the
  // subscription's state. `email_prefilled` false: the user's token had no email, so the email was
  // typed at Checkout (Stripe reports it with no customer_email).
  // u-x's only subscription: a Dashboard add-on (a price on no catalog plan), active.
  static ledger::testing::StripeSubscriptionSpec DashboardAddOn() {
    ledger::testing::StripeSubscriptionSpec addon;
    addon.event_id = "evt_addon_active";
    addon.subscription_id = "sub_addon";
    addon.customer_id = "cus_u-x";
    addon.item_id = "si_addon";
    addon.status = "active";
    addon.price_id = "price_addon_monthly";
    addon.unit_amount = 500;
    addon.metadata_user_id = "u-x";
    addon.metadata_plan_id = std::nullopt;
    addon.created = addon.period_start = kNow - 10 * kDay;
    addon.period_end = kNow + 20 * kDay;
    return addon;
  }
  void SubscribeUxToADashboardAddOn(
      const ledger::testing::StripeSubscriptionSpec& addon = DashboardAddOn()) {
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeSubscriptionEventJson(addon))
                    .status.ok());
  }

  void AddSubscriber(TestSubscription t, const std::string& email, bool email_prefilled = true) {
    ledger::testing::StripeCheckoutSpec checkout;
    checkout.event_id = "evt_checkout_" + t.user_id;
    checkout.session_id = "cs_" + t.user_id;
    checkout.client_reference_id = t.user_id;
    checkout.metadata_user_id = t.user_id;
    checkout.customer_id = "cus_" + t.user_id;
    checkout.subscription_id = "sub_" + t.user_id;
    checkout.email = email;
    checkout.email_prefilled = email_prefilled;
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(ledger_.get(), checkout.session_id,
                                                     t.user_id)
                    .ok());
    ASSERT_TRUE(ledger::testing::SubmitWebhook(
                    ledger_.get(), ledger::testing::StripeCheckoutCompletedJson(checkout))
                    .status.ok());
    if (t.plan_id.empty()) return;  // linked, never subscribed
    ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), t).ok());
  }

  // Seven users with every kind of figure the views compute (see each test for the arithmetic).
  void AddCustomerBase() {
    const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
    AddSubscriber(OnPlan("u-a", "starter", start, end), "a@x.com");
    TestSubscription b = OnPlan("u-b", "professional", start, end);
    b.interval = "year";
    AddSubscriber(b, "b@x.com");
    AddSubscriber(OnPlan("u-c", "enterprise", "past_due"), "c@x.com");
    TestSubscription d = OnPlan("u-d", "trial", "trialing");
    d.period_start = kNow - 2 * kDay;
    d.period_end = kNow + 5 * kDay;
    d.trial_end = kNow + 5 * kDay;
    AddSubscriber(d, "d@x.com");
    TestSubscription e = OnPlan("u-e", "starter", "canceled");
    e.trial_start = kNow - 20 * kDay;
    e.canceled_at = kNow - 5 * kDay;
    AddSubscriber(e, "e@x.com");
    TestSubscription f = OnPlan("u-f", "professional", start, end);
    f.trial_start = kNow - 17 * kDay;
    AddSubscriber(f, "f@x.com");
    AddSubscriber(OnPlan("u-g", ""), "g@x.com");
  }

  int64_t NowSeconds() const { return clock_.NowMicros() / kUs; }
  TestHttpClient Admin() {
    TestHttpClient client("127.0.0.1", stack_->port());
    // Minted at the test clock's now: tests move it forward by days.
    client.set_bearer(ledger::testing::MintHs256(TokenClaims::Admin("root", NowSeconds()),
                                                 ledger::testing::kTestHs256Secret));
    return client;
  }
  TestHttpClient User(const std::string& user) {
    TestHttpClient client("127.0.0.1", stack_->port());
    client.set_bearer(ledger::testing::MintHs256(TokenClaims::User(user, NowSeconds()),
                                                 ledger::testing::kTestHs256Secret));
    return client;
  }
  HttpReply Consume(const std::string& user, const std::string& service, const std::string& key,
                    int64_t quantity = 1) {
    TestHttpClient client("127.0.0.1", stack_->port());
    client.set_bearer(kServiceToken);
    return client.Post("/api/v1/usage/consume",
                       "{\"user_id\":" + JsonQuote(user) + ",\"service\":" + JsonQuote(service) +
                           ",\"idempotency_key\":" + JsonQuote(key) +
                           ",\"quantity\":" + std::to_string(quantity) + "}");
  }
  HttpReply Patch(const std::string& email, const std::string& body) {
    return Admin().Patch(std::string(kAdminBase) + email, body);
  }

  uint64_t Head() const { return ledger_->Head().value(); }

  // An invoice.paid of `amount` cents for one of `user`'s subscriptions, at `at`.
  // u-due's invoice failed its last retry (Stripe gives up: payment_abandoned); consume then
  // answers 402 payment_failed.
  void AbandonDuePayment(const std::string& invoice_id, const std::string& event_id) {
    ledger::testing::StripeInvoiceSpec failed =
        ledger::testing::InvoiceOf("u-due", "cus_u-due", "sub_u-due", invoice_id,
                                   "invoice.payment_failed", event_id, kNow - kDay);
    failed.attempt_count = 4;
    failed.retries_left = false;
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeInvoiceEventJson(failed))
                    .status.ok());
    ExpectProblem(Consume("u-due", "chat", "abandoned"), 402, "payment_failed");
  }

  void PayInvoice(const std::string& user, const std::string& subscription_id,
                  const std::string& invoice_id, int64_t amount, int64_t at) {
    ledger::testing::StripeInvoiceSpec invoice;
    invoice.event_id = "evt_" + invoice_id;
    invoice.event_created = at;
    invoice.invoice_id = invoice_id;
    invoice.customer_id = "cus_" + user;
    invoice.subscription_id = subscription_id;
    invoice.metadata_user_id = user;
    invoice.amount_due = amount;
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeInvoiceEventJson(invoice))
                    .status.ok());
  }

  // The log replayed into a fresh directory folds into the same projection rows (`ledgerctl
  // replay`'s check): the views read the folds' rows, and the folds stay replay-equal.
  void ExpectReplayEqual() {
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 100000, EventFilter{}, &events).ok());
    ledger::testing::TempDir replica_dir;
    LedgerOptions options;
    options.path = replica_dir.path();
    options.folds = pj::AllFolds();
    options.clock = &clock_;
    std::unique_ptr<Ledger> replica;
    ASSERT_TRUE(Ledger::Open(options, &replica).ok());
    ASSERT_TRUE(replica->ImportEvents(events).ok());
    Hash live, replayed;
    ASSERT_TRUE(ledger_->ProjectionDigest(&live).ok());
    ASSERT_TRUE(replica->ProjectionDigest(&replayed).ok());
    EXPECT_EQ(replayed, live);
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.Header("Content-Type"), "application/problem+json") << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject() && doc.HasMember("code")) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  // The user ids of every page of /list with `query` ("" or "&status=..."), following the cursor.
  std::vector<std::string> ListAll(const std::string& query, int limit, int* pages) {
    std::vector<std::string> users;
    std::string cursor;
    *pages = 0;
    for (;;) {
      std::string path = std::string(kAdminBase) + "list?limit=" + std::to_string(limit) + query;
      if (!cursor.empty()) path += "&cursor=" + cursor;
      HttpReply r = Admin().Get(path);
      EXPECT_EQ(r.status, 200) << r.body;
      if (r.status != 200) break;
      ++*pages;
      rapidjson::Document doc = r.Json();
      for (const auto& s : doc["subscribers"].GetArray()) users.emplace_back(s["user_id"].GetString());
      if (doc["next_cursor"].IsNull()) break;
      cursor = doc["next_cursor"].GetString();
      if (*pages > 20) {
        ADD_FAILURE() << "the cursor does not end";
        break;
      }
    }
    return users;
  }

  ledger::testing::TempDir dir_;
  ManualClock clock_{kNow * kUs};
  std::unique_ptr<Ledger> ledger_;
  pj::UsageMeter meter_;
  std::unique_ptr<ledger::testing::TestHttpStack> stack_;
};

TEST_F(AdminRoutesTest, ListPagesThroughEveryUserAndFilters) {
  AddCustomerBase();
  int pages = 0;
  EXPECT_EQ(ListAll("", 2, &pages),
            (std::vector<std::string>{"u-a", "u-b", "u-c", "u-d", "u-e", "u-f", "u-g"}));
  EXPECT_EQ(pages, 4);
  EXPECT_EQ(ListAll("&status=active", 50, &pages), (std::vector<std::string>{"u-a", "u-b", "u-f"}));
  EXPECT_EQ(ListAll("&status=none", 50, &pages), (std::vector<std::string>{"u-g"}));
  EXPECT_EQ(ListAll("&tier=professional", 50, &pages), (std::vector<std::string>{"u-b", "u-f"}));
  EXPECT_EQ(ListAll("&q=B%40X.C", 50, &pages), (std::vector<std::string>{"u-b"}));
  EXPECT_EQ(ListAll("&status=active&tier=starter", 1, &pages), (std::vector<std::string>{"u-a"}));

  HttpReply r = Admin().Get(std::string(kAdminBase) + "list?limit=1");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& a = doc["subscribers"][0];
  EXPECT_STREQ(a["email"].GetString(), "a@x.com");
  EXPECT_STREQ(a["status"].GetString(), "active");
  EXPECT_STREQ(a["plan_id"].GetString(), "starter");
  EXPECT_STREQ(a["stripe"]["subscription_id"].GetString(), "sub_u-a");
  // Stripe's times read alike wherever a subscription is shown: Unix seconds.
  HttpReply access = Admin().Get("/api/v1/subscriptions/admin/user-access/u-a");
  ASSERT_EQ(access.status, 200) << access.body;
  for (const char* field : {"current_period_start", "current_period_end"}) {
    ASSERT_TRUE(a["stripe"][field].IsInt64()) << field << " in " << r.body;
    EXPECT_EQ(a["stripe"][field].GetInt64(),
              access.Json()["subscription"][field].GetInt64()) << field;
  }
  EXPECT_TRUE(a["override"].IsNull());
  EXPECT_FALSE(r.Header("X-Ledger-Position").empty());

  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?status=bogus"), 400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?limit=0"), 400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?limit=201"), 400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?cursor=%21%21"), 400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?q=" + std::string(400, 'q')), 400,
                "invalid_parameter");
  EXPECT_EQ(Admin().Get(std::string(kAdminBase) + "list").status, 200);
  EXPECT_EQ(User("u-a").Get(std::string(kAdminBase) + "list").status, 403);
}

// A tier is a catalog plan, retired ones too (an unknown or empty one answered empty pages until
// the cursor had walked every user); the status filter takes the names PATCH takes, mapped alike.
TEST_F(AdminRoutesTest, ListFiltersTakeCatalogTiersAndTheStatusNamesPatchTakes) {
  AddCustomerBase();
  const uint64_t head = Head();
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?tier=platinum"), 400,
                "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?tier="), 400, "invalid_parameter");
  EXPECT_EQ(Head(), head);
  pj::RetirePlan retire("enterprise", pj::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&retire).status.ok());
  int pages = 0;
  EXPECT_EQ(ListAll("&tier=enterprise", 50, &pages), (std::vector<std::string>{"u-c"}));

  ASSERT_EQ(Patch("a@x.com", R"({"status":"suspended"})").status, 200);
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"trial","status":"trial"})").status, 200);
  for (const char* canceled : {"canceled", "cancelled", "suspended"}) {
    EXPECT_EQ(ListAll(std::string("&status=") + canceled, 50, &pages),
              (std::vector<std::string>{"u-a", "u-e"}))
        << canceled;
  }
  EXPECT_EQ(ListAll("&status=trial", 50, &pages), (std::vector<std::string>{"u-d", "u-g"}));
  EXPECT_EQ(ListAll("&status=trialing", 50, &pages), (std::vector<std::string>{"u-d", "u-g"}));
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?status="), 400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "list?status=Trial"), 400,
                "invalid_parameter");
}

TEST_F(AdminRoutesTest, OneSubscriberByEmailWithTheCurrentWindow) {
  AddCustomerBase();
  ASSERT_EQ(Consume("u-a", "chat", "k1").status, 200);
  ASSERT_EQ(Consume("u-a", "search", "k2").status, 200);
  HttpReply r = Admin().Get(std::string(kAdminBase) + "A@x.com");  // emails match in any case
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u);
  EXPECT_STREQ(doc["users"][0]["subscriber"]["user_id"].GetString(), "u-a");
  const auto& usage = doc["users"][0]["usage"];
  EXPECT_EQ(usage["used"].GetInt64(), 2);
  EXPECT_EQ(usage["limit"].GetInt64(), 1000);
  EXPECT_EQ(usage["remaining"].GetInt64(), 998);
  EXPECT_STREQ(usage["window_kind"].GetString(), "billing_month");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "nobody@x.com"), 404, "not_found");
}

TEST_F(AdminRoutesTest, OverviewFiguresFromTheSubscriptions) {
  AddCustomerBase();
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& subs = doc["subscribers"];
  EXPECT_EQ(subs["total"].GetInt64(), 7);
  EXPECT_EQ(subs["by_status"]["active"].GetInt64(), 3);     // a, b, f
  EXPECT_EQ(subs["by_status"]["past_due"].GetInt64(), 1);   // c
  EXPECT_EQ(subs["by_status"]["trialing"].GetInt64(), 1);   // d
  EXPECT_EQ(subs["by_status"]["canceled"].GetInt64(), 1);   // e
  EXPECT_EQ(subs["by_status"]["none"].GetInt64(), 1);       // g
  EXPECT_EQ(subs["paying"].GetInt64(), 4);                  // a, b, c, f
  EXPECT_EQ(subs["comped"].GetInt64(), 0);
  // ARR = 12 × 1900 (a) + 49000 (b, yearly) + 12 × 9900 (c) + 12 × 4900 (f) = 249,400 cents;
  // MRR = 249,400 / 12 = 20,783.33 -> 20,783.
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 249400);
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 20783);
  EXPECT_STREQ(doc["revenue"]["mrr"].GetString(), "207.83");
  // e was canceled 5 days ago. Paying when the 30-day window began: c and e (a, b and f were won
  // 10 days ago): 1 / 2.
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1);
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 2);
  EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 0.5);
  // Trials: d (still trialing), e and f converted. Nothing says e never paid after its trial (no
  // first period after a trial_end that went unpaid), so the churn above counts it a paying
  // customer lost: a converted trial that left. It was counted lost too -- the same customer both
  // churned and a trial never won.
  const auto& trials = doc["trial_conversion"];
  EXPECT_EQ(trials["trials"].GetInt64(), 3);
  EXPECT_EQ(trials["converted"].GetInt64(), 2);
  EXPECT_EQ(trials["lost"].GetInt64(), 0);
  EXPECT_EQ(trials["in_trial"].GetInt64(), 1);
  EXPECT_DOUBLE_EQ(trials["rate"].GetDouble(), 1.0);

  // Outside a 3-day churn window the cancellation does not count.
  r = Admin().Get(std::string(kAdminBase) + "analytics/overview?churn_days=3");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["churn"]["churned"].GetInt64(), 0);
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "analytics/overview?churn_days=0"), 400,
                "invalid_parameter");
}

// A past-due subscription whose latest invoice Stripe will not retry (its last retry failed,
// next_payment_attempt null) pays no more: it counted in the MRR for good while consume refused
// it with payment_failed. While Stripe still retries, it is paying (grace).
TEST_F(AdminRoutesTest, APastDueSubscriptionWithStripesRetriesOverIsNotRevenue) {
  TestSubscription t = OnPlan("u-due", "starter", "past_due");
  AddSubscriber(t, "due@x.com");
  ledger::testing::StripeInvoiceSpec invoice =
      ledger::testing::InvoiceOf("u-due", "cus_u-due", "sub_u-due", "in_due",
                                 "invoice.payment_failed", "evt_due_1", kNow - 2 * kDay);
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(invoice))
                  .status.ok());
  auto figures = [&](int64_t paying, int64_t mrr) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), paying) << r.body;
    EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), mrr) << r.body;
  };
  figures(1, 1900);  // Stripe retries in 3 days: grace
  invoice.event_id = "evt_due_4";
  invoice.event_created = kNow - kDay;
  invoice.attempt_count = 4;
  invoice.retries_left = false;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(invoice))
                  .status.ok());
  figures(0, 0);
  ExpectProblem(Consume("u-due", "chat", "after-last-retry"), 402, "payment_failed");
}

// The churn rate's base is who paid when the window began: sign-ups inside it do not dilute it.
// A trial that converted, paid, and left later is a conversion (and churn), not a lost trial.
TEST_F(AdminRoutesTest, ChurnRateIsOfThePayingAtTheStartAndAConvertedTrialThatLeftConverted) {
  // Paying since 40 days ago, still paying; and one lost 2 days ago.
  AddSubscriber(OnPlan("u-old", "starter", kNow - 40 * kDay, kNow + 20 * kDay), "old@x.com");
  TestSubscription gone = OnPlan("u-gone", "starter", "canceled");
  gone.period_start = kNow - 100 * kDay;
  gone.period_end = kNow - 2 * kDay;
  gone.ended_at = kNow - 2 * kDay;
  AddSubscriber(gone, "gone@x.com");
  // Paying since 60 days ago, now unpaid (dunning): still in the base, not churned.
  TestSubscription unpaid = OnPlan("u-unpaid", "starter", "unpaid");
  unpaid.period_start = kNow - 60 * kDay;
  unpaid.period_end = kNow - 30 * kDay;
  AddSubscriber(unpaid, "unpaid@x.com");
  // Three won 5 days ago.
  for (const char* user : {"u-n1", "u-n2", "u-n3"}) {
    AddSubscriber(OnPlan(user, "starter", kNow - 5 * kDay, kNow + 25 * kDay),
                  std::string(user) + "@x.com");
  }
  // A $1 trial 100 days ago that converted (an invoice paid 60 days ago) and left 5 days ago.
  TestSubscription converted = OnPlan("u-conv", "starter", "canceled");
  converted.period_start = kNow - 100 * kDay;
  converted.period_end = kNow - 5 * kDay;
  converted.trial_start = kNow - 100 * kDay;
  converted.trial_end = kNow - 93 * kDay;
  converted.ended_at = kNow - 5 * kDay;
  AddSubscriber(converted, "conv@x.com");
  ledger::testing::StripeInvoiceSpec invoice;
  invoice.event_id = "evt_inv_conv";
  invoice.event_created = kNow - 60 * kDay;
  invoice.invoice_id = "in_conv";
  invoice.customer_id = "cus_u-conv";
  invoice.subscription_id = "sub_u-conv";
  invoice.metadata_user_id = "u-conv";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(invoice))
                  .status.ok());
  // ...and whose last renewal failed (6 days ago): its latest invoice is not paid, it converted.
  invoice.event_id = "evt_inv_conv_failed";
  invoice.event_type = "invoice.payment_failed";
  invoice.event_created = kNow - 6 * kDay;
  invoice.invoice_id = "in_conv_failed";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(invoice))
                  .status.ok());
  // Past due since a charge 2 days ago, after a 7-day trial that ended `trial_ended` days ago.
  auto past_due_after_trial = [&](const std::string& user, int64_t trial_ended) {
    TestSubscription t = OnPlan("u-" + user, "starter", "past_due");
    t.trial_start = kNow - (trial_ended + 7) * kDay;
    t.trial_end = kNow - trial_ended * kDay;
    t.period_start = kNow - 2 * kDay;
    t.period_end = kNow + 28 * kDay;
    AddSubscriber(t, user + "@x.com");
  };
  past_due_after_trial("fail", 2);    // the first charge failed: not converted yet
  past_due_after_trial("renew", 92);  // converted months ago, a later renewal failed: converted
  // A trial canceled within its trial: lost.
  TestSubscription lost = OnPlan("u-lost", "starter", "canceled");
  lost.trial_start = kNow - 6 * kDay;
  lost.trial_end = kNow + 1 * kDay;
  lost.ended_at = kNow - 3 * kDay;
  AddSubscriber(lost, "lost@x.com");

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  // fail never paid after its trial: not paying, not in the MRR.
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 5);  // old, n1, n2, n3, renew
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 5 * 1900);
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 2);          // gone, conv
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 5);  // old, unpaid, gone, conv, renew
  EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 0.4);
  const auto& trials = doc["trial_conversion"];
  EXPECT_EQ(trials["trials"].GetInt64(), 4);
  EXPECT_EQ(trials["converted"].GetInt64(), 2);  // conv, renew
  EXPECT_EQ(trials["lost"].GetInt64(), 1);
  EXPECT_EQ(trials["awaiting_payment"].GetInt64(), 1);  // fail
  EXPECT_DOUBLE_EQ(trials["rate"].GetDouble(), 0.6667);
}

// The base is who was paying when the window began: a subscription unpaid since last year, or
// one whose last charge failed long before (Stripe moves an unpaid subscription's period on), is
// not in it (it sat in every window's base for good).
TEST_F(AdminRoutesTest, ChurnBaseLeavesOutSubscriptionsThatStoppedPayingBeforeTheWindow) {
  AddSubscriber(OnPlan("u-a", "starter", kNow - 40 * kDay, kNow + 20 * kDay), "a@x.com");
  TestSubscription gone = OnPlan("u-gone", "starter", "canceled");
  gone.period_start = kNow - 33 * kDay;
  gone.period_end = kNow - 3 * kDay;
  gone.ended_at = kNow - 3 * kDay;
  AddSubscriber(gone, "gone@x.com");
  TestSubscription old = OnPlan("u-old", "starter", "unpaid");
  old.period_start = kNow - 400 * kDay;
  old.period_end = kNow - 370 * kDay;
  AddSubscriber(old, "old@x.com");
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 2) << r.body;  // a, gone
  EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 0.5);

  // Yearly, its period reaches into the window, but its last charge failed 200 days ago.
  TestSubscription moved = OnPlan("u-moved", "starter", "unpaid");
  moved.interval = "year";
  moved.period_start = kNow - 345 * kDay;
  moved.period_end = kNow + 20 * kDay;
  AddSubscriber(moved, "moved@x.com");
  auto charge_failed = [&](const std::string& user, int64_t at) {
    ledger::testing::StripeInvoiceSpec failed;
    failed.event_id = "evt_inv_" + user;
    failed.event_type = "invoice.payment_failed";
    failed.event_created = at;
    failed.invoice_id = "in_" + user;
    failed.customer_id = "cus_" + user;
    failed.subscription_id = "sub_" + user;
    failed.metadata_user_id = user;
    return ledger::testing::SubmitWebhook(ledger_.get(),
                                          ledger::testing::StripeInvoiceEventJson(failed))
        .status;
  };
  ASSERT_TRUE(charge_failed("u-moved", kNow - 200 * kDay).ok());
  // A past-due one whose charge failed inside the window was paying when it began.
  TestSubscription dunning = OnPlan("u-dun", "starter", "past_due");
  dunning.interval = "year";
  dunning.period_start = kNow - 360 * kDay;
  dunning.period_end = kNow + 5 * kDay;
  AddSubscriber(dunning, "dun@x.com");
  ASSERT_TRUE(charge_failed("u-dun", kNow - 2 * kDay).ok());
  r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 3) << r.body;  // a, gone, dun
}

// The base is users paying when the window began, whichever of their subscriptions paid then: a
// user who switched plans inside the window (a Starter kept to its period's end, then
// Professional), or who is billed for an older plan next to one bought inside it, is not churned
// and stays in the base. Judged on the user's current subscription alone (created inside the
// window), they left the base: 1 churned of 1 instead of 1 of 3.
TEST_F(AdminRoutesTest, AUserWhoseNewerPlanStartedInsideTheWindowStaysInTheChurnBase) {
  // Starter since 60 days ago, canceled 5 days ago: churned.
  AddSubscriber(CanceledAtItsEnd("u-old", "starter", kNow - 60 * kDay, kNow - 5 * kDay),
                "old@x.com");
  // Starter since 60 days ago, kept to its period's end 5 days ago (Stripe's deletion not
  // arrived), then Professional bought 4 days ago.
  TestSubscription starter = OnPlan("u-switch", "starter", kNow - 60 * kDay, kNow - 5 * kDay);
  starter.cancel_at_period_end = true;
  AddSubscriber(starter, "switch@x.com");
  TestSubscription professional =
      OnPlan("u-switch", "professional", kNow - 4 * kDay, kNow + 26 * kDay);
  professional.subscription_id = "sub_u-switch_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), professional).ok());
  // Starter since 60 days ago and still billed, Professional too since 3 days ago.
  AddSubscriber(OnPlan("u-both", "starter", kNow - 60 * kDay, kNow + 10 * kDay), "both@x.com");
  TestSubscription both = OnPlan("u-both", "professional", kNow - 3 * kDay, kNow + 27 * kDay);
  both.subscription_id = "sub_u-both_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), both).ok());
  auto expect_churn = [&]() {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1) << r.body;          // old
    EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 3) << r.body;  // old, switch, both
    EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 0.3333) << r.body;
  };
  expect_churn();
  // Stripe's deletion of u-switch's Starter, when it arrives, changes nothing.
  starter.status = "canceled";
  starter.canceled_at = starter.ended_at = starter.period_end;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), starter).ok());
  expect_churn();
}

// A checkout that never started (incomplete, then incomplete_expired when abandoned) is no switch
// of plans: the Starter canceled inside the window is churn. Chosen as the user's subscription,
// the abandoned checkout hid it while the Starter kept the user in the base (0 of 1). A started
// plan after it is a switch (no churn), as before.
TEST_F(AdminRoutesTest, ACheckoutThatNeverStartedHidesNoChurn) {
  AddSubscriber(CanceledAtItsEnd("u-back", "starter", kNow - 40 * kDay, kNow - 10 * kDay),
                "back@x.com");
  auto churn = [&]() {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 1) << r.body;
    return doc["churn"]["churned"].GetInt64();
  };
  ASSERT_EQ(churn(), 1);
  TestSubscription again = OnPlan("u-back", "professional", "incomplete");
  again.subscription_id = "sub_u-back_2";
  again.period_start = kNow - 2 * kDay;
  again.period_end = kNow + 28 * kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), again).ok());
  EXPECT_EQ(churn(), 1) << "incomplete";
  again.status = "incomplete_expired";
  again.ended_at = kNow - kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), again).ok());
  EXPECT_EQ(churn(), 1) << "incomplete_expired";
  TestSubscription switched = OnPlan("u-back", "professional", kNow - kDay, kNow + 29 * kDay);
  switched.subscription_id = "sub_u-back_3";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), switched).ok());
  EXPECT_EQ(churn(), 0) << "a started plan after it";
}

// A trial whose first charge Stripe retries is awaiting payment; once Stripe names no next attempt
// (its retries over, the subscription left past due) it is lost, as consume's 402 trial_expired
// says -- it stayed awaiting_payment, and left the rate's denominator.
TEST_F(AdminRoutesTest, ATrialWhoseFirstChargeStripeGaveUpOnIsLost) {
  AddSubscriber(TrialPastDue("u-t", kNow - 27 * kDay, kNow - 20 * kDay, kNow + 10 * kDay),
                "t@x.com");
  ledger::testing::StripeInvoiceSpec failed = ledger::testing::InvoiceOf(
      "u-t", "cus_u-t", "sub_u-t", "in_t1", "invoice.payment_failed", "evt_t1", kNow - 20 * kDay);
  failed.attempt_count = 1;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(failed))
                  .status.ok());
  auto conversion = [&]() {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    rapidjson::Document out;
    out.CopyFrom(doc["trial_conversion"], out.GetAllocator());
    return out;
  };
  rapidjson::Document c = conversion();
  EXPECT_EQ(c["awaiting_payment"].GetInt64(), 1);
  EXPECT_EQ(c["lost"].GetInt64(), 0);
  failed.event_id = "evt_t4";
  failed.event_created = kNow - 6 * kDay;
  failed.attempt_count = 4;
  failed.retries_left = false;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(failed))
                  .status.ok());
  ExpectProblem(Consume("u-t", "chat", "after-last-retry"), 402, "trial_expired");
  c = conversion();
  EXPECT_EQ(c["awaiting_payment"].GetInt64(), 0);
  EXPECT_EQ(c["lost"].GetInt64(), 1);
  EXPECT_EQ(c["trials"].GetInt64(), 1);
}

// A $1 trial whose first charge was declined at its end is past due on Starter's price at
// Stripe, and still the trial here: ended (trial_expired), no Starter services, BYOK or month of
// calls, not paying -- until an invoice is paid.
TEST_F(AdminRoutesTest, ATrialWhoseFirstChargeFailedIsNotStarter) {
  TestSubscription t = TrialPastDue("u-t", kNow - 8 * kDay, kNow - 1 * kDay, kNow + 29 * kDay);
  AddSubscriber(t, "t@x.com");
  auto check = [&](const std::string& service) {
    TestHttpClient client("127.0.0.1", stack_->port());
    client.set_bearer(kServiceToken);
    return client.Post("/api/v1/subscriptions/check-access/" + service + "?user_id=u-t", "");
  };
  HttpReply r = check("search");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  r = check("chat");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_expired");
  EXPECT_STREQ(r.Json()["plan_id"].GetString(), "trial");
  ExpectProblem(Consume("u-t", "chat", "declined"), 402, "trial_expired");
  r = User("u-t").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_FALSE(doc["has_access"].GetBool()) << r.body;
  EXPECT_FALSE(doc["byok_enabled"].GetBool()) << r.body;
  EXPECT_TRUE(doc["quota"].IsNull()) << r.body;
  doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 0);
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 0);
  EXPECT_EQ(doc["trial_conversion"]["awaiting_payment"].GetInt64(), 1);

  // A retry is paid: Starter now.
  ledger::testing::StripeInvoiceSpec invoice;
  invoice.event_id = "evt_inv_t";
  invoice.event_created = kNow;
  invoice.invoice_id = "in_t";
  invoice.customer_id = "cus_u-t";
  invoice.subscription_id = "sub_u-t";
  invoice.metadata_user_id = "u-t";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(invoice))
                  .status.ok());
  t.status = "active";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), t).ok());
  r = check("search");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["plan_id"].GetString(), "starter");
  EXPECT_EQ(Consume("u-t", "chat", "paid").status, 200);
  doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 1);
  EXPECT_EQ(doc["trial_conversion"]["converted"].GetInt64(), 1);
}

TEST_F(AdminRoutesTest, ChurnIsPaidSubscriptionsDatedByTheirEnd) {
  const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
  AddSubscriber(OnPlan("u-a", "starter", start, end), "a@x.com");
  // Asked 40 days ago to cancel at the end of its (yearly) period, which came 2 days ago.
  TestSubscription h = OnPlan("u-h", "starter", "canceled");
  h.canceled_at = kNow - 40 * kDay;
  h.ended_at = kNow - 2 * kDay;
  AddSubscriber(h, "h@x.com");
  // Canceled within its trial: a lost trial, not a paying customer lost.
  TestSubscription i = OnPlan("u-i", "starter", "canceled");
  i.trial_start = kNow - 6 * kDay;
  i.trial_end = kNow + 1 * kDay;
  i.canceled_at = kNow - 3 * kDay;
  i.ended_at = kNow - 3 * kDay;
  AddSubscriber(i, "i@x.com");
  // A checkout whose first payment never went through.
  TestSubscription j = OnPlan("u-j", "starter", "incomplete_expired");
  j.ended_at = kNow - 1 * kDay;
  AddSubscriber(j, "j@x.com");
  // Yearly, from a delivery without the price's interval: known by the plan's yearly price.
  TestSubscription k = OnPlan("u-k", "professional", start, end);
  k.interval = "year";
  k.interval_in_event = false;
  AddSubscriber(k, "k@x.com");
  // Its trial ended 10 days ago, the first charge failed and dunning canceled it 2 days ago (its
  // period is still the one that began at the trial's end): a lost trial, never paying.
  TestSubscription l = OnPlan("u-l", "starter", "canceled");
  l.trial_start = kNow - 17 * kDay;
  l.trial_end = l.period_start = kNow - 10 * kDay;
  l.period_end = kNow + 20 * kDay;
  l.canceled_at = l.ended_at = kNow - 2 * kDay;
  AddSubscriber(l, "l@x.com");
  // Paused since its trial ended without a payment method, 43 days ago: never paid.
  TestSubscription m = OnPlan("u-m", "starter", "paused");
  m.trial_start = kNow - 50 * kDay;
  m.trial_end = m.period_start = kNow - 43 * kDay;
  m.period_end = kNow - 13 * kDay;
  AddSubscriber(m, "m@x.com");
  // Converted long ago (its period has moved on since the trial), lost yesterday: churn.
  TestSubscription n = OnPlan("u-n", "starter", "canceled");
  n.trial_start = kNow - 80 * kDay;
  n.trial_end = kNow - 73 * kDay;
  n.period_start = kNow - 13 * kDay;
  n.period_end = kNow + 17 * kDay;
  n.canceled_at = n.ended_at = kNow - 1 * kDay;
  AddSubscriber(n, "n@x.com");

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 2);  // a, k
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 2);       // h, n
  // Paying when the window began: h and n (a and k were won inside it; i was in its trial; l
  // and m never paid after theirs).
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 2);
  EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 1.0);
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 12 * 1900 + 49000);
  r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document tiers = r.Json();
  int professional = 0;
  for (const auto& t : tiers["tiers"].GetArray()) {
    if (std::string(t["plan_id"].GetString()) != "professional") continue;
    ++professional;
    EXPECT_EQ(t["paying_yearly"].GetInt64(), 1);
    EXPECT_EQ(t["arr_cents"].GetInt64(), 49000);
  }
  EXPECT_EQ(professional, 1);
}

// A subscription to a price outside the catalog (an add-on made in Stripe's Dashboard, no
// metadata.plan_id) never made a paying subscriber here: its cancellation is no churn.
TEST_F(AdminRoutesTest, ChurnCountsOnlySubscriptionsOnACatalogPlan) {
  AddSubscriber(OnPlan("u-a", "starter", kNow - 40 * kDay, kNow + 20 * kDay), "a@x.com");
  AddSubscriber(OnPlan("u-x", ""), "x@x.com");
  ledger::testing::StripeSubscriptionSpec addon = DashboardAddOn();
  addon.event_id = "evt_addon_canceled";
  addon.status = "canceled";
  addon.created = addon.period_start = kNow - 60 * kDay;
  addon.period_end = kNow - 3 * kDay;
  addon.canceled_at = addon.ended_at = kNow - 3 * kDay;
  ASSERT_NO_FATAL_FAILURE(SubscribeUxToADashboardAddOn(addon));
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["by_status"]["canceled"].GetInt64(), 1) << r.body;  // u-x
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 0) << r.body;
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 1) << r.body;  // u-a
  EXPECT_DOUBLE_EQ(doc["churn"]["rate"].GetDouble(), 0.0);
}

// Trial conversion, as churn, counts trials of catalog-plan subscriptions only: a Dashboard
// add-on with a trial, active past it, was a trial converted.
TEST_F(AdminRoutesTest, TrialConversionCountsOnlySubscriptionsOnACatalogPlan) {
  AddSubscriber(OnPlan("u-a", "starter", kNow - 40 * kDay, kNow + 20 * kDay), "a@x.com");
  AddSubscriber(OnPlan("u-x", ""), "x@x.com");
  ledger::testing::StripeSubscriptionSpec addon = DashboardAddOn();
  addon.created = kNow - 17 * kDay;
  addon.trial_start = kNow - 17 * kDay;
  addon.trial_end = addon.period_start = kNow - 10 * kDay;
  ASSERT_NO_FATAL_FAILURE(SubscribeUxToADashboardAddOn(addon));
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["by_status"]["none"].GetInt64(), 1) << r.body;  // u-x
  EXPECT_EQ(doc["trial_conversion"]["trials"].GetInt64(), 0) << r.body;
  EXPECT_EQ(doc["trial_conversion"]["converted"].GetInt64(), 0) << r.body;
  EXPECT_EQ(doc["trial_conversion"]["lost"].GetInt64(), 0) << r.body;
}

TEST_F(AdminRoutesTest, RevenueIsWhatStripeBillsNotTheCatalogsCurrentPrice) {
  const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
  // Signed up at $15 before Starter went to $19: Stripe keeps billing $15.
  TestSubscription a = OnPlan("u-a", "starter", start, end);
  a.unit_amount = 1500;
  AddSubscriber(a, "a@x.com");
  // Three seats of Professional.
  TestSubscription b = OnPlan("u-b", "professional", start, end);
  b.quantity = 3;
  AddSubscriber(b, "b@x.com");
  // Yearly Enterprise at the catalog's yearly price.
  TestSubscription c = OnPlan("u-c", "enterprise", start, end);
  c.interval = "year";
  AddSubscriber(c, "c@x.com");

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  // ARR = 12 × 1500 + 12 × 3 × 4900 + 99000 = 293,400; MRR = 24,450.
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 293400);
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 24450);
  r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  std::map<std::string, int64_t> mrr;
  for (const auto& t : doc["tiers"].GetArray()) mrr[t["plan_id"].GetString()] = t["mrr_cents"].GetInt64();
  EXPECT_EQ(mrr["starter"], 1500);
  EXPECT_EQ(mrr["professional"], 14700);
  EXPECT_EQ(mrr["enterprise"], 8250);
  r = Admin().Get(std::string(kAdminBase) + "b@x.com");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  const auto& stripe = doc["users"][0]["subscriber"]["stripe"];
  EXPECT_EQ(stripe["unit_amount"].GetInt64(), 4900);
  EXPECT_EQ(stripe["quantity"].GetInt64(), 3);
  EXPECT_STREQ(stripe["currency"].GetString(), "usd");
}

TEST_F(AdminRoutesTest, RevenueByTierSplitsMonthlyAndYearly) {
  AddCustomerBase();
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  std::map<std::string, const rapidjson::Value*> tiers;
  for (const auto& t : doc["tiers"].GetArray()) tiers[t["plan_id"].GetString()] = &t;
  ASSERT_EQ(tiers.size(), 4u);
  EXPECT_EQ((*tiers["starter"])["paying"].GetInt64(), 1);
  EXPECT_EQ((*tiers["starter"])["mrr_cents"].GetInt64(), 1900);
  // b yearly (49,000) + f monthly (12 × 4,900): ARR 107,800, MRR 8,983.33 -> 8,983.
  EXPECT_EQ((*tiers["professional"])["paying"].GetInt64(), 2);
  EXPECT_EQ((*tiers["professional"])["paying_yearly"].GetInt64(), 1);
  EXPECT_EQ((*tiers["professional"])["paying_monthly"].GetInt64(), 1);
  EXPECT_EQ((*tiers["professional"])["arr_cents"].GetInt64(), 107800);
  EXPECT_EQ((*tiers["professional"])["mrr_cents"].GetInt64(), 8983);
  EXPECT_EQ((*tiers["enterprise"])["mrr_cents"].GetInt64(), 9900);
  // d is on the trial plan with access, but pays nothing yet.
  EXPECT_EQ((*tiers["trial"])["subscribers"].GetInt64(), 1);
  EXPECT_EQ((*tiers["trial"])["paying"].GetInt64(), 0);
  EXPECT_EQ(doc["total"]["paying"].GetInt64(), 4);
  EXPECT_EQ(doc["total"]["arr_cents"].GetInt64(), 249400);
}

// Stripe bills every subscription of a user, not only the one access is decided on: a user who
// checked out twice (Starter monthly from one portal session, Professional yearly from another)
// pays for both, and a user who started a trial while a Starter that paid once is past due is
// still billed for Starter. MRR counted one subscription per user and understated what Stripe
// bills; `paying` stays a count of users, a tier's `paying` counts subscriptions.
TEST_F(AdminRoutesTest, EverySubscriptionStripeBillsIsRevenue) {
  const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
  AddSubscriber(OnPlan("u-m", "starter", start, end), "m@x.com");
  TestSubscription second = OnPlan("u-m", "professional", start + kDay, end + kDay);
  second.interval = "year";
  second.period_end = start + kDay + 365 * kDay;
  second.subscription_id = "sub_u-m_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), second).ok());
  PayInvoice("u-m", "sub_u-m", "in_m1", 1900, start);
  PayInvoice("u-m", "sub_u-m_2", "in_m2", 49000, start + kDay);

  AddSubscriber(OnPlan("u-o", "starter", "past_due"), "o@x.com");
  PayInvoice("u-o", "sub_u-o", "in_o1", 1900, kStripeT0);
  TestSubscription trial = OnPlan("u-o", "trial", "trialing");
  trial.subscription_id = "sub_u-o_trial";
  trial.period_start = kNow - 2 * kDay;
  trial.period_end = kNow + 5 * kDay;
  trial.trial_end = kNow + 5 * kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), trial).ok());

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["total"].GetInt64(), 2) << r.body;
  EXPECT_EQ(doc["subscribers"]["by_status"]["active"].GetInt64(), 1) << r.body;    // u-m
  EXPECT_EQ(doc["subscribers"]["by_status"]["trialing"].GetInt64(), 1) << r.body;  // u-o
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 2) << r.body;  // users: u-m, u-o
  // ARR = 12 × 1900 (u-m's Starter) + 49000 (u-m's Professional, yearly) + 12 × 1900 (u-o's
  // Starter) = 94,600 cents; MRR = 94,600 / 12 = 7,883.33 -> 7,883 (u-m alone: 1900 + 4083).
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 94600) << r.body;
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 7883) << r.body;
  EXPECT_STREQ(doc["revenue"]["mrr"].GetString(), "78.83");

  r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  std::map<std::string, const rapidjson::Value*> tiers;
  for (const auto& t : doc["tiers"].GetArray()) tiers[t["plan_id"].GetString()] = &t;
  ASSERT_EQ(tiers.size(), 4u);
  const rapidjson::Value& starter = *tiers["starter"];
  const rapidjson::Value& professional = *tiers["professional"];
  EXPECT_EQ(starter["paying"].GetInt64(), 2) << r.body;  // u-m's and u-o's
  EXPECT_EQ(starter["paying_monthly"].GetInt64(), 2) << r.body;
  EXPECT_EQ(starter["arr_cents"].GetInt64(), 45600) << r.body;
  EXPECT_EQ(starter["mrr_cents"].GetInt64(), 3800) << r.body;
  EXPECT_EQ(professional["paying"].GetInt64(), 1) << r.body;
  EXPECT_EQ(professional["paying_yearly"].GetInt64(), 1) << r.body;
  EXPECT_EQ(professional["arr_cents"].GetInt64(), 49000) << r.body;
  EXPECT_EQ(professional["mrr_cents"].GetInt64(), 4083) << r.body;
  // Users with access on the plan: u-m on one of its two (the newer, Professional), u-o on the
  // trial.
  EXPECT_EQ(starter["subscribers"].GetInt64(), 0) << r.body;
  EXPECT_EQ(professional["subscribers"].GetInt64(), 1) << r.body;
  EXPECT_EQ((*tiers["trial"])["subscribers"].GetInt64(), 1) << r.body;
  EXPECT_EQ((*tiers["trial"])["paying"].GetInt64(), 0) << r.body;
  EXPECT_EQ(doc["total"]["paying"].GetInt64(), 3) << r.body;  // subscriptions
  EXPECT_EQ(doc["total"]["arr_cents"].GetInt64(), 94600) << r.body;
  EXPECT_EQ(doc["total"]["mrr_cents"].GetInt64(), 7883) << r.body;
  ExpectReplayEqual();
}

// A user's other subscriptions that Stripe is not being paid for add nothing: one not started
// (incomplete), one dunning gave up on (unpaid), and a $1 trial whose first charge after it was
// declined (past_due in its first period, no invoice paid: not converted).
TEST_F(AdminRoutesTest, AUsersSubscriptionsThatAreNotPayingAddNothing) {
  const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
  AddSubscriber(OnPlan("u-n", "starter", start, end), "n@x.com");
  PayInvoice("u-n", "sub_u-n", "in_n1", 1900, start);
  TestSubscription incomplete = OnPlan("u-n", "professional", "incomplete");
  incomplete.subscription_id = "sub_u-n_incomplete";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), incomplete).ok());
  TestSubscription unpaid = OnPlan("u-n", "enterprise", "unpaid");
  unpaid.subscription_id = "sub_u-n_unpaid";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), unpaid).ok());
  TestSubscription trial = TrialPastDue("u-n", kNow - 8 * kDay, kNow - 1 * kDay, kNow + 29 * kDay);
  trial.subscription_id = "sub_u-n_trial";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), trial).ok());
  ledger::testing::StripeInvoiceSpec declined;
  declined.event_id = "evt_inv_n_declined";
  declined.event_type = "invoice.payment_failed";
  declined.event_created = kNow - 1 * kDay;
  declined.invoice_id = "in_n_declined";
  declined.customer_id = "cus_u-n";
  declined.subscription_id = "sub_u-n_trial";
  declined.metadata_user_id = "u-n";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeInvoiceEventJson(declined))
                  .status.ok());

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 22800) << r.body;
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 1900) << r.body;
  r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  for (const auto& t : doc["tiers"].GetArray()) {
    const std::string plan = t["plan_id"].GetString();
    EXPECT_EQ(t["paying"].GetInt64(), plan == "starter" ? 1 : 0) << plan << " " << r.body;
  }
  EXPECT_EQ(doc["total"]["paying"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["total"]["mrr_cents"].GetInt64(), 1900) << r.body;
  ExpectReplayEqual();
}

TEST_F(AdminRoutesTest, UsageStatsCountWhatWasRecordedInTheRange) {
  AddCustomerBase();
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Consume("u-a", "chat", "a" + std::to_string(i)).status, 200);
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(Consume("u-b", "search", "b" + std::to_string(i)).status, 200);
  }
  ASSERT_EQ(Consume("u-g", "chat", "g0").status, 402);  // refused: counted, not recorded
  const std::string range = "?from=" + std::to_string(kNow - 30 * kDay) +
                            "&to=" + std::to_string(kNow + 1);
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/usage-stats" + range);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& usage = doc["usage"];
  EXPECT_EQ(usage["calls"].GetInt64(), 5);
  EXPECT_EQ(usage["users"].GetInt64(), 2);
  EXPECT_EQ(usage["by_service"]["chat"].GetInt64(), 3);
  EXPECT_EQ(usage["by_service"]["search"].GetInt64(), 2);
  EXPECT_EQ(usage["by_plan"]["starter"].GetInt64(), 3);
  EXPECT_EQ(usage["by_plan"]["professional"].GetInt64(), 2);
  ASSERT_EQ(usage["top_users"].Size(), 2u);
  EXPECT_STREQ(usage["top_users"][0]["user_id"].GetString(), "u-a");
  EXPECT_EQ(doc["denials_since_start"]["subscription_required"].GetUint64(), 1u);

  // A range that ends before the windows started counts nothing.
  r = Admin().Get(std::string(kAdminBase) + "analytics/usage-stats?from=2020-01-01T00:00:00Z&to=" +
                  "2020-02-01T00:00:00Z");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["usage"]["calls"].GetInt64(), 0);
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "analytics/usage-stats?from=10&to=5"), 400,
                "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "analytics/usage-stats?from=0&to=" +
                            std::to_string(401 * kDay)),
                400, "invalid_parameter");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "analytics/usage-stats?from=yesterday"), 400,
                "invalid_parameter");
  // The refusal names both forms a time takes (it said "an integer from 0 to 253402300799").
  for (const char* bad : {"from=xyz", "to=2026-13-01T00:00:00Z", "from=-5"}) {
    SCOPED_TRACE(bad);
    r = Admin().Get(std::string(kAdminBase) + "analytics/usage-stats?" + bad);
    ExpectProblem(r, 400, "invalid_parameter");
    const std::string detail = r.Json()["detail"].GetString();
    EXPECT_EQ(detail.rfind(std::string(bad).substr(0, std::string(bad).find('=')) + ": ", 0), 0u)
        << detail;
    EXPECT_NE(detail.find("RFC 3339"), std::string::npos) << detail;
    EXPECT_NE(detail.find("Unix seconds"), std::string::npos) << detail;
  }
}

// A window is counted whole in the one range that holds its start: a billing month from Jul 20
// to Aug 20 is July's, so July's and August's figures add up to its calls (every window that
// overlapped a range was counted in it: in July's and in August's).
TEST_F(AdminRoutesTest, UsageStatsCountEachWindowInTheRangeOfItsStart) {
  const int64_t jul20 = 1752969600, aug20 = 1755648000;  // 2025-07-20, 2025-08-20 (UTC)
  ASSERT_LT(jul20, kNow);
  ASSERT_LT(kNow, aug20);
  AddSubscriber(OnPlan("u-late", "starter", jul20, aug20), "late@x.com");
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(Consume("u-late", "chat", "l" + std::to_string(i)).status, 200);
  }
  auto calls = [&](const std::string& range) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/usage-stats" + range);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.status == 200 ? r.Json()["usage"]["calls"].GetInt64() : -1;
  };
  const int64_t july = calls("?from=2025-07-01T00:00:00Z&to=2025-08-01T00:00:00Z");
  const int64_t august = calls("?from=2025-08-01T00:00:00Z&to=2025-09-01T00:00:00Z");
  EXPECT_EQ(july, 3);
  EXPECT_EQ(august, 0);
  EXPECT_EQ(july + august, 3);
  // The default range (this UTC month so far) holds its start.
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/usage-stats");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["usage"]["windows"].GetInt64(), 1) << r.body;
  // A range that begins after the window began counts nothing of it, even while it lasts.
  EXPECT_EQ(calls("?from=" + std::to_string(jul20 + 1) + "&to=" + std::to_string(aug20)), 0);
  EXPECT_EQ(calls("?from=" + std::to_string(jul20) + "&to=" + std::to_string(jul20 + 1)), 3);
}

TEST_F(AdminRoutesTest, AnOverrideCompsAnAccountAndIsAnEventNamingTheAdmin) {
  AddCustomerBase();
  ASSERT_EQ(Consume("u-g", "chat", "before").status, 402);
  const uint64_t before = Head();
  HttpReply r = Patch("g@x.com", R"({"tier":"enterprise","status":"active","notes":"partner"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), before + 1);
  rapidjson::Document doc = r.Json();
  EXPECT_TRUE(doc["users"][0]["changed"].GetBool());
  EXPECT_STREQ(doc["users"][0]["override"]["plan_id"].GetString(), "enterprise");

  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(before), 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, pj::kSubscriptionOverrideSetV1);
  EXPECT_EQ(events[0].subject, "u-g");
  EXPECT_NE(events[0].data.find(R"("sub":"root")"), std::string::npos) << events[0].data;

  // Access follows the override: my-access, consume (Enterprise: bolt-diy, unlimited).
  HttpReply access = User("u-g").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_STREQ(access.Json()["plan_id"].GetString(), "enterprise");
  EXPECT_TRUE(access.Json()["overridden"].GetBool());
  EXPECT_EQ(Consume("u-g", "bolt-diy", "after").status, 200);

  // Revenue is what Stripe bills: a comped account adds none.
  doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["subscribers"]["comped"].GetInt64(), 1);
  EXPECT_EQ(doc["subscribers"]["by_status"]["active"].GetInt64(), 4);
  EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), 249400);

  // The same change again changes nothing and appends nothing.
  const uint64_t head = Head();
  r = Patch("g@x.com", R"({"tier":"enterprise","status":"active","notes":"partner"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["users"][0]["changed"].GetBool());
  EXPECT_EQ(Head(), head);

  // Clearing tier and status leaves the notes and takes the access away again.
  r = Patch("g@x.com", R"({"tier":null,"status":null})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Consume("u-g", "chat", "cleared").status, 402);
  r = Admin().Get(std::string(kAdminBase) + "g@x.com");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  const auto& override = doc["users"][0]["subscriber"]["override"];
  ASSERT_TRUE(override.IsObject()) << r.body;
  EXPECT_STREQ(override["notes"].GetString(), "partner");
  EXPECT_TRUE(override["plan_id"].IsNull());
  EXPECT_STREQ(override["admin"].GetString(), "root");
}

TEST_F(AdminRoutesTest, ATrialGrantedByAnAdminEndsAfterItsTrialDays) {
  AddCustomerBase();
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  EXPECT_EQ(Consume("u-g", "chat", "day-1").status, 200);
  // A later change of the notes does not move the trial's start.
  clock_.Advance(3 * kDay * kUs);
  ASSERT_EQ(Patch("g@x.com", R"({"notes":"asked for more time"})").status, 200);
  EXPECT_EQ(Consume("u-g", "chat", "day-4").status, 200);
  clock_.Advance(4 * kDay * kUs);  // seven days after the tier was set
  HttpReply r = Consume("u-g", "chat", "day-8");
  ASSERT_EQ(r.status, 402) << r.body;
  EXPECT_NE(r.body.find("trial_expired"), std::string::npos) << r.body;
  // Granting the tier again starts a new trial.
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"starter"})").status, 200);
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"trial"})").status, 200);
  EXPECT_EQ(Consume("u-g", "chat", "again").status, 200);
  ExpectProblem(Consume("u-g", "tts", "not-in-trial"), 403, "service_not_in_plan");

  // On the trial's third day the user buys Professional: what they pay for decides from then on
  // (tts is Professional's; the granted trial's end ends nothing), and a later note of the admin's
  // does not bring the trial back.
  clock_.Advance(2 * kDay * kUs);
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(
                  ledger_.get(),
                  OnPlan("u-g", "professional", NowSeconds(), NowSeconds() + 30 * kDay))
                  .ok());
  EXPECT_EQ(Consume("u-g", "tts", "bought").status, 200);
  clock_.Advance(6 * kDay * kUs);  // past the granted trial's seven days
  ASSERT_EQ(Patch("g@x.com", R"({"notes":"bought professional"})").status, 200);
  HttpReply r2 = Consume("u-g", "tts", "day-9");
  EXPECT_EQ(r2.status, 200) << r2.body;
  r2 = User("u-g").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r2.status, 200) << r2.body;
  rapidjson::Document access = r2.Json();
  EXPECT_STREQ(access["plan_id"].GetString(), "professional");
  EXPECT_STREQ(access["status"].GetString(), "active");
  EXPECT_FALSE(access["overridden"].GetBool());
  EXPECT_TRUE(access["has_access"].GetBool());
  rapidjson::Document one = Admin().Get(std::string(kAdminBase) + "g@x.com").Json();
  const auto& subscriber = one["users"][0]["subscriber"];
  EXPECT_TRUE(subscriber["override_superseded"].GetBool());
  EXPECT_STREQ(subscriber["override"]["plan_id"].GetString(), "trial");
}

// A comp the user's own later plan superseded comes back when that plan ends: at its scheduled
// end, not when Stripe's deletion arrives (past the period's end consume answered 402 until the
// late webhook, then 200: the answer hung on the webhook's delay alone), and not as soon as the
// end is scheduled (the user keeps the plan they paid for until then).
TEST_F(AdminRoutesTest, ACompComesBackWhenTheUsersOwnPlanIsScheduledToEnd) {
  AddCustomerBase();
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"professional","status":"active"})").status, 200);
  EXPECT_EQ(Consume("u-g", "tts", "comped").status, 200);
  clock_.Advance(kDay * kUs);
  TestSubscription own = OnPlan("u-g", "starter", NowSeconds(), NowSeconds() + 30 * kDay);
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), own).ok());
  ExpectProblem(Consume("u-g", "tts", "own-starter"), 403, "service_not_in_plan");
  own.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), own).ok());
  ExpectProblem(Consume("u-g", "tts", "scheduled"), 403, "service_not_in_plan");
  clock_.Advance(30 * kDay * kUs + 3600 * kUs);  // past the period's end, no deletion yet
  EXPECT_EQ(Consume("u-g", "tts", "after-end").status, 200);
  own.status = "canceled";
  own.ended_at = own.canceled_at = own.period_end;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), own).ok());
  EXPECT_EQ(Consume("u-g", "tts", "after-deletion").status, 200);
}

// A plan the user bought over an override, then cancelled at its period's end (or at a date),
// decides until that end, and the override from then on. The override decided as soon as the
// end was scheduled: an admin's trial answered 402 trial_expired (and my-access plan "trial")
// for the rest of the month the user paid Professional for; a comp of Starter took tts and
// Professional's quota away at once.
TEST_F(AdminRoutesTest, APlanBoughtOverAnOverrideDecidesUntilItsScheduledEnd) {
  AddCustomerBase();
  AddSubscriber(OnPlan("u-h", ""), "h@x.com");
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  ASSERT_EQ(Patch("h@x.com", R"({"tier":"starter","status":"active"})").status, 200);
  ExpectProblem(Consume("u-h", "tts", "comped"), 403, "service_not_in_plan");
  clock_.Advance(2 * kDay * kUs);  // the trial's day 2
  const int64_t bought = NowSeconds();
  TestSubscription g = OnPlan("u-g", "professional", bought, bought + 30 * kDay);
  TestSubscription h = OnPlan("u-h", "professional", bought, bought + 30 * kDay);
  h.cancel_at = bought + 20 * kDay;  // a date set in the portal
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), g).ok());
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), h).ok());
  EXPECT_EQ(Consume("u-h", "tts", "bought").status, 200);
  clock_.Advance(6 * kDay * kUs);  // day 8: past the granted trial's seven days
  g.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), g).ok());
  EXPECT_EQ(Consume("u-g", "chat", "scheduled-chat").status, 200);
  EXPECT_EQ(Consume("u-g", "tts", "scheduled-tts").status, 200);
  EXPECT_EQ(Consume("u-h", "tts", "scheduled-tts").status, 200);
  auto my_access = [&](const std::string& user) {
    HttpReply r = User(user).Get("/api/v1/subscriptions/my-access");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  };
  rapidjson::Document access = my_access("u-g");
  EXPECT_STREQ(access["plan_id"].GetString(), "professional");
  EXPECT_TRUE(access["has_access"].GetBool());
  EXPECT_FALSE(access["overridden"].GetBool());
  rapidjson::Document one = Admin().Get(std::string(kAdminBase) + "g@x.com").Json();
  EXPECT_TRUE(one["users"][0]["subscriber"]["override_superseded"].GetBool());

  // The last hour before each end: still the plan bought.
  clock_.Set((bought + 20 * kDay - 3600) * kUs);
  EXPECT_EQ(Consume("u-h", "tts", "before-cancel-at").status, 200);
  clock_.Set((bought + 20 * kDay) * kUs);  // u-h's cancel_at: Starter's comp decides
  ExpectProblem(Consume("u-h", "tts", "at-cancel-at"), 403, "service_not_in_plan");
  EXPECT_EQ(Consume("u-h", "chat", "at-cancel-at").status, 200);
  EXPECT_STREQ(my_access("u-h")["plan_id"].GetString(), "starter");
  clock_.Set((bought + 30 * kDay - 3600) * kUs);
  EXPECT_EQ(Consume("u-g", "tts", "before-end").status, 200);
  clock_.Set((bought + 30 * kDay + 3600) * kUs);  // past the period's end, no deletion yet
  ExpectProblem(Consume("u-g", "chat", "after-end"), 402, "trial_expired");
  access = my_access("u-g");
  EXPECT_STREQ(access["plan_id"].GetString(), "trial");
  EXPECT_FALSE(access["has_access"].GetBool());
  EXPECT_TRUE(access["overridden"].GetBool());
  ASSERT_TRUE(access["access_ended"].IsString());
  EXPECT_STREQ(access["access_ended"].GetString(), "trial_expired");
  one = Admin().Get(std::string(kAdminBase) + "g@x.com").Json();
  EXPECT_FALSE(one["users"][0]["subscriber"]["override_superseded"].GetBool());
  // Stripe's deletion, when it arrives, changes nothing.
  g.status = "canceled";
  g.ended_at = g.canceled_at = g.period_end;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), g).ok());
  ExpectProblem(Consume("u-g", "chat", "after-deletion"), 402, "trial_expired");
}

// The admin views judge a plan bought over an override with the request's clock, as consume
// does: past its scheduled end, before Stripe's deletion, the list, the overview's statuses,
// revenue by tier's subscribers and usage stats' plans show the override deciding again (they
// showed Professional while consume answered 402 trial_expired) -- an admin's trial that has
// ended by then, so no trial subscriber either (revenue by tier counted one; the list, the
// one subscriber and the overview show it trial_expired, not trialing); and no revenue:
// Stripe canceled Professional at its period's end and bills it no more, though its row is still
// active until the deletion arrives (paying 1 and MRR 4900 were counted past the end).
TEST_F(AdminRoutesTest, AdminViewsShowWhatConsumeDecidesPastABoughtPlansScheduledEnd) {
  AddSubscriber(OnPlan("u-h", ""), "h@x.com");
  ASSERT_EQ(Patch("h@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  clock_.Advance(kDay * kUs);
  const int64_t bought = NowSeconds();
  TestSubscription h = OnPlan("u-h", "professional", bought, bought + 30 * kDay);
  h.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), h).ok());
  ASSERT_EQ(Consume("u-h", "chat", "bought").status, 200);
  const std::string range = "?from=" + std::to_string(bought - kDay) +
                            "&to=" + std::to_string(bought + 40 * kDay);
  auto expect_views = [&](const std::string& plan, const std::string& status, bool superseded,
                          int64_t subscribers, int64_t paying) {
    int pages = 0;
    EXPECT_EQ(ListAll("&tier=" + plan + "&status=" + status, 50, &pages),
              std::vector<std::string>{"u-h"});
    rapidjson::Document list = Admin().Get(std::string(kAdminBase) + "list?q=u-h").Json();
    const auto& one = list["subscribers"][0];
    EXPECT_STREQ(one["plan_id"].GetString(), plan.c_str());
    EXPECT_STREQ(one["status"].GetString(), status.c_str());
    EXPECT_EQ(one["override_superseded"].GetBool(), superseded);
    rapidjson::Document single = Admin().Get(std::string(kAdminBase) + "h@x.com").Json();
    EXPECT_STREQ(single["users"][0]["subscriber"]["status"].GetString(), status.c_str());
    rapidjson::Document overview = Admin().Get(std::string(kAdminBase) + "analytics/overview")
                                       .Json();
    ASSERT_TRUE(overview["subscribers"]["by_status"].HasMember(status.c_str()));
    EXPECT_EQ(overview["subscribers"]["by_status"][status.c_str()].GetInt64(), 1) << status;
    EXPECT_EQ(overview["subscribers"]["paying"].GetInt64(), paying);
    EXPECT_EQ(overview["subscribers"]["comped"].GetInt64(), 0);
    EXPECT_EQ(overview["revenue"]["mrr_cents"].GetInt64(), 4900 * paying);
    rapidjson::Document tiers_doc =
        Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier").Json();
    std::map<std::string, const rapidjson::Value*> tiers;
    for (const auto& t : tiers_doc["tiers"].GetArray()) tiers[t["plan_id"].GetString()] = &t;
    EXPECT_EQ((*tiers[plan])["subscribers"].GetInt64(), subscribers) << plan;
    EXPECT_EQ((*tiers["professional"])["paying"].GetInt64(), paying);
    rapidjson::Document stats =
        Admin().Get(std::string(kAdminBase) + "analytics/usage-stats" + range).Json();
    EXPECT_EQ(stats["usage"]["by_plan"][plan.c_str()].GetInt64(), 1) << plan;
  };
  expect_views("professional", "active", true, 1, 1);
  clock_.Set((bought + 30 * kDay + 3600) * kUs);  // past the period's end, no deletion yet
  ExpectProblem(Consume("u-h", "chat", "after-end"), 402, "trial_expired");
  // The override decides again, and its trial has ended: trial_expired in every view (the list
  // showed the override's stored trialing next to the overview's trial_expired 1).
  expect_views("trial", "trial_expired", false, 0, 0);
  rapidjson::Document single = Admin().Get(std::string(kAdminBase) + "h@x.com").Json();
  EXPECT_STREQ(single["users"][0]["subscriber"]["override"]["status"].GetString(), "trialing");
}

// Canceled at its period's end, a subscription grants nothing once the period is over, though
// Stripe's customer.subscription.deleted has not arrived (it is retried for up to 3 days; ledgerd
// may be down): no access, no consume in a new month with a fresh quota.
TEST_F(AdminRoutesTest, ASubscriptionCanceledAtItsPeriodsEndGrantsNothingAfterIt) {
  TestSubscription t = OnPlan("u-end", "starter", kNow - 29 * kDay, kNow + kDay);
  t.cancel_at_period_end = true;
  AddSubscriber(t, "end@x.com");
  TestSubscription at = OnPlan("u-at", "professional", kNow - 10 * kDay, kNow + 20 * kDay);
  at.cancel_at = kNow + 2 * kDay;  // a date set in the portal
  AddSubscriber(at, "at@x.com");
  auto check = [&](const std::string& user) {
    TestHttpClient client("127.0.0.1", stack_->port());
    client.set_bearer(kServiceToken);
    HttpReply r = client.Post("/api/v1/subscriptions/check-access/chat?user_id=" + user, "");
    EXPECT_EQ(r.status, 200) << r.body;
    return r;
  };
  EXPECT_TRUE(check("u-end").Json()["allowed"].GetBool());
  EXPECT_EQ(Consume("u-end", "chat", "in-period").status, 200);
  clock_.Advance(kDay * kUs + 3600 * kUs);  // the period ended an hour ago
  HttpReply r = check("u-end");
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "subscription_required");
  ExpectProblem(Consume("u-end", "chat", "after-period"), 402, "subscription_required");
  r = User("u-end").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_FALSE(doc["has_access"].GetBool()) << r.body;
  EXPECT_TRUE(doc["quota"].IsNull()) << r.body;
  EXPECT_STREQ(doc["status"].GetString(), "active");  // what Stripe said last
  r = User("u-end").Get("/api/v1/usage/summary");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  // cancel_at: until then, not after.
  EXPECT_TRUE(check("u-at").Json()["allowed"].GetBool());
  clock_.Advance(kDay * kUs);
  EXPECT_FALSE(check("u-at").Json()["allowed"].GetBool());
  ExpectProblem(Consume("u-at", "chat", "after-cancel-at"), 402, "subscription_required");
}

// The admin views judge the scheduled end as consume does: an hour past the end of a period the
// user canceled at its end, Stripe's deletion not here yet, consume answers 402
// subscription_required -- and the list, the one-subscriber page and revenue by tier no longer
// show access "granted" or count the user, and show it canceled, as the deletion will say
// (?status=canceled; Stripe's status, still active, is in "stripe"): they listed it under
// ?status=active as "status":"active" while the overview counted it canceled.
TEST_F(AdminRoutesTest, AdminViewsJudgeAScheduledEndAsConsumeDoes) {
  TestSubscription t = OnPlan("u-end", "starter", kNow - 29 * kDay, kNow + kDay);
  t.cancel_at_period_end = true;
  AddSubscriber(t, "end@x.com");
  auto expect_views = [&](const std::string& access, const std::string& status,
                          int64_t subscribers) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "list?status=" + status);
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document list = r.Json();
    ASSERT_EQ(list["subscribers"].Size(), 1u) << r.body;
    EXPECT_STREQ(list["subscribers"][0]["access"].GetString(), access.c_str()) << r.body;
    EXPECT_STREQ(list["subscribers"][0]["status"].GetString(), status.c_str()) << r.body;
    EXPECT_STREQ(list["subscribers"][0]["stripe"]["status"].GetString(), "active") << r.body;
    r = Admin().Get(std::string(kAdminBase) + "list?status=" +
                    (status == "active" ? "canceled" : "active"));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.Json()["subscribers"].Size(), 0u) << r.body;
    r = Admin().Get(std::string(kAdminBase) + "end@x.com");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["access"].GetString(), access.c_str());
    EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["status"].GetString(), status.c_str());
    rapidjson::Document tiers_doc =
        Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier").Json();
    for (const auto& tier : tiers_doc["tiers"].GetArray()) {
      if (std::string(tier["plan_id"].GetString()) != "starter") continue;
      EXPECT_EQ(tier["subscribers"].GetInt64(), subscribers);
    }
  };
  expect_views("granted", "active", 1);
  clock_.Set((kNow + kDay + 3600) * kUs);  // T + 1 h: the period has ended, no deletion yet
  ExpectProblem(Consume("u-end", "chat", "after-end"), 402, "subscription_required");
  HttpReply mine = User("u-end").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(mine.status, 200) << mine.body;
  EXPECT_FALSE(mine.Json()["has_access"].GetBool()) << mine.body;
  expect_views("none", "canceled", 0);
}

// The list's status is the overview's: for every by_status key, list?status=<key> returns that
// many users, each showing that "status", and the one-subscriber page agrees. The list showed
// and filtered on the stored status, and refused ?status=trial_expired (400): a
// cancel_at_period_end an hour past its period, the deletion late, was by_status.canceled 1 but
// listed under ?status=active as "status":"active", as an admin's trial past its days was
// listed trialing next to by_status.trial_expired 1.
TEST_F(AdminRoutesTest, ListStatusesAreTheOverviewsByStatus) {
  AddSubscriber(OnPlan("u-expired", ""), "expired@x.com");
  ASSERT_EQ(Patch("expired@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  clock_.Advance(8 * kDay * kUs);  // past the admin's trial's seven days
  const int64_t now = NowSeconds();
  AddSubscriber(OnPlan("u-active", "starter", now - 10 * kDay, now + 20 * kDay), "a@x.com");
  TestSubscription trialing = OnPlan("u-trialing", "trial", "trialing");
  trialing.trial_start = trialing.period_start = now - 2 * kDay;
  trialing.trial_end = trialing.period_end = now + 5 * kDay;
  AddSubscriber(trialing, "t@x.com");
  TestSubscription ended = OnPlan("u-ended", "starter", now - 30 * kDay, now - 3600);
  ended.cancel_at_period_end = true;  // the period ended an hour ago, the deletion is late
  AddSubscriber(ended, "end@x.com");
  TestSubscription canceled = OnPlan("u-canceled", "starter", "canceled");
  canceled.canceled_at = canceled.ended_at = now - 5 * kDay;
  AddSubscriber(canceled, "c@x.com");
  AddSubscriber(OnPlan("u-past-due", "enterprise", "past_due"), "p@x.com");
  AddSubscriber(OnPlan("u-suspended", "professional", now - 10 * kDay, now + 20 * kDay),
                "s@x.com");
  ASSERT_EQ(Patch("s@x.com", R"({"status":"suspended"})").status, 200);
  AddSubscriber(OnPlan("u-none", ""), "n@x.com");
  ExpectProblem(Consume("u-expired", "chat", "k"), 402, "trial_expired");
  ExpectProblem(Consume("u-ended", "chat", "k"), 402, "subscription_required");

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  const rapidjson::Document overview = r.Json();
  const auto& by_status = overview["subscribers"]["by_status"];
  const std::map<std::string, int64_t> expected = {
      {"active", 1}, {"trialing", 1}, {"trial_expired", 1}, {"canceled", 3},
      {"past_due", 1}, {"none", 1}};
  int64_t listed = 0;
  for (const auto& [key, count] : by_status.GetObject()) {
    const std::string status = key.GetString();
    const auto want = expected.find(status);
    EXPECT_EQ(count.GetInt64(), want == expected.end() ? 0 : want->second) << status;
    int pages = 0;
    const std::vector<std::string> users = ListAll("&status=" + status, 50, &pages);
    EXPECT_EQ(static_cast<int64_t>(users.size()), count.GetInt64()) << status;
    listed += static_cast<int64_t>(users.size());
    for (const std::string& user : users) {
      r = Admin().Get(std::string(kAdminBase) + "list?q=" + user);
      ASSERT_EQ(r.status, 200) << r.body;
      EXPECT_STREQ(r.Json()["subscribers"][0]["status"].GetString(), status.c_str()) << user;
      r = Admin().Get(std::string(kAdminBase) + user);
      ASSERT_EQ(r.status, 200) << r.body;
      EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["status"].GetString(), status.c_str())
          << user;
    }
  }
  EXPECT_EQ(listed, overview["subscribers"]["total"].GetInt64());
  EXPECT_EQ(listed, 8);
  int pages = 0;
  EXPECT_EQ(ListAll("&status=canceled", 50, &pages),
            (std::vector<std::string>{"u-canceled", "u-ended", "u-suspended"}));
  EXPECT_EQ(ListAll("&status=trial_expired", 50, &pages),
            std::vector<std::string>{"u-expired"});
  // What was stored stays visible: Stripe's status, the override's.
  r = Admin().Get(std::string(kAdminBase) + "list?q=u-ended");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["subscribers"][0]["stripe"]["status"].GetString(), "active") << r.body;
  r = Admin().Get(std::string(kAdminBase) + "list?q=u-expired");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["subscribers"][0]["override"]["status"].GetString(), "trialing")
      << r.body;
}

// An ended trial grants nothing in the admin views, as consume decides (402 trial_expired): an
// admin's trial past its seven days, and a Stripe trial whose first charge was declined (past
// due). The views judged the status alone: the list showed access "granted" ("grace" for the
// past due one), the overview counted the admin's trial in `comped` for good, and revenue by
// tier counted both in the trial's subscribers. The overview counted the admin's trial as
// trialing (subscribers.trialing and by_status) for good: it is trial_expired from its end.
TEST_F(AdminRoutesTest, AdminViewsShowAnEndedTrialAsConsumeDoes) {
  AddSubscriber(OnPlan("u-g", ""), "g@x.com");
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  AddSubscriber(TrialPastDue("u-t", kNow - 8 * kDay, kNow - 1 * kDay, kNow + 29 * kDay),
                "t@x.com");
  ExpectProblem(Consume("u-t", "chat", "declined"), 402, "trial_expired");
  auto expect_views = [&](const std::string& g_access, int64_t comped, int64_t trials,
                          int64_t trialing, int64_t expired) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "list");
    ASSERT_EQ(r.status, 200) << r.body;
    std::map<std::string, std::string> access;
    const rapidjson::Document list = r.Json();
    for (const auto& one : list["subscribers"].GetArray()) {
      access[one["user_id"].GetString()] = one["access"].GetString();
    }
    EXPECT_EQ(access["u-g"], g_access) << r.body;
    EXPECT_EQ(access["u-t"], "none") << r.body;
    r = Admin().Get(std::string(kAdminBase) + "g@x.com");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["access"].GetString(), g_access.c_str());
    r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    ASSERT_EQ(r.status, 200) << r.body;
    const rapidjson::Document overview = r.Json();
    const auto& subscribers = overview["subscribers"];
    EXPECT_EQ(subscribers["comped"].GetInt64(), comped) << r.body;
    EXPECT_EQ(subscribers["trialing"].GetInt64(), trialing) << r.body;
    EXPECT_EQ(subscribers["by_status"]["trialing"].GetInt64(), trialing) << r.body;
    ASSERT_TRUE(subscribers["by_status"].HasMember("trial_expired")) << r.body;
    EXPECT_EQ(subscribers["by_status"]["trial_expired"].GetInt64(), expired) << r.body;
    // u-t: Stripe still retries its first charge (awaiting payment).
    EXPECT_EQ(subscribers["by_status"]["past_due"].GetInt64(), 1) << r.body;
    r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
    ASSERT_EQ(r.status, 200) << r.body;
    const rapidjson::Document tiers = r.Json();
    for (const auto& tier : tiers["tiers"].GetArray()) {
      if (std::string(tier["plan_id"].GetString()) != "trial") continue;
      EXPECT_EQ(tier["subscribers"].GetInt64(), trials) << r.body;
    }
  };
  EXPECT_EQ(Consume("u-g", "chat", "day-1").status, 200);
  expect_views("granted", 1, 1, 1, 0);
  clock_.Advance(8 * kDay * kUs);  // past the admin's trial's seven days
  ExpectProblem(Consume("u-g", "chat", "day-9"), 402, "trial_expired");
  HttpReply mine = User("u-g").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(mine.status, 200) << mine.body;
  EXPECT_FALSE(mine.Json()["has_access"].GetBool()) << mine.body;
  expect_views("none", 0, 0, 0, 1);
}

// A subscription past its scheduled end (its period's end with cancel_at_period_end, or its
// cancel_at) is not revenue, and is churn, before Stripe's deletion arrives (retried for up to 3
// days): Stripe canceled it there and bills it no more. Counted as still paying, revenue by
// tier's Starter row said subscribers 0 next to paying 1 and MRR 1900, churn counted it in
// paying_at_start but not as churned, and a user who bought Professional in that gap made MRR
// 1900 + 4900. Its status in the overview is canceled, as the deletion will say: by_status
// counted it active next to churned 1 and paying 0.
TEST_F(AdminRoutesTest, ASubscriptionPastItsScheduledEndIsNotRevenueButChurn) {
  TestSubscription t = OnPlan("u-end", "starter", kNow - 29 * kDay, kNow + kDay);
  t.cancel_at_period_end = true;
  AddSubscriber(t, "end@x.com");
  TestSubscription at = OnPlan("u-at", "professional", kNow - 10 * kDay, kNow + 20 * kDay);
  at.cancel_at = kNow + 2 * kDay;  // a date set in the portal
  AddSubscriber(at, "at@x.com");
  auto expect_figures = [&](int64_t paying, int64_t mrr, int64_t churned, int64_t starter,
                            int64_t professional, int64_t active, int64_t canceled) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), paying) << r.body;
    EXPECT_EQ(doc["subscribers"]["by_status"]["active"].GetInt64(), active) << r.body;
    EXPECT_EQ(doc["subscribers"]["by_status"]["canceled"].GetInt64(), canceled) << r.body;
    EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), mrr) << r.body;
    EXPECT_EQ(doc["revenue"]["arr_cents"].GetInt64(), mrr * 12) << r.body;
    EXPECT_EQ(doc["churn"]["churned"].GetInt64(), churned) << r.body;
    r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
    ASSERT_EQ(r.status, 200) << r.body;
    doc = r.Json();
    std::map<std::string, const rapidjson::Value*> tiers;
    for (const auto& tier : doc["tiers"].GetArray()) tiers[tier["plan_id"].GetString()] = &tier;
    EXPECT_EQ((*tiers["starter"])["paying"].GetInt64(), starter) << r.body;
    EXPECT_EQ((*tiers["starter"])["mrr_cents"].GetInt64(), 1900 * starter) << r.body;
    EXPECT_EQ((*tiers["professional"])["paying"].GetInt64(), professional) << r.body;
    EXPECT_EQ(doc["total"]["paying"].GetInt64(), starter + professional) << r.body;
    EXPECT_EQ(doc["total"]["mrr_cents"].GetInt64(), mrr) << r.body;
  };
  expect_figures(2, 6800, 0, 1, 1, 2, 0);
  clock_.Set((kNow + kDay + 3600) * kUs);  // u-end's period ended an hour ago, no deletion yet
  ExpectProblem(Consume("u-end", "chat", "after-end"), 402, "subscription_required");
  expect_figures(1, 4900, 1, 0, 1, 1, 1);
  // Paying since before the window began, lost inside it: the rate is 1 of 1.
  rapidjson::Document doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 1);
  EXPECT_EQ(doc["churn"]["rate"].GetDouble(), 1.0);
  clock_.Set((kNow + 2 * kDay + 3600) * kUs);  // past u-at's cancel_at
  ExpectProblem(Consume("u-at", "chat", "after-cancel-at"), 402, "subscription_required");
  expect_figures(0, 0, 2, 0, 0, 0, 2);
  // u-end buys Professional in the gap: what Stripe bills is that alone.
  const int64_t now = NowSeconds();
  TestSubscription again = OnPlan("u-end", "professional", now, now + 30 * kDay);
  again.subscription_id = "sub_u-end_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), again).ok());
  // A switch, not churn (u-at alone is churned, and was not paying when the window began): u-end
  // paid Starter when the window began and stays in the base.
  auto expect_base = [&]() {
    rapidjson::Document doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
    EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 1);
    EXPECT_EQ(doc["churn"]["rate"].GetDouble(), 0.0);
  };
  expect_figures(1, 4900, 1, 0, 1, 1, 1);
  expect_base();
  // Stripe's deletions, when they arrive, change nothing.
  t.status = at.status = "canceled";
  t.ended_at = t.canceled_at = t.period_end;
  at.ended_at = at.canceled_at = at.cancel_at;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), t).ok());
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), at).ok());
  expect_figures(1, 4900, 1, 0, 1, 1, 1);
  expect_base();
}

// Trial conversion judges a subscription past its scheduled end as Stripe's deletion will: a
// trial canceled at its end is lost there, no longer in its trial (it was counted in_trial until
// the deletion arrived), and a trial that converted and was canceled at its period's end stays
// converted, though it pays no more.
TEST_F(AdminRoutesTest, TrialConversionJudgesAScheduledEndAsTheDeletionWill) {
  TestSubscription d = OnPlan("u-d", "trial", "trialing");
  d.trial_start = d.period_start = kNow - 6 * kDay;
  d.trial_end = d.period_end = kNow + kDay;
  d.cancel_at_period_end = true;
  AddSubscriber(d, "d@x.com");
  TestSubscription f = OnPlan("u-f", "starter", kNow - 29 * kDay, kNow + kDay);
  f.trial_start = kNow - 36 * kDay;
  f.trial_end = kNow - 29 * kDay;
  f.cancel_at_period_end = true;
  AddSubscriber(f, "f@x.com");
  PayInvoice("u-f", "sub_u-f", "in_f1", 1900, kNow - 29 * kDay);
  auto expect_conversion = [&](int64_t in_trial, int64_t lost) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    const auto& conversion = doc["trial_conversion"];
    EXPECT_EQ(conversion["trials"].GetInt64(), 2) << r.body;
    EXPECT_EQ(conversion["converted"].GetInt64(), 1) << r.body;
    EXPECT_EQ(conversion["in_trial"].GetInt64(), in_trial) << r.body;
    EXPECT_EQ(conversion["lost"].GetInt64(), lost) << r.body;
  };
  expect_conversion(1, 0);
  clock_.Set((kNow + kDay + 3600) * kUs);  // both ended an hour ago, no deletion yet
  expect_conversion(0, 1);
  rapidjson::Document doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 0);
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1);  // u-f; u-d ended within its trial
}

// A trial past its end while Stripe still calls it trialing (its trial-end update, and the
// outcome of the first charge, not arrived yet) is awaiting payment, not in its trial: consume
// answers 402 trial_expired and by_status counts it trial_expired, and every view agrees. It was
// counted trial_conversion.in_trial 1 next to by_status.trial_expired 1 and trialing 0.
TEST_F(AdminRoutesTest, ATrialPastItsEndIsAwaitingPaymentNotInItsTrial) {
  TestSubscription t = OnPlan("u-t", "trial", "trialing");
  t.trial_start = t.period_start = kNow - 7 * kDay - 3600;
  t.trial_end = t.period_end = kNow - 3600;
  AddSubscriber(t, "t@x.com");
  TestSubscription running = OnPlan("u-r", "trial", "trialing");  // a trial still running
  running.trial_start = running.period_start = kNow - 2 * kDay;
  running.trial_end = running.period_end = kNow + 5 * kDay;
  AddSubscriber(running, "r@x.com");
  ExpectProblem(Consume("u-t", "chat", "late"), 402, "trial_expired");
  ASSERT_EQ(Consume("u-r", "chat", "running").status, 200);

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["by_status"]["trialing"].GetInt64(), 1) << r.body;  // u-r
  EXPECT_EQ(doc["subscribers"]["by_status"]["trial_expired"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["subscribers"]["trialing"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 0) << r.body;
  const auto& conversion = doc["trial_conversion"];
  EXPECT_EQ(conversion["trials"].GetInt64(), 2) << r.body;
  EXPECT_EQ(conversion["in_trial"].GetInt64(), 1) << r.body;  // u-r, as by_status.trialing
  EXPECT_EQ(conversion["awaiting_payment"].GetInt64(), 1) << r.body;  // u-t
  EXPECT_EQ(conversion["converted"].GetInt64(), 0) << r.body;
  EXPECT_EQ(conversion["lost"].GetInt64(), 0) << r.body;
  // The list row and revenue by tier judge it as consume does: no access, not a trial subscriber.
  r = Admin().Get(std::string(kAdminBase) + "list?q=u-t");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["subscribers"][0]["status"].GetString(), "trial_expired") << r.body;
  EXPECT_STREQ(r.Json()["subscribers"][0]["access"].GetString(), "none") << r.body;
  r = Admin().Get(std::string(kAdminBase) + "analytics/revenue-by-tier");
  ASSERT_EQ(r.status, 200) << r.body;
  const rapidjson::Document tiers = r.Json();
  for (const auto& tier : tiers["tiers"].GetArray()) {
    if (std::string(tier["plan_id"].GetString()) != "trial") continue;
    EXPECT_EQ(tier["subscribers"].GetInt64(), 1) << r.body;  // u-r
    EXPECT_EQ(tier["paying"].GetInt64(), 0) << r.body;
  }

  // Stripe's update arrives: the first charge was declined. Still awaiting payment, as before.
  t.status = "past_due";
  t.period_start = kNow - 3600;
  t.period_end = kNow + 29 * kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), t).ok());
  doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["trial_conversion"]["in_trial"].GetInt64(), 1);
  EXPECT_EQ(doc["trial_conversion"]["awaiting_payment"].GetInt64(), 1);
}

// A window ends where access does: with cancel_at in 2 days of a 20-day period, the window's
// end, X-RateLimit-Reset and window_end are the cancel_at, and the quota used up is 402 (no
// retry can succeed before access ends, as on a trial's last day), not a 429 whose Retry-After
// (≈ 20 days) pointed past the end of access. check-access, my-access and the summary agree.
TEST_F(AdminRoutesTest, AQuotaUsedUpBeforeAScheduledEndIsNotARetryPastIt) {
  TestSubscription at = OnPlan("u-at", "professional", kNow - 10 * kDay, kNow + 20 * kDay);
  at.cancel_at = kNow + 2 * kDay;  // a date set in the portal
  AddSubscriber(at, "at@x.com");
  TestHttpClient service("127.0.0.1", stack_->port());
  service.set_bearer(kServiceToken);
  HttpReply r = service.Post("/api/v1/usage/consume",
                             R"({"user_id":"u-at","service":"chat","quantity":9999,)"
                             R"("idempotency_key":"most"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["window_end"].GetString()),
            pj::FormatRfc3339Seconds(kNow + 2 * kDay));
  EXPECT_EQ(r.Header("X-RateLimit-Reset"), std::to_string(2 * kDay));
  ASSERT_EQ(Consume("u-at", "chat", "last").status, 200);
  HttpReply over = Consume("u-at", "chat", "over");
  ExpectProblem(over, 402, "subscription_required");
  EXPECT_EQ(over.Header("Retry-After"), "") << over.body;
  TestHttpClient client("127.0.0.1", stack_->port());
  client.set_bearer(kServiceToken);
  r = client.Post("/api/v1/subscriptions/check-access/chat?user_id=u-at", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "subscription_required");
  r = User("u-at").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  ASSERT_TRUE(r.Json()["access_ended"].IsString()) << r.body;
  EXPECT_STREQ(r.Json()["access_ended"].GetString(), "subscription_required");
  r = User("u-at").Get("/api/v1/usage/summary");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  EXPECT_EQ(std::string(r.Json()["current"]["window_end"].GetString()),
            pj::FormatRfc3339Seconds(kNow + 2 * kDay));
}

// The same quota used up before the scheduled end of a plan bought over a comp: the comp comes
// back at that end, so it is a 429 until then, not the 402 "subscribe to continue" that told a
// paying user to buy a plan (and my-access, check-access and BYOK said access had ended); an
// admin's trial that has run out by then leaves it a 402.
TEST_F(AdminRoutesTest, AQuotaUsedUpBeforeTheEndOfAPlanBoughtOverACompWaitsForTheComp) {
  AddSubscriber(OnPlan("u-c", ""), "c@x.com");
  AddSubscriber(OnPlan("u-t", ""), "t@x.com");
  ASSERT_EQ(Patch("c@x.com", R"({"tier":"starter","status":"active"})").status, 200);
  ASSERT_EQ(Patch("t@x.com", R"({"tier":"trial","status":"trialing"})").status, 200);
  clock_.Advance(kDay * kUs);
  const int64_t bought = NowSeconds();
  for (const char* user : {"u-c", "u-t"}) {
    TestSubscription sub = OnPlan(user, "professional", bought, bought + 30 * kDay);
    sub.cancel_at = bought + 20 * kDay;
    ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), sub).ok());
  }
  clock_.Advance(15 * kDay * kUs);  // 5 days before cancel_at; the admin's trial has ended
  TestHttpClient service("127.0.0.1", stack_->port());
  service.set_bearer(kServiceToken);
  for (const char* user : {"u-c", "u-t"}) {
    HttpReply r = service.Post("/api/v1/usage/consume", std::string(R"({"user_id":")") + user +
                                                            R"(","service":"chat",)"
                                                            R"("quantity":10000,)"
                                                            R"("idempotency_key":"all"})");
    ASSERT_EQ(r.status, 200) << r.body;
  }
  HttpReply over = Consume("u-c", "chat", "over");
  ExpectProblem(over, 429, "quota_exceeded");
  EXPECT_EQ(over.Header("Retry-After"), std::to_string(5 * kDay)) << over.body;
  HttpReply access = User("u-c").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_TRUE(access.Json()["has_access"].GetBool()) << access.body;
  ExpectProblem(Consume("u-t", "chat", "over"), 402, "subscription_required");
  clock_.Advance(5 * kDay * kUs);  // cancel_at: the comp decides
  access = User("u-c").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_TRUE(access.Json()["has_access"].GetBool()) << access.body;
  EXPECT_STREQ(access.Json()["plan_id"].GetString(), "starter");
}

TEST_F(AdminRoutesTest, ASuspensionRefusesMeteringButLeavesStripeAlone) {
  AddCustomerBase();
  ASSERT_EQ(Consume("u-a", "chat", "before").status, 200);
  ASSERT_EQ(Patch("a@x.com", R"({"status":"canceled","notes":"abuse"})").status, 200);
  EXPECT_EQ(Consume("u-a", "chat", "after").status, 402);
  // A subscription the user starts after the suspension (at Stripe: checkout refuses) lifts
  // nothing.
  clock_.Advance(kDay * kUs);
  TestSubscription later = OnPlan("u-a", "starter", NowSeconds(), NowSeconds() + 30 * kDay);
  later.subscription_id = "sub_u-a-later";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), later).ok());
  EXPECT_EQ(Consume("u-a", "chat", "after-later").status, 402);
  clock_.Advance(kDay * kUs);
  HttpReply status = User("u-a").Get("/api/v1/billing/subscription-status");
  ASSERT_EQ(status.status, 200) << status.body;
  EXPECT_NE(status.body.find(R"("status":"active")"), std::string::npos) << status.body;
  rapidjson::Document doc = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 4);
  EXPECT_EQ(doc["subscribers"]["by_status"]["canceled"].GetInt64(), 2);
  int pages = 0;
  EXPECT_EQ(ListAll("&status=canceled", 50, &pages), (std::vector<std::string>{"u-a", "u-e"}));
  // Lifting it restores access in the same window.
  ASSERT_EQ(Patch("a@x.com", R"({"status":null})").status, 200);
  EXPECT_EQ(Consume("u-a", "chat", "lifted").status, 200);
  // The seed's names: suspended and cancelled revoke, trial grants.
  for (const char* revoked : {"suspended", "cancelled"}) {
    ASSERT_EQ(Patch("a@x.com", std::string(R"({"status":")") + revoked + R"("})").status, 200);
    EXPECT_EQ(Consume("u-a", "chat", std::string("after-") + revoked).status, 402) << revoked;
    ASSERT_EQ(Patch("a@x.com", R"({"status":"trial"})").status, 200);
    EXPECT_EQ(Consume("u-a", "chat", std::string("trial-") + revoked).status, 200) << revoked;
  }
  rapidjson::Document one = Admin().Get(std::string(kAdminBase) + "a@x.com").Json();
  EXPECT_STREQ(one["users"][0]["subscriber"]["status"].GetString(), "trialing");
}

// Without an '@' the `{email}` is a user id: an account that never checked out (no email known)
// can be looked at, comped and reset.
TEST_F(AdminRoutesTest, AUserIdAddressesAnAccountThatNeverCheckedOut) {
  AddCustomerBase();
  EXPECT_EQ(Consume("u-new", "chat", "k0").status, 402);  // no plan
  HttpReply r = Patch("u-new", R"({"tier":"enterprise","status":"active","notes":"partner"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Consume("u-new", "chat", "k1").status, 200);
  r = Admin().Get(std::string(kAdminBase) + "u-new");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u);
  EXPECT_STREQ(doc["users"][0]["subscriber"]["plan_id"].GetString(), "enterprise");
  EXPECT_EQ(doc["users"][0]["usage"]["used"].GetInt64(), 1);
  r = Admin().Post(std::string(kAdminBase) + "u-new/reset-usage", "");
  ASSERT_EQ(r.status, 200) << r.body;
  // The account is in the list and the figures like any other (it has no customer.linked.v1).
  int pages = 0;
  EXPECT_EQ(ListAll("&q=u-new", 50, &pages), (std::vector<std::string>{"u-new"}));
  EXPECT_EQ(ListAll("&tier=enterprise", 50, &pages), (std::vector<std::string>{"u-c", "u-new"}));
  rapidjson::Document overview = Admin().Get(std::string(kAdminBase) + "analytics/overview").Json();
  EXPECT_EQ(overview["subscribers"]["total"].GetInt64(), 8);
  EXPECT_EQ(overview["subscribers"]["comped"].GetInt64(), 1);
  // The same user by email, when one is linked: u-a.
  r = Admin().Get(std::string(kAdminBase) + "u-a");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["email"].GetString(), "a@x.com");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "bad%01id"), 400, "invalid_parameter");
}

// A user id may hold an '@' (a JWT's sub is any user id: an IdP may use the email). With an '@'
// the `{email}` named only users whose email it is: carl@example.com's own account answered 404
// "no subscriber with that email" to GET, PATCH and reset-usage. It now names that user too once
// known (here: a subscription), beside every user with that email; GET and reset-usage of an '@'
// nobody is known by stay a 404 that appends nothing.
TEST_F(AdminRoutesTest, AUserIdWithAnAtSignCanBeOverridden) {
  const std::string carl = "carl@example.com";
  TestSubscription own = OnPlan(carl, "starter", kNow - 10 * kDay, kNow + 20 * kDay);
  own.customer_id = "cus_carl";
  own.subscription_id = "sub_carl";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), own).ok());
  ASSERT_EQ(Consume(carl, "chat", "k1").status, 200);

  HttpReply r = Patch(carl, R"({"tier":"enterprise","status":"active","notes":"partner"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), carl.c_str());
  HttpReply access = User(carl).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_STREQ(access.Json()["plan_id"].GetString(), "enterprise") << access.body;
  EXPECT_TRUE(access.Json()["overridden"].GetBool()) << access.body;
  EXPECT_EQ(Consume(carl, "bolt-diy", "k2").status, 200);

  r = Admin().Get(kAdminBase + carl);
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["subscriber"]["plan_id"].GetString(), "enterprise") << r.body;
  r = Admin().Post(kAdminBase + carl + "/reset-usage", "");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), carl.c_str());
  EXPECT_EQ(doc["users"][0]["used_before"].GetInt64(), 2) << r.body;

  // Another user whose email it is: the routes act on both, in user id order
  // (AnAtIdUsersOverrideStaysReachableWhenAnotherUserGetsThatEmail).
  AddSubscriber(OnPlan("u-work", "starter", kNow - 10 * kDay, kNow + 20 * kDay), carl);
  r = Patch(carl, R"({"notes":"both"})");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), carl.c_str());
  EXPECT_STREQ(doc["users"][1]["user_id"].GetString(), "u-work");
  r = Admin().Get(kAdminBase + carl);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["users"].Size(), 2u) << r.body;

  // Nobody is known by this one: GET and reset-usage make up no account (PATCH names the user
  // id, as one without an '@': AnAtSignUserWhoNeverPaidCanBeComped).
  const uint64_t head = Head();
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "nobody@example.com"), 404, "not_found");
  ExpectProblem(Admin().Post(std::string(kAdminBase) + "nobody@example.com/reset-usage", ""), 404,
                "not_found");
  EXPECT_EQ(Head(), head);
  ExpectReplayEqual();
}

// An '@' names the users with that email and the known user whose id is exactly it (here with a
// canceled subscription). PATCH {"tier":...} -- 200 for the email's user, who has a live
// subscription -- was 422 status_required for the whole request because the id-user has none:
// it is judged per user, applies to u-work and skips carl, saying why.
TEST_F(AdminRoutesTest, PatchByEmailWithATierOnlyStillWorksBesideAnAtIdUser) {
  const std::string carl = "carl@example.com";
  TestSubscription own = OnPlan(carl, "starter", "canceled");
  own.canceled_at = kNow - 5 * kDay;
  own.customer_id = "cus_carl";
  own.subscription_id = "sub_carl";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), own).ok());
  AddSubscriber(OnPlan("u-work", "starter", kNow - 10 * kDay, kNow + 20 * kDay), carl);

  const uint64_t head = Head();
  HttpReply r = Patch(carl, R"({"tier":"enterprise"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), carl.c_str());
  EXPECT_FALSE(doc["users"][0]["changed"].GetBool()) << r.body;
  EXPECT_TRUE(doc["users"][0]["override"].IsNull()) << r.body;
  ASSERT_TRUE(doc["users"][0]["skipped"].IsObject()) << r.body;
  EXPECT_STREQ(doc["users"][0]["skipped"]["type"].GetString(), "status_required") << r.body;
  EXPECT_STREQ(doc["users"][1]["user_id"].GetString(), "u-work");
  EXPECT_TRUE(doc["users"][1]["changed"].GetBool()) << r.body;
  EXPECT_TRUE(doc["users"][1]["skipped"].IsNull()) << r.body;
  EXPECT_EQ(Head(), head + 1);
  HttpReply access = User("u-work").Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_STREQ(access.Json()["plan_id"].GetString(), "enterprise") << access.body;
  access = User(carl).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_FALSE(access.Json()["overridden"].GetBool()) << access.body;
  r = Admin().Get(kAdminBase + carl);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.Json()["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(r.Json()["users"][0]["subscriber"]["user_id"].GetString(), carl.c_str()) << r.body;
  EXPECT_STREQ(r.Json()["users"][1]["subscriber"]["user_id"].GetString(), "u-work") << r.body;
  ExpectReplayEqual();
}

// An admin comps x@y.com, a user id (an IdP's sub) no user has as an email. Then u-2 checks out
// with a token whose email is x@y.com: from then on the '@' named u-2 alone, and x@y.com's
// override could be neither seen nor changed nor revoked ({"tier":null,"status":null} landed on
// u-2). The known id-user is named beside the email's users, and a change is judged per user.
TEST_F(AdminRoutesTest, AnAtIdUsersOverrideStaysReachableWhenAnotherUserGetsThatEmail) {
  const std::string user = "x@y.com";
  HttpReply r = Patch(user, R"({"tier":"enterprise","status":"active"})");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.Json()["users"].Size(), 1u) << r.body;
  AddSubscriber(OnPlan("u-2", ""), user);  // linked by its token's email, never subscribed

  r = Admin().Get(kAdminBase + user);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(doc["users"][0]["subscriber"]["user_id"].GetString(), "u-2") << r.body;
  EXPECT_STREQ(doc["users"][1]["subscriber"]["user_id"].GetString(), user.c_str()) << r.body;
  EXPECT_STREQ(doc["users"][1]["subscriber"]["override"]["plan_id"].GetString(), "enterprise")
      << r.body;

  // A tier alone changes x@y.com (its override has a status) and skips u-2 (nothing live); a
  // granting status alone skips u-2 too (no catalog plan) and changes nothing for x@y.com.
  uint64_t head = Head();
  r = Patch(user, R"({"tier":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_FALSE(doc["users"][0]["changed"].GetBool()) << r.body;
  EXPECT_STREQ(doc["users"][0]["skipped"]["type"].GetString(), "status_required") << r.body;
  EXPECT_TRUE(doc["users"][1]["changed"].GetBool()) << r.body;
  EXPECT_STREQ(doc["users"][1]["override"]["plan_id"].GetString(), "starter") << r.body;
  EXPECT_EQ(Head(), head + 1);
  r = Patch(user, R"({"status":"active"})");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(doc["users"][0]["skipped"]["type"].GetString(), "validation_failed") << r.body;
  EXPECT_FALSE(doc["users"][1]["changed"].GetBool()) << r.body;
  EXPECT_TRUE(doc["users"][1]["skipped"].IsNull()) << r.body;
  EXPECT_EQ(Head(), head + 1);

  // The revocation reaches x@y.com.
  r = Patch(user, R"({"tier":null,"status":null})");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 2u) << r.body;
  EXPECT_STREQ(doc["users"][1]["user_id"].GetString(), user.c_str()) << r.body;
  EXPECT_TRUE(doc["users"][1]["changed"].GetBool()) << r.body;
  EXPECT_TRUE(doc["users"][1]["override"].IsNull()) << r.body;
  HttpReply access = User(user).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_FALSE(access.Json()["overridden"].GetBool()) << access.body;

  // Nothing left for x@y.com (its row went with the override): u-2 alone, whom a tier alone
  // cannot take -- 422, nothing appended.
  head = Head();
  ExpectProblem(Patch(user, R"({"tier":"starter"})"), 422, "status_required");
  EXPECT_EQ(Head(), head);
  ExpectReplayEqual();
}

// A user id may hold an '@' (an IdP may use the email as sub). One ledgerd has never seen (no
// checkout, subscription or override) and no user has as an email: PATCH answered 404 "no
// subscriber with that email", so an admin could not comp one who never paid, as they can a
// user id without an '@'. PATCH now names that user id; GET and reset-usage still answer 404
// until ledgerd knows the user.
TEST_F(AdminRoutesTest, AnAtSignUserWhoNeverPaidCanBeComped) {
  const std::string user = "new@x.com";
  ExpectProblem(Consume(user, "chat", "k0"), 402, "subscription_required");
  const uint64_t head = Head();
  ExpectProblem(Admin().Get(kAdminBase + user), 404, "not_found");
  ExpectProblem(Admin().Post(kAdminBase + user + "/reset-usage", ""), 404, "not_found");
  EXPECT_EQ(Head(), head);

  HttpReply r = Patch(user, R"({"tier":"enterprise","status":"active","notes":"partner"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), user.c_str());
  EXPECT_EQ(Head(), head + 1);
  HttpReply access = User(user).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_STREQ(access.Json()["plan_id"].GetString(), "enterprise") << access.body;
  EXPECT_TRUE(access.Json()["overridden"].GetBool()) << access.body;
  EXPECT_EQ(Consume(user, "chat", "k1").status, 200);
  // Known now (an override): the other routes find the user.
  r = Admin().Get(kAdminBase + user);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.Json()["users"].Size(), 1u) << r.body;
  EXPECT_EQ(r.Json()["users"][0]["usage"]["used"].GetInt64(), 1) << r.body;
  ExpectReplayEqual();
}

// An email is a user's for the admin routes only when ledgerd gave it to Stripe from the user's
// own token. Mallory's token has no email claim: at Checkout she typed alice's a@x.com, and
// customer.linked.v1 gave her that email -- PATCH and reset-usage of a@x.com changed mallory's
// account too (a comp for alice comped her). Now they name alice alone; mallory's link stands.
TEST_F(AdminRoutesTest, AnEmailTypedAtCheckoutDoesNotJoinAnotherUsersOverride) {
  const int64_t start = kNow - 10 * kDay, end = kNow + 20 * kDay;
  AddSubscriber(OnPlan("alice", "starter", start, end), "a@x.com");
  AddSubscriber(OnPlan("mallory", "starter", start, end), "a@x.com", /*email_prefilled=*/false);
  std::string owner;
  ASSERT_TRUE(pj::GetCustomerUser(*ledger_->Snapshot(), "cus_mallory", &owner).ok());
  EXPECT_EQ(owner, "mallory");

  const uint64_t before = Head();
  HttpReply r = Patch("a@x.com", R"({"tier":"enterprise","status":"active"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), "alice");
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(before), 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, pj::kSubscriptionOverrideSetV1);
  EXPECT_EQ(events[0].subject, "alice");
  std::optional<pj::AdminOverride> mallorys;
  ASSERT_TRUE(pj::GetAdminOverride(*ledger_->Snapshot(), "mallory", &mallorys).ok());
  EXPECT_FALSE(mallorys);

  r = Admin().Get(std::string(kAdminBase) + "a@x.com");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_EQ(r.Json()["users"].Size(), 1u) << r.body;
  r = Admin().Post(std::string(kAdminBase) + "a@x.com/reset-usage", "");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u) << r.body;
  EXPECT_STREQ(doc["users"][0]["user_id"].GetString(), "alice");
  ExpectReplayEqual();
}

// Past a newer plan's scheduled end (its deletion late), the user's other plan, still billed, is
// the live subscription: the admin views show it (status active, plan starter), and a tier alone
// is granted over it. The newer plan was chosen for being newer and judged ended: the views said
// canceled with no access, and PATCH {"tier":...} was 422 status_required.
TEST_F(AdminRoutesTest, PastANewerPlansScheduledEndTheUsersOtherPlanIsLive) {
  AddSubscriber(OnPlan("u-two", "starter", kNow - 20 * kDay, kNow + 10 * kDay), "two@x.com");
  TestSubscription pro = OnPlan("u-two", "professional", kNow - 10 * kDay, kNow + kDay);
  pro.subscription_id = "sub_u-two_pro";
  pro.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), pro).ok());
  auto subscriber = [&] {
    rapidjson::Document one = Admin().Get(std::string(kAdminBase) + "two@x.com").Json();
    rapidjson::Document out;
    out.CopyFrom(one["users"][0]["subscriber"], out.GetAllocator());
    return out;
  };
  EXPECT_STREQ(subscriber()["plan_id"].GetString(), "professional");
  clock_.Set((kNow + kDay + 3600) * kUs);  // past Professional's end, no deletion yet
  rapidjson::Document now = subscriber();
  EXPECT_STREQ(now["status"].GetString(), "active");
  EXPECT_STREQ(now["plan_id"].GetString(), "starter");
  EXPECT_STREQ(now["stripe"]["subscription_id"].GetString(), "sub_u-two");
  HttpReply r = Patch("two@x.com", R"({"tier":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Consume("u-two", "tts", "tier-granted").status, 200);
}

// A tier alone takes its status from the user's subscription: for a user without a live one (none,
// canceled at Stripe, past its scheduled end) it grants nothing, and the writer refuses it (422
// status_required, nothing appended). PATCH {"tier":"enterprise"} of an account that never
// subscribed answered 200 changed:true and appended an override that comped nothing. Over a
// live subscription a tier alone is granted as before, and a comp's tier may change alone.
TEST_F(AdminRoutesTest, ATierWithoutAStatusNeedsALiveSubscription) {
  AddCustomerBase();
  TestSubscription end = OnPlan("u-end", "starter", kNow - 29 * kDay, kNow + kDay);
  end.cancel_at_period_end = true;
  AddSubscriber(end, "end@x.com");
  clock_.Set((kNow + kDay + 3600) * kUs);  // u-end's period ended an hour ago, no deletion yet
  const uint64_t head = Head();
  // u-g: linked, never subscribed; u-new: no row at all; u-e: canceled; u-end: past its end.
  for (const char* who : {"g@x.com", "u-new", "e@x.com", "end@x.com"}) {
    ExpectProblem(Patch(who, R"({"tier":"enterprise"})"), 422, "status_required");
    ExpectProblem(Patch(who, R"({"tier":"enterprise","status":null,"notes":"x"})"), 422,
                  "status_required");
  }
  EXPECT_EQ(Head(), head);
  ExpectProblem(Consume("u-g", "chat", "tier-refused"), 402, "subscription_required");
  rapidjson::Document one = Admin().Get(std::string(kAdminBase) + "g@x.com").Json();
  EXPECT_TRUE(one["users"][0]["subscriber"]["override"].IsNull());

  // A live subscription: the tier decides, its status is Stripe's (u-a pays for Starter).
  ExpectProblem(Consume("u-a", "tts", "starter"), 403, "service_not_in_plan");
  HttpReply r = Patch("a@x.com", R"({"tier":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.Json()["users"][0]["changed"].GetBool());
  EXPECT_EQ(Consume("u-a", "tts", "granted").status, 200);

  // A comp (tier and status): its tier changes alone; its status cleared alone would leave a
  // tier that grants nothing.
  ASSERT_EQ(Patch("g@x.com", R"({"tier":"enterprise","status":"active"})").status, 200);
  r = Patch("g@x.com", R"({"tier":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["users"][0]["override"]["plan_id"].GetString(), "starter");
  EXPECT_STREQ(r.Json()["users"][0]["override"]["status"].GetString(), "active");
  EXPECT_EQ(Consume("u-g", "chat", "comped").status, 200);
  const uint64_t comped = Head();
  ExpectProblem(Patch("g@x.com", R"({"status":null})"), 422, "status_required");
  EXPECT_EQ(Head(), comped);
  ASSERT_EQ(Patch("g@x.com", R"({"notes":"partner"})").status, 200);
  ASSERT_EQ(Patch("g@x.com", R"({"tier":null,"status":null})").status, 200);
  ExpectProblem(Consume("u-g", "chat", "cleared"), 402, "subscription_required");
}

// A status without a tier takes its plan from the user's subscription: for a user whose
// subscription has no catalog plan (none at all, or a Dashboard add-on alone) a status that grants
// access grants nothing, and the writer refuses it (422 validation_failed naming the tier, nothing
// appended), as it refuses a tier without a status. PATCH {"status":"active"} of an account that
// never subscribed answered 200 changed:true: the list showed it active and overridden, the
// overview counted by_status.active, and consume answered 402. A suspension (a status that grants
// nothing) needs no plan: it stops a later checkout. Over a subscription to a catalog plan, even
// a canceled one, a status alone comps that plan.
TEST_F(AdminRoutesTest, AGrantingStatusWithoutATierNeedsASubscriptionsPlan) {
  AddCustomerBase();
  AddSubscriber(OnPlan("u-x", ""), "x@x.com");
  SubscribeUxToADashboardAddOn();
  const uint64_t head = Head();
  // u-new: no row at all; u-g: linked, never subscribed; u-x: a Dashboard add-on alone.
  for (const char* who : {"u-new", "g@x.com", "x@x.com"}) {
    for (const char* body : {R"({"status":"active"})", R"({"status":"trial","notes":"x"})",
                             R"({"status":"past_due","tier":null})"}) {
      SCOPED_TRACE(std::string(who) + " " + body);
      HttpReply r = Patch(who, body);
      ExpectProblem(r, 422, "validation_failed");
      rapidjson::Document problem = r.Json();
      ASSERT_TRUE(problem.IsObject() && problem.HasMember("detail")) << r.body;
      EXPECT_EQ(std::string(problem["detail"].GetString()).rfind("tier: ", 0), 0u) << r.body;
    }
  }
  EXPECT_EQ(Head(), head);
  ExpectProblem(Consume("u-new", "chat", "status-refused"), 402, "subscription_required");

  // A comp's tier cleared alone would leave a status that grants nothing.
  ASSERT_EQ(Patch("u-new", R"({"tier":"enterprise","status":"active"})").status, 200);
  const uint64_t comped = Head();
  ExpectProblem(Patch("u-new", R"({"tier":null})"), 422, "validation_failed");
  EXPECT_EQ(Head(), comped);
  EXPECT_EQ(Consume("u-new", "chat", "comped").status, 200);

  // A suspension needs no plan; a status over a canceled Starter comps Starter.
  ASSERT_EQ(Patch("g@x.com", R"({"status":"suspended"})").status, 200);
  ExpectProblem(Consume("u-e", "chat", "canceled"), 402, "subscription_required");
  ASSERT_EQ(Patch("e@x.com", R"({"status":"active"})").status, 200);
  EXPECT_EQ(Consume("u-e", "chat", "comped-on-starter").status, 200);
}

// The overview counts a user by the status as consume judges it: a status that would grant access
// without a catalog plan to grant (a Dashboard add-on alone) grants nothing -- consume answers 402
// subscription_required, as to a user with no subscription -- so it is "none", not by_status.active
// next to access "none"; Stripe's own status stays in the row's stripe.status.
TEST_F(AdminRoutesTest, AStatusWithoutACatalogPlanCountsAsNone) {
  AddSubscriber(OnPlan("u-a", "starter", kNow - 10 * kDay, kNow + 20 * kDay), "a@x.com");
  AddSubscriber(OnPlan("u-x", ""), "x@x.com");
  SubscribeUxToADashboardAddOn();
  ExpectProblem(Consume("u-x", "chat", "addon"), 402, "subscription_required");
  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["subscribers"]["by_status"]["active"].GetInt64(), 1) << r.body;  // u-a
  EXPECT_EQ(doc["subscribers"]["by_status"]["none"].GetInt64(), 1) << r.body;    // u-x
  int pages = 0;
  EXPECT_EQ(ListAll("&status=active", 50, &pages), (std::vector<std::string>{"u-a"}));
  EXPECT_EQ(ListAll("&status=none", 50, &pages), (std::vector<std::string>{"u-x"}));
  r = Admin().Get(std::string(kAdminBase) + "x@x.com");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  const auto& row = doc["users"][0]["subscriber"];
  EXPECT_STREQ(row["status"].GetString(), "none") << r.body;
  EXPECT_STREQ(row["access"].GetString(), "none") << r.body;
  EXPECT_STREQ(row["stripe"]["status"].GetString(), "active") << r.body;
}

// A trial that converted (an invoice paid after its trial, or a period moved past the trial) stays
// converted whatever dunning or a cancellation made of it later, as churn judges the same
// subscription a paying customer lost: unpaid, or past due with Stripe's retries over, counted as
// a lost trial, and a subscription renewed past its trial with no invoice rows, canceled, was
// both churned and lost. A trial that never paid after its trial is still lost whatever its status
// became, and no paying customer: neither churned nor in churn's base.
TEST_F(AdminRoutesTest, AConvertedTrialLeftUnpaidStaysConverted) {
  auto trial_then = [&](const std::string& user, const std::string& status, int64_t trial_end,
                        int64_t period_start) {
    TestSubscription t = OnPlan(user, "starter", period_start, period_start + 30 * kDay);
    t.status = status;
    t.trial_start = trial_end - 7 * kDay;
    t.trial_end = trial_end;
    return t;
  };
  // Paid its first charge, then its renewal failed and dunning left it unpaid.
  AddSubscriber(trial_then("u-unpaid", "unpaid", kNow - 43 * kDay, kNow - 13 * kDay), "un@x.com");
  PayInvoice("u-unpaid", "sub_u-unpaid", "in_unpaid_1", 1900, kNow - 43 * kDay + 3600);
  // Paid its first charge, then its renewal failed every retry (payment_abandoned).
  AddSubscriber(trial_then("u-due", "past_due", kNow - 43 * kDay, kNow - 13 * kDay), "due@x.com");
  PayInvoice("u-due", "sub_u-due", "in_due_1", 1900, kNow - 43 * kDay + 3600);
  AbandonDuePayment("in_due_2", "evt_due_2");
  // Renewed past its trial (no invoice rows in the log), canceled 2 days ago.
  TestSubscription renewed =
      trial_then("u-renewed", "canceled", kNow - 53 * kDay, kNow - 23 * kDay);
  renewed.canceled_at = renewed.ended_at = kNow - 2 * kDay;
  AddSubscriber(renewed, "renewed@x.com");
  // Never paid after its trial: its first charge failed, then it was canceled. Lost.
  TestSubscription lost = trial_then("u-lost", "canceled", kNow - 13 * kDay, kNow - 13 * kDay);
  lost.canceled_at = lost.ended_at = kNow - 2 * kDay;
  AddSubscriber(lost, "lost@x.com");
  // Its first charge failed and dunning left it unpaid; Stripe rolled its period on regardless.
  // No invoice was ever paid: lost, not converted by the period past its trial.
  AddSubscriber(trial_then("u-never", "unpaid", kNow - 43 * kDay, kNow - 13 * kDay),
                "never@x.com");
  // As u-never, its first charge failed (the log holds the failure), and it was then canceled:
  // still lost, not converted by its rolled period once canceled, and no paying customer churned.
  TestSubscription never_canceled =
      trial_then("u-never-canceled", "canceled", kNow - 43 * kDay, kNow - 13 * kDay);
  never_canceled.canceled_at = never_canceled.ended_at = kNow - 2 * kDay;
  AddSubscriber(never_canceled, "never-canceled@x.com");
  ASSERT_TRUE(ledger::testing::SubmitWebhook(
                  ledger_.get(), ledger::testing::StripeInvoiceEventJson(ledger::testing::InvoiceOf(
                                     "u-never-canceled", "cus_u-never-canceled",
                                     "sub_u-never-canceled", "in_never_canceled_1",
                                     "invoice.payment_failed", "evt_never_canceled_1",
                                     kNow - 43 * kDay + 3600)))
                  .status.ok());

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& conversion = doc["trial_conversion"];
  EXPECT_EQ(conversion["trials"].GetInt64(), 6) << r.body;
  EXPECT_EQ(conversion["converted"].GetInt64(), 3) << r.body;  // unpaid, due, renewed
  EXPECT_EQ(conversion["lost"].GetInt64(), 3) << r.body;  // lost, never, never-canceled
  EXPECT_EQ(conversion["in_trial"].GetInt64(), 0) << r.body;
  EXPECT_EQ(conversion["awaiting_payment"].GetInt64(), 0) << r.body;
  EXPECT_DOUBLE_EQ(conversion["rate"].GetDouble(), 0.5) << r.body;
  // Churn judges them alike: u-renewed is a paying customer lost, u-lost and u-never-canceled
  // never were one; nor is u-never in the base.
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1) << r.body;
  EXPECT_EQ(doc["churn"]["paying_at_start"].GetInt64(), 3) << r.body;  // unpaid, due, renewed
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 0) << r.body;
}

// A trial that converted stays converted when the user later leaves it for a plan without a
// trial: conversion is judged on the subscription that had the trial, not on the user's current
// one (u-t dropped out of trials and converted once it bought Professional).
TEST_F(AdminRoutesTest, AConvertedTrialStaysConvertedAfterTheUserBuysAnotherPlan) {
  TestSubscription trial = OnPlan("u-t", "starter", "canceled");
  trial.period_start = kNow - 80 * kDay;
  trial.trial_start = kNow - 80 * kDay;
  trial.trial_end = kNow - 73 * kDay;
  trial.period_end = kNow - 13 * kDay;
  trial.canceled_at = trial.ended_at = kNow - 10 * kDay;
  AddSubscriber(trial, "t@x.com");
  PayInvoice("u-t", "sub_u-t", "in_t1", 1900, kNow - 73 * kDay);
  TestSubscription professional = OnPlan("u-t", "professional", kNow - 5 * kDay, kNow + 25 * kDay);
  professional.subscription_id = "sub_u-t_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), professional).ok());

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& conversion = doc["trial_conversion"];
  EXPECT_EQ(conversion["trials"].GetInt64(), 1) << r.body;
  EXPECT_EQ(conversion["converted"].GetInt64(), 1) << r.body;
  EXPECT_EQ(conversion["lost"].GetInt64(), 0) << r.body;
  EXPECT_EQ(conversion["in_trial"].GetInt64(), 0) << r.body;
  EXPECT_EQ(conversion["awaiting_payment"].GetInt64(), 0) << r.body;
  EXPECT_DOUBLE_EQ(conversion["rate"].GetDouble(), 1.0) << r.body;
}

// A trial that lapsed unpaid, and a Starter bought weeks later that the user pays for now: the
// trial won a customer, late. Judged on the lapsed trial alone the paying user counted lost.
TEST_F(AdminRoutesTest, ALapsedTrialWhoseUserPaysNowOnALaterPlanIsConverted) {
  for (const char* user : {"u-l", "u-lost"}) {  // each a trial canceled at its end, unpaid
    TestSubscription trial = OnPlan(user, "trial", "canceled");
    trial.trial_start = trial.period_start = kNow - 80 * kDay;
    trial.trial_end = trial.period_end = kNow - 73 * kDay;
    trial.canceled_at = trial.ended_at = kNow - 73 * kDay;
    AddSubscriber(trial, std::string(user) + "@x.com");
  }
  TestSubscription starter = OnPlan("u-l", "starter", kNow - 20 * kDay, kNow + 10 * kDay);
  starter.subscription_id = "sub_u-l_2";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), starter).ok());

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& conversion = doc["trial_conversion"];
  EXPECT_EQ(conversion["trials"].GetInt64(), 2) << r.body;
  EXPECT_EQ(conversion["converted"].GetInt64(), 1) << r.body;
  EXPECT_EQ(conversion["lost"].GetInt64(), 1) << r.body;
  EXPECT_DOUBLE_EQ(conversion["rate"].GetDouble(), 0.5) << r.body;
}

// Stripe deliveries without a billing period (README's stripe_send sends none): only a paid
// invoice says a trial paid after it. u-tess's trial ended canceled with nothing paid and was
// counted converted (no period meant never_paid_after_trial false); u-pat's first charge failed
// and Stripe retries it, and u-pat was a paying Starter customer in the MRR, converted. u-tom
// paid after his trial: converted, then churned.
TEST_F(AdminRoutesTest, WithoutABillingPeriodOnlyAPaidInvoiceConvertsATrial) {
  auto delivery = [&](const std::string& user, const std::string& event_type,
                      const std::string& status, int64_t trial_end, int64_t at) {
    ledger::testing::StripeSubscriptionSpec spec;
    spec.event_id = "evt_" + user + "_" + status;
    spec.event_type = event_type;
    spec.event_created = at;
    spec.subscription_id = "sub_" + user;
    spec.customer_id = "cus_" + user;
    spec.item_id = "si_" + user;
    spec.status = status;
    spec.metadata_user_id = user;
    spec.metadata_plan_id = "trial";
    spec.with_period = false;
    spec.created = trial_end - 7 * kDay;
    spec.trial_start = spec.created;
    spec.trial_end = trial_end;
    if (status == "canceled") spec.canceled_at = spec.ended_at = at;
    return ledger::testing::StripeSubscriptionEventJson(spec);
  };
  auto send = [&](const std::string& json) {
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(), json).status.ok()) << json;
  };
  const int64_t tess_end = kNow - 3 * kDay, tom_end = kNow - 13 * kDay, pat_end = kNow - 2 * kDay;
  AddSubscriber(OnPlan("u-tess", ""), "tess@x.com");
  send(delivery("u-tess", "customer.subscription.created", "trialing", tess_end,
                tess_end - 7 * kDay));
  send(delivery("u-tess", "customer.subscription.deleted", "canceled", tess_end, tess_end));
  AddSubscriber(OnPlan("u-tom", ""), "tom@x.com");
  send(delivery("u-tom", "customer.subscription.created", "trialing", tom_end, tom_end - 7 * kDay));
  send(delivery("u-tom", "customer.subscription.updated", "active", tom_end, tom_end));
  PayInvoice("u-tom", "sub_u-tom", "in_tom_1", 1900, tom_end + 3600);
  send(delivery("u-tom", "customer.subscription.deleted", "canceled", tom_end, kNow - kDay));
  AddSubscriber(OnPlan("u-pat", ""), "pat@x.com");
  send(delivery("u-pat", "customer.subscription.created", "trialing", pat_end, pat_end - 7 * kDay));
  send(delivery("u-pat", "customer.subscription.updated", "past_due", pat_end, pat_end));
  send(ledger::testing::StripeInvoiceEventJson(ledger::testing::InvoiceOf(
      "u-pat", "cus_u-pat", "sub_u-pat", "in_pat_1", "invoice.payment_failed", "evt_pat_1",
      pat_end + 3600)));

  HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& conversion = doc["trial_conversion"];
  EXPECT_EQ(conversion["trials"].GetInt64(), 3) << r.body;
  EXPECT_EQ(conversion["converted"].GetInt64(), 1) << r.body;         // tom
  EXPECT_EQ(conversion["lost"].GetInt64(), 1) << r.body;              // tess
  EXPECT_EQ(conversion["awaiting_payment"].GetInt64(), 1) << r.body;  // pat
  EXPECT_EQ(conversion["in_trial"].GetInt64(), 0) << r.body;
  EXPECT_DOUBLE_EQ(conversion["rate"].GetDouble(), 0.5) << r.body;
  EXPECT_EQ(doc["churn"]["churned"].GetInt64(), 1) << r.body;  // tom
  EXPECT_EQ(doc["subscribers"]["paying"].GetInt64(), 0) << r.body;
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 0) << r.body;
  // Access judges u-pat as the overview does: the trial has ended until an invoice is paid
  // (ATrialWhoseFirstChargeFailedIsNotStarter), not Starter's grace.
  TestHttpClient client("127.0.0.1", stack_->port());
  client.set_bearer(kServiceToken);
  r = client.Post("/api/v1/subscriptions/check-access/chat?user_id=u-pat", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_expired") << r.body;
  EXPECT_STREQ(r.Json()["plan_id"].GetString(), "trial") << r.body;
}

// The one subscriber's usage is the window a reset-usage would reset, with its calls: past due
// with Stripe's retries over, the billing month its calls were counted in (it showed the empty
// calendar month, used 0, while reset-usage reset the billing month's 5). It does not look
// unlimited when consume refuses: remaining is 0 and access_refusal names consume's 402 (limit
// and remaining null read as an unlimited plan for a suspended user).
TEST_F(AdminRoutesTest, OneSubscriberShowsTheWindowResetUsageResets) {
  AddSubscriber(OnPlan("u-due", "starter", kNow - 10 * kDay, kNow + 20 * kDay), "due@x.com");
  AddSubscriber(OnPlan("u-a", "starter", kNow - 10 * kDay, kNow + 20 * kDay), "a@x.com");
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(Consume("u-due", "chat", "k" + std::to_string(i)).status, 200);
  }
  ASSERT_EQ(Consume("u-a", "chat", "a1").status, 200);
  auto usage_of = [&](const std::string& who) {
    HttpReply r = Admin().Get(std::string(kAdminBase) + who);
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    rapidjson::Document usage;
    usage.CopyFrom(doc["users"][0]["usage"], usage.GetAllocator());
    EXPECT_TRUE(usage.HasMember("access_refusal")) << r.body;
    if (!usage.HasMember("access_refusal")) {
      usage.AddMember("access_refusal", "(absent)", usage.GetAllocator());
    }
    return usage;
  };
  rapidjson::Document usage = usage_of("due@x.com");
  EXPECT_TRUE(usage["access_refusal"].IsNull());
  EXPECT_EQ(usage["remaining"].GetInt64(), 995);
  EXPECT_EQ(usage["limit"].GetInt64(), 1000);

  TestSubscription due = OnPlan("u-due", "starter", kNow - 10 * kDay, kNow + 20 * kDay);
  due.status = "past_due";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), due).ok());
  AbandonDuePayment("in_due", "evt_due_4");
  usage = usage_of("due@x.com");
  EXPECT_STREQ(usage["window_kind"].GetString(), "billing_month");
  EXPECT_EQ(usage["used"].GetInt64(), 5);
  ASSERT_TRUE(usage["limit"].IsInt64() && usage["remaining"].IsInt64());
  EXPECT_EQ(usage["limit"].GetInt64(), 1000);
  EXPECT_EQ(usage["remaining"].GetInt64(), 0);
  ASSERT_TRUE(usage["access_refusal"].IsString());
  EXPECT_STREQ(usage["access_refusal"].GetString(), "payment_failed");
  // A suspended user: no plan's window, but not unlimited either.
  ASSERT_EQ(Patch("a@x.com", R"({"status":"suspended"})").status, 200);
  rapidjson::Document suspended = usage_of("a@x.com");
  EXPECT_TRUE(suspended["limit"].IsNull());
  ASSERT_TRUE(suspended["remaining"].IsInt64() && suspended["access_refusal"].IsString());
  EXPECT_EQ(suspended["remaining"].GetInt64(), 0);
  EXPECT_STREQ(suspended["access_refusal"].GetString(), "subscription_required");

  for (const auto& [who, shown] :
       {std::pair<const char*, const rapidjson::Document*>{"due@x.com", &usage},
        {"a@x.com", &suspended}}) {
    SCOPED_TRACE(who);
    HttpReply r = Admin().Post(std::string(kAdminBase) + who + "/reset-usage", "");
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document reset = r.Json();
    const auto& one = reset["users"][0];
    for (const char* field : {"window_start", "window_end", "window_kind"}) {
      EXPECT_STREQ(one[field].GetString(), (*shown)[field].GetString()) << field << r.body;
    }
    EXPECT_EQ(one["used_before"].GetInt64(), (*shown)["used"].GetInt64()) << r.body;
  }
  EXPECT_EQ(usage_of("due@x.com")["used"].GetInt64(), 0);
}

// Calls used up for good are consume's 402 in the one subscriber's access_refusal too, as in
// my-access (its access_ended): a trial's last day used up, and the window a scheduled end closes.
// It showed null, as if the next call would be admitted.
TEST_F(AdminRoutesTest, OneSubscriberShowsCallsUsedUpForGoodAsConsumesRefusal) {
  TestSubscription trial = OnPlan("u-tex", "trial", kNow - 6 * kDay, kNow + 3600);
  trial.status = "trialing";
  trial.trial_start = kNow - 6 * kDay;
  trial.trial_end = kNow + 3600;  // the trial ends today: today's 100 calls are its last
  AddSubscriber(trial, "tex@x.com");
  TestSubscription ending = OnPlan("u-wes", "starter", kNow - 10 * kDay, kNow + 20 * kDay);
  ending.cancel_at = kNow + 3600;  // the billing window ends there
  AddSubscriber(ending, "wes@x.com");
  ASSERT_EQ(Consume("u-tex", "chat", "t1", 100).status, 200);
  ASSERT_EQ(Consume("u-wes", "chat", "w1", 1000).status, 200);
  ExpectProblem(Consume("u-tex", "chat", "t2"), 402, "trial_exhausted");
  ExpectProblem(Consume("u-wes", "chat", "w2"), 402, "subscription_required");
  for (const auto& [who, refusal] : {std::pair<const char*, const char*>{"tex@x.com",
                                                                         "trial_exhausted"},
                                     {"wes@x.com", "subscription_required"}}) {
    SCOPED_TRACE(who);
    HttpReply r = Admin().Get(std::string(kAdminBase) + who);
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    const auto& usage = doc["users"][0]["usage"];
    ASSERT_TRUE(usage["access_refusal"].IsString()) << r.body;
    EXPECT_STREQ(usage["access_refusal"].GetString(), refusal) << r.body;
    ASSERT_TRUE(usage["remaining"].IsInt64()) << r.body;
    EXPECT_EQ(usage["remaining"].GetInt64(), 0) << r.body;
  }
}

// An override of a user id nobody else knows (a typo), cleared again, leaves no subscriber: the
// user row it made went with it, and a replay of the log makes the same rows. A user with
// anything else (a customer link) keeps its row.
TEST_F(AdminRoutesTest, AClearedOverrideOfAnUnknownUserLeavesNoSubscriber) {
  AddCustomerBase();
  auto overview = [&] {
    HttpReply r = Admin().Get(std::string(kAdminBase) + "analytics/overview");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  };
  rapidjson::Document doc = overview();
  const int64_t total = doc["subscribers"]["total"].GetInt64();
  const int64_t none = doc["subscribers"]["by_status"]["none"].GetInt64();
  ASSERT_EQ(Patch("u-tpyo", R"({"notes":"x"})").status, 200);
  EXPECT_EQ(overview()["subscribers"]["total"].GetInt64(), total + 1);
  ASSERT_EQ(Patch("u-tpyo", R"({"notes":null})").status, 200);
  doc = overview();
  EXPECT_EQ(doc["subscribers"]["total"].GetInt64(), total);
  EXPECT_EQ(doc["subscribers"]["by_status"]["none"].GetInt64(), none);
  int pages = 0;
  EXPECT_TRUE(ListAll("&q=tpyo", 50, &pages).empty());
  // Comped by user id, then reset: the same.
  ASSERT_EQ(Patch("u-new", R"({"tier":"starter","status":"active"})").status, 200);
  ASSERT_EQ(Patch("u-new", R"({"tier":null,"status":null})").status, 200);
  EXPECT_EQ(overview()["subscribers"]["total"].GetInt64(), total);
  // u-g has a customer link (and an email), never a subscription: its row stays.
  ASSERT_EQ(Patch("u-g", R"({"notes":"x"})").status, 200);
  ASSERT_EQ(Patch("u-g", R"({"notes":null})").status, 200);
  EXPECT_EQ(ListAll("&q=u-g", 50, &pages), (std::vector<std::string>{"u-g"}));
  EXPECT_EQ(overview()["subscribers"]["total"].GetInt64(), total);

  ExpectReplayEqual();
}

// A reset of a user id with no usage (a typo: any valid id names an account, so it is answered
// 200 and the event appended) leaves usage-stats as they were: it counted one more window and
// user, a by_plan "none" entry and u-typo in top_users with 0 calls, for good.
TEST_F(AdminRoutesTest, AResetOfAWindowWithNoUsageLeavesUsageStatsAlone) {
  AddCustomerBase();
  ASSERT_EQ(Consume("u-a", "chat", "k1").status, 200);
  const std::string path = std::string(kAdminBase) + "analytics/usage-stats?from=" +
                           std::to_string(kNow - 40 * kDay) +
                           "&to=" + std::to_string(kNow + 40 * kDay);
  HttpReply before = Admin().Get(path);
  ASSERT_EQ(before.status, 200) << before.body;
  const uint64_t head = Head();
  HttpReply r = Admin().Post(std::string(kAdminBase) + "u-typo/reset-usage", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), head + 1);  // the audit event
  HttpReply after = Admin().Get(path);
  ASSERT_EQ(after.status, 200) << after.body;
  EXPECT_EQ(after.body, before.body);
  ExpectReplayEqual();
}

// Notes are text an admin reads, over several lines: line feeds and tabs are kept; other control
// characters (a carriage return included), DEL, C1 controls and bidirectional overrides are 422
// naming the field, nothing appended ({"notes":"a\u0000b"} was stored and served as it came).
TEST_F(AdminRoutesTest, NotesAreTextOverSeveralLines) {
  AddCustomerBase();
  const uint64_t head = Head();
  for (const char* notes : {R"(a\u0000b)", R"(\u001b[2J)", R"(line\rover)", R"(\u007f)",
                            R"(\u0085)", R"(a \u202e b)", R"(\u2066x)"}) {
    SCOPED_TRACE(notes);
    HttpReply r = Patch("a@x.com", std::string(R"({"notes":")") + notes + "\"}");
    ExpectProblem(r, 422, "validation_failed");
    EXPECT_EQ(std::string(r.Json()["detail"].GetString()).rfind("notes: ", 0), 0u) << r.body;
  }
  EXPECT_EQ(Head(), head);
  HttpReply r = Patch("a@x.com", R"({"notes":"refund agreed\n\tticket 42, caf\u00e9"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), head + 1);
  EXPECT_STREQ(r.Json()["users"][0]["override"]["notes"].GetString(),
               "refund agreed\n\tticket 42, caf\xc3\xa9");
}

TEST_F(AdminRoutesTest, BadPatchesAreProblemsAndAppendNothing) {
  AddCustomerBase();
  const uint64_t head = Head();
  ExpectProblem(Patch("a@x.com", R"({"tier":"platinum"})"), 422, "unknown_plan");
  ExpectProblem(Patch("a@x.com", R"({"status":"bogus"})"), 422, "validation_failed");
  ExpectProblem(Patch("a@x.com", R"({"colour":"red"})"), 422, "unknown_field");
  // A misspelt field is unknown whatever its value (a number was "x: a string or null"), and
  // also after a known field whose value is wrong.
  ExpectProblem(Patch("a@x.com", R"({"x":5})"), 422, "unknown_field");
  ExpectProblem(Patch("a@x.com", R"({"x":{"a":1}})"), 422, "unknown_field");
  ExpectProblem(Patch("a@x.com", R"({"notes":7,"x":null})"), 422, "unknown_field");
  ExpectProblem(Patch("a@x.com", R"({"notes":7})"), 422, "validation_failed");
  ExpectProblem(Patch("a@x.com", "{}"), 422, "validation_failed");
  ExpectProblem(Patch("a@x.com", "not json"), 400, "invalid_json");
  // Escapes that decode to no character (a lone low surrogate) are malformed JSON: the notes were
  // caught only by the event's own check (400 malformed_event naming subscription.override_set.v1)
  // and a member name was "unknown field '???'" (projections/json_util.h).
  ExpectProblem(Patch("a@x.com", R"({"notes":"\udc00"})"), 400, "invalid_json");
  ExpectProblem(Patch("a@x.com", R"({"notes":"x","\udc00":null})"), 400, "invalid_json");
  ExpectProblem(Patch("a@x.com", "{\"notes\":\"" + std::string(2001, 'n') + "\"}"), 422,
                "validation_failed");
  // A body past the route's own limit is too large, as past the server's 1 MiB (it was 422).
  ExpectProblem(Patch("a@x.com", "{\"notes\":\"" + std::string(9000, 'n') + "\"}"), 413,
                "payload_too_large");
  // An '@' no user has as an email and no user id can be (over 255 bytes): nobody to change.
  ExpectProblem(Patch(std::string(300, 'n') + "@x.com", R"({"notes":"x"})"), 404, "not_found");
  // The other admin routes' segments are not user ids.
  ExpectProblem(Patch("list", R"({"notes":"x"})"), 405, "method_not_allowed");
  ExpectProblem(Admin().Post(std::string(kAdminBase) + "list/reset-usage", ""), 404, "not_found");
  ExpectProblem(Admin().Get(std::string(kAdminBase) + "analytics"), 404, "not_found");
  EXPECT_EQ(User("u-a").Patch(std::string(kAdminBase) + "a@x.com", R"({"notes":"x"})").status, 403);
  EXPECT_EQ(Head(), head);

  // An Idempotency-Key makes a retry return the first answer without appending.
  HttpReply first = Admin().Patch(std::string(kAdminBase) + "a@x.com", R"({"notes":"once"})",
                                  {{"Idempotency-Key", "patch-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  const uint64_t after = Head();
  HttpReply retry = Admin().Patch(std::string(kAdminBase) + "a@x.com", R"({"notes":"once"})",
                                  {{"Idempotency-Key", "patch-1"}});
  EXPECT_EQ(retry.status, 200);
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(Head(), after);
  ExpectProblem(Admin().Patch(std::string(kAdminBase) + "a@x.com", R"({"notes":"twice"})",
                              {{"Idempotency-Key", "patch-1"}}),
                409, "idempotency_key_reused");
}

}  // namespace
}  // namespace ledger::http
