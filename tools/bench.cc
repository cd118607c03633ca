#include "tools/bench.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <ostream>
#include <thread>

#include "events/ledger.h"

namespace ledger::tools {

namespace {

using SteadyClock = std::chrono::steady_clock;
using Nanos = std::chrono::nanoseconds;

constexpr char kBenchEventType[] = "bench.appended.v1";
constexpr char kSingleThreads[] = "single-event, threads";
constexpr char kSingleAsync[] = "single-event, async";
// A WAL fsync slower than this is a disk stall (a bound of Histogram::LatencySecondsBounds).
constexpr double kSlowSyncSeconds = 0.025;

// Appends `events` copies of one event. Decide() copies the payload, as a real decider builds one.
class BenchCommand final : public Command {
 public:
  BenchCommand(const std::string* subject, const std::string* data, size_t events)
      : subject_(subject), data_(data), events_(events) {}
  Status Decide(const DecideContext&, Decision* decision) override {
    decision->events.reserve(events_);
    for (size_t i = 0; i < events_; ++i) {
      decision->events.push_back(NewEvent{kBenchEventType, *subject_, *data_});
    }
    return Status::OK();
  }

 private:
  const std::string* subject_;
  const std::string* data_;
  size_t events_;
};

std::string MakeEventData(size_t bytes, int caller) {
  std::string head = "{\"user_id\":\"bench-" + std::to_string(caller) +
                     "\",\"service\":\"chat\",\"quantity\":1,\"pad\":\"";
  std::string tail = "\"}";
  size_t pad = bytes > head.size() + tail.size() ? bytes - head.size() - tail.size() : 0;
  return head + std::string(pad, 'x') + tail;
}

// Waits, for at most `max_seconds`, until the disk under `dir` has answered fdatasync quickly for
// 3 s in a row (appends of 4 KiB, each followed by fdatasync, all under 2 ms; at least 5 s in
// all: a disk still writing back answers small syncs fast at times). Returns the seconds waited.
double SettleDisk(const std::string& dir, double max_seconds) {
  const auto start = SteadyClock::now();
  std::string pattern = dir + "/.ledgerctl-settle-XXXXXX";
  const int fd = ::mkstemp(pattern.data());
  if (fd < 0) return 0;
  const std::string block(4096, 's');
  auto quiet_since = start;
  for (;;) {
    const auto t = SteadyClock::now();
    const double elapsed = std::chrono::duration<double>(t - start).count();
    if (elapsed >= max_seconds ||
        (elapsed >= 5 && t - quiet_since >= std::chrono::seconds(3))) {
      break;
    }
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size()) ||
        ::fdatasync(fd) != 0) {
      break;
    }
    const auto done = SteadyClock::now();
    if (done - t >= std::chrono::milliseconds(2)) quiet_since = done;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::close(fd);
  ::unlink(pattern.c_str());
  return std::chrono::duration<double>(SteadyClock::now() - start).count();
}

// A fresh store in a new directory, removed (after the ledger closes) by the destructor.
class BenchStore {
 public:
  ~BenchStore() {
    ledger_.reset();
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
    // The phase left hundreds of MiB of table files in the page cache that the kernel would write
    // back (and discard) during the next phase, inflating its fsync latencies: write them now.
    ::sync();
  }
  Status Open(const BenchOptions& options) {
    std::filesystem::path base = options.base_dir.empty()
                                     ? std::filesystem::temp_directory_path()
                                     : std::filesystem::path(options.base_dir);
    std::error_code ec;
    std::filesystem::create_directories(base, ec);
    // The disk goes on digesting a previous phase (writeback, the discards of its deleted files)
    // for seconds after it; this phase would measure that as its own tail (the open loop right
    // after the batch phase: p99 119 ms, 20 ms after waiting). Wait until syncs are quick again.
    if (options.settle_seconds > 0) {
      const double waited = SettleDisk(base.string(), options.settle_seconds);
      if (options.progress != nullptr) {
        *options.progress << "(waited " << static_cast<int>(waited + 0.5)
                          << " s for the disk to settle before the phase)\n"
                          << std::flush;
      }
    }
    std::string pattern = (base / "ledgerctl-bench-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::IOError("cannot create a directory " + pattern);
    }
    path_ = pattern;
    LedgerOptions ledger_options;
    ledger_options.path = path_;
    ledger_options.folds = options.folds;
    ledger_options.sync = true;
    ledger_options.sync_interval_min = std::chrono::microseconds(options.sync_interval_min_us);
    ledger_options.background_write_pace = options.background_write_pace;
    return Ledger::Open(ledger_options, &ledger_);
  }
  Ledger* ledger() { return ledger_.get(); }

