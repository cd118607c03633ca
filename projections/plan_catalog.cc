#include "projections/plan_catalog.h"

#include <algorithm>
#include <array>
#include <functional>
#include <optional>
#include <utility>

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/stripe_webhook.h"

namespace ledger::projections {

namespace {

using rapidjson::Value;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr std::array<ServiceInfo, 7> kServices = {{
    {"ops-center", "Ops Center", "Account, billing and service management console"},
    {"chat", "Chat", "Open-WebUI chat with hosted AI models"},
    {"search", "Search", "Private AI-assisted web search"},
    {"tts", "Text to Speech", "Speech synthesis API"},
    {"stt", "Speech to Text", "Speech recognition and transcription API"},
    {"litellm", "LiteLLM", "OpenAI-compatible gateway to many model providers"},
    {"bolt-diy", "Bolt.DIY", "AI app builder in the browser"},
}};

constexpr std::array<std::string_view, 16> kPlanFields = {
    "id",           "display_name",         "description",         "currency",
    "price_monthly_cents", "price_yearly_cents", "api_calls_limit", "limit_window",
    "trial_days",   "services",             "features",            "byok_enabled",
    "team_seats",   "stripe_price_monthly", "stripe_price_yearly", "active"};

Status Invalid(std::string message) {
  return Status::Make(Code::kUnprocessable, "validation_failed", std::move(message));
}

bool IsIdChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; }

bool IsStripePriceIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

Status ValidatePlanId(std::string_view id) {
  if (id.empty() || id.size() > limits::kPlanIdBytesMax) {
    return Invalid("id: must be 1 to " + std::to_string(limits::kPlanIdBytesMax) + " characters");
  }
  if (id[0] == '-' || !std::all_of(id.begin(), id.end(), IsIdChar)) {
    return Invalid("id: only lowercase letters, digits and '-' (not first) are allowed");
  }
  return Status::OK();
}

Status ValidateText(std::string_view field, std::string_view value, size_t min_bytes,
                    size_t max_bytes) {
  if (value.size() < min_bytes || value.size() > max_bytes) {
    return Invalid(std::string(field) + ": must be " + std::to_string(min_bytes) + " to " +
                   std::to_string(max_bytes) + " bytes");
  }
  if (!IsValidUtf8(value)) return Invalid(std::string(field) + ": not valid UTF-8");
  return Status::OK();
}

Status ValidateRange(std::string_view field, int64_t value, int64_t min, int64_t max) {
  if (value < min || value > max) {
    return Invalid(std::string(field) + ": must be between " + std::to_string(min) + " and " +
                   std::to_string(max));
  }
  return Status::OK();
}

Status ValidateStripePriceId(std::string_view field, const std::optional<std::string>& value) {
  if (!value) return Status::OK();
  if (value->empty() || value->size() > limits::kStripePriceIdBytesMax ||
      !std::all_of(value->begin(), value->end(), IsStripePriceIdChar)) {
    return Invalid(std::string(field) + ": a stored Stripe price id ([A-Za-z0-9_.-], 1 to " +
                   std::to_string(limits::kStripePriceIdBytesMax) + " characters) or null");
  }
  return Status::OK();
}

Status ValidateServices(const std::vector<std::string>& services) {
  if (services.size() > kServices.size()) return Invalid("services: too many entries");
  for (size_t i = 0; i < services.size(); ++i) {
    if (!IsKnownService(services[i])) {
      return Status::Make(Code::kUnprocessable, "unknown_service",
                          "services[" + std::to_string(i) + "]: unknown service '" +
                              Truncated(services[i]) + "'");
    }
    if (std::find(services.begin(), services.begin() + i, services[i]) != services.begin() + i) {
      return Invalid("services[" + std::to_string(i) + "]: duplicate '" + services[i] + "'");
    }
  }
  return Status::OK();
}

Status ValidateFeatures(const std::vector<std::string>& features) {
  if (features.size() > limits::kPlanFeaturesMax) {
    return Invalid("features: at most " + std::to_string(limits::kPlanFeaturesMax) + " entries");
  }
  for (size_t i = 0; i < features.size(); ++i) {
    LEDGER_RETURN_IF_ERROR(ValidateText("features[" + std::to_string(i) + "]", features[i], 1,
                                        limits::kPlanFeatureBytesMax));
  }
  return Status::OK();
}

constexpr char kDisplayTextRule[] =
    "text without control characters (a line break included) or bidirectional overrides";

// ---- JSON → Plan ------------------------------------------------------------------------------

enum class ParseMode { kStored, kInput };

// What a POST names: every field.
bool EveryField(std::string_view) { return true; }

// Rules for what an admin sends, not for stored plans (one stored before them still reads).
// `named(field)`: whether the request gave the field (a PUT that leaves a field alone is not
// refused for what an older stored plan holds in it).
// The one rule for a Stripe price id an admin or ledgerctl stripe-setup gives the catalog: one
// checkout, plan changes and webhooks all take (IsStripeId): with '.' the upgrade to it answered
// the user 400, and one over 200 bytes was dropped from every delivery (its subscribers had no
// plan). Checked before ValidatePlan, whose wider rule is for stored plans: "bad price!" was
// refused by that one, "([A-Za-z0-9_.-], 1 to 255 characters)", and "price_a.b" by this one,
// "([A-Za-z0-9_-], 1 to 200 characters)" -- two rules told for one field.
Status CheckNamedStripePriceIds(const Plan& plan,
                                const std::function<bool(std::string_view)>& named) {
  for (auto [field, price] : {std::pair{"stripe_price_monthly", &plan.stripe_price_monthly},
                              std::pair{"stripe_price_yearly", &plan.stripe_price_yearly}}) {
    if (*price && !IsStripeId(**price) && named(field)) {
      return Invalid(std::string(field) + ": a Stripe price id ([A-Za-z0-9_-], 1 to " +
                     std::to_string(limits::kStripeIdBytesMax) + " characters) or null");
    }
  }
  return Status::OK();
}

// An integer field an admin gives the catalog: the range taken from them, told whole in the
// 422's detail. Stored plans read under ValidatePlan's wider ranges, and its detail was the one
// told: "price_monthly_cents: must be between 0 and 10000000000" for -1, where Stripe stops at
// 99999999, and "api_calls_limit: must be between 0 and 1000000000000" for -5, where 0 is
// refused too. `also`: another field whose change sets this one (the default yearly price
// follows the monthly), or nullptr.
struct InputRange {
  const char* field;
  std::optional<int64_t> value;
  int64_t min;
  int64_t max;
  const char* tail;  // after the bounds: why, and what null means for a nullable field
  const char* also;
};

// Checked before ValidatePlan (as the price ids are), so that its wider rule is never the one
// told for what an admin names.
Status CheckNamedRanges(const Plan& plan, const std::function<bool(std::string_view)>& named) {
  // A quota of 0 would refuse every consume as more than a whole window allows, and the usage
  // events' limit is at least 1 (schemas/events/usage.*): a plan without API calls leaves its
  // services out. A price is what Stripe can bill (an 8-digit unit_amount): a dearer one could
  // never be set up there, and checkout for it would fail for good.
  const std::array<InputRange, 5> ranges = {{
      {"price_monthly_cents", plan.price_monthly_cents, 0, limits::kStripeUnitAmountMax,
       " (Stripe's largest unit amount)", nullptr},
      {"price_yearly_cents", plan.price_yearly_cents, 0, limits::kStripeUnitAmountMax,
       " (Stripe's largest unit amount), or null (not sold yearly)", "price_monthly_cents"},
      {"api_calls_limit", plan.api_calls_limit, 1, limits::kApiCallsLimitMax,
       ", or null (unlimited)", nullptr},
      {"trial_days", plan.trial_days, 0, limits::kTrialDaysMax, "", nullptr},
      {"team_seats", plan.team_seats, 1, limits::kTeamSeatsMax, "", nullptr},
  }};
  for (const InputRange& range : ranges) {
    if (!range.value || (*range.value >= range.min && *range.value <= range.max)) continue;
    if (!named(range.field) && (range.also == nullptr || !named(range.also))) continue;
    return Invalid(std::string(range.field) + ": must be between " + std::to_string(range.min) +
                   " and " + std::to_string(range.max) + range.tail);
  }
  return Status::OK();
}

// Whether `s` shows nothing: spaces only (ASCII, no-break, U+1680, U+2000..U+200A, the line and
// paragraph separators, U+205F, ideographic) and zero-width characters (U+200B..U+200D, U+2060,
// U+FEFF).
bool IsBlank(std::string_view s) {
  while (!s.empty()) {
    const auto at = [s](size_t i) { return i < s.size() ? static_cast<unsigned char>(s[i]) : 0; };
    const unsigned char c0 = at(0), c1 = at(1), c2 = at(2);
    size_t n = 0;
    if (c0 == 0x20) {
      n = 1;
    } else if (c0 == 0xc2 && c1 == 0xa0) {
      n = 2;
    } else if ((c0 == 0xe1 && c1 == 0x9a && c2 == 0x80) ||
               (c0 == 0xe2 && c1 == 0x80 &&
                ((c2 >= 0x80 && c2 <= 0x8d) || c2 == 0xa8 || c2 == 0xa9 || c2 == 0xaf)) ||
               (c0 == 0xe2 && c1 == 0x81 && (c2 == 0x9f || c2 == 0xa0)) ||
               (c0 == 0xe3 && c1 == 0x80 && c2 == 0x80) ||
               (c0 == 0xef && c1 == 0xbb && c2 == 0xbf)) {
      n = 3;
    }
    if (n == 0) return false;
    s.remove_prefix(n);
  }
  return true;
}

Status CheckInputOnlyRules(const Plan& plan,
                           const std::function<bool(std::string_view)>& named) {
  // The plans page shows these to everyone (GET /plans) and stripe-setup sends the name to Stripe
  // as the product's: text without control characters or bidirectional overrides, as a BYOK key's
  // label (IsDisplayText): "Pro\u0000\n\u202e" in JSON escapes would be shown as it is.
  for (auto [field, text] : {std::pair{"display_name", &plan.display_name},
                             std::pair{"description", &plan.description}}) {
    if (named(field) && !IsDisplayText(*text)) {
      return Invalid(std::string(field) + ": " + kDisplayTextRule);
    }
  }
  // A name of spaces shows as none (the plans page, revenue-by-tier, my-access), as an empty one.
  if (named("display_name") && IsBlank(plan.display_name)) {
    return Invalid("display_name: must not be blank (spaces only)");
  }
  for (size_t i = 0; i < plan.features.size() && named("features"); ++i) {
    if (!IsDisplayText(plan.features[i])) {
      return Invalid("features[" + std::to_string(i) + "]: " + kDisplayTextRule);
    }
  }
  if (plan.trial_days > 0 && plan.limit_window == LimitWindow::kMonth &&
      (named("limit_window") || named("trial_days"))) {
    return Invalid("limit_window: a trial's quota is per day (metering counts trial days)");
  }
  // A plan is free (both cycles 0, or yearly null) or paid in every cycle it sells: stripe-setup
  // makes no Stripe price for 0, so a paid plan's yearly 0 showed $0 a year on the plans page
  // while yearly checkout answered 409 "run stripe-setup" for good (a monthly 0 beside a yearly
  // price likewise).
  const bool price_named = named("price_monthly_cents") || named("price_yearly_cents");
  if (price_named && plan.price_yearly_cents && plan.trial_days == 0 &&
      (plan.price_monthly_cents > 0) != (*plan.price_yearly_cents > 0)) {
    return Invalid(plan.price_monthly_cents > 0
                       ? "price_yearly_cents: 0 for a paid plan; give the yearly price, or null "
                         "(not sold yearly)"
                       : "price_monthly_cents: 0 beside a yearly price; give the monthly price "
                         "too, or make the plan free (yearly 0 or null)");
  }
  // Checkout sells a trial monthly only (its price is a one-time fee): a yearly price would be
  // shown but never sold.
  if (plan.trial_days > 0 && plan.price_yearly_cents &&
      (named("price_yearly_cents") || named("trial_days"))) {
    return Invalid("price_yearly_cents: a trial (trial_days > 0) is not sold yearly; must be null");
  }
  return Status::OK();
}

Status ParsePlanObject(const Value& object, ParseMode mode, std::string_view path_id,
                       PlanInput* out) {
  if (!object.IsObject()) return Invalid("a plan must be a JSON object");
  out->given.reset();
  for (auto it = object.MemberBegin(); it != object.MemberEnd(); ++it) {
    std::string_view name(it->name.GetString(), it->name.GetStringLength());
    auto field = std::find(kPlanFields.begin(), kPlanFields.end(), name);
    if (field == kPlanFields.end()) {
      return Status::Make(Code::kUnprocessable, "unknown_field",
                          "unknown field '" + Truncated(name) + "'");
    }
    out->given.set(static_cast<size_t>(field - kPlanFields.begin()));
  }
  const bool all = mode == ParseMode::kStored;
  // A PUT names only what changes (UpdatePlan merges it into the stored plan and validates that).
  const bool put = mode == ParseMode::kInput && !path_id.empty();
  const bool needed = !put;
  ObjectReader reader(object);
  Plan& plan = out->plan;
  plan = Plan();

  bool id_given = false;
  LEDGER_RETURN_IF_ERROR(reader.String("id", all || path_id.empty(), &plan.id, &id_given));
  if (!path_id.empty()) {
    if (id_given && plan.id != path_id) {
      return Status::Make(Code::kUnprocessable, "plan_id_mismatch",
                          "id: a plan's id cannot change (the body says '" + Truncated(plan.id) +
                              "', the path '" + Truncated(path_id) + "')");
    }
    plan.id.assign(path_id);
  }
  LEDGER_RETURN_IF_ERROR(reader.String("display_name", needed, &plan.display_name));
  LEDGER_RETURN_IF_ERROR(reader.String("description", all, &plan.description));
  LEDGER_RETURN_IF_ERROR(reader.String("currency", all, &plan.currency));
  LEDGER_RETURN_IF_ERROR(reader.Int("price_monthly_cents", needed, &plan.price_monthly_cents));
  bool yearly_given = false;
  LEDGER_RETURN_IF_ERROR(
      reader.NullableInt("price_yearly_cents", all, &plan.price_yearly_cents, &yearly_given));
  LEDGER_RETURN_IF_ERROR(reader.NullableInt("api_calls_limit", needed, &plan.api_calls_limit));
  std::optional<std::string> window;
  bool window_given = false;
  LEDGER_RETURN_IF_ERROR(reader.NullableString("limit_window", all, &window, &window_given));
  if (window) {
    if (*window == "day") {
      plan.limit_window = LimitWindow::kDay;
    } else if (*window == "month") {
      plan.limit_window = LimitWindow::kMonth;
    } else {
      return Invalid("limit_window: must be \"day\", \"month\" or null");
    }
  }
  LEDGER_RETURN_IF_ERROR(reader.Int("trial_days", all, &plan.trial_days));
  LEDGER_RETURN_IF_ERROR(reader.StringArray("services", needed, &plan.services));
  LEDGER_RETURN_IF_ERROR(reader.StringArray("features", all, &plan.features));
  LEDGER_RETURN_IF_ERROR(reader.Bool("byok_enabled", all, &plan.byok_enabled));
  LEDGER_RETURN_IF_ERROR(reader.Int("team_seats", all, &plan.team_seats));
  LEDGER_RETURN_IF_ERROR(
      reader.NullableString("stripe_price_monthly", all, &plan.stripe_price_monthly));
  LEDGER_RETURN_IF_ERROR(
      reader.NullableString("stripe_price_yearly", all, &plan.stripe_price_yearly));
  LEDGER_RETURN_IF_ERROR(reader.Bool("active", all, &plan.active));
  if (put) {
    // The defaults and the other checks apply to the merged plan (MergePlanUpdate); a price id
    // the body names is refused here, by the one rule, before anyone asks Stripe about it.
    return CheckNamedStripePriceIds(plan, [out](std::string_view field) {
      return out->Given(field);
    });
  }
  if (!window && !window_given && plan.api_calls_limit) {
    // A trial's quota is per day (metering counts it so); a recurring plan's per month.
    plan.limit_window = plan.trial_days > 0 ? LimitWindow::kDay : LimitWindow::kMonth;
  }
  // An admin's plan is sold yearly at ten months' price unless it says otherwise (null: monthly
  // only); a free plan or a trial (its fee is one-time) has no yearly price.
  if (!all && !yearly_given && plan.price_monthly_cents > 0 && plan.trial_days == 0 &&
      plan.price_monthly_cents <= limits::kPriceCentsMax / 10) {
    plan.price_yearly_cents = 10 * plan.price_monthly_cents;
  }
  if (mode == ParseMode::kInput) {
    LEDGER_RETURN_IF_ERROR(CheckNamedStripePriceIds(plan, EveryField));
    LEDGER_RETURN_IF_ERROR(CheckNamedRanges(plan, EveryField));
  }
  LEDGER_RETURN_IF_ERROR(ValidatePlan(plan));
  return mode == ParseMode::kInput ? CheckInputOnlyRules(plan, EveryField)
                                   : Status::OK();
}

// ---- Plan → JSON ------------------------------------------------------------------------------

void WriteStrings(JsonWriter* w, const std::vector<std::string>& values) {
  w->StartArray();
  for (const std::string& v : values) w->String(v);
  w->EndArray();
}

void WritePlan(JsonWriter* w, const Plan& plan) {
  w->StartObject();
  w->Key("id");
  w->String(plan.id);
  w->Key("display_name");
  w->String(plan.display_name);
  w->Key("description");
  w->String(plan.description);
  w->Key("currency");
  w->String(plan.currency);
  w->Key("price_monthly_cents");
  w->Int64(plan.price_monthly_cents);
  w->Key("price_yearly_cents");
  json::OptInt(w, plan.price_yearly_cents);
  w->Key("api_calls_limit");
  json::OptInt(w, plan.api_calls_limit);
  w->Key("limit_window");
  if (plan.limit_window == LimitWindow::kNone) {
    w->Null();
  } else {
    w->String(std::string(LimitWindowName(plan.limit_window)));
  }
  w->Key("trial_days");
  w->Int64(plan.trial_days);
  w->Key("services");
  WriteStrings(w, plan.services);
  w->Key("features");
  WriteStrings(w, plan.features);
  w->Key("byok_enabled");
  w->Bool(plan.byok_enabled);
  w->Key("team_seats");
  w->Int64(plan.team_seats);
  w->Key("stripe_price_monthly");
  json::OptString(w, plan.stripe_price_monthly);
  w->Key("stripe_price_yearly");
  json::OptString(w, plan.stripe_price_yearly);
  w->Key("active");
  w->Bool(plan.active);
  w->EndObject();
}

void WriteActor(JsonWriter* w, const Actor& actor) {
  w->StartObject();
  w->Key("kind");
  w->String(actor.kind == Actor::Kind::kAdmin ? "admin" : "system");
  w->Key("sub");
  w->String(actor.subject);
  w->Key("email");
  if (actor.email.empty()) {
    w->Null();
  } else {
    w->String(actor.email);
  }
  w->EndObject();
}

}  // namespace

