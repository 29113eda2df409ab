// Long local work (loading a model, verifying or writing a checkpoint) without losing sight of the
// other ranks. See Note [heartbeat].
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <stdexcept>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include "communicator.h"

namespace graft {

// Note [heartbeat]
// ~~~~~~~~~~~~~~~~
// Some phases legitimately take minutes on some ranks only: rank 0 writing a checkpoint, a rank
// loading a big model from a slow file system. Waiting for them in one collective with a long
// timeout would let a rank that dies or stalls meanwhile go unnoticed for that long. Instead,
// `work` runs on a helper thread while this thread meets the other ranks once a second in a small
// all-reduce (`tag`) that says whose work is done, until everyone's is. A rank that stops
// answering (dead, SIGSTOPped, its node gone) is then named within comm.timeout() as anywhere
// else; only the work itself may run up to `limit_s`, after which this rank stops with an Error
// "<what> still not done after dist.slow_phase_timeout_s = N s<note>".
//
// Collective: every rank calls it, each with its own work (empty: nothing to do here). The work
// must not touch the communicator (this thread is in it; a SharedFile, which has its own, may be
// written there), and this thread does nothing else until it returns.
//
// A work that throws (a disk full on one rank) does not end the job from that rank alone: the
// beat says so, the others cancel their own work (BackgroundWork's token) and let it end, and
// then every rank throws the same AgreedError, "rank R of N: <R's error>" (the lowest failing
// rank's; an InputError keeps its exit code), so the job stops with every rank's exit code, not
// through MPI_Abort, and no collective is left half done (a SharedFile's are finished by the rank
// that failed: Note [a write error on one rank]). A work that does not end within comm.timeout()
// of the failure (one stuck in a collective the failed rank never entered) is left behind. In a
// world of one rank the work's own exception is rethrown. The helper is joined once the work is over; only
// when this rank gives up on it (a timeout, or a collective error meanwhile) is it left running:
// the process is about to exit.
// `waiting` (optional) is called on this thread once per beat with the seconds since the start, for
// progress lines.
void runWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                      const std::string& note, std::function<void()> work,
                      const std::function<void(double)>& waiting = nullptr);

// Set once another rank's work failed: a work that waits for the others (rank 0 waiting for the
// ranks' part files) stops waiting when it is.
using CancelToken = std::shared_ptr<std::atomic<bool>>;
inline CancelToken makeCancelToken() { return std::make_shared<std::atomic<bool>>(false); }
// What a cancelled work throws: its rank ends without failing (the rank that failed is named).
class WorkCancelled : public std::runtime_error {
 public:
  WorkCancelled() : std::runtime_error("cancelled: another rank's work failed") {}
};
inline void throwIfCancelled(const CancelToken& cancel) {
  if (cancel && *cancel) throw WorkCancelled();
}

// Work started on a helper thread now and awaited later (checkpoint.async: a checkpoint written
// while training goes on). Empty work: nothing runs, and it counts as done.
class BackgroundWork {
 public:
  BackgroundWork() = default;
  // `cancel` (optional): the token `work` watches, set by cancel().
  explicit BackgroundWork(std::function<void()> work, CancelToken cancel = nullptr);
  BackgroundWork(const BackgroundWork&) = delete;
  BackgroundWork& operator=(const BackgroundWork&) = delete;
  // Joins a helper whose work is over; detaches one still running (only on the way out after an
  // error: the process is about to exit).
  ~BackgroundWork();
  bool running() const { return done_.valid() && !finished_; }
  // Waits up to `for_at_most` for the work to end; true once it has (its exception, if it threw,
  // is then error()).
  bool waitFor(std::chrono::milliseconds for_at_most);
  // True when the work has ended with an exception other than WorkCancelled (does not wait).
  bool failed();
  std::exception_ptr error() const { return error_; }
  void cancel() {
    if (cancel_) *cancel_ = true;
  }
  double secondsSinceStart() const;

 private:
  std::future<void> done_;
  std::thread helper_;
  bool finished_ = false;
  std::exception_ptr error_;
  CancelToken cancel_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Collective: runWithHeartbeat's wait for `work`, started earlier (its limit_s counts from then).
void awaitWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                        const std::string& note, BackgroundWork& work,
                        const std::function<void(double)>& waiting = nullptr);


// Raises the communicator's timeout to `seconds` (dist.slow_phase_timeout_s) while it lives, for
// collectives that cannot report progress and may legitimately take long: the first barrier
// (ranks start far apart), the broadcast of every parameter, the gathers of a ZeRO-3 feature pass
// over a rank's share. Long local work uses runWithHeartbeat instead.
class LongTimeout {
 public:
  LongTimeout(Communicator& comm, double seconds) : comm_(comm), saved_(comm.timeout()) {
    comm_.setTimeout(std::max(saved_, std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000))));
  }
  ~LongTimeout() { comm_.setTimeout(saved_); }
  LongTimeout(const LongTimeout&) = delete;
  LongTimeout& operator=(const LongTimeout&) = delete;

 private:
  Communicator& comm_;
  std::chrono::milliseconds saved_;
};

}  // namespace graft
