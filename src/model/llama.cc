#include "model/llama.h"

#include <torch/torch.h>

#include <cmath>

#include "util/error.h"

namespace graft {

void LlamaConfig::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw InputError(where + ": " + what + " (" + describe() + ")");
  };
  need(dim > 0 && hidden_dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0, "sizes must be positive");
  need(vocab_size > 3, "vocab_size must exceed 3");
  need(seq_len > 0, "seq_len must be positive");
  need(dim % n_heads == 0, "dim must be divisible by n_heads");
  need(headDim() % 2 == 0, "head size (dim / n_heads) must be even for rotary embeddings");
  need(n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
}

std::string LlamaConfig::describe() const {
  return "dim " + std::to_string(dim) + ", hidden " + std::to_string(hidden_dim) + ", layers " +
         std::to_string(n_layers) + ", heads " + std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) +
         " kv, vocab " + std::to_string(vocab_size) + ", seq_len " + std::to_string(seq_len) +
         (tied ? ", tied" : ", untied");
}

bool LlamaConfig::operator==(const LlamaConfig& o) const {
  return dim == o.dim && hidden_dim == o.hidden_dim && n_layers == o.n_layers && n_heads == o.n_heads &&
         n_kv_heads == o.n_kv_heads && vocab_size == o.vocab_size && tied == o.tied;
}

namespace {
torch::nn::Linear linear(int in, int out) { return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)); }

// Interleaved-pair rotation: (a, b) -> (a cos - b sin, a sin + b cos) on pairs (2i, 2i+1).
torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // x [B, T, H, D] -> pairs [B, T, H, D/2, 2]; cos/sin [T, D/2] broadcast over B and H.
  const auto sizes = x.sizes();
  auto pairs = x.reshape({sizes[0], sizes[1], sizes[2], sizes[3] / 2, 2});
  auto a = pairs.select(-1, 0), b = pairs.select(-1, 1);
  auto c = cos.unsqueeze(1), s = sin.unsqueeze(1);  // [T, 1, D/2]
  return torch::stack({a * c - b * s, a * s + b * c}, -1).reshape(sizes);
}
}  // namespace

RMSNormImpl::RMSNormImpl(int dim, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight;
}

AttentionImpl::AttentionImpl(const LlamaConfig& c)
    : n_heads_(c.n_heads), n_kv_heads_(c.n_kv_heads), head_dim_(c.headDim()) {
  const int kv_dim = c.n_kv_heads * c.headDim();
  wq = register_module("wq", linear(c.dim, c.dim));
  wk = register_module("wk", linear(c.dim, kv_dim));
  wv = register_module("wv", linear(c.dim, kv_dim));
  wo = register_module("wo", linear(c.dim, c.dim));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     const torch::Tensor& mask, KVSlot* cache, std::int64_t pos) {
  const auto B = x.size(0), T = x.size(1);
  // q, k and v from one matmul against the concatenated weights (fewer, larger GEMMs).
  const int64_t q_dim = n_heads_ * head_dim_, kv_dim = n_kv_heads_ * head_dim_;
  auto qkv = torch::matmul(x, torch::cat({wq->weight, wk->weight, wv->weight}).t());
  auto q = rotate(qkv.narrow(-1, 0, q_dim).view({B, T, n_heads_, head_dim_}), cos, sin);
  auto k = rotate(qkv.narrow(-1, q_dim, kv_dim).view({B, T, n_kv_heads_, head_dim_}), cos, sin);
  auto v = qkv.narrow(-1, q_dim + kv_dim, kv_dim).view({B, T, n_kv_heads_, head_dim_});
  if (cache) {
    cache->k.narrow(1, pos, T).copy_(k);
    cache->v.narrow(1, pos, T).copy_(v);
    k = cache->k.narrow(1, 0, pos + T);
    v = cache->v.narrow(1, 0, pos + T);
  }
  const auto S = k.size(1);  // key positions
  // [B, T, heads, D] -> [B * heads, T, D], the layout of the batched matmuls below.
  auto heads = [&](const torch::Tensor& t, std::int64_t len) {
    return t.transpose(1, 2).reshape({B * n_heads_, len, head_dim_});
  };
  const int group = n_heads_ / n_kv_heads_;
  if (group > 1) {  // query head h reads kv head h / group
    k = k.unsqueeze(3).expand({B, S, n_kv_heads_, group, head_dim_}).reshape({B, S, n_heads_, head_dim_});
    v = v.unsqueeze(3).expand({B, S, n_kv_heads_, group, head_dim_}).reshape({B, S, n_heads_, head_dim_});
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  auto keys_t = heads(k, S).transpose(1, 2);
  // One fused call: mask + scale * q k^T (the mask is 0 on and below the diagonal, -inf above).
  auto scores = mask.defined() ? torch::baddbmm(mask, heads(q, T), keys_t, /*beta=*/1.0, /*alpha=*/scale)
                               : torch::bmm(heads(q, T), keys_t) * scale;
  auto out = torch::bmm(torch::softmax(scores, -1), heads(v, S));  // [B * H, T, D]
  return wo(out.view({B, n_heads_, T, head_dim_}).transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));
}

