// The event loop's own request parser (HttpServerOptions::loop_own_parser) against cpp-httplib's
// request processing: the same raw bytes sent to two servers with the same routes, one with each,
// must get the same answers (status, headers, body, and whether the connection stays open), and
// the handlers must see the same request. Which of the two parsed a request is visible to the
// handler: cpp-httplib adds `REMOTE_ADDR` pseudo headers, the server's own parser does not; the
// tests check that the plain requests really took the own parser and that the rest did not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "http/problem.h"
#include "http/server.h"
#include "tests/support/http_client.h"
#include "tests/support/http_stack.h"
#include "tests/support/tokens.h"

namespace ledger::http {
namespace {

using testing::RawHttpExchange;
using testing::TestHttpStack;

bool IsPseudoHeader(const std::string& name) {
  return name == "REMOTE_ADDR" || name == "REMOTE_PORT" || name == "LOCAL_ADDR" ||
         name == "LOCAL_PORT";
}

// What the handler saw, as text; which parser read the request goes into `X-Parsed-By`.
void Mirror(const httplib::Request& req, httplib::Response* res) {
  std::string text = "method=" + req.method + "\ntarget=" + req.target + "\npath=" + req.path +
                     "\nversion=" + req.version + "\n";
  for (const auto& [name, value] : req.headers) {
    if (!IsPseudoHeader(name)) text += "header " + name + "=" + value + "\n";
  }
  for (const auto& [name, value] : req.params) text += "param " + name + "=" + value + "\n";
  text += "body=" + req.body + "\n";
  res->status = 200;
  res->set_header("X-Parsed-By", req.has_header("REMOTE_ADDR") ? "httplib" : "own");
  res->set_content(text, "text/plain");
}

class LoopParserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartOne(&own_, true));
    ASSERT_NO_FATAL_FAILURE(StartOne(&library_, false));
  }
  void TearDown() override {
    own_.Stop();
    library_.Stop();
    std::lock_guard<std::mutex> lock(mu_);
    for (std::thread& t : answerers_) t.join();
  }

  void StartOne(TestHttpStack* stack, bool own_parser) {
    RouteTable routes;
    auto mirror = [](const httplib::Request& req, httplib::Response& res, const Identity&) {
      Mirror(req, &res);
    };
    routes.Add("GET", "/loop-mirror", "/loop-mirror", Policy::kPublic, mirror,
               Threading::kEventLoop);
    routes.Add("POST", "/loop-mirror", "/loop-mirror", Policy::kPublic, mirror,
               Threading::kEventLoop);
    // Answered later, from another thread (as consume answers after its group's sync).
    routes.Add("POST", "/loop-mirror-later", "/loop-mirror-later", Policy::kPublic,
               [this](const httplib::Request& req, httplib::Response&, const Identity&) {
                 Responder respond = DeferResponse(req);
                 ASSERT_TRUE(respond != nullptr);
                 httplib::Response later;
                 Mirror(req, &later);
                 std::lock_guard<std::mutex> lock(mu_);
                 answerers_.emplace_back([respond, later]() mutable {
                   std::this_thread::sleep_for(std::chrono::milliseconds(2));
                   respond(std::move(later));
                 });
               },
               Threading::kEventLoop);
    routes.Add("GET", "/loop-bare-404", "/loop-bare-404", Policy::kPublic,
               [](const httplib::Request&, httplib::Response& res, const Identity&) {
                 res.status = 404;
               },
               Threading::kEventLoop);
    routes.Add("GET", "/loop-untyped", "/loop-untyped", Policy::kPublic,
               [](const httplib::Request&, httplib::Response& res, const Identity&) {
                 res.body = "no content type";
               },
               Threading::kEventLoop);
    routes.Add("GET", "/loop-throws", "/loop-throws", Policy::kPublic,
               [](const httplib::Request&, httplib::Response&, const Identity&) {
                 throw std::runtime_error("boom");
               },
               Threading::kEventLoop);
    routes.Add("POST", "/loop-admin", "/loop-admin", Policy::kAdmin, mirror,
               Threading::kEventLoop);
    AuthOptions auth;
    auth.jwt.hs256_secret = testing::kTestHs256Secret;
    HttpServerOptions options = TestHttpStack::DefaultOptions();
    options.body_bytes_max = 1024;
    options.loop_own_parser = own_parser;
    Status s = stack->Start(std::move(routes), auth, &clock_, options);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // The answers to `request` followed by a plain request that closes the connection, with each
  // answer's headers in a canonical order (the two servers write them in different orders) and
  // `X-Parsed-By` taken out into *parsed_by.
  static std::string Exchange(int port, const std::string& request,
                              std::vector<std::string>* parsed_by, int quiet_ms = 1500) {
    const std::string raw = RawHttpExchange(
        port, request + "GET /loop-mirror HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        quiet_ms);
    std::string out;
    size_t pos = 0;
    while (pos < raw.size()) {
      const size_t head_end = raw.find("\r\n\r\n", pos);
      if (head_end == std::string::npos) {
        out += "unparsed: " + raw.substr(pos);
        break;
      }
      std::vector<std::string> lines;
      for (size_t at = pos; at < head_end + 2;) {
        const size_t end = raw.find("\r\n", at);
        lines.push_back(raw.substr(at, end - at));
        at = end + 2;
      }
      size_t length = 0;
      std::vector<std::string> headers;
      for (size_t i = 1; i < lines.size(); ++i) {
        const size_t colon = lines[i].find(':');
        std::string name = lines[i].substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(),
                       [](unsigned char c) { return std::tolower(c); });
        const std::string value =
            colon == std::string::npos ? "" : std::string(TrimBlanks(lines[i].substr(colon + 1)));
        if (name == "content-length") length = std::stoul(value);
        if (name == "x-parsed-by") {
          parsed_by->push_back(value);
        } else {
          headers.push_back(name + ": " + value);
        }
      }
      std::sort(headers.begin(), headers.end());
      out += lines[0] + "\n";
      for (const std::string& h : headers) out += h + "\n";
      out += "\n" + raw.substr(head_end + 4, length) + "\n----\n";
      pos = head_end + 4 + length;
    }
    return out;
  }

  // Sends `request` to both servers: same answers, and `first_parsed_by` ("own" or "httplib")
  // on the own-parser server for the first answer that names its parser (none when empty: the
  // connection is closed after an error answer).
  void ExpectSame(const std::string& request, const std::string& first_parsed_by) {
    SCOPED_TRACE(request);
    std::vector<std::string> own_parsers, library_parsers;
    const std::string own = Exchange(own_.port(), request, &own_parsers);
    const std::string library = Exchange(library_.port(), request, &library_parsers);
    EXPECT_EQ(own, library);
    EXPECT_FALSE(own.empty());
    for (const std::string& p : library_parsers) EXPECT_EQ(p, "httplib");
    if (first_parsed_by.empty()) {
      EXPECT_TRUE(own_parsers.empty()) << own;
    } else {
      ASSERT_FALSE(own_parsers.empty()) << own;
      EXPECT_EQ(own_parsers.front(), first_parsed_by);
    }
  }

  ManualClock clock_{1'800'000'000LL * 1000000};
  TestHttpStack own_;
  TestHttpStack library_;
  std::mutex mu_;
  std::vector<std::thread> answerers_;  // guarded by mu_
};

TEST_F(LoopParserTest, PlainRequestsGetTheSameAnswersFromTheOwnParser) {
  ExpectSame("POST /loop-mirror HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer abc\r\n"
             "Content-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"b c\"}",
             "own");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\n\r\n", "own");
  // Blanks around values, none after the colon, repeated and differently cased names.
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nhost:x\r\nX-A:   spaced value \t\r\nX-B:tight\r\n"
             "x-c: 1\r\nX-C: 2\r\nCONTENT-length: 0\r\n\r\n",
             "own");
  ExpectSame("POST /loop-mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "own");
  // Two pipelined in one send.
  ExpectSame("POST /loop-mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
             "POST /loop-mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz",
             "own");
  // Deferred answers, alone and pipelined behind an immediate one.
  ExpectSame("POST /loop-mirror-later HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", "own");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\n\r\n"
             "POST /loop-mirror-later HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
             "own");
}

