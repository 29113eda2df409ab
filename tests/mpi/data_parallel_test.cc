// The data-parallel strategies (parallel/data_parallel.h) on every rank (mpirun -np 2 / -np 4):
// none, optimizer (ZeRO-1), gradients (ZeRO-2) and parameters (ZeRO-3) must agree with each other and with an
// independent reference: LibTorch's own torch::optim::AdamW in one process on the average
// gradients (loss = sum p * c, so grad p = c). The coefficients are not integers: at 2 ranks a sum
// of two is the same in any order, so the modes must give the same bits; at 4, MPI's all-reduce and
// reduce-scatter may add in different orders, so 1e-6.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "convert/model_io.h"
#include "convert/model_source.h"
#include "formats/hdf5.h"
#include "formats/llama2c.h"
#include "train/checkpointing.h"
#include "mpi_world.h"
#include "parallel/data_parallel.h"
#include "parallel/parameter_shards.h"
#include "parallel/shard_plan.h"
#include "model/block_reuse.h"
#include "model/transfer_apply.h"
#include "model/transformer.h"
#include "util/error.h"

namespace graft {
namespace {

Communicator& comm() { return *testing::g_comm; }

using Params = std::vector<std::pair<std::string, torch::Tensor>>;

// Units of every kind: more rows than ranks, fewer rows than ranks (some ranks hold none), one row,
// a frozen parameter inside a unit.
Params toyParams(bool freeze_bias = false) {
  torch::manual_seed(7);  // the same values on every rank
  Params p;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, bool trainable) {
    p.emplace_back(name, torch::randn(shape).requires_grad_(trainable));
  };
  add("tok_embeddings.weight", {13, 6}, true);
  add("layers.0.w", {7, 5}, true);
  add("layers.0.b", {7}, !freeze_bias);
  add("layers.0.frozen", {9, 2}, false);
  add("layers.1.w", {3, 5}, true);
  add("norm.weight", {1}, true);
  add("output.weight", {4, 3}, true);  // trains, but no step uses it: no gradient ever arrives
  add("head.weight", {5, 2}, true);    // used in the first micro-step only (not the syncing one)
  return p;
}

torch::Tensor coefficient(const torch::Tensor& p, int rank, int micro) {
  return ((torch::arange(p.numel(), torch::kFloat).remainder(11) - 5) * (0.1f * static_cast<float>(rank + 1 + 3 * micro)))
      .view(p.sizes());
}

// With dist.shard = parameters, each unit is used between enterUnit and leaveUnit as the model does
// (model/transformer.h UnitGate): gathered for the forward, and again for the backward by the hook
// leaveUnit puts on its output.
void backward(DataParallel& dp, Params& params, int micro) {
  torch::Tensor loss = torch::zeros({});
  for (std::size_t k = 0; k < params.size();) {
    const std::string unit = unitOf(params[k].first);
    dp.enterUnit(unit);
    torch::Tensor term = torch::zeros({});
    for (; k < params.size() && unitOf(params[k].first) == unit; ++k) {
      auto& [name, p] = params[k];
      if (p.requires_grad() && name != "output.weight" && (name != "head.weight" || micro == 0))
        term = term + (p * coefficient(p, comm().rank(), micro)).sum();
    }
    dp.leaveUnit(unit, torch::Tensor(), term, /*backward_reads_params=*/true);
    loss = loss + term;
  }
  loss.backward();
}

constexpr double kClip = 10.0, kLr = 0.05;
constexpr int kSteps = 4, kMicro = 2;

// kSteps optimizer steps of kMicro micro-steps each, clipped to kClip; returns the norms.
std::vector<double> train(DataParallel& dp, Params& params) {
  std::vector<double> norms;
  dp.broadcastParameters();
  dp.keepOwnRows();  // parameters: each rank keeps its rows from here on
  for (int step = 0; step < kSteps; ++step) {
    dp.beginStep();
    for (int m = 0; m < kMicro; ++m) {
      dp.beginMicroStep(m + 1 == kMicro);
      backward(dp, params, m);
    }
    dp.finish();
    const double norm = dp.gradNorm();
    if (norm > kClip) dp.scaleGradients(kClip / (norm + 1e-6));
    dp.step(kLr);
    norms.push_back(norm);
  }
  dp.gatherParameters();  // whole again, to compare
  return norms;
}

// A Llama of `layers` blocks, as wide as the test needs (heads = kv heads).
ModelConfig llama(int dim, int hidden_dim, int layers, int heads, int vocab, int seq_len) {
  ModelConfig c;
  c.dim = dim;
  c.hidden_dim = hidden_dim;
  c.n_layers = layers;
  c.n_heads = c.n_kv_heads = heads;
  c.vocab_size = vocab;
  c.seq_len = seq_len;
  return c;
}

DataParallelOptions options(const std::string& shard, bool accumulate_rows = true) {
  return {shard, {64, 256, true}, {0.9, 0.95, 1e-8, 0.1}, true, accumulate_rows};
}

TEST(DataParallel, EveryShardModeGivesTheSameBitsAsTorchAdamW) {
  // The reference: one process, the exact average gradient, torch.optim's AdamW.
  Params ref = toyParams();
  std::vector<torch::Tensor> trainable;
  for (auto& [name, p] : ref)
    if (p.requires_grad()) trainable.push_back(p);
  // graft decays matrices only: vectors go in a group without weight decay.
  std::vector<torch::Tensor> matrices, vectors;
  for (auto& p : trainable) (p.dim() >= 2 ? matrices : vectors).push_back(p);
  auto group = [](std::vector<torch::Tensor> params, double decay) {
    return torch::optim::OptimizerParamGroup(
        std::move(params), std::make_unique<torch::optim::AdamWOptions>(
                               torch::optim::AdamWOptions(kLr).betas({0.9, 0.95}).eps(1e-8).weight_decay(decay)));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.push_back(group(matrices, 0.1));
  groups.push_back(group(vectors, 0.0));
  torch::optim::AdamW adamw(std::move(groups));
  std::vector<double> ref_norms;
  for (int step = 0; step < kSteps; ++step) {
    double sq = 0;
    for (std::size_t i = 0, t = 0; i < ref.size(); ++i) {
      if (!ref[i].second.requires_grad()) continue;
      auto& p = trainable[t++];
      const std::string& name = ref[i].first;
      auto g = torch::zeros(p.sizes(), torch::kDouble);
      for (int r = 0; r < comm().size(); ++r)
        for (int m = 0; m < kMicro; ++m)
          if (name != "output.weight" && (name != "head.weight" || m == 0)) g += coefficient(p, r, m).to(torch::kDouble);
      g /= comm().size();
      sq += g.pow(2).sum().item<double>();
      p.mutable_grad() = g.to(torch::kFloat);
    }
    const double norm = std::sqrt(sq);
    ref_norms.push_back(norm);
    if (norm > kClip)
      for (auto& p : trainable) p.mutable_grad().mul_(kClip / (norm + 1e-6));
    adamw.step();
  }

  // Gradients and parameters accumulate in whole gradients (the replicated run's bits at 1 and 2
  // ranks) and, by default, in rows every micro-step (another order of summation: within 1e-6).
  std::vector<Params> results;
  std::vector<std::vector<double>> norms;
  std::vector<bool> bitwise;
  for (const std::string mode : {"none", "optimizer", "gradients", "parameters", "gradients rows", "parameters rows"}) {
    const bool rows = mode.find(" rows") != std::string::npos;
    const std::string shard = mode.substr(0, mode.find(' '));
    results.push_back(toyParams());
    auto dp = makeDataParallel(results.back(), comm(), options(shard, rows));
    norms.push_back(train(*dp, results.back()));
    bitwise.push_back(!rows);
    if (mode != "none") {
      EXPECT_NE(dp->describe().find("dist.shard = " + shard), std::string::npos) << dp->describe();
    }
  }
  ASSERT_GT(ref_norms.front(), kClip);  // clipping took part
  const bool exact_world = comm().size() <= 2;
  for (std::size_t i = 0; i < results.front().size(); ++i) {
    const auto& [name, none] = results[0][i];
    for (std::size_t mode = 1; mode < results.size(); ++mode) {
      if (exact_world && bitwise[mode]) {
        EXPECT_TRUE(torch::equal(none, results[mode][i].second)) << name << " differs in mode " << mode;
      }
      EXPECT_TRUE(torch::allclose(none, results[mode][i].second, 1e-6, 1e-7)) << name << " in mode " << mode;
    }
    EXPECT_TRUE(torch::allclose(none, ref[i].second, 1e-5, 1e-6))
        << name << ": " << (none - ref[i].second).abs().max().item<float>();
  }
  EXPECT_FALSE(torch::equal(results[0][0].second, toyParams()[0].second));  // it trained
  for (int step = 0; step < kSteps; ++step) {
    for (std::size_t mode = 1; mode < norms.size(); ++mode) {
      if (exact_world && bitwise[mode]) {
        EXPECT_EQ(norms[0][step], norms[mode][step]) << step;
      }
      EXPECT_NEAR(norms[0][step], norms[mode][step], (bitwise[mode] ? 1e-9 : 1e-6) * norms[0][step]) << step << " mode " << mode;
    }
    EXPECT_NEAR(norms[0][step], ref_norms[step], 1e-6 * ref_norms[step]) << step;
  }
}

// Note [accumulating in rows]: under dist.accumulate = rows, once a micro-step ends no parameter
// holds a whole gradient (each unit was reduce-scattered and its gradients freed), in gradients and
// parameters modes; the step's rows are the sum of every micro-step's (the same as whole, within
// rounding). Under whole, every parameter that took part holds its whole gradient until the last
// micro-step: what rows exists to avoid (4 bytes per parameter on every rank).
TEST(DataParallel, AccumulatingInRowsLeavesNoWholeGradientBetweenMicroSteps) {
  for (const std::string shard : {"gradients", "parameters"})
    for (const bool rows : {true, false}) {
      Params params = toyParams();
      auto dp = makeDataParallel(params, comm(), options(shard, rows));
      dp->broadcastParameters();
      dp->keepOwnRows();
      dp->beginStep();
      for (int m = 0; m < 4; ++m) {
        dp->beginMicroStep(m == 3);
        if (m > 0) {  // the micro-step before has ended
          std::vector<std::string> whole;
          for (auto& [name, p] : params)
            if (p.grad().defined()) whole.push_back(name);
          if (rows) {
            EXPECT_TRUE(whole.empty()) << shard << " micro-step " << m << ": " << whole.front() << " holds a whole gradient";
          } else {
            EXPECT_EQ(whole.size(), 6u) << shard << " micro-step " << m;  // every parameter a step uses
          }
        }
        backward(*dp, params, m % kMicro);
      }
      dp->finish();
      for (auto& [name, p] : params) EXPECT_FALSE(p.grad().defined()) << shard << " " << name;
      EXPECT_GT(dp->gradNorm(), 0);
    }
}

// Note [the first step's order]: in the run's first step a unit that backward reaches never (an
// untied output under a classification head) or late (a soft prompt, used first) holds back no
// other unit's reduce-scatter: during the first backward at most a unit's whole gradients live at
// once, and when it ends every gradient it made was sent and freed. (In reverse registration order
// the classification case kept all 29 until finish(); the soft prompt's unit happens to be ready in
// time in either order.)
TEST(DataParallel, TheFirstStepHoldsBackNoReduceScatter) {
  ModelConfig c = llama(64, 128, 3, 4, 32, 16);
  c.tied = false;
  for (const std::string shard : {"gradients", "parameters"})
    for (const std::string late : {"classification head", "soft prompt"}) {
      Transformer m(c);
      m->initialise(3);
      if (late == "soft prompt") {
        m->addSoftPrompt(4, 5);
      } else {
        m->addClassifierHead(4, "last", 5);
      }
      Params params;
      for (const auto& p : m->named_parameters()) params.emplace_back(p.key(), p.value());
      auto dp = makeDataParallel(params, comm(), options(shard));
      dp->broadcastParameters();
      dp->keepOwnRows();
      m->setUnitGate(unitGateOf(*dp));
      torch::manual_seed(7 + comm().rank());
      const auto ids = torch::randint(c.vocab_size, {2, 8}, torch::kInt64);
      dp->beginStep();
      dp->beginMicroStep(/*sync=*/true);
      const auto loss = late == "soft prompt"
                            ? m->loss(ids, ids)
                            : torch::cross_entropy_loss(m->classifySequences(ids, torch::full({2}, 8, torch::kInt64)),
                                                        torch::tensor({1, 3}, torch::kInt64));
      // How many parameters hold a whole gradient, each time one more gradient is computed.
      std::size_t most = 0;
      for (auto& [name, p] : params)
        p.register_hook([&params, &most](const torch::Tensor& g) {
          std::size_t whole = 1;  // this one, about to be accumulated
          for (auto& q : params) whole += q.second.grad().defined() ? 1 : 0;
          most = std::max(most, whole);
          return g;
        });
      loss.backward();
      std::vector<std::string> whole;
      for (auto& [name, p] : params)
        if (p.grad().defined()) whole.push_back(name);
      EXPECT_TRUE(whole.empty()) << shard << ", " << late << ": " << whole.size() << " whole gradients left, the first "
                                 << (whole.empty() ? "" : whole.front());
      // A block's 9 parameters, and one of the next unit's, at most: each unit goes when it is complete.
      EXPECT_LE(most, 10u) << shard << ", " << late << ": " << most << " whole gradients at once during backward";
      dp->finish();
      EXPECT_GT(dp->gradNorm(), 0);
    }
}

// What each mode hands the checkpoint writer (DataParallel::checkpointRows), written by the ranks
// together in one file and with a part file each, gives the replicated run's checkpoint: the same
// bits and checksums of every parameter and moment (whole, as h5py sees them), and every rank of
// every world size 1..8 reads back exactly its rows of the optimizer state.
TEST(DataParallel, CheckpointRowsOfEveryModeWriteTheReplicatedCheckpoint) {
  Params replicated = toyParams();
  auto none = makeDataParallel(replicated, comm(), options("none"));
  train(*none, replicated);
  initialiseHdf5();
  const std::string dir = ::testing::TempDir() + "graft_dp_rows_np" + std::to_string(comm().size());
  TrainConfig c;
  c.keep_last = 0;
  c.slow_phase_timeout_s = 60;
  TrainingState state;
  state.step = 7;
  state.world_size = comm().size();
  state.rng_states = torch::zeros({comm().size(), 4}, torch::kUInt8);
  auto write = [&](DataParallel& dp, const std::string& run_dir, const std::string& files) {
    c.run_dir = run_dir;
    c.checkpoint_files = files;
    const auto content = std::make_shared<const CheckpointContent>(
        checkpointContent(comm(), dp, /*trainable_only=*/false, state, Schedule{}, Transformer(nullptr)));
    return writeCheckpointTogether(comm(), c, content);
  };
  const auto straight = write(*none, dir + "/none", "one");
  EXPECT_EQ(straight.how, "");  // rank 0 alone: it holds every tensor whole
  for (const std::string mode : {"optimizer", "gradients", "parameters"})
    for (const std::string files : {"one", "per_rank"}) {
      SCOPED_TRACE(mode + ", checkpoint.files = " + files);
      Params params = toyParams();
      auto dp = makeDataParallel(params, comm(), options(mode, /*accumulate_rows=*/false));  // the replicated bits
      train(*dp, params);
      ASSERT_TRUE(dp->shardsOptimizer());
      const auto written = write(*dp, dir + "/" + mode + "_" + files, files);
      if (comm().rank() != 0) continue;
      const std::string how = comm().size() == 1 ? ""  // one rank holds every tensor whole
                              : files == "one" ? "one file, " + std::to_string(comm().size()) + " ranks writing their rows"
                                               : "a part file per rank";
      EXPECT_EQ(written.how, how);
      H5File file = H5File::openRead(written.path), whole = H5File::openRead(straight.path);
      EXPECT_EQ(file.isVirtual("/optimizer/exp_avg/" + replicated.front().first), files == "per_rank" && comm().size() > 1);
      EXPECT_EQ(readManifest(file), readManifest(whole));  // checksums of the whole tensors, combined from the rows
      for (const std::string group : {"/model", "/optimizer/exp_avg", "/optimizer/exp_avg_sq"})
        for (const auto& name : whole.list(group))
          EXPECT_TRUE(torch::equal(file.readTensor(group + "/" + name), whole.readTensor(group + "/" + name))) << group << name;
      EXPECT_NO_THROW(verifyCheckpoint(written.path));
    }
  comm().barrier("test/saved");
  {
    const std::string index = completeCheckpoints(dir + "/gradients_per_rank/checkpoints").at(0);
    H5File file = H5File::openRead(index);
    for (int world = 1; world <= 8; ++world)
      for (int rank = 0; rank < world; ++rank) {
        std::vector<AdamW::Rows> rows;
        for (const auto& s : none->optimizer().slots()) {
          const RowRange mine = shardRows(s.param.size(0), rank, world);
          auto shape = s.param.sizes().vec();
          shape[0] = mine.size();
          rows.push_back({s.name, torch::zeros(shape), mine.begin, s.param.sizes().vec()});
        }
        AdamW reader = AdamW::ofRows(rows, {});
        reader.load(file, "/optimizer");
        EXPECT_EQ(reader.stepCount(), kSteps);
        for (std::size_t i = 0; i < rows.size(); ++i) {
          const auto& s = none->optimizer().slots()[i];
          const auto& got = reader.slots()[i];
          EXPECT_TRUE(torch::equal(got.exp_avg, s.exp_avg.narrow(0, got.row_begin, got.param.size(0))))
              << s.name << " rank " << rank << "/" << world;
          EXPECT_TRUE(torch::equal(got.exp_avg_sq, s.exp_avg_sq.narrow(0, got.row_begin, got.param.size(0))));
          EXPECT_EQ(got.steps, kSteps);
        }
      }
    comm().barrier("test/read");
  }
}

// Resident set of this process now (VmRSS).
std::int64_t residentBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

// What each mode keeps per rank, measured from the process: the resident set of 30M trainable
// parameters, their gradient buffers and AdamW moments once the strategy holds them (parameters:
// after it kept its rows and freed the rest), against the ZeRO formulas (per parameter, fp32):
// none 16 bytes, optimizer 8 + 8/N, gradients 4 + 12/N, parameters 16/N. Within 5%.
TEST(DataParallel, StateMemoryFollowsTheZeroFormulas) {
  // Large blocks straight from mmap and back to the system when freed (glibc would otherwise raise
  // its threshold after the first free and keep freed blocks resident): RSS then counts what is held.
  mallopt(M_MMAP_THRESHOLD, 64 << 10);
  const int n = comm().size();
  for (const std::string mode : {"none", "optimizer", "gradients", "parameters"}) {
    const std::int64_t before = residentBytes();
    Params params;
    for (int i = 0; i < 30; ++i)
      params.emplace_back("layers." + std::to_string(i) + ".w", torch::ones({1000, 1000}).requires_grad_(true));
    const double p = 30e6;
    // A rank's rows: ceil(1000 / n) of each parameter, padding included (Note [shard layout]).
    const double mine = 30.0 * ((1000 + n - 1) / n) * 1000;
    auto dp = makeDataParallel(params, comm(), options(mode));
    dp->keepOwnRows();
    const double added = static_cast<double>(residentBytes() - before);
    const double expected = mode == "none"        ? 16 * p
                            : mode == "optimizer" ? 8 * p + 8 * mine
                            : mode == "gradients" ? 4 * p + 12 * mine
                                                  : 16 * mine;
    EXPECT_NEAR(added, expected, 0.05 * expected) << mode << " at np " << n << ": " << added / 1e6 << " MB added, formula "
                                                  << expected / 1e6 << " MB";
    // What graft train prints at start-up as the state (Note [expected memory]) is the formula.
    const auto plan = dp->memoryPlan();
    EXPECT_NEAR(static_cast<double>(plan.state), expected, 1e-3 * expected) << mode;
    // Units in flight: none replicated; ZeRO-2/3 at most a few whole 4 MB units, not the model.
    EXPECT_EQ(plan.in_flight > 0, mode == "gradients" || mode == "parameters") << mode;
    EXPECT_LE(plan.in_flight, 12 * 4e6) << mode;
    EXPECT_EQ(plan.between_micro_steps, 0) << mode;  // dist.accumulate = rows
  }
}

// Note [products that keep no weight copies]: under dist.shard = parameters, what autograd keeps
// from a forward for backward holds no unit's whole weights: the resident set grows by the
// activations only (a 1 x 16 batch: well under 1 MB; the test allows 20% of the weights for a
// rank's own drift) across a forward of a 4-layer llama whose blocks hold 51 MB, in fp32 and bf16. (When the fused projections saved wq|wk|wv and
// w1|w3 concatenated, and bf16 saved its casts, the forward kept 36 MB in fp32 and 26 MB in bf16:
// watched fail.) Backward then reaches every block with its weights gathered again.

TEST(DataParallel, ZeroThreeForwardKeepsNoWholeWeightsForBackward) {
  mallopt(M_MMAP_THRESHOLD, 64 << 10);  // freed blocks leave the process: RSS counts what is held
  const ModelConfig c = llama(512, 1408, 4, 8, 64, 16);
  // fp32, bf16, and a QLoRA base (NF4, adapters on every projection): its dequantized weights,
  // 4 bytes each, are what autograd would keep.
  for (const std::string run : {"fp32", "bf16", "qlora"}) {
    const auto dtype = run == "bf16" ? torch::kBFloat16 : torch::kFloat;
    Transformer m(c);
    m->initialise(3);
    std::int64_t block_bytes = 0;
    if (run == "qlora") {
      TransferConfig qlora;
      qlora.mode = "lora";
      qlora.lora_rank = 4;
      qlora.lora_targets = "wq,wk,wv,wo,w1,w2,w3";
      qlora.quantize = "nf4";
      applyTransfer(m, qlora, 5);
      for (auto& [path, p] : m->projections())
        if (p->quantized() && path.rfind("layers.", 0) == 0) block_bytes += p->in_features * p->out_features * 4;
    }
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& p : m->named_parameters()) {
      params.emplace_back(p.key(), p.value());
      if (run != "qlora" && p.key().rfind("layers.", 0) == 0) block_bytes += p.value().numel() * 4;
    }
    auto no_prefetch = options("parameters");
    no_prefetch.prefetch = false;  // no gather left in flight across the measurement
    auto dp = makeDataParallel(params, comm(), no_prefetch);
    dp->broadcastParameters();
    dp->keepOwnRows();
    m->setUnitGate(unitGateOf(*dp));
    m->setComputeDtype(dtype);
    torch::manual_seed(4);
    const auto ids = torch::randint(c.vocab_size, {1, 16}, torch::kInt64);
    dp->beginStep();
    dp->beginMicroStep(/*sync=*/true);
    m->forward(ids).sum();  // warm-up: allocator and thread pools
    // The median of three forwards: a rank's resident set moves by a few MB on its own (MPI's
    // buffers, glibc's arenas), measured -6 to +9 MB.
    std::vector<double> kept;
    torch::Tensor loss;
    for (int trial = 0; trial < 3; ++trial) {
      loss = torch::Tensor();
      const std::int64_t before = residentBytes();
      loss = m->forward(ids).pow(2).mean();
      kept.push_back(static_cast<double>(residentBytes() - before));
    }
    std::sort(kept.begin(), kept.end());
    EXPECT_LT(kept[1], 0.2 * static_cast<double>(block_bytes))
        << run << ": " << kept[1] / 1e6 << " MB kept across the forward, blocks hold "
        << static_cast<double>(block_bytes) / 1e6 << " MB";
    loss.backward();
    dp->finish();
    EXPECT_GT(dp->gradNorm(), 0);
  }
}

// Note [free, then gather] and Note [reduce-scatter after the release]: in backward under
// dist.shard = parameters a rank holds one unit whole beside the gradients it is making, or those
// gradients beside their packed copy, never more: the large blocks in use at once (counted by the
// allocator of Note [reusing large blocks]) stay within 2.25 units of a 4-layer Llama whose every
// matrix is 1 MiB or more. (With the unit before gathered ahead of the release, or the
// reduce-scatter started while the unit was whole, they reached 3 units: watched fail.) And the
// gathered units' blocks are reused.
TEST(DataParallel, ZeroThreeBackwardHoldsOneUnitWholeBesideItsGradients) {
  const ModelConfig c = llama(512, 1536, 4, 8, 64, 16);
  // With frozen embeddings the first block's input needs no gradient: backward leaves that block
  // whole, and it is freed before its gradients are packed (finish() frees, then flushes).
  for (const bool frozen_embeddings : {false, true}) {
    Transformer m(c);
    m->initialise(3);
    if (frozen_embeddings) m->tok_embeddings->weight.set_requires_grad(false);
    Params params = m->named_parameters().pairs();
    double unit_bytes = 0;
    for (const auto& [name, p] : params)
      if (name.rfind("layers.0.", 0) == 0) unit_bytes += static_cast<double>(p.numel()) * 4;
    auto no_prefetch = options("parameters");
    no_prefetch.prefetch = false;
    auto dp = makeDataParallel(params, comm(), no_prefetch);
    dp->broadcastParameters();
    dp->keepOwnRows();
    m->setUnitGate(unitGateOf(*dp));
    reuseLargeCpuBlocks(static_cast<std::size_t>(4 * unit_bytes));
    resetBlockReusePeak();  // what the steps below hold at once, above what is held now
    const auto start = blockReuseStats();
    const double base = static_cast<double>(start.live_bytes);
    torch::manual_seed(4);
    const auto ids = torch::randint(c.vocab_size, {1, 16}, torch::kInt64);
    for (int step = 0; step < 3; ++step) {  // the first step, then the order learnt from it
      dp->beginStep();
      dp->beginMicroStep(/*sync=*/true);
      m->forward(ids).pow(2).mean().backward();
      dp->finish();
      dp->step(1e-3);
    }
    const auto stats = blockReuseStats();
    reuseLargeCpuBlocks(0);  // nothing kept for the tests that follow
    const double peak = static_cast<double>(stats.peak_live_bytes) - base;
    EXPECT_LE(peak, 2.25 * unit_bytes) << "np " << comm().size() << (frozen_embeddings ? ", frozen embeddings" : "") << ": "
                                       << peak / unit_bytes << " units' bytes in large blocks at once (a unit is "
                                       << unit_bytes / 1e6 << " MB)";
    EXPECT_GT(stats.reused - start.reused, (stats.requests - start.requests) / 2)
        << stats.reused - start.reused << " of " << stats.requests - start.requests << " large blocks reused";
    if (::testing::Test::HasFailure()) break;
  }
}

// Peak resident set since the last resetPeak() (VmHWM).
std::int64_t peakResidentBytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}
void resetPeak() { std::ofstream("/proc/self/clear_refs") << "5"; }

