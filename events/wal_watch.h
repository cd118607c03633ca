// Tells the ledger's writer when a group's WAL record has reached the OS, while DB::Write is still
// inserting the group into the memtables, so that the WAL sync can start meanwhile.
//
// Why: in a closed loop (64 callers, one command in flight each) every caller waits in the same
// sync, and the stages run one after another: sync -> answers -> decide -> DB::Write -> sync.
// DB::Write appends the record to the WAL and then inserts every row into the memtables; the
// memtable inserts took ~0.13 ms of a ~0.7 ms cycle (`perf record` of `ledgerctl bench --mode
// single`, async phase). The sync only needs the WAL record: SyncWAL may run beside a write
// (RocksDB: "will not block writes being executed in other threads"), and readers see a group only
// once the sync thread publishes its snapshot, which it still does only after the write returns.
//
// How: the file system wraps every WAL file (*.log); the thread about to call DB::Write arms a
// watch with the size of its batch. RocksDB's log writer hands a record to the file as one buffered
// write followed by one Flush() when the record fits the file writer's buffer
// (DBOptions::writable_file_max_buffer_size; larger records are flushed part by part, so the watch
// is only armed for batches well under it, kArmBytesMax). The watch fires on the first successful
// Flush() of a WAL file, on the armed thread, after at least the batch's bytes were appended to
// WAL files by that thread without error: the record is then wholly in the OS's page cache. A
// flush with nothing appended (RocksDB flushing the previous log at a memtable switch) does not
// fire it, nor does a record another thread writes (RocksDB's write group led by another
// writer): the ledger then treats the record as appended when DB::Write returns, as it always
// did.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include <rocksdb/file_system.h>

namespace ledger {

class WalWatch {
 public:
  // Batches larger than this are not watched (see above); the ledger sets the file writer's buffer
  // to kFileBufferBytes, twice as much, leaving room for record headers and for small batches of
  // other writers RocksDB adds to the same record (checkpoints).
  static constexpr uint64_t kFileBufferBytes = 1 << 20;
  static constexpr uint64_t kArmBytesMax = kFileBufferBytes / 2;

  // Arms a watch on the calling thread for a batch of `batch_bytes` (WriteBatch::GetDataSize());
  // `on_appended` runs at most once, on this thread, inside the WAL file's Flush(). Returns false
  // (and arms nothing) when the batch is too large to be watched. Disarmed by the destructor.
  bool Arm(uint64_t batch_bytes, std::function<void()> on_appended);
  bool fired() const { return fired_; }
  ~WalWatch();

  // For the file system below: the current thread appended `bytes` to a WAL file (or failed to).
  static void NoteAppend(bool ok, uint64_t bytes);
  // The current thread flushed a WAL file successfully.
  static void NoteFlush();

 private:
  uint64_t expected_ = 0;
  uint64_t appended_ = 0;
  bool failed_ = false;
  bool armed_ = false;
  bool fired_ = false;
  std::function<void()> on_appended_;
};

// A file system whose WAL files (*.log) report their appends and flushes to the current thread's
// WalWatch. Everything else passes through.
std::shared_ptr<rocksdb::FileSystem> NewWalWatchingFileSystem(
    const std::shared_ptr<rocksdb::FileSystem>& base);

}  // namespace ledger
