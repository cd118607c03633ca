#include "tools/token.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <tuple>

#include <rapidjson/document.h>

#include "http/base64.h"
#include "http/jwt.h"
#include "tests/support/test_ledger.h"
#include "tests/tools/tools_test_util.h"

namespace ledger::tools {
namespace {

using testing::RunLedgerctl;
using testing::TempDir;

constexpr char kSecret[] = "0123456789abcdef0123456789abcdef-dev";

std::vector<std::string> Split(const std::string& token) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t dot; (dot = token.find('.', start)) != std::string::npos; start = dot + 1) {
    parts.push_back(token.substr(start, dot - start));
  }
  parts.push_back(token.substr(start));
  return parts;
}

// Checks the HS256 signature with OpenSSL directly, independent of our signer.
bool SignatureVerifies(const std::string& token, const std::string& secret) {
  std::vector<std::string> parts = Split(token);
  if (parts.size() != 3) return false;
  std::string signing_input = parts[0] + "." + parts[1];
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size(), mac,
       &mac_len);
  std::string signature;
  if (!http::Base64UrlDecode(parts[2], &signature)) return false;
  return signature == std::string(reinterpret_cast<const char*>(mac), mac_len);
}

rapidjson::Document Payload(const std::string& token) {
  std::string json;
  EXPECT_TRUE(http::Base64UrlDecode(Split(token).at(1), &json));
  rapidjson::Document doc;
  doc.Parse(json.c_str());
  EXPECT_FALSE(doc.HasParseError()) << json;
  return doc;
}

