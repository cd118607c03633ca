#include "events/ledger.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include <rocksdb/db.h>

#include "events/coding.h"
#include "events/event.h"
#include "tests/support/durability.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::AppendCommand;
using testing::RejectCommand;
using testing::SubjectsCommand;
using testing::TempDir;

std::unique_ptr<Ledger> OpenLedger(const std::string& path, const Clock* clock = nullptr) {
  LedgerOptions options;
  options.path = path;
  options.clock = clock;
  return testing::OpenTestLedger(options);
}

// One row per subject.
class SubjectSeenFold final : public Fold {
 public:
  std::string_view Name() const override { return "test_subject_seen"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    return rows->Put(Name(), event.subject, "seen");
  }
};

// The digests read every row (seconds on a large store): ledgerctl replay's SIGINT/SIGTERM
// stops them, within kDigestCancelCheckRows rows, instead of waiting for the last one.
TEST(LedgerTest, DigestsStopOnceCancelled) {
  TempDir dir;
  const SubjectSeenFold fold;
  LedgerOptions options;
  options.path = dir.path();
  options.folds = {&fold};
  auto ledger = testing::OpenTestLedger(options);
  SubjectsCommand command({"alice", "bob", "carol"});
  ASSERT_TRUE(ledger->Submit(&command).status.ok());
  std::atomic<bool> cancel{false};
  Hash plain{}, flagged{};
  ASSERT_TRUE(ledger->ProjectionDigest(&plain).ok());
  ASSERT_TRUE(ledger->ProjectionDigest(&flagged, &cancel).ok());
  EXPECT_EQ(flagged, plain);
  ASSERT_TRUE(ledger->StreamsDigest(&plain).ok());
  ASSERT_TRUE(ledger->StreamsDigest(&flagged, &cancel).ok());
  EXPECT_EQ(flagged, plain);

  cancel.store(true);
  Hash untouched{};
  Status s = ledger->ProjectionDigest(&untouched, &cancel);
  EXPECT_EQ(s.problem(), "digest_cancelled") << s.ToString();
  s = ledger->StreamsDigest(&untouched, &cancel);
  EXPECT_EQ(s.problem(), "digest_cancelled") << s.ToString();
  EXPECT_EQ(untouched, Hash{});
}

TEST(LedgerTest, AppendsAssignGapFreePositionsAndChainHashes) {
  TempDir dir;
  ManualClock clock(1'700'000'000'000'000);
  auto ledger = OpenLedger(dir.path(), &clock);
  AppendCommand one("alice", 1);
  CommandResult r1 = ledger->Submit(&one);
  ASSERT_TRUE(r1.status.ok()) << r1.status.ToString();
  EXPECT_EQ(r1.position, Position(1));
  AppendCommand three("bob", 3);
  CommandResult r2 = ledger->Submit(&three);
  ASSERT_TRUE(r2.status.ok());
  EXPECT_EQ(r2.position, Position(4));
  EXPECT_EQ(r2.events_appended, 3u);
  EXPECT_EQ(ledger->Head(), Position(4));

  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 100, {}, &events).ok());
  ASSERT_EQ(events.size(), 4u);
  Hash prev{};
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].position, Position(i + 1));
    EXPECT_EQ(events[i].prev_hash, prev);
    Event copy = events[i];
    SealEvent(&copy);
    EXPECT_EQ(copy.hash, events[i].hash);
    EXPECT_EQ(events[i].time_us, 1'700'000'000'000'000);
    prev = events[i].hash;
  }
  EXPECT_EQ(ledger->HeadHash(), prev);
  // Nothing comes after the last position there can be (the next one would wrap to the start).
  ASSERT_TRUE(ledger->ReadEvents(Position(UINT64_MAX), 100, {}, &events).ok());
  EXPECT_TRUE(events.empty());
  ASSERT_TRUE(ledger->ReadEvents(Position(4), 100, {}, &events).ok());
  EXPECT_TRUE(events.empty());
}

