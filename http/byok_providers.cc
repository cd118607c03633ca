#include "http/byok_providers.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>

#include "http/base_url.h"
#include "http/call_deadline.h"

namespace ledger::http {

const std::vector<ByokProvider>& ByokProviders() {
  static const std::vector<ByokProvider> providers = {
      {"openai", "OpenAI", "sk-", "https://api.openai.com", "/v1/models", false},
      {"anthropic", "Anthropic", "sk-ant-", "https://api.anthropic.com", "/v1/models", true},
      {"huggingface", "Hugging Face", "hf_", "https://huggingface.co", "/api/whoami-v2", false},
      {"openrouter", "OpenRouter", "sk-or-", "https://openrouter.ai", "/api/v1/key", false},
  };
  return providers;
}

const ByokProvider* FindByokProvider(std::string_view id) {
  for (const ByokProvider& p : ByokProviders()) {
    if (p.id == id) return &p;
  }
  return nullptr;
}

Status ParseByokBaseUrls(std::string_view text, std::map<std::string, std::string>* out) {
  out->clear();
  if (text.empty()) return Status::OK();
  for (int index = 1;; ++index) {
    const size_t comma = text.find(',');
    const std::string_view entry = text.substr(0, comma);
    // An empty entry (`openai=...,` or `a,,b`) is one that failed to arrive.
    if (entry.empty()) {
      return Status::InvalidArgument(
          "bad_config", "LEDGER_BYOK_BASE_URLS: entry " + std::to_string(index) + " is empty");
    }
    const size_t eq = entry.find('=');
    const std::string_view id = entry.substr(0, eq);
    // Named by its place, never repeated: an entry without '=' is a URL, perhaps with a
    // user:password@ (`https://svc:tok@proxy.internal`), and the daemon prints the error.
    if (eq == std::string_view::npos || FindByokProvider(id) == nullptr) {
      std::string known;
      for (const ByokProvider& p : ByokProviders()) {
        known += (known.empty() ? "" : ", ") + std::string(p.id);
      }
      return Status::InvalidArgument(
          "bad_config", "LEDGER_BYOK_BASE_URLS: entry " + std::to_string(index) +
                            " is not provider=url of a known provider (" + known + ")");
    }
    BaseUrl parsed;
    LEDGER_RETURN_IF_ERROR(ParseBaseUrl(entry.substr(eq + 1), "LEDGER_BYOK_BASE_URLS " +
                                        std::string(id), "bad_config", &parsed));
    // Two base URLs for one provider: the last one won, without a word.
    if (!out->emplace(std::string(id), std::string(entry.substr(eq + 1))).second) {
      return Status::InvalidArgument(
          "bad_config", "LEDGER_BYOK_BASE_URLS: entry " + std::to_string(index) + " names " +
                            std::string(id) + " again (one base URL per provider)");
    }
    if (comma == std::string_view::npos) return Status::OK();
    text = text.substr(comma + 1);
  }
}

std::string_view KeyVerdictName(KeyVerdict verdict) {
  switch (verdict) {
    case KeyVerdict::kValid: return "valid";
    case KeyVerdict::kInvalid: return "invalid";
    case KeyVerdict::kError: return "error";
  }
  return "error";
}

KeyTestResult TestProviderKey(const ByokProvider& provider, const std::string& base_url,
                              const std::string& api_key, int timeout_ms) {
  KeyTestResult result;
  BaseUrl base;
  if (!ParseBaseUrl(base_url, "the provider base URL", "bad_config", &base).ok()) {
    result.detail = "the provider's base URL is not usable";
    return result;
  }
  httplib::Client client(base.scheme_host_port);
  SetClientTimeouts(&client, timeout_ms, timeout_ms, timeout_ms);
  client.set_follow_location(false);
  if (base.https) client.enable_server_certificate_verification(true);
  // Before the key is copied into the headers: a call not made leaves no copy to wipe.
  CallDeadline deadline(&client, std::chrono::milliseconds(timeout_ms));
  if (!deadline.started()) {
    result.detail = std::string(provider.display_name) +
                    " was not asked: no thread for the call's deadline";
    return result;
  }
  httplib::Headers headers = {{"Accept", "application/json"}};
  if (provider.anthropic_headers) {
    headers.emplace("x-api-key", api_key);
    headers.emplace("anthropic-version", "2023-06-01");
  } else {
    headers.emplace("Authorization", "Bearer " + api_key);
  }
  httplib::Result answer = client.Get(base.prefix + std::string(provider.test_path), headers);
  const bool deadline_passed = deadline.Finish();
  for (auto& [name, value] : headers) {
    if (name == "x-api-key" || name == "Authorization") {
      // The copies the request held; the caller wipes its own.
      std::fill(value.begin(), value.end(), '\0');
    }
  }
  if (!answer && deadline_passed) {
    result.detail = "no answer from " + std::string(provider.display_name) + " within " +
                    std::to_string(timeout_ms) + " ms";
    return result;
  }
  if (!answer) {
    result.detail = "no answer from " + std::string(provider.display_name) + " (" +
                    httplib::to_string(answer.error()) + ")";
    return result;
  }
  if (answer->status < 100 || answer->status > 599) {
    // cpp-httplib reads any three digits; that is no HTTP status (byok.key_tested.v1: 100-599).
    result.detail = std::string(provider.display_name) + " answered no HTTP status (" +
                    std::to_string(answer->status) + ")";
    return result;
  }
  result.provider_status = answer->status;
  if (answer->status >= 200 && answer->status < 300) {
    result.verdict = KeyVerdict::kValid;
    result.detail = "the key was accepted";
  } else if (answer->status == 401 || answer->status == 403) {
    result.verdict = KeyVerdict::kInvalid;
    result.detail = "the key was refused";
  } else {
    result.detail = std::string(provider.display_name) + " answered " +
                    std::to_string(answer->status);
  }
  return result;
}

}  // namespace ledger::http
