#include "http/lago_sink.h"

#include <rapidjson/document.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <random>
#include <utility>
#include <vector>

#include "events/ledger.h"
#include "events/log_consumer.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/lago.h"

namespace ledger::http {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// projections/usage.h names them too; the sink only needs the types and the schemas' fields.
constexpr std::string_view kUsageRecordedV1 = "usage.recorded.v1";
constexpr std::string_view kUsageBatchRecordedV1 = "usage.batch_recorded.v1";
// Lago's answer text kept in a dead letter.
constexpr size_t kErrorTextBytesMax = 2048;
// Successful batches in a row after which a halved batch size doubles again.
constexpr int kSuccessesBeforeGrowing = 8;
// A failing send is warned when its failure begins or changes, and then once per this while it
// lasts: a retry every 20 s (the backoff's cap) warned 180 times an hour for one outage.
constexpr int64_t kFailureWarnIntervalUs = 60'000'000;
// Suspects of failing on their own at most (LagoSink::Impl::suspects_). An outage makes every
// probe a suspect, one per backoff: past this many the probes stay on the same event, so what
// the sink holds stays bounded (and a run of more adjacent always-failing events stalls it).
constexpr size_t kSuspectsMax = 1000;

int64_t SteadyMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Jitter() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.5, 1.0)(rng);
}

Status InvalidConfig(const std::string& message) {
  return Status::InvalidArgument("invalid_config", "lago sink: " + message);
}

Status ValidateOptions(const LagoSinkOptions& o) {
  if (o.checkpoint_name.empty()) return InvalidConfig("checkpoint name is empty");
  if (o.billable_metric_code.empty() || o.billable_metric_code.size() > 255) {
    return InvalidConfig("billable metric code must be 1..255 bytes");
  }
  if (o.batch_events_max < 1 || o.batch_events_max > kLagoBatchEventsMax) {
    return InvalidConfig("batch_events_max must be 1..100");
  }
  if (o.scan_events_max < 1) return InvalidConfig("scan_events_max must be > 0");
  if (o.poll_interval_ms < 1 || o.retry_backoff_ms_min < 1 ||
      o.retry_backoff_ms_max < o.retry_backoff_ms_min || o.server_errors_before_split < 1 ||
      o.checkpoint_interval_ms < 0 || o.server_error_dead_letter_after_ms < 0 ||
      o.billable_metric_check_interval_ms < 0) {
    return InvalidConfig("timing options out of range");
  }
  return Status::OK();
}

std::string Compact(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  v.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

// One Lago event read from the log (a usage.recorded.v1, or one item of a
// usage.batch_recorded.v1) and not yet handled.
struct PendingEvent {
  uint64_t position = 0;        // of the log event that carries it
  std::string transaction_id;   // the event id, or "<event id>:<item index>"
  std::string source_type;
  std::string subject;
  std::string user_id;
  std::string lago_event;  // the mapped Lago event; empty = unmappable
  std::string unmappable;  // why it could not be mapped
  // Suspicion of failing on its own (LagoSink::Impl::suspects_): 5xx answers for it alone, in a
  // row; confirmations (a 5xx for it alone right after a handled probe), and when the first
  // came.
  int alone_server_errors = 0;
  int64_t failing_since_us = 0;
  int confirmations = 0;
};

// What Lago said about one event of a refused batch.
struct ItemError {
  bool already_present = false;  // transaction_id: value_already_exist
  std::string text;              // the event's error details, compact JSON
};

// Reads {"error_details":{"<index>":...}} of a 4xx answer. False when the answer names no event
// index below `sent` (a batch-level refusal such as too_many_events).
bool ParseItemErrors(const std::string& body, size_t sent, std::map<size_t, ItemError>* out) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) return false;
  auto details = doc.FindMember("error_details");
  if (details == doc.MemberEnd() || !details->value.IsObject()) return false;
  for (auto it = details->value.MemberBegin(); it != details->value.MemberEnd(); ++it) {
    std::string_view name(it->name.GetString(), it->name.GetStringLength());
    if (name.empty() || name.size() > 6 ||
        !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    size_t index = std::stoul(std::string(name));
    if (index >= sent) return false;
    ItemError error;
    error.text = projections::Truncated(Compact(it->value), kErrorTextBytesMax);
    if (it->value.IsObject()) {
      auto tx = it->value.FindMember("transaction_id");
      if (tx != it->value.MemberEnd() && tx->value.IsArray()) {
        for (const auto& code : tx->value.GetArray()) {
          if (code.IsString() && std::string_view(code.GetString()) == "value_already_exist") {
            error.already_present = true;
          }
        }
      }
    }
    (*out)[index] = std::move(error);
  }
  return !out->empty();
}

// Finds Lago's answer to an accepted batch, {"events":[...]} (EventsController#batch renders the
// events it created under `events`), in a body that may be cut at response_bytes_max: true once
// the top-level object's `events` member opens an array. Anything else -- a catch-all route's
// "OK", a captive page, a relay's {} -- is not Lago acknowledging the events.
class BatchAnswerReader
    : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, BatchAnswerReader> {
 public:
  bool found = false;

  bool Default() {  // a scalar
    events_next_ = false;
    return depth_ > 0;
  }
  bool StartObject() {
    events_next_ = false;
    ++depth_;
    return true;
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    events_next_ = depth_ == 1 && std::string_view(s, n) == "events";
    return true;
  }
  bool EndObject(rapidjson::SizeType) {
    --depth_;
    return true;
  }
  bool StartArray() {
    if (events_next_) {
      found = true;
      return false;  // enough read
    }
    return ++depth_ > 1;  // a top-level array is not Lago's answer
  }
  bool EndArray(rapidjson::SizeType) {
    --depth_;
    return true;
  }

 private:
  int depth_ = 0;
  bool events_next_ = false;  // the value about to be read is the top-level object's `events`
};

// Lago's answer to GET /api/v1/billable_metrics/<code>: {"billable_metric":{...}}.
bool IsBillableMetricAnswer(const std::string& body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) return false;
  auto metric = doc.FindMember("billable_metric");
  return metric != doc.MemberEnd() && metric->value.IsObject();
}

bool IsLagoBatchAnswer(const std::string& body) {
  BatchAnswerReader answer;
  rapidjson::Reader reader;
  rapidjson::MemoryStream stream(body.data(), body.size());
  reader.Parse<rapidjson::kParseIterativeFlag>(stream, answer);
  return answer.found;
}

// What a non-2xx answer says. Lago's own error answers are JSON objects {"status": <code>,
// "error": "...", "code": ..., ...}; a 4xx in another shape comes from something in front of Lago
// (a proxy, a load balancer) and says nothing about the events.
struct RefusalAnswer {
  bool from_lago = false;
  std::string reason;  // Lago's `code`, else "http_<status>"
};

RefusalAnswer ReadRefusal(const LagoAnswer& answer) {
  RefusalAnswer out;
  out.reason = "http_" + std::to_string(answer.http_status);
  rapidjson::Document doc;
  doc.Parse(answer.body.data(), answer.body.size());
  if (doc.HasParseError() || !doc.IsObject()) return out;
  auto status = doc.FindMember("status");
  auto error = doc.FindMember("error");
  out.from_lago = status != doc.MemberEnd() && status->value.IsInt() &&
                  status->value.GetInt() == answer.http_status && error != doc.MemberEnd() &&
                  error->value.IsString();
  auto code = doc.FindMember("code");
  if (code != doc.MemberEnd() && code->value.IsString() && code->value.GetStringLength() > 0 &&
      code->value.GetStringLength() <= 128) {
    out.reason.assign(code->value.GetString(), code->value.GetStringLength());
  }
  return out;
}

// A dead letter: lago.sink_rejected.v1, at most once per transaction_id.
class RecordSinkRejection final : public Command {
 public:
  RecordSinkRejection(const PendingEvent& event, int http_status, std::string reason,
                      std::string error)
      : event_(event),
        http_status_(http_status),
        reason_(std::move(reason)),
        error_(std::move(error)) {
    idempotency_scope = std::string(kLagoSinkRejectedScope);
    idempotency_key = event_.transaction_id;
    request_hash = Sha256(kLagoSinkRejectedScope, event_.transaction_id);
  }

