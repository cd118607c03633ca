// Stripe webhook payloads for tests, shaped as Stripe sends them (envelope `id`, `object`,
// `api_version`, `created`, `livemode`, `type`, `data.object`, ...), in both API-version layouts:
//   new (>= 2025-03-31): billing period on items.data[], invoice subscription under
//                        parent.subscription_details;
//   old:                 top-level current_period_start/end and invoice.subscription.
// Only the fields ledgerd reads plus enough of the rest to look like the real thing.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ledger::testing {

inline constexpr int64_t kStripeT0 = 1'750'000'000;
inline constexpr char kNewApiVersion[] = "2025-03-31.basil";
inline constexpr char kOldApiVersion[] = "2024-06-20";

namespace stripe_events_internal {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

inline void Str(Writer* w, std::string_view key, std::string_view value) {
  w->Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  w->String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}
inline void OptStr(Writer* w, std::string_view key, const std::optional<std::string>& value) {
  w->Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  if (value) {
    w->String(value->data(), static_cast<rapidjson::SizeType>(value->size()));
  } else {
    w->Null();
  }
}
inline void OptInt(Writer* w, std::string_view key, const std::optional<int64_t>& value) {
  w->Key(key.data(), static_cast<rapidjson::SizeType>(key.size()));
  if (value) {
    w->Int64(*value);
  } else {
    w->Null();
  }
}

// Writes the envelope around `object_json` (a complete JSON object).
inline std::string Envelope(std::string_view event_id, std::string_view type, int64_t created,
                            std::string_view api_version, std::string_view object_json,
                            std::string_view previous_attributes_json = {}) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  Str(&w, "id", event_id);
  Str(&w, "object", "event");
  Str(&w, "api_version", api_version);
  w.Key("created");
  w.Int64(created);
  w.Key("data");
  w.StartObject();
  w.Key("object");
  w.RawValue(object_json.data(), object_json.size(), rapidjson::kObjectType);
  if (!previous_attributes_json.empty()) {
    w.Key("previous_attributes");
    w.RawValue(previous_attributes_json.data(), previous_attributes_json.size(),
               rapidjson::kObjectType);
  }
  w.EndObject();
  w.Key("livemode");
  w.Bool(false);
  w.Key("pending_webhooks");
  w.Int(1);
  w.Key("request");
  w.StartObject();
  Str(&w, "id", "req_test");
  w.Key("idempotency_key");
  w.Null();
  w.EndObject();
  Str(&w, "type", type);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace stripe_events_internal

struct StripeSubscriptionSpec {
  std::string event_id = "evt_sub";
  std::string event_type = "customer.subscription.updated";
  int64_t event_created = kStripeT0;
  bool new_layout = true;
  std::string subscription_id = "sub_1";
  std::string customer_id = "cus_1";
  std::string status = "active";
  std::string item_id = "si_1";
  std::string price_id = "price_starter_monthly";
  std::string interval = "month";
  int64_t interval_count = 1;
  std::optional<int64_t> unit_amount = 1900;  // nullopt: null (a tiered price)
  int64_t quantity = 1;
  std::string currency = "usd";
  std::optional<std::string> metadata_user_id = "user-1";
  std::optional<std::string> metadata_plan_id;
  int64_t created = kStripeT0;
  int64_t period_start = kStripeT0;
  int64_t period_end = kStripeT0 + 30 * 86400;
  // false: no current_period_* in either layout (README's stripe_send sends none).
  bool with_period = true;
  bool cancel_at_period_end = false;
  std::optional<int64_t> cancel_at, canceled_at, ended_at, trial_start, trial_end;
  // data.previous_attributes as JSON ("" for none); unset: {"cancel_at_period_end":false} on an
  // update, none otherwise.
  std::optional<std::string> previous_attributes;
};

inline std::string StripeSubscriptionEventJson(const StripeSubscriptionSpec& s) {
  using namespace stripe_events_internal;
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  Str(&w, "id", s.subscription_id);
  Str(&w, "object", "subscription");
  w.Key("billing_cycle_anchor");
  w.Int64(s.period_start);
  w.Key("cancel_at_period_end");
  w.Bool(s.cancel_at_period_end);
  OptInt(&w, "cancel_at", s.cancel_at);
  OptInt(&w, "canceled_at", s.canceled_at);
  w.Key("created");
  w.Int64(s.created);
  Str(&w, "currency", s.currency);
  if (!s.new_layout && s.with_period) {
    w.Key("current_period_start");
    w.Int64(s.period_start);
    w.Key("current_period_end");
    w.Int64(s.period_end);
  }
  Str(&w, "customer", s.customer_id);
  OptInt(&w, "ended_at", s.ended_at);
  w.Key("items");
  w.StartObject();
  Str(&w, "object", "list");
  w.Key("data");
  w.StartArray();
  w.StartObject();
  Str(&w, "id", s.item_id);
  Str(&w, "object", "subscription_item");
  if (s.new_layout && s.with_period) {
    w.Key("current_period_start");
    w.Int64(s.period_start);
    w.Key("current_period_end");
    w.Int64(s.period_end);
  }
  w.Key("price");
  w.StartObject();
  Str(&w, "id", s.price_id);
  Str(&w, "object", "price");
  Str(&w, "currency", s.currency);
  w.Key("recurring");
  if (s.interval.empty()) {
    w.Null();
  } else {
    w.StartObject();
    Str(&w, "interval", s.interval);
    w.Key("interval_count");
    w.Int64(s.interval_count);
    w.EndObject();
  }
  OptInt(&w, "unit_amount", s.unit_amount);
  w.EndObject();
  w.Key("quantity");
  w.Int64(s.quantity);
  w.EndObject();
  w.EndArray();
  w.EndObject();
  w.Key("livemode");
  w.Bool(false);
  w.Key("metadata");
  w.StartObject();
  if (s.metadata_user_id) Str(&w, "user_id", *s.metadata_user_id);
  if (s.metadata_plan_id) Str(&w, "plan_id", *s.metadata_plan_id);
  w.EndObject();
  Str(&w, "status", s.status);
  OptInt(&w, "trial_start", s.trial_start);
  OptInt(&w, "trial_end", s.trial_end);
  w.EndObject();
  std::string object(buf.GetString(), buf.GetSize());
  std::string previous = s.event_type == "customer.subscription.updated"
                             ? R"({"cancel_at_period_end":false})"
                             : "";
  if (s.previous_attributes) previous = *s.previous_attributes;
  return Envelope(s.event_id, s.event_type, s.event_created,
                  s.new_layout ? kNewApiVersion : kOldApiVersion, object, previous);
}

struct StripeCheckoutSpec {
  std::string event_id = "evt_checkout";
  int64_t event_created = kStripeT0;
  std::string session_id = "cs_test_1";
  std::optional<std::string> client_reference_id = "user-1";
  std::optional<std::string> metadata_user_id = "user-1";
  std::optional<std::string> metadata_plan_id = "starter";
  std::optional<std::string> customer_id = "cus_1";
  std::optional<std::string> subscription_id = "sub_1";
  std::optional<std::string> email = "user-1@example.com";
  // customer_email too (ledgerd gave Stripe the token's email); false: null, the payer typed
  // `email` at Checkout (customer_details.email only).
  bool email_prefilled = true;
  std::string payment_status = "paid";
};

inline std::string StripeCheckoutCompletedJson(const StripeCheckoutSpec& s) {
  using namespace stripe_events_internal;
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  Str(&w, "id", s.session_id);
  Str(&w, "object", "checkout.session");
  w.Key("amount_total");
  w.Int(1900);
  OptStr(&w, "client_reference_id", s.client_reference_id);
  // A secret that must never reach the log.
  Str(&w, "client_secret", "cs_test_secret_must_not_be_stored");
  OptStr(&w, "customer", s.customer_id);
  w.Key("customer_details");
  w.StartObject();
  OptStr(&w, "email", s.email);
  OptStr(&w, "name", std::nullopt);
  w.EndObject();
  OptStr(&w, "customer_email", s.email_prefilled ? s.email : std::nullopt);
  w.Key("metadata");
  w.StartObject();
  if (s.metadata_user_id) Str(&w, "user_id", *s.metadata_user_id);
  if (s.metadata_plan_id) Str(&w, "plan_id", *s.metadata_plan_id);
  w.EndObject();
  Str(&w, "mode", "subscription");
  Str(&w, "payment_status", s.payment_status);
  Str(&w, "status", "complete");
  OptStr(&w, "subscription", s.subscription_id);
  w.EndObject();
  return Envelope(s.event_id, "checkout.session.completed", s.event_created, kNewApiVersion,
                  std::string_view(buf.GetString(), buf.GetSize()));
}

struct StripeInvoiceSpec {
  std::string event_id = "evt_invoice";
  std::string event_type = "invoice.paid";  // or "invoice.payment_failed"
  int64_t event_created = kStripeT0;
  bool new_layout = true;
  std::string invoice_id = "in_1";
  std::string customer_id = "cus_1";
  std::optional<std::string> subscription_id = "sub_1";
  std::optional<std::string> metadata_user_id = "user-1";
  int64_t amount_due = 1900;
  int attempt_count = 1;
  // A failure names Stripe's next attempt 3 days on; false: none (Stripe's last retry failed).
  bool retries_left = true;
  std::optional<int64_t> next_payment_attempt;  // set: sent instead, whatever the above say
};

// An invoice event of `user`'s subscription `subscription_id` on customer `customer_id`.
inline StripeInvoiceSpec InvoiceOf(std::string user, std::string customer_id,
                                   std::string subscription_id, std::string invoice_id,
                                   std::string event_type, std::string event_id,
                                   int64_t event_created) {
  StripeInvoiceSpec spec;
  spec.event_id = std::move(event_id);
  spec.event_type = std::move(event_type);
  spec.event_created = event_created;
  spec.invoice_id = std::move(invoice_id);
  spec.customer_id = std::move(customer_id);
  spec.subscription_id = std::move(subscription_id);
  spec.metadata_user_id = std::move(user);
  return spec;
}

inline std::string StripeInvoiceEventJson(const StripeInvoiceSpec& s) {
  using namespace stripe_events_internal;
  const bool paid = s.event_type == "invoice.paid";
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  Str(&w, "id", s.invoice_id);
  Str(&w, "object", "invoice");
  w.Key("amount_due");
  w.Int64(s.amount_due);
  w.Key("amount_paid");
  w.Int64(paid ? s.amount_due : 0);
  w.Key("attempt_count");
  w.Int(s.attempt_count);
  Str(&w, "billing_reason", "subscription_cycle");
  Str(&w, "currency", "usd");
  Str(&w, "customer", s.customer_id);
  std::optional<int64_t> next_attempt = s.next_payment_attempt;
  if (!next_attempt && !paid && s.retries_left) next_attempt = s.event_created + 3 * 86400;
  OptInt(&w, "next_payment_attempt", next_attempt);
  if (s.new_layout) {
    w.Key("parent");
    w.StartObject();
    Str(&w, "type", "subscription_details");
    w.Key("subscription_details");
    w.StartObject();
    w.Key("metadata");
    w.StartObject();
    if (s.metadata_user_id) Str(&w, "user_id", *s.metadata_user_id);
    w.EndObject();
    OptStr(&w, "subscription", s.subscription_id);
    w.EndObject();
    w.EndObject();
  } else {
    OptStr(&w, "subscription", s.subscription_id);
  }
  Str(&w, "status", paid ? "paid" : "open");
  w.EndObject();
  return Envelope(s.event_id, s.event_type, s.event_created,
                  s.new_layout ? kNewApiVersion : kOldApiVersion,
                  std::string_view(buf.GetString(), buf.GetSize()));
}

// The lifecycle of PROTOCOLS.md/issue 3, one Stripe event per delivery, oldest first:
//   0 checkout.session.completed      1 customer.subscription.created (trialing)
//   2 customer.subscription.updated (active)   3 invoice.payment_failed
//   4 customer.subscription.updated (past_due) 5 customer.subscription.updated (active)
//   6 customer.subscription.deleted (canceled)
// Event ids are "<prefix>_<n>"; `created` increases by one second per step from `t0`.
struct StripeLifecycleSpec {
  std::string prefix = "evt_lc";
  std::string user_id = "user-1";
  std::string customer_id = "cus_1";
  std::string subscription_id = "sub_1";
  std::string price_id = "price_starter_monthly";
  std::string plan_id = "starter";
  std::string interval = "month";
  bool new_layout = true;
  int64_t t0 = kStripeT0;
};

inline std::vector<std::string> StripeLifecycle(const StripeLifecycleSpec& l) {
  const int64_t trial_end = l.t0 + 7 * 86400;
  const int64_t period_end = trial_end + 30 * 86400;
  auto id = [&](int n) { return l.prefix + "_" + std::to_string(n); };
  std::vector<std::string> out;
  StripeCheckoutSpec checkout;
  checkout.event_id = id(0);
  checkout.event_created = l.t0;
  checkout.session_id = "cs_" + l.subscription_id;
  checkout.client_reference_id = l.user_id;
  checkout.metadata_user_id = l.user_id;
  checkout.metadata_plan_id = l.plan_id;
  checkout.customer_id = l.customer_id;
  checkout.subscription_id = l.subscription_id;
  checkout.email = l.user_id + "@example.com";
  out.push_back(StripeCheckoutCompletedJson(checkout));

  StripeSubscriptionSpec sub;
  sub.new_layout = l.new_layout;
  sub.subscription_id = l.subscription_id;
  sub.customer_id = l.customer_id;
  sub.item_id = "si_" + l.subscription_id;
  sub.price_id = l.price_id;
  sub.interval = l.interval;
  sub.metadata_user_id = l.user_id;
  sub.metadata_plan_id = l.plan_id;
  sub.created = l.t0;
  sub.trial_start = l.t0;
  sub.trial_end = trial_end;
  auto sub_event = [&](int n, std::string type, std::string status, int64_t start, int64_t end) {
    StripeSubscriptionSpec s = sub;
    s.event_id = id(n);
    s.event_type = std::move(type);
    s.event_created = l.t0 + n;
    s.status = std::move(status);
    s.period_start = start;
    s.period_end = end;
    return s;
  };
  out.push_back(StripeSubscriptionEventJson(
      sub_event(1, "customer.subscription.created", "trialing", l.t0, trial_end)));
  out.push_back(StripeSubscriptionEventJson(
      sub_event(2, "customer.subscription.updated", "active", trial_end, period_end)));
  StripeInvoiceSpec invoice;
  invoice.event_id = id(3);
  invoice.event_type = "invoice.payment_failed";
  invoice.event_created = l.t0 + 3;
  invoice.new_layout = l.new_layout;
  invoice.invoice_id = "in_" + l.subscription_id;
  invoice.customer_id = l.customer_id;
  invoice.subscription_id = l.subscription_id;
  invoice.metadata_user_id = l.user_id;
  out.push_back(StripeInvoiceEventJson(invoice));
  out.push_back(StripeSubscriptionEventJson(
      sub_event(4, "customer.subscription.updated", "past_due", trial_end, period_end)));
  out.push_back(StripeSubscriptionEventJson(
      sub_event(5, "customer.subscription.updated", "active", trial_end, period_end)));
  StripeSubscriptionSpec deleted =
      sub_event(6, "customer.subscription.deleted", "canceled", trial_end, period_end);
  deleted.canceled_at = l.t0 + 6;
  deleted.ended_at = l.t0 + 6;
  out.push_back(StripeSubscriptionEventJson(deleted));
  return out;
}

}  // namespace ledger::testing
