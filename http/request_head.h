// What a worker does with a request head before cpp-httplib reads it (ConnectionStream::TakeHead,
// http/server.cc), on its own so that the fuzz target (tests/fuzz) can call it without a socket:
// not part of the http API.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>

namespace ledger::http {

// Header lines longer than this are taken out of cpp-httplib's sight (its limit is 8192).
inline constexpr size_t kHeaderLineBytesMax = 4096;
inline constexpr size_t kLongHeadersMax = 8;
// cpp-httplib 0.11.4 refuses a header line longer than this, its CRLF included, with a 400
// (CPPHTTPLIB_HEADER_MAX_LENGTH): one more long line than kLongHeadersMax is a 431 instead.
inline constexpr size_t kLibraryHeaderLineBytesMax = 8192;

// Where a request head in `text` ends, searched from `from`: the LF of its last line, followed by
// the blank line -- a CRLF, or a bare LF (RFC 9112 §2.2; refused, see RewriteRequestHead). npos
// when the head has not ended yet.
size_t HeadEnd(std::string_view text, size_t from);

// How many bytes the head starting `head` may have: limits::kRequestHeadBytesMax, or
// limits::kLagoWebhookHeadBytesMax for the Lago webhook's request line (a jwt-mode signature).
size_t HeadBytesAllowance(std::string_view head);

// A request head as cpp-httplib gets it (RewriteRequestHead), and what the server noted about it
// (ConnectionStream's accessors of the same names say what each means).
struct RewrittenHead {
  std::string bytes;  // the rewritten head, then whatever followed it
  bool malformed_header = false;
  bool unsupported_version = false;
  bool bad_absolute_target = false;
  std::string absolute_authority;
  bool head_too_large = false;
  std::string_view head_too_large_detail;
  size_t shrunk_by = 0;  // bytes the long-header markers took out of the head
  // Marker value -> the real value of a header line taken out of cpp-httplib's sight.
  std::map<std::string, std::string, std::less<>> long_headers;
};

// `head`: the bytes read for a request (the head, and any that followed it in the same read),
// `end`: HeadEnd(head, 0), `allowance`: HeadBytesAllowance(head). cpp-httplib 0.11.4 refuses a
// header line over 8 KiB (CPPHTTPLIB_HEADER_MAX_LENGTH, fixed when Debian built it) with a 400.
// Real requests have longer ones: a Lago webhook in jwt mode carries the whole payload as a JWT
// in X-Lago-Signature; a Keycloak access token with many roles in Authorization. So the value of
// every header line over kHeaderLineBytesMax becomes a short marker that cpp-httplib parses, and
// the value is kept (long_headers); the server puts it back into the request before anything
// looks at the headers (RestoreLongHeaders). Lines RFC 9112 says to refuse, which cpp-httplib
// would read otherwise, are noted (malformed_header), and the request line is made one that
// cpp-httplib parses (LibraryRequestLine).
RewrittenHead RewriteRequestHead(std::string head, size_t end, size_t allowance);

}  // namespace ledger::http
