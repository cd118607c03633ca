// The subscription projection and the Stripe webhook decider, on in-memory rows (every delivery
// order of the lifecycle) and on a real Ledger (duplicates, replay).
#include "projections/subscriptions.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <numeric>
#include <random>
#include <thread>

#include <rapidjson/document.h>

#include "projections/admin.h"
#include "projections/limits.h"
#include "projections/registry.h"
#include "projections/stripe_webhook.h"
#include "projections/usage.h"
#include "tests/support/billing_fixtures.h"
#include "tests/support/memory_state.h"
#include "tests/support/schema_check.h"
#include "tests/support/stripe_events.h"
#include "tests/support/test_ledger.h"

namespace ledger::projections {
namespace {

using ledger::testing::EventDataMatchesSchema;
using ledger::testing::EventMatchesSchema;
using ledger::testing::MemoryState;
using ledger::testing::StripeCheckoutCompletedJson;
using ledger::testing::StripeCheckoutSpec;
using ledger::testing::StripeInvoiceEventJson;
using ledger::testing::StripeInvoiceSpec;
using ledger::testing::StripeLifecycle;
using ledger::testing::StripeLifecycleSpec;
using ledger::testing::StripeSubscriptionEventJson;
using ledger::testing::StripeSubscriptionSpec;
using ledger::testing::kStripeT0;

constexpr int64_t kNowUs = (kStripeT0 + 100) * 1'000'000;

using Rows = std::map<std::string, std::string>;

class SubscriptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(&base_, &base_head_, kNowUs).ok());
    // user-1 opened the lifecycle's Checkout Session through ledgerd (StripeLifecycle's
    // cs_sub_1): only such a session names its user when it completes.
    ASSERT_TRUE(
        ledger::testing::OpenCheckoutSession(&base_, &base_head_, "cs_sub_1", "user-1", kNowUs)
            .ok());
  }

  // A fresh copy of the seeded catalog.
  struct World {
    MemoryState state;
    Position head;
    std::vector<Event> events;
  };
  World Fresh() const { return World{base_, base_head_, {}}; }

  Decision Deliver(World* world, const std::string& raw) {
    Decision decision;
    Status s = ledger::testing::DeliverWebhook(&world->state, &world->head, raw, kNowUs,
                                               &decision, &world->events);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return decision;
  }

  // user-1's Starter (sub_starter), with cancel_at `starter_end` when given, and a newer
  // Professional (sub_pro) canceled at its period's end `pro_end`; no deletions. Returns the
  // Professional's spec.
  StripeSubscriptionSpec DeliverStarterEndingAtAndANewerProfessionalEndingBefore(
      World* w, std::optional<int64_t> starter_end, int64_t pro_end) {
    StripeSubscriptionSpec starter;
    starter.event_id = "evt_starter";
    starter.subscription_id = "sub_starter";
    starter.item_id = "si_starter";
    starter.created = kStripeT0 - 60 * 86400;
    starter.cancel_at = starter_end;
    Deliver(w, StripeSubscriptionEventJson(starter));
    StripeSubscriptionSpec pro;
    pro.event_id = "evt_pro";
    pro.event_created = kStripeT0 + 1;
    pro.subscription_id = "sub_pro";
    pro.item_id = "si_pro";
    pro.price_id = "price_professional_monthly";
    pro.unit_amount = 4900;
    pro.created = kStripeT0 - 20 * 86400;
    pro.period_start = pro_end - 30 * 86400;
    pro.period_end = pro_end;
    pro.cancel_at_period_end = true;
    Deliver(w, StripeSubscriptionEventJson(pro));
    return pro;
  }

  static Rows SubscriptionRows(const World& world) {
    auto it = world.state.rows().find(std::string(kSubscriptionsFamily));
    return it == world.state.rows().end() ? Rows() : it->second;
  }

  static UserSubscription Query(const World& world, std::string_view user) {
    UserSubscription out;
    Status s = GetUserSubscription(world.state, user, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }

  static UserAccess Access(const World& world, std::string_view user) {
    UserAccess out;
    Status s = GetUserAccess(world.state, user, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }

  static std::vector<std::string> Types(const Decision& d) {
    std::vector<std::string> types;
    for (const NewEvent& e : d.events) types.push_back(e.type);
    return types;
  }

  MemoryState base_;
  Position base_head_;
};

// ---- the lifecycle --------------------------------------------------------------------------------

TEST_F(SubscriptionsTest, LifecycleInOrderWalksTheStatuses) {
  World w = Fresh();
  std::vector<std::string> deliveries = StripeLifecycle({});

  Decision d = Deliver(&w, deliveries[0]);
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1",
                                                "customer.linked.v1",
                                                "subscription.checkout_completed.v1"}));
  UserSubscription sub = Query(w, "user-1");
  EXPECT_FALSE(sub.has_subscription);  // linked, but no subscription event yet
  EXPECT_EQ(sub.customer_id, "cus_1");
  EXPECT_EQ(sub.email, "user-1@example.com");
  EXPECT_EQ(sub.status_name(), "none");

  d = Deliver(&w, deliveries[1]);
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1",
                                                "subscription.state_changed.v1"}));
  EXPECT_EQ(d.events[0].subject, "user-1");
  sub = Query(w, "user-1");
  ASSERT_TRUE(sub.has_subscription);
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kTrialing);
  EXPECT_EQ(sub.subscription.plan_id, "starter");
  EXPECT_EQ(sub.subscription.item_id, "si_sub_1");
  EXPECT_EQ(sub.subscription.trial_end, kStripeT0 + 7 * 86400);
  EXPECT_EQ(sub.access(), AccessLevel::kGranted);

  Deliver(&w, deliveries[2]);
  EXPECT_EQ(Query(w, "user-1").subscription.status, SubscriptionStatus::kActive);
  EXPECT_EQ(Query(w, "user-1").subscription.current_period_end,
            kStripeT0 + 37 * 86400);

  d = Deliver(&w, deliveries[3]);
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1",
                                                "invoice.payment_failed.v1"}));
  sub = Query(w, "user-1");
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kActive);  // Stripe's update decides
  ASSERT_TRUE(sub.latest_invoice);
  EXPECT_FALSE(sub.latest_invoice->paid);
  EXPECT_EQ(sub.latest_invoice->subscription_id, "sub_1");

  Deliver(&w, deliveries[4]);
  sub = Query(w, "user-1");
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kPastDue);
  EXPECT_EQ(sub.access(), AccessLevel::kGrace);
  EXPECT_TRUE(CheckServiceAccess(Access(w, "user-1"), "chat").allowed);

  Deliver(&w, deliveries[5]);
  EXPECT_EQ(Query(w, "user-1").access(), AccessLevel::kGranted);

  Deliver(&w, deliveries[6]);
  sub = Query(w, "user-1");
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kCanceled);
  EXPECT_TRUE(sub.subscription.deleted);
  EXPECT_EQ(sub.subscription.ended_at, kStripeT0 + 6);
  EXPECT_EQ(sub.access(), AccessLevel::kNone);
  ServiceAccess chat = CheckServiceAccess(Access(w, "user-1"), "chat");
  EXPECT_FALSE(chat.allowed);
  EXPECT_EQ(chat.reason, "subscription_inactive");

  for (const Event& e : w.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
}

class LifecycleOrderTest : public SubscriptionsTest {
 protected:
  World Run(const std::vector<std::string>& deliveries, const std::vector<size_t>& order) {
    World w = Fresh();
    for (size_t i : order) Deliver(&w, deliveries[i]);
    return w;
  }

  // Every permutation of `deliveries` ends in rows byte-identical to the in-order run, and every
  // event decided along the way validates against its schema. The orders are walked as a tree
  // (depth-first, the state after a shared prefix computed once), with deliveries parsed once.
  void ExpectEveryOrderConverges(const std::vector<std::string>& deliveries, Rows* reference) {
    std::vector<size_t> in_order(deliveries.size());
    std::iota(in_order.begin(), in_order.end(), 0);
    *reference = SubscriptionRows(Run(deliveries, in_order));
    std::vector<StripeWebhook> parsed(deliveries.size());
    for (size_t i = 0; i < deliveries.size(); ++i) {
      ASSERT_TRUE(ParseStripeWebhook(deliveries[i], &parsed[i]).ok());
    }
    Walk walk{parsed, *reference, std::vector<bool>(parsed.size()), {}, 0};
    Explore(Fresh(), &walk);
    size_t expected = 1;
    for (size_t n = 2; n <= deliveries.size(); ++n) expected *= n;
    EXPECT_EQ(walk.leaves, expected);
  }

 private:
  struct Walk {
    const std::vector<StripeWebhook>& parsed;
    const Rows& reference;
    std::vector<bool> used;
    std::vector<size_t> order;
    size_t leaves;
  };

  void Explore(const World& world, Walk* walk) {
    if (HasFailure()) return;
    if (walk->order.size() == walk->parsed.size()) {
      ++walk->leaves;
      Rows rows = SubscriptionRows(world);
      if (rows == walk->reference) return;
      std::string o;
      for (size_t i : walk->order) o += std::to_string(i) + " ";
      ADD_FAILURE() << "delivery order " << o << "diverged";
      for (const auto& [k, v] : rows) {
        auto it = walk->reference.find(k);
        if (it == walk->reference.end() || it->second != v) ADD_FAILURE() << k << " = " << v;
      }
      return;
    }
    for (size_t i = 0; i < walk->parsed.size(); ++i) {
      if (walk->used[i]) continue;
      World next{world.state, world.head, {}};
      IngestStripeWebhook command(walk->parsed[i]);
      Decision decision;
      Status s = ledger::testing::RunCommand(&command, AllFolds(), &next.state, &next.head,
                                             kNowUs, &decision);
      ASSERT_TRUE(s.ok()) << s.ToString();
      for (const NewEvent& e : decision.events) ASSERT_TRUE(EventMatchesSchema(e)) << e.type;
      walk->used[i] = true;
      walk->order.push_back(i);
      Explore(next, walk);
      walk->order.pop_back();
      walk->used[i] = false;
    }
  }
};

TEST_F(LifecycleOrderTest, EveryOrderOfTheFullLifecycleEndsCanceled) {
  std::vector<std::string> deliveries = StripeLifecycle({});
  Rows reference;
  ExpectEveryOrderConverges(deliveries, &reference);  // 7! = 5040 orders
  World w = Run(deliveries, {6, 5, 4, 3, 2, 1, 0});
  UserSubscription sub = Query(w, "user-1");
  ASSERT_TRUE(sub.has_subscription);
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kCanceled);
  EXPECT_EQ(sub.subscription.event_id, "evt_lc_6");
  EXPECT_EQ(sub.subscription.plan_id, "starter");
  EXPECT_EQ(sub.customer_id, "cus_1");
  EXPECT_EQ(sub.email, "user-1@example.com");
  EXPECT_EQ(SubscriptionRows(w), reference);
}

TEST_F(LifecycleOrderTest, EveryOrderWithoutTheCancellationEndsActive) {
  std::vector<std::string> deliveries = StripeLifecycle({});
  deliveries.pop_back();
  Rows reference;
  ExpectEveryOrderConverges(deliveries, &reference);  // 6! = 720 orders
  World w = Run(deliveries, {5, 4, 3, 2, 1, 0});
  UserSubscription sub = Query(w, "user-1");
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kActive);
  EXPECT_EQ(sub.subscription.event_id, "evt_lc_5");
  EXPECT_EQ(sub.access(), AccessLevel::kGranted);
  EXPECT_TRUE(CheckServiceAccess(Access(w, "user-1"), "search").allowed);
}

