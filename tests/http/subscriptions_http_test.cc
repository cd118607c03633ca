// Stripe webhook ingestion and the access routes over real HTTP on loopback, against a real
// Ledger: signed deliveries (the signature made as Stripe makes it), duplicates, tampering,
// the lifecycle in shuffled orders, my-access / check-access per plan, and isolation between
// users.
#include <gtest/gtest.h>

#include <algorithm>
#include <ctime>
#include <numeric>
#include <optional>
#include <random>

#include "events/ledger.h"
#include "http/app_context.h"
#include "http/routes.h"
#include "http/stripe_signature.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/schema_check.h"
#include "tests/support/stripe_events.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using ledger::testing::HttpReply;
using ledger::testing::StripeLifecycle;
using ledger::testing::StripeLifecycleSpec;
using ledger::testing::StripeSubscriptionEventJson;
using ledger::testing::StripeSubscriptionSpec;
using ledger::testing::TestHttpClient;
using ledger::testing::TokenClaims;

constexpr char kWebhook[] = "/api/v1/billing/webhooks/stripe";
constexpr char kMyAccess[] = "/api/v1/subscriptions/my-access";
constexpr char kCheckAccess[] = "/api/v1/subscriptions/check-access/";
constexpr char kUserAccess[] = "/api/v1/subscriptions/admin/user-access/";
constexpr char kStatus[] = "/api/v1/billing/subscription-status";
constexpr char kSecret[] = "whsec_test_primary";
constexpr char kRotatedSecret[] = "whsec_test_rotated";
constexpr char kServiceToken[] = "svc-gateway-token-0123456789";

constexpr int64_t kSecondUs = 1'000'000;

// A test-mode delivery's body with the envelope's livemode as a live event has it.
std::string Live(std::string body) {
  const std::string test_mode = R"("livemode":false,"pending_webhooks")";
  size_t at = body.find(test_mode);
  EXPECT_NE(at, std::string::npos);
  if (at != std::string::npos) body.replace(at, test_mode.size(), R"("livemode":true,)"
                                                                 R"("pending_webhooks")");
  return body;
}

class SubscriptionsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({kSecret, kRotatedSecret}, dir_.path()); }

  // The server and its store stopped, then Start at `path` (a directory the test keeps until its
  // last stack_.Stop() and ledger_.reset()).
  void Restart(std::vector<std::string> secrets, const std::string& path) {
    stack_.Stop();
    stack_.server.reset();
    ledger_.reset();
    Start(std::move(secrets), path);
  }

  void Start(std::vector<std::string> secrets, const std::string& path) {
    LedgerOptions options;
    options.path = path;
    options.folds = projections::AllFolds();
    options.clock = &clock_;
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());
    // user-1 opened the lifecycle's Checkout Session through ledgerd (StripeLifecycle's
    // cs_sub_1): only such a session names its user when it completes.
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(ledger_.get(), "cs_sub_1", "user-1").ok());
    AppContext context;
    context.ledger = ledger_.get();
    context.clock = &clock_;
    context.stripe_webhook_secrets = std::move(secrets);
    context.stripe_livemode = livemode_;
    RouteTable routes;
    AddStripeWebhookRoutes(context, &routes);
    AddSubscriptionAccessRoutes(context, &routes);
    AddEventsRoutes(context, &routes);
    AuthOptions auth;
    auth.jwt.hs256_secret = ledger::testing::kTestHs256Secret;
    auth.service_tokens = {ServiceToken{"gateway", kServiceToken}};
    Status s = stack_.Start(std::move(routes), auth, &clock_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void TearDown() override {
    stack_.Stop();
    if (!ledger_) return;
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 10000, EventFilter{}, &events).ok());
    for (const Event& e : events) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type;
  }

  int64_t NowSeconds() const { return clock_.NowMicros() / kSecondUs; }

  std::string Token(const std::string& user, bool admin = false) const {
    TokenClaims claims = admin ? TokenClaims::Admin(user, NowSeconds())
                               : TokenClaims::User(user, NowSeconds());
    return ledger::testing::MintHs256(claims, ledger::testing::kTestHs256Secret);
  }
  TestHttpClient Client(const std::string& bearer = "") {
    TestHttpClient client("127.0.0.1", stack_.port());
    client.set_bearer(bearer);
    return client;
  }
  TestHttpClient As(const std::string& user) { return Client(Token(user)); }

  // A delivery as Stripe makes it: Stripe-Signature over the exact body at time `t`.
  HttpReply Post(const std::string& body, const std::string& signature) {
    httplib::Headers headers;
    if (!signature.empty()) headers.emplace("Stripe-Signature", signature);
    return Client().Post(kWebhook, body, headers);
  }
  HttpReply Deliver(const std::string& body, const std::string& secret = kSecret) {
    return Post(body, MakeStripeSignatureHeader({secret}, NowSeconds(), body));
  }
  void DeliverOk(const std::string& body) {
    HttpReply r = Deliver(body);
    ASSERT_EQ(r.status, 200) << r.body;
  }

  uint64_t Head() const { return ledger_->Head().value(); }
  std::string AuditHead() {
    HttpReply r = Client(Token("root", true)).Get("/api/v1/audit/head");
    EXPECT_EQ(r.status, 200) << r.body;
    return r.body;
  }

  static void ExpectProblem(const HttpReply& reply, int status, const std::string& code) {
    EXPECT_EQ(reply.status, status) << reply.body;
    EXPECT_EQ(reply.Header("Content-Type"), "application/problem+json") << reply.body;
    rapidjson::Document doc = reply.Json();
    ASSERT_TRUE(doc.IsObject()) << reply.body;
    EXPECT_EQ(std::string(doc["code"].GetString()), code) << reply.body;
  }

  static std::vector<std::string> Strings(const rapidjson::Value& array) {
    std::vector<std::string> out;
    for (const auto& v : array.GetArray()) out.emplace_back(v.GetString());
    return out;
  }

  // Gives `user` an active subscription to the plan with `price`.
  void Subscribe(const std::string& user, const std::string& price, const std::string& status,
                 const std::string& plan_tag = "") {
    StripeLifecycleSpec spec;
    spec.prefix = "evt_" + user;
    spec.user_id = user;
    spec.customer_id = "cus_" + user;
    spec.subscription_id = "sub_" + user;
    spec.price_id = price;
    spec.plan_id = plan_tag;
    std::vector<std::string> lifecycle = StripeLifecycle(spec);
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(ledger_.get(), "cs_" + spec.subscription_id,
                                                     user)
                    .ok());
    DeliverOk(lifecycle[0]);  // the checkout (ledgerd's) links user and customer
    StripeSubscriptionSpec sub;
    sub.event_id = "evt_state_" + user;
    sub.subscription_id = spec.subscription_id;
    sub.customer_id = spec.customer_id;
    sub.price_id = price;
    sub.status = status;
    sub.metadata_user_id = user;
    if (!plan_tag.empty()) sub.metadata_plan_id = plan_tag;
    sub.event_created = ledger::testing::kStripeT0 + 100;
    DeliverOk(StripeSubscriptionEventJson(sub));
  }

  // The configured key's mode (AppContext::stripe_livemode) for the next Start().
  std::optional<bool> livemode_;
  ledger::testing::TempDir dir_;
  ManualClock clock_{static_cast<int64_t>(std::time(nullptr)) * kSecondUs};
  std::unique_ptr<Ledger> ledger_;
  ledger::testing::TestHttpStack stack_;
};

