// Usage metering: the window arithmetic, the counters fold and the deciders (projections/usage.h),
// on in-memory rows and on a real Ledger (concurrency, restart, idempotency, replay).
#include "projections/usage.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "events/clock.h"
#include "events/coding.h"
#include "projections/admin.h"
#include "projections/limits.h"
#include "projections/registry.h"
#include "tests/support/schema_check.h"
#include "tests/support/test_ledger.h"
#include "tests/support/usage_fixtures.h"

namespace ledger::projections {
namespace {

using ledger::testing::AddPlanOnLedger;
using ledger::testing::kStripeT0;
using ledger::testing::OnPlan;
using ledger::testing::SmallPlan;
using ledger::testing::SubscribeOnLedger;
using ledger::testing::TestSubscription;
using ledger::testing::UsageWorld;

constexpr int64_t kUs = 1'000'000;
constexpr int64_t kDay = 86400;

int64_t At(const char* rfc3339) {
  int64_t us = 0;
  EXPECT_TRUE(ParseRfc3339(rfc3339, &us)) << rfc3339;
  return us / kUs;
}

// ---- time ----------------------------------------------------------------------------------------

TEST(UsageTimeTest, FormatsAndParsesRfc3339) {
  EXPECT_EQ(FormatRfc3339Seconds(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(kStripeT0), "2025-06-15T15:06:40Z");
  int64_t us = 0;
  ASSERT_TRUE(ParseRfc3339("2025-06-15T15:06:40Z", &us));
  EXPECT_EQ(us, kStripeT0 * kUs);
  ASSERT_TRUE(ParseRfc3339("2025-06-15T17:06:40.5+02:00", &us));
  EXPECT_EQ(us, kStripeT0 * kUs + 500000);
  ASSERT_TRUE(ParseRfc3339("2024-02-29t00:00:00.123456z", &us));
  EXPECT_EQ(FormatRfc3339(us), "2024-02-29T00:00:00.123456Z");
  for (int64_t t : {int64_t{0}, kStripeT0 * kUs + 7, int64_t{951'782'400'999'999},
                    int64_t{4'102'444'799'000'001}}) {
    EXPECT_EQ(FormatRfc3339Micros(t), FormatRfc3339(t)) << t;
  }
  for (const char* bad : {"", "2025-06-15", "2025-06-15T15:06:40", "2025-02-29T00:00:00Z",
                          "2025-13-01T00:00:00Z", "2025-06-15T24:00:00Z", "1969-12-31T23:59:59Z",
                          "2025-06-15T15:06:40.Z", "2025-06-15T15:06:40Zjunk", "２０２５-06-15T00:00:00Z"}) {
    EXPECT_FALSE(ParseRfc3339(bad, &us)) << bad;
  }
}

TEST(UsageTimeTest, MonthArithmeticClampsWithoutDrift) {
  const int64_t jan31 = At("2025-01-31T10:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(AddUtcMonths(jan31, 1)), "2025-02-28T10:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(AddUtcMonths(jan31, 2)), "2025-03-31T10:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(AddUtcMonths(jan31, 13)), "2026-02-28T10:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(AddUtcMonths(At("2024-01-31T00:00:00Z"), 1)),
            "2024-02-29T00:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(AddUtcMonths(jan31, -2)), "2024-11-30T10:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(UtcMonthStart(jan31)), "2025-01-01T00:00:00Z");
  EXPECT_EQ(FormatRfc3339Seconds(UtcDayStart(jan31)), "2025-01-31T00:00:00Z");
}

// ---- windows -------------------------------------------------------------------------------------

Plan CatalogPlan(const std::string& id) {
  for (const Plan& plan : InitialPlans()) {
    if (plan.id == id) return plan;
  }
  ADD_FAILURE() << "no plan " << id;
  return Plan();
}

SubscriptionRecord Period(int64_t start, int64_t end) {
  SubscriptionRecord sub;
  sub.subscription_id = "sub_1";
  sub.status = SubscriptionStatus::kActive;
  sub.current_period_start = start;
  sub.current_period_end = end;
  sub.created = start;
  return sub;
}

TEST(UsageTermsTest, TrialIsUtcDaysClippedToSevenDaysThenExpires) {
  const Plan trial = CatalogPlan("trial");
  SubscriptionRecord sub = Period(kStripeT0, kStripeT0 + 30 * kDay);
  sub.status = SubscriptionStatus::kTrialing;
  sub.trial_start = kStripeT0;  // 2025-06-15T15:06:40Z
  UsageTerms t;
  ASSERT_TRUE(ComputeUsageTerms(&trial, &sub, kStripeT0 + 60, &t).ok());
  EXPECT_EQ(t.limit, 100);
  EXPECT_EQ(t.trial_limit, 700);
  EXPECT_EQ(t.window, (UsageWindow{kStripeT0, At("2025-06-16T00:00:00Z"), WindowKind::kTrialDay}));
  ASSERT_TRUE(t.trial);
  EXPECT_EQ(t.trial->end_s, kStripeT0 + 7 * kDay);
  // A middle day is the whole UTC day.
  ASSERT_TRUE(ComputeUsageTerms(&trial, &sub, At("2025-06-18T12:00:00Z"), &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2025-06-18T00:00:00Z"), At("2025-06-19T00:00:00Z"),
                                   WindowKind::kTrialDay}));
  // The eighth UTC day is cut at the end of the trial.
  ASSERT_TRUE(ComputeUsageTerms(&trial, &sub, At("2025-06-22T09:00:00Z"), &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2025-06-22T00:00:00Z"), kStripeT0 + 7 * kDay,
                                   WindowKind::kTrialDay}));
  Status s = ComputeUsageTerms(&trial, &sub, kStripeT0 + 7 * kDay, &t);
  EXPECT_EQ(s.code(), Code::kPaymentRequired);
  EXPECT_EQ(s.problem(), "trial_expired");
  // An earlier Stripe trial_end ends it sooner.
  sub.trial_end = kStripeT0 + 3 * kDay;
  EXPECT_EQ(ComputeUsageTerms(&trial, &sub, kStripeT0 + 3 * kDay, &t).problem(), "trial_expired");
  // Stripe's trial_end is the trial paid for: an admin who lowers the plan's trial_days to 3
  // afterwards does not end a running 7-day trial on day 4 (nor cut its 700 calls to 300).
  Plan shortened = trial;
  shortened.trial_days = 3;
  sub.trial_end = kStripeT0 + 7 * kDay;
  ASSERT_TRUE(ComputeUsageTerms(&shortened, &sub, kStripeT0 + 4 * kDay, &t).ok());
  EXPECT_EQ(t.trial_limit, 700);
  ASSERT_TRUE(t.trial);
  EXPECT_EQ(t.trial->end_s, kStripeT0 + 7 * kDay);
  EXPECT_EQ(ComputeUsageTerms(&shortened, &sub, kStripeT0 + 7 * kDay, &t).problem(), "trial_expired");
}

TEST(UsageTermsTest, MonthlyPlansUseTheBillingPeriodElseTheCalendarMonth) {
  const Plan starter = CatalogPlan("starter");
  const int64_t start = At("2025-06-15T15:06:40Z");
  const int64_t end = At("2025-07-15T15:06:40Z");
  SubscriptionRecord sub = Period(start, end);
  UsageTerms t;
  ASSERT_TRUE(ComputeUsageTerms(&starter, &sub, start + 10 * kDay, &t).ok());
  EXPECT_EQ(t.limit, 1000);
  EXPECT_EQ(t.window, (UsageWindow{start, end, WindowKind::kBillingMonth}));
  // Past the period with no renewal seen: the next month, from the period's end.
  ASSERT_TRUE(ComputeUsageTerms(&starter, &sub, end + 5, &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{end, At("2025-08-15T15:06:40Z"), WindowKind::kBillingMonth}));
  // No period known: the calendar month.
  ASSERT_TRUE(ComputeUsageTerms(&starter, nullptr, start, &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2025-06-01T00:00:00Z"), At("2025-07-01T00:00:00Z"),
                                   WindowKind::kCalendarMonth}));
  // No plan: calendar month, no limit.
  ASSERT_TRUE(ComputeUsageTerms(nullptr, nullptr, start, &t).ok());
  EXPECT_FALSE(t.limit);
  EXPECT_EQ(t.window.kind, WindowKind::kCalendarMonth);
  // Enterprise: unlimited, still windowed by the billing period.
  const Plan enterprise = CatalogPlan("enterprise");
  ASSERT_TRUE(ComputeUsageTerms(&enterprise, &sub, start, &t).ok());
  EXPECT_FALSE(t.limit);
  EXPECT_EQ(t.window, (UsageWindow{start, end, WindowKind::kBillingMonth}));
}

TEST(UsageTermsTest, YearlyPeriodIsCutIntoBillingMonths) {
  const Plan starter = CatalogPlan("starter");
  const int64_t start = At("2025-01-31T08:00:00Z");
  const int64_t end = At("2026-01-31T08:00:00Z");
  SubscriptionRecord sub = Period(start, end);
  UsageTerms t;
  ASSERT_TRUE(ComputeUsageTerms(&starter, &sub, At("2025-03-01T00:00:00Z"), &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2025-02-28T08:00:00Z"), At("2025-03-31T08:00:00Z"),
                                   WindowKind::kBillingMonth}));
  ASSERT_TRUE(ComputeUsageTerms(&starter, &sub, At("2026-01-31T07:59:59Z"), &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2025-12-31T08:00:00Z"), end, WindowKind::kBillingMonth}));
}

// A period that is not one month (a week, a year) is continued from its end when its renewal is
// late: a yearly renewal starts there and is cut into months from that start, so the months
// predicted are those the renewal brings.
TEST(UsageTermsTest, MonthsPastAPeriodNotOfOneMonthContinueFromItsEnd) {
  const Plan starter = CatalogPlan("starter");
  UsageTerms t;
  SubscriptionRecord weekly = Period(At("2027-03-01T10:00:00Z"), At("2027-03-08T10:00:00Z"));
  ASSERT_TRUE(ComputeUsageTerms(&starter, &weekly, At("2027-03-09T00:00:00Z"), &t).ok());
  EXPECT_EQ(t.window, (UsageWindow{At("2027-03-08T10:00:00Z"), At("2027-04-08T10:00:00Z"),
                                   WindowKind::kBillingMonth}));
  SubscriptionRecord yearly = Period(At("2027-01-31T08:00:00Z"), At("2028-01-31T08:00:00Z"));
  const int64_t late = At("2028-03-30T00:00:00Z");
  const UsageWindow march{At("2028-02-29T08:00:00Z"), At("2028-03-31T08:00:00Z"),
                          WindowKind::kBillingMonth};
  ASSERT_TRUE(ComputeUsageTerms(&starter, &yearly, late, &t).ok());
  EXPECT_EQ(t.window, march);
  SubscriptionRecord renewed = Period(At("2028-01-31T08:00:00Z"), At("2029-01-31T08:00:00Z"));
  ASSERT_TRUE(ComputeUsageTerms(&starter, &renewed, late, &t).ok());
  EXPECT_EQ(t.window, march);
  // A yearly anchor on Feb 29: the period ends on Feb 28, the renewal starts and counts from there.
  yearly = Period(At("2028-02-29T08:00:00Z"), At("2029-02-28T08:00:00Z"));
  renewed = Period(At("2029-02-28T08:00:00Z"), At("2030-02-28T08:00:00Z"));
  UsageTerms after_renewal;
  ASSERT_TRUE(ComputeUsageTerms(&starter, &yearly, At("2029-03-29T00:00:00Z"), &t).ok());
  ASSERT_TRUE(
      ComputeUsageTerms(&starter, &renewed, At("2029-03-29T00:00:00Z"), &after_renewal).ok());
  EXPECT_EQ(t.window, after_renewal.window);
  EXPECT_EQ(t.window.start_s, At("2029-03-28T08:00:00Z"));
}

TEST(UsageCounterTest, EncodingRoundTripsAndRejectsGarbage) {
  UsageCounter c;
  c.window_end_s = 12345;
  c.kind = WindowKind::kTrialDay;
  c.used = 99;
  c.limit = 100;
  c.announced = {{100, kThreshold80}, {90, kThreshold80 | kThreshold100}};
  c.resets = 2;
  c.recorded = 250;
  c.services = {{"chat", 90}, {"ops-center", 9}};
  UsageCounter back;
  ASSERT_TRUE(DecodeUsageCounter(EncodeUsageCounter(c), &back).ok());
  EXPECT_EQ(back, c);
  std::string bytes = EncodeUsageCounter(c);
  EXPECT_TRUE(DecodeUsageCounter(bytes.substr(0, bytes.size() - 1), &back).IsCorruption());
  EXPECT_TRUE(DecodeUsageCounter(bytes + "x", &back).IsCorruption());
  EXPECT_TRUE(DecodeUsageCounter("", &back).IsCorruption());
  // A carry in parts, each with its end (format 5).
  const std::string uncarried = bytes;
  c.carried = {UsageCarry{9, {{"chat", 9}}, 777},
               UsageCarry{3, {{"chat", 1}, {"ops-center", 2}}, 888}};
  bytes = EncodeUsageCounter(c);
  EXPECT_EQ(bytes[0], 5);
  ASSERT_TRUE(DecodeUsageCounter(bytes, &back).ok());
  EXPECT_EQ(back, c);
  EXPECT_TRUE(DecodeUsageCounter(bytes.substr(0, bytes.size() - 1), &back).IsCorruption());
  EXPECT_TRUE(DecodeUsageCounter(bytes + "x", &back).IsCorruption());
  std::string no_parts = uncarried + std::string(4, '\0');
  no_parts[0] = 5;
  EXPECT_TRUE(DecodeUsageCounter(no_parts, &back).IsCorruption());
  // One carry with its end (format 4: no part count), or without it (format 3): one part.
  c.carried.resize(1);
  bytes = EncodeUsageCounter(c);
  std::string format4 = uncarried + bytes.substr(uncarried.size() + 4);
  format4[0] = 4;
  ASSERT_TRUE(DecodeUsageCounter(format4, &back).ok());
  EXPECT_EQ(back, c);
  EXPECT_TRUE(DecodeUsageCounter(format4.substr(0, format4.size() - 1), &back).IsCorruption());
  std::string format3 = format4.substr(0, format4.size() - 8);
  format3[0] = 3;
  ASSERT_TRUE(DecodeUsageCounter(format3, &back).ok());
  c.carried[0].until_s = 0;
  EXPECT_EQ(back, c);
  // The window end before a scheduled end cut it (format 6), with or without a carry.
  c.carried.clear();
  c.uncut_end_s = 99999;
  bytes = EncodeUsageCounter(c);
  EXPECT_EQ(bytes[0], 6);
  ASSERT_TRUE(DecodeUsageCounter(bytes, &back).ok());
  EXPECT_EQ(back, c);
  EXPECT_EQ(back.UncutEnd(), 99999);
  EXPECT_TRUE(DecodeUsageCounter(bytes.substr(0, bytes.size() - 1), &back).IsCorruption());
  EXPECT_TRUE(DecodeUsageCounter(bytes + "x", &back).IsCorruption());
  c.carried = {UsageCarry{9, {{"chat", 9}}, 777}};
  ASSERT_TRUE(DecodeUsageCounter(EncodeUsageCounter(c), &back).ok());
  EXPECT_EQ(back, c);
  c.uncut_end_s = 0;  // not cut: format 5, the end of the last record
  EXPECT_EQ(EncodeUsageCounter(c)[0], 5);
  EXPECT_EQ(c.UncutEnd(), 12345);
}

TEST(UsageCounterTest, ARowOfTheOneLimitFormatReadsAsThatLimitsAnnouncements) {
  // Version 1 kept the thresholds of the last limit announced for only.
  auto v1 = [](uint8_t bits, int64_t bits_limit) {
    std::string v(1, '\x01');
    PutFixed64BE(&v, 12345);  // window end
    v.push_back(static_cast<char>(WindowKind::kDay));
    PutFixed64BE(&v, 9);  // used
    v.push_back(1);
    PutFixed64BE(&v, 10);  // limit
    v.push_back(static_cast<char>(bits));
    PutFixed64BE(&v, static_cast<uint64_t>(bits_limit));
    PutFixed64BE(&v, 0);   // resets
    PutFixed64BE(&v, 9);   // recorded
    PutFixed32BE(&v, 0);   // services
    return v;
  };
  UsageCounter c;
  ASSERT_TRUE(DecodeUsageCounter(v1(kThreshold80, 10), &c).ok());
  EXPECT_EQ(c.used, 9);
  EXPECT_EQ(c.announced, (std::vector<AnnouncedThresholds>{{10, kThreshold80}}));
  ASSERT_TRUE(DecodeUsageCounter(v1(0, 0), &c).ok());
  EXPECT_TRUE(c.announced.empty());
  EXPECT_TRUE(DecodeUsageCounter(v1(4, 10), &c).IsCorruption());
}

TEST(UsageCounterTest, AnnouncementsAreKeptPerLimitForTheLastFewLimits) {
  UsageCounter c;
  c.Announce(10, kThreshold80);
  c.Announce(9, kThreshold80);
  c.Announce(9, kThreshold100);
  c.Announce(10, kThreshold100);
  EXPECT_EQ(c.AnnouncedFor(10), kThreshold80 | kThreshold100);
  EXPECT_EQ(c.AnnouncedFor(9), kThreshold80 | kThreshold100);
  EXPECT_EQ(c.AnnouncedFor(8), 0);
  EXPECT_EQ(c.announced.back().limit, 10);  // the most recent last
  // Past the bound, the limit announced for longest ago is forgotten (9, not 10).
  for (size_t i = 2; i < kUsageAnnouncedLimitsMax; ++i) {
    c.Announce(100 + static_cast<int64_t>(i), kThreshold80);
  }
  ASSERT_EQ(c.announced.size(), kUsageAnnouncedLimitsMax);
  c.Announce(10, kThreshold80);
  c.Announce(1000, kThreshold80);
  EXPECT_EQ(c.announced.size(), kUsageAnnouncedLimitsMax);
  EXPECT_EQ(c.AnnouncedFor(9), 0);
  EXPECT_EQ(c.AnnouncedFor(10), kThreshold80 | kThreshold100);
  UsageCounter back;
  ASSERT_TRUE(DecodeUsageCounter(EncodeUsageCounter(c), &back).ok());
  EXPECT_EQ(back, c);
}

// ---- the fold: usage.batch_recorded.v1 ----------------------------------------------------------

// A usage.recorded.v1 with the batch event's common fields and one item's fields.
std::string RecordedFromItem(const std::string& user, const std::string& item_json) {
  rapidjson::Document item;
  item.Parse(item_json.c_str());
  rapidjson::Document out;
  out.SetObject();
  auto& a = out.GetAllocator();
  out.AddMember("user_id", rapidjson::Value(user.c_str(), a), a);
  out.AddMember("source", "batch", a);
  out.AddMember("plan_id", "tiny", a);
  out.AddMember("subscription_id", rapidjson::Value(rapidjson::kNullType), a);
  for (auto& m : item.GetObject()) {
    out.AddMember(rapidjson::Value(m.name, a), rapidjson::Value(m.value, a), a);
  }
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  out.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

Event UsageEvent(std::string_view type, const std::string& user, std::string data,
                 uint64_t position) {
  Event e;
  e.type = std::string(type);
  e.subject = user;
  e.data = std::move(data);
  e.position = Position(position);
  e.id = "id-" + std::to_string(position);
  e.time_us = kStripeT0 * kUs;
  return e;
}

TEST(UsageFoldTest, ABatchEventHasExactlyTheEffectOfItsItemsAsRecordedEvents) {
  const std::string w1 =
      R"("window_start":"2025-06-15T15:06:40Z","window_end":"2025-07-15T15:06:40Z",)"
      R"("window_kind":"billing_month")";
  const std::string w2 =
      R"("window_start":"2025-07-15T15:06:40Z","window_end":"2025-08-15T15:06:40Z",)"
      R"("window_kind":"billing_month")";
  // Two windows, interleaved; a limit change within W1; metadata on one item.
  const std::vector<std::string> items = {
      R"({"idempotency_key":"k1","service":"chat","quantity":2,)"
      R"("occurred_at":"2025-06-16T00:00:00.000001Z",)" + w1 + R"(,"limit":10,"used_after":7})",
      R"({"idempotency_key":"k2","service":"search","quantity":3,)"
      R"("occurred_at":"2025-07-16T00:00:00.000000Z",)" + w2 + R"(,"limit":null,"used_after":3})",
      R"({"idempotency_key":"k3","service":"chat","quantity":5,)"
      R"("occurred_at":"2025-06-17T00:00:00.000000Z",)" + w1 +
          R"(,"limit":20,"used_after":12,"metadata":{"model":"m"}})",
      R"({"idempotency_key":"k4","service":"tts","quantity":1,)"
      R"("occurred_at":"2025-06-17T00:00:00.000000Z",)" + w1 + R"(,"limit":20,"used_after":13})",
  };
  std::string batch_data =
      R"({"user_id":"u","source":"batch","plan_id":"tiny","subscription_id":null,"items":[)";
  for (size_t i = 0; i < items.size(); ++i) batch_data += (i ? "," : "") + items[i];
  batch_data += "]}";
  ASSERT_TRUE(ledger::testing::EventDataMatchesSchema(kUsageBatchRecordedV1, batch_data));

  // The same history before: a consume of 5 in W1 and its 80% threshold... of another limit.
  auto seed = [&](ledger::testing::MemoryState* state) {
    UsageCountersFold fold;
    const std::string before =
        RecordedFromItem("u", R"({"idempotency_key":"c0","service":"chat","quantity":5,)"
                              R"("occurred_at":"2025-06-15T16:00:00.000000Z",)" +
                                  w1 + R"(,"limit":10,"used_after":5})");
    ASSERT_TRUE(fold.Apply(UsageEvent(kUsageRecordedV1, "u", before, 3), *state, state).ok());
    const std::string threshold =
        R"({"user_id":"u","threshold_percent":80,)" + w1 +
        R"(,"plan_id":"tiny","limit":10,"used":8,"service":"chat","idempotency_key":"c0"})";
    ASSERT_TRUE(
        fold.Apply(UsageEvent(kUsageThresholdReachedV1, "u", threshold, 4), *state, state).ok());
  };
  UsageCountersFold fold;
  ledger::testing::MemoryState batched, expanded, short_of_one;
  seed(&batched);
  seed(&expanded);
  seed(&short_of_one);
  ASSERT_TRUE(fold.Apply(UsageEvent(kUsageBatchRecordedV1, "u", batch_data, 9), batched, &batched)
                  .ok());
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string data = RecordedFromItem("u", items[i]);
    ASSERT_TRUE(ledger::testing::EventDataMatchesSchema(kUsageRecordedV1, data)) << data;
    // At the batch event's position: the dedupe rows then hold the same value.
    const Event e = UsageEvent(kUsageRecordedV1, "u", data, 9);
    ASSERT_TRUE(fold.Apply(e, expanded, &expanded).ok());
    if (i + 1 < items.size()) {
      ASSERT_TRUE(fold.Apply(e, short_of_one, &short_of_one).ok());
    }
  }
  EXPECT_EQ(batched.rows(), expanded.rows());
  EXPECT_NE(batched.rows(), short_of_one.rows());  // negative control: the comparison can fail

  UsageCounter c1, c2;
  ASSERT_TRUE(GetUsageCounter(batched, "u", At("2025-06-15T15:06:40Z"),
                              WindowKind::kBillingMonth, &c1).ok());
  EXPECT_EQ(c1.used, 13);
  EXPECT_EQ(c1.recorded, 13);
  EXPECT_EQ(c1.limit, 20);
  EXPECT_EQ(c1.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 12}, {"tts", 1}}));
  EXPECT_EQ(c1.AnnouncedFor(10), kThreshold80);  // announced for 10; the fold only records that
  ASSERT_TRUE(GetUsageCounter(batched, "u", At("2025-07-15T15:06:40Z"),
                              WindowKind::kBillingMonth, &c2).ok());
  EXPECT_EQ(c2.used, 3);
  EXPECT_FALSE(c2.limit);
  bool found = false;
  for (const char* key : {"k1", "k2", "k3", "k4", "c0"}) {
    ASSERT_TRUE(HasUsageKey(batched, "u", key, &found).ok());
    EXPECT_TRUE(found) << key;
  }
  ASSERT_TRUE(HasUsageKey(batched, "u", "k5", &found).ok());
  EXPECT_FALSE(found);
  std::vector<UsageWindowRow> windows;
  ASSERT_TRUE(ListUserUsage(batched, "u", 10, &windows).ok());
  EXPECT_EQ(windows.size(), 2u);
}

