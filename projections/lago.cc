#include "projections/lago.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <tuple>
#include <utility>

#include "events/limits.h"
#include "events/types.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"

namespace ledger::projections {

namespace {

using rapidjson::Value;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

Status Malformed(std::string message) {
  return Status::InvalidArgument("malformed_event", std::move(message));
}

// ---- reading Lago objects -----------------------------------------------------------------------

const Value* Member(const Value* object, std::string_view name) {
  if (object == nullptr || !object->IsObject()) return nullptr;
  auto it = object->FindMember(Value(rapidjson::StringRef(name.data(), name.size())));
  return it == object->MemberEnd() ? nullptr : &it->value;
}

// A non-empty UTF-8 string of at most `bytes_max` bytes.
std::optional<std::string> Text(const Value* v, size_t bytes_max = limits::kLagoTextBytesMax) {
  if (v == nullptr || !v->IsString() || v->GetStringLength() == 0 ||
      v->GetStringLength() > bytes_max) {
    return std::nullopt;
  }
  std::string s(v->GetString(), v->GetStringLength());
  if (!IsValidUtf8(s)) return std::nullopt;
  return s;
}

std::optional<std::string> Id(const Value* v) { return Text(v, limits::kLagoIdBytesMax); }

std::optional<int64_t> Integer(const Value* v) {
  if (v == nullptr || !v->IsInt64()) return std::nullopt;
  return v->GetInt64();
}

std::optional<int64_t> TimeMs(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  return ParseLagoTimeMs(*text);
}

bool IsLagoTypeName(std::string_view s) {
  if (s.empty() || s.size() > limits::kLagoTypeBytesMax) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
  });
}

