// Power-loss tests: the ledger acknowledges a command only after its group is synced, so a power
// loss at any moment keeps every acknowledged event and idempotency record. FaultFs
// (tests/support/fault_fs.h) decides what survives; CheckDurability judges the reopened ledger.
// The negative control runs the same scenario with LedgerOptions.sync = false and must report
// lost acknowledged writes: that is what shows this test can fail.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "events/ledger.h"
#include "tests/support/durability.h"
#include "tests/support/fault_fs.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::CheckDurability;
using testing::ConcurrentLoad;
using testing::DurabilityReport;
using testing::FaultEnv;
using testing::FaultFs;
using testing::LoadOptions;
using testing::Outcome;
using testing::TempDir;

// ---------------------------------------------------------------------------------------------
// The model itself, on plain files.

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteAll(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << content;
}

struct ModelFixture {
  TempDir dir;
  FaultEnv fault;
  FaultFs* fs = fault.fs();
  rocksdb::IOOptions io;

  std::unique_ptr<rocksdb::FSWritableFile> Create(const std::string& name) {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    EXPECT_TRUE(fs->NewWritableFile(dir.Sub(name), rocksdb::FileOptions(), &file, nullptr).ok());
    return file;
  }
  void SyncDirectory() {
    std::unique_ptr<rocksdb::FSDirectory> d;
    ASSERT_TRUE(fs->NewDirectory(dir.path(), io, &d, nullptr).ok());
    ASSERT_TRUE(d->Fsync(io, nullptr).ok());
  }
  FaultFs::DropReport PowerLoss(FaultFs::DropMode mode = FaultFs::DropMode::kDropAll) {
    fs->CutPower();
    FaultFs::DropReport report;
    EXPECT_TRUE(fs->DropUnsyncedData(mode, 1, &report).ok());
    return report;
  }
};

TEST(PowerLossModelTest, KeepsTheSyncedPrefixAndDropsTheUnsyncedTail) {
  ModelFixture m;
  auto file = m.Create("data");
  m.SyncDirectory();
  ASSERT_TRUE(file->Append("synced|", m.io, nullptr).ok());
  ASSERT_TRUE(file->Sync(m.io, nullptr).ok());
  ASSERT_TRUE(file->Append("unsynced", m.io, nullptr).ok());
  ASSERT_TRUE(file->RangeSync(0, 15, m.io, nullptr).ok());  // not durable
  EXPECT_EQ(m.fs->UnsyncedBytes(), 8u);
  EXPECT_EQ(ReadAll(m.dir.Sub("data")), "synced|unsynced");  // the page cache has it all
  m.fs->CutPower();
  EXPECT_TRUE(file->Append("x", m.io, nullptr).IsIOError());
  EXPECT_TRUE(file->Sync(m.io, nullptr).IsIOError());
  ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  FaultFs::DropReport report;
  rocksdb::IOStatus dropped = m.fs->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &report);
  ASSERT_TRUE(dropped.ok()) << dropped.ToString();
  EXPECT_EQ(report.bytes_dropped, 8u);
  EXPECT_EQ(ReadAll(m.dir.Sub("data")), "synced|");
}

TEST(PowerLossModelTest, RandomPrefixModeKeepsAtLeastTheSyncedBytes) {
  ModelFixture m;
  constexpr int kFiles = 16;
  for (int i = 0; i < kFiles; ++i) {
    auto file = m.Create("data" + std::to_string(i));
    ASSERT_TRUE(file->Append("0123", m.io, nullptr).ok());
    ASSERT_TRUE(file->Fsync(m.io, nullptr).ok());
    ASSERT_TRUE(file->Append("456789", m.io, nullptr).ok());
    ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  }
  m.SyncDirectory();
  FaultFs::DropReport report = m.PowerLoss(FaultFs::DropMode::kKeepRandomPrefix);
  EXPECT_EQ(report.files_deleted, 0u);
  std::set<size_t> sizes;
  for (int i = 0; i < kFiles; ++i) {
    std::string left = ReadAll(m.dir.Sub("data" + std::to_string(i)));
    EXPECT_GE(left.size(), 4u);
    EXPECT_EQ(left, std::string("0123456789").substr(0, left.size()));
    sizes.insert(left.size());
  }
  EXPECT_GT(sizes.size(), 1u) << "the kept prefix should vary";
}

TEST(PowerLossModelTest, AFileWhoseDirectoryWasNeverSyncedDisappears) {
  ModelFixture m;
  auto file = m.Create("new");
  ASSERT_TRUE(file->Append("synced data", m.io, nullptr).ok());
  ASSERT_TRUE(file->Sync(m.io, nullptr).ok());
  ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  FaultFs::DropReport report = m.PowerLoss();
  EXPECT_EQ(report.files_deleted, 1u);
  EXPECT_FALSE(std::filesystem::exists(m.dir.Sub("new")));
}

