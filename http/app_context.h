// AppContext: what route handlers may use, filled in by the daemon before the routes are built.
//
// A plain struct of non-owning pointers and callbacks: the daemon owns every object and keeps it
// alive until the HttpServer has stopped. Route files copy the struct into their handlers. Add a
// field when a route needs a new collaborator (plan catalog reader, Stripe client, ...); a field
// left empty must mean "not configured", and the routes that need it answer 503 with a stable
// problem code instead of crashing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "events/clock.h"
#include "events/ledger.h"
#include "http/request_metrics.h"

namespace ledger::http {

class StripeApi;  // http/stripe_client.h
class SecretBox;  // http/secret_box.h
class LagoWebhookMetrics;  // http/lago_webhook_metrics.h
}  // namespace ledger::http

namespace ledger::projections {
class UsageMeter;  // projections/usage.h
}  // namespace ledger::projections

namespace ledger::http {

// The Kafka outbox as /readyz and /metrics report it. Filled by the outbox owner.
struct OutboxStatus {
  bool enabled = false;            // false: LEDGER_KAFKA_BROKERS=none
  std::string state = "disabled";  // e.g. "disabled", "connecting", "up", "down"
  uint64_t published_position = 0;  // the outbox checkpoint: last position Kafka acknowledged
  uint64_t lag_events = 0;          // head - published_position
  std::string last_error;           // last failure, "" if none since start; never a secret
};

// A log consumer other than the Kafka outbox (e.g. the Lago sink), as /readyz and /metrics
// report it. Filled by the consumer's owner.
struct SinkStatus {
  std::string name;                 // e.g. "lago"
  bool enabled = false;             // false: not configured (e.g. no LAGO_API_URL/LAGO_API_KEY)
  std::string state = "disabled";   // e.g. "disabled", "up", "down", "unauthorized", "stopped"
  uint64_t checkpoint_position = 0;  // the consumer's checkpoint: last position fully handled
  uint64_t lag_events = 0;          // head - checkpoint_position
  std::string last_error;           // last failure, "" if none since start; never a secret
};

struct AppContext {
  Ledger* ledger = nullptr;               // required
  const Clock* clock = nullptr;           // "now" for handlers that decide with time
  const RequestMetrics* request_metrics = nullptr;  // rendered by GET /metrics when set
  // Current outbox state; empty = publishing disabled ("disabled", lag 0). Called on /readyz and
  // /metrics requests: must be cheap and thread-safe.
  std::function<OutboxStatus()> outbox_status;
  // Extra Prometheus text appended to GET /metrics by other modules (each appends complete
  // `# TYPE` blocks to the string). Must be thread-safe.
  std::vector<std::function<void(std::string*)>> metrics_renderers;
  // Stripe API client for the Stripe-calling billing routes (http/billing_routes.cc); not owned.
  // Null = STRIPE_SECRET_KEY unset: those routes answer 503 "stripe_not_configured".
  StripeApi* stripe = nullptr;
  std::string stripe_success_url;        // STRIPE_SUCCESS_URL: checkout answers 503 without it
  std::string stripe_cancel_url;         // STRIPE_CANCEL_URL (optional)
  std::string stripe_portal_return_url;  // STRIPE_PORTAL_RETURN_URL (optional)
  // STRIPE_WEBHOOK_SECRET: the endpoint secrets (`whsec_...`, several during rotation) that
  // POST /api/v1/billing/webhooks/stripe verifies against, with `clock` as "now" (nullptr =
  // system clock). Empty = the webhook answers 503 "stripe_webhook_not_configured". Each entry
  // as configured: `test:whsec_...` / `live:whsec_...` sign only deliveries of that mode, a bare
  // `whsec_...` those of `stripe_livemode` (http::ParseStripeWebhookSecret).
  std::vector<std::string> stripe_webhook_secrets;
  // The mode of STRIPE_SECRET_KEY (http::StripeKeyLivemode: sk_live_/rk_live_ true,
  // sk_test_/rk_test_ false): a webhook delivery of the other mode is kept but applied to nothing.
  // nullopt = no key, or a prefix not known: deliveries are not judged by their mode.
  std::optional<bool> stripe_livemode;
  // POST /api/v1/webhooks/lago (http/lago_webhook_routes.cc): LAGO_WEBHOOK_HMAC_KEY (hmac mode),
  // Lago's RSA public key as SubjectPublicKeyInfo PEM (jwt mode; LoadLagoPublicKey() of
  // LAGO_WEBHOOK_PUBLIC_KEY_FILE), the `iss` jwt deliveries must carry (LAGO_WEBHOOK_ISSUER;
  // empty = not checked) and the `organization_id` every delivery's body must carry
  // (LAGO_ORGANIZATION_ID; empty = any). No key at all = 503 "lago_webhook_not_configured".
  std::string lago_webhook_hmac_key;
  std::string lago_webhook_public_key_pem;
  std::string lago_webhook_issuer;
  std::string lago_organization_id;
  // Counts what Lago's events.errors webhooks report (http/lago_webhook_metrics.h); not owned,
  // rendered by its owner through metrics_renderers. Null: those deliveries are logged only.
  LagoWebhookMetrics* lago_webhook_metrics = nullptr;
  // Log consumers besides the outbox (the Lago sink), reported under "sinks" by /readyz. Called
  // on /readyz requests: must be cheap and thread-safe. Their counters go to metrics_renderers.
  std::vector<std::function<SinkStatus()>> sink_statuses;
  // Usage metering's shared state (the writer's access cache and the ledger_usage_* counters);
  // not owned. Null: the usage routes make their own, and its counters are not on /metrics.
  projections::UsageMeter* usage_meter = nullptr;
  // BYOK (http/byok_routes.cc): the key-encryption key from LEDGER_MASTER_KEY_FILE; null = none
  // configured, and the routes that seal or open a key answer 503 "byok_not_configured".
  const SecretBox* byok_box = nullptr;
  // LEDGER_MASTER_KEY_PREVIOUS_FILES: the key-encryption keys rotated away from, for the "v1:"
  // keys sealed under one of them (a "v2:" key's data key is re-wrapped under byok_box at start:
  // http/byok_rotation.h). Not owned.
  std::vector<const SecretBox*> byok_previous_boxes;
  // LEDGER_BYOK_BASE_URLS: provider id -> base URL of its API (absent: the provider's own).
  std::map<std::string, std::string> byok_base_urls;
  int byok_test_timeout_ms = 5000;  // one provider test call
};

}  // namespace ledger::http
