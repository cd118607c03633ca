#include "http/idempotency.h"

#include <algorithm>
#include <string>

#include "events/limits.h"
#include "http/problem.h"

namespace ledger::http {

Hash RequestHash(const httplib::Request& req) {
  std::string head = req.method + " " + req.path + "\n";
  return Sha256(head, req.body);
}

bool ApplyIdempotencyKey(const httplib::Request& req, std::string_view route_name,
                         const Identity& identity, Command* command, httplib::Response* res) {
  std::string_view key;
  const size_t count = HeaderValue(req, kIdempotencyKeyHeader, &key);
  if (count == 0) return true;
  const bool printable = std::all_of(key.begin(), key.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
  if (count > 1 || key.empty() || key.size() > ledger::limits::kIdempotencyKeyBytesMax ||
      !printable) {
    WriteProblem(400, "invalid_idempotency_key",
                 "Idempotency-Key must be one header of 1 to " +
                     std::to_string(ledger::limits::kIdempotencyKeyBytesMax) +
                     " printable ASCII characters",
                 res);
    return false;
  }
  // Subjects are short in practice; a long one is hashed so the scope stays within its limit.
  std::string subject = identity.subject.size() <= 256
                            ? identity.subject
                            : "sha256:" + HexEncode(Sha256(identity.subject));
  command->idempotency_scope = subject + "|" + req.method + " " + std::string(route_name);
  command->idempotency_key = key;
  command->request_hash = RequestHash(req);
  return true;
}

}  // namespace ledger::http
