// The assembled daemon in-process (daemon/app.h): start on port 0 with Kafka off, serve, stop,
// restart on the same directory; the dev-mode JWT secret; startup failures and their exit codes.
#include "daemon/app.h"

#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <spdlog/spdlog.h>
#include <sstream>
#include <set>
#include <signal.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "daemon/config.h"
#include "events/embedded_kafka.h"
#include "events/ledger.h"
#include "events/outbox.h"
#include "http/limits.h"
#include "http/secret_box.h"
#include "tests/daemon/daemon_test_util.h"
#include "tests/support/daemon_process.h"
#include "tests/support/fake_byok_provider.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/kafka_test_consumer.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/trickling_server.h"
#include "tests/support/wait.h"
#include "tests/support/captured_log.h"

namespace ledger::testing {
namespace {

using daemon::App;
using daemon::Config;
using daemon::ExitCodeFor;
using daemon::kExitConfig;
using daemon::kExitInternal;
using daemon::kExitOk;
using daemon::kExitStorage;

Config TestConfig(const std::string& data_dir) {
  Config config;
  config.data_dir = data_dir;
  config.listen_host = "127.0.0.1";
  config.listen_port = 0;
  config.kafka_brokers = "none";
  config.master_key_file = data_dir + "/master.key";
  config.http_threads = 16;
  return config;
}

// Writes a key-encryption key file (64 hex digits, mode 0600) and returns its path.
std::string WriteKeyFile(const TempDir& dir, const std::string& name, const std::string& hex) {
  const std::string path = dir.Sub(name);
  WriteTextFile(path, hex + "\n");
  std::filesystem::permissions(
      path, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  return path;
}

mode_t FileMode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST(AppTest, StartsOnPortZeroServesAndStops) {
  TempDir dir;
  std::unique_ptr<App> app;
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_GT(app->http_port(), 0);
  EXPECT_EQ(app->kafka_bootstrap(), "");

  TestHttpClient client("127.0.0.1", app->http_port());
  EXPECT_EQ(client.Get("/livez").status, 200);
  HttpReply ready = client.Get("/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  HttpReply plans = client.Get("/api/v1/subscriptions/plans");
  ASSERT_EQ(plans.status, 200) << plans.body;
  ASSERT_TRUE(plans.Json()["plans"].IsArray());
  EXPECT_EQ(plans.Json()["plans"].Size(), 4u) << plans.body;
  EXPECT_EQ(plans.Header("X-Ledger-Position"), "4");

  // Dev mode: the secret the daemon created signs admin tokens it accepts.
  const std::string secret = ReadDevSecret(dir.Sub("data"));
  ASSERT_EQ(secret.size(), 64u);
  client.set_bearer(MintAdminToken(secret));
  HttpReply created = client.Post("/api/v1/subscriptions/plans",
                                  R"({"id":"in-process","display_name":"In process",)"
                                  R"("price_monthly_cents":100,"api_calls_limit":10,)"
                                  R"("services":["chat"]})");
  ASSERT_EQ(created.status, 201) << created.body;
  EXPECT_EQ(created.Header("X-Ledger-Position"), "5");
  const int64_t now_s = 2'000'000'000;
  client.set_bearer(
      MintHs256(TokenClaims::Admin("forger", now_s), "another-secret-0123456789abcdef"));
  EXPECT_EQ(client.Get("/api/v1/audit/head").status, 401);

  const int port = app->http_port();
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());  // idempotent
  TestHttpClient after("127.0.0.1", port);
  EXPECT_EQ(after.Get("/livez").status, 0) << "still serving after Stop()";
  app.reset();

  // Restart on the same directory: same head, same secret, the plan is still there.
  s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  TestHttpClient again("127.0.0.1", app->http_port());
  HttpReply plan = again.Get("/api/v1/subscriptions/plans/in-process");
  EXPECT_EQ(plan.status, 200) << plan.body;
  EXPECT_EQ(plan.Header("X-Ledger-Position"), "5");
  EXPECT_EQ(ReadDevSecret(dir.Sub("data")), secret);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// The value of a counter line "name N" on /metrics, or -1 when it is missing.
long long MetricValue(const std::string& metrics, const std::string& name) {
  const std::string needle = "\n" + name + " ";
  const size_t at = metrics.find(needle);
  if (at == std::string::npos) return -1;
  return std::stoll(metrics.substr(at + needle.size()));
}

// --sync-interval-min-us reaches the ledger: admin writes in quick succession wait for their
// syncs with a 100 ms interval (ledger_wal_syncs_paced_total counts them), not with 0.
TEST(AppTest, TheSyncIntervalReachesTheLedger) {
  for (const int64_t interval_us : {int64_t{100'000}, int64_t{0}}) {
    SCOPED_TRACE("sync_interval_min_us=" + std::to_string(interval_us));
    TempDir dir;
    Config config = TestConfig(dir.Sub("data"));
    config.sync_interval_min_us = interval_us;
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    ASSERT_TRUE(s.ok()) << s.ToString();
    TestHttpClient client("127.0.0.1", app->http_port());
    client.set_bearer(MintAdminToken(ReadDevSecret(dir.Sub("data"))));
    for (int i = 0; i < 5; ++i) {
      HttpReply created = client.Post(
          "/api/v1/subscriptions/plans",
          R"({"id":"paced-)" + std::to_string(i) +
              R"(","display_name":"Paced","price_monthly_cents":100,"api_calls_limit":10,)"
              R"("services":["chat"]})");
      ASSERT_EQ(created.status, 201) << created.body;
    }
    HttpReply metrics = client.Get("/metrics");
    ASSERT_EQ(metrics.status, 200);
    const long long paced = MetricValue(metrics.body, "ledger_wal_syncs_paced_total");
    if (interval_us > 0) {
      // Each write after the first follows a sync at once; one of them is enough (a sync that
      // itself takes over 100 ms, a disk stall, leaves the next write unpaced).
      EXPECT_GE(paced, 1) << metrics.body;
    } else {
      EXPECT_EQ(paced, 0) << metrics.body;
    }
    EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
  }
}

// --kafka-message-max-bytes reaches the outbox: with 1024, a plan whose CloudEvent is longer goes
// to the embedded Kafka with `dataref` instead of `data`; the shorter events keep their data.
TEST(AppTest, TheKafkaMessageSizeReachesTheOutbox) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = "embedded";
  config.kafka_message_max_bytes = 1024;
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(MintAdminToken(ReadDevSecret(dir.Sub("data"))));
  HttpReply created = client.Post("/api/v1/subscriptions/plans",
                                  R"({"id":"wordy","display_name":"Wordy","description":")" +
                                      std::string(1500, 'w') +
                                      R"(","price_monthly_cents":100,"api_calls_limit":10,)"
                                      R"("services":["chat"]})");
  ASSERT_EQ(created.status, 201) << created.body;
  const uint64_t position = std::stoull(created.Header("X-Ledger-Position"));

  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(app->kafka_bootstrap(), "ledger.events", &consumer).ok());
  ASSERT_TRUE(consumer->ConsumeDistinct(position, std::chrono::seconds(20)));
  size_t with_data = 0, with_dataref = 0;
  for (const ConsumedRecord& record : consumer->records()) {
    CloudEventFields fields;
    ASSERT_TRUE(ValidateCloudEventRecord(record, "", &fields).empty()) << record.value;
    EXPECT_LE(record.value.size(), 1024u) << fields.type;
    if (fields.position == position) {
      EXPECT_EQ(fields.type, "plan.created.v1");
      EXPECT_FALSE(fields.dataref.empty()) << record.value;
      ++with_dataref;
    } else if (fields.dataref.empty()) {
      ++with_data;
    }
  }
  EXPECT_GE(with_dataref, 1u);
  EXPECT_GT(with_data, 0u) << "the starting plans fit";
  HttpReply metrics = client.Get("/metrics");
  EXPECT_GE(MetricValue(metrics.body, "ledger_outbox_data_omitted_total"), 1) << metrics.body;
  // The Prometheus text format allows one TYPE line per family (parsers refuse the page else).
  std::set<std::string> families;
  std::istringstream lines(metrics.body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("# TYPE ", 0) != 0) continue;
    const std::string name = line.substr(7, line.find(' ', 7) - 7);
    EXPECT_TRUE(families.insert(name).second) << "second TYPE line for " << name;
  }
  EXPECT_GT(families.count("ledger_outbox_lag_events"), 0u);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// An App started on `config` and stopped.
