#include "tests/support/fault_fs.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>

namespace ledger::testing {

namespace {

using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;

std::string Normalize(const std::string& path) {
  std::string normal = std::filesystem::path(path).lexically_normal().string();
  while (normal.size() > 1 && normal.back() == '/') normal.pop_back();
  return normal;
}

std::string ParentOf(const std::string& normalized) {
  return std::filesystem::path(normalized).parent_path().string();
}

// Every write goes through the FaultFs hooks; Close() always reaches the real file so that the
// descriptor is released (it writes nothing: RocksDB's own buffer is flushed through Append,
// which the hooks refuse when the power is off).
class FaultWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> target, FaultFs* fs,
                    std::shared_ptr<FaultFs::FileState> state, std::string name)
      : FSWritableFileOwnerWrapper(std::move(target)),
        fs_(fs),
        state_(std::move(state)),
        name_(std::move(name)),
        log_(name_.ends_with(".log")) {}

  IOStatus Append(const rocksdb::Slice& data, const IOOptions& options,
                  IODebugContext* dbg) override {
    IOStatus s = fs_->BeforeAppend();
    if (!s.ok() || Lost()) return s;
    s = target()->Append(data, options, dbg);
    if (s.ok()) fs_->AfterAppend(state_.get(), data.size());
    return s;
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& options,
                  const rocksdb::DataVerificationInfo& info, IODebugContext* dbg) override {
    IOStatus s = fs_->BeforeAppend();
    if (!s.ok() || Lost()) return s;
    s = target()->Append(data, options, info, dbg);
    if (s.ok()) fs_->AfterAppend(state_.get(), data.size());
    return s;
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset, const IOOptions& options,
                            IODebugContext* dbg) override {
    IOStatus s = fs_->BeforeAppend();
    if (!s.ok() || Lost()) return s;
    s = target()->PositionedAppend(data, offset, options, dbg);
    if (s.ok()) fs_->AfterPositionedAppend(state_.get(), offset + data.size());
    return s;
  }
  IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset, const IOOptions& options,
                            const rocksdb::DataVerificationInfo& info,
                            IODebugContext* dbg) override {
    IOStatus s = fs_->BeforeAppend();
    if (!s.ok() || Lost()) return s;
    s = target()->PositionedAppend(data, offset, options, info, dbg);
    if (s.ok()) fs_->AfterPositionedAppend(state_.get(), offset + data.size());
    return s;
  }
  IOStatus Truncate(uint64_t size, const IOOptions& options, IODebugContext* dbg) override {
    if (!fs_->powered()) return fs_->PowerOffError();
    IOStatus s = target()->Truncate(size, options, dbg);
    if (s.ok()) fs_->AfterTruncate(state_.get(), size);
    return s;
  }
  IOStatus Flush(const IOOptions& options, IODebugContext* dbg) override {
    if (!fs_->powered()) return fs_->PowerOffError();
    return target()->Flush(options, dbg);
  }
  IOStatus Sync(const IOOptions& options, IODebugContext* dbg) override {
    return SyncWith(options, dbg, /*full=*/false);
  }
  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    return SyncWith(options, dbg, /*full=*/true);
  }
  // sync_file_range(2) starts write-back of a range but persists no metadata and waits for
  // nothing: it is passed through but never counted as durable.
  IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const IOOptions& options,
                     IODebugContext* dbg) override {
    if (!fs_->powered()) return fs_->PowerOffError();
    return target()->RangeSync(offset, nbytes, options, dbg);
  }
  IOStatus Allocate(uint64_t offset, uint64_t len, const IOOptions& options,
                    IODebugContext* dbg) override {
    if (!fs_->powered()) return fs_->PowerOffError();
    return target()->Allocate(offset, len, options, dbg);
  }

 private:
  // An append answered OK and dropped (FaultFs::SetLoseLogAppends).
  bool Lost() const { return log_ && fs_->losing_log_appends(); }

  IOStatus SyncWith(const IOOptions& options, IODebugContext* dbg, bool full) {
    IOStatus s = fs_->BeforeSync(name_);
    if (!s.ok()) return s;
    // Only what was appended before the sync started is known to be covered by it.
    uint64_t covered = fs_->SizeOf(state_.get());
    s = full ? target()->Fsync(options, dbg) : target()->Sync(options, dbg);
    if (s.ok()) fs_->AfterSync(state_.get(), covered);
    return s;
  }

  FaultFs* fs_;
  std::shared_ptr<FaultFs::FileState> state_;
  std::string name_;
  const bool log_;  // a write-ahead log
};

