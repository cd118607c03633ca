// The RocksDB event store and its group-commit writer. Layout and encodings: FORMAT.md.
#include "events/ledger.h"

#include <openssl/sha.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>

#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/write_batch_with_index.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "events/coding.h"
#include "events/limits.h"

namespace ledger {

namespace {

constexpr char kEventsFamily[] = "events";
constexpr char kStreamsFamily[] = "streams";
constexpr char kIdempotencyFamily[] = "idempotency";
constexpr char kCheckpointsFamily[] = "checkpoints";
constexpr char kMetaFamily[] = "meta";
constexpr char kHeadKey[] = "head";
constexpr char kFoldCheckpointPrefix[] = "fold.";
// Events applied per batch when a fold catches up at open.
constexpr size_t kCatchUpBatchEvents = 1000;

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
std::string StreamKey(std::string_view subject, Position position) {
  std::string key(subject);
  key.push_back('\0');
  PutFixed64BE(&key, position.value());
  return key;
}

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

// The log's own families: written by the writer only, and not through the batch index.
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

Status ScanFamily(rocksdb::Iterator* it, std::string_view prefix,
                  const std::function<bool(std::string_view, std::string_view)>& fn) {
  for (it->Seek(ToSlice(prefix)); it->Valid(); it->Next()) {
    std::string_view key = ToView(it->key());
    if (key.substr(0, prefix.size()) != prefix) break;
    if (!fn(key, ToView(it->value()))) break;
  }
  return FromRocks(it->status());
}

// The group's batch as it is written: per column family, in key order, one entry per key.
//
// The WriteBatchWithIndex holds every mutation of the group in the order made: a row a fold
// rewrites on every event (a usage counter) is in it once per event, and consecutive entries jump
// between families and across each family's key space. Written like that, every entry is one
// memtable skiplist insert searched from the top (the insert splice of the previous key is of no
// use), which on a large memtable was most of the cost of a group commit (and of a 1000-event
// batch). What is written instead is the same final state: the log families' rows (events already
// in position order, stream rows sorted), then for every other family the batch index's entries
// in key order — the index holds only the last mutation of each key (overwrite_key). One WAL
// record either way, so a group is still all-or-nothing; only intermediate values no reader can
// ever see are left out. Returns false (and the caller writes the batch as it is) for an entry
// type the folds never produce.
class LogRowCollector final : public rocksdb::WriteBatch::Handler {
 public:
  LogRowCollector(uint32_t events_id, uint32_t streams_id)
      : events_id_(events_id), streams_id_(streams_id) {}
  rocksdb::Status PutCF(uint32_t cf, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    if (cf == events_id_) events.emplace_back(key, value);
    if (cf == streams_id_) streams.emplace_back(key, value);
    return rocksdb::Status::OK();
  }
  // Everything else is taken from the batch index.
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
  void LogData(const rocksdb::Slice&) override {}

  std::vector<std::pair<rocksdb::Slice, rocksdb::Slice>> events, streams;  // into the batch

