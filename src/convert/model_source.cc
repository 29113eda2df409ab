#include "convert/model_source.h"

#include <torch/torch.h>

#include <map>

#include "convert/model_io.h"
#include "formats/hdf5.h"
#include "formats/llama2c.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

std::int64_t rowsOf(const std::vector<std::int64_t>& shape) { return shape.empty() ? 1 : shape[0]; }

void checkOut(const std::string& what, const std::string& name, std::int64_t begin, std::int64_t end, const at::Tensor& out) {
  if (!out.is_contiguous() || out.scalar_type() != at::kFloat || out.dim() == 0 || out.size(0) != end - begin)
    throw Error(what + ": tensor " + name + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                ") asked into a buffer of shape " + c10::str(out.sizes()));
}

// A graft model file or checkpoint (its /model group): HDF5 hyperslabs of each dataset.
class Hdf5Source final : public ModelSource {
 public:
  Hdf5Source(H5File file, ModelConfig c) : ModelSource(std::move(c), file.path()), file_(std::move(file)) {
    for (const auto& [name, shape] : parameterShapes(config_)) checkModelTensor(file_, name, shape);
  }
  void read(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) const override {
    checkOut(path_, name, begin, end, out);
    out.copy_(file_.readRows("/model/" + name, begin, end).view(out.sizes()));
  }

 private:
  H5File file_;
};

class Llama2cSource final : public ModelSource {
 public:
  explicit Llama2cSource(Llama2cFile file) : ModelSource(file.config(), file.path()), file_(std::move(file)) {}
  void read(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) const override {
    checkOut(path_, name, begin, end, out);
    file_.readRows(name, begin, end, out.data_ptr<float>());
  }

 private:
  Llama2cFile file_;
};

// Transformer::initialise, a parameter at a time: the whole parameter is drawn (one generator per
// parameter) and the rows asked for kept.
class InitialisationSource final : public ModelSource {
 public:
  InitialisationSource(const ModelConfig& c, std::uint64_t seed) : ModelSource(c, "random initialisation"), seed_(seed) {
    for (const auto& [name, shape] : parameterShapes(c)) shapes_[name] = shape;
  }
  void read(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) const override {
    checkOut(path_, name, begin, end, out);
    const auto it = shapes_.find(name);
    if (it == shapes_.end()) throw Error("random initialisation: the model has no parameter " + name);
    auto whole = torch::empty(it->second);
    initialiseParameter(name, whole, seed_, config_.n_layers);
    out.copy_(whole.narrow(0, begin, end - begin).view(out.sizes()));
  }

 private:
  std::uint64_t seed_;
  std::map<std::string, std::vector<std::int64_t>> shapes_;
};

}  // namespace

RowFill ModelSource::rowFill() const {
  return [this](const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out) {
    if (out.is_cpu()) return read(name, begin, end, out);
    auto host = torch::empty(out.sizes(), out.options().device(torch::kCPU));  // files are read into host memory
    read(name, begin, end, host);
    out.copy_(host);
  };
}

std::unique_ptr<ModelSource> openFileSource(const std::string& path) {
  if (!H5File::isHdf5(path)) return std::make_unique<Llama2cSource>(Llama2cFile::open(path));
  H5File file = H5File::openRead(path);
  if (hasTransferGroup(file)) return nullptr;
  ModelConfig c = readModelConfig(file);
  return std::make_unique<Hdf5Source>(std::move(file), std::move(c));
}

std::unique_ptr<ModelSource> initialisationSource(const ModelConfig& c, std::uint64_t seed) {
  return std::make_unique<InitialisationSource>(c, seed);
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> parameterShapes(const ModelConfig& c) {
  auto model = modelWithoutMemory(c);
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
  for (const auto& p : model->named_parameters()) out.emplace_back(p.key(), p.value().sizes().vec());
  return out;
}

Transformer modelWithoutMemory(const ModelConfig& c) {
  WithoutMemory guard;
  return Transformer(c);
}

Transformer loadWhole(const ModelSource& source) {
  auto model = modelWithoutMemory(source.config());
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    auto values = refill(p.value());
    source.read(p.key(), 0, rowsOf(values.sizes().vec()), values.dim() == 0 ? values.view({1}) : values);
  }
  return model;
}

}  // namespace graft
