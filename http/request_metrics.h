// HTTP request metrics: per route (method + route name) request counts by status class and a
// latency histogram, plus server-wide connection gauges. Rendered by GET /metrics.
//
// Lifecycle: the HttpServer registers one Series per route before it serves; the daemon owns the
// RequestMetrics object (it outlives the server) so that /metrics can render it.
// Thread safety: Register() and Render() take a mutex; Series::Record() and the gauges are
// lock-free and may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <deque>
#include <mutex>
#include <string>

#include "events/metrics.h"

namespace ledger::http {

class RequestMetrics {
 public:
  class Series {
   public:
    Series(std::string method, std::string route)
        : method_(std::move(method)), route_(std::move(route)) {}
    // Counts one answered request with `http_status`, taking `seconds` end to end (from the
    // start of routing to the handler's return).
    void Record(int http_status, double seconds);
    const std::string& method() const { return method_; }
    const std::string& route() const { return route_; }
    uint64_t Count(int status_class) const;  // status_class 1..5

   private:
    friend class RequestMetrics;
    std::string method_;
    std::string route_;
    std::array<Counter, 5> by_class_;  // 1xx .. 5xx
    Histogram latency_seconds_{Histogram::LatencySecondsBounds()};
  };

  // The series for (method, route), created on first use. The pointer stays valid for the life
  // of this object.
  Series* Register(const std::string& method, const std::string& route);

  // Appends the Prometheus text of every series and gauge to `*out`:
  //   ledger_http_requests_total{method,route,class}           counter
  //   ledger_http_request_duration_seconds{method,route}       histogram
  //   ledger_http_connections_accepted_total                   counter
  //   ledger_http_connections_queued / _workers_busy / _workers gauges
  //   ledger_http_loop_wakeups_total                            counter
  void Render(std::string* out) const;

  // Connection-level figures, maintained by the server's worker pool.
  Counter connections_accepted;
  std::atomic<int64_t> connections_queued{0};
  std::atomic<int64_t> workers_busy{0};
  std::atomic<int64_t> workers{0};
  // Returns of the event loop's epoll_wait: events, posted answers and 100 ms ticks. A loop that
  // spins on a connection it should not watch shows as thousands a second.
  Counter loop_wakeups;

 private:
  mutable std::mutex mu_;
  std::deque<Series> series_;  // GUARDED_BY(mu_); deque: stable addresses
};

// Escapes a Prometheus label value (backslash, double quote, newline).
std::string PrometheusLabelValue(const std::string& value);

}  // namespace ledger::http
