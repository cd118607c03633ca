// Degraded-state tests: an I/O failure of the group commit fails every command of the group,
// puts the ledger in a read-only degraded state (later Submits fail fast without touching the
// disk) and loses nothing acknowledged.
//
// Semantics of a failed group, which these tests pin down: the group is IN DOUBT. Its WriteBatch
// is one WAL record, so after a restart it is either entirely present or entirely absent:
//   - the append reached the OS but the fsync failed, and the machine kept running: the record is
//     in the page cache and the next open replays it (the group appears although every command
//     of it was answered storage_degraded);
//   - the append failed, or the power went out before the data was synced: the group is gone.
// A client that got storage_degraded therefore retries with its Idempotency-Key: it gets the
// original result if the group survived and a fresh append if not — exactly once either way.
// Without a key a retry may duplicate the in-doubt events, as with any 503.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "events/ledger.h"
#include "tests/support/durability.h"
#include "tests/support/fault_fs.h"
#include "tests/support/gate_command.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::AppendCommand;
using testing::CheckDurability;
using testing::CommandSpec;
using testing::ConcurrentLoad;
using testing::DurabilityReport;
using testing::FaultEnv;
using testing::FaultFs;
using testing::GateCommand;
using testing::LoadOptions;
using testing::Outcome;
using testing::RejectCommand;
using testing::TempDir;

// `write_thread_entries_min`: LedgerOptions' (0: every group through the write thread).
std::unique_ptr<Ledger> Open(const std::string& path, rocksdb::Env* env,
                             size_t write_thread_entries_min = 1024) {
  LedgerOptions options;
  options.path = path;
  options.env = env;
  options.write_thread_entries_min = write_thread_entries_min;
  return testing::OpenTestLedger(options);
}

bool IsStorageDegraded(const Status& s) {
  return s.code() == Code::kUnavailable && s.problem() == "storage_degraded";
}

// A degraded ledger answers at once and writes nothing.
void ExpectFailsFast(Ledger* ledger, FaultFs* fs) {
  uint64_t appends = fs->appends();
  Position head = ledger->Head();
  AppendCommand command("after-degraded");
  auto start = std::chrono::steady_clock::now();
  CommandResult r = ledger->Submit(&command);
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(IsStorageDegraded(r.status)) << r.status.ToString();
  EXPECT_EQ(fs->appends(), appends);
  EXPECT_EQ(ledger->Head(), head);
  EXPECT_LT(elapsed, std::chrono::seconds(1));  // generous: the machine may be loaded
}

CommandSpec Keyed(std::string subject, size_t events) {
  CommandSpec spec;
  spec.subject = std::move(subject);
  spec.events = events;
  spec.idempotency_scope = "degraded-test";
  spec.idempotency_key = spec.subject;
  spec.request_hash = Sha256(spec.subject);
  return spec;
}

// How FailMidLoad runs.
struct MidLoadOptions {
  bool fail_writes = false;  // appends fail; otherwise syncs fail
  size_t write_thread_entries_min = 1024;
  // The power goes out before the ledger is closed and what was not synced is dropped: whatever
  // was acknowledged must have been synced to be found again. Without it the reopen finds every
  // appended record in the page cache, and an acknowledgement given before its group's sync (or
  // despite a failed one) would go unnoticed.
  bool power_loss = false;
};