TEST_F(LoopParserTest, ConnectionHandlingIsTheSame) {
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "own");
  ExpectSame(
      "POST /loop-mirror-later HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz",
      "own");
  // HTTP/1.0 closes unless it asks for keep-alive.
  ExpectSame("GET /loop-mirror HTTP/1.0\r\nHost: x\r\n\r\n", "own");
  ExpectSame("GET /loop-mirror HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "own");
  ExpectSame("POST /loop-mirror-later HTTP/1.0\r\nContent-Length: 1\r\n\r\nz", "own");
  // A refused policy: answered, then the connection is closed (lingering).
  ExpectSame("POST /loop-admin HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "");
  // A GET with a body: cpp-httplib never reads it (the handler sees none) and the connection is
  // closed after the answer, so the body can never be read as a next request.
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "own");
}

TEST_F(LoopParserTest, ImmediateAnswersGetTheLibrarysDefaults) {
  // A bare error status becomes a problem; a body without a type is text/plain; a throwing
  // handler answers 500.
  ExpectSame("GET /loop-bare-404 HTTP/1.1\r\nHost: x\r\n\r\n", "own");
  ExpectSame("GET /loop-untyped HTTP/1.1\r\nHost: x\r\n\r\n", "own");
  ExpectSame("GET /loop-throws HTTP/1.1\r\nHost: x\r\n\r\n", "own");
}

