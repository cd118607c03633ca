// Group-commit semantics: concurrent submitters are batched into groups of more than one command
// (one synced WriteBatch each), each command decides against state that includes the earlier
// commands of its group, and a command rejected inside a group changes nothing for the others:
// their positions stay gap-free and their events intact.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "events/fold.h"
#include "events/ledger.h"
#include "events/limits.h"
#include "tests/support/durability.h"
#include "tests/support/fault_fs.h"
#include "tests/support/gate_command.h"
#include "tests/support/test_ledger.h"
#include "tests/support/wait.h"

namespace ledger {
namespace {

using testing::AppendCommand;
using testing::CheckDurability;
using testing::CommandSpec;
using testing::ConcurrentLoad;
using testing::DurabilityReport;
using testing::FaultEnv;
using testing::FaultFs;
using testing::GateCommand;
using testing::LoadOptions;
using testing::Outcome;
using testing::RejectCommand;
using testing::SubjectsCommand;
using testing::TempDir;
using testing::WaitFor;

std::unique_ptr<Ledger> Open(const std::string& path) {
  LedgerOptions options;
  options.path = path;
  return testing::OpenTestLedger(options);
}

// Appends a valid event, then one with a NUL in its subject: the writer must roll back the
// first one too.
class HalfInvalidCommand final : public Command {
 public:
  Status Decide(const DecideContext&, Decision* decision) override {
    decision->events.push_back(NewEvent{"test.appended.v1", "half-valid", "{}"});
    decision->events.push_back(NewEvent{"test.appended.v1", std::string("bad\0subject", 11), "{}"});
    return Status::OK();
  }
};

TEST(GroupCommitTest, ConcurrentSubmittersAreBatchedAndRejectionsLeaveNoGaps) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  LoadOptions load_options;
  load_options.threads = 32;
  load_options.commands_per_thread = 40;
  load_options.reject_percent = 20;
  load_options.keyed_percent = 20;
  load_options.tag = "group";
  ConcurrentLoad load(ledger.get(), load_options);
  load.Join();
  ASSERT_TRUE(load.outcomes().Failed().empty());
  EXPECT_GT(load.rejected(), 0u);
  EXPECT_EQ(ledger->metrics().commands_rejected.Value(), load.rejected());

  // Batching happened: fewer groups than commands, and at least one group of two or more.
  Histogram::Snapshot groups = ledger->metrics().group_commands.Read();
  EXPECT_EQ(groups.count, ledger->metrics().groups_committed.Value());
  ASSERT_GT(groups.count, 0u);
  EXPECT_LT(groups.cumulative[0], groups.count) << "every group had a single command";
  double mean = groups.sum / static_cast<double>(groups.count);
  EXPECT_GT(mean, 1.0);
  std::cout << "[ group commit ] " << groups.count << " groups, " << mean
            << " commands per group on average" << std::endl;

  // Gap-free, chained, every acknowledged result at its position, every command exactly once.
  std::vector<Outcome> acknowledged = load.outcomes().Acknowledged();
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  EXPECT_EQ(report.head, ledger->Head());
  EXPECT_EQ(report.head, report.max_acknowledged);
  for (const Outcome& o : acknowledged) {
    EXPECT_EQ(report.events_per_subject[o.spec.subject], o.spec.events) << o.spec.subject;
  }
}

// Submits a GateCommand ("gate", one event) on its own thread and waits until the committer
// holds it in its decide step: everything submitted until Release() queues behind it.
class HeldCommitter {
 public:
  explicit HeldCommitter(Ledger* ledger)
      : thread_([this, ledger] { result_ = ledger->Submit(&gate_); }) {
    gate_.WaitUntilDeciding();
  }
  ~HeldCommitter() {
    if (thread_.joinable()) Release();
  }
  // Lets the gate's group go on; returns the gate's own result.
  CommandResult Release() {
    gate_.Open();
    thread_.join();
    return result_;
  }

 private:
  GateCommand gate_{"gate"};
  CommandResult result_;
  std::thread thread_;
};

// A command's events are known only once it is decided, so a group stops taking commands when
// its events reach the limit (kGroupEventsMax): 40 queued commands of 1,000 events each are not
// one group of 40,000 events (one WAL record, its memory kept afterwards), and keep their order.
TEST(GroupCommitTest, AGroupStopsTakingCommandsAtTheEventLimit) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  HeldCommitter held(ledger.get());