// ---- the webhook ---------------------------------------------------------------------------------

TEST_F(SubscriptionsHttpTest, SignedDeliveryIsAppendedAndAcknowledged) {
  const uint64_t before = Head();
  std::string body = StripeLifecycle({})[0];
  HttpReply r = Deliver(body);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.Header("Content-Type"), "application/json");
  rapidjson::Document doc = r.Json();
  EXPECT_TRUE(doc["received"].GetBool());
  EXPECT_FALSE(doc["duplicate"].GetBool());
  EXPECT_STREQ(doc["event_id"].GetString(), "evt_lc_0");
  EXPECT_EQ(Strings(doc["derived"]), (std::vector<std::string>{
                                          "customer.linked.v1", "subscription.checkout_completed.v1"}));
  EXPECT_EQ(Head(), before + 3);
  EXPECT_EQ(r.Header("X-Ledger-Position"), std::to_string(Head()));

  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(before), 10, EventFilter{}, &events).ok());
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].type, "stripe.webhook_received.v1");
  EXPECT_EQ(events[0].subject, "user-1");
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  EXPECT_EQ(std::string(data["raw_sha256"].GetString()), HexEncode(Sha256(body)));
  for (const Event& e : events) {
    EXPECT_EQ(e.data.find("cs_test_secret_must_not_be_stored"), std::string::npos) << e.type;
  }
}

// A Checkout Session's email is kept only when it is a plausible one (one '@' with something on
// each side, no '/', space or control character): a session of ledgerd's whose
// customer_details.email was "a@" appended a customer.linked.v1 and a checkout_completed.v1 with
// "email":"a@", which their own schemas refuse (TearDown checks every event). Such an email is
// left out as a missing one is: the customer is linked all the same.
TEST_F(SubscriptionsHttpTest, ACheckoutEmailThatIsNoEmailIsLeftOut) {
  int n = 0;
  for (const char* email : {"a@", "@", "\xc3\xa9@", "@example.com", "a@b@example.com",
                            "a b@example.com", "a@example.com/x", "a@exa\tmple.com",
                            "\xc3\xbc@example.com"}) {
    ++n;
    ledger::testing::StripeCheckoutSpec spec;
    spec.event_id = "evt_mail_" + std::to_string(n);
    spec.session_id = "cs_mail_" + std::to_string(n);
    spec.client_reference_id = spec.metadata_user_id = "mail-" + std::to_string(n);
    spec.customer_id = "cus_mail_" + std::to_string(n);
    spec.subscription_id = "sub_mail_" + std::to_string(n);
    spec.email = email;
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(ledger_.get(), spec.session_id,
                                                     *spec.client_reference_id)
                    .ok());
    const uint64_t before = Head();
    HttpReply r = Deliver(ledger::testing::StripeCheckoutCompletedJson(spec));
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(Strings(r.Json()["derived"]),
              (std::vector<std::string>{"customer.linked.v1",
                                        "subscription.checkout_completed.v1"}))
        << email;
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(before), 10, EventFilter{}, &events).ok());
    ASSERT_EQ(events.size(), 3u);
    const bool plausible = std::string_view(email) == "\xc3\xbc@example.com";
    for (size_t i : {1u, 2u}) {
      rapidjson::Document data;
      data.Parse(events[i].data.c_str());
      ASSERT_TRUE(data.IsObject()) << events[i].data;
      if (plausible) {
        ASSERT_TRUE(data["email"].IsString()) << events[i].data;
        EXPECT_STREQ(data["email"].GetString(), email);
        // An email an older build kept (any text with an '@' and no '/') still matches the
        // type's schema: it covers every event of the type ever written.
        std::string older = events[i].data;
        const std::string quoted = std::string("\"") + email + "\"";
        const size_t at = older.find(quoted);
        ASSERT_NE(at, std::string::npos) << older;
        older.replace(at, quoted.size(), "\"a b@x@y.com\"");
        EXPECT_TRUE(ledger::testing::EventDataMatchesSchema(events[i].type, older)) << older;
      } else {
        EXPECT_TRUE(data["email"].IsNull()) << email << ": " << events[i].data;
      }
    }
  }
}

// A time in a Stripe object below 0 is left out, as one that is not an integer is (the rest of
// the delivery still counts): a subscription with "trial_end":-1 appended a
// subscription.state_changed.v1 its own schema refuses (minimum 0; TearDown checks every event),
// and an invoice's "next_payment_attempt":-1 an invoice.payment_failed.v1 likewise.
TEST_F(SubscriptionsHttpTest, ANegativeTimeInAStripeObjectIsLeftOut) {
  // The data of the `type` event `body` derived.
  auto derived = [&](const std::string& body, const std::string& type) {
    const uint64_t before = Head();
    HttpReply r = Deliver(body);
    EXPECT_EQ(r.status, 200) << r.body;
    std::vector<Event> events;
    EXPECT_TRUE(ledger_->ReadEvents(Position(before), 10, EventFilter{}, &events).ok());
    rapidjson::Document data;
    for (const Event& e : events) {
      if (e.type == type) data.Parse(e.data.c_str());
    }
    EXPECT_TRUE(data.IsObject()) << type << " not derived: " << r.body;
    return data;
  };
  const char* kTimes[] = {"current_period_start", "current_period_end", "cancel_at",
                          "canceled_at", "ended_at", "trial_start", "trial_end", "created"};
  for (bool new_layout : {true, false}) {
    StripeSubscriptionSpec sub;
    sub.new_layout = new_layout;  // the period on the item, or on top (older API versions)
    sub.event_id = new_layout ? "evt_negative_new" : "evt_negative_old";
    sub.subscription_id = new_layout ? "sub_negative_new" : "sub_negative_old";
    sub.status = "trialing";
    sub.created = -1;
    sub.period_start = -2;
    sub.period_end = -3;
    sub.cancel_at = -4;
    sub.canceled_at = -5;
    sub.ended_at = -6;
    sub.trial_start = -7;
    sub.trial_end = -1;
    rapidjson::Document data =
        derived(StripeSubscriptionEventJson(sub), "subscription.state_changed.v1");
    if (!data.IsObject()) continue;
    const rapidjson::Value& state = data["subscription"];
    for (const char* time : kTimes) EXPECT_TRUE(state[time].IsNull()) << time;
    EXPECT_STREQ(state["status"].GetString(), "trialing");
    EXPECT_EQ(state["unit_amount"].GetInt64(), 1900);
  }

  ledger::testing::StripeInvoiceSpec invoice = ledger::testing::InvoiceOf(
      "user-1", "cus_1", "sub_negative_new", "in_negative", "invoice.payment_failed",
      "evt_negative_invoice", ledger::testing::kStripeT0 + 10);
  invoice.next_payment_attempt = -1;
  rapidjson::Document data =
      derived(ledger::testing::StripeInvoiceEventJson(invoice), "invoice.payment_failed.v1");
  if (data.IsObject()) {
    EXPECT_TRUE(data["invoice"]["next_payment_attempt"].IsNull());
    EXPECT_EQ(data["invoice"]["attempt_count"].GetInt64(), 1);
  }
}