TEST_F(LoopParserTest, WhatIsNotPlainIsLeftToTheLibrary) {
  // Percent-escapes in a value (cpp-httplib 0.11.4 decodes them), an empty value, a range.
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nX-Escaped: a%41b\r\n\r\n", "httplib");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nX-Empty:\r\n\r\n", "httplib");
  // An empty Idempotency-Key is kept, empty (cpp-httplib would drop it: no key at all).
  ExpectSame("POST /loop-mirror HTTP/1.1\r\nHost: x\r\nIdempotency-Key:  \r\n"
             "Content-Length: 0\r\n\r\n", "httplib");
  // An absolute-form target is routed by its path, its authority the Host; an unknown method is
  // 501, another HTTP major version 505.
  ExpectSame("GET http://a.example:81/loop-mirror?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", "httplib");
  ExpectSame("FOO /loop-mirror HTTP/1.1\r\nHost: x\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/2.0\r\nHost: x\r\n\r\n", "");
  std::vector<std::string> parsed_by;
  EXPECT_NE(Exchange(own_.port(),
                     "POST /loop-mirror HTTP/1.1\r\nHost: x\r\nIdempotency-Key:\r\n"
                     "Content-Length: 0\r\n\r\n",
                     &parsed_by)
                .find("header Idempotency-Key=\n"),
            std::string::npos);
  const std::string absolute = Exchange(
      own_.port(), "GET http://a.example:81/loop-mirror?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", &parsed_by);
  EXPECT_NE(absolute.find("target=/loop-mirror?q=1\npath=/loop-mirror\n"), std::string::npos)
      << absolute;
  EXPECT_NE(absolute.find("header Host=a.example:81\n"), std::string::npos) << absolute;
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nRange: bytes=0-3\r\n\r\n", "httplib");
  // A query, an escape in the path, another version.
  ExpectSame("GET /loop-mirror?x=1&y=%41 HTTP/1.1\r\nHost: x\r\n\r\n", "httplib");
  // A higher minor version of HTTP/1 is served as HTTP/1.1 (RFC 9110 §2.5), by cpp-httplib;
  // a version it cannot parse is a 400 without reading the head (the connection closes after it,
  // so the rest of the head is never taken for a next request).
  ExpectSame("GET /loop-mirror HTTP/1.2\r\nHost: x\r\n\r\n", "httplib");
  ExpectSame("GET /loop-mirror HTTP/1.x\r\nHost: x\r\n\r\n", "");
  // A bare LF (refused: cpp-httplib would skip the line it ends), a bare-LF blank line, a NUL
  // (refused too, RFC 9110 §5.5).
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\nX-Hidden: 1\r\nX-B: 2\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\n\n", "");
  ExpectSame(std::string("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nX-Nul: a\0b\r\n\r\n", 50),
             "");
  // More header lines than the own parser keeps.
  std::string many = "GET /loop-mirror HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 40; ++i) many += "X-H" + std::to_string(i) + ": " + std::to_string(i) + "\r\n";
  ExpectSame(many + "\r\n", "httplib");
  // Refused with 400 by the library's path: blanks before a colon, a folded line.
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", "");
  // RFC 9112 §3.2: an HTTP/1.1 request without Host, with two, or with a value that is no
  // host[:port] is a 400 (HTTP/1.0 may leave it out).
  ExpectSame("GET /loop-mirror HTTP/1.1\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: x/y\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: a@b\r\n\r\n", "");
  ExpectSame("GET /loop-mirror HTTP/1.1\r\nHost: [::1]:8084\r\n\r\n", "own");
  ExpectSame("GET /loop-mirror HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n", "");
}

