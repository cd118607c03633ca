#include "daemon/config.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string_view>

#include "daemon/cli_decimal.h"
#include "daemon/cli_usage.h"
#include "events/outbox.h"
#include "events/types.h"
#include "http/auth.h"
#include "http/base_url.h"
#include "http/byok_providers.h"
#include "http/problem.h"
#include "http/stripe_client.h"
#include "http/stripe_signature.h"

namespace ledger::daemon {

namespace {

// The items of a comma-separated list without the blanks around each. An empty item (`a,`, `a,,b`,
// `a, ,b`: a value that failed to arrive) is kept, as "", for the error to name by its place.
// An empty list has no items.
std::vector<std::string> SplitComma(std::string_view s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  for (;;) {
    const size_t comma = s.find(',');
    std::string_view item = s.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    out.emplace_back(item);
    if (comma == std::string_view::npos) return out;
    s.remove_prefix(comma + 1);
  }
}

Status Bad(const std::string& setting, const std::string& why) {
  return Status::Make(Code::kUnprocessable, "bad_config", setting + ": " + why);
}

// Files read whole at start, each up to its bound (ReadConfigFile): a path naming /dev/zero or a
// runaway file grew memory until the OOM killer came, a file without a newline as well.
constexpr size_t kKafkaPropertiesFileBytesMax = 64 * 1024;
constexpr size_t kSecretFileBytesMax = 4096;  // a 64-hex-digit secret and its newline

// The first line of a file's contents, without its line end (CR LF too).
std::string FirstLine(const std::string& contents) {
  std::string line = contents.substr(0, contents.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

void Wipe(std::string* secret) { std::fill(secret->begin(), secret->end(), '\0'); }

// A regular file we can open: opening a directory for reading succeeds on Linux and then reads
// nothing.
bool IsReadableFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream f(path);
  return f.good();
}

Status ParseListen(const std::string& listen, Config* config) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return Bad("LEDGER_LISTEN", "expected host:port, got '" + listen + "'");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = listen.substr(colon + 1);
  if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(port) > 65535) {
    return Bad("LEDGER_LISTEN", "port must be 0..65535, got '" + port + "'");
  }
  config->listen_host = host;
  config->listen_port = std::stoi(port);
  return Status::OK();
}

// A secret read from a file often keeps the file's newline: sent as is, it fails every check
// (a refused key, a webhook signature that never matches) instead of failing here.
bool HasBlankOrControl(std::string_view value) {
  return std::any_of(value.begin(), value.end(),
                     [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; });
}

// http::ParseServiceTokens is the one reader of the syntax (names and tokens trimmed, no name or
// token twice: a shared token would authenticate every caller as the last name holding it).
// Errors name an item by its place, never by its name: a name may be a misplaced token -- a bare
// base64 token `Q2hh...Mg==` reads as name `Q2hh...Mg` and token `=`, and `<token>=gateway` as
// name `<token>` -- and main() prints the error.
Status ParseServiceTokens(const std::string& value, Config* config) {
  std::vector<http::ServiceToken> tokens;
  Status s = http::ParseServiceTokens(value, &tokens);
  if (!s.ok()) return Bad("LEDGER_SERVICE_TOKENS", s.message());
  for (size_t i = 0; i < tokens.size(); ++i) {
    http::ServiceToken& token = tokens[i];
    const std::string item = "item " + std::to_string(i + 1) + " (name=token)";
    if (token.token.size() < 16) {
      return Bad("LEDGER_SERVICE_TOKENS",
                 item + ": the token after the first '=' is shorter than 16 characters");
    }
    // Sent as a Bearer token, which holds neither: a token read from a file with its newline
    // would never authenticate.
    if (HasBlankOrControl(token.token)) {
      return Bad("LEDGER_SERVICE_TOKENS",
                 item + ": the token must not contain whitespace or control characters");
    }
    // cpp-httplib 0.11.4 percent-decodes header values: `tok%2Bxyz...` arrives as `tok+xyz...`,
    // so a token holding '%' never authenticates, however the caller sends it.
    if (token.token.find('%') != std::string::npos) {
      return Bad("LEDGER_SERVICE_TOKENS",
                 item + ": the token must not contain '%' (the server percent-decodes the "
                        "Authorization header, so it would never match)");
    }
    config->service_tokens.emplace_back(std::move(token.name), std::move(token.token));
  }
  return Status::OK();
}

bool IsValidTopic(const std::string& topic) {
  if (topic.empty() || topic.size() > 249 || topic == "." || topic == "..") return false;
  return topic.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
         std::string::npos;
}

// A URL with a host: scheme://host[:port][/path], nothing after '?' or '#'.
// An outside API's base URL as its client takes it (http::ParseBaseUrl), refused here: before
// the start-up line logs it (a userinfo's password included) and before anything starts.
Status ValidateBaseUrl(const std::string& url, const char* name) {
  http::BaseUrl unused;
  if (!http::ParseBaseUrl(url, name, "bad_config", &unused).ok()) {
    return Bad(name, "must be an http:// or https:// URL with a host and, if any, a port "
                     "1..65535 (no user:password@, query, fragment, whitespace or control "
                     "characters)");
  }
  return Status::OK();
}

Status ValidateLago(const Config& config) {
  if (!config.lago_api_url.empty()) {
    LEDGER_RETURN_IF_ERROR(ValidateBaseUrl(config.lago_api_url, "LAGO_API_URL"));
  }
  if (!config.lago_api_key.empty() && config.lago_api_url.empty()) {
    return Bad("LAGO_API_KEY", "is set but LAGO_API_URL is not: the Lago sink needs both");
  }
  if (HasBlankOrControl(config.lago_api_key)) {
    return Bad("LAGO_API_KEY", "must not contain whitespace or control characters");
  }
  if (HasBlankOrControl(config.lago_webhook_hmac_key)) {
    return Bad("LAGO_WEBHOOK_HMAC_KEY", "must not contain whitespace or control characters");
  }
  // Not a secret (Lago puts it in every webhook body), but compared byte for byte: a pasted
  // newline or space would refuse every delivery.
  const std::string& organization = config.lago_organization_id;
  auto visible_ascii = [](char c) { return c > ' ' && c < 0x7f; };
  if (!organization.empty() &&
      (organization.size() > 255 ||
       !std::all_of(organization.begin(), organization.end(), visible_ascii))) {
    return Bad("LAGO_ORGANIZATION_ID",
               "must be 1..255 visible ASCII characters (the organization_id of Lago's webhooks)");
  }
  const std::string& code = config.lago_billable_metric_code;
  if (code.empty() || code.size() > 255 ||
      std::any_of(code.begin(), code.end(),
                  [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; })) {
    return Bad("LAGO_BILLABLE_METRIC_CODE", "must be 1..255 visible characters");
  }
  return Status::OK();
}

// LEDGER_KAFKA_BROKERS: `embedded`, `none`, or bootstrap servers as `host:port[,host:port...]`,
// each optionally after `PROTOCOL://` (blanks around an item allowed, as librdkafka skips them). Anything else would start a daemon
// that is ready and publishes nowhere: a keyword in other case or misspelt, a host without a
// port (librdkafka would take `embeded` for a host on 9092), a port librdkafka reads modulo
// 65536, a blank inside a host.
Status ValidateKafkaBrokers(const std::string& brokers) {
  constexpr const char* kSetting = "LEDGER_KAFKA_BROKERS";
  if (brokers == "embedded" || brokers == "none") return Status::OK();
  if (http::EqualsIgnoreCase(brokers, "embedded") || http::EqualsIgnoreCase(brokers, "none")) {
    return Bad(kSetting, "'embedded' and 'none' are written in lower case");
  }
  const std::string expected =
      "must be 'embedded', 'none' or bootstrap servers host:port[,host:port...]";
  if (brokers.empty()) return Bad(kSetting, expected);
  // Errors name an item by its place, never repeat it: `SASL_SSL://alice:s3cret@b1:9093` puts
  // credentials where a host goes, and main() prints the error.
  std::string_view rest = brokers;
  for (int index = 1;; ++index) {
    const std::string item_name = "item " + std::to_string(index);
    const size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    // A security protocol before a broker, as librdkafka takes it (`SASL_SSL://b1:9093`).
    const size_t scheme = item.find("://");
    if (scheme != std::string_view::npos) {
      const std::string_view protocol = item.substr(0, scheme);
      bool known = false;
      for (const char* p : {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}) {
        known = known || http::EqualsIgnoreCase(protocol, p);
      }
      if (!known) {
        return Bad(kSetting, item_name + ": unknown security protocol before '://' (PLAINTEXT, "
                             "SSL, SASL_PLAINTEXT or SASL_SSL)");
      }
      item.remove_prefix(scheme + 3);
    }
    const size_t colon = item.rfind(':');
    std::string_view host = item.substr(0, colon == std::string_view::npos ? 0 : colon);
    const std::string_view port =
        colon == std::string_view::npos ? std::string_view() : item.substr(colon + 1);
    // A hostname or IPv4 address, or an IPv6 address in brackets.
    bool host_ok = !host.empty();
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
      host_ok = host.find_first_not_of("0123456789abcdefABCDEF:.") == std::string_view::npos;
    } else {
      host_ok = host_ok && host.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") ==
                               std::string_view::npos;
    }
    const bool port_ok = !port.empty() && port.size() <= 5 && port[0] != '0' &&
                         port.find_first_not_of("0123456789") == std::string_view::npos &&
                         std::stoi(std::string(port)) <= 65535;
    if (item.find('@') != std::string_view::npos) {
      return Bad(kSetting, item_name + " holds '@': credentials go in LEDGER_KAFKA_PROPERTIES_FILE "
                                       "(sasl.username, sasl.password), not in the broker list");
    }
    if (!host_ok || !port_ok) {
      return Bad(kSetting, item_name + ": " + expected + " (port 1..65535)");
    }
    if (comma == std::string_view::npos) return Status::OK();
    rest = rest.substr(comma + 1);
  }
}

