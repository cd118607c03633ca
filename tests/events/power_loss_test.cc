// Power-loss tests: the ledger acknowledges a command only after its group is synced, so a power
// loss at any moment keeps every acknowledged event and idempotency record. FaultFs
// (tests/support/fault_fs.h) decides what survives; CheckDurability judges the reopened ledger,
// and its fold's rows are compared with those rebuilt from its log. The negative control runs the
// same scenario with LedgerOptions.sync = false and must report lost acknowledged writes, in every
// drop mode: that is what shows this test can fail.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "events/fold.h"
#include "events/ledger.h"
#include "tests/support/durability.h"
#include "tests/support/fault_fs.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

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

// A torn write as ext4 shows it: the file keeps its size; a random prefix of the unsynced tail is
// there and the rest reads back as zeros, at least kZeroTailBytesMin of them (all of a shorter
// tail).
TEST(PowerLossModelTest, ZeroFillModeKeepsTheSizeAndZeroesTheLostTail) {
  ModelFixture m;
  constexpr int kFiles = 16;
  const std::string tail(100, 'x');
  for (int i = 0; i <= kFiles; ++i) {
    auto file = m.Create("data" + std::to_string(i));
    ASSERT_TRUE(file->Append("0123", m.io, nullptr).ok());
    ASSERT_TRUE(file->Fsync(m.io, nullptr).ok());
    // The last file's unsynced tail is shorter than kZeroTailBytesMin.
    ASSERT_TRUE(file->Append(i < kFiles ? tail : "abc", m.io, nullptr).ok());
    ASSERT_TRUE(file->Close(m.io, nullptr).ok());
  }
  m.SyncDirectory();
  FaultFs::DropReport report = m.PowerLoss(FaultFs::DropMode::kZeroFillTail);
  EXPECT_EQ(report.files_truncated, 0u);
  EXPECT_EQ(report.files_zero_filled, static_cast<size_t>(kFiles + 1));
  std::set<size_t> kept;
  for (int i = 0; i < kFiles; ++i) {
    const std::string left = ReadAll(m.dir.Sub("data" + std::to_string(i)));
    ASSERT_EQ(left.size(), 104u);
    const size_t zeros_from = left.find('\0');
    ASSERT_NE(zeros_from, std::string::npos);
    EXPECT_GE(zeros_from, 4u);
    EXPECT_LE(zeros_from, 104 - FaultFs::kZeroTailBytesMin);
    EXPECT_EQ(left.substr(0, zeros_from), ("0123" + tail).substr(0, zeros_from));
    EXPECT_EQ(left.substr(zeros_from), std::string(104 - zeros_from, '\0'));
    kept.insert(zeros_from);
  }
  EXPECT_GT(kept.size(), 1u) << "the kept prefix should vary";
  EXPECT_EQ(ReadAll(m.dir.Sub("data" + std::to_string(kFiles))), std::string("0123\0\0\0", 7));
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

// Counts events: row "total", and "subject/<subject>". Every group reads and rewrites "total": a
// group decided while earlier ones wait for the write thread reads it from their unwritten rows.
class CountingFold final : public Fold {
 public:
  std::string_view Name() const override { return "counts"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override {
    for (const std::string& key : {std::string("total"), "subject/" + event.subject}) {
      std::string value;
      Status s = state.Get(Name(), key, &value);
      if (!s.ok() && !s.IsNotFound()) return s;
      const uint64_t count = s.ok() ? std::stoull(value) : 0;
      LEDGER_RETURN_IF_ERROR(rows->Put(Name(), key, std::to_string(count + 1)));
    }
    return Status::OK();
  }
};

const CountingFold kCounts;

struct CycleResult {
  DurabilityReport report;
  FaultFs::DropReport drop;
  size_t acknowledged = 0;  // in this cycle
  size_t failed = 0;        // in this cycle
  bool degraded = false;
  uint64_t counted = 0;     // the fold's "total" row after the reopen
  bool projections_rebuild_the_same = false;
  size_t logs_set_aside = 0;  // files the reopen copied to torn-wal/ (a torn tail cut, a gap)
};

enum class Trigger {
  kTimer,         // after a random number of acknowledgements plus a random delay
  kAfterAppends,  // right after a random append, before its sync: unsynced data exists
};

struct CycleOptions {
  bool sync = true;
  Trigger trigger = Trigger::kAfterAppends;
  FaultFs::DropMode mode = FaultFs::DropMode::kDropAll;
  // ledgerd's pacing of syncs (kSyncIntervalMinDefault) and every group written by the write
  // thread (write_thread_entries_min = 0) while the committer decides the next ones; else the
  // library's defaults (a sync as soon as a group is written; these small groups are written by
  // the committer).
  bool pipelined = false;
  bool rebuild_projections = true;  // ProjectionsRebuildTheSame after the reopen
};

size_t FilesIn(const std::string& dir) {
  std::error_code ec;
  size_t count = 0;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    ++count;
  }
  return count;
}

// Whether `recovered`'s fold rows are what its log folds to: every event read back and imported
// into a fresh store with the same fold, and the two ProjectionDigests compared. A group's events
// and rows are one WAL record; a recovery that kept one without the other would differ.
bool ProjectionsRebuildTheSame(Ledger* recovered) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.folds = {&kCounts};
  options.sync = false;
  std::unique_ptr<Ledger> rebuilt = testing::OpenTestLedger(options);
  if (rebuilt == nullptr) return false;
  std::vector<Event> events;
  for (Position after(0);; after = events.back().position) {
    Status s = recovered->ReadEvents(after, 1000, {}, &events);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return false;
    if (events.empty()) break;
    s = rebuilt->ImportEvents(events);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return false;
  }
  Hash want{}, got{};
  return recovered->ProjectionDigest(&got).ok() && rebuilt->ProjectionDigest(&want).ok() &&
         got == want;
}

