#include "daemon/app.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "events/embedded_kafka.h"
#include "events/ledger.h"
#include "events/outbox.h"
#include "http/auth.h"
#include "http/byok_rotation.h"
#include "http/lago_client.h"
#include "http/lago_signature.h"
#include "http/lago_sink.h"
#include "http/lago_webhook_metrics.h"
#include "http/limits.h"
#include "http/routes.h"
#include "http/secret_box.h"
#include "http/server.h"
#include "http/stripe_client.h"
#include "projections/plan_catalog.h"
#include "projections/registry.h"
#include "projections/usage.h"

namespace ledger::daemon {

namespace {

Status AsConfigError(const std::string& setting, const Status& status) {
  if (status.ok()) return status;
  return Status::Make(Code::kUnprocessable, "bad_config", setting + ": " + status.message());
}

}  // namespace

class App::Impl {
 public:
  Status Start(const Config& config, const Clock* clock, const std::atomic<bool>* cancel);
  Status Stop(std::chrono::milliseconds outbox_flush_timeout);
  Status ReloadJwks();

  Config config_;
  const Clock* clock_ = nullptr;
  const std::atomic<bool>* cancel_ = nullptr;  // Start()'s
  // Dev mode: the data directory's lock, taken before the dev secret and the master key are
  // created in it, until OpenLedger() hands it to the Ledger.
  std::shared_ptr<DirLock> dir_lock_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<EmbeddedKafka> embedded_kafka_;
  std::unique_ptr<KafkaOutbox> outbox_;
  uint64_t outbox_listener_ = 0;  // Ledger::AddCommitListener id
  std::string kafka_bootstrap_;
  std::unique_ptr<http::Authenticator> authenticator_;
  std::unique_ptr<http::HttpStripeClient> stripe_;  // outlives server_
  std::unique_ptr<http::SecretBox> byok_box_;        // outlives server_
  // LEDGER_MASTER_KEY_PREVIOUS_FILES' keys, in its order; outlive server_.
  std::vector<std::unique_ptr<http::SecretBox>> byok_previous_boxes_;
  std::unique_ptr<http::HttpLagoClient> lago_client_;  // outlives lago_sink_
  std::unique_ptr<http::LagoSink> lago_sink_;
  http::LagoWebhookMetrics lago_webhook_metrics_;  // events.errors deliveries, by kind
  uint64_t lago_listener_ = 0;  // Ledger::AddCommitListener id
  http::RequestMetrics request_metrics_;
  projections::UsageMeter usage_meter_;  // the usage routes' access cache and counters
  http::AppContext context_;
  std::unique_ptr<http::HttpServer> server_;
  bool stopped_ = false;

 private:
  Status Cancelled() const;
  void CreateDataDir();
  Status OpenLedger();
  Status StartKafka();
  Status AdoptLegacyOutboxCheckpoint(const std::string& name);
  Status BuildAuthenticator();
  Status ReadJwksFile(std::string* jwks_json) const;
  Status BuildStripeClient();
  Status LoadByokKey();
  Status RotateByokKeys();
  Status LoadLagoWebhookKeys();
  Status ConfigureLago();
  Status StartHttp();
};

// A core file of a ledgerd that aborts (systemd-coredump, `ulimit -c unlimited`) held every
// secret in its memory: the master key, the JWT secret, the service tokens, Stripe's and Lago's
// keys, the BYOK keys being tested. Unless LEDGER_CORE_DUMPS=on the process is made
// non-dumpable -- no core file, and other processes of its user can no longer ptrace it or read
// its /proc/<pid>/mem or environ -- and its soft RLIMIT_CORE is 0 (systemd-coredump honours it
// where fs.suid_dumpable=2 dumps non-dumpable processes too). Never fails the start.
namespace {

void KeepSecretsOutOfCoreDumps(bool allowed) {
  if (allowed) {
    spdlog::warn("core dumps: on (LEDGER_CORE_DUMPS=on): a core file holds the master key and "
                 "every configured secret; turn it off once the crash is debugged");
    return;
  }
  rlimit core{};
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 || ::getrlimit(RLIMIT_CORE, &core) != 0) {
    spdlog::warn("core dumps: could not turn them off: {}", std::strerror(errno));
    return;
  }
  core.rlim_cur = 0;
  if (::setrlimit(RLIMIT_CORE, &core) != 0) {
    spdlog::warn("core dumps: could not set RLIMIT_CORE to 0: {}", std::strerror(errno));
  }
}

}  // namespace

