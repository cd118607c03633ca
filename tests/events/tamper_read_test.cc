// Stored events altered on disk: what the ledger's own reads (open, ReadEvents, ScanRaw) do with
// them. `ledgerctl verify` names the damage (tests/tools/verify_test.cc); these check that the
// daemon's reads do not serve it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "events/coding.h"
#include "events/event.h"
#include "events/fold.h"
#include "events/ledger.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger {
namespace {

using testing::FlipByteInFamilyTable;
using testing::FlipByteInFile;
using testing::MarkerFor;
using testing::TempDir;
using testing::WriteMarkedLog;

// A store of `events` marked events (one command each), flushed to one table file.
void WriteFlushedLog(const std::string& path, size_t events) {
  auto ledger = testing::OpenTestLedger(path);
  ASSERT_NE(ledger, nullptr);
  WriteMarkedLog(ledger.get(), events, 1);
  ASSERT_TRUE(ledger->Flush().ok());
}

// The acceptance run's store: five events, all in one table block, a byte of the third one's
// data flipped. The open's first read of the log (FlushedEventHead, without block checksums)
// cached that block, and every checksummed read after it took the cached copy: ledgerd started
// and served the altered event. The block must be checked: the open fails, naming corruption.
TEST(TamperReadTest, AFlippedByteInTheOnlyTableBlockFailsTheOpen) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 5);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(3), 9).empty());

  LedgerOptions options;
  options.path = dir.path();
  std::unique_ptr<Ledger> ledger;
  Status open = Ledger::Open(options, &ledger);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();
  if (open.ok()) {
    std::vector<Event> events;
    Status read = ledger->ReadEvents(Position(0), 10, {}, &events);
    EXPECT_FALSE(read.ok());
    ledger.reset();
  }

  // A read-only open with block checksums (ledgerctl export): its head check reads without them,
  // and its reads after that must not get the block from there unchecked either.
  options.read_only = true;
  ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  Status scan = ledger->ScanRaw(Position(1), Position(0), [](Position, std::string_view) {
    return true;
  });
  EXPECT_TRUE(scan.IsCorruption()) << scan.ToString();
}

// A damaged first block of a table file whose newest events lie in later blocks: the open reads
// only those and succeeds, and the first read over the damaged block fails. It named neither a
// position nor anything but the file's full path (RocksDB's words, which GET /api/v1/events
// answered a user with); it names the position the damage follows, and no directory.
TEST(TamperReadTest, ADamagedTableBlockIsNamedByPositionWithoutThePath) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 200);  // 4 KiB blocks: events 1..~20 in the first
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(3), 9).empty());
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);
  std::vector<Event> events;
  Status read = ledger->ReadEvents(Position(0), 10, {}, &events);
  ASSERT_TRUE(read.IsCorruption()) << read.ToString();
  EXPECT_NE(read.message().find("read past position 0 "), std::string::npos) << read.ToString();
  EXPECT_EQ(read.message().find(dir.path()), std::string::npos) << read.ToString();
  EXPECT_TRUE(events.empty());
  Status scan = ledger->ScanRaw(Position(1), Position(0), [](Position, std::string_view) {
    return true;
  });
  ASSERT_TRUE(scan.IsCorruption()) << scan.ToString();
  EXPECT_EQ(scan.message().find(dir.path()), std::string::npos) << scan.ToString();
}

// The same for a read by subject over a damaged block of the subjects' index (the streams
// family's table file: the one holding "alice" and no event): it answered RocksDB's words, the
// data directory's path included.
TEST(TamperReadTest, ADamagedSubjectIndexBlockIsNamedByPositionWithoutThePath) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 200);
  std::vector<std::filesystem::path> index_files;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.path().extension() != ".sst") continue;
    const std::string bytes = testing::ReadFileBytes(entry.path());
    if (bytes.find("marker-") == std::string::npos && bytes.find("alice") != std::string::npos) {
      index_files.push_back(entry.path());
    }
  }
  ASSERT_EQ(index_files.size(), 1u);
  {
    std::string bytes = testing::ReadFileBytes(index_files[0]);
    bytes[bytes.find("alice") + 2] ^= 0x01;
    std::ofstream(index_files[0], std::ios::binary | std::ios::trunc) << bytes;
  }
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);
  std::vector<Event> events;
  EventFilter filter;
  filter.subject = "alice";
  Status read = ledger->ReadEvents(Position(0), 10, filter, &events);
  ASSERT_TRUE(read.IsCorruption()) << read.ToString();
  EXPECT_NE(read.message().find("read past position 0 "), std::string::npos) << read.ToString();
  EXPECT_EQ(read.message().find(dir.path()), std::string::npos) << read.ToString();
}