  Status Decide(const DecideContext&, Decision* decision) override {
    rapidjson::StringBuffer buf;
    JsonWriter w(buf);
    w.StartObject();
    w.Key("transaction_id");
    json::String(&w, event_.transaction_id);
    w.Key("source_position");
    w.Uint64(event_.position);
    w.Key("source_type");
    json::String(&w, event_.source_type);
    w.Key("user_id");
    if (event_.user_id.empty()) {
      w.Null();
    } else {
      json::String(&w, event_.user_id);
    }
    w.Key("http_status");
    w.Int(http_status_);
    w.Key("reason");
    json::String(&w, reason_);
    w.Key("error");
    if (error_.empty()) {
      w.Null();
    } else {
      json::String(&w, error_);
    }
    w.Key("lago_event");
    if (event_.lago_event.empty()) {
      w.Null();
    } else {
      w.RawValue(event_.lago_event.data(), event_.lago_event.size(), rapidjson::kObjectType);
    }
    w.EndObject();
    const std::string subject = event_.user_id.empty() ? event_.subject : event_.user_id;
    decision->events.push_back(NewEvent{std::string(kLagoSinkRejectedV1), subject,
                                        std::string(buf.GetString(), buf.GetSize())});
    decision->body = "{}";
    return Status::OK();
  }

 private:
  const PendingEvent& event_;
  int http_status_;
  std::string reason_;
  std::string error_;
};

enum class SinkState : int { kUnknown = 0, kUp = 1, kDown = 2, kUnauthorized = 3, kStopped = 4 };

const char* SinkStateName(SinkState state) {
  switch (state) {
    case SinkState::kUnknown:
      return "unknown";
    case SinkState::kUp:
      return "up";
    case SinkState::kDown:
      return "down";
    case SinkState::kUnauthorized:
      return "unauthorized";
    case SinkState::kStopped:
      return "stopped";
  }
  return "unknown";
}

// The state a failed request leaves the sink in: a refused LAGO_API_KEY says so (the operator's
// to fix), anything else is "down".
SinkState FailedState(int http_status) {
  return http_status == 401 || http_status == 403 ? SinkState::kUnauthorized : SinkState::kDown;
}

// What an answer that is neither the one asked for nor Lago refusing the request says of Lago:
// not reached, the key refused, failing or busy, or something else answering at LAGO_API_URL (a
// redirect, a catch-all route's 2xx, a proxy's page).
struct LagoFailure {
  std::string reason;           // for last_error and the log; "" for Lago's own JSON refusal
  int64_t retry_after_ms = -1;  // `Retry-After`, honoured for 408, 429 and 5xx
};

// Classifies `answer` to a request of `request` (its path, named when a 404 says LAGO_API_URL is
// wrong) whose 2xx answer has the shape `shape`. The batch send and the billable metric check
// both read their failures here, so a wrong LAGO_API_KEY or LAGO_API_URL reads the same in
// /readyz before the first batch as after it. Never the key nor the answer's body (a proxy's page
// may echo the request's headers).
LagoFailure ClassifyFailure(const LagoAnswer& answer, std::string_view request,
                            std::string_view shape) {
  LagoFailure out;
  const int status = answer.http_status;
  const std::string answered = "Lago answered " + std::to_string(status);
  if (status == 0) {
    out.reason = "Lago could not be reached: " + answer.error;
  } else if (status >= 500 || status == 408 || status == 429) {
    out.reason = answered;
    out.retry_after_ms = answer.retry_after_ms;
  } else if (status == 401 || status == 403) {
    out.reason = "Lago refused LAGO_API_KEY (" + std::to_string(status) + ")";
  } else if (status >= 200 && status < 300) {
    out.reason = answered + " without Lago's " + std::string(shape) +
                 " answer (something else at LAGO_API_URL?)";
  } else if (status == 404 || status == 405 || status < 400) {
    out.reason = answered + " for " + std::string(request) +
                 ": check LAGO_API_URL (redirects are not followed)";
  } else if (!ReadRefusal(answer).from_lago) {
    out.reason =
        answered + " without Lago's JSON error (a proxy in front of it?): check LAGO_API_URL";
  }
  return out;
}

}  // namespace

namespace {

std::string_view TextMember(const rapidjson::Value& object, const char* name) {
  auto it = object.FindMember(name);
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return std::string_view(it->value.GetString(), it->value.GetStringLength());
}

// Unix seconds with the milliseconds as a decimal fraction, trailing zeros dropped
// ("1795341605.25", "1795341605"), written from the integer: exact, and the same text on every
// re-send. Lago reads it with Float() and keeps the milliseconds, which place usage just after a
// plan change in the same second under the new subscription.
std::string LagoTimestamp(int64_t ms) {
  const uint64_t magnitude = ms < 0 ? 0 - static_cast<uint64_t>(ms) : static_cast<uint64_t>(ms);
  std::string out = (ms < 0 ? "-" : "") + std::to_string(magnitude / 1000);
  if (uint64_t fraction = magnitude % 1000; fraction != 0) {
    std::string digits = std::to_string(fraction);
    digits.insert(0, 3 - digits.size(), '0');
    while (digits.back() == '0') digits.pop_back();
    out += "." + digits;
  }
  return out;
}

// The Lago event of one piece of usage: `usage` is a usage.recorded.v1's data or a
// usage.batch_recorded.v1 item (same field names). Empty `*json` and `*why` set when it lacks
// service or quantity.
void WriteLagoEvent(std::string_view transaction_id, std::string_view user_id,
                    const rapidjson::Value& usage, int64_t append_time_us,
                    const LagoSinkOptions& options, std::string* json, std::string* why) {
  json->clear();
  const std::string_view service = TextMember(usage, "service");
  auto quantity = usage.FindMember("quantity");
  if (service.empty() || quantity == usage.MemberEnd() || !quantity->value.IsInt64() ||
      quantity->value.GetInt64() < 0) {
    *why = "usage needs a service and a quantity";
    return;
  }
  int64_t timestamp_ms =
      append_time_us >= 0 ? append_time_us / 1000 : (append_time_us - 999) / 1000;
  if (std::optional<int64_t> ms = projections::ParseLagoTimeMs(TextMember(usage, "occurred_at"))) {
    timestamp_ms = *ms;
  }
  const std::string timestamp = LagoTimestamp(timestamp_ms);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("transaction_id");
  json::String(&w, transaction_id);
  w.Key("external_subscription_id");
  json::String(&w, options.external_subscription_id_prefix + std::string(user_id));
  w.Key("code");
  json::String(&w, options.billable_metric_code);
  w.Key("timestamp");
  w.RawValue(timestamp.data(), timestamp.size(), rapidjson::kNumberType);
  w.Key("properties");
  w.StartObject();
  w.Key("service");
  json::String(&w, service);
  w.Key("quantity");
  w.Int64(quantity->value.GetInt64());
  auto metadata = usage.FindMember("metadata");
  if (metadata != usage.MemberEnd() && metadata->value.IsObject()) {
    for (auto it = metadata->value.MemberBegin(); it != metadata->value.MemberEnd(); ++it) {
      std::string_view name(it->name.GetString(), it->name.GetStringLength());
      if (name == "service" || name == "quantity" || it->value.IsObject() || it->value.IsArray()) {
        continue;
      }
      w.Key(it->name.GetString(), it->name.GetStringLength());
      it->value.Accept(w);
    }
  }
  w.EndObject();
  w.EndObject();
  json->assign(buf.GetString(), buf.GetSize());
}

}  // namespace