std::string EscapeKeyPart(std::string_view part) {
  std::string out;
  out.reserve(part.size());
  for (char c : part) {
    if (c == '%') {
      out += "%25";
    } else if (c == '/') {
      out += "%2F";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string DeliveryKey(std::string_view raw_sha256) {
  return "delivery/" + std::string(raw_sha256);
}
// How many times the body was recorded again under another key (decimal; absent = 0).
std::string DeliveryRepeatsKey(std::string_view raw_sha256) {
  return "delivery_repeats/" + std::string(raw_sha256);
}
Status GetDeliveryRepeats(const StateReader& state, std::string_view raw_sha256, uint64_t* out) {
  *out = 0;
  std::string text;
  Status s = state.Get(kLagoFamily, DeliveryRepeatsKey(raw_sha256), &text);
  if (s.IsNotFound()) return Status::OK();
  if (!s.ok()) return s;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return Status::Corruption("lago: a delivery repeat count is not a number");
  }
  return Status::OK();
}
std::string InvoiceKey(std::string_view lago_id) { return "inv/" + EscapeKeyPart(lago_id); }
std::string CustomerInvoicePrefix(std::string_view customer) {
  return "cust_inv/" + EscapeKeyPart(customer) + "/";
}
std::string SubscriptionPrefix(std::string_view external_id) {
  return "sub/" + EscapeKeyPart(external_id) + "/";
}
std::string SubscriptionKey(std::string_view external_id, std::string_view lago_id) {
  return SubscriptionPrefix(external_id) + EscapeKeyPart(lago_id);
}
std::string CustomerSubscriptionKey(std::string_view customer, std::string_view external_id) {
  return "cust_sub/" + EscapeKeyPart(customer) + "/" + EscapeKeyPart(external_id);
}

// ---- ordering -----------------------------------------------------------------------------------

int InvoiceStatusRank(std::string_view status) {
  if (status == "finalized" || status == "failed") return 1;
  if (status == "voided") return 2;
  return 0;  // draft, pending (being generated), unknown
}

int PaymentStatusRank(const std::optional<std::string>& status) {
  if (!status) return -1;
  if (*status == "failed") return 1;
  if (*status == "succeeded") return 2;
  return 0;  // pending, unknown
}

int SubscriptionStatusRank(std::string_view status) {
  if (status == "active") return 1;
  if (status == "terminated" || status == "canceled") return 2;
  return 0;  // pending, unknown
}

// ---- JSON writing -------------------------------------------------------------------------------

void KeyString(JsonWriter* w, const char* key, std::string_view s) {
  w->Key(key);
  json::String(w, s);
}
void KeyOptString(JsonWriter* w, const char* key, const std::optional<std::string>& s) {
  w->Key(key);
  json::OptString(w, s);
}
void KeyOptInt(JsonWriter* w, const char* key, const std::optional<int64_t>& v) {
  w->Key(key);
  json::OptInt(w, v);
}

// ---- reading records back -----------------------------------------------------------------------

Status ReadOptBool(const Value& object, const char* name, std::optional<bool>* out) {
  const Value* v = Member(&object, name);
  if (v == nullptr || v->IsNull()) {
    out->reset();
    return Status::OK();
  }
  if (!v->IsBool()) return Malformed(std::string(name) + ": must be a boolean or null");
  *out = v->GetBool();
  return Status::OK();
}

// ---- the decider --------------------------------------------------------------------------------

// Reads the invoice of a delivery whose object_type is "invoice". NotFound when it lacks what
// the projection keys on (lago_id, status).
Status ReadInvoice(const LagoWebhook& webhook, LagoInvoice* out) {
  const Value* invoice = Member(webhook.payload.get(), "invoice");
  LagoInvoice& r = *out;
  std::optional<std::string> lago_id = Id(Member(invoice, "lago_id"));
  std::optional<std::string> status = Text(Member(invoice, "status"));
  if (!lago_id || !status) return Status::NotFound("not an invoice the projection can key");
  r.lago_id = *lago_id;
  r.status = *status;
  r.payment_status = Text(Member(invoice, "payment_status"));
  r.number = Text(Member(invoice, "number"));
  r.invoice_type = Text(Member(invoice, "invoice_type"));
  r.currency = Text(Member(invoice, "currency"));
  r.fees_amount_cents = Integer(Member(invoice, "fees_amount_cents"));
  r.taxes_amount_cents = Integer(Member(invoice, "taxes_amount_cents"));
  r.total_amount_cents = Integer(Member(invoice, "total_amount_cents"));
  r.total_due_amount_cents = Integer(Member(invoice, "total_due_amount_cents"));
  r.total_paid_amount_cents = Integer(Member(invoice, "total_paid_amount_cents"));
  const Value* overdue = Member(invoice, "payment_overdue");
  if (overdue != nullptr && overdue->IsBool()) r.payment_overdue = overdue->GetBool();
  r.issuing_date = Text(Member(invoice, "issuing_date"));
  const Value* customer = Member(invoice, "customer");
  r.external_customer_id = Id(Member(customer, "external_id"));
  if (!r.external_customer_id) r.external_customer_id = Id(Member(invoice, "external_customer_id"));
  r.lago_customer_id = Id(Member(customer, "lago_id"));
  const Value* subscriptions = Member(invoice, "subscriptions");
  if (subscriptions != nullptr && subscriptions->IsArray()) {
    for (const Value& s : subscriptions->GetArray()) {
      if (r.external_subscription_ids.size() >= limits::kLagoInvoiceSubscriptionsMax) break;
      if (std::optional<std::string> id = Id(Member(&s, "external_id"))) {
        r.external_subscription_ids.push_back(std::move(*id));
      }
    }
  }
  r.updated_at = Text(Member(invoice, "updated_at"));
  std::optional<int64_t> order = TimeMs(r.updated_at);
  if (!order) order = TimeMs(Text(Member(invoice, "created_at")));
  r.order_ms = order.value_or(0);
  r.webhook_type = webhook.webhook_type;
  r.unique_key = webhook.unique_key;
  return Status::OK();
}

Status ReadSubscription(const LagoWebhook& webhook, LagoSubscription* out) {
  const Value* sub = Member(webhook.payload.get(), "subscription");
  LagoSubscription& r = *out;
  std::optional<std::string> external_id = Id(Member(sub, "external_id"));
  std::optional<std::string> lago_id = Id(Member(sub, "lago_id"));
  std::optional<std::string> status = Text(Member(sub, "status"));
  if (!external_id || !lago_id || !status) {
    return Status::NotFound("not a subscription the projection can key");
  }
  r.external_id = *external_id;
  r.lago_id = *lago_id;
  r.status = *status;
  r.plan_code = Id(Member(sub, "plan_code"));
  r.name = Text(Member(sub, "name"));
  r.external_customer_id = Id(Member(sub, "external_customer_id"));
  r.lago_customer_id = Id(Member(sub, "lago_customer_id"));
  r.billing_time = Text(Member(sub, "billing_time"));
  r.created_at = Text(Member(sub, "created_at"));
  r.started_at = Text(Member(sub, "started_at"));
  r.trial_ended_at = Text(Member(sub, "trial_ended_at"));
  r.ending_at = Text(Member(sub, "ending_at"));
  r.terminated_at = Text(Member(sub, "terminated_at"));
  r.canceled_at = Text(Member(sub, "canceled_at"));
  r.previous_plan_code = Id(Member(sub, "previous_plan_code"));
  r.next_plan_code = Id(Member(sub, "next_plan_code"));
  r.downgrade_plan_date = Text(Member(sub, "downgrade_plan_date"));
  r.created_ms = TimeMs(r.created_at).value_or(0);
  r.transition_ms = r.created_ms;
  for (const auto* t : {&r.started_at, &r.trial_ended_at, &r.terminated_at, &r.canceled_at}) {
    if (std::optional<int64_t> ms = TimeMs(*t)) r.transition_ms = std::max(r.transition_ms, *ms);
  }
  r.webhook_type = webhook.webhook_type;
  r.unique_key = webhook.unique_key;
  return Status::OK();
}

// What one delivery derives, and whom it concerns.
struct Derivation {
  std::vector<NewEvent> events;
  std::optional<std::string> external_customer_id;
  std::optional<std::string> lago_customer_id;
};

std::string InvoiceUpdatedData(const LagoWebhook& webhook, const LagoInvoice& invoice,
                               const LagoInvoice* previous) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  KeyString(&w, "unique_key", webhook.unique_key);
  KeyString(&w, "webhook_type", webhook.webhook_type);
  KeyOptString(&w, "previous_status",
               previous ? std::optional<std::string>(previous->status) : std::nullopt);
  KeyOptString(&w, "previous_payment_status", previous ? previous->payment_status : std::nullopt);
  w.Key("invoice");
  std::string record = LagoInvoiceToJson(invoice);
  w.RawValue(record.data(), record.size(), rapidjson::kObjectType);
  w.EndObject();
  return json::Text(buf);
}

std::string SubscriptionUpdatedData(const LagoWebhook& webhook,
                                    const LagoSubscription& subscription,
                                    const LagoSubscription* previous) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  KeyString(&w, "unique_key", webhook.unique_key);
  KeyString(&w, "webhook_type", webhook.webhook_type);
  KeyOptString(&w, "previous_status",
               previous ? std::optional<std::string>(previous->status) : std::nullopt);
  w.Key("subscription");
  std::string record = LagoSubscriptionToJson(subscription);
  w.RawValue(record.data(), record.size(), rapidjson::kObjectType);
  w.EndObject();
  return json::Text(buf);
}

