#include "tools/verify.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <algorithm>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <utility>
#include <vector>

#include "events/coding.h"
#include "events/wal_log.h"
#include "projections/registry.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wal_records.h"
#include "tests/tools/tools_test_util.h"
#include "tools/export.h"
#include "tools/replay.h"
#include "tools/store.h"

namespace ledger::tools {
namespace {

using testing::EditRaw;
using testing::FindFamily;
using testing::FlipByteInFile;
using testing::MarkerFor;
using testing::OpenTestLedger;
using testing::RunLedgerctl;
using testing::TempDir;
using testing::WriteMarkedLog;

constexpr uint64_t kEvents = 200;  // 40 commands of 5 events
constexpr uint64_t kTampered = 137;

// Writes the marked log; returns the chain head hash. With `flush` the events end up in table
// files, otherwise only in the write-ahead log.
Hash WriteLog(const std::string& path, bool flush) {
  auto ledger = OpenTestLedger(path);
  WriteMarkedLog(ledger.get(), kEvents / 5, 5);
  if (flush) {
    EXPECT_TRUE(ledger->Flush().ok());
  }
  return ledger->HeadHash();
}

VerifyReport Verify(const std::string& path, uint64_t from = 1, uint64_t to = 0,
                    Status* status = nullptr, bool block_checksums = true) {
  VerifyOptions options;
  options.data_dir = path;
  options.block_checksums = block_checksums;
  options.from = Position(from);
  options.to = Position(to);
  VerifyReport report;
  Status s = VerifyLog(options, &report);
  if (status != nullptr) *status = s;
  return report;
}

// The stored bytes of event `position`, read without writing to the store (an unflushed one
// stays unflushed).
std::string StoredBytes(const std::string& path, uint64_t position) {
  std::unique_ptr<Ledger> ledger;
  Status s = OpenReadOnly({path, {}, true}, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  std::string stored;
  if (ledger == nullptr) return stored;
  EXPECT_TRUE(ledger
                  ->ScanRaw(Position(position), Position(position),
                            [&](Position, std::string_view v) {
                              stored.assign(v);
                              return false;
                            })
                  .ok());
  EXPECT_FALSE(stored.empty());
  return stored;
}

TEST(VerifyTest, IntactLogVerifies) {
  TempDir dir;
  Hash head = WriteLog(dir.path(), /*flush=*/true);
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.from, Position(1));
  EXPECT_EQ(report.to, Position(kEvents));
  EXPECT_EQ(report.events_checked, kEvents);
  EXPECT_EQ(report.head_hash, head);
  EXPECT_EQ(report.last_hash, head);
}

TEST(VerifyTest, UnflushedLogVerifiesFromTheWal) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.events_checked, kEvents);
}

TEST(VerifyTest, RangeVerifyLinksToThePreviousPosition) {
  TempDir dir;
  WriteLog(dir.path(), true);
  Status s;
  VerifyReport report = Verify(dir.path(), 50, 120, &s);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.events_checked, 71u);
  EXPECT_EQ(report.to, Position(120));

  // A range past the head asks about events never written: a usage error, not damage.
  report = Verify(dir.path(), 190, kEvents + 5, &s);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  report = Verify(dir.path(), kEvents + 1, kEvents + 5, &s);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();

  report = Verify(dir.path(), 150, 100, &s);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
}

TEST(VerifyTest, FlippedByteInTableFileFailsAtItsPosition) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/true);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(kTampered), 9).empty());

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kTampered));
  EXPECT_NE(report.reason.find("hash mismatch"), std::string::npos) << report.reason;
  EXPECT_EQ(report.events_checked, kTampered - 1);

  // Ranges around the damage: the events before it and after it verify (the link into 138 uses
  // the hash stored with 137, which the flip did not touch); a range covering it fails at it.
  report = Verify(dir.path(), 1, kTampered - 1, &s, /*block_checksums=*/false);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.events_checked, kTampered - 1);
  Verify(dir.path(), kTampered + 1, 0, &s, false);
  EXPECT_TRUE(s.ok()) << s.ToString();
  report = Verify(dir.path(), 130, 140, &s);
  EXPECT_TRUE(s.IsCorruption());
  EXPECT_EQ(report.failed_position, Position(kTampered));
  // Pass 2 still reports the damaged table block when a range shares it with the damaged event.
  report = Verify(dir.path(), 1, kTampered - 1, &s);
  EXPECT_TRUE(s.IsCorruption());
  EXPECT_NE(report.reason.find("block checksum mismatch"), std::string::npos) << report.reason;
  EXPECT_LE(report.failed_position, Position(kTampered - 1));
  EXPECT_GT(report.failed_position, Position(kTampered - 40));  // a 4 KiB block: ~20 events

  // Negative control of the knob: with block checksums on, RocksDB rejects the whole block and
  // the failure can only name the first position it could not read, not the damaged one.
  std::unique_ptr<Ledger> ledger;
  LedgerOptions options;
  options.path = dir.path();
  options.read_only = true;
  // (A read-only open checks the head without block checksums, so it opens.)
  ASSERT_TRUE(Ledger::Open(options, &ledger).ok());
  VerifyReport checked;
  Status chain = VerifyChain(*ledger, Position(1), Position(0), nullptr, &checked);
  EXPECT_TRUE(chain.IsCorruption());
  EXPECT_NE(checked.reason.find("RocksDB cannot read it"), std::string::npos) << checked.reason;
  EXPECT_LE(checked.failed_position, Position(kTampered));
}

