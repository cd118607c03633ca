// A self-signed certificate for 127.0.0.1 (and localhost), for the tests that run an outside API
// over TLS (httplib::SSLServer(cert, key)) and check that a client trusts it only when told to:
// the system trust store never knows it.
//
//   SelfSigned pki;
//   MakeSelfSigned(&pki, dir.Sub("ca.pem"));  // fails the test (ASSERT) when OpenSSL does
//   if (HasFatalFailure()) return;
//   httplib::SSLServer server(pki.cert, pki.key);
#pragma once

#include <string>

typedef struct evp_pkey_st EVP_PKEY;
typedef struct x509_st X509;

namespace ledger::testing {

struct SelfSigned {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  SelfSigned() = default;
  SelfSigned(const SelfSigned&) = delete;
  SelfSigned& operator=(const SelfSigned&) = delete;
  ~SelfSigned();
};

// A fresh RSA key and a certificate for it (a CA of its own, valid for the next hour), written as
// PEM to `cert_path` (the file a client is given as its CA).
void MakeSelfSigned(SelfSigned* out, const std::string& cert_path);

}  // namespace ledger::testing
