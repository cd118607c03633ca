#include "http/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <dirent.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "http/chunked_framing.h"
#include "http/limits.h"
#include "http/loop_request.h"
#include "http/problem.h"
#include "http/request_head.h"
#include "http/route.h"
#include "http/secret_box.h"
#include "projections/json_util.h"

namespace ledger::http {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kReadBufferBytes = 16 * 1024;
constexpr size_t kHeaderBytesAllowance = limits::kRequestHeadBytesMax;
// A request must keep arriving at this many bytes per read timeout (head and body alike; about
// 13 KB/s with the default 5 s), counted from when it began: a client trickling a byte at a time
// would otherwise hold a worker for as long as it likes (slowloris).
constexpr size_t kRequestBytesPerReadTimeout = 64 * 1024;
constexpr std::string_view kHeadTooLarge =
    "the request head is over its limit (64 KiB; the Lago webhook's, for a jwt signature)";
// The request line that may carry a longer head (a jwt-mode Lago signature).
constexpr std::string_view kLongHeadRequestLine = "POST /api/v1/webhooks/lago ";
constexpr std::string_view kTooManyLongHeaders =
    "more than 8 header lines are over 4 KiB, and one of them over 8 KiB";
constexpr std::string_view kHeaderNameTooLong = "a header field name is over 8 KiB";
// How much a closing connection is drained (for HttpServerOptions::linger_ms) so that the client
// sees our answer instead of a reset (the "lingering close" of Apache and nginx).
constexpr size_t kLingerBytesMax = 1 << 20;
constexpr size_t kDetailPathBytesMax = 256;
constexpr char kUnmatchedRoute[] = "(unmatched)";
constexpr char kRejectedRoute[] = "(rejected)";
const std::string kConnectionHeader = "Connection";
// The slowest reader an answer is written to (ConnectionStream::write): 64 KiB/s.
constexpr size_t kWriteFloorBytesPerSecond = 64 * 1024;

// A Host value: uri-host [":" port] (RFC 9110 §7.2), i.e. reg-name, IPv4 or [IP-literal]
// characters and ':' -- no '/', '@', '?', '#' or blanks. (An empty one never gets here:
// cpp-httplib drops empty header values, so it counts as none.)
bool IsHostValue(std::string_view value) {
  for (char ch : value) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                    std::string_view("-._~!$&'()*+,;=:[]%").find(ch) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

bool IsKnownMethod(const std::string& method) {
  return method == "GET" || method == "HEAD" || method == "POST" || method == "PUT" ||
         method == "PATCH" || method == "DELETE" || method == "OPTIONS";
}

// The methods cpp-httplib 0.11.4 parses a request line with (any other is its bare 400).
bool IsLibraryMethod(std::string_view method) {
  return method == "GET" || method == "HEAD" || method == "POST" || method == "PUT" ||
         method == "DELETE" || method == "CONNECT" || method == "OPTIONS" || method == "TRACE" ||
         method == "PATCH" || method == "PRI";
}

// RFC 9110 §5.6.2: token = 1*tchar.
bool IsToken(std::string_view text) {
  if (text.empty()) return false;
  for (char ch : text) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') ||
                    std::string_view("!#$%&'*+-.^_`|~").find(ch) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

// A route pattern without regex syntax: it matches exactly its own text.
bool IsLiteralPattern(const std::string& pattern) {
  return pattern.find_first_of(R"(\^$.|?*+()[]{})") == std::string::npos;
}

bool IsRouteMethod(const std::string& method) {
  return method == "GET" || method == "POST" || method == "PUT" || method == "PATCH" ||
         method == "DELETE";
}

// Metrics label for a request method: bounded cardinality whatever clients send.
std::string MethodLabel(const std::string& method) { return IsKnownMethod(method) ? method : "OTHER"; }

bool ParseContentLength(std::string_view text, uint64_t* out) {
  if (text.empty() || text.size() > 19) return false;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  *out = value;
  return true;
}

bool IsChunked(const httplib::Request& req) {
  return EqualsIgnoreCase(req.get_header_value("Transfer-Encoding"), "chunked");
}

// True when the request announces a body (the pre-routing handler has already rejected any other
// framing).
bool HasBody(const httplib::Request& req) {
  if (IsChunked(req)) return true;
  uint64_t length = 0;
  return ParseContentLength(req.get_header_value("Content-Length"), &length) && length > 0;
}

// Whether every '%' in a request target starts a percent-escape: two hex digits (RFC 3986
// §2.1). cpp-httplib also decodes `%uXXXX`, which no proxy in front reads the same way.
bool HasOnlyPercentEscapes(std::string_view target) {
  for (size_t at = target.find('%'); at != std::string_view::npos; at = target.find('%', at + 1)) {
    if (at + 2 >= target.size() || !std::isxdigit(static_cast<unsigned char>(target[at + 1])) ||
        !std::isxdigit(static_cast<unsigned char>(target[at + 2]))) {
      return false;
    }
  }
  return true;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int64_t MillisecondsUntil(Clock::time_point deadline) {
  return std::max<int64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count(), 0);
}

// Waits for `events` on `sock` for up to `timeout_ms`. EINTR-safe.
bool PollFor(int sock, short events, int64_t timeout_ms) {
  pollfd pfd{sock, events, 0};
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int rc = ::poll(&pfd, 1, static_cast<int>(MillisecondsUntil(deadline)));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return false;
  }
}

void SockaddrToIpPort(const sockaddr_storage& addr, std::string* ip, int* port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (addr.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    *port = ntohs(in->sin_port);
  } else if (addr.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
    *port = ntohs(in6->sin6_port);
  }
  *ip = buf;
}

// One accepted TCP connection as an httplib::Stream: buffered reads, poll()-based timeouts, and a
// cap on the bytes one request may make us read.
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int sock, int64_t read_timeout_ms, int64_t write_timeout_ms, size_t request_bytes_max)
      : sock_(sock),
        read_timeout_ms_(read_timeout_ms),
        write_timeout_ms_(write_timeout_ms),
        request_bytes_max_(request_bytes_max) {}

  bool is_readable() const override {
    return HasBufferedInput() ||
           (!nonblocking_ &&
            PollFor(sock_, POLLIN, std::min(read_timeout_ms_, MillisecondsUntil(stop_deadline()))));
  }
  bool is_writable() const override { return PollFor(sock_, POLLOUT, write_timeout_ms_); }

  ssize_t read(char* ptr, size_t size) override {
    for (;;) {  // until a byte is kept: a read of trailer field bytes alone is not an end
      const ssize_t n = ReadRaw(ptr, size);
      if (n <= 0) return n;
      if (const size_t kept = chunked_.Feed(ptr, static_cast<size_t>(n)); kept > 0) {
        return static_cast<ssize_t>(kept);
      }
    }
  }

