// libFuzzer target: the llama2.c header parser (src/formats/llama2c_header.cc). The input is the file's
// first bytes; its claimed size is the input size, or, when the input is long enough, a size taken
// from its last 8 bytes (so headers that lie about huge models are reached). Any accepted header
// must describe exactly that many bytes and a valid shape.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "formats/llama2c_header.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::uint64_t file_size = size;
  if (size >= graft::kLlama2cHeaderBytes + 8) std::memcpy(&file_size, data + size - 8, 8);
  try {
    const graft::ModelConfig c = graft::parseLlama2cHeader(input.substr(0, graft::kLlama2cHeaderBytes), file_size, "fuzz.bin");
    if (graft::llama2cFileBytes(c) != file_size) std::abort();
    c.validate("accepted");  // must not throw for an accepted header
  } catch (const graft::Error& e) {
    if (std::strchr(e.what(), '\n')) std::abort();  // errors are one line
  }
  return 0;
}
