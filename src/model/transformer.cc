#include "model/transformer.h"

#include <torch/torch.h>

#include <cmath>

#include "model/parameter_storage.h"
#include "model/torch_compat.h"
#include "util/error.h"

namespace graft {

namespace {
Projection linear(int in, int out, bool bias) { return Projection(in, out, bias); }

// A parameter of `shape`, initialised by `init`; without memory (and uninitialised) while a
// WithoutMemory guard is alive (model/parameter_storage.h).
template <typename Init>
torch::Tensor newParameter(at::IntArrayRef shape, Init init) {
  torch::NoGradGuard no_grad;
  auto t = torch::empty(shape);
  if (WithoutMemory::active()) releaseMemory(t);
  else init(t);
  return t;
}

// Note [mixed precision]
// ~~~~~~~~~~~~~~~~~~~~~~
// train.precision = bf16 casts the two operands of every matrix product (projections, LoRA terms,
// the tied classifier, q k^T and p v) to bfloat16 on the fly; nothing else changes dtype. The
// parameters stay float32 (the masters: the optimizer updates them, checkpoints hold them, so a
// resume is as exact as in fp32), and so do their gradients (autograd casts back through the
// casts). A block's output is bfloat16 and is added to the float32 residual stream, which type
// promotion keeps float32; so norms read float32, the softmax runs on float32 scores, and logits
// are cast to float32 before any loss. In fp32 every cast is a no-op: the same bits as before.

// x W^T in `dtype` (W [out, in] float32, cast on the fly).
torch::Tensor product(const torch::Tensor& x, const torch::Tensor& w, torch::ScalarType dtype) {
  return torch::matmul(x.to(dtype), w.to(dtype).t());
}

// Note [products that keep no weight copies]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// x @ cat(W1, W2, ...)^T through autograd saves the concatenation, and a bf16 cast of W saves the
// cast: whole copies of the weights, made after dist.shard = parameters gathered the unit, that
// stay alive from the unit's forward until backward reaches it, whatever ZeRO-3 frees (measured
// at 155M parameters and 4 ranks: 430 MiB per rank, two thirds of every block's weights). This
// product saves its input and the parameters themselves instead (ZeRO-3 refills a parameter in
// place before its unit's backward, Note [freeing parameters]), and makes the concatenation and
// the cast again in backward: one more copy of a unit's weights in its backward, none in between.
// The forward computes exactly what product() computes.
struct WeightProduct : public torch::autograd::Function<WeightProduct> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, at::TensorList weights,
                               std::int64_t dtype) {
    const auto in = x.to(static_cast<torch::ScalarType>(dtype));  // what autograd's own product saved: the cast input
    ctx->saved_data["dtype"] = dtype;
    ctx->saved_data["x_dtype"] = static_cast<std::int64_t>(x.scalar_type());
    std::vector<torch::Tensor> saved = {in};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    torch::NoGradGuard no_grad;
    return product(in, weights.size() == 1 ? weights[0] : torch::cat(weights), static_cast<torch::ScalarType>(dtype));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    const auto& in = saved[0];
    const std::vector<torch::Tensor> weights(saved.begin() + 1, saved.end());
    const auto g = grad_out[0].to(dtype);
    torch::autograd::variable_list out(2 + weights.size());
    if (ctx->needs_input_grad(0)) {
      // Cast each weight, then concatenate: no float32 concatenation is made under bf16.
      std::vector<torch::Tensor> cast;
      for (const auto& w : weights) cast.push_back(w.to(dtype));
      const auto w = cast.size() == 1 ? cast[0] : torch::cat(cast);
      out[0] = torch::matmul(g, w).to(static_cast<torch::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    bool any = false;
    for (std::size_t i = 0; i < weights.size(); ++i) any = any || ctx->needs_input_grad(1 + i);
    if (any) {
      const auto all = g.reshape({-1, g.size(-1)}).t().mm(in.reshape({-1, in.size(-1)}));  // [sum of out, in]
      std::int64_t at = 0;
      for (std::size_t i = 0; i < weights.size(); ++i) {
        const auto n = weights[i].size(0);
        if (ctx->needs_input_grad(1 + i)) out[1 + i] = all.narrow(0, at, n).to(weights[i].scalar_type());
        at += n;
      }
    }
    return out;
  }
};

// Note [quantized products keep no dequantized copies]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A QLoRA base weight is dequantised to float32 for its product, and through autograd the matmul
// saves that copy for the input's gradient: 4 bytes per weight (8x an NF4 code) from the
// projection's forward until backward reaches it, so at the end of the forward the whole frozen
// model, dequantised, on every rank. This product saves the codes and scales the model holds
// anyway, and dequantises again in backward. The base is frozen: only the input has a gradient,
// and the input itself need not be kept. The forward computes exactly what product() computes.
struct DequantizedProduct : public torch::autograd::Function<DequantizedProduct> {
  // `layout`: per part kind, rows, columns, block (QuantizedWeight); `tensors`: per part codes, scales.
  static std::vector<QuantizedWeight> parts(const std::vector<std::int64_t>& layout, const std::vector<torch::Tensor>& tensors) {
    std::vector<QuantizedWeight> out;
    for (std::size_t i = 0; i < layout.size() / 4; ++i) {
      QuantizedWeight q;
      q.kind = static_cast<QuantKind>(layout[4 * i]);
      q.shape = {layout[4 * i + 1], layout[4 * i + 2]};
      q.block = static_cast<int>(layout[4 * i + 3]);
      q.codes = tensors[2 * i];
      q.scales = tensors[2 * i + 1];
      out.push_back(q);
    }
    return out;
  }
  // The parts dequantized, each cast to `dtype` before they are concatenated: one float32 part at
  // a time, never the float32 concatenation beside its cast.
  static torch::Tensor whole(const std::vector<QuantizedWeight>& parts, torch::ScalarType dtype) {
    std::vector<torch::Tensor> w;
    for (const auto& q : parts) w.push_back(q.dequantize().to(dtype));
    return w.size() == 1 ? w[0] : torch::cat(w);
  }
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, at::TensorList tensors,
                               std::vector<std::int64_t> layout, std::int64_t dtype) {
    ctx->saved_data["layout"] = layout;
    ctx->saved_data["dtype"] = dtype;
    ctx->saved_data["x_dtype"] = static_cast<std::int64_t>(x.scalar_type());
    ctx->save_for_backward(tensors.vec());
    torch::NoGradGuard no_grad;
    return product(x, whole(parts(layout, tensors.vec()), static_cast<torch::ScalarType>(dtype)), static_cast<torch::ScalarType>(dtype));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto tensors = ctx->get_saved_variables();
    const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
    torch::autograd::variable_list out(1 + tensors.size() + 2);  // x, the codes and scales, layout, dtype
    if (ctx->needs_input_grad(0)) {
      const auto w = whole(parts(ctx->saved_data["layout"].toIntVector(), tensors), dtype);
      out[0] = torch::matmul(grad_out[0].to(dtype), w).to(static_cast<torch::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
    }
    return out;
  }
};

}  // namespace

torch::Tensor dequantizedProduct(const torch::Tensor& x, const std::vector<const QuantizedWeight*>& weights,
                                 torch::ScalarType dtype) {
  std::vector<torch::Tensor> tensors;
  std::vector<std::int64_t> layout;
  for (const auto* q : weights) {
    TORCH_CHECK(q->kind != QuantKind::None && q->shape.size() == 2, "dequantizedProduct: a quantized 2-D weight");
    tensors.push_back(q->codes);
    tensors.push_back(q->scales);
    layout.insert(layout.end(), {static_cast<std::int64_t>(q->kind), q->shape[0], q->shape[1], q->block});
  }
  if (!torch::GradMode::is_enabled()) return product(x, DequantizedProduct::whole(DequantizedProduct::parts(layout, tensors), dtype), dtype);
  return DequantizedProduct::apply(x, at::TensorList(tensors), layout, static_cast<std::int64_t>(dtype));
}

torch::Tensor weightProduct(const torch::Tensor& x, const std::vector<torch::Tensor>& weights, torch::ScalarType dtype) {
  if (!torch::GradMode::is_enabled()) return product(x, weights.size() == 1 ? weights[0] : torch::cat(weights), dtype);
  return WeightProduct::apply(x, at::TensorList(weights), static_cast<std::int64_t>(dtype));
}

namespace {

// x @ cat(weights)^T (+ cat(biases)): several projections of one input in a single GEMM; LoRA
// terms are added per part.
torch::Tensor fusedProjection(const torch::Tensor& x, std::vector<Projection> parts) {
  std::vector<torch::Tensor> biases;
  std::vector<const QuantizedWeight*> codes;
  bool lora = false;
  std::size_t quantized = 0;
  for (const auto& p : parts) {
    if (p->bias.defined()) biases.push_back(p->bias);
    lora = lora || p->hasLora();
    quantized += p->quantized() ? 1 : 0;
    codes.push_back(&p->quantizedWeight());
  }
  const auto dtype = parts.front()->compute_dtype;
  std::vector<torch::Tensor> weights;
  if (quantized != parts.size())
    for (const auto& p : parts) weights.push_back(p->effectiveWeight());
  // A QLoRA base: Note [quantized products keep no dequantized copies].
  TORCH_CHECK(quantized == 0 || quantized == parts.size(), "fusedProjection: quantized and float parts mixed (applyTransfer quantizes every projection)");
  auto y = quantized > 0 ? dequantizedProduct(x, codes, dtype) : weightProduct(x, weights, dtype);
  const std::size_t n_parts = parts.size();
  if (!biases.empty()) {
    TORCH_CHECK(biases.size() == n_parts, "fusedProjection: all or none of the parts need a bias");
    y = y + torch::cat(biases).to(dtype);
  }
  if (!lora) return y;
  std::vector<torch::Tensor> pieces;
  std::int64_t at = 0;
  for (auto& p : parts) {
    auto piece = y.narrow(-1, at, p->out_features);
    pieces.push_back(p->hasLora() ? piece + p->loraDelta(x) : piece);
    at += p->out_features;
  }
  return torch::cat(pieces, -1);
}

// train.recompute: a block whose forward keeps only its input (and the dropout generator's state);
// backward runs the block again with gradients and differentiates that. The block's trainable
// parameters are inputs too, so that their gradients flow even when x needs none (the first block
// under frozen embeddings), and autograd accumulates them as usual.
struct RecomputedBlock : public torch::autograd::Function<RecomputedBlock> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& mask, BlockImpl* block,
                               at::TensorList params) {
    at::Generator gen = at::globalContext().defaultGenerator(x.device());  // where dropout draws
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      ctx->saved_data["rng"] = gen.get_state();
    }
    ctx->saved_data["block"] = reinterpret_cast<std::int64_t>(block);
    ctx->saved_data["params"] = static_cast<std::int64_t>(params.size());
    ctx->save_for_backward({x, cos, sin, mask});
    torch::NoGradGuard no_grad;
    return block->forward(x, cos, sin, mask);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    auto* block = reinterpret_cast<BlockImpl*>(ctx->saved_data["block"].toInt());
    const auto x = saved[0].detach().requires_grad_(saved[0].requires_grad());
    torch::Tensor y;
    {
      // The forward's dropout draws again, and the generator left where backward found it.
      at::Generator gen = at::globalContext().defaultGenerator(saved[0].device());
      at::Tensor now;
      {
        std::lock_guard<std::mutex> lock(gen.mutex());
        now = gen.get_state();
        gen.set_state(ctx->saved_data["rng"].toTensor());
      }
      torch::AutoGradMode grad(true);
      y = block->forward(x, saved[1], saved[2], saved[3]);
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(now);
    }
    std::vector<torch::Tensor> wrt;
    if (x.requires_grad()) wrt.push_back(x);
    std::vector<torch::Tensor> params;
    for (const auto& p : block->parameters())
      if (p.requires_grad()) params.push_back(p);
    wrt.insert(wrt.end(), params.begin(), params.end());
    const auto grads = torch::autograd::grad({y}, wrt, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                             /*allow_unused=*/true);
    torch::autograd::variable_list out = {x.requires_grad() ? grads[0] : torch::Tensor(), {}, {}, {}, {}};
    out.insert(out.end(), grads.begin() + (x.requires_grad() ? 1 : 0), grads.end());
    return out;
  }
};