// Whoever creates a store (ledgerd, ledgerctl stripe-setup, replay --into), it is its user's
// alone: it holds emails, webhooks as delivered and sealed keys. An existing directory keeps the
// mode its operator gave it.
TEST(LedgerTest, ACreatedStoreIsPrivateWhateverTheUmask) {
  TempDir dir;
  const mode_t old_umask = ::umask(022);
  {
    LedgerOptions options;
    options.path = dir.Sub("a/b/store");
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  }
  ::umask(old_umask);
  struct stat st {};
  ASSERT_EQ(::stat(dir.Sub("a/b/store").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::mkdir(dir.Sub("shared").c_str(), 0750), 0);
  {
    LedgerOptions options;
    options.path = dir.Sub("shared");
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  }
  ASSERT_EQ(::stat(dir.Sub("shared").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
}

TEST(LedgerTest, ReopenRecoversHeadAndContinuesTheChain) {
  TempDir dir;
  Hash head_hash;
  {
    auto ledger = OpenLedger(dir.path());
    AppendCommand c("alice", 5);
    ASSERT_TRUE(ledger->Submit(&c).status.ok());
    head_hash = ledger->HeadHash();
  }
  auto ledger = OpenLedger(dir.path());
  EXPECT_EQ(ledger->Head(), Position(5));
  EXPECT_EQ(ledger->HeadHash(), head_hash);
  AppendCommand c("alice", 1);
  CommandResult r = ledger->Submit(&c);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.position, Position(6));
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(5), 10, {}, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].prev_hash, head_hash);
}

// Idempotency records live in a hash memtable (events/ledger.cc): records flushed to table files,
// records still in the memtable and records recovered from the log on reopen are all found.
TEST(LedgerTest, IdempotencyRecordsAreFoundAfterFlushAndReopen) {
  TempDir dir;
  constexpr int kFlushed = 300, kUnflushed = 300;
  std::vector<Position> positions;
  auto submit = [](Ledger* ledger, int i, bool expect_replay, Position* position) {
    AppendCommand c("user-" + std::to_string(i % 7), 1);
    c.idempotency_scope = "scope|POST /x";
    c.idempotency_key = "key-" + std::to_string(i);
    c.request_hash = Sha256("body-" + std::to_string(i));
    CommandResult r = ledger->Submit(&c);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_EQ(r.replayed, expect_replay) << i;
    *position = r.position;
  };
  {
    auto ledger = OpenLedger(dir.path());
    for (int i = 0; i < kFlushed + kUnflushed; ++i) {
      if (i == kFlushed) {
        ASSERT_TRUE(ledger->Flush().ok());
      }
      Position p;
      submit(ledger.get(), i, false, &p);
      positions.push_back(p);
    }
    for (int i = 0; i < kFlushed + kUnflushed; i += 37) {  // before the reopen too
      Position p;
      submit(ledger.get(), i, true, &p);
      EXPECT_EQ(p, positions[i]);
    }
  }
  auto ledger = OpenLedger(dir.path());
  const Position head = ledger->Head();
  for (int i = 0; i < kFlushed + kUnflushed; ++i) {
    Position p;
    submit(ledger.get(), i, true, &p);
    EXPECT_EQ(p, positions[i]) << i;
  }
  EXPECT_EQ(ledger->Head(), head) << "a retry appended";
}

TEST(LedgerTest, IdempotentRetryReturnsOriginalResultWithoutAppending) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  AppendCommand first("alice", 2);
  first.idempotency_scope = "alice|POST /x";
  first.idempotency_key = "k1";
  first.request_hash = Sha256("body-1");
  CommandResult r1 = ledger->Submit(&first);
  ASSERT_TRUE(r1.status.ok());
  EXPECT_FALSE(r1.replayed);

  AppendCommand retry("alice", 2);
  retry.idempotency_scope = first.idempotency_scope;
  retry.idempotency_key = "k1";
  retry.request_hash = Sha256("body-1");
  CommandResult r2 = ledger->Submit(&retry);
  ASSERT_TRUE(r2.status.ok());
  EXPECT_TRUE(r2.replayed);
  EXPECT_EQ(r2.position, r1.position);
  EXPECT_EQ(r2.body, r1.body);
  EXPECT_EQ(ledger->Head(), Position(2));

  AppendCommand other("alice", 1);
  other.idempotency_scope = first.idempotency_scope;
  other.idempotency_key = "k1";
  other.request_hash = Sha256("body-2");
  CommandResult r3 = ledger->Submit(&other);
  EXPECT_EQ(r3.status.code(), Code::kConflict);
  EXPECT_EQ(r3.status.problem(), "idempotency_key_reused");
  EXPECT_EQ(ledger->Head(), Position(2));

  // The same key in another scope is a different key.
  AppendCommand scoped("bob", 1);
  scoped.idempotency_scope = "bob|POST /x";
  scoped.idempotency_key = "k1";
  scoped.request_hash = Sha256("body-2");
  EXPECT_TRUE(ledger->Submit(&scoped).status.ok());
  EXPECT_EQ(ledger->Head(), Position(3));
}

