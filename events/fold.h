// The fold interface: how projections turn events into rows, and how deciders read state.
//
// A Fold is pure. Apply() reads the current rows through a StateReader and writes row mutations
// through a RowWriter; it performs no I/O of its own and never reads a clock (time comes from
// event.time_us). The writer runs every registered fold inline, inside the same WriteBatch as the
// event, so projections never disagree with the log, and `ledgerctl replay` gives identical rows.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "events/event.h"
#include "events/status.h"

namespace ledger {

// Read access to projection rows. During a group commit it sees the rows of the committed store
// plus every mutation made earlier in the same group.
class StateReader {
 public:
  virtual ~StateReader() = default;
  // NotFound when the row is absent.
  virtual Status Get(std::string_view family, std::string_view key, std::string* value) const = 0;
  // Calls `fn(key, value)` for every row whose key starts with `prefix`, in key order, until it
  // returns false.
  virtual Status Scan(std::string_view family, std::string_view prefix,
                      const std::function<bool(std::string_view, std::string_view)>& fn) const = 0;
  // The same, from the first row whose key is at or after `start` (cursor pagination). This
  // default walks the prefix from its start; stores with a seek override it.
  virtual Status ScanFrom(std::string_view family, std::string_view prefix, std::string_view start,
                          const std::function<bool(std::string_view, std::string_view)>& fn) const {
    return Scan(family, prefix, [&](std::string_view key, std::string_view value) {
      return key < start || fn(key, value);
    });
  }
  // Which of `keys` exist: (*found)[i] for keys[i]. One call for many keys is cheaper than a Get
  // each where the store can batch the lookups (the writer's group state does).
  virtual Status Contains(std::string_view family, const std::vector<std::string>& keys,
                          std::vector<bool>* found) const {
    found->assign(keys.size(), false);
    std::string value;
    for (size_t i = 0; i < keys.size(); ++i) {
      Status s = Get(family, keys[i], &value);
      if (!s.ok() && !s.IsNotFound()) return s;
      (*found)[i] = s.ok();
    }
    return Status::OK();
  }
};

class RowWriter {
 public:
  virtual ~RowWriter() = default;
  virtual Status Put(std::string_view family, std::string_view key, std::string_view value) = 0;
  virtual Status Delete(std::string_view family, std::string_view key) = 0;
};

class Fold {
 public:
  virtual ~Fold() = default;
  // The fold's name; also the name of its column family. Lowercase, stable.
  virtual std::string_view Name() const = 0;
  // The version of Apply's logic, from 1. Raise it with any change that makes Apply write other
  // rows for the same log (a key's layout, a row added, kept or dropped, a value's encoding):
  // rows written by the previous logic stay in the store otherwise (a usage counter under its old
  // key, a row the new logic never writes), and the live rows differ from `ledgerctl replay`'s.
  // The store records the version next to the fold's checkpoint; at open, a fold whose recorded
  // version differs (or is missing) has its rows deleted and is rebuilt from position 1.
  virtual uint32_t Version() const = 0;
  // Applies one event. Events of types the fold does not know are ignored (return OK).
  // An error here means the event is malformed for this fold; the command that produced it fails.
  virtual Status Apply(const Event& event, const StateReader& state, RowWriter* rows) const = 0;
};

}  // namespace ledger
