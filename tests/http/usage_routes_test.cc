// The usage routes over real HTTP on loopback against a real Ledger (http/usage_routes.cc):
// consume answers and headers, refusals, idempotent retries, batch ingest, summary, admin reset,
// my-access, /metrics, 50 racing clients across a restart, and window rollover on an injected
// clock. Every event the tests append is checked against its schema at the end.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "events/ledger.h"
#include "http/app_context.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/registry.h"
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
using ledger::testing::TokenClaims;
namespace pj = ledger::projections;

constexpr char kConsume[] = "/api/v1/usage/consume";
constexpr char kEvents[] = "/api/v1/usage/events";
constexpr char kSummary[] = "/api/v1/usage/summary";
constexpr char kServiceToken[] = "svc-gateway-token-0123456789";
constexpr int64_t kUs = 1'000'000;
constexpr int64_t kDay = 86400;

std::string ConsumeBody(const std::string& user, const std::string& service,
                        const std::string& key, int64_t quantity = 1) {
  std::string body = "{";
  if (!user.empty()) body += "\"user_id\":" + JsonQuote(user) + ",";
  body += "\"service\":" + JsonQuote(service) + ",\"quantity\":" + std::to_string(quantity) +
          ",\"idempotency_key\":" + JsonQuote(key) + "}";
  return body;
}

class UsageRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Open();
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());
    ASSERT_TRUE(ledger::testing::AddPlanOnLedger(ledger_.get(), ledger::testing::SmallPlan("tiny", 10)).ok());
    StartHttp();
  }

  void Open() {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = pj::AllFolds();
    options.clock = &clock_;
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void StartHttp(size_t threads = 16) {
    AppContext context;
    context.ledger = ledger_.get();
    context.clock = &clock_;
    context.usage_meter = meter_.get();
    pj::UsageMeter* meter = meter_.get();
    context.metrics_renderers.push_back([meter](std::string* out) { meter->RenderMetrics(out); });
    RouteTable routes;
    AddOpsRoutes(context, &routes);
    AddEventsRoutes(context, &routes);
    AddSubscriptionAccessRoutes(context, &routes);
    AddUsageRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    auth.service_tokens = {ServiceToken{"gateway", kServiceToken}};
    HttpServerOptions options = ledger::testing::TestHttpStack::DefaultOptions();
    options.threads = threads;
    stack_ = std::make_unique<ledger::testing::TestHttpStack>();
    Status s = stack_->Start(std::move(routes), auth, &clock_, options);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    if (stack_) stack_->Stop();
    if (!ledger_) return;
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

  int64_t NowSeconds() const { return clock_.NowMicros() / kUs; }
  std::string Token(const std::string& user, bool admin = false,
                    const std::string& email = "") const {
    TokenClaims claims = admin ? TokenClaims::Admin(user, NowSeconds())
                               : TokenClaims::User(user, NowSeconds());
    if (!email.empty()) claims.email = email;
    return ledger::testing::MintHs256(claims, ledger::testing::kTestHs256Secret);
  }
  TestHttpClient Client(const std::string& bearer) {
    TestHttpClient client("127.0.0.1", stack_->port());
    client.set_bearer(bearer);
    return client;
  }
  TestHttpClient Service() { return Client(kServiceToken); }

  HttpReply Consume(const std::string& user, const std::string& service, const std::string& key,
                    int64_t quantity = 1) {
    return Service().Post(kConsume, ConsumeBody(user, service, key, quantity));
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.Header("Content-Type"), "application/problem+json") << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject()) << reply.body;
    ASSERT_TRUE(doc.HasMember("code")) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  uint64_t Head() const { return ledger_->Head().value(); }

  int64_t Used(const std::string& user, int64_t window_start,
               pj::WindowKind kind = pj::WindowKind::kBillingMonth) {
    auto view = ledger_->Snapshot();
    pj::UsageCounter c;
    return pj::GetUsageCounter(*view, user, window_start, kind, &c).ok() ? c.used : 0;
  }

  void LinkEmail(const std::string& user, const std::string& email) {
    ledger::testing::StripeCheckoutSpec checkout;
    checkout.event_id = "evt_checkout_" + user;
    checkout.session_id = "cs_" + user;
    checkout.client_reference_id = user;
    checkout.metadata_user_id = user;
    checkout.customer_id = "cus_" + user;
    checkout.subscription_id = "sub_" + user;
    checkout.email = email;
    ASSERT_TRUE(
        ledger::testing::OpenCheckoutSession(ledger_.get(), checkout.session_id, user).ok());
    ASSERT_TRUE(ledger::testing::SubmitWebhook(ledger_.get(),
                                               ledger::testing::StripeCheckoutCompletedJson(checkout))
                    .status.ok());
  }

  ledger::testing::TempDir dir_;
  ManualClock clock_{(kStripeT0 + 1000) * kUs};
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<pj::UsageMeter> meter_ = std::make_unique<pj::UsageMeter>();
  std::unique_ptr<ledger::testing::TestHttpStack> stack_;
};

TEST_F(UsageRoutesTest, ConsumeAnswersWithRateLimitHeadersThen429WithRetryAfter) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  const int64_t window_end = kStripeT0 + 30 * kDay;
  for (int i = 1; i <= 10; ++i) {
    HttpReply r = Consume("u1", "chat", "key-" + std::to_string(i));
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_TRUE(doc["allowed"].GetBool());
    EXPECT_EQ(doc["used"].GetInt64(), i);
    EXPECT_EQ(doc["limit"].GetInt64(), 10);
    EXPECT_EQ(doc["remaining"].GetInt64(), 10 - i);
    EXPECT_EQ(std::string(doc["window_start"].GetString()), "2025-06-15T15:06:40Z");
    EXPECT_EQ(std::string(doc["window_end"].GetString()), "2025-07-15T15:06:40Z");
    EXPECT_EQ(r.Header("X-RateLimit-Limit"), "10");
    EXPECT_EQ(r.Header("X-RateLimit-Remaining"), std::to_string(10 - i));
    EXPECT_EQ(r.Header("X-RateLimit-Reset"), std::to_string(window_end - NowSeconds()));
    EXPECT_EQ(r.Header("X-Ledger-Position"), std::to_string(Head()));
  }
  const uint64_t head = Head();
  HttpReply r = Consume("u1", "chat", "key-11");
  ExpectProblem(r, 429, "quota_exceeded");
  EXPECT_EQ(r.Header("Retry-After"), std::to_string(window_end - NowSeconds()));
  EXPECT_EQ(r.Header("X-RateLimit-Remaining"), "0");
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["used"].GetInt64(), 10);
  EXPECT_EQ(doc["limit"].GetInt64(), 10);
  EXPECT_EQ(doc["remaining"].GetInt64(), 0);
  EXPECT_EQ(doc["retry_after"].GetInt64(), window_end - NowSeconds());
  EXPECT_EQ(std::string(doc["window_end"].GetString()), "2025-07-15T15:06:40Z");
  EXPECT_EQ(Head(), head);  // a denial appends nothing
  // Denials are counted on /metrics.
  HttpReply metrics = Client("").Get("/metrics");
  EXPECT_NE(metrics.body.find("ledger_usage_consume_denied_total{reason=\"quota_exceeded\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.body.find("ledger_usage_consume_allowed_total 10"), std::string::npos);
}

TEST_F(UsageRoutesTest, StarterAllowsOneThousandAndRefusesTheNext) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("s1", "starter")).ok());
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 125; ++i) {
        HttpReply r = Consume("s1", "search", "t" + std::to_string(t) + "-" + std::to_string(i));
        if (r.status == 200) ok.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1000);
  HttpReply r = Consume("s1", "search", "one-more");
  ExpectProblem(r, 429, "quota_exceeded");
  EXPECT_FALSE(r.Header("Retry-After").empty());
  EXPECT_EQ(Used("s1", kStripeT0), 1000);
}

