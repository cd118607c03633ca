#include "tools/replay.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "events/coding.h"
#include "events/limits.h"
#include "projections/registry.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::tools {
namespace {

using testing::AppendCommand;
using testing::EditRaw;
using testing::FindFamily;
using testing::OpenTestLedger;
using testing::TempDir;
using testing::WriteMarkedLog;

// Counts events per subject: row subject -> decimal count.
class SubjectCountFold final : public Fold {
 public:
  std::string_view Name() const override { return "test_subject_counts"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const override {
    std::string value;
    Status s = state.Get(Name(), event.subject, &value);
    if (!s.ok() && !s.IsNotFound()) return s;
    uint64_t count = s.ok() ? std::stoull(value) : 0;
    return rows->Put(Name(), event.subject, std::to_string(count + 1));
  }
};

// Remembers the last event type: row "last" -> type.
class LastTypeFold final : public Fold {
 public:
  std::string_view Name() const override { return "test_last_type"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    return rows->Put(Name(), "last", event.type);
  }
};

const SubjectCountFold kCounts;
const LastTypeFold kLastType;

std::vector<const Fold*> Folds() { return {&kCounts, &kLastType}; }

ReplayOptions Options(const std::string& data_dir) {
  ReplayOptions options;
  options.data_dir = data_dir;
  options.folds = Folds();
  options.chunk_events = 7;  // several chunks, one partial
  return options;
}

TEST(ReplayTest, RebuiltProjectionsEqualTheLiveOnes) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(report.equal);
  EXPECT_EQ(report.position, Position(60));
  EXPECT_EQ(report.events, 60u);
  EXPECT_EQ(report.live_digest, report.rebuilt_digest);
  EXPECT_TRUE(report.differing_folds.empty());
  // The temporary rebuild is removed.
  EXPECT_FALSE(std::filesystem::exists(report.rebuilt_path));
}

TEST(ReplayTest, ModifiedProjectionRowIsReported) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  // Negative control: change one projection row behind the ledger's back.
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(),
                        FindFamily(names, handles, "test_subject_counts"), "alice", "999")
                    .ok());
  });
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(report.equal);
  EXPECT_NE(report.live_digest, report.rebuilt_digest);
  EXPECT_EQ(report.differing_folds, std::vector<std::string>{"test_subject_counts"});
}

TEST(ReplayTest, IntoKeepsTheRebuiltStoreAndMustBeEmpty) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), Folds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  ReplayOptions options = Options(dir.Sub("live"));
  options.into = dir.Sub("rebuilt");
  ReplayReport report;
  ASSERT_TRUE(ReplayProjections(options, &report).ok());
  EXPECT_TRUE(report.equal);
  {
    // The kept copy is a complete ledger: same head.
    auto rebuilt = OpenTestLedger(dir.Sub("rebuilt"), Folds());
    EXPECT_EQ(rebuilt->Head(), Position(10));
  }
  Status s = ReplayProjections(options, &report);  // not empty any more
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
}

// A replay cancelled (ledgerctl's SIGINT/SIGTERM) stops and removes what it wrote: the temporary
// store, and an --into store it created (a prefix of the log that opens as a whole ledger).
TEST(ReplayTest, ACancelledReplayRemovesWhatItWrote) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  for (const std::string& into : {std::string(), dir.Sub("rebuilt")}) {
    SCOPED_TRACE("into '" + into + "'");
    std::atomic<bool> cancel{false};
    ReplayOptions options = Options(dir.Sub("live"));
    options.into = into;
    options.cancel = &cancel;
    size_t chunks = 0;
    options.on_chunk = [&](size_t, size_t) {
      if (++chunks == 2) cancel.store(true);  // the first chunk is imported, the second too
    };
    ReplayReport report;
    Status s = ReplayProjections(options, &report);
    EXPECT_EQ(s.problem(), "replay_cancelled") << s.ToString();
    EXPECT_EQ(report.events, 14u);  // two chunks of 7
    EXPECT_FALSE(report.rebuilt_path.empty());
    EXPECT_FALSE(std::filesystem::exists(report.rebuilt_path)) << report.rebuilt_path;
  }
}

