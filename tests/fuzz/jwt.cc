// JWT verification (http/jwt.h) with an HS256 secret and a JWKS of one RSA and one EC P-256 key.
// The first byte picks what the rest is:
//   't'  a bearer token, verified as it is (the signatures and what comes before them);
//   's'  a header JSON line (empty: SignHs256's) and a payload JSON, signed with the HS256
//        secret and verified (the claims, past the signature);
//   'k'  a JWKS document, loaded as JWT_JWKS_FILE would be.
// A verified token's claims keep the rules jwt.h states (a user id sub, an unexpired exp).
#include <algorithm>
#include <memory>
#include <string>
#include <string_view>

#include "events/clock.h"
#include "events/types.h"
#include "http/base64.h"
#include "http/jwt.h"
#include "projections/json_util.h"
#include "tests/fuzz/fuzz_target.h"

namespace ledger::fuzz {

namespace {

constexpr int64_t kNowS = 1'750'000'000;
constexpr char kSecret[] = "fuzz-hs256-secret-0123456789abcdef";
// Public keys only (their private halves were not kept): RS256 and ES256 tokens reach the
// signature check, and JWKS loading is exercised on a real document.
constexpr char kJwks[] =
    R"json({"keys":[{"kty":"RSA","kid":"rsa-1","use":"sig","alg":"RS256","n":"7y-VZf28ZfjEOY8JP9GZ0)json"
    R"json(_QjRTIb9xn2dzp5MZpa8dqz9Ns_kSCREYXzE8NKkba2kU-wNh_rA0ui7ODKIZe2ZaaU6hyHSRiEKTb3DuO29_i1O)json"
    R"json(K3Z7-exCDRhk3RZx0SvWbvkCKU6iSp6_9Nne46SUdKu4r-9cScGO_QRxxLvtpYWHXKERYodM3tjT_J4KWu5FHC-_)json"
    R"json(ub1lXKjZzItIU4hmux6096dy6337IBtBPsyXfk4yRhsYAjtl2nrXX98tYZAIJECjgXb64wm3vhZu7Xx_bGDNCweh)json"
    R"json(QCnhg4QtR85mqmEA9ECfpuTAn4-7wnm47uLVMuc9CQYk0XlOSgLyucUfw","e":"AQAB"},{"kty":"EC","kid")json"
    R"json(:"ec-1","use":"sig","alg":"ES256","crv":"P-256","x":"2iF-E7DEkVOFnP5WKPsN_tZ8RLCRyQ83olp)json"
    R"json(hi43bx2w","y":"0cMCMw5e0zzpfoKNAfEUJ2PnOGzgNaOm-sEqTkz1YdQ"}]})json";

const Clock* TheClock() {
  static const ManualClock clock(kNowS * 1'000'000);
  return &clock;
}

const http::JwtVerifier& Verifier() {
  static const std::unique_ptr<http::JwtVerifier> verifier = [] {
    http::JwtOptions options;
    options.hs256_secret = kSecret;
    options.jwks_json = kJwks;
    std::unique_ptr<http::JwtVerifier> v;
    LEDGER_FUZZ_CHECK(http::JwtVerifier::Create(options, TheClock(), &v).ok());
    return v;
  }();
  return *verifier;
}

void CheckVerified(std::string_view token) {
  http::JwtClaims claims;
  const Status s = Verifier().Verify(token, &claims);
  if (!s.ok()) {
    LEDGER_FUZZ_CHECK(s.code() == Code::kUnauthenticated || s.code() == Code::kInvalidArgument);
    LEDGER_FUZZ_CHECK(token.size() < 16 || s.message().find(token) == std::string::npos);
    return;
  }
  LEDGER_FUZZ_CHECK(projections::IsValidUserId(claims.subject));
  LEDGER_FUZZ_CHECK(claims.expires_at_s + 30 > kNowS);
  LEDGER_FUZZ_CHECK(claims.algorithm == "HS256" || claims.algorithm == "RS256" ||
                    claims.algorithm == "ES256");
  LEDGER_FUZZ_CHECK(claims.admin == (std::find(claims.roles.begin(), claims.roles.end(),
                                               "admin") != claims.roles.end()));
}

}  // namespace

int FuzzJwt(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const char mode = static_cast<char>(data[0]);
  std::string_view rest = AsText(data + 1, size - 1);
  if (mode == 't') {
    CheckVerified(std::string(rest));
  } else if (mode == 's') {
    std::string header(TakeLine(&rest));
    if (header.empty()) header = R"({"alg":"HS256","typ":"JWT"})";
    const std::string input = http::Base64UrlEncode(header) + "." + http::Base64UrlEncode(rest);
    CheckVerified(input + "." + http::Base64UrlEncode(HmacSha256(kSecret, input)));
  } else if (mode == 'k') {
    http::JwtOptions options;
    options.jwks_json = std::string(rest);
    std::unique_ptr<http::JwtVerifier> verifier;
    // An empty document configures no key (the daemon then needs JWT_HS256_SECRET).
    if (http::JwtVerifier::Create(options, TheClock(), &verifier).ok() && !rest.empty()) {
      LEDGER_FUZZ_CHECK(verifier->enabled() && !verifier->key_ids().empty());
    }
  }
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzJwt)