Status DeriveInvoice(const LagoWebhook& webhook, const StateReader& state, Derivation* out) {
  LagoInvoice candidate;
  Status s = ReadInvoice(webhook, &candidate);
  if (s.IsNotFound()) return Status::OK();  // stored, nothing derived
  LEDGER_RETURN_IF_ERROR(s);
  out->external_customer_id = candidate.external_customer_id;
  out->lago_customer_id = candidate.lago_customer_id;
  LagoInvoice current;
  s = GetLagoInvoice(state, candidate.lago_id, &current);
  const LagoInvoice* previous = nullptr;
  if (s.ok()) {
    if (!SupersedesLagoInvoice(candidate, current)) return Status::OK();  // stale: no rollback
    previous = &current;
  } else if (!s.IsNotFound()) {
    return s;
  }
  out->events.push_back(NewEvent{std::string(kLagoInvoiceUpdatedV1), "",
                                 InvoiceUpdatedData(webhook, candidate, previous)});
  return Status::OK();
}

Status DeriveSubscription(const LagoWebhook& webhook, const StateReader& state, Derivation* out) {
  LagoSubscription candidate;
  Status s = ReadSubscription(webhook, &candidate);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  out->external_customer_id = candidate.external_customer_id;
  out->lago_customer_id = candidate.lago_customer_id;
  std::string value;
  s = state.Get(kLagoFamily, SubscriptionKey(candidate.external_id, candidate.lago_id), &value);
  LagoSubscription current;
  const LagoSubscription* previous = nullptr;
  if (s.ok()) {
    LEDGER_RETURN_IF_ERROR(ParseLagoSubscription(value, &current));
    if (!SupersedesLagoSubscription(candidate, current)) return Status::OK();
    previous = &current;
  } else if (!s.IsNotFound()) {
    return s;
  }
  out->events.push_back(NewEvent{std::string(kLagoSubscriptionUpdatedV1), "",
                                 SubscriptionUpdatedData(webhook, candidate, previous)});
  return Status::OK();
}

// For object types the projection does not track: whom the delivery concerns, when it says.
void ResolveCustomer(const LagoWebhook& webhook, Derivation* out) {
  const Value* object = Member(webhook.payload.get(), webhook.object_type);
  out->external_customer_id = Id(Member(object, "external_customer_id"));
  const Value* customer = Member(object, "customer");
  if (!out->external_customer_id) out->external_customer_id = Id(Member(customer, "external_id"));
  if (!out->external_customer_id && webhook.object_type == "customer") {
    out->external_customer_id = Id(Member(object, "external_id"));
  }
  out->lago_customer_id = Id(Member(object, "lago_customer_id"));
  if (!out->lago_customer_id) out->lago_customer_id = Id(Member(customer, "lago_id"));
  // A customer.* delivery's object is the customer itself: its own lago_id, as an invoice's
  // customer.lago_id names it (one Lago customer, one subject).
  if (!out->lago_customer_id && webhook.object_type == "customer") {
    out->lago_customer_id = Id(Member(object, "lago_id"));
  }
}

// `prefix` + `id`, or, when that would be longer than a subject may be, `prefix` + the id's
// SHA-256 in hex (ids and unique keys may be 255 bytes each).
std::string PrefixedSubject(std::string_view prefix, std::string_view id) {
  if (prefix.size() + id.size() <= ::ledger::limits::kSubjectBytesMax) {
    return std::string(prefix) + std::string(id);
  }
  return std::string(prefix) + "sha256:" + HexEncode(Sha256(id));
}

std::string SubjectOf(const LagoWebhook& webhook, const Derivation& derived) {
  if (derived.external_customer_id && IsValidUserId(*derived.external_customer_id)) {
    return *derived.external_customer_id;
  }
  if (derived.lago_customer_id && IsValidUserId(*derived.lago_customer_id)) {
    return PrefixedSubject("lago_customer:", *derived.lago_customer_id);
  }
  return PrefixedSubject("lago_webhook:", webhook.unique_key);
}

