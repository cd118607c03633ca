#include "projections/byok.h"

#include <algorithm>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"

namespace ledger::projections {

namespace {

using JsonWriter = json::Writer;

constexpr std::string_view kKeyPrefix = "key/";

std::string RowKey(std::string_view user_id, std::string_view provider) {
  std::string key(kKeyPrefix);
  key.append(user_id).push_back('/');
  key.append(provider);
  return key;
}

// The members a key is shown by: in its row, its byok.key_added.v1 and the add's answer.
void WriteKeyShown(JsonWriter* w, const ByokKeyRow& key) {
  w->Key("provider");
  json::String(w, key.provider);
  w->Key("key_id");
  json::String(w, key.key_id);
  w->Key("label");
  json::OptString(w, key.label);
  w->Key("hint");
  json::String(w, key.hint);
}

std::string RowJson(const ByokKeyRow& row) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  WriteKeyShown(&w, row);
  w.Key("encrypted_key");
  json::String(&w, row.encrypted_key);
  w.Key("kek_id");
  json::String(&w, row.kek_id);
  w.Key("added_at_us");
  w.Int64(row.added_at_us);
  w.Key("tested_at_us");
  json::OptInt(&w, row.tested_at_us);
  w.Key("test_result");
  json::OptString(&w, row.test_result);
  w.Key("test_provider_status");
  json::OptInt(&w, row.test_provider_status);
  w.EndObject();
  return json::Text(buf);
}

Status ParseRow(std::string_view json, ByokKeyRow* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  ObjectReader r(doc);
  Status s = r.String("provider", true, &out->provider);
  if (s.ok()) s = r.String("key_id", true, &out->key_id);
  if (s.ok()) s = r.NullableString("label", true, &out->label);
  if (s.ok()) s = r.String("hint", true, &out->hint);
  if (s.ok()) s = r.String("encrypted_key", true, &out->encrypted_key);
  if (s.ok()) s = r.String("kek_id", true, &out->kek_id);
  if (s.ok()) s = r.Int("added_at_us", true, &out->added_at_us);
  if (s.ok()) s = r.NullableInt("tested_at_us", true, &out->tested_at_us);
  if (s.ok()) s = r.NullableString("test_result", true, &out->test_result);
  if (s.ok()) s = r.NullableInt("test_provider_status", true, &out->test_provider_status);
  if (!s.ok()) return Status::Corruption("byok row: " + s.message());
  return Status::OK();
}

Status Malformed(const Event& event, const Status& s) {
  return Status::InvalidArgument("malformed_event", event.type + ": " + s.message());
}

bool UsableId(std::string_view id) {
  return !id.empty() && id.find('/') == std::string_view::npos;
}

// byok_data_keys key: <user_id>/<provider>/<key_id> (none of them holds a '/').
std::string DataKeyRowKey(std::string_view user_id, std::string_view provider,
                          std::string_view key_id) {
  std::string key(user_id);
  key.push_back('/');
  key.append(provider).push_back('/');
  key.append(key_id);
  return key;
}

// The side row that shreds a key: its data key goes, and with it every copy of the key in the log.
SideRow ShredDataKey(std::string_view user_id, std::string_view provider,
                     std::string_view key_id) {
  return SideRow{std::string(kByokDataKeysFamily), DataKeyRowKey(user_id, provider, key_id), "",
                 true};
}

}  // namespace

std::string ByokAssociatedData(std::string_view user_id, std::string_view provider,
                               std::string_view key_id) {
  std::string aad = "ledger-byok-v1";
  for (std::string_view part : {user_id, provider, key_id}) {
    aad.push_back('\0');
    aad.append(part);
  }
  return aad;
}

std::string ByokKeyHint(std::string_view api_key) {
  if (api_key.size() < kByokKeyBytesMin) return "…";
  return std::string(api_key.substr(0, 3)) + "…" + std::string(api_key.substr(api_key.size() - 4));
}

Status ByokAllowed(const StateReader& state, std::string_view user_id, int64_t now_s,
                   bool* allowed, std::string* ended) {
  *allowed = false;
  if (ended != nullptr) ended->clear();
  MeteringSubject subject;
  LEDGER_RETURN_IF_ERROR(GetUserAccessAt(state, user_id, now_s, &subject.access));
  const UserAccess& access = subject.access;
  if (access.access == AccessLevel::kNone || !access.plan || !access.plan->byok_enabled) {
    return Status::OK();
  }
  std::string why;
  LEDGER_RETURN_IF_ERROR(GetAccessEnded(state, subject, user_id, now_s, &why));
  *allowed = why.empty();
  if (ended != nullptr) *ended = std::move(why);
  return Status::OK();
}

