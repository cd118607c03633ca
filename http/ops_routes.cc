// GET /livez, /readyz, /metrics: public operational endpoints.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "http/problem.h"
#include "http/routes.h"

namespace ledger::http {

namespace {

constexpr char kPrometheusContentType[] = "text/plain; version=0.0.4; charset=utf-8";

OutboxStatus CurrentOutbox(const AppContext& context) {
  if (!context.outbox_status) return OutboxStatus{};
  return context.outbox_status();
}

// "last_error": the failure, or null when there was none since start.
void WriteLastError(const std::string& last_error, rapidjson::Writer<rapidjson::StringBuffer>* w) {
  w->Key("last_error");
  if (last_error.empty()) {
    w->Null();
  } else {
    w->String(last_error.c_str(), static_cast<rapidjson::SizeType>(last_error.size()));
  }
}

// "sinks": {"<name>": {enabled, state, checkpoint_position, lag, last_error}} for every log
// consumer besides the outbox (the Lago sink). Like the outbox, reported, not judged.
void WriteSinks(const AppContext& context, rapidjson::Writer<rapidjson::StringBuffer>* w) {
  w->Key("sinks");
  w->StartObject();
  for (const auto& current : context.sink_statuses) {
    if (!current) continue;
    const SinkStatus sink = current();
    w->Key(sink.name.c_str(), static_cast<rapidjson::SizeType>(sink.name.size()));
    w->StartObject();
    w->Key("enabled");
    w->Bool(sink.enabled);
    w->Key("state");
    w->String(sink.state.c_str(), static_cast<rapidjson::SizeType>(sink.state.size()));
    w->Key("checkpoint_position");
    w->Uint64(sink.checkpoint_position);
    w->Key("lag");
    w->Uint64(sink.lag_events);
    WriteLastError(sink.last_error, w);
    w->EndObject();
  }
  w->EndObject();
}

// 200 when the store is open and writable; 503 otherwise. A Kafka outage does not make the
// service unready: appends go on and the outbox catches up (ARCHITECTURE.md), so the outbox is
// reported, not judged.
void Readyz(const AppContext& context, httplib::Response& res) {
  const bool open = context.ledger != nullptr;
  const bool degraded = open && context.ledger->Degraded();
  const bool ready = open && !degraded;
  const OutboxStatus outbox = CurrentOutbox(context);
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("status");
  w.String(ready ? "ready" : "not_ready");
  w.Key("storage");
  w.StartObject();
  w.Key("state");
  w.String(!open ? "closed" : degraded ? "degraded" : "open");
  const Position head = open ? context.ledger->Head() : Position(0);  // one read: body and header
  w.Key("head_position");
  w.Uint64(head.value());
  w.Key("queue_depth");
  w.Uint64(open ? context.ledger->QueueDepth() : 0);
  w.EndObject();
  w.Key("outbox");
  w.StartObject();
  w.Key("enabled");
  w.Bool(outbox.enabled);
  w.Key("state");
  w.String(outbox.state);
  w.Key("published_position");
  w.Uint64(outbox.published_position);
  w.Key("lag");
  w.Uint64(outbox.lag_events);
  WriteLastError(outbox.last_error, &w);
  w.EndObject();
  WriteSinks(context, &w);
  w.EndObject();
  std::string body(buf.GetString(), buf.GetSize());
  if (open) {
    WriteJsonAt(ready ? 200 : 503, std::move(body), head, &res);
  } else {
    WriteJson(503, std::move(body), &res);
  }
}

void Gauge(const char* name, const char* help, double value, std::string* out) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.17g", value);
  *out += std::string(name) + " " + buf + "\n";
}

void CounterLine(const char* name, const char* help, uint64_t value, std::string* out) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
  *out += std::string(name) + " " + std::to_string(value) + "\n";
}

// A counter kept in microseconds, rendered in seconds.
void CounterSecondsLine(const char* name, const char* help, uint64_t micros, std::string* out) {
  *out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6f", static_cast<double>(micros) / 1e6);
  *out += std::string(name) + " " + buf + "\n";
}

void HistogramBlock(const char* name, const char* help, const Histogram& histogram, std::string* out) {
  *out += std::string("# HELP ") + name + " " + help + "\n";
  RenderHistogram(name, "", histogram.Read(), true, out);
}

// A running outbox renders its own families (one of the metrics renderers: lag, positions,
// counters); a second TYPE line for one of them makes Prometheus parsers refuse the page.
void RenderOutboxMetrics(const OutboxStatus& outbox, std::string* out) {
  Gauge("ledger_outbox_enabled", "1 when the Kafka outbox publishes.", outbox.enabled ? 1 : 0, out);
}