// A data directory ledgerd creates is its user's alone (0700): it holds users' emails, Stripe's
// and Lago's webhooks as delivered, stored answers and sealed keys. One that exists is left as
// the operator made it; a failure here shows when the store opens.
void App::Impl::CreateDataDir() {
  std::error_code ec;
  if (std::filesystem::exists(config_.data_dir, ec) || ec) return;
  CreatePrivateDir(config_.data_dir).IgnoreError();
}

Status App::Impl::OpenLedger() {
  LedgerOptions options;
  options.path = config_.data_dir;
  options.folds = projections::AllFolds();
  options.side_families = projections::AllSideFamilies();
  options.clock = clock_;
  options.sync_interval_min = std::chrono::microseconds(config_.sync_interval_min_us);
  options.cancel = cancel_;
  options.dir_lock = std::move(dir_lock_);
  Status s = Ledger::Open(options, &ledger_);
  if (!s.ok()) return s;
  spdlog::info("ledger open at {}: head position {}", config_.data_dir, ledger_->Head().value());
  bool seeded = false;
  LEDGER_RETURN_IF_ERROR(projections::SeedPlanCatalog(ledger_.get(), &seeded));
  if (seeded) spdlog::info("plan catalog seeded with the initial plans");
  return Status::OK();
}

// Data directories from before the checkpoint was named for its destination kept it as
// "outbox.kafka": taken once as the configured real destination's (an upgrade in place publishes
// on where it stopped, not the whole log again), then zeroed so that a later change of
// destination does not take it too. The embedded cluster, new each run, leaves it.
Status App::Impl::AdoptLegacyOutboxCheckpoint(const std::string& name) {
  constexpr std::string_view kLegacy = "outbox.kafka";
  Position legacy, named;
  LEDGER_RETURN_IF_ERROR(ledger_->GetCheckpoint(kLegacy, &legacy));
  if (legacy.value() == 0) return Status::OK();
  LEDGER_RETURN_IF_ERROR(ledger_->GetCheckpoint(name, &named));
  if (named.value() == 0) {
    LEDGER_RETURN_IF_ERROR(ledger_->PutCheckpoint(name, legacy, /*sync=*/true));
    spdlog::info("outbox: took the checkpoint {} of {} as {}'s", legacy.value(), kLegacy, name);
  }
  return ledger_->PutCheckpoint(kLegacy, Position(0), /*sync=*/true);
}

Status App::Impl::StartKafka() {
  if (config_.kafka_brokers == "none") {
    spdlog::info("kafka publishing disabled (LEDGER_KAFKA_BROKERS=none)");
    return Status::OK();
  }
  if (config_.kafka_brokers == "embedded") {
    EmbeddedKafkaOptions options;
    options.topics = {config_.kafka_topic};
    LEDGER_RETURN_IF_ERROR(EmbeddedKafka::Open(options, &embedded_kafka_));
    kafka_bootstrap_ = embedded_kafka_->bootstrap_servers();
    spdlog::info("embedded kafka (librdkafka mock cluster) bootstrap={} topic={}; read it with: "
                 "kcat -C -b {} -t {}",
                 kafka_bootstrap_, config_.kafka_topic, kafka_bootstrap_, config_.kafka_topic);
    if (!config_.DevMode()) {
      spdlog::warn("embedded kafka: plaintext on {} without authentication: any local user can "
                   "read every event (emails, usage) and write or evict records; with JWT "
                   "configured this looks like production: set LEDGER_KAFKA_BROKERS to a real "
                   "cluster, or none",
                   kafka_bootstrap_);
    }
  } else {
    kafka_bootstrap_ = config_.kafka_brokers;
    spdlog::info("kafka bootstrap={} topic={}", kafka_bootstrap_, config_.kafka_topic);
  }
  OutboxOptions options;
  options.bootstrap_servers = kafka_bootstrap_;
  options.topic = config_.kafka_topic;
  // Named for the destination: pointed at another cluster or topic, the outbox publishes the log
  // there from the start instead of after what the old destination received. A real cluster is
  // known by its cluster id (any bootstrap list that reaches it; a topic there that never held a
  // record gets the whole log), taking over the checkpoint its bootstrap list had. The embedded
  // cluster starts empty with each process: it gets the whole log each time.
  const std::string by_brokers = OutboxCheckpointName(config_.kafka_brokers, config_.kafka_topic);
  if (embedded_kafka_ != nullptr) {
    options.checkpoint_name = by_brokers;
    LEDGER_RETURN_IF_ERROR(ledger_->PutCheckpoint(by_brokers, Position(0), /*sync=*/true));
  } else {
    LEDGER_RETURN_IF_ERROR(AdoptLegacyOutboxCheckpoint(by_brokers));
    options.checkpoint_per_cluster = true;
    options.adopt_checkpoint_name = by_brokers;
  }
  options.message_bytes_max = config_.kafka_message_max_bytes;
  options.kafka_config = config_.kafka_properties;
  Status opened = KafkaOutbox::Open(options, ledger_.get(), &outbox_);
  if (!opened.ok() && !config_.kafka_properties.empty() && opened.code() == Code::kInvalidArgument) {
    return AsConfigError("LEDGER_KAFKA_PROPERTIES_FILE", opened);  // a property librdkafka refused
  }
  LEDGER_RETURN_IF_ERROR(opened);
  KafkaOutbox* outbox = outbox_.get();
  outbox_listener_ = ledger_->AddCommitListener([outbox](Position) { outbox->Notify(); });
  return outbox_->Start();
}