Status UsageToLagoEvent(const Event& event, const LagoSinkOptions& options, std::string* json,
                        std::string* user_id) {
  if (event.type != kUsageRecordedV1) return Status::NotFound("not a usage.recorded.v1 event");
  user_id->clear();
  rapidjson::Document data;
  Status s = projections::ParseJsonObject(event.data, &data);
  if (!s.ok()) return Status::InvalidArgument("unmappable", "data: " + s.message());
  user_id->assign(TextMember(data, "user_id"));
  std::string why;
  if (!user_id->empty()) {
    WriteLagoEvent(event.id, *user_id, data, event.time_us, options, json, &why);
  }
  if (user_id->empty() || json->empty()) {
    return Status::InvalidArgument("unmappable",
                                   "usage.recorded.v1 needs user_id, service and quantity");
  }
  return Status::OK();
}

Status UsageToLagoEvents(const Event& event, const LagoSinkOptions& options,
                         std::vector<LagoUsageEvent>* out) {
  out->clear();
  if (event.type == kUsageRecordedV1) {
    LagoUsageEvent mapped;
    mapped.transaction_id = event.id;
    Status s = UsageToLagoEvent(event, options, &mapped.json, &mapped.user_id);
    if (!s.ok()) {
      mapped.json.clear();
      mapped.unmappable = s.message();
    }
    out->push_back(std::move(mapped));
    return Status::OK();
  }
  if (event.type != kUsageBatchRecordedV1) return Status::NotFound("not a usage event");
  // A batch event that cannot be read at all is one unmappable entry under the event id (one
  // dead letter); a bad item is its own entry, and the other items are sent.
  auto unmappable = [&](std::string why) {
    LagoUsageEvent whole;
    whole.transaction_id = event.id;
    whole.unmappable = std::move(why);
    out->push_back(std::move(whole));
    return Status::OK();
  };
  rapidjson::Document data;
  Status s = projections::ParseJsonObject(event.data, &data);
  if (!s.ok()) return unmappable("data: " + s.message());
  const std::string_view user_id = TextMember(data, "user_id");
  auto items = data.FindMember("items");
  if (user_id.empty() || items == data.MemberEnd() || !items->value.IsArray()) {
    return unmappable("usage.batch_recorded.v1 needs user_id and items");
  }
  out->reserve(items->value.Size());
  for (rapidjson::SizeType i = 0; i < items->value.Size(); ++i) {
    const rapidjson::Value& item = items->value[i];
    LagoUsageEvent mapped;
    mapped.transaction_id = event.id + ":" + std::to_string(i);
    mapped.user_id.assign(user_id);
    if (item.IsObject()) {
      WriteLagoEvent(mapped.transaction_id, user_id, item, event.time_us, options, &mapped.json,
                     &mapped.unmappable);
    } else {
      mapped.unmappable = "item is not an object";
    }
    if (!mapped.json.empty()) mapped.unmappable.clear();
    out->push_back(std::move(mapped));
  }
  return Status::OK();
}

// Everything behind LagoSink. Fields under "sink state" belong to the sink's thread once Start()
// ran (Init() and Stop()/the destructor touch them only while no thread runs).
class LagoSink::Impl {
 public:
  Impl(const LagoSinkOptions& options, Ledger* ledger, LagoEventsApi* api)
      : options_(options),
        ledger_(ledger),
        api_(api),
        batch_limit_(options.batch_events_max),
        backoff_ms_(options.retry_backoff_ms_min),
        metric_check_backoff_ms_(options.retry_backoff_ms_min),
        core_(ledger, "lago sink", options.checkpoint_name, options.checkpoint_interval_ms) {}

  ~Impl() { core_.StopWithoutPersisting(); }

  Status Init();
  Status Start();
  void Notify();
  Status Stop(std::chrono::steady_clock::time_point deadline);
  LagoSinkStatus GetStatus() const;
  void RenderMetrics(std::string* out) const;

  LagoSinkMetrics metrics_;

 private:
  void Run();
  Status Fill(bool* more);
  void Unqueue(uint64_t from);
  void StopAtDamage(const Status& why, uint64_t at, uint64_t stop_before);
  bool Step(int64_t now_us);
  bool HandleAnswer(const LagoAnswer& answer, size_t first, size_t sent, int64_t now_us);
  bool HandleRefusal(const LagoAnswer& answer, const RefusalAnswer& refusal, size_t first,
                     size_t sent, int64_t now_us);
  LagoAnswer Send(const std::string& body, int64_t* answered_us);
  bool Probe(size_t at, int64_t now_us);
  void CheckBillableMetric(int64_t now_us);
  bool DeadLetterUnmappable(size_t at, int64_t now_us);
  void ProbeHandled(size_t at, int64_t answered_us);
  enum class FrontOutcome { kRetry, kDeadLettered, kFailed };
  FrontOutcome ServerErrorForTheFrontAlone(const LagoAnswer& answer, bool after_probe,
                                           int64_t now_us);
  // Lago answered for the events themselves, not for the front alone: suspicion starts over.
  void ClearSuspicion() {
    for (size_t i = 0; i < std::max<size_t>(suspects_, 1) && i < pending_.size(); ++i) {
      pending_[i].alone_server_errors = pending_[i].confirmations = 0;
      pending_[i].failing_since_us = 0;
    }
    suspects_ = 0;
    probe_next_ = probe_accepted_ = false;
  }
  // The front event was just settled (popped): the suspects after it keep their record.
  void FrontSettled() {
    if (suspects_ > 0) --suspects_;
    probe_next_ = probe_accepted_ = false;
  }
  Status DeadLetter(const PendingEvent& event, int http_status, const std::string& reason,
                    const std::string& error);
  void Delivered(size_t first, size_t count);
  void Split(size_t sent);
  void Fail(const std::string& reason, int http_status, int64_t retry_after_ms, int64_t now_us);
  // The wait before the next attempt after a failure (jittered, `Retry-After` honoured within
  // retry_backoff_ms_max), doubling `*backoff_ms` for the one after.
  int64_t NextBackoffMs(int* backoff_ms, int64_t retry_after_ms) const;
  void AdvanceMark();
  void MaybePersist(int64_t now_us, bool force);
  bool ShouldExit();
  void WaitForWork(int64_t now_us);
  // Any error set here is not the check's (check_error_shown_).
  void SetLastError(std::string error) {
    check_error_shown_ = false;
    core_.SetLastError(std::move(error));
  }
  // Lago answering does not make a damaged log's sink "up": it stops short of the head for good,
  // and the damage is its error again (a failed send of the events before it had replaced it).
  // Up, the last error is cleared: /readyz showed state "up", lag 0 beside the 401 of an hour
  // before ("Lago refused LAGO_API_KEY"), as if it were still refused.
  void SetState(SinkState state) {
    if (state == SinkState::kUp && !warned_failure_.empty()) {
      spdlog::info("lago sink: up again, after {} failures in a row (the last warned: {})",
                   failures_since_warned_, warned_failure_);
      warned_failure_.clear();
      failures_since_warned_ = 0;
    }
    if (damaged_at_ != 0 && state == SinkState::kUp) {
      state = SinkState::kDown;
      SetLastError(damage_error_);
    }
    if (state == SinkState::kUp) SetLastError("");
    state_.store(static_cast<int>(state));
  }

  const LagoSinkOptions options_;
  Ledger* const ledger_;
  LagoEventsApi* const api_;

  // Published for GetStatus() (any thread).
  std::atomic<uint64_t> checkpoint_{0};
  std::atomic<uint64_t> pending_count_{0};
  std::atomic<uint64_t> batch_limit_published_{0};
  std::atomic<int> state_{static_cast<int>(SinkState::kUnknown)};
  // Lago answered that billable_metric_code is no billable metric of it (CheckBillableMetric).
  std::atomic<bool> metric_missing_{false};
  // Stop()'s deadline passed with a request in flight, which it cut (LagoEventsApi::Cancel).
  std::atomic<bool> cut_at_deadline_{false};
  bool started_ = false;      // owner thread only
  bool stopped_ = false;      // owner thread only

