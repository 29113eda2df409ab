// The training run's side of a checkpoint: how what each rank holds reaches the checkpoint file
// (checkpoint/checkpoint.h has the file itself).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"
#include "communicator.h"
#include "optim/adamw.h"

namespace graft {

// Collective, beside a heartbeat (Note [heartbeat]). For a sharded optimizer (each rank holds its
// rows, parallel/data_parallel.h): every rank writes its rows of the state of checkpoint `step`
// into its own part file in `dir`, at the same time, then the parts' checksums go to rank 0. Returns
// on rank 0 the writer of the checkpoint's /optimizer group, an index that maps every part (empty
// elsewhere). No rank ever holds another rank's rows. `limit_s`: how long a part may take.
OptimizerWriter writeOptimizerParts(Communicator& comm, const std::string& dir, std::int64_t step,
                                    std::shared_ptr<const AdamW> optimizer, double limit_s);

// The writer of a whole (replicated) optimizer: rank 0 writes every tensor itself.
OptimizerWriter wholeOptimizer(std::shared_ptr<const AdamW> optimizer);

}  // namespace graft
