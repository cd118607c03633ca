#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "tests/support/tokens.h"

extern char** environ;

namespace ledger::testing {

namespace {

using Clock = std::chrono::steady_clock;

bool IsLedgerSetting(const char* entry) {
  return std::strncmp(entry, "LEDGER_", 7) == 0 || std::strncmp(entry, "STRIPE_", 7) == 0 ||
         std::strncmp(entry, "LAGO_", 5) == 0;
}

int DecodeWaitStatus(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// argv/envp arrays pointing into `strings`.
std::vector<char*> CArray(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Spawn attributes shared by every child: no blocked signals, default dispositions for the
// signals tests send or that the test runner may ignore.
struct SpawnAttributes {
  posix_spawnattr_t attr;
  SpawnAttributes() {
    posix_spawnattr_init(&attr);
    sigset_t empty, defaults;
    sigemptyset(&empty);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGINT);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  }
  ~SpawnAttributes() { posix_spawnattr_destroy(&attr); }
};

std::string ReadFrom(const std::string& path, size_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(static_cast<std::streamoff>(offset));
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

size_t FileSize(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<size_t>(st.st_size) : 0;
}

// The text after `marker` up to the next space or end of line, "" when `marker` is absent.
std::string ValueAfter(const std::string& log, const std::string& marker) {
  size_t at = log.find(marker);
  if (at == std::string::npos) return "";
  at += marker.size();
  size_t end = log.find_first_of(" \t\r\n", at);
  return log.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

std::string Tail(const std::string& text, size_t bytes) {
  return text.size() <= bytes ? text : "..." + text.substr(text.size() - bytes);
}

}  // namespace

std::string LedgerdPath() { return LEDGER_BINARY_DIR "/bin/ledgerd"; }
std::string LedgerctlPath() { return LEDGER_BINARY_DIR "/bin/ledgerctl"; }

std::vector<std::string> ChildEnvironment(const EnvList& set) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!IsLedgerSetting(*e)) out.emplace_back(*e);
  }
  for (const auto& [name, value] : set) out.push_back(name + "=" + value);
  return out;
}

ProcessOutput RunProcess(const std::vector<std::string>& argv, const EnvList& env,
                         std::chrono::milliseconds timeout) {
  ProcessOutput result;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return result;
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return result;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  SpawnAttributes attributes;
  std::vector<std::string> args = argv, envs = ChildEnvironment(env);
  std::vector<char*> c_args = CArray(args), c_envs = CArray(envs);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, c_args[0], &actions, &attributes.attr, c_args.data(), c_envs.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    result.err = "posix_spawn " + argv[0] + ": " + std::strerror(rc);
    return result;
  }
  const auto deadline = Clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_fds = 2;
  char buf[65536];
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      break;
    }
    if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  if (result.timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exit_code = result.timed_out ? -1 : DecodeWaitStatus(status);
  return result;
}

ProcessOutput RunLedgerctlBinary(const std::vector<std::string>& args,
                                 std::chrono::milliseconds timeout) {
  std::vector<std::string> argv = {LedgerctlPath()};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunProcess(argv, {}, timeout);
}

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

DaemonProcess::DaemonProcess(DaemonOptions options) : options_(std::move(options)) {}

DaemonProcess::~DaemonProcess() {
  if (running()) Kill();
}

Status DaemonProcess::Start(std::chrono::milliseconds timeout) {
  LEDGER_RETURN_IF_ERROR(Spawn());
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    std::string log = Log();
    std::string address = ValueAfter(log, "listening on http://");
    if (!address.empty()) {
      size_t colon = address.rfind(':');
      int port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
      if (port <= 0) return Status::Internal("cannot parse the listen line: " + address);
      kafka_bootstrap_ = ValueAfter(log, "bootstrap=");
      port_.store(port);
      return Status::OK();
    }
    if (Reap(false)) {
      return Status::Unavailable("ledgerd_exited",
                                 "ledgerd exited with " + std::to_string(exit_code_) +
                                     " before listening; log:\n" + Tail(log, 4000));
    }
    if (Clock::now() > deadline) {
      Kill();
      return Status::Unavailable(
          "ledgerd_timeout",
          "ledgerd did not log its listen address in time; log:\n" + Tail(log, 4000));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Status DaemonProcess::Spawn() {
  if (running()) return Status::Internal("ledgerd is already running");
  if (options_.log_path.empty()) return Status::InvalidArgument("test", "log_path is required");
  port_.store(0);
  kafka_bootstrap_.clear();
  exit_code_ = -1;
  std::vector<std::string> args = {LedgerdPath()};
  if (!options_.data_dir.empty()) args.insert(args.end(), {"--data-dir", options_.data_dir});
  if (!options_.listen.empty()) args.insert(args.end(), {"--listen", options_.listen});
  if (!options_.kafka_brokers.empty()) {
    args.insert(args.end(), {"--kafka-brokers", options_.kafka_brokers});
  }
  args.insert(args.end(), options_.args.begin(), options_.args.end());

  int log_fd = ::open(options_.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return Status::IOError("cannot open " + options_.log_path);
  log_offset_ = FileSize(options_.log_path);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 1);
  posix_spawn_file_actions_adddup2(&actions, log_fd, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  SpawnAttributes attributes;
  std::vector<std::string> envs = ChildEnvironment(options_.env);
  std::vector<char*> c_args = CArray(args), c_envs = CArray(envs);
  pid_t pid = -1;
  int rc = ::posix_spawn(&pid, c_args[0], &actions, &attributes.attr, c_args.data(), c_envs.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(log_fd);
  if (rc != 0) return Status::Internal("posix_spawn ledgerd: " + std::string(std::strerror(rc)));
  pid_ = pid;
  return Status::OK();
}

bool DaemonProcess::Reap(bool block) {
  if (pid_ <= 0) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  exit_code_ = r == pid_ ? DecodeWaitStatus(status) : -1;
  pid_ = -1;
  port_.store(0);
  return true;
}

void DaemonProcess::Kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  Reap(true);
}

int DaemonProcess::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!Reap(false)) {
    if (Clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return exit_code_;
}

int DaemonProcess::Terminate(std::chrono::milliseconds timeout, int signal) {
  if (pid_ <= 0) return exit_code_;
  ::kill(pid_, signal);
  if (Wait(timeout) == -1 && pid_ > 0) {
    Kill();
    exit_code_ = -1;
  }
  return exit_code_;
}

std::string DaemonProcess::Log() const { return ReadFrom(options_.log_path, log_offset_); }

std::string ReadDevSecret(const std::string& data_dir) {
  std::ifstream in(data_dir + "/jwt-dev.secret");
  std::string line;
  std::getline(in, line);
  return line;
}

std::string MintAdminToken(const std::string& secret, const std::string& subject) {
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
  return MintHs256(TokenClaims::Admin(subject, now_s), secret);
}

}  // namespace ledger::testing
