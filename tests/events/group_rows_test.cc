// GroupRows: the committer's in-memory rows of one group (events/group_rows.h).
#include "events/group_rows.h"

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace ledger {
namespace {

using Found = GroupRows::Found;

std::string Value(const GroupRows& rows, uint32_t family, std::string_view key) {
  std::string_view value;
  switch (rows.Find(family, key, &value)) {
    case Found::kPut:
      return "put:" + std::string(value);
    case Found::kDeleted:
      return "deleted";
    case Found::kAbsent:
      return "absent";
  }
  return "?";
}

std::vector<std::string> Keys(const std::vector<GroupRows::Row>& rows) {
  std::vector<std::string> out;
  for (const auto& row : rows) out.push_back(std::string(row.key) + (row.deleted ? "-" : ""));
  return out;
}

TEST(GroupRowsTest, LatestMutationPerKeyAndFamily) {
  GroupRows rows;
  rows.Put(3, "a", "1");
  rows.Put(3, "a", "2");
  rows.Put(5, "a", "other family");
  rows.Delete(3, "b");
  EXPECT_EQ(Value(rows, 3, "a"), "put:2");
  EXPECT_EQ(Value(rows, 5, "a"), "put:other family");
  EXPECT_EQ(Value(rows, 3, "b"), "deleted");
  EXPECT_EQ(Value(rows, 3, "c"), "absent");
  EXPECT_EQ(Value(rows, 9, "a"), "absent");  // a family never written
  rows.Put(3, "b", "");                       // an empty value is a value, not a deletion
  EXPECT_EQ(Value(rows, 3, "b"), "put:");
  EXPECT_EQ(rows.mutations(), 5u);
  EXPECT_EQ(rows.Families(), (std::vector<uint32_t>{3, 5}));
}

TEST(GroupRowsTest, RangeIsSortedFilteredAndKeepsDeletions) {
  GroupRows rows;
  for (const char* key : {"u/b", "u/a", "v/a", "u/c", "t/z", "u/"}) rows.Put(1, key, key);
  rows.Delete(1, "u/b");
  std::vector<GroupRows::Row> out;
  rows.Range(1, "u/", "u/", &out);
  EXPECT_EQ(Keys(out), (std::vector<std::string>{"u/", "u/a", "u/b-", "u/c"}));
  EXPECT_EQ(out[1].value, "u/a");
  rows.Range(1, "u/", "u/aa", &out);  // from a start key inside the prefix
  EXPECT_EQ(Keys(out), (std::vector<std::string>{"u/b-", "u/c"}));
  rows.Range(1, "u/", "a", &out);  // a start before the prefix is the prefix
  EXPECT_EQ(out.size(), 4u);
  rows.Sorted(1, &out);
  EXPECT_EQ(Keys(out), (std::vector<std::string>{"t/z", "u/", "u/a", "u/b-", "u/c", "v/a"}));
  rows.Range(2, "", "", &out);
  EXPECT_TRUE(out.empty());
}

TEST(GroupRowsTest, RollbackUndoesOnlyWhatFollowedItsSavePoint) {
  GroupRows rows;
  rows.Put(1, "kept", "1");
  rows.Put(1, "rewritten", "before");
  rows.Delete(1, "deleted-before");
  rows.SetSavePoint();
  rows.Put(1, "rewritten", "after");
  rows.Put(1, "new", "x");
  rows.Delete(1, "kept");
  rows.Put(1, "deleted-before", "revived");
  rows.SetSavePoint();  // nested
  rows.Put(1, "inner", "y");
  rows.RollbackToSavePoint();
  EXPECT_EQ(Value(rows, 1, "inner"), "absent");
  EXPECT_EQ(Value(rows, 1, "new"), "put:x");
  rows.RollbackToSavePoint();
  EXPECT_EQ(Value(rows, 1, "kept"), "put:1");
  EXPECT_EQ(Value(rows, 1, "rewritten"), "put:before");
  EXPECT_EQ(Value(rows, 1, "deleted-before"), "deleted");
  EXPECT_EQ(Value(rows, 1, "new"), "absent");
  EXPECT_EQ(rows.mutations(), 3u);
  std::vector<GroupRows::Row> out;
  rows.Sorted(1, &out);
  EXPECT_EQ(Keys(out), (std::vector<std::string>{"deleted-before-", "kept", "rewritten"}));

  rows.SetSavePoint();  // a popped save point keeps its rows
  rows.Put(1, "popped", "z");
  rows.PopSavePoint();
  EXPECT_EQ(Value(rows, 1, "popped"), "put:z");
}

TEST(GroupRowsTest, ValuesOutliveLaterWritesAndClearForgetsEverything) {
  GroupRows rows;
  const std::string big(100 << 10, 'b');  // bigger than an arena block
  rows.Put(1, "big", big);
  rows.Put(1, "small", "in a shared arena block");
  std::string_view first, small;
  ASSERT_EQ(rows.Find(1, "big", &first), Found::kPut);
  ASSERT_EQ(rows.Find(1, "small", &small), Found::kPut);
  for (int i = 0; i < 5000; ++i) rows.Put(1, "k" + std::to_string(i), std::string(50, 'v'));
  // Still readable after many arena blocks and rehashes.
  EXPECT_EQ(first, big);
  EXPECT_EQ(small, "in a shared arena block");
  rows.Clear();
  EXPECT_EQ(Value(rows, 1, "big"), "absent");
  EXPECT_EQ(rows.mutations(), 0u);
  EXPECT_TRUE(rows.Families().empty());
  rows.Put(1, "again", "1");  // reuses its memory
  EXPECT_EQ(Value(rows, 1, "again"), "put:1");
}

// Random puts, deletes, save points and clears against a std::map model. Enough keys that the
// hash table grows several times, with tombstones (keys whose only mutations were rolled back)
// along the probe sequences and the table reused across clears.
TEST(GroupRowsTest, MatchesAModelUnderRandomOperations) {
  std::mt19937 rng(20261204);
  using Model = std::map<std::pair<uint32_t, std::string>, std::optional<std::string>>;
  GroupRows rows;
  Model model;
  std::vector<Model> saved;
  size_t mutations = 0;
  std::vector<size_t> saved_mutations;
  const auto check = [&] {
    ASSERT_EQ(rows.mutations(), mutations);
    for (uint32_t family = 0; family < 3; ++family) {
      std::vector<std::string> expected, expected_k1, expected_from_k15;
      for (const auto& [fk, value] : model) {
        if (fk.first != family) continue;
        expected.push_back(fk.second + (value ? "" : "-"));
        if (fk.second.starts_with("k1")) expected_k1.push_back(expected.back());
        if (fk.second.starts_with("k1") && fk.second >= "k15") {
          expected_from_k15.push_back(expected.back());
        }
        ASSERT_EQ(Value(rows, family, fk.second), value ? "put:" + *value : "deleted");
      }
      std::vector<GroupRows::Row> out;
      rows.Sorted(family, &out);
      EXPECT_EQ(Keys(out), expected);
      rows.Range(family, "k1", "k1", &out);
      EXPECT_EQ(Keys(out), expected_k1);
      rows.Range(family, "k1", "k15", &out);
      EXPECT_EQ(Keys(out), expected_from_k15);
    }
    EXPECT_EQ(Value(rows, 0, "never written"), "absent");
  };
  for (int step = 0; step < 60000; ++step) {
    const uint32_t family = rng() % 3;
    const std::string key = "k" + std::to_string(rng() % (step < 30000 ? 200 : 3000));
    const int op = static_cast<int>(rng() % 1000);
    if (op < 600) {
      const std::string value = "v" + std::to_string(step);
      rows.Put(family, key, value);
      model[{family, key}] = value;
      ++mutations;
    } else if (op < 800) {
      rows.Delete(family, key);
      model[{family, key}] = std::nullopt;
      ++mutations;
    } else if (op < 880) {
      rows.SetSavePoint();
      saved.push_back(model);
      saved_mutations.push_back(mutations);
    } else if (op < 940 && !saved.empty()) {
      rows.RollbackToSavePoint();
      model = saved.back();
      mutations = saved_mutations.back();
      saved.pop_back();
      saved_mutations.pop_back();
    } else if (op < 999 && !saved.empty()) {
      rows.PopSavePoint();
      saved.pop_back();
      saved_mutations.pop_back();
    } else if (op == 999) {
      check();
      rows.Clear();
      model.clear();
      saved.clear();
      saved_mutations.clear();
      mutations = 0;
    }
  }
  check();
}

}  // namespace
}  // namespace ledger