 private:
  std::string path_;
  std::unique_ptr<Ledger> ledger_;
};

double CpuSeconds() {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

struct MetricsSample {
  SteadyClock::time_point at;
  double cpu_seconds = 0;
  uint64_t events = 0;
  uint64_t groups = 0;
  uint64_t syncs = 0;
  uint64_t syncs_beside_write = 0;
  Histogram::Snapshot group_commands, group_events, write_seconds, sync_seconds;

  static MetricsSample Take(Ledger* ledger) {
    MetricsSample s;
    LedgerMetrics& m = ledger->metrics();
    s.at = SteadyClock::now();
    s.cpu_seconds = CpuSeconds();
    s.events = m.events_appended.Value();
    s.groups = m.groups_committed.Value();
    s.syncs = m.syncs.Value();
    s.syncs_beside_write = m.syncs_beside_write.Value();
    s.group_commands = m.group_commands.Read();
    s.group_events = m.group_events.Read();
    s.write_seconds = m.write_seconds.Read();
    s.sync_seconds = m.sync_seconds.Read();
    return s;
  }
};

double Ratio(double a, double b) { return b > 0 ? a / b : 0; }

// A histogram bound in ms as the report prints it: "<= 2.5" (or "> 10000" past the last bound).
std::string FsyncBound(double ms) {
  char buf[32];
  if (std::isinf(ms)) {
    std::snprintf(buf, sizeof(buf), ">%.0f", 1000 * Histogram::LatencySecondsBounds().back());
  } else {
    std::snprintf(buf, sizeof(buf), "<=%g", ms);
  }
  return buf;
}

// Fills the throughput and group columns of `r` from two samples.
void FillFromMetrics(const MetricsSample& a, const MetricsSample& b, BenchPhaseResult* r) {
  double seconds = std::chrono::duration<double>(b.at - a.at).count();
  r->seconds = seconds;
  r->events = b.events - a.events;
  r->events_per_second = Ratio(static_cast<double>(r->events), seconds);
  double groups = static_cast<double>(b.groups - a.groups);
  r->groups_per_second = Ratio(groups, seconds);
  r->syncs_per_second = Ratio(static_cast<double>(b.syncs - a.syncs), seconds);
  r->syncs_beside_write_share =
      Ratio(static_cast<double>(b.syncs_beside_write - a.syncs_beside_write),
            static_cast<double>(b.syncs - a.syncs));
  r->commands_per_group = Ratio(b.group_commands.sum - a.group_commands.sum,
                                static_cast<double>(b.group_commands.count - a.group_commands.count));
  r->events_per_group = Ratio(b.group_events.sum - a.group_events.sum,
                              static_cast<double>(b.group_events.count - a.group_events.count));
  r->write_ms_mean = 1000 * Ratio(b.write_seconds.sum - a.write_seconds.sum,
                                  static_cast<double>(b.write_seconds.count - a.write_seconds.count));
  r->cpu_cores = Ratio(b.cpu_seconds - a.cpu_seconds, seconds);
  const Histogram::Snapshot& sa = a.sync_seconds;
  const Histogram::Snapshot& sb = b.sync_seconds;
  r->sync_ms_mean = 1000 * Ratio(sb.sum - sa.sum, static_cast<double>(sb.count - sa.count));
  r->sync_p99_ms = 1000 * QuantileUpperBound(sa, sb, 0.99);
  // cumulative[i] counts observations <= bounds[i]; the last entry is +Inf (= count).
  r->slow_syncs = 0;
  r->slowest_sync_ms = 0;
  for (size_t i = 0; i < sb.cumulative.size(); ++i) {
    const uint64_t in_bucket = (sb.cumulative[i] - (i > 0 ? sb.cumulative[i - 1] : 0)) -
                               (sa.cumulative[i] - (i > 0 ? sa.cumulative[i - 1] : 0));
    if (in_bucket == 0) continue;
    const double upper = i < sb.bounds.size() ? sb.bounds[i] : HUGE_VAL;
    r->slowest_sync_ms = 1000 * upper;
    if (i > 0 && sb.bounds[i - 1] >= kSlowSyncSeconds) r->slow_syncs += in_bucket;
  }
}

// Per-thread latency samples (nanoseconds) and counts of the measured window.
struct CallerStats {
  std::vector<uint64_t> latencies_ns;
  uint64_t commands = 0;
  uint64_t errors = 0;
};

// The `q` quantile of sorted nanoseconds, in ms (`sorted` not empty).
double QuantileMs(const std::vector<uint64_t>& sorted, double q) {
  const size_t i =
      std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size())));
  return static_cast<double>(sorted[i]) / 1e6;
}

