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
// follow the ingest: `ingest_multiple` times what the ledger wrote over the last second (or since
// it started writing after a pause, when that is shorter), never under `floor_bytes_per_second`,
// and not paced at all while the ledger writes nothing (a flush at shutdown, the one-off
// compaction at open, tests) -- there is no sync to protect then -- nor while RocksDB delays or
// stops writers in any column family (StallListener): then the flushes and compactions are what
// the writers wait for.
//
// Flushes (IO_HIGH) and compactions (IO_LOW) are paced apart, each at the full pace: a compaction
// running beside a flush never takes the flush's budget, which would let memtables pile up until
// RocksDB stalls writers. Writes RocksDB asks for at IO_USER -- flushes and compaction outputs
// started while it delays or stops writers -- are not paced, nor are WAL writes (RocksDB does not
// ask for those).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include <rocksdb/listener.h>
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
    // Microseconds background writes waited for the pace are added here (may be null).
    Counter* waited_us = nullptr;
  };
  using Clock = std::chrono::steady_clock;

  explicit BackgroundWritePacer(const Options& options) : options_(options) {}

  // The ledger wrote `bytes` to its WAL and memtables (one group) at `now`. One thread at a time
  // (the ledger calls it under its WAL mutex); any thread may read the pace meanwhile.
  void NoteIngest(int64_t bytes, Clock::time_point now);

  // The pace background writes get at `now`, in bytes per second; 0 = unpaced.
  int64_t PaceAt(Clock::time_point now);

  // A column family's writers went from stalled (delayed or stopped) or not to stalled or not.
  void NoteStallChange(bool was_stalled, bool is_stalled) {
    stalled_families_.fetch_add(static_cast<int>(is_stalled) - static_cast<int>(was_stalled));
  }

  // Tells the pacer when RocksDB stalls writers (DBOptions::listeners).
  class StallListener final : public rocksdb::EventListener {
   public:
    explicit StallListener(BackgroundWritePacer* pacer) : pacer_(pacer) {}
    void OnStallConditionsChanged(const rocksdb::WriteStallInfo& info) override {
      pacer_->NoteStallChange(info.condition.prev != rocksdb::WriteStallCondition::kNormal,
                              info.condition.cur != rocksdb::WriteStallCondition::kNormal);
    }

   private:
    BackgroundWritePacer* pacer_;
  };

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
  // Background writes ask for at most this much at a time, so a change of pace (the ingest
  // stopping, say) takes effect within one burst.
  static constexpr int64_t kBurstBytes = 256 << 10;
  // The ingest is counted in 100 ms buckets, the last second's worth.
  static constexpr int64_t kBucketNs = 100'000'000;
  static constexpr int kBuckets = 10;
  // Per priority: compactions (IO_LOW), flushes (IO_HIGH), anything else (unpaced).
  static constexpr int kSlots = 3;
  static constexpr int kPacedSlots = 2;

  // One priority's count (IO_TOTAL: all of them).
  static int64_t Total(const std::atomic<int64_t> (&slots)[kSlots], rocksdb::Env::IOPriority pri);

  struct Bucket {
    std::atomic<int64_t> index{-1};  // since the clock's epoch, in kBucketNs
    std::atomic<int64_t> bytes{0};
  };

  const Options options_;
  Bucket buckets_[kBuckets];
  std::atomic<int64_t> last_ingest_ns_{0};   // Clock's epoch; 0 = never
  std::atomic<int64_t> active_since_ns_{0};  // the first write after a pause
  std::atomic<int64_t> last_pace_{0};
  std::atomic<int> stalled_families_{0};
  std::atomic<int64_t> bytes_through_[kSlots] = {};
  std::atomic<int64_t> requests_[kSlots] = {};

  std::mutex mu_;
  // Per paced priority: when the bytes granted so far will have been written at the pace.
  Clock::time_point next_free_[kPacedSlots] = {};  // guarded by mu_
};

}  // namespace ledger
