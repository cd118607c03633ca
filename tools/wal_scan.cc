#include "tools/wal_scan.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include <rocksdb/write_batch.h>

#include "events/coding.h"
#include "events/event.h"

namespace ledger::tools {

namespace {

// RocksDB's log format (db/log_format.h).
constexpr size_t kBlockBytes = 32768;
constexpr size_t kHeaderBytes = 7;            // crc32c (4) | length (2) | type (1)
constexpr size_t kRecyclableHeaderBytes = 11;  // ... | log number (4)
enum RecordType : uint8_t {
  kZeroType = 0,
  kFullType = 1,
  kFirstType = 2,
  kMiddleType = 3,
  kLastType = 4,
  kRecyclableFullType = 5,
  kRecyclableLastType = 8,
};
// The WriteBatch header: sequence (8) | count (4).
constexpr size_t kWriteBatchHeaderBytes = 12;

class EventFinder final : public rocksdb::WriteBatch::Handler {
 public:
  explicit EventFinder(WalFinding* finding) : finding_(finding) {}

  rocksdb::Status PutCF(uint32_t, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    if (finding_->found || key.size() != 8) return rocksdb::Status::OK();
    std::string_view stored(value.data(), value.size());
    // An event value: prev_hash (32) | version (1) | BE position (8) | ... (events/FORMAT.md).
    if (stored.size() < 32 + 1 + 8 + 32 || static_cast<uint8_t>(stored[32]) != kEventFormatVersion) {
      return rocksdb::Status::OK();
    }
    uint64_t position = DecodeFixed64BE(key.data());
    if (DecodeFixed64BE(stored.data() + 33) != position) return rocksdb::Status::OK();
    Event event;
    Status decoded = DecodeEvent(stored, &event);
    if (!decoded.ok()) {
      Report(position, "undecodable record (" + decoded.message() + ")");
    } else if (!VerifyEventHash(stored)) {
      Report(position, "hash mismatch: the stored bytes were altered");
    }
    return rocksdb::Status::OK();
  }
  // Everything else in a batch (deletes, merges, markers) is not an event.
  rocksdb::Status DeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status SingleDeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status MergeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  void LogData(const rocksdb::Slice&) override {}

 private:
  void Report(uint64_t position, std::string reason) {
    finding_->found = true;
    finding_->position = Position(position);
    finding_->reason = std::move(reason);
  }
  WalFinding* finding_;
};

void CheckRecord(const std::string& record, WalFinding* out) {
  if (record.size() < kWriteBatchHeaderBytes) return;
  rocksdb::WriteBatch batch(record);
  EventFinder finder(out);
  // A damaged batch may stop Iterate with Corruption; events before the damage were checked.
  batch.Iterate(&finder).PermitUncheckedError();
}

// Splits one log file into records (ignoring record checksums) and checks each.
void ScanLogFile(const std::string& contents, WalFinding* out) {
  std::string record;
  bool in_fragmented_record = false;
  size_t offset = 0;
  while (offset < contents.size() && !out->found) {
    size_t block_left = kBlockBytes - offset % kBlockBytes;
    if (block_left < kHeaderBytes) {  // trailer padding
      offset += block_left;
      continue;
    }
    if (contents.size() - offset < kHeaderBytes) return;
    const auto* header = reinterpret_cast<const uint8_t*>(contents.data() + offset);
    size_t length = header[4] | (static_cast<size_t>(header[5]) << 8);
    uint8_t type = header[6];
    if (type == kZeroType && length == 0) return;  // preallocated, never written
    size_t header_bytes = type >= kRecyclableFullType && type <= kRecyclableLastType
                              ? kRecyclableHeaderBytes
                              : kHeaderBytes;
    if (header_bytes + length > block_left || offset + header_bytes + length > contents.size()) {
      return;  // a damaged header or a torn tail: nothing reliable follows
    }
    std::string_view payload(contents.data() + offset + header_bytes, length);
    offset += header_bytes + length;
    uint8_t base = type >= kRecyclableFullType ? type - (kRecyclableFullType - kFullType) : type;
    switch (base) {
      case kFullType:
        record.assign(payload);
        in_fragmented_record = false;
        CheckRecord(record, out);
        break;
      case kFirstType:
        record.assign(payload);
        in_fragmented_record = true;
        break;
      case kMiddleType:
        if (in_fragmented_record) record.append(payload);
        break;
      case kLastType:
        if (in_fragmented_record) {
          record.append(payload);
          CheckRecord(record, out);
        }
        in_fragmented_record = false;
        break;
      default:  // metadata records (e.g. WAL compression type): not a WriteBatch
        break;
    }
  }
}

}  // namespace

Status FindDamagedEventInWal(const std::string& data_dir, WalFinding* out) {
  *out = WalFinding{};
  std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(data_dir, ec)) {
    const std::filesystem::path& path = entry.path();
    std::string stem = path.stem().string();
    if (path.extension() != ".log" || stem.empty() ||
        !std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      continue;
    }
    logs.emplace_back(std::stoull(stem), path);
  }
  if (ec) return Status::IOError("cannot list " + data_dir + ": " + ec.message());
  std::sort(logs.begin(), logs.end());
  for (const auto& [number, path] : logs) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return Status::IOError("cannot read " + path.string());
    std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ScanLogFile(contents, out);
    if (out->found) {
      out->file = path.filename().string();
      return Status::OK();
    }
  }
  return Status::OK();
}

}  // namespace ledger::tools
