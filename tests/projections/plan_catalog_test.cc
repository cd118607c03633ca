// The plan catalog: model, validation, deciders and fold, without a Ledger (in-memory rows).
#include "projections/plan_catalog.h"

#include <gtest/gtest.h>

#include <rapidjson/document.h>

#include "projections/limits.h"
#include "projections/stripe_webhook.h"
#include "tests/support/memory_state.h"
#include "tests/support/schema_check.h"

namespace ledger::projections {
namespace {

using ledger::testing::EnvelopeMatchesSchema;
using ledger::testing::EventMatchesSchema;
using ledger::testing::MemoryState;
using ledger::testing::RunCommand;

constexpr int64_t kNow = 1'790'000'000'000'000;  // 2026-09-21

const PlanCatalogFold kFold;
const std::vector<const Fold*> kFolds = {&kFold};

Actor TestAdmin() { return Actor::Admin("admin-1", "admin@example.com"); }

// A valid POST body; `extra` is spliced in before the closing brace.
std::string Body(std::string_view extra = "") {
  std::string body =
      R"({"id":"team","display_name":"Team","price_monthly_cents":2900,"api_calls_limit":5000,)"
      R"("services":["ops-center","chat"])";
  if (!extra.empty()) body += "," + std::string(extra);
  return body + "}";
}

Plan ParsedBody(std::string_view extra = "") {
  PlanInput input;
  Status s = ParsePlanInput(Body(extra), "", &input);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return input.plan;
}

// Runs `command` against `state` and checks each appended event against its schema.
class Harness {
 public:
  Status Run(Command* command, Decision* decision) {
    std::vector<Event> applied;
    Status s = RunCommand(command, kFolds, &state_, &head_, kNow, decision, &applied);
    for (const Event& e : applied) {
      EXPECT_TRUE(EventMatchesSchema(e));
      events_.push_back(e);
    }
    return s;
  }
  Decision MustRun(Command* command) {
    Decision decision;
    Status s = Run(command, &decision);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return decision;
  }
  MemoryState& state() { return state_; }
  const std::vector<Event>& events() const { return events_; }

 private:
  MemoryState state_;
  Position head_;
  std::vector<Event> events_;
};

// ---- Services ---------------------------------------------------------------------------------

TEST(ServiceCatalogTest, HasTheSevenContractServices) {
  std::vector<std::string> ids;
  for (const ServiceInfo& s : ServiceCatalog()) {
    ids.emplace_back(s.id);
    EXPECT_FALSE(s.display_name.empty());
    EXPECT_FALSE(s.description.empty());
  }
  EXPECT_EQ(ids, (std::vector<std::string>{"ops-center", "chat", "search", "tts", "stt",
                                           "litellm", "bolt-diy"}));
  EXPECT_TRUE(IsKnownService("bolt-diy"));
  EXPECT_FALSE(IsKnownService("Bolt-DIY"));
  EXPECT_FALSE(IsKnownService(""));

  rapidjson::Document doc;
  doc.Parse(ServiceCatalogJson().c_str());
  ASSERT_TRUE(doc.IsObject());
  ASSERT_TRUE(doc["services"].IsArray());
  EXPECT_EQ(doc["services"].Size(), 7u);
  EXPECT_STREQ(doc["services"][0]["id"].GetString(), "ops-center");
  EXPECT_TRUE(doc["services"][6].HasMember("display_name"));
}

// ---- The initial catalog ----------------------------------------------------------------------

TEST(InitialPlansTest, MatchTheContractTable) {
  std::vector<Plan> plans = InitialPlans();
  ASSERT_EQ(plans.size(), 4u);
  for (const Plan& p : plans) {
    EXPECT_TRUE(ValidatePlan(p).ok()) << p.id;
    EXPECT_TRUE(p.active);
    EXPECT_EQ(p.currency, "usd");
    EXPECT_FALSE(p.features.empty());
    EXPECT_FALSE(p.stripe_price_monthly.has_value());
  }
  const Plan& trial = plans[0];
  EXPECT_EQ(trial.id, "trial");
  EXPECT_EQ(trial.display_name, "Trial");
  EXPECT_EQ(trial.price_monthly_cents, 100);
  EXPECT_EQ(trial.price_yearly_cents, std::nullopt);
  EXPECT_EQ(trial.api_calls_limit, 100);
  EXPECT_EQ(trial.limit_window, LimitWindow::kDay);
  EXPECT_EQ(trial.trial_days, 7);
  EXPECT_EQ(trial.services, (std::vector<std::string>{"ops-center", "chat"}));
  EXPECT_FALSE(trial.byok_enabled);
  EXPECT_EQ(trial.team_seats, 1);

  const Plan& starter = plans[1];
  EXPECT_EQ(starter.id, "starter");
  EXPECT_EQ(starter.price_monthly_cents, 1900);
  EXPECT_EQ(starter.price_yearly_cents, 19000);
  EXPECT_EQ(starter.api_calls_limit, 1000);
  EXPECT_EQ(starter.limit_window, LimitWindow::kMonth);
  EXPECT_EQ(starter.services, (std::vector<std::string>{"ops-center", "chat", "search"}));
  EXPECT_TRUE(starter.byok_enabled);
  EXPECT_EQ(starter.team_seats, 1);

  const Plan& professional = plans[2];
  EXPECT_EQ(professional.id, "professional");
  EXPECT_EQ(professional.price_monthly_cents, 4900);
  EXPECT_EQ(professional.price_yearly_cents, 49000);
  EXPECT_EQ(professional.api_calls_limit, 10000);
  EXPECT_EQ(professional.limit_window, LimitWindow::kMonth);
  EXPECT_EQ(professional.services,
            (std::vector<std::string>{"ops-center", "chat", "search", "tts", "stt", "litellm"}));
  EXPECT_TRUE(professional.byok_enabled);

  const Plan& enterprise = plans[3];
  EXPECT_EQ(enterprise.id, "enterprise");
  EXPECT_EQ(enterprise.price_monthly_cents, 9900);
  EXPECT_EQ(enterprise.price_yearly_cents, 99000);
  EXPECT_EQ(enterprise.api_calls_limit, std::nullopt);
  EXPECT_EQ(enterprise.limit_window, LimitWindow::kNone);
  EXPECT_EQ(enterprise.services.size(), 7u);
  EXPECT_TRUE(enterprise.HasService("bolt-diy"));
  EXPECT_TRUE(enterprise.byok_enabled);
  EXPECT_EQ(enterprise.team_seats, 10);
}

TEST(PlanJsonTest, CanonicalJsonRoundTrips) {
  for (Plan plan : InitialPlans()) {
    plan.stripe_price_monthly = "price_123";
    std::string json = PlanToJson(plan);
    Plan parsed;
    ASSERT_TRUE(ParsePlanJson(json, &parsed).ok()) << json;
    EXPECT_EQ(parsed, plan);
    EXPECT_EQ(PlanToJson(parsed), json);
  }
}

TEST(PlanJsonTest, CanonicalJsonWritesEveryFieldWithNulls) {
  EXPECT_EQ(PlanToJson(InitialPlans()[3]),
            R"json({"id":"enterprise","display_name":"Enterprise","description":"Everything in )json"
            R"json(Professional plus Bolt.DIY, for teams.","currency":"usd",)json"
            R"json("price_monthly_cents":9900,"price_yearly_cents":99000,"api_calls_limit":null,)json"
            R"json("limit_window":null,"trial_days":0,"services":["ops-center","chat","search",)json"
            R"json("tts","stt","litellm","bolt-diy"],"features":["Everything in Professional",)json"
            R"json("Bolt.DIY app builder","Unlimited API calls","Team management (10 seats)",)json"
            R"json("Dedicated support"],"byok_enabled":true,"team_seats":10,)json"
            R"json("stripe_price_monthly":null,"stripe_price_yearly":null,"active":true})json");
}

