#include "projections/subscriptions.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <set>
#include <tuple>
#include <utility>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"

namespace ledger::projections {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr std::array<std::string_view, 8> kStatusNames = {
    "incomplete", "incomplete_expired", "trialing", "active",
    "past_due",   "canceled",           "unpaid",   "paused"};

// Tie-break rank of a status within one second (see the ordering key in the header). Arbitrary
// but fixed, so that equal-second events converge whatever their delivery order.
int StatusRank(SubscriptionStatus status) {
  switch (status) {
    case SubscriptionStatus::kIncomplete: return 0;
    case SubscriptionStatus::kTrialing: return 1;
    case SubscriptionStatus::kActive: return 2;
    case SubscriptionStatus::kPastDue: return 3;
    case SubscriptionStatus::kUnpaid: return 4;
    case SubscriptionStatus::kPaused: return 5;
    case SubscriptionStatus::kIncompleteExpired: return 6;
    case SubscriptionStatus::kCanceled: return 7;
  }
  return 0;
}

int EventKindRank(std::string_view event_type) {
  if (event_type == "customer.subscription.created") return 0;
  if (event_type == "customer.subscription.deleted") return 2;
  return 1;
}

Status Corrupt(std::string_view what, const Status& s) {
  return Status::Corruption(std::string(what) + ": " + s.message());
}

// ---- keys ---------------------------------------------------------------------------------------

std::string Key(std::string_view prefix, std::string_view a) {
  std::string key(prefix);
  key.append(a);
  return key;
}
std::string Key(std::string_view prefix, std::string_view a, std::string_view b) {
  std::string key = Key(prefix, a);
  key.push_back('/');
  key.append(b);
  return key;
}

constexpr std::string_view kSubPrefix = "sub/";
constexpr std::string_view kCustomerPrefix = "cus/";
constexpr std::string_view kUserPrefix = "user/";
constexpr std::string_view kInvoicePrefix = "inv/";
constexpr std::string_view kUserCustomerPrefix = "user_cus/";
constexpr std::string_view kUserSubPrefix = "user_sub/";
constexpr std::string_view kCustomerSubPrefix = "cus_sub/";
constexpr std::string_view kSubInvoicePrefix = "sub_inv/";
constexpr std::string_view kStatusPrefix = "status/";
constexpr std::string_view kEmailPrefix = "email/";
constexpr std::string_view kSessionPrefix = "session/";
constexpr std::string_view kUserSessionPrefix = "user_session/";
constexpr std::string_view kOverridePrefix = "override/";
constexpr std::string_view kOverrideAtPrefix = "override_at/";
constexpr std::string_view kCustomerDeletedPrefix = "cus_deleted/";
constexpr std::string_view kCheckoutSessionCreatedV1 = "stripe.checkout_session_created.v1";

std::string LowercaseAscii(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// Calls `fn` with the last key component of every row under `prefix` + "/" whose remainder has
// no further '/', at most `limit` of them.
Status ScanChildren(const StateReader& state, std::string_view prefix, size_t limit,
                    std::vector<std::string>* out) {
  out->clear();
  std::string full(prefix);
  full.push_back('/');
  return state.Scan(kSubscriptionsFamily, full, [&](std::string_view key, std::string_view) {
    std::string_view rest = key.substr(full.size());
    if (!rest.empty() && rest.find('/') == std::string_view::npos) out->emplace_back(rest);
    return out->size() < limit;
  });
}

// ---- JSON writing -------------------------------------------------------------------------------

// A PreviousAttributes as an object of the fields it names only (a time may be null).
void WriteNamedTime(JsonWriter* w, std::string_view name,
                    const std::optional<std::optional<int64_t>>& v) {
  if (!v) return;
  w->Key(name.data(), static_cast<rapidjson::SizeType>(name.size()));
  json::OptInt(w, *v);
}

void WritePreviousAttributes(JsonWriter* w, const PreviousAttributes& p) {
  w->StartObject();
  if (p.price_id) {
    w->Key("price_id");
    json::String(w, *p.price_id);
  }
  if (p.status) {
    w->Key("status");
    json::String(w, SubscriptionStatusName(*p.status));
  }
  if (p.cancel_at_period_end) {
    w->Key("cancel_at_period_end");
    w->Bool(*p.cancel_at_period_end);
  }
  WriteNamedTime(w, "cancel_at", p.cancel_at);
  WriteNamedTime(w, "current_period_start", p.current_period_start);
  WriteNamedTime(w, "current_period_end", p.current_period_end);
  WriteNamedTime(w, "trial_end", p.trial_end);
  w->EndObject();
}

Status ReadNamedTime(ObjectReader* r, std::string_view name,
                     std::optional<std::optional<int64_t>>* out) {
  std::optional<int64_t> v;
  bool given = false;
  LEDGER_RETURN_IF_ERROR(r->NullableInt(name, false, &v, &given));
  if (given) out->emplace(v);
  return Status::OK();
}

Status ParsePreviousAttributes(const rapidjson::Value& value, PreviousAttributes* out) {
  if (!value.IsObject()) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "previous_attributes: must be an object");
  }
  ObjectReader r(value);
  PreviousAttributes p;
  std::string text;
  bool given = false;
  LEDGER_RETURN_IF_ERROR(r.String("price_id", false, &text, &given));
  if (given) p.price_id = text;
  LEDGER_RETURN_IF_ERROR(r.String("status", false, &text, &given));
  if (given) {
    SubscriptionStatus status;
    if (!ParseSubscriptionStatus(text, &status)) {
      return Status::Make(Code::kUnprocessable, "validation_failed",
                          "previous_attributes.status: unknown value");
    }
    p.status = status;
  }
  bool flag = false;
  LEDGER_RETURN_IF_ERROR(r.Bool("cancel_at_period_end", false, &flag, &given));
  if (given) p.cancel_at_period_end = flag;
  LEDGER_RETURN_IF_ERROR(ReadNamedTime(&r, "cancel_at", &p.cancel_at));
  LEDGER_RETURN_IF_ERROR(ReadNamedTime(&r, "current_period_start", &p.current_period_start));
  LEDGER_RETURN_IF_ERROR(ReadNamedTime(&r, "current_period_end", &p.current_period_end));
  LEDGER_RETURN_IF_ERROR(ReadNamedTime(&r, "trial_end", &p.trial_end));
  *out = std::move(p);
  return Status::OK();
}

void WriteOptionalEmail(JsonWriter* w, std::string_view email) {
  if (email.empty()) {
    w->Null();
  } else {
    json::String(w, email);
  }
}

// ---- link rows ------------------------------------------------------------------------------------

// cus/<id> and user/<id> rows share the email part.
struct EmailPart {
  std::string email;  // empty = none known
  int64_t email_created = 0;
  // (created, email) ordering: a later (or, within a second, greater) email wins.
  bool Superseded(std::string_view email_candidate, int64_t created) const {
    // Both sides string_view: clang 14 finds no <=> for a string_view and a string in tuples.
    using Key = std::pair<int64_t, std::string_view>;
    return Key(created, email_candidate) > Key(email_created, email);
  }
};

struct CustomerRow {
  std::string customer_id;
  std::string user_id;
  EmailPart email;
  // When it was linked to user_id: the least `created` (Stripe's event time) of its links to
  // that user, so the same whatever order they arrived in. Orders a user's customers (the most
  // recently linked is UserSubscription::customer_id without a subscription).
  int64_t linked_created = 0;
};

struct UserRow {
  std::string user_id;
  EmailPart email;
};

std::string CustomerRowJson(const CustomerRow& row) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("customer_id");
  json::String(&w, row.customer_id);
  w.Key("user_id");
  json::String(&w, row.user_id);
  w.Key("email");
  WriteOptionalEmail(&w, row.email.email);
  w.Key("email_created");
  w.Int64(row.email.email_created);
  w.Key("linked_created");
  w.Int64(row.linked_created);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::string UserRowJson(const UserRow& row) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::String(&w, row.user_id);
  w.Key("email");
  WriteOptionalEmail(&w, row.email.email);
  w.Key("email_created");
  w.Int64(row.email.email_created);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status ParseEmailPart(ObjectReader* reader, EmailPart* out) {
  std::optional<std::string> email;
  LEDGER_RETURN_IF_ERROR(reader->NullableString("email", true, &email));
  out->email = email.value_or("");
  return reader->Int("email_created", true, &out->email_created);
}

