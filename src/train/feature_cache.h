// transfer.cache_features: the frozen base's pooled features of every document, computed once
// (shared out over the ranks) and kept in RUN_DIR/features.h5, so that feature extraction trains the
// head on cached features instead of running the base every step.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

#include "communicator.h"
#include "config/train_config.h"
#include "data/dataset.h"
#include "model/transformer.h"
#include "util/log.h"

namespace graft {

struct FeatureCache {
  // [documents, dim] on the model's device (in host memory beyond 4 GiB); undefined when
  // transfer.cache_features is off.
  at::Tensor train, val;
};

// Collective. Reuses RUN_DIR/features.h5 when every rank can read it and it matches this model and
// dataset; else each rank pools a contiguous share of the documents, all-gathers give every rank
// all of them, and rank 0 writes the file (temp + rename). `collective_forward`: the model's
// forward is itself collective (dist.shard = parameters, each unit gathered as it runs), so the
// ranks pool on this thread, all the same number of micro-batches (a short share pads with
// passes whose features are dropped); otherwise the pooling runs beside a heartbeat (Note
// [heartbeat]), as shares can take minutes and differ in length.
FeatureCache prepareFeatureCache(Transformer model, std::shared_ptr<const TokenDataset> train,
                                 std::shared_ptr<const TokenDataset> val, const TrainConfig& c, Communicator& comm,
                                 Logger& log, bool collective_forward);

}  // namespace graft
