// BYOK over real HTTP on loopback against a real Ledger (http/byok_routes.cc,
// projections/byok.h, http/secret_box.h): keys are sealed before they reach the log, masked in
// every answer, replaced and removed per provider, gated by the plan, and tested against a fake
// of each provider that takes only that provider's own call and authentication headers. The plaintext key is looked
// for everywhere it must not be: answers, event data, and every byte of the data directory.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "events/event.h"
#include "events/ledger.h"
#include "http/app_context.h"
#include "http/base64.h"
#include "http/byok_providers.h"
#include "http/byok_rotation.h"
#include "http/problem.h"
#include "http/routes.h"
#include "http/secret_box.h"
#include "projections/byok.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "projections/usage.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/fake_byok_provider.h"
#include "tests/support/fault_fs.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tls_auth_server.h"
#include "tests/support/tokens.h"
#include "tests/support/trickling_server.h"
#include "tests/support/usage_fixtures.h"
#include "tests/support/wal_records.h"

namespace ledger::http {
namespace {

using ledger::testing::FakeProvider;
using ledger::testing::HttpReply;
using ledger::testing::kStripeT0;
using ledger::testing::OnPlan;
using ledger::testing::TestHttpClient;
using ledger::testing::TokenClaims;
namespace pj = ledger::projections;

constexpr int64_t kUs = 1'000'000;
constexpr int64_t kNow = kStripeT0 + 1000;
constexpr char kOpenAiKey[] = "sk-proj-alice-0123456789abcdefghijklmnopqrstuv";
constexpr char kAnthropicKey[] = "sk-ant-api03-alice-zyxwvutsrqponmlkjihgfedcba";
constexpr char kHuggingFaceKey[] = "hf_alice_0123456789abcdefghijklmnopqrstu";
constexpr char kOpenRouterKey[] = "sk-or-v1-alice-0123456789abcdefghijklmnopq";

// A provider on a raw socket that answers every request with `answer`, whatever it is (a status
// line no HTTP server library would write, say).
class RawProvider {
 public:
  explicit RawProvider(std::string answer) : answer_(std::move(answer)) {
    fd_ = ledger::testing::ListenLoopback(&port_);
    if (fd_ >= 0) thread_ = std::thread([this] { Serve(); });
  }
  ~RawProvider() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);  // wakes the accept()
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int calls() const { return calls_.load(); }

 private:
  void Serve() {
    for (;;) {
      const int connection = ::accept(fd_, nullptr, nullptr);
      if (connection < 0) return;
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::recv(connection, buf, sizeof(buf), 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      ++calls_;
      (void)::send(connection, answer_.data(), answer_.size(), MSG_NOSIGNAL);
      ::close(connection);
    }
  }

  const std::string answer_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<int> calls_{0};
  std::thread thread_;
};

class ByokRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    OpenLedger(nullptr);
    ASSERT_TRUE(ledger_ != nullptr);
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());
    ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("alice", "starter")).ok());
    ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("bob", "starter")).ok());
    ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("tina", "trial", "trialing")).ok());
    ASSERT_TRUE(SecretBox::Create(std::string(32, '\x5a'), &box_).ok());
    Start(box_.get());
  }

  // Opens the ledger over the data directory on `env` (null: the real file system), as ledgerd
  // does (its side families declared).
  void OpenLedger(rocksdb::Env* env) {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = pj::AllFolds();
    options.side_families = pj::AllSideFamilies();
    options.clock = &clock_;
    options.env = env;
    options.sync = sync_;
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
    // The open compacts every side family on a thread of its own (a delete acknowledged before a
    // crash); while it replaces the file that holds a row, a scan of the directory can miss the
    // row in both files. Waited for, so that DataDirContains sees settled table files.
    s = ledger_->WaitForSideCompactions(30'000);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  // A restart: the routes and the ledger stop, and start again over the same directory.
  void Restart(rocksdb::Env* env) {
    if (stack_) stack_->Stop();
    stack_.reset();
    ledger_.reset();
    OpenLedger(env);
    Start(box_.get());
  }

  // The BYOK routes over this test's ledger, clock and fake providers.
  RouteTable Routes(const SecretBox* box) {
    AppContext context;
    context.ledger = ledger_.get();
    context.clock = &clock_;
    context.byok_box = box;
    context.byok_previous_boxes = previous_boxes_;
    context.byok_base_urls = {{"openai", provider_.url("openai")},
                              {"anthropic", provider_.url("anthropic") + "/"},
                              {"huggingface", provider_.url("huggingface")},
                              {"openrouter", provider_.url("openrouter")}};
    for (const auto& [provider, url] : base_url_overrides_) context.byok_base_urls[provider] = url;
    context.byok_test_timeout_ms = 2000;
    RouteTable routes;
    AddByokRoutes(context, &routes);
    return routes;
  }

  void Start(const SecretBox* box) {
    if (stack_) stack_->Stop();
    RouteTable routes = Routes(box);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    stack_ = std::make_unique<ledger::testing::TestHttpStack>();
    Status s = stack_->Start(std::move(routes), auth, &clock_,
                             ledger::testing::TestHttpStack::DefaultOptions());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    if (stack_) stack_->Stop();
    for (const Event& e : AllEvents()) {
      EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type << " " << e.data;
    }
  }

  std::vector<Event> AllEvents() {
    std::vector<Event> all, page;
    Position after(0);
    for (;;) {
      EXPECT_TRUE(ledger_->ReadEvents(after, 1000, EventFilter{}, &page).ok());
      if (page.empty()) break;
      all.insert(all.end(), page.begin(), page.end());
      after = page.back().position;
    }
    return all;
  }

  TestHttpClient As(const std::string& user) {
    TestHttpClient client("127.0.0.1", stack_->port());
    // Minted at the clock's time: a test that moves the clock days ahead still signs in.
    const int64_t now_s = clock_.NowMicros() / kUs;
    client.set_bearer(ledger::testing::MintHs256(TokenClaims::User(user, now_s),
                                                 ledger::testing::kTestHs256Secret));
    return client;
  }
  HttpReply Add(const std::string& user, const std::string& provider, const std::string& key,
                const std::string& label = "main") {
    return As(user).Post("/api/v1/byok/keys/add",
                         "{\"provider\":" + JsonQuote(provider) + ",\"api_key\":" + JsonQuote(key) +
                             ",\"label\":" + JsonQuote(label) + "}");
  }
  uint64_t Head() const { return ledger_->Head().value(); }

  // The data of the byok.key_added.v1 that added `key_id`, from the log.
  rapidjson::Document AddedEvent(const std::string& key_id) {
    rapidjson::Document data;
    for (const Event& e : AllEvents()) {
      if (e.type != pj::kByokKeyAddedV1) continue;
      data.Parse(e.data.c_str());
      if (data.IsObject() && key_id == data["key_id"].GetString()) return data;
    }
    ADD_FAILURE() << "no byok.key_added.v1 of " << key_id;
    return data;
  }
  // The wrapped data key of the key, from the store's side family; NotFound once shredded.
  Status WrappedDataKey(const std::string& user, const std::string& provider,
                        const std::string& key_id, std::string* wrapped) {
    return pj::GetByokWrappedDataKey(*ledger_->Snapshot(), user, provider, key_id, wrapped);
  }
  // The rows of the data-key family for `user` (any provider, any key).
  size_t DataKeyRows(const std::string& user) {
    size_t rows = 0;
    EXPECT_TRUE(ledger_->Snapshot()
                    ->Scan(pj::kByokDataKeysFamily, user + "/",
                           [&](std::string_view, std::string_view) { return ++rows > 0; })
                    .ok());
    return rows;
  }

  // Adds alice's OpenAI key as a key from before data keys: "v1:", sealed under the current
  // key-encryption key itself, no data-key row; *key (may be null) is its row.
  void AddKeySealedBeforeDataKeys(pj::ByokKeyRow* key = nullptr) {
    pj::ByokKeyRow row;
    row.provider = "openai";
    row.key_id = "key_00112233445566778899aabbccddeeff";
    row.hint = pj::ByokKeyHint(kOpenAiKey);
    row.kek_id = box_->key_id();
    ASSERT_TRUE(box_->Seal(kOpenAiKey, pj::ByokAssociatedData("alice", "openai", row.key_id),
                           &row.encrypted_key)
                    .ok());
    if (key != nullptr) *key = row;
    pj::AddByokKey old_add("alice", row);
    CommandResult r = ledger_->Submit(&old_add);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  }

  // Restarts on the fault-injecting file system, adds alice's `key` for `provider` (201), cuts
  // the power right after the acknowledgement and restarts on the real file system with what a
  // machine would have kept (`report`: what the power loss dropped). Returns the added key's id.
  std::string AddThenLosePower(const std::string& provider, const std::string& key,
                               ledger::testing::FaultFs::DropReport* report) {
    Restart(fault_.env());
    HttpReply added = Add("alice", provider, key);
    EXPECT_EQ(added.status, 201) << added.body;
    fault_.fs()->CutPower();
    stack_->Stop();
    stack_.reset();
    ledger_.reset();  // closed while the power is off: closing makes nothing more durable
    EXPECT_TRUE(fault_.fs()
                    ->DropUnsyncedData(ledger::testing::FaultFs::DropMode::kDropAll, 1, report)
                    .ok());
    Restart(nullptr);
    return added.status == 201 ? added.Json()["key_id"].GetString() : "";
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject() && doc.HasMember("code")) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  // True when `needle` occurs in any file under the data directory (whose name ends with
  // `suffix`: ".sst", the table files).
  bool DataDirContains(const std::string& needle, std::string_view suffix = "") {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_.path())) {
      if (!entry.is_regular_file() || !entry.path().string().ends_with(suffix)) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (bytes.find(needle) != std::string::npos) return true;
    }
    return false;
  }

  ledger::testing::TempDir dir_;
  ManualClock clock_{kNow * kUs};
  // For the tests that restart on a fault-injecting file system; outlives the ledger on it.
  ledger::testing::FaultEnv fault_;
  bool sync_ = true;  // LedgerOptions::sync of the next open; false ONLY for negative controls
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<SecretBox> box_;
  std::vector<const SecretBox*> previous_boxes_;  // AppContext::byok_previous_boxes of Start()
  FakeProvider provider_;
  std::map<std::string, std::string> base_url_overrides_;  // by provider, over the ones above
  std::unique_ptr<ledger::testing::TestHttpStack> stack_;
};

