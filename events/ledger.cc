// The RocksDB event store and its group-commit writer. Layout and encodings: FORMAT.md.
#include "events/ledger.h"

#include <linux/futex.h>
#include <openssl/sha.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <rocksdb/db.h>
#include <rocksdb/memtablerep.h>
#include <rocksdb/file_system.h>
#include <rocksdb/metadata.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/sst_file_manager.h>
#include <rocksdb/table.h>
#include <rocksdb/table_properties.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "events/coding.h"
#include "events/group_rows.h"
#include "events/limits.h"
#include "events/side_shredder.h"
#include "events/wal_log.h"
#include "events/wal_watch.h"
#include "events/write_pacer.h"

namespace ledger {

namespace {

constexpr char kEventsFamily[] = "events";
constexpr char kStreamsFamily[] = "streams";
constexpr char kIdempotencyFamily[] = "idempotency";
constexpr char kCheckpointsFamily[] = "checkpoints";
constexpr char kMetaFamily[] = "meta";
constexpr char kHeadKey[] = "head";
// The gap filter reads the head record in the log (wal_log.h).
static_assert(std::string_view(kMetaFamily) == wal::kHeadFamily &&
              std::string_view(kHeadKey) == wal::kHeadKey);
constexpr char kFoldCheckpointPrefix[] = "fold.";
// The Fold::Version() that wrote a fold's rows, beside its checkpoint (u32 BE).
constexpr char kFoldVersionPrefix[] = "fold_version.";
// How long the sync thread waits at most for admitted commands to be written before it syncs.
constexpr auto kSyncCoalesceMax = std::chrono::microseconds(300);
// Decided groups waiting for the write thread, at most (each holds its rows in memory, and the
// committer's reads look through every one of them before the store).
constexpr size_t kWriteQueueGroupsMax = 2;
// Events applied per batch when a fold catches up at open.
constexpr size_t kCatchUpBatchEvents = 1000;
// A fold catching up at open says how far it is at most this often (a rebuild of a long log).
constexpr auto kCatchUpProgressInterval = std::chrono::seconds(10);

std::string_view ToView(const rocksdb::Slice& s) { return std::string_view(s.data(), s.size()); }
rocksdb::Slice ToSlice(std::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
std::string_view HashView(const Hash& h) {
  return std::string_view(reinterpret_cast<const char*>(h.data()), h.size());
}

Status FromRocks(const rocksdb::Status& s) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(s.ToString());
  if (s.IsCorruption()) return Status::Corruption(s.ToString());
  return Status::IOError(s.ToString());
}

// What a write is told once the ledger is degraded (a failed write or sync), until it is reopened.
Status DegradedStatus() {
  return Status::Unavailable("storage_degraded", "storage failed; the ledger is read-only");
}

// A failed read of the store, for reads whose errors may reach a user (an HTTP problem's detail):
// RocksDB's words name a table file by its full path ("block checksum mismatch: ... in
// /var/lib/ledgerd/000045.sst offset 0 size 1015"), and no error from a read names the data
// directory `dir`. The words are kept without it; the server log gets them whole. A key not found
// (the usual answer of an idempotency or usage-key lookup) is no failure and costs no search.
Status ReadFailure(const rocksdb::Status& s, std::string_view dir) {
  if (s.ok()) return Status::OK();
  if (s.IsNotFound()) return Status::NotFound(s.ToString());
  std::string reason = s.ToString();
  spdlog::error("a read of the store failed: {}", reason);
  const std::string prefix = std::string(dir) + "/";
  for (size_t at = reason.find(prefix); at != std::string::npos; at = reason.find(prefix, at)) {
    reason.erase(at, prefix.size());
  }
  if (s.IsCorruption()) return Status::Corruption(reason);
  return Status::IOError(reason);
}

std::string EncodeHead(Position position, const Hash& hash) {
  std::string value;
  PutFixed64BE(&value, position.value());
  value.append(HashView(hash));
  return value;
}

bool DecodeHead(std::string_view value, Position* position, Hash* hash) {
  if (value.size() != 8 + hash->size()) return false;
  *position = Position(DecodeFixed64BE(value.data()));
  std::copy(value.begin() + 8, value.end(), hash->begin());
  return true;
}

// streams key: subject || 0x00 || BE position. Subjects never contain NUL (checked at append).
// One row per run of a subject's events within one command (FORMAT.md): the key holds the run's
// first position, the value the gaps to each following one as varints (empty for a run of one).
std::string StreamKey(std::string_view subject, Position position) {
  std::string key(subject);
  key.push_back('\0');
  PutFixed64BE(&key, position.value());
  return key;
}

void PutVarint64(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// The positions of a streams row (key's first position, then the value's gaps); false when
// malformed.
bool DecodeStreamRun(uint64_t first, std::string_view gaps, std::vector<uint64_t>* out) {
  out->clear();
  out->push_back(first);
  uint64_t position = first;
  size_t i = 0;
  while (i < gaps.size()) {
    uint64_t gap = 0;
    int shift = 0;
    for (;;) {
      if (i >= gaps.size() || shift > 63) return false;
      uint8_t byte = static_cast<uint8_t>(gaps[i++]);
      gap |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) break;
      shift += 7;
    }
    if (gap == 0) return false;
    position += gap;
    out->push_back(position);
  }
  return true;
}

// A streams row that does not decode, named by its subject and the position its key holds, or
// by its whole key when that is not a subject, NUL and a position. Printable: bytes outside
// printable ASCII, `"` and `\` are shown as \xNN, and at most the first 255 bytes.
// Ledger::ProjectionDigest and StreamsDigest: true (every kDigestCancelCheckRows rows) once
// `cancel` is set.
bool DigestCancelled(const std::atomic<bool>* cancel, uint64_t row) {
  return cancel != nullptr && row % kDigestCancelCheckRows == 0 &&
         cancel->load(std::memory_order_relaxed);
}

Status DigestCancelledStatus() {
  return Status::Unavailable("digest_cancelled", "stopped before the digest had read every row");
}

Status MalformedStreamRow(std::string_view key) {
  constexpr size_t kShownBytesMax = 255;
  const size_t nul = key.find('\0');
  const bool well_formed = nul != std::string_view::npos && key.size() == nul + 1 + 8;
  const std::string_view shown = well_formed ? key.substr(0, nul) : key;
  std::string quoted = "\"";
  for (const char c : shown.substr(0, kShownBytesMax)) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte >= 0x7f || c == '"' || c == '\\') {
      quoted += "\\x";
      quoted += "0123456789abcdef"[byte >> 4];
      quoted += "0123456789abcdef"[byte & 0xf];
    } else {
      quoted += c;
    }
  }
  quoted += shown.size() > kShownBytesMax ? "\"..." : "\"";
  if (!well_formed) {
    return Status::Corruption("the streams row keyed " + quoted +
                              " is malformed: its key is not a subject, NUL and a position");
  }
  return Status::Corruption("the streams row of subject " + quoted + " at position " +
                            std::to_string(DecodeFixed64BE(key.data() + nul + 1)) +
                            " is malformed: its run of positions does not decode");
}

// The streams rows of one command's events, written when its events are all appended.
class StreamRuns {
 public:
  void Add(const std::string& subject, Position position) {
    auto [it, inserted] = runs_.try_emplace(subject);
    if (inserted) {
      it->second.first = position.value();
    } else {
      PutVarint64(&it->second.gaps, position.value() - it->second.last);
    }
    it->second.last = position.value();
  }
  template <typename State>
  void WriteTo(State* state, rocksdb::ColumnFamilyHandle* streams) {
    for (const auto& [subject, run] : runs_) {
      state->PutRow(streams, StreamKey(subject, Position(run.first)), run.gaps);
    }
    runs_.clear();
  }

 private:
  struct Run {
    uint64_t first = 0, last = 0;
    std::string gaps;
  };
  std::map<std::string, Run, std::less<>> runs_;
};

// The subject part of a streams key (through its NUL), for memtable insert hints.
class StreamSubjectPrefix final : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "ledger.StreamSubjectPrefix"; }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    return rocksdb::Slice(key.data(), ToView(key).find('\0') + 1);
  }
  bool InDomain(const rocksdb::Slice& key) const override {
    return ToView(key).find('\0') != std::string_view::npos;
  }
};

// Idempotency record: request_hash (32) || BE position || BE u32 http status || body.
std::string EncodeIdempotencyRecord(const Hash& request_hash, Position position, int http_status,
                                    std::string_view body) {
  std::string value(HashView(request_hash));
  PutFixed64BE(&value, position.value());
  PutFixed32BE(&value, static_cast<uint32_t>(http_status));
  value.append(body);
  return value;
}

struct IdempotencyRecord {
  Hash request_hash{};
  Position position;
  int http_status = 0;
  std::string body;
};

bool DecodeIdempotencyRecord(std::string_view value, IdempotencyRecord* out) {
  if (value.size() < 32 + 8 + 4) return false;
  std::copy(value.begin(), value.begin() + 32, out->request_hash.begin());
  out->position = Position(DecodeFixed64BE(value.data() + 32));
  out->http_status = static_cast<int>(DecodeFixed32BE(value.data() + 40));
  out->body.assign(value.substr(44));
  return true;
}

Status ValidateNewEvent(const NewEvent& e) {
  if (e.type.empty() || e.type.size() > limits::kEventTypeBytesMax) {
    return Status::Internal("event type empty or too long");
  }
  if (e.subject.size() > limits::kSubjectBytesMax ||
      e.subject.find('\0') != std::string::npos) {
    return Status::InvalidArgument("invalid_subject", "subject too long or contains NUL");
  }
  if (e.data.size() > limits::kEventDataBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large", "event data too large");
  }
  return Status::OK();
}

// A wal_filter that replays nothing.
class IgnoreEveryRecord final : public rocksdb::WalFilter {
 public:
  WalProcessingOption LogRecordFound(unsigned long long, const std::string&,
                                     const rocksdb::WriteBatch&, rocksdb::WriteBatch*,
                                     bool*) override {
    return WalProcessingOption::kIgnoreCurrentRecord;
  }
  const char* Name() const override { return "ledger-ignore-every-record"; }
};

// The last event the store's table files hold, from a read-only open that replays no log;
// nothing when that open fails (the gap filter then compares from the first replayed record
// on, as it did before). Only the families the store has are opened (a fold added since the
// last start has none yet, and a read-only open refuses a missing one). A log whose tail a crash
// tore fails this open too: Open asks again after the repair.
std::optional<uint64_t> FlushedEventHead(
    rocksdb::DBOptions db_options, const std::string& path,
    const std::vector<rocksdb::ColumnFamilyDescriptor>& descriptors) {
  IgnoreEveryRecord ignore;
  db_options.wal_filter = &ignore;
  db_options.listeners.clear();
  db_options.sst_file_manager.reset();
  std::vector<std::string> existing;
  if (!rocksdb::DB::ListColumnFamilies(db_options, path, &existing).ok()) return std::nullopt;
  std::vector<rocksdb::ColumnFamilyDescriptor> present;
  for (const rocksdb::ColumnFamilyDescriptor& d : descriptors) {
    if (std::find(existing.begin(), existing.end(), d.name) != existing.end()) present.push_back(d);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::OpenForReadOnly(db_options, path, present, &handles, &raw).ok()) {
    return std::nullopt;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  std::optional<uint64_t> head;
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    if (handle->GetName() != kEventsFamily) continue;
    rocksdb::ReadOptions read;
    read.verify_checksums = false;  // a damaged block is reported by the open or verify
    // The open after this one shares the families' table factories, hence their block caches,
    // and RocksDB's cache keys name the file, not the open: a block read here unverified and
    // cached was served to the open's checksummed reads as it was. A store whose events all fit
    // one block (a flipped byte in it) then opened, and GET /api/v1/events and the outbox served
    // the altered event.
    read.fill_cache = false;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(read, handle));
    it->SeekToLast();
    if (it->status().ok()) head = it->Valid() ? DecodeFixed64BE(it->key().data()) : 0;
  }
  for (rocksdb::ColumnFamilyHandle* handle : handles) db->DestroyColumnFamilyHandle(handle);
  return head;
}

// The last event the table files of an open store hold: the largest key of the events family's
// files in the version that open read from the MANIFEST (FlushedEventHead as that open sees it).
// Nothing when the store has no events family or a key is not a position.
std::optional<uint64_t> OpenedFlushedEventHead(
    rocksdb::DB* db, const std::vector<rocksdb::ColumnFamilyHandle*>& handles) {
  for (rocksdb::ColumnFamilyHandle* handle : handles) {
    if (handle->GetName() != kEventsFamily) continue;
    rocksdb::ColumnFamilyMetaData meta;
    db->GetColumnFamilyMetaData(handle, &meta);
    uint64_t head = 0;
    for (const rocksdb::LevelMetaData& level : meta.levels) {
      for (const rocksdb::SstFileMetaData& file : level.files) {
        if (file.largestkey.size() != 8) return std::nullopt;
        head = std::max(head, DecodeFixed64BE(file.largestkey.data()));
      }
    }
    return head;
  }
  return std::nullopt;
}

// Read-only opens done again because a live ledgerd flushed between the two looks (OpenDb).
constexpr int kReadOnlyOpenAttemptsMax = 5;

}  // namespace

Hash IdempotencyRecordKey(std::string_view scope, std::string_view key) {
  std::string joined(scope);
  joined.push_back('\0');
  joined.append(key);
  return Sha256(joined);
}

namespace {

class LedgerImpl;

// Column family lookup by name. Built once at open; read-only afterwards.
using FamilyMap = std::map<std::string, rocksdb::ColumnFamilyHandle*, std::less<>>;

// The log's own families: written by the writer only, never read back within a group.
bool IsLogFamily(std::string_view name) {
  return name == kEventsFamily || name == kStreamsFamily;
}

Status LookupFamily(const FamilyMap& families, std::string_view name,
                    rocksdb::ColumnFamilyHandle** out) {
  auto it = families.find(name);
  if (it == families.end()) {
    return Status::Internal("unknown column family " + std::string(name));
  }
  *out = it->second;
  return Status::OK();
}

// Rows under `prefix` from `start` on (start = prefix: all of them). `dir`: the data directory.
Status ScanFamily(rocksdb::Iterator* it, std::string_view prefix, std::string_view start,
                  const std::function<bool(std::string_view, std::string_view)>& fn,
                  std::string_view dir) {
  for (it->Seek(ToSlice(std::max(prefix, start))); it->Valid(); it->Next()) {
    std::string_view key = ToView(it->key());
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!fn(key, ToView(it->value()))) break;
  }
  return ReadFailure(it->status(), dir);
}

