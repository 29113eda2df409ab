#include "data/sampler.h"

#include <numeric>
#include <string>

#include "util/error.h"

namespace graft {

std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

GlobalSampler::GlobalSampler(std::int64_t num_samples, std::int64_t global_batch, std::uint64_t seed)
    : num_samples_(num_samples), global_batch_(global_batch), seed_(seed) {
  if (global_batch <= 0) throw InputError("global batch size must be positive");
  if (num_samples < global_batch)
    throw InputError("the dataset has " + std::to_string(num_samples) + " samples, fewer than one global batch of " +
                     std::to_string(global_batch) + "; use more data, a smaller batch or a shorter seq_len");
}

const std::vector<std::int64_t>& GlobalSampler::permutation(std::int64_t epoch) const {
  if (epoch != cached_epoch_) {
    cached_.resize(static_cast<std::size_t>(num_samples_));
    std::iota(cached_.begin(), cached_.end(), 0);
    std::uint64_t state = mix64(seed_ ^ mix64(static_cast<std::uint64_t>(epoch) + 1));
    for (std::int64_t i = num_samples_ - 1; i > 0; --i) {  // Fisher-Yates
      state = mix64(state);
      const auto j = static_cast<std::int64_t>(state % static_cast<std::uint64_t>(i + 1));
      std::swap(cached_[i], cached_[j]);
    }
    cached_epoch_ = epoch;
  }
  return cached_;
}

std::vector<std::int64_t> GlobalSampler::globalBatch(std::int64_t batch) const {
  const auto& perm = permutation(epochOf(batch));
  const auto begin = perm.begin() + (batch % batchesPerEpoch()) * global_batch_;
  return std::vector<std::int64_t>(begin, begin + global_batch_);
}

std::vector<std::int64_t> GlobalSampler::microBatch(std::int64_t batch, int micro_step, int rank, int world,
                                                    int micro_batch) const {
  const auto& perm = permutation(epochOf(batch));
  const std::int64_t offset = (batch % batchesPerEpoch()) * global_batch_ +
                              (static_cast<std::int64_t>(micro_step) * world + rank) * micro_batch;
  if (offset + micro_batch > (batch % batchesPerEpoch() + 1) * global_batch_)
    throw Error("micro-batch outside its global batch (micro_step " + std::to_string(micro_step) + ", rank " +
                std::to_string(rank) + ")");
  return std::vector<std::int64_t>(perm.begin() + offset, perm.begin() + offset + micro_batch);
}

}  // namespace graft
