// The Lago sink (http/lago_sink.h) against a real Ledger and a local fake Lago over loopback:
// every usage event counted exactly once (by transaction_id) in batches of at most 100; Lago
// outages (down, 500, 429, slow answers, lost acknowledgements) followed by recovery with no
// loss, no double counting and the lag back to 0; restarts from the checkpoint, also after the
// checkpoint write was lost (Lago's value_already_exist answers); refused events dead-lettered
// without stalling; and negative controls showing the exactly-once check fails when the
// guarantee is broken.
#include "http/lago_sink.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <set>
#include <thread>

#include "events/ledger.h"
#include "http/lago_client.h"
#include "projections/lago.h"
#include "tests/support/fake_lago.h"
#include "tests/support/fault_fs.h"
#include "tests/support/no_thread.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tls_auth_server.h"
#include "tests/support/trickling_server.h"
#include "tests/support/wait.h"
#include "tests/support/captured_log.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::http {
namespace {

using ledger::testing::CountedExactlyOnce;
using ledger::testing::AppendCommand;
using ledger::testing::FakeLago;
using ledger::testing::FaultEnv;
using ledger::testing::kFakeLagoApiKey;
using ledger::testing::TempDir;
using ledger::testing::WaitFor;

constexpr std::string_view kUsageType = "usage.recorded.v1";
constexpr std::string_view kBatchType = "usage.batch_recorded.v1";
const std::vector<std::string> kUsers = {"alice", "bob", "carol", "dave", "erin", "frank", "gus"};
const std::vector<std::string> kServices = {"chat", "search", "tts", "litellm"};
// Lago's own 403 to the billable metric check: a key permitted to write events and not to read
// billable metrics (lago-api's API key permissions).
constexpr char kMetricReadForbidden[] =
    R"({"status":403,"error":"Forbidden","code":"read_action_not_allowed_for_billable_metric"})";

// The data of the `i`th usage.recorded.v1 the tests append (schema-valid), for `user`.
std::string UsageData(size_t i, const std::string& user, int64_t quantity) {
  return R"({"user_id":")" + user + R"(","service":")" + kServices[i % kServices.size()] +
         R"(","quantity":)" + std::to_string(quantity) +
         R"(,"source":"batch","idempotency_key":"k-)" + std::to_string(i) +
         R"(","occurred_at":"2026-11-22T10:00:0)" + std::to_string(i % 10) +
         R"(.250000Z","window_start":"2026-11-01T00:00:00Z","window_end":"2026-12-01T00:00:00Z",)"
         R"("window_kind":"calendar_month","plan_id":null,"subscription_id":null,"limit":null,)"
         R"("used_after":)" +
         std::to_string(i + 1) + R"(,"metadata":{"model":"m)" + std::to_string(i % 3) +
         R"(","tokens":)" + std::to_string(10 * i) + "}}";
}

// Appends `count` usage.recorded.v1 events (schema-valid) round-robin over kUsers, and, when
// `noise` is set, a non-usage event after every third one.
class AppendUsage final : public Command {
 public:
  AppendUsage(size_t count, bool noise, size_t first = 0)
      : count_(count), noise_(noise), first_(first) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    for (size_t i = first_; i < first_ + count_; ++i) {
      const std::string& user = kUsers[i % kUsers.size()];
      decision->events.push_back(
          NewEvent{std::string(kUsageType), user, UsageData(i, user, 1 + i % 5)});
      if (noise_ && i % 3 == 2) {
        decision->events.push_back(
            NewEvent{"test.noise.v1", "noise", R"({"i":)" + std::to_string(i) + "}"});
      }
    }
    decision->body = "{}";
    return Status::OK();
  }

 private:
  size_t count_;
  bool noise_;
  size_t first_;
};

// One usage.recorded.v1 of quantity 1 for `user`: a consume.
class AppendConsume final : public Command {
 public:
  AppendConsume(std::string user, size_t i) : user_(std::move(user)), i_(i) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    decision->events.push_back(NewEvent{std::string(kUsageType), user_, UsageData(i_, user_, 1)});
    decision->body = "{}";
    return Status::OK();
  }

 private:
  std::string user_;
  size_t i_;
};

// Appends one usage.batch_recorded.v1 (schema-valid) of `items` items for `user`; items with an
// even index carry metadata.
class AppendBatchUsage final : public Command {
 public:
  AppendBatchUsage(std::string user, size_t items, size_t first)
      : user_(std::move(user)), items_(items), first_(first) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    std::string data = R"({"user_id":")" + user_ +
                       R"(","source":"batch","plan_id":null,"subscription_id":null,"items":[)";
    for (size_t i = 0; i < items_; ++i) {
      const size_t n = first_ + i;
      if (i > 0) data += ",";
      data +=
          R"({"idempotency_key":"b-)" + std::to_string(n) + R"(","service":")" +
          kServices[n % kServices.size()] + R"(","quantity":)" + std::to_string(1 + n % 5) +
          R"(,"occurred_at":"2026-11-22T11:00:0)" + std::to_string(n % 10) +
          R"(.500000Z","window_start":"2026-11-01T00:00:00Z","window_end":"2026-12-01T00:00:00Z",)"
          R"("window_kind":"calendar_month","limit":null,"used_after":)" +
          std::to_string(i + 1);
      if (n % 2 == 0) data += R"(,"metadata":{"model":"b)" + std::to_string(n % 3) + R"("})";
      data += "}";
    }
    data += "]}";
    decision->events.push_back(NewEvent{std::string(kBatchType), user_, data});
    decision->body = "{}";
    return Status::OK();
  }

 private:
  std::string user_;
  size_t items_;
  size_t first_;
};

class LagoSinkTest : public ::testing::Test {
 protected:
  void SetUp() override { OpenLedger(); }

  void OpenLedger() {
    LedgerOptions options;
    options.path = dir_.Sub("ledger");
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
  }

  void TearDown() override {
    StopSink().IgnoreError();
    if (!ledger_ || !check_schemas_) return;
    for (std::string_view type : {kUsageType, kBatchType, kLagoSinkRejectedV1}) {
      for (const Event& e : Events(type)) {
        EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.type;
      }
    }
  }

  static LagoSinkOptions FastOptions() {
    LagoSinkOptions options;
    options.poll_interval_ms = 20;
    options.retry_backoff_ms_min = 10;
    options.retry_backoff_ms_max = 200;
    options.checkpoint_interval_ms = 50;
    return options;
  }

  // FastOptions with short backoffs and an event failing alone dead-lettered after 300 ms.
  static LagoSinkOptions DeadLetterSoonOptions() {
    LagoSinkOptions options = FastOptions();
    options.retry_backoff_ms_max = 20;
    options.server_error_dead_letter_after_ms = 300;
    return options;
  }