void RunOnce(const Config& config) {
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// The store a stopped App left at `data_dir`, opened as it is (no folds): null, a failure
// recorded, where it does not open.
std::unique_ptr<Ledger> OpenStore(const std::string& data_dir) {
  LedgerOptions options;
  options.path = data_dir;
  return OpenTestLedger(options);
}

// Adds a plan through the admin API; its position, 0 on failure.
uint64_t AddPlan(App* app, const std::string& data_dir, const std::string& id) {
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(MintAdminToken(ReadDevSecret(data_dir)));
  HttpReply created = client.Post(
      "/api/v1/subscriptions/plans",
      R"({"id":")" + id + R"(","display_name":"P","price_monthly_cents":100,"api_calls_limit":10,)"
                          R"("services":["chat"]})");
  EXPECT_EQ(created.status, 201) << created.body;
  return created.status == 201 ? std::stoull(created.Header("X-Ledger-Position")) : 0;
}

// The outbox's checkpoint says how far one destination has the log: pointed at another cluster
// on the same data directory, the daemon publishes the whole log there, not only what came after.
// Kafka unreachable from the start says so: /readyz's outbox has a last_error, and a warning is
// logged. The brokers' errors reached neither: ALL_BROKERS_DOWN was logged at warn only after a
// broker had been up, other errors and librdkafka's own at debug, and /readyz had no last_error.
TEST(AppTest, AnUnreachableKafkaShowsInReadyzAndTheLog) {
  CapturedLog log;
  int port = 0;
  const int fd = ListenLoopback(&port);
  ASSERT_GE(fd, 0);
  ::close(fd);  // nothing listens there now
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = "127.0.0.1:" + std::to_string(port);
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  TestHttpClient client("127.0.0.1", app->http_port());
  std::string body;
  EXPECT_TRUE(WaitFor(
      [&] {
        HttpReply ready = client.Get("/readyz");
        body = ready.body;
        if (ready.status != 200) return false;
        const rapidjson::Document json = ready.Json();
        const auto& outbox = json["outbox"];
        return outbox.HasMember("last_error") && outbox["last_error"].IsString() &&
               outbox["last_error"].GetStringLength() > 0;
      },
      std::chrono::seconds(10), std::chrono::milliseconds(50)))
      << body;
  EXPECT_NE(body.find("\"state\":\"down\""), std::string::npos) << body;
  auto warned = [&] {
    for (const std::string& line : log.Lines()) {
      if (line.find("[warning]") != std::string::npos &&
          line.find("outbox: ") != std::string::npos &&
          line.find(std::to_string(port)) != std::string::npos) {
        return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(WaitFor(warned, std::chrono::seconds(10), std::chrono::milliseconds(50)))
      << "no warning names the brokers";
  app->Stop(std::chrono::milliseconds(300)).IgnoreError();  // nothing can be flushed
}

TEST(AppTest, AnotherKafkaClusterGetsTheWholeLog) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = "embedded";
  auto add_plan = [&](App* app, const std::string& id) {
    return AddPlan(app, dir.Sub("data"), id);
  };
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const uint64_t first = add_plan(app.get(), "first");
  ASSERT_GT(first, 0u);
  {
    std::unique_ptr<KafkaTestConsumer> consumer;
    ASSERT_TRUE(KafkaTestConsumer::Open(app->kafka_bootstrap(), "ledger.events", &consumer).ok());
    ASSERT_TRUE(consumer->ConsumeDistinct(first, std::chrono::seconds(20)));
  }
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());  // the checkpoint at `first`
  app.reset();

  std::unique_ptr<EmbeddedKafka> other;
  ASSERT_TRUE(EmbeddedKafka::Open(EmbeddedKafkaOptions{}, &other).ok());
  config.kafka_brokers = other->bootstrap_servers();
  s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const uint64_t second = add_plan(app.get(), "second");
  ASSERT_GT(second, first);
  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(other->bootstrap_servers(), "ledger.events", &consumer).ok());
  EXPECT_TRUE(consumer->ConsumeDistinct(second, std::chrono::seconds(20)))
      << consumer->distinct_ids() << " of " << second;
  const DeliveryReport report = CheckDelivery(consumer->records(), 1, second);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// The properties file reaches librdkafka: one it refuses stops the start (exit 78) naming the
// file and the property.
TEST(AppTest, KafkaPropertiesReachTheProducer) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = "embedded";
  config.kafka_properties = {{"linger.ms", "soon"}};
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_KAFKA_PROPERTIES_FILE"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("linger.ms"), std::string::npos) << s.ToString();
  config.kafka_properties = {{"client.id", "ledgerd-test"}};
  s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// Puts one record on `topic` at `bootstrap`: the topic has held a record (an outbox checkpoint
// for it is not taken for a new topic's).
bool ProduceOneRecord(const std::string& bootstrap, const std::string& topic) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), errstr, sizeof(errstr));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) return false;
  std::string value = "not an event";
  rd_kafka_resp_err_t err = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_VALUE(value.data(), value.size()),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) err = rd_kafka_flush(rk, 10000);
  rd_kafka_destroy(rk);
  return err == RD_KAFKA_RESP_ERR_NO_ERROR;
}

// Waits until /metrics shows the outbox checkpoint at `position`; the last /metrics body.
std::string WaitForOutboxCheckpoint(App* app, uint64_t position) {
  TestHttpClient client("127.0.0.1", app->http_port());
  std::string body;
  EXPECT_TRUE(WaitFor(
      [&] {
        body = client.Get("/metrics").body;
        return MetricValue(body, "ledger_outbox_checkpoint_position") ==
               static_cast<long long>(position);
      },
      std::chrono::seconds(20)))
      << body;
  return body;
}

