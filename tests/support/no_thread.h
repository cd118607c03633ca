// NoThreadForCallDeadlines: while it lives, a CallDeadline's watcher cannot start -- its starter
// throws std::system_error, as std::thread does where the process may start no more threads
// (cgroup pids, TasksMax, RLIMIT_NPROC). The destructor restores std::thread.
#pragma once

#include <functional>
#include <system_error>
#include <thread>

#include "http/call_deadline.h"

namespace ledger::testing {

class NoThreadForCallDeadlines {
 public:
  NoThreadForCallDeadlines() { http::SetCallDeadlineThreadStarter(&Refuse); }
  ~NoThreadForCallDeadlines() { http::SetCallDeadlineThreadStarter(nullptr); }
  NoThreadForCallDeadlines(const NoThreadForCallDeadlines&) = delete;
  NoThreadForCallDeadlines& operator=(const NoThreadForCallDeadlines&) = delete;

 private:
  static std::thread Refuse(std::function<void()>) {
    throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                            "pthread_create");
  }
};

}  // namespace ledger::testing