Status ValidateActor(const Actor& actor) {
  if (actor.subject.empty() || actor.subject.size() > limits::kActorSubjectBytesMax ||
      !IsValidUtf8(actor.subject)) {
    return Status::InvalidArgument("invalid_actor", "the caller's subject is empty or too long");
  }
  if (actor.email.size() > limits::kActorEmailBytesMax || !IsValidUtf8(actor.email)) {
    return Status::InvalidArgument("invalid_actor", "the caller's email is too long");
  }
  return Status::OK();
}

std::string ActorJson(const Actor& actor) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  WriteActor(&w, actor);
  return std::string(buf.GetString(), buf.GetSize());
}

namespace {

// {"plan": <plan>, "actor": <actor>}
std::string PlanEventData(const Plan& plan, const Actor& actor) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("plan");
  WritePlan(&w, plan);
  w.Key("actor");
  WriteActor(&w, actor);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

// {"plan_id": "<id>", "actor": <actor>}
std::string RetiredEventData(std::string_view plan_id, const Actor& actor) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("plan_id");
  w.String(plan_id.data(), static_cast<rapidjson::SizeType>(plan_id.size()));
  w.Key("actor");
  WriteActor(&w, actor);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

// The family also holds the price rows ("price/<id>"); a plan id never contains '/'.
bool IsPlanKey(std::string_view key) { return key.find('/') == std::string_view::npos; }

std::string PriceKey(std::string_view price_id) {
  return std::string(kStripePriceKeyPrefix) + std::string(price_id);
}

Status CountPlans(const StateReader& state, size_t* count) {
  *count = 0;
  return state.Scan(kPlansFamily, "", [count](std::string_view key, std::string_view) {
    if (IsPlanKey(key)) ++*count;
    return true;
  });
}

}  // namespace

