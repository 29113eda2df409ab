// Stop requests by signal. SIGTERM (what Slurm and `scontrol requeue` send, and what mpirun
// forwards) and SIGUSR1 (Slurm's --signal) only set a flag; the trainer polls it once per step,
// all ranks agree on it at the next step boundary, write a checkpoint, and the process exits with
// kExitRequeue (docs/exit-codes.md). A second SIGTERM/SIGUSR1 is handled the same way.
#pragma once

namespace graft {

void installStopSignals();
bool stopRequested();

}  // namespace graft