// State seen by a group: the store plus the group's own rows, and the batch the group writes.
//
// The group's events go straight into the batch in position order (they are never read back
// within a group: folds get the event itself, and reads of the log families are refused). Every
// other row goes into GroupRows, which answers the group's reads and, once the group is decided,
// is appended to the batch per column family in key order with one entry per key: written in
// mutation order (a usage counter rewritten on every event, consecutive entries jumping between
// families), each entry was one memtable skiplist insert searched from the top, most of the cost
// of a large group. One WAL record either way, so a group is still all-or-nothing; only
// intermediate values no reader can ever see are left out.
class GroupState final : public StateReader, public RowWriter {
 public:
  // `rows` and `batch` are empty. `unwritten`: the rows of the groups decided before this one
  // whose batches are not written yet, oldest first (the write thread may write them while this
  // group reads: their rows are read before the store's, and say the same as the store once
  // written). Not owned; none of them changes meanwhile. `dir`: the data directory.
  GroupState(rocksdb::DB* db, std::string_view dir, const FamilyMap* families, GroupRows* rows,
             rocksdb::WriteBatch* batch, const std::vector<const GroupRows*>* unwritten)
      : db_(db),
        dir_(dir),
        families_(families),
        rows_(rows),
        batch_(batch),
        unwritten_(unwritten) {}

  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    std::string_view mine;
    switch (FindUnstored(cf->GetID(), key, &mine)) {
      case GroupRows::Found::kPut:
        value->assign(mine);
        return Status::OK();
      case GroupRows::Found::kDeleted:
        return Status::NotFound(std::string(family));
      case GroupRows::Found::kAbsent:
        break;
    }
    return ReadFailure(db_->Get(rocksdb::ReadOptions(), cf, ToSlice(key), value), dir_);
  }

  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    return ScanFrom(family, prefix, prefix, fn);
  }

  // The store's rows merged with the group's (which win on equal keys; deletions hide rows).
  Status ScanFrom(std::string_view family, std::string_view prefix, std::string_view start,
                  const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    std::vector<GroupRows::Row> mine;
    RangeUnstored(cf->GetID(), prefix, start, &mine);
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
    it->Seek(ToSlice(std::max(prefix, start)));
    size_t i = 0;
    for (;;) {
      const bool stored = it->Valid() && ToView(it->key()).starts_with(prefix);
      if (!stored && i == mine.size()) break;
      if (i < mine.size() && (!stored || mine[i].key <= ToView(it->key()))) {
        if (stored && mine[i].key == ToView(it->key())) it->Next();
        const GroupRows::Row& row = mine[i++];
        if (!row.deleted && !fn(row.key, row.value)) break;
      } else {
        if (!fn(ToView(it->key()), ToView(it->value()))) break;
        it->Next();
      }
    }
    return ReadFailure(it->status(), dir_);
  }

  // The group's rows first, then one MultiGet for the rest: blooms, memtable and table files are
  // searched for all keys together instead of one descent per key.
  Status Contains(std::string_view family, const std::vector<std::string>& keys,
                  std::vector<bool>* found) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    found->assign(keys.size(), false);
    std::vector<size_t> ask;  // indexes into keys of the rows the group has not written
    std::vector<rocksdb::Slice> slices;
    std::string_view mine;
    for (size_t i = 0; i < keys.size(); ++i) {
      switch (FindUnstored(cf->GetID(), keys[i], &mine)) {
        case GroupRows::Found::kPut:
          (*found)[i] = true;
          break;
        case GroupRows::Found::kDeleted:
          break;
        case GroupRows::Found::kAbsent:
          ask.push_back(i);
          slices.push_back(ToSlice(keys[i]));
          break;
      }
    }
    if (ask.empty()) return Status::OK();
    std::vector<rocksdb::PinnableSlice> values(ask.size());
    std::vector<rocksdb::Status> statuses(ask.size());
    db_->MultiGet(rocksdb::ReadOptions(), cf, ask.size(), slices.data(), values.data(),
                  statuses.data(), /*sorted_input=*/false);
    for (size_t j = 0; j < ask.size(); ++j) {
      if (!statuses[j].ok() && !statuses[j].IsNotFound()) return ReadFailure(statuses[j], dir_);
      (*found)[ask[j]] = statuses[j].ok();
    }
    return Status::OK();
  }

  Status Put(std::string_view family, std::string_view key, std::string_view value) override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    rows_->Put(cf->GetID(), key, value);
    return Status::OK();
  }

  Status Delete(std::string_view family, std::string_view key) override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    rows_->Delete(cf->GetID(), key);
    return Status::OK();
  }

  // The writer's own rows: the event at its position, and rows of any family (stream rows,
  // idempotency records, the head, checkpoints).
  Status AppendEvent(rocksdb::ColumnFamilyHandle* events, std::string_view key,
                     std::string_view stored) {
    return FromRocks(batch_->Put(events, ToSlice(key), ToSlice(stored)));
  }
  void PutRow(rocksdb::ColumnFamilyHandle* cf, std::string_view key, std::string_view value) {
    rows_->Put(cf->GetID(), key, value);
  }

  void SetSavePoint() {
    rows_->SetSavePoint();
    batch_->SetSavePoint();
  }
  void RollbackToSavePoint() {
    rows_->RollbackToSavePoint();
    batch_->RollbackToSavePoint().PermitUncheckedError();
  }
  void PopSavePoint() {
    rows_->PopSavePoint();
    batch_->PopSavePoint().PermitUncheckedError();
  }
  bool empty() const { return batch_->Count() == 0 && rows_->mutations() == 0; }

 private:
  // The latest mutation of `key` that is not (or may not yet be) in the store: this group's,
  // else that of the newest unwritten group before it that has one.
  GroupRows::Found FindUnstored(uint32_t family, std::string_view key,
                                std::string_view* value) const {
    const uint64_t hash = GroupRows::HashOf(family, key);
    GroupRows::Found found = rows_->Find(family, key, hash, value);
    for (auto it = unwritten_->rbegin(); found == GroupRows::Found::kAbsent &&
                                         it != unwritten_->rend(); ++it) {
      found = (*it)->Find(family, key, hash, value);
    }
    return found;
  }

  // GroupRows::Range over this group's rows and the unwritten groups' (the newest mutation of a
  // key wins), in key order.
  void RangeUnstored(uint32_t family, std::string_view prefix, std::string_view start,
                     std::vector<GroupRows::Row>* out) const {
    rows_->Range(family, prefix, start, out);
    std::vector<GroupRows::Row> older, merged;
    for (auto it = unwritten_->rbegin(); it != unwritten_->rend(); ++it) {
      (*it)->Range(family, prefix, start, &older);
      if (older.empty()) continue;
      merged.clear();
      size_t i = 0, j = 0;
      while (i < out->size() || j < older.size()) {
        if (j == older.size() || (i < out->size() && (*out)[i].key <= older[j].key)) {
          if (j < older.size() && (*out)[i].key == older[j].key) ++j;  // the newer one wins
          merged.push_back((*out)[i++]);
        } else {
          merged.push_back(older[j++]);
        }
      }
      out->swap(merged);
    }
  }

  // Folds neither read nor write the log families: the group's events are not in GroupRows, so a
  // read here would miss them.
  Status LookupGroupFamily(std::string_view family, rocksdb::ColumnFamilyHandle** cf) const {
    if (IsLogFamily(family)) {
      return Status::Internal("folds cannot read or write the log families");
    }
    return LookupFamily(*families_, family, cf);
  }

  rocksdb::DB* db_;
  std::string_view dir_;
  const FamilyMap* families_;
  GroupRows* rows_;
  rocksdb::WriteBatch* batch_;
  const std::vector<const GroupRows*>* unwritten_;
};

// Appends a decided group's rows to its batch, after its events: the batch is then what to write.
// `by_id`: the column families by id.
Status AppendRowsToBatch(const GroupRows& rows,
                         const std::vector<rocksdb::ColumnFamilyHandle*>& by_id,
                         rocksdb::WriteBatch* batch) {
  std::vector<GroupRows::Row> sorted;
  for (uint32_t id : rows.Families()) {
    rocksdb::ColumnFamilyHandle* cf = id < by_id.size() ? by_id[id] : nullptr;
    if (cf == nullptr) return Status::Internal("no column family with id " + std::to_string(id));
    rows.Sorted(id, &sorted);
    for (const GroupRows::Row& row : sorted) {
      rocksdb::Status s = row.deleted ? batch->Delete(cf, ToSlice(row.key))
                                      : batch->Put(cf, ToSlice(row.key), ToSlice(row.value));
      if (!s.ok()) return FromRocks(s);
    }
  }
  return Status::OK();
}

// A RocksDB snapshot shared by the read views that use it; released with the last of them.
using SharedSnapshot = std::shared_ptr<const rocksdb::Snapshot>;

SharedSnapshot MakeSharedSnapshot(rocksdb::DB* db) {
  return SharedSnapshot(db->GetSnapshot(),
                        [db](const rocksdb::Snapshot* s) { db->ReleaseSnapshot(s); });
}

class SnapshotView final : public ReadView {
 public:
  // `dir`: the data directory.
  SnapshotView(rocksdb::DB* db, std::string_view dir, const FamilyMap* families,
               Position position, SharedSnapshot snapshot)
      : db_(db),
        dir_(dir),
        families_(families),
        position_(position),
        snapshot_(std::move(snapshot)) {}

  Position position() const override { return position_; }

  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupFamily(*families_, family, &cf));
    return ReadFailure(db_->Get(Options(), cf, ToSlice(key), value), dir_);
  }

  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    return ScanFrom(family, prefix, prefix, fn);
  }

  Status ScanFrom(std::string_view family, std::string_view prefix, std::string_view start,
                  const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupFamily(*families_, family, &cf));
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(Options(), cf));
    return ScanFamily(it.get(), prefix, start, fn, dir_);
  }

 private:
  rocksdb::ReadOptions Options() const {
    rocksdb::ReadOptions options;
    options.snapshot = snapshot_.get();
    return options;
  }

  rocksdb::DB* db_;
  std::string_view dir_;
  const FamilyMap* families_;
  Position position_;
  SharedSnapshot snapshot_;
};

// One queued Submit()/ImportEvents() call. Lives on the caller's stack (SubmitAsync: on the heap).
// While it waits, only the writer's threads touch it, one at a time: the committer fills
// `result`, the sync thread Signal(kDone)s it (or calls `done`) once its group is durable.
//
// Waking goes through the writer's own futex, not the queue mutex: a woken caller does not
// contend with the committer and the other callers for mu_ (LevelDB notifies under its one mutex,
// which on a group of 64 costs a second context switch per caller).
struct Writer {
  enum State : uint32_t { kWaiting, kDone };

  Command* command = nullptr;
  const std::vector<Event>* import = nullptr;
  CommandResult result;
  // SubmitAsync: called with the result instead of Signal(), and the writer is deleted.
  std::function<void(CommandResult)> done;
  // The side families the command deleted (or shred_replaced) rows of: compacted once it is
  // durable (SideShredder).
  std::vector<rocksdb::ColumnFamilyHandle*> side_deletes;

  // Blocks until the sync thread signals; returns the new state.
  State Wait() {
    uint32_t s;
    while ((s = state.load(std::memory_order_acquire)) == kWaiting) {
      syscall(SYS_futex, &state, FUTEX_WAIT_PRIVATE, kWaiting, nullptr, nullptr, 0);
    }
    return static_cast<State>(s);
  }
  // A futex rather than a mutex and condition variable: the woken caller runs straight on instead
  // of waking only to block on the mutex its signaller still holds (a second context switch per
  // command; context switches are the largest cost of the write path at 64 blocking callers). The caller may return and destroy
  // *this as soon as the store is visible; the wake after it is still safe, because a private
  // FUTEX_WAKE only names the address (it never reads the memory) and the stack stays mapped.
  void Signal(State new_state) {
    state.store(new_state, std::memory_order_release);
    syscall(SYS_futex, &state, FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
  }

 private:
  std::atomic<uint32_t> state{kWaiting};
};

// Counts the bytes of table files RocksDB writes, by cause (LedgerMetrics).
class TableFileCounter final : public rocksdb::EventListener {
 public:
  explicit TableFileCounter(LedgerMetrics* metrics) : metrics_(metrics) {}
  void OnTableFileCreated(const rocksdb::TableFileCreationInfo& info) override {
    if (!info.status.ok()) return;
    if (info.reason != rocksdb::TableFileCreationReason::kCompaction) {
      metrics_->table_bytes_flushed.Add(info.file_size);
      return;
    }
    metrics_->table_bytes_compacted.Add(info.file_size);
    if (info.cf_name == kEventsFamily) metrics_->event_table_bytes_compacted.Add(info.file_size);
  }

 private:
  LedgerMetrics* metrics_;
};

class LedgerImpl final : public Ledger {
 public:
  LedgerImpl(const LedgerOptions& options) : options_(options) {
    if (options_.clock == nullptr) options_.clock = SystemClock::Default();
    if (options_.write_queue_max == 0) options_.write_queue_max = limits::kWriteQueueCommandsMax;
  }

  ~LedgerImpl() override {
    Stop();
    if (db_ == nullptr) return;
    published_snapshot_.reset();  // released while the DB is still open
    for (auto& [name, handle] : families_) db_->DestroyColumnFamilyHandle(handle);
    db_->Close().PermitUncheckedError();
    delete db_;
  }

  Status OpenDb();
  Status MoveEventsToUniversalLayout();
  Status LoadHead();
  Status CatchUpFolds();
  Status DeleteStaleFoldRows(const Fold* fold, const uint32_t* recorded_version);
  void Start();  // the writer's three threads (not for read-only ledgers)
  // The state readers see until the first group is published.
  void PublishOpenState() {
    std::lock_guard<std::mutex> l(published_mu_);
    published_snapshot_ = MakeSharedSnapshot(db_);
  }

  CommandResult Submit(Command* command) override;
  void SubmitAsync(Command* command, std::function<void(CommandResult)> done) override;
  Position Head() const override { return Position(head_position_.load()); }
  std::string HeadRecordProblem() const override { return head_record_problem_; }
  std::string WalGapProblem() const override { return wal_gap_problem_; }
  Hash HeadHash() const override {
    std::lock_guard<std::mutex> l(published_mu_);
    return published_hash_;
  }
  bool Degraded() const override { return degraded_.load(); }
  std::unique_ptr<ReadView> Snapshot() const override;
  Status ReadEvents(Position after, size_t limit, const EventFilter& filter,
                    std::vector<Event>* out) const override;
  Status StoredHashAt(Position at, Hash* out) const override;
  Status ScanRaw(Position from, Position to,
                 const std::function<bool(Position, std::string_view)>& fn) const override;
  Status EventReadFailure(const rocksdb::Status& s, Position after) const;
  // A table file of the events family: its number and the positions it holds.
  struct EventTableFile {
    uint64_t number;
    uint64_t first;
    uint64_t last;
  };
  std::vector<EventTableFile> EventTableFiles() const;
  Status GetCheckpoint(std::string_view name, Position* out) const override;
  Status PutCheckpoint(std::string_view name, Position position, bool sync) override;
  Status GetFoldVersion(std::string_view fold, uint32_t* out) const override;
  Status ProjectionDigest(Hash* out, const std::atomic<bool>* cancel) const override;
  Status StreamsDigest(Hash* out, const std::atomic<bool>* cancel) const override;
  Status ImportEvents(const std::vector<Event>& events) override;
  Status Flush() override;
  Status WaitForBackgroundWork(int64_t timeout_ms) override;
  Status WaitForSideCompactions(int64_t timeout_ms) override {
    return shredder_ != nullptr ? shredder_->Wait(timeout_ms) : Status::OK();
  }
  LedgerMetrics& metrics() override { return metrics_; }
  uint64_t AddCommitListener(std::function<void(Position)> listener) override {
    std::lock_guard<std::mutex> l(listeners_mu_);
    uint64_t id = ++last_listener_id_;
    listeners_.emplace_back(id, std::move(listener));
    return id;
  }
  void RemoveCommitListener(uint64_t id) override {
    std::lock_guard<std::mutex> l(listeners_mu_);
    std::erase_if(listeners_, [id](const auto& entry) { return entry.first == id; });
  }
  size_t QueueDepth() const override {
    std::lock_guard<std::mutex> l(mu_);
    return queue_.size() + deciding_.load();
  }

