#include "train/trainer.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "formats/hdf5.h"
#include "model/block_reuse.h"
#include "model/device.h"
#include "monitor/run_history.h"
#include "optim/schedule.h"
#include "parallel/data_parallel.h"
#include "parallel/heartbeat.h"
#include "train/batches.h"
#include "train/checkpointing.h"
#include "train/evaluation.h"
#include "train/feature_cache.h"
#include "train/layer_schedule.h"
#include "train/metrics.h"
#include "train/run_setup.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"

namespace graft {
namespace {

using Clock = std::chrono::steady_clock;

// Rank 0: the journal's "start" line (monitor/run_history.h): where this run starts, on how many
// ranks, and, under Slurm, the job and how often it was requeued.
void journalStart(const TrainConfig& c, std::int64_t start, const std::string& checkpoint, int ranks) {
  Json fields = Json::object();
  fields.set("step", start);
  fields.set("steps", c.steps);
  fields.set("ranks", ranks);
  fields.set("host", hostName());  // rank 0's, so that graft status can tell a run that died without a word
  fields.set("pid", static_cast<std::int64_t>(::getpid()));
  if (!checkpoint.empty()) fields.set("checkpoint", checkpoint);
  if (const char* job = std::getenv("SLURM_JOB_ID")) fields.set("slurm_job_id", job);
  if (const char* restarts = std::getenv("SLURM_RESTART_COUNT")) fields.set("slurm_restart_count", static_cast<std::int64_t>(std::atoll(restarts)));
  appendJournal(c.run_dir, "start", fields);
}

}  // namespace

// The config as checkpoints record it: data.packing as the data resolved it (auto -> windows or
// documents), so that a resume compares the samples themselves, not how they were asked for.
TrainConfig withPacking(const TrainConfig& c, const Loaded& loaded) {
  TrainConfig out = c;
  if (!loaded.classify) out.data_packing = packingName(loaded.train_data.packing());
  return out;
}

struct StepOutcome {
  double loss = 0, grad_norm = 0;
  bool applied = true;         // false: skipped for a non-finite loss or gradient norm
  bool stop_requested = false;  // some rank asked to stop (signal)
  bool checkpoint_failed = false;  // some rank's part of the checkpoint in flight (checkpoint.async) failed
  StepPhases phases;             // this rank's time by phase
  std::int64_t tokens = 0;      // tokens the step read on all ranks (whole documents, cut to seq_len, when classifying)
};

struct Trainer::State : std::enable_shared_from_this<Trainer::State> {
  State(const TrainConfig& c, Communicator& comm_, std::function<bool()> stop, Loaded&& loaded)
      : config(withPacking(c, loaded)),
        packing_asked(c.data_packing),
        stop_requested(std::move(stop)),
        comm(comm_),
        log(comm_.rank(), comm_.size()),
        train_data(std::make_shared<TokenDataset>(std::move(loaded.train_data))),
        val_data(std::make_shared<TokenDataset>(std::move(loaded.val_data))),
        classify(loaded.classify),
        model(loaded.model),
        model_rows(std::move(loaded.rows)),
        stand_in(std::move(loaded.stand_in)),
        sampler(classify ? train_data->numDocuments() : train_data->numSamples(), c.batch_size, c.seed),
        dp(makeDataParallel(model->named_parameters().pairs(), comm_,
                            {c.shard,
                             {static_cast<std::size_t>(c.first_bucket_mb * (1 << 20)),
                              static_cast<std::size_t>(c.bucket_mb * (1 << 20)), c.overlap,
                              c.reduce_dtype == "bf16" ? at::kBFloat16 : at::kFloat},
                             {c.beta1, c.beta2, c.eps, c.weight_decay},
                             c.prefetch == "true" || (c.prefetch == "auto" && comm_.progressesWhileComputing()),
                             c.accumulate == "rows"})),
        schedule{c.lr, c.min_lr, c.warmup, c.steps},
        checkpoint_dir(c.run_dir + "/checkpoints"),
        metrics(c.run_dir, c.steps, c.log_every, classify, c.tensorboard, comm_.rank(), log) {}

