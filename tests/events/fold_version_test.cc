// Fold versions: a fold whose logic changed is rebuilt from the log at open.
//
// The scenario: a fold's Apply changes (the usage counter's keys, a row the new logic no longer
// writes) and the new binary opens a store the old one wrote. Without a version the old rows
// stayed -- counters under their old keys, rows the new logic never writes -- and the live
// projection differed from `ledgerctl replay`'s. Fold::Version() and the version the store
// records beside the fold's checkpoint make the open delete the fold's rows and fold the whole
// log again, and leave every other fold as it was.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <rocksdb/db.h>

#include "events/coding.h"
#include "events/ledger.h"
#include "tests/support/fault_fs.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::FaultEnv;
using testing::FaultFs;
using testing::SubjectsCommand;
using testing::TempDir;

using Rows = std::vector<std::pair<std::string, std::string>>;

// Counts events per subject. Version 1 keeps the count of <subject> under "count/<subject>" and
// the last subject under "last"; version 2 keys counts "n/<subject>", values "<count> v2", and
// keeps no "last" row: every kind of row a changed fold can leave behind (a moved key, a row
// the new logic never writes). It counts its Apply calls, and can fail at one position (a crash
// in the middle of a rebuild: what was written before the failure stays, nothing after it).
class CountFold final : public Fold {
 public:
  explicit CountFold(uint32_t version, uint64_t fail_at = 0)
      : version_(version), fail_at_(fail_at) {}
  std::string_view Name() const override { return "counts"; }
  uint32_t Version() const override { return version_; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override {
    applied.fetch_add(1);
    if (event.position.value() == fail_at_) return Status::IOError("injected: the power went");
    const std::string key = (version_ == 1 ? "count/" : "n/") + event.subject;
    std::string value;
    Status s = state.Get(Name(), key, &value);
    if (!s.ok() && !s.IsNotFound()) return s;
    const uint64_t count = s.ok() ? std::stoull(value) : 0;
    LEDGER_RETURN_IF_ERROR(
        rows->Put(Name(), key, std::to_string(count + 1) + (version_ == 1 ? "" : " v2")));
    return version_ == 1 ? rows->Put(Name(), "last", event.subject) : Status::OK();
  }
  mutable std::atomic<uint64_t> applied{0};

 private:
  uint32_t version_;
  uint64_t fail_at_;
};

// A fold that does not change: marks every subject it sees.
class MarkFold final : public Fold {
 public:
  std::string_view Name() const override { return "marks"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    applied.fetch_add(1);
    return rows->Put("marks", event.subject, "1");
  }
  mutable std::atomic<uint64_t> applied{0};
};

std::unique_ptr<Ledger> Open(const std::string& path, std::vector<const Fold*> folds) {
  LedgerOptions options;
  options.path = path;
  options.folds = std::move(folds);
  return testing::OpenTestLedger(options);
}

// `count` events over 7 subjects, 500 to a command.
void Append(Ledger* ledger, size_t count) {
  for (size_t done = 0; done < count;) {
    std::vector<std::string> subjects;
    for (; subjects.size() < 500 && done < count; ++done) {
      subjects.push_back("u" + std::to_string(done % 7));
    }
    SubjectsCommand command(std::move(subjects));
    CommandResult r = ledger->Submit(&command);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }
}

Rows FamilyRows(const Ledger& ledger, std::string_view family) {
  Rows rows;
  Status s = ledger.Snapshot()->Scan(family, "", [&](std::string_view key, std::string_view value) {
    rows.emplace_back(key, value);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return rows;
}

std::vector<Event> AllEvents(const Ledger& ledger) {
  std::vector<Event> events, page;
  do {
    page.clear();
    Position after = events.empty() ? Position(0) : events.back().position;
    EXPECT_TRUE(ledger.ReadEvents(after, 1000, {}, &page).ok());
    events.insert(events.end(), page.begin(), page.end());
  } while (!page.empty());
  return events;
}

// What `fold` folds from position 1 of `events` in a fresh store (what `ledgerctl replay` builds).
Rows FreshRows(const std::vector<Event>& events, const Fold& fold) {
  TempDir dir;
  auto ledger = Open(dir.path(), {&fold});
  EXPECT_NE(ledger, nullptr);
  if (ledger == nullptr) return {};
  Status s = ledger->ImportEvents(events);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return FamilyRows(*ledger, fold.Name());
}

Position Checkpoint(const Ledger& ledger, std::string_view fold) {
  Position position;
  EXPECT_TRUE(ledger.GetCheckpoint("fold." + std::string(fold), &position).ok());
  return position;
}

// Writes to the store with RocksDB alone (what a store written before fold versions holds, or
// rows no current fold would write).
void EditRaw(const std::string& path,
             const std::function<void(rocksdb::DB*, rocksdb::ColumnFamilyHandle* checkpoints,
                                      rocksdb::ColumnFamilyHandle* counts)>& edit) {
  std::vector<std::string> names;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) {
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(), path, descriptors, &handles, &db);
  ASSERT_TRUE(s.ok()) << s.ToString();
  rocksdb::ColumnFamilyHandle* checkpoints = nullptr;
  rocksdb::ColumnFamilyHandle* counts = nullptr;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == "checkpoints") checkpoints = handles[i];
    if (names[i] == "counts") counts = handles[i];
  }
  ASSERT_NE(checkpoints, nullptr);
  ASSERT_NE(counts, nullptr);
  edit(db, checkpoints, counts);
  for (auto* handle : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
  ASSERT_TRUE(db->Close().ok());
  delete db;
}

uint32_t RecordedVersion(const Ledger& ledger, std::string_view fold) {
  uint32_t version = 0;
  Status s = ledger.GetFoldVersion(fold, &version);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return version;
}

TEST(FoldVersionTest, AChangedFoldIsRebuiltFromTheLogAndTheOthersAreLeftAlone) {
  TempDir dir;
  CountFold v1(1);
  MarkFold marks;
  {
    auto ledger = Open(dir.path(), {&v1, &marks});
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 2500));
    EXPECT_EQ(RecordedVersion(*ledger, "counts"), 1u);
    EXPECT_EQ(FamilyRows(*ledger, "counts").size(), 8u);  // 7 counts and "last"
  }
  const Rows marks_before = [&] {
    auto ledger = Open(dir.path(), {&v1, &marks});
    return ledger == nullptr ? Rows{} : FamilyRows(*ledger, "marks");
  }();
  ASSERT_EQ(marks_before.size(), 7u);

  CountFold v2(2);
  marks.applied = 0;
  auto ledger = Open(dir.path(), {&v2, &marks});
  ASSERT_NE(ledger, nullptr);
  const std::vector<Event> events = AllEvents(*ledger);
  ASSERT_EQ(events.size(), 2500u);
  CountFold fresh(2);
  // Exactly a fresh fold's rows: no "count/" counter and no "last" row left from version 1.
  const Rows rebuilt = FamilyRows(*ledger, "counts");
  EXPECT_EQ(rebuilt, FreshRows(events, fresh));
  EXPECT_EQ(rebuilt.size(), 7u);
  EXPECT_EQ(v2.applied.load(), 2500u);
  EXPECT_EQ(RecordedVersion(*ledger, "counts"), 2u);
  EXPECT_EQ(Checkpoint(*ledger, "counts").value(), 2500u);
  // The unchanged fold: not folded again, its checkpoint and rows as they were.
  EXPECT_EQ(marks.applied.load(), 0u);
  EXPECT_EQ(Checkpoint(*ledger, "marks").value(), 2500u);
  EXPECT_EQ(FamilyRows(*ledger, "marks"), marks_before);
  EXPECT_EQ(RecordedVersion(*ledger, "marks"), 1u);

  // The writer goes on with version 2's rows; the next open with it rebuilds nothing.
  ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 10));
  ledger.reset();
  v2.applied = 0;
  ledger = Open(dir.path(), {&v2, &marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(v2.applied.load(), 0u);
  EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(AllEvents(*ledger), fresh));
}

