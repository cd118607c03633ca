// Recovery tests: open, write, close, damage (or not), reopen and check (LevelDB's
// recovery_test.cc). The ledger opens RocksDB with WALRecoveryMode::kTolerateCorruptedTailRecords:
// a torn final record can only be a write that was never acknowledged and is dropped; damage
// anywhere before the tail must stop the open, so that the daemon refuses to start instead of
// silently dropping acknowledged events — which the default kPointInTimeRecovery does, as the
// last test shows.
#include <gtest/gtest.h>

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/options.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <random>
#include <thread>

#include "events/coding.h"
#include "events/fold.h"
#include "events/ledger.h"
#include "events/wal_log.h"
#include "tests/support/durability.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wal_records.h"

namespace ledger {
namespace {

using testing::CheckDurability;
using testing::CommandSpec;
using testing::ConcurrentLoad;
using testing::DurabilityReport;
using testing::LoadOptions;
using testing::Outcome;
using testing::TempDir;
using testing::LogRecords;


std::unique_ptr<Ledger> Open(const std::string& path) {
  LedgerOptions options;
  options.path = path;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ledger;
}

// Submits `count` commands one after another (one group each) and records them.
void AppendSequentially(Ledger* ledger, const std::string& tag, int count,
                        std::vector<Outcome>* acknowledged) {
  for (int i = 0; i < count; ++i) {
    CommandSpec spec;
    spec.subject = tag + "-" + std::to_string(i);
    spec.events = 1 + static_cast<size_t>(i % 3);
    if (i % 4 == 0) {
      spec.idempotency_scope = tag;
      spec.idempotency_key = spec.subject;
      spec.request_hash = Sha256(spec.subject);
    }
    auto command = spec.Make();
    CommandResult r = ledger->Submit(command.get());
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    acknowledged->push_back(Outcome{spec, r});
  }
}

// Opens a store at `path`, appends `count` commands one by one and closes it (RocksDB does not
// flush a WAL-backed memtable on close: the commands live in the newest log).
void WriteAndClose(const std::string& path, const std::string& tag, int count,
                   std::vector<Outcome>* acknowledged) {
  auto ledger = Open(path);
  ASSERT_NE(ledger, nullptr);
  AppendSequentially(ledger.get(), tag, count, acknowledged);
}

// The newest write-ahead log file of a closed database.
std::string LastWal(const std::string& path) {
  std::string last;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    std::string name = entry.path().filename().string();
    if (entry.path().extension() == ".log" && entry.file_size() > 0 &&
        (last.empty() || name > std::filesystem::path(last).filename().string())) {
      last = entry.path().string();
    }
  }
  return last;
}

void FlipByte(const std::string& file, uint64_t offset) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x5a));
}

TEST(RecoveryTest, ReopenAfterManySmallGroupsKeepsEveryEventAndContinuesTheChain) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  for (int session = 0; session < 3; ++session) {
    SCOPED_TRACE("session " + std::to_string(session));
    auto ledger = Open(dir.path());
    ASSERT_NE(ledger, nullptr);
    if (session > 0) {
      DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
      ASSERT_TRUE(report.ok()) << report.Summary();
    }
    std::string tag = "r" + std::to_string(session);
    AppendSequentially(ledger.get(), tag + "-seq", 80, &acknowledged);
    LoadOptions load_options;
    load_options.threads = 8;
    load_options.tag = tag + "-conc";
    load_options.seed = static_cast<uint64_t>(session) + 1;
    load_options.commands_per_thread = 20;
    {
      ConcurrentLoad load(ledger.get(), load_options);
      load.Join();
      EXPECT_TRUE(load.outcomes().Failed().empty());
      auto acked = load.outcomes().Acknowledged();
      acknowledged.insert(acknowledged.end(), acked.begin(), acked.end());
    }
    EXPECT_GE(ledger->metrics().groups_committed.Value(), 80u);
  }
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.head, report.max_acknowledged);
}

// `events` events of `bytes` of data each, for one subject.
class PaddedAppend : public Command {
 public:
  PaddedAppend(size_t events, size_t bytes) : events_(events), bytes_(bytes) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    for (size_t i = 0; i < events_; ++i) {
      decision->events.push_back(NewEvent{"test.padded.v1", "padded",
                                          "{\"pad\":\"" + std::string(bytes_, 'p') + "\"}"});
    }
    decision->body = "{}";
    return Status::OK();
  }

 private:
  const size_t events_, bytes_;
};

// RocksDB deletes obsolete logs in the background: one listed may be gone when its size is asked.
uint64_t WalBytes(const std::string& path) {
  uint64_t total = 0;
  for (const auto& entry : std::filesystem::directory_iterator(path)) {
    if (entry.path().extension() != ".log") continue;
    std::error_code gone;
    const uint64_t size = std::filesystem::file_size(entry.path(), gone);
    if (!gone) total += size;
  }
  return total;
}

// Writes 24 MiB of events (12 commands of 2 MiB) into a store whose logs are limited to
// `max_total_wal_bytes`, then returns the bytes its log files hold once the flushes the limit
// asked for are done (waits up to 20 s for them to get under `wait_for_at_most`; 0: no wait).
// RocksDB checks the limit on writes, and not while the oldest log's flush is still running: a
// write that comes then leaves the next-oldest logs live until a later write. A live store keeps
// writing, so while it waits this keeps appending one small event every 100 ms. `*appended`: the
// events acknowledged; `*head`: the head after a reopen.
uint64_t LogBytesAfterWriting(uint64_t max_total_wal_bytes, uint64_t wait_for_at_most,
                              uint64_t* appended, Position* head) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.path();
  options.max_total_wal_bytes = max_total_wal_bytes;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return 0;
  *appended = 0;
  for (int i = 0; i < 12; ++i) {
    PaddedAppend command(256, 8 << 10);
    CommandResult r = ledger->Submit(&command);
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    *appended += r.events_appended;
  }
  uint64_t bytes = WalBytes(dir.path());
  for (int i = 0; i < 200 && wait_for_at_most > 0 && bytes > wait_for_at_most; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    PaddedAppend small(1, 16);
    CommandResult r = ledger->Submit(&small);
    EXPECT_TRUE(r.status.ok()) << r.status.ToString();
    *appended += r.events_appended;
    bytes = WalBytes(dir.path());
  }
  ledger.reset();
  // Whatever the logs hold, a reopen has every event.
  EXPECT_TRUE(Ledger::Open(options, &ledger).ok());
  if (ledger != nullptr) *head = ledger->Head();
  return bytes;
}

// A family written with every group (the head row) never fills its memtable, so without a limit
// every log since the open stays live and a restart replays all of them. With the limit RocksDB
// flushes the families that hold the oldest log, and the logs shrink back under it.
TEST(RecoveryTest, LiveLogsStayUnderTheLimitInsteadOfHoldingEverythingSinceTheOpen) {
  constexpr uint64_t kMiB = 1 << 20;
  Position head(0);
  uint64_t appended = 0;
  const uint64_t limited = LogBytesAfterWriting(4 * kMiB, 8 * kMiB, &appended, &head);
  EXPECT_LE(limited, 8 * kMiB);
  EXPECT_GE(appended, 12u * 256u);
  EXPECT_EQ(head.value(), appended);
  // Negative control: RocksDB's default (0: 4x the memtables) keeps all 24 MiB.
  const uint64_t unlimited = LogBytesAfterWriting(0, 0, &appended, &head);
  EXPECT_GE(unlimited, 24 * kMiB);
  EXPECT_EQ(appended, 12u * 256u);
  EXPECT_EQ(head.value(), appended);
}

