#include "convert/hf_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

// Tensor `name` of `files` as float32, after checking its shape ("expected" says where the
// shape comes from in the error).
torch::Tensor readChecked(const SafetensorsFolder& files, const std::string& name, const std::vector<std::int64_t>& shape,
                          const char* expected = "expected") {
  const StTensorInfo& info = files.info(name);  // throws naming the folder and tensor when absent
  if (info.shape != shape)
    throw InputError(files.fileOf(name) + ": tensor " + name + " has shape " + c10::str(info.shape) + ", " + expected +
                     " " + c10::str(shape));
  std::vector<float> values = files.readFloat32(name);
  return torch::from_blob(values.data(), shape, torch::kFloat32).clone();
}

std::string layer(int i, const std::string& rest) { return "layers." + std::to_string(i) + "." + rest; }

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

torch::Tensor param(Transformer& m, const std::string& name) {
  auto* p = m->named_parameters().find(name);
  if (!p) throw Error("model has no parameter " + name);
  return *p;
}

void loadGpt2(Transformer& m, HfTensors& t) {
  const ModelConfig& c = m->config();
  const std::int64_t d = c.dim, h = c.hidden_dim;
  auto set = [&](const std::string& name, const torch::Tensor& value) { param(m, name).copy_(value); };
  set("tok_embeddings.weight", t.get("wte.weight", {c.vocab_size, d}));
  set("pos_embeddings.weight", t.get("wpe.weight", {c.seq_len, d}));
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string hf = "h." + std::to_string(i) + ".";
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"ln_1", "attention_norm"}, {"ln_2", "ffn_norm"}}) {
      set(layer(i, to + ".weight"), t.get(hf + from + ".weight", {d}));
      set(layer(i, to + ".bias"), t.get(hf + from + ".bias", {d}));
    }
    // Conv1D stores [in, out]; c_attn's out is q | k | v.
    auto qkv_w = t.get(hf + "attn.c_attn.weight", {d, 3 * d}).t();
    auto qkv_b = t.get(hf + "attn.c_attn.bias", {3 * d});
    const char* parts[] = {"wq", "wk", "wv"};
    for (int k = 0; k < 3; ++k) {
      set(layer(i, std::string("attention.") + parts[k] + ".weight"), qkv_w.narrow(0, k * d, d));
      set(layer(i, std::string("attention.") + parts[k] + ".bias"), qkv_b.narrow(0, k * d, d));
    }
    set(layer(i, "attention.wo.weight"), t.get(hf + "attn.c_proj.weight", {d, d}).t());
    set(layer(i, "attention.wo.bias"), t.get(hf + "attn.c_proj.bias", {d}));
    set(layer(i, "feed_forward.w1.weight"), t.get(hf + "mlp.c_fc.weight", {d, h}).t());
    set(layer(i, "feed_forward.w1.bias"), t.get(hf + "mlp.c_fc.bias", {h}));
    set(layer(i, "feed_forward.w2.weight"), t.get(hf + "mlp.c_proj.weight", {h, d}).t());
    set(layer(i, "feed_forward.w2.bias"), t.get(hf + "mlp.c_proj.bias", {d}));
  }
  set("norm.weight", t.get("ln_f.weight", {d}));
  set("norm.bias", t.get("ln_f.bias", {d}));
}