TEST_F(UsageRoutesTest, RefusalsAndBadInputAppendNothing) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "starter")).ok());
  const uint64_t head = Head();
  ExpectProblem(Consume("nobody", "chat", "k"), 402, "subscription_required");
  ExpectProblem(Consume("u1", "tts", "k"), 403, "service_not_in_plan");
  ExpectProblem(Consume("u1", "no-such-service", "k"), 422, "unknown_service");
  ExpectProblem(Service().Post(kConsume, "{not json"), 400, "invalid_json");
  ExpectProblem(Service().Post(kConsume, R"({"service":"chat","idempotency_key":"k"})"), 422,
                "validation_failed");  // a service must name the user
  ExpectProblem(Service().Post(kConsume, R"({"user_id":"u1","service":"chat"})"), 422,
                "validation_failed");  // no idempotency key
  ExpectProblem(Consume("u1", "chat", "k", 0), 422, "validation_failed");
  ExpectProblem(Consume("u1", "chat", "k", 10001), 422, "validation_failed");
  ExpectProblem(Consume("u1", "chat", std::string(256, 'k')), 422, "validation_failed");
  ExpectProblem(Consume("a/b", "chat", "k"), 422, "validation_failed");
  // More than the whole window's 1,000 at once can never be allowed: not a 429 to retry.
  HttpReply too_many = Consume("u1", "chat", "k", 1001);
  ExpectProblem(too_many, 422, "quantity_exceeds_quota");
  EXPECT_FALSE(too_many.HasHeader("Retry-After"));
  EXPECT_NE(Client("").Get("/metrics").body.find(
                "ledger_usage_consume_denied_total{reason=\"quantity_exceeds_quota\"} 1"),
            std::string::npos);
  ExpectProblem(
      Service().Post(kConsume, R"({"user_id":"u1","service":"chat","idempotency_key":"k","qty":2})"),
      422, "unknown_field");
  ExpectProblem(Service().Post(kConsume, ConsumeBody("u1", "chat", "k"),
                               {{"Idempotency-Key", "other"}}),
                400, "invalid_idempotency_key");
  // Header bytes that are not UTF-8 would make the usage event's JSON invalid; a '%' is refused
  // before cpp-httplib decodes it (`a%2Fb` would be `a/b`'s key).
  for (const char* bad : {"\xff\xfe", "ok-\xc3"}) {
    ExpectProblem(Client(Token("u1")).Post(kConsume, R"({"service":"chat"})",
                                           {{"Idempotency-Key", bad}}),
                  400, "invalid_idempotency_key");
  }
  ExpectProblem(Client(Token("u1")).Post(kConsume, R"({"service":"chat"})",
                                         {{"Idempotency-Key", "%FF%FE"}}),
                400, "bad_header_line");
  // A user acts only for itself.
  ExpectProblem(Client(Token("u2")).Post(kConsume, ConsumeBody("u1", "chat", "k")), 404,
                "not_found");
  ExpectProblem(Client("").Post(kConsume, ConsumeBody("u1", "chat", "k")), 401,
                "unauthenticated");
  EXPECT_EQ(Head(), head);
  // A user may name itself or nobody; the header may carry the key.
  HttpReply r = Client(Token("u1")).Post(kConsume, R"({"service":"chat","idempotency_key":"self"})");
  EXPECT_EQ(r.status, 200) << r.body;
  r = Client(Token("u1")).Post(kConsume, R"({"user_id":"u1","service":"chat"})",
                               {{"Idempotency-Key", "self-2"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 2);
}

// The parser checked the body's bytes, not what its escapes decode to: "\udc00" (a lone low
// surrogate) became ED B0 80, not UTF-8, and a consume's or a batch item's metadata carried it
// into the log, /api/v1/events, Kafka and Lago with 200. Such a body is malformed JSON: 400,
// nothing appended (a batch as a whole, as for any other invalid UTF-8 in its body).
TEST_F(UsageRoutesTest, MetadataWithALoneSurrogateIsRefused) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "ada@example.com");
  const uint64_t head = Head();
  const std::string consume = R"({"user_id":"u1","service":"chat","idempotency_key":"k",)";
  ExpectProblem(Service().Post(kConsume, consume + R"("metadata":{"model":"a\udc00b"}})"), 400,
                "invalid_json");
  ExpectProblem(Service().Post(kConsume, consume + R"("metadata":{"\udfff":"m"}})"), 400,
                "invalid_json");
  ExpectProblem(
      Service().Post(kEvents, R"({"events":[{"user_id":"u1","service":"chat",)"
                              R"("idempotency_key":"b1","metadata":{"model":"\udc00"}}]})"),
      400, "invalid_json");
  ExpectProblem(Client(Token("root", true)).Post(
                    "/api/v1/admin/subscriptions/ada@example.com/reset-usage",
                    R"({"reason":"\udc00"})"),
                400, "invalid_json");
  EXPECT_EQ(Head(), head);
  // A surrogate pair is one character: still taken.
  HttpReply r = Service().Post(kConsume, consume + R"("metadata":{"model":"\ud83d\ude00"}})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), head + 1);
}

// RapidJSON 1.1 reads some numbers past a double's range as infinity instead of refusing them as
// it refuses 1e309 (44679223372081e308: a 14-digit significand); the metadata's re-serialization
// then stopped at the number, and `{"tokens":` went into the log as the event's metadata (the
// fuzz target usage_bodies: the compacted metadata did not parse). Such a body is malformed
// JSON, as 1e309 is: 400, nothing appended.
TEST_F(UsageRoutesTest, ANumberPastADoublesRangeIsRefusedAsMalformed) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  const uint64_t head = Head();
  const std::string consume = R"({"user_id":"u1","service":"chat","idempotency_key":"k",)";
  for (const char* number : {"44679223372081e308", "1e309", "-44679223372081e308"}) {
    ExpectProblem(Service().Post(kConsume, consume + R"("metadata":{"tokens":)" + number + "}}"),
                  400, "invalid_json");
    ExpectProblem(
        Service().Post(kEvents, R"({"events":[{"user_id":"u1","service":"chat",)"
                                R"("idempotency_key":"b1","metadata":{"tokens":)" +
                                    std::string(number) + "}}]}"),
        400, "invalid_json");
  }
  EXPECT_EQ(Head(), head);
}

TEST_F(UsageRoutesTest, IdempotentRetryReturnsTheOriginalAnswerAndCountsOnce) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  HttpReply first = Consume("u1", "chat", "retry", 3);
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_EQ(Consume("u1", "chat", "other", 1).status, 200);
  clock_.Advance(10 * kUs);
  HttpReply again = Consume("u1", "chat", "retry", 3);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, first.body);  // used 3, not 4 or 7
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(again.Header("X-Ledger-Position"), first.Header("X-Ledger-Position"));
  // The body is the first answer's, the headers the quota now: 3 + 1 used (it said 7, the first
  // answer's remaining).
  EXPECT_EQ(again.Header("X-RateLimit-Remaining"), "6");
  EXPECT_EQ(Used("u1", kStripeT0), 4);
  // The same key with another body: 409, nothing counted.
  ExpectProblem(Consume("u1", "chat", "retry", 2), 409, "idempotency_key_reused");
  ExpectProblem(Consume("u1", "search", "retry", 3), 409, "idempotency_key_reused");
  EXPECT_EQ(Used("u1", kStripeT0), 4);
  // A user retrying through its own token hits the same record (scope = the user, not the caller).
  HttpReply as_user = Client(Token("u1")).Post(kConsume, ConsumeBody("u1", "chat", "retry", 3));
  EXPECT_EQ(as_user.status, 200);
  EXPECT_EQ(as_user.body, first.body);
}