TEST_F(SubscriptionsHttpTest, DuplicatesAnswer200AndAppendNothing) {
  std::vector<std::string> lifecycle = StripeLifecycle({});
  std::vector<std::string> event_ids;
  for (const std::string& body : lifecycle) {
    HttpReply first = Deliver(body);
    ASSERT_EQ(first.status, 200) << first.body;
    EXPECT_GT(first.Json()["derived"].Size(), 0u) << first.body;
    event_ids.push_back(first.Json()["event_id"].GetString());
  }
  const uint64_t head = Head();
  const std::string audit = AuditHead();
  for (size_t i = 0; i < lifecycle.size(); ++i) {
    const std::string& body = lifecycle[i];
    clock_.Advance(5 * kSecondUs);  // Stripe's retry: a new signature, the same event
    HttpReply again = Deliver(body);
    ASSERT_EQ(again.status, 200) << again.body;
    EXPECT_TRUE(again.Json()["duplicate"].GetBool()) << again.body;
    EXPECT_TRUE(again.Json()["received"].GetBool());
    EXPECT_EQ(again.Json()["event_id"].GetString(), event_ids[i]);
    // Nothing appended, so nothing derived now (the retry was answered with the first
    // delivery's "derived":["subscription.state_changed.v1"] though the audit head stood still).
    EXPECT_EQ(again.Json()["derived"].Size(), 0u) << again.body;
    // The same event id with a different (validly signed) body is the same delivery.
    std::string altered = body;
    altered.insert(altered.size() - 1, R"(,"replayed_with":"another body")");
    HttpReply altered_reply = Deliver(altered);
    ASSERT_EQ(altered_reply.status, 200) << altered_reply.body;
    EXPECT_TRUE(altered_reply.Json()["duplicate"].GetBool());
    EXPECT_EQ(altered_reply.Json()["derived"].Size(), 0u) << altered_reply.body;
  }
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(AuditHead(), audit);
}

TEST_F(SubscriptionsHttpTest, UnsignedTamperedStaleAndMalformedGet400AndAppendNothing) {
  DeliverOk(StripeLifecycle({})[0]);
  const std::string audit = AuditHead();
  const uint64_t head = Head();
  const std::string body = StripeLifecycle({})[1];
  const int64_t now = NowSeconds();
  const std::string good = MakeStripeSignatureHeader({kSecret}, now, body);

  ExpectProblem(Post(body, ""), 400, "invalid_signature");                  // unsigned
  std::string tampered = body;
  tampered.replace(tampered.find("trialing"), 8, "canceled");
  ExpectProblem(Post(tampered, good), 400, "invalid_signature");            // tampered body
  ExpectProblem(Post(body + " ", good), 400, "invalid_signature");          // one byte more
  ExpectProblem(Post(body, MakeStripeSignatureHeader({kSecret}, now - 301, body)), 400,
                "invalid_signature");                                       // stale
  ExpectProblem(Post(body, MakeStripeSignatureHeader({kSecret}, now + 301, body)), 400,
                "invalid_signature");                                       // future
  ExpectProblem(Post(body, MakeStripeSignatureHeader({"whsec_unknown"}, now, body)), 400,
                "invalid_signature");                                       // wrong secret
  ExpectProblem(Post(body, "t=" + std::to_string(now) + ",v0=" +
                               ComputeStripeSignature(kSecret, now, body)),
                400, "invalid_signature");                                  // only v0
  ExpectProblem(Post(body, "garbage"), 400, "invalid_signature");
  {
    httplib::Headers two = {{"Stripe-Signature", good}, {"Stripe-Signature", good}};
    ExpectProblem(Client().Post(kWebhook, body, two), 400, "invalid_signature");
  }
  // Signed, but not a Stripe event.
  for (const std::string& bad : {std::string("not json"), std::string(R"({"id":"evt_x"})"),
                                 std::string(R"([1,2])")}) {
    ExpectProblem(Deliver(bad), 400, "malformed_event");
  }
  EXPECT_EQ(Head(), head);
  EXPECT_EQ(AuditHead(), audit);
  // The genuine delivery still goes through afterwards.
  EXPECT_EQ(Post(body, good).status, 200);
}

TEST_F(SubscriptionsHttpTest, RotatedSecretIsAccepted) {
  HttpReply r = Deliver(StripeLifecycle({})[0], kRotatedSecret);
  EXPECT_EQ(r.status, 200) << r.body;
  // Stripe during a rotation: one v1 per secret, an expired one first.
  const std::string body = StripeLifecycle({})[1];
  r = Post(body, MakeStripeSignatureHeader({"whsec_expired", kSecret}, NowSeconds(), body));
  EXPECT_EQ(r.status, 200) << r.body;
}

