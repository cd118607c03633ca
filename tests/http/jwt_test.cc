#include "http/jwt.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "http/base64.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using testing::MakeJwks;
using testing::MintHs256;
using testing::SignWithHmac;
using testing::TestSigningKey;
using testing::TokenClaims;
using testing::UnsignedToken;

constexpr int64_t kNowS = 1'800'000'000;

// Keys are slow to generate (RSA); share them across the suite.
class JwtTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    rsa_ = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "rsa-1").release();
    ec_ = TestSigningKey::Generate(TestSigningKey::Type::kEcP256, "ec-1").release();
    other_rsa_ = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "rsa-1").release();
  }
  static void TearDownTestSuite() {
    delete rsa_;
    delete ec_;
    delete other_rsa_;
  }

  std::unique_ptr<JwtVerifier> Make(JwtOptions options) {
    std::unique_ptr<JwtVerifier> verifier;
    Status s = JwtVerifier::Create(options, &clock_, &verifier);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return verifier;
  }
  JwtOptions HsOnly() {
    JwtOptions o;
    o.hs256_secret = testing::kTestHs256Secret;
    return o;
  }
  JwtOptions JwksOnly() {
    JwtOptions o;
    o.jwks_json = MakeJwks({rsa_, ec_});
    return o;
  }
  JwtOptions Both() {
    JwtOptions o = JwksOnly();
    o.hs256_secret = testing::kTestHs256Secret;
    return o;
  }
  static void ExpectRejected(const JwtVerifier& verifier, const std::string& token, const std::string& why) {
    JwtClaims claims;
    Status s = verifier.Verify(token, &claims);
    EXPECT_FALSE(s.ok()) << "accepted: " << why;
    EXPECT_EQ(s.code(), Code::kUnauthenticated) << why;
    EXPECT_EQ(s.problem(), "invalid_token") << why;
    if (token.size() > 16) {
      EXPECT_EQ(s.message().find(token.substr(token.size() - 16)), std::string::npos) << "the token is echoed";
    }
  }

  ManualClock clock_{kNowS * 1000000};
  static TestSigningKey* rsa_;
  static TestSigningKey* ec_;
  static TestSigningKey* other_rsa_;
};
TestSigningKey* JwtTest::rsa_ = nullptr;
TestSigningKey* JwtTest::ec_ = nullptr;
TestSigningKey* JwtTest::other_rsa_ = nullptr;

TEST_F(JwtTest, ValidHs256) {
  auto verifier = Make(HsOnly());
  JwtClaims claims;
  Status s = verifier->Verify(MintHs256(TokenClaims::User("alice", kNowS), testing::kTestHs256Secret), &claims);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(claims.algorithm, "HS256");
  EXPECT_EQ(claims.subject, "alice");
  EXPECT_EQ(claims.email, "alice@example.com");
  EXPECT_FALSE(claims.admin);
}

// An identity provider that lets a user set an address without proving it says so with
// `email_verified: false` (OIDC): such an address is not the user's email here -- it becomes the
// email admins find a user by once a checkout completes, and it might be another user's.
TEST_F(JwtTest, AnUnverifiedEmailIsNotTaken) {
  auto verifier = Make(HsOnly());
  for (const auto& [verified, kept] : std::vector<std::pair<std::string, bool>>{
           {R"("email_verified":false)", false},
           {R"("email_verified":true)", true},
           {"", true},
           // Only `true` -- or the string "true" Amazon Cognito sends -- vouches for the address:
           // a string "false", 0 or null was taken as verified. The token stays valid.
           {R"("email_verified":"true")", true},
           {R"("email_verified":"false")", false},
           {R"("email_verified":0)", false},
           {R"("email_verified":null)", false},
           {R"("email_verified":"TRUE")", false},
           {R"("email_verified":1)", false},
           {R"("email_verified":{})", false}}) {
    SCOPED_TRACE(verified);
    TokenClaims c = TokenClaims::User("alice", kNowS);
    c.extra_members = verified;
    JwtClaims claims;
    Status s = verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(claims.subject, "alice");
    EXPECT_EQ(claims.email, kept ? "alice@example.com" : "");
  }
}

TEST_F(JwtTest, SignHs256MatchesTheVerifier) {
  auto verifier = Make(HsOnly());
  JwtClaims claims;
  std::string token = SignHs256(TokenClaims::Admin("root", kNowS).ToJson(), testing::kTestHs256Secret, "dev");
  Status s = verifier->Verify(token, &claims);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_TRUE(claims.admin);
  EXPECT_EQ(claims.key_id, "dev");
}

