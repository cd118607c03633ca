// Usage metering (CONTRACT.md §3 "Usage", projections/usage.h):
//
//   POST /api/v1/usage/consume                              user (for itself) or service
//   POST /api/v1/usage/events                               service
//   GET  /api/v1/usage/summary                              user
//   POST /api/v1/admin/subscriptions/{email}/reset-usage    admin
//
// consume: body {"user_id", "service", "quantity" (default 1, 1..10000), "idempotency_key"
// (required, 1..255 bytes; an `Idempotency-Key` header may carry it instead, and must then agree),
// "metadata" (optional flat object)}. A service token must name the user; a user may omit
// user_id, and naming another user is 404 "not_found" (CONTRACT §2: another user's objects are
// reported as 404, as check-access does).
// The check and the record are one decision in the writer (ConsumeUsage). Answers:
//   200 {"allowed":true,"user_id","service","quantity","used","limit","remaining",
//        "window_start","window_end","window_kind","plan_id"}  (limit/remaining null: unlimited)
//   429 quota_exceeded, 402 subscription_required | trial_expired | trial_exhausted |
//   payment_failed (past due and Stripe will not retry the latest invoice),
//   403 service_not_in_plan,
//   409 idempotency_key_reused (same key, other body; or the key was used by /usage/events),
//   400 invalid_json, 422 validation_failed | unknown_field | unknown_service |
//   quantity_exceeds_quota (more than a whole window allows: never a 429 to retry).
// A retry with the same key and body gets the first answer again (status and body, with
// `Idempotent-Replayed: true`), counted once. Refusals store nothing: a retry is decided again.
// Rate-limit headers on 200 and 429 when the window has a limit: X-RateLimit-Limit (calls per
// window), X-RateLimit-Remaining, X-RateLimit-Reset (seconds until the window ends, like
// Retry-After; GitHub's variant uses epoch seconds, the IETF draft uses delta seconds, as here;
// earlier while calls carried from a restarted period count: until enough of them stop counting).
// A replay's headers are the user's quota now (the window current now, as the summary shows it;
// none when a consume would now be a 402), not the first answer's figures.
// The 429 problem also carries "used", "limit", "remaining", "window_start", "window_end",
// "window_kind" and "retry_after", and a `Retry-After` header (seconds until the quota frees up,
// as X-RateLimit-Reset).
//
// events: body {"events":[{user_id, service, quantity, idempotency_key, timestamp?, metadata?}]}
// with 1..1000 items (more: 413 "too_many_items"), one command, one group commit, one
// usage.batch_recorded.v1 per user with accepted items (projections/usage.h). 200 with a result
// per item, in item order ("accepted", "duplicate", or "invalid" + "reason"), each naming the
// item's idempotency_key ("" only when the key itself is missing or invalid); a malformed
// envelope is a 400/422 problem. The body is parsed in place (a 1000-item body is the route's
// main cost).
// `timestamp`: Unix seconds (number) or an RFC 3339 string, at most 62 days before the request
// and 300 s after it (else timestamp_out_of_range; projections/limits.h). Item reasons:
// not_an_object, unknown_field, invalid_user_id, invalid_service, unknown_service,
// invalid_quantity, invalid_idempotency_key, invalid_timestamp, timestamp_out_of_range,
// invalid_metadata, idempotency_key_reused (a known key with another service or quantity).
//
// summary: {"user_id","plan_id","status","has_access","reason","current":{window + used, limit,
// remaining, services}, "windows":[{window, used, limit, recorded, resets, services}, newest
// first, at most 100]}. has_access is what a consume of one call would meet, as my-access says
// it: false with "reason" the 402's code (subscription_required -- also for a window's calls used
// up when the subscription is scheduled to end before it renews --, trial_expired,
// trial_exhausted for a trial whose calls are used up for good, or payment_failed for a past-due
// subscription Stripe no longer retries); a window's quota used up that a later window cures is
// still access (reason null). A window ends by a scheduled end.
//
// reset-usage: optional body {"reason"} (text of at most 1024 bytes, line feeds and tabs allowed,
// no other control characters or bidirectional overrides: 422 validation_failed); `Idempotency-Key`
// honoured. 404 when no user has the
// email. 200 {"email","users":[{"user_id","window_start","window_end","window_kind",
// "used_before"}]}.
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "events/limits.h"
#include "http/idempotency.h"
#include "http/problem.h"
#include "http/routes.h"
#include "http/usage_bodies.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/usage.h"

