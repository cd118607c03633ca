// The Stripe client against the local fake Stripe (tests/support/fake_stripe.h): wire shape,
// idempotency keys, retries with backoff, timeouts, error mapping, secrets, and https.
#include "http/stripe_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>

#include "projections/plan_catalog.h"
#include "projections/stripe_webhook.h"
#include "tests/support/fake_stripe.h"
#include "tests/support/no_thread.h"
#include "tests/support/test_ledger.h"
#include "tests/support/tls_auth_server.h"
#include "tests/support/trickling_server.h"

namespace ledger::http {
namespace {

using ledger::testing::FakeStripe;
using ledger::testing::kFakeStripeSecretKey;

TEST(StripeFormTest, EncodesBracketsLiterallyAndValuesStrictly) {
  FormParams params = {{"line_items[0][price]", "price_1"},
                       {"success_url", "https://x.test/ok?session={CHECKOUT_SESSION_ID}&a=b c"},
                       {"metadata[user_id]", "alice+bob@example.com"},
                       {"name", "Ünïcode ~._-"}};
  std::string encoded = FormUrlEncode(params);
  EXPECT_EQ(encoded,
            "line_items[0][price]=price_1"
            "&success_url=https%3A%2F%2Fx.test%2Fok%3Fsession%3D%7BCHECKOUT_SESSION_ID%7D%26a%3Db%20c"
            "&metadata[user_id]=alice%2Bbob%40example.com"
            "&name=%C3%9Cn%C3%AFcode%20~._-");
  FormParams decoded;
  ASSERT_TRUE(FormUrlDecode(encoded, &decoded).ok());
  EXPECT_EQ(decoded, params);
  EXPECT_FALSE(FormUrlDecode("a=%G1", &decoded).ok());
  EXPECT_FALSE(FormUrlDecode("a=%1", &decoded).ok());
  ASSERT_TRUE(FormUrlDecode("a=b+c&&d", &decoded).ok());
  EXPECT_EQ(decoded, (FormParams{{"a", "b c"}, {"d", ""}}));
}

TEST(StripeFormTest, CheckoutFormForAPaidPlan) {
  StripeCheckoutParams p;
  p.recurring_price_id = "price_m";
  p.success_url = "https://app.test/ok";
  p.cancel_url = "https://app.test/cancel";
  p.client_reference_id = "alice";
  p.customer_email = "alice@example.com";
  p.metadata = {{"user_id", "alice"}, {"plan_id", "starter"}};
  EXPECT_EQ(HttpStripeClient::CheckoutForm(p),
            (FormParams{{"mode", "subscription"},
                        {"line_items[0][price]", "price_m"},
                        {"line_items[0][quantity]", "1"},
                        {"success_url", "https://app.test/ok"},
                        {"cancel_url", "https://app.test/cancel"},
                        {"client_reference_id", "alice"},
                        {"customer_email", "alice@example.com"},
                        {"metadata[user_id]", "alice"},
                        {"metadata[plan_id]", "starter"},
                        {"subscription_data[metadata][user_id]", "alice"},
                        {"subscription_data[metadata][plan_id]", "starter"}}));
  // A known customer replaces the email.
  p.customer = "cus_1";
  FormParams form = HttpStripeClient::CheckoutForm(p);
  EXPECT_NE(std::find(form.begin(), form.end(), std::pair<std::string, std::string>{"customer", "cus_1"}),
            form.end());
  for (const auto& [k, v] : form) EXPECT_NE(k, "customer_email");
}

TEST(StripeFormTest, CheckoutFormForTheTrial) {
  StripeCheckoutParams p;
  p.recurring_price_id = "price_starter_monthly";
  p.one_time_price_id = "price_trial_fee";
  p.trial_period_days = 7;
  p.success_url = "https://app.test/ok";
  p.client_reference_id = "alice";
  FormParams form = HttpStripeClient::CheckoutForm(p);
  EXPECT_EQ(form, (FormParams{{"mode", "subscription"},
                              {"line_items[0][price]", "price_starter_monthly"},
                              {"line_items[0][quantity]", "1"},
                              {"line_items[1][price]", "price_trial_fee"},
                              {"line_items[1][quantity]", "1"},
                              {"success_url", "https://app.test/ok"},
                              {"client_reference_id", "alice"},
                              {"subscription_data[trial_period_days]", "7"}}));
}

TEST(StripeKeysTest, IdempotencyKeysAreBoundedAndDeterministic) {
  std::string a = StripeIdempotencyKey("checkout", "alice", "client:k1:abc");
  EXPECT_EQ(a, StripeIdempotencyKey("checkout", "alice", "client:k1:abc"));
  EXPECT_NE(a, StripeIdempotencyKey("checkout", "bob", "client:k1:abc"));
  EXPECT_NE(a, StripeIdempotencyKey("portal", "alice", "client:k1:abc"));
  EXPECT_NE(a, StripeIdempotencyKey("checkout", "alice", "client:k2:abc"));
  // Length-prefixed parts: moving a boundary changes the key.
  EXPECT_NE(StripeIdempotencyKey("checkout", "ab", "c"), StripeIdempotencyKey("checkout", "a", "bc"));
  EXPECT_EQ(a.rfind("ledgerd-checkout-", 0), 0u);
  EXPECT_LE(a.size(), 255u);
  EXPECT_LE(StripeIdempotencyKey(std::string(500, 'x'), std::string(5000, 'y'), "z").size(), 255u);
}

TEST(StripeKeysTest, TheModeOfAKeyIsItsPrefix) {
  EXPECT_EQ(StripeKeyLivemode("sk_live_abc"), std::optional<bool>(true));
  EXPECT_EQ(StripeKeyLivemode("rk_live_abc"), std::optional<bool>(true));
  EXPECT_EQ(StripeKeyLivemode("sk_test_abc"), std::optional<bool>(false));
  EXPECT_EQ(StripeKeyLivemode("rk_test_abc"), std::optional<bool>(false));
  EXPECT_EQ(StripeKeyLivemode(""), std::nullopt);
  EXPECT_EQ(StripeKeyLivemode("sk_live"), std::nullopt);
  EXPECT_EQ(StripeKeyLivemode("pk_live_abc"), std::nullopt);
}

// A price id the plan catalog takes is one the client sends (ChangeSubscriptionPrice checks it:
// "price.1" was stored, then the upgrade to the plan answered the user 400 invalid_argument) and
// one a webhook delivery is read with (a 201-byte id was dropped: its subscribers had no plan).
TEST(StripeIdTest, ThePlanCatalogTakesOnlyIdsTheClientAndWebhooksTake) {
  for (const std::string& id : {std::string("price_1Nx"), std::string("price.1"),
                                std::string("legacy-gold_2"), std::string(200, 'p'),
                                std::string(201, 'p'), std::string(255, 'p')}) {
    projections::PlanInput input;
    const std::string body =
        R"({"id":"team","display_name":"Team","price_monthly_cents":2900,"api_calls_limit":null,)"
        R"("services":[],"stripe_price_monthly":")" + id + "\"}";
    if (!projections::ParsePlanInput(body, "", &input).ok()) continue;
    EXPECT_TRUE(IsStripeId(id)) << id;
    EXPECT_TRUE(projections::IsStripeId(id)) << id;  // the webhook's rule, as long
  }
  EXPECT_TRUE(IsStripeId("legacy-gold_2"));
  EXPECT_TRUE(IsStripeId(std::string(200, 'p')));
}

TEST(StripeKeysTest, RedactsSecrets) {
  const std::string key = "sk_test_51AbCdEf";
  std::string out = RedactStripeSecrets(
      "Invalid API Key provided: sk_test_****CdEf; also sk_live_XYZ123 and whsec_abc and " + key,
      key);
  EXPECT_EQ(out.find("sk_"), std::string::npos) << out;
  EXPECT_EQ(out.find("whsec_"), std::string::npos) << out;
  EXPECT_EQ(out.find("CdEf"), std::string::npos) << out;
  EXPECT_NE(out.find("[redacted]"), std::string::npos);
  EXPECT_LE(RedactStripeSecrets(std::string(1000, 'a'), "").size(), 300u);
}

// A cancel-now's marker (RequestMarker) is keyed by the secret key: the same request gives the
// same marker under one key and another under another key; it is 32 base64url characters and
// carries neither the request's key nor the secret.
TEST(StripeKeysTest, RequestMarkersAreKeyedByTheSecretKey) {
  auto make = [](const std::string& secret_key) {
    StripeClientOptions options;
    options.secret_key = secret_key;
    std::unique_ptr<HttpStripeClient> client;
    EXPECT_TRUE(HttpStripeClient::Create(options, &client).ok());
    return client;
  };
  auto ours = make("sk_test_51Ours");
  auto theirs = make("sk_test_51Theirs");
  const std::string request = StripeIdempotencyKey("cancel_now", "alice", "client:k1:abc");
  const std::string marker = ours->RequestMarker(request);
  EXPECT_EQ(marker, make("sk_test_51Ours")->RequestMarker(request));
  EXPECT_NE(marker, theirs->RequestMarker(request));
  EXPECT_NE(marker,
            ours->RequestMarker(StripeIdempotencyKey("cancel_now", "alice", "client:k2:abc")));
  ASSERT_EQ(marker.size(), 32u);
  constexpr char kBase64Url[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  EXPECT_EQ(marker.find_first_not_of(kBase64Url), std::string::npos) << marker;
  EXPECT_EQ(marker.find("Ours"), std::string::npos);
  EXPECT_EQ(marker.find("ledgerd-"), std::string::npos);
}

TEST(StripeClientCreateTest, ValidatesTheBaseAndKey) {
  std::unique_ptr<HttpStripeClient> client;
  StripeClientOptions options;
  options.secret_key = "sk_test_x";
  for (const char* bad : {"ftp://host", "api.stripe.com", "http://", "https://?x", "http://a b"}) {
    options.api_base = bad;
    EXPECT_FALSE(HttpStripeClient::Create(options, &client).ok()) << bad;
  }
  for (const char* good : {"https://api.stripe.com", "http://127.0.0.1:1234/",
                           "http://127.0.0.1:1234/prefix/"}) {
    options.api_base = good;
    EXPECT_TRUE(HttpStripeClient::Create(options, &client).ok()) << good;
  }
  options.secret_key = "";
  EXPECT_FALSE(HttpStripeClient::Create(options, &client).ok());
  options.secret_key = "sk_test_x\r\nX-Injected: 1";
  EXPECT_FALSE(HttpStripeClient::Create(options, &client).ok());
}

class StripeClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fake_.Start().ok());
    FakeStripe::Price monthly;
    monthly.id = "price_m";
    monthly.product = "prod_x";
    monthly.unit_amount = 1900;
    monthly.interval = "month";
    fake_.AddProduct("prod_x", "X");
    fake_.AddPrice(monthly);
    client_ = MakeClient(fake_.base_url(), kFakeStripeSecretKey);
  }

  std::unique_ptr<HttpStripeClient> MakeClient(const std::string& base, const std::string& key,
                                               int max_attempts = 3) {
    StripeClientOptions options;
    options.api_base = base;
    options.secret_key = key;
    options.connect_timeout_ms = 1000;
    options.read_timeout_ms = 1000;  // generous: 2 shared cores under ASan
    options.max_attempts = max_attempts;
    options.deadline_ms = 10'000;
    options.backoff_initial_ms = 100;
    options.backoff_max_ms = 1000;
    options.sleep = [this](int64_t ms) {
      std::lock_guard<std::mutex> lock(mu_);
      sleeps_.push_back(ms);
    };
    std::unique_ptr<HttpStripeClient> client;
    Status s = HttpStripeClient::Create(options, &client);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return client;
  }

  // sub_1 of cus_1 on price_m (item si_1), as the subscription calls' tests find it in Stripe.
  static FakeStripe::Subscription Sub1() {
    FakeStripe::Subscription sub;
    sub.id = "sub_1";
    sub.customer = "cus_1";
    sub.item_id = "si_1";
    sub.price_id = "price_m";
    return sub;
  }

  StripeCheckoutParams Checkout() const {
    StripeCheckoutParams p;
    p.recurring_price_id = "price_m";
    p.success_url = "https://app.test/ok";
    p.cancel_url = "https://app.test/cancel";
    p.client_reference_id = "alice";
    p.customer_email = "alice@example.com";
    p.metadata = {{"user_id", "alice"}, {"plan_id", "starter"}};
    return p;
  }

  std::vector<int64_t> sleeps() {
    std::lock_guard<std::mutex> lock(mu_);
    return sleeps_;
  }

  FakeStripe fake_;
  std::unique_ptr<HttpStripeClient> client_;
  std::mutex mu_;
  std::vector<int64_t> sleeps_;
};