TEST_F(SubscriptionsHttpTest, StripeNodeGeneratedHeadersAreAccepted) {
  // Made with stripe-node 23.1.0's webhooks.generateTestHeaderString({payload, secret,
  // timestamp}); see tests/http/stripe_signature_test.cc. The clock is set to each timestamp.
  struct Vector {
    const char* payload;
    const char* secret;
    int64_t t;
    const char* header;
  };
  const Vector vectors[] = {
      {R"({"id":"evt_1NodeVector","object":"event","type":"customer.subscription.updated","created":1700000000,"data":{"object":{"id":"sub_1"}}})",
       "whsec_test_secret_one", 1700000000,
       "t=1700000000,v1=7c0f94cd33215c871989725d1095ba5e449a500f1de77d5977685d5baf592bc4"},
      {R"({"id":"evt_3NodeVector","type":"checkout.session.completed","created":1600000000})",
       "whsec_rotated+/=base64looking", 1600000123,
       "t=1600000123,v1=70a6bd63a79d20985a9387ea7f346099f7c204131b2c8bc109e9d06fa29f4c40"},
  };
  stack_.Stop();
  stack_.server.reset();
  ledger_.reset();
  ledger::testing::TempDir other;
  for (const Vector& v : vectors) {
    clock_.Set(v.t * kSecondUs);
    AppContext context;
    LedgerOptions options;
    options.path = other.Sub(std::to_string(v.t));
    options.folds = projections::AllFolds();
    ASSERT_TRUE(Ledger::Open(options, &ledger_).ok());
    context.ledger = ledger_.get();
    context.clock = &clock_;
    context.stripe_webhook_secrets = {v.secret};
    RouteTable routes;
    AddStripeWebhookRoutes(context, &routes);
    ledger::testing::TestHttpStack stack;
    ASSERT_TRUE(stack.Start(std::move(routes), AuthOptions{}, &clock_).ok());
    TestHttpClient client("127.0.0.1", stack.port());
    HttpReply r = client.Post(kWebhook, v.payload, {{"Stripe-Signature", v.header}});
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(ledger_->Head().value(), 1u);  // stored; nothing derivable from these objects
    clock_.Advance(301 * kSecondUs);
    HttpReply stale = client.Post(kWebhook, v.payload, {{"Stripe-Signature", v.header}});
    EXPECT_EQ(stale.status, 400) << stale.body;
    stack.Stop();
    ledger_.reset();  // before `other` goes
  }
}

TEST_F(SubscriptionsHttpTest, NotConfiguredAnswers503) {
  ledger::testing::TempDir other;
  Restart({}, other.path());
  const std::string body = StripeLifecycle({})[0];
  const uint64_t head = Head();
  ExpectProblem(Deliver(body), 503, "stripe_webhook_not_configured");
  EXPECT_EQ(Head(), head);
  stack_.Stop();
  ledger_.reset();  // before `other` goes
}

// One endpoint can get both modes (STRIPE_WEBHOOK_SECRET=whsec_live,whsec_test): a test-mode
// checkout and subscription gave user-1 Starter at a live server and made the test customer
// theirs (checkout and portal with the live key then failed for good). A delivery whose livemode
// is not the key's, or a connected account's (Connect: `account`), is kept as received and
// applied to nothing; answered 200 so that Stripe stops sending it.
TEST_F(SubscriptionsHttpTest, DeliveriesOfTheOtherModeOrAnotherAccountDeriveNothing) {
  ledger::testing::TempDir other;
  livemode_ = true;  // sk_live_...
  Restart({kSecret, kRotatedSecret}, other.path());
  auto expect_ignored = [&](const HttpReply& r, const std::string& reason) {
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_TRUE(doc["derived"].Empty()) << r.body;
    ASSERT_TRUE(doc.HasMember("ignored")) << r.body;
    EXPECT_EQ(std::string(doc["ignored"].GetString()), reason) << r.body;
  };
  auto expect_no_subscription = [&]() {
    rapidjson::Document doc = As("user-1").Get(kMyAccess).Json();
    EXPECT_FALSE(doc["has_access"].GetBool());
    EXPECT_STREQ(doc["status"].GetString(), "none");
    HttpReply status = As("user-1").Get(kStatus);
    ASSERT_EQ(status.status, 200) << status.body;
    EXPECT_FALSE(status.Json()["has_subscription"].GetBool()) << status.body;
    EXPECT_TRUE(!status.Json().HasMember("customer_id") || status.Json()["customer_id"].IsNull())
        << status.body;
  };

  StripeLifecycleSpec test_mode;
  test_mode.prefix = "evt_test";
  test_mode.customer_id = "cus_TEST";
  std::vector<std::string> lifecycle = StripeLifecycle(test_mode);  // livemode:false
  uint64_t head = Head();
  // Signed by the test endpoint's secret (listed bare: from this delivery on it is taken as test).
  for (size_t i = 0; i < 2; ++i) {  // checkout.session.completed, customer.subscription.created
    expect_ignored(Deliver(lifecycle[i], kRotatedSecret), "livemode_mismatch");
    EXPECT_EQ(Head(), ++head);  // the delivery alone
  }
  // Stripe's retry: a duplicate, still nothing derived.
  HttpReply again = Deliver(lifecycle[0], kRotatedSecret);
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_TRUE(again.Json()["duplicate"].GetBool());
  expect_ignored(again, "livemode_mismatch");
  EXPECT_EQ(Head(), head);
  expect_no_subscription();

  // A live event of a connected account.
  StripeLifecycleSpec connected;
  connected.prefix = "evt_connect";
  connected.customer_id = "cus_CONNECTED";
  std::string body = Live(StripeLifecycle(connected)[0]);
  body.insert(1, R"("account":"acct_1Connected",)");
  expect_ignored(Deliver(body), "connected_account");
  expect_no_subscription();

  std::vector<Event> received;
  EventFilter filter;
  filter.type = "stripe.webhook_received.v1";
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 100, filter, &received).ok());
  ASSERT_EQ(received.size(), 3u);
  EXPECT_NE(received[0].data.find(R"("derived":[],"ignored":"livemode_mismatch")"),
            std::string::npos) << received[0].data;
  EXPECT_EQ(received[0].subject, "stripe_event:evt_test_0");
  EXPECT_NE(received[2].data.find(R"("ignored":"connected_account")"), std::string::npos);
  for (const Event& e : received) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e));

  // The live ones apply.
  StripeLifecycleSpec live_mode;
  live_mode.prefix = "evt_live";
  std::vector<std::string> live_lifecycle = StripeLifecycle(live_mode);
  HttpReply linked = Deliver(Live(live_lifecycle[0]));
  ASSERT_EQ(linked.status, 200) << linked.body;
  EXPECT_FALSE(linked.Json()["derived"].Empty()) << linked.body;
  EXPECT_FALSE(linked.Json().HasMember("ignored")) << linked.body;
  DeliverOk(Live(live_lifecycle[1]));
  rapidjson::Document doc = As("user-1").Get(kMyAccess).Json();
  EXPECT_TRUE(doc["has_access"].GetBool());
  EXPECT_STREQ(As("user-1").Get(kStatus).Json()["customer_id"].GetString(), "cus_1");

  // A test-mode server ignores live events the same way.
  ledger::testing::TempDir third;
  livemode_ = false;  // sk_test_...
  Restart({kSecret, kRotatedSecret}, third.path());  // the live endpoint's secret listed bare
  expect_ignored(Deliver(Live(live_lifecycle[0]), kRotatedSecret), "livemode_mismatch");
  expect_no_subscription();
  DeliverOk(lifecycle[0]);
  EXPECT_STREQ(As("user-1").Get(kStatus).Json()["customer_id"].GetString(), "cus_TEST");
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 100, EventFilter{}, &events).ok());
  for (const Event& e : events) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.data;
  stack_.Stop();
  ledger_.reset();  // before `other` and `third` go
}

