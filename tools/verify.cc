#include "tools/verify.h"

#include <algorithm>
#include <memory>
#include <string_view>

#include "events/event.h"
#include "tools/progress.h"
#include "tools/store.h"
#include "tools/wal_scan.h"

namespace ledger::tools {

namespace {

constexpr size_t kHashBytes = 32;

std::string Str(Position p) { return std::to_string(p.value()); }

std::string ShortHex(const Hash& hash) { return HexEncode(hash).substr(0, 16); }

Hash StoredHash(std::string_view stored) {
  Hash hash{};
  std::copy(stored.end() - kHashBytes, stored.end(), hash.begin());
  return hash;
}

Status Fail(VerifyReport* report, Position position, std::string reason) {
  report->failed_position = position;
  report->reason = std::move(reason);
  return Status::Corruption("position " + Str(position) + ": " + report->reason);
}

// The link stored with position `p`: the hash of p - 1 it names (the first bytes of the record).
Status ReadStoredLink(const Ledger& ledger, Position p, VerifyReport* report, Hash* out) {
  bool found = false;
  Status scan = ledger.ScanRaw(p, p, [&](Position key, std::string_view stored) {
    if (key == p && stored.size() >= 2 * kHashBytes) {
      std::copy(stored.begin(), stored.begin() + kHashBytes, out->begin());
      found = true;
    }
    return false;
  });
  if (scan.IsCorruption()) return Fail(report, p, "RocksDB cannot read it: " + scan.message());
  LEDGER_RETURN_IF_ERROR(scan);
  if (!found) return Fail(report, p, "missing (needed to link position " +
                                          std::to_string(p.value() - 1) + ")");
  return Status::OK();
}

// The hash stored with position `p` (the link target of p + 1), and whether p's own stored bytes
// match it.
Status ReadStoredHash(const Ledger& ledger, Position p, VerifyReport* report, Hash* out,
                      bool* intact) {
  bool found = false;
  Status scan = ledger.ScanRaw(p, p, [&](Position key, std::string_view stored) {
    if (key == p && stored.size() >= 2 * kHashBytes) {
      *out = StoredHash(stored);
      *intact = VerifyEventHash(stored);
      found = true;
    }
    return false;
  });
  if (scan.IsCorruption()) return Fail(report, p, "RocksDB cannot read it: " + scan.message());
  LEDGER_RETURN_IF_ERROR(scan);
  if (!found) return Fail(report, p, "missing (needed to link position " + Str(Next(p)) + ")");
  return Status::OK();
}

// Checks one stored record at key position `key`, expected to link to `prev`. Returns the reason
// it fails, or an empty string.
std::string CheckRecord(Position key, std::string_view stored, const Hash& prev, Event* event) {
  std::string reason = CheckStoredEvent(key, stored, event);
  if (!reason.empty()) return reason;
  if (event->prev_hash != prev) {
    return "prev_hash " + ShortHex(event->prev_hash) + "... does not link to position " +
           Str(Position(key.value() - 1)) + " (hash " + ShortHex(prev) + "...)";
  }
  return {};
}

// Pass 2: re-read [from, to] with RocksDB block checksums on (the table files alone, replaying
// no log, when pass 1 read them so).
Status CheckBlockChecksums(const VerifyOptions& options, bool table_files_only,
                           VerifyReport* report) {
  std::unique_ptr<Ledger> ledger;
  // The chain head record was checked by the first pass (read with checksums there too).
  Status s = OpenReadOnly({options.data_dir, {}, /*verify_checksums=*/true,
                           /*tolerate_head_mismatch=*/true, table_files_only},
                          &ledger);
  LEDGER_RETURN_IF_ERROR(s);
  Progress meter(options.progress, "verify (block checksums)",
                 report->to.value() - report->from.value() + 1);
  Position expected = report->from;
  uint64_t done = 0;
  Status scan = ledger->ScanRaw(report->from, report->to, [&](Position key, std::string_view) {
    expected = Next(key);
    meter.Update(++done);
    return true;
  });
  meter.Finish(done);
  if (scan.IsCorruption()) {
    return Fail(report, expected,
                "RocksDB block checksum mismatch in the table block holding it (the events' own "
                "hashes verify): " +
                    scan.message());
  }
  return scan;
}

// Both passes over the events the table files hold, [from, to] cut at the last of them, with no
// log replayed. OK with report->events_checked == 0 when none of the range is there.
Status VerifyTableFiles(const VerifyOptions& options, VerifyReport* report) {
  std::unique_ptr<Ledger> ledger;
  LEDGER_RETURN_IF_ERROR(OpenReadOnly({options.data_dir, {}, /*verify_checksums=*/false,
                                       /*tolerate_head_mismatch=*/true,
                                       /*table_files_only=*/true},
                                      &ledger));
  const Position head = ledger->Head();
  const Position from = options.from.value() == 0 ? Position(1) : options.from;
  const Position to = options.to.value() == 0 ? head : std::min(options.to, head);
  if (from > to) return Status::OK();
  LEDGER_RETURN_IF_ERROR(VerifyChain(*ledger, from, to, options.progress, report));
  ledger.reset();
  if (!options.block_checksums) return Status::OK();
  return CheckBlockChecksums(options, /*table_files_only=*/true, report);
}

// The store did not open. A damaged write-ahead log record stops RocksDB's recovery (the ledger
// opens with kTolerateCorruptedTailRecords); look for the damaged event ourselves. The table
// files are verified too, without the logs: the acceptance run's store had a flipped byte in a
// table file at position 5 and a damaged log record at 6, and verify named only 6, --to 5
// included. The first damaged position is named, and a range that ends before the log's damage
// and lies in the table files verifies (with a note that the store does not open).
Status ExplainOpenFailure(const VerifyOptions& options, const Status& open_status,
                          VerifyReport* report) {
  if (!open_status.IsCorruption()) return open_status;
  WalFinding finding;
  Status scan = FindDamagedEventInWal(options.data_dir, &finding);
  const bool in_wal = scan.ok() && finding.found;
  const uint64_t wal_at = in_wal ? finding.position.value() : 0;  // 0: none, or not placed
  // The offset lets an operator cut the log there (README, "ledgerctl") to start without it.
  const std::string wal_damage = finding.reason + " in write-ahead log " + finding.file +
                                 " (its record starts at offset " +
                                 std::to_string(finding.offset) + ")";
  VerifyReport tables;
  const Status tables_status = VerifyTableFiles(options, &tables);
  if (tables_status.IsCorruption() && tables.failed_position.value() != 0 &&
      (wal_at == 0 || tables.failed_position.value() <= wal_at)) {
    *report = tables;
    if (in_wal) {
      report->reason += "; the write-ahead log is damaged too" +
                        (wal_at == 0 ? std::string() : " (position " + std::to_string(wal_at) +
                                                           ")") +
                        ": " + wal_damage;
    }
    return Status::Corruption("position " + Str(report->failed_position) + ": " +
                              report->reason);
  }
  if (in_wal && wal_at == 0) {
    report->reason = wal_damage;
    return Status::Corruption(report->reason);
  }
  if (in_wal && options.to.value() != 0 && options.to.value() < wal_at && tables_status.ok() &&
      tables.events_checked > 0 && tables.to == options.to) {
    *report = tables;
    report->note = "the write-ahead log is damaged past the range, at position " +
                   std::to_string(wal_at) + ": " + wal_damage + "; RocksDB refuses to open the "
                   "store";
    return Status::OK();
  }
  if (in_wal) {
    return Fail(report, finding.position,
                wal_damage + "; RocksDB refuses to open the store: " + open_status.message());
  }
  return Status::IOError("RocksDB cannot open the store: " + open_status.message());
}

// The expected head (VerifyOptions::expect_position) against a store whose chain pass 1 checked
// through it: the log must reach it, and the hash stored there (pass 1 checked it against the
// bytes and the links) must be the one recorded.
Status CheckExpectedHead(const Ledger& ledger, const VerifyOptions& options, VerifyReport* report) {
  const Position expected = options.expect_position;
  if (expected > report->head) {
    return Fail(report, Next(report->head),
                "missing: the log ends at position " + Str(report->head) +
                    ", before the expected head " + Str(expected) +
                    " (its tail was cut or lost since that head was recorded)");
  }
  Hash stored{};
  bool intact = true;
  LEDGER_RETURN_IF_ERROR(ReadStoredHash(ledger, expected, report, &stored, &intact));
  if (stored != options.expect_hash) {
    return Fail(report, expected,
                "its hash " + ShortHex(stored) + "... differs from the expected head's " +
                    ShortHex(options.expect_hash) +
                    "... (another log, or this one rewritten since that head was recorded)");
  }
  return Status::OK();
}

}  // namespace

std::string CheckStoredEvent(Position key, std::string_view stored, Event* event) {
  Status decoded = DecodeEvent(stored, event);
  if (!decoded.ok()) return "undecodable record (" + decoded.message() + ")";
  if (event->position != key) {
    return "the record says position " + Str(event->position) + " under key " + Str(key);
  }
  if (!VerifyEventHash(stored)) {
    Hash computed = Sha256(stored.substr(0, stored.size() - kHashBytes));
    return "hash mismatch: the stored bytes were altered (stored hash " + ShortHex(event->hash) +
           "..., computed " + ShortHex(computed) + "...)";
  }
  return {};
}

Status VerifyChain(const Ledger& ledger, Position from, Position to, std::ostream* progress,
                   VerifyReport* report) {
  report->head = ledger.Head();
  report->head_hash = ledger.HeadHash();
  if (from.value() == 0) from = Position(1);
  if (to.value() == 0) to = report->head;
  report->from = from;
  report->to = to;
  // An empty log verifies, but not from a position it does not have (--from past the head of a
  // non-empty one is a usage error too).
  if (to.value() == 0 && from == Position(1)) return Status::OK();
  if (from > to) {
    return Status::InvalidArgument(
        "bad_range", "range " + Str(from) + ".." + Str(to) + " is empty (the chain head is " +
                         Str(report->head) + ")");
  }
  // Past the head is a question about events that were never written, not damage (exit 64).
  if (to > report->head) {
    return Status::InvalidArgument("bad_range", "range " + Str(from) + ".." + Str(to) +
                                                    " goes past the chain head " +
                                                    Str(report->head));
  }

  Hash prev{};
  bool prev_intact = true;  // the event before the range matches its stored hash
  if (from.value() > 1) {
    LEDGER_RETURN_IF_ERROR(
        ReadStoredHash(ledger, Position(from.value() - 1), report, &prev, &prev_intact));
  }
  Progress meter(progress, "verify", to.value() - from.value() + 1);
  Position expected = from;
  Status failure;
  Event event;
  Status scan = ledger.ScanRaw(from, to, [&](Position key, std::string_view stored) {
    if (key != expected) {
      failure = Fail(report, expected, "missing: the next stored position is " + Str(key));
      return false;
    }
    std::string reason = CheckRecord(key, stored, prev, &event);
    if (!reason.empty() && key == from && !prev_intact) {
      // The link into the range failed because the event before it was altered (e.g. its stored
      // hash): that is the first bad position, as a verify of the whole log says.
      failure = Fail(report, Position(key.value() - 1),
                     "hash mismatch: the stored bytes were altered (position " + Str(key) +
                         " links to its stored hash)");
      return false;
    }
    if (!reason.empty()) {
      failure = Fail(report, key, std::move(reason));
      return false;
    }
    prev = event.hash;
    expected = Next(expected);
    meter.Update(++report->events_checked);
    return true;
  });
  meter.Finish(report->events_checked);
  LEDGER_RETURN_IF_ERROR(failure);
  if (scan.IsCorruption()) {
    return Fail(report, expected, "RocksDB cannot read it: " + scan.message());
  }
  LEDGER_RETURN_IF_ERROR(scan);
  // Opened with tolerate_head_mismatch: a chain head record that disagrees with the events.
  const std::string head_problem = ledger.HeadRecordProblem();
  if (expected <= to) {
    return Fail(report, expected,
                (expected > report->head ? "missing: the log ends at position " + Str(report->head)
                                         : std::string("missing")) +
                    (head_problem.empty() ? "" : " (" + head_problem + ")"));
  }
  report->last_hash = prev;
  // The range's last event is vouched for by the next one: an event rewritten and re-sealed
  // (a new hash over the new bytes) checks out on its own, and only the next event's prev_hash
  // shows it -- where a verify of the whole log fails.
  if (to < report->head) {
    const Position after = Next(to);
    Hash link{};
    LEDGER_RETURN_IF_ERROR(ReadStoredLink(ledger, after, report, &link));
    if (link != prev) {
      return Fail(report, after,
                  "prev_hash " + ShortHex(link) + "... does not link to position " + Str(to) +
                      " (hash " + ShortHex(prev) + "...): " + Str(to) +
                      " was rewritten and re-sealed, or " + Str(after) + " altered");
    }
  }
  if (to == report->head && !head_problem.empty()) return Fail(report, to, head_problem);
  if (to == report->head && prev != report->head_hash) {
    return Fail(report, to,
                "its hash " + ShortHex(prev) + "... differs from the chain head record " +
                    ShortHex(report->head_hash) + "...");
  }
  return Status::OK();
}

Status VerifyLog(const VerifyOptions& options, VerifyReport* report) {
  *report = VerifyReport{};
  const bool expect = options.expect_position.value() != 0;
  const Position from = options.from.value() == 0 ? Position(1) : options.from;
  if (expect && (from > options.expect_position ||
                 (options.to.value() != 0 && options.expect_position > options.to))) {
    return Status::InvalidArgument(
        "bad_range", "the expected head " + Str(options.expect_position) +
                         " lies outside the range " + Str(from) + ".." +
                         (options.to.value() == 0 ? std::string("head") : Str(options.to)));
  }
  std::unique_ptr<Ledger> ledger;
  Status s = OpenReadOnly(
      {options.data_dir, {}, /*verify_checksums=*/false, /*tolerate_head_mismatch=*/true},
      &ledger);
  if (!s.ok()) {
    LEDGER_RETURN_IF_ERROR(ExplainOpenFailure(options, s, report));
    if (!expect) return Status::OK();
    // A range in the table files before the log's damage verified: the expected head is in it.
    LEDGER_RETURN_IF_ERROR(OpenReadOnly({options.data_dir, {}, /*verify_checksums=*/false,
                                         /*tolerate_head_mismatch=*/true,
                                         /*table_files_only=*/true},
                                        &ledger));
    return CheckExpectedHead(*ledger, options, report);
  }
  // The chain read is whole, but the logs on disk hold events past a hole: a crash's unsynced
  // writes (ledgerd sets them aside at its next start) or a log file gone missing (events lost).
  // A range asked past the visible head is that case, not a usage error, when there is a hole,
  // nor when the expected head lies past it (the log was cut at a record boundary).
  const std::string gap = ledger->WalGapProblem();
  Status chain = VerifyChain(*ledger, options.from, options.to, options.progress, report);
  const bool short_of_expected = expect && options.expect_position > report->head;
  if (!chain.ok() &&
      !(chain.code() == Code::kInvalidArgument && (!gap.empty() || short_of_expected))) {
    return chain;
  }
  if (!gap.empty()) {
    return Fail(report, Position(report->head.value() + 1),
                gap + " (if ledgerd has not started since a crash, its next start sets them "
                      "aside as never acknowledged; otherwise a log file is missing)");
  }
  if (expect) LEDGER_RETURN_IF_ERROR(CheckExpectedHead(*ledger, options, report));
  ledger.reset();
  if (!options.block_checksums || report->events_checked == 0) return Status::OK();
  return CheckBlockChecksums(options, /*table_files_only=*/false, report);
}

}  // namespace ledger::tools