Status App::Impl::BuildAuthenticator() {
  http::AuthOptions options;
  for (const auto& [name, token] : config_.service_tokens) {
    options.service_tokens.push_back(http::ServiceToken{name, token});
  }
  options.jwt.issuer = config_.jwt_issuer;
  options.jwt.audience = config_.jwt_audience;
  options.jwt.admin_role = config_.admin_role;
  if (config_.DevMode()) {
    LEDGER_RETURN_IF_ERROR(LoadOrCreateDevSecret(config_.data_dir, &options.jwt.hs256_secret));
    spdlog::warn("auth: DEV MODE — HS256 secret in {}; mint tokens with `ledgerctl token "
                 "--data-dir {} --sub alice --email alice@example.com [--admin]`. Set "
                 "LEDGER_JWT_HS256_SECRET or LEDGER_JWT_JWKS_FILE in production.",
                 DevJwtSecretPath(config_.data_dir), config_.data_dir);
  } else {
    options.jwt.hs256_secret = config_.jwt_hs256_secret;
    if (!config_.jwt_jwks_file.empty()) {
      LEDGER_RETURN_IF_ERROR(ReadJwksFile(&options.jwt.jwks_json));
    }
    spdlog::info("auth: production mode (HS256 {}, JWKS {})",
                 config_.jwt_hs256_secret.empty() ? "off" : "on",
                 config_.jwt_jwks_file.empty() ? "off" : config_.jwt_jwks_file);
  }
  return AsConfigError("LEDGER_JWT_JWKS_FILE / LEDGER_SERVICE_TOKENS",
                       http::Authenticator::Create(options, clock_, &authenticator_));
}

Status App::Impl::ReadJwksFile(std::string* jwks_json) const {
  LEDGER_RETURN_IF_ERROR(ReadConfigFile("LEDGER_JWT_JWKS_FILE", config_.jwt_jwks_file,
                                        http::limits::kJwksFileBytesMax, jwks_json));
  // An empty JWKS would silently accept no token at all.
  if (jwks_json->empty()) {
    return AsConfigError("LEDGER_JWT_JWKS_FILE",
                         Status::IOError(config_.jwt_jwks_file + " is empty"));
  }
  return Status::OK();
}

// A failed reload keeps the keys in use: tokens signed with them still pass, and the operator
// fixes the file and sends SIGHUP again. The messages name the file and the reason (a JWK by its
// kid at most), never key material.
Status App::Impl::ReloadJwks() {
  if (config_.DevMode() || config_.jwt_jwks_file.empty()) {
    spdlog::info("auth: SIGHUP ignored: no JWKS file is configured (LEDGER_JWT_JWKS_FILE)");
    return Status::Make(Code::kNotFound, "no_jwks", "no JWKS file is configured");
  }
  // Checked at start by the configuration (a FIFO put there since would block the signal wait).
  std::error_code ec;
  Status s = std::filesystem::is_regular_file(config_.jwt_jwks_file, ec)
                 ? Status::OK()
                 : AsConfigError("LEDGER_JWT_JWKS_FILE",
                                 Status::IOError(config_.jwt_jwks_file + " is not a regular file"));
  std::string jwks_json;
  if (s.ok()) s = ReadJwksFile(&jwks_json);
  if (s.ok()) {
    s = AsConfigError("LEDGER_JWT_JWKS_FILE", authenticator_->ReplaceJwks(std::move(jwks_json)));
  }
  if (!s.ok()) {
    spdlog::warn("auth: JWKS reload from {} failed, the keys in use stay: {}",
                 config_.jwt_jwks_file, s.message());
    return s;
  }
  std::string key_ids;
  for (const std::string& id : authenticator_->jwt()->key_ids()) {
    key_ids += (key_ids.empty() ? "" : ", ") + id;
  }
  spdlog::info("auth: JWKS reloaded from {}: key ids {}", config_.jwt_jwks_file, key_ids);
  return Status::OK();
}

