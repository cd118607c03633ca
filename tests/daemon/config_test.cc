// ledgerd configuration (CONTRACT.md §1): defaults, flag-over-environment precedence, and every
// bad setting rejected at start with exit code 78 naming the setting; bad usage is 64.
#include "daemon/config.h"

#include "daemon/app.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>

#include <map>
#include <set>

#include "tests/daemon/daemon_test_util.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"

namespace ledger::testing {
namespace {

using daemon::Config;
using daemon::kExitConfig;
using daemon::kExitOk;
using daemon::kExitUsage;
using daemon::ParseResult;

constexpr char kLongSecret[] = "0123456789abcdef0123456789abcdef";  // 32 bytes

TEST(ConfigTest, DefaultsMatchTheContract) {
  ScopedCleanEnvironment env;
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.exit_code, kExitOk);
  EXPECT_FALSE(r.exit_now);
  EXPECT_EQ(config.data_dir, "./data");
  EXPECT_EQ(config.listen_host, "127.0.0.1");
  EXPECT_EQ(config.listen_port, 8084);
  EXPECT_EQ(config.kafka_brokers, "embedded");
  EXPECT_EQ(config.kafka_topic, "ledger.events");
  EXPECT_EQ(config.jwt_hs256_secret, "");
  EXPECT_EQ(config.jwt_jwks_file, "");
  EXPECT_EQ(config.jwt_issuer, "");
  EXPECT_EQ(config.jwt_audience, "");
  EXPECT_EQ(config.admin_role, "admin");
  EXPECT_TRUE(config.service_tokens.empty());
  EXPECT_EQ(config.stripe_secret_key, "");
  EXPECT_TRUE(config.stripe_webhook_secrets.empty());
  EXPECT_EQ(config.stripe_api_base, "https://api.stripe.com");
  EXPECT_EQ(config.stripe_api_version, "2025-03-31.basil");
  EXPECT_EQ(config.master_key_file, "./data/master.key");
  EXPECT_EQ(config.log_level, "info");
  EXPECT_EQ(config.sync_interval_min_us, 1000);
  EXPECT_FALSE(config.core_dumps);
  EXPECT_TRUE(config.DevMode());
}

TEST(ConfigTest, SyncIntervalAcceptsItsWholeRange) {
  for (const char* value : {"0", "1", "100000"}) {
    SCOPED_TRACE(value);
    ScopedCleanEnvironment env;
    env.Set("LEDGER_SYNC_INTERVAL_MIN_US", value);
    Config config;
    ParseResult r = Parse({}, &config);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(config.sync_interval_min_us, std::stoll(value));
  }
}

TEST(ConfigTest, MasterKeyDefaultFollowsTheDataDirectory) {
  ScopedCleanEnvironment env;
  env.Set("LEDGER_DATA_DIR", "/srv/ledger");
  Config config;
  ASSERT_TRUE(Parse({}, &config).status.ok());
  EXPECT_EQ(config.master_key_file, "/srv/ledger/master.key");
}

TEST(ConfigTest, EveryContractVariableIsRead) {
  ScopedCleanEnvironment env;
  TempDir dir;
  WriteTextFile(dir.Sub("jwks.json"), R"({"keys":[]})");
  WriteTextFile(dir.Sub("lago.pem"), "pem");
  env.Set("LEDGER_DATA_DIR", dir.Sub("data"));
  env.Set("LEDGER_LISTEN", "0.0.0.0:0");
  env.Set("LEDGER_KAFKA_BROKERS", "kafka-1:9092,kafka-2:9092");
  env.Set("LEDGER_KAFKA_TOPIC", "billing.events-v2");
  env.Set("LEDGER_JWT_HS256_SECRET", kLongSecret);
  env.Set("LEDGER_JWT_JWKS_FILE", dir.Sub("jwks.json"));
  env.Set("LEDGER_JWT_ISSUER", "https://sso.example.com/realms/x");
  env.Set("LEDGER_JWT_AUDIENCE", "ledgerd");
  env.Set("LEDGER_ADMIN_ROLE", "billing-admin");
  env.Set("LEDGER_SERVICE_TOKENS", "gateway = 0123456789abcdef01, litellm=fedcba9876543210fe");
  env.Set("STRIPE_SECRET_KEY", "sk_test_x");
  env.Set("STRIPE_WEBHOOK_SECRET", "whsec_new,whsec_old");
  env.Set("STRIPE_API_BASE", "http://127.0.0.1:12111");
  env.Set("STRIPE_API_VERSION", "2024-06-20");
  env.Set("STRIPE_SUCCESS_URL", "https://app.example.com/ok");
  env.Set("STRIPE_CANCEL_URL", "https://app.example.com/cancel");
  env.Set("STRIPE_PORTAL_RETURN_URL", "https://app.example.com/account");
  env.Set("LAGO_WEBHOOK_HMAC_KEY", "lago-key");
  env.Set("LAGO_WEBHOOK_PUBLIC_KEY_FILE", dir.Sub("lago.pem"));
  env.Set("LEDGER_MASTER_KEY_FILE", dir.Sub("kek"));
  env.Set("LEDGER_LOG_LEVEL", "debug");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.data_dir, dir.Sub("data"));
  EXPECT_EQ(config.listen_host, "0.0.0.0");
  EXPECT_EQ(config.listen_port, 0);
  EXPECT_EQ(config.kafka_brokers, "kafka-1:9092,kafka-2:9092");
  EXPECT_EQ(config.kafka_topic, "billing.events-v2");
  EXPECT_EQ(config.jwt_hs256_secret, kLongSecret);
  EXPECT_EQ(config.jwt_jwks_file, dir.Sub("jwks.json"));
  EXPECT_EQ(config.jwt_issuer, "https://sso.example.com/realms/x");
  EXPECT_EQ(config.jwt_audience, "ledgerd");
  EXPECT_EQ(config.admin_role, "billing-admin");
  ASSERT_EQ(config.service_tokens.size(), 2u);
  EXPECT_EQ(config.service_tokens[0],
            std::make_pair(std::string("gateway"), std::string("0123456789abcdef01")));
  EXPECT_EQ(config.service_tokens[1],
            std::make_pair(std::string("litellm"), std::string("fedcba9876543210fe")));
  EXPECT_EQ(config.stripe_secret_key, "sk_test_x");
  EXPECT_EQ(config.stripe_webhook_secrets, (std::vector<std::string>{"whsec_new", "whsec_old"}));
  EXPECT_EQ(config.stripe_api_base, "http://127.0.0.1:12111");
  EXPECT_EQ(config.stripe_api_version, "2024-06-20");
  EXPECT_EQ(config.stripe_success_url, "https://app.example.com/ok");
  EXPECT_EQ(config.stripe_cancel_url, "https://app.example.com/cancel");
  EXPECT_EQ(config.stripe_portal_return_url, "https://app.example.com/account");
  EXPECT_EQ(config.lago_webhook_hmac_key, "lago-key");
  EXPECT_EQ(config.lago_webhook_public_key_file, dir.Sub("lago.pem"));
  EXPECT_EQ(config.master_key_file, dir.Sub("kek"));
  EXPECT_EQ(config.log_level, "debug");
  EXPECT_FALSE(config.DevMode());
  // Secrets never appear in the startup description.
  const std::string described = config.Describe();
  EXPECT_EQ(described.find(kLongSecret), std::string::npos) << described;
  EXPECT_EQ(described.find("0123456789abcdef01"), std::string::npos) << described;
  EXPECT_EQ(described.find("sk_test_x"), std::string::npos) << described;
  EXPECT_EQ(described.find("whsec_new"), std::string::npos) << described;
}

