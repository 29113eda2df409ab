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

BackgroundWork::BackgroundWork(std::function<void()> work) {
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
  if (!done_.valid()) return true;
  if (done_.wait_for(for_at_most) != std::future_status::ready) return false;
  finished_ = true;
  helper_.join();
  done_.get();  // rethrows the work's exception
  return true;
}

double BackgroundWork::secondsSinceStart() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void awaitWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                        const std::string& note, BackgroundWork& work, const std::function<void(double)>& waiting) {
  const auto beat = std::min(std::chrono::milliseconds(1000), comm.timeout() / 4);
  bool mine_done = !work.running();
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
    std::int32_t all_done[1] = {mine_done ? 1 : 0};
    comm.allReduce(all_done, 1, ReduceOp::Min, tag);
    if (all_done[0]) return;
  }
}

void runWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                      const std::string& note, std::function<void()> work, const std::function<void(double)>& waiting) {
  BackgroundWork background(std::move(work));
  awaitWithHeartbeat(comm, tag, limit_s, what, note, background, waiting);
}

}  // namespace graft
