// Learning-rate schedule: linear warm-up from lr/warmup to lr over `warmup` steps, then cosine
// decay to min_lr at `total` steps. Pure function of the step (1-based), so resuming needs no state.
#pragma once

#include <cstdint>

#include <string>

namespace graft {

class H5File;

struct Schedule {
  double lr = 1e-3, min_lr = 1e-4;
  std::int64_t warmup = 0, total = 1;
  double at(std::int64_t step) const;
  // For the record (resume recomputes it from the config): attrs lr, min_lr, warmup, total on `group`.
  void save(H5File& file, const std::string& group) const;
};

}  // namespace graft
