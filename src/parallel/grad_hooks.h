// A callback after each trainable parameter's gradient has been accumulated in backward: how the
// gradient strategies (grad_reducer.h, data_parallel.h) learn that a gradient is ready to send.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

namespace torch::autograd {
struct Node;
}

namespace graft {

class GradReadyHooks {
 public:
  // Registers on every parameter that requires a gradient; `on_ready(k)` runs on the backward
  // thread after params[k].grad() was accumulated (once per backward in graft's models).
  GradReadyHooks(const std::vector<at::Tensor>& params, std::function<void(std::size_t)> on_ready);
  ~GradReadyHooks();
  GradReadyHooks(const GradReadyHooks&) = delete;
  GradReadyHooks& operator=(const GradReadyHooks&) = delete;

 private:
  // The variable holds its accumulator weakly: keeping it alive keeps the hook registered.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
};

}  // namespace graft
