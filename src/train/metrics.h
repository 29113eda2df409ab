// What a run reports as it goes: rank 0 appends one JSON object per step to RUN_DIR/metrics.jsonl
// (fields in docs/config.md), writes the same values as TensorBoard scalars to
// RUN_DIR/tensorboard/ (train.tensorboard; monitor/tfevents.h), and prints a progress line every
// train.log_every steps.
#pragma once

#include <cmath>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "communicator.h"
#include "monitor/tfevents.h"
#include "util/log.h"

namespace graft {

// Where one step's time went on rank 0, in seconds: reading and copying the micro-batches (data),
// the forward passes and loss (forward), backward with the gradient hooks that start collectives
// (backward), waiting for the gradients' collectives and the loss all-reduce (communication), and
// the gradient norm, clipping and the optimizer update (optimizer). Host time: on CUDA the device
// runs behind the host, so the phases say where the host waited.
struct StepPhases {
  double data = 0, forward = 0, backward = 0, communication = 0, optimizer = 0;
  double total() const { return data + forward + backward + communication + optimizer; }
};

struct StepReport {
  std::int64_t step = 0;
  std::int64_t start = 0;  // the step this run started after (0, or the step it resumed from)
  double loss = 0, grad_norm = 0, lr = 0;
  bool applied = true;     // false: skipped (non-finite loss or gradient)
  std::int64_t tokens_seen = 0, skipped_total = 0;
  double tokens_per_s = 0, elapsed_s = 0;
  double val_loss = std::nan("");      // when validation ran this step
  double val_accuracy = std::nan("");  // classification
  StepPhases phases;
};

// VmRSS of /proc/self/status: what this process holds in RAM now (0 where unknown).
std::int64_t residentBytes();

class Metrics {
 public:
  Metrics(std::string run_dir, std::int64_t total_steps, std::int64_t log_every, bool classify, bool tensorboard, int rank,
          Logger log);
  // Rank 0, once the run knows the step it starts after (0, or the checkpoint's): drops the
  // metrics lines and TensorBoard events past `start` (steps the checkpoint does not hold, which
  // this run will do again), opens a new event file and writes the resolved config into it as text.
  void begin(std::int64_t start, const std::string& config_text);
  // Rank 0 writes; other ranks do nothing.
  void step(const StepReport& r);
  ~Metrics();
  // Collective: the largest and smallest peak resident set over the ranks, in one line, beside the
  // peak the formulas expected (Note [expected memory] in trainer.cc; 0: none).
  void memory(Communicator& comm, std::int64_t expected_bytes = 0);

 private:
  void append(const std::string& json);
  void truncateAfter(std::int64_t step);  // drops metrics lines past `step`, and damaged ones
  void tensorboardFailed(const std::exception& e);
  std::string run_dir_, path_;
  std::int64_t total_steps_, log_every_;
  bool classify_, tensorboard_;
  std::unique_ptr<EventWriter> events_;
  int rank_;
  Logger log_;
};

}  // namespace graft