class FaultDirectory final : public rocksdb::FSDirectoryWrapper {
 public:
  FaultDirectory(std::unique_ptr<rocksdb::FSDirectory> target, FaultFs* fs, std::string name)
      : FSDirectoryWrapper(std::move(target)), fs_(fs), name_(std::move(name)) {}

  IOStatus Fsync(const IOOptions& options, IODebugContext* dbg) override {
    const uint64_t covered = fs_->DirectoryChangesSoFar();
    IOStatus s = fs_->BeforeSync(name_);
    if (s.ok()) s = FSDirectoryWrapper::Fsync(options, dbg);
    if (s.ok()) fs_->AfterDirectorySync(name_, covered);
    return s;
  }
  IOStatus FsyncWithDirOptions(const IOOptions& options, IODebugContext* dbg,
                               const rocksdb::DirFsyncOptions& dir_options) override {
    const uint64_t covered = fs_->DirectoryChangesSoFar();
    IOStatus s = fs_->BeforeSync(name_);
    if (s.ok()) s = FSDirectoryWrapper::FsyncWithDirOptions(options, dbg, dir_options);
    if (s.ok()) fs_->AfterDirectorySync(name_, covered);
    return s;
  }

 private:
  FaultFs* fs_;
  std::string name_;
};

}  // namespace

std::string FaultFs::DropReport::ToString() const {
  return "truncated " + std::to_string(files_truncated) + " files and zero-filled " +
         std::to_string(files_zero_filled) + " (" + std::to_string(bytes_dropped) +
         " bytes), deleted " + std::to_string(files_deleted) +
         " unsynced new files, undid " + std::to_string(renames_undone) + " renames";
}

FaultFs::FaultFs() : FileSystemWrapper(rocksdb::FileSystem::Default()) {}

IOStatus FaultFs::PowerOffError() const { return IOStatus::IOError("fault_fs: the power is off"); }

IOStatus FaultFs::BeforeAppend() {
  WaitWhileHeld(&append_hold_);
  if (!powered()) return PowerOffError();
  int64_t left = appends_until_failure_.load();
  while (left >= 0) {
    if (left == 0) return IOStatus::IOError("fault_fs: injected write failure");
    if (appends_until_failure_.compare_exchange_weak(left, left - 1)) break;
  }
  return IOStatus::OK();
}

void FaultFs::CountAppend() {
  appends_.fetch_add(1);
  int64_t left = appends_until_power_cut_.load();
  while (left > 0) {
    if (appends_until_power_cut_.compare_exchange_weak(left, left - 1)) {
      if (left == 1) CutPower();
      break;
    }
  }
}

void FaultFs::AfterAppend(FileState* state, uint64_t bytes) {
  {
    std::lock_guard<std::mutex> l(mu_);
    state->size += bytes;
  }
  CountAppend();
}

void FaultFs::AfterPositionedAppend(FileState* state, uint64_t end_offset) {
  {
    std::lock_guard<std::mutex> l(mu_);
    state->size = std::max(state->size, end_offset);
  }
  CountAppend();
}

void FaultFs::HoldSyncs() { SetHolding(&sync_hold_, true); }
void FaultFs::ReleaseSyncs() { SetHolding(&sync_hold_, false); }
void FaultFs::WaitUntilASyncIsHeld() { WaitUntilHeld(&sync_hold_); }
void FaultFs::HoldAppends() { SetHolding(&append_hold_, true); }
void FaultFs::ReleaseAppends() { SetHolding(&append_hold_, false); }
void FaultFs::WaitUntilAnAppendIsHeld() { WaitUntilHeld(&append_hold_); }

