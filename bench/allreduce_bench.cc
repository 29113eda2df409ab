// All-reduce bus bandwidth through graft's Communicator against three baselines on the same
// buffers: one MPI_Allreduce of the whole buffer (Open MPI's default choice, often its slowest for
// large buffers), blocking MPI_Allreduce in 4 MiB chunks, and a ring (reduce-scatter then
// all-gather by MPI_Sendrecv, the bandwidth-optimal algorithm NCCL and Open MPI's tuned ring use);
// with memcpy bandwidth of the same size as this machine's memory limit. After timing, every method
// reduces a known pattern and the result is checked against the exact sum: a mismatch prints
// "verified": false and exits 1. Run under mpirun -np N; rank 0 prints one JSON object.
// busbw = bytes / time x 2(N-1)/N (nccl-tests' definition).
// usage: mpirun -np 2 allreduce_bench [--min-mb 1] [--max-mb 256] [--repeats 9]
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "communicator.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

template <typename F>
double timeMedian(int repeats, F&& f, bool collective) {
  std::vector<double> seconds;
  for (int i = 0; i < repeats; ++i) {
    if (collective) MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = Clock::now();
    f();
    double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (collective) MPI_Allreduce(MPI_IN_PLACE, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    seconds.push_back(s);
  }
  return median(seconds);
}

// Blocking MPI_Allreduce in chunks of `chunk` floats.
void chunkedAllreduce(float* data, std::size_t count, std::size_t chunk) {
  for (std::size_t at = 0; at < count; at += chunk)
    MPI_Allreduce(MPI_IN_PLACE, data + at, static_cast<int>(std::min(chunk, count - at)), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
}

// Ring all-reduce: N-1 steps of reduce-scatter, N-1 of all-gather, each passing one of N blocks to
// the next rank.
void ringAllreduce(float* data, std::size_t count, std::vector<float>& scratch) {
  int rank = 0, n = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  if (n == 1) return;
  const std::size_t block = (count + n - 1) / n;
  auto begin = [&](int b) { return std::min(count, static_cast<std::size_t>(b) * block); };
  auto size = [&](int b) { return static_cast<int>(begin(b + 1) - begin(b)); };
  scratch.resize(block);
  const int next = (rank + 1) % n, prev = (rank + n - 1) % n;
  for (int s = 0; s < n - 1; ++s) {  // after step s, block (rank - s - 1) holds s + 2 ranks' sum
    const int send = (rank - s + n) % n, recv = (rank - s - 1 + n) % n;
    MPI_Sendrecv(data + begin(send), size(send), MPI_FLOAT, next, 0, scratch.data(), size(recv), MPI_FLOAT, prev, 0,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    for (int i = 0; i < size(recv); ++i) data[begin(recv) + i] += scratch[i];
  }
  for (int s = 0; s < n - 1; ++s) {  // block (rank + 1 - s) is complete here; pass it on
    const int send = (rank + 1 - s + n) % n, recv = (rank - s + n) % n;
    MPI_Sendrecv(data + begin(send), size(send), MPI_FLOAT, next, 1, data + begin(recv), size(recv), MPI_FLOAT, prev, 1,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

// Rank r's element i: r + 1 + (i % 7); the sum over N ranks is N(N+1)/2 + N (i % 7), exact in float.
void fillPattern(std::vector<float>& v, int rank) {
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(rank + 1 + static_cast<int>(i % 7));
}
bool holdsSum(const std::vector<float>& v, int n) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] != static_cast<float>(n * (n + 1) / 2 + n * static_cast<int>(i % 7))) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int status = 0;
  int min_mb = 1, max_mb = 256, repeats = 9;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (key == "--min-mb") min_mb = value;
    else if (key == "--max-mb") max_mb = value;
    else if (key == "--repeats") repeats = value;
  }
  {
    auto comm = graft::makeCommunicator("mpi");
    const int n = comm->size();
    const double factor = 2.0 * (n - 1) / n;
    constexpr std::size_t kChunk = std::size_t{1} << 20;  // floats: 4 MiB
    std::string rows;
    bool verified = true;
    std::vector<float> scratch;
    for (int mb = min_mb; mb <= max_mb; mb *= 2) {
      const std::size_t count = static_cast<std::size_t>(mb) << 18;  // floats
      const double bytes = static_cast<double>(count) * 4;
      std::vector<float> a(count, 1.0f), b(count, 1.0f), c(count);
      comm->allReduce(a.data(), count, graft::ReduceOp::Sum, "bench/warmup");
      MPI_Allreduce(MPI_IN_PLACE, b.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      const double graft_s = timeMedian(repeats, [&] { comm->allReduce(a.data(), count, graft::ReduceOp::Sum, "bench/ar"); }, true);
      const double mpi_s = timeMedian(repeats, [&] {
        MPI_Allreduce(MPI_IN_PLACE, b.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
      }, true);
      const double chunked_s = timeMedian(repeats, [&] { chunkedAllreduce(b.data(), count, kChunk); }, true);
      const double ring_s = timeMedian(repeats, [&] { ringAllreduce(b.data(), count, scratch); }, true);
      const double memcpy_s = timeMedian(repeats, [&] { std::memcpy(c.data(), b.data(), count * 4); }, false);
      // What was timed must compute the sum: each method once more on the known pattern.
      bool ok = true;
      auto check = [&](auto&& reduce) {
        fillPattern(a, comm->rank());
        reduce();
        ok = ok && holdsSum(a, n);
      };
      check([&] { comm->allReduce(a.data(), count, graft::ReduceOp::Sum, "bench/check"); });
      check([&] { MPI_Allreduce(MPI_IN_PLACE, a.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); });
      check([&] { chunkedAllreduce(a.data(), count, kChunk); });
      check([&] { ringAllreduce(a.data(), count, scratch); });
      int all_ok = ok ? 1 : 0;
      MPI_Allreduce(MPI_IN_PLACE, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
      verified = verified && all_ok == 1;
      char row[600];
      std::snprintf(row, sizeof(row),
                    "%s{\"mb\": %d, \"graft_busbw_gbs\": %.3f, \"mpi_busbw_gbs\": %.3f, \"mpi_chunked_busbw_gbs\": %.3f, "
                    "\"ring_busbw_gbs\": %.3f, \"graft_over_mpi\": %.3f, \"graft_over_best_baseline\": %.3f, "
                    "\"memcpy_gbs\": %.3f, \"verified\": %s}",
                    rows.empty() ? "" : ", ", mb, bytes * factor / graft_s / 1e9, bytes * factor / mpi_s / 1e9,
                    bytes * factor / chunked_s / 1e9, bytes * factor / ring_s / 1e9, mpi_s / graft_s,
                    std::min({mpi_s, chunked_s, ring_s}) / graft_s, bytes / memcpy_s / 1e9, all_ok ? "true" : "false");
      rows += row;
    }
    if (comm->rank() == 0)
      std::printf("{\"bench\": \"allreduce\", \"ranks\": %d, \"repeats\": %d, \"statistic\": \"median\", \"verified\": %s, "
                  "\"sizes\": [%s]}\n",
                  n, repeats, verified ? "true" : "false", rows.c_str());
    status = verified ? 0 : 1;
  }  // the communicator goes before MPI does
  MPI_Finalize();
  return status;
}
