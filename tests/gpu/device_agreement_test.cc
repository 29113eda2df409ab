// CUDA against the CPU (issue 13's gpu tests): the same Llama- and GPT-2-style models, the same
// batch, forward logits, every gradient and one AdamW step agree within 1e-5 relative in fp32 with
// TF32 off. Where no CUDA device is visible (CPU LibTorch, CI) each test skips, and ctest reports
// it as skipped (label gpu).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#ifdef GRAFT_WITH_CUDA
#include <ATen/cuda/Sleep.h>
#endif

#include "data/dataset.h"
#include "fused_adamw_check.h"
#include "model/torch_compat.h"
#include "model/transformer.h"
#include "model_fixtures.h"
#include "optim/adamw.h"
#include "tokenizer/tokenizer.h"
#include "train/batches.h"
#include "parallel/grad_reducer.h"
#include "parallel/tensor_collectives.h"

namespace graft {
namespace {

using testing::relative;
using testing::smallModel;

class Gpu : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible (this LibTorch or machine has none)";
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

TEST_P(Gpu, ForwardBackwardAndAdamWAgreeWithTheCpu) {
  const ModelConfig c = smallModel(GetParam());
  Transformer cpu(c), cuda(c);
  cpu->initialise(3);
  cuda->initialise(3);
  cuda->to(torch::kCUDA);
  torch::manual_seed(5);
  const auto ids = torch::randint(c.vocab_size, {2, c.seq_len + 1}, torch::kInt64);
  const auto inputs = ids.narrow(1, 0, c.seq_len), targets = ids.narrow(1, 1, c.seq_len);
  const auto loss_of = [&](Transformer& m, const torch::Device& device) {
    const auto logits = m->forward(inputs.to(device));
    return std::make_pair(logits, torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}),
                                                                      targets.to(device).reshape({-1})));
  };
  auto [cpu_logits, cpu_loss] = loss_of(cpu, torch::kCPU);
  auto [cuda_logits, cuda_loss] = loss_of(cuda, torch::kCUDA);
  EXPECT_TRUE(cuda_logits.is_cuda());
  EXPECT_LT(relative(cuda_logits, cpu_logits), 1e-5);
  cpu_loss.backward();
  cuda_loss.backward();
  const auto cpu_params = cpu->named_parameters(), cuda_params = cuda->named_parameters();
  for (const auto& p : cpu_params) {
    const auto& q = cuda_params[p.key()];
    ASSERT_TRUE(q.grad().defined()) << p.key();
    EXPECT_LT(relative(q.grad(), p.value().grad()), 1e-5) << p.key();
  }
  std::vector<std::pair<std::string, at::Tensor>> a, b;
  for (const auto& p : cpu_params) a.emplace_back(p.key(), p.value());
  for (const auto& p : cuda_params) b.emplace_back(p.key(), p.value());
  AdamWOptions options;
  options.weight_decay = 0.1;
  AdamW cpu_opt(a, options), cuda_opt(b, options);
  {
    torch::NoGradGuard no_grad;
    cpu_opt.step(1e-3);
    cuda_opt.step(1e-3);
  }
  for (const auto& p : cpu_params) EXPECT_LT(relative(cuda_params[p.key()], p.value()), 1e-5) << p.key();
  // On LibTorch 2.x every group of the CUDA step ran the fused kernel; the CPU never does.
  EXPECT_GT(cuda_opt.groups(), 0);
  EXPECT_EQ(cuda_opt.fusedGroups(), compat::kFusedAdamW ? cuda_opt.groups() : 0);
  EXPECT_EQ(cpu_opt.fusedGroups(), 0);
}

// Packed documents on CUDA (Note [packed documents]): the per-row mask and positions give the
// CPU's logits in fp32, and in bf16 (the fused attention kernel with an additive [B, 1, T, T] mask)
// each document's logits stay within bf16 rounding of its fp32 logits alone.
TEST_P(Gpu, PackedDocumentsAgreeWithTheCpu) {
  const ModelConfig c = smallModel(GetParam());
  Transformer cpu(c), cuda(c);
  cpu->initialise(3);
  cuda->initialise(3);
  cuda->to(torch::kCUDA);
  torch::manual_seed(6);
  const auto ids = torch::randint(c.vocab_size, {2, c.seq_len}, torch::kInt64);
  auto positions = torch::zeros({2, c.seq_len}, torch::kInt64);
  for (std::int64_t r = 0; r < 2; ++r)  // documents of 7, 13 and the rest; of 20 and the rest
    for (std::int64_t j = 0, start = 0; j < c.seq_len; ++j) {
      if ((r == 0 && (j == 7 || j == 20)) || (r == 1 && j == 20)) start = j;
      positions[r][j] = j - start;
    }
  torch::NoGradGuard no_grad;
  const auto want = cpu->forward(ids, positions);
  EXPECT_LT(relative(cuda->forward(ids, positions), want), 1e-5);
  cuda->setComputeDtype(torch::kBFloat16);
  const auto bf16 = cuda->forward(ids, positions).cpu();
  const auto alone = cpu->forward(ids.narrow(1, 7, 13).narrow(0, 0, 1))[0];
  EXPECT_LT(relative(bf16[0].narrow(0, 7, 13), alone), 3e-2);
}

