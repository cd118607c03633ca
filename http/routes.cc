#include "http/routes.h"

namespace ledger::http {

void AddAllRoutes(const AppContext& context, RouteTable* routes) {
  AddOpsRoutes(context, routes);
  AddEventsRoutes(context, routes);
  AddPlanRoutes(context, routes);
  AddBillingRoutes(context, routes);
  AddStripeWebhookRoutes(context, routes);
  AddLagoWebhookRoutes(context, routes);
  AddSubscriptionAccessRoutes(context, routes);
  AddUsageRoutes(context, routes);
  AddAdminRoutes(context, routes);
  AddByokRoutes(context, routes);
}

}  // namespace ledger::http
