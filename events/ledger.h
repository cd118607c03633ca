// Ledger: the event store and its single writer.
//
// Owns the RocksDB database (column families `events`, `idempotency`, `checkpoints`, `meta`, one
// per registered fold, and the side families of LedgerOptions::side_families) and the group-commit
// writer: a pipeline of three threads.
//
// The committer takes the queued commands as one group (one leader at a time: LevelDB's writer
// queue, with the leader being a thread of its own), runs each command's Decide() against state
// that already includes the earlier commands of the group, applies every fold to each new event,
// and so builds the group's events, chain head, idempotency records, fold rows, side rows and fold
// checkpoints as ONE WriteBatch -- one WAL record, all or nothing. A large group goes to the
// write thread, which writes it without sync while the committer decides the next group on top
// of it (reading the rows of the groups not yet written before the store's); a small one the
// committer writes itself when nothing waits to be written. The sync thread meanwhile syncs the
// WAL once for every group written so far (group fsync), publishes them (head, read snapshot,
// commit listeners) and only then answers their commands, in order. So the next group is decided
// while the previous ones are written and synced, and one fsync makes many groups durable;
// nothing is answered, published, readable or sent to Kafka before it is durable.
//
// A Decide() error fails only its own command. A failed write or sync fails its group (and every
// group written after it) and puts the ledger in a degraded, read-only state (Degraded() == true;
// Submit answers kUnavailable) until the process restarts and recovers from the log.
//
// Thread safety: every public method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "events/clock.h"
#include "events/event.h"
#include "events/fold.h"
#include "events/metrics.h"
#include "events/status.h"
#include "events/types.h"

namespace rocksdb {
class Env;
}

namespace ledger {

// An event a command wants appended. The writer assigns position, time, id and hashes.
struct NewEvent {
  std::string type;
  std::string subject;
  std::string data;  // compact JSON object
};

// A row of a side family (LedgerOptions::side_families) that a command writes or deletes beside
// its events. It goes into the group's one WriteBatch with them, so it has exactly their
// durability: after any crash an acknowledged command's side rows are there and a rejected one's
// (its Decide failed) never are; an unacknowledged one's (its group's write or sync failed, or a
// crash came before the answer) are in doubt, there exactly when its events are (a failed sync
// without a power loss leaves the group's record in the OS, and the next open replays it). The
// later commands of the group read it (DecideContext::state).
// Side rows are the one state NOT derived from the log: no fold writes them, replay and a fold
// rebuild do not recreate them, ProjectionDigest leaves them out, and neither the outbox nor
// export carries them. What they are for: a secret that must be deletable for good although the
// log is permanent (BYOK data keys, projections/byok.h: deleting the row shreds the key that the
// log only holds encrypted under it).
struct SideRow {
  std::string family;
  std::string key;
  std::string value;
  bool deleted = false;  // deletes `key` (value ignored)
  // A put whose key holds a value that must leave the store's table files as a deleted one does
  // (a data key re-wrapped under a new master key: its old wrapping opens under the old key):
  // the family is compacted once the command is durable, as after a delete (SideShredder).
  bool shred_replaced = false;
};

// What Decide() produced for a successful command.
struct Decision {
  std::vector<NewEvent> events;
  // Written after the events, in order (a later row of the same key wins). A family that is not
  // one of LedgerOptions::side_families fails the command (kInternal), and nothing is appended.
  std::vector<SideRow> side_rows;
  int http_status = 200;
  std::string body;  // JSON response body; stored with the idempotency record
};

struct DecideContext {
  int64_t now_us = 0;        // the writer's clock for this group
  Position head;             // position of the last event before this command
  const StateReader* state;  // committed rows + earlier commands of this group
};

class Command {
 public:
  virtual ~Command() = default;
  // Runs on the committer thread, with no lock held. Must not block or do I/O. Returning an error
  // rejects only this command; nothing it decided is appended.
  virtual Status Decide(const DecideContext& context, Decision* decision) = 0;
  // Runs instead of Decide() when the command is answered from its idempotency record (same
  // thread, same state): what the command keeps for its answer's headers may describe the state
  // now (a replayed consume's quota). Must not block or do I/O; it cannot fail the command, and
  // nothing is appended.
  virtual void Replayed(const DecideContext&) {}

