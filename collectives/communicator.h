// Communicator: the collectives graft needs, over raw host buffers.
//
// Contract: every function below is a collective. All ranks of the communicator must call the
// same functions, in the same order, with the same sizes; `tag` is a short human label (e.g.
// "grad/flat", "val/loss") that appears in error messages together with a per-communicator
// sequence number, so a mismatch or a failure names what each rank was doing.
//
// Errors throw CollectiveError. A communicator that threw must not be used again: the caller
// lets the exception reach main(), which aborts the job (see launcher/main.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace graft {

enum class ReduceOp { Sum, Max, Min };

class CollectiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and count of the ranks that share this host (for thread and device binding).
  virtual int localRank() const = 0;
  virtual int localSize() const = 0;
  virtual std::string backend() const = 0;

  // In-place reduction of `count` elements; every rank ends with the reduced values.
  virtual void allReduce(float* data, std::size_t count, ReduceOp op, const char* tag) = 0;
  virtual void allReduce(double* data, std::size_t count, ReduceOp op, const char* tag) = 0;
  virtual void allReduce(std::int64_t* data, std::size_t count, ReduceOp op, const char* tag) = 0;
  // `bytes` from `root` to every rank.
  virtual void broadcast(void* data, std::size_t bytes, int root, const char* tag) = 0;
  // Rank r's `bytes` land at recv + r * bytes on every rank (recv holds size() * bytes).
  virtual void allGather(const void* send, std::size_t bytes, void* recv, const char* tag) = 0;
  virtual void barrier(const char* tag) = 0;

 protected:
  Communicator() = default;
};

// backend: "local" (one process, collectives are copies) or "mpi" (initialises MPI if needed and
// finalises it when the communicator is destroyed).
std::unique_ptr<Communicator> makeCommunicator(const std::string& backend);

}  // namespace graft
