// The world-size-1 backend: every collective is the identity (or a copy).
#include <cstring>

#include "communicator.h"
#include "mpi_communicator.h"

namespace graft {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int localRank() const override { return 0; }
  int localSize() const override { return 1; }
  std::string backend() const override { return "local"; }
  void allReduce(float*, std::size_t, ReduceOp, const char*) override {}
  void allReduce(double*, std::size_t, ReduceOp, const char*) override {}
  void allReduce(std::int64_t*, std::size_t, ReduceOp, const char*) override {}
  void broadcast(void*, std::size_t, int root, const char* tag) override {
    if (root != 0) throw CollectiveError(std::string("broadcast '") + tag + "': root " +
                                         std::to_string(root) + " out of range for world size 1");
  }
  void allGather(const void* send, std::size_t bytes, void* recv, const char*) override {
    if (bytes) std::memmove(recv, send, bytes);
  }
  void barrier(const char*) override {}
};

}  // namespace

std::unique_ptr<Communicator> makeCommunicator(const std::string& backend) {
  if (backend == "local") return std::make_unique<LocalCommunicator>();
  if (backend == "mpi") return makeMpiCommunicator();
  throw CollectiveError("unknown communicator backend '" + backend + "' (expected local or mpi)");
}

}  // namespace graft