  // The bytes as they came (read() takes a chunked body's trailer fields out of them).
  ssize_t ReadRaw(char* ptr, size_t size) {
    if (request_bytes_ >= request_bytes_max_) {
      cap_hit_ = true;
      return -1;
    }
    size = std::min(size, request_bytes_max_ - request_bytes_);
    if (head_pending_) {
      head_pending_ = false;
      if (!TakeHead()) return -1;
    }
    if (pending_begin_ < pending_.size()) {
      size_t take = std::min(size, pending_.size() - pending_begin_);
      std::memcpy(ptr, pending_.data() + pending_begin_, take);
      pending_begin_ += take;
      request_bytes_ += take;
      return static_cast<ssize_t>(take);
    }
    if (begin_ == end_) {
      bool timed_out = false;
      // The head's bytes as sent count, not as rewritten (long header values became markers).
      ssize_t n = Receive(buffer_.data(), buffer_.size(), request_bytes_ + head_shrunk_by_,
                          &timed_out);
      if (n <= 0) return timed_out ? -1 : n;
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    size_t take = std::min(size, end_ - begin_);
    std::memcpy(ptr, buffer_.data() + begin_, take);
    begin_ += take;
    request_bytes_ += take;
    return static_cast<ssize_t>(take);
  }

  // Sends without waiting first; waits (up to the write timeout) only when the socket buffer is
  // full: the usual answer then costs one send() instead of a poll() and a send(). Writes all of
  // `size` (as the blocking send did): some cpp-httplib writes (100 Continue) ignore a short count.
  ssize_t write(const char* ptr, size_t size) override {
    if (discard_writes_) return static_cast<ssize_t>(size);  // a deferred response's stand-in
    if (!overflow_.empty()) {  // keep the order behind what is already waiting
      overflow_.append(ptr, size);
      return static_cast<ssize_t>(size);
    }
    // The write timeout bounds a stall, not the whole answer (cpp-httplib's own streams time out
    // per send): each send that makes progress gives the client another timeout to take more, so
    // a 4 MiB events page reaches a client on a slow link. A floor rate bounds the whole, so
    // that a client taking a few bytes per timeout cannot hold a worker for ever.
    const auto timeout = std::chrono::milliseconds(write_timeout_ms_);
    const auto give_up = Clock::now() + timeout +
                         std::chrono::milliseconds(size * 1000 / kWriteFloorBytesPerSecond);
    auto deadline = std::min(Clock::now() + timeout, give_up);
    size_t sent = 0;
    while (sent < size) {
      ssize_t n = ::send(sock_, ptr + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        sent += static_cast<size_t>(n);
        if (n > 0) deadline = std::min(Clock::now() + timeout, give_up);
        continue;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      if (nonblocking_) {  // the event loop never waits: a worker writes the rest (TakeOverflow)
        overflow_.append(ptr + sent, size - sent);
        break;
      }
      if (!PollFor(sock_, POLLOUT, MillisecondsUntil(deadline))) return -1;
    }
    return static_cast<ssize_t>(size);
  }

  // cpp-httplib asks for both addresses on every request; they are the connection's, so the
  // system calls are made once per connection.
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    CachedAddress(::getpeername, &remote_, &ip, &port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    CachedAddress(::getsockname, &local_, &ip, &port);
  }
  socket_t socket() const override { return sock_; }

  // Drops the consumed bytes; gives back the memory of a long head (up to
  // limits::kLagoWebhookHeadBytesMax) instead of keeping it with an idle connection.
  void ReleasePending() {
    if (pending_.capacity() > kReadBufferBytes) {
      std::string().swap(pending_);
    } else {
      pending_.clear();
    }
    pending_begin_ = 0;
  }

  // Called when a request has been answered and the connection waits for the next one.
  void ReleaseIdleMemory() {
    if (pending_begin_ >= pending_.size()) ReleasePending();
    long_headers_.clear();
  }

  void BeginRequest() {
    request_bytes_ = 0;
    chunked_.Reset();
    request_started_ = Clock::now();
    head_too_large_ = false;
    head_too_large_detail_ = {};
    head_shrunk_by_ = 0;
    cap_hit_ = false;
    head_pending_ = true;
    long_headers_.clear();
    malformed_header_ = false;
    unsupported_version_ = false;
    bad_absolute_target_ = false;
    absolute_authority_.clear();
  }
  bool cap_hit() const { return cap_hit_; }
  // The server is stopping (CoreServer::StopLoop): no read waits past `deadline`, whatever the
  // request's own deadlines (bytes already there are still read), so that the requests handed
  // over at the stop share one read timeout instead of taking one each. Any thread.
  void SetStopDeadline(Clock::time_point deadline) { stop_deadline_.store(deadline); }
  Clock::time_point stop_deadline() const { return stop_deadline_.load(); }
  bool head_too_large() const { return head_too_large_; }
  // Why (the 431's detail), when head_too_large().
  std::string_view head_too_large_detail() const { return head_too_large_detail_; }
  // From now on, the bytes read are a chunked body: check their framing (ChunkedFraming).
  void WatchChunkedBody() { chunked_.Watch(); }
  bool chunked_body_malformed() const { return chunked_.malformed(); }
  // The head had a header line that RFC 9112 says to refuse with 400 (TakeHead): whitespace
  // between the field name and the colon (§5.1), or a line folded onto the previous one (§5.2).
  // cpp-httplib would drop such a line silently, and a proxy in front that honoured it (a
  // `Content-Length : 5`) would frame the request differently from us.
  bool malformed_header() const { return malformed_header_; }
  // The request line (LibraryRequestLine) named an HTTP major version other than 1 (505).
  bool unsupported_version() const { return unsupported_version_; }
  // The request target was in absolute-form (RFC 9112 §3.2.2): its authority, which replaces
  // Host; bad_absolute_target() when that authority is no host[:port] (400).
  std::string_view absolute_authority() const { return absolute_authority_; }
  bool bad_absolute_target() const { return bad_absolute_target_; }
  // While set, what cpp-httplib writes is dropped (DeferResponse: the real answer comes later).
  void DiscardWrites(bool discard) { discard_writes_ = discard; }
  bool HasBufferedInput() const { return pending_begin_ < pending_.size() || begin_ < end_; }

  // For the event loop, which must never wait: reads fail instead of polling, and what a full
  // socket buffer does not take is kept (TakeOverflow) instead of waited for.
  void SetNonBlocking(bool nonblocking) { nonblocking_ = nonblocking; }
  bool HasOverflow() const { return !overflow_.empty(); }
  std::string TakeOverflow() { return std::exchange(overflow_, {}); }

  // The bytes read but not yet consumed, when they are one contiguous run (what the event loop
  // inspects for a complete request); empty otherwise.
  std::string_view Unread() const {
    if (pending_begin_ < pending_.size()) {
      if (begin_ < end_) return {};
      return std::string_view(pending_).substr(pending_begin_);
    }
    return std::string_view(buffer_.data() + begin_, end_ - begin_);
  }

  // Takes the first `n` bytes of Unread() (n <= its size) as one request read by the server
  // itself (HttpServer's own parser for loop routes); the next request starts after them.
  void Consume(size_t n) {
    if (pending_begin_ < pending_.size()) {
      pending_begin_ += n;
    } else {
      begin_ += n;
    }
    request_bytes_ += n;
    head_pending_ = false;
  }

  // One recv() without waiting into the empty buffer: > 0 bytes read, 0 end of stream, -1 with
  // errno (EAGAIN: nothing there yet).
  ssize_t ReceiveNow() {
    ssize_t n;
    do {
      n = ::recv(sock_, buffer_.data(), buffer_.size(), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
      ReleasePending();
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    return n;
  }

  // For the event loop holding a request still arriving: appends what the socket has (without
  // waiting) to the unread bytes, keeping them one contiguous run (Unread()). > 0 bytes read, 0
  // end of stream, -1 with errno (EAGAIN: nothing there yet).
  ssize_t AppendNow() {
    // Requests already taken leave the pending run: what stays is the one arriving (under
    // kLoopHoldBytesMax), whatever was pipelined before it.
    pending_.erase(0, pending_begin_);
    pending_begin_ = 0;
    if (begin_ < end_) {  // the buffered run goes behind the pending one
      pending_.append(buffer_.data() + begin_, end_ - begin_);
    }
    begin_ = end_ = 0;
    ssize_t n;
    do {
      n = ::recv(sock_, buffer_.data(), buffer_.size(), MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
      if (pending_.empty()) {
        end_ = static_cast<size_t>(n);
      } else {
        pending_.append(buffer_.data(), static_cast<size_t>(n));
      }
    }
    return n;
  }

  // Header lines too long for cpp-httplib, taken out of this request's head (see TakeHead):
  // marker value -> the real value.
  const std::map<std::string, std::string, std::less<>>& long_headers() const {
    return long_headers_;
  }

 private:
  // Reads the request head itself first (up to the server's head allowance) and hands
  // cpp-httplib its rewrite (RewriteRequestHead: over-long header lines' values as markers, the
  // request line one it parses), then what followed the head. False when the socket failed.
  bool TakeHead() {
    std::string head = pending_.substr(pending_begin_);
    ReleasePending();
    size_t end = std::string::npos;
    size_t searched = 0;  // the head before this offset has not ended (a long head: many reads)
    size_t allowance = kHeaderBytesAllowance;
    for (;;) {
      head.append(buffer_.data() + begin_, end_ - begin_);
      begin_ = end_ = 0;
      // The blank line after the last header line, also after one ending in a bare LF (cpp-httplib
      // ends the head there too, and RewriteRequestHead's line checks refuse the bare LF), and a
      // bare-LF blank line (refused there).
      end = HeadEnd(head, searched);
      searched = head.size() > 3 ? head.size() - 3 : 0;
      allowance = HeadBytesAllowance(head);
      if (end != std::string::npos || head.size() > allowance) break;
      bool timed_out = false;
      ssize_t n = Receive(buffer_.data(), buffer_.size(), head.size(), &timed_out);
      if (timed_out) break;  // cpp-httplib reports the timeout
      if (n < 0) return false;
      if (n == 0) break;
      end_ = static_cast<size_t>(n);
    }
    RewrittenHead rewritten = RewriteRequestHead(std::move(head), end, allowance);
    pending_ = std::move(rewritten.bytes);
    malformed_header_ = rewritten.malformed_header;
    unsupported_version_ = rewritten.unsupported_version;
    bad_absolute_target_ = rewritten.bad_absolute_target;
    absolute_authority_ = std::move(rewritten.absolute_authority);
    head_too_large_ = rewritten.head_too_large;
    head_too_large_detail_ = rewritten.head_too_large_detail;
    head_shrunk_by_ = rewritten.shrunk_by;
    long_headers_ = std::move(rewritten.long_headers);
    return true;
  }
  // When the request must have sent more than `bytes` (kRequestBytesPerReadTimeout).
  Clock::time_point RequestDeadline(size_t bytes) const {
    return request_started_ +
           std::chrono::milliseconds(read_timeout_ms_) *
               static_cast<int64_t>(1 + bytes / kRequestBytesPerReadTimeout);
  }

  // Reads what is there; waits (up to the read timeout, and no later than the request's
  // RequestDeadline for the `request_bytes` it has sent, nor the stop's) only when nothing is: after the
  // connection loop saw the socket readable, one recv() instead of a poll() and a recv().
  // *timed_out: -1 because the wait ran out.
  ssize_t Receive(char* ptr, size_t size, size_t request_bytes, bool* timed_out) {
    *timed_out = false;
    const auto deadline = std::min({RequestDeadline(request_bytes),
                                    Clock::now() + std::chrono::milliseconds(read_timeout_ms_),
                                    stop_deadline()});
    for (;;) {
      ssize_t n = ::recv(sock_, ptr, size, MSG_DONTWAIT);
      if (n >= 0) return n;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      if (nonblocking_) return -1;
      if (!PollFor(sock_, POLLIN, MillisecondsUntil(deadline))) {
        *timed_out = true;
        return -1;
      }
    }
  }

  struct Address {
    bool known = false;
    std::string ip;
    int port = 0;
  };
  // getpeername or getsockname, once.
  void CachedAddress(int (*call)(int, sockaddr*, socklen_t*), Address* cache, std::string* ip,
                     int* port) const {
    if (!cache->known) {
      sockaddr_storage addr{};
      socklen_t len = sizeof(addr);
      if (call(sock_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
        SockaddrToIpPort(addr, &cache->ip, &cache->port);
      }
      cache->known = true;
    }
    *ip = cache->ip;
    *port = cache->port;
  }

  const int sock_;
  const int64_t read_timeout_ms_;
  const int64_t write_timeout_ms_;
  const size_t request_bytes_max_;
  size_t request_bytes_ = 0;
  bool cap_hit_ = false;
  ChunkedFraming chunked_;
  bool discard_writes_ = false;
  bool nonblocking_ = false;
  bool malformed_header_ = false;
  bool unsupported_version_ = false;  // LibraryRequestLine
  bool bad_absolute_target_ = false;
  std::string absolute_authority_;
  std::string overflow_;  // written in non-blocking mode, not yet taken by the socket
  std::array<char, kReadBufferBytes> buffer_;
  size_t begin_ = 0;
  size_t end_ = 0;
  // Bytes read ahead by TakeHead (the rewritten head, then whatever followed it), served first.
  std::string pending_;
  size_t pending_begin_ = 0;
  bool head_pending_ = false;
  Clock::time_point request_started_ = Clock::now();  // BeginRequest
  std::atomic<Clock::time_point> stop_deadline_{Clock::time_point::max()};  // SetStopDeadline
  // TakeHead: the head is over its allowance, or has too many long lines; the 431's detail.
  bool head_too_large_ = false;
  std::string_view head_too_large_detail_;
  size_t head_shrunk_by_ = 0;    // TakeHead: bytes the long-header markers took out of the head
  std::map<std::string, std::string, std::less<>> long_headers_;
  mutable Address remote_, local_;
};

// A response finished on another thread (DeferResponse) and written from there.
struct DeferredResponse {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;    // guarded by mu
  Clock::time_point done_at;  // guarded by mu: when it was done (the keep-alive counts from it)
  bool failed = false;  // guarded by mu: the connection broke while it was written
  std::string unsent;   // guarded by mu: what a full socket buffer did not take
  bool loop_waiting = false;  // guarded by mu: the event loop waits for it to be done

  // Under mu: written as far as the socket took it, and a worker still has to finish it (write
  // the rest, or close the broken connection).
  bool LeftForAWorker() const { return done && (!unsent.empty() || failed); }
};

// What a handler on this thread may ask of the connection it serves.
struct ConnectionState {
  ConnectionStream* stream = nullptr;
  bool close_requested = false;
  // The request reached PreRoute/ExpectContinue. An answer to one that did not is cpp-httplib's
  // own (a request line or head it could not parse): the rest of that request is still unread.
  bool routed = false;
  bool closing = false;  // the loop closes the connection after this request
  int64_t keep_alive_timeout_s = 0;
  size_t keep_alive_max_count = 0;
  // The request being served: its route's metrics (set by Serve) and, once deferred, its answer.
  RequestMetrics::Series* series = nullptr;
  Clock::time_point started;
  std::shared_ptr<DeferredResponse> deferred;
  // Called by a deferred answer, once done, that the socket did not take whole or that the event
  // loop waits for (LoopMailbox::Post).
  std::function<void()> notify_unsent;
};
thread_local ConnectionState* t_connection = nullptr;

// What cpp-httplib 0.11.4 adds to every answer it writes (its error handler, then
// write_response_core): a problem for an error status without a body, and a content type for a
// body without one.
void ApplyResponseDefaults(httplib::Response* res) {
  if (res->status >= 400 && res->body.empty() && res->content_length_ == 0 &&
      !res->is_chunked_content_provider_) {
    WriteProblem(res->status, DefaultProblemCode(res->status), ReasonPhrase(res->status), res);
  }
  if (!res->body.empty() && !res->has_header("Content-Type")) {
    res->set_header("Content-Type", "text/plain");
  }
}

// The response as cpp-httplib 0.11.4 writes it (write_response_core): status line, the handler's
// headers, Content-Length, and either `Connection: close` or the Keep-Alive parameters.
std::string SerializeResponse(const httplib::Response& res, bool close, int64_t keep_alive_timeout_s,
                              size_t keep_alive_max_count) {
  std::string out;
  out.reserve(256 + res.body.size());
  out.append("HTTP/1.1 ").append(std::to_string(res.status)).append(" ");
  out.append(ReasonPhrase(res.status)).append("\r\n");
  bool has_length = false;
  for (const auto& [name, value] : res.headers) {
    if (EqualsIgnoreCase(name, "Connection") || EqualsIgnoreCase(name, "Keep-Alive")) continue;
    if (EqualsIgnoreCase(name, "Content-Length")) has_length = true;
    out.append(name).append(": ").append(value).append("\r\n");
  }
  if (close) {
    out.append("Connection: close\r\n");
  } else {
    out.append("Keep-Alive: timeout=").append(std::to_string(keep_alive_timeout_s));
    out.append(", max=").append(std::to_string(keep_alive_max_count)).append("\r\n");
  }
  if (!has_length) out.append("Content-Length: ").append(std::to_string(res.body.size())).append("\r\n");
  out.append("\r\n").append(res.body);
  return out;
}

// Waits for the deferred answer of the previous request, if any, and writes what the socket did
// not take then. False when the connection broke.
bool FinishDeferred(ConnectionState* state) {
  if (state->deferred == nullptr) return true;
  std::string unsent;
  bool failed = false;
  {
    std::unique_lock<std::mutex> lock(state->deferred->mu);
    state->deferred->cv.wait(lock, [&] { return state->deferred->done; });
    unsent = std::move(state->deferred->unsent);
    failed = state->deferred->failed;
  }
  state->deferred = nullptr;
  size_t written = 0;
  while (!failed && written < unsent.size()) {
    ssize_t n = state->stream->write(unsent.data() + written, unsent.size() - written);
    if (n <= 0) failed = true;
    written += n > 0 ? static_cast<size_t>(n) : 0;
  }
  return !failed;
}

// Whether a Connection header value lists the "close" option (case-insensitive tokens).
bool AsksToClose(std::string_view connection) {
  while (!connection.empty()) {
    const size_t comma = connection.find(',');
    if (EqualsIgnoreCase(TrimBlanks(connection.substr(0, comma)), "close")) return true;
    if (comma == std::string_view::npos) break;
    connection.remove_prefix(comma + 1);
  }
  return false;
}

// Asks the connection loop to close the connection after this response. Used whenever the server
// answers without reading an announced body: the unread bytes must never be parsed as a request.
void CloseAfterResponse(const httplib::Request& req) {
  if (t_connection != nullptr) t_connection->close_requested = true;
  // The Request object is the connection loop's own non-const local; cpp-httplib writes
  // `Connection: close` (and no Keep-Alive) when the request carries it.
  auto& mutable_req = const_cast<httplib::Request&>(req);
  mutable_req.headers.erase("Connection");
  mutable_req.set_header("Connection", "close");
}

bool StreamCapHit() { return t_connection != nullptr && t_connection->stream->cap_hit(); }

// Puts the values of over-long header lines (ConnectionStream::TakeHead) back into the request.
// Idempotent; runs before anything reads the headers.
void RestoreLongHeaders(const httplib::Request& req) {
  if (t_connection == nullptr || t_connection->stream->long_headers().empty()) return;
  auto& mutable_req = const_cast<httplib::Request&>(req);  // the connection loop's own local
  for (auto& [name, value] : mutable_req.headers) {
    auto it = t_connection->stream->long_headers().find(value);
    if (it != t_connection->stream->long_headers().end()) value = it->second;
  }
}

// A value that stands for another in what cpp-httplib reads (RewriteRequestHead): "ledger-", 16
// random hex digits drawn once per process, then `what`. With fixed texts a client's own value
// (`X-Long: ledger-long-header-0`, or percent-encoded: cpp-httplib decodes values) was taken for
// one, and RestoreLongHeaders put another line's value under its name, which a proxy in front
// had read as the marker's text.
std::string Marker(std::string_view what) {
  static const std::string prefix = [] {
    std::random_device random;
    char text[32];
    std::snprintf(text, sizeof(text), "ledger-%08x%08x-", random(), random());
    return std::string(text);
  }();
  return prefix + std::string(what);
}

// The request line as cpp-httplib 0.11.4 gets it. It parses `METHOD SP target SP version` but
// answers a bare 400 to a method it does not know and to any version but HTTP/1.0 and
// HTTP/1.1, and routes an absolute-form target by its whole text (404). So, in a request line
// of that shape: an unknown method (a token) becomes TRACE, which PreRoute answers 501 as any
// method it does not implement (RFC 9110 §9.1); `HTTP/<d>.<d>` of another major version becomes
// HTTP/1.1 with unsupported_version() (505, RFC 9110 §15.6.6), and one of HTTP/1 above 1.1
// becomes HTTP/1.1 (served as the highest minor version known, §2.5: it was a bare 400); an
// `http://` or `https://` target becomes its path and query, its authority kept
// (RewrittenHead::absolute_authority). Anything else is left to cpp-httplib.
std::string LibraryRequestLine(std::string_view line, RewrittenHead* rewritten) {
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) {
    return std::string(line);
  }
  std::string_view method = line.substr(0, sp1);
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view version = line.substr(sp2 + 1);
  if (IsToken(method) && !IsLibraryMethod(method)) method = "TRACE";
  const auto digit = [](char ch) { return ch >= '0' && ch <= '9'; };
  if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && digit(version[5]) &&
      version[6] == '.' && digit(version[7]) && (version[5] != '1' || version[7] > '1')) {
    if (version[5] != '1') rewritten->unsupported_version = true;
    version = "HTTP/1.1";
  }
  std::string origin_form;
  for (std::string_view scheme : {std::string_view("http://"), std::string_view("https://")}) {
    if (!StartsWithIgnoreCase(target, scheme)) continue;
    const std::string_view rest = target.substr(scheme.size());
    const size_t path_at = rest.find_first_of("/?");
    const std::string_view authority = rest.substr(0, path_at);
    if (authority.empty() || !IsHostValue(authority)) {
      rewritten->bad_absolute_target = true;  // 400 (PreRoute); "/" keeps cpp-httplib parsing
      origin_form = "/";
    } else {
      rewritten->absolute_authority.assign(authority);
      origin_form = path_at == std::string_view::npos || rest[path_at] == '?' ? "/" : "";
      if (path_at != std::string_view::npos) origin_form.append(rest.substr(path_at));
    }
    target = origin_form;
    break;
  }
  std::string out;
  out.reserve(line.size());
  out.append(method).append(" ").append(target).append(" ").append(version);
  return out;
}

}  // namespace

size_t HeadEnd(std::string_view text, size_t from) {
  for (size_t lf = text.find('\n', from); lf != std::string_view::npos; lf = text.find('\n', lf + 1)) {
    if (lf + 1 < text.size() && text[lf + 1] == '\n') return lf;
    if (lf + 2 < text.size() && text[lf + 1] == '\r' && text[lf + 2] == '\n') return lf;
  }
  return std::string_view::npos;
}

size_t HeadBytesAllowance(std::string_view head) {
  return head.substr(0, kLongHeadRequestLine.size()) == kLongHeadRequestLine
             ? limits::kLagoWebhookHeadBytesMax
             : kHeaderBytesAllowance;
}

RewrittenHead RewriteRequestHead(std::string head, size_t end, size_t allowance) {
  RewrittenHead rewritten;
  // Stands for an empty Idempotency-Key value.
  static const std::string blank_marker = Marker("blank-value");
  if (end == std::string::npos || end > allowance) {
    // Incomplete: cpp-httplib answers it as it is (400, 414, timeout). Over the allowance: it
    // gets the request line alone, ending the head, and the request is refused at routing
    // (head_too_large(), 431; the connection is closed after it). Handed the head as it was,
    // cpp-httplib answered one long line (`GET /livez` with a 66,000-byte header) 400 "Bad
    // Request" at its 8 KiB line limit, where many short lines adding up got the 431.
    rewritten.head_too_large = end != std::string::npos || head.size() > allowance;
    if (rewritten.head_too_large) rewritten.head_too_large_detail = kHeadTooLarge;
    const size_t request_line_end = head.find('\n');
    if (rewritten.head_too_large && request_line_end < kHeaderLineBytesMax) {
      head.resize(request_line_end + 1);
      head.append("\r\n");
    }
    rewritten.bytes = std::move(head);
    return rewritten;
  }
  if (head[end + 1] == '\n') {
    // The blank line is a bare LF: cpp-httplib would skip it and wait for a CRLF one (the
    // client got no answer). Refused (400, PreRoute) from the request line alone.
    rewritten.malformed_header = true;
    head.resize(head.find('\n') + 1);
    head.append("\r\n");
    rewritten.bytes = std::move(head);
    return rewritten;
  }
  std::string out;
  out.reserve(head.size());
  size_t line_start = 0;
  const size_t head_end = end + 1;  // through the (CR)LF of the last header line
  while (line_start < head_end) {
    size_t line_end = head.find("\r\n", line_start);
    std::string_view line(head.data() + line_start, line_end - line_start);
    size_t colon = line.find(':');
    if (line_start > 0 && !line.empty() &&
        (line.front() == ' ' || line.front() == '\t' ||
         (colon != std::string_view::npos && colon > 0 &&
          (line[colon - 1] == ' ' || line[colon - 1] == '\t')))) {
      rewritten.malformed_header = true;
    }
    // cpp-httplib skips a line ending in a bare LF and percent-decodes values: a proxy that
    // reads `Content-Length: 5\n` or `chunke%64` otherwise would frame the request differently,
    // and the dedupe keys `a%2Fb` and `a/b` would be one key.
    // RFC 9110 §5.5: no NUL in a field value (nor anywhere else in the head).
    if (line.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos ||
        (colon != std::string_view::npos && line.find('%') != std::string_view::npos &&
         (EqualsIgnoreCase(line.substr(0, colon), "Content-Length") ||
          EqualsIgnoreCase(line.substr(0, colon), "Transfer-Encoding") ||
          EqualsIgnoreCase(line.substr(0, colon), "Idempotency-Key") ||
          EqualsIgnoreCase(line.substr(0, colon), "X-Lago-Unique-Key")))) {
      rewritten.malformed_header = true;
    }
    if (line_start == 0) {
      out.append(LibraryRequestLine(line, &rewritten));
    } else if (colon != std::string_view::npos &&
               TrimBlanks(line.substr(colon + 1)).empty() &&
               EqualsIgnoreCase(line.substr(0, colon), "Idempotency-Key")) {
      // cpp-httplib drops a header line with an empty value: `Idempotency-Key:` would count as
      // no key and each retry would append again. Its value comes back empty (refused: 400
      // invalid_idempotency_key) like a long header's.
      out.append(line.substr(0, colon + 1)).append(" ").append(blank_marker);
      rewritten.long_headers.emplace(blank_marker, std::string());
    } else if (line.size() > kHeaderLineBytesMax && colon != std::string_view::npos &&
               rewritten.long_headers.size() <
                   kLongHeadersMax + rewritten.long_headers.count(blank_marker)) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) {
        value.remove_prefix(1);
      }
      std::string marker = Marker("long-header-" + std::to_string(rewritten.long_headers.size()));
      out.append(line.substr(0, colon + 1)).append(" ").append(marker);
      if (colon + 2 + marker.size() + 2 > kLibraryHeaderLineBytesMax) {
        // The name alone keeps the line over cpp-httplib's limit (its 400 for the head): 431
        // from the request line, as for a ninth long line over that limit.
        rewritten.head_too_large = true;
        rewritten.head_too_large_detail = kHeaderNameTooLong;
      }
      rewritten.long_headers.emplace(std::move(marker), std::string(value));
    } else if (line_start > 0 && line.size() + 2 > kLibraryHeaderLineBytesMax) {
      // cpp-httplib would refuse the line: 431 from the request line
      rewritten.head_too_large = true;
      rewritten.head_too_large_detail = kTooManyLongHeaders;
      out.append(line);
    } else if (colon != std::string_view::npos &&
               EqualsIgnoreCase(line.substr(0, colon), "Expect") &&
               EqualsIgnoreCase(TrimBlanks(line.substr(colon + 1)), "100-continue")) {
      // RFC 9110 §10.1.1: the expectation is case-insensitive, but cpp-httplib asks
      // ExpectContinue (and sends the 100) only for "100-continue" byte for byte: a client
      // sending `100-Continue` waited for it until the read timeout. Lowercased in place.
      const std::string_view value = TrimBlanks(line.substr(colon + 1));
      const size_t value_at = static_cast<size_t>(value.data() - line.data());
      out.append(line.substr(0, value_at))
          .append("100-continue")
          .append(line.substr(value_at + value.size()));
    } else {
      out.append(line);
    }
    out.append("\r\n");
    line_start = line_end + 2;
  }
  out.append(head, head_end, std::string::npos);  // the blank line, then body bytes
  // (A last line ending in a bare LF gained a CRLF: the request is refused as malformed.)
  if (rewritten.head_too_large) {
    out.resize(out.find('\n') + 1);
    out.append("\r\n");
  }
  rewritten.shrunk_by = head.size() > out.size() ? head.size() - out.size() : 0;
  rewritten.bytes = std::move(out);
  return rewritten;
}

bool ParseLoopRequest(std::string_view unread, const std::vector<LoopRoute>& routes,
                      size_t body_bytes_max, size_t request_bytes_max, LoopRequest* out) {
  // The head ends where TakeHead ends it, with CRLF CRLF (anything else a worker refuses).
  const size_t blank = HeadEnd(unread, 0);
  if (blank == std::string_view::npos || blank == 0 || unread[blank - 1] != '\r' ||
      unread[blank + 1] != '\r') {
    return false;
  }
  const size_t head_end = blank - 1;
  if (head_end > kHeaderBytesAllowance) return false;
  const std::string_view head = unread.substr(0, head_end + 2);
  size_t line_end = head.find("\r\n");
  const std::string_view request_line = head.substr(0, line_end);
  const size_t sp1 = request_line.find(' ');
  const size_t sp2 = request_line.rfind(' ');
  if (sp1 == std::string_view::npos || sp2 <= sp1) return false;
  const std::string_view method = request_line.substr(0, sp1);
  const std::string_view target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view path = target.substr(0, target.find('?'));
  out->route = nullptr;
  for (const LoopRoute& r : routes) {
    if (r.method == method && r.path == path) out->route = &r;
  }
  if (out->route == nullptr) return false;
  out->version = request_line.substr(sp2 + 1);
  bool plain = target == path && path.find('%') == std::string_view::npos &&
               (out->version == "HTTP/1.1" || out->version == "HTTP/1.0");
  for (size_t i = 0; plain && i < head.size(); ++i) {
    const char ch = head[i];
    plain = ch != '\0' && (ch != '\r' || (i + 1 < head.size() && head[i + 1] == '\n')) &&
            (ch != '\n' || (i > 0 && head[i - 1] == '\r'));
  }
  out->header_count = 0;
  uint64_t content_length = 0;
  int length_headers = 0;
  int hosts = 0;  // RFC 9112 §3.2: PreRoute answers a request without exactly one 400
  for (size_t pos = line_end + 2; pos < head.size(); pos = line_end + 2) {
    line_end = head.find("\r\n", pos);
    const std::string_view line = head.substr(pos, line_end - pos);
    if (line.size() > kHeaderLineBytesMax) return false;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) return false;
    const std::string_view name = line.substr(0, colon);
    if (EqualsIgnoreCase(name, "Transfer-Encoding") || EqualsIgnoreCase(name, "Expect")) {
      return false;
    }
    if (EqualsIgnoreCase(name, "Content-Length")) {
      if (++length_headers > 1 ||
          !ParseContentLength(TrimBlanks(line.substr(colon + 1)), &content_length)) {
        return false;
      }
    }
    if (!plain) continue;
    const std::string_view value = TrimBlanks(line.substr(colon + 1));
    const bool bad_host = EqualsIgnoreCase(name, "Host") && (++hosts > 1 || !IsHostValue(value));
    plain = !bad_host && !name.empty() && name.front() != ' ' && name.front() != '\t' &&
            name.back() != ' ' && name.back() != '\t' && !value.empty() &&
            value.find('%') == std::string_view::npos && !EqualsIgnoreCase(name, "Range") &&
            !EqualsIgnoreCase(name, "Content-Encoding") &&
            !(EqualsIgnoreCase(name, "Content-Type") && value.size() >= 10 &&
              EqualsIgnoreCase(value.substr(0, 10), "multipart/")) &&
            out->header_count < LoopRequest::kHeadersMax;
    if (plain) out->headers[out->header_count++] = {name, value};
  }
  if (content_length > body_bytes_max || unread.size() - (head_end + 4) < content_length) {
    return false;
  }
  out->body = unread.substr(head_end + 4, content_length);
  out->size = head_end + 4 + content_length;
  out->plain = plain && (hosts == 1 || (hosts == 0 && out->version == "HTTP/1.0")) &&
               out->size <= request_bytes_max;
  return true;
}

