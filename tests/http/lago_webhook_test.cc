// POST /api/v1/webhooks/lago over real HTTP on loopback, against a real Ledger: deliveries signed
// the way lago-api signs them (hmac: base64 HMAC-SHA256 of the body; jwt: RS256 over
// {data: <body>, iss: <Lago API URL>} with an RSA key generated here), the key file in each form
// Lago serves it, duplicates and repeated bodies, tampering and forgeries (nothing appended, 400),
// 503 when not configured, large jwt deliveries, redaction, and the invoice/subscription state.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/encoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "events/ledger.h"
#include "events/types.h"
#include "http/app_context.h"
#include "http/base64.h"
#include "http/lago_signature.h"
#include "http/limits.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/lago.h"
#include "projections/limits.h"
#include "projections/registry.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/lago_webhooks.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using ledger::testing::HttpReply;
using ledger::testing::LagoInvoiceSpec;
using ledger::testing::LagoInvoiceWebhookJson;
using ledger::testing::LagoJwtSignature;
using ledger::testing::LagoSubscriptionSpec;
using ledger::testing::LagoSubscriptionWebhookJson;
using ledger::testing::TestHttpClient;
using ledger::testing::TestSigningKey;

constexpr char kPath[] = "/api/v1/webhooks/lago";
constexpr char kHmacKey[] = "3b5e1f2c-6a7d-4e8f-9a0b-1c2d3e4f5a6b";  // Lago: a UUID
constexpr char kIssuer[] = "https://lago-api.example.com";

// PKCS#1 ("BEGIN RSA PUBLIC KEY") form of an SPKI PEM.
std::string Pkcs1Pem(const std::string& spki_pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> in(
      BIO_new_mem_buf(spki_pem.data(), static_cast<int>(spki_pem.size())), &BIO_free);
  EVP_PKEY* key = PEM_read_bio_PUBKEY(in.get(), nullptr, nullptr, nullptr);
  EXPECT_NE(key, nullptr);
  OSSL_ENCODER_CTX* ctx =
      OSSL_ENCODER_CTX_new_for_pkey(key, EVP_PKEY_PUBLIC_KEY, "PEM", "type-specific", nullptr);
  unsigned char* data = nullptr;
  size_t length = 0;
  EXPECT_EQ(OSSL_ENCODER_to_data(ctx, &data, &length), 1);
  std::string pem(reinterpret_cast<char*>(data), length);
  OPENSSL_free(data);
  OSSL_ENCODER_CTX_free(ctx);
  EVP_PKEY_free(key);
  return pem;
}

// Ruby's Base64.encode64: standard base64 with a line break every 60 characters.
std::string Encode64(const std::string& bytes) {
  std::string flat = Base64Encode(bytes), out;
  for (size_t i = 0; i < flat.size(); i += 60) out += flat.substr(i, 60) + "\n";
  return out;
}

class LagoWebhookTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    lago_key_ = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "lago").release();
    other_key_ = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "other").release();
  }
  static void TearDownTestSuite() {
    delete lago_key_;
    delete other_key_;
  }

  void SetUp() override {
    std::string pem;
    ASSERT_TRUE(LoadLagoPublicKey(lago_key_->PublicKeyPem(), &pem).ok());
    Start(kHmacKey, pem, kIssuer);
  }

  void Start(const std::string& hmac_key, const std::string& pem, const std::string& issuer,
             const std::string& organization_id = "") {
    stack_->Stop();
    stack_ = std::make_unique<ledger::testing::TestHttpStack>();
    if (!ledger_) {
      LedgerOptions options;
      options.path = dir_.Sub("ledger");
      options.folds = projections::AllFolds();
      ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    }
    AppContext context;
    context.ledger = ledger_.get();
    context.lago_webhook_hmac_key = hmac_key;
    context.lago_webhook_public_key_pem = pem;
    context.lago_webhook_issuer = issuer;
    context.lago_organization_id = organization_id;
    RouteTable routes;
    AddLagoWebhookRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    Status s = stack_->Start(std::move(routes), auth, SystemClock::Default());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    stack_->Stop();
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 10000, EventFilter{}, &events).ok());
    for (const Event& e : events) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type;
  }

  HttpReply Post(const std::string& body, const httplib::Headers& headers) {
    TestHttpClient client("127.0.0.1", stack_->port());
    return client.Post(kPath, body, headers);
  }
  HttpReply PostHmac(const std::string& body, const std::string& unique_key,
                     const std::string& key = kHmacKey) {
    return Post(body, {{"X-Lago-Signature", LagoHmacSignature(key, body)},
                       {"X-Lago-Signature-Algorithm", "hmac"},
                       {"X-Lago-Unique-Key", unique_key}});
  }
  HttpReply PostJwt(const std::string& body, const std::string& unique_key,
                    const std::string& token) {
    return Post(body, {{"X-Lago-Signature", token},
                       {"X-Lago-Signature-Algorithm", "jwt"},
                       {"X-Lago-Unique-Key", unique_key}});
  }

  uint64_t Head() const { return ledger_->Head().value(); }

  std::vector<Event> Events(std::string_view type) {
    std::vector<Event> out;
    EventFilter filter;
    filter.type = std::string(type);
    Position after(0);
    while (true) {
      std::vector<Event> page;
      EXPECT_TRUE(ledger_->ReadEvents(after, 1000, filter, &page).ok());
      if (page.empty()) return out;
      after = page.back().position;
      for (Event& e : page) out.push_back(std::move(e));
    }
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject()) << reply.body;
    ASSERT_TRUE(doc.HasMember("code")) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  static TestSigningKey* lago_key_;
  static TestSigningKey* other_key_;
  ledger::testing::TempDir dir_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<ledger::testing::TestHttpStack> stack_ =
      std::make_unique<ledger::testing::TestHttpStack>();
};

