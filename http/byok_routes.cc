// BYOK routes (policy user: every route acts on the caller's own keys; another user's keys are
// invisible and a DELETE of them is 404):
//   GET    /api/v1/byok/providers          [{"id","display_name","key_prefix","configured",
//                                          "available"}] (a bare list, as the seed's; header
//                                          X-Byok-Enabled; available means keys can be added and
//                                          tested now: BYOK in the caller's access and a
//                                          key-encryption key configured)
//   GET    /api/v1/byok/keys               [{"provider","key_id","label","hint","added_at",
//                                          "last_tested_at","last_test_result"}] (a bare list)
//   POST   /api/v1/byok/keys/add           {"provider","api_key","label"?} -> 201 (the key is
//                                          sealed here, before the command, under a fresh data
//                                          key: only the sealed form reaches the writer, the log
//                                          and Kafka; the data key, wrapped under the master key,
//                                          only the side family byok_data_keys)
//   DELETE /api/v1/byok/keys/{provider}    200 {"provider","key_id","removed":true}; 404
//                                          (adds and removals: 429 rate_limited past a user's
//                                          budget of key changes, kKeyChangeBurst); the key's
//                                          data key is deleted (shredded) with it, as a replaced
//                                          key's is with the add that replaces it
//   POST   /api/v1/byok/keys/test/{provider}  opens the key (with its data key; a "v1:" key from
//                                          before data keys with the master key its kek_id
//                                          names, current or previous), asks the
//                                          provider (byok_providers.h), records
//                                          byok.key_tested.v1; 200 {"result","valid",...}
//   GET    /api/v1/byok/stats              {"byok_enabled","providers_available","keys_configured",
//                                          "keys_valid","keys_invalid","keys_error",
//                                          "keys_untested"}
// A plaintext key is never logged, never in an answer, and wiped after use from the request's body
// (req.body, which the server assembles in one buffer and wipes when it outgrows one: ReadBody)
// and from every copy made here. The connection's read buffers (ledgerd's stream's and
// cpp-httplib's) are reused or freed, not wiped.
#include <openssl/rand.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "events/types.h"
#include "http/byok_providers.h"
#include "http/idempotency.h"
#include "http/problem.h"
#include "http/routes.h"
#include "http/secret_box.h"
#include "http/user_limiter.h"
#include "projections/byok.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/subscriptions.h"
#include "projections/usage.h"