TEST_F(LifecycleOrderTest, OldApiLayoutConvergesToTheSameState) {
  StripeLifecycleSpec spec;
  spec.new_layout = false;
  std::vector<std::string> old_layout = StripeLifecycle(spec);
  std::vector<std::string> new_layout = StripeLifecycle({});
  // The old layout really has no item-level period, the new one no top-level period.
  EXPECT_EQ(old_layout[2].find("\"items\":{\"object\":\"list\",\"data\":[{\"id\":\"si_sub_1\","
                               "\"object\":\"subscription_item\",\"current_period_start\""),
            std::string::npos);
  EXPECT_NE(new_layout[2].find("\"object\":\"subscription_item\",\"current_period_start\""),
            std::string::npos);
  EXPECT_NE(old_layout[3].find("\"subscription\":\"sub_1\""), std::string::npos);
  EXPECT_EQ(old_layout[3].find("\"parent\""), std::string::npos);

  std::mt19937 rng(20250331);
  std::vector<size_t> order(old_layout.size());
  std::iota(order.begin(), order.end(), 0);
  World reference_new = Run(new_layout, order);
  UserSubscription expected = Query(reference_new, "user-1");
  for (int i = 0; i < 200; ++i) {
    std::shuffle(order.begin(), order.end(), rng);
    World w = Run(old_layout, order);
    UserSubscription got = Query(w, "user-1");
    EXPECT_EQ(got.subscription.current_period_start, expected.subscription.current_period_start);
    EXPECT_EQ(got.subscription.current_period_end, expected.subscription.current_period_end);
    EXPECT_EQ(got.subscription.status, SubscriptionStatus::kCanceled);
    ASSERT_TRUE(got.latest_invoice);
    EXPECT_EQ(got.latest_invoice->subscription_id, "sub_1");
  }
  // Without the cancellation the billing period is the active one in both layouts.
  old_layout.pop_back();
  order.resize(old_layout.size());
  std::iota(order.begin(), order.end(), 0);
  World w = Run(old_layout, order);
  EXPECT_EQ(Query(w, "user-1").subscription.current_period_start, kStripeT0 + 7 * 86400);
  EXPECT_EQ(Query(w, "user-1").subscription.current_period_end, kStripeT0 + 37 * 86400);
}

TEST_F(SubscriptionsTest, KeepsWhatStripeBillsForTheItem) {
  World w = Fresh();
  StripeSubscriptionSpec spec;
  spec.event_id = "evt_billed";
  spec.unit_amount = 1500;  // a price kept from before the catalog's went up
  spec.quantity = 3;
  spec.interval_count = 3;
  Decision d = Deliver(&w, StripeSubscriptionEventJson(spec));
  for (const NewEvent& e : d.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.data;
  SubscriptionRecord r = Query(w, "user-1").subscription;
  EXPECT_EQ(r.unit_amount, 1500);
  EXPECT_EQ(r.quantity, 3);
  EXPECT_EQ(r.interval_count, 3);
  EXPECT_EQ(r.currency, "usd");

  // A tiered price has no unit_amount; an absurd amount or quantity is not kept either.
  World tiered = Fresh();
  spec.unit_amount = std::nullopt;
  spec.quantity = 2'000'000;
  spec.interval_count = 0;
  spec.currency = "USD";
  Deliver(&tiered, StripeSubscriptionEventJson(spec));
  r = Query(tiered, "user-1").subscription;
  EXPECT_EQ(r.unit_amount, std::nullopt);
  EXPECT_EQ(r.quantity, std::nullopt);
  EXPECT_EQ(r.interval_count, std::nullopt);
  EXPECT_EQ(r.currency, std::nullopt);
  EXPECT_EQ(r.plan_id, "starter");

  // A row written before these were kept still reads.
  SubscriptionRecord old;
  std::string json = SubscriptionRecordToJson(Query(w, "user-1").subscription);
  for (const char* field : {"\"unit_amount\":1500,", "\"quantity\":3,", "\"interval_count\":3,",
                            "\"currency\":\"usd\","}) {
    const size_t at = json.find(field);
    ASSERT_NE(at, std::string::npos) << field << " in " << json;
    json.erase(at, std::string_view(field).size());
  }
  ASSERT_TRUE(ParseSubscriptionRecord(json, &old).ok()) << json;
  EXPECT_EQ(old.unit_amount, std::nullopt);
  EXPECT_EQ(old.subscription_id, "sub_1");
}

// What Stripe bills (unit_amount, quantity, interval_count, currency: the MRR reads them) is in
// every subscription.state_changed.v1 written now and in none written before ledgerd kept it.
// The schema cannot require the four (older logs must still validate), but it holds them
// together: an event with some and not the others validated, so a writer that dropped one (the
// currency, say) went unnoticed by every test.
TEST_F(SubscriptionsTest, TheBilledPriceIsInAStateChangedEventWholeOrNotAtAll) {
  World w = Fresh();
  StripeSubscriptionSpec spec;
  spec.event_id = "evt_billed";
  spec.unit_amount = std::nullopt;  // null, still there: a tiered price
  Decision d = Deliver(&w, StripeSubscriptionEventJson(spec));
  std::string data;
  for (const NewEvent& e : d.events) {
    if (e.type == kSubscriptionStateChangedV1) data = e.data;
  }
  ASSERT_FALSE(data.empty());
  EXPECT_TRUE(EventDataMatchesSchema(kSubscriptionStateChangedV1, data)) << data;

  const std::vector<std::string> billed = {"\"unit_amount\":null,", "\"quantity\":1,",
                                           "\"interval_count\":1,", "\"currency\":\"usd\","};
  auto without = [&](const std::vector<std::string>& fields) {
    std::string json = data;
    for (const std::string& field : fields) {
      const size_t at = json.find(field);
      EXPECT_NE(at, std::string::npos) << field << " in " << json;
      if (at != std::string::npos) json.erase(at, field.size());
    }
    return json;
  };
  // Written before ledgerd kept the four: none of them, still valid.
  std::string old = without(billed);
  EXPECT_TRUE(EventDataMatchesSchema(kSubscriptionStateChangedV1, old)) << old;
  // Some of the four without the others is no event ledgerd ever wrote.
  for (const std::string& field : billed) {
    std::string partial = without({field});
    EXPECT_FALSE(EventDataMatchesSchema(kSubscriptionStateChangedV1, partial)) << partial;
    std::vector<std::string> others = billed;
    others.erase(std::find(others.begin(), others.end(), field));
    partial = without(others);
    EXPECT_FALSE(EventDataMatchesSchema(kSubscriptionStateChangedV1, partial)) << partial;
  }
}

// ---- out of order, ties, terminal states ------------------------------------------------------------

TEST_F(SubscriptionsTest, CancellationBeforeAnOlderUpdateStaysCanceled) {
  World w = Fresh();
  std::vector<std::string> lifecycle = StripeLifecycle({});
  Deliver(&w, lifecycle[6]);  // deleted (t0+6)
  Decision stale = Deliver(&w, lifecycle[5]);  // updated active (t0+5)
  // No state change; only the link's time moves back to t0+5 (its earliest delivery).
  EXPECT_EQ(Types(stale),
            (std::vector<std::string>{"stripe.webhook_received.v1", "customer.linked.v1"}));
  EXPECT_EQ(Query(w, "user-1").subscription.status, SubscriptionStatus::kCanceled);

  // Even an update stamped LATER than the deletion cannot revive a deleted subscription.
  StripeSubscriptionSpec revive;
  revive.event_id = "evt_late_update";
  revive.event_created = kStripeT0 + 1000;
  revive.status = "active";
  revive.item_id = "si_sub_1";
  Decision late = Deliver(&w, StripeSubscriptionEventJson(revive));
  EXPECT_EQ(Types(late), (std::vector<std::string>{"stripe.webhook_received.v1"}));
  EXPECT_EQ(Query(w, "user-1").subscription.status, SubscriptionStatus::kCanceled);
}

TEST_F(SubscriptionsTest, EqualSecondTiesConvergeInBothOrders) {
  StripeSubscriptionSpec active;
  active.event_id = "evt_b_active";
  active.event_created = kStripeT0 + 50;
  active.status = "active";
  StripeSubscriptionSpec past_due = active;
  past_due.event_id = "evt_a_past_due";
  past_due.status = "past_due";
  StripeSubscriptionSpec deleted = active;
  deleted.event_id = "evt_0_deleted";
  deleted.event_type = "customer.subscription.deleted";
  deleted.status = "canceled";
  const std::vector<std::string> all = {StripeSubscriptionEventJson(active),
                                        StripeSubscriptionEventJson(past_due),
                                        StripeSubscriptionEventJson(deleted)};
  std::vector<size_t> order = {0, 1, 2};
  std::optional<Rows> reference;
  do {
    World w = Fresh();
    for (size_t i : order) Deliver(&w, all[i]);
    EXPECT_EQ(Query(w, "user-1").subscription.status, SubscriptionStatus::kCanceled);
    if (!reference) reference = SubscriptionRows(w);
    EXPECT_EQ(SubscriptionRows(w), *reference);
  } while (std::next_permutation(order.begin(), order.end()));

  // Two updates in the same second, without a cancellation: one fixed winner.
  std::optional<SubscriptionStatus> winner;
  for (auto pair : {std::vector<size_t>{0, 1}, std::vector<size_t>{1, 0}}) {
    World w = Fresh();
    for (size_t i : pair) Deliver(&w, all[i]);
    SubscriptionStatus status = Query(w, "user-1").subscription.status;
    if (!winner) winner = status;
    EXPECT_EQ(status, *winner);
  }
}

// data.previous_attributes of an update that moved sub_1's item si_1 off `price_id`.
std::string PreviousItems(std::string_view price_id) {
  return R"({"items":{"object":"list","data":[{"id":"si_1","object":"subscription_item",)"
         R"("current_period_start":)" + std::to_string(kStripeT0) +
         R"(,"current_period_end":)" + std::to_string(kStripeT0 + 30 * 86400) +
         R"(,"price":{"id":")" + std::string(price_id) +
         R"(","object":"price"},"quantity":1}]}})";
}

// created (t0+10), then two plan changes stamped in one second (t0+11) whose event ids sort
// against the order Stripe made them in: Starter -> Professional (evt_1Zzzz) -> Starter yearly
// (evt_1Bbbb, its previous_attributes naming Professional's price).
std::vector<std::string> SameSecondPlanChanges() {
  StripeSubscriptionSpec created;
  created.event_id = "evt_1Aaaa";
  created.event_type = "customer.subscription.created";
  created.event_created = kStripeT0 + 10;
  created.item_id = "si_1";
  created.price_id = "price_starter_monthly";
  StripeSubscriptionSpec professional = created;
  professional.event_id = "evt_1Zzzz";
  professional.event_type = "customer.subscription.updated";
  professional.event_created = kStripeT0 + 11;
  professional.price_id = "price_professional_monthly";
  professional.unit_amount = 4900;
  professional.previous_attributes = PreviousItems("price_starter_monthly");
  StripeSubscriptionSpec starter_yearly = professional;
  starter_yearly.event_id = "evt_1Bbbb";
  starter_yearly.price_id = "price_starter_yearly";
  starter_yearly.interval = "year";
  starter_yearly.unit_amount = 19000;
  starter_yearly.previous_attributes = PreviousItems("price_professional_monthly");
  return {StripeSubscriptionEventJson(created), StripeSubscriptionEventJson(professional),
          StripeSubscriptionEventJson(starter_yearly)};
}

