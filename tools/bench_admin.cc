#include "tools/bench_admin.h"

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <sstream>

#include "events/clock.h"
#include "events/ledger.h"
#include "projections/admin.h"
#include "projections/json_write.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"

namespace ledger::tools {

namespace {

namespace pj = ledger::projections;
using SteadyClock = std::chrono::steady_clock;

constexpr size_t kSubscribersPerCommand = 500;
constexpr int64_t kDay = 86400;
constexpr const char* kPlans[] = {"trial", "starter", "professional", "enterprise"};

std::string UserId(size_t i) { return "bench-user-" + std::to_string(i); }

// Links users [first, last) to customers and gives each a subscription state, as the Stripe
// webhook decider would have (customer.linked.v1, subscription.state_changed.v1).
class SeedSubscribers final : public Command {
 public:
  SeedSubscribers(size_t first, size_t last) : first_(first), last_(last) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    const int64_t now_s = context.now_us / 1'000'000;
    for (size_t i = first_; i < last_; ++i) {
      const std::string user = UserId(i);
      const std::string customer = "cus_bench_" + std::to_string(i);
      rapidjson::StringBuffer link_buf;
      json::Writer link(link_buf);
      link.StartObject();
      link.Key("customer_id");
      json::String(&link, customer);
      link.Key("user_id");
      json::String(&link, user);
      link.Key("email");
      json::String(&link, user + "@bench.example");
      link.Key("source");
      link.String("bench");
      link.Key("stripe_event_id");
      json::String(&link, "evt_bench_link_" + std::to_string(i));
      link.Key("created");
      link.Int64(now_s);
      link.EndObject();
      decision->events.push_back(
          NewEvent{std::string(pj::kCustomerLinkedV1), user, json::Text(link_buf)});

      pj::SubscriptionRecord r;
      r.subscription_id = "sub_bench_" + std::to_string(i);
      r.customer_id = customer;
      r.plan_id = kPlans[i % 4];
      r.interval = i % 5 == 0 && i % 4 != 0 ? "year" : "month";
      r.current_period_start = now_s - 10 * kDay;
      r.current_period_end = now_s + 20 * kDay;
      r.created = now_s - 10 * kDay;
      r.metadata_user_id = user;
      if (i % 4 == 0) {  // the trial plan: trialing
        r.status = pj::SubscriptionStatus::kTrialing;
        r.trial_start = now_s - static_cast<int64_t>(i % 7) * kDay;
        r.trial_end = *r.trial_start + 7 * kDay;
      } else {
        switch (i % 10) {
          case 7:  // a trial that converted
            r.status = pj::SubscriptionStatus::kActive;
            r.trial_start = now_s - 20 * kDay;
            r.trial_end = now_s - 13 * kDay;
            break;
          case 8: r.status = pj::SubscriptionStatus::kPastDue; break;
          case 9:
            r.status = pj::SubscriptionStatus::kCanceled;
            r.canceled_at = now_s - 1 - static_cast<int64_t>(i % 30) * kDay;
            break;
          default: r.status = pj::SubscriptionStatus::kActive; break;
        }
      }
      r.event_id = "evt_bench_sub_" + std::to_string(i);
      r.event_type = "customer.subscription.updated";
      r.event_created = now_s;
      const std::string record = pj::SubscriptionRecordToJson(r);
      rapidjson::StringBuffer state_buf;
      json::Writer state(state_buf);
      state.StartObject();
      state.Key("user_id");
      json::String(&state, user);
      state.Key("previous_status");
      state.Null();
      state.Key("subscription");
      json::RawObject(&state, record);
      state.EndObject();
      decision->events.push_back(
          NewEvent{std::string(pj::kSubscriptionStateChangedV1), user, json::Text(state_buf)});
    }
    return Status::OK();
  }

