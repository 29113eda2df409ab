// The differences between the two LibTorch versions graft builds against: Debian's 1.13 (CPU; CI)
// and a CUDA LibTorch 2.x (the PyTorch wheel's, on a GPU machine). Nothing else in graft tests
// TORCH_VERSION_*: code that needs a 2.x feature asks here, and 1.13 gets the portable path.
#pragma once

#include <ATen/ATen.h>
#include <torch/version.h>

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

}  // namespace graft::compat
