#include "tests/support/fake_lago.h"

#include <httplib.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <sstream>

namespace ledger::testing {

namespace {

constexpr size_t kBatchMax = 100;

std::string Compact(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  v.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string Problem(int status, const std::string& error, const std::string& code,
                    const std::string& details_json) {
  std::string out = "{\"status\":" + std::to_string(status) + ",\"error\":\"" + error + "\"";
  if (!code.empty()) out += ",\"code\":\"" + code + "\"";
  if (!details_json.empty()) out += ",\"error_details\":" + details_json;
  return out + "}";
}

std::string ValidationFailure(const std::map<size_t, std::string>& per_index) {
  std::string details = "{";
  for (const auto& [index, errors] : per_index) {
    if (details.size() > 1) details += ",";
    details += "\"" + std::to_string(index) + "\":" + errors;
  }
  details += "}";
  return Problem(422, "Unprocessable Entity", "validation_errors", details);
}

bool NonEmptyString(const rapidjson::Value& event, const char* name) {
  auto it = event.FindMember(name);
  return it != event.MemberEnd() && it->value.IsString() && it->value.GetStringLength() > 0;
}

// Lago: Time.zone.at(Float(timestamp)); we accept what Float() would (an integer, a number with
// a fraction, a numeric string). `*ms`: the time in Unix milliseconds (rounded).
bool ReadTimestamp(const rapidjson::Value& event, int64_t* ms) {
  auto it = event.FindMember("timestamp");
  if (it == event.MemberEnd()) return false;
  if (it->value.IsInt64()) {
    *ms = it->value.GetInt64() * 1000;
    return true;
  }
  double v = 0;
  if (it->value.IsNumber()) {
    v = it->value.GetDouble();
  } else if (it->value.IsString()) {
    char* end = nullptr;
    v = std::strtod(it->value.GetString(), &end);
    if (end == it->value.GetString() || *end != '\0') return false;
  } else {
    return false;
  }
  *ms = std::llround(v * 1000);
  return true;
}

// The per-event errors Lago's validation would give, as a JSON object; "" when valid.
std::string EventErrors(const rapidjson::Value& event, const std::set<std::string>& rejected) {
  std::vector<std::string> errors;
  if (!event.IsObject()) return R"({"event":["invalid_value"]})";
  if (!NonEmptyString(event, "transaction_id")) {
    errors.push_back(R"("transaction_id":["value_is_mandatory"])");
  }
  if (!NonEmptyString(event, "external_subscription_id")) {
    errors.push_back(R"("external_subscription_id":["value_is_mandatory"])");
  }
  if (!NonEmptyString(event, "code")) errors.push_back(R"("code":["value_is_mandatory"])");
  int64_t timestamp = 0;
  if (!ReadTimestamp(event, &timestamp)) errors.push_back(R"("timestamp":["invalid_format"])");
  auto properties = event.FindMember("properties");
  if (properties == event.MemberEnd() || !properties->value.IsObject() ||
      !NonEmptyString(properties->value, "service") || !properties->value.HasMember("quantity") ||
      !properties->value["quantity"].IsInt64()) {
    errors.push_back(R"("properties":["invalid_value"])");
  }
  if (NonEmptyString(event, "transaction_id") &&
      rejected.count(event["transaction_id"].GetString()) > 0) {
    errors.push_back(R"("timestamp":["invalid_format"])");
  }
  if (errors.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < errors.size(); ++i) out += (i > 0 ? "," : "") + errors[i];
  return out + "}";
}

FakeLago::StoredEvent ToStored(const rapidjson::Value& event) {
  FakeLago::StoredEvent s;
  s.transaction_id = event["transaction_id"].GetString();
  s.external_subscription_id = event["external_subscription_id"].GetString();
  s.code = event["code"].GetString();
  ReadTimestamp(event, &s.timestamp_ms);
  s.timestamp = s.timestamp_ms >= 0 ? s.timestamp_ms / 1000 : (s.timestamp_ms - 999) / 1000;
  s.timestamp_json = Compact(event["timestamp"]);
  const rapidjson::Value& properties = event["properties"];
  s.service = properties["service"].GetString();
  s.quantity = properties["quantity"].GetInt64();
  s.properties = Compact(properties);
  return s;
}

}  // namespace

FakeLago::FakeLago(Options options) : options_(std::move(options)) { Listen(); }

FakeLago::~FakeLago() { SetDown(true); }

std::string FakeLago::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

void FakeLago::Listen() {
  auto server = std::make_unique<httplib::Server>();
  server->set_keep_alive_timeout(1);
  server->set_read_timeout(2, 0);
  server->Post("/api/v1/events/batch", [this](const httplib::Request& req, httplib::Response& res) {
    received_.fetch_add(1);
    std::optional<Fault> fault;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!faults_.empty()) {
        fault = faults_.front();
        faults_.pop_front();
      }
    }
    if (fault == Fault::kNone) fault.reset();
    Request record;
    record.received = std::chrono::steady_clock::now();
    record.faulted = fault.has_value();
    {
      rapidjson::Document doc;
      doc.Parse(req.body.data(), req.body.size());
      if (!doc.HasParseError() && doc.IsObject() && doc.HasMember("events") &&
          doc["events"].IsArray()) {
        record.events = doc["events"].Size();
      }
    }
    if (fault == Fault::kSlowRateLimited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.slow_ms));
      fault = Fault::kRateLimited;
    }
    if (fault == Fault::kServerError || fault == Fault::kRateLimited) {
      record.status = fault == Fault::kServerError ? 500 : 429;
      record.answered = std::chrono::steady_clock::now();
      if (record.status == 429) res.set_header("Retry-After", "1");
      res.status = record.status;
      res.set_content(
          Problem(record.status,
                  record.status == 500 ? "Internal Server Error" : "Too Many Requests", "", ""),
          "application/json");
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(record);
      return;
    }
    if (fault == Fault::kProxyOk) {
      // A catch-all route, a captive page or a relay at LAGO_API_URL: 200, but not Lago.
      record.status = 200;
      record.answered = std::chrono::steady_clock::now();
      res.status = record.status;
      res.set_content("OK", "text/html");
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(record);
      return;
    }
    if (fault == Fault::kRedirect || fault == Fault::kProxyRefusal) {
      // What a proxy in front of Lago answers: not Lago's JSON error.
      record.status = fault == Fault::kRedirect ? 308 : 421;
      record.answered = std::chrono::steady_clock::now();
      if (record.status == 308) res.set_header("Location", "https://lago.example/api/v1/events/batch");
      res.status = record.status;
      res.set_content("<html><body>proxy says no; Authorization: " +
                          req.get_header_value("Authorization") + "</body></html>",
                      "text/html");
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(record);
      return;
    }
    if (fault == Fault::kSlow) {
      std::this_thread::sleep_for(std::chrono::milliseconds(options_.slow_ms));
    }
    int status = 0;
    std::string answer;
    Handle(req.get_header_value("Authorization"), req.get_header_value("Content-Type"), req.body,
           &status, &answer);
    if (fault == Fault::kAckLost && status >= 200 && status < 300) {
      status = 500;
      answer = Problem(500, "Internal Server Error", "", "");
    }
    record.status = status;
    record.answered = std::chrono::steady_clock::now();
    res.status = status;
    res.set_content(answer, "application/json");
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(record);
  });
  server->Get(R"(/api/v1/billable_metrics/([^/]+))",
              [this](const httplib::Request& req, httplib::Response& res) {
                metric_lookups_.fetch_add(1);
                std::lock_guard<std::mutex> lock(mu_);
                if (metric_answer_.status != 0) {
                  res.status = metric_answer_.status;
                  res.set_content(metric_answer_.body, metric_answer_.content_type);
                  return;
                }
                if (req.get_header_value("Authorization") != "Bearer " + options_.api_key) {
                  res.status = 401;
                  res.set_content(Problem(401, "Unauthorized", "", ""), "application/json");
                  return;
                }
                const std::string code = httplib::detail::decode_url(req.matches[1], false);
                if (options_.billable_metrics.count(code) == 0) {
                  res.status = 404;
                  res.set_content(Problem(404, "Not Found", "billable_metric_not_found", ""),
                                  "application/json");
                  return;
                }
                res.status = 200;
                res.set_content(R"({"billable_metric":{"lago_id":"bm-)" + code +
                                    R"(","name":"API calls","code":")" + code +
                                    R"(","aggregation_type":"sum_agg","field_name":"quantity"}})",
                                "application/json");
              });
  if (port_ == 0) {
    port_ = server->bind_to_any_port("127.0.0.1");
    if (port_ <= 0) {
      ADD_FAILURE() << "FakeLago cannot listen on 127.0.0.1";
      port_ = 0;
      return;
    }
  } else {
    // Up again on the same port (SO_REUSEADDR is set by cpp-httplib).
    bool bound = false;
    for (int attempt = 0; attempt < 100 && !bound; ++attempt) {
      bound = server->bind_to_port("127.0.0.1", port_);
      if (!bound) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!bound) {
      ADD_FAILURE() << "FakeLago cannot listen on port " << port_ << " again";
      return;
    }
  }
  server_ = std::move(server);
  httplib::Server* raw = server_.get();
  thread_ = std::thread([raw] { raw->listen_after_bind(); });
  // stop() is a no-op until the accept loop runs: wait for it.
  for (int i = 0; i < 5000 && !raw->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void FakeLago::SetDown(bool down) {
  if (down) {
    if (!server_) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  } else if (!server_) {
    Listen();
  }
}

void FakeLago::InjectFault(Fault fault, int times) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int i = 0; i < times; ++i) faults_.push_back(fault);
}