// Several folds to rebuild at one open (a build that changed more than one, or a store written
// before fold versions) are rebuilt in one pass over the log: each event is read once and applied
// to each of them. They were rebuilt one after the other, each reading the whole log again (a
// build that changed five folds read a long log five times before it served). A fold that is only
// behind the head is folded in the same pass, from its own checkpoint.
TEST(FoldVersionTest, TheFoldsToRebuildAreRebuiltInOnePassOverTheLog) {
  TempDir dir;
  CountFold v1(1);
  MarkFold marks;
  {
    auto ledger = Open(dir.path(), {&v1, &marks});
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 2500));
  }
  // Version 2 of counts, and marks with no recorded version: both are rebuilt.
  ASSERT_NO_FATAL_FAILURE(EditRaw(dir.path(), [](rocksdb::DB* db, auto* checkpoints, auto*) {
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.marks").ok());
  }));
  CountFold v2(2);
  marks.applied = 0;
  auto ledger = Open(dir.path(), {&v2, &marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->metrics().catch_up_events_read.Value(), 2500u);
  EXPECT_EQ(v2.applied.load(), 2500u);
  EXPECT_EQ(marks.applied.load(), 2500u);
  const std::vector<Event> events = AllEvents(*ledger);
  CountFold fresh(2);
  MarkFold fresh_marks;
  EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(events, fresh));
  EXPECT_EQ(FamilyRows(*ledger, "marks"), FreshRows(events, fresh_marks));
  EXPECT_EQ(Checkpoint(*ledger, "counts").value(), 2500u);
  EXPECT_EQ(Checkpoint(*ledger, "marks").value(), 2500u);
  EXPECT_EQ(RecordedVersion(*ledger, "counts"), 2u);
  EXPECT_EQ(RecordedVersion(*ledger, "marks"), 1u);

  // counts to rebuild again (no version), marks current but 500 events behind.
  ledger.reset();
  ASSERT_NO_FATAL_FAILURE(EditRaw(dir.path(), [](rocksdb::DB* db, auto* checkpoints, auto*) {
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.counts").ok());
    std::string position;
    PutFixed64BE(&position, 2000);
    ASSERT_TRUE(db->Put({}, checkpoints, "fold.marks", position).ok());
  }));
  v2.applied = 0;
  marks.applied = 0;
  ledger = Open(dir.path(), {&v2, &marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->metrics().catch_up_events_read.Value(), 2500u);
  EXPECT_EQ(v2.applied.load(), 2500u);
  EXPECT_EQ(marks.applied.load(), 500u);
  EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(events, fresh));
  EXPECT_EQ(FamilyRows(*ledger, "marks"), FreshRows(events, fresh_marks));
  EXPECT_EQ(Checkpoint(*ledger, "marks").value(), 2500u);
  EXPECT_EQ(RecordedVersion(*ledger, "counts"), 2u);
}

