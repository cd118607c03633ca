#include "tools/bench_http.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "http/problem.h"
#include "projections/limits.h"

namespace ledger::tools {

namespace {

using SteadyClock = std::chrono::steady_clock;

// Answers bigger than this are a protocol error for this client (consume answers are < 1 KiB;
// a batch answer has ~100 bytes per item).
constexpr size_t kResponseBytesMax = 4 << 20;
// How long the client waits for the answers still outstanding when the measured window ends.
constexpr auto kDrainMax = std::chrono::seconds(30);

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t index = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}

bool ParseUrl(const std::string& url, std::string* host, std::string* port) {
  constexpr std::string_view kScheme = "http://";
  std::string_view rest(url);
  if (rest.substr(0, kScheme.size()) != kScheme) return false;
  rest.remove_prefix(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.empty() || rest.find('/') != std::string_view::npos) return false;
  const size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos) {
    *host = std::string(rest);
    *port = "80";
  } else {
    *host = std::string(rest.substr(0, colon));
    *port = std::string(rest.substr(colon + 1));
  }
  return !host->empty() && !port->empty();
}

// One keep-alive connection: at most one request in flight (HTTP/1.1 without pipelining).
struct Connection {
  int fd = -1;
  bool connecting = false;       // a non-blocking connect() not yet complete
  bool queued = false;           // in Client::idle_
  bool busy = false;             // a request in flight
  SteadyClock::time_point due;  // of the request in flight
  std::string out;              // unsent bytes of the request in flight
  size_t out_sent = 0;
  std::string in;               // bytes of the answer so far
};

// The length of a complete answer at the front of `in`, its status and whether the server
// closes the connection after it ("Connection: close"); 0 while incomplete, SIZE_MAX when it
// cannot be read (no Content-Length, malformed).
size_t CompleteResponse(const std::string& in, int* status, bool* closes) {
  const size_t head_end = in.find("\r\n\r\n");
  if (head_end == std::string::npos) return in.size() > kResponseBytesMax ? SIZE_MAX : 0;
  // "HTTP/1.1 200 OK"
  if (in.size() < 12 || in.compare(0, 5, "HTTP/") != 0) return SIZE_MAX;
  const size_t sp = in.find(' ');
  if (sp == std::string::npos || sp + 4 > head_end) return SIZE_MAX;
  if (std::from_chars(in.data() + sp + 1, in.data() + sp + 4, *status).ec != std::errc()) {
    return SIZE_MAX;
  }
  size_t length = SIZE_MAX;
  size_t line = in.find("\r\n") + 2;
  while (line < head_end) {
    const size_t next = in.find("\r\n", line);
    constexpr std::string_view kLength = "content-length:";
    constexpr std::string_view kConnection = "connection:";
    const std::string_view header(in.data() + line, next - line);
    if (http::StartsWithIgnoreCase(header, kLength)) {
      std::string_view value = header.substr(kLength.size());
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      size_t parsed = 0;
      if (std::from_chars(value.data(), value.data() + value.size(), parsed).ec != std::errc()) {
        return SIZE_MAX;
      }
      length = parsed;
    } else if (http::StartsWithIgnoreCase(header, kConnection)) {
      std::string_view value = header.substr(kConnection.size());
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      *closes = http::EqualsIgnoreCase(value, "close");
    }
    line = next + 2;
  }
  if (length == SIZE_MAX || length > kResponseBytesMax) return SIZE_MAX;
  const size_t total = head_end + 4 + length;
  return in.size() >= total ? total : 0;
}

class Client {
 public:
  Client(const HttpBenchOptions& o, const addrinfo* address, std::string host_header)
      : o_(o), address_(address), host_header_(std::move(host_header)) {}
  ~Client() {
    for (Connection& c : connections_) {
      if (c.fd >= 0) ::close(c.fd);
    }
    if (timer_ >= 0) ::close(timer_);
    if (epoll_ >= 0) ::close(epoll_);
  }