  void StartSink(const std::string& url, const LagoSinkOptions& options = FastOptions(),
                 const std::string& key = kFakeLagoApiKey, int64_t read_timeout_ms = 10'000) {
    LagoClientOptions client_options;
    client_options.api_url = url;
    client_options.api_key = key;
    client_options.read_timeout_ms = read_timeout_ms;
    client_options.response_bytes_max = response_bytes_max_;
    Status s = HttpLagoClient::Create(client_options, &client_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    s = LagoSink::Open(options, ledger_.get(), client_.get(), &sink_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    LagoSink* sink = sink_.get();
    listener_ = ledger_->AddCommitListener([sink](Position) { sink->Notify(); });
    ASSERT_TRUE(sink_->Start().ok());
  }

  Status StopSink(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    Status s;
    if (sink_) {
      s = sink_->Stop(timeout);
      ledger_->RemoveCommitListener(listener_);
      sink_.reset();
    }
    client_.reset();
    return s;
  }

  void Append(size_t count, bool noise = true) {
    AppendUsage command(count, noise, appended_);
    appended_ += count;
    CommandResult r = ledger_->Submit(&command);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }

  // Appends a usage.batch_recorded.v1 of `items` items for `user`.
  void AppendBatch(const std::string& user, size_t items) {
    AppendBatchUsage command(user, items, batch_items_appended_);
    batch_items_appended_ += items;
    CommandResult r = ledger_->Submit(&command);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }

  // Appends `count` consumes (usage.recorded.v1 of quantity 1) for `user`, one position each.
  void Consume(const std::string& user, size_t count = 1) {
    for (size_t n = 0; n < count; ++n) {
      AppendConsume command(user, appended_++);
      CommandResult r = ledger_->Submit(&command);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    }
  }

  // Flushes and closes the ledger, rewrites the stored event at `position` (RewriteStoredEvent)
  // and opens it again. The log no longer reads back whole: TearDown's schema check is off.
  void Tamper(uint64_t position, bool reseal, const std::function<void(Event*)>& edit) {
    ASSERT_TRUE(ledger_->Flush().ok());
    ledger_.reset();
    testing::RewriteStoredEvent(dir_.Sub("ledger"), position, reseal, edit);
    OpenLedger();
    check_schemas_ = false;
  }

  // Every event of `type` ("": all), in log order.
  std::vector<Event> Events(std::string_view type) {
    std::vector<Event> out;
    EventFilter filter;
    filter.type = std::string(type);
    Position after(0);
    while (true) {
      std::vector<Event> page;
      EXPECT_TRUE(ledger_->ReadEvents(after, 1000, filter, &page).ok());
      if (page.empty()) return out;
      after = page.back().position;
      for (Event& e : page) out.push_back(std::move(e));
    }
  }
  // The Lago transaction ids the log's usage maps to, in log order: a usage.recorded.v1's id, and
  // "<id>:<index>" per item of a usage.batch_recorded.v1 (after position `after`).
  std::vector<std::string> UsageIds(Position after = Position(0)) {
    std::vector<std::string> ids;
    for (const Event& e : Events("")) {
      if (e.position <= after) continue;
      if (e.type == kUsageType) ids.push_back(e.id);
      if (e.type != kBatchType) continue;
      rapidjson::Document data;
      data.Parse(e.data.c_str());
      for (rapidjson::SizeType i = 0; i < data["items"].Size(); ++i) {
        ids.push_back(e.id + ":" + std::to_string(i));
      }
    }
    return ids;
  }

  bool CaughtUp(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    return WaitFor([&] { return sink_->GetStatus().lag == 0; }, timeout);
  }

  // The sink asks for the billable metric once at a time: the answer to the lookup going on now
  // has been handled once another lookup has begun after it.
  static bool LookupAnswerHandled(const FakeLago& lago) {
    const size_t lookups = lago.metric_lookups();
    return WaitFor([&] { return lago.metric_lookups() >= lookups + 2; }, std::chrono::seconds(10));
  }

  // Found, the metric is not asked again: the lookups stop once the answer is handled.
  static bool MetricFound(const FakeLago& lago) {
    return WaitFor(
        [&] {
          const size_t before = lago.metric_lookups();
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          return lago.metric_lookups() == before;
        },
        std::chrono::seconds(10));
  }

  Position Checkpoint() {
    Position p;
    EXPECT_TRUE(ledger_->GetCheckpoint("sink.lago", &p).ok());
    return p;
  }

  static void ExpectBatchesWithinLimit(const FakeLago& lago, size_t limit = kLagoBatchEventsMax) {
    for (const FakeLago::Request& r : lago.requests()) {
      EXPECT_LE(r.events, limit);
      EXPECT_GT(r.events, 0u);
    }
  }

  TempDir dir_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<HttpLagoClient> client_;
  std::unique_ptr<LagoSink> sink_;
  uint64_t listener_ = 0;
  size_t response_bytes_max_ = LagoClientOptions().response_bytes_max;
  size_t appended_ = 0;
  size_t batch_items_appended_ = 0;
  bool check_schemas_ = true;
};

TEST(LagoSinkMappingTest, UsageBecomesALagoEvent) {
  Event event;
  event.id = "0f8fad5b-d9cb-469f-a165-70867728950e";
  event.type = "usage.recorded.v1";
  event.subject = "alice";
  event.time_us = 1'800'000'000'000'000;
  event.data =
      R"({"user_id":"alice","service":"chat","quantity":7,"source":"consume",)"
      R"("idempotency_key":"k1","occurred_at":"2026-11-22T10:00:05.999999Z",)"
      R"("window_start":"2026-11-22T00:00:00Z","window_end":"2026-11-23T00:00:00Z",)"
      R"("window_kind":"day","plan_id":"trial","subscription_id":null,"limit":100,)"
      R"("used_after":7,"metadata":{"model":"gpt-x","tokens":12,"service":"spoofed","ok":true}})";
  LagoSinkOptions options;
  options.billable_metric_code = "llm_calls";
  options.external_subscription_id_prefix = "sub-";
  std::string json, user;
  ASSERT_TRUE(UsageToLagoEvent(event, options, &json, &user).ok());
  EXPECT_EQ(user, "alice");
  EXPECT_EQ(
      json,
      R"({"transaction_id":"0f8fad5b-d9cb-469f-a165-70867728950e",)"
      R"("external_subscription_id":"sub-alice","code":"llm_calls","timestamp":1795341605.999,)"
      R"("properties":{"service":"chat","quantity":7,"model":"gpt-x","tokens":12,"ok":true}})");

  // The timestamp keeps occurred_at's milliseconds (Lago's precision), as exact decimal text
  // without trailing zeros; whole seconds have no fraction.
  for (const auto& [occurred_at, timestamp] :
       std::vector<std::pair<std::string, std::string>>{{"10:00:05.250000Z", "1795341605.25"},
                                                        {"10:00:05.001Z", "1795341605.001"},
                                                        {"10:00:05.1Z", "1795341605.1"},
                                                        {"10:00:05Z", "1795341605"}}) {
    event.data = R"({"user_id":"alice","service":"chat","quantity":7,"occurred_at":"2026-11-22T)" +
                 occurred_at + R"("})";
    ASSERT_TRUE(UsageToLagoEvent(event, options, &json, &user).ok());
    EXPECT_NE(json.find(R"("timestamp":)" + timestamp + ","), std::string::npos) << json;
  }

  // Without occurred_at the append time is the usage time.
  event.data = R"({"user_id":"bob","service":"tts","quantity":1})";
  ASSERT_TRUE(UsageToLagoEvent(event, LagoSinkOptions(), &json, &user).ok());
  EXPECT_NE(
      json.find(R"("external_subscription_id":"bob","code":"api_calls","timestamp":1800000000,)"),
      std::string::npos)
      << json;

  event.data = R"({"user_id":"bob","quantity":1})";
  Status s = UsageToLagoEvent(event, LagoSinkOptions(), &json, &user);
  EXPECT_EQ(s.problem(), "unmappable") << s.ToString();
  event.type = "plan.created.v1";
  EXPECT_TRUE(UsageToLagoEvent(event, LagoSinkOptions(), &json, &user).IsNotFound());
}

TEST(LagoSinkMappingTest, EveryBatchItemBecomesALagoEventWithItsIndexInTheTransactionId) {
  Event event;
  event.id = "0f8fad5b-d9cb-469f-a165-70867728950e";
  event.type = "usage.batch_recorded.v1";
  event.subject = "alice";
  event.time_us = 1'800'000'000'000'000;
  const std::string window =
      R"("window_start":"2026-11-01T00:00:00Z","window_end":"2026-12-01T00:00:00Z",)"
      R"("window_kind":"calendar_month","limit":null)";
  event.data =
      R"({"user_id":"alice","source":"batch","plan_id":"enterprise","subscription_id":"sub_1",)"
      R"("items":[{"idempotency_key":"k1","service":"chat","quantity":7,)"
      R"("occurred_at":"2026-11-22T10:00:05.999999Z",)" + window +
      R"(,"used_after":7,"metadata":{"model":"gpt-x","quantity":99}},)"
      R"({"idempotency_key":"k2","service":"tts","quantity":2,)"
      R"("occurred_at":"2026-11-22T10:00:09.000000Z",)" + window + R"(,"used_after":9},)"
      R"({"idempotency_key":"k3","quantity":2,"used_after":11}]})";
  LagoSinkOptions options;
  options.external_subscription_id_prefix = "sub-";
  std::vector<LagoUsageEvent> mapped;
  ASSERT_TRUE(UsageToLagoEvents(event, options, &mapped).ok());
  ASSERT_EQ(mapped.size(), 3u);
  EXPECT_EQ(mapped[0].transaction_id, "0f8fad5b-d9cb-469f-a165-70867728950e:0");
  EXPECT_EQ(mapped[0].user_id, "alice");
  EXPECT_EQ(mapped[0].json,
            R"({"transaction_id":"0f8fad5b-d9cb-469f-a165-70867728950e:0",)"
            R"("external_subscription_id":"sub-alice","code":"api_calls",)"
            R"("timestamp":1795341605.999,)"
            R"("properties":{"service":"chat","quantity":7,"model":"gpt-x"}})");
  EXPECT_EQ(mapped[1].json,
            R"({"transaction_id":"0f8fad5b-d9cb-469f-a165-70867728950e:1",)"
            R"("external_subscription_id":"sub-alice","code":"api_calls","timestamp":1795341609,)"
            R"("properties":{"service":"tts","quantity":2}})");
  // An item without a service cannot be sent; the others can.
  EXPECT_EQ(mapped[2].transaction_id, "0f8fad5b-d9cb-469f-a165-70867728950e:2");
  EXPECT_TRUE(mapped[2].json.empty());
  EXPECT_FALSE(mapped[2].unmappable.empty());

  // A usage.recorded.v1 is one Lago event under the event id, as UsageToLagoEvent maps it.
  Event single = event;
  single.type = "usage.recorded.v1";
  single.data = R"({"user_id":"bob","service":"tts","quantity":1})";
  ASSERT_TRUE(UsageToLagoEvents(single, options, &mapped).ok());
  ASSERT_EQ(mapped.size(), 1u);
  std::string json, user;
  ASSERT_TRUE(UsageToLagoEvent(single, options, &json, &user).ok());
  EXPECT_EQ(mapped[0].transaction_id, single.id);
  EXPECT_EQ(mapped[0].json, json);
  // A batch event whose data is unreadable: one unmappable entry under the event id.
  event.data = R"({"user_id":"alice","items":"none"})";
  ASSERT_TRUE(UsageToLagoEvents(event, options, &mapped).ok());
  ASSERT_EQ(mapped.size(), 1u);
  EXPECT_EQ(mapped[0].transaction_id, event.id);
  EXPECT_TRUE(mapped[0].json.empty());
  event.type = "usage.threshold_reached.v1";
  EXPECT_TRUE(UsageToLagoEvents(event, options, &mapped).IsNotFound());
}

// cpp-httplib's timeouts bound each read, not the attempt: a Lago (or a proxy at LAGO_API_URL)
// sending its head and then a byte every 1.5 s held the sink's thread until the body ended (30 s
// for 20 bytes here; without end for a longer one), the sink "up" and delivering nothing. Now the
// attempt ends at its deadline with no HTTP answer, which the sink retries as a timeout.
TEST(LagoClientTest, AnAnswerThatTricklesEndsAtTheDeadline) {
  ledger::testing::TricklingServer slow(200, 20, std::chrono::milliseconds(1500));
  LagoClientOptions client_options;
  client_options.api_url = slow.url();
  client_options.api_key = kFakeLagoApiKey;
  client_options.read_timeout_ms = 10'000;  // each read waits 1.5 s at most: none times out
  client_options.deadline_ms = 2'000;
  std::unique_ptr<HttpLagoClient> client;
  ASSERT_TRUE(HttpLagoClient::Create(client_options, &client).ok());
  const LagoAnswer answer = client->SendEventsBatch(R"({"events":[]})");
  EXPECT_FALSE(slow.finished()) << slow.body_bytes_sent() << " body bytes sent";
  EXPECT_LT(slow.body_bytes_sent(), 20);
  EXPECT_EQ(answer.http_status, 0);
  EXPECT_EQ(answer.error, "no complete answer within 2000 ms");
  EXPECT_EQ(answer.error.find(kFakeLagoApiKey), std::string::npos);
  EXPECT_EQ(slow.requests().size(), 1u);
}

