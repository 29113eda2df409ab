// A parameter whose memory comes and goes while the tensor stays (dist.shard = parameters keeps only
// its rows between uses; a sharded run builds its model without the whole base in memory).
//
// Note [parameters without memory]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// The module, autograd's graph and the gradient hooks refer to a parameter tensor all run long, so
// it is never replaced: only its storage's memory is handed back (releaseMemory: the storage is
// then 0 bytes long) and allocated again (refill). A tensor in that state has its shape and dtype,
// so plans, names and counts work on it, but reading its values is an error.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>

namespace graft {

// False while the parameter's memory is released (Note [parameters without memory]).
bool hasMemory(const at::Tensor& p);
// Hands the memory back; the tensor keeps its shape.
void releaseMemory(const at::Tensor& p);
// Allocates the memory again if it was released (the values are then undefined) and returns a
// tensor on the same storage that autograd does not track (its version counter stays put), to be
// filled in place.
at::Tensor refill(const at::Tensor& p);
// The same, with the memory taken from `slab` (of p's dtype and device) at element `offset`,
// which stays allocated while any parameter refilled from it has not been released: a unit's
// parameters gathered into one block (Note [reusing large blocks] in model/block_reuse.h).
at::Tensor refillFrom(const at::Tensor& p, const at::Tensor& slab, std::int64_t offset);

// Fills `out` (float32, shaped [end - begin, ...]) with rows [begin, end) of parameter `name`: where
// the values of parameters built without memory come from (convert/model_source.h).
using RowFill = std::function<void(const std::string& name, std::int64_t begin, std::int64_t end, at::Tensor out)>;

// Gives a parameter without memory its values, read whole through `fill`, for as long as it lives,
// and then releases them again (a transfer that reads base weights, such as QLoRA quantising
// them, one at a time). Does nothing to a parameter that has memory.
class WithValues {
 public:
  WithValues(const std::string& name, const at::Tensor& p, const RowFill& fill);
  ~WithValues();
  WithValues(const WithValues&) = delete;
  WithValues& operator=(const WithValues&) = delete;

 private:
  at::Tensor p_;
  bool filled_ = false;
};

// While one is alive on this thread, the parameters model/ creates (Transformer and its modules)
// have their shapes but no memory and are not initialised: a model is built to be filled from a
// file row range by row range (convert/model_source.h).
class WithoutMemory {
 public:
  WithoutMemory();
  ~WithoutMemory();
  WithoutMemory(const WithoutMemory&) = delete;
  WithoutMemory& operator=(const WithoutMemory&) = delete;
  static bool active();

 private:
  bool saved_;
};

}  // namespace graft