TEST_F(StripeClientTest, CreatesACheckoutSessionAsStripeExpects) {
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "ledgerd-checkout-k1", &session);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(session.id.rfind("cs_test_", 0), 0u);
  EXPECT_NE(session.url.find(session.id), std::string::npos);
  auto requests = fake_.requests();
  ASSERT_EQ(requests.size(), 1u);
  const FakeStripe::Request& r = requests[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.path, "/v1/checkout/sessions");
  EXPECT_EQ(r.authorization, std::string("Bearer ") + kFakeStripeSecretKey);
  EXPECT_EQ(r.idempotency_key, "ledgerd-checkout-k1");
  EXPECT_EQ(r.stripe_version, "2025-03-31.basil");  // pinned: the account's default may move
  EXPECT_EQ(r.content_type, "application/x-www-form-urlencoded");
  EXPECT_EQ(r.params, HttpStripeClient::CheckoutForm(Checkout()));
  EXPECT_EQ(r.status, 200);
}

TEST_F(StripeClientTest, EveryPostNeedsAnIdempotencyKey) {
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "", &session);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  s = client_->CreateCheckoutSession(Checkout(), std::string(256, 'k'), &session);
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_TRUE(fake_.requests().empty());
}

TEST_F(StripeClientTest, StripeReplaysTheSameKeyAndRefusesItWithOtherParameters) {
  StripeCheckoutSession first, second;
  ASSERT_TRUE(client_->CreateCheckoutSession(Checkout(), "key-1", &first).ok());
  ASSERT_TRUE(client_->CreateCheckoutSession(Checkout(), "key-1", &second).ok());
  EXPECT_EQ(first.id, second.id);
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
  EXPECT_TRUE(fake_.requests().back().replayed);

  StripeCheckoutParams other = Checkout();
  other.client_reference_id = "bob";
  Status s = client_->CreateCheckoutSession(other, "key-1", &second);
  EXPECT_EQ(s.code(), Code::kBadGateway);
  EXPECT_EQ(s.problem(), "stripe_idempotency_error");
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/checkout").size(), 3u);  // not retried
}

