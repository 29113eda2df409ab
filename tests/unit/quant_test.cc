// Weight quantization: error within errorBound() on odd shapes, exact round trips of representable
// values, zeros, NF4 codes and values checked against an independent Python (numpy) argmin over the
// level table, storage sizes, and NF4 beating uniform 4-bit absmax quantizers on normal weights.
#include "model/quant.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "util/error.h"
#include "unit_util.h"

namespace graft {
namespace {

// Level indices from packed NF4 codes, high nibble first, trimmed to numel.
std::vector<int> unpackNf4(const QuantizedWeight& q) {
  std::vector<int> out;
  auto c = q.codes.contiguous();
  const auto* p = c.data_ptr<std::uint8_t>();
  for (std::int64_t i = 0; i < c.numel(); ++i) {
    out.push_back(p[i] >> 4);
    out.push_back(p[i] & 15);
  }
  out.resize(q.shape[0] * q.shape[1]);
  return out;
}

TEST(Quant, ParseAndName) {
  for (auto kind : {QuantKind::None, QuantKind::Int8, QuantKind::NF4})
    EXPECT_EQ(parseQuantKind(quantKindName(kind), "x"), kind);
  try {
    parseQuantKind("int4", "model.quantize");
    FAIL() << "no throw";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.quantize"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quantize(torch::ones({4}), QuantKind::Int8), Error);
  EXPECT_THROW(quantize(torch::ones({2, 2}), QuantKind::NF4, 0), Error);
  EXPECT_THROW(quantize(torch::full({2, 2}, NAN), QuantKind::NF4), Error);
}

// Odd shape, numel (37 * 53 = 1961) not a multiple of the block: every error within the bound, and
// the bound not vacuous (int8 rounding errors reach nearly scale / 2 somewhere).
TEST(Quant, ErrorWithinBoundOnRandomWeights) {
  torch::manual_seed(7);
  auto w = torch::randn({37, 53}) * 0.02;
  for (auto kind : {QuantKind::None, QuantKind::Int8, QuantKind::NF4}) {
    for (int block : {64, 16, 7}) {
      SCOPED_TRACE(std::string(quantKindName(kind)) + " block " + std::to_string(block));
      const QuantizedWeight q = quantize(w, kind, block);
      auto d = q.dequantize();
      ASSERT_EQ(d.sizes(), w.sizes());
      ASSERT_EQ(d.scalar_type(), torch::kFloat32);
      auto bound = errorBound(q);
      ASSERT_EQ(bound.sizes(), w.sizes());
      auto err = (w - d).abs();
      EXPECT_TRUE((err <= bound).all().item<bool>()) << "worst excess " << (err - bound).max().item<float>();
      if (kind == QuantKind::Int8) {
        EXPECT_GT((err / bound).max().item<float>(), 0.9);
      } else if (kind == QuantKind::NF4) {
        EXPECT_GT((err / bound).max().item<float>(), 0.3);
      }
    }
  }
  EXPECT_EQ(quantize(w, QuantKind::Int8).codes.scalar_type(), torch::kInt8);
  EXPECT_EQ(quantize(w, QuantKind::NF4).codes.scalar_type(), torch::kUInt8);
  EXPECT_EQ(quantize(w, QuantKind::NF4).codes.numel(), (37 * 53 + 1) / 2);
  EXPECT_EQ(quantize(w, QuantKind::NF4).scales.numel(), (37 * 53 + 63) / 64);
}

// Int8: multiples k * s of a power-of-two row scale s with |k| = 127 present round-trip exactly.
TEST(Quant, Int8RepresentableValuesRoundTripExactly) {
  auto w = torch::empty({5, 9});
  auto a = w.accessor<float, 2>();
  for (int r = 0; r < 5; ++r) {
    const float s = std::ldexp(1.0f, -3 * r);
    for (int c = 0; c < 9; ++c) a[r][c] = static_cast<float>((c * 37 + r * 11) % 255 - 127) * s;
    a[r][4] = (r % 2 ? -127 : 127) * s;
  }
  const QuantizedWeight q = quantize(w, QuantKind::Int8);
  EXPECT_TRUE(torch::equal(q.dequantize(), w));
  EXPECT_TRUE(torch::equal(q.codes.to(torch::kFloat32) * q.scales.unsqueeze(1), w));
}

// NF4: a block whose elements are exactly absmax * level (every level present, so absmax * 1 sets
// the scale) round-trips exactly, with the expected codes; the last block is partial.
TEST(Quant, Nf4RepresentableValuesRoundTripExactly) {
  const auto& levels = nf4Levels();
  ASSERT_EQ(levels.numel(), 16);
  const float absmax[] = {0.37f, 1.5f, 3e-3f, 12.0f, 0.9f, 0.05f};
  const int block = 16;
  auto w = torch::empty({5, 19});  // 95 elements: 5 full blocks and one of 15
  auto flat = w.view(-1);
  std::vector<int> expected;
  for (int i = 0; i < 95; ++i) {
    const int b = i / block, level = (i % block * 5 + b) % 16;  // i * 5 mod 16 permutes the levels
    flat[i] = levels[level].item<float>() * absmax[b];
    expected.push_back(level);
  }
  flat[94] = absmax[5];  // the partial block lacks a level; make sure it holds its absmax
  expected[94] = 15;
  const QuantizedWeight q = quantize(w, QuantKind::NF4, block);
  EXPECT_TRUE(torch::equal(q.dequantize(), w));
  EXPECT_EQ(unpackNf4(q), expected);
}

TEST(Quant, ZerosRoundTripToZeros) {
  for (auto kind : {QuantKind::Int8, QuantKind::NF4}) {
    SCOPED_TRACE(quantKindName(kind));
    auto z = torch::zeros({5, 7});
    const QuantizedWeight q = quantize(z, kind, 8);
    EXPECT_TRUE(torch::equal(q.dequantize(), z));
    EXPECT_TRUE(torch::equal(errorBound(q), z));
    // A zero row (int8) that is also a zero block (nf4, block 8 = one row) among non-zero ones.
    torch::manual_seed(1);
    auto w = torch::randn({4, 8});
    w[2].zero_();
    const QuantizedWeight p = quantize(w, kind, 8);
    auto d = p.dequantize();
    EXPECT_FALSE(torch::isnan(d).any().item<bool>());
    EXPECT_TRUE(torch::equal(d[2], torch::zeros({8})));
    EXPECT_EQ(p.scales[2].item<float>(), 0.0f);
  }
}

// The NF4 codes and values against a reference written here in numpy: per block, absmax, x = b / a,
// argmin over |x - level| (first index on ties), value level * a, all float32.
TEST(Quant, Nf4MatchesIndependentPythonReference) {
  const int block = 16;
  auto w = (torch::sin(torch::arange(7 * 19, torch::kFloat32) * 0.7) *
            (1 + torch::arange(7 * 19, torch::kFloat32).remainder(5)))
               .view({7, 19})
               .contiguous();
  w.view(-1).narrow(0, 32, 16).zero_();  // one all-zero block
  const std::string path = ::testing::TempDir() + "/quant_nf4_weight.f32";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(w.data_ptr<float>()), w.numel() * sizeof(float));
  }
  std::istringstream ref(runCommand(
      GRAFT_PYTHON " -c 'import sys, numpy as np\n"
      "L = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,\n"
      "  -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534,\n"
      "  0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434,\n"
      "  0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)\n"
      "w = np.fromfile(sys.argv[1], dtype=\"<f4\"); B = int(sys.argv[2]); codes = []; vals = []\n"
      "for s in range(0, len(w), B):\n"
      "  b = w[s:s + B]; a = np.abs(b).max()\n"
      "  x = b / a if a > 0 else np.zeros_like(b)\n"
      "  c = np.argmin(np.abs(x[:, None] - L[None, :]), axis=1)\n"
      "  codes += c.tolist(); vals += (L[c] * a).astype(np.float32).tolist()\n"
      "codes += [0] * (len(codes) % 2)\n"
      "print(len(vals)); print(*[codes[i] * 16 + codes[i + 1] for i in range(0, len(codes), 2)])\n"
      "print(*[float(v).hex() for v in vals])' " + path + " " + std::to_string(block)));
  std::size_t n = 0;
  ref >> n;
  ASSERT_EQ(n, 133u);
  const QuantizedWeight q = quantize(w, QuantKind::NF4, block);
  ASSERT_EQ(q.codes.numel(), 67);
  const auto* codes = q.codes.data_ptr<std::uint8_t>();
  for (int i = 0; i < 67; ++i) {
    int byte = -1;
    ref >> byte;
    ASSERT_EQ(codes[i], byte) << "byte " << i;
  }
  auto d = q.dequantize().contiguous();
  const float* v = d.data_ptr<float>();
  int nonzero = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::string text;
    ref >> text;
    ASSERT_EQ(v[i], static_cast<float>(std::strtod(text.c_str(), nullptr))) << "value " << i << " " << text;
    nonzero += v[i] != 0;
  }
  EXPECT_GT(nonzero, 100);
  std::remove(path.c_str());
}