Status ReadCustomerRow(const StateReader& state, std::string_view customer_id, CustomerRow* out) {
  std::string value;
  LEDGER_RETURN_IF_ERROR(state.Get(kSubscriptionsFamily, Key(kCustomerPrefix, customer_id), &value));
  rapidjson::Document doc;
  Status s = ParseJsonObject(value, &doc);
  ObjectReader reader(doc);
  if (s.ok()) s = reader.String("customer_id", true, &out->customer_id);
  if (s.ok()) s = reader.String("user_id", true, &out->user_id);
  if (s.ok()) s = ParseEmailPart(&reader, &out->email);
  if (s.ok()) s = reader.Int("linked_created", true, &out->linked_created);
  if (!s.ok()) return Corrupt("subscriptions row cus/" + Truncated(customer_id), s);
  return Status::OK();
}

Status ReadUserRow(const StateReader& state, std::string_view user_id, UserRow* out) {
  std::string value;
  LEDGER_RETURN_IF_ERROR(state.Get(kSubscriptionsFamily, Key(kUserPrefix, user_id), &value));
  rapidjson::Document doc;
  Status s = ParseJsonObject(value, &doc);
  ObjectReader reader(doc);
  if (s.ok()) s = reader.String("user_id", true, &out->user_id);
  if (s.ok()) s = ParseEmailPart(&reader, &out->email);
  if (!s.ok()) return Corrupt("subscriptions row user/" + Truncated(user_id), s);
  return Status::OK();
}

// ---- applying events ------------------------------------------------------------------------------

Status ParseEventData(const Event& event, rapidjson::Document* doc) {
  Status s = ParseJsonObject(event.data, doc);
  if (!s.ok()) return Status::InvalidArgument("malformed_event", event.type + ": " + s.message());
  return Status::OK();
}

Status Malformed(const Event& event, const Status& s) {
  return Status::InvalidArgument("malformed_event", event.type + ": " + s.message());
}

Status ApplyUserEmail(const StateReader& state, RowWriter* rows, std::string_view user_id,
                      std::string_view email, int64_t created) {
  UserRow row;
  Status s = ReadUserRow(state, user_id, &row);
  if (s.IsNotFound()) {
    row = UserRow{std::string(user_id), {}};
  } else {
    LEDGER_RETURN_IF_ERROR(s);
  }
  bool changed = s.IsNotFound();
  if (!email.empty() && row.email.Superseded(email, created)) {
    if (!row.email.email.empty() && LowercaseAscii(row.email.email) != LowercaseAscii(email)) {
      LEDGER_RETURN_IF_ERROR(rows->Delete(
          kSubscriptionsFamily, Key(kEmailPrefix, LowercaseAscii(row.email.email), user_id)));
    }
    row.email = EmailPart{std::string(email), created};
    LEDGER_RETURN_IF_ERROR(
        rows->Put(kSubscriptionsFamily, Key(kEmailPrefix, LowercaseAscii(email), user_id), ""));
    changed = true;
  }
  if (!changed) return Status::OK();
  return rows->Put(kSubscriptionsFamily, Key(kUserPrefix, user_id), UserRowJson(row));
}

// Every user the fold holds anything for has a user/ row: it is what the admin list and the
// analytics walk (ScanUsers). An account comped by user id, or one a subscription names through
// its metadata while its customer is another user's, has no customer.linked.v1 to write it.
Status EnsureUserRow(const StateReader& state, RowWriter* rows, std::string_view user_id) {
  return ApplyUserEmail(state, rows, user_id, "", 0);
}

// customer.linked.v1 {"customer_id","user_id","email","source","stripe_event_id","created"}
Status ApplyCustomerLinked(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  ObjectReader reader(doc);
  std::string customer_id, user_id;
  std::optional<std::string> email;
  int64_t created = 0;
  Status s = reader.String("customer_id", true, &customer_id);
  if (s.ok()) s = reader.String("user_id", true, &user_id);
  if (s.ok()) s = reader.NullableString("email", true, &email);
  if (s.ok()) s = reader.Int("created", true, &created);
  if (!s.ok()) return Malformed(event, s);

  CustomerRow row;
  s = ReadCustomerRow(state, customer_id, &row);
  if (s.IsNotFound()) {
    row = CustomerRow{customer_id, user_id, {}, created};
  } else {
    LEDGER_RETURN_IF_ERROR(s);
    // The first link of a customer stands; another user's claim is kept only in the log.
    if (row.user_id != user_id) return Status::OK();
    row.linked_created = std::min(row.linked_created, created);
  }
  const std::string new_email = email.value_or("");
  if (!new_email.empty() && row.email.Superseded(new_email, created)) {
    row.email = EmailPart{new_email, created};
  }
  LEDGER_RETURN_IF_ERROR(
      rows->Put(kSubscriptionsFamily, Key(kCustomerPrefix, customer_id), CustomerRowJson(row)));
  LEDGER_RETURN_IF_ERROR(
      rows->Put(kSubscriptionsFamily, Key(kUserCustomerPrefix, user_id, customer_id), ""));
  return ApplyUserEmail(state, rows, user_id, new_email, created);
}

// subscription.checkout_completed.v1: the session's user and customer name its subscription.
Status ApplyCheckoutCompleted(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  ObjectReader reader(doc);
  std::optional<std::string> user_id, customer_id, subscription_id;
  std::string session_id;
  Status s = reader.NullableString("user_id", true, &user_id);
  if (s.ok()) s = reader.NullableString("customer_id", true, &customer_id);
  if (s.ok()) s = reader.NullableString("subscription_id", true, &subscription_id);
  if (s.ok()) s = reader.String("session_id", true, &session_id);
  if (!s.ok()) return Malformed(event, s);
  // The session is paid: no longer one to expire before another checkout (ListOpenCheckouts).
  std::string opened_by;
  if (!session_id.empty() && session_id.find('/') == std::string::npos &&
      state.Get(kSubscriptionsFamily, Key(kSessionPrefix, session_id), &opened_by).ok()) {
    LEDGER_RETURN_IF_ERROR(
        rows->Delete(kSubscriptionsFamily, Key(kUserSessionPrefix, opened_by, session_id)));
  }
  if (!subscription_id) return Status::OK();
  if (user_id) {
    LEDGER_RETURN_IF_ERROR(
        rows->Put(kSubscriptionsFamily, Key(kUserSubPrefix, *user_id, *subscription_id), ""));
    LEDGER_RETURN_IF_ERROR(EnsureUserRow(state, rows, *user_id));
  }
  if (customer_id) {
    LEDGER_RETURN_IF_ERROR(rows->Put(kSubscriptionsFamily,
                                     Key(kCustomerSubPrefix, *customer_id, *subscription_id), ""));
  }
  return Status::OK();
}

// customer.deleted.v1 {"customer_id",...}: the links stay (history, the admin views); the id is
// no longer offered to Stripe (GetUserSubscription's customer_id).
Status ApplyCustomerDeleted(const Event& event, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  ObjectReader reader(doc);
  std::string customer_id;
  Status s = reader.String("customer_id", true, &customer_id);
  if (!s.ok()) return Malformed(event, s);
  if (customer_id.empty() || customer_id.find('/') != std::string::npos) return Status::OK();
  return rows->Put(kSubscriptionsFamily, Key(kCustomerDeletedPrefix, customer_id), "");
}