// A store written before fold versions has rows but no recorded version: each fold is rebuilt
// once (rows the fold never writes, like the phantom rows an older fold left, go), and the next
// open leaves it alone.
TEST(FoldVersionTest, AStoreWithoutRecordedVersionsIsRebuiltOnce) {
  TempDir dir;
  CountFold v1(1);
  MarkFold marks;
  {
    auto ledger = Open(dir.path(), {&v1, &marks});
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 1200));
  }
  ASSERT_NO_FATAL_FAILURE(EditRaw(dir.path(), [](rocksdb::DB* db, auto* checkpoints, auto* counts) {
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.counts").ok());
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.marks").ok());
    ASSERT_TRUE(db->Put({}, counts, "phantom/admin", "1").ok());
    ASSERT_TRUE(db->Put({}, counts, "~after-every-row", "1").ok());
  }));

  v1.applied = 0;
  marks.applied = 0;
  {
    auto ledger = Open(dir.path(), {&v1, &marks});
    ASSERT_NE(ledger, nullptr);
    const std::vector<Event> events = AllEvents(*ledger);
    CountFold fresh(1);
    MarkFold fresh_marks;
    EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(events, fresh));
    EXPECT_EQ(FamilyRows(*ledger, "marks"), FreshRows(events, fresh_marks));
    EXPECT_EQ(v1.applied.load(), 1200u);
    EXPECT_EQ(marks.applied.load(), 1200u);
    EXPECT_EQ(RecordedVersion(*ledger, "counts"), 1u);
    EXPECT_EQ(RecordedVersion(*ledger, "marks"), 1u);
  }
  // Once: a row put behind the fold's back now stays (nothing is scanned or folded at open).
  ASSERT_NO_FATAL_FAILURE(EditRaw(dir.path(), [](rocksdb::DB* db, auto*, auto* counts) {
    ASSERT_TRUE(db->Put({}, counts, "phantom/again", "1").ok());
  }));
  v1.applied = 0;
  marks.applied = 0;
  auto ledger = Open(dir.path(), {&v1, &marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(v1.applied.load(), 0u);
  EXPECT_EQ(marks.applied.load(), 0u);
  std::string value;
  EXPECT_TRUE(ledger->Snapshot()->Get("counts", "phantom/again", &value).ok());
}

// A crash in the middle of a rebuild (after the stale rows were deleted and some of the log
// folded, before the end) leaves no recorded version: the next open rebuilds from position 1
// again rather than taking the half-folded rows as the fold's -- also when the binary that opens
// it is the previous one (a rollback after the failed start), whose version the store no longer
// claims to hold.
TEST(FoldVersionTest, ACrashInTheMiddleOfARebuildRebuildsAgainAtTheNextOpen) {
  for (const bool rollback : {false, true}) {
    SCOPED_TRACE(rollback ? "reopened by the previous version" : "reopened by the new version");
    TempDir dir;
    CountFold v1(1);
    {
      auto ledger = Open(dir.path(), {&v1});
      ASSERT_NE(ledger, nullptr);
      ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 2500));
    }
    {
      CountFold failing(2, /*fail_at=*/2200);  // two batches of the catch-up are written
      LedgerOptions options;
      options.path = dir.path();
      options.folds = {&failing};
      std::unique_ptr<Ledger> ledger;
      Status s = Ledger::Open(options, &ledger);
      ASSERT_FALSE(s.ok());
      EXPECT_EQ(failing.applied.load(), 2200u);
    }
    {
      // What the failed open left: half of the log folded, and no version.
      LedgerOptions options;
      options.path = dir.path();
      options.read_only = true;
      std::unique_ptr<Ledger> ledger;
      ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
      EXPECT_EQ(Checkpoint(*ledger, "counts").value(), 2000u);
      uint32_t version = 0;
      EXPECT_TRUE(ledger->GetFoldVersion("counts", &version).IsNotFound());
    }
    CountFold reopened(rollback ? 1 : 2);
    auto ledger = Open(dir.path(), {&reopened});
    ASSERT_NE(ledger, nullptr);
    EXPECT_EQ(reopened.applied.load(), 2500u);  // from position 1, not from the checkpoint
    CountFold fresh(rollback ? 1 : 2);
    EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(AllEvents(*ledger), fresh));
    EXPECT_EQ(RecordedVersion(*ledger, "counts"), rollback ? 1u : 2u);
  }
}

