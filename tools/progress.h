// Progress: "positions done / total, rate" on stderr (or any stream) at most once a second, for
// long ledgerctl work (verify, export, replay). Silent when constructed with a null stream.
//
// Thread safety: one thread calls Update()/Finish().
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

namespace ledger::tools {

class Progress {
 public:
  // `label` prefixes every line (e.g. "verify"); `total` 0 = unknown.
  Progress(std::ostream* out, std::string label, uint64_t total);

  // Records that `done` units are finished; prints when a second has passed since the last line.
  // Reads the clock at most once per kClockStride units, so per-event callers stay cheap.
  void Update(uint64_t done) {
    if (out_ == nullptr || done < next_clock_check_) return;
    next_clock_check_ = done + kClockStride;
    MaybePrint(done, /*force=*/false);
  }
  // Prints a final line when anything was printed before (so short runs stay quiet).
  void Finish(uint64_t done);

 private:
  void MaybePrint(uint64_t done, bool force);

  std::ostream* out_;
  std::string label_;
  uint64_t total_;
  static constexpr uint64_t kClockStride = 256;
  uint64_t next_clock_check_ = 0;
  bool printed_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace ledger::tools
