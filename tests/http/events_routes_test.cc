// GET /api/v1/events, GET /api/v1/audit/head, /livez, /readyz and /metrics over HTTP against a
// real Ledger in a temporary directory.
#include <gtest/gtest.h>

#include "http/limits.h"
#include "http/routes.h"
#include "tests/support/fault_fs.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using testing::AppendCommand;
using testing::HttpReply;
using testing::MintHs256;
using testing::TempDir;
using testing::TestHttpClient;
using testing::TestHttpStack;
using testing::TokenClaims;

constexpr int64_t kNowS = 1'800'000'000;

class LedgerRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LedgerOptions options;
    options.path = dir_.Sub("db");
    options.clock = &clock_;
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    context_.ledger = ledger_.get();
    context_.clock = &clock_;
    context_.request_metrics = &stack_.metrics;
  }
  void StartServer() {
    RouteTable routes;
    AddOpsRoutes(context_, &routes);
    AddEventsRoutes(context_, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = testing::kTestHs256Secret;
    auth.service_tokens = {{"gateway", "svc-gateway-token"}};
    Status s = stack_.Start(std::move(routes), auth, &clock_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    admin_ = std::make_unique<TestHttpClient>("127.0.0.1", stack_.port());
    admin_->set_bearer(MintHs256(TokenClaims::Admin("root", kNowS), testing::kTestHs256Secret));
  }
  void Append(const std::string& subject, size_t count, const std::string& type = "test.appended.v1") {
    AppendCommand command(subject, count, type);
    CommandResult result = ledger_->Submit(&command);
    ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  }
  static std::vector<uint64_t> Positions(const HttpReply& r) {
    std::vector<uint64_t> positions;
    auto doc = r.Json();
    for (const auto& e : doc["events"].GetArray()) positions.push_back(e["position"].GetUint64());
    return positions;
  }

  TempDir dir_;
  ManualClock clock_{kNowS * 1000000};
  testing::FaultEnv fault_;  // for a ledger reopened on it; outlives ledger_
  std::unique_ptr<Ledger> ledger_;
  AppContext context_;
  TestHttpStack stack_;
  std::unique_ptr<TestHttpClient> admin_;
};

// Appends `count` events of about `bytes` bytes of data each.
class BigEventsCommand : public Command {
 public:
  BigEventsCommand(size_t count, size_t bytes) : count_(count), bytes_(bytes) {}
  Status Decide(const DecideContext&, Decision* decision) override {
    for (size_t i = 0; i < count_; ++i) {
      decision->events.push_back(
          NewEvent{"test.big.v1", "big", "{\"pad\":\"" + std::string(bytes_, 'x') + "\"}"});
    }
    decision->body = "{}";
    return Status::OK();
  }

 private:
  size_t count_, bytes_;
};

// limit=1000 of events of up to 1 MiB would be a 1 GiB answer: a page stops at
// limits::kEventsPageBytesMax (at least one event), and next_after continues where it stopped.
TEST_F(LedgerRoutesTest, EventsPagesAreBoundedInBytes) {
  const size_t kBytes = 900 * 1024;
  const size_t kCount = 2 * limits::kEventsPageBytesMax / kBytes + 2;  // over two pages' worth
  for (size_t i = 0; i < kCount; ++i) {
    BigEventsCommand command(1, kBytes);
    ASSERT_TRUE(ledger_->Submit(&command).status.ok());
  }
  Append("alice", 2);
  StartServer();
  std::vector<uint64_t> seen;
  uint64_t after = 0;
  int pages = 0;
  for (; pages < 20; ++pages) {
    HttpReply r = admin_->Get("/api/v1/events?limit=1000&after=" + std::to_string(after));
    ASSERT_EQ(r.status, 200) << r.body.substr(0, 200);
    EXPECT_LE(r.body.size(), limits::kEventsPageBytesMax);
    std::vector<uint64_t> positions = Positions(r);
    seen.insert(seen.end(), positions.begin(), positions.end());
    const uint64_t next = r.Json()["next_after"].GetUint64();
    if (positions.empty()) {
      EXPECT_EQ(next, after);
      break;
    }
    EXPECT_EQ(next, positions.back());
    after = next;
  }
  EXPECT_GE(pages, 3);  // the big events took at least three pages
  std::vector<uint64_t> all(kCount + 2);
  for (size_t i = 0; i < all.size(); ++i) all[i] = i + 1;
  EXPECT_EQ(seen, all);  // every event exactly once, in order
  // One event bigger than what is left of a page still comes alone rather than not at all.
  HttpReply one = admin_->Get("/api/v1/events?limit=1000&after=" + std::to_string(kCount - 1));
  ASSERT_EQ(one.status, 200);
  EXPECT_EQ(Positions(one), (std::vector<uint64_t>{kCount, kCount + 1, kCount + 2}));
}

TEST_F(LedgerRoutesTest, EventsOldestFirstWithPaging) {
  Append("alice", 3);
  Append("bob", 2, "test.other.v1");
  Append("alice", 1);
  StartServer();
  HttpReply r = admin_->Get("/api/v1/events");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  EXPECT_EQ(r.Header("X-Ledger-Position"), "6");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{1, 2, 3, 4, 5, 6}));
  auto doc = r.Json();
  EXPECT_EQ(doc["next_after"].GetUint64(), 6u);
  const auto& first = doc["events"][0];
  EXPECT_STREQ(first["type"].GetString(), "test.appended.v1");
  EXPECT_STREQ(first["subject"].GetString(), "alice");
  EXPECT_EQ(first["data"]["n"].GetInt(), 1);
  EXPECT_EQ(std::string(first["prev_hash"].GetString()), std::string(64, '0'));
  EXPECT_STREQ(doc["events"][1]["prev_hash"].GetString(), first["hash"].GetString());
  EXPECT_STREQ(first["time"].GetString(), "2027-01-15T08:00:00.000000Z");

  r = admin_->Get("/api/v1/events?after=2&limit=2");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), 4u);
  r = admin_->Get("/api/v1/events?after=6");
  EXPECT_TRUE(Positions(r).empty());
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), 6u);
  EXPECT_EQ(r.Header("X-Ledger-Position"), "6");
  // A cursor past the end is not this log's: 409 naming the head, not an empty page forever.
  r = admin_->Get("/api/v1/events?after=1000000");
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(r.Header("Content-Type"), "application/problem+json");
  EXPECT_STREQ(r.Json()["code"].GetString(), "after_past_head");
  EXPECT_NE(r.body.find("ends at 6"), std::string::npos) << r.body;
}

