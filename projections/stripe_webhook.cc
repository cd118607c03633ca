#include "projections/stripe_webhook.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include <rapidjson/error/en.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "events/types.h"
#include "projections/json_util.h"
#include "projections/json_write.h"
#include "projections/limits.h"
#include "projections/plan_catalog.h"
#include "projections/subscriptions.h"

namespace ledger::projections {

namespace {

using rapidjson::Value;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

Status Malformed(std::string message) {
  return Status::InvalidArgument("malformed_event", std::move(message));
}

// Secrets, and links that work for whoever holds them: an invoice's payment page and PDF, a
// charge's receipt, a credit note's PDF ("pdf"), the customer portal's login link and a checkout
// page ("url": billing_portal.session, checkout.session, file_link, login_link; elsewhere "url"
// is an API path, nothing lost), a verification's or bank transfer's instructions page, and a
// payment's whole next_action (vouchers, QR codes and their payloads, redirects and wallet
// sign-ins: what the customer is to do, every part of it a way to pay) (the Lago side redacts
// its checkout and payment URLs the same way).
bool IsSecretMemberName(std::string_view name) {
  return name == "client_secret" || name == "secret" || name == "hosted_invoice_url" ||
         name == "invoice_pdf" || name == "receipt_url" || name == "pdf" || name == "url" ||
         name == "hosted_instructions_url" || name == "hosted_verification_url" ||
         name == "next_action";
}

// Who the customer is and the payment instrument beyond what GET /billing/payment-methods shows
// (brand, last4, expiry): none of it is read by this decider or any fold, and the log, GET
// /api/v1/events, exports and Kafka readers have no need of it. Person: names, phones,
// addresses (billing_details and the shipping blocks whole), tax ids, the IP address and browser
// of a token or mandate acceptance. Instrument: the card's fingerprint (one id for one card
// number across merchants), IIN, CVC/address check results, 3-D Secure outcome, wallet (its
// dynamic last4 and a wallet's own billing and shipping addresses), the network's transaction id
// (reusable for merchant-initiated charges elsewhere), and the account holder's and payer's
// names and emails, a Checkout's custom fields, a payer's PayPal id or $cashtag. Kept, because
// they are read (CheckoutCompleted): email and customer_email.
// "name" is redacted wherever it is (a product's or coupon's name too; ledgerd's own catalog
// names its plans).
bool IsPersonalDetailMemberName(std::string_view name) {
  static constexpr std::array<std::string_view, 35> kNames = {
      "name",           "individual_name",     "business_name",          "customer_name",
      "phone",          "customer_phone",      "address",                "customer_address",
      "billing_details", "shipping",           "shipping_details",       "customer_shipping",
      "tax_ids",        "customer_tax_ids",    "client_ip",              "ip_address",
      "user_agent",     "fingerprint",         "iin",                    "checks",
      "three_d_secure", "wallet",              "network_transaction_id", "cardholder_name",
      "account_holder_name", "payer_name",     "payer_email",            "verified_name",
      "verified_email", "verified_phone",      "verified_address",
      // What the customer typed into a Checkout's custom fields (a company, a VAT number), and
      // the PayPal / Cash App payer's own ids.
      "custom_fields",  "payer_id",            "cashtag",                "buyer_id"};
  return std::find(kNames.begin(), kNames.end(), name) != kNames.end();
}

Status RedactPayload(std::string_view raw, std::string* out) {
  return RedactJsonSecrets(
      raw,
      [](std::string_view name) {
        return IsSecretMemberName(name) || IsPersonalDetailMemberName(name);
      },
      out);
}

bool IsEventTypeChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}

// ---- reading Stripe objects ---------------------------------------------------------------------

const Value* Member(const Value* object, std::string_view name) {
  if (object == nullptr || !object->IsObject()) return nullptr;
  auto it = object->FindMember(Value(rapidjson::StringRef(name.data(), name.size())));
  return it == object->MemberEnd() ? nullptr : &it->value;
}

const Value* Path(const Value* object, std::initializer_list<std::string_view> names) {
  for (std::string_view name : names) object = Member(object, name);
  return object;
}

std::optional<std::string> Text(const Value* v, size_t bytes_max = limits::kStripeTextBytesMax) {
  if (v == nullptr || !v->IsString() || v->GetStringLength() == 0 ||
      v->GetStringLength() > bytes_max) {
    return std::nullopt;
  }
  return std::string(v->GetString(), v->GetStringLength());
}

std::optional<int64_t> Integer(const Value* v) {
  if (v == nullptr || !v->IsInt64()) return std::nullopt;
  return v->GetInt64();
}

// A Stripe id field: the id string, or an expanded object's "id".
std::optional<std::string> IdOf(const Value* v) {
  if (v != nullptr && v->IsObject()) v = Member(v, "id");
  std::optional<std::string> id = Text(v, limits::kStripeIdBytesMax);
  if (id && !IsDeliveredStripeId(*id)) return std::nullopt;
  return id;
}

// Our user ids as Stripe echoes them (client_reference_id, metadata.user_id): non-empty UTF-8
// without '/' or control characters.
std::optional<std::string> UserIdOf(const Value* v) {
  std::optional<std::string> id = Text(v, limits::kUserIdBytesMax);
  if (!id || !IsValidUtf8(*id)) return std::nullopt;
  for (char c : *id) {
    if (c == '/' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return std::nullopt;
  }
  return id;
}

// A plausible email, the rule of the events' schemas (customer.linked.v1,
// subscription.checkout_completed.v1): one '@' with something before and after it, no '/',
// space or control character, at most 320 bytes of UTF-8. Anything else is no email, as a
// session without one is: a completed checkout whose customer_details.email was "a@" appended a
// customer.linked.v1 and a checkout_completed.v1 that their own schemas reject (minLength 3).
std::optional<std::string> EmailOf(const Value* v) {
  std::optional<std::string> email = Text(v, limits::kEmailBytesMax);
  if (!email || !IsValidUtf8(*email)) return std::nullopt;
  const size_t at = email->find('@');
  if (at == 0 || at == std::string::npos || at + 1 == email->size() ||
      email->find('@', at + 1) != std::string::npos) {
    return std::nullopt;
  }
  for (char c : *email) {
    if (c == '/' || static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) return std::nullopt;
  }
  return email;
}

std::optional<std::string> ShortText(const Value* v) {
  std::optional<std::string> s = Text(v);
  if (s && !IsValidUtf8(*s)) return std::nullopt;
  return s;
}

// An integer within [lo, hi], else nothing.
std::optional<int64_t> InRange(std::optional<int64_t> v, int64_t lo, int64_t hi) {
  if (!v || *v < lo || *v > hi) return std::nullopt;
  return v;
}

// A time in a Stripe object (Unix seconds): an integer >= 0, else nothing, as a time that is not
// an integer is nothing. The events' schemas say minimum 0: a subscription with "trial_end":-1
// (or an invoice with "next_payment_attempt":-1) appended a subscription.state_changed.v1 (an
// invoice.payment_failed.v1) that its own schema refuses. Stripe never sends one; the rest of the
// delivery still counts, as with an amount out of range.
std::optional<int64_t> UnixTime(const Value* v) {
  return InRange(Integer(v), 0, std::numeric_limits<int64_t>::max());
}

// An ISO 4217 code as Stripe writes it: three lowercase letters.
std::optional<std::string> CurrencyCode(const Value* v) {
  std::optional<std::string> s = Text(v, 3);
  if (!s || s->size() != 3 ||
      !std::all_of(s->begin(), s->end(), [](char c) { return c >= 'a' && c <= 'z'; })) {
    return std::nullopt;
  }
  return s;
}

// ---- writing events -----------------------------------------------------------------------------

// What one delivery derives, and whom it concerns.
struct Derivation {
  std::vector<NewEvent> events;          // derived events, subject filled in at the end
  std::optional<std::string> user_id;    // resolved user, when known
  std::optional<std::string> customer_id;
};

class Decider {
 public:
  Decider(const StripeWebhook& webhook, const StateReader& state)
      : webhook_(webhook), state_(state) {}

  Status Run(Derivation* out);

 private:
  const Value* Object() const { return Path(webhook_.payload.get(), {"data", "object"}); }
  Status LinkCustomer(const std::string& customer_id, const std::string& user_id,
                      const std::optional<std::string>& email, std::string_view source,
                      Derivation* out);
  Status ResolveByCustomer(const std::optional<std::string>& customer_id,
                           std::optional<std::string>* user_id);
  Status CheckoutCompleted(Derivation* out);
  Status CustomerDeleted(Derivation* out);
  Status SubscriptionChanged(Derivation* out);
  Status InvoiceSettled(bool paid, Derivation* out);
  Status ReadSubscription(const Value* object, SubscriptionRecord* out);

  const StripeWebhook& webhook_;
  const StateReader& state_;
};

Status Decider::Run(Derivation* out) {
  const std::string& type = webhook_.type;
  const Value* object = Object();
  if (object == nullptr || !object->IsObject()) return Status::OK();
  if (type == "checkout.session.completed") return CheckoutCompleted(out);
  if (type.rfind("customer.subscription.", 0) == 0) {
    // customer.subscription.* events carry a subscription (checked when the payload says).
    const Value* kind = Member(object, "object");
    if (kind == nullptr || Text(kind) == "subscription") return SubscriptionChanged(out);
    return Status::OK();
  }
  if (type == "invoice.paid") return InvoiceSettled(true, out);
  if (type == "invoice.payment_failed") return InvoiceSettled(false, out);
  if (type == "customer.deleted" && Text(Member(object, "object")) == "customer") {
    return CustomerDeleted(out);
  }
  // Anything else derives nothing; whom it concerns is still resolved for the subject.
  out->customer_id = type.rfind("customer.", 0) == 0 && Text(Member(object, "object")) == "customer"
                         ? IdOf(Member(object, "id"))
                         : IdOf(Member(object, "customer"));
  return ResolveByCustomer(out->customer_id, &out->user_id);
}

// Emits customer.linked.v1 when the customer has no link yet, the link gains a newer email, or
// this delivery is older than every link seen so far (its time orders the user's customers:
// the least, whatever order the deliveries came in). A customer already linked to another user
// keeps its link (the claim stays in the log).
Status Decider::LinkCustomer(const std::string& customer_id, const std::string& user_id,
                             const std::optional<std::string>& email, std::string_view source,
                             Derivation* out) {
  std::string value;
  Status s = state_.Get(kSubscriptionsFamily, "cus/" + customer_id, &value);
  if (s.ok()) {
    rapidjson::Document row;
    LEDGER_RETURN_IF_ERROR(ParseJsonObject(value, &row));
    std::optional<std::string> linked_user = Text(Member(&row, "user_id"), SIZE_MAX);
    if (linked_user != user_id) return Status::OK();
    // Without it, invoice.paid (T+300) arriving before its customer.subscription.created (T)
    // left the customer linked at T+300: another customer linked at T+200 lost to it.
    std::optional<int64_t> linked_created = Integer(Member(&row, "linked_created"));
    const bool earlier = linked_created && webhook_.created < *linked_created;
    if (!earlier) {
      if (!email) return Status::OK();
      std::string stored_email = Text(Member(&row, "email"), SIZE_MAX).value_or("");
      int64_t stored_created = Integer(Member(&row, "email_created")).value_or(0);
      if (std::tie(webhook_.created, *email) <= std::tie(stored_created, stored_email)) {
        return Status::OK();
      }
    }
  } else if (!s.IsNotFound()) {
    return s;
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("customer_id");
  json::String(&w, customer_id);
  w.Key("user_id");
  json::String(&w, user_id);
  w.Key("email");
  json::OptString(&w, email);
  w.Key("source");
  json::String(&w, source);
  w.Key("stripe_event_id");
  json::String(&w, webhook_.event_id);
  w.Key("created");
  w.Int64(webhook_.created);
  w.EndObject();
  out->events.push_back(NewEvent{std::string(kCustomerLinkedV1), "", json::Text(buf)});
  return Status::OK();
}

// Leaves *user_id as it is when it is set or the customer is linked to nobody.
Status Decider::ResolveByCustomer(const std::optional<std::string>& customer_id,
                                  std::optional<std::string>* user_id) {
  if (*user_id || !customer_id) return Status::OK();
  std::string linked;
  Status s = GetCustomerUser(state_, *customer_id, &linked);
  if (s.ok()) *user_id = std::move(linked);
  return s.IsNotFound() ? Status::OK() : s;
}

// customer.deleted: the customer's id must not be sent to Stripe again (its checkout, portal and
// card calls would fail for good).
Status Decider::CustomerDeleted(Derivation* out) {
  out->customer_id = IdOf(Member(Object(), "id"));
  if (!out->customer_id) return Status::OK();
  LEDGER_RETURN_IF_ERROR(ResolveByCustomer(out->customer_id, &out->user_id));
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("customer_id");
  json::String(&w, *out->customer_id);
  w.Key("user_id");
  json::OptString(&w, out->user_id);
  w.Key("stripe_event_id");
  json::String(&w, webhook_.event_id);
  w.Key("created");
  w.Int64(webhook_.created);
  w.EndObject();
  out->events.push_back(NewEvent{std::string(kCustomerDeletedV1), "", json::Text(buf)});
  return Status::OK();
}

Status Decider::CheckoutCompleted(Derivation* out) {
  const Value* session = Object();
  std::optional<std::string> session_id = IdOf(Member(session, "id"));
  if (!session_id) return Status::OK();
  // The session's user is who opened it through ledgerd (stripe.checkout_session_created.v1, the
  // session/<id> row), never what the session says: a Payment Link or pricing table takes
  // ?client_reference_id=bob from its URL, so Mallory paid, cus_mallory was linked to bob for
  // good and sub_mallory became bob's subscription (bob's cancel canceled it). A session ledgerd
  // did not create is stored and links nothing; its subscription reaches a user only through a
  // customer already linked, or the subscription's own metadata.user_id (ledgerd's checkout or
  // the Dashboard sets it; a URL cannot).
  std::optional<std::string> user_id;
  std::string opened_by;
  Status opened = GetCheckoutSessionUser(state_, *session_id, &opened_by);
  if (opened.ok()) {
    user_id = std::move(opened_by);
  } else if (!opened.IsNotFound()) {
    return opened;
  }
  std::optional<std::string> customer_id = IdOf(Member(session, "customer"));
  std::optional<std::string> subscription_id = IdOf(Member(session, "subscription"));
  std::optional<std::string> email = EmailOf(Path(session, {"customer_details", "email"}));
  // The email the link teaches (the user's email, the admin routes' lookup by email) is the one
  // ledgerd gave Stripe from the caller's token (customer_email, which Checkout shows locked),
  // never one typed at Checkout (customer_details.email with no customer_email: the token had no
  // email claim, or a known customer was named): a user without one typed victim@corp.com there
  // and an admin's PATCH and reset-usage of victim@corp.com changed that user too. What Stripe
  // reports stays in checkout_completed.v1.
  const std::optional<std::string> token_email = EmailOf(Member(session, "customer_email"));
  if (!email) email = token_email;
  const bool ours = opened.ok();
  LEDGER_RETURN_IF_ERROR(ResolveByCustomer(customer_id, &user_id));
  if (ours && customer_id) {
    LEDGER_RETURN_IF_ERROR(
        LinkCustomer(*customer_id, *user_id, token_email, "checkout_session", out));
  }
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("session_id");
  json::String(&w, *session_id);
  w.Key("user_id");
  json::OptString(&w, user_id);
  w.Key("customer_id");
  json::OptString(&w, customer_id);
  w.Key("subscription_id");
  json::OptString(&w, subscription_id);
  w.Key("email");
  json::OptString(&w, email);
  w.Key("mode");
  json::OptString(&w, ShortText(Member(session, "mode")));
  w.Key("payment_status");
  json::OptString(&w, ShortText(Member(session, "payment_status")));
  w.Key("plan_id");
  json::OptString(&w, ShortText(Path(session, {"metadata", "plan_id"})));
  w.Key("stripe_event_id");
  json::String(&w, webhook_.event_id);
  w.Key("created");
  w.Int64(webhook_.created);
  w.EndObject();
  out->events.push_back(NewEvent{std::string(kSubscriptionCheckoutCompletedV1),
                                 "", json::Text(buf)});
  out->user_id = user_id;
  out->customer_id = customer_id;
  return Status::OK();
}

// The subscription item that decides the plan: the first whose price a catalog plan names or
// named before a price change replaced it (PlanForStripePrice), else the first.
Status PlanItem(const Value* subscription, const std::vector<Plan>& plans,
                const StateReader& state, const Value** out) {
  *out = nullptr;
  const Value* items = Path(subscription, {"items", "data"});
  if (items == nullptr || !items->IsArray() || items->Empty()) return Status::OK();
  for (const Value& item : items->GetArray()) {
    std::optional<std::string> price = IdOf(Member(&item, "price"));
    if (!price) continue;
    for (const Plan& plan : plans) {
      if (plan.stripe_price_monthly == price || plan.stripe_price_yearly == price) {
        *out = &item;
        return Status::OK();
      }
    }
    std::optional<std::string> former;
    LEDGER_RETURN_IF_ERROR(PlanForStripePrice(state, *price, &former));
    if (former) {
      *out = &item;
      return Status::OK();
    }
  }
  *out = &(*items)[0];
  return Status::OK();
}

// A time a previous_attributes names: nullopt when it is not named (or not a time), an inner
// nullopt when it was null.
std::optional<std::optional<int64_t>> NamedTime(const Value* object, std::string_view name) {
  const Value* v = Member(object, name);
  if (v == nullptr) return std::nullopt;
  if (v->IsNull()) return std::optional<std::optional<int64_t>>(std::in_place);
  std::optional<int64_t> t = UnixTime(v);
  if (!t) return std::nullopt;
  return std::optional<std::optional<int64_t>>(std::in_place, *t);
}

// data.previous_attributes (on customer.subscription.updated: the values before the event of
// the fields it changed; `items` whole) for the fields the record keeps, read from the same
// places as the record's own: the price of the plan item (PlanItem) or the legacy `plan`, the
// billing period on that item or top-level.
Status ReadPreviousAttributes(const Value* previous, const std::vector<Plan>& plans,
                              const StateReader& state, PreviousAttributes* out) {
  PreviousAttributes& p = *out;
  if (previous == nullptr || !previous->IsObject()) return Status::OK();
  const Value* item = nullptr;
  if (Member(previous, "items") != nullptr) {
    LEDGER_RETURN_IF_ERROR(PlanItem(previous, plans, state, &item));
  }
  p.price_id = IdOf(Member(item, "price"));
  if (!p.price_id) p.price_id = IdOf(Member(previous, "plan"));
  SubscriptionStatus status;
  std::optional<std::string> status_name = Text(Member(previous, "status"));
  if (status_name && ParseSubscriptionStatus(*status_name, &status)) p.status = status;
  const Value* cancel_at_period_end = Member(previous, "cancel_at_period_end");
  if (cancel_at_period_end != nullptr && cancel_at_period_end->IsBool()) {
    p.cancel_at_period_end = cancel_at_period_end->GetBool();
  }
  p.cancel_at = NamedTime(previous, "cancel_at");
  p.trial_end = NamedTime(previous, "trial_end");
  p.current_period_start = NamedTime(item, "current_period_start");
  if (!p.current_period_start) p.current_period_start = NamedTime(previous, "current_period_start");
  p.current_period_end = NamedTime(item, "current_period_end");
  if (!p.current_period_end) p.current_period_end = NamedTime(previous, "current_period_end");
  return Status::OK();
}

Status Decider::ReadSubscription(const Value* object, SubscriptionRecord* out) {
  SubscriptionRecord& r = *out;
  std::optional<std::string> id = IdOf(Member(object, "id"));
  std::optional<std::string> customer = IdOf(Member(object, "customer"));
  std::optional<std::string> status = Text(Member(object, "status"));
  if (!id || !customer || !status || !ParseSubscriptionStatus(*status, &r.status)) {
    return Status::NotFound("not a subscription this projection can key");
  }
  r.subscription_id = *id;
  r.customer_id = *customer;
  std::vector<Plan> plans;
  LEDGER_RETURN_IF_ERROR(ListPlans(state_, /*include_inactive=*/true, &plans));
  const Value* item = nullptr;
  LEDGER_RETURN_IF_ERROR(PlanItem(object, plans, state_, &item));
  r.item_id = IdOf(Member(item, "id"));
  r.price_id = IdOf(Member(item, "price"));
  r.interval = ShortText(Path(item, {"price", "recurring", "interval"}));
  if (!r.interval) r.interval = ShortText(Path(item, {"plan", "interval"}));
  // What Stripe bills for the item (MRR reads it), from the price or the legacy `plan` object.
  r.unit_amount = InRange(Integer(Path(item, {"price", "unit_amount"})), 0,
                          limits::kStripeUnitAmountMax);
  if (!r.unit_amount) {
    r.unit_amount = InRange(Integer(Path(item, {"plan", "amount"})), 0,
                            limits::kStripeUnitAmountMax);
  }
  r.quantity = InRange(Integer(Member(item, "quantity")), 0, limits::kStripeQuantityMax);
  r.interval_count = InRange(Integer(Path(item, {"price", "recurring", "interval_count"})), 1,
                             limits::kStripeIntervalCountMax);
  if (!r.interval_count) {
    r.interval_count = InRange(Integer(Path(item, {"plan", "interval_count"})), 1,
                               limits::kStripeIntervalCountMax);
  }
  r.currency = CurrencyCode(Path(item, {"price", "currency"}));
  if (!r.currency) r.currency = CurrencyCode(Member(object, "currency"));
  // API >= 2025-03-31 moved the billing period onto the items; older versions have it on top.
  r.current_period_start = UnixTime(Member(item, "current_period_start"));
  r.current_period_end = UnixTime(Member(item, "current_period_end"));
  if (!r.current_period_start) {
    r.current_period_start = UnixTime(Member(object, "current_period_start"));
  }
  if (!r.current_period_end) r.current_period_end = UnixTime(Member(object, "current_period_end"));
  const Value* cancel_at_period_end = Member(object, "cancel_at_period_end");
  r.cancel_at_period_end = cancel_at_period_end != nullptr && cancel_at_period_end->IsBool() &&
                           cancel_at_period_end->GetBool();
  r.cancel_at = UnixTime(Member(object, "cancel_at"));
  r.canceled_at = UnixTime(Member(object, "canceled_at"));
  r.ended_at = UnixTime(Member(object, "ended_at"));
  r.trial_start = UnixTime(Member(object, "trial_start"));
  r.trial_end = UnixTime(Member(object, "trial_end"));
  r.created = UnixTime(Member(object, "created"));
  r.metadata_user_id = UserIdOf(Path(object, {"metadata", "user_id"}));
  r.metadata_plan_id = ShortText(Path(object, {"metadata", "plan_id"}));
  r.deleted = webhook_.type == "customer.subscription.deleted";
  // A deleted subscription has ended whatever status the object shows.
  if (r.deleted && !IsTerminal(r.status)) r.status = SubscriptionStatus::kCanceled;
  r.event_id = webhook_.event_id;
  r.event_type = webhook_.type;
  r.event_created = webhook_.created;
  std::optional<std::string> price_plan_id;
  if (r.price_id) LEDGER_RETURN_IF_ERROR(PlanForStripePrice(state_, *r.price_id, &price_plan_id));
  r.plan_id = PlanIdForSubscription(plans, r.status, r.price_id, price_plan_id, r.metadata_plan_id);
  return ReadPreviousAttributes(Path(webhook_.payload.get(), {"data", "previous_attributes"}),
                                plans, state_, &r.previous_attributes);
}

Status Decider::SubscriptionChanged(Derivation* out) {
  SubscriptionRecord candidate;
  Status s = ReadSubscription(Object(), &candidate);
  if (s.IsNotFound()) return Status::OK();  // stored, nothing derived
  LEDGER_RETURN_IF_ERROR(s);
  // The customer's user, else the tag: a subscription on a customer linked to one user is that
  // user's whatever its metadata.user_id says (GetUserSubscription), and its events, subject and
  // Kafka key name that user. Tagged first, sub_odd on user-2's cus_2 tagged user-1 (made in the
  // Dashboard) was announced as user-1's while the projection gave it to neither.
  out->customer_id = candidate.customer_id;
  LEDGER_RETURN_IF_ERROR(ResolveByCustomer(out->customer_id, &out->user_id));
  if (!out->user_id) out->user_id = candidate.metadata_user_id;
  if (candidate.metadata_user_id) {
    LEDGER_RETURN_IF_ERROR(LinkCustomer(candidate.customer_id, *candidate.metadata_user_id,
                                        std::nullopt, "subscription_metadata", out));
  }
  SubscriptionRecord current;
  s = GetSubscription(state_, candidate.subscription_id, &current);
  std::optional<std::string> previous_status;
  if (s.ok()) {
    if (!SupersedesSubscription(candidate, current)) return Status::OK();  // stale: no rollback
    previous_status = std::string(SubscriptionStatusName(current.status));
  } else if (!s.IsNotFound()) {
    return s;
  }
  std::string record = SubscriptionRecordToJson(candidate);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::OptString(&w, out->user_id);
  w.Key("previous_status");
  json::OptString(&w, previous_status);
  w.Key("subscription");
  w.RawValue(record.data(), record.size(), rapidjson::kObjectType);
  w.EndObject();
  out->events.push_back(NewEvent{std::string(kSubscriptionStateChangedV1), "", json::Text(buf)});
  return Status::OK();
}

Status Decider::InvoiceSettled(bool paid, Derivation* out) {
  const Value* invoice = Object();
  InvoiceRecord r;
  std::optional<std::string> id = IdOf(Member(invoice, "id"));
  if (!id) return Status::OK();
  r.invoice_id = *id;
  r.customer_id = IdOf(Member(invoice, "customer"));
  // Older API versions: top-level `subscription`; newer: parent.subscription_details.subscription.
  r.subscription_id = IdOf(Member(invoice, "subscription"));
  if (!r.subscription_id) {
    r.subscription_id = IdOf(Path(invoice, {"parent", "subscription_details", "subscription"}));
  }
  r.paid = paid;
  r.amount_due = Integer(Member(invoice, "amount_due"));
  r.amount_paid = Integer(Member(invoice, "amount_paid"));
  r.currency = ShortText(Member(invoice, "currency"));
  r.attempt_count = Integer(Member(invoice, "attempt_count"));
  r.billing_reason = ShortText(Member(invoice, "billing_reason"));
  r.next_payment_attempt = UnixTime(Member(invoice, "next_payment_attempt"));
  r.event_id = webhook_.event_id;
  r.event_created = webhook_.created;

  std::optional<std::string> metadata_user =
      UserIdOf(Path(invoice, {"parent", "subscription_details", "metadata", "user_id"}));
  if (!metadata_user) {
    metadata_user = UserIdOf(Path(invoice, {"subscription_details", "metadata", "user_id"}));
  }
  // As for its subscription: the customer's user, else the tag.
  out->customer_id = r.customer_id;
  LEDGER_RETURN_IF_ERROR(ResolveByCustomer(out->customer_id, &out->user_id));
  if (!out->user_id) out->user_id = metadata_user;
  if (!out->user_id && r.subscription_id) {
    SubscriptionRecord sub;
    Status s = GetSubscription(state_, *r.subscription_id, &sub);
    if (s.ok()) {
      LEDGER_RETURN_IF_ERROR(ResolveByCustomer(sub.customer_id, &out->user_id));
      if (!out->user_id) out->user_id = sub.metadata_user_id;
    } else if (!s.IsNotFound()) {
      return s;
    }
  }
  if (metadata_user && r.customer_id) {
    LEDGER_RETURN_IF_ERROR(
        LinkCustomer(*r.customer_id, *metadata_user, std::nullopt, "invoice_metadata", out));
  }

  std::string value;
  Status s = state_.Get(kSubscriptionsFamily, InvoiceRowKey(r.invoice_id), &value);
  if (s.ok()) {
    InvoiceRecord current;
    LEDGER_RETURN_IF_ERROR(ParseInvoiceRecord(value, &current));
    if (!SupersedesInvoice(r, current)) return Status::OK();
  } else if (!s.IsNotFound()) {
    return s;
  }
  std::string record = InvoiceRecordToJson(r);
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("user_id");
  json::OptString(&w, out->user_id);
  w.Key("invoice");
  w.RawValue(record.data(), record.size(), rapidjson::kObjectType);
  w.EndObject();
  out->events.push_back(
      NewEvent{std::string(paid ? kInvoicePaidV1 : kInvoicePaymentFailedV1), "", json::Text(buf)});
  return Status::OK();
}

std::string ReceivedEventData(const StripeWebhook& webhook, const Derivation& derived,
                              std::string_view ignored) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("stripe_event_id");
  json::String(&w, webhook.event_id);
  w.Key("type");
  json::String(&w, webhook.type);
  w.Key("created");
  w.Int64(webhook.created);
  w.Key("api_version");
  json::OptString(&w, webhook.api_version);
  w.Key("livemode");
  w.Bool(webhook.livemode);
  w.Key("raw_sha256");
  json::String(&w, webhook.raw_sha256);
  w.Key("raw_bytes");
  w.Uint64(webhook.raw_bytes);
  w.Key("user_id");
  json::OptString(&w, derived.user_id);
  w.Key("customer_id");
  json::OptString(&w, derived.customer_id);
  w.Key("derived");
  w.StartArray();
  for (const NewEvent& e : derived.events) json::String(&w, e.type);
  w.EndArray();
  if (!ignored.empty()) {
    w.Key("ignored");
    json::String(&w, ignored);
  }
  w.Key("payload");
  w.RawValue(webhook.redacted_payload.data(), webhook.redacted_payload.size(),
             rapidjson::kObjectType);
  w.EndObject();
  return json::Text(buf);
}

std::string ResponseBody(const StripeWebhook& webhook, const Derivation& derived,
                         std::string_view ignored, bool duplicate) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("received");
  w.Bool(true);
  w.Key("event_id");
  json::String(&w, webhook.event_id);
  w.Key("type");
  json::String(&w, webhook.type);
  w.Key("duplicate");
  w.Bool(duplicate);
  w.Key("derived");
  w.StartArray();
  for (const NewEvent& e : derived.events) json::String(&w, e.type);
  w.EndArray();
  if (!ignored.empty()) {
    w.Key("ignored");
    json::String(&w, ignored);
  }
  w.EndObject();
  return json::Text(buf);
}

}  // namespace

