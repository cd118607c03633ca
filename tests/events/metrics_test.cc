#include "events/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace ledger {
namespace {

TEST(QuantileUpperBoundTest, NamesTheBucketHoldingTheQuantile) {
  Histogram h({1, 2, 5, 10});
  for (int i = 0; i < 98; ++i) h.Observe(0.5);  // (.., 1]
  h.Observe(3);                                  // (2, 5]
  h.Observe(7);                                  // (5, 10]
  const Histogram::Snapshot none;
  const Histogram::Snapshot all = h.Read();
  EXPECT_EQ(QuantileUpperBound(none, all, 0.5), 1);
  EXPECT_EQ(QuantileUpperBound(none, all, 0.98), 1);
  EXPECT_EQ(QuantileUpperBound(none, all, 0.99), 5);  // the 99th of 100 observations
  EXPECT_EQ(QuantileUpperBound(none, all, 1.0), 10);
}

TEST(QuantileUpperBoundTest, CountsOnlyWhatWasObservedBetweenTheSnapshots) {
  Histogram h({1, 2, 5, 10});
  for (int i = 0; i < 1000; ++i) h.Observe(0.5);
  const Histogram::Snapshot before = h.Read();
  EXPECT_EQ(QuantileUpperBound(before, h.Read(), 0.99), 0);  // nothing in between
  h.Observe(1.5);
  h.Observe(20);  // above every bound: the +Inf bucket
  const Histogram::Snapshot after = h.Read();
  EXPECT_EQ(QuantileUpperBound(before, after, 0.5), 2);
  EXPECT_TRUE(std::isinf(QuantileUpperBound(before, after, 1.0)));
  EXPECT_EQ(QuantileUpperBound(Histogram::Snapshot(), after, 0.99), 1);  // since the start
}

}  // namespace
}  // namespace ledger
