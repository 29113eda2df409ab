// CRC-32 (zlib's polynomial) of a byte range: the per-tensor checksum in checkpoint manifests.
#pragma once

#include <cstddef>
#include <cstdint>

namespace graft {
std::uint32_t crc32(const void* data, std::size_t bytes);
}  // namespace graft