TEST_F(SubscriptionsTest, SameSecondPriceChangeAppliesTheLaterState) {
  const std::vector<std::string> all = SameSecondPlanChanges();
  for (auto order : {std::vector<size_t>{0, 1, 2}, std::vector<size_t>{0, 2, 1}}) {
    World w = Fresh();
    std::vector<Decision> decisions;
    for (size_t i : order) decisions.push_back(Deliver(&w, all[i]));
    UserSubscription sub = Query(w, "user-1");
    ASSERT_TRUE(sub.has_subscription);
    EXPECT_EQ(sub.subscription.price_id, "price_starter_yearly") << "order " << order[1];
    EXPECT_EQ(sub.subscription.plan_id, "starter");
    EXPECT_EQ(sub.subscription.unit_amount, 19000);
    EXPECT_EQ(sub.subscription.event_id, "evt_1Bbbb");
    EXPECT_EQ(sub.subscription.previous_attributes.price_id, "price_professional_monthly");
    // Professional's change, delivered last, is older than the state held: nothing derived.
    if (order[2] == 1) {
      EXPECT_EQ(Types(decisions[2]), (std::vector<std::string>{"stripe.webhook_received.v1"}));
    }
    for (const Event& e : w.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
  }
}

TEST_F(SubscriptionsTest, SameSecondUpdatesWithoutAKnownOrderKeepTheEventIdTieBreak) {
  StripeSubscriptionSpec professional;
  professional.event_id = "evt_z_professional";
  professional.event_created = kStripeT0 + 11;
  professional.item_id = "si_1";
  professional.price_id = "price_professional_monthly";
  professional.previous_attributes = R"({"metadata":{"note":"x"}})";  // names nothing kept
  StripeSubscriptionSpec enterprise = professional;
  enterprise.event_id = "evt_b_enterprise";
  enterprise.price_id = "price_enterprise_monthly";
  // Its previous price is not Professional's: the other state is not the one it followed.
  enterprise.previous_attributes = PreviousItems("price_starter_monthly");
  // A change and its undoing in one second: each follows the other, so neither is known later.
  StripeSubscriptionSpec to_starter = professional;
  to_starter.event_id = "evt_a_to_starter";
  to_starter.price_id = "price_starter_monthly";
  to_starter.previous_attributes = PreviousItems("price_professional_monthly");
  StripeSubscriptionSpec back = professional;
  back.event_id = "evt_c_back";
  back.previous_attributes = PreviousItems("price_starter_monthly");
  const std::vector<std::pair<StripeSubscriptionSpec, StripeSubscriptionSpec>> pairs = {
      {professional, enterprise}, {back, to_starter}};
  for (const auto& [greater_id, smaller_id] : pairs) {
    const std::vector<std::string> both = {StripeSubscriptionEventJson(greater_id),
                                           StripeSubscriptionEventJson(smaller_id)};
    std::optional<Rows> reference;
    for (auto order : {std::vector<size_t>{0, 1}, std::vector<size_t>{1, 0}}) {
      World w = Fresh();
      for (size_t i : order) Deliver(&w, both[i]);
      EXPECT_EQ(Query(w, "user-1").subscription.event_id, greater_id.event_id);
      if (!reference) reference = SubscriptionRows(w);
      EXPECT_EQ(SubscriptionRows(w), *reference);
    }
  }
}

TEST_F(LifecycleOrderTest, EveryOrderOfASameSecondPlanChangeEndsOnTheLaterPlan) {
  std::vector<std::string> deliveries = StripeLifecycle({});
  deliveries.resize(1);  // the checkout that links user-1
  for (std::string& change : SameSecondPlanChanges()) deliveries.push_back(std::move(change));
  Rows reference;
  ExpectEveryOrderConverges(deliveries, &reference);  // 4! = 24 orders
  World w = Run(deliveries, {3, 2, 1, 0});
  UserSubscription sub = Query(w, "user-1");
  ASSERT_TRUE(sub.has_subscription);
  EXPECT_EQ(sub.subscription.price_id, "price_starter_yearly");
  EXPECT_EQ(sub.subscription.plan_id, "starter");
  EXPECT_EQ(SubscriptionRows(w), reference);
}

// A seat change (quantity 1 -> 2) names the whole `items` list in previous_attributes, the plan
// item's price and period unchanged: it names no change of a field the record keeps, so it is
// not known to follow the metadata update made after it in the same second (which names none
// either), and the event id decides.
TEST_F(SubscriptionsTest, SameSecondItemsChangeWithTheSamePriceDoesNotBeatALaterUpdate) {
  StripeSubscriptionSpec seats;
  seats.event_id = "evt_1Bbbb";
  seats.event_created = kStripeT0 + 11;
  seats.item_id = "si_1";
  seats.quantity = 2;
  seats.previous_attributes = PreviousItems("price_starter_monthly");
  StripeSubscriptionSpec tagged = seats;
  tagged.event_id = "evt_1Zzzz";
  tagged.metadata_plan_id = "starter";
  tagged.previous_attributes = R"({"metadata":{"user_id":"user-1"}})";
  const std::vector<std::string> both = {StripeSubscriptionEventJson(seats),
                                         StripeSubscriptionEventJson(tagged)};
  std::optional<Rows> reference;
  for (auto order : {std::vector<size_t>{0, 1}, std::vector<size_t>{1, 0}}) {
    World w = Fresh();
    for (size_t i : order) Deliver(&w, both[i]);
    UserSubscription sub = Query(w, "user-1");
    ASSERT_TRUE(sub.has_subscription);
    EXPECT_EQ(sub.subscription.event_id, "evt_1Zzzz") << "order " << order[0];
    EXPECT_EQ(sub.subscription.metadata_plan_id, "starter") << "order " << order[0];
    EXPECT_EQ(sub.subscription.quantity, 2);
    if (!reference) reference = SubscriptionRows(w);
    EXPECT_EQ(SubscriptionRows(w), *reference);
  }
}

TEST_F(SubscriptionsTest, IncompleteExpiredIsTerminal) {
  World w = Fresh();
  StripeSubscriptionSpec expired;
  expired.event_id = "evt_expired";
  expired.event_created = kStripeT0 + 10;
  expired.status = "incomplete_expired";
  Deliver(&w, StripeSubscriptionEventJson(expired));
  StripeSubscriptionSpec later = expired;
  later.event_id = "evt_later";
  later.event_created = kStripeT0 + 20;
  later.status = "active";
  Deliver(&w, StripeSubscriptionEventJson(later));
  EXPECT_EQ(Query(w, "user-1").subscription.status, SubscriptionStatus::kIncompleteExpired);
}

// ---- links --------------------------------------------------------------------------------------

TEST_F(SubscriptionsTest, SubscriptionForAnUnlinkedCustomerAttachesWhenTheLinkArrives) {
  StripeSubscriptionSpec sub;
  sub.event_id = "evt_sub_first";
  sub.subscription_id = "sub_orphan";
  sub.customer_id = "cus_later";
  sub.metadata_user_id.reset();  // no metadata: only the checkout can link it
  sub.event_created = kStripeT0 + 5;
  StripeCheckoutSpec checkout;
  checkout.event_id = "evt_checkout_late";
  checkout.event_created = kStripeT0 + 1;
  checkout.client_reference_id = "user-late";
  checkout.metadata_user_id.reset();
  checkout.customer_id = "cus_later";
  checkout.subscription_id.reset();  // the link comes through the customer alone
  checkout.email = "Late@Example.com";

  for (bool subscription_first : {true, false}) {
    World w = Fresh();
    // The link arrives through a session ledgerd opened for user-late.
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(&w.state, &w.head, checkout.session_id,
                                                     "user-late", kNowUs)
                    .ok());
    if (subscription_first) {
      Decision d = Deliver(&w, StripeSubscriptionEventJson(sub));
      EXPECT_EQ(d.events[0].subject, "stripe_customer:cus_later");
      EXPECT_FALSE(Query(w, "user-late").has_subscription);
    }
    Deliver(&w, StripeCheckoutCompletedJson(checkout));
    if (!subscription_first) Deliver(&w, StripeSubscriptionEventJson(sub));
    UserSubscription got = Query(w, "user-late");
    ASSERT_TRUE(got.has_subscription) << subscription_first;
    EXPECT_EQ(got.subscription.subscription_id, "sub_orphan");
    EXPECT_EQ(got.email, "Late@Example.com");
    std::vector<std::string> users;
    ASSERT_TRUE(FindUsersByEmail(w.state, "late@example.COM", &users).ok());
    EXPECT_EQ(users, std::vector<std::string>{"user-late"});
    std::string user;
    ASSERT_TRUE(GetCustomerUser(w.state, "cus_later", &user).ok());
    EXPECT_EQ(user, "user-late");
  }
}

// A completed Checkout Session ledgerd did not open (no stripe.checkout_session_created.v1: a
// Payment Link or pricing table, where anyone sets ?client_reference_id=) is stored and links
// nothing: Mallory paid with client_reference_id=user-2, her customer was linked to user-2 for
// good and her subscription became user-2's (user-2's cancel canceled it).
TEST_F(SubscriptionsTest, ACompletedSessionLedgerdDidNotOpenLinksNothing) {
  World w = Fresh();
  StripeCheckoutSpec checkout;
  checkout.event_id = "evt_foreign_checkout";
  checkout.session_id = "cs_foreign";
  checkout.client_reference_id = "user-2";
  checkout.metadata_user_id = "user-2";
  checkout.customer_id = "cus_x";
  checkout.subscription_id = "sub_x";
  checkout.email = "mallory@example.com";
  Decision d = Deliver(&w, StripeCheckoutCompletedJson(checkout));
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1",
                                                "subscription.checkout_completed.v1"}));
  StripeSubscriptionSpec sub;
  sub.event_id = "evt_sub_x";
  sub.subscription_id = "sub_x";
  sub.customer_id = "cus_x";
  sub.metadata_user_id.reset();  // a Payment Link's subscription names no user of ledgerd's
  Deliver(&w, StripeSubscriptionEventJson(sub));
  std::string user;
  EXPECT_TRUE(GetCustomerUser(w.state, "cus_x", &user).IsNotFound()) << user;
  UserSubscription two = Query(w, "user-2");
  EXPECT_FALSE(two.has_subscription);
  EXPECT_TRUE(two.customer_id.empty());
  EXPECT_TRUE(two.awaited_subscription_ids.empty());
  std::vector<std::string> users;
  ASSERT_TRUE(FindUsersByEmail(w.state, "mallory@example.com", &users).ok());
  EXPECT_TRUE(users.empty());
  for (const NewEvent& e : d.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
}

