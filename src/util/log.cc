#include "util/log.h"

#include <unistd.h>

#include <cstdio>

namespace graft {

Logger::Logger(int rank, int size) : rank_(rank) {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  prefix_ = "[r" + std::to_string(rank) + "/" + std::to_string(size) + " " + host + "] ";
}

void Logger::info(const std::string& message) const {
  std::fprintf(stderr, "%s%s\n", prefix_.c_str(), message.c_str());
  std::fflush(stderr);
}

void Logger::main(const std::string& message) const {
  if (rank_ != 0) return;
  std::fprintf(stdout, "%s\n", message.c_str());
  std::fflush(stdout);
}

}  // namespace graft
