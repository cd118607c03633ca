#include "events/outbox.h"

#include <librdkafka/rdkafka.h>
#include <rapidjson/document.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "events/event.h"
#include "events/ledger.h"
#include "events/log_consumer.h"

namespace ledger {
namespace {

constexpr char kContentTypeHeader[] = "content-type";
constexpr char kContentType[] = "application/cloudevents+json";
// How long the publisher waits in all for the topic's offsets (TopicHeldRecords).
constexpr int kTopicQueryMs = 3000;
// How often a per-cluster outbox asks its producer for the cluster id, to notice another cluster
// answering behind the same bootstrap address.
constexpr int64_t kClusterIdCheckUs = 1'000'000;
// A Kafka error of the kind last logged at warn is logged at warn again after this long (at debug
// meanwhile): librdkafka repeats a broker's error on every reconnection.
constexpr int64_t kErrorWarnRepeatUs = 600'000'000;
// What to do about a record Kafka refused for its size.
constexpr char kSizeHint[] =
    "; lower LEDGER_KAFKA_MESSAGE_MAX_BYTES below the topic's max.message.bytes";

int64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t WallMicros() { return SystemClock::Default()->NowMicros(); }

// What the publisher knows about one position of the read-ahead window.
enum class Slot : uint8_t {
  kPending = 0,    // not produced, or produced and failed: (re-)produce it
  kInFlight = 1,   // produced, awaiting its delivery report
  kDelivered = 2,  // acknowledged, above the gap-free checkpoint
};

enum class KafkaState : int { kDown = 0, kUp = 1, kDisabled = 2, kLogDamaged = 3 };

const char* KafkaStateName(KafkaState state) {
  switch (state) {
    case KafkaState::kUp:
      return "up";
    case KafkaState::kDown:
      return "down";
    case KafkaState::kDisabled:
      return "disabled";
    case KafkaState::kLogDamaged:
      return "log_damaged";
  }
  return "down";
}

// A delivery or produce error saying that the topic, or the brokers' record of this producer, is
// gone: the topic deleted (and perhaps recreated empty) or the cluster rebuilt.
bool TopicOrProducerStateLost(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID:
    case RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER:
      return true;
    default:
      return false;
  }
}

Status InvalidConfig(const std::string& message) {
  return Status::InvalidArgument("invalid_config", "kafka outbox: " + message);
}

Status ValidateOptions(const OutboxOptions& o) {
  if (o.topic.empty()) return InvalidConfig("topic is empty");
  if (o.source.empty()) return InvalidConfig("CloudEvents source is empty");
  if (!o.checkpoint_per_cluster && o.checkpoint_name.empty()) {
    return InvalidConfig("checkpoint name is empty");
  }
  if (o.in_flight_events_max < 1 || o.in_flight_events_max > 1'000'000) {
    return InvalidConfig("in_flight_events_max must be 1..1000000");
  }
  if (o.in_flight_bytes_max < 1) return InvalidConfig("in_flight_bytes_max must be > 0");
  if (o.scan_events_max < 1) return InvalidConfig("scan_events_max must be > 0");
  if (o.message_bytes_max < limits::kOutboxMessageBytesMaxLowest ||
      o.message_bytes_max > limits::kOutboxMessageBytesMaxHighest) {
    return InvalidConfig("message_bytes_max must be " +
                         std::to_string(limits::kOutboxMessageBytesMaxLowest) + ".." +
                         std::to_string(limits::kOutboxMessageBytesMaxHighest));
  }
  if (o.linger_ms < 0 || o.message_timeout_ms < 0 || o.poll_interval_ms < 1 ||
      o.checkpoint_interval_ms < 0 || o.retry_backoff_ms_min < 1 ||
      o.retry_backoff_ms_max < o.retry_backoff_ms_min || o.stall_down_ms < 1) {
    return InvalidConfig("timing options out of range");
  }
  return Status::OK();
}

// The producer's configuration: ours, then OutboxOptions::kafka_config over it; bootstrap.servers
// only `with_brokers` (without, the producer connects nowhere).
Status NewProducerConf(const OutboxOptions& options, bool with_brokers, rd_kafka_conf_t** out) {
  const size_t queue_messages = std::max<size_t>(100000, 2 * options.in_flight_events_max);
  const size_t queue_kbytes = std::max<size_t>(1 << 20, 2 * options.in_flight_bytes_max / 1024);
  std::vector<std::pair<std::string, std::string>> config = {
      {"client.id", "ledgerd-outbox"},
      {"enable.idempotence", "true"},
      {"acks", "all"},
      {"enable.gapless.guarantee", "true"},
      {"partitioner", "murmur2_random"},
      {"linger.ms", std::to_string(options.linger_ms)},
      {"batch.num.messages", "10000"},
      {"compression.codec", "lz4"},
      {"message.timeout.ms", std::to_string(options.message_timeout_ms)},
      {"queue.buffering.max.messages", std::to_string(queue_messages)},
      {"queue.buffering.max.kbytes", std::to_string(queue_kbytes)},
      // The producer's own ceiling stays above ours, which decides what is published whole.
      {"message.max.bytes",
       std::to_string(std::max<size_t>(2 << 20, options.message_bytes_max + (64 << 10)))},
      {"reconnect.backoff.ms", "100"},
      {"reconnect.backoff.max.ms", "1000"},
      {"statistics.interval.ms", "1000"},
  };
  if (with_brokers) config.emplace(config.begin(), "bootstrap.servers", options.bootstrap_servers);
  for (const auto& [key, value] : options.kafka_config) config.emplace_back(key, value);

  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  for (const auto& [key, value] : config) {
    const rd_kafka_conf_res_t set =
        rd_kafka_conf_set(conf, key.c_str(), value.c_str(), errstr, sizeof(errstr));
    if (set != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      // librdkafka's message repeats the value (`Invalid value "..." for ...`), and a property's
      // value may be a secret under any name: the property alone is named.
      return InvalidConfig(key + (set == RD_KAFKA_CONF_UNKNOWN ? ": no such librdkafka property"
                                                               : ": librdkafka refused its value"));
    }
  }
  *out = conf;
  return Status::OK();
}

}  // namespace

Status CheckProducerConfig(const OutboxOptions& options) {
  rd_kafka_conf_t* conf = nullptr;
  LEDGER_RETURN_IF_ERROR(NewProducerConf(options, /*with_brokers=*/false, &conf));
  // Quiet: without brokers librdkafka warns that it cannot connect.
  rd_kafka_conf_set_log_cb(conf, [](const rd_kafka_t*, int, const char*, const char*) {});
  char errstr[512];
  rd_kafka_t* producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (producer == nullptr) {
    rd_kafka_conf_destroy(conf);
    return InvalidConfig(std::string("producer: ") + errstr);
  }
  rd_kafka_destroy(producer);
  return Status::OK();
}

// Everything behind KafkaOutbox. Fields below "publisher state" belong to the publisher thread
// once Start() ran (Open() and Stop()/the destructor touch them only while no thread runs).
class KafkaOutbox::Impl {
 public:
  Impl(const OutboxOptions& options, Ledger* ledger)
      : options_(options),
        ledger_(ledger),
        window_(options.in_flight_events_max),
        slots_(window_, Slot::kPending),
        slot_bytes_(window_, 0),
        slot_time_us_(window_, 0),
        backoff_ms_(options.retry_backoff_ms_min),
        core_(ledger, "outbox", options.checkpoint_name, options.checkpoint_interval_ms) {}

  ~Impl() {
    core_.StopWithoutPersisting();
    DestroyProducer();
  }

  Status Init();
  Status Start();
  void Notify();
  Status Stop(std::chrono::steady_clock::time_point deadline);
  OutboxStatus GetStatus() const;
  void RenderMetrics(std::string* out) const;

