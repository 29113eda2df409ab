// Four tests for the skip harness (check_skip_harness.sh), which selects them in three shapes with
// --gtest_filter: all skip (Shape.Skips:Shape.SkipsToo), a skip and a failure (Shape.Skips:
// Shape.Fails), a skip and a pass (Shape.Skips:Shape.Passes). Run alone, Shape.Fails fails: this
// binary is not a test of graft, only of how its tests reach ctest.
#include <gtest/gtest.h>

TEST(Shape, Skips) { GTEST_SKIP() << "the harness's planted skip"; }

TEST(Shape, SkipsToo) { GTEST_SKIP() << "a second planted skip"; }

TEST(Shape, Passes) { EXPECT_EQ(2 + 2, 4); }

TEST(Shape, Fails) { EXPECT_EQ(2 + 2, 5) << "the harness's planted failure"; }