 private:
  const uint32_t events_id_;
  const uint32_t streams_id_;
};

bool BuildSortedWriteBatch(rocksdb::WriteBatchWithIndex* batch, const FamilyMap& families,
                           rocksdb::ColumnFamilyHandle* events_cf,
                           rocksdb::ColumnFamilyHandle* streams_cf, rocksdb::WriteBatch* out) {
  LogRowCollector log_rows(events_cf->GetID(), streams_cf->GetID());
  if (!batch->GetWriteBatch()->Iterate(&log_rows).ok()) return false;
  std::sort(log_rows.streams.begin(), log_rows.streams.end(),
            [](const auto& a, const auto& b) { return a.first.compare(b.first) < 0; });
  for (const auto& [key, value] : log_rows.events) {
    if (!out->Put(events_cf, key, value).ok()) return false;
  }
  for (const auto& [key, value] : log_rows.streams) {
    if (!out->Put(streams_cf, key, value).ok()) return false;
  }
  for (const auto& [name, cf] : families) {
    if (IsLogFamily(name)) continue;
    std::unique_ptr<rocksdb::WBWIIterator> it(batch->NewIterator(cf));
    std::optional<rocksdb::WriteEntry> pending;  // emitted once the next key differs
    auto emit = [&](const rocksdb::WriteEntry& e) {
      switch (e.type) {
        case rocksdb::kPutRecord:
          return out->Put(cf, e.key, e.value).ok();
        case rocksdb::kDeleteRecord:
          return out->Delete(cf, e.key).ok();
        default:
          return false;
      }
    };
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      rocksdb::WriteEntry entry = it->Entry();
      if (pending && pending->key.compare(entry.key) != 0 && !emit(*pending)) return false;
      pending = entry;  // equal keys come oldest first: the last one wins
    }
    if (!it->status().ok() || (pending && !emit(*pending))) return false;
  }
  return true;
}

// State seen by a group: the committed DB plus the group's own batch.
class BatchStateReader final : public StateReader, public RowWriter {
 public:
  BatchStateReader(rocksdb::DB* db, const FamilyMap* families,
                   rocksdb::WriteBatchWithIndex* batch)
      : db_(db), families_(families), batch_(batch) {}

  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    return FromRocks(batch_->GetFromBatchAndDB(db_, rocksdb::ReadOptions(), cf, ToSlice(key),
                                               value));
  }

  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    std::unique_ptr<rocksdb::Iterator> it(
        batch_->NewIteratorWithBase(cf, db_->NewIterator(rocksdb::ReadOptions(), cf)));
    return ScanFamily(it.get(), prefix, fn);
  }

  Status Put(std::string_view family, std::string_view key, std::string_view value) override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    return FromRocks(batch_->Put(cf, ToSlice(key), ToSlice(value)));
  }

  Status Delete(std::string_view family, std::string_view key) override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupGroupFamily(family, &cf));
    return FromRocks(batch_->Delete(cf, ToSlice(key)));
  }

 private:
  // Folds neither read nor write the log families: their rows are in the batch but not in its
  // index (AppendToBatch), so a read here would miss the group's own events.
  Status LookupGroupFamily(std::string_view family, rocksdb::ColumnFamilyHandle** cf) const {
    if (IsLogFamily(family)) {
      return Status::Internal("folds cannot read or write the log families");
    }
    return LookupFamily(*families_, family, cf);
  }

  rocksdb::DB* db_;
  const FamilyMap* families_;
  rocksdb::WriteBatchWithIndex* batch_;
};

class SnapshotView final : public ReadView {
 public:
  SnapshotView(rocksdb::DB* db, const FamilyMap* families, Position position,
               const rocksdb::Snapshot* snapshot)
      : db_(db), families_(families), position_(position), snapshot_(snapshot) {}
  ~SnapshotView() override { db_->ReleaseSnapshot(snapshot_); }

  Position position() const override { return position_; }

  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupFamily(*families_, family, &cf));
    return FromRocks(db_->Get(Options(), cf, ToSlice(key), value));
  }

  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    rocksdb::ColumnFamilyHandle* cf = nullptr;
    LEDGER_RETURN_IF_ERROR(LookupFamily(*families_, family, &cf));
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(Options(), cf));
    return ScanFamily(it.get(), prefix, fn);
  }

 private:
  rocksdb::ReadOptions Options() const {
    rocksdb::ReadOptions options;
    options.snapshot = snapshot_;
    return options;
  }

  rocksdb::DB* db_;
  const FamilyMap* families_;
  Position position_;
  const rocksdb::Snapshot* snapshot_;
};

