// MPI backend of Communicator (host buffers, non-blocking collectives). Initialises MPI (asking
// for MPI_THREAD_MULTIPLE, for SharedFile writes on a helper thread: Note [MPI-IO beside the
// heartbeat]; call the communicator itself from the thread that created it) unless the process already did,
// works on duplicates of MPI_COMM_WORLD with MPI_ERRORS_RETURN so failures become
// CollectiveError, and finalises MPI on destruction if it initialised it.
//
// Note [who did not arrive]: MPI cannot tell which ranks have not entered a collective. When a
// wait times out, this rank sends a small notice (sequence number, op, tag) to every peer on a
// side communicator and listens for theirs for a short grace period. Peers stuck in the same
// collective time out too and answer with the same sequence number; the ranks that stay silent,
// or report another collective, are the ones named as not arrived. Nothing is sent while all goes
// well.
#pragma once

#include <cstdint>
#include <memory>

#include "communicator.h"

namespace graft {
std::unique_ptr<Communicator> makeMpiCommunicator();
// Tests: the most bytes a rank writes in one collective call of a SharedFile (default 1 GiB), to
// exercise several rounds on small files.
void setSharedFileRoundBytesForTesting(std::uint64_t bytes);
}  // namespace graft
