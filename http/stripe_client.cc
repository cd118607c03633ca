#include "http/stripe_client.h"

#include "http/base_url.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <random>
#include <thread>

#include "events/types.h"
#include "http/base64.h"
#include "http/call_deadline.h"
#include "projections/stripe_webhook.h"
#include "projections/json_util.h"

namespace ledger::http {

// ---- Form encoding ----------------------------------------------------------------------------

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

Status Decode(std::string_view text, std::string* out) {
  out->clear();
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '+') {
      out->push_back(' ');
    } else if (c == '%') {
      int hi = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
      int lo = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
      if (hi < 0 || lo < 0) return Status::InvalidArgument("invalid_form", "bad % escape");
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out->push_back(c);
    }
  }
  return Status::OK();
}

}  // namespace

std::string FormUrlEncode(const FormParams& params) {
  std::string out;
  for (const auto& [key, value] : params) {
    if (!out.empty()) out.push_back('&');
    AppendPercentEncoded(key, "[]", &out);
    out.push_back('=');
    AppendPercentEncoded(value, "", &out);
  }
  return out;
}

Status FormUrlDecode(std::string_view body, FormParams* out) {
  out->clear();
  size_t start = 0;
  while (start <= body.size()) {
    size_t end = body.find('&', start);
    if (end == std::string_view::npos) end = body.size();
    std::string_view pair = body.substr(start, end - start);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      std::string key;
      std::string value;
      LEDGER_RETURN_IF_ERROR(Decode(pair.substr(0, eq), &key));
      if (eq != std::string_view::npos) LEDGER_RETURN_IF_ERROR(Decode(pair.substr(eq + 1), &value));
      out->emplace_back(std::move(key), std::move(value));
    }
    start = end + 1;
  }
  return Status::OK();
}

bool IsStripeId(std::string_view id) { return projections::IsStripeId(id); }

// ---- Secrets and keys -------------------------------------------------------------------------

std::string RedactStripeSecrets(std::string_view text, std::string_view secret) {
  std::string s(text);
  if (!secret.empty()) {
    for (size_t at = s.find(secret); at != std::string::npos; at = s.find(secret, at)) {
      s.replace(at, secret.size(), "[redacted]");
      at += 10;
    }
  }
  // sk_live_..., sk_test_..., rk_..., whsec_..., and redacted forms such as sk_test_****1234.
  static constexpr std::string_view kPrefixes[] = {"sk_live_", "sk_test_", "rk_live_", "rk_test_",
                                                   "whsec_"};
  for (std::string_view prefix : kPrefixes) {
    for (size_t at = s.find(prefix); at != std::string::npos; at = s.find(prefix, at)) {
      size_t end = at + prefix.size();
      while (end < s.size() && (std::isalnum(static_cast<unsigned char>(s[end])) ||
                                s[end] == '*' || s[end] == '_')) {
        ++end;
      }
      s.replace(at, end - at, "[redacted]");
      at += 10;
    }
  }
  return projections::Truncated(s, 300);
}

std::optional<bool> StripeKeyLivemode(std::string_view secret_key) {
  for (std::string_view live : {"sk_live_", "rk_live_"}) {
    if (secret_key.substr(0, live.size()) == live) return true;
  }
  for (std::string_view test : {"sk_test_", "rk_test_"}) {
    if (secret_key.substr(0, test.size()) == test) return false;
  }
  return std::nullopt;
}

std::string StripeIdempotencyKey(std::string_view operation, std::string_view user_id,
                                 std::string_view seed) {
  std::string material;
  for (std::string_view part : {operation, user_id, seed}) {
    material.append(std::to_string(part.size()));
    material.push_back(':');
    material.append(part);
  }
  Hash digest = Sha256(material);
  std::string key = "ledgerd-";
  key.append(operation.substr(0, 64));
  key.push_back('-');
  key.append(HexEncode(digest));
  return key;  // <= 8 + 64 + 1 + 64 bytes
}

// ---- The client -------------------------------------------------------------------------------

