// Collectives on tensors: thin adapters over Communicator's buffer API that check what a raw
// buffer cannot (contiguity, matching dtypes and sizes) and name the tensor's tag in errors.
// Host tensors for the mpi/local backends, CUDA tensors for nccl. Every function is a collective.
#pragma once

#include <ATen/core/Tensor.h>

#include "communicator.h"

namespace graft {

DType toDType(const at::Tensor& t);  // throws CollectiveError for dtypes no backend carries

// In place; every rank ends with the reduction.
WorkPtr allReduce(Communicator& comm, at::Tensor& t, ReduceOp op, const char* tag);
// `input` holds comm.size() equal blocks along its flattened elements; `output` gets this rank's
// reduced block (input.numel() == output.numel() * size).
WorkPtr reduceScatter(Communicator& comm, const at::Tensor& input, at::Tensor& output, ReduceOp op, const char* tag);
// `output` (input.numel() * size elements) gets every rank's `input`, rank order.
WorkPtr allGather(Communicator& comm, const at::Tensor& input, at::Tensor& output, const char* tag);
WorkPtr broadcast(Communicator& comm, at::Tensor& t, int root, const char* tag);

}  // namespace graft
