// For the targets that decode a delivery into a command (stripe_webhook.cc, lago_webhook.cc):
// several deliveries in one input, each decided and folded in turn over the same in-memory rows
// (tests/support/memory_state.h) with every fold the daemon registers.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "events/ledger.h"
#include "projections/json_util.h"
#include "projections/registry.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/support/memory_state.h"

namespace ledger::fuzz {

// The deliveries of one input: separated by a line holding "----", at most 4.
inline std::vector<std::string_view> Deliveries(std::string_view input) {
  constexpr std::string_view kSeparator = "\n----\n";
  std::vector<std::string_view> out;
  while (out.size() < 4) {
    const size_t at = input.find(kSeparator);
    out.push_back(input.substr(0, at));
    if (at == std::string_view::npos) break;
    input.remove_prefix(at + kSeparator.size());
  }
  return out;
}

// Decides `command` and applies what it decides, as the writer would. A delivery that parsed is
// never refused past that (an error here would be a 500 that the sender retries for days), its
// answer is a JSON object, and every event it appends is one that every fold takes.
inline void DecideAndFold(Command* command, testing::MemoryState* state, Position* head,
                          int64_t now_us) {
  Decision decision;
  const Status s = testing::RunCommand(command, projections::AllFolds(), state, head, now_us,
                                       &decision);
  if (!s.ok()) {
    std::fprintf(stderr, "decided or folded with an error: %s\n", s.ToString().c_str());
  }
  LEDGER_FUZZ_CHECK(s.ok());
  rapidjson::Document doc;
  LEDGER_FUZZ_CHECK(projections::ParseJsonObject(decision.body, &doc).ok());
  for (const NewEvent& e : decision.events) {
    LEDGER_FUZZ_CHECK(projections::ParseJsonObject(e.data, &doc).ok());
  }
}

}  // namespace ledger::fuzz