// ---- Services ---------------------------------------------------------------------------------

const std::array<ServiceInfo, 7>& ServiceCatalog() { return kServices; }

bool IsKnownService(std::string_view id) {
  return std::any_of(kServices.begin(), kServices.end(),
                     [id](const ServiceInfo& s) { return s.id == id; });
}

std::string ServiceCatalogJson() {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("services");
  w.StartArray();
  for (const ServiceInfo& s : kServices) {
    w.StartObject();
    w.Key("id");
    w.String(s.id.data(), static_cast<rapidjson::SizeType>(s.id.size()));
    w.Key("display_name");
    w.String(s.display_name.data(), static_cast<rapidjson::SizeType>(s.display_name.size()));
    w.Key("description");
    w.String(s.description.data(), static_cast<rapidjson::SizeType>(s.description.size()));
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

// ---- Plans ------------------------------------------------------------------------------------

std::string_view LimitWindowName(LimitWindow window) {
  switch (window) {
    case LimitWindow::kDay:
      return "day";
    case LimitWindow::kMonth:
      return "month";
    case LimitWindow::kNone:
      break;
  }
  return "";
}

bool Plan::HasService(std::string_view service) const {
  return std::find(services.begin(), services.end(), service) != services.end();
}

Status ValidatePlan(const Plan& plan) {
  LEDGER_RETURN_IF_ERROR(ValidatePlanId(plan.id));
  LEDGER_RETURN_IF_ERROR(
      ValidateText("display_name", plan.display_name, 1, limits::kPlanDisplayNameBytesMax));
  LEDGER_RETURN_IF_ERROR(
      ValidateText("description", plan.description, 0, limits::kPlanDescriptionBytesMax));
  if (plan.currency != "usd") return Invalid("currency: only \"usd\" is supported");
  LEDGER_RETURN_IF_ERROR(
      ValidateRange("price_monthly_cents", plan.price_monthly_cents, 0, limits::kPriceCentsMax));
  if (plan.price_yearly_cents) {
    LEDGER_RETURN_IF_ERROR(ValidateRange("price_yearly_cents", *plan.price_yearly_cents, 0,
                                         limits::kPriceCentsMax));
  }
  if (plan.api_calls_limit) {
    LEDGER_RETURN_IF_ERROR(
        ValidateRange("api_calls_limit", *plan.api_calls_limit, 0, limits::kApiCallsLimitMax));
    if (plan.limit_window == LimitWindow::kNone) {
      return Invalid("limit_window: must be \"day\" or \"month\" when api_calls_limit is set");
    }
  } else if (plan.limit_window != LimitWindow::kNone) {
    return Invalid("limit_window: must be null when api_calls_limit is null (unlimited)");
  }
  LEDGER_RETURN_IF_ERROR(ValidateRange("trial_days", plan.trial_days, 0, limits::kTrialDaysMax));
  LEDGER_RETURN_IF_ERROR(ValidateServices(plan.services));
  LEDGER_RETURN_IF_ERROR(ValidateFeatures(plan.features));
  LEDGER_RETURN_IF_ERROR(ValidateRange("team_seats", plan.team_seats, 1, limits::kTeamSeatsMax));
  LEDGER_RETURN_IF_ERROR(ValidateStripePriceId("stripe_price_monthly", plan.stripe_price_monthly));
  LEDGER_RETURN_IF_ERROR(ValidateStripePriceId("stripe_price_yearly", plan.stripe_price_yearly));
  return Status::OK();
}

std::string PlanToJson(const Plan& plan) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  WritePlan(&w, plan);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string PlanListToJson(const std::vector<Plan>& plans) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("plans");
  w.StartArray();
  for (const Plan& plan : plans) WritePlan(&w, plan);
  w.EndArray();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status ParsePlanJson(std::string_view json, Plan* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  PlanInput input;
  LEDGER_RETURN_IF_ERROR(ParsePlanObject(doc, ParseMode::kStored, "", &input));
  *out = std::move(input.plan);
  return Status::OK();
}

Status ParsePlanInput(std::string_view body, std::string_view path_id, PlanInput* out) {
  if (body.size() > limits::kPlanRequestBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large",
                        "a plan body is at most " + std::to_string(limits::kPlanRequestBytesMax) +
                            " bytes");
  }
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(body, &doc));
  *out = PlanInput();
  return ParsePlanObject(doc, ParseMode::kInput, path_id, out);
}

