#include "http/lago_signature.h"

#include <openssl/decoder.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <rapidjson/document.h>

#include <cctype>

#include "events/types.h"
#include "http/base64.h"
#include "http/limits.h"
#include "http/problem.h"
#include "projections/json_util.h"

namespace ledger::http {

namespace {

constexpr char kNotConfigured[] = "lago_webhook_not_configured";

Status Invalid(std::string message) {
  return Status::InvalidArgument("invalid_signature", std::move(message));
}

Status BadKey(std::string message) {
  return Status::InvalidArgument("bad_lago_public_key", std::move(message));
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string_view WithoutTrailingSlash(std::string_view s) {
  if (!s.empty() && s.back() == '/') s.remove_suffix(1);
  return s;
}

// An RSA public key from PEM: SubjectPublicKeyInfo ("PUBLIC KEY") or PKCS#1 ("RSA PUBLIC KEY").
EVP_PKEY* DecodeRsaPublicKeyPem(std::string_view pem) {
  EVP_PKEY* key = nullptr;
  OSSL_DECODER_CTX* ctx = OSSL_DECODER_CTX_new_for_pkey(&key, "PEM", nullptr, "RSA",
                                                        EVP_PKEY_PUBLIC_KEY, nullptr, nullptr);
  if (ctx == nullptr) return nullptr;
  const auto* data = reinterpret_cast<const unsigned char*>(pem.data());
  size_t length = pem.size();
  const bool ok = OSSL_DECODER_from_data(ctx, &data, &length) == 1;
  OSSL_DECODER_CTX_free(ctx);
  if (!ok || key == nullptr || EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    return nullptr;
  }
  return key;
}

bool EncodeSpkiPem(EVP_PKEY* key, std::string* pem) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) return false;
  char* data = nullptr;
  long length = BIO_get_mem_data(bio.get(), &data);
  if (length <= 0) return false;
  pem->assign(data, static_cast<size_t>(length));
  return true;
}

Status PemToSpki(std::string_view pem, std::string* out) {
  EVP_PKEY* key = DecodeRsaPublicKeyPem(pem);
  if (key == nullptr) return BadKey("not an RSA public key in PEM form");
  bool ok = EncodeSpkiPem(key, out);
  EVP_PKEY_free(key);
  return ok ? Status::OK() : Status::Internal("cannot re-encode the Lago public key");
}

// The base64 that Lago serves: Ruby's Base64.encode64 breaks lines every 60 characters.
Status Base64PemToSpki(std::string_view text, std::string* out) {
  std::string compact;
  for (char c : text) {
    if (!std::isspace(static_cast<unsigned char>(c))) compact.push_back(c);
  }
  std::string pem;
  if (!Base64Decode(compact, &pem) || pem.find("-----BEGIN") == std::string::npos) {
    return BadKey("expected a PEM, a base64-encoded PEM or Lago's json_public_key answer");
  }
  return PemToSpki(pem, out);
}

// Splits a compact JWS and decodes its parts.
Status SplitToken(std::string_view token, std::string_view* signing_input, std::string* header,
                  std::string* payload, std::string* signature) {
  size_t first = token.find('.');
  size_t second = first == std::string_view::npos ? first : token.find('.', first + 1);
  if (second == std::string_view::npos || token.find('.', second + 1) != std::string_view::npos) {
    return Invalid("jwt: not a compact JWS");
  }
  *signing_input = token.substr(0, second);
  if (token.find('=') != std::string_view::npos) return Invalid("jwt: padded base64url");
  if (!Base64UrlDecode(token.substr(0, first), header) ||
      !Base64UrlDecode(token.substr(first + 1, second - first - 1), payload) ||
      !Base64UrlDecode(token.substr(second + 1), signature)) {
    return Invalid("jwt: malformed base64url");
  }
  if (signature->empty()) return Invalid("jwt: unsigned token");
  return Status::OK();
}

}  // namespace

Status LoadLagoPublicKey(std::string_view contents, std::string* pem) {
  std::string_view text = Trim(contents);
  if (text.empty()) return BadKey("the file is empty");
  if (text.size() > limits::kLagoPublicKeyFileBytesMax) return BadKey("the file is too large");
  if (text.front() == '{') {
    rapidjson::Document doc;
    doc.Parse(text.data(), text.size());
    const rapidjson::Value* key = nullptr;
    if (!doc.HasParseError() && doc.IsObject()) {
      auto webhook = doc.FindMember("webhook");
      const rapidjson::Value& holder =
          webhook != doc.MemberEnd() && webhook->value.IsObject() ? webhook->value : doc;
      auto it = holder.FindMember("public_key");
      if (it != holder.MemberEnd() && it->value.IsString()) key = &it->value;
    }
    if (key == nullptr) return BadKey("JSON without webhook.public_key");
    std::string_view inner(key->GetString(), key->GetStringLength());
    if (inner.find("-----BEGIN") != std::string_view::npos) return PemToSpki(inner, pem);
    return Base64PemToSpki(inner, pem);
  }
  if (text.find("-----BEGIN") != std::string_view::npos) return PemToSpki(text, pem);
  return Base64PemToSpki(text, pem);
}

