// ledgerd: parse configuration, start the App, wait for SIGTERM/SIGINT (or for the HTTP server
// to stop accepting on its own: exit 69), stop in order. SIGHUP reloads the JWKS file.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <spdlog/spdlog.h>

#include "daemon/app.h"
#include "daemon/config.h"

namespace {

const char* SignalName(int signal) { return signal == SIGTERM ? "SIGTERM" : "SIGINT"; }

// The signals that arrive while App::Start() runs (opening the store may fold the whole log again
// after an upgrade, for minutes): the first SIGTERM/SIGINT cancels the startup (App::Start's
// `cancel`: the port is never opened), a second one exits at once; a SIGHUP is remembered for a
// JWKS reload once started. Held until the startup had finished, Ctrl-C did nothing for minutes
// and the daemon then opened its port only to stop.
//
// Thread safety: constructed, cancel() and Finish() from main's thread; the rest after Finish().
class StartupSignals {
 public:
  explicit StartupSignals(const sigset_t& signals)
      : signals_(signals), thread_([this] { Run(); }) {}
  StartupSignals(const StartupSignals&) = delete;
  StartupSignals& operator=(const StartupSignals&) = delete;

  const std::atomic<bool>* cancel() const { return &cancel_; }
  // Ends the watch (within 100 ms; later signals stay pending for WaitForShutdown) and returns
  // the SIGTERM/SIGINT received meanwhile, 0 if none.
  int Finish() {
    done_.store(true);
    thread_.join();
    return received_;
  }
  bool hangup() const { return hangup_; }

 private:
  void Run() {
    const timespec tick{0, 100'000'000};
    while (!done_.load()) {
      const int signal = ::sigtimedwait(&signals_, nullptr, &tick);
      if (signal == SIGHUP) {
        spdlog::info("received SIGHUP during startup: the JWKS is reloaded once started");
        hangup_ = true;
      } else if (signal > 0 && received_ == 0) {
        spdlog::info("received {} during startup: stopping it (send it again to exit at once)",
                     SignalName(signal));
        received_ = signal;
        cancel_.store(true);
      } else if (signal > 0) {
        spdlog::warn("received {} again: exiting without finishing the startup",
                     SignalName(signal));
        spdlog::default_logger()->flush();
        std::_Exit(128 + signal);
      }
    }
  }

  const sigset_t signals_;
  std::atomic<bool> done_{false};
  std::atomic<bool> cancel_{false};
  int received_ = 0;     // written by thread_ only; read after Finish()
  bool hangup_ = false;  // the same
  std::thread thread_;   // last: starts with every other member initialized
};

}  // namespace

int main(int argc, char** argv) {
  using namespace ledger::daemon;
  // Block the shutdown signals and SIGHUP in every thread (threads inherit the mask); main and
  // StartupSignals wait for them. SIGHUP's default action ended the process (status 129) with
  // no drain: `systemctl reload` or a log rotation's `kill -HUP` killed ledgerd.
  sigset_t shutdown_signals;
  sigemptyset(&shutdown_signals);
  sigaddset(&shutdown_signals, SIGTERM);
  sigaddset(&shutdown_signals, SIGINT);
  sigset_t signals = shutdown_signals;
  sigaddset(&signals, SIGHUP);
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

  StartupSignals startup(signals);
  std::unique_ptr<App> app;
  ledger::Status s = App::Start(config, nullptr, &app, startup.cancel());
  const int startup_signal = startup.Finish();
  if (!s.ok() && startup_signal != 0 &&
      (s.problem() == "startup_cancelled" || s.problem() == "open_cancelled")) {
    // As after a crash there: the projections caught up so far are kept, and the next start
    // goes on from them (a projection being rebuilt starts over).
    spdlog::info("startup stopped on {}; the port was not opened", SignalName(startup_signal));
    return kExitOk;
  }
  if (!s.ok()) {
    spdlog::critical("startup failed: {}", s.ToString());
    if (s.IsCorruption()) {
      spdlog::critical("the store in {} is damaged: `ledgerctl verify --data-dir {}` names the "
                       "first damaged position",
                       config.data_dir, config.data_dir);
    }
    return ExitCodeFor(s);
  }
  int received = startup_signal;  // one that came as the startup finished: stop at once
  if (received == 0) {
    if (startup.hangup()) app->ReloadJwks().IgnoreError();  // logged either way
    spdlog::info("ready");
    received = WaitForShutdown(*app, signals);
  }
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
                 SignalName(received));
  }
  // A second signal ends the process at once (128 + the signal): every answered write is already
  // synced, and what the shutdown has not flushed yet is sent again from the checkpoints.
  // SIGHUP stays blocked, and is ignored, from here on.
  std::thread([shutdown_signals] {
    int again = 0;
    sigwait(&shutdown_signals, &again);
    spdlog::warn("received {} again: exiting without finishing the shutdown", SignalName(again));
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
