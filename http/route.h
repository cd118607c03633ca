// Routes, policies and identities. Every route declares exactly one Policy; the server
// authenticates the caller and enforces the policy before the handler runs, so a handler only
// ever sees identities its policy admits. The route table is enumerable so that the
// authorization-matrix test can check every route.
#pragma once

#include <httplib.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ledger::http {

enum class Policy {
  kPublic,         // anyone
  kUser,           // a JWT (user or admin) acting on the caller's own data
  kAdmin,          // a JWT carrying the admin role
  kService,        // a service token (may act for any user_id in the request)
  kUserOrService,  // either of the two above
  kSignature,      // webhooks: the handler verifies the request signature itself
};

const char* PolicyName(Policy policy);

struct Identity {
  enum class Kind { kAnonymous, kUser, kService };
  Kind kind = Kind::kAnonymous;
  std::string subject;       // JWT `sub` (user id) or the service token's name
  std::string email;         // JWT `email`, may be empty
  bool admin = false;        // JWT carries the admin role
  bool IsUser() const { return kind == Kind::kUser; }
  bool IsService() const { return kind == Kind::kService; }
};

using Handler = std::function<void(const httplib::Request&, httplib::Response&, const Identity&)>;

// A Handler that calls `fn(*context, req, res, identity)`: route files keep their collaborators
// in one shared context object.
template <typename Context, typename Fn>
Handler WithContext(std::shared_ptr<Context> context, Fn fn) {
  return [context = std::move(context), fn](const httplib::Request& req, httplib::Response& res,
                                            const Identity& identity) {
    fn(*context, req, res, identity);
  };
}

// Answering later. A handler that would otherwise block until another thread finishes its work
// (consume waits for its group's fsync) may take a Responder, return at once, and call it exactly
// once, from any thread, with the finished response: the server writes it on the connection, and
// the request's thread goes back to other work instead of sleeping until then (no thread sleeps
// and wakes per request). What the handler leaves in its `res` is
// not sent. Returns null when the request is not served by HttpServer's connection loop (or was
// deferred already): then answer in `res` as usual. Defined in server.cc.
using Responder = std::function<void(httplib::Response&&)>;
Responder DeferResponse(const httplib::Request& req);

// Where a route's handler runs. kEventLoop: on the server's event loop thread, which serves
// every parked connection — for handlers that never block (no Submit, no outbound call, no
// lock held by a slow path); they answer at once or through DeferResponse. The pattern must be
// a literal path. kWorker: on a worker thread, which may block.
enum class Threading { kWorker, kEventLoop };

struct Route {
  std::string method;   // "GET", "POST", "PUT", "PATCH", "DELETE"
  std::string pattern;  // cpp-httplib regex pattern, e.g. R"(/api/v1/subscriptions/plans/([^/]+))"
  std::string name;     // metrics label, e.g. "/api/v1/subscriptions/plans/{plan_id}"
  Policy policy;
  Handler handler;
  Threading threading = Threading::kWorker;
};

// Collects routes; the server installs them. Resource files expose
// `void Add<Resource>Routes(const AppContext&, RouteTable*)`.
class RouteTable {
 public:
  void Add(std::string method, std::string pattern, std::string name, Policy policy,
           Handler handler, Threading threading = Threading::kWorker) {
    routes_.push_back(Route{std::move(method), std::move(pattern), std::move(name), policy,
                            std::move(handler), threading});
  }
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

}  // namespace ledger::http
