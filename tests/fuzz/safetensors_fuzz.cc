// libFuzzer target: SafetensorsFile::fromBytes (src/formats/safetensors.cc) on arbitrary bytes. Beyond
// what the sanitizers catch, a file either parses and every tensor reads back at its declared
// size (float dtypes through readFloat32 too, F32 bit for bit), or fails with a one-line
// graft::Error naming the input; anything else escaping (bad_alloc included) is a finding. Seeds:
// corpus/safetensors/, tiny valid files written with Python's struct and json.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "formats/safetensors.h"
#include "util/error.h"

namespace {

void check(bool ok, const char* what, const std::string& detail = "") {
  if (ok) return;
  std::fprintf(stderr, "fuzz check failed: %s %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using graft::StDType;
  try {
    const graft::SafetensorsFile f =
        graft::SafetensorsFile::fromBytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz.safetensors");
    for (const graft::StTensorInfo& t : f.tensors()) {
      check(f.find(t.name) == &t, "find() gives the listed tensor", t.name);
      const std::size_t numel = static_cast<std::size_t>(t.numel());
      const std::string raw = f.readRaw(t.name);
      check(raw.size() == numel * graft::stDTypeSize(t.dtype), "readRaw size is numel * itemsize", t.name);
      if (t.dtype != StDType::F32 && t.dtype != StDType::F16 && t.dtype != StDType::BF16 && t.dtype != StDType::F64)
        continue;
      const std::vector<float> values = f.readFloat32(t.name);
      check(values.size() == numel, "readFloat32 size is numel", t.name);
      if (t.dtype == StDType::F32 && numel > 0)  // an empty vector's data() may be null
        check(std::memcmp(values.data(), raw.data(), raw.size()) == 0, "F32 read bitwise", t.name);
    }
  } catch (const graft::Error& e) {
    const std::string message = e.what();
    check(message.find('\n') == std::string::npos, "one-line error", message);
    check(message.rfind("fuzz.safetensors", 0) == 0, "error names the input", message);
  }
  return 0;
}