TEST(Quant, StorageBytes) {
  auto w = torch::randn({256, 256});
  EXPECT_EQ(quantize(w, QuantKind::NF4).bytes(), 256 * 256 / 2 + (256 * 256 / 64) * 4);  // 36864
  EXPECT_EQ(quantize(w, QuantKind::NF4, 128).bytes(), 256 * 256 / 2 + (256 * 256 / 128) * 4);
  EXPECT_EQ(quantize(w, QuantKind::Int8).bytes(), 256 * 256 + 256 * 4);
  EXPECT_EQ(quantize(w, QuantKind::None).bytes(), 256 * 256 * 4);
}

// The point of NF4: on normally distributed weights its levels (normal quantiles) give a lower mean
// absolute error than uniform 4-bit grids with the same per-block absmax: symmetric int4 (-7..7)
// and 16 evenly spaced levels on [-1, 1].
TEST(Quant, Nf4BeatsUniform4BitOnNormalWeights) {
  torch::manual_seed(3);
  auto w = torch::randn({256, 256}) * 0.02;
  const int block = 64;
  auto blocks = w.view({-1, block});
  auto a = blocks.abs().amax(1, true);
  auto x = blocks / a;
  auto int4 = torch::round(x * 7).clamp(-7, 7) / 7 * a;
  auto even16 = (torch::round((x + 1) * 7.5) / 7.5 - 1) * a;
  const double mae_int4 = (int4 - blocks).abs().mean().item<double>();
  const double mae_even16 = (even16 - blocks).abs().mean().item<double>();
  const double mae_nf4 = (quantize(w, QuantKind::NF4, block).dequantize() - w).abs().mean().item<double>();
  EXPECT_LT(mae_nf4, mae_int4);
  EXPECT_LT(mae_nf4, mae_even16);
  std::printf("MAE nf4 %.4g, int4 %.4g, 16 even levels %.4g\n", mae_nf4, mae_int4, mae_even16);
}

}  // namespace
}  // namespace graft
