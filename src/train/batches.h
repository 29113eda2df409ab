// Tensors from a TokenDataset, and the losses on them, as training, validation and `graft eval`
// all read them, so that the three agree by construction:
//   documentBatch  classification: whole documents (cut to max_tokens), right-padded
//   windowBatch    language modelling: seq_len + 1 token windows split into inputs and targets
//   tokenLoss      summed next-token cross-entropy over the targets that count
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "data/dataset.h"

namespace graft {

// ids [B, T] (T = the longest document, padded with 0; an empty document holds one 0 so it has a
// position to pool), lengths [B], labels [B] (undefined when the dataset has no labels).
struct DocumentBatch {
  torch::Tensor ids, lengths, labels;
};
DocumentBatch documentBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, std::int64_t max_tokens);

// The labels of documents `indices`, int64 [B].
torch::Tensor labelsOf(const TokenDataset& data, const std::vector<std::int64_t>& indices);

// inputs [B, seq_len]; targets [B, seq_len]: the next tokens, with TokenDataset::kIgnoreTarget where
// a loss mask says the token is not learned (prompt/completion data).
struct WindowBatch {
  torch::Tensor inputs, targets;
};
WindowBatch windowBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices);

// logits [..., V] against targets [...]: the summed cross-entropy over targets that are not
// kIgnoreTarget (a scalar tensor, differentiable) and how many there are.
struct TokenLoss {
  torch::Tensor sum;
  std::int64_t counted = 0;
};
TokenLoss tokenLoss(const torch::Tensor& logits, const torch::Tensor& targets);

}  // namespace graft