TEST(PlanJsonTest, StoredFormRequiresEveryField) {
  std::string json = PlanToJson(InitialPlans()[1]);
  std::string without_features = json;
  size_t at = without_features.find(R"("features":)");
  size_t end = without_features.find(']', at);
  without_features.erase(at, end - at + 2);
  Plan plan;
  Status s = ParsePlanJson(without_features, &plan);
  EXPECT_EQ(s.code(), Code::kUnprocessable) << without_features;
}

// ---- Input parsing and validation -------------------------------------------------------------

TEST(PlanInputTest, AppliesDefaults) {
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(), "", &input).ok());
  const Plan& p = input.plan;
  EXPECT_EQ(p.id, "team");
  EXPECT_EQ(p.description, "");
  EXPECT_EQ(p.currency, "usd");
  EXPECT_EQ(p.price_yearly_cents, 10 * p.price_monthly_cents);  // yearly = 10 × monthly
  EXPECT_EQ(p.api_calls_limit, 5000);
  EXPECT_EQ(p.limit_window, LimitWindow::kMonth);
  EXPECT_EQ(p.trial_days, 0);
  EXPECT_TRUE(p.features.empty());
  EXPECT_FALSE(p.byok_enabled);
  EXPECT_EQ(p.team_seats, 1);
  EXPECT_TRUE(p.active);
  EXPECT_FALSE(input.Given("active"));
  EXPECT_FALSE(input.Given("stripe_price_monthly"));
  EXPECT_TRUE(input.Given("id"));
}

// A trial plan stored with a monthly window (accepted before the rule) still reads: the rule is
// for what an admin sends.
TEST(PlanJsonTest, AStoredTrialWithAMonthlyWindowStillReads) {
  Plan plan = ParsedBody(R"("trial_days":14)");
  plan.limit_window = LimitWindow::kMonth;
  Plan read;
  Status s = ParsePlanJson(PlanToJson(plan), &read);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(read.limit_window, LimitWindow::kMonth);
  CreatePlan create(plan, TestAdmin());
  Harness h;
  Decision d;
  EXPECT_EQ(h.Run(&create, &d).problem(), "validation_failed");
}

TEST(PlanInputTest, ATrialsQuotaIsPerDayByDefault) {
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(R"("trial_days":14)"), "", &input).ok());
  EXPECT_EQ(input.plan.limit_window, LimitWindow::kDay);
  EXPECT_EQ(input.plan.api_calls_limit, 5000);
}

TEST(PlanInputTest, NoDefaultYearlyPriceForAFreePlanATrialOrAnExplicitNull) {
  auto yearly = [](const std::string& fields) {
    PlanInput input;
    Status s = ParsePlanInput(R"({"id":"x","display_name":"X","api_calls_limit":10,"services":[],)" +
                                  fields + "}",
                              "", &input);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return input.plan.price_yearly_cents;
  };
  EXPECT_EQ(yearly(R"("price_monthly_cents":0)"), std::nullopt);
  EXPECT_EQ(yearly(R"("price_monthly_cents":100,"trial_days":7)"), std::nullopt);
  EXPECT_EQ(yearly(R"("price_monthly_cents":2900,"price_yearly_cents":null)"), std::nullopt);
  EXPECT_EQ(yearly(R"("price_monthly_cents":2900,"price_yearly_cents":25000)"), 25000);
  EXPECT_EQ(yearly(R"("price_monthly_cents":2900)"), 29000);
}

TEST(PlanInputTest, UnlimitedPlanHasNoWindow) {
  PlanInput input;
  std::string body = R"({"id":"x","display_name":"X","price_monthly_cents":0,)"
                     R"("api_calls_limit":null,"services":[]})";
  ASSERT_TRUE(ParsePlanInput(body, "", &input).ok());
  EXPECT_EQ(input.plan.api_calls_limit, std::nullopt);
  EXPECT_EQ(input.plan.limit_window, LimitWindow::kNone);
}

TEST(PlanInputTest, PutTakesTheIdFromThePath) {
  PlanInput input;
  std::string body = R"({"display_name":"X","price_monthly_cents":1,"api_calls_limit":null,)"
                     R"("services":["chat"],"active":false,"stripe_price_yearly":null})";
  ASSERT_TRUE(ParsePlanInput(body, "starter", &input).ok());
  EXPECT_EQ(input.plan.id, "starter");
  EXPECT_TRUE(input.Given("active"));
  EXPECT_FALSE(input.plan.active);
  EXPECT_TRUE(input.Given("stripe_price_yearly"));
  EXPECT_FALSE(input.Given("stripe_price_monthly"));
  EXPECT_FALSE(input.Given("features"));
  EXPECT_FALSE(input.Given("nope"));
  // Nothing is required on PUT: a body may name one field.
  EXPECT_TRUE(ParsePlanInput(R"({"team_seats":3})", "starter", &input).ok());
  EXPECT_TRUE(input.Given("team_seats"));
  EXPECT_FALSE(input.Given("display_name"));

  Status s = ParsePlanInput(Body(), "starter", &input);  // body says "team"
  EXPECT_EQ(s.code(), Code::kUnprocessable);
  EXPECT_EQ(s.problem(), "plan_id_mismatch");
  EXPECT_TRUE(ParsePlanInput(Body(), "team", &input).ok());
}

struct BadInput {
  const char* name;
  std::string body;
  Code code;
  const char* problem;
};

class PlanInputRejects : public ::testing::TestWithParam<BadInput> {};

TEST_P(PlanInputRejects, WithAProblem) {
  PlanInput input;
  Status s = ParsePlanInput(GetParam().body, "", &input);
  EXPECT_EQ(s.code(), GetParam().code) << GetParam().body << " -> " << s.ToString();
  EXPECT_EQ(s.problem(), GetParam().problem) << s.ToString();
  EXPECT_FALSE(s.message().empty());
}

std::string Replace(std::string body, std::string_view from, std::string_view to) {
  size_t at = body.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return body.replace(at, from.size(), to);
}

const Code k400 = Code::kInvalidArgument;
const Code k422 = Code::kUnprocessable;

