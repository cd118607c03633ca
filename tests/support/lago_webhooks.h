// Lago webhook payloads shaped like lago-api's serializers (V1::InvoiceSerializer,
// V1::SubscriptionSerializer) and signed the way lago-api signs them (Webhook#hmac_signature,
// Webhook#jwt_signature), for the webhook route and projection tests.
#pragma once

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <string>

#include "tests/support/tokens.h"

namespace ledger::testing {

struct LagoInvoiceSpec {
  std::string webhook_type = "invoice.created";
  std::string lago_id = "5eb02857-a71e-4ea2-bcf9-57d3a41bc6ba";
  std::string status = "finalized";
  std::string payment_status = "pending";
  std::string updated_at = "2026-11-01T00:00:05Z";
  std::string created_at = "2026-11-01T00:00:00Z";
  std::string external_customer_id = "alice";
  std::string external_subscription_id = "alice";
  int64_t total_amount_cents = 1900;
  int fees = 1;              // fee objects in the payload (to make large bodies)
  std::string extra_member;  // raw `"name":value` appended to the invoice object
  // The payload's top-level organization_id (lago-api: beside webhook_type); "" = none, as from
  // a Lago before webhook endpoints.
  std::string organization_id;
};

inline std::string LagoInvoiceWebhookJson(const LagoInvoiceSpec& s) {
  std::string fees;
  for (int i = 0; i < s.fees; ++i) {
    if (i > 0) fees += ",";
    fees += R"({"lago_id":"fee-)" + std::to_string(i) +
            R"(","amount_cents":100,"amount_currency":"USD","units":"1.0","events_count":1,)"
            R"("item":{"type":"charge","code":"api_calls","name":"API calls \"metered\" <v2>"}})";
  }
  return R"({"webhook_type":")" + s.webhook_type + R"(","object_type":"invoice",)" +
         (s.organization_id.empty() ? "" : R"("organization_id":")" + s.organization_id + "\",") +
         R"("invoice":{)" +
         R"("lago_id":")" + s.lago_id + R"(","sequential_id":2,"number":"LAG-1234-001-002",)" +
         R"("issuing_date":"2026-11-01","payment_due_date":"2026-11-01","net_payment_term":0,)" +
         R"("invoice_type":"subscription","status":")" + s.status + R"(","payment_status":")" +
         s.payment_status + R"(","payment_overdue":false,"currency":"USD","fees_amount_cents":)" +
         std::to_string(s.total_amount_cents) + R"(,"taxes_amount_cents":0,"total_amount_cents":)" +
         std::to_string(s.total_amount_cents) +
         R"(,"total_due_amount_cents":0,"total_paid_amount_cents":0,"file_url":null,)" +
         R"("version_number":4,"created_at":")" + s.created_at + R"(","updated_at":")" +
         s.updated_at + R"(","voided_at":null,"customer":{"lago_id":"99a6094e-199b-4101-896a-)" +
         R"(54e927ce7bd7","external_id":")" + s.external_customer_id +
         R"(","name":"Alice","email":"alice@example.com","currency":"USD"},)" +
         R"("subscriptions":[{"lago_id":"b7ab2926-1de8-4428-9bcd-779314ac129b","external_id":")" +
         s.external_subscription_id + R"(","plan_code":"starter","status":"active"}],)" +
         R"("fees":[)" + fees + "]" + (s.extra_member.empty() ? "" : "," + s.extra_member) + "}}";
}

struct LagoSubscriptionSpec {
  std::string webhook_type = "subscription.started";
  std::string lago_id = "b7ab2926-1de8-4428-9bcd-779314ac129b";
  std::string external_id = "alice";
  std::string external_customer_id = "alice";
  std::string status = "active";
  std::string plan_code = "starter";
  std::string created_at = "2026-11-01T00:00:00Z";
  std::string started_at = "2026-11-01T00:00:00.000Z";  // "" = null
  std::string terminated_at;                            // "" = null
  std::string canceled_at;                              // "" = null
};

inline std::string NullOr(const std::string& s) { return s.empty() ? "null" : "\"" + s + "\""; }

inline std::string LagoSubscriptionWebhookJson(const LagoSubscriptionSpec& s) {
  return R"({"webhook_type":")" + s.webhook_type +
         R"(","object_type":"subscription","subscription":{"lago_id":")" + s.lago_id +
         R"(","external_id":")" + s.external_id +
         R"(","lago_customer_id":"99a6094e-199b-4101-896a-54e927ce7bd7","external_customer_id":")" +
         s.external_customer_id + R"(","name":"","plan_code":")" + s.plan_code +
         R"(","plan_amount_cents":1900,"plan_amount_currency":"USD","status":")" + s.status +
         R"(","billing_time":"calendar","subscription_at":")" + s.created_at +
         R"(","started_at":)" + NullOr(s.started_at) + R"(,"trial_ended_at":null,)" +
         R"("ending_at":null,"terminated_at":)" + NullOr(s.terminated_at) + R"(,"canceled_at":)" +
         NullOr(s.canceled_at) + R"(,"created_at":")" + s.created_at +
         R"(","previous_plan_code":null,"next_plan_code":null,"downgrade_plan_date":null,)" +
         R"("payment_method":{"payment_method_id":null,"payment_method_type":"provider"}}})";
}

// Lago's jwt mode: RS256 over {"data": <body as a JSON string>, "iss": <LAGO_API_URL>} with the
// header {"alg":"RS256"} (ruby-jwt's default header).
inline std::string LagoJwtSignature(const TestSigningKey& key, const std::string& body,
                                    const std::string& issuer) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("data");
  w.String(body.data(), static_cast<rapidjson::SizeType>(body.size()));
  w.Key("iss");
  w.String(issuer.data(), static_cast<rapidjson::SizeType>(issuer.size()));
  w.EndObject();
  return key.SignWithHeader(R"({"alg":"RS256"})", std::string(buf.GetString(), buf.GetSize()));
}

}  // namespace ledger::testing