bool PlanInput::Given(std::string_view field) const {
  auto it = std::find(kPlanFields.begin(), kPlanFields.end(), field);
  return it != kPlanFields.end() && given.test(static_cast<size_t>(it - kPlanFields.begin()));
}

namespace {

// A PUT's fields over the stored plan (checked by the caller as a POST's plan would be).
Plan MergePlanInput(const PlanInput& input, const Plan& current) {
  const Plan& in = input.plan;
  Plan next = current;
  auto take = [&input](std::string_view field, auto* to, const auto& from) {
    if (input.Given(field)) *to = from;
  };
  take("display_name", &next.display_name, in.display_name);
  take("description", &next.description, in.description);
  take("currency", &next.currency, in.currency);
  take("price_monthly_cents", &next.price_monthly_cents, in.price_monthly_cents);
  take("price_yearly_cents", &next.price_yearly_cents, in.price_yearly_cents);
  take("api_calls_limit", &next.api_calls_limit, in.api_calls_limit);
  take("limit_window", &next.limit_window, in.limit_window);
  take("trial_days", &next.trial_days, in.trial_days);
  take("services", &next.services, in.services);
  take("features", &next.features, in.features);
  take("byok_enabled", &next.byok_enabled, in.byok_enabled);
  take("team_seats", &next.team_seats, in.team_seats);
  take("stripe_price_monthly", &next.stripe_price_monthly, in.stripe_price_monthly);
  take("stripe_price_yearly", &next.stripe_price_yearly, in.stripe_price_yearly);
  take("active", &next.active, in.active);
  if (!input.Given("limit_window")) {
    if (!next.api_calls_limit) {
      next.limit_window = LimitWindow::kNone;
    } else if (next.limit_window == LimitWindow::kNone) {
      next.limit_window = next.trial_days > 0 ? LimitWindow::kDay : LimitWindow::kMonth;
    }
  }
  // A yearly price that was the default (ten months) follows a new monthly price, as a POST's
  // would: none for a free plan.
  if (!input.Given("price_yearly_cents") && current.price_monthly_cents > 0 &&
      current.price_yearly_cents == 10 * current.price_monthly_cents &&
      next.price_monthly_cents != current.price_monthly_cents) {
    if (next.price_monthly_cents > 0 && next.price_monthly_cents <= limits::kPriceCentsMax / 10) {
      next.price_yearly_cents = 10 * next.price_monthly_cents;
    } else {
      next.price_yearly_cents.reset();
    }
  }
  return next;
}

}  // namespace

