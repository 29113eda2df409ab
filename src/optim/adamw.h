// AdamW with decoupled weight decay, the update of torch.optim.AdamW (amsgrad off), with state
// that graft owns so that checkpoints hold exactly what resume needs: per parameter exp_avg and
// exp_avg_sq and its own step count (a parameter unfrozen late is bias-corrected from its first
// update, as torch.optim does for a parameter that had no gradient before).
//
// A slot updates a whole parameter or, under sharding (parallel/data_parallel.h), only the rows
// this rank owns: then `param` and `grad` are views of those rows and the moments have their
// shape. AdamW is elementwise, so an update of rows equals the same rows of a whole update bit for
// bit. The optimizer saves and loads its own state (save/load) in the parameters' global shapes,
// so a checkpoint does not depend on how the rows were shared out.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace graft {

class H5File;

struct AdamWOptions {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
};

class AdamW {
 public:
  struct Slot {
    std::string name;
    at::Tensor param;  // what this rank updates: the parameter, or a view of its rows [row_begin, ...)
    at::Tensor grad;   // the gradient of `param`; undefined: param.grad() (see step)
    at::Tensor exp_avg, exp_avg_sq;  // shaped like `param`
    bool decay;  // weight decay applies (matrices), not to norms
    double lr_scale = 1.0;  // per-parameter learning-rate multiplier (layer-wise decay); 0 = frozen for now
    std::int64_t steps = 0;  // updates this parameter received (its bias correction)
    std::int64_t row_begin = 0;             // first global row `param` holds
    std::vector<std::int64_t> global_shape;  // the whole parameter's shape
    bool whole() const;
  };
  // A parameter, or the rows [row_begin, row_begin + rows.size(0)) of one of shape `global_shape`.
  struct Rows {
    std::string name;
    at::Tensor rows;
    std::int64_t row_begin = 0;
    std::vector<std::int64_t> global_shape;  // empty: rows is the whole parameter
  };
  // `params`: (name, tensor) of the trainable parameters; decay applies to those with dim >= 2.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions options);
  static AdamW ofRows(const std::vector<Rows>& params, AdamWOptions options);
  // One update with learning rate `lr` x each slot's lr_scale from the gradients in slot.grad (or
  // param.grad() when that is undefined); a slot at scale 0 or without a gradient is left alone
  // entirely (no moment update, no weight decay, no step counted).
  void step(double lr);
  // Optimizer steps taken (every slot's `steps` is at most this).
  std::int64_t stepCount() const { return step_count_; }
  void setStepCount(std::int64_t n) { step_count_ = n; }
  // Groups of slots the last step updated with the fused kernel (Note [multi-tensor step]; 0 on
  // the CPU and on LibTorch 1.13), and in all.
  int fusedGroups() const { return fused_groups_; }
  int groups() const { return groups_; }
  std::vector<Slot>& slots() { return slots_; }
  const std::vector<Slot>& slots() const { return slots_; }
  const AdamWOptions& options() const { return options_; }
  // Bytes the state takes on disk (both moments of every slot, whole).
  std::uint64_t stateBytes() const;

  // Writes what the state holds besides its moments under `group` (layout in
  // docs/checkpoint-format.md): attrs step_count, beta1, beta2, eps, weight_decay, and each slot's
  // attr steps on GROUP/exp_avg/<param>, which must exist: the checkpoint writer writes the moments,
  // float32 in the parameter's global shape, from every rank's rows (DataParallel::checkpointRows).
  void saveAttributes(H5File& file, const std::string& group) const;
  // Reads this optimizer's rows of every slot from `group` of a checkpoint written with any
  // sharding; shapes and step counts are checked, errors name the file and tensor.
  void load(const H5File& file, const std::string& group);

 private:
  std::vector<Slot> slots_;
  AdamWOptions options_;
  std::int64_t step_count_ = 0;
  int fused_groups_ = 0, groups_ = 0;
};

}  // namespace graft