// Interleaved-pair rotation: (a, b) -> (a cos - b sin, a sin + b cos) on pairs (2i, 2i+1).
torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // x [B, T, H, D] -> pairs [B, T, H, D/2, 2]; cos/sin [T, D/2] broadcast over B and H, or
  // [B, T, D/2] (packed documents: each row's own positions) broadcast over H.
  const auto sizes = x.sizes();
  auto pairs = x.reshape({sizes[0], sizes[1], sizes[2], sizes[3] / 2, 2});
  auto a = pairs.select(-1, 0), b = pairs.select(-1, 1);
  const auto heads_dim = cos.dim() - 1;  // [T, 1, D/2] or [B, T, 1, D/2]
  auto c = cos.unsqueeze(heads_dim).to(x.scalar_type()), s = sin.unsqueeze(heads_dim).to(x.scalar_type());
  return torch::stack({a * c - b * s, a * s + b * c}, -1).reshape(sizes);
}
}  // namespace

ProjectionImpl::ProjectionImpl(int in, int out, bool with_bias) : in_features(in), out_features(out) {
  // nn::Linear's initialisation (Kaiming-uniform weight, uniform bias); Transformer::initialise
  // or a loaded model overwrites it.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", newParameter({out, in}, [&](torch::Tensor& t) { t.uniform_(-bound, bound); }));
  if (with_bias) bias = register_parameter("bias", newParameter({out}, [&](torch::Tensor& t) { t.uniform_(-bound, bound); }));
}

