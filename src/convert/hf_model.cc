#include "convert/hf_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "convert/hf_names.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
using namespace hf;
namespace {

// Reads tensors of an HF checkpoint by name, checking shapes, and remembers which were used so
// that leftovers can be reported.
class HfTensors {
 public:
  HfTensors(const std::string& path, std::string prefix)
      : files_(SafetensorsFolder::open(path)), path_(path), prefix_(std::move(prefix)) {}

  bool has(const std::string& name) const { return names().count(prefix_ + name) || names().count(name); }

  // `name` without the model prefix ("transformer.", "model."); files written without it work too.
  torch::Tensor get(const std::string& name, std::vector<std::int64_t> shape) {
    const std::string full = names().count(prefix_ + name) ? prefix_ + name : name;
    auto tensor = readChecked(files_, full, shape, "the model's config.json implies");
    used_.insert(full);
    return tensor;
  }

  void markUsed(const std::string& name) {
    if (names().count(prefix_ + name)) used_.insert(prefix_ + name);
    if (names().count(name)) used_.insert(name);
  }

  // Tensors nobody asked for, other than buffers that older transformers versions saved.
  void rejectLeftovers(const std::string& family) const {
    for (const auto& name : names()) {
      if (used_.count(name)) continue;
      if (endsWith(name, ".attn.bias") || endsWith(name, ".attn.masked_bias") || endsWith(name, "rotary_emb.inv_freq"))
        continue;
      throw InputError(files_.fileOf(name) + ": tensor " + name + " is not part of a " + family +
                       " model as its config.json describes it");
    }
  }

