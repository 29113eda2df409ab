// llama2.c checkpoints ("version 0": 7-int header, then float32 arrays; see
// ../shared/data/llama2c/FORMAT.md). The rotary pairing of llama2.c is graft's, so no permutation.
#pragma once

#include <string>

#include "model/transformer.h"

namespace graft {

// Reads the file; throws InputError naming the file and the field/tensor on any inconsistency
// (bad header, truncated or oversized file).
Transformer loadLlama2c(const std::string& path);
// Writes `model` in the same format (legacy RoPE tables included, as run.c expects to skip them).
void saveLlama2c(Transformer& model, const std::string& path);

}  // namespace graft
