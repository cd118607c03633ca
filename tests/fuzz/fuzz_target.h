// The fuzz targets' entry functions (tests/fuzz/<target>.cc, one each): libFuzzer's
// LLVMFuzzerTestOneInput in the clang fuzzer build (LEDGER_BUILD_FUZZERS, one binary per target),
// and the same functions run over the checked-in corpora by fuzz_test (corpus_test.cc) in the
// ordinary build, so that every build keeps the found inputs as regression cases.
//
// A target returns 0 (libFuzzer's convention) and aborts through LEDGER_FUZZ_CHECK when an
// invariant fails; crashes, leaks and sanitizer reports end the run by themselves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#ifdef LEDGER_FUZZER
// UBSan stops at any report but the suppressed ones (tests/fuzz/ubsan.supp).
#define LEDGER_FUZZ_TARGET(fn)                                                \
  extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { \
    return fn(data, size);                                                    \
  }                                                                           \
  extern "C" const char* __ubsan_default_options() {                         \
    return "halt_on_error=1:print_stacktrace=1:suppressions=" LEDGER_FUZZ_UBSAN_SUPPRESSIONS; \
  }
#else
#define LEDGER_FUZZ_TARGET(fn)
#endif

#define LEDGER_FUZZ_CHECK(condition)                                                           \
  do {                                                                                         \
    if (!(condition)) {                                                                        \
      std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (false)

namespace ledger::fuzz {

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// The part of `*rest` before the first '\n' (all of it when there is none); *rest keeps what
// follows the '\n'. Targets that take several inputs take them as lines, so that the corpora stay
// readable.
inline std::string_view TakeLine(std::string_view* rest) {
  const size_t lf = rest->find('\n');
  const std::string_view line = rest->substr(0, lf);
  rest->remove_prefix(lf == std::string_view::npos ? rest->size() : lf + 1);
  return line;
}

int FuzzLoopRequest(const uint8_t* data, size_t size);
int FuzzChunkedFraming(const uint8_t* data, size_t size);
int FuzzRequestHead(const uint8_t* data, size_t size);
int FuzzStripeSignature(const uint8_t* data, size_t size);
int FuzzJwt(const uint8_t* data, size_t size);
int FuzzLagoSignature(const uint8_t* data, size_t size);
int FuzzUsageBodies(const uint8_t* data, size_t size);
int FuzzStripeWebhook(const uint8_t* data, size_t size);
int FuzzLagoWebhook(const uint8_t* data, size_t size);

}  // namespace ledger::fuzz
