// Test tokens: mint HS256 / RS256 / ES256 JWTs and write JWKS files, for the http tests and the
// authorization matrix.
//
//   auto rsa = TestSigningKey::Generate(TestSigningKey::Type::kRsa, "rsa-1");
//   auto ec = TestSigningKey::Generate(TestSigningKey::Type::kEcP256, "ec-1");
//   WriteTextFile(dir + "/jwks.json", MakeJwks({rsa.get(), ec.get()}));
//   TokenClaims claims = TokenClaims::Admin("root", now_s);
//   std::string token = rsa->Mint(claims);              // RS256, kid "rsa-1"
//   std::string user = MintHs256(TokenClaims::User("alice", now_s), kTestHs256Secret);
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

typedef struct evp_pkey_st EVP_PKEY;

namespace ledger::testing {

// 32+ bytes, as JwtVerifier requires.
inline constexpr char kTestHs256Secret[] = "test-hs256-secret-0123456789abcdef";

struct TokenClaims {
  std::string subject;                   // `sub`; empty = omitted
  std::string email;                     // empty = omitted
  std::vector<std::string> realm_roles;  // `realm_access.roles` (Keycloak); empty = omitted
  std::vector<std::string> roles;        // top-level `roles`; empty = omitted
  std::string issuer;                    // empty = omitted
  std::vector<std::string> audience;     // none = omitted; one = a string; more = an array
  std::optional<int64_t> expires_at_s;   // `exp`
  std::optional<int64_t> not_before_s;   // `nbf`
  std::optional<int64_t> issued_at_s;    // `iat`
  std::string extra_members;             // raw JSON members appended, e.g. R"("azp":"web")"

  // A user valid for an hour from `now_s`, with email `<subject>@example.com`.
  static TokenClaims User(std::string subject, int64_t now_s);
  // The same with realm role "admin".
  static TokenClaims Admin(std::string subject, int64_t now_s);
  std::string ToJson() const;
};

std::string MintHs256(const TokenClaims& claims, std::string_view secret);

// A compact JWS with the given raw header and an HMAC-SHA256 signature keyed with `key` (for
// forgeries: e.g. `alg` HS256 keyed with an RSA public key).
std::string SignWithHmac(std::string_view header_json, std::string_view payload_json, std::string_view key);

// `header.payload.` with an empty signature, e.g. for {"alg":"none"}.
std::string UnsignedToken(std::string_view header_json, std::string_view payload_json);

class TestSigningKey {
 public:
  enum class Type { kRsa, kEcP256 };

  // RSA keys are `rsa_bits` long (the fuzz targets take 1024: cheaper to sign with per input).
  static std::unique_ptr<TestSigningKey> Generate(Type type, std::string key_id,
                                                  unsigned rsa_bits = 2048);
  ~TestSigningKey();
  TestSigningKey(const TestSigningKey&) = delete;
  TestSigningKey& operator=(const TestSigningKey&) = delete;

  const std::string& key_id() const { return key_id_; }
  Type type() const { return type_; }
  const char* algorithm() const { return type_ == Type::kRsa ? "RS256" : "ES256"; }

  // The public JWK as a JSON object (`kty`, `kid`, `use`:"sig", `alg`, n/e or crv/x/y).
  std::string Jwk() const;
  // The public key as SubjectPublicKeyInfo PEM.
  std::string PublicKeyPem() const;

  // RS256 or ES256 (raw r||s) compact JWS with header {"alg","typ":"JWT","kid"}.
  std::string Mint(const TokenClaims& claims) const { return Sign(claims.ToJson()); }
  std::string Sign(std::string_view payload_json) const;
  // Signs with an arbitrary header (the signature algorithm is still this key's).
  std::string SignWithHeader(std::string_view header_json, std::string_view payload_json) const;

 private:
  TestSigningKey() = default;
  Type type_ = Type::kRsa;
  std::string key_id_;
  EVP_PKEY* key_ = nullptr;
};

// {"keys":[<jwk>...]}
std::string MakeJwks(const std::vector<const TestSigningKey*>& keys);

// Writes `contents` to `path` (truncating). Aborts the test binary on failure.
void WriteTextFile(const std::string& path, std::string_view contents);

}  // namespace ledger::testing
