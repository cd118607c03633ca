// Write-ahead-log files at the record level, for tests that shape them as a crash or a power loss
// can leave them: the WriteBatches a log holds, a record appended as RocksDB's log writer writes
// it, a log split in two at a lost record, and the newest log deleted.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "events/wal_log.h"

namespace ledger::testing {

// The WriteBatches of a log file, in order, as their payloads (fragments joined), and where each
// begins; stops at the first fragment that is not intact.
inline std::vector<std::string> LogRecords(const std::string& contents,
                                           std::vector<size_t>* starts) {
  std::vector<std::string> records;
  std::string record;
  size_t start = 0;
  wal::WalkFragments(contents, [&](const wal::Fragment& f) {
    if (!f.checksum_ok) return false;
    if (f.base_type == wal::kFullType || f.base_type == wal::kFirstType) {
      record.clear();
      start = f.offset;
    }
    record.append(f.payload);
    if (f.base_type == wal::kFullType || f.base_type == wal::kLastType) {
      records.push_back(record);
      starts->push_back(start);
    }
    return true;
  });
  return records;
}

// Appends `payload` to a log file's contents as RocksDB's log writer does (legacy record types).
inline void AppendLogRecord(std::string* file, std::string_view payload) {
  bool first = true;
  do {
    size_t block_left = wal::kBlockBytes - file->size() % wal::kBlockBytes;
    if (block_left < wal::kHeaderBytes) {
      file->append(block_left, '\0');
      block_left = wal::kBlockBytes;
    }
    const size_t n = std::min(payload.size(), block_left - wal::kHeaderBytes);
    const bool last = n == payload.size();
    const uint8_t type = first && last ? wal::kFullType
                         : first       ? wal::kFirstType
                         : last        ? wal::kLastType
                                       : wal::kMiddleType;
    std::string covered(1, static_cast<char>(type));
    covered.append(payload.substr(0, n));
    const uint32_t crc = wal::Crc32c(covered);
    const uint32_t masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
    for (int i = 0; i < 4; ++i) file->push_back(static_cast<char>(masked >> (8 * i)));
    file->push_back(static_cast<char>(n & 0xff));
    file->push_back(static_cast<char>(n >> 8));
    file->push_back(static_cast<char>(type));
    file->append(payload.substr(0, n));
    payload.remove_prefix(n);
    first = false;
  } while (!payload.empty());
}

// Splits the log at `wal_path` (of a closed store) as a power loss can leave it: the log cut where
// its middle record (or record `lost_index`) began, a log numbered one higher holding the records
// after that one (the lost group's). Returns the newer log's path; "" when the log holds fewer
// than 3 records.
inline std::string SplitLogAtALostRecord(const std::string& wal_path,
                                         std::optional<size_t> lost_index = std::nullopt) {
  std::ifstream in(wal_path, std::ios::binary);
  const std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<size_t> starts;
  const std::vector<std::string> records = LogRecords(contents, &starts);
  if (records.size() < 3) return "";
  const size_t lost = lost_index.value_or(records.size() / 2);
  std::ofstream(wal_path, std::ios::binary | std::ios::trunc)
      .write(contents.data(), static_cast<std::streamsize>(starts[lost]));
  std::string newer;
  for (size_t i = lost + 1; i < records.size(); ++i) AppendLogRecord(&newer, records[i]);
  const std::filesystem::path path(wal_path);
  const uint64_t number = std::stoull(path.stem().string());
  char name[32];
  std::snprintf(name, sizeof name, "%06llu.log", static_cast<unsigned long long>(number + 1));
  const std::string newer_path = (path.parent_path() / name).string();
  std::ofstream(newer_path, std::ios::binary | std::ios::trunc)
      .write(newer.data(), static_cast<std::streamsize>(newer.size()));
  return newer_path;
}

// The negative controls' loss of acknowledged writes: deletes the newest write-ahead log of the
// store at `dir` (zero-padded numbers: name order is creation order) and says so on stdout.
// Returns its name; "" when the store has no log.
inline std::string DeleteNewestLog(const std::string& dir) {
  std::vector<std::filesystem::path> logs;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".log") logs.push_back(entry.path());
  }
  if (logs.empty()) return "";
  std::sort(logs.begin(), logs.end());
  std::printf("deleting %s (of %zu write-ahead logs)\n", logs.back().filename().c_str(),
              logs.size());
  std::filesystem::remove(logs.back());
  return logs.back().filename().string();
}

}  // namespace ledger::testing
