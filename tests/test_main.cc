// GoogleTest main of graft's single-process test binaries: gtest's report, skipped tests named one
// per line, and an exit code that says "skipped" only when everything skipped (test_verdict.h).
#include "test_verdict.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  graft::testing::reportSkips();
  return graft::testing::verdict(RUN_ALL_TESTS());
}