  // Idempotency: when `idempotency_key` is non-empty, the writer looks up (scope, key). Same
  // request_hash: the stored result is returned and nothing is appended. Different request_hash:
  // kConflict "idempotency_key_reused". Records are permanent.
  std::string idempotency_scope;
  std::string idempotency_key;
  Hash request_hash{};
};

struct CommandResult {
  Status status;
  int http_status = 200;
  std::string body;
  // For an appended command: the position of its last event. For a command that appended nothing
  // (including idempotent replays): the head it was decided at (or the original position).
  Position position;
  bool replayed = false;  // answered from the idempotency record
  uint32_t events_appended = 0;
};

// Creates directory `path` (and missing parents) with mode 0700 whatever the umask: a store holds
// users' emails, webhooks as delivered and sealed keys. An existing directory keeps its mode.
Status CreatePrivateDir(const std::string& path);

// The file in a store's directory that a writable Ledger holds an exclusive flock(2) on while it
// is open (Ledger::Open is kIOError when another process holds it; read-only opens take none).
inline constexpr char kDirLockFile[] = "ledgerd.lock";

// Ledger::ProjectionDigest and StreamsDigest look at their `cancel` flag once per this many rows.
inline constexpr uint64_t kDigestCancelCheckRows = 1024;

// That lock. Ledger::Open takes it, unless the caller took it first to write its own files into
// the directory only once no other process has it open (ledgerd's dev-mode secret and master
// key) and hands it over (LedgerOptions::dir_lock). Released when the last holder drops it, or
// by the kernel when the process dies however it dies (flock: no stale lock to clear by hand).
class DirLock {
 public:
  // kIOError "<dir> is in use: ..." when another process holds it; `dir` must exist.
  static Status Lock(const std::string& dir, std::shared_ptr<DirLock>* out);
  // The same kIOError "in use" when another process holds `dir`'s lock file, else OK (no lock
  // file, or nobody holds it). Creates nothing: for a directory the caller may not write to
  // (ledgerctl replay's --into that is not empty). Takes a shared lock for the look: a Lock
  // elsewhere at that instant is refused "in use" too.
  static Status CheckNotHeld(const std::string& dir);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  const std::string& dir() const { return dir_; }

 private:
  DirLock(std::string dir, int fd) : dir_(std::move(dir)), fd_(fd) {}

