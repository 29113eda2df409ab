// The manifest of a checkpoint: one line per tensor written, "object crc32 bytes", stored as the
// file's `manifest` attribute just before complete=1 (docs/checkpoint-format.md). Parsed strictly
// and without torch (libFuzzer target tests/fuzz/checkpoint_manifest_fuzz.cc): a manifest that
// does not parse is damage, never a shorter list of tensors to verify.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace graft {

struct ManifestEntry {
  std::string object;  // HDF5 path, starting with '/'
  std::uint32_t crc32 = 0;
  std::uint64_t bytes = 0;
};

// Throws InputError("<what>: manifest line N: ...") on any malformed line, a duplicate object or
// an empty manifest.
std::vector<ManifestEntry> parseManifest(const std::string& text, const std::string& what);
std::string formatManifestLine(const ManifestEntry& entry);

}  // namespace graft
