// ledgerctl export: the log as NDJSON, one CloudEvents 1.0 structured-mode document per line
// (ToCloudEventJson: the same shape the Kafka outbox publishes), oldest first.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "events/ledger.h"
#include "events/status.h"
#include "events/types.h"

namespace ledger::tools {

// The CloudEvents `source` the Kafka outbox uses by default (OutboxOptions::source).
inline constexpr char kDefaultCloudEventSource[] = "/ledgerd";

struct ExportOptions {
  Position after{0};   // export positions > after
  Position to{0};      // ... and <= to; 0 = the head
  uint64_t limit = 0;  // at most this many events; 0 = all
  std::string source = kDefaultCloudEventSource;
  std::ostream* progress = nullptr;
};

// Writes the events to `out`, one JSON document and '\n' per event. `*exported` counts them.
// kCorruption when a stored record does not decode, a position is missing or stored under
// another, an event's hash is not its own or does not link to the one before, or the event after
// the range, when the log holds one, does not link to the range's last (the export stops there:
// an event is written only once the next one has linked to it, so what was written is whole and
// linked at both ends, the failing position's predecessor not written); kIOError when `out` fails;
// kInvalidArgument, writing nothing, when `after` is past the head (after_past_head), `to` past
// the head or `after` past `to` (bad_range).
Status ExportCloudEvents(const Ledger& ledger, const ExportOptions& options, std::ostream& out,
                         uint64_t* exported);

}  // namespace ledger::tools
