// The shape of a Llama-style model. Plain data, no torch, so configs and CLIs can use it cheaply.
#pragma once

#include <string>

namespace graft {

struct LlamaConfig {
  int dim = 64;
  int hidden_dim = 172;
  int n_layers = 2;
  int n_heads = 4;
  int n_kv_heads = 4;
  int vocab_size = 259;
  int seq_len = 256;       // longest context the rotary tables cover
  bool tied = true;        // classifier shares tok_embeddings.weight
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;

  int headDim() const { return dim / n_heads; }
  // Throws InputError naming the field when the shape is inconsistent.
  void validate(const std::string& where) const;
  std::string describe() const;
  bool operator==(const LlamaConfig& o) const;
};

}  // namespace graft
