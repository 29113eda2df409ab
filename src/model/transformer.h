// A decoder-only transformer of either family in ModelConfig (llama: RMSNorm, rotary embeddings in
// interleaved pairs as llama2.c, SwiGLU; gpt2: LayerNorm, learned positions, GELU), with
// grouped-query attention and a tied or untied classifier.
//
// Parameter names are the checkpoint names, one to one (Meta/llama2.c naming for both families;
// convert/hf_model.cc maps Hugging Face names onto them):
//   tok_embeddings.weight                      [vocab, dim]
//   pos_embeddings.weight                      [seq_len, dim]   (gpt2)
//   layers.<i>.attention_norm.{weight,bias}    [dim]            (bias: gpt2)
//   layers.<i>.attention.{wq,wk,wv,wo}.weight  [out, in]
//   layers.<i>.attention.{wq,wk,wv}.bias       [out]            (gpt2, or qkv_bias)
//   layers.<i>.attention.wo.bias               [dim]            (gpt2)
//   layers.<i>.ffn_norm.{weight,bias}          [dim]
//   layers.<i>.feed_forward.{w1,w2,w3}.weight  [out, in]  (llama: w1 gate, w2 down, w3 up;
//                                                          gpt2: w1 up, w2 down, no w3; biases too)
//   norm.{weight,bias}                         [dim]
//   output.weight                              [vocab, dim]  (only when untied)
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/quant.h"

namespace graft {

// Called around every use of a unit's parameters (a unit is what parallel/shard_plan.h's unitOf
// names: "tok_embeddings", "layers.7", "norm", "output", "head", ...). dist.shard = parameters
// (ZeRO-3) gathers a unit's rows from every rank in enter() and frees them again in leave(); the
// model does not know who holds what.
class UnitGate {
 public:
  virtual ~UnitGate() = default;
  virtual void enter(const std::string& unit) = 0;
  // `input` (may be undefined) went in, `output` came out. `backward_reads_params`: the unit's
  // backward reads the parameters' values (matmuls, norms), not only their shapes (lookups).
  virtual void leave(const std::string& unit, const torch::Tensor& input, const torch::Tensor& output,
                     bool backward_reads_params) = 0;
};

// Keys and values of one layer for incremental decoding: [1, seq_len, n_kv_heads, head_dim]. When
// the batch attending to it has more than one row, the first `pos` positions are a prefix every
// row shares, read and never written (continuationLogProbs).
struct KVSlot {
  torch::Tensor k, v;
};

// y = x W^T (+ b), the linear layer of every projection, with the two changes parameter-efficient
// transfer makes to a frozen weight:
//   LoRA:   y += (alpha / r) * dropout(x) A^T B^T with trainable A [r, in] and B [out, r] (B starts
//           at zero, so the adapted model starts as the base). Names: lora_A, lora_B (PEFT's shapes).
//   QLoRA:  W is held quantized (int8 or NF4, model/quant.h) instead of as a parameter, and is
//           dequantized on the fly; the "weight" parameter disappears.
class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int in, int out, bool bias);
  torch::Tensor forward(const torch::Tensor& x);
  // W as float32: the parameter, or the dequantized codes.
  torch::Tensor effectiveWeight() const;
  // The LoRA term alone (undefined without an adapter).
  torch::Tensor loraDelta(const torch::Tensor& x);
  void addLora(int rank, double alpha, double dropout, at::Generator& gen);
  void quantize(QuantKind kind);
  // W += (alpha / r) B A, then the adapter is removed (export of a merged model).
  void mergeLora();
  // A quantized W becomes a float32 parameter again (the dequantized values).
  void dequantizeBase();
  bool hasLora() const { return lora_A.defined(); }
  bool quantized() const { return quantized_.kind != QuantKind::None; }
  const QuantizedWeight& quantizedWeight() const { return quantized_; }
  // The quantized codes are no parameters: they move with the module too.
  using torch::nn::Module::to;
  void to(torch::Device device, bool non_blocking = false) override;

  torch::Tensor weight, bias, lora_A, lora_B;
  double lora_scale = 0, lora_dropout = 0;
  int in_features, out_features;
  // What the product computes in (train.precision): float32, or bfloat16 with the weight cast on
  // the fly from its float32 master (then y is bfloat16; gradients reach the master as float32).
  torch::ScalarType compute_dtype = torch::kFloat;

 private:
  QuantizedWeight quantized_;
};
TORCH_MODULE(Projection);

// A lookup table [rows, dim] initialised N(0, 1), as torch::nn::Embedding.
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int rows, int dim);
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

// RMSNorm (llama) or LayerNorm with bias (gpt2).
class NormImpl : public torch::nn::Module {
 public:
  NormImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;  // bias: LayerNorm only

