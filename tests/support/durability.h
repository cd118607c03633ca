// Durability test helpers: a concurrent command load that records every outcome, and the checker
// that compares a recovered ledger with what was acknowledged.
//
// The checker is one function returning a report so that a durability test and its negative
// control (the same scenario with the guarantee broken) use the same judgement: the test asserts
// report.ok(), the negative control asserts report.LostAcknowledgedWrites().
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "events/ledger.h"
#include "tests/support/test_ledger.h"

namespace ledger::testing {

// What one submitted command was, enough to submit it again (a client's retry).
struct CommandSpec {
  std::string subject;  // unique per command: the events it appends carry it
  size_t events = 1;    // AppendCommand count, >= 1
  std::string idempotency_scope;
  std::string idempotency_key;  // empty: no idempotency
  Hash request_hash{};

  std::unique_ptr<AppendCommand> Make() const;
  bool keyed() const { return !idempotency_key.empty(); }
};

struct Outcome {
  CommandSpec spec;
  CommandResult result;
};

// Thread-safe record of outcomes.
class OutcomeLog {
 public:
  void Add(const CommandSpec& spec, const CommandResult& result);
  std::vector<Outcome> Acknowledged() const;  // status ok
  std::vector<Outcome> Failed() const;        // any other status
  size_t acknowledged_count() const { return acknowledged_count_.load(); }
  Position MaxAcknowledgedPosition() const;

 private:
  mutable std::mutex mu_;
  std::vector<Outcome> acknowledged_;
  std::vector<Outcome> failed_;
  std::atomic<size_t> acknowledged_count_{0};
};

struct DurabilityReport {
  Position head;              // last position found in the log
  Position max_acknowledged;  // highest position any acknowledged result named
  uint64_t events_scanned = 0;
  uint64_t acknowledged_checked = 0;
  uint64_t idempotency_probes = 0;
  uint64_t lost = 0;              // acknowledged events missing or different
  uint64_t idempotency_lost = 0;  // acknowledged keyed commands that no longer replay
  uint64_t chain_errors = 0;      // gaps, bad hashes, broken links, head disagreement
  std::unordered_map<std::string, uint64_t> events_per_subject;
  std::vector<std::string> errors;  // the first few problems, for the failure message

  bool LostAcknowledgedWrites() const { return lost > 0 || idempotency_lost > 0; }
  bool ok() const { return !LostAcknowledgedWrites() && chain_errors == 0; }
  std::string Summary() const;
};

// Checks a (reopened) ledger against the acknowledged outcomes:
//   - positions are gap-free 1..head, every event decodes, its stored hash verifies, it links to
//     the previous event's hash and re-sealing it (SealEvent) gives the same hash; Head() and
//     HeadHash() agree with the last event;
//   - every acknowledged command's events are at the positions its result named, with its
//     subject (a replayed result's position must hold the original command's events);
//   - every acknowledged keyed command still replays: submitting a probe with the same scope, key
//     and request hash answers replayed=true with the original position, status and body. The
//     probe's Decide() rejects, so a lost record appends nothing.
DurabilityReport CheckDurability(Ledger* ledger, const std::vector<Outcome>& acknowledged);

struct LoadOptions {
  int threads = 16;
  uint64_t seed = 1;
  std::string tag = "load";     // subject prefix; make it unique per run over one directory
  int keyed_percent = 25;       // commands with an idempotency key
  int shared_key_percent = 30;  // of the keyed ones: submitted by two threads at once
  int reject_percent = 0;       // RejectCommands ("test_rejected"), never acknowledged
  size_t events_max = 3;        // each command appends 1..events_max events
  int commands_per_thread = 1 << 30;
};

// Submitter threads. Each thread stops at its first failure other than a domain rejection (a
// degraded ledger fails every later Submit), after commands_per_thread, or on Stop().
class ConcurrentLoad {
 public:
  ConcurrentLoad(Ledger* ledger, LoadOptions options);
  ~ConcurrentLoad();  // joins
  // Waits until `count` commands were acknowledged or every thread has finished.
  void WaitForAcknowledged(size_t count);
  void Stop() { stop_.store(true); }
  void Join();

  const OutcomeLog& outcomes() const { return outcomes_; }
  uint64_t rejected() const { return rejected_.load(); }

 private:
  void Run(int thread);
  // Submits `spec` (twice at once when `shared`); false when an attempt failed.
  bool SubmitOnce(const CommandSpec& spec, bool shared);

  Ledger* ledger_;
  LoadOptions options_;
  OutcomeLog outcomes_;
  std::atomic<bool> stop_{false};
  std::atomic<int> running_{0};
  std::atomic<uint64_t> rejected_{0};
  std::vector<std::thread> threads_;
};

}  // namespace ledger::testing
