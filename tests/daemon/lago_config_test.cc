// The Lago settings of ledgerd's configuration: LAGO_API_URL / --lago-api-url, LAGO_API_KEY /
// --lago-api-key (a secret: never in the startup description), LAGO_BILLABLE_METRIC_CODE,
// LAGO_WEBHOOK_ISSUER, LAGO_ORGANIZATION_ID; bad values exit 78 naming the setting.
#include <gtest/gtest.h>

#include "daemon/config.h"
#include "tests/daemon/daemon_test_util.h"

namespace ledger::testing {
namespace {

using daemon::Config;
using daemon::kExitConfig;
using daemon::ParseResult;

constexpr char kKey[] = "lago_live_key_0123456789abcdef";

TEST(LagoConfigTest, DefaultsLeaveTheSinkOff) {
  ScopedCleanEnvironment env;
  Config config;
  ASSERT_TRUE(Parse({}, &config).status.ok());
  EXPECT_EQ(config.lago_api_url, "");
  EXPECT_EQ(config.lago_api_key, "");
  EXPECT_EQ(config.lago_billable_metric_code, "api_calls");
  EXPECT_EQ(config.lago_webhook_issuer, "");
  EXPECT_EQ(config.lago_organization_id, "");
  EXPECT_FALSE(config.LagoSinkEnabled());
  EXPECT_NE(config.Describe().find("lago_sink=off"), std::string::npos);
}

TEST(LagoConfigTest, EnvironmentAndFlagsAreRead) {
  ScopedCleanEnvironment env;
  env.Set("LAGO_API_URL", "http://unicorn-lago-api:3000");
  env.Set("LAGO_API_KEY", kKey);
  env.Set("LAGO_BILLABLE_METRIC_CODE", "llm_calls");
  env.Set("LAGO_WEBHOOK_ISSUER", "https://billing-api.example.com");
  env.Set("LAGO_ORGANIZATION_ID", "1a901a90-1a90-1a90-1a90-1a901a901a90");
  env.Set("LAGO_WEBHOOK_HMAC_KEY", "hmac-key");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.lago_api_url, "http://unicorn-lago-api:3000");
  EXPECT_EQ(config.lago_api_key, kKey);
  EXPECT_EQ(config.lago_billable_metric_code, "llm_calls");
  EXPECT_EQ(config.lago_webhook_issuer, "https://billing-api.example.com");
  EXPECT_EQ(config.lago_organization_id, "1a901a90-1a90-1a90-1a90-1a901a901a90");
  EXPECT_TRUE(config.LagoSinkEnabled());
  const std::string described = config.Describe();
  EXPECT_NE(described.find("lago_sink=on (http://unicorn-lago-api:3000"), std::string::npos)
      << described;
  EXPECT_EQ(described.find(kKey), std::string::npos) << described;
  // Not a secret: the start-up line says which organization's webhooks are taken.
  EXPECT_NE(described.find("organization 1a901a90-1a90-1a90-1a90-1a901a901a90"), std::string::npos)
      << described;

  Config flags;
  r = Parse({"--lago-api-url", "https://lago.example.com/base", "--lago-api-key", "flag-key",
             "--lago-billable-metric-code", "calls", "--lago-organization-id", "org-ours"},
            &flags);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(flags.lago_api_url, "https://lago.example.com/base");
  EXPECT_EQ(flags.lago_api_key, "flag-key");
  EXPECT_EQ(flags.lago_billable_metric_code, "calls");
  EXPECT_EQ(flags.lago_organization_id, "org-ours");
}

TEST(LagoConfigTest, AnUrlWithoutAKeyIsAllowedAndLeavesTheSinkOff) {
  // The seed's deployment sets LAGO_API_URL first and the key later.
  ScopedCleanEnvironment env;
  env.Set("LAGO_API_URL", "http://unicorn-lago-api:3000");
  Config config;
  ASSERT_TRUE(Parse({}, &config).status.ok());
  EXPECT_FALSE(config.LagoSinkEnabled());
}

TEST(LagoConfigTest, BadLagoSettingsExit78NamingThem) {
  struct Bad {
    const char* setting;
    std::vector<std::pair<std::string, std::string>> env;
  };
  const std::vector<Bad> cases = {
      {"LAGO_API_URL", {{"LAGO_API_URL", "unicorn-lago-api:3000"}, {"LAGO_API_KEY", kKey}}},
      {"LAGO_API_URL", {{"LAGO_API_URL", "ftp://lago"}}},
      {"LAGO_API_URL", {{"LAGO_API_URL", "http://"}}},
      {"LAGO_API_URL", {{"LAGO_API_URL", "http://lago:3000/?x=1"}}},
      {"LAGO_API_KEY", {{"LAGO_API_KEY", kKey}}},
      {"LAGO_BILLABLE_METRIC_CODE", {{"LAGO_BILLABLE_METRIC_CODE", "api calls"}}},
      {"LAGO_BILLABLE_METRIC_CODE", {{"LAGO_BILLABLE_METRIC_CODE", std::string(256, 'c')}}},
      // Set but empty (a variable that failed to expand would let every organization in).
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", ""}}},
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", "org-ours\n"}}},
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", "org ours"}}},
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", "org-\xc3\xa9"}}},
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", "org-\x7f"}}},
      {"LAGO_ORGANIZATION_ID", {{"LAGO_ORGANIZATION_ID", std::string(256, 'o')}}},
  };
  for (const Bad& bad : cases) {
    SCOPED_TRACE(bad.setting);
    ScopedCleanEnvironment env;
    for (const auto& [name, value] : bad.env) env.Set(name, value);
    Config config;
    ParseResult r = Parse({}, &config);
    EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
    EXPECT_NE(r.status.message().find(bad.setting), std::string::npos) << r.status.message();
    EXPECT_EQ(r.status.message().find(kKey), std::string::npos) << r.status.message();
  }
  // The flag given empty, and the longest accepted value.
  ScopedCleanEnvironment env;
  Config config;
  ParseResult r = Parse({"--lago-organization-id", ""}, &config);
  EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
  EXPECT_NE(r.status.message().find("LAGO_ORGANIZATION_ID"), std::string::npos);
  r = Parse({"--lago-organization-id", std::string(255, 'o')}, &config);
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

}  // namespace
}  // namespace ledger::testing