// subscription.state_changed.v1 {"user_id","previous_status","subscription":{...}}
Status ApplyStateChanged(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  auto it = doc.FindMember("subscription");
  if (it == doc.MemberEnd() || !it->value.IsObject()) {
    return Status::InvalidArgument("malformed_event", event.type + ": subscription: required");
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  it->value.Accept(w);
  SubscriptionRecord candidate;
  Status s = ParseSubscriptionRecord(std::string_view(buf.GetString(), buf.GetSize()), &candidate);
  if (!s.ok()) return Malformed(event, s);

  // Links are set unions: applied even when the state itself is stale.
  const std::string& sub_id = candidate.subscription_id;
  LEDGER_RETURN_IF_ERROR(rows->Put(kSubscriptionsFamily,
                                   Key(kCustomerSubPrefix, candidate.customer_id, sub_id), ""));
  if (candidate.metadata_user_id && !candidate.metadata_user_id->empty() &&
      candidate.metadata_user_id->find('/') == std::string::npos) {
    LEDGER_RETURN_IF_ERROR(rows->Put(
        kSubscriptionsFamily, Key(kUserSubPrefix, *candidate.metadata_user_id, sub_id), ""));
    LEDGER_RETURN_IF_ERROR(EnsureUserRow(state, rows, *candidate.metadata_user_id));
  }

  SubscriptionRecord current;
  s = GetSubscription(state, sub_id, &current);
  if (s.ok()) {
    if (!SupersedesSubscription(candidate, current)) return Status::OK();
    if (current.status != candidate.status) {
      LEDGER_RETURN_IF_ERROR(rows->Delete(
          kSubscriptionsFamily, Key(kStatusPrefix, SubscriptionStatusName(current.status), sub_id)));
    }
  } else if (!s.IsNotFound()) {
    return s;
  }
  LEDGER_RETURN_IF_ERROR(rows->Put(kSubscriptionsFamily, SubscriptionRowKey(sub_id),
                                   SubscriptionRecordToJson(candidate)));
  return rows->Put(kSubscriptionsFamily,
                   Key(kStatusPrefix, SubscriptionStatusName(candidate.status), sub_id), "");
}

// invoice.paid.v1 / invoice.payment_failed.v1 {"user_id","invoice":{...}}
Status ApplyInvoice(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  auto it = doc.FindMember("invoice");
  if (it == doc.MemberEnd() || !it->value.IsObject()) {
    return Status::InvalidArgument("malformed_event", event.type + ": invoice: required");
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  it->value.Accept(w);
  InvoiceRecord candidate;
  Status s = ParseInvoiceRecord(std::string_view(buf.GetString(), buf.GetSize()), &candidate);
  if (!s.ok()) return Malformed(event, s);
  if (candidate.subscription_id) {
    LEDGER_RETURN_IF_ERROR(rows->Put(
        kSubscriptionsFamily,
        Key(kSubInvoicePrefix, *candidate.subscription_id, candidate.invoice_id), ""));
  }
  std::string value;
  s = state.Get(kSubscriptionsFamily, InvoiceRowKey(candidate.invoice_id), &value);
  if (s.ok()) {
    InvoiceRecord current;
    s = ParseInvoiceRecord(value, &current);
    if (!s.ok()) return Corrupt("subscriptions row inv/" + Truncated(candidate.invoice_id), s);
    if (!SupersedesInvoice(candidate, current)) return Status::OK();
  } else if (!s.IsNotFound()) {
    return s;
  }
  return rows->Put(kSubscriptionsFamily, InvoiceRowKey(candidate.invoice_id),
                   InvoiceRecordToJson(candidate));
}

// subscription.override_set.v1 {"user_id","email","plan_id","status","notes","actor"}: the
// override as it is after the change (null = not set).
Status ApplyOverrideSet(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseEventData(event, &doc));
  ObjectReader reader(doc);
  std::string user_id;
  AdminOverride value;
  std::optional<std::string> status_name;
  Status s = reader.String("user_id", true, &user_id);
  if (s.ok()) s = reader.NullableString("plan_id", true, &value.plan_id);
  if (s.ok()) s = reader.NullableString("status", true, &status_name);
  if (s.ok()) s = reader.NullableString("notes", true, &value.notes);
  if (s.ok() && (!doc.HasMember("actor") || !doc["actor"].IsObject())) {
    s = Status::InvalidArgument("malformed_event", "actor: an object");
  }
  if (s.ok()) s = ObjectReader(doc["actor"]).String("sub", true, &value.admin);
  if (s.ok() && status_name) {
    SubscriptionStatus parsed;
    if (ParseSubscriptionStatus(*status_name, &parsed)) {
      value.status = parsed;
    } else {
      s = Status::InvalidArgument("malformed_event", "status: not a subscription status");
    }
  }
  if (s.ok() && (user_id.empty() || user_id.find('/') != std::string::npos)) {
    s = Status::InvalidArgument("malformed_event", "user_id: empty or with '/'");
  }
  if (!s.ok()) return Malformed(event, s);
  value.set_at_us = event.time_us;
  value.tier_set_at_us = event.time_us;
  std::optional<AdminOverride> previous;
  LEDGER_RETURN_IF_ERROR(GetAdminOverride(state, user_id, &previous));
  if (previous && previous->plan_id && previous->plan_id == value.plan_id) {
    value.tier_set_at_us = previous->tier_set_at_us;
  }
  if (value.empty()) {
    LEDGER_RETURN_IF_ERROR(rows->Delete(kSubscriptionsFamily, Key(kOverridePrefix, user_id)));
    // The override's user/ row (EnsureUserRow below) goes with it when the user has nothing else
    // the row stands for: PATCH .../u-tpyo {"notes":"x"} and then {"notes":null} left u-tpyo in
    // the list and the figures for good. Every other writer of the row also writes a customer
    // link (user_cus/, with the email) or a subscription named for the user (user_sub/); rows of
    // this family only, so a replay drops it alike.
    UserRow user_row;
    Status read = ReadUserRow(state, user_id, &user_row);
    if (read.IsNotFound()) return Status::OK();
    LEDGER_RETURN_IF_ERROR(read);
    if (!user_row.email.email.empty()) return Status::OK();
    std::vector<std::string> links;
    for (std::string_view prefix : {kUserCustomerPrefix, kUserSubPrefix}) {
      LEDGER_RETURN_IF_ERROR(ScanChildren(state, Key(prefix, user_id), 1, &links));
      if (!links.empty()) return Status::OK();
    }
    return rows->Delete(kSubscriptionsFamily, Key(kUserPrefix, user_id));
  }
  LEDGER_RETURN_IF_ERROR(EnsureUserRow(state, rows, user_id));
  return rows->Put(kSubscriptionsFamily, Key(kOverridePrefix, user_id), AdminOverrideToJson(value));
}

// subscription.override_set.v1, the override_at/ row: the event's time when the override's tier or
// status is not what it was (deleted when neither is set). Lenient: ApplyOverrideSet refuses a
// malformed event.
Status ApplyOverrideDecidedAt(const Event& event, const StateReader& state, RowWriter* rows) {
  rapidjson::Document doc;
  if (!ParseJsonObject(event.data, &doc).ok()) return Status::OK();
  ObjectReader reader(doc);
  std::string user_id;
  std::optional<std::string> plan_id, status;
  if (!reader.String("user_id", true, &user_id).ok() ||
      !reader.NullableString("plan_id", true, &plan_id).ok() ||
      !reader.NullableString("status", true, &status).ok() || user_id.empty() ||
      user_id.find('/') != std::string::npos) {
    return Status::OK();
  }
  const std::string key = Key(kOverrideAtPrefix, user_id);
  if (!plan_id && !status) return rows->Delete(kSubscriptionsFamily, key);
  std::optional<AdminOverride> previous;
  LEDGER_RETURN_IF_ERROR(GetAdminOverride(state, user_id, &previous));
  const std::optional<std::string> previous_status =
      previous && previous->status
          ? std::optional<std::string>(SubscriptionStatusName(*previous->status))
          : std::nullopt;
  if (previous && previous->plan_id == plan_id && previous_status == status) return Status::OK();
  return rows->Put(kSubscriptionsFamily, key, std::to_string(event.time_us));
}

// stripe.checkout_session_created.v1 (http/billing_routes.cc): our own record that a user opened
// a Checkout Session. Kept as session -> user, the fallback when Stripe's
// checkout.session.completed names no user. Not this fold's event: anything unusable is ignored
// rather than failing the command that appended it.
Status ApplyCheckoutSessionCreated(const Event& event, RowWriter* rows) {
  rapidjson::Document doc;
  if (!ParseJsonObject(event.data, &doc).ok()) return Status::OK();
  ObjectReader reader(doc);
  std::string session_id, user_id;
  if (!reader.String("session_id", true, &session_id).ok() ||
      !reader.String("user_id", true, &user_id).ok() || session_id.empty() || user_id.empty() ||
      session_id.find('/') != std::string::npos || user_id.find('/') != std::string::npos) {
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(rows->Put(kSubscriptionsFamily, Key(kSessionPrefix, session_id), user_id));
  LEDGER_RETURN_IF_ERROR(rows->Put(kSubscriptionsFamily,
                                   Key(kUserSessionPrefix, user_id, session_id),
                                   std::to_string(event.time_us)));
  auto closed = doc.FindMember("closed_session_ids");
  if (closed == doc.MemberEnd() || !closed->value.IsArray()) return Status::OK();
  for (const auto& id : closed->value.GetArray()) {
    if (!id.IsString() || id.GetStringLength() == 0) continue;
    const std::string_view closed_id(id.GetString(), id.GetStringLength());
    if (closed_id.find('/') != std::string_view::npos) continue;
    LEDGER_RETURN_IF_ERROR(
        rows->Delete(kSubscriptionsFamily, Key(kUserSessionPrefix, user_id, closed_id)));
  }
  return Status::OK();
}

// ---- choosing a user's subscription ---------------------------------------------------------------

// The ScheduledEnd of a subscription still live in its row (not deleted, not terminal) that
// `ended_by` is past; nullopt otherwise, and always without `ended_by` (the state-only choice).
std::optional<int64_t> PassedScheduledEnd(const SubscriptionRecord& r,
                                          std::optional<int64_t> ended_by) {
  if (!ended_by || r.deleted) return std::nullopt;
  return EndedBySchedule(r, *ended_by);
}

// Past its ScheduledEnd by `ended_by` a subscription ranks as Stripe's deletion will record it
// (canceled), whatever its row still says.
int AccessPreference(const SubscriptionRecord& r, std::optional<int64_t> ended_by) {
  if (r.deleted || PassedScheduledEnd(r, ended_by)) return 0;
  switch (AccessFor(r.status)) {
    case AccessLevel::kGranted: return 3;
    case AccessLevel::kGrace: return 2;
    case AccessLevel::kNone: return IsTerminal(r.status) ? 0 : 1;
  }
  return 0;
}

// True when `a` should be shown rather than `b`: one of our plans first (a subscription to a
// price outside the catalog -- an add-on made in Stripe's Dashboard, another product on the same
// account -- is never the one access, checkout, cancel and upgrade act on: ranked by access
// first, an active add-on beat the plan as soon as the plan went past_due, and the user got
// unknown_plan, a 402 and an upgrade of the add-on), then the better access, then, among those
// past their scheduled ends by `ended_by`, the one that ended last (before any that ended
// otherwise), then the newer. Past the ends of both, a newer Professional ended at T1 was chosen
// over an older Starter that lasted to T2: consume's 402 said "ended at T1", my-access and
// subscription-status showed Professional. Both plan_ids resolved (GetUserSubscription); access
// judged at `ended_by` (AccessPreference); without it, the state-only choice (the access cache's).
bool Preferred(const SubscriptionRecord& a, const SubscriptionRecord& b,
               std::optional<int64_t> ended_by) {
  return std::make_tuple(a.plan_id.has_value(), AccessPreference(a, ended_by),
                         PassedScheduledEnd(a, ended_by), a.created.value_or(0),
                         a.subscription_id) >
         std::make_tuple(b.plan_id.has_value(), AccessPreference(b, ended_by),
                         PassedScheduledEnd(b, ended_by), b.created.value_or(0),
                         b.subscription_id);
}

// The latest invoice of `record` (by event created, then id), and whether any of its invoices
// was paid (a positive amount) at or after its trial's end (UserSubscription::paid_after_trial).
Status ReadInvoices(const StateReader& state, const SubscriptionRecord& record,
                    std::optional<InvoiceRecord>* out, bool* paid_after_trial) {
  out->reset();
  *paid_after_trial = false;
  std::vector<std::string> invoice_ids;
  LEDGER_RETURN_IF_ERROR(ScanChildren(state, Key(kSubInvoicePrefix, record.subscription_id),
                                      limits::kUserSubscriptionsMax, &invoice_ids));
  for (const std::string& id : invoice_ids) {
    std::string value;
    Status s = state.Get(kSubscriptionsFamily, InvoiceRowKey(id), &value);
    if (s.IsNotFound()) continue;
    LEDGER_RETURN_IF_ERROR(s);
    InvoiceRecord invoice;
    s = ParseInvoiceRecord(value, &invoice);
    if (!s.ok()) return Corrupt("subscriptions row inv/" + Truncated(id), s);
    if (record.trial_end && invoice.paid && invoice.amount_paid.value_or(0) > 0 &&
        invoice.event_created >= *record.trial_end) {
      *paid_after_trial = true;
    }
    if (!*out || std::tie(invoice.event_created, invoice.invoice_id) >
                     std::tie((*out)->event_created, (*out)->invoice_id)) {
      *out = std::move(invoice);
    }
  }
  return Status::OK();
}

std::optional<std::string> PlanForPrice(const std::vector<Plan>& plans,
                                        const std::optional<std::string>& price_id) {
  if (!price_id) return std::nullopt;
  for (const Plan& plan : plans) {
    if (plan.stripe_price_monthly == price_id || plan.stripe_price_yearly == price_id) {
      return plan.id;
    }
  }
  return std::nullopt;
}

const Plan* FindPlan(const std::vector<Plan>& plans, const std::optional<std::string>& id) {
  if (!id) return nullptr;
  for (const Plan& plan : plans) {
    if (plan.id == *id) return &plan;
  }
  return nullptr;
}

}  // namespace

// ---- status -------------------------------------------------------------------------------------

std::string_view SubscriptionStatusName(SubscriptionStatus status) {
  return kStatusNames[static_cast<size_t>(status)];
}

bool ParseSubscriptionStatus(std::string_view name, SubscriptionStatus* out) {
  for (size_t i = 0; i < kStatusNames.size(); ++i) {
    if (kStatusNames[i] == name) {
      *out = static_cast<SubscriptionStatus>(i);
      return true;
    }
  }
  return false;
}

AccessLevel AccessFor(SubscriptionStatus status) {
  switch (status) {
    case SubscriptionStatus::kTrialing:
    case SubscriptionStatus::kActive:
      return AccessLevel::kGranted;
    case SubscriptionStatus::kPastDue:
      return AccessLevel::kGrace;
    case SubscriptionStatus::kIncomplete:
    case SubscriptionStatus::kIncompleteExpired:
    case SubscriptionStatus::kCanceled:
    case SubscriptionStatus::kUnpaid:
    case SubscriptionStatus::kPaused:
      return AccessLevel::kNone;
  }
  return AccessLevel::kNone;
}

std::string_view AccessLevelName(AccessLevel level) {
  switch (level) {
    case AccessLevel::kNone: return "none";
    case AccessLevel::kGranted: return "granted";
    case AccessLevel::kGrace: return "grace";
  }
  return "none";
}

std::optional<int64_t> ScheduledEnd(const SubscriptionRecord& record) {
  std::optional<int64_t> end = record.cancel_at;
  if (record.cancel_at_period_end && record.current_period_end &&
      (!end || *record.current_period_end < *end)) {
    end = record.current_period_end;
  }
  return end;
}

std::optional<int64_t> EndedBySchedule(const SubscriptionRecord& record, int64_t now_s) {
  if (IsTerminal(record.status)) return std::nullopt;
  const std::optional<int64_t> end = ScheduledEnd(record);
  if (end && now_s >= *end) return end;
  return std::nullopt;
}

bool IsTerminal(SubscriptionStatus status) {
  return status == SubscriptionStatus::kCanceled ||
         status == SubscriptionStatus::kIncompleteExpired;
}

// ---- ordering -----------------------------------------------------------------------------------

bool FollowsSubscriptionState(const SubscriptionRecord& later, const SubscriptionRecord& earlier) {
  const PreviousAttributes& was = later.previous_attributes;
  bool changed = false;
  bool agrees = true;
  // A value named but equal to the event's own names no change: Stripe names a scalar only when
  // it changed, but `items` whole when any item did (a seat count, an add-on), with the plan
  // item's price and period as they still are.
  auto field = [&](const auto& before, const auto& now, const auto& other) {
    if (!before || *before == now) return;
    changed = true;
    agrees = agrees && *before == other;
  };
  field(was.price_id, later.price_id, earlier.price_id);
  field(was.status, later.status, earlier.status);
  field(was.cancel_at_period_end, later.cancel_at_period_end, earlier.cancel_at_period_end);
  field(was.cancel_at, later.cancel_at, earlier.cancel_at);
  field(was.current_period_start, later.current_period_start, earlier.current_period_start);
  field(was.current_period_end, later.current_period_end, earlier.current_period_end);
  field(was.trial_end, later.trial_end, earlier.trial_end);
  return changed && agrees;
}

bool SupersedesSubscription(const SubscriptionRecord& candidate,
                            const SubscriptionRecord& current) {
  auto key = [](const SubscriptionRecord& r) {
    return std::make_tuple(r.deleted || IsTerminal(r.status), r.event_created,
                           EventKindRank(r.event_type), StatusRank(r.status));
  };
  if (key(candidate) != key(current)) return key(candidate) > key(current);
  // One second, one kind, one status rank: the state made after the other, when its event says
  // so and the other's does not say the reverse (a change and its undoing within the second).
  const bool follows = FollowsSubscriptionState(candidate, current);
  if (follows != FollowsSubscriptionState(current, candidate)) return follows;
  return candidate.event_id > current.event_id;
}

bool SupersedesInvoice(const InvoiceRecord& candidate, const InvoiceRecord& current) {
  return std::make_tuple(candidate.paid, candidate.event_created,
                         std::string_view(candidate.event_id)) >
         std::make_tuple(current.paid, current.event_created, std::string_view(current.event_id));
}

// ---- rows ---------------------------------------------------------------------------------------

std::string SubscriptionRowKey(std::string_view subscription_id) {
  return Key(kSubPrefix, subscription_id);
}

std::string InvoiceRowKey(std::string_view invoice_id) { return Key(kInvoicePrefix, invoice_id); }

std::string SubscriptionRecordToJson(const SubscriptionRecord& r) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("subscription_id");
  json::String(&w, r.subscription_id);
  w.Key("customer_id");
  json::String(&w, r.customer_id);
  w.Key("status");
  json::String(&w, SubscriptionStatusName(r.status));
  w.Key("plan_id");
  json::OptString(&w, r.plan_id);
  w.Key("price_id");
  json::OptString(&w, r.price_id);
  w.Key("item_id");
  json::OptString(&w, r.item_id);
  w.Key("interval");
  json::OptString(&w, r.interval);
  w.Key("unit_amount");
  json::OptInt(&w, r.unit_amount);
  w.Key("quantity");
  json::OptInt(&w, r.quantity);
  w.Key("interval_count");
  json::OptInt(&w, r.interval_count);
  w.Key("currency");
  json::OptString(&w, r.currency);
  w.Key("current_period_start");
  json::OptInt(&w, r.current_period_start);
  w.Key("current_period_end");
  json::OptInt(&w, r.current_period_end);
  w.Key("cancel_at_period_end");
  w.Bool(r.cancel_at_period_end);
  w.Key("cancel_at");
  json::OptInt(&w, r.cancel_at);
  w.Key("canceled_at");
  json::OptInt(&w, r.canceled_at);
  w.Key("ended_at");
  json::OptInt(&w, r.ended_at);
  w.Key("trial_start");
  json::OptInt(&w, r.trial_start);
  w.Key("trial_end");
  json::OptInt(&w, r.trial_end);
  w.Key("created");
  json::OptInt(&w, r.created);
  w.Key("metadata_user_id");
  json::OptString(&w, r.metadata_user_id);
  w.Key("metadata_plan_id");
  json::OptString(&w, r.metadata_plan_id);
  w.Key("deleted");
  w.Bool(r.deleted);
  w.Key("event_id");
  json::String(&w, r.event_id);
  w.Key("event_type");
  json::String(&w, r.event_type);
  w.Key("event_created");
  w.Int64(r.event_created);
  if (!r.previous_attributes.empty()) {
    w.Key("previous_attributes");
    WritePreviousAttributes(&w, r.previous_attributes);
  }
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status ParseSubscriptionRecord(std::string_view json, SubscriptionRecord* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  ObjectReader r(doc);
  SubscriptionRecord rec;
  std::string status;
  LEDGER_RETURN_IF_ERROR(r.String("subscription_id", true, &rec.subscription_id));
  LEDGER_RETURN_IF_ERROR(r.String("customer_id", true, &rec.customer_id));
  LEDGER_RETURN_IF_ERROR(r.String("status", true, &status));
  if (!ParseSubscriptionStatus(status, &rec.status)) {
    return Status::Make(Code::kUnprocessable, "validation_failed", "status: unknown value");
  }
  LEDGER_RETURN_IF_ERROR(r.NullableString("plan_id", true, &rec.plan_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("price_id", true, &rec.price_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("item_id", true, &rec.item_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("interval", true, &rec.interval));
  // Absent from events written before the billed price was kept.
  LEDGER_RETURN_IF_ERROR(r.NullableInt("unit_amount", false, &rec.unit_amount));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("quantity", false, &rec.quantity));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("interval_count", false, &rec.interval_count));
  LEDGER_RETURN_IF_ERROR(r.NullableString("currency", false, &rec.currency));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("current_period_start", true, &rec.current_period_start));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("current_period_end", true, &rec.current_period_end));
  LEDGER_RETURN_IF_ERROR(r.Bool("cancel_at_period_end", true, &rec.cancel_at_period_end));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("cancel_at", true, &rec.cancel_at));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("canceled_at", true, &rec.canceled_at));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("ended_at", true, &rec.ended_at));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("trial_start", true, &rec.trial_start));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("trial_end", true, &rec.trial_end));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("created", true, &rec.created));
  LEDGER_RETURN_IF_ERROR(r.NullableString("metadata_user_id", true, &rec.metadata_user_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("metadata_plan_id", true, &rec.metadata_plan_id));
  LEDGER_RETURN_IF_ERROR(r.Bool("deleted", true, &rec.deleted));
  LEDGER_RETURN_IF_ERROR(r.String("event_id", true, &rec.event_id));
  LEDGER_RETURN_IF_ERROR(r.String("event_type", true, &rec.event_type));
  LEDGER_RETURN_IF_ERROR(r.Int("event_created", true, &rec.event_created));
  // Absent from events without them and from events written before ledgerd kept them.
  auto previous = doc.FindMember("previous_attributes");
  if (previous != doc.MemberEnd()) {
    LEDGER_RETURN_IF_ERROR(ParsePreviousAttributes(previous->value, &rec.previous_attributes));
  }
  if (rec.subscription_id.empty() || rec.customer_id.empty() || rec.event_id.empty()) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "subscription_id, customer_id and event_id must not be empty");
  }
  *out = std::move(rec);
  return Status::OK();
}