bool IsStripeId(std::string_view id) {
  if (id.empty() || id.size() > limits::kStripeIdBytesMax) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

bool IsDeliveredStripeId(std::string_view id) {
  if (id.empty() || id.size() > limits::kStripeIdBytesMax) return false;
  return std::all_of(id.begin(), id.end(), [](char c) { return c > ' ' && c < 0x7f && c != '/'; });
}

Status ParseStripeWebhook(std::string_view raw_body, StripeWebhook* out) {
  *out = StripeWebhook();
  if (raw_body.size() > limits::kStripeWebhookBytesMax) {
    return Status::Make(Code::kPayloadTooLarge, "payload_too_large",
                        "a Stripe event is at most " +
                            std::to_string(limits::kStripeWebhookBytesMax) + " bytes");
  }
  LEDGER_RETURN_IF_ERROR(RedactPayload(raw_body, &out->redacted_payload));
  auto doc = std::make_shared<rapidjson::Document>();
  Status s = ParseJsonObject(out->redacted_payload, doc.get());
  if (!s.ok()) return Malformed(s.message());

  std::optional<std::string> id = Text(Member(doc.get(), "id"), limits::kStripeIdBytesMax);
  if (!id || !IsDeliveredStripeId(*id)) return Malformed("id: a Stripe event id is required");
  std::optional<std::string> type =
      Text(Member(doc.get(), "type"), limits::kStripeEventTypeBytesMax);
  if (!type || !std::all_of(type->begin(), type->end(), IsEventTypeChar)) {
    return Malformed("type: a Stripe event type is required");
  }
  std::optional<int64_t> created = Integer(Member(doc.get(), "created"));
  if (!created || *created < 0) return Malformed("created: Unix seconds are required");
  const Value* api_version = Member(doc.get(), "api_version");
  if (api_version != nullptr && !api_version->IsNull()) {
    out->api_version = ShortText(api_version);
    if (!out->api_version) return Malformed("api_version: must be a string or null");
  }
  const Value* livemode = Member(doc.get(), "livemode");
  if (livemode != nullptr && !livemode->IsBool()) return Malformed("livemode: must be a boolean");
  out->livemode = livemode != nullptr && livemode->GetBool();
  const Value* account = Member(doc.get(), "account");
  if (account != nullptr && !account->IsNull()) {
    if (!account->IsString()) return Malformed("account: must be a string or null");
    if (account->GetStringLength() > 0) {
      out->account = std::string(account->GetString(), account->GetStringLength());
    }
  }
  out->event_id = std::move(*id);
  out->type = std::move(*type);
  out->created = *created;
  out->raw_sha256 = HexEncode(Sha256(raw_body));
  out->raw_bytes = raw_body.size();
  out->payload = std::move(doc);
  return Status::OK();
}

IngestStripeWebhook::IngestStripeWebhook(StripeWebhook webhook,
                                         std::optional<bool> expected_livemode,
                                         bool signed_in_its_mode)
    : webhook_(std::move(webhook)),
      expected_livemode_(expected_livemode),
      signed_in_its_mode_(signed_in_its_mode) {
  idempotency_scope = std::string(kStripeWebhookIdempotencyScope);
  idempotency_key = webhook_.event_id;
  // The event id alone: a redelivery is a duplicate whatever its body.
  request_hash = Sha256(kStripeWebhookIdempotencyScope, webhook_.event_id);
}

Status IngestStripeWebhook::Decide(const DecideContext& context, Decision* decision) {
  // Kept as received, applied to nothing: with one endpoint for both modes
  // (STRIPE_WEBHOOK_SECRET=whsec_live,whsec_test), a test-mode checkout and subscription gave a
  // live user Starter and made the test customer cus_... theirs (checkout and portal then failed
  // with the live key for good); a connected account's event names customers of another account.
  // A body's `livemode` is only as good as the secret that signed it: one claiming live, signed
  // with the test secret, gave anyone holding that secret any plan.
  std::string_view ignored;
  if (!signed_in_its_mode_ || (expected_livemode_ && webhook_.livemode != *expected_livemode_)) {
    ignored = "livemode_mismatch";
  } else if (webhook_.account) {
    ignored = "connected_account";
  }
  Derivation derived;
  if (ignored.empty()) {
    Decider decider(webhook_, *context.state);
    LEDGER_RETURN_IF_ERROR(decider.Run(&derived));
  }
  std::string subject;
  if (derived.user_id) {
    subject = *derived.user_id;
  } else if (derived.customer_id) {
    subject = "stripe_customer:" + *derived.customer_id;
  } else {
    subject = "stripe_event:" + webhook_.event_id;
  }
  decision->http_status = 200;
  decision->body = ResponseBody(webhook_, derived, ignored, /*duplicate=*/false);
  decision->events.clear();
  decision->events.push_back(NewEvent{std::string(kStripeWebhookReceivedV1), subject,
                                      ReceivedEventData(webhook_, derived, ignored)});
  for (NewEvent& e : derived.events) {
    e.subject = subject;
    decision->events.push_back(std::move(e));
  }
  return Status::OK();
}

std::string DuplicateWebhookBody(std::string_view stored_body) {
  return DuplicateDeliveryBody(stored_body);
}

}  // namespace ledger::projections