namespace {

constexpr std::string_view kFormContentType = "application/x-www-form-urlencoded";
constexpr size_t kLookupKeysPerCall = 10;
constexpr size_t kCancellationCommentBytesMax = 5000;  // Stripe's bound on cancellation_details

// The outcome of one HTTP exchange with Stripe, after retries.
struct Exchange {
  int http_status = 0;  // 0: no answer
  std::string body;
};

std::string_view StringMember(const rapidjson::Value& object, const char* name) {
  if (!object.IsObject()) return {};
  auto it = object.FindMember(name);
  if (it == object.MemberEnd() || !it->value.IsString()) return {};
  return std::string_view(it->value.GetString(), it->value.GetStringLength());
}

std::optional<int64_t> IntMember(const rapidjson::Value& object, const char* name) {
  if (!object.IsObject()) return std::nullopt;
  auto it = object.FindMember(name);
  if (it == object.MemberEnd() || !it->value.IsInt64()) return std::nullopt;
  return it->value.GetInt64();
}

bool BoolMember(const rapidjson::Value& object, const char* name) {
  if (!object.IsObject()) return false;
  auto it = object.FindMember(name);
  return it != object.MemberEnd() && it->value.IsBool() && it->value.GetBool();
}

const rapidjson::Value* ObjectMember(const rapidjson::Value& object, const char* name) {
  if (!object.IsObject()) return nullptr;
  auto it = object.FindMember(name);
  if (it == object.MemberEnd() || !it->value.IsObject()) return nullptr;
  return &it->value;
}

// The "data" array of a Stripe list, or nullptr.
const rapidjson::Value* ListData(const rapidjson::Value& list) {
  if (!list.IsObject()) return nullptr;
  auto it = list.FindMember("data");
  if (it == list.MemberEnd() || !it->value.IsArray()) return nullptr;
  return &it->value;
}

Status Malformed(std::string_view what) {
  return Status::Make(Code::kBadGateway, "stripe_error",
                      "Stripe answered with an unexpected " + std::string(what));
}

Status ParseSubscription(const rapidjson::Value& doc, StripeSubscription* out) {
  *out = StripeSubscription{};
  out->id = std::string(StringMember(doc, "id"));
  if (out->id.empty()) return Malformed("subscription object");
  // `customer` is an id, or an object when expanded.
  out->customer = std::string(StringMember(doc, "customer"));
  if (out->customer.empty()) {
    if (const rapidjson::Value* c = ObjectMember(doc, "customer")) {
      out->customer = std::string(StringMember(*c, "id"));
    }
  }
  out->status = std::string(StringMember(doc, "status"));
  out->cancel_at_period_end = BoolMember(doc, "cancel_at_period_end");
  out->cancel_at = IntMember(doc, "cancel_at");
  out->current_period_end = IntMember(doc, "current_period_end");
  out->ended_at = IntMember(doc, "ended_at");
  if (const rapidjson::Value* details = ObjectMember(doc, "cancellation_details")) {
    out->cancellation_comment = std::string(StringMember(*details, "comment"));  // null: ""
  }
  // `schedule` is an id, an object when expanded, or null.
  out->schedule = std::string(StringMember(doc, "schedule"));
  if (out->schedule.empty()) {
    if (const rapidjson::Value* schedule = ObjectMember(doc, "schedule")) {
      out->schedule = std::string(StringMember(*schedule, "id"));
    }
  }
  if (const rapidjson::Value* metadata = ObjectMember(doc, "metadata")) {
    for (const auto& member : metadata->GetObject()) {
      if (member.value.IsString()) {
        out->metadata[member.name.GetString()] = member.value.GetString();
      }
    }
  }
  if (const rapidjson::Value* items = ObjectMember(doc, "items")) {
    if (const rapidjson::Value* data = ListData(*items)) {
      for (const rapidjson::Value& item : data->GetArray()) {
        StripeSubscriptionItem parsed;
        parsed.id = std::string(StringMember(item, "id"));
        if (const rapidjson::Value* price = ObjectMember(item, "price")) {
          parsed.price_id = std::string(StringMember(*price, "id"));
          if (const rapidjson::Value* recurring = ObjectMember(*price, "recurring")) {
            parsed.interval = std::string(StringMember(*recurring, "interval"));
          }
        }
        // Since API version 2025-03-31 the billing period lives on the items.
        if (!out->current_period_end.has_value()) {
          out->current_period_end = IntMember(item, "current_period_end");
        }
        out->items.push_back(std::move(parsed));
      }
    }
  }
  return Status::OK();
}

Status ParsePrice(const rapidjson::Value& doc, StripePrice* out) {
  *out = StripePrice{};
  out->id = std::string(StringMember(doc, "id"));
  if (out->id.empty()) return Malformed("price object");
  out->product = std::string(StringMember(doc, "product"));
  if (out->product.empty()) {
    if (const rapidjson::Value* p = ObjectMember(doc, "product")) {
      out->product = std::string(StringMember(*p, "id"));
    }
  }
  out->currency = std::string(StringMember(doc, "currency"));
  out->lookup_key = std::string(StringMember(doc, "lookup_key"));
  if (const rapidjson::Value* recurring = ObjectMember(doc, "recurring")) {
    out->interval = std::string(StringMember(*recurring, "interval"));
    out->interval_count = IntMember(*recurring, "interval_count").value_or(0);
  }
  out->unit_amount_or_none = IntMember(doc, "unit_amount");
  out->unit_amount = out->unit_amount_or_none.value_or(0);
  out->active = BoolMember(doc, "active");
  return Status::OK();
}

void AppendMetadata(std::string_view prefix,
                    const std::vector<std::pair<std::string, std::string>>& metadata,
                    FormParams* form) {
  for (const auto& [key, value] : metadata) {
    form->emplace_back(std::string(prefix) + "[" + key + "]", value);
  }
}

Status CheckId(std::string_view what, std::string_view id) {
  if (IsStripeId(id)) return Status::OK();
  return Status::InvalidArgument("invalid_argument", std::string(what) + " is not a Stripe id");
}

}  // namespace

