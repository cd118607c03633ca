// LagoWebhookMetrics: what Lago's webhooks report about the usage ledgerd sent it, for /metrics.
//
// events.errors: Lago accepts an event under any code and with any properties, and its
// post-validation job (hourly) reports afterwards the transaction ids of the last hour's events
// it cannot bill, by kind: `invalid_code` (no billable metric has the event's code),
// `missing_aggregation_property` (the metric's field_name is missing or not numeric),
// `missing_group_key`. POST /api/v1/webhooks/lago (http/lago_webhook_routes.cc) counts the ids
// of each newly recorded delivery here and logs them at warn; the delivery itself is stored as
// lago.webhook_received.v1. Counts start at 0 with each process (Prometheus counters).
//
// Thread safety: any thread (atomic counters).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "events/metrics.h"

namespace ledger::http {

// The kinds of an events.errors delivery's `events_errors` (lago-api's
// EventsValidationErrorsSerializer), in the order they are rendered.
inline constexpr std::array<std::string_view, 3> kLagoEventsErrorKinds = {
    "invalid_code", "missing_aggregation_property", "missing_group_key"};

class LagoWebhookMetrics {
 public:
  // Adds `count` transaction ids of kLagoEventsErrorKinds[kind].
  void AddEventsErrors(size_t kind, uint64_t count) {
    if (kind < events_errors_.size()) events_errors_[kind].Add(count);
  }
  // The ids counted for `kind` (0 for a kind not in kLagoEventsErrorKinds).
  uint64_t EventsErrors(std::string_view kind) const;
  // Appends ledger_lago_events_errors_total{kind="..."} in Prometheus text format.
  void RenderMetrics(std::string* out) const;

 private:
  std::array<Counter, kLagoEventsErrorKinds.size()> events_errors_;
};

}  // namespace ledger::http
