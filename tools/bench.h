// ledgerctl bench: the append path, in-process, against a fresh Ledger with sync=true (every
// group commit is one fsync'd WriteBatch) and the registered folds.
//
// Phases (each on its own fresh store, after a short warm-up that is not counted):
//   single   closed loop of one-event commands from `callers` callers, twice: as `callers`
//            threads blocked in Submit() ("threads"), and as `callers` logical callers each keeping
//            one command in flight through SubmitAsync() and submitting the next from its
//            completion ("async": no thread per caller, as an event loop would). Durable events/s,
//            command latency percentiles, commands and events per group, groups/s and fsyncs/s.
//   batch    `batch_callers` threads submit commands of `batch` events each: events/s.
//   latency  open loop: commands are due at a fixed rate (`rate`, or half the best single-event
//            rate) and one pacing thread submits each at its due time (SubmitAsync); latency
//            counts from the due time, so a stalled writer shows up as latency instead of a lower
//            offered rate (no coordinated omission).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/status.h"

namespace ledger::tools {

struct BenchOptions {
  std::string base_dir;             // stores are created in fresh subdirectories of it (removed
                                    // afterwards); empty = the system temp directory
  std::vector<const Fold*> folds;   // applied inline, as in ledgerd
  int callers = 64;
  int batch_callers = 4;
  double seconds = 10;              // measured time per phase
  double warmup_seconds = 1;        // not counted
  size_t batch = 1000;              // events per command in the batch phase
  size_t event_bytes = 300;         // size of each event's JSON data
  bool single = true, batched = true, latency = true;
  double rate = 0;                  // latency phase target; 0 = half the single-phase rate
  // Before each phase, wait up to this long for the disk to answer fdatasync quickly (3 s in a
  // row under 2 ms; at least 5 s); 0 = do not wait.
  double settle_seconds = 30;
  // LedgerOptions::sync_interval_min, by default ledgerd's.
  int64_t sync_interval_min_us = kSyncIntervalMinDefault.count();
  // LedgerOptions::background_write_pace (0 = flushes and compactions unpaced).
  double background_write_pace = LedgerOptions().background_write_pace;
  std::ostream* progress = nullptr;  // one line per second per phase
};

struct BenchPhaseResult {
  std::string name;
  int callers = 0;
  double seconds = 0;
  double offered_rate = 0;          // latency phase: commands/s offered
  uint64_t commands = 0;            // committed in the measured window
  uint64_t events = 0;
  uint64_t errors = 0;
  double events_per_second = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;  // command latency
  double commands_per_group = 0;
  double events_per_group = 0;
  double groups_per_second = 0;
  double syncs_per_second = 0;      // WAL fsyncs/s (one covers every group written meanwhile)
  // Of those, the share that started before the newest group they cover had returned from
  // DB::Write (LedgerMetrics::syncs_beside_write).
  double syncs_beside_write_share = 0;
  double write_ms_mean = 0;         // the synced WriteBatch, per group
  double sync_ms_mean = 0;          // one WAL fsync
  // At most this long for 99% of the phase's fsyncs (a histogram bucket's bound). Every command
  // waits for one fsync or two, so the command p99 cannot be much below it.
  double sync_p99_ms = 0;
  uint64_t slow_syncs = 0;          // WAL fsyncs over kSlowSyncSeconds: the disk stalled
  double slowest_sync_ms = 0;       // upper bound of the slowest fsync's histogram bucket
  double cpu_cores = 0;             // process CPU time / wall time
  // Open loop: the 99th percentile of how late the generator submitted a command (ms).
  double generator_late_p99_ms = 0;
};

Status RunBench(const BenchOptions& options, std::vector<BenchPhaseResult>* results);

// A table of the results, with the targets marked.
std::string FormatBenchReport(const BenchOptions& options,
                              const std::vector<BenchPhaseResult>& results);

}  // namespace ledger::tools
