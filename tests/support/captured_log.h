// CapturedLog: the default spdlog logger's formatted lines while it lives (the last 512), for
// tests that check what is logged (and what never is: secrets).
#pragma once

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ledger {

class CapturedLog {
 public:
  CapturedLog() { spdlog::default_logger()->sinks().push_back(sink_); }
  ~CapturedLog() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::find(sinks.begin(), sinks.end(), sink_));
  }
  CapturedLog(const CapturedLog&) = delete;
  CapturedLog& operator=(const CapturedLog&) = delete;

  std::vector<std::string> Lines() const { return sink_->last_formatted(); }
  // Lines holding `text`.
  size_t Count(std::string_view text) const { return Count("", text); }
  // Lines holding both `level` (e.g. "[warning]") and `text`.
  size_t Count(std::string_view level, std::string_view text) const {
    size_t n = 0;
    for (const std::string& line : Lines()) {
      n += line.find(level) != std::string::npos && line.find(text) != std::string::npos;
    }
    return n;
  }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_ =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(512);
};

}  // namespace ledger
