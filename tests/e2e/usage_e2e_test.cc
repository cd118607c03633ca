// kill -9 during consume load (issue 4, item 7), against the real ledgerd binary (Kafka off).
//
// One user on a plan with a limit of kLimit calls; 24 keep-alive service clients consume with fresh
// idempotency keys; after a random 150–500 ms (or at kCycleAcksMax acknowledgements, if sooner)
// the daemon is SIGKILLed, with every client still sending, and restarted on the same directory.
// After each restart:
//   - every acknowledged consume is in the log: retrying its key answers the same body, replayed;
//   - the usage counter equals the number of usage.recorded.v1 events in the log, never above the
//     limit (projections never disagree with the log);
//   - `ledgerctl replay` rebuilds the projections from the log and finds them equal;
// and after three cycles the remaining load stops at exactly kLimit calls in total.
//
// The same for batched ingest (POST /api/v1/usage/events, one usage.batch_recorded.v1 per user
// and request): every acknowledged item is in the log exactly once, the counters equal the items
// the log holds, `ledgerctl replay` agrees, and a re-sent body is all duplicates.
//
// The consume checks are one function returning its findings (CheckConsumes), so the crash test
// and its negative control (the newest write-ahead log deleted after a kill: acknowledged consumes
// gone from disk) judge by the same code: the test asserts ok(), the control asserts
// LostAcknowledgedConsumes(). The batch checks likewise (CheckBatches: ok() and missing > 0).
//
// And issue 4's "the usage appears on Kafka" (UsageOnKafkaE2eTest, ledgerd on its embedded Kafka):
// a consume and a batch of 1000 items over three users are on the topic as the CloudEvents the log
// holds, the batch events whole or, over the message size, with the dataref that reads them.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "daemon/config.h"
#include "http/limits.h"
#include "http/problem.h"
#include "http/stripe_signature.h"
#include "projections/registry.h"
#include "tests/support/daemon_process.h"
#include "tests/support/http_client.h"
#include "tests/support/kafka_test_consumer.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"
#include "tests/support/usage_fixtures.h"
#include "tests/support/wal_records.h"

namespace ledger::testing {
namespace {

constexpr int kCycles = 3;
constexpr int kThreads = 24;
// A cycle is killed at kCycleAcksMax acknowledgements if its random delay has not run out first.
// Why: the kill must land on a daemon under load. With a bound by time alone, a fast machine used
// the quota up mid-cycle, every client returned on its 429 and the kill hit an idle daemon, and
// the test still passed. Bounded by count, the crash cycles use at most about kCycles *
// (kCycleAcksMax + kThreads) calls (the acknowledged ones and those in flight at the kill) on any
// machine, and the limit is twice that: a 429 before a kill is a failure (Load checks it).
constexpr int kCycleAcksMax = 500;
constexpr int64_t kLimit = 2 * kCycles * (kCycleAcksMax + kThreads);
constexpr char kServiceToken[] = "e2e-gateway-token-0123456789";
constexpr char kWebhookSecret[] = "whsec_e2e_usage";
constexpr char kUser[] = "e2e-user";
constexpr char kConsume[] = "/api/v1/usage/consume";
constexpr char kEvents[] = "/api/v1/usage/events";
constexpr char kBatchUser[] = "e2e-batch-user";  // no subscription: the calendar month
constexpr int kBatchItems = 100;

struct Acked {
  std::string body_sent;
  std::string answer;
};

// What CheckConsumes found on a restarted daemon.
struct ConsumeCheckReport {
  size_t acknowledged = 0;  // consumes checked
  size_t logged = 0;        // the user's usage.recorded.v1 events
  int64_t used = -1;        // the usage counter
  size_t missing = 0;       // acknowledged consumes whose key is not in the log
  size_t not_replayed = 0;  // acknowledged keys whose re-send was not the same answer, replayed
  size_t recorded_twice = 0;
  int replay_exit = -1;     // `ledgerctl replay`
  std::vector<std::string> errors;  // the first few problems