 private:
  // A decided group's rows and batch (its events, then at the write its rows), until written.
  // Kept for reuse: the committer takes a spare one for each group it decides.
  struct DecidedRows {
    GroupRows rows;
    rocksdb::WriteBatch batch;
  };
  // A group on its way from the committer (through the write thread) to the sync thread.
  struct GroupCommit {
    std::vector<Writer*> members;
    Status status;        // of the write
    bool wrote = false;   // a WriteBatch was written (not only rejections and replays)
    size_t events = 0;
    std::unique_ptr<DecidedRows> decided;  // what to write; null if nothing or once written
    Position head;             // the chain head after the group
    Hash head_hash{};
    SharedSnapshot snapshot;   // the store as of the group: what readers see once it is durable
    std::chrono::steady_clock::time_point started;
    uint64_t write_seq = 0;    // its DB::Write's number (1, 2, ...; 0 = never written)
    bool appended = false;     // NoteAppended counted it (set by the thread that writes it)
  };

  void Stop();  // drains the queues, then joins the threads
  CommandResult Enqueue(Writer* w);
  // Refuses `w` (read-only, degraded, queue full): returns false with w->result set.
  bool Admit(Writer* w);
  // The committer thread: takes the queued commands as groups and decides each one; writes it
  // itself or hands it to the write thread.
  void CommitLoop();
  // Decides the group into commit->decided (left null when it has nothing to write).
  void DecideGroup(GroupCommit* commit, const std::vector<const GroupRows*>& unwritten);
  // The write thread: writes the groups handed over, in order.
  void WriteLoop();
  // Writes a decided group's batch without sync (the committer or the write thread).
  void WriteDecided(GroupCommit* commit);
  // Passes a group that is decided and, if it writes, written on to the sync thread.
  void HandToSync(GroupCommit commit);
  // The group's WAL record is in the OS (its DB::Write may still be inserting into the
  // memtables): a sync from now on covers it, and the sync thread may start one.
  void NoteAppended(GroupCommit* commit);
  // Every WAL append outside the sync thread (a group's, a checkpoint's) runs between these.
  // BeginAppend waits out a running sync and counts the append; false, counting nothing, once a
  // write or sync failed (nothing more goes into the WAL). EndAppend once the record is in the
  // OS, or the write failed before it was (`failed`: RocksDB's WAL writer is then in its error
  // state, and no sync may follow); it wakes the sync thread waiting for the appends to end.
  bool BeginAppend();
  void EndAppend(bool failed);
  // The sync thread: makes the written groups durable with one WAL sync, publishes them and
  // answers their commands, in order.
  void SyncLoop();
  // Whether a group's WAL record was appended since the last sync; sync_mu_ held.
  bool AppendedSinceSync() const { return appended_seq_ > synced_seq_; }
  // Whether a sync is to be made: records wait for one, and no sync has failed (after a failure
  // every group is answered with it, and no sync is made again); sync thread, sync_mu_ held.
  bool SyncDue() const { return AppendedSinceSync() && sync_failure_.ok(); }
  void Answer(GroupCommit* commit, const Status& durable);
  // Appends one sealed event (and every fold's rows) to the batch, and its position to `runs`.
  Status AppendToBatch(const Event& event, GroupState* state, StreamRuns* runs);
  Status DecideOne(Writer* w, int64_t now_us, GroupState* state);
  Status ImportOne(Writer* w, GroupState* state);
  // Read options for the events family (see LedgerOptions::verify_checksums).
  rocksdb::ReadOptions EventReadOptions() const {
    rocksdb::ReadOptions read_options;
    read_options.verify_checksums = options_.verify_checksums;
    // A block read unverified is not cached: a cached block is never checked again.
    read_options.fill_cache = options_.verify_checksums;
    return read_options;
  }
  rocksdb::ColumnFamilyHandle* Family(std::string_view name) const {
    return families_.find(name)->second;
  }
  Status ReadEventsBySubject(Position after, size_t limit, const EventFilter& filter,
                             std::vector<Event>* out) const;

  LedgerOptions options_;
  // Writable opens: the exclusive lock on the directory's kDirLockFile (taken or handed over in
  // OpenDb), released after the DB is closed (destroyed after the members below).
  std::shared_ptr<DirLock> dir_lock_;
  rocksdb::DB* db_ = nullptr;
  // RocksDB's rate limiter; told what each group writes (LedgerOptions::background_write_pace).
  std::shared_ptr<BackgroundWritePacer> pacer_;
  std::unique_ptr<wal::EventGapFilter> gap_filter_;  // the open's wal_filter (OpenDb)
  IgnoreEveryRecord ignore_every_record_;  // instead, with LedgerOptions::table_files_only
  // Read-only opens: the file system without *.trash files (see OpenDb).
  std::shared_ptr<rocksdb::FileSystem> read_only_fs_;
  std::unique_ptr<rocksdb::Env> read_only_env_;
  // Writable opens: the file system whose WAL files report appends to WalWatch (WriteDecided),
  // over an InfoLogFileSystem.
  std::shared_ptr<rocksdb::FileSystem> wal_watch_fs_;
  std::unique_ptr<rocksdb::Env> wal_watch_env_;
  FamilyMap families_;
  std::vector<rocksdb::ColumnFamilyHandle*> families_by_id_;  // by column family id
  std::set<std::string, std::less<>> side_families_;          // LedgerOptions::side_families
  // Decided groups' rows no longer in use, kept for their memory (committer thread only).
  std::vector<std::unique_ptr<DecidedRows>> spare_rows_;
  void KeepSpare(std::unique_ptr<DecidedRows> rows);

  // Submitted commands waiting for the committer.
  mutable std::mutex mu_;
  std::condition_variable queue_cv_;
  std::deque<Writer*> queue_;          // guarded by mu_
  bool committer_waiting_ = false;     // guarded by mu_
  bool stopping_ = false;              // guarded by mu_
  std::atomic<size_t> deciding_{0};    // commands of the group the committer is deciding
  // Admitted, and the WAL record not yet appended (NoteAppended) or the group not yet handed to
  // the sync thread when it writes nothing.
  std::atomic<size_t> unwritten_{0};
  std::thread committer_, writer_, syncer_;
  std::unique_ptr<SideShredder> shredder_;  // read-write ledgers, from Start()

  // Decided groups handed to the write thread. The committer decides the next group while one is
  // written, reading the rows of those not yet written before the store's (GroupState).
  std::mutex write_mu_;
  std::condition_variable write_cv_;    // the write thread waits for a group, the committer for room
  std::deque<GroupCommit> to_write_;    // guarded by write_mu_, in commit order
  // The rows of every group handed over and not yet written (to_write_ and the one being
  // written), in commit order; and those written since the committer last took them back.
  std::vector<const GroupRows*> unwritten_rows_;              // guarded by write_mu_
  std::vector<std::unique_ptr<DecidedRows>> written_rows_;    // guarded by write_mu_
  size_t write_thread_groups_ = 0;  // guarded by write_mu_: handed over, not yet passed on
  bool write_waiting_ = false;    // guarded by write_mu_: a thread waits on write_cv_
  bool write_stopping_ = false;   // guarded by write_mu_

  // Chain state: committer thread only. It runs ahead of what is published while groups are
  // being written and synced.
  Position head_;
  std::string head_record_problem_;  // set at open only (LedgerOptions::tolerate_head_mismatch)
  std::string wal_gap_problem_;      // set at open only (EventGapFilter stopped)
  Hash head_hash_{};
  int64_t last_time_us_ = 0;

  // Keeps WAL appends and WAL syncs apart: RocksDB's WAL writer must not be synced after a failed
  // append, which only a check of wal_write_failed_ made while no append runs can rule out. A
  // write is appending from before its DB::Write until its record is in the OS (NoteAppended) or
  // the write failed; its memtable inserts then run beside the sync. The committer decides the
  // next group while a sync runs; only the next append waits for the sync. A checkpoint's Put
  // (PutCheckpoint, on a consumer's thread) appends as a group's write does, beside it, until it
  // returns: its own sync, when synced, does not overlap SyncWAL either (BeginAppend, EndAppend).
  std::mutex wal_mu_;
  std::condition_variable wal_cv_;
  size_t wal_appends_ = 0;         // guarded by wal_mu_: appends running
  bool wal_syncing_ = false;       // guarded by wal_mu_
  bool wal_write_failed_ = false;  // guarded by wal_mu_
  // A group failed to be written: those decided after it rest on it, and none may be written.
  bool group_failed_ = false;      // guarded by wal_mu_
  uint64_t last_write_seq_ = 0;    // writing threads only (one write at a time)

  // Written groups waiting for the sync thread.
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  std::vector<GroupCommit> written_;  // guarded by sync_mu_, in commit order
  bool sync_waiting_ = false;         // guarded by sync_mu_
  bool sync_stopping_ = false;        // guarded by sync_mu_
  // Guarded by sync_mu_: the commands of written_ and of groups appended but not yet handed.
  size_t written_commands_ = 0;
  uint64_t appended_seq_ = 0;  // guarded by sync_mu_: the newest write whose record is appended
  uint64_t handed_seq_ = 0;    // guarded by sync_mu_: the newest write handed to written_
  uint64_t synced_seq_ = 0;    // guarded by sync_mu_: the newest write a successful sync covered
  // Sync thread only: when the last WAL sync started (LedgerOptions::sync_interval_min).
  std::chrono::steady_clock::time_point last_sync_start_ =
      std::chrono::steady_clock::time_point::min();
  Status sync_failure_;  // sync thread only; sticky: an fsync error is reported once, so no later
                         // sync can be trusted (and a failed group's write: see SyncLoop)

  // Published after each durable group: what readers see.
  std::atomic<uint64_t> head_position_{0};
  mutable std::mutex published_mu_;
  Hash published_hash_{};             // guarded by published_mu_
  SharedSnapshot published_snapshot_;  // guarded by published_mu_; null when read-only
  std::atomic<bool> degraded_{false};

  LedgerMetrics metrics_;
  // Held while listeners run, so that RemoveCommitListener() waits for a running call.
  std::mutex listeners_mu_;
  uint64_t last_listener_id_ = 0;  // guarded by listeners_mu_
  std::vector<std::pair<uint64_t, std::function<void(Position)>>> listeners_;  // listeners_mu_
};

// RocksDB's info log (<dir>/LOG) on a full disk. RocksDB ignores the info log's write errors, but
// the file writer under its logger (WritableFileWriter; 7.8 built with assertions, as Debian ships
// it) asserts on every write after one that failed: once a flush of the info log had failed for
// want of space, the next line RocksDB logged -- the error of the group write that failed next --
// aborted ledgerd (SIGABRT) instead of leaving it degraded. The info log's file here reports
// every write as done: a line the disk has no room for is lost, and nothing else is affected.
class InfoLogFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  explicit InfoLogFile(std::unique_ptr<rocksdb::FSWritableFile>&& file)
      : rocksdb::FSWritableFileOwnerWrapper(std::move(file)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->Append(data, options, dbg));
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& verification_info,
                           rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->Append(data, options, verification_info, dbg));
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->PositionedAppend(data, offset, options, dbg));
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& verification_info,
                                     rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->PositionedAppend(data, offset, options, verification_info, dbg));
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->Flush(options, dbg));
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& options, rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->Sync(options, dbg));
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->Fsync(options, dbg));
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override {
    return Lossy(target()->RangeSync(offset, nbytes, options, dbg));
  }

 private:
  static rocksdb::IOStatus Lossy(rocksdb::IOStatus s) {
    s.PermitUncheckedError();
    return rocksdb::IOStatus::OK();
  }
};

// Set while InfoLogFileSystem::NewLogger runs on this thread: the file it opens is the info log.
thread_local bool opening_info_log = false;

// Writable opens: a file system whose info log is written through InfoLogFile. RocksDB's own
// logger (FileSystem::NewLogger) is kept; only its file is opened here, through every wrapper
// below (the base file system's NewLogger opens it by itself, past them).
class InfoLogFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit InfoLogFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base)
      : rocksdb::FileSystemWrapper(base) {}
  const char* Name() const override { return "InfoLogFileSystem"; }

  rocksdb::IOStatus NewLogger(const std::string& fname, const rocksdb::IOOptions& options,
                              std::shared_ptr<rocksdb::Logger>* result,
                              rocksdb::IODebugContext* dbg) override {
    opening_info_log = true;  // FileSystem::NewLogger opens the file with NewWritableFile below
    rocksdb::IOStatus s = rocksdb::FileSystem::NewLogger(fname, options, result, dbg);
    opening_info_log = false;
    return s;
  }
  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->NewWritableFile(fname, options, result, dbg);
    if (s.ok() && opening_info_log && *result != nullptr) {
      *result = std::make_unique<InfoLogFile>(std::move(*result));
    }
    return s;
  }
};

// A file system on which *.trash files (RocksDB's delete scheduler: files being cut down 2 MiB at
// a time) are not listed.
class TrashHidingFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit TrashHidingFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base)
      : rocksdb::FileSystemWrapper(base) {}
  const char* Name() const override { return "TrashHidingFileSystem"; }
  rocksdb::IOStatus GetChildren(const std::string& dir, const rocksdb::IOOptions& options,
                                std::vector<std::string>* result,
                                rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = rocksdb::FileSystemWrapper::GetChildren(dir, options, result, dbg);
    std::erase_if(*result, [](const std::string& name) { return name.ends_with(".trash"); });
    return s;
  }
  rocksdb::IOStatus GetChildrenFileAttributes(const std::string& dir,
                                              const rocksdb::IOOptions& options,
                                              std::vector<rocksdb::FileAttributes>* result,
                                              rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s =
        rocksdb::FileSystemWrapper::GetChildrenFileAttributes(dir, options, result, dbg);
    std::erase_if(*result, [](const rocksdb::FileAttributes& file) {
      return file.name.ends_with(".trash");
    });
    return s;
  }
};

