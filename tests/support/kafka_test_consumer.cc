#include "tests/support/kafka_test_consumer.h"

#include <librdkafka/rdkafka.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <ctime>
#include <map>
#include <random>
#include <regex>
#include <sstream>

namespace ledger::testing {
namespace {

constexpr char kCloudEventsContentType[] = "application/cloudevents+json";

Status ConsumerError(const std::string& what) {
  return Status::Internal("test consumer: " + what);
}

bool IsLowerHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool IsExtensionName(const std::string& s) {
  if (s.empty() || s.size() > 20) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

// RFC 3339 date-time -> Unix milliseconds (truncated). False when malformed.
bool ParseRfc3339Millis(const std::string& text, int64_t* out_ms) {
  static const std::regex kPattern(
      R"(^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.(\d{1,9}))?([Zz]|([+-])(\d{2}):(\d{2}))$)");
  std::smatch m;
  if (!std::regex_match(text, m, kPattern)) return false;
  struct tm tm = {};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  if (tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60) {
    return false;
  }
  int64_t seconds = static_cast<int64_t>(timegm(&tm));
  if (m[10].matched) {
    int64_t offset = std::stoi(m[11]) * 3600 + std::stoi(m[12]) * 60;
    seconds -= (m[10] == "+" ? offset : -offset);
  }
  int64_t millis = 0;
  if (m[8].matched) {
    std::string frac = m[8].str();
    frac.resize(3, '0');
    millis = std::stoi(frac.substr(0, 3));
  }
  *out_ms = seconds * 1000 + millis;
  return true;
}

std::string GetString(const rapidjson::Value& doc, const char* name, bool* ok) {
  auto it = doc.FindMember(name);
  if (it == doc.MemberEnd() || !it->value.IsString()) {
    *ok = false;
    return "";
  }
  return std::string(it->value.GetString(), it->value.GetStringLength());
}

}  // namespace

// ---- KafkaTestConsumer -------------------------------------------------------------------------

Status KafkaTestConsumer::Open(const std::string& bootstrap_servers, const std::string& topic,
                               std::unique_ptr<KafkaTestConsumer>* out) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  std::random_device rd;
  const std::pair<const char*, std::string> settings[] = {
      {"bootstrap.servers", bootstrap_servers},
      {"group.id", "ledgerd-test-" + std::to_string(rd())},
      {"enable.auto.commit", "false"},
      {"enable.partition.eof", "false"},
      {"auto.offset.reset", "earliest"},
      {"fetch.wait.max.ms", "20"},
      {"reconnect.backoff.max.ms", "500"},
      {"log_level", "3"},
  };
  for (const auto& [key, value] : settings) {
    if (rd_kafka_conf_set(conf, key, value.c_str(), errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return ConsumerError(std::string(key) + ": " + errstr);
    }
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return ConsumerError(errstr);
  }
  std::unique_ptr<KafkaTestConsumer> consumer(new KafkaTestConsumer());
  consumer->consumer_ = rk;
  rd_kafka_poll_set_consumer(rk);

  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* metadata = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &metadata, 10000);
  rd_kafka_topic_destroy(rkt);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return ConsumerError(rd_kafka_err2str(err));
  if (metadata->topic_cnt != 1 || metadata->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_metadata_destroy(metadata);
    return ConsumerError("topic " + topic + " not found");
  }
  const int partitions = metadata->topics[0].partition_cnt;
  rd_kafka_metadata_destroy(metadata);

