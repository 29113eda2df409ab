// NCCL backend of Communicator (CUDA device buffers). Built only with GRAFT_WITH_NCCL (CMake turns
// it on when nccl.h, libnccl and the CUDA runtime are found); otherwise nccl_unavailable.cc
// provides these functions and makeNcclCommunicator() explains what is missing.
//
// Bootstrap: an MPI communicator exchanges the NCCL unique id (rank 0 creates it). Each rank uses
// CUDA device (local rank mod visible devices), which honours CUDA_VISIBLE_DEVICES. Collectives run
// on one stream per communicator; Work::wait polls a CUDA event and, on timeout or an asynchronous
// NCCL error, aborts the NCCL communicator (ncclCommAbort) instead of destroying it.
#pragma once

#include <memory>

#include "communicator.h"

namespace graft {
bool ncclBackendAvailable();
bool cudaDeviceVisible();
std::unique_ptr<Communicator> makeNcclCommunicator();
}  // namespace graft
