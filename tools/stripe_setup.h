// ledgerctl stripe-setup: creates the Stripe products and prices of the plan catalog and records
// their price ids in the catalog (plan.updated.v1, actor {"kind":"system","sub":"ledgerctl"}).
//
// Idempotent: a second run creates nothing at Stripe and appends nothing.
//   - One product per paid, active plan, with OUR id "ledgerd_<plan>" (http/stripe_plans.h), so
//     "does it exist" is an exact GET /v1/products/{id} (product search is eventually consistent
//     and unavailable in some regions).
//   - A price id the catalog names (an admin's, or one an earlier run recorded) is read at Stripe
//     (GET /v1/prices/{id}) and kept when it bills what the plan sells in its field, by the rule
//     of the admin plan routes (projections::StripePriceMismatch): it exists, is active, of the
//     plan's currency and amount, recurring every month / year (for a trial's fee, one-time).
//     Otherwise -- a test-mode id after a switch to a live key, a price archived in the
//     Dashboard -- it is treated as null, and the report says which it replaced and why. Named
//     prices are read for every plan before anything is created or recorded, so a Stripe
//     failure there leaves both untouched. Nulling an id is how an admin asks for a new price.
//   - Prices are found by lookup key ("ledgerd_<plan>_monthly|yearly|fee"). A price that exists
//     with the right product, amount, currency and interval and is active is used as is; otherwise
//     a new price is created with `transfer_lookup_key=true`, which moves the key to it (the old
//     price keeps billing its existing subscribers — Stripe prices are immutable).
//   - Every POST carries an Idempotency-Key derived from its exact parameters and the position of
//     the plan's last event, so a retry or a rerun after a crash cannot create duplicates, while
//     a creation asked for again after a catalog change is not answered with an old one.
//   - The trial plan (trial_days > 0) gets a ONE-TIME price of its price_monthly_cents (the $1
//     fee), recorded as its stripe_price_monthly; see http/stripe_plans.h for how checkout uses it.
//   - SetPlanStripePrices appends plan.updated.v1 only when a null id is filled or a named one
//     replaced.
//
// Storage: it opens the data directory for writing, so ledgerd must be stopped (RocksDB's lock
// refuses a second writer; the error says so). The directory is created and the catalog seeded
// when they do not exist yet, exactly as ledgerd does at start. Stripe is called only after the
// ledger is open, so a running daemon makes it fail before anything is created at Stripe.
//
// Thread safety: one call at a time; it uses the ledger and the client from the calling thread.
#pragma once

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "events/ledger.h"
#include "events/status.h"
#include "http/stripe_client.h"

namespace ledger::tools {

struct StripeSetupOptions {
  // Read the catalog and Stripe only: report what would be created; create and record nothing.
  bool dry_run = false;
  std::ostream* progress = nullptr;  // one line per plan; nullptr = quiet
};

struct StripeSetupPlanResult {
  std::string plan_id;
  std::string product_id;
  bool product_created = false;
  std::string monthly_price;  // for the trial: the one-time fee price
  std::string yearly_price;   // "" when the plan is not sold yearly
  std::vector<std::string> prices_created;
  std::vector<std::string> prices_kept;  // named in the catalog, billing the plan: left as is
  // Named in the catalog but not billing the plan at Stripe, replaced by monthly_price /
  // yearly_price: "<id> (<why>)", e.g. "price_x (is archived (inactive) at Stripe)".
  std::vector<std::string> prices_replaced;
  bool catalog_updated = false;
  std::vector<std::string> warnings;
};

struct StripeSetupReport {
  std::vector<StripeSetupPlanResult> plans;
  std::vector<std::string> skipped;  // "<plan>: <reason>" (free, retired)
  size_t products_created = 0;
  size_t prices_created = 0;
  size_t plans_updated = 0;
};

// Runs the set-up against an open ledger (seeding the catalog first when it is empty). A dry run
// only reads it, and takes a null `ledger` (no store yet) for the catalog a first start seeds.
Status SetUpStripeCatalog(Ledger* ledger, http::StripeApi* stripe,
                          const StripeSetupOptions& options, StripeSetupReport* report);

struct StripeSetupRunOptions {
  std::string data_dir;
  http::StripeClientOptions stripe;  // api_base, secret_key (from STRIPE_SECRET_KEY)
  StripeSetupOptions setup;
};

// Opens `data_dir` for writing (created if missing) -- a dry run only reads it, beside a running
// ledgerd too, and creates nothing -- builds the HTTP client and runs SetUpStripeCatalog.
// Errors: kInvalidArgument (no key, bad base URL), kIOError/kUnavailable (the directory is locked
// by a running ledgerd, or storage failed), Stripe's errors (kBadGateway, kUnavailable; see
// http/stripe_client.h).
Status RunStripeSetup(const StripeSetupRunOptions& options, StripeSetupReport* report);

// Human-readable summary, one line per plan and a total line.
std::string FormatStripeSetupReport(const StripeSetupReport& report, bool dry_run);

}  // namespace ledger::tools
