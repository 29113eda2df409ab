// The world-size-1 backend: every collective is the identity (or a copy) and completes at once.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "communicator.h"
#include "mpi_communicator.h"
#include "nccl_communicator.h"

namespace graft {
namespace {

class DoneWork final : public Work {
 public:
  bool test() override { return true; }
  void wait(std::chrono::milliseconds) override {}
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int localRank() const override { return 0; }
  int localSize() const override { return 1; }
  std::string backend() const override { return "local"; }
  std::unique_ptr<SharedFile> openSharedFile(const std::string& path, std::string* why_not) override {
    return openPosixSharedFile(path, why_not);
  }
  WorkPtr allReduceAsync(void*, std::size_t, DType, ReduceOp, const char*) override { return done(); }
  WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp,
                             const char*) override {
    return copy(send, recv, count * sizeOf(type));
  }
  WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char*) override {
    return copy(send, recv, count * sizeOf(type));
  }
  WorkPtr broadcastAsync(void*, std::size_t, DType, int root, const char* tag) override {
    if (root != 0)
      throw CollectiveError(std::string("broadcast '") + tag + "': root " + std::to_string(root) +
                            " out of range for world size 1");
    return done();
  }
  WorkPtr barrierAsync(const char*) override { return done(); }

 private:
  static WorkPtr done() { return std::make_unique<DoneWork>(); }
  static WorkPtr copy(const void* send, void* recv, std::size_t bytes) {
    if (bytes && send != recv) std::memmove(recv, send, bytes);
    return done();
  }
};

class PosixSharedFile final : public SharedFile {
 public:
  PosixSharedFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixSharedFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void writeAndClose(std::vector<Piece> pieces) override {
    for (const Piece& p : pieces) {
      const char* data = static_cast<const char*>(p.data);
      for (std::uint64_t done = 0; done < p.bytes;) {
        const ssize_t n = ::pwrite(fd_, data + done, p.bytes - done, static_cast<off_t>(p.offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail(std::string("writing failed (") + (n < 0 ? std::strerror(errno) : "nothing written") + "; disk full?)");
        done += static_cast<std::uint64_t>(n);
      }
    }
    if (::fsync(fd_) != 0) fail(std::string("fsync failed (") + std::strerror(errno) + ")");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(std::string("close failed (") + std::strerror(errno) + ")");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw FileError(path_ + ": " + what); }
  std::string path_;
  int fd_;
};

bool launchedAsSeveralRanks() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK"})
    if (const char* v = std::getenv(name); v && *v) return true;
  return false;
}

}  // namespace

std::unique_ptr<SharedFile> openPosixSharedFile(const std::string& path, std::string* why_not) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    *why_not = path + ": cannot open to write (" + std::strerror(errno) + ")";
    return nullptr;
  }
  return std::make_unique<PosixSharedFile>(path, fd);
}

std::size_t sizeOf(DType type) {
  switch (type) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float64: case DType::Int64: return 8;
    case DType::UInt8: return 1;
    case DType::BFloat16: case DType::Float16: return 2;
  }
  return 1;
}

const char* nameOf(DType type) {
  switch (type) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::BFloat16: return "bfloat16";
    case DType::Float16: return "float16";
  }
  return "?";
}

bool ncclCompiledIn() { return ncclBackendAvailable(); }

std::string resolveBackend(const std::string& requested, bool on_cuda, bool nccl_built, bool launched) {
  if (requested != "auto") return requested;
  if (on_cuda && nccl_built && launched) return "nccl";
  return launched ? "mpi" : "local";
}

std::string backendRefusal(const std::string& backend, bool on_cuda, bool nccl_built) {
  if (backend == "nccl" && !on_cuda)
    return "dist.backend = nccl carries CUDA tensors, and this run's tensors are on the CPU (train.device); use "
           "auto or mpi";
  if (backend == "nccl" && !nccl_built)
    return "dist.backend = nccl: this build of graft has no NCCL (configure with -DGRAFT_WITH_NCCL=ON where nccl.h "
           "and libnccl are); use auto or mpi";
  return "";
}

std::unique_ptr<Communicator> makeCommunicator(const std::string& backend, bool on_cuda) {
  if (backend == "auto") {
    const char* forced = std::getenv("GRAFT_BACKEND");
    if (forced && *forced) {
      if (const std::string why = backendRefusal(forced, on_cuda, ncclBackendAvailable()); !why.empty())
        throw CollectiveError("GRAFT_BACKEND=" + std::string(forced) + ": " + why);
      return makeCommunicator(forced, on_cuda);
    }
    return makeCommunicator(resolveBackend(backend, on_cuda, ncclBackendAvailable(), launchedAsSeveralRanks()), on_cuda);
  }
  if (backend == "local") return std::make_unique<LocalCommunicator>();
  if (backend == "mpi") return makeMpiCommunicator();
  if (backend == "nccl") return makeNcclCommunicator();
  throw CollectiveError("unknown communicator backend '" + backend + "' (expected auto, local, mpi or nccl)");
}

}  // namespace graft