FeedForwardImpl::FeedForwardImpl(const LlamaConfig& c) {
  w1 = register_module("w1", linear(c.dim, c.hidden_dim));
  w2 = register_module("w2", linear(c.hidden_dim, c.dim));
  w3 = register_module("w3", linear(c.dim, c.hidden_dim));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  // Gate and up projections from one matmul against the concatenated weights.
  auto both = torch::matmul(x, torch::cat({w1->weight, w3->weight}).t());
  const auto hidden = w1->weight.size(0);
  return w2(torch::silu(both.narrow(-1, 0, hidden)) * both.narrow(-1, hidden, hidden));
}

BlockImpl::BlockImpl(const LlamaConfig& c) {
  attention_norm = register_module("attention_norm", RMSNorm(c.dim, c.norm_eps));
  attention = register_module("attention", Attention(c));
  ffn_norm = register_module("ffn_norm", RMSNorm(c.dim, c.norm_eps));
  feed_forward = register_module("feed_forward", FeedForward(c));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                 const torch::Tensor& mask, KVSlot* cache, std::int64_t pos) {
  auto h = x + attention->forward(attention_norm(x), cos, sin, mask, cache, pos);
  return h + feed_forward(ffn_norm(h));
}

LlamaImpl::LlamaImpl(const LlamaConfig& c) : config_(c) {
  c.validate("model");
  tok_embeddings = register_module("tok_embeddings", torch::nn::Embedding(c.vocab_size, c.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.n_layers; ++i) layers->push_back(Block(c));
  norm = register_module("norm", RMSNorm(c.dim, c.norm_eps));
  if (!c.tied) output = register_module("output", linear(c.dim, c.vocab_size));
  // Rotary tables in float64 then float32, angle = pos * theta^(-2i/D), as llama2.c's run.c.
  const int half = c.headDim() / 2;
  auto i = torch::arange(half, torch::kFloat64);
  auto freq = torch::pow(c.rope_theta, -2.0 * i / c.headDim()).to(torch::kFloat32);
  auto pos = torch::arange(c.seq_len, torch::kFloat32);
  auto angle = torch::outer(pos, freq);
  rope_cos_ = torch::cos(angle);
  rope_sin_ = torch::sin(angle);
  causal_mask_ = torch::full({c.seq_len, c.seq_len}, -std::numeric_limits<float>::infinity()).triu(1);
}

torch::Tensor LlamaImpl::classifierWeight() const { return config_.tied ? tok_embeddings->weight : output->weight; }

torch::Tensor LlamaImpl::forward(const torch::Tensor& ids) {
  const auto T = ids.size(1);
  if (T > config_.seq_len)
    throw InputError("sequence of " + std::to_string(T) + " tokens exceeds the model's seq_len " +
                     std::to_string(config_.seq_len));
  auto cos = rope_cos_.narrow(0, 0, T), sin = rope_sin_.narrow(0, 0, T);
  auto mask = causal_mask_.narrow(0, 0, T).narrow(1, 0, T);
  auto x = tok_embeddings(ids);
  for (const auto& layer : *layers) x = layer->as<Block>()->forward(x, cos, sin, mask);
  return torch::matmul(norm(x), classifierWeight().t());
}

torch::Tensor LlamaImpl::forwardStep(std::int64_t token, std::int64_t pos, std::vector<KVSlot>& cache) {
  if (pos < 0 || pos >= config_.seq_len)
    throw InputError("position " + std::to_string(pos) + " is outside the model's context of " +
                     std::to_string(config_.seq_len));
  if (cache.empty()) {
    const auto shape = std::vector<std::int64_t>{1, config_.seq_len, config_.n_kv_heads, config_.headDim()};
    for (int l = 0; l < config_.n_layers; ++l) cache.push_back({torch::zeros(shape), torch::zeros(shape)});
  }
  auto x = tok_embeddings(torch::full({1, 1}, token, torch::kInt64));
  auto cos = rope_cos_.narrow(0, pos, 1), sin = rope_sin_.narrow(0, pos, 1);
  for (std::size_t l = 0; l < cache.size(); ++l)
    x = layers[l]->as<Block>()->forward(x, cos, sin, /*mask=*/torch::Tensor(), &cache[l], pos);
  return torch::matmul(norm(x), classifierWeight().t()).view({-1});
}

torch::Tensor LlamaImpl::loss(const torch::Tensor& inputs, const torch::Tensor& targets) {
  auto logits = forward(inputs);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
}

void LlamaImpl::initialise(std::uint64_t seed) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  const double out_std = 0.02 / std::sqrt(2.0 * config_.n_layers);
  for (auto& item : named_parameters()) {
    auto& p = item.value();
    const auto& name = item.key();
    if (name.find("norm") != std::string::npos) {
      p.fill_(1.0);
    } else {
      const bool residual_out = name.find("wo.weight") != std::string::npos || name.find("w2.weight") != std::string::npos;
      p.normal_(0.0, residual_out ? out_std : 0.02, gen);
    }
  }
}

}  // namespace graft