// Properties the outbox's guarantees rest on (or that LEDGER_KAFKA_BROKERS sets): not overridable.
bool IsReservedKafkaProperty(std::string_view key) {
  static constexpr std::string_view kReserved[] = {
      "bootstrap.servers", "metadata.broker.list", "enable.idempotence", "acks",
      "request.required.acks", "enable.gapless.guarantee", "message.timeout.ms",
      "delivery.timeout.ms", "max.in.flight.requests.per.connection", "max.in.flight",
      "partitioner", "message.max.bytes", "delivery.report.only.error", "transactional.id"};
  return std::find(std::begin(kReserved), std::end(kReserved), key) != std::end(kReserved);
}

// A property whose value is a credential: a file that sets one is its owner's alone, as the master
// key and the dev secret are.
bool IsSecretKafkaProperty(std::string_view key) {
  return key.find("password") != std::string_view::npos ||
         key.find("secret") != std::string_view::npos || key == "ssl.key.pem";
}

// `key=value` lines, blanks around both trimmed; empty lines and `#` comments skipped. Errors name
// the line, never a value (they may be secrets).
Status ReadKafkaProperties(const std::string& path, std::map<std::string, std::string>* out) {
  constexpr const char* kSetting = "LEDGER_KAFKA_PROPERTIES_FILE";
  if (!IsReadableFile(path)) return Bad(kSetting, "cannot read '" + path + "'");
  std::string text_of_file;
  LEDGER_RETURN_IF_ERROR(ReadConfigFile(kSetting, path, kKafkaPropertiesFileBytesMax,
                                        &text_of_file));
  std::istringstream in(std::move(text_of_file));
  std::string line;
  int number = 0;
  // Each property is tried on a scratch configuration, as the outbox will set it: an unknown one
  // or a value librdkafka refuses failed the start only after the data directory was opened.
  std::unique_ptr<rd_kafka_conf_t, void (*)(rd_kafka_conf_t*)> scratch(rd_kafka_conf_new(),
                                                                       &rd_kafka_conf_destroy);
  auto trim = [](std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t' || v.back() == '\r')) {
      v.remove_suffix(1);
    }
    return v;
  };
  while (std::getline(in, line)) {
    ++number;
    const std::string_view text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    const size_t eq = text.find('=');
    const std::string_view key = eq == std::string_view::npos ? text : trim(text.substr(0, eq));
    const std::string where = path + " line " + std::to_string(number);
    if (eq == std::string_view::npos || key.empty() || key.size() > 128 ||
        !std::all_of(key.begin(), key.end(), [](char c) {
          return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        })) {
      return Bad(kSetting, where + ": not a `property=value` line");
    }
    if (IsReservedKafkaProperty(key)) {
      return Bad(kSetting, where + ": " + std::string(key) +
                               " is set by ledgerd (the outbox's ordering and delivery guarantees "
                               "rest on it; the brokers come from LEDGER_KAFKA_BROKERS)");
    }
    const std::string name(key);
    std::string value(trim(text.substr(eq + 1)));
    // Not tried: setting it loads the libraries it names (the outbox does, when it starts).
    if (name != "plugin.library.paths") {
      char unused[512];
      const rd_kafka_conf_res_t tried =
          rd_kafka_conf_set(scratch.get(), name.c_str(), value.c_str(), unused, sizeof(unused));
      // librdkafka's message repeats the value: not said (it may be a secret).
      if (tried == RD_KAFKA_CONF_UNKNOWN) {
        return Bad(kSetting, where + ": librdkafka has no property " + name);
      }
      if (tried != RD_KAFKA_CONF_OK) {
        return Bad(kSetting, where + ": librdkafka refuses the value of " + name);
      }
    }
    (*out)[name] = std::move(value);
    if (out->size() > 256) return Bad(kSetting, "more than 256 properties");
  }
  for (const auto& [name, value] : *out) {
    struct stat st {};
    if (IsSecretKafkaProperty(name) && ::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
      char mode[8];
      std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
      return Bad(kSetting, path + " sets " + name + " but is readable by group or others (mode " +
                               mode + "; chmod 600 it)");
    }
  }
  return Status::OK();
}

