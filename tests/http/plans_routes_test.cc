// The plan and service catalog routes over real HTTP on loopback, against a real Ledger.
#include <gtest/gtest.h>

#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "events/ledger.h"
#include "http/app_context.h"
#include "http/routes.h"
#include "http/stripe_client.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::http {
namespace {

using ledger::testing::EnvelopeMatchesSchema;
using ledger::testing::FakeStripe;
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
    StartServer(nullptr);
    const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
    admin_token_ = ledger::testing::MintHs256(TokenClaims::Admin("root", now_s),
                                              ledger::testing::kTestHs256Secret);
    user_token_ = ledger::testing::MintHs256(TokenClaims::User("alice", now_s),
                                             ledger::testing::kTestHs256Secret);
  }

  // The plan routes, with `stripe` as the configured Stripe (nullptr: none, as in dev).
  void StartServer(StripeApi* stripe) {
    stack_.Stop();
    stack_.server.reset();
    AppContext context;
    context.ledger = ledger_.get();
    context.stripe = stripe;
    RouteTable routes;
    AddPlanRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    Status s = stack_.Start(std::move(routes), auth, nullptr);
    ASSERT_TRUE(s.ok()) << s.ToString();
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
    ASSERT_TRUE(doc.IsObject() && doc.HasMember("code") && doc["code"].IsString()) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
    EXPECT_EQ(doc["status"].GetInt(), status);
  }

  static std::string Detail(const HttpReply& reply) {
    rapidjson::Document doc = reply.Json();
    if (!doc.IsObject() || !doc.HasMember("detail")) return "";
    return doc["detail"].GetString();
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

// A flipped byte in the plans family's table file: the public list answered 500 with RocksDB's
// words, "Corruption: block checksum mismatch: ... in /var/lib/ledgerd/000045.sst offset ...".
// It is still a 500, and its body names no directory.
TEST_F(PlansRoutesTest, ADamagedPlansTableIsNotNamedWithThePath) {
  ASSERT_TRUE(ledger_->Flush().ok());
  stack_.Stop();
  ledger_.reset();
  ASSERT_FALSE(ledger::testing::FlipByteInFamilyTable(dir_.path(), "plans", 2).empty());
  LedgerOptions options;
  options.path = dir_.path();
  options.folds = projections::AllFolds();
  ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
  StartServer(nullptr);

  for (const std::string& path : {std::string(kPlans), std::string(kPlans) + "/starter"}) {
    HttpReply r = Anonymous().Get(path);
    ExpectProblem(r, 500, "corruption");
    EXPECT_EQ(r.body.find(dir_.path()), std::string::npos) << r.body;
  }
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

// Each integer field's 422 states the range the route takes, and its bounds are taken: -1 for a
// price was told "must be between 0 and 10000000000" (Stripe's 99999999 is the top), and -5 for
// api_calls_limit "must be between 0 and 1000000000000" (0 is refused too).
TEST_F(PlansRoutesTest, EveryBoundedFieldStatesTheRangeItTakes) {
  struct Bounded {
    std::string field;
    std::vector<std::string> outside;
    std::vector<std::string> bounds;
    std::string rule;
    std::map<std::string, std::string> with;  // other fields the bounds need
  };
  const std::vector<Bounded> fields = {
      {"price_monthly_cents", {"-1", "100000000"}, {"0", "99999999"},
       "price_monthly_cents: must be between 0 and 99999999 (Stripe's largest unit amount)",
       {{"price_yearly_cents", "null"}}},
      {"price_yearly_cents", {"-1", "100000000"}, {"99999999"},
       "price_yearly_cents: must be between 0 and 99999999 (Stripe's largest unit amount), or "
       "null (not sold yearly)",
       {}},
      {"price_yearly_cents", {}, {"0"}, "", {{"price_monthly_cents", "0"}}},
      {"api_calls_limit", {"-5", "0", "1000000000001"}, {"1", "1000000000000"},
       "api_calls_limit: must be between 1 and 1000000000000, or null (unlimited)", {}},
      {"trial_days", {"-1", "366"}, {"365"}, "trial_days: must be between 0 and 365",
       {{"price_yearly_cents", "null"}}},
      {"team_seats", {"0", "100001"}, {"1", "100000"}, "team_seats: must be between 1 and 100000",
       {}},
  };
  int created = 0;
  for (const Bounded& b : fields) {
    auto body = [&](const std::string& id, const std::string& value) {
      std::map<std::string, std::string> members = {
          {"id", "\"" + id + "\""}, {"display_name", "\"Team\""},
          {"price_monthly_cents", "2900"}, {"api_calls_limit", "5000"},
          {"services", R"(["chat"])"}};
      for (const auto& [name, json] : b.with) members[name] = json;
      members[b.field] = value;
      std::string text;
      for (const auto& [name, json] : members) {
        text += (text.empty() ? "{\"" : ",\"") + name + "\":" + json;
      }
      return text + "}";
    };
    for (const std::string& value : b.outside) {
      SCOPED_TRACE(b.field + " " + value);
      const uint64_t head = Head();
      std::vector<HttpReply> replies = {Admin().Post(kPlans, body("bounded", value))};
      if (b.field != "trial_days") {  // a recurring plan's trial_days is a kind change (409)
        replies.push_back(Admin().Put(std::string(kPlans) + "/starter",
                                      "{\"" + b.field + "\":" + value + "}"));
      }
      for (const HttpReply& r : replies) {
        ExpectProblem(r, 422, "validation_failed");
        EXPECT_EQ(Detail(r), b.rule);
      }
      EXPECT_EQ(Head(), head);
    }
    for (const std::string& value : b.bounds) {
      SCOPED_TRACE(b.field + " " + value);
      HttpReply r = Admin().Post(kPlans, body("bound-" + std::to_string(++created), value));
      ASSERT_EQ(r.status, 201) << r.body;
      EXPECT_EQ(std::to_string(r.Json()[b.field.c_str()].GetInt64()), value);
    }
  }
}

// A display name of spaces shows as none, as an empty one: refused alike (POST and PUT).
TEST_F(PlansRoutesTest, ABlankDisplayNameIsRefused) {
  const std::string post_body = R"({"id":"team","price_monthly_cents":2900,)"
                                R"("api_calls_limit":5000,"services":["chat"],"display_name":)";
  for (const std::string& name :
       {std::string(R"("   ")"), std::string(R"(" \u00a0\u3000\u200b ")"), std::string(R"(" ")")}) {
    SCOPED_TRACE(name);
    for (const HttpReply& r :
         {Admin().Post(kPlans, post_body + name + "}"),
          Admin().Put(std::string(kPlans) + "/starter", "{\"display_name\":" + name + "}")}) {
      ExpectProblem(r, 422, "validation_failed");
      EXPECT_EQ(Detail(r), "display_name: must not be blank (spaces only)");
    }
  }
  ExpectProblem(Admin().Post(kPlans, post_body + R"("")" + "}"), 422, "validation_failed");
  EXPECT_EQ(Head(), 4u);
  HttpReply r = Admin().Post(kPlans, post_body + R"(" Team \u00a0Pro ")" + "}");
  ASSERT_EQ(r.status, 201) << r.body;
  EXPECT_STREQ(r.Json()["display_name"].GetString(), " Team \xc2\xa0Pro ");
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

// cpp-httplib drops a header line with an empty value: `Idempotency-Key:` (or blanks) counted as
// no key, and each retry created again. It is 400 invalid_idempotency_key, nothing appended.
TEST_F(PlansRoutesTest, AnEmptyIdempotencyKeyHeaderIsRefused) {
  const uint64_t head = Head();
  for (const std::string value : {"", "   ", " \t "}) {
    const std::string answer = ledger::testing::RawHttpExchange(
        stack_.port(),
        std::string("POST ") + kPlans + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
            admin_token_ + "\r\nIdempotency-Key:" + value +
            "\r\nContent-Type: application/json\r\nContent-Length: " +
            std::to_string(kTeamBody.size()) + "\r\nConnection: close\r\n\r\n" + kTeamBody,
        2000);
    EXPECT_EQ(answer.substr(0, answer.find("\r\n")), "HTTP/1.1 400 Bad Request") << answer;
    EXPECT_NE(answer.find("\"code\":\"invalid_idempotency_key\""), std::string::npos) << answer;
  }
  EXPECT_EQ(Head(), head);
}

// With Stripe configured, a Stripe price an admin names is read from Stripe and must bill what
// the plan sells in that field: PUT professional {"stripe_price_yearly":"price_m"}, price_m a
// $49 monthly price, was taken as given, and every yearly checkout billed $49 a month.
class PlansWithStripeTest : public PlansRoutesTest {
 protected:
  void SetUp() override {
    PlansRoutesTest::SetUp();
    ASSERT_TRUE(fake_.Start().ok());
    fake_.AddProduct("prod_professional", "Professional");
    AddPrice("price_m", 4900, "month");
    AddPrice("price_y", 49000, "year");
    StripeClientOptions options;
    options.api_base = fake_.base_url();
    options.secret_key = ledger::testing::kFakeStripeSecretKey;
    options.read_timeout_ms = 1000;  // generous: 2 shared cores under ASan
    options.connect_timeout_ms = 1000;
    options.backoff_initial_ms = 1;
    options.backoff_max_ms = 2;
    options.sleep = [](int64_t) {};
    ASSERT_TRUE(HttpStripeClient::Create(options, &stripe_).ok());
    StartServer(stripe_.get());
  }

  void AddPrice(const std::string& id, int64_t cents, const std::string& interval,
                int64_t interval_count = 1, const std::string& currency = "usd",
                bool active = true) {
    FakeStripe::Price price;
    price.id = id;
    price.product = "prod_professional";
    price.unit_amount = cents;
    price.interval = interval;
    price.interval_count = interval_count;
    price.currency = currency;
    price.active = active;
    fake_.AddPrice(price);
  }

  HttpReply Put(const std::string& plan_id, const std::string& body,
                const httplib::Headers& headers = {}) {
    return Admin().Put(std::string(kPlans) + "/" + plan_id, body, headers);
  }

  FakeStripe fake_;
  std::unique_ptr<HttpStripeClient> stripe_;
};

TEST_F(PlansWithStripeTest, APriceOfAnotherIntervalIsRefused) {
  const uint64_t head = Head();
  HttpReply r = Put("professional", R"({"stripe_price_yearly":"price_m"})");
  ExpectProblem(r, 409, "stripe_price_mismatch");
  EXPECT_EQ(Detail(r),
            "stripe_price_yearly: Stripe price 'price_m' recurs every 1 month(s), not every year");
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/prices/price_m").size(), 1u);

  HttpReply ok = Put("professional", R"({"stripe_price_yearly":"price_y"})");
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_NE(ok.body.find(R"("stripe_price_yearly":"price_y")"), std::string::npos) << ok.body;
  EXPECT_EQ(Head(), head + 1);
  // Named again (or the other fields changed): Stripe is not asked about it again.
  ASSERT_EQ(Put("professional", R"({"stripe_price_yearly":"price_y","team_seats":2})").status,
            200);
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/prices/price_y").size(), 1u);
}

TEST_F(PlansWithStripeTest, EveryWayAPriceCanBillOtherwiseIsRefused) {
  AddPrice("price_every_12_months", 49000, "month", 12);
  AddPrice("price_eur", 4900, "month", 1, "eur");
  AddPrice("price_archived", 4900, "month", 1, "usd", /*active=*/false);
  AddPrice("price_59", 5900, "month");
  AddPrice("price_once", 4900, "");
  const uint64_t head = Head();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"stripe_price_yearly":"price_every_12_months"})",
       "stripe_price_yearly: Stripe price 'price_every_12_months' recurs every 12 month(s), not "
       "every year"},
      {R"({"stripe_price_monthly":"price_eur"})",
       "stripe_price_monthly: Stripe price 'price_eur' bills in 'eur', the plan in 'usd'"},
      {R"({"stripe_price_monthly":"price_archived"})",
       "stripe_price_monthly: Stripe price 'price_archived' is archived (inactive) at Stripe"},
      {R"({"stripe_price_monthly":"price_59"})",
       "stripe_price_monthly: Stripe price 'price_59' bills unit_amount 5900, the plan's "
       "price_monthly_cents is 4900"},
      {R"({"stripe_price_monthly":"price_once"})",
       "stripe_price_monthly: Stripe price 'price_once' is a one-time price, not recurring every "
       "month"},
      {R"({"stripe_price_monthly":"price_nowhere"})",
       "stripe_price_monthly: Stripe price 'price_nowhere' does not exist at Stripe (in the "
       "configured key's mode)"},
      // Yearly and monthly swapped: each is checked against its own field.
      {R"({"stripe_price_monthly":"price_y","stripe_price_yearly":"price_m"})",
       "stripe_price_monthly: Stripe price 'price_y' recurs every 1 year(s), not every month"},
  };
  for (const auto& [body, detail] : cases) {
    SCOPED_TRACE(body);
    HttpReply r = Put("professional", body);
    ExpectProblem(r, 409, "stripe_price_mismatch");
    EXPECT_EQ(Detail(r), detail);
  }
  // A new plan's prices too, and its monthly price at the new amount.
  HttpReply created = Admin().Post(
      kPlans, R"({"id":"team","display_name":"Team","price_monthly_cents":5900,)"
              R"("price_yearly_cents":null,"api_calls_limit":5000,"services":["chat"],)"
              R"("stripe_price_monthly":"price_m"})");
  ExpectProblem(created, 409, "stripe_price_mismatch");
  EXPECT_EQ(Head(), head);
  created = Admin().Post(
      kPlans, R"({"id":"team","display_name":"Team","price_monthly_cents":5900,)"
              R"("price_yearly_cents":null,"api_calls_limit":5000,"services":["chat"],)"
              R"("stripe_price_monthly":"price_59"})");
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(Head(), head + 1);
}

