// ledgerctl: operator tool for ledgerd. Each subcommand is a thin main over a library function in
// tools/ that returns a Status (RocksDB's tools/ldb.cc style); exit codes follow sysexits.h:
// 0 ok, 64 usage, 65 data error (verify failure, replay difference), 69 Stripe failed or refused
// (stripe-setup), 70 internal, 74 storage, 75 replay of a store whose folds ledgerd has yet to
// rebuild, 78 configuration (stripe-setup without its key, a dev secret file or a JWT setting
// ledgerd refuses, an empty LEDGER_DATA_DIR or --data-dir); 130 / 143 a replay stopped by SIGINT /
// SIGTERM.
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "daemon/cli_decimal.h"
#include "daemon/cli_usage.h"
#include "daemon/config.h"
#include "events/ledger.h"
#include "events/limits.h"
#include "http/stripe_client.h"
#include "projections/limits.h"
#include "projections/registry.h"
#include "tools/bench.h"
#include "tools/bench_admin.h"
#include "tools/bench_http.h"
#include "tools/export.h"
#include "tools/replay.h"
#include "tools/store.h"
#include "tools/stripe_setup.h"
#include "tools/token.h"
#include "tools/verify.h"

namespace ledger::tools {
namespace {

using daemon::kExitDataError;
using daemon::kExitInternal;
using daemon::kExitOk;
using daemon::kExitStorage;
using daemon::kExitUsage;
// EX_TEMPFAIL: replay found projections of another fold version, which ledgerd rebuilds at its
// next open; the store is not damaged, and a replay after that open compares them.
constexpr int kExitFoldsStale = 75;

int ExitCodeFor(const Status& s) {
  switch (s.code()) {
    case Code::kOk:
      return kExitOk;
    case Code::kInvalidArgument:
      return kExitUsage;
    case Code::kCorruption:
    case Code::kUnprocessable:
    case Code::kConflict:  // the catalog refused a change (stripe-setup: a price in use)
      return kExitDataError;
    case Code::kNotFound:
    case Code::kIOError:
    case Code::kUnavailable:
    case Code::kBusy:
      return kExitStorage;
    default:
      return kExitInternal;
  }
}

int Fail(const char* command, const Status& s) {
  std::cerr << "ledgerctl " << command << ": " << s.ToString() << "\n";
  return ExitCodeFor(s);
}

std::string Str(Position p) { return std::to_string(p.value()); }

struct Globals {
  std::string data_dir = "./data";
  bool quiet = false;
  std::ostream* progress() const { return quiet ? nullptr : &std::cerr; }
};

// --- token -------------------------------------------------------------------------------------

struct TokenArgs {
  TokenOptions token;
  std::string secret;
};

void AddToken(CLI::App& app, TokenArgs* args) {
  CLI::App* sub = app.add_subcommand(
      "token",
      "Mint an HS256 JWT with LEDGER_JWT_HS256_SECRET or the dev secret "
      "(<data-dir>/jwt-dev.secret)");
  sub->add_option("--sub", args->token.subject, "user id (sub claim)")->required();
  sub->add_option("--email", args->token.email, "email claim");
  sub->add_flag("--admin", args->token.admin, "add the admin role");
  sub->add_option("--admin-role", args->token.admin_role, "name of the admin role")
      ->envname("LEDGER_ADMIN_ROLE")
      ->capture_default_str();
  sub->add_option("--role", args->token.roles, "extra realm role (repeatable)");
  sub->add_option("--ttl", args->token.ttl_seconds, "lifetime in seconds")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  sub->add_option("--issuer,--iss", args->token.issuer, "iss claim")->envname("LEDGER_JWT_ISSUER");
  sub->add_option("--audience,--aud", args->token.audience, "aud claim")
      ->envname("LEDGER_JWT_AUDIENCE");
}

// A setting ledgerd refuses to start with ("bad_config": the dev secret file, or the secret,
// issuer, audience or admin role) is one to mend, 78 as there, not damaged data or a usage error.
int FailToken(const Status& s) {
  Fail("token", s);
  return s.problem() == "bad_config" ? daemon::kExitConfig : ExitCodeFor(s);
}

int RunToken(const Globals& globals, TokenArgs* args) {
  // The signing key is never a flag: argv is visible to every user of the machine (ps,
  // /proc/<pid>/cmdline) and stays in shell history. An empty variable was refused already
  // (CheckNoEmptySetting).
  const char* secret = std::getenv("LEDGER_JWT_HS256_SECRET");
  if (secret != nullptr) {
    args->secret = secret;
  } else {
    Status s = ReadSecretFile(daemon::DevJwtSecretPath(globals.data_dir), &args->secret);
    if (!s.ok()) return FailToken(s);
  }
  args->token.issued_at_s = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
  std::string token;
  Status s = MintHs256Token(args->token, args->secret, &token);
  if (!s.ok()) return FailToken(s);
  // A variable left exported for another instance would sign tokens that a dev-mode ledgerd on
  // this directory answers 401: say which key signed (stderr; stdout is the token), once it has.
  const std::string dev_secret = daemon::DevJwtSecretPath(globals.data_dir);
  if (secret != nullptr && ::access(dev_secret.c_str(), F_OK) == 0) {
    std::cerr << "ledgerctl token: signed with LEDGER_JWT_HS256_SECRET from the environment, not "
              << dev_secret << " (unset the variable to sign with that file)\n";
  }
  std::cout << token << "\n";
  return kExitOk;
}

// --- verify ------------------------------------------------------------------------------------

struct VerifyArgs {
  uint64_t from = 1;
  uint64_t to = 0;
  bool skip_block_checksums = false;
  std::string expect_head;  // "P:HASH", empty = none
};

// --expect-head P:HASH: a position in decimal and its hash in hex, as GET /api/v1/audit/head and
// verify print them. Position 0 (an empty log's head) only with the all-zero hash; it anchors
// nothing. False when `text` is not one.
bool ParseExpectedHead(const std::string& text, Position* position, Hash* hash) {
  const size_t colon = text.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 20) return false;
  const std::string digits = text.substr(0, colon);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
      (digits.size() > 1 && digits[0] == '0')) {
    return false;
  }
  errno = 0;
  const unsigned long long value = std::strtoull(digits.c_str(), nullptr, 10);
  if (errno != 0 || !HexDecodeHash(std::string_view(text).substr(colon + 1), hash)) return false;
  *position = Position(value);
  return value != 0 || *hash == Hash{};
}