// A crash in the middle of the last WAL append leaves a partial record. Here the record of the
// last command is torn by hand after a clean shutdown without a flush (the data lives only in the
// WAL): the ledger opens, loses exactly that command, and continues the chain.
TEST(RecoveryTest, ATornWalTailOpensAndLosesOnlyTheTornGroup) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  {
    auto ledger = Open(dir.path());
    ASSERT_NE(ledger, nullptr);
    AppendSequentially(ledger.get(), "torn", 40, &acknowledged);
  }  // closed: RocksDB does not flush a WAL-backed memtable on close
  std::string wal = LastWal(dir.path());
  ASSERT_FALSE(wal.empty());
  uint64_t size = std::filesystem::file_size(wal);
  std::filesystem::resize_file(wal, size - 3);

  Outcome torn = acknowledged.back();
  acknowledged.pop_back();  // in a real crash this write could not have been acknowledged
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.head.value(), torn.result.position.value() - torn.result.events_appended);
  EXPECT_EQ(report.events_per_subject.count(torn.spec.subject), 0u);

  auto command = torn.spec.Make();  // the client's retry appends it again, once
  CommandResult r = ledger->Submit(command.get());
  ASSERT_TRUE(r.status.ok());
  EXPECT_FALSE(r.replayed);
  EXPECT_EQ(r.position, torn.result.position);
  acknowledged.push_back(Outcome{torn.spec, r});
  ledger.reset();
  ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Where the last WriteBatch of a log file begins: its kFull or kFirst fragment.
uint64_t LastBatchStart(const std::string& contents) {
  uint64_t start = 0;
  wal::WalkFragments(contents, [&](const wal::Fragment& f) {
    if (f.base_type == wal::kFullType || f.base_type == wal::kFirstType) start = f.offset;
    return true;
  });
  return start;
}

// Every position from 1 to the head is there: the log has no hole.
void ExpectNoHole(Ledger* ledger) {
  uint64_t expected = 1;
  ASSERT_TRUE(ledger
                  ->ScanRaw(Position(1), ledger->Head(),
                            [&](Position p, std::string_view) {
                              EXPECT_EQ(p.value(), expected);
                              ++expected;
                              return true;
                            })
                  .ok());
  EXPECT_EQ(expected, ledger->Head().value() + 1);
}

void ZeroTail(const std::string& file, uint64_t bytes) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  const uint64_t size = std::filesystem::file_size(file);
  f.seekp(static_cast<std::streamoff>(size - bytes));
  f << std::string(bytes, '\0');
}

// Like WriteAndClose, with one more command of 400 events last: a WriteBatch of ~100 KiB, over
// several 32 KiB blocks of the log.
void WriteWithABigLastBatch(const std::string& path, const std::string& tag, int count,
                            std::vector<Outcome>* acknowledged) {
  auto ledger = Open(path);
  ASSERT_NE(ledger, nullptr);
  AppendSequentially(ledger.get(), tag, count, acknowledged);
  CommandSpec big;
  big.subject = tag + "-big";
  big.events = 400;
  auto command = big.Make();
  CommandResult r = ledger->Submit(command.get());
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  acknowledged->push_back(Outcome{big, r});
}

// The log reader agrees with RocksDB's writer: every fragment RocksDB wrote passes our checksum.
TEST(WalLogTest, EveryFragmentRocksDbWritesPassesTheChecksum) {
  EXPECT_EQ(wal::Crc32c("123456789"), 0xe3069283u);  // the CRC-32C check value
  TempDir dir;
  std::vector<Outcome> acknowledged;
  WriteAndClose(dir.path(), "crc", 30, &acknowledged);
  const std::string contents = ReadFile(LastWal(dir.path()));
  size_t fragments = 0, good = 0;
  EXPECT_EQ(wal::WalkFragments(contents,
                               [&](const wal::Fragment& f) {
                                 ++fragments;
                                 good += f.checksum_ok ? 1 : 0;
                                 return true;
                               }),
            wal::WalkEnd::kEndOfFile);
  EXPECT_GE(fragments, 30u);
  EXPECT_EQ(good, fragments);
  FlipByte(LastWal(dir.path()), contents.size() - 1);  // and a changed byte fails it
  good = 0;
  wal::WalkFragments(ReadFile(LastWal(dir.path())), [&](const wal::Fragment& f) {
    good += f.checksum_ok ? 1 : 0;
    return true;
  });
  EXPECT_EQ(good, fragments - 1);
}

// Copies the files of a closed store (not its subdirectories) into a new directory `to`.
void CopyStore(const std::string& from, const std::string& to) {
  std::filesystem::create_directories(to);
  for (const auto& entry : std::filesystem::directory_iterator(from)) {
    if (entry.is_regular_file()) {
      std::filesystem::copy_file(entry.path(), to + "/" + entry.path().filename().string());
    }
  }
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
}