EmbeddingImpl::EmbeddingImpl(int rows, int dim) {
  weight = register_parameter("weight", newParameter({rows, dim}, [](torch::Tensor& t) { t.normal_(); }));
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }

torch::Tensor ProjectionImpl::effectiveWeight() const { return quantized() ? quantized_.dequantize() : weight; }

torch::Tensor ProjectionImpl::loraDelta(const torch::Tensor& x) {
  if (!hasLora()) return {};
  auto in = lora_dropout > 0 && is_training() ? torch::dropout(x, lora_dropout, /*train=*/true) : x;
  return product(product(in, lora_A, compute_dtype), lora_B, compute_dtype) * lora_scale;
}

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  // fp32: autograd saves the parameter itself; bf16: the cast would be a copy (Note [products that keep no weight copies]).
  // QLoRA: Note [quantized products keep no dequantized copies].
  auto y = quantized()                      ? dequantizedProduct(x, {&quantized_}, compute_dtype)
           : compute_dtype == torch::kFloat ? product(x, weight, compute_dtype)
                                            : weightProduct(x, {weight}, compute_dtype);
  if (bias.defined()) y = y + bias.to(compute_dtype);
  return hasLora() ? y + loraDelta(x) : y;
}

void ProjectionImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
  if (quantized_.codes.defined()) quantized_.codes = quantized_.codes.to(device, non_blocking);
  if (quantized_.scales.defined()) quantized_.scales = quantized_.scales.to(device, non_blocking);
}

void ProjectionImpl::addLora(int rank, double alpha, double dropout, at::Generator& gen) {
  // A as nn.Linear initialises (PEFT does the same), B zero: the adapted model starts as the base.
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
  lora_A = register_parameter("lora_A", torch::empty({rank, in_features}).uniform_(-bound, bound, gen));
  lora_B = register_parameter("lora_B", torch::zeros({out_features, rank}));
  lora_scale = alpha / rank;
  lora_dropout = dropout;
}

void ProjectionImpl::quantize(QuantKind kind) {
  if (kind == QuantKind::None || quantized()) return;
  quantized_ = graft::quantize(weight.detach(), kind);
  parameters_.erase("weight");  // the frozen weight now lives in quantized_ only
  weight = torch::Tensor();
}

void ProjectionImpl::dequantizeBase() {
  if (!quantized()) return;
  weight = register_parameter("weight", quantized_.dequantize(), /*requires_grad=*/false);
  quantized_ = QuantizedWeight();
}

