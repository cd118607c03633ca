// Lago webhook signatures (PROTOCOLS.md "Lago"), verified over the raw request body exactly as
// received. Lago signs every delivery in the mode chosen for the webhook endpoint and says which
// in `X-Lago-Signature-Algorithm`:
//
//   hmac  X-Lago-Signature = base64(HMAC-SHA256(the organization's HMAC key, raw body)).
//         The header is base64-decoded and compared with the expected 32 bytes in constant time.
//         HMAC mode carries no timestamp (replays are handled by the dedupe in
//         projections/lago.h).
//   jwt   X-Lago-Signature = an RS256 compact JWS, header {"alg":"RS256"}, claims
//         {"data": "<payload JSON string>", "iss": "<Lago's LAGO_API_URL>"}, signed with Lago's
//         RSA key (lago-api: Webhook#jwt_signature, `data: payload.to_json`). Lago posts the very
//         same `payload.to_json` string as the body, so `data` must equal the raw body byte for
//         byte (what Lago's own docs check: `decoded_signature == request.body`); a re-encoding
//         proxy would break hmac mode as well. `alg` must be RS256 (no `none`, no HS256 keyed with
//         the public key) and a `crit` header is refused. When an issuer is configured, `iss`
//         must equal it (one trailing '/' ignored on either side). No `exp`: Lago sets none.
//         The RSA key is Lago's instance-wide key (one for every organization): a valid jwt
//         proves the delivery came from that Lago instance, not for which organization; the
//         route checks the body's organization_id against LAGO_ORGANIZATION_ID for that.
//         The token embeds the whole payload, so it is far larger than a bearer token: it is
//         accepted up to limits::kLagoSignatureBytesMax (not the 16 KiB bearer-token limit).
//   (absent header) Lago versions before signature algorithms existed sent only a JWT: a
//         delivery without `X-Lago-Signature-Algorithm` is verified as jwt.
//
// Errors: InvalidArgument "invalid_signature" (400) naming the reason, never echoing the
// signature; Unavailable "lago_webhook_not_configured" (503) when the delivery's mode has no key
// configured (LAGO_WEBHOOK_HMAC_KEY / LAGO_WEBHOOK_PUBLIC_KEY_FILE).
//
// Thread safety: a LagoSignatureVerifier is immutable after Create(); Verify() may be called
// from any thread concurrently.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "events/status.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace ledger::http {

struct LagoWebhookKeys {
  // LAGO_WEBHOOK_HMAC_KEY: the organization's HMAC key, used as its UTF-8 bytes. Empty = hmac
  // deliveries answer 503. Secret: never logged.
  std::string hmac_key;
  // Lago's RSA public key as SubjectPublicKeyInfo PEM (LoadLagoPublicKey() of the file named by
  // LAGO_WEBHOOK_PUBLIC_KEY_FILE). Empty = jwt deliveries answer 503.
  std::string public_key_pem;
  // When non-empty, a jwt delivery's `iss` must equal it: LAGO_WEBHOOK_ISSUER (empty: not checked).
  std::string issuer;
};

class LagoSignatureVerifier {
 public:
  // InvalidArgument "bad_lago_public_key" when public_key_pem is given but is not an RSA key.
  static Status Create(const LagoWebhookKeys& keys, std::unique_ptr<LagoSignatureVerifier>* out);
  ~LagoSignatureVerifier();
  LagoSignatureVerifier(const LagoSignatureVerifier&) = delete;
  LagoSignatureVerifier& operator=(const LagoSignatureVerifier&) = delete;

  // True when at least one mode has a key.
  bool configured() const { return !hmac_key_.empty() || public_key_ != nullptr; }

  // Verifies one delivery. `algorithm` is the X-Lago-Signature-Algorithm value ("" = absent),
  // `signature` the X-Lago-Signature value. OK sets `*mode` to "hmac" or "jwt".
  Status Verify(std::string_view algorithm, std::string_view signature, std::string_view raw_body,
                std::string* mode) const;

 private:
  LagoSignatureVerifier() = default;
  Status VerifyHmac(std::string_view signature, std::string_view raw_body) const;
  Status VerifyJwt(std::string_view token, std::string_view raw_body) const;

  std::string hmac_key_;
  std::string issuer_;
  EVP_PKEY* public_key_ = nullptr;
};

// Reads Lago's RSA public key from the contents of LAGO_WEBHOOK_PUBLIC_KEY_FILE, which may hold
//   - the PEM itself ("BEGIN PUBLIC KEY", or PKCS#1 "BEGIN RSA PUBLIC KEY"),
//   - the base64-encoded PEM that Lago serves from GET /api/v1/webhooks/public_key (line breaks
//     allowed), or
//   - the JSON of GET /api/v1/webhooks/json_public_key: {"webhook":{"public_key":"<base64>"}},
// and returns it as SubjectPublicKeyInfo PEM. InvalidArgument "bad_lago_public_key" otherwise.
Status LoadLagoPublicKey(std::string_view contents, std::string* pem);

// base64(HMAC-SHA256(key, body)): the hmac-mode signature, as Lago computes it (tests, fakes).
std::string LagoHmacSignature(std::string_view key, std::string_view body);

}  // namespace ledger::http