// docs/sharding.md, loading: under ZeRO-3 a rank builds its model without memory and reads only
// its rows of each tensor from the file, straight into its shard. Peak memory while loading a 34M
// parameter llama2.c model is the ZeRO-3 state (16 bytes x params / N, padding included) plus at
// most the largest single tensor, never the whole model; and the rows read are the file's.
TEST(DataParallel, ParameterShardingLoadsOnlyItsRowsOfAModelFile) {
  mallopt(M_MMAP_THRESHOLD, 64 << 10);
  ModelConfig c;
  c.dim = 512, c.hidden_dim = 1408, c.n_layers = 8, c.n_heads = c.n_kv_heads = 8, c.vocab_size = 16000, c.seq_len = 256;
  std::int32_t pid[1] = {static_cast<std::int32_t>(::getpid())};
  comm().broadcast(pid, 1, 0, "test/pid");
  const std::string path = "/tmp/graft_rows_test_" + std::to_string(pid[0]) + ".bin";
  std::int64_t params_total = 0, largest = 0;
  for (const auto& [name, shape] : parameterShapes(c)) {
    std::int64_t n = 1;
    for (const auto d : shape) n *= d;
    params_total += n, largest = std::max(largest, n);
  }
  if (comm().rank() == 0) {
    Transformer written(c);
    written->initialise(3);
    saveLlama2c(written, path);
  }
  comm().barrier("test/written");
  resetPeak();
  const std::int64_t before = residentBytes();
  {
    auto source = openModelSource(path);
    auto model = modelWithoutMemory(source->config());
    Params params = model->named_parameters().pairs();
    auto dp = makeDataParallel(params, comm(), options("parameters"));
    dp->keepOwnRows(source->rowFill());
    const double peak = static_cast<double>(peakResidentBytes() - before);
    const double state = 16.0 * static_cast<double>(params_total) / comm().size();
    const double bound = 1.05 * state + 4.0 * static_cast<double>(largest);
    EXPECT_LE(peak, bound) << "np " << comm().size() << ": loading peaked at " << peak / 1e6 << " MB over the baseline; ZeRO-3 state "
                           << state / 1e6 << " MB, largest tensor " << 4.0 * largest / 1e6 << " MB, whole model "
                           << 4.0 * params_total / 1e6 << " MB";
    for (const auto& [name, p] : params) EXPECT_FALSE(hasMemory(p)) << name << " was left whole";
    // The rows are the file's.
    auto whole = loadModel(path);
    auto reference = whole->named_parameters();
    for (const auto& r : dp->parameterRows())
      EXPECT_TRUE(torch::equal(r.rows, reference[r.name].narrow(0, r.row_begin, r.rows.size(0)))) << r.name;
  }
  comm().barrier("test/read");
  if (comm().rank() == 0) ::unlink(path.c_str());
}

