#include "events/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace ledger {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)) {
  if (bounds_.size() > kMaxBuckets) bounds_.resize(kMaxBuckets);
}

void Histogram::Observe(double value) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  double scaled = value * 1e6;
  sum_micros_.fetch_add(scaled > 0 ? static_cast<uint64_t>(scaled) : 0, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  s.cumulative.resize(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative[i] = running;
  }
  s.count = running;
  s.sum = static_cast<double>(sum_micros_.load(std::memory_order_relaxed)) / 1e6;
  return s;
}

std::vector<double> Histogram::LatencySecondsBounds() {
  return {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,    10};
}

std::vector<double> Histogram::SizeBounds() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
}

double QuantileUpperBound(const Histogram::Snapshot& before, const Histogram::Snapshot& after,
                          double q) {
  auto cumulative = [](const Histogram::Snapshot& s, size_t i) -> uint64_t {
    return i < s.cumulative.size() ? s.cumulative[i] : 0;
  };
  const size_t buckets = after.cumulative.size();
  if (buckets == 0) return 0;
  const uint64_t total = cumulative(after, buckets - 1) - cumulative(before, buckets - 1);
  if (total == 0) return 0;
  // The smallest bucket whose cumulative count reaches ceil(q * total).
  const uint64_t rank = std::max<uint64_t>(
      1, static_cast<uint64_t>(std::ceil(std::clamp(q, 0.0, 1.0) * static_cast<double>(total) - 1e-9)));
  for (size_t i = 0; i < buckets; ++i) {
    if (cumulative(after, i) - cumulative(before, i) >= rank) {
      return i < after.bounds.size() ? after.bounds[i] : HUGE_VAL;
    }
  }
  return HUGE_VAL;
}

void RenderHistogram(const std::string& name, const std::string& labels,
                     const Histogram::Snapshot& snapshot, bool with_type, std::string* out) {
  if (with_type) *out += "# TYPE " + name + " histogram\n";
  std::string sep = labels.empty() ? "" : ",";
  char buf[64];
  for (size_t i = 0; i <= snapshot.bounds.size(); ++i) {
    std::string le = "+Inf";
    if (i < snapshot.bounds.size()) {
      std::snprintf(buf, sizeof(buf), "%g", snapshot.bounds[i]);
      le = buf;
    }
    *out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " +
            std::to_string(snapshot.cumulative[i]) + "\n";
  }
  std::snprintf(buf, sizeof(buf), "%.6f", snapshot.sum);
  std::string braces = labels.empty() ? "" : "{" + labels + "}";
  *out += name + "_sum" + braces + " " + buf + "\n";
  *out += name + "_count" + braces + " " + std::to_string(snapshot.count) + "\n";
}

}  // namespace ledger
