// What a run reports as it goes: rank 0 appends one JSON object per step to RUN_DIR/metrics.jsonl
// (fields in docs/config.md) and prints a progress line every train.log_every steps.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include "communicator.h"
#include "util/log.h"

namespace graft {

struct StepReport {
  std::int64_t step = 0;
  std::int64_t start = 0;  // the step this run started after (0, or the step it resumed from)
  double loss = 0, grad_norm = 0, lr = 0;
  bool applied = true;     // false: skipped (non-finite loss or gradient)
  std::int64_t tokens_seen = 0, skipped_total = 0;
  double tokens_per_s = 0, elapsed_s = 0;
  double val_loss = std::nan("");      // when validation ran this step
  double val_accuracy = std::nan("");  // classification
};

class Metrics {
 public:
  Metrics(std::string run_dir, std::int64_t total_steps, std::int64_t log_every, bool classify, int rank, Logger log);
  // Rank 0 writes; other ranks do nothing.
  void step(const StepReport& r);
  // Rank 0: drops lines past `step` (they belong to work the checkpoint resumed from does not hold).
  void truncateAfter(std::int64_t step);
  // Collective: the largest and smallest peak resident set over the ranks, in one line.
  void memory(Communicator& comm);

 private:
  void append(const std::string& json);
  std::string path_;
  std::int64_t total_steps_, log_every_;
  bool classify_;
  int rank_;
  Logger log_;
};

}  // namespace graft
