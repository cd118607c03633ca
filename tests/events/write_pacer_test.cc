#include "events/write_pacer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include "events/ledger.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wait.h"

namespace ledger {
namespace {

using std::chrono::milliseconds;
using Clock = BackgroundWritePacer::Clock;

constexpr int64_t kMiB = 1 << 20;

BackgroundWritePacer::Options PacerOptions(int64_t floor,
                                           milliseconds idle_after = milliseconds(100)) {
  BackgroundWritePacer::Options options;
  options.ingest_multiple = 2;
  options.floor_bytes_per_second = floor;
  options.idle_after = idle_after;
  return options;
}

TEST(BackgroundWritePacerTest, UnpacedUntilTheLedgerWritesAndOnceItStops) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB));
  EXPECT_EQ(pacer.PaceAt(t0), 0);
  pacer.NoteIngest(100, t0 + milliseconds(1600));
  EXPECT_EQ(pacer.PaceAt(t0 + milliseconds(1650)), kMiB);  // a trickle: the floor
  EXPECT_EQ(pacer.GetBytesPerSecond(), kMiB);
  EXPECT_EQ(pacer.PaceAt(t0 + milliseconds(1701)), 0);  // nothing for over 100 ms
  EXPECT_EQ(pacer.GetBytesPerSecond(), 0);
}

TEST(BackgroundWritePacerTest, FollowsTheWriteRateOverTheLastSecond) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB));
  // 40 MiB/s (0.2 MiB every 5 ms) for two seconds: twice that.
  int64_t pace = 0;
  for (int i = 1; i <= 400; ++i) {
    const Clock::time_point t = t0 + milliseconds(5 * i);
    pacer.NoteIngest(kMiB / 5, t);
    pace = pacer.PaceAt(t);
  }
  EXPECT_NEAR(pace, 2 * 40 * kMiB, 2 * 40 * kMiB * 0.15);
  // Then 1 MiB/s: within a second and a half, twice that.
  for (int i = 1; i <= 300; ++i) {
    const Clock::time_point t = t0 + milliseconds(2000 + 5 * i);
    pacer.NoteIngest(kMiB / 200, t);
    pace = pacer.PaceAt(t);
  }
  EXPECT_NEAR(pace, 2 * kMiB, 2 * kMiB * 0.15);
}

// Ten writes of 8 MiB, `step` apart from `start` (400 MiB/s at 20 ms): a memtable filled in well
// under a second, whose flush must keep up from the start. The pace right after them.
int64_t PaceAfterABurst(BackgroundWritePacer* pacer, Clock::time_point start, milliseconds step) {
  for (int i = 0; i < 10; ++i) pacer->NoteIngest(8 * kMiB, start + step * i);
  return pacer->PaceAt(start + step * 10);
}

TEST(BackgroundWritePacerTest, ABurstAfterAPauseIsNotAveragedWithThePause) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB));
  pacer.NoteIngest(kMiB, t0);
  // Half a second later (a pause), 400 MiB/s.
  EXPECT_GE(PaceAfterABurst(&pacer, t0 + milliseconds(500), milliseconds(20)), 2 * 300 * kMiB);
}

TEST(BackgroundWritePacerTest, ABurstAfterATrickleIsPacedByTheLastBuckets) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB));
  // 10 KiB every 50 ms for two seconds: never a pause, and a second's average of ~0.2 MiB/s.
  for (int i = 0; i < 40; ++i) pacer.NoteIngest(10 << 10, t0 + milliseconds(50 * i));
  // Then 800 MiB/s for 100 ms.
  EXPECT_GE(PaceAfterABurst(&pacer, t0 + milliseconds(2000), milliseconds(10)), 2 * 300 * kMiB);
}

TEST(BackgroundWritePacerTest, UnpacedWhileRocksDbStallsWriters) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB));
  BackgroundWritePacer::StallListener listener(&pacer);
  pacer.NoteIngest(kMiB, t0);
  EXPECT_GT(pacer.PaceAt(t0), 0);
  rocksdb::WriteStallInfo info;
  info.cf_name = "usage";
  info.condition.prev = rocksdb::WriteStallCondition::kNormal;
  info.condition.cur = rocksdb::WriteStallCondition::kDelayed;
  listener.OnStallConditionsChanged(info);
  EXPECT_EQ(pacer.PaceAt(t0), 0);
  info.condition.prev = rocksdb::WriteStallCondition::kDelayed;
  info.condition.cur = rocksdb::WriteStallCondition::kStopped;
  listener.OnStallConditionsChanged(info);
  EXPECT_EQ(pacer.PaceAt(t0), 0);
  info.condition.prev = rocksdb::WriteStallCondition::kStopped;
  info.condition.cur = rocksdb::WriteStallCondition::kNormal;
  listener.OnStallConditionsChanged(info);
  EXPECT_GT(pacer.PaceAt(t0), 0);
}