// The request's body holds the plaintext key; the add handler wipes it on every way out -- an add
// made, and one refused after the body was read (the server's own buffers: http/server.cc
// ReadBody). Called as the server calls it (Dispatch), the body in req.body.
TEST_F(ByokRoutesTest, AnAddWipesTheKeyFromTheRequestBody) {
  RouteTable routes = Routes(box_.get());
  const Route* add = nullptr;
  for (const Route& r : routes.routes()) {
    if (r.method == "POST" && r.name == "/api/v1/byok/keys/add") add = &r;
  }
  ASSERT_NE(add, nullptr);
  Identity alice;
  alice.kind = Identity::Kind::kUser;
  alice.subject = "alice";
  for (const auto& [body, status] : std::vector<std::pair<std::string, int>>{
           {"{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + "}", 201},
           {"{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + ",\"label\":" +
                JsonQuote(std::string(200, 'x')) + "}",
            422},
           {"{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + ",\"extra\":1}",
            422}}) {
    SCOPED_TRACE(body);
    httplib::Request req;
    req.method = "POST";
    req.path = "/api/v1/byok/keys/add";
    req.body = body;
    req.set_header("Idempotency-Key", "wipe-" + std::to_string(status) + std::to_string(body.size()));
    httplib::Response res;
    add->handler(req, res, alice);
    EXPECT_EQ(res.status, status) << res.body;
    EXPECT_EQ(req.body.find(kOpenAiKey), std::string::npos) << req.body;
    EXPECT_TRUE(req.body.empty());
  }
}

TEST_F(ByokRoutesTest, AKeyIsSealedMaskedAndNeverStoredInPlaintext) {
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(added.status, 201) << added.body;
  EXPECT_EQ(added.body.find(kOpenAiKey), std::string::npos) << added.body;
  rapidjson::Document doc = added.Json();
  EXPECT_EQ(std::string(doc["hint"].GetString()), "sk-…stuv");
  EXPECT_TRUE(doc["replaced_key_id"].IsNull());

  HttpReply keys = As("alice").Get("/api/v1/byok/keys");
  ASSERT_EQ(keys.status, 200) << keys.body;
  EXPECT_EQ(keys.body.find(kOpenAiKey), std::string::npos) << keys.body;
  doc = keys.Json();
  ASSERT_EQ(doc.Size(), 1u);
  EXPECT_STREQ(doc[0]["provider"].GetString(), "openai");
  EXPECT_STREQ(doc[0]["label"].GetString(), "main");
  EXPECT_TRUE(doc[0]["last_test_result"].IsNull());

  // The event holds the sealed key, which opens to the key with its data key (kept beside the
  // log, wrapped under the daemon's key-encryption key) and the owner's associated data only.
  std::vector<Event> events = AllEvents();
  const Event& event = events.back();
  ASSERT_EQ(event.type, pj::kByokKeyAddedV1);
  EXPECT_EQ(event.data.find(kOpenAiKey), std::string::npos) << event.data;
  rapidjson::Document data;
  data.Parse(event.data.c_str());
  const std::string key_id = data["key_id"].GetString();
  const std::string sealed = data["encrypted_key"].GetString();
  EXPECT_EQ(std::string(data["kek_id"].GetString()), box_->key_id());
  std::string wrapped, opened;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).ok());
  const std::string aad = pj::ByokAssociatedData("alice", "openai", key_id);
  ASSERT_TRUE(box_->OpenWithDataKey(sealed, wrapped, aad, &opened).ok());
  EXPECT_EQ(opened, kOpenAiKey);
  EXPECT_FALSE(box_->OpenWithDataKey(sealed, wrapped, pj::ByokAssociatedData("bob", "openai",
                                                                             key_id),
                                     &opened)
                   .ok());
  // Not under the key-encryption key itself: the data key is what a removal deletes.
  EXPECT_FALSE(box_->Open(sealed, aad, &opened).ok());

  // Not one byte of the data directory (WAL, tables) holds the key after a flush.
  ASSERT_TRUE(ledger_->Flush().ok());
  EXPECT_FALSE(DataDirContains(kOpenAiKey));
  // Negative control: the hint and the label are there, so the search does see stored text.
  EXPECT_TRUE(DataDirContains(R"("label":"main")"));
}

TEST_F(ByokRoutesTest, TheStoredRequestHashOfAnAddIsKeyed) {
  const std::string body = "{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + "}";
  HttpReply added = As("alice").Post("/api/v1/byok/keys/add", body, {{"Idempotency-Key", "add-1"}});
  ASSERT_EQ(added.status, 201) << added.body;
  HttpReply again = As("alice").Post("/api/v1/byok/keys/add", body, {{"Idempotency-Key", "add-1"}});
  EXPECT_EQ(again.status, 201) << again.body;
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(again.body, added.body);
  // SHA-256 of the request would confirm a guessed key to anyone with the data directory.
  const std::string request = "POST /api/v1/byok/keys/add\n" + body;
  const Hash plain = Sha256(request);
  const Hash keyed = box_->Digest(request);
  // The search sees the keyed digest where it is stored whole: the log's record, before a flush
  // writes it into a compressed table file (whose compressor may split its bytes).
  EXPECT_TRUE(DataDirContains(std::string(keyed.begin(), keyed.end())));
  EXPECT_FALSE(DataDirContains(std::string(plain.begin(), plain.end())));
  ASSERT_TRUE(ledger_->Flush().ok());
  EXPECT_FALSE(DataDirContains(std::string(plain.begin(), plain.end())));
}

TEST_F(ByokRoutesTest, AddingAgainReplacesAndRemovingForgets) {
  HttpReply first = Add("alice", "openai", kOpenAiKey, "first");
  ASSERT_EQ(first.status, 201) << first.body;
  const std::string first_id = first.Json()["key_id"].GetString();
  HttpReply second = Add("alice", "openai", std::string(kOpenAiKey) + "X", "second");
  ASSERT_EQ(second.status, 201) << second.body;
  EXPECT_EQ(std::string(second.Json()["replaced_key_id"].GetString()), first_id);
  ASSERT_EQ(Add("alice", "anthropic", kAnthropicKey).status, 201);

  rapidjson::Document doc = As("alice").Get("/api/v1/byok/keys").Json();
  ASSERT_EQ(doc.Size(), 2u);
  EXPECT_STREQ(doc[0]["provider"].GetString(), "anthropic");
  EXPECT_STREQ(doc[1]["label"].GetString(), "second");
  HttpReply providers = As("alice").Get("/api/v1/byok/providers");
  EXPECT_EQ(providers.Header("X-Byok-Enabled"), "true");
  doc = providers.Json();
  ASSERT_TRUE(doc.IsArray()) << providers.body;  // a bare list, as the seed's List[ProviderInfo]
  int configured = 0;
  for (const auto& p : doc.GetArray()) {
    configured += p["configured"].GetBool() ? 1 : 0;
    EXPECT_TRUE(p["available"].GetBool());
  }
  EXPECT_EQ(configured, 2);

  HttpReply removed = As("alice").Delete("/api/v1/byok/keys/openai");
  ASSERT_EQ(removed.status, 200) << removed.body;
  EXPECT_TRUE(removed.Json()["removed"].GetBool());
  ExpectProblem(As("alice").Delete("/api/v1/byok/keys/openai"), 404, "not_found");
  ExpectProblem(As("alice").Delete("/api/v1/byok/keys/nosuch"), 404, "not_found");
  doc = As("alice").Get("/api/v1/byok/stats").Json();
  EXPECT_EQ(doc["keys_configured"].GetUint64(), 1u);
  // Every provider, as /providers calls each available above.
  EXPECT_EQ(doc["providers_available"].GetUint64(), ByokProviders().size());
  // Bob sees none of it.
  EXPECT_EQ(As("bob").Get("/api/v1/byok/keys").Json().Size(), 0u);
}