// Syncs (or WAL appends) start failing in the middle of a concurrent load.
void FailMidLoad(const MidLoadOptions& options) {
  for (uint64_t seed = 1; seed <= 2; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 random(seed);
    TempDir dir;
    FaultEnv fault;
    std::vector<Outcome> acknowledged, failed;
    {
      auto ledger = Open(dir.path(), fault.env(), options.write_thread_entries_min);
      ASSERT_NE(ledger, nullptr);
      LoadOptions load_options;
      load_options.seed = seed;
      load_options.tag = "d" + std::to_string(seed);
      load_options.keyed_percent = 100;  // every failed command can be retried exactly once
      load_options.reject_percent = 0;
      // Bounded: a ledger that kept acknowledging after the failure would not stop the load.
      load_options.commands_per_thread = 100;
      ConcurrentLoad load(ledger.get(), load_options);
      load.WaitForAcknowledged(50 + random() % 200);
      if (options.fail_writes) {
        fault.fs()->FailWritesAfter(0);
      } else {
        fault.fs()->SetFailSyncs(true);
      }
      load.Join();
      acknowledged = load.outcomes().Acknowledged();
      failed = load.outcomes().Failed();

      ASSERT_FALSE(failed.empty());
      for (const Outcome& o : failed) EXPECT_TRUE(IsStorageDegraded(o.result.status));
      EXPECT_TRUE(ledger->Degraded());
      EXPECT_GE(ledger->metrics().write_failures.Value(), 1u);
      // The published head never includes a failed group.
      EXPECT_EQ(ledger->Head(), load.outcomes().MaxAcknowledgedPosition());
      ExpectFailsFast(ledger.get(), fault.fs());
      if (options.power_loss) fault.fs()->CutPower();
    }  // closed while syncs still fail (or with the power off)
    if (options.power_loss) {
      FaultFs::DropReport drop;
      ASSERT_TRUE(fault.fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, seed, &drop).ok());
    }

    auto ledger = Open(dir.path(), nullptr);  // a healthy disk
    ASSERT_NE(ledger, nullptr);
    DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
    EXPECT_TRUE(report.ok()) << report.Summary();
    // Anything after the last acknowledged position is whole failed (in-doubt) commands.
    std::set<std::string> failed_subjects;
    for (const Outcome& o : failed) failed_subjects.insert(o.spec.subject);
    std::vector<Event> tail;
    ASSERT_TRUE(ledger->ReadEvents(report.max_acknowledged, 1000, {}, &tail).ok());
    for (const Event& e : tail) EXPECT_EQ(failed_subjects.count(e.subject), 1u) << e.subject;

    // Clients retry what failed, with the same key: every command then took effect once.
    std::vector<Outcome> all = acknowledged;
    for (const Outcome& o : failed) {
      auto retry = o.spec.Make();
      CommandResult r = ledger->Submit(retry.get());
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      all.push_back(Outcome{o.spec, r});
    }
    report = CheckDurability(ledger.get(), all);
    EXPECT_TRUE(report.ok()) << report.Summary();
    for (const Outcome& o : all) {
      EXPECT_EQ(report.events_per_subject[o.spec.subject], o.spec.events) << o.spec.subject;
    }
  }
}

TEST(DegradedTest, SyncFailureMidLoadDegradesLosesNothingAndKeyedRetriesAreExactlyOnce) {
  MidLoadOptions options;
  options.power_loss = true;
  FailMidLoad(options);
}

// Through the write thread, groups are decided on top of groups not yet written: when a write
// fails, those behind it in the write thread's queue fail as well, unwritten.
TEST(DegradedTest, WriteFailureMidLoadThroughTheWriteThreadLosesNothingAndRetriesAreExactlyOnce) {
  MidLoadOptions options;
  options.fail_writes = true;
  options.write_thread_entries_min = 0;
  FailMidLoad(options);
}

TEST(DegradedTest, SyncFailureMidLoadThroughTheWriteThreadLosesNothing) {
  MidLoadOptions options;
  options.write_thread_entries_min = 0;
  options.power_loss = true;
  FailMidLoad(options);
}