// SIGINT/SIGTERM after the last event was imported went unheeded: the digests of both stores
// and the comparison (full scans, seconds on a large store) ran to their end. A cancel there
// stops the replay too, and what it wrote is removed.
TEST(ReplayTest, ACancelDuringTheDigestsStopsTheReplay) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), Folds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  for (const std::string& into : {std::string(), dir.Sub("rebuilt")}) {
    SCOPED_TRACE("into '" + into + "'");
    std::atomic<bool> cancel{false};
    ReplayOptions options = Options(dir.Sub("live"));
    options.into = into;
    options.cancel = &cancel;
    options.on_step = [&](ReplayStep step) {
      if (step == ReplayStep::kRebuilt) cancel.store(true);
    };
    ReplayReport report;
    Status s = ReplayProjections(options, &report);
    EXPECT_EQ(s.problem(), "replay_cancelled") << s.ToString();
    EXPECT_EQ(report.events, 10u);  // every event imported, then stopped
    EXPECT_FALSE(report.rebuilt_path.empty());
    EXPECT_FALSE(std::filesystem::exists(report.rebuilt_path)) << report.rebuilt_path;
  }
}

// Two overlapping `replay --into D`, or a ledgerd started on D while the replay opened the live
// store: the replay that then failed to lock D removed D (or emptied it), the other's whole store
// with it. A replay that loses D's lock now removes nothing. The test takes the lock, as the
// other process, once the replay has made (or found) D and before it locks it.
TEST(ReplayTest, AReplayThatLosesTheIntoLockRemovesNothing) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), Folds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  for (const bool existing : {false, true}) {
    SCOPED_TRACE(existing ? "an empty directory" : "no directory");
    const std::string into = dir.Sub(existing ? "existing" : "created");
    if (existing) {
      ASSERT_TRUE(std::filesystem::create_directory(into));
    }
    ReplayOptions options = Options(dir.Sub("live"));
    options.into = into;
    std::shared_ptr<DirLock> other;
    options.on_step = [&](ReplayStep step) {
      if (step != ReplayStep::kIntoCreated) return;
      std::filesystem::create_directories(into);
      ASSERT_TRUE(DirLock::Lock(into, &other).ok());
      std::ofstream(into + "/CURRENT") << "the other process's store";
    };
    ReplayReport report;
    Status s = ReplayProjections(options, &report);
    EXPECT_EQ(s.code(), Code::kIOError) << s.ToString();
    EXPECT_NE(s.message().find("is in use"), std::string::npos) << s.ToString();
    ASSERT_NE(other, nullptr);
    EXPECT_TRUE(std::filesystem::exists(into + "/CURRENT"));
    EXPECT_TRUE(std::filesystem::exists(into + "/" + kDirLockFile));
  }
}

// A row of the per-subject index (`streams`): subject, NUL, the first position of its run (BE).
std::string StreamsKey(const std::string& subject, uint64_t first) {
  return subject + std::string(1, '\0') + EncodePositionKey(first);
}

// The index is derived from the log as the folds' rows are, and GET /api/v1/events?subject=
// reads by it: replay compared the folds only, so a lost row (alice's first command, positions
// 1..3, no longer served by subject) replayed "equal" and exited 0.
TEST(ReplayTest, AStreamsRowRemovedIsReported) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  ReplayReport report;
  ASSERT_TRUE(ReplayProjections(Options(dir.path()), &report).ok());
  ASSERT_TRUE(report.equal);  // the writer's rows (one a command) and the import's (one a chunk)
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete({}, FindFamily(names, handles, "streams"), StreamsKey("alice", 1)).ok());
  });
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(report.equal);
  EXPECT_EQ(report.live_digest, report.rebuilt_digest);  // the folds agree
  EXPECT_NE(report.live_streams_digest, report.rebuilt_streams_digest);
  EXPECT_EQ(report.differing_folds, std::vector<std::string>{"streams"});
}

// A streams row that does not decode failed replay (and a read by subject) with "malformed
// streams row", naming neither its subject nor its position. Both are named now, printable.
TEST(ReplayTest, AMalformedStreamsRowIsNamedBySubjectAndPosition) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 4, 3);  // alice 1..3 and 7..9, bob 4..6 and 10..12
  }
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    // alice's run from 7: a gap whose varint never ends.
    ASSERT_TRUE(
        db->Put({}, FindFamily(names, handles, "streams"), StreamsKey("alice", 7), "\x80").ok());
  });
  const std::string named = "the streams row of subject \"alice\" at position 7 is malformed";
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find(named), std::string::npos) << s.ToString();
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    std::vector<Event> events;
    s = ledger->ReadEvents(Position(0), 100, {"alice", ""}, &events);
    EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
    EXPECT_NE(s.message().find(named), std::string::npos) << s.ToString();
  }
  // A key that is not a subject, NUL and a position is shown whole, its control byte escaped.
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Put({}, FindFamily(names, handles, "streams"), "\x01" "carol", "").ok());
  });
  s = ReplayProjections(Options(dir.path()), &report);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_NE(s.message().find("the streams row keyed \"\\x01carol\" is malformed"),
            std::string::npos)
      << s.ToString();
}

