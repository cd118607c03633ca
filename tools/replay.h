// ledgerctl replay: rebuilds every projection from position 0 into a fresh directory and compares
// it with the live projections.
//
// The live store is opened read-only (it works next to a running ledgerd; the comparison is at the
// head seen by that open, position H). Events 1..H are read from it and imported, in chunks, into
// a new Ledger with the same folds (Ledger::ImportEvents: the chain links are re-checked and every
// fold is applied exactly as the writer applies it). Then ProjectionDigest of both is compared:
// folds are pure, so equal logs must give byte-identical rows. On a difference the digest of each
// fold is compared too, to name the projections that differ. The per-subject index (`streams`,
// which reads by subject use) is compared as well, by StreamsDigest: as the (subject, position)
// pairs it names, since the writer stores one row per command and the import one per chunk.
//
// A fold whose rows the live store says another version of its code wrote (its recorded
// Fold::Version() differs from this build's, or none is recorded: a store last opened read-write
// by an older or newer build, or a rebuild a crash interrupted) is not compared: it differs from
// this build's replay by design, and ledgerd rebuilds it at its next open. So is a fold with no
// column family in the live store (last opened read-write by a build without that fold; ledgerd's
// next open creates it and folds the log into it). Both are reported apart (stale_folds), so
// that a store waiting for that rebuild is not taken for a damaged one.
//
// The rebuilt store is scratch: it is written without fsync and flushed at the end. What the
// replay wrote is removed unless it returns OK with `into` set: the temporary directory always, an
// --into directory when the replay fails or is cancelled (removed if the replay created it,
// emptied if it existed). The --into directory is locked (DirLock, as ledgerd locks its store)
// before anything is written or removed there: one another process (ledgerd, another replay)
// holds is refused "in use" and left alone. A process killed outright (SIGKILL, power loss)
// leaves it behind.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "events/fold.h"
#include "events/limits.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

// Named among ReplayReport::differing_folds when the live per-subject index is not the one the
// log rebuilds (a row missing, or naming another position).
inline constexpr char kStreamsIndexName[] = "streams";

// Where a replay is, for ReplayOptions::on_step (tests).
enum class ReplayStep {
  kIntoCreated,  // the --into directory exists (created, or found empty) and is not locked yet
  kRebuilt,      // every event imported; the rebuilt store's digests and the comparison are next
};

struct ReplayOptions {
  std::string data_dir;            // the live store
  // Where to rebuild. Empty: a fresh directory under the system temp directory, removed
  // afterwards. Otherwise it must not exist or be empty, and it is kept.
  std::string into;
  std::vector<const Fold*> folds;  // usually projections::AllFolds()
  size_t chunk_events = 4096;      // events per ImportEvents call, at most
  // Stored bytes of the events per ImportEvents call, at most; an event larger than that goes
  // alone. One call is one group (the writer checks kGroupBytesMax only between commands), held
  // decoded and in its WriteBatch at once: 4,096 stored webhooks of 512 KiB were ~2 GiB a chunk.
  size_t chunk_bytes = limits::kGroupBytesMax;
  // When it turns true (ledgerctl's SIGINT/SIGTERM), the replay stops at its next event, or
  // within kDigestCancelCheckRows rows of a digest, and returns kUnavailable "replay_cancelled".
  // nullptr = never.
  const std::atomic<bool>* cancel = nullptr;
  // Tests: told the events and stored bytes of each chunk before it is imported.
  std::function<void(size_t events, size_t bytes)> on_chunk;
  // Tests: told each ReplayStep as the replay reaches it.
  std::function<void(ReplayStep step)> on_step;
  std::ostream* progress = nullptr;
};

// A fold of the live store whose rows were written by another version of its code.
struct StaleFold {
  std::string name;
  bool recorded = false;       // false: no version recorded for its rows
  uint32_t store_version = 0;  // when recorded
  uint32_t build_version = 0;  // this build's Fold::Version()
  bool missing = false;        // no column family for it in the store (not recorded either)
};

struct ReplayReport {
  Position position;                // head of the live store at the open; both digests are at it
  uint64_t events = 0;              // events imported
  Hash live_digest{};               // the folds' rows (Ledger::ProjectionDigest)
  Hash rebuilt_digest{};
  Hash live_streams_digest{};       // the per-subject index (Ledger::StreamsDigest)
  Hash rebuilt_streams_digest{};
  bool equal = false;
  // When !equal: the folds of this build's version whose rows differ (stale ones are not in it),
  // and kStreamsIndexName when the per-subject index differs.
  std::vector<std::string> differing_folds;
  std::vector<StaleFold> stale_folds;  // whatever `equal` says
  std::string rebuilt_path;
};

// OK with report->equal telling the outcome (a fold with no column family in the live store is
// in stale_folds, `missing`); kCorruption when the live log does not import (a broken chain: run
// verify); kInvalidArgument for a non-empty `into`; kIOError "<into> is in use" when another
// process holds `into`; kNotFound / kIOError for storage; kUnavailable "replay_cancelled" when
// `cancel` stopped it.
Status ReplayProjections(const ReplayOptions& options, ReplayReport* report);

}  // namespace ledger::tools