// Data directories from before the checkpoint was named for the cluster: the old checkpoint (the
// first naming's "outbox.kafka", or the bootstrap list's) is taken once for the cluster reached,
// not the whole log published again (the topic holds what was published before the upgrade).
TEST(AppTest, AnUpgradeKeepsTheOldOutboxCheckpoint) {
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open(EmbeddedKafkaOptions{}, &kafka).ok());
  ASSERT_TRUE(ProduceOneRecord(kafka->bootstrap_servers(), "ledger.events"));
  for (const std::string& old_name :
       {std::string("outbox.kafka"), OutboxCheckpointName(kafka->bootstrap_servers(),
                                                          "ledger.events")}) {
    SCOPED_TRACE(old_name);
    TempDir dir;
    Config config = TestConfig(dir.Sub("data"));
    ASSERT_NO_FATAL_FAILURE(RunOnce(config));  // kafka none: the catalog is seeded
    std::unique_ptr<App> app;
    uint64_t head = 0;
    {
      std::unique_ptr<Ledger> ledger = OpenStore(dir.Sub("data"));
      ASSERT_NE(ledger, nullptr);
      head = ledger->Head().value();
      ASSERT_GT(head, 0u);
      ASSERT_TRUE(ledger->PutCheckpoint(old_name, Position(head), /*sync=*/true).ok());
    }
    config.kafka_brokers = kafka->bootstrap_servers();
    ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
    std::string metrics = WaitForOutboxCheckpoint(app.get(), head);
    // Once the checkpoint is the cluster's, a new event is the only one published.
    const uint64_t added = AddPlan(app.get(), dir.Sub("data"), "after-upgrade");
    ASSERT_EQ(added, head + 1);
    metrics = WaitForOutboxCheckpoint(app.get(), added);
    EXPECT_EQ(MetricValue(metrics, "ledger_outbox_produced_total"), 1) << "republished";
    ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
    app.reset();
    // Taken once: pointed at another topic, the whole log goes there.
    config.kafka_topic = "ledger.events.v2";
    ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
    metrics = WaitForOutboxCheckpoint(app.get(), added);
    EXPECT_EQ(MetricValue(metrics, "ledger_outbox_produced_total"), static_cast<long long>(added));
    ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
  }
}

// The embedded cluster starts empty each run and gets the whole log: it leaves the first naming's
// "outbox.kafka" for the real cluster. It took it (and zeroed it) as its own, then wrote its own
// as 0: a store upgraded in place, started once with embedded and pointed back at its cluster,
// published the whole log there again.
TEST(AppTest, AnEmbeddedRunLeavesTheOldOutboxCheckpointForTheRealCluster) {
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open(EmbeddedKafkaOptions{}, &kafka).ok());
  ASSERT_TRUE(ProduceOneRecord(kafka->bootstrap_servers(), "ledger.events"));
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  ASSERT_NO_FATAL_FAILURE(RunOnce(config));  // kafka none: the catalog is seeded
  std::unique_ptr<App> app;
  auto legacy_checkpoint = [&](uint64_t put) {
    std::unique_ptr<Ledger> ledger = OpenStore(dir.Sub("data"));
    if (ledger == nullptr) return uint64_t{0};
    if (put != 0) {
      EXPECT_TRUE(ledger->PutCheckpoint("outbox.kafka", Position(put), /*sync=*/true).ok());
    }
    Position p;
    EXPECT_TRUE(ledger->GetCheckpoint("outbox.kafka", &p).ok());
    return p.value();
  };
  uint64_t head = 0;
  {
    std::unique_ptr<Ledger> ledger = OpenStore(dir.Sub("data"));
    ASSERT_NE(ledger, nullptr);
    head = ledger->Head().value();
  }
  ASSERT_GT(head, 0u);
  ASSERT_EQ(legacy_checkpoint(head), head);

  config.kafka_brokers = "embedded";
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  WaitForOutboxCheckpoint(app.get(), head);  // the whole log, to the embedded cluster
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
  app.reset();
  EXPECT_EQ(legacy_checkpoint(0), head);

  config.kafka_brokers = kafka->bootstrap_servers();
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  WaitForOutboxCheckpoint(app.get(), head);
  const uint64_t added = AddPlan(app.get(), dir.Sub("data"), "after-embedded");
  ASSERT_EQ(added, head + 1);
  const std::string metrics = WaitForOutboxCheckpoint(app.get(), added);
  EXPECT_EQ(MetricValue(metrics, "ledger_outbox_produced_total"), 1) << "republished";
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// The checkpoint is the cluster's, not the bootstrap list's: the same cluster written another
// way (a protocol prefix, an alias, a second broker of the list) gets only what it lacks, each
// event once.
TEST(AppTest, SameClusterUnderAnotherBootstrapListIsNotRepublished) {
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open(EmbeddedKafkaOptions{}, &kafka).ok());
  const std::string b = kafka->bootstrap_servers();
  const std::string port = b.substr(b.rfind(':') + 1);
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = b;
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  uint64_t last = AddPlan(app.get(), dir.Sub("data"), "first");
  ASSERT_GT(last, 0u);
  WaitForOutboxCheckpoint(app.get(), last);
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
  app.reset();
  for (const std::string& brokers : {"PLAINTEXT://" + b, "localhost:" + port + "," + b}) {
    SCOPED_TRACE(brokers);
    config.kafka_brokers = brokers;
    ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
    const uint64_t added = AddPlan(app.get(), dir.Sub("data"), "p" + std::to_string(last));
    ASSERT_EQ(added, last + 1);
    const std::string metrics = WaitForOutboxCheckpoint(app.get(), added);
    EXPECT_EQ(MetricValue(metrics, "ledger_outbox_produced_total"), 1) << "republished";
    ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
    app.reset();
    last = added;
  }
  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(b, "ledger.events", &consumer).ok());
  ASSERT_TRUE(consumer->ConsumeDistinct(last, std::chrono::seconds(20)));
  EXPECT_EQ(consumer->records().size(), last) << "an event published twice";
  const DeliveryReport report = CheckDelivery(consumer->records(), 1, last);
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// The embedded cluster is in memory and starts empty with each process: after a restart it gets
// the whole log again, not only what was appended since.
TEST(AppTest, TheEmbeddedClusterGetsTheWholeLogAfterARestart) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = "embedded";
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  const uint64_t head = AddPlan(app.get(), dir.Sub("data"), "first");
  ASSERT_GT(head, 0u);
  WaitForOutboxCheckpoint(app.get(), head);
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
  app.reset();
  ASSERT_TRUE(App::Start(config, nullptr, &app).ok());
  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(app->kafka_bootstrap(), "ledger.events", &consumer).ok());
  EXPECT_TRUE(consumer->ConsumeDistinct(head, std::chrono::seconds(20)))
      << consumer->distinct_ids() << " of " << head;
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
}

// The embedded cluster is plaintext and unauthenticated on loopback: with JWT configured (a
// production-like start) ledgerd says so at start; in dev mode it does not.
TEST(AppTest, EmbeddedKafkaWithProductionAuthIsWarnedAbout) {
  CapturedLog log;
  auto warned = [&] { return log.Count("without authentication") > 0; };
  for (const bool production : {false, true}) {
    TempDir dir;
    Config config = TestConfig(dir.Sub("data"));
    config.kafka_brokers = "embedded";
    if (production) config.jwt_hs256_secret = kTestHs256Secret;
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (s.ok()) {
      EXPECT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
    }
    EXPECT_EQ(warned(), production);
  }
}