  // Sink state.
  std::deque<PendingEvent> pending_;  // Lago events of (mark_, scanned_to_], by position
  uint64_t mark_ = 0;                 // every position <= mark_ is handled (the checkpoint)
  uint64_t scanned_to_ = 0;           // last position read from the log
  uint64_t damaged_at_ = 0;           // the log is damaged there: read no further (StopAtDamage)
  std::string damage_error_;          // what last_error says of it
  size_t batch_limit_;                // events per request now (halved by splits)
  int successes_ = 0;                 // 2xx batches in a row
  int server_errors_ = 0;             // 5xx answers in a row
  // One event Lago answers 5xx for, whatever the batch (an expression of a billable metric that
  // fails on its properties): after server_errors_before_split 5xx for the front event alone, it
  // is a suspect, and the first event after the suspects, pending_[suspects_], is sent alone (a
  // probe). A probe Lago handles -- 2xx; a 4xx naming it: value_already_exist (a probe that
  // reached Lago before a restart) or a refusal (dead-lettered as any refused event) -- followed
  // by another 5xx for the front alone is a confirmation; after server_errors_before_split of
  // them, once the front has failed alone for server_error_dead_letter_after_ms since the first
  // (an outage before that counts for nothing), it is
  // dead-lettered. A probe that gets a 5xx too becomes a suspect (two bad items of one usage
  // batch: the next probe goes one further, and each is dead-lettered in turn, on its own
  // record); an unmappable one is dead-lettered first. An outage fails every probe, so it never
  // confirms anything; a flapping one (a bad backend among good ones) would have to flap the same
  // way for that long. A 2xx for the front, or a batch answered, starts over; answers that say
  // nothing of the events (network, 408/429, 401/403/404, a proxy's page) neither count nor
  // start over.
  size_t suspects_ = 0;          // pending_[0, suspects_) are sent alone, never in a batch
  bool probe_next_ = false;      // the next attempt is a probe (Step)
  bool probe_accepted_ = false;  // the last attempt was a probe Lago handled
  int backoff_ms_;
  int64_t retry_at_us_ = 0;   // no request before this (backoff)
  bool persist_now_ = false;  // an acknowledged batch moved the checkpoint
  bool failed_since_stop_ = false;  // a request failed after the stop request
  // The failure last warned ("" once the sink is up again), when, and the failures in a row (Fail:
  // a request's, or one of the log or the ledger; SetState).
  std::string warned_failure_;
  int64_t warned_at_us_ = 0;
  uint64_t failures_since_warned_ = 0;
  bool metric_found_ = false;       // Lago said billable_metric_code exists: not asked again
  int64_t metric_check_at_us_ = 0;  // the next CheckBillableMetric, unless metric_found_
  int metric_check_backoff_ms_;     // after a failed check, as backoff_ms_ after a failed send
  // The failure the last check met ("" when it answered): logged when it begins or changes.
  std::string metric_check_error_;
  // The check set last_error and the state: the next answer clears them. Another error (a send's,
  // the damage, a checkpoint write's) is neither replaced by a failed check nor cleared by an
  // answer, even with the same words ("Lago answered 503" from both): ShowsCheckError.
  bool check_error_shown_ = false;
  // last_error is still the check's: nothing set another since, through SetLastError (which
  // clears check_error_shown_) or LogConsumerCore (a failed checkpoint write: other words).
  bool ShowsCheckError() const {
    return check_error_shown_ && core_.last_error() == metric_check_error_;
  }

  // The thread, wake-ups, stop requests, the checkpoint and the last error. Last: it joins the
  // thread before the fields above go.
  LogConsumerCore core_;
};

// ---- Setup -------------------------------------------------------------------------------------

Status LagoSink::Impl::Init() {
  LEDGER_RETURN_IF_ERROR(ValidateOptions(options_));
  LEDGER_RETURN_IF_ERROR(core_.Load(&mark_));
  scanned_to_ = mark_;
  checkpoint_.store(mark_);
  batch_limit_published_.store(batch_limit_);
  return Status::OK();
}

// ---- The sink's thread -------------------------------------------------------------------------

// Reads the log after scanned_to_ until pending_ holds a full batch, the head, or
// scan_events_max events were read. `*more`: the log holds events after scanned_to_.
//
// Each event is checked before it is forwarded (DecodeCheckedEvent) and linked to the one before
// it at both ends of a scan, as ReadEvents and the outbox link theirs: the first to the stored
// hash of the event at scanned_to_ (one more read), and the last queued to the event after it,
// when the log holds one (its prev_hash only: it is read again by the next scan). An event
// rewritten and re-sealed verifies on its own and only its successor's link shows it; each scan
// started unlinked, so with event 10 re-sealed the last of a scan (batches of 10) it was sent,
// and with 11 in the same scan the failed read was retried from 11, unlinked, and 10 was sent
// after all. A broken link at N leaves N - 1 and N both in doubt (which one was rewritten, only
// the bytes before can tell): neither is forwarded. Damage stops the sink before it for good
// (StopAtDamage); what was queued and checked before it is still sent.
Status LagoSink::Impl::Fill(bool* more) {
  *more = false;
  if (damaged_at_ != 0) return Status::OK();
  const uint64_t head = ledger_->Head().value();
  // Room for a probe after the suspects, and for the event after it (ServerErrorForTheFrontAlone,
  // HandleAnswer).
  const size_t pending_max = std::max<size_t>({options_.batch_events_max, suspects_ + 2});
  if (pending_.size() >= pending_max) return Status::OK();
  if (scanned_to_ < head) {
    const uint64_t to = std::min<uint64_t>(head, scanned_to_ + options_.scan_events_max);
    // One event past the scan, when the log holds one, for its link only.
    const uint64_t scan_to = std::min<uint64_t>(head, to + 1);
    bool full = false;
    Status damage;
    uint64_t damaged_at = 0;
    uint64_t stop_before = 0;  // the first position not forwarded, with `damage`
    auto damaged = [&](Status why, uint64_t at, uint64_t before) {
      damage = std::move(why);
      damaged_at = at;
      stop_before = before;
    };
    Hash prev{};
    bool have_prev = false;
    if (scanned_to_ > 0) {
      Status read = ledger_->StoredHashAt(Position(scanned_to_), &prev);
      if (!read.ok() && !read.IsCorruption()) return read;
      have_prev = read.ok();
      if (read.IsCorruption()) damaged(read, scanned_to_, scanned_to_);
    }
    std::vector<LagoUsageEvent> mapped;
    uint64_t seen_to = scanned_to_;  // the last position the scan read
    Status s;
    if (damage.ok()) {
      s = ledger_->ScanRaw(
          Position(scanned_to_ + 1), Position(scan_to), [&](Position p, std::string_view stored) {
            if (p.value() != seen_to + 1) {
              damaged(Status::Corruption("the log has no event at position " +
                                         std::to_string(seen_to + 1)),
                      seen_to + 1, seen_to + 1);
              return false;
            }
            seen_to = p.value();
            if (full || p.value() > to) {
              // The event after the last one queued: its link only.
              Status link = have_prev ? CheckEventLink(p, stored, prev) : Status::OK();
              if (!link.ok()) damaged(std::move(link), p.value(), p.value() - 1);
              return false;
            }
            Event event;
            Status checked = DecodeCheckedEvent(p, stored, nullptr, &event);
            if (!checked.ok()) {
              damaged(std::move(checked), p.value(), p.value());
              return false;
            }
            if (have_prev) {
              Status link = CheckEventLink(p, stored, prev);
              if (!link.ok()) {
                damaged(std::move(link), p.value(), p.value() - 1);
                return false;
              }
            }
            prev = event.hash;
            have_prev = true;
            if (UsageToLagoEvents(event, options_, &mapped).ok()) {
              // All of a batch event's items are queued at once: the checkpoint stays before the
              // event until the last of them is delivered or dead-lettered (AdvanceMark).
              for (LagoUsageEvent& m : mapped) {
                PendingEvent pending;
                pending.position = p.value();
                pending.transaction_id = std::move(m.transaction_id);
                pending.source_type = event.type;
                pending.subject = event.subject;
                pending.user_id = std::move(m.user_id);
                pending.lago_event = std::move(m.json);
                pending.unmappable = std::move(m.unmappable);
                pending_.push_back(std::move(pending));
              }
            } else {
              metrics_.events_skipped.Add();
            }
            scanned_to_ = p.value();
            full = pending_.size() >= pending_max;
            return true;  // on to the next event, or to the link of the one after it
          });
    }
    if (damage.ok() && s.IsCorruption()) damaged(s, seen_to + 1, seen_to + 1);
    if (damage.ok() && !s.ok()) {
      // Retried (Fail). The last event queued goes back unless its successor's link was checked:
      // with pending_ full, the next Step would send it before any read.
      if (seen_to == scanned_to_ && scanned_to_ < head) Unqueue(scanned_to_);
      return s;
    }
    const uint64_t expected_to = full ? std::min<uint64_t>(head, scanned_to_ + 1) : scan_to;
    if (damage.ok() && seen_to < expected_to) {
      damaged(Status::Corruption("the log has no event at position " +
                                 std::to_string(seen_to + 1)),
              seen_to + 1, seen_to + 1);
    }
    if (!damage.ok()) {
      StopAtDamage(damage, damaged_at, stop_before);
      return Status::OK();
    }
  }
  *more = scanned_to_ < head;
  AdvanceMark();
  return Status::OK();
}

