// Crash testing a running ledgerd over HTTP: a concurrent admin load on the plan catalog that
// records every acknowledged write, and the checker that compares a restarted daemon with what was
// acknowledged.
//
// The checker is one function returning a report, so the crash test and its negative control (the
// same scenario with acknowledged data deleted from disk) use the same judgement: the test asserts
// report.ok(), the control asserts report.LostAcknowledgedWrites().
//
// The load: each thread owns one plan per run ("<tag>-t<n>"): it POSTs the plan (201), then PUTs
// it again and again (200), each write with a new `price_monthly_cents` (the plan's version: 1 for
// the create, then 2, 3, ...), a description naming the write (its marker), and its own
// Idempotency-Key. One plan per thread keeps the catalog under projections::limits::kPlansMax over
// many runs on one directory while every write is still a distinct, checkable event.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/http_client.h"

namespace ledger::testing {

struct AckedPlanWrite {
  enum class Kind { kCreate, kUpdate };
  Kind kind = Kind::kCreate;
  std::string plan_id;
  int64_t version = 0;  // price_monthly_cents written
  std::string marker;   // the description written (unique)
  std::string idempotency_key;
  std::string request_body;
  int status = 0;  // 201 create, 200 update
  std::string response_body;
  uint64_t position = 0;  // X-Ledger-Position of the answer
};

struct PlanLoadOptions {
  int port = 0;
  std::string admin_token;
  int threads = 16;
  std::string tag = "load";  // plan id prefix: [a-z0-9-], unique per run over one directory
};

// Client threads writing plans as fast as the daemon answers. A thread ends at its first
// transport error (the daemon died) or on Stop(). Any answer other than 201/200 is recorded in
// unexpected().
class PlanLoad {
 public:
  explicit PlanLoad(PlanLoadOptions options);
  ~PlanLoad();  // Stop() + Join()
  void Start();
  // Waits until `count` writes were acknowledged, every thread ended, or `timeout` passed.
  // Returns whether `count` was reached.
  bool WaitForAcknowledged(size_t count, std::chrono::milliseconds timeout);
  void Stop() { stop_.store(true); }
  void Join();

  std::vector<AckedPlanWrite> acknowledged() const;
  std::vector<std::string> unexpected() const;
  size_t acknowledged_count() const { return acknowledged_count_.load(); }
  uint64_t transport_errors() const { return transport_errors_.load(); }

  static std::string PlanBody(const std::string& plan_id, int64_t version,
                              const std::string& marker);

 private:
  void Run(int thread);

  PlanLoadOptions options_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  std::atomic<int> running_{0};
  std::atomic<size_t> acknowledged_count_{0};
  std::atomic<uint64_t> transport_errors_{0};
  mutable std::mutex mu_;
  std::vector<AckedPlanWrite> acknowledged_;
  std::vector<std::string> unexpected_;
};

struct CrashCheckOptions {
  std::string data_dir;  // for `ledgerctl verify` / `ledgerctl replay`; "" = skip them
  size_t idempotency_probes_max = 64;  // acknowledged writes re-sent with their key (a sample)
  uint64_t seed = 1;                   // picks the sample
};

struct CrashCheckReport {
  uint64_t head = 0;  // position of the last event in GET /api/v1/events
  uint64_t events_scanned = 0;
  uint64_t acknowledged_checked = 0;
  uint64_t plans_checked = 0;
  uint64_t idempotency_probes = 0;
  uint64_t lost = 0;              // acknowledged writes whose event or plan is missing/different
  uint64_t idempotency_lost = 0;  // acknowledged writes whose key no longer replays
  uint64_t chain_errors = 0;      // gaps, broken prev_hash links, audit head disagreement, two
                                  // acknowledgements naming one position, one plan's versions
                                  // out of position order
  uint64_t read_errors = 0;       // HTTP reads that failed
  bool ledgerctl_ran = false;     // options.data_dir was given
  int verify_exit = -1;           // `ledgerctl verify` exit code (see ProcessOutput)
  int replay_exit = -1;           // `ledgerctl replay` exit code
  std::string verify_output;
  std::string replay_output;
  std::vector<std::string> errors;  // the first few problems

  bool LostAcknowledgedWrites() const { return lost > 0 || idempotency_lost > 0; }
  bool ok() const {
    return !LostAcknowledgedWrites() && chain_errors == 0 && read_errors == 0 &&
           (!ledgerctl_ran || (verify_exit == 0 && replay_exit == 0));
  }
  std::string Summary() const;
};

// Checks a (restarted) daemon, through `admin` (an admin-token client), against `acknowledged`:
//   - GET /api/v1/events paged with after=: positions are 1..head without gaps, each event's
//     prev_hash is the previous event's hash (zeroes at 1), and GET /api/v1/audit/head names the
//     last event's position and hash;
//   - every acknowledged write's event is at the position its answer named, of the right type,
//     with its plan id, version and marker; no two acknowledgements name one position; one plan's
//     acknowledged versions increase with their positions;
//   - every acknowledged plan exists (GET /api/v1/subscriptions/plans/{id}) at a version no older
//     than its last acknowledged one;
//   - a sample of acknowledged writes re-sent with the same Idempotency-Key and body replays the
//     stored answer (same status, body and position, `Idempotent-Replayed: true`);
//   - with options.data_dir: `ledgerctl verify` and `ledgerctl replay` exit 0.
CrashCheckReport CheckAcknowledgedPlans(TestHttpClient* admin,
                                        const std::vector<AckedPlanWrite>& acknowledged,
                                        const CrashCheckOptions& options);

}  // namespace ledger::testing