TEST_F(JwtTest, ValidRs256AndEs256) {
  auto verifier = Make(JwksOnly());
  JwtClaims claims;
  Status s = verifier->Verify(rsa_->Mint(TokenClaims::Admin("root", kNowS)), &claims);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(claims.algorithm, "RS256");
  EXPECT_EQ(claims.key_id, "rsa-1");
  EXPECT_TRUE(claims.admin);
  s = verifier->Verify(ec_->Mint(TokenClaims::User("bob", kNowS)), &claims);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(claims.algorithm, "ES256");
  EXPECT_EQ(claims.subject, "bob");
  EXPECT_FALSE(claims.admin);
  EXPECT_EQ(verifier->key_ids(), (std::vector<std::string>{"rsa-1", "ec-1"}));
}

TEST_F(JwtTest, RolesFromRealmAccessOrTopLevelAndConfigurableAdminRole) {
  JwtOptions options = HsOnly();
  options.admin_role = "billing-admin";
  auto verifier = Make(options);
  JwtClaims claims;
  TokenClaims c = TokenClaims::User("a", kNowS);
  c.roles = {"billing-admin"};
  ASSERT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  EXPECT_TRUE(claims.admin);
  c.roles.clear();
  c.realm_roles = {"offline_access", "billing-admin"};
  ASSERT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  EXPECT_TRUE(claims.admin);
  c.realm_roles = {"admin"};  // the default name no longer counts
  ASSERT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  EXPECT_FALSE(claims.admin);
}

TEST_F(JwtTest, RejectsAlgNone) {
  auto verifier = Make(Both());
  std::string payload = TokenClaims::Admin("root", kNowS).ToJson();
  ExpectRejected(*verifier, UnsignedToken(R"({"alg":"none","typ":"JWT"})", payload), "alg none, empty sig");
  ExpectRejected(*verifier, UnsignedToken(R"({"alg":"none"})", payload) + "c2ln", "alg none with a sig");
  ExpectRejected(*verifier, UnsignedToken(R"({"alg":"HS256"})", payload), "HS256 without a signature");
  ExpectRejected(*verifier, UnsignedToken(R"({"alg":"RS256","kid":"rsa-1"})", payload), "RS256 without sig");
}

TEST_F(JwtTest, RejectsAlgorithmConfusionWithThePublicKey) {
  auto verifier = Make(JwksOnly());
  std::string payload = TokenClaims::Admin("root", kNowS).ToJson();
  const std::string header = R"({"alg":"HS256","typ":"JWT","kid":"rsa-1"})";
  ExpectRejected(*verifier, SignWithHmac(header, payload, rsa_->PublicKeyPem()), "HMAC keyed with the PEM");
  ExpectRejected(*verifier, SignWithHmac(header, payload, rsa_->Jwk()), "HMAC keyed with the JWK");
  ExpectRejected(*verifier, SignWithHmac(header, payload, MakeJwks({rsa_, ec_})), "HMAC keyed with the JWKS");
  // Even with an HS256 secret configured, the public key is never an HMAC key.
  auto both = Make(Both());
  ExpectRejected(*both, SignWithHmac(header, payload, rsa_->PublicKeyPem()), "HMAC keyed with the PEM (both)");
}

TEST_F(JwtTest, RejectsAlgorithmsNotConfigured) {
  auto hs_only = Make(HsOnly());
  ExpectRejected(*hs_only, rsa_->Mint(TokenClaims::User("a", kNowS)), "RS256 without a JWKS");
  auto jwks_only = Make(JwksOnly());
  ExpectRejected(*jwks_only, MintHs256(TokenClaims::User("a", kNowS), testing::kTestHs256Secret),
                 "HS256 without a secret");
  std::string payload = TokenClaims::User("a", kNowS).ToJson();
  ExpectRejected(*jwks_only, rsa_->SignWithHeader(R"({"alg":"RS512","kid":"rsa-1"})", payload), "RS512");
  ExpectRejected(*jwks_only, rsa_->SignWithHeader(R"({"alg":"PS256","kid":"rsa-1"})", payload), "PS256");
  // An RSA key used under ES256 and an EC key under RS256.
  ExpectRejected(*jwks_only, rsa_->SignWithHeader(R"({"alg":"ES256","kid":"rsa-1"})", payload), "RSA as ES256");
  ExpectRejected(*jwks_only, ec_->SignWithHeader(R"({"alg":"RS256","kid":"ec-1"})", payload), "EC as RS256");
}

