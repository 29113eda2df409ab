#include "io/llama2c_header.h"

#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace graft {

std::uint64_t llama2cFileBytes(const ModelConfig& c) {
  const std::uint64_t dim = static_cast<std::uint64_t>(c.dim), head = static_cast<std::uint64_t>(c.headDim());
  const std::uint64_t kv = static_cast<std::uint64_t>(c.n_kv_heads) * head;
  const std::uint64_t per_layer = 2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * dim * static_cast<std::uint64_t>(c.hidden_dim);
  const std::uint64_t embedding = static_cast<std::uint64_t>(c.vocab_size) * dim;
  const std::uint64_t floats = embedding + static_cast<std::uint64_t>(c.n_layers) * per_layer + dim +
                               static_cast<std::uint64_t>(c.seq_len) * head + (c.tied ? 0 : embedding);
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
