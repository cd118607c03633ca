// LogConsumerCore: what every consumer of the log shares — the Kafka outbox (events/outbox.h), the
// Lago sink (http/lago_sink.h), and any later sink (Keycloak, a warehouse): its thread, the
// owner's wake-ups and stop request, its checkpoint and its last error. The consumer keeps its
// own reading and delivery logic and its "mark" (the last position fully handled); the core
// persists that mark and tells the thread when to wait and when to stop.
//
// Checkpoint: Load() reads it (a checkpoint past the head — a replaced data directory — is
// clamped to the head and written so, synced, before Load() returns; an error if it cannot be:
// nothing past the head may be handled first). Persist() writes
// the mark with sync=false at most every checkpoint_interval_ms (sooner when asked), and with
// sync=true when forced (on stop). A crash then re-handles at most one interval of events, which
// every consumer must tolerate (at-least-once).
//
// Stop: RequestStop(deadline, persist) records the head at the call as the target; the thread
// keeps working until StopDue() (target handled, or deadline passed — a consumer may add its own
// reasons), then returns; the owner joins it with StopAndJoin().
//
// Thread safety: Notify, RequestStop, persisted(), running(), last_error() from any thread;
// Persist, WaitForWork and the stop queries from the consumer's thread; StartThread and
// StopAndJoin from the owner.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "events/status.h"

namespace ledger {

class Ledger;

class LogConsumerCore {
 public:
  // `ledger` must outlive the core. `log_name` prefixes log lines ("outbox", "lago sink").
  LogConsumerCore(Ledger* ledger, std::string log_name, std::string checkpoint_name,
                  int checkpoint_interval_ms);
  ~LogConsumerCore();  // stops the thread without persisting (see StopWithoutPersisting)
  LogConsumerCore(const LogConsumerCore&) = delete;
  LogConsumerCore& operator=(const LogConsumerCore&) = delete;

  // Reads the checkpoint into `*mark` (clamped to the head).
  Status Load(uint64_t* mark);
  // Names the checkpoint when the name is learned late (the outbox's, after the Kafka cluster):
  // from the consumer's thread, before Load() and any Persist().
  void SetCheckpointName(std::string name) { checkpoint_name_ = std::move(name); }

  void StartThread(std::function<void()> run);
  bool thread_started() const { return thread_.joinable(); }
  // Requests a stop at `deadline` with the checkpoint synced, joins the thread and returns the
  // stop target (the head at the call). The thread must have been started. A thread still running
  // at `deadline` (blocked in a call that cannot see the deadline, e.g. a request to a hung
  // server) gets `at_deadline` called (from this thread) to cut that call short, and again every
  // 100 ms until it returns.
  uint64_t StopAndJoin(std::chrono::steady_clock::time_point deadline,
                       const std::function<void()>& at_deadline = {});
  // For destructors: stop now, no checkpoint write (that only costs re-handled events).
  void StopWithoutPersisting();

  // ---- owner side, any thread
  void Notify();  // wakes WaitForWork
  uint64_t persisted() const { return persisted_.load(); }
  bool running() const { return running_.load(); }
  void set_running(bool running) { running_.store(running); }
  void SetLastError(std::string error);
  std::string last_error() const;

  // ---- consumer thread
  // Waits up to `wait_us` (bounded by a stop deadline) or until Notify()/RequestStop().
  void WaitForWork(int64_t wait_us);
  bool stop_requested() const;
  // A stop was requested and `mark` reached its target or its deadline passed.
  bool StopDue(uint64_t mark) const;
  // Whether the thread should sync the checkpoint on its way out.
  bool persist_on_stop() const;
  // Writes `mark` if it moved: with sync when `force`; else when the interval passed since the
  // last write, or at once when `now` (e.g. right after a delivery was acknowledged).
  void Persist(uint64_t mark, int64_t now_us, bool force, bool now = false);
  // Writes `mark` now, synced, whether or not it moved: for a mark that must be durable before
  // the consumer goes on (the outbox's reset checkpoint). The error when it was not written.
  Status PersistSynced(uint64_t mark, int64_t now_us);
  // Microseconds until a moved `mark` is due to be written (0 if due; a large value if it did
  // not move): how long WaitForWork may sleep without delaying the checkpoint.
  int64_t PersistDueInUs(uint64_t mark, int64_t now_us) const;

 private:
  void RequestStop(std::chrono::steady_clock::time_point deadline, bool persist);

  Ledger* const ledger_;
  const std::string log_name_;
  std::string checkpoint_name_;  // consumer thread only, after StartThread
  const int64_t checkpoint_interval_us_;

  std::thread thread_;
  std::atomic<bool> running_{false};

  // Consumer thread only (and Load before the thread starts).
  uint64_t persisted_mark_ = 0;
  int64_t last_persist_us_ = 0;
  std::atomic<uint64_t> persisted_{0};  // persisted_mark_ for other threads

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool wake_ = false;            // guarded by mu_
  bool stop_requested_ = false;  // guarded by mu_
  bool persist_on_stop_ = true;  // guarded by mu_
  std::chrono::steady_clock::time_point stop_deadline_;  // guarded by mu_
  uint64_t stop_target_ = 0;     // guarded by mu_: the head when the stop was requested
  bool finished_ = false;        // guarded by mu_: the thread's function returned
  std::condition_variable finished_cv_;

  mutable std::mutex error_mu_;
  std::string last_error_;  // guarded by error_mu_
};

}  // namespace ledger
