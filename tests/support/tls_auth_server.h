// An https fake of an outside API for the tests that check a client trusts a server only when told
// to: a self-signed certificate (its CA written to `ca_path`, which the system trust store never
// knows) and one route that answers `answer` (JSON) and records the Authorization header of every
// request it read -- so a test can tell whether a key ever left the client.
//
//   TlsAuthServer server;
//   server.Start(dir.Sub("ca.pem"), "GET", "/v1/models", R"({"data":[]})");  // ASSERTs inside
//   if (HasFatalFailure()) return;
//   ... client of server.url() ...
//   EXPECT_EQ(server.seen_auth(), std::vector<std::string>{"Bearer trusted"});
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tests/support/local_server.h"
#include "tests/support/self_signed.h"

namespace ledger::testing {

class TlsAuthServer {
 public:
  TlsAuthServer() = default;
  TlsAuthServer(const TlsAuthServer&) = delete;
  TlsAuthServer& operator=(const TlsAuthServer&) = delete;

  // `method` is "GET" or "POST". Fails the test (ASSERT) when the certificate or the server does.
  void Start(const std::string& ca_path, const std::string& method, const std::string& path,
             const std::string& answer) {
    MakeSelfSigned(&pki_, ca_path);
    if (::testing::Test::HasFatalFailure()) return;
    server_ = std::make_unique<httplib::SSLServer>(pki_.cert, pki_.key);
    ASSERT_TRUE(server_->is_valid());
    auto handler = [this, answer](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      seen_auth_.push_back(req.get_header_value("Authorization"));
      res.set_content(answer, "application/json");
    };
    if (method == "POST") {
      server_->Post(path, handler);
    } else {
      server_->Get(path, handler);
    }
    running_ = std::make_unique<LocalServer>(server_.get());
    ASSERT_GT(running_->port(), 0);
  }

  std::string url() const { return "https://127.0.0.1:" + std::to_string(running_->port()); }

  // The Authorization of every request the server read, in order ("" where a request had none).
  std::vector<std::string> seen_auth() const {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_auth_;
  }

 private:
  SelfSigned pki_;
  std::unique_ptr<httplib::SSLServer> server_;
  mutable std::mutex mu_;
  std::vector<std::string> seen_auth_;
  std::unique_ptr<LocalServer> running_;  // last: stopped before the server and its routes go
};

}  // namespace ledger::testing