// Obsolete write-ahead logs and table files are deleted by RocksDB's delete scheduler on a thread
// of its own (renamed *.trash first), cut 2 MiB at a time (ftruncate + fsync) at up to 256 MiB/s,
// instead of unlinked whole. Why: this machine's file system is ext4 mounted with `discard`, and
// freeing a 64 MiB file at once makes the next journal commit discard all of it: every fdatasync
// issued meanwhile -- the WAL syncs acknowledged writes wait for -- took 35-50 ms, once for each
// log deleted; cut 2 MiB at a time, at most 3 ms (`tools/bench/fsync_probe.py --delete-mb 64
// --delete-chunk-mb 2`; 1 MiB cuts make twice the fsyncs and were no better). The rate is twice
// what batched ingest writes, so the trash does not build up; past 8 times the live table files'
// size RocksDB deletes at once again.
constexpr int64_t kObsoleteFileDeleteBytesPerSecond = 256 << 20;
constexpr uint64_t kObsoleteFileDeleteChunkBytes = 2 << 20;
constexpr double kObsoleteFileTrashRatioMax = 8.0;

Status LedgerImpl::OpenDb() {
  rocksdb::DBOptions db_options;
  db_options.create_if_missing = options_.create_if_missing;
  db_options.create_missing_column_families = true;
  // A torn final record can only be a write that was never acknowledged (every acknowledged
  // write was synced); any corruption before the tail must stop the open instead of silently
  // dropping acknowledged events (the default kPointInTimeRecovery would).
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kTolerateCorruptedTailRecords;
  db_options.paranoid_checks = true;
  db_options.max_background_jobs = 2;
  // Table files written by flushes and compactions are handed to the disk 1 MiB at a time
  // (sync_file_range) instead of as one burst at the end: a burst of tens of MiB sits in front of
  // the WAL's fdatasync in the device queue and shows up as commit latency. Strict: each MiB is
  // written before the next one is queued, so a flush never has more than about 1 MiB in the
  // device's queue ahead of a WAL sync. Measured with `ledgerctl bench --mode latency` at
  // 35,000/s: p99 8-11 ms instead of 34-98 ms, and no fsync over 25 ms instead of 2-4 a run;
  // throughput unchanged (tools/bench/README.md).
  db_options.bytes_per_sync = 1 << 20;
  db_options.strict_bytes_per_sync = true;
  // A log file can only be deleted once every family with rows in it has flushed them; a family
  // written rarely (plans, checkpoints) would otherwise hold every log since its last write, and
  // a restart would replay all of them. Past this total, RocksDB flushes the families that hold
  // the oldest log.
  db_options.max_total_wal_size = options_.max_total_wal_bytes;
  if (options_.env != nullptr) db_options.env = options_.env;
  if (!options_.read_only) {
    // WriteDecided learns when a group's WAL record is in the OS before DB::Write returns, and the
    // sync starts while the memtable inserts run (events/wal_watch.h). The watch relies on a
    // record up to WalWatch::kArmBytesMax reaching the file as one buffered write.
    // Its info log is written through InfoLogFile (a full disk must not abort it).
    wal_watch_fs_ = NewWalWatchingFileSystem(
        std::make_shared<InfoLogFileSystem>(db_options.env->GetFileSystem()));
    wal_watch_env_ = rocksdb::NewCompositeEnv(wal_watch_fs_);
    db_options.env = wal_watch_env_.get();
    db_options.writable_file_max_buffer_size = WalWatch::kFileBufferBytes;
  }
  if (options_.background_write_pace > 0 && !options_.read_only) {
    BackgroundWritePacer::Options pacer_options;
    pacer_options.ingest_multiple = options_.background_write_pace;
    pacer_options.waited_us = &metrics_.background_write_waited_us;
    pacer_ = std::make_shared<BackgroundWritePacer>(pacer_options);
    db_options.rate_limiter = pacer_;
    db_options.listeners.push_back(
        std::make_shared<BackgroundWritePacer::StallListener>(pacer_.get()));
  }
  if (!options_.read_only) {
    db_options.sst_file_manager.reset(rocksdb::NewSstFileManager(
        db_options.env, nullptr, "", kObsoleteFileDeleteBytesPerSecond, true, nullptr,
        kObsoleteFileTrashRatioMax, kObsoleteFileDeleteChunkBytes));
  } else {
    // RocksDB deletes every *.trash file it finds at open, read-only opens too: `ledgerctl
    // verify` beside a running ledgerd would unlink the files its delete scheduler is cutting
    // down (whole, with the stall that avoids) and leave the scheduler counting them forever.
    // Read-only opens do not see them.
    read_only_fs_ = std::make_shared<TrashHidingFileSystem>(db_options.env->GetFileSystem());
    read_only_env_ = rocksdb::NewCompositeEnv(read_only_fs_);
    db_options.env = read_only_env_.get();
  }
  db_options.listeners.push_back(std::make_shared<TableFileCounter>(&metrics_));

  rocksdb::ColumnFamilyOptions cf_options;
  // Deciders look up keys that are usually absent (idempotency records, dedupe rows of folds):
  // whole-key bloom filters in the memtable and in every table file answer those without a
  // skiplist search or a block read per table file.
  rocksdb::BlockBasedTableOptions table_options;
  table_options.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table_options.whole_key_filtering = true;
  cf_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options));
  cf_options.memtable_prefix_bloom_size_ratio = 0.02;
  cf_options.memtable_whole_key_filtering = true;
  rocksdb::ColumnFamilyOptions events_options;
  // Stored events are not compressed: a flipped byte then surfaces as a hash-chain mismatch at
  // its exact position when verify reads without block checksums.
  events_options.compression = rocksdb::kNoCompression;
  events_options.write_buffer_size = options_.events_memtable_bytes;
  // Events are never overwritten or deleted and their keys only grow, so table files of the
  // family never overlap and a compaction has nothing to merge. Leveled compaction rewrote every
  // file once anyway: a file at the bottom level whose rows are older than the oldest snapshot is
  // marked for compaction to zero its sequence numbers (reason "BottommostFiles" in RocksDB's
  // LOG, with no option to turn it off in 7.8) -- 645 MB of 2.69 GB written in a 15 s batched
  // ingest run. Universal compaction with trivial moves moves the family's files between levels;
  // it merges (rewrites) only small files piled up at level 0 -- ledgerd flushes at each clean
  // stop, and an open flushes what its log replayed, so a store restarted many times gathers
  // them -- when their count passes the level-0 trigger (seen: 5 files of 5-100 KB after a
  // dozen restarts). Measured in alternating runs of `ledgerctl bench --mode batch`: 287k / 301k
  // / 301k events/s against 245k / 240k; `--mode single` async 92k / 95k against 86k / 85k
  // (tools/bench/README.md). A store written with leveled compaction is moved to universal's
  // layout once, at open (MoveEventsToUniversalLayout).
  events_options.compaction_style = rocksdb::kCompactionStyleUniversal;
  events_options.compaction_options_universal.allow_trivial_move = true;
  // Nor are they rewritten on a timer: RocksDB's defaults compact every file of a universal
  // family once every 30 days.
  events_options.ttl = 0;
  events_options.periodic_compaction_seconds = 0;
  // Keys only ever grow (positions; and per subject in the streams family): an insert hint that
  // remembers where the previous key of the same prefix went turns each memtable insert from a
  // skiplist search from the top into a short step, the largest cost of writing a large group.
  events_options.memtable_insert_with_hint_prefix_extractor.reset(
      rocksdb::NewFixedPrefixTransform(0));
  rocksdb::ColumnFamilyOptions streams_options = cf_options;
  streams_options.memtable_insert_with_hint_prefix_extractor =
      std::make_shared<StreamSubjectPrefix>();

  std::vector<std::string> names = {rocksdb::kDefaultColumnFamilyName, kEventsFamily,
                                    kStreamsFamily, kIdempotencyFamily, kCheckpointsFamily,
                                    kMetaFamily};
  for (const Fold* fold : options_.folds) names.emplace_back(fold->Name());
  for (const std::string& side : options_.side_families) {
    // A side family named like a fold would be rebuilt (emptied) with it, and one named like the
    // ledger's own would let a command write the log's families.
    if (side.empty() || std::find(names.begin(), names.end(), side) != names.end()) {
      return Status::InvalidArgument("invalid_side_family",
                                     "side family '" + side + "' is empty or already a family");
    }
    names.push_back(side);
    side_families_.insert(side);
  }
  std::error_code exists_error;  // the non-throwing overloads: an unreadable parent is an open error
  if (std::filesystem::exists(options_.path, exists_error)) {
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(rocksdb::Options(db_options, cf_options), options_.path,
                                        &existing)
            .ok()) {
      for (auto& name : existing) {
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      }
    }
  } else if (!options_.read_only) {
    LEDGER_RETURN_IF_ERROR(CreatePrivateDir(options_.path));
  }
  if (!options_.read_only && options_.dir_lock == nullptr) {
    LEDGER_RETURN_IF_ERROR(DirLock::Lock(options_.path, &dir_lock_));
  } else if (!options_.read_only) {
    if (options_.dir_lock->dir() != options_.path) {
      return Status::InvalidArgument("dir_lock_elsewhere", "the lock handed to the open is on " +
                                                               options_.dir_lock->dir() +
                                                               ", not on " + options_.path);
    }
    dir_lock_ = std::move(options_.dir_lock);
  }

  // Idempotency records are keyed by a SHA-256 (IdempotencyRecordKey) and only ever looked up
  // whole, never scanned: a hash memtable (buckets by the first 8 bytes, a tiny skiplist each)
  // inserts one without the search from the top of a skiplist of every record that a random
  // key costs. Flushes build the sorted order once, on a background thread. Measured at a fixed
  // 10,000 consumes/s, per thread over 6 s, three alternating pairs: committer 60.2 / 62.2 /
  // 63.8 µs per consume before, 53.2 / 58.0 / 47.5 after; the flush thread pays about as much
  // back when it sorts the buckets (≈ 6 µs per consume), so the gain is the committer's — the
  // serial part — not the machine's (tools/bench/README.md). Hash memtables
  // take their inserts from one thread at a time: RocksDB's own writer group does that (groups
  // are written one at a time anyway, under wal_mu_).
  db_options.allow_concurrent_memtable_write = false;
  rocksdb::ColumnFamilyOptions idempotency_options = cf_options;
  idempotency_options.prefix_extractor.reset(rocksdb::NewFixedPrefixTransform(8));
  idempotency_options.memtable_factory.reset(rocksdb::NewHashSkipListRepFactory(1 << 18, 4, 4));
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (auto& name : names) {
    descriptors.emplace_back(name, name == kEventsFamily    ? events_options
                                   : name == kStreamsFamily ? streams_options
                                   : name == kIdempotencyFamily ? idempotency_options
                                                                : cf_options);
  }
  // Stops the replay at a hole a power loss left between two logs (wal_log.h), from the event
  // after the last flushed one: a power loss can lose the whole oldest live log and keep a newer
  // one. A member: the database keeps the pointer in its options.
  std::optional<uint64_t> flushed_head;
  if (std::filesystem::exists(options_.path + "/CURRENT", exists_error)) {
    flushed_head = FlushedEventHead(db_options, options_.path, descriptors);
  }
  gap_filter_ =
      std::make_unique<wal::EventGapFilter>(options_.read_only ? "" : options_.path, flushed_head);
  db_options.wal_filter = gap_filter_.get();
  const bool table_files_only = options_.read_only && options_.table_files_only;
  if (table_files_only) {
    // No record replayed, so none checked: a damaged one must not stop the open either.
    db_options.wal_filter = &ignore_every_record_;
    db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kSkipAnyCorruptedRecords;
  }
  if (std::filesystem::exists(options_.path, exists_error) && !table_files_only) {
    // RocksDB would open past a zeroed header and drop the rest of its block (wal_log.h); a
    // read-only open (verify, export, replay) too, and then see a shorter, intact-looking chain.
    LEDGER_RETURN_IF_ERROR(wal::FindZeroedHeaders(options_.path));
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Options options(db_options, cf_options);
  rocksdb::Status s =
      options_.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, options_.path, descriptors, &handles, &db_)
          : rocksdb::DB::Open(db_options, options_.path, descriptors, &handles, &db_);
  if (s.IsCorruption() && !options_.read_only) {
    // A crash can tear the last, never-synced WriteBatch of a log (wal_log.h). Cut that
    // one shape off (the bytes cut off are saved first) and open once more; anything else stays
    // an error.
    wal::TornTailRepair repair;
    Status repaired = wal::RepairTornWalTail(options_.path, &repair);
    if (!repaired.ok()) {
      spdlog::error("could not repair the write-ahead log: {}", repaired.ToString());
    } else if (repair.repaired) {
      spdlog::warn(
          "{}: its last write was torn by a crash before its sync (never acknowledged): cut {} "
          "bytes at offset {}; the bytes cut off are saved as {} ({} log(s) cut in all, each "
          "one's cut bytes saved in torn-wal/)",
          repair.file, repair.cut_bytes, repair.cut_at, repair.copy, repair.logs);
      handles.clear();
      // The first look at the table files failed on the torn log: without the flushed head the
      // first replayed record would be taken whatever its position (a lost older log unseen).
      if (!flushed_head) flushed_head = FlushedEventHead(db_options, options_.path, descriptors);
      gap_filter_ = std::make_unique<wal::EventGapFilter>(options_.path, flushed_head);
      db_options.wal_filter = gap_filter_.get();
      s = rocksdb::DB::Open(db_options, options_.path, descriptors, &handles, &db_);
    }
  }
  // verify, export and replay open a live ledgerd's store: it can flush the events and delete
  // the logs that held them between the first look at the table files (flushed_head) and the
  // open proper, which then replays from a log that begins after the new flushed head. Compared
  // with the old one, that log looked like one lost to a power loss: "a log file is missing" on
  // an intact store. When the filter stopped and the open's own table files hold more than the
  // first look saw, the open is done again, compared from what they hold.
  for (int attempt = 1; options_.read_only && s.ok() && gap_filter_->stopped() &&
                        attempt < kReadOnlyOpenAttemptsMax;
       ++attempt) {
    const std::optional<uint64_t> opened_head = OpenedFlushedEventHead(db_, handles);
    if (!opened_head || opened_head == flushed_head) break;
    for (rocksdb::ColumnFamilyHandle* handle : handles) db_->DestroyColumnFamilyHandle(handle);
    handles.clear();
    delete db_;
    db_ = nullptr;
    flushed_head = opened_head;
    gap_filter_ = std::make_unique<wal::EventGapFilter>("", flushed_head);
    db_options.wal_filter = gap_filter_.get();
    s = rocksdb::DB::OpenForReadOnly(db_options, options_.path, descriptors, &handles, &db_);
  }
  const wal::EventGapFilter& gap = *gap_filter_;
  if (gap.stopped()) {
    // A log that begins with a group that appended nothing begins after the event its head names.
    const std::string begins =
        gap.next_position() != 0 ? "begins at event " + std::to_string(gap.next_position())
                                 : "begins after event " + std::to_string(gap.named_head());
    wal_gap_problem_ = gap.stopped_log() + " " + begins + " while the logs before it end at " +
                       std::to_string(gap.last_position()) + ": it and the logs after it were not replayed";
    std::string saved;
    for (const std::string& copy : gap.saved()) saved += (saved.empty() ? "" : ", ") + copy;
    spdlog::warn(
        "{} {} while the logs before it end at {}: a crash lost their last "
        "writes before their sync (never acknowledged, nor is anything after them); the replay "
        "stopped there, so that the log has no hole{}{}",
        gap.stopped_log(), begins, gap.last_position(),
        saved.empty() ? "" : "; the dropped logs are saved as ", saved);
    if (!gap.save_status().ok()) spdlog::error("{}", gap.save_status().ToString());
  }
  if (!s.ok()) return FromRocks(s);
  for (size_t i = 0; i < handles.size(); ++i) {
    families_[names[i]] = handles[i];
    const uint32_t id = handles[i]->GetID();
    if (id >= families_by_id_.size()) families_by_id_.resize(id + 1, nullptr);
    families_by_id_[id] = handles[i];
  }
  return options_.read_only ? Status::OK() : MoveEventsToUniversalLayout();
}