// Damage in an older table file than the one holding the head. Reading the last event at open
// (the head check) positions an iterator at the last block of every level-0 file, the damaged one
// included; a read-only open must not fail there and blame the head, or a range verify that does
// not cover the damage would report it at the head's position.
TEST(VerifyTest, DamageInAnOlderTableFileIsNamedThereNotAtTheHead) {
  TempDir dir;
  constexpr uint64_t kFirstFile = 100;  // events 1..100 in one table file, 101..200 in another
  {
    auto ledger = OpenTestLedger(dir.path());
    WriteMarkedLog(ledger.get(), kFirstFile / 5, 5);
    ASSERT_TRUE(ledger->Flush().ok());
    WriteMarkedLog(ledger.get(), (kEvents - kFirstFile) / 5, 5);
    ASSERT_TRUE(ledger->Flush().ok());
  }
  // The last event of the older file: it sits in that file's last data block.
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(kFirstFile), 9).empty());

  Status s;
  VerifyReport report = Verify(dir.path(), kFirstFile + 1, 0, &s);
  EXPECT_TRUE(s.ok()) << s.ToString() << " at " << report.failed_position.value() << ": "
                      << report.reason;
  EXPECT_EQ(report.events_checked, kEvents - kFirstFile);

  report = Verify(dir.path(), 1, 0, &s);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kFirstFile));
  EXPECT_NE(report.reason.find("hash mismatch"), std::string::npos) << report.reason;
}

// Damage in the newest table file, a small one holding only the head (ledgerd flushes at each
// stop). A read positioned every level-0 file's iterator at its first block at or past the
// sought position, so each read with block checksums on failed on this file's only block
// before handing out the first event: every ranged verify failed at its --from ("read past
// position 0"), and export and replay of positions far before it wrote nothing. Reads now pass
// over table files that hold nothing of the range, and meet a file when they reach it.
TEST(VerifyTest, DamageInASmallNewestTableFileFailsOnlyTheReadsThatReachIt) {
  TempDir dir;
  constexpr uint64_t kHead = kEvents + 1;
  {
    auto ledger = OpenTestLedger(dir.path());
    WriteMarkedLog(ledger.get(), kEvents / 10, 5);  // 1..100 in one table file
    ASSERT_TRUE(ledger->Flush().ok());
    WriteMarkedLog(ledger.get(), kEvents / 10, 5);  // 101..200 in another
    ASSERT_TRUE(ledger->Flush().ok());
    WriteMarkedLog(ledger.get(), 1, 1);  // the head alone in a third
    ASSERT_TRUE(ledger->Flush().ok());
  }
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(kHead), 9).empty());

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 10, &s);
  EXPECT_TRUE(s.ok()) << s.ToString() << " at " << report.failed_position.value() << ": "
                      << report.reason;
  EXPECT_EQ(report.events_checked, 10u);
  report = Verify(dir.path(), 100, kEvents, &s);
  EXPECT_TRUE(s.ok()) << s.ToString() << " at " << report.failed_position.value() << ": "
                      << report.reason;
  EXPECT_EQ(report.events_checked, kEvents - 99);
  report = Verify(dir.path(), 1, 0, &s);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kHead));
  EXPECT_NE(report.reason.find("hash mismatch"), std::string::npos) << report.reason;
  report = Verify(dir.path(), kHead, kHead, &s);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kHead)) << report.reason;
  testing::ProcessResult cli =
      RunLedgerctl("verify --data-dir " + dir.path() + " --from 1 --to 10");
  EXPECT_EQ(cli.exit_code, 0) << cli.out;

  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(OpenReadOnly({dir.path(), {}, true}, &ledger).ok());
  std::ostringstream out;
  uint64_t exported = 0;
  ExportOptions export_options;
  export_options.limit = 5;
  s = ExportCloudEvents(*ledger, export_options, out, &exported);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(exported, 5u);
  const std::string lines = out.str();
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 5);
  // A read that reaches the damaged block names the position it had read past, not its start.
  std::ostringstream all;
  s = ExportCloudEvents(*ledger, ExportOptions{}, all, &exported);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("past position " + std::to_string(kEvents) + " "),
            std::string::npos)
      << s.ToString();
  ledger.reset();
  ReplayOptions replay_options;  // this log has no folds: replay only the chain
  replay_options.data_dir = dir.path();
  ReplayReport replay;
  s = ReplayProjections(replay_options, &replay);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_NE(s.message().find("past position " + std::to_string(kEvents) + " "),
            std::string::npos)
      << s.ToString();
}

