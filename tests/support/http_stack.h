// An HttpServer on 127.0.0.1:0 with its Authenticator and RequestMetrics, for tests.
//
//   TestHttpStack stack;
//   AuthOptions auth;
//   auth.jwt.hs256_secret = kTestHs256Secret;
//   ASSERT_TRUE(stack.Start(std::move(routes), auth, &clock).ok());
//   TestHttpClient client("127.0.0.1", stack.port());
#pragma once

#include <memory>

#include "events/clock.h"
#include "events/status.h"
#include "http/auth.h"
#include "http/request_metrics.h"
#include "http/route.h"
#include "http/server.h"

namespace ledger::testing {

struct TestHttpStack {
  std::unique_ptr<http::Authenticator> authenticator;
  http::RequestMetrics metrics;
  std::unique_ptr<http::HttpServer> server;

  // Small pool and short keep-alive so tests stop fast; override fields of `options` as needed.
  static http::HttpServerOptions DefaultOptions() {
    http::HttpServerOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.threads = 16;
    options.keep_alive_timeout_ms = 1000;
    return options;
  }

  Status Start(http::RouteTable routes, const http::AuthOptions& auth, const Clock* clock,
               const http::HttpServerOptions& options = DefaultOptions()) {
    LEDGER_RETURN_IF_ERROR(http::Authenticator::Create(auth, clock, &authenticator));
    LEDGER_RETURN_IF_ERROR(
        http::HttpServer::Create(options, std::move(routes), authenticator.get(), &metrics, &server));
    return server->Start();
  }
  void Stop() {
    if (server) server->Stop();
  }
  int port() const { return server ? server->port() : 0; }
  ~TestHttpStack() { Stop(); }
};

}  // namespace ledger::testing