// The start line's items and words are one space apart: an HMAC-only Lago webhook wrote
// "lago_webhook=hmac  sync_interval_min_us=...", an HS256 secret without a JWKS file
// "auth=HS256  service_tokens=...".
TEST(ConfigTest, TheStartLineSpacesItsWordsOnce) {
  Config config;
  config.jwt_hs256_secret = kLongSecret;
  config.lago_webhook_hmac_key = "lago-key";
  std::string described = config.Describe();
  EXPECT_EQ(described.find("  "), std::string::npos) << described;
  EXPECT_NE(described.find(" auth=HS256 service_tokens="), std::string::npos) << described;
  EXPECT_NE(described.find(" lago_webhook=hmac sync_interval_min_us="), std::string::npos)
      << described;
  config.lago_organization_id = "org-ours";
  described = config.Describe();
  EXPECT_NE(described.find(" lago_webhook=hmac organization org-ours sync_interval_min_us="),
            std::string::npos)
      << described;
  config.jwt_jwks_file = "/etc/ledgerd/jwks.json";
  config.lago_webhook_public_key_file = "/etc/ledgerd/lago.pem";
  described = config.Describe();
  EXPECT_EQ(described.find("  "), std::string::npos) << described;
  EXPECT_NE(described.find(" auth=HS256 JWKS /etc/ledgerd/jwks.json service_tokens="),
            std::string::npos)
      << described;
  EXPECT_NE(described.find(" lago_webhook=hmac jwt organization org-ours sync_interval_min_us="),
            std::string::npos)
      << described;
}

struct Precedence {
  const char* env_name;
  const char* flag;
  const char* env_value;
  const char* flag_value;
  std::function<std::string(const Config&)> read;
  const char* from_env;   // what `read` gives with only the environment set
  const char* from_flag;  // ... with both set
};

TEST(ConfigTest, FlagWinsOverEnvironment) {
  const std::vector<Precedence> cases = {
      {"LEDGER_DATA_DIR", "--data-dir", "/from/env", "/from/flag",
       [](const Config& c) { return c.data_dir; }, "/from/env", "/from/flag"},
      {"LEDGER_LISTEN", "--listen", "127.0.0.1:9001", "127.0.0.2:9002",
       [](const Config& c) { return c.listen_host + ":" + std::to_string(c.listen_port); },
       "127.0.0.1:9001", "127.0.0.2:9002"},
      {"LEDGER_KAFKA_BROKERS", "--kafka-brokers", "none", "embedded",
       [](const Config& c) { return c.kafka_brokers; }, "none", "embedded"},
      {"LEDGER_KAFKA_TOPIC", "--kafka-topic", "env.topic", "flag.topic",
       [](const Config& c) { return c.kafka_topic; }, "env.topic", "flag.topic"},
      {"LEDGER_ADMIN_ROLE", "--admin-role", "env-admin", "flag-admin",
       [](const Config& c) { return c.admin_role; }, "env-admin", "flag-admin"},
      {"STRIPE_API_BASE", "--stripe-api-base", "http://env.invalid", "http://flag.invalid",
       [](const Config& c) { return c.stripe_api_base; }, "http://env.invalid",
       "http://flag.invalid"},
      {"LEDGER_LOG_LEVEL", "--log-level", "warn", "error",
       [](const Config& c) { return c.log_level; }, "warn", "error"},
      {"LEDGER_SERVICE_TOKENS", "--service-tokens", "env=0123456789abcdefXX",
       "flag=0123456789abcdefYY",
       [](const Config& c) {
         return c.service_tokens.size() == 1 ? c.service_tokens[0].first : "";
       },
       "env", "flag"},
      {"LEDGER_JWT_HS256_SECRET", "--jwt-hs256-secret", "env-secret-0123456789abcdef0123456",
       "flag-secret-0123456789abcdef012345", [](const Config& c) { return c.jwt_hs256_secret; },
       "env-secret-0123456789abcdef0123456", "flag-secret-0123456789abcdef012345"},
      {"STRIPE_WEBHOOK_SECRET", "--stripe-webhook-secret", "whsec_env", "whsec_flag",
       [](const Config& c) {
         return c.stripe_webhook_secrets.size() == 1 ? c.stripe_webhook_secrets[0] : "";
       },
       "whsec_env", "whsec_flag"},
      {"LEDGER_MASTER_KEY_FILE", "--master-key-file", "/env/kek", "/flag/kek",
       [](const Config& c) { return c.master_key_file; }, "/env/kek", "/flag/kek"},
      {"LEDGER_SYNC_INTERVAL_MIN_US", "--sync-interval-min-us", "0", "2500",
       [](const Config& c) { return std::to_string(c.sync_interval_min_us); }, "0", "2500"},
      {"LEDGER_CORE_DUMPS", "--core-dumps", "on", "off",
       [](const Config& c) { return std::string(c.core_dumps ? "on" : "off"); }, "on", "off"},
  };
  for (const Precedence& p : cases) {
    SCOPED_TRACE(p.env_name);
    ScopedCleanEnvironment env;
    env.Set(p.env_name, p.env_value);
    Config from_env;
    ParseResult r = Parse({}, &from_env);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(p.read(from_env), p.from_env);
    Config from_flag;
    r = Parse({p.flag, p.flag_value}, &from_flag);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(p.read(from_flag), p.from_flag);
  }
}

// Stripe's whsec_ values do not say their mode: an entry may (`test:` / `live:`; a bare one is of
// STRIPE_SECRET_KEY's mode), kept as given for the webhook route. A wrong prefix or an empty
// secret after one exits 78 naming the item by its place, never its value.
TEST(ConfigTest, AWebhookSecretMaySayItsMode) {
  ScopedCleanEnvironment env;
  env.Set("STRIPE_SECRET_KEY", "sk_live_x");
  env.Set("STRIPE_WEBHOOK_SECRET", "whsec_live1, test:whsec_test1,live:whsec_live2");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.stripe_webhook_secrets,
            (std::vector<std::string>{"whsec_live1", "test:whsec_test1", "live:whsec_live2"}));
  for (const char* value : {"whsec_live1,tset:whsec_test1", "whsec_live1,test:",
                            "whsec_live1,,test:whsec_test1", "whsec_live1, ,whsec_test1"}) {
    SCOPED_TRACE(value);
    env.Set("STRIPE_WEBHOOK_SECRET", value);
    Config bad;
    r = Parse({}, &bad);
    EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
    EXPECT_NE(r.status.message().find("STRIPE_WEBHOOK_SECRET: item 2: "), std::string::npos)
        << r.status.message();
    EXPECT_EQ(r.status.message().find("whsec_live1"), std::string::npos) << r.status.message();
    EXPECT_EQ(r.status.message().find("whsec_test1"), std::string::npos) << r.status.message();
  }
  // The live secret again as a test one: its holder would choose the mode by the body.
  env.Set("STRIPE_WEBHOOK_SECRET", "whsec_live1,test:whsec_live1");
  Config twice;
  r = Parse({}, &twice);
  EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
  EXPECT_EQ(r.status.message().find("whsec_live1"), std::string::npos) << r.status.message();
}

TEST(ConfigTest, FlagWinsEvenOverABadEnvironmentValue) {
  ScopedCleanEnvironment env;
  env.Set("LEDGER_LISTEN", "not-an-address");
  env.Set("LEDGER_LOG_LEVEL", "loud");
  Config config;
  ParseResult r = Parse({"--listen", "127.0.0.1:0", "--log-level", "warn"}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.listen_port, 0);
  EXPECT_EQ(config.log_level, "warn");
}