  constexpr size_t kCommands = 40;
  constexpr size_t kPerCommand = 1000;
  static_assert(kCommands * kPerCommand > 2 * limits::kGroupEventsMax);
  std::vector<std::unique_ptr<AppendCommand>> commands;
  std::vector<CommandResult> results(kCommands);
  std::atomic<size_t> done{0};
  for (size_t i = 0; i < kCommands; ++i) {
    commands.push_back(std::make_unique<AppendCommand>("s" + std::to_string(i), kPerCommand));
    ledger->SubmitAsync(commands.back().get(), [&, i](CommandResult r) {
      results[i] = std::move(r);
      done.fetch_add(1);
    });
  }
  const uint64_t groups_before = ledger->metrics().groups_committed.Value();
  ASSERT_TRUE(held.Release().status.ok());
  ASSERT_TRUE(testing::WaitFor([&] { return done.load() == kCommands; },
                               std::chrono::seconds(60)));
  for (size_t i = 0; i < kCommands; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << " " << results[i].status.ToString();
    EXPECT_EQ(results[i].position, Position(1 + (i + 1) * kPerCommand)) << i;  // in order
  }
  // The gate's group, then groups of at most 17 commands (16,384 events, plus the command that
  // crossed it): at least three more (one without the limit).
  EXPECT_GE(ledger->metrics().groups_committed.Value() - groups_before, 4u);
  EXPECT_EQ(ledger->Head(), Position(1 + kCommands * kPerCommand));
}

TEST(GroupCommitTest, ARejectionInsideAGroupDoesNotAffectTheOthers) {
  TempDir dir;
  auto ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  HeldCommitter held(ledger.get());  // a group of one; everything below queues

  CommandSpec keyed{"keyed", 1, "scope", "key", Sha256("request")};
  CommandSpec reused_key{"reused", 1, "scope", "key", Sha256("another request")};
  AppendCommand a("a", 2);
  RejectCommand rejected(Status::Make(Code::kUnprocessable, "test_rejected", "no"));
  auto b = keyed.Make();
  auto b_retry = keyed.Make();  // same key, same request: replayed from this very group
  auto conflict = reused_key.Make();
  AppendCommand e("e", 3);
  HalfInvalidCommand half_invalid;
  AppendCommand g("g", 1);
  std::vector<Command*> members = {&a, b.get(),       &rejected, b_retry.get(), conflict.get(),
                                   &e, &half_invalid, &g};
  std::vector<CommandResult> results(members.size());
  std::vector<std::thread> submitters;
  for (size_t i = 0; i < members.size(); ++i) {
    submitters.emplace_back([&, i] { results[i] = ledger->Submit(members[i]); });
    while (ledger->QueueDepth() < 2 + i) std::this_thread::yield();  // keep the queue order
  }
  const CommandResult gate_result = held.Release();
  for (auto& t : submitters) t.join();

  ASSERT_TRUE(gate_result.status.ok());
  EXPECT_EQ(gate_result.position, Position(1));
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(results[0].position, Position(3));  // a: 2..3
  EXPECT_TRUE(results[1].status.ok());
  EXPECT_EQ(results[1].position, Position(4));  // keyed
  EXPECT_EQ(results[2].status.problem(), "test_rejected");
  EXPECT_TRUE(results[3].status.ok());
  EXPECT_TRUE(results[3].replayed);
  EXPECT_EQ(results[3].position, Position(4));
  EXPECT_EQ(results[4].status.problem(), "idempotency_key_reused");
  EXPECT_TRUE(results[5].status.ok());
  EXPECT_EQ(results[5].position, Position(7));  // e: 5..7
  EXPECT_EQ(results[6].status.problem(), "invalid_subject");
  EXPECT_EQ(results[6].position, Position(7));  // nothing of it was kept
  EXPECT_TRUE(results[7].status.ok());
  EXPECT_EQ(results[7].position, Position(8));

  // Exactly two groups: the gate alone, then all eight queued commands in one synced batch.
  EXPECT_EQ(ledger->metrics().groups_committed.Value(), 2u);
  Histogram::Snapshot groups = ledger->metrics().group_commands.Read();
  EXPECT_EQ(groups.count, 2u);
  EXPECT_DOUBLE_EQ(groups.sum, 1.0 + static_cast<double>(members.size()));

  // Each command decided against the head left by the earlier commands of its group
  // (AppendCommand writes its event's expected position into the data).
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 100, {}, &events).ok());
  std::vector<std::string> subjects;
  for (const Event& event : events) {
    subjects.push_back(event.subject);
    EXPECT_EQ(event.data, "{\"n\":" + std::to_string(event.position.value()) + "}");
  }
  EXPECT_EQ(subjects, (std::vector<std::string>{"gate", "a", "a", "keyed", "e", "e", "e", "g"}));

  auto plain = [](std::string subject, size_t count) {
    CommandSpec spec;
    spec.subject = std::move(subject);
    spec.events = count;
    return spec;
  };
  std::vector<Outcome> acknowledged = {{plain("gate", 1), gate_result},
                                       {plain("a", 2), results[0]},
                                       {keyed, results[1]},
                                       {keyed, results[3]},
                                       {plain("e", 3), results[5]},
                                       {plain("g", 1), results[7]}};
  DurabilityReport report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
  ledger.reset();
  ledger = Open(dir.path());
  ASSERT_NE(ledger, nullptr);
  report = CheckDurability(ledger.get(), acknowledged);
  EXPECT_TRUE(report.ok()) << report.Summary();
}

