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

void runWithHeartbeat(Communicator& comm, const char* tag, double limit_s, const std::string& what,
                      const std::string& note, std::function<void()> work, const std::function<void(double)>& waiting) {
  using Clock = std::chrono::steady_clock;
  std::future<void> done;
  std::thread helper;
  bool finished = false;  // the work returned or threw: the helper is about to end, join it
  struct Reap {
    std::thread& t;
    const bool& finished;
    ~Reap() {
      if (t.joinable()) finished ? t.join() : t.detach();  // detached only on the way out after an error
    }
  } reap{helper, finished};
  if (work) {
    std::promise<void> promise;
    done = promise.get_future();
    // OpenMP's thread count is per thread: the helper uses this thread's (train.threads).
    helper = std::thread([work = std::move(work), promise = std::move(promise), threads = at::get_num_threads()]() mutable {
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
  const auto start = Clock::now();
  const auto beat = std::min(std::chrono::milliseconds(1000), comm.timeout() / 4);
  bool mine_done = !done.valid();
  for (;;) {
    if (!mine_done) {
      if (done.wait_for(beat) == std::future_status::ready) {
        finished = true;
        done.get();  // rethrows the work's exception
        mine_done = true;
      } else if (Clock::now() - start > std::chrono::duration<double>(limit_s)) {
        char limit[32];
        std::snprintf(limit, sizeof(limit), "%g", limit_s);
        throw Error(what + " still not done after dist.slow_phase_timeout_s = " + limit + " s" + note);
      }
    }  // a rank with nothing left to do waits in the all-reduce itself, for at most one beat
    if (waiting) waiting(std::chrono::duration<double>(Clock::now() - start).count());
    std::int32_t all_done[1] = {mine_done ? 1 : 0};
    comm.allReduce(all_done, 1, ReduceOp::Min, tag);
    if (all_done[0]) return;
  }
}

}  // namespace graft
