#include "world.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>

namespace graft {
namespace {
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}
int envInt(const char* name, int fallback) {
  const char* v = env(name);
  return v ? std::atoi(v) : fallback;
}
int worldSize() {
  return envInt("OMPI_COMM_WORLD_SIZE", envInt("PMIX_SIZE", envInt("SLURM_NTASKS", 1)));
}
}  // namespace

int worldRank() { return envInt("OMPI_COMM_WORLD_RANK", envInt("PMIX_RANK", envInt("SLURM_PROCID", 0))); }

std::string rankPrefix() {
  if (worldSize() <= 1) return "";
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  return "[r" + std::to_string(worldRank()) + "/" + std::to_string(worldSize()) + " " + host + "] ";
}

void leaveTogether() {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised && worldSize() > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void abortWorld(int code) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised && worldSize() > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace graft
