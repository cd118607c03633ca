#include "http/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <rapidjson/document.h>

#include <cmath>

#include "events/types.h"
#include "http/base64.h"
#include "http/limits.h"
#include "http/problem.h"
#include "projections/json_util.h"

namespace ledger::http {

namespace {

constexpr char kInvalidToken[] = "invalid_token";
constexpr char kBadConfig[] = "bad_jwt_config";
// RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output.
constexpr size_t kHs256SecretBytesMin = 32;
constexpr int kRsaBitsMin = 2048;
constexpr size_t kEs256CoordinateBytes = 32;

Status Invalid(std::string message) {
  return Status::Make(Code::kUnauthenticated, kInvalidToken, std::move(message));
}
Status BadConfig(std::string message) {
  return Status::InvalidArgument(kBadConfig, std::move(message));
}

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct PkeyCtxDeleter {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BnDeleter {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ParamBldDeleter {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamDeleter {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct EcdsaSigDeleter {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

enum class KeyType { kRsa, kEcP256 };

// A JWS split into its parts. Views point into the token.
struct CompactJws {
  std::string_view signing_input;  // "header.payload"
  std::string header_json;
  std::string payload_json;
  std::string signature;
};

Status SplitJws(std::string_view token, CompactJws* out) {
  if (token.empty()) return Invalid("empty token");
  if (token.size() > limits::kAuthorizationBytesMax) return Invalid("token too long");
  size_t first = token.find('.');
  if (first == std::string_view::npos) return Invalid("not a JWS");
  size_t second = token.find('.', first + 1);
  if (second == std::string_view::npos || token.find('.', second + 1) != std::string_view::npos) {
    return Invalid("not a compact JWS");
  }
  out->signing_input = token.substr(0, second);
  // base64url without padding (RFC 7515 §2): a '=' would give one token several spellings.
  if (token.find('=') != std::string_view::npos) return Invalid("padded base64url");
  if (!Base64UrlDecode(token.substr(0, first), &out->header_json) ||
      !Base64UrlDecode(token.substr(first + 1, second - first - 1), &out->payload_json) ||
      !Base64UrlDecode(token.substr(second + 1), &out->signature)) {
    return Invalid("malformed base64url");
  }
  if (out->signature.empty()) return Invalid("unsigned token");
  return Status::OK();
}

// Duplicate member names are refused (RFC 7515 §4, RFC 7519 §4: a last-wins reader elsewhere
// would see another "sub" or "exp" than this first-wins one), and so are invalid UTF-8 and
// nesting past the project's JSON depth limit.
Status ParseObject(const std::string& json, const char* what, rapidjson::Document* doc) {
  if (!projections::ParseJsonObject(json, doc).ok()) {
    return Invalid(std::string(what) + " is not a JSON object without duplicate members");
  }
  return Status::OK();
}

// A string member as a C string; null when absent, not a string, or holding a NUL ("alice\u0000x"
// would read as "alice").
const char* StringMember(const rapidjson::Value& object, const char* name) {
  auto it = object.FindMember(name);
  if (it == object.MemberEnd() || !it->value.IsString()) return nullptr;
  const char* text = it->value.GetString();
  if (std::char_traits<char>::length(text) != it->value.GetStringLength()) return nullptr;
  return text;
}

// Verifies an RSASSA-PKCS1-v1_5 / ECDSA (DER) signature with SHA-256.
bool DigestVerify(EVP_PKEY* key, std::string_view data, std::string_view signature) {
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!ctx) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()),
                          signature.size(), reinterpret_cast<const unsigned char*>(data.data()),
                          data.size()) == 1;
}

// JWS ES256 signatures are r||s (32 bytes each); OpenSSL wants a DER ECDSA-Sig-Value.
bool RawEcdsaToDer(std::string_view raw, std::string* der) {
  if (raw.size() != 2 * kEs256CoordinateBytes) return false;
  std::unique_ptr<ECDSA_SIG, EcdsaSigDeleter> sig(ECDSA_SIG_new());
  if (!sig) return false;
  const auto* bytes = reinterpret_cast<const unsigned char*>(raw.data());
  BIGNUM* r = BN_bin2bn(bytes, kEs256CoordinateBytes, nullptr);
  BIGNUM* s = BN_bin2bn(bytes + kEs256CoordinateBytes, kEs256CoordinateBytes, nullptr);
  if (r == nullptr || s == nullptr || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return false;
  }
  int len = i2d_ECDSA_SIG(sig.get(), nullptr);
  if (len <= 0) return false;
  der->resize(static_cast<size_t>(len));
  auto* p = reinterpret_cast<unsigned char*>(der->data());
  return i2d_ECDSA_SIG(sig.get(), &p) == len;
}

Status BuildRsaKey(const std::string& n, const std::string& e, PkeyPtr* out) {
  std::unique_ptr<BIGNUM, BnDeleter> bn_n(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()), nullptr));
  std::unique_ptr<BIGNUM, BnDeleter> bn_e(
      BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()), nullptr));
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldDeleter> bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    return BadConfig("cannot build RSA key parameters");
  }
  std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(bld.get()));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* key = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return BadConfig("invalid RSA key");
  }
  out->reset(key);
  if (EVP_PKEY_get_bits(key) < kRsaBitsMin) {
    return BadConfig("RSA key shorter than " + std::to_string(kRsaBitsMin) + " bits");
  }
  return Status::OK();
}

