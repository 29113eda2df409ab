// Where this process sits in the job, from the launcher's environment (Open MPI's
// OMPI_COMM_WORLD_*, Slurm's SLURM_*, PMIx's PMIX_RANK), before any MPI call.
#pragma once

#include <string>

namespace graft {

// "[r<rank>/<size> <host>] " when launched as several ranks, else "".
std::string rankPrefix();
// After an error: with several ranks, MPI_Abort so that no rank waits forever; else nothing.
void abortWorld(int code);

}  // namespace graft
