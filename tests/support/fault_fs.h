// FaultFs: a RocksDB file system that models a power loss and injects I/O errors.
//
// PLATFORM.md: a kill -9 cannot reveal a missing fsync, because the OS keeps the page cache. This
// wrapper remembers, per file, how much of it a power loss would keep, and can apply that to the
// real files so that the next open sees what a machine would see after the power came back.
//
// What survives a power loss, as modelled here (pessimistic, but every outcome is one a POSIX file
// system on a real disk may produce):
//   - File data: only the bytes covered by the last successful Sync()/Fsync() of that file. Data
//     appended after it is dropped (DropMode::kDropAll) or a random prefix of it survives
//     (DropMode::kKeepRandomPrefix: a torn write), or a random prefix survives and the rest of the
//     file reads back as zeros (DropMode::kZeroFillTail: its size reached the disk and its data
//     did not, as ext4 shows unwritten space). RangeSync() (sync_file_range) is NOT counted as
//     durable: it only starts write-back and persists no metadata, see sync_file_range(2).
//   - Directory entries: a file created (NewWritableFile of a new name) or renamed into a directory
//     after that directory's last successful Fsync() disappears; the rename is undone (the source
//     name comes back and the destination gets back its previous content, which FaultFs saved at
//     rename time when it was at most kRenameSaveBytesMax).
// Not modelled (treated as durable at once): deletions (a deleted file never comes back);
// truncations; renames over a destination larger than kRenameSaveBytesMax; files written through
// NewRandomRWFile or LinkFile; an info LOG opened by NewLogger (the default one writes past every
// wrapper; a writable Ledger opens its LOG through NewWritableFile, so that one is modelled and
// fails like any file); metadata other than the entry and the size. Files that existed before
// this FaultFs first saw them are durable. ReuseWritableFile (WAL recycling,
// off in the ledger) answers NotSupported so that turning it on cannot go unnoticed.
//
// Using it for a power-loss test (the order matters; it is the RocksDB FaultInjectionTestFS one):
//   1. CutPower() (or CutPowerAfterAppends(n)): from now on every mutating call (append, sync,
//      create, rename, delete, ...) fails with IOError and changes nothing. Writes in flight
//      fail; the ledger degrades.
//   2. Destroy the Ledger. Whatever RocksDB tries to write or sync while closing is refused, so
//      closing cannot make anything durable that the power loss would have lost.
//   3. DropUnsyncedData(): apply the model to the files on disk (every file must be closed).
//   4. Reopen on the real file system (LedgerOptions.env = nullptr) and check.
//
// Error injection without a power loss: FailWritesAfter(n) and SetFailSyncs(true) make appends or
// syncs fail with IOError (nothing is written / nothing is synced), for the "an I/O failure fails
// the group and degrades the store" path; SetLoseLogAppends(true) makes the log's appends fail
// silently, for negative controls. A failed sync names the file or directory by the path RocksDB
// opened it with, as the POSIX file system's does ("While fsync: /data/000012.log: ...").
//
// Thread safety: every method may be called from any thread; RocksDB calls the file system from
// its writer and background threads concurrently.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

namespace ledger::testing {

class FaultFs final : public rocksdb::FileSystemWrapper {
 public:
  // A rename over a destination at most this big can be undone by a power loss.
  static constexpr uint64_t kRenameSaveBytesMax = 1 << 20;

  enum class DropMode {
    kDropAll,           // every unsynced byte is lost
    kKeepRandomPrefix,  // a random prefix of each file's unsynced tail survives (torn writes)
    // A random prefix of each file's unsynced tail survives and the rest of it is zero bytes (the
    // file keeps its size): at least kZeroTailBytesMin of them, or the whole tail when it is
    // shorter. Why the least: a torn WAL record ending in fewer zero bytes cannot be told from a
    // damaged one (events/wal_log.h RepairTornWalTail), and the ledger refuses such a store.
    kZeroFillTail,
  };
  static constexpr uint64_t kZeroTailBytesMin = 32;

  struct DropReport {
    size_t files_truncated = 0;
    size_t files_zero_filled = 0;  // kZeroFillTail
    uint64_t bytes_dropped = 0;
    size_t files_deleted = 0;  // created, but their directory was never synced
    size_t renames_undone = 0;
    std::string ToString() const;
  };

  // Wraps rocksdb::FileSystem::Default().
  FaultFs();

  const char* Name() const override { return "LedgerFaultFs"; }

  // --- Power loss -------------------------------------------------------------------------------
  void CutPower() { powered_.store(false); }
  // Cuts the power right after the `appends`-th successful append from now (>= 1): that append
  // reached the OS, its sync never happens. Puts the cut where unsynced data exists, which a
  // timer rarely does (a group-commit writer spends its time inside fsync).
  void CutPowerAfterAppends(int64_t appends) { appends_until_power_cut_.store(appends); }
  bool powered() const { return powered_.load(); }
  // Requires CutPower() and every file closed. Rewrites the files on disk to what survived the
  // power loss and forgets all tracking (what is left is durable). The power stays off: use a new
  // FaultFs (or the real file system) for the next open. `seed` drives the random prefixes.
  rocksdb::IOStatus DropUnsyncedData(DropMode mode, uint64_t seed, DropReport* report);

