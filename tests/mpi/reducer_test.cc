// GradReducer on every rank (mpirun -np 2 / -np 4), with gradients that are integers so every
// average is exact: loss = sum_i (p_i * c_i) gives grad p_i = c_i exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "mpi_world.h"
#include "parallel/grad_reducer.h"
#include "util/error.h"

namespace graft {
namespace {

Communicator& comm() { return *testing::g_comm; }

struct Toy {
  std::vector<std::pair<std::string, torch::Tensor>> params;
  Toy(bool freeze_second = false) {
    const std::vector<std::int64_t> sizes = {7000, 13, 50000, 999};  // 28 KB, 52 B, 200 KB, 4 KB
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      auto p = torch::zeros({sizes[i]}, torch::kFloat).requires_grad_(!(freeze_second && i == 1));
      params.emplace_back("p" + std::to_string(i), p);
    }
  }
  // Integer coefficients that differ per rank and per micro-step.
  static torch::Tensor coefficient(std::int64_t n, int rank, int micro) {
    return (torch::arange(n, torch::kFloat).remainder(11) - 5) * static_cast<float>(rank + 1 + 3 * micro);
  }
  void backward(int micro) {
    torch::Tensor loss = torch::zeros({});
    for (auto& [name, p] : params)
      if (p.requires_grad()) loss = loss + (p * coefficient(p.numel(), comm().rank(), micro)).sum();
    loss.backward();
  }
  // The exact average over ranks of the summed coefficients of `micros` micro-steps.
  static torch::Tensor expected(std::int64_t n, int micros) {
    auto sum = torch::zeros({n}, torch::kFloat);
    for (int r = 0; r < comm().size(); ++r)
      for (int m = 0; m < micros; ++m) sum += coefficient(n, r, m);
    return sum / static_cast<float>(comm().size());
  }
};

TEST(GradReducer, BucketedEqualsFlatAndTheExactAverage) {
  Toy bucketed, flat;
  GradReducer many(bucketed.params, comm(), {1000, 40000, true});
  GradReducer one(flat.params, comm(), {1u << 30, 1u << 30, false});
  ASSERT_GE(many.plan().buckets.size(), 3u);
  ASSERT_EQ(one.plan().buckets.size(), 1u);
  const std::pair<GradReducer*, Toy*> runs[] = {{&many, &bucketed}, {&one, &flat}};
  for (int step = 0; step < 2; ++step) {
    for (const auto& pair : runs) {
      pair.first->beginStep();
      pair.first->beginMicroStep(true);
      pair.second->backward(0);
      pair.first->finish();
    }
    EXPECT_EQ(many.collectivesLastStep(), many.plan().buckets.size());
    for (std::size_t i = 0; i < bucketed.params.size(); ++i) {
      const auto& a = bucketed.params[i].second.grad();
      EXPECT_TRUE(torch::equal(a, flat.params[i].second.grad())) << i;
      EXPECT_TRUE(torch::equal(a, Toy::expected(a.numel(), 1))) << i;
    }
  }
}

TEST(GradReducer, FrozenParametersHaveNoBucketAndNoGradient) {
  Toy toy(/*freeze_second=*/true);
  GradReducer reducer(toy.params, comm(), {1, 1, true});  // one bucket per trainable parameter
  EXPECT_EQ(reducer.plan().buckets.size(), 3u);
  EXPECT_EQ(reducer.plan().bucket_of[1], -1);
  reducer.beginStep();
  reducer.beginMicroStep(true);
  toy.backward(0);
  reducer.finish();
  EXPECT_EQ(reducer.collectivesLastStep(), 3u);
  EXPECT_FALSE(toy.params[1].second.grad().defined());
  EXPECT_TRUE(torch::equal(toy.params[2].second.grad(), Toy::expected(50000, 1)));
}

TEST(GradReducer, AccumulationCommunicatesOnlyOnTheLastMicroStep) {
  Toy toy;
  GradReducer reducer(toy.params, comm(), {1000, 40000, true});
  reducer.beginStep();
  reducer.beginMicroStep(false);
  toy.backward(0);
  EXPECT_EQ(reducer.collectivesLastStep(), 0u);
  // Not synced yet: each rank still holds its own coefficients.
  EXPECT_TRUE(torch::equal(toy.params[0].second.grad(), Toy::coefficient(7000, comm().rank(), 0)));
  reducer.beginMicroStep(true);
  toy.backward(1);
  reducer.finish();
  EXPECT_EQ(reducer.collectivesLastStep(), reducer.plan().buckets.size());
  for (auto& [name, p] : toy.params) EXPECT_TRUE(torch::equal(p.grad(), Toy::expected(p.numel(), 2))) << name;
}

TEST(GradReducer, MismatchedPlansNameTheFirstDifferingParameter) {
  Toy toy(/*freeze_second=*/comm().rank() == comm().size() - 1);
  try {
    GradReducer reducer(toy.params, comm(), {1000, 40000, true});
    FAIL() << "plans differ but no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("first at parameter #1"), std::string::npos) << what;
    EXPECT_NE(what.find("'p1 13 trainable'"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace graft

#include "parallel/tensor_collectives.h"

namespace graft {
namespace {

TEST(TensorCollectives, ExactResultsOnIntegerTensors) {
  const int n = comm().size(), r = comm().rank();
  const auto wait = std::chrono::milliseconds(10000);
  auto t = torch::arange(12, torch::kFloat) * static_cast<float>(r + 1);
  allReduce(comm(), t, ReduceOp::Sum, "t/sum")->wait(wait);
  EXPECT_TRUE(torch::equal(t, torch::arange(12, torch::kFloat) * static_cast<float>(n * (n + 1) / 2)));

  auto input = torch::arange(4 * n, torch::kLong) + 100 * r;
  auto block = torch::empty({4}, torch::kLong);
  reduceScatter(comm(), input, block, ReduceOp::Max, "t/rs")->wait(wait);
  EXPECT_TRUE(torch::equal(block, torch::arange(4 * r, 4 * r + 4, torch::kLong) + 100 * (n - 1)));

  auto gathered = torch::empty({2 * n}, torch::kDouble);
  allGather(comm(), torch::full({2}, static_cast<double>(r), torch::kDouble), gathered, "t/ag")->wait(wait);
  EXPECT_TRUE(torch::equal(gathered, torch::arange(n, torch::kDouble).repeat_interleave(2)));

  auto b = torch::full({3}, r == 0 ? 7 : 0, torch::kInt);
  broadcast(comm(), b, 0, "t/bcast")->wait(wait);
  EXPECT_TRUE(torch::equal(b, torch::full({3}, 7, torch::kInt)));

  auto wrong = torch::empty({3}, torch::kLong);
  EXPECT_THROW(reduceScatter(comm(), input, wrong, ReduceOp::Sum, "t/bad"), CollectiveError);
  auto strided = torch::zeros({4, 4}).t();
  EXPECT_THROW(allReduce(comm(), strided, ReduceOp::Sum, "t/strided"), CollectiveError);
}

// dist.reduce_dtype = bf16: the values travel and are summed as bfloat16 (MPI has none: graft's
// own 2-byte type and reductions, Note [bfloat16 over MPI]), and come back into the float32 tensor.
TEST(TensorCollectives, Bfloat16WireRoundsEachSumAsTorchDoes) {
  const int n = comm().size(), r = comm().rank();
  const auto wait = std::chrono::milliseconds(10000);
  std::vector<torch::Tensor> all;  // every rank's values, drawn the same way on every rank
  for (int k = 0; k < n; ++k) all.push_back(torch::randn({1000}, at::detail::createCPUGenerator(7 + k)));
  auto t = all[r].clone();
  allReduce(comm(), t, ReduceOp::Sum, "t/bf16", at::kBFloat16)->wait(wait);
  ASSERT_EQ(t.scalar_type(), at::kFloat);
  EXPECT_TRUE(torch::equal(t, t.to(at::kBFloat16).to(at::kFloat))) << "the sum did not travel as bfloat16";
  auto exact = torch::zeros({1000}, torch::kDouble), magnitude = torch::zeros({1000}, torch::kDouble);
  for (const auto& x : all) exact += x.to(torch::kDouble), magnitude += x.abs().to(torch::kDouble);
  if (n == 2) {  // one addition: torch's bfloat16 rounding of the float32 sum of the two rounded values
    const auto want = (all[0].to(at::kBFloat16).to(at::kFloat) + all[1].to(at::kBFloat16).to(at::kFloat)).to(at::kBFloat16).to(at::kFloat);
    EXPECT_TRUE(torch::equal(t, want));
  }
  // Each of the n - 1 additions and the n inputs round by at most 2^-9 of what they hold.
  EXPECT_TRUE(((t.to(torch::kDouble) - exact).abs() <= magnitude * (2.0 * n) / 512).all().item<bool>());
  EXPECT_FALSE(torch::equal(t, exact.to(torch::kFloat))) << "a float32 sum would match it exactly";

  // Reduce-scatter, and sums that bfloat16 holds exactly (small integers): exact.
  auto input = (torch::arange(4 * n, torch::kFloat) + 1) * static_cast<float>(r + 1);
  auto block = torch::empty({4}, torch::kFloat);
  reduceScatter(comm(), input, block, ReduceOp::Sum, "t/rs_bf16", at::kBFloat16)->wait(wait);
  EXPECT_TRUE(torch::equal(block, (torch::arange(4 * r, 4 * r + 4, torch::kFloat) + 1) * static_cast<float>(n * (n + 1) / 2)));
  auto peak = torch::full({5}, static_cast<float>(r) + 0.5f);
  allReduce(comm(), peak, ReduceOp::Max, "t/max_bf16", at::kBFloat16)->wait(wait);
  EXPECT_TRUE(torch::equal(peak, torch::full({5}, static_cast<float>(n - 1) + 0.5f)));
}

TEST(GradReducer, Bfloat16BucketsGiveTheExactAverageOfSmallIntegers) {
  Toy toy;
  GradReducerOptions options{1000, 40000, true, at::kBFloat16};
  GradReducer reducer(toy.params, comm(), options);
  reducer.beginStep();
  reducer.beginMicroStep(true);
  toy.backward(0);
  reducer.finish();
  for (const auto& [name, p] : toy.params) {
    ASSERT_EQ(p.grad().scalar_type(), at::kFloat) << name;
    EXPECT_TRUE(torch::equal(p.grad(), Toy::expected(p.numel(), 1))) << name;
  }
}

}  // namespace
}  // namespace graft