  OutboxMetrics metrics_;

 private:
  bool disabled() const { return options_.bootstrap_servers.empty(); }

  // Producer lifecycle.
  Status CreateProducer();
  void DestroyProducer();
  void RestartProducer();
  void RecreateProducer(const std::string& why);
  static void OnDeliveryReport(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque);
  static void OnError(rd_kafka_t*, int err, const char* reason, void* opaque);
  static int OnStats(rd_kafka_t*, char* json, size_t json_len, void* opaque);
  static void OnLog(const rd_kafka_t*, int level, const char* facility, const char* message);
  static void OnQueueEvent(rd_kafka_t*, void* opaque);

  // The publisher thread.
  void Run();
  bool ProduceBatch();
  rd_kafka_resp_err_t Produce(const Event& event, uint64_t position);
  void HandleDelivery(const rd_kafka_message_t* message);
  void AdvanceCheckpoint();
  void ScheduleRewind(const std::string& reason);
  void MarkLogDamaged(const Status& why);
  void RecheckCluster(const std::string& why);
  void NoteAcknowledgedOffset(int32_t partition, int64_t offset);
  bool MayPersist() const;
  void WatchClusterId(int64_t now_us);
  void UnloadClusterCheckpoint(int64_t now_us);
  bool LoadClusterCheckpoint();
  Status TopicHeldRecords(bool loaded_before, bool* held);
  Status WriteReset(bool zero_adopted);
  void AfterPersist();
  void MaybeRewind(int64_t now_us);
  void PublishState(int64_t now_us);
  void WaitForWork(int64_t now_us);
  void SetLastError(std::string error) { core_.SetLastError(std::move(error)); }
  void ReportError(const std::string& kind, std::string error);
  void MarkBrokerUp();
  size_t SlotOf(uint64_t position) const { return position % window_; }

  const OutboxOptions options_;
  Ledger* const ledger_;
  const size_t window_;

  // Published for GetStatus() (any thread).
  std::atomic<uint64_t> published_{0};
  std::atomic<uint64_t> checkpoint_{0};
  std::atomic<uint64_t> in_flight_count_{0};
  std::atomic<int> kafka_state_{static_cast<int>(KafkaState::kDown)};
  // With checkpoint_per_cluster: the id of the cluster whose checkpoint was loaded last, empty
  // until one was. Written by the publisher (which reads it without the lock).
  mutable std::mutex cluster_mu_;
  std::string cluster_id_;  // writes and other threads' reads under cluster_mu_
  bool started_ = false;         // owner thread only
  bool stopped_ = false;         // owner thread only

  // Publisher state.
  rd_kafka_t* producer_ = nullptr;
  rd_kafka_topic_t* topic_ = nullptr;
  rd_kafka_queue_t* main_queue_ = nullptr;
  bool fatal_ = false;               // a fatal producer error is pending
  bool size_refused_ = false;        // the last failure was a refusal for the record's size
  // A stored event failed its check (DecodeCheckedEvent) or RocksDB's at this position: nothing
  // from there on is published until a restart (MarkLogDamaged). 0: none.
  uint64_t log_damaged_at_ = 0;
  uint64_t mark_ = 0;                // every position <= mark_ is delivered (the checkpoint)
  uint64_t next_ = 1;                // next position to consider producing
  uint64_t highest_produced_ = 0;    // highest position ever handed to the producer
  std::vector<Slot> slots_;          // positions (mark_, mark_ + window_], by position % window_
  std::vector<uint32_t> slot_bytes_;
  std::vector<int64_t> slot_time_us_;  // append time, for the publish latency
  uint64_t in_flight_ = 0;
  uint64_t in_flight_bytes_ = 0;
  bool rewind_pending_ = false;
  int64_t rewind_at_us_ = 0;
  uint64_t recovery_target_ = 0;     // backoff resets once the checkpoint passes this
  int backoff_ms_;
  bool broker_up_ = false;           // a broker connection is up (stats, deliveries)
  // The kind of the error ReportError last logged at warn, and when; "" once a broker is up.
  std::string warned_kind_;
  int64_t warned_us_ = 0;
  // The checkpoint is loaded: at Init(), or with checkpoint_per_cluster once the cluster id is
  // known (LoadClusterCheckpoint). Nothing is produced or persisted before.
  bool checkpoint_loaded_ = false;
  // With checkpoint_per_cluster: the topic or the cluster behind the bootstrap list may have
  // changed (a producer restart, a delivery error saying the topic or the producer's state is
  // gone, another cluster id): once nothing is in flight the checkpoint is written, unloaded and
  // loaded again (LoadClusterCheckpoint), the topic looked at again. Loaded once per process, a
  // topic recreated empty while ledgerd ran got only what came after the old checkpoint.
  bool recheck_cluster_ = false;
  int64_t cluster_checked_us_ = 0;  // when WatchClusterId last asked
  // With checkpoint_per_cluster and adopt_checkpoint_name: the old-named checkpoint is zeroed once
  // the cluster's checkpoint persisted reaches adopted_ (what was taken from it, 0 if nothing).
  bool adopt_zero_pending_ = false;
  uint64_t adopted_ = 0;
  // With checkpoint_per_cluster: the checkpoint whose reset to 0 (a topic that never held a
  // record) the ledger refused to write, and its answer. Nothing is published before it is
  // written; the topic is not asked again meanwhile.
  std::string reset_unwritten_;
  Status reset_error_;
  // The persisted checkpoint as last copied under OutboxLastCheckpointName (GetStatus() shows it
  // until the cluster's checkpoint is loaded).
  uint64_t last_copied_ = 0;
  // With checkpoint_per_cluster: the checkpoint names loaded in this process (TopicHeldRecords
  // trusts "unknown topic" only at a name's first load).
  std::set<std::string> names_loaded_;
  std::string loaded_name_;  // the one loaded last
  // With checkpoint_per_cluster: the highest offset acknowledged on each partition of the topic,
  // since the producer, the cluster or the checkpoint last changed (NoteAcknowledgedOffset).
  std::map<int32_t, int64_t> acked_offsets_;
  // The checkpoint to reset to 0 at its next load, its topic seen recreated (empty: none).
  std::string recreated_name_;
  int64_t last_progress_us_ = 0;     // last delivery, or when work became outstanding

  // The thread, wake-ups, stop requests, the checkpoint and the last error. Last: it joins the
  // thread before the fields above go.
  LogConsumerCore core_;
};

// ---- Setup -------------------------------------------------------------------------------------

Status KafkaOutbox::Impl::Init() {
  LEDGER_RETURN_IF_ERROR(ValidateOptions(options_));
  uint64_t shown = 0;  // what GetStatus() reports as the checkpoint until Start()
  if (!options_.checkpoint_per_cluster) {
    LEDGER_RETURN_IF_ERROR(core_.Load(&mark_));
    checkpoint_loaded_ = true;
    shown = mark_;
  } else {
    // Until the cluster is known, the status shows the checkpoint last published to (not 0, a lag
    // of the whole log).
    Position last;
    LEDGER_RETURN_IF_ERROR(ledger_->GetCheckpoint(OutboxLastCheckpointName(options_.topic), &last));
    last_copied_ = last.value();
    shown = std::min(last.value(), ledger_->Head().value());
  }
  next_ = mark_ + 1;
  highest_produced_ = mark_;
  checkpoint_.store(shown);
  published_.store(shown);
  if (disabled()) {
    kafka_state_.store(static_cast<int>(KafkaState::kDisabled));
    return Status::OK();
  }
  return CreateProducer();
}