void AddVerify(CLI::App& app, VerifyArgs* args) {
  CLI::App* sub = app.add_subcommand(
      "verify", "Verify the hash chain of the log (read-only; works while ledgerd runs)");
  sub->add_option("--from", args->from, "first position")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  sub->add_option("--to", args->to, "last position (0 = the chain head)")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  sub->add_flag("--skip-block-checksums", args->skip_block_checksums,
                "skip the second pass that re-reads the range with RocksDB block checksums");
  sub->add_option("--expect-head", args->expect_head,
                  "a chain head recorded earlier (GET /api/v1/audit/head's position and hash): "
                  "the log must reach that position and hold that hash there")
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            Position position;
            Hash hash{};
            return ParseExpectedHead(value, &position, &hash)
                       ? ""
                       : "must be POSITION:HASH (decimal, then 64 hex digits)";
          },
          "POSITION:HASH"));
}

int RunVerify(const Globals& globals, const VerifyArgs& args) {
  VerifyOptions options;
  options.data_dir = globals.data_dir;
  options.from = Position(args.from);
  options.to = Position(args.to);
  options.block_checksums = !args.skip_block_checksums;
  options.progress = globals.progress();
  if (!args.expect_head.empty() &&
      !ParseExpectedHead(args.expect_head, &options.expect_position, &options.expect_hash)) {
    return Fail("verify", Status::InvalidArgument("bad_head", "--expect-head is malformed"));
  }
  VerifyReport report;
  Status s = VerifyLog(options, &report);
  if (s.IsCorruption() && report.failed_position.value() != 0) {
    std::cout << "verify: FAILED at position " << Str(report.failed_position) << ": "
              << report.reason << "\n";
    return kExitDataError;
  }
  if (!s.ok()) return Fail("verify", s);
  if (!report.note.empty()) {
    // Damage past the range: the range's last hash, and no chain head (the store does not open).
    std::cout << "verify: OK positions " << Str(report.from) << ".." << Str(report.to) << " hash "
              << HexEncode(report.last_hash) << "; but " << report.note << "\n";
  } else if (report.to.value() == 0) {
    std::cout << "verify: OK empty log\n";
  } else if (report.to == report.head) {
    std::cout << "verify: OK positions " << Str(report.from) << ".." << Str(report.to) << " head "
              << HexEncode(report.head_hash) << "\n";
  } else {
    std::cout << "verify: OK positions " << Str(report.from) << ".." << Str(report.to) << " hash "
              << HexEncode(report.last_hash) << " (chain head at position " << Str(report.head)
              << ")\n";
  }
  if (options.expect_position.value() != 0) {
    std::cout << "verify: OK position " << Str(options.expect_position)
              << " holds the expected head's hash\n";
  }
  return kExitOk;
}