namespace ledger::http {

namespace {

namespace pj = ledger::projections;
namespace pl = ledger::projections::limits;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr char kConsumePath[] = "/api/v1/usage/consume";
constexpr char kEventsPath[] = "/api/v1/usage/events";
constexpr char kSummaryPath[] = "/api/v1/usage/summary";
constexpr char kResetPattern[] =
    R"(/api/v1/admin/subscriptions/((?!list/|analytics/)[^/]+)/reset-usage)";
constexpr char kResetName[] = "/api/v1/admin/subscriptions/{email}/reset-usage";
constexpr int64_t kMicrosPerSecond = 1'000'000;
constexpr size_t kResetReasonBytesMax = 1024;

struct UsageRouteContext {
  Ledger* ledger = nullptr;
  const Clock* clock = nullptr;
  pj::UsageMeter* meter = nullptr;
  std::shared_ptr<pj::UsageMeter> owned_meter;  // when the AppContext brought none
};

void WriteWindow(JsonWriter* w, const pj::UsageWindow& window) {
  json::Key(w, "window_start");
  json::String(w, pj::FormatRfc3339Seconds(window.start_s));
  json::Key(w, "window_end");
  json::String(w, pj::FormatRfc3339Seconds(window.end_s));
  json::Key(w, "window_kind");
  json::String(w, pj::WindowKindName(window.kind));
}
void WriteServices(JsonWriter* w, const std::map<std::string, int64_t, std::less<>>& services) {
  w->StartObject();
  for (const auto& [service, count] : services) {
    json::Key(w, service);
    w->Int64(count);
  }
  w->EndObject();
}

int64_t NowMicros(const UsageRouteContext& c) {
  return (c.clock != nullptr ? c.clock : SystemClock::Default())->NowMicros();
}

// The key is copied into the usage event's JSON: a body's key is valid UTF-8 already (the parser
// checks), an Idempotency-Key header's bytes are not (cpp-httplib also percent-decodes them).
bool ValidIdempotencyKey(std::string_view key) {
  if (key.empty() || key.size() > ledger::limits::kIdempotencyKeyBytesMax) return false;
  for (char ch : key) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) return false;
  }
  return pj::IsValidUtf8(key);
}

std::string_view View(const rapidjson::Value& v) {
  return std::string_view(v.GetString(), v.GetStringLength());
}

// A flat object of scalars (CONTRACT: forwarded to Lago as properties), re-serialized compactly.
// `buf` (optional) is reused across calls instead of a fresh buffer each time.
bool CompactMetadata(const rapidjson::Value& v, std::string* out,
                     rapidjson::StringBuffer* buf = nullptr) {
  if (!v.IsObject() || v.MemberCount() > pl::kUsageMetadataPropertiesMax) return false;
  for (const auto& m : v.GetObject()) {
    if (m.name.GetStringLength() == 0 || m.name.GetStringLength() > pl::kUsageMetadataNameBytesMax) {
      return false;
    }
    const rapidjson::Value& value = m.value;
    if (value.IsObject() || value.IsArray()) return false;
    if (value.IsString() && value.GetStringLength() > pl::kUsageMetadataValueBytesMax) return false;
  }
  rapidjson::StringBuffer own;
  if (buf == nullptr) buf = &own;
  buf->Clear();
  JsonWriter w(*buf);
  // A value the writer cannot write (a number out of a double's range: the parse refuses those
  // first) would cut the text short: refused rather than copied into the event.
  if (!v.Accept(w)) return false;
  out->assign(buf->GetString(), buf->GetSize());
  return true;
}

}  // namespace

// ---- consume -------------------------------------------------------------------------------------