TEST(VerifyTest, FlippedByteInWalFailsAtItsPosition) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".log", MarkerFor(kTampered), 9).empty());

  // The ledger refuses to open: the damaged record is not a torn tail, and RocksDB's
  // kTolerateCorruptedTailRecords stops instead of dropping acknowledged events.
  std::unique_ptr<Ledger> ledger;
  LedgerOptions options;
  options.path = dir.path();
  Status open = Ledger::Open(options, &ledger);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kTampered));
  EXPECT_NE(report.reason.find("write-ahead log"), std::string::npos) << report.reason;
}

// The README's way out of a damaged log record: cut the named log at the offset verify reports.
// The store then opens without that record's group and what followed it, and verifies.
TEST(VerifyTest, CuttingTheLogAtTheReportedOffsetOpensTheStore) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".log", MarkerFor(kTampered), 9).empty());
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(report.reason, m,
                                std::regex(R"(write-ahead log (\S+\.log) \(its record starts at )"
                                           R"(offset (\d+)\))")))
      << report.reason;
  const std::filesystem::path log = std::filesystem::path(dir.path()) / m[1].str();
  const uint64_t offset = std::stoull(m[2].str());
  ASSERT_LT(offset, std::filesystem::file_size(log));
  std::filesystem::resize_file(log, offset);

  std::unique_ptr<Ledger> ledger;
  LedgerOptions options;
  options.path = dir.path();
  Status open = Ledger::Open(options, &ledger);
  ASSERT_TRUE(open.ok()) << open.ToString();
  // Commands of 5 events, one record each: the damaged event's group is gone, all before it kept.
  EXPECT_EQ(ledger->Head().value(), (kTampered - 1) / 5 * 5);
  ledger.reset();
  VerifyReport after = Verify(dir.path(), 1, 0, &s);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

// A flipped byte in a table file and a damaged record in the write-ahead log after it (the
// acceptance run's store: 5 and 6). RocksDB refuses the store for the log; the table files are
// verified without it, so the first damaged position is named, and `--to` bounds the answer.
TEST(VerifyTest, TableFileDamageBeforeWalDamageIsNamedFirst) {
  TempDir dir;
  constexpr uint64_t kInWal = 230;  // events 201..250 are in the write-ahead log only
  {
    auto ledger = OpenTestLedger(dir.path());
    WriteMarkedLog(ledger.get(), kEvents / 5, 5);
    ASSERT_TRUE(ledger->Flush().ok());
    WriteMarkedLog(ledger.get(), 10, 5);
  }
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(kTampered), 9).empty());
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".log", MarkerFor(kInWal), 9).empty());

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kTampered)) << report.reason;
  EXPECT_NE(report.reason.find("hash mismatch"), std::string::npos) << report.reason;
  EXPECT_NE(report.reason.find("write-ahead log is damaged too (position 230)"),
            std::string::npos)
      << report.reason;
  report = Verify(dir.path(), 100, 150, &s);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kTampered)) << report.reason;

  // A range in the table files that ends before the damage verifies, saying where the log is
  // damaged (without the second pass: the damaged table block holds the range's last events).
  report = Verify(dir.path(), 1, kTampered - 1, &s, /*block_checksums=*/false);
  ASSERT_TRUE(s.ok()) << s.ToString() << " " << report.reason;
  EXPECT_EQ(report.events_checked, kTampered - 1);
  EXPECT_NE(report.note.find("position 230"), std::string::npos) << report.note;
  report = Verify(dir.path(), kTampered + 1, kEvents, &s, false);
  EXPECT_TRUE(s.ok()) << s.ToString() << " " << report.reason;
  // A range reaching past the table files is named at the log's damage.
  report = Verify(dir.path(), kEvents + 1, 0, &s);
  EXPECT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kInWal)) << report.reason;

  testing::ProcessResult whole = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(whole.exit_code, 65) << whole.out;
  EXPECT_EQ(whole.out.rfind("verify: FAILED at position 137: ", 0), 0u) << whole.out;
  testing::ProcessResult bounded =
      RunLedgerctl("verify --skip-block-checksums --to 136 --data-dir " + dir.path());
  EXPECT_EQ(bounded.exit_code, 0) << bounded.out;
  EXPECT_EQ(bounded.out.rfind("verify: OK positions 1..136 hash ", 0), 0u) << bounded.out;
  EXPECT_NE(bounded.out.find("damaged past the range, at position 230"), std::string::npos)
      << bounded.out;
}

