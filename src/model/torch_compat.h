// The differences between the two LibTorch versions graft builds against: Debian's 1.13 (CPU; CI)
// and a CUDA LibTorch 2.x (the PyTorch wheel's, on a GPU machine). Nothing else in graft tests
// TORCH_VERSION_*: code that needs a 2.x feature asks here, and 1.13 gets the portable path.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

#include <cstdint>
#include <vector>

namespace graft::compat {

// scaled_dot_product_attention (flash and memory-efficient kernels on CUDA; LibTorch >= 2.0).
constexpr bool kFusedAttention = TORCH_VERSION_MAJOR >= 2;

// softmax(q k^T / sqrt(D) + mask) v for q [B, H, T, D], k and v [B, H, S, D], in one fused kernel:
// `causal` (then `mask` is ignored: T == S, query t sees keys 0..t), else with the additive float
// `mask` [T, S]. Only where kFusedAttention; the caller keeps the portable path for the rest.
inline at::Tensor fusedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                                 bool causal) {
#if TORCH_VERSION_MAJOR >= 2
  const c10::optional<at::Tensor> additive =
      causal || !mask.defined() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(mask.to(q.scalar_type()));
  return at::scaled_dot_product_attention(q, k, v, additive, /*dropout_p=*/0.0, /*is_causal=*/causal);
#else
  (void)q, (void)k, (void)v, (void)mask, (void)causal;
  TORCH_CHECK(false, "fused attention needs LibTorch 2.x");
  return {};
#endif
}

// AdamW in one multi-tensor kernel per call (LibTorch >= 2.1 on CUDA; >= 2.4 has it on the CPU too,
// where graft does not use it, so that CPU results stay those of the portable path: the tests
// compare the two there).
constexpr bool kFusedAdamW = TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1);
constexpr bool kFusedAdamWOnCpu = TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4);

// The fused kernel itself: one AdamW step (decoupled weight decay, bias corrections for step
// `steps`) of every tensor in `params` with its gradient and moments, in place, on whatever device
// they are on. Only where kFusedAdamW (CUDA) or kFusedAdamWOnCpu; the tensors of one index must
// have the same shape and strides, all of one device and dtype (fusedAdamW checks).
inline void fusedAdamWKernel(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, std::int64_t steps, double lr, double beta1, double beta2,
                             double weight_decay, double eps) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  if (params.empty()) return;
  // The kernel reads each tensor's step count from a float32 scalar on the device (it never
  // writes it): one scalar serves the whole group.
  const auto step = at::scalar_tensor(static_cast<double>(steps), params[0].options().dtype(at::kFloat));
  const std::vector<at::Tensor> state_steps(params.size(), step);
  at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, state_steps, lr, beta1, beta2,
                    weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
#else
  (void)params, (void)grads, (void)exp_avgs, (void)exp_avg_sqs, (void)steps, (void)lr, (void)beta1, (void)beta2,
      (void)weight_decay, (void)eps;
  TORCH_CHECK(false, "fused AdamW needs LibTorch 2.1 or later");
#endif
}

// fusedAdamWKernel where graft uses it: true when it ran, false where it cannot (the tensors are
// not all on CUDA, or this LibTorch lacks the kernel), and the caller takes the portable path.
inline bool fusedAdamW(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                       std::int64_t steps, double lr, double beta1, double beta2, double weight_decay, double eps) {
  if (!kFusedAdamW) return false;
  if (params.empty()) return true;
  for (const auto* list : {&params, &grads, &exp_avgs, &exp_avg_sqs})
    for (const auto& t : *list)
      if (!t.is_cuda() || t.device() != params[0].device() || t.scalar_type() != params[0].scalar_type()) return false;
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (!params[i].is_non_overlapping_and_dense()) return false;
    for (const auto* other : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i]})
      if (other->sizes() != params[i].sizes() || other->strides() != params[i].strides()) return false;
  }
  fusedAdamWKernel(params, grads, exp_avgs, exp_avg_sqs, steps, lr, beta1, beta2, weight_decay, eps);
  return true;
}

}  // namespace graft::compat