// A command answered from its idempotency record is told so, with the state as it is now (a
// replayed consume's rate-limit headers are the quota now, not the first answer's): the first
// decision is not run again and nothing is appended.
class ReplayWatchingCommand : public AppendCommand {
 public:
  using AppendCommand::AppendCommand;
  void Replayed(const DecideContext& context) override {
    replayed_at = context.head;
    saw_state = context.state != nullptr;
  }
  std::optional<Position> replayed_at;
  bool saw_state = false;
};

TEST(LedgerTest, AReplayedCommandIsToldTheHeadNow) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  ReplayWatchingCommand first("alice", 2);
  first.idempotency_scope = "alice|POST /x";
  first.idempotency_key = "k1";
  first.request_hash = Sha256("body-1");
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  EXPECT_FALSE(first.replayed_at.has_value());
  AppendCommand other("bob", 1);
  ASSERT_TRUE(ledger->Submit(&other).status.ok());

  ReplayWatchingCommand retry("alice", 2);
  retry.idempotency_scope = first.idempotency_scope;
  retry.idempotency_key = "k1";
  retry.request_hash = Sha256("body-1");
  CommandResult r = ledger->Submit(&retry);
  ASSERT_TRUE(r.status.ok());
  EXPECT_TRUE(r.replayed);
  EXPECT_EQ(r.position, Position(2));
  ASSERT_TRUE(retry.replayed_at.has_value());
  EXPECT_EQ(*retry.replayed_at, Position(3));
  EXPECT_TRUE(retry.saw_state);
  EXPECT_EQ(ledger->Head(), Position(3));
}

TEST(LedgerTest, RejectionFailsOnlyItsOwnCommandUnderConcurrency) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  constexpr int kThreads = 16, kPerThread = 200;
  std::atomic<int> ok{0}, rejected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if ((t + i) % 3 == 0) {
          RejectCommand c(Status::InvalidArgument("nope", "rejected"));
          if (ledger->Submit(&c).status.problem() == "nope") rejected++;
        } else {
          AppendCommand c("user-" + std::to_string(t));
          if (ledger->Submit(&c).status.ok()) ok++;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok + rejected, kThreads * kPerThread);
  EXPECT_EQ(ledger->Head(), Position(ok.load()));
  EXPECT_GT(ledger->metrics().groups_committed.Value(), 0u);
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 1000, {"user-3", ""}, &events).ok());
  EXPECT_FALSE(events.empty());
  for (const Event& e : events) EXPECT_EQ(e.subject, "user-3");
}

TEST(LedgerTest, SnapshotCarriesTheCommittedPosition) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  AppendCommand c("alice", 3);
  ASSERT_TRUE(ledger->Submit(&c).status.ok());
  auto view = ledger->Snapshot();
  AppendCommand d("alice", 1);
  ASSERT_TRUE(ledger->Submit(&d).status.ok());
  EXPECT_EQ(view->position(), Position(3));
  EXPECT_EQ(ledger->Snapshot()->position(), Position(4));
}

