// Base64 (RFC 4648 §4) and base64url (§5) codecs for JWTs, JWKs and webhook signatures.
#pragma once

#include <string>
#include <string_view>

namespace ledger::http {

// base64url without padding (the JWS encoding).
std::string Base64UrlEncode(std::string_view bytes);

// Decodes base64url. Accepts input with or without trailing '=' padding; rejects any character
// outside the url-safe alphabet (including '+', '/', whitespace), a length that cannot be a
// base64 encoding, and non-zero unused trailing bits. Returns false on malformed input.
[[nodiscard]] bool Base64UrlDecode(std::string_view text, std::string* out);

// Standard base64 with padding.
std::string Base64Encode(std::string_view bytes);

// Decodes standard base64, padded or not. Rejects characters outside the alphabet (including
// whitespace) and non-zero unused trailing bits.
[[nodiscard]] bool Base64Decode(std::string_view text, std::string* out);

}  // namespace ledger::http