// The store at `path` with one fold. `write_thread_entries_min`: LedgerOptions'.
std::unique_ptr<Ledger> OpenWithFold(const std::string& path, const Fold* fold,
                                     size_t write_thread_entries_min = 1024,
                                     rocksdb::Env* env = nullptr) {
  LedgerOptions options;
  options.path = path;
  options.folds = {fold};
  options.write_thread_entries_min = write_thread_entries_min;
  options.env = env;
  return testing::OpenTestLedger(options);
}

// A fold that marks every subject it sees: row `subject` in the family "marks"; a subject
// "unmark-<x>" deletes the mark of <x> instead.
class MarkFold final : public Fold {
 public:
  std::string_view Name() const override { return "marks"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    if (event.subject.starts_with("unmark-")) return rows->Delete("marks", event.subject.substr(7));
    return rows->Put("marks", event.subject, "1");
  }
};

// The marks a snapshot reads, in key order.
std::vector<std::string> StoredMarks(Ledger* ledger) {
  std::vector<std::string> marks;
  EXPECT_TRUE(ledger->Snapshot()
                  ->Scan("marks", "",
                         [&](std::string_view key, std::string_view) {
                           marks.emplace_back(key);
                           return true;
                         })
                  .ok());
  return marks;
}

// Looks up the marks of `keys` with one Contains and with one Get each, and lists every mark
// with a Scan and with a ScanFrom("h").
class ProbeCommand final : public Command {
 public:
  explicit ProbeCommand(std::vector<std::string> keys) : keys_(std::move(keys)) {}
  Status Decide(const DecideContext& context, Decision* decision) override {
    LEDGER_RETURN_IF_ERROR(context.state->Contains("marks", keys_, &contained));
    std::string value;
    for (const std::string& key : keys_) {
      Status s = context.state->Get("marks", key, &value);
      if (!s.ok() && !s.IsNotFound()) return s;
      got.push_back(s.ok());
    }
    auto collect = [](std::vector<std::string>* out) {
      return [out](std::string_view key, std::string_view) {
        out->emplace_back(key);
        return true;
      };
    };
    LEDGER_RETURN_IF_ERROR(context.state->Scan("marks", "", collect(&scanned)));
    LEDGER_RETURN_IF_ERROR(context.state->ScanFrom("marks", "", "h", collect(&scanned_from_h)));
    decision->body = "{}";
    return Status::OK();
  }
  std::vector<bool> contained, got;
  std::vector<std::string> scanned, scanned_from_h;

 private:
  std::vector<std::string> keys_;
};