// ---- the fold ------------------------------------------------------------------------------------

Status ByokFold::Apply(const Event& event, const StateReader& state, RowWriter* rows) const {
  const bool added = event.type == kByokKeyAddedV1;
  const bool removed = event.type == kByokKeyRemovedV1;
  const bool tested = event.type == kByokKeyTestedV1;
  if (!added && !removed && !tested) return Status::OK();
  rapidjson::Document doc;
  Status s = ParseJsonObject(event.data, &doc);
  if (!s.ok()) return Malformed(event, s);
  ObjectReader r(doc);
  std::string user_id, provider, key_id;
  s = r.String("user_id", true, &user_id);
  if (s.ok()) s = r.String("provider", true, &provider);
  if (s.ok()) s = r.String("key_id", true, &key_id);
  if (s.ok() && (!UsableId(user_id) || !UsableId(provider))) {
    s = Status::InvalidArgument("malformed_event", "user_id/provider: empty or with '/'");
  }
  if (!s.ok()) return Malformed(event, s);
  const std::string key = RowKey(user_id, provider);

  if (added) {
    ByokKeyRow row;
    row.provider = provider;
    row.key_id = key_id;
    row.added_at_us = event.time_us;
    s = r.NullableString("label", true, &row.label);
    if (s.ok()) s = r.String("hint", true, &row.hint);
    if (s.ok()) s = r.String("encrypted_key", true, &row.encrypted_key);
    if (s.ok()) s = r.String("kek_id", true, &row.kek_id);
    if (!s.ok()) return Malformed(event, s);
    return rows->Put(kByokFamily, key, RowJson(row));
  }
  // Removal and test results apply to the key they name only (a later key for the same provider
  // is another key).
  ByokKeyRow row;
  s = GetByokKey(state, user_id, provider, &row);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  if (row.key_id != key_id) return Status::OK();
  if (removed) return rows->Delete(kByokFamily, key);
  std::string result;
  std::optional<int64_t> provider_status;
  s = r.String("result", true, &result);
  if (s.ok()) s = r.NullableInt("provider_status", true, &provider_status);
  if (!s.ok()) return Malformed(event, s);
  row.tested_at_us = event.time_us;
  row.test_result = result;
  row.test_provider_status = provider_status;
  return rows->Put(kByokFamily, key, RowJson(row));
}

// ---- queries -------------------------------------------------------------------------------------

Status ListByokKeys(const StateReader& state, std::string_view user_id,
                    std::vector<ByokKeyRow>* out) {
  out->clear();
  if (!UsableId(user_id)) return Status::OK();
  std::string prefix(kKeyPrefix);
  prefix.append(user_id).push_back('/');
  Status parse;
  LEDGER_RETURN_IF_ERROR(state.Scan(kByokFamily, prefix, [&](std::string_view, std::string_view v) {
    ByokKeyRow row;
    parse = ParseRow(v, &row);
    if (!parse.ok()) return false;
    out->push_back(std::move(row));
    return true;
  }));
  return parse;
}

Status GetByokKey(const StateReader& state, std::string_view user_id, std::string_view provider,
                  ByokKeyRow* out) {
  if (!UsableId(user_id) || !UsableId(provider)) return Status::NotFound("no such key");
  std::string value;
  Status s = state.Get(kByokFamily, RowKey(user_id, provider), &value);
  if (s.IsNotFound()) return Status::NotFound("no " + std::string(provider) + " key");
  LEDGER_RETURN_IF_ERROR(s);
  return ParseRow(value, out);
}

Status GetByokWrappedDataKey(const StateReader& state, std::string_view user_id,
                             std::string_view provider, std::string_view key_id,
                             std::string* wrapped) {
  if (!UsableId(user_id) || !UsableId(provider) || !UsableId(key_id)) {
    return Status::NotFound("no data key");
  }
  Status s = state.Get(kByokDataKeysFamily, DataKeyRowKey(user_id, provider, key_id), wrapped);
  if (s.IsNotFound()) return Status::NotFound("no data key for " + std::string(key_id));
  return s;
}