// A trial plan's stripe_price_monthly is its one-time fee on Starter's subscription.
TEST_F(PlansWithStripeTest, ATrialsFeeIsAOneTimePriceOfTheFee) {
  AddPrice("price_fee_monthly", 100, "month");
  AddPrice("price_fee_2", 200, "");
  AddPrice("price_fee", 100, "");
  const uint64_t head = Head();
  HttpReply r = Put("trial", R"({"stripe_price_monthly":"price_fee_monthly"})");
  ExpectProblem(r, 409, "stripe_price_mismatch");
  EXPECT_EQ(Detail(r), "stripe_price_monthly: Stripe price 'price_fee_monthly' is recurring; a "
                       "trial plan's fee is a one-time price");
  ExpectProblem(Put("trial", R"({"stripe_price_monthly":"price_fee_2"})"), 409,
                "stripe_price_mismatch");
  EXPECT_EQ(Head(), head);
  ASSERT_EQ(Put("trial", R"({"stripe_price_monthly":"price_fee"})").status, 200);
  EXPECT_EQ(Head(), head + 1);
}

TEST_F(PlansWithStripeTest, StripeUnreachableAppendsNothing) {
  const uint64_t head = Head();
  // Every attempt of the client (3) hangs past its read timeout.
  fake_.InjectFault(FakeStripe::Fault::kHang, 3, "GET", "/v1/prices/");
  ExpectProblem(Admin().Post(kPlans, R"({"id":"team","display_name":"Team",)"
                                     R"("price_monthly_cents":4900,"price_yearly_cents":null,)"
                                     R"("api_calls_limit":5000,"services":["chat"],)"
                                     R"("stripe_price_monthly":"price_m"})"),
                503, "stripe_unavailable");
  fake_.InjectFault(FakeStripe::Fault::kServerError, 100, "GET", "/v1/prices/");
  HttpReply r = Put("professional", R"({"stripe_price_yearly":"price_y"})");
  ExpectProblem(r, 502, "stripe_error");
  EXPECT_EQ(r.body.find(ledger::testing::kFakeStripeSecretKey), std::string::npos);
  EXPECT_EQ(Head(), head);
}

