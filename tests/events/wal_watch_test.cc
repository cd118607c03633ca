// The WAL watch (events/wal_watch.h): it fires only once a batch's whole WAL record is in the log
// file, never for a flush of the previous log at a memtable switch nor for a batch too large to
// reach the file in one buffered write; and the ledger's sync, started from it while the group's
// DB::Write still inserts into the memtables, answers and publishes the group only after that
// write has returned.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/write_batch.h>

#include "events/ledger.h"
#include "events/wal_watch.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wait.h"

namespace ledger {
namespace {

using testing::AppendCommand;
using testing::TempDir;
using testing::WaitFor;

// The newest WAL file of `dir` (highest number) and its size. Older logs may be deleted meanwhile
// (RocksDB frees a log once its memtables are flushed): a file gone between the listing and its
// size is passed over.
struct WalFile {
  std::string name;
  uint64_t size = 0;
};
WalFile NewestWal(const std::string& dir) {
  WalFile newest;
  uint64_t newest_number = 0;
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!name.ends_with(".log")) continue;
    const uint64_t number = std::stoull(name.substr(0, name.size() - 4));
    const uint64_t size = std::filesystem::file_size(entry.path(), error);
    if (error) continue;
    if (newest.name.empty() || number > newest_number) {
      newest_number = number;
      newest = WalFile{name, size};
    }
  }
  EXPECT_FALSE(newest.name.empty()) << "no WAL file in " << dir;
  return newest;
}

// A RocksDB store on the WAL-watching file system, as the ledger opens it.
class WatchedDb {
 public:
  explicit WatchedDb(const std::string& path, size_t write_buffer_bytes = 64 << 20)
      : env_(rocksdb::NewCompositeEnv(NewWalWatchingFileSystem(rocksdb::FileSystem::Default()))) {
    rocksdb::Options options;
    options.create_if_missing = true;
    options.env = env_.get();
    options.writable_file_max_buffer_size = WalWatch::kFileBufferBytes;
    options.write_buffer_size = write_buffer_bytes;
    rocksdb::DB* db = nullptr;
    status_ = rocksdb::DB::Open(options, path, &db);
    db_.reset(db);
  }
  rocksdb::DB* db() const { return db_.get(); }
  const rocksdb::Status& status() const { return status_; }

 private:
  std::unique_ptr<rocksdb::Env> env_;
  rocksdb::Status status_;
  std::unique_ptr<rocksdb::DB> db_;
};

rocksdb::WriteBatch BatchOf(size_t value_bytes, int key) {
  rocksdb::WriteBatch batch;
  EXPECT_TRUE(batch.Put("key-" + std::to_string(key), std::string(value_bytes, 'v')).ok());
  return batch;
}

// Writes `batch` with a watch armed; returns the newest log as the watch saw it when it fired
// (empty name: it did not fire) and the newest log once the write returned.
std::pair<WalFile, WalFile> WatchedWrite(rocksdb::DB* db, const std::string& dir,
                                         rocksdb::WriteBatch* batch, bool* armed) {
  WalFile at_fire;
  WalWatch watch;
  *armed = watch.Arm(batch->GetDataSize(), [&] { at_fire = NewestWal(dir); });
  EXPECT_TRUE(db->Write(rocksdb::WriteOptions(), batch).ok());
  EXPECT_EQ(watch.fired(), !at_fire.name.empty());
  return {at_fire, NewestWal(dir)};
}

