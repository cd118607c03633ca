// `ledgerctl bench http`'s load generator (tools/bench_http.h) against a local cpp-httplib server
// that records what it receives: the requests are well-formed consume calls with fresh keys, the
// open loop offers the rate asked for, answers are counted by status, and a server that closes
// connections costs reconnects, not the run.
#include "tools/bench_http.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <rapidjson/document.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "tests/support/local_server.h"

namespace ledger::tools {
namespace {

class FakeConsumeServer {
 public:
  explicit FakeConsumeServer(bool close_every_third = false) {
    server_.Post("/api/v1/usage/consume", [this, close_every_third](const httplib::Request& req,
                                                                     httplib::Response& res) {
      const uint64_t n = ++requests_;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (req.get_header_value("Authorization") != "Bearer tok") ++bad_auth_;
        if (req.get_header_value("Content-Type") != "application/json") ++bad_type_;
        const std::string marker = "\"idempotency_key\":\"";
        const size_t at = req.body.find(marker);
        if (at == std::string::npos ||
            req.body.find("\"user_id\":\"u1\"") == std::string::npos ||
            req.body.find("\"service\":\"chat\"") == std::string::npos) {
          ++bad_body_;
        } else {
          const size_t from = at + marker.size();
          keys_.insert(req.body.substr(from, req.body.find('"', from) - from));
        }
      }
      if (close_every_third && n % 3 == 0) res.set_header("Connection", "close");
      // Every fifth answer is a refusal, as quota_exceeded would be.
      res.status = n % 5 == 0 ? 429 : 200;
      res.set_content("{\"allowed\":true}", "application/json");
    });
    server_.new_task_queue = [] { return new httplib::ThreadPool(32); };
    local_ = std::make_unique<testing::LocalServer>(&server_);
  }
  std::string url() const { return local_->url(); }
  uint64_t requests() const { return requests_.load(); }
  size_t distinct_keys() {
    std::lock_guard<std::mutex> lock(mu_);
    return keys_.size();
  }
  int bad() {
    std::lock_guard<std::mutex> lock(mu_);
    return bad_auth_ + bad_type_ + bad_body_;
  }

 private:
  httplib::Server server_;
  std::atomic<uint64_t> requests_{0};
  std::mutex mu_;
  std::set<std::string> keys_;  // guarded by mu_
  int bad_auth_ = 0, bad_type_ = 0, bad_body_ = 0;  // guarded by mu_
  std::unique_ptr<testing::LocalServer> local_;  // last: stopped before the rest goes
};

HttpBenchOptions Options(const std::string& url) {
  HttpBenchOptions o;
  o.url = url;
  o.token = "tok";
  o.user_id = "u1";
  o.service = "chat";
  o.connections = 8;
  o.seconds = 1;
  o.warmup_seconds = 0.2;
  return o;
}

TEST(HttpBenchTest, OpenLoopOffersTheRateWithWellFormedRequestsAndFreshKeys) {
  FakeConsumeServer server;
  HttpBenchOptions o = Options(server.url());
  o.rate = 400;
  HttpBenchResult r;
  Status s = RunHttpBench(o, &r);
  ASSERT_TRUE(s.ok()) << s.ToString();
  // 1 s measured at 400/s (due times are exact, so the count is too, give or take the edges).
  EXPECT_NEAR(static_cast<double>(r.requests), 400, 2);
  EXPECT_NEAR(r.achieved_rate, 400, 2);
  EXPECT_EQ(r.ok + r.refused, r.requests);
  EXPECT_NEAR(static_cast<double>(r.refused), static_cast<double>(r.requests) / 5, 6);
  EXPECT_EQ(r.transport_errors, 0u);
  // Warm-up requests were sent too (0.2 s at 400/s), just not measured.
  EXPECT_NEAR(static_cast<double>(server.requests()), 480, 3);
  EXPECT_EQ(server.distinct_keys(), server.requests());
  EXPECT_EQ(server.bad(), 0);
  EXPECT_GT(r.p50_ms, 0);
  EXPECT_LE(r.p50_ms, r.p99_ms);
  EXPECT_LE(r.p99_ms, r.max_ms);
  EXPECT_EQ(r.offered_rate, 400);
}

TEST(HttpBenchTest, ClosedLoopSendsBackToBackAndSurvivesClosedConnections) {
  FakeConsumeServer server(/*close_every_third=*/true);
  HttpBenchOptions o = Options(server.url());
  o.rate = 0;
  o.seconds = 0.5;
  HttpBenchResult r;
  Status s = RunHttpBench(o, &r);
  ASSERT_TRUE(s.ok()) << s.ToString();
  // Back to back past the closes: more than three requests per connection, so connections the
  // server closed were opened again. Not a speed bound: on a loaded CI machine "over 100 in
  // 0.5 s" once saw 94.
  EXPECT_GT(r.requests, 3u * o.connections)
      << "server saw " << server.requests() << ", transport errors " << r.transport_errors;
  EXPECT_EQ(r.ok + r.refused, r.requests);
  EXPECT_EQ(r.transport_errors, 0u);
  EXPECT_EQ(server.distinct_keys(), server.requests());
  EXPECT_EQ(server.bad(), 0);
}

// Records POST /api/v1/usage/events bodies; answers each with every item but the last accepted.
class FakeBatchServer {
 public:
  FakeBatchServer() {
    server_.Post("/api/v1/usage/events", [this](const httplib::Request& req,
                                                httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      ++requests_;
      rapidjson::Document doc;
      doc.Parse(req.body.c_str());
      if (req.get_header_value("Authorization") != "Bearer tok" || doc.HasParseError() ||
          !doc.IsObject() || !doc.HasMember("events") || !doc["events"].IsArray()) {
        ++bad_;
        res.status = 400;
        return;
      }
      const auto& events = doc["events"].GetArray();
      sizes_.insert(events.Size());
      for (const auto& item : events) {
        if (!item.IsObject() || !item.HasMember("user_id") || !item.HasMember("idempotency_key") ||
            !item.HasMember("service") || !item["service"].IsString() ||
            std::string_view(item["service"].GetString()) != "chat" ||
            !item.HasMember("quantity") || !item["quantity"].IsInt() ||
            item["quantity"].GetInt() != 1) {
          ++bad_;
          continue;
        }
        users_.insert(item["user_id"].GetString());
        keys_.insert(item["idempotency_key"].GetString());
        ++items_;
      }
      const size_t accepted = events.Size() - 1;
      res.set_content("{\"results\":[{\"index\":0,\"status\":\"accepted\"}],\"accepted\":" +
                          std::to_string(accepted) + ",\"duplicates\":1,\"invalid\":0}",
                      "application/json");
    });
    local_ = std::make_unique<testing::LocalServer>(&server_);
  }
  std::string url() const { return local_->url(); }

