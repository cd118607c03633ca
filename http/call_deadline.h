// CallDeadline: one deadline for a whole cpp-httplib call. cpp-httplib's timeouts bound each
// connect, read and write, not the call: a server (or a proxy in front of it) sending its head
// and then a byte every few seconds held the calling thread until the body ended. Used by every
// outbound call that must end in time (BYOK key tests, Stripe attempts, Lago batches).
//
// A CallDeadline stops `client` once `timeout` has passed, unless Finish() came first.
// httplib::Client::stop() may be called while a request runs (it shuts the socket down; the
// request fails with a read error), so a call cut off looks like a lost connection: callers ask
// Finish() whether it was the deadline.
//
// Thread safety: constructed and Finish()ed by the caller's thread; its own thread calls stop(),
// and is joined before Finish() (or the destructor) returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace httplib {
class Client;
}

namespace ledger::http {

class CallDeadline {
 public:
  // `client` must outlive this object.
  CallDeadline(httplib::Client* client, std::chrono::milliseconds timeout);
  CallDeadline(const CallDeadline&) = delete;
  CallDeadline& operator=(const CallDeadline&) = delete;
  ~CallDeadline() { Finish(); }

  // Ends the watch; true when the deadline had passed (the call was stopped).
  bool Finish();

 private:
  void Watch(httplib::Client* client, std::chrono::steady_clock::time_point deadline);

  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;    // guarded by mu_
  bool passed_ = false;  // written by thread_ only; read after it joined
  std::thread thread_;   // last: starts with every other member initialized
};

}  // namespace ledger::http
