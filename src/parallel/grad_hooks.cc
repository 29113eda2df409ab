#include "parallel/grad_hooks.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/torch.h>

namespace graft {
namespace {

class ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  explicit ReadyHook(std::function<void()> on_ready) : on_ready_(std::move(on_ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    on_ready_();
    return outputs;
  }

 private:
  std::function<void()> on_ready_;
};

}  // namespace

GradReadyHooks::GradReadyHooks(const std::vector<at::Tensor>& params, std::function<void(std::size_t)> on_ready) {
  for (std::size_t k = 0; k < params.size(); ++k) {
    if (!params[k].requires_grad()) continue;
    auto accumulator = torch::autograd::impl::grad_accumulator(params[k]);
    accumulator->add_post_hook(std::make_unique<ReadyHook>([on_ready, k] { on_ready(k); }));
    accumulators_.push_back(std::move(accumulator));
  }
}

GradReadyHooks::~GradReadyHooks() = default;

}  // namespace graft