void ProjectionImpl::mergeLora() {
  if (!hasLora()) return;
  TORCH_CHECK(!quantized(), "mergeLora: dequantize the base first");
  torch::NoGradGuard no_grad;
  weight.add_(torch::matmul(lora_B, lora_A) * lora_scale);
  parameters_.erase("lora_A");
  parameters_.erase("lora_B");
  lora_A = lora_B = torch::Tensor();
}

NormImpl::NormImpl(const ModelConfig& c) : eps_(c.norm_eps), layer_norm_(c.isGpt2()) {
  weight = register_parameter("weight", newParameter({c.dim}, [](torch::Tensor& t) { t.fill_(1.0); }));
  if (layer_norm_) bias = register_parameter("bias", newParameter({c.dim}, [](torch::Tensor& t) { t.zero_(); }));
}

torch::Tensor NormImpl::forward(const torch::Tensor& x) {
  if (layer_norm_) return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps_);
  return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps_) * weight;
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads_(c.n_heads), n_kv_heads_(c.n_kv_heads), head_dim_(c.headDim()), window_(c.sliding_window) {
  const int kv_dim = c.n_kv_heads * c.headDim();
  const bool qkv_bias = c.isGpt2() || c.qkv_bias;
  wq = register_module("wq", linear(c.dim, c.dim, qkv_bias));
  wk = register_module("wk", linear(c.dim, kv_dim, qkv_bias));
  wv = register_module("wv", linear(c.dim, kv_dim, qkv_bias));
  wo = register_module("wo", linear(c.dim, c.dim, c.isGpt2()));
}