// One queued Submit()/ImportEvents() call. Lives on the caller's stack. While it waits, only the
// leader of its group touches it: it fills `result`, then Signal(kDone). The previous leader hands
// leadership over with Signal(kLeader) when this writer reaches the front of the queue.
//
// Waking goes through the writer's own mutex, not the queue mutex: a woken caller does not
// contend with the leader and the other callers for mu_ (LevelDB notifies under its one mutex,
// which on a group of 64 costs a second context switch per caller), and the leader wakes the next
// leader first, so the next group is decided while the old leader is still waking its callers.
struct Writer {
  enum class State { kWaiting, kLeader, kDone };

  Command* command = nullptr;
  const std::vector<Event>* import = nullptr;
  CommandResult result;
  // The replay was answered from a record written earlier in this same group: it is only true
  // if the group's write succeeds.
  bool replayed_from_group = false;

  // Blocks until a leader signals; returns the new state.
  State Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [this] { return state != State::kWaiting; });
    return state;
  }
  // Notifies under `mu`: the caller may return and destroy *this as soon as `mu` is released, so
  // the signaller must not touch the writer afterwards.
  void Signal(State new_state) {
    std::lock_guard<std::mutex> lock(mu);
    state = new_state;
    cv.notify_one();
  }

 private:
  std::mutex mu;
  std::condition_variable cv;
  State state = State::kWaiting;  // guarded by mu
};

class LedgerImpl final : public Ledger {
 public:
  LedgerImpl(const LedgerOptions& options) : options_(options) {
    if (options_.clock == nullptr) options_.clock = SystemClock::Default();
    if (options_.write_queue_max == 0) options_.write_queue_max = limits::kWriteQueueCommandsMax;
  }

  ~LedgerImpl() override {
    if (db_ == nullptr) return;
    for (auto& [name, handle] : families_) db_->DestroyColumnFamilyHandle(handle);
    db_->Close().PermitUncheckedError();
    delete db_;
  }

  Status OpenDb();
  Status LoadHead();
  Status CatchUpFolds();

