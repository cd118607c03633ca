// KafkaOutbox: publishes the log to Kafka, one CloudEvent per event, at least once.
//
// The log is the outbox. A publisher thread reads events after its checkpoint (checkpoint_name)
// (Ledger::ScanRaw), turns each into a CloudEvents 1.0 structured-mode JSON document
// (ToCloudEventJson) and produces it with:
//   key = subject (one subject's events land on one partition, in position order),
//   value = the CloudEvent, header `content-type: application/cloudevents+json`,
//   record timestamp = the event's append time (ms),
// on an idempotent producer (enable.idempotence, acks=all, murmur2_random partitioner, so a key
// lands where the Java client and kafkajs would put it).
//
// Checkpoint: advances ONLY from delivery reports, to the highest position P such that every
// position <= P was acknowledged by Kafka ("gap-free"). It is persisted with
// Ledger::PutCheckpoint(sync=false) every `checkpoint_interval_ms` and synced by Stop(). After a
// crash the outbox re-publishes from the persisted checkpoint: consumers see duplicates (dedupe on
// the CloudEvents `id`), never gaps. With checkpoint_per_cluster the checkpoint is the Kafka
// cluster's (its cluster id), loaded on the publisher thread once a broker has told the id.
//
// Size: Kafka refuses a record bigger than the topic's max.message.bytes (1,048,588 by default),
// and an event's data alone may be 1 MiB. An event whose CloudEvent exceeds `message_bytes_max`
// is published without `data`, with the `dataref` extension naming where to read it
// (ToCloudEventJsonWithDataRef), so that one big event cannot stall the outbox. A refusal for size
// anyway (a topic configured smaller) is retried like any failure and names the setting to lower.
//
// Outages: the outbox only reads the log, so a Kafka outage never blocks or fails appends; it
// grows the lag. At most `in_flight_events_max` events (and `in_flight_bytes_max` bytes) are read
// ahead of the checkpoint; librdkafka keeps retrying them (message_timeout_ms = 0: never give
// up). A delivery error or a fatal producer error (the producer is then recreated) rewinds: once
// nothing is in flight, every undelivered position after the checkpoint is produced again, with
// exponential backoff between rewinds. With the default message_timeout_ms = 0 and
// enable.gapless.guarantee, one subject's events reach the topic in position order (counting
// first occurrences); a finite message timeout trades that for bounded buffering.
//
// Lifecycle: Open() validates the options, reads the checkpoint and creates the producer;
// Start() starts the publisher thread; Stop() flushes as far as Kafka allows before a deadline,
// syncs the checkpoint and joins. The destructor does no disk I/O (it stops the thread without
// writing the checkpoint, which only costs duplicates).
//
// Thread safety: Start/Stop from the owning thread; Notify, GetStatus, metrics and
// RenderMetrics from any thread. Kafka callbacks run on the publisher thread (rd_kafka_poll).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "events/limits.h"
#include "events/metrics.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger {

class Ledger;

struct OutboxOptions {
  // Kafka bootstrap servers, "host:port[,host:port]". Empty: publishing is disabled (Start()
  // starts nothing; GetStatus() reports "disabled"; the checkpoint does not move).
  std::string bootstrap_servers;
  // Topic to produce to. Must exist (or the cluster must auto-create it).
  std::string topic = "ledger.events";
  // CloudEvents `source` of every event, e.g. "urn:ledgerd:<node>". Default "/ledgerd".
  std::string source = "/ledgerd";
  // Name of the consumer checkpoint in the ledger ("last published position"), unless
  // checkpoint_per_cluster.
  std::string checkpoint_name = "outbox.kafka";
  // When true (the daemon's setting for a real cluster), the checkpoint is the Kafka cluster's:
  // named OutboxClusterCheckpointName(<the cluster id the brokers report>, topic), whatever
  // bootstrap list reached it. The publisher learns the id from the first metadata answer before
  // it publishes anything; until then (brokers down) it waits, reports "down" with last_error
  // saying so, and never blocks appends. A cluster that reports no id (Kafka before 0.10.1)
  // is waited for for ever. A checkpoint > 0 for a topic that never held a record (it does not
  // exist, or every partition's high watermark is 0: new, recreated, or on a cluster rebuilt
  // empty with the same id) is reset to 0: that topic gets the whole log. The reset (and the
  // zeroing of an adopted old-named checkpoint) is written, synced, before anything is published;
  // while the ledger refuses it (degraded) nothing is published, last_error says why, and it is
  // tried again each round. Until the checkpoint is loaded, GetStatus() shows the one last
  // persisted (OutboxLastCheckpointName). It is loaded again, the topic looked at again, after a
  // producer restart, a delivery error saying the topic or the producer's state is gone, or
  // another cluster id answering (a topic recreated or a cluster rebuilt while ledgerd runs);
  // then a topic the brokers do not know is waited for (a broker restarting), not reset. A record
  // acknowledged at a lower offset than one before on its partition (a topic recreated without
  // any error) resets the checkpoint to 0, written synced at once; the checkpoint is not written
  // again (not at Stop() either) until that reload.
  // Default false: checkpoint_name.
  bool checkpoint_per_cluster = false;
  // With checkpoint_per_cluster: a checkpoint of an older naming (the broker list's,
  // OutboxCheckpointName), taken once as the cluster's when the cluster's is still 0, then zeroed
  // (once the cluster's is written) so that another cluster does not take it too. Empty: none.
  std::string adopt_checkpoint_name;

