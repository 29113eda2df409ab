#include "model/transfer_apply.h"

#include <fnmatch.h>
#include <torch/torch.h>

#include <sstream>

#include "util/error.h"

namespace graft {

namespace {

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> out;
  std::istringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    const auto a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    if (a != std::string::npos) out.push_back(item.substr(a, b - a + 1));
  }
  return out;
}

// "wq" matches every layers.<i>.attention.wq; a pattern with a dot or glob characters is matched
// against the whole path ("layers.1?.attention.*").
bool targeted(const std::string& path, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns)
    if (fnmatch(p.c_str(), path.c_str(), 0) == 0 || fnmatch(("*." + p).c_str(), path.c_str(), 0) == 0) return true;
  return false;
}

}  // namespace

std::vector<std::string> applyTransfer(Transformer& model, const TransferConfig& t, std::uint64_t seed, const RowFill& fill) {
  t.validate();
  if (t.mode == "full") return {};
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  if (model->head) model->head->weight.set_requires_grad(true);  // a new head always trains
  if (t.mode == "prompt") {
    WithValues embeddings("tok_embeddings.weight", model->tok_embeddings->weight, fill);
    model->addSoftPrompt(t.prompt_tokens, seed);
    return {"soft_prompt"};
  }
  if (t.mode == "feature") {
    if (model->head) return {"head"};
    // Language modelling: the LM head alone trains, untied from the (frozen) input embedding.
    if (t.cache_features) throw InputError("transfer.cache_features needs a labelled dataset (a classification head)");
    WithValues embeddings("tok_embeddings.weight", model->tok_embeddings->weight, fill);
    model->untieClassifier();
    model->output->weight.set_requires_grad(true);
    return {"output"};
  }
  const auto patterns = split(t.lora_targets);
  auto gen = at::detail::createCPUGenerator(seed ^ 0x10aaULL);
  std::vector<std::string> adapted;
  const QuantKind kind = parseQuantKind(t.quantize, "transfer.quantize");
  for (auto& [path, projection] : model->projections()) {
    if (kind != QuantKind::None && !projection->quantized()) {  // QLoRA: every frozen projection, adapted or not
      WithValues weight(path + ".weight", projection->weight, fill);
      projection->quantize(kind);
    }
    if (!targeted(path, patterns)) continue;
    projection->addLora(t.lora_rank, t.lora_alpha, t.lora_dropout, gen);
    adapted.push_back(path);
  }
  if (adapted.empty())
    throw InputError("transfer.lora_targets = '" + t.lora_targets +
                     "' matches no projection (names look like layers.0.attention.wq, layers.0.feed_forward.w1, output)");
  return adapted;
}

void mergeAdapters(Transformer& model) {
  for (auto& [path, projection] : model->projections()) {
    projection->dequantizeBase();
    projection->mergeLora();
  }
}

std::int64_t trainableParameters(Transformer& model) {
  std::int64_t n = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) n += p.numel();
  return n;
}

std::int64_t totalParameters(Transformer& model) {
  std::int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  for (auto& [path, projection] : model->projections())
    if (projection->quantized()) n += projection->in_features * static_cast<std::int64_t>(projection->out_features);
  return n;
}

std::int64_t frozenBytes(Transformer& model) {
  std::int64_t bytes = 0;
  for (const auto& p : model->parameters())
    if (!p.requires_grad()) bytes += p.numel() * 4;
  for (auto& [path, projection] : model->projections())
    if (projection->quantized()) bytes += projection->quantizedWeight().bytes();
  return bytes;
}

}  // namespace graft
