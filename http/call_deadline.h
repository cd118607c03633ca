// CallDeadline: one deadline for a whole cpp-httplib call. cpp-httplib's timeouts bound each
// connect, read and write, not the call: a server (or a proxy in front of it) sending its head
// and then a byte every few seconds held the calling thread until the body ended. Used by every
// outbound call that must end in time (BYOK key tests, Stripe attempts, Lago batches).
//
// A CallDeadline stops `client` once `timeout` has passed, unless Finish() came first.
// httplib::Client::stop() may be called while a request runs (it shuts the socket down; the
// request fails with a read error), so a call cut off looks like a lost connection: callers ask
// Finish() whether it was the deadline. stop() waits for the connect and the TLS handshake
// (cpp-httplib holds its socket mutex across both), and a server trickling its handshake kept
// those going: so the deadline shuts down the reading side of every socket the call opened,
// through a duplicate of its descriptor taken when it was created (set_socket_options; the
// client's own socket options are replaced for the call), which no other thread can close and
// reuse under it; stop() only for a kept-alive connection the call reused. Not bounded: the name
// lookup before the socket exists, and a write the server does not read (our requests fit the
// socket buffers; each write has its own timeout).
//
// The watcher is a thread per call: where the process may start no more (cgroup pids, TasksMax,
// RLIMIT_NPROC) std::thread throws, uncaught on the Lago sink's thread (std::terminate). Then
// started() is false, a warning is logged, and the caller fails the call as a network error
// without making it: a call with no deadline could hold its thread without bound.
//
// Thread safety: constructed and Finish()ed by the caller's thread; its own thread calls stop(),
// and is joined before Finish() (or the destructor) returns.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace httplib {
class Client;
enum class Error;
}

namespace ledger::http {

// How a CallDeadline starts its watcher thread; nullptr (the default) is std::thread. Tests set
// one that throws std::system_error, as std::thread does when no thread can be made. Set it while
// no call runs.
using CallDeadlineThreadStarter = std::thread (*)(std::function<void()> watch);
void SetCallDeadlineThreadStarter(CallDeadlineThreadStarter starter);

class CallDeadline {
 public:
  // `client` must outlive this object.
  CallDeadline(httplib::Client* client, std::chrono::milliseconds timeout);
  CallDeadline(const CallDeadline&) = delete;
  CallDeadline& operator=(const CallDeadline&) = delete;
  ~CallDeadline() { Finish(); }

  // False when the watcher could not start: the call must not be made (a network error).
  bool started() const { return started_; }

  // Ends the watch; true when the deadline had passed (the call was stopped).
  bool Finish();

  // Cuts the call now, as its deadline would (a stop from another thread: httplib's stop()
  // alone waits out a TLS handshake); Finish() then answers true. Any thread, until Finish().
  void Cut();

 private:
  void Watch(httplib::Client* client, std::chrono::steady_clock::time_point deadline);
  // A socket the call created (the caller's thread, inside the call).
  void Adopt(int sock);

  httplib::Client* const client_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;      // guarded by mu_
  bool passed_ = false;    // guarded by mu_; read by Finish() after the join
  std::vector<int> fds_;   // guarded by mu_: duplicates of the call's sockets, closed by Finish()
  bool cut_ = false;       // guarded by mu_: Cut() was called
  bool started_ = false;   // the caller's thread only
  std::thread thread_;     // started in the constructor's body, every member initialized
};

// The client's connect, read and write timeouts (each at least 1 ms: cpp-httplib takes 0 as none).
void SetClientTimeouts(httplib::Client* client, int64_t connect_ms, int64_t read_ms,
                       int64_t write_ms);

// What went wrong when a call got no HTTP answer, in words for logs and /readyz (no URL, no
// header: nothing secret).
std::string NetworkErrorText(httplib::Error error);

}  // namespace ledger::http
