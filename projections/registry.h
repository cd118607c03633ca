// The set of inline projections the daemon and the tools register with the Ledger. Adding a
// projection means adding its fold here; the ledger catches a new fold up from the log at open.
// Changing what a fold writes means raising its Version(): the ledger rebuilds it at open.
#pragma once

#include <string>
#include <vector>

#include "events/fold.h"

namespace ledger::projections {

// Every fold, in a stable order. The objects are static and stateless.
const std::vector<const Fold*>& AllFolds();

// The side families the commands write (LedgerOptions::side_families, events/ledger.h SideRow):
// state that is not derived from the log (projections/byok.h kByokDataKeysFamily). A ledger that
// runs the commands declares them; replay and the read-only tools need not.
const std::vector<std::string>& AllSideFamilies();

}  // namespace ledger::projections