// One power-loss cycle over `path` (which may hold earlier cycles' data): open on a FaultFs, run
// concurrent submitters, cut the power at a random moment, close the ledger with the power off,
// drop what was not synced, reopen on the real file system and check everything acknowledged in
// this and the earlier cycles (`acknowledged` accumulates), and the fold's rows against the log.
CycleResult RunPowerLossCycle(const std::string& path, const CycleOptions& cycle_options,
                              uint64_t seed, int cycle, std::vector<Outcome>* acknowledged) {
  CycleResult result;
  std::mt19937_64 random(seed * 7919 + static_cast<uint64_t>(cycle));
  FaultEnv fault;
  {
    LedgerOptions options;
    options.path = path;
    options.env = fault.env();
    options.sync = cycle_options.sync;
    options.folds = {&kCounts};
    if (cycle_options.pipelined) {
      options.sync_interval_min = kSyncIntervalMinDefault;
      options.write_thread_entries_min = 0;
    }
    std::unique_ptr<Ledger> ledger;
    Status s = Ledger::Open(options, &ledger);
    EXPECT_TRUE(s.ok()) << s.ToString();
    if (!s.ok()) return result;

    LoadOptions load_options;
    load_options.seed = random();
    load_options.tag = "s" + std::to_string(seed) + "c" + std::to_string(cycle);
    if (cycle_options.trigger == Trigger::kAfterAppends) {
      fault.fs()->CutPowerAfterAppends(20 + random() % 200);
    }
    ConcurrentLoad load(ledger.get(), load_options);
    if (cycle_options.trigger == Trigger::kTimer) {
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
  rocksdb::IOStatus io = fault.fs()->DropUnsyncedData(cycle_options.mode, random(), &result.drop);
  EXPECT_TRUE(io.ok()) << io.ToString();

  const size_t set_aside_before = FilesIn(path + "/torn-wal");
  LedgerOptions options;
  options.path = path;  // the real file system: the power is back
  options.folds = {&kCounts};
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << "reopen after power loss: " << s.ToString();
  if (!s.ok()) return result;
  result.logs_set_aside = FilesIn(path + "/torn-wal") - set_aside_before;
  result.report = CheckDurability(ledger.get(), *acknowledged);
  std::string total;
  if (ledger->Snapshot()->Get(kCounts.Name(), "total", &total).ok()) {
    result.counted = std::stoull(total);
  }
  if (cycle_options.rebuild_projections) {
    result.projections_rebuild_the_same = ProjectionsRebuildTheSame(ledger.get());
  }
  return result;
}

// Seeds to run: LEDGER_DURABILITY_SEEDS (default 3) for longer soak runs.
uint64_t SeedCount() {
  const char* value = std::getenv("LEDGER_DURABILITY_SEEDS");
  return value != nullptr && std::atoi(value) > 0 ? static_cast<uint64_t>(std::atoi(value)) : 3;
}

const char* ModeName(FaultFs::DropMode mode) {
  switch (mode) {
    case FaultFs::DropMode::kDropAll: return "drop all";
    case FaultFs::DropMode::kKeepRandomPrefix: return "keep a random prefix";
    case FaultFs::DropMode::kZeroFillTail: return "zero-fill the tail";
  }
  return "?";
}

constexpr FaultFs::DropMode kModes[] = {FaultFs::DropMode::kDropAll,
                                        FaultFs::DropMode::kKeepRandomPrefix,
                                        FaultFs::DropMode::kZeroFillTail};

TEST(PowerLossTest, EveryAcknowledgedWriteSurvivesAPowerLossAtARandomMoment) {
  const uint64_t kSeeds = SeedCount();
  constexpr int kCyclesPerSeed = 2;
  uint64_t bytes_dropped = 0, unacknowledged_tail = 0;
  size_t zero_filled = 0, logs_set_aside = 0;
  for (uint64_t seed = 1; seed <= kSeeds; ++seed) {
    TempDir dir;
    std::vector<Outcome> acknowledged;
    // Every drop mode (one per seed) with both triggers and both writer shapes (per cycle).
    CycleOptions cycle_options;
    cycle_options.mode = kModes[seed % 3];
    for (int cycle = 0; cycle < kCyclesPerSeed; ++cycle) {
      cycle_options.trigger = cycle % 2 == 0 ? Trigger::kAfterAppends : Trigger::kTimer;
      cycle_options.pipelined = (seed + static_cast<uint64_t>(cycle)) % 2 == 1;
      SCOPED_TRACE("seed " + std::to_string(seed) + " cycle " + std::to_string(cycle) + " (" +
                   ModeName(cycle_options.mode) +
                   (cycle_options.pipelined ? ", pipelined)" : ")"));
      CycleResult r = RunPowerLossCycle(dir.path(), cycle_options, seed, cycle, &acknowledged);
      EXPECT_TRUE(r.degraded) << "the power cut must fail a write and degrade the ledger";
      EXPECT_GT(r.acknowledged, 0u);
      EXPECT_GT(r.failed, 0u);
      EXPECT_TRUE(r.report.ok()) << r.report.Summary() << "\n  drop: " << r.drop.ToString();
      EXPECT_GE(r.report.head, r.report.max_acknowledged);
      EXPECT_EQ(r.counted, r.report.head.value()) << "the fold did not count every event";
      EXPECT_TRUE(r.projections_rebuild_the_same)
          << "the recovered fold rows differ from those rebuilt from the recovered log";
      bytes_dropped += r.drop.bytes_dropped;
      zero_filled += r.drop.files_zero_filled;
      logs_set_aside += r.logs_set_aside;
      unacknowledged_tail += r.report.head.value() - r.report.max_acknowledged.value();
      if (HasFailure()) return;
    }
  }
  std::cout << "[ power loss ] unsynced bytes dropped " << bytes_dropped << " (" << zero_filled
            << " files zero-filled), logs set aside by the reopen " << logs_set_aside
            << ", recovered unacknowledged events " << unacknowledged_tail << std::endl;
  // The model was exercised: some power cuts found written but unsynced data to drop.
  EXPECT_GT(bytes_dropped, 0u);
}

// Negative control: without the fsync the same scenario must lose acknowledged writes, in every
// drop mode, and the checker must say so. If this test fails, the power-loss test above proves
// nothing. Dropping every unsynced byte loses every acknowledged write of the cycle; a random
// prefix (torn, or zero-filled after it) can by chance keep them all -- it ends after the last
// acknowledged group with a probability of about one in the number of groups -- so of those
// modes' two runs at least one must lose some.
TEST(PowerLossTest, NegativeControlWithoutSyncLosesAcknowledgedWrites) {
  for (FaultFs::DropMode mode : kModes) {
    int detected = 0;
    for (uint64_t seed = 1; seed <= 2; ++seed) {
      SCOPED_TRACE(std::string(ModeName(mode)) + ", seed " + std::to_string(seed));
      TempDir dir;
      std::vector<Outcome> acknowledged;
      CycleOptions cycle_options;
      cycle_options.sync = false;
      cycle_options.trigger = seed % 2 == 0 ? Trigger::kAfterAppends : Trigger::kTimer;
      cycle_options.mode = mode;
      cycle_options.pipelined = seed % 2 == 1;
      cycle_options.rebuild_projections = false;
      CycleResult r = RunPowerLossCycle(dir.path(), cycle_options, seed, 0, &acknowledged);
      EXPECT_GT(r.acknowledged, 0u);
      EXPECT_GT(r.drop.bytes_dropped + r.drop.files_deleted, 0u) << r.drop.ToString();
      if (r.report.LostAcknowledgedWrites()) ++detected;
      if (mode == FaultFs::DropMode::kDropAll) {
        EXPECT_TRUE(r.report.LostAcknowledgedWrites())
            << "sync=false was not detected: " << r.report.Summary();
      }
      std::cout << "[ negative control ] " << ModeName(mode) << ": " << r.acknowledged
                << " acknowledged, checker: lost " << r.report.lost
                << " acknowledged results, " << r.report.idempotency_lost
                << " idempotency records; drop: " << r.drop.ToString() << std::endl;
    }
    EXPECT_GE(detected, 1) << ModeName(mode) << ": sync=false was not detected";
  }
}

// Negative control of the projection check: a fold row its log does not explain (written behind
// the ledger's back) is found.
TEST(PowerLossTest, NegativeControlAFoldRowTheLogDoesNotExplainIsFound) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.folds = {&kCounts};
  {
    std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
    ASSERT_NE(ledger, nullptr);
    testing::AppendCommand command("alice", 3);
    ASSERT_TRUE(ledger->Submit(&command).status.ok());
    EXPECT_TRUE(ProjectionsRebuildTheSame(ledger.get()));
  }
  testing::EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* counts = testing::FindFamily(names, handles, "counts");
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), counts, "subject/alice", "4").ok());
  });
  std::unique_ptr<Ledger> ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  EXPECT_FALSE(ProjectionsRebuildTheSame(ledger.get()));
}

}  // namespace
}  // namespace ledger