Status ListByokDataKeys(const StateReader& state, const ByokDataKeyRow& after, size_t limit,
                        std::vector<ByokDataKeyRow>* out) {
  out->clear();
  std::string start;
  if (!after.user_id.empty()) {
    start = DataKeyRowKey(after.user_id, after.provider, after.key_id);
    start.push_back('\0');  // the first key after it
  }
  Status parse;
  LEDGER_RETURN_IF_ERROR(state.ScanFrom(
      kByokDataKeysFamily, "", start, [&](std::string_view key, std::string_view value) {
        if (out->size() >= limit) return false;
        const size_t first = key.find('/');
        const size_t last = key.rfind('/');
        ByokDataKeyRow row;
        if (first != std::string_view::npos && last != first) {
          row.user_id = key.substr(0, first);
          row.provider = key.substr(first + 1, last - first - 1);
          row.key_id = key.substr(last + 1);
        }
        if (!UsableId(row.user_id) || !UsableId(row.provider) || !UsableId(row.key_id)) {
          parse = Status::Corruption("byok_data_keys: a row's key is not user/provider/key_id");
          return false;
        }
        row.wrapped = value;
        out->push_back(std::move(row));
        return true;
      }));
  return parse;
}

Status CountByokKeysSealedUnderKeks(const StateReader& state,
                                    std::map<std::string, int64_t>* by_kek_id) {
  by_kek_id->clear();
  Status parse;
  LEDGER_RETURN_IF_ERROR(
      state.Scan(kByokFamily, kKeyPrefix, [&](std::string_view, std::string_view v) {
        ByokKeyRow row;
        parse = ParseRow(v, &row);
        if (!parse.ok()) return false;
        if (!row.encrypted_key.starts_with(kByokDataKeySealedPrefix)) ++(*by_kek_id)[row.kek_id];
        return true;
      }));
  return parse;
}

// ---- commands ------------------------------------------------------------------------------------

AddByokKey::AddByokKey(std::string user_id, ByokKeyRow key, std::string wrapped_data_key)
    : user_id_(std::move(user_id)),
      key_(std::move(key)),
      wrapped_data_key_(std::move(wrapped_data_key)) {}

AddByokKey::~AddByokKey() {
  // Not secret without the master key, but the copy that counts is the side row: none lingers.
  std::fill(wrapped_data_key_.begin(), wrapped_data_key_.end(), '\0');
}

Status AddByokKey::Decide(const DecideContext& context, Decision* decision) {
  // A "v2:" key opens only with its data key, and only a "v2:" key has one.
  const bool data_key_sealed = key_.encrypted_key.starts_with(kByokDataKeySealedPrefix);
  if (!IsValidUserId(user_id_) || !UsableId(key_.provider) || !UsableId(key_.key_id) ||
      key_.encrypted_key.empty() || data_key_sealed == wrapped_data_key_.empty()) {
    return Status::Make(Code::kUnprocessable, "invalid_request", "malformed key");
  }
  bool allowed = false;
  std::string ended;
  LEDGER_RETURN_IF_ERROR(
      ByokAllowed(*context.state, user_id_, context.now_us / 1'000'000, &allowed, &ended));
  if (!allowed) {
    return Status::Make(Code::kPermissionDenied, "byok_not_in_plan",
                        "bringing your own key needs an active plan with BYOK (Starter or above)" +
                            (ended.empty() ? std::string() : "; access ended: " + ended));
  }
  std::optional<std::string> replaced;
  ByokKeyRow current;
  Status s = GetByokKey(*context.state, user_id_, key_.provider, &current);
  if (s.ok()) {
    replaced = current.key_id;
  } else if (!s.IsNotFound()) {
    return s;
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, user_id_);
  WriteKeyShown(&w, key_);
  w.Key("encrypted_key");
  json::String(&w, key_.encrypted_key);
  w.Key("kek_id");
  json::String(&w, key_.kek_id);
  w.Key("replaced_key_id");
  json::OptString(&w, replaced);
  w.EndObject();
  decision->events.push_back(NewEvent{std::string(kByokKeyAddedV1), user_id_, json::Text(buf)});
  // The replaced key is shredded with the add that replaces it; the new key's data key is written
  // with its event (never into it), so an acknowledged add always has it and a failed one neither.
  if (replaced) decision->side_rows.push_back(ShredDataKey(user_id_, key_.provider, *replaced));
  if (data_key_sealed) {
    decision->side_rows.push_back(
        SideRow{std::string(kByokDataKeysFamily),
                DataKeyRowKey(user_id_, key_.provider, key_.key_id), wrapped_data_key_, false});
  }

  rapidjson::StringBuffer body_buf;
  JsonWriter body(body_buf);
  body.StartObject();
  WriteKeyShown(&body, key_);
  body.Key("added_at");
  json::String(&body, FormatRfc3339Micros(context.now_us));
  body.Key("replaced_key_id");
  json::OptString(&body, replaced);
  body.EndObject();
  decision->http_status = 201;
  decision->body = json::Text(body_buf);
  return Status::OK();
}

RemoveByokKey::RemoveByokKey(std::string user_id, std::string provider)
    : user_id_(std::move(user_id)), provider_(std::move(provider)) {}