TEST(ConfigTest, KafkaBrokersAreTheKeywordsOrHostPortLists) {
  for (const char* brokers : {"embedded", "none", "k1:9092,k2:9093", "k1:9092, k2:9092",
                              "10.0.0.7:1", "[::1]:9092", "kafka-0.kafka.svc_x:65535",
                              // librdkafka's protocol prefix (refused as a host before)
                              "SASL_SSL://b1:9093,b2:9093", "PLAINTEXT://kafka:9092"}) {
    SCOPED_TRACE(brokers);
    ScopedCleanEnvironment env;
    env.Set("LEDGER_KAFKA_BROKERS", brokers);
    Config config;
    ParseResult r = Parse({}, &config);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(config.kafka_brokers, brokers);  // as given: the outbox checkpoint is named by it
  }
}

TEST(ConfigTest, ListenAcceptsHostnamesAndBracketedIpv6) {
  ScopedCleanEnvironment env;
  Config config;
  ASSERT_TRUE(Parse({"--listen", "localhost:65535"}, &config).status.ok());
  EXPECT_EQ(config.listen_host, "localhost");
  EXPECT_EQ(config.listen_port, 65535);
  Config v6;
  ASSERT_TRUE(Parse({"--listen", "[::1]:8084"}, &v6).status.ok());
  EXPECT_EQ(v6.listen_host, "::1");
  EXPECT_EQ(v6.listen_port, 8084);
}

// One bad setting: through the environment (env != "") or a flag (args).
struct BadSetting {
  std::string setting;  // the name the error must mention
  std::string env;
  std::string value;
  std::vector<std::string> args;
};