Status ParseConsume(const httplib::Request& req, const Identity& identity,
                    pj::ConsumeRequest* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(pj::ParseJsonObject(req.body, &doc));
  auto invalid = [](std::string message) {
    return Status::Make(Code::kUnprocessable, "validation_failed", std::move(message));
  };
  bool has_user = false, has_key = false;
  for (const auto& m : doc.GetObject()) {
    const std::string_view name = View(m.name);
    const rapidjson::Value& v = m.value;
    if (name == "user_id") {
      if (!v.IsString() || !pj::IsValidUserId(View(v))) {
        return invalid("user_id: 1 to 255 characters without '/' or control characters");
      }
      out->user_id.assign(View(v));
      has_user = true;
    } else if (name == "service") {
      if (!v.IsString() || v.GetStringLength() == 0 ||
          v.GetStringLength() > pl::kServiceIdBytesMax) {
        return invalid("service: a service id");
      }
      out->service.assign(View(v));
    } else if (name == "quantity") {
      if (!v.IsInt64() || v.GetInt64() < 1 || v.GetInt64() > pl::kUsageConsumeQuantityMax) {
        return invalid("quantity: an integer from 1 to " +
                       std::to_string(pl::kUsageConsumeQuantityMax));
      }
      out->quantity = v.GetInt64();
    } else if (name == "idempotency_key") {
      if (!v.IsString() || !ValidIdempotencyKey(View(v))) {
        return invalid("idempotency_key: 1 to 255 bytes without control characters");
      }
      out->idempotency_key.assign(View(v));
      has_key = true;
    } else if (name == "metadata") {
      if (!v.IsNull() && !CompactMetadata(v, &out->metadata_json)) {
        return invalid("metadata: a flat object of at most 32 scalar members");
      }
    } else {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pj::Truncated(name) + "'");
    }
  }
  if (out->service.empty()) return invalid("service: required");
  if (!pj::IsKnownService(out->service)) {
    return Status::Make(Code::kUnprocessable, "unknown_service",
                        "unknown service '" + pj::Truncated(out->service) + "'");
  }
  std::string_view header;
  if (const size_t headers = HeaderValue(req, kIdempotencyKeyHeader, &header); headers > 0) {
    if (headers > 1 || !ValidIdempotencyKey(header) || (has_key && header != out->idempotency_key)) {
      return Status::InvalidArgument(
          "invalid_idempotency_key",
          "Idempotency-Key must be one header of 1 to 255 bytes, equal to idempotency_key");
    }
    out->idempotency_key = header;
    has_key = true;
  }
  if (!has_key) return invalid("idempotency_key: required");
  if (identity.IsService()) {
    if (!has_user) return invalid("user_id: a service token must name the user");
  } else if (!has_user) {
    out->user_id = identity.subject;
  } else if (out->user_id != identity.subject) {
    // CONTRACT §2: another user's objects are reported as 404, as check-access does.
    return Status::NotFound("no such user");
  }
  return Status::OK();
}

