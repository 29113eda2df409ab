#include "train/evaluation.h"

#include <torch/torch.h>

#include "train/batches.h"

namespace graft {
namespace {

// Rank r's indices of [0, n): r, r + world, ...
std::vector<std::int64_t> myShare(std::int64_t n, const Communicator& comm) {
  std::vector<std::int64_t> mine;
  for (std::int64_t i = comm.rank(); i < n; i += comm.size()) mine.push_back(i);
  return mine;
}

// This rank's share of [0, n) in micro-batches of `size`: each(part, counted). With `same_passes`
// every rank makes as many forward passes as rank 0 (dist.shard = parameters gathers inside each,
// and a gather is a collective): a rank with fewer items runs the missing ones on item 0, uncounted.
template <typename Each>
void inMicroBatches(std::int64_t n, const Communicator& comm, std::int64_t size, bool same_passes, Each each) {
  const auto mine = myShare(n, comm);
  const std::int64_t most = (n + comm.size() - 1) / comm.size();
  const std::int64_t passes = same_passes ? (most + size - 1) / size : (static_cast<std::int64_t>(mine.size()) + size - 1) / size;
  for (std::int64_t i = 0; i < passes; ++i) {
    const std::size_t at = static_cast<std::size_t>(i * size);
    if (at >= mine.size()) {
      each(std::vector<std::int64_t>{0}, false);
      continue;
    }
    each(std::vector<std::int64_t>(mine.begin() + static_cast<std::ptrdiff_t>(at),
                                   mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), at + size))),
         true);
  }
}

}  // namespace

at::Tensor classLogits(Transformer& model, const TokenDataset& data, const at::Tensor& cache,
                       const std::vector<std::int64_t>& indices, int seq_len, at::Tensor& labels) {
  labels = labelsOf(data, indices, model->device());
  if (cache.defined())
    return model->classifyPooled(cache.index_select(0, torch::tensor(indices, torch::kInt64).to(cache.device())));
  const auto b = documentBatch(data, indices, seq_len, model->device());
  return model->classifySequences(b.ids, b.lengths);
}

Validation validate(Transformer& model, const TokenDataset& val, const at::Tensor& val_features, bool classify,
                    const TrainConfig& c, Communicator& comm, bool same_passes) {
  torch::NoGradGuard no_grad;
  model->eval();
  Validation out;
  if (classify) {
    double totals[3] = {0, 0, 0};  // loss sum, correct, documents
    inMicroBatches(val.numDocuments(), comm, c.micro_batch, same_passes, [&](const std::vector<std::int64_t>& part, bool counted) {
      torch::Tensor labels;
      auto logits = classLogits(model, val, val_features, part, c.seq_len, labels);
      if (!counted) return;
      totals[0] += torch::nn::functional::cross_entropy(
                       logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                       .item<double>();
      totals[1] += logits.argmax(1).eq(labels).sum().item<double>();
      totals[2] += static_cast<double>(part.size());
    });
    model->train();
    comm.allReduce(totals, 3, ReduceOp::Sum, "val/classify");
    if (totals[2] > 0) out = {totals[0] / totals[2], totals[1] / totals[2]};
    return out;
  }
  const std::int64_t n = std::min(c.eval_batches * c.micro_batch * comm.size(), val.numSamples());
  double totals[2] = {0, 0};  // loss sum, targets counted (token-weighted)
  inMicroBatches(n, comm, c.micro_batch, same_passes, [&](const std::vector<std::int64_t>& part, bool counted) {
    const auto batch = windowBatch(val, part, model->device());
    const auto loss = tokenLoss(windowLogits(model, batch), batch);
    if (!counted) return;
    totals[0] += loss.sum.item<double>();
    totals[1] += static_cast<double>(loss.counted);
  });
  model->train();
  comm.allReduce(totals, 2, ReduceOp::Sum, "val/loss");
  if (totals[1] > 0) out.loss = totals[0] / totals[1];
  return out;
}

}  // namespace graft
