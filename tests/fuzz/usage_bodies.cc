// The bodies of POST /api/v1/usage/consume and /usage/events (http/usage_bodies.h). The first
// byte picks the reader:
//   'c'  a consume: an Idempotency-Key header line (empty: none), then the body, for a user;
//   'C'  the same for a service token;
//   'b'  a batch body.
// What is taken keeps the routes' rules: ids and keys within their limits, quantities in range,
// metadata a compact flat object that parses again as itself.
#include <rapidjson/document.h>

#include <string>
#include <string_view>
#include <vector>

#include "http/usage_bodies.h"
#include "projections/json_util.h"
#include "projections/limits.h"
#include "projections/plan_catalog.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

namespace {

namespace pj = ledger::projections;
namespace pl = ledger::projections::limits;

void CheckMetadata(const std::string& metadata_json) {
  if (metadata_json.empty()) return;
  rapidjson::Document doc;
  LEDGER_FUZZ_CHECK(pj::ParseJsonObject(metadata_json, &doc).ok());
  LEDGER_FUZZ_CHECK(doc.MemberCount() <= pl::kUsageMetadataPropertiesMax);
  for (const auto& m : doc.GetObject()) {
    LEDGER_FUZZ_CHECK(!m.value.IsObject() && !m.value.IsArray());
  }
}

}  // namespace

int FuzzUsageBodies(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const char mode = static_cast<char>(data[0]);
  std::string_view rest = AsText(data + 1, size - 1);
  if (mode == 'c' || mode == 'C') {
    httplib::Request req;
    const std::string_view key = TakeLine(&rest);
    if (!key.empty()) req.set_header("Idempotency-Key", std::string(key));
    req.body = std::string(rest);
    http::Identity identity;
    identity.kind = mode == 'c' ? http::Identity::Kind::kUser : http::Identity::Kind::kService;
    identity.subject = mode == 'c' ? "fuzz-user" : "fuzz-service";
    pj::ConsumeRequest consume;
    const Status s = http::ParseConsume(req, identity, &consume);
    if (!s.ok()) {
      LEDGER_FUZZ_CHECK(s.code() == Code::kInvalidArgument || s.code() == Code::kNotFound ||
                        s.code() == Code::kUnprocessable);
      return 0;
    }
    LEDGER_FUZZ_CHECK(pj::IsValidUserId(consume.user_id));
    LEDGER_FUZZ_CHECK(mode == 'C' || consume.user_id == identity.subject);
    LEDGER_FUZZ_CHECK(pj::IsKnownService(consume.service));
    LEDGER_FUZZ_CHECK(consume.quantity >= 1 && consume.quantity <= pl::kUsageConsumeQuantityMax);
    LEDGER_FUZZ_CHECK(!consume.idempotency_key.empty() && pj::IsValidUtf8(consume.idempotency_key));
    CheckMetadata(consume.metadata_json);
  } else if (mode == 'b') {
    std::vector<pj::UsageBatchItem> items;
    const Status s = http::ParseBatch(std::string(rest), &items);
    if (!s.ok()) {
      LEDGER_FUZZ_CHECK(s.code() == Code::kInvalidArgument || s.code() == Code::kPayloadTooLarge ||
                        s.code() == Code::kUnprocessable);
      return 0;
    }
    LEDGER_FUZZ_CHECK(!items.empty() && items.size() <= pl::kUsageBatchItemsMax);
    for (const pj::UsageBatchItem& item : items) {
      LEDGER_FUZZ_CHECK(item.idempotency_key.empty() || pj::IsValidUtf8(item.idempotency_key));
      if (!item.invalid_reason.empty()) continue;
      LEDGER_FUZZ_CHECK(pj::IsValidUserId(item.user_id));
      LEDGER_FUZZ_CHECK(pj::IsKnownService(item.service));
      LEDGER_FUZZ_CHECK(item.quantity >= 1 && item.quantity <= pl::kUsageBatchQuantityMax);
      LEDGER_FUZZ_CHECK(!item.idempotency_key.empty());
      CheckMetadata(item.metadata_json);
    }
  }
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzUsageBodies)
