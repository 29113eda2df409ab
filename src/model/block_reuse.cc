#include "model/block_reuse.h"

#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>
#include <torch/version.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

namespace graft {
namespace {

std::size_t readHugePageBytes() {
  std::ifstream enabled("/sys/kernel/mm/transparent_hugepage/enabled");
  std::ifstream size("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
  std::string mode;
  std::size_t bytes = 0;
  if (!std::getline(enabled, mode) || mode.find("[never]") != std::string::npos || !(size >> bytes)) return 0;
  return bytes == kHugePageBytes ? bytes : 0;  // 4 KiB pages; with 16 or 64 KiB a huge page is 32 or 512 MiB
}

}  // namespace

std::size_t hugePageBytes() {
  static const std::size_t bytes = readHugePageBytes();
  return bytes;
}

namespace {

class ReuseAllocator final : public c10::Allocator {
 public:
  explicit ReuseAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(std::size_t n) override { return make(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
#else
  c10::DataPtr allocate(std::size_t n) const override { return make(n); }
#endif
  // LibTorch frees raw_allocate()'s blocks (oneDNN's scratch, for one) through this, small ones too.
  c10::DeleterFnPtr raw_deleter() const override { return &ReuseAllocator::release; }

  void setLimit(std::size_t limit) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = limit;
    while (kept_ > limit_) giveBackOldest();
  }

  BlockReuseStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {requests_, reused_, static_cast<std::int64_t>(kept_), static_cast<std::int64_t>(limit_),
            static_cast<std::int64_t>(live_), static_cast<std::int64_t>(peak_live_)};
  }

  void resetPeak() {
    std::lock_guard<std::mutex> lock(mu_);
    peak_live_ = live_;
  }

  static ReuseAllocator*& instance() {
    static ReuseAllocator* the = nullptr;
    return the;
  }

 private:
  using FreeList = std::list<std::pair<std::size_t, void*>>;  // oldest first

  c10::DataPtr make(std::size_t n) const {
    if (n < kMinBlockBytes) return fallback_->allocate(n);
    const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    const std::size_t bytes = (n + page - 1) / page * page;
    void* p = const_cast<ReuseAllocator*>(this)->take(bytes);
    return {p, p, &ReuseAllocator::release, c10::Device(c10::DeviceType::CPU)};
  }

  void* take(std::size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++requests_;
      live_ += bytes;
      peak_live_ = std::max(peak_live_, live_);
      const auto it = by_size_.find(bytes);
      if (it != by_size_.end()) {
        void* p = it->second->second;
        free_.erase(it->second);
        by_size_.erase(it);
        kept_ -= bytes;
        ++reused_;
        return p;
      }
      // Kept blocks never take the process above the most it had in use at once: a new block
      // first gives back the longest unused ones that would (they are of other sizes).
      while (kept_ > 0 && live_ + kept_ > peak_live_) giveBackOldest();
    }
    void* p = mapBlock(bytes);
    if (p == MAP_FAILED) {  // what is kept may be what is missing
      giveBackAll();
      p = mapBlock(bytes);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (p == MAP_FAILED) {
      live_ -= bytes;
      TORCH_CHECK(false, "graft: out of memory: cannot map a block of ", bytes, " bytes");
    }
    size_of_[p] = bytes;
    return p;
  }

  // Note [huge pages for large blocks]: a block of a huge page or more starts on a huge-page
  // boundary and asks for transparent huge pages, so the kernel faults it in 2 MiB at a time.
  static void* mapBlock(std::size_t bytes) {
    constexpr int kProt = PROT_READ | PROT_WRITE, kFlags = MAP_PRIVATE | MAP_ANONYMOUS;
    const std::size_t huge = hugePageBytes();
    if (huge == 0 || bytes < huge) return mmap(nullptr, bytes, kProt, kFlags, -1, 0);
    const std::size_t mapped = bytes + huge;  // room to move the start onto a boundary
    void* m = mmap(nullptr, mapped, kProt, kFlags, -1, 0);
    if (m == MAP_FAILED) return m;
    char* const begin = static_cast<char*>(m);
    char* const p = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(begin) + huge - 1) / huge * huge);
    const std::size_t head = static_cast<std::size_t>(p - begin), tail = mapped - head - bytes;  // tail >= 1 page
    if ((head > 0 && munmap(begin, head) != 0) || munmap(p + bytes, tail) != 0) {
      // Splitting a mapping can fail (vm.max_map_count): give it all back and map it plainly.
      munmap(begin, mapped);
      return mmap(nullptr, bytes, kProt, kFlags, -1, 0);
    }
    madvise(p, bytes, MADV_HUGEPAGE);  // only a hint: without it the block is still whole and usable
    return p;
  }

  void giveBackAll() {
    std::lock_guard<std::mutex> lock(mu_);
    while (kept_ > 0) giveBackOldest();
  }

  static void release(void* p) { instance()->keep(p); }

  void keep(void* p) {
    std::unique_lock<std::mutex> lock(mu_);
    const auto it = size_of_.find(p);
    if (it == size_of_.end()) {  // a small block: the allocator it came from frees it
      lock.unlock();
      fallback_->raw_deleter()(p);
      return;
    }
    const std::size_t bytes = it->second;
    live_ -= bytes;
    if (bytes > limit_) {
      size_of_.erase(p);
      munmap(p, bytes);
      return;
    }
    while (kept_ + bytes > limit_) giveBackOldest();
    free_.emplace_back(bytes, p);
    by_size_.emplace(bytes, std::prev(free_.end()));
    kept_ += bytes;
  }

  void giveBackOldest() {  // mu_ held
    const auto [bytes, p] = free_.front();
    for (auto it = by_size_.find(bytes); it != by_size_.end() && it->first == bytes; ++it)
      if (it->second == free_.begin()) {
        by_size_.erase(it);
        break;
      }
    free_.pop_front();
    size_of_.erase(p);
    munmap(p, bytes);
    kept_ -= bytes;
  }

  c10::Allocator* fallback_;
  std::mutex mu_;
  std::unordered_map<void*, std::size_t> size_of_;  // every block of ours, in use or kept
  FreeList free_;
  std::multimap<std::size_t, FreeList::iterator> by_size_;
  std::size_t kept_ = 0, limit_ = 0;
  std::size_t live_ = 0, peak_live_ = 0;  // bytes of our blocks in use: now, and the most so far
  std::int64_t requests_ = 0, reused_ = 0;
};

}  // namespace

void reuseLargeCpuBlocks(std::size_t limit_bytes) {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: blocks it handed out may be freed during static destruction.
    ReuseAllocator::instance() = new ReuseAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(ReuseAllocator::instance(), /*priority=*/100);
  });
  ReuseAllocator::instance()->setLimit(limit_bytes);
}

void resetBlockReusePeak() {
  if (ReuseAllocator::instance()) ReuseAllocator::instance()->resetPeak();
}

BlockReuseStats blockReuseStats() {
  return ReuseAllocator::instance() ? ReuseAllocator::instance()->stats() : BlockReuseStats{};
}

}  // namespace graft
