// Authentication and per-route policy enforcement.
//
// A caller presents `Authorization: Bearer <token>`. The token is checked against the configured
// service tokens first (constant-time, every configured token compared), then verified as a JWT
// (http/jwt.h). The result is an http::Identity; Admit() then applies the route's Policy:
//
//   policy          admits                              no/invalid credentials   wrong kind
//   kPublic         everyone (as anonymous; the header is not even parsed)
//   kSignature      everyone (as anonymous; the handler verifies the webhook signature)
//   kUser           a JWT (admin or not)                401 unauthenticated      403 forbidden
//   kAdmin          a JWT with the admin role           401                      403
//   kService        a service token                     401                      403
//   kUserOrService  a JWT or a service token            401                      —
//
// A 401 carries `WWW-Authenticate: Bearer` (RFC 6750). Tokens are never logged or echoed: problem
// details name the reason ("token expired"), never the token.
//
// Thread safety: every method may be called from any thread. ReplaceJwks() swaps the JWT verifier
// under a mutex; a request being authenticated keeps the verifier it started with.
#pragma once

#include <httplib.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "events/clock.h"
#include "events/status.h"
#include "events/types.h"
#include "http/jwt.h"
#include "http/route.h"

namespace ledger::http {

struct ServiceToken {
  std::string name;   // the Identity subject, e.g. "litellm"
  std::string token;  // the bearer secret
};

// Parses LEDGER_SERVICE_TOKENS: comma-separated `name=token` pairs ("gateway=abc,litellm=def").
// Whitespace around items is trimmed. Empty names or tokens, duplicate names and duplicate tokens
// are errors (InvalidArgument "bad_service_tokens"); an empty spec gives no tokens.
Status ParseServiceTokens(std::string_view spec, std::vector<ServiceToken>* out);

struct AuthOptions {
  std::vector<ServiceToken> service_tokens;
  JwtOptions jwt;
};

class Authenticator {
 public:
  // `clock` must outlive the Authenticator (nullptr = SystemClock). Fails on a bad JWKS or
  // service-token list.
  static Status Create(const AuthOptions& options, const Clock* clock,
                       std::unique_ptr<Authenticator>* out);

  // Identifies the caller. No Authorization header: OK with an anonymous identity. A header
  // that is not `Bearer <token>`, an unknown service token or an invalid JWT: kUnauthenticated
  // (problem "invalid_token"; "unauthenticated" for a malformed header).
  Status Authenticate(const httplib::Request& req, Identity* identity) const;

  // Authenticates as needed for `policy` and enforces it. OK: `*identity` is admitted (anonymous
  // for kPublic/kSignature). Otherwise kUnauthenticated (401, problem "unauthenticated", the
  // reason in the message) or kPermissionDenied (403, problem "forbidden").
  Status Admit(Policy policy, const httplib::Request& req, Identity* identity) const;

  // Writes the problem for a failed Admit() (adds WWW-Authenticate on 401).
  static void WriteAdmitFailure(const Status& status, const httplib::Request& req,
                                httplib::Response* res);

  // Verifies JWTs with the keys of `jwks_json` from now on (the other JwtOptions as at Create()).
  // A JWKS JwtVerifier::Create() refuses (InvalidArgument "bad_jwt_config"), or an empty one,
  // changes nothing: the keys in use stay.
  Status ReplaceJwks(std::string jwks_json);

  std::shared_ptr<const JwtVerifier> jwt() const;
  size_t service_token_count() const { return service_tokens_.size(); }

 private:
  Authenticator() = default;
  // Hashes of the configured tokens: comparing fixed-size digests in constant time hides both
  // the contents and the lengths of the configured tokens.
  struct HashedServiceToken {
    std::string name;
    Hash token_hash;
  };
  std::vector<HashedServiceToken> service_tokens_;
  JwtOptions jwt_options_;  // as at Create(), for ReplaceJwks()
  const Clock* clock_ = nullptr;
  mutable std::mutex jwt_mu_;
  std::shared_ptr<const JwtVerifier> jwt_;  // GUARDED_BY(jwt_mu_); never null after Create()
};

}  // namespace ledger::http
