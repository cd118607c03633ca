#include "events/side_shredder.h"

#include <rocksdb/db.h>
#include <rocksdb/metadata.h>
#include <rocksdb/options.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace ledger {

namespace {

// Whether the table file `name` in `directory` is still on disk, under its name or as the delete
// scheduler's trash (`<name>.trash`, `<name><n>.trash`) not yet cut down.
bool TableFileOnDisk(const std::string& directory, const std::string& name) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    if (entry.path().filename().string().starts_with(name)) return true;
  }
  return false;
}

}  // namespace

void SideShredder::Start() {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ledger-shred");
    Loop();
  });
}

void SideShredder::Request(rocksdb::ColumnFamilyHandle* family, uint64_t sequence) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t& requested = pending_[family];
    requested = std::max(requested, sequence);
    ++requested_;
  }
  cv_.notify_all();
}

Status SideShredder::Wait(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t target = requested_;
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                    [&] { return done_ >= target; })) {
    return Status::Busy("side families still being compacted after " +
                        std::to_string(timeout_ms) + " ms");
  }
  return Status::OK();
}

void SideShredder::Stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SideShredder::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
    if (pending_.empty()) return;  // stopping, every request done
    std::map<rocksdb::ColumnFamilyHandle*, uint64_t> batch;
    batch.swap(pending_);
    const uint64_t through = requested_;
    lock.unlock();
    for (const auto& [family, sequence] : batch) Shred(family, sequence);
    lock.lock();
    done_ = through;
    cv_.notify_all();
  }
}

void SideShredder::Shred(rocksdb::ColumnFamilyHandle* family, uint64_t sequence) {
  // A compaction keeps every version a live snapshot can still see: a read view taken before the
  // delete (a request still reading) would keep the value through it. Views live for a request.
  for (;;) {
    uint64_t oldest = 0;
    if (sequence == 0 || !db_->GetIntProperty("rocksdb.oldest-snapshot-sequence", &oldest) ||
        oldest == 0 || oldest >= sequence) {
      break;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) break;
    cv_.wait_for(lock, std::chrono::milliseconds(10));
  }
  rocksdb::ColumnFamilyMetaData before;
  db_->GetColumnFamilyMetaData(family, &before);
  rocksdb::CompactRangeOptions options;
  // The last level too, so that the tombstone meets the value wherever it is (the memtable is
  // flushed first) and both are dropped.
  options.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  rocksdb::Status s = db_->CompactRange(options, family, nullptr, nullptr);
  if (!s.ok()) {
    spdlog::warn("compacting side family {} after a delete failed (the deleted values stay in "
                 "its table files until its next compaction): {}",
                 family->GetName(), s.ToString());
    return;
  }
  // Done once the files the values were in are gone from the disk, trash included.
  rocksdb::ColumnFamilyMetaData after;
  db_->GetColumnFamilyMetaData(family, &after);
  std::vector<uint64_t> live;
  for (const auto& level : after.levels) {
    for (const auto& file : level.files) live.push_back(file.file_number);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (const auto& level : before.levels) {
    for (const auto& file : level.files) {
      if (std::find(live.begin(), live.end(), file.file_number) != live.end()) continue;
      while (TableFileOnDisk(file.directory, file.relative_filename)) {
        if (std::chrono::steady_clock::now() >= deadline) {
          spdlog::warn("side family {}: table file {} not deleted 30 s after its compaction",
                       family->GetName(), file.relative_filename);
          return;
        }
        // Not waited for at a stop: the file is obsolete, and RocksDB's delete scheduler (behind
        // whatever trash it has queued) or the next open deletes it -- a shutdown is not held
        // up for it.
        std::unique_lock<std::mutex> lock(mu_);
        if (stopping_) return;
        cv_.wait_for(lock, std::chrono::milliseconds(5));
      }
    }
  }
}

}  // namespace ledger