std::string ReceivedEventData(const LagoWebhook& webhook, const Derivation& derived,
                              const std::optional<std::string>& repeat_of) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  KeyString(&w, "unique_key", webhook.unique_key);
  KeyString(&w, "signature_algorithm", webhook.signature_algorithm);
  KeyString(&w, "webhook_type", webhook.webhook_type);
  KeyString(&w, "object_type", webhook.object_type);
  KeyString(&w, "raw_sha256", webhook.raw_sha256);
  w.Key("raw_bytes");
  w.Uint64(webhook.raw_bytes);
  KeyOptString(&w, "external_customer_id", derived.external_customer_id);
  KeyOptString(&w, "repeat_of_unique_key", repeat_of);
  w.Key("derived");
  w.StartArray();
  for (const NewEvent& e : derived.events) json::String(&w, e.type);
  w.EndArray();
  w.Key("payload");
  w.RawValue(webhook.redacted_payload.data(), webhook.redacted_payload.size(),
             rapidjson::kObjectType);
  w.EndObject();
  return json::Text(buf);
}

std::string ResponseBody(const LagoWebhook& webhook, const std::vector<NewEvent>& derived,
                         bool duplicate, const std::optional<std::string>& repeat_of) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("received");
  w.Bool(true);
  KeyString(&w, "unique_key", webhook.unique_key);
  KeyString(&w, "webhook_type", webhook.webhook_type);
  w.Key("duplicate");
  w.Bool(duplicate);
  KeyOptString(&w, "repeat_of_unique_key", repeat_of);
  w.Key("derived");
  w.StartArray();
  for (const NewEvent& e : derived) json::String(&w, e.type);
  w.EndArray();
  w.EndObject();
  return json::Text(buf);
}

// ---- the fold -----------------------------------------------------------------------------------

Status ParseEventData(const Event& event, rapidjson::Document* doc) {
  Status s = ParseJsonObject(event.data, doc);
  if (!s.ok()) return Malformed(event.type + ": " + s.message());
  return Status::OK();
}

std::string MemberJson(const Value& v) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  v.Accept(w);
  return json::Text(buf);
}

Status ApplyReceived(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  ObjectReader reader(doc);
  std::string raw_sha256, unique_key;
  Status s = reader.String("raw_sha256", true, &raw_sha256);
  if (s.ok()) s = reader.String("unique_key", true, &unique_key);
  if (!s.ok()) return Malformed(event.type + ": " + s.message());
  Hash unused;
  if (!HexDecodeHash(raw_sha256, &unused)) return Malformed(event.type + ": raw_sha256: not hex");
  std::string existing;
  s = state.Get(kLagoFamily, DeliveryKey(raw_sha256), &existing);
  if (s.ok()) {  // a repeat: the first key that delivered this body stays, the repeats count
    uint64_t repeats = 0;
    LEDGER_RETURN_IF_ERROR(GetDeliveryRepeats(state, raw_sha256, &repeats));
    return rows->Put(kLagoFamily, DeliveryRepeatsKey(raw_sha256), std::to_string(repeats + 1));
  }
  if (!s.IsNotFound()) return s;
  return rows->Put(kLagoFamily, DeliveryKey(raw_sha256), unique_key);
}

Status ApplyInvoiceUpdated(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  const Value* record = Member(&doc, "invoice");
  if (record == nullptr || !record->IsObject())
    return Malformed(event.type + ": invoice: required");
  LagoInvoice candidate;
  LEDGER_RETURN_IF_ERROR(ParseLagoInvoice(MemberJson(*record), &candidate));
  LagoInvoice current;
  Status s = GetLagoInvoice(state, candidate.lago_id, &current);
  if (s.ok()) {
    if (!SupersedesLagoInvoice(candidate, current)) return Status::OK();
    if (current.external_customer_id &&
        current.external_customer_id != candidate.external_customer_id) {
      LEDGER_RETURN_IF_ERROR(rows->Delete(
          kLagoFamily,
          CustomerInvoicePrefix(*current.external_customer_id) + EscapeKeyPart(current.lago_id)));
    }
  } else if (!s.IsNotFound()) {
    return s;
  }
  LEDGER_RETURN_IF_ERROR(
      rows->Put(kLagoFamily, InvoiceKey(candidate.lago_id), LagoInvoiceToJson(candidate)));
  if (candidate.external_customer_id) {
    LEDGER_RETURN_IF_ERROR(rows->Put(
        kLagoFamily,
        CustomerInvoicePrefix(*candidate.external_customer_id) + EscapeKeyPart(candidate.lago_id),
        ""));
  }
  return Status::OK();
}

Status ApplySubscriptionUpdated(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  const Value* record = Member(&doc, "subscription");
  if (record == nullptr || !record->IsObject()) {
    return Malformed(event.type + ": subscription: required");
  }
  LagoSubscription candidate;
  LEDGER_RETURN_IF_ERROR(ParseLagoSubscription(MemberJson(*record), &candidate));
  const std::string key = SubscriptionKey(candidate.external_id, candidate.lago_id);
  std::string value;
  Status s = state.Get(kLagoFamily, key, &value);
  if (s.ok()) {
    LagoSubscription current;
    LEDGER_RETURN_IF_ERROR(ParseLagoSubscription(value, &current));
    if (!SupersedesLagoSubscription(candidate, current)) return Status::OK();
  } else if (!s.IsNotFound()) {
    return s;
  }
  LEDGER_RETURN_IF_ERROR(rows->Put(kLagoFamily, key, LagoSubscriptionToJson(candidate)));
  if (candidate.external_customer_id) {
    LEDGER_RETURN_IF_ERROR(rows->Put(
        kLagoFamily,
        CustomerSubscriptionKey(*candidate.external_customer_id, candidate.external_id), ""));
  }
  return Status::OK();
}

// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

bool Digits(std::string_view s, size_t at, size_t n, int* out) {
  if (at + n > s.size()) return false;
  int v = 0;
  for (size_t i = at; i < at + n; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

}  // namespace

// ---- public helpers -----------------------------------------------------------------------------

bool IsLagoSecretMemberName(std::string_view name) {
  // file_url, xml_url: an invoice's or credit note's PDF or e-invoice behind a signed link;
  // portal_url: the customer portal's login link; checkout_url, payment_url: payment pages;
  // next_action: a payment's Stripe next_action (payment.requires_action), whose 3-D Secure
  // redirect and SDK links carry the PaymentIntent's client secret; url: any other link of that
  // kind (as for Stripe's own deliveries).
  static constexpr std::array<std::string_view, 18> kNames = {
      "api_key",     "hmac_key",     "secret",        "client_secret", "password",
      "token",       "access_token", "refresh_token", "secret_key",    "webhook_secret",
      "private_key", "checkout_url", "payment_url",   "file_url",      "portal_url",
      "xml_url",     "next_action",  "url"};
  return std::find(kNames.begin(), kNames.end(), name) != kNames.end();
}

bool IsLagoUniqueKey(std::string_view key) {
  if (key.empty() || key.size() > limits::kLagoUniqueKeyBytesMax) return false;
  return std::all_of(key.begin(), key.end(), [](char c) { return c > ' ' && c < 0x7f; });
}

std::optional<int64_t> ParseLagoTimeMs(std::string_view s) {
  int year, month, day, hour, minute, second;
  if (!Digits(s, 0, 4, &year) || s.size() < 19 || s[4] != '-' || !Digits(s, 5, 2, &month) ||
      s[7] != '-' || !Digits(s, 8, 2, &day) || (s[10] != 'T' && s[10] != 't') ||
      !Digits(s, 11, 2, &hour) || s[13] != ':' || !Digits(s, 14, 2, &minute) || s[16] != ':' ||
      !Digits(s, 17, 2, &second)) {
    return std::nullopt;
  }
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) {
    return std::nullopt;
  }
  size_t at = 19;
  int64_t millis = 0;
  if (at < s.size() && s[at] == '.') {
    size_t digits = 0;
    ++at;
    while (at < s.size() && s[at] >= '0' && s[at] <= '9') {
      if (digits < 3) millis = millis * 10 + (s[at] - '0');
      ++digits;
      ++at;
    }
    if (digits == 0) return std::nullopt;
    for (size_t i = digits; i < 3; ++i) millis *= 10;
  }
  int64_t offset_minutes = 0;
  if (at < s.size() && (s[at] == 'Z' || s[at] == 'z')) {
    ++at;
  } else if (at < s.size() && (s[at] == '+' || s[at] == '-')) {
    int oh, om;
    if (!Digits(s, at + 1, 2, &oh) || at + 3 >= s.size() || s[at + 3] != ':' ||
        !Digits(s, at + 4, 2, &om) || oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset_minutes = (s[at] == '+' ? 1 : -1) * (oh * 60 + om);
    at += 6;
  } else {
    return std::nullopt;
  }
  if (at != s.size()) return std::nullopt;
  int64_t days = DaysFromCivil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
  int64_t seconds =
      days * 86400 + hour * 3600 + minute * 60 + std::min(second, 59) - offset_minutes * 60;
  return seconds * 1000 + millis;
}

Status ParseLagoWebhook(std::string_view raw_body, std::string_view unique_key,
                        std::string_view signature_algorithm, LagoWebhook* out) {
  *out = LagoWebhook();
  const size_t raw_bytes_max = signature_algorithm == "hmac" ? limits::kLagoWebhookPayloadBytesMax
                                                             : limits::kLagoWebhookBytesMax;
  if (raw_body.size() > raw_bytes_max) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large",
                        "a Lago webhook is at most " + std::to_string(raw_bytes_max) +
                            " bytes in " + std::string(signature_algorithm) + " mode");
  }
  if (!IsLagoUniqueKey(unique_key)) {
    return Status::InvalidArgument("invalid_unique_key",
                                   "X-Lago-Unique-Key must be 1..255 visible ASCII characters");
  }
  LEDGER_RETURN_IF_ERROR(
      RedactJsonSecrets(raw_body, IsLagoSecretMemberName, &out->redacted_payload));
  // "[redacted]" may be longer than the value it replaces.
  if (out->redacted_payload.size() > limits::kLagoWebhookPayloadBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large",
                        "a Lago webhook's payload, its secrets redacted, is at most " +
                            std::to_string(limits::kLagoWebhookPayloadBytesMax) + " bytes");
  }
  auto doc = std::make_shared<rapidjson::Document>();
  Status s = ParseJsonObject(out->redacted_payload, doc.get());
  if (!s.ok()) return Malformed(s.message());
  std::optional<std::string> webhook_type =
      Text(Member(doc.get(), "webhook_type"), limits::kLagoTypeBytesMax);
  if (!webhook_type || !IsLagoTypeName(*webhook_type)) {
    return Malformed("webhook_type: a Lago webhook type is required");
  }
  std::optional<std::string> object_type =
      Text(Member(doc.get(), "object_type"), limits::kLagoTypeBytesMax);
  if (!object_type || !IsLagoTypeName(*object_type)) {
    return Malformed("object_type: a Lago object type is required");
  }
  out->unique_key = std::string(unique_key);
  out->signature_algorithm = std::string(signature_algorithm);
  out->webhook_type = std::move(*webhook_type);
  out->object_type = std::move(*object_type);
  out->raw_sha256 = HexEncode(Sha256(raw_body));
  out->raw_bytes = raw_body.size();
  out->payload = std::move(doc);
  return Status::OK();
}