TEST_F(ByokRoutesTest, TestingAKeyAsksTheProviderTheWayItAuthenticates) {
  base_url_overrides_["huggingface"] = "http://127.0.0.1:9";  // nothing listens
  Start(box_.get());
  provider_.Accept(kOpenAiKey);
  provider_.Accept(kAnthropicKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  ASSERT_EQ(Add("alice", "anthropic", kAnthropicKey).status, 201);
  ASSERT_EQ(Add("bob", "openai", "sk-bob-not-a-real-key-0000000000").status, 201);
  ASSERT_EQ(Add("bob", "huggingface", "hf_bob_0123456789abcdef").status, 201);

  HttpReply r = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["result"].GetString(), "valid");
  EXPECT_EQ(r.Json()["provider_status"].GetInt(), 200);
  r = As("alice").Post("/api/v1/byok/keys/test/anthropic", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.Json()["valid"].GetBool());
  r = As("bob").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["result"].GetString(), "invalid");
  EXPECT_EQ(r.Json()["provider_status"].GetInt(), 401);
  r = As("bob").Post("/api/v1/byok/keys/test/huggingface", "");  // nothing listens there
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_STREQ(r.Json()["result"].GetString(), "error");
  EXPECT_TRUE(r.Json()["provider_status"].IsNull());
  EXPECT_EQ(provider_.calls(), 3);
  EXPECT_EQ(provider_.wrong_scheme(), 0);

  rapidjson::Document doc = As("alice").Get("/api/v1/byok/keys").Json();
  EXPECT_STREQ(doc[0]["last_test_result"].GetString(), "valid");
  doc = As("bob").Get("/api/v1/byok/stats").Json();
  EXPECT_EQ(doc["keys_configured"].GetInt64(), 2);
  EXPECT_EQ(doc["keys_valid"].GetInt64(), 0);
  EXPECT_EQ(doc["keys_invalid"].GetInt64(), 1);
  ASSERT_TRUE(doc.HasMember("keys_error")) << As("bob").Get("/api/v1/byok/stats").body;
  EXPECT_EQ(doc["keys_error"].GetInt64(), 1);  // each key in one bucket
  EXPECT_EQ(doc["keys_untested"].GetInt64(), 0);
  ExpectProblem(As("bob").Post("/api/v1/byok/keys/test/anthropic", ""), 404, "not_found");
  for (const Event& e : AllEvents()) {
    EXPECT_EQ(e.data.find(kOpenAiKey), std::string::npos) << e.data;
    EXPECT_EQ(e.data.find(kAnthropicKey), std::string::npos) << e.data;
  }
}

// Each provider is asked its own call with its own authentication: a key sent the way another
// provider takes it is refused by the real provider (401), which would make a good key
// "invalid". The fake of each provider takes only its own call and scheme.
TEST_F(ByokRoutesTest, EachProviderIsAskedWithItsOwnScheme) {
  const std::map<std::string, std::string> keys = {{"openai", kOpenAiKey},
                                                   {"anthropic", kAnthropicKey},
                                                   {"huggingface", kHuggingFaceKey},
                                                   {"openrouter", kOpenRouterKey}};
  ASSERT_EQ(keys.size(), ByokProviders().size());
  for (const auto& [provider, key] : keys) {
    provider_.Accept(key);
    ASSERT_EQ(Add("alice", provider, key).status, 201) << provider;
  }
  for (const auto& [provider, key] : keys) {
    HttpReply r = As("alice").Post("/api/v1/byok/keys/test/" + provider, "");
    ASSERT_EQ(r.status, 200) << provider << " " << r.body;
    EXPECT_STREQ(r.Json()["result"].GetString(), "valid") << provider << " " << r.body;
    EXPECT_EQ(r.Json()["provider_status"].GetInt(), 200) << provider << " " << r.body;
    EXPECT_EQ(provider_.calls(provider), 1) << provider;
  }
  EXPECT_EQ(provider_.calls(), 4);
  EXPECT_EQ(provider_.wrong_scheme(), 0);

  // The fakes refuse another provider's scheme as the real ones do: each provider's call made
  // the other way (the scheme flag flipped) is a 401, so the key shows as invalid.
  for (const auto& [provider, key] : keys) {
    ByokProvider flipped = *FindByokProvider(provider);
    flipped.anthropic_headers = !flipped.anthropic_headers;
    const KeyTestResult result = TestProviderKey(flipped, provider_.url(provider), key, 2000);
    EXPECT_EQ(result.verdict, KeyVerdict::kInvalid) << provider << ": " << result.detail;
    EXPECT_EQ(result.provider_status, 401) << provider;
  }
  EXPECT_EQ(provider_.wrong_scheme(), 4);
  // And another provider's call is none of theirs: OpenAI's path at Hugging Face is a 404.
  ByokProvider wrong_path = *FindByokProvider("huggingface");
  wrong_path.test_path = FindByokProvider("openai")->test_path;
  const int huggingface_calls = provider_.calls("huggingface");
  const KeyTestResult result =
      TestProviderKey(wrong_path, provider_.url("huggingface"), kHuggingFaceKey, 2000);
  EXPECT_EQ(result.verdict, KeyVerdict::kError) << result.detail;
  EXPECT_EQ(result.provider_status, 404);
  EXPECT_EQ(provider_.calls("huggingface"), huggingface_calls);
}

// cpp-httplib reads any three-digit status; byok.key_tested.v1's provider_status is an HTTP
// status (100-599) or null. A provider's (or a proxy's) 999 was written into the event as is,
// breaking its schema (the TearDown check). Now it is no status: an error, provider_status null.
TEST_F(ByokRoutesTest, AnOutOfRangeProviderStatusIsNotRecorded) {
  RawProvider odd("HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n");
  base_url_overrides_["openai"] = odd.url();
  Start(box_.get());
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(added.status, 201) << added.body;
  const std::string key_id = added.Json()["key_id"].GetString();

  HttpReply r = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(odd.calls(), 1);  // the provider was asked and answered
  EXPECT_STREQ(r.Json()["result"].GetString(), "error");
  EXPECT_TRUE(r.Json()["provider_status"].IsNull()) << r.body;
  rapidjson::Document tested;
  for (const Event& e : AllEvents()) {
    if (e.type == pj::kByokKeyTestedV1) tested.Parse(e.data.c_str());
  }
  ASSERT_TRUE(tested.IsObject());
  EXPECT_STREQ(tested["key_id"].GetString(), key_id.c_str());
  EXPECT_STREQ(tested["result"].GetString(), "error");
  EXPECT_TRUE(tested["provider_status"].IsNull());
  rapidjson::Document stats = As("alice").Get("/api/v1/byok/stats").Json();
  EXPECT_EQ(stats["keys_error"].GetInt64(), 1);
  // Each side on its own: the test call reports no status, and the command records none.
  KeyTestResult result = TestProviderKey(*FindByokProvider("openai"), odd.url(), kOpenAiKey, 2000);
  EXPECT_EQ(odd.calls(), 2);
  EXPECT_EQ(result.verdict, KeyVerdict::kError);
  EXPECT_EQ(result.provider_status, 0);
  const uint64_t head = Head();
  pj::RecordByokKeyTest record("alice", "openai", key_id, "error", 999, "odd");
  ASSERT_TRUE(ledger_->Submit(&record).status.ok());
  ASSERT_EQ(Head(), head + 1);
  const std::vector<Event> events = AllEvents();
  tested.Parse(events.back().data.c_str());
  ASSERT_TRUE(tested.IsObject()) << events.back().data;
  EXPECT_TRUE(tested["provider_status"].IsNull()) << events.back().data;
}

TEST_F(ByokRoutesTest, ARetriedTestIsAnsweredOnceWithoutAskingTheProviderAgain) {
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  const std::string path = "/api/v1/byok/keys/test/openai";
  const size_t events = AllEvents().size();
  HttpReply first = As("alice").Post(path, "", {{"Idempotency-Key", "test-1"}});
  ASSERT_EQ(first.status, 200) << first.body;
  HttpReply again = As("alice").Post(path, "", {{"Idempotency-Key", "test-1"}});
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(provider_.calls(), 1);
  EXPECT_EQ(AllEvents().size(), events + 1);
  ExpectProblem(As("alice").Post(path, "", {{"Idempotency-Key", std::string(256, 'k')}}), 400,
                "invalid_idempotency_key");
  // Another key is another test.
  ASSERT_EQ(As("alice").Post(path, "", {{"Idempotency-Key", "test-2"}}).status, 200);
  EXPECT_EQ(provider_.calls(), 2);
  EXPECT_EQ(AllEvents().size(), events + 2);
}

// Each key test asks the provider from this server and appends an event: a user gets a burst of
// five, then one every 12 s (429 rate_limited with Retry-After; the provider is not asked and
// nothing is appended). A retry with its Idempotency-Key is answered from its record and spends
// nothing; another user has a bucket of their own.
TEST_F(ByokRoutesTest, KeyTestsAreRateLimitedPerUser) {
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  ASSERT_EQ(Add("bob", "openai", kOpenAiKey).status, 201);
  const std::string path = "/api/v1/byok/keys/test/openai";
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(As("alice").Post(path, "", {{"Idempotency-Key", "t" + std::to_string(i)}}).status,
              200)
        << i;
  }
  EXPECT_EQ(provider_.calls(), 5);
  const uint64_t head = Head();
  HttpReply r = As("alice").Post(path, "", {{"Idempotency-Key", "t5"}});
  ExpectProblem(r, 429, "rate_limited");
  EXPECT_EQ(r.Header("Retry-After"), "12");
  // A retry: its record, not a test.
  EXPECT_EQ(As("alice").Post(path, "", {{"Idempotency-Key", "t0"}}).status, 200);
  EXPECT_EQ(provider_.calls(), 5);
  EXPECT_EQ(Head(), head);
  ASSERT_EQ(As("bob").Post(path, "").status, 200);
  clock_.Advance(11 * kUs);
  ExpectProblem(As("alice").Post(path, ""), 429, "rate_limited");
  clock_.Advance(1 * kUs);
  EXPECT_EQ(As("alice").Post(path, "").status, 200);
  ExpectProblem(As("alice").Post(path, ""), 429, "rate_limited");
  clock_.Advance(60 * kUs);  // a full bucket again
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(As("alice").Post(path, "").status, 200) << i;
  }
}