// Note [causal attention in blocks]: under the plain causal mask, query i reads keys 0..i only, so
// the scores above the diagonal are computed only to be masked to -inf and multiplied by 0. In
// blocks of kCausalBlock queries, block j reads the keys up to its last query: (n + 1) / 2n of the
// T x T scores for n blocks (62.5% at T = 256), fewer bytes through softmax and its backward, and
// smaller tensors saved for backward. Each query row gets the same keys, the same mask values and
// the same softmax as in one piece; only the sums run over shorter rows (the masked terms are
// exact zeros), so results agree to float rounding. float32 only, on the CPU and on CUDA (bf16
// on CUDA takes the fused kernel, bf16 on the CPU the one-piece path).
namespace {
constexpr std::int64_t kCausalBlock = 64;

torch::Tensor causalBlocks(const torch::Tensor& q, const torch::Tensor& keys_t, const torch::Tensor& v,
                           const torch::Tensor& mask, double scale) {
  const std::int64_t T = q.size(1);
  std::vector<torch::Tensor> outs;
  for (std::int64_t first = 0; first < T; first += kCausalBlock) {
    const std::int64_t n = std::min(kCausalBlock, T - first), seen = first + n;  // keys 0 .. seen - 1
    auto scores = torch::baddbmm(mask.narrow(0, first, n).narrow(1, 0, seen), q.narrow(1, first, n),
                                 keys_t.narrow(2, 0, seen), /*beta=*/1.0, /*alpha=*/scale);
    outs.push_back(torch::bmm(torch::softmax(scores, -1), v.narrow(1, 0, seen)));
  }
  return torch::cat(outs, 1);
}
}  // namespace

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                     const torch::Tensor& mask, KVSlot* cache, std::int64_t pos) {
  const auto B = x.size(0), T = x.size(1);
  // q, k and v from one matmul against the concatenated weights (fewer, larger GEMMs).
  const int64_t q_dim = n_heads_ * head_dim_, kv_dim = n_kv_heads_ * head_dim_;
  auto qkv = fusedProjection(x, {wq, wk, wv});
  auto q = qkv.narrow(-1, 0, q_dim).view({B, T, n_heads_, head_dim_});
  auto k = qkv.narrow(-1, q_dim, kv_dim).view({B, T, n_kv_heads_, head_dim_});
  auto v = qkv.narrow(-1, q_dim + kv_dim, kv_dim).view({B, T, n_kv_heads_, head_dim_});
  if (cos.defined()) {
    q = rotate(q, cos, sin);
    k = rotate(k, cos, sin);
  }
  if (cache && cache->k.size(0) != B) {  // a prefix shared by the B rows: read, never written
    k = torch::cat({cache->k.narrow(1, 0, pos).expand({B, pos, n_kv_heads_, head_dim_}), k}, 1);
    v = torch::cat({cache->v.narrow(1, 0, pos).expand({B, pos, n_kv_heads_, head_dim_}), v}, 1);
  } else if (cache) {
    cache->k.narrow(1, pos, T).copy_(k);
    cache->v.narrow(1, pos, T).copy_(v);
    // One new position attends to the window before it; longer chunks use the mask instead.
    const std::int64_t first = (window_ > 0 && T == 1 && !mask.defined()) ? std::max<std::int64_t>(0, pos + 1 - window_) : 0;
    k = cache->k.narrow(1, first, pos + T - first);
    v = cache->v.narrow(1, first, pos + T - first);
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
  const auto dtype = q.scalar_type();
  if (k.scalar_type() != dtype) k = k.to(dtype), v = v.to(dtype);  // a float32 KV cache under bf16
  if (compat::kFusedAttention && q.is_cuda() && dtype != torch::kFloat) {
    // One kernel (flash attention where it applies) for bf16. float32 keeps the portable path
    // below: it agrees with the CPU to rounding, and its backward is deterministic (exact resumes).
    // The mask is the plain causal one exactly when there is no cache, as many keys as queries and
    // no window cutting in (TransformerImpl::causalMask).
    const bool causal = mask.defined() && mask.dim() == 2 && !cache && S == T && (window_ == 0 || T <= window_);
    const auto out = compat::fusedAttention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            mask.defined() && mask.dim() == 3 ? mask.unsqueeze(1) : mask, causal);
    return wo(out.transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
  auto keys_t = heads(k, S).transpose(1, 2);
  if (dtype == torch::kFloat && mask.defined() && mask.dim() == 2 && !cache && S == T && (window_ == 0 || T <= window_) &&
      T >= 2 * kCausalBlock) {
    const auto out = causalBlocks(heads(q, T), keys_t, heads(v, S), mask, scale);
    return wo(out.view({B, n_heads_, T, head_dim_}).transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));
  }
  torch::Tensor scores;
  if (dtype == torch::kFloat && mask.defined() && mask.dim() == 2) {  // one fused call: mask + scale * q k^T (0 on and below the diagonal, -inf above)
    scores = torch::baddbmm(mask, heads(q, T), keys_t, /*beta=*/1.0, /*alpha=*/scale);
  } else {  // bf16 (Note [mixed precision]): the product in q's dtype, the softmax on float32 scores
    scores = torch::bmm(heads(q, T), keys_t).to(torch::kFloat) * scale;
    if (mask.defined() && mask.dim() == 3)  // one mask per row (packed documents), the same for every head
      scores = scores.view({B, n_heads_, T, S}).add_(mask.unsqueeze(1)).view({B * n_heads_, T, S});
    else if (mask.defined())
      scores.add_(mask);
  }
  auto out = torch::bmm(torch::softmax(scores, -1).to(dtype), heads(v, S));  // [B * H, T, D]
  return wo(out.view({B, n_heads_, T, head_dim_}).transpose(1, 2).reshape({B, T, n_heads_ * head_dim_}));
}

FeedForwardImpl::FeedForwardImpl(const ModelConfig& c) {
  const bool bias = c.isGpt2();
  w1 = register_module("w1", linear(c.dim, c.hidden_dim, bias));
  w2 = register_module("w2", linear(c.hidden_dim, c.dim, bias));
  if (!c.isGpt2()) w3 = register_module("w3", linear(c.dim, c.hidden_dim, false));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& x) {
  if (!w3) return w2(torch::gelu(w1(x), "tanh"));  // GPT-2's "gelu_new"
  // Gate and up projections from one matmul against the concatenated weights.
  auto both = fusedProjection(x, {w1, w3});
  const auto hidden = w1->out_features;
  return w2(torch::silu(both.narrow(-1, 0, hidden)) * both.narrow(-1, hidden, hidden));
}

BlockImpl::BlockImpl(const ModelConfig& c) {
  attention_norm = register_module("attention_norm", Norm(c));
  attention = register_module("attention", Attention(c));
  ffn_norm = register_module("ffn_norm", Norm(c));
  feed_forward = register_module("feed_forward", FeedForward(c));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                 const torch::Tensor& mask, KVSlot* cache, std::int64_t pos) {
  auto h = x + attention->forward(attention_norm(x), cos, sin, mask, cache, pos);
  return h + feed_forward(ffn_norm(h));
}

TransformerImpl::TransformerImpl(const ModelConfig& c) : config_(c) {
  c.validate("model");
  tok_embeddings = register_module("tok_embeddings", Embedding(c.vocab_size, c.dim));
  if (c.isGpt2()) pos_embeddings = register_module("pos_embeddings", Embedding(c.seq_len, c.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.n_layers; ++i) layers->push_back(Block(c));
  norm = register_module("norm", Norm(c));
  if (!c.tied) output = register_module("output", linear(c.dim, c.vocab_size, false));
  if (c.num_classes > 0) head = register_module("head", linear(c.dim, c.num_classes, false));
  if (c.isGpt2()) return;
  // Rotary tables in float64 then float32, angle = pos * theta^(-2i/D), as llama2.c's run.c.
  const int half = c.headDim() / 2;
  auto i = torch::arange(half, torch::kFloat64);
  auto freq = torch::pow(c.rope_theta, -2.0 * i / c.headDim()).to(torch::kFloat32);
  auto pos = torch::arange(c.seq_len, torch::kFloat32);
  auto angle = torch::outer(pos, freq);
  rope_cos_ = torch::cos(angle);
  rope_sin_ = torch::sin(angle);
}

torch::Tensor TransformerImpl::causalMask(std::int64_t T) {
  if (!causal_mask_.defined() || causal_mask_.size(0) != T || causal_mask_.device() != device()) {
    const float inf = std::numeric_limits<float>::infinity();
    const auto on = torch::TensorOptions(torch::kFloat32).device(device());
    causal_mask_ = torch::full({T, T}, -inf, on).triu(1);
    if (config_.sliding_window > 0 && T > config_.sliding_window)  // nor further back than the window
      causal_mask_ += torch::full({T, T}, -inf, on).tril(-config_.sliding_window);
  }
  return causal_mask_;
}

// Note [packed documents]: a row of several documents laid back to back attends as if each ran
// alone: a query sees the keys of its own document up to itself (and the soft prompt, which every
// document reads as its own start), at positions that restart at 0 with each document, so rotary
// angles and learned positions are those of the document alone. A document starts where its
// position is 0; padding after the last document is a document of its own that nothing reads.
torch::Tensor TransformerImpl::documentMask(const torch::Tensor& positions, std::int64_t prompt) const {
  // Built to stay small at long contexts: one bool [B, T, T] and the float mask, nothing wider
  // (B = 8, T = 4096: 128 + 512 MiB), once per forward and shared by every layer.
  const auto B = positions.size(0), T = positions.size(1) + prompt;
  const auto ints = positions.options();
  const int window = config_.sliding_window;
  auto document = positions.eq(0).cumsum(1);  // [B, T]: which document each token belongs to
  if (prompt > 0) document = torch::cat({torch::full({B, prompt}, -1, ints), document}, 1);  // the prompt: -1
  auto seen = document.unsqueeze(2).eq(document.unsqueeze(1));  // [B, T, T]: the same document
  // Within a document, positions differ as indices do: causality and the window by index.
  const auto index = torch::arange(T, ints);
  auto causal = index.unsqueeze(0).le(index.unsqueeze(1));  // [T, T]: key <= query
  if (window > 0 && T > window) causal.logical_and_((index.unsqueeze(1) - index.unsqueeze(0)).lt(window));
  seen.logical_and_(causal);
  if (prompt > 0) {  // every query sees the soft prompt before it, within the window of its own position
    auto at = positions + prompt;
    at = torch::cat({torch::arange(prompt, ints).unsqueeze(0).expand({B, prompt}), at}, 1);  // [B, T]
    auto to_prompt = index.narrow(0, 0, prompt).unsqueeze(0).le(index.unsqueeze(1)).unsqueeze(0).expand({B, T, prompt}).clone();
    if (window > 0) to_prompt.logical_and_((at.unsqueeze(2) - torch::arange(prompt, ints).view({1, 1, prompt})).lt(window));
    seen.narrow(2, 0, prompt).copy_(to_prompt);
  }
  const float inf = std::numeric_limits<float>::infinity();
  return torch::zeros({B, T, T}, ints.dtype(torch::kFloat32)).masked_fill_(seen.logical_not_(), -inf);
}

template <typename F>
torch::Tensor TransformerImpl::gated(const std::string& unit, const torch::Tensor& input, bool reads, F f) {
  if (!gate_) return f();
  gate_->enter(unit);
  auto out = f();
  gate_->leave(unit, input, out, reads);
  return out;
}

torch::Tensor TransformerImpl::embed(const torch::Tensor& ids, std::int64_t pos, bool with_prompt, const torch::Tensor& positions) {
  // Lookups, a concatenation and an addition: backward needs the shapes of these parameters only.
  auto x = gated("tok_embeddings", {}, false, [&] { return tok_embeddings(ids); });
  if (with_prompt && promptLength() > 0)
    x = gated("soft_prompt", x, false, [&] {
      return torch::cat({soft_prompt.unsqueeze(0).expand({ids.size(0), promptLength(), config_.dim}), x}, 1);
    });
  if (pos_embeddings)
    x = gated("pos_embeddings", x, false, [&] {
      return x + (positions.defined() ? torch::embedding(pos_embeddings->weight, positions)
                                      : pos_embeddings->weight.narrow(0, pos, x.size(1)));
    });
  return x;
}

torch::Tensor TransformerImpl::blocks(torch::Tensor x, std::int64_t pos, const torch::Tensor& mask,
                                      std::vector<KVSlot>* cache, const torch::Tensor& positions) {
  torch::Tensor cos, sin;
  if (rope_cos_.defined() && rope_cos_.device() != x.device())  // the model moved since: the tables follow
    rope_cos_ = rope_cos_.to(x.device()), rope_sin_ = rope_sin_.to(x.device());
  if (rope_cos_.defined() && positions.defined())  // [B, T, D/2]: each row's own positions
    cos = torch::embedding(rope_cos_, positions), sin = torch::embedding(rope_sin_, positions);
  else if (rope_cos_.defined())
    cos = rope_cos_.narrow(0, pos, x.size(1)), sin = rope_sin_.narrow(0, pos, x.size(1));
  const bool recompute = recompute_ && !cache && is_training() && torch::GradMode::is_enabled();
  for (std::size_t l = 0; l < layers->size(); ++l) {
    auto* block = layers[l]->as<Block>();
    x = gated("layers." + std::to_string(l), x, true, [&] {
      if (!recompute) return block->forward(x, cos, sin, mask, cache ? &(*cache)[l] : nullptr, pos);
      torch::autograd::variable_list params;
      for (const auto& p : block->parameters())
        if (p.requires_grad()) params.push_back(p);
      return RecomputedBlock::apply(x, cos, sin, mask, block, at::TensorList(params));
    });
  }
  return x;
}

torch::Tensor TransformerImpl::classifierWeight() const {
  return config_.tied ? tok_embeddings->weight : output->effectiveWeight();
}

torch::Tensor TransformerImpl::classify(const torch::Tensor& h) {
  // Logits in float32 whatever the products computed in (Note [mixed precision]).
  if (config_.tied)
    return gated("tok_embeddings", h, true, [&] {
      return (compute_dtype_ == torch::kFloat ? product(h, tok_embeddings->weight, compute_dtype_)
                                              : weightProduct(h, {tok_embeddings->weight}, compute_dtype_))
          .to(torch::kFloat);
    });
  return gated("output", h, true, [&] { return output(h).to(torch::kFloat); });
}

void TransformerImpl::setComputeDtype(torch::ScalarType dtype) {
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16, "setComputeDtype: float32 or bfloat16");
  compute_dtype_ = dtype;
  for (auto& [name, p] : projections()) p->compute_dtype = dtype;
  if (head) head->compute_dtype = dtype;
}

torch::Tensor TransformerImpl::finalNorm(const torch::Tensor& x) {
  return gated("norm", x, true, [&] { return norm(x); });
}

torch::Tensor TransformerImpl::classifyPooled(const torch::Tensor& features) {
  TORCH_CHECK(head, "classifyPooled: the model has no classification head");
  const auto x = features.to(device(), /*non_blocking=*/true);
  return gated("head", x, true, [&] { return head(x).to(torch::kFloat); });
}

std::vector<std::pair<std::string, Projection>> TransformerImpl::projections() {
  std::vector<std::pair<std::string, Projection>> out;
  for (std::size_t i = 0; i < layers->size(); ++i) {
    auto block = layers[i]->as<Block>();
    const std::string at = "layers." + std::to_string(i) + ".";
    auto& a = block->attention;
    auto& f = block->feed_forward;
    for (auto& [name, p] : std::vector<std::pair<std::string, Projection>>{
             {"attention.wq", a->wq}, {"attention.wk", a->wk}, {"attention.wv", a->wv}, {"attention.wo", a->wo},
             {"feed_forward.w1", f->w1}, {"feed_forward.w2", f->w2}, {"feed_forward.w3", f->w3}})
      if (p) out.emplace_back(at + name, p);
  }
  if (output) out.emplace_back("output", output);
  return out;
}

torch::Tensor TransformerImpl::hidden(const torch::Tensor& ids, const torch::Tensor& positions_anywhere) {
  const auto n = promptLength(), T = ids.size(1) + n;
  if (T > config_.seq_len)
    throw InputError("sequence of " + std::to_string(ids.size(1)) + " tokens" +
                     (n ? " after a soft prompt of " + std::to_string(n) : std::string()) + " exceeds the model's seq_len " +
                     std::to_string(config_.seq_len));
  // Inputs follow the model: batches are made in host memory and copied to its device here.
  const auto on_device = ids.to(device(), /*non_blocking=*/true);
  torch::Tensor x;
  if (positions_anywhere.defined()) {
    TORCH_CHECK(positions_anywhere.sizes() == ids.sizes(), "hidden: positions must have the shape of ids");
    const auto positions = positions_anywhere.to(device(), /*non_blocking=*/true);
    auto at = positions;  // the soft prompt at [0, n), every document after it
    if (n) at = torch::cat({torch::arange(n, positions.options()).unsqueeze(0).expand({ids.size(0), n}), positions + n}, 1);
    auto mask = documentMask(positions, n);
    // The fused CUDA kernel reads the mask in the compute dtype: converted once here, not per layer
    // (each layer's backward would keep its own copy).
    if (compat::kFusedAttention && mask.is_cuda() && compute_dtype_ != torch::kFloat) mask = mask.to(compute_dtype_);
    x = blocks(embed(on_device, 0, /*with_prompt=*/true, at), 0, mask, nullptr, at);
  } else {
    x = blocks(embed(on_device, 0, /*with_prompt=*/true), 0, causalMask(T), nullptr);
  }
  return n ? finalNorm(x).narrow(1, n, T - n) : finalNorm(x);  // the prompt's positions predict nothing
}

void TransformerImpl::untieClassifier() {
  if (!config_.tied) return;
  output = register_module("output", linear(config_.dim, config_.vocab_size, false));
  output->compute_dtype = compute_dtype_;
  torch::NoGradGuard no_grad;
  output->weight.copy_(tok_embeddings->weight);
  config_.tied = false;
}

void TransformerImpl::addSoftPrompt(int tokens, std::uint64_t seed) {
  TORCH_CHECK(tokens > 0 && !soft_prompt.defined(), "addSoftPrompt: bad length or already present");
  // Initialised from the embeddings of random vocabulary tokens (Lester et al. 2021): it starts
  // inside the space the model reads.
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed ^ 0x50f7ULL);
  auto ids = torch::randint(config_.vocab_size, {tokens}, gen, torch::kInt64);
  soft_prompt = register_parameter("soft_prompt", tok_embeddings->weight.index_select(0, ids).clone());
}