// The group state's reads (Get, the batched Contains, Scan, ScanFrom) see the rows in the store
// (earlier groups) merged with the rows of earlier commands of the same group — a deletion in the
// group hides a stored row — and nothing else: not the rows of a command rolled back inside the
// group, nor those of later commands.
TEST(GroupCommitTest, GroupStateReadsSeeTheStoreAndTheEarlierCommandsOfItsGroup) {
  TempDir dir;
  MarkFold marks;
  std::unique_ptr<Ledger> ledger = OpenWithFold(dir.path(), &marks);
  ASSERT_NE(ledger, nullptr);
  AppendCommand stored("stored");
  ASSERT_TRUE(ledger->Submit(&stored).status.ok());
  AppendCommand gone("gone");
  ASSERT_TRUE(ledger->Submit(&gone).status.ok());

  GateCommand gate("gate");
  std::thread leader([&] { EXPECT_TRUE(ledger->Submit(&gate).status.ok()); });
  gate.WaitUntilDeciding();
  AppendCommand same_group("same-group");
  AppendCommand unmark("unmark-gone");
  HalfInvalidCommand rolled_back;  // marks "half-valid", then fails: the mark is undone
  ProbeCommand probe({"stored", "same-group", "gate", "absent", "later", "gone", "half-valid"});
  AppendCommand later("later");
  std::vector<Command*> members = {&same_group, &unmark, &rolled_back, &probe, &later};
  std::vector<std::thread> submitters;
  for (size_t i = 0; i < members.size(); ++i) {
    submitters.emplace_back([&, i] {
      Status s = ledger->Submit(members[i]).status;
      EXPECT_EQ(s.ok(), members[i] != &rolled_back) << s.ToString();
    });
    while (ledger->QueueDepth() < 2 + i) std::this_thread::yield();  // keep the queue order
  }
  gate.Open();
  leader.join();
  for (auto& t : submitters) t.join();
  EXPECT_EQ(probe.contained, (std::vector<bool>{true, true, true, false, false, false, false}));
  EXPECT_EQ(probe.contained, probe.got);
  EXPECT_EQ(probe.scanned, (std::vector<std::string>{"gate", "same-group", "stored"}));
  EXPECT_EQ(probe.scanned_from_h, (std::vector<std::string>{"same-group", "stored"}));
  EXPECT_EQ(ledger->metrics().groups_committed.Value(), 4u);  // stored; gone; gate; the five

  // What the group wrote is what a snapshot reads afterwards.
  EXPECT_EQ(StoredMarks(ledger.get()),
            (std::vector<std::string>{"gate", "later", "same-group", "stored"}));
}

// A fold over "kv" rows: an event's data {"ops":"p:<key>:<value>;d:<key>;..."} puts and deletes.
class KvFold final : public Fold {
 public:
  std::string_view Name() const override { return "kv"; }
  uint32_t Version() const override { return 1; }
  Status Apply(const Event& event, const StateReader&, RowWriter* rows) const override {
    constexpr std::string_view kOps = "{\"ops\":\"";
    if (!event.data.starts_with(kOps)) return Status::OK();
    std::stringstream ops(event.data.substr(kOps.size(), event.data.size() - kOps.size() - 2));
    std::string op;
    while (std::getline(ops, op, ';')) {
      const size_t colon = op.find(':', 2);
      Status s = op[0] == 'p' ? rows->Put("kv", op.substr(2, colon - 2), op.substr(colon + 1))
                              : rows->Delete("kv", op.substr(2));
      if (!s.ok()) return s;
    }
    return Status::OK();
  }
};

// Checks what the group state shows of "kv" (Get, Contains, Scan, ScanFrom) against a model of
// every command the writer committed before it, then appends random puts and deletes and, for
// a failing command, an invalid event after them (the writer rolls the command back). Decide runs
// on the committer thread only, in commit order, so the model is updated there too.
struct KvModel {
  std::map<std::string, std::string> rows;
  std::vector<std::string> mismatches;
  uint64_t checks = 0;
};

class KvCommand final : public Command {
 public:
  KvCommand(KvModel* model, uint32_t seed, bool fail) : model_(model), rng_(seed), fail_(fail) {}

  Status Decide(const DecideContext& context, Decision* decision) override {
    Check(*context.state);
    std::map<std::string, std::string> after = model_->rows;
    const int events = 1 + static_cast<int>(rng_() % 3);
    for (int e = 0; e < events; ++e) {
      std::string ops;
      const int count = 1 + static_cast<int>(rng_() % 4);
      for (int i = 0; i < count; ++i) {
        const std::string key = Key();
        if (!ops.empty()) ops += ';';
        if (rng_() % 3 == 0) {
          ops += "d:" + key;
          after.erase(key);
        } else {
          const std::string value = "v" + std::to_string(rng_() % 1000000);
          ops += "p:" + key + ":" + value;
          after[key] = value;
        }
      }
      decision->events.push_back(NewEvent{"test.kv.v1", "kv", "{\"ops\":\"" + ops + "\"}"});
    }
    if (fail_) {
      decision->events.push_back(NewEvent{"test.kv.v1", std::string("bad\0subject", 11), "{}"});
    } else {
      model_->rows = std::move(after);
    }
    decision->body = "{}";
    return Status::OK();
  }

