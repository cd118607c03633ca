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
//      key's mode), or that carries `account` (Connect), is kept but applied to nothing: 200 with
//      "derived":[] and "ignored":"livemode_mismatch" / "connected_account", so that Stripe stops
//      sending it.
// Nothing is appended on any 4xx. Stripe retries non-2xx answers for up to three days.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "http/problem.h"
#include "http/routes.h"
#include "http/stripe_signature.h"
#include "projections/stripe_webhook.h"

namespace ledger::http {

namespace {

constexpr char kWebhookPath[] = "/api/v1/billing/webhooks/stripe";
constexpr char kSignatureHeader[] = "Stripe-Signature";

// The verifier holds secrets[i].secret at index i.
struct WebhookSecrets {
  std::vector<StripeWebhookSecret> secrets;
  StripeSignatureVerifier verifier;
};

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
  bool signed_in_its_mode = false;
  for (size_t i = 0; i < matched.size(); ++i) {
    const std::optional<bool>& mode = secrets.secrets[i].livemode;
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
  std::vector<std::string> plain = SecretsOf(bound);
  auto secrets = std::make_shared<const WebhookSecrets>(
      WebhookSecrets{std::move(bound), StripeSignatureVerifier(std::move(plain), context.clock)});
  Ledger* ledger = context.ledger;
  routes->Add("POST", kWebhookPath, kWebhookPath, Policy::kSignature,
              [ledger, secrets, livemode](const httplib::Request& req, httplib::Response& res,
                                          const Identity&) {
                HandleWebhook(ledger, *secrets, livemode, req, res);
              });
}

}  // namespace ledger::http
