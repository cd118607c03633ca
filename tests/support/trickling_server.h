// An outside API on a raw socket (127.0.0.1, any free port) that answers each request with a
// `status` head announcing `body_bytes` of body, then sends the body one byte every `interval`,
// until it is done or the caller hangs up -- the answer cpp-httplib's per-read timeouts never end.
// One connection at a time, on its own thread from construction until destruction.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ledger::testing {

// A socket listening on 127.0.0.1 at a free port (*port), or -1 (the fake outside APIs here).
inline int ListenLoopback(int* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(fd, 8) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    if (fd >= 0) ::close(fd);
    return -1;
  }
  *port = ntohs(addr.sin_port);
  return fd;
}

class TricklingServer {
 public:
  // As `status`: a TLS server that never finishes its handshake -- after the client's first
  // bytes (its ClientHello) a handshake record header announcing 16 KiB, then the record's
  // `body_bytes` one every `interval` (OpenSSL waits for the whole record; each byte restarts
  // cpp-httplib's per-wait connection timeout). Call it at https://127.0.0.1:<port()>.
  static constexpr int kTlsHandshake = -1;

  // `content_length` false: the head announces no length (`Connection: close`; the body ends
  // where the connection does).
  TricklingServer(int status, int body_bytes, std::chrono::milliseconds interval,
                  bool content_length = true)
      : status_(status), body_bytes_(body_bytes), interval_(interval),
        content_length_(content_length) {
    fd_ = ListenLoopback(&port_);
    if (fd_ >= 0) thread_ = std::thread([this] { Serve(); });
  }
  ~TricklingServer() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // wakes the accept()
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  TricklingServer(const TricklingServer&) = delete;
  TricklingServer& operator=(const TricklingServer&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  bool finished() const { return finished_.load(); }  // a whole body was sent
  int body_bytes_sent() const { return body_bytes_sent_.load(); }  // over all requests
  // The heads of the requests received, in order.
  std::vector<std::string> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  void Serve() {
    for (;;) {
      const int connection = ::accept(fd_, nullptr, nullptr);
      if (connection < 0) return;
      Answer(connection);
      ::close(connection);
    }
  }

  void Answer(int connection) {
    std::string request;
    char buf[4096];
    while (status_ != kTlsHandshake && request.find("\r\n\r\n") == std::string::npos) {
      const ssize_t n = ::recv(connection, buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<size_t>(n));
    }
    if (status_ == kTlsHandshake) {
      const ssize_t n = ::recv(connection, buf, sizeof(buf), 0);  // the ClientHello
      if (n > 0) request.assign(buf, static_cast<size_t>(n));
    }
    const std::string head =
        status_ == kTlsHandshake
            ? std::string("\x16\x03\x03\x40\x00", 5)  // handshake record, TLS 1.2, 16 KiB
            : "HTTP/1.1 " + std::to_string(status_) + " OK\r\nContent-Type: application/json\r\n" +
                  (content_length_ ? "Content-Length: " + std::to_string(body_bytes_)
                                   : std::string("Connection: close")) +
                  "\r\n\r\n";
    bool open = ::send(connection, head.data(), head.size(), MSG_NOSIGNAL) > 0;
    std::unique_lock<std::mutex> lock(mu_);
    requests_.push_back(request.substr(0, request.find("\r\n\r\n")));
    int sent = 0;
    while (open && sent < body_bytes_) {
      if (cv_.wait_for(lock, interval_, [this] { return stop_; })) break;
      open = ::send(connection, " ", 1, MSG_NOSIGNAL) == 1;
      if (open) {
        ++sent;
        ++body_bytes_sent_;
      }
    }
    if (sent == body_bytes_) finished_ = true;
  }

  const int status_;
  const int body_bytes_;
  const std::chrono::milliseconds interval_;
  const bool content_length_;
  int fd_ = -1;
  int port_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;                  // guarded by mu_
  std::vector<std::string> requests_;  // guarded by mu_
  std::atomic<int> body_bytes_sent_{0};
  std::atomic<bool> finished_{false};
  std::thread thread_;  // last: starts with every other member initialized
};

}  // namespace ledger::testing