std::vector<Plan> InitialPlans() {
  std::vector<Plan> plans(4);
  Plan& trial = plans[0];
  trial.id = "trial";
  trial.display_name = "Trial";
  trial.description = "Try the platform for 7 days for a one-time $1.00.";
  trial.price_monthly_cents = 100;
  trial.api_calls_limit = 100;
  trial.limit_window = LimitWindow::kDay;
  trial.trial_days = 7;
  trial.services = {"ops-center", "chat"};
  // The seed's own words (a client may show them as they were).
  trial.features = {"7-day trial period", "Access to Open-WebUI", "Basic AI models",
                    "100 API calls/day"};
  trial.byok_enabled = false;
  trial.team_seats = 1;

  Plan& starter = plans[1];
  starter.id = "starter";
  starter.display_name = "Starter";
  starter.description = "Chat and search for individuals, with your own API keys.";
  starter.price_monthly_cents = 1900;
  starter.price_yearly_cents = 19000;
  starter.api_calls_limit = 1000;
  starter.limit_window = LimitWindow::kMonth;
  starter.services = {"ops-center", "chat", "search"};
  starter.features = {"Open-WebUI chat", "AI-assisted search", "1,000 API calls per month",
                      "Bring your own API keys (BYOK)"};
  starter.byok_enabled = true;

  Plan& professional = plans[2];
  professional.id = "professional";
  professional.display_name = "Professional";
  professional.description = "Everything in Starter plus voice and the LiteLLM gateway.";
  professional.price_monthly_cents = 4900;
  professional.price_yearly_cents = 49000;
  professional.api_calls_limit = 10000;
  professional.limit_window = LimitWindow::kMonth;
  professional.services = {"ops-center", "chat", "search", "tts", "stt", "litellm"};
  professional.features = {"Everything in Starter", "Text to speech and speech to text",
                           "LiteLLM model gateway", "10,000 API calls per month",
                           "Priority support"};
  professional.byok_enabled = true;

  Plan& enterprise = plans[3];
  enterprise.id = "enterprise";
  enterprise.display_name = "Enterprise";
  enterprise.description = "Everything in Professional plus Bolt.DIY, for teams.";
  enterprise.price_monthly_cents = 9900;
  enterprise.price_yearly_cents = 99000;
  enterprise.services = {"ops-center", "chat", "search", "tts", "stt", "litellm", "bolt-diy"};
  enterprise.features = {"Everything in Professional", "Bolt.DIY app builder",
                         "Unlimited API calls", "Team management (10 seats)",
                         "Dedicated support"};
  enterprise.byok_enabled = true;
  enterprise.team_seats = 10;
  return plans;
}

std::string PlanSubject(std::string_view plan_id) { return "plan:" + std::string(plan_id); }

// ---- Fold -------------------------------------------------------------------------------------

Status PlanCatalogFold::Apply(const Event& event, const StateReader& state,
                              RowWriter* rows) const {
  const bool created = event.type == kPlanCreatedV1;
  const bool updated = event.type == kPlanUpdatedV1;
  const bool retired = event.type == kPlanRetiredV1;
  if (!created && !updated && !retired) return Status::OK();

  rapidjson::Document data;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(event.data, &data));
  Plan plan;
  if (retired) {
    auto it = data.FindMember("plan_id");
    if (it == data.MemberEnd() || !it->value.IsString()) {
      return Status::InvalidArgument("malformed_event", "plan.retired.v1 without plan_id");
    }
    std::string_view id(it->value.GetString(), it->value.GetStringLength());
    Status s = GetPlan(state, id, &plan);
    if (s.IsNotFound()) {
      return Status::InvalidArgument("malformed_event", "plan.retired.v1 for an unknown plan");
    }
    LEDGER_RETURN_IF_ERROR(s);
    plan.active = false;
  } else {
    auto it = data.FindMember("plan");
    if (it == data.MemberEnd()) {
      return Status::InvalidArgument("malformed_event", event.type + " without plan");
    }
    PlanInput input;
    Status s = ParsePlanObject(it->value, ParseMode::kStored, "", &input);
    if (!s.ok()) return Status::InvalidArgument("malformed_event", s.message());
    plan = std::move(input.plan);
  }
  if (event.subject != PlanSubject(plan.id)) {
    return Status::InvalidArgument("malformed_event", "subject does not match the plan id");
  }
  // A price once named stays the plan's after a price change replaced it: Stripe prices never
  // change, and the plan's subscribers keep renewing on the old one. A price moved between plans
  // by a log from before CheckStripePricesUnique refused that names the later plan.
  for (const std::optional<std::string>* price :
       {&plan.stripe_price_monthly, &plan.stripe_price_yearly}) {
    if (*price) LEDGER_RETURN_IF_ERROR(rows->Put(kPlansFamily, PriceKey(**price), plan.id));
  }
  return rows->Put(kPlansFamily, plan.id, PlanToJson(plan));
}

