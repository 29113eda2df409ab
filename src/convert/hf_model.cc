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

// A Hugging Face folder as a ModelSource: every tensor the model needs is located and its shape
// checked against config.json when the source opens (from the safetensors headers, before any
// data is read), and tensors the model does not use are errors. A tensor stored in graft's layout
// is read row range by row range; the others whole, then converted (hf_names.h Layout).
class HfSource final : public ModelSource {
 public:
  HfSource(const std::string& path, ModelConfig c, SafetensorsFolder files)
      : ModelSource(std::move(c), path), files_(std::move(files)) {
    const Architecture& a = architectureOf(config_);
    for (const auto& n : files_.names()) names_.insert(n);
    auto model = modelWithoutMemory(config_);
    auto add = [&](const std::string& graft, const std::string& hf, Layout layout, int part, bool weight, int heads) {
      const std::string full = names_.count(a.prefix + hf) ? a.prefix + hf : hf;
      const auto shape = param(model, graft).sizes().vec();
      std::vector<std::int64_t> stored = shape;
      if (layout == Layout::kConv1D && weight) stored = {shape[1], shape[0]};
      if (layout == Layout::kFusedQkv) stored = weight ? std::vector<std::int64_t>{shape[1], 3 * shape[0]} : std::vector<std::int64_t>{3 * shape[0]};
      const StTensorInfo& info = files_.info(full);  // throws naming the folder and tensor when absent
      if (info.shape != stored)
        throw InputError(files_.fileOf(full) + ": tensor " + full + " has shape " + c10::str(info.shape) +
                         ", the model's config.json implies " + c10::str(stored));
      entries_[graft] = {full, layout, part, weight, heads, stored, shape[0]};
      used_.insert(full);
    };
    for (const auto& n : a.model) add(n.graft, n.hf, Layout::kSame, 0, true, 0);
    forEachBlockTensor(model, [&](const std::string& graft, const std::string& hf, const HfName& n, bool weight) {
      add(graft, hf, n.layout, n.part, weight, headsOf(config_, n));
    });
    if (config_.tied) {  // some files store the tied copy too
      for (const std::string& name : {a.prefix + std::string("lm_head.weight"), std::string("lm_head.weight")})
        if (names_.count(name)) used_.insert(name);
    } else {
      add("output.weight", "lm_head.weight", Layout::kSame, 0, true, 0);
    }
    if (config_.num_classes > 0) add("head.weight", "score.weight", Layout::kSame, 0, true, 0);
    rejectLeftovers(config_.isGpt2() ? "gpt2" : "llama-family");
  }

  // Only the bytes of rows [begin, end) are read, whatever the layout (what each rank reads under
  // dist.shard = parameters): GPT-2's transposed Conv1D weights and its fused q|k|v by columns,
  // rotary q/k by the heads that hold the rows.
  void read(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) const override {
    const auto it = entries_.find(name);
    if (it == entries_.end()) throw InputError(path_ + ": the model has no tensor " + name);
    const Entry& e = it->second;
    if (!out.is_contiguous() || out.scalar_type() != at::kFloat || out.size(0) != end - begin)
      throw Error(path_ + ": tensor " + name + ": rows asked into a buffer of shape " + c10::str(out.sizes()));
    // (The files check their own tensors' bounds; one part of a fused tensor is checked here.)
    if (begin < 0 || end < begin || end > e.rows)
      throw Error(path_ + ": tensor " + name + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                  ") outside its " + std::to_string(e.rows));
    float* into = out.data_ptr<float>();
    switch (e.layout) {
      case Layout::kSame: return files_.readFloat32Rows(e.hf, begin, end, into);
      case Layout::kConv1D:  // a weight is stored [in, out]: graft's rows are its columns
        if (!e.weight) return files_.readFloat32Rows(e.hf, begin, end, into);
        return readColumns(e, begin, end, out);
      case Layout::kFusedQkv: {  // q, k and v side by side: part p's rows start at p x rows
        const std::int64_t first = e.part * (e.weight ? e.stored[1] : e.stored[0]) / 3;
        if (!e.weight) return files_.readFloat32Rows(e.hf, first + begin, first + end, into);
        return readColumns(e, first + begin, first + end, out);
      }
      case Layout::kRotary: {  // a head's rows are permuted among themselves (toPairs)
        if (end == begin) return;
        const std::int64_t per_head = e.stored[0] / e.heads;
        const std::int64_t h0 = begin / per_head, h1 = (end + per_head - 1) / per_head;
        auto shape = e.stored;
        shape[0] = (h1 - h0) * per_head;
        auto heads = torch::empty(shape);
        files_.readFloat32Rows(e.hf, h0 * per_head, h1 * per_head, heads.data_ptr<float>());
        out.copy_(toPairs(heads, static_cast<int>(h1 - h0)).narrow(0, begin - h0 * per_head, end - begin));
        return;
      }
    }
  }

  std::int64_t bytesRead() const override { return static_cast<std::int64_t>(files_.bytesRead()); }

 private:
  struct Entry;
  // Columns [begin, end) of a 2-D tensor stored transposed, as rows of `out`.
  void readColumns(const Entry& e, std::int64_t begin, std::int64_t end, at::Tensor out) const {
    auto columns = torch::empty({e.stored[0], end - begin});
    files_.readFloat32Columns(e.hf, begin, end, columns.data_ptr<float>());
    out.copy_(columns.t());
  }

  struct Entry {
    std::string hf;  // the name in the file
    Layout layout = Layout::kSame;
    int part = 0;
    bool weight = true;
    int heads = 0;
    std::vector<std::int64_t> stored;  // its shape there
    std::int64_t rows = 0;             // graft's rows of the parameter
  };

  // Tensors nobody asked for, other than buffers that older transformers versions saved.
  void rejectLeftovers(const std::string& family) const {
    for (const auto& name : names_) {
      if (used_.count(name)) continue;
      if (endsWith(name, ".attn.bias") || endsWith(name, ".attn.masked_bias") || endsWith(name, "rotary_emb.inv_freq"))
        continue;
      throw InputError(files_.fileOf(name) + ": tensor " + name + " is not part of a " + family +
                       " model as its config.json describes it");
    }
  }

  SafetensorsFolder files_;
  std::set<std::string> names_, used_;
  std::map<std::string, Entry> entries_;
};

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

std::unique_ptr<ModelSource> openHfSource(const std::string& path) {
  const std::string folder = hfModelFolder(path);
  ModelConfig c = readHfConfig(folder + "/config.json");
  SafetensorsFolder files = SafetensorsFolder::open(path);
  // A classifier has no lm_head; graft's model keeps one (for generation), tied to the embeddings.
  if (c.num_classes > 0) {
    const std::string prefix = architectureOf(c).prefix;
    bool has_lm_head = false;
    for (const auto& n : files.names()) has_lm_head = has_lm_head || n == prefix + "lm_head.weight" || n == "lm_head.weight";
    if (!has_lm_head) c.tied = true;
  }
  return std::make_unique<HfSource>(path, std::move(c), std::move(files));
}

Transformer loadHfModel(const std::string& path) { return loadWhole(*openHfSource(path)); }

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
