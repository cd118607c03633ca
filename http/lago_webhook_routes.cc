// POST /api/v1/webhooks/lago (policy signature).
//
//   1. 503 "lago_webhook_not_configured" when neither LAGO_WEBHOOK_HMAC_KEY nor
//      LAGO_WEBHOOK_PUBLIC_KEY_FILE is set (and when the delivery's mode has no key).
//   2. X-Lago-Signature is verified over req.body exactly as received, in the mode named by
//      X-Lago-Signature-Algorithm (http/lago_signature.h): 400 "invalid_signature" for a missing,
//      repeated, malformed or non-matching signature, a jwt whose `data` is not the body or whose
//      `iss` is not LAGO_WEBHOOK_ISSUER (checked only when that is set).
//   3. X-Lago-Unique-Key is required (400 "missing_unique_key"; "invalid_unique_key" when not
//      1..255 visible ASCII characters), except from a Lago old enough to send no
//      X-Lago-Signature-Algorithm: its delivery is named "sha256:<hex of the body>". The body
//      must be a Lago webhook (`webhook_type`, `object_type`): else 400 "malformed_event"; 413
//      beyond projections::limits::kLagoWebhookBytesMax in jwt mode (the signature embeds the
//      body) and kLagoWebhookPayloadBytesMax in hmac mode (what one event's data holds).
//   4. With LAGO_ORGANIZATION_ID set, the body's `organization_id` (lago-api puts it beside
//      webhook_type in every payload) must equal it: else 403 "wrong_organization" (a valid
//      signature for another tenant). jwt mode needs this on a shared Lago: Lago signs every
//      organization's deliveries with its one instance-wide RSA key, so the signature only
//      proves "this Lago instance". hmac keys are per organization, but the check applies alike.
//      (A Lago old enough to put no organization_id in its payloads is refused: leave it unset.)
//   5. One IngestLagoWebhook command (projections/lago.h): dedupe on the unique key, then
//      lago.webhook_received.v1 + the derived state change in one synced write. 200
//      {"received":true,"unique_key","webhook_type","duplicate","repeat_of_unique_key","derived"}
//      only after that write; a redelivery (same unique key) answers 200 with "duplicate":true
//      and "derived":[] (the first delivery's answer otherwise) and appends nothing. A body
//      delivered before under another key is recorded, naming that key in
//      repeat_of_unique_key.
//   6. An `events.errors` delivery newly recorded (Lago's post-validation job: usage it accepted
//      and cannot bill, e.g. under a code no billable metric has) is counted by kind in
//      ledger_lago_events_errors_total (http/lago_webhook_metrics.h) and logged at warn with
//      the counts and the first transaction ids of each kind.
// Nothing is appended on any 4xx/5xx. Lago retries non-2xx answers (LAGO_WEBHOOK_ATTEMPTS, 3 by
// default) with the same unique key.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>

#include "events/types.h"
#include "http/lago_signature.h"
#include "http/lago_webhook_metrics.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/lago.h"

