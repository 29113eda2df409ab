#include <gtest/gtest.h>

#include <cmath>

#include "optim/schedule.h"

namespace graft {
namespace {

TEST(Schedule, WarmupThenCosine) {
  Schedule s{1.0, 0.1, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.at(5), 0.5);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.1 + 0.5 * 0.9 * (1 + std::cos(M_PI * 0.5)), 1e-12);
  EXPECT_DOUBLE_EQ(s.at(110), 0.1);
  EXPECT_DOUBLE_EQ(s.at(500), 0.1);
}

TEST(Schedule, NoWarmup) {
  Schedule s{2.0, 0.0, 0, 4};
  EXPECT_NEAR(s.at(0), 2.0, 1e-12);
  EXPECT_NEAR(s.at(2), 1.0, 1e-12);
  EXPECT_NEAR(s.at(4), 0.0, 1e-12);
}

}  // namespace
}  // namespace graft
