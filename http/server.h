// HttpServer: cpp-httplib configured for throughput and safety, serving a RouteTable.
//
// Per request: the route's Policy is enforced by the Authenticator *before* the body is read, then
// the body is read with a hard limit (Content-Length and chunked alike), then the handler runs.
// Every answer is counted per route by status class, with a latency histogram (RequestMetrics).
// Unknown paths get a 404 problem, known paths with another method a 405 with `Allow`. Errors are
// RFC 9457 problems (http/problem.h); no exception escapes a handler.
//
// cpp-httplib 0.11.4 is a compiled library, so everything is configured at run time (see
// ../shared/design/PLATFORM.md): TCP_NODELAY on every connection; a worker pool of
// `threads` with a bounded queue of accepted connections; keep-alive count and timeout;
// read/write timeouts; SO_REUSEADDR without SO_REUSEPORT (two daemons can never share a port);
// a listen backlog of `listen_backlog` (the library's own is 5). The connection handling is ours
// (it replaces httplib's) so that the server can close a connection whose request body it refused
// to read, and so that one request can never make the server read more than a bounded number of
// bytes (the library's request-line and header reader has no limit of its own).
//
// Between requests connections wait in one epoll set, watched by an event loop thread, not in a
// worker each. A complete, plainly framed request (Content-Length, no `Expect`, no over-long
// header line) for a route declared Threading::kEventLoop is parsed and served on the loop
// thread itself (by the server's own parser when it is plain enough that cpp-httplib would read
// it the same way: HttpServerOptions::loop_own_parser); every other request is handed, with what
// was already read, to a worker, which may block (reading the rest, calling Stripe, waiting for a
// sync) and parks the connection again afterwards. Under load one wake-up of the loop serves
// many connections. A connection closed after a refusal (or its last answer) is half-closed and
// drained by the loop for up to linger_ms (a lingering close), never by a worker.
//
// Lifecycle: Create() validates the routes; Start() binds (port 0 picks a free port, see port())
// and serves on its own thread; Stop() stops accepting, lets in-flight requests finish (and tells
// kept-alive clients to close), and joins every thread. The destructor calls Stop().
// Thread safety: Start()/Stop() from one owning thread; port() from any thread after Start().
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "events/status.h"
#include "http/auth.h"
#include "http/limits.h"
#include "http/request_metrics.h"
#include "http/route.h"

namespace ledger::http {

// max(128, 4 × hardware threads): workers serve the requests that may block; kept-alive
// connections and requests still arriving (most of them) do not hold one.
size_t DefaultServerThreads();

// The cap on open connections: `configured`, lowered to the soft RLIMIT_NOFILE less what the rest
// of the process keeps -- limits::kDescriptorsReserved (RocksDB's new files, Kafka, Stripe, the
// listener), one per worker thread (each may hold an outbound connection) and the descriptors open
// now (RocksDB's table files). Unavailable "descriptor_limit" when that leaves none. HttpServer's
// Start() applies it; the daemon also checks it before it opens the store.
Status ConnectionsMaxWithinDescriptorLimit(size_t configured, size_t threads, size_t* out);

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = let the kernel pick; read it back with HttpServer::port()
  size_t threads = DefaultServerThreads();
  // Request bodies above this get 413 (chunked ones too, as soon as they cross it).
  size_t body_bytes_max = limits::kRequestBodyBytesMax;
  // Bytes one request (request line + headers + body framing) may make the server read; above it
  // the connection is closed. 0 = 2 × body_bytes_max + limits::kLagoWebhookHeadBytesMax.
  size_t request_bytes_max = 0;
  int64_t read_timeout_ms = 5000;   // one blocking read; a request must also send 64 KiB per
                                    // read timeout from its start (slow clients); once Stop()
                                    // begins, no read waits past one read timeout from then
  int64_t write_timeout_ms = 5000;  // a write that makes no progress for this long fails
  int64_t keep_alive_timeout_ms = 5000;  // idle time before a kept-alive connection is closed
  size_t keep_alive_max_count = 1000;    // requests per connection
  int listen_backlog = limits::kListenBacklog;
  // Open client connections; one more is closed at once. Start() lowers it to what the soft
  // RLIMIT_NOFILE leaves (ConnectionsMaxWithinDescriptorLimit), and refuses to start when that
  // leaves none (HttpServer::open_connections_max).
  size_t open_connections_max = limits::kOpenConnectionsMax;
  // How long a connection closed after a refused or last answer is drained (at most 1 MiB) before
  // it is closed, so that the client reads the answer instead of a reset (a lingering close). The
  // event loop drains it: it holds no worker.
  int64_t linger_ms = 1000;
  // Bytes the event loop may hold in all for requests to body-first routes (public and signature
  // POSTs: the webhooks) and for heads over 8 KiB that arrive slowly, instead of a worker waiting
  // for them; beyond it a worker reads them. 0: none (a worker reads any request over 8 KiB that is still arriving).
  size_t loop_held_bytes_max = limits::kLoopHeldBytesMax;
  // Plainly framed requests for Threading::kEventLoop routes are parsed by the server itself
  // instead of by cpp-httplib's request processing (same answers, less CPU per request). false:
  // cpp-httplib reads them too (for tests that compare the two, and for A/B measurements).
  bool loop_own_parser = true;
};

class HttpServer {
 public:
  // `authenticator` and `metrics` are not owned and must outlive the server. Returns
  // InvalidArgument for a bad option, an unknown method or a route pattern that does not compile.
  static Status Create(const HttpServerOptions& options, RouteTable routes,
                       const Authenticator* authenticator, RequestMetrics* metrics,
                       std::unique_ptr<HttpServer>* out);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and starts serving. Unavailable ("listen_failed") when the address cannot be bound;
  // Unavailable ("server_start_failed") when its event loop or accept loop cannot start (out of
  // file handles or memory: not the address's fault).
  Status Start();
  // Idempotent. Returns when every worker has finished.
  void Stop();

  // The bound port (the picked one when options.port was 0). 0 before Start().
  int port() const { return port_; }
  // The cap on open connections Start() applied (options.open_connections_max, lowered to what
  // the descriptor limit leaves). 0 before Start().
  size_t open_connections_max() const { return open_connections_max_; }
  const std::string& host() const { return options_.host; }
  // False when the accept loop ended on its own (an accept() failure): the daemon should exit
  // (ledgerd's main checks it while it waits for a signal, daemon/app.h WaitForShutdown).
  bool serving() const;

 private:
  class Impl;
  HttpServer() = default;
  HttpServerOptions options_;
  std::unique_ptr<Impl> impl_;
  std::thread listen_thread_;
  int port_ = 0;
  size_t open_connections_max_ = 0;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace ledger::http