torch::Tensor TransformerImpl::forward(const torch::Tensor& ids, const torch::Tensor& positions) {
  return classify(hidden(ids, positions));
}

torch::Tensor TransformerImpl::pool(const torch::Tensor& h, const torch::Tensor& lengths_anywhere) const {
  const auto lengths = lengths_anywhere.to(h.device(), /*non_blocking=*/true);
  if (config_.pooling == "mean") {
    auto positions = torch::arange(h.size(1), h.options().dtype(torch::kInt64)).unsqueeze(0);  // [1, T]
    auto keep = positions.lt(lengths.unsqueeze(1)).to(h.scalar_type()).unsqueeze(-1);  // [B, T, 1]
    return (h * keep).sum(1) / lengths.to(h.scalar_type()).unsqueeze(1);
  }
  // The causal model has read the whole text at its last token (right padding comes after it).
  auto last = (lengths - 1).view({-1, 1, 1}).expand({h.size(0), 1, h.size(2)});
  return h.gather(1, last).squeeze(1);
}

torch::Tensor TransformerImpl::classifySequences(const torch::Tensor& ids, const torch::Tensor& lengths) {
  TORCH_CHECK(head, "classifySequences: the model has no classification head");
  const auto h = hidden(ids);
  return classifyPooled(pool(h, lengths));
}

