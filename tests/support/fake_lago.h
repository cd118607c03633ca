// FakeLago: a local stand-in for Lago's events API, for tests of the Lago sink (http/lago_sink.h)
// and the daemon that runs it.
//
// An httplib::Server on 127.0.0.1, port 0, on its own thread. POST /api/v1/events/batch is
// checked the way Lago checks it, in this order, answering with Lago-shaped JSON
// ({"status","error","code","error_details"}):
//   1. the fake being down (SetDown: the port refuses connections) and injected faults
//      (InjectFault: 500, 429 + Retry-After, a slow answer, "stored but the answer is lost", a
//      proxy's page, or none for this request);
//   2. `Authorization: Bearer <the key>` (401 otherwise) and `Content-Type: application/json`;
//   3. the body: a JSON object with `events`, 1..100 of them (422 no_events / too_many_events);
//      every event needs transaction_id, external_subscription_id, code (non-empty strings),
//      timestamp (seconds, a fraction allowed, or a numeric string: what Lago's Float() takes)
//      and properties (an object with `service` (string) and `quantity` (integer) -- what
//      ledgerd's contract sends): 422
//      validation_errors with error_details {"<index>": {"<field>": ["value_is_mandatory"...]}};
//      RejectTransaction() makes one transaction id invalid the same way (a poisoned event: its
//      timestamp "invalid_format", what Lago answers when Float() cannot read one),
//      FailTransaction() makes every batch holding it a 500. Like Lago, the `code` is not checked
//      against the billable metrics: an event under an unknown code is accepted and stored;
//   4. dedupe on (external_subscription_id, transaction_id), like Lago's unique index, in one of
//      the modes below; nothing is counted twice (except in kNoDedupe, for negative controls).
//   Accepted, it answers 200 {"events":[...]} (the events of the batch), the shape of Lago's
//   EventsController#batch answer.
//
// Dedupe modes (what Lago's event stores do with a transaction id they already have):
//   kRejectBatch     Postgres store, all or nothing: 422 {"<i>":{"transaction_id":
//                    ["value_already_exist"]}} naming every known id; nothing of the batch stored.
//                    With server_error_on_inner_duplicate, a known id that is not the batch's last
//                    event answers 500 instead (Postgres aborts the transaction), nothing stored.
//   kStoreRest       Postgres store on a separate events connection: the new events ARE stored,
//                    the known ones named in a 422.
//   kSilent          ClickHouse store: 2xx, the known ids are ignored.
//   kNoDedupe        NOT Lago: every receipt counts (negative controls of the exactly-once check).
//
// Every request is recorded (requests()) with the status it got and how many events it carried.
//
// GET /api/v1/billable_metrics/<code> (the same key): 200 {"billable_metric":{...}} for a code in
// Options::billable_metrics (SetBillableMetrics), else Lago's 404 {"status":404,"error":
// "Not Found","code":"billable_metric_not_found"}; SetMetricAnswer() scripts another answer
// (an outage, a proxy's page). Counted in metric_lookups(), not requests().
//
// Thread safety: every public method may be called from any thread while the server runs.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace httplib {
class Server;
}

namespace ledger::testing {

inline constexpr char kFakeLagoApiKey[] = "lago-test-api-key-0123456789abcdef";

class FakeLago {
 public:
  enum class Dedupe { kRejectBatch, kStoreRest, kSilent, kNoDedupe };
  enum class Fault {
    kServerError,  // 500, nothing stored
    kRateLimited,  // 429 with Retry-After: 1, nothing stored
    kSlowRateLimited,  // 429 with Retry-After: 1 after slow_ms, nothing stored
    kSlow,         // answers normally after slow_ms (longer than the client's read timeout)
    kAckLost,      // stores the batch, then answers 500 (the acknowledgement is lost)
    kRedirect,     // a proxy's 308 to https (text/html), nothing stored
    kProxyRefusal, // a proxy's 421 Misdirected Request (text/html), nothing stored
    kProxyOk,      // something else at the URL answering 200 "OK" (text/html), nothing stored
    kNone,         // answered normally (puts a later fault on a chosen request)
  };

  struct Options {
    std::string api_key = kFakeLagoApiKey;
    Dedupe dedupe = Dedupe::kRejectBatch;
    bool server_error_on_inner_duplicate = false;
    int slow_ms = 1500;
    // The organization's billable metric codes (GET /api/v1/billable_metrics/<code>).
    std::set<std::string> billable_metrics = {"api_calls"};
  };

