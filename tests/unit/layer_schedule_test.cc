#include "train/layer_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace graft {
namespace {

TEST(LayerSchedule, DecayGoesDownTheStack) {
  EXPECT_DOUBLE_EQ(layerLrScale("norm.weight", 4, 0.5, 0, 1), 1.0);
  EXPECT_DOUBLE_EQ(layerLrScale("head.weight", 4, 0.5, 0, 1), 1.0);
  EXPECT_DOUBLE_EQ(layerLrScale("layers.3.attention.wq.weight", 4, 0.5, 0, 1), 1.0);
  EXPECT_DOUBLE_EQ(layerLrScale("layers.0.ffn_norm.weight", 4, 0.5, 0, 1), 0.125);
  EXPECT_DOUBLE_EQ(layerLrScale("tok_embeddings.weight", 4, 0.5, 0, 1), 0.0625);
  EXPECT_DOUBLE_EQ(layerLrScale("layers.10.attention.wq.weight", 12, 1.0, 0, 1), 1.0);  // off
}

TEST(LayerSchedule, GradualUnfreezingTopFirst) {
  // 3 layers, one more every 10 steps: steps 1-10 top + layer 2, 11-20 + layer 1, 21-30 + layer 0,
  // 31- + embeddings.
  auto trains = [](const char* name, std::int64_t step) { return layerLrScale(name, 3, 1.0, 10, step) > 0; };
  EXPECT_TRUE(trains("output.weight", 1));
  EXPECT_TRUE(trains("layers.2.attention.wq.weight", 1));
  EXPECT_FALSE(trains("layers.1.attention.wq.weight", 10));
  EXPECT_TRUE(trains("layers.1.attention.wq.weight", 11));
  EXPECT_FALSE(trains("layers.0.feed_forward.w1.weight", 20));
  EXPECT_TRUE(trains("layers.0.feed_forward.w1.weight", 21));
  EXPECT_FALSE(trains("tok_embeddings.weight", 30));
  EXPECT_TRUE(trains("tok_embeddings.weight", 31));
  // Both together: an unfrozen layer trains at its decayed rate.
  EXPECT_DOUBLE_EQ(layerLrScale("layers.1.attention.wq.weight", 3, 0.5, 10, 15), 0.5);
  EXPECT_DOUBLE_EQ(layerLrScale("layers.1.attention.wq.weight", 3, 0.5, 10, 5), 0.0);
}

}  // namespace
}  // namespace graft