// --- export ------------------------------------------------------------------------------------

struct ExportArgs {
  uint64_t after = 0;
  uint64_t to = 0;
  uint64_t limit = 0;
  std::string source = kDefaultCloudEventSource;
};

void AddExport(CLI::App& app, ExportArgs* args) {
  CLI::App* sub =
      app.add_subcommand("export", "Write the log as NDJSON CloudEvents to stdout (read-only)");
  sub->add_option("--after", args->after, "export positions after this one")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  sub->add_option("--to", args->to,
                  "last position (0 = the head; a live ledgerd's /api/v1/audit/head is synced)")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  sub->add_option("--limit", args->limit, "at most this many events (0 = all)")
      ->capture_default_str()
      ->check(daemon::kDecimal);
  // CloudEvents `source` is a URI-reference: RFC 3986's characters only. Other bytes made every
  // line invalid (a non-UTF-8 byte: invalid JSON) or not a CloudEvent (a space, a control
  // character).
  sub->add_option("--source", args->source, "CloudEvents source (a URI-reference, 1..1024 bytes)")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& value) -> std::string {
            constexpr std::string_view kUriCharacters =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                "-._~:/?#[]@!$&'()*+,;=%";
            if (value.empty() || value.size() > 1024) return "must be 1..1024 bytes";
            return value.find_first_not_of(kUriCharacters) == std::string::npos
                       ? ""
                       : "must be a URI-reference (RFC 3986 characters only: no spaces, "
                         "control characters or non-ASCII bytes)";
          },
          "SOURCE"));
}

int RunExport(const Globals& globals, const ExportArgs& args) {
  std::unique_ptr<Ledger> ledger;
  Status s = OpenReadOnly({globals.data_dir, {}, true}, &ledger);
  if (!s.ok()) return Fail("export", s);
  ExportOptions options;
  options.after = Position(args.after);
  options.to = Position(args.to);
  options.limit = args.limit;
  options.source = args.source;
  options.progress = globals.progress();
  uint64_t exported = 0;
  std::ios::sync_with_stdio(false);
  s = ExportCloudEvents(*ledger, options, std::cout, &exported);
  if (!s.ok()) return Fail("export", s);
  if (!globals.quiet) std::cerr << "export: " << exported << " events\n";
  return kExitOk;
}

// --- replay ------------------------------------------------------------------------------------

struct ReplayArgs {
  std::string into;
};

void AddReplay(CLI::App& app, ReplayArgs* args) {
  CLI::App* sub = app.add_subcommand(
      "replay",
      "Rebuild every projection from position 1 into a fresh directory and compare digests");
  sub->add_option("--into", args->into,
                  "rebuild here and keep it (must not exist or be empty; default: a temporary "
                  "directory, removed afterwards)");
}

// SIGINT/SIGTERM during a replay: it stops at its next event and removes what it wrote (the
// temporary copy of every projection, emails included, or a partial --into store), then dies by
// that signal (its default action, raised again): a shell sees the child killed by SIGINT and
// aborts its script, as it would not for an exit status of 130. Killed by the default action at
// once, it left them behind. A second one is the
// default action (SA_RESETHAND): exit at once. A signal ignored when ledgerctl started (nohup, a
// background job of a non-interactive shell) stays ignored.
std::atomic<bool> replay_cancel{false};
volatile std::sig_atomic_t replay_signal = 0;
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

extern "C" void OnReplaySignal(int signal) {
  replay_signal = signal;
  replay_cancel.store(true);
}