namespace ledger::http {

namespace {

constexpr char kWebhookPath[] = "/api/v1/webhooks/lago";
constexpr char kSignatureHeader[] = "X-Lago-Signature";
constexpr char kAlgorithmHeader[] = "X-Lago-Signature-Algorithm";
constexpr char kUniqueKeyHeader[] = "X-Lago-Unique-Key";
// Transaction ids of each events.errors kind named in the log line, and their bytes at most.
constexpr size_t kLoggedIdsMax = 5;
constexpr size_t kLoggedIdBytesMax = 128;

// Counts and logs an events.errors delivery: {"events_errors":{"<kind>":[transaction ids]}}.
void ReportEventsErrors(const rapidjson::Document& payload, const std::string& unique_key,
                        LagoWebhookMetrics* metrics) {
  auto errors = payload.FindMember("events_errors");
  if (errors == payload.MemberEnd() || !errors->value.IsObject()) return;
  std::string summary;
  for (size_t kind = 0; kind < kLagoEventsErrorKinds.size(); ++kind) {
    const std::string name(kLagoEventsErrorKinds[kind]);
    auto ids = errors->value.FindMember(name.c_str());
    if (ids == errors->value.MemberEnd() || !ids->value.IsArray() || ids->value.Empty()) {
      continue;
    }
    const rapidjson::SizeType count = ids->value.Size();
    if (metrics != nullptr) metrics->AddEventsErrors(kind, count);
    summary += (summary.empty() ? "" : "; ") + name + " " + std::to_string(count) + " [";
    for (rapidjson::SizeType i = 0; i < count && i < kLoggedIdsMax; ++i) {
      const rapidjson::Value& id = ids->value[i];
      if (i > 0) summary += ", ";
      summary += id.IsString() ? std::string(id.GetString(),
                                             std::min<size_t>(id.GetStringLength(),
                                                              kLoggedIdBytesMax))
                               : "?";
    }
    summary += count > kLoggedIdsMax ? ", ...]" : "]";
  }
  if (summary.empty()) return;
  spdlog::warn("lago webhooks: Lago reports usage events it cannot bill (events.errors, delivery "
               "{}): {}; check LAGO_BILLABLE_METRIC_CODE against Lago's billable metrics",
               unique_key, summary);
}

// True when the delivery's top-level `organization_id` is the string `organization_id`.
bool IsForOrganization(const projections::LagoWebhook& webhook,
                       const std::string& organization_id) {
  const rapidjson::Document& payload = *webhook.payload;
  auto it = payload.FindMember("organization_id");
  return it != payload.MemberEnd() && it->value.IsString() &&
         std::string_view(it->value.GetString(), it->value.GetStringLength()) == organization_id;
}

void HandleWebhook(Ledger* ledger, const LagoSignatureVerifier* verifier,
                   const std::string& organization_id, LagoWebhookMetrics* metrics,
                   const httplib::Request& req, httplib::Response& res) {
  if (ledger == nullptr) {
    WriteProblem(503, "storage_unavailable", "the event store is not open", &res);
    return;
  }
  if (verifier == nullptr || !verifier->configured()) {
    WriteProblem(
        503, "lago_webhook_not_configured",
        "set LAGO_WEBHOOK_HMAC_KEY or LAGO_WEBHOOK_PUBLIC_KEY_FILE to accept Lago webhooks", &res);
    return;
  }
  if (req.get_header_value_count(kSignatureHeader) > 1 ||
      req.get_header_value_count(kAlgorithmHeader) > 1) {
    WriteProblem(400, "invalid_signature", "repeated X-Lago-Signature(-Algorithm) header", &res);
    return;
  }
  std::string mode;
  Status s = verifier->Verify(req.get_header_value(kAlgorithmHeader),
                              req.get_header_value(kSignatureHeader), req.body, &mode);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  std::string unique_key;
  if (req.has_header(kUniqueKeyHeader)) {
    if (req.get_header_value_count(kUniqueKeyHeader) > 1) {
      WriteProblem(400, "invalid_unique_key", "repeated X-Lago-Unique-Key header", &res);
      return;
    }
    unique_key = req.get_header_value(kUniqueKeyHeader);
  } else if (!req.has_header(kAlgorithmHeader)) {
    // Lago from before signature algorithms sent no X-Lago-Unique-Key either (both came later):
    // such a delivery is named by its bytes, so that Lago's retries of it count once.
    unique_key = "sha256:" + HexEncode(Sha256(req.body));
  } else {
    WriteProblem(400, "missing_unique_key", "X-Lago-Unique-Key is required", &res);
    return;
  }
  projections::LagoWebhook webhook;
  s = projections::ParseLagoWebhook(req.body, unique_key, mode, &webhook);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  if (!organization_id.empty() && !IsForOrganization(webhook, organization_id)) {
    WriteProblem(403, "wrong_organization",
                 "the delivery's organization_id is not LAGO_ORGANIZATION_ID: a Lago webhook "
                 "signed for another organization",
                 &res);
    return;
  }
  const bool events_errors = webhook.webhook_type == "events.errors";
  const std::shared_ptr<const rapidjson::Document> payload = webhook.payload;
  projections::IngestLagoWebhook command(std::move(webhook));
  CommandResult result = ledger->Submit(&command);
  if (!result.status.ok()) {
    WriteCommandResult(result, &res);
    return;
  }
  if (events_errors && !result.replayed) ReportEventsErrors(*payload, unique_key, metrics);
  std::string body =
      result.replayed ? projections::DuplicateLagoWebhookBody(result.body) : std::move(result.body);
  WriteJsonAt(200, std::move(body), result.position, &res);
}

}  // namespace

void AddLagoWebhookRoutes(const AppContext& context, RouteTable* routes) {
  LagoWebhookKeys keys;
  keys.hmac_key = context.lago_webhook_hmac_key;
  keys.public_key_pem = context.lago_webhook_public_key_pem;
  keys.issuer = context.lago_webhook_issuer;
  std::unique_ptr<LagoSignatureVerifier> created;
  Status s = LagoSignatureVerifier::Create(keys, &created);
  if (!s.ok()) {
    // The daemon validates the key at start (exit 78); a caller that did not answers 503.
    spdlog::error("lago webhooks disabled: {}", s.ToString());
  }
  std::shared_ptr<const LagoSignatureVerifier> verifier(std::move(created));
  Ledger* ledger = context.ledger;
  std::string organization_id = context.lago_organization_id;
  LagoWebhookMetrics* metrics = context.lago_webhook_metrics;
  routes->Add("POST", kWebhookPath, kWebhookPath, Policy::kSignature,
              [ledger, verifier, organization_id, metrics](
                  const httplib::Request& req, httplib::Response& res, const Identity&) {
                HandleWebhook(ledger, verifier.get(), organization_id, metrics, req, res);
              });
}

}  // namespace ledger::http
