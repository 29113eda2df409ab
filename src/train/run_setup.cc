#include "train/run_setup.h"

#include <sched.h>

#include <torch/torch.h>

#include <cstdio>

#include "convert/model_io.h"
#include "formats/hdf5.h"
#include "model/transfer_apply.h"
#include "train/checkpointing.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

struct Base {
  Transformer model;
  std::shared_ptr<const ModelSource> rows;  // the model has no memory yet: its values come from here
  std::string stand_in;                     // Loaded::stand_in
};
Base loadOrInitialise(const TrainConfig& c, int vocab_size, Logger& log);

bool classifies(const TrainConfig& c, const TokenDataset& train) {
  if (c.task == "classify" && !train.hasLabels())
    throw InputError(c.data_path + ": task.type = classify needs a labelled dataset (graft prepare --label-field ...)");
  return c.task == "classify" || (c.task == "auto" && train.hasLabels());
}

// The model a run trains: the base (loaded or initialised), a classification head for labelled
// data, then the [transfer] flavour applied.
Base buildModel(const TrainConfig& c, const TokenDataset& train, Logger& log) {
  auto [model, rows, stand_in] = loadOrInitialise(c, train.vocabSize(), log);
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
  const auto adapted = applyTransfer(model, c.transfer, c.seed, rows ? rows->rowFill() : RowFill());
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
  return {model, rows, stand_in};
}

// Under dist.shard = parameters the model is built without memory and each rank reads its own rows
// later, so that no rank ever holds the whole base.
Base loadOrInitialise(const TrainConfig& c, int vocab_size, Logger& log) {
  const bool by_rows = c.shard == "parameters";
  if (!c.model_path.empty()) {
    // A run that resumes its whole model from run.dir reads no weight of model.path (Trainer::run),
    // and only needs its shape: where model.path is gone (moved, cleaned up), the newest checkpoint
    // gives the shape, and the resume must then happen (Loaded::stand_in).
    std::string stand_in;
    if (!fileExists(c.model_path) && !isDirectory(c.model_path)) stand_in = checkpointHoldingTheWholeModel(c);
    if (!stand_in.empty())
      log.main("model: " + c.model_path + " is missing; this run resumes its whole model from run.dir, and " + stand_in +
               " gives the model's shape");
    std::shared_ptr<const ModelSource> source = openModelSource(stand_in.empty() ? c.model_path : stand_in);
    if (!source) {  // adapters without their base: training on top of them again has no single meaning
      std::string base;
      const TransferConfig t = readTransferGroup(H5File::openRead(c.model_path), base);
      const std::string what = "model.path " + c.model_path + " holds only " +
                               (t.mode == "prompt" ? "a soft prompt" : t.mode + " adapters") + " of " +
                               (base.empty() ? "an unnamed base model" : base) + "; graft train starts from a whole model";
      const std::string resume = "resume the run that wrote it by training again in its run.dir";
      if (t.mode == "prompt") throw InputError(what + " (a soft prompt does not merge into weights): " + resume);
      throw InputError(what + ": merge them first (graft export --model " + c.model_path +
                       " --format graft --out merged.h5, then model.path = merged.h5), or " + resume);
    }
    auto model = by_rows ? modelWithoutMemory(source->config()) : loadWhole(*source);
    // Hugging Face models often pad their vocabulary past the tokenizer's: fewer ids in the data is fine.
    if (model->config().vocab_size < vocab_size)
      throw InputError(c.model_path + ": model vocabulary " + std::to_string(model->config().vocab_size) +
                       " is smaller than the dataset's " + std::to_string(vocab_size) + " (" + c.data_path +
                       "); prepare the data with the model's tokenizer");
    if (model->config().seq_len < c.seq_len)
      throw InputError("train.seq_len " + std::to_string(c.seq_len) + " exceeds the model's context of " +
                       std::to_string(model->config().seq_len));
    if (stand_in.empty())
      log.main("model: " + c.model_path + " (" + model->config().describe() + ")" +
               (!by_rows                                      ? ""
                : checkpointHoldingTheWholeModel(c).empty() ? "; each rank reads only its rows"
                                                              : "; each rank reads only its rows, of the checkpoint it resumes if one verifies"));
    return {model, by_rows ? source : nullptr, stand_in};
  }
  ModelConfig arch = c.arch;
  arch.vocab_size = vocab_size;
  arch.seq_len = std::max(arch.seq_len, c.seq_len);
  log.main("model: random initialisation, seed " + std::to_string(c.seed) + " (" + arch.describe() + ")" +
           (by_rows ? "; each rank draws only its rows" : ""));
  if (by_rows) return {modelWithoutMemory(arch), initialisationSource(arch, c.seed), ""};
  Transformer model(arch);
  model->initialise(c.seed);
  return {model, nullptr, ""};
}

}  // namespace

std::unique_ptr<Loaded> loadRun(const TrainConfig& c, Logger& log) {
  const auto residency = parseResidency(c.data_load, "data.load");
  const auto packing = parsePacking(c.data_packing, "data.packing");
  TokenDataset train(c.data_path, "train", c.seq_len, residency, packing);
  TokenDataset val(c.data_path, "val", c.seq_len, residency, packing);
  const bool classify = classifies(c, train);
  auto [model, rows, stand_in] = buildModel(c, train, log);
  return std::make_unique<Loaded>(Loaded{std::move(train), std::move(val), classify, model, rows, stand_in});
}

int defaultThreads(int local_ranks) {
  cpu_set_t set;
  CPU_ZERO(&set);
  const int cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  return std::max(1, cores / std::max(1, local_ranks));
}

}  // namespace graft