// Seeded random damage to a log of many acknowledged groups, repaired in a directory of its own:
// only the torn shapes (the last WriteBatch — several blocks long here — zeroed from some point
// to the end: inside a fragment, at a later fragment's header, after that header's checksum
// bytes, or a few bytes before a block's end and on through the next) are ever cut, and where that batch began. Flipped bytes and zeroed
// ranges with intact bytes after them are left alone — also when the file happens to end in a
// zero byte (emulated by zeroing its last byte as well), where a zeroed header must not pass for
// a torn one. Fragments carry positions and counters, so a log can end in a zero byte on its own.
TEST(WalLogTest, RandomDamageIsCutOnlyWhenItIsATornTail) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  ASSERT_NO_FATAL_FAILURE(WriteWithABigLastBatch(dir.path(), "dmg", 60, &acknowledged));
  const std::string wal_file = LastWal(dir.path());
  const std::string intact = ReadFile(wal_file);
  const uint64_t last_batch = LastBatchStart(intact);
  std::vector<size_t> headers, last_batch_headers;  // fragment offsets: all, the last batch's
  wal::WalkFragments(intact, [&](const wal::Fragment& f) {
    (f.offset < last_batch ? headers : last_batch_headers).push_back(f.offset);
    return true;
  });
  ASSERT_GT(headers.size(), 50u);
  ASSERT_GE(last_batch_headers.size(), 3u);
  const std::string name = std::filesystem::path(wal_file).filename().string();

  std::mt19937_64 rng(20261205);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  int torn_cases = 0, damage_cases = 0;
  for (int i = 0; i < 300; ++i) {
    std::string damaged = intact;
    const size_t kind = pick(3);
    std::string what;
    if (kind == 0) {  // one to three flipped bytes anywhere
      const size_t flips = 1 + pick(3);
      for (size_t k = 0; k < flips; ++k) {
        const size_t at = pick(damaged.size());
        damaged[at] = static_cast<char>(damaged[at] ^ static_cast<char>(1 + pick(255)));
        what += "flip@" + std::to_string(at) + " ";
      }
    } else if (kind == 1) {  // a zeroed range, at a header or anywhere, with intact bytes after it
      const size_t at = pick(2) == 0 ? headers[pick(headers.size() - 1)] : pick(last_batch);
      const size_t length = std::min<size_t>(7 + pick(200), last_batch - at);
      std::fill(damaged.begin() + at, damaged.begin() + at + length, '\0');
      what = "zeros@" + std::to_string(at) + "+" + std::to_string(length);
    } else {  // a torn tail: the last batch's end never reached the disk
      size_t from = 0;
      switch (pick(4)) {
        case 3: {  // up to 31 bytes before one of its inner block boundaries, and on to the end
          const size_t first_block = last_batch / wal::kBlockBytes + 1;
          const size_t blocks = (intact.size() - 1) / wal::kBlockBytes - first_block + 1;
          from = (first_block + pick(blocks)) * wal::kBlockBytes - 1 - pick(31);
          break;
        }
        case 0:  // anywhere in its last 64 KiB
          from = intact.size() - 32 - pick(std::min<size_t>(intact.size() - last_batch - 32, 65536));
          break;
        case 1:  // at one of its later fragments' headers
          from = last_batch_headers[1 + pick(last_batch_headers.size() - 1)];
          break;
        default:  // in such a header, after its checksum bytes
          from = last_batch_headers[1 + pick(last_batch_headers.size() - 1)] + 4;
          break;
      }
      std::fill(damaged.begin() + from, damaged.end(), '\0');
      what = "torn tail from " + std::to_string(from);
    }
    if (kind != 2 && pick(2) == 0) {
      damaged.back() = '\0';
      what += " and a zero last byte";
    }
    if (damaged == intact) continue;
    SCOPED_TRACE("case " + std::to_string(i) + ": " + what);
    const std::string case_dir = dir.Sub("case-" + std::to_string(i));
    std::filesystem::create_directories(case_dir);
    WriteFile(case_dir + "/" + name, damaged);
    wal::TornTailRepair repair;
    ASSERT_TRUE(wal::RepairTornWalTail(case_dir, &repair).ok());
    if (kind == 2) {
      ++torn_cases;
      ASSERT_TRUE(repair.repaired);
      EXPECT_EQ(repair.cut_at, last_batch);
      EXPECT_EQ(ReadFile(case_dir + "/" + name), intact.substr(0, last_batch));
      EXPECT_EQ(ReadFile(repair.copy), damaged.substr(last_batch));  // only the bytes cut off
    } else {
      ++damage_cases;
      ASSERT_FALSE(repair.repaired) << "cut at " << repair.cut_at << " of " << damaged.size()
                                    << " bytes (the last batch begins at " << last_batch << ")";
      EXPECT_EQ(ReadFile(case_dir + "/" + name), damaged);
    }
    std::filesystem::remove_all(case_dir);
  }
  EXPECT_GT(torn_cases, 50);
  EXPECT_GT(damage_cases, 100);
}

// A crash can leave the last, never-synced WriteBatch with its size on disk but its bytes not:
// they read back as zeros. RocksDB alone refuses that store (negative control: the read-only
// open, which does not repair); the ledger's open cuts the torn batch — a WriteBatch spanning
// three blocks here, torn in its last fragment, so the cut is at its first — after saving the
// file, and loses exactly that one unacknowledged command.
TEST(RecoveryTest, AZeroFilledTornTailIsCutAtItsBatchAndOnlyThatGroupIsLost) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  ASSERT_NO_FATAL_FAILURE(WriteWithABigLastBatch(dir.path(), "zero", 20, &acknowledged));
  const std::string wal_file = LastWal(dir.path());
  const std::string intact = ReadFile(wal_file);
  const uint64_t batch_start = LastBatchStart(intact);
  ASSERT_GT(intact.size() - batch_start, 2 * wal::kBlockBytes);
  ZeroTail(wal_file, 100);
  const std::string torn_bytes = ReadFile(wal_file);
  Outcome torn = acknowledged.back();
  acknowledged.pop_back();  // in a real crash this write could not have been acknowledged

  // The repair itself, on a copy of the store: the cut is where the torn WriteBatch began.
  const std::string copy = dir.Sub("copy");
  CopyStore(dir.path(), copy);
  wal::TornTailRepair repair;
  ASSERT_TRUE(wal::RepairTornWalTail(copy, &repair).ok());
  ASSERT_TRUE(repair.repaired);
  EXPECT_EQ(repair.cut_at, batch_start);
  EXPECT_EQ(repair.cut_bytes, intact.size() - batch_start);
  EXPECT_EQ(std::filesystem::file_size(copy + "/" + repair.file), batch_start);
  // Only the bytes cut off, as the crash left them, named after the log and where they began: the
  // acknowledged writes before them stay in the live log and nowhere else.
  EXPECT_EQ(ReadFile(repair.copy), torn_bytes.substr(batch_start));
  EXPECT_EQ(std::filesystem::path(repair.copy).filename().string(),
            repair.file + ".from-" + std::to_string(batch_start));

  LedgerOptions read_only;
  read_only.path = dir.path();
  read_only.read_only = true;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(read_only, &ledger);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();

  ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.head, acknowledged.back().result.position);
  EXPECT_EQ(report.events_per_subject.count(torn.spec.subject), 0u);
  const std::string saved = dir.Sub("torn-wal/" +
                                    std::filesystem::path(wal_file).filename().string() +
                                    ".from-" + std::to_string(batch_start));
  EXPECT_EQ(ReadFile(saved), torn_bytes.substr(batch_start));
}

// The same torn tail with a newer log beside it that a log switch created and the crash left
// unwritten: empty, or holding only zeros (its size reached the disk, its data did not). The
// repair looks past it (an all-zero one was taken for the newest log: nothing torn found, and
// the store did not open).
TEST(RecoveryTest, ATornTailBeforeAnUnwrittenNewerLogIsCutToo) {
  for (const size_t zeros : {size_t{0}, size_t{4096}}) {
    SCOPED_TRACE(zeros);
    TempDir dir;
    std::vector<Outcome> acknowledged;
    ASSERT_NO_FATAL_FAILURE(WriteWithABigLastBatch(dir.path(), "next", 20, &acknowledged));
    const std::string wal_file = LastWal(dir.path());
    ZeroTail(wal_file, 100);
    acknowledged.pop_back();  // the torn group
    const std::filesystem::path wal(wal_file);
    char next[32];
    std::snprintf(next, sizeof next, "%06llu.log",
                  static_cast<unsigned long long>(std::stoull(wal.stem().string()) + 1));
    WriteFile((wal.parent_path() / next).string(), std::string(zeros, '\0'));
    auto ledger = Open(dir.path());
    ASSERT_NE(ledger, nullptr);
    DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
    EXPECT_TRUE(report.ok()) << report.Summary();
    EXPECT_EQ(report.head, acknowledged.back().result.position);
  }
}