// Takes the events at `from` and after out of pending_ (none of them was sent: Step runs after
// Fill) and reads on from before them. Never before the checkpoint.
void LagoSink::Impl::Unqueue(uint64_t from) {
  while (!pending_.empty() && pending_.back().position >= from) pending_.pop_back();
  suspects_ = std::min(suspects_, pending_.size());
  if (from <= scanned_to_) scanned_to_ = std::max(mark_, from - 1);
}

// The log is damaged at `at` (altered bytes, a broken link, a missing event, a table block
// RocksDB refuses): nothing from `stop_before` on is forwarded (`at`, or the event before it for
// a broken link), and the log is not read again until a restart (a retry would only read the
// same damage; `ledgerctl verify` names it). What was queued and checked before it is still sent
// and checkpointed, as the outbox publishes up to the event before; the state stays "down",
// last_error naming the position. The failed read used to skip Step, and every retry failed the
// same way: usage before the damage never reached Lago.
void LagoSink::Impl::StopAtDamage(const Status& why, uint64_t at, uint64_t stop_before) {
  // A broken link at the first event after the checkpoint: the event before it is sent already.
  stop_before = std::max(stop_before, mark_ + 1);
  Unqueue(stop_before);
  damaged_at_ = at;
  damage_error_ = "the log is damaged at position " + std::to_string(at) +
                  "; forwarding stopped before position " + std::to_string(stop_before) + ": " +
                  why.message();
  SetLastError(damage_error_);
  SetState(SinkState::kDown);
  spdlog::error("lago sink: {}", damage_error_);
  AdvanceMark();
}

// Sends one batch (or dead-letters one unmappable event). True when the sink should go on at
// once.
bool LagoSink::Impl::Step(int64_t now_us) {
  if (pending_.empty()) return false;
  if (pending_.front().lago_event.empty()) return DeadLetterUnmappable(0, now_us);
  // The probe is the event after the suspects; when none is read (the suspects end the log, as
  // after an outage that made every event a suspect), the last suspect.
  if (probe_next_ && suspects_ > 0 && pending_.size() > 1) {
    return Probe(std::min(suspects_, pending_.size() - 1), now_us);
  }
  // A suspect is sent alone: in a batch it would fail the batch.
  const size_t limit = suspects_ > 0 ? 1 : batch_limit_;
  size_t sent = 0;
  std::string body = "{\"events\":[";
  while (sent < limit && sent < pending_.size() && !pending_[sent].lago_event.empty()) {
    if (sent > 0) body.push_back(',');
    body += pending_[sent].lago_event;
    ++sent;
  }
  body += "]}";
  int64_t answered_us = 0;
  const LagoAnswer answer = Send(body, &answered_us);
  // Backoff and Retry-After count from the answer: a slow 5xx must not use up the wait.
  return HandleAnswer(answer, 0, sent, answered_us);
}

// One batch request, counted and timed; `*answered_us`: when its answer came.
LagoAnswer LagoSink::Impl::Send(const std::string& body, int64_t* answered_us) {
  metrics_.requests.Add();
  const int64_t start_us = SteadyMicros();
  LagoAnswer answer = api_->SendEventsBatch(body);
  *answered_us = SteadyMicros();
  metrics_.request_seconds.Observe(static_cast<double>(*answered_us - start_us) / 1e6);
  return answer;
}

// Dead-letters pending_[at], which cannot be mapped to a Lago event (it is never sent). True when
// done (the sink goes on at once); false when the dead letter could not be recorded.
bool LagoSink::Impl::DeadLetterUnmappable(size_t at, int64_t now_us) {
  const PendingEvent& event = pending_[at];
  Status s = DeadLetter(event, 0, "unmappable", event.unmappable);
  if (!s.ok()) {
    Fail("recording a dead letter: " + s.ToString(), 0, -1, now_us);
    return false;
  }
  spdlog::warn("lago sink: usage event {} at position {} cannot be sent ({}); recorded as {}",
               event.transaction_id, event.position, event.unmappable, kLagoSinkRejectedV1);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(at));
  AdvanceMark();
  persist_now_ = true;
  return true;
}

// Sends pending_[at] alone, the events before it being suspected of failing on their own (or
// dead-letters it when it cannot be mapped: it says nothing about Lago).
bool LagoSink::Impl::Probe(size_t at, int64_t now_us) {
  PendingEvent& probe = pending_[at];
  // probe_next_ stands: the event after it is the probe.
  if (probe.lago_event.empty()) return DeadLetterUnmappable(at, now_us);
  probe_next_ = false;
  probe_accepted_ = false;
  int64_t answered_us = 0;
  const LagoAnswer answer = Send("{\"events\":[" + probe.lago_event + "]}", &answered_us);
  HandleAnswer(answer, at, 1, answered_us);
  return false;
}

// Lago handled the probe pending_[at] (accepted it, had it already, or refused it; it is no longer
// pending): the front goes next, and another 5xx for it confirms.
void LagoSink::Impl::ProbeHandled(size_t at, int64_t answered_us) {
  if (at < suspects_) --suspects_;  // the last suspect, probed
  probe_accepted_ = true;
  probe_next_ = false;
  SetState(SinkState::kUp);
  // The front's backoff stands: its attempts stay spread out over time.
  retry_at_us_ = answered_us + static_cast<int64_t>(backoff_ms_) * 1000;
}

// A 5xx for the front event sent alone.
LagoSink::Impl::FrontOutcome LagoSink::Impl::ServerErrorForTheFrontAlone(const LagoAnswer& answer,
                                                                         bool after_probe,
                                                                         int64_t now_us) {
  PendingEvent& front = pending_.front();
  if (after_probe) {
    // The guard's clock runs from the first time Lago handled another event while failing this
    // one: an outage before that (every event failing, the front and the probes alike) proves
    // nothing against it, however long it lasted.
    if (front.confirmations++ == 0) front.failing_since_us = now_us;
    if (front.confirmations >= options_.server_errors_before_split &&
        now_us - front.failing_since_us >=
            static_cast<int64_t>(options_.server_error_dead_letter_after_ms) * 1000) {
      const RefusalAnswer refusal = ReadRefusal(answer);
      std::string error = "Lago answered " + std::to_string(answer.http_status) +
                          " for this event alone, over and over, while it accepted the events "
                          "after it";
      if (refusal.from_lago) {
        error += ": " + projections::Truncated(answer.body, kErrorTextBytesMax - error.size() - 2);
      }
      Status s = DeadLetter(front, answer.http_status, "server_error", error);
      if (!s.ok()) {
        Fail("recording a dead letter: " + s.ToString(), 0, -1, now_us);
        return FrontOutcome::kFailed;
      }
      spdlog::warn(
          "lago sink: Lago answers {} for usage event {} at position {} alone while it accepts "
          "the events after it; recorded as {}",
          answer.http_status, front.transaction_id, front.position, kLagoSinkRejectedV1);
      pending_.pop_front();
      // A next suspect (failing alone since it was a probe) is tried alone on its own record.
      FrontSettled();
      server_errors_ = 0;
      backoff_ms_ = options_.retry_backoff_ms_min;
      AdvanceMark();
      persist_now_ = true;
      return FrontOutcome::kDeadLettered;
    }
    probe_next_ = true;
    return FrontOutcome::kRetry;
  }
  if (++front.alone_server_errors >= options_.server_errors_before_split) {
    suspects_ = std::max<size_t>(suspects_, 1);
    probe_next_ = true;
  }
  return FrontOutcome::kRetry;
}