TEST_F(SubscriptionsTest, CompletedSessionWithoutAUserFallsBackToWhoOpenedIt) {
  World w = Fresh();
  // What POST /api/v1/billing/checkout/create records (http/billing_routes.cc).
  Event opened;
  opened.position = Next(w.head);
  opened.type = "stripe.checkout_session_created.v1";
  opened.subject = "user-opener";
  opened.data =
      R"({"user_id":"user-opener","plan_id":"starter","billing_cycle":"monthly",)"
      R"("session_id":"cs_opened","customer":null,"price_id":"price_starter_monthly",)"
      R"("one_time_price_id":null,"trial_period_days":null,"stripe_idempotency_key":"k"})";
  for (const Fold* fold : AllFolds()) ASSERT_TRUE(fold->Apply(opened, w.state, &w.state).ok());
  w.head = opened.position;
  // Another engineer's event with fields this fold cannot use is ignored, not an error.
  Event odd = opened;
  odd.data = R"({"session_id":7})";
  for (const Fold* fold : AllFolds()) EXPECT_TRUE(fold->Apply(odd, w.state, &w.state).ok());

  StripeCheckoutSpec checkout;
  checkout.event_id = "evt_anonymous_checkout";
  checkout.session_id = "cs_opened";
  checkout.client_reference_id.reset();
  checkout.metadata_user_id.reset();
  checkout.customer_id = "cus_opener";
  checkout.subscription_id = "sub_opener";
  Decision d = Deliver(&w, StripeCheckoutCompletedJson(checkout));
  EXPECT_EQ(d.events[0].subject, "user-opener");
  std::string user;
  ASSERT_TRUE(GetCustomerUser(w.state, "cus_opener", &user).ok());
  EXPECT_EQ(user, "user-opener");
  for (const NewEvent& e : d.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
}

TEST_F(SubscriptionsTest, OneUserNeverSeesAnothersSubscription) {
  World w = Fresh();
  for (const std::string& raw : StripeLifecycle({})) Deliver(&w, raw);
  StripeLifecycleSpec two;
  two.prefix = "evt_two";
  two.user_id = "user-2";
  two.customer_id = "cus_2";
  two.subscription_id = "sub_2";
  two.price_id = "price_professional_monthly";
  two.plan_id = "professional";
  std::vector<std::string> second = StripeLifecycle(two);
  second.pop_back();  // user-2 stays active
  for (const std::string& raw : second) Deliver(&w, raw);

  EXPECT_EQ(Query(w, "user-1").subscription.subscription_id, "sub_1");
  EXPECT_EQ(Query(w, "user-2").subscription.subscription_id, "sub_2");
  EXPECT_EQ(Query(w, "user-2").subscription.plan_id, "professional");
  EXPECT_FALSE(Query(w, "user-3").has_subscription);
  EXPECT_TRUE(Query(w, "user-3").customer_id.empty());

  // A subscription Stripe tags for user-1 but on user-2's customer is not user-1's (its customer
  // is someone else's): through it, user-1's customer_id was cus_2, so user-1's portal, cards and
  // checkout used user-2's customer. It is user-2's (AMisTaggedSubscriptionIsAttributedTo...).
  StripeSubscriptionSpec odd;
  odd.event_id = "evt_odd";
  odd.subscription_id = "sub_odd";
  odd.customer_id = "cus_2";
  odd.metadata_user_id = "user-1";
  odd.created = kStripeT0 - 500;  // older: user-2's sub_2 stays the one chosen
  odd.event_created = kStripeT0 + 500;
  Deliver(&w, StripeSubscriptionEventJson(odd));
  EXPECT_EQ(Query(w, "user-2").subscription.subscription_id, "sub_2");
  EXPECT_EQ(Query(w, "user-2").other_subscription_ids, std::vector<std::string>{"sub_odd"});
  const UserSubscription one = Query(w, "user-1");
  EXPECT_EQ(one.subscription.subscription_id, "sub_1");
  EXPECT_NE(one.customer_id, "cus_2");
  EXPECT_EQ(one.customer_id, "cus_1");
  EXPECT_TRUE(one.other_subscription_ids.empty());
  // ... and cus_2 stays user-2's.
  std::string owner;
  ASSERT_TRUE(GetCustomerUser(w.state, "cus_2", &owner).ok());
  EXPECT_EQ(owner, "user-2");
  // A user known only through such a tag is one of the fold's users (the admin list and the
  // analytics walk them), though the subscription is not theirs: user-9 has no customer of its
  // own.
  odd.event_id = "evt_odd9";
  odd.subscription_id = "sub_odd9";
  odd.metadata_user_id = "user-9";
  Deliver(&w, StripeSubscriptionEventJson(odd));
  EXPECT_FALSE(Query(w, "user-9").has_subscription);
  EXPECT_TRUE(Query(w, "user-9").customer_id.empty());
  std::vector<std::string> users;
  ASSERT_TRUE(ScanUsers(w.state, "", [&users](std::string_view id, std::string_view) {
                users.emplace_back(id);
                return true;
              }).ok());
  EXPECT_EQ(users, (std::vector<std::string>{"user-1", "user-2", "user-9"}));
  // Empty and '/'-containing user ids match nothing.
  EXPECT_FALSE(Query(w, "").has_subscription);
  EXPECT_FALSE(Query(w, "user-1/..").has_subscription);
}

// A subscription on a customer linked to one user is that user's, whatever its metadata.user_id
// says, in the events as in the queries. sub_odd, made in Stripe's Dashboard on user-2's cus_2
// and tagged user_id=user-1 (its invoices carry the tag in parent.subscription_details.metadata),
// was announced as user-1's (state_changed.v1 and invoice.paid.v1 "user_id", the subject, so the
// Kafka key) while the queries gave it to neither: user-2 paid for it with no access, could not
// cancel it, and it was missing from MRR. The tag names the user only while the customer is
// linked to nobody.
TEST_F(SubscriptionsTest, AMisTaggedSubscriptionIsAttributedToItsCustomersUser) {
  World w = Fresh();
  ASSERT_TRUE(ledger::testing::OpenCheckoutSession(&w.state, &w.head, "cs_two", "user-2", kNowUs)
                  .ok());
  StripeCheckoutSpec checkout;
  checkout.event_id = "evt_two_checkout";
  checkout.session_id = "cs_two";
  checkout.client_reference_id = "user-2";
  checkout.metadata_user_id = "user-2";
  checkout.customer_id = "cus_2";
  checkout.subscription_id = std::nullopt;
  checkout.email = "user-2@example.com";
  Deliver(&w, StripeCheckoutCompletedJson(checkout));
  std::string owner;
  ASSERT_TRUE(GetCustomerUser(w.state, "cus_2", &owner).ok());
  ASSERT_EQ(owner, "user-2");

  // Every event of a delivery, and the delivery's own record, name user-2 (the verbatim payload
  // keeps the tag).
  auto expect_user_2 = [](const Decision& d) {
    ASSERT_GE(d.events.size(), 2u);
    for (const NewEvent& e : d.events) {
      EXPECT_EQ(e.subject, "user-2") << e.type;
      rapidjson::Document data;
      data.Parse(e.data.c_str());
      ASSERT_TRUE(data.IsObject() && data.HasMember("user_id") && data["user_id"].IsString())
          << e.data;
      EXPECT_EQ(std::string(data["user_id"].GetString()), "user-2") << e.type;
      EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
    }
  };
  StripeSubscriptionSpec odd;
  odd.event_id = "evt_odd";
  odd.event_type = "customer.subscription.created";
  odd.subscription_id = "sub_odd";
  odd.customer_id = "cus_2";
  odd.item_id = "si_odd";
  odd.metadata_user_id = "user-1";
  odd.event_created = kStripeT0 + 1;
  Decision d = Deliver(&w, StripeSubscriptionEventJson(odd));
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1",
                                                "subscription.state_changed.v1"}));
  expect_user_2(d);
  StripeInvoiceSpec invoice =
      ledger::testing::InvoiceOf("user-1", "cus_2", "sub_odd", "in_odd", "invoice.paid",
                                 "evt_odd_paid", kStripeT0 + 2);
  d = Deliver(&w, StripeInvoiceEventJson(invoice));
  EXPECT_EQ(Types(d), (std::vector<std::string>{"stripe.webhook_received.v1", "invoice.paid.v1"}));
  expect_user_2(d);

  const UserSubscription two = Query(w, "user-2");
  ASSERT_TRUE(two.has_subscription);
  EXPECT_EQ(two.subscription.subscription_id, "sub_odd");
  EXPECT_EQ(two.customer_id, "cus_2");
  EXPECT_EQ(two.access(), AccessLevel::kGranted);
  ASSERT_TRUE(two.latest_invoice);
  EXPECT_TRUE(two.latest_invoice->paid);
  EXPECT_EQ(Access(w, "user-2").access, AccessLevel::kGranted);
  const UserSubscription one = Query(w, "user-1");
  EXPECT_FALSE(one.has_subscription);
  EXPECT_TRUE(one.other_subscription_ids.empty());
  EXPECT_TRUE(one.customer_id.empty());
  std::string overview;
  ASSERT_TRUE(AnalyticsOverviewJson(w.state, kStripeT0 + 3, 30, &overview).ok());
  rapidjson::Document doc;
  doc.Parse(overview.c_str());
  ASSERT_TRUE(doc.IsObject()) << overview;
  EXPECT_EQ(doc["revenue"]["mrr_cents"].GetInt64(), 1900) << overview;

  // On a customer linked to nobody, the tag names the user.
  odd.event_id = "evt_free";
  odd.subscription_id = "sub_free";
  odd.customer_id = "cus_free";
  odd.item_id = "si_free";
  odd.metadata_user_id = "user-3";
  d = Deliver(&w, StripeSubscriptionEventJson(odd));
  ASSERT_FALSE(d.events.empty());
  EXPECT_EQ(d.events[0].subject, "user-3");
  EXPECT_EQ(Query(w, "user-3").subscription.subscription_id, "sub_free");
  EXPECT_FALSE(Query(w, "user-1").has_subscription);
}

TEST_F(SubscriptionsTest, PrefersTheSubscriptionThatGrantsAccess) {
  World w = Fresh();
  for (const std::string& raw : StripeLifecycle({})) Deliver(&w, raw);  // sub_1 canceled
  StripeSubscriptionSpec renewed;
  renewed.event_id = "evt_renewed";
  renewed.subscription_id = "sub_new";
  renewed.item_id = "si_new";
  renewed.price_id = "price_enterprise_yearly";
  renewed.interval = "year";
  renewed.created = kStripeT0 - 100;  // even an older object wins by granting access
  renewed.event_created = kStripeT0 + 100;
  Deliver(&w, StripeSubscriptionEventJson(renewed));
  UserSubscription sub = Query(w, "user-1");
  EXPECT_EQ(sub.subscription.subscription_id, "sub_new");
  EXPECT_EQ(sub.subscription.plan_id, "enterprise");
  EXPECT_EQ(sub.subscription.interval, "year");
  EXPECT_FALSE(sub.latest_invoice);  // sub_1's invoice belongs to sub_1
  std::vector<std::string> canceled;
  ASSERT_TRUE(ListSubscriptionsByStatus(w.state, SubscriptionStatus::kCanceled, 10, &canceled).ok());
  EXPECT_EQ(canceled, std::vector<std::string>{"sub_1"});
  std::vector<std::string> active;
  ASSERT_TRUE(ListSubscriptionsByStatus(w.state, SubscriptionStatus::kActive, 10, &active).ok());
  EXPECT_EQ(active, std::vector<std::string>{"sub_new"});
}

// ---- plans and access -----------------------------------------------------------------------------

TEST_F(SubscriptionsTest, TrialPlanWhileTrialingThenStarter) {
  World w = Fresh();
  StripeSubscriptionSpec trial;
  trial.event_id = "evt_trial";
  trial.event_type = "customer.subscription.created";
  trial.status = "trialing";
  trial.price_id = "price_starter_monthly";  // the trial converts to Starter
  trial.metadata_plan_id = "trial";
  trial.event_created = kStripeT0 + 1;
  Deliver(&w, StripeSubscriptionEventJson(trial));
  UserAccess access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "trial");
  EXPECT_TRUE(CheckServiceAccess(access, "chat").allowed);
  EXPECT_EQ(CheckServiceAccess(access, "search").reason, "service_not_in_plan");

  StripeSubscriptionSpec converted = trial;
  converted.event_id = "evt_converted";
  converted.event_type = "customer.subscription.updated";
  converted.status = "active";
  converted.event_created = kStripeT0 + 2;
  Deliver(&w, StripeSubscriptionEventJson(converted));
  access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "starter");
  EXPECT_TRUE(CheckServiceAccess(access, "search").allowed);

  // An admin changes Starter's price and stripe-setup replaces its Stripe price: the converted
  // trial renews on the old price, which no plan names any more. It is still Starter, not the
  // trial (whose daily limit and 7 days would lock a paying customer out).
  SetPlanStripePrices replaced("starter", "price_starter_monthly_v2", "price_starter_yearly",
                               Actor::System("ledgerctl"));
  Decision decision;
  ASSERT_TRUE(ledger::testing::RunCommand(&replaced, AllFolds(), &w.state, &w.head, kNowUs,
                                          &decision)
                  .ok());
  StripeSubscriptionSpec renewed = converted;
  renewed.event_id = "evt_renewed";
  renewed.event_created = kStripeT0 + 3;
  Deliver(&w, StripeSubscriptionEventJson(renewed));
  access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "starter");
  EXPECT_TRUE(CheckServiceAccess(access, "search").allowed);
  std::optional<std::string> plan_id;
  ASSERT_TRUE(PlanForSubscription(w.state, SubscriptionStatus::kActive, "price_starter_monthly",
                                  std::string("trial"), &plan_id)
                  .ok());
  EXPECT_EQ(plan_id, "starter");
  ASSERT_TRUE(PlanForSubscription(w.state, SubscriptionStatus::kTrialing, "price_starter_monthly",
                                  std::string("trial"), &plan_id)
                  .ok());
  EXPECT_EQ(plan_id, "trial");
}