INSTANTIATE_TEST_SUITE_P(
    PlanCatalog, PlanInputRejects,
    ::testing::Values(
        BadInput{"NotJson", "{", k400, "invalid_json"},
        BadInput{"Empty", "", k400, "invalid_json"},
        BadInput{"Array", "[]", k400, "invalid_json"},
        BadInput{"TrailingGarbage", Body() + "x", k400, "invalid_json"},
        BadInput{"DuplicateMember", Body(R"("id":"other")"), k400, "invalid_json"},
        BadInput{"InvalidUtf8", Body("\"description\":\"\xff\xfe\""), k400, "invalid_json"},
        BadInput{"DeepNesting", Body("\"features\":" + std::string(100, '[') +
                                     std::string(100, ']')),
                 k400, "invalid_json"},
        BadInput{"UnknownField", Body(R"("colour":"red")"), k422, "unknown_field"},
        // Metering counts a trial's quota per day.
        BadInput{"TrialWithAMonthlyQuota", Body(R"("trial_days":14,"limit_window":"month")"), k422,
                 "validation_failed"},
        // A quota of 0 would refuse every call (leave the services out instead).
        BadInput{"ZeroCalls", Replace(Body(), R"("api_calls_limit":5000,)", R"("api_calls_limit":0,)"),
                 k422, "validation_failed"},
        BadInput{"MissingId", Replace(Body(), R"("id":"team",)", ""), k422, "validation_failed"},
        BadInput{"MissingDisplayName", Replace(Body(), R"("display_name":"Team",)", ""), k422,
                 "validation_failed"},
        BadInput{"MissingLimit", Replace(Body(), R"("api_calls_limit":5000,)", ""), k422,
                 "validation_failed"},
        BadInput{"MissingServices", Replace(Body(), R"(,"services":["ops-center","chat"])", ""),
                 k422, "validation_failed"},
        BadInput{"UppercaseId", Replace(Body(), "\"team\"", "\"Team\""), k422,
                 "validation_failed"},
        BadInput{"IdWithSlash", Replace(Body(), "\"team\"", "\"a/b\""), k422,
                 "validation_failed"},
        BadInput{"IdLeadingDash", Replace(Body(), "\"team\"", "\"-team\""), k422,
                 "validation_failed"},
        BadInput{"IdEmpty", Replace(Body(), "\"team\"", "\"\""), k422, "validation_failed"},
        BadInput{"IdTooLong", Replace(Body(), "\"team\"", "\"" + std::string(65, 'a') + "\""),
                 k422, "validation_failed"},
        BadInput{"IdNotString", Replace(Body(), "\"team\"", "7"), k422, "validation_failed"},
        BadInput{"EmptyDisplayName", Replace(Body(), "\"Team\"", "\"\""), k422,
                 "validation_failed"},
        BadInput{"LongDisplayName",
                 Replace(Body(), "\"Team\"", "\"" + std::string(129, 'x') + "\""), k422,
                 "validation_failed"},
        BadInput{"LongDescription",
                 Body("\"description\":\"" + std::string(2049, 'x') + "\""), k422,
                 "validation_failed"},
        BadInput{"Euro", Body(R"("currency":"eur")"), k422, "validation_failed"},
        BadInput{"FractionalPrice", Replace(Body(), "2900", "29.5"), k422,
                 "validation_failed"},
        BadInput{"PriceAsDouble", Replace(Body(), "2900", "2900.0"), k422,
                 "validation_failed"},
        BadInput{"PriceAsString", Replace(Body(), "2900", "\"2900\""), k422,
                 "validation_failed"},
        BadInput{"NegativePrice", Replace(Body(), "2900", "-1"), k422, "validation_failed"},
        BadInput{"HugePrice", Replace(Body(), "2900", "10000000001"), k422,
                 "validation_failed"},
        // Stripe's unit_amount has 8 digits: the price could never be set up there.
        BadInput{"PriceBeyondStripe", Replace(Body(), "2900", "100000000"), k422,
                 "validation_failed"},
        BadInput{"DefaultYearlyPriceBeyondStripe", Replace(Body(), "2900", "10000000"), k422,
                 "validation_failed"},
        BadInput{"PriceBeyondInt64", Replace(Body(), "2900", "99999999999999999999"), k422,
                 "validation_failed"},
        BadInput{"NegativeYearly", Body(R"("price_yearly_cents":-5)"), k422,
                 "validation_failed"},
        BadInput{"NegativeLimit", Replace(Body(), "5000", "-1"), k422, "validation_failed"},
        BadInput{"WindowWithoutLimit",
                 Replace(Body(R"("limit_window":"day")"), "5000", "null"), k422,
                 "validation_failed"},
        BadInput{"LimitWithNullWindow", Body(R"("limit_window":null)"), k422,
                 "validation_failed"},
        BadInput{"WeeklyWindow", Body(R"("limit_window":"week")"), k422, "validation_failed"},
        BadInput{"NegativeTrial", Body(R"("trial_days":-1)"), k422, "validation_failed"},
        BadInput{"LongTrial", Body(R"("trial_days":366)"), k422, "validation_failed"},
        BadInput{"UnknownService", Replace(Body(), "\"chat\"", "\"email\""), k422,
                 "unknown_service"},
        BadInput{"DuplicateService", Replace(Body(), "\"chat\"", "\"ops-center\""), k422,
                 "validation_failed"},
        BadInput{"ServicesNotArray", Replace(Body(), R"(["ops-center","chat"])", "\"chat\""),
                 k422, "validation_failed"},
        BadInput{"ServiceNotString", Replace(Body(), "\"chat\"", "1"), k422,
                 "validation_failed"},
        BadInput{"EmptyFeature", Body(R"("features":[""])"), k422, "validation_failed"},
        BadInput{"LongFeature", Body("\"features\":[\"" + std::string(257, 'f') + "\"]"), k422,
                 "validation_failed"},
        BadInput{"TooManyFeatures",
                 Body("\"features\":[" + [] {
                   std::string s;
                   for (int i = 0; i < 33; ++i) s += (i ? ",\"f\"" : "\"f\"");
                   return s;
                 }() + "]"),
                 k422, "validation_failed"},
        BadInput{"ByokNotBool", Body(R"("byok_enabled":1)"), k422, "validation_failed"},
        BadInput{"ZeroSeats", Body(R"("team_seats":0)"), k422, "validation_failed"},
        BadInput{"EmptyStripePrice", Body(R"("stripe_price_monthly":"")"), k422,
                 "validation_failed"},
        BadInput{"StripePriceWithSpace", Body(R"("stripe_price_yearly":"price 1")"), k422,
                 "validation_failed"},
        BadInput{"ActiveNull", Body(R"("active":null)"), k422, "validation_failed"},
        // Price ids the Stripe client and the webhook parser would not take (IsStripeId).
        BadInput{"StripePriceWithDot", Body(R"("stripe_price_monthly":"price.1")"), k422,
                 "validation_failed"},
        BadInput{"StripePriceLongerThanWebhooksRead",
                 Body(R"("stripe_price_yearly":")" + std::string(201, 'p') + "\""), k422,
                 "validation_failed"},
        // Prices stripe-setup cannot sell: a paid plan's $0 cycle has no Stripe price, ever.
        BadInput{"PaidPlanWithAFreeYear", Body(R"("price_yearly_cents":0)"), k422,
                 "validation_failed"},
        BadInput{"FreeMonthBesideAYearlyPrice",
                 Replace(Body(R"("price_yearly_cents":10000)"), R"("price_monthly_cents":2900)",
                         R"("price_monthly_cents":0)"),
                 k422, "validation_failed"},
        BadInput{"TrialSoldYearly", Body(R"("trial_days":7,"price_yearly_cents":1000)"), k422,
                 "validation_failed"},
        BadInput{"TooLarge", Body("\"description\":\"" + std::string(70000, 'x') + "\""),
                 Code::kPayloadTooLarge, "payload_too_large"}),
    [](const ::testing::TestParamInfo<BadInput>& info) { return info.param.name; });

// ---- Deciders and fold ------------------------------------------------------------------------

TEST(PlanCommandsTest, CreateAppendsOneEventAndAnswers201) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());
  Decision d = h.MustRun(&create);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].type, kPlanCreatedV1);
  EXPECT_EQ(d.events[0].subject, "plan:team");
  EXPECT_EQ(d.http_status, 201);
  EXPECT_EQ(d.body, PlanToJson(ParsedBody()));

  rapidjson::Document data;
  data.Parse(d.events[0].data.c_str());
  EXPECT_STREQ(data["actor"]["kind"].GetString(), "admin");
  EXPECT_STREQ(data["actor"]["sub"].GetString(), "admin-1");
  EXPECT_STREQ(data["actor"]["email"].GetString(), "admin@example.com");
  EXPECT_STREQ(data["plan"]["id"].GetString(), "team");

  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored, ParsedBody());
  EXPECT_TRUE(GetPlan(h.state(), "nope", &stored).IsNotFound());
}

TEST(PlanCommandsTest, CreatingAnExistingPlanIs409AndAppendsNothing) {
  Harness h;
  CreatePlan first(ParsedBody(), TestAdmin());
  h.MustRun(&first);
  Plan other = ParsedBody();
  other.display_name = "Other";
  CreatePlan again(other, TestAdmin());
  Decision d;
  Status s = h.Run(&again, &d);
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_EQ(s.problem(), "plan_exists");
  EXPECT_TRUE(d.events.empty());
  EXPECT_EQ(h.events().size(), 1u);
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.display_name, "Team");
}