  CommandResult Submit(Command* command) override;
  Position Head() const override { return Position(head_position_.load()); }
  Hash HeadHash() const override {
    std::lock_guard<std::mutex> l(head_mu_);
    return head_hash_published_;
  }
  bool Degraded() const override { return degraded_.load(); }
  std::unique_ptr<ReadView> Snapshot() const override;
  Status ReadEvents(Position after, size_t limit, const EventFilter& filter,
                    std::vector<Event>* out) const override;
  Status ScanRaw(Position from, Position to,
                 const std::function<bool(Position, std::string_view)>& fn) const override;
  Status GetCheckpoint(std::string_view name, Position* out) const override;
  Status PutCheckpoint(std::string_view name, Position position, bool sync) override;
  Status ProjectionDigest(Hash* out) const override;
  Status ImportEvents(const std::vector<Event>& events) override;
  Status Flush() override;
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
    return queue_.size();
  }

 private:
  CommandResult Enqueue(Writer* w);
  void ProcessGroup(const std::vector<Writer*>& group);
  // Appends one sealed event (and its stream index row, and every fold's rows) to the batch.
  Status AppendToBatch(const Event& event, BatchStateReader* state,
                       rocksdb::WriteBatchWithIndex* batch);
  Status DecideOne(Writer* w, int64_t now_us, BatchStateReader* state,
                   rocksdb::WriteBatchWithIndex* batch);
  Status ImportOne(Writer* w, BatchStateReader* state, rocksdb::WriteBatchWithIndex* batch);
  // Read options for the events family (see LedgerOptions::verify_checksums).
  rocksdb::ReadOptions EventReadOptions() const {
    rocksdb::ReadOptions read_options;
    read_options.verify_checksums = options_.verify_checksums;
    return read_options;
  }
  rocksdb::ColumnFamilyHandle* Family(std::string_view name) const {
    return families_.find(name)->second;
  }
  Status ReadEventsBySubject(Position after, size_t limit, const EventFilter& filter,
                             std::vector<Event>* out) const;

  LedgerOptions options_;
  rocksdb::DB* db_ = nullptr;
  FamilyMap families_;

  // Writer queue (LevelDB's DBImpl::Write). The front writer is the leader.
  mutable std::mutex mu_;
  std::deque<Writer*> queue_;

  // Chain state: touched only by the current leader (serialized by the queue protocol).
  Position head_;
  Hash head_hash_{};
  int64_t last_time_us_ = 0;

  // Published after each successful group write.
  std::atomic<uint64_t> head_position_{0};
  mutable std::mutex head_mu_;
  Hash head_hash_published_{};
  std::atomic<bool> degraded_{false};

  LedgerMetrics metrics_;
  // Held while listeners run, so that RemoveCommitListener() waits for a running call.
  std::mutex listeners_mu_;
  uint64_t last_listener_id_ = 0;  // guarded by listeners_mu_
  std::vector<std::pair<uint64_t, std::function<void(Position)>>> listeners_;  // listeners_mu_
};

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
  if (options_.env != nullptr) db_options.env = options_.env;

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
  events_options.write_buffer_size = 64 << 20;

  std::vector<std::string> names = {rocksdb::kDefaultColumnFamilyName, kEventsFamily,
                                    kStreamsFamily, kIdempotencyFamily, kCheckpointsFamily,
                                    kMetaFamily};
  for (const Fold* fold : options_.folds) names.emplace_back(fold->Name());
  if (std::filesystem::exists(options_.path)) {
    std::vector<std::string> existing;
    if (rocksdb::DB::ListColumnFamilies(rocksdb::Options(db_options, cf_options), options_.path,
                                        &existing)
            .ok()) {
      for (auto& name : existing) {
        if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
      }
    }
  } else if (!options_.read_only) {
    std::error_code ec;
    std::filesystem::create_directories(options_.path, ec);
    if (ec) return Status::IOError("cannot create " + options_.path + ": " + ec.message());
  }

  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (auto& name : names) {
    descriptors.emplace_back(name, name == kEventsFamily ? events_options : cf_options);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Options options(db_options, cf_options);
  rocksdb::Status s =
      options_.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, options_.path, descriptors, &handles, &db_)
          : rocksdb::DB::Open(db_options, options_.path, descriptors, &handles, &db_);
  if (!s.ok()) return FromRocks(s);
  for (size_t i = 0; i < handles.size(); ++i) families_[names[i]] = handles[i];
  return Status::OK();
}

Status LedgerImpl::LoadHead() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), Family(kMetaFamily), kHeadKey, &value);
  if (s.IsNotFound()) {
    head_ = Position(0);
    head_hash_ = Hash{};
  } else if (!s.ok()) {
    return FromRocks(s);
  } else if (!DecodeHead(value, &head_, &head_hash_)) {
    return Status::Corruption("malformed chain head record");
  }
  // The head record and the events are written in the same batch; they must agree.
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(EventReadOptions(), Family(kEventsFamily)));
  it->SeekToLast();
  LEDGER_RETURN_IF_ERROR(FromRocks(it->status()));
  uint64_t last = it->Valid() ? DecodeFixed64BE(it->key().data()) : 0;
  if (last != head_.value()) {
    return Status::Corruption("chain head " + std::to_string(head_.value()) +
                              " disagrees with the last stored event " + std::to_string(last));
  }
  // Only the writer needs the last event's time; a read-only open (verify) must not fail here on
  // a damaged last event that verify is about to name.
  if (it->Valid() && !options_.read_only) {
    Event event;
    LEDGER_RETURN_IF_ERROR(DecodeEvent(ToView(it->value()), &event));
    last_time_us_ = event.time_us;
  }
  head_position_.store(head_.value());
  head_hash_published_ = head_hash_;
  return Status::OK();
}