// Alice checks out Starter (tagged plan_id=starter) and switches to Professional in the Billing
// Portal (the tag stays). An admin changes Professional's price: its Stripe price is nulled and
// stripe-setup records a new one. Alice's renewal still bills the old price, which no plan names
// any more: she stays on Professional (not Starter by the stale tag: tts 403, 1,000 calls while
// paying $49), and so does a subscriber without a tag (no plan: 402, out of MRR).
TEST_F(SubscriptionsTest, APriceChangeLeavesSubscribersOnTheReplacedPriceOnTheirPlan) {
  World w = Fresh();
  StripeSubscriptionSpec alice;
  alice.event_id = "evt_alice_checkout";
  alice.event_type = "customer.subscription.created";
  alice.metadata_plan_id = "starter";
  alice.event_created = kStripeT0 + 1;
  Deliver(&w, StripeSubscriptionEventJson(alice));
  alice.event_id = "evt_alice_portal";
  alice.event_type = "customer.subscription.updated";
  alice.price_id = "price_professional_monthly";
  alice.unit_amount = 4900;
  alice.event_created = kStripeT0 + 2;
  Deliver(&w, StripeSubscriptionEventJson(alice));
  StripeSubscriptionSpec bob;
  bob.event_id = "evt_bob";
  bob.subscription_id = "sub_bob";
  bob.customer_id = "cus_bob";
  bob.item_id = "si_bob";
  bob.metadata_user_id = "user-bob";
  bob.price_id = "price_professional_monthly";
  bob.unit_amount = 4900;
  bob.event_created = kStripeT0 + 2;
  Deliver(&w, StripeSubscriptionEventJson(bob));
  ASSERT_TRUE(Access(w, "user-1").plan);
  EXPECT_EQ(Access(w, "user-1").plan->id, "professional");

  auto run = [&](Command* command) {
    Decision decision;
    return ledger::testing::RunCommand(command, AllFolds(), &w.state, &w.head, kNowUs, &decision);
  };
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(R"({"price_monthly_cents":5900,"price_yearly_cents":49000,)"
                             R"("stripe_price_monthly":null})",
                             "professional", &input)
                  .ok());
  UpdatePlan reprice(input, Actor::System("test"));
  Status repriced = run(&reprice);
  ASSERT_TRUE(repriced.ok()) << repriced.ToString();
  SetPlanStripePrices setup("professional", "price_professional_monthly_v2", std::nullopt,
                            Actor::System("ledgerctl"));
  ASSERT_TRUE(run(&setup).ok());

  alice.event_id = "evt_alice_renewal";
  alice.event_created = kStripeT0 + 3;
  Deliver(&w, StripeSubscriptionEventJson(alice));
  bob.event_id = "evt_bob_renewal";
  bob.event_created = kStripeT0 + 3;
  Deliver(&w, StripeSubscriptionEventJson(bob));
  for (const char* user : {"user-1", "user-bob"}) {
    SCOPED_TRACE(user);
    UserAccess access = Access(w, user);
    ASSERT_TRUE(access.plan);
    EXPECT_EQ(access.plan->id, "professional");
    EXPECT_TRUE(CheckServiceAccess(access, "tts").allowed);
    EXPECT_EQ(Query(w, user).subscription.plan_id, "professional");
  }

  // The replaced price bills Professional's subscribers: given to another plan, they would move
  // with it.
  PlanInput steal;
  ASSERT_TRUE(ParsePlanInput(R"({"stripe_price_monthly":"price_professional_monthly"})",
                             "enterprise", &steal)
                  .ok());
  UpdatePlan steal_command(steal, Actor::System("test"));
  Status s = run(&steal_command);
  EXPECT_EQ(s.code(), Code::kConflict) << s.ToString();
  EXPECT_EQ(s.problem(), "stripe_price_in_use");
  // Professional itself may name it again.
  PlanInput back;
  ASSERT_TRUE(ParsePlanInput(R"({"stripe_price_monthly":"price_professional_monthly",)"
                             R"("price_monthly_cents":4900,"price_yearly_cents":49000})",
                             "professional", &back)
                  .ok());
  UpdatePlan back_command(back, Actor::System("test"));
  EXPECT_TRUE(run(&back_command).ok());
}

// A store written before the price rows: the webhook decided alice's plan from checkout's stale
// `starter` tag while she renewed on Professional's replaced price, and its
// subscription.state_changed.v1 carries plan_id "starter". The catalog maps that price to
// Professional (price/<id>): the price decides, not the stored plan -- she paid $49 and was
// treated as Starter (tts 403) until Stripe's next event. A price mapping to nothing (an add-on)
// keeps the stored plan.
TEST_F(SubscriptionsTest, APlanStoredBeforeThePriceRowsIsDecidedAgainByThePrice) {
  World w = Fresh();
  auto run = [&](Command* command) {
    Decision decision;
    return ledger::testing::RunCommand(command, AllFolds(), &w.state, &w.head, kNowUs, &decision,
                                       &w.events);
  };
  PlanInput input;
  ASSERT_TRUE(ParsePlanInput(R"({"price_monthly_cents":5900,"price_yearly_cents":49000,)"
                             R"("stripe_price_monthly":"price_professional_monthly_v2"})",
                             "professional", &input)
                  .ok());
  UpdatePlan reprice(input, Actor::System("test"));
  Status repriced = run(&reprice);
  ASSERT_TRUE(repriced.ok()) << repriced.ToString();

  // What the webhook decider stored then: the state as it was decided, plan and all.
  struct StoredState final : Command {
    std::vector<NewEvent> events;
    Status Decide(const DecideContext&, Decision* decision) override {
      decision->events = events;
      return Status::OK();
    }
  } stored;
  auto state_changed = [](const std::string& user, const std::string& sub,
                          const std::string& price) {
    SubscriptionRecord r;
    r.subscription_id = sub;
    r.customer_id = "cus_" + user;
    r.status = SubscriptionStatus::kActive;
    r.plan_id = "starter";
    r.price_id = price;
    r.item_id = "si_" + user;
    r.interval = "month";
    r.created = r.current_period_start = kStripeT0;
    r.current_period_end = kStripeT0 + 30 * 86400;
    r.metadata_user_id = user;
    r.metadata_plan_id = "starter";
    r.event_id = "evt_" + sub;
    r.event_type = "customer.subscription.updated";
    r.event_created = kStripeT0;
    return NewEvent{std::string(kSubscriptionStateChangedV1), user,
                    R"({"user_id":")" + user + R"(","previous_status":null,"subscription":)" +
                        SubscriptionRecordToJson(r) + "}"};
  };
  stored.events = {state_changed("user-1", "sub_1", "price_professional_monthly"),
                   state_changed("user-addon", "sub_addon", "price_addon")};
  ASSERT_TRUE(run(&stored).ok());
  for (const Event& e : w.events) EXPECT_TRUE(EventMatchesSchema(e)) << e.type << " " << e.data;

  UserAccess access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "professional");
  EXPECT_TRUE(CheckServiceAccess(access, "tts").allowed);
  EXPECT_EQ(Query(w, "user-1").subscription.plan_id, "professional");
  std::vector<UserSubscription> every;
  ASSERT_TRUE(GetUserAccess(w.state, "user-1", &access, &every).ok());
  ASSERT_EQ(every.size(), 1u);
  EXPECT_EQ(every[0].subscription.plan_id, "professional");

  access = Access(w, "user-addon");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "starter");
}

// A newer subscription of the same customer to a price outside the catalog (an add-on made in
// Stripe's Dashboard) is not the user's subscription: access, cancel and upgrade stay on the plan.
TEST_F(SubscriptionsTest, ASubscriptionToAPriceOutsideTheCatalogIsNotTheCurrentOne) {
  World w = Fresh();
  StripeSubscriptionSpec plan;
  plan.event_id = "evt_plan";
  Deliver(&w, StripeSubscriptionEventJson(plan));
  StripeSubscriptionSpec addon = plan;
  addon.event_id = "evt_addon";
  addon.event_created = kStripeT0 + 5;
  addon.subscription_id = "sub_addon";
  addon.item_id = "si_addon";
  addon.price_id = "price_support_addon";
  addon.unit_amount = 500;
  addon.created = kStripeT0 + 5;
  Deliver(&w, StripeSubscriptionEventJson(addon));
  UserSubscription current;
  ASSERT_TRUE(GetUserSubscription(w.state, "user-1", &current).ok());
  EXPECT_EQ(current.subscription_id(), "sub_1");
  EXPECT_EQ(current.subscription.plan_id, "starter");
  UserAccess access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "starter");
  EXPECT_TRUE(CheckServiceAccess(access, "chat").allowed);
  // The plan's renewal fails: past due (grace) is still the plan, not the add-on that is active.
  StripeSubscriptionSpec past_due = plan;
  past_due.event_id = "evt_plan_past_due";
  past_due.event_created = kStripeT0 + 6;
  past_due.status = "past_due";
  Deliver(&w, StripeSubscriptionEventJson(past_due));
  ASSERT_TRUE(GetUserSubscription(w.state, "user-1", &current).ok());
  EXPECT_EQ(current.subscription_id(), "sub_1");
  access = Access(w, "user-1");
  ASSERT_TRUE(access.plan);
  EXPECT_EQ(access.plan->id, "starter");
  EXPECT_EQ(access.access, AccessLevel::kGrace);
  EXPECT_TRUE(CheckServiceAccess(access, "chat").allowed);
  // Canceled, the plan is still the subscription shown (access none; a new checkout is allowed,
  // the add-on is never cancelled or upgraded in its place).
  StripeSubscriptionSpec canceled = plan;
  canceled.event_id = "evt_plan_canceled";
  canceled.event_type = "customer.subscription.deleted";
  canceled.event_created = kStripeT0 + 7;
  canceled.status = "canceled";
  canceled.canceled_at = canceled.ended_at = kStripeT0 + 7;
  Deliver(&w, StripeSubscriptionEventJson(canceled));
  ASSERT_TRUE(GetUserSubscription(w.state, "user-1", &current).ok());
  EXPECT_EQ(current.subscription_id(), "sub_1");
  EXPECT_EQ(current.access(), AccessLevel::kNone);
  EXPECT_EQ(CheckServiceAccess(Access(w, "user-1"), "chat").reason, "subscription_inactive");
  // A user with only the add-on has it as the subscription (and no plan).
  StripeSubscriptionSpec alone = addon;
  alone.event_id = "evt_addon_alone";
  alone.subscription_id = "sub_addon_2";
  alone.customer_id = "cus_2";
  alone.metadata_user_id = "user-2";
  Deliver(&w, StripeSubscriptionEventJson(alone));
  ASSERT_TRUE(GetUserSubscription(w.state, "user-2", &current).ok());
  EXPECT_EQ(current.subscription_id(), "sub_addon_2");
  EXPECT_EQ(current.subscription.plan_id, std::nullopt);
}

