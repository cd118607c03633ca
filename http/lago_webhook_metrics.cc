#include "http/lago_webhook_metrics.h"

namespace ledger::http {

uint64_t LagoWebhookMetrics::EventsErrors(std::string_view kind) const {
  for (size_t i = 0; i < kLagoEventsErrorKinds.size(); ++i) {
    if (kLagoEventsErrorKinds[i] == kind) return events_errors_[i].Value();
  }
  return 0;
}

void LagoWebhookMetrics::RenderMetrics(std::string* out) const {
  *out +=
      "# HELP ledger_lago_events_errors_total Usage events Lago accepted and reported it cannot "
      "bill (events.errors webhooks), by kind.\n"
      "# TYPE ledger_lago_events_errors_total counter\n";
  for (size_t i = 0; i < kLagoEventsErrorKinds.size(); ++i) {
    *out += "ledger_lago_events_errors_total{kind=\"" + std::string(kLagoEventsErrorKinds[i]) +
            "\"} " + std::to_string(events_errors_[i].Value()) + "\n";
  }
}

}  // namespace ledger::http
