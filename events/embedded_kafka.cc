#include "events/embedded_kafka.h"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace ledger {
namespace {

// The mock cluster's own handle logs things like "no bootstrap.servers configured", which are
// expected here: keep them at debug level.
void LogToSpdlog(const rd_kafka_t*, int level, const char* facility, const char* message) {
  if (level <= 3) {
    spdlog::warn("embedded kafka: {}: {}", facility, message);
  } else {
    spdlog::debug("embedded kafka: {}: {}", facility, message);
  }
}

Status FromKafka(rd_kafka_resp_err_t err, const std::string& what) {
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return Status::OK();
  return Status::Unavailable("kafka_error", what + ": " + rd_kafka_err2str(err));
}

}  // namespace

Status EmbeddedKafka::Open(const EmbeddedKafkaOptions& options,
                           std::unique_ptr<EmbeddedKafka>* out) {
  if (options.brokers < 1 || options.brokers > 16) {
    return Status::InvalidArgument("invalid_config", "embedded kafka: brokers must be 1..16");
  }
  if (options.partitions < 1 || options.partitions > 1024) {
    return Status::InvalidArgument("invalid_config",
                                   "embedded kafka: partitions must be 1..1024");
  }
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, LogToSpdlog);
  // A producer handle that never produces: it only anchors the mock cluster.
  rd_kafka_t* handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
  if (handle == nullptr) {
    rd_kafka_conf_destroy(conf);
    return Status::Internal(std::string("embedded kafka: rd_kafka_new: ") + errstr);
  }
  std::unique_ptr<EmbeddedKafka> kafka(new EmbeddedKafka());
  kafka->handle_ = handle;
  kafka->cluster_ = rd_kafka_mock_cluster_new(handle, options.brokers);
  if (kafka->cluster_ == nullptr) {
    return Status::Internal("embedded kafka: rd_kafka_mock_cluster_new failed");
  }
  kafka->broker_count_ = options.brokers;
  kafka->bootstrap_servers_ = rd_kafka_mock_cluster_bootstraps(kafka->cluster_);
  for (const std::string& topic : options.topics) {
    LEDGER_RETURN_IF_ERROR(kafka->CreateTopic(topic, options.partitions));
  }
  *out = std::move(kafka);
  return Status::OK();
}

EmbeddedKafka::~EmbeddedKafka() {
  if (cluster_ != nullptr) rd_kafka_mock_cluster_destroy(cluster_);
  if (handle_ != nullptr) rd_kafka_destroy(handle_);
}

Status EmbeddedKafka::CreateTopic(const std::string& topic, int partitions) {
  if (topic.empty()) return Status::InvalidArgument("invalid_config", "empty topic name");
  return FromKafka(rd_kafka_mock_topic_create(cluster_, topic.c_str(), partitions,
                                              std::min(3, broker_count_)),
                   "create topic " + topic);
}

Status EmbeddedKafka::SetBrokerDown(int32_t broker_id) {
  return FromKafka(rd_kafka_mock_broker_set_down(cluster_, broker_id), "set broker down");
}

Status EmbeddedKafka::SetBrokerUp(int32_t broker_id) {
  return FromKafka(rd_kafka_mock_broker_set_up(cluster_, broker_id), "set broker up");
}

Status EmbeddedKafka::SetBrokerRtt(int32_t broker_id, int rtt_ms) {
  return FromKafka(rd_kafka_mock_broker_set_rtt(cluster_, broker_id, rtt_ms), "set broker rtt");
}

Status EmbeddedKafka::SetPartitionLeader(const std::string& topic, int32_t partition,
                                         int32_t broker_id) {
  return FromKafka(rd_kafka_mock_partition_set_leader(cluster_, topic.c_str(), partition, broker_id),
                   "set partition leader");
}

void EmbeddedKafka::PushRequestErrors(int16_t api_key, const std::vector<int>& errors) {
  std::vector<rd_kafka_resp_err_t> codes;
  codes.reserve(errors.size());
  for (int e : errors) codes.push_back(static_cast<rd_kafka_resp_err_t>(e));
  rd_kafka_mock_push_request_errors_array(cluster_, api_key, codes.size(), codes.data());
}

Status EmbeddedKafka::PushBrokerRequestErrors(int32_t broker_id, int16_t api_key,
                                              const std::vector<int>& errors, int rtt_ms) {
  // The broker variant only has a va-arg form: push one (error, rtt) tuple at a time.
  for (int e : errors) {
    LEDGER_RETURN_IF_ERROR(FromKafka(
        rd_kafka_mock_broker_push_request_error_rtts(cluster_, broker_id, api_key, 1,
                                                     static_cast<rd_kafka_resp_err_t>(e), rtt_ms),
        "push broker request error"));
  }
  return Status::OK();
}

void EmbeddedKafka::ClearRequestErrors(int16_t api_key) {
  rd_kafka_mock_clear_request_errors(cluster_, api_key);
}

void EmbeddedKafka::SetTopicError(const std::string& topic, int error) {
  rd_kafka_mock_topic_set_error(cluster_, topic.c_str(), static_cast<rd_kafka_resp_err_t>(error));
}

}  // namespace ledger
