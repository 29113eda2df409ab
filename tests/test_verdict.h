// What a graft test binary tells ctest, shared by the plain main (test_main.cc) and the multi-rank
// one (mpi/mpi_main.cc). ctest reads only the exit code (tests/gtest_entry.cmake):
//   0   something ran and passed, nothing failed; tests that skipped are named on stdout
//   1   a test failed, or no test was selected (a filter that matches nothing is a suite that
//       dropped out, not a pass)
//   77  every selected test skipped and none failed (SKIP_RETURN_CODE)
// Every skipped test is printed as one line `graft-test: skipped NAME: REASON`, whatever the
// verdict; .ci/run collects those lines from ctest's log and lists them at the end.
#pragma once

#include <gtest/gtest.h>

namespace graft::testing {

constexpr int kExitPassed = 0;
constexpr int kExitFailed = 1;
constexpr int kExitSkipped = 77;

// Prints each skipped test with its reason as it ends.
class SkipReporter : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo& info) override;
};

// Registers SkipReporter (call after InitGoogleTest; `print` false on ranks that stay quiet).
void reportSkips(bool print = true);

// The exit code for the run that RUN_ALL_TESTS just returned `gtest_rc` for (`print` false: quiet).
int verdict(int gtest_rc, bool print = true);

// Several ranks' verdicts combined: any failure fails, all skipped skips, else passed.
// Rank-independent encoding for a Max reduction: 0 skipped, 1 passed, 2 failed.
int verdictRank(int exit_code);
int exitFromRank(int rank_max);

}  // namespace graft::testing