std::string LagoHmacSignature(std::string_view key, std::string_view body) {
  return Base64Encode(HmacSha256(key, body));
}

Status LagoSignatureVerifier::Create(const LagoWebhookKeys& keys,
                                     std::unique_ptr<LagoSignatureVerifier>* out) {
  std::unique_ptr<LagoSignatureVerifier> verifier(new LagoSignatureVerifier());
  verifier->hmac_key_ = keys.hmac_key;
  verifier->issuer_ = keys.issuer;
  if (!keys.public_key_pem.empty()) {
    verifier->public_key_ = DecodeRsaPublicKeyPem(keys.public_key_pem);
    if (verifier->public_key_ == nullptr) return BadKey("not an RSA public key in PEM form");
  }
  *out = std::move(verifier);
  return Status::OK();
}

LagoSignatureVerifier::~LagoSignatureVerifier() { EVP_PKEY_free(public_key_); }

Status LagoSignatureVerifier::Verify(std::string_view algorithm, std::string_view signature,
                                     std::string_view raw_body, std::string* mode) const {
  algorithm = Trim(algorithm);
  signature = Trim(signature);
  const bool hmac = EqualsIgnoreCase(algorithm, "hmac");
  if (!hmac && !algorithm.empty() && !EqualsIgnoreCase(algorithm, "jwt")) {
    return Invalid("X-Lago-Signature-Algorithm must be hmac or jwt");
  }
  // An unsigned delivery is the sender's fault whatever this server is configured for; a mode it
  // is not configured for is the operator's (503: Lago retries until the key is set).
  if (signature.empty()) return Invalid("X-Lago-Signature is missing");
  if (hmac && hmac_key_.empty()) {
    return Status::Unavailable(kNotConfigured,
                               "hmac-signed Lago webhooks need LAGO_WEBHOOK_HMAC_KEY");
  }
  if (!hmac && public_key_ == nullptr) {
    return Status::Unavailable(kNotConfigured,
                               "jwt-signed Lago webhooks need LAGO_WEBHOOK_PUBLIC_KEY_FILE");
  }
  *mode = hmac ? "hmac" : "jwt";
  return hmac ? VerifyHmac(signature, raw_body) : VerifyJwt(signature, raw_body);
}

Status LagoSignatureVerifier::VerifyHmac(std::string_view signature,
                                         std::string_view raw_body) const {
  std::string given;
  if (signature.size() > 128 || !Base64Decode(signature, &given)) {
    return Invalid("hmac: X-Lago-Signature is not base64");
  }
  if (!ConstantTimeEquals(given, HmacSha256(hmac_key_, raw_body))) {
    return Invalid("hmac: signature does not match the body");
  }
  return Status::OK();
}

Status LagoSignatureVerifier::VerifyJwt(std::string_view token, std::string_view raw_body) const {
  if (token.size() > limits::kLagoSignatureBytesMax) return Invalid("jwt: token too large");
  std::string_view signing_input;
  std::string header_json, payload_json, signature;
  LEDGER_RETURN_IF_ERROR(
      SplitToken(token, &signing_input, &header_json, &payload_json, &signature));
  rapidjson::Document header;
  if (!projections::ParseJsonObject(header_json, &header).ok()) {
    return Invalid("jwt: header is not a JSON object without duplicate members");
  }
  auto alg = header.FindMember("alg");
  if (alg == header.MemberEnd() || !alg->value.IsString() ||
      std::string_view(alg->value.GetString(), alg->value.GetStringLength()) != "RS256") {
    return Invalid("jwt: alg must be RS256");
  }
  if (header.HasMember("crit")) return Invalid("jwt: crit headers are not supported");

  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx) return Status::Internal("EVP_MD_CTX_new failed");
  const bool verified =
      EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, public_key_) == 1 &&
      EVP_DigestVerify(
          ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
          reinterpret_cast<const unsigned char*>(signing_input.data()), signing_input.size()) == 1;
  if (!verified) return Invalid("jwt: bad signature");

  rapidjson::Document claims;
  if (!projections::ParseJsonObject(payload_json, &claims).ok()) {
    return Invalid("jwt: claims are not a JSON object without duplicate members");
  }
  auto data = claims.FindMember("data");
  if (data == claims.MemberEnd() || !data->value.IsString()) {
    return Invalid("jwt: the data claim (the payload JSON string) is missing");
  }
  if (std::string_view(data->value.GetString(), data->value.GetStringLength()) != raw_body) {
    return Invalid("jwt: the data claim does not equal the request body");
  }
  if (!issuer_.empty()) {
    auto iss = claims.FindMember("iss");
    if (iss == claims.MemberEnd() || !iss->value.IsString() ||
        WithoutTrailingSlash(
            std::string_view(iss->value.GetString(), iss->value.GetStringLength())) !=
            WithoutTrailingSlash(issuer_)) {
      return Invalid("jwt: iss does not name the configured Lago API URL");
    }
  }
  return Status::OK();
}

}  // namespace ledger::http