INSTANTIATE_TEST_SUITE_P(Architectures, Gpu, ::testing::Values("llama", "gpt2"));

// LibTorch 2.x's fused AdamW kernel (what AdamW::step runs on CUDA there) against graft's
// portable step on the CPU (tests/fused_adamw_check.h).
TEST(FusedAdamW, RunsOnCudaAndMatchesThePortableStep) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  if (!compat::kFusedAdamW) GTEST_SKIP() << "this LibTorch has no fused AdamW kernel";
  testing::expectFusedAdamWMatchesThePortableStep(torch::kCUDA);
}

// Batches land on the GPU (assembled in page-locked memory, copied without blocking) and equal
// the CPU's batches of the same samples and documents, loss-mask counts and labels included.
TEST(Batches, LandOnTheGpuAndEqualTheCpuBatches) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  const auto dir = std::filesystem::temp_directory_path() / ("graft_gpu_batches_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream out(dir / "sft.jsonl");
    for (int i = 0; i < 12; ++i)
      out << "{\"prompt\": \"question " << i << "?\", \"completion\": \" answer number " << i * 7
          << "\", \"label\": \"" << (i % 3 ? "yes" : "no") << "\"}\n";
  }
  const auto bytes = loadTokenizer("bytes");
  PrepareOptions prepare;
  prepare.val_fraction = 0;
  prepareDataset((dir / "sft.jsonl").string(), *bytes, (dir / "sft.h5").string(), prepare, [](std::int64_t, std::int64_t) {});
  TokenDataset data((dir / "sft.h5").string(), "train", 16);
  ASSERT_TRUE(data.hasLossMask());
  ASSERT_TRUE(data.hasLabels());
  const std::vector<std::int64_t> samples = {0, 2, 1}, documents = {3, 0, 5, 11};
  const auto on_cpu = windowBatch(data, samples, torch::kCPU), on_gpu = windowBatch(data, samples, torch::kCUDA);
  EXPECT_TRUE(on_gpu.inputs.is_cuda() && on_gpu.targets.is_cuda());
  EXPECT_TRUE(torch::equal(on_gpu.inputs.cpu(), on_cpu.inputs));
  EXPECT_TRUE(torch::equal(on_gpu.targets.cpu(), on_cpu.targets));
  EXPECT_EQ(on_gpu.counted, on_cpu.counted);
  EXPECT_EQ(on_cpu.counted, on_cpu.targets.ne(TokenDataset::kIgnoreTarget).sum().item<std::int64_t>());
  const auto docs_cpu = documentBatch(data, documents, 32, torch::kCPU), docs_gpu = documentBatch(data, documents, 32, torch::kCUDA);
  EXPECT_TRUE(docs_gpu.ids.is_cuda() && docs_gpu.lengths.is_cuda() && docs_gpu.labels.is_cuda());
  EXPECT_TRUE(torch::equal(docs_gpu.ids.cpu(), docs_cpu.ids));
  EXPECT_TRUE(torch::equal(docs_gpu.lengths.cpu(), docs_cpu.lengths));
  EXPECT_TRUE(torch::equal(docs_gpu.labels.cpu(), docs_cpu.labels));
  std::filesystem::remove_all(dir);
}

