#include "tools/bench_http.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

namespace ledger::tools {

namespace {

using SteadyClock = std::chrono::steady_clock;

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t index = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}

struct WorkerTotals {
  std::vector<double> latencies_ms;
  uint64_t ok = 0, refused = 0, transport_errors = 0;
};

}  // namespace

Status RunHttpBench(const HttpBenchOptions& o, HttpBenchResult* result) {
  *result = HttpBenchResult();
  if (o.url.empty() || o.connections < 1 || o.connections > 4096 || o.seconds <= 0 ||
      o.rate < 0 || o.warmup_seconds < 0) {
    return Status::InvalidArgument("bad_bench_options",
                                   "need --url, 1..4096 connections, seconds > 0, rate >= 0");
  }
  {
    httplib::Client probe(o.url);
    if (!probe.is_valid()) return Status::InvalidArgument("bad_bench_options", "bad --url");
  }
  const std::string prefix = "bench-" + std::to_string(std::random_device{}()) + "-" +
                             std::to_string(SteadyClock::now().time_since_epoch().count()) + "-";
  const auto start = SteadyClock::now() + std::chrono::milliseconds(100);
  const auto measure_from =
      start + std::chrono::duration_cast<SteadyClock::duration>(
                  std::chrono::duration<double>(o.warmup_seconds));
  const auto end = measure_from + std::chrono::duration_cast<SteadyClock::duration>(
                                      std::chrono::duration<double>(o.seconds));
  const bool open_loop = o.rate > 0;
  const double interval_s = open_loop ? 1.0 / o.rate : 0;
  std::atomic<uint64_t> next{0};
  std::vector<WorkerTotals> totals(static_cast<size_t>(o.connections));
  std::vector<std::thread> workers;
  const httplib::Headers headers = {{"Authorization", "Bearer " + o.token}};
  for (int c = 0; c < o.connections; ++c) {
    workers.emplace_back([&, c] {
      WorkerTotals& t = totals[static_cast<size_t>(c)];
      httplib::Client client(o.url);
      client.set_keep_alive(true);
      client.set_tcp_nodelay(true);
      client.set_connection_timeout(std::chrono::seconds(5));
      client.set_read_timeout(std::chrono::seconds(30));
      std::this_thread::sleep_until(start);
      for (;;) {
        const uint64_t i = next.fetch_add(1);
        SteadyClock::time_point due = SteadyClock::now();
        if (open_loop) {
          due = start + std::chrono::duration_cast<SteadyClock::duration>(
                            std::chrono::duration<double>(static_cast<double>(i) * interval_s));
          if (due >= end) return;
          std::this_thread::sleep_until(due);
        } else if (due >= end) {
          return;
        }
        const std::string body = "{\"user_id\":\"" + o.user_id + "\",\"service\":\"" + o.service +
                                 "\",\"quantity\":1,\"idempotency_key\":\"" + prefix +
                                 std::to_string(i) + "\"}";
        auto response = client.Post("/api/v1/usage/consume", headers, body, "application/json");
        const auto done = SteadyClock::now();
        if (due < measure_from) continue;
        if (!response) {
          ++t.transport_errors;
          continue;
        }
        (response->status == 200 ? t.ok : t.refused)++;
        t.latencies_ms.push_back(std::chrono::duration<double, std::milli>(done - due).count());
      }
    });
  }
  for (auto& w : workers) w.join();
  std::vector<double> all;
  for (const WorkerTotals& t : totals) {
    all.insert(all.end(), t.latencies_ms.begin(), t.latencies_ms.end());
    result->ok += t.ok;
    result->refused += t.refused;
    result->transport_errors += t.transport_errors;
  }
  std::sort(all.begin(), all.end());
  result->offered_rate = o.rate;
  result->requests = all.size();
  result->achieved_rate = static_cast<double>(all.size()) / o.seconds;
  result->p50_ms = Percentile(all, 50);
  result->p90_ms = Percentile(all, 90);
  result->p99_ms = Percentile(all, 99);
  result->p999_ms = Percentile(all, 99.9);
  result->max_ms = all.empty() ? 0 : all.back();
  return Status::OK();
}

std::string FormatHttpBenchReport(const HttpBenchOptions& o, const HttpBenchResult& r) {
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "bench http: POST %s/api/v1/usage/consume, %d connections, %s, %.0f s measured\n"
                "  answered   %.0f req/s (%llu requests: %llu 200, %llu other status, %llu "
                "transport errors)\n"
                "  p50 %8.2f ms\n  p90 %8.2f ms\n  p99 %8.2f ms\n  p99.9 %6.2f ms\n"
                "  max %8.2f ms\n",
                o.url.c_str(), o.connections,
                o.rate > 0 ? ("open loop at " + std::to_string(static_cast<long long>(o.rate)) +
                              " req/s (latency from each request's due time)")
                                 .c_str()
                           : "closed loop",
                o.seconds, r.achieved_rate, static_cast<unsigned long long>(r.requests),
                static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.refused),
                static_cast<unsigned long long>(r.transport_errors), r.p50_ms, r.p90_ms, r.p99_ms,
                r.p999_ms, r.max_ms);
  return buf;
}

}  // namespace ledger::tools
