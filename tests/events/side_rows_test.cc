// Side rows (events/ledger.h SideRow, LedgerOptions::side_families): rows a command writes beside
// its events in the group's one WriteBatch, for state that must be deletable although the log is
// permanent (the BYOK data keys that crypto-shredding deletes, projections/byok.h). They must have
// exactly the events' durability -- an acknowledged command's row survives a power loss, a failed
// group leaves neither its events nor its rows -- and must stay out of everything derived from
// the log (the projection digest that replay compares).
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <thread>

#include "events/ledger.h"
#include "tests/support/fault_fs.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::FaultEnv;
using testing::FaultFs;
using testing::TempDir;

constexpr char kSide[] = "secrets";

// Appends one event for `subject` (none when it is empty) and writes `rows`; `*seen` (if given)
// gets the value of secrets/`read_key` as the command saw it (empty when absent).
class SideRowCommand : public Command {
 public:
  SideRowCommand(std::string subject, std::vector<SideRow> rows, std::string read_key = "",
                 std::string* seen = nullptr)
      : subject_(std::move(subject)),
        rows_(std::move(rows)),
        read_key_(std::move(read_key)),
        seen_(seen) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    if (seen_ != nullptr) {
      Status s = context.state->Get(kSide, read_key_, seen_);
      if (s.IsNotFound()) seen_->clear();
      if (!s.ok() && !s.IsNotFound()) return s;
    }
    if (!subject_.empty()) {
      decision->events.push_back(NewEvent{"test.appended.v1", subject_, "{}"});
    }
    decision->side_rows = rows_;
    return Status::OK();
  }

 private:
  std::string subject_;
  std::vector<SideRow> rows_;
  std::string read_key_;
  std::string* seen_;
};

SideRow Put(std::string key, std::string value) {
  return SideRow{kSide, std::move(key), std::move(value), false};
}
SideRow Del(std::string key) { return SideRow{kSide, std::move(key), "", true}; }
// A put whose replaced value is shredded (SideRow::shred_replaced).
SideRow Replace(std::string key, std::string value) {
  return SideRow{kSide, std::move(key), std::move(value), false, true};
}

std::unique_ptr<Ledger> Open(const std::string& path, rocksdb::Env* env = nullptr,
                             bool sync = true) {
  LedgerOptions options;
  options.path = path;
  options.env = env;
  options.sync = sync;
  options.side_families = {kSide};
  return testing::OpenTestLedger(options);
}

// NotFound, or the row's value.
Status ReadSide(Ledger* ledger, const std::string& key, std::string* value) {
  return ledger->Snapshot()->Get(kSide, key, value);
}

TEST(SideRowsTest, AreWrittenAndDeletedWithTheEventsAndSeenByLaterCommands) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  SideRowCommand put("alice", {Put("k1", "wrapped-1"), Put("k2", "x"), Del("k2")});
  CommandResult r = ledger->Submit(&put);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events_appended, 1u);
  std::string value;
  ASSERT_TRUE(ReadSide(ledger.get(), "k1", &value).ok());
  EXPECT_EQ(value, "wrapped-1");
  EXPECT_TRUE(ReadSide(ledger.get(), "k2", &value).IsNotFound());  // the later row wins

  std::string seen;
  SideRowCommand remove("alice", {Del("k1")}, "k1", &seen);
  ASSERT_TRUE(ledger->Submit(&remove).status.ok());
  EXPECT_EQ(seen, "wrapped-1");  // a decider reads the family
  EXPECT_TRUE(ReadSide(ledger.get(), "k1", &value).IsNotFound());
  EXPECT_EQ(ledger->Head(), Position(2));
}

