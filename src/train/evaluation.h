// Validation during training: the loss (and accuracy, when classifying) of the validation split,
// shared out over the ranks; and the class logits that training and validation both read.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "communicator.h"
#include "config/train_config.h"
#include "data/dataset.h"
#include "model/transformer.h"

namespace graft {

// Class logits of documents `indices` of `data` (and their labels): from `cache`, the frozen base's
// pooled features of every document (feature_cache.h), when defined, else a forward pass.
at::Tensor classLogits(Transformer& model, const TokenDataset& data, const at::Tensor& cache,
                       const std::vector<std::int64_t>& indices, int seq_len, at::Tensor& labels);

struct Validation {
  double loss = std::nan("");
  double accuracy = std::nan("");  // classification only
};

// Collective. Language modelling: the token-weighted mean loss over the first eval.batches x
// micro_batch x world sequences. Classification: loss and accuracy over the whole split.
// `same_passes`: every rank runs as many forward passes (the model gathers its units, ZeRO-3).
Validation validate(Transformer& model, const TokenDataset& val, const at::Tensor& val_features, bool classify,
                    const TrainConfig& c, Communicator& comm, bool same_passes);

}  // namespace graft