// Rewrites the stored bytes of event `position` through RocksDB (so its block checksums hold):
// with `reseal`, its data changed and its hash recomputed (its own hash verifies, the next
// event's link does not); without, one byte of its data flipped ("marker" became "larker", as
// the acceptance run's "Zebrateamplan" became "Xebrateamplan").
void RewriteEvent(const std::string& path, uint64_t position, bool reseal) {
  testing::RewriteStoredEvent(path, position, reseal, [&](Event* event) {
    if (reseal) {
      event->data = "{\"m\":\"forged\"}";
      return;
    }
    const size_t at = event->data.find(MarkerFor(position));
    ASSERT_NE(at, std::string::npos);
    event->data[at] = static_cast<char>(event->data[at] ^ 0x01);
  });
}

// What GET /api/v1/events serves: an event whose stored bytes no longer match its hash is never
// returned, nor is a page that holds it (the events before it would look like the whole page);
// the error names the position and none of the event's content.
TEST(TamperReadTest, ReadEventsRefusesAnAlteredEvent) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 20);
  RewriteEvent(dir.path(), 12, /*reseal=*/false);
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);

  std::vector<Event> events;
  Status s = ledger->ReadEvents(Position(0), 100, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("position 12 "), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("larker"), std::string::npos) << s.message();
  EXPECT_TRUE(events.empty());
  s = ledger->ReadEvents(Position(11), 1, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  // By type (read through the log) and by subject (through the subject's index) alike.
  EventFilter by_type;
  by_type.type = "test.marked.v1";
  s = ledger->ReadEvents(Position(5), 100, by_type, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EventFilter by_subject;
  by_subject.subject = "bob";  // odd commands: position 12 is the 12th command's
  s = ledger->ReadEvents(Position(0), 100, by_subject, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_TRUE(events.empty());

  // The events before and after it are served.
  s = ledger->ReadEvents(Position(0), 11, {}, &events);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(events.size(), 11u);
  s = ledger->ReadEvents(Position(12), 100, {}, &events);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(events.size(), 8u);
}

// The subject index is derived from the log; a row naming another subject's events (edited, or
// damaged) served them under the subject asked for. The read refuses them, naming the position.
TEST(TamperReadTest, AReadBySubjectRefusesAnotherSubjectsEvent) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 6);  // one event a command: alice 1, 3, 5; bob 2, 4, 6
  testing::EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* streams = testing::FindFamily(names, handles, "streams");
    const std::string alice_three = std::string("alice", 5) + '\0' + EncodePositionKey(3);
    ASSERT_TRUE(db->Delete({}, streams, alice_three).ok());
    ASSERT_TRUE(
        db->Put({}, streams, std::string("alice", 5) + '\0' + EncodePositionKey(4), "").ok());
  });
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);
  EventFilter by_subject;
  by_subject.subject = "alice";
  std::vector<Event> events;
  Status s = ledger->ReadEvents(Position(0), 100, by_subject, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("position 4"), std::string::npos) << s.message();
  EXPECT_TRUE(events.empty());
  // bob's own read is not affected.
  by_subject.subject = "bob";
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 100, by_subject, &events).ok());
  EXPECT_EQ(events.size(), 3u);
}