// Note [prefetch] in parallel/parameter_shards.h: after the first pass has shown the order of the
// units, each unit's gather is started while the unit before it is in use, and every unit is
// whole, with its own values, when it is used: the same values as gathering on use.
TEST(DataParallel, PrefetchedUnitsArriveWholeWithTheirOwnValues) {
  const Params reference = toyParams();
  for (const bool prefetch : {false, true}) {
    Params params;
    for (const auto& [name, p] : reference) params.emplace_back(name, p.detach().clone());
    ParameterShards shards(params, comm(), prefetch);
    shards.adopt();
    torch::NoGradGuard no_grad;
    for (int pass = 0; pass < 3; ++pass)
      for (std::size_t k = 0; k < params.size();) {
        const std::string unit = unitOf(params[k].first);
        shards.enter(unit);
        for (; k < params.size() && unitOf(params[k].first) == unit; ++k)
          ASSERT_TRUE(torch::equal(params[k].second, reference[k].second))
              << params[k].first << ", pass " << pass << ", prefetch " << prefetch;
        shards.leave(unit, torch::Tensor(), torch::Tensor(), false);
      }
    shards.afterBackward();
    const std::int64_t units = static_cast<std::int64_t>(shards.units());
    EXPECT_EQ(shards.gathers(), 3 * units);
    // The first pass learns the order; each later one prefetches every unit but its first.
    EXPECT_EQ(shards.prefetchedGathers(), prefetch ? 2 * (units - 1) : 0);
  }
}

TEST(DataParallel, MismatchedShardPlansNameTheFirstDifferingParameter) {
  Params params = toyParams(/*freeze_bias=*/comm().rank() == comm().size() - 1);
  try {
    auto dp = makeDataParallel(params, comm(), options("gradients"));
    FAIL() << "plans differ but no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("shard plans differ between ranks, first at parameter #2"), std::string::npos) << what;
    const std::string offset = std::to_string(rowsPerRank(7, comm().size()) * 5);  // after layers.0.w's slab
    EXPECT_NE(what.find("'layers.0.b [7] layers.0 @" + offset + "'"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace graft
