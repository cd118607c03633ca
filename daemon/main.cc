// ledgerd: parse configuration, start the App, wait for SIGTERM/SIGINT (or for the HTTP server
// to stop accepting on its own: exit 69), stop in order.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "daemon/app.h"
#include "daemon/config.h"

int main(int argc, char** argv) {
  using namespace ledger::daemon;
  // Block the shutdown signals in every thread (threads inherit the mask); main waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // Every file ledgerd creates is its user's alone: RocksDB made its table files, logs and
  // MANIFEST 0644, so in a data directory the operator created 0755 anyone on the host could
  // read users' emails, the webhooks as delivered and the sealed BYOK keys.
  umask(0077);
  // Before anything opens a file; logged once the log level is known.
  const OpenFilesLimit open_files = RaiseOpenFilesLimit();

  Config config;
  ParseResult parsed = ParseConfig(argc, argv, &config);
  if (parsed.exit_now) {
    std::fputs(parsed.output.c_str(), stdout);
    return kExitOk;
  }
  if (!parsed.status.ok()) {
    std::fprintf(stderr, "ledgerd: %s\n", parsed.status.message().c_str());
    return parsed.exit_code;
  }
  spdlog::set_level(spdlog::level::from_str(config.log_level));
  if (open_files.error != 0) {
    spdlog::info("open files: could not raise the soft limit {} to the hard limit: {}",
                 open_files.soft, std::strerror(open_files.error));
  } else {
    spdlog::info("open files: soft limit {} (was {}; hard limit {})", open_files.soft,
                 open_files.soft_before,
                 open_files.hard == RLIM_INFINITY ? std::string("unlimited")
                                                  : std::to_string(open_files.hard));
  }

  std::unique_ptr<App> app;
  ledger::Status s = App::Start(config, nullptr, &app);
  if (!s.ok()) {
    spdlog::critical("startup failed: {}", s.ToString());
    if (s.IsCorruption()) {
      spdlog::critical("the store in {} is damaged: `ledgerctl verify --data-dir {}` names the "
                       "first damaged position",
                       config.data_dir, config.data_dir);
    }
    return ExitCodeFor(s);
  }
  spdlog::info("ready");

  const int received = WaitForShutdown(*app, signals);
  int exit_code = kExitOk;
  if (received == 0) {
    // cpp-httplib's accept loop ended on an accept() failure (ENFILE, ENOBUFS, ENOMEM, EPROTO:
    // it retries EMFILE alone) and closed the port. Waiting on for a signal kept the daemon
    // "running" with nothing served, and Restart=on-failure never fired: stop as for SIGTERM
    // (in-flight requests finish, the sinks flush) and exit 69.
    spdlog::critical("the HTTP server stopped accepting connections; shutting down to be "
                     "restarted (exit {})",
                     kExitUnavailable);
    exit_code = kExitUnavailable;
  } else {
    spdlog::info("received {}, shutting down (send it again to exit at once)",
                 received == SIGTERM ? "SIGTERM" : "SIGINT");
  }
  // A second signal ends the process at once (128 + the signal): every answered write is already
  // synced, and what the shutdown has not flushed yet is sent again from the checkpoints.
  std::thread([signals] {
    int again = 0;
    sigwait(&signals, &again);
    spdlog::warn("received {} again: exiting without finishing the shutdown",
                 again == SIGTERM ? "SIGTERM" : "SIGINT");
    spdlog::default_logger()->flush();  // not shutdown(): other threads may still be logging
    std::_Exit(128 + again);
  }).detach();
  s = app->Stop(std::chrono::seconds(10));
  app.reset();
  if (!s.ok()) {
    spdlog::critical("shutdown failed: {}", s.ToString());
    return ExitCodeFor(s);
  }
  if (exit_code != kExitOk) return exit_code;
  spdlog::info("stopped cleanly");
  return kExitOk;
}