std::vector<BadSetting> BadSettings(const TempDir& dir) {
  const std::string missing = dir.Sub("does-not-exist.json");
  return {
      {"LEDGER_LISTEN", "LEDGER_LISTEN", "8084", {}},
      {"LEDGER_LISTEN", "LEDGER_LISTEN", "127.0.0.1:65536", {}},
      {"LEDGER_LISTEN", "LEDGER_LISTEN", "127.0.0.1:http", {}},
      {"LEDGER_LISTEN", "LEDGER_LISTEN", ":8084", {}},
      {"LEDGER_LISTEN", "LEDGER_LISTEN", "127.0.0.1:", {}},
      {"LEDGER_LISTEN", "", "", {"--listen", "127.0.0.1:-1"}},
      {"LEDGER_KAFKA_TOPIC", "LEDGER_KAFKA_TOPIC", "bad topic", {}},
      {"LEDGER_KAFKA_TOPIC", "LEDGER_KAFKA_TOPIC", "ledger/events", {}},
      {"LEDGER_KAFKA_TOPIC", "LEDGER_KAFKA_TOPIC", "..", {}},
      {"LEDGER_KAFKA_TOPIC", "LEDGER_KAFKA_TOPIC", std::string(250, 't'), {}},
      {"LEDGER_KAFKA_TOPIC", "", "", {"--kafka-topic", ""}},
      {"LEDGER_KAFKA_MESSAGE_MAX_BYTES", "LEDGER_KAFKA_MESSAGE_MAX_BYTES", "1023", {}},
      {"LEDGER_KAFKA_MESSAGE_MAX_BYTES", "LEDGER_KAFKA_MESSAGE_MAX_BYTES", "16777217", {}},
      {"LEDGER_KAFKA_MESSAGE_MAX_BYTES", "LEDGER_KAFKA_MESSAGE_MAX_BYTES", "1e6", {}},
      {"LEDGER_KAFKA_MESSAGE_MAX_BYTES", "", "", {"--kafka-message-max-bytes", "-5"}},
      {"LEDGER_KAFKA_BROKERS", "", "", {"--kafka-brokers", ""}},
      // Each would start a daemon that is ready and publishes nowhere.
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "None", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "Embedded", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "embeded", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "HTTP://kafka:9092", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "SSL://", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "kafka:", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "kafka:0", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "host:99999", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "a b", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "a b:9092", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "k1:9092,:9092", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "k1:9092,embedded", {}},
      {"LEDGER_KAFKA_BROKERS", "", "", {"--kafka-brokers", "k1:9092\n"}},
      {"LEDGER_DATA_DIR", "", "", {"--data-dir", ""}},
      // An empty variable is not an unset one (a variable that failed to expand).
      {"LEDGER_DATA_DIR", "LEDGER_DATA_DIR", "", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "", {}},
      {"LEDGER_KAFKA_TOPIC", "LEDGER_KAFKA_TOPIC", "", {}},
      {"LEDGER_LISTEN", "LEDGER_LISTEN", "", {}},
      {"LEDGER_ADMIN_ROLE", "LEDGER_ADMIN_ROLE", "", {}},
      // ... above all where it would start a production server in dev mode.
      {"LEDGER_JWT_HS256_SECRET", "LEDGER_JWT_HS256_SECRET", "", {}},
      {"LEDGER_JWT_JWKS_FILE", "LEDGER_JWT_JWKS_FILE", "", {}},
      {"LEDGER_MASTER_KEY_FILE", "LEDGER_MASTER_KEY_FILE", "", {}},
      // ... or one that published to a secured cluster without its credentials, or took no Lago
      // jwt webhook, without a word.
      {"LEDGER_KAFKA_PROPERTIES_FILE", "LEDGER_KAFKA_PROPERTIES_FILE", "", {}},
      {"LEDGER_KAFKA_PROPERTIES_FILE", "", "", {"--kafka-properties-file", ""}},
      {"LAGO_WEBHOOK_PUBLIC_KEY_FILE", "LAGO_WEBHOOK_PUBLIC_KEY_FILE", "", {}},
      {"LAGO_WEBHOOK_PUBLIC_KEY_FILE", "", "", {"--lago-webhook-public-key-file", ""}},
      // An issuer or audience is JWT configuration: without a key source it is not dev mode.
      {"LEDGER_JWT_ISSUER", "LEDGER_JWT_ISSUER", "https://sso.example.com/realms/x", {}},
      {"LEDGER_JWT_AUDIENCE", "LEDGER_JWT_AUDIENCE", "ledgerd", {}},
      // With a key source, an empty issuer or audience turned its check off (a variable that
      // failed to expand, or the flag given one); padded, it answered every request 401.
      {"LEDGER_JWT_ISSUER", "LEDGER_JWT_ISSUER", "", {"--jwt-hs256-secret", kLongSecret}},
      {"LEDGER_JWT_AUDIENCE", "LEDGER_JWT_AUDIENCE", "", {"--jwt-hs256-secret", kLongSecret}},
      {"LEDGER_JWT_ISSUER", "", "", {"--jwt-hs256-secret", kLongSecret, "--jwt-issuer", ""}},
      {"LEDGER_JWT_AUDIENCE", "", "", {"--jwt-hs256-secret", kLongSecret, "--jwt-audience", ""}},
      {"LEDGER_JWT_ISSUER", "LEDGER_JWT_ISSUER", "ledgerd ", {"--jwt-hs256-secret", kLongSecret}},
      {"LEDGER_JWT_AUDIENCE", "", "", {"--jwt-hs256-secret", kLongSecret, "--jwt-audience",
                                       "ledgerd\n"}},
      // ... and so did an empty key source given as a flag: it started in dev mode.
      {"LEDGER_JWT_HS256_SECRET", "", "", {"--jwt-hs256-secret", ""}},
      {"LEDGER_MASTER_KEY_FILE", "", "", {"--master-key-file", ""}},
      {"LEDGER_JWT_HS256_SECRET", "LEDGER_JWT_HS256_SECRET", "too-short", {}},
      {"LEDGER_JWT_HS256_SECRET", "LEDGER_JWT_HS256_SECRET", std::string(31, 's'), {}},
      // Secrets and the role read from a file with its newline: nothing would ever match them.
      {"LEDGER_JWT_HS256_SECRET", "LEDGER_JWT_HS256_SECRET", std::string(32, 's') + "\n", {}},
      {"LEDGER_JWT_HS256_SECRET", "LEDGER_JWT_HS256_SECRET", " " + std::string(32, 's'), {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gw=0123456789abcdef01\n", {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gw=0123456789 abcdef01", {}},
      {"LEDGER_ADMIN_ROLE", "LEDGER_ADMIN_ROLE", "admin\n", {}},
      {"LEDGER_ADMIN_ROLE", "", "", {"--admin-role", "admin "}},
      {"LEDGER_JWT_JWKS_FILE", "LEDGER_JWT_JWKS_FILE", missing, {}},
      {"LEDGER_ADMIN_ROLE", "", "", {"--admin-role", ""}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gateway", {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "=0123456789abcdef01", {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gateway=", {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gateway=short", {}},
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "gw=0123456789abcdef01,gw=0123456789abcdef02",
       {}},
      // One token for two names: every call would be made as the last of them.
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "gateway=0123456789abcdef01,litellm=0123456789abcdef01",
       {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gateway= short ", {}},
      // The server percent-decodes header values: `tok%2Bxyz...` arrives as `tok+xyz...` and
      // never matches (a 401 for every call of that service).
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "gw=tok%2Bxyz0123456789", {}},
      {"LEDGER_SERVICE_TOKENS", "", "", {"--service-tokens", "gw=0123456789abcdef%"}},
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "gw=0123456789abcdef02,litellm=%41bcdef0123456789",
       {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "sk_live_abc", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_good,not-whsec", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_", {}},
      // A secret read from a file with its newline.
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abc\n", {}},
      {"LAGO_API_KEY", "LAGO_API_KEY", "lago-key\n", {"--lago-api-url", "http://lago:3000"}},
      {"LAGO_WEBHOOK_HMAC_KEY", "LAGO_WEBHOOK_HMAC_KEY", "hmac key", {}},
      {"STRIPE_SECRET_KEY", "STRIPE_SECRET_KEY", "sk_test_abc\n", {}},
      {"STRIPE_SECRET_KEY", "STRIPE_SECRET_KEY", "sk_test abc", {}},
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "api.stripe.com", {}},
      {"STRIPE_API_VERSION", "STRIPE_API_VERSION", "latest", {}},
      {"STRIPE_API_VERSION", "STRIPE_API_VERSION", "2025-03-31 basil", {}},
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "ftp://api.stripe.com", {}},
      // Refused before the start-up line would log the password.
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "https://svc:p4ss@stripe-egress.internal", {}},
      {"LAGO_API_URL", "LAGO_API_URL", "http://u:pw@lago:3000", {}},
      {"STRIPE_SUCCESS_URL", "STRIPE_SUCCESS_URL", "javascript:alert(1)", {}},
      {"STRIPE_CANCEL_URL", "STRIPE_CANCEL_URL", "/relative", {}},
      {"STRIPE_PORTAL_RETURN_URL", "STRIPE_PORTAL_RETURN_URL", "app.example.com", {}},
      // Passed the prefix check, started, and every checkout or portal session was a 502 (Stripe
      // refused the URL): a file's newline, no host, a blank, a control character.
      {"STRIPE_SUCCESS_URL", "STRIPE_SUCCESS_URL", "https://app.example.com/ok\n", {}},
      {"STRIPE_SUCCESS_URL", "STRIPE_SUCCESS_URL", "https://", {}},
      {"STRIPE_SUCCESS_URL", "", "", {"--stripe-success-url", "https://:443/ok"}},
      {"STRIPE_SUCCESS_URL", "STRIPE_SUCCESS_URL", "https://a.example/ok?session={ID} x", {}},
      {"STRIPE_CANCEL_URL", "STRIPE_CANCEL_URL", "https://a.example/a b", {}},
      {"STRIPE_CANCEL_URL", "STRIPE_CANCEL_URL", "https:///cancel", {}},
      {"STRIPE_CANCEL_URL", "STRIPE_CANCEL_URL", "https://a.example\t/cancel", {}},
      {"STRIPE_PORTAL_RETURN_URL", "STRIPE_PORTAL_RETURN_URL", "http://?x=1", {}},
      {"STRIPE_PORTAL_RETURN_URL", "STRIPE_PORTAL_RETURN_URL", "https://u:pw@a.example/", {}},
      {"STRIPE_PORTAL_RETURN_URL", "", "", {"--stripe-portal-return-url", " https://a.example"}},
      // The same newline in an outside API's base URL: every call failed.
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "https://api.stripe.com\n", {}},
      {"LAGO_API_URL", "LAGO_API_URL", "http://lago:3000\r", {}},
      {"LAGO_WEBHOOK_PUBLIC_KEY_FILE", "LAGO_WEBHOOK_PUBLIC_KEY_FILE", missing, {}},
      {"LEDGER_LOG_LEVEL", "LEDGER_LOG_LEVEL", "loud", {}},
      {"LEDGER_LOG_LEVEL", "", "", {"--log-level", "INFO "}},
      {"LEDGER_HTTP_THREADS", "LEDGER_HTTP_THREADS", "100000", {}},
      {"LEDGER_HTTP_THREADS", "LEDGER_HTTP_THREADS", "many", {}},
      {"LEDGER_HTTP_THREADS", "", "", {"--http-threads=-3"}},
      {"LEDGER_SYNC_INTERVAL_MIN_US", "LEDGER_SYNC_INTERVAL_MIN_US", "100001", {}},
      {"LEDGER_SYNC_INTERVAL_MIN_US", "LEDGER_SYNC_INTERVAL_MIN_US", "soon", {}},
      {"LEDGER_SYNC_INTERVAL_MIN_US", "", "", {"--sync-interval-min-us=-1"}},
      {"LEDGER_CORE_DUMPS", "LEDGER_CORE_DUMPS", "yes", {}},
      {"LEDGER_CORE_DUMPS", "LEDGER_CORE_DUMPS", "ON", {}},
      {"LEDGER_CORE_DUMPS", "", "", {"--core-dumps", ""}},
      // strtoll's base 0 would read these as 64 and 1000.
      {"LEDGER_SYNC_INTERVAL_MIN_US", "LEDGER_SYNC_INTERVAL_MIN_US", "0100", {}},
      {"LEDGER_SYNC_INTERVAL_MIN_US", "LEDGER_SYNC_INTERVAL_MIN_US", "0x3e8", {}},
      {"LEDGER_HTTP_THREADS", "", "", {"--http-threads", "0x10"}},
      {"LEDGER_BYOK_BASE_URLS", "LEDGER_BYOK_BASE_URLS", "mistral=http://127.0.0.1:1", {}},
      {"LEDGER_BYOK_BASE_URLS", "LEDGER_BYOK_BASE_URLS", "openai=ftp://x", {}},
      {"LEDGER_BYOK_BASE_URLS", "", "", {"--byok-base-urls", "openai"}},
      // Secrets in the wrong place of a setting: the error names the setting and the item's
      // place, and repeats none of it (main() prints it). A bare base64 token reads as name
      // `Q2hh...Mg` and token `=`; a swapped item's name is the token; a Kafka broker or a BYOK
      // entry with credentials in it.
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "Q2hhbmdlTWU0MjQyNDI0Mg==", {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "0123456789abcdef01=gateway", {}},
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "gw=0123456789abcdef02,0123456789abcdef01=gateway",
       {}},
      {"LEDGER_SERVICE_TOKENS", "LEDGER_SERVICE_TOKENS", "0123456789abcdef01=gw 1234567890abc", {}},
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "0123456789abcdef01=gw0123456789abcdef,0123456789abcdef01=gw0123456789abcdeX",
       {}},
      {"LEDGER_SERVICE_TOKENS",
       "LEDGER_SERVICE_TOKENS",
       "0123456789abcdef01=gw0123456789abcdef,0123456789abcdef0X=gw0123456789abcdef",
       {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "SASL_SSL://alice:s3cret@b1:9093", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "b0:9092,alice:s3cret@b1:9093", {}},
      {"LEDGER_KAFKA_BROKERS", "LEDGER_KAFKA_BROKERS", "alice:s3cret@SASL_SSL://b1:9093", {}},
      {"LEDGER_BYOK_BASE_URLS", "LEDGER_BYOK_BASE_URLS", "https://svc:tok@proxy.internal", {}},
      // An empty flag written with '=': CLI11 failed "1 required TEXT missing" (64), or took the
      // next argument for its value.
      {"LEDGER_DATA_DIR", "", "", {"--data-dir="}},
      {"LEDGER_DATA_DIR", "", "", {"--data-dir=", "--listen", "127.0.0.1:0"}},
      {"LEDGER_JWT_HS256_SECRET", "", "", {"--jwt-hs256-secret="}},
      {"LEDGER_KAFKA_BROKERS", "", "", {"--kafka-brokers="}},
      {"LEDGER_MASTER_KEY_FILE", "", "", {"--master-key-file="}},
      // A port outside 1..65535 in a base or page URL: every call failed.
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "http://x:99999", {}},
      {"STRIPE_API_BASE", "STRIPE_API_BASE", "https://api.stripe.com:0", {}},
      {"STRIPE_API_BASE", "", "", {"--stripe-api-base", "https://api.stripe.com:/v1"}},
      {"LAGO_API_URL", "LAGO_API_URL", "http://[::1]:70000", {}},
      {"STRIPE_SUCCESS_URL", "STRIPE_SUCCESS_URL", "https://app.example:99999/ok", {}},
      {"LEDGER_BYOK_BASE_URLS", "LEDGER_BYOK_BASE_URLS", "openai=http://127.0.0.1:99999", {}},
      // An empty item, or one provider twice: a secret or URL that failed to arrive, or two
      // base URLs of which the last won without a word.
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abc,", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abc,,whsec_def", {}},
      {"STRIPE_WEBHOOK_SECRET", "", "", {"--stripe-webhook-secret", ",whsec_abc"}},
      // A mode prefix other than live: / test:, or nothing after it; one secret of two modes.
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abc,prod:whsec_def", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "Test:whsec_abcdef", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abc,test:", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "live:whsec_", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "test: whsec_abcdef", {}},
      {"STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET", "whsec_abcdef,test:whsec_abcdef", {}},
      {"LEDGER_BYOK_BASE_URLS", "LEDGER_BYOK_BASE_URLS", "openai=http://127.0.0.1:1,", {}},
      {"LEDGER_BYOK_BASE_URLS",
       "LEDGER_BYOK_BASE_URLS",
       "openai=http://127.0.0.1:1,openai=https://svc:tok@proxy.internal",
       {}},
      {"LEDGER_BYOK_BASE_URLS",
       "LEDGER_BYOK_BASE_URLS",
       "openai=http://127.0.0.1:1,https://svc:tok@proxy.internal=x",
       {}},
      // The previous master keys: set but empty, an empty item, a file twice, or the current
      // key's own file (the key meant to be listed left out).
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES", "LEDGER_MASTER_KEY_PREVIOUS_FILES", "", {}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES", "", "", {"--master-key-previous-files", ""}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES", "", "", {"--master-key-previous-files="}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES", "LEDGER_MASTER_KEY_PREVIOUS_FILES", "/k/old.key,", {}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "/k/a.key, ,/k/b.key",
       {}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "/k/a.key,/k/b.key,/k/./a.key",
       {}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "/k/old.key,/k/master.key",
       {"--master-key-file", "/k/master.key"}},
      {"LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "LEDGER_MASTER_KEY_PREVIOUS_FILES",
       "/srv/data/master.key",
       {"--data-dir", "/srv/data"}},
  };
}