// An answer within the attempt's 30 s counts, as the README says, with the client's own default
// timeouts: a Lago answering a batch after 11 s was cut at the 10 s read timeout, and the sink sent
// the same batch again and again.
TEST(LagoClientTest, AnAnswerWithinTheDeadlineCountsHoweverLongLagoThinks) {
  FakeLago::Options fake;
  fake.slow_ms = 11'000;
  FakeLago lago(fake);
  lago.InjectFault(FakeLago::Fault::kSlow, 1);
  LagoClientOptions client_options;
  client_options.api_url = lago.url();
  client_options.api_key = kFakeLagoApiKey;
  std::unique_ptr<HttpLagoClient> client;
  ASSERT_TRUE(HttpLagoClient::Create(client_options, &client).ok());
  const LagoAnswer answer = client->SendEventsBatch(
      R"({"events":[{"transaction_id":"t1","external_subscription_id":"u1","code":"api_calls",)"
      R"("timestamp":1795341605,"properties":{"service":"chat","quantity":1}}]})");
  EXPECT_EQ(answer.http_status, 200) << answer.error;
  EXPECT_EQ(lago.requests_received(), 1u);
}

// The sink's Stop cancels the running call; httplib's stop() alone waited out a TLS handshake
// sent a byte at a time (the whole 30 s attempt deadline, leaving the outbox no time to flush).
TEST(LagoClientTest, CancelCutsACallInTheTlsHandshake) {
  using ledger::testing::TricklingServer;
  TricklingServer slow(TricklingServer::kTlsHandshake, 20, std::chrono::milliseconds(1500));
  LagoClientOptions client_options;
  client_options.api_url = "https://127.0.0.1:" + std::to_string(slow.port());
  client_options.api_key = kFakeLagoApiKey;
  std::unique_ptr<HttpLagoClient> client;
  ASSERT_TRUE(HttpLagoClient::Create(client_options, &client).ok());
  LagoAnswer answer;
  std::thread call([&] { answer = client->SendEventsBatch(R"({"events":[]})"); });
  for (int i = 0; i < 500 && slow.requests().empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(slow.requests().size(), 1u);  // the ClientHello arrived: the handshake is running
  client->Cancel();
  call.join();
  // Cut at once: not at the attempt's own 30 s deadline, by which ≈ 20 bytes had been sent.
  EXPECT_LE(slow.body_bytes_sent(), 2) << "handshake bytes sent before the call ended";
  EXPECT_EQ(answer.http_status, 0);
}

// LAGO_API_URL over https: the client checks Lago's certificate (against ca_cert_file when set,
// else the system's trust store, which does not know this test's CA). An untrusted server
// gets no request, so never the API key: the attempt fails without an HTTP answer.
TEST(LagoClientHttpsTest, RefusesAnUntrustedServer) {
  TempDir dir;
  ledger::testing::TlsAuthServer server;
  server.Start(dir.Sub("ca.pem"), "POST", "/api/v1/events/batch", R"({"events":[]})");
  if (HasFatalFailure()) return;

  LagoClientOptions options;
  options.api_url = server.url();
  options.api_key = kFakeLagoApiKey;
  options.ca_cert_file = dir.Sub("ca.pem");
  std::unique_ptr<HttpLagoClient> trusting;
  ASSERT_TRUE(HttpLagoClient::Create(options, &trusting).ok());
  LagoAnswer answer = trusting->SendEventsBatch(R"({"events":[]})");
  EXPECT_EQ(answer.http_status, 200) << answer.error;
  EXPECT_TRUE(answer.error.empty()) << answer.error;
  ASSERT_EQ(server.seen_auth().size(), 1u);
  EXPECT_EQ(server.seen_auth()[0], std::string("Bearer ") + kFakeLagoApiKey);

  options.ca_cert_file.clear();
  std::unique_ptr<HttpLagoClient> strict;
  ASSERT_TRUE(HttpLagoClient::Create(options, &strict).ok());
  answer = strict->SendEventsBatch(R"({"events":[]})");
  EXPECT_EQ(answer.http_status, 0);
  EXPECT_EQ(answer.error, "the server's TLS certificate was not trusted");
  EXPECT_EQ(answer.error.find(kFakeLagoApiKey), std::string::npos);
  EXPECT_EQ(server.seen_auth().size(), 1u);  // no second request: the key never left the client
}

// A call's deadline is watched by a thread of its own. Where the process may start no more
// threads, std::thread threw out of SendEventsBatch -- on the sink's thread nothing catches it:
// std::terminate, the daemon aborted. The call is not made and answers as a network error
// (http_status 0), which the sink retries; with threads again the next call is made.
TEST(LagoClientTest, AThreadThatCannotStartIsANetworkError) {
  FakeLago lago;
  LagoClientOptions client_options;
  client_options.api_url = lago.url();
  client_options.api_key = kFakeLagoApiKey;
  std::unique_ptr<HttpLagoClient> client;
  ASSERT_TRUE(HttpLagoClient::Create(client_options, &client).ok());
  const std::string body = R"({"events":[]})";
  {
    ledger::testing::NoThreadForCallDeadlines no_thread;
    const LagoAnswer answer = client->SendEventsBatch(body);
    EXPECT_EQ(answer.http_status, 0);
    EXPECT_FALSE(answer.error.empty());
    EXPECT_EQ(answer.error.find(kFakeLagoApiKey), std::string::npos);
  }
  EXPECT_EQ(lago.requests_received(), 0u);
  EXPECT_NE(client->SendEventsBatch(body).http_status, 0);
  EXPECT_EQ(lago.requests_received(), 1u);
}

TEST(LagoSinkOptionsTest, BadOptionsAreRefused) {
  TempDir dir;
  LedgerOptions ledger_options;
  ledger_options.path = dir.Sub("ledger");
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(Ledger::Open(ledger_options, &ledger).ok());
  FakeLago lago;
  LagoClientOptions client_options;
  client_options.api_url = lago.url();
  client_options.api_key = kFakeLagoApiKey;
  std::unique_ptr<HttpLagoClient> client;
  ASSERT_TRUE(HttpLagoClient::Create(client_options, &client).ok());
  for (size_t batch : {size_t{0}, size_t{101}}) {
    LagoSinkOptions options;
    options.batch_events_max = batch;
    std::unique_ptr<LagoSink> sink;
    EXPECT_EQ(LagoSink::Open(options, ledger.get(), client.get(), &sink).problem(),
              "invalid_config");
  }
  client_options.api_url = "ftp://lago";
  EXPECT_FALSE(HttpLagoClient::Create(client_options, &client).ok());
  client_options.api_url = lago.url();
  client_options.api_key = "";
  EXPECT_FALSE(HttpLagoClient::Create(client_options, &client).ok());
}

TEST_F(LagoSinkTest, DeliversEveryUsageEventExactlyOnceInBatchesOfAtMost100) {
  FakeLago lago;
  for (int i = 0; i < 7; ++i) Append(150);  // 1050 usage events, 350 other events between them
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  ExpectBatchesWithinLimit(lago);
  EXPECT_GE(lago.requests().size(), 11u);
  for (const FakeLago::Request& r : lago.requests()) EXPECT_EQ(r.status, 200);

  // The Lago events carry what the log says, in log order.
  std::vector<Event> usage = Events(kUsageType);
  std::vector<FakeLago::StoredEvent> stored = lago.stored();
  ASSERT_EQ(stored.size(), usage.size());
  for (size_t i = 0; i < usage.size(); ++i) {
    rapidjson::Document data;
    data.Parse(usage[i].data.c_str());
    EXPECT_EQ(stored[i].transaction_id, usage[i].id);
    EXPECT_EQ(stored[i].external_subscription_id, data["user_id"].GetString());
    EXPECT_EQ(stored[i].code, "api_calls");
    EXPECT_EQ(stored[i].service, data["service"].GetString());
    EXPECT_EQ(stored[i].quantity, data["quantity"].GetInt64());
    // occurred_at ...T10:00:0<i % 10>.250000Z: Lago gets the milliseconds.
    EXPECT_EQ(stored[i].timestamp_ms, (1795341600 + static_cast<int64_t>(i % 10)) * 1000 + 250);
    EXPECT_EQ(stored[i].timestamp_json, std::to_string(1795341600 + i % 10) + ".25");
  }

  // New usage is sent as it is appended (the commit listener wakes the sink).
  Append(30, /*noise=*/false);
  ASSERT_TRUE(CaughtUp());
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.state, "up");
  EXPECT_EQ(status.checkpoint, ledger_->Head());
  EXPECT_EQ(sink_->metrics().events_delivered.Value(), 1080u);
  EXPECT_EQ(sink_->metrics().events_skipped.Value(), 350u);
  std::string metrics;
  sink_->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("ledger_lago_sink_events_delivered_total 1080\n"), std::string::npos);
  EXPECT_NE(metrics.find("ledger_lago_sink_lag_events 0\n"), std::string::npos);
  ASSERT_TRUE(StopSink().ok());
  EXPECT_EQ(Checkpoint(), ledger_->Head());  // synced by Stop()
}

TEST_F(LagoSinkTest, CatchesUpAfterAnOutageWithoutLossOrDoubleCounting) {
  FakeLago lago;
  lago.SetDown(true);
  Append(250);
  StartSink(lago.url());
  ASSERT_TRUE(WaitFor([&] { return sink_->metrics().request_failures.Value() >= 3; }));
  LagoSinkStatus down = sink_->GetStatus();
  EXPECT_EQ(down.state, "down");
  EXPECT_GT(down.lag, 0u);
  EXPECT_NE(down.last_error.find("could not be reached"), std::string::npos) << down.last_error;
  EXPECT_EQ(down.checkpoint.value(), 0u);
  Append(120);  // appends go on during the outage
  EXPECT_EQ(lago.stored_count(), 0u);

  lago.SetDown(false);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_EQ(sink_->GetStatus().state, "up");

  // Errors answered by Lago: 500s, 429s, a slow answer (the client times out while Lago stores
  // the batch) and an acknowledgement lost after storing. Every re-send reuses the ids.
  ASSERT_TRUE(StopSink().ok());
  lago.InjectFault(FakeLago::Fault::kServerError, 2);
  lago.InjectFault(FakeLago::Fault::kRateLimited, 1);
  lago.InjectFault(FakeLago::Fault::kSlow, 1);
  lago.InjectFault(FakeLago::Fault::kAckLost, 1);
  Append(400);
  StartSink(lago.url(), FastOptions(), kFakeLagoApiKey, /*read_timeout_ms=*/300);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_GE(sink_->metrics().request_failures.Value(), 5u);
  EXPECT_GE(sink_->metrics().events_already_present.Value(), 1u);  // the lost acknowledgements
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  ExpectBatchesWithinLimit(lago);
  EXPECT_TRUE(Events(projections::kLagoWebhookReceivedV1).empty());
  EXPECT_TRUE(Events(kLagoSinkRejectedV1).empty());
}