  rd_kafka_topic_partition_list_t* assignment = rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(assignment, topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  err = rd_kafka_assign(rk, assignment);
  rd_kafka_topic_partition_list_destroy(assignment);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return ConsumerError(rd_kafka_err2str(err));
  *out = std::move(consumer);
  return Status::OK();
}

KafkaTestConsumer::~KafkaTestConsumer() {
  if (consumer_ == nullptr) return;
  rd_kafka_consumer_close(consumer_);
  rd_kafka_destroy(consumer_);
}

void KafkaTestConsumer::Accept(ConsumedRecord record) {
  rapidjson::Document doc;
  doc.Parse(record.value.data(), record.value.size());
  if (!doc.HasParseError() && doc.IsObject()) {
    bool ok = true;
    std::string sequence = GetString(doc, "sequence", &ok);
    if (ok && !sequence.empty() && skip_.count(std::stoull(sequence)) > 0) return;
    std::string id = GetString(doc, "id", &ok);
    if (ok) ids_.insert(id);
  }
  records_.push_back(std::move(record));
}

bool KafkaTestConsumer::ConsumeUntil(
    const std::function<bool(const std::vector<ConsumedRecord>&)>& done,
    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done(records_)) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    rd_kafka_message_t* message = rd_kafka_consumer_poll(consumer_, 50);
    if (message == nullptr) continue;
    if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      rd_kafka_message_destroy(message);
      continue;
    }
    ConsumedRecord record;
    record.partition = message->partition;
    record.offset = message->offset;
    if (message->key != nullptr) {
      record.key.assign(static_cast<const char*>(message->key), message->key_len);
    }
    if (message->payload != nullptr) {
      record.value.assign(static_cast<const char*>(message->payload), message->len);
    }
    rd_kafka_timestamp_type_t timestamp_type;
    record.timestamp_ms = rd_kafka_message_timestamp(message, &timestamp_type);
    rd_kafka_headers_t* headers = nullptr;
    if (rd_kafka_message_headers(message, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      const void* value = nullptr;
      size_t size = 0;
      if (rd_kafka_header_get_last(headers, "content-type", &value, &size) ==
          RD_KAFKA_RESP_ERR_NO_ERROR) {
        record.has_content_type = true;
        if (value != nullptr) record.content_type.assign(static_cast<const char*>(value), size);
      }
    }
    rd_kafka_message_destroy(message);
    Accept(std::move(record));
  }
  return true;
}

bool KafkaTestConsumer::ConsumeDistinct(size_t count, std::chrono::milliseconds timeout) {
  return ConsumeUntil([&](const std::vector<ConsumedRecord>&) { return ids_.size() >= count; },
                      timeout);
}

// ---- Validation --------------------------------------------------------------------------------

std::vector<std::string> ValidateCloudEventRecord(const ConsumedRecord& record,
                                                  std::string_view expected_source,
                                                  CloudEventFields* fields) {
  std::vector<std::string> problems;
  const std::string where =
      "record p" + std::to_string(record.partition) + "@" + std::to_string(record.offset) + ": ";
  auto problem = [&](const std::string& what) { problems.push_back(where + what); };

  if (!record.has_content_type || record.content_type != kCloudEventsContentType) {
    problem("content-type header is '" + record.content_type + "'");
  }
  rapidjson::Document doc;
  doc.Parse(record.value.data(), record.value.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    problem("value is not a JSON object");
    return problems;
  }
  bool ok = true;
  if (GetString(doc, "specversion", &ok) != "1.0") problem("specversion is not \"1.0\"");
  static const char* kRequired[] = {"id", "source", "type", "subject", "time", "datacontenttype",
                                    "sequence", "prevhash", "hash"};
  for (const char* name : kRequired) {
    bool present = true;
    if (GetString(doc, name, &present).empty()) problem(std::string(name) + " missing or empty");
  }
  fields->id = GetString(doc, "id", &ok);
  fields->source = GetString(doc, "source", &ok);
  fields->type = GetString(doc, "type", &ok);
  fields->subject = GetString(doc, "subject", &ok);
  fields->time = GetString(doc, "time", &ok);
  fields->prevhash = GetString(doc, "prevhash", &ok);
  fields->hash = GetString(doc, "hash", &ok);
  if (!expected_source.empty() && fields->source != expected_source) {
    problem("source is '" + fields->source + "'");
  }
  if (GetString(doc, "datacontenttype", &ok) != "application/json") {
    problem("datacontenttype is not application/json");
  }
  const std::string sequence = GetString(doc, "sequence", &ok);
  if (sequence.empty() || sequence.find_first_not_of("0123456789") != std::string::npos) {
    problem("sequence is not a decimal position");
  } else {
    fields->position = std::stoull(sequence);
  }
  if (!IsLowerHex64(fields->prevhash) || !IsLowerHex64(fields->hash)) {
    problem("prevhash/hash are not 64 lowercase hex digits");
  }
  auto data = doc.FindMember("data");
  auto dataref = doc.FindMember("dataref");
  if (dataref != doc.MemberEnd()) {
    // Claim check: an event too large for the topic names where its data is, instead.
    const std::string expected =
        "/api/v1/events?after=" + std::to_string(fields->position - 1) + "&limit=1";
    if (data != doc.MemberEnd()) problem("both data and dataref");
    if (!dataref->value.IsString() || dataref->value.GetString() != expected) {
      problem("dataref is not " + expected);
    } else {
      fields->dataref = dataref->value.GetString();
    }
  } else if (data == doc.MemberEnd() || !data->value.IsObject()) {
    problem("data is not a JSON object");
  } else {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
    data->value.Accept(writer);
    fields->data.assign(buf.GetString(), buf.GetSize());
  }
  static const std::set<std::string> kKnown = {"specversion", "id",      "source",
                                               "type",        "subject", "time",
                                               "datacontenttype", "data", "dataschema",
                                               "dataref"};
  for (const auto& member : doc.GetObject()) {
    std::string name(member.name.GetString(), member.name.GetStringLength());
    if (kKnown.count(name) == 0 && !IsExtensionName(name)) {
      problem("invalid extension attribute name '" + name + "'");
    }
  }
  int64_t time_ms = 0;
  if (!ParseRfc3339Millis(fields->time, &time_ms)) {
    problem("time '" + fields->time + "' is not RFC 3339");
  } else if (record.timestamp_ms != time_ms) {
    problem("record timestamp " + std::to_string(record.timestamp_ms) + " != time " +
            std::to_string(time_ms));
  }
  if (record.key != fields->subject) {
    problem("key '" + record.key + "' != subject '" + fields->subject + "'");
  }
  return problems;
}

