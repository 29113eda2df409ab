#include "train/trainer.h"

#include <sched.h>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <cstdio>
#include <fstream>
#include <thread>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "io/hdf5.h"
#include "io/model_io.h"
#include "model/transfer_apply.h"
#include "optim/adamw.h"
#include "train/batches.h"
#include "train/checkpointing.h"
#include "train/layer_schedule.h"
#include "parallel/data_parallel.h"
#include "parallel/heartbeat.h"
#include "optim/schedule.h"
#include "util/error.h"
#include "util/files.h"
#include "util/log.h"

namespace graft {
namespace {

using Clock = std::chrono::steady_clock;

int defaultThreads(int local_ranks) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  return std::max(1, cores / std::max(1, local_ranks));
}

// VmHWM of /proc/self/status: the most this process has held in RAM (0 where unknown).
std::int64_t peakResidentBytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return 0;
}

std::string formatDuration(double seconds) {
  char buf[32];
  const long s = static_cast<long>(std::max(0.0, seconds));
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  return buf;
}

// Raises the communicator's timeout to dist.slow_phase_timeout_s for the two collectives that
// cannot report progress and may legitimately take long: the first barrier (ranks start far
// apart) and the broadcast of every parameter. Long local work uses runWithHeartbeat instead.
class LongTimeout {
 public:
  LongTimeout(Communicator& comm, double seconds) : comm_(comm), saved_(comm.timeout()) {
    comm_.setTimeout(std::max(saved_, std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000))));
  }
  ~LongTimeout() { comm_.setTimeout(saved_); }

 private:
  Communicator& comm_;
  std::chrono::milliseconds saved_;
};

// JSON has no NaN or Infinity: non-finite values are written as null.
std::string jsonNumber(double value, int digits) {
  if (!std::isfinite(value)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
  return buf;
}

Transformer loadOrInitialise(const TrainConfig& c, int vocab_size, Logger& log);

bool classifies(const TrainConfig& c, const TokenDataset& train) {
  if (c.task == "classify" && !train.hasLabels())
    throw InputError(c.data_path + ": task.type = classify needs a labelled dataset (graft prepare --label-field ...)");
  return c.task == "classify" || (c.task == "auto" && train.hasLabels());
}

// The model a run trains: the base (loaded or initialised), a classification head for labelled
// data, then the [transfer] flavour applied.
Transformer buildModel(const TrainConfig& c, const TokenDataset& train, Logger& log) {
  auto model = loadOrInitialise(c, train.vocabSize(), log);
  if (classifies(c, train) && model->config().num_classes > 0) {
    // A classifier to fine-tune further: its head must be for these labels, in this order.
    const ModelConfig& mc = model->config();
    if (mc.num_classes != static_cast<int>(train.labelNames().size()) ||
        (!mc.label_names.empty() && mc.label_names != train.labelNames()))
      throw InputError(c.model_path + ": its " + std::to_string(mc.num_classes) + "-class head does not match the " +
                       std::to_string(train.labelNames().size()) + " labels of " + c.data_path);
    log.main("task: classify " + std::to_string(mc.num_classes) + " labels with the model's own head");
  } else if (classifies(c, train)) {
    model->addClassifierHead(static_cast<int>(train.labelNames().size()), c.pooling, c.seed, train.labelNames());
    log.main("task: classify " + std::to_string(train.labelNames().size()) + " labels from the " + c.pooling +
             " token" + (c.pooling == "mean" ? "s'" : "'s") + " features");
  }
  const auto adapted = applyTransfer(model, c.transfer, c.seed);
  if (model->promptLength() + c.seq_len > model->config().seq_len)
    throw InputError("transfer.prompt_tokens " + std::to_string(model->promptLength()) + " + train.seq_len " +
                     std::to_string(c.seq_len) + " exceed the model's context of " + std::to_string(model->config().seq_len));
  const std::int64_t trainable = trainableParameters(model), total = totalParameters(model);
  std::string how = c.transfer.mode;
  if (c.transfer.mode == "lora")
    how += " r=" + std::to_string(c.transfer.lora_rank) + " on " + std::to_string(adapted.size()) + " projections, base " +
           c.transfer.quantize;
  if (c.transfer.mode == "prompt") how += " with " + std::to_string(model->promptLength()) + " soft-prompt vectors";
  if (c.transfer.mode == "feature") how += adapted == std::vector<std::string>{"head"} ? " (classification head)" : " (LM head alone)";
  char line[320];
  std::snprintf(line, sizeof(line), "transfer: %s, %lld of %lld parameters train (%.2f%%), frozen weights hold %.2f MB",
                how.c_str(), static_cast<long long>(trainable), static_cast<long long>(total),
                100.0 * trainable / std::max<std::int64_t>(total, 1), frozenBytes(model) / 1e6);
  log.main(line);
  return model;
}

Transformer loadOrInitialise(const TrainConfig& c, int vocab_size, Logger& log) {
  if (!c.model_path.empty()) {
    auto model = loadModel(c.model_path);
    // Hugging Face models often pad their vocabulary past the tokenizer's: fewer ids in the data is fine.
    if (model->config().vocab_size < vocab_size)
      throw InputError(c.model_path + ": model vocabulary " + std::to_string(model->config().vocab_size) +
                       " is smaller than the dataset's " + std::to_string(vocab_size) + " (" + c.data_path +
                       "); prepare the data with the model's tokenizer");
    if (model->config().seq_len < c.seq_len)
      throw InputError("train.seq_len " + std::to_string(c.seq_len) + " exceeds the model's context of " +
                       std::to_string(model->config().seq_len));
    log.main("model: " + c.model_path + " (" + model->config().describe() + ")");
    return model;
  }
  ModelConfig arch = c.arch;
  arch.vocab_size = vocab_size;
  arch.seq_len = std::max(arch.seq_len, c.seq_len);
  Transformer model(arch);
  model->initialise(c.seed);
  log.main("model: random initialisation, seed " + std::to_string(c.seed) + " (" + arch.describe() + ")");
  return model;
}

}  // namespace

