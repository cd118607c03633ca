// RFC 9457 problem details and the JSON response helpers every route uses.
//
// A problem is `application/problem+json`:
//   {"type":"urn:ledgerd:problem:<code>","title":"<reason phrase>","status":N,
//    "detail":"<human text>","code":"<stable snake_case id>"}
// `code` is what clients switch on (CONTRACT.md §2); `detail` is for humans and never carries a
// secret or a token.
//
// Thread safety: free functions, no shared state.
#pragma once

#include <httplib.h>

#include <string>
#include <string_view>

#include "events/ledger.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger::http {

inline constexpr char kJsonContentType[] = "application/json";
inline constexpr char kProblemContentType[] = "application/problem+json";
inline constexpr char kPositionHeader[] = "X-Ledger-Position";
// Seconds a client should wait after a 503 "overloaded" (full write queue).
inline constexpr int kBusyRetryAfterSeconds = 1;

// The one mapping from ledger::Code to an HTTP status (see events/status.h). kOk maps to 200.
int HttpStatusFor(Code code);

// The HTTP reason phrase for `http_status` ("Not Found"); "Error" for unknown statuses. The same
// as cpp-httplib's status lines (413 "Payload Too Large", 422 "Unprocessable Entity"): ledgerd's
// own status lines and every problem's title come from here.
const char* ReasonPhrase(int http_status);

// A generic problem code for an HTTP status ("not_found", "payload_too_large", ...), for answers
// that have no more specific one (e.g. errors cpp-httplib raises itself).
const char* DefaultProblemCode(int http_status);

// The problem document for the given fields, as compact JSON.
std::string ProblemJson(int http_status, std::string_view code, std::string_view detail);

// Replaces the response with a problem. Sets status, body and content type.
void WriteProblem(int http_status, std::string_view code, std::string_view detail,
                  httplib::Response* res);

// Writes `status` (must not be OK) as a problem: the HTTP status from HttpStatusFor(), `code` =
// status.problem() (or a generic code when empty), `detail` = status.message(). A kBusy status also
// sets `Retry-After: 1`.
void WriteStatusProblem(const Status& status, httplib::Response* res);

// Writes a JSON body with `http_status`.
void WriteJson(int http_status, std::string body, httplib::Response* res);

// Writes a JSON body with `http_status` and `X-Ledger-Position: <position>`.
void WriteJsonAt(int http_status, std::string body, Position position, httplib::Response* res);

// Sets (replaces) `X-Ledger-Position`.
void SetPositionHeader(Position position, httplib::Response* res);

// Writes the outcome of Ledger::Submit(): on success the decided status and body with
// `X-Ledger-Position` = result.position, plus `Idempotent-Replayed: true` when the answer came from
// an idempotency record; on failure a problem (and `X-Ledger-Position` when the failure reflects a
// position, i.e. result.position > 0).
void WriteCommandResult(const CommandResult& result, httplib::Response* res);

// False after writing 503 "storage_unavailable" when `ledger` is null (the store is not open).
bool RequireLedger(const Ledger* ledger, httplib::Response& res);

// Reads the optional query parameter `name` into `*value` (left untouched when absent). False
// after writing a 400 "invalid_parameter" problem when it is given more than once or is longer
// than `bytes_max`.
bool QueryParam(const httplib::Request& req, const char* name, size_t bytes_max, std::string* value,
                httplib::Response& res);

// `s` without leading and trailing spaces and tabs (RFC 9110's optional whitespace).
std::string_view TrimBlanks(std::string_view s);

// Whether `a` and `b` are equal with ASCII letters compared case-insensitively (header names,
// tokens such as `chunked`); no locale.
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

// Whether `text` begins with `prefix`, compared as EqualsIgnoreCase does.
bool StartsWithIgnoreCase(std::string_view text, std::string_view prefix);

// How many `name` headers the request has; the first one's value goes to `*value` (left untouched
// when there is none). One search of cpp-httplib's case-insensitive header map (a libc tolower()
// per character compared) where has_header, get_header_value_count and get_header_value are one
// search each.
size_t HeaderValue(const httplib::Request& req, const std::string& name, std::string_view* value);

// Escapes `text` as a JSON string literal, quotes included.
std::string JsonQuote(std::string_view text);

}  // namespace ledger::http
