// runWithHeartbeat when a rank's work fails (parallel/heartbeat.h): every rank raises the same
// AgreedError naming the lowest failing rank, at once, whatever the others' work is doing, and the
// communicator stays usable (nothing half done).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include "mpi_world.h"
#include "parallel/heartbeat.h"
#include "util/error.h"

namespace graft {
namespace {

Communicator& comm() { return *testing::g_comm; }

// The error every rank got from one runWithHeartbeat of `work` ("" and 0 when none), and after it
// an all-reduce that must still add up.
struct Outcome {
  std::string message;
  int exit_code = 0;
  double seconds = 0;
};
Outcome heartbeatOf(std::function<void()> work, double limit_s = 60) {
  Outcome out;
  const auto start = std::chrono::steady_clock::now();
  try {
    runWithHeartbeat(comm(), "test/work", limit_s, "the test's work", "", std::move(work));
  } catch (const AgreedError& e) {
    out.message = e.what();
    out.exit_code = e.exitCode();
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::int64_t ranks = 1;
  comm().allReduce(&ranks, 1, ReduceOp::Sum, "test/after");
  EXPECT_EQ(ranks, comm().size()) << "the communicator after the failure";
  return out;
}

TEST(Heartbeat, AWorkThatFailsOnOneRankFailsEveryRankWithItsError) {
  const int n = comm().size(), last = n - 1;
  const Outcome out = heartbeatOf([r = comm().rank(), last] {
    if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));  // still writing when the other fails
    if (r == last) throw Error("/ckpt/part-" + std::to_string(r) + ".tmp: disk full");
  });
  EXPECT_EQ(out.message, "rank " + std::to_string(last) + " of " + std::to_string(n) + ": /ckpt/part-" +
                             std::to_string(last) + ".tmp: disk full");
  EXPECT_EQ(out.exit_code, kExitFailure);
}

// Several fail: the lowest rank's error, with its exit code (bad input: 2).
TEST(Heartbeat, TheLowestFailingRankIsNamedAndItsExitCodeKept) {
  const int n = comm().size();
  const Outcome out = heartbeatOf([r = comm().rank(), n] {
    if (r == 1) throw InputError("config.ini: no such file");
    if (r == n - 1 && r != 1) throw Error("something else");
  });
  EXPECT_EQ(out.message, "rank 1 of " + std::to_string(n) + ": config.ini: no such file");
  EXPECT_EQ(out.exit_code, kExitBadInput);
}

// Rank 0's work waits for the others (as rank 0 waits for the ranks' part files): once another
// rank failed it is cancelled, and every rank stops within a few beats, not at the 60 s limit,
// naming the rank that failed (not rank 0's cancellation).
TEST(Heartbeat, AWorkThatWaitsForAFailedRankIsCancelled) {
  const int n = comm().size();
  const CancelToken cancel = makeCancelToken();
  BackgroundWork work(
      [r = comm().rank(), cancel] {
        if (r == 1) throw Error("part 1: file too large");
        if (r == 0)
          for (;;) {
            throwIfCancelled(cancel);
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
      },
      cancel);
  Outcome out;
  const auto start = std::chrono::steady_clock::now();
  try {
    awaitWithHeartbeat(comm(), "test/await", 60, "the test's work", "", work);
  } catch (const AgreedError& e) {
    out.message = e.what();
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(out.message, "rank 1 of " + std::to_string(n) + ": part 1: file too large");
  EXPECT_LT(out.seconds, 10.0);
}

TEST(Heartbeat, WorkThatSucceedsEverywhereRaisesNothing) {
  const Outcome out = heartbeatOf([] {});
  EXPECT_EQ(out.message, "");
}

}  // namespace
}  // namespace graft