// ---- Queries ----------------------------------------------------------------------------------

Status GetPlan(const StateReader& state, std::string_view plan_id, Plan* out) {
  // A price/<id> row is no plan: a checkout naming "price/price_1" (price ids are public in
  // GET /plans) read it and answered 500 "corruption" instead of 422 unknown_plan.
  if (!IsPlanKey(plan_id)) return Status::NotFound("no plan '" + Truncated(plan_id) + "'");
  std::string row;
  Status s = state.Get(kPlansFamily, plan_id, &row);
  if (s.IsNotFound()) return Status::NotFound("no plan '" + Truncated(plan_id) + "'");
  LEDGER_RETURN_IF_ERROR(s);
  s = ParsePlanJson(row, out);
  if (!s.ok()) return Status::Corruption("plans row '" + Truncated(plan_id) + "': " + s.message());
  return Status::OK();
}

Status ListPlans(const StateReader& state, bool include_inactive, std::vector<Plan>* out) {
  out->clear();
  Status parse_status;
  Status s = state.Scan(kPlansFamily, "", [&](std::string_view key, std::string_view value) {
    if (!IsPlanKey(key)) return true;
    Plan plan;
    Status p = ParsePlanJson(value, &plan);
    if (!p.ok()) {
      parse_status = Status::Corruption("plans row '" + Truncated(key) + "': " + p.message());
      return false;
    }
    if (include_inactive || plan.active) out->push_back(std::move(plan));
    return true;
  });
  LEDGER_RETURN_IF_ERROR(s);
  LEDGER_RETURN_IF_ERROR(parse_status);
  std::stable_sort(out->begin(), out->end(), [](const Plan& a, const Plan& b) {
    if (a.price_monthly_cents != b.price_monthly_cents) {
      return a.price_monthly_cents < b.price_monthly_cents;
    }
    return a.id < b.id;
  });
  return Status::OK();
}

std::vector<std::pair<std::string_view, std::string>> NewlyNamedStripePrices(const Plan& plan,
                                                                            const Plan* before) {
  std::vector<std::pair<std::string_view, std::string>> named;
  if (plan.stripe_price_monthly &&
      (before == nullptr || before->stripe_price_monthly != plan.stripe_price_monthly)) {
    named.emplace_back("stripe_price_monthly", *plan.stripe_price_monthly);
  }
  if (plan.stripe_price_yearly &&
      (before == nullptr || before->stripe_price_yearly != plan.stripe_price_yearly)) {
    named.emplace_back("stripe_price_yearly", *plan.stripe_price_yearly);
  }
  return named;
}

Status PlanForStripePrice(const StateReader& state, std::string_view price_id,
                          std::optional<std::string>* plan_id) {
  plan_id->reset();
  if (price_id.empty()) return Status::OK();
  std::string row;
  Status s = state.Get(kPlansFamily, PriceKey(price_id), &row);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  *plan_id = std::move(row);
  return Status::OK();
}

// ---- Commands ---------------------------------------------------------------------------------

namespace {

// A Stripe price maps a subscription to exactly one plan (PlanIdForSubscription): 409
// stripe_price_in_use when another plan, retired ones included, names one of `plan`'s prices
// that `before` (the plan before the change; null for a new plan) did not (or the plan names
// one price for both cycles). A store that holds a duplicate from before this check still
// takes changes that do not touch it.
Status CheckStripePricesUnique(const StateReader& state, const Plan& plan, const Plan* before) {
  if (plan.stripe_price_monthly && plan.stripe_price_monthly == plan.stripe_price_yearly) {
    return Status::Conflict("stripe_price_in_use",
                            "stripe_price_monthly and stripe_price_yearly are the same price");
  }
  std::vector<Plan> plans;
  LEDGER_RETURN_IF_ERROR(ListPlans(state, /*include_inactive=*/true, &plans));
  for (const Plan& other : plans) {
    if (other.id == plan.id) continue;
    for (const std::optional<std::string>* price :
         {&plan.stripe_price_monthly, &plan.stripe_price_yearly}) {
      if (before != nullptr && (*price == before->stripe_price_monthly ||
                                *price == before->stripe_price_yearly)) {
        continue;
      }
      if (*price && (*price == other.stripe_price_monthly || *price == other.stripe_price_yearly)) {
        return Status::Conflict("stripe_price_in_use", "Stripe price '" + Truncated(**price) +
                                                           "' belongs to plan '" + other.id + "'");
      }
    }
  }
  // A price another plan named before a price change still bills that plan's subscribers, and
  // keeps mapping them to it (PlanForStripePrice): given to this plan, they would move with it.
  for (const std::optional<std::string>* price :
       {&plan.stripe_price_monthly, &plan.stripe_price_yearly}) {
    if (!*price) continue;
    if (before != nullptr && (*price == before->stripe_price_monthly ||
                              *price == before->stripe_price_yearly)) {
      continue;
    }
    std::optional<std::string> owner;
    LEDGER_RETURN_IF_ERROR(PlanForStripePrice(state, **price, &owner));
    if (owner && *owner != plan.id) {
      return Status::Conflict("stripe_price_in_use", "Stripe price '" + Truncated(**price) +
                                                         "' bills subscribers of plan '" + *owner +
                                                         "' (it was that plan's price)");
    }
  }
  return Status::OK();
}

// A Stripe price's amount never changes: a new amount still billed through the old price would
// show on the plans page while checkout charges the old one. A change of one cycle's amount must
// name the Stripe price that bills it (or null: not sold that way until one is recorded, e.g. by
// stripe-setup).
Status CheckStripePriceFresh(const char* cycle, std::optional<int64_t> cents,
                             std::optional<int64_t> current_cents,
                             const std::optional<std::string>& price,
                             const std::optional<std::string>& current_price) {
  if (cents == current_cents || !current_price || price != current_price) return Status::OK();
  return Status::Conflict("stripe_price_stale",
                          std::string("price_") + cycle + "_cents changed but stripe_price_" +
                              cycle + " '" + *current_price +
                              "' bills the old amount: name the Stripe price for the new one, "
                              "or null it (and run ledgerctl stripe-setup)");
}

}  // namespace

