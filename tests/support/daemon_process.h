// Running the real binaries from tests: `ledgerd` as a child process (DaemonProcess) and one-shot
// commands such as `ledgerctl verify` (RunProcess / RunLedgerctlBinary).
//
//   TempDir dir;
//   DaemonOptions options;
//   options.data_dir = dir.Sub("data");
//   options.log_path = dir.Sub("ledgerd.log");   // never inside the data directory
//   DaemonProcess daemon(options);
//   ASSERT_TRUE(daemon.Start().ok());            // waits for "listening on http://HOST:PORT"
//   TestHttpClient client("127.0.0.1", daemon.port());
//   ...
//   daemon.Kill();                               // SIGKILL, reaped
//   EXPECT_EQ(daemon.Terminate(), 0);            // or SIGTERM and the exit code
//
// Children get this process's environment minus every ledgerd setting (LEDGER_*, STRIPE_*,
// LAGO_*), plus what the test sets, so a developer's shell cannot change a test's outcome.
// ledgerd's stdout and stderr go (appended) to one log file; Log() returns the current run's part.
//
// Thread safety: a DaemonProcess is driven from one thread; port() and running() may be read
// from others while it runs.
#pragma once

#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "events/status.h"

namespace ledger::testing {

using EnvList = std::vector<std::pair<std::string, std::string>>;

std::string LedgerdPath();    // LEDGER_BINARY_DIR "/bin/ledgerd"
std::string LedgerctlPath();  // LEDGER_BINARY_DIR "/bin/ledgerctl"

// This process's environment without LEDGER_*, STRIPE_* and LAGO_* variables, plus `set`
// ("NAME=value" strings, for execve).
std::vector<std::string> ChildEnvironment(const EnvList& set);

// Exit code convention of the helpers below: the exit status when the child exited; 128 + the
// signal number when a signal ended it; -1 when it could not be started or did not end in time.
struct ProcessOutput {
  int exit_code = -1;
  bool timed_out = false;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs argv (argv[0] an absolute path) with ChildEnvironment(env) and waits at most `timeout`
// (then SIGKILL). Captures stdout and stderr.
ProcessOutput RunProcess(const std::vector<std::string>& argv, const EnvList& env = {},
                         std::chrono::milliseconds timeout = std::chrono::seconds(120));

// `ledgerctl <args...>`.
ProcessOutput RunLedgerctlBinary(const std::vector<std::string>& args,
                                 std::chrono::milliseconds timeout = std::chrono::seconds(120));

// Searches PATH for `name`; "" when absent.
std::string FindOnPath(const std::string& name);

struct DaemonOptions {
  std::string data_dir;                // passed as --data-dir ("" = not passed)
  std::string log_path;                // required; appended to; keep it out of data_dir
  std::string listen = "127.0.0.1:0";  // --listen ("" = not passed)
  std::string kafka_brokers = "none";  // --kafka-brokers ("" = not passed: the default, embedded)
  std::vector<std::string> args;       // further flags
  EnvList env;                         // further environment
};

class DaemonProcess {
 public:
  explicit DaemonProcess(DaemonOptions options);
  ~DaemonProcess();  // SIGKILL and reap when still running
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Spawns ledgerd and waits for its "listening on http://HOST:PORT" line. Fails (with the log's
  // tail in the message) when ledgerd exits first — exit_code() then holds its code — or when
  // `timeout` passes. May be called again after the process ended (a restart).
  Status Start(std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Spawns ledgerd and returns at once (for what happens before it listens; port() stays 0).
  Status Spawn();

  // The options the next Start() uses (e.g. to restart with other flags).
  DaemonOptions* mutable_options() { return &options_; }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  int port() const { return port_.load(); }
  // The embedded Kafka's bootstrap address from the "bootstrap=HOST:PORT" log line ("" if none).
  const std::string& kafka_bootstrap() const { return kafka_bootstrap_; }
  // Exit code of the last run that ended (see ProcessOutput), -1 while running / never ran.
  int exit_code() const { return exit_code_; }

  // SIGKILL and reap.
  void Kill();
  // Sends `signal` (SIGTERM by default) and waits up to `timeout` for the exit (then SIGKILL).
  // Returns exit_code().
  int Terminate(std::chrono::milliseconds timeout = std::chrono::seconds(60), int signal = SIGTERM);
  // Waits up to `timeout` for the process to end on its own. Returns exit_code() (-1: still
  // running).
  int Wait(std::chrono::milliseconds timeout);

  // The log written by the current (or last) run.
  std::string Log() const;

 private:
  // Reaps the child when it has ended (blocking when `block`). True when it has.
  bool Reap(bool block);

  DaemonOptions options_;
  pid_t pid_ = -1;
  std::atomic<int> port_{0};
  std::string kafka_bootstrap_;
  int exit_code_ = -1;
  size_t log_offset_ = 0;
};

// Reads <data_dir>/jwt-dev.secret (its first line), "" when absent.
std::string ReadDevSecret(const std::string& data_dir);

// An HS256 admin token (realm role "admin", sub `subject`) valid for an hour, signed with `secret`.
std::string MintAdminToken(const std::string& secret, const std::string& subject = "test-admin");

}  // namespace ledger::testing