TEST(PowerLossModelTest, ARenameWithoutADirectorySyncIsUndone) {
  ModelFixture m;
  WriteAll(m.dir.Sub("CURRENT"), "old");  // existed before: durable
  auto file = m.Create("CURRENT.tmp");
  ASSERT_TRUE(file->Append("new", m.io, nullptr).ok());
  ASSERT_TRUE(file->Sync(m.io, nullptr).ok());
  ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  ASSERT_TRUE(m.fs->RenameFile(m.dir.Sub("CURRENT.tmp"), m.dir.Sub("CURRENT"), m.io, nullptr).ok());
  EXPECT_EQ(ReadAll(m.dir.Sub("CURRENT")), "new");
  FaultFs::DropReport report = m.PowerLoss();
  EXPECT_EQ(report.renames_undone, 1u);
  EXPECT_EQ(ReadAll(m.dir.Sub("CURRENT")), "old");
  EXPECT_FALSE(std::filesystem::exists(m.dir.Sub("CURRENT.tmp")));  // its creation is undone too
}

TEST(PowerLossModelTest, ARenameFollowedByADirectorySyncSurvives) {
  ModelFixture m;
  WriteAll(m.dir.Sub("CURRENT"), "old");
  auto file = m.Create("CURRENT.tmp");
  ASSERT_TRUE(file->Append("new", m.io, nullptr).ok());
  ASSERT_TRUE(file->Sync(m.io, nullptr).ok());
  ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  ASSERT_TRUE(m.fs->RenameFile(m.dir.Sub("CURRENT.tmp"), m.dir.Sub("CURRENT"), m.io, nullptr).ok());
  m.SyncDirectory();
  FaultFs::DropReport report = m.PowerLoss();
  EXPECT_EQ(report.renames_undone, 0u);
  EXPECT_EQ(ReadAll(m.dir.Sub("CURRENT")), "new");
}

// A directory sync makes durable the entries that existed when it was called, not a file created
// while it is under way (here: held before it reaches the disk).
TEST(PowerLossModelTest, AFileCreatedDuringADirectorySyncNeedsASyncOfItsOwn) {
  ModelFixture m;
  auto early = m.Create("early");
  ASSERT_TRUE(early->Close(m.io, nullptr).ok());
  m.fs->HoldSyncs();
  std::thread sync([&m] { m.SyncDirectory(); });
  m.fs->WaitUntilASyncIsHeld();
  auto late = m.Create("late");
  ASSERT_TRUE(late->Close(m.io, nullptr).ok());
  m.fs->ReleaseSyncs();
  sync.join();
  FaultFs::DropReport report = m.PowerLoss();
  EXPECT_EQ(report.files_deleted, 1u);
  EXPECT_TRUE(std::filesystem::exists(m.dir.Sub("early")));
  EXPECT_FALSE(std::filesystem::exists(m.dir.Sub("late")));
}

TEST(PowerLossModelTest, InjectedFailuresWriteAndSyncNothing) {
  ModelFixture m;
  auto file = m.Create("data");
  m.fs->FailWritesAfter(2);
  EXPECT_TRUE(file->Append("a", m.io, nullptr).ok());
  EXPECT_TRUE(file->Append("b", m.io, nullptr).ok());
  EXPECT_TRUE(file->Append("c", m.io, nullptr).IsIOError());
  m.fs->FailWritesAfter(-1);
  m.fs->SetFailSyncs(true);
  EXPECT_TRUE(file->Sync(m.io, nullptr).IsIOError());
  EXPECT_EQ(m.fs->UnsyncedBytes(), 2u);
  m.fs->SetFailSyncs(false);
  EXPECT_TRUE(file->Sync(m.io, nullptr).ok());
  EXPECT_EQ(m.fs->UnsyncedBytes(), 0u);
  EXPECT_EQ(ReadAll(m.dir.Sub("data")), "ab");
}

// ---------------------------------------------------------------------------------------------
// The ledger under power loss.

struct CycleResult {
  DurabilityReport report;
  FaultFs::DropReport drop;
  size_t acknowledged = 0;  // in this cycle
  size_t failed = 0;        // in this cycle
  bool degraded = false;
};

enum class Trigger {
  kTimer,         // after a random number of acknowledgements plus a random delay
  kAfterAppends,  // right after a random append, before its sync: unsynced data exists
};

