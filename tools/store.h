// Opening a ledger data directory from ledgerctl.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"

namespace ledger::tools {

struct ReadOnlyOpenOptions {
  std::string data_dir;
  // Folds whose column families must exist (replay's digest); empty for verify and export.
  std::vector<const Fold*> folds;
  bool verify_checksums = true;  // see LedgerOptions::verify_checksums
  bool tolerate_head_mismatch = false;  // see LedgerOptions::tolerate_head_mismatch (verify)
  bool table_files_only = false;  // see LedgerOptions::table_files_only (verify)
};

// NotFound unless `data_dir` holds a RocksDB store (a CURRENT file).
Status CheckStoreExists(const std::string& data_dir);

// Opens `data_dir` read-only: no lock is taken, so it works while ledgerd runs, and it sees the
// log as of the open. NotFound when there is no RocksDB store there. A live ledgerd may delete a
// write-ahead log or a table file (flush, compaction) while we open the store; such "no such file"
// failures are retried a few times.
Status OpenReadOnly(const ReadOnlyOpenOptions& options, std::unique_ptr<Ledger>* out);

}  // namespace ledger::tools
