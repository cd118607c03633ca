#include "tools/export.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "events/event.h"
#include "tools/progress.h"

namespace ledger::tools {

Status ExportCloudEvents(const Ledger& ledger, const ExportOptions& options, std::ostream& out,
                         uint64_t* exported) {
  *exported = 0;
  Position head = ledger.Head();
  // Checked first: an incremental export at the head must not read a hole as "nothing new".
  if (const std::string gap = ledger.WalGapProblem(); !gap.empty()) {
    return Status::Corruption("position " + std::to_string(head.value() + 1) + ": " + gap +
                              " (ledgerctl verify explains)");
  }
  // Past the head names events this log never had (a cursor kept from another store, or a
  // restored older copy): an empty export, run after run, would hide that (exit 64, as verify's
  // range past the head and the HTTP route's 409 after_past_head).
  if (options.after > head) {
    return Status::InvalidArgument("after_past_head",
                                   "after " + std::to_string(options.after.value()) +
                                       " is past the chain head " + std::to_string(head.value()) +
                                       ": a position from another store, or an older copy?");
  }
  // A read-only open replays the write-ahead logs as the page cache holds them, a live ledgerd's
  // group written but not yet synced included; `to` (a live ledgerd's /api/v1/audit/head, which
  // counts only synced groups) keeps the export to what is durable.
  Position end = head;
  if (options.to.value() != 0) {
    if (options.to > head) {
      return Status::InvalidArgument("bad_range", "to " + std::to_string(options.to.value()) +
                                                      " is past the chain head " +
                                                      std::to_string(head.value()));
    }
    if (options.after > options.to) {
      return Status::InvalidArgument("bad_range",
                                     "after " + std::to_string(options.after.value()) +
                                         " is past to " + std::to_string(options.to.value()));
    }
    end = options.to;
  }
  if (options.after == end) return Status::OK();
  uint64_t total = end.value() - options.after.value();
  if (options.limit != 0) total = std::min(total, options.limit);
  Position last(options.after.value() + total);
  Progress meter(options.progress, "export", total);
  Status failure;
  std::string line;
  auto emit = [&](const Event& event) {
    line = ToCloudEventJson(event, options.source);
    line.push_back('\n');
    out.write(line.data(), static_cast<std::streamsize>(line.size()));
    if (!out) return Status::IOError("cannot write the export");
    meter.Update(++*exported);
    return Status::OK();
  };
  // What is exported is the log as it must be: every position once, in order, each event's hash
  // its own and linked to the one before (the one at `after` for the first).
  uint64_t expected = options.after.value() + 1;
  std::optional<Hash> previous;
  if (options.after.value() > 0) {
    std::vector<Event> before;
    LEDGER_RETURN_IF_ERROR(ledger.ReadEvents(Position(options.after.value() - 1), 1, EventFilter{},
                                             &before));
    if (before.empty() || before[0].position != options.after) {
      return Status::Corruption("position " + std::to_string(options.after.value()) +
                                ": missing from the log");
    }
    previous = before[0].hash;
  } else {
    previous = Hash{};
  }
  // Each event is written once the next one has linked to it, and the range's last event too
  // when the log holds its successor (one more position scanned, only its link read), as
  // verify's range, ReadEvents, the outbox and the Lago sink link theirs: an event rewritten and
  // re-sealed (a new hash over new bytes) checks out on its own, and only the next event's
  // prev_hash shows it. `export --to <audit head>`, run after run beside a live ledgerd, ends
  // each run at an event the next run starts after, and one re-sealed there was written with
  // exit 0; and with the link checked only after an event was written, a forged event sat in the
  // output above the exit 65 that named its successor.
  const bool successor = last < head;
  std::optional<Event> held;  // checked, and waiting for the next event's link
  Status scan = ledger.ScanRaw(Next(options.after), successor ? Next(last) : last,
                               [&](Position p, std::string_view stored) {
    if (p > last && p.value() == expected) {
      failure = CheckEventLink(p, stored, held->hash);
      if (!failure.ok()) return false;
      failure = emit(*held);
      held.reset();
      return false;
    }
    Event event;
    failure = DecodeEvent(stored, &event);
    if (failure.ok() && p.value() != expected) {
      failure = Status::Corruption("position " + std::to_string(expected) + " is missing");
    } else if (failure.ok() && event.position != p) {
      failure = Status::Corruption("the event stored there names position " +
                                   std::to_string(event.position.value()));
    } else if (failure.ok() && !VerifyEventHash(stored)) {
      failure = Status::Corruption("hash mismatch: the stored bytes were altered");
    } else if (failure.ok() && event.prev_hash != *previous) {
      failure = Status::Corruption("its prev_hash does not link to the event before it");
    }
    if (!failure.ok()) {
      failure = Status::Corruption("position " + std::to_string(std::min(p.value(), expected)) +
                                   ": " + failure.message() + " (ledgerctl verify names it)");
      return false;
    }
    ++expected;
    previous = event.hash;
    if (held.has_value()) {
      failure = emit(*held);
      if (!failure.ok()) return false;
    }
    held = std::move(event);
    return true;
  });
  const bool whole = failure.ok() && scan.ok() && expected == last.value() + 1;
  if (whole && held.has_value() && !successor) failure = emit(*held);  // the head: no successor
  meter.Finish(*exported);
  LEDGER_RETURN_IF_ERROR(failure);
  LEDGER_RETURN_IF_ERROR(scan);
  if (expected != last.value() + 1) {
    return Status::Corruption("position " + std::to_string(expected) + " is missing");
  }
  if (held.has_value() && successor) {
    return Status::Corruption("position " + std::to_string(Next(last).value()) +
                              " is missing (needed to link position " +
                              std::to_string(last.value()) + ")");
  }
  out.flush();
  if (!out) return Status::IOError("cannot write the export");
  return Status::OK();
}

}  // namespace ledger::tools