// One changed byte in the framing of an event in the write-ahead log — its key, or its value's
// format version — is named at the event's position (the record checksum fails, so the store
// does not open; the event's own hash cannot be checked).
TEST(VerifyTest, DamageToAnEventsKeyOrHeaderInTheWalIsNamed) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  const std::string stored = StoredBytes(dir.path(), kTampered);
  // In the WriteBatch: key (8 bytes) | varint value length | value.
  std::string length;
  for (uint32_t n = static_cast<uint32_t>(stored.size()); ; n >>= 7) {
    if (n < 0x80) {
      length.push_back(static_cast<char>(n));
      break;
    }
    length.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  const std::string framed = EncodePositionKey(kTampered) + length + stored;
  struct Case {
    const char* what;
    size_t offset;  // in `framed`
  };
  for (const Case& c : {Case{"the key's low byte", 7}, Case{"the key's high byte", 0},
                        Case{"the format version", 8 + length.size() + 32},
                        Case{"the position inside the value", 8 + length.size() + 40}}) {
    SCOPED_TRACE(c.what);
    const std::string case_dir = dir.path() + "-case";
    std::filesystem::remove_all(case_dir);
    std::filesystem::copy(dir.path(), case_dir);
    ASSERT_FALSE(FlipByteInFile(case_dir, ".log", framed, c.offset).empty());
    Status s;
    VerifyReport report = Verify(case_dir, 1, 0, &s);
    ASSERT_TRUE(s.IsCorruption()) << s.ToString();
    EXPECT_EQ(report.failed_position, Position(kTampered)) << report.reason;
    std::filesystem::remove_all(case_dir);
  }
}

// The write-ahead log file that holds the records of a closed, unflushed store.
std::filesystem::path LogWithData(const std::string& dir) {
  std::filesystem::path found;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".log" && entry.file_size() > 0) found = entry.path();
  }
  return found;
}

// Seeded random single-byte damage to the write-ahead log of an unflushed store: every changed
// byte inside a fragment (header or payload, all covered by its checksum) fails verify — never a
// pass, never a crash — and a named position lies in the log; a changed byte of block padding
// changes nothing a reader sees and verifies. Except the last fragment's length and type bytes:
// a last record that runs past the end of the file, or a first fragment there without its last,
// is what a crash in the middle of an append leaves, and kTolerateCorruptedTailRecords drops it
// by design — such damage to a synced last record cannot be told from that (not asserted).
TEST(VerifyTest, RandomDamageInTheWalNeverVerifies) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  const std::filesystem::path wal_file = LogWithData(dir.path());
  ASSERT_FALSE(wal_file.empty());
  const std::string intact = testing::ReadFileBytes(wal_file);
  std::vector<std::pair<size_t, size_t>> fragments;  // [begin, end) of every fragment
  std::vector<std::pair<size_t, size_t>> payloads;   // [begin, end) of every fragment's payload
  wal::WalkFragments(intact, [&](const wal::Fragment& f) {
    fragments.emplace_back(f.offset, f.end());
    payloads.emplace_back(f.offset + f.header_bytes, f.end());
    return true;
  });
  ASSERT_GT(fragments.size(), 10u);
  auto in = [](const std::vector<std::pair<size_t, size_t>>& ranges, size_t at) {
    for (const auto& [begin, end] : ranges) {
      if (at >= begin && at < end) return true;
    }
    return false;
  };
  auto in_fragment = [&](size_t at) { return in(fragments, at); };
  const size_t last_header = fragments.back().first;
  auto tolerated_tail = [&](size_t at) { return at >= last_header + 4 && at < last_header + 7; };

  std::mt19937_64 rng(20261205);
  int failed = 0;
  int in_payload = 0;
  for (int i = 0; i < 40; ++i) {
    const size_t at = std::uniform_int_distribution<size_t>(0, intact.size() - 1)(rng);
    const char mask = static_cast<char>(std::uniform_int_distribution<int>(1, 255)(rng));
    SCOPED_TRACE("case " + std::to_string(i) + ": byte " + std::to_string(at) + " of " +
                 std::to_string(intact.size()));
    const std::string case_dir = dir.path() + "-case";
    std::filesystem::remove_all(case_dir);
    std::filesystem::copy(dir.path(), case_dir);
    std::string damaged = intact;
    damaged[at] = static_cast<char>(damaged[at] ^ mask);
    std::ofstream(std::filesystem::path(case_dir) / wal_file.filename(), std::ios::binary)
        .write(damaged.data(), static_cast<std::streamsize>(damaged.size()));
    Status s;
    VerifyReport report = Verify(case_dir, 1, 0, &s);
    if (tolerated_tail(at)) {
      // Either answer is RocksDB's documented behaviour (see above).
    } else if (in_fragment(at)) {
      ++failed;
      EXPECT_FALSE(s.ok()) << "verified " << report.events_checked << " events";
      if (s.IsCorruption() && report.failed_position.value() != 0) {
        EXPECT_LE(report.failed_position.value(), kEvents) << report.reason;
      }
      if (in(payloads, at)) {
        // Inside a record (events, their keys, the batch's framing, the rows written with
        // them): always placed at an event.
        ++in_payload;
        EXPECT_TRUE(s.IsCorruption() && report.failed_position.value() != 0)
            << s.ToString() << " " << report.reason;
      }
    } else {
      EXPECT_TRUE(s.ok()) << s.ToString() << " " << report.reason;
    }
    std::filesystem::remove_all(case_dir);
  }
  EXPECT_GT(failed, 30);
  EXPECT_GT(in_payload, 25);
}

