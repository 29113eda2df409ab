// Large CPU blocks that LibTorch frees, kept for the next allocation of the same size.
//
// Note [reusing large blocks]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Under dist.shard = parameters a rank allocates and frees the same large blocks over and over:
// each unit's gathered parameters, in forward and again in backward, the concatenated projections,
// the weights' gradients and the packed reduce-scatter buffers, a few hundred MB per block and
// micro-step at 155M parameters. From malloc each such block is a fresh mmap, faulted in page by
// page (each fault zeroes a page and charges it to the memory cgroup) and unmapped again when
// freed; perf on one rank of the 155M Llama at 4 ranks counted 72% of its time in the kernel that
// way and 15% in BLAS. Keeping freed blocks in malloc's heap instead (keepFreedMemory in
// launcher/main.cc) leaves the heap as large as its worst fragmentation, which is what ZeRO-3 exists
// to avoid.
//
// So under parameters LibTorch's CPU allocator is replaced by one that serves blocks of
// kMinBlockBytes and more from mmap itself and, when one is freed, keeps it (its pages stay
// faulted in) for the next request of exactly its size, rounded up to whole pages. The units of a
// model repeat the same shapes, so nearly every request finds one. What it keeps is bounded: at
// most `limit` bytes of free blocks, the longest unused given back first; a block larger than the
// limit goes back at once. Smaller requests go to the allocator it replaced. Values are never
// touched: results are the same bits.
//
// Note [huge pages for large blocks]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A kept block is reused only by a request of its exact size, and what is kept is bounded, so at
// 155M parameters about 40% of the large requests still map a new block: 1.7 GB per rank and
// optimizer step at accumulation 4. Faulted in 4 KiB at a time that costs 0.43 s per GiB on this
// machine (each fault zeroes a page and charges it to the memory cgroup), about 1.4 s of a 9.8 s
// step on 4 ranks sharing 2 cores. A block of kHugePageBytes or more is therefore mapped to start
// on a 2 MiB boundary (2 MiB more is mapped and the ends unmapped: recent kernels align only sizes
// that are whole multiples, older ones none) and marked MADV_HUGEPAGE: faulted 2 MiB at a time it
// costs 0.037 s per GiB. The blocks measured (gathered units, gradients, packed buffers) are
// written whole, so the bytes resident are the same; a block written only in part can be up to
// 2 MiB more resident per huge page it touches. Where transparent huge pages are off ("never"), or
// a huge page is not 2 MiB (16 or 64 KiB base pages make it 32 or 512 MiB, too coarse to fault in
// at once), blocks are plain mappings as before.
#pragma once

#include <cstddef>
#include <cstdint>

namespace graft {

constexpr std::size_t kMinBlockBytes = std::size_t{1} << 20;
constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;  // x86-64 and arm64 (4 KiB pages)
// kHugePageBytes where the kernel gives transparent huge pages of that size ("always" or
// "madvise"), else 0: large blocks then are plain mappings (Note [huge pages for large blocks]).
std::size_t hugePageBytes();

struct BlockReuseStats {
  std::int64_t requests = 0;      // blocks of kMinBlockBytes and more asked for
  std::int64_t reused = 0;        // of which served from a kept block
  std::int64_t kept_bytes = 0;    // free blocks kept now
  std::int64_t limit_bytes = 0;
  std::int64_t live_bytes = 0;       // blocks in use now
  std::int64_t peak_live_bytes = 0;  // the most in use at once so far
};

// Makes LibTorch's CPU allocations of kMinBlockBytes and more reuse freed blocks, keeping at most
// `limit_bytes` of free ones. The first call installs it for the rest of the process; later calls
// change the limit (giving back what is over it). Tensors allocated before keep their own deleters.
void reuseLargeCpuBlocks(std::size_t limit_bytes);
BlockReuseStats blockReuseStats();
// The most in use at once counts from now on (what a test measures across one phase); kept blocks
// above it are given back as new ones are mapped.
void resetBlockReusePeak();

}  // namespace graft
