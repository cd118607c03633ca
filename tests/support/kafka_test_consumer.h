// Test helpers for Kafka: a plain librdkafka consumer that reads a whole topic from the
// beginning, and the delivery checker every Kafka test (and the e2e tests) use to decide
// "nothing lost": each consumed record must be a valid CloudEvent of ours, and every position of
// a range must have been seen at least once. Duplicates are counted (delivery is at least once),
// never asserted absent.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "events/status.h"

struct rd_kafka_s;

namespace ledger::testing {

struct ConsumedRecord {
  int32_t partition = -1;
  int64_t offset = -1;
  std::string key;
  std::string value;
  int64_t timestamp_ms = -1;
  std::string content_type;  // the `content-type` header, empty when absent
  bool has_content_type = false;
};

// Reads every partition of one topic from the beginning (assign, no consumer group).
class KafkaTestConsumer {
 public:
  static Status Open(const std::string& bootstrap_servers, const std::string& topic,
                     std::unique_ptr<KafkaTestConsumer>* out);
  ~KafkaTestConsumer();

  // Consumes until `done(records())` is true or `timeout` passes; returns whether `done` held.
  bool ConsumeUntil(const std::function<bool(const std::vector<ConsumedRecord>&)>& done,
                    std::chrono::milliseconds timeout);
  // Consumes until `count` distinct CloudEvent ids were seen (or timeout).
  bool ConsumeDistinct(size_t count, std::chrono::milliseconds timeout);

  const std::vector<ConsumedRecord>& records() const { return records_; }
  size_t distinct_ids() const { return ids_.size(); }

  // For negative controls: pretend records whose CloudEvent `sequence` is `position` were never
  // received, as a buggy consumer (or a lossy pipeline) would.
  void SkipPosition(uint64_t position) { skip_.insert(position); }

 private:
  KafkaTestConsumer() = default;
  void Accept(ConsumedRecord record);

  rd_kafka_s* consumer_ = nullptr;
  std::vector<ConsumedRecord> records_;
  std::set<std::string> ids_;
  std::set<uint64_t> skip_;
};

// The fields of one of our CloudEvents, as parsed from a record.
struct CloudEventFields {
  std::string id;
  std::string source;
  std::string type;
  std::string subject;
  std::string time;
  uint64_t position = 0;  // the `sequence` extension
  std::string prevhash;
  std::string hash;
  std::string data;       // compact JSON; empty when the record carries `dataref` instead
  std::string dataref;    // the claim-check extension of an event too large for the topic
};

// Checks one record: structured-mode CloudEvents 1.0 (specversion, id, source, type, subject,
// time as RFC 3339, datacontenttype, data object (or the dataref of GET /api/v1/events for that
// position, instead), sequence/prevhash/hash extensions with valid
// names), key == subject, header content-type == application/cloudevents+json, record timestamp
// == `time` in ms. Returns the problems (empty when valid).
std::vector<std::string> ValidateCloudEventRecord(const ConsumedRecord& record,
                                                  std::string_view expected_source,
                                                  CloudEventFields* fields);

struct DeliveryReport {
  std::vector<uint64_t> missing;    // positions in [first, last] never seen
  uint64_t distinct = 0;            // distinct ids seen
  uint64_t duplicates = 0;          // records whose id was seen before
  std::vector<std::string> errors;  // invalid records, id reused for another position, per-key
                                    // order violations, broken hash links
  bool ok() const { return missing.empty() && errors.empty(); }
  std::string Summary() const;
};

struct DeliveryCheckOptions {
  std::string expected_source;  // empty = any non-empty source
  // Per key, first occurrences must come in increasing position order (records are taken in
  // consumption order, which is offset order within a partition).
  bool check_key_order = true;
};

// Dedupes `records` by CloudEvent id and checks that every position in [first, last] arrived.
DeliveryReport CheckDelivery(const std::vector<ConsumedRecord>& records, uint64_t first,
                             uint64_t last, const DeliveryCheckOptions& options = {});

// The cluster id the brokers at `bootstrap` report (what a per-cluster outbox names its
// checkpoint after); empty when none answers within 10 s.
std::string ClusterIdOf(const std::string& bootstrap);

}  // namespace ledger::testing