TestSigningKey* LagoWebhookTest::lago_key_ = nullptr;
TestSigningKey* LagoWebhookTest::other_key_ = nullptr;

TEST_F(LagoWebhookTest, HmacDeliveryIsStoredOnceAndTracksTheInvoice) {
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  HttpReply r = PostHmac(body, "wh-1");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document answer = r.Json();
  EXPECT_FALSE(answer["duplicate"].GetBool());
  EXPECT_EQ(answer["derived"].Size(), 1u);
  EXPECT_EQ(r.Header("X-Ledger-Position"), "2");
  const uint64_t head = Head();
  EXPECT_EQ(head, 2u);

  std::vector<Event> received = Events(projections::kLagoWebhookReceivedV1);
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(received[0].subject, "alice");
  rapidjson::Document data;
  data.Parse(received[0].data.c_str());
  EXPECT_EQ(std::string(data["unique_key"].GetString()), "wh-1");
  EXPECT_EQ(std::string(data["signature_algorithm"].GetString()), "hmac");
  EXPECT_EQ(std::string(data["webhook_type"].GetString()), "invoice.created");
  EXPECT_EQ(std::string(data["raw_sha256"].GetString()), HexEncode(Sha256(body)));
  EXPECT_EQ(data["raw_bytes"].GetUint64(), body.size());

  projections::LagoInvoice invoice;
  ASSERT_TRUE(
      projections::GetLagoInvoice(*ledger_->Snapshot(), LagoInvoiceSpec{}.lago_id, &invoice).ok());
  EXPECT_EQ(invoice.status, "finalized");
  EXPECT_EQ(invoice.payment_status, "pending");
  EXPECT_EQ(invoice.total_amount_cents, 1900);
  EXPECT_EQ(invoice.external_customer_id, "alice");
  EXPECT_EQ(invoice.external_subscription_ids, std::vector<std::string>{"alice"});

  // Lago's retry of the same delivery: 200, duplicate, nothing appended, so nothing derived (it
  // was answered with the first delivery's "derived", as the Stripe webhook's retries were).
  r = PostHmac(body, "wh-1");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_TRUE(r.Json()["duplicate"].GetBool());
  EXPECT_EQ(r.Json()["derived"].Size(), 0u) << r.body;
  EXPECT_STREQ(r.Json()["unique_key"].GetString(), "wh-1");
  EXPECT_EQ(Head(), head);
  // The same body under another unique key (a new Lago webhook with unchanged content, or a
  // replay: the key is not signed) is recorded, naming the key that first delivered it, and
  // derives nothing: the invoice already has this state.
  r = PostHmac(body, "wh-replayed");
  ASSERT_EQ(r.status, 200) << r.body;
  answer = r.Json();
  EXPECT_FALSE(answer["duplicate"].GetBool());
  ASSERT_TRUE(answer.HasMember("repeat_of_unique_key")) << r.body;
  EXPECT_EQ(answer["repeat_of_unique_key"], "wh-1") << r.body;
  EXPECT_EQ(answer["derived"].Size(), 0u);
  EXPECT_EQ(Head(), head + 1);
  received = Events(projections::kLagoWebhookReceivedV1);
  ASSERT_EQ(received.size(), 2u);
  EXPECT_NE(received[1].data.find(R"("repeat_of_unique_key":"wh-1")"), std::string::npos)
      << received[1].data;

  // The payment succeeds: the state moves on.
  LagoInvoiceSpec paid;
  paid.webhook_type = "invoice.payment_status_updated";
  paid.payment_status = "succeeded";
  paid.updated_at = "2026-11-01T00:10:00Z";
  r = PostHmac(LagoInvoiceWebhookJson(paid), "wh-2");
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(projections::GetLagoInvoice(*ledger_->Snapshot(), paid.lago_id, &invoice).ok());
  EXPECT_EQ(invoice.payment_status, "succeeded");
  std::vector<Event> updates = Events(projections::kLagoInvoiceUpdatedV1);
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_NE(updates[1].data.find(R"("previous_payment_status":"pending")"), std::string::npos);

  // A late, older delivery (Lago retried it) is stored but never rolls the state back.
  LagoInvoiceSpec stale;
  stale.webhook_type = "invoice.payment_status_updated";
  stale.payment_status = "failed";
  stale.updated_at = "2026-11-01T00:05:00Z";
  r = PostHmac(LagoInvoiceWebhookJson(stale), "wh-3");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Json()["derived"].Size(), 0u);
  ASSERT_TRUE(projections::GetLagoInvoice(*ledger_->Snapshot(), paid.lago_id, &invoice).ok());
  EXPECT_EQ(invoice.payment_status, "succeeded");
  EXPECT_EQ(Events(projections::kLagoWebhookReceivedV1).size(), 4u);
}