Status BuildEcP256Key(const std::string& x, const std::string& y, PkeyPtr* out) {
  if (x.size() != kEs256CoordinateBytes || y.size() != kEs256CoordinateBytes) {
    return BadConfig("EC P-256 coordinates must be 32 bytes");
  }
  std::string point = "\x04" + x + y;  // SEC 1 uncompressed point
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldDeleter> bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()) != 1) {
    return BadConfig("cannot build EC key parameters");
  }
  std::unique_ptr<OSSL_PARAM, ParamDeleter> params(OSSL_PARAM_BLD_to_param(bld.get()));
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* key = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return BadConfig("invalid EC P-256 key");
  }
  out->reset(key);
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxDeleter> check(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (!check || EVP_PKEY_public_check(check.get()) != 1) {
    return BadConfig("EC P-256 point is not on the curve");
  }
  return Status::OK();
}

Status DecodeKeyMember(const rapidjson::Value& jwk, const char* name, std::string* out) {
  const char* text = StringMember(jwk, name);
  if (text == nullptr || !Base64UrlDecode(text, out) || out->empty()) {
    return BadConfig(std::string("JWK member '") + name + "' missing or not base64url");
  }
  return Status::OK();
}

// Reads a NumericDate claim. Absent: *present = false.
Status ReadNumericDate(const rapidjson::Value& payload, const char* name, bool* present,
                       int64_t* seconds) {
  auto it = payload.FindMember(name);
  *present = it != payload.MemberEnd();
  if (!*present) return Status::OK();
  if (!it->value.IsNumber()) return Invalid(std::string("claim '") + name + "' is not a number");
  double value = it->value.GetDouble();
  if (!std::isfinite(value) || value < 0 || value > 1e15) {
    return Invalid(std::string("claim '") + name + "' out of range");
  }
  *seconds = static_cast<int64_t>(value);
  return Status::OK();
}

Status ReadRoles(const rapidjson::Value& array, std::vector<std::string>* roles) {
  if (!array.IsArray()) return Invalid("roles is not an array");
  for (const auto& role : array.GetArray()) {
    if (!role.IsString()) continue;
    if (roles->size() >= limits::kTokenRolesMax) return Invalid("too many roles");
    roles->emplace_back(role.GetString(), role.GetStringLength());
  }
  return Status::OK();
}

bool AudienceMatches(const rapidjson::Value& payload, const std::string& audience) {
  auto it = payload.FindMember("aud");
  if (it == payload.MemberEnd()) return false;
  // Compared with their lengths: a NUL inside "ledgerd\u0000x" must not end the comparison.
  auto equals = [&](const rapidjson::Value& v) {
    return v.IsString() &&
           std::string_view(v.GetString(), v.GetStringLength()) == std::string_view(audience);
  };
  if (it->value.IsString()) return equals(it->value);
  if (!it->value.IsArray()) return false;
  for (const auto& item : it->value.GetArray()) {
    if (equals(item)) return true;
  }
  return false;
}

}  // namespace

struct JwtVerifier::Key {
  std::string key_id;
  KeyType type;
  PkeyPtr pkey;
};

JwtVerifier::~JwtVerifier() = default;

