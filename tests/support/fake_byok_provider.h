// FakeProvider: the BYOK providers' APIs (http/byok_providers.h) on loopback, for the key tests
// of the BYOK routes (tests/http/byok_routes_test.cc) and of the assembled daemon.
#pragma once

#include <httplib.h>

#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

namespace ledger::testing {

// The providers' APIs on loopback, each under a path prefix of its own ("/openai", ...: the base
// URL the routes are given), each answering only the call and the authentication its real API
// takes:
//   openai       GET /v1/models       Authorization: Bearer <key>
//   anthropic    GET /v1/models       x-api-key: <key> and anthropic-version: 2023-06-01
//   huggingface  GET /api/whoami-v2   Authorization: Bearer <key>
//   openrouter   GET /api/v1/key      Authorization: Bearer <key>
// 200 for a key it knows (Accept), 401 for another key. As the real APIs do, a request without
// the provider's own authentication is 401 (counted: wrong_scheme()): a bearer token at
// Anthropic, an x-api-key (and no Authorization) at the others; so is an Anthropic request that
// also carries an Authorization. Anthropic without anthropic-version is 400. Any other path
// (another provider's call, say) is 404.
class FakeProvider {
 public:
  FakeProvider() {
    struct Api {
      const char* id;
      const char* path;
      bool x_api_key;  // Anthropic's scheme, else a bearer token
    };
    static constexpr Api kApis[] = {{"openai", "/v1/models", false},
                                    {"anthropic", "/v1/models", true},
                                    {"huggingface", "/api/whoami-v2", false},
                                    {"openrouter", "/api/v1/key", false}};
    for (const Api& api : kApis) {
      server_.Get("/" + std::string(api.id) + api.path,
                  [this, api](const httplib::Request& req, httplib::Response& res) {
                    std::lock_guard<std::mutex> lock(mu_);
                    ++calls_[api.id];
                    Answer(api.x_api_key, req, &res);
                  });
    }
    server_.Get(".*", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      ++calls_[""];
      res.status = 404;
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~FakeProvider() {
    server_.stop();
    thread_.join();
  }
  // The base URL of provider `id`.
  std::string url(const std::string& id) const {
    return "http://127.0.0.1:" + std::to_string(port_) + "/" + id;
  }
  void Accept(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    valid_.insert(key);
  }
  // Requests of any path.
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    int all = 0;
    for (const auto& [id, count] : calls_) all += count;
    return all;
  }
  // Requests of provider `id`'s call.
  int calls(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[id];
  }
  int wrong_scheme() {
    std::lock_guard<std::mutex> lock(mu_);
    return wrong_scheme_;
  }

 private:
  void Answer(bool x_api_key, const httplib::Request& req, httplib::Response* res) {
    std::string key;
    const std::string auth = req.get_header_value("Authorization");
    if (x_api_key) {
      if (!req.has_header("x-api-key") || req.has_header("Authorization")) {
        ++wrong_scheme_;
        res->status = 401;
        return;
      }
      if (req.get_header_value("anthropic-version") != "2023-06-01") {
        res->status = 400;
        return;
      }
      key = req.get_header_value("x-api-key");
    } else {
      if (auth.rfind("Bearer ", 0) != 0) {
        ++wrong_scheme_;
        res->status = 401;
        return;
      }
      key = auth.substr(7);
    }
    res->status = valid_.count(key) != 0 ? 200 : 401;
    res->set_content(R"({"data":[]})", "application/json");
  }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::set<std::string> valid_;
  std::map<std::string, int> calls_;  // by provider id; "" = another path
  int wrong_scheme_ = 0;
};

}  // namespace ledger::testing