IngestLagoWebhook::IngestLagoWebhook(LagoWebhook webhook) : webhook_(std::move(webhook)) {
  idempotency_scope = std::string(kLagoWebhookIdempotencyScope);
  idempotency_key = webhook_.unique_key;
  // The unique key alone: a redelivery is a duplicate whatever its body.
  request_hash = Sha256(kLagoWebhookIdempotencyScope, webhook_.unique_key);
}

Status IngestLagoWebhook::Decide(const DecideContext& context, Decision* decision) {
  decision->events.clear();
  decision->http_status = 200;
  // A body delivered before under ANOTHER unique key is recorded all the same: Lago sends some
  // payloads with no timestamp or per-delivery id (invoice.payment_failure's
  // payment_provider_invoice_payment_error, customer.payment_provider_error, events.errors), so
  // a dunning retry declined the same way two days later is a new webhook with a byte-identical
  // body, and answering it "duplicate" acknowledged it to Lago and lost it. The event names the
  // key that first delivered the body (a replay of a captured body shows as such); the derived
  // state changes stay governed by their ordering keys, so a repeated body changes no state.
  std::optional<std::string> repeat_of;
  std::string first_key;
  Status s = context.state->Get(kLagoFamily, DeliveryKey(webhook_.raw_sha256), &first_key);
  if (s.ok()) {
    if (first_key == webhook_.unique_key) {
      // The same delivery (its idempotency record answers it before this; kept for safety).
      decision->body = ResponseBody(webhook_, {}, /*duplicate=*/true, std::nullopt);
      return Status::OK();
    }
    // A bound on what a captured body replayed under fresh keys (neither is signed) can append;
    // far above the repeats a dunning campaign sends for one invoice.
    uint64_t repeats = 0;
    LEDGER_RETURN_IF_ERROR(GetDeliveryRepeats(*context.state, webhook_.raw_sha256, &repeats));
    if (repeats >= limits::kLagoBodyRepeatsMax) {
      return Status::Conflict("repeat_limit_reached",
                              "this body was already recorded " + std::to_string(repeats + 1) +
                                  " times under other X-Lago-Unique-Keys; further repeats are "
                                  "refused");
    }
    repeat_of = std::move(first_key);
  } else if (!s.IsNotFound()) {
    return s;
  }
  Derivation derived;
  if (webhook_.object_type == "invoice") {
    LEDGER_RETURN_IF_ERROR(DeriveInvoice(webhook_, *context.state, &derived));
  } else if (webhook_.object_type == "subscription") {
    LEDGER_RETURN_IF_ERROR(DeriveSubscription(webhook_, *context.state, &derived));
  } else {
    ResolveCustomer(webhook_, &derived);
  }
  const std::string subject = SubjectOf(webhook_, derived);
  decision->body = ResponseBody(webhook_, derived.events, /*duplicate=*/false, repeat_of);
  decision->events.push_back(NewEvent{std::string(kLagoWebhookReceivedV1), subject,
                                      ReceivedEventData(webhook_, derived, repeat_of)});
  for (NewEvent& e : derived.events) {
    e.subject = subject;
    decision->events.push_back(std::move(e));
  }
  return Status::OK();
}

std::string DuplicateLagoWebhookBody(std::string_view stored_body) {
  return DuplicateDeliveryBody(stored_body);
}

// ---- records ------------------------------------------------------------------------------------

std::string LagoInvoiceToJson(const LagoInvoice& r) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  KeyString(&w, "lago_id", r.lago_id);
  KeyString(&w, "status", r.status);
  KeyOptString(&w, "payment_status", r.payment_status);
  KeyOptString(&w, "number", r.number);
  KeyOptString(&w, "invoice_type", r.invoice_type);
  KeyOptString(&w, "currency", r.currency);
  KeyOptInt(&w, "fees_amount_cents", r.fees_amount_cents);
  KeyOptInt(&w, "taxes_amount_cents", r.taxes_amount_cents);
  KeyOptInt(&w, "total_amount_cents", r.total_amount_cents);
  KeyOptInt(&w, "total_due_amount_cents", r.total_due_amount_cents);
  KeyOptInt(&w, "total_paid_amount_cents", r.total_paid_amount_cents);
  w.Key("payment_overdue");
  if (r.payment_overdue) {
    w.Bool(*r.payment_overdue);
  } else {
    w.Null();
  }
  KeyOptString(&w, "issuing_date", r.issuing_date);
  KeyOptString(&w, "external_customer_id", r.external_customer_id);
  KeyOptString(&w, "lago_customer_id", r.lago_customer_id);
  w.Key("external_subscription_ids");
  w.StartArray();
  for (const std::string& id : r.external_subscription_ids) json::String(&w, id);
  w.EndArray();
  KeyOptString(&w, "updated_at", r.updated_at);
  w.Key("order_ms");
  w.Int64(r.order_ms);
  KeyString(&w, "webhook_type", r.webhook_type);
  KeyString(&w, "unique_key", r.unique_key);
  w.EndObject();
  return json::Text(buf);
}