void loadLlamaFamily(Transformer& m, HfTensors& t) {
  const ModelConfig& c = m->config();
  const std::int64_t d = c.dim, h = c.hidden_dim, kv = static_cast<std::int64_t>(c.n_kv_heads) * c.headDim();
  auto set = [&](const std::string& name, const torch::Tensor& value) { param(m, name).copy_(value); };
  set("tok_embeddings.weight", t.get("embed_tokens.weight", {c.vocab_size, d}));
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string hf = "layers." + std::to_string(i) + ".";
    set(layer(i, "attention_norm.weight"), t.get(hf + "input_layernorm.weight", {d}));
    set(layer(i, "ffn_norm.weight"), t.get(hf + "post_attention_layernorm.weight", {d}));
    set(layer(i, "attention.wq.weight"), toPairs(t.get(hf + "self_attn.q_proj.weight", {d, d}), c.n_heads));
    set(layer(i, "attention.wk.weight"), toPairs(t.get(hf + "self_attn.k_proj.weight", {kv, d}), c.n_kv_heads));
    set(layer(i, "attention.wv.weight"), t.get(hf + "self_attn.v_proj.weight", {kv, d}));
    set(layer(i, "attention.wo.weight"), t.get(hf + "self_attn.o_proj.weight", {d, d}));
    if (c.qkv_bias) {
      set(layer(i, "attention.wq.bias"), toPairs(t.get(hf + "self_attn.q_proj.bias", {d}), c.n_heads));
      set(layer(i, "attention.wk.bias"), toPairs(t.get(hf + "self_attn.k_proj.bias", {kv}), c.n_kv_heads));
      set(layer(i, "attention.wv.bias"), t.get(hf + "self_attn.v_proj.bias", {kv}));
    }
    set(layer(i, "feed_forward.w1.weight"), t.get(hf + "mlp.gate_proj.weight", {h, d}));
    set(layer(i, "feed_forward.w2.weight"), t.get(hf + "mlp.down_proj.weight", {d, h}));
    set(layer(i, "feed_forward.w3.weight"), t.get(hf + "mlp.up_proj.weight", {h, d}));
  }
  set("norm.weight", t.get("norm.weight", {d}));
}