struct HttpStripeClient::Impl {
  StripeClientOptions options;
  BaseUrl base;
  // RequestMarker's key: HMAC-SHA256(secret key, a label), so a marker is keyed by no secret
  // that authenticates anything at Stripe.
  std::string marker_key;

  ~Impl() {
    if (!marker_key.empty()) OPENSSL_cleanse(marker_key.data(), marker_key.size());
  }

  // Sends one request with retries. `form` is null for GET/DELETE. On OK, `*exchange` holds
  // Stripe's answer (any status); the error statuses of StripeApi are derived by Check().
  Status Send(const char* method, const std::string& path, const FormParams* form,
              std::string_view idempotency_key, Exchange* exchange) const;
  // One attempt, ended when `remaining_ms` (what is left of the call's deadline) has passed,
  // however the answer trickles in. Returns false with `*error` set when there was no HTTP
  // answer; an attempt cut off at the deadline is a read timeout (httplib::Error::Read).
  bool Attempt(const char* method, const std::string& path, const std::string& body,
               std::string_view idempotency_key, int64_t remaining_ms,
               httplib::Response* response, std::string* response_body,
               httplib::Error* error) const;
  // Maps a non-2xx answer to a Status; OK for 2xx, with the parsed JSON in *doc.
  Status Check(const Exchange& exchange, rapidjson::Document* doc) const;
  // Send + Check.
  Status Call(const char* method, const std::string& path, const FormParams* form,
              std::string_view idempotency_key, rapidjson::Document* doc,
              int* http_status = nullptr) const;
};

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

double Jitter() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.5, 1.0)(rng);
}

bool RetryableNetworkError(httplib::Error error) {
  switch (error) {
    case httplib::Error::SSLLoadingCerts:
    case httplib::Error::SSLServerVerification:
    case httplib::Error::Canceled:
      return false;
    default:
      return true;
  }
}

}  // namespace

bool HttpStripeClient::Impl::Attempt(const char* method, const std::string& path,
                                     const std::string& body, std::string_view idempotency_key,
                                     int64_t remaining_ms, httplib::Response* response,
                                     std::string* response_body, httplib::Error* error) const {
  httplib::Client client(base.scheme_host_port);
  SetClientTimeouts(&client, options.connect_timeout_ms,
                    std::min(options.read_timeout_ms, remaining_ms), options.write_timeout_ms);
  client.set_keep_alive(false);
  client.set_follow_location(false);
  client.set_url_encode(false);  // paths and queries are encoded here
  client.set_tcp_nodelay(true);
  if (base.https) {
    client.enable_server_certificate_verification(true);
    if (!options.ca_cert_file.empty()) client.set_ca_cert_path(options.ca_cert_file);
  }

  httplib::Request request;
  request.method = method;
  request.path = base.prefix + path;
  request.set_header("Authorization", "Bearer " + options.secret_key);
  request.set_header("Accept", "application/json");
  request.set_header("User-Agent", "ledgerd");
  if (!options.api_version.empty()) request.set_header("Stripe-Version", options.api_version);
  if (std::string_view(method) == "POST") {
    request.set_header("Idempotency-Key", std::string(idempotency_key));
    request.set_header("Content-Type", std::string(kFormContentType));
    request.body = body;
  }
  response_body->clear();
  const size_t bytes_max = options.response_bytes_max;
  request.content_receiver = [response_body, bytes_max](const char* data, size_t length,
                                                        uint64_t, uint64_t) {
    if (response_body->size() + length > bytes_max) return false;
    response_body->append(data, length);
    return true;
  };
  *error = httplib::Error::Success;
  // cpp-httplib's read timeout bounds each read: an answer arriving a byte at a time would hold
  // this thread (an HTTP worker) past the deadline.
  CallDeadline deadline(&client, std::chrono::milliseconds(remaining_ms));
  if (!deadline.started()) {
    *error = httplib::Error::Unknown;  // not sent: a network error, retried
    return false;
  }
  bool ok = client.send(request, *response, *error);
  const bool deadline_passed = deadline.Finish();
  // A body without a length ends where the connection does, and the deadline's cut looks like
  // that end: such an answer is incomplete, not Stripe's (a Malformed 502).
  const bool cut_short = deadline_passed && ok && !response->has_header("Content-Length") &&
                         !response->has_header("Transfer-Encoding");
  if (ok && *error == httplib::Error::Success && !cut_short) return true;
  if (deadline_passed) {
    *error = httplib::Error::Read;
    return false;
  }
  if (*error == httplib::Error::Success) *error = httplib::Error::Unknown;
  return false;
}