// A read of the whole log at `path` refused as corruption naming `named`, no event served.
void ExpectTheLogsReadRefused(const std::string& path, const std::string& named) {
  auto ledger = testing::OpenTestLedger(path);
  ASSERT_NE(ledger, nullptr);
  std::vector<Event> events;
  Status s = ledger->ReadEvents(Position(0), 100, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find(named), std::string::npos) << s.message();
  EXPECT_TRUE(events.empty());
}

// An event rewritten and re-sealed verifies on its own; the event after it no longer links to
// it, and a read holding both fails there.
TEST(TamperReadTest, ReadEventsRefusesABrokenLink) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 20);
  RewriteEvent(dir.path(), 12, /*reseal=*/true);
  ExpectTheLogsReadRefused(dir.path(), "position 13 does not link");
}

// The last event rewritten and re-sealed, the chain head record left alone: it verifies on its
// own and no event's prev_hash names it. The open compared only the record's position with the
// last stored key: ledgerd served and published the forged event, reported its hash as the audit
// head, and linked its next append to the record's hash -- a broken link it wrote itself. Every
// open but verify's (which names it) refuses the store now, flushed or still in the logs.
TEST(TamperReadTest, AReSealedHeadEventIsRefusedAtOpen) {
  for (const bool flush : {true, false}) {
    SCOPED_TRACE(flush);
    TempDir dir;
    {
      auto ledger = testing::OpenTestLedger(dir.path());
      ASSERT_NE(ledger, nullptr);
      WriteMarkedLog(ledger.get(), 6, 1);
      if (flush) {
        ASSERT_TRUE(ledger->Flush().ok());
      }
    }
    RewriteEvent(dir.path(), 6, /*reseal=*/true);

    LedgerOptions options;
    options.path = dir.path();
    std::unique_ptr<Ledger> ledger;
    Status open = Ledger::Open(options, &ledger);
    ASSERT_TRUE(open.IsCorruption()) << open.ToString();
    EXPECT_NE(open.message().find("last stored event 6"), std::string::npos) << open.ToString();
    EXPECT_NE(open.message().find("differs from the chain head record"), std::string::npos)
        << open.ToString();
    EXPECT_EQ(open.message().find("forged"), std::string::npos) << open.ToString();
    ledger.reset();

    options.read_only = true;  // ledgerctl export, replay
    EXPECT_TRUE(Ledger::Open(options, &ledger).IsCorruption());
    ledger.reset();

    options.tolerate_head_mismatch = true;  // verify: opens, and is told what is wrong
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    EXPECT_EQ(ledger->Head(), Position(6));
    EXPECT_NE(ledger->HeadRecordProblem().find("differs from the chain head record"),
              std::string::npos)
        << ledger->HeadRecordProblem();
    ledger.reset();

    // Nothing was appended: the forged event is still the last one.
    options.read_only = false;
    options.tolerate_head_mismatch = false;
    EXPECT_TRUE(Ledger::Open(options, &ledger).IsCorruption());
  }
}

// The head check at open passes a store whose record agrees with its last event, the empty store
// included, and one whose earlier event was re-sealed (the next event's link shows that one).
TEST(TamperReadTest, AConsistentHeadRecordOpens) {
  TempDir dir;
  {
    auto ledger = testing::OpenTestLedger(dir.path());
    ASSERT_NE(ledger, nullptr);
    EXPECT_EQ(ledger->Head(), Position(0));
  }
  {
    auto ledger = testing::OpenTestLedger(dir.path());
    ASSERT_NE(ledger, nullptr);
    EXPECT_EQ(ledger->Head(), Position(0));
    WriteMarkedLog(ledger.get(), 3, 2);
  }
  Hash head_hash{};
  {
    auto ledger = testing::OpenTestLedger(dir.path());
    ASSERT_NE(ledger, nullptr);
    EXPECT_EQ(ledger->Head(), Position(6));
    head_hash = ledger->HeadHash();
    ASSERT_TRUE(ledger->Flush().ok());
  }
  RewriteEvent(dir.path(), 3, /*reseal=*/true);
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(ledger->Head(), Position(6));
  EXPECT_EQ(ledger->HeadHash(), head_hash);
}