// The HF (name, tensor) list of a model, in transformers' layout.
std::vector<std::pair<std::string, torch::Tensor>> hfTensors(Transformer& m) {
  const ModelConfig& c = m->config();
  std::vector<std::pair<std::string, torch::Tensor>> out;
  auto p = [&](const std::string& name) { return param(m, name).detach(); };
  if (c.isGpt2()) {
    const std::string pre = "transformer.";
    out.emplace_back(pre + "wte.weight", p("tok_embeddings.weight"));
    out.emplace_back(pre + "wpe.weight", p("pos_embeddings.weight"));
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string hf = pre + "h." + std::to_string(i) + ".";
      out.emplace_back(hf + "ln_1.weight", p(layer(i, "attention_norm.weight")));
      out.emplace_back(hf + "ln_1.bias", p(layer(i, "attention_norm.bias")));
      out.emplace_back(hf + "attn.c_attn.weight", torch::cat({p(layer(i, "attention.wq.weight")), p(layer(i, "attention.wk.weight")),
                                                             p(layer(i, "attention.wv.weight"))}).t());
      out.emplace_back(hf + "attn.c_attn.bias", torch::cat({p(layer(i, "attention.wq.bias")), p(layer(i, "attention.wk.bias")),
                                                           p(layer(i, "attention.wv.bias"))}));
      out.emplace_back(hf + "attn.c_proj.weight", p(layer(i, "attention.wo.weight")).t());
      out.emplace_back(hf + "attn.c_proj.bias", p(layer(i, "attention.wo.bias")));
      out.emplace_back(hf + "ln_2.weight", p(layer(i, "ffn_norm.weight")));
      out.emplace_back(hf + "ln_2.bias", p(layer(i, "ffn_norm.bias")));
      out.emplace_back(hf + "mlp.c_fc.weight", p(layer(i, "feed_forward.w1.weight")).t());
      out.emplace_back(hf + "mlp.c_fc.bias", p(layer(i, "feed_forward.w1.bias")));
      out.emplace_back(hf + "mlp.c_proj.weight", p(layer(i, "feed_forward.w2.weight")).t());
      out.emplace_back(hf + "mlp.c_proj.bias", p(layer(i, "feed_forward.w2.bias")));
    }
    out.emplace_back(pre + "ln_f.weight", p("norm.weight"));
    out.emplace_back(pre + "ln_f.bias", p("norm.bias"));
  } else {
    const std::string pre = "model.";
    out.emplace_back(pre + "embed_tokens.weight", p("tok_embeddings.weight"));
    for (int i = 0; i < c.n_layers; ++i) {
      const std::string hf = pre + "layers." + std::to_string(i) + ".";
      out.emplace_back(hf + "input_layernorm.weight", p(layer(i, "attention_norm.weight")));
      out.emplace_back(hf + "self_attn.q_proj.weight", toHalves(p(layer(i, "attention.wq.weight")), c.n_heads));
      out.emplace_back(hf + "self_attn.k_proj.weight", toHalves(p(layer(i, "attention.wk.weight")), c.n_kv_heads));
      out.emplace_back(hf + "self_attn.v_proj.weight", p(layer(i, "attention.wv.weight")));
      out.emplace_back(hf + "self_attn.o_proj.weight", p(layer(i, "attention.wo.weight")));
      if (c.qkv_bias) {
        out.emplace_back(hf + "self_attn.q_proj.bias", toHalves(p(layer(i, "attention.wq.bias")), c.n_heads));
        out.emplace_back(hf + "self_attn.k_proj.bias", toHalves(p(layer(i, "attention.wk.bias")), c.n_kv_heads));
        out.emplace_back(hf + "self_attn.v_proj.bias", p(layer(i, "attention.wv.bias")));
      }
      out.emplace_back(hf + "post_attention_layernorm.weight", p(layer(i, "ffn_norm.weight")));
      out.emplace_back(hf + "mlp.gate_proj.weight", p(layer(i, "feed_forward.w1.weight")));
      out.emplace_back(hf + "mlp.down_proj.weight", p(layer(i, "feed_forward.w2.weight")));
      out.emplace_back(hf + "mlp.up_proj.weight", p(layer(i, "feed_forward.w3.weight")));
    }
    out.emplace_back(pre + "norm.weight", p("norm.weight"));
  }
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
  HfTensors tensors(path, c.isGpt2() ? "transformer." : "model.");
  // A classifier has no lm_head; graft's model keeps one (for generation), tied to the embeddings.
  if (c.num_classes > 0 && !tensors.has("lm_head.weight")) c.tied = true;
  Transformer model(c);
  torch::NoGradGuard no_grad;
  if (c.isGpt2()) {
    loadGpt2(model, tensors);
  } else {
    loadLlamaFamily(model, tensors);
  }
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

