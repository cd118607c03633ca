#include "tools/wal_scan.h"

#include <algorithm>
#include <filesystem>
#include <optional>
#include <vector>

#include <rocksdb/write_batch.h>

#include "events/coding.h"
#include "events/event.h"
#include "events/wal_log.h"
#include "tools/verify.h"

namespace ledger::tools {

namespace {

// The WriteBatch header: sequence (8) | count (4).
constexpr size_t kWriteBatchHeaderBytes = 12;
using wal::kEventsFamilyId;

class EventFinder final : public wal::PutsHandler {
 public:
  EventFinder(WalFinding* finding, uint64_t* last_position)
      : finding_(finding), last_position_(last_position) {}

  // Every put into the events family is an event, and the log holds them in position order: the
  // next one is the position after the last intact event (unknown before the first).
  rocksdb::Status PutCF(uint32_t family, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    if (finding_->found || family != kEventsFamilyId) return rocksdb::Status::OK();
    const uint64_t expected = *last_position_ == 0 ? 0 : *last_position_ + 1;
    ++puts_;
    if (key.size() != 8) {
      Report(expected, "a damaged key (" + std::to_string(key.size()) + " bytes, not 8)");
      return rocksdb::Status::OK();
    }
    const uint64_t position = DecodeFixed64BE(key.data());
    std::string_view stored(value.data(), value.size());
    Event event;
    std::string reason = CheckStoredEvent(Position(position), stored, &event);
    if (!reason.empty() && event.position.value() != position && VerifyEventHash(stored)) {
      // The value is intact (its hash covers the position inside it): the key was damaged.
      Report(event.position.value(), "a damaged key: it says position " +
                                         std::to_string(position));
    } else if (expected != 0 && position != expected) {
      Report(expected, "a damaged key or record: the next event is stored under position " +
                           std::to_string(position));
    } else if (!reason.empty()) {
      Report(position, std::move(reason));
    } else {
      *last_position_ = position;
      if (first_position_ == 0) first_position_ = position - (puts_ - 1);
    }
    return rocksdb::Status::OK();
  }
  // The position of this record's first event, known once one of its events is intact; else 0.
  uint64_t first_position() const { return first_position_; }
  // Puts into the events family seen in this record.
  uint64_t event_puts() const { return puts_; }

 private:
  void Report(uint64_t position, std::string reason) {
    finding_->found = true;
    finding_->position = Position(position);
    finding_->reason = std::move(reason);
  }
  WalFinding* finding_;
  uint64_t* last_position_;  // the highest position of an intact event seen so far
  uint64_t puts_ = 0;        // puts into the events family in this record so far
  uint64_t first_position_ = 0;
};

// Checks the events of one record. A record whose checksum failed and whose events all verify
// (the damage is in the batch's framing or in a row beside the events) is reported at the
// position after the last intact event before it: its group's first event.
void CheckRecord(const std::string& record, bool checksum_ok, size_t offset, WalFinding* out,
                 uint64_t* last_position) {
  const uint64_t before = *last_position;
  uint64_t first = before == 0 ? 0 : before + 1;
  out->offset = offset;  // kept only when this record is the damaged one
  bool has_events = true;  // unknown when the batch cannot be read: assume its group's
  if (record.size() >= kWriteBatchHeaderBytes) {
    rocksdb::WriteBatch batch(record);
    EventFinder finder(out, last_position);
    // A damaged batch may stop Iterate with Corruption; events before the damage were checked.
    const bool complete = batch.Iterate(&finder).ok();
    if (first == 0) first = finder.first_position();
    has_events = !complete || finder.event_puts() > 0;
  }
  if (out->found || checksum_ok) return;
  out->found = true;
  if (!has_events) {
    // A record of rows only (a consumer's checkpoint, written on its own): no event to name.
    out->position = Position(0);
    out->reason = "the record at offset " + std::to_string(offset) +
                  " fails its checksum; it holds no event (a checkpoint or another row)";
    return;
  }
  out->position = Position(first);
  out->reason = "the record at offset " + std::to_string(offset) +
                " fails its checksum (the events' own hashes in it verify: the damage is in the "
                "group's framing or in a row written with it)";
}

// Splits one log file into records and checks each; a zeroed header with records after it
// (wal::ZeroedHeaderOffset) is reported at the position after the last intact event before it:
// RocksDB skips the rest of that block.
void ScanLogFile(const std::string& contents, WalFinding* out, uint64_t* last_position) {
  std::string record;
  bool in_fragmented_record = false;
  bool record_checksum_ok = true;
  size_t record_offset = 0;
  // Stops at a damaged header or a torn tail (nothing reliable follows) or at preallocated space.
  wal::WalkFragments(contents, [&](const wal::Fragment& f) {
    switch (f.base_type) {
      case wal::kFullType:
        record.assign(f.payload);
        in_fragmented_record = false;
        CheckRecord(record, f.checksum_ok, f.offset, out, last_position);
        break;
      case wal::kFirstType:
        record.assign(f.payload);
        in_fragmented_record = true;
        record_checksum_ok = f.checksum_ok;
        record_offset = f.offset;
        break;
      case wal::kMiddleType:
        if (in_fragmented_record) record.append(f.payload);
        record_checksum_ok = record_checksum_ok && f.checksum_ok;
        break;
      case wal::kLastType:
        if (in_fragmented_record) {
          record.append(f.payload);
          CheckRecord(record, record_checksum_ok && f.checksum_ok, record_offset, out,
                      last_position);
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
    out->offset = *at;
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