// BYOK master-key rotation over real HTTP: a key added under key A is 409 key_unreadable once the
// daemon runs on key B alone (as before rotation existed); started on B with A as a previous key,
// it re-wraps the key's data key (logged once), and the key is valid -- and stays valid on B
// alone from then on: the re-wrap was written to the store.
TEST(AppTest, ARotatedMasterKeyReWrapsTheByokDataKeysAtStart) {
  constexpr char kOpenAiKey[] = "sk-proj-alice-0123456789abcdefghijklmnopqrstuv";
  FakeProvider provider;
  provider.Accept(kOpenAiKey);
  TempDir dir;
  const std::string old_hex(64, 'a'), new_hex = "5e" + std::string(62, 'c');
  for (const auto& [name, hex] : {std::pair{"a.key", old_hex}, std::pair{"b.key", new_hex}}) {
    WriteKeyFile(dir, name, hex);
  }
  auto key_id = [](const std::string& hex) {
    Hash bytes;
    EXPECT_TRUE(HexDecodeHash(hex, &bytes));
    std::unique_ptr<http::SecretBox> box;
    EXPECT_TRUE(http::SecretBox::Create(std::string(bytes.begin(), bytes.end()), &box).ok());
    return box->key_id();
  };
  const std::string rewrapped_line =
      "byok: re-wrapped 1 data keys from key " + key_id(old_hex) + " to " + key_id(new_hex);
  const int64_t now_s = ::time(nullptr);
  // One start on `master` (with `previous`): `use` gets alice's and an admin's clients; returns
  // the log's lines.
  auto start = [&](const std::string& master, std::vector<std::string> previous,
                   const std::function<void(TestHttpClient&, TestHttpClient&)>& use) {
    CapturedLog log;
    Config config = TestConfig(dir.Sub("data"));
    config.jwt_hs256_secret = kTestHs256Secret;
    config.master_key_file = dir.Sub(master);
    config.master_key_file_given = true;
    config.master_key_previous_files = std::move(previous);
    config.byok_base_urls = {{"openai", provider.url("openai")}};
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return log.Lines();
    TestHttpClient alice("127.0.0.1", app->http_port());
    alice.set_bearer(MintHs256(TokenClaims::User("alice", now_s), kTestHs256Secret));
    TestHttpClient admin("127.0.0.1", app->http_port());
    admin.set_bearer(MintHs256(TokenClaims::Admin("ops", now_s), kTestHs256Secret));
    use(alice, admin);
    EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
    return log.Lines();
  };
  auto count = [](const std::vector<std::string>& lines, const std::string& text) {
    return std::count_if(lines.begin(), lines.end(), [&](const std::string& line) {
      return line.find(text) != std::string::npos;
    });
  };
  auto test_key = [](TestHttpClient& client) {
    return client.Post("/api/v1/byok/keys/test/openai", "");
  };

  start("a.key", {}, [&](TestHttpClient& client, TestHttpClient& admin) {
    HttpReply comped = admin.Patch("/api/v1/admin/subscriptions/alice",
                                   R"({"tier":"starter","status":"active"})");
    ASSERT_EQ(comped.status, 200) << comped.body;
    HttpReply added = client.Post("/api/v1/byok/keys/add",
                                  std::string(R"({"provider":"openai","api_key":")") +
                                      kOpenAiKey + "\"}");
    ASSERT_EQ(added.status, 201) << added.body;
  });
  // Negative control: B alone, without A listed, opens nothing (and says so at start).
  std::vector<std::string> lines;
  lines = start("b.key", {}, [&](TestHttpClient& client, TestHttpClient&) {
    HttpReply tested = test_key(client);
    EXPECT_EQ(tested.status, 409) << tested.body;
    EXPECT_NE(tested.body.find("key_unreadable"), std::string::npos) << tested.body;
  });
  EXPECT_EQ(count(lines, "byok: re-wrapped"), 0);
  EXPECT_EQ(count(lines, "byok: 1 data keys open under no configured key-encryption key"), 1);

  lines = start("b.key", {dir.Sub("a.key")}, [&](TestHttpClient& client, TestHttpClient&) {
    HttpReply tested = test_key(client);
    ASSERT_EQ(tested.status, 200) << tested.body;
    EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
  });
  EXPECT_EQ(count(lines, rewrapped_line), 1);
  EXPECT_EQ(count(lines, "byok: previous key " + key_id(old_hex) + ": 0 data keys left"), 1);
  EXPECT_EQ(count(lines, "open under no configured"), 0);
  for (const std::string& line : lines) {
    for (const std::string& secret : {old_hex, new_hex, std::string(kOpenAiKey)}) {
      EXPECT_EQ(line.find(secret), std::string::npos) << line;
    }
  }

  lines = start("b.key", {}, [&](TestHttpClient& client, TestHttpClient&) {
    HttpReply tested = test_key(client);
    ASSERT_EQ(tested.status, 200) << tested.body;
    EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
  });
  EXPECT_EQ(count(lines, "byok: re-wrapped"), 0);
  EXPECT_EQ(provider.calls("openai"), 2);
}

// The start's refusal (exit 78) of LEDGER_MASTER_KEY_PREVIOUS_FILES without a current key.
void ExpectPreviousKeysWithoutACurrentKey(const Status& s) {
  EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_MASTER_KEY_PREVIOUS_FILES is set but there is no current key"),
            std::string::npos)
      << s.ToString();
}

// A previous key's file is read at start as the master key's is: a missing one is exit 78
// naming the item, and so is a previous key without a current one.
TEST(AppTest, APreviousMasterKeyFileThatIsMissingIsAConfigError) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.jwt_hs256_secret = kTestHs256Secret;
  config.master_key_previous_files = {dir.Sub("gone.key")};
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ExpectPreviousKeysWithoutACurrentKey(s);
  config.master_key_file = WriteKeyFile(dir, "b.key", std::string(64, 'b'));
  config.master_key_file_given = true;
  s = App::Start(config, nullptr, &app);
  EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_MASTER_KEY_PREVIOUS_FILES: item 1: no file at " +
                             dir.Sub("gone.key")),
            std::string::npos)
      << s.ToString();
}

// Dev mode creates a missing master key, but not one to rotate to: the previous keys' data keys
// would be re-wrapped under a key kept beside the log, which any copy of the data directory holds.
TEST(AppTest, DevModeCreatesNoKeyToRotateTo) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  Config config = TestConfig(data_dir);
  ASSERT_TRUE(config.DevMode());
  config.master_key_previous_files = {WriteKeyFile(dir, "old.key", std::string(64, 'a'))};
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ExpectPreviousKeysWithoutACurrentKey(s);
  EXPECT_FALSE(std::filesystem::exists(config.master_key_file)) << config.master_key_file;
}

