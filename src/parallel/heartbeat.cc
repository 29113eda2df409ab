#include "parallel/heartbeat.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <future>
#include <thread>

#include "util/error.h"

namespace graft {

BackgroundWork::BackgroundWork(std::function<void()> work, CancelToken cancel) : cancel_(std::move(cancel)) {
  if (!work) return;
  std::promise<void> promise;
  done_ = promise.get_future();
  // OpenMP's thread count is per thread: the helper uses this thread's (train.threads).
  helper_ = std::thread([work = std::move(work), promise = std::move(promise), threads = at::get_num_threads()]() mutable {
    try {
      at::set_num_threads(threads);
      std::function<void()> job = std::move(work);
      job();
      job = nullptr;  // what the work captured is released before the caller resumes
      promise.set_value();
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
  });
}

BackgroundWork::~BackgroundWork() {
  if (helper_.joinable()) finished_ ? helper_.join() : helper_.detach();
}

bool BackgroundWork::waitFor(std::chrono::milliseconds for_at_most) {
  if (!done_.valid() || finished_) return true;
  if (done_.wait_for(for_at_most) != std::future_status::ready) return false;
  finished_ = true;
  helper_.join();
  try {
    done_.get();
  } catch (...) {
    error_ = std::current_exception();
  }
  return true;
}

bool BackgroundWork::failed() {
  if (!waitFor(std::chrono::milliseconds(0)) || !error_) return false;
  try {
    std::rethrow_exception(error_);
  } catch (const WorkCancelled&) {
    return false;  // another rank's work failed: that rank is the one named
  } catch (...) {
    return true;
  }
}

double BackgroundWork::secondsSinceStart() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

namespace {

// The failing rank's error, as every rank rethrows it: its message and its exit code.
struct Failure {
  std::int32_t exit_code = kExitFailure;
  char message[4000] = {};
};

Failure describeFailure(const std::exception_ptr& error) {
  Failure f;
  std::string text = "unknown error";
  try {
    std::rethrow_exception(error);
  } catch (const InputError& e) {
    f.exit_code = kExitBadInput;
    text = e.what();
  } catch (const std::exception& e) {
    text = e.what();
  } catch (...) {
  }
  if (std::snprintf(f.message, sizeof(f.message), "%s", text.c_str()) >= static_cast<int>(sizeof(f.message)))
    std::snprintf(f.message + sizeof(f.message) - 20, 20, " ... (cut short)");
  return f;
}

}  // namespace

void awaitWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                        const std::string& note, BackgroundWork& work, const std::function<void(double)>& waiting) {
  const auto beat = std::min(std::chrono::milliseconds(1000), comm.timeout() / 4);
  bool mine_done = !work.running();
  // Beats since a rank's failure was agreed: the others' works get comm.timeout() to end (one that
  // waits in a collective for the failed rank never would), then are left behind (the process is
  // about to exit). Every rank counts the same beats, so all stop waiting on the same one.
  std::int64_t beats_since_failure = -1;
  const std::int64_t grace_beats = std::max<std::int64_t>(3, comm.timeout() / std::max(beat, std::chrono::milliseconds(1)));
  for (;;) {
    if (!mine_done) {
      if (work.waitFor(beat)) {
        mine_done = true;
      } else if (work.secondsSinceStart() > limit_s) {
        char limit[32];
        std::snprintf(limit, sizeof(limit), "%g", limit_s);
        throw Error(what + " still not done after dist.slow_phase_timeout_s = " + limit + " s" + note);
      }
    }  // a rank with nothing left to do waits in the all-reduce itself, for at most one beat
    if (waiting) waiting(work.secondsSinceStart());
    // Everyone's work done?, and the lowest rank whose work failed (size(): none).
    std::int32_t beat_state[2] = {mine_done ? 1 : 0, mine_done && work.failed() ? comm.rank() : comm.size()};
    comm.allReduce(beat_state, 2, ReduceOp::Min, tag);
    const int failed = beat_state[1];
    if (failed < comm.size()) {
      work.cancel();  // the others need not finish what is abandoned
      ++beats_since_failure;
    }
    if (!beat_state[0] && (beats_since_failure < 0 || beats_since_failure < grace_beats)) continue;
    if (failed == comm.size()) return;
    // Every rank's work has ended and one failed: every rank rethrows its error (Note [heartbeat]).
    Failure f = failed == comm.rank() ? describeFailure(work.error()) : Failure{};
    comm.broadcastBytes(&f, sizeof(f), failed, "heartbeat/failure");
    f.message[sizeof(f.message) - 1] = 0;
    if (comm.size() == 1) std::rethrow_exception(work.error());
    throw AgreedError("rank " + std::to_string(failed) + " of " + std::to_string(comm.size()) + ": " + f.message,
                      f.exit_code, failed);
  }
}

void runWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                      const std::string& note, std::function<void()> work, const std::function<void(double)>& waiting) {
  BackgroundWork background(std::move(work));
  awaitWithHeartbeat(comm, tag, limit_s, what, note, background, waiting);
}

}  // namespace graft
