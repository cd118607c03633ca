// Forensics for a store RocksDB refuses to open because a write-ahead log record is damaged.
//
// The ledger opens with WALRecoveryMode::kTolerateCorruptedTailRecords, so a damaged record
// (a byte flipped on disk in an event that was acknowledged but not yet flushed to a table file)
// stops the open with "Corruption: checksum mismatch": correct, but it names no position. This
// reads the `*.log` files directly (events/wal_log.h: the log format, each record one
// WriteBatch), decodes every WriteBatch with rocksdb::WriteBatch::Iterate and checks every put
// into the events family: an 8-byte big-endian key of the position after the previous event,
// whose value decodes as an intact event of that position. The first one that is not is
// reported, by the position it should have had; failing that, the first record whose checksum
// fails, by the position of its group's first event.
#pragma once

#include <cstdint>
#include <string>

#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

struct WalFinding {
  bool found = false;
  Position position;   // 0 when the damage cannot be placed (a zeroed header before any event)
  std::string file;    // the log file's name
  std::string reason;  // e.g. "hash mismatch: the stored bytes were altered"
  // Where the damaged record (or the zeroed header) begins in `file`: cutting the log there
  // (`truncate -s OFFSET`) drops that record -- the whole group written with the named event --
  // and everything after it in the file, and RocksDB opens the store without them.
  uint64_t offset = 0;
};

// Scans every write-ahead log file of `data_dir` in file-number order. OK with found == false
// when no damage is found (it is elsewhere, e.g. in a table file or a fragment header).
Status FindDamagedEventInWal(const std::string& data_dir, WalFinding* out);

}  // namespace ledger::tools