// Asks Lago whether billable_metric_code exists (see the header comment). Only Lago's own 404
// marks it missing. A failure -- Lago not reached, the key refused, something else at
// LAGO_API_URL, read as a batch send's failure is (ClassifyFailure) -- is the sink's state and
// last_error, logged at warn when it begins or changes, and asked again after the sink's backoff
// (the interval at most): an idle sink with a wrong LAGO_API_KEY or LAGO_API_URL showed state
// "unknown" and logged nothing above debug until its first batch. A send's failure shown is
// neither replaced by the check's nor cleared by its answer. An answer clears the check's failure
// and is asked again after the interval, as a missing metric is (the operator may create it).
void LagoSink::Impl::CheckBillableMetric(int64_t now_us) {
  const std::string& code = options_.billable_metric_code;
  const LagoAnswer answer = api_->GetBillableMetric(code);
  // Stop() cut it at its deadline: nothing to say of Lago.
  if (answer.http_status == 0 && cut_at_deadline_.load()) return;
  const RefusalAnswer refusal = ReadRefusal(answer);
  const bool found = answer.http_status == 200 && IsBillableMetricAnswer(answer.body);
  const bool missing = answer.http_status == 404 && refusal.from_lago &&
                       refusal.reason == "billable_metric_not_found";
  // Lago's own 403 to the question: a key whose permissions (lago-api's per-resource API key
  // permissions) allow writing events and not reading billable metrics, as a usage sink's key
  // may well be ("read_action_not_allowed_for_billable_metric"). Not a refused key: the batches
  // say whether it is one.
  const bool not_permitted = answer.http_status == 403 && refusal.from_lago;
  const LagoFailure failure =
      found || missing || not_permitted
          ? LagoFailure()
          : ClassifyFailure(answer, "/api/v1/billable_metrics/" + code,
                            "{\"billable_metric\":{...}}");
  if (!failure.reason.empty()) {
    const int64_t delay_ms =
        std::min<int64_t>(NextBackoffMs(&metric_check_backoff_ms_, failure.retry_after_ms),
                          options_.billable_metric_check_interval_ms);
    metric_check_at_us_ = now_us + delay_ms * 1000;
    const bool news = failure.reason != metric_check_error_;
    const bool shows_check_error = ShowsCheckError();
    spdlog::log(news ? spdlog::level::warn : spdlog::level::debug,
                "lago sink: cannot check billable metric {}: {}; asking again in {} ms", code,
                failure.reason, delay_ms);
    metric_check_error_ = failure.reason;
    // Another error shown stands: a send's failure says more of the sink than the check's (the
    // check's answer would clear it while the sends still fail), and a damaged log's stops the
    // sink for good and names the position.
    if (!shows_check_error && !core_.last_error().empty()) return;
    // The error first: whoever sees the new state (GetStatus, /readyz) sees why.
    SetLastError(failure.reason);
    SetState(FailedState(answer.http_status));
    check_error_shown_ = true;
    return;
  }
  metric_check_at_us_ =
      now_us + static_cast<int64_t>(options_.billable_metric_check_interval_ms) * 1000;
  metric_check_backoff_ms_ = options_.retry_backoff_ms_min;
  const bool shows_check_error = ShowsCheckError();
  metric_check_error_.clear();
  check_error_shown_ = false;
  // Lago answered, the key taken: its failure shown is cleared, and a sink with nothing shown yet
  // (idle, nothing sent) is up. It stayed "unknown", ledger_lago_sink_up 0, though Lago had
  // answered. Another's failure shown (a send's, a failed checkpoint write's) stays.
  const bool nothing_shown = state_.load() == static_cast<int>(SinkState::kUnknown) &&
                             core_.last_error().empty();
  if (shows_check_error || nothing_shown) SetState(SinkState::kUp);
  if (found) {
    metric_found_ = true;
    if (metric_missing_.exchange(false)) {
      spdlog::info("lago sink: billable metric {} now exists in Lago", code);
    }
    return;
  }
  if (missing) {
    if (!metric_missing_.exchange(true)) {
      spdlog::error(
          "lago sink: billable metric {} not found in Lago: Lago accepts the usage sent under "
          "it and bills none of it; create the metric in Lago or fix LAGO_BILLABLE_METRIC_CODE "
          "(asked again every {} ms)",
          code, options_.billable_metric_check_interval_ms);
    }
    return;
  }
  // Lago's own refusal of the question (neither the metric nor its absence): asked again later.
  spdlog::debug("lago sink: could not check billable metric {} (HTTP {} {}); asking again in {} ms",
                code, answer.http_status, refusal.reason,
                options_.billable_metric_check_interval_ms);
}

// Lago's answer to `sent` events from pending_[first] (first > 0: a probe). True when the sink
// should go on at once.
bool LagoSink::Impl::HandleAnswer(const LagoAnswer& answer, size_t first, size_t sent,
                                  int64_t now_us) {
  const bool probe = first > 0;
  const int status = answer.http_status;
  // Only Lago's answer acknowledges the events: a 200 from something else at LAGO_API_URL would
  // move the checkpoint past usage Lago never stored.
  if (status >= 200 && status < 300 && IsLagoBatchAnswer(answer.body)) {
    metrics_.batches_accepted.Add();
    metrics_.events_delivered.Add(sent);
    if (probe) {
      Delivered(first, sent);
      ProbeHandled(first, now_us);
      return false;
    }
    ClearSuspicion();
    Delivered(0, sent);
    server_errors_ = 0;
    backoff_ms_ = options_.retry_backoff_ms_min;
    if (++successes_ >= kSuccessesBeforeGrowing && batch_limit_ < options_.batch_events_max) {
      batch_limit_ = std::min(options_.batch_events_max, batch_limit_ * 2);
      batch_limit_published_.store(batch_limit_);
      successes_ = 0;
    }
    SetState(SinkState::kUp);
    return true;
  }
  successes_ = 0;
  bool after_probe = false;
  if (probe) {
    // Unless Lago handles it (below), the probe is sent again after the backoff.
    probe_next_ = true;
  } else {
    after_probe = std::exchange(probe_accepted_, false);
    // Only answers for the front alone keep its record: a batch answered starts over.
    if (sent > 1) ClearSuspicion();
  }
  const LagoFailure failure = ClassifyFailure(answer, "/api/v1/events/batch", "{\"events\":[...]}");
  if (status == 0) {
    // Not Lago's failure: said so, or the shutdown warned "Lago could not be reached".
    Fail(cut_at_deadline_.load() ? "the shutdown's deadline cut the request to Lago short"
                                 : failure.reason,
         0, -1, now_us);
    return false;
  }
  if (status >= 500) {
    if (probe) {
      // The event after the suspects fails alone too (two bad items of one usage batch, or an
      // outage): it is a suspect as well, and the next probe goes one further. Unless no event
      // follows it yet: then it stays the probe (the front, always sent alone, would never be
      // confirmed: an outage must leave the sink something to probe when it ends).
      PendingEvent& event = pending_[first];
      if (first == suspects_ && suspects_ < kSuspectsMax && first + 1 < pending_.size()) {
        event.alone_server_errors = 1;
        ++suspects_;
      }
      Fail(failure.reason + " (sending the event after a failing one)", status,
           failure.retry_after_ms, now_us);
      return false;
    }
    if (++server_errors_ >= options_.server_errors_before_split && sent > 1) {
      Split(sent);
      backoff_ms_ = options_.retry_backoff_ms_min;
    }
    if (sent == 1) {
      const FrontOutcome outcome = ServerErrorForTheFrontAlone(answer, after_probe, now_us);
      if (outcome == FrontOutcome::kDeadLettered) return true;
      if (outcome == FrontOutcome::kFailed) return false;
    }
    Fail(failure.reason, status, failure.retry_after_ms, now_us);
    return false;
  }
  if (!probe) server_errors_ = 0;
  // 408/429, 401/403, 404/405, 1xx/3xx, a 2xx that is not Lago's answer, a proxy's 4xx page: a
  // refusal that is not Lago's is retried like an outage, since dead-lettering on it would drop
  // every event while the proxy is misconfigured. A 413 splits the batch whoever sent it.
  if (status != 413 && !failure.reason.empty()) {
    Fail(failure.reason, status, failure.retry_after_ms, now_us);
    return false;
  }
  const RefusalAnswer refusal = ReadRefusal(answer);
  return HandleRefusal(answer, refusal, first, sent, now_us);
}