// A key file's path as messages show it: a value of 64 hex digits is a key pasted where its
// file's path belongs (`LEDGER_MASTER_KEY_FILE=$(cat master.key)`), and is not repeated.
std::string ShownKeyPath(std::string_view path) {
  const bool hex = path.size() == 64 && std::all_of(path.begin(), path.end(), [](char c) {
                     return std::isxdigit(static_cast<unsigned char>(c)) != 0;
                   });
  return hex ? std::string("<64 hex digits, not shown: a key where its file's path belongs?>")
             : std::string(path);
}

// LEDGER_MASTER_KEY_PREVIOUS_FILES: comma-separated paths (blanks around them dropped). An empty
// item is a path that failed to arrive; a file named twice, or the current key's file, is a
// copy-paste mistake that would leave the key meant to be listed out. Items are named by their
// place and path (a path is no secret: LEDGER_MASTER_KEY_FILE's is logged).
Status ParseMasterKeyPreviousFiles(const std::string& value, Config* config) {
  constexpr const char* kSetting = "LEDGER_MASTER_KEY_PREVIOUS_FILES";
  if (value.empty()) return Status::OK();
  const auto normal = [](const std::string& path) {
    return std::filesystem::path(path).lexically_normal().string();
  };
  const std::vector<std::string> items = SplitComma(value);
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string name = "item " + std::to_string(i + 1);
    const std::string& path = items[i];
    if (path.empty()) return Bad(kSetting, name + " is empty");
    if (normal(path) == normal(config->master_key_file)) {
      return Bad(kSetting,
                 name + " (" + ShownKeyPath(path) + ") is LEDGER_MASTER_KEY_FILE, the current key");
    }
    for (size_t j = 0; j < config->master_key_previous_files.size(); ++j) {
      if (normal(config->master_key_previous_files[j]) == normal(path)) {
        return Bad(kSetting, name + " (" + ShownKeyPath(path) + ") names the file of item " +
                                 std::to_string(j + 1) + " again");
      }
    }
    config->master_key_previous_files.push_back(path);
  }
  return Status::OK();
}

