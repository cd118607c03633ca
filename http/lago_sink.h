// LagoSink: forwards metered usage from the log to Lago's batch events API, exactly once as Lago
// counts it.
//
// A log consumer like the Kafka outbox ("the log is the outbox"): its own thread reads events
// after its checkpoint `sink.lago` (Ledger::ScanRaw), maps every `usage.recorded.v1` to a Lago
// event and every item of a `usage.batch_recorded.v1` to one Lago event each (UsageToLagoEvents),
// and sends them in order, at most `batch_events_max` (<= 100, Lago's limit) per
// POST /api/v1/events/batch (a batch event's items may span several requests, and a request may
// carry items of several events). Other event types are skipped; the checkpoint still moves past
// them.
//
// Mapping (usage.recorded.v1, or one item of usage.batch_recorded.v1 -> Lago event):
//   transaction_id           = our event id (the CloudEvents id) for usage.recorded.v1;
//                              "<event id>:<item index>" (zero-based, in the event's items order)
//                              for a batch item. Derived from the log alone, so a re-send is the
//                              same Lago event
//   external_subscription_id = external_subscription_id_prefix + user_id. Create each user's
//                              Lago subscription with external_id = the user id (the JWT sub);
//                              a prefix ("ledgerd-" ...) can be configured but must then be used
//                              for every Lago subscription. The mapping never depends on state,
//                              so a re-send after a crash carries the same
//                              (external_subscription_id, transaction_id), Lago's dedupe key.
//   code                     = billable_metric_code (LAGO_BILLABLE_METRIC_CODE, "api_calls")
//   timestamp                = occurred_at in Unix seconds, its milliseconds as a decimal
//                              fraction ("1795341605.25": Lago's precision, read with Float();
//                              exact text from the integer milliseconds, so a re-send is the
//                              same) -- when the usage happened (the item's own occurred_at for
//                              a batch item; the append time when there is none)
//   properties               = {service, quantity} plus the usage's (item's) flat `metadata`
//                              members (service and quantity win over metadata of the same name)
//   (user_id comes from the event's data; a batch item's other fields from the item.)
//
// Checkpoint and delivery. The checkpoint ("last position fully handled") advances only past
// events Lago acknowledged -- a 2xx with Lago's {"events":[...]} answer -- for the whole batch
// that carried them (or that were dead-lettered, below), and past the skipped events around
// them; a usage.batch_recorded.v1 counts as handled only once every one of its items is
// (delivered or dead-lettered). It is written with
// PutCheckpoint(sync=false) after every acknowledged batch (skip-only progress at most every
// checkpoint_interval_ms) and synced by Stop(). After a crash, or when an acknowledgement is
// lost, events after the persisted checkpoint are sent again with the same transaction ids (all
// items of a partly delivered batch event included); Lago counts each transaction_id once:
//   - Lago's ClickHouse event store deduplicates silently (2xx);
//   - its Postgres store (the self-hosted default) refuses the WHOLE batch with 422
//     {"error_details":{"<index>":{"transaction_id":["value_already_exist"]}}} and saves none of
//     it. The sink then counts the named events as delivered ("already present") and re-sends
//     the rest of the batch, so nothing is lost and nothing counted twice.
//
// Failures:
//   network errors, timeouts, 408, 429, 5xx  retried with exponential backoff (doubling from
//       retry_backoff_ms_min to retry_backoff_ms_max, `Retry-After` honoured within that bound)
//       for as long as it takes: a Lago outage only grows the lag. After
//       server_errors_before_split consecutive 5xx answers the batch is halved (down to one
//       event, doubling back after successes): Lago's Postgres store answers 500 when a
//       duplicate is not the last event of a batch (the aborted transaction), and single events
//       get a clean 422 instead. One event alone that keeps getting 5xx may be the cause (an
//       expression of a billable metric that fails on its properties is an unhandled 500 in
//       Lago): after server_errors_before_split such answers the next event is sent alone (a
//       probe); each time Lago handles it -- accepts it, answers value_already_exist (a probe
//       sent before a restart) or refuses it for itself (dead-lettered as below) -- and then
//       fails the first one again counts, and after server_errors_before_split of those, the
//       first one failing for server_error_dead_letter_after_ms since the first of them (an
//       outage before counts for nothing), it is dead-lettered (reason
//       server_error). A probe that gets a 5xx too is suspected as well and the probe moves one
//       event further (several bad items of one usage batch: each is dead-lettered in turn, on
//       its own record); an unmappable one is dead-lettered first. During an outage every probe
//       fails: nothing is dead-lettered; a flapping Lago would have to fail that one event and
//       handle the later ones for the whole time. Answers that say nothing about the events
//       (network errors, 408/429, 401/403/404, a proxy's page) neither count nor reset.
//   401, 403, 404, 405, 1xx/3xx, a 2xx whose body is not Lago's {"events":[...]} (something
//       else at LAGO_API_URL answering any POST: a catch-all route, a captive page), and a 4xx
//       (but 413) whose body is not Lago's JSON error ({"status","error",...}: a proxy's page)
//       retried with backoff as well (state "unauthorized" / "down"): a wrong LAGO_API_KEY or
//       LAGO_API_URL, or a proxy that redirects to https, is fixed by the operator;
//       dead-lettering every event for it would lose the usage. Such a page is stored nowhere
//       (it may echo the request's headers).
//   400, 413, 422 and other 4xx from Lago  a refusal a retry cannot fix. With per-event
//       error_details the named events are dead-lettered and the rest re-sent; without them (or
//       413) the batch is halved until the refused event is alone, then it is dead-lettered. A
//       dead letter is an appended `lago.sink_rejected.v1` (the event, the Lago event sent,
//       Lago's answer; idempotent per transaction_id, so per batch item) plus a counter and a log
//       line; nothing is skipped silently and the sink never stalls on one bad event (nor on
//       ones that Lago always fails, above, once a later event is in the log). A usage event or
//       batch item that cannot be mapped (malformed data) is dead-lettered the same way, with
//       http_status 0 (a batch event whose data cannot be read at all: once, under its event id).
//   a damaged log  every event read is checked as `ledgerctl verify` checks it
//       (DecodeCheckedEvent), and linked at both ends of each read: its first event to the stored
//       event before it, its last to the event after it when the log holds one (an event
//       rewritten and re-sealed verifies on its own; only its successor's link shows it). At the
//       first failure (altered bytes, a missing event, a table block RocksDB refuses) the sink
//       sends what it read before it and stops there until a restart, as the outbox does: state
//       "down", last_error naming the position, nothing dead-lettered. A broken link at N leaves
//       N - 1 in doubt too: it stops before N - 1 (unless it was sent already: a re-sealed event
//       at the head, with no successor yet, cannot be told).
//
// The billable metric. Lago accepts an event under any `code` (it checks only that one is
// there) and bills only those of a billable metric with that code: usage sent under a code Lago
// does not know (a typo in LAGO_BILLABLE_METRIC_CODE, a metric renamed or deleted) is
// acknowledged and never billed, and Lago reports it only later, in an `events.errors` webhook
// (invalid_code; http/lago_webhook_routes.cc counts those). So the sink asks Lago
// (LagoEventsApi::GetBillableMetric) before its first batch and then every
// billable_metric_check_interval_ms until Lago says the metric exists. Lago's own 404
// (billable_metric_not_found) logs an error and marks the metric missing: GetStatus() reports
// state "down" with last_error "billable metric <code> not found in Lago" (over "up" and
// "unknown"; a transport failure's state and error come first), until an answer finds it. Usage
// is still sent meanwhile (Lago keeps the events; a metric created under that code later bills
// the ones in its period). Any other answer says nothing of the metric. Lago's own refusal of the
// question (its JSON 4xx: a 403 for a key permitted to write events and not to read billable
// metrics) is asked again after the interval; a failure (network error, 401, a 403 not Lago's,
// 408/429/5xx, a redirect, a proxy's page) is read as a batch's failure is -- state
// "unauthorized" or "down", last_error, a warning when it begins or changes -- so an idle sink
// with a wrong LAGO_API_KEY or LAGO_API_URL says so before its first batch; it is asked again
// with the sink's backoff (the interval at most), and an answer clears it (a send's failure
// shown is neither replaced by the check's nor cleared by its answer). An answer (the metric
// found or missing, Lago's own refusal of the question) makes an idle sink "up" from "unknown"
// unless another failure is shown. The daemon starts either way.
//
// Lifecycle: Open() reads the checkpoint; Start() starts the thread; Notify() (wired to
// Ledger::AddCommitListener) wakes it after appends, otherwise it polls every poll_interval_ms.
// Stop(deadline) keeps sending what the log held when it was called until it is all delivered,
// a send fails (or is backing off after one), or the deadline passes (an attempt still in
// progress then is cut short: LagoEventsApi::Cancel), then syncs the checkpoint and joins. The
// destructor does no disk I/O.
//
// Thread safety: Start/Stop from the owning thread; Notify, GetStatus, metrics and RenderMetrics
// from any thread. The LagoEventsApi is called from the sink's thread only (Cancel from Stop's).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "events/event.h"
#include "events/metrics.h"
#include "events/status.h"
#include "events/types.h"
#include "http/lago_client.h"

