// The Hugging Face name map, shared by HF import and export (hf_model.cc) and PEFT adapters
// (peft.cc): which transformers tensor each tensor of graft's model is, and how its values are
// laid out there (Note [HF name map] in hf_names.cc). Internal to convert/.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors.h"
#include "model/transformer.h"

namespace graft::hf {

enum class Layout {
  kSame,      // the same values
  kConv1D,    // GPT-2's Conv1D keeps weights as [in, out]: the transpose (biases as they are)
  kFusedQkv,  // GPT-2's c_attn: q | k | v side by side along out (a Conv1D); this is part `part`
  kRotary,    // q (part 0, n_heads) or k (part 1, n_kv_heads) rows: halves in HF, pairs in graft (Note [rotary layouts])
};
struct HfName {
  const char* graft;  // a tensor outside the blocks ("norm.weight"), or a module in a block ("attention.wq")
  const char* hf;     // the same in transformers, without the model's prefix and "h.<i>." / "layers.<i>."
  Layout layout = Layout::kSame;
  int part = 0;
};
struct Architecture {
  const char* prefix;  // "transformer." or "model."
  const char* blocks;  // "h." or "layers."
  std::vector<HfName> model, block;  // outside the blocks (in file order), and a block's modules (weight, then bias)
};

// The table of the model's architecture (gpt2, or the Llama family).
const Architecture& architectureOf(const ModelConfig& c);
// Heads whose rows a kRotary entry permutes (0 for other layouts).
int headsOf(const ModelConfig& c, const HfName& n);
// The entry of a module path "layers.<i>.<module>"; Error when the module has no HF name.
const HfName& blockEntry(const ModelConfig& c, const std::string& path);
// "h.<i>." or "layers.<i>.".
std::string hfBlock(const Architecture& a, int i);
// graft module path ("layers.3.attention.wq", "output") -> transformers module path.
std::string hfModuleOf(const ModelConfig& c, const std::string& path);
// Which of q, k, v `path` is in gpt2's fused c_attn (0, 1, 2), else -1.
int qkvPart(const ModelConfig& c, const std::string& path);
// Heads whose rows a q/k projection's lora_B permutes (0: not a rotary projection).
int rotaryHeads(const ModelConfig& c, const std::string& path);

// "layers.<i>.<rest>", and the block index of such a path.
std::string layer(int i, const std::string& rest);
int layerOf(const std::string& path);
// The model's parameter `name`; Error when it has none.
torch::Tensor param(Transformer& m, const std::string& name);
// Note [rotary layouts]: q/k rows per head, interleaved pairs (graft) <-> rotated halves (HF).
torch::Tensor toHalves(const torch::Tensor& t, int heads);
torch::Tensor toPairs(const torch::Tensor& t, int heads);
// Tensor `name` of `files` as float32, after checking its shape ("expected" says where the shape
// comes from in the error).
torch::Tensor readChecked(const SafetensorsFolder& files, const std::string& name, const std::vector<std::int64_t>& shape,
                          const char* expected = "expected");

}  // namespace graft::hf
