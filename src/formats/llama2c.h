// llama2.c checkpoints ("version 0": 7-int header, then float32 arrays; see
// ../shared/data/llama2c/FORMAT.md). The rotary pairing of llama2.c is graft's, so no permutation.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "model/transformer.h"
#include "util/files.h"

namespace graft {

// A llama2.c file read row range by row range: the header is checked against the file size on
// open, then only the bytes asked for are read (a sharded run's rank reads its own rows).
class Llama2cFile {
 public:
  static Llama2cFile open(const std::string& path);
  const ModelConfig& config() const { return config_; }
  const std::string& path() const { return file_.path(); }
  // Rows [begin, end) of tensor `name` (graft's names, llama2cTensors) into `out`, which holds
  // that many rows' floats. InputError naming the file for an unknown tensor or rows outside it.
  void readRows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const;

 private:
  struct Where {
    std::uint64_t offset = 0;
    std::int64_t rows = 0, row_floats = 0;
  };
  ReadOnlyFile file_;
  ModelConfig config_;
  std::map<std::string, Where> tensors_;
};

// Reads the file; throws InputError naming the file and the field/tensor on any inconsistency
// (bad header, truncated or oversized file).
Transformer loadLlama2c(const std::string& path);
// Writes `model` in the same format (legacy RoPE tables included, as run.c expects to skip them).
void saveLlama2c(Transformer& model, const std::string& path);

}  // namespace graft
