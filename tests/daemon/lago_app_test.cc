// Lago in the assembled daemon (daemon/app.h): with LAGO_API_URL and LAGO_API_KEY the sink runs,
// forwards metered usage to a local fake Lago exactly once, reports itself on /readyz and
// /metrics, and resumes from its checkpoint after a restart; the webhook route verifies with
// the configured keys and LAGO_ORGANIZATION_ID (jwt mode without it warns at start); a bad
// LAGO_WEBHOOK_PUBLIC_KEY_FILE stops the start with exit code 78.
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <map>
#include <thread>

#include "daemon/app.h"
#include "daemon/config.h"
#include "http/lago_signature.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/fake_lago.h"
#include "tests/support/http_client.h"
#include "tests/support/lago_webhooks.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/wait.h"

namespace ledger::testing {
namespace {

using daemon::App;
using daemon::Config;

constexpr char kServiceToken[] = "gateway-token-0123456789abcdef";
constexpr char kHmacKey[] = "lago-hmac-key";

Config LagoConfig(const std::string& data_dir, const FakeLago& lago) {
  Config config;
  config.data_dir = data_dir;
  config.listen_host = "127.0.0.1";
  config.listen_port = 0;
  config.kafka_brokers = "none";
  config.master_key_file = data_dir + "/master.key";
  config.http_threads = 16;
  config.jwt_hs256_secret = kTestHs256Secret;
  config.service_tokens = {{"gateway", kServiceToken}};
  config.lago_api_url = lago.url();
  config.lago_api_key = kFakeLagoApiKey;
  config.lago_webhook_hmac_key = kHmacKey;
  return config;
}

// The Lago transaction ids of the batched usage in the log: "<event id>:<item index>" per item of
// every usage.batch_recorded.v1 (what POST /api/v1/usage/events appends).
std::vector<std::string> UsageIds(TestHttpClient* admin) {
  HttpReply r = admin->Get("/api/v1/events?type=usage.batch_recorded.v1&limit=1000");
  EXPECT_EQ(r.status, 200) << r.body;
  std::vector<std::string> ids;
  rapidjson::Document doc = r.Json();
  if (!doc.IsObject() || !doc.HasMember("events")) return ids;
  for (const auto& e : doc["events"].GetArray()) {
    for (rapidjson::SizeType i = 0; i < e["data"]["items"].Size(); ++i) {
      ids.push_back(std::string(e["id"].GetString()) + ":" + std::to_string(i));
    }
  }
  return ids;
}

TEST(LagoAppTest, TheSinkForwardsUsageAndResumesAfterARestart) {
  ScopedCleanEnvironment env;
  TempDir dir;
  FakeLago lago;
  std::unique_ptr<App> app;
  Status s = App::Start(LagoConfig(dir.Sub("data"), lago), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(kServiceToken);
  HttpReply r = client.Post(
      "/api/v1/usage/events",
      R"({"events":[{"user_id":"alice","service":"chat","quantity":2,"idempotency_key":"a1"},)"
      R"({"user_id":"bob","service":"search","quantity":5,"idempotency_key":"b1"},)"
      R"({"user_id":"alice","service":"tts","quantity":1,"idempotency_key":"a2"}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(lago.WaitForStored(3, std::chrono::seconds(30)));

  TestHttpClient admin("127.0.0.1", app->http_port());
  admin.set_bearer(MintHs256(TokenClaims::Admin("root", std::time(nullptr)), kTestHs256Secret));
  const std::vector<std::string> first = UsageIds(&admin);
  ASSERT_EQ(first.size(), 3u);  // alice's two items in one event, bob's one
  EXPECT_TRUE(CountedExactlyOnce(lago, first));
  for (const FakeLago::StoredEvent& e : lago.stored()) EXPECT_EQ(e.code, "api_calls");
  std::map<std::string, int64_t> quantity;
  for (const FakeLago::StoredEvent& e : lago.stored()) {
    quantity[e.external_subscription_id] += e.quantity;
  }
  EXPECT_EQ(quantity, (std::map<std::string, int64_t>{{"alice", 3}, {"bob", 5}}));

  // /readyz and /metrics report the sink.
  ASSERT_TRUE(WaitFor([&] {
    rapidjson::Document ready = client.Get("/readyz").Json();
    return ready.IsObject() && ready["sinks"]["lago"]["lag"].GetUint64() == 0;
  }, std::chrono::seconds(30), std::chrono::milliseconds(20)));
  rapidjson::Document ready = client.Get("/readyz").Json();
  const auto& sink = ready["sinks"]["lago"];
  EXPECT_TRUE(sink["enabled"].GetBool());
  EXPECT_EQ(std::string(sink["state"].GetString()), "up");
  EXPECT_TRUE(sink["last_error"].IsNull());
  const std::string metrics = client.Get("/metrics").body;
  EXPECT_NE(metrics.find("ledger_lago_sink_events_delivered_total 3\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("ledger_lago_sink_lag_events 0\n"), std::string::npos);

  // The webhook route verifies with LAGO_WEBHOOK_HMAC_KEY.
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  r = client.Post("/api/v1/webhooks/lago", body,
                  {{"X-Lago-Signature", http::LagoHmacSignature(kHmacKey, body)},
                   {"X-Lago-Signature-Algorithm", "hmac"},
                   {"X-Lago-Unique-Key", "wh-app-1"}});
  ASSERT_EQ(r.status, 200) << r.body;

  ASSERT_TRUE(app->Stop(std::chrono::seconds(5)).ok());
  app.reset();
  const size_t requests = lago.requests().size();

  // Restart: nothing is sent again; new usage is.
  ASSERT_TRUE(App::Start(LagoConfig(dir.Sub("data"), lago), nullptr, &app).ok());
  TestHttpClient again("127.0.0.1", app->http_port());
  again.set_bearer(kServiceToken);
  r = again.Post("/api/v1/usage/events",
                 R"({"events":[{"user_id":"carol","service":"chat","quantity":1,)"
                 R"("idempotency_key":"c1"}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(lago.WaitForStored(4, std::chrono::seconds(30)));
  TestHttpClient admin2("127.0.0.1", app->http_port());
  admin2.set_bearer(MintHs256(TokenClaims::Admin("root", std::time(nullptr)), kTestHs256Secret));
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds(&admin2)));
  size_t resent = 0;
  const auto all = lago.requests();
  for (size_t i = requests; i < all.size(); ++i) resent += all[i].events;
  EXPECT_EQ(resent, 1u);
  ASSERT_TRUE(app->Stop(std::chrono::seconds(5)).ok());
}

// Lago accepts usage under a code no billable metric has (a typo in LAGO_BILLABLE_METRIC_CODE)
// and bills none of it: /readyz and /metrics show the metric missing, and Lago's later
// events.errors webhook naming those events is counted and logged.
TEST(LagoAppTest, AnUnknownBillableMetricCodeIsVisibleToOperators) {
  ScopedCleanEnvironment env;
  TempDir dir;
  FakeLago::Options lago_options;
  lago_options.billable_metrics = {"llm_calls"};
  FakeLago lago(lago_options);
  std::unique_ptr<App> app;
  Status s = App::Start(LagoConfig(dir.Sub("data"), lago), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(kServiceToken);
  HttpReply r = client.Post(
      "/api/v1/usage/events",
      R"({"events":[{"user_id":"alice","service":"chat","quantity":2,"idempotency_key":"a1"}]})");
  ASSERT_EQ(r.status, 200) << r.body;
  // Lago takes the usage (as real Lago does, whatever the code).
  ASSERT_TRUE(lago.WaitForStored(1, std::chrono::seconds(30)));
  ASSERT_TRUE(WaitFor([&] {
    rapidjson::Document ready = client.Get("/readyz").Json();
    return ready.IsObject() && ready["sinks"]["lago"]["lag"].GetUint64() == 0;
  }, std::chrono::seconds(30), std::chrono::milliseconds(20)));
  rapidjson::Document ready = client.Get("/readyz").Json();
  const auto& sink = ready["sinks"]["lago"];
  EXPECT_EQ(std::string(sink["state"].GetString()), "down");
  EXPECT_EQ(std::string(sink["last_error"].IsString() ? sink["last_error"].GetString() : "null"),
            "billable metric api_calls not found in Lago");
  std::string metrics = client.Get("/metrics").body;
  EXPECT_NE(metrics.find("ledger_lago_sink_billable_metric_missing 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("ledger_lago_sink_up 0\n"), std::string::npos);

  // An hour later Lago's post-validation job reports those events.
  const std::string body =
      R"({"webhook_type":"events.errors","object_type":"events_errors",)"
      R"("organization_id":"org-1","events_errors":{"invalid_code":["tx-1","tx-2","tx-3"],)"
      R"("missing_aggregation_property":["tx-4"],"missing_group_key":[]}})";
  auto post = [&](const std::string& unique_key) {
    return client.Post("/api/v1/webhooks/lago", body,
                       {{"X-Lago-Signature", http::LagoHmacSignature(kHmacKey, body)},
                        {"X-Lago-Signature-Algorithm", "hmac"},
                        {"X-Lago-Unique-Key", unique_key}});
  };
  r = post("wh-errors-1");
  ASSERT_EQ(r.status, 200) << r.body;
  // Lago's retry of the same delivery is not counted again.
  r = post("wh-errors-1");
  ASSERT_EQ(r.status, 200) << r.body;
  metrics = client.Get("/metrics").body;
  EXPECT_NE(metrics.find("ledger_lago_events_errors_total{kind=\"invalid_code\"} 3\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(
      metrics.find("ledger_lago_events_errors_total{kind=\"missing_aggregation_property\"} 1\n"),
      std::string::npos);
  EXPECT_NE(metrics.find("ledger_lago_events_errors_total{kind=\"missing_group_key\"} 0\n"),
            std::string::npos);
  ASSERT_TRUE(app->Stop(std::chrono::seconds(5)).ok());
}

TEST(LagoAppTest, WithoutAnApiKeyTheSinkIsReportedDisabled) {
  ScopedCleanEnvironment env;
  TempDir dir;
  FakeLago lago;
  Config config = LagoConfig(dir.Sub("data"), lago);
  config.lago_api_key.clear();
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  TestHttpClient client("127.0.0.1", app->http_port());
  rapidjson::Document ready = client.Get("/readyz").Json();
  ASSERT_TRUE(ready.IsObject());
  EXPECT_FALSE(ready["sinks"]["lago"]["enabled"].GetBool());
  EXPECT_EQ(std::string(ready["sinks"]["lago"]["state"].GetString()), "disabled");
  ASSERT_TRUE(app->Stop(std::chrono::seconds(1)).ok());
}

// Lago signs `iss` with its own LAGO_API_URL, often a public URL other than the one ledgerd calls:
// the RS256 signature with Lago's key authenticates the delivery, and `iss` is checked only when
// LAGO_WEBHOOK_ISSUER names it.
TEST(LagoAppTest, JwtDeliveriesAreCheckedForIssOnlyWhenAnIssuerIsConfigured) {
  ScopedCleanEnvironment env;
  TempDir dir;
  FakeLago lago;
  auto key = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "lago");
  WriteTextFile(dir.Sub("lago.pem"), key->PublicKeyPem());
  Config config = LagoConfig(dir.Sub("data"), lago);
  config.lago_webhook_public_key_file = dir.Sub("lago.pem");
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  auto post = [&](App* app, const std::string& unique_key, const std::string& issuer) {
    TestHttpClient client("127.0.0.1", app->http_port());
    return client.Post("/api/v1/webhooks/lago", body,
                       {{"X-Lago-Signature", LagoJwtSignature(*key, body, issuer)},
                        {"X-Lago-Signature-Algorithm", "jwt"},
                        {"X-Lago-Unique-Key", unique_key}});
  };
  {
    std::unique_ptr<App> app;
    ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
    HttpReply r = post(app.get(), "wh-1", "https://billing.example.com");
    EXPECT_EQ(r.status, 200) << r.body;
    ASSERT_TRUE(app->Stop(std::chrono::seconds(1)).ok());
  }
  config.lago_webhook_issuer = "https://billing.example.com";
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  EXPECT_EQ(post(app.get(), "wh-2", "https://billing.example.com").status, 200);
  HttpReply r = post(app.get(), "wh-3", lago.url());
  EXPECT_EQ(r.status, 400) << r.body;
  ASSERT_TRUE(app->Stop(std::chrono::seconds(1)).ok());
}

// Lago's jwt key is instance-wide: a jwt signature proves "this Lago instance", not "our
// organization". The real ledgerd warns at start when jwt mode has no LAGO_ORGANIZATION_ID (and
// then takes another organization's delivery); with it, only that organization's deliveries.
TEST(LagoAppTest, JwtModeWithoutAnOrganizationWarnsAndWithOneRefusesOtherTenants) {
  TempDir dir;
  auto key = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "lago");
  WriteTextFile(dir.Sub("lago.pem"), key->PublicKeyPem());
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  options.env = {{"LAGO_WEBHOOK_PUBLIC_KEY_FILE", dir.Sub("lago.pem")}};
  constexpr char kWarning[] = "accepts deliveries signed for any organization";
  auto post = [&](int port, const std::string& organization, const std::string& unique_key) {
    LagoInvoiceSpec spec;
    spec.organization_id = organization;
    const std::string body = LagoInvoiceWebhookJson(spec);
    TestHttpClient client("127.0.0.1", port);
    return client.Post("/api/v1/webhooks/lago", body,
                       {{"X-Lago-Signature", LagoJwtSignature(*key, body, "http://lago")},
                        {"X-Lago-Signature-Algorithm", "jwt"},
                        {"X-Lago-Unique-Key", unique_key}});
  };
  {
    DaemonProcess daemon(options);
    ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
    EXPECT_NE(daemon.Log().find(kWarning), std::string::npos) << daemon.Log();
    EXPECT_NE(daemon.Log().find("organization: any"), std::string::npos) << daemon.Log();
    HttpReply r = post(daemon.port(), "org-other", "wh-1");
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  }
  options.env.emplace_back("LAGO_ORGANIZATION_ID", "org-ours");
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  EXPECT_EQ(daemon.Log().find(kWarning), std::string::npos) << daemon.Log();
  EXPECT_NE(daemon.Log().find("organization: org-ours"), std::string::npos) << daemon.Log();
  HttpReply r = post(daemon.port(), "org-other", "wh-22");
  EXPECT_EQ(r.status, 403) << r.body;
  EXPECT_NE(r.body.find("wrong_organization"), std::string::npos) << r.body;
  r = post(daemon.port(), "org-ours", "wh-333");
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST(LagoAppTest, ABadLagoPublicKeyFileIsAConfigError) {
  ScopedCleanEnvironment env;
  TempDir dir;
  FakeLago lago;
  WriteTextFile(dir.Sub("lago.pem"), "not a key");
  Config config = LagoConfig(dir.Sub("data"), lago);
  config.lago_webhook_public_key_file = dir.Sub("lago.pem");
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  EXPECT_EQ(daemon::ExitCodeFor(s), daemon::kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LAGO_WEBHOOK_PUBLIC_KEY_FILE"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace ledger::testing
