// The Stripe-calling billing routes over real HTTP on loopback, against a real Ledger and the
// fake Stripe: request shapes at Stripe, events appended (and validated against their schemas),
// idempotency (ours and Stripe's), retries, timeouts and configuration errors.
#include <gtest/gtest.h>

#include <atomic>
#include <ctime>
#include <functional>
#include <thread>

#include "events/clock.h"
#include "events/ledger.h"
#include "http/app_context.h"
#include "http/routes.h"
#include "projections/subscriptions.h"
#include "http/stripe_client.h"
#include "projections/admin.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "projections/usage.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/stripe_events.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/wait.h"

namespace ledger::http {
namespace {

using ledger::testing::FakeStripe;
using ledger::testing::HttpReply;
using ledger::testing::kFakeStripeSecretKey;
using ledger::testing::TestHttpClient;
using ledger::testing::TokenClaims;

constexpr char kCheckout[] = "/api/v1/billing/checkout/create";
constexpr char kPortal[] = "/api/v1/billing/portal/create";
constexpr char kPaymentMethods[] = "/api/v1/billing/payment-methods";
constexpr char kCancel[] = "/api/v1/billing/subscription/cancel";
constexpr char kUpgrade[] = "/api/v1/billing/subscription/upgrade";

constexpr char kSuccessUrl[] = "https://app.example.com/billing/success?session={CHECKOUT_SESSION_ID}";
constexpr char kCancelUrl[] = "https://app.example.com/billing/canceled";
constexpr char kReturnUrl[] = "https://app.example.com/account";

class BillingRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = projections::AllFolds();
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());

    ASSERT_TRUE(fake_.Start().ok());
    for (const auto& p : ledger::testing::TestStripePrices()) {
      fake_.AddProduct(std::string("prod_") + p.plan_id, p.plan_id);
      FakeStripe::Price monthly;
      monthly.id = p.monthly;
      monthly.product = std::string("prod_") + p.plan_id;
      monthly.unit_amount = p.monthly_cents;
      monthly.interval = std::string(p.plan_id) == "trial" ? "" : "month";
      fake_.AddPrice(monthly);
      if (p.yearly != nullptr) {
        FakeStripe::Price yearly = monthly;
        yearly.id = p.yearly;
        yearly.interval = "year";
        yearly.unit_amount = p.yearly_cents;
        fake_.AddPrice(yearly);
      }
    }
    StripeClientOptions stripe_options;
    stripe_options.api_base = fake_.base_url();
    stripe_options.secret_key = kFakeStripeSecretKey;
    stripe_options.read_timeout_ms = 1000;  // generous: 2 shared cores under ASan
    stripe_options.connect_timeout_ms = 1000;
    stripe_options.backoff_initial_ms = 1;
    stripe_options.backoff_max_ms = 2;
    stripe_options.sleep = [](int64_t) {};
    ASSERT_TRUE(HttpStripeClient::Create(stripe_options, &stripe_).ok());
    fake_.set_hang_ms(5000);

    StartServer(/*configured=*/true);
    const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
    alice_token_ = ledger::testing::MintHs256(TokenClaims::User("alice", now_s),
                                              ledger::testing::kTestHs256Secret);
    bob_token_ = ledger::testing::MintHs256(TokenClaims::User("bob", now_s),
                                            ledger::testing::kTestHs256Secret);
    head_after_setup_ = Head();
  }

  void StartServer(bool configured) {
    stack_.Stop();
    stack_.server.reset();
    AppContext context;
    context.ledger = ledger_.get();
    context.clock = &clock_;
    if (configured) {
      context.stripe = stripe_.get();
      context.stripe_success_url = kSuccessUrl;
      context.stripe_cancel_url = kCancelUrl;
      context.stripe_portal_return_url = kReturnUrl;
    }
    context.usage_meter = &meter_;
    RouteTable routes;
    AddBillingRoutes(context, &routes);
    // Consume, the summary and my-access: what a plan change does to the quota.
    AddUsageRoutes(context, &routes);
    AddSubscriptionAccessRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    Status s = stack_.Start(std::move(routes), auth, nullptr);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    stack_.Stop();
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000, EventFilter{}, &events).ok());
    for (const Event& e : events) {
      EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type << " " << e.data;
      // No secret and no session URL ever enters the log.
      EXPECT_EQ(e.data.find(kFakeStripeSecretKey), std::string::npos) << e.data;
      EXPECT_EQ(e.data.find("sk_test_"), std::string::npos) << e.data;
      EXPECT_EQ(e.data.find("checkout.stripe.com"), std::string::npos) << e.data;
      EXPECT_EQ(e.data.find("billing.stripe.com"), std::string::npos) << e.data;
    }
  }

  TestHttpClient As(const std::string& token) {
    TestHttpClient client("127.0.0.1", stack_.port());
    client.set_bearer(token);
    return client;
  }
  TestHttpClient Alice() { return As(alice_token_); }
  uint64_t Head() const { return ledger_->Head().value(); }

  // A subscription of alice's at the fake, in `status`.
  void AddAlicesSubscriptionAtStripe(const std::string& id, const std::string& status) {
    fake_.AddCustomer("cus_alice", "alice@example.com");
    FakeStripe::Subscription at_stripe;
    at_stripe.id = id;
    at_stripe.customer = "cus_alice";
    at_stripe.status = status;
    at_stripe.item_id = "si_" + id;
    at_stripe.price_id = "price_starter_monthly";
    fake_.AddSubscription(at_stripe);
  }

  // The routes' clock: the time now, moved by tests.
  ManualClock clock_{static_cast<int64_t>(std::time(nullptr)) * 1'000'000};

  // An admin's override of alice's status (a suspension: one that grants nothing); nullopt
  // lifts it.
  void SetAliceOverrideStatus(std::optional<projections::SubscriptionStatus> status) {
    projections::OverrideChange change;
    change.status = status;
    projections::SetAdminOverride command("alice", change,
                                          projections::Actor::Admin("root", "root@example.com"));
    ASSERT_TRUE(ledger_->Submit(&command).status.ok());
  }

  // The one POST an upgrade made to sub_alice, which ends the trial at once (trial_end=now).
  FakeStripe::Request TheTrialEndingPost() {
    auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
    EXPECT_EQ(posts.size(), 1u);
    if (posts.empty()) return {};
    const FormParams& params = posts[0].params;
    EXPECT_NE(std::find(params.begin(), params.end(),
                        std::make_pair(std::string("trial_end"), std::string("now"))),
              params.end());
    return posts[0];
  }

  // Links alice to a Stripe customer and subscription through the webhook command, and creates
  // them at the fake.
  // Stripe shows sub_alice canceled by someone else (the Dashboard): no comment of ours.
  void EndAlicesSubscriptionInTheDashboard() {
    FakeStripe::Subscription ended = *fake_.GetSubscription("sub_alice");
    ended.status = "canceled";
    ended.cancellation_comment = "canceled in the Dashboard";
    fake_.AddSubscription(ended);
  }
  void GiveAliceASubscription(const std::string& status = "active",
                              const std::string& price = "price_starter_monthly",
                              std::optional<std::string> plan_tag = "starter",
                              bool at_stripe_too = true) {
    ledger::testing::StripeCheckoutSpec checkout;
    checkout.client_reference_id = "alice";
    checkout.metadata_user_id = "alice";
    checkout.customer_id = "cus_alice";
    checkout.subscription_id = "sub_alice";
    checkout.email = "alice@example.com";
    checkout.metadata_plan_id = plan_tag;
    checkout.session_id = "cs_alice";
    ASSERT_TRUE(
        ledger::testing::OpenCheckoutSession(ledger_.get(), checkout.session_id, "alice").ok());
    ASSERT_TRUE(ledger::testing::SubmitWebhook(
                    ledger_.get(), ledger::testing::StripeCheckoutCompletedJson(checkout))
                    .status.ok());
    DeliverAlicesSubscription("evt_sub_alice", "customer.subscription.created", status, price,
                              plan_tag);
    head_after_setup_ = Head();
    if (!at_stripe_too) return;
    fake_.AddCustomer("cus_alice", "alice@example.com");
    FakeStripe::Subscription at_stripe;
    at_stripe.id = "sub_alice";
    at_stripe.customer = "cus_alice";
    at_stripe.status = status;
    at_stripe.item_id = "si_alice";
    at_stripe.price_id = price;
    if (plan_tag) at_stripe.metadata = {{"plan_id", *plan_tag}, {"user_id", "alice"}};
    fake_.AddSubscription(at_stripe);
    head_after_setup_ = Head();
  }

  // Alice's Starter (GiveAliceASubscription) and a newer Professional (sub_alice_pro, on
  // `pro_customer`: alice's, or one linked to nobody) canceled at its period's end, which the
  // clock is then moved past: Stripe has canceled it, its deletion's webhook has not arrived (as
  // in PastANewerPlansScheduledEndCheckoutIsRefusedBesideTheOtherPlan).
  // Beside alice's subscription, a newer Professional (sub_alice_pro on `pro_customer`) canceled at
  // its period's end, a day from now, through the ledger's webhook route.
  ledger::testing::StripeSubscriptionSpec GiveAliceAProfessionalEndingTomorrow(
      const std::string& pro_customer = "cus_alice") {
    const int64_t now_s = clock_.NowMicros() / 1'000'000;
    ledger::testing::StripeSubscriptionSpec pro;
    pro.event_id = "evt_pro";
    pro.event_created = ledger::testing::kStripeT0 + 10;
    pro.subscription_id = "sub_alice_pro";
    pro.customer_id = pro_customer;
    pro.item_id = "si_alice_pro";
    pro.price_id = "price_professional_monthly";
    pro.unit_amount = 4900;
    pro.metadata_user_id = "alice";
    pro.metadata_plan_id = "professional";
    pro.created = ledger::testing::kStripeT0 + 10;  // newer than sub_alice
    pro.cancel_at_period_end = true;
    pro.period_start = now_s - 29 * 86400;
    pro.period_end = now_s + 86400;
    EXPECT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeSubscriptionEventJson(pro))
                    .status.ok());
    return pro;
  }

  void GiveAliceAProfessionalPastItsEnd(const std::string& pro_customer = "cus_alice") {
    GiveAliceASubscription("active");
    const int64_t now_s = clock_.NowMicros() / 1'000'000;
    const ledger::testing::StripeSubscriptionSpec pro =
        GiveAliceAProfessionalEndingTomorrow(pro_customer);
    FakeStripe::Subscription ended;
    ended.id = "sub_alice_pro";
    ended.customer = pro_customer;
    ended.status = "canceled";
    ended.item_id = "si_alice_pro";
    ended.price_id = "price_professional_monthly";
    ended.cancel_at_period_end = true;
    ended.current_period_start = pro.period_start;
    ended.current_period_end = pro.period_end;
    ended.canceled_at = now_s;
    ended.ended_at = pro.period_end;
    ended.metadata = {{"plan_id", "professional"}, {"user_id", "alice"}};
    fake_.AddSubscription(ended);
    clock_.Advance((86400 + 3600) * int64_t{1'000'000});  // past its end, no deletion yet
    HttpReply status = Alice().Get("/api/v1/billing/subscription-status");
    ASSERT_EQ(status.status, 200) << status.body;
    ASSERT_EQ(std::string(status.Json()["subscription"]["id"].GetString()), "sub_alice");
    head_after_setup_ = Head();
  }

  // Stripe's webhook about alice's subscription sub_alice (item si_alice), through the ledger.
  void DeliverAlicesSubscription(const std::string& event_id, const std::string& event_type,
                                 const std::string& status, const std::string& price,
                                 std::optional<std::string> plan_tag) {
    DeliverAlicesPeriod(event_id, event_type, status, price, std::move(plan_tag),
                        ledger::testing::StripeSubscriptionSpec());
  }
  // The same, with the billing period and the event's `created` of `period`.
  void DeliverAlicesPeriod(const std::string& event_id, const std::string& event_type,
                           const std::string& status, const std::string& price,
                           std::optional<std::string> plan_tag,
                           const ledger::testing::StripeSubscriptionSpec& period) {
    ledger::testing::StripeSubscriptionSpec sub;
    sub.event_created = period.event_created;
    sub.period_start = period.period_start;
    sub.period_end = period.period_end;
    sub.event_id = event_id;
    sub.event_type = event_type;
    sub.subscription_id = "sub_alice";
    sub.customer_id = "cus_alice";
    sub.status = status;
    sub.item_id = "si_alice";
    sub.price_id = price;
    sub.interval = price.find("yearly") != std::string::npos ? "year" : "month";
    sub.metadata_user_id = "alice";
    sub.metadata_plan_id = std::move(plan_tag);
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeSubscriptionEventJson(sub))
                    .status.ok());
  }

  // A cancel-now under Idempotency-Key cancel-1 that Stripe carried out, whose record was lost;
  // then Stripe's deletion of the subscription folded. *first: the answer the client never got.
  void CancelNowAndLoseItsRecord(const std::string& body, HttpReply* first) {
    GiveAliceASubscription();
    *first = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
    ASSERT_EQ(first->status, 200) << first->body;
    LoseTheLog();
    GiveAliceASubscription("active", "price_starter_monthly", "starter", /*at_stripe_too=*/false);
    DeliverAlicesSubscription("evt_sub_alice_deleted", "customer.subscription.deleted", "canceled",
                              "price_starter_monthly", "starter");
  }
  // A fresh, empty log behind the same routes and the same fake Stripe: what a crash between
  // Stripe's answer and the append leaves (Stripe acted; the log never heard of it). With
  // `ledger_clock`, the ledger's commands (consume) take their time from it.
  void LoseTheLog(const Clock* ledger_clock = nullptr) {
    stack_.Stop();
    ledger_.reset();
    LedgerOptions options;
    options.path = other_dir_.path();
    options.folds = projections::AllFolds();
    options.clock = ledger_clock;
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());
    StartServer(/*configured=*/true);
    head_after_setup_ = Head();
  }

  std::vector<Event> EventsOfType(const std::string& type) {
    std::vector<Event> events;
    EventFilter filter;
    filter.type = type;
    EXPECT_TRUE(ledger_->ReadEvents(Position(0), 1000, filter, &events).ok());
    return events;
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.Header("Content-Type"), "application/problem+json") << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject()) << reply.body;
    ASSERT_TRUE(doc.HasMember("code")) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  ledger::testing::TempDir dir_;
  ledger::testing::TempDir other_dir_;  // LoseTheLog's
  std::unique_ptr<Ledger> ledger_;
  FakeStripe fake_;
  std::unique_ptr<HttpStripeClient> stripe_;
  projections::UsageMeter meter_;
  ledger::testing::TestHttpStack stack_;
  std::string alice_token_;
  std::string bob_token_;
  uint64_t head_after_setup_ = 0;
};

// ---- Configuration and policy ----------------------------------------------------------------