Status App::Impl::BuildStripeClient() {
  context_.stripe_webhook_secrets = config_.stripe_webhook_secrets;
  context_.stripe_success_url = config_.stripe_success_url;
  context_.stripe_cancel_url = config_.stripe_cancel_url;
  context_.stripe_portal_return_url = config_.stripe_portal_return_url;
  // Webhook deliveries of the other mode are applied to nothing (stripe_webhook.h). The mode is
  // not a secret (the key is never logged).
  context_.stripe_livemode = http::StripeKeyLivemode(config_.stripe_secret_key);
  if (config_.stripe_secret_key.empty()) {
    spdlog::info("stripe: STRIPE_SECRET_KEY unset; Stripe-calling routes answer 503");
    return Status::OK();
  }
  http::StripeClientOptions options;
  options.api_base = config_.stripe_api_base;
  options.secret_key = config_.stripe_secret_key;
  options.api_version = config_.stripe_api_version;
  LEDGER_RETURN_IF_ERROR(
      AsConfigError("STRIPE_API_BASE", http::HttpStripeClient::Create(options, &stripe_)));
  context_.stripe = stripe_.get();
  const std::optional<bool> livemode = context_.stripe_livemode;
  spdlog::info("stripe: API at {} ({} mode), Stripe-Version {}", config_.stripe_api_base,
               !livemode ? "unknown key" : *livemode ? "live" : "test",
               config_.stripe_api_version.empty() ? "not sent (the account's default)"
                                                  : config_.stripe_api_version);
  return Status::OK();
}

// Lago: the webhook keys for POST /api/v1/webhooks/lago, and the sink (started here, after the
// ledger and before HTTP; stopped after HTTP and before the ledger closes) when LAGO_API_URL and
// LAGO_API_KEY are both set.
Status App::Impl::LoadLagoWebhookKeys() {
  context_.lago_webhook_hmac_key = config_.lago_webhook_hmac_key;
  // Lago signs `iss` with its own LAGO_API_URL, often a public address other than the one the
  // sink calls: checked only when named (the RS256 signature is what authenticates).
  context_.lago_webhook_issuer = config_.lago_webhook_issuer;
  context_.lago_organization_id = config_.lago_organization_id;
  context_.lago_webhook_metrics = &lago_webhook_metrics_;
  context_.metrics_renderers.push_back(
      [metrics = &lago_webhook_metrics_](std::string* out) { metrics->RenderMetrics(out); });
  if (config_.lago_webhook_public_key_file.empty()) return Status::OK();
  std::string contents;
  LEDGER_RETURN_IF_ERROR(ReadConfigFile("LAGO_WEBHOOK_PUBLIC_KEY_FILE",
                                        config_.lago_webhook_public_key_file,
                                        http::limits::kLagoPublicKeyFileBytesMax, &contents));
  return AsConfigError("LAGO_WEBHOOK_PUBLIC_KEY_FILE",
                       http::LoadLagoPublicKey(contents, &context_.lago_webhook_public_key_pem));
}