struct StepOutcome {
  double loss = 0, grad_norm = 0;
  bool applied = true;         // false: skipped for a non-finite loss or gradient norm
  bool stop_requested = false;  // some rank asked to stop (signal)
  std::int64_t tokens = 0;      // tokens the step read on all ranks (whole documents, cut to seq_len, when classifying)
};

// What each rank loads before training, with no collective (so it can run beside a heartbeat): the
// data and the model it trains.
struct Loaded {
  TokenDataset train_data, val_data;
  bool classify;
  Transformer model;
};

std::unique_ptr<Loaded> loadRun(const TrainConfig& c, Logger& log) {
  const auto residency = parseResidency(c.data_load, "data.load");
  TokenDataset train(c.data_path, "train", c.seq_len, residency);
  TokenDataset val(c.data_path, "val", c.seq_len, residency);
  const bool classify = classifies(c, train);
  auto model = buildModel(c, train, log);
  return std::make_unique<Loaded>(Loaded{std::move(train), std::move(val), classify, model});
}

struct Trainer::State : std::enable_shared_from_this<Trainer::State> {
  State(const TrainConfig& c, Communicator& comm_, std::function<bool()> stop, Loaded&& loaded)
      : config(c),
        stop_requested(std::move(stop)),
        comm(comm_),
        log(comm_.rank(), comm_.size()),
        train_data(std::move(loaded.train_data)),
        val_data(std::move(loaded.val_data)),
        classify(loaded.classify),
        model(loaded.model),
        sampler(classify ? train_data.numDocuments() : train_data.numSamples(), c.batch_size, c.seed),
        dp(makeDataParallel(model->named_parameters().pairs(), comm_,
                            {c.shard,
                             {static_cast<std::size_t>(c.first_bucket_mb * (1 << 20)),
                              static_cast<std::size_t>(c.bucket_mb * (1 << 20)), c.overlap},
                             {c.beta1, c.beta2, c.eps, c.weight_decay}})),
        schedule{c.lr, c.min_lr, c.warmup, c.steps},
        checkpoint_dir(c.run_dir + "/checkpoints") {}

