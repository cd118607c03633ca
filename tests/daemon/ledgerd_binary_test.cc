// The real ledgerd binary: exit codes (78 bad configuration, 64 bad usage, 74 storage error, 0
// after SIGTERM/SIGINT), dev mode, and that a clean shutdown leaves data that reopens at the same
// chain head.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/http_client.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/wait.h"

namespace ledger::testing {
namespace {

size_t CountOf(const std::string& text, const std::string& needle) {
  size_t count = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

constexpr int kExitUsage = 64;
constexpr int kExitStorage = 74;
constexpr int kExitConfig = 78;

ProcessOutput RunLedgerd(const std::vector<std::string>& args, const EnvList& env = {}) {
  std::vector<std::string> argv = {LedgerdPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, env, std::chrono::seconds(60));
}

// A second ledgerd (dev mode) on `data_dir` while one runs there: exits 74 naming the directory
// in use.
void ExpectASecondLedgerdRefused(const std::string& data_dir) {
  ProcessOutput second = RunLedgerd(
      {"--data-dir", data_dir, "--listen", "127.0.0.1:0", "--kafka-brokers", "none"});
  EXPECT_EQ(second.exit_code, kExitStorage) << second.out << second.err;
  EXPECT_NE((second.out + second.err).find(data_dir + " is in use: another ledgerd"),
            std::string::npos)
      << second.out << second.err;
}

// A production daemon (JWT configured, no dev secret) on `dir`'s data/ and ledgerd.log.
DaemonOptions ProductionOptions(const TempDir& dir) {
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  options.env = {{"LEDGER_JWT_HS256_SECRET", kTestHs256Secret}};
  return options;
}

TEST(LedgerdBinaryTest, BadConfigurationExits78NamingTheSettingBeforeTouchingDisk) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  struct Case {
    EnvList env;
    std::string setting;
  };
  // Files whose contents are wrong: found after parsing, still before the store is touched.
  const std::string open_key = dir.Sub("master.key");
  WriteTextFile(open_key, std::string(64, 'a') + "\n");
  ::chmod(open_key.c_str(), 0644);
  const std::string not_a_key = dir.Sub("lago.pem");
  WriteTextFile(not_a_key, "not a public key\n");
  const std::string bad_jwks = dir.Sub("jwks.json");
  WriteTextFile(bad_jwks, R"({"keys":"x"})");
  const std::string secret(32, 's');
  const std::vector<Case> cases = {
      {{{"LEDGER_JWT_JWKS_FILE", bad_jwks}}, "LEDGER_JWT_JWKS_FILE"},
      {{{"LEDGER_JWT_HS256_SECRET", secret}, {"LEDGER_MASTER_KEY_FILE", open_key}},
       "master.key"},
      {{{"LEDGER_JWT_HS256_SECRET", secret}, {"LAGO_WEBHOOK_PUBLIC_KEY_FILE", not_a_key}},
       "LAGO_WEBHOOK_PUBLIC_KEY_FILE"},
      {{{"LEDGER_LISTEN", "localhost"}}, "LEDGER_LISTEN"},
      {{{"LEDGER_JWT_HS256_SECRET", "short"}}, "LEDGER_JWT_HS256_SECRET"},
      {{{"STRIPE_WEBHOOK_SECRET", "not-whsec"}}, "STRIPE_WEBHOOK_SECRET"},
      {{{"LEDGER_KAFKA_TOPIC", "a topic"}}, "LEDGER_KAFKA_TOPIC"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.setting);
    EnvList env = c.env;
    env.emplace_back("LEDGER_DATA_DIR", data_dir);
    ProcessOutput out = RunLedgerd({}, env);
    EXPECT_EQ(out.exit_code, kExitConfig) << out.out << out.err;
    EXPECT_NE((out.out + out.err).find(c.setting), std::string::npos) << out.out << out.err;
    EXPECT_FALSE(std::filesystem::exists(data_dir)) << "configuration is checked before the store";
  }
}

// Dev mode (no JWT configuration) creates a key only at its default place: `--master-key-file
// /nonexistent/mk` started, creating /nonexistent/ (0755) and a fresh key there, where the file
// named explicitly must exist as it must outside dev mode.
TEST(LedgerdBinaryTest, AMasterKeyFileNamedInDevModeMustExist) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  const std::string missing_dir = dir.Sub("nonexistent");
  for (const bool by_flag : {true, false}) {
    SCOPED_TRACE(by_flag ? "flag" : "environment");
    std::vector<std::string> args = {"--data-dir", data_dir, "--listen", "127.0.0.1:0",
                                     "--kafka-brokers", "none"};
    EnvList env;
    if (by_flag) {
      args.insert(args.end(), {"--master-key-file", missing_dir + "/mk"});
    } else {
      env.emplace_back("LEDGER_MASTER_KEY_FILE", missing_dir + "/mk");
    }
    ProcessOutput out = RunLedgerd(args, env);
    EXPECT_EQ(out.exit_code, kExitConfig) << out.out << out.err;
    EXPECT_NE((out.out + out.err).find("LEDGER_MASTER_KEY_FILE"), std::string::npos)
        << out.out << out.err;
    EXPECT_FALSE(std::filesystem::exists(missing_dir));
    EXPECT_FALSE(std::filesystem::exists(data_dir)) << "refused before the store is touched";
  }
}

TEST(LedgerdBinaryTest, AListenAddressThatCannotBeBoundExits78) {
  TempDir dir;
  // Occupy a port.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t length = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length), 0);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  for (const std::string& listen : {taken, std::string("999.0.0.1:0")}) {
    SCOPED_TRACE(listen);
    ProcessOutput out = RunLedgerd(
        {"--data-dir", dir.Sub("data"), "--listen", listen, "--kafka-brokers", "none"});
    EXPECT_EQ(out.exit_code, kExitConfig) << out.out << out.err;
    EXPECT_NE((out.out + out.err).find("LEDGER_LISTEN"), std::string::npos) << out.out << out.err;
  }
  ::close(fd);
}