void FillLatencies(std::vector<CallerStats>& stats, BenchPhaseResult* r) {
  std::vector<uint64_t> all;
  for (CallerStats& s : stats) {
    all.insert(all.end(), s.latencies_ns.begin(), s.latencies_ns.end());
    r->commands += s.commands;
    r->errors += s.errors;
    s.latencies_ns = {};
  }
  if (all.empty()) return;
  std::sort(all.begin(), all.end());
  r->p50_ms = QuantileMs(all, 0.50);
  r->p90_ms = QuantileMs(all, 0.90);
  r->p99_ms = QuantileMs(all, 0.99);
  r->p999_ms = QuantileMs(all, 0.999);
  r->max_ms = static_cast<double>(all.back()) / 1e6;
}

// Sleeps `seconds`, printing the append rate once a second.
void Watch(Ledger* ledger, const std::string& name, double seconds, std::ostream* progress) {
  auto end = SteadyClock::now() + std::chrono::duration_cast<Nanos>(
                                      std::chrono::duration<double>(seconds));
  uint64_t last_events = ledger->metrics().events_appended.Value();
  auto last = SteadyClock::now();
  while (SteadyClock::now() < end) {
    std::this_thread::sleep_until(std::min(end, last + std::chrono::seconds(1)));
    auto now = SteadyClock::now();
    uint64_t events = ledger->metrics().events_appended.Value();
    if (progress != nullptr) {
      char line[128];
      std::snprintf(line, sizeof(line), "bench %s: %.0f events/s\n", name.c_str(),
                    (events - last_events) / std::chrono::duration<double>(now - last).count());
      *progress << line << std::flush;
    }
    last_events = events;
    last = now;
  }
}

// What the callers of a closed-loop phase do: warm up (sent, not measured), measure, stop.
enum ClosedLoopPhase : int { kWarmUp, kMeasure, kStop };

// With the callers running: lets them warm up, then measures `options.seconds` between the
// metrics samples `before` and `after`, moving `phase` to kMeasure and then to kStop.
void MeasureWindow(Ledger* ledger, const std::string& name, const BenchOptions& options,
                   std::atomic<int>* phase, MetricsSample* before, MetricsSample* after) {
  std::this_thread::sleep_for(std::chrono::duration<double>(options.warmup_seconds));
  *before = MetricsSample::Take(ledger);
  phase->store(kMeasure);
  Watch(ledger, name, options.seconds, options.progress);
  *after = MetricsSample::Take(ledger);
  phase->store(kStop);
}

// Closed loop: `callers` threads submit commands of `events_per_command` events back to back.
Status RunClosedLoop(const BenchOptions& options, const std::string& name, int callers,
                     size_t events_per_command, BenchPhaseResult* result) {
  BenchStore store;
  LEDGER_RETURN_IF_ERROR(store.Open(options));
  Ledger* ledger = store.ledger();
  std::atomic<int> phase{kWarmUp};
  std::vector<CallerStats> stats(callers);
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c) {
    threads.emplace_back([&, c] {
      const std::string subject = "bench-" + std::to_string(c);
      const std::string data = MakeEventData(options.event_bytes, c);
      CallerStats& s = stats[c];
      for (int p; (p = phase.load(std::memory_order_relaxed)) != kStop;) {
        BenchCommand command(&subject, &data, events_per_command);
        auto start = SteadyClock::now();
        CommandResult r = ledger->Submit(&command);
        if (p != kMeasure) continue;
        if (!r.status.ok()) {
          s.errors++;
          continue;
        }
        s.commands++;
        s.latencies_ns.push_back(static_cast<uint64_t>(
            std::chrono::duration_cast<Nanos>(SteadyClock::now() - start).count()));
      }
    });
  }
  MetricsSample before, after;
  MeasureWindow(ledger, name, options, &phase, &before, &after);
  for (std::thread& t : threads) t.join();
  result->name = name;
  result->callers = callers;
  FillFromMetrics(before, after, result);
  FillLatencies(stats, result);
  return Status::OK();
}