  // Read-ahead window: events (and their bytes) produced but not yet covered by the checkpoint.
  size_t in_flight_events_max = limits::kOutboxInFlightEventsMax;
  size_t in_flight_bytes_max = limits::kOutboxInFlightBytesMax;
  // Events read from the log per scan (between two polls of the producer).
  size_t scan_events_max = limits::kOutboxScanEventsMax;

  // Largest CloudEvent published whole; bigger ones go out with `dataref` instead of `data`. Keep it
  // below the topic's max.message.bytes minus ~100 bytes of record overhead. Default 1,000,000
  // (librdkafka's batch.size); 1024..16 MiB.
  size_t message_bytes_max = limits::kOutboxMessageBytesMax;

  // librdkafka linger.ms: how long a batch may wait for more messages. Default 5 ms.
  int linger_ms = 5;
  // librdkafka message.timeout.ms. 0 (default) = retry until delivered or Stop(); keeps per-key
  // order through outages. A finite value fails messages after that long; they are re-produced
  // after a rewind, possibly after later events of the same subject.
  int message_timeout_ms = 0;
  // The publisher wakes on Notify() and on delivery reports; without either it still looks for
  // new events every poll_interval_ms. Default 100 ms.
  int poll_interval_ms = 100;
  // How often the checkpoint is written (sync=false) while it moves. Default 1000 ms. A crash
  // re-publishes at most the events delivered during the last interval.
  int checkpoint_interval_ms = 1000;
  // Backoff between rewinds after delivery failures: min, doubled per failed rewind, max.
  int retry_backoff_ms_min = 100;
  int retry_backoff_ms_max = 10000;
  // Kafka is reported "down" when all brokers are unreachable, or when events have been in
  // flight, or re-published after failed deliveries, for this long without any delivery (a
  // message Kafka refuses every time stalls the outbox at it). Default 10000 ms.
  int stall_down_ms = 10000;
  // Extra librdkafka properties (e.g. security.protocol, sasl.*), applied after ours and
  // overriding them. Setting enable.idempotence=false or a non-`all` acks voids the guarantees.
  std::map<std::string, std::string> kafka_config;
  // Tests only: runs on the publisher thread for each acknowledged delivery and may change the
  // offset Kafka reported (the embedded cluster cannot delete and recreate a topic). Empty: none.
  std::function<void(int32_t partition, int64_t* offset)> delivery_offset_for_test;
};

// Counters for /metrics. Monotonic over the outbox's lifetime.
struct OutboxMetrics {
  Counter produced;           // messages handed to the producer (including re-produced ones)
  Counter delivered;          // delivery reports: acknowledged
  Counter failed;             // delivery reports: failed (they are re-produced)
  Counter retried;            // messages produced again after a rewind
  Counter rewinds;            // rewinds after failures
  Counter producer_restarts;  // producers recreated after a fatal error
  Counter data_omitted;       // events published with `dataref` instead of `data` (too large)
  // The publisher thread's waits for work: at most one per poll interval while idle, plus one per
  // wake-up (appends, acknowledgements); a busy loop shows as thousands a second.
  Counter waits;
  // Append time -> Kafka acknowledgement (by the event's append clock).
  Histogram publish_latency_seconds{Histogram::LatencySecondsBounds()};
};