TEST(PlanCommandsTest, RetiredPlansStillBlockTheirId) {
  Harness h;
  CreatePlan first(ParsedBody(), TestAdmin());
  h.MustRun(&first);
  RetirePlan retire("team", TestAdmin());
  h.MustRun(&retire);
  CreatePlan again(ParsedBody(), TestAdmin());
  Decision d;
  EXPECT_EQ(h.Run(&again, &d).problem(), "plan_exists");
}

TEST(PlanCommandsTest, CreateRejectsAnInvalidPlanOrActor) {
  Harness h;
  Plan bad = ParsedBody();
  bad.services.push_back("nope");
  CreatePlan create(bad, TestAdmin());
  Decision d;
  EXPECT_EQ(h.Run(&create, &d).problem(), "unknown_service");
  CreatePlan anonymous(ParsedBody(), Actor::Admin("", ""));
  EXPECT_EQ(h.Run(&anonymous, &d).problem(), "invalid_actor");
  EXPECT_TRUE(h.events().empty());
}

TEST(PlanCommandsTest, CatalogSizeIsBounded) {
  Harness h;
  for (size_t i = 0; i < limits::kPlansMax; ++i) {
    Plan p = ParsedBody();
    p.id = "p" + std::to_string(i);
    CreatePlan create(p, TestAdmin());
    h.MustRun(&create);
  }
  Plan p = ParsedBody();
  p.id = "one-too-many";
  CreatePlan create(p, TestAdmin());
  Decision d;
  Status s = h.Run(&create, &d);
  EXPECT_EQ(s.code(), Code::kUnprocessable);
  EXPECT_EQ(s.problem(), "plan_catalog_full");
}

// The plans page (public GET /plans) and Stripe's product name show these as they are: control
// characters and bidirectional overrides are refused (IsDisplayText), naming the field.
TEST(PlanCommandsTest, PlanTextIsWithoutControlOrBidiCharacters) {
  for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
           {Replace(Body(), R"("Team")", R"("Pro\u0000\n\u202e")"), "display_name: "},
           {Replace(Body(), R"("Team")", R"("Team\u0085")"), "display_name: "},  // C1 (NEL)
           {Replace(Body(), R"("Team")", R"("Team\n")"), "display_name: "},
           {Body(R"("description":"Best \u202eplan")"), "description: "},
           {Body(R"("description":"\u2066x\u2069")"), "description: "},
           {Body(R"("features":["ok","a\u0007b"])"), "features[1]: "},
           {Body(R"("features":["\u007f"])"), "features[0]: "}}) {
    PlanInput input;
    Status s = ParsePlanInput(body, "", &input);
    EXPECT_EQ(s.code(), Code::kUnprocessable) << body;
    EXPECT_EQ(s.problem(), "validation_failed") << body;
    EXPECT_EQ(s.message().rfind(field, 0), 0u) << body << " -> " << s.ToString();
  }
  PlanInput fine;
  EXPECT_TRUE(ParsePlanInput(Body(R"("description":"\u00c9quipe \u2014 \u65e5\u672c")"), "",
                             &fine)
                  .ok());

  // The commands check it too (a POST's plan, a PUT's named field); nothing is appended.
  Harness h;
  Plan bad = ParsedBody();
  bad.display_name = "Team\xe2\x80\xae";  // U+202E
  CreatePlan create_bad(bad, TestAdmin());
  Decision d;
  EXPECT_EQ(h.Run(&create_bad, &d).message().rfind("display_name: ", 0), 0u);
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(R"({"features":["fine","\u001b[31mred"]})", "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  Status s = h.Run(&update, &d);
  EXPECT_EQ(s.problem(), "validation_failed") << s.ToString();
  EXPECT_EQ(s.message().rfind("features[1]: ", 0), 0u) << s.ToString();
  EXPECT_EQ(h.events().size(), 1u);

  // A stored plan from before the rule still reads (the fold's rule is the wider one).
  Plan stored;
  EXPECT_TRUE(ParsePlanJson(PlanToJson(bad), &stored).ok());
  EXPECT_EQ(stored.display_name, bad.display_name);
}

// A PUT names what changes; the rest of the plan stays as stored (fixing a typo must not take
// BYOK, seats or features away from the plan's subscribers).
TEST(PlanCommandsTest, UpdateChangesOnlyTheFieldsGiven) {
  Harness h;
  CreatePlan create(ParsedBody(R"("features":["a"],"byok_enabled":true,"team_seats":9,)"
                               R"("description":"d","price_yearly_cents":20000)"),
                    TestAdmin());
  h.MustRun(&create);

  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(R"({"display_name":"Team+","price_monthly_cents":3900,)"
                             R"("api_calls_limit":100,"limit_window":"day","services":["chat"]})",
                             "team", &input)
                  .ok());
  UpdatePlan update(input, TestAdmin());
  Decision d = h.MustRun(&update);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].type, kPlanUpdatedV1);
  EXPECT_EQ(d.http_status, 200);

  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.display_name, "Team+");
  EXPECT_EQ(stored.price_monthly_cents, 3900);
  EXPECT_EQ(stored.limit_window, LimitWindow::kDay);
  EXPECT_EQ(stored.services, std::vector<std::string>{"chat"});
  EXPECT_EQ(stored.features, std::vector<std::string>{"a"});
  EXPECT_TRUE(stored.byok_enabled);
  EXPECT_EQ(stored.team_seats, 9);
  EXPECT_EQ(stored.description, "d");
  EXPECT_EQ(stored.price_yearly_cents, 20000);  // not recomputed from the new monthly price
  EXPECT_EQ(d.body, PlanToJson(stored));

  // Said explicitly, a field is replaced: an empty list, null for "not sold yearly".
  ASSERT_TRUE(ParsePlanInput(R"({"features":[],"byok_enabled":false,"price_yearly_cents":null})",
                             "team", &input)
                  .ok());
  UpdatePlan clear(input, TestAdmin());
  h.MustRun(&clear);
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_TRUE(stored.features.empty());
  EXPECT_FALSE(stored.byok_enabled);
  EXPECT_EQ(stored.price_yearly_cents, std::nullopt);
  EXPECT_EQ(stored.team_seats, 9);
}

// A yearly price that was the default (ten months) follows the monthly price, as a POST's would:
// ten of the new months, none when the plan becomes free; one set apart stays.
TEST(PlanCommandsTest, ADefaultYearlyPriceFollowsTheMonthlyPrice) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());  // 2900 a month, 29000 a year (the default)
  h.MustRun(&create);
  auto put = [&h](const std::string& body) {
    PlanInput input;
    EXPECT_TRUE(ParsePlanInput(body, "team", &input).ok()) << body;
    UpdatePlan update(input, TestAdmin());
    Decision d;
    EXPECT_TRUE(h.Run(&update, &d).ok()) << body;
    Plan stored;
    EXPECT_TRUE(GetPlan(h.state(), "team", &stored).ok());
    return stored.price_yearly_cents;
  };
  EXPECT_EQ(put(R"({"price_monthly_cents":3900})"), 39000);
  EXPECT_EQ(put(R"({"price_monthly_cents":0})"), std::nullopt);
  EXPECT_EQ(put(R"({"price_monthly_cents":1000,"price_yearly_cents":9000})"), 9000);
  EXPECT_EQ(put(R"({"price_monthly_cents":2000})"), 9000);  // not the default: kept
}

