#include "formats/llama2c.h"

#include <torch/torch.h>

#include <cstdint>
#include <cstring>
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

Transformer loadLlama2c(const std::string& path) {
  const std::string bytes = readFile(path);
  const ModelConfig c = parseLlama2cHeader(bytes.substr(0, kLlama2cHeaderBytes), bytes.size(), path);
  Transformer model(c);
  const std::int64_t head = c.headDim();

  torch::NoGradGuard no_grad;
  std::size_t at = 28;
  auto fill = [&](torch::Tensor dst) {
    const std::size_t n = static_cast<std::size_t>(dst.numel()) * 4;
    std::memcpy(dst.data_ptr<float>(), bytes.data() + at, n);
    at += n;
  };
  for (const auto& t : llama2cTensors(c)) {
    if (t.name == "output.weight") at += static_cast<std::size_t>(c.seq_len) * head * 4;  // legacy freq_cis tables
    fill(param(model, t.name));
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
