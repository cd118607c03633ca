// The LLM providers users can bring their own API key for (BYOK), and the one call per provider
// that tells whether a key works: a cheap authenticated read that costs the user nothing.
//
//   openai      GET  {base}/v1/models           Authorization: Bearer <key>
//   anthropic   GET  {base}/v1/models           x-api-key: <key>, anthropic-version: 2023-06-01
//   huggingface GET  {base}/api/whoami-v2       Authorization: Bearer <key>
//   openrouter  GET  {base}/api/v1/key          Authorization: Bearer <key>
//
// Base URLs default to the providers' own and are set per provider with LEDGER_BYOK_BASE_URLS
// (tests point them at a local fake). The key is sent only to its own provider's base URL, never
// logged, and never in an answer.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "events/status.h"

namespace ledger::http {

struct ByokProvider {
  std::string_view id;
  std::string_view display_name;
  std::string_view key_prefix;        // what keys of this provider start with ("" = no rule)
  std::string_view default_base_url;
  std::string_view test_path;
  bool anthropic_headers = false;     // x-api-key + anthropic-version instead of a bearer token
};

const std::vector<ByokProvider>& ByokProviders();
// nullptr for an unknown id.
const ByokProvider* FindByokProvider(std::string_view id);

// "openai=http://127.0.0.1:9000,anthropic=..." -> overrides. InvalidArgument naming the entry by
// its place (never repeating it) for an empty entry, an unknown or repeated provider, or a URL
// that is not http(s) with a host; each message names LEDGER_BYOK_BASE_URLS.
Status ParseByokBaseUrls(std::string_view text, std::map<std::string, std::string>* out);

enum class KeyVerdict { kValid, kInvalid, kError };
std::string_view KeyVerdictName(KeyVerdict verdict);  // "valid", "invalid", "error"

struct KeyTestResult {
  KeyVerdict verdict = KeyVerdict::kError;
  int provider_status = 0;  // the provider's HTTP status (100-599), 0 when it gave none
  std::string detail;       // why, in a few words; never the key
};

// One test call. 2xx = valid, 401/403 = invalid, anything else (including no answer within
// `timeout_ms`, and a status line outside 100-599) = error. `timeout_ms` bounds the whole call
// (connect, TLS handshake, request, the answer's head and body; not the name lookup): a
// provider still sending then is cut off (http/call_deadline.h).
KeyTestResult TestProviderKey(const ByokProvider& provider, const std::string& base_url,
                              const std::string& api_key, int timeout_ms);

}  // namespace ledger::http
