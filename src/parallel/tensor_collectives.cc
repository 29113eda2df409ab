#include "parallel/tensor_collectives.h"

#include <torch/torch.h>

#include <functional>

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

// Where `t`'s data travels: its own memory, or host memory when it is on a device the
// communicator cannot read (MPI and local carry host memory only).
at::Device wireDevice(const Communicator& comm, const at::Tensor& t) {
  return t.is_cpu() || comm.carriesDeviceMemory() ? t.device() : at::Device(at::kCPU);
}

// `t` as the communicator carries it: in `wire` dtype, on wireDevice. `t` itself (no copy) when
// it already is.
at::Tensor onWire(const Communicator& comm, const at::Tensor& t, at::ScalarType wire) {
  return t.to(wireDevice(comm, t), wire).contiguous();
}

// A collective on copies: when `inner` completes, `then` copies the result back, once.
class CopyBackWork final : public Work {
 public:
  CopyBackWork(WorkPtr inner, std::function<void()> then) : then_(std::move(then)), inner_(std::move(inner)) {}
  bool test() override {
    if (then_ && inner_->test()) finish();
    return !then_;
  }
  void wait(std::chrono::milliseconds timeout) override {
    if (!then_) return;
    inner_->wait(timeout);
    finish();
  }

 private:
  void finish() {
    auto then = std::move(then_);
    then_ = nullptr;
    then();
  }
  // Declared before inner_, so destroyed after it: the copies then_ holds outlive inner_, whose
  // destructor may still have to order later device work after the collective that uses them.
  std::function<void()> then_;
  WorkPtr inner_;
};

// What a collective of one rank leaves: nothing to wait for.
class DoneWork final : public Work {
 public:
  bool test() override { return true; }
  void wait(std::chrono::milliseconds) override {}
};

// A buffer for what a collective writes, in the dtype and memory it travels in (no copy of `like`).
at::Tensor receiveBuffer(const Communicator& comm, const at::Tensor& like, at::ScalarType wire) {
  const at::Device device = wireDevice(comm, like);
  if (device == like.device() && wire == like.scalar_type()) return like;
  return at::empty(like.sizes(), like.options().device(device).dtype(wire));
}

WorkPtr copyBackWhenDone(WorkPtr inner, const at::Tensor& wire, at::Tensor& target) {
  if (wire.data_ptr() == target.data_ptr()) return inner;  // no copy was made
  return std::make_unique<CopyBackWork>(std::move(inner), [wire, target]() mutable {
    target.view(wire.sizes()).copy_(wire, /*non_blocking=*/false);
  });
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

WorkPtr allReduce(Communicator& comm, at::Tensor& t, ReduceOp op, const char* tag, c10::optional<at::ScalarType> wire) {
  requireContiguous(t, "all-reduce", tag);
  if (comm.size() == 1) return std::make_unique<DoneWork>();  // one rank: nothing travels, nothing to round
  auto w = onWire(comm, t, wire.value_or(t.scalar_type()));
  return copyBackWhenDone(comm.allReduceAsync(w.data_ptr(), static_cast<std::size_t>(w.numel()), toDType(w), op, tag), w, t);
}

WorkPtr reduceScatter(Communicator& comm, const at::Tensor& input, at::Tensor& output, ReduceOp op, const char* tag,
                      c10::optional<at::ScalarType> wire, bool any_order) {
  requireContiguous(input, "reduce-scatter input", tag);
  requireContiguous(output, "reduce-scatter output", tag);
  requireSameType(input, output, tag);
  if (input.numel() != output.numel() * comm.size())
    throw CollectiveError(std::string("'") + tag + "': reduce-scatter input has " + std::to_string(input.numel()) +
                          " elements, expected output's " + std::to_string(output.numel()) + " x " +
                          std::to_string(comm.size()) + " ranks");
  if (comm.size() == 1) {
    output.copy_(input.view(output.sizes()));
    return std::make_unique<DoneWork>();
  }
  const auto dtype = wire.value_or(input.scalar_type());
  const auto send = onWire(comm, input, dtype);
  auto recv = receiveBuffer(comm, output, dtype);
  const auto count = static_cast<std::size_t>(output.numel());
  auto work = any_order ? comm.reduceScatterAnyOrderAsync(send.data_ptr(), recv.data_ptr(), count, toDType(send), op, tag)
                        : comm.reduceScatterAsync(send.data_ptr(), recv.data_ptr(), count, toDType(send), op, tag);
  if (send.data_ptr() != input.data_ptr())  // the send copy lives until the collective ends
    work = std::make_unique<CopyBackWork>(std::move(work), [send] {});
  return copyBackWhenDone(std::move(work), recv, output);
}

WorkPtr allGather(Communicator& comm, const at::Tensor& input, at::Tensor& output, const char* tag) {
  requireContiguous(input, "all-gather input", tag);
  requireContiguous(output, "all-gather output", tag);
  requireSameType(input, output, tag);
  if (output.numel() != input.numel() * comm.size())
    throw CollectiveError(std::string("'") + tag + "': all-gather output has " + std::to_string(output.numel()) +
                          " elements, expected input's " + std::to_string(input.numel()) + " x " +
                          std::to_string(comm.size()) + " ranks");
  if (comm.size() == 1) {
    output.copy_(input.view(output.sizes()));
    return std::make_unique<DoneWork>();
  }
  const auto send = onWire(comm, input, input.scalar_type());
  auto recv = receiveBuffer(comm, output, output.scalar_type());
  auto work = comm.allGatherAsync(send.data_ptr(), recv.data_ptr(), static_cast<std::size_t>(input.numel()),
                                  toDType(send), tag);
  if (send.data_ptr() != input.data_ptr()) work = std::make_unique<CopyBackWork>(std::move(work), [send] {});
  return copyBackWhenDone(std::move(work), recv, output);
}

WorkPtr broadcast(Communicator& comm, at::Tensor& t, int root, const char* tag) {
  requireContiguous(t, "broadcast", tag);
  if (comm.size() == 1) return std::make_unique<DoneWork>();
  auto w = onWire(comm, t, t.scalar_type());
  return copyBackWhenDone(comm.broadcastAsync(w.data_ptr(), static_cast<std::size_t>(w.numel()), toDType(w), root, tag), w, t);
}

}  // namespace graft