TEST(OutboxCheckpointNameTest, NamesTheTopicAndTheCluster) {
  EXPECT_EQ(OutboxClusterCheckpointName("MkU3OEVBNTcwNTJENDM2Qk", "ledger.events"),
            "outbox.kafka/ledger.events@cluster:MkU3OEVBNTcwNTJENDM2Qk");
  EXPECT_NE(OutboxClusterCheckpointName("a", "t"), OutboxClusterCheckpointName("a", "u"));
  EXPECT_NE(OutboxClusterCheckpointName("a", "t"), OutboxClusterCheckpointName("b", "t"));
}

TEST(OutboxCheckpointNameTest, NamesTheTopicAndTheBrokers) {
  EXPECT_EQ(OutboxCheckpointName("embedded", "ledger.events"), "outbox.kafka/ledger.events@embedded");
  EXPECT_EQ(OutboxCheckpointName(" B:9092,a:9092 ,b:9092,", "t"), "outbox.kafka/t@a:9092,b:9092");
  EXPECT_NE(OutboxCheckpointName("a:9092", "t"), OutboxCheckpointName("a:9092", "u"));
}

TEST(AppTest, DevSecretIsCreatedWithMode0600AndReused) {
  TempDir dir;
  const std::string data_dir = dir.Sub("not/yet/there");
  const mode_t old_umask = ::umask(0);  // the file's mode must not depend on the umask
  std::string first;
  Status s = daemon::LoadOrCreateDevSecret(data_dir, &first);
  ::umask(old_umask);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const std::string path = daemon::DevJwtSecretPath(data_dir);
  EXPECT_EQ(path, data_dir + "/jwt-dev.secret");
  EXPECT_EQ(FileMode(path), 0600u);
  EXPECT_EQ(first.size(), 64u);
  EXPECT_EQ(first.find_first_not_of("0123456789abcdef"), std::string::npos) << first;
  std::string second;
  ASSERT_TRUE(daemon::LoadOrCreateDevSecret(data_dir, &second).ok());
  EXPECT_EQ(second, first);
  EXPECT_EQ(ReadDevSecret(data_dir), first);

  // Another directory gets another secret.
  std::string other;
  ASSERT_TRUE(daemon::LoadOrCreateDevSecret(dir.Sub("other"), &other).ok());
  EXPECT_NE(other, first);
}

// Whoever can read the dev secret can mint admin tokens: held to the master key's rule.
TEST(AppTest, ADevSecretOthersCanReadIsRefused) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  std::string secret;
  ASSERT_TRUE(daemon::LoadOrCreateDevSecret(data_dir, &secret).ok());
  const std::string path = daemon::DevJwtSecretPath(data_dir);
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  Status s = daemon::LoadOrCreateDevSecret(data_dir, &secret);
  EXPECT_EQ(daemon::ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("jwt-dev.secret"), std::string::npos) << s.message();
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(daemon::LoadOrCreateDevSecret(data_dir, &secret).ok());
}

// A short dev secret (hand-made, or cut by a crash) is a setting to mend, not a damaged store
// (main would send the operator to `ledgerctl verify`, which finds nothing). A CRLF file is read
// as ledgerctl token reads it: else every token it mints would be refused.
TEST(AppTest, ADevSecretFileIsReadAsLedgerctlReadsIt) {
  TempDir dir;
  const std::string path = dir.Sub("jwt-dev.secret");
  WriteTextFile(path, "abc\n");
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  std::string secret;
  Status s = daemon::LoadOrCreateDevSecret(dir.path(), &secret);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("jwt-dev.secret"), std::string::npos) << s.message();
  const std::string hex(64, 'a');
  WriteTextFile(path, hex + "\r\n");
  ASSERT_TRUE(daemon::LoadOrCreateDevSecret(dir.path(), &secret).ok());
  EXPECT_EQ(secret, hex);
  std::string minted_with;  // ledgerctl token's reading (tools::ReadSecretFile)
  ASSERT_TRUE(daemon::ReadDevSecretFile(path, &minted_with).ok());
  EXPECT_EQ(minted_with, secret);
}

TEST(AppTest, NoDevSecretWhenJwtIsConfigured) {
  TempDir dir;
  Config config = TestConfig(dir.Sub("data"));
  config.jwt_hs256_secret = kTestHs256Secret;
  ASSERT_FALSE(config.DevMode());
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(std::filesystem::exists(daemon::DevJwtSecretPath(config.data_dir)));
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(MintAdminToken(kTestHs256Secret));
  EXPECT_EQ(client.Get("/api/v1/audit/head").status, 200);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

TEST(AppTest, ExitCodes) {
  EXPECT_EQ(ExitCodeFor(Status::OK()), kExitOk);
  EXPECT_EQ(ExitCodeFor(Status::IOError("disk")), kExitStorage);
  EXPECT_EQ(ExitCodeFor(Status::Corruption("bad block")), kExitStorage);
  EXPECT_EQ(ExitCodeFor(Status::Make(Code::kUnprocessable, "bad_config", "x")), kExitConfig);
  EXPECT_EQ(ExitCodeFor(Status::InvalidArgument("bad_jwt_config", "x")), kExitConfig);
  EXPECT_EQ(ExitCodeFor(Status::Internal("bug")), kExitInternal);
  // The writer's refusal after a failed write, met at start (a catch-up's or the BYOK re-wrap's
  // write) or at stop, is a storage error.
  EXPECT_EQ(ExitCodeFor(Status::Unavailable("storage_degraded", "storage write failed")),
            kExitStorage);
  EXPECT_EQ(ExitCodeFor(Status::Unavailable("startup_cancelled", "x")), kExitInternal);
}

// A start cancelled by a signal exits 0 (main.cc), unless the stop after it could not flush the
// store: then that storage failure is what the start reports (exit 74).
TEST(AppTest, ACancelledStartReportsAFailedFlush) {
  const Status cancelled = Status::Unavailable("startup_cancelled", "the startup was cancelled");
  const Status open_cancelled = Status::Unavailable("open_cancelled", "x");
  const Status flush = Status::IOError("flush: No space left on device");
  EXPECT_EQ(daemon::StartFailure(cancelled, Status::OK()).problem(), "startup_cancelled");
  EXPECT_EQ(daemon::StartFailure(open_cancelled, Status::OK()).problem(), "open_cancelled");
  EXPECT_EQ(ExitCodeFor(daemon::StartFailure(cancelled, flush)), kExitStorage);
  EXPECT_EQ(ExitCodeFor(daemon::StartFailure(open_cancelled, flush)), kExitStorage);
  // Any other failure stays what it was: the flush after it is logged.
  const Status config = Status::InvalidArgument("bad_jwt_config", "x");
  EXPECT_EQ(daemon::StartFailure(config, flush).problem(), "bad_jwt_config");
}

// Only an address that cannot be bound is a bad LEDGER_LISTEN (78: supervisors do not retry it);
// an HTTP server whose event loop or accept loop could not start (out of file handles or
// memory) exits 70, to be restarted.
TEST(AppTest, OnlyABindFailureIsABadListenSetting) {
  const Status bind = daemon::HttpStartFailure(
      Status::Unavailable("listen_failed", "cannot listen on 127.0.0.1:80"));
  EXPECT_EQ(ExitCodeFor(bind), kExitConfig) << bind.ToString();
  EXPECT_NE(bind.message().find("LEDGER_LISTEN"), std::string::npos) << bind.ToString();
  for (const char* message : {"cannot start the event loop: Too many open files",
                              "the HTTP accept loop did not start"}) {
    SCOPED_TRACE(message);
    // What HttpServer::Start() answers for them (http/server.h).
    const Status loop =
        daemon::HttpStartFailure(Status::Unavailable("server_start_failed", message));
    EXPECT_EQ(ExitCodeFor(loop), kExitInternal) << loop.ToString();
    EXPECT_EQ(loop.message().find("LEDGER_LISTEN"), std::string::npos) << loop.ToString();
  }
  EXPECT_TRUE(daemon::HttpStartFailure(Status::OK()).ok());
}

// An open-file limit that leaves the HTTP server no connection beside what the rest of the process
// keeps (limits::kDescriptorsReserved, a descriptor per worker thread, the files open) is a
// setting of the host, not a passing failure: exit 78 naming RLIMIT_NOFILE, refused before the
// store is opened -- a restart cannot help, and the projections' catch-up would be wasted. In a
// child: the limit is the process's.
TEST(AppTest, AnOpenFileLimitWithoutRoomIsRefusedBeforeTheStoreIsOpened) {
  TempDir dir;
  const std::string data_dir = dir.Sub("data");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    Config config = TestConfig(data_dir);
    config.http_threads = 64;
    const rlimit limit{static_cast<rlim_t>(http::limits::kDescriptorsReserved + 64),
                       static_cast<rlim_t>(http::limits::kDescriptorsReserved + 64)};
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) ::_exit(11);
    std::unique_ptr<App> app;
    const Status s = App::Start(config, nullptr, &app);
    if (s.ok()) ::_exit(12);
    if (ExitCodeFor(s) != kExitConfig) ::_exit(13);
    if (s.message().find("RLIMIT_NOFILE") == std::string::npos) ::_exit(14);
    std::error_code ec;
    if (std::filesystem::exists(data_dir + "/CURRENT", ec)) ::_exit(15);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "12: started anyway, 13: not exit 78, 14: RLIMIT_NOFILE not named, 15: store opened";
}