  httplib::Server server_;
  std::mutex mu_;
  uint64_t requests_ = 0, items_ = 0, bad_ = 0;  // guarded by mu_
  std::set<size_t> sizes_;                       // guarded by mu_
  std::set<std::string> users_, keys_;           // guarded by mu_
  std::unique_ptr<testing::LocalServer> local_;  // last: stopped before the rest goes
};

TEST(HttpBenchTest, BatchModeSendsFreshItemsForEveryUserAndCountsWhatTheAnswersAccepted) {
  FakeBatchServer server;
  HttpBenchOptions o = Options(server.url());
  o.batch = 50;
  o.batch_users = 7;
  o.connections = 2;
  o.seconds = 0.5;
  HttpBenchResult r;
  Status s = RunHttpBench(o, &r);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_GT(r.requests, 10u);
  EXPECT_EQ(r.ok, r.requests);
  // The answers' "accepted" counts (49 of 50 items each), not the items sent.
  EXPECT_EQ(r.items_accepted, r.ok * 49);
  EXPECT_DOUBLE_EQ(r.items_rate, static_cast<double>(r.items_accepted) / o.seconds);
  std::lock_guard<std::mutex> lock(server.mu_);
  EXPECT_EQ(server.bad_, 0u);
  EXPECT_EQ(server.sizes_, (std::set<size_t>{50}));
  EXPECT_EQ(server.items_, server.requests_ * 50);
  EXPECT_EQ(server.keys_.size(), server.items_);  // every key fresh, across requests too
  std::set<std::string> users;
  for (int u = 0; u < 7; ++u) users.insert("u1-" + std::to_string(u));
  EXPECT_EQ(server.users_, users);
  EXPECT_NE(FormatHttpBenchReport(o, r).find("accepted"), std::string::npos);
}

TEST(HttpBenchTest, UnreachableServerAndBadOptionsAreErrors) {
  HttpBenchResult r;
  HttpBenchOptions o = Options("http://127.0.0.1:1");
  EXPECT_FALSE(RunHttpBench(o, &r).ok());
  o = Options("127.0.0.1:8084");  // no scheme
  EXPECT_TRUE(RunHttpBench(o, &r).problem() == "bad_bench_options");
  o = Options("http://127.0.0.1:8084/api");  // a path
  EXPECT_TRUE(RunHttpBench(o, &r).problem() == "bad_bench_options");
  o = Options("http://127.0.0.1:8084");
  o.connections = 0;
  EXPECT_TRUE(RunHttpBench(o, &r).problem() == "bad_bench_options");
  o = Options("http://127.0.0.1:8084");
  o.batch = 1001;  // more than a batch request may hold
  EXPECT_TRUE(RunHttpBench(o, &r).problem() == "bad_bench_options");
  o = Options("http://127.0.0.1:8084");
  o.batch = 10;
  o.batch_users = 0;
  EXPECT_TRUE(RunHttpBench(o, &r).problem() == "bad_bench_options");
}

}  // namespace
}  // namespace ledger::tools
