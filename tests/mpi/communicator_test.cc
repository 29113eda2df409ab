// Collectives on inputs whose results are exactly predictable (integers in floats).
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "mpi_world.h"

namespace graft {
namespace {

Communicator& comm() { return *testing::g_comm; }

TEST(Communicator, WorldIsConsistent) {
  EXPECT_EQ(comm().backend(), "mpi");
  EXPECT_GE(comm().size(), 2);
  EXPECT_LT(comm().rank(), comm().size());
  EXPECT_LT(comm().localRank(), comm().localSize());
}

TEST(Communicator, AllReduceSumIsExactOnIntegers) {
  const int n = comm().size(), r = comm().rank();
  for (std::size_t count : {1ul, 1000ul, (1ul << 20) + 3}) {
    std::vector<float> data(count);
    for (std::size_t i = 0; i < count; ++i) data[i] = static_cast<float>((i % 1000) * (r + 1));
    comm().allReduce(data.data(), count, ReduceOp::Sum, "test/sum");
    const float ranks_sum = static_cast<float>(n * (n + 1) / 2);
    for (std::size_t i = 0; i < count; ++i) ASSERT_EQ(data[i], static_cast<float>(i % 1000) * ranks_sum) << i;
  }
}

TEST(Communicator, AllReduceMaxMinAndTypes) {
  const int n = comm().size(), r = comm().rank();
  double d[2] = {static_cast<double>(r), -static_cast<double>(r)};
  comm().allReduce(d, 2, ReduceOp::Max, "test/max");
  EXPECT_EQ(d[0], n - 1);
  EXPECT_EQ(d[1], 0);
  std::int64_t v = 10 + r;
  comm().allReduce(&v, 1, ReduceOp::Min, "test/min");
  EXPECT_EQ(v, 10);
}

TEST(Communicator, BroadcastAndAllGather) {
  const int n = comm().size(), r = comm().rank();
  std::vector<std::int32_t> data(5, r == n - 1 ? 77 : -1);
  comm().broadcast(data.data(), data.size(), n - 1, "test/bcast");
  for (auto x : data) EXPECT_EQ(x, 77);
  const std::int32_t mine[2] = {r, r * r};
  std::vector<std::int32_t> all(2 * static_cast<std::size_t>(n));
  comm().allGather(mine, 2, all.data(), "test/gather");
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(all[2 * k], k);
    EXPECT_EQ(all[2 * k + 1], k * k);
  }
  comm().barrier("test/barrier");
}

}  // namespace
}  // namespace graft

namespace graft {
namespace {

TEST(Communicator, ReduceScatterGivesEachRankItsReducedBlock) {
  const int n = comm().size(), r = comm().rank();
  const std::size_t block = 1000;
  std::vector<std::int64_t> send(block * static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < send.size(); ++i) send[i] = static_cast<std::int64_t>(i) * (r + 1);
  std::vector<std::int64_t> recv(block, -1);
  comm().reduceScatterAsync(send.data(), recv.data(), block, DType::Int64, ReduceOp::Sum, "test/rs")
      ->wait(std::chrono::milliseconds(10000));
  const std::int64_t ranks_sum = n * (n + 1) / 2;
  for (std::size_t i = 0; i < block; ++i)
    ASSERT_EQ(recv[i], static_cast<std::int64_t>(r * block + i) * ranks_sum) << i;
}

}  // namespace
}  // namespace graft