// A PUT is refused for what it changes, not for what an older stored plan holds in a field it
// leaves alone: a trial stored with a monthly window (before the rule) can still be renamed.
TEST(PlanCommandsTest, AnOlderPlanCanBeEditedWithoutItsOldFieldsRefused) {
  Harness h;
  Plan trial = ParsedBody(R"("trial_days":14)");
  trial.limit_window = LimitWindow::kMonth;  // as stored before the rule
  ASSERT_TRUE(h.state().Put(kPlansFamily, "team", PlanToJson(trial)).ok());  // as a fold wrote it
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(R"({"display_name":"Team trial"})", "team", &input).ok());
  UpdatePlan rename(input, TestAdmin());
  Decision d;
  Status s = h.Run(&rename, &d);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(ParsePlanInput(R"({"limit_window":"month"})", "team", &input).ok());
  UpdatePlan window(input, TestAdmin());
  EXPECT_EQ(h.Run(&window, &d).problem(), "validation_failed");  // named: the rule applies
}

// limit_window follows api_calls_limit when left out: null with an unlimited quota, the default
// window when a quota appears, the stored one otherwise. A merged plan is checked as a POST's.
TEST(PlanCommandsTest, AMergedUpdateKeepsTheWindowConsistentAndIsValidated) {
  Harness h;
  PlanInput daily;
  ASSERT_TRUE(ParsePlanInput(Replace(Body(R"("limit_window":"day")"), "5000", "100"), "", &daily)
                  .ok());
  CreatePlan create(daily.plan, TestAdmin());
  h.MustRun(&create);
  auto put = [&h](const std::string& body, Decision* d) {
    PlanInput input;
    Status s = ParsePlanInput(body, "team", &input);
    if (!s.ok()) return s;
    UpdatePlan update(input, TestAdmin());
    return h.Run(&update, d);
  };
  Plan stored;
  Decision d;
  ASSERT_TRUE(put(R"({"api_calls_limit":500})", &d).ok());
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.limit_window, LimitWindow::kDay);
  ASSERT_TRUE(put(R"({"api_calls_limit":null})", &d).ok());
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.limit_window, LimitWindow::kNone);
  ASSERT_TRUE(put(R"({"api_calls_limit":7})", &d).ok());
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.limit_window, LimitWindow::kMonth);

  const size_t events = h.events().size();
  EXPECT_EQ(put(R"({"display_name":""})", &d).problem(), "validation_failed");
  EXPECT_EQ(put(R"({"limit_window":null})", &d).problem(), "validation_failed");
  EXPECT_EQ(put(R"({"team_seats":0})", &d).problem(), "validation_failed");
  EXPECT_EQ(put(R"({"services":["nope"]})", &d).problem(), "unknown_service");
  EXPECT_EQ(put(R"({"price_monthly_cents":"1"})", &d).problem(), "validation_failed");
  EXPECT_EQ(h.events().size(), events);
}

TEST(PlanCommandsTest, UpdateKeepsActiveAndStripePricesWhenAbsent) {
  Harness h;
  CreatePlan create(ParsedBody(R"("stripe_price_monthly":"price_m","stripe_price_yearly":"price_y")"),
                    TestAdmin());
  h.MustRun(&create);
  RetirePlan retire("team", TestAdmin());
  h.MustRun(&retire);

  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(R"("description":"new")"), "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  h.MustRun(&update);
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.description, "new");
  EXPECT_FALSE(stored.active);
  EXPECT_EQ(stored.stripe_price_monthly, "price_m");
  EXPECT_EQ(stored.stripe_price_yearly, "price_y");

  ASSERT_TRUE(
      ParsePlanInput(Body(R"("active":true,"stripe_price_yearly":null)"), "team", &input).ok());
  UpdatePlan reactivate(input, TestAdmin());
  h.MustRun(&reactivate);
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_TRUE(stored.active);
  EXPECT_EQ(stored.description, "new");  // not named: kept
  EXPECT_EQ(stored.stripe_price_monthly, "price_m");
  EXPECT_EQ(stored.stripe_price_yearly, std::nullopt);
}

// A Stripe price's amount is fixed: a new amount must name the Stripe price that bills it.
TEST(PlanCommandsTest, ANewPriceNeedsTheStripePriceThatBillsIt) {
  Harness h;
  CreatePlan create(ParsedBody(R"("stripe_price_monthly":"price_m","stripe_price_yearly":"price_y")"),
                    TestAdmin());
  h.MustRun(&create);
  const size_t events = h.events().size();
  auto put = [&](const std::string& extra, Decision* d) {  // at 3900 a month
    PlanInput input;
    const std::string body = Replace(Body(extra), "\"price_monthly_cents\":2900", "\"price_monthly_cents\":3900");
    EXPECT_TRUE(ParsePlanInput(body, "team", &input).ok()) << body;
    UpdatePlan update(input, TestAdmin());
    return h.Run(&update, d);
  };
  Decision d;
  // 2900 -> 3900 (and its default yearly 29000 -> 39000) through the old prices: refused.
  Status s = put("", &d);
  EXPECT_EQ(s.problem(), "stripe_price_stale") << s.ToString();
  s = put(R"("stripe_price_monthly":"price_m2")", &d);
  EXPECT_EQ(s.problem(), "stripe_price_stale") << s.ToString();  // the yearly one too
  EXPECT_EQ(h.events().size(), events);
  ASSERT_TRUE(put(R"("stripe_price_monthly":"price_m2","stripe_price_yearly":null)", &d).ok());
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.price_monthly_cents, 3900);
  EXPECT_EQ(stored.stripe_price_monthly, "price_m2");
  EXPECT_EQ(stored.stripe_price_yearly, std::nullopt);
}

TEST(PlanCommandsTest, StarterCannotBeRetiredWhileATrialConvertsToIt) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  Decision d;
  RetirePlan starter("starter", TestAdmin());
  Status s = h.Run(&starter, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_in_use") << s.ToString();
  // Nor by PUT "active":false.
  Plan starter_plan;
  ASSERT_TRUE(GetPlan(h.state(), "starter", &starter_plan).ok());
  PlanInput off;
  off.plan = starter_plan;
  off.plan.active = false;
  off.given.set();
  UpdatePlan put_off(off, TestAdmin());
  EXPECT_EQ(h.Run(&put_off, &d).problem(), "conversion_plan_in_use");
  RetirePlan trial("trial", TestAdmin());
  h.MustRun(&trial);
  RetirePlan again("starter", TestAdmin());
  ASSERT_TRUE(h.Run(&again, &d).ok());
  EXPECT_EQ(d.events.size(), 1u);
}

// The same rules on the result of a PUT: a paid plan's yearly price made 0, its monthly price
// made 0 beside a yearly price, a yearly price on a trial. A free plan (both 0) is fine.
TEST(PlanCommandsTest, UpdateRefusesPricesCheckoutCannotSell) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  CreatePlan team(ParsedBody(R"("price_yearly_cents":25000)"), TestAdmin());
  h.MustRun(&team);
  const size_t events = h.events().size();
  for (auto [plan_id, body] : std::vector<std::pair<std::string, std::string>>{
           {"team", R"({"price_yearly_cents":0})"},
           {"team", R"({"price_monthly_cents":0})"},
           {"professional", R"({"price_yearly_cents":0})"},
           {"trial", R"({"price_yearly_cents":1000})"}}) {
    SCOPED_TRACE(plan_id + " " + body);
    PlanInput input;
    ASSERT_TRUE(ParsePlanInput(body, plan_id, &input).ok());
    UpdatePlan put(input, TestAdmin());
    Decision d;
    Status s = h.Run(&put, &d);
    EXPECT_EQ(s.code(), Code::kUnprocessable) << s.ToString();
    EXPECT_EQ(s.problem(), "validation_failed");
  }
  EXPECT_EQ(h.events().size(), events);
  PlanInput free;
  ASSERT_TRUE(
      ParsePlanInput(R"({"price_monthly_cents":0,"price_yearly_cents":0})", "team", &free).ok());
  UpdatePlan put_free(free, TestAdmin());
  EXPECT_EQ(h.MustRun(&put_free).events.size(), 1u);
}