Responder DeferResponse(const httplib::Request& req) {
  ConnectionState* c = t_connection;
  if (c == nullptr || c->deferred != nullptr || c->series == nullptr) return nullptr;
  auto deferred = std::make_shared<DeferredResponse>();
  c->deferred = deferred;
  c->stream->DiscardWrites(true);
  // cpp-httplib 0.11.4's rule for closing after this response (process_request), comparisons
  // as exact as its own: the answer must say what the connection then does.
  std::string_view connection;
  HeaderValue(req, kConnectionHeader, &connection);
  const bool close = c->closing || c->close_requested || AsksToClose(connection) ||
                     (req.version == "HTTP/1.0" && connection != "Keep-Alive");
  auto write_answer = [deferred, sock = c->stream->socket(), notify = c->notify_unsent, close,
               timeout = c->keep_alive_timeout_s,
               max = c->keep_alive_max_count, series = c->series,
               started = c->started](httplib::Response&& res) {
    if (res.status == -1) res.status = 200;  // as cpp-httplib answers a handled request
    ApplyResponseDefaults(&res);
    const std::string out = SerializeResponse(res, close, timeout, max);
    series->Record(res.status, SecondsSince(started));
    // Without blocking: a client that does not read must not stall the calling thread (the
    // ledger's sync thread); the connection's own thread writes the rest.
    size_t sent = 0;
    bool failed = false;
    while (sent < out.size()) {
      ssize_t n = ::send(sock, out.data() + sent, out.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        failed = !(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        break;
      }
    }
    bool tell_loop = false;
    {
      std::lock_guard<std::mutex> lock(deferred->mu);
      if (!failed) deferred->unsent.assign(out, sent, std::string::npos);
      tell_loop = !deferred->unsent.empty() || deferred->loop_waiting;
      deferred->failed = failed;
      deferred->done = true;
      deferred->done_at = Clock::now();
      deferred->cv.notify_all();
    }
    // After `done`: from then on the connection may be closed, so only through the loop, which
    // finds the connection by its id if it still exists.
    if (tell_loop && notify) notify();
  };
  // A handler that took a Responder and then threw, or dropped it, must not leave the connection
  // waiting forever (and Stop() with it): the last copy of an unused Responder answers 500.
  using WriteAnswer = decltype(write_answer);
  struct AnswerOnce {
    explicit AnswerOnce(WriteAnswer w) : write(std::move(w)) {}
    ~AnswerOnce() {
      if (answered.load()) return;
      httplib::Response res;
      WriteProblem(500, "internal", "internal error", &res);
      write(std::move(res));
    }
    WriteAnswer write;
    std::atomic<bool> answered{false};
  };
  auto once = std::make_shared<AnswerOnce>(std::move(write_answer));
  return [once](httplib::Response&& res) {
    if (once->answered.exchange(true)) return;  // called exactly once, as route.h says
    once->write(std::move(res));
  };
}

namespace {

// The worker pool: `threads` workers and the queue of the jobs the event loop hands them (at most
// one per open connection).
class WorkerPool final : public httplib::TaskQueue {
 public:
  WorkerPool(size_t threads, RequestMetrics* metrics) : metrics_(metrics) {
    metrics_->workers.store(static_cast<int64_t>(threads));
    for (size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
  }
  ~WorkerPool() override = default;

  // An accepted connection, from cpp-httplib's accept loop: handed to the event loop right here
  // (process_and_close_socket never waits), not queued behind the workers' jobs, where requests
  // holding every worker would keep each new connection unserved, even one for a loop route.
  void enqueue(std::function<void()> fn) override {
    metrics_->connections_accepted.Add();
    fn();
  }

  // A connection the event loop hands over. Never waits: the connection was accepted already.
  // False once the pool has shut down (the job is then not run).
  bool Dispatch(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (shutdown_) return false;
      jobs_.push_back(std::move(fn));
      metrics_->connections_queued.fetch_add(1);
    }
    not_empty_.notify_one();
    return true;
  }

  // Runs first in shutdown(): the event loop stops handing over connections before the pool goes.
  void SetBeforeShutdown(std::function<void()> fn) { before_shutdown_ = std::move(fn); }

  // Runs every queued job, then joins the workers.
  void shutdown() override {
    if (before_shutdown_) before_shutdown_();
    {
      std::lock_guard<std::mutex> lock(mu_);
      shutdown_ = true;
    }
    not_empty_.notify_all();
    for (auto& t : threads_) t.join();
    metrics_->workers.store(0);
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        not_empty_.wait(lock, [this] { return !jobs_.empty() || shutdown_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        metrics_->connections_queued.fetch_sub(1);
      }
      metrics_->workers_busy.fetch_add(1);
      job();
      metrics_->workers_busy.fetch_sub(1);
    }
  }

  RequestMetrics* const metrics_;
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::deque<std::function<void()>> jobs_;  // GUARDED_BY(mu_)
  bool shutdown_ = false;                   // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
  std::function<void()> before_shutdown_;
};

// Where a deferred answer that the socket did not take whole reports its connection to the
// event loop. Shared with the answers still in flight, so that a late one never touches a
// stopped loop.
struct LoopMailbox {
  std::mutex mu;
  std::vector<uint64_t> woken;  // guarded by mu: connection ids
  int event_fd = -1;            // guarded by mu; -1 once the loop has stopped

  void Post(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu);
    if (event_fd < 0) return;
    woken.push_back(id);
    const uint64_t one = 1;
    if (::write(event_fd, &one, sizeof(one)) < 0) { /* a wake-up is pending already */ }
  }
};

// An accepted connection: parked in the event loop between requests, or owned by the one thread
// (the loop's or a worker) serving it.
struct Connection {
  Connection(int fd, uint64_t connection_id, const HttpServerOptions& options,
             size_t request_bytes_max)
      : sock(fd),
        id(connection_id),
        stream(fd, options.read_timeout_ms, options.write_timeout_ms, request_bytes_max),
        remaining(std::max<size_t>(options.keep_alive_max_count, 1)) {
    state.stream = &stream;
    state.keep_alive_timeout_s = std::max<int64_t>(options.keep_alive_timeout_ms / 1000, 1);
    state.keep_alive_max_count = remaining;
  }
  const int sock;
  const uint64_t id;
  ConnectionStream stream;
  ConnectionState state;
  size_t remaining;  // requests this connection may still make
  // Guarded by the loop's mutex.
  enum class Where {
    kOwned,      // being served by one thread (the loop's or a worker)
    kParked,     // armed in epoll, owned by nobody
    kAwaiting,   // the loop has its next request and waits for the answer to the previous one
    kLingering,  // answered and half-closed: the loop drains it until lingering_until, then closes
  };
  Where where = Where::kOwned;
  // Watched for EPOLLIN (level-triggered) by the epoll set. Parked connections are; a connection
  // the loop serves stays so (no epoll_ctl per request served on the loop); one a worker owns or
  // one awaiting an answer is not.
  bool armed = false;
  Clock::time_point parked_at;  // when it was last parked
  // A request still arriving that the loop holds (CoreServer::HoldArriving): when the loop first
  // saw it, and how many of its bytes have arrived. Set and cleared by its owner; read by the
  // loop's tick while parked.
  std::optional<Clock::time_point> arriving_since;
  size_t arriving_bytes = 0;
  // While arriving_since is set: how far its head was searched for its end without finding it,
  // and once its head was read, its whole size -- so that each read of a request trickling in
  // looks at the new bytes only, not at everything held again (a 64 KiB head sent a byte at a
  // time cost the loop a scan of all it held per byte).
  size_t head_scanned = 0;
  size_t arriving_whole = 0;
  // What the request arriving may take of the loop's budget for large holds (guarded by the
  // loop's mutex; 0 for a small one, which takes none).
  size_t held = 0;
  // Lingering (CoreServer::LingerOnLoop): closed at this time, or once the client has closed or
  // sent kLingerBytesMax (lingered_bytes) since. Set by its owner, then read by the loop.
  Clock::time_point lingering_until;
  size_t lingered_bytes = 0;
};

// How a served request leaves its connection.
enum class After { kKeepAlive, kClose, kLingeringClose };

// What a worker does with a connection the event loop hands it.
enum class WorkerJob {
  kServe,  // serve requests, reading with the blocking timeouts, then park it again
  kFlush,  // write what the socket did not take, then park it again
  kClose,  // close it (after its deferred answer, if any)
  kLingeringClose,  // the same, draining what the client still sends (a refused body)
  // The loop has stopped: after its deferred answer, serve a request whose head has arrived by
  // then (HeadArrived), or close it.
  kStopAfterAnswer,
};

// Requests served on the loop per wake-up of one connection before a worker takes the rest.
constexpr int kLoopRequestsPerTurn = 8;
// A request still arriving is held by the event loop (not a worker) while it is under this many
// bytes (ArrivingBound): usual heads and billing bodies; at most this much per open connection,
// besides the large holds (HttpServerOptions::loop_held_bytes_max in all): longer heads up to
// their limit, and body-first routes' requests.
constexpr size_t kLoopHoldBytesMax = 8 * 1024;
constexpr int kLoopEventsMax = 128;
constexpr int kLoopTickMs = 100;

// httplib::Server with our connection handling (process_and_close_socket is a private virtual of
// httplib::Server; overriding it is allowed and is the library's only hook for this).
//
// Connections wait between requests in one epoll set watched by the event loop thread instead of
// in a blocked thread each. When one becomes readable, the loop reads what is there; a complete
// request for a route that never blocks (Threading::kEventLoop: consume, /livez) is served right
// there, on the loop thread; one still arriving is held by the loop until it is whole (under
// kLoopHoldBytesMax, or a body-first route's up to its limits; closed when it arrives slower than
// a worker would wait for it); anything else — other routes, larger incomplete or chunked
// requests, `Expect`, long header lines, a socket that does not take the answer — goes to a worker of the pool with everything already read, and the worker parks the
// connection again afterwards (with a request still arriving, for the loop to hold). Under
// load one loop wake-up serves many connections: no thread is woken per request.
class CoreServer final : public httplib::Server {
 public:
  CoreServer(const HttpServerOptions& options, RequestMetrics* metrics)
      : options_(options), metrics_(metrics), open_connections_max_(options.open_connections_max) {
    request_bytes_max_ = options.request_bytes_max != 0
                             ? options.request_bytes_max
                             : 2 * options.body_bytes_max + limits::kLagoWebhookHeadBytesMax;
  }
  ~CoreServer() override { StopLoop(); }

  // cpp-httplib 0.11.4 listens with a backlog of 5; listen() again on the bound socket raises it.
  bool Relisten(int backlog) {
    socket_t sock = svr_sock_;
    return sock != INVALID_SOCKET && ::listen(sock, backlog) == 0;
  }

  // Closes the listening socket if stop() did not (the accept loop never reached its running
  // state, or Start() failed half-way); a blocked accept() then returns.
  void ShutdownListener() {
    socket_t sock = svr_sock_.exchange(INVALID_SOCKET);
    if (sock == INVALID_SOCKET) return;
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
  }

  // After an accept() failure ended the accept loop: cpp-httplib closed the listening socket
  // but kept its number, which ShutdownListener would close again at Stop() -- by then perhaps
  // a RocksDB file or a Kafka connection opened since under the same number.
  void ForgetClosedListener() { svr_sock_.exchange(INVALID_SOCKET); }

  void SetLoopRoutes(std::vector<LoopRoute> routes) { loop_routes_ = std::move(routes); }
  // The POST paths (literal) of routes that read the whole body before they can refuse anything
  // (public and signature policies: the webhooks). Nothing in the head can turn away a client
  // that sends one slowly, so the loop holds such a request until it is whole (ArrivingBound);
  // any other route's is read by a worker, which refuses an unauthorized one from its head.
  void SetBodyFirstPaths(std::vector<std::string> paths) { body_first_paths_ = std::move(paths); }
  void SetPool(WorkerPool* pool) { pool_.store(pool); }
  // The cap on open connections (HttpServer::Start lowers the configured one to what the
  // descriptor limit allows). Before StartLoop.
  void SetOpenConnectionsMax(size_t max) { open_connections_max_ = max; }

  // Starts the event loop thread. False when epoll or eventfd cannot be had.
  bool StartLoop() {
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    const int event_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || event_fd < 0) {
      if (event_fd >= 0) ::close(event_fd);
      return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = 0;  // connection ids start at 1
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd, &ev) != 0) {
      ::close(event_fd);
      return false;
    }
    mailbox_->event_fd = event_fd;
    loop_thread_ = std::thread([this] { RunLoop(); });
    return true;
  }

  // Stops the loop and closes every parked connection, but one whose request's head has arrived
  // (HeadArrived), or arrives by the time the deferred answer before it is out (a consume's
  // kept-alive connection holds its answer until its next request: WorkerJob::kStopAfterAnswer):
  // a worker reads the rest of it and answers it with `Connection: close` -- closed, a consume
  // whose body was still arriving was lost to a client that had sent it before the stop.
  // Connections being served are closed by their worker when it would park them. No read of any
  // connection waits past one read timeout after the stop (ConnectionStream::SetStopDeadline), nor
  // a lingering close past linger_ms after that: each handed over with a timeout of its own, a few
  // thousand heads whose bodies never came held the stop for minutes, queued behind the workers.
  // Idempotent.
  void StopLoop() {
    const auto stop_deadline = Clock::now() + std::chrono::milliseconds(options_.read_timeout_ms);
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      if (loop_stopping_) return;
      loop_stopping_ = true;
      for (auto& [id, c] : connections_) c->stream.SetStopDeadline(stop_deadline);
    }
    loop_stopped_.store(true);
    mailbox_->Post(0);  // wakes the loop (no connection has id 0)
    if (loop_thread_.joinable()) loop_thread_.join();
    std::vector<std::shared_ptr<Connection>> parked, lingering, arrived, answering;
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      for (auto& [id, c] : connections_) {
        if (c->where == Connection::Where::kOwned) continue;
        if (c->where == Connection::Where::kLingering) {
          lingering.push_back(c);
        } else if (HeadArrived(c.get())) {
          arrived.push_back(c);
        } else if (c->state.deferred != nullptr) {
          answering.push_back(c);
        } else {
          parked.push_back(c);
        }
        c->where = Connection::Where::kOwned;
      }
    }
    for (auto& c : parked) Close(c, false);
    for (auto& c : arrived) ToWorker(c, WorkerJob::kServe);
    for (auto& c : answering) ToWorker(c, WorkerJob::kStopAfterAnswer);
    // Their answers may still be in the kernel: a worker lingers (the rest of linger_ms) instead.
    for (auto& c : lingering) ToWorker(c, WorkerJob::kLingeringClose);
    {
      std::lock_guard<std::mutex> lock(mailbox_->mu);
      if (mailbox_->event_fd >= 0) ::close(mailbox_->event_fd);
      mailbox_->event_fd = -1;
    }
    std::lock_guard<std::mutex> lock(loop_mu_);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
    epoll_fd_ = -1;
  }

 private:
  // Runs on the accept thread for every accepted connection (WorkerPool::enqueue): hands it to
  // the event loop without waiting.
  bool process_and_close_socket(socket_t sock) override {
    int one = 1;
    ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::shared_ptr<Connection> c;
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      if (!loop_stopping_ && connections_.size() < open_connections_max_) {
        c = std::make_shared<Connection>(sock, ++last_connection_id_, options_, request_bytes_max_);
        epoll_event ev{};
        ev.events = EPOLLONESHOT;  // nothing until Park arms it (errors at most once)
        ev.data.u64 = c->id;
        if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, sock, &ev) == 0) {
          connections_.emplace(c->id, c);
        } else {
          c = nullptr;
        }
      }
    }
    if (c == nullptr) {
      ::shutdown(sock, SHUT_RDWR);
      ::close(sock);
      return false;
    }
    std::weak_ptr<LoopMailbox> mailbox = mailbox_;
    c->state.notify_unsent = [mailbox, id = c->id] {
      if (auto m = mailbox.lock()) m->Post(id);
    };
    Park(c, /*on_loop=*/false);
    return true;
  }

  // Arms the connection in epoll and gives up ownership; if the loop has stopped, closes it. On
  // a worker, an answer that left bytes unsent is written first (the loop's notice may have come
  // while the worker owned the connection).
  void Park(const std::shared_ptr<Connection>& c, bool on_loop) {
    c->stream.ReleaseIdleMemory();
    for (;;) {
      bool stopping = false;
      bool unsent = false;
      {
        std::lock_guard<std::mutex> lock(loop_mu_);
        stopping = loop_stopping_;
        if (!stopping) {
          if (c->state.deferred != nullptr) {
            std::lock_guard<std::mutex> dlock(c->state.deferred->mu);
            unsent = c->state.deferred->LeftForAWorker();
          }
          if (!unsent) {
            c->where = Connection::Where::kParked;
            c->parked_at = Clock::now();
            if (c->armed) return;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u64 = c->id;
            if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->sock, &ev) == 0) {
              c->armed = true;
              return;
            }
            c->where = Connection::Where::kOwned;
            stopping = true;  // cannot watch it: close it
          }
        }
      }
      if (stopping) {
        // As StopLoop does: a request whose head has arrived (or arrives by the time the answer
        // before it is out) is read and answered first.
        const WorkerJob job = HeadArrived(c.get())             ? WorkerJob::kServe
                              : c->state.deferred != nullptr ? WorkerJob::kStopAfterAnswer
                                                             : WorkerJob::kClose;
        if (on_loop) return ToWorker(c, job);
        if (job != WorkerJob::kClose) return RunWorkerJob(c, job);
        return Close(c, false);
      }
      if (on_loop) return ToWorker(c, WorkerJob::kFlush);
      if (!FinishDeferred(&c->state)) return Close(c, false);
    }
  }

  void RunLoop() {
    std::array<epoll_event, kLoopEventsMax> events;
    auto last_tick = Clock::now();
    std::vector<std::shared_ptr<Connection>> ready, flush, answered, expired, draining, lingered;
    for (;;) {
      const int n = ::epoll_wait(epoll_fd_, events.data(), kLoopEventsMax, kLoopTickMs);
      if (n < 0 && errno != EINTR) {
        // Only our bug can make it fail (EBADF, EFAULT, EINVAL). Going on without the loop would
        // leave every parked connection unanswered and park each new one for good, behind a
        // /livez that no longer answers kept-alive clients: stop instead, and let the supervisor
        // restart the daemon (every acknowledged write is durable already).
        spdlog::critical("http: epoll_wait failed: {}; aborting", std::strerror(errno));
        spdlog::default_logger()->flush();
        std::abort();
      }
      metrics_->loop_wakeups.Add();
      ready.clear();
      flush.clear();
      answered.clear();
      expired.clear();
      draining.clear();
      lingered.clear();
      std::vector<uint64_t> woken;
      {
        // The eventfd is drained with the swap, under the mailbox's lock: a Post between the
        // two would otherwise leave its id waiting for the next tick. (A Post after epoll_wait
        // returned leaves the eventfd set: one more turn finds the mailbox empty.)
        const bool posted = std::any_of(events.begin(), events.begin() + std::max(n, 0),
                                        [](const epoll_event& e) { return e.data.u64 == 0; });
        std::lock_guard<std::mutex> lock(mailbox_->mu);
        uint64_t ignored = 0;
        if (posted && ::read(mailbox_->event_fd, &ignored, sizeof(ignored)) < 0) { /* drained */ }
        woken.swap(mailbox_->woken);
      }
      {
        std::lock_guard<std::mutex> lock(loop_mu_);
        if (loop_stopping_) break;
        // First: a request still arriving whose new bytes woke the loop now is looked at too (it
        // would be owned by the time the tick ran, and a client sending a little every tick
        // would never expire).
        const auto now = Clock::now();
        if (now - last_tick >= std::chrono::milliseconds(kLoopTickMs)) {
          last_tick = now;
          for (auto& [id, c] : connections_) {
            if (c->where == Connection::Where::kParked && Expired(*c, now)) {
              c->where = Connection::Where::kOwned;
              expired.push_back(c);
            } else if (c->where == Connection::Where::kLingering && now >= c->lingering_until) {
              c->where = Connection::Where::kOwned;
              lingered.push_back(c);
            }
          }
        }
        for (int i = 0; i < n; ++i) {
          if (events[i].data.u64 == 0) continue;  // the mailbox, drained above
          auto it = connections_.find(events[i].data.u64);
          // A stale event: the connection is gone, or its owner already took it back.
          if (it == connections_.end()) continue;
          const Connection::Where where = it->second->where;
          if (where != Connection::Where::kParked && where != Connection::Where::kLingering) continue;
          it->second->where = Connection::Where::kOwned;
          (where == Connection::Where::kParked ? ready : draining).push_back(it->second);
        }
        for (uint64_t id : woken) {
          auto it = connections_.find(id);
          if (it == connections_.end() || it->second->where == Connection::Where::kOwned ||
              it->second->where == Connection::Where::kLingering) {
            continue;
          }
          // Parked: an answer left bytes unsent. Awaiting: the answer is out, go on.
          (it->second->where == Connection::Where::kParked ? flush : answered).push_back(it->second);
          it->second->where = Connection::Where::kOwned;
        }
      }
      for (auto& c : flush) ToWorker(c, WorkerJob::kFlush);
      for (auto& c : expired) ToWorker(c, WorkerJob::kClose);
      for (auto& c : lingered) Close(c, false);  // answered long since: no deferred answer
      for (auto& c : draining) DrainLingering(c);
      for (auto& c : answered) ServeOnLoop(c);
      for (auto& c : ready) ServeOnLoop(c);
    }
  }

  // Whether the connection `c` has the head of its next request whole, among the bytes read or
  // (with no answer before it still deferred) the socket has now, read without waiting: a head
  // that arrived just before the stop counts too. On its owner, once the loop is stopping
  // (StopLoop owns every connection the loop did then).
  static bool HeadArrived(Connection* c) {
    if (HeadEnd(c->stream.Unread(), 0) != std::string_view::npos) return true;
    if (c->state.deferred != nullptr) return false;
    if (c->stream.AppendNow() <= 0) return false;
    return HeadEnd(c->stream.Unread(), 0) != std::string_view::npos;
  }

  // Whether a parked connection is to be closed: idle for the keep-alive timeout since its last
  // answer (a deferred one's counts from when it was written; never while it is pending: its
  // client waits for it, and a worker closing the connection would wait as long, in Close); or
  // holding a request still arriving that has been silent for the read timeout, or has sent less
  // than a worker's read allows (ConnectionStream::RequestDeadline: kRequestBytesPerReadTimeout
  // per read timeout from when it began). Requires loop_mu_.
  bool Expired(const Connection& c, Clock::time_point now) const {
    const auto keep_alive = std::chrono::milliseconds(options_.keep_alive_timeout_ms);
    if (now - c.parked_at < keep_alive && !c.arriving_since) return false;  // most, on each tick
    Clock::time_point idle_since = c.parked_at;
    if (c.state.deferred != nullptr) {
      std::lock_guard<std::mutex> lock(c.state.deferred->mu);
      if (!c.state.deferred->done) return false;
      idle_since = std::max(idle_since, c.state.deferred->done_at);
    }
    if (now - idle_since >= keep_alive) return true;
    if (!c.arriving_since) return false;
    const auto read_timeout = std::chrono::milliseconds(options_.read_timeout_ms);
    const auto allowed =
        read_timeout * static_cast<int64_t>(1 + c.arriving_bytes / kRequestBytesPerReadTimeout);
    return now - c.parked_at >= read_timeout || now - *c.arriving_since >= allowed;
  }

  // A parked connection became readable: serve what can be served without waiting.
  void ServeOnLoop(const std::shared_ptr<Connection>& c) {
    for (int turn = 0; turn < kLoopRequestsPerTurn; ++turn) {
      if (c->state.deferred != nullptr) {
        // Bytes before the previous answer is done (the client saw the answer before its
        // writer marked it done, pipelining, or the peer closing): answers stay in order, so
        // the loop sets the connection aside until the answer's notice (LoopMailbox::Post).
        DeferredResponse& d = *c->state.deferred;
        std::unique_lock<std::mutex> dlock(d.mu);
        if (!d.done) {
          d.loop_waiting = true;
          dlock.unlock();
          std::lock_guard<std::mutex> lock(loop_mu_);
          Disarm(c.get());  // its unread request would wake the loop again and again
          c->where = Connection::Where::kAwaiting;
          return;
        }
        if (d.LeftForAWorker()) {
          dlock.unlock();
          return ToWorker(c, WorkerJob::kFlush);
        }
        dlock.unlock();
        c->state.deferred = nullptr;
      }
      if (!c->stream.HasBufferedInput()) {
        const ssize_t n = c->stream.ReceiveNow();
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Park(c, true);
        if (n <= 0) return ToWorker(c, WorkerJob::kClose);
      }
      LoopRequest parsed;
      if (KnownIncomplete(*c) ||
          !ParseLoopRequest(c->stream.Unread(), loop_routes_, options_.body_bytes_max,
                            request_bytes_max_, &parsed)) {
        if (!HoldArriving(c.get())) return ToWorker(c, WorkerJob::kServe);
        // Still arriving: the loop holds it (a worker would wait for its bytes, and a few slow
        // clients would hold every worker) until it is whole, or until it has been silent for
        // the read timeout or slower than a worker allows (kRequestBytesPerReadTimeout from when
        // it began), after which it is closed (the tick).
        const ssize_t n = c->stream.AppendNow();
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Park(c, true);
        if (n <= 0) return ToWorker(c, WorkerJob::kClose);
        --turn;  // reading more of one request is not a turn
        continue;
      }
      ReleaseHold(c.get());
      c->stream.SetNonBlocking(true);
      const After after = parsed.plain && options_.loop_own_parser ? ServeParsed(c.get(), parsed)
                                                                   : ServeRequest(c.get());
      c->stream.SetNonBlocking(false);
      if (after == After::kLingeringClose && !c->stream.HasOverflow() &&
          c->state.deferred == nullptr && LingerOnLoop(c)) {
        return;
      }
      if (after != After::kKeepAlive) {
        return ToWorker(c, after == After::kLingeringClose ? WorkerJob::kLingeringClose
                                                           : WorkerJob::kClose);
      }
      if (c->stream.HasOverflow()) return ToWorker(c, WorkerJob::kFlush);
      if (!c->stream.HasBufferedInput()) return Park(c, true);
    }
    // More pipelined requests than one turn serves; the last one still arriving stays here.
    if (HoldArriving(c.get())) return Park(c, true);
    ToWorker(c, WorkerJob::kServe);
  }

  // The bytes the event loop may hold for the request arriving at the start of `unread` (its
  // head is not complete yet, or it is and only a Content-Length body is missing), or 0 when a
  // worker takes it instead: any request while it is under kLoopHoldBytesMax; any head up to its
  // allowance (a worker could only wait for the rest: TakeHead); a body-first route's
  // (SetBodyFirstPaths) up to its head allowance and body limit. Not one announcing
  // chunked framing or `Expect` (whose client waits for a 100 Continue before the body), nor one
  // whose head has lines this test cannot read plainly (a worker answers those). *whole: the
  // request's size once its head is complete, else 0.
  // *scanned: in, how far `unread` is known to hold no end of the head; out, as far as this
  // call searched when it found none.
  size_t ArrivingBound(std::string_view unread, size_t* whole_out, size_t* scanned) const {
    *whole_out = 0;
    if (unread.empty()) return 0;
    const bool body_first = IsBodyFirst(unread);
    const size_t head_max = !body_first ? kLoopHoldBytesMax
                            : unread.substr(0, kLongHeadRequestLine.size()) == kLongHeadRequestLine
                                ? limits::kLagoWebhookHeadBytesMax
                                : kHeaderBytesAllowance;
    // The end of the head, as TakeHead finds it.
    const size_t blank = HeadEnd(unread, *scanned >= 2 ? *scanned - 2 : 0);
    if (blank == std::string_view::npos) {
      *scanned = unread.size();
      // Over its allowance, a worker answers it 431 at once (TakeHead).
      const size_t allowance = std::max(head_max, kHeaderBytesAllowance);
      return unread.size() <= allowance ? allowance : 0;
    }
    const std::string_view head = unread.substr(0, blank + 1);
    if (head.size() > head_max) return 0;
    if (unread[blank + 1] == '\n') return 0;  // a bare-LF blank line: a worker refuses it at once
    // cpp-httplib reads no body for these (PreRoute closes after the answer if one is announced).
    for (std::string_view method : {"GET ", "HEAD ", "OPTIONS "}) {
      if (head.substr(0, method.size()) == method) return 0;
    }
    uint64_t content_length = 0;
    int lengths = 0;
    size_t pos = head.find('\n') + 1;  // after the request line
    while (pos < head.size()) {
      size_t end = head.find('\n', pos);
      std::string_view line = head.substr(pos, end - pos);
      pos = end + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) return 0;
      const std::string_view name = line.substr(0, colon);
      if (EqualsIgnoreCase(name, "Transfer-Encoding") || EqualsIgnoreCase(name, "Expect")) {
        return 0;
      }
      if (EqualsIgnoreCase(name, "Content-Length") &&
          (++lengths > 1 ||
           !ParseContentLength(TrimBlanks(line.substr(colon + 1)), &content_length))) {
        return 0;
      }
    }
    const uint64_t whole = blank + 3 + content_length;
    *whole_out = whole;
    if (unread.size() >= whole) return 0;  // whole already (and not a loop route's)
    if (whole < kLoopHoldBytesMax) return whole;
    // A body over the limit is refused by a worker from its head (413), unread.
    const bool within = content_length <= options_.body_bytes_max && whole <= request_bytes_max_;
    return body_first && within ? whole : 0;
  }

  // Whether the request line at the start of `unread` names a body-first route: `POST <path>`,
  // then the end of the path (a blank or a query).
  bool IsBodyFirst(std::string_view unread) const {
    for (const std::string& path : body_first_paths_) {
      const size_t end = 5 + path.size();  // "POST " and the path
      if (unread.size() > end && unread.substr(0, 5) == "POST " &&
          unread.substr(5, path.size()) == path && (unread[end] == ' ' || unread[end] == '?')) {
        return true;
      }
    }
    return false;
  }

  // Whether the loop holds the request arriving on `c` (ArrivingBound): one under
  // kLoopHoldBytesMax always, a larger one while the large holds of all connections stay within
  // HttpServerOptions::loop_held_bytes_max (beyond, a worker reads it, as any route's). A large
  // one counts its whole size once its head is complete, its bytes so far until then (a long
  // head's allowance is over a megabyte: a few stalled heads would take the budget). Marks when
  // it began. On the connection's owner.
  bool HoldArriving(Connection* c) {
    size_t whole = 0;
    size_t bound = 0;
    if (c->arriving_since && c->arriving_whole != 0 &&
        c->stream.Unread().size() < c->arriving_whole) {
      whole = bound = c->arriving_whole;  // its head was read: only its body is still missing
    } else {
      size_t scanned = c->arriving_since ? c->head_scanned : 0;
      bound = ArrivingBound(c->stream.Unread(), &whole, &scanned);
      c->head_scanned = scanned;
    }
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      const size_t others = loop_held_bytes_ - c->held;
      const size_t arrived = whole != 0 ? whole : c->stream.Unread().size();
      const size_t held = bound <= kLoopHoldBytesMax || arrived <= kLoopHoldBytesMax ? 0 : arrived;
      if (bound == 0 || others + held > options_.loop_held_bytes_max) {
        loop_held_bytes_ = others;
        c->held = 0;
        c->arriving_since.reset();
        c->head_scanned = c->arriving_whole = 0;
        return false;
      }
      loop_held_bytes_ = others + held;
      c->held = held;
    }
    c->arriving_whole = whole != 0 && bound == whole ? whole : 0;
    if (!c->arriving_since) c->arriving_since = Clock::now();
    c->arriving_bytes = c->stream.Unread().size();
    return true;
  }

  // The request arriving on `c` is whole, or a worker takes it: the loop holds it no longer.
  void ReleaseHold(Connection* c) {
    std::lock_guard<std::mutex> lock(loop_mu_);
    ReleaseHoldLocked(c);
  }
  void ReleaseHoldLocked(Connection* c) {  // requires loop_mu_
    loop_held_bytes_ -= c->held;
    c->held = 0;
    c->arriving_since.reset();
    c->head_scanned = c->arriving_whole = 0;
  }

  // The request the loop holds on `c` is known not to be whole yet, from the new bytes alone: its
  // head has not ended, or it has and the body is still short of its size.
  static bool KnownIncomplete(const Connection& c) {
    if (!c.arriving_since) return false;
    const std::string_view unread = c.stream.Unread();
    if (c.arriving_whole != 0) return unread.size() < c.arriving_whole;
    return HeadEnd(unread, c.head_scanned >= 2 ? c.head_scanned - 2 : 0) == std::string_view::npos;
  }

  // Stops watching the connection (its owner reads it, or it waits for an answer). Level-triggered
  // events would otherwise wake the loop for it over and over. EPOLLONESHOT: an error or hang-up,
  // which epoll reports whatever the mask, is reported once at most. Requires loop_mu_.
  void Disarm(Connection* c) {
    if (!c->armed) return;
    epoll_event ev{};
    ev.events = EPOLLONESHOT;
    ev.data.u64 = c->id;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->sock, &ev);
    c->armed = false;
  }

  void ToWorker(const std::shared_ptr<Connection>& c, WorkerJob job) {
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      ReleaseHoldLocked(c.get());  // the worker counts its own time from here
      Disarm(c.get());
    }
    WorkerPool* pool = pool_.load();
    if (pool != nullptr && pool->Dispatch([this, c, job] { RunWorkerJob(c, job); })) return;
    // Not reached: the pool's shutdown stops this loop before it refuses jobs. Should it ever
    // be, closing here (possibly waiting for an answer) beats leaking the connection.
    Close(c, false);
  }

  void RunWorkerJob(const std::shared_ptr<Connection>& c, WorkerJob job) {
    if (c->stream.HasOverflow()) {  // the end of an answer written on the loop
      const std::string rest = c->stream.TakeOverflow();
      if (c->stream.write(rest.data(), rest.size()) != static_cast<ssize_t>(rest.size())) {
        return Close(c, false);
      }
    }
    if (job == WorkerJob::kClose) return Close(c, false);
    if (job == WorkerJob::kLingeringClose) return Close(c, true);
    if (job == WorkerJob::kStopAfterAnswer) {
      // Its client may send the next request as soon as it has read the answer.
      if (!FinishDeferred(&c->state)) return Close(c, false);
      // Over bytes left unread (half a head), a close is a reset, which drops what the kernel
      // still holds of the answer just written: the close lingers.
      if (!HeadArrived(c.get())) return Close(c, c->stream.HasBufferedInput());
    }
    if (job == WorkerJob::kFlush && !c->stream.HasBufferedInput()) return Park(c, false);
    for (;;) {
      const After after = ServeRequest(c.get());
      if (after != After::kKeepAlive) return Close(c, after == After::kLingeringClose);
      if (!c->stream.HasBufferedInput()) return Park(c, false);
      if (HoldArriving(c.get())) return Park(c, false);  // pipelined behind it, still arriving
    }
  }

  // Serves the next request of `c` (on the loop or on a worker; its bytes are read or readable).
  After ServeRequest(Connection* c) {
    if (!BeginServing(c)) return After::kClose;
    bool connection_closed = false;
    const bool ret = process_request(c->stream, c->state.closing, connection_closed, {});
    return EndServing(c, ret, connection_closed);
  }

  // The request's connection state, once the answer before it is out (a pipelined request waits
  // for the deferred answer before it: answers stay in order). False when the connection broke.
  bool BeginServing(Connection* c) {
    ConnectionState& state = c->state;
    t_connection = &state;
    if (!FinishDeferred(&state)) {
      t_connection = nullptr;
      return false;
    }
    c->stream.BeginRequest();
    state.close_requested = false;
    state.routed = false;
    state.series = nullptr;
    // After this answer the connection closes (cpp-httplib's `close_connection`).
    state.closing = c->remaining <= 1 || svr_sock_ == INVALID_SOCKET || loop_stopped_.load();
    return true;
  }

  // How the connection goes on after a request: `written`, the answer was (or is deferred);
  // `connection_closed`, the request asked for the connection to close.
  After EndServing(Connection* c, bool written, bool connection_closed) {
    ConnectionState& state = c->state;
    c->stream.DiscardWrites(false);
    t_connection = nullptr;
    if (state.close_requested || c->stream.cap_hit()) return After::kLingeringClose;
    if (!written || connection_closed) return After::kClose;
    // The last answer of a kept-alive connection (its keep_alive_max_count, or the server
    // stopping): the client may have pipelined more behind it, and a close over unread bytes is
    // a reset that drops what the kernel still holds of our answer (a large one to a slow
    // reader), so the close lingers.
    if (state.closing) return After::kLingeringClose;
    --c->remaining;
    return After::kKeepAlive;
  }

  // Serves a request that ParseLoopRequest read itself (LoopRequest::plain) as cpp-httplib's
  // process_request would: the pre-routing checks and the route (LoopRoute::serve), then the
  // answer, written here unless the handler deferred it. Two differences, for loop routes only:
  // no `REMOTE_ADDR`-style pseudo headers in the request (no loop route reads them), and answers
  // are never compressed (deferred ones never were).
  After ServeParsed(Connection* c, const LoopRequest& parsed) {
    if (!BeginServing(c)) return After::kClose;
    const ConnectionState& state = c->state;
    httplib::Request req;
    req.method = parsed.route->method;
    req.target = parsed.route->path;
    req.path = parsed.route->path;
    req.version.assign(parsed.version);
    for (size_t i = 0; i < parsed.header_count; ++i) {
      req.headers.emplace(std::string(parsed.headers[i].first),
                          std::string(parsed.headers[i].second));
    }
    // cpp-httplib reads a body only for these methods (its expect_content); a GET's body is
    // consumed here but not shown to the handler, and PreRoute closes the connection after it.
    if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
        req.method == "DELETE") {
      req.body.assign(parsed.body);
    }
    c->stream.Consume(parsed.size);
    std::string_view connection;
    HeaderValue(req, kConnectionHeader, &connection);
    const bool connection_closed =
        AsksToClose(connection) || (req.version == "HTTP/1.0" && connection != "Keep-Alive");
    httplib::Response res;
    res.version = "HTTP/1.1";
    try {
      parsed.route->serve(req, res);
    } catch (...) {
      res.headers.clear();
      WriteProblem(500, "internal", "internal error", &res);
    }
    bool written = true;
    if (state.deferred == nullptr) {
      if (res.status == -1) res.status = 200;
      ApplyResponseDefaults(&res);
      HeaderValue(req, kConnectionHeader, &connection);  // CloseAfterResponse may have set it
      const std::string out = SerializeResponse(res, state.closing || AsksToClose(connection),
                                                state.keep_alive_timeout_s,
                                                state.keep_alive_max_count);
      written = c->stream.write(out.data(), out.size()) == static_cast<ssize_t>(out.size());
    }
    return EndServing(c, written, connection_closed);
  }

  // On a worker (it may wait for a deferred answer), or on the loop for a connection without
  // one. Never under a deferred answer still being written; a connection that broke meanwhile is
  // closed all the same. A lingering close is the loop's (LingerOnLoop) unless the loop has
  // stopped: then this thread lingers.
  void Close(const std::shared_ptr<Connection>& c, bool lingering) {
    FinishDeferred(&c->state);
    c->state.deferred = nullptr;
    if (lingering && LingerOnLoop(c)) return;
    {
      std::lock_guard<std::mutex> lock(loop_mu_);
      ReleaseHoldLocked(c.get());
      connections_.erase(c->id);
      if (epoll_fd_ >= 0) ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->sock, nullptr);
    }
    if (lingering) {
      // The rest of its linger when the stopping loop handed it over (StopLoop); once stopping,
      // no later than linger_ms past the stop's read deadline.
      const auto linger = std::chrono::milliseconds(options_.linger_ms);
      auto until = c->lingering_until != Clock::time_point{} ? c->lingering_until
                                                             : Clock::now() + linger;
      if (const auto stop = c->stream.stop_deadline(); stop != Clock::time_point::max()) {
        until = std::min(until, stop + linger);
      }
      LingeringClose(c->sock, until);
    } else {
      ::shutdown(c->sock, SHUT_RDWR);
      ::close(c->sock);
    }
  }

  // Half-closes an answered connection and leaves it to the loop, which drains what the client
  // still sends (DrainLingering) and closes it once the client has closed, has sent
  // kLingerBytesMax or linger_ms have passed: a client that stays silent holds a descriptor for
  // that long, never a thread. False once the loop is stopping (the caller lingers itself). On
  // the connection's owner, once its answer is written whole.
  bool LingerOnLoop(const std::shared_ptr<Connection>& c) {
    std::lock_guard<std::mutex> lock(loop_mu_);
    if (loop_stopping_) return false;
    ReleaseHoldLocked(c.get());
    ::shutdown(c->sock, SHUT_WR);
    if (!c->armed) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = c->id;
      if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c->sock, &ev) != 0) return false;
      c->armed = true;
    }
    c->lingering_until = Clock::now() + std::chrono::milliseconds(options_.linger_ms);
    c->lingered_bytes = 0;
    c->where = Connection::Where::kLingering;
    return true;
  }

  // A lingering connection became readable (on the loop): drops what the client sent, up to
  // 64 KiB a turn; closes it once the client has closed or sent kLingerBytesMax.
  void DrainLingering(const std::shared_ptr<Connection>& c) {
    std::array<char, 16 * 1024> scratch;
    for (int turn = 0; turn < 4; ++turn) {
      ssize_t n;
      do {
        n = ::recv(c->sock, scratch.data(), scratch.size(), MSG_DONTWAIT);
      } while (n < 0 && errno == EINTR);
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n <= 0) return Close(c, false);
      c->lingered_bytes += static_cast<size_t>(n);
      if (c->lingered_bytes >= kLingerBytesMax) return Close(c, false);
    }
    std::lock_guard<std::mutex> lock(loop_mu_);
    c->where = Connection::Where::kLingering;  // still armed (level-triggered)
  }

  // Half-closes, drains what the client is still sending until `deadline`, then closes.
  static void LingeringClose(int sock, Clock::time_point deadline) {
    ::shutdown(sock, SHUT_WR);
    std::array<char, 16 * 1024> scratch;
    size_t drained = 0;
    while (drained < kLingerBytesMax) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0 || !PollFor(sock, POLLIN, left)) break;
      ssize_t n = ::recv(sock, scratch.data(), scratch.size(), 0);
      if (n <= 0) break;
      drained += static_cast<size_t>(n);
    }
    ::close(sock);
  }

  const HttpServerOptions options_;
  RequestMetrics* const metrics_;  // outlives the server
  size_t request_bytes_max_ = 0;
  size_t open_connections_max_;  // fixed before the loop starts
  std::vector<LoopRoute> loop_routes_;  // fixed before the loop starts
  std::vector<std::string> body_first_paths_;  // the same
  size_t loop_held_bytes_ = 0;  // guarded by loop_mu_: the large holds (Connection::held)
  std::atomic<WorkerPool*> pool_{nullptr};
  int epoll_fd_ = -1;
  std::shared_ptr<LoopMailbox> mailbox_ = std::make_shared<LoopMailbox>();
  std::thread loop_thread_;
  std::mutex loop_mu_;
  bool loop_stopping_ = false;  // guarded by loop_mu_
  std::atomic<bool> loop_stopped_{false};  // the same, for answers: say `Connection: close`
  uint64_t last_connection_id_ = 0;  // guarded by loop_mu_
  // Every open connection, parked or being served; guarded by loop_mu_.
  std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections_;
};

