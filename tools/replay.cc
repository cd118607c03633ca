#include "tools/replay.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>

#include <openssl/sha.h>
#include <rocksdb/db.h>

#include "events/coding.h"
#include "events/event.h"
#include "events/ledger.h"
#include "tools/progress.h"
#include "tools/store.h"

namespace ledger::tools {

namespace {

// The directory the replay writes into. Unless kept, what the replay wrote there is removed
// when it goes out of scope: the temporary directory always (a copy of every projection, emails
// included), an --into directory when the replay failed or was cancelled (a prefix of the log
// there opened as a whole store: ledgerd started on it). One the replay created is removed; one
// that existed (empty) is emptied. Only once the replay holds the directory's lock (DirLock, as
// ledgerd does): a directory another process created or locked meanwhile is left alone.
class RebuiltDir {
 public:
  ~RebuiltDir() {
    if (!ours_ || keep_) return;
    std::error_code ec;
    if (created_) {
      std::filesystem::remove_all(path_, ec);
      return;
    }
    std::filesystem::directory_iterator entry(path_, ec);
    for (; !ec && entry != std::filesystem::directory_iterator(); entry.increment(ec)) {
      std::error_code ignored;
      std::filesystem::remove_all(entry->path(), ignored);
    }
  }
  Status CreateTemporary() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "ledgerctl-replay-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::IOError("cannot create a temporary directory " + pattern);
    }
    path_ = pattern;
    created_ = true;
    ours_ = true;
    return DirLock::Lock(path_, &lock_);
  }
  // `into` must not exist or be an empty directory (else kInvalidArgument, and it is left alone).
  // Created here (mode 0700) or found empty, then locked: kIOError "in use" when another process
  // (ledgerd, another replay) holds it, and nothing is removed; "in use" too for a non-empty one
  // that another process holds.
  Status Claim(const std::string& into, const ReplayOptions& options) {
    std::error_code ec;
    const std::filesystem::path dir(into);
    if (dir.has_parent_path()) std::filesystem::create_directories(dir.parent_path(), ec);
    if (::mkdir(into.c_str(), 0700) == 0) {
      ::chmod(into.c_str(), 0700);  // whatever the umask
      created_ = true;
    } else if (const int error = errno; error != EEXIST) {
      return Status::IOError("cannot create " + into + ": " + std::strerror(error));
    } else if (!std::filesystem::is_directory(into, ec) || !std::filesystem::is_empty(into, ec)) {
      // A directory a ledgerd or another replay holds is never empty (its lock file): "in use"
      // as README says, not a usage error. Looked at without creating anything: not ours.
      LEDGER_RETURN_IF_ERROR(DirLock::CheckNotHeld(into));
      return Status::InvalidArgument("bad_target", into + " exists and is not an empty directory");
    }
    path_ = into;
    if (options.on_step) options.on_step(ReplayStep::kIntoCreated);
    LEDGER_RETURN_IF_ERROR(DirLock::Lock(into, &lock_));
    // Written to between the look and the lock (a ledgerd that has since exited): not ours.
    std::filesystem::directory_iterator entry(into, ec);
    for (; !ec && entry != std::filesystem::directory_iterator(); entry.increment(ec)) {
      if (entry->path().filename() == kDirLockFile) continue;
      lock_.reset();
      return Status::InvalidArgument("bad_target", into + " exists and is not an empty directory");
    }
    ours_ = true;
    return Status::OK();
  }
  void Keep() { keep_ = true; }
  const std::string& path() const { return path_; }
  // Handed to the rebuilt store's open (LedgerOptions::dir_lock).
  const std::shared_ptr<DirLock>& lock() const { return lock_; }

 private:
  std::string path_;
  bool created_ = false;
  bool ours_ = false;  // made by mkdtemp, or locked by the replay and empty then
  bool keep_ = false;
  std::shared_ptr<DirLock> lock_;  // held until what is not kept is removed
};

bool Cancelled(const ReplayOptions& options) {
  return options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed);
}

Status CancelledStatus() {
  return Status::Unavailable("replay_cancelled", "stopped before the replay had finished");
}

// The folds with no column family in the live store are reported stale (not recorded, no rows),
// the others returned in `present` for the read-only open, which cannot create a family. A store
// last opened read-write by a build without a fold (byok before BYOK) was refused as a data error
// (exit 65), as if damaged; ledgerd's next open creates the family and folds the log into it.
Status FindMissingFolds(const std::string& data_dir, const std::vector<const Fold*>& folds,
                        std::vector<const Fold*>* present, ReplayReport* report) {
  std::vector<std::string> families;
  rocksdb::Status s = rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), data_dir, &families);
  if (!s.ok()) return Status::IOError("cannot list column families: " + s.ToString());
  for (const Fold* fold : folds) {
    if (std::find(families.begin(), families.end(), fold->Name()) != families.end()) {
      present->push_back(fold);
      continue;
    }
    StaleFold stale{std::string(fold->Name()), false, 0, fold->Version()};
    stale.missing = true;
    report->stale_folds.push_back(std::move(stale));
  }
  return Status::OK();
}

