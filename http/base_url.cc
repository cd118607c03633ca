#include "http/base_url.h"

#include <algorithm>
#include <string>

namespace ledger::http {

namespace {

// A URL read from a file or pasted keeps its newline, or has a blank in it: the client's request
// line or Stripe's URL check refuses it at every call, long after the daemon started.
bool HasBlankOrControl(std::string_view url) {
  return std::any_of(url.begin(), url.end(),
                     [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; });
}

// `host[:port]` with a host, and a port (if any) of 1..65535 digits without a sign: cpp-httplib
// took `x:99999` and `x:` and failed at every call instead. An IPv6 host is in brackets.
bool IsHostPort(std::string_view host_port) {
  std::string_view port;
  bool has_port = false;
  if (!host_port.empty() && host_port.front() == '[') {
    const size_t close = host_port.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    const std::string_view after = host_port.substr(close + 1);
    if (!after.empty() && after.front() != ':') return false;
    has_port = !after.empty();
    if (has_port) port = after.substr(1);
  } else {
    const size_t colon = host_port.find(':');
    if (colon == 0) return false;  // `https://:443/` names a port and no host
    has_port = colon != std::string_view::npos;
    if (has_port) port = host_port.substr(colon + 1);
  }
  if (!has_port) return !host_port.empty();
  if (port.empty() || port.size() > 5 ||
      port.find_first_not_of("0123456789") != std::string_view::npos) {
    return false;
  }
  const int number = std::stoi(std::string(port));
  return number >= 1 && number <= 65535;
}

}  // namespace

Status ParseBaseUrl(std::string_view url, std::string_view setting, std::string_view code,
                    BaseUrl* out) {
  if (HasBlankOrControl(url)) {
    return Status::InvalidArgument(std::string(code), std::string(setting) +
                                                          " holds whitespace or a control "
                                                          "character");
  }
  const size_t sep = url.find("://");
  const std::string_view scheme = sep == std::string_view::npos ? "" : url.substr(0, sep);
  if (scheme != "http" && scheme != "https") {
    return Status::InvalidArgument(std::string(code),
                                   std::string(setting) + " must be an http:// or https:// URL");
  }
  const std::string_view rest = url.substr(sep + 3);
  const size_t slash = rest.find('/');
  const std::string_view host_port = rest.substr(0, slash);
  std::string_view prefix = slash == std::string_view::npos ? "" : rest.substr(slash);
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  if (host_port.find_first_of("?#@") != std::string_view::npos ||
      prefix.find_first_of("?#") != std::string_view::npos || !IsHostPort(host_port)) {
    return Status::InvalidArgument(std::string(code),
                                   std::string(setting) +
                                       " has no usable host (or a port outside 1..65535)");
  }
  out->https = scheme == "https";
  out->scheme_host_port = std::string(scheme) + "://" + std::string(host_port);
  out->prefix = std::string(prefix);
  return Status::OK();
}

Status CheckPageUrl(std::string_view url, std::string_view setting, std::string_view code) {
  // A success URL's query is Stripe's to fill in (`?session_id={CHECKOUT_SESSION_ID}`).
  const std::string_view before_query = url.substr(0, url.find_first_of("?#"));
  BaseUrl unused;
  LEDGER_RETURN_IF_ERROR(ParseBaseUrl(before_query, setting, code, &unused));
  if (HasBlankOrControl(url)) {
    return Status::InvalidArgument(std::string(code), std::string(setting) +
                                                          " holds whitespace or a control "
                                                          "character");
  }
  return Status::OK();
}

void AppendPercentEncoded(std::string_view text, std::string_view keep, std::string* out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (unsigned char c : text) {
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved || keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xF]);
    }
  }
}

std::string PercentEncode(std::string_view text) {
  std::string out;
  AppendPercentEncoded(text, "", &out);
  return out;
}

}  // namespace ledger::http