  // A lost consume shows as a missing key, a re-send answered afresh, or a counter below what
  // was acknowledged (the counter and the log lose the same write together, so used == logged
  // alone cannot show it).
  bool LostAcknowledgedConsumes() const {
    return missing > 0 || not_replayed > 0 || used < static_cast<int64_t>(acknowledged);
  }
  bool ok() const {
    return !LostAcknowledgedConsumes() && used == static_cast<int64_t>(logged) &&
           used <= kLimit && recorded_twice == 0 && replay_exit == 0;
  }
  std::string Summary() const {
    std::string out = "acknowledged=" + std::to_string(acknowledged) +
                      " logged=" + std::to_string(logged) + " used=" + std::to_string(used) +
                      " missing=" + std::to_string(missing) +
                      " not_replayed=" + std::to_string(not_replayed) +
                      " recorded_twice=" + std::to_string(recorded_twice) +
                      " replay_exit=" + std::to_string(replay_exit);
    for (const std::string& e : errors) out += "\n  " + e;
    return out;
  }
  void Error(std::string e) {
    if (errors.size() < 8) errors.push_back(std::move(e));
  }
};

// What CheckBatches found on a restarted daemon, over both users.
struct BatchCheckReport {
  size_t accepted = 0;        // acknowledged items checked
  size_t logged = 0;          // items in the users' usage.batch_recorded.v1 events
  size_t missing = 0;         // acknowledged items whose key is not in the log
  size_t counters_off = 0;    // users whose counter is not the number of their logged items
  int replay_exit = -1;       // `ledgerctl replay`
  std::string replay_output;  // its output when it failed

  bool ok() const { return missing == 0 && counters_off == 0 && replay_exit == 0; }
  std::string Summary() const {
    return "accepted=" + std::to_string(accepted) + " logged=" + std::to_string(logged) +
           " missing=" + std::to_string(missing) + " counters_off=" +
           std::to_string(counters_off) + " replay_exit=" + std::to_string(replay_exit) +
           replay_output;
  }
};

// A usage batch of one item per (user, idempotency key).
std::string BatchBody(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string body = R"({"events":[)";
  for (size_t i = 0; i < items.size(); ++i) {
    body += std::string(i ? "," : "") + R"({"user_id":")" + items[i].first +
            R"(","service":"chat","idempotency_key":")" + items[i].second + R"("})";
  }
  return body + "]}";
}

// The same, every item for `user`.
std::string BatchBody(const std::string& user, const std::vector<std::string>& keys) {
  std::vector<std::pair<std::string, std::string>> items;
  for (const std::string& key : keys) items.emplace_back(user, key);
  return BatchBody(items);
}

std::string ConsumeBody(const std::string& key) {
  return std::string(R"({"user_id":")") + kUser + R"(","service":"chat","idempotency_key":")" +
         key + R"("})";
}

