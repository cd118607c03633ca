#include "http/auth.h"

#include <gtest/gtest.h>

#include <map>

#include "http/problem.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using testing::HttpReply;
using testing::MintHs256;
using testing::TestHttpClient;
using testing::TestHttpStack;
using testing::TokenClaims;

constexpr int64_t kNowS = 1'800'000'000;

TEST(ServiceTokensTest, Parse) {
  std::vector<ServiceToken> tokens;
  ASSERT_TRUE(ParseServiceTokens(" gateway=abc , litellm=d=e ,", &tokens).ok());
  ASSERT_EQ(tokens.size(), 2u);
  EXPECT_EQ(tokens[0].name, "gateway");
  EXPECT_EQ(tokens[0].token, "abc");
  EXPECT_EQ(tokens[1].name, "litellm");
  EXPECT_EQ(tokens[1].token, "d=e");
  EXPECT_TRUE(ParseServiceTokens("", &tokens).ok());
  EXPECT_TRUE(tokens.empty());
  EXPECT_FALSE(ParseServiceTokens("gateway", &tokens).ok());
  EXPECT_FALSE(ParseServiceTokens("=abc", &tokens).ok());
  EXPECT_FALSE(ParseServiceTokens("a=", &tokens).ok());
  EXPECT_FALSE(ParseServiceTokens("a=x,a=y", &tokens).ok());
  EXPECT_FALSE(ParseServiceTokens("a=x,b=x", &tokens).ok());
}

httplib::Request WithAuthorization(const std::string& value) {
  httplib::Request req;
  req.set_header("Authorization", value);
  return req;
}

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    AuthOptions options;
    options.service_tokens = {{"gateway", "svc-gateway-token"}, {"litellm", "svc-litellm-token"}};
    options.jwt.hs256_secret = testing::kTestHs256Secret;
    Status s = Authenticator::Create(options, &clock_, &auth_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  ManualClock clock_{kNowS * 1000000};
  std::unique_ptr<Authenticator> auth_;
};

TEST_F(AuthenticatorTest, IdentifiesCallers) {
  Identity id;
  ASSERT_TRUE(auth_->Authenticate(httplib::Request(), &id).ok());
  EXPECT_EQ(id.kind, Identity::Kind::kAnonymous);

  ASSERT_TRUE(auth_->Authenticate(WithAuthorization("Bearer svc-litellm-token"), &id).ok());
  EXPECT_TRUE(id.IsService());
  EXPECT_EQ(id.subject, "litellm");

  std::string token = MintHs256(TokenClaims::Admin("root", kNowS), testing::kTestHs256Secret);
  ASSERT_TRUE(auth_->Authenticate(WithAuthorization("bearer " + token), &id).ok()) << "scheme is case-insensitive";
  EXPECT_TRUE(id.IsUser());
  EXPECT_EQ(id.subject, "root");
  EXPECT_EQ(id.email, "root@example.com");
  EXPECT_TRUE(id.admin);
}

TEST_F(AuthenticatorTest, RejectsBadCredentials) {
  Identity id;
  for (const std::string& header : {std::string("Bearer svc-litellm-tokeN"), std::string("Bearer "),
                                    std::string("Basic dXNlcjpwYXNz"), std::string("svc-litellm-token"),
                                    std::string("Bearer a.b.c"), "Bearer " + std::string(20000, 'x')}) {
    Status s = auth_->Authenticate(WithAuthorization(header), &id);
    EXPECT_EQ(s.code(), Code::kUnauthenticated) << header.substr(0, 40);
    EXPECT_EQ(id.kind, Identity::Kind::kAnonymous);
  }
  httplib::Request twice;
  twice.set_header("Authorization", "Bearer svc-litellm-token");
  twice.set_header("Authorization", "Bearer svc-gateway-token");
  EXPECT_EQ(auth_->Authenticate(twice, &id).code(), Code::kUnauthenticated);
}