Status App::Impl::ConfigureLago() {
  spdlog::info("lago webhooks: hmac {}, jwt {} (iss checked: {}), organization: {}",
               config_.lago_webhook_hmac_key.empty() ? "off" : "on",
               config_.lago_webhook_public_key_file.empty() ? "off" : "on",
               context_.lago_webhook_issuer.empty() ? "no" : context_.lago_webhook_issuer,
               config_.lago_organization_id.empty() ? "any" : config_.lago_organization_id);
  // Lago signs jwt deliveries with its instance-wide RSA key: a valid signature says "some
  // organization on this Lago instance", so on a shared Lago another tenant's webhooks (and
  // their invoices and subscriptions for customers with our user ids) would be taken as ours.
  if (!config_.lago_webhook_public_key_file.empty() && config_.lago_organization_id.empty()) {
    spdlog::warn("lago webhooks: jwt mode without LAGO_ORGANIZATION_ID accepts deliveries signed "
                 "for any organization of that Lago instance (one RSA key signs them all); set "
                 "LAGO_ORGANIZATION_ID to accept only yours");
  }
  if (!config_.LagoSinkEnabled()) {
    if (!config_.lago_api_url.empty()) {
      spdlog::warn("lago sink: LAGO_API_URL is set but LAGO_API_KEY is not; usage is not sent "
                   "to Lago");
    }
    context_.sink_statuses.push_back([] {
      http::SinkStatus status;
      status.name = "lago";
      return status;
    });
    return Status::OK();
  }
  http::LagoClientOptions client_options;
  client_options.api_url = config_.lago_api_url;
  client_options.api_key = config_.lago_api_key;
  LEDGER_RETURN_IF_ERROR(
      AsConfigError("LAGO_API_URL", http::HttpLagoClient::Create(client_options, &lago_client_)));
  http::LagoSinkOptions options;
  options.billable_metric_code = config_.lago_billable_metric_code;
  LEDGER_RETURN_IF_ERROR(
      http::LagoSink::Open(options, ledger_.get(), lago_client_.get(), &lago_sink_));
  http::LagoSink* sink = lago_sink_.get();
  lago_listener_ = ledger_->AddCommitListener([sink](Position) { sink->Notify(); });
  LEDGER_RETURN_IF_ERROR(lago_sink_->Start());
  context_.sink_statuses.push_back([sink] {
    http::LagoSinkStatus s = sink->GetStatus();
    http::SinkStatus status;
    status.name = "lago";
    status.enabled = true;
    status.state = s.state;
    status.checkpoint_position = s.checkpoint.value();
    status.lag_events = s.lag;
    status.last_error = s.last_error;
    return status;
  });
  context_.metrics_renderers.push_back([sink](std::string* out) { sink->RenderMetrics(out); });
  spdlog::info("lago sink: sending usage to {} as billable metric {}", config_.lago_api_url,
               config_.lago_billable_metric_code);
  return Status::OK();
}

// The BYOK key-encryption key: at its default place, created in dev mode; otherwise, when the
// default file is missing, the BYOK routes that seal or open a key answer 503 (a bad file, or a
// missing file that LEDGER_MASTER_KEY_FILE names, in any mode, is an error: exit 78).
Status App::Impl::LoadByokKey() {
  context_.byok_base_urls = config_.byok_base_urls;
  std::string key;
  bool found = false;
  std::error_code ec;
  const bool existed = std::filesystem::exists(config_.master_key_file, ec);
  // Dev mode creates a missing key, but not to rotate to: a fresh key beside the log would seal
  // every re-wrapped data key under a key any copy of the data directory holds.
  LEDGER_RETURN_IF_ERROR(LoadOrCreateMasterKey(
      config_.master_key_file, config_.DevMode() && config_.master_key_previous_files.empty(),
      config_.master_key_file_given, &key, &found));
  if (!found) {
    // Keys to rotate away from, and none to rotate to: the rotation would be skipped unsaid.
    if (!config_.master_key_previous_files.empty()) {
      return Status::Make(Code::kUnprocessable, "bad_config",
                          "LEDGER_MASTER_KEY_PREVIOUS_FILES is set but there is no current key: "
                          "no file at " + config_.master_key_file + " (LEDGER_MASTER_KEY_FILE)");
    }
    spdlog::warn("byok: no key-encryption key at {} (LEDGER_MASTER_KEY_FILE); adding and testing "
                 "BYOK keys answers 503 and BYOK shows as not available until one is configured",
                 config_.master_key_file);
    return Status::OK();
  }
  std::vector<std::string> previous;
  Status s = LoadPreviousMasterKeys(config_.master_key_previous_files, key, &previous);
  if (s.ok()) s = http::SecretBox::Create(key, &byok_box_);
  http::WipeSecret(&key);
  for (std::string& old : previous) {
    std::unique_ptr<http::SecretBox> box;
    if (s.ok()) s = http::SecretBox::Create(old, &box);
    http::WipeSecret(&old);
    if (box != nullptr) byok_previous_boxes_.push_back(std::move(box));
  }
  LEDGER_RETURN_IF_ERROR(s);
  context_.byok_box = byok_box_.get();
  spdlog::info("byok: key-encryption key {} {} {}", byok_box_->key_id(),
               existed ? "from" : "created (dev mode) in", config_.master_key_file);
  for (size_t i = 0; i < byok_previous_boxes_.size(); ++i) {
    context_.byok_previous_boxes.push_back(byok_previous_boxes_[i].get());
    spdlog::info("byok: previous key-encryption key {} from {}", byok_previous_boxes_[i]->key_id(),
                 config_.master_key_previous_files[i]);
  }
  return Status::OK();
}