// A replay after the window rolled over said "Remaining: 0" (the first answer's remaining when it
// was the window's last call) with "Reset: 1" (the old window's end, long past) while the new
// window was empty. Its headers describe the window current now; the body stays the first answer.
TEST_F(UsageRoutesTest, AReplayedConsumeTellsTheQuotaOfTheWindowNow) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  HttpReply first = Consume("u1", "chat", "last", 10);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_EQ(first.Header("X-RateLimit-Remaining"), "0");
  clock_.Set((kStripeT0 + 31 * kDay) * kUs);
  HttpReply now = Consume("u1", "chat", "new", 2);
  ASSERT_EQ(now.status, 200) << now.body;
  int64_t new_window_end_us = 0;
  ASSERT_TRUE(pj::ParseRfc3339(now.Json()["window_end"].GetString(), &new_window_end_us));
  const int64_t new_window_end = new_window_end_us / kUs;
  ASSERT_GT(new_window_end, kStripeT0 + 31 * kDay);
  HttpReply again = Consume("u1", "chat", "last", 10);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.Header("X-RateLimit-Limit"), "10");
  EXPECT_EQ(again.Header("X-RateLimit-Remaining"), "8");
  EXPECT_EQ(again.Header("X-RateLimit-Reset"), std::to_string(new_window_end - NowSeconds()));
  // No quota to tell when a consume would now be refused: no headers.
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny", "canceled"))
                  .ok());
  ExpectProblem(Consume("u1", "chat", "after"), 402, "subscription_required");
  HttpReply gone = Consume("u1", "chat", "last", 10);
  ASSERT_EQ(gone.status, 200) << gone.body;
  EXPECT_EQ(gone.body, first.body);
  EXPECT_FALSE(gone.HasHeader("X-RateLimit-Remaining"));
}

// Two plans at once (a second checkout, or one made in the Dashboard): a Starter still billed and
// a newer Professional cancelled at its period's end. Past that end, before Stripe's deletion
// arrives (retried for up to 3 days), the Starter decides: consume, check-access, my-access and
// the summary answered 402 subscription_required / not allowed / has_access false, the newer
// Professional chosen and judged ended, although the Starter was active and billing.
TEST_F(UsageRoutesTest, PastANewerPlansScheduledEndTheUsersOtherPlanDecides) {
  ledger::testing::TestSubscription starter =
      OnPlan("u1", "starter", kStripeT0 - 10 * kDay, kStripeT0 + 20 * kDay);
  starter.subscription_id = "sub_u1_starter";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), starter).ok());
  ledger::testing::TestSubscription pro =
      OnPlan("u1", "professional", kStripeT0 - 5 * kDay, kStripeT0 + kDay);
  pro.subscription_id = "sub_u1_pro";
  pro.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), pro).ok());
  auto check = [&](const std::string& service) {
    HttpReply r =
        Client(Token("u1")).Post("/api/v1/subscriptions/check-access/" + service, "");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  };
  auto my_access = [&] {
    HttpReply r = Client(Token("u1")).Get("/api/v1/subscriptions/my-access");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  };
  // Before the end: Professional (tts is in it, not in Starter).
  EXPECT_EQ(Consume("u1", "tts", "before-end").status, 200);
  EXPECT_TRUE(check("tts")["allowed"].GetBool());
  EXPECT_STREQ(my_access()["plan_id"].GetString(), "professional");

  clock_.Set((kStripeT0 + kDay + 3600) * kUs);  // past Professional's end, no deletion yet
  HttpReply r = Consume("u1", "chat", "after-end");
  EXPECT_EQ(r.status, 200) << r.body;
  ExpectProblem(Consume("u1", "tts", "after-end-tts"), 403, "service_not_in_plan");
  rapidjson::Document checked = check("chat");
  EXPECT_TRUE(checked["allowed"].GetBool());
  EXPECT_STREQ(checked["plan_id"].GetString(), "starter");
  rapidjson::Document access = my_access();
  EXPECT_STREQ(access["plan_id"].GetString(), "starter");
  EXPECT_TRUE(access["has_access"].GetBool());
  r = Client(Token("u1")).Get(kSummary);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.Json()["has_access"].GetBool());

  // Stripe's deletion arrives: Starter still (unchanged).
  pro.status = "canceled";
  pro.canceled_at = pro.ended_at = pro.period_end;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), pro).ok());
  EXPECT_EQ(Consume("u1", "chat", "after-deletion").status, 200);
  ExpectProblem(Consume("u1", "tts", "after-deletion-tts"), 403, "service_not_in_plan");
  EXPECT_STREQ(my_access()["plan_id"].GetString(), "starter");
}

// Nor when a consume would now be 402 for calls used up for good (CallsUsedUpReason): the quota
// used up in a window a scheduled end cuts, a trial's 700 used up. The replays said
// "Remaining: 0" with a Reset to the window's end (midnight for the trial) -- where the answer
// is 402, not a fresh quota.
TEST_F(UsageRoutesTest, AReplayedConsumeTellsNoQuotaWhenTheCallsAreUsedUpForGood) {
  ledger::testing::TestSubscription ending = OnPlan("u1", "tiny");
  ending.cancel_at = kStripeT0 + 10 * kDay;  // inside the month: the window ends there
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), ending).ok());
  HttpReply first = Consume("u1", "chat", "all", 10);
  ASSERT_EQ(first.status, 200) << first.body;
  ExpectProblem(Consume("u1", "chat", "more"), 402, "subscription_required");
  HttpReply again = Consume("u1", "chat", "all", 10);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(again.body, first.body);
  EXPECT_FALSE(again.HasHeader("X-RateLimit-Limit"));
  EXPECT_FALSE(again.HasHeader("X-RateLimit-Remaining"));
  EXPECT_FALSE(again.HasHeader("X-RateLimit-Reset"));

  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("t1", "trial", "trialing"))
                  .ok());
  const int64_t first_midnight = pj::UtcDayStart(kStripeT0) + kDay;
  for (int day = 0; day < 7; ++day) {
    if (day > 0) clock_.Set((first_midnight + (day - 1) * kDay) * kUs);
    ASSERT_EQ(Consume("t1", "chat", "d" + std::to_string(day), 100).status, 200) << day;
  }
  ASSERT_LT(pj::UtcDayStart(NowSeconds()) + kDay, kStripeT0 + 7 * kDay);  // not the last day
  ExpectProblem(Consume("t1", "chat", "over"), 402, "trial_exhausted");
  for (const char* key : {"d0", "d6"}) {
    again = Consume("t1", "chat", key, 100);
    ASSERT_EQ(again.status, 200) << again.body;
    EXPECT_EQ(again.Header("Idempotent-Replayed"), "true") << key;
    EXPECT_FALSE(again.HasHeader("X-RateLimit-Limit")) << key;
    EXPECT_FALSE(again.HasHeader("X-RateLimit-Remaining")) << key;
    EXPECT_FALSE(again.HasHeader("X-RateLimit-Reset")) << key;
  }
}

