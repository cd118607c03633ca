#include "http/base_url.h"

namespace ledger::http {

Status ParseBaseUrl(std::string_view url, std::string_view setting, std::string_view code,
                    BaseUrl* out) {
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
  if (host_port.empty() || host_port.find_first_of("?#@ ") != std::string_view::npos ||
      prefix.find_first_of("?# ") != std::string_view::npos) {
    return Status::InvalidArgument(std::string(code), std::string(setting) + " has no usable host");
  }
  out->https = scheme == "https";
  out->scheme_host_port = std::string(scheme) + "://" + std::string(host_port);
  out->prefix = std::string(prefix);
  return Status::OK();
}

}  // namespace ledger::http