TEST_F(LagoSinkTest, RestartsFromItsCheckpoint) {
  FakeLago lago;
  Append(300);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  ASSERT_TRUE(StopSink().ok());
  const Position stopped_at = Checkpoint();
  EXPECT_EQ(stopped_at, ledger_->Head());
  const size_t requests_before = lago.requests().size();

  // Reopen the ledger (a daemon restart) and append more: only the new usage is sent.
  ledger_.reset();
  OpenLedger();
  Append(200);
  EXPECT_EQ(Checkpoint(), stopped_at);  // what the restarted sink starts from
  StartSink(lago.url());
  EXPECT_GE(sink_->GetStatus().checkpoint, stopped_at);  // it may have delivered a batch already
  ASSERT_TRUE(CaughtUp());
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  size_t resent = 0;
  const std::vector<FakeLago::Request> requests = lago.requests();
  for (size_t i = requests_before; i < requests.size(); ++i) resent += requests[i].events;
  EXPECT_EQ(resent, 200u);
  EXPECT_EQ(sink_->metrics().events_already_present.Value(), 0u);
}

// A crash after Lago stored batches but before the checkpoint reached the disk: the next sink
// sends them again. Lago's Postgres store refuses known transaction ids (whole batch, 422
// value_already_exist, or a 500 when the known id is not the batch's last event); the sink
// settles them and sends the rest, so Lago still counts each event once.
TEST_F(LagoSinkTest, ResendsAfterALostCheckpointAreCountedOnce) {
  struct Mode {
    const char* name;
    FakeLago::Dedupe dedupe;
    bool server_error_on_inner_duplicate;
  };
  for (const Mode& mode : {Mode{"reject-batch", FakeLago::Dedupe::kRejectBatch, false},
                           Mode{"reject-batch-500", FakeLago::Dedupe::kRejectBatch, true},
                           Mode{"store-rest", FakeLago::Dedupe::kStoreRest, false},
                           Mode{"clickhouse", FakeLago::Dedupe::kSilent, false}}) {
    SCOPED_TRACE(mode.name);
    FakeLago::Options lago_options;
    lago_options.dedupe = mode.dedupe;
    lago_options.server_error_on_inner_duplicate = mode.server_error_on_inner_duplicate;
    FakeLago lago(lago_options);
    const Position start = ledger_->Head();
    ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", start, true).ok());
    Append(260);
    const uint64_t half = (ledger_->Head().value() + start.value()) / 2;
    StartSink(lago.url());
    ASSERT_TRUE(CaughtUp());
    ASSERT_TRUE(StopSink().ok());
    // The lost write: the checkpoint is back in the middle of what Lago already has, and more
    // usage arrived meanwhile.
    ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", Position(half), true).ok());
    Append(90);
    StartSink(lago.url());
    ASSERT_TRUE(CaughtUp(std::chrono::seconds(60))) << sink_->GetStatus().last_error;
    std::vector<std::string> ids;
    for (const Event& e : Events(kUsageType)) {
      if (e.position > start) ids.push_back(e.id);
    }
    EXPECT_TRUE(CountedExactlyOnce(lago, ids));
    if (mode.dedupe != FakeLago::Dedupe::kSilent) {
      EXPECT_GT(sink_->metrics().events_already_present.Value(), 0u);
    }
    if (mode.server_error_on_inner_duplicate) {
      EXPECT_GT(sink_->metrics().batch_splits.Value(), 0u);
    }
    EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
    ExpectBatchesWithinLimit(lago);
    ASSERT_TRUE(StopSink().ok());
  }
}

TEST_F(LagoSinkTest, ARefusedEventIsDeadLetteredAndTheRestDelivered) {
  FakeLago lago;
  Append(120);
  std::vector<std::string> ids = UsageIds();
  const std::string poisoned = ids[37];
  lago.RejectTransaction(poisoned);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  std::vector<std::string> delivered;
  for (const std::string& id : ids) {
    if (id != poisoned) delivered.push_back(id);
  }
  EXPECT_TRUE(CountedExactlyOnce(lago, delivered));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 1u);
  std::vector<Event> rejected = Events(kLagoSinkRejectedV1);
  ASSERT_EQ(rejected.size(), 1u);
  rapidjson::Document data;
  data.Parse(rejected[0].data.c_str());
  EXPECT_EQ(std::string(data["transaction_id"].GetString()), poisoned);
  EXPECT_EQ(data["http_status"].GetInt(), 422);
  EXPECT_EQ(std::string(data["reason"].GetString()), "validation_errors");
  EXPECT_NE(std::string(data["error"].GetString()).find("invalid_format"), std::string::npos);
  EXPECT_EQ(std::string(data["lago_event"]["transaction_id"].GetString()), poisoned);
  EXPECT_EQ(rejected[0].subject, std::string(data["user_id"].GetString()));
  // The sink's own dead letter is behind its checkpoint too.
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
}

// One event Lago answers 500 for, whatever batch carries it (a billable metric's expression
// failing on its properties): once the events after it are accepted alone while it still fails
// alone, it is dead-lettered and the sink goes on.
// Lago accepts events under a code that is no billable metric of it, and bills none of them: the
// sink asks Lago for the metric and reports it missing (state, last_error, a gauge) until Lago
// has it; the usage is still sent.
TEST_F(LagoSinkTest, AnUnknownBillableMetricCodeIsVisibleToOperators) {
  FakeLago lago;
  lago.SetBillableMetrics({"llm_calls"});
  Append(30);
  LagoSinkOptions options = FastOptions();
  options.billable_metric_check_interval_ms = 50;
  StartSink(lago.url(), options);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().billable_metric_missing; },
                      std::chrono::seconds(10)));
  LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.state, "down");
  EXPECT_EQ(status.last_error, "billable metric api_calls not found in Lago");
  std::string metrics;
  sink_->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("ledger_lago_sink_billable_metric_missing 1\n"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("ledger_lago_sink_up 0\n"), std::string::npos);
  // Lago acknowledges every request meanwhile: the gauge's help says what else holds it at 0.
  const size_t help = metrics.find("# HELP ledger_lago_sink_up ");
  ASSERT_NE(help, std::string::npos) << metrics;
  EXPECT_NE(metrics.substr(help, metrics.find('\n', help) - help)
                .find("ledger_lago_sink_billable_metric_missing"),
            std::string::npos)
      << metrics.substr(help, metrics.find('\n', help) - help);

  // The operator creates the metric: the next check finds it, and the sink is up again.
  lago.SetBillableMetrics({"llm_calls", "api_calls"});
  ASSERT_TRUE(WaitFor([&] { return !sink_->GetStatus().billable_metric_missing; },
                      std::chrono::seconds(10)));
  status = sink_->GetStatus();
  EXPECT_EQ(status.state, "up");
  EXPECT_EQ(status.last_error, "");
  metrics.clear();
  sink_->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("ledger_lago_sink_billable_metric_missing 0\n"), std::string::npos);
  // Found, it is not asked again.
  const size_t lookups = lago.metric_lookups();
  Append(5);
  ASSERT_TRUE(CaughtUp());
  EXPECT_EQ(lago.metric_lookups(), lookups);
}

// Only Lago's own 404 says the metric is missing: a Lago that cannot be asked (down at the
// start) marks nothing, and the sink asks again once it answers.
TEST_F(LagoSinkTest, AnUnansweredBillableMetricCheckMarksNothing) {
  FakeLago lago;
  Append(10);
  lago.SetDown(true);
  LagoSinkOptions options = FastOptions();
  options.billable_metric_check_interval_ms = 50;
  StartSink(lago.url(), options);
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "down"; },
                      std::chrono::seconds(10)));
  EXPECT_FALSE(sink_->GetStatus().billable_metric_missing);
  lago.SetDown(false);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  ASSERT_TRUE(WaitFor([&] { return lago.metric_lookups() > 0; }, std::chrono::seconds(10)));
  EXPECT_FALSE(sink_->GetStatus().billable_metric_missing);
  EXPECT_EQ(sink_->GetStatus().state, "up");
}

// Lago's 404 billable_metric_not_found alone says the metric is missing: an answer that says
// nothing of it (a 401, a 503, a proxy's HTML 404, Lago's generic not_found of a route it does not
// have) marks nothing however often it comes; it is the sink's state and last_error as the same
// answer to a batch would be. The code is none of Lago's metrics throughout.
TEST_F(LagoSinkTest, OnlyLagosBillableMetricNotFoundMarksTheMetricMissing) {
  FakeLago lago;
  lago.SetBillableMetrics({});
  struct Answer {
    int status;
    const char* content_type;
    const char* body;
    const char* state;
  };
  const Answer answers[] = {
      {401, "application/json", R"({"status":401,"error":"Unauthorized"})", "unauthorized"},
      {503, "application/json", R"({"status":503,"error":"Service Unavailable"})", "down"},
      {404, "text/html", "<html><body><h1>404 Not Found</h1><hr>nginx</body></html>", "down"},
      {404, "application/json", R"({"status":404,"error":"Not Found","code":"not_found"})",
       "down"},
      // Lago's own refusal of the question, not of the key: a key permitted to write events and
      // not to read billable metrics (lago-api's API key permissions). The batches went through
      // with it, and the earlier answers' failure is cleared.
      {403, "application/json", kMetricReadForbidden, "up"},
  };
  lago.SetMetricAnswer(answers[0].status, answers[0].content_type, answers[0].body);
  Append(10);
  LagoSinkOptions options = FastOptions();
  options.billable_metric_check_interval_ms = 50;
  StartSink(lago.url(), options);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  for (const Answer& answer : answers) {
    SCOPED_TRACE(answer.body);
    lago.SetMetricAnswer(answer.status, answer.content_type, answer.body);
    ASSERT_TRUE(LookupAnswerHandled(lago));
    const LagoSinkStatus status = sink_->GetStatus();
    EXPECT_FALSE(status.billable_metric_missing);
    EXPECT_EQ(status.state, answer.state);
    EXPECT_EQ(status.last_error.empty(), status.state == "up") << status.last_error;
    EXPECT_EQ(status.last_error.find("nginx"), std::string::npos) << status.last_error;
  }
  // Lago's own answer: {"status":404,"error":"Not Found","code":"billable_metric_not_found"}.
  lago.ClearMetricAnswer();
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().billable_metric_missing; },
                      std::chrono::seconds(10)));
  EXPECT_EQ(sink_->GetStatus().last_error, "billable metric api_calls not found in Lago");
}