class UsageE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.data_dir = dir_.Sub("data");
    options_.log_path = dir_.Sub("ledgerd.log");
    // Kafka stays as the options say: off (DaemonOptions' default) but in UsageOnKafkaE2eTest.
    options_.env = {{"LEDGER_SERVICE_TOKENS", std::string("gateway=") + kServiceToken},
                    {"STRIPE_WEBHOOK_SECRET", kWebhookSecret}};
    daemon_ = std::make_unique<DaemonProcess>(options_);
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    admin_token_ = MintAdminToken(ReadDevSecret(options_.data_dir), "usage-admin");
  }

  TestHttpClient Admin() {
    TestHttpClient c("127.0.0.1", daemon_->port());
    c.set_bearer(admin_token_);
    return c;
  }
  TestHttpClient Service() {
    TestHttpClient c("127.0.0.1", daemon_->port());
    c.set_bearer(kServiceToken);
    return c;
  }

  // The plan, and the user on it through a signed Stripe delivery, as Stripe would send it.
  void Subscribe() {
    HttpReply plan = Admin().Post(
        "/api/v1/subscriptions/plans",
        R"({"id":"e2e","display_name":"E2E","price_monthly_cents":100,"api_calls_limit":)" +
            std::to_string(kLimit) + R"(,"services":["chat"]})");
    ASSERT_EQ(plan.status, 201) << plan.body;
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    const std::string body =
        SubscriptionDelivery(OnPlan(kUser, "e2e", now - 86400, now + 29 * 86400));
    HttpReply r = Service().Post(
        "/api/v1/billing/webhooks/stripe", body,
        {{"Stripe-Signature", http::MakeStripeSignatureHeader({kWebhookSecret}, now, body)}});
    ASSERT_EQ(r.status, 200) << r.body;
  }

  // Runs the consume load; SIGKILLs the daemon after `kill_after_ms` or at kCycleAcksMax
  // acknowledgements, whichever comes first (0: runs until every client is refused). Returns the
  // acknowledged consumes.
  std::map<std::string, Acked> Load(const std::string& tag, int kill_after_ms) {
    std::mutex mu;
    std::condition_variable acked_more;
    std::map<std::string, Acked> acked;
    std::atomic<int> unexpected{0};
    std::atomic<int> ended{0};  // clients that stopped sending (a 429, the daemon gone, an error)
    std::vector<std::thread> clients;
    for (int t = 0; t < kThreads; ++t) {
      clients.emplace_back([&, t] {
        TestHttpClient client = Service();
        for (int i = 0;; ++i) {
          const std::string key = tag + "-" + std::to_string(t) + "-" + std::to_string(i);
          const std::string body = ConsumeBody(key);
          HttpReply r = client.Post(kConsume, body);
          if (r.status == 200) {
            std::lock_guard<std::mutex> lock(mu);
            acked[key] = Acked{body, r.body};
            acked_more.notify_all();
          } else if (r.status == 429 || r.status == 0) {
            ended.fetch_add(1);
            return;  // quota used up, or the daemon is gone
          } else {
            unexpected.fetch_add(1);
            ended.fetch_add(1);
            ADD_FAILURE() << "unexpected answer " << r.status << " " << r.body;
            return;
          }
        }
      });
    }
    if (kill_after_ms > 0) {
      // The kill lands under load: after the first acknowledgement (a slow start must not turn
      // a cycle into a kill of an idle daemon), then after the delay or at kCycleAcksMax.
      WaitUntil([&] {
        std::lock_guard<std::mutex> lock(mu);
        return !acked.empty() || ended.load() > 0;
      });
      {
        std::unique_lock<std::mutex> lock(mu);
        acked_more.wait_for(lock, std::chrono::milliseconds(kill_after_ms), [&] {
          return acked.size() >= static_cast<size_t>(kCycleAcksMax) || ended.load() > 0;
        });
      }
      const int ended_before_kill = ended.load();
      daemon_->Kill();
      EXPECT_EQ(ended_before_kill, 0)
          << "clients stopped before the kill (a 429: the quota ran out mid-cycle), so it did not "
             "land under load";
    }
    for (auto& c : clients) c.join();
    EXPECT_EQ(unexpected.load(), 0);
    return acked;
  }

  // Polls `done` for up to 30 s (a client's failure is reported by the client).
  template <typename Fn>
  static void WaitUntil(Fn done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  // Calls `fn` for every event of `subject` and `type` in the log, page by page, passing
  // next_after on until it stops moving (a page filtered by type can be empty before the end).
  template <typename Fn>
  void ForEachLoggedEvent(const std::string& subject, const std::string& type, Fn fn) {
    TestHttpClient admin = Admin();
    for (uint64_t after = 0;;) {
      HttpReply r = admin.Get("/api/v1/events?subject=" + subject + "&type=" + type +
                              "&limit=1000&after=" + std::to_string(after));
      EXPECT_EQ(r.status, 200) << r.body;
      rapidjson::Document doc = r.Json();
      if (!doc.IsObject() || !doc.HasMember("events")) {
        ADD_FAILURE() << r.body;
        return;
      }
      for (const auto& e : doc["events"].GetArray()) fn(e);
      const uint64_t next_after = doc["next_after"].GetUint64();
      if (next_after == after) return;
      after = next_after;
    }
  }

  // The user's usage.recorded.v1 events in the log: their idempotency keys; `*recorded_twice`
  // counts the keys found again.
  std::set<std::string> LoggedKeys(size_t* recorded_twice) {
    std::set<std::string> keys;
    ForEachLoggedEvent(kUser, "usage.recorded.v1", [&](const rapidjson::Value& e) {
      if (!keys.insert(e["data"]["idempotency_key"].GetString()).second) ++*recorded_twice;
    });
    return keys;
  }

  int64_t CounterUsed() {
    HttpReply r = Admin().Get(std::string("/api/v1/subscriptions/admin/user-access/") + kUser);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json()["quota"]["used"].GetInt64();
  }

  // After a restart: every acknowledged consume is in the log, and re-sending its key answers the
  // same body, replayed; the counter equals the consumes the log holds (never above the limit)
  // and is at least what was acknowledged; `ledgerctl replay` agrees. The log and the counter are
  // read before the re-sends (a lost key re-sent is recorded afresh).
  ConsumeCheckReport CheckConsumes(const std::map<std::string, Acked>& acked) {
    ConsumeCheckReport report;
    report.acknowledged = acked.size();
    const std::set<std::string> logged = LoggedKeys(&report.recorded_twice);
    report.logged = logged.size();
    report.used = CounterUsed();
    TestHttpClient client = Service();
    for (const auto& [key, a] : acked) {
      if (logged.count(key) == 0) {
        ++report.missing;
        report.Error(key + ": acknowledged, not in the log");
      }
      HttpReply again = client.Post(kConsume, a.body_sent);
      if (again.status != 200 || again.body != a.answer ||
          again.Header("Idempotent-Replayed") != "true") {
        ++report.not_replayed;
        report.Error(key + ": re-sent, answered " + std::to_string(again.status) + " replayed='" +
                     again.Header("Idempotent-Replayed") + "' " + again.body);
      }
    }
    ProcessOutput replay = RunLedgerctlBinary({"replay", "--data-dir", options_.data_dir});
    report.replay_exit = replay.exit_code;
    if (replay.exit_code != 0) report.Error("ledgerctl replay: " + replay.out + replay.err);
    return report;
  }

  // Posts batches of kBatchItems items (alternating kUser and kBatchUser, fresh keys) from four
  // clients; SIGKILLs the daemon after `kill_after_ms`. Returns the acknowledged bodies and, per
  // user, the keys they had accepted.
  std::vector<std::string> BatchLoad(const std::string& tag, int kill_after_ms,
                                     std::map<std::string, std::set<std::string>>* accepted) {
    std::mutex mu;
    std::vector<std::string> bodies;
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t) {
      clients.emplace_back([&, t] {
        TestHttpClient client = Service();
        for (int i = 0;; ++i) {
          std::vector<std::pair<std::string, std::string>> items;
          for (int j = 0; j < kBatchItems; ++j) {
            const std::string key = tag + "-" + std::to_string(t) + "-" + std::to_string(i) +
                                    "-" + std::to_string(j);
            items.emplace_back(j % 2 ? kBatchUser : kUser, key);
          }
          const std::string body = BatchBody(items);
          HttpReply r = client.Post(kEvents, body);
          if (r.status == 0) return;  // the daemon is gone
          if (r.status != 200) {
            ADD_FAILURE() << "unexpected answer " << r.status << " " << r.body;
            return;
          }
          rapidjson::Document doc = r.Json();
          EXPECT_EQ(doc["accepted"].GetInt(), kBatchItems) << r.body;
          std::lock_guard<std::mutex> lock(mu);
          bodies.push_back(body);
          for (const auto& [user, key] : items) (*accepted)[user].insert(key);
        }
      });
    }
    WaitUntil([&] {
      std::lock_guard<std::mutex> lock(mu);
      return !bodies.empty();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(kill_after_ms));
    daemon_->Kill();
    for (auto& c : clients) c.join();
    return bodies;
  }

  // After a restart: every acknowledged item (`accepted`: keys per user) is in the log, each
  // user's counter equals the items the log holds, and `ledgerctl replay` agrees.
  BatchCheckReport CheckBatches(const std::map<std::string, std::set<std::string>>& accepted) {
    BatchCheckReport report;
    for (const std::string& user : {std::string(kUser), std::string(kBatchUser)}) {
      const std::set<std::string> logged = LoggedBatchKeys(user);
      report.logged += logged.size();
      auto keys = accepted.find(user);
      if (keys != accepted.end()) {
        report.accepted += keys->second.size();
        for (const std::string& key : keys->second) report.missing += logged.count(key) == 0;
      }
      if (SummaryUsed(user) != static_cast<int64_t>(logged.size())) ++report.counters_off;
    }
    ProcessOutput replay = RunLedgerctlBinary({"replay", "--data-dir", options_.data_dir});
    report.replay_exit = replay.exit_code;
    if (replay.exit_code != 0) {
      report.replay_output = "\n  ledgerctl replay: " + replay.out + replay.err;
    }
    return report;
  }

  // The keys of the user's usage.batch_recorded.v1 items in the log (each must be there once).
  std::set<std::string> LoggedBatchKeys(const std::string& user) {
    std::set<std::string> keys;
    ForEachLoggedEvent(user, "usage.batch_recorded.v1", [&](const rapidjson::Value& e) {
      EXPECT_EQ(std::string(e["data"]["user_id"].GetString()), user);
      for (const auto& item : e["data"]["items"].GetArray()) {
        const bool fresh = keys.insert(item["idempotency_key"].GetString()).second;
        EXPECT_TRUE(fresh) << "a key was recorded twice: " << item["idempotency_key"].GetString();
      }
    });
    return keys;
  }

  // GET /api/v1/usage/summary as `user`: the current window's `used`.
  int64_t SummaryUsed(const std::string& user) {
    TestHttpClient client("127.0.0.1", daemon_->port());
    client.set_bearer(MintHs256(TokenClaims::User(user, std::time(nullptr)),
                                ReadDevSecret(options_.data_dir)));
    HttpReply r = client.Get("/api/v1/usage/summary");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json()["current"]["used"].GetInt64();
  }

  TempDir dir_;
  DaemonOptions options_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::string admin_token_;
};

