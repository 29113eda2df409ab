// Tensors from a TokenDataset, and the losses on them, as training, validation and `graft eval`
// all read them, so that the three agree by construction:
//   documentBatch  classification: whole documents (cut to max_tokens), right-padded
//   windowBatch    language modelling: seq_len + 1 token windows split into inputs and targets
//   tokenLoss      summed next-token cross-entropy over the targets that count
//
// Every batch lands on `device`, the model's: it is assembled in host memory (page-locked when
// the device is a GPU) and copied without blocking the host, so reading the next micro-batch
// overlaps the device's work on this one. What the host needs to know about a batch (how many
// targets count) is counted before the copy, never read back from the device.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "model/transformer.h"

namespace graft {

// ids [B, T] (T = the longest document, padded with 0; an empty document holds one 0 so it has a
// position to pool), lengths [B], labels [B] (undefined when the dataset has no labels).
struct DocumentBatch {
  torch::Tensor ids, lengths, labels;
};
DocumentBatch documentBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, std::int64_t max_tokens,
                            const torch::Device& device);

// The labels of documents `indices`, int64 [B] on `device`.
torch::Tensor labelsOf(const TokenDataset& data, const std::vector<std::int64_t>& indices, const torch::Device& device);

// inputs [B, seq_len]; targets [B, seq_len]: the next tokens, with TokenDataset::kIgnoreTarget where
// a loss mask says the token is not learned (prompt/completion data, conversations), across the
// end of a packed document and on padding; positions [B, seq_len] under documents or padded
// packing (Transformer::forward's), undefined for windows; counted: how many targets are not
// kIgnoreTarget.
struct WindowBatch {
  torch::Tensor inputs, targets, positions;
  std::int64_t counted = 0;
};
WindowBatch windowBatch(const TokenDataset& data, const std::vector<std::int64_t>& indices, const torch::Device& device);

// Whether the data's samples differ in how many targets count (a loss mask, or packed documents),
// so that losses are taken per target (windowBatch counts them; Note [a token's weight in the loss]).
bool countsTargets(const TokenDataset& data);

// The model's logits for the batch: Transformer::forward with the batch's positions.
torch::Tensor windowLogits(Transformer& model, const WindowBatch& batch);

// The batch's logits [B, seq_len, V] against its targets: the summed cross-entropy over the
// targets that count (a scalar tensor on the logits' device, differentiable) and how many count.
struct TokenLoss {
  torch::Tensor sum;
  std::int64_t counted = 0;
};
TokenLoss tokenLoss(const torch::Tensor& logits, const WindowBatch& batch);

}  // namespace graft