// A row moved to another position: alice's run of 1..3 now names 4..6, bob's events, which a
// read by subject alice would serve as hers.
TEST(ReplayTest, AStreamsRowPointingAtAnotherSubjectsEventsIsReported) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* streams = FindFamily(names, handles, "streams");
    std::string gaps;
    ASSERT_TRUE(db->Get({}, streams, StreamsKey("alice", 1), &gaps).ok());
    ASSERT_TRUE(db->Delete({}, streams, StreamsKey("alice", 1)).ok());
    ASSERT_TRUE(db->Put({}, streams, StreamsKey("alice", 4), gaps).ok());
  });
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(report.equal);
  EXPECT_EQ(report.differing_folds, std::vector<std::string>{"streams"});
}

// Appends `count` events of about 512 KiB (a stored Stripe webhook can be that big), one a
// command.
void WriteBigEvents(Ledger* ledger, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    AppendCommand command("u" + std::to_string(i % 3), 1, "test.appended.v1", 512u << 10);
    CommandResult r = ledger->Submit(&command);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }
}

// Replay's chunks were counted in events only (4,096), and a chunk is one group whatever its
// size (the writer cuts groups between commands): 4,096 webhooks of 512 KiB made one import of
// ~2 GiB decoded, ~6 GiB at its peak. Every chunk stays within the byte bound (here 2 MiB, 3 of
// these events: the default, kGroupBytesMax, would take 128 of them), and an event larger than
// the bound goes alone.
TEST(ReplayTest, ChunksStayWithinTheByteBound) {
  EXPECT_EQ(ReplayOptions().chunk_bytes, limits::kGroupBytesMax);
  TempDir dir;
  ReplayOptions zero = Options(dir.path());
  zero.chunk_bytes = 0;
  ReplayReport none;
  EXPECT_EQ(ReplayProjections(zero, &none).code(), Code::kInvalidArgument);
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    ASSERT_NO_FATAL_FAILURE(WriteBigEvents(ledger.get(), 10));
  }
  for (const size_t bound : {size_t{2} << 20, size_t{256} << 10}) {
    SCOPED_TRACE(bound);
    ReplayOptions options = Options(dir.path());
    options.chunk_events = 4096;
    options.chunk_bytes = bound;
    size_t chunks = 0, events = 0, largest = 0, most_events = 0;
    options.on_chunk = [&](size_t chunk_events, size_t bytes) {
      ++chunks;
      events += chunk_events;
      EXPECT_GE(chunk_events, 1u);
      if (chunk_events > 1) {
        EXPECT_LE(bytes, bound);
      }
      largest = std::max(largest, bytes);
      most_events = std::max(most_events, chunk_events);
    };
    ReplayReport report;
    Status s = ReplayProjections(options, &report);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(report.equal);
    EXPECT_EQ(report.events, 10u);
    EXPECT_EQ(events, 10u);
    EXPECT_EQ(most_events, bound > (1u << 20) ? 3u : 1u);
    EXPECT_GE(chunks, bound > (1u << 20) ? 4u : 10u);
    if (bound > (1u << 20)) {
      EXPECT_LE(largest, bound);
    }
  }
}

// A fold with no column family in the live store (last opened by a build without it) is stale,
// as a fold of another version: ledgerd's next open creates and fills it. The others are still
// compared.
TEST(ReplayTest, FoldUnknownToTheLiveStoreIsReportedStale) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), {&kCounts});
    WriteMarkedLog(ledger.get(), 2, 2);
  }
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(report.equal);
  EXPECT_TRUE(report.differing_folds.empty());
  ASSERT_EQ(report.stale_folds.size(), 1u);
  EXPECT_EQ(report.stale_folds[0].name, "test_last_type");
  EXPECT_TRUE(report.stale_folds[0].missing);
  EXPECT_FALSE(report.stale_folds[0].recorded);

  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(
        db->Put({}, FindFamily(names, handles, "test_subject_counts"), "zz", "1").ok());
  });
  ASSERT_TRUE(ReplayProjections(Options(dir.path()), &report).ok());
  EXPECT_EQ(report.differing_folds, std::vector<std::string>{"test_subject_counts"});
  EXPECT_EQ(report.stale_folds.size(), 1u);
}

