// The plan and service catalog routes over real HTTP on loopback, against a real Ledger.
#include <gtest/gtest.h>

#include <ctime>

#include "events/ledger.h"
#include "http/app_context.h"
#include "http/routes.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using ledger::testing::EnvelopeMatchesSchema;
using ledger::testing::HttpReply;
using ledger::testing::TestHttpClient;
using ledger::testing::TokenClaims;

constexpr char kPlans[] = "/api/v1/subscriptions/plans";

const std::string kTeamBody =
    R"({"id":"team","display_name":"Team","price_monthly_cents":2900,"api_calls_limit":5000,)"
    R"("services":["ops-center","chat"],"features":["Shared workspace"]})";

class PlansRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = projections::AllFolds();
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    ASSERT_TRUE(projections::SeedPlanCatalog(ledger_.get(), nullptr).ok());
    AppContext context;
    context.ledger = ledger_.get();
    RouteTable routes;
    AddPlanRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    Status s = stack_.Start(std::move(routes), auth, nullptr);
    ASSERT_TRUE(s.ok()) << s.ToString();
    const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
    admin_token_ = ledger::testing::MintHs256(TokenClaims::Admin("root", now_s),
                                              ledger::testing::kTestHs256Secret);
    user_token_ = ledger::testing::MintHs256(TokenClaims::User("alice", now_s),
                                             ledger::testing::kTestHs256Secret);
  }

  void TearDown() override {
    stack_.Stop();
    // Every event the routes appended validates against its schemas.
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000, EventFilter{}, &events).ok());
    for (const Event& e : events) EXPECT_TRUE(EnvelopeMatchesSchema(e)) << e.type;
  }

  TestHttpClient Anonymous() { return TestHttpClient("127.0.0.1", stack_.port()); }
  TestHttpClient Admin() {
    TestHttpClient client("127.0.0.1", stack_.port());
    client.set_bearer(admin_token_);
    return client;
  }
  TestHttpClient User() {
    TestHttpClient client("127.0.0.1", stack_.port());
    client.set_bearer(user_token_);
    return client;
  }
  uint64_t Head() const { return ledger_->Head().value(); }

  static std::vector<std::string> Ids(const HttpReply& reply) {
    std::vector<std::string> ids;
    rapidjson::Document doc = reply.Json();
    if (!doc.IsObject() || !doc.HasMember("plans")) return ids;
    for (const auto& plan : doc["plans"].GetArray()) ids.emplace_back(plan["id"].GetString());
    return ids;
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.Header("Content-Type"), "application/problem+json") << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject()) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
    EXPECT_EQ(doc["status"].GetInt(), status);
  }

  ledger::testing::TempDir dir_;
  std::unique_ptr<Ledger> ledger_;
  ledger::testing::TestHttpStack stack_;
  std::string admin_token_;
  std::string user_token_;
};

TEST_F(PlansRoutesTest, ListIsPublicAndAtTheSnapshotPosition) {
  HttpReply r = Anonymous().Get(kPlans);
  ASSERT_EQ(r.status, 200) << r.error << r.body;
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  EXPECT_EQ(r.Header("X-Ledger-Position"), "4");
  EXPECT_EQ(Ids(r), (std::vector<std::string>{"trial", "starter", "professional", "enterprise"}));
  EXPECT_EQ(r.body, projections::PlanListToJson(projections::InitialPlans()));
}

TEST_F(PlansRoutesTest, GetOnePlan) {
  HttpReply r = Anonymous().Get(std::string(kPlans) + "/starter");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, projections::PlanToJson(projections::InitialPlans()[1]));
  EXPECT_EQ(r.Header("X-Ledger-Position"), "4");

  HttpReply missing = Anonymous().Get(std::string(kPlans) + "/platinum");
  ExpectProblem(missing, 404, "not_found");
  EXPECT_EQ(missing.Header("X-Ledger-Position"), "4");
  ExpectProblem(Anonymous().Get(std::string(kPlans) + "/%FF%FE"), 404, "not_found");
}

TEST_F(PlansRoutesTest, ServiceCatalogIsPublic) {
  HttpReply r = Anonymous().Get("/api/v1/subscriptions/services");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  ASSERT_TRUE(doc.IsObject() && doc["services"].IsArray());
  EXPECT_EQ(doc["services"].Size(), 7u);
  EXPECT_STREQ(doc["services"][6]["id"].GetString(), "bolt-diy");
}

TEST_F(PlansRoutesTest, WritesNeedAnAdmin) {
  ExpectProblem(Anonymous().Post(kPlans, kTeamBody), 401, "unauthenticated");
  ExpectProblem(User().Post(kPlans, kTeamBody), 403, "forbidden");
  ExpectProblem(User().Put(std::string(kPlans) + "/starter", kTeamBody), 403, "forbidden");
  ExpectProblem(User().Delete(std::string(kPlans) + "/starter"), 403, "forbidden");
  EXPECT_EQ(Head(), 4u);
}

