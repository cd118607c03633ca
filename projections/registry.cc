#include "projections/registry.h"

#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"

namespace ledger::projections {

const std::vector<const Fold*>& AllFolds() {
  static const PlanCatalogFold plan_catalog;
  static const SubscriptionFold subscriptions;
  static const std::vector<const Fold*> folds = {&plan_catalog, &subscriptions};
  return folds;
}

}  // namespace ledger::projections