 private:
  std::string Key() { return "k" + std::to_string(rng_() % 40); }

  void Mismatch(const std::string& what) {
    if (model_->mismatches.size() < 20) model_->mismatches.push_back(what);
  }

  void Check(const StateReader& state) {
    ++model_->checks;
    const auto& rows = model_->rows;
    std::string value;
    const std::string key = Key();
    Status s = state.Get("kv", key, &value);
    auto it = rows.find(key);
    if (it == rows.end() ? !s.IsNotFound() : (!s.ok() || value != it->second)) {
      Mismatch("Get " + key + ": " + s.ToString() + " " + value);
    }
    std::vector<std::string> keys = {Key(), Key(), Key(), Key()};
    std::vector<bool> found;
    if (!state.Contains("kv", keys, &found).ok()) Mismatch("Contains failed");
    for (size_t i = 0; i < keys.size() && i < found.size(); ++i) {
      if (found[i] != (rows.count(keys[i]) > 0)) Mismatch("Contains " + keys[i]);
    }
    // The keys under a random one-digit prefix ("k1" holds k1, k10..k19), from a random start.
    const std::string prefix = "k" + std::to_string(rng_() % 4);
    const std::string start = prefix + std::to_string(rng_() % 10);
    std::vector<std::pair<std::string, std::string>> scanned, scanned_from, expected,
        expected_from;
    auto into = [](auto* out) {
      return [out](std::string_view k, std::string_view v) {
        out->emplace_back(std::string(k), std::string(v));
        return true;
      };
    };
    if (!state.Scan("kv", prefix, into(&scanned)).ok()) Mismatch("Scan failed");
    if (!state.ScanFrom("kv", prefix, start, into(&scanned_from)).ok()) Mismatch("ScanFrom failed");
    for (const auto& [k, v] : rows) {
      if (!k.starts_with(prefix)) continue;
      expected.emplace_back(k, v);
      if (k >= start) expected_from.emplace_back(k, v);
    }
    if (scanned != expected) Mismatch("Scan " + prefix);
    if (scanned_from != expected_from) Mismatch("ScanFrom " + start);
  }

  KvModel* model_;
  std::mt19937 rng_;
  const bool fail_;
};

// The group state against a model: many concurrent submitters (so groups hold many commands),
// random puts and deletes of a small key set (so later commands of a group read, overwrite and
// delete the rows of earlier ones), one command in five rolled back after its rows were written.
// What every command read, what a snapshot reads afterwards and what a reopened store reads all
// equal the model.
void CheckGroupStateAgainstAModel(size_t write_thread_entries_min) {
  TempDir dir;
  KvFold kv;
  std::unique_ptr<Ledger> ledger = OpenWithFold(dir.path(), &kv, write_thread_entries_min);
  ASSERT_NE(ledger, nullptr);
  KvModel model;
  std::atomic<int> failed{0}, unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 150; ++i) {
        const bool fail = (t * 150 + i) % 5 == 0;
        KvCommand command(&model, static_cast<uint32_t>(t * 1000 + i), fail);
        const bool ok = ledger->Submit(&command).status.ok();
        if (ok == fail) ++unexpected;
        if (!ok) ++failed;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(unexpected.load(), 0);
  EXPECT_EQ(failed.load(), 8 * 150 / 5);
  EXPECT_EQ(model.checks, 8u * 150u);
  EXPECT_TRUE(model.mismatches.empty()) << model.mismatches.front();
  // Groups of more than one command, or the test proves little.
  EXPECT_LT(ledger->metrics().groups_committed.Value(), 8u * 150u * 4 / 5);
  // Through the write thread, groups decided on top of unwritten ones: what this variant is for.
  if (write_thread_entries_min == 0) {
    EXPECT_GT(ledger->metrics().groups_pipelined.Value(), 0u);
  }

  auto stored = [](Ledger* l) {
    std::map<std::string, std::string> out;
    EXPECT_TRUE(l->Snapshot()
                    ->Scan("kv", "",
                           [&](std::string_view k, std::string_view v) {
                             out.emplace(k, v);
                             return true;
                           })
                    .ok());
    return out;
  };
  EXPECT_EQ(stored(ledger.get()), model.rows);
  ledger.reset();
  ledger = OpenWithFold(dir.path(), &kv);
  ASSERT_NE(ledger, nullptr);
  EXPECT_EQ(stored(ledger.get()), model.rows);
}

