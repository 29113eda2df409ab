#include "model/model_config.h"

#include "util/error.h"

namespace graft {

void ModelConfig::validate(const std::string& where) const {
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) throw InputError(where + ": " + what + " (" + describe() + ")");
  };
  need(arch == "llama" || arch == "gpt2", "architecture '" + arch + "' is not llama or gpt2");
  need(dim > 0 && hidden_dim > 0 && n_layers > 0 && n_heads > 0 && n_kv_heads > 0, "sizes must be positive");
  need(vocab_size > 3, "vocab_size must exceed 3");
  need(seq_len > 0, "seq_len must be positive");
  need(dim % n_heads == 0, "dim must be divisible by n_heads");
  need(isGpt2() || headDim() % 2 == 0, "head size (dim / n_heads) must be even for rotary embeddings");
  need(n_heads % n_kv_heads == 0, "n_heads must be a multiple of n_kv_heads");
  need(sliding_window >= 0, "sliding_window must not be negative");
  need(norm_eps > 0 && rope_theta > 0, "norm_eps and rope_theta must be positive");
  need(num_classes >= 0 && num_classes <= (1 << 20), "num_classes out of range");
  need(pooling == "last" || pooling == "mean", "pooling '" + pooling + "' is not last or mean");
  need(label_names.empty() || static_cast<int>(label_names.size()) == num_classes,
       std::to_string(label_names.size()) + " label names for a " + std::to_string(num_classes) + "-class head");
}

std::string ModelConfig::describe() const {
  std::string s = arch + ": dim " + std::to_string(dim) + ", hidden " + std::to_string(hidden_dim) + ", layers " +
                  std::to_string(n_layers) + ", heads " + std::to_string(n_heads) + "/" + std::to_string(n_kv_heads) +
                  " kv, vocab " + std::to_string(vocab_size) + ", seq_len " + std::to_string(seq_len) +
                  (tied ? ", tied" : ", untied");
  if (qkv_bias) s += ", qkv bias";
  if (sliding_window > 0) s += ", window " + std::to_string(sliding_window);
  if (num_classes > 0) s += ", " + std::to_string(num_classes) + "-class head on " + pooling + " token" + (pooling == "mean" ? "s" : "");
  return s;
}

bool ModelConfig::operator==(const ModelConfig& o) const {
  return arch == o.arch && dim == o.dim && hidden_dim == o.hidden_dim && n_layers == o.n_layers &&
         n_heads == o.n_heads && n_kv_heads == o.n_kv_heads && vocab_size == o.vocab_size && tied == o.tied &&
         qkv_bias == o.qkv_bias && sliding_window == o.sliding_window && num_classes == o.num_classes &&
         (num_classes == 0 || pooling == o.pooling);
}

}  // namespace graft