TEST_F(UsageE2eTest, KillNineDuringConsumeLoadKeepsCountersEqualToTheLog) {
  Subscribe();
  const uint64_t seed = std::random_device{}();
  std::printf("usage e2e seed %" PRIu64 "\n", seed);
  std::mt19937_64 rng(seed);
  std::map<std::string, Acked> acked;
  for (int cycle = 1; cycle <= kCycles; ++cycle) {
    const int kill_after_ms = std::uniform_int_distribution<int>(150, 500)(rng);
    std::map<std::string, Acked> cycle_acked = Load("c" + std::to_string(cycle), kill_after_ms);
    std::printf("cycle %d: SIGKILL after %d ms, %zu consumes acknowledged\n", cycle,
                kill_after_ms, cycle_acked.size());
    // A cycle that acknowledged nothing (the quota used up early) would check nothing new.
    EXPECT_FALSE(cycle_acked.empty()) << "cycle " << cycle << " acknowledged nothing";
    acked.insert(cycle_acked.begin(), cycle_acked.end());
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    const ConsumeCheckReport report = CheckConsumes(acked);
    std::printf("cycle %d: %s\n", cycle, report.Summary().c_str());
    EXPECT_TRUE(report.ok()) << "cycle " << cycle << ": " << report.Summary();
  }
  // The rest of the quota, then refusals: exactly kLimit in total.
  std::map<std::string, Acked> rest = Load("drain", 0);
  acked.insert(rest.begin(), rest.end());
  EXPECT_EQ(CounterUsed(), kLimit);
  size_t recorded_twice = 0;
  EXPECT_EQ(static_cast<int64_t>(LoggedKeys(&recorded_twice).size()), kLimit);
  EXPECT_EQ(recorded_twice, 0u);
  EXPECT_GE(static_cast<int64_t>(acked.size()), kLimit - 2 * kThreads * kCycles);
  HttpReply refused = Service().Post(kConsume, ConsumeBody("after-drain"));
  EXPECT_EQ(refused.status, 429) << refused.body;
  EXPECT_FALSE(refused.Header("Retry-After").empty());
  EXPECT_EQ(daemon_->Terminate(), 0);
}

