// All-reduce bus bandwidth through graft's Communicator vs raw MPI_Allreduce on the same buffers,
// with memcpy bandwidth of the same size as this machine's memory limit. Run under mpirun -np N;
// rank 0 prints one JSON object. busbw = bytes / time x 2(N-1)/N (nccl-tests' definition).
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

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
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
    std::string rows;
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
      const double memcpy_s = timeMedian(repeats, [&] { std::memcpy(c.data(), b.data(), count * 4); }, false);
      char row[400];
      std::snprintf(row, sizeof(row),
                    "%s{\"mb\": %d, \"graft_busbw_gbs\": %.3f, \"mpi_busbw_gbs\": %.3f, \"graft_over_mpi\": %.3f, "
                    "\"memcpy_gbs\": %.3f}",
                    rows.empty() ? "" : ", ", mb, bytes * factor / graft_s / 1e9, bytes * factor / mpi_s / 1e9,
                    mpi_s / graft_s, bytes / memcpy_s / 1e9);
      rows += row;
    }
    if (comm->rank() == 0)
      std::printf("{\"bench\": \"allreduce\", \"ranks\": %d, \"repeats\": %d, \"statistic\": \"median\", \"sizes\": [%s]}\n",
                  n, repeats, rows.c_str());
  }
  MPI_Finalize();
  return 0;
}