TEST(ConfigTest, EveryBadSettingExits78NamingIt) {
  TempDir dir;
  for (const BadSetting& bad : BadSettings(dir)) {
    SCOPED_TRACE(bad.setting + " env=" + bad.env + " value='" + bad.value + "'");
    ScopedCleanEnvironment env;
    if (!bad.env.empty()) env.Set(bad.env, bad.value);
    Config config;
    ParseResult r = Parse(bad.args, &config);
    EXPECT_FALSE(r.status.ok());
    EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
    EXPECT_NE(r.status.message().find(bad.setting), std::string::npos) << r.status.message();
    // Once ("LEDGER_BYOK_BASE_URLS: LEDGER_BYOK_BASE_URLS: entry 2 ...").
    const std::string named = bad.setting + ": ";
    const std::string& message = r.status.message();
    EXPECT_EQ(message.find(named), message.rfind(named)) << message;
    // An error names the setting, never a secret's value.
    static const std::set<std::string> kSecrets = {
        "LEDGER_JWT_HS256_SECRET", "LEDGER_SERVICE_TOKENS", "STRIPE_SECRET_KEY",
        "STRIPE_WEBHOOK_SECRET",   "LAGO_API_KEY",          "LAGO_WEBHOOK_HMAC_KEY"};
    if (kSecrets.count(bad.setting) != 0 && bad.value.size() >= 8) {
      EXPECT_EQ(r.status.message().find(bad.value), std::string::npos) << r.status.message();
    }
    // Nor a secret put where a name, a host or a provider goes.
    for (const char* secret :
         {"Q2hhbmdlTWU0MjQyNDI0Mg", "0123456789abcdef01", "s3cret", "svc:tok"}) {
      EXPECT_EQ(r.status.message().find(secret), std::string::npos) << r.status.message();
    }
  }
}

// LEDGER_JWT_ISSUER / LEDGER_JWT_AUDIENCE beside a key source: set but empty (the variable, or
// the flag given one) turned the iss / aud check off; a blank at either end or a control
// character (a file's newline) answered every request 401. Exit 78 naming the setting, never
// the value.
// What Stripe takes as a page URL is taken: a query it fills in, a fragment, a port, a path.
TEST(ConfigTest, StripePageUrlsKeepTheirQueryAndFragment) {
  ScopedCleanEnvironment env;
  env.Set("STRIPE_SUCCESS_URL",
          "https://app.example.com/billing/ok?session_id={CHECKOUT_SESSION_ID}&plan=pro");
  env.Set("STRIPE_CANCEL_URL", "http://localhost:3000/#/billing");
  env.Set("STRIPE_PORTAL_RETURN_URL", "https://[::1]:8443/account/");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.stripe_success_url,
            "https://app.example.com/billing/ok?session_id={CHECKOUT_SESSION_ID}&plan=pro");
  EXPECT_EQ(config.stripe_cancel_url, "http://localhost:3000/#/billing");
  EXPECT_EQ(config.stripe_portal_return_url, "https://[::1]:8443/account/");
}