std::string InvoiceRecordToJson(const InvoiceRecord& r) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("invoice_id");
  json::String(&w, r.invoice_id);
  w.Key("customer_id");
  json::OptString(&w, r.customer_id);
  w.Key("subscription_id");
  json::OptString(&w, r.subscription_id);
  w.Key("paid");
  w.Bool(r.paid);
  w.Key("amount_due");
  json::OptInt(&w, r.amount_due);
  w.Key("amount_paid");
  json::OptInt(&w, r.amount_paid);
  w.Key("currency");
  json::OptString(&w, r.currency);
  w.Key("attempt_count");
  json::OptInt(&w, r.attempt_count);
  w.Key("billing_reason");
  json::OptString(&w, r.billing_reason);
  w.Key("next_payment_attempt");
  json::OptInt(&w, r.next_payment_attempt);
  w.Key("event_id");
  json::String(&w, r.event_id);
  w.Key("event_created");
  w.Int64(r.event_created);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status ParseInvoiceRecord(std::string_view json, InvoiceRecord* out) {
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  ObjectReader r(doc);
  InvoiceRecord rec;
  LEDGER_RETURN_IF_ERROR(r.String("invoice_id", true, &rec.invoice_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("customer_id", true, &rec.customer_id));
  LEDGER_RETURN_IF_ERROR(r.NullableString("subscription_id", true, &rec.subscription_id));
  LEDGER_RETURN_IF_ERROR(r.Bool("paid", true, &rec.paid));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("amount_due", true, &rec.amount_due));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("amount_paid", true, &rec.amount_paid));
  LEDGER_RETURN_IF_ERROR(r.NullableString("currency", true, &rec.currency));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("attempt_count", true, &rec.attempt_count));
  LEDGER_RETURN_IF_ERROR(r.NullableString("billing_reason", true, &rec.billing_reason));
  LEDGER_RETURN_IF_ERROR(r.NullableInt("next_payment_attempt", true, &rec.next_payment_attempt));
  LEDGER_RETURN_IF_ERROR(r.String("event_id", true, &rec.event_id));
  LEDGER_RETURN_IF_ERROR(r.Int("event_created", true, &rec.event_created));
  if (rec.invoice_id.empty() || rec.event_id.empty()) {
    return Status::Make(Code::kUnprocessable, "validation_failed",
                        "invoice_id and event_id must not be empty");
  }
  *out = std::move(rec);
  return Status::OK();
}