// Random requests around what the own parser accepts: header names in any case, blanks around
// colons and values, values with escapes and separators, empty values, repeated and odd
// Content-Length forms, bad line ends, NULs, other versions, methods and targets, pipelining. Each
// goes to both servers, which must answer alike. Seeded: a failure names its seed and request;
// LEDGER_FUZZ_CASES=N runs more (from seed LEDGER_FUZZ_SEED).
class RequestGenerator {
 public:
  explicit RequestGenerator(uint64_t seed) : rng_(seed) {}

  std::string Request() {
    std::string out;
    const int pipelined = OneIn(4) ? 2 : 1;
    for (int i = 0; i < pipelined; ++i) out += One();
    return out;
  }

 private:
  size_t Pick(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng_); }
  bool OneIn(size_t n) { return Pick(n) == 0; }
  template <typename T, size_t N>
  const T& Of(const T (&items)[N]) {
    return items[Pick(N)];
  }

  std::string Cased(std::string name) {
    switch (Pick(4)) {
      case 0:
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        break;
      case 1:
        for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        break;
      default:
        break;
    }
    return name;
  }

  std::string Blanks() {
    static const char* const kBlanks[] = {"", "", " ", " ", "  ", "\t", " \t"};
    return Of(kBlanks);
  }

  std::string Value() {
    static const char kChars[] = "abcXYZ019 -_.,;=\"/+*~:";
    std::string v;
    const size_t n = Pick(12);
    for (size_t i = 0; i < n; ++i) v += kChars[Pick(sizeof(kChars) - 1)];
    if (OneIn(8)) v += "%4" + std::string(1, "1Fz"[Pick(3)]);
    if (OneIn(12)) v += static_cast<char>(0x80 + Pick(0x80));
    return v;
  }

  std::string LengthText(size_t length) {
    const std::string digits = std::to_string(length);
    switch (Pick(10)) {
      case 0: return "0" + digits;
      case 1: return " " + digits + " ";
      case 2: return digits + "\t";
      default: return digits;
    }
  }

  std::string One() {
    // Requests that cpp-httplib refuses before reading their head (an odd method or version)
    // leave the rest of the bytes to be read as requests, and both servers then wait for the
    // client's silence: kept rare, so that the cases stay fast.
    static const char* const kLines[] = {"GET /loop-mirror", "POST /loop-mirror",
                                         "POST /loop-mirror-later", "GET /loop-bare-404",
                                         "GET /loop-untyped"};
    static const char* const kOddLines[] = {
        "get /loop-mirror",      "GET /loop-mirror?a=b%41", "GET /loop-mirror#frag",
        "GET /loop-mirro%72",    "GET //loop-mirror",       "POST /loop-mirror/",
        "GET  /loop-mirror",     "PUT /loop-mirror"};
    static const char* const kOddVersions[] = {" HTTP/1.2", " http/1.1", " HTTP/1.1 "};
    const char* version = OneIn(40) ? Of(kOddVersions) : OneIn(12) ? " HTTP/1.0" : " HTTP/1.1";
    // Common names twice as often.
    static const char* const kNames[] = {
        "Authorization", "Content-Type",    "X-Custom",   "Accept",   "User-Agent",
        "Cookie",        "X-Forwarded-For", "Connection", "X-Custom", "Accept"};
    static const char* const kRareNames[] = {"Expect", "Range", "Transfer-Encoding"};
    std::string head = std::string(OneIn(30) ? Of(kOddLines) : Of(kLines)) + version + "\r\n";
    // One Host, now and then none, two or an odd one (each a 400 in HTTP/1.1).
    const size_t hosts = OneIn(25) ? 0 : OneIn(25) ? 2 : 1;
    for (size_t i = 0; i < hosts; ++i) {
      head += Cased("Host") + ":" + Blanks() + (OneIn(20) ? Value() : "127.0.0.1:8084") + "\r\n";
    }
    const size_t headers = Pick(6);
    for (size_t i = 0; i < headers; ++i) {
      std::string name = Cased(OneIn(20) ? Of(kRareNames) : Of(kNames));
      std::string value = Value();
      if (EqualsIgnoreCase(name, "Connection")) {
        static const char* const kConnection[] = {"keep-alive", "close", "Keep-Alive", "Upgrade"};
        value = Of(kConnection);
      } else if (EqualsIgnoreCase(name, "Expect")) {
        value = "100-continue";
      } else if (EqualsIgnoreCase(name, "Transfer-Encoding")) {
        value = OneIn(2) ? "chunked" : "identity";
      }
      const std::string before_colon = OneIn(40) ? " " : "";
      head += name + before_colon + ":" + Blanks() + value + Blanks() + "\r\n";
    }
    if (OneIn(40)) {  // around the server's longest header line (4096 bytes)
      head += "X-Long: " + std::string(4080 + Pick(20), 'v') + "\r\n";
    }
    std::string body;
    // Around the test servers' body limit (1024 bytes) now and then.
    const size_t body_bytes = OneIn(3) ? 0 : OneIn(15) ? 1000 + Pick(50) : Pick(40);
    for (size_t i = 0; i < body_bytes; ++i) body += static_cast<char>('a' + Pick(26));
    if (body_bytes > 0 || OneIn(3)) {
      const std::string line =
          Cased("Content-Length") + ":" + Blanks() + LengthText(body_bytes) + "\r\n";
      head += line;
      if (OneIn(15)) head += line;  // the same length twice
    }
    if (OneIn(25)) {  // a bare LF or CR, or a NUL, somewhere in the head after the request line
      const size_t line_end = head.find("\r\n");
      const size_t at = line_end + 2 + Pick(head.size() - line_end - 1);
      static const char kOdd[] = {'\n', '\r', '\0'};
      head.insert(at, 1, Of(kOdd));
    }
    return head + "\r\n" + body;
  }

  std::mt19937_64 rng_;
};

