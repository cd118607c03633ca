// ledgerctl bench http: load against a running ledgerd's POST /api/v1/usage/consume over HTTP,
// or (batch > 0) its batched ingest, POST /api/v1/usage/events with `batch` items per body.
//
// One thread drives `connections` keep-alive connections with epoll (non-blocking sockets, a
// timerfd for due times, requests written and answers read by hand: Content-Length bodies only),
// so that the load generator takes a small share of the CPU it shares with ledgerd — a thread per
// connection with cpp-httplib's client cost ~90 µs of CPU per request and, at half the consume
// rate, starved the server and dominated its tail. Open loop (rate > 0): request i is due at
// start + i / rate whatever happened before, a free connection takes the next due request, and
// latency counts from the due time — a stalled server shows up as latency instead of as a lower
// offered rate (no coordinated omission; what wrk2 does). Closed loop (rate = 0): every
// connection sends back to back. A transport failure counts the request as a transport error
// and reconnects. Each request carries a fresh idempotency key,
// so each is a new unit of usage: put the user on an unlimited (or high-limit) plan first.
//
// Batched: each body holds `batch` items for `batch_users` users ("<user_id>-<n>", item i for
// user i mod batch_users), each with a fresh idempotency key; the bodies are written from a
// template, so that building them costs the client little (wrk's Lua builds each 1000-item body
// from strings and took ~0.4 of the two cores at 190k items/s). Items count only when the answer
// says so: `items_accepted` counts "accepted" results in the measured answers.
#pragma once

#include <cstdint>
#include <string>

#include "events/status.h"

namespace ledger::tools {

struct HttpBenchOptions {
  std::string url;                  // "http://127.0.0.1:8084"
  std::string token;                // a service token (or the user's JWT)
  std::string user_id = "bench-user";
  std::string service = "chat";
  double rate = 0;                  // requests/s offered; 0 = closed loop
  int connections = 64;
  double seconds = 10;              // measured
  double warmup_seconds = 1;        // sent, not measured
  int batch = 0;                    // items per POST /usage/events body; 0 = consume
  int batch_users = 100;            // users per batch body
};

struct HttpBenchResult {
  double offered_rate = 0;          // 0 for a closed loop
  double achieved_rate = 0;         // answered requests/s in the measured window
  uint64_t requests = 0;            // measured
  uint64_t ok = 0;                  // 200
  uint64_t refused = 0;             // any other HTTP status
  uint64_t transport_errors = 0;
  uint64_t items_accepted = 0;      // batched: "accepted" item results in measured answers
  double items_rate = 0;            // batched: items_accepted per measured second
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;
};

Status RunHttpBench(const HttpBenchOptions& options, HttpBenchResult* result);
std::string FormatHttpBenchReport(const HttpBenchOptions& options, const HttpBenchResult& result);

}  // namespace ledger::tools