Status KafkaOutbox::Impl::CreateProducer() {
  rd_kafka_conf_t* conf = nullptr;
  LEDGER_RETURN_IF_ERROR(NewProducerConf(options_, /*with_brokers=*/true, &conf));
  char errstr[512];
  rd_kafka_conf_set_opaque(conf, this);
  rd_kafka_conf_set_dr_msg_cb(conf, &Impl::OnDeliveryReport);
  rd_kafka_conf_set_error_cb(conf, &Impl::OnError);
  rd_kafka_conf_set_stats_cb(conf, &Impl::OnStats);
  rd_kafka_conf_set_log_cb(conf, &Impl::OnLog);
  rd_kafka_t* producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (producer == nullptr) {
    rd_kafka_conf_destroy(conf);
    return InvalidConfig(std::string("producer: ") + errstr);
  }
  producer_ = producer;
  topic_ = rd_kafka_topic_new(producer_, options_.topic.c_str(), nullptr);
  if (topic_ == nullptr) {
    DestroyProducer();
    return InvalidConfig("topic " + options_.topic + ": " +
                         rd_kafka_err2str(rd_kafka_last_error()));
  }
  main_queue_ = rd_kafka_queue_get_main(producer_);
  rd_kafka_queue_cb_event_enable(main_queue_, &Impl::OnQueueEvent, this);
  fatal_ = false;
  return Status::OK();
}

// Drops whatever is still queued (its delivery reports, ERR__PURGE_*, come through the poll
// below and leave those positions pending), then destroys the handle.
void KafkaOutbox::Impl::DestroyProducer() {
  if (producer_ == nullptr) return;
  rd_kafka_purge(producer_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  rd_kafka_flush(producer_, 200);
  rd_kafka_poll(producer_, 0);
  if (main_queue_ != nullptr) {
    rd_kafka_queue_cb_event_enable(main_queue_, nullptr, nullptr);
    rd_kafka_queue_destroy(main_queue_);
    main_queue_ = nullptr;
  }
  if (topic_ != nullptr) {
    rd_kafka_topic_destroy(topic_);
    topic_ = nullptr;
  }
  rd_kafka_destroy(producer_);
  producer_ = nullptr;
  acked_offsets_.clear();  // another producer may reach another cluster
  // Reports that never came (they cannot come any more) leave their positions pending.
  for (size_t i = 0; i < window_; ++i) {
    if (slots_[i] == Slot::kInFlight) slots_[i] = Slot::kPending;
  }
  in_flight_ = 0;
  in_flight_bytes_ = 0;
  in_flight_count_.store(0);
}

// A fatal error (e.g. the idempotent producer lost its sequence) makes the handle unusable: make
// a new one and re-produce everything not acknowledged.
void KafkaOutbox::Impl::RestartProducer() {
  char reason[512] = "";
  rd_kafka_resp_err_t err = rd_kafka_fatal_error(producer_, reason, sizeof(reason));
  std::string what = std::string("fatal producer error ") + rd_kafka_err2name(err) + ": " + reason;
  DestroyProducer();
  // With enable.gapless.guarantee a record refused for its size is fatal; its delivery report
  // came before the fatal error or while the producer was destroyed.
  if (size_refused_) what += kSizeHint;
  size_refused_ = false;
  spdlog::error("outbox: {}; recreating the producer, re-publishing after position {}", what,
                mark_);
  metrics_.producer_restarts.Add();
  RecreateProducer(what);
}

// After DestroyProducer: a new producer, a rewind, and (per cluster) the checkpoint loaded again,
// as the producer's end may have come with the topic's or the cluster's.
void KafkaOutbox::Impl::RecreateProducer(const std::string& why) {
  std::string what = why;
  Status s = CreateProducer();
  if (!s.ok()) {
    spdlog::error("outbox: cannot recreate the producer: {}", s.ToString());
    what += "; " + s.ToString();
  }
  ScheduleRewind(what);
  RecheckCluster(what);
}

// ---- librdkafka callbacks (publisher thread, from rd_kafka_poll; OnLog and OnQueueEvent from
// librdkafka's threads) ---------------------------------------------------------------------------

void KafkaOutbox::Impl::OnDeliveryReport(rd_kafka_t*, const rd_kafka_message_t* message,
                                         void* opaque) {
  static_cast<Impl*>(opaque)->HandleDelivery(message);
}

void KafkaOutbox::Impl::OnError(rd_kafka_t*, int err, const char* reason, void* opaque) {
  Impl* self = static_cast<Impl*>(opaque);
  auto code = static_cast<rd_kafka_resp_err_t>(err);
  if (code == RD_KAFKA_RESP_ERR__FATAL) {
    self->fatal_ = true;
    return;
  }
  if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    self->broker_up_ = false;
    self->ReportError(rd_kafka_err2name(code), std::string("kafka down: ") + reason + " (" +
                                                   self->options_.bootstrap_servers + ")");
    return;
  }
  // librdkafka retries these (connection refused, DNS, TLS, authentication, authorization):
  // they show in the state, the lag and last_error, and in the log when they begin or change.
  // Its messages name brokers, files and mechanisms, never a password.
  self->ReportError(rd_kafka_err2name(code), std::string(rd_kafka_err2name(code)) + ": " + reason);
}

// The error in last_error, and in the log at warn when it is of another kind than the last one
// logged (the first since a broker was up, at startup too) or that kind's last warning is
// kErrorWarnRepeatUs old; at debug otherwise. Publisher thread (OnError runs from its polls).
void KafkaOutbox::Impl::ReportError(const std::string& kind, std::string error) {
  const int64_t now_us = SteadyMicros();
  if (kind != warned_kind_ || now_us - warned_us_ >= kErrorWarnRepeatUs) {
    spdlog::warn("outbox: {}", error);
    warned_kind_ = kind;
    warned_us_ = now_us;
  } else {
    spdlog::debug("outbox: {}", error);
  }
  SetLastError(std::move(error));
}

void KafkaOutbox::Impl::MarkBrokerUp() {
  if (!broker_up_) spdlog::info("outbox: kafka is up");
  broker_up_ = true;
  warned_kind_.clear();  // the next error is news
}

int KafkaOutbox::Impl::OnStats(rd_kafka_t*, char* json, size_t json_len, void* opaque) {
  Impl* self = static_cast<Impl*>(opaque);
  rapidjson::Document doc;
  doc.Parse(json, json_len);
  if (doc.HasParseError() || !doc.IsObject()) return 0;
  auto brokers = doc.FindMember("brokers");
  if (brokers == doc.MemberEnd() || !brokers->value.IsObject()) return 0;
  bool any_up = false;
  for (const auto& broker : brokers->value.GetObject()) {
    auto state = broker.value.FindMember("state");
    if (state != broker.value.MemberEnd() && state->value.IsString() &&
        std::string_view(state->value.GetString()) == "UP") {
      any_up = true;
    }
  }
  // Connections may be closed while idle; only ALL_BROKERS_DOWN says "down".
  if (any_up) self->MarkBrokerUp();
  return 0;  // librdkafka frees `json`
}

void KafkaOutbox::Impl::OnLog(const rd_kafka_t*, int level, const char* facility,
                              const char* message) {
  // Errors (syslog level 3 and below: a broker refusing the connection, TLS or SASL failing) and
  // configuration warnings deserve the operator's attention; librdkafka logs a broker's error
  // again only when it changes. Its messages name brokers and files, never a password.
  std::string_view text(message);
  const bool expected_warning =
      text.find("enable.gapless.guarantee is experimental") != std::string_view::npos;
  if ((std::string_view(facility) == "CONFWARN" && !expected_warning) || level <= 3) {
    spdlog::warn("outbox: librdkafka {}: {}", facility, message);
  } else {
    spdlog::debug("outbox: librdkafka {}: {}", facility, message);
  }
}