// The first answer decides as its replay does: the 200 whose call used the calls up for good
// (CallsUsedUpReason) tells no quota either. The call taking a trial's last day's 100 said
// "Remaining: 0" with a Reset at the trial's end, where every consume is 402 trial_expired; the
// last call of a window a scheduled end cuts, a Reset at the end of access (402
// subscription_required). A retry carries the first answer's X-RateLimit-*.
TEST_F(UsageRoutesTest, TheCallUsingUpATrialForGoodTellsNoReset) {
  const auto expect_replay_headers = [](const HttpReply& first, const HttpReply& again) {
    EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
    for (const char* name : {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"}) {
      EXPECT_EQ(again.HasHeader(name), first.HasHeader(name)) << name;
      EXPECT_EQ(again.Header(name), first.Header(name)) << name;
    }
  };
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("t1", "trial", "trialing"))
                  .ok());
  // A call that leaves some of the day: the quota, and the same on the retry.
  HttpReply some = Consume("t1", "chat", "some", 40);
  ASSERT_EQ(some.status, 200) << some.body;
  EXPECT_EQ(some.Header("X-RateLimit-Remaining"), "60");
  expect_replay_headers(some, Consume("t1", "chat", "some", 40));
  clock_.Set((pj::UtcDayStart(kStripeT0) + 7 * kDay) * kUs);  // the trial's last day
  HttpReply last = Consume("t1", "chat", "last", 100);
  ASSERT_EQ(last.status, 200) << last.body;
  EXPECT_EQ(last.Json()["remaining"].GetInt64(), 0) << last.body;  // the body still says it
  EXPECT_FALSE(last.HasHeader("X-RateLimit-Limit"));
  EXPECT_FALSE(last.HasHeader("X-RateLimit-Remaining"));
  EXPECT_FALSE(last.HasHeader("X-RateLimit-Reset"));
  ExpectProblem(Consume("t1", "chat", "after"), 402, "trial_exhausted");
  expect_replay_headers(last, Consume("t1", "chat", "last", 100));
  clock_.Set((kStripeT0 + 7 * kDay) * kUs);
  ExpectProblem(Consume("t1", "chat", "ended"), 402, "trial_expired");

  ledger::testing::TestSubscription ending = OnPlan("u1", "tiny");
  ending.cancel_at = NowSeconds() + 10 * kDay;  // inside the month: the window ends there
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), ending).ok());
  HttpReply all = Consume("u1", "chat", "all", 10);
  ASSERT_EQ(all.status, 200) << all.body;
  EXPECT_FALSE(all.HasHeader("X-RateLimit-Remaining"));
  EXPECT_FALSE(all.HasHeader("X-RateLimit-Reset"));
  ExpectProblem(Consume("u1", "chat", "more"), 402, "subscription_required");
  expect_replay_headers(all, Consume("u1", "chat", "all", 10));
}

// A quantity over what is left is refused with what is left: the detail said the quota "is used
// up" while 201 calls remained.
TEST_F(UsageRoutesTest, APartialRefusalSaysWhatIsLeft) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("s1", "starter")).ok());
  ASSERT_EQ(Consume("s1", "chat", "most", 799).status, 200);
  const uint64_t head = Head();
  HttpReply r = Consume("s1", "chat", "too-many", 300);
  ExpectProblem(r, 429, "quota_exceeded");
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["remaining"].GetInt64(), 201);
  const std::string detail = doc["detail"].GetString();
  EXPECT_NE(detail.find("only 201 of the 1000 calls"), std::string::npos) << detail;
  EXPECT_EQ(detail.find("used up"), std::string::npos) << detail;
  EXPECT_EQ(Head(), head);
  // All of it used: then it is used up.
  ASSERT_EQ(Consume("s1", "chat", "rest", 201).status, 200);
  r = Consume("s1", "chat", "one-more");
  ExpectProblem(r, 429, "quota_exceeded");
  EXPECT_NE(std::string(r.Json()["detail"].GetString()).find("is used up"), std::string::npos)
      << r.body;
}

TEST_F(UsageRoutesTest, BatchIngestReportsEachItem) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_EQ(Consume("u1", "chat", "c1").status, 200);
  const std::string body = R"({"events":[
    {"user_id":"u1","service":"chat","quantity":2,"idempotency_key":"b1","metadata":{"model":"m","tokens":5}},
    {"user_id":"u1","service":"chat","quantity":2,"idempotency_key":"b1"},
    {"user_id":"u1","service":"chat","idempotency_key":"c1"},
    {"user_id":"u2","service":"search","quantity":4,"idempotency_key":"b1","timestamp":1750000500},
    {"user_id":"u3","service":"tts","quantity":1,"idempotency_key":"x","timestamp":"2025-06-15T15:10:00Z"},
    {"user_id":"u1","service":"nope","idempotency_key":"b2"},
    {"user_id":"u1","service":"chat","quantity":-1,"idempotency_key":"b3"},
    {"user_id":"u1","service":"chat"},
    {"user_id":"u1","service":"chat","idempotency_key":"b4","colour":"red"},
    {"user_id":"u1","service":"chat","idempotency_key":"b5","timestamp":"yesterday"},
    {"user_id":"u1","service":"chat","idempotency_key":"b6","timestamp":4102444800},
    {"user_id":"u1","service":"chat","idempotency_key":"b7","metadata":{"nested":{"a":1}}},
    42
  ]})";
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, body);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["accepted"].GetInt(), 3);
  EXPECT_EQ(doc["duplicates"].GetInt(), 2);
  EXPECT_EQ(doc["invalid"].GetInt(), 8);
  const char* status[] = {"accepted", "duplicate", "duplicate", "accepted", "accepted",
                          "invalid",  "invalid",   "invalid",   "invalid",  "invalid",
                          "invalid",  "invalid",   "invalid"};
  const char* reasons[] = {nullptr, nullptr, nullptr, nullptr, nullptr,
                           "unknown_service", "invalid_quantity", "invalid_idempotency_key",
                           "unknown_field", "invalid_timestamp", "timestamp_out_of_range",
                           "invalid_metadata", "not_an_object"};
  const auto& results = doc["results"];
  ASSERT_EQ(results.Size(), 13u);
  for (rapidjson::SizeType i = 0; i < results.Size(); ++i) {
    EXPECT_EQ(std::string(results[i]["status"].GetString()), status[i]) << i;
    if (reasons[i] != nullptr) {
      EXPECT_EQ(std::string(results[i]["reason"].GetString()), reasons[i]) << i;
    }
  }
  // One command: a usage.batch_recorded.v1 for each of u1, u2 and u3 (one accepted item each),
  // no thresholds (1 + 2 of 10).
  EXPECT_EQ(Head(), head + 3);
  std::vector<Event> appended;
  ASSERT_TRUE(ledger_->ReadEvents(Position(head), 10, EventFilter{}, &appended).ok());
  ASSERT_EQ(appended.size(), 3u);
  const char* users[] = {"u1", "u2", "u3"};
  const char* keys[] = {"b1", "b1", "x"};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(appended[i].type, pj::kUsageBatchRecordedV1);
    EXPECT_EQ(appended[i].subject, users[i]);
    rapidjson::Document data;
    data.Parse(appended[i].data.c_str());
    ASSERT_EQ(data["items"].Size(), 1u);
    EXPECT_STREQ(data["items"][0]["idempotency_key"].GetString(), keys[i]);
  }
  rapidjson::Document u1;
  u1.Parse(appended[0].data.c_str());
  EXPECT_STREQ(u1["items"][0]["metadata"]["model"].GetString(), "m");
  EXPECT_EQ(u1["items"][0]["used_after"].GetInt64(), 3);
  EXPECT_EQ(Used("u1", kStripeT0), 3);
  EXPECT_EQ(Used("u2", pj::UtcMonthStart(kStripeT0), pj::WindowKind::kCalendarMonth), 4);
  // Envelope problems.
  ExpectProblem(Service().Post(kEvents, R"({"events":[]})"), 422, "validation_failed");
  ExpectProblem(Service().Post(kEvents, R"({"items":[]})"), 422, "unknown_field");
  ExpectProblem(Service().Post(kEvents, "[]"), 400, "invalid_json");
  std::string big = R"({"events":[)";
  for (int i = 0; i < 1001; ++i) {
    big += std::string(i ? "," : "") + R"({"user_id":"u1","service":"chat","idempotency_key":"big)" +
           std::to_string(i) + "\"}";
  }
  big += "]}";
  ExpectProblem(Service().Post(kEvents, big), 413, "too_many_items");
  ExpectProblem(Client(Token("u1")).Post(kEvents, body), 403, "forbidden");
  EXPECT_EQ(Head(), head + 3);
}

