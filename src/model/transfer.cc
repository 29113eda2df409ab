#include "model/transfer.h"

#include "util/error.h"

namespace graft {

void TransferConfig::validate() const {
  if (mode != "full" && mode != "lora" && mode != "feature" && mode != "prompt")
    throw InputError("transfer.mode = '" + mode + "' is not full, lora, prompt or feature");
  if (prompt_tokens <= 0 || prompt_tokens > 4096) throw InputError("transfer.prompt_tokens must be in [1, 4096]");
  if (lora_rank <= 0 || lora_rank > 4096) throw InputError("transfer.lora_rank must be in [1, 4096]");
  if (!(lora_alpha > 0)) throw InputError("transfer.lora_alpha must be positive");
  if (lora_dropout < 0 || lora_dropout >= 1) throw InputError("transfer.lora_dropout must be in [0, 1)");
  if (quantize != "none" && quantize != "int8" && quantize != "nf4")
    throw InputError("transfer.quantize = '" + quantize + "' is not none, int8 or nf4");
  if (mode == "full" && quantize != "none")
    throw InputError("transfer.quantize = " + quantize + " needs transfer.mode = lora (a quantized base cannot be trained)");
  if (cache_features && mode != "feature") throw InputError("transfer.cache_features needs transfer.mode = feature");
  if (!(layer_lr_decay > 0 && layer_lr_decay <= 1)) throw InputError("transfer.layer_lr_decay must be in (0, 1]");
  if (unfreeze_every < 0) throw InputError("transfer.unfreeze_every must not be negative");
  if ((layer_lr_decay < 1 || unfreeze_every > 0) && mode != "full")
    throw InputError("transfer.layer_lr_decay and transfer.unfreeze_every apply to transfer.mode = full");
}

}  // namespace graft