// Universal compaction writes its first run below L0 to the last level and later runs above the
// next older one, so in a universal tree the last level is in use whenever any level below L0 is.
// A store written before the events family moved to universal compaction has its files in a
// leveled tree instead (L1, L2, ... from the top, the last level empty); there the runs of new
// files soon fill the levels above the old ones, every merge after that has to be written to L0,
// which is never a trivial move, and the newest run is rewritten at every flush. One full
// compaction of the family to the last level (a single rewrite, once per store) puts it in
// universal's layout; from then on its files are only ever moved.
Status LedgerImpl::MoveEventsToUniversalLayout() {
  rocksdb::ColumnFamilyHandle* events = families_.at(kEventsFamily);
  rocksdb::ColumnFamilyMetaData meta;
  db_->GetColumnFamilyMetaData(events, &meta);
  if (meta.levels.size() < 2 || !meta.levels.back().files.empty()) return Status::OK();
  uint64_t below_l0 = 0;
  for (size_t level = 1; level < meta.levels.size(); ++level) below_l0 += meta.levels[level].size;
  if (below_l0 == 0) return Status::OK();
  spdlog::info("moving the events family's table files to universal compaction's layout: one "
               "rewrite of {} MiB, once for this store",
               meta.size >> 20);
  const auto start = std::chrono::steady_clock::now();
  LEDGER_RETURN_IF_ERROR(
      FromRocks(db_->CompactRange(rocksdb::CompactRangeOptions(), events, nullptr, nullptr)));
  spdlog::info("the events family is in universal compaction's layout ({:.1f} s)",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return Status::OK();
}

Status LedgerImpl::LoadHead() {
  const bool tolerate = options_.read_only && options_.tolerate_head_mismatch;
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Family(kMetaFamily), kHeadKey, &value);
  bool record_read = true;
  if (s.IsNotFound()) {
    head_ = Position(0);
    head_hash_ = Hash{};
  } else if (!s.ok()) {
    if (!tolerate || !s.IsCorruption()) return FromRocks(s);
    head_record_problem_ = "the chain head record cannot be read: " + s.ToString();
    record_read = false;
  } else if (!DecodeHead(value, &head_, &head_hash_)) {
    if (!tolerate) return Status::Corruption("malformed chain head record");
    head_record_problem_ = "the chain head record is malformed";
    record_read = false;
  }
  if (!record_read) {
    head_ = Position(0);
    head_hash_ = Hash{};
  }
  // The head record and the events are written in the same batch; they must agree. SeekToLast
  // reads the last block of every level-0 table file (and of the newest file of each other
  // level), not only the head's. A read-only open (verify, export) reads them without block
  // checksums: a damaged block in an older file is then reported, at its own position, by the
  // reads that cover it, instead of failing this open in the head's name.
  rocksdb::ReadOptions head_read = EventReadOptions();
  if (options_.read_only) {
    head_read.verify_checksums = false;
    head_read.fill_cache = false;  // nor cached for a checksummed read to take unchecked
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(head_read, Family(kEventsFamily)));
  it->SeekToLast();
  LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
  uint64_t last = it->Valid() ? DecodeFixed64BE(it->key().data()) : 0;
  if (options_.read_only && options_.table_files_only) {
    // The head record may name events only the logs hold: the table files' last event is the
    // head, its stored hash the head hash (verify checks it against its bytes).
    head_ = Position(last);
    head_hash_ = Hash{};
    const std::string_view stored = it->Valid() ? ToView(it->value()) : std::string_view();
    if (stored.size() >= head_hash_.size()) {
      std::copy(stored.end() - head_hash_.size(), stored.end(), head_hash_.begin());
    }
    head_record_problem_.clear();
    head_position_.store(head_.value());
    published_hash_ = head_hash_;
    return Status::OK();
  }
  if (last != head_.value() && (!tolerate || record_read)) {
    std::string problem = "chain head " + std::to_string(head_.value()) +
                          " disagrees with the last stored event " + std::to_string(last);
    if (!tolerate) return Status::Corruption(problem);
    head_record_problem_ = std::move(problem);
  } else if (it->Valid() && record_read) {
    // The last event's stored hash must be the head record's: an event rewritten and re-sealed
    // (a new hash over the new bytes) checks out on its own, and as the last one no event's
    // prev_hash shows it. Served and published, and the next append linked to the record's hash
    // after it: a broken link ledgerd would write itself.
    Hash stored_hash{};
    const std::string_view stored = ToView(it->value());
    if (stored.size() >= stored_hash.size()) {
      std::copy(stored.end() - stored_hash.size(), stored.end(), stored_hash.begin());
    }
    if (stored_hash != head_hash_) {
      // Worded as verify's own check of the chain's hash against the record, at this position.
      std::string problem = "its hash " + HexEncode(stored_hash).substr(0, 16) +
                            "... differs from the chain head record " +
                            HexEncode(head_hash_).substr(0, 16) + "...";
      if (!tolerate) {
        return Status::Corruption("the last stored event " + std::to_string(last) + ": " +
                                  problem);
      }
      head_record_problem_ = std::move(problem);
    }
  }
  if (tolerate) head_ = Position(std::max(last, head_.value()));
  // Only the writer needs the last event's time; a read-only open (verify) must not fail here on
  // a damaged last event that verify is about to name.
  if (it->Valid() && !options_.read_only) {
    Event event;
    LEDGER_RETURN_IF_ERROR(DecodeEvent(ToView(it->value()), &event));
    last_time_us_ = event.time_us;
  }
  head_position_.store(head_.value());
  published_hash_ = head_hash_;
  return Status::OK();
}

// A fold whose rows were written by other logic than its code's (its recorded Fold::Version()
// differs, or the store predates fold versions) is rebuilt: DeleteStaleFoldRows() deletes its
// rows and resets its checkpoint to 0, the catch-up below folds the whole log, and only then is
// the code's version recorded. The delete, the reset and the removal of the old version are one
// WriteBatch, and every catch-up batch carries its rows with the checkpoint, so a crash anywhere
// in between leaves a fold with no recorded version: the next open rebuilds it again from the
// start, whatever binary opens it (a rollback to the previous version after a crash mid-rebuild
// must not resume the new logic's rows as its own). An unchanged fold costs one Get.
Status LedgerImpl::DeleteStaleFoldRows(const Fold* fold, const uint32_t* recorded_version) {
  const std::string checkpoint_name = kFoldCheckpointPrefix + std::string(fold->Name());
  Position checkpoint;
  LEDGER_RETURN_IF_ERROR(GetCheckpoint(checkpoint_name, &checkpoint));
  rocksdb::ColumnFamilyHandle* family = Family(fold->Name());
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), family));
  it->SeekToFirst();
  LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
  // A new fold (no rows, no checkpoint, no version): the catch-up folds it from the start anyway.
  if (!it->Valid() && checkpoint.value() == 0 && recorded_version == nullptr) return Status::OK();
  if (recorded_version != nullptr) {
    spdlog::warn("projection {}: its rows were written by version {} of the fold, this build's is "
                 "{}: deleting them and rebuilding it from the start of the log ({} events)",
                 fold->Name(), *recorded_version, fold->Version(), head_.value());
  } else {
    spdlog::warn("projection {}: no fold version is recorded for its rows (written before fold "
                 "versions, or a rebuild was interrupted): deleting them and rebuilding version "
                 "{} from the start of the log ({} events)",
                 fold->Name(), fold->Version(), head_.value());
  }
  rocksdb::WriteBatch batch;
  if (it->Valid()) {
    const std::string first(ToView(it->key()));
    it->SeekToLast();
    LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
    // [first, last + 0x00): key + 0x00 is the least key after `last`, so every row goes.
    std::string end(ToView(it->key()));
    end.push_back('\0');
    LEDGER_RETURN_IF_ERROR(FromRocks(batch.DeleteRange(family, first, end)));
  }
  std::string zero;
  PutFixed64BE(&zero, 0);
  LEDGER_RETURN_IF_ERROR(FromRocks(batch.Put(Family(kCheckpointsFamily), checkpoint_name, zero)));
  LEDGER_RETURN_IF_ERROR(FromRocks(
      batch.Delete(Family(kCheckpointsFamily), kFoldVersionPrefix + std::string(fold->Name()))));
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  return FromRocks(db_->Write(write_options, &batch));
}

// The projection runner for folds that are behind the log (a fold added to an existing data
// directory, or one being rebuilt): reads the log once, from the oldest of their checkpoints,
// applies each event to every fold it is new to, and writes the rows in batches, each with the
// checkpoint of every fold in it. One pass whatever the number of folds behind: a build that
// changed five folds read the whole log five times, one rebuild after the other.
Status LedgerImpl::CatchUpFolds() {
  struct Behind {
    const Fold* fold;
    std::string checkpoint_name;
    Position from;
  };
  std::vector<Behind> behind;
  std::vector<const Fold*> rebuilt;  // their versions are recorded after the pass
  for (const Fold* fold : options_.folds) {
    uint32_t recorded = 0;
    const Status version_status = GetFoldVersion(fold->Name(), &recorded);
    if (!version_status.ok() && !version_status.IsNotFound()) return version_status;
    if (!version_status.ok() || recorded != fold->Version()) {
      LEDGER_RETURN_IF_ERROR(DeleteStaleFoldRows(fold, version_status.ok() ? &recorded : nullptr));
      rebuilt.push_back(fold);
    }
    Behind b{fold, kFoldCheckpointPrefix + std::string(fold->Name()), Position(0)};
    LEDGER_RETURN_IF_ERROR(GetCheckpoint(b.checkpoint_name, &b.from));
    if (b.from < head_) {
      spdlog::info("projection {} catching up from position {} to {}", fold->Name(),
                   b.from.value(), head_.value());
      behind.push_back(std::move(b));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  auto reported = start;
  Position from = head_;
  for (const Behind& b : behind) from = std::min(from, b.from);
  Position next = Next(from);
  // What is folded is checked as what is served (DecodeCheckedEvent), linked across batches and,
  // from the first, to the event before it: rows folded from an event rewritten through RocksDB
  // (re-sealed or not) would answer every query after the open. A damaged event fails the open.
  Hash prev{};  // event 1 links to the zero hash: a catch-up from 0 checks that it is there
  bool have_prev = from.value() == 0;
  if (from.value() != 0 && from < head_) {
    LEDGER_RETURN_IF_ERROR(StoredHashAt(from, &prev));
    have_prev = true;
  }
  while (next <= head_) {
    if (options_.cancel != nullptr && options_.cancel->load()) {
      spdlog::info("projections: catch-up stopped before position {} of {}: the open was "
                   "cancelled",
                   next.value(), head_.value());
      return Status::Unavailable("open_cancelled",
                                 "the open was cancelled while the projections caught up");
    }
    GroupRows rows;
    rocksdb::WriteBatch batch;
    const std::vector<const GroupRows*> none;
    GroupState state(db_, options_.path, &families_, &rows, &batch, &none);
    Status apply_status;
    Position last = from;
    LEDGER_RETURN_IF_ERROR(ScanRaw(next, head_, [&](Position p, std::string_view stored) {
      metrics_.catch_up_events_read.Add();
      Event event;
      apply_status = DecodeCheckedEvent(p, stored, have_prev ? &prev : nullptr, &event);
      prev = event.hash;
      have_prev = true;
      for (const Behind& b : behind) {
        // Each fold reads only its own family, so the folds share the batch's rows.
        if (apply_status.ok() && b.from < p) apply_status = b.fold->Apply(event, state, &state);
      }
      last = p;
      return apply_status.ok() && p.value() - next.value() + 1 < kCatchUpBatchEvents;
    }));
    LEDGER_RETURN_IF_ERROR(apply_status);
    for (const Behind& b : behind) {
      if (b.from >= last) continue;  // nothing new to it in this batch
      std::string value;
      PutFixed64BE(&value, last.value());
      state.PutRow(Family(kCheckpointsFamily), b.checkpoint_name, value);
    }
    LEDGER_RETURN_IF_ERROR(AppendRowsToBatch(rows, families_by_id_, &batch));
    rocksdb::WriteOptions write_options;
    write_options.sync = options_.sync;
    LEDGER_RETURN_IF_ERROR(FromRocks(db_->Write(write_options, &batch)));
    next = Next(last);
    const auto now = std::chrono::steady_clock::now();
    if (now - reported >= kCatchUpProgressInterval && next <= head_) {
      spdlog::info("projections caught up to position {} of {}", last.value(), head_.value());
      reported = now;
    }
  }
  if (!behind.empty()) {
    spdlog::info("projections caught up to position {} ({:.1f} s)", head_.value(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  if (rebuilt.empty()) return Status::OK();
  // Only now: until here a crash leaves no version, and the next open starts over.
  rocksdb::WriteBatch versions;
  for (const Fold* fold : rebuilt) {
    std::string version;
    PutFixed32BE(&version, fold->Version());
    LEDGER_RETURN_IF_ERROR(FromRocks(versions.Put(
        Family(kCheckpointsFamily), kFoldVersionPrefix + std::string(fold->Name()), version)));
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  return FromRocks(db_->Write(write_options, &versions));
}

CommandResult LedgerImpl::Submit(Command* command) {
  metrics_.commands_submitted.Add();
  Writer w;
  w.command = command;
  return Enqueue(&w);
}

void LedgerImpl::SubmitAsync(Command* command, std::function<void(CommandResult)> done) {
  metrics_.commands_submitted.Add();
  auto w = std::make_unique<Writer>();
  w->command = command;
  w->done = std::move(done);
  if (!Admit(w.get())) {
    w->done(std::move(w->result));
    return;
  }
  w.release();  // owned by the queue until answered
}

Status LedgerImpl::ImportEvents(const std::vector<Event>& events) {
  Writer w;
  w.import = &events;
  return Enqueue(&w).status;
}

CommandResult LedgerImpl::Enqueue(Writer* w) {
  if (Admit(w)) w->Wait();
  return std::move(w->result);
}

bool LedgerImpl::Admit(Writer* w) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (options_.read_only) {
      w->result.status = Status::Unavailable("read_only", "the ledger is open read-only");
      return false;
    }
    if (degraded_.load() || stopping_) {
      w->result.status = DegradedStatus();
      return false;
    }
    if (queue_.size() >= options_.write_queue_max) {
      metrics_.commands_busy.Add();
      w->result.status = Status::Busy("write queue full");
      return false;
    }
    queue_.push_back(w);
    unwritten_.fetch_add(1);
    wake = committer_waiting_;
  }
  if (wake) queue_cv_.notify_one();
  return true;
}

void LedgerImpl::Start() {
  shredder_ = std::make_unique<SideShredder>(db_);
  shredder_->Start();
  // Once at open too: a delete acknowledged just before a crash was never compacted.
  for (const std::string& side : side_families_) shredder_->Request(Family(side), 0);
  committer_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ledger-commit");  // for top -H, perf, gdb
    CommitLoop();
  });
  writer_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ledger-write");
    WriteLoop();
  });
  syncer_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ledger-sync");
    SyncLoop();
  });
}