// The review's scenario: GET /api/v1/events reads a page in calls of 64, and the link was
// checked within a call only. Event 64 rewritten and re-sealed verifies on its own; a call
// ending at it (its successor unread) or starting after it (its successor checked on its own)
// served the forged bytes or the events after them. Both ends are linked now.
TEST(TamperReadTest, AReadIsLinkedToTheEventsBeforeAndAfterIt) {
  TempDir dir;
  WriteFlushedLog(dir.path(), 100);
  RewriteEvent(dir.path(), 64, /*reseal=*/true);
  auto ledger = testing::OpenTestLedger(dir.path());
  ASSERT_NE(ledger, nullptr);
  std::vector<Event> events;
  // Ending at it: the event after it (not served) no longer links to it.
  Status s = ledger->ReadEvents(Position(0), 64, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("position 65 does not link"), std::string::npos) << s.message();
  EXPECT_EQ(s.message().find("forged"), std::string::npos) << s.message();
  EXPECT_TRUE(events.empty());
  s = ledger->ReadEvents(Position(63), 1, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  // By type, bounded at it (up_to: the events route's `until`).
  EventFilter bounded;
  bounded.type = "test.marked.v1";
  bounded.up_to = Position(64);
  s = ledger->ReadEvents(Position(60), 100, bounded, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  // Starting after it: the first event read is linked to its stored hash.
  s = ledger->ReadEvents(Position(64), 64, {}, &events);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("position 65 does not link"), std::string::npos) << s.message();
  EXPECT_TRUE(events.empty());

  // Reads that neither hold it nor touch its successor's link are served.
  s = ledger->ReadEvents(Position(0), 63, {}, &events);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(events.size(), 63u);
  s = ledger->ReadEvents(Position(65), 64, {}, &events);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(events.size(), 35u);
}

// A fold that reads nothing and writes one row per event: only what the catch-up folds matters.
class SeenFold final : public Fold {
 public:
  std::string_view Name() const override { return "seen"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    return rows->Put(Name(), EncodePositionKey(event.position.value()), event.data);
  }
};

// An open of the store at `path` with `fold` new to it: folded from the start at this open.
Status OpenWithANewFold(const std::string& path, Fold* fold) {
  LedgerOptions options;
  options.path = path;
  options.folds = {fold};
  std::unique_ptr<Ledger> ledger;
  return Ledger::Open(options, &ledger);
}

// The fold catch-up at open (a fold added, or rebuilt after its version changed) decoded the
// log without any check: rows folded from an event rewritten through RocksDB answered every
// query after the open. It checks as the served reads do, and the open fails naming corruption.
TEST(TamperReadTest, TheFoldCatchUpAtOpenRefusesAnAlteredEvent) {
  SeenFold seen;
  for (bool reseal : {true, false}) {
    SCOPED_TRACE(reseal ? "re-sealed" : "a byte flipped");
    TempDir dir;
    WriteFlushedLog(dir.path(), 100);
    RewriteEvent(dir.path(), 64, reseal);
    Status open = OpenWithANewFold(dir.path(), &seen);
    EXPECT_TRUE(open.IsCorruption()) << open.ToString();
    EXPECT_NE(open.message().find(reseal ? "position 65 does not link" : "position 64 fails"),
              std::string::npos)
        << open.message();
  }
}

// A catch-up resuming at the fold's checkpoint (64, the event re-sealed) links its first event
// to the stored event there.
TEST(TamperReadTest, AFoldCatchUpLinksItsFirstEventToTheEventBeforeIt) {
  SeenFold seen;
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.folds = {&seen};
  {
    auto ledger = testing::OpenTestLedger(options);
    ASSERT_NE(ledger, nullptr);
    WriteMarkedLog(ledger.get(), 64, 1);
    ASSERT_TRUE(ledger->Flush().ok());
  }
  {
    auto ledger = testing::OpenTestLedger(dir.path());  // without the fold: it stays at 64
    ASSERT_NE(ledger, nullptr);
    WriteMarkedLog(ledger.get(), 36, 1);
    ASSERT_TRUE(ledger->Flush().ok());
  }
  RewriteEvent(dir.path(), 64, /*reseal=*/true);
  std::unique_ptr<Ledger> ledger;
  Status open = Ledger::Open(options, &ledger);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();
  EXPECT_NE(open.message().find("position 65 does not link"), std::string::npos)
      << open.message();
}

// The first event's key deleted through RocksDB. A gap further on shows in the link of the event
// after it; a read or a catch-up from the start linked its first event to nothing, and served or
// folded the log from position 2 as the whole log. Event 1 links to the zero hash (as verify,
// export and the import check): both fail naming corruption.
TEST(TamperReadTest, AMissingFirstEventIsNotServedOrFolded) {
  SeenFold seen;
  TempDir dir;
  WriteFlushedLog(dir.path(), 20);
  testing::EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* events = testing::FindFamily(names, handles, "events");
    ASSERT_TRUE(db->Delete({}, events, EncodePositionKey(1)).ok());
  });
  ASSERT_NO_FATAL_FAILURE(ExpectTheLogsReadRefused(dir.path(), "position 2 does not link"));
  Status open = OpenWithANewFold(dir.path(), &seen);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();
  EXPECT_NE(open.message().find("position 2 does not link"), std::string::npos)
      << open.message();
}

