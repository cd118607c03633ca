// ledgerctl bench admin (tools/bench_admin.h): seeds subscribers, times each admin view, and its
// overview counts exactly what it seeded.
#include "tools/bench_admin.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <filesystem>

#include "tests/support/test_ledger.h"

namespace ledger::tools {
namespace {

TEST(BenchAdminTest, TimesEveryViewOverTheSubscribersItSeeded) {
  testing::TempDir dir;
  AdminBenchOptions options;
  options.base_dir = dir.path();
  options.subscribers = 120;
  options.rounds = 2;
  AdminBenchResult result;
  Status s = RunAdminBench(options, &result);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(result.views.size(), 5u);
  for (const AdminBenchView& v : result.views) {
    EXPECT_GT(v.median_ms, 0) << v.name;
    EXPECT_GE(v.max_ms, v.median_ms) << v.name;
    EXPECT_GT(v.output_bytes, 0u) << v.name;
  }
  rapidjson::Document overview;
  overview.Parse(result.overview_json.c_str());
  ASSERT_TRUE(overview.IsObject()) << result.overview_json;
  // 120 users, one in four on the trial plan (trialing); of the 90 on paid plans, those with
  // i % 10 == 9 are canceled: i = 9, 19, ..., 119 without the multiples of 4 (none: all odd).
  EXPECT_EQ(overview["subscribers"]["total"].GetInt64(), 120);
  EXPECT_EQ(overview["subscribers"]["trialing"].GetInt64(), 30);
  EXPECT_EQ(overview["subscribers"]["by_status"]["canceled"].GetInt64(), 12);
  EXPECT_EQ(overview["churn"]["churned"].GetInt64(), 12);
  const std::string report = FormatAdminBenchReport(options, result);
  EXPECT_NE(report.find("analytics/overview"), std::string::npos) << report;
  EXPECT_NE(report.find("us per subscriber"), std::string::npos) << report;
  // The store is removed afterwards.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace ledger::tools
