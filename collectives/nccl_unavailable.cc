// Stand-in for the NCCL backend in builds without GRAFT_WITH_NCCL.
#include "nccl_communicator.h"

namespace graft {
bool ncclBackendAvailable() { return false; }
std::unique_ptr<Communicator> makeNcclCommunicator() {
  throw CollectiveError(
      "the nccl backend is not in this build: configure with -DGRAFT_WITH_NCCL=ON on a machine with the CUDA "
      "toolkit and nccl.h (use --dist.backend=mpi on CPUs)");
}
}  // namespace graft
