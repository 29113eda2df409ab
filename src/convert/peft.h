// PEFT LoRA adapters in and out, with module names from the Hugging Face name map.
#pragma once

#include <string>

#include "model/transformer.h"

namespace graft {

// PEFT's LoRA adapter format: adapter_config.json + adapter_model.safetensors with names
// base_model.model.<HF module>.lora_{A,B}.weight (B's rows follow Note [rotary layouts] for q/k).
// gpt2's q/k/v live in one fused c_attn in transformers: their adapters are written as one exact
// c_attn adapter of a larger rank, and read back the same way (Note [fused c_attn] in peft.cc).
// PEFT's rank_pattern / alpha_pattern are honoured. `base_model` is recorded as base_model_name_or_path.
void savePeftAdapter(Transformer& model, const std::string& dir, const std::string& base_model);
// Adds the adapters of a PEFT folder to `model` (rank, alpha and targets from its config).
void loadPeftAdapter(Transformer& model, const std::string& dir);

}  // namespace graft
