// PEFT LoRA adapters in both directions (convert/peft.h), with module names from the Hugging
// Face name map (convert/hf_names.h).
#include "convert/peft.h"

#include <torch/torch.h>

#include <array>
#include <map>

#include "convert/hf_names.h"
#include "formats/safetensors.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
using namespace hf;
namespace {

// Note [fused c_attn]: transformers' GPT-2 computes q, k and v with one Conv1D, c_attn [d, 3d], so
// PEFT puts one adapter on it: lora_A [r', d], lora_B [3d, r']. graft's separate q/k/v adapters
// (rank r each) are written exactly as one of rank r' = r x (adapters present): A stacks their
// A's, B is block-diagonal (zero rows for a projection without adapter), and alpha' = alpha x r' / r
// keeps the scale alpha / r (rank_pattern / alpha_pattern say so for c_attn). Reading a c_attn
// adapter back, q, k and v each get A and their third of B's rows: again exact.

// PEFT's rank_pattern / alpha_pattern: the value of the first key the module name ends with.
const Json* patternFor(const Json& j, const char* key, const std::string& module) {
  const Json* pattern = j.find(key);
  if (!pattern || !pattern->isObject()) return nullptr;
  for (const auto& [suffix, value] : pattern->asObject(key))
    if (module == suffix || endsWith(module, "." + suffix)) return &value;
  return nullptr;
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
