// The plan and service catalogs (CONTRACT.md §3 "Subscriptions", §4):
//   GET    /api/v1/subscriptions/plans[?include_inactive=true]   public
//   GET    /api/v1/subscriptions/plans/{plan_id}                  public
//   POST   /api/v1/subscriptions/plans                            admin   → plan.created.v1
//   PUT    /api/v1/subscriptions/plans/{plan_id}                  admin   → plan.updated.v1
//   DELETE /api/v1/subscriptions/plans/{plan_id}                  admin   → plan.retired.v1
//   GET    /api/v1/subscriptions/services                         public
// Reads answer from one Ledger::Snapshot() (X-Ledger-Position = its position); writes go through
// the writer as projections/plan_catalog.h commands, recorded with the admin's identity, with
// Idempotency-Key support. Bad input is a 400/422 problem and appends nothing. With Stripe
// configured, a Stripe price a POST or PUT names anew is read from Stripe first (GET
// /v1/prices/{id}) and must bill what the plan sells (409 stripe_price_mismatch; Stripe
// unreachable: 502/503, nothing appended).
#include <memory>
#include <string>

#include "http/idempotency.h"
#include "http/problem.h"
#include "http/routes.h"
#include "http/stripe_client.h"
#include "http/stripe_plans.h"
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

// What Stripe says of each price `plan` names that `before` (null: a new plan) did not, for the
// command to compare with the plan (its decider does no I/O): an id alone was taken as given,
// and a $49 monthly price named as a plan's stripe_price_yearly billed its yearly subscribers
// every month. nullopt without Stripe (dev). A retry of a request already recorded is answered
// from its Idempotency-Key's record first, without asking Stripe; then `check` (a PUT's merged
// plan) refuses before Stripe is asked. False after writing the answer: that record, the
// check's refusal, or Stripe's failure (502/503; nothing appended).
bool ReadNamedStripePrices(const AppContext& context, const httplib::Request& req,
                           const Identity& identity, const char* route_name, const pc::Plan& plan,
                           const pc::Plan* before, pc::StripePricesAtStripe* out,
                           httplib::Response& res, Status check = Status::OK()) {
  out->reset();
  if (context.stripe == nullptr) return true;
  if (AnswerStoredRetry(context.ledger, req, route_name, identity, &res)) return false;
  if (!check.ok()) {
    WriteStatusProblem(check, &res);
    return false;
  }
  out->emplace();
  for (const auto& [field, id] : pc::NewlyNamedStripePrices(plan, before)) {
    pc::StripePriceAtStripe seen;
    if (Status s = ReadStripePrice(context.stripe, id, &seen); !s.ok()) {
      WriteStatusProblem(s, &res);
      return false;
    }
    (*out)->push_back(std::move(seen));
  }
  return true;
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
  pc::StripePricesAtStripe at_stripe;
  if (!ReadNamedStripePrices(context, req, identity, kPlansName, input.plan, nullptr, &at_stripe,
                             res)) {
    return;
  }
  const std::string location = std::string(kPlansPattern) + "/" + input.plan.id;
  pc::CreatePlan command(std::move(input.plan), AdminActor(identity), std::move(at_stripe));
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
  // The plan the change makes, from the stored plan and the body, checked before Stripe is asked
  // about the prices it names: the writer merges it again, and refuses (stripe_price_unchecked)
  // a price named anew that was not read here (another change came in between). A plan that is
  // missing is the command's 404.
  pc::Plan current;
  std::unique_ptr<ReadView> view = context.ledger->Snapshot();
  s = pc::GetPlan(*view, input.plan.id, &current);
  if (!s.ok() && !s.IsNotFound()) {
    WriteStatusProblem(s, &res);
    return;
  }
  pc::Plan next = current;
  Status check = Status::OK();
  if (s.ok()) check = pc::MergePlanUpdate(input, current, &next);
  pc::StripePricesAtStripe at_stripe;
  if (!ReadNamedStripePrices(context, req, identity, kPlanName, next, s.ok() ? &current : &next,
                             &at_stripe, res, check)) {
    return;
  }
  pc::UpdatePlan command(std::move(input), AdminActor(identity), std::move(at_stripe));
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