namespace {

// graft module path <-> transformers module path, for the projections adapters can sit on.
std::string hfModuleOf(const ModelConfig& c, const std::string& path) {
  if (path == "output") return "lm_head";
  const auto dot = path.find('.', 7);  // after "layers.<i>"
  const std::string index = path.substr(7, dot - 7), rest = path.substr(dot + 1);
  if (c.isGpt2()) {
    static const std::map<std::string, std::string> names = {
        {"attention.wo", "attn.c_proj"}, {"feed_forward.w1", "mlp.c_fc"}, {"feed_forward.w2", "mlp.c_proj"}};
    const auto it = names.find(rest);
    return "transformer.h." + index + "." + (it == names.end() ? std::string("attn.c_attn") : it->second);
  }
  static const std::map<std::string, std::string> names = {
      {"attention.wq", "self_attn.q_proj"}, {"attention.wk", "self_attn.k_proj"}, {"attention.wv", "self_attn.v_proj"},
      {"attention.wo", "self_attn.o_proj"}, {"feed_forward.w1", "mlp.gate_proj"}, {"feed_forward.w2", "mlp.down_proj"},
      {"feed_forward.w3", "mlp.up_proj"}};
  return "model.layers." + index + "." + names.at(rest);
}

// Note [fused c_attn]: transformers' GPT-2 computes q, k and v with one Conv1D, c_attn [d, 3d], so
// PEFT puts one adapter on it: lora_A [r', d], lora_B [3d, r']. graft's separate q/k/v adapters
// (rank r each) are written exactly as one of rank r' = r x (adapters present): A stacks their
// A's, B is block-diagonal (zero rows for a projection without adapter), and alpha' = alpha x r' / r
// keeps the scale alpha / r (rank_pattern / alpha_pattern say so for c_attn). Reading a c_attn
// adapter back, q, k and v each get A and their third of B's rows: again exact.
// Which of q, k, v `path` is in gpt2 (0, 1, 2), else -1.
int qkvPart(const ModelConfig& c, const std::string& path) {
  if (!c.isGpt2()) return -1;
  if (endsWith(path, "attention.wq")) return 0;
  if (endsWith(path, "attention.wk")) return 1;
  if (endsWith(path, "attention.wv")) return 2;
  return -1;
}

int layerOf(const std::string& path) { return std::stoi(path.substr(7)); }  // "layers.<i>...."

// PEFT's rank_pattern / alpha_pattern: the value of the first key the module name ends with.
const Json* patternFor(const Json& j, const char* key, const std::string& module) {
  const Json* pattern = j.find(key);
  if (!pattern || !pattern->isObject()) return nullptr;
  for (const auto& [suffix, value] : pattern->asObject(key))
    if (module == suffix || endsWith(module, "." + suffix)) return &value;
  return nullptr;
}

// Heads whose rows a q/k projection's lora_B permutes (0: not a rotary projection).
int rotaryHeads(const ModelConfig& c, const std::string& path) {
  if (c.isGpt2()) return 0;
  if (endsWith(path, "attention.wq")) return c.n_heads;
  if (endsWith(path, "attention.wk")) return c.n_kv_heads;
  return 0;
}

}  // namespace

