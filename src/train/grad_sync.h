// Data-parallel gradient averaging through one flat buffer: gradients are copied in, the
// buffer is all-reduced (sum) once, and copied back scaled by 1 / world. `extra` scalars ride
// along in the same all-reduce (the step's loss), so a step costs one collective.
// Bucketing and overlap with backward are a later stage (see docs/architecture.md).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "communicator.h"

namespace graft {

class FlatGradSync {
 public:
  FlatGradSync(const std::vector<at::Tensor>& params, int extra);
  // Collective. Averages the gradients over ranks; sums `extra` (size == extra) in place.
  void average(Communicator& comm, std::vector<double>& extra);
  // sqrt of the sum of squared gradients (after average(), identical on every rank).
  double globalNorm() const;
  // Multiplies every gradient by `scale`.
  void scale(double scale);

 private:
  std::vector<at::Tensor> params_;
  at::Tensor buffer_;
  int extra_;
};

}  // namespace graft