TEST(LedgerTest, CheckpointsRoundTrip) {
  TempDir dir;
  auto ledger = OpenLedger(dir.path());
  Position p;
  ASSERT_TRUE(ledger->GetCheckpoint("outbox.kafka", &p).ok());
  EXPECT_EQ(p, Position(0));
  ASSERT_TRUE(ledger->PutCheckpoint("outbox.kafka", Position(42), true).ok());
  ASSERT_TRUE(ledger->GetCheckpoint("outbox.kafka", &p).ok());
  EXPECT_EQ(p, Position(42));
}

// The streams index keeps one row per run of a subject's events in a command (FORMAT.md). Reading
// a subject's events after any position must give exactly what filtering the whole log gives,
// whether the position falls before, inside or after a run.
TEST(LedgerTest, ReadingBySubjectAgreesWithFilteringTheLog) {
  testing::TempDir dir;
  LedgerOptions options;
  options.path = dir.Sub("ledger");
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  std::mt19937 random(7);
  const std::vector<std::string> subjects = {"a", "b", "ab", "c"};
  for (int c = 0; c < 60; ++c) {
    std::vector<std::string> picked;
    const int n = 1 + static_cast<int>(random() % (c % 10 == 0 ? 300 : 6));
    for (int i = 0; i < n; ++i) picked.push_back(subjects[random() % subjects.size()]);
    SubjectsCommand command(picked);
    ASSERT_TRUE(ledger->Submit(&command).status.ok());
    if (c % 7 == 0) {  // a rejected command in between leaves no streams row behind
      testing::RejectCommand reject(Status::Make(Code::kUnprocessable, "no", "no"));
      ASSERT_FALSE(ledger->Submit(&reject).status.ok());
    }
  }
  std::vector<Event> all, page;
  do {  // ReadEvents returns at most limits::kReadEventsMax per call
    ASSERT_TRUE(ledger->ReadEvents(Position(all.size()), 100000, {}, &page).ok());
    all.insert(all.end(), page.begin(), page.end());
  } while (!page.empty());
  ASSERT_EQ(all.size(), ledger->Head().value());
  for (const std::string& subject : subjects) {
    for (uint64_t after = 0; after <= all.size(); after += 1 + random() % 37) {
      for (size_t limit : {size_t{1}, size_t{5}, size_t{1000}}) {
        std::vector<Event> expected;
        for (const Event& e : all) {
          if (e.subject == subject && e.position.value() > after && expected.size() < limit) {
            expected.push_back(e);
          }
        }
        std::vector<Event> got;
        ASSERT_TRUE(ledger->ReadEvents(Position(after), limit, {subject, ""}, &got).ok());
        ASSERT_EQ(got.size(), expected.size()) << subject << " after " << after;
        for (size_t i = 0; i < got.size(); ++i) {
          EXPECT_EQ(got[i].position, expected[i].position) << subject << " after " << after;
        }
      }
    }
  }
}

TEST(LedgerTest, EventIdsAreVersion4UuidsAndUnique) {
  const std::regex uuid("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    std::string id = NewUuid();
    ASSERT_TRUE(std::regex_match(id, uuid)) << id;
    seen.insert(std::move(id));
  }
  EXPECT_EQ(seen.size(), 10000u);
}

// kPaddedEvents events of about 2 KB of data each.
constexpr size_t kPaddedEvents = 50;
AppendCommand PaddedAppend() {
  return AppendCommand("padded", kPaddedEvents, "test.appended.v1", 2000);
}

// Walks the whole log (gaps, hashes, links, head) as the durability tests do; returns how many
// events it read.
uint64_t CountChainedEvents(Ledger* ledger) {
  testing::DurabilityReport report = testing::CheckDurability(ledger, {});
  EXPECT_TRUE(report.ok()) << report.Summary();
  return report.events_scanned;
}