TEST_F(BillingRoutesTest, WithoutAStripeKeyEveryRouteIs503) {
  StartServer(/*configured=*/false);
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 503, "stripe_not_configured");
  ExpectProblem(Alice().Post(kPortal, ""), 503, "stripe_not_configured");
  ExpectProblem(Alice().Get(kPaymentMethods), 503, "stripe_not_configured");
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":true})"), 503, "stripe_not_configured");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 503,
                "stripe_not_configured");
  EXPECT_EQ(Head(), head_after_setup_);
  EXPECT_TRUE(fake_.requests().empty());
}

// A body over the billing routes' 4 KiB is 413 before anything else: without Stripe, a 5,000-byte
// upgrade body was 503 stripe_not_configured.
TEST_F(BillingRoutesTest, AnOversizedBodyIs413EvenWithoutAStripeKey) {
  StartServer(/*configured=*/false);
  const std::string big = R"({"plan_id":")" + std::string(5000, 'p') + R"("})";
  for (const char* path : {kCheckout, kPortal, kCancel, kUpgrade}) {
    SCOPED_TRACE(path);
    ExpectProblem(Alice().Post(path, big), 413, "payload_too_large");
  }
  EXPECT_EQ(Head(), head_after_setup_);
  EXPECT_TRUE(fake_.requests().empty());
}

TEST_F(BillingRoutesTest, CheckoutWithoutASuccessUrlIs503) {
  AppContext context;
  context.ledger = ledger_.get();
  context.stripe = stripe_.get();
  stack_.Stop();
  stack_.server.reset();
  RouteTable routes;
  AddBillingRoutes(context, &routes);
  AuthOptions auth;
  auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
  ASSERT_TRUE(stack_.Start(std::move(routes), auth, nullptr).ok());
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 503, "stripe_not_configured");
  EXPECT_TRUE(fake_.requests().empty());
}

TEST_F(BillingRoutesTest, EveryRouteNeedsAUser) {
  TestHttpClient anonymous("127.0.0.1", stack_.port());
  ExpectProblem(anonymous.Post(kCheckout, R"({"plan_id":"starter"})"), 401, "unauthenticated");
  ExpectProblem(anonymous.Post(kPortal, ""), 401, "unauthenticated");
  ExpectProblem(anonymous.Get(kPaymentMethods), 401, "unauthenticated");
  ExpectProblem(anonymous.Post(kCancel, "{}"), 401, "unauthenticated");
  ExpectProblem(anonymous.Post(kUpgrade, R"({"plan_id":"starter"})"), 401, "unauthenticated");
  EXPECT_TRUE(fake_.requests().empty());
}

// ---- Checkout ---------------------------------------------------------------------------------

TEST_F(BillingRoutesTest, CheckoutForANewUser) {
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter","billing_cycle":"monthly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_TRUE(doc.IsObject());
  const std::string session_id = doc["session_id"].GetString();
  EXPECT_EQ(session_id.rfind("cs_test_", 0), 0u);
  EXPECT_NE(std::string(doc["url"].GetString()).find(session_id), std::string::npos);
  EXPECT_EQ(r.Header("X-Ledger-Position"), std::to_string(head_after_setup_ + 1));

  auto requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(requests.size(), 1u);
  const FakeStripe::Request& q = requests[0];
  EXPECT_EQ(q.authorization, std::string("Bearer ") + kFakeStripeSecretKey);
  EXPECT_EQ(q.idempotency_key.rfind("ledgerd-checkout-", 0), 0u);
  EXPECT_EQ(q.params,
            (FormParams{{"mode", "subscription"},
                        {"line_items[0][price]", "price_starter_monthly"},
                        {"line_items[0][quantity]", "1"},
                        {"success_url", kSuccessUrl},
                        {"cancel_url", kCancelUrl},
                        {"client_reference_id", "alice"},
                        {"customer_email", "alice@example.com"},
                        {"metadata[user_id]", "alice"},
                        {"metadata[plan_id]", "starter"},
                        {"metadata[billing_cycle]", "monthly"},
                        {"subscription_data[metadata][user_id]", "alice"},
                        {"subscription_data[metadata][plan_id]", "starter"},
                        {"subscription_data[metadata][billing_cycle]", "monthly"}}));

  auto events = EventsOfType("stripe.checkout_session_created.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].subject, "alice");
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  EXPECT_EQ(std::string(data["session_id"].GetString()), session_id);
  EXPECT_EQ(std::string(data["price_id"].GetString()), "price_starter_monthly");
  EXPECT_TRUE(data["customer"].IsNull());
  EXPECT_TRUE(data["trial_period_days"].IsNull());
  EXPECT_EQ(std::string(data["stripe_idempotency_key"].GetString()), q.idempotency_key);
}

TEST_F(BillingRoutesTest, CheckoutYearly) {
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"professional","billing_cycle":"yearly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto q = fake_.RequestsTo("POST", "/v1/checkout/sessions").at(0);
  EXPECT_EQ(q.Param("line_items[0][price]"), "price_professional_yearly");
  EXPECT_EQ(q.Param("metadata[plan_id]"), "professional");
}

TEST_F(BillingRoutesTest, TheTrialIsStarterWithASevenDayTrialAndAOneTimeFee) {
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"trial"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto q = fake_.RequestsTo("POST", "/v1/checkout/sessions").at(0);
  EXPECT_EQ(q.Param("line_items[0][price]"), "price_starter_monthly");
  EXPECT_EQ(q.Param("line_items[0][quantity]"), "1");
  EXPECT_EQ(q.Param("line_items[1][price]"), "price_trial_fee");
  EXPECT_EQ(q.Param("line_items[1][quantity]"), "1");
  EXPECT_EQ(q.Param("subscription_data[trial_period_days]"), "7");
  EXPECT_EQ(q.Param("metadata[plan_id]"), "trial");
  EXPECT_EQ(q.Param("subscription_data[metadata][plan_id]"), "trial");
  auto events = EventsOfType("stripe.checkout_session_created.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("one_time_price_id":"price_trial_fee","trial_period_days":7)"),
            std::string::npos)
      << events[0].data;

  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial","billing_cycle":"yearly"})"), 422,
                "plan_not_purchasable");
}

// The $1 trial is for new customers: after a subscription ended, a second trial is refused (it
// would restart the 7 days and 700 calls for $1 a week); a paid plan is not.
TEST_F(BillingRoutesTest, ATrialIsRefusedToAnyoneWhoHadASubscription) {
  GiveAliceASubscription("canceled", "price_starter_monthly", "trial");
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial"})"), 409, "trial_already_used");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/checkout/sessions").empty());
  ASSERT_EQ(Alice().Post(kCheckout, R"({"plan_id":"starter"})").status, 200);
}

// Alice's only subscription is an add-on: a price outside the catalog, made in Stripe's Dashboard
// with metadata.user_id. It is chosen as her subscription (she has no plan one), but it is no
// plan: she may buy any plan, the trial too (an add-on used no trial) -- they answered 409
// subscription_exists and trial_already_used. After a plan subscription, the checks are back.
TEST_F(BillingRoutesTest, AnAddOnAloneNeitherBlocksCheckoutNorUsesTheTrial) {
  fake_.AddCustomer("cus_alice", "alice@example.com");
  DeliverAlicesSubscription("evt_addon", "customer.subscription.created", "active", "price_addon",
                            std::nullopt);
  {
    projections::UserSubscription current;
    ASSERT_TRUE(projections::GetUserSubscription(*ledger_->Snapshot(), "alice", &current).ok());
    ASSERT_EQ(current.subscription_id(), "sub_alice");
    ASSERT_FALSE(current.plan_id());
  }
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  r = Alice().Post(kCheckout, R"({"plan_id":"trial"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.checkout_sessions().size(), 2u);

  // Her trial ended: now a trial was used, and a live plan refuses a second one.
  ledger::testing::StripeSubscriptionSpec trial;
  trial.event_id = "evt_trial";
  trial.subscription_id = "sub_trial";
  trial.customer_id = "cus_alice";
  trial.item_id = "si_trial";
  trial.status = "canceled";
  trial.metadata_user_id = "alice";
  trial.metadata_plan_id = "trial";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(trial))
                  .status.ok());
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial"})"), 409, "trial_already_used");
  trial.event_id = "evt_starter";
  trial.subscription_id = "sub_starter";
  trial.status = "active";
  trial.metadata_plan_id = "starter";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(trial))
                  .status.ok());
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "subscription_exists");
  EXPECT_EQ(fake_.checkout_sessions().size(), 2u);
}

// An upgrade changes the item that bills a plan, never an add-on's: with only an add-on it
// replaced the add-on's price with the plan's (the add-on gone, the plan billed in its place).
TEST_F(BillingRoutesTest, AnUpgradeDoesNotTurnAnAddOnIntoAPlan) {
  DeliverAlicesSubscription("evt_addon", "customer.subscription.created", "active", "price_addon",
                            std::nullopt);
  AddAlicesSubscriptionAtStripe("sub_alice", "active");
  FakeStripe::Subscription addon = *fake_.GetSubscription("sub_alice");
  addon.price_id = "price_addon";
  addon.metadata = {{"user_id", "alice"}};
  fake_.AddSubscription(addon);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 409,
                "no_plan_subscription");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_addon");
}

// A subscription that grants nothing now but is not over (unpaid, paused, incomplete) comes back
// when its invoice is paid: a second one beside it would bill twice. Checkout refuses it.
// Two checkouts open at once (two tabs) could both be paid: two subscriptions billing, the second
// out of sight of every route. A new checkout expires the user's earlier open session at Stripe.
TEST_F(BillingRoutesTest, AnotherCheckoutExpiresTheOpenOne) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  HttpReply b = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
  ASSERT_EQ(b.status, 200) << b.body;
  auto sessions = fake_.checkout_sessions();
  ASSERT_EQ(sessions.size(), 2u);
  EXPECT_EQ(sessions[0].status, "expired");
  EXPECT_EQ(sessions[1].status, "open");
  auto expires = fake_.RequestsTo("POST", "/v1/checkout/sessions/" + a_id + "/expire");
  ASSERT_EQ(expires.size(), 1u);
  EXPECT_FALSE(expires[0].idempotency_key.empty());
  // The second's event names the first as closed: a third expires the second and does not ask
  // about the first again.
  std::vector<Event> created;
  EventFilter filter;
  filter.type = "stripe.checkout_session_created.v1";
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 10, filter, &created).ok());
  ASSERT_EQ(created.size(), 2u);
  EXPECT_EQ(created[0].data.find("closed_session_ids"), std::string::npos) << created[0].data;
  EXPECT_NE(created[1].data.find(R"("closed_session_ids":[")" + a_id + R"("])"), std::string::npos)
      << created[1].data;
  ASSERT_EQ(Alice().Post(kCheckout, R"({"plan_id":"enterprise"})").status, 200);
  sessions = fake_.checkout_sessions();
  ASSERT_EQ(sessions.size(), 3u);
  EXPECT_EQ(sessions[1].status, "expired");
  EXPECT_EQ(sessions[2].status, "open");
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions/" + a_id + "/expire").size(), 1u);
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/checkout/sessions/" + a_id).size(), 1u);
  // Another user's checkout leaves alice's alone.
  ASSERT_EQ(As(bob_token_).Post(kCheckout, R"({"plan_id":"starter"})").status, 200);
  EXPECT_EQ(fake_.checkout_sessions()[2].status, "open");
}

// A user's checkouts wait for each other (two at once would each find no open session of the
// other's), and only theirs: the lock was one of 256 mutexes picked by std::hash of the user id,
// so a user whose id fell on alice's waited up to 10 s while her checkout was slow at Stripe and
// got 409 checkout_in_progress. Alice's own second checkout still waits for her first, and is
// refused when the first is not done in 10 s, without asking Stripe.
TEST_F(BillingRoutesTest, OnlyTheSameUsersCheckoutsWaitForEachOther) {
  HttpReply first = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(first.status, 200) << first.body;
  const std::string session = "/v1/checkout/sessions/" + std::string(first.Json()["session_id"]
                                                                         .GetString());
  // A client that waits for a slow Stripe (the fixture's gives up after 1 s).
  StripeClientOptions patient;
  patient.api_base = fake_.base_url();
  patient.secret_key = kFakeStripeSecretKey;
  patient.read_timeout_ms = 120'000;
  patient.connect_timeout_ms = 1000;
  patient.deadline_ms = 120'000;
  patient.max_attempts = 1;
  patient.sleep = [](int64_t) {};
  std::unique_ptr<HttpStripeClient> client;
  ASSERT_TRUE(HttpStripeClient::Create(patient, &client).ok());
  stack_.Stop();
  stripe_ = std::move(client);
  StartServer(/*configured=*/true);
  // Alice's next checkout asks Stripe about her open session first: Stripe holds that answer.
  fake_.set_hang_ms(120'000);
  fake_.InjectFault(FakeStripe::Fault::kHang, 1, "GET", session);
  HttpReply slow;
  std::atomic<bool> answered{false};
  std::thread alice([&] {
    slow = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
    answered = true;
  });
  ASSERT_TRUE(ledger::testing::WaitFor([&] { return !fake_.RequestsTo("GET", session).empty(); }));

  // A user whose id shared alice's mutex of the 256.
  const size_t alices = std::hash<std::string>{}("alice") % 256;
  std::string neighbour;
  for (int i = 0; neighbour.empty(); ++i) {
    const std::string id = "bob-" + std::to_string(i);
    if (std::hash<std::string>{}(id) % 256 == alices) neighbour = id;
  }
  const std::string token = ledger::testing::MintHs256(
      TokenClaims::User(neighbour, static_cast<int64_t>(std::time(nullptr))),
      ledger::testing::kTestHs256Secret);
  HttpReply other = As(token).Post(kCheckout, R"({"plan_id":"starter"})");
  EXPECT_EQ(other.status, 200) << other.body;

  // Alice's second at once: it waits for her first, then 409, and asks Stripe nothing.
  const size_t sessions = fake_.checkout_sessions().size();
  HttpReply second = Alice().Post(kCheckout, R"({"plan_id":"enterprise"})");
  ExpectProblem(second, 409, "checkout_in_progress");
  EXPECT_EQ(second.Header("Retry-After"), "5");
  EXPECT_EQ(fake_.RequestsTo("GET", session).size(), 1u);
  EXPECT_EQ(fake_.checkout_sessions().size(), sessions);
  EXPECT_FALSE(answered) << "alice's first was answered before Stripe did";
  fake_.Stop();  // ends the held answer: her first fails at Stripe, nothing recorded
  alice.join();
  EXPECT_GE(slow.status, 500) << slow.body;
  EXPECT_EQ(EventsOfType("stripe.checkout_session_created.v1").size(), 2u);
}

// Stripe saves the first answer for an Idempotency-Key, a 500 included, and replays it for 24 h.
// An expire's key derived from the old session alone made one 500 on that expire refuse every
// later checkout of the user (502) until the session expired by itself: a new checkout sends a
// new key, while a retry of the same request (same client key) sends the same one.
TEST_F(BillingRoutesTest, OneFailedExpireDoesNotBlockTheNextCheckout) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  const std::string expire_path = "/v1/checkout/sessions/" + a_id + "/expire";
  fake_.InjectFault(FakeStripe::Fault::kSavedServerError, 1, "POST", expire_path);
  const std::string body = R"({"plan_id":"professional"})";
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, body, {{"Idempotency-Key", "co-2"}}), 502,
                "stripe_error");
  auto expires = fake_.RequestsTo("POST", expire_path);
  ASSERT_GE(expires.size(), 1u);
  const std::string first_key = expires[0].idempotency_key;
  for (const auto& e : expires) EXPECT_EQ(e.idempotency_key, first_key);
  // The same request again: the same key, the saved 500.
  ExpectProblem(Alice().Post(kCheckout, body, {{"Idempotency-Key", "co-2"}}), 502,
                "stripe_error");
  expires = fake_.RequestsTo("POST", expire_path);
  EXPECT_EQ(expires.back().idempotency_key, first_key);
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.checkout_sessions().at(0).status, "open");
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);

  // Another checkout: another key, the session is expired and the new one made.
  HttpReply b = Alice().Post(kCheckout, body, {{"Idempotency-Key", "co-3"}});
  ASSERT_EQ(b.status, 200) << b.body;
  expires = fake_.RequestsTo("POST", expire_path);
  EXPECT_NE(expires.back().idempotency_key, first_key);
  auto sessions = fake_.checkout_sessions();
  ASSERT_EQ(sessions.size(), 2u);
  EXPECT_EQ(sessions[0].status, "expired");
  EXPECT_EQ(sessions[1].status, "open");
  EXPECT_EQ(Head(), head + 1);
}