// Descriptors open in this process now (the entries of /proc/self/fd, less the one reading it);
// 0 when it cannot be read.
size_t OpenDescriptors() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  size_t count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count > 0 ? count - 1 : 0;
}

}  // namespace

Status ConnectionsMaxWithinDescriptorLimit(size_t configured, size_t threads, size_t* out) {
  *out = configured;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) {
    return Status::OK();
  }
  const size_t open_now = OpenDescriptors();
  const size_t kept = limits::kDescriptorsReserved + threads + open_now;
  if (limit.rlim_cur <= kept) {
    return Status::Unavailable(
        "descriptor_limit",
        "the open-file limit (RLIMIT_NOFILE " + std::to_string(limit.rlim_cur) +
            ") leaves no descriptor for HTTP connections beside the " + std::to_string(kept) +
            " kept for the rest of the process (" + std::to_string(limits::kDescriptorsReserved) +
            ", one per worker thread: " + std::to_string(threads) + ", open now: " +
            std::to_string(open_now) + "); raise it (ulimit -n, systemd LimitNOFILE=)");
  }
  *out = std::min<size_t>(configured, limit.rlim_cur - kept);
  return Status::OK();
}

size_t DefaultServerThreads() {
  size_t hw = std::thread::hardware_concurrency();
  return std::max<size_t>(128, 4 * hw);
}