TEST_F(JwtTest, RejectsWrongSignatures) {
  auto verifier = Make(Both());
  TokenClaims c = TokenClaims::User("a", kNowS);
  ExpectRejected(*verifier, MintHs256(c, "another-secret-0123456789abcdefghij"), "other HS256 secret");
  ExpectRejected(*verifier, other_rsa_->Mint(c), "same kid, other RSA key");
  // Payload swapped after signing.
  std::string good = rsa_->Mint(c);
  std::string forged_payload = Base64UrlEncode(TokenClaims::Admin("root", kNowS).ToJson());
  size_t first = good.find('.');
  size_t second = good.find('.', first + 1);
  std::string tampered = good.substr(0, first + 1) + forged_payload + good.substr(second);
  ExpectRejected(*verifier, tampered, "tampered payload");
  // ES256 signature in DER form (what OpenSSL emits) instead of raw r||s.
  std::string es = ec_->Mint(c);
  ExpectRejected(*verifier, es.substr(0, es.rfind('.') + 1) + Base64UrlEncode(std::string(70, 'x')),
                 "ES256 wrong length");
}

TEST_F(JwtTest, ExpiryAndNotBeforeWithLeeway) {
  auto verifier = Make(HsOnly());  // leeway 30 s
  JwtClaims claims;
  TokenClaims c = TokenClaims::User("a", kNowS);
  c.expires_at_s = kNowS - 29;  // inside the leeway
  EXPECT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  c.expires_at_s = kNowS - 31;
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "expired");
  c.expires_at_s.reset();
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "no exp");
  c.expires_at_s = kNowS + 3600;
  c.not_before_s = kNowS + 29;
  EXPECT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  c.not_before_s = kNowS + 31;
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "not yet valid");
  // The clock decides: the same token becomes valid, then expires.
  clock_.Advance(int64_t{60} * 1000000);
  EXPECT_TRUE(verifier->Verify(MintHs256(c, testing::kTestHs256Secret), &claims).ok());
  clock_.Advance(int64_t{3600} * 1000000);
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "expired later");
  c.expires_at_s.reset();
  c.not_before_s.reset();
  c.extra_members = R"("exp":"never")";
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "exp not a number");
}

TEST_F(JwtTest, LeewayIsConfigurable) {
  JwtOptions options = HsOnly();
  options.leeway_seconds = 0;
  auto verifier = Make(options);
  TokenClaims c = TokenClaims::User("a", kNowS);
  c.expires_at_s = kNowS;  // exp must be strictly in the future
  ExpectRejected(*verifier, MintHs256(c, testing::kTestHs256Secret), "exp == now, no leeway");
}

TEST_F(JwtTest, IssuerAndAudienceWhenConfigured) {
  JwtOptions options = JwksOnly();
  options.issuer = "https://sso.example.com/realms/uc";
  options.audience = "ledgerd";
  auto verifier = Make(options);
  JwtClaims claims;
  TokenClaims c = TokenClaims::User("a", kNowS);
  c.issuer = options.issuer;
  c.audience = {"ledgerd"};
  EXPECT_TRUE(verifier->Verify(rsa_->Mint(c), &claims).ok());
  c.audience = {"account", "ledgerd"};  // array form
  EXPECT_TRUE(verifier->Verify(ec_->Mint(c), &claims).ok());
  EXPECT_EQ(claims.issuer, options.issuer);
  c.audience = {"account"};
  ExpectRejected(*verifier, rsa_->Mint(c), "wrong aud");
  c.audience = {"account", "other"};
  ExpectRejected(*verifier, rsa_->Mint(c), "wrong aud array");
  c.audience.clear();
  ExpectRejected(*verifier, rsa_->Mint(c), "no aud");
  // An audience that only begins with ours, up to a NUL (a C-string comparison would take it).
  c.extra_members = R"("aud":"ledgerd\u0000.other")";
  ExpectRejected(*verifier, rsa_->Mint(c), "aud with a NUL");
  c.extra_members = R"("aud":["account","ledgerd\u0000"])";
  ExpectRejected(*verifier, rsa_->Mint(c), "aud array with a NUL");
  c.extra_members.clear();
  c.audience = {"ledgerd"};
  c.issuer = "https://evil.example.com/realms/uc";
  ExpectRejected(*verifier, rsa_->Mint(c), "wrong iss");
  c.issuer.clear();
  ExpectRejected(*verifier, rsa_->Mint(c), "no iss");
}