// Small groups, written by the committer itself (the default threshold).
TEST(GroupCommitTest, GroupStateMatchesAModelAcrossGroupsAndRollbacks) {
  CheckGroupStateAgainstAModel(1024);
}

// Every group through the write thread: a group is decided while the ones before it are still
// being written, on top of their rows.
TEST(GroupCommitTest, GroupStateMatchesAModelWhenEveryGroupGoesThroughTheWriteThread) {
  CheckGroupStateAgainstAModel(0);
}

// `sync`: LedgerOptions::sync (false only for a negative control; nothing is paced then).
std::unique_ptr<Ledger> OpenPaced(const std::string& path, std::chrono::milliseconds interval,
                                  rocksdb::Env* env = nullptr, bool sync = true) {
  LedgerOptions options;
  options.path = path;
  options.sync_interval_min = interval;
  options.env = env;
  options.sync = sync;
  return testing::OpenTestLedger(options);
}

// The power goes out once the ledger is closed: what was not synced is lost (FaultFs kDropAll).
void CutPowerAndDropUnsynced(FaultEnv* fault) {
  fault->fs()->CutPower();
  FaultFs::DropReport drop;
  ASSERT_TRUE(fault->fs()->DropUnsyncedData(FaultFs::DropMode::kDropAll, 1, &drop).ok());
}

// Answers of commands submitted with SubmitAsync. Declared before the ledger in each test, so a
// failed assertion closes the ledger (which answers what is in flight) before this goes away.
struct AsyncAnswers {
  std::atomic<int> answered{0};
  std::atomic<int> failed{0};
  std::function<void(CommandResult)> Callback() {
    return [this](CommandResult r) {
      if (!r.status.ok()) failed++;
      answered++;
    };
  }
};

// LedgerOptions::sync_interval_min: a sync that follows the last one too soon waits, and takes
// every group written meanwhile with it. (The interval is long so that a slow CI machine still
// fits a submit-and-answer round trip well inside it.)
TEST(GroupCommitTest, SyncsArePacedAndTakeEveryGroupWrittenMeanwhile) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kInterval = std::chrono::seconds(2);
  constexpr int kRiders = 8;  // fewer than kPacedSyncCommandsEnough
  static_assert(kRiders < static_cast<int>(kPacedSyncCommandsEnough));
  TempDir dir;
  AppendCommand first("paced"), second("paced");
  std::vector<std::unique_ptr<AppendCommand>> riders;
  AsyncAnswers answers;
  auto ledger = OpenPaced(dir.path(), kInterval);
  ASSERT_NE(ledger, nullptr);
  const Counter& paced = ledger->metrics().syncs_paced;

  // The first sync follows none: not paced.
  const Clock::time_point before_first = Clock::now();
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  EXPECT_EQ(paced.Value(), 0u);

  // A lone command right after it waits out the interval, counted from the first sync's start
  // (which was after before_first).
  ASSERT_TRUE(ledger->Submit(&second).status.ok());
  EXPECT_GE(Clock::now() - before_first, kInterval);
  EXPECT_EQ(paced.Value(), 1u);

  // Commands submitted while a paced sync waits ride on it: one sync for all of them.
  const uint64_t syncs_before = ledger->metrics().syncs.Value();
  for (int i = 0; i < kRiders; ++i) {
    riders.push_back(std::make_unique<AppendCommand>("rider"));
    ledger->SubmitAsync(riders.back().get(), answers.Callback());
  }
  ASSERT_TRUE(WaitFor([&] { return answers.answered.load() == kRiders; }));
  EXPECT_EQ(answers.failed.load(), 0);
  EXPECT_EQ(ledger->metrics().syncs.Value() - syncs_before, 1u);
  EXPECT_EQ(paced.Value(), 2u);
  EXPECT_EQ(ledger->Head(), Position(2 + kRiders));
}