void TransformerImpl::addClassifierHead(int num_classes, const std::string& pooling, std::uint64_t seed,
                                        const std::vector<std::string>& label_names) {
  TORCH_CHECK(!head, "addClassifierHead: the model already has a head");
  ModelConfig c = config_;
  c.num_classes = num_classes;
  c.pooling = pooling;
  c.label_names = label_names;
  c.validate("classification head");
  config_ = c;
  head = register_module("head", linear(c.dim, num_classes, false));
  head->compute_dtype = compute_dtype_;
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed ^ 0x4eadULL);
  head->weight.normal_(0.0, 0.02, gen);
}

torch::Tensor TransformerImpl::forwardStep(std::int64_t token, std::int64_t pos, std::vector<KVSlot>& cache) {
  const std::int64_t n = promptLength();
  if (pos < 0 || pos + n >= config_.seq_len)
    throw InputError("position " + std::to_string(pos) + " is outside the model's context of " +
                     std::to_string(config_.seq_len - n));
  if (cache.empty()) {
    const auto shape = std::vector<std::int64_t>{1, config_.seq_len, config_.n_kv_heads, config_.headDim()};
    const auto on = torch::TensorOptions(torch::kFloat32).device(device());
    for (int l = 0; l < config_.n_layers; ++l) cache.push_back({torch::zeros(shape, on), torch::zeros(shape, on)});
    if (n)  // the soft prompt fills cache positions [0, n) once
      blocks(embed(torch::empty({1, 0}, on.dtype(torch::kInt64)), 0, /*with_prompt=*/true), 0, causalMask(n), &cache);
  }
  const std::int64_t at = pos + n;
  const auto id = torch::full({1, 1}, token, torch::TensorOptions(torch::kInt64).device(device()));
  auto x = blocks(embed(id, at, false), at, /*mask=*/torch::Tensor(), &cache);
  return classify(finalNorm(x)).view({-1});
}