// Paid at Stripe, its webhook not here yet: another checkout would be a second subscription.
TEST_F(BillingRoutesTest, ACheckoutPaidButNotYetReportedRefusesAnother) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  fake_.CompleteCheckoutSession(a_id);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "checkout_completed");
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
  EXPECT_EQ(Head(), head);
  // Its completion arrives: the session is no longer looked at.
  ledger::testing::StripeCheckoutSpec completed;
  completed.session_id = a_id;
  completed.client_reference_id = "alice";
  completed.metadata_user_id = "alice";
  completed.customer_id = std::nullopt;
  completed.subscription_id = std::nullopt;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeCheckoutCompletedJson(completed))
                  .status.ok());
  fake_.ClearRequests();
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/checkout/sessions/").empty());
}

// A checkout paid a day ago whose webhooks keep failing (Stripe retries them for three days) is
// asked about like a newer one, not taken for expired: while its subscription may bill, another
// checkout is refused; once that subscription has ended, checkout goes on (the paid session is
// not closed: it used the trial).
TEST_F(BillingRoutesTest, ACheckoutPaidLongAgoButNotReportedStillRefusesAnother) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  AddAlicesSubscriptionAtStripe("sub_paid", "active");
  fake_.CompleteCheckoutSession(a_id, "sub_paid");
  clock_.Advance(int64_t{25} * 3600 * 1'000'000);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "checkout_completed");
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
  EXPECT_EQ(Head(), head);
  AddAlicesSubscriptionAtStripe("sub_paid", "canceled");
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto events = EventsOfType("stripe.checkout_session_created.v1");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].data.find("closed_session_ids"), std::string::npos) << events[1].data;
}

// A trial checkout after a paid one whose subscription has already ended, none of its webhooks
// arrived: that subscription used the trial as one the log knows would have. The paid session
// was taken for closable (its subscription bills no more) and a second trial was sold for $1.
// A paid plan goes on, and does not close the paid session: a trial after it is refused too.
TEST_F(BillingRoutesTest, ATrialWhoseEarlierPaidSessionEndedUnreportedIsRefused) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"trial"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  AddAlicesSubscriptionAtStripe("sub_paid", "canceled");
  fake_.CompleteCheckoutSession(a_id, "sub_paid");
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial"})"), 409, "trial_already_used");
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 1u);

  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.checkout_sessions().size(), 2u);
  const uint64_t after_starter = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial"})"), 409, "trial_already_used");
  EXPECT_EQ(Head(), after_starter);
  EXPECT_EQ(fake_.checkout_sessions().size(), 2u);
}

// The session's completion came, its subscription's own events not yet (Stripe sends events in
// no particular order): the subscription is asked about at Stripe, and while it may bill another
// checkout -- a trial too -- is refused; once it has ended, it has still used the trial.
TEST_F(BillingRoutesTest, ACompletedCheckoutWhoseSubscriptionIsNotReportedRefusesAnother) {
  HttpReply a = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(a.status, 200) << a.body;
  const std::string a_id = a.Json()["session_id"].GetString();
  AddAlicesSubscriptionAtStripe("sub_new", "active");
  fake_.CompleteCheckoutSession(a_id, "sub_new");
  ledger::testing::StripeCheckoutSpec completed;
  completed.session_id = a_id;
  completed.client_reference_id = "alice";
  completed.metadata_user_id = "alice";
  completed.customer_id = "cus_alice";
  completed.subscription_id = "sub_new";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeCheckoutCompletedJson(completed))
                  .status.ok());
  const uint64_t head = Head();
  for (const char* plan : {"professional", "trial"}) {
    SCOPED_TRACE(plan);
    ExpectProblem(Alice().Post(kCheckout, std::string(R"({"plan_id":")") + plan + "\"}"), 409,
                  "checkout_completed");
  }
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
  EXPECT_EQ(Head(), head);
  AddAlicesSubscriptionAtStripe("sub_new", "incomplete_expired");
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"trial"})"), 409, "trial_already_used");
  EXPECT_EQ(Head(), head);
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
}

TEST_F(BillingRoutesTest, CheckoutRefusesASecondSubscriptionBesideARecoverableOne) {
  GiveAliceASubscription("active");
  int64_t later = ledger::testing::kStripeT0;
  for (const char* status : {"unpaid", "paused", "incomplete"}) {
    SCOPED_TRACE(status);
    ledger::testing::StripeSubscriptionSpec sub;
    sub.event_id = std::string("evt_") + status;
    sub.event_created = ++later;
    sub.subscription_id = "sub_alice";
    sub.customer_id = "cus_alice";
    sub.item_id = "si_alice";
    sub.status = status;
    sub.metadata_user_id = "alice";
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeSubscriptionEventJson(sub))
                    .status.ok());
    projections::UserSubscription current;
    ASSERT_TRUE(projections::GetUserSubscription(*ledger_->Snapshot(), "alice", &current).ok());
    ASSERT_EQ(current.status_name(), status);
    const uint64_t head = Head();
    ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 409, "subscription_exists");
    EXPECT_EQ(Head(), head);
  }
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/checkout/sessions").empty());
}

TEST_F(BillingRoutesTest, CheckoutReusesAKnownCustomerAndRefusesASecondSubscription) {
  GiveAliceASubscription("canceled");
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto q = fake_.RequestsTo("POST", "/v1/checkout/sessions").at(0);
  EXPECT_EQ(q.Param("customer"), "cus_alice");
  EXPECT_FALSE(q.HasParam("customer_email"));

  // bob has nothing; alice with a live subscription must change it instead.
  ledger::testing::StripeSubscriptionSpec live;
  live.event_id = "evt_live";
  live.event_created = ledger::testing::kStripeT0 + 100;
  live.subscription_id = "sub_alice2";
  live.customer_id = "cus_alice";
  live.metadata_user_id = "alice";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(live))
                  .status.ok());
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "subscription_exists");
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 1u);
}

// Canceled at its period's end, a subscription is over once the period is, though Stripe's
// customer.subscription.deleted has not arrived: a new checkout is not refused as a second one.
TEST_F(BillingRoutesTest, CheckoutIsOpenOnceASubscriptionCanceledAtItsPeriodsEndHasEnded) {
  GiveAliceASubscription("active");
  ledger::testing::StripeSubscriptionSpec ending;
  ending.event_id = "evt_ending";
  ending.event_created = ledger::testing::kStripeT0 + 10;
  ending.subscription_id = "sub_alice";
  ending.customer_id = "cus_alice";
  ending.item_id = "si_alice";
  ending.metadata_user_id = "alice";
  ending.metadata_plan_id = "starter";
  ending.cancel_at_period_end = true;
  ending.period_start = clock_.NowMicros() / 1'000'000 - 29 * 86400;
  ending.period_end = clock_.NowMicros() / 1'000'000 + 86400;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(ending))
                  .status.ok());
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 409, "subscription_exists");
  clock_.Advance((86400 + 3600) * int64_t{1'000'000});
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 1u);
}

// Beside a plan still billed, a newer one canceled at its period's end is over once the period
// is, before Stripe's deletion arrives: the older plan is the user's subscription from then on,
// and checkout refuses a new one beside it. The newer plan, chosen for being newer, let the user
// buy a third plan (and subscription-status showed it).
TEST_F(BillingRoutesTest, PastANewerPlansScheduledEndCheckoutIsRefusedBesideTheOtherPlan) {
  GiveAliceASubscription("active");
  GiveAliceAProfessionalEndingTomorrow();
  auto shown = [&] {
    HttpReply r = Alice().Get("/api/v1/billing/subscription-status");
    EXPECT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    return doc["subscription"].IsObject() ? std::string(doc["subscription"]["id"].GetString())
                                          : std::string();
  };
  EXPECT_EQ(shown(), "sub_alice_pro");
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "subscription_exists");
  clock_.Advance((86400 + 3600) * int64_t{1'000'000});  // past its end, no deletion yet
  EXPECT_EQ(shown(), "sub_alice");
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})"), 409,
                "subscription_exists");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/checkout/sessions").empty());
}

// Alice's Starter still billed, her newer Professional kept to its period's end past it (Stripe
// has canceled it; its deletion's webhook is late): subscription-status shows the Starter, and
// cancel and upgrade act on it too. They took the Professional (the state-only choice): cancel {}
// answered 200 canceled for sub_alice_pro, appended its cancel and left the Starter billing;
// upgrade answered 409 no_active_subscription after asking Stripe.
TEST_F(BillingRoutesTest, PastANewerPlansScheduledEndCancelActsOnTheOtherPlan) {
  GiveAliceAProfessionalPastItsEnd();
  HttpReply r = Alice().Post(kCancel, "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["subscription_id"].GetString()), "sub_alice");
  EXPECT_EQ(std::string(r.Json()["status"].GetString()), "active");
  EXPECT_TRUE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice_pro").empty());
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("subscription_id":"sub_alice")"), std::string::npos);
}

TEST_F(BillingRoutesTest, PastANewerPlansScheduledEndUpgradeActsOnTheOtherPlan) {
  GiveAliceAProfessionalPastItsEnd();
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["subscription_id"].GetString()), "sub_alice");
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_enterprise_monthly");
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice_pro").empty());
}

// Both of alice's plans past their scheduled ends, both deletions late: the Starter set to end at
// its period's end an hour before the Professional's end. The current one is then the last to
// end (the Professional), its row still active: upgrade spent a Stripe call, asked Stripe for it
// and answered 409 no_active_subscription; a cancel-now sent a DELETE for what Stripe had
// canceled. Both are refused from ledgerd's own state now: nothing asked, no budget spent. A
// cancel at the period's end still asks Stripe, which ended it there: 200, its canceled state.
TEST_F(BillingRoutesTest, PastTheScheduledEndsOfAllPlansTheyCannotBeChanged) {
  GiveAliceAProfessionalPastItsEnd();
  const int64_t now_s = clock_.NowMicros() / 1'000'000;
  ledger::testing::StripeSubscriptionSpec starter;
  starter.event_id = "evt_sub_alice_cancelling";
  starter.event_type = "customer.subscription.updated";
  starter.event_created = ledger::testing::kStripeT0 + 60;
  starter.subscription_id = "sub_alice";
  starter.customer_id = "cus_alice";
  starter.item_id = "si_alice";
  starter.price_id = "price_starter_monthly";
  starter.metadata_user_id = "alice";
  starter.metadata_plan_id = "starter";
  starter.cancel_at_period_end = true;
  starter.period_start = now_s - 31 * 86400;
  starter.period_end = now_s - 2 * 3600;  // before the Professional's end
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(starter))
                  .status.ok());
  FakeStripe::Subscription ended = *fake_.GetSubscription("sub_alice");
  ended.status = "canceled";
  ended.cancel_at_period_end = true;
  ended.current_period_start = starter.period_start;
  ended.current_period_end = starter.period_end;
  ended.ended_at = starter.period_end;
  fake_.AddSubscription(ended);
  HttpReply status = Alice().Get("/api/v1/billing/subscription-status");
  ASSERT_EQ(status.status, 200) << status.body;
  ASSERT_EQ(std::string(status.Json()["subscription"]["id"].GetString()), "sub_alice_pro");
  fake_.ClearRequests();
  const uint64_t head = Head();
  for (int i = 0; i < 15; ++i) {
    ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409,
                  "no_active_subscription");
    ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false})"), 409,
                  "no_active_subscription");
  }
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice_pro").empty());
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), head);
  HttpReply portal = Alice().Post(kPortal, "{}");
  EXPECT_EQ(portal.status, 200) << portal.body;
  HttpReply cancel = Alice().Post(kCancel, "{}");
  ASSERT_EQ(cancel.status, 200) << cancel.body;
  EXPECT_EQ(std::string(cancel.Json()["subscription_id"].GetString()), "sub_alice_pro");
  EXPECT_EQ(std::string(cancel.Json()["status"].GetString()), "canceled");
}

// The same with the Professional on another customer of alice's (made in Stripe's Dashboard,
// tagged for her): the portal and the card list use the customer subscription-status shows, the
// Starter's. They took the Professional's (the state-only choice): her portal could not manage
// the plan she still paid for.
TEST_F(BillingRoutesTest, PastANewerPlansScheduledEndThePortalAndTheCardsAreTheOtherPlans) {
  GiveAliceAProfessionalPastItsEnd("cus_alice_2");
  fake_.AddCustomer("cus_alice_2", "alice@example.com");
  fake_.AddCard("cus_alice", "pm_alice", "visa", "4242", 4, 2031);
  fake_.AddCard("cus_alice_2", "pm_alice_2", "visa", "4444", 4, 2031);
  HttpReply status = Alice().Get("/api/v1/billing/subscription-status");
  ASSERT_EQ(status.status, 200) << status.body;
  EXPECT_EQ(std::string(status.Json()["customer_id"].GetString()), "cus_alice");
  HttpReply portal = Alice().Post(kPortal, "{}");
  ASSERT_EQ(portal.status, 200) << portal.body;
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/billing_portal/sessions").at(0).Param("customer"),
            "cus_alice");
  HttpReply cards = Alice().Get(kPaymentMethods);
  ASSERT_EQ(cards.status, 200) << cards.body;
  ASSERT_EQ(cards.Json().Size(), 1u) << cards.body;
  EXPECT_EQ(std::string(cards.Json()[0]["id"].GetString()), "pm_alice");
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/customers/cus_alice_2").empty());
}