void KafkaOutbox::Impl::OnQueueEvent(rd_kafka_t*, void* opaque) {
  static_cast<Impl*>(opaque)->Notify();
}

// ---- Publishing --------------------------------------------------------------------------------

void KafkaOutbox::Impl::HandleDelivery(const rd_kafka_message_t* message) {
  const uint64_t position = reinterpret_cast<uintptr_t>(message->_private);
  const size_t slot = SlotOf(position);
  if (position <= mark_ || slots_[slot] != Slot::kInFlight) return;  // not ours to count
  --in_flight_;
  in_flight_bytes_ -= slot_bytes_[slot];
  in_flight_count_.store(in_flight_);
  if (message->err == RD_KAFKA_RESP_ERR__PURGE_QUEUE ||
      message->err == RD_KAFKA_RESP_ERR__PURGE_INFLIGHT) {
    slots_[slot] = Slot::kPending;  // we dropped it (stop or producer restart): not a failure
    return;
  }
  if (message->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
    int64_t offset = message->offset;
    if (options_.delivery_offset_for_test) {
      options_.delivery_offset_for_test(message->partition, &offset);
    }
    NoteAcknowledgedOffset(message->partition, offset);
    size_refused_ = false;
    slots_[slot] = Slot::kDelivered;
    metrics_.delivered.Add();
    metrics_.publish_latency_seconds.Observe(
        static_cast<double>(WallMicros() - slot_time_us_[slot]) / 1e6);
    last_progress_us_ = SteadyMicros();
    MarkBrokerUp();
    AdvanceCheckpoint();
    return;
  }
  slots_[slot] = Slot::kPending;
  metrics_.failed.Add();
  std::string reason = std::string("delivery failed at position ") + std::to_string(position) +
                       ": " + rd_kafka_err2name(message->err) + ": " +
                       rd_kafka_err2str(message->err);
  if (message->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE) {
    size_refused_ = true;
    reason += " (a " + std::to_string(message->len) + "-byte record)" + kSizeHint;
  }
  ScheduleRewind(reason);
  if (TopicOrProducerStateLost(message->err)) RecheckCluster(reason);
}

void KafkaOutbox::Impl::AdvanceCheckpoint() {
  while (mark_ < highest_produced_ && slots_[SlotOf(mark_ + 1)] == Slot::kDelivered) {
    slots_[SlotOf(mark_ + 1)] = Slot::kPending;
    ++mark_;
  }
  checkpoint_.store(mark_);
  if (mark_ >= recovery_target_) backoff_ms_ = options_.retry_backoff_ms_min;
}

// Stops producing new positions; once nothing is in flight (and the backoff passed), production
// restarts from the checkpoint, skipping positions already delivered.
void KafkaOutbox::Impl::ScheduleRewind(const std::string& reason) {
  SetLastError(reason);
  if (rewind_pending_) return;
  rewind_pending_ = true;
  rewind_at_us_ = SteadyMicros() + int64_t{backoff_ms_} * 1000;
  recovery_target_ = highest_produced_;
  spdlog::warn("outbox: {}; re-publishing after position {} in {} ms", reason, mark_,
               backoff_ms_);
  backoff_ms_ = std::min(backoff_ms_ * 2, options_.retry_backoff_ms_max);
  metrics_.rewinds.Add();
}

void KafkaOutbox::Impl::MaybeRewind(int64_t now_us) {
  if (!rewind_pending_ || in_flight_ > 0 || now_us < rewind_at_us_) return;
  if (producer_ == nullptr) {
    Status s = CreateProducer();
    if (!s.ok()) {
      rewind_pending_ = false;
      ScheduleRewind("cannot recreate the producer: " + s.ToString());
      return;
    }
  }
  rewind_pending_ = false;
  next_ = mark_ + 1;
}

rd_kafka_resp_err_t KafkaOutbox::Impl::Produce(const Event& event, uint64_t position) {
  std::string value = ToCloudEventJson(event, options_.source);
  const size_t whole_bytes = value.size();
  // Too big for the topic: publish the attributes and where to read the data.
  if (whole_bytes > options_.message_bytes_max) {
    value = ToCloudEventJsonWithDataRef(event, options_.source);
  }
  const int64_t timestamp_ms = event.time_us > 0 ? event.time_us / 1000 : 0;
  rd_kafka_resp_err_t err = rd_kafka_producev(
      producer_, RD_KAFKA_V_RKT(topic_),
      RD_KAFKA_V_KEY(event.subject.data(), event.subject.size()),
      RD_KAFKA_V_VALUE(value.data(), value.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_TIMESTAMP(timestamp_ms),
      RD_KAFKA_V_HEADER(kContentTypeHeader, kContentType, -1),
      RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<uintptr_t>(position))),
      RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return err;
  if (whole_bytes > options_.message_bytes_max && position > highest_produced_) {
    // Counted and logged once, not on every re-publish.
    metrics_.data_omitted.Add();
    spdlog::warn("outbox: position {} ({}) is a {}-byte CloudEvent, over {}; published with "
                 "dataref instead of data",
                 position, event.type, whole_bytes, options_.message_bytes_max);
  }
  const size_t slot = SlotOf(position);
  slots_[slot] = Slot::kInFlight;
  slot_bytes_[slot] = static_cast<uint32_t>(value.size());
  slot_time_us_[slot] = event.time_us;
  // New work becoming outstanding starts the stall clock; re-producing positions already produced
  // (a rewind) does not: a message Kafka refuses every time must not look like fresh work.
  if (in_flight_ == 0 && position > highest_produced_) last_progress_us_ = SteadyMicros();
  ++in_flight_;
  in_flight_bytes_ += value.size();
  in_flight_count_.store(in_flight_);
  metrics_.produced.Add();
  if (position <= highest_produced_) metrics_.retried.Add();
  highest_produced_ = std::max(highest_produced_, position);
  published_.store(highest_produced_);
  return RD_KAFKA_RESP_ERR_NO_ERROR;
}

