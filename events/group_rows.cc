#include "events/group_rows.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <functional>

namespace ledger {

uint64_t GroupRows::HashOf(uint32_t family, std::string_view key) {
  // The family is mixed in so that one key in two families takes two probe sequences.
  return std::hash<std::string_view>{}(key) ^ ((uint64_t{family} + 1) * 0x9E3779B97F4A7C15ULL);
}

void GroupRows::Put(uint32_t family, std::string_view key, std::string_view value) {
  Record(family, key, value, /*deleted=*/false);
}

void GroupRows::Delete(uint32_t family, std::string_view key) {
  Record(family, key, {}, /*deleted=*/true);
}

size_t GroupRows::FindSlot(uint32_t family, std::string_view key, uint64_t hash,
                           size_t* insert) const {
  if (insert != nullptr) *insert = kNoSlot;
  if (slots_.empty()) return kNoSlot;
  const size_t mask = slots_.size() - 1;
  // At most half the slots are in use, so the probe reaches an empty one.
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& slot = slots_[i];
    if (slot.generation != generation_) {
      if (insert != nullptr && *insert == kNoSlot) *insert = i;
      return kNoSlot;
    }
    if (slot.latest == kNone) {
      if (insert != nullptr && *insert == kNoSlot) *insert = i;  // reuse the first tombstone
      continue;
    }
    if (slot.hash != hash) continue;
    const Mutation& m = log_[slot.latest];
    if (m.family == family && m.key == key) return i;
  }
}

GroupRows::Found GroupRows::Find(uint32_t family, std::string_view key, uint64_t hash,
                                 std::string_view* value) const {
  const size_t i = FindSlot(family, key, hash, nullptr);
  if (i == kNoSlot) return Found::kAbsent;
  const Mutation& m = log_[slots_[i].latest];
  if (m.deleted) return Found::kDeleted;
  *value = m.value;
  return Found::kPut;
}

void GroupRows::Range(uint32_t family, std::string_view prefix, std::string_view start,
                      std::vector<Row>* out) const {
  out->clear();
  if (family >= family_keys_.size()) return;
  const std::string_view from = std::max(prefix, start);
  for (uint32_t first : family_keys_[family]) {
    const Mutation& key = log_[first];
    if (!key.key.starts_with(prefix) || key.key < from) continue;
    const Mutation& m = log_[slots_[FindSlot(family, key.key, key.hash, nullptr)].latest];
    out->push_back(Row{m.key, m.value, m.deleted});
  }
  std::sort(out->begin(), out->end(), [](const Row& a, const Row& b) { return a.key < b.key; });
}

std::vector<uint32_t> GroupRows::Families() const {
  std::vector<uint32_t> out;
  for (uint32_t f = 0; f < family_keys_.size(); ++f) {
    if (!family_keys_[f].empty()) out.push_back(f);
  }
  return out;
}

void GroupRows::RollbackToSavePoint() {
  assert(!save_points_.empty());
  const size_t keep = save_points_.back();
  save_points_.pop_back();
  while (log_.size() > keep) {
    const Mutation& m = log_.back();
    const size_t i = FindSlot(m.family, m.key, m.hash, nullptr);
    assert(i != kNoSlot && slots_[i].latest == log_.size() - 1);
    slots_[i].latest = m.previous;  // kNone leaves a tombstone
    if (m.previous == kNone) {
      assert(family_keys_[m.family].back() == log_.size() - 1);
      family_keys_[m.family].pop_back();
    } else {
      log_[m.previous].superseded = false;
    }
    log_.pop_back();
  }
  // The arena keeps the undone bytes until Clear(): a rollback is rare (a rejected command).
}

void GroupRows::Clear() {
  log_.clear();
  for (std::vector<uint32_t>& keys : family_keys_) keys.clear();
  save_points_.clear();
  slots_used_ = 0;
  if (slots_.size() > kSlotsKept) {
    slots_ = std::vector<Slot>();  // one huge group must not pin its table for good
  } else if (++generation_ == 0) {  // wrapped: no slot may still carry the new generation
    std::fill(slots_.begin(), slots_.end(), Slot());
    generation_ = 1;
  }
  blocks_used_ = 0;
  block_offset_ = kBlockBytes;
  big_.clear();
  if (blocks_.size() > kBlocksKept) blocks_.resize(kBlocksKept);
}

void GroupRows::Reserve() {
  if ((slots_used_ + 1) * 2 <= slots_.size()) return;
  // Grow (or, when tombstones fill it, just rebuild) to at most a third full: the next rebuild
  // is then a sixth of the table's inserts away.
  size_t keys = 0;
  for (const std::vector<uint32_t>& first : family_keys_) keys += first.size();
  size_t size = std::max(kSlotsMin, slots_.size());
  while ((keys + 1) * 3 > size) size *= 2;
  slots_.assign(size, Slot());
  generation_ = 1;
  slots_used_ = 0;
  const size_t mask = size - 1;
  for (uint32_t index = 0; index < log_.size(); ++index) {
    const Mutation& m = log_[index];
    if (m.superseded) continue;
    size_t i = m.hash & mask;
    while (slots_[i].generation == generation_) i = (i + 1) & mask;
    slots_[i] = Slot{m.hash, generation_, index};
    ++slots_used_;
  }
}

void GroupRows::Record(uint32_t family, std::string_view key, std::string_view value,
                       bool deleted) {
  Reserve();
  const uint64_t hash = HashOf(family, key);
  const auto next = static_cast<uint32_t>(log_.size());
  size_t insert = kNoSlot;
  const size_t i = FindSlot(family, key, hash, &insert);
  uint32_t previous = kNone;
  std::string_view stored_key;
  if (i == kNoSlot) {
    stored_key = Copy(key);
    Slot& slot = slots_[insert];
    if (slot.generation != generation_) ++slots_used_;  // not a reused tombstone
    slot = Slot{hash, generation_, next};
    if (family >= family_keys_.size()) family_keys_.resize(family + 1);
    family_keys_[family].push_back(next);
  } else {
    previous = slots_[i].latest;
    stored_key = log_[previous].key;  // the copy made by the key's first mutation
    log_[previous].superseded = true;
    slots_[i].latest = next;
  }
  log_.push_back(Mutation{hash, family, previous, stored_key,
                          deleted ? std::string_view() : Copy(value), deleted,
                          /*superseded=*/false});
}

std::string_view GroupRows::Copy(std::string_view bytes) {
  if (bytes.empty()) return {};
  char* dest;
  if (bytes.size() > kBlockBytes / 4) {
    big_.push_back(std::make_unique<char[]>(bytes.size()));
    dest = big_.back().get();
  } else {
    if (block_offset_ + bytes.size() > kBlockBytes) {
      if (blocks_used_ == blocks_.size()) blocks_.push_back(std::make_unique<char[]>(kBlockBytes));
      ++blocks_used_;
      block_offset_ = 0;
    }
    dest = blocks_[blocks_used_ - 1].get() + block_offset_;
    block_offset_ += bytes.size();
  }
  std::memcpy(dest, bytes.data(), bytes.size());
  return std::string_view(dest, bytes.size());
}

}  // namespace ledger