// A suspension decides access whatever the user pays for: raising the plan is refused as a new
// checkout is (it was sent to Stripe, which billed Enterprise while consume answered 402).
TEST_F(BillingRoutesTest, ASuspendedAccountCannotChangePlan) {
  GiveAliceASubscription("active");
  SetAliceOverrideStatus(projections::SubscriptionStatus::kCanceled);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "account_suspended");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  // Cancelling stays open: a suspended user may stop paying.
  EXPECT_EQ(Alice().Post(kCancel, "").status, 200);
}

// A suspended account (an admin's override whose status grants nothing) is not sold a plan: the
// suspension decides access whatever the user pays for (a checkout after the suspended user's
// subscription lapsed was charged, and consume still answered 402).
TEST_F(BillingRoutesTest, ASuspendedAccountCannotCheckOut) {
  GiveAliceASubscription("canceled");
  SetAliceOverrideStatus(projections::SubscriptionStatus::kCanceled);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 409, "account_suspended");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/checkout/sessions").empty());
  // Lifted, the account checks out as before.
  SetAliceOverrideStatus(std::nullopt);
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  EXPECT_EQ(r.status, 200) << r.body;
  // Suspended again, a subscription started after the suspension (at Stripe, or that checkout
  // paid) lifts nothing.
  SetAliceOverrideStatus(projections::SubscriptionStatus::kCanceled);
  ledger::testing::StripeSubscriptionSpec later;
  later.event_id = "evt_later";
  later.event_created = static_cast<int64_t>(std::time(nullptr)) + 60;
  later.created = later.period_start = later.event_created;
  later.period_end = later.created + 30 * 86400;
  later.subscription_id = "sub_alice_later";
  later.customer_id = "cus_alice";
  later.metadata_user_id = "alice";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(later))
                  .status.ok());
  projections::UserAccess access;
  ASSERT_TRUE(projections::GetUserAccess(*ledger_->Snapshot(), "alice", &access).ok());
  EXPECT_EQ(access.subscription.subscription_id(), "sub_alice_later");
  EXPECT_EQ(access.access, projections::AccessLevel::kNone);
  EXPECT_FALSE(access.override_superseded);
}

// The suspension is named before what the plan or the subscription would refuse: a plan without
// a Stripe price answered a suspended user 409 plan_not_purchasable ("run stripe-setup"), and an
// upgrade of a past_due subscription 409 payment_required (pay, then be refused anyway).
TEST_F(BillingRoutesTest, ASuspensionIsNamedBeforeWhatThePlanOrSubscriptionWouldRefuse) {
  projections::Plan team = projections::InitialPlans()[1];
  team.id = "team";
  team.stripe_price_monthly.reset();
  team.stripe_price_yearly.reset();
  projections::CreatePlan create(team, projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&create).status.ok());
  GiveAliceASubscription("past_due");
  SetAliceOverrideStatus(projections::SubscriptionStatus::kCanceled);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"team"})"), 409, "account_suspended");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "account_suspended");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"team"})"), 409, "account_suspended");
  // An unknown plan is still the request's own fault.
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"platinum"})"), 422, "unknown_plan");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/checkout/sessions").empty());
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  // Lifted, the plan's and the subscription's own refusals are back.
  SetAliceOverrideStatus(std::nullopt);
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "payment_required");
}

// A customer deleted at Stripe (a GDPR erasure) is never named to Stripe again: checkout starts
// a new customer, the portal has none.
TEST_F(BillingRoutesTest, ACustomerDeletedAtStripeIsNotNamedAgain) {
  GiveAliceASubscription("canceled");
  const std::string deleted =
      R"({"id":"evt_cus_deleted","object":"event","api_version":"2025-03-31.basil",)"
      R"("created":)" + std::to_string(ledger::testing::kStripeT0 + 50) +
      R"(,"data":{"object":{"id":"cus_alice","object":"customer","email":"alice@example.com"}},)"
      R"("livemode":false,"type":"customer.deleted"})";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(), deleted).status.ok());
  std::vector<Event> events;
  EventFilter filter;
  filter.type = "customer.deleted.v1";
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 10, filter, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].subject, "alice");
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto q = fake_.RequestsTo("POST", "/v1/checkout/sessions").at(0);
  EXPECT_FALSE(q.HasParam("customer")) << q.Param("customer");
  ExpectProblem(Alice().Post(kPortal, ""), 409, "no_stripe_customer");
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/billing_portal/sessions").empty());
}

// The customer deleted at Stripe without a customer.deleted delivery (an endpoint not subscribed
// to it): Stripe refuses it (400 resource_missing on `customer`), and the checkout asks again
// without it, under its own Stripe key, for Checkout to create a new customer. It was a 502 on
// every checkout of the user, for good. A retry with the client's key is answered as stored.
TEST_F(BillingRoutesTest, ACustomerGoneAtStripeWithoutItsWebhookGetsANewOne) {
  GiveAliceASubscription("canceled");
  fake_.DeleteCustomer("cus_alice");
  const size_t sessions_before = EventsOfType("stripe.checkout_session_created.v1").size();
  HttpReply r =
      Alice().Post(kCheckout, R"({"plan_id":"starter"})", {{"Idempotency-Key", "again-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  auto asked = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0].Param("customer"), "cus_alice");
  EXPECT_FALSE(asked[1].HasParam("customer")) << asked[1].Param("customer");
  EXPECT_EQ(asked[1].Param("customer_email"), "alice@example.com");
  EXPECT_NE(asked[0].idempotency_key, asked[1].idempotency_key);
  auto events = EventsOfType("stripe.checkout_session_created.v1");
  ASSERT_EQ(events.size(), sessions_before + 1);
  EXPECT_NE(events.back().data.find(R"("customer":null)"), std::string::npos)
      << events.back().data;
  HttpReply again =
      Alice().Post(kCheckout, R"({"plan_id":"starter"})", {{"Idempotency-Key", "again-1"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, r.body);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 2u);
}

TEST_F(BillingRoutesTest, BadCheckoutBodiesAppendNothingAndCallNobody) {
  auto alice = Alice();
  // The head is taken before the first bad body, so every refusal below is covered (taken after
  // the setup submits, it covered only the last two).
  const uint64_t before_bad_bodies = Head();
  ExpectProblem(alice.Post(kCheckout, "not json"), 400, "invalid_json");
  ExpectProblem(alice.Post(kCheckout, ""), 400, "invalid_json");
  ExpectProblem(alice.Post(kCheckout, "[]"), 400, "invalid_json");
  ExpectProblem(alice.Post(kCheckout, R"({"billing_cycle":"monthly"})"), 422, "validation_failed");
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":7})"), 422, "validation_failed");
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":"starter","billing_cycle":"weekly"})"), 422,
                "validation_failed");
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":"starter","coupon":"x"})"), 422,
                "unknown_field");
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":"platinum"})"), 422, "unknown_plan");
  // The catalog's row for a Stripe price is no plan (it was a 500).
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":"price/price_starter_monthly"})"), 422,
                "unknown_plan");
  EXPECT_EQ(Head(), before_bad_bodies);
  EXPECT_TRUE(fake_.requests().empty());

  // A plan without Stripe prices yet, and a retired one: the two setup submits are the only
  // appends (one event each), and the refusals after them append nothing either.
  projections::Plan team = projections::InitialPlans()[1];
  team.id = "team";
  projections::CreatePlan create(team, projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&create).status.ok());
  projections::RetirePlan retire("enterprise", projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&retire).status.ok());
  const uint64_t head = Head();
  EXPECT_EQ(head, before_bad_bodies + 2);
  HttpReply r = alice.Post(kCheckout, R"({"plan_id":"team"})");
  ExpectProblem(r, 409, "plan_not_purchasable");
  EXPECT_NE(r.body.find("stripe-setup"), std::string::npos);
  ExpectProblem(alice.Post(kCheckout, R"({"plan_id":"enterprise"})"), 422, "plan_not_purchasable");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.requests().empty());
}

TEST_F(BillingRoutesTest, StripeServerErrorsAreRetriedWithTheSameKey) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 2, "POST", "/v1/checkout/sessions");
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].idempotency_key, requests[1].idempotency_key);
  EXPECT_EQ(requests[1].idempotency_key, requests[2].idempotency_key);
  EXPECT_EQ(Head(), head_after_setup_ + 1);
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
}

TEST_F(BillingRoutesTest, AStripeTimeoutIs503AndAppendsNothing) {
  fake_.InjectFault(FakeStripe::Fault::kHang, 3, "POST", "/v1/checkout/sessions");
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ExpectProblem(r, 503, "stripe_unavailable");
  EXPECT_EQ(Head(), head_after_setup_);
  auto requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].idempotency_key, requests[2].idempotency_key);
}

TEST_F(BillingRoutesTest, StripeErrorsAre502AndAppendNothing) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 3);
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 502, "stripe_error");
  fake_.InjectError(400, "invalid_request_error", "No such price: 'price_starter_monthly'", 1);
  HttpReply r = Alice().Post(kCheckout, R"({"plan_id":"starter"})");
  ExpectProblem(r, 502, "stripe_request_failed");
  EXPECT_NE(r.body.find("No such price"), std::string::npos);
  EXPECT_EQ(Head(), head_after_setup_);
}

TEST_F(BillingRoutesTest, AClientIdempotencyKeyReplaysWithoutCallingStripeAgain) {
  const std::string body = R"({"plan_id":"starter"})";
  HttpReply first = Alice().Post(kCheckout, body, {{"Idempotency-Key", "client-key-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  HttpReply second = Alice().Post(kCheckout, body, {{"Idempotency-Key", "client-key-1"}});
  ASSERT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.body, first.body);
  EXPECT_EQ(second.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(second.Header("X-Ledger-Position"), first.Header("X-Ledger-Position"));
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 1u);
  EXPECT_EQ(Head(), head_after_setup_ + 1);

  // The same key with another body: 409, and Stripe is not asked.
  ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"professional"})",
                             {{"Idempotency-Key", "client-key-1"}}),
                409, "idempotency_key_reused");
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout/sessions").size(), 1u);
  // Keys are per user: bob's identical key is his own.
  HttpReply bob = As(bob_token_).Post(kCheckout, body, {{"Idempotency-Key", "client-key-1"}});
  ASSERT_EQ(bob.status, 200) << bob.body;
  EXPECT_NE(bob.body, first.body);
  EXPECT_EQ(Head(), head_after_setup_ + 2);
}

TEST_F(BillingRoutesTest, AClientRetryAfterAFailureReusesStripesIdempotency) {
  // The first try fails at Stripe (nothing appended); the client retries with its key and Stripe
  // sees the same Idempotency-Key, as it would after a crash between Stripe's answer and our log.
  const std::string body = R"({"plan_id":"starter"})";
  fake_.InjectFault(FakeStripe::Fault::kServerError, 3);
  ExpectProblem(Alice().Post(kCheckout, body, {{"Idempotency-Key", "retry-me"}}), 502,
                "stripe_error");
  HttpReply ok = Alice().Post(kCheckout, body, {{"Idempotency-Key", "retry-me"}});
  ASSERT_EQ(ok.status, 200) << ok.body;
  auto requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(requests.size(), 4u);
  for (const auto& q : requests) EXPECT_EQ(q.idempotency_key, requests[0].idempotency_key);
  // Without a client key every request is a new command with its own key (each expiring the
  // session before it: POST .../expire, left out here).
  ASSERT_EQ(Alice().Post(kCheckout, body).status, 200);
  ASSERT_EQ(Alice().Post(kCheckout, body).status, 200);
  requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  requests.erase(std::remove_if(requests.begin(), requests.end(),
                                [](const FakeStripe::Request& q) {
                                  return q.path != "/v1/checkout/sessions";
                                }),
                 requests.end());
  ASSERT_EQ(requests.size(), 6u);
  EXPECT_NE(requests[4].idempotency_key, requests[5].idempotency_key);
  EXPECT_NE(requests[4].idempotency_key, requests[0].idempotency_key);
}

// ---- Portal and payment methods ---------------------------------------------------------------

TEST_F(BillingRoutesTest, PortalNeedsACustomer) {
  HttpReply r = Alice().Post(kPortal, "");
  ExpectProblem(r, 409, "no_stripe_customer");
  EXPECT_FALSE(r.Header("X-Ledger-Position").empty());
  EXPECT_TRUE(fake_.requests().empty());

  GiveAliceASubscription();
  r = Alice().Post(kPortal, "{}");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(std::string(doc["url"].GetString()).rfind("https://billing.stripe.com/", 0), 0u);
  auto q = fake_.RequestsTo("POST", "/v1/billing_portal/sessions").at(0);
  EXPECT_EQ(q.params, (FormParams{{"customer", "cus_alice"}, {"return_url", kReturnUrl}}));
  EXPECT_EQ(q.idempotency_key.rfind("ledgerd-portal-", 0), 0u);
  auto events = EventsOfType("stripe.portal_session_created.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("customer":"cus_alice")"), std::string::npos);
  ExpectProblem(Alice().Post(kPortal, R"({"return_url":"https://evil.example"})"), 422,
                "unknown_field");
}

// A subscription on bob's customer tagged user_id=alice (made in Stripe's Dashboard, or metadata
// edited there) is not alice's: it made cus_bob her customer, so her portal opened bob's Billing
// Portal and her card list showed bob's cards.
TEST_F(BillingRoutesTest, ASubscriptionOnAnothersCustomerNeverLendsItToTheCaller) {
  GiveAliceASubscription();
  ledger::testing::StripeSubscriptionSpec spec;
  spec.event_id = "evt_sub_bob";
  spec.event_type = "customer.subscription.created";
  spec.subscription_id = "sub_bob";
  spec.customer_id = "cus_bob";
  spec.item_id = "si_bob";
  spec.metadata_user_id = "bob";
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(spec))
                  .status.ok());
  spec.event_id = "evt_sub_odd";
  spec.subscription_id = "sub_odd";
  spec.item_id = "si_odd";
  spec.metadata_user_id = "alice";
  spec.created = ledger::testing::kStripeT0 + 86400;
  spec.event_created = spec.created;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(spec))
                  .status.ok());
  fake_.AddCustomer("cus_bob", "bob@example.com");
  fake_.AddCard("cus_bob", "pm_bob", "visa", "4242", 4, 2031);
  fake_.ClearRequests();
  HttpReply portal = Alice().Post(kPortal, "{}");
  ASSERT_EQ(portal.status, 200) << portal.body;
  auto q = fake_.RequestsTo("POST", "/v1/billing_portal/sessions").at(0);
  EXPECT_EQ(q.Param("customer"), "cus_alice");
  HttpReply cards = Alice().Get(kPaymentMethods);
  ASSERT_EQ(cards.status, 200) << cards.body;
  EXPECT_EQ(cards.body.find("pm_bob"), std::string::npos) << cards.body;
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/customers/cus_bob").empty());
}