  Status Run(HttpBenchResult* result) {
    epoll_ = ::epoll_create1(EPOLL_CLOEXEC);
    timer_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epoll_ < 0 || timer_ < 0) return Status::IOError("epoll/timerfd: " + Errno());
    epoll_event tev{};
    tev.events = EPOLLIN;
    tev.data.u64 = kTimerToken;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, timer_, &tev) != 0) {
      return Status::IOError("epoll_ctl: " + Errno());
    }
    connections_.resize(static_cast<size_t>(o_.connections));
    for (size_t i = 0; i < connections_.size(); ++i) {
      LEDGER_RETURN_IF_ERROR(Connect(i));
    }
    prefix_ = "bench-" + std::to_string(std::random_device{}()) + "-" +
              std::to_string(SteadyClock::now().time_since_epoch().count()) + "-";
    start_ = SteadyClock::now() + std::chrono::milliseconds(100);
    measure_from_ = start_ + std::chrono::duration_cast<SteadyClock::duration>(
                                 std::chrono::duration<double>(o_.warmup_seconds));
    end_ = measure_from_ + std::chrono::duration_cast<SteadyClock::duration>(
                               std::chrono::duration<double>(o_.seconds));
    open_loop_ = o_.rate > 0;
    std::vector<epoll_event> events(connections_.size() + 1);
    for (;;) {
      const auto now = SteadyClock::now();
      LEDGER_RETURN_IF_ERROR(SendDue(now));
      const SteadyClock::time_point due = DueTime(next_, now);
      const bool sending = due < end_;
      if (!sending && in_flight_ == 0) break;
      if (!sending && now > end_ + kDrainMax) {
        transport_errors_ += in_flight_;
        break;
      }
      // Wake for the next due request, unless no connection is free: a connection's answer
      // wakes the loop then (arming for a past due time would spin).
      if (!sending) {
        ArmTimer(end_ + kDrainMax);
      } else if (idle_.empty()) {
        ArmTimer(end_);
      } else {
        ArmTimer(due);
      }
      const int n = ::epoll_wait(epoll_, events.data(), static_cast<int>(events.size()), -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::IOError("epoll_wait: " + Errno());
      }
      for (int i = 0; i < n; ++i) {
        if (events[static_cast<size_t>(i)].data.u64 == kTimerToken) {
          uint64_t expirations = 0;
          [[maybe_unused]] ssize_t r = ::read(timer_, &expirations, sizeof(expirations));
          continue;
        }
        LEDGER_RETURN_IF_ERROR(OnReady(static_cast<size_t>(events[static_cast<size_t>(i)].data.u64),
                                       events[static_cast<size_t>(i)].events));
      }
    }
    std::sort(latencies_ms_.begin(), latencies_ms_.end());
    result->offered_rate = o_.rate;
    result->requests = latencies_ms_.size();
    result->achieved_rate = static_cast<double>(latencies_ms_.size()) / o_.seconds;
    result->ok = ok_;
    result->refused = refused_;
    result->transport_errors = transport_errors_;
    result->items_accepted = items_accepted_;
    result->items_rate = static_cast<double>(items_accepted_) / o_.seconds;
    result->p50_ms = Percentile(latencies_ms_, 50);
    result->p90_ms = Percentile(latencies_ms_, 90);
    result->p99_ms = Percentile(latencies_ms_, 99);
    result->p999_ms = Percentile(latencies_ms_, 99.9);
    result->max_ms = latencies_ms_.empty() ? 0 : latencies_ms_.back();
    return Status::OK();
  }

 private:
  static constexpr uint64_t kTimerToken = UINT64_MAX;

  static std::string Errno() { return std::strerror(errno); }

  // Open loop: request i is due at start + i / rate. Closed loop: as soon as a connection is
  // free (`now`), but not before the start.
  SteadyClock::time_point DueTime(uint64_t i, SteadyClock::time_point now) const {
    if (!open_loop_) return std::max(start_, now);
    return start_ + std::chrono::duration_cast<SteadyClock::duration>(
                        std::chrono::duration<double>(static_cast<double>(i) / o_.rate));
  }

  void ArmTimer(SteadyClock::time_point at) {
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at.time_since_epoch());
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns.count() / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(ns.count() % 1'000'000'000);
    if (spec.it_value.tv_sec == 0 && spec.it_value.tv_nsec == 0) spec.it_value.tv_nsec = 1;
    // steady_clock is CLOCK_MONOTONIC in libstdc++.
    ::timerfd_settime(timer_, TFD_TIMER_ABSTIME, &spec, nullptr);
  }

  // (Re)opens connection i without blocking (a blocking connect() stalls the whole loop for a
  // SYN retransmit, a second, when a server's accept backlog is full); it joins `idle_` once
  // connected.
  Status Connect(size_t i) {
    Connection& c = connections_[i];
    if (c.fd >= 0) {
      ::epoll_ctl(epoll_, EPOLL_CTL_DEL, c.fd, nullptr);
      ::close(c.fd);
    }
    const bool queued = c.queued;
    c = Connection();
    c.queued = queued;
    c.fd = ::socket(address_->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0) return Status::IOError("socket: " + Errno());
    int one = 1;
    ::setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (::connect(c.fd, address_->ai_addr, address_->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) return Status::IOError("connect " + o_.url + ": " + Errno());
      c.connecting = true;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    if (c.connecting) ev.events |= EPOLLOUT;
    ev.data.u64 = i;
    if (::epoll_ctl(epoll_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
      return Status::IOError("epoll_ctl: " + Errno());
    }
    if (!c.connecting) MakeIdle(i);
    return Status::OK();
  }

  void MakeIdle(size_t i) {
    if (connections_[i].queued) return;
    connections_[i].queued = true;
    idle_.push_back(i);
  }

  // Gives every due request a free connection; due requests without one wait (their latency
  // keeps counting from the due time).
  Status SendDue(SteadyClock::time_point now) {
    while (!idle_.empty()) {
      const SteadyClock::time_point due = DueTime(next_, now);
      if (due >= end_ || due > now) return Status::OK();
      const size_t i = idle_.front();
      idle_.pop_front();
      Connection& c = connections_[i];
      c.queued = false;
      const std::string body = o_.batch > 0 ? BatchBody(next_) : ConsumeBody(next_);
      ++next_;
      c.out = std::string(o_.batch > 0 ? "POST /api/v1/usage/events" : "POST /api/v1/usage/consume") +
              " HTTP/1.1\r\nHost: " + host_header_ + "\r\nAuthorization: Bearer " + o_.token +
              "\r\nContent-Type: application/json\r\nContent-Length: " +
              std::to_string(body.size()) + "\r\n\r\n" + body;
      c.out_sent = 0;
      c.in.clear();
      c.busy = true;
      c.due = due;
      ++in_flight_;
      LEDGER_RETURN_IF_ERROR(Flush(i));
    }
    return Status::OK();
  }

  std::string ConsumeBody(uint64_t n) const {
    return "{\"user_id\":\"" + o_.user_id + "\",\"service\":\"" + o_.service +
           "\",\"quantity\":1,\"idempotency_key\":\"" + prefix_ + std::to_string(n) + "\"}";
  }

  // Item i of request n: user "<user_id>-<i mod users>", key "<prefix><n>-<i>".
  std::string BatchBody(uint64_t n) const {
    std::string body;
    body.reserve(static_cast<size_t>(o_.batch) * 112 + 16);
    body += "{\"events\":[";
    const std::string request_prefix = prefix_ + std::to_string(n) + "-";
    char digits[24];
    for (int i = 0; i < o_.batch; ++i) {
      if (i > 0) body += ',';
      body += "{\"user_id\":\"";
      body += o_.user_id;
      body += '-';
      body.append(digits, std::to_chars(digits, digits + sizeof(digits), i % o_.batch_users).ptr);
      body += "\",\"service\":\"";
      body += o_.service;
      body += "\",\"quantity\":1,\"idempotency_key\":\"";
      body += request_prefix;
      body.append(digits, std::to_chars(digits, digits + sizeof(digits), i).ptr);
      body += "\",\"metadata\":{\"model\":\"bench\"}}";
    }
    body += "]}";
    return body;
  }

  // The accepted items of a batch answer: its top-level "accepted" count, after the results.
  static uint64_t CountAccepted(std::string_view response) {
    constexpr std::string_view kAccepted = "],\"accepted\":";
    const size_t at = response.rfind(kAccepted);
    if (at == std::string_view::npos) return 0;
    uint64_t count = 0;
    const char* from = response.data() + at + kAccepted.size();
    std::from_chars(from, response.data() + response.size(), count);
    return count;
  }

  Status Flush(size_t i) {
    Connection& c = connections_[i];
    while (c.out_sent < c.out.size()) {
      const ssize_t n =
          ::send(c.fd, c.out.data() + c.out_sent, c.out.size() - c.out_sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.out_sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP;
        ev.data.u64 = i;
        ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
        return Status::OK();
      }
      return Fail(i);
    }
    return Status::OK();
  }

  // Connection i failed or was closed: the request in flight on it (if any) counts as a
  // transport error; reconnect.
  Status Fail(size_t i) {
    const bool busy = connections_[i].busy;
    if (busy) {
      --in_flight_;
      if (connections_[i].due >= measure_from_) ++transport_errors_;
    }
    return Connect(i);
  }

  Status OnReady(size_t i, uint32_t events) {
    Connection& c = connections_[i];
    if (c.connecting) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return Status::OK();
      int error = 0;
      socklen_t length = sizeof(error);
      ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) return Status::IOError("connect " + o_.url + ": " + std::strerror(error));
      c.connecting = false;
      epoll_event ev{};
      ev.events = EPOLLIN | EPOLLRDHUP;
      ev.data.u64 = i;
      ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
      MakeIdle(i);
      return Status::OK();
    }
    if ((events & EPOLLOUT) != 0 && c.out_sent < c.out.size()) {
      LEDGER_RETURN_IF_ERROR(Flush(i));
      if (c.out_sent == c.out.size()) {
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = i;
        ::epoll_ctl(epoll_, EPOLL_CTL_MOD, c.fd, &ev);
      }
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return Status::OK();
    char buf[16 * 1024];
    bool closed = false;  // by the server (after an answer with "Connection: close") or an error
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
      closed = true;
      break;
    }
    if (!c.busy) return c.in.empty() && !closed ? Status::OK() : Fail(i);
    int status = 0;
    bool closes = false;
    const size_t complete = CompleteResponse(c.in, &status, &closes);
    if (complete == SIZE_MAX || (complete != 0 && complete != c.in.size())) return Fail(i);
    if (complete == 0) return closed ? Fail(i) : Status::OK();
    const auto done = SteadyClock::now();
    c.busy = false;
    --in_flight_;
    if (c.due >= measure_from_ && o_.batch > 0 && status == 200) {
      items_accepted_ += CountAccepted(c.in);
    }
    c.in.clear();
    if (c.due >= measure_from_) {
      (status == 200 ? ok_ : refused_)++;
      latencies_ms_.push_back(std::chrono::duration<double, std::milli>(done - c.due).count());
    }
    // Reconnect before the next request rather than send it into a connection being closed.
    if (closed || closes) return Connect(i);
    MakeIdle(i);
    return Status::OK();
  }

  const HttpBenchOptions& o_;
  const addrinfo* address_;
  const std::string host_header_;
  int epoll_ = -1;
  int timer_ = -1;
  std::vector<Connection> connections_;
  std::deque<size_t> idle_;
  std::string prefix_;
  SteadyClock::time_point start_, measure_from_, end_;
  bool open_loop_ = false;
  uint64_t next_ = 0;  // index of the next request to send
  uint64_t in_flight_ = 0;
  uint64_t ok_ = 0, refused_ = 0, transport_errors_ = 0, items_accepted_ = 0;
  std::vector<double> latencies_ms_;
};

}  // namespace

