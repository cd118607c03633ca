#include "events/outbox.h"

#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include <rapidjson/document.h>

#include "events/coding.h"
#include "events/embedded_kafka.h"
#include "events/ledger.h"
#include "tests/support/fault_fs.h"
#include "tests/support/kafka_test_consumer.h"
#include "tests/support/tcp_forwarder.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wait.h"
#include "tests/tools/tools_test_util.h"

namespace ledger {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::AppendCommand;
using testing::CheckDelivery;
using testing::ClusterIdOf;
using testing::ConsumedRecord;
using testing::DeliveryCheckOptions;
using testing::DeliveryReport;
using testing::WaitFor;
using testing::KafkaTestConsumer;
using testing::TempDir;

constexpr char kTopic[] = "ledger.events";
constexpr char kSource[] = "urn:ledgerd:test";

// The Java client's default partitioner: toPositive(murmur2(key)) % partitions
// (org.apache.kafka.common.utils.Utils.murmur2).
int32_t JavaPartition(const std::string& key, int32_t partitions) {
  const uint32_t m = 0x5bd1e995;
  const size_t length = key.size();
  uint32_t h = 0x9747b28c ^ static_cast<uint32_t>(length);
  auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(key[i])); };
  for (size_t i = 0; i + 4 <= length; i += 4) {
    uint32_t k = byte(i) | (byte(i + 1) << 8) | (byte(i + 2) << 16) | (byte(i + 3) << 24);
    k *= m;
    k ^= k >> 24;
    k *= m;
    h *= m;
    h ^= k;
  }
  const size_t tail = length & ~size_t{3};
  switch (length % 4) {
    case 3:
      h ^= byte(tail + 2) << 16;
      [[fallthrough]];
    case 2:
      h ^= byte(tail + 1) << 8;
      [[fallthrough]];
    case 1:
      h ^= byte(tail);
      h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return static_cast<int32_t>((h & 0x7fffffff) % static_cast<uint32_t>(partitions));
}

class OutboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(EmbeddedKafka::Open({}, &kafka_).ok());
    LedgerOptions options;
    options.path = dir_.path();
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  OutboxOptions Options() const {
    OutboxOptions options;
    options.bootstrap_servers = kafka_->bootstrap_servers();
    options.topic = kTopic;
    options.source = kSource;
    options.checkpoint_interval_ms = 100;
    options.poll_interval_ms = 20;
    return options;
  }

  static int PortOf(const std::string& bootstrap) {
    return std::stoi(bootstrap.substr(bootstrap.rfind(':') + 1));
  }

  // A per-cluster outbox that reaches its cluster through `forwarder` (which a test retargets to
  // another cluster), retrying quickly.
  OutboxOptions ForwardedPerClusterOptions(const testing::TcpForwarder& forwarder) const {
    OutboxOptions options = Options();
    options.bootstrap_servers = forwarder.address();
    options.checkpoint_per_cluster = true;
    options.retry_backoff_ms_min = 50;
    options.retry_backoff_ms_max = 200;
    return options;
  }

  std::unique_ptr<KafkaOutbox> OpenOutbox(const OutboxOptions& options) {
    std::unique_ptr<KafkaOutbox> outbox;
    Status s = KafkaOutbox::Open(options, ledger_.get(), &outbox);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return outbox;
  }

  // Appends `commands` commands of `per_command` events each, cycling over `subjects` subjects.
  void Append(int commands, int per_command = 1, int subjects = 7, KafkaOutbox* notify = nullptr) {
    for (int i = 0; i < commands; ++i) {
      AppendCommand command("user-" + std::to_string(next_subject_++ % subjects), per_command);
      CommandResult result = ledger_->Submit(&command);
      ASSERT_TRUE(result.status.ok()) << result.status.ToString();
      if (notify != nullptr) notify->Notify();
    }
  }

  uint64_t Head() const { return ledger_->Head().value(); }

  uint64_t StoredCheckpoint() const {
    Position p;
    EXPECT_TRUE(ledger_->GetCheckpoint("outbox.kafka", &p).ok());
    return p.value();
  }

  bool WaitCaughtUp(KafkaOutbox* outbox, milliseconds timeout = seconds(20)) {
    return WaitFor([&] { return outbox->GetStatus().lag == 0; }, timeout);
  }

  // An outbox started with rewinds backing off from 50 ms to `backoff_max_ms`, after publishing
  // `commands` appended commands.
  std::unique_ptr<KafkaOutbox> StartCaughtUp(OutboxOptions options, int backoff_max_ms,
                                             int commands, int per_command, int subjects) {
    options.retry_backoff_ms_min = 50;
    options.retry_backoff_ms_max = backoff_max_ms;
    auto outbox = OpenOutbox(options);
    EXPECT_TRUE(outbox->Start().ok());
    Append(commands, per_command, subjects, outbox.get());
    EXPECT_TRUE(WaitCaughtUp(outbox.get()));
    return outbox;
  }

  std::unique_ptr<KafkaTestConsumer> Consumer() {
    std::unique_ptr<KafkaTestConsumer> consumer;
    Status s = KafkaTestConsumer::Open(kafka_->bootstrap_servers(), kTopic, &consumer);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return consumer;
  }

  // Consumes until every position 1..Head() was seen, then checks the whole topic.
  DeliveryReport ConsumeAndCheck(bool check_key_order = true) {
    auto consumer = Consumer();
    if (consumer == nullptr) return {};
    consumer->ConsumeDistinct(Head(), seconds(20));
    DeliveryCheckOptions options;
    options.expected_source = kSource;
    options.check_key_order = check_key_order;
    DeliveryReport report = CheckDelivery(consumer->records(), 1, Head(), options);
    records_ = consumer->records();
    // Every copy, first or redelivered, is the ledger's own rendering of the event at its
    // position (with a dataref only when the event is too large to be published whole).
    std::vector<Event> events;
    Status read = ledger_->ReadEvents(Position(0), Head(), {}, &events);
    if (!read.ok()) report.errors.push_back("reading the ledger: " + read.ToString());
    for (const ConsumedRecord& record : records_) {
      testing::CloudEventFields fields;
      if (!testing::ValidateCloudEventRecord(record, kSource, &fields).empty()) continue;
      if (fields.position == 0 || fields.position > events.size()) continue;  // reported above
      const Event& event = events[fields.position - 1];
      const std::string whole = ToCloudEventJson(event, kSource);
      const bool matches = whole.size() > limits::kOutboxMessageBytesMax
                               ? record.value == ToCloudEventJsonWithDataRef(event, kSource)
                               : record.value == whole;
      if (!matches) {
        report.errors.push_back("position " + std::to_string(fields.position) + " at offset " +
                                std::to_string(record.offset) + " differs from the ledger's event");
      }
    }
    return report;
  }

  // Kafka refusing every produce for a while (see RepeatedRefusalsShowAsDown).
  void ExpectRepeatedRefusalsShowAsDown(OutboxOptions options) {
    options.stall_down_ms = 300;
    auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 5, 1, 1);
    ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "up"; }, seconds(5)));
    kafka_->PushRequestErrors(EmbeddedKafka::kProduceApiKey,
                              std::vector<int>(40, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED));
    Append(5, 1, 1, outbox.get());
    // "down" for good, not for a moment (a reload of the checkpoint shows "down" while it lasts).
    auto stays_down = [&] {
      for (int i = 0; i < 5; ++i) {
        if (i > 0) std::this_thread::sleep_for(milliseconds(50));
        OutboxStatus status = outbox->GetStatus();
        if (status.kafka_state != "down" || status.lag == 0) return false;
      }
      return true;
    };
    EXPECT_TRUE(WaitFor(stays_down, seconds(10))) << outbox->GetStatus().last_error;
    ASSERT_TRUE(WaitCaughtUp(outbox.get(), seconds(60))) << outbox->GetStatus().last_error;
    EXPECT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "up"; }, seconds(5)));
    EXPECT_GT(outbox->metrics().retried.Value(), 0u);
    EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  }

  // Event 12's stored bytes: altered (one bit of its data flipped, so that publishing stops at
  // 11) or put back. The ledger must be closed.
  void AlterEvent12(std::string* original) {
    testing::EditRaw(dir_.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
      rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
      std::string stored;
      ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(12), &stored).ok());
      if (original->empty()) {
        *original = stored;
        const size_t at = stored.size() - 33;  // the last byte of its data ('}')
        stored[at] = static_cast<char>(stored[at] ^ 0x01);
      } else {
        stored = *original;
      }
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(12), stored).ok());
    });
  }

  // Appends 20 events, deletes position `missing` through RocksDB and starts an outbox on the
  // store: it must publish up to the event before the one before the gap (no event vouches for
  // that one) and stop there as log_damaged, never rewinding.
  void ExpectAMissingEventStopsAsLogDamaged(uint64_t missing, const OutboxOptions& options) {
    Append(20);
    ledger_.reset();
    testing::EditRaw(dir_.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
      rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
      ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), events, EncodePositionKey(missing)).ok());
    });
    ASSERT_FALSE(HasFatalFailure());
    LedgerOptions ledger_options;
    ledger_options.path = dir_.path();
    Status open = Ledger::Open(ledger_options, &ledger_);
    ASSERT_TRUE(open.ok()) << open.ToString();

    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    const Position before(missing - 2);
    ASSERT_TRUE(WaitFor(
        [&] {
          OutboxStatus status = outbox->GetStatus();
          return status.kafka_state == "log_damaged" && status.checkpoint == before;
        },
        seconds(20)))
        << outbox->GetStatus().kafka_state << ": " << outbox->GetStatus().last_error;
    const std::string at = "position " + std::to_string(missing - 1);
    const std::string gap = "position " + std::to_string(missing);
    OutboxStatus status = outbox->GetStatus();
    EXPECT_NE(status.last_error.find("damaged at " + at), std::string::npos) << status.last_error;
    EXPECT_NE(status.last_error.find("no event at " + gap), std::string::npos) << status.last_error;
    EXPECT_EQ(status.published, before);
    EXPECT_EQ(outbox->metrics().rewinds.Value(), 0u);
    Status stop = outbox->Stop(seconds(5));
    EXPECT_EQ(stop.code(), Code::kUnavailable) << stop.ToString();
    EXPECT_EQ(stop.problem(), "log_damaged") << stop.ToString();
    EXPECT_NE(stop.message().find("damaged at " + at), std::string::npos) << stop.ToString();
    EXPECT_EQ(StoredCheckpoint(), missing - 2);
  }

  // Appends 20 events, rewrites event 10 and re-seals it (its own hash recomputed, so only event
  // 11's prev_hash shows it), deletes event 11 too when `successor_missing`, and starts an outbox
  // on the store: it must publish 1..9 only and stop as log_damaged at 10.
  void ExpectAReSealedEventIsNotPublished(const OutboxOptions& options,
                                          bool successor_missing = false) {
    Append(20);
    ledger_.reset();
    testing::RewriteStoredEvent(dir_.path(), 10, /*reseal=*/true,
                                [](Event* event) { event->data = "{\"forged\":true}"; });
    if (successor_missing) {
      testing::EditRaw(dir_.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
        rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
        ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), events, EncodePositionKey(11)).ok());
      });
      ASSERT_FALSE(HasFatalFailure());
    }
    LedgerOptions ledger_options;
    ledger_options.path = dir_.path();
    ASSERT_TRUE(Ledger::Open(ledger_options, &ledger_).ok());

    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitFor(
        [&] {
          OutboxStatus status = outbox->GetStatus();
          return status.kafka_state == "log_damaged" && status.in_flight == 0;
        },
        seconds(20)))
        << outbox->GetStatus().last_error;
    OutboxStatus status = outbox->GetStatus();
    EXPECT_EQ(status.checkpoint, Position(9));
    EXPECT_EQ(status.published, Position(9));
    EXPECT_NE(status.last_error.find("damaged at position 10"), std::string::npos)
        << status.last_error;
    Status stop = outbox->Stop(seconds(5));
    EXPECT_EQ(stop.problem(), "log_damaged") << stop.ToString();
    EXPECT_EQ(StoredCheckpoint(), 9u);

    auto consumer = Consumer();
    consumer->ConsumeDistinct(9, seconds(20));
    consumer->ConsumeUntil([](const std::vector<ConsumedRecord>&) { return false; },
                           milliseconds(300));  // anything past 9 would show up here
    EXPECT_TRUE(CheckDelivery(consumer->records(), 1, 9, {kSource, true}).ok());
    for (const ConsumedRecord& record : consumer->records()) {
      testing::CloudEventFields fields;
      ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
      EXPECT_LE(fields.position, 9u) << "a forged event reached the topic";
    }
  }

  // A checkpoint of 20 (`stored`, the cluster's or the old-named one `options` adopts) for a topic
  // that never held a record is reset, first on a degraded ledger (nothing can be written) whose
  // log is damaged at 12, so that a run that publishes gets 1..11 out and stops; then on the
  // healthy ledger. Every position must reach the topic.
  void ExpectAResetThatCannotBeWrittenPublishesNothing(const std::string& stored,
                                                        const OutboxOptions& options) {
    Append(20);
    ASSERT_TRUE(ledger_->PutCheckpoint(stored, Position(20), /*sync=*/true).ok());
    ledger_.reset();
    std::string event12;
    AlterEvent12(&event12);
    ASSERT_FALSE(HasFatalFailure());
    {
      testing::FaultEnv fault;
      LedgerOptions ledger_options;
      ledger_options.path = dir_.path();
      ledger_options.env = fault.env();
      ledger_ = testing::OpenTestLedger(ledger_options);
      if (ledger_ != nullptr) PublishOnADegradedLedger(options, &fault);
      ledger_.reset();  // before `fault`
    }
    ASSERT_FALSE(HasFatalFailure());
    AlterEvent12(&event12);  // back as it was
    LedgerOptions ledger_options;
    ledger_options.path = dir_.path();
    ASSERT_TRUE(Ledger::Open(ledger_options, &ledger_).ok());
    {
      auto outbox = OpenOutbox(options);
      ASSERT_TRUE(outbox->Start().ok());
      ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().checkpoint == Position(20); },
                          seconds(20)));
      EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
    }
    auto consumer = Consumer();
    EXPECT_TRUE(consumer->ConsumeDistinct(20, seconds(20)))
        << "positions missing: " << CheckDelivery(consumer->records(), 1, 20, {}).Summary();
  }

  void PublishOnADegradedLedger(const OutboxOptions& options, testing::FaultEnv* fault) {
    fault->fs()->FailWritesAfter(0);
    AppendCommand refused("refused", 1);
    ASSERT_EQ(ledger_->Submit(&refused).status.problem(), "storage_degraded");
    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    // Before the fix the outbox published 1..11 and stopped at the damage.
    ASSERT_TRUE(WaitFor(
        [&] {
          OutboxStatus status = outbox->GetStatus();
          return status.kafka_state == "log_damaged" ||
                 status.last_error.find("never held a record") != std::string::npos;
        },
        seconds(20)));
    OutboxStatus status = outbox->GetStatus();
    EXPECT_EQ(outbox->metrics().produced.Value(), 0u);
    EXPECT_EQ(status.kafka_state, "down");
    EXPECT_NE(status.last_error.find("storage_degraded"), std::string::npos) << status.last_error;
    Status stop = outbox->Stop(seconds(2));
    EXPECT_FALSE(stop.ok());
    EXPECT_NE(stop.message().find("nothing was published"), std::string::npos) << stop.ToString();
  }

  TempDir dir_;
  std::unique_ptr<EmbeddedKafka> kafka_;
  std::unique_ptr<Ledger> ledger_;
  std::vector<ConsumedRecord> records_;
  int next_subject_ = 0;
};

// The CloudEvents sequence extension orders values as strings: positions 9 < 10 < 11 and
// 99999 < 100000 must compare so, and the largest position still fits.
TEST(CloudEventTest, SequencesOrderAsStrings) {
  auto sequence_of = [](uint64_t position) {
    Event event;
    event.position = Position(position);
    event.id = "id";
    event.type = "test.appended.v1";
    event.subject = "s";
    event.data = "{}";
    rapidjson::Document doc;
    doc.Parse(ToCloudEventJson(event, "/ledgerd").c_str());
    return std::string(doc["sequence"].GetString());
  };
  EXPECT_EQ(sequence_of(17), "00000000000000000017");
  EXPECT_LT(sequence_of(9), sequence_of(10));
  EXPECT_LT(sequence_of(99999), sequence_of(100000));
  EXPECT_EQ(sequence_of(UINT64_MAX), "18446744073709551615");
  EXPECT_EQ(std::stoull(sequence_of(12345)), 12345u);
}

