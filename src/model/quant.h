// Weight quantization for frozen bases (QLoRA-style): a 2-D weight [out, in] held as int8 codes with
// one absmax scale per output row, or as NF4 (the 16 NormalFloat levels of Dettmers et al. 2023,
// as in bitsandbytes) with one absmax per block of consecutive elements. Only the frozen base is
// quantized; adapters and their gradients stay float32, and dequantize() runs on every forward.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace graft {

enum class QuantKind { None, Int8, NF4 };

// "none" | "int8" | "nf4"; anything else throws InputError naming `what` (e.g. the config key).
QuantKind parseQuantKind(const std::string& s, const std::string& what);
const char* quantKindName(QuantKind kind);

// The 16 NF4 levels in ascending order, float32 [16] (bitsandbytes' table: exact -1, 0 and 1).
const torch::Tensor& nf4Levels();

// A frozen 2-D weight [out, in] held quantized; dequantize() rebuilds a float32 tensor of the
// original shape.
struct QuantizedWeight {
  QuantKind kind = QuantKind::None;
  std::vector<std::int64_t> shape;
  // Int8: int8 [out, in], code = round(w / scale) in [-127, 127].
  // NF4: uint8 [ceil(numel / 2)], two 4-bit level indices per byte over the row-major flattened
  //      weight, the even element in the high nibble (bitsandbytes' packing).
  // None: the float32 weight itself.
  torch::Tensor codes;
  // Int8: float32 [out], row absmax / 127. NF4: float32 [ceil(numel / block)], block absmax
  // (the last block may be partial). None: undefined.
  torch::Tensor scales;
  int block = 64;  // NF4 only: elements per scale

  torch::Tensor dequantize() const;
  std::int64_t bytes() const;  // storage actually held (codes + scales)
};

// Quantizes a 2-D floating-point weight (converted to float32 first). Throws Error for a weight that
// is not 2-D or not finite, or a block < 1. All-zero rows (Int8) and blocks (NF4) give zero scales
// and round-trip to exact zeros.
QuantizedWeight quantize(const torch::Tensor& weight, QuantKind kind, int block = 64);

// Element-wise float32 tensor of the weight's shape: the largest |w - dequantize(quantize(w))| the
// format allows. Int8: scale_row / 2 (round to nearest); NF4: half the largest gap between adjacent
// levels times the block absmax; None: 0. Both include a few float32 roundings' worth of slack
// (a relative 2^-21 of the row or block absmax), so it is a true bound, not just the ideal one.
torch::Tensor errorBound(const QuantizedWeight& q);

}  // namespace graft
