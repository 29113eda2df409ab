// A Llama-style decoder: RMSNorm, rotary embeddings (interleaved pairs, as llama2.c), grouped-query
// attention, SwiGLU feed-forward, tied or untied classifier.
//
// Parameter names are the checkpoint names, one to one (Meta/llama2.c naming):
//   tok_embeddings.weight                      [vocab, dim]
//   layers.<i>.attention_norm.weight           [dim]
//   layers.<i>.attention.{wq,wk,wv,wo}.weight  [out, in]
//   layers.<i>.ffn_norm.weight                 [dim]
//   layers.<i>.feed_forward.{w1,w2,w3}.weight  [out, in]  (w1 gate, w2 down, w3 up)
//   norm.weight                                [dim]
//   output.weight                              [vocab, dim]  (only when untied)
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include <string>
#include <vector>

#include "model/llama_config.h"

namespace graft {


// Keys and values of one layer for incremental decoding: [1, seq_len, n_kv_heads, head_dim].
struct KVSlot {
  torch::Tensor k, v;
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const LlamaConfig& c);
  // x [B, T, dim]; cos/sin [T, head_dim/2]; mask [T, T] additive (0 / -inf).
  // With `cache` (B = 1): the new keys/values are stored at positions [pos, pos + T) and the queries
  // attend to positions [0, pos + T); `mask` may then be undefined for T = 1.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVSlot* cache = nullptr, std::int64_t pos = 0);
  torch::nn::Linear wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  int n_heads_, n_kv_heads_, head_dim_;
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const LlamaConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};
};
TORCH_MODULE(FeedForward);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const LlamaConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVSlot* cache = nullptr, std::int64_t pos = 0);
  RMSNorm attention_norm{nullptr}, ffn_norm{nullptr};
  Attention attention{nullptr};
  FeedForward feed_forward{nullptr};
};
TORCH_MODULE(Block);

class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const LlamaConfig& c);
  // ids [B, T] int64 -> logits [B, T, vocab] (float32). T <= config.seq_len.
  torch::Tensor forward(const torch::Tensor& ids);
  // Incremental decoding: the logits [vocab] after token `token` at position `pos`, given that
  // positions [0, pos) were fed before with the same `cache` (empty = fresh, pos must be 0).
  torch::Tensor forwardStep(std::int64_t token, std::int64_t pos, std::vector<KVSlot>& cache);
  // Mean next-token cross-entropy of inputs[B,T] against targets[B,T] (nats), as a scalar tensor.
  torch::Tensor loss(const torch::Tensor& inputs, const torch::Tensor& targets);
  // Deterministic initialisation from `seed` (normal(0, 0.02), norms at 1; output projections
  // scaled by 1/sqrt(2 * n_layers) as in GPT-2).
  void initialise(std::uint64_t seed);
  const LlamaConfig& config() const { return config_; }
  torch::Tensor classifierWeight() const;

  torch::nn::Embedding tok_embeddings{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear output{nullptr};  // null when tied

 private:
  LlamaConfig config_;
  torch::Tensor rope_cos_, rope_sin_;  // [seq_len, head_dim/2], buffers (not parameters)
  torch::Tensor causal_mask_;          // [seq_len, seq_len]: 0 on and below the diagonal, -inf above
};
TORCH_MODULE(Llama);

}  // namespace graft