// The NCCL communicator at one rank (MPI bootstraps it as a singleton): device buffers through
// NCCL (an all-gather and a reduce-scatter into buffers filled with a sentinel first, so that a
// collective that did not run shows), host buffers through MPI, a bfloat16 wire; and the gradient
// reducer on CUDA parameters (at one rank it sums nothing: it runs no NCCL collective).
TEST(Nccl, DeviceAndHostBuffersAndTheReducerAtOneRank) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  if (!ncclCompiledIn()) GTEST_SKIP() << "this build has no NCCL (GRAFT_WITH_NCCL)";
  auto comm = makeCommunicator("nccl", /*on_cuda=*/true);
  ASSERT_EQ(comm->backend(), "nccl");
  EXPECT_TRUE(comm->carriesDeviceMemory());
  const auto wait = std::chrono::milliseconds(20000);
  const auto cuda = torch::TensorOptions(torch::kFloat).device(torch::kCUDA);
  auto t = torch::arange(1000, cuda);  // the raw API: one rank's tensor collectives would skip NCCL
  comm->allReduceAsync(t.data_ptr(), 1000, DType::Float32, ReduceOp::Sum, "t/sum")->wait(wait);
  EXPECT_TRUE(torch::equal(t.cpu(), torch::arange(1000, torch::kFloat)));
  auto half = torch::arange(1000, cuda).to(at::kBFloat16);
  comm->allReduceAsync(half.data_ptr(), 1000, DType::BFloat16, ReduceOp::Max, "t/bf16")->wait(wait);
  EXPECT_TRUE(torch::equal(half.cpu(), torch::arange(1000, torch::kFloat).to(at::kBFloat16)));
  auto all = torch::full({1000}, -1.0, cuda);
  comm->allGatherAsync(t.data_ptr(), all.data_ptr(), 1000, DType::Float32, "t/ag")->wait(wait);
  EXPECT_TRUE(torch::equal(all.cpu(), t.cpu()));
  auto part = torch::full({1000}, -1.0, cuda);
  comm->reduceScatterAsync(t.data_ptr(), part.data_ptr(), 1000, DType::Float32, ReduceOp::Sum, "t/rs")->wait(wait);
  EXPECT_TRUE(torch::equal(part.cpu(), t.cpu()));
  double host[2] = {1.5, 2.5};
  comm->allReduce(host, 2, ReduceOp::Sum, "t/host");
  EXPECT_EQ(host[0], 1.5);
  auto p = torch::zeros({4096}, cuda).requires_grad_(true);
  GradReducer reducer({{"p", p}}, *comm, {});
  reducer.beginStep();
  reducer.beginMicroStep(true);
  const auto c = torch::arange(4096, cuda).remainder(7);
  (p * c).sum().backward();
  reducer.finish();
  EXPECT_TRUE(torch::equal(p.grad().cpu(), c.cpu()));
}

// dist.timeout_s under NCCL, where Work::wait does not block the host (Note [completion on the
// device]): a collective queued behind ~10 s of compute-stream work, waited on with a 0.3 s
// timeout. wait returns at once; the watchdog aborts the communicator after 0.3 s; the next use
// of the communicator (here with a host buffer) throws, naming the late collective. In a child
// process (a threadsafe death test runs this binary again), since the aborted communicator and
// the sleeping kernel are not for the tests after it; a *DeathTest suite runs before the others,
// so the child starts before this process has started MPI.
TEST(NcclDeathTest, ACollectiveLateForItsTimeoutIsNamedByTheNextUseWithoutBlockingTheWait) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible";
  if (!ncclCompiledIn()) GTEST_SKIP() << "this build has no NCCL (GRAFT_WITH_NCCL)";
  ::testing::GTEST_FLAG(death_test_style) = "threadsafe";
  const auto child = [] {
    auto comm = makeCommunicator("nccl", /*on_cuda=*/true);
    auto t = torch::ones({256}, torch::TensorOptions(torch::kFloat).device(torch::kCUDA));
    torch::cuda::synchronize();
#ifdef GRAFT_WITH_CUDA
    at::cuda::sleep(std::int64_t{20'000'000'000});  // ~10 s of the compute stream at 2 GHz
#endif
    const auto t0 = std::chrono::steady_clock::now();
    comm->allReduceAsync(t.data_ptr(), 256, DType::Float32, ReduceOp::Sum, "t/late")->wait(std::chrono::milliseconds(300));
    const double returned = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "wait returned after %.3f s\n", returned);
    std::this_thread::sleep_for(std::chrono::seconds(2));
    try {
      double host = 1;
      comm->allReduce(&host, 1, ReduceOp::Sum, "t/after");
    } catch (const CollectiveError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      std::_Exit(returned < 0.2 ? 0 : 3);
    }
    std::fprintf(stderr, "no error after the late collective\n");
    std::_Exit(4);
  };
  EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "nccl allReduce 't/late' #1 .*timed out after 0.3");
}

}  // namespace
}  // namespace graft
