// ledgerctl verify: checks the hash chain of the whole log or of a range, offline or next to a
// running ledgerd.
//
// For every position p in [from, to] it checks, in this order:
//   1. the key is p (positions are gap-free) and the stored record decodes with position p;
//   2. the stored hash equals SHA-256(prev_hash || body) (VerifyEventHash): the bytes are intact;
//   3. prev_hash equals the hash of p - 1 (for from > 1, read from position from - 1; zero for 1);
// and, when the range ends at the chain head, that the last hash equals the head record; when it
// ends before it, that the prev_hash stored with position to + 1 equals the last hash (an event
// rewritten and re-sealed checks out on its own: only the next link shows it).
//
// Pass 1 reads with RocksDB block checksums OFF, so that a byte flipped inside an event (the events
// family is stored uncompressed) is reported by check 2 at its exact position. Pass 2 re-reads the
// range with checksums ON to catch damage to the table blocks outside the events' own bytes. If
// RocksDB reports corruption while reading, the failure names the first position it could not read
// (last good + 1). If RocksDB cannot open the store because a write-ahead log record is damaged,
// the log files are searched for the damaged event (see wal_scan.h), and the table files are
// verified without the logs (LedgerOptions::table_files_only): the first damaged position of
// the two is named, and a range [from, to] in the table files that ends before the log's damage
// verifies, with VerifyReport::note saying where the log is damaged.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

#include "events/event.h"
#include "events/ledger.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

struct VerifyOptions {
  std::string data_dir;
  Position from{1};               // first position checked; 0 is taken as 1
  Position to{0};                 // last position checked; 0 = the chain head
  bool block_checksums = true;    // run pass 2
  // A chain head recorded earlier (GET /api/v1/audit/head, or a verify's "head <hex>"): the log
  // must reach `expect_position` and hold `expect_hash` there. The hash chain alone cannot show a
  // tail cut at a record boundary (the chain head record goes with the events written with it,
  // and the shorter chain links); only such an outside anchor can. 0 = none. When set, the range
  // must hold it: from <= expect_position and (to == 0 or expect_position <= to).
  Position expect_position{0};
  Hash expect_hash{};
  std::ostream* progress = nullptr;  // "done / total, rate" lines; nullptr = silent
};

struct VerifyReport {
  Position from;                  // the range actually checked
  Position to;
  Position head;                  // chain head record of the store
  Hash head_hash{};
  Hash last_hash{};               // hash of position `to`
  uint64_t events_checked = 0;
  // Set when the log fails a check (VerifyLog then returns kCorruption): the first bad position
  // and what is wrong with it.
  Position failed_position;
  std::string reason;
  // Set on success when damage was found past the range (a write-ahead log record RocksDB will
  // not replay, while the range lies in the table files): what and where.
  std::string note;
};

// Opens `options.data_dir` read-only and verifies it. Returns:
//   OK            every check passed (and the expected head's position holds its hash);
//   kCorruption   a check failed, or the log ends before the expected head or holds another
//                 hash there: report->failed_position and report->reason say where and why;
//   kInvalidArgument  a bad range (from > to, or past the head while the logs hold no hole and
//                 no expected head lies past it), or an expected head outside the range;
//   kNotFound / kIOError  the store cannot be opened or read (and no damaged event was found).
Status VerifyLog(const VerifyOptions& options, VerifyReport* report);

// Checks 1 and 2 for one stored record under key position `key`: why it fails, or an empty
// string (`event` then holds it decoded).
std::string CheckStoredEvent(Position key, std::string_view stored, Event* event);

// Pass 1 over an open ledger (any mode). Same results as VerifyLog.
Status VerifyChain(const Ledger& ledger, Position from, Position to, std::ostream* progress,
                   VerifyReport* report);

}  // namespace ledger::tools
