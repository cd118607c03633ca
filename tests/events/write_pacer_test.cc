#include "events/write_pacer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

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
  options.window = std::chrono::seconds(1);
  return options;
}

TEST(BackgroundWritePacerTest, UnpacedUntilTheLedgerWritesAndOnceItStops) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB), t0);
  EXPECT_EQ(pacer.PaceAt(t0 + milliseconds(1500)), 0);
  pacer.NoteIngest(100, t0 + milliseconds(1600));
  EXPECT_EQ(pacer.PaceAt(t0 + milliseconds(1650)), kMiB);  // a trickle: the floor
  EXPECT_EQ(pacer.GetBytesPerSecond(), kMiB);
  EXPECT_EQ(pacer.PaceAt(t0 + milliseconds(1701)), 0);  // nothing for over 100 ms
  EXPECT_EQ(pacer.GetBytesPerSecond(), 0);
}

TEST(BackgroundWritePacerTest, FollowsTheWriteRate) {
  const Clock::time_point t0 = Clock::now();
  BackgroundWritePacer pacer(PacerOptions(kMiB), t0);
  // 10 MiB over the first two seconds, no background write meanwhile: the average since the
  // start (the memtable now flushed filled over all of it).
  pacer.NoteIngest(5 * kMiB, t0 + milliseconds(1000));
  pacer.NoteIngest(5 * kMiB, t0 + milliseconds(2000));
  EXPECT_NEAR(pacer.PaceAt(t0 + milliseconds(2000)), 2 * 10 * kMiB / 2.0, kMiB / 100);
  // Then 4 MiB every 100 ms (40 MiB/s), with a flush asking all along: within two windows the
  // pace is twice the new rate, measured over the last window.
  int64_t pace = 0;
  for (int i = 1; i <= 10; ++i) {
    const Clock::time_point t = t0 + milliseconds(2000 + 100 * i);
    pacer.NoteIngest(4 * kMiB, t);
    pace = pacer.PaceAt(t);
  }
  EXPECT_NEAR(pace, 2 * 40 * kMiB, kMiB / 100);
  // And it comes down again when the writes slow to 1 MiB/s.
  for (int i = 1; i <= 20; ++i) {
    const Clock::time_point t = t0 + milliseconds(3000 + 100 * i);
    pacer.NoteIngest(kMiB / 10, t);
    pace = pacer.PaceAt(t);
  }
  EXPECT_NEAR(pace, 2 * kMiB, kMiB / 100);
}

TEST(BackgroundWritePacerTest, RequestsWaitForThePace) {
  rocksdb::Env::IOPriority high = rocksdb::Env::IO_HIGH;
  Counter waited_us;
  BackgroundWritePacer::Options options = PacerOptions(4 * kMiB, milliseconds(60'000));
  options.waited_us = &waited_us;
  BackgroundWritePacer pacer(options);
  const int64_t burst = pacer.GetSingleBurstBytes();
  ASSERT_GT(burst, 0);
  ASSERT_LE(burst, kMiB);
  pacer.NoteIngest(1);  // a trickle: the floor, 4 MiB/s
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < 5; ++i) pacer.Request(burst, high, nullptr);
  // The first burst goes at once; each of the next four waits for the one before it.
  const double expected_us = 4.0 * burst * 1e6 / (4 * kMiB);
  const double elapsed_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  EXPECT_GE(elapsed_us, expected_us * 0.95);
  EXPECT_GE(waited_us.Value(), expected_us * 0.9);
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

TEST(BackgroundWritePacerTest, FlushesAndCompactionsArePacedApart) {
  Counter waited_us;
  BackgroundWritePacer::Options options = PacerOptions(kMiB, milliseconds(60'000));
  options.waited_us = &waited_us;
  BackgroundWritePacer pacer(options);
  pacer.NoteIngest(1);
  const int64_t burst = pacer.GetSingleBurstBytes();
  pacer.Request(burst, rocksdb::Env::IO_HIGH, nullptr);  // a flush: at once
  pacer.Request(burst, rocksdb::Env::IO_LOW, nullptr);   // a compaction: not behind the flush
  EXPECT_EQ(waited_us.Value(), 0u);
  pacer.Request(1, rocksdb::Env::IO_HIGH, nullptr);  // the flush's next: a burst's time later
  EXPECT_GE(waited_us.Value(), burst * 1e6 / kMiB * 0.9);
}

// Through the ledger: RocksDB's flushes of memtables filled by groups written meanwhile wait for
// the pace, and never when the pace is off.
uint64_t FlushWaitWhileWriting(double pace) {
  testing::TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.events_memtable_bytes = 1 << 20;  // a flush per ~1 MiB of events
  options.background_write_pace = pace;
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  if (ledger == nullptr) return 0;
  for (int i = 0; i < 60; ++i) {  // 60 x 100 events of ~1 KiB: several flushes
    testing::AppendCommand command("subject-" + std::to_string(i), 100, "test.appended.v1", 1000);
    CommandResult result = ledger->Submit(&command);
    EXPECT_TRUE(result.status.ok()) << result.status.ToString();
  }
  EXPECT_TRUE(ledger->WaitForBackgroundWork(60'000).ok());
  EXPECT_GT(ledger->metrics().table_bytes_flushed.Value(), 2u << 20);
  return ledger->metrics().background_write_waited_us.Value();
}

TEST(BackgroundWritePaceTest, FlushesDuringWritesWaitForThePace) {
  EXPECT_GT(FlushWaitWhileWriting(2.0), 0u);
}

TEST(BackgroundWritePaceTest, NegativeControlUnpacedFlushesNeverWait) {
  EXPECT_EQ(FlushWaitWhileWriting(0.0), 0u);
}

// Obsolete files are deleted by RocksDB's delete scheduler: renamed *.trash, then cut a MiB at a
// time, never unlinked whole (see kObsoleteFileDeleteBytesPerSecond in events/ledger.cc).
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
    if (name.ends_with(".log")) logs_unlinked_whole_.fetch_add(1);
    return rocksdb::FileSystemWrapper::DeleteFile(name, options, dbg);
  }
  int logs_to_trash() const { return logs_to_trash_.load(); }
  int logs_unlinked_whole() const { return logs_unlinked_whole_.load(); }

 private:
  std::atomic<int> logs_to_trash_{0};
  std::atomic<int> logs_unlinked_whole_{0};
};

int CountFiles(const std::string& dir, const std::string& extension) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == extension) ++n;
  }
  return n;
}

TEST(ObsoleteFileDeletionTest, LogsGoThroughTheTrashAndNoneIsLeft) {
  auto fs = std::make_shared<DeletionRecordingFs>();
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  testing::TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.env = env.get();
  options.events_memtable_bytes = 1 << 20;
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  for (int i = 0; i < 60; ++i) {  // ~6 MiB: a flush, and a new log, per MiB
    testing::AppendCommand command("subject-" + std::to_string(i), 100, "test.appended.v1", 1000);
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
  EXPECT_EQ(fs->logs_unlinked_whole(), 0);
  ledger.reset();
}

// A file the scheduler had not finished deleting when the process died is deleted by the next open.
TEST(ObsoleteFileDeletionTest, TrashLeftByACrashIsDeletedAtOpen) {
  testing::TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  ASSERT_NE(testing::OpenTestLedger(options), nullptr);
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
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  EXPECT_TRUE(testing::WaitFor([&] { return !std::filesystem::exists(trash); }));
}

}  // namespace
}  // namespace ledger
