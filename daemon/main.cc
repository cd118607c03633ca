// ledgerd: parse configuration, start the App, wait for SIGTERM/SIGINT, stop in order.
#include <signal.h>

#include <cstdio>

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
  spdlog::info("received {}, shutting down", received == SIGTERM ? "SIGTERM" : "SIGINT");
  s = app->Stop(std::chrono::seconds(10));
  app.reset();
  if (!s.ok()) {
    spdlog::critical("shutdown failed: {}", s.ToString());
    return ExitCodeFor(s);
  }
  spdlog::info("stopped cleanly");
  return kExitOk;
}