// The windows of the restarted-period fold tests: a Starter month from Jan 1, used up on Jan 5
// (`StarterUsedUp()`, as usage.recorded.v1 data), and the Professional month Stripe restarted on
// Jan 10, before the Starter month's end.
const std::string kStarterJan =
    R"("window_start":"2026-01-01T00:00:00Z","window_end":"2026-02-01T00:00:00Z",)"
    R"("window_kind":"billing_month")";
const std::string kProfessionalJan10 =
    R"("window_start":"2026-01-10T00:00:00Z","window_end":"2026-02-10T00:00:00Z",)"
    R"("window_kind":"billing_month")";

std::string StarterUsedUp() {
  return RecordedFromItem("u", R"({"idempotency_key":"s1","service":"chat","quantity":1000,)"
                               R"("occurred_at":"2026-01-05T00:00:00.000000Z",)" +
                                   kStarterJan + R"(,"limit":1000,"used_after":1000})");
}

// A billing month that restarted an unfinished one, in a log written before the carry was a
// decision (events without carry_from). Jan 10 a Starter user with 1,000 used upgraded to
// Professional (a new period: its window starts Jan 10, before the Starter month's end); by
// Jan 20 each consume was admitted against a window that started at 0, up to used_after 9,500,
// and my-access said 500 remaining. A fold that re-decided the carry rebuilt that window as
// 1,000 + 9,500 = 10,500 at the first open of the new build (the fold version rebuilds the rows):
// every consume 429 until Feb 10, the counters no longer the events' used_after, and nothing in
// the log saying why. The window opened by a consume and by a batch item alike.
TEST(UsageFoldTest, ARestartedWindowWithoutACarryDecisionFoldsAsItWasRecorded) {
  const std::string& professional = kProfessionalJan10;
  // As the build before the carry wrote them: no carry_from, used_after counting from 0.
  const std::string used_up = StarterUsedUp();
  const std::string consumed =
      RecordedFromItem("u", R"({"idempotency_key":"p1","service":"chat","quantity":9500,)"
                            R"("occurred_at":"2026-01-20T00:00:00.000000Z",)" +
                                professional + R"(,"limit":10000,"used_after":9500})");
  const std::string batched =
      R"({"user_id":"u","source":"batch","plan_id":"professional","subscription_id":null,)"
      R"("items":[{"idempotency_key":"p1","service":"chat","quantity":9500,)"
      R"("occurred_at":"2026-01-20T00:00:00.000000Z",)" +
      professional + R"(,"limit":10000,"used_after":9500}]})";
  ASSERT_TRUE(ledger::testing::EventDataMatchesSchema(kUsageRecordedV1, consumed));
  ASSERT_TRUE(ledger::testing::EventDataMatchesSchema(kUsageBatchRecordedV1, batched));
  for (const bool batch : {false, true}) {
    SCOPED_TRACE(batch ? "batch item" : "consume");
    UsageCountersFold fold;
    ledger::testing::MemoryState state;
    ASSERT_TRUE(fold.Apply(UsageEvent(kUsageRecordedV1, "u", used_up, 1), state, &state).ok());
    const Event opened = batch ? UsageEvent(kUsageBatchRecordedV1, "u", batched, 2)
                               : UsageEvent(kUsageRecordedV1, "u", consumed, 2);
    ASSERT_TRUE(fold.Apply(opened, state, &state).ok());
    UsageCounter c;
    ASSERT_TRUE(GetUsageCounter(state, "u", At("2026-01-10T00:00:00Z"),
                                WindowKind::kBillingMonth, &c).ok());
    EXPECT_EQ(c.used, 9500);  // the events' used_after, not 10,500
    EXPECT_EQ(c.CarriedCalls(), 0);
    EXPECT_EQ(c.services.at("chat"), 9500);
  }
}

// The decision recorded (carry_from, the window carried from) is what the fold carries: the same
// window then starts with the Starter month's 1,000, from a consume or a batch item; a carry_from
// that is not before the window's start is a malformed event.
TEST(UsageFoldTest, ARecordedCarryIsFoldedFromTheWindowItNames) {
  const std::string& professional = kProfessionalJan10;
  const std::string used_up = StarterUsedUp();
  const std::string item_head =
      R"({"idempotency_key":"p1","service":"search","quantity":500,)"
      R"("occurred_at":"2026-01-10T00:00:01.000000Z",)" + professional;
  const std::string item_tail = R"(,"limit":10000,"used_after":1500})";
  const std::string carry = R"(,"carry_from":"2026-01-01T00:00:00Z")";
  const std::string batch_head =
      R"({"user_id":"u","source":"batch","plan_id":"professional","subscription_id":null,)"
      R"("items":[)";
  for (const bool batch : {false, true}) {
    SCOPED_TRACE(batch ? "batch item" : "consume");
    const std::string item = item_head + carry + item_tail;
    const Event opened =
        batch ? UsageEvent(kUsageBatchRecordedV1, "u", batch_head + item + "]}", 2)
              : UsageEvent(kUsageRecordedV1, "u", RecordedFromItem("u", item), 2);
    ASSERT_TRUE(ledger::testing::EventMatchesSchema(opened)) << opened.data;
    UsageCountersFold fold;
    ledger::testing::MemoryState state;
    ASSERT_TRUE(fold.Apply(UsageEvent(kUsageRecordedV1, "u", used_up, 1), state, &state).ok());
    ASSERT_TRUE(fold.Apply(opened, state, &state).ok());
    UsageCounter c;
    ASSERT_TRUE(GetUsageCounter(state, "u", At("2026-01-10T00:00:00Z"),
                                WindowKind::kBillingMonth, &c).ok());
    EXPECT_EQ(c.used, 1500);
    EXPECT_EQ(c.CarriedCalls(), 1000);
    EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 1000},
                                                                       {"search", 500}}));

    const std::string late = item_head + R"(,"carry_from":"2026-01-10T00:00:00Z")" + item_tail;
    const Event bad = batch ? UsageEvent(kUsageBatchRecordedV1, "u", batch_head + late + "]}", 2)
                            : UsageEvent(kUsageRecordedV1, "u", RecordedFromItem("u", late), 2);
    ledger::testing::MemoryState other;
    ASSERT_TRUE(fold.Apply(UsageEvent(kUsageRecordedV1, "u", used_up, 1), other, &other).ok());
    EXPECT_EQ(fold.Apply(bad, other, &other).problem(), "malformed_event");
  }
}

// A record whose window a scheduled end cut names the end it would have had (window_uncut_end),
// from a consume or a batch item; the counter keeps it with the last record's window (a record
// without it, the scheduled end taken back, clears it), and one not after window_end is malformed.
TEST(UsageFoldTest, TheUncutWindowEndIsKeptWithTheLastRecord) {
  const std::string cut =
      R"("window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-11T00:00:00Z",)"
      R"("window_kind":"billing_month")";
  const std::string uncut_end = R"(,"window_uncut_end":"2026-02-01T00:00:00Z")";
  const auto item = [](const std::string& key, const std::string& window, int64_t used_after) {
    return R"({"idempotency_key":")" + key + R"(","service":"chat","quantity":1,)"
           R"("occurred_at":"2026-01-05T00:00:00.000000Z",)" + window +
           R"(,"limit":10,"used_after":)" + std::to_string(used_after) + "}";
  };
  const std::string batch_head =
      R"({"user_id":"u","source":"batch","plan_id":"tiny","subscription_id":null,"items":[)";
  for (const bool batch : {false, true}) {
    SCOPED_TRACE(batch ? "batch item" : "consume");
    const auto event = [&](const std::string& item_json, uint64_t position) {
      return batch ? UsageEvent(kUsageBatchRecordedV1, "u", batch_head + item_json + "]}",
                                position)
                   : UsageEvent(kUsageRecordedV1, "u", RecordedFromItem("u", item_json),
                                position);
    };
    const Event first = event(item("a", cut + uncut_end, 1), 1);
    ASSERT_TRUE(ledger::testing::EventMatchesSchema(first)) << first.data;
    UsageCountersFold fold;
    ledger::testing::MemoryState state;
    ASSERT_TRUE(fold.Apply(first, state, &state).ok());
    UsageCounter c;
    ASSERT_TRUE(GetUsageCounter(state, "u", At("2026-01-01T00:00:00Z"),
                                WindowKind::kBillingMonth, &c).ok());
    EXPECT_EQ(c.window_end_s, At("2026-01-11T00:00:00Z"));
    EXPECT_EQ(c.UncutEnd(), At("2026-02-01T00:00:00Z"));
    ASSERT_TRUE(fold.Apply(event(item("b", kStarterJan, 2), 2), state, &state).ok());
    ASSERT_TRUE(GetUsageCounter(state, "u", At("2026-01-01T00:00:00Z"),
                                WindowKind::kBillingMonth, &c).ok());
    EXPECT_EQ(c.uncut_end_s, 0);
    EXPECT_EQ(c.UncutEnd(), At("2026-02-01T00:00:00Z"));
    EXPECT_EQ(c.used, 2);

    for (const std::string& bad_end : {std::string(R"(,"window_uncut_end":"2026-01-11T00:00:00Z")"),
                                       std::string(R"(,"window_uncut_end":"soon")")}) {
      ledger::testing::MemoryState other;
      EXPECT_EQ(fold.Apply(event(item("c", cut + bad_end, 1), 1), other, &other).problem(),
                "malformed_event")
          << bad_end;
    }
  }
}

TEST(UsageFoldTest, MalformedBatchEventsAreRefused) {
  UsageCountersFold fold;
  ledger::testing::MemoryState state;
  const std::string item =
      R"({"idempotency_key":"k","service":"chat","quantity":1,)"
      R"("occurred_at":"2025-06-16T00:00:00.000000Z","window_start":"2025-06-01T00:00:00Z",)"
      R"("window_end":"2025-07-01T00:00:00Z","window_kind":"calendar_month","limit":null,)"
      R"("used_after":1})";
  const std::string head =
      R"({"user_id":"u","source":"batch","plan_id":null,"subscription_id":null,)";
  ASSERT_TRUE(
      fold.Apply(UsageEvent(kUsageBatchRecordedV1, "u", head + R"("items":[)" + item + "]}", 1),
                 state, &state)
          .ok());
  for (const std::string& bad :
       {head + R"("items":[]})", head + R"("items":{}})", head + R"("items":[1]})",
        std::string(R"({"source":"batch","items":[)") + item + "]}",
        head + R"("items":[)" + item + "," +
            std::string(item).replace(item.find(R"("quantity":1)"), 12, R"("quantity":0)") + "]}",
        head + R"("items":[)" +
            std::string(item).replace(item.find("calendar_month"), 14, "fortnight") + "]}",
        head + R"("items":[)" +
            std::string(item).replace(item.find(R"("limit":null)"), 12, R"("limit":"10")") + "]}",
        head + R"("items":[)" +
            std::string(item).replace(item.find(R"("limit":null,)"), 13, "") + "]}",
        head + R"("items":[)" + item + "]} trailing", std::string("[]"), std::string("{")}) {
    Status s = fold.Apply(UsageEvent(kUsageBatchRecordedV1, "u", bad, 2), state, &state);
    EXPECT_EQ(s.problem(), "malformed_event") << bad;
  }
}

// ---- deciders on in-memory rows ------------------------------------------------------------------

class UsageDeciderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(world_.AddPlan(SmallPlan("tiny", 10)).ok());
  }

  // Runs a consume; every event it appends must match its schema.
  Status Consume(const std::string& user, const std::string& service, const std::string& key,
                 int64_t now_s, int64_t quantity = 1, rapidjson::Document* body = nullptr,
                 std::vector<Event>* events = nullptr, ConsumeOutcome* outcome = nullptr) {
    ConsumeRequest request{user, service, quantity, key, ""};
    ConsumeUsage command(request, cache_);
    Decision decision;
    std::vector<Event> applied;
    Status s = world_.Run(&command, now_s * kUs, &decision, &applied);
    for (const Event& e : applied) EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.data;
    if (s.ok() && body != nullptr) body->Parse(decision.body.c_str());
    if (events != nullptr) *events = std::move(applied);
    if (outcome != nullptr) *outcome = command.outcome();
    return s;
  }

  UsageCounter Counter(const std::string& user, int64_t window_start,
                       WindowKind kind = WindowKind::kBillingMonth) {
    UsageCounter c;
    EXPECT_TRUE(GetUsageCounter(world_.state, user, window_start, kind, &c).ok());
    return c;
  }

  CurrentUsage Current(const std::string& user, int64_t now_s) {
    std::shared_ptr<const MeteringSubject> subject;
    EXPECT_TRUE(LoadMeteringSubject(world_.state, user, nullptr, now_s, &subject).ok());
    CurrentUsage current;
    EXPECT_TRUE(GetCurrentUsage(world_.state, *subject, user, now_s, &current).ok());
    return current;
  }

  // Links `email` to the user through a checkout (the subscription fixture names none).
  void LinkEmail(const std::string& user, const std::string& email) {
    ledger::testing::StripeCheckoutSpec checkout;
    checkout.event_id = "evt_checkout_" + user;
    checkout.client_reference_id = user;
    checkout.metadata_user_id = user;
    checkout.customer_id = "cus_" + user;
    checkout.subscription_id = "sub_" + user;
    checkout.email = email;
    checkout.session_id = "cs_" + user;
    // Opened through ledgerd: only such a session links its customer (and the email) to the user.
    ASSERT_TRUE(ledger::testing::OpenCheckoutSession(&world_.state, &world_.head,
                                                     checkout.session_id, user, world_.setup_us)
                    .ok());
    Decision decision;
    ASSERT_TRUE(ledger::testing::DeliverWebhook(&world_.state, &world_.head,
                                                ledger::testing::StripeCheckoutCompletedJson(
                                                    checkout),
                                                world_.setup_us, &decision)
                    .ok());
  }

  UsageWorld world_;
  UsageAccessCache cache_storage_;
  UsageAccessCache* cache_ = &cache_storage_;
  int next_key_ = 0;
  std::string Key() { return "k" + std::to_string(next_key_++); }
};

