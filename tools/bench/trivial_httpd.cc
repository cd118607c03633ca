// The baseline of the HTTP benchmark (issue 4: consume "should reach >= 80% of what a trivial
// cpp-httplib route does on the same machine"): a stock cpp-httplib server with one trivial JSON
// route, configured only as PLATFORM.md says any cpp-httplib server must be (TCP_NODELAY, a thread
// pool large enough for the benchmark's connections, keep-alive). Nothing of ledgerd is in it.
//
//   trivial_httpd [port] [threads]     (defaults 0 = any free port, 64 threads)
// Prints "listening on http://127.0.0.1:<port>" and serves until killed:
//   GET /livez                   {"status":"ok"}
//   POST /api/v1/usage/consume   a constant answer of consume's shape, body read and ignored (the
//                                same wrk script, tools/bench/consume.lua, runs against both)
#include <httplib.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  const int port = argc > 1 ? std::atoi(argv[1]) : 0;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 64;
  if (port < 0 || port > 65535 || threads <= 0) {
    std::fprintf(stderr, "usage: trivial_httpd [port] [threads]\n");
    return 64;
  }
  httplib::Server server;
  server.set_tcp_nodelay(true);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server.set_keep_alive_max_count(1000000);
  server.Get("/livez", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"status\":\"ok\"}", "application/json");
  });
  server.Post("/api/v1/usage/consume", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("{\"allowed\":true,\"used\":1,\"limit\":null,\"remaining\":null}",
                    "application/json");
  });
  const int bound = port == 0 ? server.bind_to_any_port("127.0.0.1") : port;
  if (port != 0 && !server.bind_to_port("127.0.0.1", port)) {
    std::fprintf(stderr, "cannot bind 127.0.0.1:%d\n", port);
    return 70;
  }
  if (bound < 0) {
    std::fprintf(stderr, "cannot bind\n");
    return 70;
  }
  std::printf("listening on http://127.0.0.1:%d\n", bound);
  std::fflush(stdout);
  return server.listen_after_bind() ? 0 : 70;
}