// The same rule with Stripe configured, and before Stripe is asked: a PUT's bad price id was
// looked up at Stripe and refused by the client's check, 400 invalid_argument "price is not a
// Stripe id", while a POST (or a PUT without Stripe) was 422 with the rule.
TEST_F(PlansWithStripeTest, StripePriceIdsAreRefusedByOneRule) {
  const std::string rule =
      "stripe_price_monthly: a Stripe price id ([A-Za-z0-9_-], 1 to 200 characters) or null";
  const std::string post_body = kTeamBody.substr(0, kTeamBody.size() - 1);
  const uint64_t head = Head();
  for (const std::string& id : {std::string("bad price!"), std::string("price_a.b"),
                                std::string(201, 'p'), std::string(256, 'p'), std::string()}) {
    const std::string field = R"("stripe_price_monthly":")" + id + "\"";
    for (const HttpReply& r : {Admin().Post(kPlans, post_body + "," + field + "}"),
                               Put("starter", "{" + field + "}"), Put("team", "{" + field + "}")}) {
      ExpectProblem(r, 422, "validation_failed");
      EXPECT_EQ(Detail(r), rule) << id;
    }
  }
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/prices/").empty());
  EXPECT_EQ(Head(), head);
}

// A PUT's merged plan is checked before Stripe is asked about the prices it names: team_seats 0
// beside a new price was a GET at Stripe first, and 502/503 while Stripe was down.
TEST_F(PlansWithStripeTest, AnInvalidChangeIsRefusedBeforeStripeIsAsked) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 100, "GET", "/v1/prices/");
  const uint64_t head = Head();
  HttpReply r = Put("professional", R"({"stripe_price_monthly":"price_m","team_seats":0})");
  ExpectProblem(r, 422, "validation_failed");
  EXPECT_NE(Detail(r).find("team_seats"), std::string::npos) << r.body;
  ExpectProblem(Put("professional", R"({"stripe_price_monthly":"price_m","trial_days":7})"), 409,
                "plan_kind_change");
  EXPECT_TRUE(fake_.RequestsTo("GET", "/v1/prices/").empty());
  EXPECT_EQ(Head(), head);
}

// A retry of a recorded change is answered from its Idempotency-Key's record: Stripe is not asked
// again (and an outage since does not turn the recorded 200 into a 503).
TEST_F(PlansWithStripeTest, ARetryIsAnsweredFromItsRecord) {
  const httplib::Headers key = {{"Idempotency-Key", "put-y"}};
  ASSERT_EQ(Put("professional", R"({"stripe_price_yearly":"price_y"})", key).status, 200);
  fake_.InjectFault(FakeStripe::Fault::kServerError, 100, "GET", "/v1/prices/");
  HttpReply retry = Put("professional", R"({"stripe_price_yearly":"price_y"})", key);
  EXPECT_EQ(retry.status, 200) << retry.body;
  EXPECT_EQ(retry.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/prices/").size(), 1u);
}

}  // namespace
}  // namespace ledger::http
