// ledgerctl bench admin: how long the admin views take (projections/admin.h computes them from a
// snapshot when they are asked for, in O(subscribers) for the overview and revenue views and
// O(usage windows) for usage statistics).
//
// On a fresh store (sync on, every fold) it seeds the plan catalog, then `subscribers` users in
// commands of 500: a customer link (with an email) and a subscription state per user, on the four
// plans in turn (the trial plan trialing; on paid plans every fifth yearly, 10 % converted
// trials, 10 % past_due, 10 % canceled within the last 30 days, the rest active), and one unit of
// usage or more per user through the batch metering command. Then it flushes the memtables (a
// live store holds most rows in table files) and runs each view `rounds` times against one
// snapshot: the overview, revenue by tier, usage statistics for the month, a list page of 50,
// and a filtered list page (tier and status; examines up to 5,000 users).
#pragma once

#include <cstddef>
#include <ostream>
#include <string>
#include <vector>

#include "events/status.h"

namespace ledger::tools {

struct AdminBenchOptions {
  std::string base_dir;         // the store is created in a fresh subdirectory (removed after)
  size_t subscribers = 10000;
  int rounds = 5;
  std::ostream* progress = nullptr;
};

struct AdminBenchView {
  std::string name;
  double median_ms = 0;
  double max_ms = 0;
  size_t output_bytes = 0;      // of the last answer (a check that it computed something)
};

struct AdminBenchResult {
  size_t subscribers = 0;
  double seed_seconds = 0;
  std::string overview_json;    // the last overview, for the report and tests
  std::vector<AdminBenchView> views;
};

Status RunAdminBench(const AdminBenchOptions& options, AdminBenchResult* result);
std::string FormatAdminBenchReport(const AdminBenchOptions& options, const AdminBenchResult& result);

}  // namespace ledger::tools