// A price id the catalog takes is one the upgrade (HttpStripeClient) and the webhook parser take:
// "price.1" was stored, then every upgrade to the plan answered the user 400 invalid_argument; a
// 201-byte id was dropped from every delivery. A stored plan from before keeps parsing (replay).
TEST(PlanCommandsTest, StripePriceIdsAreOnesStripeCallsAndWebhooksTake) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  const size_t events = h.events().size();
  Decision d;
  // One rule and one message for all (a price id outside the stored plans' wider rule was told
  // that rule instead: "bad price!" was "([A-Za-z0-9_.-], 1 to 255 characters)").
  const std::string rule =
      "stripe_price_monthly: a Stripe price id ([A-Za-z0-9_-], 1 to 200 characters) or null";
  for (const std::string& id : {std::string("price.1"), std::string(201, 'p'),
                                std::string("bad price!"), std::string(256, 'p')}) {
    // A PUT body is refused as it is parsed (before the route asks Stripe), and the command
    // refuses the merged plan by the same rule.
    PlanInput input;
    Status s = ParsePlanInput(R"({"stripe_price_monthly":")" + id + "\"}", "professional", &input);
    EXPECT_EQ(s.problem(), "validation_failed") << id << " " << s.ToString();
    EXPECT_EQ(s.message(), rule) << id;
    s = ParsePlanInput(R"({"stripe_price_monthly":"price_ok"})", "professional", &input);
    ASSERT_TRUE(s.ok()) << s.ToString();
    input.plan.stripe_price_monthly = id;
    UpdatePlan put(input, TestAdmin());
    s = h.Run(&put, &d);
    EXPECT_EQ(s.problem(), "validation_failed") << id << " " << s.ToString();
    EXPECT_EQ(s.message(), rule) << id;
    SetPlanStripePrices setup("professional", id, std::nullopt, Actor::System("ledgerctl"));
    s = h.Run(&setup, &d);
    EXPECT_EQ(s.problem(), "validation_failed") << id << " " << s.ToString();
    EXPECT_EQ(s.message(), rule) << id;
  }
  EXPECT_EQ(h.events().size(), events);
  for (const std::string& id : {std::string("price_1Nx-a"), std::string(200, 'p')}) {
    EXPECT_TRUE(IsStripeId(id)) << id;
    SetPlanStripePrices setup("professional", id, std::nullopt, Actor::System("ledgerctl"));
    EXPECT_TRUE(h.Run(&setup, &d).ok()) << id;
  }
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "professional", &stored).ok());
  stored.stripe_price_monthly = "price.legacy";
  Plan parsed;
  EXPECT_TRUE(ParsePlanJson(PlanToJson(stored), &parsed).ok());
}

// Made free, the conversion plan is off sale as much as retired: PUT /plans/starter
// {"price_monthly_cents":0} answered 200 and every trial checkout then 422 "plan 'starter' is
// free" while the trial stayed on sale.
TEST(PlanCommandsTest, StarterCannotBeMadeFreeWhileATrialConvertsToIt) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  const size_t events = h.events().size();
  Decision d;
  PlanInput free;
  ASSERT_TRUE(
      ParsePlanInput(R"({"price_monthly_cents":0,"price_yearly_cents":null})", "starter", &free)
          .ok());
  UpdatePlan put_free(free, TestAdmin());
  Status s = h.Run(&put_free, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_in_use") << s.ToString();
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_EQ(h.events().size(), events);
  // A new price is fine.
  PlanInput dearer;
  ASSERT_TRUE(ParsePlanInput(R"({"price_monthly_cents":2900})", "starter", &dearer).ok());
  UpdatePlan put_dearer(dearer, TestAdmin());
  h.MustRun(&put_dearer);
  // With the trials retired Starter may be free; no trial goes on sale then.
  RetirePlan trial("trial", TestAdmin());
  h.MustRun(&trial);
  UpdatePlan put_free_now(free, TestAdmin());
  h.MustRun(&put_free_now);
  CreatePlan create(ParsedBody(R"("trial_days":14)"), TestAdmin());
  s = h.Run(&create, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_not_on_sale") << s.ToString();
  PlanInput trial_on;
  ASSERT_TRUE(ParsePlanInput(R"({"active":true})", "trial", &trial_on).ok());
  UpdatePlan put_trial_on(trial_on, TestAdmin());
  s = h.Run(&put_trial_on, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_not_on_sale") << s.ToString();
}

// The other way round: a trial plan cannot go on sale (POST, or PUT "active":true of a retired
// one) while the plan its trials convert to is retired or missing: every checkout for it would be
// refused (DELETE /plans/trial, DELETE /plans/starter, PUT /plans/trial {"active":true} was 200).
TEST(PlanCommandsTest, ATrialPlanCannotGoOnSaleWhileItsConversionPlanIsNot) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  RetirePlan trial("trial", TestAdmin());
  h.MustRun(&trial);
  RetirePlan starter("starter", TestAdmin());
  h.MustRun(&starter);
  const size_t events = h.events().size();
  Decision d;
  PlanInput on;
  ASSERT_TRUE(ParsePlanInput(R"({"active":true})", "trial", &on).ok());
  UpdatePlan put_on(on, TestAdmin());
  Status s = h.Run(&put_on, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_not_on_sale") << s.ToString();
  EXPECT_EQ(s.code(), Code::kConflict);
  CreatePlan create(ParsedBody(R"("trial_days":14)"), TestAdmin());
  s = h.Run(&create, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_not_on_sale") << s.ToString();
  EXPECT_EQ(h.events().size(), events);
  // Off sale, a trial plan can be made and edited; a plan without a trial goes on sale.
  PlanInput rename;
  ASSERT_TRUE(ParsePlanInput(R"({"display_name":"Old trial"})", "trial", &rename).ok());
  UpdatePlan put_rename(rename, TestAdmin());
  h.MustRun(&put_rename);
  CreatePlan later(ParsedBody(R"("trial_days":14,"active":false)"), TestAdmin());
  h.MustRun(&later);
  PlanInput pro_on;
  ASSERT_TRUE(ParsePlanInput(R"({"display_name":"Pro"})", "professional", &pro_on).ok());
  UpdatePlan put_pro(pro_on, TestAdmin());
  h.MustRun(&put_pro);
  // Starter back on sale: so can the trial be.
  PlanInput starter_on;
  ASSERT_TRUE(ParsePlanInput(R"({"active":true})", "starter", &starter_on).ok());
  UpdatePlan put_starter(starter_on, TestAdmin());
  h.MustRun(&put_starter);
  UpdatePlan put_on_again(on, TestAdmin());
  EXPECT_EQ(h.MustRun(&put_on_again).events.size(), 1u);

  // A catalog without the conversion plan at all: no trial plan on sale either.
  Harness bare;
  CreatePlan first_trial(ParsedBody(R"("trial_days":14)"), TestAdmin());
  s = bare.Run(&first_trial, &d);
  EXPECT_EQ(s.problem(), "conversion_plan_not_on_sale") << s.ToString();
  EXPECT_TRUE(bare.events().empty());
}

// trial_days > 0 makes a plan's price a one-time trial fee and its windows daily: a PUT cannot
// turn a recurring plan into a trial (its subscribers would be read as expired trials) or back.
TEST(PlanCommandsTest, UpdateCannotTurnARecurringPlanIntoATrialOrBack) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(R"("trial_days":14)"), "team", &input).ok());
  UpdatePlan to_trial(input, TestAdmin());
  Decision d;
  Status s = h.Run(&to_trial, &d);
  EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
  EXPECT_EQ(s.problem(), "plan_kind_change");

  SeedCatalog seed;  // next to "team": the trial plan
  Harness fresh;
  fresh.MustRun(&seed);
  Plan trial;
  ASSERT_TRUE(GetPlan(fresh.state(), "trial", &trial).ok());
  PlanInput trial_input;
  trial_input.plan = trial;
  trial_input.given.set();
  trial_input.plan.trial_days = 0;
  UpdatePlan from_trial(trial_input, TestAdmin());
  s = fresh.Run(&from_trial, &d);
  EXPECT_EQ(s.problem(), "plan_kind_change") << s.ToString();
  trial_input.plan.trial_days = 14;  // a longer trial is still a trial
  UpdatePlan longer(trial_input, TestAdmin());
  EXPECT_TRUE(fresh.Run(&longer, &d).ok());
  const size_t events = h.events().size();
  EXPECT_EQ(events, 1u);  // only the create
}

