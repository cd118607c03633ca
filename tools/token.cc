#include "tools/token.h"

#include <filesystem>
#include <fstream>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "daemon/config.h"
#include "http/jwt.h"
#include "projections/json_util.h"

namespace ledger::tools {

std::string TokenClaimsJson(const TokenOptions& options) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("sub");
  w.String(options.subject);
  if (!options.email.empty()) {
    w.Key("email");
    w.String(options.email);
  }
  if (!options.issuer.empty()) {
    w.Key("iss");
    w.String(options.issuer);
  }
  if (!options.audience.empty()) {
    w.Key("aud");
    w.String(options.audience);
  }
  w.Key("iat");
  w.Int64(options.issued_at_s);
  w.Key("exp");
  w.Int64(options.issued_at_s + options.ttl_seconds);
  w.Key("realm_access");
  w.StartObject();
  w.Key("roles");
  w.StartArray();
  for (const std::string& role : options.roles) w.String(role);
  if (options.admin) w.String(options.admin_role);
  w.EndArray();
  w.EndObject();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status MintHs256Token(const TokenOptions& options, const std::string& secret, std::string* token) {
  if (options.subject.empty()) return Status::InvalidArgument("bad_token", "--sub is required");
  // ledgerd refuses a token whose sub is not a user id (http/jwt.h), on every route.
  if (!projections::IsValidUserId(options.subject)) {
    return Status::InvalidArgument("bad_token",
                                   "--sub must be a user id (1 to 255 bytes of UTF-8 without '/' "
                                   "or control characters)");
  }
  if (secret.empty()) return Status::InvalidArgument("bad_token", "the HS256 secret is empty");
  // ledgerd's own rules for these settings: a token minted with a short secret or a file's
  // newline, or naming an issuer, audience or admin role ledgerd refuses, would pass only here,
  // hiding that the daemon cannot start with them.
  LEDGER_RETURN_IF_ERROR(
      daemon::ValidateJwtSettings(secret, options.issuer, options.audience, options.admin_role));
  if (options.ttl_seconds <= 0 || options.ttl_seconds > kTokenTtlSecondsMax) {
    return Status::InvalidArgument("bad_token", "--ttl must be 1.." +
                                                    std::to_string(kTokenTtlSecondsMax) + " s");
  }
  *token = http::SignHs256(TokenClaimsJson(options), secret);
  return Status::OK();
}

Status ReadSecretFile(const std::string& path, std::string* secret) {
  Status s = daemon::ReadDevSecretFile(path, secret);
  if (s.IsNotFound()) {
    return Status::NotFound(path + " does not exist (start ledgerd in dev mode once, or set "
                                   "LEDGER_JWT_HS256_SECRET)");
  }
  return s;
}

}  // namespace ledger::tools