TEST_F(UsageDeciderTest, AllowsExactlyTheLimitThenQuotaExceededWithThresholdsOnce) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t now = kStripeT0 + 100;
  int thresholds80 = 0, thresholds100 = 0;
  for (int i = 1; i <= 10; ++i) {
    rapidjson::Document body;
    std::vector<Event> events;
    ASSERT_TRUE(Consume("u1", "chat", Key(), now, 1, &body, &events).ok()) << i;
    EXPECT_EQ(body["used"].GetInt64(), i);
    EXPECT_EQ(body["limit"].GetInt64(), 10);
    EXPECT_EQ(body["remaining"].GetInt64(), 10 - i);
    EXPECT_STREQ(body["window_start"].GetString(), "2025-06-15T15:06:40Z");
    EXPECT_STREQ(body["window_end"].GetString(), "2025-07-15T15:06:40Z");
    ASSERT_GE(events.size(), 1u);
    EXPECT_EQ(events[0].type, kUsageRecordedV1);
    EXPECT_EQ(events[0].subject, "u1");
    for (size_t e = 1; e < events.size(); ++e) {
      rapidjson::Document d;
      d.Parse(events[e].data.c_str());
      ASSERT_EQ(events[e].type, kUsageThresholdReachedV1);
      (d["threshold_percent"].GetInt() == 80 ? thresholds80 : thresholds100)++;
      EXPECT_EQ(d["used"].GetInt64(), d["threshold_percent"].GetInt() == 80 ? 8 : 10);
    }
  }
  EXPECT_EQ(thresholds80, 1);
  EXPECT_EQ(thresholds100, 1);
  ConsumeOutcome outcome;
  Status s = Consume("u1", "chat", Key(), now, 1, nullptr, nullptr, &outcome);
  EXPECT_EQ(s.code(), Code::kResourceExhausted);
  EXPECT_EQ(s.problem(), "quota_exceeded");
  EXPECT_EQ(outcome.used, 10);
  EXPECT_EQ(outcome.limit, 10);
  EXPECT_EQ(outcome.window.end_s, kStripeT0 + 30 * kDay);
  // A quantity that would cross the limit is refused as a whole.
  UsageCounter c = Counter("u1", kStripeT0);
  EXPECT_EQ(c.used, 10);
  EXPECT_EQ(c.services.at("chat"), 10);
  EXPECT_EQ(c.AnnouncedFor(10), kThreshold80 | kThreshold100);
}

// An admin edits the plan's limit within a window and back: each (limit, threshold) is announced
// once in the window. The counter kept the last limit's announcements only, so going back to 10
// announced "80% of 10" a second time.
TEST_F(UsageDeciderTest, ALimitEditedAndRevertedInOneWindowIsNotAnnouncedTwice) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t now = kStripeT0 + 100;
  auto set_limit = [&](int64_t limit) {
    PlanInput input;
    ASSERT_TRUE(ParsePlanInput("{\"api_calls_limit\":" + std::to_string(limit) + "}", "tiny",
                               &input)
                    .ok());
    UpdatePlan update(input, Actor::Admin("root", "root@example.com"));
    Decision decision;
    ASSERT_TRUE(world_.Run(&update, now * kUs, &decision).ok());
  };
  std::vector<std::pair<int64_t, int>> announced;  // (limit, percent)
  auto consume = [&](int64_t quantity) {
    std::vector<Event> events;
    ASSERT_TRUE(Consume("u1", "chat", Key(), now, quantity, nullptr, &events).ok());
    for (const Event& e : events) {
      if (e.type != kUsageThresholdReachedV1) continue;
      rapidjson::Document d;
      d.Parse(e.data.c_str());
      announced.emplace_back(d["limit"].GetInt64(), d["threshold_percent"].GetInt());
    }
  };
  consume(8);  // 80% of 10
  set_limit(9);
  consume(1);  // 9 of 9: 80% and 100% of 9
  set_limit(10);
  consume(1);  // 10 of 10: 100% of 10 only (its 80% was announced)
  EXPECT_EQ(announced, (std::vector<std::pair<int64_t, int>>{{10, 80}, {9, 80}, {9, 100},
                                                             {10, 100}}));
  UsageCounter c = Counter("u1", kStripeT0);
  EXPECT_EQ(c.used, 10);
  EXPECT_EQ(c.AnnouncedFor(10), kThreshold80 | kThreshold100);
  EXPECT_EQ(c.AnnouncedFor(9), kThreshold80 | kThreshold100);

  // The batch decider keeps the same memory: an item under limit 9 again announces nothing.
  set_limit(9);
  UsageBatchItem item{"u1", "chat", 1, Key(), std::nullopt, "", ""};
  RecordUsageBatch batch({item}, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now * kUs, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_EQ(applied[0].type, kUsageBatchRecordedV1);
}

TEST_F(UsageDeciderTest, QuantityCrossingTheLimitIsRefusedWhole) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t now = kStripeT0 + 100;
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), now, 9, nullptr, &events).ok());
  EXPECT_EQ(events.size(), 2u);  // recorded + 80%
  EXPECT_EQ(Consume("u1", "chat", Key(), now, 2).problem(), "quota_exceeded");
  ASSERT_TRUE(Consume("u1", "search", Key(), now, 1, nullptr, &events).ok());
  EXPECT_EQ(events.size(), 2u);  // recorded + 100%
  EXPECT_EQ(Counter("u1", kStripeT0).used, 10);
}

TEST_F(UsageDeciderTest, AccessAndServiceRefusals) {
  const int64_t now = kStripeT0 + 100;
  Status s = Consume("nobody", "chat", Key(), now);
  EXPECT_EQ(s.code(), Code::kPaymentRequired);
  EXPECT_EQ(s.problem(), "subscription_required");

  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter")).ok());
  s = Consume("u1", "tts", Key(), now);
  EXPECT_EQ(s.code(), Code::kPermissionDenied);
  EXPECT_EQ(s.problem(), "service_not_in_plan");
  EXPECT_TRUE(Consume("u1", "search", Key(), now).ok());

  // past_due keeps access; canceled, unpaid and incomplete do not.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", "past_due")).ok());
  EXPECT_TRUE(Consume("u1", "chat", Key(), now).ok());
  for (const char* status : {"unpaid", "canceled"}) {
    ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", status)).ok());
    EXPECT_EQ(Consume("u1", "chat", Key(), now).problem(), "subscription_required") << status;
  }
  // Refusals appended nothing.
  EXPECT_EQ(Counter("u1", kStripeT0).used, 2);
}

// Stripe set to leave a subscription past-due when all retries fail: past_due is a grace period
// while Stripe will retry the invoice, and nothing once its last retry failed (no
// next_payment_attempt) -- a card declined on every retry was served for good. Paying the
// invoice brings access back. One decision for consume and AccessRefusalAt (the admin views).
TEST_F(UsageDeciderTest, PastDueWithNoRetryLeftGrantsNothingUntilPaid) {
  const int64_t now = kStripeT0 + 100;
  ASSERT_TRUE(world_.Subscribe(OnPlan("pd", "starter", "past_due")).ok());
  auto invoice = [&](const char* type, int attempt, bool retries_left) {
    const int64_t n = ledger::testing::NextStripeSequence();
    ledger::testing::StripeInvoiceSpec spec = ledger::testing::InvoiceOf(
        "pd", "cus_pd", "sub_pd", "in_pd", type, "evt_pd_invoice_" + std::to_string(n),
        kStripeT0 + n);
    spec.attempt_count = attempt;
    spec.retries_left = retries_left;
    Decision decision;
    ASSERT_TRUE(ledger::testing::DeliverWebhook(&world_.state, &world_.head,
                                                ledger::testing::StripeInvoiceEventJson(spec),
                                                world_.setup_us, &decision)
                    .ok());
  };
  auto refusal = [&] {
    UserAccess access;
    EXPECT_TRUE(GetUserAccess(world_.state, "pd", &access).ok());
    return AccessRefusalAt(access, now);
  };
  // Stripe will retry: grace, as before.
  invoice("invoice.payment_failed", 3, true);
  EXPECT_TRUE(Consume("pd", "chat", Key(), now).ok());
  EXPECT_EQ(refusal(), "");
  // The last retry failed: 402 payment_failed, nothing appended.
  invoice("invoice.payment_failed", 4, false);
  Status s = Consume("pd", "chat", Key(), now);
  EXPECT_EQ(s.code(), Code::kPaymentRequired) << s.ToString();
  EXPECT_EQ(s.problem(), "payment_failed");
  EXPECT_EQ(refusal(), "payment_failed");
  EXPECT_EQ(Counter("pd", kStripeT0).used, 1);
  // The invoice paid (in the portal): access again, whatever the status still says.
  invoice("invoice.paid", 4, false);
  EXPECT_TRUE(Consume("pd", "chat", Key(), now).ok());
  EXPECT_EQ(refusal(), "");
  EXPECT_EQ(Counter("pd", kStripeT0).used, 2);
}

// Past due with Stripe's retries over, the current window shown is the calendar month (the plan
// grants nothing until the invoice is paid), and an admin's reset restarted that empty month:
// 200 {"window_kind":"calendar_month","used_before":0}, and once the user paid, the billing
// month's calls still counted (429). The reset restarts the billing month they were counted in.
TEST_F(UsageDeciderTest, AResetWhilePaymentFailedGivesTheBillingMonthBack) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("pd", "tiny")).ok());
  const int64_t now = kStripeT0 + 100;
  ASSERT_TRUE(Consume("pd", "chat", Key(), now, 10).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("pd", "tiny", "past_due")).ok());
  auto invoice = [&](const char* type) {
    const int64_t n = ledger::testing::NextStripeSequence();
    ledger::testing::StripeInvoiceSpec spec = ledger::testing::InvoiceOf(
        "pd", "cus_pd", "sub_pd", "in_pd", type, "evt_pd_invoice_" + std::to_string(n),
        kStripeT0 + n);
    spec.attempt_count = 4;
    spec.retries_left = false;
    Decision decision;
    ASSERT_TRUE(ledger::testing::DeliverWebhook(&world_.state, &world_.head,
                                                ledger::testing::StripeInvoiceEventJson(spec),
                                                world_.setup_us, &decision)
                    .ok());
  };
  invoice("invoice.payment_failed");
  ASSERT_EQ(Consume("pd", "chat", Key(), now + 10).problem(), "payment_failed");

  UsageWindowReset reset("pd", Actor::Admin("root", "root@example.com"), std::nullopt, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&reset, (now + 20) * kUs, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_TRUE(ledger::testing::EventMatchesSchema(applied[0])) << applied[0].data;
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  ASSERT_EQ(body["users"].Size(), 1u);
  const auto& user = body["users"][0];
  EXPECT_STREQ(user["window_kind"].GetString(), "billing_month") << decision.body;
  EXPECT_EQ(user["window_start"].GetString(), FormatRfc3339Seconds(kStripeT0)) << decision.body;
  EXPECT_EQ(user["used_before"].GetInt64(), 10) << decision.body;
  EXPECT_EQ(Counter("pd", kStripeT0).used, 0);
  EXPECT_EQ(Counter("pd", kStripeT0).resets, 1);

  // Paid in the portal: the billing month counts from 0.
  invoice("invoice.paid");
  rapidjson::Document consumed;
  ASSERT_TRUE(Consume("pd", "chat", Key(), now + 30, 1, &consumed).ok());
  EXPECT_EQ(consumed["used"].GetInt64(), 1);
}

// The trial's last day is cut at its end: once that day's calls are used up no retry can succeed
// before the trial ends (then 402 trial_expired), so the answer is 402 trial_exhausted, not a 429
// whose Retry-After points at the end. The days before it answer 429 until midnight.
TEST_F(UsageDeciderTest, TheTrialsLastDayUsedUpIs402NotA429ToItsEnd) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("t1", "trial", "trialing")).ok());
  const int64_t last_day = UtcDayStart(kStripeT0) + 7 * kDay;  // ends at kStripeT0 + 7 days
  ASSERT_LT(last_day, kStripeT0 + 7 * kDay);
  ASSERT_TRUE(Consume("t1", "chat", Key(), last_day + 60, 100).ok());
  Status s = Consume("t1", "chat", Key(), last_day + 120);
  EXPECT_EQ(s.code(), Code::kPaymentRequired) << s.ToString();
  EXPECT_EQ(s.problem(), "trial_exhausted");
  ConsumeOutcome outcome;
  s = Consume("t2-none", "chat", Key(), last_day, 1, nullptr, nullptr, &outcome);
  EXPECT_EQ(s.problem(), "subscription_required");
  // The day before: 429 with the next midnight as the window's end.
  ASSERT_TRUE(world_.Subscribe(OnPlan("t3", "trial", "trialing")).ok());
  ASSERT_TRUE(Consume("t3", "chat", Key(), last_day - kDay + 60, 100).ok());
  s = Consume("t3", "chat", Key(), last_day - kDay + 120, 1, nullptr, nullptr, &outcome);
  EXPECT_EQ(s.problem(), "quota_exceeded");
  EXPECT_EQ(outcome.window.end_s, last_day);
}

TEST_F(UsageDeciderTest, TrialIsCappedPerUtcDayRollsOverAndExpiresAfterSevenDays) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("t1", "trial", "trialing")).ok());
  // Day windows: [start, midnight), six whole days, [midnight, start + 7 days).
  std::vector<int64_t> days = {kStripeT0 + 60};
  for (int d = 1; d <= 7; ++d) days.push_back(UtcDayStart(kStripeT0) + d * kDay + 3600);
  int64_t total = 0;
  for (size_t d = 0; d < days.size(); ++d) {
    const int64_t now = days[d];
    if (d == 7) {
      // 700 used in the first seven windows: the whole trial's cap. No retry can succeed before
      // the trial ends, and after it the answer is 402 trial_expired: 402 now, not a 429 whose
      // Retry-After points there.
      Status s = Consume("t1", "chat", Key(), now, 1);
      EXPECT_EQ(s.code(), Code::kPaymentRequired) << s.ToString();
      EXPECT_EQ(s.problem(), "trial_exhausted");
      break;
    }
    ASSERT_TRUE(Consume("t1", "chat", Key(), now, 60).ok()) << d;
    rapidjson::Document body;
    ASSERT_TRUE(Consume("t1", "ops-center", Key(), now, 40, &body).ok()) << d;
    EXPECT_EQ(body["used"].GetInt64(), 100);
    EXPECT_EQ(body["limit"].GetInt64(), 100);
    EXPECT_EQ(body["remaining"].GetInt64(), 0);
    EXPECT_STREQ(body["window_kind"].GetString(), "trial_day");
    // The day's 100 are used: retry tomorrow -- except on the seventh day, after which the trial
    // has none of its 700 calls left.
    EXPECT_EQ(Consume("t1", "chat", Key(), now).problem(),
              d == 6 ? "trial_exhausted" : "quota_exceeded")
        << d;
    total += 100;
  }
  EXPECT_EQ(total, 700);
  // The trial plan lacks search.
  EXPECT_EQ(Consume("t1", "search", Key(), kStripeT0 + 60).problem(), "service_not_in_plan");
  // After seven days: 402 trial_expired, even though Stripe still says trialing.
  Status s = Consume("t1", "chat", Key(), kStripeT0 + 7 * kDay);
  EXPECT_EQ(s.code(), Code::kPaymentRequired);
  EXPECT_EQ(s.problem(), "trial_expired");
  // Converting to a paid plan restores access (Starter, the billing period).
  ASSERT_TRUE(world_.Subscribe(OnPlan("t1", "starter", kStripeT0 + 7 * kDay, kStripeT0 + 37 * kDay))
                  .ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("t1", "search", Key(), kStripeT0 + 7 * kDay + 10, 1, &body).ok());
  EXPECT_EQ(body["limit"].GetInt64(), 1000);
  EXPECT_EQ(body["used"].GetInt64(), 1);
}

// What is left of the trial's cap never grows back: a quantity over it is 402 trial_exhausted
// at once (a 429's Retry-After would lead to the trial's end, or to a day on which the same
// quantity fails again), whatever the day window has left.
TEST_F(UsageDeciderTest, AQuantityOverWhatIsLeftOfTheTrialIsTrialExhausted) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("t1", "trial", "trialing")).ok());
  std::vector<int64_t> days = {kStripeT0 + 60};
  for (int d = 1; d <= 7; ++d) days.push_back(UtcDayStart(kStripeT0) + d * kDay + 3600);
  for (size_t d = 0; d < 6; ++d) ASSERT_TRUE(Consume("t1", "chat", Key(), days[d], 100).ok()) << d;
  // Day 6 (not the last): 95 of its 100, 695 of the trial's 700.
  ASSERT_TRUE(Consume("t1", "chat", Key(), days[6], 95).ok());
  Status s = Consume("t1", "chat", Key(), days[6], 10);
  EXPECT_EQ(s.code(), Code::kPaymentRequired) << s.ToString();
  EXPECT_EQ(s.problem(), "trial_exhausted");
  EXPECT_NE(s.message().find("only 5 of the trial's 700 calls are left"), std::string::npos)
      << s.message();
  // The last day: 5 left of the trial, the day's 100 untouched.
  s = Consume("t1", "chat", Key(), days[7], 20);
  EXPECT_EQ(s.problem(), "trial_exhausted") << s.ToString();
  rapidjson::Document body;
  ASSERT_TRUE(Consume("t1", "chat", Key(), days[7], 5, &body).ok());
  EXPECT_EQ(body["remaining"].GetInt64(), 0);
  EXPECT_EQ(Consume("t1", "chat", Key(), days[7], 1).problem(), "trial_exhausted");
}

