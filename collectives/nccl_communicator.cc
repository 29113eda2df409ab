#include "nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <thread>

#include "mpi_communicator.h"

namespace graft {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t toNccl(DType type) {
  switch (type) {
    case DType::Float32: return ncclFloat32;
    case DType::Float64: return ncclFloat64;
    case DType::Int32: return ncclInt32;
    case DType::Int64: return ncclInt64;
    case DType::UInt8: return ncclUint8;
    case DType::BFloat16: return ncclBfloat16;
    case DType::Float16: return ncclFloat16;
  }
  return ncclUint8;
}

ncclRedOp_t toNccl(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

class NcclCommunicator;

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator& comm, cudaEvent_t event, const char* op, const char* tag, std::uint64_t seq)
      : comm_(comm), event_(event), op_(op), tag_(tag), seq_(seq) {}
  ~NcclWork() override { cudaEventDestroy(event_); }
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;

 private:
  NcclCommunicator& comm_;
  cudaEvent_t event_;
  const char* op_;
  std::string tag_;
  std::uint64_t seq_;
  bool done_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator() : bootstrap_(makeMpiCommunicator()) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      throw CollectiveError("nccl backend: no CUDA device visible on rank " + std::to_string(bootstrap_->rank()));
    device_ = bootstrap_->localRank() % devices;
    cudaSetDevice(device_);
    ncclUniqueId id{};
    if (bootstrap_->rank() == 0) ncclGetUniqueId(&id);
    bootstrap_->broadcastBytes(&id, sizeof(id), 0, "nccl/unique_id");
    cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    cudaEventCreateWithFlags(&produced_, cudaEventDisableTiming);
    checkNccl(ncclCommInitRank(&comm_, bootstrap_->size(), id, bootstrap_->rank()), "init", "nccl/init", 0);
  }

  ~NcclCommunicator() override {
    if (comm_) failed_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_);
    if (produced_) cudaEventDestroy(produced_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  int rank() const override { return bootstrap_->rank(); }
  int size() const override { return bootstrap_->size(); }
  int localRank() const override { return bootstrap_->localRank(); }
  int localSize() const override { return bootstrap_->localSize(); }
  std::string backend() const override { return "nccl"; }
  bool progressesWhileComputing() const override { return true; }
  bool carriesDeviceMemory() const override { return true; }
  // Collectives are ordered after the work already queued on this stream (default: the legacy
  // default stream, where LibTorch computes unless told otherwise).
  void setComputeStream(cudaStream_t stream) { compute_stream_ = stream; }
  // Files are written from host memory: MPI-IO over the bootstrap communicator.
  std::unique_ptr<SharedFile> openSharedFile(const std::string& path, std::string* why_not) override {
    return bootstrap_->openSharedFile(path, why_not);
  }

  // Note [NCCL for device memory, MPI for the host]: device buffers (gradient buckets, shards) go
  // through NCCL; host buffers (plan hashes, the loss, the heartbeat, strings) through the MPI
  // communicator that bootstrapped it, so host values never cross to the GPU and back.
  WorkPtr allReduceAsync(void* data, std::size_t count, DType type, ReduceOp op, const char* tag) override {
    if (!onDevice(data)) return bootstrap_->allReduceAsync(data, count, type, op, tag);
    return start("allReduce", tag, [&] { return ncclAllReduce(data, data, count, toNccl(type), toNccl(op), comm_, stream_); });
  }
  WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                             const char* tag) override {
    if (!onDevice(recv)) return bootstrap_->reduceScatterAsync(send, recv, count, type, op, tag);
    return start("reduceScatter", tag,
                 [&] { return ncclReduceScatter(send, recv, count, toNccl(type), toNccl(op), comm_, stream_); });
  }
  WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char* tag) override {
    if (!onDevice(recv)) return bootstrap_->allGatherAsync(send, recv, count, type, tag);
    return start("allGather", tag, [&] { return ncclAllGather(send, recv, count, toNccl(type), comm_, stream_); });
  }
  WorkPtr broadcastAsync(void* data, std::size_t count, DType type, int root, const char* tag) override {
    if (!onDevice(data)) return bootstrap_->broadcastAsync(data, count, type, root, tag);
    return start("broadcast", tag, [&] { return ncclBroadcast(data, data, count, toNccl(type), root, comm_, stream_); });
  }
  WorkPtr barrierAsync(const char* tag) override { return bootstrap_->barrierAsync(tag); }

  std::string context(const char* op, const std::string& tag, std::uint64_t seq) const {
    return std::string("nccl ") + op + " '" + tag + "' #" + std::to_string(seq) + " on rank " +
           std::to_string(rank()) + "/" + std::to_string(size()) + " (cuda:" + std::to_string(device_) + ")";
  }

  void checkNccl(ncclResult_t rc, const char* op, const std::string& tag, std::uint64_t seq) {
    if (rc == ncclSuccess || rc == ncclInProgress) return;
    failed_ = true;
    throw CollectiveError(context(op, tag, seq) + " failed: " + ncclGetErrorString(rc));
  }

  void checkCuda(cudaError_t rc, const char* op, const std::string& tag, std::uint64_t seq) {
    if (rc == cudaSuccess) return;
    failed_ = true;
    throw CollectiveError(context(op, tag, seq) + ": CUDA error " + cudaGetErrorString(rc));
  }

  // Asynchronous NCCL errors (a peer died, a network failure) surface here while waiting.
  void checkAsync(const char* op, const std::string& tag, std::uint64_t seq) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm_, &async);
    checkNccl(async, op, tag, seq);
  }

  [[noreturn]] void timedOut(const char* op, const std::string& tag, std::uint64_t seq, double seconds) {
    failed_ = true;
    throw CollectiveError(context(op, tag, seq) + " timed out after " + std::to_string(seconds).substr(0, 5) +
                          " s; NCCL cannot tell which ranks did not arrive: compare the sequence numbers in the other "
                          "ranks' errors");
  }

 private:
  static bool onDevice(const void* p) {
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      cudaGetLastError();  // plain host memory on old runtimes: clear the error it leaves
      return false;
    }
    return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
  }

  template <typename Launch>
  WorkPtr start(const char* op, const char* tag, Launch launch) {
    if (failed_) throw CollectiveError(context(op, tag, seq_ + 1) + ": communicator already failed");
    const std::uint64_t seq = ++seq_;
    // The collective reads what the compute stream produced: its stream waits for that first
    // (an event, not the host).
    checkCuda(cudaEventRecord(produced_, compute_stream_), op, tag, seq);
    checkCuda(cudaStreamWaitEvent(stream_, produced_, 0), op, tag, seq);
    checkNccl(launch(), op, tag, seq);
    cudaEvent_t event;
    cudaEventCreateWithFlags(&event, cudaEventDisableTiming);
    cudaEventRecord(event, stream_);
    return std::make_unique<NcclWork>(*this, event, op, tag, seq);
  }

  std::unique_ptr<Communicator> bootstrap_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_stream_ = nullptr;  // the legacy default stream
  cudaEvent_t produced_ = nullptr;
  int device_ = 0;
  bool failed_ = false;
  std::uint64_t seq_ = 0;
};

bool NcclWork::test() {
  if (done_) return true;
  const cudaError_t rc = cudaEventQuery(event_);
  if (rc == cudaSuccess) return done_ = true;
  if (rc != cudaErrorNotReady)
    throw CollectiveError(comm_.context(op_, tag_, seq_) + ": CUDA error " + cudaGetErrorString(rc));
  comm_.checkAsync(op_, tag_, seq_);
  return false;
}

void NcclWork::wait(std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  while (!test()) {
    const double waited = std::chrono::duration<double>(Clock::now() - start).count();
    if (Clock::now() - start >= timeout) comm_.timedOut(op_, tag_, seq_, waited);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

}  // namespace

bool ncclBackendAvailable() { return true; }

std::unique_ptr<Communicator> makeNcclCommunicator() { return std::make_unique<NcclCommunicator>(); }

}  // namespace graft