Status Validate(Config* config, const std::string& listen, const std::string& service_tokens,
                const std::string& webhook_secrets, const std::string& byok_base_urls,
                const std::string& master_key_previous_files, const std::string& core_dumps) {
  LEDGER_RETURN_IF_ERROR(ParseListen(listen, config));
  LEDGER_RETURN_IF_ERROR(ParseServiceTokens(service_tokens, config));
  if (config->data_dir.empty()) return Bad("LEDGER_DATA_DIR", "must not be empty");
  LEDGER_RETURN_IF_ERROR(ValidateKafkaBrokers(config->kafka_brokers));
  if (!IsValidTopic(config->kafka_topic)) {
    return Bad("LEDGER_KAFKA_TOPIC", "not a valid Kafka topic name");
  }
  config->kafka_properties.clear();
  if (!config->kafka_properties_file.empty()) {
    LEDGER_RETURN_IF_ERROR(
        ReadKafkaProperties(config->kafka_properties_file, &config->kafka_properties));
  }
  if (config->kafka_message_max_bytes < limits::kOutboxMessageBytesMaxLowest ||
      config->kafka_message_max_bytes > limits::kOutboxMessageBytesMaxHighest) {
    return Bad("LEDGER_KAFKA_MESSAGE_MAX_BYTES",
               "must be " + std::to_string(limits::kOutboxMessageBytesMaxLowest) + ".." +
                   std::to_string(limits::kOutboxMessageBytesMaxHighest) + " bytes");
  }
  // What librdkafka takes property by property but refuses when the producer is created (a CA
  // file that is not there, a combination of properties): refused here too, before the data
  // directory is touched. With `none` no producer is created.
  if (!config->kafka_properties.empty() && config->kafka_brokers != "none") {
    OutboxOptions producer;
    producer.message_bytes_max = config->kafka_message_max_bytes;
    producer.kafka_config = config->kafka_properties;
    Status checked = CheckProducerConfig(producer);
    if (!checked.ok()) {
      return Bad("LEDGER_KAFKA_PROPERTIES_FILE",
                 config->kafka_properties_file + ": " + checked.message());
    }
  }
  LEDGER_RETURN_IF_ERROR(ValidateJwtSettings(config->jwt_hs256_secret, config->jwt_issuer,
                                             config->jwt_audience, config->admin_role));
  if (!config->jwt_jwks_file.empty() && !IsReadableFile(config->jwt_jwks_file)) {
    return Bad("LEDGER_JWT_JWKS_FILE", "cannot read '" + config->jwt_jwks_file + "'");
  }
  // An empty item (`whsec_a,` or `whsec_a,,whsec_b`) is a secret that failed to arrive. Named by
  // its place, never repeated.
  const std::vector<std::string> secrets = SplitComma(webhook_secrets);
  for (size_t i = 0; i < secrets.size(); ++i) {
    if (secrets[i].empty()) {
      return Bad("STRIPE_WEBHOOK_SECRET", "item " + std::to_string(i + 1) + ": empty");
    }
  }
  // Stripe's whsec_ values do not say their mode, so an entry does: `test:whsec_...`,
  // `live:whsec_...`, a bare one is of STRIPE_SECRET_KEY's mode (http::ParseStripeWebhookSecret).
  // One secret under two modes would let its holder choose the mode by the body's `livemode`.
  const std::optional<bool> key_livemode = http::StripeKeyLivemode(config->stripe_secret_key);
  std::vector<http::StripeWebhookSecret> bound;
  for (size_t i = 0; i < secrets.size(); ++i) {
    const std::string& entry = secrets[i];
    const std::string item = "item " + std::to_string(i + 1) + ": ";
    if (entry.rfind("whsec_", 0) != 0 && entry.find(':') != std::string::npos &&
        entry.rfind("live:", 0) != 0 && entry.rfind("test:", 0) != 0) {
      return Bad("STRIPE_WEBHOOK_SECRET",
                 item + "the only prefixes are live: and test: (a bare whsec_... is of "
                        "STRIPE_SECRET_KEY's mode)");
    }
    http::StripeWebhookSecret parsed = http::ParseStripeWebhookSecret(entry, key_livemode);
    const std::string& secret = parsed.secret;
    if (secret.rfind("whsec_", 0) != 0 || secret.size() == 6 || HasBlankOrControl(secret)) {
      return Bad("STRIPE_WEBHOOK_SECRET",
                 item + "every secret must be whsec_ followed by the secret");
    }
    for (size_t j = 0; j < bound.size(); ++j) {
      if (bound[j].secret == secret && bound[j].livemode != parsed.livemode) {
        return Bad("STRIPE_WEBHOOK_SECRET", item + "the secret of item " + std::to_string(j + 1) +
                                                " again, of another mode");
      }
    }
    bound.push_back(std::move(parsed));
    config->stripe_webhook_secrets.push_back(entry);
  }
  LEDGER_RETURN_IF_ERROR(ValidateBaseUrl(config->stripe_api_base, "STRIPE_API_BASE"));
  // Dev mode is for no JWT configuration at all: an issuer or audience without a key source is a
  // key source that failed to arrive (and dev mode would take every token with a local secret).
  if (config->DevMode() && (!config->jwt_issuer.empty() || !config->jwt_audience.empty())) {
    return Bad(config->jwt_issuer.empty() ? "LEDGER_JWT_AUDIENCE" : "LEDGER_JWT_ISSUER",
               "is set but neither LEDGER_JWT_HS256_SECRET nor LEDGER_JWT_JWKS_FILE is");
  }
  if (const std::string& v = config->stripe_api_version;
      !v.empty() && !http::IsStripeApiVersion(v)) {
    return Bad("STRIPE_API_VERSION", "must be a Stripe API version such as 2025-03-31.basil");
  }
  if (HasBlankOrControl(config->stripe_secret_key)) {
    return Bad("STRIPE_SECRET_KEY", "must not contain whitespace or control characters");
  }
  for (auto [name, value] : {std::pair{"STRIPE_SUCCESS_URL", &config->stripe_success_url},
                             std::pair{"STRIPE_CANCEL_URL", &config->stripe_cancel_url},
                             std::pair{"STRIPE_PORTAL_RETURN_URL",
                                       &config->stripe_portal_return_url}}) {
    // Sent to Stripe at every checkout or portal session, which refused `https://` (no host),
    // `https://app.example/ok\n` or a blank in the path with a 400: every one answered 502.
    if (!value->empty() && !http::CheckPageUrl(*value, name, "bad_config").ok()) {
      return Bad(name, "must be an absolute http:// or https:// URL with a host and, if any, a "
                       "port 1..65535 (no user:password@, whitespace or control characters)");
    }
  }
  if (!config->lago_webhook_public_key_file.empty() &&
      !IsReadableFile(config->lago_webhook_public_key_file)) {
    return Bad("LAGO_WEBHOOK_PUBLIC_KEY_FILE",
               "cannot read '" + config->lago_webhook_public_key_file + "'");
  }
  LEDGER_RETURN_IF_ERROR(ValidateLago(*config));
  config->master_key_file_given = !config->master_key_file.empty();
  if (config->master_key_file.empty()) {
    config->master_key_file = config->data_dir + "/master.key";
  }
  LEDGER_RETURN_IF_ERROR(ParseMasterKeyPreviousFiles(master_key_previous_files, config));
  // Its messages name the setting already.
  Status urls = http::ParseByokBaseUrls(byok_base_urls, &config->byok_base_urls);
  if (!urls.ok()) return Status::Make(Code::kUnprocessable, "bad_config", urls.message());
  static const std::vector<std::string> kLevels = {"trace", "debug", "info", "warn", "error"};
  if (std::find(kLevels.begin(), kLevels.end(), config->log_level) == kLevels.end()) {
    return Bad("LEDGER_LOG_LEVEL", "must be one of trace, debug, info, warn, error");
  }
  if (core_dumps != "off" && core_dumps != "on") {
    return Bad("LEDGER_CORE_DUMPS", "must be off or on");
  }
  config->core_dumps = core_dumps == "on";
  if (config->http_threads > 4096) return Bad("LEDGER_HTTP_THREADS", "at most 4096");
  if (config->sync_interval_min_us < 0 || config->sync_interval_min_us > 100'000) {
    return Bad("LEDGER_SYNC_INTERVAL_MIN_US", "must be 0..100000 microseconds");
  }
  return Status::OK();
}