// Each add and removal appends a permanent event (an add ~1.2 KB, on Kafka too) and both succeed
// as often as they are asked: a loop filled the disk. A user gets a burst of ten key changes, then
// one every 20 s (429 rate_limited with Retry-After; nothing appended). A retry of a recorded add
// or removal with its Idempotency-Key is answered from its record and spends nothing; another
// user has a bucket of their own.
TEST_F(ByokRoutesTest, KeyChangesAreRateLimitedPerUser) {
  const std::string body = "{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + "}";
  auto add = [&](const std::string& key) {
    return As("alice").Post("/api/v1/byok/keys/add", body, {{"Idempotency-Key", key}});
  };
  const uint64_t start = Head();
  HttpReply first = add("a0");
  ASSERT_EQ(first.status, 201) << first.body;
  int added = 1, refused = 0;
  for (int i = 1; i < 40; ++i) {
    HttpReply r = add("a" + std::to_string(i));
    if (r.status == 201) {
      ++added;
    } else {
      ExpectProblem(r, 429, "rate_limited");
      EXPECT_EQ(r.Header("Retry-After"), "20") << i;
      ++refused;
    }
  }
  EXPECT_EQ(added, 10);
  EXPECT_EQ(refused, 30);
  EXPECT_EQ(Head(), start + 10);
  // Removing is a change too: refused, the key stays.
  ExpectProblem(As("alice").Delete("/api/v1/byok/keys/openai"), 429, "rate_limited");
  // A retry of a recorded add: its record, as before, neither refused nor counted.
  HttpReply again = add("a0");
  EXPECT_EQ(again.status, 201) << again.body;
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(Head(), start + 10);
  ASSERT_EQ(Add("bob", "openai", kOpenAiKey).status, 201);
  clock_.Advance(19 * kUs);
  ExpectProblem(add("late"), 429, "rate_limited");
  clock_.Advance(1 * kUs);
  HttpReply removed = As("alice").Delete("/api/v1/byok/keys/openai", {{"Idempotency-Key", "r1"}});
  ASSERT_EQ(removed.status, 200) << removed.body;
  ExpectProblem(add("late"), 429, "rate_limited");
  HttpReply removed_again =
      As("alice").Delete("/api/v1/byok/keys/openai", {{"Idempotency-Key", "r1"}});
  EXPECT_EQ(removed_again.status, 200) << removed_again.body;
  EXPECT_EQ(removed_again.body, removed.body);
  clock_.Advance(200 * kUs);  // a full bucket again
  for (int i = 0; i < 10; ++i) EXPECT_EQ(add("b" + std::to_string(i)).status, 201) << i;
}

// Refusals from ledgerd's own state spend no key change: the writer refused them and nothing was
// appended. Ten DELETEs of a provider the user has no key for (404 each) used up the budget, and
// the add the user then meant to make was 429; so were ten adds refused for a plan without BYOK
// (403) before the user subscribed.
TEST_F(ByokRoutesTest, RefusedKeyChangesSpendNoBudget) {
  const uint64_t head = Head();
  for (int i = 0; i < 10; ++i) {
    ExpectProblem(As("alice").Delete("/api/v1/byok/keys/anthropic"), 404, "not_found");
  }
  for (int i = 0; i < 10; ++i) {
    ExpectProblem(Add("carol", "openai", kOpenAiKey), 403, "byok_not_in_plan");
  }
  EXPECT_EQ(Head(), head);
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  EXPECT_EQ(added.status, 201) << added.body;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan("carol", "starter")).ok());
  added = Add("carol", "openai", kOpenAiKey);
  EXPECT_EQ(added.status, 201) << added.body;
  // What is done is still counted: nine more changes, then 429.
  for (int i = 0; i < 9; ++i) {
    ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201) << i;
  }
  ExpectProblem(Add("alice", "openai", kOpenAiKey), 429, "rate_limited");
}

// Writes one row of the data-key family as given: a key whose row holds another key's wrapped
// data key, as a damaged store (or one restored from elsewhere) would.
class PutDataKeyRow : public Command {
 public:
  PutDataKeyRow(std::string key, std::string value)
      : key_(std::move(key)), value_(std::move(value)) {}
  Status Decide(const DecideContext&, Decision* decision) override {
    decision->side_rows.push_back(
        SideRow{std::string(pj::kByokDataKeysFamily), key_, value_, false});
    return Status::OK();
  }

 private:
  std::string key_, value_;
};

// A test of a key that does not open (409 key_unreadable) asks no provider and appends nothing,
// so it spends no key test: five tests of a key sealed under a replaced key-encryption key left
// the budget empty, and the key added again in its place could not be tested for 12 s.
TEST_F(ByokRoutesTest, TestsOfAnUnreadableKeySpendNoBudget) {
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  std::unique_ptr<SecretBox> other;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x11'), &other).ok());
  Start(other.get());
  const std::string path = "/api/v1/byok/keys/test/openai";
  for (int i = 0; i < 5; ++i) ExpectProblem(As("alice").Post(path, ""), 409, "key_unreadable");
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  HttpReply tested = As("alice").Post(path, "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");

  // The same for a key whose data key does not open it (another key's wrapped data key).
  HttpReply bobs = Add("bob", "openai", kOpenAiKey);
  ASSERT_EQ(bobs.status, 201) << bobs.body;
  HttpReply readded = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(readded.status, 201) << readded.body;
  std::string bobs_wrapped;
  ASSERT_TRUE(
      WrappedDataKey("bob", "openai", bobs.Json()["key_id"].GetString(), &bobs_wrapped).ok());
  PutDataKeyRow damage("alice/openai/" + std::string(readded.Json()["key_id"].GetString()),
                       bobs_wrapped);
  ASSERT_TRUE(ledger_->Submit(&damage).status.ok());
  for (int i = 0; i < 5; ++i) ExpectProblem(As("alice").Post(path, ""), 409, "key_unreadable");
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  tested = As("alice").Post(path, "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_EQ(provider_.calls(), 2);
}

TEST_F(ByokRoutesTest, BadInputAndPlansWithoutByokAppendNothing) {
  const uint64_t head = Head();
  ExpectProblem(Add("tina", "openai", kOpenAiKey), 403, "byok_not_in_plan");
  ExpectProblem(Add("nobody", "openai", kOpenAiKey), 403, "byok_not_in_plan");
  ExpectProblem(Add("alice", "mistral", "sk-0123456789abcdef"), 422, "unknown_provider");
  ExpectProblem(Add("alice", "openai", "sk-short"), 422, "validation_failed");
  ExpectProblem(Add("alice", "openai", "pk-0123456789abcdefghij"), 422, "validation_failed");
  ExpectProblem(Add("alice", "openai", "sk-0123456789 abcdefghij"), 422, "validation_failed");
  // Another provider's key under "openai" (its "sk-" prefix begins theirs): the key test would
  // send it to OpenAI.
  ExpectProblem(Add("alice", "openai", kAnthropicKey), 422, "validation_failed");
  ExpectProblem(Add("alice", "openai", "sk-or-v1-0123456789abcdefghij"), 422, "validation_failed");
  ExpectProblem(Add("alice", "openai", kOpenAiKey, std::string(101, 'l')), 422, "validation_failed");
  // A label is text people read: no control characters, no bidirectional overrides.
  for (const std::string& label : {std::string("a\x01b", 3), std::string("a\0b", 3),
                                  std::string("\x1b[2J"), std::string("a\x7f"),
                                  std::string("a\xc2\x85"), std::string("txt.\xe2\x80\xae" "exe"),
                                  std::string("\xe2\x81\xa6x")}) {
    ExpectProblem(Add("alice", "openai", kOpenAiKey, label), 422, "validation_failed");
  }
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/add", R"({"provider":"openai"})"), 422,
                "validation_failed");
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/add",
                                 R"({"provider":"openai","api_key":"sk-0123456789abcdef","x":1})"),
                422, "unknown_field");
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/add", "nope"), 400, "invalid_json");
  // A body past the route's own limit is too large, as past the server's 1 MiB (it was 422).
  ExpectProblem(Add("alice", "openai", std::string(kOpenAiKey) + std::string(5000, 'k')), 413,
                "payload_too_large");
  EXPECT_EQ(Head(), head);
  // No problem quotes the key it refused.
  HttpReply refused = Add("alice", "openai", "pk-secret-looking-value-123456");
  EXPECT_EQ(refused.body.find("pk-secret-looking-value-123456"), std::string::npos) << refused.body;

  // Without a key-encryption key nothing is sealed or opened, and BYOK is not shown as enabled
  // (a UI offered "Add key" on alice's Starter plan for every add to be 503).
  Start(nullptr);
  ExpectProblem(Add("alice", "openai", kOpenAiKey), 503, "byok_not_configured");
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/test/openai", ""), 503, "byok_not_configured");
  EXPECT_EQ(As("alice").Get("/api/v1/byok/keys").status, 200);
  HttpReply providers = As("alice").Get("/api/v1/byok/providers");
  ASSERT_EQ(providers.status, 200) << providers.body;
  EXPECT_EQ(providers.Header("X-Byok-Enabled"), "false");
  rapidjson::Document doc = providers.Json();
  ASSERT_TRUE(doc.IsArray() && doc.Size() > 0) << providers.body;
  for (const auto& p : doc.GetArray()) EXPECT_FALSE(p["available"].GetBool()) << providers.body;
  HttpReply stats = As("alice").Get("/api/v1/byok/stats");
  ASSERT_EQ(stats.status, 200) << stats.body;
  EXPECT_FALSE(stats.Json()["byok_enabled"].GetBool()) << stats.body;
  // The providers /providers calls available: none (it counted all four).
  EXPECT_EQ(stats.Json()["providers_available"].GetUint64(), 0u) << stats.body;
  EXPECT_EQ(Head(), head);
}