namespace ledger::http {

namespace {

namespace pj = ledger::projections;
using JsonWriter = json::Writer;

constexpr char kProvidersPath[] = "/api/v1/byok/providers";
constexpr char kKeysPath[] = "/api/v1/byok/keys";
constexpr char kAddPath[] = "/api/v1/byok/keys/add";
constexpr char kKeyPattern[] = R"(/api/v1/byok/keys/([^/]+))";
constexpr char kKeyName[] = "/api/v1/byok/keys/{provider}";
constexpr char kTestPattern[] = R"(/api/v1/byok/keys/test/([^/]+))";
constexpr char kTestName[] = "/api/v1/byok/keys/test/{provider}";
constexpr char kStatsPath[] = "/api/v1/byok/stats";
constexpr size_t kAddBodyBytesMax = 4 * 1024;

// Per user (UserLimiter):
//
// Key tests: each asks the provider from this server and appends an event, so a user looping on
// it -- or on add-then-test with keys from elsewhere: a key checker -- would grow the log for ever
// and get the server's address throttled by the providers for every user. A burst of 5 (every
// provider at once), then one per 12 s.
//
// Key changes (adds and removals, one bucket): each appends a permanent event that Kafka carries
// too (an add ~1.2 KB), and adding again for a provider or removing and adding again succeeds
// every time, so a loop filled the disk. A burst of 10 (every provider, with a typo or two), then
// one per 20 s: at most ~4,300 changes, ~5 MB of log, per user a day.
constexpr int64_t kKeyTestBurst = 5;
constexpr int64_t kKeyTestIntervalUs = 12'000'000;
constexpr int64_t kKeyChangeBurst = 10;
constexpr int64_t kKeyChangeIntervalUs = 20'000'000;

struct ByokRouteContext {
  Ledger* ledger = nullptr;
  const SecretBox* box = nullptr;
  std::vector<const SecretBox*> previous_boxes;  // AppContext::byok_previous_boxes
  const Clock* clock = nullptr;
  std::map<std::string, std::string> base_urls;
  int timeout_ms = 5000;
  std::unique_ptr<UserLimiter> test_limiter =
      std::make_unique<UserLimiter>(kKeyTestBurst, kKeyTestIntervalUs);
  std::unique_ptr<UserLimiter> change_limiter =
      std::make_unique<UserLimiter>(kKeyChangeBurst, kKeyChangeIntervalUs);
};

void OptTimeUs(JsonWriter* w, const std::optional<int64_t>& t_us) {
  if (t_us) {
    json::String(w, pj::FormatRfc3339Micros(*t_us));
  } else {
    w->Null();
  }
}

bool RequireBox(const ByokRouteContext& c, httplib::Response& res) {
  if (c.box != nullptr) return true;
  WriteProblem(503, "byok_not_configured",
               "no key-encryption key is configured (LEDGER_MASTER_KEY_FILE)", &res);
  return false;
}

// What the caller's BYOK answers start from: one snapshot, whether the caller may use BYOK now
// (only when `with_access`), and the caller's keys. False after writing a problem. Without a
// key-encryption key nobody may: every add and test is 503 byok_not_configured, and a UI reading
// available / X-Byok-Enabled / byok_enabled true offered "Add key" only for it to fail.
struct CallerKeys {
  std::unique_ptr<ReadView> view;
  bool byok_enabled = false;
  std::vector<pj::ByokKeyRow> keys;
};
bool LoadCallerKeys(const ByokRouteContext& c, const Identity& identity, bool with_access,
                    CallerKeys* out, httplib::Response& res) {
  out->view = c.ledger->Snapshot();
  Status s;
  if (with_access && c.box != nullptr) {
    s = pj::ByokAllowed(*out->view, identity.subject, c.clock->NowMicros() / 1'000'000,
                        &out->byok_enabled);
  }
  if (s.ok()) s = pj::ListByokKeys(*out->view, identity.subject, &out->keys);
  if (!s.ok()) WriteStatusProblem(s, &res);
  return s.ok();
}

void Providers(const ByokRouteContext& c, const httplib::Request&, httplib::Response& res,
               const Identity& identity) {
  CallerKeys caller;
  if (!RequireLedger(c.ledger, res) || !LoadCallerKeys(c, identity, true, &caller, res)) return;
  // A bare list, as the seed's List[ProviderInfo]; whether the caller may use BYOK now is each
  // provider's `available` (and the X-Byok-Enabled header).
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartArray();
  for (const ByokProvider& p : ByokProviders()) {
    bool configured = false;
    for (const auto& k : caller.keys) configured = configured || k.provider == p.id;
    w.StartObject();
    w.Key("id");
    json::String(&w, p.id);
    w.Key("display_name");
    json::String(&w, p.display_name);
    w.Key("key_prefix");
    json::String(&w, p.key_prefix);
    w.Key("configured");
    w.Bool(configured);
    w.Key("available");
    w.Bool(caller.byok_enabled);
    w.EndObject();
  }
  w.EndArray();
  WriteJsonAt(200, json::Text(buf), caller.view->position(), &res);
  res.set_header("X-Byok-Enabled", caller.byok_enabled ? "true" : "false");
}

void Keys(const ByokRouteContext& c, const httplib::Request&, httplib::Response& res,
          const Identity& identity) {
  CallerKeys caller;
  if (!RequireLedger(c.ledger, res) || !LoadCallerKeys(c, identity, false, &caller, res)) return;
  // A bare list, as the seed's List[APIKeyResponse].
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartArray();
  for (const pj::ByokKeyRow& k : caller.keys) {
    w.StartObject();
    w.Key("provider");
    json::String(&w, k.provider);
    w.Key("key_id");
    json::String(&w, k.key_id);
    w.Key("label");
    if (k.label) {
      json::String(&w, *k.label);
    } else {
      w.Null();
    }
    w.Key("hint");
    json::String(&w, k.hint);
    w.Key("added_at");
    json::String(&w, pj::FormatRfc3339Micros(k.added_at_us));
    w.Key("last_tested_at");
    OptTimeUs(&w, k.tested_at_us);
    w.Key("last_test_result");
    if (k.test_result) {
      json::String(&w, *k.test_result);
    } else {
      w.Null();
    }
    w.EndObject();
  }
  w.EndArray();
  WriteJsonAt(200, json::Text(buf), caller.view->position(), &res);
}

// Wipes `text` (WipeSecret) on every way out of the scope.
struct WipedOnExit {
  std::string* text;
  ~WipedOnExit() { WipeSecret(text); }
};

bool PrintableKey(std::string_view key) {
  for (char ch : key) {
    if (ch <= ' ' || ch > '~') return false;
  }
  return true;
}

// {"provider","api_key","label"?}. Problems never quote the key.
Status ParseAddBody(const std::string& body, std::string* provider, std::string* api_key,
                    std::optional<std::string>* label) {
  if (body.size() > kAddBodyBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large", "the body is over 4 KiB");
  }
  // Parsed in place in a copy that is wiped on the way out: a copying parse would leave the key
  // in the document's freed memory pool.
  std::string scratch = body;
  WipedOnExit wiped{&scratch};
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(pj::ParseJsonObjectInsitu(&scratch, &doc));
  for (const auto& m : doc.GetObject()) {
    const std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name != "provider" && name != "api_key" && name != "label") {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + pj::Truncated(name) + "'");
    }
  }
  pj::ObjectReader reader(doc);
  LEDGER_RETURN_IF_ERROR(reader.String("provider", true, provider));
  Status s = reader.String("api_key", true, api_key);
  if (!s.ok()) {
    return Status::Make(Code::kUnprocessable, "validation_failed", "api_key: a string is required");
  }
  LEDGER_RETURN_IF_ERROR(reader.NullableString("label", false, label));
  const ByokProvider* p = FindByokProvider(*provider);
  if (p == nullptr) {
    return Status::Make(Code::kUnprocessable, "unknown_provider",
                        "provider: not one of GET /api/v1/byok/providers");
  }
  if (api_key->size() < pj::kByokKeyBytesMin || api_key->size() > pj::kByokKeyBytesMax ||
      !PrintableKey(*api_key)) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "api_key: 16 to 512 printable characters without spaces");
  }
  if (api_key->compare(0, p->key_prefix.size(), p->key_prefix) != 0) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "api_key: " + std::string(p->display_name) + " keys start with '" +
                            std::string(p->key_prefix) + "'");
  }
  // "sk-" also begins Anthropic's "sk-ant-" and OpenRouter's "sk-or-" keys: stored as OpenAI's,
  // the key test would send another provider's key to OpenAI.
  for (const ByokProvider& other : ByokProviders()) {
    if (other.key_prefix.size() > p->key_prefix.size() &&
        api_key->compare(0, other.key_prefix.size(), other.key_prefix) == 0) {
      return Status::Make(Code::kUnprocessable, "validation_failed",
                          "api_key: this is " + std::string(other.display_name) +
                              "'s key format (provider '" + std::string(other.id) + "')");
    }
  }
  if (*label && (label->value().size() > pj::kByokLabelBytesMax || !pj::IsDisplayText(**label))) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "label: at most 100 bytes of text without control characters");
  }
  return Status::OK();
}

