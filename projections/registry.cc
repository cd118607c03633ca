#include "projections/registry.h"

#include "projections/byok.h"
#include "projections/lago.h"
#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"

namespace ledger::projections {

const std::vector<const Fold*>& AllFolds() {
  static const PlanCatalogFold plan_catalog;
  static const SubscriptionFold subscriptions;
  static const LagoFold lago;
  static const UsageCountersFold usage;
  static const ByokFold byok;
  static const std::vector<const Fold*> folds = {&plan_catalog, &subscriptions, &lago, &usage,
                                                 &byok};
  return folds;
}

const std::vector<std::string>& AllSideFamilies() {
  static const std::vector<std::string> families = {std::string(kByokDataKeysFamily)};
  return families;
}

}  // namespace ledger::projections
