#include "io/llama2c.h"

#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <fstream>

#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

// The per-layer tensors in file order, with the parameter each layer slice goes to.
const char* const kLayerOrder[] = {"attention_norm", "attention.wq", "attention.wk", "attention.wv",
                                   "attention.wo",   "ffn_norm",     "feed_forward.w1",
                                   "feed_forward.w2", "feed_forward.w3"};

torch::Tensor param(Transformer& m, const std::string& name) {
  auto params = m->named_parameters();
  auto* p = params.find(name);
  if (!p) throw Error("model has no parameter " + name);
  return *p;
}

std::string layerParam(int layer, const char* what) {
  return "layers." + std::to_string(layer) + "." + what + ".weight";
}

}  // namespace

Transformer loadLlama2c(const std::string& path) {
  const std::string bytes = readFile(path);
  if (bytes.size() < 28) throw InputError(path + ": " + std::to_string(bytes.size()) + " bytes, too short for a llama2.c header");
  std::int32_t h[7];
  std::memcpy(h, bytes.data(), sizeof(h));
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -h[5];
  c.seq_len = h[6];
  // Bound every field before any size arithmetic, so a lying header cannot overflow it.
  for (int i = 0; i < 7; ++i) {
    const std::int64_t v = i == 5 ? std::abs(static_cast<std::int64_t>(h[5])) : h[i];
    if (v <= 0 || v > (1 << 20))
      throw InputError(path + ": header field " + std::to_string(i) + " = " + std::to_string(h[i]) +
                       " is out of range; is this a llama2.c .bin model?");
  }
  c.validate(path);
  Transformer model(c);
  const std::int64_t head = c.headDim();
  const std::int64_t expected_floats =
      static_cast<std::int64_t>(c.vocab_size) * c.dim +
      static_cast<std::int64_t>(c.n_layers) * (2 * c.dim + 2 * static_cast<std::int64_t>(c.dim) * c.dim +
                                               2 * static_cast<std::int64_t>(c.n_kv_heads) * head * c.dim +
                                               3 * static_cast<std::int64_t>(c.dim) * c.hidden_dim) +
      c.dim + static_cast<std::int64_t>(c.seq_len) * head + (c.tied ? 0 : static_cast<std::int64_t>(c.vocab_size) * c.dim);
  const std::int64_t expected = 28 + 4 * expected_floats;
  if (static_cast<std::int64_t>(bytes.size()) != expected)
    throw InputError(path + ": " + std::to_string(bytes.size()) + " bytes, but its header (" + c.describe() +
                     ") needs " + std::to_string(expected));

  torch::NoGradGuard no_grad;
  std::size_t at = 28;
  auto fill = [&](torch::Tensor dst) {
    const std::size_t n = static_cast<std::size_t>(dst.numel()) * 4;
    std::memcpy(dst.data_ptr<float>(), bytes.data() + at, n);
    at += n;
  };
  fill(param(model, "tok_embeddings.weight"));
  for (const char* what : kLayerOrder)
    for (int l = 0; l < c.n_layers; ++l) fill(param(model, layerParam(l, what)));
  fill(param(model, "norm.weight"));
  at += static_cast<std::size_t>(c.seq_len) * head * 4;  // legacy freq_cis tables
  if (!c.tied) fill(param(model, "output.weight"));
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
  put(param(model, "tok_embeddings.weight"));
  for (const char* what : kLayerOrder)
    for (int l = 0; l < c.n_layers; ++l) put(param(model, layerParam(l, what)));
  put(param(model, "norm.weight"));
  const int half = c.headDim() / 2;
  auto i = torch::arange(half, torch::kFloat64);
  auto freq = torch::pow(c.rope_theta, -2.0 * i / c.headDim()).to(torch::kFloat32);
  auto angle = torch::outer(torch::arange(c.seq_len, torch::kFloat32), freq);
  put(torch::cos(angle));
  put(torch::sin(angle));
  if (!c.tied) put(param(model, "output.weight"));
  if (!out.flush()) throw Error(path + ": write failed");
}

}  // namespace graft
