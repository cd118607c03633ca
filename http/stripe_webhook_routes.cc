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
//      `livemode` differs from the configured key's mode (AppContext::stripe_livemode), or that
//      carries `account` (Connect), is kept but applied to nothing: 200 with "derived":[] and
//      "ignored":"livemode_mismatch" / "connected_account", so that Stripe stops sending it.
// Nothing is appended on any 4xx. Stripe retries non-2xx answers for up to three days.
#include <memory>
#include <optional>
#include <string>

#include "http/problem.h"
#include "http/routes.h"
#include "http/stripe_signature.h"
#include "projections/stripe_webhook.h"

namespace ledger::http {

namespace {

constexpr char kWebhookPath[] = "/api/v1/billing/webhooks/stripe";
constexpr char kSignatureHeader[] = "Stripe-Signature";

void HandleWebhook(Ledger* ledger, const StripeSignatureVerifier& verifier,
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
  Status s = verifier.Verify(req.get_header_value(kSignatureHeader), req.body);
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
  projections::IngestStripeWebhook command(std::move(webhook), expected_livemode);
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
  auto verifier =
      std::make_shared<const StripeSignatureVerifier>(context.stripe_webhook_secrets, context.clock);
  Ledger* ledger = context.ledger;
  const std::optional<bool> livemode = context.stripe_livemode;
  routes->Add("POST", kWebhookPath, kWebhookPath, Policy::kSignature,
              [ledger, verifier, livemode](const httplib::Request& req, httplib::Response& res,
                                           const Identity&) {
                HandleWebhook(ledger, *verifier, livemode, req, res);
              });
}

}  // namespace ledger::http