// The scenario: a store last opened read-write by another build (a fold's version changed since)
// is replayed by this build's ledgerctl; the read-only open does not rebuild the fold as
// ledgerd's open would. Its rows differ from the replay by design and used to be reported as a
// bare difference, as if the store were damaged. They are reported as stale instead (recorded
// version, this build's), and not named among the differing folds.
TEST(ReplayTest, FoldsWrittenByAnotherVersionAreReportedStaleNotDifferent) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), Folds());
    WriteMarkedLog(ledger.get(), 20, 3);
  }
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* checkpoints = FindFamily(names, handles, "checkpoints");
    std::string version;
    PutFixed32BE(&version, 7);
    ASSERT_TRUE(db->Put({}, checkpoints, "fold_version.test_subject_counts", version).ok());
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.test_last_type").ok());
    // A row version 7 wrote and this build's fold does not.
    ASSERT_TRUE(db->Put({}, FindFamily(names, handles, "test_subject_counts"), "v7/alice", "1")
                    .ok());
  });
  ReplayReport report;
  Status s = ReplayProjections(Options(dir.path()), &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(report.equal);
  EXPECT_TRUE(report.differing_folds.empty());
  ASSERT_EQ(report.stale_folds.size(), 2u);
  EXPECT_EQ(report.stale_folds[0].name, "test_subject_counts");
  EXPECT_TRUE(report.stale_folds[0].recorded);
  EXPECT_EQ(report.stale_folds[0].store_version, 7u);
  EXPECT_EQ(report.stale_folds[0].build_version, 1u);
  EXPECT_EQ(report.stale_folds[1].name, "test_last_type");
  EXPECT_FALSE(report.stale_folds[1].recorded);

  // A read-write open rebuilds both; the replay is then equal and finds nothing stale.
  { OpenTestLedger(dir.path(), Folds()); }
  ASSERT_TRUE(ReplayProjections(Options(dir.path()), &report).ok());
  EXPECT_TRUE(report.equal);
  EXPECT_TRUE(report.stale_folds.empty());
}

TEST(ReplayCliTest, ExitCodesWithTheRegisteredProjections) {
  // The binary registers projections::AllFolds(); a store written with the same folds replays
  // equal, and a changed row of one of them is a difference (exit 65).
  const std::vector<const Fold*>& folds = projections::AllFolds();
  ASSERT_FALSE(folds.empty());
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), folds);
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  testing::ProcessResult ok = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("replay: OK"), std::string::npos) << ok.out;

  const std::string family(folds.front()->Name());
  EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), FindFamily(names, handles, family),
                        "zz-tampered", "x")
                    .ok());
  });
  testing::ProcessResult bad = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("replay: DIFFERENT projections: " + family), std::string::npos)
      << bad.out;

  EXPECT_EQ(testing::RunLedgerctl("replay --data-dir " + dir.Sub("none")).exit_code, 74);
}

// The 64 hex digits after `label` at the start of a line of `out` (empty when there is none).
std::string Digest(const std::string& out, const std::string& label) {
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(label, 0) == 0) return line.substr(label.size(), 64);
  }
  return "";
}

// The binary: a streams row removed is a difference naming the index (exit 65).
TEST(ReplayCliTest, AStreamsRowRemovedIsADifference) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete({}, FindFamily(names, handles, "streams"), StreamsKey("bob", 3)).ok());
  });
  testing::ProcessResult bad = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("replay: DIFFERENT projections: streams\n"), std::string::npos)
      << bad.out;
  // The digests printed differ where the projections do: the folds' agree, the index's do not
  // (only the folds' were printed, the same twice above "DIFFERENT projections: streams").
  EXPECT_EQ(Digest(bad.out, "replay: live digest    "),
            Digest(bad.out, "replay: rebuilt digest "))
      << bad.out;
  const std::string live_streams = Digest(bad.out, "replay: live streams digest    ");
  const std::string rebuilt_streams = Digest(bad.out, "replay: rebuilt streams digest ");
  EXPECT_EQ(live_streams.size(), 64u) << bad.out;
  EXPECT_EQ(rebuilt_streams.size(), 64u) << bad.out;
  EXPECT_NE(live_streams, rebuilt_streams) << bad.out;
}

// Positions start at 1 (README, events/FORMAT.md): the help said "from position 0".
TEST(ReplayCliTest, HelpNamesTheFirstPosition) {
  for (const char* command : {"replay --help", "--help"}) {
    const testing::ProcessResult help = testing::RunLedgerctl(command);
    EXPECT_EQ(help.exit_code, 0) << command;
    EXPECT_EQ(help.out.find("position 0"), std::string::npos) << help.out;
  }
  EXPECT_NE(testing::RunLedgerctl("replay --help").out.find("from position 1"), std::string::npos);
}

