// SideShredder: after a group that deleted rows of a side family (events/ledger.h SideRow), or
// replaced rows with SideRow::shred_replaced, is durable, compacts that family on a thread of its
// own, so that the deleted or replaced rows' values leave the store's table files.
//
// Why: a side row is deleted to shred a secret (a BYOK key's wrapped data key,
// projections/byok.h), but once the row was flushed to a table file a delete only writes a
// tombstone; the value stays in that file until a compaction merges the two, which in a tiny,
// rarely-written family may be never. A removed key then still opened, for anyone with the master
// key and a copy of the data directory, long after the removal was acknowledged. A compaction of
// the whole family (it holds a few hundred bytes per key) with the bottommost level rewritten
// (kForce) drops the value and the tombstone; the files that held them are then deleted (through
// RocksDB's delete scheduler: renamed *.trash, then cut down), and the request is done once none
// of them is on disk.
//
// Not on the write path: the sync thread only queues a request (the family and the group's
// snapshot sequence), the compaction runs here, and requests queued while one runs are done by
// one compaction per family. It waits for read views older than the group to be released (a
// compaction keeps what a live snapshot can see), checking every 10 ms.
//
// Not covered: a write-ahead log file holding the row's Put is deleted only once every family
// with rows in it has flushed them (max_total_wal_size, the events family's memtable, a clean
// shutdown's Flush); until then the value is in that log.
//
// Thread safety: every public method may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <thread>

#include "events/status.h"

namespace rocksdb {
class ColumnFamilyHandle;
class DB;
}  // namespace rocksdb

namespace ledger {

class SideShredder {
 public:
  explicit SideShredder(rocksdb::DB* db) : db_(db) {}
  ~SideShredder() { Stop(); }
  SideShredder(const SideShredder&) = delete;
  SideShredder& operator=(const SideShredder&) = delete;

  void Start();
  // Rows of `family` were deleted by a group that is durable and whose snapshot has sequence
  // `sequence` (0: no read view to wait for). Quick: only queues the request.
  void Request(rocksdb::ColumnFamilyHandle* family, uint64_t sequence);
  // Waits until every request made before the call is done; Busy after `timeout_ms`.
  Status Wait(int64_t timeout_ms);
  // Does the requests queued so far, then ends the thread. The database must still be open.
  void Stop();

 private:
  void Loop();
  void Shred(rocksdb::ColumnFamilyHandle* family, uint64_t sequence);

  rocksdb::DB* const db_;
  std::mutex mu_;
  std::condition_variable cv_;       // the thread waits for requests, Wait() for them to be done
  // Families to compact, each with the largest sequence requested for it.
  std::map<rocksdb::ColumnFamilyHandle*, uint64_t> pending_;  // guarded by mu_
  uint64_t requested_ = 0;  // guarded by mu_: requests made
  uint64_t done_ = 0;       // guarded by mu_: requests done (in order)
  bool stopping_ = false;   // guarded by mu_
  std::thread thread_;
};

}  // namespace ledger