// Closed loop without a thread per caller: `callers` logical callers each keep one single-event
// command in flight through Ledger::SubmitAsync and submit the next one from the completion of
// the previous one (as an event loop serving many connections would). Completions run on the
// ledger's sync thread, which is the only thread touching `stats` until the phase is over.
Status RunAsyncClosedLoop(const BenchOptions& options, const std::string& name, int callers,
                          BenchPhaseResult* result) {
  BenchStore store;
  LEDGER_RETURN_IF_ERROR(store.Open(options));
  Ledger* ledger = store.ledger();
  std::atomic<int> phase{kWarmUp};
  std::atomic<int> in_flight{0};
  struct Caller {
    std::string subject, data;
    std::unique_ptr<BenchCommand> command;
    SteadyClock::time_point start;
  };
  std::vector<Caller> state(callers);
  std::vector<CallerStats> stats(callers);
  std::function<void(int)> submit = [&](int c) {
    Caller& caller = state[c];
    caller.command = std::make_unique<BenchCommand>(&caller.subject, &caller.data, 1);
    caller.start = SteadyClock::now();
    const int p = phase.load(std::memory_order_relaxed);
    ledger->SubmitAsync(caller.command.get(), [&, c, p](CommandResult r) {
      CallerStats& s = stats[c];
      if (p == kMeasure) {
        if (r.status.ok()) {
          s.commands++;
          s.latencies_ns.push_back(static_cast<uint64_t>(
              std::chrono::duration_cast<Nanos>(SteadyClock::now() - state[c].start).count()));
        } else {
          s.errors++;
        }
      }
      if (phase.load(std::memory_order_relaxed) == kStop || !r.status.ok()) {
        in_flight.fetch_sub(1);
        return;
      }
      submit(c);
    });
  };
  for (int c = 0; c < callers; ++c) {
    state[c].subject = "bench-" + std::to_string(c);
    state[c].data = MakeEventData(options.event_bytes, c);
  }
  in_flight.store(callers);
  for (int c = 0; c < callers; ++c) submit(c);
  MetricsSample before, after;
  MeasureWindow(ledger, name, options, &phase, &before, &after);
  while (in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  result->name = name;
  result->callers = callers;
  FillFromMetrics(before, after, result);
  FillLatencies(stats, result);
  return Status::OK();
}

// Open loop: single-event commands due every 1/rate s, submitted by one pacing thread through
// SubmitAsync, so any rate can be offered whatever the latency (no thread per command in flight).
Status RunOpenLoop(const BenchOptions& options, double rate, BenchPhaseResult* result) {
  BenchStore store;
  LEDGER_RETURN_IF_ERROR(store.Open(options));
  Ledger* ledger = store.ledger();
  const auto start = SteadyClock::now() + std::chrono::milliseconds(10);
  const auto measure_from =
      start + std::chrono::duration_cast<Nanos>(std::chrono::duration<double>(options.warmup_seconds));
  const double period_ns = 1e9 / rate;
  const uint64_t tickets =
      static_cast<uint64_t>((options.warmup_seconds + options.seconds) * rate);
  std::vector<std::string> subjects, data;
  for (int c = 0; c < options.callers; ++c) {
    subjects.push_back("bench-" + std::to_string(c));
    data.push_back(MakeEventData(options.event_bytes, c));
  }
  // Completions run on the ledger's sync thread (or, for a refused command, on the pacer): the
  // mutex is uncontended in practice.
  std::mutex stats_mu;
  std::vector<CallerStats> stats(1);
  std::atomic<uint64_t> outstanding{0};
  // How late the generator itself submitted each measured command (pacer thread only): a latency
  // counted from the due time includes it, so a tail made by the generator shows here.
  std::vector<uint64_t> late_ns;
  late_ns.reserve(static_cast<size_t>(options.seconds * rate) + 1);
  std::thread pacer([&] {
    for (uint64_t i = 0; i < tickets; ++i) {
      auto due = start + Nanos(static_cast<int64_t>(static_cast<double>(i) * period_ns));
      if (SteadyClock::now() < due) std::this_thread::sleep_until(due);
      if (due >= measure_from) {
        const int64_t late = std::chrono::duration_cast<Nanos>(SteadyClock::now() - due).count();
        late_ns.push_back(static_cast<uint64_t>(std::max<int64_t>(0, late)));
      }
      const size_t c = i % subjects.size();
      auto command = std::make_shared<BenchCommand>(&subjects[c], &data[c], 1);
      outstanding.fetch_add(1);
      ledger->SubmitAsync(command.get(), [&, command, due](CommandResult r) {
        if (due >= measure_from) {
          std::lock_guard<std::mutex> l(stats_mu);
          CallerStats& s = stats[0];
          if (r.status.ok()) {
            s.commands++;
            s.latencies_ns.push_back(static_cast<uint64_t>(
                std::chrono::duration_cast<Nanos>(SteadyClock::now() - due).count()));
          } else {
            s.errors++;
          }
        }
        outstanding.fetch_sub(1);
      });
    }
  });
  std::vector<std::thread> threads;
  threads.push_back(std::move(pacer));
  std::this_thread::sleep_until(measure_from);
  MetricsSample before = MetricsSample::Take(ledger);
  char name[64];
  std::snprintf(name, sizeof(name), "open loop @ %.0f/s", rate);
  Watch(ledger, name, options.seconds, options.progress);
  for (std::thread& t : threads) t.join();
  while (outstanding.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  MetricsSample after = MetricsSample::Take(ledger);
  result->name = name;
  result->callers = 1;
  result->offered_rate = rate;
  FillFromMetrics(before, after, result);
  FillLatencies(stats, result);
  if (!late_ns.empty()) {
    std::sort(late_ns.begin(), late_ns.end());
    result->generator_late_p99_ms = QuantileMs(late_ns, 0.99);
  }
  return Status::OK();
}

}  // namespace

Status RunBench(const BenchOptions& options, std::vector<BenchPhaseResult>* results) {
  results->clear();
  if (options.callers <= 0 || options.batch_callers <= 0 || options.seconds <= 0 ||
      options.batch == 0 || options.warmup_seconds < 0 || options.rate < 0) {
    return Status::InvalidArgument("bad_bench", "callers, seconds and batch must be positive");
  }
  double single_rate = 0;
  if (options.single || (options.latency && options.rate == 0)) {
    BenchPhaseResult r;
    LEDGER_RETURN_IF_ERROR(RunClosedLoop(options, kSingleThreads, options.callers, 1, &r));
    single_rate = r.events_per_second;
    results->push_back(std::move(r));
    BenchPhaseResult a;
    LEDGER_RETURN_IF_ERROR(RunAsyncClosedLoop(options, kSingleAsync, options.callers, &a));
    single_rate = std::max(single_rate, a.events_per_second);
    results->push_back(std::move(a));
  }
  if (options.batched) {
    BenchPhaseResult r;
    std::string name = "commands of " + std::to_string(options.batch) + " events";
    LEDGER_RETURN_IF_ERROR(
        RunClosedLoop(options, name, options.batch_callers, options.batch, &r));
    results->push_back(std::move(r));
  }
  if (options.latency) {
    double rate = options.rate > 0 ? options.rate : single_rate / 2;
    if (rate <= 0) return Status::Internal("the single-event phase measured no rate");
    BenchPhaseResult r;
    LEDGER_RETURN_IF_ERROR(RunOpenLoop(options, rate, &r));
    results->push_back(std::move(r));
  }
  return Status::OK();
}

}  // namespace ledger::tools

