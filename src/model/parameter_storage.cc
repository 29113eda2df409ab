#include "model/parameter_storage.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/StorageImpl.h>

#include "util/error.h"

namespace graft {
namespace {

c10::StorageImpl& storageOf(const at::Tensor& p) { return *p.storage().unsafeGetStorageImpl(); }
std::size_t bytesOf(const at::Tensor& p) { return static_cast<std::size_t>(p.numel()) * p.element_size(); }
thread_local bool without_memory = false;

}  // namespace

bool hasMemory(const at::Tensor& p) { return p.numel() == 0 || storageOf(p).nbytes() >= bytesOf(p); }

void releaseMemory(const at::Tensor& p) {
  auto& s = storageOf(p);
  s.set_data_ptr_noswap(c10::DataPtr(nullptr, p.device()));
  s.set_nbytes(0);
}

at::Tensor refill(const at::Tensor& p) {
  auto& s = storageOf(p);
  const std::size_t bytes = bytesOf(p);
  if (s.nbytes() != bytes) {
    const c10::DeviceGuard on(p.device());  // a GPU's caching allocator serves the current device
    // The device's allocator now, not the storage's own: under dist.shard = parameters the CPU's is
    // replaced after the model is built (Note [reusing large blocks] in model/block_reuse.h).
    c10::Allocator* allocator = c10::GetAllocator(p.device().type());
    s.set_data_ptr_noswap(allocator->allocate(bytes));
    s.set_nbytes(bytes);
  }
  return at::empty({0}, p.options()).set_(p.storage(), 0, p.sizes(), p.strides());
}

at::Tensor refillFrom(const at::Tensor& p, const at::Tensor& slab, std::int64_t offset) {
  const std::size_t bytes = bytesOf(p);
  TORCH_CHECK(slab.scalar_type() == p.scalar_type() && slab.device() == p.device() && slab.is_contiguous() &&
                  offset >= 0 && offset + p.numel() <= slab.numel(),
              "refillFrom: the slab does not hold the parameter");
  auto* keep = new at::Tensor(slab);  // the slab's reference, dropped when the storage lets go
  char* data = static_cast<char*>(slab.data_ptr()) + offset * static_cast<std::int64_t>(p.element_size());
  auto& s = storageOf(p);
  s.set_data_ptr_noswap(c10::DataPtr(data, keep, [](void* ctx) { delete static_cast<at::Tensor*>(ctx); }, p.device()));
  s.set_nbytes(bytes);
  return at::empty({0}, p.options()).set_(p.storage(), 0, p.sizes(), p.strides());
}

WithValues::WithValues(const std::string& name, const at::Tensor& p, const RowFill& fill) : p_(p) {
  if (hasMemory(p)) return;
  if (!fill) throw Error("parameter " + name + " has no values and nothing to read them from");
  fill(name, 0, p.dim() == 0 ? 1 : p.size(0), refill(p));
  filled_ = true;
}

WithValues::~WithValues() {
  if (filled_) releaseMemory(p_);
}

WithoutMemory::WithoutMemory() : saved_(without_memory) { without_memory = true; }
WithoutMemory::~WithoutMemory() { without_memory = saved_; }
bool WithoutMemory::active() { return without_memory; }

}  // namespace graft