TEST_F(BillingRoutesTest, PaymentMethods) {
  HttpReply none = Alice().Get(kPaymentMethods);
  ASSERT_EQ(none.status, 200) << none.body;
  EXPECT_EQ(none.body, "[]");
  EXPECT_EQ(none.Header("X-Has-More"), "false");
  EXPECT_TRUE(fake_.requests().empty());

  GiveAliceASubscription();
  fake_.AddCard("cus_alice", "pm_1", "visa", "4242", 4, 2031);
  const uint64_t head = Head();
  HttpReply r = Alice().Get(kPaymentMethods);
  ASSERT_EQ(r.status, 200) << r.body;
  // A bare list, as the seed's List[PaymentMethod].
  EXPECT_EQ(r.body,
            R"([{"id":"pm_1","type":"card","brand":"visa","last4":"4242",)"
            R"("exp_month":4,"exp_year":2031}])");
  EXPECT_EQ(r.Header("X-Has-More"), "false");
  EXPECT_EQ(r.Header("X-Ledger-Position"), std::to_string(head));
  auto q = fake_.RequestsTo("GET", "/v1/customers/cus_alice/payment_methods").at(0);
  EXPECT_EQ(q.params, (FormParams{{"type", "card"}, {"limit", "100"}}));
  EXPECT_FALSE(q.has_idempotency_key);
  EXPECT_EQ(Head(), head);  // a read appends nothing

  // More cards than Stripe lists unless asked (10): all of them.
  for (int i = 2; i <= 12; ++i) {
    fake_.AddCard("cus_alice", "pm_" + std::to_string(i), "visa", "4242", 4, 2031);
  }
  r = Alice().Get(kPaymentMethods);
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.Json().IsArray()) << r.body;
  EXPECT_EQ(r.Json().Size(), 12u) << r.body;
  EXPECT_EQ(r.Header("X-Has-More"), "false");

  fake_.InjectFault(FakeStripe::Fault::kHang, 3);
  ExpectProblem(Alice().Get(kPaymentMethods), 503, "stripe_unavailable");
}

// Each portal session (checkout, cancel, plan change) makes Stripe calls and appends a permanent
// event published to Kafka: a user looping on POST /portal/create {} got 200 every time -- the log
// grew for ever and Stripe's per-account rate limit went to one user, every other customer's
// checkout answering 503 stripe_rate_limited. A user gets a burst of ten such calls, then one
// every 6 s (429 rate_limited with Retry-After; Stripe is not asked, nothing is appended); the
// four routes share the budget; another user has one of their own.
TEST_F(BillingRoutesTest, StripeCallingRoutesAreRateLimitedPerUser) {
  GiveAliceASubscription();
  const uint64_t start = Head();
  int made = 0, refused = 0;
  for (int i = 0; i < 50; ++i) {
    HttpReply r = Alice().Post(kPortal, "{}");
    if (r.status == 200) {
      ++made;
    } else {
      ExpectProblem(r, 429, "rate_limited");
      EXPECT_EQ(r.Header("Retry-After"), "6") << i;
      ++refused;
    }
  }
  EXPECT_EQ(made, 10);
  EXPECT_EQ(refused, 40);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/billing_portal/sessions").size(), 10u);
  EXPECT_EQ(fake_.portal_session_count(), 10u);
  EXPECT_EQ(EventsOfType("stripe.portal_session_created.v1").size(), 10u);
  EXPECT_EQ(Head(), start + 10);
  // One budget for every route that asks Stripe to act.
  fake_.ClearRequests();
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false})"), 429, "rate_limited");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 429, "rate_limited");
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), start + 10);
  // Another user's budget is their own.
  ASSERT_EQ(As(bob_token_).Post(kCheckout, R"({"plan_id":"starter"})").status, 200);
  // Refilled at one per 6 s.
  clock_.Advance(5'000'000);
  ExpectProblem(Alice().Post(kPortal, "{}"), 429, "rate_limited");
  clock_.Advance(1'000'000);
  EXPECT_EQ(Alice().Post(kPortal, "{}").status, 200);
  ExpectProblem(Alice().Post(kPortal, "{}"), 429, "rate_limited");
}

// The budget is spent where Stripe is first asked: a refusal decided from ledgerd's own state
// calls nobody and spends nothing. A past_due user clicking "upgrade" (409 payment_required each
// time) spent the budget of the portal session the 409 sends them to, and a checkout beside a
// subscription (409 subscription_exists) spent it too.
TEST_F(BillingRoutesTest, RefusalsFromLedgerdsOwnStateSpendNoBudget) {
  GiveAliceASubscription("past_due", "price_starter_monthly", "starter");
  for (int i = 0; i < 15; ++i) {
    ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "payment_required");
    ExpectProblem(Alice().Post(kCheckout, R"({"plan_id":"starter"})"), 409,
                  "subscription_exists");
  }
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), head_after_setup_);
  HttpReply portal = Alice().Post(kPortal, "{}");
  EXPECT_EQ(portal.status, 200) << portal.body;
}

// A plan change the catalog refuses is decided before the budget is spent and Stripe asked:
// Alice (Starter) choosing the trial 15 times made 15 GETs of her subscription at Stripe and
// spent her budget, so her portal was 429 after 10 -- only to be told 422 plan_not_purchasable.
// The same for a retired plan and a plan without Stripe prices (in neither cycle, so Stripe's
// interval cannot make it sellable).
TEST_F(BillingRoutesTest, RefusedPlanChangesSpendNoBudget) {
  GiveAliceASubscription();
  projections::RetirePlan retire("enterprise", projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&retire).status.ok());
  projections::SetPlanStripePrices unpriced("professional", "", "",
                                            projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&unpriced).status.ok());
  fake_.ClearRequests();
  const uint64_t head = Head();
  for (int i = 0; i < 15; ++i) {
    ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"trial"})"), 422, "plan_not_purchasable");
    ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise","billing_cycle":"monthly"})"),
                  422, "plan_not_purchasable");
    HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional"})");
    ExpectProblem(r, 409, "plan_not_purchasable");
    EXPECT_NE(r.body.find("stripe-setup"), std::string::npos) << r.body;
  }
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), head);
  HttpReply portal = Alice().Post(kPortal, "{}");
  EXPECT_EQ(portal.status, 200) << portal.body;
}

// Without billing_cycle, a plan sold monthly only is refused by Stripe's interval: a yearly
// subscriber is told it is not sold yearly (asked at Stripe, as a sellable change would be).
TEST_F(BillingRoutesTest, AMonthlyOnlyPlanIsRefusedToAYearlySubscriberByStripesInterval) {
  projections::Plan team = projections::InitialPlans()[2];
  team.id = "team";
  team.price_yearly_cents.reset();
  team.stripe_price_monthly = "price_team_monthly";
  team.stripe_price_yearly.reset();
  projections::CreatePlan create(team, projections::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&create).status.ok());
  GiveAliceASubscription("active", "price_starter_yearly", "starter");
  const uint64_t head = Head();
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"team"})");
  ExpectProblem(r, 422, "plan_not_purchasable");
  EXPECT_NE(r.body.find("is not sold yearly"), std::string::npos) << r.body;
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(Head(), head);
}

// Cancels refused from ledgerd's own state spend nothing either: bob, with no subscription,
// cancelling (409 no_active_subscription) ten times left no budget for his checkout (429
// rate_limited), and alice naming a subscription not hers (404) none for her portal, though
// Stripe was never asked.
TEST_F(BillingRoutesTest, RefusedCancelsSpendNoBudget) {
  GiveAliceASubscription();
  fake_.ClearRequests();
  const uint64_t head = Head();
  for (int i = 0; i < 15; ++i) {
    ExpectProblem(As(bob_token_).Post(kCancel, "{}"), 409, "no_active_subscription");
    ExpectProblem(As(bob_token_).Post(kCancel, R"({"at_period_end":false})",
                                      {{"Idempotency-Key", "c" + std::to_string(i)}}),
                  409, "no_active_subscription");
    ExpectProblem(Alice().Post(kCancel, R"({"subscription_id":"sub_bob"})"), 404, "not_found");
  }
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), head);
  HttpReply checkout = As(bob_token_).Post(kCheckout, R"({"plan_id":"starter"})");
  EXPECT_EQ(checkout.status, 200) << checkout.body;
  HttpReply portal = Alice().Post(kPortal, "{}");
  EXPECT_EQ(portal.status, 200) << portal.body;
}

// Stripe's update after a cancel at the period's end: sub_alice (Starter) is set to end then
// (`period_end` when set, else the spec's, which is past the clock: an end ledgerd takes for
// reached).
std::string AliceCancellingAtPeriodEndJson(std::optional<int64_t> period_end = std::nullopt) {
  ledger::testing::StripeSubscriptionSpec update;
  update.event_id = "evt_sub_alice_cancelling";
  update.event_type = "customer.subscription.updated";
  update.event_created = ledger::testing::kStripeT0 + 60;
  update.subscription_id = "sub_alice";
  update.customer_id = "cus_alice";
  update.status = "active";
  update.item_id = "si_alice";
  update.price_id = "price_starter_monthly";
  update.metadata_user_id = "alice";
  update.metadata_plan_id = "starter";
  update.cancel_at_period_end = true;
  if (period_end) {
    update.period_start = *period_end - 30 * 86400;
    update.period_end = *period_end;
  }
  return ledger::testing::StripeSubscriptionEventJson(update);
}

// A cancel at the period's end of an already-cancelling subscription is recorded under its
// Idempotency-Key: when it was answered from ledgerd's state it recorded nothing under the key,
// so the same key with another body (cancel now) was taken as a new request -- a DELETE at
// Stripe -- instead of 409 idempotency_key_reused.
TEST_F(BillingRoutesTest, AnIdempotencyKeyOfAnAlreadyCancellingAnswerIsNotReusable) {
  GiveAliceASubscription();
  ASSERT_EQ(Alice().Post(kCancel, R"({"at_period_end":true})").status, 200);
  ASSERT_TRUE(
      ledger::testing::SubmitWebhook(ledger_.get(), AliceCancellingAtPeriodEndJson()).status.ok());
  HttpReply again = Alice().Post(kCancel, R"({"at_period_end":true})", {{"Idempotency-Key", "K"}});
  ASSERT_EQ(again.status, 200) << again.body;
  fake_.ClearRequests();
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false})", {{"Idempotency-Key", "K"}}),
                409, "idempotency_key_reused");
  EXPECT_TRUE(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").empty());
  // Its retry gets the recorded answer.
  HttpReply retry = Alice().Post(kCancel, R"({"at_period_end":true})", {{"Idempotency-Key", "K"}});
  EXPECT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(retry.Header("Idempotent-Replayed"), "true");
}

// A retry answered from its Idempotency-Key's record calls nobody and appends nothing: it spends
// nothing and is not refused once the budget is spent.
TEST_F(BillingRoutesTest, ARetryFromItsRecordSpendsNoBudget) {
  GiveAliceASubscription();
  HttpReply first = Alice().Post(kPortal, "{}", {{"Idempotency-Key", "portal-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  // Retried past the budget: each is its record, none is counted.
  for (int i = 0; i < 20; ++i) {
    HttpReply again = Alice().Post(kPortal, "{}", {{"Idempotency-Key", "portal-1"}});
    ASSERT_EQ(again.status, 200) << i << again.body;
    EXPECT_EQ(again.body, first.body);
    EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  }
  EXPECT_EQ(fake_.portal_session_count(), 1u);
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(Alice().Post(kPortal, "{}", {{"Idempotency-Key", "p" + std::to_string(i)}}).status,
              200)
        << i;
  }
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kPortal, "{}", {{"Idempotency-Key", "p-over"}}), 429,
                "rate_limited");
  HttpReply retried = Alice().Post(kPortal, "{}", {{"Idempotency-Key", "portal-1"}});
  EXPECT_EQ(retried.status, 200) << retried.body;
  EXPECT_EQ(retried.body, first.body);
  EXPECT_EQ(fake_.portal_session_count(), 10u);
  EXPECT_EQ(Head(), head);
}

// Listing payment methods asks Stripe every time (nothing appended): a bucket of its own, a burst
// of ten then one every 3 s, which leaves the budget of the checkouts and cancels alone.
TEST_F(BillingRoutesTest, PaymentMethodListsAreRateLimitedPerUser) {
  GiveAliceASubscription();
  fake_.AddCard("cus_alice", "pm_1", "visa", "4242", 4, 2031);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(Alice().Get(kPaymentMethods).status, 200) << i;
  HttpReply r = Alice().Get(kPaymentMethods);
  ExpectProblem(r, 429, "rate_limited");
  EXPECT_EQ(r.Header("Retry-After"), "3");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/customers/cus_alice/payment_methods").size(), 10u);
  EXPECT_EQ(Alice().Post(kPortal, "{}").status, 200);
  clock_.Advance(3'000'000);
  EXPECT_EQ(Alice().Get(kPaymentMethods).status, 200);
}

// ---- Cancel and upgrade -----------------------------------------------------------------------

TEST_F(BillingRoutesTest, CancelAtPeriodEnd) {
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":true})"), 409, "no_active_subscription");
  GiveAliceASubscription();
  // The seed's clients name the subscription: another's is not found, and nothing happens.
  const uint64_t before = Head();
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":true,"subscription_id":"sub_bob"})"),
                404, "not_found");
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(Head(), before);
  HttpReply r = Alice().Post(kCancel, R"({"at_period_end":true,"subscription_id":"sub_alice"})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(std::string(doc["subscription_id"].GetString()), "sub_alice");
  EXPECT_EQ(std::string(doc["status"].GetString()), "active");
  EXPECT_TRUE(doc["cancel_at_period_end"].GetBool());
  EXPECT_TRUE(doc["cancel_at"].IsInt64());
  auto q = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").at(0);
  EXPECT_EQ(q.params, (FormParams{{"cancel_at_period_end", "true"}}));
  EXPECT_EQ(q.idempotency_key.rfind("ledgerd-cancel_at_period_end-", 0), 0u);
  EXPECT_TRUE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("at_period_end":true)"), std::string::npos);
  // The default is at the period end.
  ASSERT_EQ(Alice().Post(kCancel, "").status, 200);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").size(), 2u);
}