TEST_F(OutboxTest, PublishesEveryEventAsACloudEventKeyedBySubject) {
  Append(40, 3);  // 120 events written before the outbox starts
  auto outbox = OpenOutbox(Options());
  ASSERT_NE(outbox, nullptr);
  ASSERT_TRUE(outbox->Start().ok());
  Append(80, 1, 7, outbox.get());
  ASSERT_EQ(Head(), 200u);
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().lag;

  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.distinct, 200u);
  EXPECT_EQ(report.duplicates, 0u) << "no faults were injected";

  // The value is exactly the ledger's CloudEvent rendering of the stored event.
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 200, {}, &events).ok());
  std::map<std::string, std::string> value_of_id;
  for (const ConsumedRecord& record : records_) {
    testing::CloudEventFields fields;
    ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
    value_of_id[fields.id] = record.value;
  }
  for (const Event& event : events) {
    EXPECT_EQ(value_of_id[event.id], ToCloudEventJson(event, kSource));
  }
  // murmur2_random: each key sits on the partition the Java client (and kafkajs) would pick.
  std::set<int32_t> partitions_used;
  for (const ConsumedRecord& record : records_) {
    EXPECT_EQ(record.partition, JavaPartition(record.key, 3)) << record.key;
    partitions_used.insert(record.partition);
  }
  EXPECT_GT(partitions_used.size(), 1u);

  OutboxStatus status = outbox->GetStatus();
  EXPECT_EQ(status.kafka_state, "up");
  EXPECT_EQ(status.checkpoint, Position(200));
  EXPECT_EQ(status.published, Position(200));
  EXPECT_EQ(status.in_flight, 0u);
  EXPECT_EQ(outbox->metrics().delivered.Value(), 200u);
  EXPECT_EQ(outbox->metrics().failed.Value(), 0u);
  std::string metrics;
  outbox->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("ledger_outbox_delivered_total 200"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("ledger_outbox_lag_events 0"), std::string::npos);

  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  EXPECT_EQ(StoredCheckpoint(), 200u);
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok()) << "Stop is idempotent";
}

TEST_F(OutboxTest, CheckpointAdvancesOnlyFromDeliveryReportsAndTheWindowIsBounded) {
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  Append(50);
  OutboxOptions options = Options();
  options.in_flight_events_max = 20;
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());

  // Produced into the client as far as the window allows, but nothing acknowledged.
  ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().published == Position(20); }, seconds(5)));
  std::this_thread::sleep_for(milliseconds(500));
  OutboxStatus status = outbox->GetStatus();
  EXPECT_EQ(status.published, Position(20)) << "the read-ahead window is 20 events";
  EXPECT_EQ(status.checkpoint, Position(0));
  EXPECT_EQ(status.lag, 50u);
  EXPECT_EQ(status.in_flight, 20u);
  EXPECT_EQ(status.kafka_state, "down");
  EXPECT_EQ(StoredCheckpoint(), 0u);
  EXPECT_EQ(outbox->metrics().delivered.Value(), 0u);
  // "Published" is what Kafka acknowledged, as /readyz says; what the producer holds is produced.
  std::string metrics;
  outbox->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("\nledger_outbox_published_position 0\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\nledger_outbox_produced_position 20\n"), std::string::npos) << metrics;

  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  EXPECT_EQ(outbox->GetStatus().checkpoint, Position(50));
  ASSERT_TRUE(WaitFor([&] { return StoredCheckpoint() == 50; }, seconds(5)))
      << "persisted within checkpoint_interval_ms";
  ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "up"; }, seconds(5)));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// Kafka outage while the ledger keeps appending: appends neither block nor fail, nothing is
// lost, the lag returns to 0. Duplicates are counted, not asserted absent.
// "Never block" is judged by order, not by time (a loaded 2-core box with 50 ms fsyncs made the
// old latency and rate bounds flaky): kAppendsDuringOutage appends must complete after the outbox
// saw the brokers down and before they come back. An append that waited for Kafka would stall the
// appender until SetBrokerUp, and the wait for those appends would run out.
TEST_F(OutboxTest, BrokersDownWhileAppendingLosesNothing) {
  constexpr uint64_t kAppendsBeforeOutage = 50;
  constexpr uint64_t kAppendsDuringOutage = 50;
  constexpr uint64_t kAppendsAfterOutage = 50;
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());

  std::atomic<bool> appending{true};
  std::atomic<int> append_failures{0};
  std::atomic<uint64_t> appended{0};  // completed appends
  std::thread appender([&] {
    int i = 0;
    while (appending.load()) {
      AppendCommand command("user-" + std::to_string(i++ % 11), 2);
      CommandResult result = ledger_->Submit(&command);
      if (result.status.ok()) {
        appended.fetch_add(1);
      } else {
        append_failures.fetch_add(1);
      }
      outbox->Notify();
      std::this_thread::sleep_for(milliseconds(2));
    }
  });
  auto appended_at_least = [&](uint64_t count) {
    return WaitFor([&] { return appended.load() >= count; }, seconds(60));
  };

  const bool warmed_up = appended_at_least(kAppendsBeforeOutage);
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  const bool saw_down =
      WaitFor([&] { return outbox->GetStatus().kafka_state == "down"; }, seconds(30));
  // In this order: the appender's latest command may be published (in Head()) and not yet
  // counted in `appended` -- at most one, the appender has one in flight -- so of the appends
  // counted from here on, one may have its events before head_at_outage.
  const uint64_t appended_at_outage = appended.load();
  const uint64_t head_at_outage = Head();
  const bool appended_while_down = appended_at_least(appended_at_outage + kAppendsDuringOutage);
  // Still down: the appends counted above completed during the outage.
  const std::string state_after_appends = outbox->GetStatus().kafka_state;
  const uint64_t appends_during_outage = appended.load() - appended_at_outage;
  const uint64_t events_during_outage = Head() - head_at_outage;
  const uint64_t lag_during_outage = outbox->GetStatus().lag;
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  const bool appended_after = appended_at_least(appended.load() + kAppendsAfterOutage);
  appending.store(false);
  appender.join();

  EXPECT_TRUE(warmed_up);
  ASSERT_TRUE(saw_down) << "the outage should be visible as kafka_state=down";
  EXPECT_TRUE(appended_while_down)
      << "an outage must not block appends: " << appends_during_outage << " of "
      << kAppendsDuringOutage << " appends completed while the brokers were down";
  EXPECT_EQ(state_after_appends, "down");
  EXPECT_TRUE(appended_after);
  EXPECT_EQ(append_failures.load(), 0);
  EXPECT_GE(events_during_outage, 2 * (kAppendsDuringOutage - 1));  // two events per append
  EXPECT_GT(lag_during_outage, 0u);

  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_EQ(outbox->GetStatus().kafka_state, "up");
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.distinct, Head());
  ::testing::Test::RecordProperty("events", static_cast<int>(Head()));
  ::testing::Test::RecordProperty("duplicates", static_cast<int>(report.duplicates));
  std::printf("outage: %llu events appended during it, %llu duplicates after recovery\n",
              static_cast<unsigned long long>(events_during_outage),
              static_cast<unsigned long long>(report.duplicates));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  EXPECT_EQ(StoredCheckpoint(), Head());
}

// With a finite message timeout the outage makes deliveries fail: the outbox rewinds to its
// checkpoint and re-produces what was not acknowledged.
TEST_F(OutboxTest, DeliveryTimeoutsRewindToTheCheckpoint) {
  OutboxOptions options = Options();
  options.message_timeout_ms = 600;
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/400, 30, 2, 5);

  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  Append(60, 2, 5, outbox.get());
  ASSERT_TRUE(WaitFor([&] { return outbox->metrics().failed.Value() > 0; }, seconds(10)));
  std::this_thread::sleep_for(milliseconds(800));  // at least one more failed rewind
  EXPECT_GT(outbox->GetStatus().lag, 0u);
  EXPECT_FALSE(outbox->GetStatus().last_error.empty());
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());

  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_GT(outbox->metrics().rewinds.Value(), 0u);
  EXPECT_GT(outbox->metrics().retried.Value(), 0u);
  // Timed-out messages may reach the topic after later ones: only loss is checked here.
  DeliveryReport report = ConsumeAndCheck(/*check_key_order=*/false);
  EXPECT_TRUE(report.ok()) << report.Summary();
  std::printf("timeouts: failed=%llu retried=%llu rewinds=%llu duplicates=%llu\n",
              static_cast<unsigned long long>(outbox->metrics().failed.Value()),
              static_cast<unsigned long long>(outbox->metrics().retried.Value()),
              static_cast<unsigned long long>(outbox->metrics().rewinds.Value()),
              static_cast<unsigned long long>(report.duplicates));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// After a rewind the checkpoint can jump over a run of positions delivered before it (here: all