void LedgerImpl::Stop() {
  if (!committer_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  queue_cv_.notify_one();
  committer_.join();  // it hands over every queued command first
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    write_stopping_ = true;
  }
  write_cv_.notify_all();
  writer_.join();  // it writes every group handed over first
  {
    std::lock_guard<std::mutex> lock(sync_mu_);
    sync_stopping_ = true;
  }
  sync_cv_.notify_one();
  syncer_.join();
  shredder_->Stop();  // after the last answer: it compacts for every delete acknowledged
}

void LedgerImpl::CommitLoop() {
  std::vector<const GroupRows*> unwritten;
  for (;;) {
    GroupCommit commit;
    {
      std::unique_lock<std::mutex> lock(mu_);
      while (queue_.empty() && !stopping_) {
        committer_waiting_ = true;
        queue_cv_.wait(lock);
        committer_waiting_ = false;
      }
      if (queue_.empty()) return;  // stopping, and everything queued was handed over
      // The group: every queued command that fits the limits, in submission order.
      size_t events_budget = 0;
      while (!queue_.empty() && commit.members.size() < limits::kGroupCommandsMax) {
        Writer* next = queue_.front();
        size_t weight = next->import != nullptr ? next->import->size() : 1;
        if (!commit.members.empty() && events_budget + weight > limits::kGroupEventsMax) break;
        events_budget += weight;
        commit.members.push_back(next);
        queue_.pop_front();
      }
      deciding_.store(commit.members.size());
    }
    {
      // The groups still to be written, and back the rows of those written meanwhile: the
      // previous group's `unwritten` was the last reference to them.
      std::lock_guard<std::mutex> lock(write_mu_);
      unwritten = unwritten_rows_;
      for (auto& rows : written_rows_) KeepSpare(std::move(rows));
      written_rows_.clear();
    }
    if (!unwritten.empty()) metrics_.groups_pipelined.Add();
    DecideGroup(&commit, unwritten);
    // A group goes to the write thread when it is large and more commands are queued: the next
    // group is then decided while this one is written. Otherwise, when nothing waits to be
    // written, it is written here -- a hand-off costs a thread wake-up, about what writing a small
    // group takes, and gains nothing when there is no next group to decide meanwhile. Behind a
    // group not yet written every group goes there, even one that writes nothing: it may have
    // read that group's rows (an idempotent replay of it, say) and must not be answered before
    // that group is durable.
    bool hand_off = false;
    if (commit.decided != nullptr) {
      const size_t min = options_.write_thread_entries_min;
      const size_t entries = commit.decided->batch.Count() + commit.decided->rows.mutations();
      if (min == 0) {
        hand_off = true;
      } else if (entries >= min) {
        std::lock_guard<std::mutex> lock(mu_);
        hand_off = !queue_.empty();
      }
    }
    std::unique_lock<std::mutex> lock(write_mu_);
    if (write_thread_groups_ == 0 && !hand_off) {
      lock.unlock();
      if (commit.decided != nullptr) {
        WriteDecided(&commit);
        KeepSpare(std::move(commit.decided));
      }
      HandToSync(std::move(commit));
    } else {
      while (to_write_.size() >= kWriteQueueGroupsMax) {
        write_waiting_ = true;
        write_cv_.wait(lock);
      }
      if (commit.decided != nullptr) unwritten_rows_.push_back(&commit.decided->rows);
      to_write_.push_back(std::move(commit));
      ++write_thread_groups_;
      const bool wake = write_waiting_;
      write_waiting_ = false;
      lock.unlock();
      if (wake) write_cv_.notify_all();
    }
    deciding_.store(0);
  }
}

void LedgerImpl::WriteLoop() {
  for (;;) {
    GroupCommit commit;
    {
      std::unique_lock<std::mutex> lock(write_mu_);
      while (to_write_.empty() && !write_stopping_) {
        write_waiting_ = true;
        write_cv_.wait(lock);
      }
      if (to_write_.empty()) return;  // stopping, and every group handed over was written
      commit = std::move(to_write_.front());
      to_write_.pop_front();
    }
    std::unique_ptr<DecidedRows> rows;
    if (commit.decided != nullptr) {
      WriteDecided(&commit);
      rows = std::move(commit.decided);
    }
    HandToSync(std::move(commit));
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(write_mu_);
      if (rows != nullptr) {
        unwritten_rows_.erase(unwritten_rows_.begin());  // this group's: the oldest
        written_rows_.push_back(std::move(rows));
      }
      --write_thread_groups_;  // only now may the committer pass a later group on itself
      wake = write_waiting_;
      write_waiting_ = false;
    }
    if (wake) write_cv_.notify_all();
  }
}

void LedgerImpl::NoteAppended(GroupCommit* commit) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(sync_mu_);
    unwritten_.fetch_sub(commit->members.size());
    written_commands_ += commit->members.size();
    appended_seq_ = commit->write_seq;
    commit->appended = true;
    wake = sync_waiting_;
  }
  EndAppend(/*failed=*/false);  // only now, after appended_seq_: a sync that starts covers it
  if (wake) sync_cv_.notify_one();
}

bool LedgerImpl::BeginAppend() {
  std::unique_lock<std::mutex> l(wal_mu_);
  wal_cv_.wait(l, [this] { return !wal_syncing_; });
  if (group_failed_) return false;
  ++wal_appends_;
  return true;
}

void LedgerImpl::EndAppend(bool failed) {
  {
    std::lock_guard<std::mutex> l(wal_mu_);
    --wal_appends_;
    if (failed) {
      wal_write_failed_ = true;
      group_failed_ = true;
    }
  }
  wal_cv_.notify_all();
}

void LedgerImpl::HandToSync(GroupCommit commit) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(sync_mu_);
    if (!commit.appended) {
      unwritten_.fetch_sub(commit.members.size());
      written_commands_ += commit.members.size();
    }
    if (commit.write_seq != 0) handed_seq_ = commit.write_seq;
    written_.push_back(std::move(commit));
    wake = sync_waiting_;
  }
  if (wake) sync_cv_.notify_one();
}

void LedgerImpl::SyncLoop() {
  std::vector<GroupCommit> groups;
  for (;;) {
    bool need_sync = false;
    {
      std::unique_lock<std::mutex> lock(sync_mu_);
      while (written_.empty() && !SyncDue() && !sync_stopping_) {
        sync_waiting_ = true;
        sync_cv_.wait(lock);
        sync_waiting_ = false;
      }
      if (written_.empty() && !SyncDue()) return;
      // Pacing (LedgerOptions::sync_interval_min): too soon after the last sync, and too few
      // commands waiting to be worth a sync of their own: gather the groups written meanwhile.
      // Groups that wrote nothing (rejections, replays) need no sync and are not held back.
      if (options_.sync_interval_min.count() > 0 && options_.sync && sync_failure_.ok()) {
        const auto due = last_sync_start_ + options_.sync_interval_min;
        bool paced = false;
        while (written_commands_ < kPacedSyncCommandsEnough && !sync_stopping_ &&
               AppendedSinceSync() && std::chrono::steady_clock::now() < due) {
          if (!paced) metrics_.syncs_paced.Add();
          paced = true;
          sync_waiting_ = true;
          sync_cv_.wait_until(lock, due);
          sync_waiting_ = false;
        }
      }
      // Commands already admitted but not yet appended would miss this sync and wait a whole
      // extra one: give the committer (or the write thread) a moment to append them, so that the
      // callers answered by one sync come back as one group instead of splitting into two
      // alternating half-size groups. Bounded, so a writer that never runs dry cannot hold a
      // sync back.
      const auto deadline = std::chrono::steady_clock::now() + kSyncCoalesceMax;
      while (unwritten_.load() > 0 && !sync_stopping_) {
        sync_waiting_ = true;
        const bool timed_out = sync_cv_.wait_until(lock, deadline) == std::cv_status::timeout;
        sync_waiting_ = false;
        if (timed_out) break;
      }
      need_sync = SyncDue();
    }
    // The sync covers every record appended before it starts: those of the written groups, and
    // the one whose DB::Write may still be inserting into the memtables (NoteAppended).
    uint64_t covered = 0;
    bool beside_write = false;  // a covered group's DB::Write was still running
    rocksdb::Status s;
    if (need_sync) {
      bool syncing = false;
      {
        std::unique_lock<std::mutex> l(wal_mu_);
        wal_cv_.wait(l, [this] { return wal_appends_ == 0; });
        if (wal_write_failed_) {
          // Groups written before the failed one are in doubt: RocksDB's WAL writer is in its
          // error state, and syncing it then is a usage error (an assertion in RocksDB).
          s = rocksdb::Status::IOError("a later WAL write failed before the sync");
          group_failed_ = true;
        } else {
          wal_syncing_ = true;  // no append starts until the sync ends
          syncing = true;
        }
      }
      {
        std::lock_guard<std::mutex> lock(sync_mu_);
        covered = appended_seq_;
        beside_write = covered > handed_seq_;
      }
      if (syncing) {
        if (options_.sync) {
          const auto sync_started = std::chrono::steady_clock::now();
          last_sync_start_ = sync_started;
          s = db_->SyncWAL();
          metrics_.sync_seconds.Observe(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_started)
                  .count());
        }
        {
          // No group is written after a failed sync: after an fsync error the kernel may have
          // dropped the pages that failed, and records appended behind them -- made durable by a
          // later sync (a flush's, a checkpoint's) -- would turn the unsynced tail into a hole.
          std::lock_guard<std::mutex> l(wal_mu_);
          wal_syncing_ = false;
          if (!s.ok()) group_failed_ = true;
        }
        wal_cv_.notify_all();
      }
      if (s.ok()) {
        metrics_.syncs.Add();
        if (beside_write) metrics_.syncs_beside_write.Add();
      } else {
        sync_failure_ = FromRocks(s);
        metrics_.write_failures.Add();
        degraded_.store(true);
        spdlog::error("WAL sync failed, the ledger is now read-only: {}", s.ToString());
      }
    }
    {
      // The groups in order, up to the first whose record the sync did not cover (appended while
      // it ran): they wait for the next one, and so does every group behind them (a rejection or
      // replay behind one may rest on it). A covered group still in its memtable inserts is
      // waited for: it is published only once readers can see it. After a failure every group
      // is taken, to be answered with it.
      std::unique_lock<std::mutex> lock(sync_mu_);
      while (handed_seq_ < covered) {
        sync_waiting_ = true;
        sync_cv_.wait(lock);
        sync_waiting_ = false;
      }
      if (s.ok() && sync_failure_.ok()) synced_seq_ = std::max(synced_seq_, covered);
      const bool failed = !sync_failure_.ok();
      size_t taken = 0;
      for (; taken < written_.size(); ++taken) {
        const GroupCommit& g = written_[taken];
        if (!failed && g.wrote && g.status.ok() && g.write_seq > synced_seq_) break;
        written_commands_ -= g.members.size();
      }
      groups.clear();
      std::move(written_.begin(), written_.begin() + static_cast<std::ptrdiff_t>(taken),
                std::back_inserter(groups));
      written_.erase(written_.begin(), written_.begin() + static_cast<std::ptrdiff_t>(taken));
    }
    const GroupCommit* last_written = nullptr;
    for (const GroupCommit& g : groups) {
      if (g.wrote && g.status.ok()) last_written = &g;
    }
    if (last_written != nullptr && sync_failure_.ok()) {
      {
        std::lock_guard<std::mutex> l(published_mu_);
        published_hash_ = last_written->head_hash;
        published_snapshot_ = last_written->snapshot;
      }
      head_position_.store(last_written->head.value());
      std::lock_guard<std::mutex> l(listeners_mu_);
      for (const auto& [id, listener] : listeners_) listener(last_written->head);
    }
    // A group that wrote nothing only read state: it is answerable now, unless a sync or an
    // earlier group's write failed (its replays or decisions may rest on a group that is not
    // durable: the committer may have decided it on top of the failed group before that one
    // was written). Both failures are sticky.
    for (GroupCommit& g : groups) {
      if (!g.status.ok() && sync_failure_.ok()) sync_failure_ = g.status;
      Answer(&g, sync_failure_);
    }
    // Their read views too: kept while this thread waits, an answered group's snapshot held
    // back every compaction that waits for views older than a later delete (SideShredder) --
    // until the next write.
    groups.clear();
  }
}

void LedgerImpl::Answer(GroupCommit* commit, const Status& durable) {
  if (!commit->status.ok()) {
    metrics_.write_failures.Add();
    spdlog::error("group commit failed, the ledger is now read-only: {}",
                  commit->status.ToString());
  } else if (durable.ok() && commit->wrote) {
    metrics_.write_seconds.Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - commit->started)
            .count());
    metrics_.groups_committed.Add();
    metrics_.events_appended.Add(commit->events);
    metrics_.group_commands.Observe(static_cast<double>(commit->members.size()));
    metrics_.group_events.Observe(static_cast<double>(commit->events));
  }
  const bool failed = !commit->status.ok() || !durable.ok();
  for (Writer* w : commit->members) {
    // Every answer of a failed group depends on state that is not durable (its own writes, or a
    // replay or a decision read from a group whose sync failed): none of it is given — not even a
    // rejection, which may rest on that state (a 429 for usage the failed group admitted).
    if (failed) {
      w->result = CommandResult{};
      w->result.status = Status::Unavailable("storage_degraded", "storage write failed");
    }
    // Queued before the answer, so that a caller who waits for side compactions after it waits
    // for this one.
    if (!failed && w->result.status.ok() && commit->snapshot != nullptr) {
      for (rocksdb::ColumnFamilyHandle* family : w->side_deletes) {
        shredder_->Request(family, commit->snapshot->GetSequenceNumber());
      }
    }
    if (w->done) {
      std::unique_ptr<Writer> owned(w);
      owned->done(std::move(owned->result));
    } else {
      w->Signal(Writer::kDone);
    }
  }
}

