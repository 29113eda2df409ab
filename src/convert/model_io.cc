#include "convert/model_io.h"

#include <algorithm>
#include <sstream>

#include <torch/torch.h>

#include "convert/hf_model.h"
#include "convert/model_source.h"
#include "formats/llama2c.h"
#include "model/transfer_apply.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {

std::unique_ptr<ModelSource> openModelSource(const std::string& path) {
  if (path.empty()) throw InputError("no model given");
  if (!fileExists(path)) throw InputError(path + ": model file not found");
  if (isHfModel(path)) return openHfSource(path);
  if (isDirectory(path))
    throw InputError(path + ": a folder without config.json; expected a Hugging Face model folder");
  return openFileSource(path);
}

Transformer loadModel(const std::string& path) {
  if (auto source = openModelSource(path)) return loadWhole(*source);
  // An adapter-only checkpoint: the base it adapts, the transfer, then the adapters.
  H5File file = H5File::openRead(path);
  std::string base;
  const TransferConfig transfer = readTransferGroup(file, base);
  if (base.empty() || !fileExists(base))
    throw InputError(path + ": adapter-only checkpoint of base model '" + base + "', which is not found");
  auto model = loadModel(base);
  const ModelConfig stored = readModelConfig(file);
  if (stored.num_classes > 0 && model->config().num_classes == 0) model->addClassifierHead(stored.num_classes, stored.pooling, 0, stored.label_names);
  applyTransfer(model, transfer, 0);
  if (!(stored == model->config()))
    throw InputError(path + ": adapters of a " + stored.describe() + " model, but " + base + " is " + model->config().describe());
  readModelWeights(file, model);
  return model;
}

std::string formatForPath(const std::string& out) {
  if (endsWith(out, ".bin")) return "llama2c";
  if (endsWith(out, ".h5")) return "graft";
  return "hf";
}

void saveModel(Transformer& model, const std::string& format, const std::string& out, const std::string& dtype) {
  if (format != "hf" && dtype != "f32")
    throw InputError("--dtype " + dtype + ": only the hf format stores f16/bf16; " + format + " is float32");
  if (format == "hf") {
    const StDType st = dtype == "f32" ? StDType::F32 : dtype == "f16" ? StDType::F16 : dtype == "bf16" ? StDType::BF16
                     : throw InputError("--dtype " + dtype + " is not f32, f16 or bf16");
    saveHfModel(model, out, st);
  } else if (format == "llama2c") {
    const ModelConfig& c = model->config();
    if (c.isGpt2() || c.qkv_bias || c.sliding_window > 0)
      throw InputError("llama2.c's format holds plain llama models only, not " + c.describe());
    const std::string file = isDirectory(out) ? out + "/model.bin" : out;
    saveLlama2c(model, file + ".tmp");
    publishFile(file + ".tmp", file);
  } else if (format == "graft") {
    const std::string tmp = out + ".tmp";
    {
      H5File file = H5File::create(tmp);
      writeModelGroup(file, model);
      file.setAttr("/", "format", std::string("graft-model"));
      file.close();
    }
    publishFile(tmp, out);
  } else {
    throw InputError("--format " + format + " is not hf, llama2c or graft");
  }
}

void writeModelGroup(H5File& file, Transformer& model, bool trainable_only, bool tensors) {
  const ModelConfig& c = model->config();
  file.setAttr("/model", "dim", std::int64_t{c.dim});
  file.setAttr("/model", "hidden_dim", std::int64_t{c.hidden_dim});
  file.setAttr("/model", "n_layers", std::int64_t{c.n_layers});
  file.setAttr("/model", "n_heads", std::int64_t{c.n_heads});
  file.setAttr("/model", "n_kv_heads", std::int64_t{c.n_kv_heads});
  file.setAttr("/model", "vocab_size", std::int64_t{c.vocab_size});
  file.setAttr("/model", "seq_len", std::int64_t{c.seq_len});
  file.setAttr("/model", "tied", std::int64_t{c.tied ? 1 : 0});
  file.setAttr("/model", "norm_eps", c.norm_eps);
  file.setAttr("/model", "rope_theta", c.rope_theta);
  file.setAttr("/model", "architecture", c.arch);
  file.setAttr("/model", "qkv_bias", std::int64_t{c.qkv_bias ? 1 : 0});
  file.setAttr("/model", "sliding_window", std::int64_t{c.sliding_window});
  file.setAttr("/model", "num_classes", std::int64_t{c.num_classes});
  file.setAttr("/model", "pooling", c.pooling);
  // One name per line; names that cannot be written so (empty, or holding a newline) are left out.
  const bool writable = !c.label_names.empty() &&
                        std::all_of(c.label_names.begin(), c.label_names.end(),
                                    [](const std::string& n) { return !n.empty() && n.find('\n') == std::string::npos; });
  if (writable) {
    std::string names;
    for (const auto& n : c.label_names) names += (names.empty() ? "" : "\n") + n;
    file.setAttr("/model", "label_names", names);
  }
  file.setAttr("/model", "adapter_only", std::int64_t{trainable_only ? 1 : 0});
  if (!tensors) return;
  for (const auto& p : model->named_parameters())
    if (!trainable_only || p.value().requires_grad()) file.writeTensor("/model/" + p.key(), p.value());
}