// Negative control of the two sync-failure tests above: the same load and power loss without
// the fsync (LedgerOptions::sync = false, so failing syncs stop nothing and the load is stopped
// by the test) must lose acknowledged writes, and the checker must say so. If this test fails,
// those tests cannot tell a synced acknowledgement from an unsynced one.
TEST(DegradedTest, NegativeControlSyncFailureWithoutSyncIsDetected) {
  TempDir dir;
  FaultEnv fault;
  std::vector<Outcome> acknowledged;
  {
    LedgerOptions options;
    options.path = dir.path();
    options.env = fault.env();
    options.sync = false;
    auto ledger = testing::OpenTestLedger(options);
    ASSERT_NE(ledger, nullptr);
    LoadOptions load_options;
    load_options.tag = "control";
    load_options.keyed_percent = 100;
    load_options.commands_per_thread = 100;
    ConcurrentLoad load(ledger.get(), load_options);
    load.WaitForAcknowledged(100);
    fault.fs()->SetFailSyncs(true);
    load.Stop();
    load.Join();
    acknowledged = load.outcomes().Acknowledged();
    ASSERT_FALSE(acknowledged.empty());
    fault.fs()->CutPower();
  }
  FaultFs::DropReport drop;
  ASSERT_TRUE(fault.fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &drop).ok());
  EXPECT_GT(drop.bytes_dropped + drop.files_deleted, 0u) << drop.ToString();
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.LostAcknowledgedWrites())
      << "sync=false was not detected: " << report.Summary();
}

// Negative control of WriteFailureMidLoadThroughTheWriteThread...: the same load through the write
// thread, with every write-ahead log append from the middle of it answered OK and dropped
// (FaultFs::SetLoseLogAppends: what a ledger acknowledging groups whose writes failed leaves on
// disk), must lose acknowledged writes, and the checker must say so. If this test fails, that test
// cannot tell an acknowledged write from one that never reached the disk.
TEST(DegradedTest, NegativeControlAWriteFailureAcknowledgedIsDetected) {
  TempDir dir;
  FaultEnv fault;
  std::vector<Outcome> acknowledged;
  {
    auto ledger = Open(dir.path(), fault.env(), /*write_thread_entries_min=*/0);
    ASSERT_NE(ledger, nullptr);
    LoadOptions load_options;
    load_options.tag = "write-control";
    load_options.keyed_percent = 100;
    load_options.reject_percent = 0;
    load_options.commands_per_thread = 100;
    ConcurrentLoad load(ledger.get(), load_options);
    load.WaitForAcknowledged(100);
    fault.fs()->SetLoseLogAppends(true);
    load.Join();
    acknowledged = load.outcomes().Acknowledged();
    EXPECT_TRUE(load.outcomes().Failed().empty());
    EXPECT_FALSE(ledger->Degraded()) << "the lost appends were seen: nothing is controlled";
  }
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.LostAcknowledgedWrites())
      << "acknowledged writes that never reached the disk were not detected: "
      << report.Summary();
}