void CancelReplayOnSignals() {
  for (int signal : {SIGINT, SIGTERM}) {
    struct sigaction old_action {};
    if (::sigaction(signal, nullptr, &old_action) == 0 && old_action.sa_handler == SIG_IGN) {
      continue;
    }
    struct sigaction action {};
    action.sa_handler = OnReplaySignal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND;  // no SA_RESTART: a blocked write returns
    ::sigaction(signal, &action, nullptr);
  }
}

// Ends ledgerctl by `signal`'s default action (SIGINT, SIGTERM: termination), what was written
// to stdout flushed first.
[[noreturn]] void DieBySignal(int signal) {
  std::cout.flush();
  ::signal(signal, SIG_DFL);
  ::raise(signal);
  std::_Exit(128 + signal);  // not reached
}

// A replay's exit status once ReplayProjections has returned other than stopped by a signal:
// `code`, unless SIGINT/SIGTERM came after its last check of the flag -- in the last rows of the
// final digest, or while its lines were written out (the flush below, which a pipe's reader can
// hold up) -- then it dies by that signal as a stopped replay does: it exited 0, 65 or 75 and a
// calling script went on. The handlers are set back to the default first, so a signal after the
// check ends the process at once. A finished --into store is whole and kept.
int ReplayExit(const ReplayArgs& args, const Status& s, int code) {
  std::cout.flush();
  for (int signal : {SIGINT, SIGTERM}) {
    struct sigaction action {};
    if (::sigaction(signal, nullptr, &action) == 0 && action.sa_handler == OnReplaySignal) {
      ::signal(signal, SIG_DFL);
    }
  }
  if (replay_signal == 0) return code;
  std::cerr << "ledgerctl replay: " << (replay_signal == SIGINT ? "SIGINT" : "SIGTERM")
            << " once the replay had ended; "
            << (args.into.empty() ? std::string("its temporary store was removed")
                : s.ok()          ? args.into + " is whole and kept"
                                  : "what it wrote in " + args.into + " was removed")
            << "\n";
  DieBySignal(replay_signal);
}

int RunReplay(const Globals& globals, const ReplayArgs& args) {
  ReplayOptions options;
  options.data_dir = globals.data_dir;
  options.into = args.into;
  options.folds = projections::AllFolds();
  options.progress = globals.progress();
  options.cancel = &replay_cancel;
  CancelReplayOnSignals();
  ReplayReport report;
  Status s = ReplayProjections(options, &report);
  if (s.problem() == "replay_cancelled" && replay_signal != 0) {
    std::cerr << "ledgerctl replay: stopped on " << (replay_signal == SIGINT ? "SIGINT" : "SIGTERM")
              << "; "
              << (args.into.empty() ? "its temporary store" : "what it wrote in " + args.into)
              << " was removed\n";
    DieBySignal(replay_signal);
  }
  if (!s.ok()) return ReplayExit(args, s, Fail("replay", s));
  std::cout << "replay: live digest    " << HexEncode(report.live_digest) << " at position "
            << Str(report.position) << "\n"
            << "replay: rebuilt digest " << HexEncode(report.rebuilt_digest) << " ("
            << report.events << " events, " << options.folds.size() << " projections"
            << (args.into.empty() ? "" : ", kept in " + args.into) << ")\n"
            << "replay: live streams digest    " << HexEncode(report.live_streams_digest)
            << " (the per-subject index)\n"
            << "replay: rebuilt streams digest " << HexEncode(report.rebuilt_streams_digest)
            << "\n";
  // A store last opened read-write by another build (or not since a rebuild was cut short): its
  // rows of a changed fold, or of a fold that build did not have, differ from this build's replay
  // by design. Said as such, not as a
  // difference an operator would take for damage.
  for (const StaleFold& fold : report.stale_folds) {
    std::cout << "replay: fold " << fold.name << ": store has "
              << (fold.missing ? std::string("no rows for it (last opened by a build without "
                                             "this fold)")
                  : fold.recorded ? "version " + std::to_string(fold.store_version)
                                  : std::string("no version recorded (written before fold "
                                                "versions, or its rebuild was interrupted)"))
              << ", this build " << fold.build_version << "; "
              << (fold.recorded && fold.store_version > fold.build_version
                      ? "replay it with the ledgerctl of the build that wrote it\n"
                      : "open it with ledgerd once to rebuild\n");
  }
  if (!report.equal && (!report.differing_folds.empty() || report.stale_folds.empty())) {
    std::cout << "replay: DIFFERENT projections:";
    for (const std::string& name : report.differing_folds) std::cout << " " << name;
    std::cout << "\n";
    return ReplayExit(args, s, kExitDataError);
  }
  if (!report.stale_folds.empty()) {
    std::cout << "replay: STALE projections:";
    for (const StaleFold& fold : report.stale_folds) std::cout << " " << fold.name;
    std::cout << " (another version of their fold wrote them; not compared)\n";
    return ReplayExit(args, s, kExitFoldsStale);
  }
  std::cout << "replay: OK projections equal a replay of the log\n";
  return ReplayExit(args, s, kExitOk);
}

