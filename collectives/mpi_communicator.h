// MPI backend of Communicator (CPU buffers). Initialises MPI (MPI_THREAD_FUNNELED) unless the
// process already did, duplicates MPI_COMM_WORLD with MPI_ERRORS_RETURN so failures become
// CollectiveError instead of an abort without context, and finalises MPI on destruction if it
// initialised it.
#pragma once

#include <memory>

#include "communicator.h"

namespace graft {
std::unique_ptr<Communicator> makeMpiCommunicator();
}  // namespace graft
