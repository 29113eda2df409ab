#include "mpi_communicator.h"

#include <mpi.h>
#include <unistd.h>

#include <string>

namespace graft {
namespace {

MPI_Op toMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

// Owns the duplicated world communicator; move-only through unique_ptr ownership of the class.
class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        throw CollectiveError("MPI_Init_thread failed (is this process started by mpirun or srun?)");
      owns_mpi_ = true;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_);
    MPI_Comm_rank(node_, &local_rank_);
    MPI_Comm_size(node_, &local_size_);
  }

  ~MpiCommunicator() override {
    // Never throws; after an error the launcher calls MPI_Abort instead of reaching here.
    if (node_ != MPI_COMM_NULL) MPI_Comm_free(&node_);
    if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owns_mpi_ && !finalised) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int localRank() const override { return local_rank_; }
  int localSize() const override { return local_size_; }
  std::string backend() const override { return "mpi"; }

  void allReduce(float* data, std::size_t count, ReduceOp op, const char* tag) override {
    reduce(data, count, MPI_FLOAT, op, tag);
  }
  void allReduce(double* data, std::size_t count, ReduceOp op, const char* tag) override {
    reduce(data, count, MPI_DOUBLE, op, tag);
  }
  void allReduce(std::int64_t* data, std::size_t count, ReduceOp op, const char* tag) override {
    reduce(data, count, MPI_INT64_T, op, tag);
  }

  void broadcast(void* data, std::size_t bytes, int root, const char* tag) override {
    const auto seq = next("broadcast", tag);
    check(MPI_Bcast(data, toCount(bytes, "broadcast", tag), MPI_BYTE, root, comm_), "broadcast", tag, seq);
  }

  void allGather(const void* send, std::size_t bytes, void* recv, const char* tag) override {
    const auto seq = next("allGather", tag);
    const int n = toCount(bytes, "allGather", tag);
    check(MPI_Allgather(send, n, MPI_BYTE, recv, n, MPI_BYTE, comm_), "allGather", tag, seq);
  }

  void barrier(const char* tag) override {
    const auto seq = next("barrier", tag);
    check(MPI_Barrier(comm_), "barrier", tag, seq);
  }

 private:
  void reduce(void* data, std::size_t count, MPI_Datatype type, ReduceOp op, const char* tag) {
    const auto seq = next("allReduce", tag);
    check(MPI_Allreduce(MPI_IN_PLACE, data, toCount(count, "allReduce", tag), type, toMpi(op), comm_),
          "allReduce", tag, seq);
  }

  std::uint64_t next(const char*, const char*) { return ++seq_; }

  int toCount(std::size_t n, const char* op, const char* tag) const {
    if (n > static_cast<std::size_t>(INT32_MAX))
      throw CollectiveError(context(op, tag, seq_) + ": " + std::to_string(n) +
                            " elements exceed MPI's int count; split the buffer");
    return static_cast<int>(n);
  }

  std::string context(const char* op, const char* tag, std::uint64_t seq) const {
    return std::string("mpi ") + op + " '" + tag + "' #" + std::to_string(seq) + " on rank " +
           std::to_string(rank_) + "/" + std::to_string(size_);
  }

  void check(int rc, const char* op, const char* tag, std::uint64_t seq) const {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    throw CollectiveError(context(op, tag, seq) + " failed: " + std::string(text, len));
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Comm node_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool owns_mpi_ = false;
  std::uint64_t seq_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> makeMpiCommunicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace graft
