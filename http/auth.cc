#include "http/auth.h"

#include <set>

#include "events/types.h"
#include "http/limits.h"
#include "http/problem.h"

namespace ledger::http {

namespace {

constexpr char kBearerPrefix[] = "Bearer ";

Status Unauthenticated(std::string problem, std::string message) {
  return Status::Make(Code::kUnauthenticated, std::move(problem), std::move(message));
}

Status Forbidden(std::string message) {
  return Status::Make(Code::kPermissionDenied, "forbidden", std::move(message));
}

}  // namespace

Status ParseServiceTokens(std::string_view spec, std::vector<ServiceToken>* out) {
  out->clear();
  // Items are named by their place (counting from 1), never by name or token: a name may be a
  // misplaced token, and the daemon prints these errors at start.
  std::set<std::string> names, tokens;
  size_t index = 0;
  while (!TrimBlanks(spec).empty()) {
    size_t comma = spec.find(',');
    std::string_view item = TrimBlanks(spec.substr(0, comma));
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    if (item.empty()) continue;
    const std::string place = "service token item " + std::to_string(++index);
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return Status::InvalidArgument("bad_service_tokens", place + " without '=' (name=token)");
    }
    std::string name(TrimBlanks(item.substr(0, eq)));
    std::string token(TrimBlanks(item.substr(eq + 1)));
    if (name.empty() || token.empty()) {
      return Status::InvalidArgument("bad_service_tokens", place + ": empty name or token");
    }
    if (!names.insert(name).second) {
      return Status::InvalidArgument("bad_service_tokens",
                                     place + ": its name is the name of an earlier item");
    }
    if (!tokens.insert(token).second) {
      return Status::InvalidArgument("bad_service_tokens",
                                     place + ": its token is the token of an earlier item");
    }
    if (out->size() >= limits::kServiceTokensMax) {
      return Status::InvalidArgument("bad_service_tokens", "too many service tokens");
    }
    out->push_back(ServiceToken{std::move(name), std::move(token)});
  }
  return Status::OK();
}

Status Authenticator::Create(const AuthOptions& options, const Clock* clock,
                             std::unique_ptr<Authenticator>* out) {
  std::unique_ptr<Authenticator> auth(new Authenticator());
  for (const auto& service : options.service_tokens) {
    if (service.name.empty() || service.token.empty()) {
      return Status::InvalidArgument("bad_service_tokens", "empty service token name or token");
    }
    auth->service_tokens_.push_back(HashedServiceToken{service.name, Sha256(service.token)});
  }
  std::unique_ptr<JwtVerifier> jwt;
  LEDGER_RETURN_IF_ERROR(JwtVerifier::Create(options.jwt, clock, &jwt));
  auth->jwt_ = std::move(jwt);
  auth->jwt_options_ = options.jwt;
  auth->jwt_options_.jwks_json.clear();  // ReplaceJwks() brings its own
  auth->clock_ = clock;
  *out = std::move(auth);
  return Status::OK();
}

Status Authenticator::ReplaceJwks(std::string jwks_json) {
  // An empty JWKS would turn RS256/ES256 off, and accept no Keycloak token at all.
  if (jwks_json.empty()) return Status::InvalidArgument("bad_jwt_config", "the JWKS is empty");
  JwtOptions options = jwt_options_;
  options.jwks_json = std::move(jwks_json);
  std::unique_ptr<JwtVerifier> jwt;
  LEDGER_RETURN_IF_ERROR(JwtVerifier::Create(options, clock_, &jwt));
  std::shared_ptr<const JwtVerifier> replaced(std::move(jwt));
  {
    std::lock_guard<std::mutex> lock(jwt_mu_);
    jwt_.swap(replaced);
  }
  return Status::OK();  // the old verifier goes with the last request using it
}

std::shared_ptr<const JwtVerifier> Authenticator::jwt() const {
  std::lock_guard<std::mutex> lock(jwt_mu_);
  return jwt_;
}

Status Authenticator::Authenticate(const httplib::Request& req, Identity* identity) const {
  *identity = Identity{};
  static const std::string kAuthorization = "Authorization";
  std::string_view header;
  const size_t count = HeaderValue(req, kAuthorization, &header);
  if (count == 0) return Status::OK();
  if (count != 1) {
    return Unauthenticated("unauthenticated", "more than one Authorization header");
  }
  if (header.size() > limits::kAuthorizationBytesMax) {
    return Unauthenticated("invalid_token", "Authorization header too long");
  }
  if (!StartsWithIgnoreCase(header, kBearerPrefix)) {
    return Unauthenticated("unauthenticated", "Authorization must be 'Bearer <token>'");
  }
  std::string_view token = TrimBlanks(std::string_view(header).substr(sizeof(kBearerPrefix) - 1));
  if (token.empty()) return Unauthenticated("unauthenticated", "empty bearer token");

  // Every configured token is compared, so the time taken does not say which one matched.
  Hash presented = Sha256(token);
  const std::string_view presented_view(reinterpret_cast<const char*>(presented.data()), presented.size());
  const HashedServiceToken* match = nullptr;
  for (const auto& service : service_tokens_) {
    std::string_view configured(reinterpret_cast<const char*>(service.token_hash.data()),
                                service.token_hash.size());
    if (ConstantTimeEquals(presented_view, configured)) match = &service;
  }
  if (match != nullptr) {
    identity->kind = Identity::Kind::kService;
    identity->subject = match->name;
    return Status::OK();
  }

  const std::shared_ptr<const JwtVerifier> jwt = this->jwt();
  if (!jwt->enabled()) return Unauthenticated("invalid_token", "unknown bearer token");
  JwtClaims claims;
  Status s = jwt->Verify(token, &claims);
  if (!s.ok()) return s;
  identity->kind = Identity::Kind::kUser;
  identity->subject = std::move(claims.subject);
  identity->email = std::move(claims.email);
  identity->admin = claims.admin;
  return Status::OK();
}

Status Authenticator::Admit(Policy policy, const httplib::Request& req, Identity* identity) const {
  *identity = Identity{};
  if (policy == Policy::kPublic || policy == Policy::kSignature) return Status::OK();
  Status s = Authenticate(req, identity);
  if (!s.ok()) {
    *identity = Identity{};
    // One client-facing code for every 401; the reason stays in the detail.
    return Unauthenticated("unauthenticated", s.message());
  }
  if (identity->kind == Identity::Kind::kAnonymous) {
    return Unauthenticated("unauthenticated", "this route needs a bearer token");
  }
  switch (policy) {
    case Policy::kUser:
      if (!identity->IsUser()) return Forbidden("this route is for users, not service tokens");
      return Status::OK();
    case Policy::kAdmin:
      if (!identity->IsUser() || !identity->admin) return Forbidden("this route needs the admin role");
      return Status::OK();
    case Policy::kService:
      if (!identity->IsService()) return Forbidden("this route is for service tokens");
      return Status::OK();
    case Policy::kUserOrService:
      return Status::OK();
    case Policy::kPublic:
    case Policy::kSignature:
      break;
  }
  return Status::OK();
}

void Authenticator::WriteAdmitFailure(const Status& status, const httplib::Request& req,
                                      httplib::Response* res) {
  WriteStatusProblem(status, res);
  if (status.code() == Code::kUnauthenticated) {
    // RFC 6750 §3.1: a presented but rejected token is "invalid_token".
    res->set_header("WWW-Authenticate", req.has_header("Authorization")
                                            ? R"(Bearer realm="ledgerd", error="invalid_token")"
                                            : R"(Bearer realm="ledgerd")");
  }
}

}  // namespace ledger::http