// A Stripe price maps a subscription to one plan: no two plans (retired ones included) name it.
TEST(PlanCommandsTest, NoTwoPlansShareAStripePrice) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  SetPlanStripePrices starter("starter", "price_s", "price_sy", Actor::System("ledgerctl"));
  h.MustRun(&starter);
  RetirePlan retire_trial("trial", TestAdmin());  // trials convert to starter
  h.MustRun(&retire_trial);
  RetirePlan retire("starter", TestAdmin());
  h.MustRun(&retire);
  const size_t events = h.events().size();
  Decision d;
  CreatePlan taken(ParsedBody(R"("stripe_price_monthly":"price_s")"), TestAdmin());
  Status s = h.Run(&taken, &d);
  EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
  EXPECT_EQ(s.problem(), "stripe_price_in_use");
  CreatePlan same_twice(
      ParsedBody(R"("stripe_price_monthly":"price_t","stripe_price_yearly":"price_t")"),
      TestAdmin());
  EXPECT_EQ(h.Run(&same_twice, &d).problem(), "stripe_price_in_use");
  CreatePlan team(ParsedBody(R"("stripe_price_monthly":"price_t")"), TestAdmin());
  h.MustRun(&team);
  SetPlanStripePrices steal("professional", "price_t", std::nullopt, Actor::System("ledgerctl"));
  EXPECT_EQ(h.Run(&steal, &d).problem(), "stripe_price_in_use");
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(R"("stripe_price_yearly":"price_sy")"), "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  EXPECT_EQ(h.Run(&update, &d).problem(), "stripe_price_in_use");
  EXPECT_EQ(h.events().size(), events + 1);  // only "team"
  // A plan keeps its own prices through an update.
  ASSERT_TRUE(ParsePlanInput(Body(R"("description":"d")"), "team", &input).ok());
  UpdatePlan own(input, TestAdmin());
  EXPECT_TRUE(h.Run(&own, &d).ok());
}

TEST(PlanCommandsTest, UpdateThatChangesNothingAppendsNothing) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(), "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  Decision d = h.MustRun(&update);
  EXPECT_TRUE(d.events.empty());
  EXPECT_EQ(d.http_status, 200);
  EXPECT_EQ(d.body, PlanToJson(ParsedBody()));
}

TEST(PlanCommandsTest, UpdateOrRetireOfAMissingPlanIs404) {
  Harness h;
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(Body(), "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  Decision d;
  Status s = h.Run(&update, &d);
  EXPECT_TRUE(s.IsNotFound());
  EXPECT_EQ(s.problem(), "not_found");
  RetirePlan retire("team", TestAdmin());
  EXPECT_TRUE(h.Run(&retire, &d).IsNotFound());
  SetPlanStripePrices prices("team", "price_1", std::nullopt, Actor::System("ledgerctl"));
  EXPECT_TRUE(h.Run(&prices, &d).IsNotFound());
  EXPECT_TRUE(h.events().empty());
}

TEST(PlanCommandsTest, RetireKeepsThePlanInactiveAndIsIdempotent) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  RetirePlan retire("team", TestAdmin());
  Decision d = h.MustRun(&retire);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].type, kPlanRetiredV1);
  EXPECT_EQ(d.events[0].subject, "plan:team");
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_FALSE(stored.active);
  EXPECT_EQ(d.body, PlanToJson(stored));

  RetirePlan again("team", TestAdmin());
  Decision d2 = h.MustRun(&again);
  EXPECT_TRUE(d2.events.empty());
  EXPECT_EQ(d2.body, d.body);

  std::vector<Plan> active, all;
  ASSERT_TRUE(ListPlans(h.state(), false, &active).ok());
  ASSERT_TRUE(ListPlans(h.state(), true, &all).ok());
  EXPECT_TRUE(active.empty());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].id, "team");
}

TEST(PlanCommandsTest, SetStripePricesIsAReadModifyWrite) {
  Harness h;
  CreatePlan create(ParsedBody(R"("stripe_price_yearly":"price_y")"), TestAdmin());
  h.MustRun(&create);
  SetPlanStripePrices set("team", "price_m", std::nullopt, Actor::System("ledgerctl"));
  Decision d = h.MustRun(&set);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].type, kPlanUpdatedV1);
  Plan stored;
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.stripe_price_monthly, "price_m");
  EXPECT_EQ(stored.stripe_price_yearly, "price_y");

  SetPlanStripePrices same("team", "price_m", "price_y", Actor::System("ledgerctl"));
  EXPECT_TRUE(h.MustRun(&same).events.empty());
  SetPlanStripePrices clear("team", std::nullopt, "", Actor::System("ledgerctl"));
  EXPECT_EQ(h.MustRun(&clear).events.size(), 1u);
  ASSERT_TRUE(GetPlan(h.state(), "team", &stored).ok());
  EXPECT_EQ(stored.stripe_price_yearly, std::nullopt);
  SetPlanStripePrices bad("team", "price with space", std::nullopt, Actor::System("ledgerctl"));
  Decision bad_decision;
  EXPECT_EQ(h.Run(&bad, &bad_decision).code(), Code::kUnprocessable);
}

TEST(SeedCatalogTest, SeedsTheFourPlansOnlyWhenEmpty) {
  Harness h;
  SeedCatalog seed;
  Decision d = h.MustRun(&seed);
  ASSERT_EQ(d.events.size(), 4u);
  EXPECT_EQ(d.body, R"({"seeded":true,"plans":4})");
  for (const NewEvent& e : d.events) {
    EXPECT_EQ(e.type, kPlanCreatedV1);
    EXPECT_NE(e.data.find(R"("actor":{"kind":"system","sub":"seed","email":null})"),
              std::string::npos);
  }
  std::vector<Plan> plans;
  ASSERT_TRUE(ListPlans(h.state(), false, &plans).ok());
  EXPECT_EQ(plans, InitialPlans());  // ordered by price: trial, starter, professional, enterprise

  SeedCatalog again;
  Decision d2 = h.MustRun(&again);
  EXPECT_TRUE(d2.events.empty());
  EXPECT_EQ(d2.body, R"({"seeded":false,"plans":4})");
}

TEST(SeedCatalogTest, DoesNotReseedAfterEveryPlanWasRetired) {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  for (const Plan& p : InitialPlans()) {
    RetirePlan retire(p.id, TestAdmin());
    h.MustRun(&retire);
  }
  SeedCatalog again;
  EXPECT_TRUE(h.MustRun(&again).events.empty());
}

TEST(SeedCatalogTest, DoesNotSeedNextToAnAdminPlan) {
  Harness h;
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  SeedCatalog seed;
  EXPECT_TRUE(h.MustRun(&seed).events.empty());
}

