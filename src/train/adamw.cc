#include "train/adamw.h"

#include <torch/torch.h>

#include <cmath>

namespace graft {

AdamW::AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions options) : options_(options) {
  for (const auto& [name, p] : params)
    slots_.push_back({name, p, torch::zeros_like(p), torch::zeros_like(p), p.dim() >= 2});
}

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  for (auto& s : slots_) {
    const auto& g = s.param.grad();
    if (!g.defined() || s.lr_scale == 0.0) continue;
    ++s.steps;
    const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(s.steps));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(options_.beta2, static_cast<double>(s.steps)));
    const double slot_lr = lr * s.lr_scale, step_size = slot_lr / bc1;
    if (s.decay && options_.weight_decay != 0) s.param.mul_(1.0 - slot_lr * options_.weight_decay);
    s.exp_avg.mul_(options_.beta1).add_(g, 1.0 - options_.beta1);
    s.exp_avg_sq.mul_(options_.beta2).addcmul_(g, g, 1.0 - options_.beta2);
    auto denom = (s.exp_avg_sq.sqrt() / bc2_sqrt).add_(options_.eps);
    s.param.addcdiv_(s.exp_avg, denom, -step_size);
  }
}

}  // namespace graft
