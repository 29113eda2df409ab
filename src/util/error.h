// Error types and the process exit codes they map to (documented in docs/exit-codes.md).
// Only the executable's main() catches, prints one line and exits; library code throws.
#pragma once

#include <stdexcept>
#include <string>

namespace graft {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,    // a runtime failure (I/O, collective, numerical)
  kExitBadInput = 2,   // bad command line, config, or input file: nothing was changed
  kExitRequeue = 75,   // stopped on request (SIGTERM/SIGUSR1) after writing a checkpoint: requeue me
};

// A runtime failure; the message names what failed (file, tensor, op, rank).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure that every rank raises at the same point, after the ranks agreed on it (a
// checkpoint one rank could not write: Note [heartbeat]): the communicator is sound, so the ranks
// leave together, each with the failing rank's exit code, not through MPI_Abort.
class AgreedError : public Error {
 public:
  // `exit_code`: the failing rank's (kExitBadInput for its InputError).
  AgreedError(const std::string& message, int exit_code, int failed_rank)
      : Error(message), exit_code_(exit_code), failed_rank_(failed_rank) {}
  int exitCode() const { return exit_code_; }
  int failedRank() const { return failed_rank_; }  // the (lowest) rank whose error it is

 private:
  int exit_code_, failed_rank_;
};

// Bad user input: config key or value, missing or malformed file. Exit code 2.
class InputError : public Error {
 public:
  using Error::Error;
};

}  // namespace graft