void savePeftAdapter(Transformer& model, const std::string& dir, const std::string& base_model) {
  const ModelConfig& c = model->config();
  if (model->promptLength()) {  // PEFT's prompt tuning: one tensor, prompt_embeddings [n, dim]
    auto prompt = model->soft_prompt.detach().contiguous();
    makeDirectories(dir);
    writeSafetensors(dir + "/adapter_model.safetensors",
                     {{"prompt_embeddings", StDType::F32, prompt.sizes().vec(), prompt.data_ptr(), static_cast<std::size_t>(prompt.nbytes())}},
                     {{"format", "pt"}});
    Json config = Json::object();
    config.set("peft_type", "PROMPT_TUNING");
    config.set("task_type", "CAUSAL_LM");
    config.set("base_model_name_or_path", base_model);
    config.set("num_virtual_tokens", Json(model->promptLength()));
    config.set("token_dim", c.dim);
    config.set("num_transformer_submodules", 1);
    config.set("prompt_tuning_init", "RANDOM");
    config.set("inference_mode", true);
    writeFileAtomically(dir + "/adapter_config.json", config.dump(2) + "\n");
    return;
  }
  if (c.num_classes > 0)
    throw InputError("PEFT export holds adapters only, and this model's classification head was trained too; "
                     "export the merged classifier with --format hf");
  std::vector<torch::Tensor> keep;
  std::vector<StTensorOut> out;
  Json targets = Json::array();
  int rank = 0;
  double alpha = 0, dropout = 0;
  struct Fused {
    std::string module;
    int rank;
    double alpha;
  };
  std::vector<Fused> fused_modules;
  auto add = [&](const std::string& module, const torch::Tensor& a, const torch::Tensor& b) {
    targets.push(module);
    for (const auto& [which, t] : {std::pair<const char*, torch::Tensor>{"lora_A", a}, {"lora_B", b}}) {
      keep.push_back(t.detach().contiguous());
      out.push_back({"base_model.model." + module + "." + which + ".weight", StDType::F32, keep.back().sizes().vec(),
                     keep.back().data_ptr(), static_cast<std::size_t>(keep.back().nbytes())});
    }
  };
  std::map<int, std::array<ProjectionImpl*, 3>> fused;  // gpt2: layer -> q, k, v adapters (Note [fused c_attn])
  for (auto& [path, p] : model->projections()) {
    if (!p->hasLora()) continue;
    dropout = p->lora_dropout;
    if (const int part = qkvPart(c, path); part >= 0) {
      fused[layerOf(path)][static_cast<std::size_t>(part)] = p.get();
      continue;
    }
    rank = static_cast<int>(p->lora_A.size(0));
    alpha = p->lora_scale * rank;
    const int heads = rotaryHeads(c, path);
    add(hfModuleOf(c, path), p->lora_A, heads ? toHalves(p->lora_B.detach(), heads) : p->lora_B);
  }
  for (const auto& [layer_index, parts] : fused) {
    std::vector<torch::Tensor> a_rows;
    std::vector<int> present;
    for (int k = 0; k < 3; ++k)
      if (parts[static_cast<std::size_t>(k)]) present.push_back(k);
    const auto* first = parts[static_cast<std::size_t>(present.front())];
    const std::int64_t r = first->lora_A.size(0), d = c.dim;
    auto b = torch::zeros({3 * d, r * static_cast<std::int64_t>(present.size())});
    for (std::size_t j = 0; j < present.size(); ++j) {
      const auto* p = parts[static_cast<std::size_t>(present[j])];
      if (p->lora_A.size(0) != r || p->lora_scale != first->lora_scale)
        throw InputError("PEFT export: the q, k and v adapters of layer " + std::to_string(layer_index) +
                         " differ in rank or alpha, which one fused c_attn adapter cannot hold");
      a_rows.push_back(p->lora_A.detach());
      b.narrow(0, present[j] * d, d).narrow(1, static_cast<std::int64_t>(j) * r, r).copy_(p->lora_B.detach());
    }
    const int fused_rank = static_cast<int>(r * static_cast<std::int64_t>(present.size()));
    fused_modules.push_back({"transformer.h." + std::to_string(layer_index) + ".attn.c_attn", fused_rank,
                             first->lora_scale * fused_rank});
    add(fused_modules.back().module, torch::cat(a_rows), b);
  }
  if (rank == 0) rank = fused_modules.front().rank, alpha = fused_modules.front().alpha;
  if (out.empty()) throw InputError("the model has no LoRA adapters to export in PEFT format");
  makeDirectories(dir);
  writeSafetensors(dir + "/adapter_model.safetensors", out, {{"format", "pt"}});
  Json config = Json::object();
  config.set("peft_type", "LORA");
  config.set("task_type", "CAUSAL_LM");
  config.set("base_model_name_or_path", base_model);
  config.set("r", rank);
  config.set("lora_alpha", alpha);
  config.set("lora_dropout", dropout);
  config.set("target_modules", targets);
  // Fused c_attn adapters whose rank differs from r (layers may adapt different sets of q/k/v):
  // PEFT matches these keys against the end of the module name.
  Json rank_pattern = Json::object(), alpha_pattern = Json::object();
  bool patterned = false;
  for (const auto& f : fused_modules)
    if (f.rank != rank || f.alpha != alpha) {
      rank_pattern.set(f.module, f.rank);
      alpha_pattern.set(f.module, f.alpha);
      patterned = true;
    }
  if (patterned) {
    config.set("rank_pattern", std::move(rank_pattern));
    config.set("alpha_pattern", std::move(alpha_pattern));
  }
  config.set("bias", "none");
  config.set("fan_in_fan_out", c.isGpt2());  // gpt2's Conv1D stores weights [in, out]
  config.set("inference_mode", true);
  config.set("modules_to_save", Json());
  writeFileAtomically(dir + "/adapter_config.json", config.dump(2) + "\n");
}