  const std::string dir_;
  const int fd_;
};

struct LedgerOptions {
  std::string path;                 // directory; created if missing (CreatePrivateDir)
  std::vector<const Fold*> folds;   // inline projections; not owned, must outlive the Ledger
  // Column families written only through Decision::side_rows (SideRow): created at open, read
  // through Snapshot() and DecideContext::state like a fold's. Not a fold's name nor one of the
  // ledger's own (InvalidArgument at open). Folds must not read them: replay has none.
  std::vector<std::string> side_families;
  const Clock* clock = nullptr;     // default SystemClock
  bool sync = true;                 // fsync every group. false ONLY for negative-control tests
                                    // and scratch stores (ledgerctl replay's rebuild, then Flush()).
  rocksdb::Env* env = nullptr;      // default Env; tests pass fault-injecting wrappers
  bool read_only = false;           // open without writing (ledgerctl verify/export on a live DB)
  // Writable opens: the lock on `path` already taken (DirLock::Lock with the same path), held by
  // the Ledger from then on; nullptr (the default): Open takes it. Read-only opens take none.
  std::shared_ptr<DirLock> dir_lock;
  bool create_if_missing = true;
  size_t write_queue_max = 0;       // 0 = limits::kWriteQueueCommandsMax
  // RocksDB block checksums on reads of stored events (ScanRaw, ReadEvents, and the head check
  // at open unless read_only). Default true. `ledgerctl verify` turns it off for its first pass
  // so that a flipped byte inside an event (the events family is stored uncompressed) reaches
  // the hash-chain check and is reported at its exact position, instead of failing the whole
  // block with a Corruption status that names no position. Read-only use only; never affects
  // what is written.
  bool verify_checksums = true;
  // Read-only use only (`ledgerctl verify`): open even when the chain head record disagrees with
  // the last stored event (its position or its stored hash), or cannot be read, instead of failing the open with a Corruption that
  // names no position. Head() is then the larger of the two positions (the last stored event when
  // the record is unreadable), so that reading the log up to it meets the missing or extra event,
  // and HeadRecordProblem() says what is wrong.
  bool tolerate_head_mismatch = false;
  // Read-only use only (`ledgerctl verify`, when a damaged write-ahead log record makes RocksDB
  // refuse the store): open the table files alone, replaying no log record (and passing over
  // damaged ones). Head() is then the last event the table files hold and HeadHash() its stored
  // hash; the chain head record, written with events that may be in the logs only, is not read.
  // So damage in the table files before the log's is still found, and named first.
  bool table_files_only = false;
  // The write-ahead log files kept for recovery, in bytes, before families are flushed to free
  // the oldest (RocksDB's max_total_wal_size; 0 = RocksDB's default of 4x the memtables).
  uint64_t max_total_wal_bytes = 256ull << 20;
  // The events family's memtable (RocksDB write_buffer_size): each flush writes one table file of
  // about this size. Tests make it small to get many table files from few events.
  size_t events_memtable_bytes = 64 << 20;
  // A group of at least this many entries (events and rows) with more commands queued behind it
  // is written by the write thread while the committer decides the next group; other groups,
  // when no group waits to be written, by the committer itself (a hand-off costs a thread
  // wake-up, about what writing a small group takes). Entries: events plus row mutations. Every
  // group decided behind one not yet written also goes through the write thread, to keep
  // commit order. 0: every group goes through the write thread (tests).
  size_t write_thread_entries_min = 1024;
  // The least time from the start of one WAL sync to the start of the next; 0 = sync as soon as
  // a group is written. A sync that would start earlier waits (gathering the groups written
  // meanwhile) unless kPacedSyncCommandsEnough commands already wait for it. Why: on this
  // machine class (a 2-vCPU VM on an emulated disk) a stream of more than ~1,500 fsyncs/s stalls
  // the whole VM for 10-20 ms in every 100 ms -- a thread that only sleeps, on the other core,
  // wakes that late, and /proc/stat counts steal time (build/bin/fsync_jitter) -- which was the
  // tail latency of every open-loop run. 1 ms keeps the rate at or under 1,000/s unless syncs
  // carry 32 commands or more, and adds at most 1 ms to a command's latency. Groups that wrote
  // nothing (rejections, replays) are never held back, nor are PutCheckpoint syncs. ledgerd's
  // default is kSyncIntervalMinDefault; the library's is 0 (tests answer sequential commands at
  // disk speed).
  std::chrono::microseconds sync_interval_min{0};
  // RocksDB's memtable flushes and compactions write at most this multiple of what the ledger
  // wrote over the last second, and at least 16 MB/s; unpaced while the ledger writes nothing and
  // while RocksDB holds writers back. 0 = as fast as the disk takes them. Why: a 64 MiB flush at
  // the disk's full speed made every WAL sync in the ~300 ms it took 4-12 ms slow
  // (events/write_pacer.h).
  double background_write_pace = 2.0;
  // Read by Open() before the folds catch up and between their batches (every 1,000 events):
  // once true, Open() stops and returns Unavailable ("open_cancelled"). As a crash there: what
  // was caught up is kept and the next open goes on from it (a fold being rebuilt starts over).
  // nullptr = never. ledgerd's SIGTERM/SIGINT during startup sets it. Not owned; must outlive
  // Open().
  const std::atomic<bool>* cancel = nullptr;
  // Tests only: runs on the writing thread once a group's WAL record is in the OS, inside its
  // DB::Write, before the memtable inserts (events/wal_watch.h); the sync may start meanwhile.
  std::function<void()> wal_appended_for_test;
  // Tests only: runs on the thread of PutCheckpoint once its DB::Put returned, failed or not,
  // before its append ends: no WAL sync starts meanwhile.
  std::function<void()> checkpoint_put_for_test;
};

// ledgerd's (and `ledgerctl bench`'s) LedgerOptions::sync_interval_min unless configured.
inline constexpr std::chrono::microseconds kSyncIntervalMinDefault{1000};
// A sync that this many commands wait for starts without waiting out sync_interval_min: it
// already amortizes the fsync, and a closed loop of few callers (each with one command in
// flight) would otherwise be capped at callers / sync_interval_min.
inline constexpr size_t kPacedSyncCommandsEnough = 32;

struct EventFilter {
  std::string subject;  // empty = any
  std::string type;     // empty = any
  // Only events at or before this position (0 = up to the head): bounds how much of the log a
  // filtered read examines when few events match.
  Position up_to{};
};

struct LedgerMetrics {
  Counter commands_submitted;
  Counter commands_rejected;  // Decide() errors
  Counter commands_busy;      // rejected because the queue was full
  Counter idempotent_replays;
  Counter events_appended;
  Counter groups_committed;
  // Groups decided while an earlier group was still being written by the write thread
  // (LedgerOptions::write_thread_entries_min).
  Counter groups_pipelined;
  Counter syncs;  // WAL fsyncs: one covers every group written while the previous one ran
  Counter syncs_paced;  // syncs that waited for LedgerOptions::sync_interval_min
  // Syncs that started while the newest group they cover was still being inserted into the
  // memtables (its WAL record already in the OS: events/wal_watch.h).
  Counter syncs_beside_write;
  Counter write_failures;
  Histogram group_commands{Histogram::SizeBounds()};
  Histogram group_events{Histogram::SizeBounds()};
  // A group's WriteBatch from the start of its write until it is durable (its WAL sync).
  Histogram write_seconds{Histogram::LatencySecondsBounds()};
  // One WAL fsync (SyncWAL): the disk's part of every durable answer. Its slow tail (disk
  // stalls) shows up one for one in the tail latency of commands.
  Histogram sync_seconds{Histogram::LatencySecondsBounds()};
  // Table files written, in bytes: by memtable flushes (and WAL recovery at open), and by
  // compactions, which rewrite rows already in table files. The events family's share of the
  // latter stays 0 while its files are only moved between levels; small files that restarts
  // pile up at level 0 are merged, and counted here (see OpenDb).
  Counter table_bytes_flushed;
  Counter table_bytes_compacted;
  Counter event_table_bytes_compacted;
  // Microseconds flushes and compactions waited for LedgerOptions::background_write_pace.
  Counter background_write_waited_us;
  // Events the open's catch-up read from the log for folds behind it (added, or rebuilt because
  // their version changed): once from the oldest of their checkpoints, however many there are.
  // Not on /metrics (it only moves at open); the tests count the catch-up's passes with it.
  Counter catch_up_events_read;
};

// A consistent read view: rows and head position from one RocksDB snapshot.
class ReadView : public StateReader {
 public:
  virtual Position position() const = 0;
};

class Ledger {
 public:
  static Status Open(const LedgerOptions& options, std::unique_ptr<Ledger>* out);
  virtual ~Ledger() = default;

