// Helpers for tests that need a real Ledger in a temporary directory.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "events/ledger.h"

namespace ledger::testing {

// A fresh, unique directory under the system temp dir, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Ledger::Open(options); when it fails, fails the current test (EXPECT) and returns null.
std::unique_ptr<Ledger> OpenTestLedger(const LedgerOptions& options);

// A command that appends `count` events of `type` for `subject`, with optional idempotency.
class AppendCommand : public Command {
 public:
  // `pad_bytes` > 0 adds a "pad" member of that many bytes to each event's data.
  AppendCommand(std::string subject, size_t count = 1, std::string type = "test.appended.v1",
                size_t pad_bytes = 0)
      : subject_(std::move(subject)), count_(count), type_(std::move(type)), pad_(pad_bytes, 'x') {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::string subject_;
  size_t count_;
  std::string type_;
  std::string pad_;
};

// A command that appends one "test.appended.v1" event (data {}) for each of `subjects`, in order.
class SubjectsCommand : public Command {
 public:
  explicit SubjectsCommand(std::vector<std::string> subjects) : subjects_(std::move(subjects)) {}
  Status Decide(const DecideContext& context, Decision* decision) override;

 private:
  std::vector<std::string> subjects_;
};

// A command whose Decide always fails with `status`.
class RejectCommand : public Command {
 public:
  explicit RejectCommand(Status status) : status_(std::move(status)) {}
  Status Decide(const DecideContext&, Decision*) override { return status_; }

 private:
  Status status_;
};

}  // namespace ledger::testing