TEST(WalWatchTest, FiresOnceTheWholeRecordIsInTheLogFile) {
  TempDir dir;
  WatchedDb store(dir.path());
  ASSERT_TRUE(store.status().ok()) << store.status().ToString();
  // One fragment; several 32 KiB log blocks; just under the largest batch watched.
  int key = 0;
  for (size_t bytes : {size_t{100}, size_t{40'000}, size_t{200'000},
                       size_t{WalWatch::kArmBytesMax - 1'000}}) {
    SCOPED_TRACE(bytes);
    rocksdb::WriteBatch batch = BatchOf(bytes, ++key);
    bool armed = false;
    const auto [at_fire, after] = WatchedWrite(store.db(), dir.path(), &batch, &armed);
    ASSERT_TRUE(armed);
    ASSERT_FALSE(at_fire.name.empty()) << "the watch did not fire";
    EXPECT_EQ(at_fire.name, after.name);
    EXPECT_EQ(at_fire.size, after.size) << "fired before the whole record was in the file";
    EXPECT_GE(after.size, batch.GetDataSize());
  }
}

TEST(WalWatchTest, AMemtableSwitchFiresItForTheNewLogOnly) {
  TempDir dir;
  WatchedDb store(dir.path(), /*write_buffer_bytes=*/64 << 10);  // a switch every few writes
  ASSERT_TRUE(store.status().ok()) << store.status().ToString();
  int switches = 0;
  for (int key = 0; key < 40; ++key) {
    rocksdb::WriteBatch batch = BatchOf(20'000, key);
    const WalFile before = NewestWal(dir.path());
    bool armed = false;
    const auto [at_fire, after] = WatchedWrite(store.db(), dir.path(), &batch, &armed);
    ASSERT_TRUE(armed);
    ASSERT_FALSE(at_fire.name.empty()) << "write " << key;
    if (after.name != before.name) ++switches;
    // At a switch RocksDB flushes the previous log with nothing appended: not this record.
    EXPECT_EQ(at_fire.name, after.name) << "write " << key;
    EXPECT_EQ(at_fire.size, after.size) << "write " << key;
  }
  EXPECT_GT(switches, 0) << "no write switched logs: the test shows nothing";
}

TEST(WalWatchTest, ABatchTooLargeForOneBufferedWriteIsNotWatched) {
  TempDir dir;
  WatchedDb store(dir.path());
  ASSERT_TRUE(store.status().ok()) << store.status().ToString();
  // Past the file writer's buffer RocksDB writes the record out in parts, flushing each: a watch
  // firing at the first of them would let a sync miss the rest of the record.
  rocksdb::WriteBatch batch = BatchOf(WalWatch::kFileBufferBytes + 100'000, 1);
  bool armed = true;
  const auto [at_fire, after] = WatchedWrite(store.db(), dir.path(), &batch, &armed);
  EXPECT_FALSE(armed);
  EXPECT_TRUE(at_fire.name.empty());
  EXPECT_GE(after.size, batch.GetDataSize());
}

TEST(WalWatchTest, TheSyncRunsBesideTheMemtableInsertsAndAnswersOnlyAfterThem) {
  TempDir dir;
  // The first group's writer is held right after its record reached the OS, inside DB::Write.
  std::mutex mu;
  std::condition_variable cv;
  bool held = false, released = false;
  LedgerOptions options;
  options.path = dir.path();
  options.wal_appended_for_test = [&] {
    std::unique_lock<std::mutex> lock(mu);
    if (held) return;
    held = true;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
  };
  auto ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  const uint64_t syncs_before = ledger->metrics().syncs.Value();
  const Position head_before = ledger->Head();

  std::atomic<bool> answered{false};
  CommandResult result;
  std::thread caller([&] {
    AppendCommand command("alice");
    result = ledger->Submit(&command);
    answered.store(true);
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return held; }));
  }
  // The sync covering the record ran while its write is still held...
  const bool synced =
      WaitFor([&] { return ledger->metrics().syncs.Value() > syncs_before; });
  // ...but the command is neither answered nor visible before the write returns.
  EXPECT_FALSE(answered.load());
  EXPECT_EQ(ledger->Head(), head_before);
  {
    std::lock_guard<std::mutex> lock(mu);
    released = true;
  }
  cv.notify_all();
  caller.join();
  ASSERT_TRUE(synced) << "no sync started while the group's memtable inserts were held";
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  EXPECT_EQ(ledger->Head(), result.position);
  EXPECT_EQ(ledger->metrics().syncs_beside_write.Value(), 1u);
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(head_before, 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].subject, "alice");
}

}  // namespace
}  // namespace ledger