  // Blocks until the command is durably committed or rejected.
  virtual CommandResult Submit(Command* command) = 0;
  // The same without a blocked thread per command (for callers that keep many commands in flight
  // from a few threads: an event loop, the benchmark): `done` gets the result on the ledger's sync
  // thread (or at once on the calling thread when the command is refused before queueing). It
  // must be quick and must not block or call Submit(); it may call SubmitAsync(). `command` must
  // stay alive until `done` is called.
  virtual void SubmitAsync(Command* command, std::function<void(CommandResult)> done) = 0;

  // The last committed position and chain hash.
  virtual Position Head() const = 0;
  virtual Hash HeadHash() const = 0;
  virtual bool Degraded() const = 0;
  // Empty unless the store was opened with LedgerOptions::tolerate_head_mismatch and its chain
  // head record disagrees with the stored events (or cannot be read): then what is wrong.
  virtual std::string HeadRecordProblem() const = 0;
  // Empty unless the open stopped replaying the write-ahead logs at a gap (wal::EventGapFilter):
  // then which log begins past which position. A read-write open has set the later logs aside
  // (never acknowledged); a read-only one only skipped them, and cannot tell that case from a
  // log file gone missing.
  virtual std::string WalGapProblem() const = 0;

  virtual std::unique_ptr<ReadView> Snapshot() const = 0;

  // Events with position > after, oldest first, at most `limit` (after filtering). Every event
  // read is checked (DecodeCheckedEvent: its hash, and its link to the one read before it), the
  // first linked to the stored event at `after`, the last to the event after it when the log
  // holds one (its prev_hash only); a damaged one or a broken link fails the read with
  // Corruption naming its position, and `out` is left empty. Reads by subject link consecutive
  // positions only, and fail the same way at an event of another subject their index names.
  virtual Status ReadEvents(Position after, size_t limit, const EventFilter& filter,
                            std::vector<Event>* out) const = 0;
  // Streams raw stored values of positions [from, to] (to = 0: up to the head) to `fn`
  // (position, stored bytes) until it returns false. For verify/export/replay and the outbox.
  virtual Status ScanRaw(Position from, Position to,
                         const std::function<bool(Position, std::string_view)>& fn) const = 0;
  // The stored hash of event `at` (at > 0), to link the first event of a read that starts after
  // it to its predecessor (ReadEvents, the outbox, the Lago sink): a read's first event checked
  // on its own only let an event re-sealed at the end of one read through. Corruption when the
  // log has no event there or its record is too short to hold one.
  virtual Status StoredHashAt(Position at, Hash* out) const = 0;

