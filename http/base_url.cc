#include "http/base_url.h"

#include <algorithm>

namespace ledger::http {

namespace {

// A URL read from a file or pasted keeps its newline, or has a blank in it: the client's request
// line or Stripe's URL check refuses it at every call, long after the daemon started.
bool HasBlankOrControl(std::string_view url) {
  return std::any_of(url.begin(), url.end(),
                     [](char c) { return static_cast<unsigned char>(c) <= ' ' || c == 0x7f; });
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
  // `https://:443/` names a port and no host.
  if (host_port.empty() || host_port.front() == ':' ||
      host_port.find_first_of("?#@") != std::string_view::npos ||
      prefix.find_first_of("?#") != std::string_view::npos) {
    return Status::InvalidArgument(std::string(code), std::string(setting) + " has no usable host");
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

}  // namespace ledger::http