// A key change (add or removal) spends one of the user's key changes (429 rate_limited past the
// budget, not submitted) and is submitted. Only the writer knows whether the user's state allows
// it, so the budget is spent first and given back when the writer refuses it from that state (a
// 4xx: 404 no key to remove, 403 byok_not_in_plan, 409 idempotency_key_reused) or answers it
// from its record: nothing was appended. Ten DELETEs of a provider without a key (404 each) left
// no budget for the add the user meant to make.
void SubmitKeyChange(const ByokRouteContext& c, const Identity& identity, Command* command,
                     httplib::Response& res) {
  if (!c.change_limiter->TakeOrRefuse(identity.subject, c.clock->NowMicros(),
                                      "keys are added or removed", res)) {
    return;
  }
  const CommandResult result = c.ledger->Submit(command);
  const int refused = result.status.ok() ? 0 : HttpStatusFor(result.status.code());
  if ((refused >= 400 && refused < 500) || (result.status.ok() && result.replayed)) {
    c.change_limiter->GiveBack(identity.subject);
  }
  WriteCommandResult(result, &res);
}

void AddKey(const ByokRouteContext& c, const httplib::Request& req, httplib::Response& res,
            const Identity& identity) {
  // The body holds the plaintext key, until the add is answered (its idempotency hash reads it).
  // cpp-httplib hands handlers a const Request; it is the connection loop's own local object
  // (HttpServer's Dispatch put the body there), freed after the answer without a wipe.
  WipedOnExit wiped_body{&const_cast<httplib::Request&>(req).body};
  if (!RequireLedger(c.ledger, res) || !RequireBox(c, res)) return;
  std::string provider, api_key;
  std::optional<std::string> label;
  Status s = ParseAddBody(req.body, &provider, &api_key, &label);
  if (!s.ok()) {
    WipeSecret(&api_key);
    WriteStatusProblem(s, &res);
    return;
  }
  unsigned char id_bytes[16];
  if (RAND_bytes(id_bytes, sizeof(id_bytes)) != 1) {
    WipeSecret(&api_key);
    WriteProblem(500, "internal", "no randomness for a key id", &res);
    return;
  }
  pj::ByokKeyRow key;
  key.provider = provider;
  key.key_id = "key_" + HexEncode(std::string_view(reinterpret_cast<const char*>(id_bytes),
                                                   sizeof(id_bytes)));
  key.label = std::move(label);
  key.hint = pj::ByokKeyHint(api_key);
  key.kek_id = c.box->key_id();
  // Under a data key of its own, which only the side row keeps (wrapped): the removal of the key
  // deletes that row, and the sealed key in the log opens for nobody from then on.
  std::string wrapped_data_key;
  s = c.box->SealWithDataKey(api_key,
                             pj::ByokAssociatedData(identity.subject, provider, key.key_id),
                             &key.encrypted_key, &wrapped_data_key);
  WipeSecret(&api_key);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  pj::AddByokKey command(identity.subject, std::move(key), std::move(wrapped_data_key));
  if (!ApplyIdempotencyKey(req, kAddPath, identity, &command, &res)) return;
  // The body holds the plaintext key: its stored request hash is keyed (SecretBox::Digest).
  if (!command.idempotency_key.empty()) {
    std::string request = req.method + " " + req.path + "\n";
    request += req.body;
    command.request_hash = c.box->Digest(request);
    WipeSecret(&request);
  }
  // A retry of a recorded add is answered from its record before the limiter: it appends nothing,
  // so it spends nothing and is not refused.
  if (AnswerStoredRetry(c.ledger, command, &res)) return;
  SubmitKeyChange(c, identity, &command, res);
}