TEST(ConfigTest, JwtIssuerAndAudienceAreNeverEmptyOrPadded) {
  struct Case {
    const char* setting;
    const char* flag;
    std::string value;
    bool as_flag;
  };
  const std::vector<Case> cases = {
      {"LEDGER_JWT_ISSUER", "--jwt-issuer", "", false},
      {"LEDGER_JWT_ISSUER", "--jwt-issuer", "", true},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "", false},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "", true},
      {"LEDGER_JWT_ISSUER", "--jwt-issuer", "https://sso.example/realms/x ", false},
      {"LEDGER_JWT_ISSUER", "--jwt-issuer", " https://sso.example/realms/x", true},
      {"LEDGER_JWT_ISSUER", "--jwt-issuer", "https://sso.example/realms/x\n", false},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "billing-api ", false},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "billing-api\n", true},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "\tbilling-api", false},
      {"LEDGER_JWT_AUDIENCE", "--jwt-audience", "billing-api\r", false},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.setting) + (c.as_flag ? " flag" : " env") + " '" + c.value + "'");
    ScopedCleanEnvironment env;
    env.Set("LEDGER_JWT_HS256_SECRET", kLongSecret);
    std::vector<std::string> args;
    if (c.as_flag) {
      args = {c.flag, c.value};
    } else {
      env.Set(c.setting, c.value);
    }
    Config config;
    ParseResult r = Parse(args, &config);
    EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
    EXPECT_NE(r.status.message().find(c.setting), std::string::npos) << r.status.message();
    for (const char* value : {"sso.example", "billing-api"}) {
      EXPECT_EQ(r.status.message().find(value), std::string::npos) << r.status.message();
    }
  }
  // Blanks inside are the identity provider's choice; both as given.
  ScopedCleanEnvironment env;
  env.Set("LEDGER_JWT_HS256_SECRET", kLongSecret);
  Config config;
  ParseResult r =
      Parse({"--jwt-issuer", "https://sso.example/realms/x", "--jwt-audience", "billing api"},
            &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.jwt_issuer, "https://sso.example/realms/x");
  EXPECT_EQ(config.jwt_audience, "billing api");
}

// A service token holding '%' never authenticates (cpp-httplib 0.11.4 percent-decodes the
// Authorization header): refused at start by its item's place, the token not repeated.
TEST(ConfigTest, AServiceTokenWithAPercentSignIsRefusedByItsPlace) {
  ScopedCleanEnvironment env;
  env.Set("LEDGER_SERVICE_TOKENS", "gw=0123456789abcdef02, litellm=tok%2Bxyz0123456789");
  Config config;
  ParseResult r = Parse({}, &config);
  EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
  const std::string message = r.status.message();
  EXPECT_NE(message.find("LEDGER_SERVICE_TOKENS"), std::string::npos) << message;
  EXPECT_NE(message.find("item 2"), std::string::npos) << message;
  EXPECT_NE(message.find("'%'"), std::string::npos) << message;
  EXPECT_EQ(message.find("xyz0123456789"), std::string::npos) << message;
  EXPECT_EQ(message.find("litellm"), std::string::npos) << message;
}

TEST(ConfigTest, KafkaPropertiesComeFromAFile) {
  ScopedCleanEnvironment env;
  TempDir dir;
  WriteTextFile(dir.Sub("kafka.properties"),
                "# Confluent Cloud\n\nsecurity.protocol = SASL_SSL\r\nsasl.mechanisms=PLAIN\n"
                "sasl.username=KEY\nsasl.password=pa=ss word\n");
  ::chmod(dir.Sub("kafka.properties").c_str(), 0600);
  env.Set("LEDGER_KAFKA_PROPERTIES_FILE", dir.Sub("kafka.properties"));
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.kafka_properties,
            (std::map<std::string, std::string>{{"security.protocol", "SASL_SSL"},
                                                {"sasl.mechanisms", "PLAIN"},
                                                {"sasl.username", "KEY"},
                                                {"sasl.password", "pa=ss word"}}));
  EXPECT_EQ(config.Describe().find("pa=ss"), std::string::npos) << config.Describe();
  // What the outbox's guarantees rest on cannot be overridden; a line that is not a property is
  // refused; neither error repeats a value.
  for (const std::string& bad : {std::string("acks=1\n"), std::string("enable.idempotence=false\n"),
                                 std::string("bootstrap.servers=x:9092\n"),
                                 std::string("message.max.bytes=1000000\n"),
                                 std::string("sasl.password secret-value\n")}) {
    WriteTextFile(dir.Sub("bad.properties"), bad);
    ScopedCleanEnvironment inner;
    inner.Set("LEDGER_KAFKA_PROPERTIES_FILE", dir.Sub("bad.properties"));
    Config refused;
    ParseResult b = Parse({}, &refused);
    EXPECT_EQ(b.exit_code, kExitConfig) << bad << b.status.ToString();
    EXPECT_NE(b.status.message().find("LEDGER_KAFKA_PROPERTIES_FILE"), std::string::npos);
    EXPECT_EQ(b.status.message().find("secret-value"), std::string::npos) << b.status.message();
  }
  // A property librdkafka does not know, or a value it refuses, fails here (before the data
  // directory is touched), not when the outbox starts; named by its line and property, never
  // its value (librdkafka's own message repeats it).
  for (const auto& [bad, property] :
       {std::pair{std::string("# x\nnonexistent.prop=secret-value\n"), "nonexistent.prop"},
        std::pair{std::string("# x\nsecurity.protocol=secret-value\n"), "security.protocol"},
        std::pair{std::string("# x\nlinger.ms=secret-value\n"), "linger.ms"}}) {
    WriteTextFile(dir.Sub("bad.properties"), bad);
    ScopedCleanEnvironment inner;
    inner.Set("LEDGER_KAFKA_PROPERTIES_FILE", dir.Sub("bad.properties"));
    Config refused;
    ParseResult b = Parse({}, &refused);
    EXPECT_EQ(b.exit_code, kExitConfig) << bad << b.status.ToString();
    EXPECT_NE(b.status.message().find("LEDGER_KAFKA_PROPERTIES_FILE"), std::string::npos);
    EXPECT_NE(b.status.message().find("line 2"), std::string::npos) << b.status.message();
    EXPECT_NE(b.status.message().find(property), std::string::npos) << b.status.message();
    EXPECT_EQ(b.status.message().find("secret-value"), std::string::npos) << b.status.message();
  }
}

// A properties file that sets a password or a secret is its owner's alone, as the master key and
// the dev secret are: one readable by group or others is refused naming the file and its mode,
// never the value. A file without one may stay readable.
TEST(ConfigTest, AKafkaPropertiesFileWithASecretMustBeReadableByItsOwnerOnly) {
  TempDir dir;
  const std::string file = dir.Sub("kafka.properties");
  for (const std::string property :
       {"sasl.password", "ssl.key.password", "ssl.keystore.password"}) {
    WriteTextFile(file, "# x\n" + property + "=secret-value\n");
    ::chmod(file.c_str(), 0644);
    ScopedCleanEnvironment env;
    env.Set("LEDGER_KAFKA_PROPERTIES_FILE", file);
    Config refused;
    ParseResult r = Parse({}, &refused);
    EXPECT_EQ(r.exit_code, kExitConfig) << property << " " << r.status.ToString();
    const std::string message = r.status.message();
    EXPECT_NE(message.find("LEDGER_KAFKA_PROPERTIES_FILE"), std::string::npos) << message;
    EXPECT_NE(message.find(file), std::string::npos) << message;
    EXPECT_NE(message.find("0644"), std::string::npos) << message;
    EXPECT_NE(message.find(property), std::string::npos) << message;
    EXPECT_EQ(message.find("secret-value"), std::string::npos) << message;

    ::chmod(file.c_str(), 0600);
    Config config;
    ParseResult ok = Parse({}, &config);
    EXPECT_TRUE(ok.status.ok()) << property << " " << ok.status.ToString();
  }
  WriteTextFile(file, "client.id=ledgerd\nsasl.username=KEY\n");
  ::chmod(file.c_str(), 0644);
  ScopedCleanEnvironment env;
  env.Set("LEDGER_KAFKA_PROPERTIES_FILE", file);
  Config config;
  ParseResult r = Parse({}, &config);
  EXPECT_TRUE(r.status.ok()) << r.status.ToString();
}

