// RocksDB's write-ahead log files read without RocksDB (its format, db/log_format.h, is stable
// and documented; the reader itself is not installed by Debian's librocksdb-dev).
//
// A log file is a sequence of 32 KiB blocks. Each block holds fragments: a header — masked
// crc32c (4, little-endian) | payload length (2, little-endian) | type (1), plus the log number
// (4) for the "recyclable" types — then the payload. A WriteBatch (one per group commit) is one
// kFull fragment, or kFirst, kMiddle..., kLast across blocks. Fewer than 7 bytes left in a block
// are zero padding. The checksum covers the type byte, the log number if any, and the payload.
//
// Two users: `ledgerctl verify` reads the logs to name a damaged event (tools/wal_scan.h), and
// the ledger's open cuts a torn tail off a log (RepairTornWalTail) and stops the replay
// at a log that begins after an older log's lost writes (EventGapFilter).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <rocksdb/wal_filter.h>
#include <rocksdb/write_batch.h>

#include "events/status.h"

namespace ledger::wal {

// The events family's id in every store: created right after `default` in the first open
// (ledger.cc). Every put into it is an event (key: its position, 8 bytes big-endian).
inline constexpr uint32_t kEventsFamilyId = 1;
// The chain head record (FORMAT.md: `meta` / `head`, u64 BE position ‖ hash): every group that
// writes anything puts it, naming the last event written before it, in that group or an earlier.
inline constexpr char kHeadFamily[] = "meta";
inline constexpr char kHeadKey[] = "head";

// A WriteBatch handler that sees the puts (PutCF) and ignores everything else in a batch
// (deletes, range deletes, merges, entities, blob indexes, markers: none of them is an event).
// Every other entry point is overridden: RocksDB's defaults answer InvalidArgument or
// NotSupported, which stops WriteBatch::Iterate. The fold-version rebuild's batch begins with a
// DeleteRange (DeleteStaleFoldRows): with the default, EventGapFilter took that record for an
// unreadable one and did not compare the next record's first event with the events before it,
// so a newer log replayed after an older log's lost tail opened a chain with a hole.
class PutsHandler : public rocksdb::WriteBatch::Handler {
 public:
  rocksdb::Status DeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status SingleDeleteCF(uint32_t, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status DeleteRangeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status MergeCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status PutEntityCF(uint32_t, const rocksdb::Slice&, const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  rocksdb::Status PutBlobIndexCF(uint32_t, const rocksdb::Slice&,
                                 const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
  void LogData(const rocksdb::Slice&) override {}
  rocksdb::Status MarkBeginPrepare(bool) override { return rocksdb::Status::OK(); }
  rocksdb::Status MarkEndPrepare(const rocksdb::Slice&) override { return rocksdb::Status::OK(); }
  rocksdb::Status MarkNoop(bool) override { return rocksdb::Status::OK(); }
  rocksdb::Status MarkRollback(const rocksdb::Slice&) override { return rocksdb::Status::OK(); }
  rocksdb::Status MarkCommit(const rocksdb::Slice&) override { return rocksdb::Status::OK(); }
  rocksdb::Status MarkCommitWithTimestamp(const rocksdb::Slice&,
                                          const rocksdb::Slice&) override {
    return rocksdb::Status::OK();
  }
};

inline constexpr size_t kBlockBytes = 32768;
inline constexpr size_t kHeaderBytes = 7;
inline constexpr size_t kRecyclableHeaderBytes = 11;
enum FragmentType : uint8_t {
  kZeroType = 0,  // preallocated space, never written
  kFullType = 1,
  kFirstType = 2,
  kMiddleType = 3,
  kLastType = 4,
  kRecyclableFullType = 5,
  kRecyclableLastType = 8,
};

struct Fragment {
  size_t offset = 0;        // of the header in the file
  size_t header_bytes = 0;  // 7, or 11 for the recyclable types
  uint8_t type = 0;         // as stored
  uint8_t base_type = 0;    // kFull..kLast (recyclable types mapped onto them); other values as is
  std::string_view payload;
  bool checksum_ok = false;
  size_t end() const { return offset + header_bytes + payload.size(); }
};

enum class WalkEnd {
  kEndOfFile,    // every byte was a fragment or block padding
  kZeroHeader,   // a header of type 0 and length 0: preallocated space from here on
  kIncomplete,   // a fragment runs past its block or past the end of the file
  kStopped,      // the callback returned false
};

// Calls `fn` with every complete fragment in file order. `*stop_offset` (optional) receives the
// offset where the walk ended. Without `checksums`, Fragment::checksum_ok is left false.
WalkEnd WalkFragments(std::string_view contents, const std::function<bool(const Fragment&)>& fn,
                      size_t* stop_offset = nullptr, bool checksums = true);

// The `<number>.log` files of `dir`, by number.
Status ListLogFiles(const std::string& dir,
                    std::vector<std::pair<uint64_t, std::filesystem::path>>* out);

// The whole of one log file.
Status ReadLogFile(const std::filesystem::path& path, std::string* contents);

// CRC-32C (Castagnoli), as RocksDB computes it before masking.
uint32_t Crc32c(std::string_view data);

// RocksDB's log reader takes a fragment header of type 0 and length 0 for preallocated space
// and skips the rest of its 32 KiB block without reporting anything, in every recovery mode. A
// zeroed range that begins at a header — a zeroed page at the start of a block, say — would make
// an open drop the groups in the rest of that block silently, and the flush after recovery then
// deletes the log. Returns kCorruption naming the file and offset of the first such header with
// written (non-zero) bytes after it in any log of `dir`; OK when there is none. Zeros that run to
// the end of the file are not a hole: that is a torn tail or preallocated space.
Status FindZeroedHeaders(const std::string& dir);

// The offset of such a header in one log's contents, if it has one.
std::optional<size_t> ZeroedHeaderOffset(std::string_view contents);

// What RepairTornWalTail did.
struct TornTailRepair {
  bool repaired = false;
  std::string file;        // the log file's name
  uint64_t cut_at = 0;     // its new size
  uint64_t cut_bytes = 0;  // bytes removed (the torn WriteBatch and the zeros after it)
  std::string copy;        // where the bytes cut off were saved: torn-wal/<file>.from-<cut_at>
  size_t logs = 0;         // logs cut (the fields above describe the newest of them)
};

// A crash can leave a log's last WriteBatch torn: its later bytes were never written
// and read back as zeros (the file's size reached the disk before its data did; ext4 shows
// unwritten preallocated space as zeros). RocksDB's kTolerateCorruptedTailRecords then refuses
// to open the store ("checksum mismatch"): it cannot tell a torn record from a damaged one.
// This can, for exactly one shape: a fragment whose checksum fails and whose last 32 bytes or
// more, and everything after it to the end of the file, are zero bytes (or a header torn the
// same way), with every fragment before it intact. That
// WriteBatch was never synced — a synced one was fully on disk — so it was never acknowledged,
// and the file is cut at the start of the WriteBatch it belongs to. The bytes cut off (from that
// offset to the end of the file) are first saved as `<dir>/torn-wal/<file>.from-<offset>`; not
// the bytes before them, which stay in the log (a copy of those would outlive the writes that
// remove them: a BYOK key's shredded data key). Every log is looked at: the newest one written,
// and an older one torn while a newer one's pages reached the disk (the replay then stops at the
// hole after it, EventGapFilter); empty and all-zero logs are skipped. Anything else (a bad
// checksum before the tail, non-zero bytes after the bad fragment) is left alone: OK with
// `repaired == false`.
Status RepairTornWalTail(const std::string& dir, TornTailRepair* out);

// The ledger appends events in position order, one WriteBatch per group. A power loss can lose
// the unsynced tail of an older log and keep a newer log's writes (the sync thread syncs the logs
// oldest first after writing their groups, while the kernel writes dirty pages back in any
// order), and kTolerateCorruptedTailRecords would then replay the newer log after the older
// log's cut tail: events missing from the middle of the chain. This filter, set as the open's
// DBOptions::wal_filter, sees every record RocksDB replays (only the logs it still needs, in
// order) and stops the replay at the first one whose first event is beyond the last replayed
// event + 1 (for the first record: the last event the table files hold, when known), or, holding
// no event, whose chain head record names an event beyond the last replayed one (a group that
// appended nothing after the lost ones: replayed, it set a head the events do not reach, and the
// open failed): none of the groups from there on was acknowledged (the older log's sync never
// completed, and a group is answered only after every log up to it is synced). The logs from
// that one on are copied whole to `<dir>/torn-wal/` first (the open deletes them once it has
// flushed what it replayed): unacknowledged writes, which no later removal reaches. Read-only
// opens (verify, export, replay) stop the same way, copying nothing.
// Thread safety: used by one open at a time.
class EventGapFilter final : public rocksdb::WalFilter {
 public:
  // `dir`: where the logs are; "" = copy nothing (read-only opens). `flushed_head`: the last event
  // the table files hold (FlushedEventHead), when known: the replay must go on from the event
  // after it, so even the first replayed record is compared (a lost oldest log is a gap too).
  explicit EventGapFilter(std::string dir, std::optional<uint64_t> flushed_head = std::nullopt)
      : dir_(std::move(dir)),
        last_(flushed_head.value_or(0)),
        compare_first_(flushed_head.has_value()) {}

  WalProcessingOption LogRecordFound(unsigned long long log_number,
                                     const std::string& log_file_name,
                                     const rocksdb::WriteBatch& batch,
                                     rocksdb::WriteBatch* new_batch,
                                     bool* batch_changed) override;
  // Called by the open before the first record: where the chain head record's family is.
  void ColumnFamilyLogNumberMap(const std::map<uint32_t, uint64_t>& cf_lognumber_map,
                                const std::map<std::string, uint32_t>& cf_name_id_map) override;
  const char* Name() const override { return "ledger-event-gap"; }

  bool stopped() const { return stopped_; }
  const std::string& stopped_log() const { return stopped_log_; }
  uint64_t last_position() const { return last_; }
  uint64_t next_position() const { return next_position_; }  // 0: the record held no event
  uint64_t named_head() const { return named_head_; }  // the head such a record names
  const std::vector<std::string>& saved() const { return saved_; }  // the copies
  const Status& save_status() const { return save_status_; }

 private:
  Status SaveDroppedLogs();

  const std::string dir_;
  uint64_t last_ = 0;  // the last event replayed, or the last flushed one (0: none yet)
  bool compare_first_ = false;  // last_ is known before the first record
  bool stopped_ = false;
  std::string stopped_log_;
  uint64_t stopped_log_number_ = 0;
  uint64_t next_position_ = 0;
  uint64_t named_head_ = 0;
  std::optional<uint32_t> head_family_;  // its id, once the open named it
  std::vector<std::string> saved_;
  Status save_status_;
};

}  // namespace ledger::wal
