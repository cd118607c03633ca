// ledgerd configuration: every option is a flag and an environment variable (the flag wins),
// named as in CONTRACT.md §1. Parse() validates everything before anything starts; a bad setting
// is reported by name and the daemon exits 78 (EX_CONFIG).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "events/ledger.h"
#include "events/limits.h"
#include "events/status.h"

namespace CLI {
class App;
}  // namespace CLI

namespace ledger::daemon {

// sysexits.h values used by ledgerd and ledgerctl.
inline constexpr int kExitOk = 0;
inline constexpr int kExitUsage = 64;
inline constexpr int kExitDataError = 65;
// ledgerd: the HTTP server stopped accepting connections on its own (EX_UNAVAILABLE).
inline constexpr int kExitUnavailable = 69;
inline constexpr int kExitInternal = 70;
inline constexpr int kExitStorage = 74;
inline constexpr int kExitConfig = 78;

// The dev-mode JWT secret lives here (hex text, mode 0600) when no JWT setting is given.
std::string DevJwtSecretPath(const std::string& data_dir);

struct Config {
  std::string data_dir = "./data";                 // LEDGER_DATA_DIR
  std::string listen_host = "127.0.0.1";           // LEDGER_LISTEN host part
  int listen_port = 8084;                          // LEDGER_LISTEN port part; 0 = pick one
  std::string kafka_brokers = "embedded";          // embedded | none | bootstrap servers
  std::string kafka_topic = "ledger.events";
  // LEDGER_KAFKA_MESSAGE_MAX_BYTES: larger CloudEvents are published with `dataref`, not `data`.
  size_t kafka_message_max_bytes = limits::kOutboxMessageBytesMax;
  // LEDGER_KAFKA_PROPERTIES_FILE: librdkafka properties (`key=value` lines; `#` comments) for a
  // real cluster's security (security.protocol, sasl.*, ssl.*), applied over the outbox's own.
  // The values may be secrets: only the file's path is ever logged.
  std::string kafka_properties_file;
  std::map<std::string, std::string> kafka_properties;  // read from the file by ParseConfig
  std::string jwt_hs256_secret;                    // secret: never logged
  std::string jwt_jwks_file;
  std::string jwt_issuer;
  std::string jwt_audience;
  std::string admin_role = "admin";
  std::vector<std::pair<std::string, std::string>> service_tokens;  // name, token (secret)
  std::string stripe_secret_key;                   // secret
  std::vector<std::string> stripe_webhook_secrets; // secrets, as given (`test:`/`live:` kept)
  std::string stripe_api_base = "https://api.stripe.com";
  std::string stripe_api_version = "2025-03-31.basil";  // Stripe-Version; "" = the account's
  std::string stripe_success_url;
  std::string stripe_cancel_url;
  std::string stripe_portal_return_url;
  std::string lago_webhook_hmac_key;               // secret
  std::string lago_webhook_public_key_file;
  // Optional `iss` that jwt-signed Lago webhooks must carry; default: not checked. Lago signs
  // with ITS OWN LAGO_API_URL, often a public URL other than the one ledgerd calls.
  std::string lago_webhook_issuer;
  // LAGO_ORGANIZATION_ID: the Lago organization whose webhooks are accepted (a delivery whose
  // body's organization_id differs or is absent is refused); "" = any. jwt mode needs it to tell
  // tenants apart: Lago signs every organization's deliveries with one instance-wide RSA key.
  std::string lago_organization_id;
  std::string lago_api_url;                        // LAGO_API_URL: the sink calls it; "" = off
  std::string lago_api_key;                        // LAGO_API_KEY (secret); "" = sink off
  std::string lago_billable_metric_code = "api_calls";  // LAGO_BILLABLE_METRIC_CODE
  std::string master_key_file;                     // default <data_dir>/master.key
  bool master_key_file_given = false;              // set explicitly: it must exist (any mode)
  // LEDGER_MASTER_KEY_PREVIOUS_FILES: files of key-encryption keys rotated away from, each read
  // as master_key_file is (LoadPreviousMasterKeys); the BYOK data keys wrapped under them are
  // re-wrapped under the current key at start (http/byok_rotation.h).
  std::vector<std::string> master_key_previous_files;
  // LEDGER_BYOK_BASE_URLS "provider=url,...": provider API base URLs (default: the providers').
  std::map<std::string, std::string> byok_base_urls;
  size_t http_threads = 0;                         // 0 = automatic
  // LEDGER_SYNC_INTERVAL_MIN_US: LedgerOptions::sync_interval_min, in microseconds.
  int64_t sync_interval_min_us = kSyncIntervalMinDefault.count();
  std::string log_level = "info";
  // LEDGER_CORE_DUMPS=on: core dumps (and ptrace by the same user) left as the system has them,
  // for debugging a crash; off (the default) keeps the secrets out of core files (App::Start).
  bool core_dumps = false;

