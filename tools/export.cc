#include "tools/export.h"

#include <algorithm>

#include "events/event.h"
#include "tools/progress.h"

namespace ledger::tools {

Status ExportCloudEvents(const Ledger& ledger, const ExportOptions& options, std::ostream& out,
                         uint64_t* exported) {
  *exported = 0;
  Position head = ledger.Head();
  if (options.after >= head) return Status::OK();
  uint64_t total = head.value() - options.after.value();
  if (options.limit != 0) total = std::min(total, options.limit);
  Position last(options.after.value() + total);
  Progress meter(options.progress, "export", total);
  Status failure;
  std::string line;
  Status scan = ledger.ScanRaw(Next(options.after), last, [&](Position p, std::string_view stored) {
    Event event;
    failure = DecodeEvent(stored, &event);
    if (!failure.ok()) {
      failure = Status::Corruption("position " + std::to_string(p.value()) + ": " +
                                   failure.message());
      return false;
    }
    line = ToCloudEventJson(event, options.source);
    line.push_back('\n');
    out.write(line.data(), static_cast<std::streamsize>(line.size()));
    if (!out) {
      failure = Status::IOError("cannot write the export");
      return false;
    }
    meter.Update(++*exported);
    return true;
  });
  meter.Finish(*exported);
  LEDGER_RETURN_IF_ERROR(failure);
  LEDGER_RETURN_IF_ERROR(scan);
  out.flush();
  if (!out) return Status::IOError("cannot write the export");
  return Status::OK();
}

}  // namespace ledger::tools