// Lago's invoice.payment_failure (object payment_provider_invoice_payment_error) carries no
// timestamp or delivery id: the dunning retry two days later, declined the same way, is a NEW
// webhook (new unique key) with a byte-identical body. Both are recorded (the second naming the
// first), a retry of either is still a duplicate, and a replay of the log gives the same rows.
TEST_F(LagoWebhookTest, AnIdenticalBodyUnderANewUniqueKeyIsRecorded) {
  const std::string body =
      R"({"webhook_type":"invoice.payment_failure",)"
      R"("object_type":"payment_provider_invoice_payment_error",)"
      R"("payment_provider_invoice_payment_error":{)"
      R"("lago_invoice_id":"5eb02857-a71e-4ea2-bcf9-57d3a41bc6ba",)"
      R"("lago_customer_id":"99a6094e-199b-4101-896a-54e927ce7bd7",)"
      R"("external_customer_id":"alice","provider_customer_id":"cus_Q1",)"
      R"("payment_provider":"stripe","payment_provider_code":"stripe_prod",)"
      R"("provider_error":{"message":"Your card was declined.","error_code":"card_declined"}}})";
  HttpReply r = PostHmac(body, "wh-a");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_FALSE(r.Json()["duplicate"].GetBool());
  EXPECT_NE(r.body.find(R"("repeat_of_unique_key":null)"), std::string::npos) << r.body;
  EXPECT_EQ(Head(), 1u);
  r = PostHmac(body, "wh-b");
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document answer = r.Json();
  EXPECT_FALSE(answer["duplicate"].GetBool()) << r.body;
  ASSERT_TRUE(answer.HasMember("repeat_of_unique_key")) << r.body;
  EXPECT_EQ(answer["repeat_of_unique_key"], "wh-a") << r.body;
  EXPECT_EQ(r.Header("X-Ledger-Position"), "2");
  EXPECT_EQ(Head(), 2u);

  std::vector<Event> received = Events(projections::kLagoWebhookReceivedV1);
  ASSERT_EQ(received.size(), 2u);
  rapidjson::Document first, second;
  first.Parse(received[0].data.c_str());
  second.Parse(received[1].data.c_str());
  ASSERT_TRUE(first.HasMember("repeat_of_unique_key")) << received[0].data;
  ASSERT_TRUE(second.HasMember("repeat_of_unique_key")) << received[1].data;
  EXPECT_EQ(first["unique_key"], "wh-a");
  EXPECT_TRUE(first["repeat_of_unique_key"].IsNull());
  EXPECT_EQ(second["unique_key"], "wh-b");
  EXPECT_EQ(second["repeat_of_unique_key"], "wh-a");
  EXPECT_EQ(std::string(second["raw_sha256"].GetString()), HexEncode(Sha256(body)));
  EXPECT_EQ(received[1].subject, "alice");

  // Lago's retries of either delivery (same unique key) are still duplicates, answered as the
  // original was.
  for (const char* key : {"wh-a", "wh-b"}) {
    r = PostHmac(body, key);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_TRUE(r.Json()["duplicate"].GetBool()) << key;
  }
  EXPECT_EQ(Head(), 2u);

  // `ledgerctl replay`: the log folded into a fresh directory gives the same rows.
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 10000, EventFilter{}, &events).ok());
  LedgerOptions options;
  options.path = dir_.Sub("replica");
  options.folds = projections::AllFolds();
  std::unique_ptr<Ledger> replica;
  ASSERT_TRUE(Ledger::Open(options, &replica).ok());
  ASSERT_TRUE(replica->ImportEvents(events).ok());
  Hash digest, replica_digest;
  ASSERT_TRUE(ledger_->ProjectionDigest(&digest).ok());
  ASSERT_TRUE(replica->ProjectionDigest(&replica_digest).ok());
  EXPECT_EQ(replica_digest, digest);
}

