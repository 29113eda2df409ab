// The shard plan (parallel/shard_plan.h): pure row arithmetic, checked by counting rows.
#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/shard_plan.h"

namespace graft {
namespace {

TEST(ShardPlan, EveryRowHeldByExactlyOneRank) {
  for (int world = 1; world <= 8; ++world)
    for (const std::int64_t rows : {std::int64_t{0}, std::int64_t{1}, std::int64_t{world - 1}, std::int64_t{world},
                                    std::int64_t{world + 1}, std::int64_t{97}, std::int64_t{4099}}) {
      std::vector<int> holders(static_cast<std::size_t>(rows), 0);
      std::int64_t next = 0;
      for (int r = 0; r < world; ++r) {
        const RowRange mine = shardRows(rows, r, world);
        EXPECT_LE(mine.size(), rowsPerRank(rows, world)) << rows << "/" << world;
        if (mine.size() > 0) {
          EXPECT_EQ(mine.begin, next) << "ranks hold consecutive slabs, in rank order";
          next = mine.end;
        }
        for (std::int64_t i = mine.begin; i < mine.end; ++i) ++holders[static_cast<std::size_t>(i)];
      }
      for (std::int64_t i = 0; i < rows; ++i) EXPECT_EQ(holders[static_cast<std::size_t>(i)], 1) << i << " of " << rows << "/" << world;
    }
}

// Resuming at N' ranks what N ranks wrote: every row of every new slab lies in exactly one old
// slab (so reading one's rows from the other's part files is a box intersection).
TEST(ShardPlan, OverlapsBetweenWorldSizesCoverEveryRowOnce) {
  for (const std::int64_t rows : {std::int64_t{1}, std::int64_t{7}, std::int64_t{64}, std::int64_t{101}})
    for (int from = 1; from <= 8; ++from)
      for (int to = 1; to <= 8; ++to)
        for (int r = 0; r < to; ++r) {
          const RowRange wanted = shardRows(rows, r, to);
          std::int64_t covered = 0;
          for (int q = 0; q < from; ++q) {
            const RowRange old = shardRows(rows, q, from);
            covered += std::max<std::int64_t>(0, std::min(wanted.end, old.end) - std::max(wanted.begin, old.begin));
          }
          EXPECT_EQ(covered, wanted.size()) << rows << " rows, " << from << " -> " << to << ", rank " << r;
        }
}

TEST(ShardPlan, UnitsPackPaddedSlabsAndSkipFrozenParameters) {
  const std::vector<ShardParamInfo> params = {{"tok_embeddings.weight", {10, 4}, true},
                                              {"layers.0.attention.wq.weight", {4, 4}, true},
                                              {"layers.0.attention_norm.weight", {4}, true},
                                              {"layers.0.frozen", {8, 2}, false},
                                              {"layers.1.attention.wq.weight", {5, 4}, true},
                                              {"norm.weight", {4}, true}};
  const ShardPlan plan = planShards(params, 3);
  ASSERT_EQ(plan.units.size(), 4u);
  EXPECT_EQ(plan.units[0].name, "tok_embeddings");
  EXPECT_EQ(plan.units[0].numel, 4 * 4);  // ceil(10/3) = 4 rows of 4
  EXPECT_EQ(plan.units[1].name, "layers.0");
  EXPECT_EQ(plan.units[1].params, (std::vector<std::size_t>{1, 2}));
  EXPECT_EQ(plan.units[1].offsets, (std::vector<std::int64_t>{0, 8}));  // 2 rows of 4, then 2 rows of 1
  EXPECT_EQ(plan.units[1].numel, 10);
  EXPECT_EQ(plan.units[2].numel, 2 * 4);
  EXPECT_EQ(plan.unit_of, (std::vector<int>{0, 1, 1, -1, 2, 3}));
  std::int64_t per_rank = 0;  // the padded shard of everything that trains
  for (const auto& u : plan.units) per_rank += u.numel;
  EXPECT_EQ(per_rank, 16 + 10 + 8 + 2);
  EXPECT_EQ(plan.lines[3], "layers.0.frozen [8,2] frozen");
  EXPECT_EQ(plan.lines[2], "layers.0.attention_norm.weight [4] layers.0 @8");
  // The hash sees the world size and every parameter's shape and trainability.
  EXPECT_NE(planShards(params, 2).hash, plan.hash);
  auto frozen = params;
  frozen[5].trainable = false;
  EXPECT_NE(planShards(frozen, 3).hash, plan.hash);
  auto reshaped = params;
  reshaped[0].shape = {11, 4};
  EXPECT_NE(planShards(reshaped, 3).hash, plan.hash);
  EXPECT_EQ(planShards(params, 3).hash, plan.hash);
}

TEST(ShardPlan, UnitNames) {
  EXPECT_EQ(unitOf("layers.12.feed_forward.w1.weight"), "layers.12");
  EXPECT_EQ(unitOf("tok_embeddings.weight"), "tok_embeddings");
  EXPECT_EQ(unitOf("soft_prompt"), "soft_prompt");
  EXPECT_EQ(unitOf("layers"), "layers");
}

}  // namespace
}  // namespace graft
