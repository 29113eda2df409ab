// Rank-aware logging. Every line on stderr starts with "[r<rank>/<size> <host>]"; lines that only
// rank 0 should print go through Logger::main(), so the choice is explicit at the call site.
#pragma once

#include <string>

namespace graft {

class Logger {
 public:
  Logger(int rank, int size);
  // Any rank, to stderr, prefixed.
  void info(const std::string& message) const;
  // Rank 0 only, to stdout, unprefixed (progress lines, results).
  void main(const std::string& message) const;
  bool isMain() const { return rank_ == 0; }
  int rank() const { return rank_; }
  int size() const { return size_; }

 private:
  int rank_, size_;
  std::string prefix_;
};

// This machine's host name ("?" when it has none).
std::string hostName();
// True when process `pid` on this machine exists and runs graft (its command line names it): a
// pid reused by another program since does not count.
bool graftProcessAlive(long pid);

// A duration for people: "3m07s", "2h05m", "1d04h" (negative counts as 0).
std::string formatDuration(double seconds);

}  // namespace graft
