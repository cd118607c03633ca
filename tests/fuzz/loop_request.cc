// The event loop's own request parser (http/loop_request.h) on any bytes a client sends, with the
// daemon's event-loop routes. What it takes is views into the input, within what it says the
// request's size is; a plain request's head is what a plain reading of it gives.
#include <string>
#include <string_view>
#include <vector>

#include "http/limits.h"
#include "http/loop_request.h"
#include "http/problem.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

namespace {

bool Within(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

int FuzzLoopRequest(const uint8_t* data, size_t size) {
  static const std::vector<http::LoopRoute> routes = {
      {"POST", "/api/v1/usage/consume", nullptr},
      {"GET", "/livez", nullptr},
      {"GET", "/readyz", nullptr},
  };
  // Small limits, so that the fuzzer reaches both sides of them.
  constexpr size_t kBodyBytesMax = 64;
  constexpr size_t kRequestBytesMax = 512;
  const std::string input(AsText(data, size));  // its own allocation: ASan sees reads past it
  const std::string_view unread = input;
  http::LoopRequest parsed;
  if (!http::ParseLoopRequest(unread, routes, kBodyBytesMax, kRequestBytesMax, &parsed)) return 0;
  LEDGER_FUZZ_CHECK(parsed.route != nullptr);
  LEDGER_FUZZ_CHECK(parsed.size <= unread.size());
  LEDGER_FUZZ_CHECK(parsed.body.size() <= kBodyBytesMax);
  LEDGER_FUZZ_CHECK(parsed.body.data() + parsed.body.size() == unread.data() + parsed.size);
  const std::string_view request = unread.substr(0, parsed.size);
  const std::string_view head = request.substr(0, request.size() - parsed.body.size());
  LEDGER_FUZZ_CHECK(head.size() >= 4 && head.substr(head.size() - 4) == "\r\n\r\n");
  LEDGER_FUZZ_CHECK(head.size() <= http::limits::kRequestHeadBytesMax + 4);
  LEDGER_FUZZ_CHECK(Within(parsed.version, head));
  LEDGER_FUZZ_CHECK(parsed.header_count <= http::LoopRequest::kHeadersMax);
  if (!parsed.plain) return 0;
  // A plain request: its request line is the route's, and its header lines are the head's lines,
  // in order, each `name:value` with the value's blanks trimmed.
  LEDGER_FUZZ_CHECK(parsed.size <= kRequestBytesMax);
  LEDGER_FUZZ_CHECK(parsed.version == "HTTP/1.1" || parsed.version == "HTTP/1.0");
  const std::string request_line =
      parsed.route->method + " " + parsed.route->path + " " + std::string(parsed.version);
  LEDGER_FUZZ_CHECK(head.substr(0, request_line.size() + 2) == request_line + "\r\n");
  LEDGER_FUZZ_CHECK(head.find('\0') == std::string_view::npos);
  size_t at = request_line.size() + 2;
  for (size_t i = 0; i < parsed.header_count; ++i) {
    const auto& [name, value] = parsed.headers[i];
    LEDGER_FUZZ_CHECK(Within(name, head) && Within(value, head));
    LEDGER_FUZZ_CHECK(!name.empty() && !value.empty() && value == http::TrimBlanks(value));
    LEDGER_FUZZ_CHECK(name.data() == head.data() + at);
    const size_t line_end = head.find("\r\n", at);
    LEDGER_FUZZ_CHECK(value.data() + value.size() <= head.data() + line_end);
    LEDGER_FUZZ_CHECK(head[at + name.size()] == ':');
    at = line_end + 2;
  }
  LEDGER_FUZZ_CHECK(at == head.size() - 2);  // every header line was taken
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzLoopRequest)