TEST_F(AuthenticatorTest, AdmitAppliesPolicies) {
  Identity id;
  const auto user = WithAuthorization("Bearer " + MintHs256(TokenClaims::User("u", kNowS), testing::kTestHs256Secret));
  const auto admin = WithAuthorization("Bearer " + MintHs256(TokenClaims::Admin("a", kNowS), testing::kTestHs256Secret));
  const auto service = WithAuthorization("Bearer svc-gateway-token");
  const auto garbage = WithAuthorization("Bearer nope");
  const httplib::Request none;
  struct Case {
    Policy policy;
    const httplib::Request* req;
    Code want;
  };
  const Code ok = Code::kOk, unauth = Code::kUnauthenticated, forbidden = Code::kPermissionDenied;
  const Case cases[] = {
      {Policy::kPublic, &none, ok},          {Policy::kPublic, &garbage, ok},
      {Policy::kSignature, &garbage, ok},    {Policy::kUser, &none, unauth},
      {Policy::kUser, &garbage, unauth},     {Policy::kUser, &user, ok},
      {Policy::kUser, &admin, ok},           {Policy::kUser, &service, forbidden},
      {Policy::kAdmin, &none, unauth},       {Policy::kAdmin, &user, forbidden},
      {Policy::kAdmin, &admin, ok},          {Policy::kAdmin, &service, forbidden},
      {Policy::kService, &none, unauth},     {Policy::kService, &user, forbidden},
      {Policy::kService, &admin, forbidden}, {Policy::kService, &service, ok},
      {Policy::kUserOrService, &user, ok},   {Policy::kUserOrService, &service, ok},
      {Policy::kUserOrService, &none, unauth}, {Policy::kUserOrService, &garbage, unauth},
  };
  for (const Case& c : cases) {
    Status s = auth_->Admit(c.policy, *c.req, &id);
    EXPECT_EQ(s.code(), c.want) << PolicyName(c.policy) << " " << c.req->get_header_value("Authorization").substr(0, 20);
    if (s.code() == unauth) {
      EXPECT_EQ(s.problem(), "unauthenticated");
    }
    if (s.code() == forbidden) {
      EXPECT_EQ(s.problem(), "forbidden");
    }
  }
  ASSERT_TRUE(auth_->Admit(Policy::kPublic, admin, &id).ok());
  EXPECT_EQ(id.kind, Identity::Kind::kAnonymous) << "public routes do not parse the header";
}

