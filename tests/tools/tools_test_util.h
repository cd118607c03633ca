// Helpers for the ledgerctl tests: a marked-event log, raw RocksDB edits (tampering: also used
// by the events and http tests), byte flips on disk and running the ledgerctl binary.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <rocksdb/db.h>
#include <rocksdb/sst_file_reader.h>

#include "events/coding.h"
#include "events/event.h"
#include "events/ledger.h"

namespace ledger::testing {

// The JSON data of the event at `position` in a marked log; the marker is unique in the store.
inline std::string MarkerFor(uint64_t position) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "marker-%06llu-end", static_cast<unsigned long long>(position));
  return buf;
}

// Appends `count` events per command, each with data {"m":"<MarkerFor(position)>"}.
class MarkedCommand : public Command {
 public:
  MarkedCommand(std::string subject, size_t count) : subject_(std::move(subject)), count_(count) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    for (size_t i = 0; i < count_; ++i) {
      decision->events.push_back(NewEvent{"test.marked.v1", subject_,
                                          "{\"m\":\"" + MarkerFor(context.head.value() + i + 1) +
                                              "\"}"});
    }
    return Status::OK();
  }

 private:
  std::string subject_;
  size_t count_;
};

// Writes `commands` commands of `per_command` marked events (subjects alternate alice/bob).
inline void WriteMarkedLog(Ledger* ledger, size_t commands, size_t per_command) {
  for (size_t c = 0; c < commands; ++c) {
    MarkedCommand command(c % 2 == 0 ? "alice" : "bob", per_command);
    CommandResult r = ledger->Submit(&command);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }
}

inline std::unique_ptr<Ledger> OpenTestLedger(const std::string& path,
                                              std::vector<const Fold*> folds = {}) {
  LedgerOptions options;
  options.path = path;
  options.folds = std::move(folds);
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ledger;
}

// Opens the store with plain RocksDB (every column family) and runs `edit` on it: for tampering
// that the Ledger API cannot express.
inline void EditRaw(const std::string& path,
                    const std::function<void(rocksdb::DB*, const std::vector<std::string>&,
                                             const std::vector<rocksdb::ColumnFamilyHandle*>&)>&
                        edit) {
  std::vector<std::string> names;
  ASSERT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &names).ok());
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  for (const std::string& name : names) descriptors.emplace_back(name, rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(), path, descriptors, &handles, &db);
  ASSERT_TRUE(s.ok()) << s.ToString();
  edit(db, names, handles);
  for (auto* handle : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(handle).ok());
  ASSERT_TRUE(db->Close().ok());
  delete db;
}

inline rocksdb::ColumnFamilyHandle* FindFamily(
    const std::vector<std::string>& names,
    const std::vector<rocksdb::ColumnFamilyHandle*>& handles, const std::string& name) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == name) return handles[i];
  }
  ADD_FAILURE() << "no column family " << name;
  return nullptr;
}

// Rewrites the stored event at `position` through RocksDB, so its block checksums hold: `edit`
// changes the decoded event; with `reseal` its hash is recomputed (it verifies on its own, and
// only the next event's link shows it), without it the old hash stays (it fails its own check,
// as a flipped byte does). The store must be closed.
inline void RewriteStoredEvent(const std::string& path, uint64_t position, bool reseal,
                               const std::function<void(Event*)>& edit) {
  EditRaw(path, [&](rocksdb::DB* db, const auto& names, const auto& handles) {
    rocksdb::ColumnFamilyHandle* events = FindFamily(names, handles, "events");
    std::string stored;
    ASSERT_TRUE(
        db->Get(rocksdb::ReadOptions(), events, EncodePositionKey(position), &stored).ok());
    Event event;
    ASSERT_TRUE(DecodeEvent(stored, &event).ok());
    edit(&event);
    if (reseal) SealEvent(&event);
    EncodeEvent(event, &stored);
    ASSERT_TRUE(
        db->Put(rocksdb::WriteOptions(), events, EncodePositionKey(position), stored).ok());
  });
}

inline std::string ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Finds `needle` in exactly one file of `dir` whose name ends with `extension` and flips one bit
// of its byte at `needle_offset`. Returns the file name (empty when not found exactly once).
inline std::string FlipByteInFile(const std::string& dir, const std::string& extension,
                                  const std::string& needle, size_t needle_offset) {
  std::string found_file;
  size_t found_at = 0;
  int hits = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != extension) continue;
    std::string bytes = ReadFileBytes(entry.path());
    for (size_t at = bytes.find(needle); at != std::string::npos;
         at = bytes.find(needle, at + 1)) {
      ++hits;
      found_file = entry.path().string();
      found_at = at;
    }
  }
  if (hits != 1) {
    ADD_FAILURE() << needle << " found " << hits << " times in " << extension << " files";
    return {};
  }
  std::fstream file(found_file, std::ios::binary | std::ios::in | std::ios::out);
  file.seekg(static_cast<std::streamoff>(found_at + needle_offset));
  char c = 0;
  file.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  file.seekp(static_cast<std::streamoff>(found_at + needle_offset));
  file.write(&c, 1);
  file.close();
  return std::filesystem::path(found_file).filename().string();
}

// Flips one bit of the byte at `offset` of the one table file of column family `family` in `dir`
// (offset 0 is in the file's first data block). Returns the file name (empty when the family has
// no table file or more than one).
inline std::string FlipByteInFamilyTable(const std::string& dir, const std::string& family,
                                         size_t offset) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".sst") continue;
    rocksdb::SstFileReader reader{rocksdb::Options()};
    if (!reader.Open(entry.path().string()).ok()) continue;
    if (reader.GetTableProperties()->column_family_name == family) files.push_back(entry.path());
  }
  if (files.size() != 1) {
    ADD_FAILURE() << family << " has " << files.size() << " table files";
    return {};
  }
  std::fstream file(files[0], std::ios::binary | std::ios::in | std::ios::out);
  file.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  file.read(&c, 1);
  c = static_cast<char>(c ^ 0x01);
  file.seekp(static_cast<std::streamoff>(offset));
  file.write(&c, 1);
  file.close();
  return files[0].filename().string();
}

struct ProcessResult {
  int exit_code = -1;
  std::string out;  // stdout
};

// Runs the shell command `command` and returns its exit code and stdout.
inline ProcessResult RunShellCommand(const std::string& command) {
  ProcessResult result;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) result.out.append(buf, n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// Runs build/bin/ledgerctl with `args` (already shell-quoted), stderr discarded unless
// `keep_stderr`, and returns its exit code and stdout.
inline ProcessResult RunLedgerctl(const std::string& args, bool keep_stderr = false) {
  return RunShellCommand(std::string(LEDGER_BINARY_DIR "/bin/ledgerctl ") + args +
                         (keep_stderr ? " 2>&1" : " 2>/dev/null"));
}

// The same in the directory `cwd`, with `env` (shell-quoted NAME=value words, e.g.
// "LEDGER_DATA_DIR=") set for it alone.
inline ProcessResult RunLedgerctlIn(const std::string& cwd, const std::string& env,
                                    const std::string& args, bool keep_stderr = false) {
  return RunShellCommand("cd '" + cwd + "' && env " + env + " " LEDGER_BINARY_DIR
                         "/bin/ledgerctl " + args + (keep_stderr ? " 2>&1" : " 2>/dev/null"));
}

}  // namespace ledger::testing