// A key kept after the plan lapsed is listed but not tested: the test would still call the
// provider from this server and append an event, as often as it is asked.
TEST_F(ByokRoutesTest, AKeyIsNotTestedOnceThePlanHasLapsed) {
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(),
                                                 OnPlan("alice", "starter", "canceled"))
                  .ok());
  const uint64_t head = Head();
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/test/openai", ""), 403, "byok_not_in_plan");
  EXPECT_EQ(provider_.calls(), 0);
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(As("alice").Get("/api/v1/byok/keys").Json().Size(), 1u);  // still listed
  // Back on a plan with BYOK (a new subscription), the same key is tested.
  ledger::testing::TestSubscription again = OnPlan("alice", "starter");
  again.subscription_id = "sub_alice_again";
  again.period_start += 3600;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), again).ok());
  HttpReply r = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(provider_.calls(), 1);
}

// Canceled at its period's end, a plan allows no key past that end, though Stripe's deletion has
// not arrived yet.
TEST_F(ByokRoutesTest, NoKeyIsAddedPastTheEndOfAPlanCanceledAtItsPeriodsEnd) {
  ledger::testing::TestSubscription ending = OnPlan("alice", "starter", kNow - 100, kNow + 100);
  ending.cancel_at_period_end = true;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), ending).ok());
  EXPECT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  clock_.Advance(200 * kUs);
  const uint64_t head = Head();
  ExpectProblem(Add("alice", "anthropic", kAnthropicKey), 403, "byok_not_in_plan");
  EXPECT_EQ(Head(), head);
  EXPECT_FALSE(As("alice").Get("/api/v1/byok/stats").Json()["byok_enabled"].GetBool());
}

// BYOK follows my-access's decision (projections/usage.h GetAccessEnded): on a trial plan an
// admin gave byok_enabled, a trial past its end (trial_expired) or with its calls used up
// (trial_exhausted) adds and tests no key and shows BYOK disabled, though Stripe's status still
// says trialing. Before, only the status and the plan were checked: an add 8 days into a 7-day
// trial was 201 and the test called the provider.
TEST_F(ByokRoutesTest, AnEndedOrUsedUpTrialHasNoByokThoughItsPlanHasIt) {
  pj::PlanInput input;
  ASSERT_TRUE(pj::ParsePlanInput(R"({"byok_enabled":true})", "trial", &input).ok());
  pj::UpdatePlan update(input, pj::Actor::System("test"));
  ASSERT_TRUE(ledger_->Submit(&update).status.ok());
  // tara's 7-day trial is aligned on UTC days: today is its last.
  const int64_t today = kNow - kNow % 86400;
  ledger::testing::TestSubscription tara = OnPlan("tara", "trial", "trialing");
  tara.period_start = today - 6 * 86400;
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), tara).ok());
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("tina", "openai", kOpenAiKey).status, 201);
  ASSERT_EQ(Add("tara", "openai", kOpenAiKey).status, 201);
  EXPECT_EQ(As("tina").Get("/api/v1/byok/providers").Header("X-Byok-Enabled"), "true");

  auto expect_no_byok = [&](const std::string& user, const std::string& ended) {
    HttpReply added = Add(user, "anthropic", kAnthropicKey);
    ExpectProblem(added, 403, "byok_not_in_plan");
    EXPECT_NE(added.body.find("access ended: " + ended), std::string::npos) << added.body;
    ExpectProblem(As(user).Post("/api/v1/byok/keys/test/openai", ""), 403, "byok_not_in_plan");
    HttpReply providers = As(user).Get("/api/v1/byok/providers");
    EXPECT_EQ(providers.Header("X-Byok-Enabled"), "false") << user;
    rapidjson::Document doc = providers.Json();
    for (const auto& p : doc.GetArray()) EXPECT_FALSE(p["available"].GetBool());
    doc = As(user).Get("/api/v1/byok/stats").Json();
    EXPECT_FALSE(doc["byok_enabled"].GetBool()) << user;
    EXPECT_EQ(doc["providers_available"].GetUint64(), 0u) << user;
  };
  // tara uses up her last day's 100 calls: the trial's calls are used up for good.
  pj::ConsumeUsage consume(pj::ConsumeRequest{"tara", "chat", 100, "tara-last-day", ""}, nullptr);
  Status consumed = ledger_->Submit(&consume).status;
  ASSERT_TRUE(consumed.ok()) << consumed.ToString();
  const uint64_t head = Head();
  expect_no_byok("tara", "trial_exhausted");
  // tina is 8 days into her 7-day trial.
  clock_.Advance(8 * 86400 * kUs);
  expect_no_byok("tina", "trial_expired");
  EXPECT_EQ(provider_.calls(), 0);
  EXPECT_EQ(Head(), head);
}

// BYOK follows my-access when a window's calls are used up and the subscription is scheduled to
// end before the window renews (CallsUsedUpReason: consume answers 402 subscription_required,
// not a 429 to retry past the end): no key is added or tested, and BYOK shows disabled.
TEST_F(ByokRoutesTest, AQuotaUsedUpBeforeAScheduledEndEndsByok) {
  ledger::testing::TestSubscription sam =
      OnPlan("sam", "starter", kNow - 10 * 86400, kNow + 20 * 86400);
  sam.cancel_at = kNow + 2 * 86400;  // a date set in the portal
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), sam).ok());
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("sam", "openai", kOpenAiKey).status, 201);
  pj::ConsumeUsage consume(pj::ConsumeRequest{"sam", "chat", 1000, "sam-all", ""}, nullptr);
  Status consumed = ledger_->Submit(&consume).status;
  ASSERT_TRUE(consumed.ok()) << consumed.ToString();
  const uint64_t head = Head();
  HttpReply added = Add("sam", "anthropic", kAnthropicKey);
  ExpectProblem(added, 403, "byok_not_in_plan");
  EXPECT_NE(added.body.find("access ended: subscription_required"), std::string::npos)
      << added.body;
  ExpectProblem(As("sam").Post("/api/v1/byok/keys/test/openai", ""), 403, "byok_not_in_plan");
  EXPECT_EQ(As("sam").Get("/api/v1/byok/providers").Header("X-Byok-Enabled"), "false");
  EXPECT_FALSE(As("sam").Get("/api/v1/byok/stats").Json()["byok_enabled"].GetBool());
  EXPECT_EQ(provider_.calls(), 0);
  EXPECT_EQ(Head(), head);
}

// The events' user_id is a user id (schemas/events/byok.*: at most 255 bytes): a token whose
// subject is not one adds nothing, whatever its plan. It is refused as every route refuses it
// (http/jwt.h), 401, not by a check of this route's own.
TEST_F(ByokRoutesTest, ASubjectThatIsNotAUserIdAddsNoKey) {
  const std::string long_sub(256, 'u');
  ASSERT_TRUE(ledger::testing::SubscribeOnLedger(ledger_.get(), OnPlan(long_sub, "starter")).ok());
  const uint64_t head = Head();
  ExpectProblem(Add(long_sub, "openai", kOpenAiKey), 401, "unauthenticated");
  ExpectProblem(Add("eve\x01", "openai", kOpenAiKey), 401, "unauthenticated");
  ExpectProblem(Add("eve/x", "openai", kOpenAiKey), 401, "unauthenticated");
  EXPECT_EQ(Head(), head);
}

TEST_F(ByokRoutesTest, AKeySealedUnderAnotherKekIsReportedNotSent) {
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  std::unique_ptr<SecretBox> other;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x11'), &other).ok());
  Start(other.get());
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/test/openai", ""), 409, "key_unreadable");
  EXPECT_EQ(provider_.calls(), 0);
  Start(box_.get());
}