std::string StripePriceMismatch(const Plan& plan, std::string_view field,
                                const StripePriceAtStripe& seen) {
  const bool yearly = field == "stripe_price_yearly";
  // A trial's stripe_price_monthly is its one-time fee (http/stripe_plans.h).
  const bool fee = !yearly && plan.trial_days > 0;
  const std::string_view interval = yearly ? "year" : "month";
  const std::optional<int64_t> cents =
      yearly ? plan.price_yearly_cents : std::optional<int64_t>(plan.price_monthly_cents);
  if (!seen.exists) return "does not exist at Stripe (in the configured key's mode)";
  if (!seen.active) return "is archived (inactive) at Stripe";
  if (!cents) return "bills a cycle the plan does not sell (price_yearly_cents null)";
  if (seen.currency != plan.currency) {
    return "bills in '" + Truncated(seen.currency, 8) + "', the plan in '" + plan.currency + "'";
  }
  if (fee && !seen.interval.empty()) {
    return "is recurring; a trial plan's fee is a one-time price";
  }
  if (!fee && (seen.interval != interval || seen.interval_count != 1)) {
    return seen.interval.empty()
               ? "is a one-time price, not recurring every " + std::string(interval)
               : "recurs every " + std::to_string(seen.interval_count) + " " +
                     Truncated(seen.interval, 16) + "(s), not every " + std::string(interval);
  }
  if (seen.unit_amount != cents) {
    return "bills unit_amount " +
           (seen.unit_amount ? std::to_string(*seen.unit_amount) : "null") + ", the plan's " +
           (yearly ? "price_yearly_cents" : "price_monthly_cents") + " is " +
           std::to_string(*cents);
  }
  return "";
}

namespace {

// An admin named a Stripe price by its id alone and nothing compared it with the plan: PUT
// /plans/professional {"stripe_price_yearly":"price_m"}, price_m a $49 monthly price, made every
// yearly checkout bill $49 a month. Each price the change names anew must bill what the plan
// sells in that field, as Stripe describes it (`at_stripe`, read by the route: a decider does
// no I/O); without Stripe (nullopt, dev) the ids are taken as given.
Status CheckStripePricesBillThePlan(const Plan& plan, const Plan* before,
                                    const StripePricesAtStripe& at_stripe) {
  if (!at_stripe) return Status::OK();
  for (const auto& [field, id] : NewlyNamedStripePrices(plan, before)) {
    const StripePriceAtStripe* seen = nullptr;
    for (const StripePriceAtStripe& price : *at_stripe) {
      if (price.id == id) seen = &price;
    }
    const std::string named = std::string(field) + ": Stripe price '" + Truncated(id) + "' ";
    if (seen == nullptr) {
      // The plan changed between the route's read and this decision: the route asked Stripe
      // about other prices than the change now names.
      return Status::Conflict("stripe_price_unchecked",
                              named + "was not checked at Stripe (the plan changed meanwhile); "
                                      "send the request again");
    }
    const std::string why = StripePriceMismatch(plan, field, *seen);
    if (!why.empty()) return Status::Conflict("stripe_price_mismatch", named + why);
  }
  return Status::OK();
}

// What an admin's plan must be (ValidatePlan, and the rules stored plans predate).
// `named` as CheckInputOnlyRules (a POST names every field).
Status ValidatePlanChange(const Plan& plan, const std::function<bool(std::string_view)>& named) {
  LEDGER_RETURN_IF_ERROR(CheckNamedStripePriceIds(plan, named));
  LEDGER_RETURN_IF_ERROR(CheckNamedRanges(plan, named));
  LEDGER_RETURN_IF_ERROR(ValidatePlan(plan));
  return CheckInputOnlyRules(plan, named);
}

// A trial's subscription runs on the conversion plan's monthly price (http/stripe_plans.h).
bool SellsTrialConversion(const Plan& plan) { return plan.active && plan.price_monthly_cents > 0; }

// Taking the conversion plan off sale (DELETE, or PUT "active":false) or making it free (PUT
// "price_monthly_cents":0: every trial checkout was 422 plan 'starter' is free) while a trial
// plan is on sale would stop every trial sale.
Status CheckConversionPlanStaysOnSale(const StateReader& state, const Plan& current,
                                      const Plan& next) {
  if (current.id != kTrialConversionPlanId || !SellsTrialConversion(current) ||
      SellsTrialConversion(next)) {
    return Status::OK();
  }
  std::vector<Plan> plans;
  LEDGER_RETURN_IF_ERROR(ListPlans(state, /*include_inactive=*/false, &plans));
  for (const Plan& other : plans) {
    if (other.trial_days > 0) {
      return Status::Conflict("conversion_plan_in_use",
                              "trials convert to plan '" + current.id + "' (trial plan '" +
                                  other.id + "' is on sale), which must stay on sale with a " +
                                  "monthly price: retire the trial plans first");
    }
  }
  return Status::OK();
}

// The other way round: a trial plan put on sale (POST, or PUT "active":true of a retired one)
// while the conversion plan is retired, free or missing sells nothing -- every checkout for it is
// 422, as there is no price for its subscription to run on -- so it is refused here instead (DELETE
// /plans/trial, DELETE /plans/starter, PUT /plans/trial {"active":true} answered 200). A trial
// plan already on sale is left alone (a store from before this check still takes its edits).
Status CheckConversionPlanOnSale(const StateReader& state, const Plan& plan, bool was_active) {
  if (plan.trial_days <= 0 || !plan.active || was_active) return Status::OK();
  Plan conversion;
  Status s = GetPlan(state, kTrialConversionPlanId, &conversion);
  if (s.ok() && SellsTrialConversion(conversion)) return Status::OK();
  if (!s.ok() && !s.IsNotFound()) return s;
  return Status::Conflict("conversion_plan_not_on_sale",
                          "trial plan '" + plan.id + "' converts to plan '" +
                              std::string(kTrialConversionPlanId) + "', which is " +
                              (!s.ok()                 ? "not in the catalog"
                               : !conversion.active    ? "retired"
                                                       : "free (no monthly price)") +
                              ": put it on sale first");
}

}  // namespace

Status CreatePlan::Decide(const DecideContext& context, Decision* decision) {
  LEDGER_RETURN_IF_ERROR(ValidatePlanChange(plan_, EveryField));
  LEDGER_RETURN_IF_ERROR(ValidateActor(actor_));
  std::string row;
  Status s = context.state->Get(kPlansFamily, plan_.id, &row);
  if (s.ok()) return Status::Conflict("plan_exists", "plan '" + plan_.id + "' already exists");
  if (!s.IsNotFound()) return s;
  LEDGER_RETURN_IF_ERROR(CheckStripePricesUnique(*context.state, plan_, nullptr));
  LEDGER_RETURN_IF_ERROR(CheckStripePricesBillThePlan(plan_, nullptr, at_stripe_));
  LEDGER_RETURN_IF_ERROR(CheckConversionPlanOnSale(*context.state, plan_, /*was_active=*/false));
  size_t count = 0;
  LEDGER_RETURN_IF_ERROR(CountPlans(*context.state, &count));
  if (count >= limits::kPlansMax) {
    return Status::Make(Code::kUnprocessable, "plan_catalog_full",
                        "the catalog holds at most " + std::to_string(limits::kPlansMax) +
                            " plans (retired ones included)");
  }
  decision->events.push_back(
      NewEvent{std::string(kPlanCreatedV1), PlanSubject(plan_.id), PlanEventData(plan_, actor_)});
  decision->http_status = 201;
  decision->body = PlanToJson(plan_);
  return Status::OK();
}