ModelConfig readModelConfig(const H5File& file) {
  if (!file.exists("/model")) throw InputError(file.path() + ": no /model group; not a graft checkpoint");
  ModelConfig c;
  auto get = [&](const char* key) { return static_cast<int>(file.intAttr("/model", key)); };
  c.dim = get("dim");
  c.hidden_dim = get("hidden_dim");
  c.n_layers = get("n_layers");
  c.n_heads = get("n_heads");
  c.n_kv_heads = get("n_kv_heads");
  c.vocab_size = get("vocab_size");
  c.seq_len = get("seq_len");
  c.tied = get("tied") != 0;
  c.norm_eps = file.doubleAttr("/model", "norm_eps");
  c.rope_theta = file.doubleAttr("/model", "rope_theta");
  // Written since format 1.1; earlier checkpoints are all plain llama.
  if (file.hasAttr("/model", "architecture")) c.arch = file.stringAttr("/model", "architecture");
  if (file.hasAttr("/model", "qkv_bias")) c.qkv_bias = get("qkv_bias") != 0;
  if (file.hasAttr("/model", "sliding_window")) c.sliding_window = get("sliding_window");
  if (file.hasAttr("/model", "num_classes")) c.num_classes = get("num_classes");
  if (file.hasAttr("/model", "pooling")) c.pooling = file.stringAttr("/model", "pooling");
  if (file.hasAttr("/model", "label_names")) {  // one per line
    std::istringstream names(file.stringAttr("/model", "label_names"));
    for (std::string name; std::getline(names, name);) c.label_names.push_back(name);
  }
  c.validate(file.path() + ":/model");
  return c;
}

void readModelWeights(const H5File& file, Transformer& model) {
  torch::NoGradGuard no_grad;
  const bool adapter_only = file.hasAttr("/model", "adapter_only") && file.intAttr("/model", "adapter_only") != 0;
  for (auto& p : model->named_parameters()) {
    if (adapter_only && !p.value().requires_grad()) continue;
    checkModelTensor(file, p.key(), p.value().sizes().vec());
    auto t = file.readTensor("/model/" + p.key());
    p.value().copy_(t);
  }
}

void checkModelTensor(const H5File& file, const std::string& name, const std::vector<std::int64_t>& shape) {
  const std::string object = "/model/" + name;
  if (!file.exists(object)) throw InputError(file.path() + ": tensor " + name + " is missing");
  const auto stored = file.shape(object);
  if (stored != shape || file.scalarType(object) != at::kFloat)
    throw InputError(file.path() + ": tensor " + name + " has shape " + c10::str(stored) + " " +
                     std::string(c10::toString(file.scalarType(object))) + ", the model expects " + c10::str(shape) +
                     " Float");
}

void writeTransferGroup(H5File& file, const TransferConfig& t, const std::string& base_model) {
  file.setAttr("/transfer", "mode", t.mode);
  file.setAttr("/transfer", "lora_rank", std::int64_t{t.lora_rank});
  file.setAttr("/transfer", "lora_alpha", t.lora_alpha);
  file.setAttr("/transfer", "lora_dropout", t.lora_dropout);
  file.setAttr("/transfer", "lora_targets", t.lora_targets);
  file.setAttr("/transfer", "quantize", t.quantize);
  file.setAttr("/transfer", "cache_features", std::int64_t{t.cache_features ? 1 : 0});
  file.setAttr("/transfer", "prompt_tokens", std::int64_t{t.prompt_tokens});
  file.setAttr("/transfer", "base_model", base_model);
}

bool hasTransferGroup(const H5File& file) { return file.exists("/transfer"); }

TransferConfig readTransferGroup(const H5File& file, std::string& base_model) {
  TransferConfig t;
  t.mode = file.stringAttr("/transfer", "mode");
  t.lora_rank = static_cast<int>(file.intAttr("/transfer", "lora_rank"));
  t.lora_alpha = file.doubleAttr("/transfer", "lora_alpha");
  t.lora_dropout = file.doubleAttr("/transfer", "lora_dropout");
  t.lora_targets = file.stringAttr("/transfer", "lora_targets");
  t.quantize = file.stringAttr("/transfer", "quantize");
  if (file.hasAttr("/transfer", "cache_features")) t.cache_features = file.intAttr("/transfer", "cache_features") != 0;
  if (file.hasAttr("/transfer", "prompt_tokens")) t.prompt_tokens = static_cast<int>(file.intAttr("/transfer", "prompt_tokens"));
  base_model = file.stringAttr("/transfer", "base_model");
  try {
    t.validate();
  } catch (const InputError& e) {
    throw InputError(file.path() + ":/transfer: " + e.what());
  }
  return t;
}

}  // namespace graft