// --- bench -------------------------------------------------------------------------------------

struct BenchArgs {
  BenchOptions bench;
  std::string mode = "all";
  HttpBenchOptions http;
  CLI::App* http_command = nullptr;
  AdminBenchOptions admin;
  CLI::App* admin_command = nullptr;
};

// Seconds and rates: decimal digits, a fraction allowed ("0.5"), as kDecimal takes integers
// (CLI11 alone reads "0x10", "1e3", "inf" and "nan", which every range check lets through).
const CLI::Validator kDecimalFraction(
    [](std::string& value) -> std::string {
      const size_t dot = value.find('.');
      const std::string whole = value.substr(0, dot);
      const std::string fraction = dot == std::string::npos ? "1" : value.substr(dot + 1);
      auto digits = [](const std::string& text) {
        return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
          return c >= '0' && c <= '9';
        });
      };
      return digits(whole) && digits(fraction) && (whole.size() == 1 || whole[0] != '0')
                 ? std::string()
                 : "must be a non-negative decimal number without leading zeros";
    },
    "DECIMAL");

void AddBench(CLI::App& app, BenchArgs* args) {
  CLI::App* sub = app.add_subcommand(
      "bench", "Benchmark the append path in-process on fresh stores (sync=true)");
  // Not bound to LEDGER_DATA_DIR: bench never writes into a live store's directory.
  sub->add_option("--data-dir", args->bench.base_dir,
                  "create the benchmark stores under this directory (default: system temp)");
  // Bounded by what one process runs (a thread per caller), by what the ledger takes (events per
  // command, bytes per event's data) and by a day: "-1" is not 2^64 bytes of event data.
  sub->add_option("--callers", args->bench.callers, "concurrent callers")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  sub->add_option("--batch-callers", args->bench.batch_callers, "callers in the batch phase")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  sub->add_option("--seconds", args->bench.seconds, "measured seconds per phase")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 86'400.0))
      ->capture_default_str();
  sub->add_option("--warmup", args->bench.warmup_seconds, "warm-up seconds per phase")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 3'600.0))
      ->capture_default_str();
  sub->add_option("--batch", args->bench.batch, "events per command in the batch phase")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(size_t{1}, ledger::limits::kCommandEventsMax))
      ->capture_default_str();
  sub->add_option("--event-bytes", args->bench.event_bytes, "bytes of JSON data per event")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(size_t{1}, ledger::limits::kEventDataBytesMax))
      ->capture_default_str();
  sub->add_option("--mode", args->mode, "phases to run")
      ->check(CLI::IsMember({"single", "batch", "latency", "all"}))
      ->capture_default_str();
  sub->add_option("--rate", args->bench.rate,
                  "open-loop rate for the latency phase (default: half the single-event rate)")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 10'000'000.0));
  sub->add_option("--sync-interval-min-us", args->bench.sync_interval_min_us,
                  "least microseconds between the starts of two WAL syncs, as ledgerd's "
                  "--sync-interval-min-us (0 = no pacing)")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(int64_t{0}, int64_t{100'000}))
      ->capture_default_str();
  sub->add_option("--background-write-pace", args->bench.background_write_pace,
                  "RocksDB's flushes and compactions write at most this multiple of the "
                  "ledger's write rate, as ledgerd (0 = as fast as the disk takes them)")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  sub->add_option("--settle", args->bench.settle_seconds,
                  "before each phase, wait at most this long for the disk to settle (0 = no wait)")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 600.0))
      ->capture_default_str();
  // `ledgerctl bench http`: against a running ledgerd (tools/bench_http.h).
  CLI::App* http = sub->add_subcommand(
      "http",
      "Load a running ledgerd's POST /api/v1/usage/consume (fresh key per request), or with "
      "--batch N its POST /api/v1/usage/events (N fresh items per body)");
  http->add_option("--url", args->http.url, "ledgerd's base URL, e.g. http://127.0.0.1:8084")
      ->required();
  http->add_option("--token", args->http.token, "service token (or a user's JWT)")
      ->envname("LEDGER_BENCH_TOKEN");
  http->add_option("--user", args->http.user_id, "user_id to consume for")->capture_default_str();
  http->add_option("--service", args->http.service, "service to consume")->capture_default_str();
  // The same number rules as bench's own ("nan" seconds or "010" connections run otherwise).
  http->add_option("--rate", args->http.rate, "open-loop requests/s (0 = closed loop)")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 10'000'000.0))
      ->capture_default_str();
  http->add_option("--connections", args->http.connections, "keep-alive connections")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  http->add_option("--seconds", args->http.seconds, "measured seconds")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 86'400.0))
      ->capture_default_str();
  http->add_option("--warmup", args->http.warmup_seconds, "warm-up seconds (not measured)")
      ->check(kDecimalFraction)
      ->check(CLI::Range(0.0, 3'600.0))
      ->capture_default_str();
  http->add_option("--batch", args->http.batch,
                   "items per POST /api/v1/usage/events body (0 = consume instead)")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(size_t{0}, projections::limits::kUsageBatchItemsMax))
      ->capture_default_str();
  http->add_option("--batch-users", args->http.batch_users,
                   "users per batch body (<user>-0 ... <user>-<N-1>)")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  args->http_command = http;
  // `ledgerctl bench admin`: the admin views over seeded subscribers (tools/bench_admin.h).
  CLI::App* admin = sub->add_subcommand(
      "admin", "Time the admin analytics and list views over seeded subscribers");
  admin->add_option("--subscribers", args->admin.subscribers, "subscribers to seed")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 10'000'000))
      ->capture_default_str();
  admin->add_option("--rounds", args->admin.rounds, "runs of each view")
      ->check(daemon::kDecimal)
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  args->admin_command = admin;
}