// but the first, on another broker's partition) while the produce scan is still skipping them:
// they are not produced again, and nothing stays counted as in flight.
TEST_F(OutboxTest, ARewindDoesNotReproduceWhatTheCheckpointJumpedOver) {
  std::unique_ptr<EmbeddedKafka> kafka;
  EmbeddedKafkaOptions kafka_options;
  kafka_options.brokers = 2;
  ASSERT_TRUE(EmbeddedKafka::Open(kafka_options, &kafka).ok());
  // Partition 0 on broker 1, the others on broker 2.
  ASSERT_TRUE(kafka->SetPartitionLeader(kTopic, 0, 1).ok());
  ASSERT_TRUE(kafka->SetPartitionLeader(kTopic, 1, 2).ok());
  ASSERT_TRUE(kafka->SetPartitionLeader(kTopic, 2, 2).ok());
  std::string victim, other;
  for (int i = 0; victim.empty() || other.empty(); ++i) {
    const std::string subject = "user-" + std::to_string(i);
    std::string& slot = JavaPartition(subject, 3) == 0 ? victim : other;
    if (slot.empty()) slot = subject;
  }
  OutboxOptions options = Options();
  options.bootstrap_servers = kafka->bootstrap_servers();
  options.scan_events_max = 1;
  // Long enough for the other broker's deliveries on a loaded machine (sanitizers, parallel
  // tests); the victim's broker answers far later.
  options.message_timeout_ms = 2000;
  options.retry_backoff_ms_min = 10;
  options.stall_down_ms = 300;
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  // Connections to both brokers first, so that only the victim's message can time out.
  for (const std::string& subject : {victim, other}) {
    AppendCommand warm(subject, 1);
    ASSERT_TRUE(ledger_->Submit(&warm).status.ok());
  }
  outbox->Notify();
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  const uint64_t produced_before = outbox->metrics().produced.Value();
  ASSERT_TRUE(kafka->SetBrokerRtt(1, 8000).ok());  // the victim's message times out
  AppendCommand first(victim, 1);
  ASSERT_TRUE(ledger_->Submit(&first).status.ok());
  AppendCommand rest(other, 3000);
  ASSERT_TRUE(ledger_->Submit(&rest).status.ok());
  outbox->Notify();
  ASSERT_TRUE(WaitFor([&] { return outbox->metrics().failed.Value() > 0 ||
                                   outbox->metrics().producer_restarts.Value() > 0; },
                      seconds(20)));
  ASSERT_TRUE(kafka->SetBrokerRtt(1, 0).ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_TRUE(WaitFor([&] { return outbox->GetStatus().in_flight == 0; }, seconds(2)))
      << outbox->GetStatus().in_flight << " still counted in flight";
  // The victim again, perhaps twice; not the 3,000 delivered the first time.
  EXPECT_LE(outbox->metrics().retried.Value(), 2u);
  EXPECT_LE(outbox->metrics().produced.Value() - produced_before, 3001u + 2u);
  std::this_thread::sleep_for(milliseconds(600));  // idle past stall_down_ms
  EXPECT_EQ(outbox->GetStatus().kafka_state, "up");
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// A permanent produce error (here injected by the mock broker) fails a batch; with the gapless
// guarantee the producer is recreated and everything after the checkpoint is re-produced.
TEST_F(OutboxTest, PermanentProduceErrorsRepublishFromTheCheckpoint) {
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  Append(10, 1, 3, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  kafka_->PushRequestErrors(EmbeddedKafka::kProduceApiKey,
                            {RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                             RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED});
  Append(40, 2, 3, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_GT(outbox->metrics().failed.Value() + outbox->metrics().producer_restarts.Value(), 0u);
  EXPECT_GT(outbox->metrics().rewinds.Value(), 0u);
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  std::printf("permanent errors: failed=%llu restarts=%llu retried=%llu duplicates=%llu\n",
              static_cast<unsigned long long>(outbox->metrics().failed.Value()),
              static_cast<unsigned long long>(outbox->metrics().producer_restarts.Value()),
              static_cast<unsigned long long>(outbox->metrics().retried.Value()),
              static_cast<unsigned long long>(report.duplicates));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// Kafka refusing the same messages on every rewind is a stall: the state says "down" while the
// outbox keeps re-publishing from the checkpoint (nothing is in flight between the rewinds), and
// "up" again once deliveries go through.
TEST_F(OutboxTest, RepeatedRefusalsShowAsDown) { ExpectRepeatedRefusalsShowAsDown(Options()); }

// The same with the cluster's checkpoint (the daemon's setting), loaded again after each producer
// restart (with the gapless guarantee a refusal is fatal): the reload took the positions refused
// for new work, which restarted the stall clock; the state stayed "up" while every produce was
// refused (and retried_total stopped counting).
TEST_F(OutboxTest, RepeatedRefusalsShowAsDownWithTheClustersCheckpoint) {
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  ExpectRepeatedRefusalsShowAsDown(options);
}

// An event whose CloudEvent is over the topic's message size (Kafka's default max.message.bytes is
// 1,048,588; an event's data alone may be 1 MiB) goes out without its data, with the `dataref`
// extension naming where to read it; the events around it go out whole and nothing stalls.
TEST_F(OutboxTest, AnEventTooLargeForTheTopicIsPublishedWithADataRef) {
  auto outbox = OpenOutbox(Options());  // message_bytes_max: the default, 1,000,000
  ASSERT_TRUE(outbox->Start().ok());
  Append(3, 1, 2, outbox.get());
  AppendCommand big("user-big", 1, "test.appended.v1", /*pad_bytes=*/1'040'000);
  CommandResult result = ledger_->Submit(&big);
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  outbox->Notify();
  Append(3, 1, 2, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;

  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 7, {}, &events).ok());
  ASSERT_EQ(events.size(), 7u);
  ASSERT_GT(ToCloudEventJson(events[3], kSource).size(), limits::kOutboxMessageBytesMax);
  size_t with_dataref = 0;
  for (const ConsumedRecord& record : records_) {
    testing::CloudEventFields fields;
    ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
    const Event& event = events[fields.position - 1];
    if (fields.position == 4) {
      ++with_dataref;
      EXPECT_EQ(record.value, ToCloudEventJsonWithDataRef(event, kSource));
      EXPECT_EQ(fields.dataref, "/api/v1/events?after=3&limit=1");
      EXPECT_LT(record.value.size(), 1024u);
    } else {
      EXPECT_EQ(record.value, ToCloudEventJson(event, kSource));
    }
  }
  EXPECT_GE(with_dataref, 1u);
  EXPECT_EQ(outbox->metrics().data_omitted.Value(), 1u);
  std::string metrics;
  outbox->RenderMetrics(&metrics);
  EXPECT_NE(metrics.find("ledger_outbox_data_omitted_total 1\n"), std::string::npos);
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// A topic whose max.message.bytes is below the outbox's setting refuses the record for size; the
// outbox retries it like any refusal and its error names the setting to lower.
TEST_F(OutboxTest, ASizeRefusalNamesTheSettingToLower) {
  auto outbox = StartCaughtUp(Options(), /*backoff_max_ms=*/200, 2, 1, 1);
  kafka_->PushRequestErrors(EmbeddedKafka::kProduceApiKey,
                            {RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE});
  Append(1, 1, 1, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_GT(outbox->metrics().failed.Value(), 0u);
  // With enable.gapless.guarantee the refusal is also a fatal producer error (the producer is
  // recreated); whichever came last, the error names the setting.
  EXPECT_NE(outbox->GetStatus().last_error.find("LEDGER_KAFKA_MESSAGE_MAX_BYTES"),
            std::string::npos)
      << outbox->GetStatus().last_error;
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

TEST_F(OutboxTest, RestartRepublishesOnlyAfterTheCheckpoint) {
  Append(100);
  {
    auto outbox = OpenOutbox(Options());
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  ASSERT_EQ(StoredCheckpoint(), 100u);
  Append(50);
  {
    auto outbox = OpenOutbox(Options());
    EXPECT_EQ(outbox->GetStatus().checkpoint, Position(100));
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  // A checkpoint moved back (as after a crash between two checkpoint writes) re-publishes
  // exactly the positions after it.
  ASSERT_TRUE(ledger_->PutCheckpoint("outbox.kafka", Position(120), /*sync=*/true).ok());
  {
    auto outbox = OpenOutbox(Options());
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  auto consumer = Consumer();
  ASSERT_TRUE(consumer->ConsumeUntil(
      [](const std::vector<ConsumedRecord>& r) { return r.size() >= 180; }, seconds(20)));
  consumer->ConsumeUntil([](const std::vector<ConsumedRecord>&) { return false; },
                         milliseconds(300));  // anything extra would show up here
  std::map<uint64_t, int> copies;
  for (const ConsumedRecord& record : consumer->records()) {
    testing::CloudEventFields fields;
    ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
    ++copies[fields.position];
  }
  ASSERT_EQ(copies.size(), 150u);
  for (uint64_t p = 1; p <= 150; ++p) {
    EXPECT_EQ(copies[p], p <= 120 ? 1 : 2) << "position " << p;
  }
  DeliveryReport report = CheckDelivery(consumer->records(), 1, 150, {kSource, true});
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.duplicates, 30u);
}

// Clusters from one image share its default cluster id (apache/kafka's CLUSTER_ID), and a topic
// may be deleted and recreated: a cluster checkpoint at the head for a topic that never held a
// record publishes the whole log there; a topic that holds the records keeps its checkpoint.
TEST_F(OutboxTest, ACheckpointForATopicThatNeverHeldARecordPublishesTheWholeLog) {
  Append(20);
  const std::string cluster_id = ClusterIdOf(kafka_->bootstrap_servers());
  ASSERT_FALSE(cluster_id.empty());
  const std::string name = OutboxClusterCheckpointName(cluster_id, kTopic);
  ASSERT_TRUE(ledger_->PutCheckpoint(name, Position(20), /*sync=*/true).ok());
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  {
    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    DeliveryReport report = ConsumeAndCheck();
    EXPECT_TRUE(report.ok()) << report.Summary();
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    EXPECT_EQ(outbox->metrics().produced.Value(), 20u);
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  Position stored;
  ASSERT_TRUE(ledger_->GetCheckpoint(name, &stored).ok());
  EXPECT_EQ(stored, Position(20));
  // Now the topic holds the records: the checkpoint stands, only what is new is published.
  Append(5);
  {
    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().checkpoint == Position(25); },
                        seconds(20)));
    EXPECT_EQ(outbox->metrics().produced.Value(), 5u);
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  auto consumer = Consumer();
  ASSERT_TRUE(consumer->ConsumeDistinct(25, seconds(20)));
  consumer->ConsumeUntil([](const std::vector<ConsumedRecord>&) { return false; },
                         milliseconds(300));  // anything extra would show up here
  EXPECT_EQ(consumer->records().size(), 25u) << "an event published twice";
}

// A cluster rebuilt empty behind the same address while the outbox runs (here: the address is a
// forwarder, pointed from one embedded cluster to a new one) gets the whole log. The checkpoint was
// loaded, and the topic looked at, once per process: the new cluster got only what came after the
// old one's checkpoint, for good, and the old cluster's checkpoint moved on with it.
TEST_F(OutboxTest, AClusterReplacedWhileRunningGetsTheWholeLog) {
  testing::TcpForwarder forwarder(PortOf(kafka_->bootstrap_servers()));
  const std::string old_id = ClusterIdOf(kafka_->bootstrap_servers());
  ASSERT_FALSE(old_id.empty());
  OutboxOptions options = ForwardedPerClusterOptions(forwarder);
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  Append(20, 1, 7, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  ASSERT_EQ(outbox->GetStatus().cluster_id, old_id);

  std::unique_ptr<EmbeddedKafka> rebuilt;
  ASSERT_TRUE(EmbeddedKafka::Open({}, &rebuilt).ok());
  const std::string new_id = ClusterIdOf(rebuilt->bootstrap_servers());
  ASSERT_NE(new_id, old_id);
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());  // the old cluster is gone
  forwarder.Retarget(PortOf(rebuilt->bootstrap_servers()));
  Append(10, 1, 7, outbox.get());
  EXPECT_TRUE(WaitFor(
      [&] {
        OutboxStatus status = outbox->GetStatus();
        return status.cluster_id == new_id && status.lag == 0;
      },
      seconds(30)))
      << outbox->GetStatus().cluster_id << " " << outbox->GetStatus().lag << ": "
      << outbox->GetStatus().last_error;
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());

  std::unique_ptr<KafkaTestConsumer> consumer;
  ASSERT_TRUE(KafkaTestConsumer::Open(rebuilt->bootstrap_servers(), kTopic, &consumer).ok());
  EXPECT_TRUE(consumer->ConsumeDistinct(30, seconds(20)))
      << "the new cluster misses positions: "
      << CheckDelivery(consumer->records(), 1, 30, {}).Summary();
  Position stored;
  ASSERT_TRUE(ledger_->GetCheckpoint(OutboxClusterCheckpointName(new_id, kTopic), &stored).ok());
  EXPECT_EQ(stored, Position(30));
}

// The checkpoint is loaded again after a producer restart, and the topic looked at again: one
// that still holds the records (a refusal, not a recreated topic) keeps the checkpoint and is not
// published from position 1 again.
TEST_F(OutboxTest, AfterAProducerRestartATopicThatHoldsTheRecordsKeepsItsCheckpoint) {
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 30, 1, 3);
  const uint64_t produced_before = outbox->metrics().produced.Value();
  kafka_->PushRequestErrors(EmbeddedKafka::kProduceApiKey,
                            {RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
                             RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED});
  Append(10, 1, 3, outbox.get());
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  ASSERT_GT(outbox->metrics().producer_restarts.Value(), 0u);  // with the gapless guarantee
  // 31..40, once more after each of the two refusals at most (30); 1..30 again makes it 40+.
  EXPECT_LE(outbox->metrics().produced.Value() - produced_before, 30u);
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// A topic deleted and recreated on the same cluster while ledgerd runs often raises no error
// (Kafka 2.5+ takes an unknown producer's writes, KIP-360; librdkafka retries an unknown topic;
// auto-creation recreates it): only the offsets show it, acknowledged lower than before on a
// partition. The embedded cluster cannot recreate a topic: the seam delivery_offset_for_test
// reports offsets 1000 higher until the "recreation", then as they are. The topic must get the
// whole log again; it got 21.. only, and 1..20 were missing there for good.
TEST_F(OutboxTest, ATopicRecreatedWithoutAnErrorGetsTheWholeLog) {
  std::atomic<bool> recreated{false};
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.delivery_offset_for_test = [&recreated](int32_t, int64_t* offset) {
    if (!recreated.load()) *offset += 1000;
  };
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 20, 1, 3);
  const uint64_t produced_before = outbox->metrics().produced.Value();
  ASSERT_EQ(produced_before, 20u);
  recreated.store(true);
  Append(10, 1, 3, outbox.get());
  ASSERT_TRUE(WaitFor(
      [&] {
        return outbox->GetStatus().lag == 0 &&
               outbox->metrics().produced.Value() - produced_before >= 30;
      },
      seconds(20)))
      << "produced " << outbox->metrics().produced.Value() - produced_before << " after it, "
      << outbox->GetStatus().last_error;
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  // Every position of 1..20 twice: before and after the "recreation".
  auto twice = [](const std::vector<ConsumedRecord>& records) {
    std::map<uint64_t, int> copies;
    for (const ConsumedRecord& record : records) {
      testing::CloudEventFields fields;
      if (testing::ValidateCloudEventRecord(record, kSource, &fields).empty()) {
        ++copies[fields.position];
      }
    }
    for (uint64_t p = 1; p <= 20; ++p) {
      if (copies[p] < 2) return false;
    }
    return true;
  };
  auto consumer = Consumer();
  EXPECT_TRUE(consumer->ConsumeUntil(twice, seconds(20)))
      << consumer->records().size() << " records";
  Position stored;
  const std::string name =
      OutboxClusterCheckpointName(ClusterIdOf(kafka_->bootstrap_servers()), kTopic);
  ASSERT_TRUE(ledger_->GetCheckpoint(name, &stored).ok());
  EXPECT_EQ(stored, Position(30));
}

// A topic first acknowledged at offset 0 (every fresh deployment) and recreated later: an offset
// below the LOWEST acknowledged could never show it. One partition (one subject): positions 1..20
// at offsets 0..19, then 21..30 reported at 0..9 by the seam, as a recreated topic numbers them.
TEST_F(OutboxTest, ATopicFirstAcknowledgedAtOffsetZeroIsSeenRecreated) {
  std::atomic<bool> recreated{false};
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.delivery_offset_for_test = [&recreated](int32_t, int64_t* offset) {
    if (recreated.load()) *offset -= 20;
  };
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 20, 1, 1);
  const uint64_t produced_before = outbox->metrics().produced.Value();
  recreated.store(true);
  Append(10, 1, 1, outbox.get());
  EXPECT_TRUE(WaitFor(
      [&] {
        return outbox->GetStatus().lag == 0 &&
               outbox->metrics().produced.Value() - produced_before >= 30;
      },
      seconds(20)))
      << "produced " << outbox->metrics().produced.Value() - produced_before << " after it";
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
}

// The reset of a recreated topic's checkpoint is written when the recreation is seen, not at the
// reload once nothing is in flight: a stop or a crash in between kept the old checkpoint, and the
// next start found the new topic holding records (those acknowledged since) and kept it -- 1..20
// missing there for good. Ten events in one record batch: the second one's acknowledgement comes
// with the first's, before any reload, and the checkpoint stored then must already be 0.
TEST_F(OutboxTest, ARecreatedTopicsResetIsWrittenWhenItIsSeen) {
  const std::string name =
      OutboxClusterCheckpointName(ClusterIdOf(kafka_->bootstrap_servers()), kTopic);
  std::atomic<bool> recreated{false};
  std::atomic<int> acknowledged_after{0};
  std::atomic<int64_t> stored_at_second{-1};
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.delivery_offset_for_test = [&](int32_t, int64_t* offset) {
    if (!recreated.load()) {
      *offset += 1000;
    } else if (++acknowledged_after == 2) {
      Position stored;
      if (ledger_->GetCheckpoint(name, &stored).ok()) {
        stored_at_second = static_cast<int64_t>(stored.value());
      }
    }
  };
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 20, 1, 3);
  ASSERT_TRUE(WaitFor(
      [&] {
        Position stored;
        return ledger_->GetCheckpoint(name, &stored).ok() && stored == Position(20);
      },
      seconds(10)));
  recreated.store(true);
  Append(1, /*per_command=*/10, /*subjects=*/1, outbox.get());
  ASSERT_TRUE(WaitFor([&] { return stored_at_second.load() != -1; }, seconds(20)));
  EXPECT_EQ(stored_at_second.load(), 0) << "the reset waited for the reload";
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
}

// Once the reset of a recreated topic is written, the checkpoint is not written again until the
// reload, which waits for what is in flight -- and the publisher waited for the next checkpoint
// write, due at once: it spun a core until the last answer came. Two partitions on two brokers,
// the second's answers held 3 s: the first partition's acknowledgement shows the recreation while
// the second's records are in flight. Over 2 s of that wait the publisher waits about once per
// poll interval (OutboxMetrics::waits: a count of the busy loop, not the process's CPU time, which
// a loaded machine inflates).
TEST_F(OutboxTest, WaitingForTheReloadAfterARecreationDoesNotSpin) {
  kafka_.reset();
  EmbeddedKafkaOptions two;
  two.brokers = 2;
  two.partitions = 2;
  ASSERT_TRUE(EmbeddedKafka::Open(two, &kafka_).ok());
  ASSERT_TRUE(kafka_->SetPartitionLeader(kTopic, 0, 1).ok());
  ASSERT_TRUE(kafka_->SetPartitionLeader(kTopic, 1, 2).ok());
  std::atomic<bool> recreated{false};
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.delivery_offset_for_test = [&recreated](int32_t, int64_t* offset) {
    if (!recreated.load()) *offset += 1000;
  };
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 20, 1, 7);
  ASSERT_TRUE(kafka_->SetBrokerRtt(2, 3000).ok());
  recreated.store(true);
  Append(7, 1, 7, outbox.get());  // both partitions
  std::this_thread::sleep_for(milliseconds(300));
  const uint64_t before = outbox->metrics().waits.Value();
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(seconds(2));
  const uint64_t waits = outbox->metrics().waits.Value() - before;
  const auto waited = std::chrono::steady_clock::now() - start;
  // Five times one per poll interval, and some for wake-ups. Measured here: ≈ 25,000 spinning,
  // 100 waiting.
  const uint64_t allowed =
      5 * static_cast<uint64_t>(waited / milliseconds(options.poll_interval_ms)) + 50;
  EXPECT_LE(waits, allowed) << "the publisher waited " << waits << " times in 2 s";
  ASSERT_TRUE(kafka_->SetBrokerRtt(2, 0).ok());
  ASSERT_TRUE(outbox->Stop(seconds(10)).ok());
}

// A broker mid rolling restart answers that it does not know the topic: after a producer restart
// that is not a topic that never held a record. It was taken for one: the checkpoint (30) was
// reset to 0, written, and 1..30 published again into the topic that held them.
TEST_F(OutboxTest, AfterAProducerRestartAnUnknownTopicKeepsTheCheckpoint) {
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  auto outbox = StartCaughtUp(options, /*backoff_max_ms=*/200, 30, 1, 3);
  const uint64_t produced_before = outbox->metrics().produced.Value();
  kafka_->SetTopicError(kTopic, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
  kafka_->PushRequestErrors(EmbeddedKafka::kProduceApiKey,
                            {RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED});
  Append(10, 1, 3, outbox.get());
  ASSERT_TRUE(WaitFor([&] { return outbox->metrics().producer_restarts.Value() > 0; },
                      seconds(10)));
  std::this_thread::sleep_for(milliseconds(500));  // the reload asks about the topic meanwhile
  EXPECT_NE(outbox->GetStatus().last_error.find("does not know topic"), std::string::npos)
      << outbox->GetStatus().last_error;
  EXPECT_GE(outbox->GetStatus().checkpoint.value(), 30u);  // not reset to 0
  kafka_->SetTopicError(kTopic, RD_KAFKA_RESP_ERR_NO_ERROR);
  ASSERT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  // 31..40, perhaps twice; 1..30 again makes it 40+.
  EXPECT_LE(outbox->metrics().produced.Value() - produced_before, 20u);
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
  size_t old_copies = 0;  // of 1..30
  for (const ConsumedRecord& record : records_) {
    testing::CloudEventFields fields;
    ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
    if (fields.position <= 30) ++old_copies;
  }
  EXPECT_EQ(old_copies, 30u) << "published again from position 1";
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

// The reset of such a checkpoint is written (synced) before anything is published. It was kept in
// memory only: a run that published part of the log and ended before the checkpoint was next
// written (a crash, or a degraded ledger, which writes nothing) left 20 stored, and the next run,
// finding records in the topic, kept it: 12..20 never reached Kafka.
TEST_F(OutboxTest, AResetCheckpointIsDurableBeforeTheTopicGetsARecord) {
  const std::string cluster_id = ClusterIdOf(kafka_->bootstrap_servers());
  ASSERT_FALSE(cluster_id.empty());
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  ExpectAResetThatCannotBeWrittenPublishesNothing(OutboxClusterCheckpointName(cluster_id, kTopic),
                                                  options);
}

// The same for an adopted checkpoint: the old name kept 20 (its zeroing was refused too), and the
// next run took it again for a topic that now held records.
TEST_F(OutboxTest, AResetOfAnAdoptedCheckpointIsDurableBeforeTheTopicGetsARecord) {
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.adopt_checkpoint_name = "outbox.kafka";
  ExpectAResetThatCannotBeWrittenPublishesNothing("outbox.kafka", options);
}

// Until the cluster id is known (brokers down at start), the status shows the checkpoint last
// persisted for the cluster last published to, not 0 and a lag of the whole log.
TEST_F(OutboxTest, UntilTheClusterIsKnownTheStatusShowsTheLastCheckpoint) {
  Append(10);
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  {
    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  Append(5);
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  OutboxStatus status = outbox->GetStatus();
  EXPECT_EQ(status.checkpoint, Position(10));
  EXPECT_EQ(status.lag, 5u);
  EXPECT_TRUE(status.cluster_id.empty());
  ASSERT_TRUE(WaitFor([&] { return !outbox->GetStatus().last_error.empty(); }, seconds(20)));
  status = outbox->GetStatus();
  EXPECT_EQ(status.checkpoint, Position(10));
  // It says why nothing is published: the brokers' error, or (before any came) that it waits for
  // the cluster id (WhileNoBrokerAnswersTheStatusSaysItWaitsForTheClusterId).
  EXPECT_TRUE(status.last_error.find("kafka down: ") != std::string::npos ||
              status.last_error.find("_TRANSPORT: ") != std::string::npos ||
              status.last_error.find("waiting for the Kafka cluster id") != std::string::npos)
      << status.last_error;
  EXPECT_FALSE(outbox->Stop(milliseconds(300)).ok());
  EXPECT_EQ(outbox->GetStatus().checkpoint, Position(10));
}

// A broker that does not answer (here: only after 30 s) sends no error: the status says that the
// outbox waits for the cluster id, rather than nothing.
TEST_F(OutboxTest, WhileNoBrokerAnswersTheStatusSaysItWaitsForTheClusterId) {
  Append(3);
  for (int32_t id = 1; id <= kafka_->broker_count(); ++id) {
    ASSERT_TRUE(kafka_->SetBrokerRtt(id, 30'000).ok());
  }
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitFor([&] { return !outbox->GetStatus().last_error.empty(); }, seconds(5)));
  OutboxStatus status = outbox->GetStatus();
  EXPECT_NE(status.last_error.find("waiting for the Kafka cluster id (no broker has told it yet: "
                                   "none answered"),
            std::string::npos)
      << status.last_error;
  EXPECT_TRUE(status.cluster_id.empty());
  EXPECT_EQ(status.kafka_state, "down");
  EXPECT_EQ(outbox->metrics().produced.Value(), 0u);
  EXPECT_FALSE(outbox->Stop(milliseconds(300)).ok());
}

// Taking the checkpoint of an older naming writes nothing on the publisher's way: a degraded
// ledger (every write refused) still publishes its readable log after the adopted checkpoint.
TEST_F(OutboxTest, ADegradedLedgerAdoptsTheOldCheckpointAndPublishes) {
  testing::FaultEnv fault;
  ledger_.reset();
  LedgerOptions ledger_options;
  ledger_options.path = dir_.path();
  ledger_options.env = fault.env();
  ledger_ = testing::OpenTestLedger(ledger_options);
  ASSERT_NE(ledger_, nullptr);
  Append(10);
  {
    auto outbox = OpenOutbox(Options());  // the old naming: "outbox.kafka"
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  }
  ASSERT_EQ(StoredCheckpoint(), 10u);
  Append(10);
  fault.fs()->FailWritesAfter(0);
  AppendCommand refused("refused", 1);
  ASSERT_EQ(ledger_->Submit(&refused).status.problem(), "storage_degraded");
  ASSERT_EQ(Head(), 20u);
  OutboxOptions options = Options();
  options.checkpoint_per_cluster = true;
  options.adopt_checkpoint_name = "outbox.kafka";
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  EXPECT_TRUE(WaitCaughtUp(outbox.get())) << outbox->GetStatus().last_error;
  EXPECT_EQ(outbox->metrics().produced.Value(), 10u);
  outbox->Stop(seconds(2)).IgnoreError();
  auto consumer = Consumer();
  ASSERT_TRUE(consumer->ConsumeDistinct(20, seconds(20)));
}

TEST_F(OutboxTest, StopWithKafkaDownKeepsTheDeadlineAndTheCheckpoint) {
  Append(10);
  {
    auto outbox = OpenOutbox(Options());
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitCaughtUp(outbox.get()));
    ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
    Append(20, 1, 7, outbox.get());
    ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().published == Position(30); },
                        seconds(5)));
    auto start = std::chrono::steady_clock::now();
    Status s = outbox->Stop(milliseconds(300));
    auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
    EXPECT_LT(took, seconds(3));
    EXPECT_FALSE(outbox->GetStatus().running);
  }
  EXPECT_EQ(StoredCheckpoint(), 10u);
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  DeliveryReport report = ConsumeAndCheck();
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// An event whose stored bytes were altered (rewritten through RocksDB, so its block checksums
// hold: only its own hash shows it) is never published: the outbox publishes the events before
// it, stops there for good, and says so in its state and last error.
TEST_F(OutboxTest, AnAlteredEventIsNotPublished) {
  Append(20);
  ledger_.reset();
  testing::EditRaw(dir_.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
    std::string stored;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(12), &stored).ok());
    const size_t at = stored.size() - 33;  // the last byte of its data ('}')
    stored[at] = static_cast<char>(stored[at] ^ 0x01);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(12), stored).ok());
  });
  LedgerOptions options;
  options.path = dir_.path();
  ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());

  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitFor(
      [&] {
        OutboxStatus status = outbox->GetStatus();
        return status.kafka_state == "log_damaged" && status.checkpoint == Position(11);
      },
      seconds(20)));
  OutboxStatus status = outbox->GetStatus();
  EXPECT_NE(status.last_error.find("damaged at position 12"), std::string::npos)
      << status.last_error;
  EXPECT_EQ(status.published, Position(11));
  Status stop = outbox->Stop(seconds(5));
  EXPECT_EQ(stop.code(), Code::kUnavailable) << stop.ToString();
  // The shutdown line names the damage, not Kafka ("kafka_unavailable: ... not acknowledged").
  EXPECT_EQ(stop.problem(), "log_damaged") << stop.ToString();
  EXPECT_NE(stop.message().find("damaged at position 12"), std::string::npos) << stop.ToString();
  EXPECT_EQ(StoredCheckpoint(), 11u);

  auto consumer = Consumer();
  consumer->ConsumeDistinct(11, seconds(20));
  consumer->ConsumeUntil([](const std::vector<ConsumedRecord>&) { return false; },
                         milliseconds(300));  // anything past 11 would show up here
  DeliveryCheckOptions check;
  check.expected_source = kSource;
  DeliveryReport report = CheckDelivery(consumer->records(), 1, 11, check);
  EXPECT_TRUE(report.ok()) << report.Summary();
  for (const ConsumedRecord& record : consumer->records()) {
    testing::CloudEventFields fields;
    ASSERT_TRUE(testing::ValidateCloudEventRecord(record, kSource, &fields).empty());
    EXPECT_LE(fields.position, 11u);
  }
}