// A cancel at the period's end of a subscription ledgerd knows is set to cancel then still asks
// Stripe: Alice cancels (Stripe's update arrives), clicks "Renew" in the Billing Portal (Stripe's
// update of that is still on its way) and cancels again. That was answered 200 from ledgerd's
// state with nothing sent, and Stripe renewed her subscription and charged her.
TEST_F(BillingRoutesTest, CancelAtPeriodEndOfACancellingSubscriptionAsksStripeAgain) {
  GiveAliceASubscription();
  HttpReply first = Alice().Post(kCancel, R"({"at_period_end":true})");
  ASSERT_EQ(first.status, 200) << first.body;
  // Stripe's update arrives: ledgerd knows the subscription ends at its period's end, tomorrow.
  ASSERT_TRUE(ledger::testing::SubmitWebhook(
                  ledger_.get(),
                  AliceCancellingAtPeriodEndJson(clock_.NowMicros() / 1'000'000 + 86400))
                  .status.ok());
  // Renewed in the portal; ledgerd has not heard of it yet.
  FakeStripe::Subscription renewed = *fake_.GetSubscription("sub_alice");
  ASSERT_TRUE(renewed.cancel_at_period_end);
  renewed.cancel_at_period_end = false;
  fake_.AddSubscription(renewed);
  fake_.ClearRequests();
  const uint64_t head = Head();
  for (const char* body : {R"({"at_period_end":true})", R"({"subscription_id":"sub_alice"})"}) {
    HttpReply again = Alice().Post(kCancel, body);
    ASSERT_EQ(again.status, 200) << body << again.body;
    rapidjson::Document doc = again.Json();
    ASSERT_TRUE(doc.IsObject()) << again.body;
    EXPECT_EQ(std::string(doc["subscription_id"].GetString()), "sub_alice");
    EXPECT_EQ(std::string(doc["status"].GetString()), "active");
    EXPECT_TRUE(doc["at_period_end"].GetBool());
    EXPECT_TRUE(doc["cancel_at_period_end"].GetBool());
    EXPECT_TRUE(doc["cancel_at"].IsInt64()) << again.body;
    EXPECT_TRUE(doc["current_period_end"].IsInt64()) << again.body;
  }
  auto asked = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0].params, (FormParams{{"cancel_at_period_end", "true"}}));
  EXPECT_NE(asked[0].idempotency_key, asked[1].idempotency_key);
  EXPECT_EQ(asked[0].idempotency_key.rfind("ledgerd-cancel_at_period_end-", 0), 0u);
  EXPECT_TRUE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  EXPECT_EQ(Head(), head + 2);
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 3u);
  // Another's subscription is still not found; cancelling now still cancels.
  ExpectProblem(Alice().Post(kCancel, R"({"subscription_id":"sub_bob"})"), 404, "not_found");
  HttpReply now = Alice().Post(kCancel, R"({"at_period_end":false})");
  ASSERT_EQ(now.status, 200) << now.body;
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_EQ(Head(), head + 3);
}

// Past the period's end Stripe has canceled the subscription and refuses an update of it; its
// deletion's webhook has not arrived (Stripe retries it for days), so ledgerd still shows it
// active and cancelling. Cancelling at the period's end again answered 502 stripe_request_failed
// (the button errored, each retry spent budget); the subscription has ended as asked: 200.
TEST_F(BillingRoutesTest, CancelAtPeriodEndOfASubscriptionStripeHasEndedIsItsEndedState) {
  GiveAliceASubscription();
  ASSERT_EQ(Alice().Post(kCancel, R"({"at_period_end":true})").status, 200);
  ASSERT_TRUE(
      ledger::testing::SubmitWebhook(ledger_.get(), AliceCancellingAtPeriodEndJson()).status.ok());
  FakeStripe::Subscription ended = *fake_.GetSubscription("sub_alice");
  ended.status = "canceled";
  ended.canceled_at = 1'700'500'000;
  fake_.AddSubscription(ended);
  HttpReply again = Alice().Post(kCancel, R"({"at_period_end":true})");
  ASSERT_EQ(again.status, 200) << again.body;
  rapidjson::Document doc = again.Json();
  ASSERT_TRUE(doc.IsObject()) << again.body;
  EXPECT_EQ(std::string(doc["subscription_id"].GetString()), "sub_alice");
  EXPECT_EQ(std::string(doc["status"].GetString()), "canceled");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice").size(), 1u);
}

// The same without the cancel flag: Stripe ended it at its period's end by itself (a schedule's
// end, a cancel date set at the period's end in the Dashboard): what was asked, 200.
TEST_F(BillingRoutesTest, CancelAtPeriodEndOfASubscriptionStripeEndedAtItsPeriodsEndIsItsEndedState) {
  GiveAliceASubscription();
  FakeStripe::Subscription ended = *fake_.GetSubscription("sub_alice");
  ended.status = "canceled";
  ended.canceled_at = 1'700'500'000;
  ended.ended_at = ended.current_period_end;
  fake_.AddSubscription(ended);
  HttpReply again = Alice().Post(kCancel, "{}");
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(std::string(again.Json()["status"].GetString()), "canceled");
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 1u);
}

// Stripe canceled alice's subscription mid-period (the Dashboard, support, dunning) and its
// deletion's webhook has not arrived: ledgerd shows it active, not set to end. A cancel at the
// period's end asked Stripe, which refused the update, and took the subscription Stripe showed
// canceled for what was asked: 200 and a stripe.subscription_cancel_requested.v1 the user never
// made. It ended before its period's end, and not by this request: 409, nothing appended.
TEST_F(BillingRoutesTest, CancelAtPeriodEndOfASubscriptionEndedInTheDashboardIsRefused) {
  GiveAliceASubscription();
  EndAlicesSubscriptionInTheDashboard();
  ASSERT_FALSE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCancel, "{}"), 409, "no_active_subscription");
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(EventsOfType("stripe.subscription_cancel_requested.v1").empty());
}

// A subscription whose first invoice was never paid expires at Stripe (incomplete_expired, a
// terminal state) while ledgerd may still show it incomplete: its webhook has not arrived. Stripe
// refuses to update it, and a refused DELETE finds it so: it has ended, 409 -- it answered
// Stripe's refusal (502 stripe_request_failed). Nothing is appended.
TEST_F(BillingRoutesTest, ACancelOfASubscriptionThatExpiredAtStripeIsRefused) {
  GiveAliceASubscription("incomplete");
  FakeStripe::Subscription expired = *fake_.GetSubscription("sub_alice");
  expired.status = "incomplete_expired";
  expired.canceled_at = 1'700'100'000;
  fake_.AddSubscription(expired);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCancel, "{}"), 409, "no_active_subscription");
  fake_.InjectError(400, "invalid_request_error",
                    "ledgerd fake: a subscription that is incomplete_expired cannot be canceled", 1,
                    "DELETE", "/v1/subscriptions/sub_alice");
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false})"), 409,
                "no_active_subscription");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "incomplete_expired");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(EventsOfType("stripe.subscription_cancel_requested.v1").empty());
}

// Alice has two live subscriptions (a second checkout, or one made in Stripe's Dashboard): the
// older Starter one and the newer Professional one, which is her current one. Naming the older
// one cancels it -- it answered 404 though it was hers, and without naming it the cancel hit the
// newer one -- and another user's is still not found.
TEST_F(BillingRoutesTest, CancelNamingTheCallersOtherLiveSubscription) {
  GiveAliceASubscription();  // sub_alice: Starter, created kStripeT0
  ledger::testing::StripeSubscriptionSpec newer;
  newer.event_id = "evt_sub_newer";
  newer.event_type = "customer.subscription.created";
  newer.subscription_id = "sub_newer";
  newer.customer_id = "cus_alice";
  newer.item_id = "si_newer";
  newer.price_id = "price_professional_monthly";
  newer.unit_amount = 4900;
  newer.metadata_user_id = "alice";
  newer.metadata_plan_id = "professional";
  newer.created = ledger::testing::kStripeT0 + 86400;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(newer))
                  .status.ok());
  FakeStripe::Subscription newer_at_stripe = *fake_.GetSubscription("sub_alice");
  newer_at_stripe.id = "sub_newer";
  newer_at_stripe.item_id = "si_newer";
  newer_at_stripe.price_id = "price_professional_monthly";
  fake_.AddSubscription(newer_at_stripe);
  {
    projections::UserSubscription current;
    ASSERT_TRUE(projections::GetUserSubscription(*ledger_->Snapshot(), "alice", &current).ok());
    ASSERT_EQ(current.subscription_id(), "sub_newer");
  }
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":true,"subscription_id":"sub_bob"})"),
                404, "not_found");
  EXPECT_EQ(Head(), head);

  HttpReply r = Alice().Post(kCancel, R"({"at_period_end":true,"subscription_id":"sub_alice"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["subscription_id"].GetString()), "sub_alice");
  auto q = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].params, (FormParams{{"cancel_at_period_end", "true"}}));
  EXPECT_TRUE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_newer").empty());
  EXPECT_FALSE(fake_.GetSubscription("sub_newer")->cancel_at_period_end);
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("subscription_id":"sub_alice")"), std::string::npos);

  // Once it has ended, naming it is 409: there is nothing left to cancel there.
  DeliverAlicesSubscription("evt_sub_alice_deleted", "customer.subscription.deleted", "canceled",
                            "price_starter_monthly", "starter");
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false,"subscription_id":"sub_alice"})"),
                409, "no_active_subscription");
  EXPECT_TRUE(fake_.RequestsTo("DELETE", "/v1/subscriptions/").empty());
}

TEST_F(BillingRoutesTest, CancelNow) {
  GiveAliceASubscription();
  HttpReply r = Alice().Post(kCancel, R"({"at_period_end":false})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["status"].GetString()), "canceled");
  auto q = fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(q.size(), 1u);
  EXPECT_FALSE(q[0].has_idempotency_key);
  // What is pending (an upgrade's proration items) is invoiced now, not dropped with the
  // subscription: else a plan raised and then canceled at once is never paid for.
  EXPECT_EQ(q[0].Param("invoice_now"), "true");
  // The DELETE names the request in its cancellation comment (it carries no Idempotency-Key):
  // a retry finds it there after the subscription ended. By a marker keyed by the server's
  // secret (RequestMarker), not the request's Stripe key: a user can compute that one.
  const std::string comment = q[0].Param("cancellation_details[comment]");
  EXPECT_EQ(comment.rfind("ledgerd_request:", 0), 0u) << comment;
  EXPECT_EQ(comment.size(), std::string("ledgerd_request:").size() + 32) << comment;
  EXPECT_EQ(comment.find("ledgerd-cancel_now-"), std::string::npos) << comment;
  EXPECT_EQ(comment.find(kFakeStripeSecretKey), std::string::npos) << comment;
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->cancellation_comment, comment);
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("stripe_idempotency_key":null)"), std::string::npos);
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":"yes"})"), 422, "validation_failed");
}

// A subscription schedule manages alice's subscription (the Billing Portal, set to apply
// downgrades at the period's end, or the Dashboard scheduled one). Stripe refuses
// cancel_at_period_end on it ("... managed by the subscription schedule `sub_sched_1`, and updating
// any cancelation behavior directly is not allowed"): that answered 502 stripe_request_failed on
// every try, each spending the user's budget, and the user could never cancel through the API. A
// 409 subscription_scheduled sends them to the portal; nothing is appended.
TEST_F(BillingRoutesTest, CancelOfAScheduleManagedSubscriptionIs409) {
  GiveAliceASubscription();
  FakeStripe::Subscription scheduled = *fake_.GetSubscription("sub_alice");
  scheduled.schedule = "sub_sched_1";
  fake_.AddSubscription(scheduled);
  const uint64_t head = Head();
  HttpReply r = Alice().Post(kCancel, "{}");
  ExpectProblem(r, 409, "subscription_scheduled");
  EXPECT_NE(r.body.find("portal"), std::string::npos) << r.body;
  auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(posts[0].status, 400);  // Stripe's refusal, recognised by the subscription's schedule
  EXPECT_FALSE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(EventsOfType("stripe.subscription_cancel_requested.v1").empty());
}

// Cancelling now is not a change of its cancelation behavior: Stripe cancels a subscription a
// schedule manages (and the schedule with it).
TEST_F(BillingRoutesTest, CancelNowOfAScheduleManagedSubscriptionCancelsIt) {
  GiveAliceASubscription();
  FakeStripe::Subscription scheduled = *fake_.GetSubscription("sub_alice");
  scheduled.schedule = "sub_sched_1";
  fake_.AddSubscription(scheduled);
  HttpReply r = Alice().Post(kCancel, R"({"at_period_end":false})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(std::string(r.Json()["status"].GetString()), "canceled");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "canceled");
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 1u);
}

// Stripe takes a price change of a subscription a schedule manages, but the schedule's next
// phase sets the items it names: the portal's downgrade to Starter at the period's end replaced
// the Professional just charged for (prorated), while the log recorded the change. Refused with
// 409 subscription_scheduled from Stripe's own subscription (read before the change); nothing is
// sent or appended.
TEST_F(BillingRoutesTest, AChangeOfAScheduleManagedSubscriptionIs409) {
  GiveAliceASubscription();
  FakeStripe::Subscription scheduled = *fake_.GetSubscription("sub_alice");
  scheduled.schedule = "sub_sched_1";
  fake_.AddSubscription(scheduled);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 409,
                "subscription_scheduled");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_starter_monthly");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(EventsOfType("stripe.subscription_change_requested.v1").empty());
  // Once the schedule is released (or has completed), the change goes through.
  scheduled.schedule.clear();
  fake_.AddSubscription(scheduled);
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_monthly");
}

// Naming a subscription that is not the caller's is 404 whoever asks (README): a caller with no
// subscription to change got 409 no_active_subscription for it, one with a subscription 404.
TEST_F(BillingRoutesTest, NamingAnothersSubscriptionIs404WhetherOrNotTheCallerHasOne) {
  GiveAliceASubscription();
  fake_.ClearRequests();
  const uint64_t head = Head();
  // bob has no subscription.
  ExpectProblem(As(bob_token_).Post(kCancel, R"({"subscription_id":"sub_alice"})"), 404,
                "not_found");
  ExpectProblem(As(bob_token_).Post(kCancel, R"({"at_period_end":false,"subscription_id":"sub_x"})",
                                    {{"Idempotency-Key", "bob-1"}}),
                404, "not_found");
  // alice has one.
  ExpectProblem(Alice().Post(kCancel, R"({"subscription_id":"sub_x"})"), 404, "not_found");
  // Naming none, bob has nothing to cancel.
  ExpectProblem(As(bob_token_).Post(kCancel, "{}"), 409, "no_active_subscription");
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "active");
  EXPECT_FALSE(fake_.GetSubscription("sub_alice")->cancel_at_period_end);
}

TEST_F(BillingRoutesTest, UpgradeIsAProratedPriceChangeOfTheItem) {
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 409,
                "no_active_subscription");
  GiveAliceASubscription();
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"monthly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body,
            R"({"subscription_id":"sub_alice","plan_id":"professional","billing_cycle":"monthly",)"
            R"("price_id":"price_professional_monthly","status":"active",)"
            R"("proration_behavior":"create_prorations"})");
  auto q = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").at(0);
  EXPECT_EQ(q.params, (FormParams{{"items[0][id]", "si_alice"},
                                  {"items[0][price]", "price_professional_monthly"},
                                  {"proration_behavior", "create_prorations"},
                                  {"payment_behavior", "error_if_incomplete"},
                                  {"metadata[plan_id]", "professional"},
                                  {"metadata[billing_cycle]", "monthly"},
                                  {"metadata[ledgerd_request]", q.idempotency_key},
                                  {"metadata[ledgerd_from_price]", "price_starter_monthly"},
                                  {"metadata[ledgerd_ended_trial]", ""}}));
  EXPECT_EQ(q.idempotency_key.rfind("ledgerd-change_plan-", 0), 0u);
  auto at_stripe = fake_.GetSubscription("sub_alice");
  EXPECT_EQ(at_stripe->price_id, "price_professional_monthly");
  EXPECT_EQ(at_stripe->last_proration_behavior, "create_prorations");
  auto events = EventsOfType("stripe.subscription_change_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("from_price_id":"price_starter_monthly")"), std::string::npos);
  EXPECT_NE(events[0].data.find(R"("from_plan_id":"starter")"), std::string::npos);

  // Again: Stripe already has it.
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 409, "already_on_plan");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"trial"})"), 422, "plan_not_purchasable");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"nope"})"), 422, "unknown_plan");
  EXPECT_EQ(Head(), head);
}