// Stripe's whsec_ values do not say their mode, and the mode was taken from the body: with
// STRIPE_WEBHOOK_SECRET=whsec_live,whsec_test beside a live key, a body claiming
// "livemode":true signed with the TEST secret (handled loosely: Dashboard test mode, .env files,
// CI) made mallory a paying Professional subscriber. An entry now says its mode (`test:`,
// `live:`; a bare one is of the key's): a delivery of another mode than its secret's is kept
// and applied to nothing (200 "ignored":"livemode_mismatch").
TEST_F(SubscriptionsHttpTest, ALiveBodySignedWithTheTestSecretIsNotApplied) {
  constexpr char kLive[] = "whsec_live_endpoint";
  constexpr char kTest[] = "whsec_test_endpoint";
  auto subscription = [](const std::string& user, const std::string& event_id) {
    StripeSubscriptionSpec sub;
    sub.event_id = event_id;
    sub.event_type = "customer.subscription.created";
    sub.subscription_id = "sub_" + user;
    sub.customer_id = "cus_" + user;
    sub.price_id = "price_professional_monthly";
    sub.unit_amount = 4900;
    sub.status = "active";
    sub.metadata_user_id = user;
    return StripeSubscriptionEventJson(sub);
  };
  auto expect_ignored = [](const HttpReply& r) {
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_TRUE(doc["derived"].Empty()) << r.body;
    ASSERT_TRUE(doc.HasMember("ignored")) << r.body;
    EXPECT_STREQ(doc["ignored"].GetString(), "livemode_mismatch") << r.body;
  };
  auto has_access = [&](const std::string& user) {
    return As(user).Get(kMyAccess).Json()["has_access"].GetBool();
  };
  ledger::testing::TempDir live_dir;
  livemode_ = true;  // sk_live_...
  Restart({kLive, std::string("test:") + kTest}, live_dir.path());

  // The forgery: a live body signed with the test secret.
  uint64_t head = Head();
  expect_ignored(Deliver(Live(subscription("mallory", "evt_forged")), kTest));
  EXPECT_EQ(Head(), head + 1);  // the delivery alone
  EXPECT_FALSE(has_access("mallory"));
  // The test secret's own (test-mode) deliveries: acknowledged, applied to nothing.
  head = Head();
  expect_ignored(Deliver(subscription("tester", "evt_test_mode"), kTest));
  EXPECT_EQ(Head(), head + 1);
  EXPECT_FALSE(has_access("tester"));
  // Live deliveries signed with the live secret apply as before.
  HttpReply applied = Deliver(Live(subscription("alice", "evt_live")), kLive);
  ASSERT_EQ(applied.status, 200) << applied.body;
  EXPECT_FALSE(applied.Json().HasMember("ignored")) << applied.body;
  EXPECT_FALSE(applied.Json()["derived"].Empty()) << applied.body;
  EXPECT_TRUE(has_access("alice"));
  // A header carrying both signatures is the live secret's.
  const std::string both_body = Live(subscription("bob", "evt_both"));
  HttpReply both =
      Post(both_body, MakeStripeSignatureHeader({kTest, kLive}, NowSeconds(), both_body));
  ASSERT_EQ(both.status, 200) << both.body;
  EXPECT_FALSE(both.Json().HasMember("ignored")) << both.body;
  EXPECT_TRUE(has_access("bob"));

  // A test-mode server: its bare secret is test, a `live:` one signs only live deliveries.
  ledger::testing::TempDir test_dir;
  livemode_ = false;  // sk_test_...
  Restart({kTest, std::string("live:") + kLive}, test_dir.path());
  expect_ignored(Deliver(subscription("mallory", "evt_test_by_live"), kLive));
  EXPECT_FALSE(has_access("mallory"));
  HttpReply own = Deliver(subscription("tester", "evt_test_by_test"), kTest);
  ASSERT_EQ(own.status, 200) << own.body;
  EXPECT_FALSE(own.Json().HasMember("ignored")) << own.body;
  EXPECT_TRUE(has_access("tester"));

  // Two bare secrets beside a live key (how both endpoints' secrets were listed before entries had
  // modes): both are taken as live -- until one signs a test-mode delivery, which shows it is the
  // test endpoint's. From then on a live body it signs is the forgery above, ignored.
  ledger::testing::TempDir bare_dir;
  livemode_ = true;
  Restart({kLive, kTest}, bare_dir.path());
  expect_ignored(Deliver(subscription("tester", "evt_bare_test_mode"), kTest));
  expect_ignored(Deliver(Live(subscription("mallory", "evt_bare_forged")), kTest));
  EXPECT_FALSE(has_access("mallory"));
  HttpReply bare_live = Deliver(Live(subscription("carol", "evt_bare_live")), kLive);
  ASSERT_EQ(bare_live.status, 200) << bare_live.body;
  EXPECT_FALSE(bare_live.Json().HasMember("ignored")) << bare_live.body;
  EXPECT_TRUE(has_access("carol"));

  // Without a key the mode is not judged, but a `test:` secret still signs only test deliveries.
  ledger::testing::TempDir keyless_dir;
  livemode_ = std::nullopt;
  Restart({std::string("test:") + kTest}, keyless_dir.path());
  expect_ignored(Deliver(Live(subscription("mallory", "evt_keyless")), kTest));
  EXPECT_FALSE(has_access("mallory"));
  stack_.Stop();
  ledger_.reset();  // before the directories go
}

