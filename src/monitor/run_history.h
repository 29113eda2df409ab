// What a run directory says about its run, read back by `graft status` and `graft plot`, and the
// run's journal, written as it goes.
//
//   RUN_DIR/metrics.jsonl   one JSON line per step (train/metrics.h; fields in docs/config.md)
//   RUN_DIR/journal.jsonl   one JSON line per event in the run's life: "start" (fresh, resumed or
//                           requeued: step, steps, ranks, checkpoint, Slurm job and restart count),
//                           "end" (status completed | stopped_early | preempted) and "error" (rank,
//                           message), each with its Unix "time"
//   RUN_DIR/tensorboard/    TensorBoard event files (monitor/tfevents.h)
//   RUN_DIR/checkpoints/    HDF5 checkpoints (checkpoint/checkpoint.h)
//
// No torch, no MPI: reading works while the run is going (a line being written is ignored) and
// after it ended.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "util/json.h"

namespace graft {

struct MetricsLine {
  std::int64_t step = 0;
  double loss = std::nan(""), lr = 0, grad_norm = std::nan("");
  std::int64_t tokens = 0;
  double tokens_per_s = 0, elapsed_s = 0;
  double time = std::nan("");  // Unix seconds when the step ended (absent in runs from before it was logged)
  bool skipped = false;
  std::int64_t skipped_total = 0;
  double val_loss = std::nan(""), val_accuracy = std::nan("");
};

// Every complete line of RUN_DIR/metrics.jsonl, in order. An unterminated last line (being
// written) is left out; a damaged complete line throws InputError naming the file and line. An
// absent file gives no lines.
std::vector<MetricsLine> readMetrics(const std::string& run_dir);

// Every complete line of RUN_DIR/journal.jsonl (absent: none) that is an object with an "event";
// lines that are not (cut short by a full disk) are skipped and counted in `damaged`.
std::vector<Json> readJournal(const std::string& run_dir, std::size_t* damaged = nullptr);

// Appends one event line with "event" and "time" first, then `fields` (an object). One write(2)
// with O_APPEND, so lines from several ranks do not interleave; a line begins with a newline when
// the file does not end with one (an earlier write was cut short).
void appendJournal(const std::string& run_dir, const std::string& event, const Json& fields);

// Unix seconds now.
double unixTime();

// RUN_DIR with any trailing '/' removed; its last component is the run's name (legends, status).
std::string runName(const std::string& run_dir);

}  // namespace graft