Status ParseLagoInvoice(std::string_view json, LagoInvoice* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  LagoInvoice r;
  ObjectReader reader(doc);
  Status s = reader.String("lago_id", true, &r.lago_id);
  if (s.ok()) s = reader.String("status", true, &r.status);
  if (s.ok()) s = reader.NullableString("payment_status", false, &r.payment_status);
  if (s.ok()) s = reader.NullableString("number", false, &r.number);
  if (s.ok()) s = reader.NullableString("invoice_type", false, &r.invoice_type);
  if (s.ok()) s = reader.NullableString("currency", false, &r.currency);
  if (s.ok()) s = reader.NullableInt("fees_amount_cents", false, &r.fees_amount_cents);
  if (s.ok()) s = reader.NullableInt("taxes_amount_cents", false, &r.taxes_amount_cents);
  if (s.ok()) s = reader.NullableInt("total_amount_cents", false, &r.total_amount_cents);
  if (s.ok()) s = reader.NullableInt("total_due_amount_cents", false, &r.total_due_amount_cents);
  if (s.ok()) {
    s = reader.NullableInt("total_paid_amount_cents", false, &r.total_paid_amount_cents);
  }
  if (s.ok()) s = ReadOptBool(doc, "payment_overdue", &r.payment_overdue);
  if (s.ok()) s = reader.NullableString("issuing_date", false, &r.issuing_date);
  if (s.ok()) s = reader.NullableString("external_customer_id", false, &r.external_customer_id);
  if (s.ok()) s = reader.NullableString("lago_customer_id", false, &r.lago_customer_id);
  if (s.ok()) {
    s = reader.StringArray("external_subscription_ids", false, &r.external_subscription_ids);
  }
  if (s.ok()) s = reader.NullableString("updated_at", false, &r.updated_at);
  if (s.ok()) s = reader.Int("order_ms", true, &r.order_ms);
  if (s.ok()) s = reader.String("webhook_type", true, &r.webhook_type);
  if (s.ok()) s = reader.String("unique_key", true, &r.unique_key);
  if (!s.ok()) return Malformed("lago invoice: " + s.message());
  if (r.lago_id.empty()) return Malformed("lago invoice: lago_id is empty");
  *out = std::move(r);
  return Status::OK();
}

std::string LagoSubscriptionToJson(const LagoSubscription& r) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  KeyString(&w, "external_id", r.external_id);
  KeyString(&w, "lago_id", r.lago_id);
  KeyString(&w, "status", r.status);
  KeyOptString(&w, "plan_code", r.plan_code);
  KeyOptString(&w, "name", r.name);
  KeyOptString(&w, "external_customer_id", r.external_customer_id);
  KeyOptString(&w, "lago_customer_id", r.lago_customer_id);
  KeyOptString(&w, "billing_time", r.billing_time);
  KeyOptString(&w, "created_at", r.created_at);
  KeyOptString(&w, "started_at", r.started_at);
  KeyOptString(&w, "trial_ended_at", r.trial_ended_at);
  KeyOptString(&w, "ending_at", r.ending_at);
  KeyOptString(&w, "terminated_at", r.terminated_at);
  KeyOptString(&w, "canceled_at", r.canceled_at);
  KeyOptString(&w, "previous_plan_code", r.previous_plan_code);
  KeyOptString(&w, "next_plan_code", r.next_plan_code);
  KeyOptString(&w, "downgrade_plan_date", r.downgrade_plan_date);
  w.Key("created_ms");
  w.Int64(r.created_ms);
  w.Key("transition_ms");
  w.Int64(r.transition_ms);
  KeyString(&w, "webhook_type", r.webhook_type);
  KeyString(&w, "unique_key", r.unique_key);
  w.EndObject();
  return json::Text(buf);
}