// Pins one failing group with GateCommands: [gate-2, keyed, the same keyed request again (an
// in-group retry), plain, rejected]. Appends fail, so nothing of the group reaches the disk.
TEST(DegradedTest, AFailedGroupFailsEveryCommandInItIncludingInGroupReplays) {
  TempDir dir;
  FaultEnv fault;
  CommandSpec keyed = Keyed("keyed", 2);
  {
    auto ledger = Open(dir.path(), fault.env());
    ASSERT_NE(ledger, nullptr);
    GateCommand gate1("gate-1"), gate2("gate-2");
    CommandResult gate1_result, gate2_result;
    std::thread leader1([&] { gate1_result = ledger->Submit(&gate1); });
    gate1.WaitUntilDeciding();  // leads a group of one, held open
    std::thread leader2([&] { gate2_result = ledger->Submit(&gate2); });
    while (ledger->QueueDepth() < 2) std::this_thread::yield();

    auto first = keyed.Make();
    auto retry = keyed.Make();
    AppendCommand plain("plain", 1);
    RejectCommand rejected(Status::Make(Code::kUnprocessable, "test_rejected", "no"));
    std::vector<Command*> members = {first.get(), retry.get(), &plain, &rejected};
    std::vector<CommandResult> results(members.size());
    std::vector<std::thread> submitters;
    for (size_t i = 0; i < members.size(); ++i) {
      submitters.emplace_back([&, i] { results[i] = ledger->Submit(members[i]); });
      while (ledger->QueueDepth() < 3 + i) std::this_thread::yield();  // keep the order
    }
    gate1.Open();
    leader1.join();
    ASSERT_TRUE(gate1_result.status.ok()) << gate1_result.status.ToString();
    gate2.WaitUntilDeciding();  // gate-2 now leads the five queued commands
    fault.fs()->FailWritesAfter(0);
    gate2.Open();
    leader2.join();
    for (auto& t : submitters) t.join();

    EXPECT_TRUE(IsStorageDegraded(gate2_result.status)) << gate2_result.status.ToString();
    EXPECT_TRUE(IsStorageDegraded(results[0].status)) << results[0].status.ToString();
    // The retry was answered from the group's own (never written) idempotency record: it must
    // fail with its group, not report the original's position as committed.
    EXPECT_TRUE(IsStorageDegraded(results[1].status))
        << results[1].status.ToString() << " replayed=" << results[1].replayed << " position "
        << results[1].position.value();
    EXPECT_TRUE(IsStorageDegraded(results[2].status)) << results[2].status.ToString();
    // Even a rejection is not given: a decision in a failed group may rest on its state.
    EXPECT_TRUE(IsStorageDegraded(results[3].status)) << results[3].status.ToString();
    EXPECT_TRUE(ledger->Degraded());
    EXPECT_EQ(ledger->Head(), Position(1));
    EXPECT_EQ(ledger->metrics().write_failures.Value(), 1u);
    ExpectFailsFast(ledger.get(), fault.fs());
  }
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->Head(), Position(1));  // the failed group never reached the disk
  auto again = keyed.Make();
  CommandResult r = ledger->Submit(again.get());
  ASSERT_TRUE(r.status.ok());
  EXPECT_FALSE(r.replayed);
  EXPECT_EQ(r.position, Position(3));
}