TEST_F(PlansRoutesTest, CreateRecordsTheAdmin) {
  HttpReply r = Admin().Post(kPlans, kTeamBody);
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_EQ(r.Header("X-Ledger-Position"), "5");
  EXPECT_EQ(r.Header("Location"), std::string(kPlans) + "/team");
  rapidjson::Document plan = r.Json();
  EXPECT_STREQ(plan["id"].GetString(), "team");
  EXPECT_EQ(plan["limit_window"], "month");
  EXPECT_TRUE(plan["active"].GetBool());

  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(4), 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].type, projections::kPlanCreatedV1);
  EXPECT_EQ(events[0].subject, "plan:team");
  EXPECT_NE(events[0].data.find(R"("actor":{"kind":"admin","sub":"root","email":"root@example.com"})"),
            std::string::npos)
      << events[0].data;

  EXPECT_EQ(Ids(Anonymous().Get(kPlans)),
            (std::vector<std::string>{"trial", "starter", "team", "professional", "enterprise"}));
  ExpectProblem(Admin().Post(kPlans, kTeamBody), 409, "plan_exists");
  EXPECT_EQ(Head(), 5u);
}

TEST_F(PlansRoutesTest, BadInputAppendsNothing) {
  ExpectProblem(Admin().Post(kPlans, "{"), 400, "invalid_json");
  ExpectProblem(Admin().Post(kPlans, "[1]"), 400, "invalid_json");
  ExpectProblem(Admin().Post(kPlans, R"({"id":"x"})"), 422, "validation_failed");
  ExpectProblem(Admin().Post(kPlans, R"({"id":"Bad Id","display_name":"X",)"
                                     R"("price_monthly_cents":1,"api_calls_limit":null,"services":[]})"),
                422, "validation_failed");
  ExpectProblem(Admin().Post(kPlans, R"({"id":"x","display_name":"X","price_monthly_cents":1,)"
                                     R"("api_calls_limit":null,"services":["email"]})"),
                422, "unknown_service");
  ExpectProblem(Admin().Post(kPlans, kTeamBody.substr(0, kTeamBody.size() - 1) + R"(,"x":1})"), 422,
                "unknown_field");
  ExpectProblem(Admin().Post(kPlans, "{\"id\":\"" + std::string(70000, 'a') + "\"}"), 413,
                "payload_too_large");
  ExpectProblem(Admin().Put(std::string(kPlans) + "/starter", kTeamBody), 422, "plan_id_mismatch");
  ExpectProblem(Admin().Put(std::string(kPlans) + "/team", kTeamBody), 404, "not_found");
  ExpectProblem(Admin().Delete(std::string(kPlans) + "/team"), 404, "not_found");
  EXPECT_EQ(Head(), 4u);
}

// One rule told for a Stripe price id, whatever is wrong with it: "bad price!" was refused as
// "([A-Za-z0-9_.-], 1 to 255 characters)" and "price_a.b" as "([A-Za-z0-9_-], 1 to 200
// characters)".
TEST_F(PlansRoutesTest, StripePriceIdsAreRefusedByOneRule) {
  const std::string rule =
      "stripe_price_monthly: a Stripe price id ([A-Za-z0-9_-], 1 to 200 characters) or null";
  const std::string post_body = kTeamBody.substr(0, kTeamBody.size() - 1);
  for (const std::string& id : {std::string("bad price!"), std::string("price_a.b"),
                                std::string(201, 'p'), std::string(256, 'p'), std::string()}) {
    const std::string field = R"("stripe_price_monthly":")" + id + "\"";
    for (const HttpReply& r : {Admin().Post(kPlans, post_body + "," + field + "}"),
                               Admin().Put(std::string(kPlans) + "/starter", "{" + field + "}")}) {
      ExpectProblem(r, 422, "validation_failed");
      EXPECT_EQ(std::string(r.Json()["detail"].GetString()), rule) << id;
    }
  }
  EXPECT_EQ(Head(), 4u);
}

TEST_F(PlansRoutesTest, UpdateChangesTheFieldsGiven) {
  HttpReply before = Anonymous().Get(std::string(kPlans) + "/starter");
  ASSERT_EQ(before.status, 200);
  const size_t features = before.Json()["features"].Size();
  ASSERT_GT(features, 0u);
  std::string body = R"({"display_name":"Starter+","price_monthly_cents":2500,)"
                     R"("price_yearly_cents":25000,"api_calls_limit":2000,"services":["chat"],)"
                     R"("byok_enabled":true})";
  HttpReply r = Admin().Put(std::string(kPlans) + "/starter", body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Header("X-Ledger-Position"), "5");
  rapidjson::Document plan = r.Json();
  EXPECT_STREQ(plan["display_name"].GetString(), "Starter+");
  EXPECT_EQ(plan["price_monthly_cents"].GetInt(), 2500);
  EXPECT_EQ(plan["features"].Size(), features);  // not named: kept

  HttpReply get = Anonymous().Get(std::string(kPlans) + "/starter");
  EXPECT_EQ(get.body, r.body);
  EXPECT_EQ(get.Header("X-Ledger-Position"), "5");

  // The same change again changes nothing and appends nothing.
  HttpReply again = Admin().Put(std::string(kPlans) + "/starter", body);
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(again.body, r.body);
  EXPECT_EQ(Head(), 5u);
}