  // --- Error injection --------------------------------------------------------------------------
  // After `appends` more successful appends, every append fails (nothing written). -1 = never.
  void FailWritesAfter(int64_t appends) { appends_until_failure_.store(appends); }
  // While true, every file and directory sync fails (nothing synced).
  void SetFailSyncs(bool fail) { fail_syncs_.store(fail); }
  // While true, every append to a write-ahead log (*.log) answers OK and writes nothing: what a
  // ledger that acknowledged a group whose write failed leaves on disk (for negative controls).
  void SetLoseLogAppends(bool lose) { lose_log_appends_.store(lose); }
  bool losing_log_appends() const { return lose_log_appends_.load(); }

  // --- Pausing ----------------------------------------------------------------------------------
  // While held, every file and directory sync waits, before it syncs anything, until
  // ReleaseSyncs(): a test can look at a store whose latest writes are not durable yet.
  void HoldSyncs();
  void ReleaseSyncs();
  // Blocks until at least one sync is waiting on the hold.
  void WaitUntilASyncIsHeld();
  // The same for appends (of any file): a test can hold the write of a group's WAL record while
  // the ledger decides the next groups.
  void HoldAppends();
  void ReleaseAppends();
  void WaitUntilAnAppendIsHeld();

  // --- Observation ------------------------------------------------------------------------------
  uint64_t appends() const { return appends_.load(); }  // successful appends
  uint64_t syncs() const { return syncs_.load(); }      // successful file syncs
  uint64_t UnsyncedBytes() const;                       // over all tracked files

  // --- rocksdb::FileSystem ----------------------------------------------------------------------
  rocksdb::IOStatus NewWritableFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& fname,
                                       const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& fname, const std::string& old_fname,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& fname, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewDirectory(const std::string& name, const rocksdb::IOOptions& options,
                                 std::unique_ptr<rocksdb::FSDirectory>* result,
                                 rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& fname, const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& fname, size_t size,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& source, const std::string& target,
                               const rocksdb::IOOptions& options,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& source, const std::string& target,
                             const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus CreateDirIfMissing(const std::string& dirname,
                                       const rocksdb::IOOptions& options,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteDir(const std::string& dirname, const rocksdb::IOOptions& options,
                              rocksdb::IODebugContext* dbg) override;

  // --- Called by FaultFs's file and directory wrappers ------------------------------------------
  struct FileState {
    uint64_t size = 0;         // bytes written through the wrapper (or found at open)
    uint64_t synced_size = 0;  // bytes a power loss keeps
  };
  rocksdb::IOStatus BeforeAppend();
  void AfterAppend(FileState* state, uint64_t bytes);
  void AfterPositionedAppend(FileState* state, uint64_t end_offset);
  void CountAppend();
  rocksdb::IOStatus BeforeSync(const std::string& name);  // `name`: the file or directory
  uint64_t SizeOf(FileState* state);
  void AfterSync(FileState* state, uint64_t synced_size);
  void AfterTruncate(FileState* state, uint64_t size);
  // A directory sync covers the changes made before it was called: DirectoryChangesSoFar() is
  // taken then, and AfterDirectorySync() makes durable only the changes below it (a file created
  // while the sync is under way, or held by HoldSyncs(), still needs a sync of its own).
  uint64_t DirectoryChangesSoFar() const;
  void AfterDirectorySync(const std::string& dirname, uint64_t covered);
  rocksdb::IOStatus PowerOffError() const;

 private:
  // A directory change not yet made durable by a sync of its directory.
  struct PendingEntry {
    std::string name;                             // the created file, or the rename destination
    std::optional<std::string> source;            // set for a rename
    std::optional<std::string> previous_content;  // the destination's content before a rename
    uint64_t number = 0;                          // order of the change (directory_changes_)
  };
  // Called with mu_ held.
  void AddPendingEntry(PendingEntry entry);

  // Starts (created) or continues tracking `fname`; an untracked file's `size` bytes are durable.
  std::shared_ptr<FileState> Track(const std::string& fname, bool created, uint64_t size);
  rocksdb::IOStatus UndoPendingEntry(const PendingEntry& entry, DropReport* report);

  std::atomic<bool> powered_{true};
  std::atomic<bool> fail_syncs_{false};
  std::atomic<bool> lose_log_appends_{false};
  // HoldSyncs(), HoldAppends().
  struct Hold {
    bool holding = false;  // guarded by hold_mu_
    int held = 0;          // calls waiting; guarded by hold_mu_
  };
  void SetHolding(Hold* hold, bool holding);
  void WaitUntilHeld(Hold* hold);
  void WaitWhileHeld(Hold* hold);
  std::mutex hold_mu_;
  std::condition_variable hold_cv_;
  Hold sync_hold_, append_hold_;
  std::atomic<int64_t> appends_until_failure_{-1};
  std::atomic<int64_t> appends_until_power_cut_{-1};
  std::atomic<uint64_t> appends_{0};
  std::atomic<uint64_t> syncs_{0};

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FileState>> files_;        // by normalized path
  std::map<std::string, std::vector<PendingEntry>> pending_dirs_;  // by normalized directory
  uint64_t directory_changes_ = 0;  // PendingEntry numbers handed out
};

// A FaultFs and the rocksdb::Env over it (for LedgerOptions.env). Must outlive the Ledger.
class FaultEnv {
 public:
  FaultEnv();
  FaultFs* fs() const { return fs_.get(); }
  rocksdb::Env* env() const { return env_.get(); }

 private:
  std::shared_ptr<FaultFs> fs_;
  std::unique_ptr<rocksdb::Env> env_;
};

}  // namespace ledger::testing
