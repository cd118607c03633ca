#include "events/write_pacer.h"

#include <algorithm>
#include <thread>

namespace ledger {
namespace {

int64_t SinceEpochNs(BackgroundWritePacer::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// RocksDB asks with IO_HIGH for flushes and IO_LOW for compactions; anything else (IO_MID,
// IO_USER) is counted with compactions.
int Slot(rocksdb::Env::IOPriority pri) { return pri == rocksdb::Env::IO_HIGH ? 1 : 0; }

}  // namespace

BackgroundWritePacer::BackgroundWritePacer(const Options& options, Clock::time_point start)
    : options_(options),
      anchor_time_(start),
      recent_time_(start) {}

void BackgroundWritePacer::NoteIngest(int64_t bytes, Clock::time_point now) {
  ingested_.fetch_add(bytes, std::memory_order_relaxed);
  last_ingest_ns_.store(SinceEpochNs(now), std::memory_order_relaxed);
}

int64_t BackgroundWritePacer::PaceAt(Clock::time_point now) {
  std::lock_guard<std::mutex> l(mu_);
  return PaceLocked(now);
}

int64_t BackgroundWritePacer::PaceLocked(Clock::time_point now) {
  int64_t pace = 0;
  const int64_t last_ingest = last_ingest_ns_.load(std::memory_order_relaxed);
  const int64_t total = ingested_.load(std::memory_order_relaxed);
  if (now - recent_time_ >= options_.window) {
    anchor_time_ = recent_time_;
    anchor_bytes_ = recent_bytes_;
    recent_time_ = now;
    recent_bytes_ = total;
  }
  if (last_ingest != 0 && SinceEpochNs(now) - last_ingest <= options_.idle_after.count()) {
    const double seconds =
        std::max(std::chrono::duration<double>(now - anchor_time_).count(), 0.01);
    const double rate = static_cast<double>(total - anchor_bytes_) / seconds;
    pace = std::max(options_.floor_bytes_per_second,
                    static_cast<int64_t>(options_.ingest_multiple * rate));
  }
  last_pace_.store(pace, std::memory_order_relaxed);
  return pace;
}

void BackgroundWritePacer::Request(int64_t bytes, rocksdb::Env::IOPriority pri,
                                   rocksdb::Statistics*) {
  const int slot = Slot(pri);
  bytes_through_[slot].fetch_add(bytes, std::memory_order_relaxed);
  requests_[slot].fetch_add(1, std::memory_order_relaxed);
  const Clock::time_point now = Clock::now();
  Clock::time_point start;
  {
    std::lock_guard<std::mutex> l(mu_);
    const int64_t pace = PaceLocked(now);
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
  if (pri == rocksdb::Env::IO_TOTAL) {
    return bytes_through_[0].load(std::memory_order_relaxed) +
           bytes_through_[1].load(std::memory_order_relaxed);
  }
  return bytes_through_[Slot(pri)].load(std::memory_order_relaxed);
}

int64_t BackgroundWritePacer::GetTotalRequests(rocksdb::Env::IOPriority pri) const {
  if (pri == rocksdb::Env::IO_TOTAL) {
    return requests_[0].load(std::memory_order_relaxed) +
           requests_[1].load(std::memory_order_relaxed);
  }
  return requests_[Slot(pri)].load(std::memory_order_relaxed);
}

}  // namespace ledger