void FakeLago::ClearFaults() {
  std::lock_guard<std::mutex> lock(mu_);
  faults_.clear();
}

void FakeLago::SetApiKey(std::string key) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.api_key = std::move(key);
}

void FakeLago::SetDedupe(Dedupe dedupe) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.dedupe = dedupe;
}

void FakeLago::SetBillableMetrics(std::set<std::string> codes) {
  std::lock_guard<std::mutex> lock(mu_);
  options_.billable_metrics = std::move(codes);
}

void FakeLago::SetMetricAnswer(int status, std::string content_type, std::string body) {
  std::lock_guard<std::mutex> lock(mu_);
  metric_answer_ = {status, std::move(content_type), std::move(body)};
}

void FakeLago::ClearMetricAnswer() {
  std::lock_guard<std::mutex> lock(mu_);
  metric_answer_ = {};
}

void FakeLago::RejectTransaction(std::string transaction_id) {
  std::lock_guard<std::mutex> lock(mu_);
  rejected_.insert(std::move(transaction_id));
}

void FakeLago::FailTransaction(std::string transaction_id) {
  std::lock_guard<std::mutex> lock(mu_);
  failing_.insert(std::move(transaction_id));
}

void FakeLago::RecoverTransaction(const std::string& transaction_id) {
  std::lock_guard<std::mutex> lock(mu_);
  failing_.erase(transaction_id);
}