// A grandfathered subscriber: on Professional monthly at its old price when an admin repriced
// the plan (PUT /plans/professional with a new amount and Stripe price). Choosing Professional
// monthly again is already_on_plan -- it moved the item to the new price with prorations, the
// user's old price lost for good -- while the other cycle is a change as any.
TEST_F(BillingRoutesTest, ChoosingThePlanAgainKeepsAGrandfatheredPrice) {
  GiveAliceASubscription("active", "price_professional_monthly", "professional");
  projections::PlanInput input;
  ASSERT_TRUE(projections::ParsePlanInput(
                  R"({"price_monthly_cents":5900,"price_yearly_cents":49000,)"
                  R"("stripe_price_monthly":"price_new"})",
                  "professional", &input)
                  .ok());
  projections::UpdatePlan reprice(input, projections::Actor::Admin("root", "root@example.com"));
  const Status repriced = ledger_->Submit(&reprice).status;
  ASSERT_TRUE(repriced.ok()) << repriced.ToString();
  FakeStripe::Price price_new;
  price_new.id = "price_new";
  price_new.product = "prod_professional";
  price_new.unit_amount = 5900;
  price_new.interval = "month";
  fake_.AddPrice(price_new);
  const uint64_t head = Head();
  for (const char* body : {R"({"plan_id":"professional","billing_cycle":"monthly"})",
                           R"({"plan_id":"professional"})"}) {
    SCOPED_TRACE(body);
    ExpectProblem(Alice().Post(kUpgrade, body), 409, "already_on_plan");
  }
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_monthly");

  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"yearly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_yearly");
}

// Stripe keeps a trial running through a price change and prorates nothing during it: an
// upgrade from the $1 trial must end the trial, or it gets the paid plan free until trial_end.
TEST_F(BillingRoutesTest, AnUpgradeDuringTheTrialEndsTheTrial) {
  GiveAliceASubscription("trialing", "price_starter_monthly", "trial");
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})");
  ASSERT_EQ(r.status, 200) << r.body;
  const FakeStripe::Request post = TheTrialEndingPost();
  EXPECT_NE(std::find(post.params.begin(), post.params.end(),
                      std::make_pair(std::string("metadata[ledgerd_ended_trial]"),
                                     post.idempotency_key)),
            post.params.end());
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "active");
  EXPECT_NE(r.body.find(R"("status":"active")"), std::string::npos) << r.body;

  // A subscription that is not trialing changes its price only.
  DeliverAlicesSubscription("evt_sub_alice_2", "customer.subscription.updated", "active",
                            "price_enterprise_monthly", "enterprise");
  ASSERT_EQ(Alice().Post(kUpgrade, R"({"plan_id":"professional"})").status, 200);
  auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 2u);
  for (const auto& [k, v] : posts[1].params) {
    EXPECT_NE(k, "trial_end");
    if (k == "metadata[ledgerd_ended_trial]") {
      EXPECT_EQ(v, "");  // clears the trial's
    }
  }
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->metadata.count("ledgerd_ended_trial"), 0u);

  // That second change, its record lost and retried with its key: sent again exactly as first
  // (a stale ledgerd_ended_trial from the trial's change must not add trial_end=now).
  const std::string body = R"({"plan_id":"starter"})";
  ASSERT_EQ(Alice().Post(kUpgrade, body, {{"Idempotency-Key", "up-after-trial"}}).status, 200);
  LoseTheLog();
  GiveAliceASubscription("active", "price_professional_monthly", "professional",
                         /*at_stripe_too=*/false);
  HttpReply retry = Alice().Post(kUpgrade, body, {{"Idempotency-Key", "up-after-trial"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 4u);
  EXPECT_EQ(posts[3].idempotency_key, posts[2].idempotency_key);
  EXPECT_EQ(posts[3].params, posts[2].params);
}

// The plan a subscription is on is the price Stripe bills, not its plan_id tag: a trial that
// converted by itself keeps checkout's tag "trial" on Starter's price (status active). Choosing
// Starter went to Stripe, spent a Stripe call and recorded a change from Starter to Starter.
TEST_F(BillingRoutesTest, ATrialThatConvertedIsAlreadyOnStarter) {
  GiveAliceASubscription("active", "price_starter_monthly", "trial");
  const uint64_t head = Head();
  for (const char* body : {R"({"plan_id":"starter"})",
                           R"({"plan_id":"starter","billing_cycle":"monthly"})"}) {
    SCOPED_TRACE(body);
    ExpectProblem(Alice().Post(kUpgrade, body), 409, "already_on_plan");
  }
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  // Another plan is still a change.
  ASSERT_EQ(Alice().Post(kUpgrade, R"({"plan_id":"professional"})").status, 200);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_monthly");
}

// The same for a subscription made in the Dashboard or by a Payment Link: no plan_id tag.
TEST_F(BillingRoutesTest, AnUntaggedSubscriptionIsAlreadyOnItsPricesPlan) {
  GiveAliceASubscription("active", "price_professional_yearly", std::nullopt);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 409, "already_on_plan");
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
}

// While the trial runs, choosing Starter (the price it already has) is a change: it ends the
// trial now, so Starter's month is invoiced (the trial -> Starter case; README: a change during
// the trial ends the trial).
TEST_F(BillingRoutesTest, ChoosingStarterDuringTheTrialEndsTheTrial) {
  GiveAliceASubscription("trialing", "price_starter_monthly", "trial");
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"starter"})");
  ASSERT_EQ(r.status, 200) << r.body;
  TheTrialEndingPost();
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "active");
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->metadata.at("plan_id"), "starter");
}

// A change Stripe invoices at once (the trial's end, another interval) is made only if that
// invoice is paid: with Stripe's default payment_behavior a declined card would leave the
// subscription on the new plan, past_due, usable through the whole dunning period.
TEST_F(BillingRoutesTest, AChangeWhoseInvoiceIsDeclinedChangesNothing) {
  GiveAliceASubscription("trialing", "price_starter_monthly", "trial");
  fake_.DeclinePayments("cus_alice");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 402, "payment_failed");
  auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_NE(std::find(posts[0].params.begin(), posts[0].params.end(),
                      std::make_pair(std::string("payment_behavior"),
                                     std::string("error_if_incomplete"))),
            posts[0].params.end());
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "trialing");
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_starter_monthly");
  EXPECT_EQ(Head(), head_after_setup_);

  // Paid monthly, moved to yearly: the year is invoiced at once.
  DeliverAlicesSubscription("evt_sub_alice_2", "customer.subscription.updated", "active",
                            "price_starter_monthly", "starter");
  FakeStripe::Subscription at_stripe = *fake_.GetSubscription("sub_alice");
  at_stripe.status = "active";
  fake_.AddSubscription(at_stripe);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"starter","billing_cycle":"yearly"})"), 402,
                "payment_failed");
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->status, "active");
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_starter_monthly");
  // Within the interval nothing is invoiced now: the change is made (prorated on the next
  // invoice).
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_monthly");
  EXPECT_EQ(Head(), head + 1);
}

// A same-interval change invoices nothing now, so error_if_incomplete refuses nothing: a trial
// converted to Starter whose first invoice failed (past_due: a grace period with access) moved to
// Enterprise would use Enterprise free through dunning. A subscription that owes an invoice is not
// changed -- per the projection and per Stripe's own status -- until the invoice is settled;
// cancelling stays possible.
TEST_F(BillingRoutesTest, ASubscriptionThatOwesAnInvoiceIsNotChanged) {
  GiveAliceASubscription("past_due", "price_starter_monthly", "starter");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "payment_required");
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(Head(), head_after_setup_);
  // The projection's past_due alone refuses it (Stripe's copy paid meanwhile: its webhook first).
  FakeStripe::Subscription at_stripe = *fake_.GetSubscription("sub_alice");
  at_stripe.status = "active";
  fake_.AddSubscription(at_stripe);
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "payment_required");
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(Head(), head_after_setup_);

  // Unpaid, a downgrade (its proration credit would pay out money never paid).
  DeliverAlicesSubscription("evt_sub_alice_unpaid", "customer.subscription.updated", "unpaid",
                            "price_professional_monthly", "professional");
  at_stripe.status = "unpaid";
  at_stripe.price_id = "price_professional_monthly";
  fake_.AddSubscription(at_stripe);
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"starter"})",
                             {{"Idempotency-Key", "down-unpaid"}}),
                409, "payment_required");
  EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty());
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_professional_monthly");

  // Cancelling stays possible.
  HttpReply cancel = Alice().Post(kCancel, R"({"at_period_end":true})");
  EXPECT_EQ(cancel.status, 200) << cancel.body;
}

// Stripe's status refuses it too: the projection still says active (the failed invoice's webhook
// not here yet).
TEST_F(BillingRoutesTest, ASubscriptionThatOwesAnInvoiceAtStripeIsNotChanged) {
  GiveAliceASubscription("active", "price_starter_monthly", "starter");
  FakeStripe::Subscription at_stripe = *fake_.GetSubscription("sub_alice");
  for (const char* status : {"past_due", "unpaid", "incomplete", "paused"}) {
    at_stripe.status = status;
    fake_.AddSubscription(at_stripe);
    ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})"), 409, "payment_required");
    EXPECT_TRUE(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").empty()) << status;
    EXPECT_EQ(Head(), head_after_setup_);
  }
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_starter_monthly");
  // Paid: the change is made.
  at_stripe.status = "active";
  fake_.AddSubscription(at_stripe);
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"enterprise"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_enterprise_monthly");
}

// Without billing_cycle a plan change keeps the subscription's interval.
TEST_F(BillingRoutesTest, AnUpgradeWithoutABillingCycleKeepsTheInterval) {
  GiveAliceASubscription("active", "price_starter_yearly", "starter");
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find(R"("billing_cycle":"yearly")"), std::string::npos) << r.body;
  auto q = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").at(0);
  EXPECT_NE(std::find(q.params.begin(), q.params.end(),
                      std::make_pair(std::string("items[0][price]"),
                                     std::string("price_professional_yearly"))),
            q.params.end());
  // Asked for explicitly, the other cycle.
  DeliverAlicesSubscription("evt_sub_alice_2", "customer.subscription.updated", "active",
                            "price_professional_yearly", "professional");
  r = Alice().Post(kUpgrade, R"({"plan_id":"enterprise","billing_cycle":"monthly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find(R"("price_id":"price_enterprise_monthly")"), std::string::npos) << r.body;
}

// Stripe's interval decides, not the projection's: moved to yearly in the portal, its webhook not
// here yet (the projection still says monthly), an upgrade without billing_cycle stays yearly.
TEST_F(BillingRoutesTest, AnUpgradesDefaultIntervalIsStripesNotTheLaggingProjections) {
  GiveAliceASubscription("active", "price_starter_monthly", "starter");
  FakeStripe::Subscription at_stripe = *fake_.GetSubscription("sub_alice");
  at_stripe.price_id = "price_starter_yearly";
  fake_.AddSubscription(at_stripe);
  HttpReply r = Alice().Post(kUpgrade, R"({"plan_id":"professional"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find(R"("price_id":"price_professional_yearly")"), std::string::npos) << r.body;
}

// Switching billing cycle restarts the period at Stripe (it resets the billing cycle anchor
// and credits the unused time), and the billing month followed it from 0: a Professional user
// refused with 429 switched yearly -> monthly -> yearly for 10,000 fresh calls each time, the
// credit paying for each switch. The calls used stay used until the period renews at its end.
TEST_F(BillingRoutesTest, SwitchingTheBillingCycleGivesNoFreshQuota) {
  LoseTheLog(&clock_);  // consume on the clock the test moves
  constexpr int64_t kDay = 86400;
  const int64_t now = clock_.NowMicros() / 1'000'000;
  GiveAliceASubscription("active", "price_professional_yearly", "professional");
  ledger::testing::StripeSubscriptionSpec period;
  period.event_created = ledger::testing::kStripeT0 + 1;
  period.period_start = now - 10 * kDay;
  period.period_end = projections::AddUtcMonths(period.period_start, 12);
  DeliverAlicesPeriod("evt_yearly", "customer.subscription.updated", "active",
                      "price_professional_yearly", "professional", period);
  const std::string consume = "/api/v1/usage/consume";
  HttpReply r =
      Alice().Post(consume, R"({"service":"chat","quantity":10000,"idempotency_key":"a"})");
  ASSERT_EQ(r.status, 200) << r.body;
  ExpectProblem(Alice().Post(consume, R"({"service":"chat","idempotency_key":"b"})"), 429,
                "quota_exceeded");

  // To monthly: Stripe's period restarts now, before the yearly month's end.
  r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"monthly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  period.event_created += 1;
  period.period_start = now - 60;
  period.period_end = now - 60 + 30 * kDay;
  DeliverAlicesPeriod("evt_monthly", "customer.subscription.updated", "active",
                      "price_professional_monthly", "professional", period);
  ExpectProblem(Alice().Post(consume, R"({"service":"chat","idempotency_key":"c"})"), 429,
                "quota_exceeded");
  r = Alice().Get("/api/v1/usage/summary");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["current"]["used"].GetInt64(), 10000) << r.body;
  EXPECT_EQ(r.Json()["current"]["remaining"].GetInt64(), 0) << r.body;
  EXPECT_EQ(r.Json()["current"]["services"]["chat"].GetInt64(), 10000) << r.body;
  EXPECT_EQ(std::string(r.Json()["current"]["window_start"].GetString()),
            projections::FormatRfc3339Seconds(now - 60)) << r.body;
  r = Alice().Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["quota"]["used"].GetInt64(), 10000) << r.body;
  EXPECT_EQ(r.Json()["quota"]["remaining"].GetInt64(), 0) << r.body;

  // And back to yearly: no fresh window either.
  r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"yearly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  period.event_created += 1;
  period.period_start = now - 30;
  period.period_end = projections::AddUtcMonths(now - 30, 12);
  DeliverAlicesPeriod("evt_yearly_again", "customer.subscription.updated", "active",
                      "price_professional_yearly", "professional", period);
  ExpectProblem(Alice().Post(consume, R"({"service":"chat","idempotency_key":"d"})"), 429,
                "quota_exceeded");

  // Monthly once more, then Stripe's renewal at that period's end: a fresh window.
  r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"monthly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  const int64_t monthly_end = now - 20 + 30 * kDay;
  period.event_created += 1;
  period.period_start = now - 20;
  period.period_end = monthly_end;
  DeliverAlicesPeriod("evt_monthly_again", "customer.subscription.updated", "active",
                      "price_professional_monthly", "professional", period);
  ExpectProblem(Alice().Post(consume, R"({"service":"chat","idempotency_key":"e"})"), 429,
                "quota_exceeded");
  period.event_created += 1;
  period.period_start = monthly_end;
  period.period_end = monthly_end + 30 * kDay;
  DeliverAlicesPeriod("evt_renewal", "customer.subscription.updated", "active",
                      "price_professional_monthly", "professional", period);
  clock_.Set((monthly_end + 5) * 1'000'000);
  r = Alice().Post(consume, R"({"service":"chat","idempotency_key":"f"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 1) << r.body;
  EXPECT_EQ(r.Json()["remaining"].GetInt64(), 9999) << r.body;
}