namespace {

int64_t SecondsUntil(int64_t end_s, int64_t now_us) {
  const int64_t left_us = end_s * kMicrosPerSecond - now_us;
  return std::max<int64_t>(1, (left_us + kMicrosPerSecond - 1) / kMicrosPerSecond);
}

void SetRateLimitHeaders(int64_t limit, int64_t remaining, int64_t reset_s,
                         httplib::Response* res) {
  res->set_header("X-RateLimit-Limit", std::to_string(limit));
  res->set_header("X-RateLimit-Remaining", std::to_string(std::max<int64_t>(0, remaining)));
  res->set_header("X-RateLimit-Reset", std::to_string(reset_s));
}

void WriteQuotaExceeded(const Status& status, const pj::ConsumeOutcome& outcome,
                        httplib::Response* res) {
  const int64_t limit = outcome.limit.value_or(0);
  const int64_t retry_after = SecondsUntil(outcome.quota_frees_s, outcome.now_us);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  json::Key(&w, "type");
  json::String(&w, "urn:ledgerd:problem:quota_exceeded");
  json::Key(&w, "title");
  json::String(&w, ReasonPhrase(429));
  json::Key(&w, "status");
  w.Int(429);
  json::Key(&w, "detail");
  json::String(&w, status.message());
  json::Key(&w, "code");
  json::String(&w, "quota_exceeded");
  json::Key(&w, "used");
  w.Int64(outcome.used);
  json::Key(&w, "limit");
  w.Int64(limit);
  json::Key(&w, "remaining");
  w.Int64(std::max<int64_t>(0, limit - outcome.used));
  WriteWindow(&w, outcome.window);
  json::Key(&w, "retry_after");
  w.Int64(retry_after);
  w.EndObject();
  res->status = 429;
  res->set_content(std::string(buf.GetString(), buf.GetSize()), kProblemContentType);
  res->set_header("Retry-After", std::to_string(retry_after));
  SetRateLimitHeaders(limit, limit - outcome.used, retry_after, res);
}

void CountRefusal(const Status& status, pj::UsageMeter* meter) {
  const std::string& p = status.problem();
  if (p == "quota_exceeded") {
    meter->denied_quota_exceeded.Add();
  } else if (p == "subscription_required") {
    meter->denied_subscription_required.Add();
  } else if (p == "trial_expired") {
    meter->denied_trial_expired.Add();
  } else if (p == "trial_exhausted") {
    meter->denied_trial_exhausted.Add();
  } else if (p == "payment_failed") {
    meter->denied_payment_failed.Add();
  } else if (p == "service_not_in_plan") {
    meter->denied_service_not_in_plan.Add();
  } else if (p == "quantity_exceeds_quota") {
    meter->denied_quantity_exceeds_quota.Add();
  }
}

// The answer to a decided (or refused) consume.
void AnswerConsume(const UsageRouteContext& c, const pj::ConsumeUsage& command,
                   const CommandResult& result, httplib::Response* res) {
  const pj::ConsumeOutcome& o = command.outcome();
  const int64_t now_us = o.decided || o.replayed ? o.now_us : NowMicros(c);
  if (!result.status.ok()) {
    CountRefusal(result.status, c.meter);
    if (result.status.problem() == "quota_exceeded") {
      WriteQuotaExceeded(result.status, command.outcome(), res);
      SetPositionHeader(result.position, res);
      return;
    }
    WriteCommandResult(result, res);
    return;
  }
  if (result.replayed) {
    c.meter->consume_replayed.Add();
  } else {
    c.meter->consume_allowed.Add();
    if (result.events_appended > 1) c.meter->threshold_events.Add(result.events_appended - 1);
  }
  // A replay's body is the first answer; its headers are the quota now (ConsumeUsage::Replayed).
  if (o.limit && o.remaining) {
    SetRateLimitHeaders(*o.limit, *o.remaining, SecondsUntil(o.quota_frees_s, now_us), res);
  }
  WriteCommandResult(result, res);
}

// The request's thread does not wait for the group's fsync: the answer is written from the
// ledger's completion (DeferResponse), or, outside the server's connection loop, after Submit.
void Consume(const UsageRouteContext& c, const httplib::Request& req, httplib::Response& res,
             const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  pj::ConsumeRequest request;
  Status parsed = ParseConsume(req, identity, &request);
  if (!parsed.ok()) {
    WriteStatusProblem(parsed, &res);
    return;
  }
  auto command = std::make_shared<pj::ConsumeUsage>(std::move(request), c.meter->cache());
  Responder respond = DeferResponse(req);
  if (!respond) {
    AnswerConsume(c, *command, c.ledger->Submit(command.get()), &res);
    return;
  }
  Command* submitted = command.get();
  c.ledger->SubmitAsync(submitted, [c, command = std::move(command),
                                    respond = std::move(respond)](CommandResult result) {
    httplib::Response answer;
    try {
      AnswerConsume(c, *command, result, &answer);
    } catch (const std::exception& e) {
      spdlog::error("http: consume answer failed: {}", e.what());
      answer = httplib::Response();
      WriteProblem(500, "internal", "internal error", &answer);
    }
    respond(std::move(answer));
  });
}

// ---- batch ---------------------------------------------------------------------------------------

// Fills `item` from one element of "events"; sets item->invalid_reason when it is not valid,
// stopping at the first field that is not. ParseBatchItem echoes the key afterwards.
void ParseBatchItemFields(const rapidjson::Value& v, pj::UsageBatchItem* item,
                          rapidjson::StringBuffer* metadata_buf) {
  auto invalid = [item](const char* reason) { item->invalid_reason = reason; };
  if (!v.IsObject()) return invalid("not_an_object");
  bool has_user = false, has_service = false, has_quantity = false;
  for (const auto& m : v.GetObject()) {
    const std::string_view name = View(m.name);
    const rapidjson::Value& f = m.value;
    if (name == "user_id") {
      if (!f.IsString() || !pj::IsValidUserId(View(f))) return invalid("invalid_user_id");
      item->user_id.assign(View(f));
      has_user = true;
    } else if (name == "service") {
      if (!f.IsString() || f.GetStringLength() == 0 ||
          f.GetStringLength() > pl::kServiceIdBytesMax) {
        return invalid("invalid_service");
      }
      item->service.assign(View(f));
      has_service = true;
    } else if (name == "quantity") {
      if (!f.IsInt64() || f.GetInt64() < 1 || f.GetInt64() > pl::kUsageBatchQuantityMax) {
        return invalid("invalid_quantity");
      }
      item->quantity = f.GetInt64();
      has_quantity = true;
    } else if (name == "idempotency_key") {
      if (!f.IsString() || !ValidIdempotencyKey(View(f))) return invalid("invalid_idempotency_key");
      item->idempotency_key.assign(View(f));
    } else if (name == "timestamp") {
      int64_t us = 0;
      if (f.IsString()) {
        if (!pj::ParseRfc3339(View(f), &us)) return invalid("invalid_timestamp");
      } else if (f.IsNumber()) {
        const double seconds = f.GetDouble();
        if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e11) {
          return invalid("invalid_timestamp");
        }
        us = static_cast<int64_t>(std::floor(seconds * 1e6));
      } else if (!f.IsNull()) {
        return invalid("invalid_timestamp");
      }
      if (!f.IsNull()) item->timestamp_us = us;
    } else if (name == "metadata") {
      if (!f.IsNull() && !CompactMetadata(f, &item->metadata_json, metadata_buf)) {
        return invalid("invalid_metadata");
      }
    } else {
      return invalid("unknown_field");
    }
  }
  if (!has_user) return invalid("invalid_user_id");
  if (!has_service) return invalid("invalid_service");
  if (!pj::IsKnownService(item->service)) return invalid("unknown_service");
  if (!has_quantity) item->quantity = 1;
  if (item->idempotency_key.empty()) return invalid("invalid_idempotency_key");
}

