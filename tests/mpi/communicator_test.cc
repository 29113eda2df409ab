// Collectives on inputs whose results are exactly predictable (integers in floats).
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "mpi_communicator.h"
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
  const std::int64_t ranks_sum = n * (n + 1) / 2;
  comm().reduceScatterAsync(send.data(), recv.data(), block, DType::Int64, ReduceOp::Sum, "test/rs")
      ->wait(std::chrono::milliseconds(10000));
  for (std::size_t i = 0; i < block; ++i)
    ASSERT_EQ(recv[i], static_cast<std::int64_t>(r * block + i) * ranks_sum) << i;
  std::fill(recv.begin(), recv.end(), -1);
  comm().reduceScatterAnyOrderAsync(send.data(), recv.data(), block, DType::Int64, ReduceOp::Sum, "test/rs_ring")
      ->wait(std::chrono::milliseconds(10000));
  for (std::size_t i = 0; i < block; ++i)
    ASSERT_EQ(recv[i], static_cast<std::int64_t>(r * block + i) * ranks_sum) << i << " (any order)";
}

}  // namespace
}  // namespace graft

#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

namespace graft {
namespace {

// Every rank but the last writes interleaved blocks of one existing file (handed over in reverse
// file order), on a helper thread while this thread keeps all-reducing, as a checkpoint's rows
// are written beside the heartbeat; the file then holds each block's bytes and nothing else moved.
// `round_bytes`: the most a rank writes per collective call (small: many rounds, a different
// number on each rank).
void writeInterleavedBlocks(std::uint64_t round_bytes) {
  const int n = comm().size(), r = comm().rank();
  const std::size_t blocks_per_rank = 37, block = 4096 + 7, header = 16;
  const std::size_t bytes = header + blocks_per_rank * static_cast<std::size_t>(n) * block + 5;
  std::int64_t pid = ::getpid();
  comm().broadcast(&pid, 1, 0, "test/pid");
  const std::string path = "/tmp/graft_shared_file_" + std::to_string(pid);
  if (r == 0) std::ofstream(path, std::ios::binary) << std::string(bytes, '.');
  comm().barrier("test/created");
  setSharedFileRoundBytesForTesting(round_bytes);

  std::string error;
  std::unique_ptr<SharedFile> file;
  std::atomic<bool> done{false};
  auto value = [&](std::size_t k, int rank) { return static_cast<char>('A' + (k * n + rank) % 26); };
  std::vector<std::string> data;
  std::vector<SharedFile::Piece> pieces;
  if (r != n - 1)
    for (std::size_t k = blocks_per_rank; k-- > 0;) data.push_back(std::string(block, value(k, r)));
  for (std::size_t i = 0; i < data.size(); ++i) {
    const std::size_t k = blocks_per_rank - 1 - i;
    pieces.push_back({header + (k * n + r) * block, data[i].data(), block});
  }
  std::thread writer([&] {  // opened and written beside the heartbeat, as checkpoints are
    try {
      file = comm().openSharedFile(path, &error);
      if (file) file->writeAndClose(pieces);
    } catch (const std::exception& e) {
      error = e.what();
    }
    done = true;
  });
  for (;;) {  // a heartbeat on the main communicator meanwhile
    std::int32_t all_done = done ? 1 : 0;
    comm().allReduce(&all_done, 1, ReduceOp::Min, "test/beat");
    if (all_done) break;
  }
  writer.join();
  setSharedFileRoundBytesForTesting(std::uint64_t{1} << 30);
  EXPECT_TRUE(file && error.empty()) << error;
  comm().barrier("test/written");
  if (r == 0) {
    std::ifstream in(path, std::ios::binary);
    const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(got.size(), bytes);
    if (got.size() == bytes) {
      EXPECT_EQ(got.substr(0, header), std::string(header, '.'));
      EXPECT_EQ(got.substr(bytes - 5), std::string(5, '.'));
      std::string wrong;  // the blocks that differ
      for (std::size_t k = 0; k < blocks_per_rank; ++k)
        for (int owner = 0; owner < n; ++owner) {
          const char want = owner == n - 1 ? '.' : value(k, owner);
          if (got.compare(header + (k * n + owner) * block, block, std::string(block, want)) != 0)
            wrong += " " + std::to_string(k) + "/" + std::to_string(owner);
        }
      EXPECT_EQ(wrong, "") << "blocks (index/rank) that hold other bytes";
    }
    std::remove(path.c_str());
  }
  comm().barrier("test/checked");
}

TEST(Communicator, SharedFileTakesEveryRanksBlocksWhileCollectivesGoOn) { writeInterleavedBlocks(std::uint64_t{1} << 30); }

// 10000-byte rounds: a block splits across rounds, and the last rank (no blocks) writes nothing in
// as many rounds as the others need.
TEST(Communicator, SharedFileWritesInRoundsOfBoundedSize) { writeInterleavedBlocks(10000); }

// Several reduce-scatters in flight at once (as dist.shard = gradients starts them on NCCL),
// waited for in another order than they were started: each gives its own sums (and a maximum),
// MPI's own and graft's ring alike (Note [ring reduce-scatter]). Every rank waits in the same
// order, as it must (a ring moves only while it is waited for), so this checks the rings' rounds
// and buffers, not their tags: ranks posting the same rounds in the same order match even under
// one tag.
TEST(Communicator, ReduceScattersInFlightTogetherEachGiveTheirOwnSums) {
  for (const bool any_order : {false, true}) {
  const int n = comm().size(), r = comm().rank();
  const std::size_t block = 5000;
  std::vector<std::vector<float>> send(3), recv(3, std::vector<float>(block, -1));
  std::vector<WorkPtr> works;
  for (int j = 0; j < 3; ++j) {
    send[j].resize(block * static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < send[j].size(); ++i) send[j][i] = static_cast<float>((i % 97) * (r + 1) + 1000 * j);
    const ReduceOp op = j == 1 ? ReduceOp::Max : ReduceOp::Sum;
    works.push_back(any_order ? comm().reduceScatterAnyOrderAsync(send[j].data(), recv[j].data(), block, DType::Float32, op, "test/rs_many")
                              : comm().reduceScatterAsync(send[j].data(), recv[j].data(), block, DType::Float32, op, "test/rs_many"));
  }
  for (int j = 2; j >= 0; --j) works[static_cast<std::size_t>(j)]->wait(std::chrono::milliseconds(10000));
  for (int j = 0; j < 3; ++j)
    for (std::size_t i = 0; i < block; ++i) {
      const std::size_t at = static_cast<std::size_t>(r) * block + i;
      const double want = j == 1 ? static_cast<double>((at % 97) * n + 1000 * j)
                                 : static_cast<double>((at % 97) * n * (n + 1) / 2 + 1000 * j * n);
      ASSERT_EQ(recv[j][i], want) << "reduce-scatter " << j << ", element " << i << (any_order ? " (any order)" : "");
    }
  }
}

}  // namespace
}  // namespace graft