// Negative control: the same checker must report consumes acknowledged and then lost. A kill and
// restart after the subscription and a few consumes (recovery flushes the log into table files:
// they survive), then one load is killed and the newest *.log (the write-ahead log holding that
// load's acknowledged consumes) is deleted. ledgerd starts on that store (it cannot tell a whole
// missing log from one never written); were it to refuse, the checker would never run, and the
// control fails rather than pass on nothing.
TEST_F(UsageE2eTest, NegativeControlDeletingTheNewestWalIsDetected) {
  Subscribe();
  std::map<std::string, Acked> survivors;
  TestHttpClient client = Service();
  for (int i = 0; i < 5; ++i) {
    const std::string key = "nc-before-" + std::to_string(i);
    HttpReply r = client.Post(kConsume, ConsumeBody(key));
    ASSERT_EQ(r.status, 200) << r.body;
    survivors[key] = Acked{ConsumeBody(key), r.body};
  }
  daemon_->Kill();
  ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
  std::map<std::string, Acked> acked = Load("nc", 300);
  ASSERT_FALSE(acked.empty());
  std::printf("negative control: %zu consumes acknowledged before the kill\n", acked.size());
  acked.insert(survivors.begin(), survivors.end());

  ASSERT_FALSE(DeleteNewestLog(options_.data_dir).empty());
  Status started = daemon_->Start();
  ASSERT_TRUE(started.ok()) << "ledgerd did not start after the WAL was deleted (exit "
                            << daemon_->exit_code() << ", " << daemon::kExitStorage
                            << " is damaged storage), so the checker never ran: "
                            << started.ToString() << "\n" << daemon_->Log();

  // Precision: the consumes acknowledged before the first restart survive, and the checker does
  // not flag them.
  const ConsumeCheckReport kept = CheckConsumes(survivors);
  EXPECT_FALSE(kept.LostAcknowledgedConsumes()) << kept.Summary();
  const ConsumeCheckReport report = CheckConsumes(acked);
  std::printf("negative control: %s\n", report.Summary().c_str());
  EXPECT_TRUE(report.LostAcknowledgedConsumes()) << report.Summary();
  EXPECT_GT(report.missing, 0u) << report.Summary();
  EXPECT_GT(report.not_replayed, 0u) << report.Summary();
  EXPECT_LT(report.used, static_cast<int64_t>(report.acknowledged)) << report.Summary();
  EXPECT_FALSE(report.ok());
  daemon_->Kill();
}