// The files read at start are read up to a bound, never whole: a path naming /dev/zero, or a
// runaway file without a newline, grew memory until the OOM killer came.
TEST(ConfigTest, FilesReadAtStartAreBounded) {
  TempDir dir;
  const std::string big = dir.Sub("big");
  WriteTextFile(big, std::string(1 << 20, 'a'));  // 1 MiB, no newline
  std::filesystem::permissions(big, std::filesystem::perms::owner_read |
                                        std::filesystem::perms::owner_write);
  {
    ScopedCleanEnvironment env;
    env.Set("LEDGER_KAFKA_PROPERTIES_FILE", big);
    Config config;
    ParseResult r = Parse({}, &config);
    EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
    EXPECT_NE(r.status.message().find("too large"), std::string::npos) << r.status.ToString();
  }
  std::string key;
  bool found = false;
  Status s = daemon::LoadOrCreateMasterKey(big, /*create=*/false, /*required=*/true, &key, &found);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("too large"), std::string::npos) << s.ToString();
  std::string secret;
  s = daemon::ReadDevSecretFile(big, &secret);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("too large"), std::string::npos) << s.ToString();
  // A secret and its line end (CR LF too) are still read as the first line.
  const std::string hex(64, 'b');
  WriteTextFile(big, hex + "\r\n");
  ASSERT_TRUE(daemon::ReadDevSecretFile(big, &secret).ok());
  EXPECT_EQ(secret, hex);
}

// STRIPE_API_VERSION set but empty was taken for unset (the pinned version was sent) while the
// flag given empty meant the account's default: both mean the account's default now.
TEST(ConfigTest, AnEmptyStripeApiVersionIsTheAccountsDefaultAsVariableOrFlag) {
  for (const auto& [variable, args] :
       {std::pair{true, std::vector<std::string>{}},
        std::pair{false, std::vector<std::string>{"--stripe-api-version", ""}},
        std::pair{false, std::vector<std::string>{"--stripe-api-version="}}}) {
    SCOPED_TRACE(variable ? "STRIPE_API_VERSION=" : args[0]);
    ScopedCleanEnvironment env;
    if (variable) env.Set("STRIPE_API_VERSION", "");
    Config config;
    ParseResult r = Parse(args, &config);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(config.stripe_api_version, "");
  }
  ScopedCleanEnvironment env;
  env.Set("STRIPE_API_VERSION", "");
  Config config;
  ParseResult r = Parse({"--stripe-api-version", "2024-06-20"}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.stripe_api_version, "2024-06-20") << "the flag wins";
}

TEST(ConfigTest, ByokBaseUrlsArePerProvider) {
  ScopedCleanEnvironment env;
  env.Set("LEDGER_BYOK_BASE_URLS", "openai=http://127.0.0.1:7001,anthropic=https://a.example");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.byok_base_urls.size(), 2u);
  EXPECT_EQ(config.byok_base_urls["openai"], "http://127.0.0.1:7001");
}