// ---- CheckDelivery -----------------------------------------------------------------------------

DeliveryReport CheckDelivery(const std::vector<ConsumedRecord>& records, uint64_t first,
                             uint64_t last, const DeliveryCheckOptions& options) {
  DeliveryReport report;
  std::map<std::string, uint64_t> position_of_id;
  std::map<std::string, const ConsumedRecord*> first_of_id;
  std::map<uint64_t, CloudEventFields> by_position;
  std::map<std::string, uint64_t> last_position_of_key;
  for (const ConsumedRecord& record : records) {
    CloudEventFields fields;
    std::vector<std::string> problems =
        ValidateCloudEventRecord(record, options.expected_source, &fields);
    if (!problems.empty()) {
      report.errors.insert(report.errors.end(), problems.begin(), problems.end());
      continue;
    }
    auto [it, inserted] = position_of_id.emplace(fields.id, fields.position);
    if (!inserted) {
      ++report.duplicates;
      if (it->second != fields.position) {
        report.errors.push_back("id " + fields.id + " seen at positions " +
                                std::to_string(it->second) + " and " +
                                std::to_string(fields.position));
      } else if (const ConsumedRecord* first = first_of_id[fields.id];
                 first->value != record.value || first->key != record.key) {
        // A redelivery is the same event: the same bytes under the same key.
        report.errors.push_back("id " + fields.id + " delivered twice with different content");
      }
      continue;
    }
    first_of_id[fields.id] = &record;
    if (options.check_key_order) {
      uint64_t& previous = last_position_of_key[record.key];
      if (fields.position < previous) {
        report.errors.push_back("key '" + record.key + "': position " +
                                std::to_string(fields.position) + " arrived after " +
                                std::to_string(previous));
      }
      previous = std::max(previous, fields.position);
    }
    if (!by_position.emplace(fields.position, fields).second) {
      report.errors.push_back("position " + std::to_string(fields.position) +
                              " published under two ids");
    }
  }
  report.distinct = position_of_id.size();
  for (uint64_t p = first; p <= last && first > 0; ++p) {
    auto it = by_position.find(p);
    if (it == by_position.end()) {
      report.missing.push_back(p);
      continue;
    }
    auto previous = by_position.find(p - 1);
    if (previous != by_position.end() && previous->second.hash != it->second.prevhash) {
      report.errors.push_back("position " + std::to_string(p) +
                              ": prevhash does not match the hash of position " +
                              std::to_string(p - 1));
    }
  }
  return report;
}

std::string DeliveryReport::Summary() const {
  std::ostringstream out;
  out << "distinct=" << distinct << " duplicates=" << duplicates << " missing=" << missing.size();
  for (size_t i = 0; i < missing.size() && i < 10; ++i) out << (i == 0 ? " [" : ",") << missing[i];
  if (!missing.empty()) out << (missing.size() > 10 ? ",...]" : "]");
  out << " errors=" << errors.size();
  for (size_t i = 0; i < errors.size() && i < 5; ++i) out << "\n  " << errors[i];
  return out.str();
}

std::string ClusterIdOf(const std::string& bootstrap) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), errstr, sizeof(errstr));
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (rk == nullptr) return "";
  char* id = rd_kafka_clusterid(rk, 10000);
  std::string cluster_id = id != nullptr ? id : "";
  if (id != nullptr) rd_kafka_mem_free(rk, id);
  rd_kafka_destroy(rk);
  return cluster_id;
}

}  // namespace ledger::testing