// The policy matrix over real HTTP on loopback.
class AuthHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RouteTable routes;
    auto echo = [](const httplib::Request&, httplib::Response& res, const Identity& id) {
      const char* kind = id.IsUser() ? "user" : id.IsService() ? "service" : "anonymous";
      WriteJson(200,
                std::string(R"({"kind":")") + kind + R"(","subject":)" + JsonQuote(id.subject) +
                    R"(,"admin":)" + (id.admin ? "true" : "false") + "}",
                &res);
    };
    routes.Add("GET", "/t/public", "/t/public", Policy::kPublic, echo);
    routes.Add("GET", "/t/user", "/t/user", Policy::kUser, echo);
    routes.Add("GET", "/t/admin", "/t/admin", Policy::kAdmin, echo);
    routes.Add("GET", "/t/service", "/t/service", Policy::kService, echo);
    routes.Add("GET", "/t/either", "/t/either", Policy::kUserOrService, echo);
    routes.Add("POST", "/t/hook", "/t/hook", Policy::kSignature, echo);
    AuthOptions auth;
    auth.service_tokens = {{"gateway", "svc-gateway-token"}};
    auth.jwt.hs256_secret = testing::kTestHs256Secret;
    Status s = stack_.Start(std::move(routes), auth, &clock_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  HttpReply Call(const std::string& method, const std::string& path, const std::string& token) {
    TestHttpClient client("127.0.0.1", stack_.port());
    client.set_bearer(token);
    return method == "GET" ? client.Get(path) : client.Post(path, "{}");
  }

  ManualClock clock_{kNowS * 1000000};
  TestHttpStack stack_;
};

TEST_F(AuthHttpTest, PolicyMatrix) {
  const std::string user = MintHs256(TokenClaims::User("alice", kNowS), testing::kTestHs256Secret);
  const std::string admin = MintHs256(TokenClaims::Admin("root", kNowS), testing::kTestHs256Secret);
  TokenClaims expired_claims = TokenClaims::Admin("root", kNowS - 7200);
  const std::string expired = MintHs256(expired_claims, testing::kTestHs256Secret);
  const std::string service = "svc-gateway-token";
  const std::map<std::string, std::string> credentials = {
      {"none", ""}, {"garbage", "garbage"}, {"expired", expired},
      {"user", user}, {"admin", admin},     {"service", service}};
  // route -> credential -> status
  const std::map<std::string, std::map<std::string, int>> want = {
      {"/t/public", {{"none", 200}, {"garbage", 200}, {"expired", 200}, {"user", 200}, {"admin", 200}, {"service", 200}}},
      {"/t/user", {{"none", 401}, {"garbage", 401}, {"expired", 401}, {"user", 200}, {"admin", 200}, {"service", 403}}},
      {"/t/admin", {{"none", 401}, {"garbage", 401}, {"expired", 401}, {"user", 403}, {"admin", 200}, {"service", 403}}},
      {"/t/service", {{"none", 401}, {"garbage", 401}, {"expired", 401}, {"user", 403}, {"admin", 403}, {"service", 200}}},
      {"/t/either", {{"none", 401}, {"garbage", 401}, {"expired", 401}, {"user", 200}, {"admin", 200}, {"service", 200}}},
      {"/t/hook", {{"none", 200}, {"garbage", 200}, {"expired", 200}, {"user", 200}, {"admin", 200}, {"service", 200}}},
  };
  for (const auto& [path, by_credential] : want) {
    for (const auto& [credential, status] : by_credential) {
      const std::string& token = credentials.at(credential);
      HttpReply r = Call(path == "/t/hook" ? "POST" : "GET", path, token);
      ASSERT_EQ(r.status, status) << path << " with " << credential << ": " << r.body;
      if (status == 401 || status == 403) {
        EXPECT_EQ(r.Header("Content-Type"), "application/problem+json");
        auto doc = r.Json();
        ASSERT_TRUE(doc.IsObject()) << r.body;
        EXPECT_STREQ(doc["code"].GetString(), status == 401 ? "unauthenticated" : "forbidden");
        EXPECT_EQ(doc["status"].GetInt(), status);
      }
      if (status == 401) {
        EXPECT_NE(r.Header("WWW-Authenticate").find("Bearer"), std::string::npos);
      }
      if (token.size() > 8) {
        EXPECT_EQ(r.body.find(token), std::string::npos) << "token echoed";
        for (const auto& [name, value] : r.headers) EXPECT_EQ(value.find(token), std::string::npos) << name;
      }
    }
  }
}

TEST_F(AuthHttpTest, HandlersSeeTheIdentity) {
  HttpReply r = Call("GET", "/t/either", MintHs256(TokenClaims::Admin("root", kNowS), testing::kTestHs256Secret));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"kind":"user","subject":"root","admin":true})");
  r = Call("GET", "/t/either", "svc-gateway-token");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body, R"({"kind":"service","subject":"gateway","admin":false})");
  r = Call("GET", "/t/public", "svc-gateway-token");
  EXPECT_EQ(r.body, R"({"kind":"anonymous","subject":"","admin":false})");
}

TEST_F(AuthHttpTest, ClockDecidesExpiry) {
  const std::string token = MintHs256(TokenClaims::User("alice", kNowS), testing::kTestHs256Secret);
  EXPECT_EQ(Call("GET", "/t/user", token).status, 200);
  clock_.Advance(int64_t{2} * 3600 * 1000000);
  HttpReply r = Call("GET", "/t/user", token);
  EXPECT_EQ(r.status, 401);
  EXPECT_NE(r.Header("WWW-Authenticate").find("invalid_token"), std::string::npos);
  EXPECT_NE(r.body.find("expired"), std::string::npos) << r.body;
}

}  // namespace
}  // namespace ledger::http