TEST_F(SubscriptionsHttpTest, LifecycleInShuffledOrdersEndsCanceledAndGraceKeepsAccess) {
  std::vector<std::string> lifecycle = StripeLifecycle({});
  // In order first: watch the access at each step.
  const std::vector<std::pair<std::string, bool>> expected = {
      {"none", false},     {"trialing", true}, {"active", true}, {"active", true},
      {"past_due", true},  {"active", true},   {"canceled", false}};
  for (size_t i = 0; i < lifecycle.size(); ++i) {
    DeliverOk(lifecycle[i]);
    HttpReply r = As("user-1").Get(kMyAccess);
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_EQ(std::string(doc["status"].GetString()), expected[i].first) << i;
    EXPECT_EQ(doc["has_access"].GetBool(), expected[i].second) << i;
    EXPECT_EQ(r.Header("X-Ledger-Position"), std::to_string(Head()));
  }
  EXPECT_EQ(std::string(As("user-1").Get(kMyAccess).Json()["access"].GetString()), "none");

  // Then a seeded sample of shuffled orders, each for a fresh user/customer/subscription.
  std::mt19937 rng(3);
  std::vector<size_t> order(lifecycle.size());
  std::iota(order.begin(), order.end(), 0);
  for (int run = 0; run < 12; ++run) {
    std::shuffle(order.begin(), order.end(), rng);
    StripeLifecycleSpec spec;
    spec.prefix = "evt_run" + std::to_string(run);
    spec.user_id = "shuffled-" + std::to_string(run);
    spec.customer_id = "cus_run" + std::to_string(run);
    spec.subscription_id = "sub_run" + std::to_string(run);
    std::vector<std::string> deliveries = StripeLifecycle(spec);
    for (size_t i : order) DeliverOk(deliveries[i]);
    HttpReply r = As(spec.user_id).Get(kStatus);
    ASSERT_EQ(r.status, 200);
    rapidjson::Document doc = r.Json();
    EXPECT_STREQ(doc["status"].GetString(), "canceled") << r.body;
    EXPECT_STREQ(doc["subscription"]["id"].GetString(), spec.subscription_id.c_str());
    EXPECT_STREQ(doc["latest_invoice"]["status"].GetString(), "payment_failed");
    EXPECT_STREQ(doc["customer_id"].GetString(), spec.customer_id.c_str());
  }
}

// ---- access ------------------------------------------------------------------------------------

// A trial past its 7 days grants nothing, whatever Stripe's status still says: check-access and
// my-access answer what a consume would (402 trial_expired), not the status alone.
TEST_F(SubscriptionsHttpTest, AnEndedTrialGrantsNoAccessThroughCheckAccess) {
  Subscribe("trialuser", "price_starter_monthly", "trialing", "trial");
  Subscribe("paid", "price_starter_monthly", "active");
  const int64_t t0 = ledger::testing::kStripeT0;
  for (const int64_t day : {1, 8}) {
    SCOPED_TRACE(day);
    clock_.Set((t0 + day * 86400) * kSecondUs);
    const bool in_trial = day < 7;
    HttpReply check = As("trialuser").Post(std::string(kCheckAccess) + "chat", "");
    ASSERT_EQ(check.status, 200) << check.body;
    EXPECT_EQ(check.Json()["allowed"].GetBool(), in_trial) << check.body;
    EXPECT_STREQ(check.Json()["reason"].GetString(), in_trial ? "ok" : "trial_expired");
    HttpReply as_service =
        Client(kServiceToken).Post(std::string(kCheckAccess) + "chat?user_id=trialuser", "");
    EXPECT_EQ(as_service.Json()["allowed"].GetBool(), in_trial) << as_service.body;
    HttpReply mine = As("trialuser").Get(kMyAccess);
    ASSERT_EQ(mine.status, 200) << mine.body;
    rapidjson::Document doc = mine.Json();
    EXPECT_EQ(doc["has_access"].GetBool(), in_trial) << mine.body;
    EXPECT_EQ(doc["services"].Size(), in_trial ? 2u : 0u) << mine.body;
    if (in_trial) {
      EXPECT_TRUE(doc["access_ended"].IsNull()) << mine.body;
    } else {
      EXPECT_STREQ(doc["access_ended"].GetString(), "trial_expired");
    }
    EXPECT_STREQ(doc["status"].GetString(), "trialing");  // what Stripe says, unchanged
    // A paid plan is not affected.
    EXPECT_TRUE(As("paid").Post(std::string(kCheckAccess) + "chat", "").Json()["allowed"].GetBool());
    EXPECT_TRUE(As("paid").Get(kMyAccess).Json()["has_access"].GetBool());
  }
}

// Stripe set to leave a subscription past-due when all retries fail: past_due is a grace period
// only while Stripe will retry the invoice. Once its last retry failed (attempt_count 4, no
// next_payment_attempt) check-access and my-access say what a consume answers (402
// payment_failed: UsageDeciderTest); a card declined on every retry was served for good. Paying
// the invoice brings access back.
TEST_F(SubscriptionsHttpTest, PastDueWithNoRetryLeftGrantsNothingUntilTheInvoiceIsPaid) {
  Subscribe("pd", "price_starter_monthly", "past_due");
  const int64_t t0 = ledger::testing::kStripeT0;
  clock_.Set((t0 + 86400) * kSecondUs);
  int n = 0;
  auto invoice = [&](const char* type, int attempt, bool retries_left) {
    ++n;
    ledger::testing::StripeInvoiceSpec spec = ledger::testing::InvoiceOf(
        "pd", "cus_pd", "sub_pd", "in_pd", type, "evt_pd_invoice_" + std::to_string(n),
        t0 + 200 + n);
    spec.attempt_count = attempt;
    spec.retries_left = retries_left;
    DeliverOk(ledger::testing::StripeInvoiceEventJson(spec));
  };
  auto expect_access = [&](bool allowed, const char* reason) {
    HttpReply check = As("pd").Post(std::string(kCheckAccess) + "chat", "");
    ASSERT_EQ(check.status, 200) << check.body;
    EXPECT_EQ(check.Json()["allowed"].GetBool(), allowed) << check.body;
    EXPECT_STREQ(check.Json()["reason"].GetString(), allowed ? "ok" : reason);
    HttpReply mine = As("pd").Get(kMyAccess);
    ASSERT_EQ(mine.status, 200) << mine.body;
    rapidjson::Document doc = mine.Json();
    EXPECT_EQ(doc["has_access"].GetBool(), allowed) << mine.body;
    EXPECT_STREQ(doc["status"].GetString(), "past_due");  // what Stripe says, unchanged
    if (allowed) {
      EXPECT_TRUE(doc["access_ended"].IsNull()) << mine.body;
    } else {
      EXPECT_STREQ(doc["access_ended"].GetString(), reason) << mine.body;
      EXPECT_EQ(doc["services"].Size(), 0u) << mine.body;
    }
  };

  // Stripe will retry (next_payment_attempt in 3 days): grace, as before.
  invoice("invoice.payment_failed", 3, true);
  expect_access(true, nullptr);

  // The last retry failed: no access, not paying.
  invoice("invoice.payment_failed", 4, false);
  expect_access(false, "payment_failed");

  // Paid in the portal: access again.
  invoice("invoice.paid", 4, false);
  expect_access(true, nullptr);
}