TEST_F(UsageDeciderTest, BillingPeriodRolloverStartsAFreshWindow) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t end = kStripeT0 + 30 * kDay;
  ASSERT_TRUE(Consume("u1", "chat", Key(), end - 1, 10).ok());
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), end - 1, 1, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  // Retry-After would be one second.
  EXPECT_EQ(outcome.window.end_s, end);
  // The period ended; the renewal webhook has not arrived yet: the next month already counts.
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), end, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
  EXPECT_EQ(std::string(body["window_start"].GetString()), FormatRfc3339Seconds(end));
  // The renewal names the same start: the counter carries on.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny", end, AddUtcMonths(end, 1)))
                  .ok());
  ASSERT_TRUE(Consume("u1", "chat", Key(), end + 10, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 2);
}

// A renewal webhook late for a billing anchor on the 31st: the period [Jan 31, Feb 28) (Stripe
// clamps the anchor to February's last day) renews as [Feb 28, Mar 31). Months counted from the
// old period's end predicted [Feb 28, Mar 28): from Mar 28 a fresh quota three days early, in a
// window the renewal does not bring.
TEST_F(UsageDeciderTest, ALateRenewalOfAnAnchorOnThe31stPredictsStripesNextPeriod) {
  const int64_t end = At("2027-02-28T10:00:00Z");
  const int64_t next_end = At("2027-03-31T10:00:00Z");
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", At("2027-01-31T10:00:00Z"), end)).ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-03-01T00:00:00Z"), 1000, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-02-28T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-03-31T10:00:00Z");
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), At("2027-03-29T00:00:00Z"), 1, nullptr, nullptr,
                    &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.window, (UsageWindow{end, next_end, WindowKind::kBillingMonth}));
  // The renewal brings that month: the counter carries on to its end.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", end, next_end)).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), At("2027-03-30T00:00:00Z")).problem(), "quota_exceeded");
  ASSERT_TRUE(Consume("u1", "chat", Key(), next_end, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
  EXPECT_EQ(Counter("u1", end).used, 1000);
}

// An anchor on the 30th: [Jan 30, Feb 28) renews as [Feb 28, Mar 30), then [Mar 30, Apr 30).
TEST_F(UsageDeciderTest, ALateRenewalOfAnAnchorOnThe30thPredictsStripesNextPeriod) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", At("2027-01-30T10:00:00Z"),
                                      At("2027-02-28T10:00:00Z")))
                  .ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-03-29T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-02-28T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-03-30T10:00:00Z");
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-04-01T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-03-30T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-04-30T10:00:00Z");
}

// The anchor's day is the period's end's when the start was clamped: [Feb 28, Mar 31) renews as
// [Mar 31, Apr 30), then [Apr 30, May 31); and a back-dated batch item before the period falls
// in Stripe's previous period [Jan 31, Feb 28), not in [Jan 28, Feb 28) (counted back from the
// clamped start).
TEST_F(UsageDeciderTest, ALateRenewalAfterAClampedStartPredictsStripesNextPeriod) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", At("2027-02-28T10:00:00Z"),
                                      At("2027-03-31T10:00:00Z")))
                  .ok());
  RecordUsageBatch batch({{"u1", "chat", 1, "back", At("2027-02-10T00:00:00Z") * kUs, "", ""}},
                         cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&batch, At("2027-03-05T00:00:00Z") * kUs, &decision).ok());
  EXPECT_NE(decision.body.find(R"("status":"accepted")"), std::string::npos) << decision.body;
  UsageCounter c = Counter("u1", At("2027-01-31T10:00:00Z"));
  EXPECT_EQ(c.used, 1);
  EXPECT_EQ(c.window_end_s, At("2027-02-28T10:00:00Z"));
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-04-01T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-03-31T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-04-30T10:00:00Z");
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-05-01T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-04-30T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-05-31T10:00:00Z");
}

// An anchor on the 15th keeps its months: from the period's end after it, back from its start
// before it.
TEST_F(UsageDeciderTest, ALateRenewalOfAnAnchorOnThe15thIsUnchanged) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "starter", At("2027-01-15T10:00:00Z"),
                                      At("2027-02-15T10:00:00Z")))
                  .ok());
  RecordUsageBatch batch({{"u1", "chat", 1, "back", At("2027-01-05T00:00:00Z") * kUs, "", ""}},
                         cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&batch, At("2027-02-01T00:00:00Z") * kUs, &decision).ok());
  EXPECT_NE(decision.body.find(R"("status":"accepted")"), std::string::npos) << decision.body;
  EXPECT_EQ(Counter("u1", At("2026-12-15T10:00:00Z")).window_end_s, At("2027-01-15T10:00:00Z"));
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-03-01T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-02-15T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-03-15T10:00:00Z");
  ASSERT_TRUE(Consume("u1", "chat", Key(), At("2027-03-20T00:00:00Z"), 1, &body).ok());
  EXPECT_STREQ(body["window_start"].GetString(), "2027-03-15T10:00:00Z");
  EXPECT_STREQ(body["window_end"].GetString(), "2027-04-15T10:00:00Z");
}

// Stripe restarts the period when the price's interval changes (and credits the unused time):
// the billing month then began at the new period's start with no counter, at 0. A user refused
// with 429 switched monthly -> yearly -> monthly for a fresh quota each time, at about no cost.
TEST_F(UsageDeciderTest, APeriodRestartedBeforeItsEndKeepsTheCallsUsed) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());  // 10 a month from kStripeT0
  const int64_t t = kStripeT0 + 100;
  ASSERT_TRUE(Consume("u1", "chat", Key(), t, 7).ok());
  ASSERT_TRUE(Consume("u1", "search", Key(), t, 3).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), t).problem(), "quota_exceeded");

  // Switched to yearly on day 5: the period restarts there.
  const int64_t yearly_start = kStripeT0 + 5 * kDay;
  TestSubscription yearly = OnPlan("u1", "tiny", yearly_start, AddUtcMonths(yearly_start, 12));
  yearly.interval = "year";
  ASSERT_TRUE(world_.Subscribe(yearly).ok());
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), yearly_start + 10, 1, nullptr, nullptr, &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.used, 10);
  EXPECT_EQ(outcome.window.start_s, yearly_start);
  EXPECT_EQ(outcome.window.end_s, AddUtcMonths(yearly_start, 1));
  CurrentUsage current = Current("u1", yearly_start + 10);
  EXPECT_EQ(current.terms.window.start_s, yearly_start);
  EXPECT_EQ(current.used, 10);
  EXPECT_EQ(current.remaining, 0);
  EXPECT_EQ(current.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 7},
                                                                           {"search", 3}}));

  // Back to monthly on day 6 (the yearly window never admitted a call, so has no row): the
  // first window's calls still count.
  const int64_t monthly_start = kStripeT0 + 6 * kDay;
  const int64_t monthly_end = monthly_start + 30 * kDay;
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny", monthly_start, monthly_end)).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), monthly_start + 10).problem(), "quota_exceeded");
  EXPECT_EQ(Current("u1", monthly_start + 10).used, 10);

  // A renewal at the period's end starts at 0.
  ASSERT_TRUE(
      world_.Subscribe(OnPlan("u1", "tiny", monthly_end, monthly_end + 30 * kDay)).ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), monthly_end + 10, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
  EXPECT_EQ(Counter("u1", monthly_end).CarriedCalls(), 0);
}

// The carry is the decider's, recorded in the event that opens the window (carry_from: the
// window carried from), for the fold to fold rather than decide again: on the consume that opens
// it, on the batch item that opens it, and on nothing after, nor on a renewal.
TEST_F(UsageDeciderTest, TheEventOpeningARestartedWindowRecordsTheCarry) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "tiny")).ok());
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 4).ok());
  ASSERT_TRUE(Consume("u2", "chat", Key(), kStripeT0 + 100, 5).ok());
  const int64_t start = kStripeT0 + 5 * kDay;
  const std::string from = FormatRfc3339Seconds(kStripeT0);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(world_.Subscribe(OnPlan(user, "tiny", start, start + 30 * kDay)).ok());
  }
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 10, 1, nullptr, &events).ok());
  ASSERT_EQ(events.size(), 1u);
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  ASSERT_TRUE(data.HasMember("carry_from")) << events[0].data;
  EXPECT_EQ(data["carry_from"].GetString(), from);
  EXPECT_EQ(data["used_after"].GetInt64(), 5);
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 20, 1, nullptr, &events).ok());
  data.Parse(events[0].data.c_str());
  EXPECT_FALSE(data.HasMember("carry_from")) << events[0].data;
  EXPECT_EQ(Counter("u1", start).CarriedCalls(), 4);

  RecordUsageBatch batch({{"u2", "chat", 1, "b1", std::nullopt, "", ""},
                          {"u2", "chat", 1, "b2", std::nullopt, "", ""}},
                         cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, (start + 10) * kUs, &decision, &applied).ok()) << decision.body;
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_TRUE(ledger::testing::EventMatchesSchema(applied[0])) << applied[0].data;
  data.Parse(applied[0].data.c_str());
  const auto& items = data["items"];
  ASSERT_EQ(items.Size(), 2u);
  ASSERT_TRUE(items[0].HasMember("carry_from")) << applied[0].data;
  EXPECT_EQ(items[0]["carry_from"].GetString(), from);
  EXPECT_EQ(items[0]["used_after"].GetInt64(), 6);
  EXPECT_FALSE(items[1].HasMember("carry_from")) << applied[0].data;
  UsageCounter c = Counter("u2", start);
  EXPECT_EQ(c.used, 7);  // short of 80 %: no threshold event
  EXPECT_EQ(c.CarriedCalls(), 5);

  // A renewal at the period's end carries nothing, and says nothing.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny", start + 30 * kDay, start + 60 * kDay)).ok());
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 30 * kDay + 10, 1, nullptr, &events).ok());
  data.Parse(events[0].data.c_str());
  EXPECT_FALSE(data.HasMember("carry_from")) << events[0].data;
}

// A bigger plan bought mid-period with a new period (monthly Starter -> yearly Professional):
// the calls used count against the new limit, whose thresholds are announced once each, and
// those of the old limit, announced already, not again. The admin statistics count each call
// once; an admin's reset gives the carried calls back.
TEST_F(UsageDeciderTest, AnUpgradeThatRestartsThePeriodKeepsTheCallsAndRaisesTheLimit) {
  ASSERT_TRUE(world_.AddPlan(SmallPlan("tiny20", 20)).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "u1@example.com");
  const int64_t t = kStripeT0 + 100;
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), t, 10, nullptr, &events).ok());
  EXPECT_EQ(events.size(), 3u);  // recorded, 80 % and 100 % of 10
  EXPECT_EQ(Consume("u1", "chat", Key(), t).problem(), "quota_exceeded");

  const int64_t start = kStripeT0 + 5 * kDay;
  TestSubscription upgraded = OnPlan("u1", "tiny20", start, AddUtcMonths(start, 12));
  upgraded.interval = "year";
  ASSERT_TRUE(world_.Subscribe(upgraded).ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "search", Key(), start + 10, 1, &body, &events).ok());
  EXPECT_EQ(body["used"].GetInt64(), 11);
  EXPECT_EQ(body["limit"].GetInt64(), 20);
  EXPECT_EQ(body["remaining"].GetInt64(), 9);
  EXPECT_EQ(events.size(), 1u);  // no threshold of 10 again
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 10, 5, nullptr, &events).ok());
  ASSERT_EQ(events.size(), 2u);  // 16 of 20: 80 %
  rapidjson::Document threshold;
  threshold.Parse(events[1].data.c_str());
  EXPECT_EQ(threshold["threshold_percent"].GetInt(), 80);
  EXPECT_EQ(threshold["limit"].GetInt64(), 20);
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 10, 4, nullptr, &events).ok());
  ASSERT_EQ(events.size(), 2u);  // 20 of 20: 100 %
  EXPECT_EQ(Consume("u1", "chat", Key(), start + 10).problem(), "quota_exceeded");
  UsageCounter c = Counter("u1", start);
  EXPECT_EQ(c.used, 20);
  EXPECT_EQ(c.CarriedCalls(), 10);
  EXPECT_EQ(c.services.at("chat"), 19);
  ASSERT_EQ(c.carried.size(), 1u);
  EXPECT_EQ(c.carried[0].services.at("chat"), 10);
  EXPECT_EQ(c.recorded, 10);
  EXPECT_EQ(c.AnnouncedFor(10), kThreshold80 | kThreshold100);
  EXPECT_EQ(c.AnnouncedFor(20), kThreshold80 | kThreshold100);

  std::string stats;
  ASSERT_TRUE(UsageStatsJson(world_.state, start + 10, kStripeT0, start + kDay, &stats).ok());
  rapidjson::Document doc;
  doc.Parse(stats.c_str());
  EXPECT_EQ(doc["windows"].GetInt64(), 2);
  EXPECT_EQ(doc["calls"].GetInt64(), 20) << stats;  // not 30: the carried 10 once
  EXPECT_EQ(doc["recorded"].GetInt64(), 20) << stats;
  EXPECT_EQ(doc["by_service"]["chat"].GetInt64(), 19) << stats;
  EXPECT_EQ(doc["by_service"]["search"].GetInt64(), 1) << stats;

  UsageWindowReset reset("u1@example.com", Actor::Admin("root", "root@example.com"),
                         std::nullopt, cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&reset, (start + 20) * kUs, &decision).ok());
  c = Counter("u1", start);
  EXPECT_EQ(c.used, 0);
  EXPECT_EQ(c.CarriedCalls(), 0);
  EXPECT_TRUE(c.carried.empty());
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 30, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
}

// A period restarted before its window ended carries the calls used there (a cycle switch buys
// no fresh quota), but they counted for the whole new window: Professional with 10,000 used on
// Jan 30, switched on Jan 31 to a window [Jan 31, Feb 28), was refused until Feb 28 where Feb 1
// would have started afresh. They count until the window they came from ends: a 429 says so
// (Retry-After when that makes room for the quantity), and from then the window counts its own
// calls, its thresholds announced again when those reach them.
TEST_F(UsageDeciderTest, ACarryEndsWhenTheWindowItCameFromEnds) {
  ASSERT_TRUE(world_.AddPlan(SmallPlan("tiny20", 20)).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());  // [kStripeT0, month_end)
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "tiny")).ok());
  const int64_t month_end = kStripeT0 + 30 * kDay;
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(Consume(user, "chat", Key(), month_end - 2 * kDay, 7).ok());
    ASSERT_TRUE(Consume(user, "search", Key(), month_end - 2 * kDay, 3).ok());
  }
  // u1 switches to yearly, u2 upgrades to tiny20 yearly, a day before the month's end.
  const int64_t start = month_end - kDay;
  const int64_t window_end = AddUtcMonths(start, 1);
  for (const char* plan : {"tiny", "tiny20"}) {
    TestSubscription yearly =
        OnPlan(plan == std::string("tiny") ? "u1" : "u2", plan, start, AddUtcMonths(start, 12));
    yearly.interval = "year";
    ASSERT_TRUE(world_.Subscribe(yearly).ok());
  }
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), start + 10, 1, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.window.start_s, start);
  EXPECT_EQ(outcome.window.end_s, window_end);
  EXPECT_EQ(outcome.quota_frees_s, month_end);  // was the new window's end
  CurrentUsage current = Current("u1", start + 10);
  EXPECT_EQ(current.used, 10);
  EXPECT_EQ(current.quota_frees_s, month_end);
  // u2's window opens with the carry: 10 carried + 6 of 20, 80 % announced.
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u2", "chat", Key(), start + 10, 6, nullptr, &events).ok());
  EXPECT_EQ(events.size(), 2u);
  EXPECT_EQ(Counter("u2", start).CarriedCalls(), 10);
  // 15 more fit only in a fresh window, 14 once the carried calls stop counting.
  EXPECT_EQ(Consume("u2", "chat", Key(), start + 20, 15, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, window_end);
  EXPECT_EQ(Consume("u2", "chat", Key(), start + 20, 14, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, month_end);

  // The old month's end: the carried calls no longer count.
  EXPECT_EQ(Current("u1", month_end).used, 0);
  EXPECT_EQ(Current("u1", month_end).quota_frees_s, window_end);
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), month_end, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
  EXPECT_EQ(body["remaining"].GetInt64(), 9);
  ASSERT_TRUE(Consume("u2", "chat", Key(), month_end, 10, &body, &events).ok());
  EXPECT_EQ(body["used"].GetInt64(), 16);  // 6 + 10, not 26
  ASSERT_EQ(events.size(), 2u);            // 80 % of 20 again: the 6 left no longer reached it
  rapidjson::Document threshold;
  threshold.Parse(events[1].data.c_str());
  EXPECT_EQ(threshold["threshold_percent"].GetInt(), 80);
  UsageCounter c = Counter("u2", start);
  EXPECT_EQ(c.used, 16);
  EXPECT_EQ(c.CarriedCalls(), 0);
  EXPECT_TRUE(c.carried.empty());
  EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 16}}));
  EXPECT_EQ(c.AnnouncedFor(20), kThreshold80);
  EXPECT_EQ(c.AnnouncedFor(10), 0);
  // A restarted window first used after the old month has ended carries nothing (no carry_from).
  ASSERT_TRUE(world_.Subscribe(OnPlan("u3", "tiny")).ok());
  ASSERT_TRUE(Consume("u3", "chat", Key(), month_end - kDay, 10).ok());
  ASSERT_TRUE(
      world_.Subscribe(OnPlan("u3", "tiny", month_end - kDay, month_end + 29 * kDay)).ok());
  ASSERT_TRUE(Consume("u3", "chat", Key(), month_end + 5, 1, &body, &events).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
  rapidjson::Document data;
  data.Parse(events[0].data.c_str());
  EXPECT_FALSE(data.HasMember("carry_from")) << events[0].data;
}

// A window cut short by a scheduled end (cancel_at inside the period) records the cut end; the
// customer then resumed (cancel_at: null), the window ran on to the period's end under the same
// counter, but a refused consume appends nothing, so the counter kept the cut end. A period
// restart after the cut end carried nothing (a fresh quota: 200 used 1 on day 12 of a month whose
// 10 calls were used on day 0); the carry runs until the end of the period the calls were used
// in, not the cut end of its last record.
TEST_F(UsageDeciderTest, ARestartAfterAResumedCancelAtCarriesUntilThePeriodsEnd) {
  const int64_t period_end = kStripeT0 + 30 * kDay;
  TestSubscription monthly = OnPlan("u1", "tiny");  // [kStripeT0, period_end)
  monthly.cancel_at = kStripeT0 + 10 * kDay;
  ASSERT_TRUE(world_.Subscribe(monthly).ok());
  ConsumeOutcome outcome;
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 10, nullptr, nullptr, &outcome).ok());
  EXPECT_EQ(outcome.window.end_s, kStripeT0 + 10 * kDay);  // cut to cancel_at
  monthly.cancel_at.reset();  // resumed: the window runs to the period's end again
  ASSERT_TRUE(world_.Subscribe(monthly).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), kStripeT0 + 11 * kDay, 1, nullptr, nullptr, &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.window.end_s, period_end);

  // Day 12: monthly -> yearly, Stripe restarts the period.
  const int64_t start = kStripeT0 + 12 * kDay;
  TestSubscription yearly = OnPlan("u1", "tiny", start, AddUtcMonths(start, 12));
  yearly.interval = "year";
  ASSERT_TRUE(world_.Subscribe(yearly).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), start + 10, 1, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.used, 10);
  EXPECT_EQ(outcome.quota_frees_s, period_end);
  EXPECT_EQ(Current("u1", start + 10).used, 10);
  EXPECT_EQ(Current("u1", period_end).used, 0);
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), period_end, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
}