// A zeroed record header in the WAL (what a zeroed page at a block's start looks like): ledgerd
// refuses to open the store (RocksDB alone would skip the rest of the block), and verify names
// the first event the skipped records held instead of verifying the shorter chain RocksDB reads.
TEST(VerifyTest, ZeroedHeaderInTheWalIsNamed) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  const std::filesystem::path wal_file = LogWithData(dir.path());
  ASSERT_FALSE(wal_file.empty());
  std::string contents = testing::ReadFileBytes(wal_file);
  std::vector<size_t> headers;
  wal::WalkFragments(contents, [&](const wal::Fragment& f) {
    headers.push_back(f.offset);
    return true;
  });
  ASSERT_GT(headers.size(), 10u);
  // A header in the log's last block (not its last): RocksDB would skip the rest of the block to
  // the end of the file, and a read-only open would see a shorter chain that looks intact.
  const size_t last_block = (contents.size() - 1) / wal::kBlockBytes * wal::kBlockBytes;
  size_t zeroed = 0;
  for (size_t i = 0; i + 2 < headers.size(); ++i) {
    if (headers[i] >= last_block) {
      zeroed = headers[i];
      break;
    }
  }
  ASSERT_GT(zeroed, last_block - 1);
  std::fill(contents.begin() + static_cast<std::ptrdiff_t>(zeroed),
            contents.begin() + static_cast<std::ptrdiff_t>(zeroed + wal::kHeaderBytes), '\0');
  std::ofstream(wal_file, std::ios::binary)
      .write(contents.data(), static_cast<std::streamsize>(contents.size()));

  std::unique_ptr<Ledger> ledger;
  LedgerOptions options;
  options.path = dir.path();
  Status open = Ledger::Open(options, &ledger);
  EXPECT_TRUE(open.IsCorruption()) << open.ToString();
  EXPECT_NE(open.ToString().find("zeroed record header"), std::string::npos) << open.ToString();

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_GT(report.failed_position.value(), 0u) << report.reason;
  EXPECT_LE(report.failed_position.value(), kEvents) << report.reason;
  EXPECT_NE(report.reason.find("zeroed record header"), std::string::npos) << report.reason;
}

// The same in a log that holds no event before the hole (the store was flushed, then written
// again): verify cannot place it and says so — the file and offset, no position.
TEST(VerifyTest, ZeroedFirstHeaderOfANewerLogIsNamedByFileAndOffset) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/true);
  {
    auto ledger = OpenTestLedger(dir.path());
    WriteMarkedLog(ledger.get(), 10, 5);
  }
  const std::filesystem::path wal_file = LogWithData(dir.path());
  ASSERT_FALSE(wal_file.empty());
  std::string contents = testing::ReadFileBytes(wal_file);
  std::fill(contents.begin(), contents.begin() + wal::kHeaderBytes, '\0');
  std::ofstream(wal_file, std::ios::binary)
      .write(contents.data(), static_cast<std::streamsize>(contents.size()));

  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position.value(), 0u) << report.reason;
  EXPECT_NE(report.reason.find("zeroed record header at offset 0"), std::string::npos)
      << report.reason;
  EXPECT_NE(report.reason.find(wal_file.filename().string()), std::string::npos) << report.reason;
}

TEST(VerifyTest, MissingEventIsAGap) {
  TempDir dir;
  WriteLog(dir.path(), true);
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), FindFamily(names, handles, "events"),
                           EncodePositionKey(42))
                    .ok());
  });
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(42));
  EXPECT_NE(report.reason.find("missing"), std::string::npos) << report.reason;
}