// An idle sink with a wrong LAGO_API_KEY looked healthy: before the first batch the billable
// metric check is its only request, and its 401 went to the debug log only (/readyz: state
// "unknown", last_error null). It reads as a batch's 401 does, warned once however often it is
// asked again (with the sink's backoff, not the check's minute), and Lago answering clears it.
TEST_F(LagoSinkTest, ARefusedApiKeyShowsBeforeTheFirstBatch) {
  CapturedLog log;
  FakeLago lago;
  lago.SetApiKey("another-key");
  StartSink(lago.url());  // the check's interval: a minute
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "unauthorized"; },
                      std::chrono::seconds(10)))
      << sink_->GetStatus().state;
  const std::string error = sink_->GetStatus().last_error;
  EXPECT_NE(error.find("LAGO_API_KEY"), std::string::npos) << error;
  EXPECT_EQ(error.find(kFakeLagoApiKey), std::string::npos) << error;
  ASSERT_TRUE(WaitFor([&] { return lago.metric_lookups() >= 4; }, std::chrono::seconds(10)));
  EXPECT_TRUE(lago.requests().empty());  // no batch: the check alone tells
  lago.SetApiKey(kFakeLagoApiKey);  // the operator fixes the key on Lago's side
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "up"; }, std::chrono::seconds(10)))
      << sink_->GetStatus().state;
  EXPECT_EQ(sink_->GetStatus().last_error, "");
  EXPECT_TRUE(StopSink().ok());
  for (const std::string& line : log.Lines()) {
    EXPECT_EQ(line.find(kFakeLagoApiKey), std::string::npos) << line;
  }
  EXPECT_EQ(log.Count("[warning]", error), 1u);
}

// A Lago outage is warned when it begins (and once a minute while it lasts), not at every retry:
// with the backoff capped at 20 s that was 180 warnings an hour for one outage. The sink up again
// is said once, at info.
TEST_F(LagoSinkTest, AnOutageIsWarnedOnceNotAtEveryRetry) {
  CapturedLog log;
  FakeLago lago;
  lago.SetDown(true);
  Append(5);
  StartSink(lago.url());
  ASSERT_TRUE(WaitFor([&] { return sink_->metrics().request_failures.Value() >= 6; }));
  lago.SetDown(false);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  ASSERT_TRUE(StopSink().ok());
  EXPECT_EQ(log.Count("[warning]", "events pending after position"), 1u);
  EXPECT_EQ(log.Count("[info]", "up again, after "), 1u);
}

// The check and a batch fail with the same words ("Lago answered 500": Lago's GETs and its event
// pipeline both failing), then Lago answers the check while the batches still fail: the batch's
// failure stays shown until a batch gets through. It was cleared to "up" (the check compared
// last_error's text with its own) for as long as the batch waited for its retry.
TEST_F(LagoSinkTest, TheChecksAnswerDoesNotClearABatchsFailure) {
  FakeLago lago;
  lago.SetMetricAnswer(500, "application/json",
                       R"({"status":500,"error":"Internal Server Error"})");
  lago.InjectFault(FakeLago::Fault::kServerError, 1000);
  Append(10);
  LagoSinkOptions options = FastOptions();
  options.billable_metric_check_interval_ms = 50;
  options.retry_backoff_ms_min = 6000;  // the batch's retry (in 3 s at least) after the checks
  options.retry_backoff_ms_max = 6000;
  StartSink(lago.url(), options);
  ASSERT_TRUE(WaitFor([&] { return !lago.requests().empty(); }, std::chrono::seconds(10)));
  ASSERT_TRUE(LookupAnswerHandled(lago));  // failed checks after the batch's failure
  ASSERT_EQ(sink_->GetStatus().last_error, "Lago answered 500");
  lago.ClearMetricAnswer();
  ASSERT_TRUE(MetricFound(lago));
  const LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(lago.requests().size(), 1u) << "the batch was retried: nothing is controlled";
  EXPECT_EQ(status.state, "down");
  EXPECT_EQ(status.last_error, "Lago answered 500");
}

// Nor does it clear a failed checkpoint write's error, which LogConsumerCore sets itself: on a
// degraded ledger the sink skips events it does not forward and cannot write its checkpoint;
// Lago answering the check then showed it "up" with no error until the next write attempt.
TEST_F(LagoSinkTest, TheChecksAnswerDoesNotClearAFailedCheckpointWrite) {
  FaultEnv fault;
  ledger_.reset();
  LedgerOptions ledger_options;
  ledger_options.path = dir_.Sub("ledger");
  ledger_options.env = fault.env();
  ASSERT_TRUE(Ledger::Open(ledger_options, &ledger_).ok());
  AppendCommand skipped("not-usage", 3);  // nothing for Lago: the checkpoint moves past it
  ASSERT_TRUE(ledger_->Submit(&skipped).status.ok());
  fault.fs()->FailWritesAfter(0);
  AppendCommand failed("its-append-fails");
  EXPECT_FALSE(ledger_->Submit(&failed).status.ok());
  ASSERT_TRUE(ledger_->Degraded());
  FakeLago lago;
  lago.SetMetricAnswer(503, "application/json", R"({"status":503,"error":"Service Unavailable"})");
  LagoSinkOptions options = FastOptions();
  options.billable_metric_check_interval_ms = 50;
  options.checkpoint_interval_ms = 60'000;  // the failed write is not tried again meanwhile
  StartSink(lago.url(), options);
  ASSERT_TRUE(WaitFor([&] {
    return sink_->GetStatus().last_error.rfind("writing the checkpoint", 0) == 0;
  })) << sink_->GetStatus().last_error;
  ASSERT_TRUE(LookupAnswerHandled(lago));
  lago.ClearMetricAnswer();
  ASSERT_TRUE(MetricFound(lago));
  const LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.state, "down");
  EXPECT_EQ(status.last_error.rfind("writing the checkpoint", 0), 0u) << status.last_error;
  check_schemas_ = false;  // the degraded ledger
}

// A LAGO_API_URL nothing answers at, on an idle sink: the check's connection failure is state
// "down" with last_error saying so (it was "unknown" and null until the first batch), and Lago
// reachable again clears it.
TEST_F(LagoSinkTest, AnUnreachableLagoShowsBeforeTheFirstBatch) {
  FakeLago lago;
  lago.SetDown(true);
  StartSink(lago.url());
  ASSERT_TRUE(
      WaitFor([&] { return sink_->GetStatus().state == "down"; }, std::chrono::seconds(10)))
      << sink_->GetStatus().state;
  const LagoSinkStatus status = sink_->GetStatus();
  EXPECT_NE(status.last_error.find("could not be reached"), std::string::npos)
      << status.last_error;
  EXPECT_FALSE(status.billable_metric_missing);
  lago.SetDown(false);
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "up"; }, std::chrono::seconds(10)))
      << sink_->GetStatus().last_error;
  EXPECT_EQ(sink_->GetStatus().last_error, "");
  EXPECT_GT(lago.metric_lookups(), 0u);
}

// An idle sink whose check Lago answered (the metric found; Lago's own refusal of the question,
// the key taken) stayed "unknown" and ledger_lago_sink_up 0, though it had asked and Lago had
// answered: it is up.
TEST_F(LagoSinkTest, AnIdleSinkIsUpOnceLagoAnswersTheCheck) {
  for (const bool permitted : {true, false}) {
    SCOPED_TRACE(permitted ? "the metric found" : "Lago's 403 to the question");
    FakeLago lago;
    if (!permitted) lago.SetMetricAnswer(403, "application/json", kMetricReadForbidden);
    LagoSinkOptions options = FastOptions();
    options.billable_metric_check_interval_ms = 50;
    StartSink(lago.url(), options);
    ASSERT_TRUE(permitted ? MetricFound(lago) : LookupAnswerHandled(lago));
    const LagoSinkStatus status = sink_->GetStatus();
    EXPECT_EQ(status.state, "up");
    EXPECT_EQ(status.last_error, "");
    std::string metrics;
    sink_->RenderMetrics(&metrics);
    EXPECT_NE(metrics.find("ledger_lago_sink_up 1\n"), std::string::npos) << metrics;
    EXPECT_TRUE(lago.requests().empty());  // no batch: the check alone answered
    ASSERT_TRUE(StopSink().ok());
  }
}

TEST_F(LagoSinkTest, AnEventLagoAlwaysFailsIsDeadLetteredAndTheRestDelivered) {
  FakeLago lago;
  Append(120);
  std::vector<std::string> ids = UsageIds();
  const std::string failing = ids[37];
  lago.FailTransaction(failing);
  StartSink(lago.url(), DeadLetterSoonOptions());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  std::vector<std::string> delivered;
  for (const std::string& id : ids) {
    if (id != failing) delivered.push_back(id);
  }
  EXPECT_TRUE(CountedExactlyOnce(lago, delivered));
  std::vector<Event> rejected = Events(kLagoSinkRejectedV1);
  ASSERT_EQ(rejected.size(), 1u);
  rapidjson::Document data;
  data.Parse(rejected[0].data.c_str());
  EXPECT_EQ(std::string(data["transaction_id"].GetString()), failing);
  EXPECT_EQ(data["http_status"].GetInt(), 500);
  EXPECT_EQ(std::string(data["reason"].GetString()), "server_error");
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
  EXPECT_EQ(sink_->GetStatus().state, "up");
}

// An outage answering 500 to everything fails the probes too: nothing is dead-lettered for it.
TEST_F(LagoSinkTest, AnOutageOf500sDeadLettersNothing) {
  FakeLago lago;
  lago.InjectFault(FakeLago::Fault::kServerError, 60);
  Append(120);
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_max = 20;
  StartSink(lago.url(), options);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_GE(sink_->metrics().request_failures.Value(), 60u);
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  EXPECT_TRUE(Events(kLagoSinkRejectedV1).empty());
}

