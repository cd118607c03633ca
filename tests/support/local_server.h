// A cpp-httplib server of a test (a fake of an outside API) listening on 127.0.0.1, any free
// port, on its own thread from construction until destruction.
#pragma once

#include <httplib.h>

#include <chrono>
#include <string>
#include <thread>

namespace ledger::testing {

class LocalServer {
 public:
  // `server` has its routes; it must outlive this object.
  explicit LocalServer(httplib::Server* server) : server_(server) {
    port_ = server_->bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    for (int i = 0; i < 5000 && !server_->is_running(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  ~LocalServer() {
    server_->stop();
    thread_.join();
  }
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  httplib::Server* server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace ledger::testing
