#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "data/sampler.h"
#include "util/error.h"

namespace graft {
namespace {

TEST(Sampler, EpochIsAPermutation) {
  GlobalSampler s(103, 10, 42);
  EXPECT_EQ(s.batchesPerEpoch(), 10);
  std::set<std::int64_t> seen;
  for (int b = 0; b < 10; ++b)
    for (auto i : s.globalBatch(b)) {
      EXPECT_GE(i, 0);
      EXPECT_LT(i, 103);
      seen.insert(i);
    }
  EXPECT_EQ(seen.size(), 100u);  // 100 distinct samples, 3 dropped this epoch
}

TEST(Sampler, MicroBatchesOfAnyWorldSizeCoverTheGlobalBatch) {
  GlobalSampler s(500, 24, 7);
  for (std::int64_t b : {0, 5, 20, 21, 40}) {
    const auto global = s.globalBatch(b);
    for (int world : {1, 2, 3, 4}) {
      for (int micro : {1, 2, 3}) {
        if (24 % (world * micro)) continue;
        const int accumulation = 24 / (world * micro);
        std::vector<std::int64_t> joined;
        for (int m = 0; m < accumulation; ++m)
          for (int r = 0; r < world; ++r) {
            const auto part = s.microBatch(b, m, r, world, micro);
            joined.insert(joined.end(), part.begin(), part.end());
          }
        EXPECT_EQ(joined, global) << "world " << world << " micro " << micro;
      }
    }
  }
}

TEST(Sampler, SeedAndEpochChangeTheOrder) {
  GlobalSampler a(64, 8, 1), b(64, 8, 2);
  EXPECT_NE(a.globalBatch(0), b.globalBatch(0));
  EXPECT_NE(a.globalBatch(0), a.globalBatch(8));  // next epoch, new permutation
  EXPECT_EQ(a.globalBatch(3), GlobalSampler(64, 8, 1).globalBatch(3));
}

TEST(Sampler, TooFewSamplesIsAnInputError) { EXPECT_THROW(GlobalSampler(3, 4, 1), InputError); }

}  // namespace
}  // namespace graft