int RunAdminBenchCommand(const Globals& globals, BenchArgs* args) {
  args->admin.base_dir = args->bench.base_dir;
  args->admin.progress = globals.progress();
  AdminBenchResult result;
  Status s = RunAdminBench(args->admin, &result);
  if (!s.ok()) return Fail("bench admin", s);
  std::cout << FormatAdminBenchReport(args->admin, result) << std::flush;
  return kExitOk;
}

int RunHttpBenchCommand(const BenchArgs& args) {
  HttpBenchResult result;
  Status s = RunHttpBench(args.http, &result);
  if (!s.ok()) return Fail("bench http", s);
  std::cout << FormatHttpBenchReport(args.http, result) << std::flush;
  return kExitOk;
}

int RunBenchCommand(const Globals& globals, BenchArgs* args) {
  BenchOptions& options = args->bench;
  options.single = args->mode == "single" || args->mode == "all";
  options.batched = args->mode == "batch" || args->mode == "all";
  options.latency = args->mode == "latency" || args->mode == "all";
  options.folds = projections::AllFolds();
  options.progress = globals.progress();
  std::vector<BenchPhaseResult> results;
  Status s = RunBench(options, &results);
  if (!s.ok()) return Fail("bench", s);
  std::cout << FormatBenchReport(options, results) << std::flush;
  return kExitOk;
}

// --- stripe-setup ------------------------------------------------------------------------------

// sysexits.h EX_UNAVAILABLE: Stripe failed or refused (nothing is recorded for what failed).
constexpr int kExitServiceUnavailable = 69;

struct StripeSetupArgs {
  std::string api_base = "https://api.stripe.com";
  std::string api_version = std::string(http::kStripeApiVersion);
  bool dry_run = false;
};

