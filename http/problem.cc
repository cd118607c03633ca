#include "http/problem.h"

#include <iterator>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace ledger::http {

int HttpStatusFor(Code code) {
  switch (code) {
    case Code::kOk:
      return 200;
    case Code::kInvalidArgument:
      return 400;
    case Code::kUnauthenticated:
      return 401;
    case Code::kPaymentRequired:
      return 402;
    case Code::kPermissionDenied:
      return 403;
    case Code::kNotFound:
      return 404;
    case Code::kConflict:
      return 409;
    case Code::kPayloadTooLarge:
      return 413;
    case Code::kUnprocessable:
      return 422;
    case Code::kResourceExhausted:
      return 429;
    case Code::kBusy:
    case Code::kUnavailable:
      return 503;
    case Code::kBadGateway:
      return 502;
    // A failed storage write degrades the store: the request was not done and the service cannot
    // take writes until it restarts, which is what 503 says.
    case Code::kIOError:
      return 503;
    case Code::kCorruption:
    case Code::kInternal:
      return 500;
  }
  return 500;
}

// cpp-httplib 0.11.4's phrases (its detail::status_message, which its server writes in the
// status line of every answer a worker gives; a response cannot override it): ledgerd's own writer
// (http/server.cc SerializeResponse) and the problems' titles use these, so that one answer never
// shows two names for its status. Hence 0.11.4's RFC 7231 names for 413 and 422, not RFC 9110's
// "Content Too Large" and "Unprocessable Content".
const char* ReasonPhrase(int http_status) {
  switch (http_status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

const char* DefaultProblemCode(int http_status) {
  switch (http_status) {
    case 400: return "invalid_request";
    case 401: return "unauthenticated";
    case 402: return "payment_required";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 408: return "request_timeout";
    case 409: return "conflict";
    case 411: return "length_required";
    case 413: return "payload_too_large";
    case 414: return "uri_too_long";
    case 415: return "unsupported_media_type";
    case 417: return "expectation_failed";
    case 422: return "unprocessable";
    case 429: return "rate_limited";
    case 501: return "not_implemented";
    case 502: return "bad_gateway";
    case 503: return "unavailable";
    case 504: return "gateway_timeout";
    case 505: return "http_version_not_supported";
    default: return http_status < 500 ? "invalid_request" : "internal";
  }
}

std::string ProblemJson(int http_status, std::string_view code, std::string_view detail) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  std::string type = "urn:ledgerd:problem:";
  type.append(code);
  w.StartObject();
  w.Key("type");
  w.String(type.data(), static_cast<rapidjson::SizeType>(type.size()));
  w.Key("title");
  w.String(ReasonPhrase(http_status));
  w.Key("status");
  w.Int(http_status);
  w.Key("detail");
  w.String(detail.data(), static_cast<rapidjson::SizeType>(detail.size()));
  w.Key("code");
  w.String(code.data(), static_cast<rapidjson::SizeType>(code.size()));
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

void WriteProblem(int http_status, std::string_view code, std::string_view detail,
                  httplib::Response* res) {
  res->status = http_status;
  res->set_content(ProblemJson(http_status, code, detail), kProblemContentType);
}

void WriteStatusProblem(const Status& status, httplib::Response* res) {
  int http_status = HttpStatusFor(status.code());
  if (http_status < 400) http_status = 500;  // an OK status is not a problem: our bug
  std::string_view code = status.problem();
  if (code.empty()) code = DefaultProblemCode(http_status);
  WriteProblem(http_status, code, status.message(), res);
  if (status.code() == Code::kBusy) {
    res->set_header("Retry-After", std::to_string(kBusyRetryAfterSeconds));
  }
}

void WriteJson(int http_status, std::string body, httplib::Response* res) {
  res->status = http_status;
  res->body = std::move(body);
  // set_content would copy; set the header the way it does.
  if (res->has_header("Content-Type")) res->headers.erase("Content-Type");
  res->set_header("Content-Type", kJsonContentType);
}

void SetPositionHeader(Position position, httplib::Response* res) {
  res->headers.erase(kPositionHeader);
  res->set_header(kPositionHeader, std::to_string(position.value()));
}

void WriteJsonAt(int http_status, std::string body, Position position, httplib::Response* res) {
  WriteJson(http_status, std::move(body), res);
  SetPositionHeader(position, res);
}

void WriteCommandResult(const CommandResult& result, httplib::Response* res) {
  if (!result.status.ok()) {
    WriteStatusProblem(result.status, res);
    if (result.position.value() > 0) SetPositionHeader(result.position, res);
    return;
  }
  WriteJsonAt(result.http_status, result.body, result.position, res);
  if (result.replayed) res->set_header("Idempotent-Replayed", "true");
}

std::string JsonQuote(std::string_view text) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return std::string(buf.GetString(), buf.GetSize());
}

bool RequireLedger(const Ledger* ledger, httplib::Response& res) {
  if (ledger != nullptr) return true;
  WriteProblem(503, "storage_unavailable", "the event store is not open", &res);
  return false;
}

std::string_view TrimBlanks(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i] && lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

bool StartsWithIgnoreCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && EqualsIgnoreCase(text.substr(0, prefix.size()), prefix);
}

size_t HeaderValue(const httplib::Request& req, const std::string& name, std::string_view* value) {
  const auto [first, last] = req.headers.equal_range(name);
  if (first == last) return 0;
  *value = first->second;
  return static_cast<size_t>(std::distance(first, last));
}

bool QueryParam(const httplib::Request& req, const char* name, size_t bytes_max, std::string* value,
                httplib::Response& res) {
  size_t count = req.get_param_value_count(name);
  if (count == 0) return true;
  if (count > 1) {
    WriteProblem(400, "invalid_parameter", std::string("'") + name + "' given more than once", &res);
    return false;
  }
  *value = req.get_param_value(name);
  if (value->size() > bytes_max) {
    WriteProblem(400, "invalid_parameter", std::string("'") + name + "' is too long", &res);
    return false;
  }
  return true;
}

}  // namespace ledger::http