// The store holds emails, webhooks as delivered and sealed keys: a data directory ledgerd creates
// is its user's alone, whatever the umask; one that exists keeps the mode it was given.
TEST(AppTest, ADataDirectoryItCreatesIsTheUsersAlone) {
  TempDir dir;
  const mode_t old_umask = ::umask(022);
  for (bool dev_mode : {true, false}) {
    SCOPED_TRACE(dev_mode ? "dev mode" : "HS256 configured");
    const std::string data_dir = dir.Sub(dev_mode ? "a/data" : "b/data");
    Config config = TestConfig(data_dir);
    if (!dev_mode) config.jwt_hs256_secret = kTestHs256Secret;
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(FileMode(data_dir), 0700u);
    EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
  }
  std::filesystem::create_directories(dir.Sub("shared"));
  ::chmod(dir.Sub("shared").c_str(), 0750);
  std::unique_ptr<App> app;
  Status s = App::Start(TestConfig(dir.Sub("shared")), nullptr, &app);
  ::umask(old_umask);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(FileMode(dir.Sub("shared")), 0750u);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// A core file of a ledgerd that aborted (an HTTP event loop failure, a RocksDB assert) held every
// secret in its memory: the master key, the JWT secret, the configured keys. The start makes
// the process non-dumpable and its soft core limit 0 before reading any of them; with
// LEDGER_CORE_DUMPS=on (to debug a crash) both are left as they were.
TEST(AppTest, SecretsAreKeptOutOfCoreDumps) {
  TempDir dir;
  rlimit before{};
  ASSERT_EQ(::getrlimit(RLIMIT_CORE, &before), 0);
  if (before.rlim_max == 0) GTEST_SKIP() << "a hard core limit of 0 leaves nothing to lower";
  rlimit core = before;
  core.rlim_cur = core.rlim_max;  // the sanitizers start at a soft 0
  ASSERT_EQ(::setrlimit(RLIMIT_CORE, &core), 0);
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);

  Config allowed = TestConfig(dir.Sub("allowed"));
  allowed.core_dumps = true;
  std::unique_ptr<App> app;
  Status s = App::Start(allowed, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
  ASSERT_EQ(::getrlimit(RLIMIT_CORE, &core), 0);
  EXPECT_EQ(core.rlim_cur, before.rlim_max);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());

  s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 0);
  ASSERT_EQ(::getrlimit(RLIMIT_CORE, &core), 0);
  EXPECT_EQ(core.rlim_cur, 0u);
  EXPECT_EQ(core.rlim_max, before.rlim_max);  // the operator's own limit, not lowered for good
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
  ::setrlimit(RLIMIT_CORE, &before);
}

TEST(AppTest, DataDirThatIsARegularFileIsAStorageError) {
  TempDir dir;
  WriteTextFile(dir.Sub("file"), "not a directory");
  for (bool dev_mode : {true, false}) {
    SCOPED_TRACE(dev_mode ? "dev mode" : "HS256 configured");
    Config config = TestConfig(dir.Sub("file"));
    if (!dev_mode) config.jwt_hs256_secret = kTestHs256Secret;
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(app, nullptr);
    EXPECT_EQ(ExitCodeFor(s), kExitStorage) << s.ToString();
  }
}

TEST(AppTest, ACorruptCurrentFileIsAStorageError) {
  TempDir dir;
  std::unique_ptr<App> app;
  ASSERT_TRUE(App::Start(TestConfig(dir.Sub("data")), nullptr, &app).ok());
  ASSERT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
  app.reset();
  WriteTextFile(dir.Sub("data/CURRENT"), "MANIFEST-999999\n");
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitStorage) << s.ToString();
  WriteTextFile(dir.Sub("data/CURRENT"), "garbage without newline");
  s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitStorage) << s.ToString();
}

TEST(AppTest, ASecondDaemonOnTheSameDirectoryIsAStorageError) {
  TempDir dir;
  std::unique_ptr<App> first;
  ASSERT_TRUE(App::Start(TestConfig(dir.Sub("data")), nullptr, &first).ok());
  std::unique_ptr<App> second;
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, &second);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitStorage) << s.ToString();
  // The first one is unharmed.
  TestHttpClient client("127.0.0.1", first->http_port());
  EXPECT_EQ(client.Get("/readyz").status, 200);
  EXPECT_TRUE(first->Stop(std::chrono::milliseconds(0)).ok());
}

TEST(AppTest, AnUnparsableJwksFileIsAConfigError) {
  TempDir dir;
  WriteTextFile(dir.Sub("jwks.json"), "{not json");
  Config config = TestConfig(dir.Sub("data"));
  config.jwt_jwks_file = dir.Sub("jwks.json");
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_JWT_JWKS_FILE"), std::string::npos) << s.ToString();
}

TEST(AppTest, AnEmptyJwksFileIsAConfigError) {
  TempDir dir;
  WriteTextFile(dir.Sub("jwks.json"), "");
  Config config = TestConfig(dir.Sub("data"));
  config.jwt_jwks_file = dir.Sub("jwks.json");
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
  EXPECT_NE(s.message().find("LEDGER_JWT_JWKS_FILE"), std::string::npos) << s.ToString();
}