Status RunHttpBench(const HttpBenchOptions& o, HttpBenchResult* result) {
  *result = HttpBenchResult();
  std::string host, port;
  if (o.url.empty() || o.connections < 1 || o.connections > 4096 || o.seconds <= 0 ||
      o.rate < 0 || o.warmup_seconds < 0 || o.batch < 0 ||
      static_cast<size_t>(o.batch) > projections::limits::kUsageBatchItemsMax ||
      o.batch_users < 1 || !ParseUrl(o.url, &host, &port)) {
    return Status::InvalidArgument("bad_bench_options",
                                   "need --url http://host:port, 1..4096 connections, "
                                   "seconds > 0, rate >= 0, batch 0..1000, batch users >= 1");
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* addresses = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &addresses) != 0 || addresses == nullptr) {
    return Status::InvalidArgument("bad_bench_options", "cannot resolve " + o.url);
  }
  Client client(o, addresses, host + ":" + port);
  Status s = client.Run(result);
  ::freeaddrinfo(addresses);
  return s;
}

std::string FormatHttpBenchReport(const HttpBenchOptions& o, const HttpBenchResult& r) {
  std::string items;
  if (o.batch > 0) {
    char line[256];
    std::snprintf(line, sizeof(line),
                  "  accepted   %.0f events/s (%llu items in %d-item bodies for %d users)\n",
                  r.items_rate, static_cast<unsigned long long>(r.items_accepted), o.batch,
                  o.batch_users);
    items = line;
  }
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "bench http: POST %s/api/v1/usage/%s, %d connections, %s, %.0f s measured\n"
                "  answered   %.0f req/s (%llu requests: %llu 200, %llu other status, %llu "
                "transport errors)\n%s"
                "  p50 %8.2f ms\n  p90 %8.2f ms\n  p99 %8.2f ms\n  p99.9 %6.2f ms\n"
                "  max %8.2f ms\n",
                o.url.c_str(), o.batch > 0 ? "events" : "consume", o.connections,
                o.rate > 0 ? ("open loop at " + std::to_string(static_cast<long long>(o.rate)) +
                              " req/s (latency from each request's due time)")
                                 .c_str()
                           : "closed loop",
                o.seconds, r.achieved_rate, static_cast<unsigned long long>(r.requests),
                static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.refused),
                static_cast<unsigned long long>(r.transport_errors), items.c_str(), r.p50_ms, r.p90_ms, r.p99_ms,
                r.p999_ms, r.max_ms);
  return buf;
}

}  // namespace ledger::tools