// Two plans at once (a second checkout, or one made in the Dashboard): Starter since January,
// still billed, and a newer Professional cancelled at its period's end. Past that end, before
// Stripe's deletion arrives (retried for up to 3 days), the Professional is judged as that
// deletion will judge it (canceled) when choosing: Starter decides. It was chosen for being
// newer and, past its end, granted nothing (402 subscription_required) although Starter was
// active. Before the end the Professional decides; after its deletion, Starter, as before.
TEST_F(SubscriptionsTest, PastItsScheduledEndANewerPlanGivesWayToTheUsersOtherPlan) {
  World w = Fresh();
  const int64_t end = kStripeT0 + 10 * 86400;
  const StripeSubscriptionSpec pro =
      DeliverStarterEndingAtAndANewerProfessionalEndingBefore(&w, std::nullopt, end);

  auto access_at = [&](int64_t now_s) {
    UserAccess out;
    Status s = GetUserAccessAt(w.state, "user-1", now_s, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  };
  auto subscription_at = [&](int64_t now_s) {
    UserSubscription out;
    Status s = GetUserSubscriptionAt(w.state, "user-1", now_s, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out.subscription_id();
  };
  // The last second before the end: Professional (tts is in it, not in Starter).
  UserAccess before = access_at(end - 1);
  EXPECT_EQ(before.subscription.subscription_id(), "sub_pro");
  ASSERT_TRUE(before.plan);
  EXPECT_EQ(before.plan->id, "professional");
  EXPECT_FALSE(before.EndedAt(end - 1));
  EXPECT_TRUE(CheckServiceAccess(before, "tts").allowed);
  EXPECT_EQ(subscription_at(end - 1), "sub_pro");
  // Access goes on past the end (Starter takes over there): no end to cut the window at.
  EXPECT_EQ(before.access_end(), std::nullopt);
  // From the end on, no deletion yet: Starter.
  for (const int64_t now_s : {end, end + 86400}) {
    UserAccess after = access_at(now_s);
    EXPECT_EQ(after.subscription.subscription_id(), "sub_starter") << now_s;
    ASSERT_TRUE(after.plan) << now_s;
    EXPECT_EQ(after.plan->id, "starter");
    EXPECT_EQ(after.access, AccessLevel::kGranted);
    EXPECT_FALSE(after.EndedAt(now_s));
    EXPECT_TRUE(CheckServiceAccess(after, "chat").allowed);
    EXPECT_EQ(CheckServiceAccess(after, "tts").reason, "service_not_in_plan");
    EXPECT_EQ(subscription_at(now_s), "sub_starter");
  }
  // What the state says (the access cache's entry) resolves the same at the request's time.
  UserAccess cached = Access(w, "user-1");
  EXPECT_EQ(cached.subscription.subscription_id(), "sub_pro");
  cached.ResolveAt(end + 1);
  EXPECT_EQ(cached.subscription.subscription_id(), "sub_starter");
  // Stripe's deletion arrives: Starter, whatever the time (unchanged).
  StripeSubscriptionSpec deleted = pro;
  deleted.event_id = "evt_pro_deleted";
  deleted.event_type = "customer.subscription.deleted";
  deleted.event_created = end + 3600;
  deleted.status = "canceled";
  deleted.canceled_at = deleted.ended_at = end;
  Deliver(&w, StripeSubscriptionEventJson(deleted));
  EXPECT_EQ(Query(w, "user-1").subscription_id(), "sub_starter");
  UserAccess gone = access_at(end + 86400);
  EXPECT_EQ(gone.subscription.subscription_id(), "sub_starter");
  ASSERT_TRUE(gone.plan);
  EXPECT_EQ(gone.plan->id, "starter");
  EXPECT_TRUE(CheckServiceAccess(gone, "chat").allowed);
}

// Both of user-1's plans past their scheduled ends, no deletion yet: a newer Professional that
// ended at T1 and an older Starter cancelled at T2 > T1. From T2 on, the one that ended last is
// the user's (Starter): both ranked as canceled and the newer was chosen -- consume's 402 said
// "ended at T1" though access lasted to T2, subscription-status and my-access showed
// Professional. The state-only choice (the access cache's) stays the newer.
TEST_F(SubscriptionsTest, WhenEveryPlanHasEndedTheLastToEndIsShown) {
  World w = Fresh();
  const int64_t t1 = kStripeT0 + 10 * 86400;
  const int64_t t2 = kStripeT0 + 20 * 86400;
  DeliverStarterEndingAtAndANewerProfessionalEndingBefore(&w, t2, t1);

  EXPECT_EQ(Query(w, "user-1").subscription_id(), "sub_pro");  // state-only: unchanged
  for (const int64_t now_s : {t2, t2 + 1, t2 + 86400}) {
    UserSubscription sub;
    ASSERT_TRUE(GetUserSubscriptionAt(w.state, "user-1", now_s, &sub).ok());
    EXPECT_EQ(sub.subscription_id(), "sub_starter") << now_s;
    UserAccess access;
    ASSERT_TRUE(GetUserAccessAt(w.state, "user-1", now_s, &access).ok());
    EXPECT_EQ(access.subscription.subscription_id(), "sub_starter") << now_s;
    EXPECT_TRUE(access.EndedAt(now_s));
    EXPECT_EQ(access.scheduled_end(), t2);
    UsageTerms terms;
    const Status refused = ResolveAccessTerms(access, now_s, &terms);
    EXPECT_EQ(refused.problem(), "subscription_required");
    EXPECT_NE(refused.message().find("ended at " + FormatRfc3339Seconds(t2)), std::string::npos)
        << refused.message();
  }
  // The cache's entry resolves the same at the request's time.
  UserAccess cached = Access(w, "user-1");
  cached.ResolveAt(t2 + 1);
  EXPECT_EQ(cached.subscription.subscription_id(), "sub_starter");
}

// A chain of scheduled ends: an admin comps user-1 to Enterprise before both plans; a newer
// Professional ends at T1, an older Starter at T2 > T1 (no deletions yet). Professional decides
// before T1, Starter in [T1, T2), the comp from T2 on -- each step resolved at the request's time
// from what the state says (the access cache's entry), and access does not end.
TEST_F(SubscriptionsTest, AChainOfScheduledEndsResolvesToItsLastLink) {
  World w = Fresh();
  const int64_t t1 = kStripeT0 + 10 * 86400;
  const int64_t t2 = kStripeT0 + 20 * 86400;
  OverrideChange comp;
  comp.plan_id = std::optional<std::string>("enterprise");
  comp.status.emplace(SubscriptionStatus::kActive);
  SetAdminOverride command("user-1", comp, Actor::Admin("root", "root@example.com"));
  Decision decision;
  ASSERT_TRUE(ledger::testing::RunCommand(&command, AllFolds(), &w.state, &w.head,
                                          (kStripeT0 - 90 * 86400) * int64_t{1'000'000},
                                          &decision)
                  .ok())
      << decision.body;
  DeliverStarterEndingAtAndANewerProfessionalEndingBefore(&w, t2, t1);

  const UserAccess cached = Access(w, "user-1");
  EXPECT_EQ(cached.subscription.subscription_id(), "sub_pro");
  EXPECT_EQ(cached.access_end(), std::nullopt);
  auto at = [&](int64_t now_s) {
    UserAccess resolved = cached;
    resolved.ResolveAt(now_s);
    UserAccess out;
    const Status s = GetUserAccessAt(w.state, "user-1", now_s, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(out.subscription.subscription_id(), resolved.subscription.subscription_id())
        << now_s;
    EXPECT_EQ(out.overridden(), resolved.overridden()) << now_s;
    return out;
  };
  for (const int64_t now_s : {t1 - 86400, t1 - 1}) {
    const UserAccess pro_decides = at(now_s);
    EXPECT_EQ(pro_decides.subscription.subscription_id(), "sub_pro") << now_s;
    EXPECT_FALSE(pro_decides.overridden());
    ASSERT_TRUE(pro_decides.plan);
    EXPECT_EQ(pro_decides.plan->id, "professional");
    EXPECT_EQ(pro_decides.access_end(), std::nullopt);
  }
  for (const int64_t now_s : {t1, t2 - 1}) {
    const UserAccess starter_decides = at(now_s);
    EXPECT_EQ(starter_decides.subscription.subscription_id(), "sub_starter") << now_s;
    EXPECT_FALSE(starter_decides.overridden());
    ASSERT_TRUE(starter_decides.plan);
    EXPECT_EQ(starter_decides.plan->id, "starter");
    EXPECT_FALSE(starter_decides.EndedAt(now_s));
    EXPECT_EQ(starter_decides.access_end(), std::nullopt);
  }
  for (const int64_t now_s : {t2, t2 + 86400}) {
    const UserAccess comp_decides = at(now_s);
    EXPECT_TRUE(comp_decides.overridden()) << now_s;
    ASSERT_TRUE(comp_decides.plan);
    EXPECT_EQ(comp_decides.plan->id, "enterprise");
    EXPECT_EQ(comp_decides.access, AccessLevel::kGranted);
    EXPECT_FALSE(comp_decides.EndedAt(now_s));
    EXPECT_TRUE(CheckServiceAccess(comp_decides, "tts").allowed);
    EXPECT_EQ(comp_decides.access_end(), std::nullopt);
  }
}

TEST_F(SubscriptionsTest, CheckServiceAccessPerPlanAndStatus) {
  struct Case {
    const char* price;
    const char* status;
    const char* service;
    bool allowed;
    const char* reason;
  };
  const std::vector<Case> cases = {
      {"price_starter_monthly", "active", "search", true, "ok"},
      {"price_starter_yearly", "active", "tts", false, "service_not_in_plan"},
      {"price_professional_monthly", "active", "litellm", true, "ok"},
      {"price_professional_yearly", "active", "bolt-diy", false, "service_not_in_plan"},
      {"price_enterprise_monthly", "active", "bolt-diy", true, "ok"},
      {"price_enterprise_monthly", "trialing", "chat", true, "ok"},
      {"price_enterprise_monthly", "past_due", "chat", true, "ok"},
      {"price_enterprise_monthly", "unpaid", "chat", false, "subscription_inactive"},
      {"price_enterprise_monthly", "incomplete", "chat", false, "subscription_inactive"},
      {"price_enterprise_monthly", "paused", "chat", false, "subscription_inactive"},
      {"price_enterprise_monthly", "canceled", "chat", false, "subscription_inactive"},
      {"price_enterprise_monthly", "active", "no-such-service", false, "unknown_service"},
      {"price_unknown", "active", "chat", false, "unknown_plan"},
  };
  for (const Case& c : cases) {
    World w = Fresh();
    StripeSubscriptionSpec spec;
    spec.event_id = "evt_case";
    spec.price_id = c.price;
    spec.status = c.status;
    Deliver(&w, StripeSubscriptionEventJson(spec));
    ServiceAccess got = CheckServiceAccess(Access(w, "user-1"), c.service);
    EXPECT_EQ(got.allowed, c.allowed) << c.price << " " << c.status << " " << c.service;
    EXPECT_EQ(got.reason, c.reason) << c.price << " " << c.status << " " << c.service;
  }
  World empty = Fresh();
  EXPECT_EQ(CheckServiceAccess(Access(empty, "nobody"), "chat").reason, "no_subscription");
  EXPECT_EQ(CheckServiceAccess(Access(empty, "nobody"), "nope").reason, "unknown_service");
}

TEST(SubscriptionStatusTest, NamesAndAccess) {
  const std::vector<std::pair<const char*, AccessLevel>> expected = {
      {"incomplete", AccessLevel::kNone},        {"incomplete_expired", AccessLevel::kNone},
      {"trialing", AccessLevel::kGranted},       {"active", AccessLevel::kGranted},
      {"past_due", AccessLevel::kGrace},         {"canceled", AccessLevel::kNone},
      {"unpaid", AccessLevel::kNone},            {"paused", AccessLevel::kNone}};
  for (const auto& [name, access] : expected) {
    SubscriptionStatus status;
    ASSERT_TRUE(ParseSubscriptionStatus(name, &status)) << name;
    EXPECT_EQ(SubscriptionStatusName(status), name);
    EXPECT_EQ(AccessFor(status), access) << name;
  }
  SubscriptionStatus status;
  EXPECT_FALSE(ParseSubscriptionStatus("none", &status));
  EXPECT_FALSE(ParseSubscriptionStatus("Active", &status));
}

// ---- deliveries that change nothing ------------------------------------------------------------

// Deliveries that carry bearer links of their own: the customer portal's login link (sent for
// every portal session ledgerd creates) and a credit note's PDF.
TEST_F(SubscriptionsTest, PortalLoginLinksAndCreditNotePdfsAreRedacted) {
  World w = Fresh();
  const std::string portal =
      R"({"id":"evt_bps","object":"event","type":"billing_portal.session.created",)"
      R"("created":1750000999,"data":{"object":{"id":"bps_1","object":"billing_portal.session",)"
      R"("customer":"cus_1","return_url":"https://app.example.com/billing",)"
      R"("url":"https://billing.stripe.com/p/session/test_abc"}}})";
  const std::string credit_note =
      R"({"id":"evt_cn","object":"event","type":"credit_note.created","created":1750001000,)"
      R"("data":{"object":{"id":"cn_1","object":"credit_note","customer":"cus_1",)"
      R"("pdf":"https://pay.stripe.com/credit_notes/acct_1/test_xyz/pdf",)"
      R"("lines":{"object":"list","data":[],"url":"/v1/credit_notes/cn_1/lines"}}}})";
  for (const std::string& raw : {portal, credit_note}) {
    Decision d = Deliver(&w, raw);
    ASSERT_EQ(d.events.size(), 1u);
    const std::string& data = d.events[0].data;
    EXPECT_TRUE(EventMatchesSchema(d.events[0]));
    EXPECT_EQ(data.find("stripe.com/"), std::string::npos) << data;
    EXPECT_NE(data.find("[redacted]"), std::string::npos) << data;
    if (raw == portal) {  // where the customer returns to is no secret
      EXPECT_NE(data.find("https://app.example.com/billing"), std::string::npos) << data;
    }
  }
}

TEST_F(SubscriptionsTest, UnknownTypeIsStoredWithoutStateChangeAndSecretsRedacted) {
  World w = Fresh();
  for (const std::string& raw : StripeLifecycle({})) Deliver(&w, raw);
  Rows before = SubscriptionRows(w);
  const std::string raw =
      R"({"id":"evt_pi","object":"event","api_version":"2025-03-31.basil","created":1750000999,)"
      R"("data":{"object":{"id":"pi_1","object":"payment_intent","amount":1.50,"big":12345678901234567890,)"
      R"("exp":1e2,"client_secret":"pi_1_secret_abc","nested":[{"secret":{"k":"v"}},{"client_secret":null}],)"
      R"("customer":"cus_1","note":"caf\u00e9 \/ \"q\"","latest_invoice":{"hosted_invoice_url":)"
      R"("https://invoice.stripe.com/i/acct_1/live_abc","invoice_pdf":"https://pay.stripe.com/)"
      R"(invoice/acct_1/live_abc/pdf"},"receipt_url":"https://pay.stripe.com/receipts/r_1",)"
      R"("next_action":{"boleto_display_details":{"hosted_voucher_url":"https://payments.stripe.com/)"
      R"(boleto/voucher/test_1"},"cashapp_handle_redirect_or_display_qr_code":{"mobile_auth_url":)"
      R"("https://pm-redirects.stripe.com/authorize/acct_1/pa_1","qr_code":{"image_url_png":)"
      R"("https://qr.stripe.com/pa_1.png","image_url_svg":"https://qr.stripe.com/pa_1.svg"}},)"
      R"("paynow_display_qr_code":{"data":"00020101021226490009SG.PAYNOW"}}}},)"
      R"("livemode":true,"type":"payment_intent.succeeded"})";
  Decision d = Deliver(&w, raw);
  ASSERT_EQ(d.events.size(), 1u);
  EXPECT_EQ(d.events[0].type, "stripe.webhook_received.v1");
  EXPECT_TRUE(EventMatchesSchema(d.events[0]));
  EXPECT_EQ(SubscriptionRows(w), before);
  const std::string& data = d.events[0].data;
  EXPECT_EQ(data.find("pi_1_secret_abc"), std::string::npos);
  EXPECT_NE(data.find(R"("client_secret":"[redacted]")"), std::string::npos);
  EXPECT_NE(data.find(R"({"secret":"[redacted]"})"), std::string::npos);
  EXPECT_NE(data.find(R"({"client_secret":null})"), std::string::npos);
  // Bearer links to an invoice's payment page, its PDF, a receipt, a voucher, a QR code and a
  // wallet's sign-in.
  EXPECT_EQ(data.find("stripe.com/"), std::string::npos) << data;
  EXPECT_NE(data.find(R"("next_action":"[redacted]")"), std::string::npos) << data;
  EXPECT_EQ(data.find("SG.PAYNOW"), std::string::npos) << data;  // a QR code's payload
  EXPECT_NE(data.find(R"("hosted_invoice_url":"[redacted]","invoice_pdf":"[redacted]")"),
            std::string::npos) << data;
  // Numbers exactly as sent.
  EXPECT_NE(data.find(R"("amount":1.50,"big":12345678901234567890,"exp":1e2)"), std::string::npos)
      << data;
  rapidjson::Document doc;
  doc.Parse(data.c_str());
  ASSERT_FALSE(doc.HasParseError());
  EXPECT_STREQ(doc["type"].GetString(), "payment_intent.succeeded");
  EXPECT_TRUE(doc["livemode"].GetBool());
  EXPECT_EQ(doc["created"].GetInt64(), 1750000999);
  EXPECT_EQ(doc["raw_bytes"].GetUint64(), raw.size());
  EXPECT_EQ(std::string(doc["raw_sha256"].GetString()), HexEncode(Sha256(raw)));
  EXPECT_STREQ(doc["payload"]["data"]["object"]["note"].GetString(), "caf\xc3\xa9 / \"q\"");
  // Whom it concerns is still resolved through the customer link, for the subject.
  EXPECT_STREQ(doc["user_id"].GetString(), "user-1");
  EXPECT_EQ(d.events[0].subject, "user-1");

  // A known type whose object is unusable (no subscription id) is stored only.
  Decision odd = Deliver(
      &w, R"({"id":"evt_odd","type":"customer.subscription.updated","created":1750001000,)"
          R"("data":{"object":{"object":"subscription","status":"active"}}})");
  EXPECT_EQ(Types(odd), (std::vector<std::string>{"stripe.webhook_received.v1"}));
  EXPECT_EQ(odd.events[0].subject, "stripe_event:evt_odd");
  EXPECT_EQ(SubscriptionRows(w), before);
}