// replay --into a directory the operator made 0755 writes a copy of every projection (emails
// included): its files are the user's alone, as ledgerd's are.
TEST(ReplayCliTest, FilesWrittenIntoAnOperatorsDirectoryAreTheUsersAlone) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  const std::string into = dir.Sub("into");
  ASSERT_TRUE(std::filesystem::create_directory(into));
  std::filesystem::permissions(into, std::filesystem::perms(0755));
  testing::ProcessResult ok =
      testing::RunLedgerctl("replay --data-dir " + dir.path() + " --into " + into);
  ASSERT_EQ(ok.exit_code, 0) << ok.out;
  size_t files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(into)) {
    if (!entry.is_regular_file()) continue;
    ++files;
    const auto perms = std::filesystem::status(entry.path()).permissions();
    EXPECT_EQ(perms & (std::filesystem::perms::group_all | std::filesystem::perms::others_all),
              std::filesystem::perms::none)
        << entry.path();
  }
  EXPECT_GT(files, 3u);
}

// A live log with a missing event is a data error (65) naming the position, not a usage error.
TEST(ReplayCliTest, AGapInTheLiveLogIsADataError) {
  const std::vector<const Fold*>& folds = projections::AllFolds();
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), folds);
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), FindFamily(names, handles, "events"),
                           EncodePositionKey(4))
                    .ok());
  });
  testing::ProcessResult bad =
      testing::RunLedgerctl("replay --data-dir " + dir.path(), /*keep_stderr=*/true);
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("position 4: missing"), std::string::npos) << bad.out;
}

// The last event rewritten and re-sealed, the chain head record left alone: the events link and
// the projections rebuilt from them may equal the live ones, and replay printed OK. The open
// refuses the store now (the record's hash is not the event's), a data error.
TEST(ReplayCliTest, AReSealedHeadEventIsADataError) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 6, 1);
  }
  testing::RewriteStoredEvent(dir.path(), 6, /*reseal=*/true,
                              [](Event* event) { event->data = "{\"m\":\"forged\"}"; });
  // The usage fold keeps the last event's position and hash (its access epoch): the forger
  // rewrites that row too, so the rebuilt projections equal the live ones.
  EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    std::string stored;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), FindFamily(names, handles, "events"),
                        EncodePositionKey(6), &stored)
                    .ok());
    Event forged;
    ASSERT_TRUE(DecodeEvent(stored, &forged).ok());
    std::string epoch;
    PutFixed64BE(&epoch, 6);
    epoch.append(reinterpret_cast<const char*>(forged.hash.data()), forged.hash.size());
    ASSERT_TRUE(
        db->Put(rocksdb::WriteOptions(), FindFamily(names, handles, "usage"), "e", epoch).ok());
  });
  testing::ProcessResult bad =
      testing::RunLedgerctl("replay --data-dir " + dir.path(), /*keep_stderr=*/true);
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("differs from the chain head record"), std::string::npos) << bad.out;
  EXPECT_EQ(bad.out.find("replay: OK"), std::string::npos) << bad.out;
}

// Event 5's record stored under key 4 (export's `move` damage): the import refused it as not
// continuing its head ("imported events must continue the head") and named no position.
TEST(ReplayCliTest, AnEventStoredUnderAnotherPositionIsNamed) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 6, 1);
  }
  EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* events = FindFamily(names, handles, "events");
    std::string five;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(5), &five).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(4), five).ok());
  });
  testing::ProcessResult bad =
      testing::RunLedgerctl("replay --data-dir " + dir.path(), /*keep_stderr=*/true);
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("position 4: the record says position 5"), std::string::npos)
      << bad.out;
}

