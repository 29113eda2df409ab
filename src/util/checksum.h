// Checksums of byte ranges: CRC-32 (zlib's polynomial), the per-tensor checksum in checkpoint
// manifests; CRC-32C (Castagnoli), the record checksum of TensorBoard's TFRecord files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace graft {
std::uint32_t crc32(const void* data, std::size_t bytes);
// The CRC-32 of A followed by B from crc32(A), crc32(B) and B's length (zlib's crc32_combine): a
// tensor written in parts by several ranks gets the checksum of its whole bytes.
std::uint32_t crc32Combine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t bytes_b);
// CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected; crc32c("123456789") = 0xE3069283).
std::uint32_t crc32c(const void* data, std::size_t bytes);
}  // namespace graft