// A key is recorded once per user whichever route brings it, but a batch item is a "duplicate"
// only when it is the usage the key recorded (service and quantity): a user who consumed 1 call
// with a key made the service's item of 5,000 under it a "duplicate", counted nowhere (quota,
// Lago) and indistinguishable from the service's own retry. Now it is "invalid" with reason
// idempotency_key_reused (CONTRACT §2: the same key with another body is a conflict), nothing
// recorded; the same item again is still a duplicate.
TEST_F(UsageRoutesTest, ABatchItemWhoseKeyAUserConsumedWithAnotherQuantityIsNotADuplicate) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("alice", "tiny")).ok());
  ASSERT_EQ(Client(Token("alice")).Post(kConsume, ConsumeBody("", "chat", "req-42")).status, 200);
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, R"({"events":[
    {"user_id":"alice","service":"chat","quantity":5000,"idempotency_key":"req-42"},
    {"user_id":"alice","service":"search","quantity":1,"idempotency_key":"req-42"},
    {"user_id":"alice","service":"chat","quantity":1,"idempotency_key":"req-42"}
  ]})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["accepted"].GetInt(), 0);
  EXPECT_EQ(doc["duplicates"].GetInt(), 1);
  EXPECT_EQ(doc["invalid"].GetInt(), 2);
  const auto& results = doc["results"];
  ASSERT_EQ(results.Size(), 3u);
  for (rapidjson::SizeType i = 0; i < 2; ++i) {
    EXPECT_STREQ(results[i]["status"].GetString(), "invalid") << i;
    ASSERT_TRUE(results[i].HasMember("reason")) << i << " " << r.body;
    EXPECT_STREQ(results[i]["reason"].GetString(), "idempotency_key_reused") << i;
    EXPECT_STREQ(results[i]["idempotency_key"].GetString(), "req-42") << i;
  }
  EXPECT_STREQ(results[2]["status"].GetString(), "duplicate");
  EXPECT_FALSE(results[2].HasMember("reason"));
  EXPECT_EQ(Head(), head);  // nothing recorded
  EXPECT_EQ(Used("alice", kStripeT0), 1);
  HttpReply summary = Client(Token("alice")).Get(kSummary);
  ASSERT_EQ(summary.status, 200) << summary.body;
  EXPECT_EQ(summary.Json()["current"]["used"].GetInt64(), 1) << summary.body;
}

// The same within the service's own batches: a retry of an item (same service and quantity) is a
// duplicate, another item under its key -- in a later batch or later in the same one -- is
// idempotency_key_reused, and only the first counts.
TEST_F(UsageRoutesTest, ABatchItemReusingAKeyForOtherUsageIsNotADuplicate) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  HttpReply first = Service().Post(
      kEvents, R"({"events":[{"user_id":"u1","service":"chat","quantity":3,"idempotency_key":"k"}]})");
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_EQ(first.Json()["accepted"].GetInt(), 1);
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, R"({"events":[
    {"user_id":"u1","service":"chat","quantity":4,"idempotency_key":"k"},
    {"user_id":"u1","service":"chat","quantity":3,"idempotency_key":"k","metadata":{"retry":1}},
    {"user_id":"u1","service":"chat","quantity":2,"idempotency_key":"m"},
    {"user_id":"u1","service":"chat","quantity":5,"idempotency_key":"m"},
    {"user_id":"u1","service":"tts","quantity":2,"idempotency_key":"m"},
    {"user_id":"u1","service":"chat","quantity":2,"idempotency_key":"m"}
  ]})");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const char* status[] = {"invalid", "duplicate", "accepted", "invalid", "invalid", "duplicate"};
  const auto& results = doc["results"];
  ASSERT_EQ(results.Size(), 6u);
  for (rapidjson::SizeType i = 0; i < results.Size(); ++i) {
    EXPECT_STREQ(results[i]["status"].GetString(), status[i]) << i << " " << r.body;
    if (std::string(status[i]) == "invalid") {
      ASSERT_TRUE(results[i].HasMember("reason")) << i;
      EXPECT_STREQ(results[i]["reason"].GetString(), "idempotency_key_reused") << i;
    }
  }
  EXPECT_EQ(doc["accepted"].GetInt(), 1);
  EXPECT_EQ(doc["duplicates"].GetInt(), 2);
  EXPECT_EQ(doc["invalid"].GetInt(), 3);
  EXPECT_EQ(Head(), head + 1);  // one usage.batch_recorded.v1 holding m's first item
  EXPECT_EQ(Used("u1", kStripeT0), 5);
  // A consume of a key a batch recorded stays 409, whatever it carries.
  ExpectProblem(Consume("u1", "chat", "k", 3), 409, "idempotency_key_reused");
}

// The backdating horizon is the request's time (the writer's clock): 61 days back is a late
// report of the previous billing period and counts; 63 days back is refused per item, and a
// request of only such items appends nothing.
TEST_F(UsageRoutesTest, BatchItemsMoreThanSixtyTwoDaysBeforeTheRequestAreOutOfRange) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  clock_.Set((kStripeT0 + 100 * kDay) * kUs);
  const auto item = [&](const std::string& key, int64_t days_back) {
    return R"({"user_id":"u1","service":"chat","idempotency_key":")" + key +
           R"(","timestamp":)" + std::to_string(NowSeconds() - days_back * kDay) + "}";
  };
  uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, R"({"events":[)" + item("old", 63) + "," +
                                            item("late", 61) + "]}");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(doc["accepted"].GetInt(), 1);
  EXPECT_STREQ(doc["results"][0]["status"].GetString(), "invalid");
  EXPECT_STREQ(doc["results"][0]["reason"].GetString(), "timestamp_out_of_range");
  EXPECT_STREQ(doc["results"][1]["status"].GetString(), "accepted");
  EXPECT_EQ(Head(), head + 1);
  head = Head();
  r = Service().Post(kEvents, R"({"events":[)" + item("old2", 63) + "," +
                                  item("y2k", (NowSeconds() - 946'684'800) / kDay) + "]}");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  EXPECT_EQ(doc["accepted"].GetInt(), 0);
  EXPECT_EQ(doc["invalid"].GetInt(), 2);
  for (const auto& result : doc["results"].GetArray()) {
    EXPECT_STREQ(result["reason"].GetString(), "timestamp_out_of_range");
  }
  EXPECT_EQ(Head(), head);
}

// A black-box user's batch: items refused on a field before their key came back with
// "idempotency_key":"" (the field check stopped at the bad field), so the client could not match
// results to items. Every result names the item's key when the item carried a well-formed one.
TEST_F(UsageRoutesTest, BatchInvalidItemsEchoTheirKeys) {
  const std::string long_key(300, 'k');
  const std::string body = R"({"events":[
    {"quantity":0,"idempotency_key":"q0","user_id":"u1","service":"chat"},
    {"user_id":"u1","service":"chat","quantity":"2","idempotency_key":"q1"},
    {"timestamp":"garbage","user_id":"u1","service":"chat","idempotency_key":"q2"},
    {"colour":"red","user_id":"u1","service":"chat","idempotency_key":"q3"},
    {"user_id":"u1","service":"nope","idempotency_key":"q4"},
    {"quantity":0,"user_id":"u1","service":"chat","idempotency_key":7},
    {"quantity":0,"user_id":"u1","service":"chat","idempotency_key":")" + long_key + R"("},
    {"quantity":0,"user_id":"u1","service":"chat"},
    {"user_id":"u1","service":"chat","idempotency_key":"q8"}
  ]})";
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, body);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const char* keys[] = {"q0", "q1", "q2", "q3", "q4", "", "", "", "q8"};
  const char* reasons[] = {"invalid_quantity", "invalid_quantity", "invalid_timestamp",
                           "unknown_field",    "unknown_service",  "invalid_quantity",
                           "invalid_quantity", "invalid_quantity", nullptr};
  const auto& results = doc["results"];
  ASSERT_EQ(results.Size(), 9u);
  for (rapidjson::SizeType i = 0; i < results.Size(); ++i) {
    EXPECT_EQ(results[i]["index"].GetInt(), static_cast<int>(i));
    EXPECT_EQ(std::string(results[i]["idempotency_key"].GetString()), keys[i]) << i;
    if (reasons[i] != nullptr) {
      EXPECT_EQ(std::string(results[i]["status"].GetString()), "invalid") << i;
      EXPECT_EQ(std::string(results[i]["reason"].GetString()), reasons[i]) << i;
    }
  }
  EXPECT_EQ(std::string(results[8]["status"].GetString()), "accepted");
  EXPECT_EQ(doc["invalid"].GetInt(), 8);
  EXPECT_EQ(Head(), head + 1);  // q8's usage.batch_recorded.v1 only
}