  // Collective.
  Validation validate() {
    return graft::validate(model, *val_data, features.val, classify, config, comm, dp->shardsParameters());
  }

  // Note [dropout that does not depend on the number of ranks]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
  // LoRA dropout draws from the generator of the model's device. Before each micro-batch that
  // generator is seeded from (train.seed, the global batch, the micro-batch's slice of it): slice
  // m x world + r, which micro-step m of rank r reads, holds the same samples at any number of ranks
  // for a given micro_batch (data/sampler.h), so every sample gets the same masks at any world size
  // and after a resume at another one (with the same micro_batch), with no generator state to carry over (a rank's generator, seeded once from its
  // rank, made a resume at N' ranks replay the masks of step 1). train.recompute replays from the
  // state the block's forward found, as before.
  void seedDropout(std::int64_t batch, std::int64_t slice) const {
    const std::uint64_t seed =
        mix64(config.seed ^ mix64(static_cast<std::uint64_t>(batch) * 0x9E3779B97F4A7C15ULL + static_cast<std::uint64_t>(slice)));
    auto reseed = [seed](at::Generator gen) {
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(seed);
    };
    reseed(at::detail::getDefaultCPUGenerator());
    if (model->device().is_cuda()) reseed(at::globalContext().defaultGenerator(model->device()));
  }

