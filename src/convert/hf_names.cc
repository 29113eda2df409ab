#include "convert/hf_names.h"

#include <torch/torch.h>

#include "util/error.h"

namespace graft::hf {

// Tensor `name` of `files` as float32, after checking its shape ("expected" says where the
// shape comes from in the error).
torch::Tensor readChecked(const SafetensorsFolder& files, const std::string& name, const std::vector<std::int64_t>& shape,
                          const char* expected) {
  const StTensorInfo& info = files.info(name);  // throws naming the folder and tensor when absent
  if (info.shape != shape)
    throw InputError(files.fileOf(name) + ": tensor " + name + " has shape " + c10::str(info.shape) + ", " + expected +
                     " " + c10::str(shape));
  std::vector<float> values = files.readFloat32(name);
  return torch::from_blob(values.data(), shape, torch::kFloat32).clone();
}

std::string layer(int i, const std::string& rest) { return "layers." + std::to_string(i) + "." + rest; }

torch::Tensor param(Transformer& m, const std::string& name) {
  auto* p = m->named_parameters().find(name);
  if (!p) throw Error("model has no parameter " + name);
  return *p;
}

// Note [rotary layouts]: rows of a q/k projection, grouped per head, from interleaved pairs
// (graft) to rotated halves (HF) and back. Works on weights [rows, in] and biases [rows].
torch::Tensor toHalves(const torch::Tensor& t, int heads) {
  const auto rows = t.size(0);
  auto w = t.reshape({heads, rows / heads / 2, 2, -1}).transpose(1, 2);
  return t.dim() == 1 ? w.reshape({rows}) : w.reshape({rows, t.size(1)});
}
torch::Tensor toPairs(const torch::Tensor& t, int heads) {
  const auto rows = t.size(0);
  auto w = t.reshape({heads, 2, rows / heads / 2, -1}).transpose(1, 2);
  return t.dim() == 1 ? w.reshape({rows}) : w.reshape({rows, t.size(1)});
}

// Note [HF name map]: one table per architecture names, for each tensor of graft's model, the
// transformers tensor it is and how its values are laid out there. Import (loadHfTensors), export
// (hfTensors) and the module names of PEFT adapters (hfModuleOf, qkvPart, rotaryHeads) all read
// these tables, so a name is written down once.
const Architecture& architectureOf(const ModelConfig& c) {
  static const Architecture gpt2{
      "transformer.", "h.",
      {{"tok_embeddings.weight", "wte.weight"}, {"pos_embeddings.weight", "wpe.weight"}, {"norm.weight", "ln_f.weight"},
       {"norm.bias", "ln_f.bias"}},
      {{"attention_norm", "ln_1"},
       {"attention.wq", "attn.c_attn", Layout::kFusedQkv, 0},
       {"attention.wk", "attn.c_attn", Layout::kFusedQkv, 1},
       {"attention.wv", "attn.c_attn", Layout::kFusedQkv, 2},
       {"attention.wo", "attn.c_proj", Layout::kConv1D},
       {"ffn_norm", "ln_2"},
       {"feed_forward.w1", "mlp.c_fc", Layout::kConv1D},
       {"feed_forward.w2", "mlp.c_proj", Layout::kConv1D}}};
  static const Architecture llama{
      "model.", "layers.",
      {{"tok_embeddings.weight", "embed_tokens.weight"}, {"norm.weight", "norm.weight"}},
      {{"attention_norm", "input_layernorm"},
       {"attention.wq", "self_attn.q_proj", Layout::kRotary, 0},
       {"attention.wk", "self_attn.k_proj", Layout::kRotary, 1},
       {"attention.wv", "self_attn.v_proj"},
       {"attention.wo", "self_attn.o_proj"},
       {"ffn_norm", "post_attention_layernorm"},
       {"feed_forward.w1", "mlp.gate_proj"},
       {"feed_forward.w2", "mlp.down_proj"},
       {"feed_forward.w3", "mlp.up_proj"}}};
  return c.isGpt2() ? gpt2 : llama;
}

int headsOf(const ModelConfig& c, const HfName& n) {
  return n.layout != Layout::kRotary ? 0 : n.part == 0 ? c.n_heads : c.n_kv_heads;
}

// The entry of a module path "layers.<i>.<module>".
const HfName& blockEntry(const ModelConfig& c, const std::string& path) {
  const auto dot = path.find('.', 7);  // after "layers.<i>"
  const std::string module = dot == std::string::npos ? "" : path.substr(dot + 1);
  for (const auto& n : architectureOf(c).block)
    if (module == n.graft) return n;
  throw Error("no Hugging Face module for " + path);
}

std::string hfBlock(const Architecture& a, int i) { return std::string(a.blocks) + std::to_string(i) + "."; }

// graft module path -> transformers module path, for the projections adapters can sit on.
std::string hfModuleOf(const ModelConfig& c, const std::string& path) {
  if (path == "output") return "lm_head";
  const Architecture& a = architectureOf(c);
  return a.prefix + hfBlock(a, std::stoi(path.substr(7))) + blockEntry(c, path).hf;
}

// Which of q, k, v `path` is in gpt2's fused c_attn (0, 1, 2), else -1.
int qkvPart(const ModelConfig& c, const std::string& path) {
  const HfName& n = blockEntry(c, path);
  return n.layout == Layout::kFusedQkv ? n.part : -1;
}

int layerOf(const std::string& path) { return std::stoi(path.substr(7)); }  // "layers.<i>...."

// Heads whose rows a q/k projection's lora_B permutes (0: not a rotary projection).
int rotaryHeads(const ModelConfig& c, const std::string& path) { return headsOf(c, blockEntry(c, path)); }

}  // namespace graft::hf
