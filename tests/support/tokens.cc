#include "tests/support/tokens.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "events/types.h"
#include "http/base64.h"
#include "http/problem.h"

namespace ledger::testing {

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "tokens: %s failed\n", what);
  std::abort();
}

std::string JsonStringArray(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ",";
    out += http::JsonQuote(items[i]);
  }
  return out + "]";
}

std::string BignumBytes(const BIGNUM* bn, int pad_to) {
  std::string out(static_cast<size_t>(pad_to > 0 ? pad_to : BN_num_bytes(bn)), '\0');
  int n = pad_to > 0 ? BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), pad_to)
                     : BN_bn2bin(bn, reinterpret_cast<unsigned char*>(out.data()));
  if (n < 0) Die("BN_bn2bin");
  return out;
}

std::string BignumParam(EVP_PKEY* key, const char* name, int pad_to) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(key, name, &bn) != 1) Die("EVP_PKEY_get_bn_param");
  std::string out = BignumBytes(bn, pad_to);
  BN_free(bn);
  return out;
}

}  // namespace

TokenClaims TokenClaims::User(std::string subject, int64_t now_s) {
  TokenClaims claims;
  claims.email = subject + "@example.com";
  claims.subject = std::move(subject);
  claims.issued_at_s = now_s;
  claims.expires_at_s = now_s + 3600;
  return claims;
}

TokenClaims TokenClaims::Admin(std::string subject, int64_t now_s) {
  TokenClaims claims = User(std::move(subject), now_s);
  claims.realm_roles = {"admin"};
  return claims;
}

std::string TokenClaims::ToJson() const {
  std::string json = "{";
  auto member = [&json](const std::string& name, const std::string& raw_value) {
    if (json.size() > 1) json += ",";
    json += http::JsonQuote(name) + ":" + raw_value;
  };
  if (!subject.empty()) member("sub", http::JsonQuote(subject));
  if (!email.empty()) member("email", http::JsonQuote(email));
  if (!issuer.empty()) member("iss", http::JsonQuote(issuer));
  if (audience.size() == 1) member("aud", http::JsonQuote(audience[0]));
  if (audience.size() > 1) member("aud", JsonStringArray(audience));
  if (expires_at_s) member("exp", std::to_string(*expires_at_s));
  if (not_before_s) member("nbf", std::to_string(*not_before_s));
  if (issued_at_s) member("iat", std::to_string(*issued_at_s));
  if (!realm_roles.empty()) member("realm_access", "{\"roles\":" + JsonStringArray(realm_roles) + "}");
  if (!roles.empty()) member("roles", JsonStringArray(roles));
  if (!extra_members.empty()) {
    if (json.size() > 1) json += ",";
    json += extra_members;
  }
  return json + "}";
}

std::string MintHs256(const TokenClaims& claims, std::string_view secret) {
  return SignWithHmac(R"({"alg":"HS256","typ":"JWT"})", claims.ToJson(), secret);
}

std::string SignWithHmac(std::string_view header_json, std::string_view payload_json, std::string_view key) {
  std::string input = http::Base64UrlEncode(header_json) + "." + http::Base64UrlEncode(payload_json);
  return input + "." + http::Base64UrlEncode(HmacSha256(key, input));
}

std::string UnsignedToken(std::string_view header_json, std::string_view payload_json) {
  return http::Base64UrlEncode(header_json) + "." + http::Base64UrlEncode(payload_json) + ".";
}

std::unique_ptr<TestSigningKey> TestSigningKey::Generate(Type type, std::string key_id,
                                                         unsigned rsa_bits) {
  std::unique_ptr<TestSigningKey> key(new TestSigningKey());
  key->type_ = type;
  key->key_id_ = std::move(key_id);
  key->key_ = type == Type::kRsa ? EVP_RSA_gen(rsa_bits) : EVP_EC_gen("P-256");
  if (key->key_ == nullptr) Die("key generation");
  return key;
}

TestSigningKey::~TestSigningKey() { EVP_PKEY_free(key_); }

std::string TestSigningKey::Jwk() const {
  std::string jwk = "{\"kid\":" + http::JsonQuote(key_id_) + ",\"use\":\"sig\",\"alg\":\"" + algorithm() + "\",";
  if (type_ == Type::kRsa) {
    jwk += "\"kty\":\"RSA\",\"n\":\"" + http::Base64UrlEncode(BignumParam(key_, OSSL_PKEY_PARAM_RSA_N, 0)) +
           "\",\"e\":\"" + http::Base64UrlEncode(BignumParam(key_, OSSL_PKEY_PARAM_RSA_E, 0)) + "\"}";
  } else {
    jwk += "\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"" +
           http::Base64UrlEncode(BignumParam(key_, OSSL_PKEY_PARAM_EC_PUB_X, 32)) + "\",\"y\":\"" +
           http::Base64UrlEncode(BignumParam(key_, OSSL_PKEY_PARAM_EC_PUB_Y, 32)) + "\"}";
  }
  return jwk;
}

std::string TestSigningKey::PublicKeyPem() const {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr || PEM_write_bio_PUBKEY(bio, key_) != 1) Die("PEM_write_bio_PUBKEY");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(len));
  BIO_free(bio);
  return pem;
}

std::string TestSigningKey::Sign(std::string_view payload_json) const {
  std::string header = std::string("{\"alg\":\"") + algorithm() + "\",\"typ\":\"JWT\",\"kid\":" +
                       http::JsonQuote(key_id_) + "}";
  return SignWithHeader(header, payload_json);
}

std::string TestSigningKey::SignWithHeader(std::string_view header_json, std::string_view payload_json) const {
  std::string input = http::Base64UrlEncode(header_json) + "." + http::Base64UrlEncode(payload_json);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  size_t sig_len = 0;
  if (ctx == nullptr || EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, key_) != 1 ||
      EVP_DigestSign(ctx, nullptr, &sig_len, reinterpret_cast<const unsigned char*>(input.data()),
                     input.size()) != 1) {
    Die("EVP_DigestSign (size)");
  }
  std::string sig(sig_len, '\0');
  if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
    Die("EVP_DigestSign");
  }
  EVP_MD_CTX_free(ctx);
  sig.resize(sig_len);
  if (type_ == Type::kEcP256) {
    // DER ECDSA-Sig-Value -> JWS raw r||s.
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* ecdsa = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    if (ecdsa == nullptr) Die("d2i_ECDSA_SIG");
    sig = BignumBytes(ECDSA_SIG_get0_r(ecdsa), 32) + BignumBytes(ECDSA_SIG_get0_s(ecdsa), 32);
    ECDSA_SIG_free(ecdsa);
  }
  return input + "." + http::Base64UrlEncode(sig);
}

std::string MakeJwks(const std::vector<const TestSigningKey*>& keys) {
  std::string jwks = "{\"keys\":[";
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) jwks += ",";
    jwks += keys[i]->Jwk();
  }
  return jwks + "]}";
}

void WriteTextFile(const std::string& path, std::string_view contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  if (!out) Die("WriteTextFile");
}

}  // namespace ledger::testing
