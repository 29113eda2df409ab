// Small models and a tolerance measure shared by the unit and gpu tests.
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/model_config.h"

namespace graft::testing {

// ||got - want|| / ||want|| in float64, on the CPU (either may live on a GPU).
inline double relative(const torch::Tensor& got, const torch::Tensor& want) {
  const auto g = got.to(torch::kCPU, torch::kFloat64), w = want.to(torch::kCPU, torch::kFloat64);
  return ((g - w).norm() / w.norm().clamp_min(1e-30)).item<double>();
}

// Two layers of dim 64 of either family, grouped-query attention for llama.
inline ModelConfig smallModel(const std::string& arch, int vocab_size = 128) {
  ModelConfig c;
  c.arch = arch;
  c.n_layers = 2;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_heads = 4;
  c.n_kv_heads = arch == "gpt2" ? 4 : 2;
  c.vocab_size = vocab_size;
  c.seq_len = 32;
  return c;
}

}  // namespace graft::testing
