// A Lago delivery's body (verified) through projections::ParseLagoWebhook, then decided
// (IngestLagoWebhook: invoices and subscriptions) and folded. Up to 4 deliveries per input,
// separated by a "----" line, over the same rows, each under its own X-Lago-Unique-Key.
#include <string>
#include <string_view>

#include "projections/lago.h"
#include "tests/fuzz/fuzz_ledger.h"

namespace ledger::fuzz {

int FuzzLagoWebhook(const uint8_t* data, size_t size) {
  constexpr int64_t kNowUs = 1'750'000'000LL * 1'000'000;
  testing::MemoryState state;
  Position head;
  int n = 0;
  for (std::string_view body : Deliveries(AsText(data, size))) {
    const std::string unique_key = "fuzz-unique-key-" + std::to_string(++n);
    projections::LagoWebhook webhook;
    const Status s = projections::ParseLagoWebhook(std::string(body), unique_key,
                                                   n % 2 == 1 ? "hmac" : "jwt", &webhook);
    if (!s.ok()) {
      LEDGER_FUZZ_CHECK(s.code() == Code::kInvalidArgument || s.code() == Code::kPayloadTooLarge);
      continue;
    }
    rapidjson::Document redacted;
    LEDGER_FUZZ_CHECK(projections::ParseJsonObject(webhook.redacted_payload, &redacted).ok());
    projections::IngestLagoWebhook command(std::move(webhook));
    DecideAndFold(&command, &state, &head, kNowUs);
  }
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzLagoWebhook)