TEST_F(UsageE2eTest, KillNineDuringBatchIngestKeepsCountersEqualToTheLog) {
  Subscribe();
  const uint64_t seed = std::random_device{}();
  std::printf("usage e2e batch seed %" PRIu64 "\n", seed);
  std::mt19937_64 rng(seed);
  std::map<std::string, std::set<std::string>> accepted;
  std::vector<std::string> bodies;
  for (int cycle = 1; cycle <= 2; ++cycle) {
    const int kill_after_ms = std::uniform_int_distribution<int>(150, 400)(rng);
    std::vector<std::string> acked =
        BatchLoad("b" + std::to_string(cycle), kill_after_ms, &accepted);
    std::printf("batch cycle %d: SIGKILL after %d ms, %zu batches acknowledged\n", cycle,
                kill_after_ms, acked.size());
    EXPECT_FALSE(acked.empty()) << "batch cycle " << cycle << " acknowledged nothing";
    bodies.insert(bodies.end(), acked.begin(), acked.end());
    ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
    const BatchCheckReport report = CheckBatches(accepted);
    std::printf("batch cycle %d: %s\n", cycle, report.Summary().c_str());
    EXPECT_TRUE(report.ok()) << "batch cycle " << cycle << ": " << report.Summary();
  }
  ASSERT_FALSE(bodies.empty());
  HttpReply again = Service().Post(kEvents, bodies.front());
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.Json()["duplicates"].GetInt(), kBatchItems);
  EXPECT_EQ(daemon_->Terminate(), 0);
}

// Negative control of the batch test: CheckBatches must report items acknowledged and then lost.
// As for consumes: batches acknowledged before a kill and restart (recovery flushes them into
// table files) survive; a batch load is killed and the newest *.log, holding its acknowledged
// items, is deleted; ledgerd starts on the store, and the checker finds items missing.
TEST_F(UsageE2eTest, NegativeControlBatchDeletingTheNewestWalIsDetected) {
  Subscribe();
  std::map<std::string, std::set<std::string>> survivors;
  TestHttpClient client = Service();
  for (const std::string& user : {std::string(kUser), std::string(kBatchUser)}) {
    const std::vector<std::string> keys = {"nc-before-" + user + "-1", "nc-before-" + user + "-2"};
    HttpReply r = client.Post(kEvents, BatchBody(user, keys));
    ASSERT_EQ(r.status, 200) << r.body;
    survivors[user].insert(keys.begin(), keys.end());
  }
  daemon_->Kill();
  ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
  std::map<std::string, std::set<std::string>> accepted = survivors;
  const std::vector<std::string> acked = BatchLoad("nc", 300, &accepted);
  ASSERT_FALSE(acked.empty());
  std::printf("negative control: %zu batches acknowledged before the kill\n", acked.size());

  ASSERT_FALSE(DeleteNewestLog(options_.data_dir).empty());
  Status started = daemon_->Start();
  ASSERT_TRUE(started.ok()) << "ledgerd did not start after the WAL was deleted (exit "
                            << daemon_->exit_code() << "), so the checker never ran: "
                            << started.ToString() << "\n" << daemon_->Log();

  // Precision: the items acknowledged before the first restart survive, and are not flagged.
  const BatchCheckReport kept = CheckBatches(survivors);
  EXPECT_EQ(kept.missing, 0u) << kept.Summary();
  const BatchCheckReport report = CheckBatches(accepted);
  std::printf("negative control: %s\n", report.Summary().c_str());
  EXPECT_GT(report.missing, 0u) << report.Summary();
  EXPECT_FALSE(report.ok());
  daemon_->Kill();
}

// Issue 4's "the usage appears on Kafka": ledgerd on its embedded Kafka, with a message size that
// a batch event of most of 1000 items exceeds (published with dataref) and one of 50 does not.
class UsageOnKafkaE2eTest : public UsageE2eTest {
 protected:
  static constexpr size_t kMessageBytesMax = 64 * 1024;

  UsageOnKafkaE2eTest() {
    options_.kafka_brokers = "";  // not passed: the default, embedded
    options_.args = {"--kafka-message-max-bytes", std::to_string(kMessageBytesMax)};
  }
};

