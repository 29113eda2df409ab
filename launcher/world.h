// Where this process sits in the job, from the launcher's environment (Open MPI's
// OMPI_COMM_WORLD_*, Slurm's SLURM_*, PMIx's PMIX_RANK), before any MPI call.
#pragma once

#include <string>

namespace graft {

// This process's rank in the job (0 when not launched as several).
int worldRank();
// "[r<rank>/<size> <host>] " when launched as several ranks, else "".
std::string rankPrefix();
// After an error that every rank raised at once (AgreedError): waits until every rank is here
// (what each had to say is said), so that the first to exit does not cut the others short.
void leaveTogether();
// After an error: with several ranks, MPI_Abort so that no rank waits forever; else nothing.
void abortWorld(int code);

}  // namespace graft