Status JwtVerifier::Create(const JwtOptions& options, const Clock* clock,
                           std::unique_ptr<JwtVerifier>* out) {
  std::unique_ptr<JwtVerifier> verifier(new JwtVerifier());
  verifier->options_ = options;
  verifier->clock_ = clock != nullptr ? clock : SystemClock::Default();
  if (!options.hs256_secret.empty() && options.hs256_secret.size() < kHs256SecretBytesMin) {
    return BadConfig("the HS256 secret must be at least " + std::to_string(kHs256SecretBytesMin) +
                     " bytes (RFC 7518 §3.2)");
  }
  if (options.leeway_seconds < 0) return BadConfig("negative JWT leeway");
  if (!options.jwks_json.empty()) {
    rapidjson::Document doc;
    doc.Parse(options.jwks_json.data(), options.jwks_json.size());
    if (doc.HasParseError() || !doc.IsObject()) return BadConfig("JWKS is not a JSON object");
    auto keys = doc.FindMember("keys");
    if (keys == doc.MemberEnd() || !keys->value.IsArray()) return BadConfig("JWKS has no 'keys' array");
    for (const auto& jwk : keys->value.GetArray()) {
      if (!jwk.IsObject()) return BadConfig("JWKS key is not an object");
      const char* kty = StringMember(jwk, "kty");
      const char* kid = StringMember(jwk, "kid");
      const char* use = StringMember(jwk, "use");
      const char* alg = StringMember(jwk, "alg");
      if (kty == nullptr || kid == nullptr || *kid == '\0') continue;
      if (use != nullptr && std::string_view(use) != "sig") continue;  // e.g. RSA-OAEP "enc"
      auto key = std::make_unique<Key>();
      key->key_id = kid;
      if (std::string_view(kty) == "RSA") {
        if (alg != nullptr && std::string_view(alg) != "RS256") continue;
        std::string n, e;
        LEDGER_RETURN_IF_ERROR(DecodeKeyMember(jwk, "n", &n));
        LEDGER_RETURN_IF_ERROR(DecodeKeyMember(jwk, "e", &e));
        key->type = KeyType::kRsa;
        Status s = BuildRsaKey(n, e, &key->pkey);
        if (!s.ok()) return BadConfig("JWK '" + key->key_id + "': " + s.message());
      } else if (std::string_view(kty) == "EC") {
        const char* crv = StringMember(jwk, "crv");
        if (crv == nullptr || std::string_view(crv) != "P-256") continue;
        if (alg != nullptr && std::string_view(alg) != "ES256") continue;
        std::string x, y;
        LEDGER_RETURN_IF_ERROR(DecodeKeyMember(jwk, "x", &x));
        LEDGER_RETURN_IF_ERROR(DecodeKeyMember(jwk, "y", &y));
        key->type = KeyType::kEcP256;
        Status s = BuildEcP256Key(x, y, &key->pkey);
        if (!s.ok()) return BadConfig("JWK '" + key->key_id + "': " + s.message());
      } else {
        continue;  // "oct" and others: we never take symmetric keys from a JWKS
      }
      for (const auto& existing : verifier->keys_) {
        if (existing->key_id == key->key_id) return BadConfig("duplicate JWK kid '" + key->key_id + "'");
      }
      if (verifier->keys_.size() >= limits::kJwksKeysMax) return BadConfig("too many JWKS keys");
      verifier->keys_.push_back(std::move(key));
    }
    if (verifier->keys_.empty()) return BadConfig("JWKS has no RS256 or ES256 signing key");
  }
  *out = std::move(verifier);
  return Status::OK();
}

bool JwtVerifier::enabled() const { return !options_.hs256_secret.empty() || !keys_.empty(); }

std::vector<std::string> JwtVerifier::key_ids() const {
  std::vector<std::string> ids;
  for (const auto& key : keys_) ids.push_back(key->key_id);
  return ids;
}