void RemoveKey(const ByokRouteContext& c, const httplib::Request& req, httplib::Response& res,
               const Identity& identity) {
  if (!RequireLedger(c.ledger, res)) return;
  const std::string provider = req.matches[1].str();
  if (FindByokProvider(provider) == nullptr) {
    WriteProblem(404, "not_found", "no such provider", &res);
    return;
  }
  pj::RemoveByokKey command(identity.subject, provider);
  if (!ApplyIdempotencyKey(req, kKeyName, identity, &command, &res)) return;
  // Removing and adding again is a loop of changes as adding again is: one bucket for both.
  if (AnswerStoredRetry(c.ledger, command, &res)) return;
  SubmitKeyChange(c, identity, &command, res);
}

void TestKey(const ByokRouteContext& c, const httplib::Request& req, httplib::Response& res,
             const Identity& identity) {
  if (!RequireLedger(c.ledger, res) || !RequireBox(c, res)) return;
  const std::string provider_id = req.matches[1].str();
  const ByokProvider* provider = FindByokProvider(provider_id);
  if (provider == nullptr) {
    WriteProblem(404, "not_found", "no such provider", &res);
    return;
  }
  // A retry with its Idempotency-Key gets the first answer without asking the provider again.
  if (AnswerStoredRetry(c.ledger, req, kTestName, identity, &res)) return;
  pj::ByokKeyRow key;
  std::string wrapped_data_key;  // of a "v2:" key; empty for a "v1:" key
  {
    std::unique_ptr<ReadView> view = c.ledger->Snapshot();
    Status s = pj::GetByokKey(*view, identity.subject, provider_id, &key);
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    // From the same snapshot as the key: a key replaced meanwhile is not read with the data key
    // of another. None for a "v2:" key in the store: it was rebuilt from the log (replay), which
    // has no data keys.
    if (SecretBox::IsSealedWithDataKey(key.encrypted_key)) {
      s = pj::GetByokWrappedDataKey(*view, identity.subject, provider_id, key.key_id,
                                    &wrapped_data_key);
      if (s.IsNotFound()) {
        WriteProblem(409, "key_unreadable",
                     "the key's data key is not in this store (rebuilt from the log?); add it "
                     "again",
                     &res);
        return;
      }
      if (!s.ok()) {
        WriteStatusProblem(s, &res);
        return;
      }
    }
    // A key kept from a plan that has lapsed or lost BYOK is listed, not used: testing it would
    // still call the provider from this server and append an event.
    bool allowed = false;
    std::string ended;
    s = pj::ByokAllowed(*view, identity.subject, c.clock->NowMicros() / 1'000'000, &allowed,
                        &ended);
    if (!s.ok()) {
      WriteStatusProblem(s, &res);
      return;
    }
    if (!allowed) {
      WriteProblem(403, "byok_not_in_plan",
                   "testing a key needs an active plan with BYOK (Starter or above)" +
                       (ended.empty() ? std::string() : "; access ended: " + ended),
                   &res);
      return;
    }
  }
  // The key is opened before a test is spent: a key that does not open is answered from ledgerd's
  // own state (409 key_unreadable), asks no provider and appends nothing, so it spends nothing
  // (five tests of a key sealed under a replaced key-encryption key left none for the key added
  // again in its place).
  //
  // A "v2:" key opens with its data key, which the start re-wrapped under the current key
  // whatever kek_id its event names (http/byok_rotation.h); a key added before data keys ("v1:")
  // is sealed under the key its kek_id names, the current one or a previous one still configured.
  const SecretBox* box = c.box;
  if (wrapped_data_key.empty() && key.kek_id != c.box->key_id()) {
    box = nullptr;
    for (const SecretBox* previous : c.previous_boxes) {
      if (previous->key_id() == key.kek_id) box = previous;
    }
  }
  if (box == nullptr) {
    WriteProblem(409, "key_unreadable",
                 "the key was sealed under another key-encryption key; add it again", &res);
    return;
  }
  std::string api_key;
  const std::string aad = pj::ByokAssociatedData(identity.subject, provider_id, key.key_id);
  Status s = wrapped_data_key.empty()
                 ? box->Open(key.encrypted_key, aad, &api_key)
                 : box->OpenWithDataKey(key.encrypted_key, wrapped_data_key, aad, &api_key);
  if (!s.ok()) {
    WipeSecret(&api_key);
    WriteProblem(409, "key_unreadable", "the stored key does not open; add it again", &res);
    return;
  }
  if (!c.test_limiter->TakeOrRefuse(identity.subject, c.clock->NowMicros(),
                                    "keys are tested", res)) {
    WipeSecret(&api_key);
    return;
  }
  auto url = c.base_urls.find(provider_id);
  const std::string base =
      url != c.base_urls.end() ? url->second : std::string(provider->default_base_url);
  KeyTestResult result = TestProviderKey(*provider, base, api_key, c.timeout_ms);
  WipeSecret(&api_key);
  pj::RecordByokKeyTest command(identity.subject, provider_id, key.key_id,
                                std::string(KeyVerdictName(result.verdict)),
                                result.provider_status, result.detail);
  if (!ApplyIdempotencyKey(req, kTestName, identity, &command, &res)) return;
  WriteCommandResult(c.ledger->Submit(&command), &res);
}