// One power-loss cycle over `path` (which may hold earlier cycles' data): open on a FaultFs, run
// concurrent submitters, cut the power at a random moment, close the ledger with the power off,
// drop what was not synced, reopen on the real file system and check everything acknowledged in
// this and the earlier cycles (`acknowledged` accumulates).
CycleResult RunPowerLossCycle(const std::string& path, bool sync, uint64_t seed, int cycle,
                              Trigger trigger, FaultFs::DropMode mode,
                              std::vector<Outcome>* acknowledged) {
  CycleResult result;
  std::mt19937_64 random(seed * 7919 + static_cast<uint64_t>(cycle));
  FaultEnv fault;
  {
    LedgerOptions options;
    options.path = path;
    options.env = fault.env();
    options.sync = sync;
    std::unique_ptr<Ledger> ledger;
    Status s = Ledger::Open(options, &ledger);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return result;

    LoadOptions load_options;
    load_options.seed = random();
    load_options.tag = "s" + std::to_string(seed) + "c" + std::to_string(cycle);
    if (trigger == Trigger::kAfterAppends) fault.fs()->CutPowerAfterAppends(20 + random() % 200);
    ConcurrentLoad load(ledger.get(), load_options);
    if (trigger == Trigger::kTimer) {
      load.WaitForAcknowledged(20 + random() % 300);
      std::this_thread::sleep_for(std::chrono::microseconds(random() % 3000));
      fault.fs()->CutPower();
    }
    load.Join();  // every submitter stops at its first failure
    std::vector<Outcome> acked = load.outcomes().Acknowledged();
    result.acknowledged = acked.size();
    result.failed = load.outcomes().Failed().size();
    acknowledged->insert(acknowledged->end(), acked.begin(), acked.end());
    for (const Outcome& o : load.outcomes().Failed()) {
      EXPECT_EQ(o.result.status.code(), Code::kUnavailable) << o.result.status.ToString();
      EXPECT_EQ(o.result.status.problem(), "storage_degraded");
    }
    result.degraded = ledger->Degraded();
    // Destroyed while the power is off: RocksDB's close can make nothing more durable.
  }
  rocksdb::IOStatus io = fault.fs()->DropUnsyncedData(mode, random(), &result.drop);
  EXPECT_TRUE(io.ok()) << io.ToString();

  LedgerOptions options;
  options.path = path;  // the real file system: the power is back
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << "reopen after power loss: " << s.ToString();
  if (!s.ok()) return result;
  result.report = CheckDurability(ledger.get(), *acknowledged);
  return result;
}

// Seeds to run: LEDGER_DURABILITY_SEEDS (default 3) for longer soak runs.
uint64_t SeedCount() {
  const char* value = std::getenv("LEDGER_DURABILITY_SEEDS");
  return value != nullptr && std::atoi(value) > 0 ? static_cast<uint64_t>(std::atoi(value)) : 3;
}

TEST(PowerLossTest, EveryAcknowledgedWriteSurvivesAPowerLossAtARandomMoment) {
  const uint64_t kSeeds = SeedCount();
  constexpr int kCyclesPerSeed = 2;
  uint64_t bytes_dropped = 0, unacknowledged_tail = 0;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    TempDir dir;
    std::vector<Outcome> acknowledged;
    for (int cycle = 0; cycle < kCyclesPerSeed; ++cycle) {
      SCOPED_TRACE("seed " + std::to_string(seed) + " cycle " + std::to_string(cycle));
      // Every combination of trigger and of losing all unsynced bytes / keeping a torn prefix.
      Trigger trigger = cycle % 2 == 0 ? Trigger::kAfterAppends : Trigger::kTimer;
      auto mode =
          seed % 2 == 0 ? FaultFs::DropMode::kDropAll : FaultFs::DropMode::kKeepRandomPrefix;
      CycleResult r =
          RunPowerLossCycle(dir.path(), /*sync=*/true, seed, cycle, trigger, mode, &acknowledged);
      EXPECT_TRUE(r.degraded) << "the power cut must fail a write and degrade the ledger";
      EXPECT_GT(r.acknowledged, 0u);
      EXPECT_GT(r.failed, 0u);
      EXPECT_TRUE(r.report.ok()) << r.report.Summary() << "\n  drop: " << r.drop.ToString();
      EXPECT_GE(r.report.head, r.report.max_acknowledged);
      bytes_dropped += r.drop.bytes_dropped;
      unacknowledged_tail += r.report.head.value() - r.report.max_acknowledged.value();
      if (HasFailure()) return;
    }
  }
  std::cout << "[ power loss ] unsynced bytes dropped " << bytes_dropped
            << ", recovered unacknowledged events " << unacknowledged_tail << std::endl;
  // The model was exercised: some power cuts found written but unsynced data to drop.
  EXPECT_GT(bytes_dropped, 0u);
}

// Negative control: without the fsync the same scenario must lose acknowledged writes, and the
// checker must say so. If this test fails, the power-loss test above proves nothing.
TEST(PowerLossTest, NegativeControlWithoutSyncLosesAcknowledgedWrites) {
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    TempDir dir;
    std::vector<Outcome> acknowledged;
    Trigger trigger = seed % 2 == 0 ? Trigger::kAfterAppends : Trigger::kTimer;
    CycleResult r = RunPowerLossCycle(dir.path(), /*sync=*/false, seed, 0, trigger,
                                      FaultFs::DropMode::kDropAll, &acknowledged);
    EXPECT_GT(r.acknowledged, 0u);
    EXPECT_GT(r.drop.bytes_dropped + r.drop.files_deleted, 0u) << r.drop.ToString();
    EXPECT_TRUE(r.report.LostAcknowledgedWrites())
        << "sync=false was not detected: " << r.report.Summary();
    EXPECT_GT(r.report.lost, 0u);
    std::cout << "[ negative control ] " << r.acknowledged << " acknowledged, checker: lost "
              << r.report.lost << " acknowledged results, " << r.report.idempotency_lost
              << " idempotency records; drop: " << r.drop.ToString() << std::endl;
  }
}

}  // namespace
}  // namespace ledger
