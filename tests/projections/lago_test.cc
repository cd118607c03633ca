// The Lago projection (projections/lago.h) without HTTP: parsing deliveries, Lago's timestamps,
// the fold's order safety (every permutation of a lifecycle converges to the same rows), a body
// repeated under another key (recorded, naming the first), and the derived events' schemas.
#include "projections/lago.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "events/limits.h"
#include "projections/limits.h"
#include "tests/support/lago_webhooks.h"
#include "tests/support/memory_state.h"
#include "tests/support/schema_check.h"

namespace ledger::projections {
namespace {

using ledger::testing::LagoInvoiceSpec;
using ledger::testing::LagoInvoiceWebhookJson;
using ledger::testing::LagoSubscriptionSpec;
using ledger::testing::LagoSubscriptionWebhookJson;
using ledger::testing::MemoryState;

struct Delivery {
  std::string key;
  std::string body;
};

// Delivers `body` to in-memory rows as the route would (after the signature check).
Status Deliver(const Delivery& d, MemoryState* state, Position* head,
               std::vector<Event>* applied = nullptr, Decision* decision = nullptr) {
  LagoWebhook webhook;
  LEDGER_RETURN_IF_ERROR(ParseLagoWebhook(d.body, d.key, "hmac", &webhook));
  IngestLagoWebhook command(std::move(webhook));
  static const LagoFold fold;
  Decision local;
  return ledger::testing::RunCommand(&command, {&fold}, state, head, 1'800'000'000'000'000,
                                     decision != nullptr ? decision : &local, applied);
}

std::vector<Delivery> InvoiceLifecycle() {
  LagoInvoiceSpec created;
  created.updated_at = "2026-11-01T00:00:01Z";
  LagoInvoiceSpec failed = created;
  failed.webhook_type = "invoice.payment_status_updated";
  failed.payment_status = "failed";
  failed.updated_at = "2026-11-01T00:05:00Z";
  LagoInvoiceSpec succeeded = failed;
  succeeded.payment_status = "succeeded";
  succeeded.updated_at = "2026-11-03T00:00:00+00:00";
  LagoInvoiceSpec same_second = succeeded;  // same updated_at, lower payment rank: loses
  same_second.webhook_type = "invoice.payment_overdue";
  same_second.payment_status = "pending";
  same_second.updated_at = "2026-11-03T01:00:00+01:00";  // the same instant, another offset
  return {{"i1", LagoInvoiceWebhookJson(created)},
          {"i2", LagoInvoiceWebhookJson(failed)},
          {"i3", LagoInvoiceWebhookJson(succeeded)},
          {"i4", LagoInvoiceWebhookJson(same_second)}};
}

std::vector<Delivery> SubscriptionLifecycle() {
  LagoSubscriptionSpec a;
  LagoSubscriptionSpec a_ended = a;
  a_ended.webhook_type = "subscription.terminated";
  a_ended.status = "terminated";
  a_ended.terminated_at = "2026-11-15T00:00:00Z";
  LagoSubscriptionSpec b;
  b.lago_id = "c1d2e3f4-0000-4000-8000-000000000002";
  b.plan_code = "professional";
  b.created_at = "2026-11-15T00:00:00Z";
  b.started_at = "2026-11-15T00:00:00.000Z";
  LagoSubscriptionSpec b_pending = b;  // its creation, before it started
  b_pending.webhook_type = "subscription.updated";
  b_pending.status = "pending";
  b_pending.started_at = "";
  return {{"s1", LagoSubscriptionWebhookJson(a)},
          {"s2", LagoSubscriptionWebhookJson(a_ended)},
          {"s3", LagoSubscriptionWebhookJson(b)},
          {"s4", LagoSubscriptionWebhookJson(b_pending)}};
}

MemoryState::Rows::mapped_type RunInOrder(const std::vector<Delivery>& deliveries) {
  MemoryState state;
  Position head;
  for (const Delivery& d : deliveries) {
    Status s = Deliver(d, &state, &head);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  return state.rows().at(std::string(kLagoFamily));
}

TEST(LagoTimeTest, ParsesWhatLagoSerializes) {
  EXPECT_EQ(ParseLagoTimeMs("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(ParseLagoTimeMs("2022-04-29T08:59:51Z"), 1651222791000);
  EXPECT_EQ(ParseLagoTimeMs("2022-04-29T08:59:51.123Z"), 1651222791123);
  EXPECT_EQ(ParseLagoTimeMs("2022-04-29T08:59:51.1239Z"), 1651222791123);
  EXPECT_EQ(ParseLagoTimeMs("2022-04-29T10:59:51+02:00"), 1651222791000);
  EXPECT_EQ(ParseLagoTimeMs("2022-04-29T06:29:51-02:30"), 1651222791000);
  EXPECT_EQ(ParseLagoTimeMs("2024-02-29T00:00:00Z"), 1709164800000);
  for (const char* bad :
       {"", "2022-04-29", "2022-04-29T08:59:51", "2022-13-01T00:00:00Z", "2022-04-29T08:59:51.Z",
        "2022-04-29T08:59:51Zjunk", "2022-04-29 08:59:51Z", "2022-04-29T08:59:51+0200"}) {
    EXPECT_FALSE(ParseLagoTimeMs(bad).has_value()) << bad;
  }
}

TEST(LagoWebhookParseTest, RejectsWhatIsNotALagoWebhook) {
  LagoWebhook webhook;
  EXPECT_TRUE(ParseLagoWebhook(R"({"webhook_type":"invoice.created","object_type":"invoice"})", "k",
                               "hmac", &webhook)
                  .ok());
  EXPECT_EQ(webhook.webhook_type, "invoice.created");
  EXPECT_EQ(webhook.object_type, "invoice");
  const std::vector<std::string> bad_bodies = {
      "",
      "[]",
      "null",
      R"({"object_type":"invoice"})",
      R"({"webhook_type":"invoice.created"})",
      R"({"webhook_type":"Invoice Created","object_type":"invoice"})",
      R"({"webhook_type":"a","object_type":"b","webhook_type":"c"})",
      R"({"webhook_type":"invoice.created","object_type":7})",
      "{\"webhook_type\":\"\xff\"}"};
  for (const std::string& body : bad_bodies) {
    EXPECT_EQ(ParseLagoWebhook(body, "k", "hmac", &webhook).problem(), "malformed_event") << body;
  }
  EXPECT_EQ(
      ParseLagoWebhook(R"({"webhook_type":"a","object_type":"b"})", "", "hmac", &webhook).problem(),
      "invalid_unique_key");
  EXPECT_EQ(ParseLagoWebhook(R"({"webhook_type":"a","object_type":"b"})", std::string(256, 'k'),
                             "hmac", &webhook)
                .problem(),
            "invalid_unique_key");
  EXPECT_EQ(ParseLagoWebhook(std::string(600 * 1024, ' '), "k", "jwt", &webhook).code(),
            Code::kPayloadTooLarge);
  EXPECT_EQ(ParseLagoWebhook(std::string(limits::kLagoWebhookPayloadBytesMax + 1, ' '), "k",
                             "hmac", &webhook)
                .code(),
            Code::kPayloadTooLarge);
  // Within the raw bound, but "[redacted]" in place of each `url` makes the payload too large to
  // store.
  std::string urls = R"({"webhook_type":"a","object_type":"b","x":[{"url":0})";
  while (urls.size() + 12 < limits::kLagoWebhookPayloadBytesMax) urls += R"(,{"url":0})";
  urls += "]}";
  ASSERT_LE(urls.size(), limits::kLagoWebhookPayloadBytesMax);
  EXPECT_EQ(ParseLagoWebhook(urls, "k", "hmac", &webhook).code(), Code::kPayloadTooLarge);
}

TEST(LagoFoldTest, EveryDeliveryOrderGivesTheSameRows) {
  for (const auto& lifecycle : {InvoiceLifecycle(), SubscriptionLifecycle()}) {
    std::vector<Delivery> order = lifecycle;
    const auto expected = RunInOrder(order);
    size_t permutations = 0;
    std::sort(order.begin(), order.end(),
              [](const Delivery& a, const Delivery& b) { return a.key < b.key; });
    do {
      ++permutations;
      EXPECT_EQ(RunInOrder(order), expected);
    } while (
        std::next_permutation(order.begin(), order.end(),
                              [](const Delivery& a, const Delivery& b) { return a.key < b.key; }));
    EXPECT_EQ(permutations, 24u);
  }
  // Both lifecycles interleaved, in random orders.
  std::vector<Delivery> all = InvoiceLifecycle();
  for (const Delivery& d : SubscriptionLifecycle()) all.push_back(d);
  const auto expected = RunInOrder(all);
  std::mt19937 rng(42);
  for (int i = 0; i < 200; ++i) {
    std::shuffle(all.begin(), all.end(), rng);
    EXPECT_EQ(RunInOrder(all), expected);
  }

  MemoryState state;
  Position head;
  for (const Delivery& d : all) ASSERT_TRUE(Deliver(d, &state, &head).ok());
  LagoInvoice invoice;
  ASSERT_TRUE(GetLagoInvoice(state, LagoInvoiceSpec{}.lago_id, &invoice).ok());
  EXPECT_EQ(invoice.status, "finalized");
  EXPECT_EQ(invoice.payment_status, "succeeded");
  EXPECT_EQ(invoice.unique_key, "i3");
  LagoSubscription effective;
  ASSERT_TRUE(GetLagoSubscription(state, "alice", &effective).ok());
  EXPECT_EQ(effective.plan_code, "professional");
  EXPECT_EQ(effective.status, "active");
  std::vector<LagoInvoice> invoices;
  ASSERT_TRUE(ListLagoCustomerInvoices(state, "alice", 10, &invoices).ok());
  EXPECT_EQ(invoices.size(), 1u);
  EXPECT_TRUE(GetLagoSubscription(state, "nobody", &effective).IsNotFound());
}

TEST(LagoFoldTest, DerivedEventsMatchTheirSchemas) {
  MemoryState state;
  Position head;
  std::vector<Event> applied;
  for (const auto& lifecycle : {InvoiceLifecycle(), SubscriptionLifecycle()}) {
    for (const Delivery& d : lifecycle) ASSERT_TRUE(Deliver(d, &state, &head, &applied).ok());
  }
  // An untracked object type, naming a customer.
  ASSERT_TRUE(Deliver({"f1", R"({"webhook_type":"fee.created","object_type":"fee","fee":)"
                             R"({"lago_id":"f","external_customer_id":"bob"}})"},
                      &state, &head, &applied)
                  .ok());
  size_t derived = 0;
  for (const Event& e : applied) {
    EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.type << " " << e.data;
    if (e.type != kLagoWebhookReceivedV1) ++derived;
  }
  EXPECT_EQ(applied.size(), 9u + derived);
  EXPECT_EQ(applied.back().subject, "bob");
}

// Lago sends some payloads with nothing that changes between deliveries (a dunning retry declined
// the same way): the same body under a new unique key is a new delivery, recorded as repeating
// the first key that delivered it, and changes no derived state. Folding the events again gives
// the same rows.
TEST(LagoFoldTest, TheSameBodyUnderAnotherKeyIsRecordedAsARepeat) {
  MemoryState state;
  Position head;
  std::vector<Event> applied;
  const std::string body = InvoiceLifecycle()[0].body;
  Decision decision;
  ASSERT_TRUE(Deliver({"k1", body}, &state, &head, &applied, &decision).ok());
  EXPECT_EQ(decision.events.size(), 2u);
  EXPECT_NE(decision.body.find(R"("repeat_of_unique_key":null)"), std::string::npos)
      << decision.body;
  const MemoryState::Rows after_first = state.rows();
  for (const char* key : {"k2", "k3"}) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(Deliver({key, body}, &state, &head, &applied, &decision).ok());
    ASSERT_EQ(decision.events.size(), 1u);
    EXPECT_EQ(decision.events[0].type, kLagoWebhookReceivedV1);
    EXPECT_NE(decision.events[0].data.find(R"("repeat_of_unique_key":"k1")"), std::string::npos)
        << decision.events[0].data;
    EXPECT_NE(decision.body.find(R"("duplicate":false,"repeat_of_unique_key":"k1")"),
              std::string::npos)
        << decision.body;
  }
  // The delivery row keeps the first key and no state moved; only the repeats are counted.
  MemoryState::Rows changed = state.rows();
  size_t counters = 0;
  for (auto& [family, rows] : changed) {
    for (auto it = rows.begin(); it != rows.end();) {
      if (it->first.rfind("delivery_repeats/", 0) != 0) {
        ++it;
        continue;
      }
      EXPECT_EQ(it->second, "2");
      ++counters;
      it = rows.erase(it);
    }
  }
  EXPECT_EQ(counters, 1u);
  EXPECT_EQ(changed, after_first);
  // Neither the unique key nor a time is signed: one captured body replayed under fresh keys is
  // recorded kLagoBodyRepeatsMax times at most, then refused with nothing appended.
  for (uint64_t i = 3; i <= projections::limits::kLagoBodyRepeatsMax; ++i) {
    ASSERT_TRUE(Deliver({"k" + std::to_string(i + 1), body}, &state, &head, &applied).ok()) << i;
  }
  const size_t recorded = applied.size();
  Status refused = Deliver({"k-over", body}, &state, &head, &applied, &decision);
  EXPECT_EQ(refused.problem(), "repeat_limit_reached") << refused.ToString();
  EXPECT_EQ(refused.code(), Code::kConflict);
  EXPECT_EQ(applied.size(), recorded);
  MemoryState refolded;
  static const LagoFold fold;
  for (const Event& e : applied) {
    EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.type << " " << e.data;
    ASSERT_TRUE(fold.Apply(e, refolded, &refolded).ok());
  }
  EXPECT_EQ(refolded.rows(), state.rows());
  EXPECT_EQ(DuplicateLagoWebhookBody(R"({"received":true,"duplicate":false})"),
            R"({"received":true,"duplicate":true})");
  EXPECT_EQ(DuplicateLagoWebhookBody(
                R"({"received":true,"duplicate":false,"derived":["lago.invoice_updated.v1"]})"),
            R"({"received":true,"duplicate":true,"derived":[]})");
}

TEST(LagoFoldTest, SubjectsFallBackWhenNoCustomerIsNamed) {
  MemoryState state;
  Position head;
  std::vector<Event> applied;
  ASSERT_TRUE(Deliver({"k/1", R"({"webhook_type":"event.error","object_type":"event_error",)"
                              R"("event_error":{"lago_customer_id":"lc-1"}})"},
                      &state, &head, &applied)
                  .ok());
  ASSERT_TRUE(
      Deliver({"k2", R"({"webhook_type":"x.y","object_type":"z"})"}, &state, &head, &applied).ok());
  // A customer.* delivery whose external id is no user id: the customer's own lago_id, the
  // subject an invoice naming customer.lago_id gets.
  ASSERT_TRUE(Deliver({"k/c", R"({"webhook_type":"customer.updated","object_type":"customer",)"
                              R"("customer":{"lago_id":"lc-2","external_id":"a/b"}})"},
                      &state, &head, &applied)
                  .ok());
  ASSERT_TRUE(Deliver({"k/i", R"({"webhook_type":"invoice.created","object_type":"invoice",)"
                              R"("invoice":{"lago_id":"inv-2","status":"draft",)"
                              R"("customer":{"lago_id":"lc-2","external_id":"a/b"}}})"},
                      &state, &head, &applied)
                  .ok());
  ASSERT_GE(applied.size(), 4u);
  EXPECT_EQ(applied[0].subject, "lago_customer:lc-1");
  EXPECT_EQ(applied[1].subject, "lago_webhook:k2");
  EXPECT_EQ(applied[2].subject, "lago_customer:lc-2");
  EXPECT_EQ(applied[3].subject, "lago_customer:lc-2");
  applied.resize(2);

  // A long unique key or Lago customer id (255 bytes are allowed) still makes a subject the log
  // takes (at most 256 bytes): its SHA-256 stands in for it.
  const std::string long_key(250, 'k');
  const std::string long_id(250, 'c');
  ASSERT_TRUE(Deliver({long_key, R"({"webhook_type":"x.y","object_type":"w"})"}, &state, &head,
                      &applied)
                  .ok());
  ASSERT_TRUE(Deliver({"k3", R"({"webhook_type":"event.error","object_type":"event_error",)"
                             R"("event_error":{"lago_customer_id":")" +
                                 long_id + R"("}})"},
                      &state, &head, &applied)
                  .ok());
  ASSERT_EQ(applied.size(), 4u);
  EXPECT_EQ(applied[2].subject, "lago_webhook:sha256:" + HexEncode(Sha256(long_key)));
  EXPECT_EQ(applied[3].subject, "lago_customer:sha256:" + HexEncode(Sha256(long_id)));
  for (const Event& event : applied) {
    EXPECT_LE(event.subject.size(), ::ledger::limits::kSubjectBytesMax) << event.subject;
  }
}

}  // namespace
}  // namespace ledger::projections