// The chain head record and the events disagree (the last event deleted; the record rewritten
// with garbage): verify names the position instead of failing to open the store.
TEST(VerifyTest, AHeadRecordThatDisagreesWithTheEventsIsNamedAtItsPosition) {
  TempDir dir;
  WriteLog(dir.path(), true);
  const std::string copy = dir.path() + "-malformed";
  std::filesystem::copy(dir.path(), copy);
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), FindFamily(names, handles, "events"),
                           EncodePositionKey(kEvents))
                    .ok());
  });
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kEvents));
  EXPECT_NE(report.reason.find("missing"), std::string::npos) << report.reason;
  EXPECT_NE(report.reason.find("chain head"), std::string::npos) << report.reason;
  // A range before the damage still verifies.
  Verify(dir.path(), 1, 150, &s);
  EXPECT_TRUE(s.ok()) << s.ToString();

  EditRaw(copy, [](rocksdb::DB* db, const auto& names, const auto& handles) {
    ASSERT_TRUE(
        db->Put(rocksdb::WriteOptions(), FindFamily(names, handles, "meta"), "head", "garbage")
            .ok());
  });
  report = Verify(copy, 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kEvents));
  EXPECT_NE(report.reason.find("malformed"), std::string::npos) << report.reason;
  std::filesystem::remove_all(copy);

  // Only verify tolerates it: any other open still refuses the store.
  std::unique_ptr<Ledger> ledger;
  LedgerOptions options;
  options.path = dir.path();
  options.read_only = true;
  EXPECT_TRUE(Ledger::Open(options, &ledger).IsCorruption());
}

// A byte of a range's previous event changed (here its stored hash, in a table file): the range
// fails at that event, as a verify of the whole log does, not at the range's first position.
TEST(VerifyTest, ARangeBlamesTheAlteredEventBeforeIt) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/true);
  const std::string stored = StoredBytes(dir.path(), kTampered - 1);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", stored, stored.size() - 1).empty());
  Status s;
  VerifyReport report = Verify(dir.path(), kTampered, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(kTampered - 1)) << report.reason;
  report = Verify(dir.path(), 1, 0, &s);
  EXPECT_EQ(report.failed_position, Position(kTampered - 1)) << report.reason;
  // A range that starts after it links to intact bytes and verifies (without the second pass:
  // the table block holding the change may hold the range's first events too).
  Verify(dir.path(), kTampered + 1, 0, &s, /*block_checksums=*/false);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(VerifyTest, ReplacedEventWithValidHashBreaksTheLink) {
  TempDir dir;
  WriteLog(dir.path(), true);
  // A forger rewrites event 60 and re-seals it: its own hash verifies, the next link does not.
  EditRaw(dir.path(), [](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* events = FindFamily(names, handles, "events");
    std::string stored;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(60), &stored).ok());
    Event event;
    ASSERT_TRUE(DecodeEvent(stored, &event).ok());
    event.data = "{\"m\":\"forged\"}";
    SealEvent(&event);
    EncodeEvent(event, &stored);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(60), stored).ok());
  });
  Status s;
  VerifyReport report = Verify(dir.path(), 1, 0, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(61));
  EXPECT_NE(report.reason.find("does not link"), std::string::npos) << report.reason;
  // A range ending at the forged event fails the same way (its next event vouches for it); one
  // ending before it verifies.
  report = Verify(dir.path(), 1, 60, &s);
  ASSERT_TRUE(s.IsCorruption()) << s.ToString();
  EXPECT_EQ(report.failed_position, Position(61));
  report = Verify(dir.path(), 40, 60, &s);
  EXPECT_EQ(report.failed_position, Position(61)) << s.ToString();
  Verify(dir.path(), 1, 59, &s);
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(VerifyTest, EmptyAndMissingStores) {
  TempDir dir;
  { auto ledger = OpenTestLedger(dir.Sub("empty")); }
  Status s;
  VerifyReport report = Verify(dir.Sub("empty"), 1, 0, &s);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.events_checked, 0u);
  // --from past the head is a usage error on an empty log as on a non-empty one ("verify: OK
  // empty log", exit 0, before).
  Verify(dir.Sub("empty"), 5, 0, &s);
  EXPECT_EQ(s.code(), Code::kInvalidArgument) << s.ToString();
  testing::ProcessResult past = RunLedgerctl("verify --data-dir " + dir.Sub("empty") + " --from 5");
  EXPECT_EQ(past.exit_code, 64) << past.out;
  EXPECT_TRUE(past.out.empty()) << past.out;
  Verify(dir.Sub("nothing-here"), 1, 0, &s);
  EXPECT_TRUE(s.IsNotFound()) << s.ToString();
}

// An empty LEDGER_DATA_DIR was taken for an unset one (./data): verify, export and replay read
// a store other than the one meant, and said OK. 78 as ledgerd, and for an empty --data-dir.
TEST(VerifyCliTest, AnEmptyDataDirIsAConfigurationError) {
  TempDir cwd;
  {
    auto ledger = OpenTestLedger(cwd.Sub("data"), projections::AllFolds());
    WriteMarkedLog(ledger.get(), 2, 2);
  }
  for (const std::string command : {"verify", "export", "replay"}) {
    SCOPED_TRACE(command);
    EXPECT_EQ(testing::RunLedgerctlIn(cwd.path(), "", command).exit_code, 0);
    for (const auto& [env, args] : std::vector<std::pair<std::string, std::string>>{
             {"LEDGER_DATA_DIR=", command},
             {"", command + " --data-dir ''"},
             {"", "--data-dir '' " + command}}) {
      SCOPED_TRACE(env + " " + args);
      testing::ProcessResult r = testing::RunLedgerctlIn(cwd.path(), env, args);
      EXPECT_EQ(r.exit_code, 78) << r.out;
      EXPECT_TRUE(r.out.empty()) << r.out;
    }
  }
}

