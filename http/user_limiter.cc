#include "http/user_limiter.h"

#include <algorithm>

#include "http/limits.h"
#include "http/problem.h"

namespace ledger::http {

int64_t UserLimiter::Take(const std::string& user, int64_t now_us) {
  const int64_t tolerance = (burst_ - 1) * interval_us_;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = due_us_.find(user);
  if (it == due_us_.end()) {
    if (due_us_.size() >= limits::kRateLimitedUsersMax) {
      std::erase_if(due_us_, [now_us](const auto& entry) { return entry.second <= now_us; });
      if (due_us_.size() >= limits::kRateLimitedUsersMax) return interval_us_;
    }
    it = due_us_.emplace(user, now_us).first;
  }
  const int64_t due = std::max(it->second, now_us);
  if (due - now_us > tolerance) return due - now_us - tolerance;
  it->second = due + interval_us_;
  return 0;
}

void UserLimiter::GiveBack(const std::string& user) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = due_us_.find(user);
  // Gone: the bucket was full again (or never held), so there is nothing to return. A due time
  // in the past counts as full in Take() (std::max with now).
  if (it != due_us_.end()) it->second -= interval_us_;
}

bool UserLimiter::TakeOrRefuse(const std::string& user, int64_t now_us, std::string_view what,
                               httplib::Response& res) {
  const int64_t wait_us = Take(user, now_us);
  if (wait_us == 0) return true;
  WriteProblem(429, "rate_limited",
               std::string(what) + " at most " + std::to_string(burst_) +
                   " at once, then one every " + std::to_string(interval_us_ / 1'000'000) +
                   " s; retry later",
               &res);
  res.set_header("Retry-After", std::to_string((wait_us + 999'999) / 1'000'000));
  return false;
}

}  // namespace ledger::http