  // Collective. One optimizer step over global batch `step - 1`. The step's loss and the stop flag
  // travel in one all-reduce; a non-finite loss or gradient norm (on any rank, so on every rank
  // after the average) skips the update everywhere.
  StepOutcome step(std::int64_t step_number) {
    StepOutcome out;
    auto mark = Clock::now();
    auto lap = [&mark](double& phase) {  // the time since the last lap goes to `phase`
      const auto now = Clock::now();
      phase += std::chrono::duration<double>(now - mark).count();
      mark = now;
    };
    const auto accumulation = config.accumulation(comm.size());
    const auto& t = config.transfer;
    if (t.layer_lr_decay < 1.0 || t.unfreeze_every > 0)
      for (auto& slot : dp->optimizer().slots())
        slot.lr_scale = layerLrScale(slot.name, model->config().n_layers, t.layer_lr_decay, t.unfreeze_every, step_number);
    dp->beginStep();
    // The loss is summed where it was computed (in double, in micro-step order: the same bits as
    // summing on the host) and read once per step, so a CUDA run does not wait on the device
    // after every micro-step.
    torch::Tensor loss_sum;
    double tokens = 0;
    // Note [a token's weight in the loss]: where targets are masked or packed, micro-batches hold
    // different numbers of targets; each token's loss is divided by the targets of the whole global
    // batch (counted here, one all-reduce), so its weight does not depend on the micro-batch or
    // rank it lands in, and the step is the same at any world size and accumulation. (Dividing
    // each micro-batch by its own count, then by the accumulation, weighs a token in a short
    // micro-batch more.) The gradient average over ranks divides by world once more: x world.
    const bool per_target = !classify && countsTargets(*train_data);
    double global_targets = 0;
    if (per_target) {
      for (std::int64_t m = 0; m < accumulation; ++m)
        for (const auto i : sampler.microBatch(step_number - 1, static_cast<int>(m), comm.rank(), comm.size(),
                                               static_cast<int>(config.micro_batch)))
          global_targets += static_cast<double>(train_data->countTargets(i));
      comm.allReduce(&global_targets, 1, ReduceOp::Sum, "train/targets");
    }
    for (std::int64_t m = 0; m < accumulation; ++m) {
      dp->beginMicroStep(/*sync=*/m + 1 == accumulation);
      const auto indices = sampler.microBatch(step_number - 1, static_cast<int>(m), comm.rank(), comm.size(),
                                              static_cast<int>(config.micro_batch));
      seedDropout(step_number - 1, m * comm.size() + comm.rank());
      torch::Tensor loss;
      if (classify) {
        for (const auto i : indices) tokens += static_cast<double>(std::min<std::int64_t>(train_data->documentLength(i), config.seq_len));
        torch::Tensor labels;
        lap(out.phases.data);
        const auto logits = classLogits(model, *train_data, features.train, indices, config.seq_len, labels);
        loss = torch::nn::functional::cross_entropy(logits, labels);
      } else {
        for (const auto i : indices) tokens += static_cast<double>(train_data->inputTokens(i));
        const auto batch = windowBatch(*train_data, indices, model->device());
        lap(out.phases.data);
        if (per_target) {  // Note [a token's weight in the loss]
          const auto masked = tokenLoss(windowLogits(model, batch), batch);
          loss = masked.sum * (static_cast<double>(comm.size()) / std::max(1.0, global_targets));
        } else {
          loss = model->loss(batch.inputs, batch.targets) / static_cast<double>(accumulation);
        }
      }
      if (classify) loss = loss / static_cast<double>(accumulation);
      if (injectNan(step_number)) loss = loss * std::numeric_limits<float>::quiet_NaN();
      lap(out.phases.forward);
      loss.backward();
      const auto exact = loss.detach().to(torch::kFloat64);
      loss_sum = loss_sum.defined() ? loss_sum + exact : exact;
      lap(out.phases.backward);
    }
    dp->finish();
    double reduced[4] = {loss_sum.item<double>(), stop_requested && stop_requested() ? 1.0 : 0.0, tokens,
                         pending.failedHere() ? 1.0 : 0.0};
    comm.allReduce(reduced, 4, ReduceOp::Sum, "train/loss+stop");
    lap(out.phases.communication);
    out.loss = reduced[0] / comm.size();
    out.stop_requested = reduced[1] > 0;
    out.tokens = static_cast<std::int64_t>(reduced[2]);
    out.checkpoint_failed = reduced[3] > 0;
    out.grad_norm = dp->gradNorm();
    out.applied = std::isfinite(out.loss) && std::isfinite(out.grad_norm);
    if (out.applied) {
      if (config.grad_clip > 0 && out.grad_norm > config.grad_clip)
        dp->scaleGradients(config.grad_clip / (out.grad_norm + 1e-6));
      dp->step(schedule.at(step_number));
    }
    lap(out.phases.optimizer);
    return out;
  }

  bool injectNan(std::int64_t step_number) const {
    return config.nan_from > 0 && step_number >= config.nan_from && step_number < config.nan_from + config.nan_count &&
           comm.rank() == config.nan_rank % comm.size();
  }

  // Counts a skipped step; throws once train.max_bad_steps were skipped in a row.
  void countSkipped(std::int64_t step_number, const StepOutcome& out) {
    ++skipped_total;
    ++bad_in_a_row;
    log.main("step " + std::to_string(step_number) + ": loss " + std::to_string(out.loss) + ", gradient norm " +
             std::to_string(out.grad_norm) + " not finite; update skipped on all ranks (" + std::to_string(bad_in_a_row) +
             " in a row)");
    if (bad_in_a_row < config.max_bad_steps) return;
    const auto complete = comm.rank() == 0 ? completeCheckpoints(checkpoint_dir) : std::vector<std::string>{};
    throw Error("steps " + std::to_string(step_number - bad_in_a_row + 1) + "-" + std::to_string(step_number) +
                ": loss or gradient norm not finite " + std::to_string(bad_in_a_row) +
                " times in a row (train.max_bad_steps); stopping. Last complete checkpoint: " +
                (complete.empty() ? std::string("none") : complete.front()) +
                " (lower train.lr or raise train.grad_clip's effect, then resume)");
  }

