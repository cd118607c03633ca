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

namespace {

// Asks the writer whether (scope, key) already has a stored result: a hit is answered from the
// idempotency record (Decide() is not called); a miss reaches Decide(), which appends nothing.
class IdempotencyProbe final : public Command {
 public:
  static constexpr char kMiss[] = "idempotency_probe_miss";
  Status Decide(const DecideContext&, Decision*) override {
    return Status::Make(Code::kNotFound, kMiss, "no stored result");
  }
};

}  // namespace

bool AnswerStoredRetry(Ledger* ledger, const Command& command, httplib::Response* res) {
  if (command.idempotency_key.empty()) return false;
  IdempotencyProbe probe;
  probe.idempotency_scope = command.idempotency_scope;
  probe.idempotency_key = command.idempotency_key;
  probe.request_hash = command.request_hash;
  CommandResult result = ledger->Submit(&probe);
  if (!result.status.ok() && result.status.problem() == IdempotencyProbe::kMiss) return false;
  WriteCommandResult(result, res);
  return true;
}

bool AnswerStoredRetry(Ledger* ledger, const httplib::Request& req, std::string_view route_name,
                       const Identity& identity, httplib::Response* res) {
  IdempotencyProbe probe;
  if (!ApplyIdempotencyKey(req, route_name, identity, &probe, res)) return true;
  return AnswerStoredRetry(ledger, probe, res);
}

}  // namespace ledger::http