// The same through ledgerctl: a store whose plan catalog version 1 wrote (before the catalog's
// price/<id> rows of version 2) and whose subscriptions have no version recorded says so per fold
// and exits 75, not 65 with "DIFFERENT projections"; ledgerd's next open rebuilds them.
TEST(ReplayCliTest, AStoreWithFoldsOfAnotherVersionExits75NamingTheVersions) {
  const std::vector<const Fold*>& folds = projections::AllFolds();
  const auto named = [&](std::string_view name) {
    return std::find_if(folds.begin(), folds.end(),
                        [&](const Fold* f) { return f->Name() == name; });
  };
  ASSERT_NE(named("plans"), folds.end());
  ASSERT_NE(named("subscriptions"), folds.end());
  ASSERT_EQ((*named("plans"))->Version(), 2u);
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), folds);
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  EditRaw(dir.path(), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* checkpoints = FindFamily(names, handles, "checkpoints");
    std::string version;
    PutFixed32BE(&version, 1);
    ASSERT_TRUE(db->Put({}, checkpoints, "fold_version.plans", version).ok());
    ASSERT_TRUE(db->Delete({}, checkpoints, "fold_version.subscriptions").ok());
    ASSERT_TRUE(db->Put({}, FindFamily(names, handles, "plans"), "zz-version-1-row", "x").ok());
  });
  testing::ProcessResult stale = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(stale.exit_code, 75) << stale.out;
  EXPECT_NE(stale.out.find("replay: fold plans: store has version 1, this build 2; open it with "
                           "ledgerd once to rebuild\n"),
            std::string::npos)
      << stale.out;
  EXPECT_NE(stale.out.find("replay: fold subscriptions: store has no version recorded"),
            std::string::npos)
      << stale.out;
  EXPECT_EQ(stale.out.find("DIFFERENT"), std::string::npos) << stale.out;

  { OpenTestLedger(dir.path(), folds); }  // ledgerd's open: the rebuild
  testing::ProcessResult ok = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("replay: OK"), std::string::npos) << ok.out;
}

// A store last opened read-write by a build without one of the folds (here byok, before BYOK):
// the read-only open cannot create its family. replay exited 65 ("projection_missing"), as if the
// store were damaged; it is a store waiting for ledgerd's open, as one with folds of another
// version (75).
TEST(ReplayCliTest, AStoreWithoutAFoldsFamilyExits75) {
  const std::vector<const Fold*>& all = projections::AllFolds();
  std::vector<const Fold*> folds;
  std::copy_if(all.begin(), all.end(), std::back_inserter(folds),
               [](const Fold* f) { return f->Name() != "byok"; });
  ASSERT_EQ(folds.size() + 1, all.size());
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.path(), folds);
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  testing::ProcessResult stale = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(stale.exit_code, 75) << stale.out;
  EXPECT_NE(stale.out.find("replay: fold byok: store has no rows for it"), std::string::npos)
      << stale.out;
  EXPECT_NE(stale.out.find("open it with ledgerd once to rebuild"), std::string::npos)
      << stale.out;
  EXPECT_NE(stale.out.find("replay: STALE projections: byok"), std::string::npos) << stale.out;
  EXPECT_EQ(stale.out.find("DIFFERENT"), std::string::npos) << stale.out;

  { OpenTestLedger(dir.path(), all); }  // ledgerd's open: the family created and filled
  testing::ProcessResult ok = testing::RunLedgerctl("replay --data-dir " + dir.path());
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
}

// The entries of directory `path` (none when it does not exist).
std::vector<std::string> Entries(const std::string& path) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

// An interrupted replay (Ctrl-C, a service manager's SIGTERM) left its temporary store, a copy
// of every projection (users' emails included), in $TMPDIR/ledgerctl-replay-XXXXXX: only the
// end of the run removed it. It stops at the next event now, removes it and dies by the signal
// (exiting 128 + the signal instead, bash took the signal as handled by it and went on with the
// script). The signal is sent once the first progress line (after a second of importing) says
// less than half is done.
TEST(ReplayCliTest, AnInterruptedReplayLeavesNoTemporaryStore) {
  TempDir dir;
  constexpr uint64_t kEvents = 400'000;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"));
    WriteMarkedLog(ledger.get(), kEvents / limits::kCommandEventsMax, limits::kCommandEventsMax);
    ASSERT_TRUE(ledger->Flush().ok());
  }
  const std::string live = dir.Sub("live");
  const std::string tmp = dir.Sub("tmp");
  ASSERT_TRUE(std::filesystem::create_directory(tmp));
  std::vector<std::string> env = {"TMPDIR=" + tmp};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).rfind("TMPDIR=", 0) != 0) env.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  for (int signal : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(signal == SIGINT ? "SIGINT" : "SIGTERM");
    int err[2];
    ASSERT_EQ(::pipe(err), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::dup2(err[1], 2);
      ::close(err[0]);
      ::close(err[1]);
      ::signal(SIGINT, SIG_DFL);  // not inherited ignored (a background job's)
      ::signal(SIGTERM, SIG_DFL);
      ::execle(LEDGER_BINARY_DIR "/bin/ledgerctl", "ledgerctl", "replay", "--data-dir",
               live.c_str(), static_cast<char*>(nullptr), envp.data());
      ::_exit(127);
    }
    ::close(err[1]);
    FILE* stderr_lines = ::fdopen(err[0], "r");
    ASSERT_NE(stderr_lines, nullptr);
    std::string first_progress;
    char line[512];
    while (first_progress.empty() && std::fgets(line, sizeof line, stderr_lines) != nullptr) {
      if (std::string_view(line).rfind("replay: ", 0) == 0) first_progress = line;
    }
    // Under way, and far from its end: the temporary store is there.
    EXPECT_FALSE(first_progress.empty());
    if (!first_progress.empty()) {
      EXPECT_LT(std::stoull(first_progress.substr(std::strlen("replay: "))), kEvents / 2)
          << first_progress;
    }
    EXPECT_EQ(Entries(tmp).size(), 1u);
    ::kill(pid, signal);
    std::string rest;
    while (std::fgets(line, sizeof line, stderr_lines) != nullptr) rest += line;
    std::fclose(stderr_lines);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(Entries(tmp).empty()) << Entries(tmp).front();
    // Killed by the signal, not exited 128 + it: a shell running it in a script stops there.
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == signal)
        << "wait status " << status << "; stderr: " << rest;
    EXPECT_NE(rest.find("its temporary store was removed"), std::string::npos) << rest;
    std::filesystem::remove_all(tmp);
    std::filesystem::create_directory(tmp);
  }
}

