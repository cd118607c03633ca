#include "tests/support/test_ledger.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <random>

namespace ledger::testing {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = (std::filesystem::temp_directory_path() /
           ("ledgerd-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
            std::to_string(rd())))
              .string();
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::unique_ptr<Ledger> OpenTestLedger(const LedgerOptions& options) {
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ledger;
}

Status AppendCommand::Decide(const DecideContext& context, Decision* decision) {
  for (size_t i = 0; i < count_; ++i) {
    std::string data = "{\"n\":" + std::to_string(context.head.value() + i + 1);
    if (!pad_.empty()) data += ",\"pad\":\"" + pad_ + "\"";
    decision->events.push_back(NewEvent{type_, subject_, data + "}"});
  }
  decision->body = "{\"ok\":true}";
  return Status::OK();
}

Status SubjectsCommand::Decide(const DecideContext&, Decision* decision) {
  for (const std::string& subject : subjects_) {
    decision->events.push_back(NewEvent{"test.appended.v1", subject, "{}"});
  }
  decision->body = "{}";
  return Status::OK();
}

}  // namespace ledger::testing