  // Class logits of documents `indices`: from the cached features, or a forward pass.
  torch::Tensor classLogits(const TokenDataset& data, const torch::Tensor& cache, const std::vector<std::int64_t>& indices,
                            torch::Tensor& labels) {
    labels = labelsOf(data, indices);
    if (cache.defined()) return model->head(cache.index_select(0, torch::tensor(indices, torch::kInt64)));
    const auto b = documentBatch(data, indices, config.seq_len);
    return model->classifySequences(b.ids, b.lengths);
  }

  // Collective. Pooled features of every document of `data` under the frozen base: each rank pools
  // a contiguous share, micro-batch by micro-batch, beside a heartbeat (shares can take minutes and
  // differ in length), then all-gathers give every rank all of them.
  torch::Tensor computeFeatures(const TokenDataset& data, const char* pool_tag, const char* gather_tag) {
    const std::int64_t n = data.numDocuments(), world = comm.size(), share = (n + world - 1) / world;
    const std::int64_t begin = std::min(n, comm.rank() * share), end = std::min(n, begin + share);
    const std::int64_t dim = model->config().dim;
    auto mine = std::make_shared<torch::Tensor>(torch::zeros({share, dim}));
    model->eval();
    runWithHeartbeat(comm, pool_tag, config.slow_phase_timeout_s, "pooling features of " + config.data_path, "",
                     [self = shared_from_this(), d = &data, mine, begin, end] {
                       torch::NoGradGuard no_grad;  // grad mode is per thread
                       for (std::int64_t at = begin; at < end; at += self->config.micro_batch) {
                         std::vector<std::int64_t> part;
                         for (std::int64_t i = at; i < std::min(at + self->config.micro_batch, end); ++i) part.push_back(i);
                         const auto b = documentBatch(*d, part, self->config.seq_len);
                         mine->narrow(0, at - begin, static_cast<std::int64_t>(part.size()))
                             .copy_(self->model->pool(self->model->hidden(b.ids), b.lengths));
                       }
                     });
    model->train();
    // In chunks of at most 1 GiB per rank (MPI counts are ints).
    auto all = torch::empty({world * share, dim});
    const std::int64_t rows = std::max<std::int64_t>(1, (std::int64_t{1} << 30) / (dim * 4));
    for (std::int64_t r0 = 0; r0 < share; r0 += rows) {
      const std::int64_t m = std::min(rows, share - r0);
      auto send = mine->narrow(0, r0, m).contiguous();
      auto recv = torch::empty({world, m, dim});
      comm.allGather(send.data_ptr(), static_cast<std::size_t>(send.nbytes()), recv.data_ptr(), gather_tag);
      for (std::int64_t w = 0; w < world; ++w) all.narrow(0, w * share + r0, m).copy_(recv[w]);
    }
    return all.narrow(0, 0, n).clone();
  }