class HttpServer::Impl {
 public:
  struct InstalledRoute {
    Route route;
    std::regex regex;
    RequestMetrics::Series* series = nullptr;
  };

  Impl(const HttpServerOptions& options, const Authenticator* authenticator, RequestMetrics* metrics)
      : options_(options),
        authenticator_(authenticator),
        metrics_(metrics),
        server_(options, metrics) {}

  Status AddRoutes(RouteTable table);
  void Configure();
  void Listen();
  CoreServer& server() { return server_; }
  std::atomic<bool> stopping{false};
  std::atomic<bool> failed{false};

 private:
  void Serve(const InstalledRoute& route, const httplib::Request& req, httplib::Response& res,
             const httplib::ContentReader* reader);
  void Dispatch(const InstalledRoute& route, const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader* reader);
  bool ReadBody(const httplib::Request& req, const httplib::ContentReader& reader, std::string* body,
                httplib::Response& res);
  void Fallback(const httplib::Request& req, httplib::Response& res);
  httplib::Server::HandlerResponse PreRoute(const httplib::Request& req, httplib::Response& res);
  int ExpectContinue(const httplib::Request& req, httplib::Response& res);
  void Reject(int http_status, std::string_view code, std::string_view detail, const httplib::Request& req,
              httplib::Response& res);
  std::string AllowedMethods(const std::string& path) const;