// Imports live events 1..report->position into `rebuilt`, in chunks.
Status Rebuild(const Ledger& live, Ledger* rebuilt, const ReplayOptions& options,
               ReplayReport* report) {
  Progress meter(options.progress, "replay", report->position.value());
  std::vector<Event> chunk;
  chunk.reserve(options.chunk_events);
  size_t chunk_bytes = 0;  // stored bytes of the events in `chunk`
  Status failure;
  auto import_chunk = [&]() {
    if (options.on_chunk) options.on_chunk(chunk.size(), chunk_bytes);
    failure = rebuilt->ImportEvents(chunk);
    // The rebuilt store refuses what does not continue its chain: the live log's data is bad.
    if (failure.code() == Code::kInvalidArgument) {
      failure = Status::Corruption("the live log does not import: " + failure.message());
    }
    if (failure.ok()) report->events += chunk.size();
    chunk.clear();
    chunk_bytes = 0;
    meter.Update(report->events);
    return failure.ok();
  };
  uint64_t expected = 1;
  Status scan = live.ScanRaw(Position(1), report->position, [&](Position p, std::string_view v) {
    if (Cancelled(options)) {
      failure = CancelledStatus();
      return false;
    }
    if (p.value() != expected) {
      failure = Status::Corruption("position " + std::to_string(expected) +
                                   ": missing (the next stored position is " +
                                   std::to_string(p.value()) + ")");
      return false;
    }
    ++expected;
    Event event;
    failure = DecodeEvent(v, &event);
    if (!failure.ok()) {
      failure = Status::Corruption("position " + std::to_string(p.value()) + ": " +
                                   failure.message());
      return false;
    }
    // An event stored under another position's key: the import would refuse it as not
    // continuing its head, naming no position.
    if (event.position != p) {
      failure = Status::Corruption("position " + std::to_string(p.value()) +
                                   ": the record says position " +
                                   std::to_string(event.position.value()));
      return false;
    }
    // Bounded by bytes too: the writer cuts a group only between commands, so the whole chunk
    // is one group, decoded and batched at once.
    if (!chunk.empty() && chunk_bytes + v.size() > options.chunk_bytes && !import_chunk()) {
      return false;
    }
    chunk.push_back(std::move(event));
    chunk_bytes += v.size();
    return chunk.size() < options.chunk_events || import_chunk();
  });
  LEDGER_RETURN_IF_ERROR(failure);
  LEDGER_RETURN_IF_ERROR(scan);
  if (!chunk.empty() && !import_chunk()) return failure;
  meter.Finish(report->events);
  if (rebuilt->Head() != report->position) {
    return Status::Corruption("the live log has " + std::to_string(rebuilt->Head().value()) +
                              " readable events, its chain head says " +
                              std::to_string(report->position.value()));
  }
  return rebuilt->Flush();
}

// Runs one full scan of a store (a digest), stopped by `cancel` inside (every
// kDigestCancelCheckRows rows) and checked before: CancelledStatus() once it is set.
Status StopOnCancel(const ReplayOptions& options, const std::function<Status()>& scan) {
  if (Cancelled(options)) return CancelledStatus();
  const Status s = scan();
  if (Cancelled(options)) return CancelledStatus();
  return s;
}

// Digest of one fold's rows, framed like Ledger::ProjectionDigest (for naming what differs).
Status FoldDigest(const Ledger& ledger, const Fold* fold, const ReplayOptions& options,
                  Hash* out) {
  std::unique_ptr<ReadView> view = ledger.Snapshot();
  SHA256_CTX ctx;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  SHA256_Init(&ctx);
  std::string framed;
  uint64_t rows = 0;
  Status scan = view->Scan(fold->Name(), "", [&](std::string_view key, std::string_view value) {
    if (rows++ % kDigestCancelCheckRows == 0 && Cancelled(options)) return false;
    framed.clear();
    PutLengthPrefixed(&framed, key);
    PutLengthPrefixed(&framed, value);
    SHA256_Update(&ctx, framed.data(), framed.size());
    return true;
  });
  SHA256_Final(out->data(), &ctx);
#pragma GCC diagnostic pop
  return scan;
}

// The folds whose rows the live store holds from another version of their code (read-only, so
// the open did not rebuild them as ledgerd's does).
Status FindStaleFolds(const Ledger& live, const std::vector<const Fold*>& folds,
                      ReplayReport* report) {
  for (const Fold* fold : folds) {
    StaleFold stale{std::string(fold->Name()), true, 0, fold->Version()};
    const Status s = live.GetFoldVersion(fold->Name(), &stale.store_version);
    if (!s.ok() && !s.IsNotFound()) return s;
    stale.recorded = s.ok();
    if (stale.recorded && stale.store_version == stale.build_version) continue;
    report->stale_folds.push_back(std::move(stale));
  }
  return Status::OK();
}