// Master-key rotation (http/byok_rotation.h), before the HTTP server serves: the data keys
// wrapped under a previous key are wrapped under the current one. Logs ids and counts only.
Status App::Impl::RotateByokKeys() {
  if (byok_box_ == nullptr) return Status::OK();
  http::ByokRotationReport report;
  Status s = http::RotateByokDataKeys(ledger_.get(), *byok_box_, context_.byok_previous_boxes,
                                      http::kByokRewrapBatchRows, &report, cancel_);
  for (const auto& [old_id, count] : report.rewrapped) {
    spdlog::info("byok: re-wrapped {} data keys from key {} to {}", count, old_id,
                 byok_box_->key_id());
  }
  if (!s.ok()) {
    // What was re-wrapped stays so; the next start re-wraps the rest.
    spdlog::error("byok: re-wrapping the data keys under key {} failed: {}", byok_box_->key_id(),
                  s.ToString());
    return s;
  }
  if (report.unopenable > 0) {
    spdlog::warn("byok: {} data keys open under no configured key-encryption key (neither {} nor "
                 "a LEDGER_MASTER_KEY_PREVIOUS_FILES key): their keys' tests answer 409 "
                 "key_unreadable until users add them again",
                 report.unopenable, byok_box_->key_id());
  }
  for (const auto& [kek_id, count] : report.sealed_under_kek) {
    if (kek_id == byok_box_->key_id()) continue;
    bool configured = false;
    for (const http::SecretBox* old : context_.byok_previous_boxes) {
      configured = configured || old->key_id() == kek_id;
    }
    if (configured) {
      spdlog::warn("byok: {} keys added before data keys are sealed under previous key {} itself "
                   "(they cannot be re-wrapped): keep {} in LEDGER_MASTER_KEY_PREVIOUS_FILES or "
                   "have users add them again",
                   count, kek_id, kek_id);
    } else {
      spdlog::warn("byok: {} keys added before data keys are sealed under key {}, which is not "
                   "configured: their tests answer 409 key_unreadable until users add them again "
                   "(or {} is listed in LEDGER_MASTER_KEY_PREVIOUS_FILES)",
                   count, kek_id, kek_id);
    }
  }
  // What the operator waits for before dropping a previous key from the list.
  for (const http::SecretBox* old : context_.byok_previous_boxes) {
    const auto v1 = report.sealed_under_kek.find(old->key_id());
    if (v1 == report.sealed_under_kek.end()) {
      spdlog::info("byok: previous key {}: 0 data keys left under it and no key sealed under it; "
                   "it may be dropped from LEDGER_MASTER_KEY_PREVIOUS_FILES",
                   old->key_id());
    }
  }
  return Status::OK();
}

Status App::Impl::StartHttp() {
  context_.ledger = ledger_.get();
  context_.clock = clock_;
  context_.request_metrics = &request_metrics_;
  context_.usage_meter = &usage_meter_;
  context_.metrics_renderers.push_back(
      [meter = &usage_meter_](std::string* out) { meter->RenderMetrics(out); });
  if (outbox_ != nullptr) {
    KafkaOutbox* outbox = outbox_.get();
    context_.outbox_status = [outbox] {
      OutboxStatus s = outbox->GetStatus();
      http::OutboxStatus out;
      out.enabled = true;
      out.state = s.kafka_state;
      out.published_position = s.checkpoint.value();
      out.lag_events = s.lag;
      out.last_error = s.last_error;
      return out;
    };
    context_.metrics_renderers.push_back([outbox](std::string* out) { outbox->RenderMetrics(out); });
  }
  http::RouteTable routes;
  http::AddAllRoutes(context_, &routes);
  http::HttpServerOptions options;
  options.host = config_.listen_host;
  options.port = config_.listen_port;
  if (config_.http_threads != 0) options.threads = config_.http_threads;
  LEDGER_RETURN_IF_ERROR(http::HttpServer::Create(options, std::move(routes),
                                                  authenticator_.get(), &request_metrics_,
                                                  &server_));
  LEDGER_RETURN_IF_ERROR(HttpStartFailure(server_->Start()));
  spdlog::info("listening on http://{}:{} ({} worker threads)", config_.listen_host,
               server_->port(), options.threads);
  return Status::OK();
}

Status App::Impl::Cancelled() const {
  if (cancel_ == nullptr || !cancel_->load()) return Status::OK();
  return Status::Unavailable("startup_cancelled", "the startup was cancelled");
}