  const HttpServerOptions options_;
  const Authenticator* const authenticator_;
  RequestMetrics* const metrics_;
  std::vector<InstalledRoute> routes_;  // fixed after AddRoutes(): handlers point into it
  CoreServer server_;
};

Status HttpServer::Impl::AddRoutes(RouteTable table) {
  for (const Route& route : table.routes()) {
    if (!IsRouteMethod(route.method)) {
      return Status::InvalidArgument("bad_route", "unsupported method '" + route.method + "' for " + route.name);
    }
    if (route.name.empty() || !route.handler) {
      return Status::InvalidArgument("bad_route", "route " + route.pattern + " has no name or handler");
    }
    for (const auto& existing : routes_) {
      if (existing.route.method == route.method && existing.route.pattern == route.pattern) {
        return Status::InvalidArgument("bad_route", "duplicate route " + route.method + " " + route.pattern);
      }
    }
    InstalledRoute installed;
    try {
      installed.regex = std::regex(route.pattern);
    } catch (const std::regex_error& e) {
      return Status::InvalidArgument("bad_route", "route pattern " + route.pattern + ": " + e.what());
    }
    if (route.threading == Threading::kEventLoop) {
      if (!IsLiteralPattern(route.pattern) || (route.method != "GET" && route.method != "POST")) {
        return Status::InvalidArgument("bad_route", "event-loop route " + route.pattern +
                                                        " must be a literal GET or POST path");
      }
    }
    installed.route = route;
    installed.series = metrics_->Register(route.method, route.name);
    routes_.push_back(std::move(installed));
  }
  return Status::OK();
}

