// WaitFor: polls `condition` until it holds or `timeout` passes (the machine may be loaded, so
// tests give generous bounds). Returns whether it held; the last check is made at the deadline.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace ledger::testing {

inline bool WaitFor(const std::function<bool()>& condition,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30),
                    std::chrono::milliseconds poll = std::chrono::milliseconds(1)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(poll);
  }
  return condition();
}

}  // namespace ledger::testing