TEST_F(LedgerRoutesTest, EventsFilters) {
  Append("alice", 2);
  Append("bob", 2, "test.other.v1");
  Append("alice", 1, "test.other.v1");
  StartServer();
  HttpReply r = admin_->Get("/api/v1/events?subject=alice");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{1, 2, 5}));
  r = admin_->Get("/api/v1/events?type=test.other.v1");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{3, 4, 5}));
  r = admin_->Get("/api/v1/events?subject=alice&type=test.other.v1");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{5}));
  // A short filtered page lets the next poll start at the head, not at the last match.
  r = admin_->Get("/api/v1/events?subject=bob");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), 5u);
  r = admin_->Get("/api/v1/events?subject=nobody");
  EXPECT_TRUE(Positions(r).empty());
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), 5u);
  // A full page continues from its last event.
  r = admin_->Get("/api/v1/events?type=test.other.v1&limit=2");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{3, 4}));
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), 4u);
}

TEST_F(LedgerRoutesTest, ARareTypeEndsThePageAfterTheExaminedBound) {
  const uint64_t bound = limits::kEventsExaminedMax;
  for (uint64_t appended = 0; appended < bound + 10; appended += 10000) Append("alice", 10000);
  Append("bob", 1, "test.rare.v1");
  const uint64_t rare = (bound + 10 + 9999) / 10000 * 10000 + 1;
  StartServer();
  // The first page examines `bound` positions, finds nothing and says where to go on.
  HttpReply r = admin_->Get("/api/v1/events?type=test.rare.v1");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(Positions(r).empty());
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), bound);
  r = admin_->Get("/api/v1/events?type=test.rare.v1&after=" + std::to_string(bound));
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{rare}));
  EXPECT_EQ(r.Json()["next_after"].GetUint64(), rare);
  // Unfiltered, and by subject alone, pages are bounded by `limit` only.
  r = admin_->Get("/api/v1/events?subject=bob");
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{rare}));
  r = admin_->Get("/api/v1/events?after=" + std::to_string(rare - 2));
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{rare - 1, rare}));
}

