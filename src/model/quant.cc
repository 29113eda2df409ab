// Int8 (per-row absmax) and NF4 (per-block absmax, NormalFloat levels) weight quantization.
// Quantizing runs once per frozen weight; dequantizing runs every forward, so it is a handful of
// whole-tensor ops: one gather through a 256-entry table of level pairs and one broadcast multiply.
#include "model/quant.h"

#include <torch/torch.h>

#include <cmath>
#include <map>
#include <mutex>

#include "util/error.h"

namespace graft {

namespace {
// Rounding slack of errorBound(), relative to the row or block absmax: w / scale, the nearest-level
// comparison and code * scale each round once in float32 (2^-24 relative), so 2^-21 covers them.
constexpr double kRoundingSlack = 1.0 / (1 << 21);

std::int64_t numelOf(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// Flat [n] -> [ceil(n / block), block], zero padded: the padding cannot change a block's absmax.
torch::Tensor asBlocks(const torch::Tensor& flat, std::int64_t n, int block) {
  const std::int64_t padded = (n + block - 1) / block * block;
  auto t = padded == n ? flat : torch::constant_pad_nd(flat, {0, padded - n});
  return t.view({padded / block, block});
}

// Dividing by a zero scale would turn an all-zero row or block into NaN codes; dividing by 1 instead
// gives zero codes, and zero scale * anything dequantizes to exact zeros.
torch::Tensor safeDivisor(const torch::Tensor& scale) {
  return torch::where(scale > 0, scale, torch::ones_like(scale));
}

// Row b of the table holds the two levels packed in byte b (high nibble first), so unpacking and
// looking up levels is a single index_select.
const torch::Tensor& nf4PairTable() {
  static const torch::Tensor table = [] {
    auto b = torch::arange(256, torch::kLong);
    return torch::stack({nf4Levels().index_select(0, b.div(16, "floor")), nf4Levels().index_select(0, b.remainder(16))}, 1);
  }();
  return table;
}

// The table on `device`, copied there once (every dequantize() of every projection reads it).
torch::Tensor nf4PairTableOn(const torch::Device& device) {
  if (device.is_cpu()) return nf4PairTable();
  static std::mutex mutex;
  static std::map<std::string, torch::Tensor> copies;
  std::lock_guard<std::mutex> lock(mutex);
  auto& copy = copies[device.str()];
  if (!copy.defined()) copy = nf4PairTable().to(device);
  return copy;
}

// Half the largest gap between adjacent levels (between 0.7230 and 1): the worst nearest-level error.
double nf4HalfGap() {
  static const double half = (nf4Levels().narrow(0, 1, 15) - nf4Levels().narrow(0, 0, 15)).max().item<double>() / 2;
  return half;
}
}  // namespace

QuantKind parseQuantKind(const std::string& s, const std::string& what) {
  if (s == "none") return QuantKind::None;
  if (s == "int8") return QuantKind::Int8;
  if (s == "nf4") return QuantKind::NF4;
  throw InputError(what + ": unknown quantization '" + s + "' (expected none, int8 or nf4)");
}

const char* quantKindName(QuantKind kind) {
  switch (kind) {
    case QuantKind::None: return "none";
    case QuantKind::Int8: return "int8";
    case QuantKind::NF4: return "nf4";
  }
  return "?";
}

const torch::Tensor& nf4Levels() {
  // bitsandbytes' NF4 table (quantiles of N(0, 1) rescaled to [-1, 1], asymmetric so that 0 is exact).
  static const torch::Tensor levels = torch::tensor(
      {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
       -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
       0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
       0.7229568362236023f, 1.0f},
      torch::kFloat32);
  return levels;
}

QuantizedWeight quantize(const torch::Tensor& weight, QuantKind kind, int block) {
  if (weight.dim() != 2) throw Error("quantize: expected a 2-D weight, got " + std::to_string(weight.dim()) + "-D");
  if (!weight.is_floating_point()) throw Error("quantize: expected a floating-point weight");
  if (block < 1) throw Error("quantize: block must be at least 1, got " + std::to_string(block));
  torch::NoGradGuard no_grad;
  auto w = weight.detach().to(torch::kFloat32).contiguous();
  if (!torch::isfinite(w).all().item<bool>()) throw Error("quantize: weight has non-finite values");

  QuantizedWeight q;
  q.kind = kind;
  q.shape = w.sizes().vec();
  q.block = block;
  switch (kind) {
    case QuantKind::None:
      q.codes = w.clone();  // owns its storage, like the quantized kinds
      break;
    case QuantKind::Int8: {
      q.scales = w.abs().amax(1) / 127;
      q.codes = torch::round(w / safeDivisor(q.scales).unsqueeze(1)).clamp(-127, 127).to(torch::kInt8);
      break;
    }
    case QuantKind::NF4: {
      const std::int64_t n = w.numel();
      auto blocks = asBlocks(w.flatten(), n, block);
      q.scales = blocks.abs().amax(1);
      auto x = (blocks / safeDivisor(q.scales).unsqueeze(1)).flatten().narrow(0, 0, n);
      // Nearest level: x lies in (levels[hi - 1], levels[hi]], so only those two are candidates;
      // comparing their float distances (ties to the lower) equals an argmin over all 16.
      const auto levels = nf4Levels().to(x.device());  // the table lives on the CPU; x may not
      auto hi = torch::bucketize(x, levels).clamp(1, 15);
      auto lo = hi - 1;
      auto d_lo = (x - levels.index_select(0, lo)).abs(), d_hi = (x - levels.index_select(0, hi)).abs();
      auto idx = torch::where(d_hi < d_lo, hi, lo).to(torch::kUInt8);
      if (n % 2) idx = torch::constant_pad_nd(idx, {0, 1});
      auto pairs = idx.view({-1, 2});
      q.codes = pairs.select(1, 0) * 16 + pairs.select(1, 1);  // high nibble first, as bitsandbytes
      break;
    }
  }
  return q;
}

torch::Tensor QuantizedWeight::dequantize() const {
  switch (kind) {
    case QuantKind::None: return codes;
    case QuantKind::Int8: return codes.to(torch::kFloat32) * scales.unsqueeze(1);
    case QuantKind::NF4: {
      const std::int64_t n = numelOf(shape);
      auto values = nf4PairTableOn(codes.device()).index_select(0, codes.to(torch::kLong)).view(-1).narrow(0, 0, n);
      return (asBlocks(values, n, block) * scales.unsqueeze(1)).view(-1).narrow(0, 0, n).view(shape);
    }
  }
  throw Error("dequantize: unknown quantization kind");
}

std::int64_t QuantizedWeight::bytes() const {
  std::int64_t total = 0;
  for (const auto* t : {&codes, &scales})
    if (t->defined()) total += t->numel() * static_cast<std::int64_t>(t->element_size());
  return total;
}

torch::Tensor errorBound(const QuantizedWeight& q) {
  switch (q.kind) {
    case QuantKind::None: return torch::zeros(q.shape, torch::TensorOptions(torch::kFloat32).device(q.codes.device()));
    case QuantKind::Int8:
      // scale = absmax / 127, so the slack relative to absmax is 127 * kRoundingSlack of the scale.
      return (q.scales * (0.5 + 127 * kRoundingSlack)).unsqueeze(1).expand(q.shape).contiguous();
    case QuantKind::NF4: {
      const std::int64_t n = numelOf(q.shape);
      auto per_block = q.scales * (nf4HalfGap() + kRoundingSlack);
      return per_block.repeat_interleave(q.block).narrow(0, 0, n).view(q.shape);
    }
  }
  throw Error("errorBound: unknown quantization kind");
}

}  // namespace graft