// An upgrade to a bigger quota that restarts the period (monthly Starter -> yearly Professional)
// keeps the calls used and raises the limit.
TEST_F(BillingRoutesTest, AnUpgradeThatRestartsThePeriodKeepsTheCallsUsed) {
  LoseTheLog(&clock_);
  constexpr int64_t kDay = 86400;
  const int64_t now = clock_.NowMicros() / 1'000'000;
  GiveAliceASubscription("active", "price_starter_monthly", "starter");
  ledger::testing::StripeSubscriptionSpec period;
  period.event_created = ledger::testing::kStripeT0 + 1;
  period.period_start = now - 10 * kDay;
  period.period_end = now + 20 * kDay;
  DeliverAlicesPeriod("evt_monthly", "customer.subscription.updated", "active",
                      "price_starter_monthly", "starter", period);
  const std::string consume = "/api/v1/usage/consume";
  HttpReply r =
      Alice().Post(consume, R"({"service":"chat","quantity":1000,"idempotency_key":"a"})");
  ASSERT_EQ(r.status, 200) << r.body;
  ExpectProblem(Alice().Post(consume, R"({"service":"chat","idempotency_key":"b"})"), 429,
                "quota_exceeded");

  r = Alice().Post(kUpgrade, R"({"plan_id":"professional","billing_cycle":"yearly"})");
  ASSERT_EQ(r.status, 200) << r.body;
  period.event_created += 1;
  period.period_start = now - 60;
  period.period_end = projections::AddUtcMonths(now - 60, 12);
  DeliverAlicesPeriod("evt_yearly", "customer.subscription.updated", "active",
                      "price_professional_yearly", "professional", period);
  r = Alice().Post(consume, R"({"service":"chat","idempotency_key":"c"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 1001) << r.body;
  EXPECT_EQ(r.Json()["limit"].GetInt64(), 10000) << r.body;
  EXPECT_EQ(r.Json()["remaining"].GetInt64(), 8999) << r.body;
  r = Alice().Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["quota"]["used"].GetInt64(), 1001) << r.body;
  EXPECT_EQ(r.Json()["quota"]["limit"].GetInt64(), 10000) << r.body;
}

TEST_F(BillingRoutesTest, AnUpgradeRetriedAfterItsRecordWasLostIsRecordedNotRefused) {
  GiveAliceASubscription();
  const std::string body = R"({"plan_id":"professional"})";
  ASSERT_EQ(Alice().Post(kUpgrade, body, {{"Idempotency-Key", "up-1"}}).status, 200);
  LoseTheLog();
  GiveAliceASubscription("active", "price_starter_monthly", "starter", /*at_stripe_too=*/false);
  // Stripe already shows the subscription on Professional; the retry is known by the change's
  // metadata, sent again with the same key (Stripe replays it) and recorded.
  HttpReply retry = Alice().Post(kUpgrade, body, {{"Idempotency-Key", "up-1"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 2u);
  EXPECT_EQ(posts[1].idempotency_key, posts[0].idempotency_key);
  EXPECT_EQ(posts[1].params, posts[0].params);
  auto events = EventsOfType("stripe.subscription_change_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("from_price_id":"price_starter_monthly")"), std::string::npos)
      << events[0].data;
  // Any other request for the plan the subscription is on is refused, with or without a key.
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kUpgrade, body, {{"Idempotency-Key", "up-2"}}), 409,
                "already_on_plan");
  ExpectProblem(Alice().Post(kUpgrade, body), 409, "already_on_plan");
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice").size(), 2u);
}

TEST_F(BillingRoutesTest, ARetryGetsTheStoredAnswerAfterTheSubscriptionEnded) {
  GiveAliceASubscription();
  const std::string body = R"({"at_period_end":false})";
  HttpReply first = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  // Stripe's webhook ends the subscription before the client's retry arrives.
  DeliverAlicesSubscription("evt_sub_alice_deleted", "customer.subscription.deleted", "canceled",
                            "price_starter_monthly", "starter");
  HttpReply again = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  // A new request is refused: there is nothing left to cancel.
  ExpectProblem(Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-2"}}), 409,
                "no_active_subscription");
}

// A cancel-now Stripe carried out whose record was lost (a crash, a full write queue's 503, the
// answer lost), retried under the same Idempotency-Key after the subscription's deleted webhook
// was folded: the subscription has ended, but the DELETE's cancellation comment names this
// request, so the retry is recorded and answered as the first attempt was -- not 409
// no_active_subscription (the client would believe the cancel failed).
TEST_F(BillingRoutesTest, ACancelNowRetriedAfterItsRecordWasLostAndTheSubscriptionEnded) {
  const std::string body = R"({"at_period_end":false})";
  HttpReply first;
  ASSERT_NO_FATAL_FAILURE(CancelNowAndLoseItsRecord(body, &first));
  // Any other request is refused: another key names another request, none names none, and a
  // cancel at the period end is not a cancel-now's retry.
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-2"}}), 409,
                "no_active_subscription");
  ExpectProblem(Alice().Post(kCancel, body), 409, "no_active_subscription");
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":true})", {{"Idempotency-Key",
                                                                     "cancel-1"}}),
                409, "no_active_subscription");
  EXPECT_EQ(Head(), head);

  HttpReply retry = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(std::string(retry.Json()["status"].GetString()), "canceled");
  // Known from Stripe's subscription (a GET), not cancelled again.
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("at_period_end":false)"), std::string::npos);
  EXPECT_NE(events[0].data.find(R"("status":"canceled")"), std::string::npos);
  EXPECT_NE(events[0].data.find(R"("stripe_idempotency_key":null)"), std::string::npos);
  // Recorded now: the next retry is the stored answer, and other requests are still refused.
  HttpReply again = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  ExpectProblem(Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-3"}}), 409,
                "no_active_subscription");
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 1u);
}

// The same lost record, but before the retry arrives the user has subscribed again: the current
// subscription is the new one. The retry finds its comment on the earlier subscription and is
// answered and recorded as the first attempt (that subscription, canceled) -- the new one is not
// cancelled (it was: the user lost the plan just bought).
TEST_F(BillingRoutesTest, ACancelNowRetriedAfterItsRecordWasLostAndTheUserSubscribedAgain) {
  const std::string body = R"({"at_period_end":false})";
  HttpReply first;
  ASSERT_NO_FATAL_FAILURE(CancelNowAndLoseItsRecord(body, &first));
  // Alice subscribes again: a new subscription, active at Stripe and in the log.
  FakeStripe::Subscription again_at_stripe = *fake_.GetSubscription("sub_alice");
  again_at_stripe.id = "sub_renewed";
  again_at_stripe.status = "active";
  again_at_stripe.item_id = "si_renewed";
  again_at_stripe.canceled_at.reset();
  again_at_stripe.cancellation_comment.clear();
  fake_.AddSubscription(again_at_stripe);
  ledger::testing::StripeSubscriptionSpec again;
  again.event_id = "evt_sub_renewed";
  again.event_type = "customer.subscription.created";
  again.subscription_id = "sub_renewed";
  again.customer_id = "cus_alice";
  again.item_id = "si_renewed";
  again.metadata_user_id = "alice";
  again.metadata_plan_id = "starter";
  again.created = ledger::testing::kStripeT0 + 86400;
  ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                             ledger::testing::StripeSubscriptionEventJson(again))
                  .status.ok());
  {
    std::unique_ptr<ReadView> view = ledger_->Snapshot();
    projections::UserSubscription current;
    ASSERT_TRUE(projections::GetUserSubscription(*view, "alice", &current).ok());
    ASSERT_EQ(current.subscription_id(), "sub_renewed");
    EXPECT_EQ(current.other_subscription_ids, std::vector<std::string>{"sub_alice"});
  }

  HttpReply retry = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(std::string(retry.Json()["subscription_id"].GetString()), "sub_alice");
  EXPECT_TRUE(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_renewed").empty());
  EXPECT_EQ(fake_.GetSubscription("sub_renewed")->status, "active");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 1u);
  auto events = EventsOfType("stripe.subscription_cancel_requested.v1");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_NE(events[0].data.find(R"("subscription_id":"sub_alice")"), std::string::npos);
  EXPECT_NE(events[0].data.find(R"("status":"canceled")"), std::string::npos);
  // Recorded now: the next retry is the stored answer. A new request cancels the new one.
  HttpReply stored = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(stored.status, 200) << stored.body;
  EXPECT_EQ(stored.body, first.body);
  EXPECT_EQ(stored.Header("Idempotent-Replayed"), "true");
  HttpReply other = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-2"}});
  ASSERT_EQ(other.status, 200) << other.body;
  EXPECT_EQ(std::string(other.Json()["subscription_id"].GetString()), "sub_renewed");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_renewed").size(), 1u);
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 2u);
}

// The request's Stripe key is no secret: a hash of the user, the client's Idempotency-Key and
// the body. Alice cancels in the portal and types as her comment what a marker of that key would
// be; a cancel-now under that Idempotency-Key then asks Stripe and must not take her cancel for
// its own (it was recorded as a cancel ledgerd made, and answered 200). Only the marker keyed by
// the server's secret is.
TEST_F(BillingRoutesTest, ACommentWithTheRequestsPublicKeyIsNotTakenForItsMarker) {
  GiveAliceASubscription();
  const std::string body = R"({"at_period_end":false})";
  const std::string request_key = StripeIdempotencyKey(
      "cancel_now", "alice",
      "client:cancel-1:" + HexEncode(Sha256(std::string("POST ") + kCancel + "\n", body)));
  FakeStripe::Subscription ended = *fake_.GetSubscription("sub_alice");
  ended.status = "canceled";
  ended.cancellation_comment = "ledgerd_request:" + request_key;
  fake_.AddSubscription(ended);
  DeliverAlicesSubscription("evt_sub_alice_deleted", "customer.subscription.deleted", "canceled",
                            "price_starter_monthly", "starter");
  const uint64_t head = Head();
  ExpectProblem(Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}}), 409,
                "no_active_subscription");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_EQ(Head(), head);
  // The marker this server makes for the same request is recognised.
  ended.cancellation_comment = "ledgerd_request:" + stripe_->RequestMarker(request_key);
  fake_.AddSubscription(ended);
  HttpReply retry = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(std::string(retry.Json()["status"].GetString()), "canceled");
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 1u);
  EXPECT_TRUE(fake_.RequestsTo("DELETE", "/v1/subscriptions/").empty());
}

// A subscription that ended some other way (the Dashboard, the portal, dunning) carries no
// comment of ours: a cancel-now under a client key asks Stripe and still gets 409.
TEST_F(BillingRoutesTest, ACancelNowOfASubscriptionEndedElsewhereIsRefused) {
  GiveAliceASubscription();
  EndAlicesSubscriptionInTheDashboard();
  DeliverAlicesSubscription("evt_sub_alice_deleted", "customer.subscription.deleted", "canceled",
                            "price_starter_monthly", "starter");
  const uint64_t head = Head();
  ExpectProblem(
      Alice().Post(kCancel, R"({"at_period_end":false})", {{"Idempotency-Key", "cancel-1"}}), 409,
      "no_active_subscription");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/subscriptions/sub_alice").size(), 1u);
  EXPECT_TRUE(fake_.RequestsTo("DELETE", "/v1/subscriptions/").empty());
  EXPECT_EQ(Head(), head);
}

// The same, before Stripe's customer.subscription.deleted arrives: ledgerd still shows it active,
// so the DELETE is sent and Stripe refuses it. The subscription Stripe shows canceled carries
// another comment than this request's: the cancel was not this one's (it was answered 200 and
// recorded as a cancel the user never made).
TEST_F(BillingRoutesTest, ACancelNowOfASubscriptionEndedElsewhereBeforeItsWebhookIsRefused) {
  GiveAliceASubscription();
  EndAlicesSubscriptionInTheDashboard();
  const uint64_t head = Head();
  ExpectProblem(
      Alice().Post(kCancel, R"({"at_period_end":false})", {{"Idempotency-Key", "cancel-1"}}), 409,
      "no_active_subscription");
  ExpectProblem(Alice().Post(kCancel, R"({"at_period_end":false})"), 409,
                "no_active_subscription");
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 2u);
  EXPECT_EQ(Head(), head);
  EXPECT_TRUE(EventsOfType("stripe.subscription_cancel_requested.v1").empty());
}

// A cancel-now Stripe carried out whose record was lost, retried under the same Idempotency-Key
// before the subscription's deleted webhook arrives: ledgerd still shows it active, Stripe refuses
// the second DELETE, and the subscription it shows canceled carries this request's comment -- the
// retry is answered as the first attempt was and recorded once.
TEST_F(BillingRoutesTest, ACancelNowRetriedAfterItsRecordWasLostBeforeItsWebhook) {
  GiveAliceASubscription();
  const std::string body = R"({"at_period_end":false})";
  HttpReply first = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  LoseTheLog();
  GiveAliceASubscription("active", "price_starter_monthly", "starter", /*at_stripe_too=*/false);
  HttpReply retry = Alice().Post(kCancel, body, {{"Idempotency-Key", "cancel-1"}});
  ASSERT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(fake_.RequestsTo("DELETE", "/v1/subscriptions/sub_alice").size(), 2u);
  EXPECT_EQ(EventsOfType("stripe.subscription_cancel_requested.v1").size(), 1u);
}

TEST_F(BillingRoutesTest, UpgradeFailureAtStripeAppendsNothing) {
  GiveAliceASubscription();
  fake_.InjectFault(FakeStripe::Fault::kReset, 3, "POST", "/v1/subscriptions/");
  ExpectProblem(Alice().Post(kUpgrade, R"({"plan_id":"professional"})"), 503,
                "stripe_unavailable");
  EXPECT_EQ(Head(), head_after_setup_);
  auto posts = fake_.RequestsTo("POST", "/v1/subscriptions/sub_alice");
  ASSERT_EQ(posts.size(), 3u);
  EXPECT_EQ(posts[0].idempotency_key, posts[2].idempotency_key);
  EXPECT_EQ(fake_.GetSubscription("sub_alice")->price_id, "price_starter_monthly");
}

}  // namespace
}  // namespace ledger::http
