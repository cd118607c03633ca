// The plan and service catalogs (CONTRACT.md §3 "Subscriptions", §4):
//   GET    /api/v1/subscriptions/plans[?include_inactive=true]   public
//   GET    /api/v1/subscriptions/plans/{plan_id}                  public
//   POST   /api/v1/subscriptions/plans                            admin   → plan.created.v1
//   PUT    /api/v1/subscriptions/plans/{plan_id}                  admin   → plan.updated.v1
//   DELETE /api/v1/subscriptions/plans/{plan_id}                  admin   → plan.retired.v1
//   GET    /api/v1/subscriptions/services                         public
// Reads answer from one Ledger::Snapshot() (X-Ledger-Position = its position); writes go through
// the writer as projections/plan_catalog.h commands, recorded with the admin's identity, with
// Idempotency-Key support. Bad input is a 400/422 problem and appends nothing.
#include <string>

#include "http/idempotency.h"
#include "http/problem.h"
#include "http/routes.h"
#include "projections/plan_catalog.h"

namespace ledger::http {

namespace {

namespace pc = ledger::projections;

constexpr char kPlansPattern[] = "/api/v1/subscriptions/plans";
constexpr char kPlansName[] = "/api/v1/subscriptions/plans";
constexpr char kPlanPattern[] = R"(/api/v1/subscriptions/plans/([^/]+))";
constexpr char kPlanName[] = "/api/v1/subscriptions/plans/{plan_id}";
constexpr char kServicesPath[] = "/api/v1/subscriptions/services";

// ?include_inactive=true|false|1|0 (absent: false).
bool ParseIncludeInactive(const httplib::Request& req, bool* include, httplib::Response& res) {
  *include = false;
  const size_t count = req.get_param_value_count("include_inactive");
  if (count == 0) return true;
  const std::string value = req.get_param_value("include_inactive");
  if (count == 1 && (value == "true" || value == "1")) {
    *include = true;
    return true;
  }
  if (count == 1 && (value == "false" || value == "0")) return true;
  WriteProblem(400, "invalid_parameter", "'include_inactive' must be true or false", &res);
  return false;
}

void ListPlans(const AppContext& context, const httplib::Request& req, httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  bool include_inactive = false;
  if (!ParseIncludeInactive(req, &include_inactive, res)) return;
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  std::vector<pc::Plan> plans;
  Status s = pc::ListPlans(*view, include_inactive, &plans);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  WriteJsonAt(200, pc::PlanListToJson(plans), view->position(), &res);
}

void GetPlan(const AppContext& context, const httplib::Request& req, httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  pc::Plan plan;
  Status s = pc::GetPlan(*view, req.matches[1].str(), &plan);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    SetPositionHeader(view->position(), &res);
    return;
  }
  WriteJsonAt(200, pc::PlanToJson(plan), view->position(), &res);
}

pc::Actor AdminActor(const Identity& identity) {
  return pc::Actor::Admin(identity.subject, identity.email);
}

// Submits `command` (after applying the Idempotency-Key) and writes its outcome.
void Submit(const AppContext& context, const httplib::Request& req, const Identity& identity,
            const char* route_name, Command* command, httplib::Response& res) {
  if (!ApplyIdempotencyKey(req, route_name, identity, command, &res)) return;
  CommandResult result = context.ledger->Submit(command);
  WriteCommandResult(result, &res);
}

void CreatePlan(const AppContext& context, const httplib::Request& req, const Identity& identity,
                httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  pc::PlanInput input;
  Status s = pc::ParsePlanInput(req.body, "", &input);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  const std::string location = std::string(kPlansPattern) + "/" + input.plan.id;
  pc::CreatePlan command(std::move(input.plan), AdminActor(identity));
  Submit(context, req, identity, kPlansName, &command, res);
  if (res.status == 201) res.set_header("Location", location);
}

void UpdatePlan(const AppContext& context, const httplib::Request& req, const Identity& identity,
                httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  pc::PlanInput input;
  Status s = pc::ParsePlanInput(req.body, req.matches[1].str(), &input);
  if (!s.ok()) {
    WriteStatusProblem(s, &res);
    return;
  }
  pc::UpdatePlan command(std::move(input), AdminActor(identity));
  Submit(context, req, identity, kPlanName, &command, res);
}

void RetirePlan(const AppContext& context, const httplib::Request& req, const Identity& identity,
                httplib::Response& res) {
  if (!RequireLedger(context.ledger, res)) return;
  pc::RetirePlan command(req.matches[1].str(), AdminActor(identity));
  Submit(context, req, identity, kPlanName, &command, res);
}

}  // namespace

void AddPlanRoutes(const AppContext& context, RouteTable* routes) {
  routes->Add("GET", kPlansPattern, kPlansName, Policy::kPublic,
              [context](const httplib::Request& req, httplib::Response& res, const Identity&) {
                ListPlans(context, req, res);
              });
  routes->Add("GET", kPlanPattern, kPlanName, Policy::kPublic,
              [context](const httplib::Request& req, httplib::Response& res, const Identity&) {
                GetPlan(context, req, res);
              });
  routes->Add("POST", kPlansPattern, kPlansName, Policy::kAdmin,
              [context](const httplib::Request& req, httplib::Response& res,
                        const Identity& identity) { CreatePlan(context, req, identity, res); });
  routes->Add("PUT", kPlanPattern, kPlanName, Policy::kAdmin,
              [context](const httplib::Request& req, httplib::Response& res,
                        const Identity& identity) { UpdatePlan(context, req, identity, res); });
  routes->Add("DELETE", kPlanPattern, kPlanName, Policy::kAdmin,
              [context](const httplib::Request& req, httplib::Response& res,
                        const Identity& identity) { RetirePlan(context, req, identity, res); });
  routes->Add("GET", kServicesPath, kServicesPath, Policy::kPublic,
              [](const httplib::Request&, httplib::Response& res, const Identity&) {
                WriteJson(200, pc::ServiceCatalogJson(), &res);
              });
}

}  // namespace ledger::http