// The projection runner for folds that are behind the log (a fold added to an existing data
// directory): applies the missing events in batches, each with the fold's checkpoint.
Status LedgerImpl::CatchUpFolds() {
  for (const Fold* fold : options_.folds) {
    std::string checkpoint_name = kFoldCheckpointPrefix + std::string(fold->Name());
    Position from;
    LEDGER_RETURN_IF_ERROR(GetCheckpoint(checkpoint_name, &from));
    if (from >= head_) continue;
    spdlog::info("projection {} catching up from position {} to {}", fold->Name(), from.value(),
                 head_.value());
    Position next = Next(from);
    while (next <= head_) {
      rocksdb::WriteBatchWithIndex batch(rocksdb::BytewiseComparator(), 0, true);
      BatchStateReader state(db_, &families_, &batch);
      Status apply_status;
      Position last = from;
      LEDGER_RETURN_IF_ERROR(ScanRaw(next, head_, [&](Position p, std::string_view stored) {
        Event event;
        apply_status = DecodeEvent(stored, &event);
        if (apply_status.ok()) apply_status = fold->Apply(event, state, &state);
        last = p;
        return apply_status.ok() && p.value() - next.value() + 1 < kCatchUpBatchEvents;
      }));
      LEDGER_RETURN_IF_ERROR(apply_status);
      std::string value;
      PutFixed64BE(&value, last.value());
      batch.Put(Family(kCheckpointsFamily), checkpoint_name, value);
      rocksdb::WriteOptions write_options;
      write_options.sync = options_.sync;
      LEDGER_RETURN_IF_ERROR(FromRocks(db_->Write(write_options, batch.GetWriteBatch())));
      next = Next(last);
    }
  }
  return Status::OK();
}

CommandResult LedgerImpl::Submit(Command* command) {
  metrics_.commands_submitted.Add();
  Writer w;
  w.command = command;
  return Enqueue(&w);
}

Status LedgerImpl::ImportEvents(const std::vector<Event>& events) {
  Writer w;
  w.import = &events;
  return Enqueue(&w).status;
}

CommandResult LedgerImpl::Enqueue(Writer* w) {
  bool lead = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (options_.read_only) {
      w->result.status = Status::Unavailable("read_only", "the ledger is open read-only");
      return std::move(w->result);
    }
    if (degraded_.load()) {
      w->result.status =
          Status::Unavailable("storage_degraded", "storage failed; the ledger is read-only");
      return std::move(w->result);
    }
    if (queue_.size() >= options_.write_queue_max) {
      metrics_.commands_busy.Add();
      w->result.status = Status::Busy("write queue full");
      return std::move(w->result);
    }
    // The front of the queue is the leader; an empty queue means no leader is active.
    queue_.push_back(w);
    lead = queue_.size() == 1;
  }
  if (!lead && w->Wait() == Writer::State::kDone) return std::move(w->result);

  // This writer leads: take a group from the front of the queue (w is the front).
  std::vector<Writer*> group;
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t events_budget = 0;
    for (Writer* next : queue_) {
      if (group.size() >= limits::kGroupCommandsMax) break;
      size_t weight = next->import != nullptr ? next->import->size() : 1;
      if (!group.empty() && events_budget + weight > limits::kGroupEventsMax) break;
      events_budget += weight;
      group.push_back(next);
    }
  }
  ProcessGroup(group);
  Writer* next_leader = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < group.size(); ++i) queue_.pop_front();
    if (!queue_.empty()) next_leader = queue_.front();
  }
  if (next_leader != nullptr) next_leader->Signal(Writer::State::kLeader);
  for (Writer* member : group) {
    if (member != w) member->Signal(Writer::State::kDone);
  }
  return std::move(w->result);
}

