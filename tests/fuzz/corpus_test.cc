// Every fuzz target's checked-in corpus (tests/fuzz/corpus/<target>/: the seeds and the inputs
// that found bugs) run through the target's entry function in the ordinary build, so that the
// gcc ASan/UBSan build keeps them as regression cases without clang. A target aborts on a broken
// invariant; a sanitizer report fails the run as in any test.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {
namespace {

struct Target {
  const char* name;
  int (*run)(const uint8_t*, size_t);
};

class CorpusTest : public ::testing::TestWithParam<Target> {};

TEST_P(CorpusTest, EveryInputRunsCleanly) {
  const std::filesystem::path dir =
      std::filesystem::path(LEDGER_SOURCE_DIR) / "tests/fuzz/corpus" / GetParam().name;
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  size_t inputs = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string input((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    SCOPED_TRACE(entry.path().string());
    EXPECT_EQ(GetParam().run(reinterpret_cast<const uint8_t*>(input.data()), input.size()), 0);
    ++inputs;
  }
  EXPECT_GT(inputs, 0u) << "no corpus for " << GetParam().name;
}

INSTANTIATE_TEST_SUITE_P(
    Targets, CorpusTest,
    ::testing::Values(Target{"loop_request", FuzzLoopRequest},
                      Target{"chunked_framing", FuzzChunkedFraming},
                      Target{"request_head", FuzzRequestHead},
                      Target{"stripe_signature", FuzzStripeSignature}, Target{"jwt", FuzzJwt},
                      Target{"lago_signature", FuzzLagoSignature},
                      Target{"usage_bodies", FuzzUsageBodies},
                      Target{"stripe_webhook", FuzzStripeWebhook},
                      Target{"lago_webhook", FuzzLagoWebhook}),
    [](const ::testing::TestParamInfo<Target>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace ledger::fuzz
