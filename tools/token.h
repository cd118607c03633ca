// ledgerctl token: mints HS256 JWTs that ledgerd accepts (dev mode, or a deployment configured with
// LEDGER_JWT_HS256_SECRET). Claims: sub, email, iat, exp, realm_access.roles (Keycloak's shape;
// includes the admin role when asked), and iss / aud when given.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "events/status.h"

namespace ledger::tools {

inline constexpr int64_t kTokenTtlSecondsMax = 366 * 86400;  // a year

struct TokenOptions {
  std::string subject;                  // `sub`: the user id (required)
  std::string email;                    // `email`; omitted when empty
  bool admin = false;                   // adds `admin_role` to the roles
  std::string admin_role = "admin";     // LEDGER_ADMIN_ROLE
  std::vector<std::string> roles;       // further realm roles
  int64_t ttl_seconds = 3600;           // exp = iat + ttl
  int64_t issued_at_s = 0;              // iat, Unix seconds (the caller's clock)
  std::string issuer;                   // `iss`; omitted when empty
  std::string audience;                 // `aud`; omitted when empty
};

// The JWT payload for `options` (compact JSON).
std::string TokenClaimsJson(const TokenOptions& options);

// Mints `header.payload.signature` signed with `secret`. InvalidArgument for a subject that is not
// a user id (projections::IsValidUserId, as ledgerd requires), an empty secret or a TTL outside
// 1..kTokenTtlSecondsMax; kUnprocessable "bad_config" for a secret, issuer, audience or admin
// role ledgerd refuses to start with (daemon::ValidateJwtSettings: exit 78 there).
Status MintHs256Token(const TokenOptions& options, const std::string& secret, std::string* token);

// Reads the dev-mode secret ledgerd keeps at `path` (`<data-dir>/jwt-dev.secret`) as ledgerd does
// (daemon::ReadDevSecretFile). NotFound when the file does not exist (ledgerd has not run in dev
// mode there); kUnprocessable "bad_config" when ledgerd would refuse it (group or others can read
// it, or its line is under 32 bytes).
Status ReadSecretFile(const std::string& path, std::string* secret);

}  // namespace ledger::tools
