#include "optim/schedule.h"

#include "formats/hdf5.h"

#include <algorithm>
#include <cmath>

namespace graft {

double Schedule::at(std::int64_t step) const {
  if (warmup > 0 && step <= warmup) return lr * static_cast<double>(step) / static_cast<double>(warmup);
  if (total <= warmup) return lr;
  const double progress = std::clamp(static_cast<double>(step - warmup) / static_cast<double>(total - warmup), 0.0, 1.0);
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

void Schedule::save(H5File& file, const std::string& group) const {
  file.setAttr(group, "lr", lr);
  file.setAttr(group, "min_lr", min_lr);
  file.setAttr(group, "warmup", warmup);
  file.setAttr(group, "total", total);
}

}  // namespace graft
