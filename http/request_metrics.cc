#include "http/request_metrics.h"

namespace ledger::http {

void RequestMetrics::Series::Record(int http_status, double seconds) {
  int status_class = http_status / 100;
  if (status_class < 1 || status_class > 5) status_class = 5;
  by_class_[static_cast<size_t>(status_class - 1)].Add();
  latency_seconds_.Observe(seconds);
}

uint64_t RequestMetrics::Series::Count(int status_class) const {
  if (status_class < 1 || status_class > 5) return 0;
  return by_class_[static_cast<size_t>(status_class - 1)].Value();
}

RequestMetrics::Series* RequestMetrics::Register(const std::string& method, const std::string& route) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& series : series_) {
    if (series.method() == method && series.route() == route) return &series;
  }
  return &series_.emplace_back(method, route);
}

std::string PrometheusLabelValue(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

void RequestMetrics::Render(std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  *out += "# HELP ledger_http_requests_total HTTP requests answered, by route and status class.\n";
  *out += "# TYPE ledger_http_requests_total counter\n";
  for (const auto& series : series_) {
    std::string labels = "method=\"" + PrometheusLabelValue(series.method()) + "\",route=\"" +
                         PrometheusLabelValue(series.route()) + "\"";
    for (int c = 1; c <= 5; ++c) {
      *out += "ledger_http_requests_total{" + labels + ",class=\"" + std::to_string(c) + "xx\"} " +
              std::to_string(series.Count(c)) + "\n";
    }
  }
  *out += "# HELP ledger_http_request_duration_seconds HTTP request latency, by route.\n";
  bool first = true;
  for (const auto& series : series_) {
    std::string labels = "method=\"" + PrometheusLabelValue(series.method()) + "\",route=\"" +
                         PrometheusLabelValue(series.route()) + "\"";
    RenderHistogram("ledger_http_request_duration_seconds", labels, series.latency_seconds_.Read(),
                    first, out);
    first = false;
  }
  if (first) *out += "# TYPE ledger_http_request_duration_seconds histogram\n";
  *out += "# HELP ledger_http_connections_accepted_total TCP connections accepted.\n";
  *out += "# TYPE ledger_http_connections_accepted_total counter\n";
  *out += "ledger_http_connections_accepted_total " + std::to_string(connections_accepted.Value()) + "\n";
  *out += "# HELP ledger_http_connections_queued Connections waiting for a worker thread (a request, an answer to finish, a close).\n";
  *out += "# TYPE ledger_http_connections_queued gauge\n";
  *out += "ledger_http_connections_queued " + std::to_string(connections_queued.load()) + "\n";
  *out += "# HELP ledger_http_workers_busy Worker threads serving a connection.\n";
  *out += "# TYPE ledger_http_workers_busy gauge\n";
  *out += "ledger_http_workers_busy " + std::to_string(workers_busy.load()) + "\n";
  *out += "# HELP ledger_http_workers Worker threads of the HTTP server.\n";
  *out += "# TYPE ledger_http_workers gauge\n";
  *out += "ledger_http_workers " + std::to_string(workers.load()) + "\n";
  *out += "# HELP ledger_http_loop_wakeups_total Event loop wake-ups (events, posted answers, "
          "100 ms ticks).\n";
  *out += "# TYPE ledger_http_loop_wakeups_total counter\n";
  *out += "ledger_http_loop_wakeups_total " + std::to_string(loop_wakeups.Value()) + "\n";
}

}  // namespace ledger::http