TEST_F(LedgerRoutesTest, EventsBadParametersAre400) {
  StartServer();
  for (const char* query : {"?after=-1", "?after=abc", "?after=1.5", "?after=99999999999999999999999",
                            "?limit=0", "?limit=1001", "?limit=x", "?after=1&after=2"}) {
    HttpReply r = admin_->Get(std::string("/api/v1/events") + query);
    EXPECT_EQ(r.status, 400) << query << " " << r.body;
    EXPECT_EQ(r.Header("Content-Type"), "application/problem+json");
    EXPECT_STREQ(r.Json()["code"].GetString(), "invalid_parameter") << query;
  }
  EXPECT_EQ(admin_->Get("/api/v1/events?limit=1000").status, 200);
  EXPECT_EQ(admin_->Get("/api/v1/events?subject=" + std::string(300, 'a')).status, 400);
}

TEST_F(LedgerRoutesTest, EventsAndAuditAreAdminOnly) {
  StartServer();
  TestHttpClient client("127.0.0.1", stack_.port());
  for (const char* path : {"/api/v1/events", "/api/v1/audit/head"}) {
    client.set_bearer("");
    EXPECT_EQ(client.Get(path).status, 401) << path;
    client.set_bearer(MintHs256(TokenClaims::User("alice", kNowS), testing::kTestHs256Secret));
    EXPECT_EQ(client.Get(path).status, 403) << path;
    client.set_bearer("svc-gateway-token");
    EXPECT_EQ(client.Get(path).status, 403) << path;
  }
}

TEST_F(LedgerRoutesTest, AuditHead) {
  StartServer();
  HttpReply r = admin_->Get("/api/v1/audit/head");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.body, R"({"position":0,"hash":")" + std::string(64, '0') + R"("})");
  EXPECT_EQ(r.Header("X-Ledger-Position"), "0");
  Append("alice", 4);
  r = admin_->Get("/api/v1/audit/head");
  ASSERT_EQ(r.status, 200) << r.body;
  auto doc = r.Json();
  EXPECT_EQ(doc["position"].GetUint64(), 4u);
  EXPECT_EQ(std::string(doc["hash"].GetString()), HexEncode(ledger_->HeadHash()));
  EXPECT_EQ(r.Header("X-Ledger-Position"), "4");
}

TEST_F(LedgerRoutesTest, LivezAndReadyz) {
  Append("alice", 2);
  StartServer();
  TestHttpClient anonymous("127.0.0.1", stack_.port());
  HttpReply r = anonymous.Get("/livez");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"status":"ok"})");
  r = anonymous.Get("/readyz");
  ASSERT_EQ(r.status, 200) << r.body;
  auto doc = r.Json();
  EXPECT_STREQ(doc["status"].GetString(), "ready");
  EXPECT_STREQ(doc["storage"]["state"].GetString(), "open");
  EXPECT_EQ(doc["storage"]["head_position"].GetUint64(), 2u);
  EXPECT_STREQ(doc["outbox"]["state"].GetString(), "disabled");
  EXPECT_EQ(doc["outbox"]["lag"].GetUint64(), 0u);
  EXPECT_TRUE(doc["outbox"]["last_error"].IsNull());
  EXPECT_EQ(r.Header("X-Ledger-Position"), "2");
}

// After a failed fsync the store stays degraded until a restart (README "Storage failures"):
// /readyz answers 503 with storage.state "degraded", /livez still 200, and reads are served.
TEST_F(LedgerRoutesTest, ADegradedStoreIsLiveButNotReady) {
  Append("alice", 2);
  ledger_.reset();
  LedgerOptions options;
  options.path = dir_.Sub("db");
  options.clock = &clock_;
  options.env = fault_.env();
  ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
  context_.ledger = ledger_.get();
  fault_.fs()->SetFailSyncs(true);
  AppendCommand command("bob", 1);
  EXPECT_EQ(ledger_->Submit(&command).status.problem(), "storage_degraded");
  fault_.fs()->SetFailSyncs(false);
  StartServer();
  TestHttpClient anonymous("127.0.0.1", stack_.port());
  EXPECT_EQ(anonymous.Get("/livez").status, 200);
  HttpReply r = anonymous.Get("/readyz");
  EXPECT_EQ(r.status, 503) << r.body;
  auto doc = r.Json();
  EXPECT_STREQ(doc["status"].GetString(), "not_ready");
  EXPECT_STREQ(doc["storage"]["state"].GetString(), "degraded");
  EXPECT_EQ(doc["storage"]["head_position"].GetUint64(), 2u);
  r = admin_->Get("/api/v1/events");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Positions(r), (std::vector<uint64_t>{1, 2}));
}

