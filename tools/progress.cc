#include "tools/progress.h"

#include <cstdio>

namespace ledger::tools {

Progress::Progress(std::ostream* out, std::string label, uint64_t total)
    : out_(out),
      label_(std::move(label)),
      total_(total),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::Finish(uint64_t done) {
  if (out_ != nullptr && printed_) MaybePrint(done, /*force=*/true);
}

void Progress::MaybePrint(uint64_t done, bool force) {
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_ < std::chrono::seconds(1)) return;
  last_ = now;
  printed_ = true;
  double seconds = std::chrono::duration<double>(now - start_).count();
  double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0;
  char line[160];
  if (total_ > 0) {
    std::snprintf(line, sizeof(line), "%s: %llu / %llu positions (%.1f%%), %.0f/s, %.1f s\n",
                  label_.c_str(), static_cast<unsigned long long>(done),
                  static_cast<unsigned long long>(total_),
                  100.0 * static_cast<double>(done) / static_cast<double>(total_), rate, seconds);
  } else {
    std::snprintf(line, sizeof(line), "%s: %llu positions, %.0f/s, %.1f s\n", label_.c_str(),
                  static_cast<unsigned long long>(done), rate, seconds);
  }
  *out_ << line << std::flush;
}

}  // namespace ledger::tools