Status HttpStripeClient::Impl::Send(const char* method, const std::string& path,
                                    const FormParams* form, std::string_view idempotency_key,
                                    Exchange* exchange) const {
  const bool post = std::string_view(method) == "POST";
  if (post && (idempotency_key.empty() || idempotency_key.size() > 255)) {
    return Status::InvalidArgument("invalid_argument",
                                   "every POST to Stripe needs an Idempotency-Key of 1..255 bytes");
  }
  const std::string body = form != nullptr ? FormUrlEncode(*form) : std::string();
  const int64_t deadline = NowMs() + options.deadline_ms;
  const int attempts_max = std::max(1, options.max_attempts);
  std::string last_failure;
  bool last_was_network = false;
  int last_status = 0;

  for (int attempt = 1;; ++attempt) {
    int64_t remaining = deadline - NowMs();
    httplib::Response response;
    httplib::Error error = httplib::Error::Success;
    std::string response_body;
    bool answered =
        remaining > 0 && Attempt(method, path, body, idempotency_key, remaining, &response,
                                 &response_body, &error);
    bool retry = false;
    int64_t retry_after_ms = -1;
    if (!answered) {
      if (remaining <= 0) error = httplib::Error::Read;
      last_was_network = true;
      // Canceled: the content receiver refused an answer over its size limit.
      last_failure = error == httplib::Error::Canceled ? "the answer was too large"
                                                       : NetworkErrorText(error);
      retry = RetryableNetworkError(error);
    } else {
      last_was_network = false;
      last_status = response.status;
      exchange->http_status = response.status;
      exchange->body = std::move(response_body);
      std::string should_retry = response.get_header_value("Stripe-Should-Retry");
      if (should_retry == "false") {
        retry = false;
      } else if (should_retry == "true") {
        retry = true;
      } else {
        // 409 too: Stripe's idempotency_key_in_use is a request with the same key still running
        // there -- typically our own earlier attempt that hit the read timeout while Stripe went
        // on working -- and is documented as retryable (its official clients retry a 409). Not
        // retried, the first attempt's success was reported as a 502.
        retry = response.status == 409 || response.status == 429 || response.status >= 500;
      }
      if (!retry) return Status::OK();
      std::string retry_after = response.get_header_value("Retry-After");
      if (!retry_after.empty() && retry_after.size() < 6 &&
          std::all_of(retry_after.begin(), retry_after.end(),
                      [](char c) { return c >= '0' && c <= '9'; })) {
        retry_after_ms = std::stoll(retry_after) * 1000;
      }
    }
    if (!retry || attempt >= attempts_max) break;
    int64_t delay = std::min(options.backoff_max_ms,
                             options.backoff_initial_ms * (int64_t{1} << std::min(attempt - 1, 20)));
    delay = static_cast<int64_t>(static_cast<double>(delay) * Jitter());
    if (retry_after_ms >= 0 && retry_after_ms <= options.backoff_max_ms) delay = retry_after_ms;
    if (NowMs() + delay >= deadline) break;
    if (options.sleep) {
      options.sleep(delay);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    }
  }

  if (last_was_network) {
    return Status::Unavailable("stripe_unavailable",
                               "Stripe could not be reached: " + last_failure);
  }
  // Out of attempts on a retryable answer: the caller maps it (429 / 5xx).
  exchange->http_status = last_status;
  return Status::OK();
}