void HttpServer::Impl::Configure() {
  const HttpServerOptions& o = options_;
  server_.new_task_queue = [this] {
    auto* pool = new WorkerPool(options_.threads, metrics_);
    // httplib shuts the pool down (and deletes it) whenever its accept loop ends, also on an
    // accept() error: the loop, which hands connections to the pool, stops first.
    pool->SetBeforeShutdown([this] {
      server_.StopLoop();
      server_.SetPool(nullptr);
    });
    server_.SetPool(pool);
    return pool;
  };
  server_.set_tcp_nodelay(true);
  // SO_REUSEADDR (restart while old connections sit in TIME_WAIT) but not httplib's default
  // SO_REUSEPORT, which would let a second daemon bind the same port and split the traffic.
  server_.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server_.set_keep_alive_max_count(std::max<size_t>(o.keep_alive_max_count, 1));
  server_.set_keep_alive_timeout(std::max<int64_t>(o.keep_alive_timeout_ms / 1000, 1));
  server_.set_read_timeout(o.read_timeout_ms / 1000, (o.read_timeout_ms % 1000) * 1000);
  server_.set_write_timeout(o.write_timeout_ms / 1000, (o.write_timeout_ms % 1000) * 1000);
  server_.set_payload_max_length(o.body_bytes_max);
  server_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    return PreRoute(req, res);
  });
  server_.set_expect_100_continue_handler([this](const httplib::Request& req, httplib::Response& res) {
    return ExpectContinue(req, res);
  });
  // Any error answer without a body (cpp-httplib's own 400/414, a handler's bare status) becomes
  // a problem document.
  server_.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
        // cpp-httplib refused the request before routing (a bad request line, version or head):
        // its unread headers and body must not be taken for further requests. Counted here:
        // nothing else saw it (refusals from PreRoute on are counted where they are made).
        if (t_connection != nullptr && !t_connection->routed) {
          CloseAfterResponse(req);
          metrics_->Register(MethodLabel(req.method), kRejectedRoute)->Record(res.status, 0);
        }
        if (!res.body.empty() || res.content_length_ > 0 || res.is_chunked_content_provider_) {
          return httplib::Server::HandlerResponse::Unhandled;
        }
        ApplyResponseDefaults(&res);
        return httplib::Server::HandlerResponse::Handled;
      }));
  server_.set_exception_handler([](const httplib::Request& req, httplib::Response& res,
                                    std::exception_ptr) {
    res.headers.clear();
    WriteProblem(500, "internal", "internal error", &res);
    // Thrown while the body was read, perhaps: its rest must not be taken for a next request.
    if (HasBody(req)) CloseAfterResponse(req);
  });

  std::vector<LoopRoute> loop_routes;
  for (const InstalledRoute& installed : routes_) {
    if (installed.route.threading == Threading::kEventLoop) {
      const InstalledRoute* route = &installed;
      loop_routes.push_back(LoopRoute{
          route->route.method, route->route.pattern,
          [this, route](const httplib::Request& req, httplib::Response& res) {
            if (PreRoute(req, res) == httplib::Server::HandlerResponse::Handled) return;
            Serve(*route, req, res, nullptr);  // the body is in req.body already
          }});
    }
  }
  server_.SetLoopRoutes(std::move(loop_routes));
  std::vector<std::string> body_first_paths;
  for (const InstalledRoute& installed : routes_) {
    const Route& route = installed.route;
    if (route.method == "POST" && IsLiteralPattern(route.pattern) &&
        (route.policy == Policy::kPublic || route.policy == Policy::kSignature)) {
      body_first_paths.push_back(route.pattern);
    }
  }
  server_.SetBodyFirstPaths(std::move(body_first_paths));
  for (const InstalledRoute& installed : routes_) {
    const InstalledRoute* route = &installed;
    const std::string& pattern = route->route.pattern;
    auto with_body = [this, route](const httplib::Request& req, httplib::Response& res,
                                   const httplib::ContentReader& reader) { Serve(*route, req, res, &reader); };
    const std::string& method = route->route.method;
    if (method == "GET") {
      server_.Get(pattern, [this, route](const httplib::Request& req, httplib::Response& res) {
        Serve(*route, req, res, nullptr);
      });
    } else if (method == "POST") {
      server_.Post(pattern, with_body);
    } else if (method == "PUT") {
      server_.Put(pattern, with_body);
    } else if (method == "PATCH") {
      server_.Patch(pattern, with_body);
    } else if (method == "DELETE") {
      server_.Delete(pattern, with_body);
    }
  }
  // Catch-alls, registered last: 404/405 without ever reading an unknown route's body.
  auto fallback = [this](const httplib::Request& req, httplib::Response& res) { Fallback(req, res); };
  auto fallback_with_body = [this](const httplib::Request& req, httplib::Response& res,
                                   const httplib::ContentReader&) { Fallback(req, res); };
  server_.Get(".*", fallback);
  server_.Options(".*", fallback);
  server_.Post(".*", fallback_with_body);
  server_.Put(".*", fallback_with_body);
  server_.Patch(".*", fallback_with_body);
  server_.Delete(".*", fallback_with_body);
}

void HttpServer::Impl::Listen() {
  // cpp-httplib 0.11.4 retries accept() only on EMFILE: ENFILE, ENOBUFS, ENOMEM, EPROTO, ...
  // close the listening socket and end the loop (false). ledgerd's main then exits 69 to be
  // restarted (serving()).
  if (!server_.listen_after_bind()) server_.ForgetClosedListener();
  if (!stopping.load()) {
    failed.store(true);
    spdlog::critical("http: the accept loop ended unexpectedly; no new connections are accepted");
  }
}

void HttpServer::Impl::Serve(const InstalledRoute& route, const httplib::Request& req,
                             httplib::Response& res, const httplib::ContentReader* reader) {
  const auto start = Clock::now();
  if (t_connection != nullptr) {
    t_connection->series = route.series;
    t_connection->started = start;
  }
  Dispatch(route, req, res, reader);
  // A deferred answer is counted when it is written (DeferResponse).
  if (t_connection != nullptr && t_connection->deferred != nullptr) return;
  route.series->Record(res.status == -1 ? 200 : res.status, SecondsSince(start));
}

void HttpServer::Impl::Dispatch(const InstalledRoute& route, const httplib::Request& req,
                                httplib::Response& res, const httplib::ContentReader* reader) {
  Identity identity;
  Status admitted = authenticator_->Admit(route.route.policy, req, &identity);
  if (!admitted.ok()) {
    Authenticator::WriteAdmitFailure(admitted, req, &res);
    if (HasBody(req)) CloseAfterResponse(req);
    return;
  }
  if (reader != nullptr) {
    std::string body;
    if (!ReadBody(req, *reader, &body, res)) {
      WipeSecret(&body);  // what was read of a refused body (a BYOK add's key, say): see ReadBody
      return;
    }
    // cpp-httplib hands content-reader handlers a const Request; it is the connection loop's own
    // local object, and the route handlers expect the body in req.body.
    const_cast<httplib::Request&>(req).body = std::move(body);
  }
  try {
    route.route.handler(req, res, identity);
  } catch (const std::exception& e) {
    spdlog::error("http: {} {} threw: {}", route.route.method, route.route.name, e.what());
    res.headers.clear();
    WriteProblem(500, "internal", "internal error", &res);
  } catch (...) {
    spdlog::error("http: {} {} threw a non-standard exception", route.route.method, route.route.name);
    res.headers.clear();
    WriteProblem(500, "internal", "internal error", &res);
  }
}

bool HttpServer::Impl::ReadBody(const httplib::Request& req, const httplib::ContentReader& reader,
                                std::string* body, httplib::Response& res) {
  if (!HasBody(req)) return true;
  const size_t max = options_.body_bytes_max;
  // A body may hold a secret (a BYOK add's plaintext key, which the route wipes from req.body): no
  // copy of it is left behind in freed memory. A body of a Content-Length is read into one buffer
  // of that size; a chunked one's buffer, when it grows, is wiped before it is freed.
  uint64_t announced = 0;
  if (!IsChunked(req) && ParseContentLength(req.get_header_value("Content-Length"), &announced)) {
    body->reserve(static_cast<size_t>(std::min<uint64_t>(announced, max)));
  }
  bool too_large = false;
  bool ok = reader([&](const char* data, size_t length) {
    if (length > max - body->size()) {
      too_large = true;
      return false;
    }
    if (length > body->capacity() - body->size()) {
      std::string grown;
      grown.reserve(std::min(max, std::max(2 * body->capacity(), body->size() + length)));
      grown.append(*body);
      WipeSecret(body);
      *body = std::move(grown);
    }
    body->append(data, length);
    return true;
  });
  if (t_connection != nullptr && t_connection->stream->chunked_body_malformed()) {
    // cpp-httplib may have ended the body early and left the rest for a "next request".
    WriteProblem(400, "bad_chunked_body", "the chunked body's framing is malformed", &res);
    CloseAfterResponse(req);
    return false;
  }
  if (ok) return true;
  if (too_large || StreamCapHit()) {
    WriteProblem(413, "payload_too_large",
                 "the request body exceeds " + std::to_string(max) + " bytes", &res);
  } else {
    WriteProblem(400, "unreadable_body", "the request body could not be read", &res);
  }
  CloseAfterResponse(req);
  return false;
}

std::string HttpServer::Impl::AllowedMethods(const std::string& path) const {
  std::string allow;
  for (const auto& route : routes_) {
    if (!std::regex_match(path, route.regex)) continue;
    std::string method = route.route.method == "GET" ? "GET, HEAD" : route.route.method;
    if (allow.find(route.route.method) != std::string::npos) continue;
    if (!allow.empty()) allow += ", ";
    allow += method;
  }
  return allow;
}