void FaultFs::SetHolding(Hold* hold, bool holding) {
  std::lock_guard<std::mutex> l(hold_mu_);
  hold->holding = holding;
  hold_cv_.notify_all();
}

void FaultFs::WaitUntilHeld(Hold* hold) {
  std::unique_lock<std::mutex> l(hold_mu_);
  hold_cv_.wait(l, [hold] { return hold->held > 0; });
}

void FaultFs::WaitWhileHeld(Hold* hold) {
  std::unique_lock<std::mutex> l(hold_mu_);
  if (!hold->holding) return;
  ++hold->held;
  hold_cv_.notify_all();
  hold_cv_.wait(l, [hold] { return !hold->holding; });
  --hold->held;
}

IOStatus FaultFs::BeforeSync(const std::string& name) {
  WaitWhileHeld(&sync_hold_);
  if (!powered()) return PowerOffError();
  if (fail_syncs_.load()) {
    return IOStatus::IOError("While fsync: " + name, "fault_fs: injected sync failure");
  }
  return IOStatus::OK();
}

uint64_t FaultFs::SizeOf(FileState* state) {
  std::lock_guard<std::mutex> l(mu_);
  return state->size;
}

void FaultFs::AfterSync(FileState* state, uint64_t synced_size) {
  syncs_.fetch_add(1);
  std::lock_guard<std::mutex> l(mu_);
  state->synced_size = std::max(state->synced_size, synced_size);
}

void FaultFs::AfterTruncate(FileState* state, uint64_t size) {
  std::lock_guard<std::mutex> l(mu_);
  state->size = size;
  state->synced_size = std::min(state->synced_size, size);
}

uint64_t FaultFs::DirectoryChangesSoFar() const {
  std::lock_guard<std::mutex> l(mu_);
  return directory_changes_;
}

void FaultFs::AfterDirectorySync(const std::string& dirname, uint64_t covered) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = pending_dirs_.find(Normalize(dirname));
  if (it == pending_dirs_.end()) return;
  std::erase_if(it->second, [covered](const PendingEntry& e) { return e.number < covered; });
  if (it->second.empty()) pending_dirs_.erase(it);
}

void FaultFs::AddPendingEntry(PendingEntry entry) {
  entry.number = directory_changes_++;
  std::string dir = ParentOf(entry.name);
  pending_dirs_[dir].push_back(std::move(entry));
}

uint64_t FaultFs::UnsyncedBytes() const {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t total = 0;
  for (const auto& [name, state] : files_) total += state->size - state->synced_size;
  return total;
}

std::shared_ptr<FaultFs::FileState> FaultFs::Track(const std::string& fname, bool created,
                                                   uint64_t size) {
  std::string name = Normalize(fname);
  std::lock_guard<std::mutex> l(mu_);
  auto it = files_.find(name);
  if (!created && it != files_.end()) return it->second;
  auto state = std::make_shared<FileState>();
  state->size = size;
  state->synced_size = size;  // what was there before we saw the file is durable
  files_[name] = state;
  return state;
}

IOStatus FaultFs::NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                  std::unique_ptr<rocksdb::FSWritableFile>* result,
                                  IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  bool existed = target()->FileExists(fname, IOOptions(), nullptr).ok();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->NewWritableFile(fname, options, &file, dbg);
  if (!s.ok()) return s;
  std::shared_ptr<FileState> state = Track(fname, /*created=*/true, 0);
  if (!existed) {
    std::string name = Normalize(fname);
    std::lock_guard<std::mutex> l(mu_);
    AddPendingEntry(PendingEntry{name, std::nullopt, std::nullopt});
  }
  *result = std::make_unique<FaultWritableFile>(std::move(file), this, std::move(state), fname);
  return IOStatus::OK();
}