void FakeLago::Handle(const std::string& authorization, const std::string& content_type,
                      const std::string& body, int* status, std::string* answer) {
  std::lock_guard<std::mutex> lock(mu_);
  *status = 422;
  if (authorization != "Bearer " + options_.api_key) {
    *status = 401;
    *answer = Problem(401, "Unauthorized", "", "");
    return;
  }
  if (content_type.rfind("application/json", 0) != 0) {
    *status = 400;
    *answer = Problem(400, "Bad Request", "bad_request", "");
    return;
  }
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject() || !doc.HasMember("events") ||
      !doc["events"].IsArray()) {
    *status = 400;
    *answer = Problem(400, "Bad Request", "bad_request", "");
    return;
  }
  const rapidjson::Value& events = doc["events"];
  if (events.Empty() || events.Size() > kBatchMax) {
    *answer = Problem(422, "Unprocessable Entity", "validation_errors",
                      std::string(R"({"events":[")") +
                          (events.Empty() ? "no_events" : "too_many_events") + "\"]}");
    return;
  }
  for (const rapidjson::Value& event : events.GetArray()) {
    if (!event.IsObject()) continue;
    auto id = event.FindMember("transaction_id");
    if (id != event.MemberEnd() && id->value.IsString() &&
        failing_.count(id->value.GetString()) > 0) {
      *status = 500;
      *answer = Problem(500, "Internal Server Error", "", "");
      return;
    }
  }
  std::map<size_t, std::string> invalid;
  for (rapidjson::SizeType i = 0; i < events.Size(); ++i) {
    std::string errors = EventErrors(events[i], rejected_);
    if (!errors.empty()) invalid[i] = errors;
  }
  if (!invalid.empty()) {
    *answer = ValidationFailure(invalid);
    return;
  }
  // Dedupe on (external_subscription_id, transaction_id): against what is stored, and within
  // the batch (the second save of a pair violates the unique index).
  std::map<size_t, std::string> duplicates;
  std::set<std::pair<std::string, std::string>> in_batch;
  for (rapidjson::SizeType i = 0; i < events.Size(); ++i) {
    auto key = std::make_pair(std::string(events[i]["external_subscription_id"].GetString()),
                              std::string(events[i]["transaction_id"].GetString()));
    if (counts_.count(key) > 0 || !in_batch.insert(key).second) {
      duplicates[i] = R"({"transaction_id":["value_already_exist"]})";
    }
  }
  const Dedupe dedupe = options_.dedupe;
  if (!duplicates.empty() && dedupe == Dedupe::kRejectBatch &&
      options_.server_error_on_inner_duplicate && duplicates.begin()->first + 1 < events.Size()) {
    *status = 500;
    *answer = Problem(500, "Internal Server Error", "", "");
    return;
  }
  if (!duplicates.empty() && dedupe == Dedupe::kRejectBatch) {
    *answer = ValidationFailure(duplicates);
    return;
  }
  for (rapidjson::SizeType i = 0; i < events.Size(); ++i) {
    if (duplicates.count(i) > 0 && dedupe != Dedupe::kNoDedupe) continue;
    StoredEvent stored = ToStored(events[i]);
    ++counts_[{stored.external_subscription_id, stored.transaction_id}];
    stored_.push_back(std::move(stored));
  }
  if (!duplicates.empty() && dedupe == Dedupe::kStoreRest) {
    *answer = ValidationFailure(duplicates);
    return;
  }
  *status = 200;
  *answer = "{\"events\":" + Compact(events) + "}";
}