Status App::Impl::Start(const Config& config, const Clock* clock,
                        const std::atomic<bool>* cancel) {
  config_ = config;
  clock_ = clock != nullptr ? clock : SystemClock::Default();
  cancel_ = cancel;
  spdlog::info("ledgerd starting: {}", config_.Describe());
  // Before any secret file is read.
  KeepSecretsOutOfCoreDumps(config_.core_dumps);
  // What only reads files (the JWKS too, and a master key file named explicitly, which is never
  // created) is refused before the data directory is touched; in dev mode the dev secret and
  // the master key at its default place are created in it, once its lock is held: a second
  // ledgerd in dev mode beside a running one (exit 74) would leave them behind, and the running
  // one's next start would take that master key up.
  LEDGER_RETURN_IF_ERROR(BuildStripeClient());
  LEDGER_RETURN_IF_ERROR(LoadLagoWebhookKeys());
  const bool key_only_read = !config_.DevMode() || config_.master_key_file_given;
  if (key_only_read) LEDGER_RETURN_IF_ERROR(LoadByokKey());
  if (!config_.DevMode()) {
    LEDGER_RETURN_IF_ERROR(BuildAuthenticator());
    CreateDataDir();
  } else {
    CreateDataDir();
    LEDGER_RETURN_IF_ERROR(DirLock::Lock(config_.data_dir, &dir_lock_));
    LEDGER_RETURN_IF_ERROR(BuildAuthenticator());
  }
  if (!key_only_read) LEDGER_RETURN_IF_ERROR(LoadByokKey());
  {
    // An open-file limit that leaves the HTTP server no connection is refused before the store
    // is opened (and its projections caught up); Start() checks it again with the store's files.
    size_t connections_max = 0;
    LEDGER_RETURN_IF_ERROR(HttpStartFailure(http::ConnectionsMaxWithinDescriptorLimit(
        http::limits::kOpenConnectionsMax,
        config_.http_threads != 0 ? config_.http_threads : http::DefaultServerThreads(),
        &connections_max)));
  }
  LEDGER_RETURN_IF_ERROR(Cancelled());
  LEDGER_RETURN_IF_ERROR(OpenLedger());  // reads `cancel` while the projections catch up
  LEDGER_RETURN_IF_ERROR(Cancelled());
  LEDGER_RETURN_IF_ERROR(RotateByokKeys());
  LEDGER_RETURN_IF_ERROR(StartKafka());
  LEDGER_RETURN_IF_ERROR(ConfigureLago());
  LEDGER_RETURN_IF_ERROR(Cancelled());
  return StartHttp();
}

Status App::Impl::Stop(std::chrono::milliseconds outbox_flush_timeout) {
  if (stopped_) return Status::OK();
  stopped_ = true;
  // HTTP first: Stop() returns when the in-flight requests are done (one whose head had arrived
  // is read to its end and answered, so its append lands before the ledger closes) -- each of a
  // request's Stripe calls may take StripeClientOptions::deadline_ms (30 s), and a checkout makes
  // several; the rest are held to the server's timeouts. A supervisor's SIGKILL meanwhile loses nothing
  // answered (synced), and the sinks resend from their checkpoints.
  if (server_ != nullptr) server_->Stop();
  // Then one budget for the Lago sink and the outbox together (the README's "at most" is the
  // sum), counted from the end of that drain: counted from the start, a checkout waiting 30 s
  // for Stripe took all of it and the outbox got none, with Kafka healthy. A shutdown takes at
  // most the longest in-flight request, then `outbox_flush_timeout`, then the memtable flush.
  const auto deadline = std::chrono::steady_clock::now() + outbox_flush_timeout;
  auto remaining = [deadline] {
    return std::max(std::chrono::milliseconds(0),
                    std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()));
  };
  Status result;
  if (lago_sink_ != nullptr) {
    Status s = lago_sink_->Stop(remaining());
    if (!s.ok()) spdlog::warn("lago sink stopped with usage unsent: {}", s.ToString());
    ledger_->RemoveCommitListener(lago_listener_);
  }
  if (outbox_ != nullptr) {
    Status s = outbox_->Stop(remaining());
    if (!s.ok()) spdlog::warn("outbox stopped with events unpublished: {}", s.ToString());
    OutboxStatus status = outbox_->GetStatus();
    spdlog::info("outbox stopped at position {} (lag {})", status.checkpoint.value(), status.lag);
    ledger_->RemoveCommitListener(outbox_listener_);
  }
  if (ledger_ != nullptr) {
    result = ledger_->Flush();
    if (!result.ok()) spdlog::error("flush at shutdown failed: {}", result.ToString());
  }
  outbox_.reset();
  lago_sink_.reset();
  lago_client_.reset();
  embedded_kafka_.reset();
  server_.reset();
  stripe_.reset();
  ledger_.reset();
  return result;
}