IOStatus FaultFs::ReopenWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                     std::unique_ptr<rocksdb::FSWritableFile>* result,
                                     IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  bool existed = target()->FileExists(fname, IOOptions(), nullptr).ok();
  std::unique_ptr<rocksdb::FSWritableFile> file;
  IOStatus s = target()->ReopenWritableFile(fname, options, &file, dbg);
  if (!s.ok()) return s;
  uint64_t size = 0;
  if (existed) {
    s = target()->GetFileSize(fname, IOOptions(), &size, nullptr);
    if (!s.ok()) return s;
  }
  std::shared_ptr<FileState> state = Track(fname, /*created=*/false, size);
  if (!existed) {
    std::string name = Normalize(fname);
    std::lock_guard<std::mutex> l(mu_);
    AddPendingEntry(PendingEntry{name, std::nullopt, std::nullopt});
  }
  *result = std::make_unique<FaultWritableFile>(std::move(file), this, std::move(state), fname);
  return IOStatus::OK();
}

IOStatus FaultFs::ReuseWritableFile(const std::string&, const std::string&,
                                    const rocksdb::FileOptions&,
                                    std::unique_ptr<rocksdb::FSWritableFile>*, IODebugContext*) {
  return IOStatus::NotSupported("fault_fs does not model WAL recycling");
}

IOStatus FaultFs::NewRandomRWFile(const std::string& fname, const rocksdb::FileOptions& options,
                                  std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                  IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  return target()->NewRandomRWFile(fname, options, result, dbg);
}

IOStatus FaultFs::NewDirectory(const std::string& name, const IOOptions& options,
                               std::unique_ptr<rocksdb::FSDirectory>* result, IODebugContext* dbg) {
  std::unique_ptr<rocksdb::FSDirectory> directory;
  IOStatus s = target()->NewDirectory(name, options, &directory, dbg);
  if (!s.ok()) return s;
  *result = std::make_unique<FaultDirectory>(std::move(directory), this, Normalize(name));
  return IOStatus::OK();
}

IOStatus FaultFs::DeleteFile(const std::string& fname, const IOOptions& options,
                             IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  IOStatus s = target()->DeleteFile(fname, options, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    files_.erase(Normalize(fname));
  }
  return s;
}

IOStatus FaultFs::Truncate(const std::string& fname, size_t size, const IOOptions& options,
                           IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  IOStatus s = target()->Truncate(fname, size, options, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = files_.find(Normalize(fname));
    if (it != files_.end()) {
      it->second->size = size;
      it->second->synced_size = std::min<uint64_t>(it->second->synced_size, size);
    }
  }
  return s;
}

IOStatus FaultFs::RenameFile(const std::string& source, const std::string& target_name,
                             const IOOptions& options, IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  std::string from = Normalize(source);
  std::string to = Normalize(target_name);
  // Save what a power loss would bring back under the destination name.
  bool undoable = true;
  std::optional<std::string> previous;
  if (target()->FileExists(to, IOOptions(), nullptr).ok()) {
    uint64_t size = 0;
    std::string content;
    if (target()->GetFileSize(to, IOOptions(), &size, nullptr).ok() &&
        size <= kRenameSaveBytesMax && rocksdb::ReadFileToString(target(), to, &content).ok()) {
      previous = std::move(content);
    } else {
      undoable = false;
    }
  }
  IOStatus s = target()->RenameFile(source, target_name, options, dbg);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> l(mu_);
  files_.erase(to);
  auto it = files_.find(from);
  if (it != files_.end()) {
    files_[to] = it->second;
    files_.erase(it);
  }
  if (undoable) AddPendingEntry(PendingEntry{to, from, std::move(previous)});
  return IOStatus::OK();
}

IOStatus FaultFs::LinkFile(const std::string& source, const std::string& target_name,
                           const IOOptions& options, IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  return target()->LinkFile(source, target_name, options, dbg);
}