TEST(BackgroundWritePacerTest, RequestsWaitForThePace) {
  const rocksdb::Env::IOPriority high = rocksdb::Env::IO_HIGH;
  Counter waited_us;
  BackgroundWritePacer::Options options = PacerOptions(4 * kMiB, milliseconds(60'000));
  options.waited_us = &waited_us;
  BackgroundWritePacer pacer(options);
  const int64_t burst = pacer.GetSingleBurstBytes();
  ASSERT_GT(burst, 0);
  ASSERT_LE(burst, kMiB);
  pacer.NoteIngest(1, Clock::now());  // a trickle: the floor, 4 MiB/s
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < 5; ++i) pacer.Request(burst, high, nullptr);
  // The first burst goes at once; each of the next four waits for the one before it.
  const double elapsed_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  EXPECT_GE(elapsed_us, 4.0 * burst * 1e6 / (4 * kMiB) * 0.95);
  EXPECT_GT(waited_us.Value(), 0u);
  EXPECT_EQ(pacer.GetTotalBytesThrough(high), 5 * burst);
  EXPECT_EQ(pacer.GetTotalRequests(high), 5);
  EXPECT_EQ(pacer.GetTotalRequests(rocksdb::Env::IO_LOW), 0);
  EXPECT_EQ(pacer.GetTotalBytesThrough(rocksdb::Env::IO_TOTAL), 5 * burst);
}

TEST(BackgroundWritePacerTest, NothingWaitsWhileTheLedgerWritesNothing) {
  Counter waited_us;
  BackgroundWritePacer::Options options = PacerOptions(kMiB);
  options.waited_us = &waited_us;
  BackgroundWritePacer pacer(options);
  for (int i = 0; i < 20; ++i) {
    pacer.Request(pacer.GetSingleBurstBytes(), rocksdb::Env::IO_HIGH, nullptr);
  }
  EXPECT_EQ(waited_us.Value(), 0u);
  EXPECT_EQ(pacer.GetTotalRequests(rocksdb::Env::IO_TOTAL), 20);
}

TEST(BackgroundWritePacerTest, FlushesAndCompactionsArePacedApartAndStallsNotAtAll) {
  Counter waited_us;
  BackgroundWritePacer::Options options = PacerOptions(kMiB, milliseconds(60'000));
  options.waited_us = &waited_us;
  BackgroundWritePacer pacer(options);
  pacer.NoteIngest(1, Clock::now());
  const int64_t burst = pacer.GetSingleBurstBytes();
  // A flush: at once, and the next one a second later at 1 MiB/s.
  pacer.Request(4 * burst, rocksdb::Env::IO_HIGH, nullptr);
  pacer.Request(burst, rocksdb::Env::IO_LOW, nullptr);  // a compaction: not behind the flush
  // RocksDB asks at IO_USER while writers are delayed or stopped: never paced.
  for (int i = 0; i < 8; ++i) pacer.Request(burst, rocksdb::Env::IO_USER, nullptr);
  EXPECT_EQ(waited_us.Value(), 0u);
  EXPECT_EQ(pacer.GetTotalRequests(rocksdb::Env::IO_USER), 8);
  pacer.Request(1, rocksdb::Env::IO_HIGH, nullptr);  // the flush's next: waits
  EXPECT_GT(waited_us.Value(), 0u);
}

// A ledger's options for a store in `dir`.
LedgerOptions StoreOptions(const testing::TempDir& dir,
                           size_t events_memtable_bytes = LedgerOptions().events_memtable_bytes) {
  LedgerOptions options;
  options.path = dir.path();
  options.events_memtable_bytes = events_memtable_bytes;
  return options;
}

// Through the ledger: RocksDB's flushes of memtables filled by groups written meanwhile wait for
// the pace; a flush once the writes have stopped does not.
testing::AppendCommand HundredKiBCommand(int i) {
  return testing::AppendCommand("subject-" + std::to_string(i), 100, "test.appended.v1", 1000);
}

// Microseconds flushes waited while ~6 MiB of events were written, a flush per ~1 MiB.
uint64_t FlushWaitWhileWriting(double pace) {
  testing::TempDir dir;
  LedgerOptions options = StoreOptions(dir, 1 << 20);
  options.background_write_pace = pace;
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  if (ledger == nullptr) return 0;
  for (int i = 0; i < 60; ++i) {
    testing::AppendCommand command = HundredKiBCommand(i);
    EXPECT_TRUE(ledger->Submit(&command).status.ok());
  }
  EXPECT_TRUE(ledger->WaitForBackgroundWork(60'000).ok());
  EXPECT_GT(ledger->metrics().table_bytes_flushed.Value(), 2u << 20);
  return ledger->metrics().background_write_waited_us.Value();
}

TEST(BackgroundWritePaceTest, FlushesDuringWritesWaitForThePace) {
  EXPECT_GT(FlushWaitWhileWriting(2.0), 0u);
}

TEST(BackgroundWritePaceTest, PaceZeroLeavesFlushesUnpaced) {
  EXPECT_EQ(FlushWaitWhileWriting(0.0), 0u);
}

TEST(BackgroundWritePaceTest, AFlushAfterTheWritesStoppedIsNotPaced) {
  testing::TempDir dir;
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(StoreOptions(dir));
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 20; ++i) {  // ~2 MiB, under the memtable's 64 MiB: no flush yet
    testing::AppendCommand command = HundredKiBCommand(i);
    ASSERT_TRUE(ledger->Submit(&command).status.ok());
  }
  std::this_thread::sleep_for(milliseconds(300));  // idle: past the pacer's 100 ms
  ASSERT_TRUE(ledger->Flush().ok());
  EXPECT_GT(ledger->metrics().table_bytes_flushed.Value(), 1u << 20);
  EXPECT_EQ(ledger->metrics().background_write_waited_us.Value(), 0u);
}

// Obsolete files are deleted by RocksDB's delete scheduler: renamed *.trash, then cut a chunk at
// a time, never unlinked whole (kObsoleteFileDeleteChunkBytes in events/ledger.cc).
class DeletionRecordingFs : public rocksdb::FileSystemWrapper {
 public:
  DeletionRecordingFs() : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "DeletionRecordingFs"; }
  rocksdb::IOStatus RenameFile(const std::string& source, const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override {
    if (source.ends_with(".log") && target == source + ".trash") logs_to_trash_.fetch_add(1);
    return rocksdb::FileSystemWrapper::RenameFile(source, target, options, dbg);
  }
  rocksdb::IOStatus DeleteFile(const std::string& name, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override {
    if (name.ends_with(".log")) logs_unlinked_.fetch_add(1);
    std::error_code ec;
    const uint64_t size = std::filesystem::file_size(name, ec);
    if (!ec && name.ends_with(".trash")) {
      uint64_t seen = largest_trash_unlinked_.load();
      while (size > seen && !largest_trash_unlinked_.compare_exchange_weak(seen, size)) {
      }
    }
    return rocksdb::FileSystemWrapper::DeleteFile(name, options, dbg);
  }
  int logs_to_trash() const { return logs_to_trash_.load(); }
  int logs_unlinked() const { return logs_unlinked_.load(); }
  uint64_t largest_trash_unlinked() const { return largest_trash_unlinked_.load(); }

 private:
  std::atomic<int> logs_to_trash_{0};
  std::atomic<int> logs_unlinked_{0};
  std::atomic<uint64_t> largest_trash_unlinked_{0};
};

int CountFiles(const std::string& dir, const std::string& extension) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == extension) ++n;
  }
  return n;
}

TEST(ObsoleteFileDeletionTest, LogsAreCutDownInTheTrashAndNoneIsLeft) {
  auto fs = std::make_shared<DeletionRecordingFs>();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  testing::TempDir dir;
  LedgerOptions options = StoreOptions(dir, 6 << 20);  // logs of ~6 MiB: three cuts each
  options.env = env.get();
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 100; ++i) {  // ~20 MiB: three flushes, each starting a new log
    testing::AppendCommand command("subject-" + std::to_string(i), 50, "test.appended.v1", 4000);
    ASSERT_TRUE(ledger->Submit(&command).status.ok());
  }
  ASSERT_TRUE(ledger->Flush().ok());
  ASSERT_TRUE(ledger->WaitForBackgroundWork(60'000).ok());
  // The live log and at most one that still holds rows of a family not flushed since remain.
  EXPECT_TRUE(testing::WaitFor([&] {
    return CountFiles(dir.path(), ".log") <= 2 && CountFiles(dir.path(), ".trash") == 0;
  })) << CountFiles(dir.path(), ".log") << " logs, " << CountFiles(dir.path(), ".trash")
       << " trash files";
  EXPECT_GE(fs->logs_to_trash(), 3);
  EXPECT_EQ(fs->logs_unlinked(), 0);
  EXPECT_GT(fs->largest_trash_unlinked(), 0u);
  EXPECT_LE(fs->largest_trash_unlinked(), 2u << 20);
  ledger.reset();
}

// RocksDB deletes the *.trash files it finds at open: a read-only open (ledgerctl verify beside a
// running ledgerd) must not take the files the live ledger's scheduler is cutting down.
TEST(ObsoleteFileDeletionTest, AReadOnlyOpenLeavesTheTrashAlone) {
  testing::TempDir dir;
  const LedgerOptions options = StoreOptions(dir);
  std::unique_ptr<Ledger> writer = testing::OpenTestLedger(options);
  ASSERT_NE(writer, nullptr);
  const std::string trash = dir.Sub("000999.log.trash");
  {
    FILE* f = std::fopen(trash.c_str(), "w");
    ASSERT_NE(f, nullptr);
    const std::string block(kMiB, 'x');
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(std::fwrite(block.data(), 1, block.size(), f), block.size());
    }
    std::fclose(f);
  }
  LedgerOptions read_only = options;
  read_only.read_only = true;
  std::unique_ptr<Ledger> reader = testing::OpenTestLedger(read_only);
  ASSERT_NE(reader, nullptr);
  reader.reset();
  std::error_code ec;
  EXPECT_EQ(std::filesystem::file_size(trash, ec), 3u * kMiB) << ec.message();
}

}  // namespace
}  // namespace ledger
