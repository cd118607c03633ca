#include "http/call_deadline.h"

#include <httplib.h>

namespace ledger::http {

CallDeadline::CallDeadline(httplib::Client* client, std::chrono::milliseconds timeout)
    : thread_([this, client, deadline = std::chrono::steady_clock::now() + timeout] {
        Watch(client, deadline);
      }) {}

void CallDeadline::Watch(httplib::Client* client,
                         std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (cv_.wait_until(lock, deadline, [this] { return done_; })) return;
  passed_ = true;
  // Again until the call returns: a stop() before the request took its socket is lost.
  do {
    lock.unlock();
    client->stop();
    lock.lock();
  } while (!cv_.wait_for(lock, std::chrono::milliseconds(50), [this] { return done_; }));
}

bool CallDeadline::Finish() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  return passed_;
}

}  // namespace ledger::http
