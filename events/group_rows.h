// The rows a commit group has written so far, before they reach RocksDB: what the group's later
// commands and folds read on top of the store, and what the group finally writes as one batch.
//
// Why not RocksDB's WriteBatchWithIndex: its index is a skiplist ordered by key, so every Put
// (with overwrite_key) and every lookup is a search from the top with a memcmp per step. A
// 1000-item usage batch puts and looks up a dedupe row per item in a group of thousands of rows;
// those searches were a third of the committer thread's time. Here point lookups and writes go
// through one open-addressing hash table, and order is paid for once: the group's final rows are
// sorted when the batch is built (which the memtable inserts want anyway), and a prefix scan sorts
// only the rows under its prefix.
//
// Why not std::unordered_map: a node allocated per new key and freed by every Clear(), and a
// pointer chased per probe — the map's own lookups, mallocs and frees were ≈ 15 % of the committer
// thread at 1000-item usage batches. The table here is a flat array of {hash, generation, latest
// mutation} slots (linear probing, at most half full) that outlives the group: Clear() just starts
// a new generation, so a slot from an older one reads as empty and a small group (a consume) does
// not pay for the table a large one grew.
//
// Families are small integers (the column family id). Keys and values are copied into an arena
// that lives as long as the object (or until Clear()); views handed out stay valid until then.
// Save points nest: RollbackToSavePoint() undoes every Put and Delete since the matching
// SetSavePoint() (one command of a group failing undoes only its own rows).
//
// Not thread-safe: the committer thread fills it. Once filled it is only read (const methods),
// and then several threads may read it at once (the write thread and the committer deciding the
// next group).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

namespace ledger {

class GroupRows {
 public:
  struct Row {
    std::string_view key;
    std::string_view value;  // empty for a deletion
    bool deleted = false;
  };
  enum class Found { kAbsent, kPut, kDeleted };  // kAbsent: not written here, ask the store

  GroupRows() = default;
  GroupRows(const GroupRows&) = delete;
  GroupRows& operator=(const GroupRows&) = delete;

  void Put(uint32_t family, std::string_view key, std::string_view value);
  void Delete(uint32_t family, std::string_view key);
  // The latest mutation of `key` in `family`; *value is set for kPut.
  Found Find(uint32_t family, std::string_view key, std::string_view* value) const {
    return Find(family, key, HashOf(family, key), value);
  }
  // The same with `hash` = HashOf(family, key): one hash for probing several groups' rows.
  Found Find(uint32_t family, std::string_view key, uint64_t hash, std::string_view* value) const;
  static uint64_t HashOf(uint32_t family, std::string_view key);

  // The latest mutation of every key of `family` that starts with `prefix` and is >= `start`, in
  // key order (deletions included, so a scan can hide the store's row). Cost: one probe per key
  // of the family in this group, then a sort of the matches.
  void Range(uint32_t family, std::string_view prefix, std::string_view start,
             std::vector<Row>* out) const;
  // The latest mutation of every key of `family`, in key order.
  void Sorted(uint32_t family, std::vector<Row>* out) const { Range(family, {}, {}, out); }
  // Families with at least one row, ascending.
  std::vector<uint32_t> Families() const;

  void SetSavePoint() { save_points_.push_back(log_.size()); }
  void RollbackToSavePoint();  // requires a save point
  void PopSavePoint() { save_points_.pop_back(); }

  // Mutations recorded (a key written twice counts twice).
  size_t mutations() const { return log_.size(); }
  // Forgets everything; keeps allocated memory (up to kBlocksKept arena blocks) for the next
  // group.
  void Clear();

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  struct Mutation {
    uint64_t hash;  // HashOf(family, key)
    uint32_t family;
    uint32_t previous;  // index of the key's previous mutation in log_, or kNone
    std::string_view key;
    std::string_view value;
    bool deleted;
    bool superseded;  // a later mutation of the key exists
  };
  // A slot is in use when its generation is the table's; then `latest` is the index in log_ of
  // its key's latest mutation, or kNone for a key whose only mutations were rolled back (a
  // tombstone: probes go on past it).
  struct Slot {
    uint64_t hash = 0;
    uint32_t generation = 0;
    uint32_t latest = kNone;
  };
  static constexpr size_t kSlotsMin = 256;  // a rebuilt table is at most a third full
  static constexpr size_t kSlotsKept = size_t{1} << 17;  // by Clear(): 2 MiB, a large group's

  void Record(uint32_t family, std::string_view key, std::string_view value, bool deleted);
  std::string_view Copy(std::string_view bytes);
  // The slot holding (family, key), or kNoSlot; `*insert` (if given) is where a new key goes.
  static constexpr size_t kNoSlot = SIZE_MAX;
  size_t FindSlot(uint32_t family, std::string_view key, uint64_t hash, size_t* insert) const;
  // Room for one more slot in use: grows (and drops tombstones) past half full.
  void Reserve();

  std::vector<Mutation> log_;
  std::vector<Slot> slots_;       // size a power of two, or 0 before the first write
  uint32_t generation_ = 1;       // slots of other generations are empty
  size_t slots_used_ = 0;         // of this generation, tombstones included
  // By family id: the index in log_ of each key's first mutation in this group, in log order
  // (a rollback removes the newest ones, so it pops from the back).
  std::vector<std::vector<uint32_t>> family_keys_;
  std::vector<size_t> save_points_;
  // Arena: blocks of kBlockBytes (bigger values get a block of their own).
  static constexpr size_t kBlockBytes = 64 << 10;
  static constexpr size_t kBlocksKept = 64;  // by Clear(): 4 MiB, what a large group uses
  std::vector<std::unique_ptr<char[]>> blocks_;
  size_t blocks_used_ = 0;  // blocks_[0 .. blocks_used_) hold data; the last one is current
  size_t block_offset_ = kBlockBytes;
  std::vector<std::unique_ptr<char[]>> big_;
};

}  // namespace ledger
