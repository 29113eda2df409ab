#include "train/batches.h"

#include <torch/torch.h>

#include <algorithm>

namespace graft {
namespace {

// Host memory for a batch bound for `device`: page-locked when that is a GPU, so that the copy
// there runs without blocking the host (the caching host allocator keeps the block until the
// copy that reads it has completed).
torch::Tensor hostTokens(at::IntArrayRef sizes, const torch::Device& device) {
  return torch::empty(sizes, torch::TensorOptions(torch::kInt64).pinned_memory(device.is_cuda()));
}

torch::Tensor toDevice(const torch::Tensor& host, const torch::Device& device) {
  return host.to(device, /*non_blocking=*/true);
}

}  // namespace

DocumentBatch documentBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, std::int64_t max_tokens,
                            const torch::Device& device) {
  std::vector<std::vector<std::int64_t>> docs(indices.size());
  std::int64_t longest = 1;
  for (std::size_t i = 0; i < indices.size(); ++i) {
    data.document(indices[i], max_tokens, docs[i]);
    if (docs[i].empty()) docs[i].push_back(0);
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(docs[i].size()));
  }
  const auto n = static_cast<std::int64_t>(indices.size());
  auto ids = hostTokens({n, longest}, device), lengths = hostTokens({n}, device);
  ids.zero_();
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& d = docs[static_cast<std::size_t>(i)];
    std::copy(d.begin(), d.end(), ids.data_ptr<std::int64_t>() + i * longest);
    lengths.data_ptr<std::int64_t>()[i] = static_cast<std::int64_t>(d.size());
  }
  DocumentBatch b{toDevice(ids, device), toDevice(lengths, device), {}};
  if (data.hasLabels()) b.labels = labelsOf(data, indices, device);
  return b;
}

torch::Tensor labelsOf(const TokenDataset& data, const std::vector<std::int64_t>& indices, const torch::Device& device) {
  auto labels = hostTokens({static_cast<std::int64_t>(indices.size())}, device);
  auto* out = labels.data_ptr<std::int64_t>();
  for (std::size_t i = 0; i < indices.size(); ++i) out[i] = data.label(indices[i]);
  return toDevice(labels, device);
}

WindowBatch windowBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, const torch::Device& device) {
  const std::int64_t n = static_cast<std::int64_t>(indices.size()), t = data.seqLen();
  auto window = hostTokens({n, t + 1}, device);
  for (std::int64_t i = 0; i < n; ++i) data.sample(indices[static_cast<std::size_t>(i)], window.data_ptr<std::int64_t>() + i * (t + 1));
  const auto on_device = toDevice(window, device);
  WindowBatch b{on_device.narrow(1, 0, t), on_device.narrow(1, 1, t), {}, n * t};
  if (countsTargets(data)) {
    auto targets = hostTokens({n, t}, device);
    for (std::int64_t i = 0; i < n; ++i) data.targets(indices[static_cast<std::size_t>(i)], targets.data_ptr<std::int64_t>() + i * t);
    const auto* values = targets.data_ptr<std::int64_t>();
    b.counted = std::count_if(values, values + n * t, [](std::int64_t v) { return v != TokenDataset::kIgnoreTarget; });
    b.targets = toDevice(targets, device);
  }
  if (data.packing() != Packing::Windows) {
    auto positions = hostTokens({n, t}, device);
    for (std::int64_t i = 0; i < n; ++i) data.positions(indices[static_cast<std::size_t>(i)], positions.data_ptr<std::int64_t>() + i * t);
    b.positions = toDevice(positions, device);
  }
  return b;
}

bool countsTargets(const TokenDataset& data) { return data.hasLossMask() || data.packing() != Packing::Windows; }

torch::Tensor windowLogits(Transformer& model, const WindowBatch& batch) { return model->forward(batch.inputs, batch.positions); }

TokenLoss tokenLoss(const torch::Tensor& logits, const WindowBatch& batch) {
  TokenLoss out;
  out.sum = torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}), batch.targets.to(logits.device(), /*non_blocking=*/true).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(TokenDataset::kIgnoreTarget));
  out.counted = batch.counted;
  return out;
}

}  // namespace graft