// Raises SIGHUP, then SIGUSR2, at this thread (blocked: pending, taken lowest number first) and
// runs the wait on both: it takes SIGHUP as a reload and goes on to return SIGUSR2.
int WaitThroughASighup(App* app) {
  sigset_t signals, old_mask;
  sigemptyset(&signals);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR2);
  EXPECT_EQ(::pthread_sigmask(SIG_BLOCK, &signals, &old_mask), 0);
  ::pthread_kill(::pthread_self(), SIGHUP);
  ::pthread_kill(::pthread_self(), SIGUSR2);
  const int received = daemon::WaitForShutdown(*app, signals);
  const timespec now{0, 0};
  while (::sigtimedwait(&signals, nullptr, &now) > 0) {
  }
  EXPECT_EQ(::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
  return received;
}

// A Keycloak key rotation: SIGHUP reads the JWKS file again. A token with the new kid is 401
// before and 200 after; a file the start would refuse (broken, empty, without a signing key,
// gone) keeps the keys in use. The JWKS was read once at start: until a restart, every token
// signed with the new key was 401.
TEST(AppTest, ARotatedJwksIsTakenOnSighup) {
  TempDir dir;
  auto old_key = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "kc-old");
  auto new_key = TestSigningKey::Generate(TestSigningKey::Type::kEcP256, "kc-new");
  const std::string jwks = dir.Sub("jwks.json");
  WriteTextFile(jwks, MakeJwks({old_key.get()}));
  Config config = TestConfig(dir.Sub("data"));
  config.jwt_jwks_file = jwks;
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
  TestHttpClient client("127.0.0.1", app->http_port());
  auto status_with = [&](const TestSigningKey& key) {
    client.set_bearer(key.Mint(TokenClaims::Admin("root", now_s)));
    return client.Get("/api/v1/audit/head").status;
  };
  EXPECT_EQ(status_with(*old_key), 200);
  EXPECT_EQ(status_with(*new_key), 401);

  WriteTextFile(jwks, MakeJwks({old_key.get(), new_key.get()}));  // Keycloak's rotation
  EXPECT_EQ(WaitThroughASighup(app.get()), SIGUSR2);
  EXPECT_TRUE(app->serving());
  EXPECT_EQ(status_with(*new_key), 200);
  EXPECT_EQ(status_with(*old_key), 200);

  for (const std::string& contents :
       {std::string("{not json"), std::string(), MakeJwks({}),
        std::string(http::limits::kJwksFileBytesMax + 1, ' ')}) {
    SCOPED_TRACE(contents.substr(0, 20));
    WriteTextFile(jwks, contents);
    s = app->ReloadJwks();
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("LEDGER_JWT_JWKS_FILE"), std::string::npos) << s.ToString();
    EXPECT_EQ(status_with(*new_key), 200);
  }
  std::filesystem::remove(jwks);
  EXPECT_FALSE(app->ReloadJwks().ok());
  EXPECT_EQ(status_with(*new_key), 200);

  WriteTextFile(jwks, MakeJwks({new_key.get()}));  // the old key retired
  s = app->ReloadJwks();
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(status_with(*new_key), 200);
  EXPECT_EQ(status_with(*old_key), 401);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// Without a JWKS file (dev mode here) a SIGHUP is logged and ignored: the wait goes on.
TEST(AppTest, ASighupWithoutAJwksFileIsIgnored) {
  TempDir dir;
  std::unique_ptr<App> app;
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(app->ReloadJwks().problem(), "no_jwks");
  EXPECT_EQ(WaitThroughASighup(app.get()), SIGUSR2);
  TestHttpClient client("127.0.0.1", app->http_port());
  client.set_bearer(MintAdminToken(ReadDevSecret(dir.Sub("data"))));
  EXPECT_EQ(client.Get("/api/v1/audit/head").status, 200);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// A startup cancelled (ledgerd's SIGTERM during it) stops before the port opens; what it opened
// is closed again, and the next start on the directory goes on.
TEST(AppTest, ACancelledStartupOpensNoPort) {
  TempDir dir;
  const std::atomic<bool> cancel{true};
  std::unique_ptr<App> app;
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app, &cancel);
  EXPECT_EQ(s.problem(), "startup_cancelled") << s.ToString();
  EXPECT_EQ(app, nullptr);
  s = App::Start(TestConfig(dir.Sub("data")), nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// Starts an App, blocks SIGUSR2 (the signal the wait is given; the caller restores `old_mask`)
// and makes accept() fail on its listening socket, ending cpp-httplib's accept loop.
void StartAndBreakTheListener(const TempDir& dir, std::unique_ptr<App>* app, sigset_t* signals,
                              sigset_t* old_mask) {
  Status s = App::Start(TestConfig(dir.Sub("data")), nullptr, app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE((*app)->serving());
  sigemptyset(signals);
  sigaddset(signals, SIGUSR2);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, signals, old_mask), 0);
  const int fd = ListeningSocketOf((*app)->http_port());
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::shutdown(fd, SHUT_RD), 0);
}

// An accept loop that ends on its own (cpp-httplib retries accept() on EMFILE alone; here it fails
// with EINVAL on a listening socket shut down for reading) ends ledgerd's wait for a signal:
// main() then stops and exits 69 to be restarted, where it sat in sigwait with its port dark.
TEST(AppTest, AnAcceptLoopThatDiesEndsTheWaitForASignal) {
  TempDir dir;
  std::unique_ptr<App> app;
  sigset_t signals, old_mask;
  StartAndBreakTheListener(dir, &app, &signals, &old_mask);
  if (HasFatalFailure()) return;
  // A wait that never notices would last for good: after 20 s this thread gets SIGUSR2.
  std::mutex mu;
  std::condition_variable cv;
  bool returned = false;
  const pthread_t waiter = ::pthread_self();
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::seconds(20), [&] { return returned; })) {
      ::pthread_kill(waiter, SIGUSR2);
    }
  });
  const int received = daemon::WaitForShutdown(*app, signals);
  {
    std::lock_guard<std::mutex> lock(mu);
    returned = true;
  }
  cv.notify_one();
  watchdog.join();
  const timespec now{0, 0};
  while (::sigtimedwait(&signals, nullptr, &now) > 0) {
  }
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
  EXPECT_EQ(received, 0) << "still waiting for a signal with the port dark";
  EXPECT_FALSE(app->serving());
  TestHttpClient client("127.0.0.1", app->http_port());
  EXPECT_EQ(client.Get("/livez").status, 0);
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// A signal pending when the accept loop dies is the wait's answer, not left for main's "second
// signal" watcher: that took it at once and exited 143 in the middle of the shutdown.
TEST(AppTest, ASignalPendingAsTheAcceptLoopDiesIsTakenByTheWait) {
  TempDir dir;
  std::unique_ptr<App> app;
  sigset_t signals, old_mask;
  StartAndBreakTheListener(dir, &app, &signals, &old_mask);
  if (HasFatalFailure()) return;
  for (int i = 0; i < 200 && app->serving(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(app->serving());
  // Pending before the wait starts: the loop's condition is already false, as in the tick the
  // accept loop died in.
  ASSERT_EQ(::pthread_kill(::pthread_self(), SIGUSR2), 0);
  const int received = daemon::WaitForShutdown(*app, signals);
  const timespec now{0, 0};
  const int left = ::sigtimedwait(&signals, nullptr, &now);
  ASSERT_EQ(::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr), 0);
  EXPECT_EQ(received, SIGUSR2);
  EXPECT_LE(left, 0) << "the signal was left pending for the second-signal watcher";
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(0)).ok());
}

