#include "parallel/grad_reducer.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "parallel/grad_hooks.h"
#include "parallel/plan_check.h"
#include "parallel/tensor_collectives.h"
#include "util/error.h"

namespace graft {

GradReducer::GradReducer(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
                         GradReducerOptions options)
    : comm_(comm), options_(options), params_(params) {
  std::vector<ParamInfo> infos;
  for (const auto& [name, p] : params_) {
    if (p.scalar_type() != torch::kFloat) throw Error("GradReducer: parameter " + name + " is not float32");
    infos.push_back({name, p.numel(), 4, p.requires_grad()});
  }
  plan_ = planBuckets(infos, options_.first_bucket_bytes, options_.bucket_bytes);
  verifyAcrossRanks();
  const auto on = torch::TensorOptions(torch::kFloat).device(params_.empty() ? torch::Device(torch::kCPU) : params_.front().second.device());
  for (const auto& bucket : plan_.buckets) buffers_.push_back(torch::zeros({bucket.numel}, on));
  pending_.assign(plan_.buckets.size(), 0);
  ready_.assign(plan_.buckets.size(), false);
  works_.resize(plan_.buckets.size());
  std::vector<at::Tensor> tensors;
  for (const auto& [name, p] : params_) tensors.push_back(p);
  hooks_ = std::make_unique<GradReadyHooks>(tensors, [this](std::size_t k) { onGradReady(k); });
  beginStep();
}

GradReducer::~GradReducer() = default;

void GradReducer::verifyAcrossRanks() {
  verifyPlanAcrossRanks(comm_, plan_.hash, plan_.lines, "gradient bucket plans",
                        "every rank must build the same model with the same frozen parameters",
                        "every rank must use the same dist.bucket_mb and dist.first_bucket_mb", "reducer/plan_hash");
}

void GradReducer::beginStep() {
  torch::NoGradGuard no_grad;
  for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
    buffers_[b].zero_();
    const Bucket& bucket = plan_.buckets[b];
    for (std::size_t i = 0; i < bucket.params.size(); ++i) {
      auto& p = params_[bucket.params[i]].second;
      auto view = buffers_[b].narrow(0, bucket.offsets[i], p.numel()).view(p.sizes());
      // Re-point .grad at the bucket when something replaced it (it must stay a view).
      if (!p.grad().defined() || p.grad().data_ptr() != view.data_ptr()) p.mutable_grad() = view;
    }
  }
  launched_count_ = 0;
}

void GradReducer::beginMicroStep(bool sync) {
  sync_ = sync;
  next_launch_ = 0;
  for (std::size_t b = 0; b < plan_.buckets.size(); ++b) {
    pending_[b] = plan_.buckets[b].params.size();
    ready_[b] = false;
  }
}

void GradReducer::onGradReady(std::size_t param) {
  if (!sync_) return;
  const auto b = static_cast<std::size_t>(plan_.bucket_of[param]);
  if (pending_[b] == 0) return;  // a gradient arriving twice in one backward: ignore the repeat
  if (--pending_[b] == 0) ready_[b] = true;
  if (options_.overlap) launchReady();
  for (std::size_t k = 0; k < next_launch_; ++k)  // drive progress of buckets in flight
    if (works_[k]) works_[k]->test();
}

void GradReducer::launchReady() {
  while (next_launch_ < plan_.buckets.size() && ready_[next_launch_]) launch(next_launch_++);
}

void GradReducer::launch(std::size_t b) {
  torch::NoGradGuard no_grad;
  if (comm_.size() > 1) buffers_[b].mul_(1.0 / comm_.size());  // the average, folded into the bucket
  works_[b] = allReduce(comm_, buffers_[b], ReduceOp::Sum, "grad/bucket", options_.reduce_dtype);
  ++launched_count_;
}

void GradReducer::finish() {
  if (!sync_) throw Error("GradReducer::finish() on a micro-step that does not sync");
  // Buckets whose gradients never arrived (unused parameters) still take part, in bucket order.
  for (std::size_t b = next_launch_; b < plan_.buckets.size(); ++b) ready_[b] = true;
  launchReady();
  for (auto& work : works_) {
    if (work) work->wait(comm_.timeout());
    work.reset();
  }
  sync_ = false;
}

void GradReducer::scaleGradients(double factor) {
  torch::NoGradGuard no_grad;
  for (auto& buffer : buffers_) buffer.mul_(factor);
}

}  // namespace graft
