// graft's AdamW against LibTorch's own torch::optim::AdamW (an independent implementation).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "optim/adamw.h"

namespace graft {
namespace {

TEST(AdamW, MatchesTorchOptimAdamW) {
  torch::manual_seed(3);
  auto w_ref = torch::randn({5, 4}, torch::requires_grad());
  auto w = w_ref.detach().clone().requires_grad_(true);
  auto target = torch::randn({3, 5});
  auto x = torch::randn({3, 4});
  torch::optim::AdamW ref({w_ref}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  AdamW mine({{"w", w}}, {0.9, 0.95, 1e-8, 0.1});
  for (int step = 0; step < 20; ++step) {
    ref.zero_grad();
    torch::mse_loss(torch::matmul(x, w_ref.t()), target).backward();
    ref.step();
    w.mutable_grad() = torch::Tensor();
    torch::mse_loss(torch::matmul(x, w.t()), target).backward();
    mine.step(0.01);
  }
  EXPECT_EQ(mine.stepCount(), 20);
  EXPECT_TRUE(torch::allclose(w, w_ref, 1e-6, 1e-7)) << (w - w_ref).abs().max().item<float>();
  EXPECT_EQ(mine.groups(), 1);
  EXPECT_EQ(mine.fusedGroups(), 0);  // the CPU takes the portable path (Note [multi-tensor step])
}

// A parameter that gets no gradient for the first steps (frozen, then unfrozen: lr_scale 0 here,
// no gradient for torch) is bias-corrected from its own first update, as torch.optim does.
TEST(AdamW, ALateUnfrozenParameterCountsItsOwnSteps) {
  torch::manual_seed(5);
  auto a_ref = torch::randn({4, 3}, torch::requires_grad()), b_ref = torch::randn({2, 4}, torch::requires_grad());
  auto a = a_ref.detach().clone().requires_grad_(true), b = b_ref.detach().clone().requires_grad_(true);
  auto x = torch::randn({5, 3}), target = torch::randn({5, 2});
  torch::optim::AdamW ref({a_ref, b_ref}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  AdamW mine({{"a", a}, {"b", b}}, {0.9, 0.95, 1e-8, 0.1});
  for (int step = 0; step < 8; ++step) {
    const bool a_trains = step >= 5;
    ref.zero_grad();
    a_ref.requires_grad_(a_trains);
    torch::mse_loss(torch::matmul(torch::matmul(x, a_ref.t()), b_ref.t()), target).backward();
    ref.step();
    a.mutable_grad() = torch::Tensor();
    b.mutable_grad() = torch::Tensor();
    torch::mse_loss(torch::matmul(torch::matmul(x, a.t()), b.t()), target).backward();
    mine.slots()[0].lr_scale = a_trains ? 1.0 : 0.0;
    mine.step(0.01);
  }
  EXPECT_EQ(mine.slots()[0].steps, 3);
  EXPECT_EQ(mine.slots()[1].steps, 8);
  EXPECT_TRUE(torch::allclose(a, a_ref, 1e-6, 1e-7)) << (a - a_ref).abs().max().item<float>();
  EXPECT_TRUE(torch::allclose(b, b_ref, 1e-6, 1e-7)) << (b - b_ref).abs().max().item<float>();
}

TEST(AdamW, NoDecayForVectors) {
  auto v = torch::ones({3}, torch::requires_grad());
  AdamW opt({{"norm.weight", v}}, {0.9, 0.95, 1e-8, 0.5});
  v.mutable_grad() = torch::zeros({3});
  opt.step(0.1);
  EXPECT_TRUE(torch::equal(v, torch::ones({3})));  // zero gradient, no decay: unchanged
  EXPECT_FALSE(opt.slots()[0].decay);
}

}  // namespace
}  // namespace graft
