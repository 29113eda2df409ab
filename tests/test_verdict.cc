// The verdict of a graft test binary (see test_verdict.h). ctest's SKIP_REGULAR_EXPRESSION, used
// before, turned a binary with one skipped and one failed test into "Skipped" with exit 0.
#include "test_verdict.h"

#include <cstdio>
#include <string>

namespace graft::testing {

void SkipReporter::OnTestEnd(const ::testing::TestInfo& info) {
  const auto* result = info.result();
  if (!result->Skipped()) return;
  std::string reason;
  for (int i = 0; i < result->total_part_count(); ++i) {
    const auto& part = result->GetTestPartResult(i);
    if (part.type() != ::testing::TestPartResult::kSkip) continue;
    reason = part.message();
  }
  for (char& c : reason)
    if (c == '\n') c = ' ';
  if (reason.empty()) reason = "(no reason given)";
  std::printf("graft-test: skipped %s.%s: %s\n", info.test_suite_name(), info.name(), reason.c_str());
  std::fflush(stdout);
}

void reportSkips(bool print) {
  if (!print) return;
  ::testing::UnitTest::GetInstance()->listeners().Append(new SkipReporter);
}

int verdict(int gtest_rc, bool print) {
  if (::testing::GTEST_FLAG(list_tests)) return gtest_rc;
  const auto* unit = ::testing::UnitTest::GetInstance();
  if (gtest_rc != 0 || unit->failed_test_count() > 0) return kExitFailed;
  const int ran = unit->test_to_run_count();
  const int skipped = unit->skipped_test_count();
  if (ran == 0) {
    if (print)
      std::printf("graft-test: no test was selected (--gtest_filter=%s): failing, since a suite that "
                "drops out must not pass\n", ::testing::GTEST_FLAG(filter).c_str());
    return kExitFailed;
  }
  if (skipped == ran) {
    if (print) std::printf("graft-test: all %d selected test(s) skipped: reporting the entry as skipped\n", ran);
    return kExitSkipped;
  }
  if (print && skipped > 0) std::printf("graft-test: %d passed, %d skipped (named above)\n", ran - skipped, skipped);
  return kExitPassed;
}

int verdictRank(int exit_code) {
  if (exit_code == kExitSkipped) return 0;
  return exit_code == kExitPassed ? 1 : 2;
}

int exitFromRank(int rank_max) {
  if (rank_max == 0) return kExitSkipped;
  return rank_max == 1 ? kExitPassed : kExitFailed;
}

}  // namespace graft::testing