// Produces the next events of the window, at most scan_events_max. Returns true when more can be
// produced right away.
bool KafkaOutbox::Impl::ProduceBatch() {
  if (producer_ == nullptr || rewind_pending_ || fatal_ || log_damaged_at_ != 0 ||
      !checkpoint_loaded_ || recheck_cluster_) {
    return false;
  }
  // After a rewind the checkpoint can jump over positions delivered before it, ahead of the scan
  // that skips them: never produce at or below it again (their reports would not be counted).
  next_ = std::max(next_, mark_ + 1);
  const uint64_t head = ledger_->Head().value();
  const uint64_t limit = std::min<uint64_t>(head, mark_ + window_);
  if (next_ > limit || in_flight_bytes_ >= options_.in_flight_bytes_max) return false;
  const uint64_t to = std::min<uint64_t>(limit, next_ + options_.scan_events_max - 1);
  // The scan's end: one event past the batch, when the log holds one, for its link only.
  const uint64_t end = to < head ? to + 1 : to;
  bool blocked = false;
  bool damaged = false;
  uint64_t gap_at = 0;  // the first position the scan found missing
  Status error;
  // Each event is checked before it is published, and linked to the one before it: the window's
  // first event to the stored hash of the event before it (one more read), a delivered event's
  // successor to the delivered event's stored hash. And it is published only once the event
  // after it has linked to it (`held` until then; the batch's last through the event after the
  // batch, read for its link only), as tools/export.cc and the Lago sink hold theirs back: an
  // event rewritten and re-sealed (its own hash recomputed) checks out on its own, only its
  // successor's prev_hash shows it, and it was on Kafka by then. Only the head (no successor yet)
  // is published as it is; an event whose successor is missing or unreadable is the damage, as
  // for a broken link (either may be the one changed), and a read error rewinds before it.
  Hash prev{};
  bool have_prev = false;
  if (next_ > 1) {
    Status read = ledger_->StoredHashAt(Position(next_ - 1), &prev);
    if (read.IsCorruption()) {
      MarkLogDamaged(read);
      return false;
    }
    if (!read.ok()) {
      ScheduleRewind("reading the log for the outbox: " + read.ToString());
      return false;
    }
    have_prev = true;
  }
  std::optional<Event> held;  // at next_: checked, its successor's link not read yet
  auto produce_held = [&] {
    if (in_flight_bytes_ >= options_.in_flight_bytes_max) {
      blocked = true;
      return false;
    }
    rd_kafka_resp_err_t err = Produce(*held, next_);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      blocked = true;
      return false;
    }
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      error = Status::Unavailable("kafka_unavailable", "produce at position " +
                                                           std::to_string(next_) + ": " +
                                                           rd_kafka_err2str(err));
      if (TopicOrProducerStateLost(err)) RecheckCluster(error.message());
      return false;
    }
    held.reset();
    ++next_;
    return true;
  };
  uint64_t seen = next_ - 1;  // the last position the scan read
  Status s = ledger_->ScanRaw(Position(next_), Position(end), [&](Position p, std::string_view v) {
    if (p.value() != seen + 1) {  // a gap: damage, as a rewind would only read it again
      gap_at = seen + 1;
      return false;
    }
    seen = p.value();
    if (held.has_value()) {
      // A broken link stops before both events it joins: either may be the rewritten one.
      error = CheckEventLink(p, v, held->hash);
      if (!error.ok()) {
        damaged = true;
        return false;
      }
      if (!produce_held()) return false;
    }
    if (p.value() > to) return false;  // the event after the batch: its link only
    if (slots_[SlotOf(next_)] == Slot::kDelivered) {
      ++next_;
      have_prev = StoredEventHash(v, &prev);
      return true;
    }
    Event event;
    error = DecodeCheckedEvent(p, v, have_prev ? &prev : nullptr, &event);
    if (!error.ok()) {
      damaged = true;
      return false;
    }
    prev = event.hash;
    have_prev = true;
    held = std::move(event);
    return true;
  });
  const bool stopped = damaged || blocked || !error.ok();  // by the scan's own reasons
  if (!stopped && s.ok() && seen < end) gap_at = seen + 1;
  if (!stopped && held.has_value() && s.ok() && gap_at == 0 && seen == head) {
    produce_held();  // the head: no event links to it yet
  }
  if (gap_at != 0 && !blocked && error.ok()) {
    error = Status::Corruption("the log has no event at position " + std::to_string(gap_at));
    damaged = true;
  }
  if (damaged || (s.IsCorruption() && !blocked && error.ok())) {
    MarkLogDamaged(damaged ? error : s);
    return false;
  }
  if (!error.ok() || (!s.ok() && !blocked)) {  // blocked: the next round reads it again
    ScheduleRewind("reading the log for the outbox: " + (s.ok() ? error : s).ToString());
    return false;
  }
  return !blocked && next_ <= limit;
}

void KafkaOutbox::Impl::PublishState(int64_t now_us) {
  // Stalled: nothing delivered for stall_down_ms while messages are in flight or while rewinds
  // keep re-publishing from the checkpoint (between them nothing is in flight).
  const bool waiting = in_flight_ > 0 || rewind_pending_;
  bool stalled = waiting && now_us - last_progress_us_ > int64_t{options_.stall_down_ms} * 1000;
  bool up = producer_ != nullptr && !fatal_ && broker_up_ && !stalled && checkpoint_loaded_;
  kafka_state_.store(static_cast<int>(log_damaged_at_ != 0 ? KafkaState::kLogDamaged
                                      : up                  ? KafkaState::kUp
                                                            : KafkaState::kDown));
}

// The event at next_ is damaged on disk (altered bytes, a broken link, a table block RocksDB
// refuses): publishing stops before it for good, as a rewind would only read it again, and
// Kafka's consumers must not get an event that `ledgerctl verify` fails. What was published
// before it is still delivered and checkpointed; /readyz shows "log_damaged".
void KafkaOutbox::Impl::MarkLogDamaged(const Status& why) {
  log_damaged_at_ = next_;
  const std::string error = "the log is damaged at position " + std::to_string(next_) +
                            "; publishing stopped before it: " + why.message();
  SetLastError(error);
  spdlog::error("outbox: {}", error);
}

// With checkpoint_per_cluster: the checkpoint is loaded again once nothing is in flight (Run), so
// that a topic that lost its records (deleted, recreated empty, a cluster rebuilt) while ledgerd
// runs gets the whole log, as after a restart; a topic that still holds them keeps the checkpoint
// (TopicHeldRecords decides).
void KafkaOutbox::Impl::RecheckCluster(const std::string& why) {
  if (!options_.checkpoint_per_cluster || !checkpoint_loaded_ || recheck_cluster_) return;
  recheck_cluster_ = true;
  spdlog::info("outbox: {}; checking the cluster's checkpoint and topic again", why);
}

// With checkpoint_per_cluster: a record acknowledged at a lower offset than one before it on the
// same partition means that the topic was deleted and created again (offsets never go back, and
// the idempotent producer's delivery reports come in order on a partition). That often comes with
// no error at all (Kafka 2.5+ takes an unknown producer's writes, KIP-360; librdkafka retries an
// unknown topic; auto-creation recreates it): what was published before the checkpoint is not in
// the new topic. The checkpoint's reset to 0 is written synced at once -- the only evidence of
// the recreation is in memory, and a stop or a crash before the reload kept the old checkpoint for
// good (the new topic holding records by then) -- with an adopted old-named checkpoint's zeroing,
// and the checkpoint is not written again until that reload, which publishes the whole log.
void KafkaOutbox::Impl::NoteAcknowledgedOffset(int32_t partition, int64_t offset) {
  if (!options_.checkpoint_per_cluster || !checkpoint_loaded_ || offset < 0) return;
  auto [it, first] = acked_offsets_.try_emplace(partition, offset);
  if (first || offset >= it->second) {
    it->second = offset;
    return;
  }
  const std::string what = "partition " + std::to_string(partition) + " of topic " +
                           options_.topic + " acknowledged offset " + std::to_string(offset) +
                           " after " + std::to_string(it->second) +
                           ": the topic was recreated while ledgerd ran";
  it->second = offset;
  if (!recreated_name_.empty()) return;  // already known
  // Another cluster answering (its offsets are its own) is WatchClusterId's to find.
  char* id = rd_kafka_clusterid(producer_, /*timeout_ms=*/0);
  const bool same_cluster = id == nullptr || cluster_id_ == id;
  if (id != nullptr) rd_kafka_mem_free(producer_, id);
  if (!same_cluster) return;
  recreated_name_ = loaded_name_;
  // Else the next start, finding the cluster's checkpoint 0, would take the old-named one again.
  Status s = adopt_zero_pending_ ? ledger_->PutCheckpoint(options_.adopt_checkpoint_name,
                                                          Position(0), /*sync=*/true)
                                 : Status::OK();
  if (s.ok()) {
    adopt_zero_pending_ = false;
    s = core_.PersistSynced(0, SteadyMicros());
  }
  if (!s.ok()) {  // the reload writes it (WriteReset) before anything more is published
    spdlog::error("outbox: writing the reset of checkpoint {} to 0: {}", loaded_name_,
                  s.ToString());
  }
  ScheduleRewind(what);  // at warn; the reload warns again as it resets the checkpoint
  RecheckCluster(what);
}