// The same cut window restarted before the cut end (day 5): the carry was made but ended at the
// cut end (day 10), a fresh quota 20 days early, Retry-After pointing at day 10.
TEST_F(UsageDeciderTest, ACarryFromAWindowCutByAResumedCancelAtEndsAtThePeriodsEnd) {
  const int64_t period_end = kStripeT0 + 30 * kDay;
  TestSubscription monthly = OnPlan("u1", "tiny");
  monthly.cancel_at = kStripeT0 + 10 * kDay;
  ASSERT_TRUE(world_.Subscribe(monthly).ok());
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 10).ok());
  monthly.cancel_at.reset();
  ASSERT_TRUE(world_.Subscribe(monthly).ok());
  const int64_t start = kStripeT0 + 5 * kDay;
  TestSubscription yearly = OnPlan("u1", "tiny", start, AddUtcMonths(start, 12));
  yearly.interval = "year";
  ASSERT_TRUE(world_.Subscribe(yearly).ok());
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), start + 10, 1, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, period_end);  // was the cut end, day 10
  EXPECT_EQ(Consume("u1", "chat", Key(), kStripeT0 + 11 * kDay, 1, nullptr, nullptr, &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.used, 10);
  EXPECT_EQ(Current("u1", kStripeT0 + 11 * kDay).used, 10);
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), period_end, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
}

// A second restart carries each call until the end of the window that used it: the first
// window's calls, which the second carried, until the first's end; the second's own until the
// second's. (Passed on whole until the second window's end, the first's 10 counted a month longer:
// at the first month's end a consume of 14 was 429 with a Retry-After of 27 days.) A third
// restart keeps three such ends.
TEST_F(UsageDeciderTest, ASecondRestartDoesNotExtendTheFirstCarry) {
  ASSERT_TRUE(world_.AddPlan(SmallPlan("tiny20", 20)).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());  // W1 [kStripeT0, month_end)
  const int64_t month_end = kStripeT0 + 30 * kDay;
  ASSERT_TRUE(Consume("u1", "chat", Key(), month_end - 3 * kDay, 10).ok());
  // Two days before the month's end, an upgrade to tiny20 yearly: W2 carries W1's 10.
  const int64_t second = month_end - 2 * kDay;
  const int64_t second_end = AddUtcMonths(second, 1);
  TestSubscription upgraded = OnPlan("u1", "tiny20", second, AddUtcMonths(second, 12));
  upgraded.interval = "year";
  ASSERT_TRUE(world_.Subscribe(upgraded).ok());
  ASSERT_TRUE(Consume("u1", "search", Key(), second + 10, 5).ok());  // 15 of 20
  // A day later, canceled now and subscribed again: W3 carries W1's 10 until month_end and W2's
  // own 5 until W2's end.
  const int64_t third = month_end - kDay;
  upgraded.status = "canceled";
  upgraded.canceled_at = third;
  upgraded.ended_at = third;
  ASSERT_TRUE(world_.Subscribe(upgraded).ok());
  TestSubscription again = OnPlan("u1", "tiny20", third, AddUtcMonths(third, 12));
  again.interval = "year";
  again.subscription_id = "sub_u1_again";
  ASSERT_TRUE(world_.Subscribe(again).ok());
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), third + 10, 1, &body).ok());  // opens W3
  EXPECT_EQ(body["used"].GetInt64(), 16);
  ConsumeOutcome outcome;
  EXPECT_EQ(Consume("u1", "chat", Key(), third + 20, 5, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.window.start_s, third);
  EXPECT_EQ(outcome.quota_frees_s, month_end);  // was W2's end
  EXPECT_EQ(Consume("u1", "chat", Key(), third + 20, 15, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, second_end);  // W2's own 5 too
  EXPECT_EQ(Current("u1", third + 20).quota_frees_s, month_end);
  // The first month's end: its 10 no longer count, W2's 5 do.
  EXPECT_EQ(Current("u1", month_end).used, 6);
  EXPECT_EQ(Current("u1", month_end).quota_frees_s, second_end);
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), month_end + 1, 14, &body, &events).ok());
  EXPECT_EQ(body["used"].GetInt64(), 20);
  EXPECT_EQ(events.size(), 3u);  // 80 % and 100 % of 20
  EXPECT_EQ(Consume("u1", "chat", Key(), month_end + 2, 1, nullptr, nullptr, &outcome).problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, second_end);
  // W2's end: its 5 stop counting.
  ASSERT_TRUE(Consume("u1", "chat", Key(), second_end, 5, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 20);
  UsageCounter c = Counter("u1", third);
  EXPECT_TRUE(c.carried.empty());
  EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 20}}));

  // Three restarts within the first month: three parts, each ending with its window.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "tiny20")).ok());  // [kStripeT0, month_end)
  ASSERT_TRUE(Consume("u2", "chat", Key(), month_end - 4 * kDay, 8).ok());
  int64_t ends[3] = {month_end, 0, 0};
  for (int restart = 1; restart <= 3; ++restart) {
    const int64_t start = month_end - (4 - restart) * kDay;
    if (restart < 3) ends[restart] = AddUtcMonths(start, 1);
    TestSubscription yearly = OnPlan("u2", "tiny20", start, AddUtcMonths(start, 12));
    yearly.interval = restart % 2 == 1 ? "year" : "month";
    if (restart % 2 == 0) yearly.period_end = AddUtcMonths(start, 1);
    ASSERT_TRUE(world_.Subscribe(yearly).ok());
    ASSERT_TRUE(Consume("u2", "search", Key(), start + 10, restart < 3 ? 4 : 1).ok());
  }
  c = Counter("u2", month_end - kDay);
  ASSERT_EQ(c.carried.size(), 3u);
  EXPECT_EQ(c.used, 17);
  EXPECT_EQ(c.CarriedCalls(), 16);
  EXPECT_EQ(c.carried[0], (UsageCarry{8, {{"chat", 8}}, ends[0]}));
  EXPECT_EQ(c.carried[1], (UsageCarry{4, {{"search", 4}}, ends[1]}));
  EXPECT_EQ(c.carried[2], (UsageCarry{4, {{"search", 4}}, ends[2]}));
  EXPECT_EQ(Consume("u2", "chat", Key(), month_end - kDay + 10, 4, nullptr, nullptr, &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, month_end);
  EXPECT_EQ(Consume("u2", "chat", Key(), month_end - kDay + 10, 12, nullptr, nullptr, &outcome)
                .problem(),
            "quota_exceeded");
  EXPECT_EQ(outcome.quota_frees_s, ends[1]);
  EXPECT_EQ(Current("u2", month_end).used, 9);
  EXPECT_EQ(Current("u2", ends[1]).used, 5);
  EXPECT_EQ(Current("u2", ends[2]).used, 1);
}

// A reset of a window that has no counter and counted nothing writes no row: the zero counter and
// time-index row it wrote made a window out of nothing -- POST .../u-typo/reset-usage (any valid
// id names an account) added a window and a user to usage-stats, a by_plan "none" entry and
// u-typo in top_users with 0 calls, for good. The event is still appended (an audit fact), and a
// replay folds it alike.
TEST_F(UsageDeciderTest, AResetOfAnEmptyWindowWritesNoCounter) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "u1@example.com");
  const int64_t now = kStripeT0 + 100;
  for (const char* named : {"u-typo", "u1@example.com"}) {
    UsageWindowReset reset(named, Actor::Admin("root", "root@example.com"), std::nullopt,
                           cache_);
    Decision decision;
    std::vector<Event> applied;
    ASSERT_TRUE(world_.Run(&reset, now * kUs, &decision, &applied).ok()) << named;
    ASSERT_EQ(applied.size(), 1u) << named;
    EXPECT_EQ(applied[0].type, kUsageWindowResetV1);
  }
  int windows = 0;
  ASSERT_TRUE(ScanUsageWindows(world_.state, kStripeT0 - 400 * kDay, now + 400 * kDay,
                               [&](int64_t, std::string_view, WindowKind) {
                                 ++windows;
                                 return true;
                               })
                  .ok());
  EXPECT_EQ(windows, 0);
  std::string stats;
  ASSERT_TRUE(
      UsageStatsJson(world_.state, now, kStripeT0 - 40 * kDay, now + 40 * kDay, &stats).ok());
  rapidjson::Document doc;
  doc.Parse(stats.c_str());
  EXPECT_EQ(doc["windows"].GetInt64(), 0) << stats;
  EXPECT_EQ(doc["users"].GetInt64(), 0) << stats;
  EXPECT_TRUE(doc["by_plan"].ObjectEmpty()) << stats;
  EXPECT_TRUE(doc["top_users"].Empty()) << stats;
  // The window counts from 0 as before, with its thresholds.
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), now, 8, nullptr, &events).ok());
  EXPECT_EQ(events.size(), 2u);  // recorded, 80 %
  EXPECT_EQ(Counter("u1", kStripeT0).used, 8);
}

// A reset of a restarted billing month no call has opened yet gives back what the period carries
// into it (used_before): the reset writes its zero counter, and a window with a counter carries
// nothing. Without a row the next consume carried the 10 calls the admin had reset.
TEST_F(UsageDeciderTest, AResetOfARestartedWindowNotOpenedYetGivesTheCarriedCallsBack) {
  ASSERT_TRUE(world_.AddPlan(SmallPlan("tiny20", 20)).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  LinkEmail("u1", "u1@example.com");
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 10).ok());
  const int64_t start = kStripeT0 + 5 * kDay;
  TestSubscription upgraded = OnPlan("u1", "tiny20", start, AddUtcMonths(start, 12));
  upgraded.interval = "year";
  ASSERT_TRUE(world_.Subscribe(upgraded).ok());
  UsageWindowReset reset("u1@example.com", Actor::Admin("root", "root@example.com"),
                         std::nullopt, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&reset, (start + 20) * kUs, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  rapidjson::Document data;
  data.Parse(applied[0].data.c_str());
  EXPECT_EQ(data["used_before"].GetInt64(), 10);
  EXPECT_EQ(Counter("u1", start).used, 0);
  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), start + 30, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 1);
}

// Back-dated batch usage of the time before a restart falls in a month counted back from the new
// period's start; it is older than the latest billing month, not a restart of it, and carries
// nothing.
TEST_F(UsageDeciderTest, ABackDatedWindowBeforeARestartCarriesNothing) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 9).ok());
  const int64_t start = kStripeT0 + 5 * kDay;
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny", start, start + 30 * kDay)).ok());
  RecordUsageBatch batch({{"u1", "chat", 1, "late", (start - 60) * kUs, "", ""}}, cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&batch, (start + 10) * kUs, &decision).ok()) << decision.body;
  EXPECT_NE(decision.body.find(R"("status":"accepted")"), std::string::npos) << decision.body;
  UsageCounter c = Counter("u1", AddUtcMonths(start, -1));
  EXPECT_EQ(c.used, 1);
  EXPECT_EQ(c.CarriedCalls(), 0);
  // The restarted window itself carries the first one's 9.
  EXPECT_EQ(Current("u1", start + 10).used, 9);
}

TEST_F(UsageDeciderTest, UnlimitedPlanRecordsWithoutThresholds) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("e1", "enterprise")).ok());
  for (int i = 0; i < 5; ++i) {
    rapidjson::Document body;
    std::vector<Event> events;
    ASSERT_TRUE(Consume("e1", "bolt-diy", Key(), kStripeT0 + 5, 10000, &body, &events).ok());
    EXPECT_TRUE(body["limit"].IsNull());
    EXPECT_TRUE(body["remaining"].IsNull());
    EXPECT_EQ(events.size(), 1u);
  }
  EXPECT_EQ(Counter("e1", kStripeT0).used, 50000);
}

TEST_F(UsageDeciderTest, ConsumeRefusesAKeyABatchAlreadyRecorded) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  UsageBatchItem item{"u1", "chat", 1, "shared-key", std::nullopt, "", ""};
  RecordUsageBatch batch({item}, cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&batch, (kStripeT0 + 5) * kUs, &decision).ok());
  Status s = Consume("u1", "chat", "shared-key", kStripeT0 + 6);
  EXPECT_EQ(s.code(), Code::kConflict);
  EXPECT_EQ(s.problem(), "idempotency_key_reused");
  // Another user's key space is its own.
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "tiny")).ok());
  EXPECT_TRUE(Consume("u2", "chat", "shared-key", kStripeT0 + 6).ok());
}

// A batch item may be dated at most two billing months (62 days) before the command's time:
// late reports of the previous period count, while one caller could otherwise open a window a
// day back to 2000 (1,000 a request) for any user. The bound is the writer's clock at decide
// time; an item past it is refused, never recorded, and a batch of only such items appends
// nothing.
TEST_F(UsageDeciderTest, BatchItemsDatedMoreThanSixtyTwoDaysBackAreOutOfRange) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t now_us = (kStripeT0 + 100 * kDay) * kUs;
  const int64_t horizon_us = now_us - limits::kUsageBackdateHorizonSeconds * kUs;
  ASSERT_EQ(limits::kUsageBackdateHorizonSeconds, 62 * kDay);
  std::vector<UsageBatchItem> items = {
      {"u1", "chat", 1, "63-days", now_us - 63 * kDay * kUs, "", ""},
      {"u1", "chat", 1, "61-days", now_us - 61 * kDay * kUs, "", ""},
      {"u1", "chat", 1, "at-horizon", horizon_us, "", ""},
      {"u1", "chat", 1, "past-horizon", horizon_us - 1, "", ""},
      {"u1", "chat", 1, "year-2000", At("2000-01-01T00:00:00Z") * kUs, "", ""},
  };
  RecordUsageBatch batch(items, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now_us, &decision, &applied).ok());
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  EXPECT_EQ(body["accepted"].GetInt(), 2);
  EXPECT_EQ(body["invalid"].GetInt(), 3);
  const char* expected[] = {"invalid", "accepted", "accepted", "invalid", "invalid"};
  const auto& results = body["results"];
  ASSERT_EQ(results.Size(), 5u);
  for (rapidjson::SizeType i = 0; i < 5; ++i) {
    EXPECT_STREQ(results[i]["status"].GetString(), expected[i]) << i;
    if (std::string_view(expected[i]) == "invalid") {
      EXPECT_STREQ(results[i]["reason"].GetString(), "timestamp_out_of_range") << i;
    }
  }
  ASSERT_EQ(applied.size(), 1u);
  rapidjson::Document data;
  data.Parse(applied[0].data.c_str());
  ASSERT_EQ(data["items"].Size(), 2u);
  EXPECT_STREQ(data["items"][0]["idempotency_key"].GetString(), "61-days");
  EXPECT_STREQ(data["items"][1]["idempotency_key"].GetString(), "at-horizon");
  // Only refused items: nothing appended, and their keys stay unused.
  const Position head = world_.head;
  RecordUsageBatch refused({items[0], items[3], items[4]}, cache_);
  applied.clear();
  ASSERT_TRUE(world_.Run(&refused, now_us, &decision, &applied).ok());
  EXPECT_TRUE(applied.empty());
  EXPECT_EQ(world_.head, head);
  body.Parse(decision.body.c_str());
  EXPECT_EQ(body["accepted"].GetInt(), 0);
  EXPECT_EQ(body["invalid"].GetInt(), 3);
  bool found = true;
  ASSERT_TRUE(HasUsageKey(world_.state, "u1", "63-days", &found).ok());
  EXPECT_FALSE(found);
}