// The idempotency keys of a usage event's data: its one key (usage.recorded.v1), or its items'.
std::vector<std::string> UsageKeys(const rapidjson::Value& data) {
  std::vector<std::string> keys;
  if (!data.IsObject()) return keys;
  if (data.HasMember("idempotency_key")) keys.push_back(data["idempotency_key"].GetString());
  if (data.HasMember("items")) {
    for (const auto& item : data["items"].GetArray()) {
      keys.push_back(item["idempotency_key"].GetString());
    }
  }
  return keys;
}

// One consume and one batch of 1000 items (700, 250 and 50 for three users, interleaved), then the
// whole topic: every position arrives (CheckDelivery); the consume's usage.recorded.v1 has the id,
// position and subject GET /api/v1/events gives it and the key in its data; each user's
// usage.batch_recorded.v1 events are those of the log, and their items -- from `data`, or from
// the `dataref` (GET /api/v1/events at that position: the same event) of one over the message
// size -- hold exactly the keys sent for that user.
TEST_F(UsageOnKafkaE2eTest, ConsumedAndBatchedUsageAppearsOnKafka) {
  const std::string bootstrap = daemon_->kafka_bootstrap();
  ASSERT_FALSE(bootstrap.empty()) << daemon_->Log();
  Subscribe();
  const std::string consumed_key = "kafka-consume-1";
  HttpReply consumed = Service().Post(kConsume, ConsumeBody(consumed_key));
  ASSERT_EQ(consumed.status, 200) << consumed.body;

  const std::string third_user = "e2e-third-user";
  std::vector<std::pair<std::string, std::string>> items;
  std::map<std::string, std::set<std::string>> sent;  // user -> keys
  for (int i = 0; i < 1000; ++i) {
    const std::string user =
        i % 20 < 14 ? std::string(kUser) : i % 20 < 19 ? std::string(kBatchUser) : third_user;
    items.emplace_back(user, "kafka-batch-" + std::to_string(i));
    sent[user].insert(items.back().second);
  }
  HttpReply batch = Service().Post(kEvents, BatchBody(items));
  ASSERT_EQ(batch.status, 200) << batch.body;
  ASSERT_EQ(batch.Json()["accepted"].GetInt(), 1000) << batch.body;

  // What the log says.
  struct Logged {
    uint64_t position = 0;
    std::string subject;
    std::string hash;
  };
  std::map<std::string, Logged> logged;  // usage events by id
  std::string consumed_id;
  ForEachLoggedEvent(kUser, "usage.recorded.v1", [&](const rapidjson::Value& e) {
    if (UsageKeys(e["data"]) != std::vector<std::string>{consumed_key}) return;
    consumed_id = e["id"].GetString();
    logged[consumed_id] = {e["position"].GetUint64(), e["subject"].GetString(),
                           e["hash"].GetString()};
  });
  ASSERT_FALSE(consumed_id.empty()) << "the consume is not in the log";
  std::map<std::string, std::set<std::string>> batch_ids_logged;  // user -> event ids
  for (const auto& user_keys : sent) {
    const std::string& user = user_keys.first;
    ForEachLoggedEvent(user, "usage.batch_recorded.v1", [&](const rapidjson::Value& e) {
      logged[e["id"].GetString()] = {e["position"].GetUint64(), e["subject"].GetString(),
                                     e["hash"].GetString()};
      batch_ids_logged[user].insert(e["id"].GetString());
    });
  }
  HttpReply head = Admin().Get("/api/v1/audit/head");
  ASSERT_EQ(head.status, 200) << head.body;
  const uint64_t head_position = head.Json()["position"].GetUint64();

  // What Kafka has.
  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(bootstrap, "ledger.events", &consumer).ok());
  ASSERT_TRUE(consumer->ConsumeDistinct(head_position, std::chrono::seconds(60)))
      << "distinct CloudEvents seen: " << consumer->distinct_ids() << " of " << head_position;
  const DeliveryReport delivery = CheckDelivery(consumer->records(), 1, head_position);
  EXPECT_TRUE(delivery.ok()) << delivery.Summary();
  bool consume_on_kafka = false;
  std::map<std::string, std::set<std::string>> batch_ids_on_kafka;  // user -> event ids
  std::map<std::string, std::set<std::string>> keys_on_kafka;       // user -> item keys
  size_t with_data = 0, with_dataref = 0;
  TestHttpClient admin = Admin();
  for (const ConsumedRecord& record : consumer->records()) {
    CloudEventFields fields;
    const std::vector<std::string> problems = ValidateCloudEventRecord(record, "", &fields);
    ASSERT_TRUE(problems.empty()) << problems.front() << "\n" << record.value.substr(0, 500);
    if (fields.type != "usage.recorded.v1" && fields.type != "usage.batch_recorded.v1") continue;
    auto in_log = logged.find(fields.id);
    ASSERT_TRUE(in_log != logged.end()) << "not in the log: " << record.value.substr(0, 500);
    EXPECT_EQ(fields.position, in_log->second.position) << fields.id;
    EXPECT_EQ(fields.subject, in_log->second.subject) << fields.id;
    EXPECT_EQ(fields.hash, in_log->second.hash) << fields.id;
    rapidjson::Document data;
    if (fields.dataref.empty()) {
      ++with_data;
      data.Parse(fields.data.c_str());
    } else {
      // The claim check reads the same event from the log.
      ++with_dataref;
      EXPECT_EQ(fields.dataref,
                "/api/v1/events?after=" + std::to_string(fields.position - 1) + "&limit=1");
      HttpReply r = admin.Get(fields.dataref);
      ASSERT_EQ(r.status, 200) << r.body;
      rapidjson::Document page = r.Json();
      ASSERT_TRUE(page.IsObject() && page["events"].IsArray() && page["events"].Size() == 1)
          << r.body.substr(0, 500);
      const rapidjson::Value& event = page["events"].GetArray()[0];
      EXPECT_EQ(std::string(event["id"].GetString()), fields.id);
      data.CopyFrom(event["data"], data.GetAllocator());
    }
    ASSERT_TRUE(data.IsObject()) << record.value.substr(0, 500);
    EXPECT_EQ(std::string(data["user_id"].GetString()), fields.subject);
    if (fields.type == "usage.recorded.v1") {
      consume_on_kafka = true;
      EXPECT_EQ(fields.id, consumed_id);
      EXPECT_EQ(fields.subject, kUser);
      EXPECT_EQ(UsageKeys(data), std::vector<std::string>{consumed_key}) << fields.data;
      continue;
    }
    if (fields.subject == kUser) {
      EXPECT_EQ(std::string(data["plan_id"].GetString()), "e2e");
    }
    batch_ids_on_kafka[fields.subject].insert(fields.id);
    for (const std::string& key : UsageKeys(data)) keys_on_kafka[fields.subject].insert(key);
  }
  EXPECT_TRUE(consume_on_kafka) << "no usage.recorded.v1 with id " << consumed_id << " on Kafka";
  EXPECT_EQ(batch_ids_on_kafka, batch_ids_logged);
  for (const auto& [user, keys] : sent) {
    EXPECT_EQ(keys_on_kafka[user], keys) << user << ": " << keys_on_kafka[user].size() << " of "
                                         << keys.size() << " keys on Kafka";
  }
  // Both ways of publishing were seen: the 700-item event over the message size, the 50-item one
  // and the consume under it.
  std::printf("usage on Kafka: %zu records with data, %zu with dataref\n", with_data, with_dataref);
  EXPECT_GE(with_dataref, 1u);
  EXPECT_GE(with_data, 2u);
  consumer.reset();
  EXPECT_EQ(daemon_->Terminate(), 0);
}

