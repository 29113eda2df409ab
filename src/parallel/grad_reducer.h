// Data-parallel gradient averaging that overlaps communication with backward.
//
// Each trainable parameter's .grad is a view into a flat bucket buffer (planned by planBuckets),
// so autograd accumulates straight into the buffers. A post-accumulate hook on every parameter
// counts the gradients that are ready; when a bucket's last gradient is ready on a syncing
// micro-step, the bucket is scaled by 1/world and its all-reduce starts at once (buckets always
// start in bucket order, so every rank issues the same sequence of collectives). Frozen parameters
// have no bucket and never enter a collective. Micro-steps that do not sync (gradient accumulation)
// communicate nothing.
//
// Per optimizer step:   reducer.beginStep();             // zero the buckets
//                       for each micro-step m:
//                         reducer.beginMicroStep(m == last);  forward; backward;
//                       reducer.finish();                // wait for every bucket (timeout)
// Collective: construction (plan check), finish(), and backward on a syncing micro-step.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "communicator.h"
#include "parallel/bucket_plan.h"
#include "parallel/grad_hooks.h"

namespace graft {

struct GradReducerOptions {
  std::size_t first_bucket_bytes = 1u << 20;   // 1 MiB
  std::size_t bucket_bytes = 25u << 20;        // 25 MiB
  bool overlap = true;  // false: all buckets start in finish(), after backward (for measurements)
  at::ScalarType reduce_dtype = at::kFloat;  // dist.reduce_dtype: what the buckets travel and are summed in
};

class GradReducer {
 public:
  // `params`: (name, tensor) in registration order; those with requires_grad() false are frozen.
  // Collective: checks that every rank planned the same buckets (error names the first difference).
  GradReducer(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
              GradReducerOptions options);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  void beginStep();
  void beginMicroStep(bool sync);
  // Collective. Waits for all buckets; afterwards every trainable .grad holds the average over ranks.
  void finish();
  void scaleGradients(double factor);

  const BucketPlan& plan() const { return plan_; }
  std::size_t collectivesLastStep() const { return launched_count_; }

 private:
  void onGradReady(std::size_t param);
  void launchReady();
  void launch(std::size_t bucket);
  void verifyAcrossRanks();

  Communicator& comm_;
  GradReducerOptions options_;
  std::vector<std::pair<std::string, at::Tensor>> params_;
  BucketPlan plan_;
  std::vector<at::Tensor> buffers_;
  std::vector<std::size_t> pending_;  // gradients still to arrive, per bucket
  std::vector<bool> ready_;
  std::size_t next_launch_ = 0;
  std::size_t launched_count_ = 0;
  std::vector<WorkPtr> works_;
  bool sync_ = false;
  std::unique_ptr<GradReadyHooks> hooks_;
};

}  // namespace graft