TEST_F(UsageDeciderTest, BatchRecordsValidItemsAndReportsInvalidAndDuplicates) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(Consume("u1", "chat", "consumed", kStripeT0 + 5).ok());
  const int64_t now_us = (kStripeT0 + 10) * kUs;
  std::vector<UsageBatchItem> items = {
      {"u1", "chat", 3, "a", std::nullopt, R"({"model":"gpt","tokens":12})", ""},
      {"u1", "chat", 3, "a", std::nullopt, "", ""},          // duplicate within the batch
      {"u1", "chat", 1, "consumed", std::nullopt, "", ""},   // duplicate of a consume
      {"u1", "chat", 1, "bad", std::nullopt, "", "invalid_quantity"},
      {"u2", "search", 7, "a", std::nullopt, "", ""},        // no subscription: still recorded
      {"u1", "tts", 9, "b", (kStripeT0 + 3) * kUs, "", ""},  // not in plan, over quota: recorded
      {"u1", "chat", 1, "future", now_us + 3600 * kUs, "", ""},
  };
  RecordUsageBatch batch(items, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now_us, &decision, &applied).ok());
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  EXPECT_EQ(body["accepted"].GetInt(), 3);
  EXPECT_EQ(body["duplicates"].GetInt(), 2);
  EXPECT_EQ(body["invalid"].GetInt(), 2);
  const char* expected[] = {"accepted", "duplicate", "duplicate", "invalid",
                            "accepted", "accepted",  "invalid"};
  const auto& results = body["results"];
  ASSERT_EQ(results.Size(), 7u);
  for (rapidjson::SizeType i = 0; i < 7; ++i) {
    EXPECT_EQ(results[i]["index"].GetInt(), static_cast<int>(i));
    EXPECT_STREQ(results[i]["status"].GetString(), expected[i]) << i;
  }
  EXPECT_STREQ(results[3]["reason"].GetString(), "invalid_quantity");
  EXPECT_STREQ(results[6]["reason"].GetString(), "timestamp_out_of_range");
  for (const Event& e : applied) EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.data;
  // One usage.batch_recorded.v1 per user (u1's first: its item came first), u1's with its two
  // accepted items in order, and the two thresholds right after it: 1 + 3 + 9 = 13 crosses both
  // 8 and 10 with item "b".
  ASSERT_EQ(applied.size(), 4u);
  EXPECT_EQ(applied[0].type, kUsageBatchRecordedV1);
  EXPECT_EQ(applied[0].subject, "u1");
  EXPECT_EQ(applied[1].type, kUsageThresholdReachedV1);
  EXPECT_EQ(applied[2].type, kUsageThresholdReachedV1);
  EXPECT_EQ(applied[3].type, kUsageBatchRecordedV1);
  EXPECT_EQ(applied[3].subject, "u2");
  rapidjson::Document u1;
  u1.Parse(applied[0].data.c_str());
  EXPECT_STREQ(u1["user_id"].GetString(), "u1");
  EXPECT_STREQ(u1["source"].GetString(), "batch");
  EXPECT_STREQ(u1["plan_id"].GetString(), "tiny");
  EXPECT_STREQ(u1["subscription_id"].GetString(), "sub_u1");
  const auto& u1_items = u1["items"];
  ASSERT_EQ(u1_items.Size(), 2u);
  EXPECT_STREQ(u1_items[0]["idempotency_key"].GetString(), "a");
  EXPECT_STREQ(u1_items[0]["service"].GetString(), "chat");
  EXPECT_EQ(u1_items[0]["quantity"].GetInt64(), 3);
  EXPECT_EQ(u1_items[0]["used_after"].GetInt64(), 4);
  EXPECT_EQ(u1_items[0]["limit"].GetInt64(), 10);
  EXPECT_STREQ(u1_items[0]["occurred_at"].GetString(), FormatRfc3339Micros(now_us).c_str());
  EXPECT_STREQ(u1_items[0]["window_start"].GetString(), "2025-06-15T15:06:40Z");
  EXPECT_STREQ(u1_items[0]["window_end"].GetString(), "2025-07-15T15:06:40Z");
  EXPECT_STREQ(u1_items[0]["window_kind"].GetString(), "billing_month");
  EXPECT_EQ(u1_items[0]["metadata"]["tokens"].GetInt(), 12);
  EXPECT_STREQ(u1_items[1]["idempotency_key"].GetString(), "b");
  EXPECT_STREQ(u1_items[1]["service"].GetString(), "tts");
  EXPECT_EQ(u1_items[1]["used_after"].GetInt64(), 13);
  EXPECT_STREQ(u1_items[1]["occurred_at"].GetString(),
               FormatRfc3339Micros((kStripeT0 + 3) * kUs).c_str());
  EXPECT_FALSE(u1_items[1].HasMember("metadata"));
  for (int t : {1, 2}) {
    rapidjson::Document d;
    d.Parse(applied[t].data.c_str());
    EXPECT_EQ(d["threshold_percent"].GetInt(), t == 1 ? 80 : 100);
    EXPECT_EQ(d["used"].GetInt64(), 13);
    EXPECT_STREQ(d["idempotency_key"].GetString(), "b");
    EXPECT_STREQ(d["service"].GetString(), "tts");
  }
  rapidjson::Document u2;
  u2.Parse(applied[3].data.c_str());
  EXPECT_TRUE(u2["plan_id"].IsNull());
  EXPECT_TRUE(u2["subscription_id"].IsNull());
  ASSERT_EQ(u2["items"].Size(), 1u);
  EXPECT_STREQ(u2["items"][0]["window_kind"].GetString(), "calendar_month");
  EXPECT_TRUE(u2["items"][0]["limit"].IsNull());
  // The dedupe rows name the batch event.
  std::string position;
  ASSERT_TRUE(world_.state.Get(kUsageFamily, UsageDedupeKey("u1", "b"), &position).ok());
  EXPECT_EQ(DecodeFixed64BE(position.data()), applied[0].position.value());
  UsageCounter c = Counter("u1", kStripeT0);
  EXPECT_EQ(c.used, 13);
  EXPECT_EQ(c.services.at("tts"), 9);
  // u2 has no plan: the calendar month, no limit.
  UsageCounter c2 = Counter("u2", UtcMonthStart(kStripeT0), WindowKind::kCalendarMonth);
  EXPECT_EQ(c2.used, 7);
  EXPECT_FALSE(c2.limit);
  // The same batch again: everything duplicate (or invalid), nothing recorded.
  RecordUsageBatch again(items, cache_);
  applied.clear();
  ASSERT_TRUE(world_.Run(&again, now_us, &decision, &applied).ok());
  body.Parse(decision.body.c_str());
  EXPECT_EQ(body["accepted"].GetInt(), 0);
  EXPECT_EQ(body["duplicates"].GetInt(), 5);
  EXPECT_TRUE(applied.empty());
}

// Usage backfilled into a billing month that has ended is recorded there, but announces no 80 %
// or 100 %: news to no one now, against today's plan's limit.
TEST_F(UsageDeciderTest, BackfilledUsageOfAnEndedWindowAnnouncesNoThreshold) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());  // 10 a billing month
  const int64_t now_us = (kStripeT0 + 40 * kDay) * kUs;     // the second billing month
  std::vector<UsageBatchItem> items = {
      {"u1", "chat", 10, "last-month", (kStripeT0 + 5 * kDay) * kUs, "", ""},
      {"u1", "chat", 9, "this-month", now_us, "", ""},
  };
  RecordUsageBatch batch(items, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now_us, &decision, &applied).ok());
  size_t thresholds = 0;
  for (const Event& e : applied) {
    if (e.type != kUsageThresholdReachedV1) continue;
    ++thresholds;
    rapidjson::Document data;
    data.Parse(e.data.c_str());
    EXPECT_EQ(data["threshold_percent"].GetInt(), 80) << e.data;  // this month's 9 of 10
  }
  EXPECT_EQ(thresholds, 1u);
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  EXPECT_EQ(body["accepted"].GetInt(), 2);
}

TEST_F(UsageDeciderTest, BatchAcrossUsersIsOneEventPerUserWithItsAcceptedItemsInOrder) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "enterprise")).ok());
  ASSERT_TRUE(Consume("u1", "chat", "consumed", kStripeT0 + 5).ok());
  const int64_t now_us = (kStripeT0 + 10) * kUs;
  // 40 items over three users (u3 has no plan), interleaved: every 7th invalid, a repeated key
  // per user, and u1's consume key.
  std::vector<UsageBatchItem> items;
  std::map<std::string, std::vector<std::string>> accepted;  // per user, in order
  std::vector<std::string> expected_status;
  for (int i = 0; i < 40; ++i) {
    const std::string user = "u" + std::to_string(i % 3 + 1);
    UsageBatchItem item{user, i % 2 ? "chat" : "search", 1 + i % 4, "k" + std::to_string(i),
                        std::nullopt, "", ""};
    if (i % 7 == 6) {
      item.invalid_reason = "invalid_quantity";
      expected_status.push_back("invalid");
    } else if (i == 22 || i == 31) {
      item.idempotency_key = "k" + std::to_string(i - 12);  // an earlier item of the same user
      expected_status.push_back("duplicate");
    } else if (i == 33) {
      item.idempotency_key = "consumed";  // with the consume's service and quantity
      item.quantity = 1;
      expected_status.push_back("duplicate");
    } else {
      accepted[user].push_back(item.idempotency_key);
      expected_status.push_back("accepted");
    }
    items.push_back(item);
  }
  ASSERT_EQ(items[22].user_id, items[10].user_id);
  ASSERT_EQ(items[31].user_id, items[19].user_id);
  ASSERT_EQ(items[33].user_id, "u1");
  RecordUsageBatch batch(items, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now_us, &decision, &applied).ok());
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  ASSERT_EQ(body["results"].Size(), 40u);
  for (rapidjson::SizeType i = 0; i < 40; ++i) {
    EXPECT_EQ(body["results"][i]["status"].GetString(), expected_status[i]) << i;
  }
  EXPECT_EQ(batch.counts().accepted, 32u);
  EXPECT_EQ(batch.counts().duplicates, 3u);
  EXPECT_EQ(batch.counts().invalid, 5u);

  std::vector<std::string> subjects;
  std::map<std::string, int64_t> quantities;
  for (const Event& e : applied) {
    EXPECT_TRUE(ledger::testing::EventMatchesSchema(e)) << e.data;
    if (e.type != kUsageBatchRecordedV1) continue;
    subjects.push_back(e.subject);
    rapidjson::Document data;
    data.Parse(e.data.c_str());
    std::vector<std::string> keys;
    int64_t previous_used = 0;
    for (const auto& item : data["items"].GetArray()) {
      keys.emplace_back(item["idempotency_key"].GetString());
      quantities[e.subject] += item["quantity"].GetInt64();
      EXPECT_GT(item["used_after"].GetInt64(), previous_used);
      previous_used = item["used_after"].GetInt64();
    }
    EXPECT_EQ(keys, accepted[e.subject]) << e.subject;
  }
  EXPECT_EQ(subjects, (std::vector<std::string>{"u1", "u2", "u3"}));
  // No enforcement: u1 went past its limit of 10 (with one consume before), and both thresholds
  // were announced once.
  int thresholds = 0;
  for (const Event& e : applied) thresholds += e.type == kUsageThresholdReachedV1;
  EXPECT_EQ(thresholds, 2);
  EXPECT_EQ(Counter("u1", kStripeT0).used, 1 + quantities["u1"]);
  EXPECT_GT(Counter("u1", kStripeT0).used, 10);
  EXPECT_EQ(Counter("u2", kStripeT0).used, quantities["u2"]);
  EXPECT_EQ(Counter("u3", UtcMonthStart(kStripeT0), WindowKind::kCalendarMonth).used,
            quantities["u3"]);
  // A batch key is a recorded key for consume too, and a consume's key for a later batch.
  Status s = Consume("u2", "chat", "k1", kStripeT0 + 11);
  EXPECT_EQ(s.problem(), "idempotency_key_reused");
  ASSERT_TRUE(Consume("u2", "chat", "fresh", kStripeT0 + 11).ok());
  RecordUsageBatch later({UsageBatchItem{"u2", "chat", 1, "fresh", std::nullopt, "", ""},
                          UsageBatchItem{"u2", "chat", 2, "k1", std::nullopt, "", ""},
                          UsageBatchItem{"u2", "chat", 2, "k1", std::nullopt, "", ""}},
                         cache_);
  applied.clear();
  ASSERT_TRUE(world_.Run(&later, now_us, &decision, &applied).ok());
  EXPECT_EQ(later.counts().duplicates, 3u);
  EXPECT_TRUE(applied.empty());
}

TEST_F(UsageDeciderTest, BatchEventsEscapeWhatTheyCopy) {
  // The decider writes the event's JSON itself: user ids, keys and services that need escaping
  // come back out of the event (and its results) unchanged.
  const std::string user = "u\"q\\1 ключ";
  const std::string key = "key \"with\" \\ quotes\tand\x01 control, ключ 🔑";
  RecordUsageBatch batch(
      {UsageBatchItem{user, "chat", 2, key, std::nullopt, R"({"a":"x\"y"})", ""}}, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, (kStripeT0 + 10) * kUs, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_TRUE(ledger::testing::EventMatchesSchema(applied[0])) << applied[0].data;
  rapidjson::Document data;
  data.Parse(applied[0].data.c_str());
  ASSERT_FALSE(data.HasParseError()) << applied[0].data;
  EXPECT_EQ(std::string(data["user_id"].GetString()), user);
  EXPECT_EQ(std::string(data["items"][0]["idempotency_key"].GetString()), key);
  EXPECT_EQ(std::string(data["items"][0]["metadata"]["a"].GetString()), "x\"y");
  rapidjson::Document body;
  body.Parse(decision.body.c_str());
  ASSERT_FALSE(body.HasParseError()) << decision.body;
  EXPECT_EQ(std::string(body["results"][0]["idempotency_key"].GetString()), key);
  bool found = false;
  ASSERT_TRUE(HasUsageKey(world_.state, user, key, &found).ok());
  EXPECT_TRUE(found);
}

TEST_F(UsageDeciderTest, OneUsersItemsSpillIntoAnotherEventOnlyPastTheSizeBudget) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("e1", "enterprise")).ok());
  const int64_t now_us = (kStripeT0 + 10) * kUs;
  // 1000 items of ~1.1 KB: more than fits one event's budget.
  const std::string metadata = R"({"blob":")" + std::string(1000, 'x') + R"("})";
  std::vector<UsageBatchItem> items;
  for (int i = 0; i < 1000; ++i) {
    items.push_back({"e1", "chat", 1, "big" + std::to_string(i), std::nullopt, metadata, ""});
  }
  RecordUsageBatch batch(items, cache_);
  Decision decision;
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&batch, now_us, &decision, &applied).ok());
  ASSERT_GE(applied.size(), 4u);
  std::vector<std::string> keys;
  for (const Event& e : applied) {
    ASSERT_EQ(e.type, kUsageBatchRecordedV1);
    EXPECT_LE(e.data.size(), limits::kUsageBatchEventDataBytesSoftMax + 2048);
    EXPECT_TRUE(ledger::testing::EventMatchesSchema(e));
    rapidjson::Document data;
    data.Parse(e.data.c_str());
    for (const auto& item : data["items"].GetArray()) {
      keys.emplace_back(item["idempotency_key"].GetString());
      EXPECT_EQ(item["used_after"].GetInt64(), static_cast<int64_t>(keys.size()));
    }
  }
  ASSERT_EQ(keys.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(keys[i], "big" + std::to_string(i));
  EXPECT_EQ(Counter("e1", kStripeT0).used, 1000);

  // Small items: all 1000 in one event.
  items.clear();
  for (int i = 0; i < 1000; ++i) {
    items.push_back({"e1", "chat", 1, "small" + std::to_string(i), std::nullopt, "", ""});
  }
  RecordUsageBatch small(items, cache_);
  applied.clear();
  ASSERT_TRUE(world_.Run(&small, now_us, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  rapidjson::Document data;
  data.Parse(applied[0].data.c_str());
  EXPECT_EQ(data["items"].Size(), 1000u);
  EXPECT_EQ(Counter("e1", kStripeT0).used, 2000);
}

TEST_F(UsageDeciderTest, ResetRestartsTheWindowAndThresholdsMayFireAgain) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  // The subscription fixture names no email; link one through a checkout.
  ledger::testing::StripeCheckoutSpec checkout;
  checkout.event_id = "evt_checkout_u1";
  checkout.client_reference_id = "u1";
  checkout.metadata_user_id = "u1";
  checkout.customer_id = "cus_u1";
  checkout.subscription_id = "sub_u1";
  checkout.email = "U1@Example.com";
  checkout.session_id = "cs_u1";
  ASSERT_TRUE(ledger::testing::OpenCheckoutSession(&world_.state, &world_.head,
                                                   checkout.session_id, "u1", world_.setup_us)
                  .ok());
  Decision decision;
  ASSERT_TRUE(ledger::testing::DeliverWebhook(&world_.state, &world_.head,
                                              ledger::testing::StripeCheckoutCompletedJson(checkout),
                                              world_.setup_us, &decision)
                  .ok());
  const int64_t now = kStripeT0 + 100;
  ASSERT_TRUE(Consume("u1", "chat", Key(), now, 10).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), now).problem(), "quota_exceeded");

  UsageWindowReset missing("nobody@example.com", Actor::Admin("root", "root@example.com"),
                           std::nullopt, cache_);
  EXPECT_TRUE(world_.Run(&missing, now * kUs, &decision).IsNotFound());

  UsageWindowReset reset("u1@example.com", Actor::Admin("root", "root@example.com"),
                         std::string("support ticket 42"), cache_);
  std::vector<Event> applied;
  ASSERT_TRUE(world_.Run(&reset, now * kUs, &decision, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_EQ(applied[0].type, kUsageWindowResetV1);
  EXPECT_TRUE(ledger::testing::EventMatchesSchema(applied[0])) << applied[0].data;
  rapidjson::Document data;
  data.Parse(applied[0].data.c_str());
  EXPECT_EQ(data["used_before"].GetInt64(), 10);
  EXPECT_STREQ(data["actor"]["sub"].GetString(), "root");
  EXPECT_STREQ(data["actor"]["kind"].GetString(), "admin");
  UsageCounter c = Counter("u1", kStripeT0);
  EXPECT_EQ(c.used, 0);
  EXPECT_EQ(c.resets, 1);
  EXPECT_EQ(c.recorded, 10);
  EXPECT_TRUE(c.announced.empty());
  std::vector<Event> events;
  ASSERT_TRUE(Consume("u1", "chat", Key(), now, 8, nullptr, &events).ok());
  ASSERT_EQ(events.size(), 2u);  // the 80% threshold again, after the reset
  EXPECT_EQ(events[1].type, kUsageThresholdReachedV1);
}

// A trial day starts at UTC midnight, and so does a calendar month on its 1st: the two windows
// shared the counter row keyed by user and start. An admin's trial from Jan 28 used 100 calls on
// Feb 1; comped to starter that afternoon (no Stripe subscription: the calendar month), the
// first call answered used 101. Batch usage after a trial ended merged into its Feb 1 row the
// same way, and the summary listed the merged row as a calendar month.
TEST_F(UsageDeciderTest, WindowsOfDifferentKindsStartingAtTheSameSecondAreCountedApart) {
  // An override grants access with a status: a comped account has no Stripe subscription.
  auto set_tier = [&](const std::string& user, const char* tier, int64_t at_s) {
    OverrideChange change;
    change.plan_id = std::optional<std::string>(tier);
    change.status.emplace(std::string(tier) == "trial" ? SubscriptionStatus::kTrialing
                                                       : SubscriptionStatus::kActive);
    SetAdminOverride command(user, change, Actor::Admin("root", "root@example.com"));
    Decision decision;
    ASSERT_TRUE(world_.Run(&command, at_s * kUs, &decision).ok()) << decision.body;
  };
  const int64_t feb1 = At("2025-02-01T00:00:00Z");
  for (const char* user : {"c1", "c2"}) {
    set_tier(user, "trial", At("2025-01-28T12:00:00Z"));
    rapidjson::Document body;
    ASSERT_TRUE(Consume(user, "chat", Key(), feb1 + 10 * 3600, 100, &body).ok());
    EXPECT_STREQ(body["window_kind"].GetString(), "trial_day");
    EXPECT_STREQ(body["window_start"].GetString(), "2025-02-01T00:00:00Z");
  }

  // A: comped to starter on the trial's Feb 1.
  set_tier("c1", "starter", feb1 + 15 * 3600);
  rapidjson::Document body;
  ASSERT_TRUE(Consume("c1", "chat", Key(), feb1 + 15 * 3600 + 1, 1, &body).ok());
  EXPECT_STREQ(body["window_kind"].GetString(), "calendar_month");
  EXPECT_STREQ(body["window_start"].GetString(), "2025-02-01T00:00:00Z");
  EXPECT_EQ(body["used"].GetInt64(), 1);
  EXPECT_EQ(Counter("c1", feb1, WindowKind::kTrialDay).used, 100);
  EXPECT_EQ(Counter("c1", feb1, WindowKind::kCalendarMonth).used, 1);
  std::vector<UsageWindowRow> windows;
  ASSERT_TRUE(ListUserUsage(world_.state, "c1", 10, &windows).ok());
  ASSERT_EQ(windows.size(), 2u);
  EXPECT_EQ(windows[0].window_start_s, feb1);
  EXPECT_EQ(windows[1].window_start_s, feb1);
  EXPECT_NE(windows[0].counter.kind, windows[1].counter.kind);

  // B: batch usage after c2's trial ended (Feb 4 12:00) counts in February's calendar month.
  const int64_t feb5 = At("2025-02-05T00:00:00Z");
  UsageBatchItem item{"c2", "chat", 7, Key(), feb5 * kUs, "", ""};
  RecordUsageBatch batch({item}, cache_);
  Decision decision;
  ASSERT_TRUE(world_.Run(&batch, feb5 * kUs, &decision).ok());
  EXPECT_EQ(Counter("c2", feb1, WindowKind::kTrialDay).used, 100);
  EXPECT_EQ(Counter("c2", feb1, WindowKind::kCalendarMonth).used, 7);
  ASSERT_TRUE(ListUserUsage(world_.state, "c2", 10, &windows).ok());
  EXPECT_EQ(windows.size(), 2u);

  // C: a trial's total counts its trial days only. c3's trial is paused over Feb 1; usage
  // recorded meanwhile counts in February's calendar month, which starts within the trial.
  set_tier("c3", "trial", At("2025-01-28T12:00:00Z"));
  auto set_status = [&](SubscriptionStatus status, int64_t at_s) {
    OverrideChange change;
    change.status.emplace(status);
    SetAdminOverride command("c3", change, Actor::Admin("root", "root@example.com"));
    ASSERT_TRUE(world_.Run(&command, at_s * kUs, &decision).ok()) << decision.body;
  };
  set_status(SubscriptionStatus::kPaused, feb1 - 3600);
  UsageBatchItem paused_item{"c3", "chat", 650, Key(), (feb1 + 3600) * kUs, "", ""};
  RecordUsageBatch paused_batch({paused_item}, cache_);
  ASSERT_TRUE(world_.Run(&paused_batch, (feb1 + 3600) * kUs, &decision).ok());
  EXPECT_EQ(Counter("c3", feb1, WindowKind::kCalendarMonth).used, 650);
  set_status(SubscriptionStatus::kTrialing, feb1 + 2 * 3600);
  EXPECT_TRUE(Consume("c3", "chat", Key(), feb1 + 3 * 3600, 100, &body).ok());

  // The time index names both windows of each user (admin statistics read them).
  std::vector<std::pair<std::string, WindowKind>> indexed;
  ASSERT_TRUE(ScanUsageWindows(world_.state, feb1, feb1 + 1,
                               [&](int64_t, std::string_view user, WindowKind kind) {
                                 indexed.emplace_back(std::string(user), kind);
                                 return true;
                               })
                  .ok());
  EXPECT_EQ(indexed.size(), 6u);
  for (const char* user : {"c1", "c2"}) {
    for (WindowKind kind : {WindowKind::kTrialDay, WindowKind::kCalendarMonth}) {
      EXPECT_NE(std::find(indexed.begin(), indexed.end(), std::make_pair(std::string(user), kind)),
                indexed.end())
          << user << " " << WindowKindName(kind);
    }
  }
}

// A store written before the kind was part of the counter's key: its rows are the window of the
// kind they name, and move to the keyed form at that window's next write.
TEST_F(UsageDeciderTest, CountersKeyedByStartOnlyAreReadAndMovedOnTheirNextWrite) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  auto start_only = [](const char* prefix, int64_t start, const std::string& user) {
    std::string key = prefix;
    if (key == "c/") key += user + std::string(1, '\0');
    PutFixed64BE(&key, static_cast<uint64_t>(start));
    if (key[0] == 't') key += user;
    return key;
  };
  UsageCounter old;
  old.window_end_s = kStripeT0 + 30 * kDay;
  old.kind = WindowKind::kBillingMonth;
  old.used = 5;
  old.recorded = 5;
  old.limit = 10;
  old.services = {{"chat", 5}};
  ASSERT_TRUE(world_.state.Put(kUsageFamily, start_only("c/", kStripeT0, "u1"),
                               EncodeUsageCounter(old)).ok());
  ASSERT_TRUE(world_.state.Put(kUsageFamily, start_only("t/", kStripeT0, "u1"), "").ok());
  EXPECT_EQ(Counter("u1", kStripeT0).used, 5);
  UsageCounter other_kind;
  EXPECT_TRUE(GetUsageCounter(world_.state, "u1", kStripeT0, WindowKind::kCalendarMonth,
                              &other_kind).IsNotFound());
  std::vector<WindowKind> indexed;
  auto scan = [&] {
    indexed.clear();
    ASSERT_TRUE(ScanUsageWindows(world_.state, kStripeT0, kStripeT0 + 1,
                                 [&](int64_t, std::string_view, WindowKind kind) {
                                   indexed.push_back(kind);
                                   return true;
                                 })
                    .ok());
  };
  scan();
  EXPECT_EQ(indexed, std::vector<WindowKind>{WindowKind::kBillingMonth});

  rapidjson::Document body;
  ASSERT_TRUE(Consume("u1", "chat", Key(), kStripeT0 + 100, 1, &body).ok());
  EXPECT_EQ(body["used"].GetInt64(), 6);
  std::string value;
  EXPECT_TRUE(world_.state.Get(kUsageFamily, start_only("c/", kStripeT0, "u1"), &value)
                  .IsNotFound());
  EXPECT_TRUE(world_.state.Get(kUsageFamily, start_only("t/", kStripeT0, "u1"), &value)
                  .IsNotFound());
  EXPECT_EQ(Counter("u1", kStripeT0).used, 6);
  std::vector<UsageWindowRow> windows;
  ASSERT_TRUE(ListUserUsage(world_.state, "u1", 10, &windows).ok());
  EXPECT_EQ(windows.size(), 1u);
  scan();
  EXPECT_EQ(indexed, std::vector<WindowKind>{WindowKind::kBillingMonth});
}

