#include "events/write_pacer.h"

#include <algorithm>
#include <thread>

namespace ledger {
namespace {

int64_t SinceEpochNs(BackgroundWritePacer::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// RocksDB asks with IO_LOW for compactions and IO_HIGH for flushes, and with IO_USER for either
// while it delays or stops writers (then they must go as fast as they can).
int Slot(rocksdb::Env::IOPriority pri) {
  switch (pri) {
    case rocksdb::Env::IO_LOW: return 0;
    case rocksdb::Env::IO_HIGH: return 1;
    default: return 2;
  }
}

}  // namespace

void BackgroundWritePacer::NoteIngest(int64_t bytes, Clock::time_point now) {
  const int64_t ns = SinceEpochNs(now);
  const int64_t last = last_ingest_ns_.load();
  if (last == 0 || ns - last > options_.idle_after.count()) active_since_ns_.store(ns);
  last_ingest_ns_.store(ns);
  const int64_t index = ns / kBucketNs;
  Bucket& bucket = buckets_[index % kBuckets];
  if (bucket.index.load() != index) {
    // A new 100 ms: the bucket held bytes of a second ago or more. Readers skip it while it is
    // being reset (they compare its index before and after reading the bytes).
    bucket.index.store(-1);
    bucket.bytes.store(0);
    bucket.index.store(index);
  }
  bucket.bytes.fetch_add(bytes);
}

int64_t BackgroundWritePacer::PaceAt(Clock::time_point now) {
  const int64_t ns = SinceEpochNs(now);
  const int64_t last = last_ingest_ns_.load();
  int64_t pace = 0;
  if (last != 0 && ns - last <= options_.idle_after.count() && stalled_families_.load() == 0) {
    const int64_t current = ns / kBucketNs;
    int64_t bytes = 0, recent_bytes = 0;  // the last second's, the last two buckets'
    for (const Bucket& bucket : buckets_) {
      const int64_t index = bucket.index.load();
      if (index <= current - kBuckets || index > current) continue;
      const int64_t value = bucket.bytes.load();
      if (bucket.index.load() != index) continue;
      bytes += value;
      if (index >= current - 1) recent_bytes += value;
    }
    // Over the buckets counted, or since the ledger started writing after a pause if that is
    // later (a burst after a quiet spell is not averaged with the quiet); and the faster of that
    // and the last two buckets' rate (a burst after a trickle).
    const int64_t active_since = active_since_ns_.load();
    auto rate = [&](int64_t bytes_counted, int64_t buckets_counted) {
      const int64_t from = std::max((current - buckets_counted + 1) * kBucketNs, active_since);
      const double seconds = std::max(static_cast<double>(ns - from) / 1e9, 0.01);
      return static_cast<double>(bytes_counted) / seconds;
    };
    const double fastest = std::max(rate(bytes, kBuckets), rate(recent_bytes, 2));
    pace = std::max(options_.floor_bytes_per_second,
                    static_cast<int64_t>(options_.ingest_multiple * fastest));
  }
  last_pace_.store(pace, std::memory_order_relaxed);
  return pace;
}

void BackgroundWritePacer::Request(int64_t bytes, rocksdb::Env::IOPriority pri,
                                   rocksdb::Statistics*) {
  const int slot = Slot(pri);
  bytes_through_[slot].fetch_add(bytes, std::memory_order_relaxed);
  requests_[slot].fetch_add(1, std::memory_order_relaxed);
  if (slot >= kPacedSlots) return;
  const Clock::time_point now = Clock::now();
  const int64_t pace = PaceAt(now);
  Clock::time_point start;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (pace == 0) {
      next_free_[slot] = now;
      return;
    }
    // Bytes are granted in order: these start once the bytes granted before them would have
    // been written at the pace (or now, when that is past), and hold the next request back for
    // as long as they take at the pace.
    start = std::max(now, next_free_[slot]);
    next_free_[slot] = start + std::chrono::nanoseconds(bytes * 1'000'000'000 / pace);
  }
  if (start > now) {
    std::this_thread::sleep_until(start);
    if (options_.waited_us != nullptr) {
      options_.waited_us->Add(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(start - now).count()));
    }
  }
}

int64_t BackgroundWritePacer::GetTotalBytesThrough(rocksdb::Env::IOPriority pri) const {
  return Total(bytes_through_, pri);
}

int64_t BackgroundWritePacer::GetTotalRequests(rocksdb::Env::IOPriority pri) const {
  return Total(requests_, pri);
}

int64_t BackgroundWritePacer::Total(const std::atomic<int64_t> (&slots)[kSlots],
                                    rocksdb::Env::IOPriority pri) {
  if (pri != rocksdb::Env::IO_TOTAL) return slots[Slot(pri)].load(std::memory_order_relaxed);
  int64_t total = 0;
  for (const auto& slot : slots) total += slot.load(std::memory_order_relaxed);
  return total;
}

}  // namespace ledger