// A 4xx that a retry cannot fix: settle the events Lago named, split, or dead-letter. A probe
// (first > 0, sent alone) is always settled, and Lago having handled it confirms the suspects'
// failures as an accepted probe does.
bool LagoSink::Impl::HandleRefusal(const LagoAnswer& answer, const RefusalAnswer& refusal,
                                   size_t first, size_t sent, int64_t now_us) {
  const bool probe = first > 0;
  SetState(SinkState::kUp);  // Lago answered
  // Sent alone, a suspect front is settled below; the suspects after it keep their record.
  const bool front_alone_suspect = !probe && sent == 1 && suspects_ > 0;
  if (!probe) {
    backoff_ms_ = options_.retry_backoff_ms_min;
    if (!front_alone_suspect) ClearSuspicion();
  }
  const std::string& reason = refusal.reason;
  std::map<size_t, ItemError> items;
  if (answer.http_status != 413 && ParseItemErrors(answer.body, sent, &items)) {
    size_t rejected = 0;
    for (const auto& [index, item] : items) {
      if (item.already_present) continue;
      const PendingEvent& event = pending_[first + index];
      Status s = DeadLetter(event, answer.http_status, reason, item.text);
      if (!s.ok()) {
        Fail("recording a dead letter: " + s.ToString(), 0, -1, now_us);
        return false;
      }
      if (rejected++ == 0) {
        spdlog::warn(
            "lago sink: Lago refused usage event {} at position {} ({} {}); recorded "
            "as {}",
            event.transaction_id, event.position, answer.http_status, reason,
            kLagoSinkRejectedV1);
      }
    }
    if (rejected > 1) {
      spdlog::warn("lago sink: {} usage events of one batch refused ({} {})", rejected,
                   answer.http_status, reason);
    }
    for (auto it = items.rbegin(); it != items.rend(); ++it) {
      if (it->second.already_present) metrics_.events_already_present.Add();
      pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(first + it->first));
    }
    // Lago saved none of the batch: the events it did not name are sent again.
    AdvanceMark();
    persist_now_ = true;
    if (probe) {
      ProbeHandled(first, now_us);
      return false;
    }
    if (front_alone_suspect) FrontSettled();
    return true;
  }
  if (sent > 1) {
    Split(sent);
    return true;
  }
  // Only Lago's own answer is kept (a proxy's 413 page may echo the request's headers).
  const PendingEvent& event = pending_[first];
  Status s = DeadLetter(event, answer.http_status, reason,
                        refusal.from_lago
                            ? projections::Truncated(answer.body, kErrorTextBytesMax)
                            : std::string());
  if (!s.ok()) {
    Fail("recording a dead letter: " + s.ToString(), 0, -1, now_us);
    return false;
  }
  spdlog::warn("lago sink: Lago refused usage event {} at position {} ({} {}); recorded as {}",
               event.transaction_id, event.position, answer.http_status, reason,
               kLagoSinkRejectedV1);
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(first));
  AdvanceMark();
  persist_now_ = true;
  if (probe) {
    ProbeHandled(first, now_us);
    return false;
  }
  if (front_alone_suspect) FrontSettled();
  return true;
}

Status LagoSink::Impl::DeadLetter(const PendingEvent& event, int http_status,
                                  const std::string& reason, const std::string& error) {
  RecordSinkRejection command(event, http_status, reason, error);
  CommandResult result = ledger_->Submit(&command);
  if (!result.status.ok()) return result.status;
  metrics_.events_rejected.Add();
  return Status::OK();
}

void LagoSink::Impl::Delivered(size_t first, size_t count) {
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(first),
                 pending_.begin() + static_cast<std::ptrdiff_t>(first + count));
  AdvanceMark();
  persist_now_ = true;
}

void LagoSink::Impl::Split(size_t sent) {
  batch_limit_ = std::max<size_t>(1, sent / 2);
  batch_limit_published_.store(batch_limit_);
  server_errors_ = 0;
  metrics_.batch_splits.Add();
}

void LagoSink::Impl::Fail(const std::string& reason, int http_status, int64_t retry_after_ms,
                          int64_t now_us) {
  metrics_.request_failures.Add();
  const int64_t delay_ms = NextBackoffMs(&backoff_ms_, retry_after_ms);
  retry_at_us_ = now_us + delay_ms * 1000;
  // The error first: whoever sees the new state (GetStatus, /readyz) sees why.
  SetLastError(reason);
  SetState(FailedState(http_status));
  ++failures_since_warned_;
  const bool warn = reason != warned_failure_ || now_us - warned_at_us_ >= kFailureWarnIntervalUs;
  if (warn) {
    warned_failure_ = reason;
    warned_at_us_ = now_us;
  }
  spdlog::log(warn ? spdlog::level::warn : spdlog::level::debug,
              "lago sink: {}; {} events pending after position {}, retrying in {} ms ({} failures "
              "in a row)",
              reason, pending_.size(), mark_, delay_ms, failures_since_warned_);
  if (core_.stop_requested()) failed_since_stop_ = true;
}

int64_t LagoSink::Impl::NextBackoffMs(int* backoff_ms, int64_t retry_after_ms) const {
  int64_t delay_ms = static_cast<int64_t>(static_cast<double>(*backoff_ms) * Jitter());
  if (retry_after_ms >= 0) {
    delay_ms = std::min<int64_t>(std::max(delay_ms, retry_after_ms), options_.retry_backoff_ms_max);
  }
  *backoff_ms = std::min(*backoff_ms * 2, options_.retry_backoff_ms_max);
  return delay_ms;
}

void LagoSink::Impl::AdvanceMark() {
  mark_ = pending_.empty() ? scanned_to_ : pending_.front().position - 1;
  checkpoint_.store(mark_);
  pending_count_.store(pending_.size());
}

void LagoSink::Impl::MaybePersist(int64_t now_us, bool force) {
  if (mark_ == core_.persisted()) return;
  core_.Persist(mark_, now_us, force, /*now=*/persist_now_);
  persist_now_ = false;
}

void LagoSink::Impl::Run() {
  while (true) {
    int64_t now_us = SteadyMicros();
    bool more = false;
    if (!metric_found_ && options_.billable_metric_check_interval_ms > 0 &&
        now_us >= metric_check_at_us_ && !core_.stop_requested()) {
      CheckBillableMetric(now_us);
      now_us = SteadyMicros();
    }
    if (now_us >= retry_at_us_) {
      bool unread = false;
      Status s = Fill(&unread);
      if (s.ok()) {
        more = Step(now_us) || (unread && pending_.empty());
      } else {
        Fail("reading the log: " + s.ToString(), 0, -1, now_us);
      }
    }
    MaybePersist(now_us, /*force=*/false);
    if (ShouldExit()) break;
    if (!more) WaitForWork(now_us);
  }
  if (core_.persist_on_stop()) MaybePersist(SteadyMicros(), /*force=*/true);
  SetState(SinkState::kStopped);
  core_.set_running(false);
}

