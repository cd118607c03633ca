// JWT (RFC 7519) bearer-token verification: HS256 with a shared secret, RS256 and ES256 with
// public keys from a JWKS file (Keycloak's `/protocol/openid-connect/certs` saved to disk).
//
// What is accepted, exactly:
//   - Compact JWS `header.payload.signature`, base64url segments, a JSON object header and payload.
//   - `alg` HS256 only when an HS256 secret is configured; the key is always that secret.
//     `alg` RS256 / ES256 only with a JWKS key whose `kid` equals the token's `kid` and whose type
//     fits (RSA for RS256, EC P-256 for ES256; the JWK's own `alg`, when present, must match).
//     Anything else (`none`, HS384, PS256, an HS256 token when only a JWKS is configured — the
//     classic algorithm-confusion attack — or an unknown `kid`) is rejected. A `crit` header is
//     rejected: we implement no extensions.
//   - ES256 signatures are the raw 64-byte r||s of RFC 7518 §3.4 (not DER).
//   - Claims: `exp` is required and must be in the future; `nbf`, when present, must be in the
//     past; both with `leeway_seconds` of tolerance. `iss` must equal the configured issuer and
//     `aud` (a string or an array of strings) must contain the configured audience, when those are
//     configured. `sub` is required and must be a user id (projections::IsValidUserId: 1 to 255
//     bytes of UTF-8 without '/' or control characters); a token with another is invalid.
//   - Roles: the union of `realm_access.roles` (Keycloak realm roles) and a top-level `roles`
//     array; the caller is an admin when `admin_role` is among them.
//
// Errors are Status kUnauthenticated with problem "invalid_token" and a message naming the reason
// (never the token itself).
//
// Thread safety: a JwtVerifier is immutable after Create(); Verify() may be called from any
// thread concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "events/clock.h"
#include "events/status.h"

namespace ledger::http {

struct JwtOptions {
  // HS256 shared secret (its UTF-8 bytes are the HMAC key). Empty: HS256 tokens are rejected.
  std::string hs256_secret;
  // Contents of a JWKS document (`{"keys":[...]}`). Empty: RS256/ES256 tokens are rejected.
  // Keys that are not RSA or EC P-256 signature keys (e.g. Keycloak's RSA-OAEP `enc` key) are
  // skipped; a JWKS with no usable key is a configuration error.
  std::string jwks_json;
  // When non-empty, `iss` must equal it.
  std::string issuer;
  // When non-empty, `aud` (string or array) must contain it.
  std::string audience;
  // The role that makes a caller an admin. Default "admin".
  std::string admin_role = "admin";
  // Clock skew tolerated for `exp` and `nbf`. Default 30 s.
  int64_t leeway_seconds = 30;
};

// The verified claims we use.
struct JwtClaims {
  std::string algorithm;  // "HS256", "RS256" or "ES256"
  std::string key_id;     // header `kid` (may be empty for HS256)
  std::string subject;    // `sub`
  std::string email;      // `email`, may be empty (also when `email_verified` is not `true`/"true")
  std::string issuer;     // `iss`, may be empty
  std::vector<std::string> roles;
  bool admin = false;
  int64_t expires_at_s = 0;  // `exp`, Unix seconds
};

class JwtVerifier {
 public:
  // Parses the JWKS (when given). `clock` must outlive the verifier; nullptr = SystemClock.
  // Returns InvalidArgument ("bad_jwt_config") for a malformed JWKS.
  static Status Create(const JwtOptions& options, const Clock* clock,
                       std::unique_ptr<JwtVerifier>* out);
  ~JwtVerifier();
  JwtVerifier(const JwtVerifier&) = delete;
  JwtVerifier& operator=(const JwtVerifier&) = delete;

  // True when at least one algorithm is configured (an HS256 secret or a JWKS key).
  bool enabled() const;
  // Key ids loaded from the JWKS, in file order (for the startup log).
  std::vector<std::string> key_ids() const;

  // Verifies `token` (the text after "Bearer "). OK fills `*claims`.
  Status Verify(std::string_view token, JwtClaims* claims) const;

 private:
  struct Key;
  JwtVerifier() = default;
  JwtOptions options_;
  const Clock* clock_ = nullptr;
  std::vector<std::unique_ptr<Key>> keys_;
};

// Signs `payload_json` as an HS256 JWT with header {"alg":"HS256","typ":"JWT"} (plus "kid" when
// non-empty). Used by `ledgerctl token` and tests.
std::string SignHs256(std::string_view payload_json, std::string_view secret,
                      std::string_view key_id = {});

// Verifies only the signature of an RS256 compact JWS against an RSA public key in PEM
// (SubjectPublicKeyInfo) form and returns its decoded payload. No claim checks: the caller
// checks what its protocol needs (Lago webhook jwt mode: `iss`, `data`).
Status VerifyRs256WithPem(std::string_view token, std::string_view public_key_pem,
                          std::string* payload_json);

}  // namespace ledger::http