// A power loss can tear an older log's last record while a newer log's pages reach the disk
// (wal_log.h): the older log is cut at that record, and the replay stops at the newer log, which
// begins past the hole (saved, not replayed). It did not open at all: RocksDB refuses the torn
// record, and the repair looked at the newest log only.
TEST(RecoveryTest, ATornOlderLogIsCutAndTheReplayStopsAfterIt) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  ASSERT_NO_FATAL_FAILURE(WriteAndClose(dir.path(), "older-torn", 30, &acknowledged));
  const std::string wal_path = LastWal(dir.path());
  const std::string original = ReadFile(wal_path);
  std::vector<size_t> starts;
  ASSERT_GE(LogRecords(original, &starts).size(), 10u);
  const size_t lost = starts.size() / 2;
  const std::string newer_path = testing::SplitLogAtALostRecord(wal_path, lost);
  ASSERT_FALSE(newer_path.empty());
  // The lost record's first half was written, the rest reads back as zeros.
  const size_t end = starts[lost + 1];
  std::string torn = original.substr(0, end);
  std::fill(torn.begin() + static_cast<std::ptrdiff_t>(starts[lost] + (end - starts[lost]) / 2),
            torn.end(), '\0');
  WriteFile(wal_path, torn);

  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  const uint64_t head = ledger->Head().value();
  EXPECT_LT(head, acknowledged.back().result.position.value());
  EXPECT_GE(head, acknowledged.front().result.position.value());
  EXPECT_NE(ledger->WalGapProblem(), "");
  std::vector<Outcome> kept;
  for (const Outcome& o : acknowledged) {
    if (o.result.position.value() <= head) kept.push_back(o);
  }
  DurabilityReport report = CheckDurability(ledger.get(), kept);
  EXPECT_TRUE(report.ok()) << report.Summary();
  ExpectNoHole(ledger.get());
  const std::string name = std::filesystem::path(wal_path).filename().string();
  // The bytes cut off, as the crash left them.
  EXPECT_EQ(ReadFile(dir.path() + "/torn-wal/" + name + ".from-" + std::to_string(starts[lost])),
            torn.substr(starts[lost]));
}

// Writes a store, damages its newest log with `damage`, and expects the repair to leave it alone
// and the open to refuse it.
void ExpectDamageIsNotCut(const std::string& tag,
                          const std::function<void(const std::string& wal_file)>& damage) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  WriteAndClose(dir.path(), tag, 20, &acknowledged);
  const std::string wal_file = LastWal(dir.path());
  damage(wal_file);
  const std::string damaged = ReadFile(wal_file);
  wal::TornTailRepair repair;
  ASSERT_TRUE(wal::RepairTornWalTail(dir.path(), &repair).ok());
  EXPECT_FALSE(repair.repaired);
  LedgerOptions options;
  options.path = dir.path();
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
  EXPECT_EQ(ReadFile(wal_file), damaged);
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("torn-wal")));
}

// Damage that is not a zero tail is never cut: a changed byte in the last record (a torn write
// cannot change a byte to another non-zero value) keeps the store closed, untouched.
TEST(RecoveryTest, ABadLastRecordWithoutAZeroTailIsNotCut) {
  ExpectDamageIsNotCut("flip", [](const std::string& wal_file) {
    FlipByte(wal_file, std::filesystem::file_size(wal_file) - 10);
  });
}

// Zeros too few to be a tear (a payload can end in a few zero bytes) are damage as well.
TEST(RecoveryTest, AShortZeroTailInTheLastRecordIsNotCut) {
  ExpectDamageIsNotCut("short", [](const std::string& wal_file) { ZeroTail(wal_file, 16); });
}

// A zeroed fragment header in the middle of a log: RocksDB's reader takes a header of type 0 and
// length 0 for preallocated space and skips the rest of its 32 KiB block without reporting it
// (in every recovery mode), so the open must refuse the store itself instead of starting without
// the groups of that block.
TEST(RecoveryTest, AZeroedHeaderInTheMiddleOfTheWalRefusesToOpen) {
  ExpectDamageIsNotCut("zero-header", [](const std::string& wal_file) {
    std::vector<size_t> headers;
    wal::WalkFragments(ReadFile(wal_file), [&](const wal::Fragment& f) {
      headers.push_back(f.offset);
      return true;
    });
    ASSERT_GT(headers.size(), 10u);
    std::fstream f(wal_file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(headers[5]));
    f << std::string(wal::kHeaderBytes, '\0');
  });
}

// The property behind the two tests above, over seeded random damage of the shape media and file
// systems produce — up to 4 KiB of zeros, at a page boundary or (half the cases) from a record
// header of the last block on, away from the file's end (a zeroed end is a torn tail's shape, cut by design): the open
// either refuses the store or opens it with every acknowledged write intact, never quietly
// without some. RocksDB alone catches most of these (a checksum, a record cut in two), but not a
// zeroed header whose skipped block rest reaches the end of the file or a record boundary.
TEST(RecoveryTest, ZeroedRangesNeverOpenWithoutAcknowledgedWrites) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  WriteAndClose(dir.path(), "page", 150, &acknowledged);
  const std::string wal_name = std::filesystem::path(LastWal(dir.path())).filename().string();
  const std::string intact = ReadFile(dir.path() + "/" + wal_name);
  constexpr size_t kPage = 4096;
  // Fragment headers of the last block at least 1 KiB before the end: the rest of that block after
  // a zeroed one is what RocksDB would skip.
  const size_t last_block = (intact.size() - 1) / wal::kBlockBytes * wal::kBlockBytes;
  std::vector<size_t> headers;
  wal::WalkFragments(intact, [&](const wal::Fragment& f) {
    if (f.offset >= last_block && f.offset + 1024 < intact.size()) {
      headers.push_back(f.offset);
    }
    return true;
  });
  ASSERT_GE(intact.size(), 2 * wal::kBlockBytes);
  ASSERT_GE(headers.size(), 4u);
  std::mt19937_64 rng(20261205);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  int refused = 0;
  for (int i = 0; i < 24; ++i) {
    const size_t from =
        i % 2 == 0 ? headers[pick(headers.size())] : pick(intact.size() / kPage - 1) * kPage;
    SCOPED_TRACE("zeros at " + std::to_string(from) + " of " + std::to_string(intact.size()));
    const std::string copy = dir.Sub("copy-" + std::to_string(i));
    CopyStore(dir.path(), copy);
    std::string damaged = intact;
    const size_t length = std::min(kPage, intact.size() - 512 - from);  // never the end
    std::fill(damaged.begin() + static_cast<std::ptrdiff_t>(from),
              damaged.begin() + static_cast<std::ptrdiff_t>(from + length), '\0');
    WriteFile(copy + "/" + wal_name, damaged);
    LedgerOptions options;
    options.path = copy;
    std::unique_ptr<Ledger> ledger;
    Status s = Ledger::Open(options, &ledger);
    if (!s.ok()) {
      EXPECT_EQ(s.code(), Code::kCorruption) << s.ToString();
      ++refused;
    } else {
      DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
      EXPECT_TRUE(report.ok()) << "opened with damage: " << report.Summary();
    }
    ledger.reset();
    std::filesystem::remove_all(copy);
  }
  EXPECT_GT(refused, 0);
}

// Counts the events a RocksDB default-mode (kPointInTimeRecovery) open recovers from `path`.
uint64_t EventsRecoveredByPointInTimeRecovery(const std::string& path) {
  rocksdb::DBOptions db_options;
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  std::vector<std::string> names;
  EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::Options(), path, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) {
    descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options, path, descriptors, &handles, &db);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return 0;
  uint64_t events = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] != "events") continue;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), handles[i]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) events++;
  }
  for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
  delete db;
  return events;
}