// A position missing in the middle of the log (its key deleted through RocksDB; the head record
// still matches the last key, so the ledger opens) is damage, as an altered event is. The scan
// saw the gap and the outbox took it for a read failure: rewinds every few seconds for good,
// the state "down" with Kafka healthy, and a Stop() blaming Kafka for events it would "publish
// after the next start".
TEST_F(OutboxTest, AMissingEventStopsAsLogDamaged) {
  ExpectAMissingEventStopsAsLogDamaged(12, Options());
}

// The same with the gap at the end of a batch ([1, 10], 10 missing): the scan ends at 9 and the
// check after it finds the gap; 9, held back for 10's link, is not published either.
TEST_F(OutboxTest, AMissingEventAtTheEndOfABatchStopsAsLogDamaged) {
  OutboxOptions options = Options();
  options.scan_events_max = 10;
  ExpectAMissingEventStopsAsLogDamaged(10, options);
}

// An event rewritten and re-sealed (its own hash recomputed) shows only in its successor's link:
// it is published only once the event after it has linked to it. It was published as soon as it
// was checked on its own, and stood on Kafka when event 11's link stopped the outbox there.
TEST_F(OutboxTest, AReSealedEventIsNotPublished) {
  ExpectAReSealedEventIsNotPublished(Options());
}