std::vector<FakeLago::StoredEvent> FakeLago::stored() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stored_;
}

size_t FakeLago::stored_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stored_.size();
}

std::vector<FakeLago::Request> FakeLago::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

std::map<std::pair<std::string, std::string>, int> FakeLago::counts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counts_;
}

bool FakeLago::WaitForStored(size_t n, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (stored_count() >= n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return stored_count() >= n;
}

::testing::AssertionResult CountedExactlyOnce(const FakeLago& lago,
                                              const std::vector<std::string>& expected) {
  std::map<std::string, int> by_transaction;
  for (const FakeLago::StoredEvent& e : lago.stored()) ++by_transaction[e.transaction_id];
  std::vector<std::string> missing, duplicated, unexpected;
  std::set<std::string> wanted(expected.begin(), expected.end());
  for (const std::string& id : wanted) {
    auto it = by_transaction.find(id);
    if (it == by_transaction.end()) {
      missing.push_back(id);
    } else if (it->second > 1) {
      duplicated.push_back(id + " x" + std::to_string(it->second));
    }
  }
  for (const auto& [id, count] : by_transaction) {
    if (wanted.count(id) == 0) unexpected.push_back(id);
  }
  if (missing.empty() && duplicated.empty() && unexpected.empty()) {
    return ::testing::AssertionSuccess() << wanted.size() << " usage events counted once each";
  }
  auto list = [](const std::vector<std::string>& ids) {
    std::ostringstream out;
    for (size_t i = 0; i < ids.size() && i < 10; ++i) out << (i > 0 ? ", " : "") << ids[i];
    if (ids.size() > 10) out << ", ... (" << ids.size() << " in all)";
    return out.str();
  };
  return ::testing::AssertionFailure()
         << "expected " << wanted.size() << " usage events counted once each; missing "
         << missing.size() << " [" << list(missing) << "], counted more than once "
         << duplicated.size() << " [" << list(duplicated) << "], unexpected " << unexpected.size()
         << " [" << list(unexpected) << "]";
}

}  // namespace ledger::testing
