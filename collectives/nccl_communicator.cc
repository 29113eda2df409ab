#include "nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <mutex>
#include <string>
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

// A CUDA event, destroyed with its last owner: the Work, or the watchdog still watching it.
class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (event_) cudaEventDestroy(event_);
  }
  cudaError_t create() { return cudaEventCreateWithFlags(&event_, cudaEventDisableTiming); }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class NcclCommunicator;

class NcclWork final : public Work {
 public:
  NcclWork(NcclCommunicator& comm, std::shared_ptr<Event> done, const char* op, const char* tag, std::uint64_t seq)
      : comm_(comm), done_event_(std::move(done)), op_(op), tag_(tag), seq_(seq) {}
  // A collective dropped without a wait still orders the compute stream after it, so that the
  // memory of its buffers is not reused under it.
  ~NcclWork() override;
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;

 private:
  NcclCommunicator& comm_;
  std::shared_ptr<Event> done_event_;  // recorded on the NCCL stream after the collective
  const char* op_;
  std::string tag_;
  std::uint64_t seq_;
  bool done_ = false;
};

// Note [completion on the device]: Work::wait on a device collective does not block the host. It
// makes the compute stream wait for the collective's completion event (cudaStreamWaitEvent), so
// the kernels that read the result are queued at once and run as soon as it is there, and the
// host runs ahead (the next unit's kernels of a ZeRO-3 forward while its gather is in flight).
// Buffers a Work kept alive may be freed when wait returns: the caching allocator gives their
// memory only to later work on the compute stream, which runs after the collective.
//
// dist.timeout_s keeps its guarantee through a watchdog thread: it polls the completion events
// of the collectives that were waited on, and when one is not complete by its deadline (the wait's
// timeout, counted from the wait: a collective still queued behind the compute stream's work
// counts too, as it did when the host waited), or NCCL reports an asynchronous error, it aborts
// the NCCL communicator
// (ncclCommAbort, which also ends the kernels of a collective whose peers never come) and records
// why. The host, blocked in whatever read the result (a copy to the host), resumes; its next use
// of this communicator, device or host buffers alike, throws that error, naming the collective,
// its tag and sequence number. GRAFT_NCCL_WAIT=host restores the blocking wait (the host polls
// the event), for diagnosis; the watchdog then still watches collectives dropped without a wait,
// so that destroying the communicator never waits for one forever.
bool hostWaitsFromEnvironment() {
  const char* v = std::getenv("GRAFT_NCCL_WAIT");
  return v && std::string(v) == "host";
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator() : bootstrap_(makeMpiCommunicator()), host_waits_(hostWaitsFromEnvironment()) {
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
    // Connections at init, not inside the first collective of each algorithm (NCCL >= 2.22 makes
    // them lazily, waiting for the peers within the launch): a launch then does not wait for a
    // peer. The user's own NCCL_RUNTIME_CONNECT wins.
    setenv("NCCL_RUNTIME_CONNECT", "0", /*overwrite=*/0);
    checkNccl(ncclCommInitRank(&comm_, bootstrap_->size(), id, bootstrap_->rank()), "init", "nccl/init", 0);
    watchdog_ = std::thread([this] { watchdog(); });
  }

  ~NcclCommunicator() override {
    if (watchdog_.joinable()) {
      {
        // The collectives in flight end first, or time out and the watchdog aborts: destroying
        // a communicator with pending work would wait for it without a timeout.
        std::unique_lock<std::mutex> lock(mutex_);
        settled_.wait(lock, [this] { return watched_.empty() || failed_; });
        stopping_ = true;
      }
      wake_.notify_all();
      watchdog_.join();
    }
    if (comm_ && !aborted_) failed_ ? ncclCommAbort(comm_) : ncclCommDestroy(comm_);
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
    throwIfFailed("allReduce", tag);
    if (!onDevice(data)) return bootstrap_->allReduceAsync(data, count, type, op, tag);
    return start("allReduce", tag, [&] { return ncclAllReduce(data, data, count, toNccl(type), toNccl(op), comm_, stream_); });
  }
  WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                             const char* tag) override {
    throwIfFailed("reduceScatter", tag);
    if (!onDevice(recv)) return bootstrap_->reduceScatterAsync(send, recv, count, type, op, tag);
    return start("reduceScatter", tag,
                 [&] { return ncclReduceScatter(send, recv, count, toNccl(type), toNccl(op), comm_, stream_); });
  }
  WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char* tag) override {
    throwIfFailed("allGather", tag);
    if (!onDevice(recv)) return bootstrap_->allGatherAsync(send, recv, count, type, tag);
    return start("allGather", tag, [&] { return ncclAllGather(send, recv, count, toNccl(type), comm_, stream_); });
  }
  WorkPtr broadcastAsync(void* data, std::size_t count, DType type, int root, const char* tag) override {
    throwIfFailed("broadcast", tag);
    if (!onDevice(data)) return bootstrap_->broadcastAsync(data, count, type, root, tag);
    return start("broadcast", tag, [&] { return ncclBroadcast(data, data, count, toNccl(type), root, comm_, stream_); });
  }
  WorkPtr barrierAsync(const char* tag) override {
    throwIfFailed("barrier", tag);
    return bootstrap_->barrierAsync(tag);
  }

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
    {
      std::lock_guard<std::timed_mutex> lock(launch_mutex_);
      if (!aborted_) ncclCommGetAsyncError(comm_, &async);
    }
    checkNccl(async, op, tag, seq);
  }

  // Throws the error that failed this communicator (the watchdog's, or an earlier throw's).
  void throwIfFailed(const char* op, const std::string& tag) {
    if (!failed_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    throw CollectiveError(error_.empty() ? context(op, tag, seq_ + 1) + ": communicator already failed"
                                         : error_ + " (seen at " + op + " '" + tag + "')");
  }

  bool hostWaits() const { return host_waits_; }
  bool failed() const { return failed_; }

  // Note [completion on the device]: the compute stream waits for `done`; the watchdog makes
  // sure it completes within `timeout`.
  void completeOnDevice(const std::shared_ptr<Event>& done, std::chrono::milliseconds timeout, const char* op,
                        const std::string& tag, std::uint64_t seq) {
    checkCuda(cudaStreamWaitEvent(compute_stream_, done->get(), 0), op, tag, seq);
    watch(done, timeout, op, tag, seq);
  }

  // A collective dropped without a wait: ordered and watched all the same (with the
  // communicator's timeout), so that its buffers are not reused under it and a communicator
  // is not destroyed with it pending. Never throws (a destructor calls it).
  void completeDropped(const std::shared_ptr<Event>& done, const char* op, const std::string& tag,
                       std::uint64_t seq) noexcept {
    if (failed_ || cudaStreamWaitEvent(compute_stream_, done->get(), 0) != cudaSuccess) return;
    try {
      watch(done, timeout(), op, tag, seq);
    } catch (...) {  // out of memory for the list entry: unwatched, still ordered
    }
  }

  static std::string timedOutAfter(double seconds) {
    return " timed out after " + std::to_string(seconds).substr(0, 5) +
           " s; NCCL cannot tell which ranks did not arrive: compare the sequence numbers in the other ranks' errors";
  }

  [[noreturn]] void timedOut(const char* op, const std::string& tag, std::uint64_t seq, double seconds) {
    failed_ = true;
    throw CollectiveError(context(op, tag, seq) + timedOutAfter(seconds));
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
    throwIfFailed(op, tag);
    const std::uint64_t seq = ++seq_;
    auto done = std::make_shared<Event>();
    checkCuda(done->create(), op, tag, seq);
    // The collective reads what the compute stream produced: its stream waits for that first
    // (an event, not the host).
    checkCuda(cudaEventRecord(produced_, compute_stream_), op, tag, seq);
    checkCuda(cudaStreamWaitEvent(stream_, produced_, 0), op, tag, seq);
    {
      std::lock_guard<std::timed_mutex> lock(launch_mutex_);  // the watchdog aborts under it when it can
      throwIfFailed(op, tag);
      checkNccl(launch(), op, tag, seq);
    }
    checkCuda(cudaEventRecord(done->get(), stream_), op, tag, seq);
    return std::make_unique<NcclWork>(*this, std::move(done), op, tag, seq);
  }

  void watch(const std::shared_ptr<Event>& done, std::chrono::milliseconds timeout, const char* op,
             const std::string& tag, std::uint64_t seq) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (failed_) return;
      watched_.push_back({done, Clock::now() + timeout, std::chrono::duration<double>(timeout).count(),
                          context(op, tag, seq)});
    }
    wake_.notify_one();
  }

  // The watchdog thread (Note [completion on the device]).
  void watchdog() {
    cudaSetDevice(device_);  // the current device is per thread
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      std::string error;
      for (auto it = watched_.begin(); it != watched_.end() && error.empty();) {
        const cudaError_t rc = cudaEventQuery(it->done->get());
        if (rc == cudaSuccess) {
          it = watched_.erase(it);
          continue;
        }
        ncclResult_t async = ncclSuccess;
        if (!aborted_) ncclCommGetAsyncError(comm_, &async);  // thread-safe; only this thread aborts
        if (rc != cudaErrorNotReady) error = it->what + ": CUDA error " + cudaGetErrorString(rc);
        else if (async != ncclSuccess && async != ncclInProgress) error = it->what + " failed: " + ncclGetErrorString(async);
        else if (Clock::now() >= it->deadline) error = it->what + timedOutAfter(it->seconds);
        ++it;
      }
      if (!error.empty()) {
        error_ = error;
        failed_ = true;
        watched_.clear();
        lock.unlock();
        settled_.notify_all();
        abortFromWatchdog(error);
        lock.lock();
        continue;
      }
      if (watched_.empty()) {
        settled_.notify_all();
        wake_.wait(lock, [this] { return stopping_ || !watched_.empty(); });
      } else {
        wake_.wait_for(lock, std::chrono::microseconds(200));
      }
    }
  }

  // Aborts the NCCL communicator, which ends its kernels, and says why on stderr at once (the
  // thread that will throw the error may be blocked until the abort frees it). Under the launch
  // lock, so that no launch or query uses the communicator meanwhile (NCCL frees it). A launch
  // that holds the lock for more than a second is stuck inside NCCL (a full queue behind the
  // collective whose peer is gone): aborting under it would free what it uses, so this process
  // ends instead, and mpirun or srun ends the job; checkpoints already written are complete.
  void abortFromWatchdog(const std::string& error) {
    std::fprintf(stderr, "graft: %s; aborting the NCCL communicator\n", error.c_str());
    if (!launch_mutex_.try_lock_for(std::chrono::seconds(1))) {
      std::fprintf(stderr, "graft: rank %d: a collective launch is stuck inside NCCL; ending this process\n", rank());
      std::fflush(stderr);
      std::_Exit(1);
    }
    if (!aborted_.exchange(true)) ncclCommAbort(comm_);
    launch_mutex_.unlock();
  }

  struct Watched {
    std::shared_ptr<Event> done;
    Clock::time_point deadline;
    double seconds;
    std::string what;
  };

  std::unique_ptr<Communicator> bootstrap_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaStream_t compute_stream_ = nullptr;  // the legacy default stream
  cudaEvent_t produced_ = nullptr;
  int device_ = 0;
  std::atomic<bool> failed_{false};
  std::atomic<bool> aborted_{false};  // ncclCommAbort was called (by the watchdog, once)
  std::uint64_t seq_ = 0;
  const bool host_waits_;  // GRAFT_NCCL_WAIT=host: Work::wait blocks the host
  std::timed_mutex launch_mutex_;  // held by a launch or a query of comm_ on the calling thread
  // Shared with the watchdog thread: watched_, error_, stopping_.
  std::mutex mutex_;
  std::condition_variable wake_;     // the watchdog: something to watch, or stop
  std::condition_variable settled_;  // the destructor: nothing left in flight, or failed
  std::list<Watched> watched_;
  std::string error_;
  bool stopping_ = false;
  std::thread watchdog_;
};

NcclWork::~NcclWork() {
  // Not on a failed communicator (in completeDropped): its collectives may never complete (a
  // host wait that timed out), and the error path must not hang on them.
  if (!done_) comm_.completeDropped(done_event_, op_, tag_, seq_);
}

bool NcclWork::test() {
  if (done_) return true;
  comm_.throwIfFailed(op_, tag_);
  const cudaError_t rc = cudaEventQuery(done_event_->get());
  if (rc == cudaSuccess) return done_ = true;
  if (rc != cudaErrorNotReady)
    throw CollectiveError(comm_.context(op_, tag_, seq_) + ": CUDA error " + cudaGetErrorString(rc));
  comm_.checkAsync(op_, tag_, seq_);
  return false;
}

void NcclWork::wait(std::chrono::milliseconds timeout) {
  if (done_) return;
  comm_.throwIfFailed(op_, tag_);
  if (!comm_.hostWaits()) {
    comm_.completeOnDevice(done_event_, timeout, op_, tag_, seq_);
    done_ = true;
    return;
  }
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