// The loaded checkpoint may be written: not while a reset of it to 0 waits for the reload
// (NoteAcknowledgedOffset).
bool KafkaOutbox::Impl::MayPersist() const {
  return checkpoint_loaded_ && recreated_name_.empty();
}

// With checkpoint_per_cluster: another cluster answering behind the bootstrap list (its id
// differs from the one whose checkpoint is loaded) gets its own checkpoint, on a new producer
// (the old one's id and sequence numbers are the other cluster's). Asks at most every
// kClusterIdCheckUs: what the other cluster acknowledged before counts in the old one's
// checkpoint (which matters only if that cluster comes back).
void KafkaOutbox::Impl::WatchClusterId(int64_t now_us) {
  if (!options_.checkpoint_per_cluster || !checkpoint_loaded_ || producer_ == nullptr ||
      now_us - cluster_checked_us_ < kClusterIdCheckUs) {
    return;
  }
  cluster_checked_us_ = now_us;
  char* id = rd_kafka_clusterid(producer_, /*timeout_ms=*/0);  // the cached id, never waits
  if (id == nullptr) return;
  const std::string cluster_id(id);
  rd_kafka_mem_free(producer_, id);
  if (cluster_id == cluster_id_) return;
  const std::string what = "kafka cluster " + cluster_id + " answers where " + cluster_id_ +
                           " did: publishing to it after its own checkpoint";
  spdlog::warn("outbox: {}; recreating the producer", what);
  DestroyProducer();
  RecreateProducer(what);
}

// Writes the loaded checkpoint (synced: the name may change) and unloads it; Run loads it again.
void KafkaOutbox::Impl::UnloadClusterCheckpoint(int64_t now_us) {
  recheck_cluster_ = false;
  if (MayPersist()) {
    core_.Persist(mark_, now_us, /*force=*/true);
    AfterPersist();
  }
  checkpoint_loaded_ = false;
}

// With checkpoint_per_cluster: once a broker has answered with the cluster's id, names the
// checkpoint after it, loads it (taking the old-named one in memory when the cluster's is 0) and
// checks that the topic has what the checkpoint says: a topic that never held a record (new,
// deleted and recreated, or on a cluster rebuilt empty that kept its id, as with the
// apache/kafka image's default CLUSTER_ID) gets the whole log. False while the id is unknown (no
// metadata yet), the checkpoint cannot be read or the brokers do not tell the topic's offsets;
// tried again on the next round, as is a reset the ledger refuses to write. Writes only a reset
// (WriteReset); otherwise the normal Persist writes the checkpoint, AfterPersist zeroes the old
// name after it.
bool KafkaOutbox::Impl::LoadClusterCheckpoint() {
  char* id = rd_kafka_clusterid(producer_, /*timeout_ms=*/0);  // the cached id, never waits
  if (id == nullptr) {
    if (core_.last_error().empty()) {  // a broker error says more; this one fills the silence
      SetLastError("waiting for the Kafka cluster id (no broker has told it yet: none answered, "
                   "or a Kafka before 0.10.1, which has none); nothing is published until one "
                   "does");
    }
    return false;
  }
  std::string cluster_id(id);
  rd_kafka_mem_free(producer_, id);
  const std::string name = OutboxClusterCheckpointName(cluster_id, options_.topic);
  core_.SetCheckpointName(name);
  uint64_t mark = 0;
  Status s = core_.Load(&mark);
  if (!s.ok()) {
    ReportError("checkpoint", "reading the outbox checkpoint " + name + ": " + s.ToString());
    return false;
  }
  // The checkpoint of an older naming is taken once as the cluster's, when the cluster's is still
  // 0, so that an upgrade does not publish the whole log again; its name is zeroed once the
  // cluster's is written, so that another cluster reached through the same bootstrap list does
  // not take it too.
  uint64_t adopted = 0;
  bool adopt_zero = false;
  const std::string& old_name = options_.adopt_checkpoint_name;
  if (!old_name.empty() && old_name != name) {
    Position old;
    s = ledger_->GetCheckpoint(old_name, &old);
    if (!s.ok()) {
      ReportError("checkpoint", "reading the outbox checkpoint " + old_name + ": " + s.ToString());
      return false;
    }
    adopt_zero = old.value() != 0;
    if (mark == 0 && old.value() != 0) {
      adopted = std::min(old.value(), ledger_->Head().value());
      mark = adopted;
    }
  }
  // Seen recreated (NoteAcknowledgedOffset): reset whatever its offsets say (the new topic holds
  // what was published after the checkpoint by now).
  const bool recreated = recreated_name_ == name;
  if (mark > 0) {
    bool held = false;
    s = reset_unwritten_ == name || recreated
            ? Status::OK()
            : TopicHeldRecords(names_loaded_.count(name) != 0, &held);
    if (!s.ok()) {
      ReportError("offsets", "asking kafka cluster " + cluster_id + " for the offsets of topic " +
                                 options_.topic + ": " + s.message());
      return false;
    }
    if (!held) {
      // Written before the topic gets a record: a reset kept in memory only left the checkpoint
      // stored when a run published part of the log and ended before its next write (a crash, a
      // degraded ledger), and the next run, finding records in the topic, kept it: a gap.
      s = WriteReset(adopt_zero);
      if (!s.ok()) {
        const std::string error =
            "topic " + options_.topic + " on kafka cluster " + cluster_id +
            (recreated ? " was recreated" : " has never held a record") +
            ": the outbox checkpoint " + name + " (" +
            std::to_string(mark) + (adopted > 0 ? ", taken from " + old_name : "") +
            ") must be reset to 0 before the whole log is published, and writing it failed: " +
            s.ToString() + "; nothing is published until it is written";
        if (reset_unwritten_ != name) spdlog::error("outbox: {}", error);  // once, then retried
        reset_unwritten_ = name;
        reset_error_ = s;
        SetLastError(error);
        return false;
      }
      reset_unwritten_.clear();
      adopt_zero = false;
      spdlog::warn("outbox: topic {} on kafka cluster {} {}: publishing the whole log to it "
                   "from position 1, not after the checkpoint {} ({})",
                   options_.topic, cluster_id,
                   recreated ? "was recreated"
                             : "has never held a record (a new or recreated topic, or a "
                               "cluster rebuilt empty)",
                   mark, name);
      mark = 0;
      adopted = 0;
    }
  }
  if (adopted > 0) {
    spdlog::info("outbox: took the checkpoint {} of {} as {}'s", adopted, old_name, name);
  }
  // Loaded again: what the window knew of the positions after the mark was the old cluster's or
  // topic's (another cluster may have the same mark; delivered out of order on several partitions,
  // its positions past the mark were skipped and the checkpoint moved over them). Nothing is in
  // flight; at worst a position is published twice.
  std::fill(slots_.begin(), slots_.end(), Slot::kPending);
  acked_offsets_.clear();
  recreated_name_.clear();
  // The same checkpoint loaded again (after a producer restart): what was produced before stays
  // so, or a refused record looks like new work on every restart (the stall clock restarted, the
  // state "up" while Kafka refuses everything; retried_total silent, data_omitted_total counting
  // an oversized event again). Another name: nothing was produced for it.
  if (name != loaded_name_) highest_produced_ = 0;
  loaded_name_ = name;
  names_loaded_.insert(name);
  mark_ = mark;
  adopted_ = adopted;
  adopt_zero_pending_ = adopt_zero;
  next_ = mark_ + 1;
  highest_produced_ = std::max(highest_produced_, mark_);
  checkpoint_.store(mark_);
  published_.store(highest_produced_);
  {
    std::lock_guard<std::mutex> lock(cluster_mu_);
    cluster_id_ = cluster_id;
  }
  SetLastError("");
  spdlog::info("outbox: kafka cluster {}: publishing to topic {} after position {} ({})",
               cluster_id, options_.topic, mark_, name);
  return true;
}