// A group decided behind one whose write then fails rests on a group that does not exist: it is
// failed too -- also when it writes nothing itself (here an idempotent replay of the failed
// group, which would otherwise be answered "replayed at position 3" for a position never written).
TEST(DegradedTest, AReplayDecidedBehindAGroupWhoseWriteFailsIsNotAcknowledged) {
  TempDir dir;
  FaultEnv fault;
  CommandSpec keyed = Keyed("keyed", 1);
  {
    auto ledger = Open(dir.path(), fault.env(), /*write_thread_entries_min=*/0);
    ASSERT_NE(ledger, nullptr);
    AppendCommand before("before");
    ASSERT_TRUE(ledger->Submit(&before).status.ok());

    std::mutex mu;
    std::vector<CommandResult> answers;  // guarded by mu
    auto answered = [&] {
      std::lock_guard<std::mutex> l(mu);
      return answers.size();
    };
    auto submit = [&](Command* command) {
      ledger->SubmitAsync(command, [&](CommandResult result) {
        std::lock_guard<std::mutex> l(mu);
        answers.push_back(std::move(result));
      });
    };
    fault.fs()->HoldAppends();
    auto first = keyed.Make();
    submit(first.get());
    fault.fs()->WaitUntilAnAppendIsHeld();  // the first group, in the write thread
    auto retry = keyed.Make();
    submit(retry.get());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (ledger->QueueDepth() > 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    ASSERT_EQ(ledger->QueueDepth(), 0u);  // the retry is decided: a replay of the held group
    fault.fs()->FailWritesAfter(0);
    fault.fs()->ReleaseAppends();
    while (answered() < 2 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(answered(), 2u);
    std::lock_guard<std::mutex> l(mu);
    for (const CommandResult& r : answers) {
      EXPECT_TRUE(IsStorageDegraded(r.status)) << r.status.ToString() << " replayed " << r.replayed;
    }
    EXPECT_TRUE(ledger->Degraded());
    EXPECT_EQ(ledger->Head(), Position(1));
  }
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->Head(), Position(1));  // the failed group never reached the log
  auto retry = keyed.Make();
  CommandResult r = ledger->Submit(retry.get());
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_FALSE(r.replayed);
  EXPECT_EQ(r.position, Position(2));
}

// The two ways an in-doubt group resolves, one command at a time.
void RunInDoubtGroup(bool power_loss, Position* head_after, CommandResult* retry_result) {
  TempDir dir;
  FaultEnv fault;
  CommandSpec doubtful = Keyed("doubtful", 3);
  {
    auto ledger = Open(dir.path(), fault.env());
    ASSERT_NE(ledger, nullptr);
    for (int i = 0; i < 5; ++i) {
      AppendCommand c("before-" + std::to_string(i));
      ASSERT_TRUE(ledger->Submit(&c).status.ok());
    }
    fault.fs()->SetFailSyncs(true);
    auto command = doubtful.Make();
    CommandResult r = ledger->Submit(command.get());
    EXPECT_TRUE(IsStorageDegraded(r.status)) << r.status.ToString();
    EXPECT_TRUE(ledger->Degraded());
    EXPECT_GT(fault.fs()->UnsyncedBytes(), 0u);  // the record reached the OS, not the disk
    if (power_loss) fault.fs()->CutPower();
  }
  if (power_loss) {
    FaultFs::DropReport drop;
    ASSERT_TRUE(fault.fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &drop).ok());
  }
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  *head_after = ledger->Head();
  auto retry = doubtful.Make();
  *retry_result = ledger->Submit(retry.get());
  ASSERT_TRUE(retry_result->status.ok());
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 100, {"doubtful", ""}, &events).ok());
  EXPECT_EQ(events.size(), 3u);  // exactly once
  DurabilityReport report = CheckDurability(ledger.get(), {});
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// The durability checker looks for what each acknowledged command asked to append, not for what
// the ledger says it appended: an acknowledgement without a position, or with fewer events than
// its command appends, is reported (it left the checker nothing, or only its last event, to look
// for, and passed).
TEST(DurabilityCheckerTest, AnAcknowledgementIsCheckedAgainstItsCommand) {
  TempDir dir;
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  CommandSpec spec;
  spec.subject = "three";
  spec.events = 3;
  auto command = spec.Make();
  const Outcome real{spec, ledger->Submit(command.get())};
  ASSERT_TRUE(real.result.status.ok());
  EXPECT_TRUE(CheckDurability(ledger.get(), {real}).ok());
  Outcome no_position = real;
  no_position.result.position = Position(0);
  Outcome fewer = real;
  fewer.result.events_appended = 1;
  for (const Outcome& wrong : {no_position, fewer}) {
    DurabilityReport report = CheckDurability(ledger.get(), {real, wrong});
    EXPECT_FALSE(report.ok());
    EXPECT_EQ(report.lost, 1u) << report.Summary();
  }
}

TEST(DegradedTest, AFailedSyncWithoutPowerLossRecoversTheInDoubtGroupAndTheRetryReplays) {
  Position head;
  CommandResult retry;
  RunInDoubtGroup(/*power_loss=*/false, &head, &retry);
  EXPECT_EQ(head, Position(8));  // the unacknowledged group came back from the page cache
  EXPECT_TRUE(retry.replayed);
  EXPECT_EQ(retry.position, Position(8));
}

TEST(DegradedTest, AFailedSyncFollowedByPowerLossDropsTheGroupAndTheRetryAppends) {
  Position head;
  CommandResult retry;
  RunInDoubtGroup(/*power_loss=*/true, &head, &retry);
  EXPECT_EQ(head, Position(5));
  EXPECT_FALSE(retry.replayed);
  EXPECT_EQ(retry.position, Position(8));
}

