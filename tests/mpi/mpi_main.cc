// GoogleTest main for multi-rank tests: every test runs on every rank (mpirun -np N mpi_tests),
// against one shared Communicator; only rank 0 prints gtest's report.
#include <gtest/gtest.h>

#include "communicator.h"
#include "mpi_world.h"

namespace graft::testing {
Communicator* g_comm = nullptr;
}

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = graft::makeCommunicator("mpi");
  graft::testing::g_comm = comm.get();
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  // A failure on any rank fails the job on every rank.
  std::int64_t worst = rc;
  comm->allReduce(&worst, 1, graft::ReduceOp::Max, "test/result");
  return static_cast<int>(worst);
}