// Writes the reset of the cluster's checkpoint to 0, synced, and zeroes the adopted old-named one
// when `zero_adopted` (else the next run could take it again), before anything is published.
Status KafkaOutbox::Impl::WriteReset(bool zero_adopted) {
  if (core_.persisted() != 0) LEDGER_RETURN_IF_ERROR(core_.PersistSynced(0, SteadyMicros()));
  if (zero_adopted) {
    LEDGER_RETURN_IF_ERROR(
        ledger_->PutCheckpoint(options_.adopt_checkpoint_name, Position(0), /*sync=*/true));
  }
  return Status::OK();
}

// Whether the topic ever held a record: false when every partition's high watermark is 0
// (offsets never go back: retention moves only the low one), or at the checkpoint's first load in
// this process when the cluster does not have it. At most kTopicQueryMs in all, on the publisher
// thread; an error when the brokers do not tell.
Status KafkaOutbox::Impl::TopicHeldRecords(bool loaded_before, bool* held) {
  *held = false;
  const int64_t deadline_us = SteadyMicros() + int64_t{kTopicQueryMs} * 1000;
  auto remaining_ms = [&] {
    return static_cast<int>(std::max<int64_t>(1, (deadline_us - SteadyMicros()) / 1000));
  };
  const rd_kafka_metadata_t* metadata = nullptr;
  rd_kafka_resp_err_t err =
      rd_kafka_metadata(producer_, /*all_topics=*/0, topic_, &metadata, remaining_ms());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Status::Unavailable("kafka_unavailable",
                               std::string("metadata: ") + rd_kafka_err2str(err));
  }
  bool found = false;
  rd_kafka_resp_err_t topic_err = RD_KAFKA_RESP_ERR_NO_ERROR;
  std::vector<int32_t> partitions;
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    const rd_kafka_metadata_topic_t& topic = metadata->topics[i];
    if (options_.topic != topic.topic) continue;
    found = true;
    topic_err = topic.err;
    for (int j = 0; j < topic.partition_cnt; ++j) partitions.push_back(topic.partitions[j].id);
  }
  rd_kafka_metadata_destroy(metadata);
  if (found && topic_err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
    if (!loaded_before) return Status::OK();
    // Loaded again (after every producer restart): a broker mid rolling restart answers so for a
    // topic that holds the log, and a reset would publish it all again there. A topic deleted
    // for good takes nothing meanwhile; recreated, its offsets say it never held a record.
    return Status::Unavailable("kafka_unavailable",
                               "the broker does not know topic " + options_.topic +
                                   " (restarting, or the topic deleted): the checkpoint stands "
                                   "until a broker has it");
  }
  if (!found || topic_err != RD_KAFKA_RESP_ERR_NO_ERROR || partitions.empty()) {
    return Status::Unavailable(
        "kafka_unavailable",
        std::string("metadata: ") +
            (found ? rd_kafka_err2str(topic_err) : "the topic is missing from the answer"));
  }
  for (int32_t partition : partitions) {
    int64_t low = 0;
    int64_t high = 0;
    err = rd_kafka_query_watermark_offsets(producer_, options_.topic.c_str(), partition, &low,
                                           &high, remaining_ms());
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Status::Unavailable("kafka_unavailable", "partition " + std::to_string(partition) +
                                                          ": " + rd_kafka_err2str(err));
    }
    if (high > 0) {
      *held = true;
      return Status::OK();
    }
  }
  return Status::OK();
}

// After a Persist: zeroes the adopted old-named checkpoint once the cluster's is written at or
// past what was taken from it (a degraded ledger refuses it: tried again next round, meanwhile
// publishing goes on), and copies the persisted checkpoint under OutboxLastCheckpointName.
void KafkaOutbox::Impl::AfterPersist() {
  if (!options_.checkpoint_per_cluster || !checkpoint_loaded_) return;
  const uint64_t persisted = core_.persisted();
  if (adopt_zero_pending_ && persisted >= adopted_ &&
      ledger_->PutCheckpoint(options_.adopt_checkpoint_name, Position(0), /*sync=*/false).ok()) {
    adopt_zero_pending_ = false;
  }
  if (persisted != last_copied_ &&
      ledger_->PutCheckpoint(OutboxLastCheckpointName(options_.topic), Position(persisted),
                             /*sync=*/false)
          .ok()) {
    last_copied_ = persisted;
  }
}

void KafkaOutbox::Impl::Run() {
  while (true) {
    if (producer_ != nullptr) rd_kafka_poll(producer_, 0);
    if (fatal_ && producer_ != nullptr) RestartProducer();
    int64_t now_us = SteadyMicros();
    WatchClusterId(now_us);
    if (recheck_cluster_ && in_flight_ == 0) UnloadClusterCheckpoint(now_us);
    if (!checkpoint_loaded_ && producer_ != nullptr) checkpoint_loaded_ = LoadClusterCheckpoint();
    MaybeRewind(now_us);
    bool more = ProduceBatch();
    if (MayPersist()) core_.Persist(mark_, now_us, /*force=*/false);
    AfterPersist();
    PublishState(now_us);
    // A damaged log never reaches the stop target: stop once what was produced is answered.
    if (core_.StopDue(mark_) ||
        (core_.stop_requested() && log_damaged_at_ != 0 && in_flight_ == 0)) {
      break;
    }
    if (!more) WaitForWork(now_us);
  }
  // Give what is already acknowledged a last chance to be counted, then drop the rest.
  if (producer_ != nullptr) rd_kafka_poll(producer_, 0);
  DestroyProducer();
  if (core_.persist_on_stop() && MayPersist()) {
    core_.Persist(mark_, SteadyMicros(), /*force=*/true);
    AfterPersist();
  }
  kafka_state_.store(static_cast<int>(KafkaState::kDown));
  core_.set_running(false);
}

void KafkaOutbox::Impl::WaitForWork(int64_t now_us) {
  int64_t wait_us = int64_t{options_.poll_interval_ms} * 1000;
  if (rewind_pending_ && in_flight_ == 0) wait_us = std::min(wait_us, rewind_at_us_ - now_us);
  // No checkpoint write is due while writes wait for a reload (MayPersist): the mark moves on past
  // the reset written, and waiting for that write would not wait at all.
  if (MayPersist()) wait_us = std::min(wait_us, core_.PersistDueInUs(mark_, now_us));
  metrics_.waits.Add();
  core_.WaitForWork(wait_us);
}

// ---- Owner API ---------------------------------------------------------------------------------

Status KafkaOutbox::Impl::Start() {
  if (started_) return Status::Internal("kafka outbox: Start() called twice");
  started_ = true;
  if (disabled()) return Status::OK();
  if (producer_ == nullptr) return Status::Internal("kafka outbox: no producer");
  if (checkpoint_loaded_) {
    spdlog::info("outbox: publishing to {} topic {} after position {}",
                 options_.bootstrap_servers, options_.topic, mark_);
  } else {
    spdlog::info("outbox: publishing to {} topic {} once its cluster id is known",
                 options_.bootstrap_servers, options_.topic);
  }
  core_.StartThread([this] { Run(); });
  return Status::OK();
}

void KafkaOutbox::Impl::Notify() { core_.Notify(); }

