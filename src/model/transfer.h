// How a pretrained model is adapted: the [transfer] section of a training config. One engine,
// several flavours (docs/transfer.md):
//   full   every parameter trains (the default)
//   lora     the base is frozen; low-rank adapters on the projections named by lora_targets train.
//            With quantize = int8 | nf4 the frozen base is held quantized (QLoRA).
//   prompt   prompt tuning: the base is frozen; prompt_tokens trainable vectors are prepended to
//            the input embeddings.
//   feature  feature extraction: the base is frozen, only the classification head trains (or, for
//            language modelling, the LM head alone, untied from the embedding); with
//            cache_features the frozen features are computed once (an HDF5 cache) and the head
//            trains from the cache.
// A classification head (task classify) trains in every flavour. Full fine-tuning may add layer-wise
// learning-rate decay and gradual unfreezing (train/layer_schedule.h).
// Plain data here; applyTransfer() (model/transfer_apply.h) changes a loaded model accordingly.
#pragma once

#include <cstdint>
#include <string>

namespace graft {

struct TransferConfig {
  std::string mode = "full";                 // full | lora | prompt | feature
  int prompt_tokens = 20;                    // prompt mode: soft-prompt length
  int lora_rank = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  std::string lora_targets = "wq,wk,wv,wo";  // comma-separated module names or globs (see docs/transfer.md)
  std::string quantize = "none";             // none | int8 | nf4: the frozen base, lora mode only
  bool cache_features = false;               // feature mode: train the head from cached features
  double layer_lr_decay = 1.0;               // full mode: layer i of L at lr x decay^(L-1-i) (1 = off)
  std::int64_t unfreeze_every = 0;           // full mode: top layers first, one more every N steps (0 = off)

  // Checkpoints hold what trains (adapters, head) and the base model's path, not the base.
  bool adapterOnly() const { return mode == "lora" || mode == "feature" || mode == "prompt"; }
  // Throws InputError naming the transfer.* key that is out of range.
  void validate() const;
};

}  // namespace graft