TEST_F(StripeClientTest, RetriesServerErrorsWithTheSameKeyAndBackoff) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 2);
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "key-retry", &session);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto requests = fake_.requests();
  ASSERT_EQ(requests.size(), 3u);
  for (const auto& r : requests) EXPECT_EQ(r.idempotency_key, "key-retry");
  EXPECT_TRUE(requests[0].faulted && requests[1].faulted && !requests[2].faulted);
  // Exponential with jitter in [0.5, 1.0): 100 ms then 200 ms nominal.
  auto delays = sleeps();
  ASSERT_EQ(delays.size(), 2u);
  EXPECT_GE(delays[0], 50);
  EXPECT_LT(delays[0], 100);
  EXPECT_GE(delays[1], 100);
  EXPECT_LT(delays[1], 200);
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);
}

TEST_F(StripeClientTest, ServerErrorsExhaustToBadGateway) {
  fake_.InjectFault(FakeStripe::Fault::kServerError, 10);
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "key-500", &session);
  EXPECT_EQ(s.code(), Code::kBadGateway);
  EXPECT_EQ(s.problem(), "stripe_error");
  EXPECT_NE(s.message().find("500"), std::string::npos);
  EXPECT_EQ(fake_.requests().size(), 3u);
  EXPECT_TRUE(fake_.checkout_sessions().empty());
}