TEST(PlanQueriesTest, ListOrdersByPriceThenId) {
  Harness h;
  for (auto [id, price] : std::vector<std::pair<std::string, int64_t>>{
           {"b", 500}, {"a", 500}, {"c", 100}, {"d", 0}}) {
    Plan p = ParsedBody();
    p.id = id;
    p.price_monthly_cents = price;
    if (price == 0) p.price_yearly_cents.reset();  // free: no yearly price either
    CreatePlan create(p, TestAdmin());
    h.MustRun(&create);
  }
  std::vector<Plan> plans;
  ASSERT_TRUE(ListPlans(h.state(), false, &plans).ok());
  std::vector<std::string> ids;
  for (const Plan& p : plans) ids.push_back(p.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"d", "c", "a", "b"}));
  rapidjson::Document doc;
  doc.Parse(PlanListToJson(plans).c_str());
  ASSERT_TRUE(doc["plans"].IsArray());
  EXPECT_EQ(doc["plans"].Size(), 4u);
}

TEST(PlanQueriesTest, CorruptRowIsReported) {
  MemoryState state;
  ASSERT_TRUE(state.Put(kPlansFamily, "x", "{not json").ok());
  Plan plan;
  EXPECT_TRUE(GetPlan(state, "x", &plan).IsCorruption());
  std::vector<Plan> plans;
  EXPECT_TRUE(ListPlans(state, true, &plans).IsCorruption());
}

// ---- Fold purity ------------------------------------------------------------------------------

// A history touching every event type.
std::vector<Event> History() {
  Harness h;
  SeedCatalog seed;
  h.MustRun(&seed);
  CreatePlan create(ParsedBody(), TestAdmin());
  h.MustRun(&create);
  PlanInput input;
  EXPECT_TRUE(ParsePlanInput(Body(R"("features":["x"])"), "team", &input).ok());
  UpdatePlan update(input, TestAdmin());
  h.MustRun(&update);
  RetirePlan retire("trial", TestAdmin());
  h.MustRun(&retire);
  SetPlanStripePrices prices("starter", "price_s", "price_sy", Actor::System("ledgerctl"));
  h.MustRun(&prices);
  return h.events();
}

MemoryState::Rows Replay(const std::vector<Event>& events) {
  MemoryState state;
  for (const Event& e : events) {
    Status s = kFold.Apply(e, state, &state);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return state.rows();
}

TEST(PlanCatalogFoldTest, SameEventsGiveTheSameRows) {
  std::vector<Event> events = History();
  ASSERT_EQ(events.size(), 8u);
  MemoryState::Rows first = Replay(events);
  EXPECT_EQ(Replay(events), first);
  // Rows depend only on the events: another history with other ids and times gives equal rows.
  EXPECT_EQ(Replay(History()), first);
  ASSERT_EQ(first.size(), 1u);
  // Five plans, and a row for each Stripe price a plan named (PlanForStripePrice).
  EXPECT_EQ(first.at("plans").size(), 7u);
  EXPECT_EQ(first.at("plans").at("price/price_sy"), "starter");
  EXPECT_NE(first.at("plans").at("trial").find(R"("active":false)"), std::string::npos);
  EXPECT_NE(first.at("plans").at("starter").find(R"("stripe_price_monthly":"price_s")"),
            std::string::npos);
}

TEST(PlanCatalogFoldTest, RowsAreCanonicalWhateverTheEventsMemberOrder) {
  Event e;
  e.type = std::string(kPlanCreatedV1);
  e.subject = "plan:team";
  Plan plan = ParsedBody();
  // Members in another order and with whitespace: the row is still the canonical JSON.
  e.data = R"({ "actor": {"email": null, "sub": "x", "kind": "system"}, "plan": )" +
           PlanToJson(plan) + "}";
  MemoryState state;
  ASSERT_TRUE(kFold.Apply(e, state, &state).ok());
  std::string row;
  ASSERT_TRUE(state.Get(kPlansFamily, "team", &row).ok());
  EXPECT_EQ(row, PlanToJson(plan));
}

TEST(PlanCatalogFoldTest, IgnoresOtherEventTypes) {
  Event e;
  e.type = "usage.recorded.v1";
  e.subject = "plan:x";
  e.data = "not even json";
  MemoryState state;
  EXPECT_TRUE(kFold.Apply(e, state, &state).ok());
  EXPECT_TRUE(state.rows().empty());
}

TEST(PlanCatalogFoldTest, RejectsMalformedPlanEvents) {
  MemoryState state;
  Event e;
  e.type = std::string(kPlanCreatedV1);
  e.subject = "plan:team";
  for (std::string data : {std::string("{"), std::string("{}"), std::string(R"({"plan":{}})"),
                           R"({"plan":)" + Replace(PlanToJson(ParsedBody()), "\"team\"", "\"TEAM\"") +
                               "}"}) {
    e.data = data;
    Status s = kFold.Apply(e, state, &state);
    EXPECT_FALSE(s.ok()) << data;
  }
  e.subject = "plan:other";  // subject must name the plan
  e.data = R"({"plan":)" + PlanToJson(ParsedBody()) + "}";
  EXPECT_FALSE(kFold.Apply(e, state, &state).ok());
  e.type = std::string(kPlanRetiredV1);
  e.subject = "plan:team";
  e.data = R"({"plan_id":"team"})";  // unknown plan
  EXPECT_FALSE(kFold.Apply(e, state, &state).ok());
  EXPECT_TRUE(state.rows().empty());
}

// ---- Schemas of the events this module produces ----------------------------------------------

TEST(PlanEventSchemasTest, EveryProducedEventValidates) {
  std::vector<Event> events = History();
  for (Event& e : events) {
    e.prev_hash.fill(0);
    SealEvent(&e);
    EXPECT_TRUE(EnvelopeMatchesSchema(e)) << e.type;
  }
  // An admin without an email is written as null.
  Harness h;
  CreatePlan create(ParsedBody(), Actor::Admin("sub-only", ""));
  Decision d = h.MustRun(&create);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_TRUE(EventMatchesSchema(d.events[0]));
}

TEST(PlanEventSchemasTest, SchemasRejectWhatTheValidatorRejects) {
  // The schema is not a rubber stamp: documents ValidatePlan() refuses are refused by it too.
  std::string plan = PlanToJson(ParsedBody());
  auto event = [](const std::string& plan_json) {
    return R"({"plan":)" + plan_json + R"(,"actor":{"kind":"admin","sub":"a","email":null}})";
  };
  EXPECT_TRUE(ledger::testing::EventDataMatchesSchema(kPlanCreatedV1, event(plan)));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"("id":"team")", R"("id":"Team")"},
      {R"("limit_window":"month")", R"("limit_window":null)"},
      {R"("api_calls_limit":5000)", R"("api_calls_limit":null)"},
      {R"("limit_window":"month")", R"("limit_window":"week")"},
      {R"("currency":"usd")", R"("currency":"eur")"},
      {R"("services":["ops-center","chat"])", R"("services":["chat","chat"])"},
      {R"("services":["ops-center","chat"])", R"("services":["email"])"},
      {R"("team_seats":1)", R"("team_seats":0)"},
      {R"("price_monthly_cents":2900)", R"("price_monthly_cents":29.5)"},
      {R"("active":true)", R"("active":true,"extra":1)"},
      {R"("stripe_price_monthly":null)", R"("stripe_price_monthly":"")"},
  };
  for (const auto& [from, to] : bad) {
    EXPECT_FALSE(
        ledger::testing::EventDataMatchesSchema(kPlanCreatedV1, event(Replace(plan, from, to))))
        << to;
  }
  EXPECT_FALSE(ledger::testing::EventDataMatchesSchema(
      kPlanCreatedV1, R"({"plan":)" + plan + R"(,"actor":{"kind":"root","sub":"a","email":null}})"));
  EXPECT_FALSE(ledger::testing::EventDataMatchesSchema(kPlanRetiredV1, R"({"plan_id":"x"})"));
  EXPECT_FALSE(ledger::testing::EventDataMatchesSchema("plan.unknown.v1", "{}"));
}

}  // namespace
}  // namespace ledger::projections