  struct StoredEvent {
    std::string transaction_id;
    std::string external_subscription_id;
    std::string code;
    int64_t timestamp = 0;     // Unix seconds (the fraction cut off)
    int64_t timestamp_ms = 0;  // Unix milliseconds
    std::string timestamp_json;  // as received, compact JSON (a number re-written by rapidjson)
    std::string service;
    int64_t quantity = 0;
    std::string properties;  // compact JSON
  };

  struct Request {
    int status = 0;     // what the fake answered (0: the connection was dropped)
    size_t events = 0;  // events in the body (0 when unreadable)
    bool faulted = false;
    std::chrono::steady_clock::time_point received;  // when the handler began
    std::chrono::steady_clock::time_point answered;  // when it had its answer
  };

  FakeLago() : FakeLago(Options()) {}
  explicit FakeLago(Options options);
  ~FakeLago();
  FakeLago(const FakeLago&) = delete;
  FakeLago& operator=(const FakeLago&) = delete;

  int port() const { return port_; }
  // http://127.0.0.1:<port>, for LAGO_API_URL.
  std::string url() const;

  // Down: the listener closes (connections are refused); up again: it listens on the same port.
  void SetDown(bool down);
  // The next `times` requests get `fault` (queued after earlier injections).
  void InjectFault(Fault fault, int times = 1);
  // Drops the injected faults not yet used.
  void ClearFaults();
  void SetApiKey(std::string key);
  void SetDedupe(Dedupe dedupe);
  void SetBillableMetrics(std::set<std::string> codes);
  // Every GET /api/v1/billable_metrics/<code> answers `status` with `body` as `content_type`
  // (whatever the key and the code) until ClearMetricAnswer().
  void SetMetricAnswer(int status, std::string content_type, std::string body);
  void ClearMetricAnswer();
  // GET /api/v1/billable_metrics/<code> requests answered so far.
  size_t metric_lookups() const { return metric_lookups_.load(); }
  // Every batch holding this transaction id is refused with 422 validation_errors naming it.
  void RejectTransaction(std::string transaction_id);
  // Every batch holding this transaction id answers 500, nothing of it stored (Lago's
  // unhandled exception when a billable metric's expression fails on one event's properties).
  void FailTransaction(std::string transaction_id);
  // Undoes FailTransaction.
  void RecoverTransaction(const std::string& transaction_id);

  // Events counted, in the order they were stored.
  std::vector<StoredEvent> stored() const;
  size_t stored_count() const;
  std::vector<Request> requests() const;
  // Batch requests received so far, including ones still being answered (requests() records a
  // request once answered).
  size_t requests_received() const { return received_.load(); }
  // How many times each (external_subscription_id, transaction_id) was counted.
  std::map<std::pair<std::string, std::string>, int> counts() const;
  // Waits until at least `n` events are stored.
  bool WaitForStored(size_t n, std::chrono::milliseconds timeout) const;

 private:
  void Listen();
  void Handle(const std::string& authorization, const std::string& content_type,
              const std::string& body, int* status, std::string* answer);

  Options options_;
  int port_ = 0;
  std::unique_ptr<httplib::Server> server_;  // owner thread only
  std::thread thread_;

  std::atomic<size_t> received_{0};
  std::atomic<size_t> metric_lookups_{0};
  mutable std::mutex mu_;
  std::deque<Fault> faults_;                                   // guarded by mu_
  struct MetricAnswer {
    int status = 0;  // 0: none scripted
    std::string content_type;
    std::string body;
  };
  MetricAnswer metric_answer_;                                 // guarded by mu_
  std::set<std::string> rejected_;                             // guarded by mu_
  std::set<std::string> failing_;                              // guarded by mu_
  std::vector<StoredEvent> stored_;                            // guarded by mu_
  std::map<std::pair<std::string, std::string>, int> counts_;  // guarded by mu_
  std::vector<Request> requests_;                              // guarded by mu_
};

// Checks what Lago counted against the usage the log holds: every id in `expected` counted
// exactly once (by transaction_id, under any subscription) and nothing else counted. The message
// names the missing, duplicated and unexpected ids.
::testing::AssertionResult CountedExactlyOnce(const FakeLago& lago,
                                              const std::vector<std::string>& expected);

}  // namespace ledger::testing