// Crypto-shredding: the byok.key_added.v1 in the log (on Kafka, in exports) is permanent, so a
// removed key sealed under the key-encryption key itself opened for anyone with that key and a
// copy of the log. Now it is sealed under a data key of its own that only the store's side family
// keeps (wrapped), and a removal deletes that row in the batch of its event.
TEST_F(ByokRoutesTest, RemovingAKeyShredsItsDataKey) {
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(added.status, 201) << added.body;
  const std::string key_id = added.Json()["key_id"].GetString();
  const std::string sealed = AddedEvent(key_id)["encrypted_key"].GetString();
  const std::string aad = pj::ByokAssociatedData("alice", "openai", key_id);
  // Negative control: before the removal the log's ciphertext opens with the data key.
  std::string wrapped, opened;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).ok());
  ASSERT_TRUE(box_->OpenWithDataKey(sealed, wrapped, aad, &opened).ok());
  EXPECT_EQ(opened, kOpenAiKey);
  // Neither the data key nor its wrapped form is in any event, as read or as published.
  std::string data_key;
  ASSERT_TRUE(box_->UnwrapDataKey(wrapped, aad, &data_key).ok());
  ASSERT_EQ(data_key.size(), SecretBox::kKeyBytes);
  for (const Event& e : AllEvents()) {
    const std::string published = ToCloudEventJson(e, "/ledgerd");
    for (const std::string& secret : {wrapped, wrapped.substr(3), data_key, HexEncode(data_key),
                                      Base64Encode(data_key)}) {
      EXPECT_EQ(e.data.find(secret), std::string::npos) << e.data;
      EXPECT_EQ(published.find(secret), std::string::npos) << published;
    }
  }

  ASSERT_EQ(As("alice").Delete("/api/v1/byok/keys/openai").status, 200);
  EXPECT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).IsNotFound());
  EXPECT_EQ(DataKeyRows("alice"), 0u);
  // The ciphertext is still in the log, and the key-encryption key alone does not open it.
  EXPECT_EQ(std::string(AddedEvent(key_id)["encrypted_key"].GetString()), sealed);
  EXPECT_FALSE(box_->Open(sealed, aad, &opened).ok());
  EXPECT_FALSE(box_->Open("v1:" + sealed.substr(3), aad, &opened).ok());
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/test/openai", ""), 404, "not_found");
  WipeSecret(&data_key);
}

