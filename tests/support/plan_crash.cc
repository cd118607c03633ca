#include "tests/support/plan_crash.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <unordered_map>

#include "tests/support/daemon_process.h"

namespace ledger::testing {

namespace {

constexpr char kPlansPath[] = "/api/v1/subscriptions/plans";
constexpr size_t kErrorsKept = 20;
constexpr char kZeroHash[] = "0000000000000000000000000000000000000000000000000000000000000000";

bool ParsePosition(const std::string& text, uint64_t* out) {
  if (text.empty() || text.size() > 20 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  *out = std::stoull(text);
  return true;
}

void AddError(CrashCheckReport* report, std::string error) {
  if (report->errors.size() < kErrorsKept) report->errors.push_back(std::move(error));
}

// What the checker needs of one logged event.
struct LoggedEvent {
  std::string type;
  std::string subject;
  std::string plan_id;   // data.plan.id, "" when absent
  int64_t version = -1;  // data.plan.price_monthly_cents
  std::string description;
  std::string hash;
};

std::string GetString(const rapidjson::Value& object, const char* name) {
  if (!object.IsObject()) return "";
  auto it = object.FindMember(name);
  return it != object.MemberEnd() && it->value.IsString() ? it->value.GetString() : "";
}

LoggedEvent ToLoggedEvent(const rapidjson::Value& e) {
  LoggedEvent out;
  out.type = GetString(e, "type");
  out.subject = GetString(e, "subject");
  out.hash = GetString(e, "hash");
  auto data = e.FindMember("data");
  if (data == e.MemberEnd() || !data->value.IsObject()) return out;
  auto plan = data->value.FindMember("plan");
  if (plan == data->value.MemberEnd() || !plan->value.IsObject()) return out;
  out.plan_id = GetString(plan->value, "id");
  out.description = GetString(plan->value, "description");
  auto price = plan->value.FindMember("price_monthly_cents");
  if (price != plan->value.MemberEnd() && price->value.IsInt64())
    out.version = price->value.GetInt64();
  return out;
}

// Pages through GET /api/v1/events, checking positions and links; fills `log`.
void ScanLog(TestHttpClient* admin, CrashCheckReport* report,
             std::unordered_map<uint64_t, LoggedEvent>* log) {
  uint64_t after = 0;
  std::string last_hash = kZeroHash;
  for (int page = 0; page < 1'000'000; ++page) {
    HttpReply r = admin->Get("/api/v1/events?limit=1000&after=" + std::to_string(after));
    rapidjson::Document doc = r.Json();
    if (r.status != 200 || doc.HasParseError() || !doc.IsObject() || !doc.HasMember("events") ||
        !doc["events"].IsArray()) {
      ++report->read_errors;
      AddError(report, "GET /api/v1/events after=" + std::to_string(after) + ": " +
                           std::to_string(r.status) + " " + r.error + " " + r.body.substr(0, 200));
      return;
    }
    const auto& events = doc["events"].GetArray();
    if (events.Empty()) return;
    for (const auto& e : events) {
      if (!e.IsObject() || !e.HasMember("position") || !e["position"].IsUint64()) {
        ++report->read_errors;
        AddError(report, "an event without a position after " + std::to_string(after));
        return;
      }
      const uint64_t position = e["position"].GetUint64();
      if (position != after + 1) {
        ++report->chain_errors;
        AddError(report,
                 "gap: position " + std::to_string(position) + " follows " + std::to_string(after));
      }
      LoggedEvent event = ToLoggedEvent(e);
      if (GetString(e, "prev_hash") != last_hash) {
        ++report->chain_errors;
        AddError(report, "position " + std::to_string(position) +
                             ": prev_hash is not the previous event's hash");
      }
      last_hash = event.hash;
      ++report->events_scanned;
      report->head = position;
      (*log)[position] = std::move(event);
      after = position;
    }
  }
}

void CheckAuditHead(TestHttpClient* admin, const std::unordered_map<uint64_t, LoggedEvent>& log,
                    CrashCheckReport* report) {
  HttpReply r = admin->Get("/api/v1/audit/head");
  rapidjson::Document doc = r.Json();
  if (r.status != 200 || doc.HasParseError() || !doc.IsObject() || !doc.HasMember("position") ||
      !doc["position"].IsUint64()) {
    ++report->read_errors;
    AddError(report, "GET /api/v1/audit/head: " + std::to_string(r.status) + " " + r.body);
    return;
  }
  const uint64_t position = doc["position"].GetUint64();
  auto it = log.find(report->head);
  const std::string hash = GetString(doc, "hash");
  if (position != report->head || (it != log.end() && it->second.hash != hash)) {
    ++report->chain_errors;
    AddError(report, "audit head " + std::to_string(position) + " " + hash +
                         " is not the last event " + std::to_string(report->head));
  }
}

const char* KindName(AckedPlanWrite::Kind kind) {
  return kind == AckedPlanWrite::Kind::kCreate ? "create" : "update";
}

std::string Describe(const AckedPlanWrite& w) {
  return std::string(KindName(w.kind)) + " " + w.plan_id + " v" + std::to_string(w.version) +
         " acknowledged at position " + std::to_string(w.position);
}

void CheckAcknowledgedEvents(const std::vector<AckedPlanWrite>& acknowledged,
                             const std::unordered_map<uint64_t, LoggedEvent>& log,
                             CrashCheckReport* report) {
  std::set<uint64_t> positions;
  for (const AckedPlanWrite& w : acknowledged) {
    ++report->acknowledged_checked;
    if (!positions.insert(w.position).second) {
      ++report->chain_errors;
      AddError(report, Describe(w) + ": another acknowledgement named the same position");
    }
    auto it = log.find(w.position);
    if (it == log.end()) {
      ++report->lost;
      AddError(report,
               Describe(w) + ": no event there (head " + std::to_string(report->head) + ")");
      continue;
    }
    const LoggedEvent& e = it->second;
    const char* type =
        w.kind == AckedPlanWrite::Kind::kCreate ? "plan.created.v1" : "plan.updated.v1";
    if (e.type != type || e.subject != "plan:" + w.plan_id || e.plan_id != w.plan_id ||
        e.version != w.version || e.description != w.marker) {
      ++report->lost;
      AddError(report, Describe(w) + ": the event there is " + e.type + " " + e.subject + " v" +
                           std::to_string(e.version) + " '" + e.description + "'");
    }
  }
}

// Per plan: acknowledged versions increase with positions, and the plan exists at a version no
// older than the last acknowledged one.
void CheckPlans(TestHttpClient* admin, const std::vector<AckedPlanWrite>& acknowledged,
                CrashCheckReport* report) {
  std::map<std::string, std::vector<const AckedPlanWrite*>> by_plan;
  for (const AckedPlanWrite& w : acknowledged) by_plan[w.plan_id].push_back(&w);
  for (auto& [plan_id, writes] : by_plan) {
    std::sort(writes.begin(), writes.end(), [](const AckedPlanWrite* a, const AckedPlanWrite* b) {
      return a->version < b->version;
    });
    for (size_t i = 1; i < writes.size(); ++i) {
      if (writes[i]->position <= writes[i - 1]->position) {
        ++report->chain_errors;
        AddError(report,
                 Describe(*writes[i]) + ": not after v" + std::to_string(writes[i - 1]->version));
      }
    }
    ++report->plans_checked;
    HttpReply r = admin->Get(std::string(kPlansPath) + "/" + plan_id);
    rapidjson::Document doc = r.Json();
    if (r.status != 200 || doc.HasParseError() || !doc.IsObject()) {
      ++report->lost;
      AddError(report, "plan " + plan_id + " (acknowledged up to v" +
                           std::to_string(writes.back()->version) + "): GET answered " +
                           std::to_string(r.status) + " " + r.body.substr(0, 200));
      continue;
    }
    auto price = doc.FindMember("price_monthly_cents");
    const int64_t version =
        price != doc.MemberEnd() && price->value.IsInt64() ? price->value.GetInt64() : -1;
    if (version < writes.back()->version) {
      ++report->lost;
      AddError(report, "plan " + plan_id + " is at v" + std::to_string(version) +
                           ", acknowledged up to v" + std::to_string(writes.back()->version));
    }
  }
}

void ProbeIdempotency(TestHttpClient* admin, const std::vector<AckedPlanWrite>& acknowledged,
                      const CrashCheckOptions& options, CrashCheckReport* report) {
  std::vector<size_t> order(acknowledged.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(options.seed);
  std::shuffle(order.begin(), order.end(), rng);
  order.resize(std::min(order.size(), options.idempotency_probes_max));
  for (size_t index : order) {
    const AckedPlanWrite& w = acknowledged[index];
    ++report->idempotency_probes;
    httplib::Headers headers = {{"Idempotency-Key", w.idempotency_key}};
    HttpReply r =
        w.kind == AckedPlanWrite::Kind::kCreate
            ? admin->Post(kPlansPath, w.request_body, headers)
            : admin->Put(std::string(kPlansPath) + "/" + w.plan_id, w.request_body, headers);
    if (r.status != w.status || r.body != w.response_body ||
        r.Header("X-Ledger-Position") != std::to_string(w.position) ||
        r.Header("Idempotent-Replayed") != "true") {
      ++report->idempotency_lost;
      AddError(report, Describe(w) + ": the retry with its key answered " +
                           std::to_string(r.status) + " at position " +
                           r.Header("X-Ledger-Position") + " replayed='" +
                           r.Header("Idempotent-Replayed") + "'");
    }
  }
}

std::string Tail(const std::string& text) {
  return text.size() <= 2000 ? text : "..." + text.substr(text.size() - 2000);
}

}  // namespace

// ---- PlanLoad --------------------------------------------------------------------------------

PlanLoad::PlanLoad(PlanLoadOptions options) : options_(std::move(options)) {}

PlanLoad::~PlanLoad() {
  Stop();
  Join();
}

std::string PlanLoad::PlanBody(const std::string& plan_id, int64_t version,
                               const std::string& marker) {
  return R"({"id":")" + plan_id + R"(","display_name":"Crash )" + plan_id + R"(","description":")" +
         marker + R"(","price_monthly_cents":)" + std::to_string(version) +
         R"(,"api_calls_limit":1000,"services":["chat","search"],"features":["crash test"]})";
}

void PlanLoad::Start() {
  running_.store(options_.threads);
  for (int t = 0; t < options_.threads; ++t) threads_.emplace_back([this, t] { Run(t); });
}

void PlanLoad::Join() {
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

bool PlanLoad::WaitForAcknowledged(size_t count, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (acknowledged_count_.load() < count && running_.load() > 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return acknowledged_count_.load() >= count;
}

void PlanLoad::Run(int thread) {
  TestHttpClient client("127.0.0.1", options_.port);
  client.set_keep_alive(true);
  client.set_bearer(options_.admin_token);
  const std::string plan_id = options_.tag + "-t" + std::to_string(thread);
  for (int64_t version = 1; !stop_.load(); ++version) {
    AckedPlanWrite w;
    w.kind = version == 1 ? AckedPlanWrite::Kind::kCreate : AckedPlanWrite::Kind::kUpdate;
    w.plan_id = plan_id;
    w.version = version;
    w.marker = "crash-" + plan_id + "-v" + std::to_string(version);
    w.idempotency_key = "key-" + w.marker;
    w.request_body = PlanBody(plan_id, version, w.marker);
    httplib::Headers headers = {{"Idempotency-Key", w.idempotency_key}};
    HttpReply r =
        version == 1 ? client.Post(kPlansPath, w.request_body, headers)
                     : client.Put(std::string(kPlansPath) + "/" + plan_id, w.request_body, headers);
    if (r.status == 0) {
      transport_errors_.fetch_add(1);
      break;
    }
    const int expected = version == 1 ? 201 : 200;
    if (r.status != expected || !ParsePosition(r.Header("X-Ledger-Position"), &w.position)) {
      std::lock_guard<std::mutex> lock(mu_);
      unexpected_.push_back(Describe(w) + ": " + std::to_string(r.status) + " " +
                            r.Header("X-Ledger-Position") + " " + r.body.substr(0, 300));
      break;
    }
    w.status = r.status;
    w.response_body = std::move(r.body);
    {
      std::lock_guard<std::mutex> lock(mu_);
      acknowledged_.push_back(std::move(w));
    }
    acknowledged_count_.fetch_add(1);
  }
  running_.fetch_sub(1);
}

std::vector<AckedPlanWrite> PlanLoad::acknowledged() const {
  std::lock_guard<std::mutex> lock(mu_);
  return acknowledged_;
}

std::vector<std::string> PlanLoad::unexpected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return unexpected_;
}

// ---- The checker -------------------------------------------------------------------------------

std::string CrashCheckReport::Summary() const {
  std::string out =
      "head=" + std::to_string(head) + " events=" + std::to_string(events_scanned) +
      " acknowledged=" + std::to_string(acknowledged_checked) +
      " plans=" + std::to_string(plans_checked) +
      " idempotency_probes=" + std::to_string(idempotency_probes) +
      " lost=" + std::to_string(lost) + " idempotency_lost=" + std::to_string(idempotency_lost) +
      " chain_errors=" + std::to_string(chain_errors) +
      " read_errors=" + std::to_string(read_errors) +
      " verify_exit=" + std::to_string(verify_exit) + " replay_exit=" + std::to_string(replay_exit);
  for (const std::string& e : errors) out += "\n  " + e;
  if (ledgerctl_ran && verify_exit != 0) out += "\n  ledgerctl verify:\n" + Tail(verify_output);
  if (ledgerctl_ran && replay_exit != 0) out += "\n  ledgerctl replay:\n" + Tail(replay_output);
  return out;
}

CrashCheckReport CheckAcknowledgedPlans(TestHttpClient* admin,
                                        const std::vector<AckedPlanWrite>& acknowledged,
                                        const CrashCheckOptions& options) {
  CrashCheckReport report;
  std::unordered_map<uint64_t, LoggedEvent> log;
  ScanLog(admin, &report, &log);
  CheckAuditHead(admin, log, &report);
  CheckAcknowledgedEvents(acknowledged, log, &report);
  CheckPlans(admin, acknowledged, &report);
  ProbeIdempotency(admin, acknowledged, options, &report);
  if (!options.data_dir.empty()) {
    report.ledgerctl_ran = true;
    ProcessOutput verify = RunLedgerctlBinary({"verify", "--data-dir", options.data_dir});
    report.verify_exit = verify.exit_code;
    report.verify_output = verify.out + verify.err;
    ProcessOutput replay = RunLedgerctlBinary({"replay", "--data-dir", options.data_dir});
    report.replay_exit = replay.exit_code;
    report.replay_output = replay.out + replay.err;
  }
  return report;
}

}  // namespace ledger::testing
