// GoogleTest main for multi-rank tests: every test runs on every rank (mpirun -np N mpi_tests),
// against one shared Communicator; only rank 0 prints gtest's report.
#include <gtest/gtest.h>

#include "communicator.h"
#include "mpi_world.h"
#include "test_verdict.h"

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
  graft::testing::reportSkips(comm->rank() == 0);
  const int rc = graft::testing::verdict(RUN_ALL_TESTS(), comm->rank() == 0);
  // A failure on any rank fails the job on every rank; the job skips only when every rank skipped
  // everything. Every rank returns the same code, so mpirun's is that code too.
  std::int64_t worst = graft::testing::verdictRank(rc);
  comm->allReduce(&worst, 1, graft::ReduceOp::Max, "test/result");
  return graft::testing::exitFromRank(static_cast<int>(worst));
}