  // transfer.cache_features: RUN_DIR/features.h5 holds the features of both splits; it is reused
  // when every rank can read it and it matches this model and dataset, else computed (shared out
  // over the ranks) and written by rank 0.
  void prepareFeatureCache() {
    if (!config.transfer.cache_features) return;
    const std::string path = config.run_dir + "/features.h5";
    const std::string key = config.model_path + "|" + config.data_path + "|" + config.pooling;
    std::int32_t reuse[1] = {0};
    if (fileExists(path)) {
      try {
        H5File file = H5File::openRead(path);
        if (file.stringAttr("/", "key") == key && file.shape("/train")[0] == train_data.numDocuments() &&
            file.shape("/val")[0] == val_data.numDocuments()) {
          train_features = file.readTensor("/train");
          val_features = file.readTensor("/val");
          reuse[0] = 1;
        }
      } catch (const Error&) {
        // unreadable or foreign: compute again below
      }
    }
    comm.allReduce(reuse, 1, ReduceOp::Min, "features/reuse");  // all ranks take the same path
    if (reuse[0]) {
      log.main("features: reused " + path);
      return;
    }
    const auto t0 = Clock::now();
    train_features = computeFeatures(train_data, "features/pool_train", "features/train");
    val_features = computeFeatures(val_data, "features/pool_val", "features/val");
    std::function<void()> write;
    if (comm.rank() == 0)
      write = [path, key, train = train_features, val = val_features] {
        const std::string tmp = path + ".tmp";
        {
          H5File file = H5File::create(tmp);
          file.setAttr("/", "key", key);
          file.writeTensor("/train", train);
          file.writeTensor("/val", val);
          file.close();
        }
        publishFile(tmp, path);
      };
    runWithHeartbeat(comm, "features/write", config.slow_phase_timeout_s, "writing " + path, "", std::move(write));
    log.main("features: " + std::to_string(train_features.size(0) + val_features.size(0)) + " documents through the frozen base on " +
             std::to_string(comm.size()) + " rank(s) in " +
             std::to_string(std::chrono::duration<double>(Clock::now() - t0).count()).substr(0, 5) + " s, cached in " + path);
  }