namespace ledger {
class Ledger;
}

namespace ledger::http {

inline constexpr std::string_view kLagoSinkRejectedV1 = "lago.sink_rejected.v1";
inline constexpr std::string_view kLagoSinkRejectedScope = "lago.sink_rejected";
// Lago's LAGO_EVENTS_BATCH_MAX_LENGTH default: the most events one batch request may carry.
inline constexpr size_t kLagoBatchEventsMax = 100;

struct LagoSinkOptions {
  // Name of the consumer checkpoint in the ledger.
  std::string checkpoint_name = "sink.lago";
  // Lago billable metric code every usage event is sent under (a "sum" metric over the
  // `quantity` property, filtered by `service`, bills per service).
  std::string billable_metric_code = "api_calls";
  // Prepended to the user id to form external_subscription_id. Default "" (the user id itself).
  std::string external_subscription_id_prefix;
  // Events per batch request: 1..kLagoBatchEventsMax. Default 100.
  size_t batch_events_max = kLagoBatchEventsMax;
  // Log events read per scan (skipped ones included) before the sink sends what it has.
  size_t scan_events_max = 10'000;
  // Without a Notify(), the sink looks for new events this often. Default 500 ms.
  int poll_interval_ms = 500;
  // Backoff between failed attempts: min, doubled per consecutive failure, max.
  int retry_backoff_ms_min = 200;
  int retry_backoff_ms_max = 30'000;
  // Consecutive 5xx answers after which the batch is halved. Default 3.
  int server_errors_before_split = 3;
  // How long one event must keep failing alone with 5xx while Lago handles the events after it
  // (server_errors_before_split times at least), from the first time it does, before it is
  // dead-lettered. Default 15 min.
  int server_error_dead_letter_after_ms = 15 * 60 * 1000;
  // How often skip-only checkpoint progress is written (acknowledged batches are written at
  // once). A crash re-reads at most that much of the log; nothing is sent twice for it.
  int checkpoint_interval_ms = 1'000;
  // How often the sink asks Lago whether billable_metric_code exists (see the header comment),
  // until Lago says it does; 0 = never ask. Default 1 min.
  int billable_metric_check_interval_ms = 60'000;
};

struct LagoSinkMetrics {
  Counter requests;                // batch requests made (any outcome)
  Counter batches_accepted;        // 2xx answers
  Counter request_failures;        // retried: network errors, timeouts, 408/429/5xx, 401/403/404,
                                   // 3xx, 4xx pages that are not Lago's
  // Lago events: one per usage.recorded.v1, one per item of a usage.batch_recorded.v1.
  Counter events_delivered;        // Lago events in 2xx batches
  Counter events_already_present;  // Lago events Lago already had (value_already_exist)
  Counter events_rejected;         // Lago events dead-lettered (lago.sink_rejected.v1)
  Counter events_skipped;          // non-usage events passed over
  Counter batch_splits;            // batches halved after 5xx/4xx without event details
  Histogram request_seconds{Histogram::LatencySecondsBounds()};
};

struct LagoSinkStatus {
  std::string state;              // "unknown" (nothing sent, and the billable metric check
                                  // not answered yet), "up", "down", "unauthorized", "stopped"
  Position head;                  // the ledger's head when the snapshot was taken
  Position checkpoint;            // last position fully handled (in memory)
  Position checkpoint_persisted;  // as last written to the ledger
  uint64_t lag = 0;               // head - checkpoint
  uint64_t pending = 0;           // Lago events read and not yet acknowledged
  uint64_t batch_events_max = 0;  // the current batch size (smaller after splits)
  bool running = false;
  // Lago answered that billable_metric_code is not one of its billable metrics (see the header
  // comment); state and last_error say so.
  bool billable_metric_missing = false;
  std::string last_error;  // the failure the sink is in, "" once Lago answers again (state up)
};

// Maps one usage.recorded.v1 event (see the header comment). NotFound for other event types;
// InvalidArgument "unmappable" when its data lacks user_id, service or quantity. `*user_id`
// receives the usage's user id (empty when unknown).
Status UsageToLagoEvent(const Event& event, const LagoSinkOptions& options, std::string* json,
                        std::string* user_id);

// One Lago event a usage event of the log maps to.
struct LagoUsageEvent {
  std::string transaction_id;  // the event id, or "<event id>:<item index>" for a batch item
  std::string user_id;         // empty when unknown
  std::string json;            // the Lago event; empty when it cannot be mapped ...
  std::string unmappable;      // ... and why
};

// The Lago events of one log event, in order: one for a usage.recorded.v1, one per item for a
// usage.batch_recorded.v1 (see the header comment). An entry that cannot be mapped has an empty
// `json` (a batch event whose data is unreadable: a single entry under the event id). NotFound
// for other event types.
Status UsageToLagoEvents(const Event& event, const LagoSinkOptions& options,
                         std::vector<LagoUsageEvent>* out);

class LagoSink {
 public:
  // `ledger` and `api` are not owned and must outlive the sink. Bad options answer
  // InvalidArgument "invalid_config".
  static Status Open(const LagoSinkOptions& options, Ledger* ledger, LagoEventsApi* api,
                     std::unique_ptr<LagoSink>* out);
  ~LagoSink();
  LagoSink(const LagoSink&) = delete;
  LagoSink& operator=(const LagoSink&) = delete;

  // Starts the sink's thread. Call at most once.
  Status Start();
  // Wakes the thread (cheap: a mutex and a condition variable).
  void Notify();
  // See the header comment. OK when everything up to the head at the call was handled;
  // Unavailable "lago_unavailable" otherwise (the rest is sent after the next start). Idempotent.
  Status Stop(std::chrono::steady_clock::time_point deadline);
  Status Stop(std::chrono::milliseconds timeout) {
    return Stop(std::chrono::steady_clock::now() + timeout);
  }

  LagoSinkStatus GetStatus() const;
  LagoSinkMetrics& metrics();
  // Appends the sink's metrics in Prometheus text format (ledger_lago_sink_*).
  void RenderMetrics(std::string* out) const;

 private:
  class Impl;
  explicit LagoSink(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ledger::http