TEST_F(SubscriptionsHttpTest, MyAccessAndCheckAccessPerPlan) {
  struct Case {
    const char* user;
    const char* price;
    const char* status;
    const char* plan_tag;
    const char* plan;
    std::vector<std::string> services;
    int64_t limit;  // -1: unlimited
    const char* window;
    bool byok;
  };
  const std::vector<Case> cases = {
      {"trialuser", "price_starter_monthly", "trialing", "trial", "trial", {"ops-center", "chat"},
       100, "day", false},
      {"starteruser", "price_starter_yearly", "active", "", "starter",
       {"ops-center", "chat", "search"}, 1000, "month", true},
      {"prouser", "price_professional_monthly", "past_due", "", "professional",
       {"ops-center", "chat", "search", "tts", "stt", "litellm"}, 10000, "month", true},
      {"entuser", "price_enterprise_yearly", "active", "", "enterprise",
       {"ops-center", "chat", "search", "tts", "stt", "litellm", "bolt-diy"}, -1, nullptr, true},
  };
  for (const Case& c : cases) Subscribe(c.user, c.price, c.status, c.plan_tag);
  // Inside the trial (the subscriptions were created at kStripeT0).
  clock_.Set((ledger::testing::kStripeT0 + 86400) * kSecondUs);
  for (const Case& c : cases) {
    SCOPED_TRACE(c.user);
    HttpReply r = As(c.user).Get(kMyAccess);
    ASSERT_EQ(r.status, 200) << r.body;
    rapidjson::Document doc = r.Json();
    EXPECT_STREQ(doc["plan_id"].GetString(), c.plan);
    EXPECT_STREQ(doc["plan"]["id"].GetString(), c.plan);
    EXPECT_STREQ(doc["status"].GetString(), c.status);
    EXPECT_TRUE(doc["has_access"].GetBool());
    EXPECT_EQ(Strings(doc["services"]), c.services);
    EXPECT_EQ(doc["byok_enabled"].GetBool(), c.byok);
    if (c.limit < 0) {
      EXPECT_TRUE(doc["quota"]["limit"].IsNull());
      EXPECT_TRUE(doc["quota"]["window"].IsNull());
    } else {
      EXPECT_EQ(doc["quota"]["limit"].GetInt64(), c.limit);
      EXPECT_STREQ(doc["quota"]["window"].GetString(), c.window);
    }
    // The usage counters fill in the current window (projections/usage.h); nothing used yet.
    EXPECT_EQ(doc["quota"]["used"].GetInt64(), 0);
    EXPECT_STREQ(doc["user_id"].GetString(), c.user);
    EXPECT_STREQ(doc["email"].GetString(), (std::string(c.user) + "@example.com").c_str());

    for (const projections::ServiceInfo& service : projections::ServiceCatalog()) {
      const std::string id(service.id);
      const bool in_plan = std::find(c.services.begin(), c.services.end(), id) != c.services.end();
      HttpReply check = As(c.user).Post(kCheckAccess + id, "");
      ASSERT_EQ(check.status, 200) << check.body;
      rapidjson::Document answer = check.Json();
      EXPECT_EQ(answer["allowed"].GetBool(), in_plan) << id;
      EXPECT_STREQ(answer["reason"].GetString(), in_plan ? "ok" : "service_not_in_plan");
      // The service token asks for the same user and gets the same answer.
      HttpReply as_service =
          Client(kServiceToken).Post(kCheckAccess + id + "?user_id=" + c.user, "");
      ASSERT_EQ(as_service.status, 200) << as_service.body;
      EXPECT_EQ(as_service.Json()["allowed"].GetBool(), in_plan) << id;
    }
    // Admins see what my-access says.
    HttpReply admin = Client(Token("root", true)).Get(kUserAccess + std::string(c.user));
    ASSERT_EQ(admin.status, 200);
    EXPECT_EQ(admin.body, r.body);
  }
  HttpReply unknown = As("starteruser").Post(std::string(kCheckAccess) + "teleport", "");
  ASSERT_EQ(unknown.status, 200);
  EXPECT_FALSE(unknown.Json()["allowed"].GetBool());
  EXPECT_STREQ(unknown.Json()["reason"].GetString(), "unknown_service");
}

TEST_F(SubscriptionsHttpTest, NoSubscriptionIsAnOrdinaryAnswer) {
  HttpReply r = As("newcomer").Get(kMyAccess);
  ASSERT_EQ(r.status, 200) << r.body;
  rapidjson::Document doc = r.Json();
  EXPECT_STREQ(doc["status"].GetString(), "none");
  EXPECT_FALSE(doc["has_access"].GetBool());
  EXPECT_TRUE(doc["plan"].IsNull());
  EXPECT_TRUE(doc["plan_id"].IsNull());
  EXPECT_TRUE(doc["services"].Empty());
  EXPECT_TRUE(doc["quota"].IsNull());
  EXPECT_FALSE(doc["byok_enabled"].GetBool());
  EXPECT_TRUE(doc["subscription"].IsNull());

  HttpReply status = As("newcomer").Get(kStatus);
  ASSERT_EQ(status.status, 200);
  EXPECT_FALSE(status.Json()["has_subscription"].GetBool());
  EXPECT_STREQ(status.Json()["status"].GetString(), "none");

  HttpReply check = As("newcomer").Post(std::string(kCheckAccess) + "chat", "");
  ASSERT_EQ(check.status, 200);
  EXPECT_FALSE(check.Json()["allowed"].GetBool());
  EXPECT_STREQ(check.Json()["reason"].GetString(), "no_subscription");

  // A canceled subscription keeps its plan in the answer but grants nothing.
  for (const std::string& body : StripeLifecycle({})) DeliverOk(body);
  doc = As("user-1").Get(kMyAccess).Json();
  EXPECT_STREQ(doc["status"].GetString(), "canceled");
  EXPECT_STREQ(doc["plan_id"].GetString(), "starter");
  EXPECT_TRUE(doc["services"].Empty());
  EXPECT_STREQ(As("user-1").Post(std::string(kCheckAccess) + "chat", "").Json()["reason"].GetString(),
               "subscription_inactive");
}

