// The Lago events API as ledgerd uses it (PROTOCOLS.md "Lago"): POST
// <LAGO_API_URL>/api/v1/events/batch {"events":[...]} with `Authorization: Bearer <LAGO_API_KEY>`,
// and GET <LAGO_API_URL>/api/v1/billable_metrics/<code> (does the metric usage is sent under
// exist? Lago accepts events under any code and bills only those of a metric), behind the LagoEventsApi interface so that the Lago sink (http/lago_sink.h) runs against fakes
// in tests.
//
// One call is ONE attempt: the sink owns retries, backoff, batch splitting and what a 4xx means,
// because only it knows which events a batch carried and where its checkpoint is.
//
// HttpLagoClient speaks HTTP/1.1 with cpp-httplib (Debian builds it with OpenSSL: http:// and
// https:// bases both work), keeps one connection alive between batches, and bounds every attempt
// with connect/read/write timeouts and a deadline for the whole attempt. The API key never appears
// in an answer's error text.
//
// Thread safety: HttpLagoClient serializes calls with a mutex (the sink calls from one thread).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "events/status.h"

namespace httplib {
class Client;
}

namespace ledger::http {

class CallDeadline;

// Lago's answer to one attempt.
struct LagoAnswer {
  int http_status = 0;          // 0: no HTTP answer (connection refused, timeout, reset, TLS)
  std::string body;             // the answer's body, at most response_bytes_max bytes
  std::string error;            // what went wrong when http_status == 0
  int64_t retry_after_ms = -1;  // `Retry-After` in seconds (429/503), as ms; -1 when absent
};

class LagoEventsApi {
 public:
  virtual ~LagoEventsApi() = default;
  // POST /api/v1/events/batch with `body` ({"events":[...]}, compact JSON).
  virtual LagoAnswer SendEventsBatch(const std::string& body) = 0;
  // GET /api/v1/billable_metrics/<code> (the code percent-encoded): Lago answers 200
  // {"billable_metric":{...}}, or 404 {"status":404,"error":"Not Found",
  // "code":"billable_metric_not_found"} when the organization has no such metric. The default
  // answers http_status 0 (not asked).
  virtual LagoAnswer GetBillableMetric(const std::string& code) {
    LagoAnswer answer;
    answer.error = "not supported by this client";
    return answer;
  }
  // From another thread: ends a SendEventsBatch in progress now (it answers http_status 0).
  virtual void Cancel() {}
};

struct LagoClientOptions {
  // LAGO_API_URL: scheme://host[:port][/prefix], http or https; "/api/v1/..." is appended.
  std::string api_url;
  // LAGO_API_KEY: the organization's API key. Secret: never logged, never in a Status.
  std::string api_key;
  // PEM file of trusted CAs for https; "" = the system trust store.
  std::string ca_cert_file;
  // Per attempt. Crash semantics: none (nothing is persisted here). A read may wait as long as
  // the attempt's deadline: a Lago that answers a batch in 10-30 s (loaded) was cut at 10 s, never
  // acknowledged one, and was sent the same batch again and again.
  int64_t connect_timeout_ms = 3'000;
  int64_t read_timeout_ms = 30'000;
  int64_t write_timeout_ms = 10'000;
  // The whole attempt, however slowly the answer arrives: the timeouts above bound each connect,
  // read and write, and an answer sent a byte at a time would hold the sink's thread until it
  // ended. An attempt cut off answers http_status 0 (retried by the sink as a timeout).
  int64_t deadline_ms = 30'000;
  // Largest answer body kept; the rest is dropped (the status still counts).
  size_t response_bytes_max = 64 * 1024;
};

class HttpLagoClient final : public LagoEventsApi {
 public:
  // InvalidArgument "bad_config" when the URL is not http(s)://host[:port][/prefix] or the key is
  // empty.
  static Status Create(const LagoClientOptions& options, std::unique_ptr<HttpLagoClient>* out);
  ~HttpLagoClient() override;

  LagoAnswer SendEventsBatch(const std::string& body) override;
  LagoAnswer GetBillableMetric(const std::string& code) override;
  void Cancel() override;

 private:
  HttpLagoClient() = default;
  // One attempt: `method` (POST with `body`, or GET) of `path` under the prefix.
  LagoAnswer Call(const char* method, const std::string& path, const std::string& body);

  LagoClientOptions options_;
  std::string path_prefix_;  // without trailing '/'
  std::mutex mu_;
  // Guarded by mu_, but for Cancel(): httplib::Client::stop() may be called while a request runs.
  std::unique_ptr<httplib::Client> client_;
  std::mutex call_mu_;
  CallDeadline* call_ = nullptr;  // guarded by call_mu_: the running call's, for Cancel()
};

}  // namespace ledger::http