// The setting (its environment variable, else its flag) whose flag `what` names, followed by
// `after`.
std::string SettingNamed(const CLI::App& app, const std::string& what, const std::string& after) {
  for (const CLI::Option* option : app.get_options()) {
    if (what.find(option->get_name() + after) != std::string::npos) {
      return option->get_envname().empty() ? option->get_name() : option->get_envname();
    }
  }
  return "configuration";
}

}  // namespace

// CLI11's ExtrasError repeated every argument it did not take, and a mistyped flag's argument is
// its value (`ledgerd --stripe-secrt-key sk_live_...` printed the key to the terminal and the
// service's log).
std::string UnexpectedArguments(const std::vector<std::string>& arguments) {
  std::string names;
  size_t values = 0;
  for (const std::string& argument : arguments) {
    if (argument.size() < 2 || argument[0] != '-') {
      ++values;
      continue;
    }
    const std::string name =
        argument[1] == '-' ? argument.substr(0, argument.find('=')) : argument.substr(0, 2);
    names += (names.empty() ? "" : " ") + name;
  }
  std::string message = names.empty() ? "" : "unknown option(s) " + names;
  if (values > 0) {
    message += (message.empty() ? "" : " and ") + std::to_string(values) +
               " argument(s) no option takes (not repeated: one may be a secret)";
  }
  return message + "; see --help";
}

std::vector<std::string> ReversedArguments(int argc, const char* const* argv) {
  std::vector<std::string> arguments;
  bool options = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view argument = argv[i];
    if (argument == "--") options = false;
    if (options && argument.size() > 3 && argument.substr(0, 2) == "--" &&
        argument.find('=') == argument.size() - 1) {
      arguments.emplace_back(argument.substr(0, argument.size() - 1));
      arguments.emplace_back();
    } else {
      arguments.emplace_back(argument);
    }
  }
  std::reverse(arguments.begin(), arguments.end());
  return arguments;
}

std::string UsageErrorMessage(const CLI::ParseError& error) {
  const bool quotable = dynamic_cast<const CLI::ArgumentMismatch*>(&error) != nullptr ||
                        dynamic_cast<const CLI::RequiredError*>(&error) != nullptr ||
                        dynamic_cast<const CLI::RequiresError*>(&error) != nullptr ||
                        dynamic_cast<const CLI::ExcludesError*>(&error) != nullptr ||
                        dynamic_cast<const CLI::ConversionError*>(&error) != nullptr ||
                        dynamic_cast<const CLI::ValidationError*>(&error) != nullptr;
  return quotable ? std::string(error.what())
                  : "bad command line (" + error.get_name() + "); see --help";
}

// A value compared byte for byte with what another system sends (a JWT's HS256 secret, a role
// name): a control character (the file's newline again) or a blank at either end fails every
// comparison. Blanks inside are the other system's choice (a passphrase, a Keycloak role name).
bool HasControlOrEdgeBlank(std::string_view value) {
  return (!value.empty() && (value.front() == ' ' || value.back() == ' ')) ||
         std::any_of(value.begin(), value.end(),
                     [](char c) { return static_cast<unsigned char>(c) < ' ' || c == 0x7f; });
}

const CLI::Validator kDecimal(
    [](std::string& value) -> std::string {
      const bool digits = !value.empty() && std::all_of(value.begin(), value.end(), [](char c) {
        return c >= '0' && c <= '9';
      });
      return digits && (value.size() == 1 || value[0] != '0')
                 ? std::string()
                 : "must be a non-negative decimal number without leading zeros";
    },
    "DECIMAL");

std::string DevJwtSecretPath(const std::string& data_dir) { return data_dir + "/jwt-dev.secret"; }

std::string Config::Describe() const {
  // The words present, one space apart: "hmac " + "" + " sync..." wrote "lago_webhook=hmac  sync"
  // (and "auth=HS256  service_tokens" without a JWKS file).
  auto words = [](std::initializer_list<std::string> parts) {
    std::string out;
    for (const std::string& part : parts) {
      if (part.empty()) continue;
      if (!out.empty()) out += ' ';
      out += part;
    }
    return out;
  };
  std::string auth = DevMode() ? "dev (HS256 secret in " + DevJwtSecretPath(data_dir) + ")"
                               : words({jwt_hs256_secret.empty() ? "" : "HS256",
                                        jwt_jwks_file.empty() ? "" : "JWKS " + jwt_jwks_file});
  return "data_dir=" + data_dir + " listen=" + listen_host + ":" + std::to_string(listen_port) +
         " kafka=" + kafka_brokers + " topic=" + kafka_topic +
         " kafka_message_max_bytes=" + std::to_string(kafka_message_max_bytes) +
         (kafka_properties_file.empty() ? "" : " kafka_properties_file=" + kafka_properties_file) +
         " auth=" + auth +
         " service_tokens=" + std::to_string(service_tokens.size()) +
         " stripe=" + (stripe_secret_key.empty() ? "off" : "on (" + stripe_api_base + ")") +
         " stripe_webhook_secrets=" + std::to_string(stripe_webhook_secrets.size()) +
         " lago_sink=" +
         (LagoSinkEnabled() ? "on (" + lago_api_url + ", code " + lago_billable_metric_code + ")"
                            : "off") +
         " lago_webhook=" +
         (lago_webhook_hmac_key.empty() && lago_webhook_public_key_file.empty()
              ? std::string("off")
              : words({lago_webhook_hmac_key.empty() ? "" : "hmac",
                       lago_webhook_public_key_file.empty() ? "" : "jwt",
                       lago_organization_id.empty() ? ""
                                                    : "organization " + lago_organization_id})) +
         " sync_interval_min_us=" + std::to_string(sync_interval_min_us);
}

