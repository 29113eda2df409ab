// The shape of a decoder-only transformer. Plain data, no torch, so configs and CLIs can use it
// cheaply. Two families share one implementation (model/transformer.h):
//   llama: RMSNorm, rotary positions, SwiGLU, no biases. Mistral adds a sliding attention window,
//          Qwen2 biases on q/k/v; both are llama with those two fields set.
//   gpt2:  LayerNorm with bias, learned positions, GELU (tanh) MLP, biases on every projection.
#pragma once

#include <string>
#include <vector>

namespace graft {

struct ModelConfig {
  std::string arch = "llama";  // llama | gpt2
  int dim = 64;
  int hidden_dim = 172;
  int n_layers = 2;
  int n_heads = 4;
  int n_kv_heads = 4;
  int vocab_size = 259;
  int seq_len = 256;       // longest context (rotary tables, learned position table)
  bool tied = true;        // classifier shares tok_embeddings.weight
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool qkv_bias = false;   // llama family: biases on q, k and v (Qwen2)
  int sliding_window = 0;  // llama family: attend to at most this many positions (Mistral); 0 = all
  int num_classes = 0;         // > 0: a sequence-classification head `head` [num_classes, dim]
  std::string pooling = "last";  // what the head reads: the last token's hidden state | the mean
  // What the head's outputs mean, when known (num_classes names, in output order). Not part of
  // operator==, so that checkpoints written before names were kept still resume.
  std::vector<std::string> label_names;

  bool isGpt2() const { return arch == "gpt2"; }
  int headDim() const { return dim / n_heads; }
  // Throws InputError naming the field when the shape is inconsistent.
  void validate(const std::string& where) const;
  std::string describe() const;
  bool operator==(const ModelConfig& o) const;
};

}  // namespace graft
