#include "tools/bench.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>

#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::tools {
namespace {

// Short phases with few callers in `dir`, without waiting for the disk between them.
BenchOptions ShortRun(const testing::TempDir& dir) {
  BenchOptions options;
  options.base_dir = dir.path();
  options.callers = 8;
  options.batch_callers = 2;
  options.batch = 50;
  options.seconds = 0.5;
  options.warmup_seconds = 0.1;
  options.settle_seconds = 0;  // the figures are not the point here
  return options;
}

TEST(BenchTest, ShortRunOfEveryPhaseReportsFigures) {
  testing::TempDir dir;
  BenchOptions options = ShortRun(dir);
  std::vector<BenchPhaseResult> results;
  Status s = RunBench(options, &results);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(results.size(), 4u);  // single (threads), single (async), batch, open loop
  for (const BenchPhaseResult& r : results) {
    EXPECT_GT(r.events, 0u) << r.name;
    EXPECT_GT(r.events_per_second, 0) << r.name;
    EXPECT_GT(r.commands, 0u) << r.name;
    if (r.offered_rate == 0) {
      EXPECT_EQ(r.errors, 0u) << r.name;
    } else {
      // The open loop offers its rate whatever the latency: a stall of the disk or of a loaded
      // CI machine can fill the writer's bounded queue, and those commands are refused.
      EXPECT_LT(r.errors, r.commands) << r.name;
    }
    EXPECT_GT(r.groups_per_second, 0) << r.name;
    EXPECT_GE(r.events_per_group, 1) << r.name;
    EXPECT_LE(r.p50_ms, r.p99_ms) << r.name;
    EXPECT_GT(r.sync_ms_mean, 0) << r.name;  // every phase synced
    EXPECT_GT(r.slowest_sync_ms, 0) << r.name;
    EXPECT_GT(r.sync_p99_ms, 0) << r.name;
    EXPECT_LE(r.sync_p99_ms, r.slowest_sync_ms) << r.name;
  }
  EXPECT_EQ(results[0].name, "single-event, threads");
  EXPECT_EQ(results[1].name, "single-event, async");
  // Commands of 50 events. Not exact: the sample reads the commands' and the events' histograms
  // one after the other, and a group the committer records between the two reads is in one and
  // not the other (49.987 in a CI run).
  EXPECT_NEAR(results[2].events_per_group / results[2].commands_per_group, 50, 0.5);
  // Half the better of the two single-event rates.
  EXPECT_NEAR(results[3].offered_rate,
              std::max(results[0].events_per_second, results[1].events_per_second) / 2, 1);
  EXPECT_GT(results[3].syncs_per_second, 0);
  std::string report = FormatBenchReport(options, results);
  EXPECT_NE(report.find("single-event, async"), std::string::npos) << report;
  EXPECT_NE(report.find("fsyncs/s"), std::string::npos) << report;
  EXPECT_NE(report.find("fsync ms"), std::string::npos) << report;
  EXPECT_NE(report.find("fsync p99"), std::string::npos) << report;
  EXPECT_NE(report.find("target: batched"), std::string::npos) << report;
  // Every store was removed.
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// Before each phase the bench waits for the disk (here: for at most 1 s, less than the 5 s it
// always watches the disk for) and says so on the progress stream.
TEST(BenchTest, WaitsForTheDiskBeforeEachPhaseAndSaysSo) {
  testing::TempDir dir;
  BenchOptions options = ShortRun(dir);
  options.seconds = 0.3;
  options.batched = false;
  options.latency = false;
  options.settle_seconds = 1;
  std::ostringstream progress;
  options.progress = &progress;
  std::vector<BenchPhaseResult> results;
  Status s = RunBench(options, &results);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(results.size(), 2u);
  // "(waited <n> s for the disk to settle before the phase)", n >= 1 (more if a sync stalled).
  const std::string text = progress.str();
  constexpr std::string_view kWaited = "(waited ";
  size_t waits = 0;
  for (size_t at = text.find(kWaited); at != std::string::npos; at = text.find(kWaited, at + 1)) {
    const size_t end = text.find('\n', at);
    const std::string line = text.substr(at, end - at);
    EXPECT_NE(line.find(" s for the disk to settle before the phase)"), std::string::npos) << line;
    EXPECT_GE(std::atoi(line.c_str() + kWaited.size()), 1) << line;
    ++waits;
  }
  EXPECT_EQ(waits, 2u) << text;
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));  // the probe file is gone too
}

// Numbers are decimal and bounded: CLI11 alone took "-1" as 2^64 event bytes (an abort in a
// caller thread), "010" as 8 and "nan" or "1e9" as given. The scratch directory is a regular
// file, so a command that gets past its options fails at once creating its store (74): no bench
// runs, fixed or not.
TEST(BenchCliTest, BadNumbersAreUsageErrorsBeforeAnythingRuns) {
  testing::TempDir dir;
  const std::string file = dir.Sub("not-a-directory");
  { std::ofstream(file) << "x"; }
  const std::string bench = "bench --mode single --settle 0 --data-dir " + file + " ";
  for (const std::string args :
       {"--event-bytes -1 --seconds 1", "--batch 010", "--batch 0", "--batch 10001",
        "--event-bytes 1048577", "--callers 0", "--callers 010", "--batch-callers -1",
        "--batch-callers 4097", "--seconds 1e3", "--seconds nan", "--seconds 86401",
        "--warmup -1", "--warmup 0x10", "--rate inf", "--rate 10000001", "--seconds 00.5",
        "--sync-interval-min-us 010", "--background-write-pace nan",
        "--background-write-pace 1e1"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = testing::RunLedgerctl(bench + args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 64) << r.out;
  }
  // What is in range passes (and stops at the store).
  for (const std::string args : {"--seconds 0.5 --warmup 0 --rate 2500.5", "--batch 10000",
                                 "--event-bytes 1048576 --callers 4096 --batch-callers 1"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = testing::RunLedgerctl(bench + args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 74) << r.out;
  }
  // bench http and bench admin take numbers by the same rules (refused before any connection or
  // store: port 1 has no server).
  for (const std::string args :
       {"http --url http://127.0.0.1:1 --seconds nan", "http --url http://127.0.0.1:1 --rate inf",
        "http --url http://127.0.0.1:1 --connections 010",
        "http --url http://127.0.0.1:1 --warmup 1e1", "http --url http://127.0.0.1:1 --batch -1",
        "http --url http://127.0.0.1:1 --batch-users 0x10", "admin --subscribers 010",
        "admin --rounds 1e2"}) {
    SCOPED_TRACE(args);
    testing::ProcessResult r = testing::RunLedgerctl("bench " + args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 64) << r.out;
  }
}

}  // namespace
}  // namespace ledger::tools
