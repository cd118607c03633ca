// Idempotency-Key support for mutating routes (CONTRACT.md §2).
//
// The key is scoped to the caller and the route: scope = "<identity.subject>|<METHOD> <route
// name>", so two callers (or two routes) never share a key. The request hash is SHA-256 over the
// method, the path and the raw body, so a retry with the same key and the same request is
// answered from the ledger's idempotency record (nothing appended), and the same key with a
// different request gets 409 "idempotency_key_reused" (events/ledger.h, Command).
//
// Thread safety: free functions, no shared state.
#pragma once

#include <httplib.h>

#include <string>
#include <string_view>

#include "events/ledger.h"
#include "http/route.h"

namespace ledger::http {

inline const std::string kIdempotencyKeyHeader = "Idempotency-Key";

// Fills command->idempotency_scope/key/request_hash from the request's `Idempotency-Key` header
// (no header: leaves the command without idempotency). Returns false after writing a 400 problem
// "invalid_idempotency_key" when the header is empty, repeated, longer than 255 bytes or not
// printable ASCII.
[[nodiscard]] bool ApplyIdempotencyKey(const httplib::Request& req, std::string_view route_name,
                                       const Identity& identity, Command* command,
                                       httplib::Response* res);

// SHA-256 over "<METHOD> <path>\n<body>".
Hash RequestHash(const httplib::Request& req);

// For a route whose work has an effect outside the log that must not be repeated on a retry (a
// Stripe call, a request to an LLM provider): when `command` carries an Idempotency-Key (after
// ApplyIdempotencyKey), asks the writer whether that key already has a stored result and, if so,
// writes it -- or 409 "idempotency_key_reused" for another request -- to `res` and returns true.
// Returns false, with nothing written or appended, when the route should go on. Call it before the
// route's state checks: the retried request's own effect may have changed that state since.
[[nodiscard]] bool AnswerStoredRetry(Ledger* ledger, const Command& command,
                                     httplib::Response* res);

// The same for a route that builds its command only after the outside call: reads the request's
// Idempotency-Key itself (true after a 400 for a bad one, as ApplyIdempotencyKey would write);
// the command then gets the key from ApplyIdempotencyKey as usual.
[[nodiscard]] bool AnswerStoredRetry(Ledger* ledger, const httplib::Request& req,
                                     std::string_view route_name, const Identity& identity,
                                     httplib::Response* res);

}  // namespace ledger::http