TEST_F(SubscriptionsTest, CheckoutClientSecretNeverReachesAnEvent) {
  World w = Fresh();
  Decision d = Deliver(&w, StripeLifecycle({})[0]);
  for (const NewEvent& e : d.events) {
    EXPECT_EQ(e.data.find("cs_test_secret_must_not_be_stored"), std::string::npos) << e.type;
    EXPECT_TRUE(EventMatchesSchema(e));
  }
}

// Who the customer is and the card beyond brand, last4 and expiry never reach the log: GET
// /api/v1/events, exports and Kafka readers got a card's fingerprint (one id for one card
// number across merchants), its check results, a billing address, phone and name. What the
// decider reads (customer_details.email, customer_email, amounts, ids) still derives the same
// events.
class StripeWebhookTest : public SubscriptionsTest {};

TEST_F(StripeWebhookTest, PaymentMethodDetailsBeyondLast4AreNotStored) {
  World w = Fresh();
  const std::string billing_details =
      R"("billing_details":{"address":{"city":"London","country":"GB","line1":"221B Baker St",)"
      R"("line2":null,"postal_code":"NW1 6XE","state":null},"email":"jenny@example.com",)"
      R"("name":"Jenny Rosen","phone":"+15555550100"})";
  const std::string card_kept = R"("brand":"visa","country":"US","exp_month":12,"exp_year":2030,)"
                                R"("funding":"credit","last4":"4242")";
  const std::string payment_method =
      R"({"id":"evt_pm","object":"event","type":"payment_method.attached","created":1750000990,)"
      R"("data":{"object":{"id":"pm_1","object":"payment_method",)" + billing_details + "," +
      R"("card":{)" + card_kept + R"(,"checks":{"address_line1_check":"pass",)"
      R"("address_postal_code_check":"pass","cvc_check":"pass"},"fingerprint":"Xq9fPrintAbc123",)"
      R"("iin":"424242","three_d_secure_usage":{"supported":true},"wallet":null},)"
      R"("customer":"cus_pii","type":"card"}}})";
  const std::string charge =
      R"({"id":"evt_ch","object":"event","type":"charge.succeeded","created":1750000991,)"
      R"("data":{"object":{"id":"ch_1","object":"charge","amount":1900,"currency":"usd",)"
      R"("customer":"cus_pii",)" + billing_details + "," +
      R"("payment_method_details":{"type":"card","card":{)" + card_kept +
      R"(,"checks":{"cvc_check":"pass"},"fingerprint":"Xq9fPrintAbc123",)"
      R"("network_transaction_id":"NTI5550001","three_d_secure":{"authentication_flow":)"
      R"("challenge","result":"authenticated","version":"2.2.0"},"wallet":{"type":"apple_pay",)"
      R"("apple_pay":{},"dynamic_last4":"9876"}},"paypal":{"payer_id":"PAYERX1"},)"
      R"("cashapp":{"cashtag":"$jennyr","buyer_id":"BUYERX1"}},)"
      R"("shipping":{"address":{"line1":"221B Baker St"},"name":"Jenny Rosen",)"
      R"("phone":"+15555550100"}}}})";
  const std::string checkout =
      R"({"id":"evt_cs","object":"event","type":"checkout.session.completed",)"
      R"("created":1750000992,"data":{"object":{"id":"cs_sub_1","object":"checkout.session",)"
      R"("customer":"cus_pii","customer_details":{"address":{"line1":"221B Baker St"},)"
      R"("email":"jenny@example.com","name":"Jenny Rosen","phone":"+15555550100",)"
      R"("tax_exempt":"none","tax_ids":[{"type":"eu_vat","value":"DE123456789"}]},)"
      R"("custom_fields":[{"key":"company","type":"text","text":{"value":"Acme Rosen Ltd"}}],)"
      R"("customer_email":"jenny@example.com","metadata":{"plan_id":"starter"},)"
      R"("mode":"subscription","payment_status":"paid","status":"complete",)"
      R"("subscription":"sub_pii"}}})";
  const std::string invoice =
      R"({"id":"evt_in","object":"event","type":"invoice.paid","created":1750000993,)"
      R"("data":{"object":{"id":"in_pii","object":"invoice","customer":"cus_pii",)"
      R"("customer_address":{"line1":"221B Baker St"},"customer_email":"jenny@example.com",)"
      R"("customer_name":"Jenny Rosen","customer_phone":"+15555550100",)"
      R"("customer_shipping":{"address":{"line1":"221B Baker St"}},)"
      R"("customer_tax_ids":[{"type":"eu_vat","value":"DE123456789"}],)"
      R"("subscription":"sub_pii","amount_due":1900,"amount_paid":1900,"currency":"usd",)"
      R"("attempt_count":1,"billing_reason":"subscription_create"}}})";

  const std::vector<std::string> secrets = {
      "Xq9fPrintAbc123", "221B Baker", "NW1 6XE",    "Jenny Rosen", "+15555550100",
      "cvc_check",       "424242",     "NTI5550001", "9876",        "authenticated",
      "DE123456789",     "Acme Rosen",  "PAYERX1",    "$jennyr",     "BUYERX1"};
  std::map<std::string, Decision> decisions;
  for (const std::string& raw : {payment_method, charge, checkout, invoice}) {
    Decision d = Deliver(&w, raw);
    ASSERT_FALSE(d.events.empty());
    ASSERT_EQ(d.events[0].type, "stripe.webhook_received.v1");
    for (const NewEvent& e : d.events) {
      EXPECT_TRUE(EventMatchesSchema(e)) << e.type;
      // The delivery's record from its payload on (its raw_sha256 is hex digits).
      const size_t payload = e.data.find(R"("payload":)");
      const std::string_view data =
          std::string_view(e.data).substr(payload == std::string::npos ? 0 : payload);
      for (const std::string& secret : secrets) {
        EXPECT_EQ(data.find(secret), std::string::npos) << secret << " in " << e.data;
      }
    }
    rapidjson::Document doc;
    doc.Parse(d.events[0].data.c_str());
    ASSERT_FALSE(doc.HasParseError());
    decisions[doc["type"].GetString()] = d;
  }

  // The card as GET /billing/payment-methods shows it is kept, the rest is "[redacted]".
  for (const char* type : {"payment_method.attached", "charge.succeeded"}) {
    const std::string& data = decisions[type].events[0].data;
    EXPECT_NE(data.find(card_kept), std::string::npos) << data;
    EXPECT_NE(data.find(R"("billing_details":"[redacted]")"), std::string::npos) << data;
    EXPECT_NE(data.find(R"("checks":"[redacted]","fingerprint":"[redacted]")"), std::string::npos)
        << data;
  }
  EXPECT_NE(decisions["payment_method.attached"].events[0].data.find(
                R"("iin":"[redacted]","three_d_secure_usage":{"supported":true},"wallet":null)"),
            std::string::npos);
  const std::string& charge_data = decisions["charge.succeeded"].events[0].data;
  EXPECT_NE(charge_data.find(R"("three_d_secure":"[redacted]","wallet":"[redacted]")"),
            std::string::npos) << charge_data;
  EXPECT_NE(charge_data.find(R"("shipping":"[redacted]")"), std::string::npos) << charge_data;

  // The email the decider reads is kept, and the checkout derives what it did.
  const Decision& completed = decisions["checkout.session.completed"];
  EXPECT_EQ(Types(completed),
            (std::vector<std::string>{"stripe.webhook_received.v1", "customer.linked.v1",
                                      "subscription.checkout_completed.v1"}));
  EXPECT_NE(completed.events[0].data.find(
                R"("customer_details":{"address":"[redacted]","email":"jenny@example.com",)"
                R"("name":"[redacted]","phone":"[redacted]","tax_exempt":"none",)"
                R"("tax_ids":"[redacted]"},"custom_fields":"[redacted]",)"
                R"("customer_email":"jenny@example.com")"),
            std::string::npos) << completed.events[0].data;
  rapidjson::Document session;
  session.Parse(completed.events[2].data.c_str());
  ASSERT_FALSE(session.HasParseError());
  EXPECT_STREQ(session["email"].GetString(), "jenny@example.com");
  EXPECT_STREQ(session["user_id"].GetString(), "user-1");
  EXPECT_EQ(completed.events[2].subject, "user-1");

  const Decision& paid = decisions["invoice.paid"];
  EXPECT_EQ(Types(paid),
            (std::vector<std::string>{"stripe.webhook_received.v1", "invoice.paid.v1"}));
  EXPECT_EQ(paid.events[1].subject, "user-1");
  EXPECT_NE(paid.events[0].data.find(
                R"("customer_address":"[redacted]","customer_email":"jenny@example.com",)"
                R"("customer_name":"[redacted]","customer_phone":"[redacted]",)"
                R"("customer_shipping":"[redacted]","customer_tax_ids":"[redacted]")"),
            std::string::npos) << paid.events[0].data;
}