 private:
  size_t first_, last_;
};

double Ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

Status RunAdminBench(const AdminBenchOptions& options, AdminBenchResult* result) {
  *result = AdminBenchResult();
  result->subscribers = options.subscribers;
  std::filesystem::path base = options.base_dir.empty() ? std::filesystem::temp_directory_path()
                                                        : std::filesystem::path(options.base_dir);
  std::error_code ec;
  std::filesystem::create_directories(base, ec);
  std::string dir = (base / "ledgerctl-bench-admin-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr) return Status::IOError("cannot create " + dir);
  struct Cleanup {
    std::string dir;
    std::unique_ptr<Ledger> ledger;
    ~Cleanup() {
      ledger.reset();
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  } store{dir, nullptr};
  LedgerOptions ledger_options;
  ledger_options.path = dir;
  ledger_options.folds = projections::AllFolds();
  LEDGER_RETURN_IF_ERROR(Ledger::Open(ledger_options, &store.ledger));
  Ledger* ledger = store.ledger.get();

  const auto seed_start = SteadyClock::now();
  bool seeded = false;
  LEDGER_RETURN_IF_ERROR(pj::SeedPlanCatalog(ledger, &seeded));
  for (size_t first = 0; first < options.subscribers; first += kSubscribersPerCommand) {
    const size_t last = std::min(options.subscribers, first + kSubscribersPerCommand);
    SeedSubscribers seed(first, last);
    LEDGER_RETURN_IF_ERROR(ledger->Submit(&seed).status);
    std::vector<pj::UsageBatchItem> items;
    for (size_t i = first; i < last; ++i) {
      pj::UsageBatchItem item;
      item.user_id = UserId(i);
      item.service = i % 3 == 0 ? "search" : "chat";
      item.quantity = static_cast<int64_t>(i % 50) + 1;
      item.idempotency_key = "bench-" + std::to_string(i);
      items.push_back(std::move(item));
    }
    pj::RecordUsageBatch usage(std::move(items), nullptr);
    LEDGER_RETURN_IF_ERROR(ledger->Submit(&usage).status);
    if (options.progress != nullptr && (last % 5000 == 0 || last == options.subscribers)) {
      *options.progress << "seeded " << last << " subscribers\n" << std::flush;
    }
  }
  result->seed_seconds = std::chrono::duration<double>(SteadyClock::now() - seed_start).count();
  // A live store holds most rows in table files, not in the memtables the seeding filled.
  LEDGER_RETURN_IF_ERROR(ledger->Flush());

  std::unique_ptr<ReadView> view = ledger->Snapshot();
  const int64_t now_s = SystemClock::Default()->NowMicros() / 1'000'000;
  pj::SubscriberFilter filtered;
  filtered.tier = "enterprise";
  filtered.status = "canceled";
  const std::vector<std::pair<std::string, std::function<Status(std::string*)>>> views = {
      {"analytics/overview",
       [&](std::string* out) { return pj::AnalyticsOverviewJson(*view, now_s, 30, out); }},
      {"analytics/revenue-by-tier",
       [&](std::string* out) { return pj::RevenueByTierJson(*view, now_s, out); }},
      {"analytics/usage-stats (this month)",
       [&](std::string* out) {
         return pj::UsageStatsJson(*view, now_s, pj::UtcMonthStart(now_s), now_s + 1, out);
       }},
      {"list (first page of 50)",
       [&](std::string* out) {
         pj::SubscriberPage page;
         LEDGER_RETURN_IF_ERROR(pj::ListSubscribers(*view, now_s, {}, "", 50, &page));
         *out = std::to_string(page.json.size());
         for (const std::string& s : page.json) out->append(s);
         return Status::OK();
       }},
      {"list (tier=enterprise&status=canceled)",
       [&](std::string* out) {
         pj::SubscriberPage page;
         LEDGER_RETURN_IF_ERROR(pj::ListSubscribers(*view, now_s, filtered, "", 50, &page));
         *out = std::to_string(page.json.size());
         for (const std::string& s : page.json) out->append(s);
         return Status::OK();
       }},
  };
  for (const auto& [name, run] : views) {
    std::vector<double> times;
    AdminBenchView measured;
    measured.name = name;
    std::string out;
    for (int round = 0; round < std::max(options.rounds, 1); ++round) {
      const auto start = SteadyClock::now();
      LEDGER_RETURN_IF_ERROR(run(&out));
      times.push_back(Ms(SteadyClock::now() - start));
    }
    std::sort(times.begin(), times.end());
    measured.median_ms = times[times.size() / 2];
    measured.max_ms = times.back();
    measured.output_bytes = out.size();
    if (name == "analytics/overview") result->overview_json = out;
    result->views.push_back(std::move(measured));
    if (options.progress != nullptr) *options.progress << "measured " << name << "\n" << std::flush;
  }
  return Status::OK();
}

std::string FormatAdminBenchReport(const AdminBenchOptions& options,
                                   const AdminBenchResult& result) {
  std::ostringstream out;
  out.setf(std::ios::fixed);
  out.precision(1);
  out << "admin views over " << result.subscribers << " subscribers (seeded in "
      << result.seed_seconds << " s), median and max of " << std::max(options.rounds, 1)
      << " runs on one snapshot:\n";
  for (const AdminBenchView& v : result.views) {
    out << "  " << v.name << std::string(v.name.size() < 40 ? 40 - v.name.size() : 1, ' ')
        << v.median_ms << " ms (max " << v.max_ms << " ms)";
    if (result.subscribers > 0 && v.name.rfind("analytics/", 0) == 0) {
      out.precision(2);
      out << "  = " << v.median_ms * 1000.0 / static_cast<double>(result.subscribers)
          << " us per subscriber";
      out.precision(1);
    }
    out << "\n";
  }
  out << "overview: " << result.overview_json << "\n";
  return out.str();
}

}  // namespace ledger::tools
