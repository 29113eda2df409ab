// The LibTorch-version branches of src/model/torch_compat.h, run on the CPU wherever this LibTorch
// has them (issue 28): on Debian 13's LibTorch 2.6 both run and must agree with the portable paths
// that Debian 12's 1.13 build takes; on 1.13 each test skips, and says why.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "fused_adamw_check.h"
#include "model/torch_compat.h"
#include "model_fixtures.h"

namespace graft {
namespace {

using testing::relative;

// softmax(q k^T / sqrt(D) + mask) v in float32, as the portable attention computes it.
torch::Tensor portableAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const torch::Tensor& mask) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto scores = torch::matmul(q.to(torch::kFloat), k.to(torch::kFloat).transpose(-2, -1)) * scale + mask;
  return torch::matmul(torch::softmax(scores, -1), v.to(torch::kFloat));
}

// Scaled-dot-product attention (what bf16 attention runs on CUDA under LibTorch 2.x) against the
// portable product, forward and gradients: the causal kernel, an additive [T, S] mask (a sliding
// window of 3) and a per-row [B, 1, T, S] mask (two packed documents, restarting at position 5).
TEST(Compat, FusedAttentionAgreesWithThePortableProduct) {
  if (!compat::kFusedAttention) GTEST_SKIP() << "LibTorch " TORCH_VERSION " has no scaled_dot_product_attention";
  torch::manual_seed(5);
  const std::int64_t B = 2, H = 3, T = 9, D = 8;
  const auto inf = -std::numeric_limits<float>::infinity();
  const auto causal = torch::full({T, T}, inf).triu(1);
  const auto window = causal + torch::full({T, T}, inf).tril(-3);
  auto documents = causal.clone().unsqueeze(0).repeat({B, 1, 1});
  documents[1].narrow(0, 5, T - 5).narrow(1, 0, 5).fill_(inf);  // row 1: tokens 5.. see nothing before 5
  struct Case {
    std::string name;
    torch::Tensor mask;  // additive, as the portable path adds it
    bool causal;
  };
  for (const auto& c : {Case{"causal", causal, true}, Case{"window", window, false},
                        Case{"packed documents", documents.unsqueeze(1), false}}) {
    for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
      const auto q = torch::randn({B, H, T, D}), k = torch::randn({B, H, T, D}), v = torch::randn({B, H, T, D});
      const auto qf = q.to(dtype).clone().requires_grad_(), kf = k.to(dtype).clone().requires_grad_(),
                 vf = v.to(dtype).clone().requires_grad_();
      const auto qp = q.clone().requires_grad_(), kp = k.clone().requires_grad_(), vp = v.clone().requires_grad_();
      const auto fused = compat::fusedAttention(qf, kf, vf, c.mask, c.causal);
      const auto portable = portableAttention(qp, kp, vp, c.mask);
      ASSERT_EQ(fused.sizes(), portable.sizes()) << c.name;
      EXPECT_EQ(fused.scalar_type(), dtype) << c.name;
      const auto weights = torch::randn(portable.sizes());
      (fused.to(torch::kFloat) * weights).sum().backward();
      (portable * weights).sum().backward();
      // float32 to rounding; bf16 to its 8 bits of mantissa, the tolerance of the gpu tests.
      const double tolerance = dtype == torch::kFloat ? 1e-5 : 3e-2;
      const std::string what = c.name + (dtype == torch::kFloat ? " float32" : " bf16");
      EXPECT_LT(relative(fused.to(torch::kFloat), portable.detach()), tolerance) << what;
      EXPECT_LT(relative(qf.grad().to(torch::kFloat), qp.grad()), tolerance) << what << ": q's gradient";
      EXPECT_LT(relative(kf.grad().to(torch::kFloat), kp.grad()), tolerance) << what << ": k's gradient";
      EXPECT_LT(relative(vf.grad().to(torch::kFloat), vp.grad()), tolerance) << what << ": v's gradient";
    }
  }
}

// The fused AdamW kernel on the CPU (LibTorch >= 2.4) agrees with graft's portable step, and
// compat::fusedAdamW leaves CPU tensors to the portable path (it says no, so CPU results stay
// those of every other build).
TEST(Compat, FusedAdamWOnTheCpuAgreesWithThePortableStep) {
  if (!compat::kFusedAdamWOnCpu) GTEST_SKIP() << "LibTorch " TORCH_VERSION " has no fused AdamW kernel for the CPU";
  testing::expectFusedAdamWMatchesThePortableStep(torch::kCPU);
}

}  // namespace
}  // namespace graft