// A user with two customers and no subscription: the customer used (the portal, the cards, the
// next checkout) is the one most recently linked, by the link's Stripe event time, whatever order
// the deliveries came in. It was the greatest id (Stripe's ids are random): cus_Z, linked first.
TEST_F(SubscriptionsHttpTest, WithoutASubscriptionTheMostRecentlyLinkedCustomerIsUsed) {
  for (const std::string user : {"in-order", "reversed"}) {
    std::vector<std::string> links;
    for (const std::string customer : {"cus_Z", "cus_A"}) {
      ledger::testing::StripeCheckoutSpec link;
      link.event_id = "evt_link_" + user + "_" + customer;
      link.event_created = ledger::testing::kStripeT0 + (customer == "cus_Z" ? 0 : 60);
      link.session_id = "cs_" + user + "_" + customer;
      link.client_reference_id = user;
      link.metadata_user_id = user;
      link.customer_id = customer + "_" + user;
      link.subscription_id = std::nullopt;
      link.email = user + "@example.com";
      ASSERT_TRUE(
          ledger::testing::OpenCheckoutSession(ledger_.get(), link.session_id, user).ok());
      links.push_back(ledger::testing::StripeCheckoutCompletedJson(link));
    }
    if (user == "reversed") std::swap(links[0], links[1]);
    for (const std::string& body : links) DeliverOk(body);
    HttpReply status = As(user).Get(kStatus);
    ASSERT_EQ(status.status, 200) << status.body;
    EXPECT_FALSE(status.Json()["has_subscription"].GetBool()) << status.body;
    EXPECT_EQ(std::string(status.Json()["customer_id"].GetString()), "cus_A_" + user)
        << status.body;
  }
}

// A customer's link time is its earliest link's, also when that delivery arrives after a later
// one that carries no email (metadata links: a Dashboard subscription's invoices): the later one
// linked cus_X at T+300 and the earlier one derived nothing, so cus_X (linked at T) outranked
// cus_Y (linked at T+200). A delivery no older than the stored link derives no link again.
TEST_F(SubscriptionsHttpTest, MostRecentlyLinkedIgnoresAnOutOfOrderMetadataLink) {
  const std::string user = "user-late";
  auto invoice = [&](const std::string& customer, const std::string& invoice_id,
                     int64_t offset) {
    return ledger::testing::StripeInvoiceEventJson(ledger::testing::InvoiceOf(
        user, customer, "sub_" + invoice_id, invoice_id, "invoice.paid", "evt_" + invoice_id,
        ledger::testing::kStripeT0 + offset));
  };
  auto links = [&](const std::string& body) {
    HttpReply r = Deliver(body);
    EXPECT_EQ(r.status, 200) << r.body;
    std::vector<std::string> derived = Strings(r.Json()["derived"]);
    return std::count(derived.begin(), derived.end(), "customer.linked.v1");
  };
  EXPECT_EQ(links(invoice("cus_X", "in_x_late", 300)), 1);
  EXPECT_EQ(links(invoice("cus_X", "in_x_early", 0)), 1);  // earlier: linked at T now
  EXPECT_EQ(links(invoice("cus_X", "in_x_mid", 100)), 0);
  EXPECT_EQ(links(invoice("cus_Y", "in_y", 200)), 1);
  HttpReply status = As(user).Get(kStatus);
  ASSERT_EQ(status.status, 200) << status.body;
  EXPECT_FALSE(status.Json()["has_subscription"].GetBool()) << status.body;
  EXPECT_EQ(std::string(status.Json()["customer_id"].GetString()), "cus_Y") << status.body;
}

TEST_F(SubscriptionsHttpTest, OneUserCannotSeeAnothersSubscription) {
  Subscribe("alice", "price_professional_monthly", "active");
  // bob sees his own (empty) state, never alice's.
  rapidjson::Document bob = As("bob").Get(kMyAccess).Json();
  EXPECT_STREQ(bob["status"].GetString(), "none");
  EXPECT_STREQ(bob["user_id"].GetString(), "bob");
  rapidjson::Document bob_status = As("bob").Get(kStatus).Json();
  EXPECT_TRUE(bob_status["subscription"].IsNull());
  EXPECT_TRUE(bob_status["customer_id"].IsNull());
  // Naming alice on check-access is "not found" for bob; naming himself is fine.
  ExpectProblem(As("bob").Post(std::string(kCheckAccess) + "chat?user_id=alice", ""), 404,
                "not_found");
  HttpReply self = As("bob").Post(std::string(kCheckAccess) + "chat?user_id=bob", "");
  ASSERT_EQ(self.status, 200);
  EXPECT_STREQ(self.Json()["reason"].GetString(), "no_subscription");
  // alice herself is allowed; a service token must name the user.
  EXPECT_TRUE(As("alice").Post(std::string(kCheckAccess) + "tts", "").Json()["allowed"].GetBool());
  ExpectProblem(Client(kServiceToken).Post(std::string(kCheckAccess) + "tts", ""), 400,
                "invalid_parameter");
  // Policies: admin route for non-admins, user routes for services and anonymous callers.
  ExpectProblem(As("bob").Get(kUserAccess + std::string("alice")), 403, "forbidden");
  ExpectProblem(Client(kServiceToken).Get(kMyAccess), 403, "forbidden");
  ExpectProblem(Client().Get(kMyAccess), 401, "unauthenticated");
  ExpectProblem(Client().Post(std::string(kCheckAccess) + "chat", ""), 401, "unauthenticated");
  ExpectProblem(Client().Get(kStatus), 401, "unauthenticated");
}

TEST_F(SubscriptionsHttpTest, CheckAccessRefusesNamesThatAreNotUtf8) {
  // The path and the query are percent-decoded to any bytes; the answer echoes both in JSON.
  ExpectProblem(As("bob").Post(std::string(kCheckAccess) + "%FF", ""), 400, "invalid_parameter");
  ExpectProblem(Client(kServiceToken).Post(std::string(kCheckAccess) + "chat?user_id=%FF%FE", ""),
                400, "invalid_parameter");
  HttpReply ok = Client(kServiceToken).Post(std::string(kCheckAccess) + "chat?user_id=%C3%A9", "");
  ASSERT_EQ(ok.status, 200) << ok.body;
  EXPECT_STREQ(ok.Json()["user_id"].GetString(), "\xc3\xa9");
}

}  // namespace
}  // namespace ledger::http