TEST_F(StripeClientTest, HonoursStripeShouldRetry) {
  fake_.set_should_retry_header("false");
  fake_.InjectFault(FakeStripe::Fault::kServerError, 1);
  StripeCheckoutSession session;
  EXPECT_EQ(client_->CreateCheckoutSession(Checkout(), "key-a", &session).problem(), "stripe_error");
  EXPECT_EQ(fake_.requests().size(), 1u);

  // "true" makes even a 4xx retryable (Stripe says so for e.g. a 409 lock timeout).
  fake_.set_should_retry_header("true");
  fake_.ClearRequests();
  fake_.InjectError(409, "invalid_request_error", "lock timeout", 1);
  ASSERT_TRUE(client_->CreateCheckoutSession(Checkout(), "key-b", &session).ok());
  EXPECT_EQ(fake_.requests().size(), 2u);

  // An explicit "false" makes even a 409 final.
  fake_.set_should_retry_header("false");
  fake_.ClearRequests();
  fake_.InjectError(409, "invalid_request_error", "conflict", 1);
  EXPECT_EQ(client_->CreateCheckoutSession(Checkout(), "key-c", &session).problem(),
            "stripe_request_failed");
  EXPECT_EQ(fake_.requests().size(), 1u);
}

// Stripe's 409 idempotency_key_in_use: a request with the same key is still running there (our
// own first attempt, which hit the read timeout while Stripe went on). Documented as retryable and
// sent without Stripe-Should-Retry: retried with the same key, it gets the first one's result.
TEST_F(StripeClientTest, AConcurrentRequestsConflictIsRetried) {
  fake_.set_should_retry_header("");
  fake_.InjectError(409, "invalid_request_error",
                    "There is currently another in-progress request using this idempotent key "
                    "(that probably means you submitted twice, and the other request is still "
                    "going through): key-in-use. Please try again later.",
                    1, "", "", "idempotency_key_in_use");
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "key-in-use", &session);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto requests = fake_.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].status, 409);
  EXPECT_EQ(requests[1].status, 200);
  EXPECT_EQ(requests[1].idempotency_key, "key-in-use");
  EXPECT_EQ(fake_.checkout_sessions().size(), 1u);

  // Still in use after every attempt: the conflict is the answer.
  fake_.ClearRequests();
  fake_.InjectError(409, "invalid_request_error", "another in-progress request", 5, "", "",
                    "idempotency_key_in_use");
  EXPECT_EQ(client_->CreateCheckoutSession(Checkout(), "key-in-use-2", &session).problem(),
            "stripe_request_failed");
  EXPECT_EQ(fake_.requests().size(), 3u);
}

