// Which samples each rank reads, as pure arithmetic (no I/O, no MPI).
//
// Global batch b (counted over all epochs) is the slice [k*G, (k+1)*G) of epoch e's permutation of
// sample indices, with e = b / batches_per_epoch, k = b % batches_per_epoch and the permutation
// seeded by (seed, e). The sequence of global batches therefore does not depend on the world
// size. Within a global batch of G = micro_batch * world * accumulation samples, micro-step m of
// rank r reads [(m * world + r) * micro_batch, ... + micro_batch).
#pragma once

#include <cstdint>
#include <vector>

namespace graft {

// splitmix64: the one integer hash behind every seeded choice in graft's data path.
std::uint64_t mix64(std::uint64_t x);

class GlobalSampler {
 public:
  // Throws InputError when the dataset holds fewer samples than one global batch.
  GlobalSampler(std::int64_t num_samples, std::int64_t global_batch, std::uint64_t seed);

  std::int64_t batchesPerEpoch() const { return num_samples_ / global_batch_; }
  std::int64_t epochOf(std::int64_t batch) const { return batch / batchesPerEpoch(); }
  std::vector<std::int64_t> globalBatch(std::int64_t batch) const;
  std::vector<std::int64_t> microBatch(std::int64_t batch, int micro_step, int rank, int world, int micro_batch) const;

 private:
  const std::vector<std::int64_t>& permutation(std::int64_t epoch) const;
  std::int64_t num_samples_, global_batch_;
  std::uint64_t seed_;
  mutable std::int64_t cached_epoch_ = -1;
  mutable std::vector<std::int64_t> cached_;
};

}  // namespace graft