// A command that reads the "seen" family (its first row, or with `scan` all of it) and fails with
// what the read returned.
class ReadSeenCommand final : public Command {
 public:
  explicit ReadSeenCommand(bool scan) : scan_(scan) {}
  Status Decide(const DecideContext& context, Decision*) override {
    if (scan_) {
      return context.state->Scan("seen", "", [](std::string_view, std::string_view) {
        return true;
      });
    }
    std::string value;
    return context.state->Get("seen", EncodePositionKey(1), &value);
  }

 private:
  bool scan_;
};

// A damaged table block of a fold's family: the projection reads (a snapshot's, what the routes
// answer from, and a decider's) handed RocksDB's words on, the data directory's full path
// included -- GET /api/v1/subscriptions/plans answered a user "block checksum mismatch: ... in
// /var/lib/ledgerd/000045.sst offset ...". They still fail as corruption, naming no directory.
TEST(TamperReadTest, ADamagedFoldBlockIsNotNamedWithThePath) {
  SeenFold seen;
  TempDir dir;
  {
    auto ledger = testing::OpenTestLedger(dir.path(), {&seen});
    ASSERT_NE(ledger, nullptr);
    WriteMarkedLog(ledger.get(), 5, 1);
    ASSERT_TRUE(ledger->Flush().ok());
  }
  ASSERT_FALSE(FlipByteInFamilyTable(dir.path(), "seen", 2).empty());
  auto ledger = testing::OpenTestLedger(dir.path(), {&seen});
  ASSERT_NE(ledger, nullptr);

  std::unique_ptr<ReadView> view = ledger->Snapshot();
  std::string value;
  Status get = view->Get("seen", EncodePositionKey(1), &value);
  ASSERT_TRUE(get.IsCorruption()) << get.ToString();
  EXPECT_EQ(get.message().find(dir.path()), std::string::npos) << get.ToString();
  EXPECT_NE(get.message().find(".sst"), std::string::npos) << get.ToString();
  Status scan = view->Scan("seen", "", [](std::string_view, std::string_view) { return true; });
  ASSERT_TRUE(scan.IsCorruption()) << scan.ToString();
  EXPECT_EQ(scan.message().find(dir.path()), std::string::npos) << scan.ToString();

  for (bool by_scan : {false, true}) {
    ReadSeenCommand read(by_scan);
    CommandResult decided = ledger->Submit(&read);
    ASSERT_TRUE(decided.status.IsCorruption()) << decided.status.ToString();
    EXPECT_EQ(decided.status.message().find(dir.path()), std::string::npos)
        << decided.status.ToString();
  }
  EXPECT_EQ(ledger->Head(), Position(5));
}

}  // namespace
}  // namespace ledger