TEST_F(UsageDeciderTest, CachedAccessFollowsSubscriptionChanges) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny")).ok());
  const int64_t now = kStripeT0 + 100;
  EXPECT_TRUE(Consume("u1", "chat", Key(), now).ok());
  EXPECT_TRUE(Consume("u1", "chat", Key(), now).ok());
  EXPECT_GE(cache_->hits(), 1u);
  ASSERT_TRUE(world_.Subscribe(OnPlan("u1", "tiny", "canceled")).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), now).problem(), "subscription_required");
  ASSERT_TRUE(world_.Subscribe(OnPlan("u2", "enterprise")).ok());
  ASSERT_TRUE(world_.AddPlan(SmallPlan("other", 5)).ok());
  EXPECT_EQ(Consume("u1", "chat", Key(), now).problem(), "subscription_required");
}

// ---- on a Ledger ---------------------------------------------------------------------------------

class UsageLedgerTest : public ::testing::Test {
 protected:
  void Open() {
    LedgerOptions options;
    options.path = dir_.path();
    options.folds = AllFolds();
    options.clock = &clock_;
    Status s = Ledger::Open(options, &ledger_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  void SetUp() override {
    Open();
    ASSERT_TRUE(ledger::testing::SeedCatalogWithPrices(ledger_.get()).ok());
  }

  CommandResult Consume(const std::string& user, const std::string& key, int64_t quantity = 1,
                        const std::string& service = "chat") {
    ConsumeUsage command(ConsumeRequest{user, service, quantity, key, ""}, meter_->cache());
    return ledger_->Submit(&command);
  }

  // A replay of `events` into a scratch ledger at `path` with every fold.
  static void Replay(const std::string& path, const std::vector<Event>& events,
                     std::unique_ptr<Ledger>* out) {
    LedgerOptions options;
    options.path = path;
    options.folds = AllFolds();
    options.sync = false;
    ASSERT_TRUE(Ledger::Open(options, out).ok());
    ASSERT_TRUE((*out)->ImportEvents(events).ok());
  }

  // Replays the whole log into a scratch ledger at `path` (left in `replayed`) and expects its
  // folds to equal the live ones.
  void ExpectReplayFoldsTheSame(const std::string& path, std::unique_ptr<Ledger>* replayed,
                                const std::string& when = "") {
    std::vector<Event> events;
    ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000, EventFilter{}, &events).ok());
    ASSERT_NO_FATAL_FAILURE(Replay(path, events, replayed));
    Hash live{}, rebuilt{};
    ASSERT_TRUE(ledger_->ProjectionDigest(&live).ok());
    ASSERT_TRUE((*replayed)->ProjectionDigest(&rebuilt).ok());
    EXPECT_EQ(HexEncode(live), HexEncode(rebuilt)) << when;
  }

  int64_t Used(const std::string& user, int64_t window_start,
               WindowKind kind = WindowKind::kBillingMonth) {
    auto view = ledger_->Snapshot();
    UsageCounter c;
    Status s = GetUsageCounter(*view, user, window_start, kind, &c);
    return s.ok() ? c.used : 0;
  }

  ledger::testing::TempDir dir_;
  ManualClock clock_{(kStripeT0 + 1000) * kUs};
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<UsageMeter> meter_ = std::make_unique<UsageMeter>();
};

TEST_F(UsageLedgerTest, FiftyConcurrentClientsNeverExceedTheLimitAcrossARestart) {
  constexpr int kClients = 50;
  constexpr int64_t kLimit = 300;
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("race", kLimit)).ok());
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("racer", "race")).ok());
  std::atomic<int64_t> allowed{0};
  std::atomic<int64_t> refused{0};
  std::atomic<int> errors{0};
  auto run = [&](int phase, int64_t stop_at) {
    std::vector<std::thread> clients;
    for (int t = 0; t < kClients; ++t) {
      clients.emplace_back([&, t] {
        for (int i = 0;; ++i) {
          if (stop_at > 0 && allowed.load() >= stop_at) return;
          std::string key = "p" + std::to_string(phase) + "-c" + std::to_string(t) + "-" +
                            std::to_string(i);
          CommandResult r = Consume("racer", key);
          if (r.status.ok()) {
            allowed.fetch_add(1);
          } else if (r.status.problem() == "quota_exceeded") {
            refused.fetch_add(1);
            if (stop_at == 0) return;
          } else {
            errors.fetch_add(1);
            return;
          }
        }
      });
    }
    for (auto& c : clients) c.join();
  };
  run(1, kLimit / 2);
  const int64_t before_restart = allowed.load();
  EXPECT_GE(before_restart, kLimit / 2);
  EXPECT_LE(before_restart, kLimit);
  EXPECT_EQ(Used("racer", kStripeT0), before_restart);
  // Restart: close and reopen the store; a fresh meter (the process restarted).
  ledger_.reset();
  Open();
  meter_ = std::make_unique<UsageMeter>();
  EXPECT_EQ(Used("racer", kStripeT0), before_restart);
  run(2, 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(allowed.load(), kLimit);
  EXPECT_GE(refused.load(), kClients);
  EXPECT_EQ(Used("racer", kStripeT0), kLimit);
  // The log holds exactly kLimit usage records for the user.
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000,
                                  EventFilter{"racer", std::string(kUsageRecordedV1)}, &events)
                  .ok());
  EXPECT_EQ(static_cast<int64_t>(events.size()), kLimit);
}

TEST_F(UsageLedgerTest, IdempotentRetriesAreAnsweredOnceAndCountedOnce) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  CommandResult first = Consume("u1", "retry-me", 2);
  ASSERT_TRUE(first.status.ok()) << first.status.ToString();
  EXPECT_FALSE(first.replayed);
  clock_.Advance(5 * kUs);
  CommandResult again = Consume("u1", "retry-me", 2);
  ASSERT_TRUE(again.status.ok());
  EXPECT_TRUE(again.replayed);
  EXPECT_EQ(again.body, first.body);
  EXPECT_EQ(again.position, first.position);
  EXPECT_EQ(Used("u1", kStripeT0), 2);
  // Same key, another request: 409, nothing counted.
  CommandResult other = Consume("u1", "retry-me", 3);
  EXPECT_EQ(other.status.problem(), "idempotency_key_reused");
  other = Consume("u1", "retry-me", 2, "search");
  EXPECT_EQ(other.status.problem(), "idempotency_key_reused");
  EXPECT_EQ(Used("u1", kStripeT0), 2);
  // A refused consume stores nothing: the same key is decided again later.
  ASSERT_TRUE(Consume("u1", "fill", 8).status.ok());
  EXPECT_EQ(Consume("u1", "late", 1).status.problem(), "quota_exceeded");
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny", kStripeT0 + 30 * kDay, kStripeT0 + 60 * kDay))
                  .ok());
  clock_.Set((kStripeT0 + 30 * kDay + 1) * kUs);
  CommandResult late = Consume("u1", "late", 1);
  ASSERT_TRUE(late.status.ok()) << late.status.ToString();
  EXPECT_FALSE(late.replayed);
}

TEST_F(UsageLedgerTest, CountersEqualAReplayOfTheLog) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 20)).ok());
  for (int u = 0; u < 5; ++u) {
    std::string user = "r" + std::to_string(u);
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan(user, u % 2 ? "tiny" : "trial", u % 2 ? "active" : "trialing"))
                    .ok());
    for (int i = 0; i < 30; ++i) Consume(user, "k" + std::to_string(i), 1 + i % 3).status.IgnoreError();
  }
  std::vector<UsageBatchItem> items;
  for (int i = 0; i < 50; ++i) {
    items.push_back({"r" + std::to_string(i % 7), "chat", 2, "b" + std::to_string(i % 40),
                     std::nullopt, "", ""});
  }
  RecordUsageBatch batch(items, meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&batch).status.ok());
  std::vector<Event> events;
  ASSERT_TRUE(ledger_->ReadEvents(Position(0), 1000, EventFilter{}, &events).ok());
  for (const Event& e : events) EXPECT_TRUE(ledger::testing::EnvelopeMatchesSchema(e)) << e.type;

  ledger::testing::TempDir replay_dir;
  std::unique_ptr<Ledger> replayed;
  ASSERT_NO_FATAL_FAILURE(Replay(replay_dir.path(), events, &replayed));
  Hash live{}, rebuilt{};
  ASSERT_TRUE(ledger_->ProjectionDigest(&live).ok());
  ASSERT_TRUE(replayed->ProjectionDigest(&rebuilt).ok());
  EXPECT_EQ(HexEncode(live), HexEncode(rebuilt));

  // Negative control: a replay that misses the last usage record gives other counters.
  ledger::testing::TempDir short_dir;
  size_t last_usage = events.size();
  while (last_usage > 0 && events[last_usage - 1].type != kUsageBatchRecordedV1) --last_usage;
  ASSERT_GT(last_usage, 0u);
  std::vector<Event> prefix(events.begin(), events.begin() + static_cast<long>(last_usage) - 1);
  std::unique_ptr<Ledger> short_replay;
  ASSERT_NO_FATAL_FAILURE(Replay(short_dir.path(), prefix, &short_replay));
  Hash shorter{};
  ASSERT_TRUE(short_replay->ProjectionDigest(&shorter).ok());
  EXPECT_NE(HexEncode(live), HexEncode(shorter));
}


// A batch whose items reuse known keys for other usage (idempotency_key_reused) records only its
// accepted items; the dedupe rows keep what each key recorded (service, quantity), written alike
// by the live fold and a replay of the log.
TEST_F(UsageLedgerTest, ABatchMixingAcceptedAndReusedKeysEqualsAReplayOfTheLog) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(Consume("u1", "req-42").status.ok());
  const uint64_t head = ledger_->Head().value();
  RecordUsageBatch batch({{"u1", "chat", 5000, "req-42", std::nullopt, "", ""},
                          {"u1", "chat", 2, "m", std::nullopt, "", ""},
                          {"u1", "chat", 3, "m", std::nullopt, "", ""},
                          {"u2", "search", 7, "req-42", std::nullopt, "", ""},
                          {"u1", "chat", 1, "req-42", std::nullopt, "", ""},
                          {"u1", "tts", 4, "n", std::nullopt, "", ""}},
                         meter_->cache());
  CommandResult r = ledger_->Submit(&batch);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_EQ(batch.counts().accepted, 3u);
  EXPECT_EQ(batch.counts().duplicates, 1u);
  EXPECT_EQ(batch.counts().invalid, 2u);
  rapidjson::Document body;
  body.Parse(r.body.c_str());
  const char* status[] = {"invalid", "accepted", "invalid", "accepted", "duplicate", "accepted"};
  ASSERT_EQ(body["results"].Size(), 6u);
  for (rapidjson::SizeType i = 0; i < 6; ++i) {
    EXPECT_STREQ(body["results"][i]["status"].GetString(), status[i]) << i;
  }
  for (rapidjson::SizeType i : {0u, 2u}) {
    ASSERT_TRUE(body["results"][i].HasMember("reason")) << i;
    EXPECT_STREQ(body["results"][i]["reason"].GetString(), "idempotency_key_reused") << i;
  }
  // u1's event holds m (2) and n, u2's its req-42: nothing of the reused keys.
  std::vector<Event> appended;
  ASSERT_TRUE(ledger_->ReadEvents(Position(head), 10, EventFilter{}, &appended).ok());
  ASSERT_EQ(appended.size(), 2u);
  rapidjson::Document u1;
  u1.Parse(appended[0].data.c_str());
  ASSERT_EQ(u1["items"].Size(), 2u);
  EXPECT_STREQ(u1["items"][0]["idempotency_key"].GetString(), "m");
  EXPECT_EQ(u1["items"][0]["quantity"].GetInt64(), 2);
  EXPECT_STREQ(u1["items"][1]["idempotency_key"].GetString(), "n");
  EXPECT_EQ(Used("u1", kStripeT0), 7);  // 1 + 2 + 4
  auto view = ledger_->Snapshot();
  std::string value;
  UsageKeyRecord record;
  ASSERT_TRUE(view->Get(kUsageFamily, UsageDedupeKey("u1", "req-42"), &value).ok());
  ASSERT_TRUE(DecodeUsageKeyRecord(value, &record).ok());
  EXPECT_TRUE(record.has_item);
  EXPECT_EQ(record.service, "chat");
  EXPECT_EQ(record.quantity, 1);
  EXPECT_EQ(record.position, head);  // the consume's usage.recorded.v1
  ASSERT_TRUE(view->Get(kUsageFamily, UsageDedupeKey("u1", "m"), &value).ok());
  ASSERT_TRUE(DecodeUsageKeyRecord(value, &record).ok());
  EXPECT_EQ(record.quantity, 2);
  EXPECT_EQ(record.position, appended[0].position.value());

  ledger::testing::TempDir replay_dir;
  std::unique_ptr<Ledger> replayed;
  ASSERT_NO_FATAL_FAILURE(ExpectReplayFoldsTheSame(replay_dir.path(), &replayed));
  // The replayed rows decide alike: the same batch again is all duplicates and reused keys.
  RecordUsageBatch again({{"u1", "chat", 5000, "req-42", std::nullopt, "", ""},
                          {"u1", "chat", 2, "m", std::nullopt, "", ""},
                          {"u2", "search", 7, "req-42", std::nullopt, "", ""}},
                         nullptr);
  ASSERT_TRUE(replayed->Submit(&again).status.ok());
  EXPECT_EQ(again.counts().accepted, 0u);
  EXPECT_EQ(again.counts().duplicates, 2u);
  EXPECT_EQ(again.counts().invalid, 1u);
}