void HttpServer::Impl::Fallback(const httplib::Request& req, httplib::Response& res) {
  const auto start = Clock::now();
  // The path is percent-decoded (any bytes) and the detail is JSON: cut at a character boundary,
  // anything not UTF-8 shown as '?'.
  std::string path = projections::Truncated(req.path, kDetailPathBytesMax);
  const std::string method = projections::Truncated(req.method, 32);
  std::string allow = AllowedMethods(req.path);
  if (allow.empty()) {
    WriteProblem(404, "not_found", "no route for " + method + " " + path, &res);
  } else {
    WriteProblem(405, "method_not_allowed", method + " is not allowed on " + path, &res);
    res.set_header("Allow", allow);
  }
  if (HasBody(req)) CloseAfterResponse(req);
  metrics_->Register(MethodLabel(req.method), kUnmatchedRoute)->Record(res.status, SecondsSince(start));
}

void HttpServer::Impl::Reject(int http_status, std::string_view code, std::string_view detail,
                              const httplib::Request& req, httplib::Response& res) {
  WriteProblem(http_status, code, detail, &res);
  CloseAfterResponse(req);
  metrics_->Register(MethodLabel(req.method), kRejectedRoute)->Record(http_status, 0);
}

// Runs after the headers, before any body byte is read.
httplib::Server::HandlerResponse HttpServer::Impl::PreRoute(const httplib::Request& req,
                                                            httplib::Response& res) {
  using R = httplib::Server::HandlerResponse;
  if (t_connection != nullptr) t_connection->routed = true;
  // RFC 9110 §14.2: Range is for GETs of representations with range semantics, and no route has
  // one; cpp-httplib would cut whatever a handler answered (a POST's receipt, as a 416 after the
  // write was made durable) to the range asked for. Cleared before the first refusal below: a
  // 413 for `Content-Length: 2000000` with `Range: bytes=0-9` went out as ten bytes of its
  // problem with a Content-Range, and with `Range: bytes=100000-` as an empty 416.
  const_cast<httplib::Request&>(req).ranges.clear();  // the connection loop's own local
  if (t_connection != nullptr && t_connection->stream->unsupported_version()) {
    Reject(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served", req, res);
    return R::Handled;
  }
  if (t_connection != nullptr && t_connection->stream->head_too_large()) {
    Reject(431, "request_header_fields_too_large", t_connection->stream->head_too_large_detail(),
           req, res);
    return R::Handled;
  }
  RestoreLongHeaders(req);
  if (t_connection != nullptr && t_connection->stream->malformed_header()) {
    Reject(400, "bad_header_line",
           "a header line has whitespace before its colon, is folded onto the previous one, has "
           "a bare CR or LF or a NUL, or has '%' in Content-Length, Transfer-Encoding, "
           "Idempotency-Key or X-Lago-Unique-Key",
           req, res);
    return R::Handled;
  }
  // The target as sent (cpp-httplib's req.path is decoded): every route, path parameter and
  // idempotency hash sees the decoded path, which must be the one a proxy in front decodes.
  if (t_connection != nullptr && t_connection->stream->bad_absolute_target()) {
    Reject(400, "bad_request_target",
           "the absolute-form request target's authority is not host[:port] (RFC 9112 §3.2.2)",
           req, res);
    return R::Handled;
  }
  if (!HasOnlyPercentEscapes(req.target)) {
    Reject(400, "bad_request_target",
           "the request target has a '%' not followed by two hex digits (RFC 3986 §2.1)", req, res);
    return R::Handled;
  }
  if (!IsKnownMethod(req.method)) {
    Reject(501, "not_implemented", "method not implemented", req, res);
    return R::Handled;
  }
  // RFC 9112 §3.2: an HTTP/1.1 request without Host, any request with two, or with a value that
  // is no host[:port], is a 400.
  static const std::string kHost = "Host";
  std::string_view host;
  if (const size_t hosts = HeaderValue(req, kHost, &host);
      hosts > 1 || (hosts == 0 && req.version == "HTTP/1.1") || (hosts == 1 && !IsHostValue(host))) {
    Reject(400, "bad_host", "an HTTP/1.1 request needs exactly one Host header naming host[:port]",
           req, res);
    return R::Handled;
  }
  if (t_connection != nullptr && !t_connection->stream->absolute_authority().empty()) {
    // RFC 9112 §3.2.2: an absolute-form target's authority replaces Host.
    auto& mutable_req = const_cast<httplib::Request&>(req);  // the connection loop's own local
    mutable_req.headers.erase(kHost);
    mutable_req.headers.emplace(kHost, std::string(t_connection->stream->absolute_authority()));
  }
  static const std::string kContentLength = "Content-Length";
  static const std::string kTransferEncoding = "Transfer-Encoding";
  std::string_view length_value, encoding;
  const size_t lengths = HeaderValue(req, kContentLength, &length_value);
  const bool has_length = lengths > 0;
  if (const size_t encodings = HeaderValue(req, kTransferEncoding, &encoding); encodings > 0) {
    // Only plain chunked framing; anything else would make cpp-httplib read until EOF.
    if (encodings != 1 || !EqualsIgnoreCase(encoding, "chunked")) {
      Reject(501, "unsupported_transfer_encoding", "only 'Transfer-Encoding: chunked' is supported", req, res);
      return R::Handled;
    }
    if (has_length) {  // RFC 9112 §6.3: a request smuggling vector
      Reject(400, "bad_framing", "both Content-Length and Transfer-Encoding", req, res);
      return R::Handled;
    }
    if (req.version == "HTTP/1.0") {  // RFC 9112 §6.1: faulty framing
      Reject(400, "bad_framing", "Transfer-Encoding in an HTTP/1.0 request", req, res);
      return R::Handled;
    }
    if (t_connection != nullptr) t_connection->stream->WatchChunkedBody();
  }
  if (has_length) {
    uint64_t length = 0;
    if (lengths != 1 || !ParseContentLength(length_value, &length)) {
      Reject(400, "bad_content_length", "malformed Content-Length", req, res);
      return R::Handled;
    }
    if (length > options_.body_bytes_max) {
      Reject(413, "payload_too_large",
             "the request body exceeds " + std::to_string(options_.body_bytes_max) + " bytes", req, res);
      return R::Handled;
    }
  }
  if (HasBody(req)) {
    // Bodies are taken as sent: cpp-httplib would decode a compressed one (the event loop's own
    // parser would not) and parses a multipart one with callbacks this server does not give it
    // (it throws halfway through the body). No route takes either.
    static const std::string kContentEncoding = "Content-Encoding";
    std::string_view coding;
    if (const size_t codings = HeaderValue(req, kContentEncoding, &coding);
        codings > 1 || (codings == 1 && !EqualsIgnoreCase(TrimBlanks(coding), "identity"))) {
      Reject(415, "unsupported_content_encoding", "request bodies are accepted without a content coding",
             req, res);
      res.set_header("Accept-Encoding", "identity");  // RFC 9110 §15.5.16
      return R::Handled;
    }
    const std::string& type = req.get_header_value("Content-Type");
    if (type.size() >= 10 && EqualsIgnoreCase(std::string_view(type).substr(0, 10), "multipart/")) {
      Reject(415, "unsupported_media_type", "multipart bodies are not accepted", req, res);
      return R::Handled;
    }
  }
  // cpp-httplib never reads the body of a GET/HEAD/OPTIONS, nor a chunked one of a DELETE: answer,
  // then close, so that the unread bytes can never be taken for a next request (request
  // smuggling).
  if ((req.method == "GET" || req.method == "HEAD" || req.method == "OPTIONS" ||
       (req.method == "DELETE" && IsChunked(req))) &&
      HasBody(req)) {
    CloseAfterResponse(req);
  }
  // RFC 9110 §7.6.1: connection options are case-insensitive tokens in a list; cpp-httplib closes
  // only on exactly "close".
  // The body was (or will be) read whole: a plain close, not the lingering one for unread bodies.
  std::string_view connection;
  const bool asks_to_close = HeaderValue(req, kConnectionHeader, &connection) > 0 &&
                             connection != "close" && AsksToClose(connection);
  // cpp-httplib closes an HTTP/1.0 connection unless it asks for exactly `Keep-Alive`, yet
  // answered with Keep-Alive parameters: the answer says `Connection: close` instead.
  const bool http10_closes =
      req.version == "HTTP/1.0" && connection != "Keep-Alive" && connection != "close";
  if (asks_to_close && t_connection != nullptr) t_connection->closing = true;
  if (asks_to_close || http10_closes) {
    auto& mutable_req = const_cast<httplib::Request&>(req);  // the connection loop's own local
    mutable_req.headers.erase(kConnectionHeader);
    mutable_req.set_header(kConnectionHeader, "close");  // cpp-httplib then answers so
  }
  return R::Unhandled;
}

// `Expect: 100-continue`: refuse an oversized body before the client sends it.
int HttpServer::Impl::ExpectContinue(const httplib::Request& req, httplib::Response& res) {
  if (t_connection != nullptr) t_connection->routed = true;
  if (t_connection != nullptr && t_connection->stream->head_too_large()) {
    Reject(431, "request_header_fields_too_large", t_connection->stream->head_too_large_detail(),
           req, res);
    return 431;
  }
  // RFC 9110 §10.1.1: the point of Expect is a refusal from the head alone. Everything that
  // would refuse the request without its body runs before the client is told to send it: the
  // head's checks (cpp-httplib asks this handler before PreRoute, which runs again after; it is
  // idempotent), the route and its policy. A refusal closes the connection, the body unread.
  if (PreRoute(req, res) == httplib::Server::HandlerResponse::Handled) return res.status;
  const InstalledRoute* route = nullptr;
  for (const InstalledRoute& installed : routes_) {
    if (installed.route.method == req.method && std::regex_match(req.path, installed.regex)) {
      route = &installed;
      break;
    }
  }
  if (route == nullptr) {
    Fallback(req, res);
    CloseAfterResponse(req);
    return res.status;
  }
  Identity identity;
  if (Status admitted = authenticator_->Admit(route->route.policy, req, &identity);
      !admitted.ok()) {
    Authenticator::WriteAdmitFailure(admitted, req, &res);
    CloseAfterResponse(req);
    route->series->Record(res.status, 0);
    return res.status;
  }
  return 100;
}

Status HttpServer::Create(const HttpServerOptions& options, RouteTable routes,
                          const Authenticator* authenticator, RequestMetrics* metrics,
                          std::unique_ptr<HttpServer>* out) {
  if (authenticator == nullptr || metrics == nullptr) {
    return Status::InvalidArgument("bad_http_options", "authenticator and metrics are required");
  }
  if (options.threads == 0 || options.threads > limits::kServerThreadsMax) {
    return Status::InvalidArgument("bad_http_options", "threads must be in 1.." +
                                                           std::to_string(limits::kServerThreadsMax));
  }
  if (options.body_bytes_max == 0 ||
      options.open_connections_max == 0 || options.port < 0 ||
      options.port > 65535 || options.read_timeout_ms <= 0 || options.write_timeout_ms <= 0 ||
      options.keep_alive_timeout_ms <= 0 || options.listen_backlog <= 0 || options.linger_ms <= 0) {
    return Status::InvalidArgument("bad_http_options", "invalid HTTP server option");
  }
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->options_ = options;
  server->impl_ = std::make_unique<Impl>(options, authenticator, metrics);
  LEDGER_RETURN_IF_ERROR(server->impl_->AddRoutes(std::move(routes)));
  server->impl_->Configure();
  *out = std::move(server);
  return Status::OK();
}

HttpServer::~HttpServer() { Stop(); }

Status HttpServer::Start() {
  if (started_) return Status::Internal("HttpServer::Start called twice");
  CoreServer& core = impl_->server();
  size_t open_connections_max = 0;
  LEDGER_RETURN_IF_ERROR(ConnectionsMaxWithinDescriptorLimit(options_.open_connections_max,
                                                             options_.threads,
                                                             &open_connections_max));
  if (open_connections_max < options_.open_connections_max) {
    spdlog::info("http: at most {} open connections (the open-file limit less what the rest of "
                 "the process keeps; {} configured)",
                 open_connections_max, options_.open_connections_max);
  }
  core.SetOpenConnectionsMax(open_connections_max);
  int port = options_.port;
  if (port == 0) {
    port = core.bind_to_any_port(options_.host);
    if (port <= 0) port = -1;
  } else if (!core.bind_to_port(options_.host, port)) {
    port = -1;
  }
  if (port < 0) {
    return Status::Unavailable("listen_failed", "cannot listen on " + options_.host + ":" +
                                                    std::to_string(options_.port));
  }
  if (!core.Relisten(options_.listen_backlog)) {
    spdlog::warn("http: could not raise the listen backlog to {}", options_.listen_backlog);
  }
  if (!core.StartLoop()) {
    core.ShutdownListener();
    return Status::Unavailable("server_start_failed",
                               std::string("cannot start the event loop: ") + std::strerror(errno));
  }
  listen_thread_ = std::thread([this] { impl_->Listen(); });
  // stop() only acts on a running server: wait until the accept loop runs.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!core.is_running() && !impl_->failed.load() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  started_ = true;
  port_ = port;
  open_connections_max_ = open_connections_max;
  if (!core.is_running()) {
    Stop();
    return Status::Unavailable("server_start_failed", "the HTTP accept loop did not start");
  }
  return Status::OK();
}

void HttpServer::Stop() {
  if (!started_ || stopped_) return;
  stopped_ = true;
  impl_->stopping.store(true);
  CoreServer& core = impl_->server();
  // The loop first: it closes the parked connections and never hands a worker another job;
  // the workers then finish the requests they serve and close their connections.
  core.StopLoop();
  core.stop();
  core.ShutdownListener();
  if (listen_thread_.joinable()) listen_thread_.join();
}

bool HttpServer::serving() const { return started_ && !stopped_ && !impl_->failed.load(); }

}  // namespace ledger::http