// A sync that enough commands wait for is not paced, nor is an answer that needs no sync.
TEST(GroupCommitTest, FullSyncsAndAnswersWithoutWritesAreNotPaced) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kInterval = std::chrono::seconds(20);  // the test would time out waiting it out
  const int commands = static_cast<int>(kPacedSyncCommandsEnough);
  TempDir dir;
  AppendCommand first("full");
  RejectCommand rejected(Status::Conflict("nope", "rejected by the test"));
  std::vector<std::unique_ptr<AppendCommand>> batch;
  AsyncAnswers answers;
  auto ledger = OpenPaced(dir.path(), kInterval);
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Submit(&first).status.ok());

  // A rejection writes nothing: answered at once, though a sync would be paced now.
  Clock::time_point start = Clock::now();
  EXPECT_EQ(ledger->Submit(&rejected).status.code(), Code::kConflict);
  EXPECT_LT(Clock::now() - start, kInterval / 2);
  EXPECT_EQ(ledger->metrics().syncs_paced.Value(), 0u);

  start = Clock::now();
  for (int i = 0; i < commands; ++i) {
    batch.push_back(std::make_unique<AppendCommand>("full"));
    ledger->SubmitAsync(batch.back().get(), answers.Callback());
  }
  ASSERT_TRUE(WaitFor([&] { return answers.answered.load() == commands; },
                      std::chrono::seconds(10)))
      << answers.answered.load() << " of " << commands
      << " answered: the sync waited for the interval";
  EXPECT_LT(Clock::now() - start, kInterval / 2);
  EXPECT_EQ(answers.failed.load(), 0);
  EXPECT_EQ(ledger->Head(), Position(1 + commands));
}

// Closing the ledger while a sync is being paced syncs and answers at once: nothing answered
// is lost, and the close does not wait out the interval. The power goes out after the close and
// the reopen sees only what was synced: an answer given without the sync would lose the command.
TEST(GroupCommitTest, ClosingDuringAPacedSyncAnswersDurably) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kInterval = std::chrono::seconds(20);
  TempDir dir;
  FaultEnv fault;
  AppendCommand first("closing"), second("closing");
  std::atomic<bool> answered{false};
  CommandResult result;
  auto ledger = OpenPaced(dir.path(), kInterval, fault.env());
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  ledger->SubmitAsync(&second, [&](CommandResult r) {
    result = std::move(r);
    answered = true;
  });
  // The second command is written and its sync waits for the interval.
  ASSERT_TRUE(WaitFor([&] { return ledger->metrics().syncs_paced.Value() == 1 || answered; }));
  EXPECT_FALSE(answered.load());
  const Clock::time_point closing = Clock::now();
  ledger.reset();
  EXPECT_LT(Clock::now() - closing, kInterval / 2);
  ASSERT_TRUE(answered.load());
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  EXPECT_EQ(result.position, Position(2));
  CutPowerAndDropUnsynced(&fault);
  auto reopened = Open(dir.path());
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(reopened->Head(), Position(2));
}

// Negative control: without the fsync (LedgerOptions::sync = false) the same close and power
// loss lose the answered commands. If this test fails, the one above cannot tell a close that
// syncs from one that does not.
TEST(GroupCommitTest, NegativeControlClosingWithoutSyncLosesTheAnsweredCommands) {
  constexpr auto kInterval = std::chrono::seconds(20);
  TempDir dir;
  FaultEnv fault;
  AppendCommand first("closing"), second("closing");
  auto ledger = OpenPaced(dir.path(), kInterval, fault.env(), /*sync=*/false);
  ASSERT_NE(ledger, nullptr);
  ASSERT_TRUE(ledger->Submit(&first).status.ok());
  CommandResult result = ledger->Submit(&second);
  ASSERT_TRUE(result.status.ok()) << result.status.ToString();
  EXPECT_EQ(result.position, Position(2));
  ledger.reset();
  CutPowerAndDropUnsynced(&fault);
  auto reopened = Open(dir.path());
  ASSERT_NE(reopened, nullptr);
  EXPECT_LT(reopened->Head().value(), 2u) << "sync=false was not detected";
}