void AddStripeSetup(CLI::App& app, StripeSetupArgs* args) {
  CLI::App* sub = app.add_subcommand(
      "stripe-setup",
      "Create the plan catalog's Stripe products and prices (idempotent) and record their ids; "
      "the key comes from STRIPE_SECRET_KEY; ledgerd must be stopped");
  sub->add_option("--api-base", args->api_base, "Stripe API base URL")
      ->envname("STRIPE_API_BASE")
      ->capture_default_str();
  // Set but empty, as ledgerd takes it: the account's default, as `--api-version ""`.
  if (const char* version = std::getenv("STRIPE_API_VERSION");
      version != nullptr && *version == '\0') {
    args->api_version.clear();
  }
  sub->add_option("--api-version", args->api_version,
                  "Stripe-Version sent with every call (\"\" = the account's default)")
      ->envname("STRIPE_API_VERSION")
      ->capture_default_str();
  sub->add_flag("--dry-run", args->dry_run, "only report what would be created");
}

int RunStripeSetupCommand(const Globals& globals, const StripeSetupArgs& args) {
  // A Stripe call cut off at its deadline (http/call_deadline.h) or reset by the peer can leave a
  // write to a shut socket: EPIPE and a failed call, not a silent death by SIGPIPE (exit 141).
  ::signal(SIGPIPE, SIG_IGN);
  StripeSetupRunOptions options;
  options.data_dir = globals.data_dir;
  options.stripe.api_base = args.api_base;
  options.stripe.api_version = args.api_version;
  // The key is never a flag: argv is visible to every user of the machine.
  const char* key = std::getenv("STRIPE_SECRET_KEY");
  if (key == nullptr || *key == '\0') {
    std::cerr << "ledgerctl stripe-setup: STRIPE_SECRET_KEY is not set\n";
    return daemon::kExitConfig;
  }
  options.stripe.secret_key = key;
  options.setup.dry_run = args.dry_run;
  options.setup.progress = globals.progress();
  StripeSetupReport report;
  Status s = RunStripeSetup(options, &report);
  if (!s.ok()) {
    Fail("stripe-setup", s);
    // Stripe failed or refused (69); the catalog's own conflict (stripe_price_in_use, a 409 of
    // the ledger) is a data error like the others.
    if (s.problem() == "stripe_config") return daemon::kExitConfig;
    if ((s.problem().rfind("stripe_", 0) == 0 || s.problem() == "payment_failed") &&
        s.code() != Code::kConflict) {
      return kExitServiceUnavailable;
    }
    return ExitCodeFor(s);
  }
  std::cout << FormatStripeSetupReport(report, args.dry_run);
  return kExitOk;
}

// CLI11 takes an empty variable for an unset one: `LEDGER_DATA_DIR=$DATA ledgerctl stripe-setup`
// with DATA unset opened (and created) ./data, seeded its catalog and called Stripe; an empty
// LEDGER_JWT_HS256_SECRET signed with ./data's dev secret, an empty LEDGER_JWT_ISSUER or
// LEDGER_JWT_AUDIENCE signed without the claim and an empty LEDGER_ADMIN_ROLE with "admin".
// Refused as ledgerd refuses them (daemon/config.cc, 78), before anything is opened; so is the
// flag given empty. bench reads none of them (its --data-dir is its own).
int CheckNoEmptySetting(const CLI::App& app, const Globals& globals) {
  const CLI::App* sub = app.get_subcommands().front();
  if (sub->get_name() == "bench") return kExitOk;
  auto refuse = [](const std::string& why) {
    std::cerr << "ledgerctl: " << why << "\n";
    return daemon::kExitConfig;
  };
  const char* data_dir = std::getenv("LEDGER_DATA_DIR");
  if (app.count("--data-dir") + sub->count("--data-dir") > 0) {
    if (globals.data_dir.empty()) {
      return refuse("--data-dir is given empty (leave it out for ./data)");
    }
  } else if (data_dir != nullptr && *data_dir == '\0') {
    return refuse("LEDGER_DATA_DIR is set but empty (unset it for ./data)");
  }
  if (sub->get_name() != "token") return kExitOk;
  const char* secret = std::getenv("LEDGER_JWT_HS256_SECRET");
  if (secret != nullptr && *secret == '\0') {
    return refuse("LEDGER_JWT_HS256_SECRET is set but empty (unset it for the dev secret file)");
  }
  for (auto [name, flag] : {std::pair{"LEDGER_JWT_ISSUER", "--issuer"},
                            std::pair{"LEDGER_JWT_AUDIENCE", "--audience"},
                            std::pair{"LEDGER_ADMIN_ROLE", "--admin-role"}}) {
    if (Status s = daemon::CheckSettingNotEmpty(*sub, name, flag); !s.ok()) {
      return refuse(s.message());
    }
  }
  return kExitOk;
}

