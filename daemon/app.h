// The assembled daemon: ledger, embedded Kafka, outbox, HTTP, in startup order. Tests start a
// whole daemon in-process through this class; ledgerd's main() is a thin wrapper around it.
//
// Thread safety: Start() and Stop() from one thread; accessors from any thread after Start().
#pragma once

#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "daemon/config.h"
#include "events/clock.h"
#include "events/status.h"

namespace ledger::daemon {

class App {
 public:
  // Opens and starts everything. On failure, what was started is stopped again and the Status
  // says what failed (see ExitCodeFor). `cancel` (nullptr = never; must outlive Start()) is read
  // between the steps and between the projections' catch-up batches (LedgerOptions::cancel):
  // once true, Start() stops what it started and returns Unavailable ("startup_cancelled", or
  // the ledger's "open_cancelled") without opening the port.
  static Status Start(const Config& config, const Clock* clock, std::unique_ptr<App>* out,
                      const std::atomic<bool>* cancel = nullptr);
  ~App();

  // Stop accepting, finish in-flight requests, then stop the Lago sink and flush the outbox as far
  // as Lago and Kafka allow within `outbox_flush_timeout` for both, counted from the end of the
  // HTTP drain; flush memtables, close the store.
  Status Stop(std::chrono::milliseconds outbox_flush_timeout);

  // False once the HTTP server has stopped accepting connections on its own (an accept() failure
  // ended its accept loop and closed the port): only a restart serves again.
  bool serving() const;

  // SIGHUP: reads LEDGER_JWT_JWKS_FILE again (same size bound and checks as at start) and
  // verifies tokens with its keys from then on (a Keycloak key rotation); requests in flight
  // finish with the keys they started with. On any error the keys in use stay and a warning
  // names the file and the reason, never key material. NotFound ("no_jwks") when no JWKS file
  // is configured. Logs the outcome. Any thread; not during Start() or Stop().
  Status ReloadJwks();

  int http_port() const;
  // The embedded cluster's bootstrap address, or the configured brokers, or "" when disabled.
  std::string kafka_bootstrap() const;

  class Impl;

 private:
  explicit App(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What RaiseOpenFilesLimit() did, for its log line.
struct OpenFilesLimit {
  uint64_t soft_before = 0;
  uint64_t soft = 0;   // the soft limit now
  uint64_t hard = 0;   // RLIM_INFINITY as UINT64_MAX
  int error = 0;       // errno of a raise that failed (the limit is then left as it was)
};

// Raises the soft RLIMIT_NOFILE to the hard limit (to fs.nr_open when the hard limit is
// unlimited): systemd and most shells start services at a soft 1024, which a busy server's
// connections plus RocksDB's table files outgrow while the hard limit allows far more. Never
// fails the start; ledgerd calls it first thing in main().
OpenFilesLimit RaiseOpenFilesLimit();

// ledgerd's wait once started: returns the first of `signals` (blocked in every thread) other
// than SIGHUP to arrive, or 0 as soon as `app` has stopped serving on its own (checked every
// 100 ms) -- the caller then stops it and exits kExitUnavailable for the supervisor to restart
// it. A SIGHUP in `signals` reloads the JWKS (App::ReloadJwks) and the wait goes on.
int WaitForShutdown(App& app, const sigset_t& signals);

// HttpServer::Start()'s failure as ledgerd's startup failure: an address that cannot be bound
// ("listen_failed") is a bad LEDGER_LISTEN (exit 78, which supervisors do not retry); a server
// whose loops could not start ("server_start_failed": out of file handles or memory) keeps its
// Unavailable status (exit 70, retried).
Status HttpStartFailure(const Status& status);

// What a failed App::Start reports, given the stop that cleaned up after it: the start's own
// failure, or the stop's when the start was cancelled (a signal: otherwise exit 0) and the stop's
// flush failed.
Status StartFailure(const Status& start, const Status& stopped);

// Maps a startup/shutdown failure to ledgerd's exit code: 74 storage (a failed write's
// "storage_degraded" too), 78 configuration, 70 anything else.
int ExitCodeFor(const Status& status);

}  // namespace ledger::daemon
