// In-memory projection rows for fold and decider unit tests: a StateReader and RowWriter over
// ordered maps, so that tests can run Decide() and Fold::Apply() without a Ledger.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "events/fold.h"
#include "events/ledger.h"

namespace ledger::testing {

class MemoryState final : public StateReader, public RowWriter {
 public:
  using Rows = std::map<std::string, std::map<std::string, std::string>>;  // family -> key -> value

  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    auto f = rows_.find(std::string(family));
    if (f == rows_.end()) return Status::NotFound("no row");
    auto r = f->second.find(std::string(key));
    if (r == f->second.end()) return Status::NotFound("no row");
    *value = r->second;
    return Status::OK();
  }
  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    auto f = rows_.find(std::string(family));
    if (f == rows_.end()) return Status::OK();
    for (auto it = f->second.lower_bound(std::string(prefix)); it != f->second.end(); ++it) {
      if (std::string_view(it->first).substr(0, prefix.size()) != prefix) break;
      if (!fn(it->first, it->second)) break;
    }
    return Status::OK();
  }
  Status Put(std::string_view family, std::string_view key, std::string_view value) override {
    rows_[std::string(family)][std::string(key)] = std::string(value);
    return Status::OK();
  }
  Status Delete(std::string_view family, std::string_view key) override {
    auto f = rows_.find(std::string(family));
    if (f != rows_.end()) f->second.erase(std::string(key));
    return Status::OK();
  }

  const Rows& rows() const { return rows_; }

 private:
  Rows rows_;
};

// Runs `command` against `state` the way the writer does: Decide(), then for each decided event
// (positions after `*head`, time `now_us`) every fold's Apply(), then the side rows. Returns the
// Decide() or Apply() error; on success `*decision` holds what was decided and `*applied`
// (optional) the events with their assigned positions.
inline Status RunCommand(Command* command, const std::vector<const Fold*>& folds,
                         MemoryState* state, Position* head, int64_t now_us, Decision* decision,
                         std::vector<Event>* applied = nullptr) {
  DecideContext context;
  context.now_us = now_us;
  context.head = *head;
  context.state = state;
  *decision = Decision();
  LEDGER_RETURN_IF_ERROR(command->Decide(context, decision));
  for (const NewEvent& e : decision->events) {
    Event event;
    *head = Next(*head);
    event.position = *head;
    event.time_us = now_us;
    event.id = NewUuid();
    event.type = e.type;
    event.subject = e.subject;
    event.data = e.data;
    for (const Fold* fold : folds) LEDGER_RETURN_IF_ERROR(fold->Apply(event, *state, state));
    if (applied != nullptr) applied->push_back(std::move(event));
  }
  // After the events, as the writer writes them (any family: no side families are declared here).
  for (const SideRow& row : decision->side_rows) {
    LEDGER_RETURN_IF_ERROR(row.deleted ? state->Delete(row.family, row.key)
                                       : state->Put(row.family, row.key, row.value));
  }
  return Status::OK();
}

}  // namespace ledger::testing