Status HttpStripeClient::Impl::Check(const Exchange& exchange, rapidjson::Document* doc) const {
  const int status = exchange.http_status;
  Status parsed = projections::ParseJsonObject(exchange.body, doc);
  if (status >= 200 && status < 300) {
    if (!parsed.ok()) return Malformed("answer (not a JSON object)");
    return Status::OK();
  }
  std::string message;
  std::string type;
  std::string code;
  std::string param;
  if (parsed.ok()) {
    if (const rapidjson::Value* error = ObjectMember(*doc, "error")) {
      message = RedactStripeSecrets(StringMember(*error, "message"), options.secret_key);
      type = std::string(StringMember(*error, "type"));
      code = std::string(StringMember(*error, "code"));
      param = std::string(StringMember(*error, "param"));
    }
  }
  const std::string suffix = message.empty() ? "" : ": " + message;
  const std::string answered = "Stripe answered " + std::to_string(status);
  if (status == 401 || status == 403) {
    // Stripe's 401 message quotes part of the key; say nothing of it.
    return Status::Make(Code::kBadGateway, "stripe_auth_failed",
                        answered + ": the configured Stripe API key was refused");
  }
  if (status == 429) {
    return Status::Unavailable("stripe_rate_limited", answered + " (rate limited)" + suffix);
  }
  if (status >= 500) {
    return Status::Make(Code::kBadGateway, "stripe_error", answered + suffix);
  }
  if (status == 402) {  // a declined charge, or one that needs the customer (3-D Secure)
    return Status::Make(Code::kPaymentRequired, "payment_failed",
                        "the payment failed or needs the customer's action, nothing was changed; "
                        "update the payment method (or make the change) in the customer portal, "
                        "then retry with a new Idempotency-Key" +
                            suffix);
  }
  if (type == "idempotency_error") {
    return Status::Make(Code::kBadGateway, "stripe_idempotency_error", answered + suffix);
  }
  if (status == 404 && code == "resource_missing") {
    return Status::Make(Code::kBadGateway, "stripe_resource_missing", answered + suffix);
  }
  // A request naming a customer Stripe no longer has (deleted in the Dashboard, or erased).
  if (status == 400 && code == "resource_missing" && param == "customer") {
    return Status::Make(Code::kBadGateway, "stripe_customer_missing", answered + suffix);
  }
  return Status::Make(Code::kBadGateway, "stripe_request_failed", answered + suffix);
}

Status HttpStripeClient::Impl::Call(const char* method, const std::string& path,
                                    const FormParams* form, std::string_view idempotency_key,
                                    rapidjson::Document* doc, int* http_status) const {
  Exchange exchange;
  LEDGER_RETURN_IF_ERROR(Send(method, path, form, idempotency_key, &exchange));
  if (http_status != nullptr) *http_status = exchange.http_status;
  return Check(exchange, doc);
}

// ---- Construction -----------------------------------------------------------------------------

HttpStripeClient::HttpStripeClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpStripeClient::~HttpStripeClient() = default;

bool IsStripeApiVersion(std::string_view v) {
  if (v.size() > 64 || v.size() < 10 || v[4] != '-' || v[7] != '-') return false;
  if (!std::all_of(v.begin(), v.begin() + 10,
                   [](char c) { return (c >= '0' && c <= '9') || c == '-'; })) {
    return false;
  }
  return std::none_of(v.begin(), v.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
  });
}

Status HttpStripeClient::Create(StripeClientOptions options,
                                std::unique_ptr<HttpStripeClient>* out) {
  if (!options.api_version.empty() && !IsStripeApiVersion(options.api_version)) {
    return Status::InvalidArgument("invalid_argument",
                                   "the Stripe API version must look like " +
                                       std::string(kStripeApiVersion));
  }
  if (options.secret_key.empty()) {
    return Status::InvalidArgument("invalid_argument", "no Stripe secret key");
  }
  for (char c : options.secret_key) {
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) {
      return Status::InvalidArgument("invalid_argument",
                                     "the Stripe secret key contains whitespace or control bytes");
    }
  }
  auto impl = std::make_unique<Impl>();
  LEDGER_RETURN_IF_ERROR(
      ParseBaseUrl(options.api_base, "the Stripe API base", "invalid_argument", &impl->base));
  impl->marker_key = HmacSha256(options.secret_key, "ledgerd-stripe-request-marker-v1");
  impl->options = std::move(options);
  out->reset(new HttpStripeClient(std::move(impl)));
  return Status::OK();
}

// ---- Forms ------------------------------------------------------------------------------------

FormParams HttpStripeClient::CheckoutForm(const StripeCheckoutParams& params) {
  FormParams form = {{"mode", "subscription"},
                     {"line_items[0][price]", params.recurring_price_id},
                     {"line_items[0][quantity]", "1"}};
  if (!params.one_time_price_id.empty()) {
    form.emplace_back("line_items[1][price]", params.one_time_price_id);
    form.emplace_back("line_items[1][quantity]", "1");
  }
  form.emplace_back("success_url", params.success_url);
  if (!params.cancel_url.empty()) form.emplace_back("cancel_url", params.cancel_url);
  form.emplace_back("client_reference_id", params.client_reference_id);
  if (!params.customer.empty()) {
    form.emplace_back("customer", params.customer);
  } else if (!params.customer_email.empty()) {
    form.emplace_back("customer_email", params.customer_email);
  }
  AppendMetadata("metadata", params.metadata, &form);
  AppendMetadata("subscription_data[metadata]", params.metadata, &form);
  if (params.trial_period_days > 0) {
    form.emplace_back("subscription_data[trial_period_days]",
                      std::to_string(params.trial_period_days));
  }
  return form;
}

