#include "train/batches.h"

#include <torch/torch.h>

#include <algorithm>

namespace graft {

DocumentBatch documentBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, std::int64_t max_tokens) {
  std::vector<std::vector<std::int64_t>> docs(indices.size());
  std::int64_t longest = 1;
  for (std::size_t i = 0; i < indices.size(); ++i) {
    data.document(indices[i], max_tokens, docs[i]);
    if (docs[i].empty()) docs[i].push_back(0);
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(docs[i].size()));
  }
  const auto n = static_cast<std::int64_t>(indices.size());
  DocumentBatch b{torch::zeros({n, longest}, torch::kInt64), torch::empty({n}, torch::kInt64), {}};
  auto* lengths = b.lengths.data_ptr<std::int64_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& d = docs[static_cast<std::size_t>(i)];
    std::copy(d.begin(), d.end(), b.ids.data_ptr<std::int64_t>() + i * longest);
    lengths[i] = static_cast<std::int64_t>(d.size());
  }
  if (data.hasLabels()) b.labels = labelsOf(data, indices);
  return b;
}

torch::Tensor labelsOf(const TokenDataset& data, const std::vector<std::int64_t>& indices) {
  auto labels = torch::empty({static_cast<std::int64_t>(indices.size())}, torch::kInt64);
  auto* out = labels.data_ptr<std::int64_t>();
  for (std::size_t i = 0; i < indices.size(); ++i) out[i] = data.label(indices[i]);
  return labels;
}

WindowBatch windowBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices) {
  const std::int64_t n = static_cast<std::int64_t>(indices.size()), t = data.seqLen();
  auto window = torch::empty({n, t + 1}, torch::kInt64);
  for (std::int64_t i = 0; i < n; ++i) data.sample(indices[static_cast<std::size_t>(i)], window.data_ptr<std::int64_t>() + i * (t + 1));
  WindowBatch b{window.narrow(1, 0, t), window.narrow(1, 1, t)};
  if (data.hasLossMask()) {
    b.targets = torch::empty({n, t}, torch::kInt64);
    for (std::int64_t i = 0; i < n; ++i) data.targets(indices[static_cast<std::size_t>(i)], b.targets.data_ptr<std::int64_t>() + i * t);
  }
  return b;
}

TokenLoss tokenLoss(const torch::Tensor& logits, const torch::Tensor& targets) {
  TokenLoss out;
  out.sum = torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), targets.to(logits.device(), /*non_blocking=*/true).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(TokenDataset::kIgnoreTarget));
  out.counted = targets.ne(TokenDataset::kIgnoreTarget).sum().item<std::int64_t>();
  return out;
}

}  // namespace graft