// A 5xx for one event that passes (a lock on its customer's rows, one bad backend behind a
// balancer that the probes miss): the events after it are accepted alone while it fails, but
// for less than server_error_dead_letter_after_ms -- it is delivered, not dead-lettered.
TEST_F(LagoSinkTest, AnEventFailingForAWhileIsNotDeadLettered) {
  FakeLago lago;
  Append(60);
  const std::vector<std::string> ids = UsageIds();
  lago.FailTransaction(ids[10]);
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_max = 20;
  options.server_error_dead_letter_after_ms = 60'000;
  StartSink(lago.url(), options);
  // The ten before it, then at least five accepted alone after it: five confirmations.
  ASSERT_TRUE(lago.WaitForStored(15, std::chrono::seconds(30)));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  lago.RecoverTransaction(ids[10]);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, ids));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  EXPECT_TRUE(Events(kLagoSinkRejectedV1).empty());
}

// An outage longer than the guard, during which the front event became a suspect, counts for
// nothing against it: its clock starts when Lago first handles another event while failing it.
// (It ran from the outage: a good event a flaky backend failed a few times right after the outage
// was dead-lettered within three probes.)
TEST_F(LagoSinkTest, AnOutageBeforeTheProbesCountsNothingAgainstTheFront) {
  FakeLago lago;
  Append(60);
  const std::vector<std::string> ids = UsageIds();
  lago.InjectFault(FakeLago::Fault::kServerError, 150);  // ≥ 1.5 s at the backoff below
  lago.FailTransaction(ids[0]);  // failing for a while after the outage too
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_max = 20;
  options.server_error_dead_letter_after_ms = 1000;
  StartSink(lago.url(), options);
  // The outage, then at least five events accepted alone after the front: five confirmations,
  // well within the guard counted from the first of them.
  ASSERT_TRUE(lago.WaitForStored(5, std::chrono::seconds(30)));
  lago.RecoverTransaction(ids[0]);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, ids));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  EXPECT_TRUE(Events(kLagoSinkRejectedV1).empty());
}

// The dead letters in log order, as (transaction_id, reason).
std::vector<std::pair<std::string, std::string>> DeadLetters(const std::vector<Event>& rejected) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const Event& e : rejected) {
    rapidjson::Document data;
    data.Parse(e.data.c_str());
    out.emplace_back(data["transaction_id"].GetString(), data["reason"].GetString());
  }
  return out;
}

std::vector<std::string> Without(const std::vector<std::string>& ids,
                                 const std::set<std::string>& left_out) {
  std::vector<std::string> out;
  for (const std::string& id : ids) {
    if (left_out.count(id) == 0) out.push_back(id);
  }
  return out;
}

// An outage of 500s while an event is under suspicion: the probes fail and become suspects too,
// but confirm nothing. After it, only the event Lago always fails is dead-lettered; the suspects
// of the outage are delivered once they are accepted alone.
TEST_F(LagoSinkTest, AnOutageWhileAnEventIsSuspectedDeadLettersOnlyThatEvent) {
  FakeLago lago;
  Append(60);
  const std::vector<std::string> ids = UsageIds();
  lago.FailTransaction(ids[10]);
  StartSink(lago.url(), DeadLetterSoonOptions());
  ASSERT_TRUE(lago.WaitForStored(11, std::chrono::seconds(30)));  // a first probe accepted
  lago.InjectFault(FakeLago::Fault::kServerError, 100);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, Without(ids, {ids[10]})));
  using Letter = std::pair<std::string, std::string>;
  EXPECT_EQ(DeadLetters(Events(kLagoSinkRejectedV1)),
            (std::vector<Letter>{{ids[10], "server_error"}}));
}

// A restart while an event is under suspicion: the probes sent before it reached Lago, so Lago
// answers 422 value_already_exist to the first ones after the restart. Those are settled as
// delivered and confirm the failure like an accepted probe (they reset it forever before).
TEST_F(LagoSinkTest, AFailingEventIsDeadLetteredAfterARestartWhoseProbesLagoHasAlready) {
  FakeLago lago;
  Append(60);
  lago.FailTransaction(UsageIds()[10]);
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_max = 20;
  options.server_error_dead_letter_after_ms = 60'000;
  StartSink(lago.url(), options);
  // The ten before it, then five probes accepted after it.
  ASSERT_TRUE(lago.WaitForStored(15, std::chrono::seconds(30)));
  StopSink().IgnoreError();  // the failing event is still pending
  EXPECT_EQ(Events(kLagoSinkRejectedV1).size(), 0u);

  options.server_error_dead_letter_after_ms = 300;
  Append(20);
  StartSink(lago.url(), options);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  const std::vector<std::string> ids = UsageIds();
  EXPECT_TRUE(CountedExactlyOnce(lago, Without(ids, {ids[10]})));
  EXPECT_GE(sink_->metrics().events_already_present.Value(), 1u);
  using Letter = std::pair<std::string, std::string>;
  EXPECT_EQ(DeadLetters(Events(kLagoSinkRejectedV1)),
            (std::vector<Letter>{{ids[10], "server_error"}}));
}

// An event Lago always fails followed by one that Lago fails too (two adjacent items of one usage
// batch breaking a metric's expression: the probe becomes a suspect itself and the probe goes one
// further; each is dead-lettered after the timeout, on its own record), or by one Lago refuses
// for itself (422: the probe is dead-lettered as a refused event, counts as handled, and the
// failing event is dead-lettered after the timeout). The rest are delivered once.
class LagoSinkNextEventTest : public LagoSinkTest, public ::testing::WithParamInterface<bool> {};

TEST_P(LagoSinkNextEventTest, AFailingEventFollowedByAFailingOrARefusedOneAreBothDeadLettered) {
  const bool refused = GetParam();
  FakeLago lago;
  Append(60);
  const std::vector<std::string> ids = UsageIds();
  lago.FailTransaction(ids[10]);
  if (refused) {
    lago.RejectTransaction(ids[11]);
  } else {
    lago.FailTransaction(ids[11]);
  }
  StartSink(lago.url(), DeadLetterSoonOptions());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, Without(ids, {ids[10], ids[11]})));
  using Letter = std::pair<std::string, std::string>;
  EXPECT_EQ(DeadLetters(Events(kLagoSinkRejectedV1)),
            refused ? (std::vector<Letter>{{ids[11], "validation_errors"},
                                           {ids[10], "server_error"}})
                    : (std::vector<Letter>{{ids[10], "server_error"}, {ids[11], "server_error"}}));
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
}

INSTANTIATE_TEST_SUITE_P(FailingOrRefused, LagoSinkNextEventTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Refused" : "Failing";
                         });

// The event after a failing one cannot be mapped: it is dead-lettered without sending and the
// probe goes to the one after it.
TEST_F(LagoSinkTest, AFailingEventFollowedByAnUnmappableOneAreBothDeadLettered) {
  FakeLago lago;
  class Malformed final : public Command {
   public:
    Status Decide(const DecideContext&, Decision* decision) override {
      decision->events.push_back(NewEvent{"usage.recorded.v1", "x", R"({"user_id":"x"})"});
      decision->body = "{}";
      return Status::OK();
    }
  } malformed;
  Append(11, /*noise=*/false);
  ASSERT_TRUE(ledger_->Submit(&malformed).status.ok());
  Append(30, /*noise=*/false);
  const std::vector<std::string> ids = UsageIds();
  lago.FailTransaction(ids[10]);
  StartSink(lago.url(), DeadLetterSoonOptions());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, Without(ids, {ids[10], ids[11]})));
  using Letter = std::pair<std::string, std::string>;
  EXPECT_EQ(DeadLetters(Events(kLagoSinkRejectedV1)),
            (std::vector<Letter>{{ids[11], "unmappable"}, {ids[10], "server_error"}}));
  check_schemas_ = false;  // the malformed usage event is malformed on purpose
}

// A Retry-After counts from the answer, not from when the request was sent: a 429 that took
// 800 ms to come is not retried 200 ms after it.
TEST_F(LagoSinkTest, RetryAfterCountsFromTheAnswer) {
  FakeLago::Options fake;
  fake.slow_ms = 800;
  FakeLago lago(fake);
  lago.InjectFault(FakeLago::Fault::kSlowRateLimited, 1);
  Append(5);
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_max = 5000;
  StartSink(lago.url(), options);
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  std::vector<FakeLago::Request> requests = lago.requests();
  ASSERT_GE(requests.size(), 2u);
  EXPECT_EQ(requests[0].status, 429);
  EXPECT_GE(requests[1].received - requests[0].answered, std::chrono::milliseconds(900));
}

TEST_F(LagoSinkTest, AnUnmappableUsageEventIsDeadLetteredWithoutSending) {
  FakeLago lago;
  class Malformed final : public Command {
   public:
    Status Decide(const DecideContext&, Decision* decision) override {
      decision->events.push_back(NewEvent{"usage.recorded.v1", "x", R"({"user_id":"x"})"});
      decision->body = "{}";
      return Status::OK();
    }
  } malformed;
  ASSERT_TRUE(ledger_->Submit(&malformed).status.ok());
  Append(5, false);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  std::vector<Event> rejected = Events(kLagoSinkRejectedV1);
  ASSERT_EQ(rejected.size(), 1u);
  EXPECT_NE(rejected[0].data.find(R"("http_status":0,"reason":"unmappable")"), std::string::npos)
      << rejected[0].data;
  EXPECT_EQ(lago.stored_count(), 5u);
  check_schemas_ = false;  // the malformed usage event is malformed on purpose
}

TEST_F(LagoSinkTest, ARefusedApiKeyStallsWithoutLosingUsage) {
  FakeLago lago;
  lago.SetApiKey("another-key");
  Append(50);
  StartSink(lago.url());
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "unauthorized"; }));
  EXPECT_GT(sink_->GetStatus().lag, 0u);
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  const std::string error = sink_->GetStatus().last_error;
  EXPECT_NE(error.find("LAGO_API_KEY"), std::string::npos) << error;
  EXPECT_EQ(error.find(kFakeLagoApiKey), std::string::npos) << error;
  lago.SetApiKey(kFakeLagoApiKey);  // the operator fixes the key on Lago's side
  ASSERT_TRUE(CaughtUp());
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  // Up again, the 401 is no longer its error (/readyz showed it beside state "up", lag 0).
  ASSERT_TRUE(WaitFor([&] { return sink_->GetStatus().state == "up"; }));
  EXPECT_EQ(sink_->GetStatus().last_error, "");
}

