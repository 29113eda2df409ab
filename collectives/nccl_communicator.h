// NCCL backend of Communicator (CUDA device buffers). Built only with GRAFT_WITH_NCCL (CMake turns
// it on when nccl.h, libnccl and the CUDA runtime are found); otherwise nccl_unavailable.cc
// provides these functions and makeNcclCommunicator() explains what is missing.
//
// Bootstrap: an MPI communicator exchanges the NCCL unique id (rank 0 creates it). Each rank uses
// CUDA device (local rank mod visible devices), which honours CUDA_VISIBLE_DEVICES. Device buffers
// go through NCCL, host buffers (hashes, the loss, the heartbeat) through that MPI communicator
// (Note [NCCL for device memory, MPI for the host]). NCCL collectives run on one stream per
// communicator, which first waits on an event recorded on the compute stream (so it reads what
// backward wrote, without a host synchronisation). Work::wait makes the compute stream wait for
// the collective's completion event and returns without blocking the host; a watchdog thread
// keeps dist.timeout_s, and on a timeout or an asynchronous NCCL error aborts the NCCL
// communicator (ncclCommAbort, never destroy) and fails it, so that its next use throws (Note
// [completion on the device] in nccl_communicator.cc). GRAFT_NCCL_WAIT=host makes Work::wait poll
// the event from the host instead.
#pragma once

#include <memory>

#include "communicator.h"

namespace graft {
bool ncclBackendAvailable();
std::unique_ptr<Communicator> makeNcclCommunicator();
}  // namespace graft