// The carry into a restarted period's window, recorded in the event that opened it (a consume's,
// a batch item's), is folded from the counter it names, as the decider read it: a replay of the
// log gives the same rows.
TEST_F(UsageLedgerTest, ARestartedPeriodsCarryEqualsAReplayOfTheLog) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny20", 20)).ok());
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("u1", "tiny")).ok());
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan("u2", "tiny")).ok());
  ASSERT_TRUE(Consume("u1", "a", 10).status.ok());
  ASSERT_TRUE(Consume("u2", "a", 3).status.ok());
  const int64_t start = kStripeT0 + 5 * kDay;
  clock_.Set((start + 10) * kUs);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(
        SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny20", start, start + 30 * kDay)).ok());
  }
  ASSERT_TRUE(Consume("u1", "b", 4, "search").status.ok());
  // u2's restarted window is opened by a batch item (the carry recorded on it).
  RecordUsageBatch batch({{"u1", "chat", 2, "c", std::nullopt, "", ""},
                          {"u2", "chat", 2, "c", std::nullopt, "", ""}},
                         meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&batch).status.ok());
  EXPECT_EQ(Used("u1", start), 16);
  EXPECT_EQ(Used("u2", start), 5);

  ledger::testing::TempDir replay_dir;
  std::unique_ptr<Ledger> replayed;
  ASSERT_NO_FATAL_FAILURE(ExpectReplayFoldsTheSame(replay_dir.path(), &replayed));
  auto view = replayed->Snapshot();
  UsageCounter c;
  ASSERT_TRUE(GetUsageCounter(*view, "u1", start, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 16);
  EXPECT_EQ(c.CarriedCalls(), 10);
  ASSERT_TRUE(GetUsageCounter(*view, "u2", start, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 5);
  EXPECT_EQ(c.CarriedCalls(), 3);
}

// A window cut short by cancel_at records the end it would have had (window_uncut_end, from a
// consume and from a batch item); after the customer took cancel_at back, a restart carries its
// calls until that end, in the decider and in the fold: a replay of the log folds the same rows.
TEST_F(UsageLedgerTest, ACarryFromACutWindowFoldsAsItWasDecidedInAReplay) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  const int64_t period_end = kStripeT0 + 30 * kDay;
  for (const char* user : {"u1", "u2"}) {
    TestSubscription monthly = OnPlan(user, "tiny");
    monthly.cancel_at = kStripeT0 + 10 * kDay;
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), monthly).ok());
  }
  ASSERT_TRUE(Consume("u1", "a", 10).status.ok());
  RecordUsageBatch batch({{"u2", "chat", 10, "a", std::nullopt, "", ""}}, meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&batch).status.ok());
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny")).ok());  // resumed
  }
  const int64_t start = kStripeT0 + 12 * kDay;
  clock_.Set((start + 10) * kUs);
  for (const char* user : {"u1", "u2"}) {
    TestSubscription yearly = OnPlan(user, "tiny", start, AddUtcMonths(start, 12));
    yearly.interval = "year";
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), yearly).ok());
    EXPECT_EQ(Consume(user, "b", 1).status.problem(), "quota_exceeded") << user;
  }
  // Opens u1's window with the carry: the 10 count until the period's end.
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny20", 20)).ok());
  TestSubscription upgraded = OnPlan("u1", "tiny20", start, AddUtcMonths(start, 12));
  upgraded.interval = "year";
  ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), upgraded).ok());
  ASSERT_TRUE(Consume("u1", "c", 2).status.ok());
  EXPECT_EQ(Used("u1", start), 12);

  ledger::testing::TempDir replay_dir;
  std::unique_ptr<Ledger> replayed;
  ASSERT_NO_FATAL_FAILURE(ExpectReplayFoldsTheSame(replay_dir.path(), &replayed));
  auto view = replayed->Snapshot();
  UsageCounter c;
  ASSERT_TRUE(GetUsageCounter(*view, "u2", kStripeT0, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.window_end_s, kStripeT0 + 10 * kDay);
  EXPECT_EQ(c.UncutEnd(), period_end);
  ASSERT_TRUE(GetUsageCounter(*view, "u1", start, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 12);
  EXPECT_EQ(c.carried, (std::vector<UsageCarry>{UsageCarry{10, {{"chat", 10}}, period_end}}));
}

// Carried calls stop counting at the end of the window they came from, in the decider at its
// command's time and in the fold at the event's: a replay of the log folds the same rows.
TEST_F(UsageLedgerTest, ACarryThatEndedFoldsAsItWasDecidedInAReplay) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny20", 20)).ok());
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny")).ok());
    ASSERT_TRUE(Consume(user, std::string("a-") + user, 10).status.ok());
  }
  const int64_t month_end = kStripeT0 + 30 * kDay;
  const int64_t start = month_end - kDay;
  clock_.Set((start + 10) * kUs);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(
        SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny20", start, start + 30 * kDay)).ok());
  }
  ASSERT_TRUE(Consume("u1", "b", 4, "search").status.ok());  // opens u1's window: 14
  clock_.Set((month_end + 10) * kUs);
  ASSERT_TRUE(Consume("u1", "c", 3).status.ok());  // 4 + 3: the carried 10 ended
  // u2's window is opened by a batch item after the carry ended: nothing carried.
  RecordUsageBatch batch({{"u1", "chat", 2, "d", std::nullopt, "", ""},
                          {"u2", "chat", 2, "d", std::nullopt, "", ""}},
                         meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&batch).status.ok());
  EXPECT_EQ(Used("u1", start), 9);
  EXPECT_EQ(Used("u2", start), 2);

  ledger::testing::TempDir replay_dir;
  std::unique_ptr<Ledger> replayed;
  ASSERT_NO_FATAL_FAILURE(ExpectReplayFoldsTheSame(replay_dir.path(), &replayed));
  auto view = replayed->Snapshot();
  UsageCounter c;
  ASSERT_TRUE(GetUsageCounter(*view, "u1", start, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 9);
  EXPECT_EQ(c.CarriedCalls(), 0);
  EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 5}, {"search", 4}}));
}

// After a second restart (and a third) each carried call stops counting at the end of the window
// that used it, in the decider at its command's time and in the fold at the event's: a replay of
// the log folds the same rows, while the carried parts count and after they ended.
TEST_F(UsageLedgerTest, ASecondRestartsCarryFoldsAsItWasDecidedInAReplay) {
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny", 10)).ok());
  ASSERT_TRUE(AddPlanOnLedger(ledger_.get(), SmallPlan("tiny20", 20)).ok());
  const int64_t month_end = kStripeT0 + 30 * kDay;
  const int64_t second = month_end - 2 * kDay, third = month_end - kDay;
  const int64_t fourth = month_end - kDay / 2;
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny")).ok());
  }
  clock_.Set((month_end - 3 * kDay) * kUs);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(Consume(user, std::string("a-") + user, 10).status.ok());
  }
  clock_.Set((second + 10) * kUs);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(
        SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny20", second, second + 30 * kDay)).ok());
    ASSERT_TRUE(Consume(user, std::string("b-") + user, 5, "search").status.ok());  // 15
  }
  clock_.Set((third + 10) * kUs);
  for (const char* user : {"u1", "u2"}) {
    ASSERT_TRUE(
        SubscribeOnLedger(ledger_.get(), OnPlan(user, "tiny20", third, third + 30 * kDay)).ok());
  }
  ASSERT_TRUE(Consume("u1", "c-u1", 1).status.ok());  // 10 + 5 carried, 1
  // u2's third window is opened by a batch item (the carry recorded on it), then restarts again.
  RecordUsageBatch opening({{"u2", "chat", 2, "c-u2", std::nullopt, "", ""}}, meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&opening).status.ok());
  clock_.Set((fourth + 10) * kUs);
  ASSERT_TRUE(
      SubscribeOnLedger(ledger_.get(), OnPlan("u2", "tiny20", fourth, fourth + 30 * kDay)).ok());
  ASSERT_TRUE(Consume("u2", "d-u2", 1).status.ok());  // 10, 5 and 2 carried, 1
  EXPECT_EQ(Used("u1", third), 16);
  EXPECT_EQ(Used("u2", fourth), 18);

  const auto expect_replay_folds_the_same = [&](const char* when) {
    ledger::testing::TempDir replay_dir;
    std::unique_ptr<Ledger> replayed;
    ASSERT_NO_FATAL_FAILURE(ExpectReplayFoldsTheSame(replay_dir.path(), &replayed, when));
  };
  expect_replay_folds_the_same("while the carried calls count");

  // The first month's end: its 10 stop counting (they counted until the middle window's end).
  clock_.Set((month_end + 10) * kUs);
  CommandResult r = Consume("u1", "e-u1", 14);
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();  // 5 + 1 + 14
  RecordUsageBatch late({{"u2", "chat", 12, "e-u2", std::nullopt, "", ""}}, meter_->cache());
  ASSERT_TRUE(ledger_->Submit(&late).status.ok());
  EXPECT_EQ(Used("u1", third), 20);
  EXPECT_EQ(Used("u2", fourth), 20);  // 5 + 2 + 1 + 12
  // The second window's end: its 5 stop counting; the third's end: u2's 2 too.
  clock_.Set((second + 30 * kDay) * kUs);
  ASSERT_TRUE(Consume("u1", "f-u1", 5).status.ok());
  ASSERT_TRUE(Consume("u2", "f-u2", 5).status.ok());
  clock_.Set((third + 30 * kDay) * kUs);
  ASSERT_TRUE(Consume("u2", "g-u2", 2).status.ok());
  EXPECT_EQ(Consume("u2", "h-u2", 1).status.problem(), "quota_exceeded");
  expect_replay_folds_the_same("after the carried calls ended");

  auto view = ledger_->Snapshot();
  UsageCounter c;
  ASSERT_TRUE(GetUsageCounter(*view, "u1", third, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 20);
  EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 20}}));
  ASSERT_TRUE(GetUsageCounter(*view, "u2", fourth, WindowKind::kBillingMonth, &c).ok());
  EXPECT_EQ(c.used, 20);
  EXPECT_EQ(c.services, (std::map<std::string, int64_t, std::less<>>{{"chat", 20}}));
}

// A StateReader whose ScanFrom seeks (as the ledger's does), counting the rows scans visit.
class SeekingState final : public StateReader {
 public:
  explicit SeekingState(const testing::MemoryState* inner) : inner_(inner) {}
  Status Get(std::string_view family, std::string_view key, std::string* value) const override {
    return inner_->Get(family, key, value);
  }
  Status Scan(std::string_view family, std::string_view prefix,
              const std::function<bool(std::string_view, std::string_view)>& fn) const override {
    return inner_->Scan(family, prefix, [&](std::string_view k, std::string_view v) {
      ++visited;
      return fn(k, v);
    });
  }
  Status ScanFrom(std::string_view family, std::string_view prefix, std::string_view start,
                  const std::function<bool(std::string_view, std::string_view)>& fn)
      const override {
    return inner_->Scan(family, prefix, [&](std::string_view k, std::string_view v) {
      if (k < start) return true;  // not visited: a seek lands past them
      ++visited;
      return fn(k, v);
    });
  }
  mutable size_t visited = 0;

 private:
  const testing::MemoryState* inner_;
};

TEST(UsageWindowScanTest, SeeksToTheRangeInsteadOfReadingTheWholeHistory) {
  testing::MemoryState rows;
  auto put_window = [&](int64_t start, const std::string& user) {
    std::string key = "t/";
    PutFixed64BE(&key, static_cast<uint64_t>(start));
    key += user;
    key.push_back('\0');
    key.push_back(static_cast<char>(WindowKind::kDay));
    ASSERT_TRUE(rows.Put(kUsageFamily, key, "").ok());
  };
  const int64_t from = kStripeT0 + 400 * 86400, to = from + 30 * 86400;
  for (int day = 0; day < 200; ++day) put_window(kStripeT0 + day * 86400, "old-" + std::to_string(day));
  put_window(from, "a");
  put_window(from + 86400, "b");
  put_window(to, "after");
  SeekingState state(&rows);
  std::vector<std::string> users;
  ASSERT_TRUE(ScanUsageWindows(state, from, to, [&](int64_t, std::string_view user, WindowKind) {
                users.emplace_back(user);
                return true;
              }).ok());
  EXPECT_EQ(users, (std::vector<std::string>{"a", "b"}));
  EXPECT_LE(state.visited, 3u) << "rows before the range were read";
}

// Ten POST /usage/events of 1,000 items each, dated one a day from 2000-01-01, left a trial user
// ~9,000 trial_day counters before the trial started (written here as the fold wrote them). Every
// trial consume sums the trial's days on the writer thread, and every summary, my-access and
// check-access does too (GetCurrentUsage): both scanned the user's rows from the first and
// stepped over the back-dated ones one by one. They seek to the trial's first day now.
constexpr int kBackdatedDays = 9000;

void PutBackdatedTrialDays(testing::MemoryState* rows, const std::string& user) {
  const int64_t y2000 = At("2000-01-01T00:00:00Z");
  for (int day = 0; day < kBackdatedDays; ++day) {
    UsageCounter c;
    c.window_end_s = y2000 + (day + 1) * kDay;
    c.kind = WindowKind::kTrialDay;
    c.used = 1;
    c.recorded = 1;
    c.services = {{"chat", 1}};
    ASSERT_TRUE(rows->Put(kUsageFamily,
                          UsageCounterKey(user, y2000 + day * kDay, WindowKind::kTrialDay),
                          EncodeUsageCounter(c))
                    .ok());
  }
  ASSERT_LT(y2000 + kBackdatedDays * kDay, kStripeT0);
}

TEST_F(UsageDeciderTest, ATrialConsumeReadsTheTrialsDaysNotTheBackdatedWindowsBeforeIt) {
  ASSERT_TRUE(world_.Subscribe(OnPlan("t", "trial", "trialing")).ok());
  ASSERT_NO_FATAL_FAILURE(PutBackdatedTrialDays(&world_.state, "t"));
  const int64_t day2 = UtcDayStart(kStripeT0) + kDay + 3600;
  ASSERT_TRUE(Consume("t", "chat", Key(), kStripeT0 + 60, 30).ok());

  SeekingState seeking(&world_.state);
  ConsumeUsage command(ConsumeRequest{"t", "chat", 5, "counted", ""}, cache_);
  DecideContext context;
  context.now_us = day2 * kUs;
  context.head = world_.head;
  context.state = &seeking;
  Decision decision;
  ASSERT_TRUE(command.Decide(context, &decision).ok());
  // The trial's total is its own days only: 30 + 5 of 700.
  EXPECT_EQ(command.outcome().remaining, 100 - 5);
  // The trial's windows (at most its eight UTC days), not the 9,000 days before the trial.
  EXPECT_LE(seeking.visited, 8u) << "the consume read the back-dated windows";

  std::shared_ptr<const MeteringSubject> subject;
  ASSERT_TRUE(LoadMeteringSubject(world_.state, "t", nullptr, day2, &subject).ok());
  seeking.visited = 0;
  CurrentUsage current;
  ASSERT_TRUE(GetCurrentUsage(seeking, *subject, "t", day2, &current).ok());
  EXPECT_EQ(current.trial_remaining, 700 - 30);
  EXPECT_LE(seeking.visited, 8u) << "the summary read the back-dated windows";
}

// The summary's windows are the newest 100; the rows before them are passed, not decoded (a
// malformed one there fails nothing), and the order and content are those of a full read.
TEST(UsageWindowScanTest, ListUserUsageDecodesOnlyTheNewestWindowsItReturns) {
  testing::MemoryState rows;
  ASSERT_NO_FATAL_FAILURE(PutBackdatedTrialDays(&rows, "t"));
  std::vector<UsageWindowRow> all;
  ASSERT_TRUE(ListUserUsage(rows, "t", kBackdatedDays + 1, &all).ok());
  ASSERT_EQ(all.size(), static_cast<size_t>(kBackdatedDays));
  EXPECT_GT(all[0].window_start_s, all[1].window_start_s);  // newest first
  // A trial day and a calendar month both starting at midnight on the 1st: both, kind order
  // reversed, as before.
  const int64_t month = At("2025-06-01T00:00:00Z");
  UsageCounter c;
  c.window_end_s = month + kDay;
  c.kind = WindowKind::kTrialDay;
  c.used = 7;
  ASSERT_TRUE(rows.Put(kUsageFamily, UsageCounterKey("t", month, c.kind), EncodeUsageCounter(c))
                  .ok());
  c.window_end_s = At("2025-07-01T00:00:00Z");
  c.kind = WindowKind::kCalendarMonth;
  c.used = 9;
  ASSERT_TRUE(rows.Put(kUsageFamily, UsageCounterKey("t", month, c.kind), EncodeUsageCounter(c))
                  .ok());
  std::vector<UsageWindowRow> newest;
  ASSERT_TRUE(ListUserUsage(rows, "t", 5, &newest).ok());
  ASSERT_EQ(newest.size(), 5u);
  EXPECT_EQ(newest[0].counter.kind, WindowKind::kCalendarMonth);
  EXPECT_EQ(newest[0].counter.used, 9);
  EXPECT_EQ(newest[1].counter.kind, WindowKind::kTrialDay);
  EXPECT_EQ(newest[1].counter.used, 7);
  for (size_t i = 2; i < 5; ++i) {
    EXPECT_EQ(newest[i].window_start_s, all[i - 2].window_start_s) << i;
    EXPECT_EQ(newest[i].counter, all[i - 2].counter) << i;
  }
  // Every back-dated row but the newest three made unreadable: the newest five still list.
  for (size_t i = 3; i < all.size(); ++i) {
    ASSERT_TRUE(rows.Put(kUsageFamily,
                         UsageCounterKey("t", all[i].window_start_s, WindowKind::kTrialDay),
                         "not a counter")
                    .ok());
  }
  std::vector<UsageWindowRow> again;
  Status s = ListUserUsage(rows, "t", 5, &again);
  ASSERT_TRUE(s.ok()) << "rows older than the five returned were decoded: " << s.ToString();
  ASSERT_EQ(again.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(again[i].counter, newest[i].counter) << i;
  // A malformed row among those returned is still reported.
  EXPECT_EQ(ListUserUsage(rows, "t", 6, &again).code(), Code::kCorruption);
  EXPECT_TRUE(ListUserUsage(rows, "t", 0, &again).ok());
  EXPECT_TRUE(again.empty());
}

}  // namespace
}  // namespace ledger::projections
