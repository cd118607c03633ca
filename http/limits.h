// Every request, header and buffer the http module accepts has a limit, here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "projections/limits.h"

namespace ledger::http::limits {

// Request bodies (Content-Length and chunked alike). Larger bodies get 413.
inline constexpr size_t kRequestBodyBytesMax = 1 << 20;
// The `Authorization` header value. A longer bearer token is rejected (401) unparsed.
inline constexpr size_t kAuthorizationBytesMax = 16 * 1024;
// JWKS file read at start.
inline constexpr size_t kJwksFileBytesMax = 1 << 20;
// Keys taken from a JWKS file.
inline constexpr size_t kJwksKeysMax = 64;
// Roles read from one token.
inline constexpr size_t kTokenRolesMax = 256;
// Configured service tokens.
inline constexpr size_t kServiceTokensMax = 256;
// Bytes the server's event loop holds in all for webhook requests still arriving (so that slow
// senders hold no worker); beyond, workers read them.
inline constexpr size_t kLoopHeldBytesMax = 64 << 20;
// Listen backlog requested from the kernel (capped by net.core.somaxconn).
inline constexpr int kListenBacklog = 1024;
// Worker threads of the server (they serve the requests that may block).
inline constexpr size_t kServerThreadsMax = 4096;
// Open client connections (each holds a 16 KiB read buffer); one more is closed at once.
inline constexpr size_t kOpenConnectionsMax = 16384;
// Descriptors kept from HTTP connections for the rest of the process (RocksDB's files, Kafka and
// Stripe connections, the listener, epoll): the server caps open connections at the soft
// RLIMIT_NOFILE less this, and does not start when the limit is not above it.
inline constexpr size_t kDescriptorsReserved = 256;
// Users a UserLimiter (user_limiter.h) holds at once, per limit: users whose bucket is full again
// are forgotten first; beyond, a new user waits as if their bucket were empty.
inline constexpr size_t kRateLimitedUsersMax = 100'000;
// Query parameters of GET /api/v1/events.
inline constexpr size_t kQueryValueBytesMax = 512;
// GET /api/v1/events: a page stops before the event that would take its body past this many
// bytes (it always holds at least one event), and reads the log this many events at a time, so
// that `limit` (up to 1000) events of up to 1 MiB each never become one 1 GiB answer.
inline constexpr size_t kEventsPageBytesMax = 4 << 20;
inline constexpr size_t kEventsPageReadChunk = 64;
// GET /api/v1/events with a `type` filter examines at most this many positions of the log per
// page (≈ 0.1 s): a rare type ends the page early, and next_after says where the next one starts.
inline constexpr uint64_t kEventsExaminedMax = 100'000;

// X-Lago-Signature in jwt mode: the token embeds the whole webhook payload as a JSON string claim
// (every `"` and `\` escaped: up to twice its size), then base64url (4/3), so it is bounded by
// the payload limit (projections' kLagoWebhookBytesMax), not by kAuthorizationBytesMax.
inline constexpr size_t kLagoSignatureBytesMax =
    projections::limits::kLagoWebhookBytesMax * 2 * 4 / 3 + 4 * 1024;
// A request's head (request line and headers). Only POST /api/v1/webhooks/lago may send one up
// to kLagoWebhookHeadBytesMax (room for one jwt-mode signature); the server sees the request line
// before it reads further.
inline constexpr size_t kRequestHeadBytesMax = 64 * 1024;
inline constexpr size_t kLagoWebhookHeadBytesMax = kLagoSignatureBytesMax + 32 * 1024;
// LAGO_WEBHOOK_PUBLIC_KEY_FILE read at start.
inline constexpr size_t kLagoPublicKeyFileBytesMax = 64 * 1024;

}  // namespace ledger::http::limits
