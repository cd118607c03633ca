#include "tools/stripe_setup.h"

#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <utility>

#include "http/stripe_plans.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tools/store.h"

namespace ledger::tools {

namespace {

namespace pc = ledger::projections;

constexpr char kActorName[] = "ledgerctl";
// Stripe metadata key naming our plan on products and prices.
constexpr char kPlanMetadataKey[] = "ledgerd_plan_id";

// One price the catalog needs at Stripe.
struct WantedPrice {
  std::string kind;      // "monthly", "yearly", "fee"
  std::string interval;  // "month", "year", "" (one-time)
  int64_t unit_amount = 0;
  std::string lookup_key;
};

std::vector<WantedPrice> WantedPrices(const pc::Plan& plan) {
  std::vector<WantedPrice> wanted;
  if (http::IsTrialFeePlan(plan)) {
    if (plan.price_monthly_cents > 0) {
      wanted.push_back({"fee", "", plan.price_monthly_cents,
                        http::StripeLookupKeyForPlan(plan.id, "fee")});
    }
    return wanted;
  }
  if (plan.price_monthly_cents > 0) {
    wanted.push_back({"monthly", "month", plan.price_monthly_cents,
                      http::StripeLookupKeyForPlan(plan.id, "monthly")});
  }
  if (plan.price_yearly_cents.value_or(0) > 0) {
    wanted.push_back({"yearly", "year", *plan.price_yearly_cents,
                      http::StripeLookupKeyForPlan(plan.id, "yearly")});
  }
  return wanted;
}

// The idempotency key of a set-up POST: a digest of its exact parameters and of the position of
// the plan's last event, the catalog state that asked for it. A retry, or a rerun after a crash
// before the price was recorded, reuses its key; a creation the catalog asks for again after a
// change does not: from the parameters alone, starter's monthly price changed 1900 → 2900 → 1900
// → 2900 (the stale price nulled each time) would be sent the second run's key within Stripe's
// 24 h window, replaying a price that no longer holds the lookup key -- recorded, and reported
// as created though nothing was.
std::string SetupKey(std::string_view operation, Position plan_event,
                     const http::FormParams& form) {
  return http::StripeIdempotencyKey(
      operation, kActorName,
      std::to_string(plan_event.value()) + "\n" + http::FormUrlEncode(form));
}

// The position of the plan's last event (plan.created/updated/retired.v1), read by its subject.
Status LastPlanEvent(const Ledger& ledger, const std::string& plan_id, Position* out) {
  constexpr size_t kPage = 64;
  EventFilter filter;
  filter.subject = pc::PlanSubject(plan_id);
  Position after(0);
  std::vector<Event> page;
  do {
    page.clear();
    LEDGER_RETURN_IF_ERROR(ledger.ReadEvents(after, kPage, filter, &page));
    if (!page.empty()) after = page.back().position;
  } while (page.size() == kPage);
  *out = after;
  return Status::OK();
}

void Progress(const StripeSetupOptions& options, const std::string& line) {
  if (options.progress != nullptr) *options.progress << "stripe-setup: " << line << "\n";
}

// `plan_event`: LastPlanEvent, for the keys of what is created (SetupKey).
Status EnsureProduct(const pc::Plan& plan, Position plan_event, http::StripeApi* stripe,
                     const StripeSetupOptions& options, StripeSetupPlanResult* result) {
  result->product_id = http::StripeProductIdForPlan(plan.id);
  http::StripeProduct product;
  Status s = stripe->GetProduct(result->product_id, &product);
  if (s.ok()) {
    if (!product.active) {
      result->warnings.push_back("product " + product.id +
                                 " is archived at Stripe: Checkout refuses its prices until it "
                                 "is reactivated");
    }
    return Status::OK();
  }
  if (!s.IsNotFound()) return s;
  result->product_created = true;
  if (options.dry_run) return Status::OK();
  http::StripeProductParams params;
  params.id = result->product_id;
  params.name = plan.display_name;
  params.description = plan.description;
  params.metadata = {{kPlanMetadataKey, plan.id}};
  return stripe->CreateProduct(
      params,
      SetupKey("setup_product", plan_event, http::HttpStripeClient::ProductForm(params)),
      &product);
}

// The catalog's price id for one wanted price (the trial's fee is its stripe_price_monthly).
const std::optional<std::string>& CatalogPrice(const pc::Plan& plan, const WantedPrice& w) {
  return w.kind == "yearly" ? plan.stripe_price_yearly : plan.stripe_price_monthly;
}

// Why each price id the catalog names cannot stay, by {plan id, kind}; a named price not in it is
// kept. Read for every plan before anything is created or recorded (CheckNamedPrices), so a
// Stripe failure on the way fails the run with nothing done.
using NamedPriceMismatches = std::map<std::pair<std::string, std::string>, std::string>;

// A price id the catalog names is read at Stripe and kept only when it bills what the plan sells
// in its field (projections::StripePriceMismatch, the rule the admin plan routes apply to a price
// an admin names): an admin's price_admin for starter's monthly price stays (CONTRACT §4: set by
// admins or by stripe-setup). Kept unread, a run with sk_test_ then one with sk_live_ kept every
// test-mode id, which live mode does not have, and every checkout failed 502; a price archived in
// the Dashboard was kept too. Such an id is treated as null: found or created by lookup key and
// recorded in its place.
Status CheckNamedPrices(const pc::Plan& plan, http::StripeApi* stripe,
                        NamedPriceMismatches* mismatches) {
  for (const WantedPrice& w : WantedPrices(plan)) {
    const std::optional<std::string>& named = CatalogPrice(plan, w);
    if (!named.has_value()) continue;
    pc::StripePriceAtStripe seen;
    LEDGER_RETURN_IF_ERROR(http::ReadStripePrice(stripe, *named, &seen));
    std::string why = pc::StripePriceMismatch(
        plan, w.kind == "yearly" ? "stripe_price_yearly" : "stripe_price_monthly", seen);
    if (!why.empty()) (*mismatches)[{plan.id, w.kind}] = std::move(why);
  }
  return Status::OK();
}

// The prices the catalog leaves null, and the named ones CheckNamedPrices found wrong, are looked
// up by lookup key, created when missing and recorded (RecordPrices); the rest are kept.
Status EnsurePrices(const pc::Plan& plan, Position plan_event, http::StripeApi* stripe,
                    const NamedPriceMismatches& mismatches, const StripeSetupOptions& options,
                    StripeSetupPlanResult* result) {
  std::vector<WantedPrice> wanted;
  for (WantedPrice& w : WantedPrices(plan)) {
    const std::optional<std::string>& named = CatalogPrice(plan, w);
    auto mismatch = mismatches.find({plan.id, w.kind});
    if (named.has_value() && mismatch == mismatches.end()) {
      (w.kind == "yearly" ? result->yearly_price : result->monthly_price) = *named;
      result->prices_kept.push_back(*named);
      continue;
    }
    if (named.has_value()) {
      result->prices_replaced.push_back(*named + " (" + mismatch->second + ")");
    }
    wanted.push_back(std::move(w));
  }
  if (wanted.empty()) return Status::OK();
  std::vector<std::string> keys;
  for (const WantedPrice& w : wanted) keys.push_back(w.lookup_key);
  // Looked up even for a new product: a key may still sit on a price of an older product.
  std::vector<http::StripePrice> found;
  LEDGER_RETURN_IF_ERROR(stripe->FindPricesByLookupKeys(keys, &found));
  for (const WantedPrice& w : wanted) {
    const http::StripePrice* existing = nullptr;
    for (const http::StripePrice& p : found) {
      if (p.lookup_key == w.lookup_key) existing = &p;
    }
    std::string price_id;
    if (existing != nullptr && existing->active && existing->product == result->product_id &&
        existing->unit_amount == w.unit_amount && existing->currency == plan.currency &&
        existing->interval == w.interval) {
      price_id = existing->id;
    } else if (options.dry_run) {
      price_id = "(new " + w.lookup_key + ")";
      result->prices_created.push_back(price_id);
    } else {
      http::StripePriceParams params;
      params.product = result->product_id;
      params.unit_amount = w.unit_amount;
      params.currency = plan.currency;
      params.interval = w.interval;
      params.lookup_key = w.lookup_key;
      params.transfer_lookup_key = existing != nullptr;
      params.nickname = plan.display_name + " " + w.kind;
      params.metadata = {{kPlanMetadataKey, plan.id}};
      http::StripePrice created;
      LEDGER_RETURN_IF_ERROR(stripe->CreatePrice(
          params,
          SetupKey("setup_price", plan_event, http::HttpStripeClient::PriceForm(params)),
          &created));
      price_id = created.id;
      result->prices_created.push_back(price_id);
    }
    (w.kind == "yearly" ? result->yearly_price : result->monthly_price) = price_id;
  }
  return Status::OK();
}

Status RecordPrices(Ledger* ledger, const pc::Plan& plan, StripeSetupPlanResult* result) {
  // A kept id is the one the catalog names already; a null one filled, or a named one replaced
  // (EnsurePrices), differs from it.
  auto wanted = [](const std::string& id, const std::optional<std::string>& current)
      -> std::optional<std::string> {
    if (id.empty() || current == id) return std::nullopt;
    return id;
  };
  std::optional<std::string> monthly = wanted(result->monthly_price, plan.stripe_price_monthly);
  std::optional<std::string> yearly = wanted(result->yearly_price, plan.stripe_price_yearly);
  if (!monthly.has_value() && !yearly.has_value()) return Status::OK();
  pc::SetPlanStripePrices command(plan.id, monthly, yearly, pc::Actor::System(kActorName));
  CommandResult r = ledger->Submit(&command);
  LEDGER_RETURN_IF_ERROR(r.status);
  result->catalog_updated = r.events_appended > 0;
  return Status::OK();
}

}  // namespace

Status SetUpStripeCatalog(Ledger* ledger, http::StripeApi* stripe,
                          const StripeSetupOptions& options, StripeSetupReport* report) {
  *report = StripeSetupReport{};
  if (ledger == nullptr && !options.dry_run) {
    return Status::InvalidArgument("invalid_argument", "stripe-setup needs an open ledger");
  }
  if (!options.dry_run) LEDGER_RETURN_IF_ERROR(pc::SeedPlanCatalog(ledger, nullptr));
  std::vector<pc::Plan> plans;
  if (ledger != nullptr) {
    std::unique_ptr<ReadView> view = ledger->Snapshot();
    LEDGER_RETURN_IF_ERROR(pc::ListPlans(*view, /*include_inactive=*/true, &plans));
  }
  if (plans.empty() && options.dry_run) plans = pc::InitialPlans();
  // Every named price is read first: a Stripe failure (exit 69) leaves nothing created at Stripe
  // and nothing recorded, rather than the plans before it done.
  NamedPriceMismatches mismatches;
  for (const pc::Plan& plan : plans) {
    if (plan.active) LEDGER_RETURN_IF_ERROR(CheckNamedPrices(plan, stripe, &mismatches));
  }
  for (const pc::Plan& plan : plans) {
    if (!plan.active) {
      report->skipped.push_back(plan.id + ": retired");
      continue;
    }
    if (WantedPrices(plan).empty()) {
      report->skipped.push_back(plan.id + ": free");
      continue;
    }
    StripeSetupPlanResult result;
    result.plan_id = plan.id;
    Position plan_event(0);  // a dry run creates nothing, so it needs no key
    if (!options.dry_run) LEDGER_RETURN_IF_ERROR(LastPlanEvent(*ledger, plan.id, &plan_event));
    LEDGER_RETURN_IF_ERROR(EnsureProduct(plan, plan_event, stripe, options, &result));
    LEDGER_RETURN_IF_ERROR(
        EnsurePrices(plan, plan_event, stripe, mismatches, options, &result));
    if (!options.dry_run) LEDGER_RETURN_IF_ERROR(RecordPrices(ledger, plan, &result));
    report->products_created += result.product_created ? 1 : 0;
    report->prices_created += result.prices_created.size();
    report->plans_updated += result.catalog_updated ? 1 : 0;
    Progress(options, plan.id + " done");
    report->plans.push_back(std::move(result));
  }
  return Status::OK();
}

Status RunStripeSetup(const StripeSetupRunOptions& options, StripeSetupReport* report) {
  if (options.stripe.secret_key.empty()) {
    return Status::InvalidArgument("stripe_not_configured",
                                   "STRIPE_SECRET_KEY is not set (the key is read from the "
                                   "environment only)");
  }
  std::unique_ptr<http::HttpStripeClient> client;
  if (Status s = http::HttpStripeClient::Create(options.stripe, &client); !s.ok()) {
    // The key, base URL or API version as configured (ledgerctl: exit 78, as ledgerd).
    return Status::InvalidArgument("stripe_config", s.message());
  }

  if (options.setup.dry_run) {
    std::unique_ptr<Ledger> reader;
    if (CheckStoreExists(options.data_dir).ok()) {
      // No fold required: the read-only open opens every family the store has, and cannot
      // create one, so requiring this build's folds refused (74) a store an older ledgerd
      // wrote without one (byok), though the dry run reads only the catalog (`plans`).
      ReadOnlyOpenOptions read_only;
      read_only.data_dir = options.data_dir;
      LEDGER_RETURN_IF_ERROR(OpenReadOnly(read_only, &reader));
    }
    return SetUpStripeCatalog(reader.get(), client.get(), options.setup, report);
  }
  LedgerOptions ledger_options;
  ledger_options.path = options.data_dir;
  ledger_options.folds = projections::AllFolds();
  ledger_options.create_if_missing = true;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(ledger_options, &ledger);
  if (!s.ok()) {
    return Status::Make(s.code(), s.problem(),
                        "cannot open " + options.data_dir + " for writing (" + s.message() +
                            "); stripe-setup records the price ids in the log itself, so "
                            "ledgerd must be stopped while it runs");
  }
  s = SetUpStripeCatalog(ledger.get(), client.get(), options.setup, report);
  Status flushed = ledger->Flush();
  LEDGER_RETURN_IF_ERROR(s);
  return flushed;
}

std::string FormatStripeSetupReport(const StripeSetupReport& report, bool dry_run) {
  std::ostringstream out;
  const char* create = dry_run ? "would create" : "created";
  for (const StripeSetupPlanResult& plan : report.plans) {
    out << "stripe-setup: " << plan.plan_id << ": product " << plan.product_id
        << (plan.product_created ? std::string(" (") + create + ")" : " (exists)");
    if (!plan.monthly_price.empty()) out << ", monthly/fee price " << plan.monthly_price;
    if (!plan.yearly_price.empty()) out << ", yearly price " << plan.yearly_price;
    if (!plan.prices_kept.empty()) {
      out << ", " << plan.prices_kept.size() << " named in the catalog (kept)";
    }
    for (const std::string& replaced : plan.prices_replaced) {
      out << (dry_run ? ", would replace: " : ", replaced: ") << replaced;
    }
    out << ", " << plan.prices_created.size() << " price(s) " << create;
    if (!dry_run) out << (plan.catalog_updated ? ", catalog updated" : ", catalog unchanged");
    out << "\n";
    for (const std::string& warning : plan.warnings) {
      out << "stripe-setup: " << plan.plan_id << ": WARNING " << warning << "\n";
    }
  }
  for (const std::string& skipped : report.skipped) {
    out << "stripe-setup: skipped " << skipped << "\n";
  }
  out << "stripe-setup: " << (dry_run ? "dry run: would create " : "OK created ")
      << report.products_created << " product(s), " << report.prices_created << " price(s)";
  if (!dry_run) out << "; " << report.plans_updated << " plan(s) updated in the catalog";
  out << "\n";
  return out.str();
}

}  // namespace ledger::tools