TEST_F(JwtTest, UnknownOrMissingKid) {
  auto verifier = Make(JwksOnly());
  std::string payload = TokenClaims::User("a", kNowS).ToJson();
  ExpectRejected(*verifier, rsa_->SignWithHeader(R"({"alg":"RS256","kid":"rsa-2"})", payload), "unknown kid");
  ExpectRejected(*verifier, rsa_->SignWithHeader(R"({"alg":"RS256"})", payload), "no kid");
  ExpectRejected(*verifier, rsa_->SignWithHeader(R"({"alg":"RS256","kid":"rsa-1","crit":["b64"]})", payload),
                 "crit");
}

TEST_F(JwtTest, Malformed) {
  auto verifier = Make(Both());
  std::string good = MintHs256(TokenClaims::User("a", kNowS), testing::kTestHs256Secret);
  for (const std::string& token : {std::string(""), std::string("abc"), std::string("a.b"), std::string("a.b.c.d"),
                                   good + ".", "!" + good, good.substr(0, good.size() - 1) + "*",
                                   std::string(20000, 'a')}) {
    ExpectRejected(*verifier, token, "malformed: " + token.substr(0, 40));
  }
  ExpectRejected(*verifier, SignWithHmac("[]", "{}", testing::kTestHs256Secret), "header not an object");
  ExpectRejected(*verifier, SignWithHmac(R"({"alg":"HS256"})", "not json", testing::kTestHs256Secret),
                 "payload not JSON");
  TokenClaims no_sub = TokenClaims::User("", kNowS);
  ExpectRejected(*verifier, MintHs256(no_sub, testing::kTestHs256Secret), "no sub");
  // A second "sub" (a last-wins reader elsewhere would see mallory), a NUL inside one.
  TokenClaims twice = TokenClaims::User("alice", kNowS);
  twice.extra_members = R"("sub":"mallory")";
  ExpectRejected(*verifier, MintHs256(twice, testing::kTestHs256Secret), "duplicate sub");
  TokenClaims nul = TokenClaims::User("alice", kNowS);
  nul.subject.clear();
  nul.extra_members = R"("sub":"alice\u0000mallory")";
  ExpectRejected(*verifier, MintHs256(nul, testing::kTestHs256Secret), "NUL in sub");
  // A sub that is not a user id (every route takes it as one): '/', over 255 bytes, a control
  // character. 255 bytes is one.
  for (const std::string& sub :
       {std::string("a/b"), std::string(256, 'u'), std::string("eve\x01")}) {
    JwtClaims claims;
    Status s = verifier->Verify(MintHs256(TokenClaims::User(sub, kNowS), testing::kTestHs256Secret),
                                &claims);
    EXPECT_EQ(s.problem(), "invalid_token") << sub.size();
    EXPECT_NE(s.message().find("not a user id"), std::string::npos) << s.message();
    EXPECT_EQ(s.message().find(sub), std::string::npos) << "the sub is echoed: " << s.message();
  }
  JwtClaims longest;
  EXPECT_TRUE(verifier->Verify(MintHs256(TokenClaims::User(std::string(255, 'u'), kNowS),
                                         testing::kTestHs256Secret),
                               &longest)
                  .ok());
  ExpectRejected(*verifier,
                 SignWithHmac(R"({"alg":"HS256","alg":"none"})", TokenClaims::User("a", kNowS).ToJson(),
                              testing::kTestHs256Secret),
                 "duplicate alg");
  // base64url has no padding in a JWS (RFC 7515 §2): one token, one spelling.
  ExpectRejected(*verifier, good + "=", "padded HS256");
  ExpectRejected(*verifier, rsa_->Mint(TokenClaims::User("a", kNowS)) + "==", "padded RS256");
  ExpectRejected(*verifier, ec_->Mint(TokenClaims::User("a", kNowS)) + "==", "padded ES256");
  const std::string rs = rsa_->Mint(TokenClaims::User("a", kNowS));
  const size_t dot = rs.find('.');
  ExpectRejected(*verifier, rs.substr(0, dot) + "=" + rs.substr(dot), "padded header");
}