Status RemoveByokKey::Decide(const DecideContext& context, Decision* decision) {
  ByokKeyRow current;
  LEDGER_RETURN_IF_ERROR(GetByokKey(*context.state, user_id_, provider_, &current));
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, user_id_);
  w.Key("provider");
  json::String(&w, provider_);
  w.Key("key_id");
  json::String(&w, current.key_id);
  w.EndObject();
  decision->events.push_back(NewEvent{std::string(kByokKeyRemovedV1), user_id_, json::Text(buf)});
  decision->side_rows.push_back(ShredDataKey(user_id_, provider_, current.key_id));
  decision->http_status = 200;
  rapidjson::StringBuffer body_buf;
  JsonWriter body(body_buf);
  body.StartObject();
  body.Key("provider");
  json::String(&body, provider_);
  body.Key("key_id");
  json::String(&body, current.key_id);
  body.Key("removed");
  body.Bool(true);
  body.EndObject();
  decision->body = json::Text(body_buf);
  return Status::OK();
}

RewrapByokDataKeys::RewrapByokDataKeys(std::vector<ByokDataKeyRow> rows,
                                       std::vector<std::string> rewrapped)
    : rows_(std::move(rows)), rewrapped_(std::move(rewrapped)) {}

RewrapByokDataKeys::~RewrapByokDataKeys() {
  // As AddByokKey's: the copies that count are the side rows.
  for (std::string& wrapped : rewrapped_) std::fill(wrapped.begin(), wrapped.end(), '\0');
  for (ByokDataKeyRow& row : rows_) std::fill(row.wrapped.begin(), row.wrapped.end(), '\0');
}

Status RewrapByokDataKeys::Decide(const DecideContext& context, Decision* decision) {
  if (rows_.size() != rewrapped_.size()) {
    return Status::InvalidArgument("invalid_request", "a rewrapped data key per row");
  }
  size_t replaced = 0;
  std::string current;
  for (size_t i = 0; i < rows_.size(); ++i) {
    const ByokDataKeyRow& row = rows_[i];
    Status s = GetByokWrappedDataKey(*context.state, row.user_id, row.provider, row.key_id,
                                     &current);
    if (s.IsNotFound() || (s.ok() && current != row.wrapped)) continue;  // shredded or replaced
    LEDGER_RETURN_IF_ERROR(s);
    SideRow put{std::string(kByokDataKeysFamily),
                DataKeyRowKey(row.user_id, row.provider, row.key_id), rewrapped_[i], false};
    put.shred_replaced = true;
    decision->side_rows.push_back(std::move(put));
    ++replaced;
  }
  std::fill(current.begin(), current.end(), '\0');
  decision->body = "{\"rewrapped\":" + std::to_string(replaced) + "}";
  return Status::OK();
}

RecordByokKeyTest::RecordByokKeyTest(std::string user_id, std::string provider,
                                     std::string key_id, std::string result, int provider_status,
                                     std::string detail)
    : user_id_(std::move(user_id)),
      provider_(std::move(provider)),
      key_id_(std::move(key_id)),
      result_(std::move(result)),
      provider_status_(provider_status),
      detail_(std::move(detail)) {}

Status RecordByokKeyTest::Decide(const DecideContext& context, Decision* decision) {
  ByokKeyRow current;
  LEDGER_RETURN_IF_ERROR(GetByokKey(*context.state, user_id_, provider_, &current));
  if (current.key_id != key_id_) {
    return Status::Conflict("key_changed", "the key was replaced while it was being tested");
  }
  // The event and the answer share provider, key_id, result and provider_status.
  auto outcome = [&](JsonWriter* w) {
    w->Key("provider");
    json::String(w, provider_);
    w->Key("key_id");
    json::String(w, key_id_);
    w->Key("result");
    json::String(w, result_);
    w->Key("provider_status");
    if (provider_status_ >= 100 && provider_status_ <= 599) {  // an HTTP status (the schema's)
      w->Int(provider_status_);
    } else {
      w->Null();
    }
  };
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, user_id_);
  outcome(&w);
  w.EndObject();
  decision->events.push_back(NewEvent{std::string(kByokKeyTestedV1), user_id_, json::Text(buf)});

  rapidjson::StringBuffer body_buf;
  JsonWriter body(body_buf);
  body.StartObject();
  outcome(&body);
  body.Key("valid");
  body.Bool(result_ == "valid");
  body.Key("detail");
  json::String(&body, detail_);
  body.Key("tested_at");
  json::String(&body, FormatRfc3339Micros(context.now_us));
  body.EndObject();
  decision->http_status = 200;
  decision->body = json::Text(body_buf);
  return Status::OK();
}

}  // namespace ledger::projections