// The same with event 10 the last of a batch ([1, 10], [11, 20]): the batch reads event 11 for
// its link before it publishes 10.
TEST_F(OutboxTest, AReSealedEventAtTheEndOfABatchIsNotPublished) {
  OutboxOptions options = Options();
  options.scan_events_max = 10;
  ExpectAReSealedEventIsNotPublished(options);
}

// The same with event 11 missing too: no successor vouches for event 10, and the log holds events
// after it. 10 was published as if it were the head, and the damage named at 11.
TEST_F(OutboxTest, AReSealedEventBeforeAMissingOneIsNotPublished) {
  ExpectAReSealedEventIsNotPublished(Options(), /*successor_missing=*/true);
}

// The same at the end of a batch ([1, 10]): the read for 10's link finds no event 11.
TEST_F(OutboxTest, AReSealedEventAtTheEndOfABatchBeforeAMissingOneIsNotPublished) {
  OutboxOptions options = Options();
  options.scan_events_max = 10;
  ExpectAReSealedEventIsNotPublished(options, /*successor_missing=*/true);
}

TEST_F(OutboxTest, KafkaStateFollowsTheBrokersWhileIdle) {
  auto outbox = OpenOutbox(Options());
  EXPECT_EQ(outbox->GetStatus().kafka_state, "down") << "not connected yet";
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "up"; }, seconds(5)));
  std::this_thread::sleep_for(milliseconds(1500));  // idle: still up
  EXPECT_EQ(outbox->GetStatus().kafka_state, "up");
  ASSERT_TRUE(kafka_->SetBrokerDown(-1).ok());
  ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "down"; }, seconds(5)));
  ASSERT_TRUE(kafka_->SetBrokerUp(-1).ok());
  ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().kafka_state == "up"; }, seconds(5)));
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
}