TEST_F(StripeClientTest, RateLimitsAreRetriedThenUnavailable) {
  fake_.InjectFault(FakeStripe::Fault::kRateLimited, 1);
  StripeCheckoutSession session;
  ASSERT_TRUE(client_->CreateCheckoutSession(Checkout(), "key-429", &session).ok());
  EXPECT_EQ(fake_.requests().size(), 2u);

  fake_.InjectFault(FakeStripe::Fault::kRateLimited, 5);
  Status s = client_->CreateCheckoutSession(Checkout(), "key-429b", &session);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.problem(), "stripe_rate_limited");
}

TEST_F(StripeClientTest, ATimeoutIsRetriedThenUnavailable) {
  fake_.set_hang_ms(6000);
  fake_.InjectFault(FakeStripe::Fault::kHang, 10);
  auto client = MakeClient(fake_.base_url(), kFakeStripeSecretKey, /*max_attempts=*/2);
  const auto start = std::chrono::steady_clock::now();
  StripeCheckoutSession session;
  Status s = client->CreateCheckoutSession(Checkout(), "key-hang", &session);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_EQ(s.problem(), "stripe_unavailable");
  EXPECT_LT(elapsed, std::chrono::milliseconds(5000));  // 2 × 1 s read timeout, not the 6 s hang
  auto requests = fake_.RequestsTo("POST", "/v1/checkout/sessions");
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].idempotency_key, requests[1].idempotency_key);
}

// cpp-httplib's read timeout bounds each read, not the call: an answer (or a proxy at
// STRIPE_API_BASE) sending its head and then a byte every 1.5 s held the caller -- an HTTP worker
// -- until the 200-byte body ended, 300 s later, far past the 2 s deadline. Now the attempt is
// cut off at the deadline, a timeout like any other, and no retry starts after it.
TEST_F(StripeClientTest, AnAnswerThatTricklesEndsAtTheDeadline) {
  ledger::testing::TricklingServer slow(200, 200, std::chrono::milliseconds(1500));
  StripeClientOptions options;
  options.api_base = slow.url();
  options.secret_key = kFakeStripeSecretKey;
  options.read_timeout_ms = 15'000;  // each read waits 1.5 s at most: no read ever times out
  options.deadline_ms = 2'000;
  options.sleep = [this](int64_t ms) {
    std::lock_guard<std::mutex> lock(mu_);
    sleeps_.push_back(ms);
  };
  std::unique_ptr<HttpStripeClient> client;
  ASSERT_TRUE(HttpStripeClient::Create(options, &client).ok());
  StripeCheckoutSession session;
  Status s = client->CreateCheckoutSession(Checkout(), "key-trickle", &session);
  EXPECT_FALSE(slow.finished()) << slow.body_bytes_sent() << " body bytes sent";
  EXPECT_LT(slow.body_bytes_sent(), 200);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_EQ(s.problem(), "stripe_unavailable");
  EXPECT_EQ(s.message().find(kFakeStripeSecretKey), std::string::npos);
  ASSERT_EQ(slow.requests().size(), 1u);  // the deadline left no time for a retry
  EXPECT_NE(slow.requests()[0].find("Idempotency-Key: key-trickle"), std::string::npos);
  EXPECT_TRUE(sleeps().empty());
}

// An answer without a length ends where the connection does, and the deadline's cut looked like
// that end: the truncated body was taken for Stripe's answer (502 stripe_error, "unexpected
// answer") instead of no answer in time.
TEST_F(StripeClientTest, AnAnswerWithoutALengthCutAtTheDeadlineIsNoAnswer) {
  ledger::testing::TricklingServer slow(200, 200, std::chrono::milliseconds(1500),
                                        /*content_length=*/false);
  StripeClientOptions options;
  options.api_base = slow.url();
  options.secret_key = kFakeStripeSecretKey;
  options.read_timeout_ms = 15'000;
  options.deadline_ms = 2'000;
  options.sleep = [](int64_t) {};
  std::unique_ptr<HttpStripeClient> client;
  ASSERT_TRUE(HttpStripeClient::Create(options, &client).ok());
  StripeCheckoutSession session;
  Status s = client->CreateCheckoutSession(Checkout(), "key-no-length", &session);
  EXPECT_FALSE(slow.finished()) << slow.body_bytes_sent() << " body bytes sent";
  EXPECT_EQ(s.problem(), "stripe_unavailable") << s.ToString();
}

