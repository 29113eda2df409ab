// The data-parallel training loop. Every rank holds the whole model; each optimizer step reads
// one global batch (data/sampler.h), runs forward/backward on this rank's micro-batches,
// averages gradients through the Communicator (train/grad_sync.h), clips by global norm, and
// applies AdamW with the warm-up + cosine schedule. Rank 0 logs progress, appends
// RUN_DIR/metrics.jsonl, and writes checkpoints; an existing RUN_DIR is resumed from its newest
// complete checkpoint.
//
// Collective: every rank constructs a Trainer and calls run() with the same config.
#pragma once

#include <memory>

#include "communicator.h"
#include "config/train_config.h"

namespace graft {

struct TrainResult {
  std::int64_t steps_done = 0;
  double base_val_loss = 0, final_val_loss = 0;
  double tokens_per_second = 0;
  bool stopped_early = false;
};

class Trainer {
 public:
  Trainer(const TrainConfig& config, Communicator& comm);
  ~Trainer();
  TrainResult run();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace graft
