#include "world.h"

#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>

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
  if (!initialised || finalised || worldSize() <= 1) return;
  // At most a minute: a rank that hangs on its way out (a stuck file system) holds no one back.
  MPI_Request request;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &request) != MPI_SUCCESS) return;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int done = 0; !done && std::chrono::steady_clock::now() < deadline;) {
    if (MPI_Test(&request, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return;
    if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void abortWorld(int code) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (initialised && !finalised && worldSize() > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace graft