TEST_F(LedgerRoutesTest, ReadyzReportsTheOutboxAndAMissingStore) {
  context_.outbox_status = [] {
    OutboxStatus s;
    s.enabled = true;
    s.state = "down";
    s.published_position = 1;
    s.lag_events = 41;
    s.last_error = "kafka down: 1/1 brokers are down (kafka:9092)";
    return s;
  };
  StartServer();
  TestHttpClient anonymous("127.0.0.1", stack_.port());
  HttpReply r = anonymous.Get("/readyz");
  EXPECT_EQ(r.status, 200) << "a Kafka outage does not block appends";
  auto doc = r.Json();
  EXPECT_STREQ(doc["outbox"]["state"].GetString(), "down");
  EXPECT_EQ(doc["outbox"]["lag"].GetUint64(), 41u);
  EXPECT_TRUE(doc["outbox"]["enabled"].GetBool());
  // Why, as the sinks say theirs.
  EXPECT_STREQ(doc["outbox"]["last_error"].GetString(),
               "kafka down: 1/1 brokers are down (kafka:9092)");

  AppContext closed;
  RouteTable routes;
  AddOpsRoutes(closed, &routes);
  httplib::Request req;
  httplib::Response res;
  routes.routes()[1].handler(req, res, Identity{});
  EXPECT_EQ(res.status, 503);
  EXPECT_NE(res.body.find(R"("state":"closed")"), std::string::npos) << res.body;
}

TEST_F(LedgerRoutesTest, MetricsText) {
  context_.outbox_status = [] {
    OutboxStatus s;
    s.enabled = true;
    s.state = "up";
    s.lag_events = 7;
    return s;
  };
  context_.metrics_renderers.push_back([](std::string* out) { *out += "# TYPE extra_metric gauge\nextra_metric 1\n"; });
  Append("alice", 3);
  StartServer();
  TestHttpClient anonymous("127.0.0.1", stack_.port());
  anonymous.Get("/livez");
  anonymous.Get("/livez");
  admin_->Get("/api/v1/events");
  HttpReply r = anonymous.Get("/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  const std::string& text = r.body;
  for (const std::string& needle : {
           std::string(R"(ledger_http_requests_total{method="GET",route="/livez",class="2xx"} 2)"),
           std::string(R"(ledger_http_requests_total{method="GET",route="/api/v1/events",class="2xx"} 1)"),
           std::string(R"(ledger_http_request_duration_seconds_bucket{method="GET",route="/livez",le="+Inf"} 2)"),
           std::string("ledger_events_appended_total 3"),
           std::string("ledger_head_position 3"),
           std::string("ledger_write_queue_depth 0"),
           std::string("ledger_event_table_bytes_compacted_total 0"),
           std::string("# TYPE ledger_table_bytes_flushed_total counter"),
           std::string("ledger_groups_pipelined_total 0"),  // one small group: written inline
           std::string("ledger_wal_syncs_paced_total 0"),    // no sync_interval_min here
           std::string("# TYPE ledger_wal_syncs_beside_write_total counter"),
           std::string("# TYPE ledger_append_group_commands histogram"),
           std::string("ledger_append_group_events_count 1"),
           std::string("# TYPE ledger_write_seconds histogram"),
           std::string("ledger_outbox_enabled 1"),
           std::string("extra_metric 1"),
       }) {
    EXPECT_NE(text.find(needle), std::string::npos) << needle << "\n" << text;
  }
  // Every sample line belongs to a declared family; the outbox's own families come from its
  // renderer, not twice.
  size_t type_lines = 0;
  for (size_t at = text.find("# TYPE "); at != std::string::npos; at = text.find("# TYPE ", at + 1)) ++type_lines;
  EXPECT_GT(type_lines, 15u);
  EXPECT_EQ(text.find("ledger_outbox_lag_events"), std::string::npos) << text;
}

}  // namespace
}  // namespace ledger::http
