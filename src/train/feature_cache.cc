#include "train/feature_cache.h"

#include <torch/torch.h>

#include <chrono>

#include "formats/hdf5.h"
#include "parallel/heartbeat.h"
#include "train/batches.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

// Cached features up to this size live on the model's device.
constexpr std::int64_t kDeviceFeatureBytes = std::int64_t{4} << 30;

// Collective. Pooled features of every document of `data` under the frozen base: each rank pools
// a contiguous share, micro-batch by micro-batch (see prepareFeatureCache for where), then
// all-gathers give every rank all of them. The helper owns what it reads.
at::Tensor computeFeatures(Transformer model, std::shared_ptr<const TokenDataset> data, const TrainConfig& c,
                           Communicator& comm, const char* pool_tag, const char* gather_tag, bool collective_forward) {
  const std::int64_t n = data->numDocuments(), world = comm.size(), share = (n + world - 1) / world;
  const std::int64_t begin = std::min(n, comm.rank() * share), end = std::min(n, begin + share);
  const std::int64_t dim = model->config().dim;
  auto mine = std::make_shared<torch::Tensor>(torch::zeros({share, dim}));
  model->eval();
  // Pools the first `count` documents of the share, micro-batch by micro-batch; a micro-batch past
  // `end` runs document 0 instead and keeps nothing (collective forwards only).
  auto pool = [model, data, mine, begin, end, micro = c.micro_batch, seq_len = c.seq_len](std::int64_t count) mutable {
    torch::NoGradGuard no_grad;  // grad mode is per thread
    for (std::int64_t at = begin; at < begin + count; at += micro) {
      std::vector<std::int64_t> part;
      for (std::int64_t i = at; i < std::min(at + micro, end); ++i) part.push_back(i);
      if (part.empty()) {
        model->hidden(documentBatch(*data, {0}, seq_len, model->device()).ids);  // the units' gathers, as the other ranks'
        continue;
      }
      const auto b = documentBatch(*data, part, seq_len, model->device());
      mine->narrow(0, at - begin, static_cast<std::int64_t>(part.size())).copy_(model->pool(model->hidden(b.ids), b.lengths));
    }
  };
  if (collective_forward) {
    LongTimeout slow(comm, c.slow_phase_timeout_s);  // a rank may be slow to read its documents
    pool(share);  // every rank ceil(share / micro) passes: each gathers the same units
  } else {
    runWithHeartbeat(comm, pool_tag, c.slow_phase_timeout_s, "pooling features of " + c.data_path, "",
                     [pool, count = end - begin]() mutable { pool(count); });
  }
  model->train();
  // In chunks of at most 1 GiB per rank (MPI counts are ints).
  auto all = torch::empty({world * share, dim});
  const std::int64_t rows = std::max<std::int64_t>(1, (std::int64_t{1} << 30) / (dim * 4));
  for (std::int64_t r0 = 0; r0 < share; r0 += rows) {
    const std::int64_t m = std::min(rows, share - r0);
    auto send = mine->narrow(0, r0, m).contiguous();
    auto recv = torch::empty({world, m, dim});
    comm.allGatherBytes(send.data_ptr(), static_cast<std::size_t>(send.nbytes()), recv.data_ptr(), gather_tag);
    for (std::int64_t w = 0; w < world; ++w) all.narrow(0, w * share + r0, m).copy_(recv[w]);
  }
  return all.narrow(0, 0, n).clone();
}

// prepareFeatureCache's features, in host memory (where the file and the gathers read them).
FeatureCache featuresOnHost(Transformer model, std::shared_ptr<const TokenDataset> train,
                            std::shared_ptr<const TokenDataset> val, const TrainConfig& c, Communicator& comm,
                            Logger& log, bool collective_forward) {
  FeatureCache out;
  if (!c.transfer.cache_features) return out;
  const std::string path = c.run_dir + "/features.h5";
  const std::string key = c.model_path + "|" + c.data_path + "|" + c.pooling;
  std::int32_t reuse[1] = {0};
  if (fileExists(path)) {
    try {
      H5File file = H5File::openRead(path);
      if (file.stringAttr("/", "key") == key && file.shape("/train")[0] == train->numDocuments() &&
          file.shape("/val")[0] == val->numDocuments()) {
        out.train = file.readTensor("/train");
        out.val = file.readTensor("/val");
        reuse[0] = 1;
      }
    } catch (const Error&) {
      // unreadable or foreign: compute again below
    }
  }
  comm.allReduce(reuse, 1, ReduceOp::Min, "features/reuse");  // all ranks take the same path
  if (reuse[0]) {
    log.main("features: reused " + path);
    return out;
  }
  const auto t0 = std::chrono::steady_clock::now();
  out.train = computeFeatures(model, train, c, comm, "features/pool_train", "features/train", collective_forward);
  out.val = computeFeatures(model, val, c, comm, "features/pool_val", "features/val", collective_forward);
  std::function<void()> write;
  if (comm.rank() == 0)
    write = [path, key, train = out.train, val = out.val] {
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
  runWithHeartbeat(comm, "features/write", c.slow_phase_timeout_s, "writing " + path, "", std::move(write));
  log.main("features: " + std::to_string(out.train.size(0) + out.val.size(0)) + " documents through the frozen base on " +
           std::to_string(comm.size()) + " rank(s) in " +
           std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()).substr(0, 5) +
           " s, cached in " + path);
  return out;
}

}  // namespace

FeatureCache prepareFeatureCache(Transformer model, std::shared_ptr<const TokenDataset> train,
                                 std::shared_ptr<const TokenDataset> val, const TrainConfig& c, Communicator& comm,
                                 Logger& log, bool collective_forward) {
  FeatureCache out = featuresOnHost(model, std::move(train), std::move(val), c, comm, log, collective_forward);
  if (!out.train.defined() || model->device().is_cpu()) return out;
  // Kept where the head reads them (one copy now instead of one per micro-batch) unless they
  // would crowd the device: then each micro-batch's rows are copied as the head needs them.
  const std::int64_t bytes = (out.train.numel() + out.val.numel()) * out.train.element_size();
  if (bytes <= kDeviceFeatureBytes) {
    out.train = out.train.to(model->device()), out.val = out.val.to(model->device());
  } else {
    log.main("features: " + std::to_string(bytes >> 20) + " MiB stay in host memory (more than " +
             std::to_string(kDeviceFeatureBytes >> 30) + " GiB for " + model->device().str() +
             "); each micro-batch's rows are copied there");
  }
  return out;
}

}  // namespace graft