TEST_F(StripeClientTest, AConnectionDroppedMidAnswerIsRetried) {
  fake_.InjectFault(FakeStripe::Fault::kReset, 1);
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(Checkout(), "key-reset", &session);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(fake_.requests().size(), 2u);
}

TEST_F(StripeClientTest, NobodyListeningIsUnavailable) {
  std::string base;
  {
    FakeStripe closed;
    ASSERT_TRUE(closed.Start().ok());
    base = closed.base_url();
  }
  auto client = MakeClient(base, kFakeStripeSecretKey);
  StripeCheckoutSession session;
  Status s = client->CreateCheckoutSession(Checkout(), "key-x", &session);
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_EQ(s.problem(), "stripe_unavailable");
  EXPECT_EQ(sleeps().size(), 2u);  // three attempts
}

TEST_F(StripeClientTest, ARefusedKeyIsNeverEchoed) {
  const std::string wrong = "sk_test_51WrongKeyAbCdWXYZ";
  auto client = MakeClient(fake_.base_url(), wrong);
  StripeCheckoutSession session;
  Status s = client->CreateCheckoutSession(Checkout(), "key-auth", &session);
  EXPECT_EQ(s.code(), Code::kBadGateway);
  EXPECT_EQ(s.problem(), "stripe_auth_failed");
  EXPECT_EQ(s.ToString().find("sk_"), std::string::npos) << s.ToString();
  EXPECT_EQ(s.ToString().find("WXYZ"), std::string::npos) << s.ToString();
  EXPECT_EQ(fake_.requests().size(), 1u);  // a 401 is not retried
}

TEST_F(StripeClientTest, StripeRequestErrorsCarryStripesMessage) {
  StripeCheckoutParams p = Checkout();
  p.recurring_price_id = "price_missing";
  StripeCheckoutSession session;
  Status s = client_->CreateCheckoutSession(p, "key-400", &session);
  EXPECT_EQ(s.code(), Code::kBadGateway);
  EXPECT_EQ(s.problem(), "stripe_request_failed");
  EXPECT_NE(s.message().find("No such price: 'price_missing'"), std::string::npos) << s.message();
  EXPECT_EQ(fake_.requests().size(), 1u);
}

TEST_F(StripeClientTest, SubscriptionCalls) {
  fake_.AddCustomer("cus_1", "alice@example.com");
  FakeStripe::Subscription sub = Sub1();
  sub.metadata = {{"plan_id", "starter"}};
  fake_.AddSubscription(sub);

  StripeSubscription got;
  ASSERT_TRUE(client_->GetSubscription("sub_1", &got).ok());
  EXPECT_EQ(got.customer, "cus_1");
  EXPECT_EQ(got.status, "active");
  ASSERT_EQ(got.items.size(), 1u);
  EXPECT_EQ(got.items[0].id, "si_1");
  EXPECT_EQ(got.items[0].price_id, "price_m");
  EXPECT_EQ(got.items[0].interval, "month");
  EXPECT_EQ(got.current_period_end, sub.current_period_end);  // from the item (new layout)
  EXPECT_EQ(got.metadata["plan_id"], "starter");
  EXPECT_TRUE(fake_.requests().back().idempotency_key.empty());
  EXPECT_FALSE(fake_.requests().back().has_idempotency_key);

  ASSERT_TRUE(client_->SetCancelAtPeriodEnd("sub_1", true, "key-cape", &got).ok());
  EXPECT_TRUE(got.cancel_at_period_end);
  EXPECT_EQ(got.cancel_at, sub.current_period_end);
  EXPECT_EQ(fake_.requests().back().params, (FormParams{{"cancel_at_period_end", "true"}}));

  EXPECT_EQ(got.cancellation_comment, "");  // cancellation_details.comment is null
  ASSERT_TRUE(client_->CancelSubscriptionNow("sub_1", "", &got).ok());
  EXPECT_EQ(got.status, "canceled");
  EXPECT_EQ(fake_.requests().back().method, "DELETE");
  EXPECT_FALSE(fake_.requests().back().has_idempotency_key);
  EXPECT_EQ(fake_.requests().back().params, (FormParams{{"invoice_now", "true"}}));
  // A repeated DELETE (an earlier answer lost) finds it canceled: success.
  ASSERT_TRUE(client_->CancelSubscriptionNow("sub_1", "", &got).ok());
  EXPECT_EQ(got.status, "canceled");

  EXPECT_EQ(client_->GetSubscription("sub_missing", &got).problem(), "stripe_resource_missing");
  EXPECT_EQ(client_->GetSubscription("sub/../x", &got).code(), Code::kInvalidArgument);
}

