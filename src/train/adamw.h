// AdamW with decoupled weight decay, the update of torch.optim.AdamW (amsgrad off), with state
// that graft owns so that checkpoints hold exactly what resume needs: per parameter exp_avg and
// exp_avg_sq and its own step count (a parameter unfrozen late is bias-corrected from its first
// update, as torch.optim does for a parameter that had no gradient before).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace graft {

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  struct Slot {
    std::string name;
    at::Tensor param, exp_avg, exp_avg_sq;
    bool decay;  // weight decay applies (matrices), not to norms
    double lr_scale = 1.0;  // per-parameter learning-rate multiplier (layer-wise decay); 0 = frozen for now
    std::int64_t steps = 0;  // updates this parameter received (its bias correction)
  };
  // `params`: (name, tensor) of the trainable parameters; decay applies to those with dim >= 2.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions options);
  // One update with learning rate `lr` x each slot's lr_scale from the gradients in param.grad(); a
  // slot at scale 0 or without a gradient is left alone entirely (no moment update, no weight
  // decay, no step counted).
  void step(double lr);
  // Optimizer steps taken (every slot's `steps` is at most this).
  std::int64_t stepCount() const { return step_count_; }
  void setStepCount(std::int64_t n) { step_count_ = n; }
  std::vector<Slot>& slots() { return slots_; }
  const AdamWOptions& options() const { return options_; }

 private:
  std::vector<Slot> slots_;
  AdamWOptions options_;
  std::int64_t step_count_ = 0;
};

}  // namespace graft