 private:
  double eps_;
  bool layer_norm_;
};
TORCH_MODULE(Norm);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& c);
  // x [B, T, dim]; cos/sin [T, head_dim/2] (undefined: no rotary embedding); mask [T, T] additive
  // (0 / -inf). With `cache` (B = 1): the new keys/values are stored at positions [pos, pos + T)
  // and the queries attend to positions [0, pos + T), or the last sliding_window of them; `mask`
  // may then be undefined for T = 1.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVSlot* cache = nullptr, std::int64_t pos = 0);
  Projection wq{nullptr}, wk{nullptr}, wv{nullptr}, wo{nullptr};

 private:
  int n_heads_, n_kv_heads_, head_dim_, window_;
};
TORCH_MODULE(Attention);

class FeedForwardImpl : public torch::nn::Module {
 public:
  explicit FeedForwardImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  Projection w1{nullptr}, w2{nullptr}, w3{nullptr};  // w3: llama only
};
TORCH_MODULE(FeedForward);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, KVSlot* cache = nullptr, std::int64_t pos = 0);
  Norm attention_norm{nullptr}, ffn_norm{nullptr};
  Attention attention{nullptr};
  FeedForward feed_forward{nullptr};
};
TORCH_MODULE(Block);

class TransformerImpl : public torch::nn::Module {
 public:
  explicit TransformerImpl(const ModelConfig& c);
  // ids [B, T] int64 -> logits [B, T, vocab] (float32). T <= config.seq_len. With `positions`
  // [B, T] int64 each row holds documents packed back to back: a token's position in its document,
  // 0 where one starts; attention stays within each document and positions restart with it, so
  // each document's logits are those of the document alone (Note [packed documents]).
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& positions = {});
  // Incremental decoding: the logits [vocab] after token `token` at position `pos`, given that
  // positions [0, pos) were fed before with the same `cache` (empty = fresh, pos must be 0).
  torch::Tensor forwardStep(std::int64_t token, std::int64_t pos, std::vector<KVSlot>& cache);
  // Scoring continuations of one shared prefix (prompt-based transfer): log p of continuations[l][k]
  // after prefix + continuations[l][0..k), as [L, C]. prefix [1, S] (S >= 1) runs once and its
  // keys and values are shared by the L rows (right-padded: a row's padding only affects its own
  // later positions). Equal to log_softmax(forward(prefix | row)) gathered, for S + C x fewer FLOPs.
  torch::Tensor continuationLogProbs(const torch::Tensor& prefix, const torch::Tensor& continuations);
  // Final hidden states (after the last norm) [B, T, dim]; `positions` as in forward().
  torch::Tensor hidden(const torch::Tensor& ids, const torch::Tensor& positions = {});
  // Sequence classification: ids [B, T] right-padded, lengths [B] (tokens per row, >= 1) ->
  // logits [B, num_classes] from the head on the pooled features (pool() of hidden()).
  torch::Tensor classifySequences(const torch::Tensor& ids, const torch::Tensor& lengths);
  // Logits [B, num_classes] of the classification head on pooled features [B, dim].
  torch::Tensor classifyPooled(const torch::Tensor& features);
  // Pooled features [B, dim]: the hidden state of each row's last token, or the mean over its tokens.
  torch::Tensor pool(const torch::Tensor& hidden, const torch::Tensor& lengths) const;
  // Adds a fresh classification head (normal(0, 0.02) from `seed`), for a base model loaded without
  // one; `label_names` (optional) say what its outputs mean.
  void addClassifierHead(int num_classes, const std::string& pooling, std::uint64_t seed,
                         const std::vector<std::string>& label_names = {});
  // Gives a tied model its own classifier `output`, initialised as a copy of the embedding, so the
  // LM head can train alone (feature extraction for language modelling).
  void untieClassifier();
  // Prompt tuning: `tokens` trainable vectors [tokens, dim] placed before every input's embeddings
  // (parameter "soft_prompt"); outputs keep the inputs' positions.
  void addSoftPrompt(int tokens, std::uint64_t seed);
  std::int64_t promptLength() const { return soft_prompt.defined() ? soft_prompt.size(0) : 0; }
  // Mean next-token cross-entropy of inputs[B,T] against targets[B,T] (nats), as a scalar tensor.
  torch::Tensor loss(const torch::Tensor& inputs, const torch::Tensor& targets);
  // Deterministic initialisation from `seed` (normal(0, 0.02), norms at 1, biases 0; output
  // projections scaled by 1/sqrt(2 * n_layers) as in GPT-2).
  void initialise(std::uint64_t seed);
  const ModelConfig& config() const { return config_; }
  torch::Tensor classifierWeight() const;
  // Every use of a unit's parameters goes through `gate` from now on (null: none).
  void setUnitGate(std::shared_ptr<UnitGate> gate) { gate_ = std::move(gate); }
  // train.recompute (activation checkpointing): while training with gradients, each block keeps
  // only its input from forward and runs its forward again in backward (with the same dropout
  // draws), trading one more forward per block for the activations inside it.
  void setRecompute(bool on) { recompute_ = on; }
  // train.precision: matrix products and attention in `dtype` (float32 or bfloat16). Parameters,
  // the residual stream, norms, softmax and logits stay float32 (Note [mixed precision]).
  void setComputeDtype(torch::ScalarType dtype);

  Embedding tok_embeddings{nullptr};
  Embedding pos_embeddings{nullptr};  // gpt2 only
  torch::nn::ModuleList layers{nullptr};
  Norm norm{nullptr};
  Projection output{nullptr};  // null when tied
  Projection head{nullptr};   // sequence-classification head [num_classes, dim], no bias (as transformers' score)
  torch::Tensor soft_prompt;  // prompt tuning: [tokens, dim], undefined otherwise
  // Where the model's parameters are (the embeddings'): transient tensors (masks, positions, KV
  // caches, ids) are made there, inputs are copied there, and the rotary tables follow the model.
  torch::Device device() const { return tok_embeddings->weight.device(); }
  // Every projection with its module path ("layers.0.attention.wq"), for LoRA targeting and QLoRA.
  std::vector<std::pair<std::string, Projection>> projections();

 private:
  // The additive causal mask for T positions (0 where a query may look, -inf elsewhere), kept for
  // the last T seen: a seq_len x seq_len table would be 4 GB for a 32K-context model.
  torch::Tensor causalMask(std::int64_t T);
  // Embeddings of ids [B, T] at positions [pos, pos + T), after the soft prompt (at positions
  // [0, promptLength())) when `with_prompt`: the input of the blocks.
  // `positions` [B, T] (the prompt's included), when defined, replaces [pos, pos + T).
  torch::Tensor embed(const torch::Tensor& ids, std::int64_t pos, bool with_prompt, const torch::Tensor& positions = {});
  // The additive mask [B, prompt + T, prompt + T] of rows of packed documents, from the documents'
  // own positions [B, T], after a soft prompt of `prompt` positions: Note [packed documents].
  torch::Tensor documentMask(const torch::Tensor& positions, std::int64_t prompt) const;
  // x [B, T, dim] at positions [pos, pos + T) through every block: the one path all callers take.
  // `cache` (one slot per layer, or null) holds the keys and values of earlier positions.
  // `positions` [B, T], when defined, gives each row's rotary positions instead of [pos, pos + T).
  torch::Tensor blocks(torch::Tensor x, std::int64_t pos, const torch::Tensor& mask, std::vector<KVSlot>* cache,
                       const torch::Tensor& positions = {});
  torch::Tensor classify(const torch::Tensor& h);  // final hidden states -> logits
  torch::Tensor finalNorm(const torch::Tensor& x);
  // f() between gate_->enter(unit) and gate_->leave(unit, input, f's result, reads).
  template <typename F>
  torch::Tensor gated(const std::string& unit, const torch::Tensor& input, bool reads, F f);

  ModelConfig config_;
  torch::Tensor rope_cos_, rope_sin_;  // [seq_len, head_dim/2] (llama), buffers (not parameters)
  torch::Tensor causal_mask_;
  std::shared_ptr<UnitGate> gate_;
  bool recompute_ = false;
  torch::ScalarType compute_dtype_ = torch::kFloat;  // setComputeDtype
};
TORCH_MODULE(Transformer);

// x @ cat(weights)^T in `dtype` (x [..., in], weights [out_i, in] float32 parameters), keeping no
// copy of the weights for backward: it saves the parameters themselves and makes the concatenation
// and the bf16 cast again in backward (Note [products that keep no weight copies]).
torch::Tensor weightProduct(const torch::Tensor& x, const std::vector<torch::Tensor>& weights, torch::ScalarType dtype);
// x @ cat(dequantize(q) for q in weights)^T in `dtype`, for frozen quantized weights (QLoRA):
// autograd keeps the codes, not a dequantized float32 copy, and dequantizes again in backward
// (Note [quantized products keep no dequantized copies]). The input's gradient only.
torch::Tensor dequantizedProduct(const torch::Tensor& x, const std::vector<const QuantizedWeight*>& weights,
                                 torch::ScalarType dtype);

// Transformer::initialise's value of one parameter, drawn from a generator of its own (seeded
// from `seed` and the name), so that any parameter can be initialised alone.
void initialiseParameter(const std::string& name, torch::Tensor p, std::uint64_t seed, int n_layers);

}  // namespace graft