// A subscription a schedule manages: its `schedule` is read, and Stripe's refusal of
// cancel_at_period_end on it (400 invalid_request_error) is 409 subscription_scheduled, not 502.
TEST_F(StripeClientTest, ACancelOfAScheduleManagedSubscriptionIsAConflict) {
  fake_.AddCustomer("cus_1", "alice@example.com");
  FakeStripe::Subscription sub = Sub1();
  sub.schedule = "sub_sched_1";
  fake_.AddSubscription(sub);
  StripeSubscription got;
  ASSERT_TRUE(client_->GetSubscription("sub_1", &got).ok());
  EXPECT_EQ(got.schedule, "sub_sched_1");
  Status s = client_->SetCancelAtPeriodEnd("sub_1", true, "key-cape", &got);
  EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
  EXPECT_EQ(s.problem(), "subscription_scheduled") << s.ToString();
  EXPECT_EQ(fake_.RequestsTo("POST", "/v1/subscriptions/sub_1").at(0).status, 400);
  EXPECT_FALSE(fake_.GetSubscription("sub_1")->cancel_at_period_end);
  // Without a schedule the same refusal stays Stripe's (502 stripe_request_failed).
  sub.schedule.clear();
  fake_.AddSubscription(sub);
  fake_.InjectError(400, "invalid_request_error", "refused", 1, "POST", "/v1/subscriptions/sub_1");
  EXPECT_EQ(client_->SetCancelAtPeriodEnd("sub_1", true, "key-cape-2", &got).problem(),
            "stripe_request_failed");
  // A cancel now is not refused.
  sub.schedule = "sub_sched_1";
  fake_.AddSubscription(sub);
  ASSERT_TRUE(client_->CancelSubscriptionNow("sub_1", "", &got).ok());
  EXPECT_EQ(got.status, "canceled");
}

// An attempt whose deadline watcher cannot start (the process may start no more threads) is not
// made: a network error, retried, then 503 stripe_unavailable -- std::thread's system_error was
// thrown out of the call (a 500 on an HTTP worker, an abort on a thread that catches nothing).
TEST_F(StripeClientTest, AThreadThatCannotStartIsANetworkError) {
  fake_.AddSubscription(Sub1());
  StripeSubscription got;
  {
    ledger::testing::NoThreadForCallDeadlines no_thread;
    Status s = client_->GetSubscription("sub_1", &got);
    EXPECT_EQ(s.problem(), "stripe_unavailable") << s.ToString();
    EXPECT_EQ(s.code(), Code::kUnavailable);
  }
  EXPECT_TRUE(fake_.requests().empty());
  EXPECT_EQ(sleeps().size(), 2u);  // three attempts, none made
  ASSERT_TRUE(client_->GetSubscription("sub_1", &got).ok());
  EXPECT_EQ(got.id, "sub_1");
}