Status MergePlanUpdate(const PlanInput& input, const Plan& current, Plan* next) {
  *next = MergePlanInput(input, current);
  // trial_days > 0 makes the price a one-time trial fee on the conversion plan's subscription
  // (http/stripe_plans.h), and the usage windows daily for trial_days: turning a paid plan into
  // one (or back) would re-read every existing subscription on it -- its subscribers locked out
  // as expired trials. A new plan is the way to sell a different kind.
  if ((next->trial_days > 0) != (current.trial_days > 0)) {
    return Status::Conflict(
        "plan_kind_change",
        current.trial_days > 0
            ? "plan '" + next->id + "' is a trial (a one-time fee): trial_days cannot become 0; "
                                    "create a new plan instead"
            : "plan '" + next->id + "' is a recurring plan: trial_days > 0 would make its price "
                                    "a one-time trial fee for its existing subscribers; create a "
                                    "new plan instead");
  }
  return ValidatePlanChange(*next,
                            [&input](std::string_view field) { return input.Given(field); });
}

Status UpdatePlan::Decide(const DecideContext& context, Decision* decision) {
  LEDGER_RETURN_IF_ERROR(ValidateActor(actor_));
  Plan current;
  LEDGER_RETURN_IF_ERROR(GetPlan(*context.state, input_.plan.id, &current));
  Plan next;
  LEDGER_RETURN_IF_ERROR(MergePlanUpdate(input_, current, &next));
  LEDGER_RETURN_IF_ERROR(CheckConversionPlanStaysOnSale(*context.state, current, next));
  LEDGER_RETURN_IF_ERROR(CheckConversionPlanOnSale(*context.state, next, current.active));
  LEDGER_RETURN_IF_ERROR(CheckStripePriceFresh("monthly", next.price_monthly_cents,
                                               current.price_monthly_cents,
                                               next.stripe_price_monthly,
                                               current.stripe_price_monthly));
  LEDGER_RETURN_IF_ERROR(CheckStripePriceFresh("yearly", next.price_yearly_cents,
                                               current.price_yearly_cents, next.stripe_price_yearly,
                                               current.stripe_price_yearly));
  LEDGER_RETURN_IF_ERROR(CheckStripePricesUnique(*context.state, next, &current));
  LEDGER_RETURN_IF_ERROR(CheckStripePricesBillThePlan(next, &current, at_stripe_));
  decision->http_status = 200;
  decision->body = PlanToJson(next);
  if (next == current) return Status::OK();
  decision->events.push_back(
      NewEvent{std::string(kPlanUpdatedV1), PlanSubject(next.id), PlanEventData(next, actor_)});
  return Status::OK();
}

Status RetirePlan::Decide(const DecideContext& context, Decision* decision) {
  LEDGER_RETURN_IF_ERROR(ValidateActor(actor_));
  Plan plan;
  LEDGER_RETURN_IF_ERROR(GetPlan(*context.state, plan_id_, &plan));
  const Plan current = plan;
  plan.active = false;
  LEDGER_RETURN_IF_ERROR(CheckConversionPlanStaysOnSale(*context.state, current, plan));
  const bool was_active = current.active;
  decision->http_status = 200;
  decision->body = PlanToJson(plan);
  if (!was_active) return Status::OK();
  decision->events.push_back(NewEvent{std::string(kPlanRetiredV1), PlanSubject(plan.id),
                                      RetiredEventData(plan.id, actor_)});
  return Status::OK();
}

Status SetPlanStripePrices::Decide(const DecideContext& context, Decision* decision) {
  LEDGER_RETURN_IF_ERROR(ValidateActor(actor_));
  Plan current;
  LEDGER_RETURN_IF_ERROR(GetPlan(*context.state, plan_id_, &current));
  Plan next = current;
  auto apply = [](const std::optional<std::string>& given, std::optional<std::string>* field) {
    if (!given) return;
    if (given->empty()) {
      field->reset();
    } else {
      *field = *given;
    }
  };
  apply(monthly_, &next.stripe_price_monthly);
  apply(yearly_, &next.stripe_price_yearly);
  LEDGER_RETURN_IF_ERROR(CheckNamedStripePriceIds(next, [this](std::string_view field) {
    return (field == "stripe_price_monthly" && monthly_ && !monthly_->empty()) ||
           (field == "stripe_price_yearly" && yearly_ && !yearly_->empty());
  }));
  LEDGER_RETURN_IF_ERROR(ValidatePlan(next));
  LEDGER_RETURN_IF_ERROR(CheckStripePricesUnique(*context.state, next, &current));
  decision->http_status = 200;
  decision->body = PlanToJson(next);
  if (next == current) return Status::OK();
  decision->events.push_back(
      NewEvent{std::string(kPlanUpdatedV1), PlanSubject(next.id), PlanEventData(next, actor_)});
  return Status::OK();
}

Status SeedCatalog::Decide(const DecideContext& context, Decision* decision) {
  size_t count = 0;
  LEDGER_RETURN_IF_ERROR(CountPlans(*context.state, &count));
  bool seed = count == 0;
  if (seed) {
    const Actor actor = Actor::System("seed");
    for (const Plan& plan : InitialPlans()) {
      LEDGER_RETURN_IF_ERROR(ValidatePlan(plan));
      decision->events.push_back(NewEvent{std::string(kPlanCreatedV1), PlanSubject(plan.id),
                                          PlanEventData(plan, actor)});
    }
    count = decision->events.size();
  }
  decision->http_status = 200;
  decision->body = std::string("{\"seeded\":") + (seed ? "true" : "false") +
                   ",\"plans\":" + std::to_string(count) + "}";
  return Status::OK();
}

Status SeedPlanCatalog(Ledger* ledger, bool* seeded) {
  SeedCatalog command;
  CommandResult result = ledger->Submit(&command);
  LEDGER_RETURN_IF_ERROR(result.status);
  if (seeded != nullptr) *seeded = result.events_appended > 0;
  return Status::OK();
}

}  // namespace ledger::projections