// Fills `item` from one element of "events"; sets item->invalid_reason when it is not valid.
// `metadata_buf` is scratch space shared by the items of one body.
void ParseBatchItem(const rapidjson::Value& v, pj::UsageBatchItem* item,
                    rapidjson::StringBuffer* metadata_buf) {
  ParseBatchItemFields(v, item, metadata_buf);
  if (item->invalid_reason.empty() || !v.IsObject()) return;
  // An invalid item's result still names its key when the item carried a well-formed one: the
  // field check stopped at the first bad field, so {"quantity":0,"idempotency_key":"q0"} was
  // answered with "idempotency_key":"" and the client could not tell which of its items it was.
  // Only a key that is itself missing or invalid (anywhere in the item) is answered as "".
  item->idempotency_key.clear();
  for (const auto& m : v.GetObject()) {
    if (View(m.name) != "idempotency_key") continue;
    if (!m.value.IsString() || !ValidIdempotencyKey(View(m.value))) {
      item->idempotency_key.clear();
      return;
    }
    item->idempotency_key.assign(View(m.value));
  }
}

}  // namespace

Status ParseBatch(const std::string& body, std::vector<pj::UsageBatchItem>* items) {
  // Parsed in place, in a copy: a 1000-item body's strings are not copied into the document.
  std::string text(body);
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(pj::ParseJsonObjectInsitu(&text, &doc));
  const rapidjson::Value* events = nullptr;
  for (const auto& m : doc.GetObject()) {
    if (View(m.name) != "events") {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pj::Truncated(View(m.name)) + "'");
    }
    events = &m.value;
  }
  if (events == nullptr || !events->IsArray() || events->Empty()) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "events: an array of 1 to 1000 usage events");
  }
  if (events->Size() > pl::kUsageBatchItemsMax) {
    return Status::Make(Code::kPayloadTooLarge, "too_many_items",
                        "events: at most " + std::to_string(pl::kUsageBatchItemsMax) + " per request");
  }
  items->resize(events->Size());
  rapidjson::StringBuffer metadata_buf;
  for (rapidjson::SizeType i = 0; i < events->Size(); ++i) {
    ParseBatchItem((*events)[i], &(*items)[i], &metadata_buf);
  }
  return Status::OK();
}