TEST_F(OutboxTest, PublishesABacklogQuickly) {
  for (int i = 0; i < 100; ++i) Append(1, 100, 50);  // 10,000 events
  auto outbox = OpenOutbox(Options());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get(), seconds(25)));
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("backlog: %llu events published in %.2f s (%.0f events/s)\n",
              static_cast<unsigned long long>(Head()), took, Head() / took);
  EXPECT_EQ(outbox->metrics().delivered.Value(), Head());
  EXPECT_TRUE(outbox->Stop(seconds(5)).ok());
  auto consumer = Consumer();
  EXPECT_TRUE(consumer->ConsumeDistinct(Head(), seconds(20)));
}

// Destroyed without Stop(), the outbox writes no checkpoint: what it delivered after its last
// persist stays unrecorded (delivered again after a restart, which consumers dedupe). The first
// delivery persists at once; later ones wait for checkpoint_interval_ms (a minute here), so the
// checkpoint stored before the destruction is behind what was delivered, and must stay so.
TEST_F(OutboxTest, DestructorWithoutStopWritesNothing) {
  Append(5);
  uint64_t before = 0;
  {
    OutboxOptions options = Options();
    options.checkpoint_interval_ms = 60'000;
    auto outbox = OpenOutbox(options);
    ASSERT_TRUE(outbox->Start().ok());
    ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().checkpoint == Position(5); },
                        seconds(10)));
    Append(5);
    ASSERT_TRUE(WaitFor([&] { return outbox->GetStatus().checkpoint == Position(10); },
                        seconds(10)));
    before = StoredCheckpoint();
  }
  EXPECT_LT(before, 10u);  // else the test could not tell a destructor that wrote it
  EXPECT_EQ(StoredCheckpoint(), before);
}

