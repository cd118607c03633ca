// POST /api/v1/billing/webhooks/stripe (policy signature).
//
//   1. 503 "stripe_webhook_not_configured" when no STRIPE_WEBHOOK_SECRET is set.
//   2. The `Stripe-Signature` header is verified over req.body exactly as received
//      (http/stripe_signature.h): 400 "invalid_signature" for a missing, repeated, malformed,
//      stale, future or non-matching signature.
//   3. The body must be a Stripe event (id, type, created): else 400 "malformed_event"; 413 beyond
//      projections::limits::kStripeWebhookBytesMax.
//   4. One IngestStripeWebhook command (projections/stripe_webhook.h): dedupe on the event id,
//      then stripe.webhook_received.v1 + the derived events in one synced write. 200
//      {"received":true,"event_id","type","duplicate","derived"} only after that write; a
//      duplicate answers 200 with "duplicate":true and "derived":[] (the first delivery's answer
//      otherwise) and appends nothing. A delivery whose
//      `livemode` differs from the configured key's mode (AppContext::stripe_livemode) or from
//      the mode of every secret that signed it (`test:`/`live:` entries; a bare one is of the
//      key's mode until it signs a delivery of the other mode, then of that mode until a restart),
//      or that carries `account` (Connect), is kept but applied to nothing: 200 with
//      "derived":[] and "ignored":"livemode_mismatch" / "connected_account", so that Stripe stops
//      sending it.
// Nothing is appended on any 4xx. Stripe retries non-2xx answers for up to three days.
#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "http/problem.h"
#include "http/routes.h"
#include "http/stripe_signature.h"
#include "projections/stripe_webhook.h"

namespace ledger::http {

namespace {

constexpr char kWebhookPath[] = "/api/v1/billing/webhooks/stripe";
constexpr char kSignatureHeader[] = "Stripe-Signature";

// The verifier holds secrets[i].secret at index i. A bare entry (no `test:`/`live:`) is of the
// key's mode; one that signs a delivery of the other mode is that mode's endpoint secret -- the
// way both were listed before entries had modes -- and is taken as that mode from then on
// (`other_mode[i]`, until a restart; logged so that the operator writes its prefix): before, its
// holder could sign bodies claiming the key's mode.
struct WebhookSecrets {
  std::vector<StripeWebhookSecret> secrets;
  StripeSignatureVerifier verifier;
  std::unique_ptr<std::atomic<bool>[]> other_mode;

  std::optional<bool> ModeOf(size_t i) const {
    const std::optional<bool>& mode = secrets[i].livemode;
    if (mode && other_mode[i].load(std::memory_order_relaxed)) return !*mode;
    return mode;
  }
};

// A bare secret bound to the key's mode that signed a delivery of the other mode.
void NoteSecretOfTheOtherMode(const WebhookSecrets& secrets, const std::vector<bool>& matched,
                              bool delivery_livemode) {
  const char* const its = delivery_livemode ? "live" : "test";
  const char* const keys = delivery_livemode ? "test" : "live";
  for (size_t i = 0; i < matched.size(); ++i) {
    const StripeWebhookSecret& secret = secrets.secrets[i];
    if (!matched[i] || !secret.bare || !secret.livemode ||
        *secret.livemode == delivery_livemode) {
      continue;
    }
    if (secrets.other_mode[i].exchange(true)) continue;
    spdlog::error(
        "stripe webhook: STRIPE_WEBHOOK_SECRET item {} has no mode, so it was taken as {} (the "
        "key's), but it signed a {}-mode delivery: it is a {} endpoint's secret, and whoever holds "
        "it could sign {} events. It is taken as {} until a restart; write it {}:whsec_...",
        i + 1, keys, its, its, keys, its, its);
  }
}

std::vector<std::string> SecretsOf(const std::vector<StripeWebhookSecret>& secrets) {
  std::vector<std::string> out;
  for (const StripeWebhookSecret& s : secrets) out.push_back(s.secret);
  return out;
}

void HandleWebhook(Ledger* ledger, const WebhookSecrets& secrets,
                   std::optional<bool> expected_livemode, const httplib::Request& req,
                   httplib::Response& res) {
  if (ledger == nullptr) {
    WriteProblem(503, "storage_unavailable", "the event store is not open", &res);
    return;
  }
  if (req.get_header_value_count(kSignatureHeader) > 1) {
    WriteProblem(400, "invalid_signature", "more than one Stripe-Signature header", &res);
    return;
  }
  std::vector<bool> matched;
  Status s = secrets.verifier.Verify(req.get_header_value(kSignatureHeader), req.body, &matched);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  projections::StripeWebhook webhook;
  s = projections::ParseStripeWebhook(req.body, &webhook);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  // Of the mode its body claims only when a secret of that mode (or of none) signed it.
  NoteSecretOfTheOtherMode(secrets, matched, webhook.livemode);
  bool signed_in_its_mode = false;
  for (size_t i = 0; i < matched.size(); ++i) {
    const std::optional<bool> mode = secrets.ModeOf(i);
    signed_in_its_mode |= matched[i] && (!mode || *mode == webhook.livemode);
  }
  projections::IngestStripeWebhook command(std::move(webhook), expected_livemode,
                                           signed_in_its_mode);
  CommandResult result = ledger->Submit(&command);
  if (!result.status.ok()) {
    WriteCommandResult(result, &res);
    return;
  }
  std::string body =
      result.replayed ? projections::DuplicateWebhookBody(result.body) : std::move(result.body);
  WriteJsonAt(200, std::move(body), result.position, &res);
}

}  // namespace

void AddStripeWebhookRoutes(const AppContext& context, RouteTable* routes) {
  const std::optional<bool> livemode = context.stripe_livemode;
  std::vector<StripeWebhookSecret> bound;
  for (const std::string& entry : context.stripe_webhook_secrets) {
    bound.push_back(ParseStripeWebhookSecret(entry, livemode));
  }
  const size_t bare_count = static_cast<size_t>(std::count_if(
      bound.begin(), bound.end(), [](const StripeWebhookSecret& s) { return s.bare; }));
  if (livemode == true && bare_count >= 2) {
    spdlog::warn(
        "stripe webhook: {} secrets without a mode beside a live key are all taken as live; if one "
        "is a test endpoint's, write it test:whsec_... (until it signs a test-mode delivery, its "
        "holder could sign live events)",
        bare_count);
  }
  const size_t count = bound.size();
  std::vector<std::string> plain = SecretsOf(bound);
  auto secrets = std::make_shared<const WebhookSecrets>(
      WebhookSecrets{std::move(bound), StripeSignatureVerifier(std::move(plain), context.clock),
                     std::make_unique<std::atomic<bool>[]>(count)});
  Ledger* ledger = context.ledger;
  routes->Add("POST", kWebhookPath, kWebhookPath, Policy::kSignature,
              [ledger, secrets, livemode](const httplib::Request& req, httplib::Response& res,
                                          const Identity&) {
                HandleWebhook(ledger, *secrets, livemode, req, res);
              });
}

}  // namespace ledger::http
