// safetensors reader/writer: the real tiny-random-gpt2 file checked against an independent Python
// (stdlib) parse, bitwise round trips, half/bf16 bit patterns, sharded folders, and one hostile
// file per validation rule.
#include "formats/safetensors.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>

#include "util/error.h"
#include "util/files.h"
#include "unit_util.h"

namespace graft {
namespace {

const std::string kGpt2 = std::string(GRAFT_SHARED_DATA) + "/hf/tiny-random-gpt2/model.safetensors";

std::string freshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/" + name;
  std::filesystem::remove_all(dir);
  makeDirectories(dir);
  return dir;
}

void writeText(const std::string& path, const std::string& text) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  std::fwrite(text.data(), 1, text.size(), f);
  std::fclose(f);
}

std::uint32_t bitsOf(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float fromBits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

template <typename T>
StTensorOut out(const std::string& name, StDType dtype, std::vector<std::int64_t> shape, const std::vector<T>& v) {
  return {name, dtype, std::move(shape), v.data(), v.size() * sizeof(T)};
}

TEST(Safetensors, ReadsHuggingFaceGpt2) {
  const SafetensorsFile f = SafetensorsFile::open(kGpt2);
  EXPECT_EQ(f.path(), kGpt2);
  ASSERT_EQ(f.tensors().size(), 64u);
  ASSERT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.metadata()[0], (std::pair<std::string, std::string>("format", "pt")));
  EXPECT_EQ(f.tensors()[0].name, "transformer.h.0.attn.c_attn.bias");
  EXPECT_EQ(f.tensors()[63].name, "transformer.wte.weight");

  const StTensorInfo* w = f.find("transformer.h.0.attn.c_attn.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, StDType::F32);
  EXPECT_EQ(w->shape, (std::vector<std::int64_t>{32, 96}));
  EXPECT_EQ(w->begin, 384u);
  EXPECT_EQ(w->end, 12672u);
  EXPECT_EQ(w->numel(), 3072);
  const StTensorInfo* wte = f.find("transformer.wte.weight");
  ASSERT_NE(wte, nullptr);
  EXPECT_EQ(wte->shape, (std::vector<std::int64_t>{1000, 32}));
  EXPECT_EQ(f.find("transformer.h.5.ln_1.weight"), nullptr);

  // Independent reference: Python's struct + json, printing the count, the sum, then every value.
  const std::string name = "transformer.h.0.attn.c_attn.weight";
  std::istringstream ref(runCommand(
      GRAFT_PYTHON " -c 'import json, struct, sys\n"
      "b = open(sys.argv[1], \"rb\").read(); n = struct.unpack(\"<Q\", b[:8])[0]\n"
      "s, e = json.loads(b[8:8 + n])[sys.argv[2]][\"data_offsets\"]\n"
      "v = struct.unpack(\"<%df\" % ((e - s) // 4), b[8 + n + s:8 + n + e])\n"
      "print(len(v), repr(sum(v)))\n"
      "[print(repr(x)) for x in v]' '" + kGpt2 + "' " + name));
  std::size_t count = 0;
  std::string sum_text;
  ref >> count >> sum_text;
  const std::vector<float> values = f.readFloat32(name);
  ASSERT_EQ(values.size(), 3072u);
  ASSERT_EQ(count, values.size());
  double sum = 0;
  for (float v : values) sum += v;  // same order as Python's sum, so the same double
  EXPECT_EQ(sum, std::strtod(sum_text.c_str(), nullptr));
  for (std::size_t i = 0; i < count; ++i) {
    std::string text;
    ref >> text;
    ASSERT_EQ(values[i], static_cast<float>(std::strtod(text.c_str(), nullptr))) << "value " << i;
  }
  EXPECT_NE(values[0], 0.0f);

  const std::string raw = f.readRaw(name);
  ASSERT_EQ(raw.size(), 12288u);
  EXPECT_EQ(std::memcmp(raw.data(), values.data(), raw.size()), 0);
}

TEST(Safetensors, FolderWithOneFile) {
  const std::string dir = std::string(GRAFT_SHARED_DATA) + "/hf/tiny-random-gpt2";
  for (const std::string& where : {dir, kGpt2}) {
    const SafetensorsFolder folder = SafetensorsFolder::open(where);
    const std::vector<std::string> names = folder.names();
    ASSERT_EQ(names.size(), 64u);
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    EXPECT_EQ(folder.fileOf("transformer.wpe.weight"), kGpt2);
    EXPECT_EQ(folder.info("transformer.wpe.weight").shape, (std::vector<std::int64_t>{512, 32}));
    EXPECT_EQ(folder.readFloat32("transformer.ln_f.weight").size(), 32u);
    try {
      folder.info("lm_head.weight");
      ADD_FAILURE() << "no error";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("tiny-random-gpt2"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("lm_head.weight"), std::string::npos) << e.what();
    }
  }
}

TEST(Safetensors, WriteReadRoundTripIsBitwise) {
  const std::string dir = freshDir("st_roundtrip");
  const std::vector<float> f32 = {1.0f, -2.5f, 3.14159265f, 1e-40f, -0.0f,
                                  std::numeric_limits<float>::infinity(), 65504.0f};
  const std::vector<std::uint16_t> f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0x8000};
  const std::vector<std::uint16_t> bf16 = {0x3F80, 0xC020, 0x7F7F, 0x0001, 0xFF80, 0x4049};
  const std::vector<double> f64 = {0.1, -1e300, 1e-300};
  const std::vector<std::int64_t> i64 = {-1, 1LL << 40};
  const std::vector<std::uint8_t> empty;
  const std::string path = dir + "/rt.safetensors";
  writeSafetensors(path,
                   {out("w.f32", StDType::F32, {7}, f32), out("w.f16", StDType::F16, {2, 3}, f16),
                    out("w.bf16", StDType::BF16, {3, 1, 2}, bf16), out("w.f64", StDType::F64, {3}, f64),
                    out("ids", StDType::I64, {2}, i64), out("none", StDType::U8, {0, 5}, empty)},
                   {{"format", "pt"}, {"note", "line\n\"two\""}});
  EXPECT_FALSE(fileExists(path + ".tmp"));

  const SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 6u);
  EXPECT_EQ(f.tensors()[1].name, "w.f16");  // given order kept
  EXPECT_EQ(f.tensors()[1].shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(f.metadata()[1].second, "line\n\"two\"");
  auto bytesOf = [](const auto& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0]));
  };
  EXPECT_EQ(f.readRaw("w.f32"), bytesOf(f32));
  EXPECT_EQ(f.readRaw("w.f16"), bytesOf(f16));
  EXPECT_EQ(f.readRaw("w.bf16"), bytesOf(bf16));
  EXPECT_EQ(f.readRaw("ids"), bytesOf(i64));
  EXPECT_EQ(f.readRaw("none"), "");
  const std::vector<float> r32 = f.readFloat32("w.f32");
  for (std::size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(bitsOf(r32[i]), bitsOf(f32[i]));
  const std::vector<float> r16 = f.readFloat32("w.f16");
  for (std::size_t i = 0; i < f16.size(); ++i) EXPECT_EQ(floatToHalf(r16[i]), f16[i]);
  const std::vector<float> rb = f.readFloat32("w.bf16");
  for (std::size_t i = 0; i < bf16.size(); ++i) EXPECT_EQ(floatToBf16(rb[i]), bf16[i]);
  const std::vector<float> r64 = f.readFloat32("w.f64");
  EXPECT_EQ(r64[0], 0.1f);
  EXPECT_EQ(r64[1], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(r64[2], 0.0f);
  EXPECT_THROW(f.readFloat32("ids"), InputError);
  EXPECT_THROW(f.readRaw("absent"), InputError);

  // The layout the reference (Rust) reader demands, checked by an independent parse: 8-aligned
  // space-padded header, tensors back to back in header order, covering the data exactly.
  const std::string check = runCommand(
      GRAFT_PYTHON " -c 'import json, struct, sys\n"
      "b = open(sys.argv[1], \"rb\").read(); n = struct.unpack(\"<Q\", b[:8])[0]\n"
      "h = json.loads(b[8:8 + n]); m = h.pop(\"__metadata__\"); at = 0\n"
      "assert n % 8 == 0 and b[8:8 + n].decode().rstrip(\" \").endswith(\"}\")\n"
      "for t in h.values(): assert t[\"data_offsets\"][0] == at; at = t[\"data_offsets\"][1]\n"
      "assert at == len(b) - 8 - n\n"
      "print(\",\".join(h), m[\"note\"] == \"line\\n\\\"two\\\"\")' '" + path + "'");
  EXPECT_EQ(check, "w.f32,w.f16,w.bf16,w.f64,ids,none True\n");

  // Inconsistent input to the writer is an error, and leaves nothing behind.
  EXPECT_THROW(writeSafetensors(dir + "/bad.safetensors", {out("x", StDType::F32, {8}, f32)}), Error);
  EXPECT_THROW(writeSafetensors(dir + "/bad.safetensors", {out("x", StDType::F32, {7}, f32), out("x", StDType::F32, {7}, f32)}), Error);
  EXPECT_FALSE(fileExists(dir + "/bad.safetensors"));
  EXPECT_FALSE(fileExists(dir + "/bad.safetensors.tmp"));
}

TEST(Safetensors, HalfConversionsMatchKnownBits) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(floatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(floatToHalf(-2.5f), 0xC100);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7BFF);           // largest half
  EXPECT_EQ(floatToHalf(65519.996f), 0x7BFF);         // just below the halfway point to 2^16
  EXPECT_EQ(floatToHalf(65520.0f), 0x7C00);           // halfway, ties away to infinity (even)
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(floatToHalf(std::ldexp(1023.0f, -24)), 0x03FF);
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even is 0
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -25) * 1.0000001f), 0x0001);
  EXPECT_EQ(floatToHalf(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 ulps: even is 2
  EXPECT_EQ(floatToHalf(std::ldexp(2047.0f, -25)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie: to even
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie: to even
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  EXPECT_EQ(floatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(floatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(floatToHalf(1e10f), 0x7C00);
  EXPECT_EQ(floatToHalf(inf), 0x7C00);
  EXPECT_EQ(floatToHalf(-inf), 0xFC00);
  EXPECT_EQ(floatToHalf(std::nanf("")) & 0x7E00, 0x7E00);
  EXPECT_EQ(floatToHalf(fromBits(0x7F800001)) & 0x7E00, 0x7E00);  // signalling nan comes back quiet

  EXPECT_EQ(halfToFloat(0x3C00), 1.0f);
  EXPECT_EQ(halfToFloat(0xC100), -2.5f);
  EXPECT_EQ(halfToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(halfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(halfToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(bitsOf(halfToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(halfToFloat(0x7C00), inf);
  EXPECT_EQ(halfToFloat(0xFC00), -inf);
  EXPECT_TRUE(std::isnan(halfToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(halfToFloat(0x7C01)));

  // Every half is exact in float and comes back unchanged (NaNs stay NaN).
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = halfToFloat(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(halfToFloat(floatToHalf(f)))) << h;
      ASSERT_EQ(floatToHalf(f) & 0x8000, h & 0x8000) << h;
    } else {
      ASSERT_EQ(floatToHalf(f), h) << h;
    }
  }
}

TEST(Safetensors, Bf16ConversionsMatchKnownBits) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(floatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(floatToBf16(-2.5f), 0xC020);
  EXPECT_EQ(floatToBf16(3.0e38f), 0x7F62);
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to infinity
  EXPECT_EQ(floatToBf16(fromBits(0x00010000)), 0x0001);                 // smallest subnormal
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);         // tie: to even
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);         // tie: to even
  EXPECT_EQ(floatToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(floatToBf16(inf), 0x7F80);
  EXPECT_EQ(floatToBf16(-inf), 0xFF80);
  EXPECT_EQ(floatToBf16(fromBits(0x7F800001)) & 0x7FC0, 0x7FC0);  // quiet, not rounded to inf
  EXPECT_EQ(floatToBf16(fromBits(0xFFFFFFFF)), 0xFFFF);           // no carry out of a nan
  EXPECT_EQ(bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(bf16ToFloat(0xC020), -2.5f);
  EXPECT_EQ(bf16ToFloat(0x0001), fromBits(0x00010000));
  EXPECT_EQ(bf16ToFloat(0xFF80), -inf);
  EXPECT_TRUE(std::isnan(bf16ToFloat(0x7FC0)));
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = bf16ToFloat(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) ASSERT_TRUE(std::isnan(bf16ToFloat(floatToBf16(f)))) << b;
    else ASSERT_EQ(floatToBf16(f), b) << b;
  }
}

TEST(Safetensors, ShardedFolder) {
  const std::string dir = freshDir("st_sharded");
  const std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {-1};
  const std::vector<std::uint16_t> d = {0x3C00, 0xC000};  // bf16 1, -2
  writeSafetensors(dir + "/model-00001-of-00002.safetensors",
                   {out("a", StDType::F32, {2, 2}, a), out("b", StDType::F32, {2}, b)});
  writeSafetensors(dir + "/model-00002-of-00002.safetensors",
                   {out("d", StDType::F16, {2}, d), out("c", StDType::F32, {1}, c)});
  writeText(dir + "/model.safetensors.index.json",
            R"({"metadata": {"total_size": 32}, "weight_map": {"d": "model-00002-of-00002.safetensors",
              "a": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors",
              "b": "model-00001-of-00002.safetensors"}})");
  for (const std::string& where : {dir, dir + "/model.safetensors.index.json"}) {
    const SafetensorsFolder folder = SafetensorsFolder::open(where);
    EXPECT_EQ(folder.names(), (std::vector<std::string>{"a", "b", "c", "d"}));
    EXPECT_EQ(folder.readFloat32("a"), a);
    EXPECT_EQ(folder.readFloat32("c"), c);
    EXPECT_EQ(folder.readFloat32("d"), (std::vector<float>{1.0f, -2.0f}));
    EXPECT_EQ(folder.info("a").shape, (std::vector<std::int64_t>{2, 2}));
    EXPECT_EQ(folder.info("d").dtype, StDType::F16);
    EXPECT_EQ(folder.fileOf("b"), dir + "/model-00001-of-00002.safetensors");
    EXPECT_EQ(folder.fileOf("c"), dir + "/model-00002-of-00002.safetensors");
    const SafetensorsFolder copy = folder;  // copies share the open shards
    EXPECT_EQ(copy.info("b").shape, (std::vector<std::int64_t>{2}));
    EXPECT_THROW(folder.info("e"), InputError);
  }

  auto indexError = [&](const std::string& weight_map) {
    writeText(dir + "/model.safetensors.index.json", "{\"weight_map\": " + weight_map + "}");
    try {
      SafetensorsFolder::open(dir);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string e = indexError(R"({"a": "model-00001-of-00002.safetensors", "z": "model-00003-of-00003.safetensors"})");
  EXPECT_NE(e.find("model.safetensors.index.json: tensor z: shard model-00003-of-00003.safetensors not found"), std::string::npos) << e;
  e = indexError(R"({"a": "model-00002-of-00002.safetensors"})");
  EXPECT_NE(e.find("tensor a: shard model-00002-of-00002.safetensors has no such tensor"), std::string::npos) << e;
  e = indexError(R"({"a": "../model-00001-of-00002.safetensors"})");
  EXPECT_NE(e.find("tensor a: shard"), std::string::npos) << e;
  e = indexError(R"({"a": 7})");
  EXPECT_NE(e.find("tensor a: expected a string"), std::string::npos) << e;
  writeText(dir + "/model-00002-of-00002.safetensors", "garbage");
  e = indexError(R"({"d": "model-00002-of-00002.safetensors"})");
  EXPECT_NE(e.find("model-00002-of-00002.safetensors: 7 bytes, too short"), std::string::npos) << e;
  EXPECT_THROW(SafetensorsFolder::open(freshDir("st_empty")), InputError);
}

// A file from header text and a data section of `data_bytes` bytes.
std::string stBytes(const std::string& header, std::size_t data_bytes) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  return out + header + std::string(data_bytes, '\x01');
}

std::string errorOf(const std::string& bytes) {
  try {
    const SafetensorsFile f = SafetensorsFile::fromBytes(bytes, "bad.safetensors");
    for (const auto& t : f.tensors()) f.readRaw(t.name);
  } catch (const InputError& e) {
    return e.what();
  }
  return "no error";
}

TEST(Safetensors, HostileFilesAreInputErrorsNamingTheTensor) {
  struct Case {
    std::string header;
    std::size_t data;
    std::string expect;  // a substring of the message
  };
  const std::string good = R"("ok": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
  const Case cases[] = {
      {"{" + good + "}", 8, "no error"},
      {"{" + good + R"(, "e": {"dtype": "U8", "shape": [0, 99999999999999], "data_offsets": [4, 4]}})", 8, "no error"},
      {"[1, 2]", 0, "bad.safetensors header: expected an object, found an array"},
      {R"({"a": )", 0, "bad.safetensors header: invalid JSON at byte 6"},
      {R"({"a": 1})", 0, "bad.safetensors: tensor a: expected an object, found a number"},
      {R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8, "tensor w: no \"dtype\""},
      {R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8, "tensor w: no \"shape\""},
      {R"({"w": {"dtype": "F32", "shape": [2]}})", 8, "tensor w: no \"data_offsets\""},
      {R"({"w": {"dtype": 32, "shape": [2], "data_offsets": [0, 8]}})", 8, "tensor w: dtype: expected a string"},
      {R"({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", 8, "tensor w: shape: expected an array"},
      {R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8, "tensor w: shape: expected an integer"},
      {R"({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})", 8, "tensor w: shape: expected an integer"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": {"0": 8}}})", 8, "tensor w: data_offsets: expected an array"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}})", 9, "tensor w: data_offsets must be [begin, end], found 3"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8e0]}})", 8, "tensor w: data_offsets: expected an integer"},
      {R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", 2, "tensor w: unsupported dtype \"F8_E4M3\""},
      {R"({"w": {"dtype": "F32", "shape": [2, -4], "data_offsets": [0, 8]}})", 8, "tensor w: shape [2, -4] has a negative dimension"},
      {R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8,
       "tensor w: shape [4294967296, 4294967296] F32 overflows a 64-bit byte count"},
      {R"({"w": {"dtype": "F64", "shape": [2305843009213693952], "data_offsets": [0, 8]}})", 8,
       "tensor w: shape [2305843009213693952] F64 overflows"},
      {R"({"w": {"dtype": "F32", "shape": [9223372036854775807], "data_offsets": [0, 8]}})", 8, "tensor w: shape"},
      {R"({"w": {"dtype": "F32", "shape": [1000000000000], "data_offsets": [0, 8]}})", 8,
       "tensor w: data_offsets [0, 8] hold 8 bytes but shape [1000000000000] F32 needs 4000000000000"},
      {R"({"h.0.attn.c_attn.weight": {"dtype": "F32", "shape": [32, 96], "data_offsets": [0, 99]}})", 99,
       "bad.safetensors: tensor h.0.attn.c_attn.weight: data_offsets [0, 99] hold 99 bytes but shape [32, 96] F32 needs 12288"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8, "tensor w: data_offsets [8, 0] are not a byte range"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8, "tensor w: data_offsets [-8, 0] are not a byte range"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 8,
       "tensor w: data_offsets [4, 12] run past the data section's 8 bytes"},
      {R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [18446744073709551608, 0]}})", 8, "tensor w: data_offsets: expected an integer"},
      {"{" + good + R"(, "v": {"dtype": "I16", "shape": [2], "data_offsets": [6, 10]}})", 10,
       "tensor v: data_offsets [6, 10] overlap tensor ok [0, 8]"},
      {R"({"v": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}, "u": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})", 16,
       "tensor u: data_offsets [4, 6] overlap tensor v [0, 16]"},
      {"{" + good + ", " + good + "}", 8, "tensor ok: appears twice in the header"},
      {R"({"__metadata__": {"k": 1}})", 0, "bad.safetensors: __metadata__ key \"k\": expected a string"},
      {R"({"__metadata__": []})", 0, "bad.safetensors: __metadata__: expected an object"},
      {R"({"__metadata__": {}, "__metadata__": {}})", 0, "__metadata__ appears twice"},
      {R"({"a\nb": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}})", 1, "tensor a\\x0ab: unsupported dtype \"Q4\""},
  };
  for (const Case& c : cases) {
    const std::string e = errorOf(stBytes(c.header, c.data));
    EXPECT_NE(e.find(c.expect), std::string::npos) << "header " << c.header << "\nerror: " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    if (c.expect != "no error") {
      EXPECT_EQ(e.rfind("bad.safetensors", 0), 0u) << e;
    }
  }

  // Framing.
  EXPECT_NE(errorOf("abc").find("bad.safetensors: 3 bytes, too short"), std::string::npos);
  EXPECT_NE(errorOf(stBytes("{}", 0).substr(0, 9)).find("header length 2 runs past the end of the file (9 bytes)"), std::string::npos);
  std::string huge = stBytes("{}", 0);
  huge[7] = '\x7f';  // length 2^63-ish
  EXPECT_NE(errorOf(huge).find("is over the 100000000-byte limit"), std::string::npos) << errorOf(huge);
  huge = stBytes("{}", 0);
  huge[3] = '\x10';  // 256 MiB + 2: over the limit, and longer than the file
  EXPECT_NE(errorOf(huge).find("is over the 100000000-byte limit"), std::string::npos);
  const std::string many = "{\"a\": " + std::string(2'000'001, '[');  // each '[' opens a value
  EXPECT_NE(errorOf(stBytes(many, 0)).find("header holds over 2000000 JSON values"), std::string::npos);
  EXPECT_EQ(errorOf(stBytes("  {}  ", 0)), "no error");

  // readFloat32 refuses integer tensors by name.
  const SafetensorsFile ints = SafetensorsFile::fromBytes(stBytes(R"({"ids": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})", 8), "ints");
  try {
    ints.readFloat32("ids");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "ints: tensor ids: dtype I32 is not a floating-point type");
  }
}

TEST(Safetensors, TruncatedOrMissingFiles) {
  const std::string dir = freshDir("st_truncated");
  const std::string whole = readFile(kGpt2);
  const std::string cut = dir + "/cut.safetensors";
  writeText(cut, whole.substr(0, whole.size() - 100));
  try {
    SafetensorsFile::open(cut);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(cut + ": tensor transformer.wte.weight: data_offsets [319872, 447872] run past"),
              std::string::npos) << e.what();
  }
  writeText(cut, whole.substr(0, 1000));
  EXPECT_THROW(SafetensorsFile::open(cut), InputError);
  EXPECT_THROW(SafetensorsFile::open(dir + "/missing.safetensors"), InputError);
  EXPECT_THROW(SafetensorsFile::open(dir), InputError);
}

}  // namespace
}  // namespace graft
