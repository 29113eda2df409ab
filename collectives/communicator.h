// Communicator: the collectives graft needs, over raw buffers (host memory for the MPI and local
// backends, CUDA device memory for NCCL), each started asynchronously and returning a Work.
//
// Contract: every collective below must be called by all ranks of the communicator, in the same
// order, with the same counts, types and roots; `tag` is a short label (e.g. "grad/bucket3",
// "val/loss") that appears in errors together with a per-communicator sequence number, so a
// mismatch or a hang names what each rank was doing.
//
// Errors throw CollectiveError. A communicator that saw an error (a timeout included) is failed:
// it is never used again and not torn down collectively; main() aborts the job (MPI_Abort), since
// the other ranks may be stuck in the collective that failed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace graft {

enum class ReduceOp { Sum, Max, Min };
enum class DType { Float32, Float64, Int32, Int64, UInt8, BFloat16, Float16 };
std::size_t sizeOf(DType type);
const char* nameOf(DType type);

template <typename T> constexpr DType dtypeOf();
template <> constexpr DType dtypeOf<float>() { return DType::Float32; }
template <> constexpr DType dtypeOf<double>() { return DType::Float64; }
template <> constexpr DType dtypeOf<std::int32_t>() { return DType::Int32; }
template <> constexpr DType dtypeOf<std::int64_t>() { return DType::Int64; }
template <> constexpr DType dtypeOf<std::uint8_t>() { return DType::UInt8; }

class CollectiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One in-flight collective. Owned by the caller; buffers must stay alive until it completes, and
// the Work must not outlive its communicator.
class Work {
 public:
  virtual ~Work() = default;
  // Drives progress; true once the collective has completed on this rank.
  virtual bool test() = 0;
  // Blocks until completion. After `timeout` with no completion it throws a CollectiveError that
  // names the operation, tag, sequence number, this rank, and the ranks that did not arrive.
  // A Work whose wait timed out may be waited on again (for example with a longer timeout), on
  // MPI; on NCCL a timeout fails the communicator, and its Works then throw.
  // Device buffers (NCCL): returns once the result is ordered before all later work of the
  // compute stream, without blocking the host; the timeout is kept by the communicator, whose
  // next use throws when the collective did not complete in time (nccl_communicator.h).
  virtual void wait(std::chrono::milliseconds timeout) = 0;
};
using WorkPtr = std::unique_ptr<Work>;

// An I/O error of a SharedFile (the file named in the message); not a failed communicator.
class FileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An existing file that every rank writes its own byte ranges of at the same time: MPI-IO
// collective writes on the MPI backend, plain pwrite where one rank is the world.
class SharedFile {
 public:
  struct Piece {
    std::uint64_t offset = 0;  // in the file
    const void* data = nullptr;
    std::uint64_t bytes = 0;
  };
  virtual ~SharedFile() = default;
  // Collective over the ranks that opened the file, each with its own pieces (none is fine; no two
  // pieces, of this rank or another's, may overlap): writes them, flushes the file to storage and
  // closes it. Runs on any one thread (see openSharedFile). Throws FileError on an I/O error,
  // naming the file.
  virtual void writeAndClose(std::vector<Piece> pieces) = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Rank and count of the ranks that share this host (thread and device binding).
  virtual int localRank() const = 0;
  virtual int localSize() const = 0;
  virtual std::string backend() const = 0;
  // True when a started collective advances while the caller computes (NCCL on its own stream).
  // MPI here advances only inside MPI calls (the thread that called them; no progress thread), so work
  // started early gains nothing on it: dist.prefetch = auto then stays off.
  virtual bool progressesWhileComputing() const { return false; }
  // True when collectives take CUDA device buffers (NCCL). The others take host memory only, and
  // tensor collectives stage CUDA tensors through it (parallel/tensor_collectives.h).
  virtual bool carriesDeviceMemory() const { return false; }

  // Collective: opens the existing file at `path` for SharedFile writes by every rank. nullptr,
  // with the reason in *why_not, where this communicator cannot (MPI without
  // MPI_THREAD_MULTIPLE, no MPI-IO component, a file system that refuses): all ranks agree. Like
  // the SharedFile's own calls it may run on a helper thread while this thread runs the
  // communicator's collectives (a heartbeat): they have a communicator of their own. One
  // SharedFile at a time.
  virtual std::unique_ptr<SharedFile> openSharedFile(const std::string& path, std::string* why_not) = 0;

