#include "parallel/tensor_collectives.h"

#include <torch/torch.h>

namespace graft {
namespace {
void requireContiguous(const at::Tensor& t, const char* what, const char* tag) {
  if (!t.is_contiguous())
    throw CollectiveError(std::string(what) + " tensor of '" + tag + "' must be contiguous");
}
void requireSameType(const at::Tensor& a, const at::Tensor& b, const char* tag) {
  if (a.scalar_type() != b.scalar_type() || a.device() != b.device())
    throw CollectiveError(std::string("'") + tag + "': input and output differ in dtype or device");
}
}  // namespace

DType toDType(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kInt: return DType::Int32;
    case at::kLong: return DType::Int64;
    case at::kByte: return DType::UInt8;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Float16;
    default: throw CollectiveError(std::string("no collective carries dtype ") + c10::toString(t.scalar_type()));
  }
}

WorkPtr allReduce(Communicator& comm, at::Tensor& t, ReduceOp op, const char* tag) {
  requireContiguous(t, "all-reduce", tag);
  return comm.allReduceAsync(t.data_ptr(), static_cast<std::size_t>(t.numel()), toDType(t), op, tag);
}

WorkPtr reduceScatter(Communicator& comm, const at::Tensor& input, at::Tensor& output, ReduceOp op, const char* tag) {
  requireContiguous(input, "reduce-scatter input", tag);
  requireContiguous(output, "reduce-scatter output", tag);
  requireSameType(input, output, tag);
  if (input.numel() != output.numel() * comm.size())
    throw CollectiveError(std::string("'") + tag + "': reduce-scatter input has " + std::to_string(input.numel()) +
                          " elements, expected output's " + std::to_string(output.numel()) + " x " +
                          std::to_string(comm.size()) + " ranks");
  return comm.reduceScatterAsync(input.data_ptr(), output.data_ptr(), static_cast<std::size_t>(output.numel()),
                                 toDType(input), op, tag);
}

WorkPtr allGather(Communicator& comm, const at::Tensor& input, at::Tensor& output, const char* tag) {
  requireContiguous(input, "all-gather input", tag);
  requireContiguous(output, "all-gather output", tag);
  requireSameType(input, output, tag);
  if (output.numel() != input.numel() * comm.size())
    throw CollectiveError(std::string("'") + tag + "': all-gather output has " + std::to_string(output.numel()) +
                          " elements, expected input's " + std::to_string(input.numel()) + " x " +
                          std::to_string(comm.size()) + " ranks");
  return comm.allGatherAsync(input.data_ptr(), output.data_ptr(), static_cast<std::size_t>(input.numel()),
                             toDType(input), tag);
}

WorkPtr broadcast(Communicator& comm, at::Tensor& t, int root, const char* tag) {
  requireContiguous(t, "broadcast", tag);
  return comm.broadcastAsync(t.data_ptr(), static_cast<std::size_t>(t.numel()), toDType(t), root, tag);
}

}  // namespace graft
