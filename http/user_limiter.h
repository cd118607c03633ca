// UserLimiter: requests per user, as a token bucket per user (GCRA), for the routes whose every
// call costs something outside this server or appends a permanent event (BYOK key tests and
// changes, the Stripe-calling billing routes).
#pragma once

#include <httplib.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace ledger::http {

// A burst of `burst`, then one per `interval_us`. In memory: a restart fills every bucket. A
// user whose bucket is full again is forgotten, so only recent users are held (at most
// limits::kRateLimitedUsersMax; beyond, a new one waits as if empty).
//
// Thread safety: every method may be called from any thread.
class UserLimiter {
 public:
  UserLimiter(int64_t burst, int64_t interval_us) : burst_(burst), interval_us_(interval_us) {}

  // 0 when `user` may go on now (and is counted), else the microseconds to wait.
  int64_t Take(const std::string& user, int64_t now_us);

  // Take(), or false after a 429 rate_limited with Retry-After naming the limit on `what`.
  bool TakeOrRefuse(const std::string& user, int64_t now_us, std::string_view what,
                    httplib::Response& res);

  // Returns one Take() of `user`'s: for a request that was counted before the writer refused it
  // from ledgerd's own state (nothing appended, no one outside asked). A bucket it would
  // overfill stays full.
  void GiveBack(const std::string& user);

 private:
  const int64_t burst_;
  const int64_t interval_us_;
  std::mutex mu_;
  // When each user's bucket is full again (GCRA's theoretical arrival time).
  std::unordered_map<std::string, int64_t> due_us_;  // guarded by mu_
};

}  // namespace ledger::http