// The same, made certain: the first group's write (its WAL append) is held while the next groups
// are decided on top of it and of each other. They read the rows of every group not yet written,
// the newest mutation of a key winning (Get, Contains, Scan, ScanFrom; a deletion hides a stored
// row or an older unwritten group's row), and the first group's idempotency record -- a retry is
// a replay, not a second append. None of them is answered before the groups it read are written
// and synced, and the answers come in commit order.
TEST(GroupCommitTest, GroupsDecidedBehindUnwrittenGroupsReadTheirRows) {
  TempDir dir;
  FaultEnv fault;
  MarkFold marks;
  std::unique_ptr<Ledger> ledger = OpenWithFold(dir.path(), &marks, 0, fault.env());
  ASSERT_NE(ledger, nullptr);
  AppendCommand stored("stored"), gone("gone");
  ASSERT_TRUE(ledger->Submit(&stored).status.ok());
  ASSERT_TRUE(ledger->Submit(&gone).status.ok());

  std::mutex mu;
  std::map<std::string, CommandResult> answers;  // guarded by mu
  std::vector<std::string> answer_order;         // guarded by mu
  auto submit = [&](Command* command, const std::string& name) {
    ledger->SubmitAsync(command, [&, name](CommandResult result) {
      std::lock_guard<std::mutex> l(mu);
      answers.emplace(name, std::move(result));
      answer_order.push_back(name);
    });
  };
  auto answered = [&] {
    std::lock_guard<std::mutex> l(mu);
    return answers.size();
  };
  auto make_first = [] {
    auto command = std::make_unique<SubjectsCommand>(
        std::vector<std::string>{"unmark-gone", "held", "twice"});
    command->idempotency_scope = "test";
    command->idempotency_key = "key-1";
    command->request_hash = Sha256("the same request");
    return command;
  };

  // Group 1 (`first`: unmarks the stored "gone", marks "held" and "twice") is handed to the write
  // thread and held in its WAL append. Group 2 (`gate`: unmarks "twice") is decided behind it and
  // waits to be written; group 3 (`probe`) is decided behind both; group 4 (`retry` of group 1,
  // which only reads) is decided and waits for room in the write thread's queue.
  fault.fs()->HoldAppends();
  std::unique_ptr<SubjectsCommand> first = make_first();
  submit(first.get(), "first");
  fault.fs()->WaitUntilAnAppendIsHeld();
  // Counted from here: whether `first` itself counts as pipelined depends on how soon the write
  // thread, having answered `gone`, marked it written (a loaded machine made that 3, not 2).
  const uint64_t pipelined_before = ledger->metrics().groups_pipelined.Value();
  GateCommand gate("unmark-twice");
  submit(&gate, "gate");
  gate.WaitUntilDeciding();
  ProbeCommand probe({"stored", "held", "gone", "twice", "absent"});
  submit(&probe, "probe");
  ASSERT_TRUE(WaitFor([&] { return ledger->QueueDepth() == 2; }));  // gate deciding, probe
  gate.Open();
  ASSERT_TRUE(WaitFor([&] { return ledger->QueueDepth() == 0; }));  // both decided

  EXPECT_EQ(probe.contained, (std::vector<bool>{true, true, false, false, false}));
  EXPECT_EQ(probe.got, probe.contained);
  EXPECT_EQ(probe.scanned, (std::vector<std::string>{"held", "stored"}));
  EXPECT_EQ(probe.scanned_from_h, (std::vector<std::string>{"held", "stored"}));
  EXPECT_EQ(ledger->metrics().groups_pipelined.Value() - pipelined_before, 2u);  // gate, probe

  // A group that writes nothing is not answered before the groups it read are durable either
  // (it waits behind them). Given time to go wrong: a wrong answer would come at once.
  std::unique_ptr<SubjectsCommand> retry = make_first();
  submit(retry.get(), "retry");
  for (int i = 0; i < 200 && answered() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(answered(), 0u);  // nothing is answered before it is durable
  EXPECT_EQ(ledger->Head(), Position(2));

  fault.fs()->ReleaseAppends();
  ASSERT_TRUE(WaitFor([&] { return answered() == 4; }));
  std::lock_guard<std::mutex> l(mu);
  for (const auto& [name, result] : answers) {
    EXPECT_TRUE(result.status.ok()) << name << ": " << result.status.ToString();
  }
  EXPECT_EQ(answers["first"].position, Position(5));
  EXPECT_FALSE(answers["first"].replayed);
  EXPECT_EQ(answers["gate"].position, Position(6));
  EXPECT_TRUE(answers["retry"].replayed);
  EXPECT_EQ(answers["retry"].position, Position(5));
  EXPECT_EQ(ledger->Head(), Position(6));  // the retry appended nothing
  EXPECT_EQ(answer_order, (std::vector<std::string>{"first", "gate", "probe", "retry"}));
  EXPECT_EQ(StoredMarks(ledger.get()), (std::vector<std::string>{"held", "stored"}));
}

}  // namespace
}  // namespace ledger
