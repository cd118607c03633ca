// Test helpers for talking to an HttpServer (or a whole ledgerd) over loopback.
//
//   TestHttpClient client("127.0.0.1", server->port());
//   client.set_bearer(token);
//   HttpReply r = client.Post("/api/v1/usage/consume", R"({"service":"chat"})",
//                             {{"Idempotency-Key", "k1"}});
//   EXPECT_EQ(r.status, 200);
//   EXPECT_EQ(r.Json()["allowed"].GetBool(), true);
//
// RawHttpExchange() sends exact bytes (bad framing, smuggling attempts, oversized chunked bodies)
// and returns everything the server answered until it closed the connection or went quiet.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>
#include <rapidjson/document.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>

namespace ledger::testing {

struct HttpReply {
  int status = 0;     // 0: transport error (see `error`)
  std::string error;  // httplib::to_string(Error) on transport errors
  std::string body;
  httplib::Headers headers;

  std::string Header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
  bool HasHeader(const std::string& name) const { return headers.find(name) != headers.end(); }
  // The body parsed as JSON (a parse error leaves doc.HasParseError() true).
  rapidjson::Document Json() const {
    rapidjson::Document doc;
    doc.Parse(body.data(), body.size());
    return doc;
  }
};

class TestHttpClient {
 public:
  TestHttpClient(const std::string& host, int port) : client_(host, port) {
    client_.set_connection_timeout(std::chrono::seconds(5));
    client_.set_read_timeout(std::chrono::seconds(30));
    client_.set_write_timeout(std::chrono::seconds(30));
  }

  // Sent as `Authorization: Bearer <token>` on every request; empty = no header.
  void set_bearer(std::string token) { bearer_ = std::move(token); }
  void set_keep_alive(bool on) { client_.set_keep_alive(on); }

  HttpReply Get(const std::string& path, httplib::Headers headers = {}) {
    return Convert(client_.Get(path, WithAuth(std::move(headers))));
  }
  HttpReply Post(const std::string& path, const std::string& body, httplib::Headers headers = {},
                 const std::string& content_type = "application/json") {
    return Convert(client_.Post(path, WithAuth(std::move(headers)), body, content_type));
  }
  HttpReply Put(const std::string& path, const std::string& body, httplib::Headers headers = {},
                const std::string& content_type = "application/json") {
    return Convert(client_.Put(path, WithAuth(std::move(headers)), body, content_type));
  }
  HttpReply Patch(const std::string& path, const std::string& body, httplib::Headers headers = {},
                  const std::string& content_type = "application/json") {
    return Convert(client_.Patch(path, WithAuth(std::move(headers)), body, content_type));
  }
  HttpReply Delete(const std::string& path, httplib::Headers headers = {}) {
    return Convert(client_.Delete(path, WithAuth(std::move(headers))));
  }
  // Sends `total_bytes` of 'x' with Transfer-Encoding: chunked (in 16 KiB chunks).
  HttpReply PostChunked(const std::string& path, size_t total_bytes, httplib::Headers headers = {}) {
    auto provider = [total_bytes](size_t offset, httplib::DataSink& sink) {
      if (offset >= total_bytes) {
        sink.done();
        return true;
      }
      std::string chunk(std::min<size_t>(16 * 1024, total_bytes - offset), 'x');
      return sink.write(chunk.data(), chunk.size());
    };
    return Convert(client_.Post(path, WithAuth(std::move(headers)), provider, "application/json"));
  }

  httplib::Client& raw() { return client_; }

 private:
  httplib::Headers WithAuth(httplib::Headers headers) const {
    if (!bearer_.empty()) headers.emplace("Authorization", "Bearer " + bearer_);
    return headers;
  }
  static HttpReply Convert(const httplib::Result& result) {
    HttpReply reply;
    if (!result) {
      reply.error = httplib::to_string(result.error());
      return reply;
    }
    reply.status = result->status;
    reply.body = result->body;
    reply.headers = result->headers;
    return reply;
  }

  httplib::Client client_;
  std::string bearer_;
};

// A blocking TCP connection to 127.0.0.1:`port`; -1 when it failed.
inline int ConnectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Connects to 127.0.0.1:`port`, writes `request` while reading whatever the server answers (so an
// early answer to a large body is seen), stops writing quietly if the server closes, and returns
// everything read until the server closes the connection or `quiet_ms` pass without progress.
// Returns "" when the connection failed.
// The socket of this process listening on 127.0.0.1:`port` (found through /proc/self/fd), or -1:
// for tests that make the server's accept() fail (shutdown(fd, SHUT_RD): EINVAL).
inline int ListeningSocketOf(int port) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    int fd = -1;
    try {
      fd = std::stoi(entry.path().filename().string());
    } catch (...) {
      continue;
    }
    int accepting = 0;
    socklen_t length = sizeof(accepting);
    if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &length) != 0 || !accepting) {
      continue;
    }
    sockaddr_in addr{};
    socklen_t addr_length = sizeof(addr);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addr_length) == 0 &&
        addr.sin_family == AF_INET && ntohs(addr.sin_port) == port) {
      return fd;
    }
  }
  return -1;
}

inline std::string RawHttpExchange(int port, std::string_view request, int quiet_ms = 2000) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 && errno != EINPROGRESS) {
    ::close(fd);
    return "";
  }
  std::string response;
  char buf[16384];
  size_t sent = 0;
  bool can_send = true;
  for (;;) {
    pollfd pfd{fd, static_cast<short>(POLLIN | (can_send && sent < request.size() ? POLLOUT : 0)), 0};
    if (::poll(&pfd, 1, quiet_ms) <= 0) break;
    if (pfd.revents & POLLOUT) {
      ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<size_t>(n);
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        can_send = false;
      }
    }
    if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n > 0) {
        response.append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        break;
      }
    }
  }
  ::close(fd);
  return response;
}

}  // namespace ledger::testing
