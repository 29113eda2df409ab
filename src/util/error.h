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

// Bad user input: config key or value, missing or malformed file. Exit code 2.
class InputError : public Error {
 public:
  using Error::Error;
};

}  // namespace graft