// The binary: output lines and exit codes.
TEST(VerifyCliTest, ExitCodes) {
  TempDir dir;
  Hash head = WriteLog(dir.path(), true);
  testing::ProcessResult ok = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_EQ(ok.out, "verify: OK positions 1.." + std::to_string(kEvents) + " head " +
                        HexEncode(head) + "\n");

  testing::ProcessResult range = RunLedgerctl("verify --data-dir " + dir.path() + " --from 10 --to 20");
  EXPECT_EQ(range.exit_code, 0) << range.out;
  EXPECT_EQ(range.out.rfind("verify: OK positions 10..20 hash ", 0), 0u) << range.out;

  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " --from x").exit_code, 64);
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " --to " +
                         std::to_string(kEvents + 1))
                .exit_code,
            64);
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.Sub("missing")).exit_code, 74);

  ASSERT_FALSE(FlipByteInFile(dir.path(), ".sst", MarkerFor(kTampered), 9).empty());
  testing::ProcessResult bad = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_EQ(bad.out.rfind("verify: FAILED at position " + std::to_string(kTampered) + ": ", 0),
            0u)
      << bad.out;
}

// Logs holding events past a hole (an older log's unsynced tail lost with power while a newer
// log's writes reached the disk): the read-only open stops before the hole, and verify and export
// say so (exit 65) instead of OK for the chain before it; ledgerd's next start sets the newer log
// aside, after which the store verifies.
TEST(VerifyCliTest, LogsPastAHoleFailVerifyAndExportUntilLedgerdSetsThemAside) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  const std::filesystem::path wal_file = LogWithData(dir.path());
  ASSERT_FALSE(wal_file.empty());
  const std::string newer = testing::SplitLogAtALostRecord(wal_file.string());
  ASSERT_FALSE(newer.empty());
  const std::string newer_name = std::filesystem::path(newer).filename().string();
  testing::ProcessResult verify = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(verify.exit_code, 65) << verify.out;
  EXPECT_NE(verify.out.find("verify: FAILED at position "), std::string::npos) << verify.out;
  EXPECT_NE(verify.out.find(newer_name), std::string::npos) << verify.out;
  testing::ProcessResult exported =
      RunLedgerctl("export --data-dir " + dir.path(), /*keep_stderr=*/true);
  EXPECT_EQ(exported.exit_code, 65) << exported.out.substr(0, 300);
  // An incremental export from the chain's visible end, and a replay, stop there too; stdout
  // holds nothing but events (the read-only open's warning goes to stderr).
  const std::string prefix = "verify: FAILED at position ";
  const size_t at = verify.out.find(prefix);
  ASSERT_NE(at, std::string::npos);
  const uint64_t missing = std::stoull(verify.out.substr(at + prefix.size()));
  ASSERT_GT(missing, 1u);
  // A range asked up to where the log reached before the hole is that damage, not a usage error.
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " --to " + std::to_string(missing + 3))
                .exit_code,
            65);
  testing::ProcessResult incremental = RunLedgerctl(
      "export --data-dir " + dir.path() + " --after " + std::to_string(missing - 1));
  EXPECT_EQ(incremental.exit_code, 65);
  EXPECT_EQ(incremental.out, "");
  ReplayOptions replay_options;  // this log has no folds: replay only the chain
  replay_options.data_dir = dir.path();
  ReplayReport replay;
  Status replayed = ReplayProjections(replay_options, &replay);
  EXPECT_TRUE(replayed.IsCorruption()) << replayed.ToString();
  EXPECT_NE(replayed.message().find("position " + std::to_string(missing)), std::string::npos)
      << replayed.ToString();
  { auto ledger = OpenTestLedger(dir.path()); }  // what ledgerd's start does
  testing::ProcessResult after = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(after.exit_code, 0) << after.out;
}