// Sets `*cancel` when it folds position `at` (ledgerd's SIGTERM in the middle of a catch-up).
class CancellingFold final : public Fold {
 public:
  CancellingFold(std::atomic<bool>* cancel, uint64_t at) : cancel_(cancel), at_(at) {}
  std::string_view Name() const override { return "marks"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    applied.fetch_add(1);
    if (event.position.value() == at_) cancel_->store(true);
    return rows->Put("marks", event.subject, "1");
  }
  mutable std::atomic<uint64_t> applied{0};

 private:
  std::atomic<bool>* cancel_;
  uint64_t at_;
};

// A cancelled open (ledgerd's SIGTERM during its startup) stops between two batches of the
// catch-up: it answers open_cancelled, keeps what it folded, and the next open goes on from there
// (as after a crash: a fold being rebuilt would start over).
// Before the flag a signal waited for the whole catch-up, then for the port to open.
TEST(FoldVersionTest, ACancelledOpenStopsBetweenBatchesAndTheNextOpenGoesOn) {
  TempDir dir;
  {
    MarkFold marks;  // its version recorded: a fold behind, not one being rebuilt
    ASSERT_NE(Open(dir.path(), {&marks}), nullptr);
  }
  {
    auto ledger = Open(dir.path(), {});  // "marks" falls behind from position 1
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 3500));
  }
  {
    std::atomic<bool> cancel{false};
    CancellingFold cancelling(&cancel, /*at=*/1500);  // in the second batch: 1001..2000
    LedgerOptions options;
    options.path = dir.path();
    options.folds = {&cancelling};
    options.cancel = &cancel;
    std::unique_ptr<Ledger> ledger;
    Status s = Ledger::Open(options, &ledger);
    EXPECT_EQ(s.problem(), "open_cancelled") << s.ToString();
    EXPECT_EQ(ledger, nullptr);
    EXPECT_EQ(cancelling.applied.load(), 2000u) << "the batch under way is finished, no other";
  }
  {
    // A flag set before the open: nothing is folded.
    std::atomic<bool> cancel{true};
    MarkFold marks;
    LedgerOptions options;
    options.path = dir.path();
    options.folds = {&marks};
    options.cancel = &cancel;
    std::unique_ptr<Ledger> ledger;
    EXPECT_EQ(Ledger::Open(options, &ledger).problem(), "open_cancelled");
    EXPECT_EQ(marks.applied.load(), 0u);
  }
  MarkFold marks;
  auto ledger = Open(dir.path(), {&marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(marks.applied.load(), 1500u);  // from the checkpoint the cancelled open wrote
  EXPECT_EQ(Checkpoint(*ledger, "marks").value(), 3500u);
  MarkFold fresh;
  EXPECT_EQ(FamilyRows(*ledger, "marks"), FreshRows(AllEvents(*ledger), fresh));
}

// The same when two folds are rebuilt in the one pass: every batch carries both folds' rows and
// checkpoints, and neither version is recorded before the pass ends, so both start over.
TEST(FoldVersionTest, ACrashInTheMiddleOfAPassRebuildingTwoFoldsRebuildsBothAgain) {
  TempDir dir;
  MarkFold marks;
  {
    CountFold v1(1);
    auto ledger = Open(dir.path(), {&v1, &marks});
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 2500));
  }
  ASSERT_NO_FATAL_FAILURE(EditRaw(dir.path(), [](rocksdb::DB* db, auto* checkpoints, auto*) {
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.marks").ok());
  }));
  {
    CountFold failing(2, /*fail_at=*/2200);
    LedgerOptions options;
    options.path = dir.path();
    options.folds = {&failing, &marks};
    std::unique_ptr<Ledger> ledger;
    ASSERT_FALSE(Ledger::Open(options, &ledger).ok());
  }
  {
    LedgerOptions options;
    options.path = dir.path();
    options.read_only = true;
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    for (const std::string_view fold : {"counts", "marks"}) {
      SCOPED_TRACE(fold);
      EXPECT_EQ(Checkpoint(*ledger, fold).value(), 2000u);
      uint32_t version = 0;
      EXPECT_TRUE(ledger->GetFoldVersion(fold, &version).IsNotFound());
    }
  }
  CountFold v2(2);
  marks.applied = 0;
  auto ledger = Open(dir.path(), {&v2, &marks});
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(v2.applied.load(), 2500u);
  EXPECT_EQ(marks.applied.load(), 2500u);
  const std::vector<Event> events = AllEvents(*ledger);
  CountFold fresh(2);
  MarkFold fresh_marks;
  EXPECT_EQ(FamilyRows(*ledger, "counts"), FreshRows(events, fresh));
  EXPECT_EQ(FamilyRows(*ledger, "marks"), FreshRows(events, fresh_marks));
  EXPECT_EQ(RecordedVersion(*ledger, "counts"), 2u);
  EXPECT_EQ(RecordedVersion(*ledger, "marks"), 1u);
}