// ---- fold ---------------------------------------------------------------------------------------

Status SubscriptionFold::Apply(const Event& event, const StateReader& state,
                               RowWriter* rows) const {
  if (event.type == kCustomerLinkedV1) return ApplyCustomerLinked(event, state, rows);
  if (event.type == kCustomerDeletedV1) return ApplyCustomerDeleted(event, rows);
  if (event.type == kSubscriptionCheckoutCompletedV1) return ApplyCheckoutCompleted(event, state, rows);
  if (event.type == kSubscriptionStateChangedV1) return ApplyStateChanged(event, state, rows);
  if (event.type == kInvoicePaidV1 || event.type == kInvoicePaymentFailedV1) {
    return ApplyInvoice(event, state, rows);
  }
  if (event.type == kCheckoutSessionCreatedV1) return ApplyCheckoutSessionCreated(event, rows);
  if (event.type == kSubscriptionOverrideSetV1) {
    LEDGER_RETURN_IF_ERROR(ApplyOverrideDecidedAt(event, state, rows));
    return ApplyOverrideSet(event, state, rows);
  }
  return Status::OK();
}

// ---- queries ------------------------------------------------------------------------------------

Status GetSubscription(const StateReader& state, std::string_view subscription_id,
                       SubscriptionRecord* out) {
  std::string value;
  Status s = state.Get(kSubscriptionsFamily, SubscriptionRowKey(subscription_id), &value);
  if (s.IsNotFound()) return Status::NotFound("no subscription '" + Truncated(subscription_id) + "'");
  LEDGER_RETURN_IF_ERROR(s);
  s = ParseSubscriptionRecord(value, out);
  if (!s.ok()) return Corrupt("subscriptions row sub/" + Truncated(subscription_id), s);
  return Status::OK();
}