torch::Tensor TransformerImpl::continuationLogProbs(const torch::Tensor& prefix_anywhere, const torch::Tensor& continuations_anywhere) {
  const auto prefix = prefix_anywhere.to(device()), continuations = continuations_anywhere.to(device());
  const std::int64_t n = promptLength(), S = prefix.size(1) + n, L = continuations.size(0), C = continuations.size(1);
  TORCH_CHECK(prefix.dim() == 2 && prefix.size(0) == 1 && prefix.size(1) > 0 && C > 0, "continuationLogProbs: bad shapes");
  if (S + C > config_.seq_len)
    throw InputError("prefix of " + std::to_string(S) + " and continuation of " + std::to_string(C) +
                     " tokens exceed the model's seq_len " + std::to_string(config_.seq_len));
  // The prefix, once, filling the caches (the soft prompt first, as in hidden()).
  std::vector<KVSlot> cache;
  const auto shape = std::vector<std::int64_t>{1, S + C, config_.n_kv_heads, config_.headDim()};
  const auto on = torch::TensorOptions(torch::kFloat32).device(device());
  for (int l = 0; l < config_.n_layers; ++l) cache.push_back({torch::zeros(shape, on), torch::zeros(shape, on)});
  auto x = blocks(embed(prefix, 0, /*with_prompt=*/true), 0, causalMask(S), &cache);
  const auto last = finalNorm(x.narrow(1, S - 1, 1));  // predicts each row's first token
  // The continuations at positions [S, S + C): every prefix key visible, causal among themselves.
  const float inf = std::numeric_limits<float>::infinity();
  const auto ints = on.dtype(torch::kInt64);
  auto query = torch::arange(S, S + C, ints).unsqueeze(1), key = torch::arange(S + C, ints).unsqueeze(0);
  auto blocked = key.gt(query);
  if (config_.sliding_window > 0) blocked = blocked.logical_or(query - key >= config_.sliding_window);
  const auto mask = torch::zeros({C, S + C}, on).masked_fill(blocked, -inf);
  auto y = blocks(embed(continuations, S, false), S, mask, &cache);
  auto h = torch::cat({last.expand({L, 1, config_.dim}), finalNorm(y).narrow(1, 0, C - 1)}, 1);  // [L, C, dim]
  return torch::log_softmax(classify(h), -1).gather(2, continuations.unsqueeze(2)).squeeze(2);
}

torch::Tensor TransformerImpl::loss(const torch::Tensor& inputs, const torch::Tensor& targets) {
  auto logits = forward(inputs);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              targets.to(logits.device(), /*non_blocking=*/true).reshape({-1}));
}

void TransformerImpl::initialise(std::uint64_t seed) {
  for (auto& item : named_parameters()) initialiseParameter(item.key(), item.value(), seed, config_.n_layers);
}

void initialiseParameter(const std::string& name, torch::Tensor p, std::uint64_t seed, int n_layers) {
  torch::NoGradGuard no_grad;
  if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
    p.zero_();
  } else if (name.find("norm") != std::string::npos) {
    p.fill_(1.0);
  } else {
    // One generator per parameter, seeded from its name: any tensor (or a rank's rows of it) is
    // drawn without drawing the ones before it.
    std::uint64_t h = 1469598103934665603ULL;  // FNV-1a
    for (const unsigned char ch : name) h = (h ^ ch) * 1099511628211ULL;
    auto gen = at::detail::createCPUGenerator(seed ^ h);
    const bool residual_out = name.find("wo.weight") != std::string::npos || name.find("w2.weight") != std::string::npos;
    p.normal_(0.0, residual_out ? 0.02 / std::sqrt(2.0 * n_layers) : 0.02, gen);
  }
}

}  // namespace graft
