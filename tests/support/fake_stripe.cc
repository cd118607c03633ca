#include "tests/support/fake_stripe.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <set>

namespace ledger::testing {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

struct Product {
  std::string id;
  std::string name;
  std::string description;
  bool active = true;
  std::map<std::string, std::string> metadata;
};

struct Card {
  std::string id;
  std::string brand;
  std::string last4;
  int64_t exp_month = 0;
  int64_t exp_year = 0;
};

struct Customer {
  std::string id;
  std::string email;
  std::vector<Card> cards;
  bool declines = false;  // DeclinePayments: every charge of this customer fails
};

// An answer: status and JSON body.
struct Answer {
  int status = 200;
  std::string body;
};

Answer Error(int status, std::string_view type, std::string_view message,
             std::string_view param = "", std::string_view code = "") {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  w.Key("error");
  w.StartObject();
  if (!code.empty()) {
    w.Key("code");
    w.String(code.data(), code.size());
  }
  w.Key("message");
  w.String(message.data(), message.size());
  if (!param.empty()) {
    w.Key("param");
    w.String(param.data(), param.size());
  }
  w.Key("type");
  w.String(type.data(), type.size());
  w.EndObject();
  w.EndObject();
  return Answer{status, buffer.GetString()};
}

Answer InvalidRequest(std::string_view message, std::string_view param = "",
                      std::string_view code = "") {
  return Error(400, "invalid_request_error", message, param, code);
}

Answer NoSuch(std::string_view what, std::string_view id, std::string_view param = "",
              int status = 404) {
  return Error(status, "invalid_request_error",
               "No such " + std::string(what) + ": '" + std::string(id) + "'", param,
               "resource_missing");
}

void Str(Writer& w, std::string_view key, std::string_view value) {
  w.Key(key.data(), key.size());
  w.String(value.data(), value.size());
}

void StrOrNull(Writer& w, std::string_view key, std::string_view value) {
  w.Key(key.data(), key.size());
  if (value.empty()) {
    w.Null();
  } else {
    w.String(value.data(), value.size());
  }
}

void Metadata(Writer& w, const std::map<std::string, std::string>& metadata) {
  w.Key("metadata");
  w.StartObject();
  for (const auto& [k, v] : metadata) Str(w, k, v);
  w.EndObject();
}

void WritePrice(Writer& w, const FakeStripe::Price& price) {
  w.StartObject();
  Str(w, "id", price.id);
  Str(w, "object", "price");
  w.Key("active");
  w.Bool(price.active);
  Str(w, "currency", price.currency);
  w.Key("livemode");
  w.Bool(false);
  StrOrNull(w, "lookup_key", price.lookup_key);
  Metadata(w, price.metadata);
  Str(w, "product", price.product);
  w.Key("recurring");
  if (price.interval.empty()) {
    w.Null();
  } else {
    w.StartObject();
    Str(w, "interval", price.interval);
    w.Key("interval_count");
    w.Int64(price.interval_count);
    Str(w, "usage_type", "licensed");
    w.EndObject();
  }
  Str(w, "type", price.interval.empty() ? "one_time" : "recurring");
  w.Key("unit_amount");
  w.Int64(price.unit_amount);
  w.EndObject();
}

std::string ListJson(std::string_view url, const std::function<void(Writer&)>& items,
                     bool has_more = false) {
  rapidjson::StringBuffer buffer;
  Writer w(buffer);
  w.StartObject();
  Str(w, "object", "list");
  w.Key("data");
  w.StartArray();
  items(w);
  w.EndArray();
  w.Key("has_more");
  w.Bool(has_more);
  Str(w, "url", url);
  w.EndObject();
  return buffer.GetString();
}

// "line_items[0][price]" -> {"line_items", "0", "price"}; empty when malformed.
std::vector<std::string> Segments(std::string_view key) {
  std::vector<std::string> out;
  size_t open = key.find('[');
  out.emplace_back(key.substr(0, open));
  if (out.back().empty()) return {};
  while (open != std::string_view::npos) {
    size_t close = key.find(']', open);
    if (close == std::string_view::npos) return {};
    out.emplace_back(key.substr(open + 1, close - open - 1));
    if (close + 1 == key.size()) break;
    if (key[close + 1] != '[') return {};
    open = close + 1;
  }
  return out;
}

bool IsDigits(std::string_view s) {
  return !s.empty() && s.size() < 10 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Pattern segments: "#" = an index, "*" = any non-empty name, anything else literally.
bool Matches(const std::vector<std::string>& segments, std::initializer_list<std::string_view> pattern) {
  if (segments.size() != pattern.size()) return false;
  size_t i = 0;
  for (std::string_view p : pattern) {
    const std::string& s = segments[i++];
    if (p == "#") {
      if (!IsDigits(s)) return false;
    } else if (p == "*") {
      if (s.empty()) return false;
    } else if (s != p) {
      return false;
    }
  }
  return true;
}

using Pattern = std::initializer_list<std::string_view>;

// The first parameter matching none of `allowed`, or "".
std::string UnknownParam(const http::FormParams& params, std::initializer_list<Pattern> allowed) {
  for (const auto& [key, value] : params) {
    std::vector<std::string> segments = Segments(key);
    bool ok = false;
    for (const Pattern& pattern : allowed) {
      if (Matches(segments, pattern)) {
        ok = true;
        break;
      }
    }
    if (!ok) return key;
  }
  return "";
}

std::string_view Get(const http::FormParams& params, std::string_view key) {
  for (const auto& [k, v] : params) {
    if (k == key) return v;
  }
  return {};
}

bool Has(const http::FormParams& params, std::string_view key) {
  for (const auto& [k, v] : params) {
    if (k == key) return true;
  }
  return false;
}

// metadata[...] values under `prefix` (e.g. "metadata", "subscription_data[metadata]").
std::map<std::string, std::string> MetadataOf(const http::FormParams& params,
                                              std::string_view prefix) {
  std::map<std::string, std::string> out;
  std::string start = std::string(prefix) + "[";
  for (const auto& [k, v] : params) {
    if (k.size() > start.size() && k.compare(0, start.size(), start) == 0 && k.back() == ']' &&
        k.find('[', start.size()) == std::string::npos) {
      out[k.substr(start.size(), k.size() - start.size() - 1)] = v;
    }
  }
  return out;
}

// Stripe's metadata limits: 50 keys, keys up to 40 characters, values up to 500.
std::optional<Answer> CheckMetadata(const http::FormParams& params, std::string_view prefix) {
  std::map<std::string, std::string> metadata = MetadataOf(params, prefix);
  if (metadata.size() > 50) return InvalidRequest("metadata: at most 50 keys", std::string(prefix));
  for (const auto& [k, v] : metadata) {
    if (k.size() > 40 || v.size() > 500) {
      return InvalidRequest("metadata keys must be at most 40 characters and values at most 500",
                            std::string(prefix) + "[" + k + "]");
    }
  }
  return std::nullopt;
}

bool ParseInt(std::string_view text, int64_t* out) {
  bool negative = !text.empty() && text[0] == '-';
  std::string_view digits = negative ? text.substr(1) : text;
  if (digits.empty() || digits.size() > 18 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  int64_t value = 0;
  for (char c : digits) value = value * 10 + (c - '0');
  *out = negative ? -value : value;
  return true;
}

bool IsBoolText(std::string_view text) { return text == "true" || text == "false"; }

std::string SortedFingerprint(const std::string& method, const std::string& path,
                              http::FormParams params) {
  std::sort(params.begin(), params.end());
  std::string out = method + " " + path + "\n";
  for (const auto& [k, v] : params) out += k + "=" + v + "\n";
  return out;
}

}  // namespace

struct FakeStripe::State {
  std::map<std::string, Product> products;
  std::map<std::string, Price> prices;
  std::map<std::string, Customer> customers;
  std::map<std::string, Subscription> subscriptions;
  std::vector<CheckoutSession> sessions;
  size_t portal_sessions = 0;
  struct Stored {
    std::string fingerprint;
    Answer answer;
  };
  std::map<std::string, Stored> idempotency;
  std::mt19937_64 rng{std::random_device{}()};

  std::string NewId(std::string_view prefix) {
    static constexpr char kAlphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::string id(prefix);
    for (int i = 0; i < 24; ++i) id.push_back(kAlphabet[rng() % (sizeof(kAlphabet) - 1)]);
    return id;
  }

  std::string SubscriptionJson(const Subscription& s) const {
    rapidjson::StringBuffer buffer;
    Writer w(buffer);
    w.StartObject();
    Str(w, "id", s.id);
    Str(w, "object", "subscription");
    w.Key("cancel_at");
    if (s.cancel_at_period_end) {
      w.Int64(s.current_period_end);
    } else {
      w.Null();
    }
    w.Key("cancel_at_period_end");
    w.Bool(s.cancel_at_period_end);
    w.Key("canceled_at");
    if (s.canceled_at.has_value()) {
      w.Int64(*s.canceled_at);
    } else {
      w.Null();
    }
    w.Key("ended_at");
    if (s.ended_at.has_value()) {
      w.Int64(*s.ended_at);
    } else {
      w.Null();
    }
    // Stripe sets the reason when the subscription is canceled; comment and feedback are what
    // the cancel (or a later update) gave.
    w.Key("cancellation_details");
    w.StartObject();
    for (const auto& [key, value] :
         {std::pair<const char*, std::string>{"comment", s.cancellation_comment},
          {"feedback", s.cancellation_feedback},
          {"reason", s.status == "canceled" ? "cancellation_requested" : ""}}) {
      w.Key(key);
      if (value.empty()) {
        w.Null();
      } else {
        w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
      }
    }
    w.EndObject();
    Str(w, "customer", s.customer);
    // The item-level billing period (API version 2025-03-31 and later).
    w.Key("items");
    w.StartObject();
    Str(w, "object", "list");
    w.Key("data");
    w.StartArray();
    w.StartObject();
    Str(w, "id", s.item_id);
    Str(w, "object", "subscription_item");
    w.Key("current_period_end");
    w.Int64(s.current_period_end);
    w.Key("current_period_start");
    w.Int64(s.current_period_start);
    w.Key("price");
    auto price = prices.find(s.price_id);
    if (price != prices.end()) {
      WritePrice(w, price->second);
    } else {
      Price placeholder;
      placeholder.id = s.price_id;
      placeholder.interval = "month";
      WritePrice(w, placeholder);
    }
    w.Key("quantity");
    w.Int(1);
    Str(w, "subscription", s.id);
    w.EndObject();
    w.EndArray();
    w.Key("has_more");
    w.Bool(false);
    w.EndObject();
    w.Key("livemode");
    w.Bool(false);
    Metadata(w, s.metadata);
    w.Key("schedule");
    if (s.schedule.empty()) {
      w.Null();
    } else {
      w.String(s.schedule.data(), static_cast<rapidjson::SizeType>(s.schedule.size()));
    }
    Str(w, "status", s.status);
    w.EndObject();
    return buffer.GetString();
  }

  static std::string ProductJson(const Product& p) {
    rapidjson::StringBuffer buffer;
    Writer w(buffer);
    w.StartObject();
    Str(w, "id", p.id);
    Str(w, "object", "product");
    w.Key("active");
    w.Bool(p.active);
    StrOrNull(w, "description", p.description);
    w.Key("livemode");
    w.Bool(false);
    Metadata(w, p.metadata);
    Str(w, "name", p.name);
    w.EndObject();
    return buffer.GetString();
  }

  static std::string PriceJson(const Price& p) {
    rapidjson::StringBuffer buffer;
    Writer w(buffer);
    WritePrice(w, p);
    return buffer.GetString();
  }

  // ---- Endpoints ----

  Answer CreateCheckoutSession(const http::FormParams& params) {
    std::string unknown = UnknownParam(
        params, {{"mode"}, {"line_items", "#", "price"}, {"line_items", "#", "quantity"},
                 {"success_url"}, {"cancel_url"}, {"client_reference_id"}, {"customer"},
                 {"customer_email"}, {"metadata", "*"}, {"subscription_data", "metadata", "*"},
                 {"subscription_data", "trial_period_days"}, {"allow_promotion_codes"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    if (!Has(params, "mode")) return InvalidRequest("Missing required param: mode.", "mode");
    if (Get(params, "mode") != "subscription") {
      return InvalidRequest("ledgerd only creates sessions in subscription mode", "mode");
    }
    if (!Has(params, "success_url")) {
      return InvalidRequest("Missing required param: success_url.", "success_url");
    }
    for (std::string_view key : {"success_url", "cancel_url"}) {
      if (Has(params, key) && Get(params, key).rfind("http", 0) != 0) {
        return InvalidRequest("Not a valid URL", key, "url_invalid");
      }
    }
    if (!Has(params, "client_reference_id")) {
      return InvalidRequest("ledgerd fake: client_reference_id (the user id) is required",
                            "client_reference_id");
    }
    if (Get(params, "client_reference_id").size() > 200) {
      return InvalidRequest("client_reference_id: at most 200 characters", "client_reference_id");
    }
    if (Has(params, "customer") && Has(params, "customer_email")) {
      return InvalidRequest(
          "You may only specify one of these parameters: customer, customer_email.", "customer");
    }
    if (Has(params, "customer") && customers.count(std::string(Get(params, "customer"))) == 0) {
      return NoSuch("customer", Get(params, "customer"), "customer", 400);
    }
    bool recurring = false;
    for (size_t i = 0;; ++i) {
      std::string price_key = "line_items[" + std::to_string(i) + "][price]";
      std::string quantity_key = "line_items[" + std::to_string(i) + "][quantity]";
      if (!Has(params, price_key)) {
        if (i == 0) return InvalidRequest("Missing required param: line_items.", "line_items");
        if (Has(params, quantity_key)) return InvalidRequest("line item without a price", price_key);
        break;
      }
      auto price = prices.find(std::string(Get(params, price_key)));
      if (price == prices.end()) return NoSuch("price", Get(params, price_key), price_key, 400);
      if (!price->second.active) {
        return InvalidRequest("The price specified is inactive.", price_key);
      }
      recurring = recurring || !price->second.interval.empty();
      if (!Has(params, quantity_key)) {
        return InvalidRequest("Quantity is required. Add `quantity` to `line_items[" +
                                  std::to_string(i) + "]`",
                              quantity_key);
      }
      if (Get(params, quantity_key) != "1") {
        return InvalidRequest("ledgerd fake: quantity must be 1", quantity_key);
      }
    }
    // Any other line_items index (a gap) is an error too.
    for (const auto& [k, v] : params) {
      std::vector<std::string> segments = Segments(k);
      if (segments[0] == "line_items" &&
          !Has(params, "line_items[" + segments[1] + "][price]")) {
        return InvalidRequest("line item without a price", k);
      }
    }
    if (!recurring) {
      return InvalidRequest(
          "You must provide at least one recurring price in `subscription` mode when using "
          "prices.",
          "line_items");
    }
    if (Has(params, "subscription_data[trial_period_days]")) {
      int64_t days = 0;
      if (!ParseInt(Get(params, "subscription_data[trial_period_days]"), &days) || days < 1 ||
          days > 730) {
        return InvalidRequest("trial_period_days must be an integer between 1 and 730",
                              "subscription_data[trial_period_days]");
      }
    }
    for (std::string_view prefix : {"metadata", "subscription_data[metadata]"}) {
      if (auto bad = CheckMetadata(params, prefix)) return *bad;
    }

    CheckoutSession session;
    session.id = NewId("cs_test_");
    session.url = "https://checkout.stripe.com/c/pay/" + session.id + "#fidkdWxOYHwnPyd1blpxYHZx";
    session.params = params;
    sessions.push_back(session);
    return Answer{200, SessionJson(session)};
  }

  std::string SessionJson(const CheckoutSession& session) const {
    const http::FormParams& params = session.params;
    rapidjson::StringBuffer buffer;
    Writer w(buffer);
    w.StartObject();
    Str(w, "id", session.id);
    Str(w, "object", "checkout.session");
    StrOrNull(w, "cancel_url", Get(params, "cancel_url"));
    Str(w, "client_reference_id", Get(params, "client_reference_id"));
    StrOrNull(w, "customer", Get(params, "customer"));
    StrOrNull(w, "customer_email", Get(params, "customer_email"));
    w.Key("expires_at");
    w.Int64(1'900'000'000);
    w.Key("livemode");
    w.Bool(false);
    Metadata(w, MetadataOf(params, "metadata"));
    Str(w, "mode", "subscription");
    Str(w, "payment_status", session.status == "complete" ? "paid" : "unpaid");
    Str(w, "status", session.status);
    StrOrNull(w, "subscription", session.subscription);
    Str(w, "success_url", Get(params, "success_url"));
    if (session.status == "open") {
      Str(w, "url", session.url);
    } else {
      w.Key("url");
      w.Null();
    }
    w.EndObject();
    return buffer.GetString();
  }

  CheckoutSession* FindSession(const std::string& id) {
    for (CheckoutSession& session : sessions) {
      if (session.id == id) return &session;
    }
    return nullptr;
  }

  Answer GetCheckoutSession(const std::string& id) {
    CheckoutSession* session = FindSession(id);
    if (session == nullptr) return NoSuch("checkout.session", id);
    return Answer{200, SessionJson(*session)};
  }

  Answer ExpireCheckoutSession(const std::string& id, const http::FormParams& params) {
    std::string unknown = UnknownParam(params, {});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    CheckoutSession* session = FindSession(id);
    if (session == nullptr) return NoSuch("checkout.session", id);
    if (session->status != "open") {
      return InvalidRequest("Only Checkout Sessions with a status in [\"open\"] can be expired.");
    }
    session->status = "expired";
    return Answer{200, SessionJson(*session)};
  }

  Answer CreatePortalSession(const http::FormParams& params) {
    std::string unknown = UnknownParam(params, {{"customer"}, {"return_url"}, {"configuration"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    if (!Has(params, "customer")) return InvalidRequest("Missing required param: customer.", "customer");
    std::string customer(Get(params, "customer"));
    if (customers.count(customer) == 0) return NoSuch("customer", customer, "customer", 400);
    if (Has(params, "return_url") && Get(params, "return_url").rfind("http", 0) != 0) {
      return InvalidRequest("Not a valid URL", "return_url", "url_invalid");
    }
    ++portal_sessions;
    std::string id = NewId("bps_");
    rapidjson::StringBuffer buffer;
    Writer w(buffer);
    w.StartObject();
    Str(w, "id", id);
    Str(w, "object", "billing_portal.session");
    Str(w, "customer", customer);
    w.Key("livemode");
    w.Bool(false);
    StrOrNull(w, "return_url", Get(params, "return_url"));
    Str(w, "url", "https://billing.stripe.com/p/session/test_" + NewId(""));
    w.EndObject();
    return Answer{200, buffer.GetString()};
  }

  Answer ListPaymentMethods(const std::string& customer, const http::FormParams& query) {
    std::string unknown = UnknownParam(query, {{"type"}, {"limit"}, {"starting_after"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    if (Get(query, "type") != "card") {
      return InvalidRequest("ledgerd fake: ledgerd lists cards: type=card is expected", "type");
    }
    auto it = customers.find(customer);
    if (it == customers.end()) return NoSuch("customer", customer, "customer");
    // Stripe's list limit: 10 unless asked, 1..100.
    int64_t limit = 10;
    if (const std::string asked(Get(query, "limit")); !asked.empty()) {
      if (!ParseInt(asked, &limit) || limit < 1 || limit > 100) {
        return InvalidRequest("Invalid integer: limit", "limit");
      }
    }
    const std::vector<Card>& all = it->second.cards;
    const std::vector<Card> cards(all.begin(),
                                  all.begin() + std::min<size_t>(all.size(), static_cast<size_t>(limit)));
    std::string body = ListJson("/v1/customers/" + customer + "/payment_methods", [&](Writer& w) {
      for (const Card& card : cards) {
        w.StartObject();
        Str(w, "id", card.id);
        Str(w, "object", "payment_method");
        w.Key("card");
        w.StartObject();
        Str(w, "brand", card.brand);
        w.Key("exp_month");
        w.Int64(card.exp_month);
        w.Key("exp_year");
        w.Int64(card.exp_year);
        Str(w, "last4", card.last4);
        w.EndObject();
        Str(w, "customer", customer);
        Str(w, "type", "card");
        w.EndObject();
      }
    }, cards.size() < all.size());
    return Answer{200, body};
  }

  Answer GetSubscription(const std::string& id) {
    auto it = subscriptions.find(id);
    if (it == subscriptions.end()) return NoSuch("subscription", id);
    return Answer{200, SubscriptionJson(it->second)};
  }

  Answer CancelSubscription(const std::string& id, const http::FormParams& query) {
    std::string unknown =
        UnknownParam(query, {{"invoice_now"}, {"prorate"}, {"cancellation_details", "comment"},
                             {"cancellation_details", "feedback"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    const std::string_view comment = Get(query, "cancellation_details[comment]");
    if (comment.size() > 5000) {
      return InvalidRequest("Invalid string: must be at most 5000 characters",
                            "cancellation_details[comment]");
    }
    const std::string_view feedback = Get(query, "cancellation_details[feedback]");
    static const std::set<std::string_view> kFeedback = {
        "customer_service", "low_quality",  "missing_features", "other",
        "switched_service", "too_complex", "too_expensive",    "unused"};
    if (Has(query, "cancellation_details[feedback]") && !kFeedback.count(feedback)) {
      return InvalidRequest("Invalid cancellation_details[feedback]",
                            "cancellation_details[feedback]");
    }
    auto it = subscriptions.find(id);
    if (it == subscriptions.end() || it->second.status == "canceled") {
      return NoSuch("subscription", id);
    }
    it->second.status = "canceled";
    it->second.canceled_at = 1'700'500'000;
    it->second.ended_at = it->second.canceled_at;
    it->second.cancellation_comment = std::string(comment);
    it->second.cancellation_feedback = std::string(feedback);
    return Answer{200, SubscriptionJson(it->second)};
  }

  Answer UpdateSubscription(const std::string& id, const http::FormParams& params) {
    std::string unknown = UnknownParam(
        params, {{"cancel_at_period_end"}, {"items", "#", "id"}, {"items", "#", "price"},
                 {"proration_behavior"}, {"payment_behavior"}, {"trial_end"}, {"metadata", "*"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    auto it = subscriptions.find(id);
    if (it == subscriptions.end()) return NoSuch("subscription", id);
    Subscription& s = it->second;
    if (s.status == "canceled" || s.status == "incomplete_expired") {
      return InvalidRequest(
          "A canceled subscription can only update its cancellation_details and metadata.");
    }
    if (Has(params, "cancel_at_period_end") && !IsBoolText(Get(params, "cancel_at_period_end"))) {
      return InvalidRequest("Invalid boolean", "cancel_at_period_end");
    }
    if (Has(params, "cancel_at_period_end") && !s.schedule.empty()) {
      return InvalidRequest("The subscription is managed by the subscription schedule `" +
                            s.schedule +
                            "`, and updating any cancelation behavior directly is not allowed. "
                            "Please update the schedule instead.");
    }
    if (Has(params, "proration_behavior")) {
      std::string_view p = Get(params, "proration_behavior");
      if (p != "create_prorations" && p != "none" && p != "always_invoice") {
        return InvalidRequest("Invalid proration_behavior", "proration_behavior");
      }
    }
    for (const auto& [k, v] : params) {
      std::vector<std::string> segments = Segments(k);
      if (segments[0] == "items" && segments[1] != "0") {
        return InvalidRequest("ledgerd fake: ledgerd changes exactly one item", k);
      }
    }
    if (Has(params, "items[0][price]")) {
      if (!Has(params, "items[0][id]")) {
        return InvalidRequest(
            "ledgerd fake: items[0][id] is required (without it Stripe adds a second item)",
            "items[0][id]");
      }
      if (Get(params, "items[0][id]") != s.item_id) {
        return InvalidRequest("Invalid subscription_item id", "items[0][id]");
      }
      auto price = prices.find(std::string(Get(params, "items[0][price]")));
      if (price == prices.end()) return NoSuch("price", Get(params, "items[0][price]"), "items[0][price]", 400);
      if (!price->second.active || price->second.interval.empty()) {
        return InvalidRequest("The price must be an active recurring price", "items[0][price]");
      }
    } else if (Has(params, "items[0][id]")) {
      return InvalidRequest("ledgerd fake: items[0][id] without items[0][price]", "items[0][id]");
    }
    if (Has(params, "trial_end")) {
      // "now" or a Unix time in the future (ledgerd only ever ends a trial now).
      if (Get(params, "trial_end") != "now") {
        return InvalidRequest("ledgerd fake: trial_end other than \"now\"", "trial_end");
      }
      if (s.status != "trialing") {
        return InvalidRequest("ledgerd fake: trial_end=now on a subscription that is not trialing",
                              "trial_end");
      }
    }
    if (Has(params, "payment_behavior")) {
      std::string_view p = Get(params, "payment_behavior");
      if (p != "allow_incomplete" && p != "default_incomplete" && p != "error_if_incomplete" &&
          p != "pending_if_incomplete") {
        return InvalidRequest("Invalid payment_behavior", "payment_behavior");
      }
    }
    if (auto bad = CheckMetadata(params, "metadata")) return *bad;

    // Ending the trial, moving to another interval (the period is re-anchored) or
    // always_invoice invoices the change at once. If the customer's card declines, the default
    // payment_behavior (allow_incomplete) makes the change anyway and leaves the subscription
    // past_due; error_if_incomplete refuses it with a card error and changes nothing.
    bool invoices_now = Has(params, "trial_end") || Get(params, "proration_behavior") == "always_invoice";
    if (Has(params, "items[0][price]")) {
      auto from = prices.find(s.price_id);
      auto to = prices.find(std::string(Get(params, "items[0][price]")));
      invoices_now = invoices_now || (from != prices.end() && to != prices.end() &&
                                      from->second.interval != to->second.interval);
    }
    bool declined = false;
    if (invoices_now) {
      auto customer = customers.find(s.customer);
      declined = customer != customers.end() && customer->second.declines;
    }
    if (declined && Get(params, "payment_behavior") == "error_if_incomplete") {
      return Error(402, "card_error", "Your card was declined.", "", "card_declined");
    }
    if (declined && Get(params, "payment_behavior") != "default_incomplete" &&
        Get(params, "payment_behavior") != "pending_if_incomplete") {
      s.status = "past_due";
    } else if (Has(params, "trial_end")) {
      s.status = "active";  // the first invoice is paid at once
    }
    if (Has(params, "cancel_at_period_end")) {
      s.cancel_at_period_end = Get(params, "cancel_at_period_end") == "true";
    }
    if (Has(params, "items[0][price]")) s.price_id = std::string(Get(params, "items[0][price]"));
    if (Has(params, "proration_behavior")) {
      s.last_proration_behavior = std::string(Get(params, "proration_behavior"));
    }
    // Stripe merges metadata; an empty value removes its key.
    for (const auto& [k, v] : MetadataOf(params, "metadata")) {
      if (v.empty()) {
        s.metadata.erase(k);
      } else {
        s.metadata[k] = v;
      }
    }
    return Answer{200, SubscriptionJson(s)};
  }

  Answer GetProduct(const std::string& id) {
    auto it = products.find(id);
    if (it == products.end()) return NoSuch("product", id);
    return Answer{200, ProductJson(it->second)};
  }

  Answer CreateProduct(const http::FormParams& params) {
    std::string unknown = UnknownParam(
        params, {{"id"}, {"name"}, {"description"}, {"active"}, {"metadata", "*"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    if (Get(params, "name").empty()) return InvalidRequest("Missing required param: name.", "name");
    if (auto bad = CheckMetadata(params, "metadata")) return *bad;
    Product product;
    product.id = Has(params, "id") ? std::string(Get(params, "id")) : NewId("prod_");
    if (products.count(product.id) != 0) {
      return InvalidRequest("Product already exists.", "id", "resource_already_exists");
    }
    product.name = std::string(Get(params, "name"));
    product.description = std::string(Get(params, "description"));
    product.active = !Has(params, "active") || Get(params, "active") == "true";
    product.metadata = MetadataOf(params, "metadata");
    products[product.id] = product;
    return Answer{200, ProductJson(product)};
  }

  Answer ListPrices(const http::FormParams& query) {
    std::string unknown = UnknownParam(
        query, {{"lookup_keys", ""}, {"lookup_keys", "#"}, {"limit"}, {"active"}, {"product"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    std::set<std::string> keys;
    for (const auto& [k, v] : query) {
      if (k.rfind("lookup_keys[", 0) == 0) keys.insert(v);
    }
    if (keys.size() > 10) return InvalidRequest("lookup_keys: at most 10", "lookup_keys");
    std::vector<const Price*> matched;
    for (const auto& [id, price] : prices) {
      if (!keys.empty() && keys.count(price.lookup_key) == 0) continue;
      if (Has(query, "active") && (Get(query, "active") == "true") != price.active) continue;
      if (Has(query, "product") && Get(query, "product") != price.product) continue;
      matched.push_back(&price);
    }
    return Answer{200, ListJson("/v1/prices", [&](Writer& w) {
                    for (const Price* price : matched) WritePrice(w, *price);
                  })};
  }

  Answer GetPrice(const std::string& id) {
    auto it = prices.find(id);
    if (it == prices.end()) return NoSuch("price", id);
    return Answer{200, PriceJson(it->second)};
  }

  Answer CreatePrice(const http::FormParams& params) {
    std::string unknown = UnknownParam(
        params, {{"product"}, {"unit_amount"}, {"currency"}, {"recurring", "interval"},
                 {"lookup_key"}, {"transfer_lookup_key"}, {"nickname"}, {"metadata", "*"},
                 {"active"}});
    if (!unknown.empty()) return InvalidRequest("Received unknown parameter: " + unknown, unknown);
    if (!Has(params, "currency")) return InvalidRequest("Missing required param: currency.", "currency");
    std::string_view currency = Get(params, "currency");
    if (currency.size() != 3 ||
        !std::all_of(currency.begin(), currency.end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
      return InvalidRequest("Invalid currency", "currency");
    }
    std::string product(Get(params, "product"));
    if (product.empty()) return InvalidRequest("Missing required param: product.", "product");
    if (products.count(product) == 0) return NoSuch("product", product, "product", 400);
    int64_t amount = 0;
    if (!ParseInt(Get(params, "unit_amount"), &amount) || amount < 0) {
      return InvalidRequest("Invalid integer: unit_amount", "unit_amount");
    }
    std::string_view interval = Get(params, "recurring[interval]");
    if (Has(params, "recurring[interval]") && interval != "day" && interval != "week" &&
        interval != "month" && interval != "year") {
      return InvalidRequest("Invalid recurring[interval]", "recurring[interval]");
    }
    if (Has(params, "transfer_lookup_key") && !IsBoolText(Get(params, "transfer_lookup_key"))) {
      return InvalidRequest("Invalid boolean", "transfer_lookup_key");
    }
    std::string lookup_key(Get(params, "lookup_key"));
    if (lookup_key.size() > 200) return InvalidRequest("lookup_key too long", "lookup_key");
    Price* holder = nullptr;
    for (auto& [id, price] : prices) {
      if (!lookup_key.empty() && price.lookup_key == lookup_key) holder = &price;
    }
    if (holder != nullptr && Get(params, "transfer_lookup_key") != "true") {
      return InvalidRequest("A price (`" + holder->id + "`) already uses that lookup key.",
                            "lookup_key");
    }
    if (auto bad = CheckMetadata(params, "metadata")) return *bad;
    if (holder != nullptr) holder->lookup_key.clear();
    Price price;
    price.id = NewId("price_");
    price.product = product;
    price.unit_amount = amount;
    price.currency = std::string(currency);
    price.interval = std::string(interval);
    price.lookup_key = lookup_key;
    price.active = !Has(params, "active") || Get(params, "active") == "true";
    price.metadata = MetadataOf(params, "metadata");
    prices[price.id] = price;
    return Answer{200, PriceJson(price)};
  }

  Answer Dispatch(const std::string& method, const std::string& path,
                  const http::FormParams& params) {
    std::vector<std::string> parts;
    for (size_t start = 1; start <= path.size();) {
      size_t end = path.find('/', start);
      if (end == std::string::npos) end = path.size();
      parts.push_back(path.substr(start, end - start));
      start = end + 1;
    }
    auto is = [&](std::initializer_list<std::string_view> want) {
      if (want.size() != parts.size()) return false;
      size_t i = 0;
      for (std::string_view w : want) {
        if (w != "*" && parts[i] != w) return false;
        if (w == "*" && parts[i].empty()) return false;
        ++i;
      }
      return true;
    };
    if (method == "POST" && is({"v1", "checkout", "sessions"})) return CreateCheckoutSession(params);
    if (method == "GET" && is({"v1", "checkout", "sessions", "*"})) {
      return GetCheckoutSession(parts[3]);
    }
    if (method == "POST" && is({"v1", "checkout", "sessions", "*", "expire"})) {
      return ExpireCheckoutSession(parts[3], params);
    }
    if (method == "POST" && is({"v1", "billing_portal", "sessions"})) return CreatePortalSession(params);
    if (method == "GET" && is({"v1", "customers", "*", "payment_methods"})) {
      return ListPaymentMethods(parts[2], params);
    }
    if (is({"v1", "subscriptions", "*"})) {
      if (method == "GET") return GetSubscription(parts[2]);
      if (method == "DELETE") return CancelSubscription(parts[2], params);
      if (method == "POST") return UpdateSubscription(parts[2], params);
    }
    if (method == "GET" && is({"v1", "products", "*"})) return GetProduct(parts[2]);
    if (method == "POST" && is({"v1", "products"})) return CreateProduct(params);
    if (method == "GET" && is({"v1", "prices"})) return ListPrices(params);
    if (method == "GET" && is({"v1", "prices", "*"})) return GetPrice(parts[2]);
    if (method == "POST" && is({"v1", "prices"})) return CreatePrice(params);
    return Error(404, "invalid_request_error",
                 "Unrecognized request URL (" + method + ": " + path + ").");
  }
};

// ---- FakeStripe::Request ------------------------------------------------------------------------

std::string FakeStripe::Request::Param(std::string_view key) const {
  return std::string(Get(params, key));
}

bool FakeStripe::Request::HasParam(std::string_view key) const { return Has(params, key); }

// ---- Lifecycle ----------------------------------------------------------------------------------

FakeStripe::FakeStripe(std::string secret_key)
    : secret_key_(std::move(secret_key)), state_(std::make_unique<State>()) {
  auto handler = [this](const httplib::Request& req, httplib::Response& res) { Handle(req, res); };
  server_.Get(".*", handler);
  server_.Post(".*", handler);
  server_.Delete(".*", handler);
  server_.Put(".*", handler);
  server_.Patch(".*", handler);
}

FakeStripe::~FakeStripe() { Stop(); }

Status FakeStripe::Start() {
  port_ = server_.bind_to_any_port("127.0.0.1");
  if (port_ <= 0) return Status::Unavailable("listen_failed", "fake Stripe could not bind");
  started_ = true;
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  for (int i = 0; i < 500 && !server_.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Status::OK();
}

void FakeStripe::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (started_) {
    server_.stop();
    if (thread_.joinable()) thread_.join();
    started_ = false;
  }
}

// ---- State access -------------------------------------------------------------------------------

void FakeStripe::AddProduct(const std::string& id, const std::string& name, bool active) {
  std::lock_guard<std::mutex> lock(mu_);
  Product& p = state_->products[id];
  p.id = id;
  p.name = name;
  p.active = active;
}

std::string FakeStripe::AddPrice(Price price) {
  std::lock_guard<std::mutex> lock(mu_);
  if (price.id.empty()) price.id = state_->NewId("price_");
  std::string id = price.id;
  state_->prices[id] = std::move(price);
  return id;
}

std::string FakeStripe::AddPrice(const std::string& id, const std::string& product,
                                 int64_t cents, const std::string& interval) {
  Price price;
  price.id = id;
  price.product = product;
  price.unit_amount = cents;
  price.interval = interval;
  return AddPrice(std::move(price));
}

void FakeStripe::AddCustomer(const std::string& id, const std::string& email) {
  std::lock_guard<std::mutex> lock(mu_);
  Customer& c = state_->customers[id];
  c.id = id;
  c.email = email;
}

void FakeStripe::AddCard(const std::string& customer, const std::string& pm_id,
                         const std::string& brand, const std::string& last4, int64_t exp_month,
                         int64_t exp_year) {
  std::lock_guard<std::mutex> lock(mu_);
  state_->customers[customer].cards.push_back(Card{pm_id, brand, last4, exp_month, exp_year});
}

void FakeStripe::DeclinePayments(const std::string& customer) {
  std::lock_guard<std::mutex> lock(mu_);
  state_->customers[customer].declines = true;
}

void FakeStripe::DeleteCustomer(const std::string& customer) {
  std::lock_guard<std::mutex> lock(mu_);
  state_->customers.erase(customer);
}

void FakeStripe::AddSubscription(Subscription subscription) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string id = subscription.id;
  state_->subscriptions[id] = std::move(subscription);
}

std::optional<FakeStripe::Subscription> FakeStripe::GetSubscription(const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = state_->subscriptions.find(id);
  if (it == state_->subscriptions.end()) return std::nullopt;
  return it->second;
}

std::vector<FakeStripe::Price> FakeStripe::prices() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Price> out;
  for (const auto& [id, price] : state_->prices) out.push_back(price);
  return out;
}

size_t FakeStripe::product_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_->products.size();
}

std::vector<std::string> FakeStripe::product_ids() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [id, product] : state_->products) out.push_back(id);
  return out;
}

std::vector<FakeStripe::CheckoutSession> FakeStripe::checkout_sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_->sessions;
}

void FakeStripe::CompleteCheckoutSession(const std::string& id,
                                         const std::string& subscription_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (CheckoutSession* session = state_->FindSession(id)) {
    session->status = "complete";
    session->subscription = subscription_id;
  }
}

size_t FakeStripe::portal_session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return state_->portal_sessions;
}

std::vector<FakeStripe::Request> FakeStripe::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

std::vector<FakeStripe::Request> FakeStripe::RequestsTo(std::string_view method,
                                                        std::string_view path_prefix) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Request> out;
  for (const Request& r : requests_) {
    if (r.method == method && r.path.compare(0, path_prefix.size(), path_prefix) == 0) {
      out.push_back(r);
    }
  }
  return out;
}

void FakeStripe::ClearRequests() {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.clear();
}

void FakeStripe::InjectFault(Fault fault, int count, std::string method, std::string path_prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  Injected injected;
  injected.fault = fault;
  injected.remaining = count;
  injected.method = std::move(method);
  injected.path_prefix = std::move(path_prefix);
  faults_.push_back(std::move(injected));
}

void FakeStripe::InjectError(int status, std::string type, std::string message, int count,
                             std::string method, std::string path_prefix, std::string code) {
  std::lock_guard<std::mutex> lock(mu_);
  Injected injected;
  injected.fault = Fault::kServerError;
  injected.status = status;
  injected.type = std::move(type);
  injected.message = std::move(message);
  injected.code = std::move(code);
  injected.remaining = count;
  injected.method = std::move(method);
  injected.path_prefix = std::move(path_prefix);
  faults_.push_back(std::move(injected));
}

void FakeStripe::set_hang_ms(int64_t ms) {
  std::lock_guard<std::mutex> lock(mu_);
  hang_ms_ = ms;
}

void FakeStripe::set_should_retry_header(std::string value) {
  std::lock_guard<std::mutex> lock(mu_);
  should_retry_header_ = std::move(value);
}

// ---- Request handling ---------------------------------------------------------------------------

void FakeStripe::Record(Request record) {
  std::lock_guard<std::mutex> lock(mu_);
  requests_.push_back(std::move(record));
}

bool FakeStripe::ApplyFault(const httplib::Request& req, Request* record, httplib::Response& res) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = std::find_if(faults_.begin(), faults_.end(), [&](const Injected& f) {
    return f.remaining > 0 && (f.method.empty() || f.method == req.method) &&
           req.path.compare(0, f.path_prefix.size(), f.path_prefix) == 0;
  });
  if (it == faults_.end()) return false;
  Injected fault = *it;
  if (--it->remaining == 0) faults_.erase(it);
  record->faulted = true;
  const std::string should_retry = should_retry_header_;
  switch (fault.fault) {
    case Fault::kServerError:
    case Fault::kSavedServerError:
    case Fault::kRateLimited: {
      Answer answer;
      if (fault.status != 0) {
        answer = Error(fault.status, fault.type, fault.message, "", fault.code);
      } else if (fault.fault == Fault::kRateLimited) {
        answer = Error(429, "invalid_request_error",
                       "Request rate limit exceeded. Please try again later.", "", "rate_limit");
      } else {
        answer = Error(500, "api_error", "An unknown error occurred");
      }
      if (!should_retry.empty()) {
        res.set_header("Stripe-Should-Retry", should_retry);
      }
      if (fault.fault == Fault::kSavedServerError && req.method == "POST" &&
          !record->idempotency_key.empty()) {
        state_->idempotency.emplace(
            record->idempotency_key,
            State::Stored{SortedFingerprint(req.method, req.path, record->params), answer});
      }
      res.status = answer.status;
      res.set_content(answer.body, "application/json");
      record->status = answer.status;
      break;
    }
    case Fault::kHang: {
      // Recorded now: the client gives up long before the answer.
      record->status = 0;
      requests_.push_back(*record);
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(hang_ms_);
      stop_cv_.wait_until(lock, until, [this] { return stopping_; });
      Answer answer = Error(500, "api_error", "the fake hung");
      res.status = 500;
      res.set_content(answer.body, "application/json");
      return true;
    }
    case Fault::kReset: {
      // Promise a body and deliver part of it: the server drops the connection mid-answer.
      res.status = 200;
      res.set_content_provider(
          4096, "application/json", [](size_t, size_t, httplib::DataSink& sink) {
            sink.write("{\"id\":", 6);
            return false;
          });
      record->status = 0;
      break;
    }
  }
  requests_.push_back(*record);
  return true;
}

void FakeStripe::Handle(const httplib::Request& req, httplib::Response& res) {
  Request record;
  record.method = req.method;
  record.path = req.path;
  record.authorization = req.get_header_value("Authorization");
  record.has_idempotency_key = req.has_header("Idempotency-Key");
  record.idempotency_key = req.get_header_value("Idempotency-Key");
  record.stripe_version = req.get_header_value("Stripe-Version");
  record.content_type = req.get_header_value("Content-Type");
  record.body = req.body;

  auto answer_with = [&](const Answer& answer, bool replayed = false) {
    res.status = answer.status;
    res.set_content(answer.body, "application/json");
    if (replayed) res.set_header("Idempotent-Replayed", "true");
    res.set_header("Request-Id", "req_fake");
    record.status = answer.status;
    record.replayed = replayed;
    Record(std::move(record));
  };

  const bool post = req.method == "POST";
  std::string_view raw_params = req.body;
  if (!post) {
    size_t q = req.target.find('?');
    raw_params = q == std::string::npos ? std::string_view() : std::string_view(req.target).substr(q + 1);
  }
  Status decoded = http::FormUrlDecode(raw_params, &record.params);

  if (ApplyFault(req, &record, res)) return;  // recorded there
  if (record.authorization != "Bearer " + secret_key_) {
    std::string message = "You did not provide an API key.";
    if (record.authorization.rfind("Bearer ", 0) == 0) {
      std::string given = record.authorization.substr(7);
      message = "Invalid API Key provided: " + given.substr(0, std::min<size_t>(8, given.size())) +
                "****" + (given.size() > 4 ? given.substr(given.size() - 4) : "");
    }
    answer_with(Error(401, "invalid_request_error", message));
    return;
  }
  if (!decoded.ok()) {
    answer_with(InvalidRequest("Invalid form encoding"));
    return;
  }
  if (req.method != "GET" && req.method != "POST" && req.method != "DELETE") {
    answer_with(Error(404, "invalid_request_error", "Unrecognized request URL"));
    return;
  }
  if (post) {
    if (record.content_type.rfind("application/x-www-form-urlencoded", 0) != 0) {
      answer_with(InvalidRequest("Invalid request: POST bodies must be form-encoded"));
      return;
    }
    if (!record.has_idempotency_key || record.idempotency_key.empty()) {
      answer_with(InvalidRequest("ledgerd fake: every POST must carry an Idempotency-Key"));
      return;
    }
    if (record.idempotency_key.size() > 255) {
      answer_with(InvalidRequest("Idempotency-Key must be at most 255 characters"));
      return;
    }
    std::set<std::string> seen;
    for (const auto& [k, v] : record.params) {
      if (!seen.insert(k).second) {
        answer_with(InvalidRequest("ledgerd fake: parameter given twice: " + k, k));
        return;
      }
    }
  }

  std::unique_lock<std::mutex> lock(mu_);
  std::string fingerprint;
  if (post) {
    fingerprint = SortedFingerprint(req.method, req.path, record.params);
    auto stored = state_->idempotency.find(record.idempotency_key);
    if (stored != state_->idempotency.end()) {
      Answer answer = stored->second.answer;
      bool same = stored->second.fingerprint == fingerprint;
      lock.unlock();
      if (same) {
        answer_with(answer, /*replayed=*/true);
      } else {
        answer_with(Error(400, "idempotency_error",
                          "Keys for idempotent requests can only be used with the same parameters "
                          "they were first used with. Try using a key other than '" +
                              record.idempotency_key +
                              "' if you meant to execute a different request."));
      }
      return;
    }
  }
  Answer answer = state_->Dispatch(req.method, req.path, record.params);
  // Stripe saves the answer of every request its endpoint began to run, failures included (a
  // declined card's 402, a 400 about the object's state, a 500), and replays it for the key. Not
  // saved: what was refused before (the key, the encoding, parameters given twice above) and the
  // injected faults other than kSavedServerError.
  if (post) state_->idempotency[record.idempotency_key] = State::Stored{fingerprint, answer};
  lock.unlock();
  answer_with(answer);
}

}  // namespace ledger::testing