FormParams HttpStripeClient::PriceChangeForm(const StripePriceChangeParams& params) {
  FormParams form = {{"items[0][id]", params.item_id},
                     {"items[0][price]", params.price_id},
                     {"proration_behavior", params.proration_behavior},
                     // A change Stripe invoices at once (the trial's end, another interval) is
                     // made only when that invoice is paid; Stripe's default, allow_incomplete,
                     // would make it and leave the subscription past_due -- the new plan used
                     // through the dunning period.
                     {"payment_behavior", "error_if_incomplete"}};
  if (params.end_trial) form.emplace_back("trial_end", "now");
  AppendMetadata("metadata", params.metadata, &form);
  return form;
}

FormParams HttpStripeClient::ProductForm(const StripeProductParams& params) {
  FormParams form = {{"id", params.id}, {"name", params.name}};
  if (!params.description.empty()) form.emplace_back("description", params.description);
  AppendMetadata("metadata", params.metadata, &form);
  return form;
}

FormParams HttpStripeClient::PriceForm(const StripePriceParams& params) {
  FormParams form = {{"product", params.product},
                     {"unit_amount", std::to_string(params.unit_amount)},
                     {"currency", params.currency}};
  if (!params.interval.empty()) form.emplace_back("recurring[interval]", params.interval);
  if (!params.lookup_key.empty()) form.emplace_back("lookup_key", params.lookup_key);
  if (params.transfer_lookup_key) form.emplace_back("transfer_lookup_key", "true");
  if (!params.nickname.empty()) form.emplace_back("nickname", params.nickname);
  AppendMetadata("metadata", params.metadata, &form);
  return form;
}

// ---- Calls ------------------------------------------------------------------------------------

Status HttpStripeClient::CreateCheckoutSession(const StripeCheckoutParams& params,
                                               std::string_view idempotency_key,
                                               StripeCheckoutSession* out) {
  FormParams form = CheckoutForm(params);
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("POST", "/v1/checkout/sessions", &form, idempotency_key, &doc));
  out->id = std::string(StringMember(doc, "id"));
  out->url = std::string(StringMember(doc, "url"));
  out->status = std::string(StringMember(doc, "status"));
  if (out->id.empty() || out->url.empty()) return Malformed("checkout session");
  return Status::OK();
}

namespace {

// A session as GET and expire answer it (an expired one has no url).
Status ReadCheckoutSession(const rapidjson::Document& doc, StripeCheckoutSession* out) {
  out->id = std::string(StringMember(doc, "id"));
  out->url = std::string(StringMember(doc, "url"));
  out->status = std::string(StringMember(doc, "status"));
  out->subscription = std::string(StringMember(doc, "subscription"));  // an id unless expanded
  if (out->id.empty() || out->status.empty()) return Malformed("checkout session");
  return Status::OK();
}

// Canceled, or incomplete_expired (its first invoice never paid, a terminal state).
bool HasEnded(const StripeSubscription& sub) {
  return sub.status == "canceled" || sub.status == "incomplete_expired";
}

// True, with the subscription, when it has ended at Stripe (HasEnded). Stripe refuses a cancel of
// it; whether the cancel got what it asked for the caller judges (CancelSubscriptionNow).
bool EndedAtStripe(StripeApi& client, std::string_view subscription_id, StripeSubscription* out) {
  StripeSubscription current;
  if (!client.GetSubscription(subscription_id, &current).ok() || !HasEnded(current)) return false;
  *out = std::move(current);
  return true;
}

Status AlreadyEnded() {
  return Status::Conflict("no_active_subscription", "the subscription has already ended");
}

}  // namespace

Status ManagedBySchedule(std::string_view consequence) {
  return Status::Conflict("subscription_scheduled",
                          "a change to the subscription is scheduled at Stripe (such as a "
                          "downgrade at the period's end chosen in the billing portal), and " +
                              std::string(consequence) +
                              ": manage the subscription in the customer portal "
                              "(/api/v1/billing/portal/create)");
}

Status HttpStripeClient::GetCheckoutSession(std::string_view session_id,
                                            StripeCheckoutSession* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("checkout session", session_id));
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("GET", "/v1/checkout/sessions/" + std::string(session_id),
                                     nullptr, "", &doc));
  return ReadCheckoutSession(doc, out);
}

Status HttpStripeClient::ExpireCheckoutSession(std::string_view session_id,
                                               std::string_view idempotency_key,
                                               StripeCheckoutSession* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("checkout session", session_id));
  FormParams form;
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("POST",
                                     "/v1/checkout/sessions/" + std::string(session_id) + "/expire",
                                     &form, idempotency_key, &doc));
  return ReadCheckoutSession(doc, out);
}

