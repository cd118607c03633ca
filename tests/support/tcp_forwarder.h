// A TCP forwarder on 127.0.0.1 (any free port) to a local port: each accepted connection is relayed
// to the target current when it was accepted. Retarget() points new connections elsewhere and
// closes those open -- a service replaced behind the same address (a Kafka cluster rebuilt empty
// while its clients run). Its own threads (one per connection), from construction until
// destruction.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/trickling_server.h"

namespace ledger::testing {

class TcpForwarder {
 public:
  explicit TcpForwarder(int target_port) : target_port_(target_port) {
    fd_ = ListenLoopback(&port_);
    if (fd_ >= 0) thread_ = std::thread([this] { Serve(); });
  }
  ~TcpForwarder() {
    stop_.store(true);
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // wakes the accept()
    if (thread_.joinable()) thread_.join();
    for (std::thread& relay : relays_) relay.join();  // each sees stop_ within a poll
    if (fd_ >= 0) ::close(fd_);
  }
  TcpForwarder(const TcpForwarder&) = delete;
  TcpForwarder& operator=(const TcpForwarder&) = delete;

  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

  // New connections go to `target_port`; the open ones are closed (within ~20 ms).
  void Retarget(int target_port) {
    target_port_.store(target_port);
    generation_.fetch_add(1);
  }

 private:
  static int Connect(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  void Serve() {
    for (;;) {
      const int client = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) return;
      const int upstream = Connect(target_port_.load());
      if (upstream < 0) {
        ::close(client);
        continue;
      }
      const int generation = generation_.load();
      relays_.emplace_back([this, client, upstream, generation] {
        Relay(client, upstream, generation);
      });
    }
  }

  // Copies both ways until either side closes, a Retarget() or the destructor.
  void Relay(int client, int upstream, int generation) {
    pollfd fds[2] = {{client, POLLIN, 0}, {upstream, POLLIN, 0}};
    char buf[64 << 10];
    while (!stop_.load() && generation_.load() == generation) {
      if (::poll(fds, 2, 20) < 0) break;
      bool open = true;
      for (int i = 0; i < 2 && open; ++i) {
        if (fds[i].revents == 0) continue;
        const ssize_t n = ::recv(fds[i].fd, buf, sizeof(buf), 0);
        open = n > 0 && Send(fds[1 - i].fd, buf, static_cast<size_t>(n));
      }
      if (!open) break;
    }
    ::close(client);
    ::close(upstream);
  }

  static bool Send(int fd, const char* data, size_t size) {
    while (size > 0) {
      const ssize_t n = ::send(fd, data, size, MSG_NOSIGNAL);
      if (n <= 0) return false;
      data += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }

  int fd_ = -1;
  int port_ = 0;
  std::atomic<int> target_port_;
  std::atomic<int> generation_{0};
  std::atomic<bool> stop_{false};
  std::vector<std::thread> relays_;  // accept thread only, then the destructor after its join
  std::thread thread_;  // last: starts with every other member initialized
};

}  // namespace ledger::testing