TEST(RecoveryTest, CorruptionInTheMiddleOfTheWalRefusesToOpenInsteadOfDroppingEvents) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  {
    auto ledger = Open(dir.path());
    ASSERT_NE(ledger, nullptr);
    AppendSequentially(ledger.get(), "mid", 120, &acknowledged);
  }
  const uint64_t head = acknowledged.back().result.position.value();
  std::string wal = LastWal(dir.path());
  ASSERT_FALSE(wal.empty());
  uint64_t offset = std::filesystem::file_size(wal) / 2;
  if (offset % wal::kBlockBytes >= wal::kBlockBytes - wal::kHeaderBytes) {
    offset -= 2 * wal::kHeaderBytes;
  }
  FlipByte(wal, offset);  // inside a record in the middle: acknowledged events follow it
  std::string copy = dir.Sub("point-in-time");
  std::filesystem::create_directories(copy);
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    if (entry.is_regular_file()) {
      std::filesystem::copy_file(entry.path(), copy + "/" + entry.path().filename().string());
    }
  }

  LedgerOptions options;
  options.path = dir.path();
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_FALSE(s.ok()) << "opened over a corrupted WAL; head " << ledger->Head().value();
  EXPECT_TRUE(s.code() == Code::kCorruption || s.code() == Code::kIOError) << s.ToString();
  std::cout << "[ mid-WAL corruption ] Ledger::Open: " << s.ToString() << std::endl;

  // What the RocksDB default would have done with the same bytes: open "successfully" and
  // silently drop every acknowledged event from the corrupted record on.
  uint64_t recovered = EventsRecoveredByPointInTimeRecovery(copy);
  EXPECT_LT(recovered, head);
  std::cout << "[ mid-WAL corruption ] kPointInTimeRecovery opened with " << recovered << " of "
            << head << " acknowledged events" << std::endl;
}

// Writes 60 commands to a store in `path` and splits its log at a lost group, as a power loss
// can leave it: the older log cut where that group began, a newer log with the groups after it.
// Returns the newer log's path.
std::string SplitLogAtALostGroup(const std::string& path, std::vector<Outcome>* acknowledged) {
  WriteAndClose(path, "split", 60, acknowledged);
  const std::string wal_path = LastWal(path);
  std::vector<size_t> starts;
  EXPECT_GE(LogRecords(ReadFile(wal_path), &starts).size(), 40u);  // a WriteBatch per command
  return testing::SplitLogAtALostRecord(wal_path);
}

// A power loss can keep a newer log's writes and lose the unsynced tail of an older one: the
// sync thread syncs the logs after their groups were written, oldest first, and the kernel
// writes dirty pages back in any order meanwhile. None of those groups was acknowledged (the
// older log's sync never finished), but kTolerateCorruptedTailRecords drops the older log's
// incomplete tail and replays the newer log after it: events missing from the middle of the
// chain, and the next append would continue the chain on top of the hole. Emulated here by
// splitting one log in two at a lost group. The open must stop the replay at the hole instead
// (and save the dropped log).
TEST(RecoveryTest, ANewerLogAfterAnOlderLogsLostTailIsNotReplayedOverTheGap) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  const std::string newer_path = SplitLogAtALostGroup(dir.path(), &acknowledged);
  const std::string newer = ReadFile(newer_path);
  const std::string name = std::filesystem::path(newer_path).filename().string();

  // What the older log alone recovers: the head the store must open with.
  const std::string alone = dir.Sub("older-alone");
  CopyStore(dir.path(), alone);
  std::filesystem::remove(alone + "/" + name);
  Position expected_head;
  {
    auto ledger = Open(alone);
    ASSERT_NE(ledger, nullptr);
    expected_head = ledger->Head();
  }
  ASSERT_GT(expected_head.value(), 0u);
  ASSERT_LT(expected_head.value(), acknowledged.back().result.position.value());

  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  std::vector<Outcome> kept;
  for (const Outcome& o : acknowledged) {
    if (o.result.position.value() <= expected_head.value()) kept.push_back(o);
  }
  DurabilityReport report = CheckDurability(ledger.get(), kept);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(ledger->Head().value(), expected_head.value());
  EXPECT_EQ(report.head.value(), expected_head.value());
  EXPECT_TRUE(ReadFile(dir.path() + "/torn-wal/" + name) == newer);  // saved as it was

  // The chain goes on from the older log's last group, and a reopen keeps it.
  CommandSpec next;
  next.subject = "after-the-gap";
  auto command = next.Make();
  CommandResult r = ledger->Submit(command.get());
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.position.value(), expected_head.value() + 1);
  kept.push_back(Outcome{next, r});
  ledger.reset();
  ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  report = CheckDurability(ledger.get(), kept);
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// A fold added to a store that has none of its rows yet.
class NoteFold final : public Fold {
 public:
  std::string_view Name() const override { return "notes"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    return rows->Put("notes", event.subject, "1");
  }
};

// The same loss, but of the whole oldest live log (two log switches within one unfinished sync):
// the first record replayed is already past the hole, after the events the table files hold. The
// replay is compared from the last flushed event on, and stops there. Also when the first look at
// the table files fails: beside a newer log whose last write is torn too (the read-only look
// fails on it until the repair), or on the first start with a new fold (a read-only open refuses
// its missing column family). The replay was then compared from the first record it took, and
// the store opened with a hole.
TEST(RecoveryTest, ALostOldestLogIsAGapAfterTheFlushedEvents) {
  for (const std::string_view variant : {"", "torn newer log", "a new fold"}) {
    SCOPED_TRACE(variant);
    TempDir dir;
    std::vector<Outcome> acknowledged;
    Position flushed;
    {
      auto ledger = Open(dir.path());
      ASSERT_NE(ledger, nullptr);
      AppendSequentially(ledger.get(), "flushed", 20, &acknowledged);
      ASSERT_TRUE(ledger->Flush().ok());
      flushed = ledger->Head();
      AppendSequentially(ledger.get(), "lost", 20, &acknowledged);
      CommandSpec big;  // a WriteBatch over several blocks: its tail can be torn alone
      big.subject = "lost-big";
      big.events = 400;
      auto command = big.Make();
      ASSERT_TRUE(ledger->Submit(command.get()).status.ok());
    }
    const std::string wal_path = LastWal(dir.path());
    std::vector<size_t> starts;
    ASSERT_GE(LogRecords(ReadFile(wal_path), &starts).size(), 10u);
    // The log keeps nothing; a newer one holds every record after its first.
    const std::string newer_path = testing::SplitLogAtALostRecord(wal_path, 0);
    ASSERT_FALSE(newer_path.empty());
    const std::string name = std::filesystem::path(newer_path).filename().string();
    if (variant == "torn newer log") ZeroTail(newer_path, 100);
    NoteFold notes;
    LedgerOptions options;
    options.path = dir.path();
    if (variant == "a new fold") options.folds = {&notes};
    std::unique_ptr<Ledger> ledger;
    Status s = Ledger::Open(options, &ledger);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(ledger->Head().value(), flushed.value());
    std::vector<Outcome> kept;
    for (const Outcome& o : acknowledged) {
      if (o.result.position.value() <= flushed.value()) kept.push_back(o);
    }
    DurabilityReport report = CheckDurability(ledger.get(), kept);
    EXPECT_TRUE(report.ok()) << report.Summary();
    EXPECT_NE(ledger->WalGapProblem(), "");
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/torn-wal/" + name));
    ExpectNoHole(ledger.get());
  }
}