ParseResult ParseConfig(int argc, const char* const* argv, Config* config) {
  ParseResult result;
  CLI::App app{"ledgerd: event-sourced billing ledger daemon"};
  app.set_version_flag("--version", "ledgerd 0.1.0");
  std::string listen = "127.0.0.1:8084", service_tokens, webhook_secrets, byok_base_urls;
  std::string master_key_previous_files;
  std::string core_dumps = "off";

  // Flags named in CONTRACT.md §1, each also an environment variable; the flag wins.
  app.add_option("--data-dir", config->data_dir, "RocksDB directory")->envname("LEDGER_DATA_DIR");
  app.add_option("--listen", listen, "HTTP host:port (port 0 = pick)")->envname("LEDGER_LISTEN");
  app.add_option("--kafka-brokers", config->kafka_brokers, "embedded | none | bootstrap servers")
      ->envname("LEDGER_KAFKA_BROKERS");
  app.add_option("--kafka-topic", config->kafka_topic, "topic for the outbox")
      ->envname("LEDGER_KAFKA_TOPIC");
  app.add_option("--kafka-message-max-bytes", config->kafka_message_max_bytes,
                 "largest CloudEvent published with its data (keep below the topic's "
                 "max.message.bytes); larger ones carry dataref instead")
      ->envname("LEDGER_KAFKA_MESSAGE_MAX_BYTES")
      ->check(kDecimal);
  app.add_option("--kafka-properties-file", config->kafka_properties_file,
                 "librdkafka properties (key=value lines) for the cluster's security")
      ->envname("LEDGER_KAFKA_PROPERTIES_FILE");
  app.add_option("--jwt-hs256-secret", config->jwt_hs256_secret, "HS256 secret")
      ->envname("LEDGER_JWT_HS256_SECRET");
  app.add_option("--jwt-jwks-file", config->jwt_jwks_file, "JWKS file (RS256/ES256)")
      ->envname("LEDGER_JWT_JWKS_FILE");
  app.add_option("--jwt-issuer", config->jwt_issuer, "required iss")->envname("LEDGER_JWT_ISSUER");
  app.add_option("--jwt-audience", config->jwt_audience, "required aud")
      ->envname("LEDGER_JWT_AUDIENCE");
  app.add_option("--admin-role", config->admin_role, "admin role name")
      ->envname("LEDGER_ADMIN_ROLE");
  app.add_option("--service-tokens", service_tokens, "name=token,...")
      ->envname("LEDGER_SERVICE_TOKENS");
  app.add_option("--stripe-secret-key", config->stripe_secret_key, "Stripe API key")
      ->envname("STRIPE_SECRET_KEY");
  app.add_option("--stripe-webhook-secret", webhook_secrets, "whsec_...,test:whsec_...")
      ->envname("STRIPE_WEBHOOK_SECRET");
  app.add_option("--stripe-api-base", config->stripe_api_base, "Stripe API base URL")
      ->envname("STRIPE_API_BASE");
  // Set but empty, the variable means what the flag given empty means: the account's default.
  // CLI11 takes an empty variable for an unset one, and the pinned default was sent instead.
  if (const char* version = std::getenv("STRIPE_API_VERSION");
      version != nullptr && *version == '\0') {
    config->stripe_api_version.clear();
  }
  app.add_option("--stripe-api-version", config->stripe_api_version,
                 "Stripe-Version sent with every call (\"\" = the account's default)")
      ->envname("STRIPE_API_VERSION");
  app.add_option("--stripe-success-url", config->stripe_success_url)->envname("STRIPE_SUCCESS_URL");
  app.add_option("--stripe-cancel-url", config->stripe_cancel_url)->envname("STRIPE_CANCEL_URL");
  app.add_option("--stripe-portal-return-url", config->stripe_portal_return_url)
      ->envname("STRIPE_PORTAL_RETURN_URL");
  app.add_option("--lago-webhook-hmac-key", config->lago_webhook_hmac_key)
      ->envname("LAGO_WEBHOOK_HMAC_KEY");
  app.add_option("--lago-webhook-public-key-file", config->lago_webhook_public_key_file)
      ->envname("LAGO_WEBHOOK_PUBLIC_KEY_FILE");
  app.add_option("--lago-webhook-issuer", config->lago_webhook_issuer,
                 "iss that jwt-signed Lago webhooks must carry (default: not checked)")
      ->envname("LAGO_WEBHOOK_ISSUER");
  app.add_option("--lago-organization-id", config->lago_organization_id,
                 "organization_id Lago webhooks must carry (default: any)")
      ->envname("LAGO_ORGANIZATION_ID");
  app.add_option("--lago-api-url", config->lago_api_url, "Lago API URL (enables the Lago sink)")
      ->envname("LAGO_API_URL");
  app.add_option("--lago-api-key", config->lago_api_key, "Lago API key")->envname("LAGO_API_KEY");
  app.add_option("--lago-billable-metric-code", config->lago_billable_metric_code,
                 "Lago billable metric code for usage events")
      ->envname("LAGO_BILLABLE_METRIC_CODE");
  app.add_option("--master-key-file", config->master_key_file, "BYOK key-encryption key")
      ->envname("LEDGER_MASTER_KEY_FILE");
  app.add_option("--master-key-previous-files", master_key_previous_files,
                 "file,... BYOK key-encryption keys rotated away from (re-wrapped at start)")
      ->envname("LEDGER_MASTER_KEY_PREVIOUS_FILES");
  app.add_option("--byok-base-urls", byok_base_urls,
                 "provider=url,... base URLs of the BYOK providers' APIs")
      ->envname("LEDGER_BYOK_BASE_URLS");
  app.add_option("--http-threads", config->http_threads, "HTTP worker threads (0 = auto)")
      ->envname("LEDGER_HTTP_THREADS")
      ->check(kDecimal);
  app.add_option("--sync-interval-min-us", config->sync_interval_min_us,
                 "least microseconds between the starts of two WAL syncs (0 = no pacing)")
      ->envname("LEDGER_SYNC_INTERVAL_MIN_US")
      ->check(kDecimal);
  app.add_option("--log-level", config->log_level, "trace|debug|info|warn|error")
      ->envname("LEDGER_LOG_LEVEL");
  app.add_option("--core-dumps", core_dumps,
                 "off|on: on lets a crash write a core file holding every secret (debugging)")
      ->envname("LEDGER_CORE_DUMPS");

  // Left in app.remaining() for UnexpectedArguments, not thrown with them in the message.
  app.allow_extras();
  try {
    app.name(argc > 0 ? argv[0] : "ledgerd");  // the help's usage line, as parse(argc, argv) did
    app.parse(ReversedArguments(argc, argv));
  } catch (const CLI::CallForHelp&) {
    result.exit_now = true;
    result.output = app.help();
    return result;
  } catch (const CLI::CallForVersion&) {
    result.exit_now = true;
    result.output = app.version() + "\n";
    return result;
  } catch (const CLI::ConversionError& e) {
    // e.what() is "Could not convert: --flag = value": name the setting by its variable.
    result.status = Bad(SettingNamed(app, e.what(), " ="), e.what());
    result.exit_code = kExitConfig;
    return result;
  } catch (const CLI::ValidationError& e) {
    // A failed check (kDecimal): "--flag: message".
    result.status = Bad(SettingNamed(app, e.what(), ":"), e.what());
    result.exit_code = kExitConfig;
    return result;
  } catch (const CLI::ParseError& e) {
    result.status = Status::InvalidArgument("bad_usage", UsageErrorMessage(e));
    result.exit_code = kExitUsage;
    return result;
  }
  if (!app.remaining().empty()) {
    result.status = Status::InvalidArgument("bad_usage", UnexpectedArguments(app.remaining()));
    result.exit_code = kExitUsage;
    return result;
  }
  // CLI11 takes an empty variable for an unset one: a variable that failed to expand would put
  // the store in ./data, the outbox on the embedded cluster, a production server in dev mode
  // (a local secret, the master key beside the log), publish to a secured cluster without its
  // credentials, take no jwt-signed Lago webhook, turn the JWT iss / aud check off (a token
  // minted for another service or by another issuer sharing the key would be taken), or let Lago
  // webhooks of every organization in, without a word. The flag given empty is the same mistake
  // (`--jwt-audience "$AUD"` with AUD unset). (Other secrets and URLs may be empty: that is how
  // a compose file leaves a feature off.)
  for (auto [name, flag] : {std::pair{"LEDGER_DATA_DIR", "--data-dir"},
                            std::pair{"LEDGER_LISTEN", "--listen"},
                            std::pair{"LEDGER_KAFKA_BROKERS", "--kafka-brokers"},
                            std::pair{"LEDGER_KAFKA_TOPIC", "--kafka-topic"},
                            std::pair{"LEDGER_KAFKA_PROPERTIES_FILE", "--kafka-properties-file"},
                            std::pair{"LEDGER_ADMIN_ROLE", "--admin-role"},
                            std::pair{"LEDGER_JWT_HS256_SECRET", "--jwt-hs256-secret"},
                            std::pair{"LEDGER_JWT_JWKS_FILE", "--jwt-jwks-file"},
                            std::pair{"LEDGER_JWT_ISSUER", "--jwt-issuer"},
                            std::pair{"LEDGER_JWT_AUDIENCE", "--jwt-audience"},
                            std::pair{"LEDGER_MASTER_KEY_FILE", "--master-key-file"},
                            std::pair{"LEDGER_MASTER_KEY_PREVIOUS_FILES",
                                      "--master-key-previous-files"},
                            std::pair{"LAGO_WEBHOOK_PUBLIC_KEY_FILE",
                                      "--lago-webhook-public-key-file"},
                            std::pair{"LAGO_ORGANIZATION_ID", "--lago-organization-id"}}) {
    result.status = CheckSettingNotEmpty(app, name, flag);
    if (!result.status.ok()) {
      result.exit_code = kExitConfig;
      return result;
    }
  }
  result.status =
      Validate(config, listen, service_tokens, webhook_secrets, byok_base_urls,
               master_key_previous_files, core_dumps);
  if (!result.status.ok()) result.exit_code = kExitConfig;
  return result;
}

