#include "stalling_communicator.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>

namespace graft {
namespace {

class StallingCommunicator final : public Communicator {
 public:
  StallingCommunicator(std::unique_ptr<Communicator> inner, std::string tag) : inner_(std::move(inner)), tag_(std::move(tag)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  int localRank() const override { return inner_->localRank(); }
  int localSize() const override { return inner_->localSize(); }
  std::string backend() const override { return inner_->backend(); }
  std::unique_ptr<SharedFile> openSharedFile(const std::string& path, std::string* why_not) override {
    return inner_->openSharedFile(path, why_not);
  }
  WorkPtr allReduceAsync(void* data, std::size_t count, DType type, ReduceOp op, const char* tag) override {
    stallAt(tag);
    return inner_->allReduceAsync(data, count, type, op, tag);
  }
  WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                             const char* tag) override {
    stallAt(tag);
    return inner_->reduceScatterAsync(send, recv, count, type, op, tag);
  }
  WorkPtr reduceScatterAnyOrderAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                                     const char* tag) override {
    stallAt(tag);
    return inner_->reduceScatterAnyOrderAsync(send, recv, count, type, op, tag);
  }
  WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char* tag) override {
    stallAt(tag);
    return inner_->allGatherAsync(send, recv, count, type, tag);
  }
  WorkPtr broadcastAsync(void* data, std::size_t count, DType type, int root, const char* tag) override {
    stallAt(tag);
    return inner_->broadcastAsync(data, count, type, root, tag);
  }
  WorkPtr barrierAsync(const char* tag) override {
    stallAt(tag);
    return inner_->barrierAsync(tag);
  }

 private:
  void stallAt(const char* tag) const {
    if (std::strcmp(tag, tag_.c_str()) != 0) return;
    std::fprintf(stderr, "debug.stall_at: rank %d stops before collective '%s'\n", rank(), tag);
    std::fflush(stderr);
    for (;;) ::pause();  // until a signal ends the process (the job's abort)
  }

  std::unique_ptr<Communicator> inner_;
  std::string tag_;
};

}  // namespace

std::unique_ptr<Communicator> stallingCommunicator(std::unique_ptr<Communicator> inner, std::string tag) {
  return std::make_unique<StallingCommunicator>(std::move(inner), std::move(tag));
}

}  // namespace graft