IOStatus FaultFs::CreateDir(const std::string& dirname, const IOOptions& options,
                            IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  return target()->CreateDir(dirname, options, dbg);
}

IOStatus FaultFs::CreateDirIfMissing(const std::string& dirname, const IOOptions& options,
                                     IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  return target()->CreateDirIfMissing(dirname, options, dbg);
}

IOStatus FaultFs::DeleteDir(const std::string& dirname, const IOOptions& options,
                            IODebugContext* dbg) {
  if (!powered()) return PowerOffError();
  return target()->DeleteDir(dirname, options, dbg);
}

// Called with mu_ held.
IOStatus FaultFs::UndoPendingEntry(const PendingEntry& entry, DropReport* report) {
  bool present = target()->FileExists(entry.name, IOOptions(), nullptr).ok();
  if (!entry.source.has_value()) {  // a creation the directory never made durable
    if (!present) return IOStatus::OK();
    IOStatus s = target()->DeleteFile(entry.name, IOOptions(), nullptr);
    if (!s.ok()) return s;
    files_.erase(entry.name);
    report->files_deleted++;
    return IOStatus::OK();
  }
  if (present) {  // the file goes back to its old name, with what it had synced
    IOStatus s = target()->RenameFile(entry.name, *entry.source, IOOptions(), nullptr);
    if (!s.ok()) return s;
    auto it = files_.find(entry.name);
    if (it != files_.end()) {
      files_[*entry.source] = it->second;
      files_.erase(it);
    }
  }
  if (entry.previous_content.has_value()) {
    IOStatus s = rocksdb::WriteStringToFile(target(), *entry.previous_content, entry.name,
                                            /*should_sync=*/false);
    if (!s.ok()) return s;
    files_.erase(entry.name);
  }
  report->renames_undone++;
  return IOStatus::OK();
}

IOStatus FaultFs::DropUnsyncedData(DropMode mode, uint64_t seed, DropReport* report) {
  *report = DropReport{};
  if (powered()) return IOStatus::IOError("fault_fs: DropUnsyncedData needs CutPower() first");
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [dirname, entries] : pending_dirs_) {
    for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
      IOStatus s = UndoPendingEntry(*it, report);
      if (!s.ok()) return s;
    }
  }
  pending_dirs_.clear();

  std::mt19937_64 random(seed);
  for (const auto& [name, state] : files_) {
    uint64_t on_disk = 0;
    if (!target()->GetFileSize(name, IOOptions(), &on_disk, nullptr).ok()) continue;
    uint64_t keep = std::min(state->synced_size, on_disk);
    if (mode == DropMode::kKeepRandomPrefix && on_disk > keep) {
      keep += random() % (on_disk - keep + 1);
    }
    if (mode == DropMode::kZeroFillTail && on_disk - keep > kZeroTailBytesMin) {
      keep += random() % (on_disk - keep - kZeroTailBytesMin + 1);
    }
    if (keep == on_disk) continue;
    report->bytes_dropped += on_disk - keep;
    if (mode == DropMode::kZeroFillTail) {
      std::fstream file(name, std::ios::binary | std::ios::in | std::ios::out);
      file.seekp(static_cast<std::streamoff>(keep));
      const std::string zeros(on_disk - keep, '\0');
      file.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
      file.close();
      if (!file) return IOStatus::IOError("fault_fs: cannot zero-fill " + name);
      report->files_zero_filled++;
      continue;
    }
    // The default (POSIX) file system does not implement FileSystem::Truncate.
    std::error_code ec;
    std::filesystem::resize_file(name, keep, ec);
    if (ec) return IOStatus::IOError("fault_fs: truncate " + name + ": " + ec.message());
    report->files_truncated++;
  }
  files_.clear();
  return IOStatus::OK();
}

FaultEnv::FaultEnv() : fs_(std::make_shared<FaultFs>()), env_(rocksdb::NewCompositeEnv(fs_)) {}

}  // namespace ledger::testing