TEST_F(LagoWebhookTest, JwtDeliveryIsVerifiedWithLagosPublicKey) {
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  HttpReply r = PostJwt(body, "wh-jwt-1", LagoJwtSignature(*lago_key_, body, kIssuer));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(
      Events(projections::kLagoWebhookReceivedV1)[0].data.find(R"("signature_algorithm":"jwt")"),
      std::string::npos);
  // Without X-Lago-Signature-Algorithm (older Lago versions) the signature is a JWT; an issuer
  // differing only by a trailing slash is the same URL.
  LagoInvoiceSpec next;
  next.updated_at = "2026-11-02T00:00:00Z";
  const std::string body2 = LagoInvoiceWebhookJson(next);
  r = Post(body2,
           {{"X-Lago-Signature", LagoJwtSignature(*lago_key_, body2, std::string(kIssuer) + "/")},
            {"X-Lago-Unique-Key", "wh-jwt-2"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), 4u);
  // Those versions sent no X-Lago-Unique-Key either: the delivery is named by its bytes, and a
  // retry of it is a duplicate.
  LagoInvoiceSpec third;
  third.updated_at = "2026-11-03T00:00:00Z";
  const std::string body3 = LagoInvoiceWebhookJson(third);
  const std::string token3 = LagoJwtSignature(*lago_key_, body3, kIssuer);
  r = Post(body3, {{"X-Lago-Signature", token3}});
  ASSERT_EQ(r.status, 200) << r.body;
  const uint64_t head = Head();
  EXPECT_GT(head, 4u);
  r = Post(body3, {{"X-Lago-Signature", token3}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.body.find("\"duplicate\":true"), std::string::npos) << r.body;
  EXPECT_EQ(Head(), head);
  // A Lago that names its algorithm names its deliveries too.
  ExpectProblem(Post(body3, {{"X-Lago-Signature", token3}, {"X-Lago-Signature-Algorithm", "jwt"}}),
                400, "missing_unique_key");
}

// Lago signs jwt deliveries with its instance-wide RSA key: on a Lago shared by several
// organizations, another tenant's delivery verifies too. With LAGO_ORGANIZATION_ID only bodies
// naming that organization are taken; the others are 403 and append nothing.
TEST_F(LagoWebhookTest, DeliveriesForAnotherOrganizationAreRefused) {
  std::string pem;
  ASSERT_TRUE(LoadLagoPublicKey(lago_key_->PublicKeyPem(), &pem).ok());
  Start(kHmacKey, pem, kIssuer, "org-ours");
  LagoInvoiceSpec theirs;
  theirs.organization_id = "org-other";
  const std::string their_body = LagoInvoiceWebhookJson(theirs);
  ASSERT_NE(their_body.find(R"("organization_id":"org-other")"), std::string::npos);
  ExpectProblem(PostJwt(their_body, "wh-o1", LagoJwtSignature(*lago_key_, their_body, kIssuer)),
                403, "wrong_organization");
  ExpectProblem(PostHmac(their_body, "wh-o2"), 403, "wrong_organization");
  // No organization_id at all (or not a string, or only nested in the object) is no better.
  LagoInvoiceSpec unnamed;
  unnamed.extra_member = R"("organization_id":"org-ours")";
  const std::string unnamed_body = LagoInvoiceWebhookJson(unnamed);
  ExpectProblem(
      PostJwt(unnamed_body, "wh-o3", LagoJwtSignature(*lago_key_, unnamed_body, kIssuer)), 403,
      "wrong_organization");
  const std::string numeric = R"({"webhook_type":"x.y","object_type":"z","organization_id":1})";
  ExpectProblem(PostHmac(numeric, "wh-o4"), 403, "wrong_organization");
  LagoInvoiceSpec prefixed;
  prefixed.organization_id = "org-ours-not";
  const std::string prefixed_body = LagoInvoiceWebhookJson(prefixed);
  ExpectProblem(PostHmac(prefixed_body, "wh-o5"), 403, "wrong_organization");
  EXPECT_EQ(Head(), 0u);

  LagoInvoiceSpec ours;
  ours.organization_id = "org-ours";
  const std::string our_body = LagoInvoiceWebhookJson(ours);
  HttpReply r = PostJwt(our_body, "wh-o6", LagoJwtSignature(*lago_key_, our_body, kIssuer));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Head(), 2u);
  // The refused delivery, retried by Lago, is still refused (nothing was recorded for its key).
  ExpectProblem(PostJwt(their_body, "wh-o1", LagoJwtSignature(*lago_key_, their_body, kIssuer)),
                403, "wrong_organization");
  EXPECT_EQ(Head(), 2u);

  // Unset, any organization's delivery is accepted (the documented default).
  Start(kHmacKey, pem, kIssuer);
  r = PostJwt(their_body, "wh-o7", LagoJwtSignature(*lago_key_, their_body, kIssuer));
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(LagoWebhookTest, ForgedTamperedAndMalformedDeliveriesAppendNothing) {
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  const std::string good_jwt = LagoJwtSignature(*lago_key_, body, kIssuer);
  std::string tampered = body;
  tampered.replace(tampered.find("1900"), 4, "0001");
  struct Case {
    const char* name;
    std::string body;
    httplib::Headers headers;
    int status;
    const char* code;
  };
  const std::string hmac = LagoHmacSignature(kHmacKey, body);
  const std::vector<Case> cases = {
      {"unsigned", body, {{"X-Lago-Unique-Key", "k"}}, 400, "invalid_signature"},
      {"hmac with another key",
       body,
       {{"X-Lago-Signature", LagoHmacSignature("another-key", body)},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"hmac over a tampered body",
       tampered,
       {{"X-Lago-Signature", hmac},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"hmac not base64",
       body,
       {{"X-Lago-Signature", "not base64!"},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"hex hmac",
       body,
       {{"X-Lago-Signature", HexEncode(HmacSha256(kHmacKey, body))},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"unknown algorithm",
       body,
       {{"X-Lago-Signature", hmac},
        {"X-Lago-Signature-Algorithm", "sha1"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt over a tampered body",
       tampered,
       {{"X-Lago-Signature", good_jwt},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt signed by another key",
       body,
       {{"X-Lago-Signature", LagoJwtSignature(*other_key_, body, kIssuer)},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt from another Lago",
       body,
       {{"X-Lago-Signature", LagoJwtSignature(*lago_key_, body, "https://evil.example.com")},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt alg none",
       body,
       {{"X-Lago-Signature",
         ledger::testing::UnsignedToken(R"({"alg":"none"})", R"({"data":)" + JsonQuote(body) +
                                                                 R"(,"iss":")" + kIssuer + "\"}")},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt HS256 keyed with the public key",
       body,
       {{"X-Lago-Signature", ledger::testing::SignWithHmac(
                                 R"({"alg":"HS256"})",
                                 R"({"data":)" + JsonQuote(body) + R"(,"iss":")" + kIssuer + "\"}",
                                 lago_key_->PublicKeyPem())},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"jwt whose data is another payload",
       body,
       {{"X-Lago-Signature", LagoJwtSignature(*lago_key_, tampered, kIssuer)},
        {"X-Lago-Signature-Algorithm", "jwt"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"repeated signature",
       body,
       {{"X-Lago-Signature", hmac},
        {"X-Lago-Signature", hmac},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "invalid_signature"},
      {"no unique key",
       body,
       {{"X-Lago-Signature", hmac}, {"X-Lago-Signature-Algorithm", "hmac"}},
       400,
       "missing_unique_key"},
      {"unique key with a space",
       body,
       {{"X-Lago-Signature", hmac},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "a b"}},
       400,
       "invalid_unique_key"},
      {"signed but not JSON",
       "not json",
       {{"X-Lago-Signature", LagoHmacSignature(kHmacKey, "not json")},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "malformed_event"},
      {"signed but no webhook_type",
       R"({"object_type":"invoice","invoice":{}})",
       {{"X-Lago-Signature",
         LagoHmacSignature(kHmacKey, R"({"object_type":"invoice","invoice":{}})")},
        {"X-Lago-Signature-Algorithm", "hmac"},
        {"X-Lago-Unique-Key", "k"}},
       400,
       "malformed_event"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    ExpectProblem(Post(c.body, c.headers), c.status, c.code);
  }
  EXPECT_EQ(Head(), 0u);
  // The genuine delivery still goes through afterwards.
  EXPECT_EQ(PostHmac(body, "k").status, 200);
  EXPECT_EQ(PostJwt(body, "k", good_jwt).status, 200);
  EXPECT_EQ(Head(), 2u);
}

TEST_F(LagoWebhookTest, UnconfiguredModesAnswer503) {
  const std::string body = LagoInvoiceWebhookJson(LagoInvoiceSpec{});
  Start("", "", "");
  ExpectProblem(PostHmac(body, "k"), 503, "lago_webhook_not_configured");
  Start(kHmacKey, "", "");  // hmac only: a jwt delivery cannot be verified
  ExpectProblem(PostJwt(body, "k", LagoJwtSignature(*lago_key_, body, kIssuer)), 503,
                "lago_webhook_not_configured");
  // An unsigned delivery is refused as such, in any configuration.
  ExpectProblem(Post(body, {{"X-Lago-Unique-Key", "k"}}), 400, "invalid_signature");
  ExpectProblem(Post(body, {{"X-Lago-Unique-Key", "k"}, {"X-Lago-Signature-Algorithm", "jwt"}}),
                400, "invalid_signature");
  std::string pem;
  ASSERT_TRUE(LoadLagoPublicKey(lago_key_->PublicKeyPem(), &pem).ok());
  Start("", pem, "");  // jwt only, no issuer configured: iss is not checked
  ExpectProblem(PostHmac(body, "k"), 503, "lago_webhook_not_configured");
  EXPECT_EQ(PostJwt(body, "k", LagoJwtSignature(*lago_key_, body, "http://anything")).status, 200);
  EXPECT_EQ(Head(), 2u);
}

// A jwt embeds the whole payload, so X-Lago-Signature grows with the body. cpp-httplib 0.11.4 (as
// Debian builds it) refuses any header line over CPPHTTPLIB_HEADER_MAX_LENGTH = 8192 bytes; the
// server's stream takes such lines out of its sight and puts them back before routing
// (http/server.cc, ConnectionStream::TakeHead), so jwt deliveries of any size up to the server's
// head allowance are verified like small ones, and a tampered big one is still refused.
TEST_F(LagoWebhookTest, JwtSignaturesOver8KiBAreVerified) {
  LagoInvoiceSpec small;
  small.fees = 12;
  const std::string body = LagoInvoiceWebhookJson(small);
  const std::string token = LagoJwtSignature(*lago_key_, body, kIssuer);
  ASSERT_LT(token.size() + 20, 8192u);
  HttpReply r = PostJwt(body, "wh-small", token);
  ASSERT_EQ(r.status, 200) << r.body;

  LagoInvoiceSpec big = small;
  big.fees = 40;
  big.updated_at = "2026-11-02T00:00:00Z";
  const std::string big_body = LagoInvoiceWebhookJson(big);
  const std::string big_token = LagoJwtSignature(*lago_key_, big_body, kIssuer);
  ASSERT_GT(big_token.size(), 8192u);
  // Tampered: the signature no longer matches (last character of the signature changed).
  std::string tampered = big_token;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  r = PostJwt(big_body, "wh-big", tampered);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("invalid_signature"), std::string::npos) << r.body;
  EXPECT_EQ(Head(), 2u);
  r = PostJwt(big_body, "wh-big", big_token);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Events(projections::kLagoInvoiceUpdatedV1).size(), 2u);
  // An invoice with thousands of fees, just under the webhook body limit: its signature (the
  // whole body as an escaped JSON string, base64url) is accepted like the same body in hmac mode.
  LagoInvoiceSpec large = small;
  large.updated_at = "2026-11-03T00:00:00Z";
  large.fees = 100;
  const size_t per_fee = LagoInvoiceWebhookJson(large).size() / 100;
  large.fees = static_cast<int>(projections::limits::kLagoWebhookBytesMax * 97 / 100 / per_fee);
  const std::string large_body = LagoInvoiceWebhookJson(large);
  ASSERT_LT(large_body.size(), projections::limits::kLagoWebhookBytesMax);
  ASSERT_GT(large_body.size(), projections::limits::kLagoWebhookBytesMax * 9 / 10);
  const std::string large_token = LagoJwtSignature(*lago_key_, large_body, kIssuer);
  ASSERT_GT(large_token.size(), large_body.size() * 4 / 3);
  r = PostJwt(large_body, "wh-large", large_token);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Events(projections::kLagoInvoiceUpdatedV1).size(), 3u);
  // Over the webhook route's head allowance it is refused before routing.
  const std::string huge_token(http::limits::kLagoWebhookHeadBytesMax + 1, 'a');
  const uint64_t head = Head();
  r = PostJwt(large_body, "wh-huge", huge_token);
  EXPECT_GE(r.status, 400);
  EXPECT_LT(r.status, 500);
  EXPECT_EQ(Head(), head);
}

// An invoice of a few thousand fees (~1.5-2 KB each in Lago's payload) passes 512 KiB. In hmac
// mode nothing but the stored event bounds the body: it is accepted up to what one event's data
// holds beside the record's other fields, and refused (413, nothing appended) past that, as in
// jwt mode past 512 KiB, where the signature embeds the whole body.
TEST_F(LagoWebhookTest, AnHmacDeliveryOver512KiBWithinTheDocumentedLimitIsStored) {
  using projections::limits::kLagoWebhookBytesMax;
  using projections::limits::kLagoWebhookPayloadBytesMax;
  static_assert(kLagoWebhookBytesMax == 524'288 && kLagoWebhookPayloadBytesMax == 1'044'618,
                "README.md and the lago.webhook_received.v1 schema state these figures");
  LagoInvoiceSpec big;
  big.fees = 100;
  const size_t per_fee = LagoInvoiceWebhookJson(big).size() / 100;
  big.fees = static_cast<int>(700 * 1024 / per_fee);
  const std::string body = LagoInvoiceWebhookJson(big);
  ASSERT_GT(body.size(), kLagoWebhookBytesMax);
  HttpReply r = PostHmac(body, "wh-700k");
  ASSERT_EQ(r.status, 200) << r.body;
  std::vector<Event> received = Events(projections::kLagoWebhookReceivedV1);
  ASSERT_EQ(received.size(), 1u);
  rapidjson::Document data;
  data.Parse(received[0].data.c_str());
  EXPECT_EQ(data["raw_bytes"].GetUint64(), body.size());
  EXPECT_EQ(data["payload"]["invoice"]["fees"].Size(), static_cast<size_t>(big.fees));
  EXPECT_EQ(Events(projections::kLagoInvoiceUpdatedV1).size(), 1u);

  // A body of exactly the limit fits in its event (the record's other fields at their longest:
  // a unique key of 255 characters); one byte more is refused.
  auto body_of = [&](size_t bytes, const std::string& updated_at) {
    LagoInvoiceSpec spec = big;
    spec.updated_at = updated_at;
    spec.extra_member = R"("memo":"")";
    std::string out = LagoInvoiceWebhookJson(spec);
    spec.extra_member = R"("memo":")" + std::string(bytes - out.size(), 'm') + "\"";
    out = LagoInvoiceWebhookJson(spec);
    EXPECT_EQ(out.size(), bytes);
    return out;
  };
  const std::string at_limit = body_of(kLagoWebhookPayloadBytesMax, "2026-11-02T00:00:00Z");
  r = PostHmac(at_limit, std::string(255, 'k'));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(Events(projections::kLagoWebhookReceivedV1).size(), 2u);
  const uint64_t head = Head();
  const std::string over = body_of(kLagoWebhookPayloadBytesMax + 1, "2026-11-03T00:00:00Z");
  r = PostHmac(over, "wh-over");
  ExpectProblem(r, 413, "payload_too_large");
  EXPECT_EQ(Head(), head);

  // jwt mode keeps its bound.
  r = PostJwt(body, "wh-700k-jwt", LagoJwtSignature(*lago_key_, body, kIssuer));
  ExpectProblem(r, 413, "payload_too_large");
  EXPECT_EQ(Head(), head);
}

TEST_F(LagoWebhookTest, SecretsAndPaymentLinksAreRedacted) {
  LagoInvoiceSpec spec;
  spec.extra_member =
      R"("payment_url":"https://pay.example.com/s/abc","integration":{"api_key":"sk_live_1",)"
      R"("file_url":"https://lago.example.com/rails/active_storage/blobs/redirect/eyJf/inv.pdf",)"
      R"("portal_url":"https://lago.example.com/customer-portal/eyJh",)"
      R"("xml_url":"https://lago.example.com/rails/active_storage/blobs/redirect/eyJg/inv.xml",)"
      R"("next_action":{"type":"redirect_to_url","redirect_to_url":{"url":)"
      R"("https://hooks.stripe.com/3d_secure_2/hosted?payment_intent_client_secret=pi_1_secret_X"}},)"
      R"("secret":{"nested":1},"password":null})";
  const std::string body = LagoInvoiceWebhookJson(spec);
  ASSERT_EQ(PostHmac(body, "wh-r").status, 200);
  const std::string stored = Events(projections::kLagoWebhookReceivedV1)[0].data;
  EXPECT_EQ(stored.find("pay.example.com"), std::string::npos) << stored;
  EXPECT_EQ(stored.find("lago.example.com"), std::string::npos) << stored;
  EXPECT_EQ(stored.find("sk_live_1"), std::string::npos) << stored;
  EXPECT_EQ(stored.find("pi_1_secret_X"), std::string::npos) << stored;
  EXPECT_NE(stored.find(R"("payment_url":"[redacted]")"), std::string::npos) << stored;
  EXPECT_NE(stored.find(R"("next_action":"[redacted]")"), std::string::npos) << stored;
  EXPECT_NE(stored.find(R"("secret":"[redacted]","password":null)"), std::string::npos) << stored;
  EXPECT_NE(stored.find(R"(\"metered\" <v2>)"), std::string::npos) << stored;  // text unchanged
  EXPECT_NE(stored.find(HexEncode(Sha256(body))), std::string::npos);
}

TEST_F(LagoWebhookTest, APlanChangeKeepsTheNewSubscriptionEffective) {
  LagoSubscriptionSpec old_sub;
  LagoSubscriptionSpec new_sub;
  new_sub.lago_id = "c1d2e3f4-0000-4000-8000-000000000002";
  new_sub.plan_code = "professional";
  new_sub.created_at = "2026-11-15T00:00:00Z";
  new_sub.started_at = "2026-11-15T00:00:00.000Z";
  LagoSubscriptionSpec terminated = old_sub;
  terminated.webhook_type = "subscription.terminated";
  terminated.status = "terminated";
  terminated.terminated_at = "2026-11-15T00:00:00Z";
  // Deliveries out of order: the new subscription starts, then the old one's start arrives
  // late, then its termination.
  for (const auto& [key, spec] :
       {std::pair{"s-2", new_sub}, std::pair{"s-1", old_sub}, std::pair{"s-3", terminated}}) {
    HttpReply r = PostHmac(LagoSubscriptionWebhookJson(spec), key);
    ASSERT_EQ(r.status, 200) << r.body;
  }
  projections::LagoSubscription effective;
  ASSERT_TRUE(projections::GetLagoSubscription(*ledger_->Snapshot(), "alice", &effective).ok());
  EXPECT_EQ(effective.lago_id, new_sub.lago_id);
  EXPECT_EQ(effective.status, "active");
  EXPECT_EQ(effective.plan_code, "professional");
  std::vector<projections::LagoSubscription> all;
  ASSERT_TRUE(projections::ListLagoSubscriptions(*ledger_->Snapshot(), "alice", &all).ok());
  ASSERT_EQ(all.size(), 2u);
  // A late "started" for the old subscription after its termination changes nothing.
  old_sub.webhook_type = "subscription.updated";
  HttpReply r = PostHmac(LagoSubscriptionWebhookJson(old_sub), "s-4");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Json()["derived"].Size(), 0u);
  ASSERT_TRUE(projections::ListLagoSubscriptions(*ledger_->Snapshot(), "alice", &all).ok());
  for (const auto& s : all) {
    EXPECT_EQ(s.status, s.lago_id == new_sub.lago_id ? "active" : "terminated");
  }
}

TEST(LagoPublicKeyTest, EveryFormLagoServesIsAccepted) {
  auto key = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "lago");
  const std::string spki = key->PublicKeyPem();
  std::string expected;
  ASSERT_TRUE(LoadLagoPublicKey(spki, &expected).ok());
  EXPECT_NE(expected.find("-----BEGIN PUBLIC KEY-----"), std::string::npos);
  const std::string pkcs1 = Pkcs1Pem(spki);
  ASSERT_NE(pkcs1.find("BEGIN RSA PUBLIC KEY"), std::string::npos);
  const std::vector<std::pair<std::string, std::string>> forms = {
      {"pem with surrounding space", "\n  " + spki + "\n\n"},
      {"pkcs1 pem", pkcs1},
      {"base64 pem (/webhooks/public_key)", Encode64(spki)},
      {"base64 without line breaks", Base64Encode(spki)},
      {"json_public_key", R"({"webhook":{"public_key":")" + Base64Encode(spki) + "\"}}"},
  };
  for (const auto& [name, contents] : forms) {
    SCOPED_TRACE(name);
    std::string pem;
    Status s = LoadLagoPublicKey(contents, &pem);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(pem, expected);
  }
  auto ec = TestSigningKey::Generate(TestSigningKey::Type::kEcP256, "ec");
  for (const std::string& bad :
       {std::string(""), std::string("not a key"), Base64Encode("just text"), ec->PublicKeyPem(),
        std::string(R"({"webhook":{}})")}) {
    std::string pem;
    EXPECT_EQ(LoadLagoPublicKey(bad, &pem).problem(), "bad_lago_public_key") << bad;
  }
}

}  // namespace
}  // namespace ledger::http
