// A model file read one row range at a time. dist.shard = parameters builds its model without
// memory (model/parameter_storage.h) and each rank reads only the rows it keeps, so no rank holds
// the whole model while loading (docs/sharding.md); loadModel reads whole models through the
// same sources, so both paths check a file the same way.
//
// What a rank reads is the byte range of its rows, except for tensors that Hugging Face stores in
// another layout (GPT-2's Conv1D weights and fused q|k|v, the rotary halves of Llama's q and k
// rows): those are read whole, one tensor at a time, and the rank's rows taken from them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/parameter_storage.h"
#include "model/transformer.h"

namespace graft {

class ModelSource {
 public:
  virtual ~ModelSource() = default;
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return path_; }
  // Rows [begin, end) of parameter `name` (graft's names and layout) into `out`: float32,
  // contiguous, shaped [end - begin, ...]. InputError naming the file and the tensor when the
  // source has no such parameter.
  virtual void read(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) const = 0;
  // read() as a RowFill (the source must outlive it); `out` may live on any device.
  RowFill rowFill() const;
  // Bytes of tensor data read from the files so far, by every read(); -1 where the source does
  // not count them (only a Hugging Face folder does).
  virtual std::int64_t bytesRead() const { return -1; }

 protected:
  ModelSource(ModelConfig config, std::string path) : config_(std::move(config)), path_(std::move(path)) {}
  ModelConfig config_;
  std::string path_;
};

// A llama2.c .bin or a graft .h5 model or checkpoint (an existing file; any format, a Hugging Face
// folder too: openModelSource in convert/model_io.h). Every tensor is checked (present, shape,
// type) before anything is read. nullptr for an adapter-only checkpoint: it is loaded whole (its
// base, then the transfer, then the adapters).
std::unique_ptr<ModelSource> openFileSource(const std::string& path);
// The values Transformer::initialise(seed) gives a model of `c`, one parameter at a time.
std::unique_ptr<ModelSource> initialisationSource(const ModelConfig& c, std::uint64_t seed);

// A model of the source's architecture with every parameter read whole.
Transformer loadWhole(const ModelSource& source);
// A model of the source's architecture whose parameters have no memory yet.
Transformer modelWithoutMemory(const ModelConfig& c);

// Each parameter's name and shape, in registration order, without building its values.
std::vector<std::pair<std::string, std::vector<std::int64_t>>> parameterShapes(const ModelConfig& c);

}  // namespace graft