int Main(int argc, char** argv) {
  // What the store's code logs (a read-only open's warnings) goes to stderr: stdout is the
  // command's output (export's NDJSON, a token).
  spdlog::set_default_logger(spdlog::stderr_logger_mt("ledgerctl"));
  CLI::App app{"ledgerctl: tokens, verify, export, replay and bench for ledgerd"};
  app.require_subcommand(1);
  // What no option takes is left in remaining() (every subcommand inherits this), not thrown
  // with CLI11's message, which repeated it: a mistyped flag's argument is its value.
  app.allow_extras();
  Globals globals;
  app.add_option("--data-dir", globals.data_dir, "ledgerd's data directory")
      ->envname("LEDGER_DATA_DIR")
      ->capture_default_str();
  app.add_flag("-q,--quiet", globals.quiet, "no progress lines on stderr");
  TokenArgs token;
  VerifyArgs verify;
  ExportArgs export_args;
  ReplayArgs replay;
  BenchArgs bench;
  StripeSetupArgs stripe_setup;
  AddToken(app, &token);
  AddVerify(app, &verify);
  AddExport(app, &export_args);
  AddReplay(app, &replay);
  AddBench(app, &bench);
  AddStripeSetup(app, &stripe_setup);
  // `ledgerctl verify --data-dir D` as well as `ledgerctl --data-dir D verify`. LEDGER_DATA_DIR is
  // read by the root's option only: CLI11 fills an option from its environment variable in every
  // subcommand, used or not, and runs their callbacks after the root's, so a copy with the
  // variable would overwrite the flag the user gave.
  for (CLI::App* sub : app.get_subcommands({})) {
    sub->add_flag("-q,--quiet", globals.quiet, "no progress lines on stderr");
    if (sub->get_name() == "bench") continue;  // bench has its own --data-dir
    sub->add_option("--data-dir", globals.data_dir, "ledgerd's data directory");
  }
  // Usage errors are told as ledgerd tells them (daemon/cli_usage.h): options by name, never
  // the arguments after them.
  try {
    app.name(argc > 0 ? argv[0] : "ledgerctl");  // the help's usage line, as parse(argc, argv) did
    app.parse(daemon::ReversedArguments(argc, argv));
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? kExitOk : kExitUsage;  // --help
    std::cerr << "ledgerctl: " << daemon::UsageErrorMessage(e) << "\n";
    return kExitUsage;
  }
  if (const std::vector<std::string> unexpected = app.remaining(true); !unexpected.empty()) {
    std::cerr << "ledgerctl: " << daemon::UnexpectedArguments(unexpected) << "\n";
    return kExitUsage;
  }
  if (const int code = CheckNoEmptySetting(app, globals); code != kExitOk) return code;
  try {
    if (app.got_subcommand("token")) return RunToken(globals, &token);
    if (app.got_subcommand("verify")) return RunVerify(globals, verify);
    if (app.got_subcommand("export")) return RunExport(globals, export_args);
    if (app.got_subcommand("replay")) return RunReplay(globals, replay);
    if (app.got_subcommand("bench")) {
      if (bench.http_command->parsed()) return RunHttpBenchCommand(bench);
      if (bench.admin_command->parsed()) return RunAdminBenchCommand(globals, &bench);
      return RunBenchCommand(globals, &bench);
    }
    if (app.got_subcommand("stripe-setup")) return RunStripeSetupCommand(globals, stripe_setup);
  } catch (const std::exception& e) {
    std::cerr << "ledgerctl: internal error: " << e.what() << "\n";
    return kExitInternal;
  }
  return kExitUsage;
}

}  // namespace
}  // namespace ledger::tools

int main(int argc, char** argv) {
  // Files ledgerctl creates are its user's alone, as ledgerd's (daemon/main.cc): stripe-setup's
  // writable open of the data directory replays ledgerd's log into a new table file (moved, never
  // rewritten, by the events family's compactions) and writes a MANIFEST and a log, and replay
  // --into writes a copy of every projection, emails included -- 0644 under the usual umask.
  umask(0077);
  return ledger::tools::Main(argc, argv);
}