// Renaming Enterprise must not take BYOK and seats from its subscribers.
TEST_F(PlansRoutesTest, ARenameKeepsTheEntitlements) {
  HttpReply r = Admin().Put(std::string(kPlans) + "/enterprise", R"({"display_name":"Enterprise"})");
  ASSERT_EQ(r.status, 200) << r.body;
  HttpReply get = Anonymous().Get(std::string(kPlans) + "/enterprise");
  rapidjson::Document plan = get.Json();
  EXPECT_TRUE(plan["byok_enabled"].GetBool()) << get.body;
  EXPECT_EQ(plan["team_seats"].GetInt(), 10);
  EXPECT_EQ(plan["services"].Size(), 7u);
  EXPECT_EQ(plan["price_monthly_cents"].GetInt(), 9900);
  EXPECT_EQ(plan["price_yearly_cents"].GetInt(), 99000);
  EXPECT_GT(plan["features"].Size(), 0u);
  // Nothing changed: nothing appended.
  EXPECT_EQ(Head(), 4u);

  HttpReply bad = Admin().Put(std::string(kPlans) + "/enterprise", R"({"team_seats":0})");
  EXPECT_EQ(bad.status, 422) << bad.body;
  EXPECT_EQ(Head(), 4u);
}

TEST_F(PlansRoutesTest, DeleteRetiresButKeepsThePlan) {
  HttpReply r = Admin().Delete(std::string(kPlans) + "/trial");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Header("X-Ledger-Position"), "5");
  EXPECT_FALSE(r.Json()["active"].GetBool());

  EXPECT_EQ(Ids(Anonymous().Get(kPlans)),
            (std::vector<std::string>{"starter", "professional", "enterprise"}));
  EXPECT_EQ(Ids(Anonymous().Get(std::string(kPlans) + "?include_inactive=true")),
            (std::vector<std::string>{"trial", "starter", "professional", "enterprise"}));
  EXPECT_EQ(Ids(Anonymous().Get(std::string(kPlans) + "?include_inactive=false")).size(), 3u);
  ExpectProblem(Anonymous().Get(std::string(kPlans) + "?include_inactive=maybe"), 400,
                "invalid_parameter");
  HttpReply trial = Anonymous().Get(std::string(kPlans) + "/trial");
  ASSERT_EQ(trial.status, 200);
  EXPECT_FALSE(trial.Json()["active"].GetBool());

  HttpReply again = Admin().Delete(std::string(kPlans) + "/trial");
  EXPECT_EQ(again.status, 200);
  EXPECT_EQ(Head(), 5u);

  // PUT with "active": true brings it back.
  HttpReply back = Admin().Put(
      std::string(kPlans) + "/trial",
      projections::PlanToJson(projections::InitialPlans()[0]));
  EXPECT_EQ(back.status, 200) << back.body;
  EXPECT_TRUE(back.Json()["active"].GetBool());
  EXPECT_EQ(Head(), 6u);
}

TEST_F(PlansRoutesTest, IdempotencyKey) {
  httplib::Headers key = {{"Idempotency-Key", "create-team-1"}};
  HttpReply first = Admin().Post(kPlans, kTeamBody, key);
  ASSERT_EQ(first.status, 201) << first.body;
  EXPECT_FALSE(first.HasHeader("Idempotent-Replayed"));

  HttpReply retry = Admin().Post(kPlans, kTeamBody, key);
  EXPECT_EQ(retry.status, 201) << retry.body;  // the stored answer, not 409 plan_exists
  EXPECT_EQ(retry.body, first.body);
  EXPECT_EQ(retry.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(retry.Header("X-Ledger-Position"), "5");
  EXPECT_EQ(Head(), 5u);

  std::string other = kTeamBody;
  other.replace(other.find("2900"), 4, "3900");
  ExpectProblem(Admin().Post(kPlans, other, key), 409, "idempotency_key_reused");

  // The key is scoped per route: the same key on DELETE is a new request.
  HttpReply retire = Admin().Delete(std::string(kPlans) + "/team", key);
  EXPECT_EQ(retire.status, 200) << retire.body;
  EXPECT_EQ(Head(), 6u);
  EXPECT_EQ(Admin().Delete(std::string(kPlans) + "/team", key).Header("Idempotent-Replayed"),
            "true");

  ExpectProblem(Admin().Post(kPlans, kTeamBody, {{"Idempotency-Key", std::string(256, 'k')}}), 400,
                "invalid_idempotency_key");
  EXPECT_EQ(Admin().Post(kPlans, kTeamBody, {{"Idempotency-Key", std::string(255, 'k')}}).status,
            409);  // a valid key; the plan exists
  EXPECT_EQ(Head(), 6u);
}

}  // namespace
}  // namespace ledger::http