// A proxy in front of Lago answering a redirect or its own 4xx page says nothing about the
// events: the sink retries (state down) instead of dead-lettering every event, and delivers
// everything once the proxy is fixed. The page (here echoing the Authorization header) is kept
// nowhere.
TEST_F(LagoSinkTest, AProxysAnswerIsRetriedNotDeadLettered) {
  FakeLago lago;
  lago.InjectFault(FakeLago::Fault::kRedirect, 1000);
  Append(20);
  StartSink(lago.url());
  uint64_t failures = 0;
  for (FakeLago::Fault fault : {FakeLago::Fault::kRedirect, FakeLago::Fault::kProxyRefusal}) {
    SCOPED_TRACE(fault == FakeLago::Fault::kRedirect ? "308" : "421");
    if (fault != FakeLago::Fault::kRedirect) {
      lago.ClearFaults();
      lago.InjectFault(fault, 1000);
    }
    ASSERT_TRUE(
        WaitFor([&] { return sink_->metrics().request_failures.Value() >= failures + 3; }))
        << sink_->GetStatus().last_error;
    failures = sink_->metrics().request_failures.Value();
    EXPECT_EQ(sink_->GetStatus().state, "down");
    EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
    EXPECT_TRUE(Events(kLagoSinkRejectedV1).empty());
    const std::string error = sink_->GetStatus().last_error;
    EXPECT_NE(error.find("LAGO_API_URL"), std::string::npos) << error;
    EXPECT_EQ(error.find(kFakeLagoApiKey), std::string::npos) << error;
  }
  lago.ClearFaults();
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
}

// Something other than Lago at LAGO_API_URL answering 200 to any POST (a catch-all route, a
// captive page, a relay) acknowledges nothing: only Lago's {"events":[...]} does. The sink
// retries (state down) and the checkpoint stays where it was; nothing is lost.
TEST_F(LagoSinkTest, ATwoHundredThatIsNotLagosAnswerIsNotAnAcknowledgement) {
  FakeLago lago;
  lago.InjectFault(FakeLago::Fault::kProxyOk, 1000);
  Append(20);
  StartSink(lago.url());
  // Taken for an acknowledgement, the first answer would leave nothing to send again.
  ASSERT_TRUE(WaitFor([&] { return lago.requests().size() >= 3 || sink_->GetStatus().lag == 0; }));
  const LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.checkpoint.value(), 0u);
  EXPECT_EQ(Checkpoint().value(), 0u);
  EXPECT_GT(status.lag, 0u);
  EXPECT_EQ(status.state, "down");
  EXPECT_NE(status.last_error.find("LAGO_API_URL"), std::string::npos) << status.last_error;
  EXPECT_EQ(sink_->metrics().batches_accepted.Value(), 0u);
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
  EXPECT_EQ(lago.stored_count(), 0u);
  lago.ClearFaults();
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
}

// Lago's answer echoes every event of the batch and may be longer than the part the client
// keeps: cut short, it still acknowledges the batch.
TEST_F(LagoSinkTest, LagosAnswerCutAtTheKeptBytesStillAcknowledges) {
  FakeLago lago;
  Append(20);
  response_bytes_max_ = 16;  // {"events":[{"tr
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_EQ(sink_->metrics().request_failures.Value(), 0u);
}

TEST_F(LagoSinkTest, StopIsBoundedWhileLagoIsDown) {
  FakeLago lago;
  lago.SetDown(true);
  Append(20);
  LagoSinkOptions options = FastOptions();
  options.retry_backoff_ms_min = 20'000;  // a long backoff is running when Stop() comes
  options.retry_backoff_ms_max = 30'000;
  StartSink(lago.url(), options);
  ASSERT_TRUE(WaitFor([&] { return sink_->metrics().request_failures.Value() >= 1; }));
  const auto start = std::chrono::steady_clock::now();
  Status s = StopSink(std::chrono::seconds(10));
  EXPECT_EQ(s.problem(), "lago_unavailable") << s.ToString();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_EQ(Checkpoint().value(), 0u);
  lago.SetDown(false);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
}

// A Lago that hangs mid-request: Stop() cuts the request at its deadline instead of waiting for
// the client's read timeout, which would eat the time the daemon's shutdown leaves the outbox.
TEST_F(LagoSinkTest, StopCutsARequestToAHungLagoAtTheDeadline) {
  FakeLago::Options fake;
  fake.slow_ms = 6000;
  FakeLago lago(fake);
  lago.InjectFault(FakeLago::Fault::kSlow, 1);
  Append(20);
  StartSink(lago.url(), FastOptions(), kFakeLagoApiKey, /*read_timeout_ms=*/10'000);
  ASSERT_TRUE(WaitFor([&] { return lago.requests_received() >= 1; }));  // in flight now
  const auto start = std::chrono::steady_clock::now();
  Status s = sink_->Stop(std::chrono::seconds(1));
  const auto took = std::chrono::steady_clock::now() - start;
  const std::string error = sink_->GetStatus().last_error;
  StopSink().IgnoreError();
  EXPECT_EQ(s.problem(), "lago_unavailable") << s.ToString();
  EXPECT_LT(took, std::chrono::milliseconds(3000));  // 6 s without the cut
  EXPECT_EQ(Checkpoint().value(), 0u);
  // The deadline cut it, not Lago: the shutdown warned "Lago could not be reached".
  EXPECT_NE(s.message().find("shutdown's deadline"), std::string::npos) << s.ToString();
  EXPECT_NE(error.find("deadline cut the request to Lago short"), std::string::npos) << error;
  EXPECT_EQ(error.find("could not be reached"), std::string::npos) << error;
}

// usage.batch_recorded.v1: one Lago event per item (transaction_id "<event id>:<index>"), sent in
// log order in batches of at most 100 that cut across events, each counted once.
TEST_F(LagoSinkTest, DeliversEveryItemOfBatchEventsExactlyOnce) {
  FakeLago lago;
  Append(30);
  AppendBatch("alice", 250);
  AppendBatch("bob", 7);
  Append(10, /*noise=*/false);
  AppendBatch("carol", 1);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  const std::vector<std::string> ids = UsageIds();
  ASSERT_EQ(ids.size(), 40u + 250 + 7 + 1);
  EXPECT_TRUE(CountedExactlyOnce(lago, ids));
  ExpectBatchesWithinLimit(lago);
  // In log order, with each item's own fields.
  std::vector<FakeLago::StoredEvent> stored = lago.stored();
  ASSERT_EQ(stored.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(stored[i].transaction_id, ids[i]) << i;
  const std::vector<Event> batches = Events(kBatchType);
  ASSERT_EQ(batches.size(), 3u);
  rapidjson::Document data;
  data.Parse(batches[0].data.c_str());
  size_t at = 0;
  while (stored[at].transaction_id != batches[0].id + ":0") ++at;
  for (rapidjson::SizeType i = 0; i < data["items"].Size(); ++i) {
    const FakeLago::StoredEvent& s = stored[at + i];
    const rapidjson::Value& item = data["items"][i];
    EXPECT_EQ(s.external_subscription_id, "alice");
    EXPECT_EQ(s.service, item["service"].GetString());
    EXPECT_EQ(s.quantity, item["quantity"].GetInt64());
    EXPECT_EQ(s.timestamp_ms, (1795345200 + static_cast<int64_t>(i % 10)) * 1000 + 500);
    EXPECT_EQ(s.properties.find("\"model\"") != std::string::npos, item.HasMember("metadata"));
  }
  EXPECT_EQ(sink_->metrics().events_delivered.Value(), ids.size());
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
}

// The checkpoint passes a batch event only once all its items are handled: Lago takes the first
// 100 items of 150, then fails; the sink stops with its checkpoint before the event, and the next
// sink sends all 150 again under the same ids (Lago settles the 100 it has).
TEST_F(LagoSinkTest, APartlyDeliveredBatchEventIsSentAgainWholeAndCountedOnce) {
  FakeLago lago;
  Append(5, /*noise=*/false);
  AppendBatch("alice", 150);
  const Position batch_at = ledger_->Head();
  lago.InjectFault(FakeLago::Fault::kNone, 1);
  lago.InjectFault(FakeLago::Fault::kServerError, 1000);
  StartSink(lago.url());
  ASSERT_TRUE(WaitFor([&] { return sink_->metrics().request_failures.Value() >= 2; }));
  EXPECT_EQ(lago.stored_count(), 100u);  // 5 + the first 95 items
  LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.checkpoint.value(), batch_at.value() - 1);
  EXPECT_EQ(status.pending, 55u);
  EXPECT_EQ(StopSink(std::chrono::seconds(1)).problem(), "lago_unavailable");
  EXPECT_EQ(Checkpoint().value(), batch_at.value() - 1);

  lago.ClearFaults();
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds()));
  EXPECT_EQ(lago.stored_count(), 155u);
  EXPECT_EQ(sink_->metrics().events_already_present.Value(), 95u);
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
}