 private:
  const std::set<std::string>& names() const {
    if (names_.empty())
      for (const auto& n : files_.names()) names_.insert(n);
    return names_;
  }
  SafetensorsFolder files_;
  std::string path_, prefix_;
  mutable std::set<std::string> names_;
  std::set<std::string> used_;
};

// Every tensor of the model's blocks with its table entry: (graft name, hf name, entry).
template <typename F>
void forEachBlockTensor(Transformer& m, F&& f) {
  const ModelConfig& c = m->config();
  const Architecture& a = architectureOf(c);
  const auto params = m->named_parameters();
  for (int i = 0; i < c.n_layers; ++i)
    for (const auto& n : a.block)
      for (const char* suffix : {".weight", ".bias"}) {
        const std::string graft = layer(i, n.graft + std::string(suffix));
        if (params.contains(graft)) f(graft, hfBlock(a, i) + n.hf + suffix, n, std::string(suffix) == ".weight");
      }
}

// The base model's tensors from an HF checkpoint, by the table.
void loadHfTensors(Transformer& m, HfTensors& t) {
  const ModelConfig& c = m->config();
  for (const auto& n : architectureOf(c).model) param(m, n.graft).copy_(t.get(n.hf, param(m, n.graft).sizes().vec()));
  forEachBlockTensor(m, [&](const std::string& graft, const std::string& hf, const HfName& n, bool weight) {
    torch::Tensor target = param(m, graft);
    const auto shape = target.sizes().vec();
    switch (n.layout) {
      case Layout::kSame: target.copy_(t.get(hf, shape)); break;
      case Layout::kConv1D: target.copy_(weight ? t.get(hf, {shape[1], shape[0]}).t() : t.get(hf, shape)); break;
      case Layout::kRotary: target.copy_(toPairs(t.get(hf, shape), headsOf(c, n))); break;
      case Layout::kFusedQkv: {
        const std::int64_t rows = shape[0];
        const auto fused = weight ? t.get(hf, {shape[1], 3 * rows}).t() : t.get(hf, {3 * rows});
        target.copy_(fused.narrow(0, n.part * rows, rows));
        break;
      }
    }
  });
}

// The HF (name, tensor) list of a model, in transformers' layout, by the table.
std::vector<std::pair<std::string, torch::Tensor>> hfTensors(Transformer& m) {
  const ModelConfig& c = m->config();
  const Architecture& a = architectureOf(c);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto p = [&](const std::string& name) { return param(m, name).detach(); };
  for (const auto& n : a.model) out.emplace_back(a.prefix + std::string(n.hf), p(n.graft));
  forEachBlockTensor(m, [&](const std::string& graft, const std::string& hf, const HfName& n, bool weight) {
    const std::string name = a.prefix + hf;
    switch (n.layout) {
      case Layout::kSame: out.emplace_back(name, p(graft)); break;
      case Layout::kConv1D: out.emplace_back(name, weight ? p(graft).t() : p(graft)); break;
      case Layout::kRotary: out.emplace_back(name, toHalves(p(graft), headsOf(c, n))); break;
      case Layout::kFusedQkv: {
        if (n.part != 0) break;  // written once, with q
        const std::string q = graft.substr(0, graft.rfind("wq.")), tail = graft.substr(graft.rfind('.'));
        const auto fused = torch::cat({p(q + "wq" + tail), p(q + "wk" + tail), p(q + "wv" + tail)});
        out.emplace_back(name, weight ? fused.t() : fused);
        break;
      }
    }
  });
  // A sequence classifier (transformers' *ForSequenceClassification) has score instead of lm_head.
  if (c.num_classes > 0) out.emplace_back("score.weight", p("head.weight"));
  else if (!c.tied) out.emplace_back("lm_head.weight", p("output.weight"));
  return out;
}

const char* torchDtypeName(StDType dtype) {
  switch (dtype) {
    case StDType::F16: return "float16";
    case StDType::BF16: return "bfloat16";
    default: return "float32";
  }
}

Json hfConfig(const ModelConfig& c, StDType dtype) {
  Json j = Json::object();
  if (c.isGpt2()) {
    if (c.n_kv_heads != c.n_heads)
      throw InputError("a gpt2 model with grouped-query attention has no Hugging Face equivalent");
    j.set("architectures", Json::array()).push(c.num_classes > 0 ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel");
    j.set("model_type", "gpt2");
    j.set("activation_function", "gelu_new");
    j.set("n_embd", c.dim);
    j.set("n_head", c.n_heads);
    j.set("n_layer", c.n_layers);
    j.set("n_positions", c.seq_len);
    j.set("n_ctx", c.seq_len);
    j.set("n_inner", c.hidden_dim);
    j.set("layer_norm_epsilon", c.norm_eps);
    j.set("scale_attn_weights", true);
  } else {
    if (c.qkv_bias && c.sliding_window > 0)
      throw InputError("a llama-family model with both q/k/v biases and a sliding window has no Hugging Face equivalent");
    const char* type = c.qkv_bias ? "qwen2" : c.sliding_window > 0 ? "mistral" : "llama";
    const std::string family = c.qkv_bias ? "Qwen2" : c.sliding_window > 0 ? "Mistral" : "Llama";
    j.set("architectures", Json::array()).push(family + (c.num_classes > 0 ? "ForSequenceClassification" : "ForCausalLM"));
    j.set("model_type", type);
    j.set("hidden_act", "silu");
    j.set("hidden_size", c.dim);
    j.set("intermediate_size", c.hidden_dim);
    j.set("num_hidden_layers", c.n_layers);
    j.set("num_attention_heads", c.n_heads);
    j.set("num_key_value_heads", c.n_kv_heads);
    j.set("max_position_embeddings", c.seq_len);
    j.set("rms_norm_eps", c.norm_eps);
    j.set("rope_theta", c.rope_theta);
    j.set("rope_scaling", Json());
    if (c.sliding_window > 0) j.set("sliding_window", c.sliding_window);
    if (c.qkv_bias) j.set("use_sliding_window", false);
  }
  j.set("vocab_size", c.vocab_size);
  if (c.num_classes > 0) {
    // transformers' classifiers read the last token (the last non-pad one when pad_token_id is set).
    if (c.pooling != "last")
      throw InputError("a classification head on the " + c.pooling + " of the tokens has no Hugging Face equivalent "
                       "(transformers' sequence classifiers read the last token); train with task.pooling = last");
    Json id2label = Json::object(), label2id = Json::object();
    for (int k = 0; k < c.num_classes; ++k) {
      const std::string name = c.label_names.empty() ? "LABEL_" + std::to_string(k) : c.label_names[static_cast<std::size_t>(k)];
      id2label.set(std::to_string(k), name);
      label2id.set(name, k);
    }
    j.set("id2label", std::move(id2label));
    j.set("label2id", std::move(label2id));
    j.set("problem_type", "single_label_classification");
  }
  j.set("tie_word_embeddings", c.tied);
  j.set("torch_dtype", torchDtypeName(dtype));
  j.set("graft_exported", true);
  return j;
}

// transformers' *ForSequenceClassification: a head `score` [num_labels, dim] on the last token,
// the labels named by id2label ({"0": "name", ...}).
void readClassifierConfig(const Json& j, const std::string& file, ModelConfig& c) {
  const Json* archs = j.find("architectures");
  bool classifier = false;
  if (archs && archs->isArray())
    for (const auto& a : archs->asArray(file + ": architectures"))
      classifier = classifier || (a.isString() && endsWith(a.asString(file), "ForSequenceClassification"));
  if (!classifier) return;
  if (const Json* v = j.find("problem_type"); v && !v->isNull() && v->asString(file + ": problem_type") != "single_label_classification")
    throw InputError(file + ": problem_type " + v->asString(file) + " is not supported (single_label_classification)");
  const Json* id2label = j.find("id2label");
  if (!id2label || !id2label->isObject() || id2label->asObject(file).empty())
    throw InputError(file + ": a sequence classifier needs id2label (one entry per class)");
  const auto& entries = id2label->asObject(file + ": id2label");
  c.num_classes = static_cast<int>(entries.size());
  c.label_names.assign(entries.size(), "");
  for (const auto& [key, name] : entries) {
    std::size_t used = 0;
    long id = -1;
    try {
      id = std::stol(key, &used);
    } catch (const std::exception&) {
    }
    if (used != key.size() || id < 0 || id >= c.num_classes || !c.label_names[static_cast<std::size_t>(id)].empty())
      throw InputError(file + ": id2label key \"" + key + "\" is not one of 0 .. " + std::to_string(c.num_classes - 1));
    c.label_names[static_cast<std::size_t>(id)] = name.asString(file + ": id2label[" + key + "]");
  }
  c.pooling = "last";
}

int intField(const Json& j, const std::string& key, const std::string& what) {
  const std::int64_t v = j.at(key, what).asInt(what + ": " + key);
  if (v <= 0 || v > (std::int64_t{1} << 24))
    throw InputError(what + ": " + key + " = " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

const Json* present(const Json& j, const std::string& key) {
  const Json* v = j.find(key);
  return v && !v->isNull() ? v : nullptr;
}

}  // namespace

bool isHfModel(const std::string& path) {
  if (isDirectory(path)) return fileExists(path + "/config.json");
  return endsWith(path, ".safetensors") && fileExists(parentDirectory(path) + "/config.json");
}

std::string hfModelFolder(const std::string& path) { return isDirectory(path) ? path : parentDirectory(path); }

ModelConfig readHfConfig(const std::string& file) {
  const Json j = parseJson(readFile(file), file);
  j.asObject(file);
  const std::string type = j.at("model_type", file).asString(file + ": model_type");
  ModelConfig c;
  auto unsupported = [&](const std::string& key, const std::string& why) {
    throw InputError(file + ": " + key + " " + why + " is not supported");
  };
  if (type == "gpt2") {
    c.arch = "gpt2";
    c.dim = intField(j, "n_embd", file);
    c.n_layers = intField(j, "n_layer", file);
    c.n_heads = c.n_kv_heads = intField(j, "n_head", file);
    c.seq_len = intField(j, "n_positions", file);
    c.vocab_size = intField(j, "vocab_size", file);
    c.hidden_dim = present(j, "n_inner") ? intField(j, "n_inner", file) : 4 * c.dim;  // null means 4 x n_embd
    if (const Json* eps = present(j, "layer_norm_epsilon")) c.norm_eps = eps->asNumber(file + ": layer_norm_epsilon");
    const Json* act = present(j, "activation_function");
    const std::string activation = act ? act->asString(file + ": activation_function") : "gelu_new";
    if (activation != "gelu_new" && activation != "gelu_pytorch_tanh")
      unsupported("activation_function", "'" + activation + "' (graft's gpt2 uses the tanh GELU, gelu_new)");
    if (const Json* v = present(j, "scale_attn_by_inverse_layer_idx"); v && v->asBool(file))
      unsupported("scale_attn_by_inverse_layer_idx", "true");
    if (const Json* v = present(j, "scale_attn_weights"); v && !v->asBool(file)) unsupported("scale_attn_weights", "false");
    c.tied = true;
    if (const Json* v = present(j, "tie_word_embeddings")) c.tied = v->asBool(file + ": tie_word_embeddings");
  } else if (type == "llama" || type == "mistral" || type == "qwen2") {
    c.arch = "llama";
    c.dim = intField(j, "hidden_size", file);
    c.hidden_dim = intField(j, "intermediate_size", file);
    c.n_layers = intField(j, "num_hidden_layers", file);
    c.n_heads = intField(j, "num_attention_heads", file);
    c.n_kv_heads = present(j, "num_key_value_heads") ? intField(j, "num_key_value_heads", file) : c.n_heads;
    c.vocab_size = intField(j, "vocab_size", file);
    c.seq_len = intField(j, "max_position_embeddings", file);
    if (const Json* v = present(j, "rms_norm_eps")) c.norm_eps = v->asNumber(file + ": rms_norm_eps");
    if (const Json* v = present(j, "rope_theta")) c.rope_theta = v->asNumber(file + ": rope_theta");
    if (const Json* v = present(j, "rope_scaling")) unsupported("rope_scaling", v->dump());
    if (const Json* v = present(j, "hidden_act"); v && v->asString(file + ": hidden_act") != "silu")
      unsupported("hidden_act", "'" + v->asString(file) + "' (the llama family uses silu)");
    if (const Json* v = present(j, "head_dim"); v && v->asInt(file + ": head_dim") * c.n_heads != c.dim)
      unsupported("head_dim", std::to_string(v->asInt(file)) + " (other than hidden_size / num_attention_heads)");
    for (const char* key : {"attention_bias", "mlp_bias"})
      if (const Json* v = present(j, key); v && v->asBool(file)) unsupported(key, "true");
    c.tied = false;
    if (const Json* v = present(j, "tie_word_embeddings")) c.tied = v->asBool(file + ": tie_word_embeddings");
    if (type == "mistral") {
      if (const Json* v = present(j, "sliding_window")) c.sliding_window = static_cast<int>(v->asInt(file + ": sliding_window"));
    }
    if (type == "qwen2") {
      c.qkv_bias = true;
      if (const Json* v = present(j, "use_sliding_window"); v && v->asBool(file)) unsupported("use_sliding_window", "true");
    }
  } else {
    throw InputError(file + ": model_type '" + type + "' is not supported (gpt2, llama, mistral, qwen2)");
  }
  readClassifierConfig(j, file, c);
  c.validate(file);
  return c;
}

Transformer loadHfModel(const std::string& path) {
  const std::string folder = hfModelFolder(path);
  ModelConfig c = readHfConfig(folder + "/config.json");
  HfTensors tensors(path, architectureOf(c).prefix);
  // A classifier has no lm_head; graft's model keeps one (for generation), tied to the embeddings.
  if (c.num_classes > 0 && !tensors.has("lm_head.weight")) c.tied = true;
  Transformer model(c);
  torch::NoGradGuard no_grad;
  loadHfTensors(model, tensors);
  if (c.tied) {
    tensors.markUsed("lm_head.weight");  // some files store the tied copy too
  } else {
    param(model, "output.weight").copy_(tensors.get("lm_head.weight", {c.vocab_size, c.dim}));
  }
  if (c.num_classes > 0) param(model, "head.weight").copy_(tensors.get("score.weight", {c.num_classes, c.dim}));
  tensors.rejectLeftovers(c.isGpt2() ? "gpt2" : "llama-family");
  return model;
}

void saveHfModel(Transformer& model, const std::string& dir, StDType dtype) {
  if (dtype != StDType::F32 && dtype != StDType::F16 && dtype != StDType::BF16)
    throw InputError(std::string("export dtype ") + stDTypeName(dtype) + " is not F32, F16 or BF16");
  makeDirectories(dir);
  const auto scalar = dtype == StDType::F16 ? torch::kHalf : dtype == StDType::BF16 ? torch::kBFloat16 : torch::kFloat32;
  std::vector<torch::Tensor> keep;  // owns the bytes until written
  std::vector<StTensorOut> out;
  for (auto& [name, tensor] : hfTensors(model)) {
    keep.push_back(tensor.to(scalar).contiguous());
    const auto& t = keep.back();
    out.push_back({name, dtype, t.sizes().vec(), t.data_ptr(), static_cast<std::size_t>(t.nbytes())});
  }
  writeSafetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
  const std::string config = dir + "/config.json";
  writeFileAtomically(config, hfConfig(model->config(), dtype).dump(2) + "\n");
}

}  // namespace graft