Status HttpStripeClient::CreatePortalSession(std::string_view customer,
                                             std::string_view return_url,
                                             std::string_view idempotency_key,
                                             StripePortalSession* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("customer", customer));
  FormParams form = {{"customer", std::string(customer)}};
  if (!return_url.empty()) form.emplace_back("return_url", std::string(return_url));
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(
      impl_->Call("POST", "/v1/billing_portal/sessions", &form, idempotency_key, &doc));
  out->id = std::string(StringMember(doc, "id"));
  out->url = std::string(StringMember(doc, "url"));
  if (out->url.empty()) return Malformed("portal session");
  return Status::OK();
}

Status HttpStripeClient::ListCards(std::string_view customer, std::vector<StripeCard>* out,
                                   bool* has_more) {
  LEDGER_RETURN_IF_ERROR(CheckId("customer", customer));
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call(
      "GET", "/v1/customers/" + std::string(customer) + "/payment_methods?type=card&limit=100",
      nullptr, "",
      &doc));
  const rapidjson::Value* data = ListData(doc);
  if (data == nullptr) return Malformed("payment method list");
  out->clear();
  for (const rapidjson::Value& pm : data->GetArray()) {
    StripeCard card;
    card.id = std::string(StringMember(pm, "id"));
    if (const rapidjson::Value* c = ObjectMember(pm, "card")) {
      card.brand = std::string(StringMember(*c, "brand"));
      card.last4 = std::string(StringMember(*c, "last4"));
      card.exp_month = IntMember(*c, "exp_month").value_or(0);
      card.exp_year = IntMember(*c, "exp_year").value_or(0);
    }
    out->push_back(std::move(card));
  }
  if (has_more != nullptr) *has_more = BoolMember(doc, "has_more");
  return Status::OK();
}

Status HttpStripeClient::GetSubscription(std::string_view subscription_id,
                                         StripeSubscription* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("subscription", subscription_id));
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(
      impl_->Call("GET", "/v1/subscriptions/" + std::string(subscription_id), nullptr, "", &doc));
  return ParseSubscription(doc, out);
}

Status HttpStripeClient::CancelSubscriptionNow(std::string_view subscription_id,
                                               std::string_view comment,
                                               StripeSubscription* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("subscription", subscription_id));
  if (comment.size() > kCancellationCommentBytesMax) {
    return Status::InvalidArgument("invalid_argument",
                                   "the cancellation comment is longer than 5000 bytes");
  }
  // A DELETE's parameters go in the query, as Stripe's SDKs send them.
  std::string path = "/v1/subscriptions/" + std::string(subscription_id) + "?invoice_now=true";
  if (!comment.empty()) path += "&cancellation_details%5Bcomment%5D=" + PercentEncode(comment);
  rapidjson::Document doc;
  Status s = impl_->Call("DELETE", path, nullptr, "", &doc);
  if (s.ok()) return ParseSubscription(doc, out);
  // DELETE carries no idempotency key: when an earlier attempt's answer was lost, Stripe refuses
  // the repeat. A subscription canceled with this cancel's comment is what was asked for. One
  // canceled otherwise (the Dashboard, the portal, dunning; ledgerd may not have its deletion's
  // webhook yet), or expired unpaid (incomplete_expired), was not canceled by this request: it
  // has ended, 409 no_active_subscription.
  if (s.problem() != "stripe_request_failed" && s.problem() != "stripe_resource_missing") return s;
  StripeSubscription current;
  if (!EndedAtStripe(*this, subscription_id, &current)) return s;
  if (current.status != "canceled" || current.cancellation_comment != comment) {
    return AlreadyEnded();
  }
  *out = std::move(current);
  return Status::OK();
}

std::string HttpStripeClient::RequestMarker(std::string_view request_key) const {
  return Base64UrlEncode(HmacSha256(impl_->marker_key, request_key)).substr(0, 32);
}

Status HttpStripeClient::SetCancelAtPeriodEnd(std::string_view subscription_id, bool cancel,
                                              std::string_view idempotency_key,
                                              StripeSubscription* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("subscription", subscription_id));
  FormParams form = {{"cancel_at_period_end", cancel ? "true" : "false"}};
  rapidjson::Document doc;
  Status s = impl_->Call("POST", "/v1/subscriptions/" + std::string(subscription_id), &form,
                         idempotency_key, &doc);
  if (s.ok()) return ParseSubscription(doc, out);
  if (s.problem() != "stripe_request_failed") return s;
  StripeSubscription current;
  if (!GetSubscription(subscription_id, &current).ok()) return s;
  // A subscription a schedule manages (a downgrade the Billing Portal or the Dashboard scheduled
  // for the period's end) Stripe refuses to update so: "The subscription is managed by the
  // subscription schedule `sub_sched_...`, and updating any cancelation behavior directly is not
  // allowed" -- every retry the same 502, spending the user's budget. Told by its `schedule`, not
  // by Stripe's wording: 409 subscription_scheduled.
  if (!HasEnded(current)) {
    return current.schedule.empty()
               ? s
               : ManagedBySchedule("only that schedule may change when the subscription ends");
  }
  // Past its period's end Stripe has canceled the subscription and refuses the update ("A
  // canceled subscription can only update its cancellation_details and metadata"), while ledgerd
  // may still show it active: the deletion's webhook can come days late. Asked to end at the
  // period's end, a subscription that ended there -- set to (cancel_at_period_end), or ended at
  // or after its period's end -- is what was asked for. One canceled before it (the Dashboard,
  // support, dunning) or expired unpaid (incomplete_expired) ended some other way: 409
  // no_active_subscription, not a cancel the user never made.
  if (!cancel) return s;
  const bool at_period_end =
      current.cancel_at_period_end ||
      (current.ended_at.has_value() && current.current_period_end.has_value() &&
       *current.ended_at >= *current.current_period_end);
  if (current.status != "canceled" || !at_period_end) return AlreadyEnded();
  *out = std::move(current);
  return Status::OK();
}

