// GateCommand: an AppendCommand whose Decide() blocks until the test opens the gate.
//
// Production deciders must not block; in tests that is the point: while the leader is held in
// the gate's Decide(), later Submit() calls queue up, so the test knows exactly which commands the
// next leader takes as one group (every command queued when the gate opens that fits the group
// limits). Thread safety: Open() and WaitUntilDeciding() from the test thread, Decide() on the
// leader.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>

#include "tests/support/test_ledger.h"

namespace ledger::testing {

class GateCommand : public AppendCommand {
 public:
  explicit GateCommand(std::string subject, size_t count = 1)
      : AppendCommand(std::move(subject), count) {}

  Status Decide(const DecideContext& context, Decision* decision) override {
    {
      std::unique_lock<std::mutex> l(mu_);
      deciding_ = true;
      cv_.notify_all();
      cv_.wait(l, [this] { return open_; });
    }
    return AppendCommand::Decide(context, decision);
  }

  void WaitUntilDeciding() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [this] { return deciding_; });
  }

  void Open() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool deciding_ = false;
  bool open_ = false;
};

}  // namespace ledger::testing