TEST(LedgerdBinaryTest, BadUsageExits64AndHelpExits0) {
  ProcessOutput unknown = RunLedgerd({"--no-such-flag"});
  EXPECT_EQ(unknown.exit_code, kExitUsage) << unknown.out << unknown.err;
  EXPECT_NE(unknown.err.find("no-such-flag"), std::string::npos) << unknown.err;
  ProcessOutput help = RunLedgerd({"--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_NE(help.out.find("--data-dir"), std::string::npos) << help.out;
}

TEST(LedgerdBinaryTest, StorageErrorsAtStartupExit74) {
  TempDir dir;
  WriteTextFile(dir.Sub("file"), "a regular file, not a directory");
  ProcessOutput file = RunLedgerd(
      {"--data-dir", dir.Sub("file"), "--listen", "127.0.0.1:0", "--kafka-brokers", "none"});
  EXPECT_EQ(file.exit_code, kExitStorage) << file.out << file.err;

  // A store whose CURRENT file is corrupt.
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  ASSERT_EQ(daemon.Terminate(), 0) << daemon.Log();
  // Dev mode (no JWT configuration) created the BYOK key-encryption key and said so.
  EXPECT_NE(daemon.Log().find("created (dev mode) in " + dir.Sub("data/master.key")),
            std::string::npos)
      << daemon.Log();
  WriteTextFile(dir.Sub("data/CURRENT"), "garbage");
  ProcessOutput corrupt = RunLedgerd(
      {"--data-dir", dir.Sub("data"), "--listen", "127.0.0.1:0", "--kafka-brokers", "none"});
  EXPECT_EQ(corrupt.exit_code, kExitStorage) << corrupt.out << corrupt.err;
  EXPECT_NE((corrupt.out + corrupt.err).find("startup failed"), std::string::npos)
      << corrupt.out << corrupt.err;
  // A damaged store points at the tool that names the damage; an I/O error does not.
  EXPECT_NE((corrupt.out + corrupt.err).find("ledgerctl verify --data-dir"), std::string::npos)
      << corrupt.out << corrupt.err;
  EXPECT_EQ((file.out + file.err).find("ledgerctl verify"), std::string::npos)
      << file.out << file.err;
}

// A second ledgerd on a directory in use: RocksDB refused it (LOCK, exit 74) only after it had
// renamed the running daemon's LOG to LOG.old.<time>. ledgerd's own lock refuses it first, and
// nothing in the directory changes; ledgerctl's read-only opens beside the daemon take no lock.
TEST(LedgerdBinaryTest, ASecondLedgerdOnADirectoryInUseExits74TouchingNothing) {
  TempDir dir;
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  DaemonProcess first(options);
  ASSERT_TRUE(first.Start().ok()) << first.Log();
  // The running daemon's LOG (its inode) and the rotated logs beside it (none yet).
  const std::string log = options.data_dir + "/LOG";
  auto log_inode = [&] {
    struct stat st {};
    return ::stat(log.c_str(), &st) == 0 ? st.st_ino : 0;
  };
  auto rotated_logs = [&] {
    size_t n = 0;
    for (const auto& entry : std::filesystem::directory_iterator(options.data_dir)) {
      n += entry.path().filename().string().starts_with("LOG.old");
    }
    return n;
  };
  const ino_t inode = log_inode();
  ASSERT_NE(inode, 0u);
  const size_t rotated = rotated_logs();

  ExpectASecondLedgerdRefused(options.data_dir);
  EXPECT_EQ(log_inode(), inode) << "the running daemon's LOG was rotated away";
  EXPECT_EQ(rotated_logs(), rotated);

  ProcessOutput verified = RunLedgerctlBinary({"verify", "--data-dir", options.data_dir});
  EXPECT_EQ(verified.exit_code, 0) << verified.out << verified.err;
  ProcessOutput exported = RunLedgerctlBinary({"export", "--data-dir", options.data_dir});
  EXPECT_EQ(exported.exit_code, 0) << exported.err;
  EXPECT_EQ(first.Terminate(), 0) << first.Log();
  // Stopped, the directory is free again.
  DaemonProcess again(options);
  ASSERT_TRUE(again.Start().ok()) << again.Log();
  EXPECT_EQ(again.Terminate(), 0) << again.Log();
}

// A second ledgerd in dev mode (no JWT settings) beside a production one: it created the dev
// secret and the master key at its default place in the directory before the store's lock
// refused it, and the production daemon's next start took that key up (BYOK on, its key inside
// the data directory and its backups). The lock is now taken before any dev-mode file.
TEST(LedgerdBinaryTest, ASecondDevModeLedgerdBesideAProductionOneCreatesNothing) {
  TempDir dir;
  DaemonOptions options = ProductionOptions(dir);
  DaemonProcess first(options);
  ASSERT_TRUE(first.Start().ok()) << first.Log();
  const std::string master_key = options.data_dir + "/master.key";
  const std::string dev_secret = options.data_dir + "/jwt-dev.secret";
  ASSERT_FALSE(std::filesystem::exists(master_key));
  ASSERT_FALSE(std::filesystem::exists(dev_secret));

  ExpectASecondLedgerdRefused(options.data_dir);
  EXPECT_FALSE(std::filesystem::exists(master_key));
  EXPECT_FALSE(std::filesystem::exists(dev_secret));
  EXPECT_EQ(first.Terminate(), 0) << first.Log();

  // The production daemon starts again as it was: no key-encryption key.
  DaemonProcess again(options);
  ASSERT_TRUE(again.Start().ok()) << again.Log();
  EXPECT_NE(again.Log().find("byok: no key-encryption key at"), std::string::npos)
      << again.Log();
  EXPECT_EQ(again.Terminate(), 0) << again.Log();
}

// A property value librdkafka takes alone but its producer refuses (a CA file that is not there)
// failed the start only when the outbox started: the data directory created, the plan catalog
// appended. Refused with the other properties, before the data directory is touched.
TEST(LedgerdBinaryTest, AKafkaPropertyTheProducerRefusesExits78BeforeTheStoreIsCreated) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  const std::string properties = dir.Sub("kafka.properties");
  WriteTextFile(properties,
                "security.protocol=ssl\nssl.ca.location=" + dir.Sub("missing-ca.pem") + "\n");
  ProcessOutput out = RunLedgerd({"--data-dir", data_dir, "--listen", "127.0.0.1:0",
                                  "--kafka-brokers", "127.0.0.1:1", "--kafka-properties-file",
                                  properties},
                                 {{"LEDGER_JWT_HS256_SECRET", kTestHs256Secret}});
  EXPECT_EQ(out.exit_code, kExitConfig) << out.out << out.err;
  EXPECT_NE((out.out + out.err).find("LEDGER_KAFKA_PROPERTIES_FILE"), std::string::npos)
      << out.out << out.err;
  EXPECT_FALSE(std::filesystem::exists(data_dir + "/CURRENT"));
  EXPECT_FALSE(std::filesystem::exists(data_dir)) << "the data directory was touched";
}

struct Head {
  std::string position;
  std::string hash;
};

Head AuditHead(int port, const std::string& token) {
  TestHttpClient client("127.0.0.1", port);
  client.set_bearer(token);
  HttpReply r = client.Get("/api/v1/audit/head");
  EXPECT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  if (!doc.IsObject() || !doc.HasMember("position") || !doc.HasMember("hash")) return {};
  return {std::to_string(doc["position"].GetUint64()), doc["hash"].GetString()};
}

TEST(LedgerdBinaryTest, SigtermExitsZeroAndTheDataReopensAtTheSameHead) {
  TempDir dir;
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  EXPECT_NE(daemon.Log().find("DEV MODE"), std::string::npos) << daemon.Log();

  // Dev mode: a 0600 secret in the data directory.
  const std::string secret_path = options.data_dir + "/jwt-dev.secret";
  struct stat st {};
  ASSERT_EQ(::stat(secret_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string secret = ReadDevSecret(options.data_dir);
  const std::string token = MintAdminToken(secret);

  TestHttpClient client("127.0.0.1", daemon.port());
  client.set_bearer(token);
  HttpReply created = client.Post("/api/v1/subscriptions/plans",
                                  R"({"id":"sigterm","display_name":"Sigterm",)"
                                  R"("price_monthly_cents":500,"api_calls_limit":null,)"
                                  R"("services":["chat"]})");
  ASSERT_EQ(created.status, 201) << created.body;
  const Head before = AuditHead(daemon.port(), token);
  EXPECT_EQ(before.position, created.Header("X-Ledger-Position"));

  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  EXPECT_NE(daemon.Log().find("stopped cleanly"), std::string::npos) << daemon.Log();

  // Restart: same head and hash, same secret (tokens minted before still work), plan present.
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  EXPECT_EQ(ReadDevSecret(options.data_dir), secret);
  const Head after = AuditHead(daemon.port(), token);
  EXPECT_EQ(after.position, before.position);
  EXPECT_EQ(after.hash, before.hash);
  TestHttpClient again("127.0.0.1", daemon.port());
  EXPECT_EQ(again.Get("/api/v1/subscriptions/plans/sigterm").status, 200);
  EXPECT_EQ(daemon.Log().find("plan catalog seeded"), std::string::npos)
      << "the catalog must be seeded only once";

  // SIGINT is a clean shutdown too.
  EXPECT_EQ(daemon.Terminate(std::chrono::seconds(60), SIGINT), 0) << daemon.Log();
  ProcessOutput verify = RunLedgerctlBinary({"verify", "--data-dir", options.data_dir});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// A data directory the operator created world-readable (0755) holds only files of ledgerd's user
// alone: RocksDB created its logs, table files and MANIFEST 0644 there.
TEST(LedgerdBinaryTest, FilesInAnOperatorsDataDirectoryAreTheUsersAlone) {
  TempDir dir;
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  ASSERT_TRUE(std::filesystem::create_directory(options.data_dir));
  ASSERT_EQ(::chmod(options.data_dir.c_str(), 0755), 0);
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  TestHttpClient client("127.0.0.1", daemon.port());
  client.set_bearer(MintAdminToken(ReadDevSecret(options.data_dir)));
  ASSERT_EQ(client.Post("/api/v1/subscriptions/plans",
                        R"({"id":"private","display_name":"Private",)"
                        R"("price_monthly_cents":500,"api_calls_limit":null,)"
                        R"("services":["chat"]})")
                .status,
            201);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();  // a clean stop flushes: table files too
  size_t files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(options.data_dir)) {
    if (!entry.is_regular_file()) continue;
    ++files;
    struct stat st {};
    ASSERT_EQ(::stat(entry.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << entry.path() << " mode " << std::oct << (st.st_mode & 0777);
  }
  EXPECT_GT(files, 5u);
}

// A second SIGTERM while the shutdown waits (here for a checkout whose Stripe call hangs) exits
// at once, 128 + 15; the store reopens.
TEST(LedgerdBinaryTest, ASecondSigtermExitsAtOnce) {
  TempDir dir;
  FakeStripe stripe;
  ASSERT_TRUE(stripe.Start().ok());
  stripe.set_hang_ms(60'000);
  stripe.InjectFault(FakeStripe::Fault::kHang, 10, "POST", "/v1/checkout/sessions");
  // The plan's price as Stripe has it: a named price is read from Stripe before it is recorded.
  stripe.AddPrice("price_hangs_monthly", "prod_hangs", 500, "month");
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  options.env = {{"LEDGER_JWT_HS256_SECRET", kTestHs256Secret},
                 {"STRIPE_SECRET_KEY", kFakeStripeSecretKey},
                 {"STRIPE_API_BASE", stripe.base_url()},
                 {"STRIPE_SUCCESS_URL", "https://app.example.com/ok"}};
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
  TestHttpClient admin("127.0.0.1", daemon.port());
  admin.set_bearer(MintHs256(TokenClaims::Admin("root", now_s), kTestHs256Secret));
  ASSERT_EQ(admin.Post("/api/v1/subscriptions/plans",
                       R"({"id":"hangs","display_name":"Hangs","price_monthly_cents":500,)"
                       R"("api_calls_limit":null,"services":["chat"],)"
                       R"("stripe_price_monthly":"price_hangs_monthly"})")
                .status,
            201);
  std::thread checkout([&] {
    TestHttpClient alice("127.0.0.1", daemon.port());
    alice.set_bearer(MintHs256(TokenClaims::User("alice", now_s), kTestHs256Secret));
    alice.Post("/api/v1/billing/checkout/create", R"({"plan_id":"hangs"})");
  });
  // The checkout's call is at Stripe (hanging).
  ASSERT_TRUE(WaitFor([&] { return !stripe.RequestsTo("POST", "/v1/checkout/sessions").empty(); },
                      std::chrono::seconds(30)));
  ::kill(daemon.pid(), SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("shutting down") != std::string::npos; },
                      std::chrono::seconds(30)));
  EXPECT_EQ(daemon.Wait(std::chrono::milliseconds(500)), -1) << "the shutdown waits for the call";
  EXPECT_EQ(daemon.Terminate(std::chrono::seconds(5)), 128 + SIGTERM) << daemon.Log();
  stripe.Stop();
  checkout.join();
  ProcessOutput verify = RunLedgerctlBinary({"verify", "--data-dir", options.data_dir});
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
}

// The soft limit on open files a service starts with (often 1024) is raised to the hard limit:
// a busy server's connections plus RocksDB's table files outgrow 1024 long before the hard limit.
TEST(LedgerdBinaryTest, TheSoftOpenFilesLimitIsRaisedToTheHardOne) {
  rlimit mine{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &mine), 0);
  if (mine.rlim_max != RLIM_INFINITY && mine.rlim_max <= 512) {
    GTEST_SKIP() << "the hard limit " << mine.rlim_max << " leaves nothing to raise";
  }
  TempDir dir;
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  DaemonProcess daemon(options);
  // The child inherits the lowered soft limit; this process gets its own back at once.
  rlimit low = mine;
  low.rlim_cur = 512;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  const Status started = daemon.Start();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &mine), 0);
  ASSERT_TRUE(started.ok()) << daemon.Log();
  std::ifstream limits("/proc/" + std::to_string(daemon.pid()) + "/limits");
  std::string line, soft, hard;
  while (std::getline(limits, line)) {
    if (line.rfind("Max open files", 0) != 0) continue;
    std::istringstream fields(line.substr(std::strlen("Max open files")));
    fields >> soft >> hard;
  }
  ASSERT_FALSE(hard.empty());
  EXPECT_NE(soft, "512") << daemon.Log();
  if (hard != "unlimited") {
    EXPECT_EQ(soft, hard);
  }
  EXPECT_NE(daemon.Log().find("open files: soft limit " + soft + " (was 512"), std::string::npos)
      << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

// SIGHUP (`systemctl reload`; a Keycloak key rotation) reads LEDGER_JWT_JWKS_FILE again: a token
// signed with the new kid is 401 before and 200 after; a broken file keeps the keys in use, and
// the warning names the file, never key material. SIGHUP ended ledgerd (status 129, no drain).
TEST(LedgerdBinaryTest, ASighupReloadsTheJwksAndDoesNotStopIt) {
  TempDir dir;
  auto old_key = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "kc-old");
  auto new_key = TestSigningKey::Generate(TestSigningKey::Type::kEcP256, "kc-new");
  const std::string jwks = dir.Sub("jwks.json");
  WriteTextFile(jwks, MakeJwks({old_key.get()}));
  DaemonOptions options;
  options.data_dir = dir.Sub("data");
  options.log_path = dir.Sub("ledgerd.log");
  options.env = {{"LEDGER_JWT_JWKS_FILE", jwks}};
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
  TestHttpClient client("127.0.0.1", daemon.port());
  auto status_with = [&](const TestSigningKey& key) {
    client.set_bearer(key.Mint(TokenClaims::Admin("root", now_s)));
    return client.Get("/api/v1/audit/head").status;
  };
  EXPECT_EQ(status_with(*old_key), 200);
  EXPECT_EQ(status_with(*new_key), 401);
  // Sends SIGHUP and waits for the outcome's log line (or for the end of the process).
  auto hangup = [&](const std::string& outcome) {
    const size_t before = CountOf(daemon.Log(), outcome);
    ::kill(daemon.pid(), SIGHUP);
    EXPECT_TRUE(WaitFor(
        [&] {
          return CountOf(daemon.Log(), outcome) > before ||
                 daemon.Wait(std::chrono::milliseconds(0)) != -1;
        },
        std::chrono::seconds(30)));
    return daemon.running();
  };

  WriteTextFile(jwks, MakeJwks({new_key.get()}));
  ASSERT_TRUE(hangup("JWKS reloaded")) << "SIGHUP ended ledgerd: " << daemon.exit_code() << "\n"
                                       << daemon.Log();
  EXPECT_EQ(status_with(*new_key), 200);
  EXPECT_EQ(status_with(*old_key), 401);

  // A file the start would refuse (here a kid twice, its key material in the file) changes nothing.
  WriteTextFile(jwks, MakeJwks({new_key.get(), new_key.get()}));
  ASSERT_TRUE(hangup("JWKS reload from " + jwks + " failed")) << daemon.Log();
  EXPECT_EQ(status_with(*new_key), 200);
  const std::string jwk = new_key->Jwk();
  const size_t x = jwk.find(R"("x":")");
  ASSERT_NE(x, std::string::npos) << jwk;
  const std::string coordinate = jwk.substr(x + 5, jwk.find('"', x + 5) - (x + 5));
  EXPECT_EQ(daemon.Log().find(coordinate), std::string::npos) << "key material in the log";

  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

// SIGTERM while the startup folds the log (after an upgrade that changes projections, minutes on
// a large store) stops it between two batches, without opening the port: exit 0, and the next
// start goes on. It was held until the startup had finished; the daemon then opened its port,
// logged it, and only then stopped.
TEST(LedgerdBinaryTest, ASignalDuringStartupStopsItWithoutOpeningThePort) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  {
    // A log no projection has folded: ledgerd's start folds all of it, 1,000 events a batch.
    LedgerOptions options;
    options.path = data_dir;
    options.sync = false;  // a scratch store, flushed below
    std::unique_ptr<Ledger> ledger = OpenTestLedger(options);
    ASSERT_NE(ledger, nullptr);
    for (int i = 0; i < 200; ++i) {  // 100,000 events: seconds to fold, 1,000 a batch
      std::vector<std::string> subjects;
      for (int j = 0; j < 500; ++j) subjects.push_back("u" + std::to_string(j % 50));
      SubjectsCommand command(std::move(subjects));
      CommandResult r = ledger->Submit(&command);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    }
    ASSERT_TRUE(ledger->Flush().ok());
  }
  DaemonOptions options;
  options.data_dir = data_dir;
  options.log_path = dir.Sub("ledgerd.log");
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Spawn().ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        return daemon.Log().find("catching up from position") != std::string::npos ||
               daemon.Wait(std::chrono::milliseconds(0)) != -1;
      },
      std::chrono::seconds(60)))
      << daemon.Log();
  ASSERT_TRUE(daemon.running()) << daemon.Log();
  ::kill(daemon.pid(), SIGTERM);
  EXPECT_EQ(daemon.Wait(std::chrono::seconds(60)), 0) << daemon.Log();
  EXPECT_EQ(daemon.Log().find("listening on"), std::string::npos) << daemon.Log();
  EXPECT_NE(daemon.Log().find("startup stopped on SIGTERM"), std::string::npos) << daemon.Log();
  // The next start folds what is left and serves.
  ASSERT_TRUE(daemon.Start(std::chrono::seconds(300)).ok()) << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST(LedgerdBinaryTest, ProductionModeCreatesNoDevSecret) {
  TempDir dir;
  DaemonOptions options = ProductionOptions(dir);
  DaemonProcess daemon(options);
  ASSERT_TRUE(daemon.Start().ok()) << daemon.Log();
  EXPECT_FALSE(std::filesystem::exists(options.data_dir + "/jwt-dev.secret"));
  EXPECT_NE(daemon.Log().find("production mode"), std::string::npos) << daemon.Log();
  EXPECT_EQ(daemon.Log().find(kTestHs256Secret), std::string::npos) << "the secret was logged";
  TestHttpClient client("127.0.0.1", daemon.port());
  client.set_bearer(MintAdminToken(kTestHs256Secret));
  EXPECT_EQ(client.Get("/api/v1/audit/head").status, 200);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

}  // namespace
}  // namespace ledger::testing
