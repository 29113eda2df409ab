// A collective whose peer never arrives: the waiting ranks' error names the operation, tag,
// sequence number and the missing rank. The last rank joins late, so the job still ends cleanly.
// Run under mpirun -np 2 or 4; not a gtest (the communicator is failed afterwards by design).
#include <mpi.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "communicator.h"

int main(int argc, char** argv) {
  // MPI is initialised here, so the communicator does not finalise it and the ranks can agree on
  // the result afterwards even though the timed-out communicator is failed.
  MPI_Init(&argc, &argv);
  int failures = 0;
  {
    auto comm = graft::makeCommunicator("mpi");
    const int late = comm->size() - 1;
    float value = 1.0f;
    comm->allReduce(&value, 1, graft::ReduceOp::Sum, "warmup");  // seq 1
    if (comm->rank() == late) {
      std::this_thread::sleep_for(std::chrono::milliseconds(4000));
      comm->allReduce(&value, 1, graft::ReduceOp::Sum, "late/sum");
    } else {
      auto work = comm->allReduceAsync(&value, 1, graft::DType::Float32, graft::ReduceOp::Sum, "late/sum");
      try {
        work->wait(std::chrono::milliseconds(1000));
        std::printf("rank %d: FAIL: no timeout\n", comm->rank());
        ++failures;
      } catch (const graft::CollectiveError& e) {
        const std::string what = e.what();
        const std::string expected = "ranks that did not arrive: " + std::to_string(late) + " (no reply)";
        const bool ok = what.find("allReduce 'late/sum' #2 on rank " + std::to_string(comm->rank())) != std::string::npos &&
                        what.find(expected) != std::string::npos;
        std::printf("rank %d: %s: %s\n", comm->rank(), ok ? "ok" : "FAIL", what.c_str());
        failures += !ok;
      }
      work->wait(std::chrono::milliseconds(30000));  // the late rank arrives; the collective completes
    }
    if (value != static_cast<float>(comm->size() * comm->size())) {
      std::printf("rank %d: FAIL: sum %g\n", comm->rank(), value);
      ++failures;
    }
  }
  int worst = failures;
  MPI_Allreduce(&failures, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst ? 1 : 0;
}