// A consistent-enough view for /readyz (fields are read one by one, without a lock).
struct OutboxStatus {
  // "up" | "down" | "disabled" | "log_damaged" (a stored event failed its check: publishing
  // stopped before it until a restart; last_error names the position)
  std::string kafka_state;
  Position head;               // the ledger's head when the snapshot was taken
  Position published;          // highest position handed to the producer
  Position checkpoint;         // highest gap-free delivered position (in memory); with
                               // checkpoint_per_cluster, until the cluster id is known, the
                               // checkpoint last persisted for the cluster last published to
  Position checkpoint_persisted;  // as last written to the ledger
  uint64_t lag = 0;            // head - checkpoint
  uint64_t in_flight = 0;      // produced, awaiting a delivery report
  bool running = false;        // the publisher thread is running
  std::string last_error;      // last delivery/producer error, empty if none since start
  std::string cluster_id;      // with checkpoint_per_cluster: the Kafka cluster's, once learned
};

// The checkpoint name for publishing to `topic` on the cluster whose id (Kafka's cluster.id, as
// metadata reports it) is `cluster_id`: "outbox.kafka/<topic>@cluster:<cluster_id>". A
// checkpoint says how far one destination has the log: pointed at another cluster or topic,
// publishing there starts from the beginning; the same cluster under another bootstrap list keeps
// its checkpoint. (Clusters formatted with the same id — the apache/kafka image's default
// CLUSTER_ID — share it; a topic there that never held a record still gets the whole log.)
std::string OutboxClusterCheckpointName(std::string_view cluster_id, std::string_view topic);

// A copy of the persisted cluster checkpoint, whichever cluster it is for:
// "outbox.kafka/<topic>@last-cluster". Only shown (GetStatus) until the cluster id is known.
std::string OutboxLastCheckpointName(std::string_view topic);

// The name the checkpoint had when it was kept per bootstrap list, and still has for the embedded
// cluster (`brokers` "embedded"): "outbox.kafka/<topic>@<brokers>", the brokers lowercased,
// trimmed, sorted and deduplicated. Adopted once by the cluster's checkpoint
// (OutboxOptions::adopt_checkpoint_name).
std::string OutboxCheckpointName(std::string_view brokers, std::string_view topic);

// Creates the producer KafkaOutbox::Open would create with `options` (bootstrap_servers left out:
// it connects nowhere) and destroys it at once, so that a configuration librdkafka refuses is
// found before anything else is opened: kInvalidArgument for a property it does not know, a
// value it refuses, or what it takes property by property but not when the producer is created
// (a CA file that is not there; a combination of properties). Set-up errors name the property,
// never its value. Runs no callback of ours; safe from any thread.
Status CheckProducerConfig(const OutboxOptions& options);

class KafkaOutbox {
 public:
  // `ledger` is not owned and must outlive the outbox. Bad options or librdkafka properties
  // answer kInvalidArgument ("invalid_config").
  static Status Open(const OutboxOptions& options, Ledger* ledger,
                     std::unique_ptr<KafkaOutbox>* out);
  ~KafkaOutbox();
  KafkaOutbox(const KafkaOutbox&) = delete;
  KafkaOutbox& operator=(const KafkaOutbox&) = delete;

  // Starts the publisher thread. OK and a no-op when disabled. Call at most once.
  Status Start();

  // Wakes the publisher: call after appends (cheap: a mutex and a condition variable). Optional;
  // without it new events are found within poll_interval_ms.
  void Notify();

  // Publishes what the log holds at the time of the call and waits for its delivery, until
  // `deadline`; then drops what is still queued (at most ~0.2 s more), writes the checkpoint
  // (sync=true) and joins the thread. OK when everything up to the head was delivered; kUnavailable ("kafka_unavailable")
  // otherwise (the rest is published after the next start; the ledger's problem when a checkpoint
  // reset could not be written). Idempotent.
  Status Stop(std::chrono::steady_clock::time_point deadline);
  Status Stop(std::chrono::milliseconds timeout) {
    return Stop(std::chrono::steady_clock::now() + timeout);
  }

  OutboxStatus GetStatus() const;
  OutboxMetrics& metrics();
  const OutboxMetrics& metrics() const;
  // Appends the outbox's metrics in Prometheus text format (ledger_outbox_*).
  void RenderMetrics(std::string* out) const;

 private:
  class Impl;
  explicit KafkaOutbox(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ledger
