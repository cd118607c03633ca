#include "events/wal_watch.h"

#include <string>
#include <utility>

namespace ledger {
namespace {

thread_local WalWatch* current_watch = nullptr;

// RocksDB's WAL files: <number>.log in the database (or WAL) directory. The info log is "LOG".
bool IsWalFile(const std::string& fname) { return fname.ends_with(".log"); }

class WatchedWalFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  explicit WatchedWalFile(std::unique_ptr<rocksdb::FSWritableFile>&& file)
      : rocksdb::FSWritableFileOwnerWrapper(std::move(file)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Append(data, options, dbg);
    WalWatch::NoteAppend(s.ok(), data.size());
    return s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                           const rocksdb::DataVerificationInfo& verification_info,
                           rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Append(data, options, verification_info, dbg);
    WalWatch::NoteAppend(s.ok(), data.size());
    return s;
  }
  // A WAL written at offsets (direct I/O) is never watched: the watch would see no appends.
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     rocksdb::IODebugContext* dbg) override {
    WalWatch::NoteAppend(false, 0);
    return target()->PositionedAppend(data, offset, options, dbg);
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& options,
                                     const rocksdb::DataVerificationInfo& verification_info,
                                     rocksdb::IODebugContext* dbg) override {
    WalWatch::NoteAppend(false, 0);
    return target()->PositionedAppend(data, offset, options, verification_info, dbg);
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& options,
                          rocksdb::IODebugContext* dbg) override {
    rocksdb::IOStatus s = target()->Flush(options, dbg);
    if (s.ok()) {
      WalWatch::NoteFlush();
    } else {
      WalWatch::NoteAppend(false, 0);
    }
    return s;
  }
};

class WalWatchingFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit WalWatchingFileSystem(const std::shared_ptr<rocksdb::FileSystem>& base)
      : rocksdb::FileSystemWrapper(base) {}
  const char* Name() const override { return "WalWatchingFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    return Watched(fname, target()->NewWritableFile(fname, options, result, dbg), result);
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override {
    return Watched(fname, target()->ReopenWritableFile(fname, options, result, dbg), result);
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override {
    return Watched(fname, target()->ReuseWritableFile(fname, old_fname, options, result, dbg),
                   result);
  }

 private:
  static rocksdb::IOStatus Watched(const std::string& fname, rocksdb::IOStatus s,
                                   std::unique_ptr<rocksdb::FSWritableFile>* result) {
    if (s.ok() && IsWalFile(fname) && *result != nullptr) {
      *result = std::make_unique<WatchedWalFile>(std::move(*result));
    }
    return s;
  }
};

}  // namespace

bool WalWatch::Arm(uint64_t batch_bytes, std::function<void()> on_appended) {
  if (batch_bytes == 0 || batch_bytes > kArmBytesMax || current_watch != nullptr) return false;
  expected_ = batch_bytes;
  appended_ = 0;
  failed_ = false;
  fired_ = false;
  armed_ = true;
  on_appended_ = std::move(on_appended);
  current_watch = this;
  return true;
}

WalWatch::~WalWatch() {
  if (armed_ && current_watch == this) current_watch = nullptr;
}

void WalWatch::NoteAppend(bool ok, uint64_t bytes) {
  WalWatch* w = current_watch;
  if (w == nullptr) return;
  if (!ok) w->failed_ = true;
  w->appended_ += bytes;
}

void WalWatch::NoteFlush() {
  WalWatch* w = current_watch;
  if (w == nullptr || w->failed_ || w->fired_ || w->appended_ < w->expected_) return;
  w->fired_ = true;
  current_watch = nullptr;  // once: later flushes of this write are not this record's
  w->on_appended_();
}

std::shared_ptr<rocksdb::FileSystem> NewWalWatchingFileSystem(
    const std::shared_ptr<rocksdb::FileSystem>& base) {
  return std::make_shared<WalWatchingFileSystem>(base);
}

}  // namespace ledger