Status JwtVerifier::Verify(std::string_view token, JwtClaims* claims) const {
  CompactJws jws;
  LEDGER_RETURN_IF_ERROR(SplitJws(token, &jws));
  rapidjson::Document header;
  LEDGER_RETURN_IF_ERROR(ParseObject(jws.header_json, "header", &header));
  const char* alg = StringMember(header, "alg");
  if (alg == nullptr) return Invalid("header has no 'alg'");
  if (header.HasMember("crit")) return Invalid("unsupported 'crit' header");
  const char* kid = StringMember(header, "kid");
  std::string_view algorithm(alg);

  // Signature first: nothing in the payload is trusted before it.
  if (algorithm == "HS256") {
    if (options_.hs256_secret.empty()) return Invalid("HS256 tokens are not accepted");
    std::string expected = HmacSha256(options_.hs256_secret, jws.signing_input);
    if (!ConstantTimeEquals(expected, jws.signature)) return Invalid("bad signature");
  } else if (algorithm == "RS256" || algorithm == "ES256") {
    if (kid == nullptr) return Invalid("header has no 'kid'");
    const Key* key = nullptr;
    for (const auto& candidate : keys_) {
      if (candidate->key_id == kid) key = candidate.get();
    }
    if (key == nullptr) return Invalid("unknown 'kid'");
    KeyType wanted = algorithm == "RS256" ? KeyType::kRsa : KeyType::kEcP256;
    if (key->type != wanted) return Invalid("'alg' does not match the key type");
    std::string der;
    std::string_view signature = jws.signature;
    if (wanted == KeyType::kEcP256) {
      if (!RawEcdsaToDer(jws.signature, &der)) return Invalid("bad ES256 signature length");
      signature = der;
    }
    if (!DigestVerify(key->pkey.get(), jws.signing_input, signature)) return Invalid("bad signature");
  } else {
    return Invalid("unsupported 'alg'");
  }

  rapidjson::Document payload;
  LEDGER_RETURN_IF_ERROR(ParseObject(jws.payload_json, "payload", &payload));
  const int64_t now_s = clock_->NowMicros() / 1000000;
  bool present = false;
  int64_t exp = 0, nbf = 0;
  LEDGER_RETURN_IF_ERROR(ReadNumericDate(payload, "exp", &present, &exp));
  if (!present) return Invalid("token has no 'exp'");
  if (now_s >= exp + options_.leeway_seconds) return Invalid("token expired");
  LEDGER_RETURN_IF_ERROR(ReadNumericDate(payload, "nbf", &present, &nbf));
  if (present && now_s + options_.leeway_seconds < nbf) return Invalid("token not yet valid");

  const char* iss = StringMember(payload, "iss");
  if (!options_.issuer.empty() && (iss == nullptr || options_.issuer != iss)) {
    return Invalid("wrong issuer");
  }
  if (!options_.audience.empty() && !AudienceMatches(payload, options_.audience)) {
    return Invalid("wrong audience");
  }
  const char* sub = StringMember(payload, "sub");
  if (sub == nullptr || *sub == '\0') return Invalid("token has no 'sub'");
  // `sub` is the caller's user id on every route (row keys, the events' user_id, an admin's
  // actor), so it is held to the user id rule here, once: a sub "a/b" or of 300 bytes was 200 on
  // my-access and the usage summary, 422 on consume and on BYOK add. The detail names the rule,
  // never the sub.
  if (!projections::IsValidUserId(sub)) {
    return Invalid("token's 'sub' is not a user id (1 to 255 bytes of UTF-8 without '/' or "
                   "control characters)");
  }

  JwtClaims result;
  result.algorithm = std::string(algorithm);
  result.key_id = kid != nullptr ? kid : "";
  result.subject = sub;
  // An address the identity provider does not say is verified is not taken: it becomes the email
  // admins find the user by, and it may be another user's. OIDC's `email_verified` is a boolean;
  // some providers (Amazon Cognito) send it as a string: `true` or "true" vouches for the address,
  // anything else (`false`, "false", 0, null) counts as unverified -- only the email is dropped,
  // the token stays valid. No claim at all: an IdP that does not say, whose address is taken as
  // it comes.
  const char* email = StringMember(payload, "email");
  auto verified = payload.FindMember("email_verified");
  const bool unverified =
      verified != payload.MemberEnd() && !verified->value.IsTrue() &&
      !(verified->value.IsString() && std::string_view(verified->value.GetString(),
                                                       verified->value.GetStringLength()) == "true");
  result.email = email != nullptr && !unverified ? email : "";
  result.issuer = iss != nullptr ? iss : "";
  result.expires_at_s = exp;
  auto realm = payload.FindMember("realm_access");
  if (realm != payload.MemberEnd() && realm->value.IsObject()) {
    auto roles = realm->value.FindMember("roles");
    if (roles != realm->value.MemberEnd()) LEDGER_RETURN_IF_ERROR(ReadRoles(roles->value, &result.roles));
  }
  auto roles = payload.FindMember("roles");
  if (roles != payload.MemberEnd()) LEDGER_RETURN_IF_ERROR(ReadRoles(roles->value, &result.roles));
  for (const auto& role : result.roles) {
    if (role == options_.admin_role) result.admin = true;
  }
  *claims = std::move(result);
  return Status::OK();
}

std::string SignHs256(std::string_view payload_json, std::string_view secret,
                      std::string_view key_id) {
  std::string header = R"({"alg":"HS256","typ":"JWT")";
  if (!key_id.empty()) header += R"(,"kid":)" + JsonQuote(key_id);
  header += "}";
  std::string input = Base64UrlEncode(header) + "." + Base64UrlEncode(payload_json);
  return input + "." + Base64UrlEncode(HmacSha256(secret, input));
}

Status VerifyRs256WithPem(std::string_view token, std::string_view public_key_pem,
                          std::string* payload_json) {
  CompactJws jws;
  LEDGER_RETURN_IF_ERROR(SplitJws(token, &jws));
  rapidjson::Document header;
  LEDGER_RETURN_IF_ERROR(ParseObject(jws.header_json, "header", &header));
  const char* alg = StringMember(header, "alg");
  if (alg == nullptr || std::string_view(alg) != "RS256") return Invalid("'alg' is not RS256");
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(public_key_pem.data(), static_cast<int>(public_key_pem.size())), &BIO_free);
  if (!bio) return Status::Internal("BIO_new_mem_buf failed");
  PkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA) {
    return BadConfig("not an RSA public key in PEM form");
  }
  if (!DigestVerify(key.get(), jws.signing_input, jws.signature)) return Invalid("bad signature");
  *payload_json = std::move(jws.payload_json);
  return Status::OK();
}

}  // namespace ledger::http
