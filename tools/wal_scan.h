// Forensics for a store RocksDB refuses to open because a write-ahead log record is damaged.
//
// The ledger opens with WALRecoveryMode::kTolerateCorruptedTailRecords, so a damaged record
// (a byte flipped on disk in an event that was acknowledged but not yet flushed to a table file)
// stops the open with "Corruption: checksum mismatch": correct, but it names no position. This
// reads the `*.log` files directly (events/wal_log.h: the log format, each record one
// WriteBatch), ignores the record checksums, decodes every WriteBatch with rocksdb::WriteBatch::Iterate and checks the
// hash of every stored event found in it (an 8-byte big-endian position key whose value decodes
// as an event of that position). The first event whose hash fails is reported.
#pragma once

#include <string>

#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

struct WalFinding {
  bool found = false;
  Position position;   // 0 when the damage cannot be placed (a zeroed header before any event)
  std::string file;    // the log file's name
  std::string reason;  // e.g. "hash mismatch: the stored bytes were altered"
};

// Scans every write-ahead log file of `data_dir` in file-number order. OK with found == false
// when no damaged event is found (the damage is elsewhere, e.g. in a record header).
Status FindDamagedEventInWal(const std::string& data_dir, WalFinding* out);

}  // namespace ledger::tools
