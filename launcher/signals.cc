#include "signals.h"

#include <csignal>

namespace graft {
namespace {
// The one process-wide flag: a signal handler can only touch a sig_atomic_t.
volatile std::sig_atomic_t g_stop_requested = 0;
extern "C" void onStopSignal(int) { g_stop_requested = 1; }
}  // namespace

void installStopSignals() {
  struct sigaction action {};
  action.sa_handler = onStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGUSR1, &action, nullptr);
}

bool stopRequested() { return g_stop_requested != 0; }

}  // namespace graft
