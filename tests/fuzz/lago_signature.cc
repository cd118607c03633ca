// Lago webhook signatures (http/lago_signature.h), hmac and jwt mode, and the public key file's
// three forms. The first byte picks what the rest is:
//   'v'  X-Lago-Signature-Algorithm line, X-Lago-Signature line, then the raw body: verified as
//        the route does;
//   's'  a JWS header JSON line (empty: {"alg":"RS256"}), a claims JSON line, then the raw body:
//        the token is RS256-signed with the fuzz key, so that the claims are checked too;
//   'p'  LAGO_WEBHOOK_PUBLIC_KEY_FILE's contents.
// Lago's own hmac signature of any body verifies; a loaded key loads again as itself.
#include <memory>
#include <string>
#include <string_view>

#include "http/lago_signature.h"
#include "tests/fuzz/fuzz_target.h"
#include "tests/support/tokens.h"

namespace ledger::fuzz {

namespace {

constexpr char kHmacKey[] = "fuzz-lago-hmac-key";
constexpr char kIssuer[] = "https://lago.example";

// A small RSA key made once per run: signing with it per input stays cheap.
const testing::TestSigningKey& SigningKey() {
  static const std::unique_ptr<testing::TestSigningKey> key =
      testing::TestSigningKey::Generate(testing::TestSigningKey::Type::kRsa, "fuzz", 1024);
  return *key;
}

const http::LagoSignatureVerifier& Verifier() {
  static const std::unique_ptr<http::LagoSignatureVerifier> verifier = [] {
    std::unique_ptr<http::LagoSignatureVerifier> v;
    LEDGER_FUZZ_CHECK(
        http::LagoSignatureVerifier::Create({kHmacKey, SigningKey().PublicKeyPem(), kIssuer}, &v)
            .ok());
    return v;
  }();
  return *verifier;
}

void CheckVerify(std::string_view algorithm, std::string_view signature, std::string_view body) {
  std::string mode;
  const Status s = Verifier().Verify(algorithm, signature, body, &mode);
  if (s.ok()) {
    LEDGER_FUZZ_CHECK(mode == "hmac" || mode == "jwt");
  } else {
    LEDGER_FUZZ_CHECK(s.code() == Code::kInvalidArgument);
    LEDGER_FUZZ_CHECK(s.message().find(kHmacKey) == std::string::npos);
    LEDGER_FUZZ_CHECK(signature.size() < 16 || s.message().find(signature) == std::string::npos);
  }
}

}  // namespace

int FuzzLagoSignature(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const char mode = static_cast<char>(data[0]);
  std::string_view rest = AsText(data + 1, size - 1);
  if (mode == 'v') {
    const std::string algorithm(TakeLine(&rest));
    const std::string signature(TakeLine(&rest));
    const std::string body(rest);
    CheckVerify(algorithm, signature, body);
    std::string verified_mode;
    LEDGER_FUZZ_CHECK(
        Verifier().Verify("hmac", http::LagoHmacSignature(kHmacKey, body), body, &verified_mode)
            .ok());
  } else if (mode == 's') {
    std::string header(TakeLine(&rest));
    if (header.empty()) header = R"({"alg":"RS256"})";
    const std::string claims(TakeLine(&rest));
    const std::string body(rest);
    CheckVerify("jwt", SigningKey().SignWithHeader(header, claims), body);
  } else if (mode == 'p') {
    std::string pem;
    if (http::LoadLagoPublicKey(rest, &pem).ok()) {
      std::string again;
      LEDGER_FUZZ_CHECK(http::LoadLagoPublicKey(pem, &again).ok() && again == pem);
      std::unique_ptr<http::LagoSignatureVerifier> verifier;
      LEDGER_FUZZ_CHECK(http::LagoSignatureVerifier::Create({"", pem, ""}, &verifier).ok());
    }
  }
  return 0;
}

}  // namespace ledger::fuzz

LEDGER_FUZZ_TARGET(ledger::fuzz::FuzzLagoSignature)
