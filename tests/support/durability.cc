#include "tests/support/durability.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <utility>

#include "events/event.h"

namespace ledger::testing {

namespace {

constexpr size_t kReportErrorsMax = 20;

void AddError(DurabilityReport* report, std::string message) {
  if (report->errors.size() < kReportErrorsMax) report->errors.push_back(std::move(message));
}

// Answers from the idempotency record or not at all: Decide() rejects, so probing a lost record
// appends nothing.
class IdempotencyProbe final : public Command {
 public:
  Status Decide(const DecideContext&, Decision*) override {
    return Status::Make(Code::kNotFound, "idempotency_record_missing", "no idempotency record");
  }
};

// Walks the whole log: positions, hashes, links. Fills `subjects` (index = position).
void CheckChain(Ledger* ledger, DurabilityReport* report, std::vector<std::string>* subjects) {
  subjects->assign(1, std::string());
  Hash previous{};
  uint64_t expected = 1;
  Status s = ledger->ScanRaw(Position(1), Position(0), [&](Position p, std::string_view stored) {
    if (p.value() != expected) {
      report->chain_errors++;
      AddError(report, "gap: expected position " + std::to_string(expected) + ", found " +
                           std::to_string(p.value()));
      return false;
    }
    Event event;
    Status decoded = DecodeEvent(stored, &event);
    if (!decoded.ok() || event.position != p) {
      report->chain_errors++;
      AddError(report, "position " + std::to_string(p.value()) + " does not decode");
      return false;
    }
    Event resealed = event;
    SealEvent(&resealed);
    if (!VerifyEventHash(stored) || resealed.hash != event.hash) {
      report->chain_errors++;
      AddError(report, "position " + std::to_string(p.value()) + " fails its hash");
    }
    if (event.prev_hash != previous) {
      report->chain_errors++;
      AddError(report, "position " + std::to_string(p.value()) + " does not link to its parent");
    }
    previous = event.hash;
    report->events_per_subject[event.subject]++;
    subjects->push_back(std::move(event.subject));
    expected++;
    return true;
  });
  if (!s.ok()) {
    report->chain_errors++;
    AddError(report, "scan failed: " + s.ToString());
  }
  report->head = Position(expected - 1);
  report->events_scanned = expected - 1;
  if (ledger->Head() != report->head || ledger->HeadHash() != previous) {
    report->chain_errors++;
    AddError(report, "Head() " + std::to_string(ledger->Head().value()) +
                         " or HeadHash() disagrees with the log (last position " +
                         std::to_string(report->head.value()) + ")");
  }
}

void CheckAcknowledgedEvents(const std::vector<Outcome>& acknowledged,
                             const std::vector<std::string>& subjects, DurabilityReport* report) {
  for (const Outcome& outcome : acknowledged) {
    report->acknowledged_checked++;
    const CommandResult& r = outcome.result;
    report->max_acknowledged = std::max(report->max_acknowledged, r.position);
    // What the command asked for is checked, not the ledger's word for it: an acknowledgement
    // without a position, or with fewer events than the command appends, is a fault itself (it
    // would otherwise leave nothing, or only its last event, to look for).
    if (r.position.value() == 0 || (!r.replayed && r.events_appended != outcome.spec.events)) {
      report->lost++;
      AddError(report, "acknowledged " + outcome.spec.subject + " at position " +
                           std::to_string(r.position.value()) + " with " +
                           std::to_string(r.events_appended) + " of its " +
                           std::to_string(outcome.spec.events) + " events");
      continue;
    }
    // A replay names the original command's last position; the original appended spec.events.
    const uint64_t count = r.replayed ? 1 : outcome.spec.events;
    const uint64_t last = r.position.value();
    for (uint64_t p = last + 1 - std::min<uint64_t>(count, last); p <= last; ++p) {
      if (p == 0 || p >= subjects.size() || subjects[p] != outcome.spec.subject) {
        report->lost++;
        AddError(report, "acknowledged " + outcome.spec.subject + " at position " +
                             std::to_string(p) + (r.replayed ? " (replayed)" : "") +
                             (p < subjects.size() ? " holds " + subjects[p] : " is missing"));
        break;
      }
    }
  }
}

void CheckIdempotency(Ledger* ledger, const std::vector<Outcome>& acknowledged,
                      DurabilityReport* report) {
  std::set<std::pair<std::string, std::string>> probed;
  for (const Outcome& outcome : acknowledged) {
    const CommandSpec& spec = outcome.spec;
    if (!spec.keyed() || !probed.insert({spec.idempotency_scope, spec.idempotency_key}).second) {
      continue;
    }
    report->idempotency_probes++;
    IdempotencyProbe probe;
    probe.idempotency_scope = spec.idempotency_scope;
    probe.idempotency_key = spec.idempotency_key;
    probe.request_hash = spec.request_hash;
    CommandResult r = ledger->Submit(&probe);
    const CommandResult& original = outcome.result;
    if (!r.status.ok() || !r.replayed || r.position != original.position ||
        r.body != original.body || r.http_status != original.http_status) {
      report->idempotency_lost++;
      AddError(report, "idempotency key " + spec.idempotency_key + " of acknowledged " +
                           spec.subject + " does not replay: " + r.status.ToString() +
                           " position " + std::to_string(r.position.value()) + " (acknowledged " +
                           std::to_string(original.position.value()) + ")");
    }
  }
}

}  // namespace

std::unique_ptr<AppendCommand> CommandSpec::Make() const {
  auto command = std::make_unique<AppendCommand>(subject, events);
  command->idempotency_scope = idempotency_scope;
  command->idempotency_key = idempotency_key;
  command->request_hash = request_hash;
  return command;
}

void OutcomeLog::Add(const CommandSpec& spec, const CommandResult& result) {
  std::lock_guard<std::mutex> l(mu_);
  if (result.status.ok()) {
    acknowledged_.push_back(Outcome{spec, result});
    acknowledged_count_.fetch_add(1);
  } else {
    failed_.push_back(Outcome{spec, result});
  }
}

std::vector<Outcome> OutcomeLog::Acknowledged() const {
  std::lock_guard<std::mutex> l(mu_);
  return acknowledged_;
}

std::vector<Outcome> OutcomeLog::Failed() const {
  std::lock_guard<std::mutex> l(mu_);
  return failed_;
}

Position OutcomeLog::MaxAcknowledgedPosition() const {
  std::lock_guard<std::mutex> l(mu_);
  Position max;
  for (const Outcome& o : acknowledged_) max = std::max(max, o.result.position);
  return max;
}

std::string DurabilityReport::Summary() const {
  std::string s = "head " + std::to_string(head.value()) + ", max acknowledged " +
                  std::to_string(max_acknowledged.value()) + ", " + std::to_string(events_scanned) +
                  " events scanned, " + std::to_string(acknowledged_checked) +
                  " acknowledged results checked, " + std::to_string(idempotency_probes) +
                  " idempotency probes; lost " + std::to_string(lost) + ", idempotency lost " +
                  std::to_string(idempotency_lost) + ", chain errors " +
                  std::to_string(chain_errors);
  for (const std::string& e : errors) s += "\n  " + e;
  return s;
}

DurabilityReport CheckDurability(Ledger* ledger, const std::vector<Outcome>& acknowledged) {
  DurabilityReport report;
  std::vector<std::string> subjects;
  CheckChain(ledger, &report, &subjects);
  CheckAcknowledgedEvents(acknowledged, subjects, &report);
  CheckIdempotency(ledger, acknowledged, &report);
  return report;
}

ConcurrentLoad::ConcurrentLoad(Ledger* ledger, LoadOptions options)
    : ledger_(ledger), options_(std::move(options)) {
  running_.store(options_.threads);
  for (int t = 0; t < options_.threads; ++t) threads_.emplace_back([this, t] { Run(t); });
}

ConcurrentLoad::~ConcurrentLoad() {
  Stop();
  Join();
}

void ConcurrentLoad::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void ConcurrentLoad::WaitForAcknowledged(size_t count) {
  while (outcomes_.acknowledged_count() < count && running_.load() > 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

bool ConcurrentLoad::SubmitOnce(const CommandSpec& spec, bool shared) {
  // A shared command is a client retrying while its first attempt is still queued: the same
  // key and request from two threads at once, often in the same group.
  CommandResult twin_result;
  std::thread twin;
  if (shared) {
    twin = std::thread([&] {
      auto command = spec.Make();
      twin_result = ledger_->Submit(command.get());
    });
  }
  auto command = spec.Make();
  CommandResult result = ledger_->Submit(command.get());
  outcomes_.Add(spec, result);
  if (!shared) return result.status.ok();
  twin.join();
  outcomes_.Add(spec, twin_result);
  return result.status.ok() && twin_result.status.ok();
}

void ConcurrentLoad::Run(int thread) {
  std::mt19937_64 random(options_.seed * 1'000'003 + static_cast<uint64_t>(thread));
  for (int i = 0; i < options_.commands_per_thread && !stop_.load(); ++i) {
    CommandSpec spec;
    spec.subject = options_.tag + "-t" + std::to_string(thread) + "-" + std::to_string(i);
    spec.events = 1 + random() % options_.events_max;
    int roll = static_cast<int>(random() % 100);
    if (roll < options_.reject_percent) {
      RejectCommand reject(Status::Make(Code::kUnprocessable, "test_rejected", "rejected"));
      CommandResult r = ledger_->Submit(&reject);
      if (r.status.problem() == "test_rejected") {
        rejected_.fetch_add(1);
        continue;
      }
      outcomes_.Add(spec, r);
      break;
    }
    bool keyed = roll < options_.reject_percent + options_.keyed_percent;
    bool shared = keyed && static_cast<int>(random() % 100) < options_.shared_key_percent;
    if (keyed) {
      spec.idempotency_scope = options_.tag + "-scope";
      spec.idempotency_key = spec.subject;
      spec.request_hash = Sha256(spec.subject, std::to_string(spec.events));
    }
    if (!SubmitOnce(spec, shared)) break;
  }
  running_.fetch_sub(1);
}

}  // namespace ledger::testing