// Once stopping: done when the log as of Stop() is handled, or Lago is failing (a failure since
// the stop request, or a backoff still running: shutdown does not wait for Lago), or at the
// deadline. A damaged log never reaches the stop target: done once what was queued before the
// damage is handled.
bool LagoSink::Impl::ShouldExit() {
  return core_.StopDue(mark_) ||
         (core_.stop_requested() && (failed_since_stop_ || retry_at_us_ > SteadyMicros() ||
                                     (damaged_at_ != 0 && pending_.empty())));
}

void LagoSink::Impl::WaitForWork(int64_t now_us) {
  int64_t wait_us = int64_t{options_.poll_interval_ms} * 1000;
  if (retry_at_us_ > now_us) wait_us = std::min(wait_us, retry_at_us_ - now_us);
  // A failed billable metric check is asked again after its backoff, not at the next poll.
  if (!metric_found_ && options_.billable_metric_check_interval_ms > 0 &&
      metric_check_at_us_ > now_us) {
    wait_us = std::min(wait_us, metric_check_at_us_ - now_us);
  }
  core_.WaitForWork(std::min(wait_us, core_.PersistDueInUs(mark_, now_us)));
}

// ---- Owner API ---------------------------------------------------------------------------------

Status LagoSink::Impl::Start() {
  if (started_) return Status::Internal("lago sink: Start() called twice");
  started_ = true;
  spdlog::info("lago sink: forwarding usage after position {} (metric code {}, batches of {})",
               mark_, options_.billable_metric_code, options_.batch_events_max);
  core_.StartThread([this] { Run(); });
  return Status::OK();
}

void LagoSink::Impl::Notify() { core_.Notify(); }

Status LagoSink::Impl::Stop(std::chrono::steady_clock::time_point deadline) {
  if (stopped_) return Status::OK();
  stopped_ = true;
  if (!core_.thread_started()) return Status::OK();
  // A request to a Lago that hangs would otherwise run to its read timeout (10 s) past the
  // deadline, eating the time the daemon's shutdown leaves for the outbox.
  const uint64_t target = core_.StopAndJoin(deadline, [this] {
    cut_at_deadline_.store(true);
    api_->Cancel();
  });
  if (mark_ >= target) {
    spdlog::info("lago sink: stopped; handled through position {}", mark_);
    return Status::OK();
  }
  const bool at_deadline =
      cut_at_deadline_.load() || std::chrono::steady_clock::now() >= deadline;
  return Status::Unavailable("lago_unavailable",
                             "lago sink stopped " + std::to_string(target - mark_) +
                                 " positions short of the head" +
                                 (at_deadline ? " at the shutdown's deadline" : "") +
                                 " (sent after the next start, from position " +
                                 std::to_string(mark_ + 1) + ")");
}

LagoSinkStatus LagoSink::Impl::GetStatus() const {
  LagoSinkStatus status;
  status.state = SinkStateName(static_cast<SinkState>(state_.load()));
  status.checkpoint = Position(checkpoint_.load());
  status.head = ledger_->Head();
  status.checkpoint_persisted = Position(core_.persisted());
  status.lag = status.head.value() > status.checkpoint.value()
                   ? status.head.value() - status.checkpoint.value()
                   : 0;
  status.pending = pending_count_.load();
  status.batch_events_max = batch_limit_published_.load();
  status.running = core_.running();
  status.last_error = core_.last_error();
  // A missing billable metric is news over "up" (Lago takes the usage, and bills none of it) and
  // over "unknown"; a transport failure's own state and error stand.
  status.billable_metric_missing = metric_missing_.load();
  if (status.billable_metric_missing && (status.state == "up" || status.state == "unknown")) {
    status.state = SinkStateName(SinkState::kDown);
    status.last_error = "billable metric " + options_.billable_metric_code + " not found in Lago";
  }
  return status;
}

void LagoSink::Impl::RenderMetrics(std::string* out) const {
  LagoSinkStatus status = GetStatus();
  auto counter = [out](const char* name, const char* help, uint64_t value) {
    *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name +
            " " + std::to_string(value) + "\n";
  };
  auto gauge = [out](const char* name, const char* help, uint64_t value) {
    *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name +
            " " + std::to_string(value) + "\n";
  };
  counter("ledger_lago_sink_requests_total", "Batch requests sent to Lago.",
          metrics_.requests.Value());
  counter("ledger_lago_sink_batches_accepted_total", "Batch requests Lago answered with 2xx.",
          metrics_.batches_accepted.Value());
  counter("ledger_lago_sink_request_failures_total",
          "Batch requests retried (network, timeout, 408/429/5xx, 401/403/404).",
          metrics_.request_failures.Value());
  counter("ledger_lago_sink_events_delivered_total",
          "Lago events in acknowledged batches (one per usage.recorded.v1 or batch item).",
          metrics_.events_delivered.Value());
  counter("ledger_lago_sink_events_already_present_total",
          "Lago events Lago already had (value_already_exist on a re-send).",
          metrics_.events_already_present.Value());
  counter("ledger_lago_sink_events_rejected_total",
          "Lago events dead-lettered as lago.sink_rejected.v1.", metrics_.events_rejected.Value());
  counter("ledger_lago_sink_events_skipped_total", "Non-usage events passed over.",
          metrics_.events_skipped.Value());
  counter("ledger_lago_sink_batch_splits_total", "Batches halved after failures.",
          metrics_.batch_splits.Value());
  gauge("ledger_lago_sink_lag_events", "Ledger head minus the Lago sink checkpoint.", status.lag);
  gauge("ledger_lago_sink_checkpoint_position", "Last position the Lago sink fully handled.",
        status.checkpoint.value());
  gauge("ledger_lago_sink_pending_events", "Lago events read and not yet acknowledged.",
        status.pending);
  gauge("ledger_lago_sink_batch_events_max", "Events per batch request now.",
        status.batch_events_max);
  gauge("ledger_lago_sink_up",
        "1 when the sink's state is up: Lago acknowledged the last request, and neither a "
        "missing billable metric (ledger_lago_sink_billable_metric_missing) nor a damaged log "
        "holds it down.",
        status.state == "up" ? 1 : 0);
  gauge("ledger_lago_sink_billable_metric_missing",
        "1 when Lago answered that the billable metric usage is sent under does not exist.",
        status.billable_metric_missing ? 1 : 0);
  *out += "# HELP ledger_lago_sink_request_seconds Latency of one batch request to Lago.\n";
  RenderHistogram("ledger_lago_sink_request_seconds", "", metrics_.request_seconds.Read(),
                  /*with_type=*/true, out);
}

// ---- LagoSink ----------------------------------------------------------------------------------

Status LagoSink::Open(const LagoSinkOptions& options, Ledger* ledger, LagoEventsApi* api,
                      std::unique_ptr<LagoSink>* out) {
  if (ledger == nullptr || api == nullptr) return InvalidConfig("no ledger or no Lago client");
  LEDGER_RETURN_IF_ERROR(ValidateOptions(options));
  auto impl = std::make_unique<Impl>(options, ledger, api);
  LEDGER_RETURN_IF_ERROR(impl->Init());
  out->reset(new LagoSink(std::move(impl)));
  return Status::OK();
}

LagoSink::LagoSink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LagoSink::~LagoSink() = default;
Status LagoSink::Start() { return impl_->Start(); }
void LagoSink::Notify() { impl_->Notify(); }
Status LagoSink::Stop(std::chrono::steady_clock::time_point deadline) {
  return impl_->Stop(deadline);
}
LagoSinkStatus LagoSink::GetStatus() const { return impl_->GetStatus(); }
LagoSinkMetrics& LagoSink::metrics() { return impl_->metrics_; }
void LagoSink::RenderMetrics(std::string* out) const { impl_->RenderMetrics(out); }

}  // namespace ledger::http