// A log cut where a record begins (a lost write-ahead log tail, a restore of an older copy, or a
// cut on purpose): the chain head record goes with the events written with it, so the shorter
// chain checks out and verify said OK for it, and `--to` the recorded head was a usage error.
// Against a head recorded earlier (GET /api/v1/audit/head) it is a data error naming the end.
TEST(VerifyCliTest, ATailCutAtARecordBoundaryFailsAgainstARecordedHead) {
  TempDir dir;
  constexpr uint64_t kHead = 44;  // one event per command: one write-ahead log record each
  Hash second_to_last{};
  Hash head{};
  {
    auto ledger = OpenTestLedger(dir.path());
    WriteMarkedLog(ledger.get(), kHead - 1, 1);
    second_to_last = ledger->HeadHash();
    WriteMarkedLog(ledger.get(), 1, 1);
    head = ledger->HeadHash();
    EXPECT_EQ(ledger->Head(), Position(kHead));
  }  // not flushed: the events are in the write-ahead log alone
  const std::string uncut = dir.path() + "-uncut";
  std::filesystem::remove_all(uncut);
  std::filesystem::copy(dir.path(), uncut);
  const std::filesystem::path wal_file = LogWithData(dir.path());
  ASSERT_FALSE(wal_file.empty());
  const std::string contents = testing::ReadFileBytes(wal_file);
  std::vector<size_t> starts;
  const std::vector<std::string> records = testing::LogRecords(contents, &starts);
  size_t cut = contents.size();
  for (size_t i = 0; i < records.size(); ++i) {
    if (records[i].find(MarkerFor(kHead - 1)) != std::string::npos) cut = starts[i];
  }
  ASSERT_LT(cut, contents.size());
  std::filesystem::resize_file(wal_file, cut);

  // Alone, the chain cannot tell: it ends at 42 and links.
  testing::ProcessResult alone = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(alone.exit_code, 0) << alone.out;
  EXPECT_EQ(alone.out.rfind("verify: OK positions 1..42 head ", 0), 0u) << alone.out;

  const std::string expect = " --expect-head " + std::to_string(kHead) + ":" + HexEncode(head);
  testing::ProcessResult cut_run = RunLedgerctl("verify --data-dir " + dir.path() + expect);
  EXPECT_EQ(cut_run.exit_code, 65) << cut_run.out;
  EXPECT_EQ(cut_run.out.rfind("verify: FAILED at position 43: missing: the log ends at position "
                              "42, before the expected head 44",
                              0),
            0u)
      << cut_run.out;
  // With a range reaching the recorded head too (a usage error alone: past the chain head).
  testing::ProcessResult ranged =
      RunLedgerctl("verify --data-dir " + dir.path() + " --to 44" + expect);
  EXPECT_EQ(ranged.exit_code, 65) << ranged.out;
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + dir.path() + " --to 44").exit_code, 64);

  // Negative control: the uncut copy holds the recorded head, and a head recorded before its
  // last event (a prefix of the log) is found at its position.
  testing::ProcessResult whole = RunLedgerctl("verify --data-dir " + uncut + expect);
  EXPECT_EQ(whole.exit_code, 0) << whole.out;
  EXPECT_NE(whole.out.find("verify: OK position 44 holds the expected head's hash\n"),
            std::string::npos)
      << whole.out;
  testing::ProcessResult prefix =
      RunLedgerctl("verify --data-dir " + uncut + " --expect-head " + std::to_string(kHead - 1) +
                   ":" + HexEncode(second_to_last));
  EXPECT_EQ(prefix.exit_code, 0) << prefix.out;
  EXPECT_EQ(prefix.out.rfind("verify: OK positions 1..44 head " + HexEncode(head), 0), 0u)
      << prefix.out;
  // A position the log holds, with another hash: a data error there.
  testing::ProcessResult wrong =
      RunLedgerctl("verify --data-dir " + dir.path() + " --expect-head 42:" + HexEncode(head));
  EXPECT_EQ(wrong.exit_code, 65) << wrong.out;
  EXPECT_EQ(wrong.out.rfind("verify: FAILED at position 42: its hash ", 0), 0u) << wrong.out;
  // Malformed, or outside the range asked: usage errors.
  for (const std::string& bad :
       std::vector<std::string>{"44", "44:xyz", "x:" + HexEncode(head), "0:" + HexEncode(head),
                                "044:" + HexEncode(head)}) {
    EXPECT_EQ(RunLedgerctl("verify --data-dir " + uncut + " --expect-head " + bad).exit_code, 64)
        << bad;
  }
  EXPECT_EQ(RunLedgerctl("verify --data-dir " + uncut + " --to 10" + expect).exit_code, 64);
  std::filesystem::remove_all(uncut);
}

TEST(VerifyCliTest, WalDamageExitsWithThePosition) {
  TempDir dir;
  WriteLog(dir.path(), /*flush=*/false);
  ASSERT_FALSE(FlipByteInFile(dir.path(), ".log", MarkerFor(kTampered), 9).empty());
  testing::ProcessResult bad = RunLedgerctl("verify --data-dir " + dir.path());
  EXPECT_EQ(bad.exit_code, 65) << bad.out;
  EXPECT_EQ(bad.out.rfind("verify: FAILED at position " + std::to_string(kTampered) + ": ", 0),
            0u)
      << bad.out;
}

}  // namespace
}  // namespace ledger::tools
