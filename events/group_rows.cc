#include "events/group_rows.h"

#include <algorithm>
#include <cassert>
#include <cstring>

namespace ledger {

void GroupRows::Put(uint32_t family, std::string_view key, std::string_view value) {
  Record(family, key, value, /*deleted=*/false);
}

void GroupRows::Delete(uint32_t family, std::string_view key) {
  Record(family, key, {}, /*deleted=*/true);
}

GroupRows::Found GroupRows::Find(uint32_t family, std::string_view key,
                                 std::string_view* value) const {
  if (family >= families_.size()) return Found::kAbsent;
  const Index& index = families_[family];
  auto it = index.find(key);
  if (it == index.end()) return Found::kAbsent;
  const Mutation& m = log_[it->second];
  if (m.deleted) return Found::kDeleted;
  *value = m.value;
  return Found::kPut;
}

void GroupRows::Range(uint32_t family, std::string_view prefix, std::string_view start,
                      std::vector<Row>* out) const {
  out->clear();
  if (family >= families_.size()) return;
  const std::string_view from = std::max(prefix, start);
  for (const auto& [key, latest] : families_[family]) {
    if (!key.starts_with(prefix) || key < from) continue;
    const Mutation& m = log_[latest];
    out->push_back(Row{m.key, m.value, m.deleted});
  }
  std::sort(out->begin(), out->end(), [](const Row& a, const Row& b) { return a.key < b.key; });
}

std::vector<uint32_t> GroupRows::Families() const {
  std::vector<uint32_t> out;
  for (uint32_t f = 0; f < families_.size(); ++f) {
    if (!families_[f].empty()) out.push_back(f);
  }
  return out;
}

void GroupRows::RollbackToSavePoint() {
  assert(!save_points_.empty());
  const size_t keep = save_points_.back();
  save_points_.pop_back();
  while (log_.size() > keep) {
    const Mutation& m = log_.back();
    Index& index = families_[m.family];
    if (m.previous == kNone) {
      index.erase(m.key);
    } else {
      index.find(m.key)->second = m.previous;
    }
    log_.pop_back();
  }
  // The arena keeps the undone bytes until Clear(): a rollback is rare (a rejected command).
}

void GroupRows::Clear() {
  log_.clear();
  for (Index& index : families_) index.clear();
  save_points_.clear();
  blocks_used_ = 0;
  block_offset_ = kBlockBytes;
  big_.clear();
  // One huge group must not pin its arena for the life of the process.
  if (blocks_.size() > kBlocksKept) blocks_.resize(kBlocksKept);
}

void GroupRows::Record(uint32_t family, std::string_view key, std::string_view value,
                       bool deleted) {
  Index& index = FamilyIndex(family);
  const auto next = static_cast<uint32_t>(log_.size());
  auto it = index.find(key);
  uint32_t previous = kNone;
  std::string_view stored_key;
  if (it == index.end()) {
    stored_key = Copy(key);
    index.emplace(stored_key, next);
  } else {
    previous = it->second;
    stored_key = it->first;  // the copy made by the key's first mutation
    it->second = next;
  }
  log_.push_back(Mutation{family, previous, stored_key, deleted ? std::string_view() : Copy(value),
                          deleted});
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

GroupRows::Index& GroupRows::FamilyIndex(uint32_t family) {
  if (family >= families_.size()) families_.resize(family + 1);
  return families_[family];
}

}  // namespace ledger
