#include "http/call_deadline.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <system_error>

namespace ledger::http {

namespace {

std::atomic<CallDeadlineThreadStarter> thread_starter{nullptr};

}  // namespace

void SetCallDeadlineThreadStarter(CallDeadlineThreadStarter starter) {
  thread_starter.store(starter);
}

CallDeadline::CallDeadline(httplib::Client* client, std::chrono::milliseconds timeout)
    : client_(client) {
  std::function<void()> watch = [this, client,
                                 deadline = std::chrono::steady_clock::now() + timeout] {
    Watch(client, deadline);
  };
  try {
    const CallDeadlineThreadStarter start = thread_starter.load();
    thread_ = start != nullptr ? start(std::move(watch)) : std::thread(std::move(watch));
  } catch (const std::system_error& e) {
    spdlog::warn("http: an outbound call is not made: no thread for its deadline ({})", e.what());
    return;
  }
  started_ = true;
  client_->set_socket_options([this](socket_t sock) { Adopt(sock); });
}

void CallDeadline::Adopt(int sock) {
  const int copy = ::fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) return;  // stop() still ends the call once the socket is connected
  std::lock_guard<std::mutex> lock(mu_);
  fds_.push_back(copy);
  if (passed_) ::shutdown(copy, SHUT_RD);
}

void CallDeadline::Watch(httplib::Client* client,
                         std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (cv_.wait_until(lock, deadline, [this] { return done_ || cut_; }) && done_) return;
  passed_ = true;
  // The call's own sockets: their reads end (EOF), in the TLS handshake too, which stop() would
  // wait out. Only the reading side: OpenSSL answers the cut with an alert, and a write to a
  // socket shut for writing raises SIGPIPE (fatal in a process that does not ignore it).
  if (!fds_.empty()) {
    for (int fd : fds_) ::shutdown(fd, SHUT_RD);
    if (cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return done_; })) return;
  }
  // A kept-alive connection the call reused (no socket of its own), or a call the shutdown did
  // not end (blocked writing): stop(), again until the call returns -- a stop() before the
  // request took its socket is lost.
  do {
    lock.unlock();
    client->stop();
    lock.lock();
  } while (!cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return done_; }));
}

void CallDeadline::Cut() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_) return;
    cut_ = true;
  }
  cv_.notify_one();
}

bool CallDeadline::Finish() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
    client_->set_socket_options(nullptr);  // this object is gone before the client's next call
    for (int fd : fds_) ::close(fd);
    fds_.clear();
  }
  return passed_;
}

void SetClientTimeouts(httplib::Client* client, int64_t connect_ms, int64_t read_ms,
                       int64_t write_ms) {
  auto at_least_1ms = [](int64_t ms) {
    return std::chrono::milliseconds(std::max<int64_t>(ms, 1));
  };
  client->set_connection_timeout(at_least_1ms(connect_ms));
  client->set_read_timeout(at_least_1ms(read_ms));
  client->set_write_timeout(at_least_1ms(write_ms));
}

std::string NetworkErrorText(httplib::Error error) {
  switch (error) {
    case httplib::Error::Connection:
      return "connection failed";
    case httplib::Error::ConnectionTimeout:
      return "connect timed out";
    case httplib::Error::Read:
      return "no complete answer (read timed out or connection lost)";
    case httplib::Error::Write:
      return "sending the request failed";
    case httplib::Error::SSLConnection:
      return "TLS handshake failed";
    case httplib::Error::SSLLoadingCerts:
      return "loading the CA certificates failed";
    case httplib::Error::SSLServerVerification:
      return "the server's TLS certificate was not trusted";
    default:
      return "request failed (" + httplib::to_string(error) + ")";
  }
}

}  // namespace ledger::http