Status FindDifferingFolds(const Ledger& live, const Ledger& rebuilt, const ReplayOptions& options,
                          ReplayReport* report) {
  for (const Fold* fold : options.folds) {
    const auto stale = [&](const StaleFold& f) { return f.name == fold->Name(); };
    if (std::any_of(report->stale_folds.begin(), report->stale_folds.end(), stale)) continue;
    Hash live_digest{}, rebuilt_digest{};
    LEDGER_RETURN_IF_ERROR(FoldDigest(live, fold, options, &live_digest));
    LEDGER_RETURN_IF_ERROR(FoldDigest(rebuilt, fold, options, &rebuilt_digest));
    if (Cancelled(options)) return CancelledStatus();
    if (live_digest != rebuilt_digest) report->differing_folds.emplace_back(fold->Name());
  }
  return Status::OK();
}

}  // namespace

Status ReplayProjections(const ReplayOptions& options, ReplayReport* report) {
  *report = ReplayReport{};
  if (options.chunk_events == 0) return Status::InvalidArgument("bad_chunk", "chunk_events is 0");
  if (options.chunk_bytes == 0) return Status::InvalidArgument("bad_chunk", "chunk_bytes is 0");
  RebuiltDir dir;  // before `rebuilt`: closed before its files are removed
  LEDGER_RETURN_IF_ERROR(options.into.empty() ? dir.CreateTemporary()
                                               : dir.Claim(options.into, options));
  report->rebuilt_path = dir.path();

  LEDGER_RETURN_IF_ERROR(CheckStoreExists(options.data_dir));
  std::vector<const Fold*> present;
  LEDGER_RETURN_IF_ERROR(FindMissingFolds(options.data_dir, options.folds, &present, report));
  std::unique_ptr<Ledger> live;
  LEDGER_RETURN_IF_ERROR(OpenReadOnly({options.data_dir, present, true}, &live));
  report->position = live->Head();
  // Logs holding events past a hole: the chain read is whole but may be short of what was
  // acknowledged (verify and export stop here too).
  if (const std::string gap = live->WalGapProblem(); !gap.empty()) {
    return Status::Corruption("position " + std::to_string(report->position.value() + 1) + ": " +
                              gap + " (ledgerctl verify explains)");
  }
  LEDGER_RETURN_IF_ERROR(FindStaleFolds(*live, present, report));
  LEDGER_RETURN_IF_ERROR(StopOnCancel(options, [&] {
    return live->ProjectionDigest(&report->live_digest, options.cancel);
  }));

  LedgerOptions rebuilt_options;
  rebuilt_options.path = report->rebuilt_path;
  rebuilt_options.folds = options.folds;
  rebuilt_options.sync = false;  // scratch; Flush() at the end makes a kept copy durable
  rebuilt_options.dir_lock = dir.lock();
  std::unique_ptr<Ledger> rebuilt;
  LEDGER_RETURN_IF_ERROR(Ledger::Open(rebuilt_options, &rebuilt));
  LEDGER_RETURN_IF_ERROR(Rebuild(*live, rebuilt.get(), options, report));
  if (Cancelled(options)) return CancelledStatus();
  if (options.on_step) options.on_step(ReplayStep::kRebuilt);
  LEDGER_RETURN_IF_ERROR(StopOnCancel(options, [&] {
    return rebuilt->ProjectionDigest(&report->rebuilt_digest, options.cancel);
  }));
  report->equal = report->live_digest == report->rebuilt_digest;
  if (!report->equal) {
    LEDGER_RETURN_IF_ERROR(StopOnCancel(options, [&] {
      return FindDifferingFolds(*live, *rebuilt, options, report);
    }));
  }
  // The per-subject index is derived from the log too (GET /api/v1/events?subject= reads by it):
  // a row lost or pointed elsewhere hides a subject's events or serves another's.
  LEDGER_RETURN_IF_ERROR(StopOnCancel(options, [&] {
    return live->StreamsDigest(&report->live_streams_digest, options.cancel);
  }));
  LEDGER_RETURN_IF_ERROR(StopOnCancel(options, [&] {
    return rebuilt->StreamsDigest(&report->rebuilt_streams_digest, options.cancel);
  }));
  if (report->live_streams_digest != report->rebuilt_streams_digest) {
    report->equal = false;
    report->differing_folds.emplace_back(kStreamsIndexName);
  }
  if (!options.into.empty()) dir.Keep();
  return Status::OK();
}

}  // namespace ledger::tools