void Stats(const ByokRouteContext& c, const httplib::Request&, httplib::Response& res,
           const Identity& identity) {
  CallerKeys caller;
  if (!RequireLedger(c.ledger, res) || !LoadCallerKeys(c, identity, true, &caller, res)) return;
  // Every key in one bucket: its last test's result (valid, invalid, error) or none.
  int64_t valid = 0, invalid = 0, error = 0, untested = 0;
  for (const auto& k : caller.keys) {
    if (!k.test_result) {
      ++untested;
    } else if (*k.test_result == "valid") {
      ++valid;
    } else if (*k.test_result == "invalid") {
      ++invalid;
    } else {
      ++error;
    }
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("byok_enabled");
  w.Bool(caller.byok_enabled);
  // The providers /providers calls available: every one while the caller may use BYOK, none
  // otherwise (it said 4 without a key-encryption key, next to four `available: false`).
  w.Key("providers_available");
  w.Uint64(caller.byok_enabled ? ByokProviders().size() : 0);
  w.Key("keys_configured");
  w.Uint64(caller.keys.size());
  w.Key("keys_valid");
  w.Int64(valid);
  w.Key("keys_invalid");
  w.Int64(invalid);
  w.Key("keys_error");
  w.Int64(error);
  w.Key("keys_untested");
  w.Int64(untested);
  w.EndObject();
  WriteJsonAt(200, json::Text(buf), caller.view->position(), &res);
}

}  // namespace

void AddByokRoutes(const AppContext& context, RouteTable* routes) {
  auto c = std::make_shared<ByokRouteContext>();
  c->ledger = context.ledger;
  c->box = context.byok_box;
  c->previous_boxes = context.byok_previous_boxes;
  c->clock = context.clock != nullptr ? context.clock : SystemClock::Default();
  c->base_urls = context.byok_base_urls;
  c->timeout_ms = context.byok_test_timeout_ms;
  routes->Add("GET", kProvidersPath, kProvidersPath, Policy::kUser, WithContext(c, Providers));
  routes->Add("GET", kKeysPath, kKeysPath, Policy::kUser, WithContext(c, Keys));
  routes->Add("POST", kAddPath, kAddPath, Policy::kUser, WithContext(c, AddKey));
  routes->Add("POST", kTestPattern, kTestName, Policy::kUser, WithContext(c, TestKey));
  routes->Add("DELETE", kKeyPattern, kKeyName, Policy::kUser, WithContext(c, RemoveKey));
  routes->Add("GET", kStatsPath, kStatsPath, Policy::kUser, WithContext(c, Stats));
}

}  // namespace ledger::http