TEST(ConfigTest, MasterKeyIsCreatedPrivateInDevAndRefusedWhenOthersCanReadIt) {
  TempDir dir;
  const std::string path = dir.path() + "/keys/master.key";
  std::string key, again;
  bool found = true;
  ASSERT_TRUE(daemon::LoadOrCreateMasterKey(path, /*create=*/false, /*required=*/false, &key,
                                            &found)
                  .ok());
  EXPECT_FALSE(found);  // outside dev mode a missing key is not made up
  EXPECT_FALSE(std::filesystem::exists(path));
  // LEDGER_MASTER_KEY_FILE set to a missing file (a secret mount that failed): exit 78.
  Status missing = daemon::LoadOrCreateMasterKey(path, false, /*required=*/true, &key, &found);
  EXPECT_EQ(daemon::ExitCodeFor(missing), kExitConfig) << missing.ToString();
  EXPECT_NE(missing.message().find("LEDGER_MASTER_KEY_FILE"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(path));
  // Named explicitly it is not created in dev mode either (it made /nonexistent/ and a new key).
  missing = daemon::LoadOrCreateMasterKey(path, /*create=*/true, /*required=*/true, &key, &found);
  EXPECT_EQ(daemon::ExitCodeFor(missing), kExitConfig) << missing.ToString();
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/keys"));
  ASSERT_TRUE(daemon::LoadOrCreateMasterKey(path, /*create=*/true, /*required=*/false, &key,
                                            &found)
                  .ok());
  EXPECT_TRUE(found);
  EXPECT_EQ(key.size(), 32u);
  EXPECT_EQ(std::filesystem::status(path).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  ASSERT_TRUE(daemon::LoadOrCreateMasterKey(path, /*create=*/false, true, &again, &found).ok());
  EXPECT_EQ(again, key);  // the same key on the next start

  std::filesystem::permissions(path, std::filesystem::perms::group_read,
                               std::filesystem::perm_options::add);
  Status s = daemon::LoadOrCreateMasterKey(path, false, true, &again, &found);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_MASTER_KEY_FILE"), std::string::npos);

  std::filesystem::permissions(path, std::filesystem::perms::group_read,
                               std::filesystem::perm_options::remove);
  { std::ofstream(path) << "not-hex\n"; }
  s = daemon::LoadOrCreateMasterKey(path, false, true, &again, &found);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
}

TEST(ConfigTest, PreviousMasterKeyFilesAreAListOfPaths) {
  ScopedCleanEnvironment env;
  env.Set("LEDGER_MASTER_KEY_PREVIOUS_FILES", " /k/2025.key ,/k/2024.key");
  Config config;
  ParseResult r = Parse({}, &config);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.master_key_previous_files,
            (std::vector<std::string>{"/k/2025.key", "/k/2024.key"}));
  r = Parse({"--master-key-previous-files", "/k/flag.key"}, &(config = Config()));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(config.master_key_previous_files, std::vector<std::string>{"/k/flag.key"});
  env.Set("LEDGER_MASTER_KEY_PREVIOUS_FILES", "/k/x.key,/k/x.key");
  r = Parse({}, &(config = Config()));
  EXPECT_EQ(r.exit_code, kExitConfig);
  EXPECT_NE(r.status.message().find("item 2 (/k/x.key) names the file of item 1 again"),
            std::string::npos)
      << r.status.message();
}

// Each previous key's file is read as the master key's is, and its errors (exit 78) name the
// item by its place and path: missing, readable by others, not 64 hex digits, the current key,
// another item's key. The key itself is never in a message.
TEST(ConfigTest, PreviousMasterKeysAreReadAsTheMasterKeyIs) {
  TempDir dir;
  const std::string current(32, '\x11');
  const std::string current_hex(64, '1');
  const std::string old_hex = "2f" + std::string(62, 'a');
  const std::string other_hex = "3e" + std::string(62, 'b');
  auto write_key = [&](const std::string& name, const std::string& hex) {
    const std::string path = dir.path() + "/" + name;
    WriteTextFile(path, hex + "\n");
    std::filesystem::permissions(path, std::filesystem::perms::owner_read |
                                           std::filesystem::perms::owner_write);
    return path;
  };
  const std::string old_key = write_key("old.key", old_hex);
  const std::string other_key = write_key("other.key", other_hex);
  std::vector<std::string> keys;
  ASSERT_TRUE(daemon::LoadPreviousMasterKeys({old_key, other_key}, current, &keys).ok());
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(HexEncode(keys[0]), old_hex);
  EXPECT_EQ(HexEncode(keys[1]), other_hex);

  const std::string open_key = write_key("open.key", other_hex);
  std::filesystem::permissions(open_key, std::filesystem::perms::others_read,
                               std::filesystem::perm_options::add);
  const std::string bad_hex = write_key("bad.key", "not-hex");
  const std::string same_as_current = write_key("current-copy.key", current_hex);
  const std::string copy_of_old = write_key("old-copy.key", old_hex);
  struct Case {
    std::vector<std::string> paths;
    std::string named;
  };
  const std::vector<Case> cases = {
      {{old_key, dir.path() + "/missing.key"}, "item 2: no file at " + dir.path() + "/missing.key"},
      {{open_key}, "item 1: " + open_key + " is readable by group or others"},
      {{old_key, bad_hex}, "item 2: " + bad_hex + " must hold 64 hex digits"},
      {{same_as_current}, "item 1: " + same_as_current + " holds the current key"},
      {{old_key, other_key, copy_of_old}, "item 3: " + copy_of_old + " holds the key of item 1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.named);
    keys = {"left over"};
    Status s = daemon::LoadPreviousMasterKeys(c.paths, current, &keys);
    EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
    EXPECT_NE(s.message().find("LEDGER_MASTER_KEY_PREVIOUS_FILES: " + c.named), std::string::npos)
        << s.message();
    EXPECT_TRUE(keys.empty());
    for (const std::string& hex : {current_hex, old_hex, other_hex}) {
      EXPECT_EQ(s.message().find(hex), std::string::npos) << s.message();
    }
  }
}

// A key pasted where its file's path belongs (`LEDGER_MASTER_KEY_FILE=$(cat master.key)`) is not
// echoed by the message that says there is no such file: it would go to stderr and the journal.
TEST(ConfigTest, AKeyGivenAsAKeyFilePathIsNotRepeated) {
  const std::string pasted = "7c" + std::string(62, 'd');
  std::string key;
  bool found = false;
  Status s = daemon::LoadOrCreateMasterKey(pasted, /*create=*/false, /*required=*/true, &key,
                                           &found);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_MASTER_KEY_FILE: no file at <64 hex digits, not shown"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(s.message().find(pasted), std::string::npos) << s.message();

  std::vector<std::string> keys;
  s = daemon::LoadPreviousMasterKeys({pasted}, std::string(32, '\x11'), &keys);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_EQ(s.message().find(pasted), std::string::npos) << s.message();

  ScopedCleanEnvironment env;
  env.Set("LEDGER_MASTER_KEY_PREVIOUS_FILES", pasted + "," + pasted);
  Config config;
  ParseResult r = Parse({}, &config);
  EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
  EXPECT_NE(r.status.message().find("names the file of item 1 again"), std::string::npos)
      << r.status.message();
  EXPECT_EQ(r.status.message().find(pasted), std::string::npos) << r.status.message();
  // A path is shown as it is.
  s = daemon::LoadOrCreateMasterKey("/nonexistent/master.key", false, true, &key, &found);
  EXPECT_NE(s.message().find("no file at /nonexistent/master.key"), std::string::npos)
      << s.message();
}

TEST(ConfigTest, AJwksPathThatIsADirectoryIsRejected) {
  ScopedCleanEnvironment env;
  TempDir dir;
  env.Set("LEDGER_JWT_JWKS_FILE", dir.path());
  Config config;
  ParseResult r = Parse({}, &config);
  EXPECT_EQ(r.exit_code, kExitConfig) << r.status.ToString();
  EXPECT_NE(r.status.message().find("LEDGER_JWT_JWKS_FILE"), std::string::npos)
      << r.status.message();
}

TEST(ConfigTest, BadUsageExits64) {
  const std::vector<std::vector<std::string>> cases = {
      {"--no-such-flag"},
      {"--listen"},  // missing value
      {"positional"},
      {"--data-dir", "a", "--data-dir", "b"},
  };
  for (const auto& args : cases) {
    SCOPED_TRACE(args.front());
    ScopedCleanEnvironment env;
    Config config;
    ParseResult r = Parse(args, &config);
    EXPECT_FALSE(r.status.ok());
    EXPECT_EQ(r.exit_code, kExitUsage) << r.status.ToString();
    EXPECT_FALSE(r.exit_now);
  }
}

// A mistyped flag's argument is its value: CLI11's ExtrasError printed "The following arguments
// were not expected: sk_live_... --stripe-secrt-key" (main() prints the message). Usage errors
// name the unknown options, never an argument that is not one.
TEST(ConfigTest, UsageErrorsNameUnknownOptionsNeverValues) {
  // Shaped as a live key (put together here, so that no scan of the tree takes it for one).
  const std::string kKey = std::string("sk_") + "live_0123456789abcdef";
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> named;
  };
  const std::vector<Case> cases = {
      {{"--stripe-secrt-key", kKey}, {"--stripe-secrt-key"}},
      {{std::string("--stripe-secrt-key=") + kKey}, {"--stripe-secrt-key"}},
      {{"--data-dir", "/srv/ledger", kKey}, {}},
      {{kKey}, {}},
      {{std::string("-k") + kKey}, {"-k"}},
      {{"--stripe-secret-key", "sk_live_x", "--jwt-secret", kKey, "--x"}, {"--jwt-secret", "--x"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args.front());
    ScopedCleanEnvironment env;
    Config config;
    ParseResult r = Parse(c.args, &config);
    EXPECT_EQ(r.exit_code, kExitUsage) << r.status.ToString();
    EXPECT_FALSE(r.exit_now);
    const std::string message = r.status.message();
    EXPECT_EQ(message.find("sk_live"), std::string::npos) << message;
    EXPECT_EQ(message.find("0123456789abcdef"), std::string::npos) << message;
    EXPECT_EQ(message.find("/srv/ledger"), std::string::npos) << message;
    for (const std::string& name : c.named) {
      EXPECT_NE(message.find(name), std::string::npos) << message;
    }
  }
}

TEST(ConfigTest, HelpAndVersionExitZeroWithOutput) {
  ScopedCleanEnvironment env;
  Config config;
  ParseResult help = Parse({"--help"}, &config);
  EXPECT_TRUE(help.exit_now);
  EXPECT_EQ(help.exit_code, kExitOk);
  EXPECT_NE(help.output.find("--kafka-brokers"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("LEDGER_KAFKA_BROKERS"), std::string::npos) << help.output;
  ParseResult version = Parse({"--version"}, &config);
  EXPECT_TRUE(version.exit_now);
  EXPECT_EQ(version.output.rfind("ledgerd ", 0), 0u) << version.output;
  EXPECT_EQ(version.output.back(), '\n') << "a line of its own on the terminal";
}

}  // namespace
}  // namespace ledger::testing