// A batch item's quantity runs to 1,000,000 (README), past consume's 10,000: one over is that
// item's invalid_quantity, the rest of the batch recorded.
TEST_F(UsageRoutesTest, ABatchItemsQuantityIsAtMostAMillion) {
  const std::string body = R"({"events":[
    {"user_id":"u1","service":"chat","quantity":1000000,"idempotency_key":"m0"},
    {"user_id":"u1","service":"chat","quantity":1000001,"idempotency_key":"m1"}
  ]})";
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, body);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  const auto& results = doc["results"];
  ASSERT_EQ(results.Size(), 2u) << r.body;
  EXPECT_EQ(std::string(results[0]["status"].GetString()), "accepted") << r.body;
  EXPECT_EQ(std::string(results[1]["status"].GetString()), "invalid") << r.body;
  EXPECT_EQ(std::string(results[1]["reason"].GetString()), "invalid_quantity") << r.body;
  EXPECT_EQ(Head(), head + 1);
}

TEST_F(UsageRoutesTest, BatchOfAThousandIsOneCommand) {
  std::string body = R"({"events":[)";
  for (int i = 0; i < 1000; ++i) {
    body += std::string(i ? "," : "") + R"({"user_id":"user-)" + std::to_string(i % 37) +
            R"(","service":"chat","quantity":1,"idempotency_key":"k)" + std::to_string(i) + "\"}";
  }
  body += "]}";
  const uint64_t groups = ledger_->metrics().groups_committed.Value();
  const uint64_t head = Head();
  HttpReply r = Service().Post(kEvents, body, {{"Idempotency-Key", "batch-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["accepted"].GetInt(), 1000);
  EXPECT_EQ(ledger_->metrics().groups_committed.Value(), groups + 1);
  // One usage.batch_recorded.v1 per user (in the order of their first item), with the user's
  // items in request order.
  std::vector<Event> appended;
  ASSERT_TRUE(ledger_->ReadEvents(Position(head), 1000, EventFilter{}, &appended).ok());
  ASSERT_EQ(appended.size(), 37u);
  EXPECT_EQ(Head(), head + 37);
  for (size_t u = 0; u < appended.size(); ++u) {
    EXPECT_EQ(appended[u].type, pj::kUsageBatchRecordedV1);
    EXPECT_EQ(appended[u].subject, "user-" + std::to_string(u));
    rapidjson::Document data;
    data.Parse(appended[u].data.c_str());
    size_t n = 0;
    for (const auto& item : data["items"].GetArray()) {
      EXPECT_EQ(item["idempotency_key"].GetString(), "k" + std::to_string(u + 37 * n));
      ++n;
      EXPECT_EQ(item["used_after"].GetInt64(), static_cast<int64_t>(n));
    }
    EXPECT_EQ(n, (1000 - u + 36) / 37);
  }
  // The same request again is answered from the request's idempotency record.
  HttpReply again = Service().Post(kEvents, body, {{"Idempotency-Key", "batch-1"}});
  EXPECT_EQ(again.body, r.body);
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  // Without the header, every item is a duplicate.
  HttpReply dup = Service().Post(kEvents, body);
  EXPECT_EQ(dup.Json()["duplicates"].GetInt(), 1000);
}

TEST_F(UsageRoutesTest, SummaryAndMyAccessShowTheCurrentWindow) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_EQ(Consume("u1", "chat", "a", 3).status, 200);
  ASSERT_EQ(Consume("u1", "search", "b", 2).status, 200);
  HttpReply r = Client(Token("u1")).Get(kSummary);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_EQ(std::string(doc["plan_id"].GetString()), "tiny");
  EXPECT_TRUE(doc["has_access"].GetBool());
  EXPECT_EQ(doc["current"]["used"].GetInt64(), 5);
  EXPECT_EQ(doc["current"]["limit"].GetInt64(), 10);
  EXPECT_EQ(doc["current"]["remaining"].GetInt64(), 5);
  EXPECT_EQ(doc["current"]["services"]["chat"].GetInt64(), 3);
  ASSERT_EQ(doc["windows"].Size(), 1u);
  EXPECT_EQ(doc["windows"][0]["used"].GetInt64(), 5);
  EXPECT_FALSE(r.Header("X-Ledger-Position").empty());
  ExpectProblem(Service().Get(kSummary), 403, "forbidden");

  r = Client(Token("u1")).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  doc = r.Json();
  EXPECT_EQ(doc["quota"]["limit"].GetInt64(), 10);
  EXPECT_EQ(doc["quota"]["used"].GetInt64(), 5);
  EXPECT_EQ(doc["quota"]["remaining"].GetInt64(), 5);
  EXPECT_EQ(std::string(doc["quota"]["window_end"].GetString()), "2025-07-15T15:06:40Z");

  // Another user sees only its own (empty) usage.
  r = Client(Token("u2")).Get(kSummary);
  ASSERT_EQ(r.status, 200);
  doc = r.Json();
  EXPECT_EQ(doc["current"]["used"].GetInt64(), 0);
  EXPECT_FALSE(doc["has_access"].GetBool());
  EXPECT_EQ(std::string(doc["reason"].GetString()), "subscription_required");
  EXPECT_EQ(doc["windows"].Size(), 0u);
}

// The summary's windows[] end where their last record said, and a refused consume records
// nothing: after the customer took back a cancel_at that had cut the window, the live window was
// listed ending at the old cancel_at next to `current` ending at the period's end (and the other
// way round for a cancel_at set after the last record). The live window ends as `current` does.
TEST_F(UsageRoutesTest, TheSummarysLiveWindowEndsWhereTheCurrentWindowEnds) {
  const int64_t t0 = ledger::testing::kStripeT0;
  const std::string cut_end = pj::FormatRfc3339Seconds(t0 + 10 * kDay);
  const std::string period_end = pj::FormatRfc3339Seconds(t0 + 30 * kDay);
  ledger::testing::TestSubscription resumed = OnPlan("u1", "tiny");
  resumed.cancel_at = t0 + 10 * kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), resumed).ok());
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u2", "tiny")).ok());
  ASSERT_EQ(Consume("u1", "chat", "a", 3).status, 200);
  ASSERT_EQ(Consume("u2", "chat", "a", 3).status, 200);
  resumed.cancel_at.reset();
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), resumed).ok());
  ledger::testing::TestSubscription canceling = OnPlan("u2", "tiny");
  canceling.cancel_at = t0 + 10 * kDay;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), canceling).ok());
  for (const auto& [user, end] : {std::pair<std::string, std::string>{"u1", period_end},
                                  std::pair<std::string, std::string>{"u2", cut_end}}) {
    HttpReply r = Client(Token(user)).Get(kSummary);
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(std::string(doc["current"]["window_end"].GetString()), end) << user;
    ASSERT_EQ(doc["windows"].Size(), 1u) << r.body;
    EXPECT_EQ(std::string(doc["windows"][0]["window_end"].GetString()), end) << user;
    EXPECT_EQ(doc["windows"][0]["used"].GetInt64(), 3) << user;
  }
}

