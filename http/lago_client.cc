#include "http/lago_client.h"

#include "http/base_url.h"
#include "http/call_deadline.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <string_view>

namespace ledger::http {

namespace {

constexpr char kBatchPath[] = "/api/v1/events/batch";
constexpr char kBillableMetricsPath[] = "/api/v1/billable_metrics/";

Status BadConfig(const std::string& message) {
  return Status::InvalidArgument("bad_config", message);
}

int64_t RetryAfterMs(const httplib::Response& response) {
  std::string value = response.get_header_value("Retry-After");
  if (value.empty() || value.size() > 5 ||
      !std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return -1;
  }
  return std::stoll(value) * 1000;
}

}  // namespace

Status HttpLagoClient::Create(const LagoClientOptions& options,
                              std::unique_ptr<HttpLagoClient>* out) {
  BaseUrl base;
  LEDGER_RETURN_IF_ERROR(ParseBaseUrl(options.api_url, "LAGO_API_URL", "bad_config", &base));
  if (options.api_key.empty()) return BadConfig("LAGO_API_KEY is empty");
  std::unique_ptr<HttpLagoClient> client(new HttpLagoClient());
  client->options_ = options;
  client->path_prefix_ = base.prefix;
  client->client_ = std::make_unique<httplib::Client>(base.scheme_host_port);
  httplib::Client& c = *client->client_;
  SetClientTimeouts(&c, options.connect_timeout_ms, options.read_timeout_ms,
                    options.write_timeout_ms);
  c.set_keep_alive(true);
  c.set_follow_location(false);
  c.set_tcp_nodelay(true);
  if (base.https) {
    c.enable_server_certificate_verification(true);
    if (!options.ca_cert_file.empty()) c.set_ca_cert_path(options.ca_cert_file);
  }
  *out = std::move(client);
  return Status::OK();
}

HttpLagoClient::~HttpLagoClient() = default;

void HttpLagoClient::Cancel() {
  {
    // The call's own sockets first: stop() waits out a TLS handshake (CallDeadline).
    std::lock_guard<std::mutex> lock(call_mu_);
    if (call_ != nullptr) call_->Cut();
  }
  client_->stop();
}

LagoAnswer HttpLagoClient::SendEventsBatch(const std::string& body) {
  return Call("POST", kBatchPath, body);
}

LagoAnswer HttpLagoClient::GetBillableMetric(const std::string& code) {
  return Call("GET", kBillableMetricsPath + PercentEncode(code), "");
}

LagoAnswer HttpLagoClient::Call(const char* method, const std::string& path,
                                const std::string& body) {
  std::lock_guard<std::mutex> lock(mu_);
  LagoAnswer answer;
  httplib::Request request;
  request.method = method;
  request.path = path_prefix_ + path;
  request.set_header("Authorization", "Bearer " + options_.api_key);
  request.set_header("Accept", "application/json");
  if (request.method == "POST") {
    request.set_header("Content-Type", "application/json");
    request.body = body;
  }
  request.set_header("User-Agent", "ledgerd");
  const size_t bytes_max = options_.response_bytes_max;
  std::string* kept = &answer.body;
  request.content_receiver = [kept, bytes_max](const char* data, size_t length, uint64_t,
                                               uint64_t) {
    if (kept->size() < bytes_max) kept->append(data, std::min(length, bytes_max - kept->size()));
    return true;
  };
  httplib::Response response;
  httplib::Error error = httplib::Error::Success;
  const int64_t deadline_ms = std::max<int64_t>(options_.deadline_ms, 1);
  CallDeadline deadline(client_.get(), std::chrono::milliseconds(deadline_ms));
  if (!deadline.started()) {
    answer.error = "not sent: no thread for the call's deadline";
    return answer;
  }
  {
    std::lock_guard<std::mutex> lock(call_mu_);
    call_ = &deadline;
  }
  const bool sent = client_->send(request, response, error);
  {
    std::lock_guard<std::mutex> lock(call_mu_);
    call_ = nullptr;
  }
  const bool deadline_passed = deadline.Finish();
  if (!sent || error != httplib::Error::Success) {
    answer.body.clear();
    answer.error = deadline_passed
                       ? "no complete answer within " + std::to_string(deadline_ms) + " ms"
                       : NetworkErrorText(error == httplib::Error::Success
                                              ? httplib::Error::Unknown
                                              : error);
    return answer;
  }
  answer.http_status = response.status;
  answer.retry_after_ms = RetryAfterMs(response);
  return answer;
}

}  // namespace ledger::http