App::App(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

App::~App() {
  if (impl_ != nullptr) impl_->Stop(std::chrono::milliseconds(0)).IgnoreError();
}

Status App::Start(const Config& config, const Clock* clock, std::unique_ptr<App>* out,
                  const std::atomic<bool>* cancel) {
  auto impl = std::make_unique<Impl>();
  Status s = impl->Start(config, clock, cancel);
  if (!s.ok()) {
    const Status stopped = impl->Stop(std::chrono::milliseconds(0));
    return StartFailure(s, stopped);
  }
  out->reset(new App(std::move(impl)));
  return Status::OK();
}

Status App::Stop(std::chrono::milliseconds outbox_flush_timeout) {
  return impl_->Stop(outbox_flush_timeout);
}

Status App::ReloadJwks() { return impl_->ReloadJwks(); }

bool App::serving() const { return impl_->server_ != nullptr && impl_->server_->serving(); }

int WaitForShutdown(App& app, const sigset_t& signals) {
  // A dead accept loop is polled for: nothing in the server can interrupt a sigwait, and a
  // daemon that sat in one with its port dark was never restarted (Restart=on-failure needs an
  // exit). 100 ms of a port refusing connections is nothing next to the restart itself.
  const timespec tick{0, 100'000'000};
  while (app.serving()) {
    const int received = ::sigtimedwait(&signals, nullptr, &tick);
    if (received == SIGHUP) {
      app.ReloadJwks().IgnoreError();  // logged; a failed reload keeps the keys in use
      continue;
    }
    if (received > 0) return received;
  }
  // A signal that arrived in the tick the loop died is taken here: left pending, main's "second
  // signal" watcher took it at once for an impatient operator's and exited 143 mid-shutdown.
  const timespec now{0, 0};
  for (;;) {
    const int pending = ::sigtimedwait(&signals, nullptr, &now);
    if (pending <= 0) return 0;
    if (pending != SIGHUP) return pending;  // a reload is moot now
  }
}

int App::http_port() const { return impl_->server_ != nullptr ? impl_->server_->port() : 0; }

std::string App::kafka_bootstrap() const { return impl_->kafka_bootstrap_; }

OpenFilesLimit RaiseOpenFilesLimit() {
  OpenFilesLimit result;
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error = errno;
    return result;
  }
  result.soft_before = result.soft = limit.rlim_cur;
  result.hard = limit.rlim_max;
  rlim_t target = limit.rlim_max;
  if (target == RLIM_INFINITY) {
    // The kernel refuses a soft limit above fs.nr_open.
    std::ifstream nr_open("/proc/sys/fs/nr_open");
    uint64_t value = 0;
    if (!(nr_open >> value) || value == 0) return result;
    target = static_cast<rlim_t>(value);
  }
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur >= target) return result;
  limit.rlim_cur = target;
  if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
    result.error = errno;
    return result;
  }
  result.soft = target;
  return result;
}

Status HttpStartFailure(const Status& status) {
  // An address that cannot be bound (no such host, port in use) is a bad LEDGER_LISTEN: 78. An
  // event loop that could not start (out of file handles or memory) is not: 78 tells a
  // supervisor not to retry.
  if (status.problem() == "listen_failed") return AsConfigError("LEDGER_LISTEN", status);
  // Nor does a restart help an open-file limit too low for the worker threads and connections.
  if (status.problem() == "descriptor_limit") {
    return AsConfigError("RLIMIT_NOFILE (ulimit -n, LimitNOFILE=)", status);
  }
  return status;
}

Status StartFailure(const Status& start, const Status& stopped) {
  // A cancelled start exits 0 (main.cc): as after a crash, the next start goes on from there.
  // Unless the flush that closes the store failed: that is the storage error a clean shutdown
  // reports with 74, and a supervisor must see it rather than a clean exit.
  const bool cancelled =
      start.problem() == "startup_cancelled" || start.problem() == "open_cancelled";
  if (cancelled && !stopped.ok()) return stopped;
  return start;
}

int ExitCodeFor(const Status& status) {
  // The ledger's writer refuses every append after a failed write ("storage_degraded"): at start
  // (a projection's catch-up, the BYOK re-wrap) or at stop that is a storage error, as the write
  // itself was, not an internal one.
  if (status.problem() == "storage_degraded") return kExitStorage;
  switch (status.code()) {
    case Code::kOk:
      return kExitOk;
    case Code::kIOError:
    case Code::kCorruption:
      return kExitStorage;
    case Code::kUnprocessable:
    case Code::kInvalidArgument:
      return kExitConfig;
    default:
      return kExitInternal;
  }
}

}  // namespace ledger::daemon
