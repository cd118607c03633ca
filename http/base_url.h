// The base URL of an outside API (Stripe, Lago, an LLM provider): "http(s)://host[:port][/prefix]".
#pragma once

#include <string>
#include <string_view>

#include "events/status.h"

namespace ledger::http {

struct BaseUrl {
  std::string scheme_host_port;  // what httplib::Client takes, e.g. "https://api.stripe.com"
  std::string prefix;            // path prefix without a trailing '/', "" for none
  bool https = false;
};

// InvalidArgument `code` naming `setting` when `url` is not an http or https URL with a host and,
// if any, a port 1..65535 (no userinfo, query or fragment, no whitespace or control character
// anywhere).
Status ParseBaseUrl(std::string_view url, std::string_view setting, std::string_view code,
                    BaseUrl* out);

// InvalidArgument `code` naming `setting` when `url` is not an absolute http or https URL of a
// page (Stripe's Checkout success and cancel URLs, the Billing Portal's return URL): a base URL
// as ParseBaseUrl takes it, then an optional query and fragment, none with whitespace or a
// control character. Neither error repeats the URL.
Status CheckPageUrl(std::string_view url, std::string_view setting, std::string_view code);

// Appends `text` to `out` with every byte percent-encoded except RFC 3986's unreserved characters
// (A-Z a-z 0-9 - . _ ~) and those in `keep`.
void AppendPercentEncoded(std::string_view text, std::string_view keep, std::string* out);
// `text` with every byte but the unreserved characters percent-encoded: a path segment, a query
// value.
std::string PercentEncode(std::string_view text);

}  // namespace ledger::http