  // Collective: loss and accuracy over the whole validation split (classification).
  double validationClassification() {
    torch::NoGradGuard no_grad;
    model->eval();
    double totals[3] = {0, 0, 0};  // loss sum, correct, documents
    std::vector<std::int64_t> mine;
    for (std::int64_t i = comm.rank(); i < val_data.numDocuments(); i += comm.size()) mine.push_back(i);
    for (std::size_t at = 0; at < mine.size(); at += static_cast<std::size_t>(config.micro_batch)) {
      const std::vector<std::int64_t> part(mine.begin() + static_cast<std::ptrdiff_t>(at),
                                           mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), at + config.micro_batch)));
      torch::Tensor labels;
      auto logits = classLogits(val_data, val_features, part, labels);
      totals[0] += torch::nn::functional::cross_entropy(logits, labels,
                                                        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                       .item<double>();
      totals[1] += logits.argmax(1).eq(labels).sum().item<double>();
      totals[2] += static_cast<double>(part.size());
    }
    model->train();
    comm.allReduce(totals, 3, ReduceOp::Sum, "val/classify");
    val_accuracy = totals[2] > 0 ? totals[1] / totals[2] : std::nan("");
    return totals[2] > 0 ? totals[0] / totals[2] : std::nan("");
  }

  // Collective: mean validation loss over the first eval.batches x micro_batch x world sequences
  // (language modelling), or over the whole validation split (classification).
  double validationLoss() {
    if (classify) return validationClassification();
    torch::NoGradGuard no_grad;
    model->eval();
    const std::int64_t wanted = config.eval_batches * config.micro_batch * comm.size();
    const std::int64_t n = std::min(wanted, val_data.numSamples());
    std::vector<std::int64_t> mine;
    for (std::int64_t i = comm.rank(); i < n; i += comm.size()) mine.push_back(i);
    double totals[2] = {0, 0};  // loss sum, targets counted (token-weighted)
    for (std::size_t at = 0; at < mine.size(); at += static_cast<std::size_t>(config.micro_batch)) {
      const std::vector<std::int64_t> part(mine.begin() + static_cast<std::ptrdiff_t>(at),
                                           mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), at + config.micro_batch)));
      const auto batch = windowBatch(val_data, part);
      const auto loss = tokenLoss(model->forward(batch.inputs), batch.targets);
      totals[0] += loss.sum.item<double>();
      totals[1] += static_cast<double>(loss.counted);
    }
    model->train();
    comm.allReduce(totals, 2, ReduceOp::Sum, "val/loss");
    return totals[1] > 0 ? totals[0] / totals[1] : std::nan("");
  }

  // Collective. One optimizer step over global batch `step - 1`. The step's loss and the stop flag
  // travel in one all-reduce; a non-finite loss or gradient norm (on any rank, so on every rank
  // after the average) skips the update everywhere.
  StepOutcome step(std::int64_t step_number) {
    const auto accumulation = config.accumulation(comm.size());
    const auto& t = config.transfer;
    if (t.layer_lr_decay < 1.0 || t.unfreeze_every > 0)
      for (auto& slot : dp->optimizer().slots())
        slot.lr_scale = layerLrScale(slot.name, model->config().n_layers, t.layer_lr_decay, t.unfreeze_every, step_number);
    dp->beginStep();
    double loss_sum = 0, tokens = 0;
    for (std::int64_t m = 0; m < accumulation; ++m) {
      dp->beginMicroStep(/*sync=*/m + 1 == accumulation);
      const auto indices = sampler.microBatch(step_number - 1, static_cast<int>(m), comm.rank(), comm.size(),
                                              static_cast<int>(config.micro_batch));
      torch::Tensor loss;
      if (classify) {
        for (const auto i : indices) tokens += static_cast<double>(std::min<std::int64_t>(train_data.documentLength(i), config.seq_len));
        torch::Tensor labels;
        loss = torch::nn::functional::cross_entropy(classLogits(train_data, train_features, indices, labels), labels);
      } else {
        tokens += static_cast<double>(indices.size()) * config.seq_len;
        const auto batch = windowBatch(train_data, indices);
        if (train_data.hasLossMask()) {
          // Mean over the targets that count; a micro-batch of prompt tokens only contributes 0.
          const auto masked = tokenLoss(model->forward(batch.inputs), batch.targets);
          loss = masked.sum / static_cast<double>(std::max<std::int64_t>(1, masked.counted));
        } else {
          loss = model->loss(batch.inputs, batch.targets);
        }
      }
      loss = loss / static_cast<double>(accumulation);
      if (injectNan(step_number)) loss = loss * std::numeric_limits<float>::quiet_NaN();
      loss.backward();
      loss_sum += loss.item<double>();
    }
    dp->finish();
    double reduced[3] = {loss_sum, stop_requested && stop_requested() ? 1.0 : 0.0, tokens};
    comm.allReduce(reduced, 3, ReduceOp::Sum, "train/loss+stop");
    StepOutcome out;
    out.loss = reduced[0] / comm.size();
    out.stop_requested = reduced[1] > 0;
    out.tokens = static_cast<std::int64_t>(reduced[2]);
    out.grad_norm = dp->gradNorm();
    out.applied = std::isfinite(out.loss) && std::isfinite(out.grad_norm);
    if (!out.applied) return out;
    if (config.grad_clip > 0 && out.grad_norm > config.grad_clip)
      dp->scaleGradients(config.grad_clip / (out.grad_norm + 1e-6));
    dp->step(schedule.at(step_number));
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

  // Rank 0: one metrics.jsonl line per step, a progress line every log_every steps.
  void report(std::int64_t step, std::int64_t start, const StepOutcome& out, double tokens_per_s, double elapsed,
              double val_loss) {
    const bool has_val = !std::isnan(val_loss);
    char json[640];
    std::snprintf(json, sizeof(json),
                  "{\"step\": %lld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, \"tokens\": %lld, "
                  "\"tokens_per_s\": %.1f, \"elapsed_s\": %.3f, \"skipped\": %d, \"skipped_total\": %lld%s}",
                  static_cast<long long>(step), jsonNumber(out.loss, 17).c_str(), schedule.at(step),
                  jsonNumber(out.grad_norm, 9).c_str(),
                  static_cast<long long>(tokens_seen), tokens_per_s, elapsed,
                  out.applied ? 0 : 1, static_cast<long long>(skipped_total),
                  has_val ? (", \"val_loss\": " + std::to_string(val_loss) +
                             (classify ? ", \"val_accuracy\": " + jsonNumber(val_accuracy, 6) : std::string())).c_str()
                          : "");
    appendMetrics(json);
    if (step % config.log_every != 0 && step != config.steps && !has_val) return;
    const double eta = elapsed / static_cast<double>(step - start) * static_cast<double>(config.steps - step);
    char line[256];
    std::snprintf(line, sizeof(line), "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s",
                  static_cast<long long>(step), static_cast<long long>(config.steps), out.loss, schedule.at(step),
                  tokens_per_s, formatDuration(eta).c_str(),
                  has_val ? (" | val loss " + std::to_string(val_loss) +
                             (classify ? " | val accuracy " + std::to_string(val_accuracy).substr(0, 6) : std::string())).c_str()
                          : "");
    log.main(line);
  }

  TrainingState snapshot(std::int64_t step_number) {
    TrainingState state;
    state.step = step_number;
    state.tokens_seen = tokens_seen;
    state.skipped_steps = skipped_total;
    state.world_size = comm.size();
    state.seed = config.seed;
    state.next_batch = step_number;
    state.config = config.resolved();
    state.transfer = config.transfer;
    state.base_model = config.model_path;
    at::Tensor mine;
    {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      mine = gen.get_state();
    }
    auto all = torch::empty({comm.size(), mine.numel()}, torch::kUInt8);
    comm.allGather(mine.data_ptr(), static_cast<std::size_t>(mine.numel()), all.data_ptr(), "ckpt/rng");
    state.rng_states = all;
    return state;
  }

  // Collective (RNG states are gathered); rank 0 writes while all ranks keep a heartbeat (Note
  // [heartbeat]), so a rank stalling during a long write is still named within dist.timeout_s.
  void saveCheckpoint(std::int64_t step_number) {
    const auto start = Clock::now();
    auto path = std::make_shared<std::string>();
    std::function<void()> write;
    // Sharded: every rank writes its rows first (collective); rank 0's file then maps them.
    const OptimizerWriter optimizer = dp->shardsOptimizer()
        ? writeOptimizerParts(comm, checkpoint_dir, step_number, dp->sharedOptimizer(), config.slow_phase_timeout_s)
        : wholeOptimizer(dp->sharedOptimizer());
    if (comm.rank() == 0) {
      // The writer owns what it reads (tensor handles are shared, not copied): it may outlive this
      // object only on the way to exiting after an error.
      write = [dir = checkpoint_dir, model = model, optimizer, schedule = schedule, state = snapshot(step_number),
               keep = config.keep_last, delay = config.slow_checkpoint_s, path]() mutable {
        torch::NoGradGuard no_grad;  // grad mode is per thread
        if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
        *path = writeCheckpoint(dir, model, optimizer, schedule, state);
        pruneCheckpoints(dir, keep);
      };
    } else {
      snapshot(step_number);  // the RNG gather is collective
    }
    runWithHeartbeat(comm, "ckpt/write", config.slow_phase_timeout_s,
                     "checkpoint of step " + std::to_string(step_number) + " in " + checkpoint_dir,
                     " (a stalled file system?); earlier checkpoints are intact", std::move(write));
    if (comm.rank() == 0)
      log.main("checkpoint: " + *path + " (" +
               std::to_string(std::chrono::duration<double>(Clock::now() - start).count()).substr(0, 5) + " s)");
  }

  // Collective. Returns the step to continue after (0 for a fresh run).
  std::int64_t resumeIfPossible() {
    // Rank 0 picks the newest complete checkpoint whose tensors match their manifest (damaged ones
    // are skipped); reading every byte of a big one takes a while, so the others keep a heartbeat.
    auto found = std::make_shared<std::int64_t>(-1);
    std::function<void()> verify;
    if (comm.rank() == 0)
      verify = [dir = checkpoint_dir, log = log, found] {
        for (const auto& candidate : completeCheckpoints(dir)) {
          try {
            verifyCheckpoint(candidate);
          } catch (const InputError& e) {
            log.info(std::string("skipping damaged checkpoint: ") + e.what());
            continue;
          }
          *found = std::stoll(candidate.substr(candidate.size() - 11, 8));
          return;
        }
      };
    runWithHeartbeat(comm, "resume/verify", config.slow_phase_timeout_s, "verifying the checkpoints in " + checkpoint_dir,
                     "", std::move(verify));
    std::int64_t step[1] = {*found};
    comm.allReduce(step, 1, ReduceOp::Max, "resume/step");
    if (step[0] < 0) return 0;
    // Every rank reads it (at its own file-system speed), again with a heartbeat. The reader works
    // on handles that share this run's tensors; the step counts are copied back after.
    const std::string path = checkpoint_dir + "/" + checkpointName(step[0]);
    auto read = std::make_shared<TrainingState>();
    AdamW& optimizer = dp->optimizer();
    auto into = std::make_shared<AdamW>(optimizer);
    runWithHeartbeat(comm, "resume/read", config.slow_phase_timeout_s, "reading " + path, "",
                     [path, model = model, into, read]() mutable { *read = readCheckpoint(path, model, *into); });
    optimizer.setStepCount(into->stepCount());
    for (std::size_t i = 0; i < optimizer.slots().size(); ++i) optimizer.slots()[i].steps = into->slots()[i].steps;
    const TrainingState& state = *read;
    skipped_total = state.skipped_steps;
    tokens_seen = state.tokens_seen;
    if (state.world_size == comm.size() && state.rng_states.defined() && state.rng_states.size(0) == comm.size()) {
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(state.rng_states[comm.rank()].contiguous());
    }
    log.main("resuming from " + path + " at step " + std::to_string(state.step) + " (saved with " +
             std::to_string(state.world_size) + " ranks, now " + std::to_string(comm.size()) + ")");
    if (comm.rank() == 0) truncateMetrics(state.step);
    return state.step;
  }

  // Collective: the largest and smallest peak resident set over the ranks, in one line.
  void reportMemory() {
    std::int64_t peak[2] = {peakResidentBytes(), -peakResidentBytes()};
    comm.allReduce(peak, 2, ReduceOp::Max, "train/memory");
    char line[160];
    std::snprintf(line, sizeof(line), "memory: peak resident set %.1f MiB per rank (largest), %.1f MiB (smallest)",
                  static_cast<double>(peak[0]) / (1 << 20), static_cast<double>(-peak[1]) / (1 << 20));
    log.main(line);
  }

  // Drops metrics lines past `step` (they belong to work the checkpoint does not hold).
  void truncateMetrics(std::int64_t step_number) {
    const std::string path = config.run_dir + "/metrics.jsonl";
    if (!fileExists(path)) return;
    std::istringstream in(readFile(path));
    std::string line, kept;
    while (std::getline(in, line)) {
      const auto at = line.find("\"step\": ");
      if (at != std::string::npos && std::stoll(line.substr(at + 8)) <= step_number) kept += line + "\n";
    }
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp, std::ios::trunc) << kept;
    publishFile(tmp, path);
  }

  void appendMetrics(const std::string& json) {
    if (comm.rank() != 0) return;
    std::ofstream out(config.run_dir + "/metrics.jsonl", std::ios::app);
    out << json << "\n";
    if (!out.flush()) throw Error(config.run_dir + "/metrics.jsonl: write failed");
  }

  TrainConfig config;
  std::function<bool()> stop_requested;
  std::int64_t skipped_total = 0, bad_in_a_row = 0;
  std::int64_t tokens_seen = 0;  // tokens read by all ranks since step 0 (checkpointed)
  Communicator& comm;
  Logger log;
  TokenDataset train_data, val_data;
  bool classify;  // sequence classification (labelled data) instead of next-token prediction
  Transformer model;
  torch::Tensor train_features, val_features;  // transfer.cache_features: the frozen base's pooled features
  double val_accuracy = std::nan("");
  GlobalSampler sampler;
  std::unique_ptr<DataParallel> dp;  // who holds what: gradients, optimizer state (dist.shard)
  Schedule schedule;
  std::string checkpoint_dir;
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
  // Loading the data and the model can take minutes on some ranks: a heartbeat keeps the others
  // in touch meanwhile (Note [heartbeat]).
  Logger log(comm.rank(), comm.size());
  const std::string what = "loading " + config.data_path + " and " + (config.model_path.empty() ? "a fresh model" : config.model_path);
  auto loaded = std::make_shared<std::unique_ptr<Loaded>>();
  double report_at = 2;  // a line at 2, 4, 8, ... s when loading is slow
  runWithHeartbeat(
      comm, "init/load", config.slow_phase_timeout_s, what, "",
      [config, loaded, log]() mutable {
        if (config.slow_load_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(config.slow_load_s));
        *loaded = loadRun(config, log);
      },
      [&](double seconds) {
        if (seconds < report_at) return;
        log.main(what + " (" + std::to_string(static_cast<int>(seconds)) + " s so far)");
        report_at *= 2;
      });
  s_ = std::make_shared<State>(config, comm, std::move(stop_requested), std::move(**loaded));
}