TEST_F(OutboxTest, DisabledOutboxPublishesNothing) {
  Append(3);
  OutboxOptions options = Options();
  options.bootstrap_servers.clear();
  auto outbox = OpenOutbox(options);
  ASSERT_TRUE(outbox->Start().ok());
  OutboxStatus status = outbox->GetStatus();
  EXPECT_EQ(status.kafka_state, "disabled");
  EXPECT_FALSE(status.running);
  EXPECT_TRUE(outbox->Stop(seconds(1)).ok());
  EXPECT_EQ(StoredCheckpoint(), 0u);
}

TEST_F(OutboxTest, RejectsBadOptions) {
  std::unique_ptr<KafkaOutbox> outbox;
  OutboxOptions options = Options();
  options.topic.clear();
  EXPECT_EQ(KafkaOutbox::Open(options, ledger_.get(), &outbox).code(), Code::kInvalidArgument);
  options = Options();
  options.in_flight_events_max = 0;
  EXPECT_EQ(KafkaOutbox::Open(options, ledger_.get(), &outbox).code(), Code::kInvalidArgument);
  for (size_t size : {limits::kOutboxMessageBytesMaxLowest - 1,
                      limits::kOutboxMessageBytesMaxHighest + 1}) {
    options = Options();
    options.message_bytes_max = size;
    EXPECT_EQ(KafkaOutbox::Open(options, ledger_.get(), &outbox).code(), Code::kInvalidArgument);
  }
  options = Options();
  options.kafka_config["no.such.property"] = "1";
  Status s = KafkaOutbox::Open(options, ledger_.get(), &outbox);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_EQ(s.problem(), "invalid_config");
}

// What an operator runs against the address `ledgerd` logs (CONTRACT.md, issue 2 item 5).
TEST_F(OutboxTest, KcatReadsThePublishedCloudEvents) {
  if (access("/usr/bin/kcat", X_OK) != 0) GTEST_SKIP() << "kcat is not installed";
  Append(20);
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  std::string command = "timeout 30 kcat -C -b " + kafka_->bootstrap_servers() + " -t " +
                        kTopic + " -e 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char line[8192];
  int cloud_events = 0;
  while (fgets(line, sizeof(line), pipe) != nullptr) {
    if (std::string_view(line).find("\"specversion\":\"1.0\"") != std::string_view::npos) {
      ++cloud_events;
    }
  }
  EXPECT_EQ(pclose(pipe), 0) << command;
  EXPECT_EQ(cloud_events, 20) << command;
}

// ---- The checker itself: it must be able to fail ---------------------------------------------

// Negative control on a real pipeline: a consumer that drops one event must be caught.
TEST_F(OutboxTest, LossCheckDetectsAConsumerThatSkipsAnEvent) {
  Append(30);
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());

  auto lossy = Consumer();
  lossy->SkipPosition(17);
  lossy->ConsumeDistinct(30, milliseconds(1500));  // cannot reach 30: times out
  DeliveryReport report = CheckDelivery(lossy->records(), 1, 30, {kSource, true});
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.missing, std::vector<uint64_t>{17});
}

// Negative control for the checkpoint rule: a checkpoint that runs ahead of delivery (as if it
// advanced on produce and the process then crashed) loses events, and the check sees it.
TEST_F(OutboxTest, LossCheckDetectsACheckpointAheadOfDelivery) {
  Append(30);
  ASSERT_TRUE(ledger_->PutCheckpoint("outbox.kafka", Position(10), /*sync=*/true).ok());
  auto outbox = OpenOutbox(Options());
  ASSERT_TRUE(outbox->Start().ok());
  ASSERT_TRUE(WaitCaughtUp(outbox.get()));
  ASSERT_TRUE(outbox->Stop(seconds(5)).ok());
  auto consumer = Consumer();
  consumer->ConsumeDistinct(20, seconds(10));
  DeliveryReport report = CheckDelivery(consumer->records(), 1, 30, {kSource, true});
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.missing.size(), 10u);
  EXPECT_EQ(report.missing.front(), 1u);
  EXPECT_EQ(report.missing.back(), 10u);
}

TEST(DeliveryCheckTest, DetectsLossCorruptionAndReordering) {
  // Three valid records for positions 1..3 of one key.
  auto make = [](uint64_t position, const std::string& key, const std::string& id,
                 const std::string& prev, const std::string& hash) {
    ConsumedRecord r;
    r.partition = 0;
    r.offset = static_cast<int64_t>(position);
    r.key = key;
    r.timestamp_ms = 1700000000123;
    r.has_content_type = true;
    r.content_type = "application/cloudevents+json";
    r.value = "{\"specversion\":\"1.0\",\"id\":\"" + id +
              "\",\"source\":\"urn:ledgerd:test\",\"type\":\"test.appended.v1\",\"subject\":\"" +
              key +
              "\",\"time\":\"2023-11-14T22:13:20.123456Z\",\"datacontenttype\":"
              "\"application/json\",\"sequence\":\"" +
              CloudEventSequence(Position(position)) + "\",\"prevhash\":\"" + prev + "\",\"hash\":\"" + hash +
              "\",\"data\":{\"n\":1}}";
    return r;
  };
  const std::string h0(64, '0'), h1(64, '1'), h2(64, '2'), h3(64, '3');
  std::vector<ConsumedRecord> good = {make(1, "a", "id-1", h0, h1), make(2, "a", "id-2", h1, h2),
                                      make(3, "a", "id-3", h2, h3)};
  DeliveryCheckOptions options{"urn:ledgerd:test", true};
  DeliveryReport report = CheckDelivery(good, 1, 3, options);
  EXPECT_TRUE(report.ok()) << report.Summary();

  // Duplicates are counted, not errors.
  auto with_duplicate = good;
  with_duplicate.push_back(good[1]);
  report = CheckDelivery(with_duplicate, 1, 3, options);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.duplicates, 1u);
  // A "duplicate" whose content differs is an error: a redelivery carries the same bytes.
  with_duplicate.back() = make(2, "a", "id-2", h1, h3);
  report = CheckDelivery(with_duplicate, 1, 3, options);
  EXPECT_FALSE(report.ok()) << report.Summary();
  EXPECT_EQ(report.duplicates, 1u);

  // A lost record.
  auto lost = good;
  lost.erase(lost.begin() + 1);
  report = CheckDelivery(lost, 1, 3, options);
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.missing, std::vector<uint64_t>{2});

  // A reordered key.
  auto reordered = good;
  std::swap(reordered[0], reordered[2]);
  report = CheckDelivery(reordered, 1, 3, options);
  EXPECT_FALSE(report.ok());
  options.check_key_order = false;
  EXPECT_TRUE(CheckDelivery(reordered, 1, 3, options).ok());
  options.check_key_order = true;

  // A key that is not the subject, a broken hash link, a bad time, a missing header.
  auto bad = good;
  bad[0].key = "b";
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
  bad = good;
  bad[2] = make(3, "a", "id-3", h1, h3);
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
  bad = good;
  bad[0].timestamp_ms += 5;
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
  bad = good;
  bad[0].has_content_type = false;
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
  bad = good;
  bad[0].value = "not json";
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
  // The same id for two positions.
  bad = good;
  bad.push_back(make(2, "a", "id-1", h1, h2));
  EXPECT_FALSE(CheckDelivery(bad, 1, 3, options).ok());
}

}  // namespace
}  // namespace ledger