// A cancel-now's comment goes to Stripe as cancellation_details[comment] (DELETE: in the query,
// encoded) and is read back from the subscription's cancellation_details, in the DELETE's answer
// and in a later GET (the billing routes know a retry of their own cancel by it).
TEST_F(StripeClientTest, ACancelsCommentIsSentAndReadBack) {
  fake_.AddSubscription(Sub1());
  const std::string comment = "ledgerd_request:ledgerd-cancel_now-0a1b & more=yes";
  StripeSubscription got;
  ASSERT_TRUE(client_->CancelSubscriptionNow("sub_1", comment, &got).ok());
  EXPECT_EQ(got.status, "canceled");
  EXPECT_EQ(got.cancellation_comment, comment);
  FakeStripe::Request q = fake_.requests().back();
  EXPECT_EQ(q.method, "DELETE");
  EXPECT_EQ(q.params,
            (FormParams{{"invoice_now", "true"}, {"cancellation_details[comment]", comment}}));
  EXPECT_EQ(fake_.GetSubscription("sub_1")->cancellation_comment, comment);
  StripeSubscription again;
  ASSERT_TRUE(client_->GetSubscription("sub_1", &again).ok());
  EXPECT_EQ(again.cancellation_comment, comment);
  // Stripe's bound: a longer comment is not sent.
  EXPECT_EQ(client_->CancelSubscriptionNow("sub_1", std::string(5001, 'x'), &got).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(fake_.requests().size(), 2u);
}

TEST_F(StripeClientTest, CardsOfACustomer) {
  fake_.AddCustomer("cus_1");
  fake_.AddCard("cus_1", "pm_1", "visa", "4242", 12, 2030);
  std::vector<StripeCard> cards;
  bool has_more = true;
  ASSERT_TRUE(client_->ListCards("cus_1", &cards, &has_more).ok());
  ASSERT_EQ(cards.size(), 1u);
  EXPECT_EQ(cards[0].id, "pm_1");
  EXPECT_EQ(cards[0].brand, "visa");
  EXPECT_EQ(cards[0].last4, "4242");
  EXPECT_EQ(cards[0].exp_month, 12);
  EXPECT_EQ(cards[0].exp_year, 2030);
  EXPECT_FALSE(has_more);
  const auto r = fake_.requests().back();
  EXPECT_EQ(r.method, "GET");
  EXPECT_EQ(r.path, "/v1/customers/cus_1/payment_methods");
  EXPECT_EQ(r.params, (FormParams{{"type", "card"}, {"limit", "100"}}));
}

TEST_F(StripeClientTest, ABasePathPrefixIsKept) {
  // The fake serves /v1/...; a prefix makes every path miss, which proves it is sent.
  auto client = MakeClient(fake_.base_url() + "/proxy/", kFakeStripeSecretKey);
  StripeProduct product;
  Status s = client->GetProduct("prod_x", &product);
  EXPECT_EQ(s.problem(), "stripe_request_failed");  // not "no such product"
  EXPECT_NE(s.message().find("Unrecognized request URL"), std::string::npos) << s.message();
  EXPECT_EQ(fake_.requests().back().path, "/proxy/v1/products/prod_x");
}

TEST_F(StripeClientTest, CatalogCalls) {
  StripeProduct product;
  EXPECT_TRUE(client_->GetProduct("ledgerd_starter", &product).IsNotFound());
  StripeProductParams pp;
  pp.id = "ledgerd_starter";
  pp.name = "Starter";
  pp.metadata = {{"ledgerd_plan_id", "starter"}};
  ASSERT_TRUE(client_->CreateProduct(pp, "key-prod", &product).ok());
  EXPECT_EQ(product.id, "ledgerd_starter");
  ASSERT_TRUE(client_->GetProduct("ledgerd_starter", &product).ok());
  EXPECT_EQ(product.name, "Starter");

  StripePriceParams price;
  price.product = "ledgerd_starter";
  price.unit_amount = 1900;
  price.interval = "month";
  price.lookup_key = "ledgerd_starter_monthly";
  StripePrice created;
  ASSERT_TRUE(client_->CreatePrice(price, "key-price", &created).ok());
  EXPECT_EQ(created.interval, "month");
  EXPECT_EQ(created.unit_amount, 1900);
  EXPECT_EQ(created.lookup_key, "ledgerd_starter_monthly");

  std::vector<std::string> keys;
  for (int i = 0; i < 12; ++i) keys.push_back("missing_" + std::to_string(i));
  keys.push_back("ledgerd_starter_monthly");
  std::vector<StripePrice> found;
  ASSERT_TRUE(client_->FindPricesByLookupKeys(keys, &found).ok());
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].id, created.id);
  EXPECT_EQ(fake_.RequestsTo("GET", "/v1/prices").size(), 2u);  // 13 keys: two calls of <= 10
}

// ---- https ----------------------------------------------------------------------------------------

TEST(StripeClientHttpsTest, SpeaksTlsAndVerifiesTheServer) {
  ledger::testing::TempDir dir;
  ledger::testing::TlsAuthServer server;
  server.Start(dir.Sub("ca.pem"), "GET", "/v1/products/prod_tls",
               R"({"id":"prod_tls","object":"product","name":"TLS","active":true})");
  if (HasFatalFailure()) return;

  StripeClientOptions options;
  options.api_base = server.url();
  options.secret_key = "sk_test_tls";
  options.ca_cert_file = dir.Sub("ca.pem");
  options.sleep = [](int64_t) {};
  std::unique_ptr<HttpStripeClient> trusting;
  ASSERT_TRUE(HttpStripeClient::Create(options, &trusting).ok());
  StripeProduct product;
  Status s = trusting->GetProduct("prod_tls", &product);
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(product.name, "TLS");
  EXPECT_EQ(server.seen_auth(), std::vector<std::string>{"Bearer sk_test_tls"});

  // The system trust store does not know our CA: refused, and not retried.
  options.ca_cert_file.clear();
  std::unique_ptr<HttpStripeClient> strict;
  ASSERT_TRUE(HttpStripeClient::Create(options, &strict).ok());
  s = strict->GetProduct("prod_tls", &product);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.ToString();
  EXPECT_NE(s.message().find("TLS"), std::string::npos) << s.message();
  EXPECT_EQ(server.seen_auth().size(), 1u);  // no second request: the key never left the client
}

}  // namespace
}  // namespace ledger::http
