// The event loop's own request parser (HttpServer, http/server.cc), on its own so that the fuzz
// target (tests/fuzz) and the tests can call it without a socket: not part of the http API.
#pragma once

#include <httplib.h>

#include <array>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ledger::http {

// A non-blocking route, for the event loop (HttpServer::Impl fills it): its request line, and
// how to serve a request of it that the loop parsed itself (the pre-routing checks, the route).
struct LoopRoute {
  std::string method;
  std::string path;
  std::function<void(const httplib::Request&, httplib::Response&)> serve;
};

// A whole request for a loop route at the start of a connection's unread bytes, as views into
// them (ParseLoopRequest).
struct LoopRequest {
  static constexpr size_t kHeadersMax = 32;
  const LoopRoute* route = nullptr;
  // Plain enough for the server's own reading (ServeParsed); otherwise cpp-httplib reads it.
  bool plain = false;
  std::string_view version;
  std::array<std::pair<std::string_view, std::string_view>, kHeadersMax> headers;
  size_t header_count = 0;
  std::string_view body;
  size_t size = 0;  // head and body
};

// True when `unread` starts with a whole request (head and Content-Length body) for one of
// `routes` (the routes that never block), framed so plainly that serving it cannot need another
// read; its body is at most `body_bytes_max` (HttpServerOptions::body_bytes_max).
//
// out->plain when, besides, a plain reading of it is what cpp-httplib 0.11.4 would read, so
// that the server can parse it itself (ServeParsed) instead of running cpp-httplib's request
// processing (its line reader, header map, routing by regex and an answer formatted even when
// deferred: a third of the loop thread's time under consume): the request line is
// `METHOD SP path SP HTTP/1.x` with the route's literal path (no query, no escape); every line
// ends with CRLF and the head has no NUL; header lines are `name:value` with a non-empty name
// and a non-empty value without '%' (cpp-httplib percent-decodes header values), none folded
// and none with blanks before the colon (those get a 400 from cpp-httplib's path); no `Range`
// (cpp-httplib applies ranges to any answer); at most LoopRequest::kHeadersMax header lines;
// and the request fits `request_bytes_max`, the per-request byte cap.
bool ParseLoopRequest(std::string_view unread, const std::vector<LoopRoute>& routes,
                      size_t body_bytes_max, size_t request_bytes_max, LoopRequest* out);

}  // namespace ledger::http
