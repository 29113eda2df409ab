#include "util/log.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include <algorithm>
#include <cstdio>

namespace graft {

std::string hostName() {
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  host[sizeof(host) - 1] = '\0';
  return host;
}

bool graftProcessAlive(long pid) {
  if (pid <= 0) return false;
  if (::kill(static_cast<pid_t>(pid), 0) != 0 && errno != EPERM) return false;
  std::FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/cmdline").c_str(), "rb");
  if (!f) return true;  // no /proc: the process exists, whatever it runs
  char buffer[4096];
  const std::size_t n = std::fread(buffer, 1, sizeof(buffer), f);
  std::fclose(f);
  return std::string(buffer, n).find("graft") != std::string::npos;
}

Logger::Logger(int rank, int size) : rank_(rank), size_(size) {
  prefix_ = "[r" + std::to_string(rank) + "/" + std::to_string(size) + " " + hostName() + "] ";
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

std::string formatDuration(double seconds) {
  char buf[48];
  const long s = static_cast<long>(std::max(0.0, seconds));
  if (s >= 86400) std::snprintf(buf, sizeof(buf), "%ldd%02ldh", s / 86400, (s / 3600) % 24);
  else if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  return buf;
}

}  // namespace graft