TEST(StripeWebhookParseTest, RejectsMalformedDeliveries) {
  const std::vector<std::string> malformed = {
      "",
      "not json",
      "[]",
      R"({"type":"invoice.paid","created":1})",                        // no id
      R"({"id":"evt_1","created":1})",                                 // no type
      R"({"id":"evt_1","type":"invoice.paid"})",                       // no created
      R"({"id":"evt_1","type":"invoice.paid","created":-1})",
      R"({"id":"evt_1","type":"invoice.paid","created":"1"})",
      R"({"id":"evt 1","type":"invoice.paid","created":1})",           // not a Stripe id
      R"({"id":"evt/1","type":"invoice.paid","created":1})",
      R"({"id":"","type":"invoice.paid","created":1})",
      R"({"id":"evt_1","type":"Invoice Paid","created":1})",
      R"({"id":"evt_1","type":"invoice.paid","created":1,"livemode":"no"})",
      R"({"id":"evt_1","type":"invoice.paid","created":1,"api_version":7})",
      R"({"id":"evt_1","id":"evt_2","type":"invoice.paid","created":1})",  // duplicate name
      "{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1,\"x\":\"\xff\"}",
      R"({"id":"evt_1","type":"invoice.paid","created":1} trailing)",
      R"({"id":"evt_1","type":"invoice.paid","created":1,"d":)" + std::string(40, '[') +
          std::string(40, ']') + "}",
  };
  for (const std::string& raw : malformed) {
    StripeWebhook webhook;
    Status s = ParseStripeWebhook(raw, &webhook);
    EXPECT_EQ(s.problem(), "malformed_event") << raw;
    EXPECT_EQ(s.code(), Code::kInvalidArgument) << raw;
  }
  StripeWebhook webhook;
  std::string huge = R"({"id":"evt_1","type":"x","created":1,"pad":")" +
                     std::string(limits::kStripeWebhookBytesMax, 'a') + "\"}";
  EXPECT_EQ(ParseStripeWebhook(huge, &webhook).code(), Code::kPayloadTooLarge);
  ASSERT_TRUE(ParseStripeWebhook(R"({"id":"evt_1","type":"ping","created":0})", &webhook).ok());
  EXPECT_FALSE(webhook.api_version);
  EXPECT_FALSE(webhook.livemode);
}

// ---- on a real Ledger: duplicates and replay --------------------------------------------------------

std::unique_ptr<Ledger> OpenLedger(const std::string& path, const Clock* clock) {
  LedgerOptions options;
  options.path = path;
  options.folds = AllFolds();
  options.clock = clock;
  std::unique_ptr<Ledger> ledger;
  Status s = Ledger::Open(options, &ledger);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return ledger;
}

TEST(SubscriptionsLedgerTest, RegisteredInAllFolds) {
  bool found = false;
  for (const Fold* fold : AllFolds()) found |= fold->Name() == kSubscriptionsFamily;
  EXPECT_TRUE(found);
}

TEST(SubscriptionsLedgerTest, DuplicatesAppendNothingAndReplayIsIdentical) {
  ledger::testing::TempDir dir;
  ManualClock clock(kNowUs);
  auto ledger = OpenLedger(dir.Sub("a"), &clock);
  ASSERT_TRUE(ledger);
  ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger.get()).ok());
  std::vector<std::string> lifecycle = StripeLifecycle({});
  std::vector<CommandResult> first;
  for (const std::string& raw : lifecycle) {
    first.push_back(ledger::testing::SubmitWebhook(ledger.get(), raw));
    ASSERT_TRUE(first.back().status.ok()) << first.back().status.ToString();
    EXPECT_FALSE(first.back().replayed);
    clock.Advance(1000);
  }
  const Position head = ledger->Head();
  const Hash head_hash = ledger->HeadHash();
  Hash digest;
  ASSERT_TRUE(ledger->ProjectionDigest(&digest).ok());

  for (size_t i = 0; i < lifecycle.size(); ++i) {
    CommandResult again = ledger::testing::SubmitWebhook(ledger.get(), lifecycle[i]);
    ASSERT_TRUE(again.status.ok());
    EXPECT_TRUE(again.replayed);
    EXPECT_EQ(again.body, first[i].body);
    EXPECT_EQ(again.position, first[i].position);
    EXPECT_NE(DuplicateWebhookBody(again.body).find("\"duplicate\":true"), std::string::npos);
    // The same event id with another body is still the same delivery.
    std::string altered = lifecycle[i];
    altered.insert(altered.size() - 1, R"(,"extra":"changed")");
    CommandResult altered_result = ledger::testing::SubmitWebhook(ledger.get(), altered);
    ASSERT_TRUE(altered_result.status.ok()) << altered_result.status.ToString();
    EXPECT_TRUE(altered_result.replayed);
  }
  EXPECT_EQ(ledger->Head(), head);
  EXPECT_EQ(ledger->HeadHash(), head_hash);
  Hash digest_after;
  ASSERT_TRUE(ledger->ProjectionDigest(&digest_after).ok());
  EXPECT_EQ(digest_after, digest);

  // Every appended event validates; replaying the log into a new directory gives the same rows.
  std::vector<Event> events;
  ASSERT_TRUE(ledger->ReadEvents(Position(0), 10000, EventFilter{}, &events).ok());
  for (const Event& e : events) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type;
  auto replica = OpenLedger(dir.Sub("b"), &clock);
  ASSERT_TRUE(replica);
  ASSERT_TRUE(replica->ImportEvents(events).ok());
  Hash replica_digest;
  ASSERT_TRUE(replica->ProjectionDigest(&replica_digest).ok());
  EXPECT_EQ(replica_digest, digest);
  auto view = replica->Snapshot();
  UserSubscription sub;
  ASSERT_TRUE(GetUserSubscription(*view, "user-1", &sub).ok());
  EXPECT_EQ(sub.subscription.status, SubscriptionStatus::kCanceled);
}

TEST(SubscriptionsLedgerTest, ConcurrentDuplicatesInOneGroupAppendOnce) {
  ledger::testing::TempDir dir;
  ManualClock clock(kNowUs);
  auto ledger = OpenLedger(dir.path(), &clock);
  ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger.get()).ok());
  const Position before = ledger->Head();
  const std::string raw = StripeLifecycle({})[1];
  std::vector<std::thread> threads;
  std::atomic<int> fresh{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      CommandResult r = ledger::testing::SubmitWebhook(ledger.get(), raw);
      EXPECT_TRUE(r.status.ok());
      if (!r.replayed) fresh.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(fresh.load(), 1);
  // The delivery, the customer link from its metadata and the state: once.
  EXPECT_EQ(ledger->Head().value(), before.value() + 3);
  std::vector<Event> received;
  ASSERT_TRUE(ledger->ReadEvents(before, 100, EventFilter{"", "stripe.webhook_received.v1"},
                                 &received).ok());
  EXPECT_EQ(received.size(), 1u);
}

}  // namespace
}  // namespace ledger::projections
