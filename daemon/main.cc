// ledgerd: parse configuration, start the App, wait for SIGTERM/SIGINT, stop in order.
#include <signal.h>
#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
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

  int received = 0;
  sigwait(&signals, &received);
  spdlog::info("received {}, shutting down (send it again to exit at once)",
               received == SIGTERM ? "SIGTERM" : "SIGINT");
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
  spdlog::info("stopped cleanly");
  return kExitOk;
}