Status LedgerImpl::AppendToBatch(const Event& event, BatchStateReader* state,
                                 rocksdb::WriteBatchWithIndex* batch) {
  std::string stored;
  EncodeEvent(event, &stored);
  std::string key = EncodePositionKey(event.position.value());
  // The event and its stream row are never read back within a group (folds get the event
  // itself; BatchStateReader refuses the log families), so they go into the underlying
  // WriteBatch without an index entry: that skips two index skiplist inserts (with
  // overwrite_key, each a search plus an insert) per event, about two thirds of the batch-building
  // cost. Save points cover them (they truncate the WriteBatch; the index is rebuilt from it).
  rocksdb::WriteBatch* unindexed = batch->GetWriteBatch();
  LEDGER_RETURN_IF_ERROR(FromRocks(unindexed->Put(Family(kEventsFamily), key, stored)));
  LEDGER_RETURN_IF_ERROR(FromRocks(
      unindexed->Put(Family(kStreamsFamily), StreamKey(event.subject, event.position), "")));
  for (const Fold* fold : options_.folds) {
    LEDGER_RETURN_IF_ERROR(fold->Apply(event, *state, state));
  }
  return Status::OK();
}

Status LedgerImpl::DecideOne(Writer* w, int64_t now_us, BatchStateReader* state,
                             rocksdb::WriteBatchWithIndex* batch) {
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
      std::string in_batch;
      w->replayed_from_group =
          batch->GetFromBatch(Family(kIdempotencyFamily), rocksdb::DBOptions(), idempotency_key,
                              &in_batch)
              .ok();
      metrics_.idempotent_replays.Add();
      result.http_status = record.http_status;
      result.body = std::move(record.body);
      result.position = record.position;
      result.replayed = true;
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
    LEDGER_RETURN_IF_ERROR(AppendToBatch(event, state, batch));
    head_ = event.position;
    head_hash_ = event.hash;
  }
  if (!idempotency_key.empty()) {
    LEDGER_RETURN_IF_ERROR(FromRocks(batch->Put(
        Family(kIdempotencyFamily), idempotency_key,
        EncodeIdempotencyRecord(command->request_hash, head_, decision.http_status,
                                decision.body))));
  }
  result.http_status = decision.http_status;
  result.body = std::move(decision.body);
  result.position = head_;
  result.events_appended = static_cast<uint32_t>(decision.events.size());
  return Status::OK();
}

Status LedgerImpl::ImportOne(Writer* w, BatchStateReader* state,
                             rocksdb::WriteBatchWithIndex* batch) {
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
    LEDGER_RETURN_IF_ERROR(AppendToBatch(event, state, batch));
    head_ = event.position;
    head_hash_ = event.hash;
    last_time_us_ = std::max(last_time_us_, event.time_us);
    w->result.events_appended++;
  }
  w->result.position = head_;
  return Status::OK();
}

