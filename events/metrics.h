// Lock-free counters and fixed-bucket histograms. Modules own their metrics; http/ renders them
// in Prometheus text format. No log line per event on hot paths: counts go here.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace ledger {

class Counter {
 public:
  void Add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// Histogram with caller-given upper bounds (ascending), plus +Inf.
class Histogram {
 public:
  static constexpr size_t kMaxBuckets = 24;
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // bounds.size() + 1 entries, the last is +Inf
    uint64_t count = 0;
    double sum = 0;
  };
  Snapshot Read() const;
  // Bounds for latencies in seconds: 50 µs .. 10 s.
  static std::vector<double> LatencySecondsBounds();
  // Bounds for sizes: 1 .. 4096, powers of two.
  static std::vector<double> SizeBounds();

 private:
  std::vector<double> bounds_;
  std::array<std::atomic<uint64_t>, kMaxBuckets + 1> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_micros_{0};  // sum scaled by 1e6 to stay integral
};

// The upper bound of the bucket that holds the q-quantile (0 < q <= 1) of the observations made
// between two snapshots of one histogram (`before` may be an empty Snapshot: since the start):
// "at most this much" for that share of them. Infinity when it falls in the +Inf bucket; 0 when
// nothing was observed in between.
double QuantileUpperBound(const Histogram::Snapshot& before, const Histogram::Snapshot& after,
                          double q);

// Appends `name` histogram in Prometheus text format (with optional label string like
// `route="/x"`) to `out`. Writes # TYPE only when `with_type` is true.
void RenderHistogram(const std::string& name, const std::string& labels,
                     const Histogram::Snapshot& snapshot, bool with_type, std::string* out);

}  // namespace ledger
