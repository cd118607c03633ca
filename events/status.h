// Status: the result of every operation that can fail. Nothing throws across a module boundary;
// library exceptions are caught at the adapter and turned into a Status.
//
// A Status carries a numbered Code (stable; one function in http/ maps it to an HTTP status), a
// stable snake_case `problem` identifier that clients see as the RFC 9457 `code`, and a human
// message. Domain rejections ("quota_exceeded") and infrastructure failures ("storage_degraded")
// use the same type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace ledger {

enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument = 1,     // 400: the caller sent something malformed
  kUnauthenticated = 2,     // 401
  kPaymentRequired = 3,     // 402: no subscription that grants this
  kPermissionDenied = 4,    // 403
  kNotFound = 5,            // 404
  kConflict = 6,            // 409: e.g. idempotency key reused with another request
  kPayloadTooLarge = 7,     // 413
  kUnprocessable = 8,       // 422: well-formed but semantically invalid
  kResourceExhausted = 9,   // 429: quota exceeded
  kBusy = 10,               // 503 + Retry-After: a bounded queue is full
  kUnavailable = 11,        // 503: a dependency or the store is unavailable (degraded)
  kBadGateway = 12,         // 502: an upstream (Stripe, Lago) failed
  kIOError = 13,            // 500/503: storage failure
  kCorruption = 14,         // stored data failed a check
  kInternal = 15,           // our bug
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string problem, std::string message) {
    return Status(Code::kInvalidArgument, std::move(problem), std::move(message));
  }
  static Status NotFound(std::string message) {
    return Status(Code::kNotFound, "not_found", std::move(message));
  }
  static Status Conflict(std::string problem, std::string message) {
    return Status(Code::kConflict, std::move(problem), std::move(message));
  }
  static Status Busy(std::string message) {
    return Status(Code::kBusy, "overloaded", std::move(message));
  }
  static Status Unavailable(std::string problem, std::string message) {
    return Status(Code::kUnavailable, std::move(problem), std::move(message));
  }
  static Status IOError(std::string message) {
    return Status(Code::kIOError, "storage_error", std::move(message));
  }
  static Status Corruption(std::string message) {
    return Status(Code::kCorruption, "corruption", std::move(message));
  }
  static Status Internal(std::string message) {
    return Status(Code::kInternal, "internal", std::move(message));
  }
  static Status Make(Code code, std::string problem, std::string message) {
    return Status(code, std::move(problem), std::move(message));
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  // Stable snake_case identifier, e.g. "quota_exceeded". Empty for OK.
  const std::string& problem() const { return problem_; }
  const std::string& message() const { return message_; }
  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsIOError() const { return code_ == Code::kIOError; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }

  // Marks a Status as deliberately unchecked (best-effort cleanup paths).
  void IgnoreError() const {}

  std::string ToString() const {
    if (ok()) return "OK";
    return problem_ + ": " + message_;
  }

 private:
  Status(Code code, std::string problem, std::string message)
      : code_(code), problem_(std::move(problem)), message_(std::move(message)) {}

  Code code_ = Code::kOk;
  std::string problem_;
  std::string message_;
};

#define LEDGER_RETURN_IF_ERROR(expr)        \
  do {                                      \
    ::ledger::Status _status = (expr);      \
    if (!_status.ok()) return _status;      \
  } while (0)

}  // namespace ledger
