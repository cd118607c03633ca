// ledgerctl's usage errors: exit 64 naming the options it does not know, never the arguments
// after them (as ledgerd's, daemon/cli_usage.h).

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::tools {
namespace {

using testing::RunLedgerctl;
using testing::TempDir;

// A mistyped flag's argument is its value: CLI11's ExtrasError printed "The following arguments
// were not expected: sk_live_... --secrt" for every subcommand (ledgerd already named the options
// only). Nothing runs: the data directory stays empty.
TEST(LedgerctlUsageTest, NamesUnknownOptionsNeverTheirValues) {
  // Shaped as a live key (put together here, so that no scan of the tree takes it for one).
  const std::string kKey = std::string("sk_") + "live_0123456789abcdef";
  TempDir dir;
  const std::string data = " --data-dir " + dir.path() + " ";
  struct Case {
    std::string args;
    std::vector<std::string> named;
  };
  const std::vector<Case> cases = {
      {"token" + data + "--sub a --secrt " + kKey, {"--secrt"}},
      {"--bogus " + kKey + " verify" + data, {"--bogus"}},
      {"verify" + data + "--form=" + kKey, {"--form"}},
      {"export" + data + "-k" + kKey, {"-k"}},
      {"replay" + data + kKey, {}},
      {"stripe-setup" + data + "--stripe-secret-key " + kKey, {"--stripe-secret-key"}},
      {"bench --callerz " + kKey, {"--callerz"}},
      {"bench http --url http://127.0.0.1:1 --tokn " + kKey, {"--tokn"}},
      {"bench admin --subscriber " + kKey + " --x", {"--subscriber", "--x"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.args);
    testing::ProcessResult r = RunLedgerctl(c.args, /*keep_stderr=*/true);
    EXPECT_EQ(r.exit_code, 64) << r.out;
    EXPECT_EQ(r.out.find("sk_live"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("0123456789abcdef"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(dir.path()), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(c.named.empty() ? "1 argument(s) no option takes" : "unknown option(s)"),
              std::string::npos)
        << r.out;
    for (const std::string& name : c.named) {
      EXPECT_NE(r.out.find(name), std::string::npos) << r.out;
    }
  }
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace ledger::tools