void LedgerImpl::ProcessGroup(const std::vector<Writer*>& group) {
  // Commands queued behind a failed group must not run: the store is read-only from then on.
  if (degraded_.load()) {
    for (Writer* w : group) {
      w->result = CommandResult{};
      w->result.status =
          Status::Unavailable("storage_degraded", "storage failed; the ledger is read-only");
    }
    return;
  }
  rocksdb::WriteBatchWithIndex batch(rocksdb::BytewiseComparator(), 0, /*overwrite_key=*/true);
  BatchStateReader state(db_, &families_, &batch);
  const Position group_start = head_;
  const Hash group_start_hash = head_hash_;
  // Event time never goes backwards in the log, whatever the wall clock does.
  const int64_t now_us = std::max(options_.clock->NowMicros(), last_time_us_);
  size_t events = 0;

  for (Writer* w : group) {
    const Position command_start = head_;
    const Hash command_start_hash = head_hash_;
    batch.SetSavePoint();
    Status s = w->import != nullptr ? ImportOne(w, &state, &batch)
                                    : DecideOne(w, now_us, &state, &batch);
    if (!s.ok()) {
      batch.RollbackToSavePoint().PermitUncheckedError();
      head_ = command_start;
      head_hash_ = command_start_hash;
      w->result = CommandResult{};
      w->result.status = s;
      w->result.position = head_;
      metrics_.commands_rejected.Add();
      continue;
    }
    batch.PopSavePoint().PermitUncheckedError();
    events += w->result.events_appended;
  }

  if (batch.GetWriteBatch()->Count() == 0) return;  // only rejections and replays
  std::string position_value;
  PutFixed64BE(&position_value, head_.value());
  batch.Put(Family(kMetaFamily), kHeadKey, EncodeHead(head_, head_hash_));
  for (const Fold* fold : options_.folds) {
    batch.Put(Family(kCheckpointsFamily), kFoldCheckpointPrefix + std::string(fold->Name()),
              position_value);
  }

  rocksdb::WriteBatch sorted;
  rocksdb::WriteBatch* to_write = batch.GetWriteBatch();
  if (BuildSortedWriteBatch(&batch, families_, Family(kEventsFamily), Family(kStreamsFamily),
                            &sorted)) {
    to_write = &sorted;
  }
  rocksdb::WriteOptions write_options;
  write_options.sync = options_.sync;
  auto start = std::chrono::steady_clock::now();
  rocksdb::Status s = db_->Write(write_options, to_write);
  metrics_.write_seconds.Observe(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (!s.ok()) {
    // The group is lost as a whole; nothing of it was acknowledged. Stop accepting writes: what
    // RocksDB has on disk is recovered (and the tail decided) by the next open.
    metrics_.write_failures.Add();
    degraded_.store(true);
    spdlog::error("group commit failed, ledger is now read-only: {}", s.ToString());
    head_ = group_start;
    head_hash_ = group_start_hash;
    for (Writer* w : group) {
      if (w->result.status.ok() && (!w->result.replayed || w->replayed_from_group)) {
        w->result = CommandResult{};
        w->result.status = Status::Unavailable("storage_degraded", "storage write failed");
      }
    }
    return;
  }
  last_time_us_ = std::max(last_time_us_, now_us);
  metrics_.groups_committed.Add();
  metrics_.events_appended.Add(events);
  metrics_.group_commands.Observe(static_cast<double>(group.size()));
  metrics_.group_events.Observe(static_cast<double>(events));
  {
    std::lock_guard<std::mutex> l(head_mu_);
    head_hash_published_ = head_hash_;
  }
  head_position_.store(head_.value());
  std::lock_guard<std::mutex> l(listeners_mu_);
  for (const auto& [id, listener] : listeners_) listener(head_);
}

std::unique_ptr<ReadView> LedgerImpl::Snapshot() const {
  const rocksdb::Snapshot* snapshot = db_->GetSnapshot();
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot;
  std::string value;
  Position position(0);
  Hash hash{};
  if (db_->Get(read_options, Family(kMetaFamily), kHeadKey, &value).ok()) {
    DecodeHead(value, &position, &hash);
  }
  return std::make_unique<SnapshotView>(db_, &families_, position, snapshot);
}

Status LedgerImpl::ReadEvents(Position after, size_t limit, const EventFilter& filter,
                              std::vector<Event>* out) const {
  out->clear();
  limit = std::min(limit, limits::kReadEventsMax);
  if (!filter.subject.empty()) return ReadEventsBySubject(after, limit, filter, out);
  Status decode_status;
  LEDGER_RETURN_IF_ERROR(ScanRaw(Next(after), Position(0), [&](Position, std::string_view v) {
    Event event;
    decode_status = DecodeEvent(v, &event);
    if (!decode_status.ok()) return false;
    if (!filter.type.empty() && event.type != filter.type) return true;
    out->push_back(std::move(event));
    return out->size() < limit;
  }));
  return decode_status;
}

Status LedgerImpl::ReadEventsBySubject(Position after, size_t limit, const EventFilter& filter,
                                       std::vector<Event>* out) const {
  std::string prefix = filter.subject;
  prefix.push_back('\0');
  std::unique_ptr<rocksdb::Iterator> it(
      db_->NewIterator(rocksdb::ReadOptions(), Family(kStreamsFamily)));
  std::string value;
  for (it->Seek(StreamKey(filter.subject, Next(after))); it->Valid(); it->Next()) {
    std::string_view key = ToView(it->key());
    if (key.substr(0, prefix.size()) != prefix || key.size() != prefix.size() + 8) break;
    uint64_t position = DecodeFixed64BE(key.data() + prefix.size());
    LEDGER_RETURN_IF_ERROR(FromRocks(db_->Get(EventReadOptions(), Family(kEventsFamily),
                                              EncodePositionKey(position), &value)));
    Event event;
    LEDGER_RETURN_IF_ERROR(DecodeEvent(value, &event));
    if (!filter.type.empty() && event.type != filter.type) continue;
    out->push_back(std::move(event));
    if (out->size() >= limit) break;
  }
  return FromRocks(it->status());
}

Status LedgerImpl::ScanRaw(Position from, Position to,
                           const std::function<bool(Position, std::string_view)>& fn) const {
  rocksdb::ReadOptions read_options = EventReadOptions();
  std::string upper;
  rocksdb::Slice upper_slice;
  if (to.value() != 0) {
    upper = EncodePositionKey(to.value() + 1);
    upper_slice = upper;
    read_options.iterate_upper_bound = &upper_slice;
  }
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, Family(kEventsFamily)));
  for (it->Seek(EncodePositionKey(std::max<uint64_t>(from.value(), 1))); it->Valid();
       it->Next()) {
    if (it->key().size() != 8) return Status::Corruption("malformed event key");
    if (!fn(Position(DecodeFixed64BE(it->key().data())), ToView(it->value()))) break;
  }
  return FromRocks(it->status());
}

