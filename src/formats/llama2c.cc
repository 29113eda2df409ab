#include "formats/llama2c.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <fstream>

#include "formats/llama2c_header.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

torch::Tensor param(Transformer& m, const std::string& name) {
  auto params = m->named_parameters();
  auto* p = params.find(name);
  if (!p) throw Error("model has no parameter " + name);
  return *p;
}

}  // namespace

Llama2cFile Llama2cFile::open(const std::string& path) {
  Llama2cFile f;
  f.file_ = ReadOnlyFile::open(path);
  std::string header(static_cast<std::size_t>(std::min<std::uint64_t>(kLlama2cHeaderBytes, f.file_.size())), '\0');
  f.file_.readAt(0, header.data(), header.size());
  f.config_ = parseLlama2cHeader(header, f.file_.size(), path);
  const ModelConfig& c = f.config_;
  std::uint64_t at = kLlama2cHeaderBytes;
  for (const auto& t : llama2cTensors(c)) {
    if (t.name == "output.weight") at += static_cast<std::uint64_t>(c.seq_len) * c.headDim() * 4;  // legacy freq_cis tables
    Where w;
    w.offset = at;
    w.rows = t.shape.empty() ? 1 : t.shape[0];
    w.row_floats = 1;
    for (std::size_t d = 1; d < t.shape.size(); ++d) w.row_floats *= t.shape[d];
    f.tensors_[t.name] = w;
    at += static_cast<std::uint64_t>(w.rows * w.row_floats) * 4;
  }
  return f;
}

void Llama2cFile::readRows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw InputError(path() + ": a llama2.c file holds no tensor " + name);
  const Where& w = it->second;
  if (begin < 0 || end < begin || end > w.rows)
    throw InputError(path() + ": tensor " + name + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") outside its " + std::to_string(w.rows));
  const std::uint64_t row_bytes = static_cast<std::uint64_t>(w.row_floats) * 4;
  file_.readAt(w.offset + row_bytes * static_cast<std::uint64_t>(begin), out,
               static_cast<std::size_t>(row_bytes * static_cast<std::uint64_t>(end - begin)));
}

Transformer loadLlama2c(const std::string& path) {
  const Llama2cFile file = Llama2cFile::open(path);
  Transformer model(file.config());
  torch::NoGradGuard no_grad;
  for (const auto& t : llama2cTensors(file.config())) {
    auto p = param(model, t.name);
    file.readRows(t.name, 0, p.size(0), p.data_ptr<float>());
  }
  return model;
}

void saveLlama2c(Transformer& model, const std::string& path) {
  const ModelConfig& c = model->config();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot create");
  const std::int32_t h[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                             c.tied ? c.vocab_size : -c.vocab_size, c.seq_len};
  out.write(reinterpret_cast<const char*>(h), sizeof(h));
  auto put = [&](const torch::Tensor& t) {
    auto cpu = t.detach().to(torch::kFloat32).contiguous();
    out.write(reinterpret_cast<const char*>(cpu.data_ptr<float>()), cpu.numel() * 4);
  };
  auto rotary_tables = [&] {
    const int half = c.headDim() / 2;
    auto i = torch::arange(half, torch::kFloat64);
    auto freq = torch::pow(c.rope_theta, -2.0 * i / c.headDim()).to(torch::kFloat32);
    auto angle = torch::outer(torch::arange(c.seq_len, torch::kFloat32), freq);
    put(torch::cos(angle));
    put(torch::sin(angle));
  };
  for (const auto& t : llama2cTensors(c)) {
    if (t.name == "output.weight") rotary_tables();
    put(param(model, t.name));
  }
  if (c.tied) rotary_tables();
  if (!out.flush()) throw Error(path + ": write failed");
}

}  // namespace graft
