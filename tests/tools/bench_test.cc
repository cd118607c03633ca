#include "tools/bench.h"

#include <gtest/gtest.h>

#include "tests/support/test_ledger.h"

namespace ledger::tools {
namespace {

TEST(BenchTest, ShortRunOfEveryPhaseReportsFigures) {
  testing::TempDir dir;
  BenchOptions options;
  options.base_dir = dir.path();
  options.callers = 8;
  options.batch_callers = 2;
  options.batch = 50;
  options.seconds = 0.5;
  options.warmup_seconds = 0.1;
  std::vector<BenchPhaseResult> results;
  Status s = RunBench(options, &results);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(results.size(), 3u);
  for (const BenchPhaseResult& r : results) {
    EXPECT_GT(r.events, 0u) << r.name;
    EXPECT_GT(r.events_per_second, 0) << r.name;
    EXPECT_GT(r.commands, 0u) << r.name;
    EXPECT_EQ(r.errors, 0u) << r.name;
    EXPECT_GT(r.groups_per_second, 0) << r.name;
    EXPECT_GE(r.events_per_group, 1) << r.name;
    EXPECT_LE(r.p50_ms, r.p99_ms) << r.name;
  }
  EXPECT_NEAR(results[1].events_per_group / results[1].commands_per_group, 50, 0.01);
  EXPECT_NEAR(results[2].offered_rate, results[0].events_per_second / 2, 1);
  std::string report = FormatBenchReport(options, results);
  EXPECT_NE(report.find("single-event commands"), std::string::npos) << report;
  EXPECT_NE(report.find("target: batched"), std::string::npos) << report;
  // Every store was removed.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace ledger::tools
