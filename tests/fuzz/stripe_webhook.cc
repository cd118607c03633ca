// A Stripe delivery's body (verified: the signature is not the question here) through
// projections::ParseStripeWebhook, then decided (IngestStripeWebhook: what the delivery derives,
// subscriptions, customer links, invoices) and folded. Up to 4 deliveries per input, separated by
// a "----" line, over the same rows, so that later ones meet what earlier ones left.
#include <string>
#include <string_view>

#include "projections/stripe_webhook.h"
#include "tests/fuzz/fuzz_ledger.h"

namespace ledger::fuzz {

int FuzzStripeWebhook(const uint8_t* data, size_t size) {
  constexpr int64_t kNowUs = 1'750'000'000LL * 1'000'000;
  testing::MemoryState state;
  Position head;
  for (std::string_view body : Deliveries(AsText(data, size))) {
    projections::StripeWebhook webhook;
    const Status s = projections::ParseStripeWebhook(std::string(body), &webhook);
    if (!s.ok()) {
      LEDGER_FUZZ_CHECK(s.code() == Code::kInvalidArgument || s.code() == Code::kPayloadTooLarge);
      continue;
    }
    LEDGER_FUZZ_CHECK(projections::IsDeliveredStripeId(webhook.event_id));
    // Redacted, the payload is still a JSON object.
    rapidjson::Document redacted;
    LEDGER_FUZZ_CHECK(projections::ParseJsonObject(webhook.redacted_payload, &redacted).ok());
    projections::IngestStripeWebhook command(std::move(webhook));
    DecideAndFold(&command, &state, &head, kNowUs);
  }
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzStripeWebhook)