Status LedgerImpl::GetCheckpoint(std::string_view name, Position* out) const {
  std::string value;
  rocksdb::Status s =
      db_->Get(rocksdb::ReadOptions(), Family(kCheckpointsFamily), ToSlice(name), &value);
  if (s.IsNotFound()) {
    *out = Position(0);
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(FromRocks(s));
  if (value.size() != 8) return Status::Corruption("malformed checkpoint");
  *out = Position(DecodeFixed64BE(value.data()));
  return Status::OK();
}

Status LedgerImpl::PutCheckpoint(std::string_view name, Position position, bool sync) {
  if (options_.read_only) return Status::Unavailable("read_only", "the ledger is read-only");
  std::string value;
  PutFixed64BE(&value, position.value());
  rocksdb::WriteOptions write_options;
  write_options.sync = sync && options_.sync;
  return FromRocks(
      db_->Put(write_options, Family(kCheckpointsFamily), ToSlice(name), value));
}

Status LedgerImpl::ProjectionDigest(Hash* out) const {
  std::vector<std::string> names;
  for (const Fold* fold : options_.folds) names.emplace_back(fold->Name());
  std::sort(names.begin(), names.end());
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

Status LedgerImpl::Flush() {
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  for (auto& [name, handle] : families_) handles.push_back(handle);
  rocksdb::FlushOptions flush_options;
  flush_options.wait = true;
  return FromRocks(db_->Flush(flush_options, handles));
}

}  // namespace

Status Ledger::Open(const LedgerOptions& options, std::unique_ptr<Ledger>* out) {
  auto ledger = std::make_unique<LedgerImpl>(options);
  LEDGER_RETURN_IF_ERROR(ledger->OpenDb());
  LEDGER_RETURN_IF_ERROR(ledger->LoadHead());
  if (!options.read_only) LEDGER_RETURN_IF_ERROR(ledger->CatchUpFolds());
  *out = std::move(ledger);
  return Status::OK();
}

}  // namespace ledger