// A command naming a family that is not declared side -- a fold's, the log's own, or none --
// fails alone and appends nothing; an open declaring one of the ledger's own names is refused.
TEST(SideRowsTest, OnlyDeclaredSideFamiliesAreWritten) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  for (const std::string family : {"events", "idempotency", "meta", "nosuch"}) {
    SideRowCommand bad("alice", {SideRow{family, "k", "v", false}});
    CommandResult r = ledger->Submit(&bad);
    EXPECT_EQ(r.status.code(), Code::kInternal) << family << " " << r.status.ToString();
    EXPECT_EQ(ledger->Head(), Position(0)) << family;
  }
  ledger.reset();
  for (const std::string family : {"events", "checkpoints", ""}) {
    LedgerOptions options;
    options.path = dir.path();
    options.side_families = {family};
    std::unique_ptr<Ledger> refused;
    EXPECT_FALSE(Ledger::Open(options, &refused).ok()) << family;
  }
}

// Side rows are not derived from the log: replay rebuilds none, so they must not count in the
// digest it compares.
TEST(SideRowsTest, AreNotPartOfTheProjectionDigest) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  Hash before{}, after{};
  ASSERT_TRUE(ledger->ProjectionDigest(&before).ok());
  SideRowCommand put("alice", {Put("k1", "wrapped-1")});
  ASSERT_TRUE(ledger->Submit(&put).status.ok());
  ASSERT_TRUE(ledger->ProjectionDigest(&after).ok());
  EXPECT_EQ(before, after);
}

// The group's WAL append fails: its command is answered storage_degraded, and after a restart
// neither its event nor its side row is there (they were one WriteBatch).
TEST(SideRowsTest, AFailedGroupWriteLeavesNeitherTheEventNorTheRow) {
  TempDir dir;
  {
    FaultEnv fault;
    auto ledger = Open(dir.path(), fault.env());
    ASSERT_NE(ledger, nullptr);
    SideRowCommand first("alice", {Put("k0", "kept")});
    ASSERT_TRUE(ledger->Submit(&first).status.ok());
    fault.fs()->FailWritesAfter(0);
    SideRowCommand put("alice", {Put("k1", "wrapped-1"), Del("k0")});
    CommandResult r = ledger->Submit(&put);
    EXPECT_EQ(r.status.problem(), "storage_degraded") << r.status.ToString();
    EXPECT_TRUE(ledger->Degraded());
  }
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->Head(), Position(1));
  std::string value;
  EXPECT_TRUE(ReadSide(ledger.get(), "k1", &value).IsNotFound());
  ASSERT_TRUE(ReadSide(ledger.get(), "k0", &value).ok());  // the failed delete did not happen
  EXPECT_EQ(value, "kept");
}

// A power loss right after an acknowledged command keeps its side row (synced with its events);
// the negative control, the same with LedgerOptions::sync = false, loses it, which shows the
// check can fail.
void PowerLossAfterAnAcknowledgedRow(bool sync, bool* row_kept) {
  TempDir dir;
  FaultEnv fault;
  {
    auto ledger = Open(dir.path(), fault.env(), sync);
    ASSERT_NE(ledger, nullptr);
    // The compaction every open asks for first flushes the memtable into a synced table file:
    // done after the put, it would make the row durable without the log's sync (the negative
    // control then kept it in 13 of 200 runs).
    ASSERT_TRUE(ledger->WaitForSideCompactions(10'000).ok());
    SideRowCommand put("alice", {Put("k1", "wrapped-1")});
    ASSERT_TRUE(ledger->Submit(&put).status.ok());
    fault.fs()->CutPower();
  }  // destroyed while the power is off: closing makes nothing more durable
  FaultFs::DropReport report;
  ASSERT_TRUE(fault.fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &report).ok());
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  std::string value;
  Status s = ReadSide(ledger.get(), "k1", &value);
  *row_kept = s.ok() && value == "wrapped-1";
  EXPECT_EQ(*row_kept, ledger->Head() == Position(1)) << "the row and its event go together";
}

TEST(SideRowsTest, APowerLossKeepsTheRowOfAnAcknowledgedCommand) {
  bool kept = false;
  PowerLossAfterAnAcknowledgedRow(/*sync=*/true, &kept);
  EXPECT_TRUE(kept);
  PowerLossAfterAnAcknowledgedRow(/*sync=*/false, &kept);  // negative control
  EXPECT_FALSE(kept);
}

// Whether any table file (or table file being deleted) under `dir` holds `needle`.
bool TableFilesHold(const std::string& dir, const std::string& needle) {
  std::error_code error;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir, error)) {
    const std::string name = entry.path().filename().string();
    if (!name.ends_with(".sst") && !name.ends_with(".trash")) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.find(needle) != std::string::npos) return true;
  }
  return false;
}