Status ParseLagoSubscription(std::string_view json, LagoSubscription* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  LagoSubscription r;
  ObjectReader reader(doc);
  Status s = reader.String("external_id", true, &r.external_id);
  if (s.ok()) s = reader.String("lago_id", true, &r.lago_id);
  if (s.ok()) s = reader.String("status", true, &r.status);
  for (auto [name, field] :
       {std::pair{"plan_code", &r.plan_code}, std::pair{"name", &r.name},
        std::pair{"external_customer_id", &r.external_customer_id},
        std::pair{"lago_customer_id", &r.lago_customer_id},
        std::pair{"billing_time", &r.billing_time}, std::pair{"created_at", &r.created_at},
        std::pair{"started_at", &r.started_at}, std::pair{"trial_ended_at", &r.trial_ended_at},
        std::pair{"ending_at", &r.ending_at}, std::pair{"terminated_at", &r.terminated_at},
        std::pair{"canceled_at", &r.canceled_at},
        std::pair{"previous_plan_code", &r.previous_plan_code},
        std::pair{"next_plan_code", &r.next_plan_code},
        std::pair{"downgrade_plan_date", &r.downgrade_plan_date}}) {
    if (s.ok()) s = reader.NullableString(name, false, field);
  }
  if (s.ok()) s = reader.Int("created_ms", true, &r.created_ms);
  if (s.ok()) s = reader.Int("transition_ms", true, &r.transition_ms);
  if (s.ok()) s = reader.String("webhook_type", true, &r.webhook_type);
  if (s.ok()) s = reader.String("unique_key", true, &r.unique_key);
  if (!s.ok()) return Malformed("lago subscription: " + s.message());
  if (r.external_id.empty() || r.lago_id.empty()) {
    return Malformed("lago subscription: external_id and lago_id are required");
  }
  *out = std::move(r);
  return Status::OK();
}

bool SupersedesLagoInvoice(const LagoInvoice& candidate, const LagoInvoice& current) {
  return std::make_tuple(candidate.order_ms, InvoiceStatusRank(candidate.status),
                         PaymentStatusRank(candidate.payment_status)) >
         std::make_tuple(current.order_ms, InvoiceStatusRank(current.status),
                         PaymentStatusRank(current.payment_status));
}

bool SupersedesLagoSubscription(const LagoSubscription& candidate,
                                const LagoSubscription& current) {
  return std::make_tuple(SubscriptionStatusRank(candidate.status), candidate.transition_ms) >
         std::make_tuple(SubscriptionStatusRank(current.status), current.transition_ms);
}

// ---- fold and queries ---------------------------------------------------------------------------

Status LagoFold::Apply(const Event& event, const StateReader& state, RowWriter* rows) const {
  if (event.type == kLagoWebhookReceivedV1) return ApplyReceived(event, state, rows);
  if (event.type == kLagoInvoiceUpdatedV1) return ApplyInvoiceUpdated(event, state, rows);
  if (event.type == kLagoSubscriptionUpdatedV1) return ApplySubscriptionUpdated(event, state, rows);
  return Status::OK();
}

Status GetLagoInvoice(const StateReader& state, std::string_view lago_id, LagoInvoice* out) {
  std::string value;
  LEDGER_RETURN_IF_ERROR(state.Get(kLagoFamily, InvoiceKey(lago_id), &value));
  return ParseLagoInvoice(value, out);
}

Status ListLagoSubscriptions(const StateReader& state, std::string_view external_id,
                             std::vector<LagoSubscription>* out) {
  out->clear();
  Status parse;
  LEDGER_RETURN_IF_ERROR(state.Scan(
      kLagoFamily, SubscriptionPrefix(external_id), [&](std::string_view, std::string_view value) {
        LagoSubscription s;
        parse = ParseLagoSubscription(value, &s);
        if (!parse.ok()) return false;
        out->push_back(std::move(s));
        return out->size() < limits::kLagoSubscriptionsPerExternalIdMax;
      }));
  return parse;
}

Status GetLagoSubscription(const StateReader& state, std::string_view external_id,
                           LagoSubscription* out) {
  std::vector<LagoSubscription> all;
  LEDGER_RETURN_IF_ERROR(ListLagoSubscriptions(state, external_id, &all));
  if (all.empty()) return Status::NotFound("no Lago subscription with this external_id");
  // Preference: active (1) over pending (0) over ended (-1); then the newest.
  auto preference = [](const LagoSubscription& s) {
    int rank = SubscriptionStatusRank(s.status);
    int group = rank == 1 ? 1 : rank == 0 ? 0 : -1;
    return std::make_tuple(group, group == 0 ? s.created_ms : s.transition_ms, s.created_ms,
                           std::string_view(s.lago_id));
  };
  *out = *std::max_element(all.begin(), all.end(),
                           [&](const LagoSubscription& a, const LagoSubscription& b) {
                             return preference(a) < preference(b);
                           });
  return Status::OK();
}

Status ListLagoCustomerInvoices(const StateReader& state, std::string_view external_customer_id,
                                size_t limit, std::vector<LagoInvoice>* out) {
  out->clear();
  if (limit == 0) return Status::OK();
  const std::string prefix = CustomerInvoicePrefix(external_customer_id);
  std::vector<std::string> keys;
  LEDGER_RETURN_IF_ERROR(
      state.Scan(kLagoFamily, prefix, [&](std::string_view key, std::string_view) {
        keys.emplace_back(key.substr(prefix.size()));
        return keys.size() < limit;
      }));
  for (const std::string& escaped_id : keys) {
    std::string value;
    Status s = state.Get(kLagoFamily, "inv/" + escaped_id, &value);
    if (s.IsNotFound()) continue;
    LEDGER_RETURN_IF_ERROR(s);
    LagoInvoice invoice;
    LEDGER_RETURN_IF_ERROR(ParseLagoInvoice(value, &invoice));
    out->push_back(std::move(invoice));
  }
  return Status::OK();
}

}  // namespace ledger::projections