TEST(TokenTest, MintsAnHs256TokenWithTheClaims) {
  TokenOptions options;
  options.subject = "alice";
  options.email = "alice@example.com";
  options.admin = true;
  options.ttl_seconds = 600;
  options.issued_at_s = 1'700'000'000;
  options.issuer = "https://sso.example.com/realms/x";
  options.audience = "ledgerd";
  std::string token;
  ASSERT_TRUE(MintHs256Token(options, kSecret, &token).ok());
  EXPECT_TRUE(SignatureVerifies(token, kSecret));
  EXPECT_FALSE(SignatureVerifies(token, std::string(kSecret) + "x"));

  rapidjson::Document header;
  std::string header_json;
  ASSERT_TRUE(http::Base64UrlDecode(Split(token).at(0), &header_json));
  header.Parse(header_json.c_str());
  EXPECT_STREQ(header["alg"].GetString(), "HS256");

  rapidjson::Document claims = Payload(token);
  EXPECT_STREQ(claims["sub"].GetString(), "alice");
  EXPECT_STREQ(claims["email"].GetString(), "alice@example.com");
  EXPECT_EQ(claims["iat"].GetInt64(), 1'700'000'000);
  EXPECT_EQ(claims["exp"].GetInt64(), 1'700'000'600);
  EXPECT_STREQ(claims["iss"].GetString(), "https://sso.example.com/realms/x");
  EXPECT_STREQ(claims["aud"].GetString(), "ledgerd");
  const auto& roles = claims["realm_access"]["roles"];
  ASSERT_EQ(roles.Size(), 1u);
  EXPECT_STREQ(roles[0].GetString(), "admin");
}

TEST(TokenTest, DaemonVerifierAcceptsIt) {
  TokenOptions options;
  options.subject = "bob";
  options.email = "bob@example.com";
  options.issued_at_s = 1'700'000'000;
  std::string token;
  ASSERT_TRUE(MintHs256Token(options, kSecret, &token).ok());
  ManualClock clock(1'700'000'100'000'000);
  http::JwtOptions jwt;
  jwt.hs256_secret = kSecret;
  std::unique_ptr<http::JwtVerifier> verifier;
  ASSERT_TRUE(http::JwtVerifier::Create(jwt, &clock, &verifier).ok());
  http::JwtClaims claims;
  Status s = verifier->Verify(token, &claims);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(claims.subject, "bob");
  EXPECT_EQ(claims.email, "bob@example.com");
  EXPECT_FALSE(claims.admin);
}

TEST(TokenTest, RejectsBadInput) {
  TokenOptions options;
  std::string token;
  EXPECT_EQ(MintHs256Token(options, kSecret, &token).code(), Code::kInvalidArgument);
  // A sub ledgerd would refuse on every route: not a user id.
  for (const std::string& sub : {std::string("a/b"), std::string(256, 'u'), std::string("a\n")}) {
    options.subject = sub;
    EXPECT_EQ(MintHs256Token(options, kSecret, &token).code(), Code::kInvalidArgument) << sub;
  }
  options.subject = "alice";
  EXPECT_EQ(MintHs256Token(options, "", &token).code(), Code::kInvalidArgument);
  // A secret file's newline: ledgerd exits 78 on it, so a token minted with it hides that. Its
  // rules, and its exit code: bad_config.
  EXPECT_EQ(MintHs256Token(options, std::string(kSecret) + "\n", &token).problem(), "bad_config");
  EXPECT_EQ(MintHs256Token(options, " " + std::string(kSecret), &token).problem(), "bad_config");
  EXPECT_EQ(MintHs256Token(options, "short", &token).problem(), "bad_config");
  options.ttl_seconds = 0;
  EXPECT_EQ(MintHs256Token(options, kSecret, &token).code(), Code::kInvalidArgument);
}

TEST(TokenCliTest, UsesTheDevSecretFile) {
  TempDir dir;
  {
    std::ofstream secret(dir.path() + "/jwt-dev.secret");
    secret << kSecret << "\n";  // ledgerd writes the secret as one line
  }
  ASSERT_EQ(::chmod((dir.path() + "/jwt-dev.secret").c_str(), 0600), 0);  // as ledgerd makes it
  testing::ProcessResult r = RunLedgerctl("token --data-dir " + dir.path() +
                                          " --sub alice --email alice@example.com --admin");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  ASSERT_FALSE(r.out.empty());
  ASSERT_EQ(r.out.back(), '\n');
  std::string token = r.out.substr(0, r.out.size() - 1);
  EXPECT_TRUE(SignatureVerifies(token, kSecret)) << token;
  rapidjson::Document claims = Payload(token);
  EXPECT_STREQ(claims["sub"].GetString(), "alice");
  EXPECT_EQ(claims["exp"].GetInt64() - claims["iat"].GetInt64(), 3600);

  http::JwtOptions jwt;
  jwt.hs256_secret = kSecret;
  std::unique_ptr<http::JwtVerifier> verifier;
  ASSERT_TRUE(http::JwtVerifier::Create(jwt, nullptr, &verifier).ok());
  http::JwtClaims verified;
  ASSERT_TRUE(verifier->Verify(token, &verified).ok());
  EXPECT_TRUE(verified.admin);

  // LEDGER_JWT_HS256_SECRET wins over the file; no file and no secret is an error naming the
  // file.
  const std::string other = "other-secret-0123456789abcdefghij";  // 32 bytes
  r = testing::RunLedgerctlIn(dir.path(), "LEDGER_JWT_HS256_SECRET=" + other,
                              "token --data-dir " + dir.path() + " --sub bob");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_TRUE(SignatureVerifies(r.out.substr(0, r.out.size() - 1), other));
  // ... and says so on stderr when the file is there (a variable left exported for another
  // instance signs tokens a dev-mode ledgerd on this directory answers 401); never the secret.
  r = testing::RunLedgerctlIn(dir.path(), "LEDGER_JWT_HS256_SECRET=" + other,
                              "token --data-dir " + dir.path() + " --sub bob", true);
  EXPECT_NE(r.out.find("signed with LEDGER_JWT_HS256_SECRET from the environment, not " +
                       dir.path() + "/jwt-dev.secret"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find(other), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(kSecret), std::string::npos) << r.out;
  // Only once it has signed: a secret ledgerd refuses (shorter than 32 bytes) signs nothing, and
  // stderr said "signed with ..." before the refusal.
  r = testing::RunLedgerctlIn(dir.path(), "LEDGER_JWT_HS256_SECRET=short-secret",
                              "token --data-dir " + dir.path() + " --sub bob", true);
  EXPECT_EQ(r.exit_code, 78) << r.out;
  EXPECT_EQ(r.out.find("signed with"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ledgerctl token: "), std::string::npos) << r.out;
  TempDir no_file;
  r = testing::RunLedgerctlIn(no_file.path(), "LEDGER_JWT_HS256_SECRET=" + other,
                              "token --data-dir " + no_file.path() + " --sub bob", true);
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(r.out.find("from the environment"), std::string::npos) << r.out;  // no file: no note
  // A lifetime past a year (or one overflowing exp) is a usage error.
  EXPECT_EQ(RunLedgerctl("token --data-dir " + dir.path() + " --sub bob --ttl 9223372036854775807")
                .exit_code,
            64);
  EXPECT_EQ(RunLedgerctl("token --data-dir " + dir.Sub("none") + " --sub bob").exit_code, 74);
  EXPECT_EQ(RunLedgerctl("token --data-dir " + dir.path()).exit_code, 64);  // --sub missing
}

// Whoever can read the dev secret can mint admin tokens: ledgerd refuses a file group or others
// can read (exit 78), and so does ledgerctl token, which minted from a 0644 one. A short one too.
TEST(TokenCliTest, RefusesADevSecretFileLedgerdRefuses) {
  TempDir dir;
  const std::string path = dir.path() + "/jwt-dev.secret";
  {
    std::ofstream secret(path);
    secret << kSecret << "\n";
  }
  const std::string args = "token --data-dir " + dir.path() + " --sub alice";
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    testing::ProcessResult r = RunLedgerctl(args, true);
    EXPECT_EQ(r.exit_code, 78) << std::oct << mode << ": " << r.out;
    EXPECT_NE(r.out.find("readable by group or others"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(kSecret), std::string::npos) << r.out;  // no token, no secret
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_EQ(RunLedgerctl(args).exit_code, 0);
  {
    std::ofstream secret(path, std::ios::trunc);
    secret << "short\n";
  }
  EXPECT_EQ(RunLedgerctl(args).exit_code, 78);
}

// The signing key on argv is visible to every user of the machine (ps, /proc/<pid>/cmdline) and
// stays in shell history; ledgerctl refuses the Stripe key there for that reason. --secret is
// gone: the variable or the dev secret file only.
TEST(TokenCliTest, TheSecretIsNeverAFlag) {
  TempDir dir;
  const std::string secret = "flag-secret-0123456789abcdefghijk";  // 32 bytes
  testing::ProcessResult r =
      RunLedgerctl("token --data-dir " + dir.path() + " --sub bob --secret " + secret);
  EXPECT_EQ(r.exit_code, 64) << r.out;
  EXPECT_TRUE(r.out.empty()) << r.out;  // no token
  EXPECT_EQ(RunLedgerctl("token --help").out.find("--secret"), std::string::npos);
}

// An empty LEDGER_DATA_DIR or LEDGER_JWT_HS256_SECRET (a variable that failed to expand) was
// taken for an unset one: the token was signed with ./data's dev secret. ledgerd refuses both
// (78); so does ledgerctl token, minting nothing, and an empty --data-dir too.
TEST(TokenCliTest, AnEmptySecretOrDataDirVariableIsAConfigurationError) {
  TempDir cwd;
  ASSERT_TRUE(std::filesystem::create_directory(cwd.Sub("data")));
  const std::string path = cwd.Sub("data") + "/jwt-dev.secret";
  {
    std::ofstream secret(path);
    secret << kSecret << "\n";
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  for (const auto& [env, args] : std::vector<std::pair<std::string, std::string>>{
           {"LEDGER_DATA_DIR=", "token --sub alice"},
           {"LEDGER_JWT_HS256_SECRET=", "token --sub alice"},
           {"LEDGER_JWT_HS256_SECRET= LEDGER_DATA_DIR=data", "token --sub alice"},
           {"", "token --data-dir '' --sub alice"}}) {
    SCOPED_TRACE(env + " " + args);
    testing::ProcessResult r = testing::RunLedgerctlIn(cwd.path(), env, args);
    EXPECT_EQ(r.exit_code, 78) << r.out;
    EXPECT_TRUE(r.out.empty()) << r.out;  // no token
  }
  // The default, and a variable that is set, are taken.
  testing::ProcessResult r = testing::RunLedgerctlIn(cwd.path(), "", "token --sub alice");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_TRUE(SignatureVerifies(r.out.substr(0, r.out.size() - 1), kSecret));
  EXPECT_EQ(testing::RunLedgerctlIn(cwd.path(), "LEDGER_DATA_DIR=data", "token --sub a").exit_code,
            0);
}

// ledgerd exits 78 on LEDGER_JWT_ISSUER, LEDGER_JWT_AUDIENCE or LEDGER_ADMIN_ROLE set but empty,
// and on a secret, issuer, audience or admin role under its rules (daemon::ValidateJwtSettings).
// token took the empty variables for unset ones (a token without iss / aud, or with the role
// "admin"), an empty --iss / --aud as no claim, and a short secret as a usage error (64). It
// mints nothing with any of them now, 78 as ledgerd, naming the setting and never its value.
TEST(TokenCliTest, SettingsLedgerdRefusesAreConfigurationErrors) {
  TempDir dir;
  const std::string path = dir.path() + "/jwt-dev.secret";
  {
    std::ofstream secret(path);
    secret << kSecret << "\n";
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  const std::string token = "token --data-dir " + dir.path() + " --sub alice --admin";
  const std::string secret = std::string("LEDGER_JWT_HS256_SECRET='") + kSecret;
  for (const auto& [env, args, setting] : std::vector<std::tuple<std::string, std::string,
                                                                 std::string>>{
           {"LEDGER_JWT_ISSUER=", token, "LEDGER_JWT_ISSUER"},
           {"LEDGER_JWT_AUDIENCE=", token, "LEDGER_JWT_AUDIENCE"},
           {"LEDGER_ADMIN_ROLE=", token, "LEDGER_ADMIN_ROLE"},
           {"", token + " --iss ''", "LEDGER_JWT_ISSUER"},
           {"", token + " --aud ''", "LEDGER_JWT_AUDIENCE"},
           {"", token + " --admin-role ''", "LEDGER_ADMIN_ROLE"},
           {"LEDGER_JWT_HS256_SECRET=short-secret", token, "LEDGER_JWT_HS256_SECRET"},
           {secret + "\n'", token, "LEDGER_JWT_HS256_SECRET"},
           {secret + " '", token, "LEDGER_JWT_HS256_SECRET"},
           {"LEDGER_JWT_ISSUER='https://issuer.example\n'", token, "LEDGER_JWT_ISSUER"},
           {"", token + " --aud 'ledger-api '", "LEDGER_JWT_AUDIENCE"},
           {"LEDGER_ADMIN_ROLE=' admin'", token, "LEDGER_ADMIN_ROLE"}}) {
    SCOPED_TRACE(env + " " + args);
    testing::ProcessResult r = testing::RunLedgerctlIn(dir.path(), env, args);
    EXPECT_EQ(r.exit_code, 78) << r.out;
    EXPECT_TRUE(r.out.empty()) << r.out;  // no token
    r = testing::RunLedgerctlIn(dir.path(), env, args, /*keep_stderr=*/true);
    EXPECT_NE(r.out.find(setting), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find(kSecret), std::string::npos) << r.out;
  }
  // Values ledgerd takes are taken.
  testing::ProcessResult r = testing::RunLedgerctlIn(
      dir.path(), "LEDGER_JWT_ISSUER=https://issuer.example LEDGER_ADMIN_ROLE='billing admin'",
      token + " --aud ledger-api");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  rapidjson::Document claims = Payload(r.out.substr(0, r.out.size() - 1));
  EXPECT_STREQ(claims["iss"].GetString(), "https://issuer.example");
  EXPECT_STREQ(claims["aud"].GetString(), "ledger-api");
  EXPECT_STREQ(claims["realm_access"]["roles"][0].GetString(), "billing admin");
}

}  // namespace
}  // namespace ledger::tools
