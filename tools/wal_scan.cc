#include "tools/wal_scan.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <vector>

#include <rocksdb/write_batch.h>

#include "events/coding.h"
#include "events/event.h"
#include "events/wal_log.h"

namespace ledger::tools {

namespace {

// The WriteBatch header: sequence (8) | count (4).
constexpr size_t kWriteBatchHeaderBytes = 12;

class EventFinder final : public rocksdb::WriteBatch::Handler {
 public:
  EventFinder(WalFinding* finding, uint64_t* last_position)
      : finding_(finding), last_position_(last_position) {}

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
    } else {
      *last_position_ = std::max(*last_position_, position);
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
  uint64_t* last_position_;  // the highest position of an intact event seen so far
};

void CheckRecord(const std::string& record, WalFinding* out, uint64_t* last_position) {
  if (record.size() < kWriteBatchHeaderBytes) return;
  rocksdb::WriteBatch batch(record);
  EventFinder finder(out, last_position);
  // A damaged batch may stop Iterate with Corruption; events before the damage were checked.
  batch.Iterate(&finder).PermitUncheckedError();
}

// Splits one log file into records (ignoring record checksums) and checks each; a zeroed header
// with records after it (wal::ZeroedHeaderOffset) is reported at the position after the last
// intact event before it: RocksDB skips the rest of that block.
void ScanLogFile(const std::string& contents, WalFinding* out, uint64_t* last_position) {
  std::string record;
  bool in_fragmented_record = false;
  // Stops at a damaged header or a torn tail (nothing reliable follows) or at preallocated space.
  wal::WalkFragments(contents, [&](const wal::Fragment& f) {
    switch (f.base_type) {
      case wal::kFullType:
        record.assign(f.payload);
        in_fragmented_record = false;
        CheckRecord(record, out, last_position);
        break;
      case wal::kFirstType:
        record.assign(f.payload);
        in_fragmented_record = true;
        break;
      case wal::kMiddleType:
        if (in_fragmented_record) record.append(f.payload);
        break;
      case wal::kLastType:
        if (in_fragmented_record) {
          record.append(f.payload);
          CheckRecord(record, out, last_position);
        }
        in_fragmented_record = false;
        break;
      default:  // metadata records (e.g. WAL compression type): not a WriteBatch
        break;
    }
    return !out->found;
  });
  if (out->found) return;
  if (const std::optional<size_t> at = wal::ZeroedHeaderOffset(contents)) {
    out->found = true;
    // The events after the last intact one these logs hold; unknown (0) when none precedes the
    // hole here (events before it may be in table files, which this scan does not read).
    out->position = Position(*last_position == 0 ? 0 : *last_position + 1);
    out->reason = "a zeroed record header at offset " + std::to_string(*at) +
                  " with records after it: the events from there to the end of its 32 KiB block "
                  "cannot be read";
  }
}

}  // namespace

Status FindDamagedEventInWal(const std::string& data_dir, WalFinding* out) {
  *out = WalFinding{};
  std::vector<std::pair<uint64_t, std::filesystem::path>> logs;
  LEDGER_RETURN_IF_ERROR(wal::ListLogFiles(data_dir, &logs));
  uint64_t last_position = 0;
  for (const auto& [number, path] : logs) {
    std::string contents;
    LEDGER_RETURN_IF_ERROR(wal::ReadLogFile(path, &contents));
    ScanLogFile(contents, out, &last_position);
    if (out->found) {
      out->file = path.filename().string();
      return Status::OK();
    }
  }
  return Status::OK();
}

}  // namespace ledger::tools