namespace {

// Creates `path` (0600, O_EXCL) holding `bytes` random bytes as hex and a newline.
Status CreateHexSecretFile(const std::string& path, size_t bytes, std::string* hex) {
  std::string random(bytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(random.data()), static_cast<int>(bytes)) != 1) {
    return Status::Internal("RAND_bytes failed");
  }
  *hex = HexEncode(random);
  std::fill(random.begin(), random.end(), '\0');
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0) return Status::IOError("cannot create " + path);
  std::string line = *hex + "\n";
  bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size()) &&
            ::fsync(fd) == 0;
  ::close(fd);
  std::fill(line.begin(), line.end(), '\0');
  if (!ok) return Status::IOError("cannot write " + path);
  return Status::OK();
}

}  // namespace

Status ReadConfigFile(std::string_view setting, const std::string& path, size_t bytes_max,
                      std::string* contents) {
  auto bad = [&](const std::string& what) {
    return Status::Make(Code::kUnprocessable, "bad_config", std::string(setting) + ": " + what);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return bad("cannot read " + path + " (" + std::strerror(errno) + ")");
  std::string data(bytes_max + 1, '\0');
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      return bad("cannot read " + path + " (" + std::strerror(error) + ")");
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  if (got > bytes_max) {
    return bad(path + " is too large (over " + std::to_string(bytes_max) + " bytes)");
  }
  data.resize(got);
  *contents = std::move(data);
  return Status::OK();
}

Status LoadOrCreateDevSecret(const std::string& data_dir, std::string* secret) {
  const std::string path = DevJwtSecretPath(data_dir);
  Status s = ReadDevSecretFile(path, secret);
  if (!s.IsNotFound()) return s;
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  return CreateHexSecretFile(path, 32, secret);
}

Status ReadDevSecretFile(const std::string& path, std::string* secret) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return Status::NotFound(path + " does not exist");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    // Whoever can read it can mint admin tokens (the master key is held to the same rule).
    // Checked here, where ledgerd and `ledgerctl token` both read it: ledgerctl minted tokens
    // from a 0644 file that ledgerd refused to start with.
    return Status::Make(Code::kUnprocessable, "bad_config",
                        path + " is readable by group or others (chmod 600 it)");
  }
  std::string contents;
  LEDGER_RETURN_IF_ERROR(ReadConfigFile("the dev JWT secret", path, kSecretFileBytesMax, &contents));
  *secret = FirstLine(contents);
  Wipe(&contents);
  if (secret->size() < 32) {
    return Status::Make(Code::kUnprocessable, "bad_config",
                        path + " holds a secret under 32 characters (delete it: a new one is made)");
  }
  return Status::OK();
}