namespace ledger::tools {

namespace {

std::string Thousands(double value) {
  std::string digits = std::to_string(static_cast<uint64_t>(value + 0.5));
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

const char* Verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

}  // namespace

std::string FormatBenchReport(const BenchOptions& options,
                              const std::vector<BenchPhaseResult>& results) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof(line),
                "ledgerctl bench: %u cores, sync=true, syncs at least %lld us apart, flushes at "
                "%gx the write rate, %zu-byte event data, %zu folds, %.0f s per phase (+%.1f s "
                "warm-up)\n\n",
                std::thread::hardware_concurrency(),
                static_cast<long long>(options.sync_interval_min_us),
                options.background_write_pace, options.event_bytes,
                options.folds.size(), options.seconds, options.warmup_seconds);
  out += line;
  std::snprintf(line, sizeof(line),
                "%-26s %7s %11s %7s %7s %7s %7s %7s %8s %8s %8s %8s %8s %8s %9s %5s\n", "phase",
                "callers", "events/s", "p50 ms", "p90 ms", "p99 ms", "p999 ms", "max ms",
                "cmds/grp", "evts/grp", "groups/s", "fsyncs/s", "write ms", "fsync ms",
                "fsync p99", "cpu");
  out += line;
  for (const BenchPhaseResult& r : results) {
    std::snprintf(line, sizeof(line),
                  "%-26s %7d %11s %7.2f %7.2f %7.2f %7.2f %7.1f %8.1f %8.1f %8s %8s %8.2f %8.2f "
                  "%9s %5.2f\n",
                  r.name.c_str(), r.callers, Thousands(r.events_per_second).c_str(), r.p50_ms,
                  r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms, r.commands_per_group,
                  r.events_per_group, Thousands(r.groups_per_second).c_str(),
                  Thousands(r.syncs_per_second).c_str(), r.write_ms_mean, r.sync_ms_mean,
                  FsyncBound(r.sync_p99_ms).c_str(), r.cpu_cores);
    out += line;
    if (r.errors > 0) out += "  (" + std::to_string(r.errors) + " commands failed)\n";
    if (r.offered_rate > 0) {
      std::snprintf(line, sizeof(line),
                    "  (the generator submitted 99%% of the commands within %.2f ms of their due "
                    "time; the latencies count from the due time)\n",
                    r.generator_late_p99_ms);
      out += line;
    }
    std::snprintf(line, sizeof(line),
                  "  (%.0f%% of the fsyncs started while the last group they cover was still being "
                  "inserted into the memtables)\n",
                  100 * r.syncs_beside_write_share);
    out += line;
    if (r.slow_syncs > 0) {
      std::snprintf(line, sizeof(line),
                    "  (%llu fsyncs took over %.0f ms, the slowest up to %.0f ms: the disk "
                    "stalled, and the tail latency above includes it)\n",
                    static_cast<unsigned long long>(r.slow_syncs), 1000 * kSlowSyncSeconds,
                    r.slowest_sync_ms);
      out += line;
    }
  }
  out += "\n";
  const BenchPhaseResult* batched = nullptr;
  const BenchPhaseResult* open_loop = nullptr;
  for (const BenchPhaseResult& r : results) {
    if (r.name == kSingleThreads || r.name == kSingleAsync) {
      std::snprintf(line, sizeof(line),
                    "target: single-event commands, 64 callers >= 100,000 events/s: %s events/s "
                    "with %d callers (%s) -> %s\n",
                    Thousands(r.events_per_second).c_str(), r.callers,
                    r.name == kSingleThreads ? "a blocked thread each"
                                             : "SubmitAsync, one command in flight each",
                    Verdict(r.events_per_second >= 100000 && r.callers >= 64));
      out += line;
    } else if (r.offered_rate > 0) {
      open_loop = &r;
    } else {
      batched = &r;
    }
  }
  if (batched != nullptr) {
    std::snprintf(line, sizeof(line), "target: batched >= 300,000 events/s: %s events/s -> %s\n",
                  Thousands(batched->events_per_second).c_str(),
                  Verdict(batched->events_per_second >= 300000));
    out += line;
  }
  if (open_loop != nullptr) {
    std::snprintf(line, sizeof(line),
                  "target: p99 <= 5 ms at half the single-event rate: p99 %.2f ms at %s/s "
                  "(achieved %s/s)%s -> %s\n",
                  open_loop->p99_ms, Thousands(open_loop->offered_rate).c_str(),
                  Thousands(open_loop->events_per_second).c_str(),
                  options.rate > 0 ? " [rate given by --rate]" : "",
                  Verdict(open_loop->p99_ms <= 5.0));
    out += line;
  }
  return out;
}

}  // namespace ledger::tools