// The removal's delete of a data key that was already flushed to a table file wrote only a
// tombstone: the wrapped data key stayed in that file, in a family written so rarely that no
// compaction might ever merge the two, and the master key and a copy of the data directory
// opened the removed key. The ledger compacts the family after the removal is durable
// (events/side_shredder.h): no file in the data directory holds the wrapped data key then.
TEST_F(ByokRoutesTest, ARemovedKeysDataKeyLeavesTheTableFiles) {
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(added.status, 201) << added.body;
  const std::string key_id = added.Json()["key_id"].GetString();
  ASSERT_TRUE(ledger_->Flush().ok());  // the row in a table file; its write-ahead log deleted
  std::string wrapped;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).ok());
  const std::string body = wrapped.substr(3);  // after the "v?:" of its form
  // Negative control: the scan finds it in the table file.
  ASSERT_TRUE(DataDirContains(body));

  ASSERT_EQ(As("alice").Delete("/api/v1/byok/keys/openai").status, 200);
  ASSERT_TRUE(ledger_->WaitForSideCompactions(30'000).ok());
  EXPECT_FALSE(DataDirContains(wrapped));
  EXPECT_FALSE(DataDirContains(body));
  // And after a restart (a clean shutdown flushes every family).
  Restart(nullptr);
  ASSERT_TRUE(ledger_->WaitForSideCompactions(30'000).ok());
  EXPECT_FALSE(DataDirContains(body));
  EXPECT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).IsNotFound());
}

// A crash that tears a later, never-synced write makes the next open cut it off and keep a copy
// in torn-wal/ (events/wal_log.h). That copy held the whole log, the acknowledged add before the
// tear included -- its data key's side-row put -- and no removal, compaction or flush ever touched
// it: the master key and the data directory opened the removed key. Now only the cut bytes are
// kept.
TEST_F(ByokRoutesTest, ARemovedKeyIsNotKeptInATornWalCopy) {
  Restart(fault_.env());
  HttpReply added = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(added.status, 201) << added.body;
  const std::string key_id = added.Json()["key_id"].GetString();
  std::string wrapped;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).ok());
  // Closed without a flush: the add stays in the write-ahead log only.
  fault_.fs()->CutPower();
  stack_->Stop();
  stack_.reset();
  ledger_.reset();
  ledger::testing::FaultFs::DropReport report;
  ASSERT_TRUE(fault_.fs()
                  ->DropUnsyncedData(ledger::testing::FaultFs::DropMode::kDropAll, 1, &report)
                  .ok());
  // A later write torn by the crash: its header and first bytes on disk, the rest zeros.
  std::filesystem::path newest;
  for (const auto& entry : std::filesystem::directory_iterator(dir_.path())) {
    if (entry.path().extension() == ".log" && entry.file_size() > 0 &&
        (newest.empty() || entry.path().filename() > newest.filename())) {
      newest = entry.path();
    }
  }
  ASSERT_FALSE(newest.empty());
  std::string log;
  {
    std::ifstream in(newest, std::ios::binary);
    log.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ASSERT_NE(log.find(wrapped.substr(3)), std::string::npos);  // the add's batch is in this log
  ledger::testing::AppendLogRecord(&log, std::string(300, '\x7f'));
  std::fill(log.end() - 200, log.end(), '\0');
  std::ofstream(newest, std::ios::binary | std::ios::trunc)
      .write(log.data(), static_cast<std::streamsize>(log.size()));
  Restart(nullptr);  // the open cuts the torn write off, saving it in torn-wal/
  ASSERT_TRUE(std::filesystem::exists(dir_.path() + "/torn-wal"));
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).ok());
  // Negative control: the scan finds the wrapped data key before the removal.
  ASSERT_TRUE(DataDirContains(wrapped.substr(3)));

  ASSERT_EQ(As("alice").Delete("/api/v1/byok/keys/openai").status, 200);
  ASSERT_TRUE(ledger_->WaitForSideCompactions(30'000).ok());
  Restart(nullptr);  // a clean shutdown flushes every family: the live log goes
  ASSERT_TRUE(ledger_->WaitForSideCompactions(30'000).ok());
  EXPECT_TRUE(WrappedDataKey("alice", "openai", key_id, &wrapped).IsNotFound());
  EXPECT_FALSE(DataDirContains(wrapped.substr(3)));
}

// Adding again for a provider replaces the key: the replaced key's data key goes in the add's
// batch, the new key's comes in it.
TEST_F(ByokRoutesTest, ReplacingAKeyShredsTheReplacedOne) {
  provider_.Accept(std::string(kOpenAiKey) + "X");
  HttpReply first = Add("alice", "openai", kOpenAiKey, "first");
  ASSERT_EQ(first.status, 201) << first.body;
  const std::string first_id = first.Json()["key_id"].GetString();
  std::string wrapped;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", first_id, &wrapped).ok());
  HttpReply second = Add("alice", "openai", std::string(kOpenAiKey) + "X", "second");
  ASSERT_EQ(second.status, 201) << second.body;
  const std::string second_id = second.Json()["key_id"].GetString();
  EXPECT_TRUE(WrappedDataKey("alice", "openai", first_id, &wrapped).IsNotFound());
  ASSERT_TRUE(WrappedDataKey("alice", "openai", second_id, &wrapped).ok());
  EXPECT_EQ(DataKeyRows("alice"), 1u);
  HttpReply tested = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
}

// A retried add answered from its record appends nothing and writes no second data key (which
// nothing would ever delete).
TEST_F(ByokRoutesTest, ARetriedAddWritesNoSecondDataKey) {
  const std::string body = "{\"provider\":\"openai\",\"api_key\":" + JsonQuote(kOpenAiKey) + "}";
  HttpReply added = As("alice").Post("/api/v1/byok/keys/add", body, {{"Idempotency-Key", "a1"}});
  ASSERT_EQ(added.status, 201) << added.body;
  const uint64_t head = Head();
  HttpReply again = As("alice").Post("/api/v1/byok/keys/add", body, {{"Idempotency-Key", "a1"}});
  EXPECT_EQ(again.Header("Idempotent-Replayed"), "true");
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(DataKeyRows("alice"), 1u);
}

// The add's group fails to be written (an injected WAL append error): after a restart there is
// neither its event nor its data key -- they were one WriteBatch.
TEST_F(ByokRoutesTest, AnAddWhoseWriteFailsLeavesNoDataKeyAndNoEvent) {
  Restart(fault_.env());
  const uint64_t head = Head();
  fault_.fs()->FailWritesAfter(0);
  ExpectProblem(Add("alice", "openai", kOpenAiKey), 503, "storage_degraded");
  fault_.fs()->FailWritesAfter(-1);
  Restart(nullptr);
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(DataKeyRows("alice"), 0u);
  EXPECT_EQ(As("alice").Get("/api/v1/byok/keys").Json().Size(), 0u);
}

// An acknowledged add keeps its data key through a restart and through a power loss right after
// it (FaultFs drops whatever was not synced): the key still opens and is tested. The control
// below shows this power loss does take away an add that was not synced.
TEST_F(ByokRoutesTest, AnAcknowledgedAddKeepsItsDataKeyThroughARestartAndAPowerLoss) {
  provider_.Accept(kOpenAiKey);
  ASSERT_EQ(Add("alice", "openai", kOpenAiKey).status, 201);
  Restart(nullptr);
  HttpReply tested = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");

  provider_.Accept(kAnthropicKey);
  const uint64_t head = Head();
  ledger::testing::FaultFs::DropReport report;
  const std::string key_id = AddThenLosePower("anthropic", kAnthropicKey, &report);
  ASSERT_FALSE(key_id.empty());
  EXPECT_EQ(Head(), head + 1) << report.ToString();
  std::string wrapped;
  EXPECT_TRUE(WrappedDataKey("alice", "anthropic", key_id, &wrapped).ok()) << report.ToString();
  tested = As("alice").Post("/api/v1/byok/keys/test/anthropic", "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
}

// Negative control of the test above: the same add on a ledger that does not sync its groups is
// acknowledged too, and the same power loss drops it -- its event and its data key.
TEST_F(ByokRoutesTest, NegativeControlAnUnsyncedAddIsLostInAPowerLoss) {
  provider_.Accept(kAnthropicKey);
  sync_ = false;
  const uint64_t head = Head();
  ledger::testing::FaultFs::DropReport report;
  const std::string key_id = AddThenLosePower("anthropic", kAnthropicKey, &report);
  ASSERT_FALSE(key_id.empty());
  EXPECT_GT(report.bytes_dropped, 0u) << report.ToString();
  EXPECT_EQ(Head(), head);
  std::string wrapped;
  EXPECT_TRUE(WrappedDataKey("alice", "anthropic", key_id, &wrapped).IsNotFound());
  EXPECT_EQ(DataKeyRows("alice"), 0u);
  EXPECT_EQ(As("alice").Get("/api/v1/byok/keys").Json().Size(), 0u);
  ExpectProblem(As("alice").Post("/api/v1/byok/keys/test/anthropic", ""), 404, "not_found");
}

// A key added before data keys ("v1:", sealed under the key-encryption key, no data-key row)
// still opens and is tested; it cannot be shredded, but it can be removed.
TEST_F(ByokRoutesTest, AKeySealedBeforeDataKeysStillOpens) {
  provider_.Accept(kOpenAiKey);
  pj::ByokKeyRow key;
  AddKeySealedBeforeDataKeys(&key);
  EXPECT_EQ(DataKeyRows("alice"), 0u);
  HttpReply tested = As("alice").Post("/api/v1/byok/keys/test/openai", "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
  EXPECT_EQ(As("alice").Delete("/api/v1/byok/keys/openai").status, 200);
  // A "v2:" key without its data key, or a "v1:" one with one, is not a key.
  key.key_id = "key_ffeeddccbbaa99887766554433221100";
  pj::AddByokKey v1_with_data_key("alice", key, "v1:AAAA");
  EXPECT_EQ(ledger_->Submit(&v1_with_data_key).status.problem(), "invalid_request");
  key.encrypted_key = "v2:" + key.encrypted_key.substr(3);
  pj::AddByokKey v2_without("alice", key);
  EXPECT_EQ(ledger_->Submit(&v2_without).status.problem(), "invalid_request");
}

// Master-key rotation (http/byok_rotation.h): the data keys wrapped under the old key are
// wrapped under the new one, so the "v2:" keys in the log -- whose events still name the old
// kek_id -- open under the new key alone; the old wrappings leave the table files.
TEST_F(ByokRoutesTest, ARotationReWrapsTheDataKeysUnderTheNewKey) {
  provider_.Accept(kOpenAiKey);
  provider_.Accept(kAnthropicKey);
  HttpReply openai = Add("alice", "openai", kOpenAiKey);
  ASSERT_EQ(openai.status, 201) << openai.body;
  ASSERT_EQ(Add("bob", "anthropic", kAnthropicKey).status, 201);
  const std::string key_id = openai.Json()["key_id"].GetString();
  std::string old_wrapping;
  ASSERT_TRUE(WrappedDataKey("alice", "openai", key_id, &old_wrapping).ok());
  ASSERT_TRUE(ledger_->Flush().ok());
  ASSERT_TRUE(DataDirContains(old_wrapping, ".sst")) << "control: in a table file";
  std::unique_ptr<SecretBox> rotated;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x6b'), &rotated).ok());
  const uint64_t head = Head();

  ByokRotationReport report;
  Status s = RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 1, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.rewrapped, (std::map<std::string, int64_t>{{box_->key_id(), 2}}));
  EXPECT_EQ(report.current, 0);
  EXPECT_EQ(report.unopenable, 0);
  EXPECT_TRUE(report.sealed_under_kek.empty());
  EXPECT_EQ(Head(), head) << "no event: a data key never goes into the log";
  s = ledger_->WaitForSideCompactions(30'000);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_FALSE(DataDirContains(old_wrapping, ".sst"));
  EXPECT_EQ(std::string(AddedEvent(key_id)["kek_id"].GetString()), box_->key_id());

  Start(rotated.get());  // the old key no longer configured
  for (const auto& [user, provider] :
       {std::pair{"alice", "openai"}, std::pair{"bob", "anthropic"}}) {
    HttpReply tested = As(user).Post("/api/v1/byok/keys/test/" + std::string(provider), "");
    ASSERT_EQ(tested.status, 200) << tested.body;
    EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
  }
  // Run again: nothing left to re-wrap.
  s = RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 1, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(report.rewrapped.empty());
  EXPECT_EQ(report.current, 2);
  // The old key alone no longer opens them; a key that opens none is counted.
  std::unique_ptr<SecretBox> unrelated;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x7c'), &unrelated).ok());
  s = RotateByokDataKeys(ledger_.get(), *unrelated, {box_.get()}, 256, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.unopenable, 2);
  EXPECT_TRUE(report.rewrapped.empty());
}

// A rotation cut short (a crash between two of its batches) leaves some rows under the new key
// and the rest under the old one; each still opens with one of them, and the next start's run
// re-wraps the rest.
TEST_F(ByokRoutesTest, ARotationCutShortIsCompletedByTheNextRun) {
  const std::vector<std::pair<std::string, std::string>> keys = {
      {"openai", kOpenAiKey}, {"anthropic", kAnthropicKey}, {"huggingface", kHuggingFaceKey}};
  for (const auto& [provider, key] : keys) {
    provider_.Accept(key);
    ASSERT_EQ(Add("alice", provider, key).status, 201);
  }
  std::unique_ptr<SecretBox> rotated;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x6b'), &rotated).ok());
  // What the first batch of a run left: the first row (in key order) re-wrapped.
  std::vector<pj::ByokDataKeyRow> rows;
  ASSERT_TRUE(pj::ListByokDataKeys(*ledger_->Snapshot(), {}, 1, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  std::string again;
  ASSERT_TRUE(rotated
                  ->RewrapDataKey(*box_, rows[0].wrapped,
                                  pj::ByokAssociatedData("alice", rows[0].provider,
                                                         rows[0].key_id),
                                  &again)
                  .ok());
  pj::RewrapByokDataKeys first_batch(rows, {again});
  CommandResult r = ledger_->Submit(&first_batch);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(r.body, R"({"rewrapped":1})");
  Restart(nullptr);  // the crash: the next start
  // Meanwhile: the re-wrapped key opens with the new key only, the others with the old only.
  for (const auto& [box, valid] : {std::pair{rotated.get(), 1}, std::pair{box_.get(), 2}}) {
    Start(box);
    int opened = 0;
    for (const auto& [provider, key] : keys) {
      opened += As("alice").Post("/api/v1/byok/keys/test/" + provider, "").status == 200;
    }
    EXPECT_EQ(opened, valid);
  }

  ByokRotationReport report;
  Status s = RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 2, &report);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(report.current, 1);
  EXPECT_EQ(report.rewrapped, (std::map<std::string, int64_t>{{box_->key_id(), 2}}));
  Start(rotated.get());
  for (const auto& [provider, key] : keys) {
    HttpReply tested = As("alice").Post("/api/v1/byok/keys/test/" + provider, "");
    EXPECT_EQ(tested.status, 200) << provider << " " << tested.body;
  }
}

// SIGTERM during the start's re-wrap (ledgerd's cancel flag) stops it before its next batch; what
// it did not re-wrap the next run does.
TEST_F(ByokRoutesTest, ACancelledRotationStopsBeforeItsNextBatch) {
  for (const auto& [provider, key] : {std::pair{"openai", kOpenAiKey},
                                      std::pair{"anthropic", kAnthropicKey}}) {
    provider_.Accept(key);
    ASSERT_EQ(Add("alice", provider, key).status, 201);
  }
  std::unique_ptr<SecretBox> rotated;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x6c'), &rotated).ok());
  std::atomic<bool> cancel{true};
  ByokRotationReport report;
  Status s = RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 1, &report, &cancel);
  EXPECT_EQ(s.problem(), "startup_cancelled") << s.ToString();
  EXPECT_TRUE(report.rewrapped.empty());
  cancel = false;
  ASSERT_TRUE(RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 1, &report, &cancel).ok());
  EXPECT_EQ(report.rewrapped, (std::map<std::string, int64_t>{{box_->key_id(), 2}}));
}

// A key added before data keys ("v1:") is sealed under the key-encryption key itself and cannot
// be re-wrapped: after a rotation it opens with the previous key its kek_id names while that key
// is configured (and the rotation counts it), and is 409 key_unreadable without it.
TEST_F(ByokRoutesTest, AKeySealedBeforeDataKeysOpensWithThePreviousKeyItNames) {
  provider_.Accept(kOpenAiKey);
  AddKeySealedBeforeDataKeys();
  std::unique_ptr<SecretBox> rotated, unrelated;
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x6b'), &rotated).ok());
  ASSERT_TRUE(SecretBox::Create(std::string(32, '\x7c'), &unrelated).ok());
  ByokRotationReport report;
  ASSERT_TRUE(RotateByokDataKeys(ledger_.get(), *rotated, {box_.get()}, 256, &report).ok());
  EXPECT_TRUE(report.rewrapped.empty());
  EXPECT_EQ(report.sealed_under_kek, (std::map<std::string, int64_t>{{box_->key_id(), 1}}));

  const std::string path = "/api/v1/byok/keys/test/openai";
  previous_boxes_ = {unrelated.get(), box_.get()};
  Start(rotated.get());
  HttpReply tested = As("alice").Post(path, "");
  ASSERT_EQ(tested.status, 200) << tested.body;
  EXPECT_STREQ(tested.Json()["result"].GetString(), "valid");
  previous_boxes_ = {unrelated.get()};
  Start(rotated.get());
  ExpectProblem(As("alice").Post(path, ""), 409, "key_unreadable");
  previous_boxes_.clear();
  Start(rotated.get());
  ExpectProblem(As("alice").Post(path, ""), 409, "key_unreadable");
  EXPECT_EQ(provider_.calls(), 1);
}

TEST(SecretBoxTest, SealsAndOpensOnlyWithTheSameKeyAndAssociatedData) {
  std::unique_ptr<SecretBox> box, other;
  ASSERT_TRUE(SecretBox::Create(std::string(32, 'a'), &box).ok());
  ASSERT_TRUE(SecretBox::Create(std::string(32, 'b'), &other).ok());
  EXPECT_FALSE(SecretBox::Create(std::string(31, 'a'), &other).ok());
  EXPECT_NE(box->key_id(), other->key_id());
  std::string a, b, opened;
  ASSERT_TRUE(box->Seal("secret-value", "aad", &a).ok());
  ASSERT_TRUE(box->Seal("secret-value", "aad", &b).ok());
  EXPECT_NE(a, b);  // a fresh nonce each time
  EXPECT_EQ(a.find("secret-value"), std::string::npos);
  ASSERT_TRUE(box->Open(a, "aad", &opened).ok());
  EXPECT_EQ(opened, "secret-value");
  EXPECT_FALSE(box->Open(a, "other aad", &opened).ok());
  EXPECT_FALSE(other->Open(a, "aad", &opened).ok());
  std::string tampered = a;
  tampered[tampered.size() / 2] = tampered[tampered.size() / 2] == 'A' ? 'B' : 'A';
  EXPECT_FALSE(box->Open(tampered, "aad", &opened).ok());
  EXPECT_FALSE(box->Open("v2:" + a.substr(3), "aad", &opened).ok());
  EXPECT_FALSE(box->Open("v1:", "aad", &opened).ok());
  ASSERT_TRUE(box->Seal("", "aad", &a).ok());
  ASSERT_TRUE(box->Open(a, "aad", &opened).ok());
  EXPECT_EQ(opened, "");
}

TEST(SecretBoxTest, AValueSealedWithADataKeyOpensOnlyWithThatDataKey) {
  std::unique_ptr<SecretBox> box, other;
  ASSERT_TRUE(SecretBox::Create(std::string(32, 'a'), &box).ok());
  ASSERT_TRUE(SecretBox::Create(std::string(32, 'b'), &other).ok());
  std::string sealed, wrapped, sealed2, wrapped2, opened;
  ASSERT_TRUE(box->SealWithDataKey("secret-value", "aad", &sealed, &wrapped).ok());
  ASSERT_TRUE(box->SealWithDataKey("secret-value", "aad", &sealed2, &wrapped2).ok());
  EXPECT_TRUE(SecretBox::IsSealedWithDataKey(sealed));
  EXPECT_FALSE(SecretBox::IsSealedWithDataKey(wrapped));
  EXPECT_NE(wrapped, wrapped2);  // a data key per value
  ASSERT_TRUE(box->OpenWithDataKey(sealed, wrapped, "aad", &opened).ok());
  EXPECT_EQ(opened, "secret-value");
  EXPECT_FALSE(box->OpenWithDataKey(sealed, wrapped2, "aad", &opened).ok());  // another's
  EXPECT_FALSE(box->OpenWithDataKey(sealed, wrapped, "other aad", &opened).ok());
  EXPECT_FALSE(other->OpenWithDataKey(sealed, wrapped, "aad", &opened).ok());
  EXPECT_FALSE(box->Open(sealed, "aad", &opened).ok());
  // The wrapped data key is not a "v1:" value of the same associated data.
  EXPECT_FALSE(box->Open(wrapped, "aad", &opened).ok());
  std::string v1;
  ASSERT_TRUE(box->Seal("secret-value", "aad", &v1).ok());
  EXPECT_FALSE(box->OpenWithDataKey(v1, wrapped, "aad", &opened).ok());
}

// cpp-httplib's timeouts bound each read, not the call: a provider sending its head and then a
// byte every 1.5 s held the worker until the 20-byte body ended, 30 s later, and the key was
// "valid". Now the call ends at its timeout (2 s here) with an error, the body unfinished.
TEST(ByokProvidersTest, AKeyTestEndsWithinItsTimeout) {
  // A 200 head announcing a 20-byte body, then one byte every 1.5 s (30 s in all).
  ledger::testing::TricklingServer slow(200, 20, std::chrono::milliseconds(1500));
  const KeyTestResult result =
      TestProviderKey(*FindByokProvider("openai"), slow.url(), kOpenAiKey, 2000);
  EXPECT_FALSE(slow.finished()) << slow.body_bytes_sent() << " body bytes sent";
  EXPECT_LT(slow.body_bytes_sent(), 20);
  EXPECT_EQ(result.verdict, KeyVerdict::kError) << result.detail;
  EXPECT_EQ(result.provider_status, 0);
  EXPECT_EQ(result.detail.find(kOpenAiKey), std::string::npos);
}

// The deadline also ends a TLS handshake the provider trickles (cpp-httplib's stop() waits for
// the handshake to end; each byte restarted its per-wait timeout, so 20 bytes took 30 s).
TEST(ByokProvidersTest, AKeyTestEndsWithinItsTimeoutDuringTheTlsHandshake) {
  using ledger::testing::TricklingServer;
  TricklingServer slow(TricklingServer::kTlsHandshake, 20, std::chrono::milliseconds(1500));
  const KeyTestResult result =
      TestProviderKey(*FindByokProvider("openai"),
                      "https://127.0.0.1:" + std::to_string(slow.port()), kOpenAiKey, 2000);
  EXPECT_FALSE(slow.finished()) << slow.body_bytes_sent() << " handshake bytes sent";
  EXPECT_LT(slow.body_bytes_sent(), 20);
  EXPECT_EQ(result.verdict, KeyVerdict::kError) << result.detail;
  EXPECT_NE(result.detail.find("within 2000 ms"), std::string::npos) << result.detail;
  EXPECT_EQ(result.detail.find(kOpenAiKey), std::string::npos);
}

// A provider's https base URL is checked against the system trust store: a server it does not
// know (this test's self-signed certificate) is an error, and the key is never sent there. The
// same server answers a client that trusts its CA, so the refusal is the certificate's.
TEST(ByokProvidersTest, AnUntrustedProviderCertificateIsAnErrorAndTheKeyIsNotSent) {
  ledger::testing::TempDir dir;
  ledger::testing::TlsAuthServer server;
  server.Start(dir.Sub("ca.pem"), "GET", "/v1/models", R"({"data":[]})");
  if (HasFatalFailure()) return;
  const std::string url = server.url();

  httplib::Client trusting(url);
  trusting.enable_server_certificate_verification(true);
  trusting.set_ca_cert_path(dir.Sub("ca.pem"));
  httplib::Result answer = trusting.Get("/v1/models", {{"Authorization", "Bearer trusted"}});
  ASSERT_TRUE(answer) << httplib::to_string(answer.error());
  EXPECT_EQ(answer->status, 200);

  const KeyTestResult result =
      TestProviderKey(*FindByokProvider("openai"), url, kOpenAiKey, 2000);
  EXPECT_EQ(result.verdict, KeyVerdict::kError) << result.detail;
  EXPECT_EQ(result.provider_status, 0);
  EXPECT_EQ(result.detail.find(kOpenAiKey), std::string::npos) << result.detail;
  EXPECT_EQ(server.seen_auth(), std::vector<std::string>{"Bearer trusted"});  // never the key
}

TEST(ByokProvidersTest, BaseUrlOverridesNameKnownProvidersAndHttpUrls) {
  std::map<std::string, std::string> urls;
  ASSERT_TRUE(ParseByokBaseUrls("openai=http://127.0.0.1:1,anthropic=https://a.example/v", &urls).ok());
  EXPECT_EQ(urls.size(), 2u);
  EXPECT_EQ(urls["anthropic"], "https://a.example/v");
  EXPECT_TRUE(ParseByokBaseUrls("", &urls).ok());
  EXPECT_TRUE(urls.empty());
  EXPECT_FALSE(ParseByokBaseUrls("mistral=http://x", &urls).ok());
  EXPECT_FALSE(ParseByokBaseUrls("openai=ftp://x", &urls).ok());
  EXPECT_FALSE(ParseByokBaseUrls("openai", &urls).ok());
}

}  // namespace
}  // namespace ledger::http