// A SIGINT after the replay's last check of its flag -- here while its result lines are written
// out, to a pipe whose reader holds them up -- was swallowed: the replay had ended, ledgerctl
// exited 0 and a script running it went on. It dies by the signal now, as one stopped earlier
// does. Deterministic: the pipe is full before ledgerctl starts, and the signal is sent once its
// main thread is blocked writing to its stdout (/proc/<pid>/syscall: write on fd 1).
TEST(ReplayCliTest, ASignalOnceTheReplayHasEndedStillEndsIt) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 3, 10);
  }
  const std::string live = dir.Sub("live");
  const std::string tmp = dir.Sub("tmp");
  ASSERT_TRUE(std::filesystem::create_directory(tmp));
  const std::string err_path = dir.Sub("stderr");
  std::vector<std::string> env = {"TMPDIR=" + tmp};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string_view(*e).rfind("TMPDIR=", 0) != 0) env.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  ASSERT_EQ(::fcntl(out[1], F_SETFL, O_NONBLOCK), 0);
  const std::string page(4096, 'x');
  while (::write(out[1], page.data(), page.size()) > 0) {
  }
  while (::write(out[1], "x", 1) == 1) {
  }
  ASSERT_EQ(::fcntl(out[1], F_SETFL, 0), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ::dup2(out[1], 1);
    ::dup2(err, 2);
    ::close(out[0]);
    ::close(out[1]);
    ::signal(SIGINT, SIG_DFL);  // not inherited ignored (a background job's)
    ::execle(LEDGER_BINARY_DIR "/bin/ledgerctl", "ledgerctl", "replay", "--data-dir",
             live.c_str(), static_cast<char*>(nullptr), envp.data());
    ::_exit(127);
  }
  ::close(out[1]);
  bool readable = true;  // /proc/<pid>/syscall needs the kernel's arch tracehook and ptrace rights
  auto writing_stdout = [&] {
    std::ifstream syscall_file("/proc/" + std::to_string(pid) + "/syscall");
    std::string number, fd;
    syscall_file >> number >> fd;
    if (number.empty()) readable = false;
    return number == std::to_string(SYS_write) && fd == "0x1";
  };
  int status = 0;
  bool exited = false;
  // The child blocks on its full stdout pipe: without a bound, a missed sighting would hang.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (!writing_stdout() && readable && std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      exited = true;
      break;
    }
    ::usleep(1000);
  }
  if (!exited && !writing_stdout()) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    ::close(out[0]);
    if (!readable) GTEST_SKIP() << "/proc/<pid>/syscall is not readable here";
    FAIL() << "ledgerctl never blocked writing its results to stdout";
  }
  ASSERT_FALSE(exited) << "wait status " << status;
  ::kill(pid, SIGINT);
  char buffer[4096];
  while (::read(out[0], buffer, sizeof buffer) > 0) {
  }
  ::close(out[0]);
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::ifstream err_file(err_path);
  const std::string err((std::istreambuf_iterator<char>(err_file)),
                        std::istreambuf_iterator<char>());
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT)
      << "wait status " << status << "; stderr: " << err;
  EXPECT_NE(err.find("SIGINT once the replay had ended; its temporary store was removed"),
            std::string::npos)
      << err;
  EXPECT_TRUE(Entries(tmp).empty());
}

