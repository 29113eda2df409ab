// Small helpers shared by unit tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace graft {

// stdout of a shell command (the independent references: GRAFT_PYTHON, a Python with torch); the test
// fails when the command exits non-zero.
inline std::string runCommand(const std::string& command) {
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return "";
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  EXPECT_EQ(::pclose(p), 0) << command;
  return out;
}

}  // namespace graft