// The same with a power loss at each of the rebuild's writes (FaultFs), from the last back to
// one before the rebuild began: whatever reached the disk, the next open ends with exactly a
// fresh fold's rows.
TEST(FoldVersionTest, APowerLossDuringARebuildEndsWithAFreshFoldsRows) {
  TempDir dir;
  const std::string before = dir.Sub("before");
  CountFold v1(1);
  std::vector<Event> events;
  {
    auto ledger = Open(before, {&v1});
    ASSERT_NE(ledger, nullptr);
    ASSERT_NO_FATAL_FAILURE(Append(ledger.get(), 2500));
    events = AllEvents(*ledger);
  }
  CountFold fresh(2);
  const Rows expected = FreshRows(events, fresh);
  const Rows version_1 = FreshRows(events, v1);
  // The appends of a whole open with the rebuild (the info LOG's lines count too).
  int64_t open_appends = 0;
  {
    const std::string path = dir.Sub("uncut");
    std::filesystem::copy(before, path, std::filesystem::copy_options::recursive);
    FaultEnv fault;
    CountFold v2(2);
    LedgerOptions options;
    options.path = path;
    options.folds = {&v2};
    options.env = fault.env();
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    open_appends = static_cast<int64_t>(fault.fs()->appends());
  }
  enum class Left { kNotBegun, kMidRebuild, kDone };
  std::vector<Left> seen;
  for (int64_t appends = open_appends; appends >= 1 && seen.size() < 20; --appends) {
    SCOPED_TRACE("power cut after append " + std::to_string(appends));
    const std::string path = dir.Sub("cut" + std::to_string(appends));
    std::filesystem::copy(before, path, std::filesystem::copy_options::recursive);
    FaultEnv fault;
    {
      CountFold v2(2);
      LedgerOptions options;
      options.path = path;
      options.folds = {&v2};
      options.env = fault.env();
      fault.fs()->CutPowerAfterAppends(appends);
      std::unique_ptr<Ledger> ledger;
      (void)Ledger::Open(options, &ledger);  // fails when the power goes during it
      fault.fs()->CutPower();  // the open may have finished: what it wrote unsynced is lost too
    }
    FaultFs::DropReport drop;
    ASSERT_TRUE(fault.fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &drop).ok());
    {
      LedgerOptions options;
      options.path = path;
      options.read_only = true;
      std::unique_ptr<Ledger> ledger;
      ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
      uint32_t version = 0;
      const Status s = ledger->GetFoldVersion("counts", &version);
      seen.push_back(s.ok() && version == 2                               ? Left::kDone
                     : s.ok() && FamilyRows(*ledger, "counts") == version_1 ? Left::kNotBegun
                                                                            : Left::kMidRebuild);
    }
    CountFold v2(2);
    auto ledger = Open(path, {&v2});
    ASSERT_NE(ledger, nullptr);
    EXPECT_EQ(ledger->Head().value(), 2500u);
    EXPECT_EQ(FamilyRows(*ledger, "counts"), expected);
    EXPECT_EQ(RecordedVersion(*ledger, "counts"), 2u);
    std::filesystem::remove_all(path);
    if (seen.back() == Left::kNotBegun) break;
  }
  // The cuts reached back to before the rebuild, through at least one in the middle of it.
  EXPECT_EQ(seen.back(), Left::kNotBegun);
  EXPECT_NE(std::find(seen.begin(), seen.end(), Left::kMidRebuild), seen.end());
}

}  // namespace
}  // namespace ledger
