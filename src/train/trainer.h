// The data-parallel training loop. Every rank holds the whole model; each optimizer step reads
// one global batch (data/sampler.h), runs forward/backward on this rank's micro-batches,
// averages gradients through the GradReducer (parallel/grad_reducer.h), clips by global norm, and
// applies AdamW with the warm-up + cosine schedule. A step whose loss or gradient norm is not
// finite (on any rank) is skipped on every rank and counted; train.max_bad_steps in a row stop the
// run. A stop request (SIGTERM/SIGUSR1 on any rank, see launcher/signals.h) is agreed on at the next
// step boundary through the step's loss all-reduce; the run then checkpoints and returns preempted. Rank 0 logs progress, appends
// RUN_DIR/metrics.jsonl, and writes checkpoints; an existing RUN_DIR is resumed from its newest
// complete checkpoint.
//
// Collective: every rank constructs a Trainer and calls run() with the same config.
#pragma once

#include <functional>
#include <memory>

#include "communicator.h"
#include "config/train_config.h"

namespace graft {

struct TrainResult {
  std::int64_t steps_done = 0;
  double base_val_loss = 0, final_val_loss = 0;
  double tokens_per_second = 0;
  bool stopped_early = false;  // train.stop_after reached
  bool preempted = false;      // a stop was requested; a checkpoint of steps_done was written
  std::int64_t skipped_steps = 0;
};

class Trainer {
 public:
  // `stop_requested` is polled once per step on every rank (may be empty).
  Trainer(const TrainConfig& config, Communicator& comm, std::function<bool()> stop_requested = {});
  ~Trainer();
  TrainResult run();

 private:
  struct State;
  std::shared_ptr<State> s_;  // shared: a helper thread may hold it while the run stops on an error
};

}  // namespace graft