TEST_F(UsageRoutesTest, AdminResetRestartsTheCurrentWindow) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "Ada@Example.com");
  ASSERT_EQ(Consume("u1", "chat", "a", 10).status, 200);
  ExpectProblem(Consume("u1", "chat", "b"), 429, "quota_exceeded");
  const std::string path = "/api/v1/admin/subscriptions/ada@example.com/reset-usage";
  ExpectProblem(Client(Token("u1")).Post(path, ""), 403, "forbidden");
  ExpectProblem(Client(Token("root", true)).Post(
                    "/api/v1/admin/subscriptions/nobody@example.com/reset-usage", ""),
                404, "not_found");
  HttpReply r = Client(Token("root", true, "root@example.com"))
                    .Post(path, R"({"reason":"goodwill"})", {{"Idempotency-Key", "reset-1"}});
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_EQ(doc["users"].Size(), 1u);
  EXPECT_EQ(std::string(doc["users"][0]["user_id"].GetString()), "u1");
  EXPECT_EQ(doc["users"][0]["used_before"].GetInt64(), 10);
  EXPECT_EQ(Used("u1", kStripeT0), 0);
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000,
                                  EventFilter{"u1", std::string(pj::kUsageWindowResetV1)}, &events)
                  .ok());
  ASSERT_EQ(events.size(), 1u);
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  EXPECT_EQ(std::string(data["actor"]["sub"].GetString()), "root");
  EXPECT_EQ(std::string(data["actor"]["email"].GetString()), "root@example.com");
  EXPECT_EQ(std::string(data["reason"].GetString()), "goodwill");
  // Replayed reset: same answer, no second event.
  HttpReply again = Client(Token("root", true, "root@example.com"))
                        .Post(path, R"({"reason":"goodwill"})", {{"Idempotency-Key", "reset-1"}});
  EXPECT_EQ(again.body, r.body);
  EXPECT_EQ(Consume("u1", "chat", "b").status, 200);
}

// A reset's reason is text an admin reads in the log, as the override's notes are: line feeds and
// tabs are kept; other control characters, DEL, C1 controls and bidirectional overrides are 422
// naming the field, nothing appended ({"reason":"\u001b[2J"} was stored in the event as it came).
// cpp-httplib drops a header line with an empty value: `Idempotency-Key:` (or blanks) counted as
// no key, so each retry of a reset appended another usage.window_reset.v1. It is 400
// invalid_idempotency_key, nothing appended; on consume (served on the event loop) it is a header
// that does not agree with the body's key, refused the same way.
TEST_F(UsageRoutesTest, AnEmptyIdempotencyKeyHeaderIsRefused) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "Ada@Example.com");
  const uint64_t head = Head();
  auto raw = [this](const std::string& path, const std::string& bearer, const std::string& value,
                    const std::string& body) {
    return ledger::testing::RawHttpExchange(
        stack_->port(),
        "POST " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + bearer +
            "\r\nIdempotency-Key:" + value + "\r\nContent-Type: application/json\r\n" +
            "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
            body,
        2000);
  };
  for (const std::string value : {"", "   ", "\t"}) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      const std::string reset = raw("/api/v1/admin/subscriptions/ada@example.com/reset-usage",
                                    Token("root", true), value, "");
      EXPECT_EQ(reset.substr(0, reset.find("\r\n")), "HTTP/1.1 400 Bad Request") << reset;
      EXPECT_NE(reset.find("\"code\":\"invalid_idempotency_key\""), std::string::npos) << reset;
    }
    const std::string consume = raw(kConsume, kServiceToken, value, ConsumeBody("u1", "chat", "k1"));
    EXPECT_EQ(consume.substr(0, consume.find("\r\n")), "HTTP/1.1 400 Bad Request") << consume;
    EXPECT_NE(consume.find("\"code\":\"invalid_idempotency_key\""), std::string::npos) << consume;
  }
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(Used("u1", kStripeT0), 0);
}

TEST_F(UsageRoutesTest, ResetReasonIsDisplayText) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "Ada@Example.com");
  const std::string path = "/api/v1/admin/subscriptions/ada@example.com/reset-usage";
  const uint64_t head = Head();
  for (const char* reason : {R"(a\u0000b)", R"(\u001b[2J)", R"(line\rover)", R"(\u007f)",
                             R"(\u0085)", R"(a \u202e b)", R"(\u2066x)"}) {
    SCOPED_TRACE(reason);
    HttpReply r = Client(Token("root", true))
                      .Post(path, std::string(R"({"reason":")") + reason + "\"}");
    ExpectProblem(r, 422, "validation_failed");
    rapidjson::Document problem = r.Json();
    ASSERT_TRUE(problem.IsObject() && problem.HasMember("detail")) << r.body;
    EXPECT_EQ(std::string(problem["detail"].GetString()).rfind("reason: ", 0), 0u) << r.body;
  }
  EXPECT_EQ(Head(), head);
  HttpReply r = Client(Token("root", true))
                    .Post(path, R"({"reason":"goodwill\n\tticket 42, caf\u00e9"})");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), head + 1);
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(head), 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  EXPECT_EQ(std::string(data["reason"].GetString()), "goodwill\n\tticket 42, caf\xc3\xa9");
}

TEST_F(UsageRoutesTest, FiftyConcurrentClientsGetExactlyTheLimitAcrossARestart) {
  constexpr int kClients = 50;
  constexpr int64_t kLimit = 200;
  stack_->Stop();
  StartHttp(/*threads=*/kClients + 8);
  ASSERT_TRUE(ledger::testing::AddPlanOnLedger(ledger_.get(), ledger::testing::SmallPlan("race", kLimit)).ok());
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("racer", "race")).ok());
  std::atomic<int64_t> allowed{0};
  std::atomic<int> unexpected{0};
  auto run = [&](int phase, int64_t stop_at) {
    std::vector<std::thread> clients;
    for (int t = 0; t < kClients; ++t) {
      clients.emplace_back([&, t] {
        TestHttpClient client = Service();
        for (int i = 0;; ++i) {
          if (stop_at > 0 && allowed.load() >= stop_at) return;
          HttpReply r = client.Post(kConsume, ConsumeBody("racer", "chat",
                                                          std::to_string(phase) + "/" +
                                                              std::to_string(t) + "/" +
                                                              std::to_string(i)));
          if (r.status == 200) {
            allowed.fetch_add(1);
          } else if (r.status == 429) {
            if (stop_at == 0) return;
          } else {
            unexpected.fetch_add(1);
            return;
          }
        }
      });
    }
    for (auto& c : clients) c.join();
  };
  run(1, kLimit / 2);
  // Restart the whole stack on the same directory.
  stack_->Stop();
  stack_.reset();
  ledger_.reset();
  meter_ = std::make_unique<pj::UsageMeter>();
  Open();
  StartHttp(kClients + 8);
  run(2, 0);
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(allowed.load(), kLimit);
  EXPECT_EQ(Used("racer", kStripeT0), kLimit);
}

