#include "tools/store.h"

#include <chrono>
#include <filesystem>
#include <thread>

namespace ledger::tools {

namespace {
constexpr int kOpenAttemptsMax = 5;

// A live ledgerd may delete a write-ahead log or a table file (flush, compaction) between our
// reading the MANIFEST and opening that file. RocksDB reports it as an I/O error, sometimes
// wrapped in a Corruption status ("IO error: No such file or directory: While open a file ...").
bool MayBeAFileThatVanished(const Status& s) {
  return s.IsIOError() ||
         (s.IsCorruption() && s.message().find("No such file or directory") != std::string::npos);
}
}  // namespace

Status CheckStoreExists(const std::string& data_dir) {
  std::error_code ec;
  if (!std::filesystem::exists(std::filesystem::path(data_dir) / "CURRENT", ec)) {
    return Status::NotFound("no ledger store in " + data_dir + " (no CURRENT file)");
  }
  return Status::OK();
}

Status OpenReadOnly(const ReadOnlyOpenOptions& options, std::unique_ptr<Ledger>* out) {
  LEDGER_RETURN_IF_ERROR(CheckStoreExists(options.data_dir));
  LedgerOptions ledger_options;
  ledger_options.path = options.data_dir;
  ledger_options.folds = options.folds;
  ledger_options.read_only = true;
  ledger_options.create_if_missing = false;
  ledger_options.verify_checksums = options.verify_checksums;
  ledger_options.tolerate_head_mismatch = options.tolerate_head_mismatch;
  ledger_options.table_files_only = options.table_files_only;
  Status s;
  for (int attempt = 1; attempt <= kOpenAttemptsMax; ++attempt) {
    s = Ledger::Open(ledger_options, out);
    if (!MayBeAFileThatVanished(s)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50 * attempt));
  }
  return s;
}

}  // namespace ledger::tools
