// EmbeddedKafka: an in-process Kafka-protocol cluster for `LEDGER_KAFKA_BROKERS=embedded` and for
// tests. It wraps librdkafka's mock cluster (rdkafka_mock.h): real TCP listeners on 127.0.0.1
// speaking the Kafka protocol, so the outbox, kcat and kafkajs connect to it like to any broker:
//
//   kcat -C -b <bootstrap_servers()> -t ledger.events -e
//
// Limits of the mock (librdkafka 2.0.2, not configurable): each partition keeps at most 100,000
// message batches and 5 MiB; older batches are dropped (like retention), so a consumer that
// starts late sees only the newest ~5 MiB per partition. Nothing is persisted: a restart starts
// empty. Retry duplicates are removed only for transactional producers, so consumers must dedupe
// on the CloudEvents `id`. The embedded cluster is for development and CI, not production.
//
// Lifecycle: Open() starts the brokers; the destructor stops them (no disk I/O).
// Thread safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "events/status.h"

struct rd_kafka_s;
struct rd_kafka_mock_cluster_s;

namespace ledger {

struct EmbeddedKafkaOptions {
  // Number of brokers; ids are 1..brokers. Default 1.
  int brokers = 1;
  // Topics created at start, each with `partitions` partitions and replication factor
  // min(3, brokers). Default: the outbox's topic.
  std::vector<std::string> topics = {"ledger.events"};
  int partitions = 3;
};

class EmbeddedKafka {
 public:
  static Status Open(const EmbeddedKafkaOptions& options, std::unique_ptr<EmbeddedKafka>* out);
  ~EmbeddedKafka();
  EmbeddedKafka(const EmbeddedKafka&) = delete;
  EmbeddedKafka& operator=(const EmbeddedKafka&) = delete;

  // "127.0.0.1:port[,127.0.0.1:port...]": the bootstrap servers to give clients.
  const std::string& bootstrap_servers() const { return bootstrap_servers_; }
  int broker_count() const { return broker_count_; }

  Status CreateTopic(const std::string& topic, int partitions);

  // Fault injection. `broker_id` -1 means every broker. A down broker closes its connections
  // and refuses new ones (no leader change).
  Status SetBrokerDown(int32_t broker_id);
  Status SetBrokerUp(int32_t broker_id);
  // Adds `rtt_ms` of delay to every response of the broker.
  Status SetBrokerRtt(int32_t broker_id, int rtt_ms);
  // Makes `broker_id` the leader of one partition of `topic` (clients learn it from metadata).
  Status SetPartitionLeader(const std::string& topic, int32_t partition, int32_t broker_id);
  // The next errors.size() requests of protocol type `api_key` (e.g. 0 = Produce) fail with
  // these librdkafka error codes (rd_kafka_resp_err_t values), in order.
  void PushRequestErrors(int16_t api_key, const std::vector<int>& errors);
  // As above, for one broker only; each entry also delays the response by `rtt_ms`.
  Status PushBrokerRequestErrors(int32_t broker_id, int16_t api_key,
                                 const std::vector<int>& errors, int rtt_ms = 0);
  void ClearRequestErrors(int16_t api_key);
  // Every metadata answer names `topic` with this error (a librdkafka error code) until it is set
  // back to 0, as a broker mid rolling restart answers UNKNOWN_TOPIC_OR_PART. (The mock's Metadata
  // handler takes no pushed request errors.)
  void SetTopicError(const std::string& topic, int error);

  static constexpr int16_t kProduceApiKey = 0;
  static constexpr int16_t kFetchApiKey = 1;
  static constexpr int16_t kMetadataApiKey = 3;
  static constexpr int16_t kInitProducerIdApiKey = 22;

 private:
  EmbeddedKafka() = default;

  rd_kafka_s* handle_ = nullptr;              // owns the mock cluster's bookkeeping
  rd_kafka_mock_cluster_s* cluster_ = nullptr;
  std::string bootstrap_servers_;
  int broker_count_ = 0;
};

}  // namespace ledger
