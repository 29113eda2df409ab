// safetensors files (the Hugging Face weight format), read and written without torch: an 8-byte
// little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {string: string}}, then the data section. Also a Hugging Face folder's weights, one file or
// shards listed by model.safetensors.index.json.
//
// Hostile files are expected (libFuzzer target tests/fuzz/safetensors_fuzz.cc): the whole header is
// validated before any tensor is read, sizes use checked 64-bit math, and every error is an
// InputError of one line naming the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace graft {

enum class StDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };
const char* stDTypeName(StDType dtype);  // as spelled in the format: "F32", "BF16", ...
std::size_t stDTypeSize(StDType dtype);  // bytes per element

struct StTensorInfo {
  std::string name;
  StDType dtype = StDType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range inside the data section
  std::int64_t numel() const;        // throws Error if the shape overflows 64 bits
};

class SafetensorsFile {
 public:
  // Reads and validates the header; tensor data is read on demand (pread on a held descriptor).
  static SafetensorsFile open(const std::string& path);
  // Validates a whole in-memory file (the fuzzer, tests); `what` names it in errors.
  static SafetensorsFile fromBytes(std::string bytes, const std::string& what);

  const std::string& path() const { return path_; }
  const std::vector<StTensorInfo>& tensors() const { return tensors_; }  // in header order
  const StTensorInfo* find(const std::string& name) const;               // nullptr if absent
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }

  // The tensor's bytes as stored (little endian). Throws InputError for an unknown name.
  std::string readRaw(const std::string& name) const;
  // F32, F16, BF16 exactly, F64 rounded to nearest; any other dtype throws InputError.
  std::vector<float> readFloat32(const std::string& name) const;
  // Rows [begin, end) of the tensor (dim 0; a 0-d tensor is one row) into `out`, which holds
  // that many rows' elements: only those bytes are read.
  void readFloat32Rows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const;
  // Columns [begin, end) of every row of a 2-D tensor into `out` ([rows, end - begin], row-major):
  // only those bytes are read (a tensor stored transposed, as GPT-2's Conv1D weights are, read
  // by graft's rows).
  void readFloat32Columns(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const;
  // Bytes of tensor data read from this file so far (all reads, all threads).
  std::uint64_t bytesRead() const;

 private:
  struct Source;  // the held file or the in-memory bytes
  static SafetensorsFile parse(std::shared_ptr<const Source> source, std::uint64_t file_size,
                               const std::string& what);
  const StTensorInfo& get(const std::string& name) const;
  const StTensorInfo& floatTensor(const std::string& name) const;  // get(), refusing other dtypes

  std::string path_;
  std::vector<StTensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::uint64_t data_start_ = 0;  // file offset of the data section
  std::shared_ptr<const Source> source_;
};

struct StTensorOut {
  std::string name;
  StDType dtype;
  std::vector<std::int64_t> shape;
  const void* data;  // numel * itemsize bytes, little endian
  std::size_t bytes;
};

// Writes `path` + ".tmp" and publishes it with publishFile(), so a crash never leaves a half file
// under `path`. The header is padded with spaces to a multiple of 8, so the data section is
// 8-aligned; tensors follow in the given order with no gaps between them, as the reference
// reader (Rust safetensors) requires. Throws Error for an inconsistent tensor or a failed write.
void writeSafetensors(const std::string& path, const std::vector<StTensorOut>& tensors,
                      const std::vector<std::pair<std::string, std::string>>& metadata = {});

// A Hugging Face folder's weights: model.safetensors, or model.safetensors.index.json whose
// "weight_map" maps each tensor to its shard file. Every shard's header is validated on open.
class SafetensorsFolder {
 public:
  // A folder, a .safetensors file, or a .index.json file.
  static SafetensorsFolder open(const std::string& folder_or_file);

  std::vector<std::string> names() const;  // all tensors, sorted
  // Throws InputError naming the folder and the tensor when absent.
  const StTensorInfo& info(const std::string& name) const;
  std::vector<float> readFloat32(const std::string& name) const;
  void readFloat32Rows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const;
  void readFloat32Columns(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const;
  std::uint64_t bytesRead() const;  // of all its shards
  std::string fileOf(const std::string& name) const;  // path of the shard holding `name`

 private:
  struct Where {
    std::size_t shard;
    const StTensorInfo* info;  // into *shards_[shard], shared and never changed, so copies stay valid
  };
  const Where& where(const std::string& name) const;

  std::string what_;  // the folder or index file, for errors
  std::vector<std::shared_ptr<const SafetensorsFile>> shards_;
  std::unordered_map<std::string, Where> tensors_;
};

// IEEE half and bfloat16 conversions. To float is exact; from float rounds to nearest even,
// overflows to infinity, and keeps infinities and NaNs (NaNs come back quiet).
float halfToFloat(std::uint16_t h);
float bf16ToFloat(std::uint16_t b);
std::uint16_t floatToHalf(float f);
std::uint16_t floatToBf16(float f);

}  // namespace graft