// Only the logs RocksDB replays are compared: an obsolete log it no longer needs, left on disk by
// a crash during its deletion (RocksDB deletes newest first) while a later obsolete log is gone,
// is not a hole before the live log.
TEST(RecoveryTest, AnObsoleteLogLeftOnDiskIsNotTakenForAGap) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  ASSERT_NO_FATAL_FAILURE(WriteAndClose(dir.path(), "first", 30, &acknowledged));
  const std::string first_log = LastWal(dir.path());
  const std::string first_copy = ReadFile(first_log);
  // Each reopen flushes what the logs held and deletes them.
  ASSERT_NO_FATAL_FAILURE(WriteAndClose(dir.path(), "second", 30, &acknowledged));
  ASSERT_NO_FATAL_FAILURE(WriteAndClose(dir.path(), "third", 30, &acknowledged));
  ASSERT_FALSE(std::filesystem::exists(first_log));
  WriteFile(first_log, first_copy);  // back, as a crash during the deletions leaves it
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(ledger->Head().value(), acknowledged.back().result.position.value());
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/torn-wal"));
}

// A column family handle for building WriteBatches by family id, as the ledger's families are.
class FamilyId final : public rocksdb::ColumnFamilyHandle {
 public:
  explicit FamilyId(uint32_t id) : id_(id) {}
  const std::string& GetName() const override { return name_; }
  uint32_t GetID() const override { return id_; }
  rocksdb::Status GetDescriptor(rocksdb::ColumnFamilyDescriptor*) override {
    return rocksdb::Status::NotSupported("a test handle");
  }
  const rocksdb::Comparator* GetComparator() const override {
    return rocksdb::BytewiseComparator();
  }

 private:
  uint32_t id_;
  std::string name_ = "family-" + std::to_string(id_);
};

