// LibTorch 2.x's fused AdamW kernel against graft's portable step (AdamW::step on the CPU): five
// steps, with and without weight decay, tensors of odd sizes, the kernel's tensors on `device`.
// Shared by the gpu tests (CUDA, where graft runs the kernel) and the unit tests (the CPU kernel
// of LibTorch >= 2.4, which graft leaves unused: compat::fusedAdamW must say no there).
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/torch_compat.h"
#include "model_fixtures.h"
#include "optim/adamw.h"

namespace graft::testing {

inline void expectFusedAdamWMatchesThePortableStep(const torch::Device& device) {
  torch::manual_seed(11);
  const std::vector<std::vector<std::int64_t>> shapes = {{33, 7}, {5}, {1, 1000}};
  for (const double decay : {0.0, 0.1}) {
    std::vector<std::pair<std::string, at::Tensor>> cpu_params;
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      auto p = torch::randn(shapes[i]);
      cpu_params.emplace_back("p" + std::to_string(i), p.clone());
      params.push_back(p.to(device));
      exp_avgs.push_back(torch::zeros_like(params.back()));
      exp_avg_sqs.push_back(torch::zeros_like(params.back()));
    }
    AdamWOptions options;
    options.weight_decay = decay;
    AdamW portable(cpu_params, options);
    for (std::int64_t step = 1; step <= 5; ++step) {
      grads.clear();
      for (std::size_t i = 0; i < shapes.size(); ++i) {
        const auto g = torch::randn(shapes[i]);
        cpu_params[i].second.mutable_grad() = g;
        grads.push_back(g.to(device));
      }
      // Dims >= 2 decay (AdamW's rule): the 1-D tensor is its own call without decay.
      const auto with = [&](const std::vector<std::size_t>& which, double wd) {
        std::vector<at::Tensor> p, g, m, v;
        for (const auto i : which) p.push_back(params[i]), g.push_back(grads[i]), m.push_back(exp_avgs[i]), v.push_back(exp_avg_sqs[i]);
        const double lr = 2e-3;
        if (device.is_cuda()) return compat::fusedAdamW(p, g, m, v, step, lr, options.beta1, options.beta2, wd, options.eps);
        if (compat::fusedAdamW(p, g, m, v, step, lr, options.beta1, options.beta2, wd, options.eps)) return false;
        compat::fusedAdamWKernel(p, g, m, v, step, lr, options.beta1, options.beta2, wd, options.eps);
        return true;
      };
      ASSERT_TRUE(with({0, 2}, decay)) << "on " << device;
      ASSERT_TRUE(with({1}, 0.0)) << "on " << device;
      portable.step(2e-3);
    }
    for (std::size_t i = 0; i < shapes.size(); ++i)
      EXPECT_LT(relative(params[i].cpu(), cpu_params[i].second), 1e-5)
          << "tensor " << i << ", weight decay " << decay << ", on " << device;
  }
}

}  // namespace graft::testing
