// The llama2.c checkpoint header ("version 0": seven int32, then float32 arrays; see
// ../shared/data/llama2c/FORMAT.md), parsed and checked against the file size without torch, so
// the libFuzzer target tests/fuzz/llama2c_header_fuzz.cc can hammer it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"

namespace graft {

constexpr std::size_t kLlama2cHeaderBytes = 28;

// `header` holds the first kLlama2cHeaderBytes bytes (fewer: the file is too short). Every field
// is bounded before any size arithmetic, and the file must hold exactly the tensors the header
// describes. Throws InputError naming `path` and the field or size.
ModelConfig parseLlama2cHeader(const std::string& header, std::uint64_t file_size, const std::string& path);

// The model tensors of a llama2.c file in file order, named as graft names the parameters
// ("layers.3.attention.wq.weight"). The legacy rotary tables, which are not parameters, sit
// between "norm.weight" and "output.weight" (untied models only): seq_len x head_dim floats twice.
struct Llama2cTensor {
  std::string name;
  std::vector<std::int64_t> shape;
};
std::vector<Llama2cTensor> llama2cTensors(const ModelConfig& c);

// Bytes a llama2.c file of this shape has, header and legacy rotary tables included.
std::uint64_t llama2cFileBytes(const ModelConfig& c);

}  // namespace graft