// A crash after Lago stored batch items but before the checkpoint reached the disk, in every
// dedupe mode of Lago's stores: each item counted once.
TEST_F(LagoSinkTest, BatchItemsResentAfterALostCheckpointAreCountedOnce) {
  for (FakeLago::Dedupe dedupe : {FakeLago::Dedupe::kRejectBatch, FakeLago::Dedupe::kStoreRest,
                                  FakeLago::Dedupe::kSilent}) {
    SCOPED_TRACE(static_cast<int>(dedupe));
    FakeLago::Options lago_options;
    lago_options.dedupe = dedupe;
    FakeLago lago(lago_options);
    const Position start = ledger_->Head();
    ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", start, true).ok());
    AppendBatch("alice", 120);
    Append(20);
    AppendBatch("bob", 130);
    const Position second_batch = ledger_->Head();
    AppendBatch("carol", 40);
    StartSink(lago.url());
    ASSERT_TRUE(CaughtUp());
    ASSERT_TRUE(StopSink().ok());
    // The lost write: the checkpoint is back before bob's event; more usage meanwhile.
    ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", Position(second_batch.value() - 1), true).ok());
    AppendBatch("dave", 60);
    StartSink(lago.url());
    ASSERT_TRUE(CaughtUp(std::chrono::seconds(60))) << sink_->GetStatus().last_error;
    EXPECT_TRUE(CountedExactlyOnce(lago, UsageIds(start)));
    // Bob's and carol's items again. (Lago's kStoreRest also stores the new items of a batch it
    // refuses, so their re-send is "already present" too.)
    if (dedupe == FakeLago::Dedupe::kRejectBatch) {
      EXPECT_EQ(sink_->metrics().events_already_present.Value(), 130u + 40u);
    } else if (dedupe == FakeLago::Dedupe::kStoreRest) {
      EXPECT_GE(sink_->metrics().events_already_present.Value(), 130u + 40u);
    }
    EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
    ExpectBatchesWithinLimit(lago);
    ASSERT_TRUE(StopSink().ok());
  }
}

TEST_F(LagoSinkTest, ARefusedBatchItemIsDeadLetteredAloneAndTheEventCompleted) {
  FakeLago lago;
  AppendBatch("alice", 120);
  const std::string batch_id = Events(kBatchType).at(0).id;
  const std::string poisoned = batch_id + ":37";
  lago.RejectTransaction(poisoned);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp()) << sink_->GetStatus().last_error;
  std::vector<std::string> delivered;
  for (const std::string& id : UsageIds()) {
    if (id != poisoned) delivered.push_back(id);
  }
  EXPECT_EQ(delivered.size(), 119u);
  EXPECT_TRUE(CountedExactlyOnce(lago, delivered));
  std::vector<Event> rejected = Events(kLagoSinkRejectedV1);
  ASSERT_EQ(rejected.size(), 1u);
  rapidjson::Document data;
  data.Parse(rejected[0].data.c_str());
  EXPECT_EQ(std::string(data["transaction_id"].GetString()), poisoned);
  EXPECT_EQ(std::string(data["source_type"].GetString()), "usage.batch_recorded.v1");
  EXPECT_EQ(data["source_position"].GetUint64(), Events(kBatchType).at(0).position.value());
  EXPECT_EQ(std::string(data["lago_event"]["transaction_id"].GetString()), poisoned);
  EXPECT_EQ(std::string(data["user_id"].GetString()), "alice");
  EXPECT_EQ(sink_->GetStatus().checkpoint, ledger_->Head());
}

// Negative controls: the exactly-once check catches loss and double counting.
// The total quantity Lago counted for `user`.
int64_t LagoQuantity(const FakeLago& lago, const std::string& user) {
  int64_t total = 0;
  for (const FakeLago::StoredEvent& e : lago.stored()) {
    if (e.external_subscription_id == user) total += e.quantity;
  }
  return total;
}

// An event rewritten and re-sealed (its own hash recomputed: quantity 1 -> 100000) shows only in
// its successor's link. Each scan's first event was checked on its own: with event 10 the last
// of a scan (batches of 10) it was sent, and the failed link at 11 never came up; with 11 in the
// same scan (batches of 100) the failed read was retried from 11, unlinked, and 10 was sent
// after all. A broken link at 11 leaves 10 and 11 both in doubt: the sink sends up to 9, stops
// there and says so. A sink whose checkpoint is already 10 (sent before the rewrite) links its
// first event, 11, to the stored event 10: it sends nothing more.
TEST_F(LagoSinkTest, AReSealedEventIsNotSentNorTheEventsAfterIt) {
  Consume("alice", 20);
  const std::vector<Event> usage = Events(kUsageType);
  ASSERT_EQ(usage.size(), 20u);
  Tamper(10, /*reseal=*/true, [](Event* event) {
    const size_t at = event->data.find(R"("quantity":1,)");
    ASSERT_NE(at, std::string::npos);
    event->data.replace(at, 13, R"("quantity":100000,)");
  });

  for (size_t batch : {size_t{10}, size_t{100}}) {
    SCOPED_TRACE("batches of " + std::to_string(batch));
    FakeLago lago;
    LagoSinkOptions options = FastOptions();
    options.batch_events_max = batch;
    options.checkpoint_name = "sink.lago." + std::to_string(batch);  // each from position 0
    StartSink(lago.url(), options);
    ASSERT_TRUE(WaitFor([&] {
      LagoSinkStatus status = sink_->GetStatus();
      return !status.last_error.empty() && status.pending == 0 && status.checkpoint.value() >= 9;
    })) << sink_->GetStatus().last_error;
    LagoSinkStatus status = sink_->GetStatus();
    EXPECT_EQ(status.state, "down");
    EXPECT_EQ(status.checkpoint, Position(9));
    EXPECT_NE(status.last_error.find("damaged at position 11"), std::string::npos)
        << status.last_error;
    EXPECT_NE(status.last_error.find("position 11 does not link"), std::string::npos)
        << status.last_error;
    EXPECT_EQ(sink_->metrics().events_rejected.Value(), 0u);
    EXPECT_EQ(StopSink().code(), Code::kUnavailable);

    std::set<std::string> forwarded;
    for (const FakeLago::StoredEvent& e : lago.stored()) forwarded.insert(e.transaction_id);
    for (const Event& e : usage) {
      EXPECT_EQ(forwarded.count(e.id), e.position.value() < 10 ? 1u : 0u) << e.position.value();
    }
    size_t sent = 0;
    for (const FakeLago::Request& r : lago.requests()) sent += r.events;
    EXPECT_EQ(sent, 9u);
    EXPECT_EQ(LagoQuantity(lago, "alice"), 9);
    Position checkpoint;
    ASSERT_TRUE(ledger_->GetCheckpoint(options.checkpoint_name, &checkpoint).ok());
    EXPECT_EQ(checkpoint, Position(9));
    EXPECT_EQ(ledger_->Head(), Position(20));  // no lago.sink_rejected.v1
  }

  FakeLago lago;
  LagoSinkOptions options = FastOptions();
  options.checkpoint_name = "sink.lago.from10";
  ASSERT_TRUE(ledger_->PutCheckpoint(options.checkpoint_name, Position(10), true).ok());
  StartSink(lago.url(), options);
  ASSERT_TRUE(WaitFor([&] { return !sink_->GetStatus().last_error.empty(); }));
  LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.state, "down");
  EXPECT_NE(status.last_error.find("position 11 does not link"), std::string::npos)
      << status.last_error;
  EXPECT_EQ(StopSink().code(), Code::kUnavailable);
  EXPECT_EQ(lago.requests_received(), 0u);
  Position checkpoint;
  ASSERT_TRUE(ledger_->GetCheckpoint(options.checkpoint_name, &checkpoint).ok());
  EXPECT_EQ(checkpoint, Position(10));
}

// Usage before a damaged event is sent: a scan that queued 1..5 and then failed on 6 skipped
// Step, and every retry read 6 again and failed, so 1..5 never reached Lago and the checkpoint
// stayed at 0. The sink sends up to 5 and stops before 6, down, naming it -- also once a failed
// send of 1..5 is retried and accepted (the failure's "Lago answered 500" stayed in last_error).
TEST_F(LagoSinkTest, UsageBeforeADamagedEventIsSentAndTheSinkStopsThere) {
  FakeLago lago;
  lago.InjectFault(FakeLago::Fault::kServerError);
  Consume("alice", 6);
  Consume("alice");  // after the damaged one: never sent
  Tamper(6, /*reseal=*/false, [](Event* event) {
    const size_t at = event->data.find(R"("quantity":1,)");
    ASSERT_NE(at, std::string::npos);
    event->data[at + 11] = '2';  // one byte, the hash left as it was
  });
  StartSink(lago.url(), FastOptions());
  ASSERT_TRUE(WaitFor([&] {
    LagoSinkStatus status = sink_->GetStatus();
    return status.checkpoint == Position(5) && status.pending == 0 &&
           status.last_error.find("damaged") != std::string::npos;
  })) << sink_->GetStatus().last_error;
  LagoSinkStatus status = sink_->GetStatus();
  EXPECT_EQ(status.state, "down");  // /readyz's lago state
  EXPECT_NE(status.last_error.find("damaged at position 6"), std::string::npos)
      << status.last_error;
  EXPECT_NE(status.last_error.find("position 6 fails its hash"), std::string::npos)
      << status.last_error;
  EXPECT_EQ(LagoQuantity(lago, "alice"), 5);
  EXPECT_EQ(lago.stored_count(), 5u);
  EXPECT_EQ(StopSink().code(), Code::kUnavailable);
  EXPECT_EQ(Checkpoint(), Position(5));
  EXPECT_EQ(lago.stored_count(), 5u);
  EXPECT_EQ(ledger_->Head(), Position(7));  // no lago.sink_rejected.v1
}

TEST_F(LagoSinkTest, NegativeControlTheCheckDetectsLoss) {
  FakeLago lago;
  Append(100, /*noise=*/false);
  // A broken sink: its checkpoint moved past five events Lago never acknowledged.
  ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", Position(5), true).ok());
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  ::testing::AssertionResult result = CountedExactlyOnce(lago, UsageIds());
  EXPECT_FALSE(result);
  EXPECT_NE(std::string(result.message()).find("missing 5"), std::string::npos) << result.message();
}

TEST_F(LagoSinkTest, NegativeControlTheCheckDetectsDoubleCounting) {
  FakeLago::Options options;
  options.dedupe = FakeLago::Dedupe::kNoDedupe;  // a Lago that does not dedupe
  FakeLago lago(options);
  Append(60, /*noise=*/false);
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  ASSERT_TRUE(StopSink().ok());
  ASSERT_TRUE(ledger_->PutCheckpoint("sink.lago", Position(30), true).ok());  // a lost write
  StartSink(lago.url());
  ASSERT_TRUE(CaughtUp());
  ::testing::AssertionResult result = CountedExactlyOnce(lago, UsageIds());
  EXPECT_FALSE(result);
  EXPECT_NE(std::string(result.message()).find("counted more than once 30"), std::string::npos)
      << result.message();
}

}  // namespace
}  // namespace ledger::http