TEST_F(UsageRoutesTest, TrialWindowRollsOverAtUtcMidnightAndExpiresAfterSevenDays) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("t1", "trial", "trialing")).ok());
  ASSERT_EQ(Consume("t1", "chat", "d0", 100).status, 200);
  HttpReply r = Consume("t1", "chat", "d0-over");
  ExpectProblem(r, 429, "quota_exceeded");
  // A day's quota used up before the trial's last day cures itself: check-access still allows
  // (a gateway rate-limits on consume's 429, not on this).
  const std::string check = "/api/v1/subscriptions/check-access/chat";
  HttpReply access = Client(Token("t1")).Post(check, "");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_TRUE(access.Json()["allowed"].GetBool()) << access.body;
  HttpReply summary = Client(Token("t1")).Get(kSummary);
  ASSERT_EQ(summary.status, 200) << summary.body;
  EXPECT_TRUE(summary.Json()["has_access"].GetBool()) << summary.body;
  EXPECT_TRUE(summary.Json()["reason"].IsNull()) << summary.body;
  const int64_t midnight = pj::UtcDayStart(kStripeT0) + kDay;
  EXPECT_EQ(r.Header("Retry-After"), std::to_string(midnight - NowSeconds()));
  EXPECT_EQ(r.Header("X-RateLimit-Limit"), "100");
  clock_.Set(midnight * kUs);
  r = Consume("t1", "chat", "d1");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 1);
  EXPECT_EQ(std::string(r.Json()["window_kind"].GetString()), "trial_day");
  // The last day is cut at the trial's end: used up, no retry can succeed before the trial ends.
  clock_.Set((pj::UtcDayStart(kStripeT0) + 7 * kDay) * kUs);
  ASSERT_EQ(Consume("t1", "chat", "d6", 100).status, 200);
  r = Consume("t1", "chat", "d6-over");
  ExpectProblem(r, 402, "trial_exhausted");
  EXPECT_EQ(r.Header("Retry-After"), "");
  // check-access and my-access say what consume says: a gateway gating on them and metering
  // through /usage/events must not give the used-up trial more calls.
  access = Client(Token("t1")).Post(check, "");
  ASSERT_EQ(access.status, 200) << access.body;
  EXPECT_FALSE(access.Json()["allowed"].GetBool()) << access.body;
  EXPECT_STREQ(access.Json()["reason"].GetString(), "trial_exhausted");
  access = Client(Token("t1")).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(access.status, 200);
  EXPECT_FALSE(access.Json()["has_access"].GetBool()) << access.body;
  EXPECT_STREQ(access.Json()["access_ended"].GetString(), "trial_exhausted");
  // And so does the summary (it said has_access: true, reason null).
  summary = Client(Token("t1")).Get(kSummary);
  ASSERT_EQ(summary.status, 200) << summary.body;
  EXPECT_FALSE(summary.Json()["has_access"].GetBool()) << summary.body;
  ASSERT_TRUE(summary.Json()["reason"].IsString()) << summary.body;
  EXPECT_STREQ(summary.Json()["reason"].GetString(), "trial_exhausted");
  EXPECT_EQ(summary.Json()["current"]["remaining"].GetInt64(), 0) << summary.body;
  clock_.Set((kStripeT0 + 7 * kDay) * kUs);
  ExpectProblem(Consume("t1", "chat", "d7"), 402, "trial_expired");
  // my-access says the trial grants nothing any more (its status at Stripe is still trialing).
  r = Client(Token("t1")).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200);
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["access_ended"].GetString(), "trial_expired");
  EXPECT_TRUE(r.Json()["quota"].IsNull()) << r.body;
}

// A trial that starts at 15:06 UTC touches 8 UTC days: 100 calls in each of the first 7 use up
// its 700 on a day that also used its 100 but is not the last. Consume answers 402
// trial_exhausted (the cap is checked first); check-access, my-access and the summary said ok,
// has_access true (they took the day's used-up quota for a 429 that cures at midnight).
TEST_F(UsageRoutesTest, ATrialCapUsedUpBeforeTheLastDayEndsAccessEverywhere) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("t7", "trial", "trialing"))
                  .ok());
  const int64_t first_midnight = pj::UtcDayStart(kStripeT0) + kDay;
  for (int day = 0; day < 7; ++day) {
    if (day > 0) clock_.Set((first_midnight + (day - 1) * kDay) * kUs);
    const std::string key = "d" + std::to_string(day);
    HttpReply r = Consume("t7", "chat", key, 100);
    ASSERT_EQ(r.status, 200) << day;
    // A day's 100 cure at midnight; the call taking the 700th does not: it told a Reset at
    // midnight, after which the answer is 402 trial_exhausted. Its retry agrees.
    EXPECT_EQ(r.HasHeader("X-RateLimit-Reset"), day < 6) << day;
    EXPECT_EQ(Consume("t7", "chat", key, 100).Header("X-RateLimit-Reset"),
              r.Header("X-RateLimit-Reset"))
        << day;
  }
  ASSERT_LT(pj::UtcDayStart(NowSeconds()) + kDay, kStripeT0 + 7 * kDay);  // not the last day
  ExpectProblem(Consume("t7", "chat", "over"), 402, "trial_exhausted");
  HttpReply r = Client(Token("t7")).Post("/api/v1/subscriptions/check-access/chat", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_exhausted");
  r = Client(Token("t7")).Get("/api/v1/subscriptions/my-access");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  ASSERT_TRUE(r.Json()["access_ended"].IsString()) << r.body;
  EXPECT_STREQ(r.Json()["access_ended"].GetString(), "trial_exhausted");
  r = Client(Token("t7")).Get(kSummary);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["has_access"].GetBool()) << r.body;
  ASSERT_TRUE(r.Json()["reason"].IsString()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_exhausted");
  // The last day's window changes nothing: its 100 calls are not left (the cap is used up).
  clock_.Set((first_midnight + 6 * kDay) * kUs);
  ExpectProblem(Consume("t7", "chat", "last-day"), 402, "trial_exhausted");
  r = Client(Token("t7")).Post("/api/v1/subscriptions/check-access/chat", "");
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_exhausted") << r.body;
}

// check-access gives the reason consume gives, in consume's order (402 before 403): a trial
// past its end asked for tts (not a trial service) said service_not_in_plan while consume
// answered 402 trial_expired. Within the trial, tts is still service_not_in_plan.
TEST_F(UsageRoutesTest, CheckAccessGivesAnEndedTrialsReasonBeforeTheService) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("t8", "trial", "trialing"))
                  .ok());
  const std::string check = "/api/v1/subscriptions/check-access/tts";
  HttpReply r = Client(Token("t8")).Post(check, "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "service_not_in_plan") << r.body;
  ExpectProblem(Consume("t8", "tts", "in-trial"), 403, "service_not_in_plan");
  clock_.Set((kStripeT0 + 7 * kDay) * kUs);
  ExpectProblem(Consume("t8", "tts", "after-trial"), 402, "trial_expired");
  r = Client(Token("t8")).Post(check, "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["allowed"].GetBool()) << r.body;
  EXPECT_STREQ(r.Json()["reason"].GetString(), "trial_expired") << r.body;
}

// Calls carried into a restarted period's window count until the window they came from ends:
// the 429 points there (it pointed at the new window's end, 30 days on), and from then calls are
// taken.
TEST_F(UsageRoutesTest, ACarriedQuotaIsRetriedWhenTheWindowItCameFromEnds) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_EQ(Consume("u1", "chat", "a", 10).status, 200);
  const int64_t month_end = kStripeT0 + 30 * kDay;
  const int64_t start = month_end - kDay;
  clock_.Set((start + 100) * kUs);
  ledger::testing::TestSubscription yearly =
      OnPlan("u1", "tiny", start, pj::AddUtcMonths(start, 12));
  yearly.interval = "year";
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), yearly).ok());
  HttpReply r = Consume("u1", "chat", "b");
  ExpectProblem(r, 429, "quota_exceeded");
  const std::string wait = std::to_string(month_end - NowSeconds());
  EXPECT_EQ(r.Header("Retry-After"), wait);
  EXPECT_EQ(r.Header("X-RateLimit-Reset"), wait);
  EXPECT_EQ(r.Json()["retry_after"].GetInt64(), month_end - NowSeconds());
  EXPECT_EQ(std::string(r.Json()["window_start"].GetString()), pj::FormatRfc3339Seconds(start));
  clock_.Set(month_end * kUs);
  r = Consume("u1", "chat", "b");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 1);
}

TEST_F(UsageRoutesTest, MonthlyWindowRollsOverAtTheBillingPeriod) {
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_EQ(Consume("u1", "chat", "a", 10).status, 200);
  ExpectProblem(Consume("u1", "chat", "b"), 429, "quota_exceeded");
  clock_.Set((kStripeT0 + 30 * kDay) * kUs);
  HttpReply r = Consume("u1", "chat", "b");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["used"].GetInt64(), 1);
  EXPECT_EQ(std::string(r.Json()["window_start"].GetString()), "2025-07-15T15:06:40Z");
}

}  // namespace
}  // namespace ledger::http
