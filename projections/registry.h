// The set of inline projections the daemon and the tools register with the Ledger. Adding a
// projection means adding its fold here; the ledger catches a new fold up from the log at open.
// Changing what a fold writes means raising its Version(): the ledger rebuilds it at open.
#pragma once

#include <vector>

#include "events/fold.h"

namespace ledger::projections {

// Every fold, in a stable order. The objects are static and stateless.
const std::vector<const Fold*>& AllFolds();

}  // namespace ledger::projections