// ForEachLoggedEvent reads until next_after stops moving, as the README tells clients to: a page
// filtered by type looks at most kEventsExaminedMax positions past `after`, so it can be empty
// long before the log ends. The helper stopped at the first empty page: behind that many other
// events, the items of a batch were never read, and the checks above would count them missing.
TEST_F(UsageE2eTest, LoggedEventsAreReadPastAnEmptyTypeFilteredPage) {
  EXPECT_EQ(daemon_->Terminate(), 0);
  {
    LedgerOptions options;
    options.path = options_.data_dir;
    options.folds = projections::AllFolds();  // ledgerd's: none of them catches up at its start
    std::unique_ptr<Ledger> ledger = OpenTestLedger(options);
    ASSERT_NE(ledger, nullptr);
    constexpr size_t kPerCommand = 1000;
    for (size_t n = 0; n <= http::limits::kEventsExaminedMax; n += kPerCommand) {
      AppendCommand filler("filler", kPerCommand, "test.filler.v1");
      ASSERT_TRUE(ledger->Submit(&filler).status.ok());
    }
  }
  ASSERT_TRUE(daemon_->Start().ok()) << daemon_->Log();
  const std::vector<std::string> keys = {"past-1", "past-2", "past-3"};
  HttpReply r = Service().Post(kEvents, BatchBody(kBatchUser, keys));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(LoggedBatchKeys(kBatchUser), std::set<std::string>(keys.begin(), keys.end()));
  EXPECT_EQ(daemon_->Terminate(), 0);
}

}  // namespace
}  // namespace ledger::testing
