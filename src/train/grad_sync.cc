#include "train/grad_sync.h"

#include <torch/torch.h>

#include <cmath>

namespace graft {

FlatGradSync::FlatGradSync(const std::vector<at::Tensor>& params, int extra) : params_(params), extra_(extra) {
  std::int64_t total = extra;
  for (const auto& p : params_) total += p.numel();
  buffer_ = torch::zeros({total}, torch::kFloat32);
}

void FlatGradSync::average(Communicator& comm, std::vector<double>& extra) {
  torch::NoGradGuard no_grad;
  std::int64_t at = 0;
  for (const auto& p : params_) {
    auto slice = buffer_.narrow(0, at, p.numel());
    if (p.grad().defined()) slice.copy_(p.grad().reshape({-1}));
    else slice.zero_();
    at += p.numel();
  }
  float* tail = buffer_.data_ptr<float>() + at;
  for (int i = 0; i < extra_; ++i) tail[i] = static_cast<float>(extra[static_cast<std::size_t>(i)]);
  comm.allReduce(buffer_.data_ptr<float>(), static_cast<std::size_t>(buffer_.numel()), ReduceOp::Sum, "grad/flat");
  for (int i = 0; i < extra_; ++i) extra[static_cast<std::size_t>(i)] = tail[i];
  const double inv = 1.0 / comm.size();
  at = 0;
  for (auto& p : params_) {
    auto slice = buffer_.narrow(0, at, p.numel()).view(p.sizes());
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    if (comm.size() > 1) p.mutable_grad().copy_(slice).mul_(inv);
    at += p.numel();
  }
}

double FlatGradSync::globalNorm() const {
  double sum = 0;
  for (const auto& p : params_)
    if (p.grad().defined()) sum += p.grad().pow(2).sum().item<double>();
  return std::sqrt(sum);
}

void FlatGradSync::scale(double factor) {
  torch::NoGradGuard no_grad;
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad().mul_(factor);
}

}  // namespace graft
