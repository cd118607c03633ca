// Ledger commit listeners (events/ledger.h): several consumers (the Kafka outbox, the Lago sink)
// each get the new head after every committed group; a removed listener is never called again,
// also while other threads keep committing.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "events/ledger.h"
#include "tests/support/test_ledger.h"

namespace ledger {
namespace {

using testing::AppendCommand;
using testing::TempDir;

TEST(CommitListenerTest, EveryListenerSeesEveryCommitUntilRemoved) {
  TempDir dir;
  LedgerOptions options;
  options.path = dir.Sub("ledger");
  std::unique_ptr<Ledger> ledger;
  ASSERT_TRUE(Ledger::Open(options, &ledger).ok());

  std::atomic<uint64_t> first_head{0}, second_head{0};
  std::atomic<int> first_calls{0}, second_calls{0};
  const uint64_t first = ledger->AddCommitListener([&](Position head) {
    first_head = head.value();
    ++first_calls;
  });
  const uint64_t second = ledger->AddCommitListener([&](Position head) {
    second_head = head.value();
    ++second_calls;
  });
  EXPECT_NE(first, 0u);
  EXPECT_NE(first, second);

  AppendCommand append("s", 3);
  ASSERT_TRUE(ledger->Submit(&append).status.ok());
  EXPECT_EQ(first_head.load(), 3u);
  EXPECT_EQ(second_head.load(), 3u);

  ledger->RemoveCommitListener(first);
  ledger->RemoveCommitListener(12345);  // unknown: ignored
  const int first_before = first_calls.load();
  AppendCommand more("s", 2);
  ASSERT_TRUE(ledger->Submit(&more).status.ok());
  EXPECT_EQ(first_calls.load(), first_before);
  EXPECT_EQ(second_head.load(), 5u);

  // Removal while other threads commit: once RemoveCommitListener returns, no call is running
  // or will run, so the listener's state may be destroyed.
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&] {
      while (!stop) {
        AppendCommand c("w");
        ASSERT_TRUE(ledger->Submit(&c).status.ok());
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    auto alive = std::make_unique<std::atomic<int>>(0);
    std::atomic<int>* counter = alive.get();
    const uint64_t id = ledger->AddCommitListener([counter](Position) { ++*counter; });
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    ledger->RemoveCommitListener(id);
    alive.reset();  // ASan reports a use after free if a call were still running or to come
  }
  stop = true;
  for (std::thread& w : writers) w.join();
  ledger->RemoveCommitListener(second);
}

}  // namespace
}  // namespace ledger