// A consumer's checkpoint (the outbox's, the Lago sink's) is written on its own thread while
// groups are written and synced. Here its WAL append fails on a full disk while a group appended
// before it waits for its (paced) sync: RocksDB's log writer is then in its error state, and
// syncing it is a usage error (7.8 with assertions, as Debian builds it, aborts: SIGABRT instead
// of a degraded ledger). A checkpoint's append is one as a group's is: no sync starts until it
// has ended and its failure is recorded, so the group is not synced but answered
// storage_degraded, and the ledger degrades.
TEST(DegradedTest, NoSyncStartsBeforeAFailedCheckpointAppendHasEnded) {
  TempDir dir;
  FaultEnv fault;
  std::mutex mu;
  std::condition_variable cv;
  bool appended = false;      // guarded by mu: the group's record reached the OS
  bool put_held = false;      // guarded by mu: the checkpoint's Put returned and is held
  bool put_released = false;  // guarded by mu
  bool answered = false;      // guarded by mu
  CommandResult result;       // guarded by mu
  AppendCommand first("first"), second("second");  // outlive the ledger
  LedgerOptions options;
  options.path = dir.path();
  options.env = fault.env();
  // The group's sync waits this long after the first one's: room for the checkpoint to fail
  // (the steps up to its held Put all run inside it, on a loaded machine too).
  options.sync_interval_min = std::chrono::seconds(2);
  options.wal_appended_for_test = [&] {
    std::lock_guard<std::mutex> l(mu);
    appended = true;
    cv.notify_all();
  };
  options.checkpoint_put_for_test = [&] {
    std::unique_lock<std::mutex> l(mu);
    put_held = true;
    cv.notify_all();
    cv.wait(l, [&] { return put_released; });
  };
  auto ledger = testing::OpenTestLedger(options);
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  const auto first_synced = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> l(mu);
    appended = false;
  }
  ledger->SubmitAsync(&second, [&](CommandResult r) {
    std::lock_guard<std::mutex> l(mu);
    result = std::move(r);
    answered = true;
    cv.notify_all();
  });
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(30), [&] { return appended; }));
  }
  fault.fs()->FailWritesAfter(0);
  Status checkpoint_status;
  std::thread checkpointer([&] {
    checkpoint_status = ledger->PutCheckpoint("consumer", Position(1), /*sync=*/false);
  });
  {
    std::unique_lock<std::mutex> l(mu);
    EXPECT_TRUE(cv.wait_for(l, std::chrono::seconds(30), [&] { return put_held; }));
    // The paced sync is long due: it waits for the checkpoint's append to end.
    const auto long_due = first_synced + options.sync_interval_min + std::chrono::seconds(1);
    EXPECT_FALSE(cv.wait_until(l, long_due, [&] { return answered; }))
        << "the group was answered (synced) before the failed checkpoint append ended: "
        << result.status.ToString();
    put_released = true;
    cv.notify_all();
  }
  checkpointer.join();
  EXPECT_TRUE(IsStorageDegraded(checkpoint_status)) << checkpoint_status.ToString();
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(30), [&] { return answered; }));
    EXPECT_TRUE(IsStorageDegraded(result.status)) << result.status.ToString();
  }
  EXPECT_TRUE(ledger->Degraded());
  EXPECT_EQ(ledger->Head(), Position(1));
  ExpectFailsFast(ledger.get(), fault.fs());
}

// Submits `count` commands ("before-<i>"), each one acknowledged, into `acknowledged`.
::testing::AssertionResult SubmitAcknowledged(Ledger* ledger, int count,
                                              std::vector<Outcome>* acknowledged) {
  for (int i = 0; i < count; ++i) {
    CommandSpec spec;
    spec.subject = "before-" + std::to_string(i);
    auto command = spec.Make();
    CommandResult r = ledger->Submit(command.get());
    if (!r.status.ok()) return ::testing::AssertionFailure() << r.status.ToString();
    acknowledged->push_back(Outcome{spec, r});
  }
  return ::testing::AssertionSuccess();
}

