// Collectives on tensors: thin adapters over Communicator's buffer API that check what a raw
// buffer cannot (contiguity, matching dtypes and sizes) and name the tensor's tag in errors.
//
// The tensors may live anywhere and the collective still runs: a CUDA tensor goes to a communicator
// that carries host memory only (mpi, local) through a host copy, and back when the collective
// completes. The reductions may also travel in another dtype (`wire`, dist.reduce_dtype: bfloat16
// halves the bytes, and every partial sum rounds to it); the result is converted back into the
// caller's tensor on completion. Either way the returned Work owns the copies, and the caller's
// tensor holds the result once test() said true or wait() returned. With one rank nothing travels:
// the result is there at once (no host copy, no rounding). Every function is a collective.
#pragma once

#include <ATen/core/Tensor.h>

#include "communicator.h"

namespace graft {

DType toDType(const at::Tensor& t);  // throws CollectiveError for dtypes no backend carries

// In place; every rank ends with the reduction. `wire` (default: t's own dtype) is what travels.
WorkPtr allReduce(Communicator& comm, at::Tensor& t, ReduceOp op, const char* tag,
                  c10::optional<at::ScalarType> wire = c10::nullopt);
// `input` holds comm.size() equal blocks along its flattened elements; `output` gets this rank's
// reduced block (input.numel() == output.numel() * size).
// `any_order`: the backend may add in another order than its reduce-scatter's (Communicator::
// reduceScatterAnyOrderAsync).
WorkPtr reduceScatter(Communicator& comm, const at::Tensor& input, at::Tensor& output, ReduceOp op, const char* tag,
                      c10::optional<at::ScalarType> wire = c10::nullopt, bool any_order = false);
// `output` (input.numel() * size elements) gets every rank's `input`, rank order.
WorkPtr allGather(Communicator& comm, const at::Tensor& input, at::Tensor& output, const char* tag);
WorkPtr broadcast(Communicator& comm, at::Tensor& t, int root, const char* tag);

}  // namespace graft
