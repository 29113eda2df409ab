#include <gtest/gtest.h>

#include "parallel/bucket_plan.h"

namespace graft {
namespace {

std::vector<ParamInfo> params() {
  // 4-byte elements: sizes in bytes are 4 x numel.
  return {{"emb", 1000, 4, true}, {"l0.w", 300, 4, true}, {"l0.norm", 10, 4, true},
          {"l1.w", 300, 4, true}, {"frozen", 500, 4, false}, {"out", 200, 4, true}};
}

TEST(BucketPlan, ReverseOrderCapsAndFrozen) {
  const auto plan = planBuckets(params(), /*first_cap=*/1000, /*cap=*/2500);
  // First bucket (cap 1000 bytes): out (800 B); l1.w would make 2000 B -> new bucket.
  ASSERT_EQ(plan.buckets.size(), 3u);
  EXPECT_EQ(plan.buckets[0].params, (std::vector<std::size_t>{5}));
  EXPECT_EQ(plan.buckets[1].params, (std::vector<std::size_t>{3, 2, 1}));  // 1200 + 40 + 1200 <= 2500
  EXPECT_EQ(plan.buckets[1].offsets, (std::vector<std::int64_t>{0, 300, 310}));
  EXPECT_EQ(plan.buckets[1].numel, 610);
  EXPECT_EQ(plan.buckets[2].params, (std::vector<std::size_t>{0}));  // 4000 B > cap: alone
  EXPECT_EQ(plan.bucket_of, (std::vector<int>{2, 1, 1, 1, -1, 0}));
}

TEST(BucketPlan, EveryTrainableParameterExactlyOnce) {
  const auto plan = planBuckets(params(), 1, 1);  // tiny caps: one parameter per bucket
  EXPECT_EQ(plan.buckets.size(), 5u);
  for (const auto& b : plan.buckets) EXPECT_EQ(b.params.size(), 1u);
  const auto one = planBuckets(params(), 1 << 30, 1 << 30);
  ASSERT_EQ(one.buckets.size(), 1u);
  EXPECT_EQ(one.buckets[0].numel, 1000 + 300 + 10 + 300 + 200);
}

TEST(BucketPlan, HashSeesNamesShapesAndFreezing) {
  const auto base = planBuckets(params(), 1000, 2500);
  EXPECT_EQ(base.hash, planBuckets(params(), 1000, 2500).hash);
  auto renamed = params();
  renamed[2].name = "l0.norm2";
  EXPECT_NE(base.hash, planBuckets(renamed, 1000, 2500).hash);
  auto frozen = params();
  frozen[1].trainable = false;
  EXPECT_NE(base.hash, planBuckets(frozen, 1000, 2500).hash);
  EXPECT_NE(base.hash, planBuckets(params(), 1000, 10000).hash);  // emb joins bucket 1
}

}  // namespace
}  // namespace graft