// Points every open file descriptor of `path` at /dev/full: each later write of the file fails
// with ENOSPC, as on a full disk, whatever object writes it (RocksDB's info log is written past
// the Env the ledger is given). Returns how many descriptors it redirected.
int RedirectToDevFull(const std::string& path) {
  const std::filesystem::path file = std::filesystem::canonical(path);
  const int full = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (full < 0) return 0;
  int redirected = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(entry.path(), ec) != file || ec) continue;
    const int fd = std::stoi(entry.path().filename().string());
    if (::dup3(full, fd, O_CLOEXEC) == fd) ++redirected;
  }
  ::close(full);
  return redirected;
}

// A full disk fails RocksDB's info log (<dir>/LOG) too. RocksDB ignores the info log's write
// errors, but its file writer (7.8 with assertions, as Debian builds it) asserted on the first line
// logged after a failed write of it: here a memtable flush fails, RocksDB flushes the info log
// after it (ENOSPC), and the next lines -- the failed write of the next group, the close --
// aborted the process (ledgerd: exit 134) instead of leaving the ledger degraded.
TEST(DegradedTest, AFullDiskUnderTheInfoLogDegradesInsteadOfAborting) {
  TempDir dir;
  FaultEnv fault;
  std::vector<Outcome> acknowledged;
  {
    auto ledger = Open(dir.path(), fault.env());
    ASSERT_NE(ledger, nullptr);
    ASSERT_TRUE(SubmitAcknowledged(ledger.get(), 5, &acknowledged));
    // The disk fills up: no write of any file gets through.
    ASSERT_EQ(RedirectToDevFull(dir.Sub("LOG")), 1);
    fault.fs()->FailWritesAfter(0);
    EXPECT_FALSE(ledger->Flush().ok());
    AppendCommand after("after-the-disk-filled");
    CommandResult r = ledger->Submit(&after);
    EXPECT_TRUE(IsStorageDegraded(r.status)) << r.status.ToString();
    EXPECT_TRUE(ledger->Degraded());
    EXPECT_EQ(ledger->Head(), Position(5));
    ExpectFailsFast(ledger.get(), fault.fs());
  }  // closed while the disk is still full
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(ledger->Head(), Position(5));
}

// A shutdown after a failed write flushes the memtables (ledgerd's App::Stop) while the failed
// append has left RocksDB's WAL writer in its error state, which a memtable switch would flush --
// a usage error 7.8 with assertions (as Debian builds it) aborts on. RocksDB answers the flush
// with the failed write's background error first, so the process stops as a degraded one; this
// keeps it so (an abort kills the test binary).
TEST(DegradedTest, AFlushAfterAFailedAppendFailsInsteadOfAborting) {
  TempDir dir;
  FaultEnv fault;
  std::vector<Outcome> acknowledged;
  {
    auto ledger = Open(dir.path(), fault.env());
    ASSERT_NE(ledger, nullptr);
    ASSERT_TRUE(SubmitAcknowledged(ledger.get(), 3, &acknowledged));
    fault.fs()->FailWritesAfter(0);
    AppendCommand failed("its-append-fails");
    EXPECT_TRUE(IsStorageDegraded(ledger->Submit(&failed).status));
    ASSERT_TRUE(ledger->Degraded());
    fault.fs()->FailWritesAfter(-1);  // the disk has room again: only the WAL writer is broken
    const Status flushed = ledger->Flush();
    EXPECT_FALSE(flushed.ok());  // RocksDB's background error: the injected write failure
    EXPECT_EQ(ledger->Head(), Position(3));
  }
  auto ledger = Open(dir.path(), nullptr);
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(ledger->Head(), Position(3));
}

}  // namespace
}  // namespace ledger