Status HttpStripeClient::ChangeSubscriptionPrice(const StripePriceChangeParams& params,
                                                 std::string_view idempotency_key,
                                                 StripeSubscription* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("subscription", params.subscription_id));
  LEDGER_RETURN_IF_ERROR(CheckId("subscription item", params.item_id));
  LEDGER_RETURN_IF_ERROR(CheckId("price", params.price_id));
  FormParams form = PriceChangeForm(params);
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("POST", "/v1/subscriptions/" + params.subscription_id,
                                     &form, idempotency_key, &doc));
  return ParseSubscription(doc, out);
}

Status HttpStripeClient::GetProduct(std::string_view product_id, StripeProduct* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("product", product_id));
  rapidjson::Document doc;
  Status s = impl_->Call("GET", "/v1/products/" + std::string(product_id), nullptr, "", &doc);
  if (s.problem() == "stripe_resource_missing") {
    return Status::NotFound("Stripe has no product " + std::string(product_id));
  }
  LEDGER_RETURN_IF_ERROR(s);
  out->id = std::string(StringMember(doc, "id"));
  out->name = std::string(StringMember(doc, "name"));
  out->active = BoolMember(doc, "active");
  if (out->id.empty()) return Malformed("product object");
  return Status::OK();
}

Status HttpStripeClient::CreateProduct(const StripeProductParams& params,
                                       std::string_view idempotency_key, StripeProduct* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("product", params.id));
  FormParams form = ProductForm(params);
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("POST", "/v1/products", &form, idempotency_key, &doc));
  out->id = std::string(StringMember(doc, "id"));
  out->name = std::string(StringMember(doc, "name"));
  out->active = BoolMember(doc, "active");
  if (out->id.empty()) return Malformed("product object");
  return Status::OK();
}

Status HttpStripeClient::GetPrice(std::string_view price_id, StripePrice* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("price", price_id));
  rapidjson::Document doc;
  Status s = impl_->Call("GET", "/v1/prices/" + std::string(price_id), nullptr, "", &doc);
  if (s.problem() == "stripe_resource_missing") {
    return Status::NotFound("Stripe has no price " + std::string(price_id));
  }
  LEDGER_RETURN_IF_ERROR(s);
  return ParsePrice(doc, out);
}

Status HttpStripeClient::FindPricesByLookupKeys(const std::vector<std::string>& lookup_keys,
                                                std::vector<StripePrice>* out) {
  out->clear();
  for (size_t start = 0; start < lookup_keys.size(); start += kLookupKeysPerCall) {
    std::string path = "/v1/prices?limit=100";
    size_t end = std::min(lookup_keys.size(), start + kLookupKeysPerCall);
    for (size_t i = start; i < end; ++i) {
      path += "&lookup_keys%5B%5D=" + PercentEncode(lookup_keys[i]);
    }
    rapidjson::Document doc;
    LEDGER_RETURN_IF_ERROR(impl_->Call("GET", path, nullptr, "", &doc));
    const rapidjson::Value* data = ListData(doc);
    if (data == nullptr) return Malformed("price list");
    for (const rapidjson::Value& item : data->GetArray()) {
      StripePrice price;
      LEDGER_RETURN_IF_ERROR(ParsePrice(item, &price));
      out->push_back(std::move(price));
    }
  }
  return Status::OK();
}

Status HttpStripeClient::CreatePrice(const StripePriceParams& params,
                                     std::string_view idempotency_key, StripePrice* out) {
  LEDGER_RETURN_IF_ERROR(CheckId("product", params.product));
  FormParams form = PriceForm(params);
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(impl_->Call("POST", "/v1/prices", &form, idempotency_key, &doc));
  return ParsePrice(doc, out);
}

}  // namespace ledger::http