// A delete answered by the same sync as an earlier group: the sync thread must not keep that
// group's read view once it has answered it -- the compaction that drops the deleted value
// waits for every view older than the delete, and with no later write it waited for ever.
TEST(SideRowsTest, ADeleteSyncedWithAnEarlierGroupIsCompactedAway) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.side_families = {kSide};
  options.sync_interval_min = std::chrono::milliseconds(300);  // one sync for both groups below
  auto ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  const std::string secret = "wrapped-data-key-3f9a1c77e2b84d05";
  SideRowCommand put("alice", {Put("k", secret)});
  ASSERT_TRUE(ledger->Submit(&put).status.ok());
  ASSERT_TRUE(ledger->Flush().ok());
  ASSERT_TRUE(ledger->WaitForSideCompactions(10'000).ok());
  ASSERT_TRUE(TableFilesHold(dir.path(), secret)) << "control: the value is in a table file";

  // A sync now, so that the next one is paced and takes both groups.
  SideRowCommand first("bob", {});
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  const uint64_t syncs_before = ledger->metrics().syncs.Value();
  const uint64_t groups_before = ledger->metrics().groups_committed.Value();
  SideRowCommand other("carol", {});
  SideRowCommand remove("alice", {Del("k")});
  std::promise<CommandResult> other_done, remove_done;
  ledger->SubmitAsync(&other, [&](CommandResult r) { other_done.set_value(std::move(r)); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a group of its own
  ledger->SubmitAsync(&remove, [&](CommandResult r) { remove_done.set_value(std::move(r)); });
  ASSERT_TRUE(other_done.get_future().get().status.ok());
  ASSERT_TRUE(remove_done.get_future().get().status.ok());
  ASSERT_EQ(ledger->metrics().groups_committed.Value(), groups_before + 2)
      << "the two commands were decided as one group: the test shows nothing";
  ASSERT_EQ(ledger->metrics().syncs.Value(), syncs_before + 1)
      << "the two groups were not synced together: the test shows nothing";

  Status waited = ledger->WaitForSideCompactions(10'000);
  EXPECT_TRUE(waited.ok()) << waited.ToString();
  EXPECT_FALSE(TableFilesHold(dir.path(), secret));
}

// A put marked shred_replaced (a BYOK data key re-wrapped under a new master key, by a command
// that appends no event) compacts its family once durable, as a delete does: the value it
// replaced, already in a table file, is gone from the disk. A plain put left it there.
TEST(SideRowsTest, APutThatShredsWhatItReplacesCompactsTheOldValueAway) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  const std::string secret = "wrapped-under-the-old-key-9c41d0e7";
  SideRowCommand put("alice", {Put("k", secret)});
  ASSERT_TRUE(ledger->Submit(&put).status.ok());
  ASSERT_TRUE(ledger->Flush().ok());
  ASSERT_TRUE(ledger->WaitForSideCompactions(10'000).ok());
  ASSERT_TRUE(TableFilesHold(dir.path(), secret)) << "control: the value is in a table file";

  SideRowCommand replace("", {Replace("k", "wrapped-under-the-new-key")});
  CommandResult r = ledger->Submit(&replace);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.events_appended, 0u);
  EXPECT_EQ(ledger->Head(), Position(1));
  Status waited = ledger->WaitForSideCompactions(10'000);
  EXPECT_TRUE(waited.ok()) << waited.ToString();
  EXPECT_FALSE(TableFilesHold(dir.path(), secret));
  std::string value;
  ASSERT_TRUE(ReadSide(ledger.get(), "k", &value).ok());
  EXPECT_EQ(value, "wrapped-under-the-new-key");
}

}  // namespace
}  // namespace ledger