Trainer::~Trainer() = default;

TrainResult Trainer::run() {
  auto& s = *s_;
  const auto& c = s.config;
  std::int64_t start = 0;
  {
    {
      LongTimeout slow(s.comm, c.slow_phase_timeout_s);  // one broadcast of every parameter: long for big models
      s.dp->broadcastParameters();
    }
    start = s.resumeIfPossible();
  }
  TrainResult result;
  s.log.main("train: " + std::to_string(c.steps) + " steps x " + std::to_string(c.batch_size) + " sequences x " +
             std::to_string(c.seq_len) + " tokens on " + std::to_string(s.comm.size()) + " rank(s) on " +
             std::to_string(s.comm.size() / std::max(1, s.comm.localSize())) + " host(s) (" + s.comm.backend() +
             ", " + std::to_string(torch::get_num_threads()) + " thread(s) each, accumulation " +
             std::to_string(c.accumulation(s.comm.size())) + "), " + std::to_string(s.classify ? s.train_data.numDocuments() : s.train_data.numSamples()) +
             (s.classify ? " training documents" : " training sequences"));
  if (s.train_data.streamed())
    s.log.main("data: streamed from " + c.data_path + " (" + std::to_string(s.train_data.numTokens()) +
               " training tokens; data.load = " + c.data_load + ")");
  s.prepareFeatureCache();
  s.log.main(s.dp->describe());
  result.base_val_loss = s.validationLoss();
  if (start == 0) s.log.main("val loss before training: " + std::to_string(result.base_val_loss));
  const std::int64_t last = c.stop_after > 0 ? std::min(c.steps, c.stop_after) : c.steps;
  const auto t0 = Clock::now();
  result.final_val_loss = result.base_val_loss;
  std::int64_t run_tokens = 0;  // read by this run (since the start or the resume)
  for (std::int64_t step = start + 1; step <= last; ++step) {
    const StepOutcome out = s.step(step);
    s.tokens_seen += out.tokens;
    run_tokens += out.tokens;
    if (out.applied) s.bad_in_a_row = 0;
    else s.countSkipped(step, out);
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    result.tokens_per_second = static_cast<double>(run_tokens) / std::max(elapsed, 1e-9);
    const bool eval_now = (c.eval_every > 0 && step % c.eval_every == 0) || step == c.steps;
    if (eval_now) result.final_val_loss = s.validationLoss();
    s.report(step, start, out, result.tokens_per_second, elapsed, eval_now ? result.final_val_loss : std::nan(""));
    const bool checkpoint_due = (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == last;
    if (checkpoint_due || out.stop_requested) s.saveCheckpoint(step);
    result.steps_done = step;
    if (out.stop_requested) {
      s.log.main("stop requested (signal): checkpointed at step " + std::to_string(step) + "; run again to resume");
      result.preempted = true;
      break;
    }
  }
  result.stopped_early = !result.preempted && last < c.steps;
  result.skipped_steps = s.skipped_total;
  s.reportMemory();
  return result;
}

}  // namespace graft