namespace {

// LoadOrCreateMasterKey for the file `setting` names ("LEDGER_MASTER_KEY_FILE", or an item of
// LEDGER_MASTER_KEY_PREVIOUS_FILES): its messages begin with `setting`.
Status LoadKeyEncryptionKey(const std::string& setting, const std::string& path, bool create,
                            bool required, std::string* key, bool* found) {
  *found = false;
  struct stat st {};
  std::string hex;
  if (::stat(path.c_str(), &st) != 0) {
    // Named explicitly, it must exist in dev mode too: `ledgerd --master-key-file
    // /nonexistent/mk` in dev mode created /nonexistent/ and a fresh key there (a mistyped path
    // or a mount that failed, papered over with a key nothing else has).
    if (required) {
      return Status::Make(Code::kUnprocessable, "bad_config",
                          setting + ": no file at " + ShownKeyPath(path) +
                              " (set explicitly: a missing mount is an error, not a start "
                              "without BYOK or with a new key)");
    }
    if (!create) return Status::OK();
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    LEDGER_RETURN_IF_ERROR(CreateHexSecretFile(path, 32, &hex));
  } else {
    if ((st.st_mode & 077) != 0) {
      return Status::Make(Code::kUnprocessable, "bad_config",
                          setting + ": " + path + " is readable by group or others (chmod 600 it)");
    }
    std::string contents;
    LEDGER_RETURN_IF_ERROR(ReadConfigFile(setting, path, kSecretFileBytesMax, &contents));
    hex = FirstLine(contents);
    Wipe(&contents);
  }
  Hash bytes;
  const bool ok = HexDecodeHash(hex, &bytes);
  std::fill(hex.begin(), hex.end(), '\0');
  if (!ok) {
    return Status::Make(Code::kUnprocessable, "bad_config",
                        setting + ": " + path + " must hold 64 hex digits (32 bytes)");
  }
  key->assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  bytes.fill(0);
  *found = true;
  return Status::OK();
}

}  // namespace

Status LoadOrCreateMasterKey(const std::string& path, bool create, bool required,
                             std::string* key, bool* found) {
  return LoadKeyEncryptionKey("LEDGER_MASTER_KEY_FILE", path, create, required, key, found);
}

Status LoadPreviousMasterKeys(const std::vector<std::string>& paths, std::string_view current_key,
                              std::vector<std::string>* keys) {
  keys->clear();
  Status s;
  for (size_t i = 0; i < paths.size() && s.ok(); ++i) {
    const std::string item = "LEDGER_MASTER_KEY_PREVIOUS_FILES: item " + std::to_string(i + 1);
    std::string key;
    bool found = false;
    s = LoadKeyEncryptionKey(item, paths[i], /*create=*/false, /*required=*/true, &key, &found);
    if (!s.ok()) break;
    // Named by its place and path, never by the key.
    if (key == current_key) {
      s = Bad(item, paths[i] + " holds the current key (LEDGER_MASTER_KEY_FILE's)");
    }
    for (size_t j = 0; j < keys->size() && s.ok(); ++j) {
      if ((*keys)[j] == key) {
        s = Bad(item, paths[i] + " holds the key of item " + std::to_string(j + 1));
      }
    }
    keys->push_back(std::move(key));
  }
  if (!s.ok()) {
    for (std::string& key : *keys) Wipe(&key);
    keys->clear();
  }
  return s;
}

Status CheckSettingNotEmpty(const CLI::App& app, const char* variable, const char* flag) {
  const char* value = std::getenv(variable);
  if (value != nullptr && *value == '\0' && app.count(flag) == 0) {
    return Bad(variable, "is set but empty (unset it for the default)");
  }
  // A non-empty variable counts too, so an empty result is the flag's.
  const CLI::Option* option = app.get_option(flag);
  if (option->count() > 0 && option->results().back().empty()) {
    return Bad(variable, std::string(flag) + " is given empty (leave it out for the default)");
  }
  return Status::OK();
}

Status ValidateJwtSettings(std::string_view hs256_secret, std::string_view issuer,
                           std::string_view audience, std::string_view admin_role) {
  if (!hs256_secret.empty() && hs256_secret.size() < 32) {
    return Bad("LEDGER_JWT_HS256_SECRET", "must be at least 32 bytes");
  }
  if (HasControlOrEdgeBlank(hs256_secret)) {
    return Bad("LEDGER_JWT_HS256_SECRET",
               "must not contain control characters or begin or end with a space");
  }
  if (admin_role.empty()) return Bad("LEDGER_ADMIN_ROLE", "must not be empty");
  if (HasControlOrEdgeBlank(admin_role)) {
    return Bad("LEDGER_ADMIN_ROLE",
               "must not contain control characters or begin or end with a space");
  }
  // Compared byte for byte with every token's iss / aud: `ledgerd ` or `ledgerd\n` (a value
  // pasted or read from a file with its newline) answered every request 401. Not repeated: the
  // message says what is wrong, the operator knows the value.
  for (auto [name, value] : {std::pair{"LEDGER_JWT_ISSUER", issuer},
                             std::pair{"LEDGER_JWT_AUDIENCE", audience}}) {
    if (HasControlOrEdgeBlank(value)) {
      return Bad(name, "must not contain control characters or begin or end with a space (no "
                       "token's claim would match it)");
    }
  }
  return Status::OK();
}

}  // namespace ledger::daemon