Status LedgerImpl::AppendToBatch(const Event& event, GroupState* state, StreamRuns* runs) {
  std::string stored;
  EncodeEvent(event, &stored);
  std::string key = EncodePositionKey(event.position.value());
  LEDGER_RETURN_IF_ERROR(state->AppendEvent(Family(kEventsFamily), key, stored));
  runs->Add(event.subject, event.position);
  for (const Fold* fold : options_.folds) {
    LEDGER_RETURN_IF_ERROR(fold->Apply(event, *state, state));
  }
  return Status::OK();
}

Status LedgerImpl::DecideOne(Writer* w, int64_t now_us, GroupState* state) {
  Command* command = w->command;
  CommandResult& result = w->result;
  std::string idempotency_key;
  if (!command->idempotency_key.empty()) {
    if (command->idempotency_key.size() > limits::kIdempotencyKeyBytesMax ||
        command->idempotency_scope.size() > limits::kIdempotencyScopeBytesMax) {
      return Status::InvalidArgument("invalid_idempotency_key", "Idempotency-Key too long");
    }
    Hash record_key =
        IdempotencyRecordKey(command->idempotency_scope, command->idempotency_key);
    idempotency_key.assign(HashView(record_key));
    std::string value;
    Status s = state->Get(kIdempotencyFamily, idempotency_key, &value);
    if (s.ok()) {
      IdempotencyRecord record;
      if (!DecodeIdempotencyRecord(value, &record)) {
        return Status::Corruption("malformed idempotency record");
      }
      if (record.request_hash != command->request_hash) {
        return Status::Conflict("idempotency_key_reused",
                                "Idempotency-Key was used with a different request");
      }
      metrics_.idempotent_replays.Add();
      result.http_status = record.http_status;
      result.body = std::move(record.body);
      result.position = record.position;
      result.replayed = true;
      command->Replayed(DecideContext{now_us, head_, state});
      return Status::OK();
    }
    if (!s.IsNotFound()) return s;
  }

  Decision decision;
  DecideContext context{now_us, head_, state};
  LEDGER_RETURN_IF_ERROR(command->Decide(context, &decision));
  if (decision.events.size() > limits::kCommandEventsMax) {
    return Status::Make(Code::kPayloadTooLarge, "too_many_events", "command appends too many");
  }
  StreamRuns runs;
  for (NewEvent& ne : decision.events) {
    LEDGER_RETURN_IF_ERROR(ValidateNewEvent(ne));
    Event event;
    event.position = Next(head_);
    event.time_us = now_us;
    event.id = NewUuid();
    event.type = std::move(ne.type);
    event.subject = std::move(ne.subject);
    event.data = std::move(ne.data);
    event.prev_hash = head_hash_;
    SealEvent(&event);
    LEDGER_RETURN_IF_ERROR(AppendToBatch(event, state, &runs));
    head_ = event.position;
    head_hash_ = event.hash;
  }
  runs.WriteTo(state, Family(kStreamsFamily));
  for (const SideRow& row : decision.side_rows) {
    if (side_families_.count(row.family) == 0) {
      return Status::Internal("side row of '" + row.family + "', not a side family");
    }
    LEDGER_RETURN_IF_ERROR(row.deleted ? state->Delete(row.family, row.key)
                                       : state->Put(row.family, row.key, row.value));
    if (row.deleted || row.shred_replaced) w->side_deletes.push_back(Family(row.family));
  }
  if (!idempotency_key.empty()) {
    state->PutRow(Family(kIdempotencyFamily), idempotency_key,
                  EncodeIdempotencyRecord(command->request_hash, head_, decision.http_status,
                                          decision.body));
  }
  result.http_status = decision.http_status;
  result.body = std::move(decision.body);
  result.position = head_;
  result.events_appended = static_cast<uint32_t>(decision.events.size());
  return Status::OK();
}

Status LedgerImpl::ImportOne(Writer* w, GroupState* state) {
  StreamRuns runs;
  for (const Event& source : *w->import) {
    if (source.position != Next(head_)) {
      return Status::InvalidArgument("position_gap", "imported events must continue the head");
    }
    if (source.prev_hash != head_hash_) {
      return Status::Corruption("imported event " + std::to_string(source.position.value()) +
                                " does not link to the chain head");
    }
    Event event = source;
    SealEvent(&event);
    if (event.hash != source.hash) {
      return Status::Corruption("imported event " + std::to_string(source.position.value()) +
                                " fails its hash");
    }
    LEDGER_RETURN_IF_ERROR(AppendToBatch(event, state, &runs));
    head_ = event.position;
    head_hash_ = event.hash;
    last_time_us_ = std::max(last_time_us_, event.time_us);
    w->result.events_appended++;
  }
  runs.WriteTo(state, Family(kStreamsFamily));
  w->result.position = head_;
  return Status::OK();
}

// Clearing keeps a batch's and a row log's capacity: one burst of large groups would otherwise
// hold their memory for good.
void LedgerImpl::KeepSpare(std::unique_ptr<DecidedRows> rows) {
  if (rows->batch.GetDataSize() > limits::kSpareBatchBytesMax ||
      rows->rows.mutations() > limits::kSpareRowMutationsMax) {
    return;
  }
  spare_rows_.push_back(std::move(rows));
}

void LedgerImpl::DecideGroup(GroupCommit* commit,
                             const std::vector<const GroupRows*>& unwritten) {
  const std::vector<Writer*>& group = commit->members;
  // Commands queued behind a failed group must not run: the store is read-only from then on.
  if (degraded_.load()) {
    for (Writer* w : group) {
      w->result = CommandResult{};
      w->result.status = DegradedStatus();
    }
    return;
  }
  std::unique_ptr<DecidedRows> decided;
  if (spare_rows_.empty()) {
    decided = std::make_unique<DecidedRows>();
  } else {
    decided = std::move(spare_rows_.back());
    spare_rows_.pop_back();
    decided->rows.Clear();
    decided->batch.Clear();
  }
  GroupState state(db_, options_.path, &families_, &decided->rows, &decided->batch, &unwritten);
  // Event time never goes backwards in the log, whatever the wall clock does.
  const int64_t now_us = std::max(options_.clock->NowMicros(), last_time_us_);

  for (size_t i = 0; i < group.size(); ++i) {
    if (i > 0 && (commit->events >= limits::kGroupEventsMax ||
                  decided->batch.GetDataSize() >= limits::kGroupBytesMax)) {
      // Full: the rest wait, in order, at the head of the queue for the next group.
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t j = group.size(); j-- > i;) queue_.push_front(group[j]);
      commit->members.resize(i);
      deciding_.store(i);
      break;
    }
    Writer* w = group[i];
    const Position command_start = head_;
    const Hash command_start_hash = head_hash_;
    state.SetSavePoint();
    Status s = w->import != nullptr ? ImportOne(w, &state) : DecideOne(w, now_us, &state);
    if (!s.ok()) {
      state.RollbackToSavePoint();
      head_ = command_start;
      head_hash_ = command_start_hash;
      w->result = CommandResult{};
      w->result.status = s;
      w->result.position = head_;
      metrics_.commands_rejected.Add();
      continue;
    }
    state.PopSavePoint();
    commit->events += w->result.events_appended;
  }

  if (state.empty()) {  // only rejections and replays
    KeepSpare(std::move(decided));
    return;
  }
  std::string position_value;
  PutFixed64BE(&position_value, head_.value());
  state.PutRow(Family(kMetaFamily), kHeadKey, EncodeHead(head_, head_hash_));
  for (const Fold* fold : options_.folds) {
    state.PutRow(Family(kCheckpointsFamily), kFoldCheckpointPrefix + std::string(fold->Name()),
                 position_value);
  }
  // The next group is decided on top of this one from here on, written or not: if its write
  // fails, the ledger is degraded and every group after it fails as well.
  last_time_us_ = std::max(last_time_us_, now_us);
  commit->head = head_;
  commit->head_hash = head_hash_;
  commit->decided = std::move(decided);
}

void LedgerImpl::WriteDecided(GroupCommit* commit) {
  // Written without sync: the WAL record reaches the OS and the memtables here, and the sync
  // thread syncs it while later groups are decided and written. Readers never see it before
  // then: they read the snapshot published with the sync, and the log up to the published head.
  DecidedRows& decided = *commit->decided;
  commit->wrote = true;
  commit->started = std::chrono::steady_clock::now();
  Status s = AppendRowsToBatch(decided.rows, families_by_id_, &decided.batch);
  if (!s.ok()) {
    spdlog::error("could not build the group's batch: {}", s.ToString());
    std::lock_guard<std::mutex> l(wal_mu_);
    group_failed_ = true;
  } else if (!BeginAppend()) {
    // The groups after a failed one were decided on top of it.
    s = Status::Unavailable("storage_degraded", "an earlier group's write failed");
  }
  if (s.ok()) {
    commit->write_seq = ++last_write_seq_;
    WalWatch watch;
    watch.Arm(decided.batch.GetDataSize(), [this, commit] {
      NoteAppended(commit);
      if (options_.wal_appended_for_test) options_.wal_appended_for_test();
    });
    s = FromRocks(db_->Write(rocksdb::WriteOptions(), &decided.batch));
    if (s.ok() && !commit->appended) NoteAppended(commit);  // the watch was not armed or fired
    if (!s.ok() && !commit->appended) {
      // No later group may be written, and no sync may follow the failed append.
      EndAppend(/*failed=*/true);
    } else {
      // The append ended in NoteAppended. A failure after it (the memtable inserts) still leaves
      // no later group to be written.
      std::lock_guard<std::mutex> l(wal_mu_);
      if (!s.ok()) {
        group_failed_ = true;
      } else if (pacer_ != nullptr) {
        pacer_->NoteIngest(static_cast<int64_t>(decided.batch.GetDataSize()),
                           std::chrono::steady_clock::now());
      }
    }
  }
  if (!s.ok()) {
    // The group is lost as a whole; nothing of it was acknowledged. Stop accepting writes at once
    // (no later group may be written on top of it): what RocksDB has on disk is recovered (and the
    // tail decided) by the next open.
    commit->status = s;
    degraded_.store(true);
    return;
  }
  commit->snapshot = MakeSharedSnapshot(db_);
}

std::unique_ptr<ReadView> LedgerImpl::Snapshot() const {
  SharedSnapshot snapshot;
  {
    std::lock_guard<std::mutex> l(published_mu_);
    snapshot = published_snapshot_;
  }
  if (snapshot == nullptr) snapshot = MakeSharedSnapshot(db_);  // read-only: nothing in flight
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot.get();
  std::string value;
  Position position(0);
  Hash hash{};
  if (db_->Get(read_options, Family(kMetaFamily), kHeadKey, &value).ok()) {
    DecodeHead(value, &position, &hash);
  }
  return std::make_unique<SnapshotView>(db_, options_.path, &families_, position, std::move(snapshot));
}

Status LedgerImpl::ReadEvents(Position after, size_t limit, const EventFilter& filter,
                              std::vector<Event>* out) const {
  out->clear();
  limit = std::min(limit, limits::kReadEventsMax);
  if (!filter.subject.empty()) return ReadEventsBySubject(after, limit, filter, out);
  if (after.value() == UINT64_MAX) return Status::OK();  // nothing after it (Next would wrap)
  // What is read here is served (GET /api/v1/events): every event read, matching the filter or
  // not, is checked (DecodeCheckedEvent), each linked to the one read before it. A damaged one
  // fails the whole read, the events before it included: a page that stopped short of it would
  // look like the end of the log.
  // Both ends are linked too. The first event to the stored hash of the event at `after`; and
  // the last one to the event after it, when the log holds one, by one more event scanned (its
  // prev_hash only): an event rewritten and re-sealed verifies on its own, only its successor's
  // link shows it, and a page ending at it (event 64 of a read of 64) was served with no later
  // read to notice. Past the head there is nothing to link to yet.
  Status decode_status;
  Hash prev{};  // event 1 links to the zero hash: a read from 0 checks that it is there
  bool have_prev = after.value() == 0;
  if (after.value() != 0 && after < Position(head_position_.load())) {
    LEDGER_RETURN_IF_ERROR(StoredHashAt(after, &prev));
    have_prev = true;
  }
  const uint64_t up_to = filter.up_to.value();
  const Position scan_to(up_to == 0 || up_to == UINT64_MAX ? up_to : up_to + 1);
  bool full = false;
  LEDGER_RETURN_IF_ERROR(ScanRaw(Next(after), scan_to, [&](Position p, std::string_view v) {
    if (full || (up_to != 0 && p.value() > up_to)) {
      // The event after the read's last one: its link only, and it is not served.
      if (have_prev) decode_status = CheckEventLink(p, v, prev);
      return false;
    }
    Event event;
    decode_status = DecodeCheckedEvent(p, v, have_prev ? &prev : nullptr, &event);
    if (!decode_status.ok()) return false;
    prev = event.hash;
    have_prev = true;
    if (!filter.type.empty() && event.type != filter.type) return true;
    out->push_back(std::move(event));
    full = out->size() >= limit;
    return true;
  }));
  if (!decode_status.ok()) out->clear();
  return decode_status;
}

Status LedgerImpl::StoredHashAt(Position at, Hash* out) const {
  std::string value;
  const rocksdb::Status got =
      db_->Get(EventReadOptions(), Family(kEventsFamily), EncodePositionKey(at.value()), &value);
  if (got.IsNotFound()) {
    return Status::Corruption("the log has no event at position " + std::to_string(at.value()) +
                              " (`ledgerctl verify` names the first damaged position)");
  }
  LEDGER_RETURN_IF_ERROR(EventReadFailure(got, Position(at.value() - 1)));
  if (!StoredEventHash(value, out)) {
    return Status::Corruption("the stored event at position " + std::to_string(at.value()) +
                              " cannot be decoded: event record too short");
  }
  return Status::OK();
}

Status LedgerImpl::ReadEventsBySubject(Position after, size_t limit, const EventFilter& filter,
                                       std::vector<Event>* out) const {
  std::string prefix = filter.subject;
  prefix.push_back('\0');
  uint64_t head = head_position_.load();  // a group being synced is not published yet
  if (filter.up_to.value() != 0) head = std::min(head, filter.up_to.value());
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), Family(kStreamsFamily)));
  // A run that starts at or before `after` may go on past it: start at the last run starting at
  // or before it, if there is one for this subject.
  it->SeekForPrev(StreamKey(filter.subject, after));
  if (!it->Valid() || !ToView(it->key()).starts_with(prefix)) {
    LEDGER_RETURN_IF_ERROR(EventReadFailure(it->status(), after));
    it->Seek(StreamKey(filter.subject, Next(after)));
  }
  std::string value;
  std::vector<uint64_t> positions;
  Hash prev{};
  uint64_t prev_position = 0;
  bool have_prev = false;
  for (; it->Valid(); it->Next()) {
    std::string_view key = ToView(it->key());
    if (!key.starts_with(prefix) || key.size() != prefix.size() + 8) break;
    if (!DecodeStreamRun(DecodeFixed64BE(key.data() + prefix.size()), ToView(it->value()),
                         &positions)) {
      return MalformedStreamRow(key);
    }
    for (uint64_t position : positions) {
      if (position <= after.value()) continue;
      if (position > head) return EventReadFailure(it->status(), Position(position));
      LEDGER_RETURN_IF_ERROR(EventReadFailure(
          db_->Get(EventReadOptions(), Family(kEventsFamily), EncodePositionKey(position), &value),
          Position(position - 1)));
      // Events of one subject are not consecutive: each is checked on its own, and linked to
      // the one read before it when that is its predecessor.
      const Hash* link = have_prev && prev_position + 1 == position ? &prev : nullptr;
      Event event;
      Status checked = DecodeCheckedEvent(Position(position), value, link, &event);
      // The index is derived from the log: a row naming another subject's event (a damaged or
      // edited index) would serve it under this subject.
      if (checked.ok() && event.subject != filter.subject) {
        checked = Status::Corruption("the subject index names position " +
                                     std::to_string(position) +
                                     ", an event of another subject (`ledgerctl replay` compares "
                                     "the index with the log)");
      }
      if (!checked.ok()) {
        out->clear();
        return checked;
      }
      prev = event.hash;
      prev_position = position;
      have_prev = true;
      if (!filter.type.empty() && event.type != filter.type) continue;
      out->push_back(std::move(event));
      if (out->size() >= limit) return Status::OK();
    }
  }
  return EventReadFailure(it->status(), Position(std::max(prev_position, after.value())));
}