  // Named consumer checkpoints ("last applied position"), e.g. "outbox.kafka". PutCheckpoint
  // writes nothing on a read-only or degraded ledger (Unavailable "read_only" or
  // "storage_degraded"); a write or sync of its own that fails degrades the ledger as a failed
  // group's does (Unavailable "storage_degraded"; RocksDB's words only in the server log).
  // Its write is a WAL append as a group's is: it waits out a running WAL sync, and none starts
  // until it has returned (with its own sync, if `sync`).
  virtual Status GetCheckpoint(std::string_view name, Position* out) const = 0;
  virtual Status PutCheckpoint(std::string_view name, Position position, bool sync) = 0;
  // The Fold::Version() that wrote the rows of fold `fold` (recorded beside its checkpoint once
  // a read-write open has folded the log up to the head with it); NotFound when none is recorded
  // (a store written before fold versions, or a rebuild a crash interrupted).
  virtual Status GetFoldVersion(std::string_view fold, uint32_t* out) const = 0;

  // Both digests read every row (seconds on a large store). `cancel` (ledgerctl replay's
  // SIGINT/SIGTERM) is checked every kDigestCancelCheckRows rows: once true the digest stops with
  // kUnavailable "digest_cancelled" and `out` is not set. nullptr = never.
  //
  // Digest over every fold's rows (family name, key, value in order): replay compares it.
  virtual Status ProjectionDigest(Hash* out, const std::atomic<bool>* cancel = nullptr) const = 0;
  // Digest over the per-subject index (`streams`, derived from the log like a fold's rows) as
  // the (subject, position) pairs its rows name, in key order, each row's run expanded: the
  // writer's one row per command and ImportEvents' one per call give equal digests for equal
  // indexes. Replay compares it. Corruption when a row is malformed (naming its subject and
  // position, printable).
  virtual Status StreamsDigest(Hash* out, const std::atomic<bool>* cancel = nullptr) const = 0;

  // Appends already-sealed events read from another log (replay into a fresh directory): checks
  // the chain links, writes the events verbatim and applies the folds. Positions must continue
  // the head.
  virtual Status ImportEvents(const std::vector<Event>& events) = 0;

  // Flushes memtables to table files (clean shutdown) so the data no longer lives only in the WAL.
  virtual Status Flush() = 0;
  // Waits until no flush or compaction is running or due in any family (tests, benchmarks);
  // Busy when background work is still going on after `timeout_ms`.
  virtual Status WaitForBackgroundWork(int64_t timeout_ms) = 0;
  // Waits until the side families deleted from by every command answered before the call have
  // been compacted and the table files that held the deleted values are gone from the disk
  // (events/side_shredder.h); Busy after `timeout_ms`. Tests: a removed key is shredded.
  virtual Status WaitForSideCompactions(int64_t timeout_ms) = 0;

  virtual LedgerMetrics& metrics() = 0;
  // Commands queued or being decided (not those decided and waiting to be written or synced).
  virtual size_t QueueDepth() const = 0;

  // Commit listeners: each is called on the sync thread after each sync with the new durable
  // head, in the order added. A listener must be cheap and must not block, Submit, or add or
  // remove listeners (log consumers -- the Kafka outbox, the Lago sink -- use one to wake their
  // thread). Add/Remove may be called from any thread at any time; once RemoveCommitListener()
  // returns, that listener is not running and is never called again, so its captures may be
  // destroyed. Returns an id for RemoveCommitListener (never 0).
  virtual uint64_t AddCommitListener(std::function<void(Position)> listener) = 0;
  // Unknown ids are ignored.
  virtual void RemoveCommitListener(uint64_t id) = 0;
};

// Key of an idempotency record: SHA-256(scope || 0x00 || key).
Hash IdempotencyRecordKey(std::string_view scope, std::string_view key);

}  // namespace ledger