// The Lago sink's and the outbox's shutdown budget starts when the HTTP drain ends: counted from
// Stop(), a checkout waiting on Stripe longer than the whole budget took all of it, and the outbox
// stopped at once with Kafka healthy, its last event (the checkout's own, appended when Stripe
// answered) unpublished.
TEST(AppTest, TheOutboxFlushGetsItsBudgetAfterTheHttpDrain) {
  TempDir dir;
  FakeStripe stripe;
  ASSERT_TRUE(stripe.Start().ok());
  stripe.AddProduct("prod_slow", "Slow");
  stripe.AddPrice("price_slow_monthly", "prod_slow", 500, "month");
  // The first try waits 3 s for an answer (a 500, which the client retries): the checkout is in
  // flight longer than the 2 s budget below.
  stripe.set_hang_ms(3000);
  stripe.InjectFault(FakeStripe::Fault::kHang, 1, "POST", "/v1/checkout/sessions");
  std::unique_ptr<EmbeddedKafka> kafka;
  ASSERT_TRUE(EmbeddedKafka::Open(EmbeddedKafkaOptions{}, &kafka).ok());
  Config config = TestConfig(dir.Sub("data"));
  config.kafka_brokers = kafka->bootstrap_servers();
  config.jwt_hs256_secret = kTestHs256Secret;
  config.stripe_secret_key = kFakeStripeSecretKey;
  config.stripe_api_base = stripe.base_url();
  config.stripe_success_url = "https://app.example.com/ok";
  std::unique_ptr<App> app;
  Status s = App::Start(config, nullptr, &app);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const int64_t now_s = static_cast<int64_t>(std::time(nullptr));
  TestHttpClient admin("127.0.0.1", app->http_port());
  admin.set_bearer(MintHs256(TokenClaims::Admin("root", now_s), kTestHs256Secret));
  HttpReply plan = admin.Post("/api/v1/subscriptions/plans",
                              R"({"id":"slow","display_name":"Slow","price_monthly_cents":500,)"
                              R"("api_calls_limit":null,"services":["chat"],)"
                              R"("stripe_price_monthly":"price_slow_monthly"})");
  ASSERT_EQ(plan.status, 201) << plan.body;
  // Kafka stays healthy, its answers 300 ms late: an event appended as the drain ends needs
  // that long to be acknowledged.
  ASSERT_TRUE(kafka->SetBrokerRtt(-1, 300).ok());
  HttpReply checkout;
  std::thread alice([&] {
    TestHttpClient client("127.0.0.1", app->http_port());
    client.set_bearer(MintHs256(TokenClaims::User("alice", now_s), kTestHs256Secret));
    checkout = client.Post("/api/v1/billing/checkout/create", R"({"plan_id":"slow"})");
  });
  ASSERT_TRUE(WaitFor([&] { return !stripe.RequestsTo("POST", "/v1/checkout/sessions").empty(); },
                      std::chrono::seconds(30)));
  EXPECT_TRUE(app->Stop(std::chrono::milliseconds(2000)).ok());
  alice.join();
  EXPECT_EQ(checkout.status, 200) << checkout.body;
  app.reset();
  std::unique_ptr<Ledger> ledger = OpenStore(dir.Sub("data"));
  ASSERT_NE(ledger, nullptr);
  Position published;
  ASSERT_TRUE(ledger
                  ->GetCheckpoint(OutboxClusterCheckpointName(
                                      ClusterIdOf(config.kafka_brokers), config.kafka_topic),
                                  &published)
                  .ok());
  EXPECT_EQ(published.value(), ledger->Head().value()) << "the outbox stopped with events unsent";
}

// Bytes this process has read so far (rchar of /proc/self/io): what reading a file cost.
// Unreadable is a failure, not 0: /proc/self/io is root's alone once a process is non-dumpable
// (App::Start's PR_SET_DUMPABLE 0, unless core_dumps), and a 0 would make the check below pass
// without measuring anything when the tests run as another user.
uint64_t BytesReadSoFar() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value) {
    if (key == "rchar:") return value;
  }
  ADD_FAILURE() << "no rchar in /proc/self/io";
  return 0;
}

// The JWKS file and Lago's public key are read up to their limits and no further: a larger file
// is refused (exit 78, naming the setting) after limit + 1 bytes, instead of read whole first.
TEST(AppTest, KeyFilesOverTheirLimitsAreRefusedUnread) {
  TempDir dir;
  const std::string big = dir.Sub("big");
  WriteTextFile(big, std::string(2u << 20, 'x'));  // 2 MiB
  struct Case {
    const char* setting;
    std::string Config::*file;
    size_t limit;
  };
  for (const Case& c : {Case{"LEDGER_JWT_JWKS_FILE", &Config::jwt_jwks_file,
                             http::limits::kJwksFileBytesMax},
                        Case{"LAGO_WEBHOOK_PUBLIC_KEY_FILE", &Config::lago_webhook_public_key_file,
                             http::limits::kLagoPublicKeyFileBytesMax}}) {
    SCOPED_TRACE(c.setting);
    Config config = TestConfig(dir.Sub("data"));
    config.*c.file = big;
    // Dumpable, so that /proc/self/io stays readable by a non-root user (an earlier App::Start
    // in this process may have cleared it).
    config.core_dumps = true;
    ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
    std::unique_ptr<App> app;
    const uint64_t read_before = BytesReadSoFar();
    Status s = App::Start(config, nullptr, &app);
    const uint64_t read = BytesReadSoFar() - read_before;
    EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
    EXPECT_NE(s.message().find(c.setting), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("too large"), std::string::npos) << s.ToString();
    EXPECT_LE(read, c.limit + 64 * 1024) << "the whole file was read";
  }
}

// A file that never ends (LEDGER_JWT_JWKS_FILE=/dev/zero grew the daemon until the OOM killer
// came) is refused as too large.
TEST(AppTest, AnEndlessKeyFileIsRefused) {
  TempDir dir;
  for (const auto& [setting, file] :
       {std::pair{"LEDGER_JWT_JWKS_FILE", &Config::jwt_jwks_file},
        std::pair{"LAGO_WEBHOOK_PUBLIC_KEY_FILE", &Config::lago_webhook_public_key_file}}) {
    SCOPED_TRACE(setting);
    Config config = TestConfig(dir.Sub("data"));
    config.*file = "/dev/zero";
    std::unique_ptr<App> app;
    Status s = App::Start(config, nullptr, &app);
    EXPECT_EQ(ExitCodeFor(s), kExitConfig) << s.ToString();
    EXPECT_NE(s.message().find(setting), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("too large"), std::string::npos) << s.ToString();
  }
}

}  // namespace
}  // namespace ledger::testing