// The events family's table files are written once, by the flush of its memtable, and never
// rewritten by a compaction (a log only grows, so there is nothing to merge). With RocksDB's
// leveled compaction every one of them was rewritten once, to zero its sequence numbers; this
// test then fails with about as many bytes compacted as flushed.
TEST(LedgerTest, CompactionsNeverRewriteTheEventsTableFiles) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.events_memtable_bytes = 256 << 10;
  constexpr size_t kCommands = 80, kEventsPerCommand = kPaddedEvents;  // 4000 events, ~8 MB
  {
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    for (size_t c = 0; c < kCommands; ++c) {
      AppendCommand append = PaddedAppend();
      CommandResult r = ledger->Submit(&append);
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    }
    ASSERT_TRUE(ledger->Flush().ok());
    Status idle = ledger->WaitForBackgroundWork(60'000);
    ASSERT_TRUE(idle.ok()) << idle.ToString();
    const LedgerMetrics& m = ledger->metrics();
    EXPECT_GE(m.table_bytes_flushed.Value(), kCommands * kEventsPerCommand * 2000);
    EXPECT_EQ(m.event_table_bytes_compacted.Value(), 0u)
        << "of " << m.table_bytes_flushed.Value() << " bytes flushed";
  }
  std::unique_ptr<Ledger> reopened;
  ASSERT_TRUE(Ledger::Open(options, &reopened).ok());
  ASSERT_EQ(reopened->Head(), Position(kCommands * kEventsPerCommand));
  EXPECT_EQ(CountChainedEvents(reopened.get()), kCommands * kEventsPerCommand);
  EXPECT_EQ(reopened->metrics().event_table_bytes_compacted.Value(), 0u);
}

// A store whose events family was compacted by levels (as every store was before the family
// moved to universal compaction; here its files are put at L2): it opens with every event, is
// moved into universal compaction's layout once, and from then on its files are only moved.
TEST(LedgerTest, AStoreWhoseEventsWereCompactedByLevelsOpens) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.events_memtable_bytes = 256 << 10;
  {
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    for (int c = 0; c < 60; ++c) {
      AppendCommand append = PaddedAppend();
      ASSERT_TRUE(ledger->Submit(&append).status.ok());
    }
    ASSERT_TRUE(ledger->Flush().ok());
  }
  {
    std::vector<std::string> names;
    ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::Options(), dir.path(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
    for (const std::string& name : names) {
      descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());  // leveled
    }
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir.path(), descriptors, &handles, &db).ok());
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] != "events") continue;
      rocksdb::CompactRangeOptions compact;
      compact.change_level = true;
      compact.target_level = 2;
      EXPECT_TRUE(db->CompactRange(compact, handles[i], nullptr, nullptr).ok());
      rocksdb::ColumnFamilyMetaData meta;
      db->GetColumnFamilyMetaData(handles[i], &meta);
      ASSERT_GT(meta.levels.size(), 2u);
      EXPECT_GT(meta.levels[2].files.size(), 0u);
    }
    for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
    delete db;
  }
  // The open rewrites the family once, into universal compaction's layout; after that its files
  // are only moved. Without that rewrite the new files' runs fill L1 and then merge into L0,
  // rewritten again and again (4 MB for the 4 MB appended below).
  std::unique_ptr<Ledger> reopened;
  Status open = Ledger::Open(options, &reopened);
  ASSERT_TRUE(open.ok()) << open.ToString();
  EXPECT_EQ(reopened->Head(), Position(3000));
  const uint64_t moved = reopened->metrics().event_table_bytes_compacted.Value();
  EXPECT_GT(moved, 0u);
  for (int c = 0; c < 40; ++c) {
    AppendCommand append = PaddedAppend();
    ASSERT_TRUE(reopened->Submit(&append).status.ok());
  }
  ASSERT_TRUE(reopened->Flush().ok());
  ASSERT_TRUE(reopened->WaitForBackgroundWork(60'000).ok());
  EXPECT_EQ(reopened->metrics().event_table_bytes_compacted.Value(), moved);
  EXPECT_EQ(CountChainedEvents(reopened.get()), 5000u);
  reopened.reset();
  // Once is enough: the next open finds the layout as universal compaction left it.
  ASSERT_TRUE(Ledger::Open(options, &reopened).ok());
  ASSERT_TRUE(reopened->WaitForBackgroundWork(60'000).ok());
  EXPECT_EQ(reopened->metrics().event_table_bytes_compacted.Value(), 0u);
}

}  // namespace
}  // namespace ledger
