// What a training run trains, read before any collective (so it can run beside a heartbeat): the
// data splits and the model (a loaded or fresh base, a classification head for labelled data, the
// [transfer] flavour applied).
#pragma once

#include <memory>

#include "config/train_config.h"
#include "convert/model_source.h"
#include "data/dataset.h"
#include "model/transformer.h"
#include "util/log.h"

namespace graft {

// What each rank loads before training, with no collective (so it can run beside a heartbeat): the
// data and the model it trains.
struct Loaded {
  TokenDataset train_data, val_data;
  bool classify;
  Transformer model;
  // dist.shard = parameters: the base parameters were built without memory
  // (model/parameter_storage.h) and each rank reads only its rows from here when the strategy
  // takes them (DataParallel::keepOwnRows). Null when the model was loaded whole.
  std::shared_ptr<const ModelSource> rows;
  // model.path was missing and the run resumes a whole model: the model's shape (and, loaded
  // whole, its weights until the resume reads them again) came from this checkpoint of run.dir.
  // "" otherwise. A run with a stand-in that finds no checkpoint to resume must stop.
  std::string stand_in;
};

// Reads both splits of data.path and builds the model; no collective. Errors name the file or key.
std::unique_ptr<Loaded> loadRun(const TrainConfig& c, Logger& log);

// Intra-op threads for one of `local_ranks` ranks on this host: the cores it may use, shared out.
int defaultThreads(int local_ranks);

}  // namespace graft