// The review's case: a record holding a DeleteRange (the fold-version rebuild's first batch,
// DeleteStaleFoldRows) must not turn the comparison off for the next record. RocksDB's default
// handler answers InvalidArgument for DeleteRange, the filter took the record for unreadable and
// replayed the next one, 40 events past the flushed head, without comparing it.
TEST(WalLogTest, ARecordWithADeleteRangeLeavesTheGapCheckOn) {
  FamilyId fold(7), checkpoints(4), events(wal::kEventsFamilyId);
  wal::EventGapFilter filter("", /*flushed_head=*/10);
  rocksdb::WriteBatch rebuild;
  ASSERT_TRUE(rebuild.DeleteRange(&fold, "a", "b").ok());
  ASSERT_TRUE(rebuild.Put(&checkpoints, "fold.x", std::string(8, '\0')).ok());
  rocksdb::WriteBatch out;
  bool changed = false;
  EXPECT_EQ(filter.LogRecordFound(5, "000005.log", rebuild, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kContinueProcessing);
  rocksdb::WriteBatch group;
  ASSERT_TRUE(group.Put(&events, EncodePositionKey(50), "event").ok());
  EXPECT_EQ(filter.LogRecordFound(6, "000006.log", group, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kStopReplay);
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(filter.last_position(), 10u);
  EXPECT_EQ(filter.next_position(), 50u);

  // Every other kind of entry RocksDB's handler does not take by default is skipped as well.
  wal::EventGapFilter other("", /*flushed_head=*/10);
  rocksdb::WriteBatch rows;
  ASSERT_TRUE(rows.PutEntity(&fold, "k", rocksdb::WideColumns{{"c", "v"}}).ok());
  ASSERT_TRUE(rows.SingleDelete(&fold, "k").ok());
  ASSERT_TRUE(rows.Merge(&fold, "k", "v").ok());
  ASSERT_TRUE(rows.PutLogData("blob").ok());
  EXPECT_EQ(other.LogRecordFound(5, "000005.log", rows, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kContinueProcessing);
  EXPECT_EQ(other.LogRecordFound(6, "000006.log", group, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kStopReplay);
}

// A record without events is compared by the head its chain head record names (the open tells
// the filter the `meta` family's id): at the last replayed event it replays, past it the replay
// stops there; rows without a head record (checkpoints) replay. It was replayed whatever head it
// named.
TEST(WalLogTest, ANoEventRecordIsComparedByTheHeadItNames) {
  FamilyId events(wal::kEventsFamilyId), checkpoints(4), meta(5);
  const auto head_row = [](uint64_t position) {
    return EncodePositionKey(position) + std::string(32, '\x01');
  };
  wal::EventGapFilter filter("", /*flushed_head=*/10);
  filter.ColumnFamilyLogNumberMap({}, {{"events", 1}, {"checkpoints", 4}, {"meta", 5}});
  rocksdb::WriteBatch out;
  bool changed = false;
  rocksdb::WriteBatch group;
  ASSERT_TRUE(group.Put(&events, EncodePositionKey(11), "event").ok());
  ASSERT_TRUE(group.Put(&meta, "head", head_row(11)).ok());
  EXPECT_EQ(filter.LogRecordFound(5, "000005.log", group, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kContinueProcessing);
  rocksdb::WriteBatch at_the_head;
  ASSERT_TRUE(at_the_head.Put(&meta, "head", head_row(11)).ok());
  EXPECT_EQ(filter.LogRecordFound(5, "000005.log", at_the_head, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kContinueProcessing);
  rocksdb::WriteBatch checkpoint;
  ASSERT_TRUE(checkpoint.Put(&checkpoints, "sink.lago", EncodePositionKey(11)).ok());
  EXPECT_EQ(filter.LogRecordFound(6, "000006.log", checkpoint, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kContinueProcessing);
  rocksdb::WriteBatch past_the_head;
  ASSERT_TRUE(past_the_head.Put(&meta, "head", head_row(14)).ok());
  EXPECT_EQ(filter.LogRecordFound(6, "000006.log", past_the_head, &out, &changed),
            rocksdb::WalFilter::WalProcessingOption::kStopReplay);
  EXPECT_TRUE(filter.stopped());
  EXPECT_EQ(filter.stopped_log(), "000006.log");
  EXPECT_EQ(filter.last_position(), 11u);
  EXPECT_EQ(filter.next_position(), 0u);
  EXPECT_EQ(filter.named_head(), 14u);
}

// NoteFold at a given version: a store written with version 1 and opened with version 2 is
// rebuilt at that open (DeleteStaleFoldRows).
class VersionedNoteFold final : public Fold {
 public:
  explicit VersionedNoteFold(uint32_t version) : version_(version) {}
  std::string_view Name() const override { return "notes"; }
  uint32_t Version() const override { return version_; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    return rows->Put("notes", event.subject, std::to_string(version_));
  }

 private:
  uint32_t version_;
};

// Puts into the events family, and every other kind of entry taken without complaint.
class EventPuts final : public rocksdb::WriteBatch::Handler {
 public:
  rocksdb::Status PutCF(uint32_t family, const rocksdb::Slice&, const rocksdb::Slice&) override {
    events += family == wal::kEventsFamilyId ? 1 : 0;
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteRangeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    range_deletes++;
    return rocksdb::Status::OK();
  }
  size_t events = 0;
  size_t range_deletes = 0;
};

// The same power loss after a fold-version rebuild: the open that rebuilt the fold wrote a batch
// beginning with a DeleteRange into its log, then the first groups after it were lost while the
// log after them reached the disk. The replay must still stop at the hole after the flushed
// events; it went on over it (the rebuild's record turned the comparison off) and the store
// opened with positions missing from its chain.
TEST(RecoveryTest, AGapRightAfterAFoldRebuildIsStillAGap) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  VersionedNoteFold v1(1), v2(2);
  LedgerOptions options;
  options.path = dir.path();
  options.folds = {&v1};
  {
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    AppendSequentially(ledger.get(), "before", 20, &acknowledged);
  }
  Position flushed;  // the open flushes what the logs held; the rebuild follows
  options.folds = {&v2};
  {
    std::unique_ptr<Ledger> ledger;
    ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
    flushed = ledger->Head();
    AppendSequentially(ledger.get(), "after", 20, &acknowledged);
  }
  ASSERT_EQ(flushed.value(), acknowledged[19].result.position.value());
  const std::string wal_path = LastWal(dir.path());
  std::vector<size_t> starts;
  const std::vector<std::string> records = LogRecords(ReadFile(wal_path), &starts);
  // The rebuild's record, then (maybe after rows without events) the first group after it: lost.
  size_t rebuild = records.size(), lost = records.size();
  for (size_t i = 0; i < records.size() && lost == records.size(); ++i) {
    EventPuts puts;
    ASSERT_TRUE(rocksdb::WriteBatch(records[i]).Iterate(&puts).ok());
    if (puts.range_deletes > 0 && rebuild == records.size()) rebuild = i;
    if (puts.events > 0 && rebuild < i) lost = i;
  }
  ASSERT_LT(rebuild, records.size());
  ASSERT_LT(lost, records.size() - 2);
  const std::string newer_path = testing::SplitLogAtALostRecord(wal_path, lost);
  ASSERT_FALSE(newer_path.empty());

  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(ledger->Head().value(), flushed.value());
  EXPECT_NE(ledger->WalGapProblem(), "");
  EXPECT_TRUE(std::filesystem::exists(
      dir.path() + "/torn-wal/" + std::filesystem::path(newer_path).filename().string()));
  ExpectNoHole(ledger.get());
  std::vector<Outcome> kept(acknowledged.begin(), acknowledged.begin() + 20);
  DurabilityReport report = CheckDurability(ledger.get(), kept);
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// A keyed command whose Decide appends nothing (as an admin PATCH that changes nothing): its group
// still writes its idempotency record and the chain head record, naming the head it was decided
// at.
class NoEventCommand final : public Command {
 public:
  NoEventCommand() {
    idempotency_scope = "quiet";
    idempotency_key = "unchanged";
    request_hash = Sha256("unchanged");
  }
  Status Decide(const DecideContext&, Decision* decision) override {
    decision->body = "{}";
    return Status::OK();
  }
};

// The same power loss when the newer log begins with a group that appends no events: its record
// holds no event to compare, only the chain head record naming the lost group's last event. It
// was replayed over the hole, and the open failed ("chain head ... disagrees with the last stored
// event") until the newer log was deleted by hand. It must stop there as at a record with events.
// Without the split, the same record replays (its idempotency record answers the retry).
TEST(RecoveryTest, ANoEventRecordAfterAnOlderLogsLostTailIsNotReplayed) {
  for (const bool split : {false, true}) {
    SCOPED_TRACE(split ? "the event group lost" : "nothing lost");
    TempDir dir;
    std::vector<Outcome> acknowledged;
    Position lost_head;
    {
      auto ledger = Open(dir.path());
      ASSERT_NE(ledger, nullptr);
      AppendSequentially(ledger.get(), "before", 10, &acknowledged);
      CommandSpec group;
      group.subject = "lost";
      group.events = 3;
      auto command = group.Make();
      const CommandResult r = ledger->Submit(command.get());
      ASSERT_TRUE(r.status.ok()) << r.status.ToString();
      lost_head = r.position;
      NoEventCommand quiet;
      const CommandResult q = ledger->Submit(&quiet);
      ASSERT_TRUE(q.status.ok()) << q.status.ToString();
      ASSERT_EQ(q.events_appended, 0u);
      ASSERT_FALSE(q.replayed);
      ASSERT_EQ(q.position, lost_head);
    }
    const Position older_head = acknowledged.back().result.position;
    const std::string wal_path = LastWal(dir.path());
    std::vector<size_t> starts;
    const std::vector<std::string> records = LogRecords(ReadFile(wal_path), &starts);
    // The event group's record, then the no-event one, last.
    ASSERT_GE(records.size(), 12u);
    const size_t lost = records.size() - 2;
    EventPuts group_puts, quiet_puts;
    ASSERT_TRUE(rocksdb::WriteBatch(records[lost]).Iterate(&group_puts).ok());
    ASSERT_TRUE(rocksdb::WriteBatch(records[lost + 1]).Iterate(&quiet_puts).ok());
    ASSERT_EQ(group_puts.events, 3u);
    ASSERT_EQ(quiet_puts.events, 0u);
    std::string newer_path;
    if (split) {
      newer_path = testing::SplitLogAtALostRecord(wal_path, lost);
      ASSERT_FALSE(newer_path.empty());
    }
    const std::string name = std::filesystem::path(newer_path).filename().string();
    const std::string problem = name + " begins after event " + std::to_string(lost_head.value()) +
                                " while the logs before it end at " +
                                std::to_string(older_head.value());
    if (split) {  // a read-only open (verify) stops there too, saving nothing
      LedgerOptions read_only;
      read_only.path = dir.path();
      read_only.read_only = true;
      std::unique_ptr<Ledger> reader;
      const Status s = Ledger::Open(read_only, &reader);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(reader->Head(), older_head);
      EXPECT_NE(reader->WalGapProblem().find(problem), std::string::npos)
          << reader->WalGapProblem();
      EXPECT_FALSE(std::filesystem::exists(dir.path() + "/torn-wal"));
    }

    auto ledger = Open(dir.path());
    ASSERT_NE(ledger, nullptr);
    NoEventCommand retry;
    const CommandResult again = ledger->Submit(&retry);
    ASSERT_TRUE(again.status.ok()) << again.status.ToString();
    if (!split) {
      EXPECT_EQ(ledger->Head(), lost_head);
      EXPECT_EQ(ledger->WalGapProblem(), "");
      EXPECT_TRUE(again.replayed);  // the record was replayed
      continue;
    }
    EXPECT_EQ(ledger->Head(), older_head);
    EXPECT_NE(ledger->WalGapProblem().find(problem), std::string::npos)
        << ledger->WalGapProblem();
    EXPECT_TRUE(std::filesystem::exists(dir.path() + "/torn-wal/" + name));
    EXPECT_FALSE(again.replayed);  // never acknowledged: decided afresh
    ExpectNoHole(ledger.get());
    DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
    EXPECT_TRUE(report.ok()) << report.Summary();
  }
}

// A read-only open (verify, export, replay) stops at the hole too: it sees the chain ledgerd will
// open, and changes nothing. Damage in the older log (a flipped byte with written bytes after it)
// still refuses the store: the replay never reaches the newer log, nothing is saved.
TEST(RecoveryTest, AReadOnlyOpenStopsAtTheGapAndDamageBeforeItIsRefused) {
  TempDir dir;
  std::vector<Outcome> acknowledged;
  const std::string clean = dir.Sub("clean");
  std::string newer_path = SplitLogAtALostGroup(clean, &acknowledged);
  LedgerOptions read_only;
  read_only.path = clean;
  read_only.read_only = true;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(read_only, &ledger);
  ASSERT_TRUE(s.ok()) << s.ToString();
  const Position head = ledger->Head();
  EXPECT_LT(head.value(), acknowledged.back().result.position.value());
  // Said, for verify to report: the store on disk holds logs past a hole.
  EXPECT_NE(ledger->WalGapProblem().find("begins at event " + std::to_string(head.value() + 2)),
            std::string::npos)
      << ledger->WalGapProblem();
  uint64_t scanned = 0;
  ASSERT_TRUE(ledger
                  ->ScanRaw(Position(1), Position(0),
                            [&](Position p, std::string_view) {
                              EXPECT_EQ(p.value(), ++scanned);  // no hole
                              return true;
                            })
                  .ok());
  EXPECT_EQ(scanned, head.value());
  ledger.reset();
  EXPECT_TRUE(std::filesystem::exists(newer_path));
  EXPECT_FALSE(std::filesystem::exists(clean + "/torn-wal"));

  // The older log damaged in its middle: a byte flipped inside an intact group.
  acknowledged.clear();
  const std::string damaged = dir.Sub("damaged");
  newer_path = SplitLogAtALostGroup(damaged, &acknowledged);
  std::string older_path;
  for (const auto& entry : std::filesystem::directory_iterator(damaged)) {
    if (entry.path().extension() == ".log" && entry.path().string() != newer_path &&
        entry.file_size() > 0) {
      older_path = entry.path().string();
    }
  }
  ASSERT_FALSE(older_path.empty());
  FlipByte(older_path, std::filesystem::file_size(older_path) / 3);
  LedgerOptions options;
  options.path = damaged;
  s = Ledger::Open(options, &ledger);
  EXPECT_FALSE(s.ok()) << "opened over a damaged log";
  EXPECT_TRUE(std::filesystem::exists(newer_path));
  EXPECT_FALSE(std::filesystem::exists(damaged + "/torn-wal"));
}

// A file system that runs `between` once, when CURRENT is read after a log was: in a read-only
// open, between the look at the table files (FlushedEventHead, which reads the logs to ignore
// them) and the open proper, which reads CURRENT and the MANIFEST again.
class BetweenTheLooksFs final : public rocksdb::FileSystemWrapper {
 public:
  explicit BetweenTheLooksFs(std::function<void()> between)
      : FileSystemWrapper(rocksdb::FileSystem::Default()), between_(std::move(between)) {}
  const char* Name() const override { return "between-the-looks"; }
  rocksdb::IOStatus NewSequentialFile(const std::string& name,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSSequentialFile>* file,
                                      rocksdb::IODebugContext* debug) override {
    const std::filesystem::path path(name);
    if (path.extension() == ".log") log_read_ = true;
    if (path.filename() == "CURRENT" && log_read_ && !ran_) {
      ran_ = true;
      between_();
    }
    return target()->NewSequentialFile(name, options, file, debug);
  }
  bool ran() const { return ran_; }

 private:
  std::function<void()> between_;
  bool log_read_ = false;
  bool ran_ = false;
};

// `ledgerctl verify`, `export` and `replay` open a live ledgerd's store read-only. The flushed
// head the gap filter compares from came from a first look at the table files; when ledgerd
// flushed the events and deleted the old logs before the open proper read the MANIFEST, the
// first log that open replays begins after the new flushed head, beyond the old one + 1: a hole
// was reported ("a log file is missing", verify exit 65) on an intact store. The open must see
// the chain as the view it opened holds it.
TEST(RecoveryTest, AReadOnlyOpenBesideALiveFlushSeesNoHole) {
  TempDir dir;
  LedgerOptions live_options;
  live_options.path = dir.path();
  live_options.events_memtable_bytes = 64 << 10;
  std::unique_ptr<Ledger> live;
  ASSERT_TRUE(Ledger::Open(live_options, &live).ok());
  auto append = [&](const std::string& tag, int commands, size_t events) {
    for (int i = 0; i < commands; ++i) {
      CommandSpec spec;
      spec.subject = tag + "-" + std::to_string(i);
      spec.events = events;
      auto command = spec.Make();
      ASSERT_TRUE(live->Submit(command.get()).status.ok());
    }
  };
  ASSERT_NO_FATAL_FAILURE(append("flushed", 5, 20));
  ASSERT_TRUE(live->Flush().ok());
  ASSERT_NO_FATAL_FAILURE(append("in-the-log", 5, 20));  // the log the first look sees
  // No compaction deleting a table file under the first look (it would find no flushed head).
  ASSERT_TRUE(live->WaitForBackgroundWork(60000).ok());

  auto list_logs = [&] {
    std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
    EXPECT_TRUE(wal::ListLogFiles(dir.path(), &logs).ok());
    return logs;
  };
  uint64_t oldest_before = 0;
  auto fs = std::make_shared<BetweenTheLooksFs>([&] {
    oldest_before = list_logs().front().first;
    // About two memtables of events (each switch starts a log), all flushed: the logs so far
    // are obsolete; then one more group, the first record of the log the open replays.
    append("live", 6, 100);
    EXPECT_TRUE(live->Flush().ok());
    EXPECT_TRUE(live->WaitForBackgroundWork(60000).ok());
    for (int i = 0; i < 500 && list_logs().front().first <= oldest_before; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    append("after-the-flush", 1, 5);
  });
  std::unique_ptr<rocksdb::Env> env = rocksdb::NewCompositeEnv(fs);
  LedgerOptions options;
  options.path = dir.path();
  options.read_only = true;
  options.env = env.get();
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(fs->ran());
  EXPECT_GT(list_logs().front().first, oldest_before);  // the old logs are gone
  EXPECT_EQ(ledger->WalGapProblem(), "");
  EXPECT_EQ(ledger->Head().value(), live->Head().value());
  ExpectNoHole(ledger.get());
}

TEST(RecoveryTest, VerifyEventHashAcceptsIntactEventsAndRejectsAFlippedByte) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  testing::AppendCommand command("hash", 50);
  ASSERT_TRUE(ledger->Submit(&command).status.ok());
  int verified = 0;
  ASSERT_TRUE(ledger
                  ->ScanRaw(Position(1), Position(0),
                            [&](Position, std::string_view stored) {
                              EXPECT_TRUE(VerifyEventHash(stored));
                              std::string flipped(stored);
                              flipped[flipped.size() / 2] ^= 0x01;
                              EXPECT_FALSE(VerifyEventHash(flipped));
                              verified++;
                              return true;
                            })
                  .ok());
  EXPECT_EQ(verified, 50);
}

}  // namespace
}  // namespace ledger