  // True when neither an HS256 secret nor a JWKS file is configured: ledgerd then creates a
  // random HS256 secret in the data directory and `ledgerctl token` mints tokens with it.
  bool DevMode() const { return jwt_hs256_secret.empty() && jwt_jwks_file.empty(); }
  // True when the Lago sink runs: both LAGO_API_URL and LAGO_API_KEY are set.
  bool LagoSinkEnabled() const { return !lago_api_url.empty() && !lago_api_key.empty(); }
  // A one-line description of the active settings, without secrets.
  std::string Describe() const;
};

struct ParseResult {
  Status status;        // kInvalidArgument: bad usage (64); kUnprocessable: bad config (78)
  int exit_code = kExitOk;
  bool exit_now = false;  // --help / --version: print `output` and exit 0
  std::string output;
};

// Parses flags and environment. Environment variables are read with getenv().
ParseResult ParseConfig(int argc, const char* const* argv, Config* config);

// Loads or creates (0600, random) the dev-mode HS256 secret. Returns it in `secret`. A file that
// group or others can read is refused (kUnprocessable, exit 78): it mints admin tokens.
Status LoadOrCreateDevSecret(const std::string& data_dir, std::string* secret);

// Reads a dev-mode secret file as ledgerd and `ledgerctl token` both take it: its first line,
// without a trailing CR. NotFound when there is no file; kUnprocessable "bad_config" (exit 78)
// when group or others can read it, or when the line is under 32 bytes (a hand-made or cut file:
// delete it for a new one).
Status ReadDevSecretFile(const std::string& path, std::string* secret);

// Reads the file a setting names, `bytes_max` bytes at most: a larger one (or one that never
// ends, /dev/zero) is refused after bytes_max + 1 bytes instead of being read whole (the JWKS
// file and Lago's public key were slurped, and LEDGER_JWT_JWKS_FILE=/dev/zero grew until the
// OOM killer came). kUnprocessable "bad_config" (exit 78) naming `setting` when the file cannot
// be read or is too large.
Status ReadConfigFile(std::string_view setting, const std::string& path, size_t bytes_max,
                      std::string* contents);

// A value compared byte for byte with what another system sends (an HS256 secret, a role name)
// that holds a control character (a secret file's newline) or a blank at either end.
bool HasControlOrEdgeBlank(std::string_view value);

// The JWT settings as ledgerd takes them, and `ledgerctl token` before it signs (a token made with
// a value ledgerd refuses would hide that it cannot start): an HS256 secret (empty: none) of at
// least 32 bytes, an admin role, and an issuer and audience (empty: not checked), none holding a
// control character or a blank at either end. kUnprocessable "bad_config" (exit 78) naming the
// variable; the value is never repeated.
Status ValidateJwtSettings(std::string_view hs256_secret, std::string_view issuer,
                           std::string_view audience, std::string_view admin_role);

// CLI11 takes an empty variable for an unset one (a variable that failed to expand), and a flag
// given empty is the same mistake (`--jwt-audience "$AUD"` with AUD unset): kUnprocessable
// "bad_config" (exit 78) naming `variable` when it is set but empty and `flag` (an option of
// `app`, reading `variable`) is not given, or when `flag` is given empty.
Status CheckSettingNotEmpty(const CLI::App& app, const char* variable, const char* flag);

// The BYOK key-encryption key: 32 bytes, stored as 64 hex digits in `path`. When the file is
// missing it is an error if `required` (the setting named it explicitly, in any mode), else
// created (0600, random) if `create` (dev mode, the default path), else `*found` is false.
// Errors (kUnprocessable, exit 78): missing when required, not 64 hex digits, or readable by
// group or others.
Status LoadOrCreateMasterKey(const std::string& path, bool create, bool required,
                             std::string* key, bool* found);

// The previous key-encryption keys of LEDGER_MASTER_KEY_PREVIOUS_FILES, in its order, each file
// read as LoadOrCreateMasterKey reads a required one (it must exist; 64 hex digits; owner-only
// mode). kUnprocessable "bad_config" (exit 78) naming the item by its place and path when one
// is not such a file, or holds `current_key` or the key of an earlier item (the key is never
// repeated). On an error no key is left in `keys`.
Status LoadPreviousMasterKeys(const std::vector<std::string>& paths, std::string_view current_key,
                              std::vector<std::string>* keys);

}  // namespace ledger::daemon