  TrainConfig config;  // data.packing resolved (withPacking)
  std::string packing_asked;  // data.packing as the user gave it, for the log
  std::function<bool()> stop_requested;
  std::int64_t skipped_total = 0, bad_in_a_row = 0;
  std::int64_t tokens_seen = 0;  // tokens read by all ranks since step 0 (checkpointed)
  Communicator& comm;
  Logger log;
  std::shared_ptr<const TokenDataset> train_data, val_data;  // shared with helper threads
  bool classify;  // sequence classification (labelled data) instead of next-token prediction
  Transformer model;
  std::shared_ptr<const ModelSource> model_rows;  // the base's values when it was built without memory (run_setup.h)
  std::string stand_in;  // Loaded::stand_in: the checkpoint that gave the model's shape, model.path missing
  bool base_unverified = false;  // verifyModelPath deferred model.path's check: a checkpoint was to be resumed
  FeatureCache features;  // transfer.cache_features: the frozen base's pooled features
  GlobalSampler sampler;
  std::unique_ptr<DataParallel> dp;  // who holds what: gradients, optimizer state (dist.shard)
  Schedule schedule;
  std::string checkpoint_dir;
  Metrics metrics;
  PendingCheckpoint pending;  // checkpoint.async: the checkpoint being written in the background
  std::int64_t runtime_bytes = 0;   // resident before loading (Trainer's constructor)
  std::int64_t expected_bytes = 0;  // the peak the formulas expect, activations aside (expectMemory)

  // Note [expected memory]: the peak a rank should reach by the ZeRO formulas, printed at start-up
  // so that a run can be sized before it is launched on many GPUs, and again beside the measured
  // peak at the end: the runtime measured before loading, the state, the whole units in flight,
  // and an estimate of the activations a micro-batch keeps for backward (activationBytes).
  void expectMemory() {
    const auto plan = dp->memoryPlan();
    const bool accumulates = config.accumulation(comm.size()) > 1;
    const std::int64_t activations = activationBytes();
    const std::int64_t state = plan.state + plan.in_flight + (accumulates ? plan.between_micro_steps : 0);
    auto mib = [](std::int64_t bytes) { return std::to_string(static_cast<std::int64_t>(static_cast<double>(bytes) / (1 << 20) + 0.5)); };
    const std::string parts = "training state " + mib(plan.state) + " + whole units in flight " + mib(plan.in_flight) +
                              (accumulates && plan.between_micro_steps ? " + whole gradients between micro-steps " + mib(plan.between_micro_steps) : "") +
                              " + activations about " + mib(activations) + " (estimated, " +
                              (config.recompute ? "train.recompute" : "micro_batch x seq_len x layers") + ")";
    if (model->device().is_cuda()) {  // the state is in device memory: no host figure to set it beside
      log.main("memory: expected on each GPU about " + mib(state + activations) + " MiB by the formulas (dist.shard = " +
               config.shard + "): " + parts + "; the CUDA context comes on top");
      return;
    }
    expected_bytes = runtime_bytes + state + activations;
    // Note [reusing large blocks]: what a rank keeps for reuse is bounded by the units in flight.
    if (dp->shardsParameters()) reuseLargeCpuBlocks(static_cast<std::size_t>(plan.in_flight));
    log.main("memory: expected peak about " + mib(expected_bytes) + " MiB per rank (dist.shard = " + config.shard + "): runtime " +
             mib(runtime_bytes) + " MiB measured before loading + " + parts +
             "; the data held in memory and checkpoint.async's copies come on top");
  }

