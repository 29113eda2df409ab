// Applying a TransferConfig to a loaded model: LoRA adapters, the quantized frozen base, and which
// parameters train (requires_grad). Deterministic from `seed`, so every rank builds the same model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/parameter_storage.h"
#include "model/transfer.h"
#include "model/transformer.h"

namespace graft {

// Returns the module paths that received an adapter (empty for full fine-tuning). A model built
// without memory (model/parameter_storage.h) has the base weights the transfer reads (the
// embeddings a soft prompt starts from, the weights QLoRA quantises) filled whole from `fill`,
// one at a time, and released again.
std::vector<std::string> applyTransfer(Transformer& model, const TransferConfig& transfer, std::uint64_t seed,
                                       const RowFill& fill = {});

// Folds every adapter into its (dequantized) weight: a plain model that equals the adapted one.
void mergeAdapters(Transformer& model);

// Parameters with requires_grad, and all of them.
std::int64_t trainableParameters(Transformer& model);
std::int64_t totalParameters(Transformer& model);
// Bytes the frozen weights occupy as held (quantized codes + scales, or float32).
std::int64_t frozenBytes(Transformer& model);

}  // namespace graft