  // In place: every rank ends with the reduction of all ranks' `count` elements.
  virtual WorkPtr allReduceAsync(void* data, std::size_t count, DType type, ReduceOp op, const char* tag) = 0;
  // `send` holds size() blocks of `count` elements; rank r receives the reduction of block r.
  virtual WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                                     const char* tag) = 0;
  // The same reduction, added in whatever order the backend finds fastest (the MPI backend: a ring
  // of its own, Note [ring reduce-scatter] in mpi_communicator.cc), where the caller has not
  // promised the bits of another way of summing; by default reduceScatterAsync. The MPI ring
  // moves only while its Work is tested or waited for: wait for it before starting another
  // collective on this communicator, or a peer waiting in the ring waits for ever.
  virtual WorkPtr reduceScatterAnyOrderAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                                             const char* tag) {
    return reduceScatterAsync(send, recv, count, type, op, tag);
  }
  // Rank r's `count` elements land at block r of `recv` (size() * count elements) on every rank.
  virtual WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char* tag) = 0;
  virtual WorkPtr broadcastAsync(void* data, std::size_t count, DType type, int root, const char* tag) = 0;
  virtual WorkPtr barrierAsync(const char* tag) = 0;

  // Blocking forms: start, then wait(timeout()). Typed ones count elements of T; the *Bytes forms
  // move raw bytes (strings, structs, tensors of any dtype).
  template <typename T>
  void allReduce(T* data, std::size_t count, ReduceOp op, const char* tag) {
    allReduceAsync(data, count, dtypeOf<T>(), op, tag)->wait(timeout_);
  }
  template <typename T>
  void broadcast(T* data, std::size_t count, int root, const char* tag) {
    broadcastAsync(data, count, dtypeOf<T>(), root, tag)->wait(timeout_);
  }
  template <typename T>
  void allGather(const T* send, std::size_t count, T* recv, const char* tag) {
    allGatherAsync(send, recv, count, dtypeOf<T>(), tag)->wait(timeout_);
  }
  void broadcastBytes(void* data, std::size_t bytes, int root, const char* tag) {
    broadcastAsync(data, bytes, DType::UInt8, root, tag)->wait(timeout_);
  }
  void allGatherBytes(const void* send, std::size_t bytes, void* recv, const char* tag) {
    allGatherAsync(send, recv, bytes, DType::UInt8, tag)->wait(timeout_);
  }
  void barrier(const char* tag) { barrierAsync(tag)->wait(timeout_); }

  // How long a blocking collective may wait without completing (default 60 s).
  std::chrono::milliseconds timeout() const { return timeout_; }
  void setTimeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 protected:
  Communicator() = default;

 private:
  std::chrono::milliseconds timeout_{60000};
};

// The SharedFile of a world of one rank: pwrite, fsync, close.
std::unique_ptr<SharedFile> openPosixSharedFile(const std::string& path, std::string* why_not);

// dist.backend resolved. "auto": launched as several ranks (mpirun, srun: `launched`), nccl when
// the run's tensors live on CUDA (`on_cuda`) and the build has NCCL (`nccl_built`), else mpi; one
// process alone: local (nothing to communicate). Any other name comes back as it is. Pure, so that tests can try every case.
std::string resolveBackend(const std::string& requested, bool on_cuda, bool nccl_built, bool launched);
// Why `backend` cannot carry a run whose tensors live on CUDA (`on_cuda`) or on the CPU, in a
// build with or without NCCL; empty when it can ("auto" always can: resolveBackend). MPI and local
// carry CUDA tensors through host memory (slower, never wrong); nccl carries device memory only.
std::string backendRefusal(const std::string& backend, bool on_cuda, bool nccl_built);

// backend: "local" (one process; collectives are copies), "mpi" (initialises MPI if needed and
// finalises it when destroyed), "nccl" (CUDA device buffers, host buffers over MPI; needs a build
// with GRAFT_WITH_NCCL, a GPU, and an MPI world to exchange the NCCL id), or "auto" (resolveBackend
// with this build and this process's launcher; GRAFT_BACKEND=local|mpi|nccl in the environment
// overrides it).
std::unique_ptr<Communicator> makeCommunicator(const std::string& backend, bool on_cuda = false);
// True when this build includes the NCCL backend.
bool ncclCompiledIn();

}  // namespace graft