  // What one micro-batch's forward keeps for backward, estimated per token and block from what a
  // block saves (its input and normed input, q, k and v, the rotated q and k, the attention's
  // output and its probabilities unless attention is fused, the FFN's normed input, both of its
  // projections, their activation and product: about 9 x dim + 4 x hidden_dim + heads x seq_len
  // values), plus the logits and their log-softmax. Under train.recompute only each block's input
  // stays, and one block's whole set while it runs again. A frozen base (transfer.mode = feature)
  // keeps nothing. At 155M parameters and 4 ranks (seq 64, micro-batch 1) the estimate is 66 MiB
  // and the peak with train.recompute 66 MiB lower (docs/sharding.md).
  std::int64_t activationBytes() const {
    if (config.transfer.mode == "feature") return 0;
    const ModelConfig& m = model->config();
    const double tokens = static_cast<double>(config.micro_batch) * static_cast<double>(config.seq_len);
    const double block = 9.0 * m.dim + 4.0 * m.hidden_dim + static_cast<double>(m.n_heads) * static_cast<double>(config.seq_len);
    const double outputs = 2.0 * (m.num_classes > 0 ? m.num_classes : m.vocab_size);
    const double values = config.recompute ? tokens * (static_cast<double>(m.n_layers) * m.dim + block + outputs)
                                           : tokens * (static_cast<double>(m.n_layers) * block + outputs);
    const double bytes_per_value = config.precision == "bf16" ? 2.0 : 4.0;
    return static_cast<std::int64_t>(values * bytes_per_value);
  }
};

Trainer::Trainer(const TrainConfig& config, Communicator& comm, std::function<bool()> stop_requested) {
  config.validate(comm.size());
  initialiseHdf5();  // on this thread, before helpers use HDF5
  torch::set_num_threads(config.threads > 0 ? config.threads : defaultThreads(comm.localSize()));
  if (comm.rank() == 0) makeDirectories(config.run_dir);
  {
    LongTimeout slow(comm, config.slow_phase_timeout_s);  // ranks may start far apart (a busy shared file system)
    comm.barrier("init/run_dir");
  }
  const std::int64_t runtime_bytes = residentBytes();  // LibTorch, MPI and this process, before the model and data
  // Loading the data and the model can take minutes on some ranks: a heartbeat keeps the others
  // in touch meanwhile (Note [heartbeat]).
  Logger log(comm.rank(), comm.size());
  const bool base_unverified = !config.model_path.empty() && verifyModelPath(comm, config, log);
  const std::string what = "loading " + config.data_path + " and " + (config.model_path.empty() ? "a fresh model" : config.model_path);
  auto loaded = std::make_shared<std::unique_ptr<Loaded>>();
  double report_at = 2;  // a line at 2, 4, 8, ... s when loading is slow
  runWithHeartbeat(
      comm, "init/load", config.slow_phase_timeout_s, what, "",
      [config, loaded, log]() mutable {
        if (config.slow_load_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(config.slow_load_s));
        *loaded = loadRun(config, log);
        rememberDataFingerprint(config.data_path);
      },
      [&](double seconds) {
        if (seconds < report_at) return;
        log.main(what + " (" + std::to_string(static_cast<int>(seconds)) + " s so far)");
        report_at *= 2;
      });
  // Where this rank trains, and in what precision (model/device.h); the model moves there before
  // the data-parallel strategy makes its buffers beside the parameters.
  const torch::Device device = deviceOfRank(chooseDeviceType(config.device), comm.localRank());
  Loaded& run = **loaded;
  useDevice(device);
  moveModel(run.model, device);
  run.model->setComputeDtype(computeDtype(config.precision));
  if (!device.is_cpu()) log.info("device: " + describeDevice(device) + ", precision " + config.precision);
  s_ = std::make_shared<State>(config, comm, std::move(stop_requested), std::move(run));
  s_->runtime_bytes = runtime_bytes;
  s_->base_unverified = base_unverified;
}

Trainer::~Trainer() = default;

TrainResult Trainer::run() {
  auto& s = *s_;
  const auto& c = s.config;
  std::int64_t start = 0;
  {
    {
      // The generators start from (train.seed, rank), and a resume at the same world size restores
      // each rank's state from the checkpoint, so that anything drawn outside a micro-batch repeats
      // exactly; dropout is seeded per micro-batch (Note [dropout that does not depend on the
      // number of ranks]).
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(c.seed * 1000003ULL + static_cast<std::uint64_t>(s.comm.rank()));
    }
    if (s.model->device().is_cuda()) {  // LoRA dropout on the GPU draws from its generator
      at::Generator gen = at::globalContext().defaultGenerator(s.model->device());
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_current_seed(c.seed * 1000003ULL + static_cast<std::uint64_t>(s.comm.rank()));
    }
    // Where the run resumes, known before any weight is read: a full fine-tune that resumes reads
    // its weights from the checkpoint alone (resumeRun), not from model.path first.
    const std::int64_t resume_at = findResumePoint(s.comm, c, s.log);
    // (The checkpoint itself must hold every weight: one of an adapter run resumed as a full
    // fine-tune, resume.allow=transfer, holds only the adapters.)
    const bool whole_from_checkpoint = resume_at >= 0 && !c.transfer.adapterOnly() &&
                                       holdsTheWholeModel(c.run_dir + "/checkpoints/" + checkpointName(resume_at));
    if (!s.stand_in.empty() && !whole_from_checkpoint)
      throw InputError("model.path " + c.model_path + ": not found, and no checkpoint in " + c.run_dir +
                       "/checkpoints verifies to resume from");
    // No checkpoint to resume after all (each was damaged): model.path's weights are used, so
    // they are verified now, as at a fresh start, before any step.
    if (s.base_unverified && !whole_from_checkpoint) verifyModelPath(s.comm, c, s.log, /*deferrable=*/false);
    if (s.model_rows && whole_from_checkpoint) {
      // dist.shard = parameters: every row of every parameter is in the checkpoint, which
      // resumeRun reads into the rows (it refuses one that lacks a tensor); model.path is not read.
      s.dp->keepOwnRows([](const std::string&, std::int64_t, std::int64_t, at::Tensor) {});
      s.model->setUnitGate(unitGateOf(*s.dp));
      s.log.main("model: each rank's rows come from the checkpoint it resumes" +
                 (c.model_path.empty() ? std::string() : "; " + c.model_path + " is not read"));
    } else if (s.model_rows) {
      // Each rank reads only its rows of the base (dist.shard = parameters): no rank holds it whole.
      const std::string what = "reading this rank's rows of " + s.model_rows->path();
      runWithHeartbeat(s.comm, "init/rows", c.slow_phase_timeout_s, what, "",
                       [dp = s.dp.get(), fill = s.model_rows->rowFill()] { dp->keepOwnRows(fill); });
      s.model->setUnitGate(unitGateOf(*s.dp));
    } else {
      if (s.dp->shardsParameters()) throw Error("dist.shard = parameters: the model was built whole (a bug: run_setup gives it a row source)");
      LongTimeout slow(s.comm, c.slow_phase_timeout_s);  // one broadcast of every parameter: long for big models
      s.dp->broadcastParameters();
      s.model->setUnitGate(unitGateOf(*s.dp));  // the units' forward order (Note [the first step's order])
    }
    const Resumed resumed = resumeRun(s.comm, c, s.model, *s.dp, s.log, resume_at, /*own_rows=*/s.model_rows != nullptr);
    start = resumed.step;
    if (start > 0) {
      s.tokens_seen = resumed.counters.tokens_seen;
      s.skipped_total = resumed.counters.skipped_steps;
    }
    s.metrics.begin(start, c.resolved());
    if (s.comm.rank() == 0) journalStart(c, start, resumed.checkpoint, s.comm.size());
    // The frozen base's features; under dist.shard = parameters through the gathered units.
    s.features = prepareFeatureCache(s.model, s.train_data, s.val_data, c, s.comm, s.log,
                                     /*collective_forward=*/s.dp->shardsParameters());
    s.model->setRecompute(c.recompute);
  }
  TrainResult result;
  s.log.main("train: " + std::to_string(c.steps) + " steps x " + std::to_string(c.batch_size) + " sequences x " +
             std::to_string(c.seq_len) + " tokens on " + std::to_string(s.comm.size()) + " rank(s) on " +
             std::to_string(s.comm.size() / std::max(1, s.comm.localSize())) + " host(s) (" + s.comm.backend() +
             ", " + std::to_string(torch::get_num_threads()) + " thread(s) each, accumulation " +
             std::to_string(c.accumulation(s.comm.size())) + ", " + s.model->device().str() + " " +
             c.precision + "), " + std::to_string(s.classify ? s.train_data->numDocuments() : s.train_data->numSamples()) +
             (s.classify ? " training documents" : " training sequences"));
  if (s.train_data->streamed())
    s.log.main("data: streamed from " + c.data_path + " (" + std::to_string(s.train_data->numTokens()) +
               " training tokens; data.load = " + c.data_load + ")");
  if (!s.classify) s.log.main(describePacking(*s.train_data, s.packing_asked));
  else if (s.packing_asked != "auto")
    s.log.main("data.packing = " + s.packing_asked + " has no effect here: classification reads each document whole");
  s.log.main(s.dp->describe());
  s.expectMemory();
  result.base_val_loss = s.validate().loss;
  if (start == 0) s.log.main("val loss before training: " + std::to_string(result.base_val_loss));
  const std::int64_t last = c.stop_after > 0 ? std::min(c.steps, c.stop_after) : c.steps;
  const auto t0 = Clock::now();
  result.final_val_loss = result.base_val_loss;
  std::int64_t run_tokens = 0;  // read by this run (since the start or the resume)
  for (std::int64_t step = start + 1; step <= last; ++step) {
    const StepOutcome out = s.step(step);
    // A rank's part of the checkpoint written in the background failed: every rank stops here with
    // its error (the wait rethrows it), not one checkpoint later.
    if (out.checkpoint_failed) s.pending.wait(s.comm, c, s.log);
    s.tokens_seen += out.tokens;
    run_tokens += out.tokens;
    if (out.applied) s.bad_in_a_row = 0;
    else s.countSkipped(step, out);
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    result.tokens_per_second = static_cast<double>(run_tokens) / std::max(elapsed, 1e-9);
    const bool eval_now = (c.eval_every > 0 && step % c.eval_every == 0) || step == c.steps;
    Validation val;
    if (eval_now) val = s.validate(), result.final_val_loss = val.loss;
    s.metrics.step({step, start, out.loss, out.grad_norm, s.schedule.at(step), out.applied, s.tokens_seen, s.skipped_total,
                    result.tokens_per_second, elapsed, val.loss, val.accuracy, out.phases});
    const bool checkpoint_due = (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == last;
    if (checkpoint_due || out.stop_requested)
      saveRunCheckpoint(s.comm, c, s.model, *s.dp, s.schedule, step, {s.tokens_seen, s.skipped_total}, s.log, &s.pending);
    result.steps_done = step;
    if (out.stop_requested) {
      s.pending.wait(s.comm, c, s.log);
      s.log.main("stop requested (signal): checkpointed at step " + std::to_string(step) + "; run again to resume");
      result.preempted = true;
      break;
    }
  }
  s.pending.wait(s.comm, c, s.log);  // checkpoint.async: the last checkpoint is on disk before the run ends
  result.stopped_early = !result.preempted && last < c.steps;
  if (s.comm.rank() == 0) {
    Json end = Json::object();
    end.set("step", result.steps_done);
    end.set("status", result.preempted ? "preempted" : result.stopped_early ? "stopped_early" : "completed");
    appendJournal(c.run_dir, "end", end);
  }
  result.skipped_steps = s.skipped_total;
  s.metrics.memory(s.comm, s.expected_bytes);
  return result;
}

}  // namespace graft