TEST_F(JwtTest, JwksParsing) {
  std::unique_ptr<JwtVerifier> v;
  JwtOptions o;
  o.jwks_json = "not json";
  EXPECT_FALSE(JwtVerifier::Create(o, &clock_, &v).ok());
  o.jwks_json = R"({"keys":[]})";
  EXPECT_FALSE(JwtVerifier::Create(o, &clock_, &v).ok()) << "no usable key";
  o.jwks_json = R"({"keys":[{"kty":"RSA","kid":"x","use":"sig","n":"!!","e":"AQAB"}]})";
  EXPECT_FALSE(JwtVerifier::Create(o, &clock_, &v).ok()) << "bad base64";
  o.jwks_json = MakeJwks({rsa_, rsa_});
  EXPECT_FALSE(JwtVerifier::Create(o, &clock_, &v).ok()) << "duplicate kid";
  // Keycloak's set: an "enc" RSA-OAEP key and an HS256 "oct" key next to the signing key are
  // skipped, not errors.
  o.jwks_json = std::string(R"({"keys":[{"kid":"enc-1","kty":"RSA","alg":"RSA-OAEP","use":"enc","n":"AQAB","e":"AQAB"},)") +
                R"({"kid":"oct-1","kty":"oct","k":"c2VjcmV0"},)" + rsa_->Jwk() + "]}";
  Status s = JwtVerifier::Create(o, &clock_, &v);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(v->key_ids(), std::vector<std::string>{"rsa-1"});
  // A point that is not on the curve.
  o.jwks_json = R"({"keys":[{"kty":"EC","kid":"bad","crv":"P-256","x":")" + Base64UrlEncode(std::string(32, '\1')) +
                R"(","y":")" + Base64UrlEncode(std::string(32, '\2')) + R"("}]})";
  EXPECT_FALSE(JwtVerifier::Create(o, &clock_, &v).ok()) << "point off the curve";
  // Short HS256 secrets are refused (RFC 7518 §3.2).
  JwtOptions short_secret;
  short_secret.hs256_secret = "secret";
  EXPECT_FALSE(JwtVerifier::Create(short_secret, &clock_, &v).ok());
}

TEST_F(JwtTest, VerifyRs256WithPem) {
  std::string payload;
  std::string token = rsa_->Sign(R"({"iss":"https://lago.example.com","data":"{}"})");
  Status s = VerifyRs256WithPem(token, rsa_->PublicKeyPem(), &payload);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(payload, R"({"iss":"https://lago.example.com","data":"{}"})");
  EXPECT_FALSE(VerifyRs256WithPem(token, other_rsa_->PublicKeyPem(), &payload).ok());
  EXPECT_FALSE(VerifyRs256WithPem(SignWithHmac(R"({"alg":"HS256"})", "{}", rsa_->PublicKeyPem()),
                                  rsa_->PublicKeyPem(), &payload).ok());
  EXPECT_FALSE(VerifyRs256WithPem(token, ec_->PublicKeyPem(), &payload).ok());
}

// Seeded random edits of valid HS256, RS256 and ES256 tokens — a character replaced, dropped or
// added anywhere, segments swapped, cut short or extended — are all refused (base64url decoding is
// strict and padding is refused, so no edit can decode to the same bytes), and a refusal never
// echoes the token.
TEST_F(JwtTest, RandomlyEditedTokensAreRefused) {
  auto verifier = Make(Both());
  static constexpr char kChars[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
  std::mt19937_64 rng(20261205);
  auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
  const std::vector<std::string> tokens = {
      MintHs256(TokenClaims::User("alice", kNowS), testing::kTestHs256Secret),
      rsa_->Mint(TokenClaims::Admin("root", kNowS)), ec_->Mint(TokenClaims::User("bob", kNowS))};
  int refused = 0;
  for (const std::string& token : tokens) {
    JwtClaims claims;
    ASSERT_TRUE(verifier->Verify(token, &claims).ok());
    const size_t dot1 = token.find('.');
    const size_t dot2 = token.find('.', dot1 + 1);
    for (int i = 0; i < 300; ++i) {
      std::string edited = token;
      switch (pick(6)) {
        case 0: edited[pick(edited.size())] = kChars[pick(sizeof(kChars) - 1)]; break;
        case 1: edited.erase(pick(edited.size()), 1); break;
        case 2: edited.insert(pick(edited.size() + 1), 1, kChars[pick(sizeof(kChars) - 1)]); break;
        case 3:  // payload and header swapped, the signature kept
          edited = token.substr(dot1 + 1, dot2 - dot1 - 1) + "." + token.substr(0, dot1) +
                   token.substr(dot2);
          break;
        case 4: edited.resize(pick(edited.size())); break;
        default: edited += pick(2) == 0 ? "." : ".e30"; break;
      }
      if (edited == token) continue;
      Status s = verifier->Verify(edited, &claims);
      ASSERT_FALSE(s.ok()) << "accepted an edited token: " << edited;
      EXPECT_EQ(s.code(), Code::kUnauthenticated) << edited;
      if (edited.size() > 24) {
        EXPECT_EQ(s.message().find(edited.substr(edited.size() - 24)), std::string::npos)
            << "the token is echoed: " << s.message();
      }
      ++refused;
    }
  }
  EXPECT_GT(refused, 800);
}

}  // namespace
}  // namespace ledger::http