void Metrics(const AppContext& context, httplib::Response& res) {
  std::string text;
  text.reserve(16 * 1024);
  if (context.request_metrics != nullptr) context.request_metrics->Render(&text);
  if (context.ledger != nullptr) RenderLedgerMetrics(*context.ledger, &text);
  RenderOutboxMetrics(CurrentOutbox(context), &text);
  for (const auto& render : context.metrics_renderers) {
    if (render) render(&text);
  }
  res.status = 200;
  res.set_content(std::move(text), kPrometheusContentType);
}

}  // namespace

void RenderLedgerMetrics(Ledger& ledger, std::string* out) {
  LedgerMetrics& m = ledger.metrics();
  Gauge("ledger_head_position", "Position of the last committed event.",
        static_cast<double>(ledger.Head().value()), out);
  Gauge("ledger_degraded", "1 when a failed write made the store read-only.", ledger.Degraded() ? 1 : 0, out);
  Gauge("ledger_write_queue_depth", "Commands waiting for the writer.",
        static_cast<double>(ledger.QueueDepth()), out);
  CounterLine("ledger_commands_submitted_total", "Commands submitted to the writer.",
              m.commands_submitted.Value(), out);
  CounterLine("ledger_commands_rejected_total", "Commands whose decision was an error.",
              m.commands_rejected.Value(), out);
  CounterLine("ledger_commands_busy_total", "Commands refused because the write queue was full.",
              m.commands_busy.Value(), out);
  CounterLine("ledger_idempotent_replays_total", "Commands answered from an idempotency record.",
              m.idempotent_replays.Value(), out);
  CounterLine("ledger_events_appended_total", "Events appended to the log.", m.events_appended.Value(), out);
  CounterLine("ledger_groups_committed_total", "Group commits (one WriteBatch each).",
              m.groups_committed.Value(), out);
  CounterLine("ledger_groups_pipelined_total",
              "Groups decided while an earlier group was still being written.",
              m.groups_pipelined.Value(), out);
  CounterLine("ledger_wal_syncs_total",
              "WAL fsyncs; one makes every group written before it durable.", m.syncs.Value(),
              out);
  CounterLine("ledger_wal_syncs_paced_total",
              "WAL fsyncs that waited out the least interval between syncs (--sync-interval-min-us).",
              m.syncs_paced.Value(), out);
  CounterLine("ledger_wal_syncs_beside_write_total",
              "WAL fsyncs started while the newest group they cover was still being written to "
              "the memtables.",
              m.syncs_beside_write.Value(), out);
  CounterLine("ledger_write_failures_total", "Group writes that failed.", m.write_failures.Value(), out);
  CounterLine("ledger_table_bytes_flushed_total",
              "Bytes of table files written by memtable flushes (and WAL recovery).",
              m.table_bytes_flushed.Value(), out);
  CounterLine("ledger_table_bytes_compacted_total",
              "Bytes of table files written by compactions (rows rewritten).",
              m.table_bytes_compacted.Value(), out);
  CounterLine("ledger_event_table_bytes_compacted_total",
              "Of those, the events family's (0: its files are only moved, never rewritten).",
              m.event_table_bytes_compacted.Value(), out);
  CounterSecondsLine("ledger_background_write_wait_seconds_total",
                     "Time RocksDB's flushes and compactions waited to keep to a multiple of the "
                     "ledger's write rate.",
                     m.background_write_waited_us.Value(), out);
  HistogramBlock("ledger_append_group_commands", "Commands per group commit.", m.group_commands, out);
  HistogramBlock("ledger_append_group_events", "Events per group commit.", m.group_events, out);
  HistogramBlock("ledger_write_seconds", "Latency of the synced WriteBatch of a group (write + fsync).",
                 m.write_seconds, out);
  HistogramBlock("ledger_wal_sync_seconds", "Latency of one WAL fsync (SyncWAL).", m.sync_seconds,
                 out);
}

void AddOpsRoutes(const AppContext& context, RouteTable* routes) {
  routes->Add("GET", "/livez", "/livez", Policy::kPublic,
              [](const httplib::Request&, httplib::Response& res, const Identity&) {
                WriteJson(200, R"({"status":"ok"})", &res);
              },
              Threading::kEventLoop);
  routes->Add("GET", "/readyz", "/readyz", Policy::kPublic,
              [context](const httplib::Request&, httplib::Response& res, const Identity&) {
                Readyz(context, res);
              });
  routes->Add("GET", "/metrics", "/metrics", Policy::kPublic,
              [context](const httplib::Request&, httplib::Response& res, const Identity&) {
                Metrics(context, res);
              });
}

}  // namespace ledger::http
