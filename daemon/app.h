// The assembled daemon: ledger, embedded Kafka, outbox, HTTP, in startup order. Tests start a
// whole daemon in-process through this class; ledgerd's main() is a thin wrapper around it.
//
// Thread safety: Start() and Stop() from one thread; accessors from any thread after Start().
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "daemon/config.h"
#include "events/clock.h"
#include "events/status.h"

namespace ledger::daemon {

class App {
 public:
  // Opens and starts everything. On failure, what was started is stopped again and the Status
  // says what failed (see ExitCodeFor).
  static Status Start(const Config& config, const Clock* clock, std::unique_ptr<App>* out);
  ~App();

  // Stop accepting, finish in-flight requests, flush the outbox as far as Kafka allows within
  // `outbox_flush_timeout`, flush memtables, close the store.
  Status Stop(std::chrono::milliseconds outbox_flush_timeout);

  int http_port() const;
  // The embedded cluster's bootstrap address, or the configured brokers, or "" when disabled.
  std::string kafka_bootstrap() const;

  class Impl;

 private:
  explicit App(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Maps a startup/shutdown failure to ledgerd's exit code: 74 storage, 78 configuration,
// 70 anything else.
int ExitCodeFor(const Status& status);

}  // namespace ledger::daemon