uint64_t EnvNumber(const char* name, uint64_t fallback) {
  const char* text = std::getenv(name);
  return text != nullptr && *text != '\0' ? std::strtoull(text, nullptr, 10) : fallback;
}

TEST_F(LoopParserTest, RandomRequestsGetTheSameAnswersFromBothParsers) {
  const uint64_t seed = EnvNumber("LEDGER_FUZZ_SEED", 20261204);
  const uint64_t cases = EnvNumber("LEDGER_FUZZ_CASES", 200);
  RequestGenerator generator(seed);
  constexpr int kQuietMs = 1000;  // well above an ASan answer on a loaded machine
  size_t by_own = 0, by_library = 0;
  for (uint64_t i = 0; i < cases; ++i) {
    const std::string request = generator.Request();
    SCOPED_TRACE("seed " + std::to_string(seed) + " case " + std::to_string(i));
    SCOPED_TRACE(request);
    std::vector<std::string> own_parsers, library_parsers;
    const std::string own = Exchange(own_.port(), request, &own_parsers, kQuietMs);
    const std::string library = Exchange(library_.port(), request, &library_parsers, kQuietMs);
    ASSERT_EQ(own, library);
    if (!own_parsers.empty()) (own_parsers.front() == "own" ? by_own : by_library)++;
  }
  // The generator must reach both paths, or it tests less than it claims.
  EXPECT_GT(by_own, cases / 5) << by_own << " own, " << by_library << " library";
  EXPECT_GT(by_library, cases / 10) << by_own << " own, " << by_library << " library";
}

// The one difference: the own parser's answers are never compressed (deferred answers never
// were); cpp-httplib compresses an immediate text answer for a client that accepts gzip.
TEST_F(LoopParserTest, OwnParserAnswersAreNotCompressed) {
  const std::string request =
      "GET /loop-mirror HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n";
  const std::string own = RawHttpExchange(own_.port(), request, 1500);
  const std::string library = RawHttpExchange(library_.port(), request, 1500);
  EXPECT_NE(own.find("header Accept-Encoding=gzip"), std::string::npos) << own;
  EXPECT_EQ(own.find("Content-Encoding"), std::string::npos) << own;
  EXPECT_NE(library.find("Content-Encoding: gzip"), std::string::npos) << library;
}

}  // namespace
}  // namespace ledger::http