Status GetCustomerUser(const StateReader& state, std::string_view customer_id,
                       std::string* user_id) {
  CustomerRow row;
  Status s = ReadCustomerRow(state, customer_id, &row);
  if (s.IsNotFound()) return Status::NotFound("customer not linked");
  LEDGER_RETURN_IF_ERROR(s);
  *user_id = row.user_id;
  return Status::OK();
}

namespace {

// The catalog, listed once per query (for subscriptions without a stored plan).
Status ListPlansOnce(const StateReader& state, std::optional<std::vector<Plan>>* plans) {
  if (*plans) return Status::OK();
  plans->emplace();
  return ListPlans(state, /*include_inactive=*/true, &**plans);
}

// A trial whose first charge after it failed has not converted: Stripe put it on Starter's price
// and dunning keeps it past_due (grace) for weeks. Taken for Starter, a declined card got
// Starter's services, BYOK and a fresh month of 1,000 calls for the $1; on its trial plan it has
// ended (trial_expired) until an invoice is paid. Stripe's `active` says the charge went through
// (its invoice.paid may come later), and a trial still running is the trial. Called once `sub`'s
// invoices are read (never_paid_after_trial needs them).
Status KeepFailedTrialOnItsPlan(const StateReader& state, std::optional<std::vector<Plan>>* plans,
                                UserSubscription* sub) {
  SubscriptionRecord& r = sub->subscription;
  if (r.status == SubscriptionStatus::kActive || r.status == SubscriptionStatus::kTrialing ||
      !sub->never_paid_after_trial()) {
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(ListPlansOnce(state, plans));
  const Plan* tagged = FindPlan(**plans, r.metadata_plan_id);
  if (tagged != nullptr && tagged->trial_days > 0) r.plan_id = tagged->id;
  return Status::OK();
}

// GetUserSubscription; with `every`, also each subscription attached to the user (GetUserAccess);
// with `ended_by`, chosen as a request at that time chooses (GetUserSubscriptionAt).
Status LoadUserSubscriptions(const StateReader& state, std::string_view user_id,
                             UserSubscription* out, std::vector<UserSubscription>* every,
                             std::optional<int64_t> ended_by) {
  *out = UserSubscription();
  if (every != nullptr) every->clear();
  out->user_id.assign(user_id);
  if (user_id.empty() || user_id.find('/') != std::string_view::npos) return Status::OK();

  UserRow user_row;
  Status s = ReadUserRow(state, user_id, &user_row);
  if (s.ok()) {
    out->email = user_row.email.email;
  } else if (!s.IsNotFound()) {
    return s;
  }

  std::vector<std::string> customers;
  LEDGER_RETURN_IF_ERROR(ScanChildren(state, Key(kUserCustomerPrefix, user_id),
                                      limits::kUserSubscriptionsMax, &customers));
  std::set<std::string> subscription_ids;
  std::vector<std::string> children;
  LEDGER_RETURN_IF_ERROR(ScanChildren(state, Key(kUserSubPrefix, user_id),
                                      limits::kUserSubscriptionsMax, &children));
  subscription_ids.insert(children.begin(), children.end());
  for (const std::string& customer : customers) {
    LEDGER_RETURN_IF_ERROR(ScanChildren(state, Key(kCustomerSubPrefix, customer),
                                        limits::kUserSubscriptionsMax, &children));
    subscription_ids.insert(children.begin(), children.end());
  }

  std::optional<std::vector<Plan>> plans;  // ListPlansOnce
  std::vector<SubscriptionRecord> records;  // in id order
  std::optional<size_t> chosen;
  for (const std::string& id : subscription_ids) {
    SubscriptionRecord record;
    s = GetSubscription(state, id, &record);
    if (s.IsNotFound()) {  // named by a checkout; no subscription event yet
      out->awaited_subscription_ids.push_back(id);
      continue;
    }
    LEDGER_RETURN_IF_ERROR(s);
    // One owner: the user its customer is linked to, whatever its tag says; the user Stripe
    // tagged it for (metadata.user_id) only while the customer is linked to nobody. Taken by the
    // customer of another user, sub_odd on user-2's cus_2 tagged user_id=user-1 opened user-2's
    // Billing Portal for user-1, listed user-2's cards and sent user-1's next checkout with
    // customer=cus_2; refused to user-2 as well for its tag, it was nobody's: user-2 paid for it
    // with no access, could not cancel it and it was missing from MRR. The webhook decider names
    // the same owner in the events. A query, not the fold: the fold's user_sub/ rows are every
    // user a subscription was named for, whatever the order the link came in.
    bool customer_linked = false;
    if (!record.customer_id.empty()) {
      CustomerRow owner;
      s = ReadCustomerRow(state, record.customer_id, &owner);
      if (!s.ok() && !s.IsNotFound()) return s;
      if (s.ok() && owner.user_id != user_id) continue;
      customer_linked = s.ok();
    }
    if (!customer_linked && record.metadata_user_id && *record.metadata_user_id != user_id) {
      continue;
    }
    // The plan is decided again from the catalog whenever the price maps to one (price/<id>
    // rows): the plan the webhook stored stands only for a price that maps to nothing (or none
    // stored). A store holds plans decided before the price rows existed: a subscriber renewing
    // on Professional's replaced price with checkout's stale `starter` tag was stored as Starter
    // -- paying $49, treated as Starter until Stripe's next event about it. A query, not the
    // fold: the rows stay as they are, a replay gives the same rows and the same answer.
    std::optional<std::string> price_plan_id;
    if (record.price_id) {
      LEDGER_RETURN_IF_ERROR(PlanForStripePrice(state, *record.price_id, &price_plan_id));
    }
    if (!record.plan_id || price_plan_id) {
      LEDGER_RETURN_IF_ERROR(ListPlansOnce(state, &plans));
      record.plan_id = PlanIdForSubscription(*plans, record.status, record.price_id,
                                             price_plan_id, record.metadata_plan_id);
    }
    if (!chosen || Preferred(record, records[*chosen], ended_by)) chosen = records.size();
    records.push_back(std::move(record));
  }
  std::vector<std::pair<int64_t, std::string>> attached;  // (recency, id): other_subscription_ids
  for (size_t i = 0; i < records.size(); ++i) {
    if (chosen && i == *chosen) continue;
    const SubscriptionRecord& r = records[i];
    attached.emplace_back(
        std::max({r.ended_at.value_or(0), r.canceled_at.value_or(0), r.created.value_or(0)}),
        r.subscription_id);
  }
  std::sort(attached.begin(), attached.end(), std::greater<>());
  for (auto& [recency, id] : attached) out->other_subscription_ids.push_back(std::move(id));

  // Each one as it stands on its own: its invoices, a failed trial on its trial plan.
  if (every != nullptr) {
    for (const SubscriptionRecord& record : records) {
      UserSubscription one;
      one.user_id = out->user_id;
      one.email = out->email;
      one.customer_id = record.customer_id;
      one.has_subscription = true;
      one.subscription = record;
      LEDGER_RETURN_IF_ERROR(
          ReadInvoices(state, one.subscription, &one.latest_invoice, &one.paid_after_trial));
      LEDGER_RETURN_IF_ERROR(KeepFailedTrialOnItsPlan(state, &plans, &one));
      every->push_back(std::move(one));
    }
  }

  // A customer deleted at Stripe is named to it no more: checkout creates a new one, the portal
  // and the cards have none.
  auto deleted = [&](const std::string& customer_id, bool* is) {
    std::string unused;
    Status s = state.Get(kSubscriptionsFamily, Key(kCustomerDeletedPrefix, customer_id), &unused);
    *is = s.ok();
    return s.IsNotFound() ? Status::OK() : s;
  };
  bool fall_back = !chosen;
  if (chosen) {
    out->has_subscription = true;
    if (every != nullptr) {  // read above
      const UserSubscription& one = (*every)[*chosen];
      out->subscription = one.subscription;
      out->latest_invoice = one.latest_invoice;
      out->paid_after_trial = one.paid_after_trial;
    } else {
      out->subscription = std::move(records[*chosen]);
      LEDGER_RETURN_IF_ERROR(ReadInvoices(state, out->subscription, &out->latest_invoice,
                                          &out->paid_after_trial));
      LEDGER_RETURN_IF_ERROR(KeepFailedTrialOnItsPlan(state, &plans, out));
    }
    out->customer_id = out->subscription.customer_id;
    if (!out->customer_id.empty()) LEDGER_RETURN_IF_ERROR(deleted(out->customer_id, &fall_back));
    if (fall_back) out->customer_id.clear();
  }
  // Else, or instead of a deleted one: the user's most recently linked live customer (the
  // greatest CustomerRow::linked_created; ties: the greater id). Stripe's ids are random: the
  // greatest id alone sent a user's portal, cards and next checkout to any of their customers.
  std::pair<int64_t, std::string> latest;
  for (size_t i = 0; fall_back && i < customers.size(); ++i) {
    bool gone = false;
    LEDGER_RETURN_IF_ERROR(deleted(customers[i], &gone));
    if (gone) continue;
    CustomerRow row;
    s = ReadCustomerRow(state, customers[i], &row);
    if (!s.ok() && !s.IsNotFound()) return s;
    std::pair<int64_t, std::string> candidate(s.ok() ? row.linked_created : 0, customers[i]);
    if (out->customer_id.empty() || candidate > latest) {
      latest = std::move(candidate);
      out->customer_id = customers[i];
    }
  }
  return Status::OK();
}

}  // namespace

Status GetUserSubscription(const StateReader& state, std::string_view user_id,
                           UserSubscription* out) {
  return LoadUserSubscriptions(state, user_id, out, /*every=*/nullptr, std::nullopt);
}

Status GetUserSubscriptionAt(const StateReader& state, std::string_view user_id, int64_t now_s,
                             UserSubscription* out) {
  return LoadUserSubscriptions(state, user_id, out, /*every=*/nullptr, now_s);
}

Status ListSubscriptionsByStatus(const StateReader& state, SubscriptionStatus status,
                                 size_t limit, std::vector<std::string>* subscription_ids) {
  subscription_ids->clear();
  if (limit == 0) return Status::OK();
  return ScanChildren(state, Key(kStatusPrefix, SubscriptionStatusName(status)), limit,
                      subscription_ids);
}

Status GetCheckoutSessionUser(const StateReader& state, std::string_view session_id,
                             std::string* user_id) {
  if (session_id.empty() || session_id.find('/') != std::string_view::npos) {
    return Status::NotFound("no such checkout session");
  }
  Status s = state.Get(kSubscriptionsFamily, Key(kSessionPrefix, session_id), user_id);
  if (s.IsNotFound()) return Status::NotFound("no such checkout session");
  return s;
}

Status ListOpenCheckouts(const StateReader& state, std::string_view user_id, size_t limit,
                         std::vector<OpenCheckout>* sessions) {
  sessions->clear();
  if (user_id.empty() || user_id.find('/') != std::string_view::npos) return Status::OK();
  const std::string prefix = Key(kUserSessionPrefix, user_id) + "/";
  LEDGER_RETURN_IF_ERROR(
      state.Scan(kSubscriptionsFamily, prefix, [&](std::string_view key, std::string_view value) {
        OpenCheckout session;
        session.session_id.assign(key.substr(prefix.size()));
        const auto [end, error] =
            std::from_chars(value.data(), value.data() + value.size(), session.created_us);
        if (!session.session_id.empty() && session.session_id.find('/') == std::string::npos &&
            error == std::errc() && end == value.data() + value.size()) {
          sessions->push_back(std::move(session));
        }
        return sessions->size() < limit;
      }));
  std::sort(sessions->begin(), sessions->end(), [](const OpenCheckout& a, const OpenCheckout& b) {
    return std::tie(b.created_us, b.session_id) < std::tie(a.created_us, a.session_id);
  });
  return Status::OK();
}

Status FindUsersByEmailOrId(const StateReader& state, std::string_view email_or_id,
                            std::vector<std::string>* user_ids) {
  if (email_or_id.find('@') == std::string_view::npos) {
    user_ids->clear();
    if (IsValidUserId(email_or_id)) user_ids->emplace_back(email_or_id);
    return Status::OK();
  }
  LEDGER_RETURN_IF_ERROR(FindUsersByEmail(state, email_or_id, user_ids));
  // A user id may hold an '@' (a JWT's sub is any user id: an IdP may use the email): the user
  // with exactly that id is named too, once known (a user/ row: the admin list's users, an
  // override's included), so that an email nobody has stays a 404 rather than an account made up
  // by a typo. Beside the email's users as well: named only when none had the email, a user comped
  // by that id was lost to every route once another user took the email (its override could be
  // neither seen nor revoked). PATCH judges each user it names (SetAdminOverride).
  if (!IsValidUserId(email_or_id) ||
      std::binary_search(user_ids->begin(), user_ids->end(), email_or_id)) {
    return Status::OK();
  }
  std::string value;
  Status s = state.Get(kSubscriptionsFamily, Key(kUserPrefix, email_or_id), &value);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  user_ids->insert(std::lower_bound(user_ids->begin(), user_ids->end(), email_or_id),
                   std::string(email_or_id));
  return Status::OK();
}

Status FindUsersByEmail(const StateReader& state, std::string_view email,
                        std::vector<std::string>* user_ids) {
  user_ids->clear();
  if (email.empty()) return Status::OK();
  return ScanChildren(state, Key(kEmailPrefix, LowercaseAscii(email)),
                      limits::kUserSubscriptionsMax, user_ids);
}

std::optional<std::string> PlanIdForSubscription(const std::vector<Plan>& plans,
                                                 SubscriptionStatus status,
                                                 const std::optional<std::string>& price_id,
                                                 const std::optional<std::string>& price_plan_id,
                                                 const std::optional<std::string>& metadata_plan_id) {
  const Plan* tagged = FindPlan(plans, metadata_plan_id);
  const bool trial_tag = tagged != nullptr && tagged->trial_days > 0;
  if (status == SubscriptionStatus::kTrialing && trial_tag) return tagged->id;
  if (std::optional<std::string> by_price = PlanForPrice(plans, price_id)) return by_price;
  // A price the plan named before a price change (stripe-setup replaced it): its subscribers
  // renew on it. The tag cannot stand in -- a Billing Portal switch leaves checkout's tag on the
  // old plan (Professional renewing as Starter), and a subscription made elsewhere has none.
  if (const Plan* former = FindPlan(plans, price_plan_id)) return former->id;
  if (trial_tag) {
    // Past its trial, a trial runs on the conversion plan's price. That price is no longer in
    // the catalog when an admin replaced it (stripe-setup after a price change): the
    // subscription still converted, and must not fall back to the trial's daily limit.
    const Plan* converted = FindPlan(plans, std::string(kTrialConversionPlanId));
    return converted != nullptr ? converted->id : tagged->id;
  }
  if (tagged != nullptr) return tagged->id;
  return std::nullopt;
}

Status PlanForSubscription(const StateReader& state, SubscriptionStatus status,
                           const std::optional<std::string>& price_id,
                           const std::optional<std::string>& metadata_plan_id,
                           std::optional<std::string>* plan_id) {
  std::vector<Plan> plans;
  LEDGER_RETURN_IF_ERROR(ListPlans(state, /*include_inactive=*/true, &plans));
  std::optional<std::string> price_plan_id;
  if (price_id) LEDGER_RETURN_IF_ERROR(PlanForStripePrice(state, *price_id, &price_plan_id));
  *plan_id = PlanIdForSubscription(plans, status, price_id, price_plan_id, metadata_plan_id);
  return Status::OK();
}

// ---- access -------------------------------------------------------------------------------------

std::string AdminOverrideToJson(const AdminOverride& value) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("plan_id");
  json::OptString(&w, value.plan_id);
  w.Key("status");
  if (value.status) {
    json::String(&w, SubscriptionStatusName(*value.status));
  } else {
    w.Null();
  }
  w.Key("notes");
  json::OptString(&w, value.notes);
  w.Key("admin");
  json::String(&w, value.admin);
  w.Key("set_at_us");
  w.Int64(value.set_at_us);
  w.Key("tier_set_at_us");
  w.Int64(value.tier_set_at_us);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

Status ParseAdminOverride(std::string_view json, AdminOverride* out) {
  *out = AdminOverride();
  rapidjson::Document doc;
  LEDGER_RETURN_IF_ERROR(ParseJsonObject(json, &doc));
  ObjectReader reader(doc);
  std::optional<std::string> status;
  Status s = reader.NullableString("plan_id", true, &out->plan_id);
  if (s.ok()) s = reader.NullableString("status", true, &status);
  if (s.ok()) s = reader.NullableString("notes", true, &out->notes);
  if (s.ok()) s = reader.String("admin", true, &out->admin);
  if (s.ok()) s = reader.Int("set_at_us", true, &out->set_at_us);
  out->tier_set_at_us = out->set_at_us;
  if (s.ok()) s = reader.Int("tier_set_at_us", false, &out->tier_set_at_us);
  if (s.ok() && status) {
    SubscriptionStatus parsed;
    if (!ParseSubscriptionStatus(*status, &parsed)) {
      return Status::InvalidArgument("validation_failed", "status: not a subscription status");
    }
    out->status = parsed;
  }
  return s;
}

Status GetAdminOverride(const StateReader& state, std::string_view user_id,
                        std::optional<AdminOverride>* out) {
  out->reset();
  if (user_id.empty() || user_id.find('/') != std::string_view::npos) return Status::OK();
  std::string value;
  Status s = state.Get(kSubscriptionsFamily, Key(kOverridePrefix, user_id), &value);
  if (s.IsNotFound()) return Status::OK();
  LEDGER_RETURN_IF_ERROR(s);
  AdminOverride parsed;
  s = ParseAdminOverride(value, &parsed);
  if (!s.ok()) return Corrupt("subscriptions row override/" + Truncated(user_id), s);
  parsed.decided_at_us = parsed.set_at_us;
  s = state.Get(kSubscriptionsFamily, Key(kOverrideAtPrefix, user_id), &value);
  if (s.ok()) {
    const auto [end, error] =
        std::from_chars(value.data(), value.data() + value.size(), parsed.decided_at_us);
    if (error != std::errc() || end != value.data() + value.size()) {
      return Status::Corruption("subscriptions row override_at/" + Truncated(user_id) +
                                ": not a time");
    }
  } else if (!s.IsNotFound()) {
    return s;
  }
  *out = std::move(parsed);
  return Status::OK();
}

Status ScanUsers(const StateReader& state, std::string_view after,
                 const std::function<bool(std::string_view, std::string_view)>& fn) {
  Status parse_error;
  // The first key after `after`: "user/<after>\x00" (user ids contain no NUL).
  std::string start = Key(kUserPrefix, after);
  if (!after.empty()) start.push_back('\0');
  Status s = state.ScanFrom(kSubscriptionsFamily, kUserPrefix, start,
                            [&](std::string_view key, std::string_view value) {
    std::string_view user_id = key.substr(kUserPrefix.size());
    rapidjson::Document doc;
    std::string email;
    Status row = ParseJsonObject(value, &doc);
    if (row.ok()) {
      ObjectReader reader(doc);
      EmailPart part;
      row = ParseEmailPart(&reader, &part);
      email = std::move(part.email);
    }
    if (!row.ok()) {
      parse_error = Corrupt("subscriptions row user/" + Truncated(user_id), row);
      return false;
    }
    return fn(user_id, email);
  });
  LEDGER_RETURN_IF_ERROR(s);
  return parse_error;
}

namespace {

// The status, plan and access of `out` from its subscription and override (the override decides
// unless superseded).
Status DecideAccess(const StateReader& state, UserAccess* out) {
  const UserSubscription& sub = out->subscription;
  std::optional<std::string> plan_id = sub.plan_id();
  if (sub.has_subscription) out->status = sub.subscription.status;
  if (out->override && !out->override_superseded) {
    if (out->override->plan_id) plan_id = out->override->plan_id;
    if (out->override->status) out->status = out->override->status;
  }
  if (!out->status) return Status::OK();
  if (plan_id) {
    Plan plan;
    Status s = GetPlan(state, *plan_id, &plan);
    if (s.ok()) {
      out->plan = std::move(plan);
    } else if (!s.IsNotFound()) {
      return s;
    }
  }
  out->access = out->plan ? AccessFor(*out->status) : AccessLevel::kNone;
  return Status::OK();
}

// GetUserAccess with the subscriptions judged at `ended_by` (LoadUserSubscriptions): one past
// its ScheduledEnd by then is neither chosen before a live one nor supersedes an override. What
// decides from the chosen one's ScheduledEnd on, when that differs, is kept in
// superseded_until/override_decides for the request's clock (ResolveAt): the fold reads no clock,
// and the access cache holds this whatever the time. Each step is at a later end than the last,
// so the chain ends within the user's subscriptions.
Status LoadUserAccess(const StateReader& state, std::string_view user_id,
                      std::optional<int64_t> ended_by, UserAccess* out,
                      std::vector<UserSubscription>* every) {
  *out = UserAccess();
  LEDGER_RETURN_IF_ERROR(
      LoadUserSubscriptions(state, user_id, &out->subscription, every, ended_by));
  LEDGER_RETURN_IF_ERROR(GetAdminOverride(state, user_id, &out->override));
  const UserSubscription& sub = out->subscription;
  const SubscriptionRecord& r = sub.subscription;
  const std::optional<int64_t> end =
      sub.has_subscription && !r.deleted && !IsTerminal(r.status) ? ScheduledEnd(r) : std::nullopt;
  const bool ended = end && ended_by && *ended_by >= *end;
  if (out->override) {
    // A granting override yields to a subscription to a plan the user started after it (see
    // AdminOverride): an admin's trial kept deciding after the user bought Professional on its
    // third day (tts 403, and 402 trial_expired from day 7 while Stripe billed Professional).
    const AdminOverride& o = *out->override;
    out->override_superseded =
        (o.plan_id || o.status) && !o.revokes() && sub.has_subscription && sub.plan_id() &&
        AccessFor(r.status) != AccessLevel::kNone && !ended && r.created &&
        *r.created >= (o.decided_at_us + 999'999) / 1'000'000;  // whole seconds, not before
  }
  // Scheduled to end (canceled at its period's end, or at a date), it decides until then, and
  // from then on what decides at that time, whether Stripe's deletion has arrived or not (past
  // the period's end consume answered 402 until the late webhook, then 200): the override it
  // superseded, or the user's other subscription (a Starter still billed next to a Professional
  // kept to its period's end answered 402 subscription_required).
  if (end && !ended) {
    auto then = std::make_shared<UserAccess>();
    LEDGER_RETURN_IF_ERROR(LoadUserAccess(state, user_id, end, then.get(), nullptr));
    if (out->override_superseded ||
        then->subscription.subscription_id() != sub.subscription_id()) {
      out->superseded_until = end;
      out->override_decides = std::move(then);
    }
  }
  return DecideAccess(state, out);
}

}  // namespace

Status GetUserAccess(const StateReader& state, std::string_view user_id, UserAccess* out,
                     std::vector<UserSubscription>* every) {
  return LoadUserAccess(state, user_id, std::nullopt, out, every);
}

Status GetUserAccessAt(const StateReader& state, std::string_view user_id, int64_t now_s,
                       UserAccess* out) {
  LEDGER_RETURN_IF_ERROR(GetUserAccess(state, user_id, out));
  out->ResolveAt(now_s);
  return Status::OK();
}

ServiceAccess CheckServiceAccess(const UserAccess& access, std::string_view service) {
  if (!IsKnownService(service)) return {false, "unknown_service"};
  if (!access.status) return {false, "no_subscription"};
  if (AccessFor(*access.status) == AccessLevel::kNone) return {false, "subscription_inactive"};
  if (!access.plan) return {false, "unknown_plan"};
  if (!access.plan->HasService(service)) return {false, "service_not_in_plan"};
  return {true, "ok"};
}

bool PreferredSubscription(const SubscriptionRecord& a, const SubscriptionRecord& b,
                           std::optional<int64_t> ended_by) {
  return Preferred(a, b, ended_by);
}

}  // namespace ledger::projections
