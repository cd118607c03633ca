// ledgerctl replay: rebuilds every projection from position 0 into a fresh directory and compares
// it with the live projections.
//
// The live store is opened read-only (it works next to a running ledgerd; the comparison is at the
// head seen by that open, position H). Events 1..H are read from it and imported, in chunks, into
// a new Ledger with the same folds (Ledger::ImportEvents: the chain links are re-checked and every
// fold is applied exactly as the writer applies it). Then ProjectionDigest of both is compared:
// folds are pure, so equal logs must give byte-identical rows. On a difference the digest of each
// fold is compared too, to name the projections that differ.
//
// The rebuilt store is scratch: it is written without fsync and flushed at the end.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "events/fold.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

struct ReplayOptions {
  std::string data_dir;            // the live store
  // Where to rebuild. Empty: a fresh directory under the system temp directory, removed
  // afterwards. Otherwise it must not exist or be empty, and it is kept.
  std::string into;
  std::vector<const Fold*> folds;  // usually projections::AllFolds()
  size_t chunk_events = 4096;      // events per ImportEvents call
  std::ostream* progress = nullptr;
};

struct ReplayReport {
  Position position;                // head of the live store at the open; both digests are at it
  uint64_t events = 0;              // events imported
  Hash live_digest{};
  Hash rebuilt_digest{};
  bool equal = false;
  std::vector<std::string> differing_folds;  // when !equal
  std::string rebuilt_path;
};

// OK with report->equal telling the outcome. kUnprocessable ("projection_missing") when a fold has
// no column family in the live store (no ledgerd with that fold has opened it); kCorruption when
// the live log does not import (a broken chain: run verify); kInvalidArgument for a non-empty
// `into`; kNotFound / kIOError for storage.
Status ReplayProjections(const ReplayOptions& options, ReplayReport* report);

}  // namespace ledger::tools
