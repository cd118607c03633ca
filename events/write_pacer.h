// Paces RocksDB's background writes (memtable flushes, compactions) to a multiple of the rate at
// which the ledger itself writes, so that they do not crowd out the WAL syncs every durable
// answer waits for.
//
// Why: a flush writes a whole memtable (64 MiB for the events family) as fast as the disk takes
// it, and on this machine class every WAL sync issued meanwhile takes 4-12 ms instead of well
// under one -- for the ~300 ms the flush lasts -- which was the open loop's tail latency. A
// fixed rate cannot serve both kinds of load: 32 MB/s took that tail from 21 to 8.5 ms, but
// batched ingest writes ~125 MB/s into the events family and its flushes would fall behind and
// stall every writer. A flush only has to finish before the next memtable fills, so its pace can
// follow the ingest: `ingest_multiple` times the ledger's own write rate (measured over about a
// second), never under `floor_bytes_per_second`, and not paced at all while the ledger writes
// nothing (a flush at shutdown, the one-off compaction at open, tests) -- there is no sync to
// protect then.
//
// Flushes and compactions are paced separately (RocksDB asks with IO_HIGH and IO_LOW), each at
// the full rate: a compaction running beside a flush never takes the flush's budget, which
// would let memtables pile up until RocksDB stalls writers. WAL writes are never paced (RocksDB
// does not ask for them).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include <rocksdb/rate_limiter.h>

#include "events/metrics.h"

namespace ledger {

class BackgroundWritePacer final : public rocksdb::RateLimiter {
 public:
  struct Options {
    double ingest_multiple = 2.0;
    int64_t floor_bytes_per_second = 16 << 20;
    // With nothing written for this long, background writes go unpaced.
    std::chrono::nanoseconds idle_after = std::chrono::milliseconds(100);
    // The ingest rate is averaged over at least this long (and over the whole time since the
    // last background write, when that is longer: the memtable being flushed filled over it).
    std::chrono::nanoseconds window = std::chrono::seconds(1);
    // Microseconds background writes waited for the pace are added here (may be null).
    Counter* waited_us = nullptr;
  };
  using Clock = std::chrono::steady_clock;

  explicit BackgroundWritePacer(const Options& options, Clock::time_point start = Clock::now());

  // The ledger wrote `bytes` to its WAL and memtables (one group). Called by the writing thread.
  void NoteIngest(int64_t bytes, Clock::time_point now = Clock::now());

  // The pace background writes get now, in bytes per second; 0 = unpaced.
  int64_t PaceAt(Clock::time_point now);

  // rocksdb::RateLimiter.
  void SetBytesPerSecond(int64_t) override {}  // the pace follows the ingest
  using rocksdb::RateLimiter::Request;
  void Request(int64_t bytes, rocksdb::Env::IOPriority pri, rocksdb::Statistics*) override;
  int64_t GetSingleBurstBytes() const override { return kBurstBytes; }
  int64_t GetTotalBytesThrough(rocksdb::Env::IOPriority pri) const override;
  int64_t GetTotalRequests(rocksdb::Env::IOPriority pri) const override;
  int64_t GetBytesPerSecond() const override {
    return last_pace_.load(std::memory_order_relaxed);
  }

 private:
  int64_t PaceLocked(Clock::time_point now);

  // Background writes ask for at most this much at a time, so a change of pace (the ingest
  // stopping, say) takes effect within one burst.
  static constexpr int64_t kBurstBytes = 256 << 10;
  static constexpr int kPriorities = 2;  // IO_LOW (compactions), IO_HIGH (flushes)

  const Options options_;
  std::atomic<int64_t> ingested_{0};
  std::atomic<int64_t> last_ingest_ns_{0};  // Clock epoch; 0 = never
  std::atomic<int64_t> last_pace_{0};
  std::atomic<int64_t> bytes_through_[kPriorities] = {};
  std::atomic<int64_t> requests_[kPriorities] = {};

  std::mutex mu_;
  // Two samples of (time, ingested): the rate is measured from `anchor_` to now; `recent_`
  // becomes the anchor once it is a window old, so the anchor stays one to two windows back.
  Clock::time_point anchor_time_{};  // guarded by mu_
  int64_t anchor_bytes_ = 0;          // guarded by mu_
  Clock::time_point recent_time_{};  // guarded by mu_
  int64_t recent_bytes_ = 0;          // guarded by mu_
  // Per priority: when the bytes granted so far will have been written at the pace.
  Clock::time_point next_free_[kPriorities] = {};  // guarded by mu_
};

}  // namespace ledger