// A read of the events is one iterator over the range. That iterator seeks every level-0 file's
// iterator too, each reading its first block at or past the sought position: a damaged block in
// the small file holding only the head (ledgerd flushes at each stop) failed every read with block
// checksums on before its first event -- `verify --from 1 --to 10` "at position 1", `export
// --after 0` writing nothing, all "read past position 0". So after a damaged read the rest of the
// range is read again table file by table file: each piece of it, up to the end of the file
// holding its first position (or up to the next file), with the files holding none of it filtered
// out (table_filter). A damaged block then fails only the reads that reach it, naming the position
// read before it. Files are matched by number (TableProperties::orig_file_number: the store
// ingests no files, so it is the file's own); one not listed (a flush or compaction since) is
// read, never passed over. Only damaged stores pay for the file list and the iterator per file.
Status LedgerImpl::ScanRaw(Position from, Position to,
                           const std::function<bool(Position, std::string_view)>& fn) const {
  // Never past the published head: a group being synced is not there yet.
  const uint64_t head = head_position_.load();
  const uint64_t last = to.value() == 0 ? head : std::min(to.value(), head);
  Position read(std::max<uint64_t>(from.value(), 1) - 1);  // the last position handed to fn
  bool stopped = false;  // fn asked to stop
  // Reads [first, end] with the table files numbered in `skipped` filtered out; OK or the
  // iterator's status.
  auto read_piece = [&](uint64_t first, uint64_t end,
                        const std::vector<uint64_t>* skipped) -> rocksdb::Status {
    rocksdb::ReadOptions read_options = EventReadOptions();
    if (skipped != nullptr) {
      read_options.table_filter = [skipped](const rocksdb::TableProperties& table) {
        return !std::binary_search(skipped->begin(), skipped->end(), table.orig_file_number);
      };
    }
    std::string upper = EncodePositionKey(end + 1);
    rocksdb::Slice upper_slice = upper;
    read_options.iterate_upper_bound = &upper_slice;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, Family(kEventsFamily)));
    for (it->Seek(EncodePositionKey(first)); it->Valid(); it->Next()) {
      if (it->key().size() != 8) return rocksdb::Status::Corruption("malformed event key");
      read = Position(DecodeFixed64BE(it->key().data()));
      if (!fn(read, ToView(it->value()))) {
        stopped = true;
        break;
      }
    }
    return it->status();
  };
  if (read.value() >= last) return Status::OK();
  rocksdb::Status s = read_piece(read.value() + 1, last, nullptr);
  if (stopped || s.ok() || !s.IsCorruption()) return EventReadFailure(s, read);
  const std::vector<EventTableFile> files = EventTableFiles();
  for (uint64_t first = read.value() + 1; first <= last;) {
    uint64_t end = last;
    for (const EventTableFile& file : files) {
      if (file.first <= first && first <= file.last) end = std::min(end, file.last);
      if (file.first > first) end = std::min(end, file.first - 1);
    }
    std::vector<uint64_t> elsewhere;  // the files holding nothing of [first, end]
    for (const EventTableFile& file : files) {
      if (file.last < first || file.first > end) elsewhere.push_back(file.number);
    }
    std::sort(elsewhere.begin(), elsewhere.end());
    s = read_piece(first, end, &elsewhere);
    if (stopped || !s.ok()) return EventReadFailure(s, read);
    if (end >= last) break;
    first = end + 1;
  }
  return Status::OK();
}

std::vector<LedgerImpl::EventTableFile> LedgerImpl::EventTableFiles() const {
  rocksdb::ColumnFamilyMetaData family;
  db_->GetColumnFamilyMetaData(Family(kEventsFamily), &family);
  std::vector<EventTableFile> files;
  for (const rocksdb::LevelMetaData& level : family.levels) {
    for (const rocksdb::SstFileMetaData& file : level.files) {
      // A file with other keys is not listed: it is read by every piece.
      if (file.smallestkey.size() != 8 || file.largestkey.size() != 8) continue;
      files.push_back({file.file_number, DecodeFixed64BE(file.smallestkey.data()),
                       DecodeFixed64BE(file.largestkey.data())});
    }
  }
  return files;
}

// A damaged table block fails a read of the events with RocksDB's words alone: "block checksum
// mismatch: ... in /srv/ledger/data/000032.sst offset 0 size 4221". GET /api/v1/events answered
// a user exactly that -- no position, and the data directory's path in an HTTP body. The read
// knows where it was: the damage is in what it read past `after` (the events, or a subject's
// index rows). Other failures (an I/O error opening a table file) keep their words, without the
// directory either.
Status LedgerImpl::EventReadFailure(const rocksdb::Status& s, Position after) const {
  Status failure = ReadFailure(s, options_.path);
  if (!failure.IsCorruption()) return failure;
  return Status::Corruption("a table block read past position " + std::to_string(after.value()) +
                            " is damaged (`ledgerctl verify` names the first damaged event): " +
                            failure.message());
}

Status LedgerImpl::GetCheckpoint(std::string_view name, Position* out) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), Family(kCheckpointsFamily), ToSlice(name), &value);
  if (s.IsNotFound()) {
    *out = Position(0);
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(ReadFailure(s, options_.path));
  if (value.size() != 8) return Status::Corruption("malformed checkpoint");
  *out = Position(DecodeFixed64BE(value.data()));
  return Status::OK();
}

Status LedgerImpl::PutCheckpoint(std::string_view name, Position position, bool sync) {
  if (options_.read_only) return Status::Unavailable("read_only", "the ledger is read-only");
  // After a failed write or sync nothing more goes into the WAL (SyncLoop): a checkpoint synced
  // behind the records the failed sync lost would make them a hole the next open refuses. Refused
  // here (BeginAppend): RocksDB refuses writes only while its background error lasts (its own
  // recovery from some I/O errors clears it; the ledger stays degraded until it is reopened).
  // The Put is an append as a group's write is: a sync started after its append failed and
  // before EndAppend recorded it would sync RocksDB's WAL writer in its error state (7.8 with
  // assertions aborts), and its own sync (`sync`) runs beside no SyncWAL.
  if (!BeginAppend()) return DegradedStatus();
  std::string value;
  PutFixed64BE(&value, position.value());
  rocksdb::WriteOptions write_options;
  write_options.sync = sync && options_.sync;
  rocksdb::Status s = db_->Put(write_options, Family(kCheckpointsFamily), ToSlice(name), value);
  if (options_.checkpoint_put_for_test) options_.checkpoint_put_for_test();
  EndAppend(/*failed=*/!s.ok());
  if (s.ok()) return Status::OK();
  // A failed checkpoint write or sync degrades the ledger as a failed group's does: the records
  // appended before it and not yet synced are in doubt, so they are not acknowledged (SyncLoop
  // syncs no more and fails their groups) and nothing more is written behind them. RocksDB's
  // words name the log file by its full path: the server log gets them, the caller does not
  // (a consumer's last_error is shown by the public /readyz).
  metrics_.write_failures.Add();
  degraded_.store(true);
  spdlog::error("checkpoint {} write failed, the ledger is now read-only: {}", name,
                s.ToString());
  return Status::Unavailable("storage_degraded", "the checkpoint's write failed; the ledger is "
                                                 "read-only");
}

Status LedgerImpl::GetFoldVersion(std::string_view fold, uint32_t* out) const {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Family(kCheckpointsFamily),
                               kFoldVersionPrefix + std::string(fold), &value);
  if (s.IsNotFound()) return Status::NotFound("no fold version recorded for " + std::string(fold));
  LEDGER_RETURN_IF_ERROR(FromRocks(s));
  if (value.size() != 4) return Status::Corruption("malformed fold version");
  *out = DecodeFixed32BE(value.data());
  return Status::OK();
}

Status LedgerImpl::ProjectionDigest(Hash* out, const std::atomic<bool>* cancel) const {
  std::vector<std::string> names;
  for (const Fold* fold : options_.folds) names.emplace_back(fold->Name());
  std::sort(names.begin(), names.end());
  uint64_t rows = 0;
  SHA256_CTX ctx;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  SHA256_Init(&ctx);
  for (const std::string& name : names) {
    std::string framed;
    PutLengthPrefixed(&framed, name);
    SHA256_Update(&ctx, framed.data(), framed.size());
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), Family(name)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      if (DigestCancelled(cancel, rows++)) return DigestCancelledStatus();
      framed.clear();
      PutLengthPrefixed(&framed, ToView(it->key()));
      PutLengthPrefixed(&framed, ToView(it->value()));
      SHA256_Update(&ctx, framed.data(), framed.size());
    }
    LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
  }
  SHA256_Final(out->data(), &ctx);
#pragma GCC diagnostic pop
  return Status::OK();
}

Status LedgerImpl::StreamsDigest(Hash* out, const std::atomic<bool>* cancel) const {
  SHA256_CTX ctx;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  SHA256_Init(&ctx);
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), Family(kStreamsFamily)));
  std::vector<uint64_t> positions;
  std::string framed;
  uint64_t rows = 0;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (DigestCancelled(cancel, rows++)) return DigestCancelledStatus();
    const std::string_view key = ToView(it->key());
    const size_t nul = key.find('\0');
    if (nul == std::string_view::npos || key.size() != nul + 1 + 8 ||
        !DecodeStreamRun(DecodeFixed64BE(key.data() + nul + 1), ToView(it->value()),
                         &positions)) {
      return MalformedStreamRow(key);
    }
    for (uint64_t position : positions) {
      framed.clear();
      PutLengthPrefixed(&framed, key.substr(0, nul));
      PutFixed64BE(&framed, position);
      SHA256_Update(&ctx, framed.data(), framed.size());
    }
  }
  LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
  SHA256_Final(out->data(), &ctx);
#pragma GCC diagnostic pop
  return Status::OK();
}

Status LedgerImpl::Flush() {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  for (auto& [name, handle] : families_) handles.push_back(handle);
  rocksdb::FlushOptions flush_options;
  flush_options.wait = true;
  return FromRocks(db_->Flush(flush_options, handles));
}

Status LedgerImpl::WaitForBackgroundWork(int64_t timeout_ms) {
  // RocksDB 7.8 has no public wait for compactions, and "rocksdb.compaction-pending" stays 1 for
  // a universal family that has as many sorted runs as its trigger but nothing worth picking.
  // A flush or compaction that is due starts at once (the background threads are idle), so
  // nothing running for 100 ms in a row means there is nothing left to do.
  auto busy = [this]() {
    uint64_t value = 0;
    for (const char* property : {"rocksdb.num-running-flushes", "rocksdb.num-running-compactions"}) {
      if (db_->GetIntProperty(property, &value) && value > 0) return true;
    }
    for (auto& [name, handle] : families_) {
      if (db_->GetIntProperty(handle, "rocksdb.mem-table-flush-pending", &value) && value > 0) {
        return true;
      }
    }
    return false;
  };
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::milliseconds(timeout_ms);
  auto idle_since = start;
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    if (busy()) {
      idle_since = now;
    } else if (now - idle_since >= std::chrono::milliseconds(100)) {
      return Status::OK();
    }
    if (now >= deadline) {
      return Status::Busy("flushes or compactions still running after " +
                          std::to_string(timeout_ms) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// DirLock::Lock's and CheckNotHeld's refusal of a directory another process holds.
Status DirInUse(const std::string& dir, const std::string& lock_path) {
  return Status::IOError(dir + " is in use: another ledgerd (or ledgerctl stripe-setup, "
                         "or replay --into) has it open for writing (it holds " + lock_path + ")");
}

}  // namespace

// Taken before RocksDB touches anything in the directory: RocksDB's own LOCK is taken only after
// it has renamed the running process's LOG to LOG.old.<time> and opened a new one (a second
// `ledgerd --data-dir D` beside a running one would rotate the first one's log away).
Status DirLock::Lock(const std::string& dir, std::shared_ptr<DirLock>* out) {
  const std::string path = dir + "/" + kDirLockFile;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int error = errno;
    return Status::IOError("cannot open " + path + ": " + std::strerror(error));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(fd);
    if (error == EWOULDBLOCK) return DirInUse(dir, path);
    return Status::IOError("cannot lock " + path + ": " + std::strerror(error));
  }
  out->reset(new DirLock(dir, fd));
  return Status::OK();
}

Status DirLock::CheckNotHeld(const std::string& dir) {
  const std::string path = dir + "/" + kDirLockFile;
  // No O_CREAT; O_NONBLOCK and O_NOFOLLOW: a FIFO or a link put there is opened neither to wait
  // nor to touch what it names (a lock file ledgerd made is neither).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0) return Status::OK();
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // releases the shared lock, if taken
  return held ? DirInUse(dir, path) : Status::OK();
}

DirLock::~DirLock() { ::close(fd_); }

Status CreatePrivateDir(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return Status::OK();
  const std::filesystem::path dir(path);
  if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
  if (::mkdir(path.c_str(), 0700) == 0) {
    ::chmod(path.c_str(), 0700);  // whatever the umask
  } else if (const int error = errno; error != EEXIST) {  // EEXIST: created meanwhile, kept
    return Status::IOError("cannot create " + path + ": " + std::strerror(error));
  }
  if (!std::filesystem::is_directory(path, ec)) {
    return Status::IOError("cannot create " + path + ": not a directory");
  }
  return Status::OK();
}

Status Ledger::Open(const LedgerOptions& options, std::unique_ptr<Ledger>* out) {
  auto ledger = std::make_unique<LedgerImpl>(options);
  LEDGER_RETURN_IF_ERROR(ledger->OpenDb());
  LEDGER_RETURN_IF_ERROR(ledger->LoadHead());
  if (!options.read_only) {
    LEDGER_RETURN_IF_ERROR(ledger->CatchUpFolds());
    ledger->PublishOpenState();
    ledger->Start();
  }
  *out = std::move(ledger);
  return Status::OK();
}

}  // namespace ledger
