// The route files. Each `Add<Resource>Routes` appends its routes (method, pattern, metrics name,
// policy, handler) to the table; the daemon builds one table with AddAllRoutes() and hands it to
// the HttpServer. Handlers copy the AppContext; everything it points to must outlive the server.
#pragma once

#include "http/app_context.h"
#include "http/route.h"

namespace ledger::http {

// GET /livez, GET /readyz, GET /metrics (all public). ops_routes.cc.
void AddOpsRoutes(const AppContext& context, RouteTable* routes);

// GET /api/v1/events, GET /api/v1/audit/head (admin). events_routes.cc.
void AddEventsRoutes(const AppContext& context, RouteTable* routes);

// GET/POST /api/v1/subscriptions/plans, GET/PUT/DELETE /api/v1/subscriptions/plans/{plan_id},
// GET /api/v1/subscriptions/services. plans_routes.cc.
void AddPlanRoutes(const AppContext& context, RouteTable* routes);

// The Stripe-calling billing routes (policy user): POST /api/v1/billing/checkout/create,
// POST /api/v1/billing/portal/create, GET /api/v1/billing/payment-methods,
// POST /api/v1/billing/subscription/cancel, POST /api/v1/billing/subscription/upgrade.
// billing_routes.cc. Needs context.stripe (else 503 stripe_not_configured).
void AddBillingRoutes(const AppContext& context, RouteTable* routes);

// POST /api/v1/billing/webhooks/stripe (policy signature): verified over the raw body with
// context.stripe_webhook_secrets, deduplicated on the Stripe event id, appended with the events
// derived from it (projections/stripe_webhook.h). stripe_webhook_routes.cc.
void AddStripeWebhookRoutes(const AppContext& context, RouteTable* routes);

// Access answered from the subscription projection, never from Stripe:
// GET /api/v1/subscriptions/my-access (user), POST /api/v1/subscriptions/check-access/{service}
// (user for itself, or service with ?user_id=), GET /api/v1/subscriptions/admin/user-access/
// {user_id} (admin), GET /api/v1/billing/subscription-status (user). subscription_access_routes.cc.
void AddSubscriptionAccessRoutes(const AppContext& context, RouteTable* routes);

// POST /api/v1/webhooks/lago (policy signature): X-Lago-Signature verified over the raw body in
// hmac or jwt mode with context.lago_webhook_*, deduplicated on X-Lago-Unique-Key, appended with
// the invoice/subscription state derived from it (projections/lago.h). lago_webhook_routes.cc.
void AddLagoWebhookRoutes(const AppContext& context, RouteTable* routes);

// Usage metering (projections/usage.h): POST /api/v1/usage/consume (user for itself, or
// service), POST /api/v1/usage/events (service), GET /api/v1/usage/summary (user),
// POST /api/v1/admin/subscriptions/{email}/reset-usage (admin). usage_routes.cc. Uses
// context.usage_meter when set (else a meter of its own, not on /metrics).
void AddUsageRoutes(const AppContext& context, RouteTable* routes);

// Admin subscription management and analytics (policy admin): GET /api/v1/admin/subscriptions/
// list, GET and PATCH /api/v1/admin/subscriptions/{email}, GET /api/v1/admin/subscriptions/
// analytics/{overview,revenue-by-tier,usage-stats} (projections/admin.h). admin_routes.cc.
void AddAdminRoutes(const AppContext& context, RouteTable* routes);
// BYOK (policy user): GET /api/v1/byok/providers, GET /api/v1/byok/keys, POST /api/v1/byok/
// keys/add, DELETE /api/v1/byok/keys/{provider}, POST /api/v1/byok/keys/test/{provider},
// GET /api/v1/byok/stats (projections/byok.h). byok_routes.cc. Needs context.byok_box to seal
// and open keys (else 503 "byok_not_configured").
void AddByokRoutes(const AppContext& context, RouteTable* routes);
// Every route of the service. routes.cc: add your resource's call there.
void AddAllRoutes(const AppContext& context, RouteTable* routes);

// Prometheus text of the ledger's own metrics (group sizes, write latency, queue depth, ...).
void RenderLedgerMetrics(Ledger& ledger, std::string* out);

}  // namespace ledger::http