Status KafkaOutbox::Impl::Stop(std::chrono::steady_clock::time_point deadline) {
  if (stopped_) return Status::OK();
  stopped_ = true;
  if (disabled()) return Status::OK();
  if (!core_.thread_started()) {
    DestroyProducer();
    return Status::OK();
  }
  const uint64_t target = core_.StopAndJoin(deadline);
  if (!checkpoint_loaded_ && !reset_unwritten_.empty()) {
    return Status::Unavailable(reset_error_.problem(),
                               "kafka outbox stopped before the reset of its checkpoint " +
                                   reset_unwritten_ + " to 0 could be written (" +
                                   reset_error_.message() + "); nothing was published");
  }
  if (!checkpoint_loaded_ && !cluster_id_.empty()) {
    return Status::Unavailable("kafka_unavailable",
                               "kafka outbox stopped while it loaded its checkpoint again (" +
                                   core_.last_error() + "); the one written last stands");
  }
  if (!checkpoint_loaded_) {
    return Status::Unavailable("kafka_unavailable",
                               "kafka outbox stopped before any broker told the cluster id; "
                               "nothing was published (the checkpoint is unchanged)");
  }
  if (mark_ >= target) {
    spdlog::info("outbox: stopped; published through position {}", mark_);
    return Status::OK();
  }
  // Read after the join: the thread set it. Kafka was not what stopped it.
  if (log_damaged_at_ != 0) {
    return Status::Unavailable(
        "log_damaged",
        "kafka outbox stopped with " + std::to_string(target - mark_) +
            " events unpublished: the log is damaged at position " +
            std::to_string(log_damaged_at_) +
            " and nothing from there on is published (`ledgerctl verify` names the damage)");
  }
  return Status::Unavailable(
      "kafka_unavailable",
      "kafka outbox stopped with " + std::to_string(target - mark_) +
          " events not acknowledged (published after the next start, from position " +
          std::to_string(mark_ + 1) + ")");
}

OutboxStatus KafkaOutbox::Impl::GetStatus() const {
  OutboxStatus status;
  status.kafka_state = KafkaStateName(static_cast<KafkaState>(kafka_state_.load()));
  status.checkpoint = Position(checkpoint_.load());
  status.head = ledger_->Head();
  status.published = Position(std::max(published_.load(), status.checkpoint.value()));
  status.checkpoint_persisted = Position(core_.persisted());
  status.lag = status.head.value() > status.checkpoint.value()
                   ? status.head.value() - status.checkpoint.value()
                   : 0;
  status.in_flight = in_flight_count_.load();
  status.running = core_.running();
  status.last_error = core_.last_error();
  {
    std::lock_guard<std::mutex> lock(cluster_mu_);
    status.cluster_id = cluster_id_;
  }
  return status;
}

void KafkaOutbox::Impl::RenderMetrics(std::string* out) const {
  OutboxStatus status = GetStatus();
  auto counter = [out](const char* name, const char* help, uint64_t value) {
    *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" +
            name + " " + std::to_string(value) + "\n";
  };
  auto gauge = [out](const char* name, const char* help, uint64_t value) {
    *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name +
            " " + std::to_string(value) + "\n";
  };
  counter("ledger_outbox_produced_total", "Messages handed to the Kafka producer.",
          metrics_.produced.Value());
  counter("ledger_outbox_delivered_total", "Messages acknowledged by Kafka.",
          metrics_.delivered.Value());
  counter("ledger_outbox_failed_total", "Messages whose delivery failed (re-produced).",
          metrics_.failed.Value());
  counter("ledger_outbox_retried_total", "Messages produced again after a rewind.",
          metrics_.retried.Value());
  counter("ledger_outbox_data_omitted_total",
          "Events published with dataref instead of data (over the message size).",
          metrics_.data_omitted.Value());
  counter("ledger_outbox_rewinds_total", "Rewinds to the checkpoint after failures.",
          metrics_.rewinds.Value());
  counter("ledger_outbox_producer_restarts_total", "Producers recreated after fatal errors.",
          metrics_.producer_restarts.Value());
  counter("ledger_outbox_waits_total", "Waits of the publisher thread for work.",
          metrics_.waits.Value());
  gauge("ledger_outbox_lag_events", "Ledger head minus the outbox checkpoint.", status.lag);
  gauge("ledger_outbox_checkpoint_position", "Highest gap-free delivered position.",
        status.checkpoint.value());
  // "Published" as /readyz says it: acknowledged by Kafka, with nothing missing before it. It
  // was the highest position handed to the producer, which runs ahead while Kafka is down (a
  // dashboard showed 10,000 events published with none delivered).
  gauge("ledger_outbox_published_position",
        "Highest position Kafka acknowledged with every one before it (the checkpoint).",
        status.checkpoint.value());
  gauge("ledger_outbox_produced_position",
        "Highest position handed to the producer (acknowledged or not).",
        status.published.value());
  gauge("ledger_outbox_in_flight_events", "Messages awaiting a delivery report.",
        status.in_flight);
  gauge("ledger_outbox_kafka_up", "1 when Kafka is reachable and accepting messages.",
        status.kafka_state == "up" ? 1 : 0);
  *out += "# HELP ledger_outbox_publish_latency_seconds Append to Kafka acknowledgement.\n";
  RenderHistogram("ledger_outbox_publish_latency_seconds", "",
                  metrics_.publish_latency_seconds.Read(), /*with_type=*/true, out);
}

// ---- KafkaOutbox -------------------------------------------------------------------------------

std::string OutboxClusterCheckpointName(std::string_view cluster_id, std::string_view topic) {
  std::string name = "outbox.kafka/";
  name.append(topic).append("@cluster:").append(cluster_id);
  return name;
}

std::string OutboxLastCheckpointName(std::string_view topic) {
  std::string name = "outbox.kafka/";
  name.append(topic).append("@last-cluster");
  return name;
}

std::string OutboxCheckpointName(std::string_view brokers, std::string_view topic) {
  std::vector<std::string> hosts;
  while (!brokers.empty()) {
    const size_t comma = brokers.find(',');
    std::string_view host = brokers.substr(0, comma);
    brokers = comma == std::string_view::npos ? std::string_view() : brokers.substr(comma + 1);
    while (!host.empty() && (host.front() == ' ' || host.front() == '\t')) host.remove_prefix(1);
    while (!host.empty() && (host.back() == ' ' || host.back() == '\t')) host.remove_suffix(1);
    if (host.empty()) continue;
    std::string lower(host);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    hosts.push_back(std::move(lower));
  }
  std::sort(hosts.begin(), hosts.end());
  hosts.erase(std::unique(hosts.begin(), hosts.end()), hosts.end());
  std::string name = "outbox.kafka/";
  name.append(topic).append("@");
  for (size_t i = 0; i < hosts.size(); ++i) name.append(i == 0 ? "" : ",").append(hosts[i]);
  return name;
}

Status KafkaOutbox::Open(const OutboxOptions& options, Ledger* ledger,
                         std::unique_ptr<KafkaOutbox>* out) {
  if (ledger == nullptr) return InvalidConfig("no ledger");
  LEDGER_RETURN_IF_ERROR(ValidateOptions(options));
  auto impl = std::make_unique<Impl>(options, ledger);
  LEDGER_RETURN_IF_ERROR(impl->Init());
  out->reset(new KafkaOutbox(std::move(impl)));
  return Status::OK();
}

KafkaOutbox::KafkaOutbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KafkaOutbox::~KafkaOutbox() = default;
Status KafkaOutbox::Start() { return impl_->Start(); }
void KafkaOutbox::Notify() { impl_->Notify(); }
Status KafkaOutbox::Stop(std::chrono::steady_clock::time_point deadline) {
  return impl_->Stop(deadline);
}
OutboxStatus KafkaOutbox::GetStatus() const { return impl_->GetStatus(); }
OutboxMetrics& KafkaOutbox::metrics() { return impl_->metrics_; }
const OutboxMetrics& KafkaOutbox::metrics() const { return impl_->metrics_; }
void KafkaOutbox::RenderMetrics(std::string* out) const { impl_->RenderMetrics(out); }

}  // namespace ledger