// A replay --into that fails part-way (here at a missing event past the first chunk of 4,096)
// left DIR holding the events and projections of the chunks before it: a store that opens as a
// whole ledger at that prefix (README: "a store rebuilt from the log alone"). What it wrote is
// removed now: the directory it created, or the contents of the empty one given.
TEST(ReplayCliTest, AFailedReplayIntoLeavesNoStartableStore) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 6, 1000);
  }
  EditRaw(dir.Sub("live"), [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), FindFamily(names, handles, "events"),
                           EncodePositionKey(5000))
                    .ok());
  });
  const std::string created = dir.Sub("created");
  testing::ProcessResult bad = testing::RunLedgerctl(
      "replay --data-dir " + dir.Sub("live") + " --into " + created, /*keep_stderr=*/true);
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_NE(bad.out.find("position 5000: missing"), std::string::npos) << bad.out;
  EXPECT_FALSE(std::filesystem::exists(created));
  const std::string existing = dir.Sub("existing");
  ASSERT_TRUE(std::filesystem::create_directory(existing));
  bad = testing::RunLedgerctl("replay --data-dir " + dir.Sub("live") + " --into " + existing,
                              /*keep_stderr=*/true);
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_TRUE(std::filesystem::is_directory(existing));
  EXPECT_TRUE(Entries(existing).empty());
  // A directory that is not empty is refused and left alone.
  const std::string full = dir.Sub("full");
  ASSERT_TRUE(std::filesystem::create_directory(full));
  std::ofstream(full + "/keep") << "x";
  EXPECT_EQ(
      testing::RunLedgerctl("replay --data-dir " + dir.Sub("live") + " --into " + full).exit_code,
      64);
  EXPECT_EQ(Entries(full), std::vector<std::string>{"keep"});
}

// Each file under `path` with its size and modification time, sorted: what a refused replay must
// leave as it was.
std::vector<std::string> Files(const std::string& path) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(path)) {
    if (!entry.is_regular_file()) continue;
    files.push_back(entry.path().string() + " " + std::to_string(entry.file_size()) + " " +
                    std::to_string(entry.last_write_time().time_since_epoch().count()));
  }
  std::sort(files.begin(), files.end());
  return files;
}

// README: an --into directory that a ledgerd or another replay holds is refused "in use" (exit
// 74) and left as it is. It was refused as not empty (64, bad_target) before its lock was tried:
// a held directory always holds its lock file. Once nobody holds it, it is not empty: 64.
TEST(ReplayCliTest, AnIntoDirectoryAnotherProcessHoldsIsInUse) {
  TempDir dir;
  {
    auto ledger = OpenTestLedger(dir.Sub("live"), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 5, 2);
  }
  // A running ledger's store (Ledger::Open locks it as ledgerd does), and a directory whose lock
  // file is held as another replay holds it before its first write.
  auto running = OpenTestLedger(dir.Sub("running"), projections::AllFolds());
  WriteMarkedLog(running.get(), 2, 1);
  const std::string locked = dir.Sub("locked");
  ASSERT_TRUE(std::filesystem::create_directory(locked));
  std::shared_ptr<DirLock> other;
  ASSERT_TRUE(DirLock::Lock(locked, &other).ok());
  std::ofstream(locked + "/CURRENT") << "the other replay's store";
  const auto replay_into = [&](const std::string& into) {
    return testing::RunLedgerctl("replay --data-dir " + dir.Sub("live") + " --into " + into,
                                 /*keep_stderr=*/true);
  };
  for (const std::string& into : {dir.Sub("running"), locked}) {
    SCOPED_TRACE(into);
    const std::vector<std::string> before = Files(into);
    const testing::ProcessResult held = replay_into(into);
    EXPECT_EQ(held.exit_code, 74) << held.out;
    EXPECT_NE(held.out.find(into + " is in use"), std::string::npos) << held.out;
    EXPECT_EQ(Files(into), before);
  }
  running.reset();
  other.reset();
  for (const std::string& into : {dir.Sub("running"), locked}) {
    SCOPED_TRACE(into + ", released");
    const std::vector<std::string> before = Files(into);
    const testing::ProcessResult full = replay_into(into);
    EXPECT_EQ(full.exit_code, 64) << full.out;
    EXPECT_NE(full.out.find("bad_target"), std::string::npos) << full.out;
    EXPECT_EQ(Files(into), before);
  }
}

}  // namespace
}  // namespace ledger::tools