void loadPeftAdapter(Transformer& model, const std::string& dir) {
  const std::string config_path = dir + "/adapter_config.json";
  if (!fileExists(config_path)) throw InputError(dir + ": no adapter_config.json; not a PEFT adapter folder");
  const Json j = parseJson(readFile(config_path), config_path);
  const std::string type = j.at("peft_type", config_path).asString(config_path + ": peft_type");
  if (type == "PROMPT_TUNING") {
    const int n = static_cast<int>(j.at("num_virtual_tokens", config_path).asInt(config_path + ": num_virtual_tokens"));
    if (n <= 0 || n > 4096) throw InputError(config_path + ": num_virtual_tokens out of range");
    const auto files = SafetensorsFolder::open(dir + "/adapter_model.safetensors");
    const auto prompt = readChecked(files, "prompt_embeddings", {n, model->config().dim});
    model->addSoftPrompt(n, 0);
    torch::NoGradGuard no_grad;
    model->soft_prompt.copy_(prompt);
    return;
  }
  if (type != "LORA") throw InputError(config_path + ": peft_type " + type + " is not LORA or PROMPT_TUNING");
  const int rank = static_cast<int>(j.at("r", config_path).asInt(config_path + ": r"));
  const double alpha = j.at("lora_alpha", config_path).asNumber(config_path + ": lora_alpha");
  const Json* dropout_json = j.find("lora_dropout");
  const double dropout = dropout_json && dropout_json->isNumber() ? dropout_json->asNumber("lora_dropout") : 0.0;
  if (rank <= 0 || rank > 4096 || !(alpha > 0)) throw InputError(config_path + ": r or lora_alpha out of range");
  const auto files = SafetensorsFolder::open(dir + "/adapter_model.safetensors");
  const ModelConfig& c = model->config();
  std::set<std::string> used;
  auto gen = at::detail::createCPUGenerator(0);
  torch::NoGradGuard no_grad;
  const auto names = files.names();
  for (auto& [path, p] : model->projections()) {
    const std::string module = hfModuleOf(c, path);
    const std::string a = "base_model.model." + module + ".lora_A.weight", b = "base_model.model." + module + ".lora_B.weight";
    if (!std::binary_search(names.begin(), names.end(), a)) continue;
    const Json* r_json = patternFor(j, "rank_pattern", module);
    const Json* alpha_json = patternFor(j, "alpha_pattern", module);
    const int r = r_json ? static_cast<int>(r_json->asInt(config_path + ": rank_pattern")) : rank;
    const double module_alpha = alpha_json ? alpha_json->asNumber(config_path + ": alpha_pattern") : alpha;
    if (r <= 0 || r > 4096 || !(module_alpha > 0)) throw InputError(config_path + ": rank or alpha of " + module + " out of range");
    const int part = qkvPart(c, path);
    const std::int64_t out_rows = part >= 0 ? 3 * c.dim : p->out_features;
    auto lora_a = readChecked(files, a, {r, p->in_features});
    auto lora_b = readChecked(files, b, {out_rows, r});
    if (part >= 0) {  // Note [fused c_attn]
      lora_b = lora_b.narrow(0, part * c.dim, c.dim);
      used.insert(a);
      used.insert(b);
      if (!lora_b.abs().sum().item<double>()) continue;  // a zero third: no adapter on this projection
    }
    p->addLora(r, module_alpha, dropout, gen);
    p->lora_A.copy_(lora_a);
    const int heads = rotaryHeads(c, path);
    p->lora_B.copy_(heads ? toPairs(lora_b, heads) : lora_b);
    used.insert(a);
    used.insert(b);
  }
  for (const auto& name : files.names())
    if (!used.count(name))
      throw InputError(files.fileOf(name) + ": tensor " + name + " matches no projection of this " + c.describe() + " model");
  if (used.empty()) throw InputError(dir + ": adapter_model.safetensors holds no LoRA tensors");
}

}  // namespace graft
