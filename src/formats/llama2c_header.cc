#include "formats/llama2c_header.h"

#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace graft {

std::vector<Llama2cTensor> llama2cTensors(const ModelConfig& c) {
  const std::int64_t dim = c.dim, hidden = c.hidden_dim, kv = static_cast<std::int64_t>(c.n_kv_heads) * c.headDim();
  const std::pair<const char*, std::vector<std::int64_t>> per_layer[] = {
      {"attention_norm", {dim}},         {"attention.wq", {dim, dim}},       {"attention.wk", {kv, dim}},
      {"attention.wv", {kv, dim}},       {"attention.wo", {dim, dim}},       {"ffn_norm", {dim}},
      {"feed_forward.w1", {hidden, dim}}, {"feed_forward.w2", {dim, hidden}}, {"feed_forward.w3", {hidden, dim}}};
  std::vector<Llama2cTensor> out{{"tok_embeddings.weight", {c.vocab_size, dim}}};
  for (const auto& [what, shape] : per_layer)  // all layers of one kind, then the next kind
    for (int l = 0; l < c.n_layers; ++l) out.push_back({"layers." + std::to_string(l) + "." + what + ".weight", shape});
  out.push_back({"norm.weight", {dim}});
  if (!c.tied) out.push_back({"output.weight", {c.vocab_size, dim}});
  return out;
}

std::uint64_t llama2cFileBytes(const ModelConfig& c) {
  // One layer's tensors times n_layers: listing every layer's names for a header that claims 2^20
  // layers took 2.3 GB (the fuzzer's out-of-memory).
  ModelConfig one = c;
  one.n_layers = 1;
  std::uint64_t floats = static_cast<std::uint64_t>(c.seq_len) * static_cast<std::uint64_t>(c.headDim());  // rotary tables
  for (const auto& t : llama2cTensors(one)) {
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<std::uint64_t>(d);
    floats += t.name.rfind("layers.", 0) == 0 ? n * static_cast<std::uint64_t>(c.n_layers) : n;
  }
  return kLlama2cHeaderBytes + 4 * floats;
}

ModelConfig parseLlama2cHeader(const std::string& header, std::uint64_t file_size, const std::string& path) {
  if (header.size() < kLlama2cHeaderBytes || file_size < kLlama2cHeaderBytes)
    throw InputError(path + ": " + std::to_string(file_size) + " bytes, too short for a llama2.c header");
  std::int32_t h[7];
  std::memcpy(h, header.data(), sizeof(h));
  // Bound every field before any size arithmetic, so a lying header cannot overflow it: with all
  // fields <= 2^20 the byte count stays far below 2^64.
  for (int i = 0; i < 7; ++i) {
    const std::int64_t v = i == 5 ? std::llabs(static_cast<std::int64_t>(h[5])) : h[i];
    if (v <= 0 || v > (1 << 20))
      throw InputError(path + ": header field " + std::to_string(i) + " = " + std::to_string(h[i]) +
                       " is out of range; is this a llama2.c .bin model?");
  }
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied = h[5] > 0;  // a negative vocabulary size means an untied classifier follows
  c.vocab_size = h[5] > 0 ? h[5] : -h[5];
  c.seq_len = h[6];
  c.validate(path);
  const std::uint64_t expected = llama2cFileBytes(c);
  if (file_size != expected)
    throw InputError(path + ": " + std::to_string(file_size) + " bytes, but its header (" + c.describe() + ") needs " +
                     std::to_string(expected));
  return c;
}

}  // namespace graft