namespace {

void RecordEvents(const UsageRouteContext& c, const httplib::Request& req, httplib::Response& res,
                  const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  std::vector<pj::UsageBatchItem> items;
  Status parsed = ParseBatch(req.body, &items);
  if (!parsed.ok()) {
    WriteStatusProblem(parsed, &res);
    return;
  }
  pj::RecordUsageBatch command(std::move(items), c.meter->cache());
  if (!ApplyIdempotencyKey(req, kEventsPath, identity, &command, &res)) return;
  CommandResult result = c.ledger->Submit(&command);
  if (result.status.ok() && !result.replayed) {
    const auto& counts = command.counts();
    c.meter->batch_requests.Add();
    c.meter->batch_accepted.Add(counts.accepted);
    c.meter->batch_duplicates.Add(counts.duplicates);
    c.meter->batch_invalid.Add(counts.invalid);
    c.meter->threshold_events.Add(counts.thresholds);
  }
  WriteCommandResult(result, &res);
}

// ---- summary -------------------------------------------------------------------------------------

void Summary(const UsageRouteContext& c, const httplib::Request&, httplib::Response& res,
             const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  const std::string& user_id = identity.subject;
  std::unique_ptr<ReadView> view = c.ledger->Snapshot();
  std::shared_ptr<const pj::MeteringSubject> subject;
  pj::CurrentUsage current;
  std::vector<pj::UsageWindowRow> windows;
  const int64_t now_s = NowMicros(c) / kMicrosPerSecond;
  Status s = pj::LoadMeteringSubject(*view, user_id, nullptr, now_s, &subject);
  if (s.ok()) s = pj::GetCurrentUsage(*view, *subject, user_id, now_s, &current);
  if (s.ok()) s = pj::ListUserUsage(*view, user_id, pl::kUsageSummaryWindowsMax, &windows);
  for (pj::UsageWindowRow& row : windows) row.counter.EndCarryAt(now_s);  // as they count now
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  json::Key(&w, "user_id");
  json::String(&w, user_id);
  json::Key(&w, "plan_id");
  if (subject->plan() != nullptr) {
    json::String(&w, subject->plan()->id);
  } else {
    w.Null();
  }
  json::Key(&w, "status");
  json::String(&w, subject->access.status_name());
  // Calls used up for good (a trial's cap or its last day's; a window that access ends before
  // it renews) grant nothing more: consume answers 402, and my-access and check-access say so;
  // the summary says what they say (it said has_access: true with nothing left to consume).
  const std::string_view used_up = pj::CallsUsedUpReason(current);
  json::Key(&w, "has_access");
  w.Bool(current.has_plan && current.error.ok() && used_up.empty());
  json::Key(&w, "reason");
  if (!current.error.ok()) {
    json::String(&w, current.error.problem());
  } else if (!used_up.empty()) {
    json::String(&w, used_up);
  } else {
    w.Null();
  }
  json::Key(&w, "current");
  w.StartObject();
  WriteWindow(&w, current.terms.window);
  json::Key(&w, "used");
  w.Int64(current.used);
  json::Key(&w, "limit");
  json::OptInt(&w, current.has_plan ? current.terms.limit : std::nullopt);
  json::Key(&w, "remaining");
  json::OptInt(&w, current.remaining);
  json::Key(&w, "services");
  WriteServices(&w, current.services);
  w.EndObject();
  json::Key(&w, "windows");
  w.StartArray();
  for (const pj::UsageWindowRow& row : windows) {
    w.StartObject();
    // A row's end is its last record's, and a refused consume records nothing: a scheduled end
    // set or taken back since leaves it stale. The live window ends as `current` does.
    pj::UsageWindow window{row.window_start_s, row.counter.window_end_s, row.counter.kind};
    if (window.start_s == current.terms.window.start_s &&
        window.kind == current.terms.window.kind) {
      window.end_s = current.terms.window.end_s;
    }
    WriteWindow(&w, window);
    json::Key(&w, "used");
    w.Int64(row.counter.used);
    json::Key(&w, "limit");
    json::OptInt(&w, row.counter.limit);
    json::Key(&w, "recorded");
    w.Int64(row.counter.recorded);
    json::Key(&w, "resets");
    w.Int64(row.counter.resets);
    json::Key(&w, "services");
    WriteServices(&w, row.counter.services);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  WriteJsonAt(200, std::string(buf.GetString(), buf.GetSize()), view->position(), &res);
}

// ---- reset ---------------------------------------------------------------------------------------

Status ParseResetBody(const std::string& body, std::optional<std::string>* reason) {
  if (body.empty()) return Status::OK();
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(pj::ParseJsonObject(body, &doc));
  for (const auto& m : doc.GetObject()) {
    if (View(m.name) != "reason") {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pj::Truncated(View(m.name)) + "'");
    }
    if (m.value.IsNull()) continue;
    if (!m.value.IsString() || m.value.GetStringLength() > kResetReasonBytesMax) {
      return Status::Make(Code::kUnprocessable, "validation_failed",
                          "reason: a string of at most 1024 bytes");
    }
    // Text admins read in the log, as the override's notes (admin_routes.cc): "\u001b[2J" was
    // stored in the event as it came.
    if (!pj::IsMultilineDisplayText(View(m.value))) {
      return Status::Make(Code::kUnprocessable, "validation_failed",
                          "reason: text without control characters (line feeds and tabs "
                          "allowed) or bidirectional overrides");
    }
    *reason = std::string(View(m.value));
  }
  return Status::OK();
}

void ResetUsage(const UsageRouteContext& c, const httplib::Request& req, httplib::Response& res,
                const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  const std::string email = req.matches[1].str();
  const bool is_email = email.find('@') != std::string::npos;
  if (is_email ? email.size() > pl::kEmailBytesMax || !pj::IsValidUtf8(email)
               : !pj::IsValidUserId(email)) {
    WriteProblem(400, "invalid_parameter", "email: at most 320 bytes of UTF-8, or a user id", &res);
    return;
  }
  std::optional<std::string> reason;
  Status parsed = ParseResetBody(req.body, &reason);
  if (!parsed.ok()) {
    WriteStatusProblem(parsed, &res);
    return;
  }
  pj::UsageWindowReset command(email, pj::Actor::Admin(identity.subject, identity.email),
                               std::move(reason), c.meter->cache());
  if (!ApplyIdempotencyKey(req, kResetName, identity, &command, &res)) return;
  CommandResult result = c.ledger->Submit(&command);
  if (result.status.ok() && !result.replayed) c.meter->window_resets.Add(result.events_appended);
  WriteCommandResult(result, &res);
}

}  // namespace

void AddUsageRoutes(const AppContext& context, RouteTable* routes) {
  auto c = std::make_shared<UsageRouteContext>();
  c->ledger = context.ledger;
  c->clock = context.clock;
  c->meter = context.usage_meter;
  if (c->meter == nullptr) {
    c->owned_meter = std::make_shared<pj::UsageMeter>();
    c->meter = c->owned_meter.get();
  }
  routes->Add("POST", kConsumePath, kConsumePath, Policy::kUserOrService, WithContext(c, Consume),
              Threading::kEventLoop);
  routes->Add("POST", kEventsPath, kEventsPath, Policy::kService, WithContext(c, RecordEvents));
  routes->Add("GET", kSummaryPath, kSummaryPath, Policy::kUser, WithContext(c, Summary));
  routes->Add("POST", kResetPattern, kResetName, Policy::kAdmin, WithContext(c, ResetUsage));
}

}  // namespace ledger::http
