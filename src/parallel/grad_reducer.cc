#include "parallel/grad_reducer.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/torch.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "util/error.h"

namespace graft {

// Keeps the gradient accumulators alive (the variable only holds a weak reference) so the hooks
// stay registered for the reducer's lifetime.
struct GradReducer::Hooks {
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
};

namespace {
class ReadyHook final : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::function<void()> on_ready) : on_ready_(std::move(on_ready)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    on_ready_();
    return outputs;
  }

 private:
  std::function<void()> on_ready_;
};
}  // namespace

GradReducer::GradReducer(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
                         GradReducerOptions options)
    : comm_(comm), options_(options), params_(params), hooks_(std::make_unique<Hooks>()) {
  std::vector<ParamInfo> infos;
  for (const auto& [name, p] : params_) {
    if (p.scalar_type() != torch::kFloat) throw Error("GradReducer: parameter " + name + " is not float32");
    infos.push_back({name, p.numel(), 4, p.requires_grad()});
  }
  plan_ = planBuckets(infos, options_.first_bucket_bytes, options_.bucket_bytes);
  verifyAcrossRanks();
  for (const auto& bucket : plan_.buckets) buffers_.push_back(torch::zeros({bucket.numel}, torch::kFloat));
  pending_.assign(plan_.buckets.size(), 0);
  ready_.assign(plan_.buckets.size(), false);
  works_.resize(plan_.buckets.size());
  for (std::size_t k = 0; k < params_.size(); ++k) {
    if (plan_.bucket_of[k] < 0) continue;
    auto accumulator = torch::autograd::impl::grad_accumulator(params_[k].second);
    accumulator->add_post_hook(std::make_unique<ReadyHook>([this, k] { onGradReady(k); }));
    hooks_->accumulators.push_back(std::move(accumulator));
  }
  beginStep();
}

GradReducer::~GradReducer() = default;

void GradReducer::verifyAcrossRanks() {
  std::int64_t hash[2] = {static_cast<std::int64_t>(plan_.hash), -static_cast<std::int64_t>(plan_.hash)};
  comm_.allReduce(hash, 2, ReduceOp::Max, "reducer/plan_hash");
  if (hash[0] == static_cast<std::int64_t>(plan_.hash) && -hash[1] == static_cast<std::int64_t>(plan_.hash)) return;
  // Plans differ somewhere: every rank compares with rank 0's, line by line, and all agree on the
  // first parameter where any rank differs, so every rank's error names the same parameter.
  std::string text;
  for (const auto& line : plan_.lines) text += line + "\n";
  std::int64_t length = static_cast<std::int64_t>(text.size());
  comm_.broadcast(&length, sizeof(length), 0, "reducer/plan_length");
  std::string root = comm_.rank() == 0 ? text : std::string(static_cast<std::size_t>(length), '\0');
  comm_.broadcast(root.data(), root.size(), 0, "reducer/plan_text");
  std::vector<std::string> root_lines;
  for (std::size_t at = 0, end; (end = root.find('\n', at)) != std::string::npos; at = end + 1)
    root_lines.push_back(root.substr(at, end - at));
  std::int64_t first = INT64_MAX - 1;
  for (std::size_t i = 0; i < std::max(root_lines.size(), plan_.lines.size()); ++i)
    if (i >= root_lines.size() || i >= plan_.lines.size() || root_lines[i] != plan_.lines[i]) {
      first = static_cast<std::int64_t>(i);
      break;
    }
  comm_.allReduce(&first, 1, ReduceOp::Min, "reducer/plan_first_difference");
  if (first == INT64_MAX - 1)
    throw Error("gradient bucket layouts differ between ranks although their parameters agree: every rank must use "
                "the same dist.bucket_mb and dist.first_bucket_mb");
  const auto at = static_cast<std::size_t>(first);
  auto lineOr = [](const std::vector<std::string>& lines, std::size_t i) {
    return i < lines.size() ? "'" + lines[i] + "'" : std::string("no such parameter");
  };
  throw Error("gradient bucket plans differ between ranks, first at parameter #" + std::to_string(first) +
              ": rank 0 has " + lineOr(root_lines, at) + ", rank " + std::to_string(comm_.rank()) + " has " +
              lineOr(plan_.lines, at) + " (every rank must build the same model with the same frozen parameters)");
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
  works_[b] = comm_.allReduceAsync(buffers_[b].data_ptr<float>(), static_cast<std::size_t>(buffers_[b].numel()),
                                   DType::Float32, ReduceOp::Sum, "grad/bucket");
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

double GradReducer::globalNorm() const {
  double sum = 0;
  for (const auto& buffer : buffers_) sum += buffer.pow(2).sum().item<double>();
  return std::sqrt(sum);
}

void GradReducer::scaleGradients(double factor) {
  torch::NoGradGuard no_grad;
  for (auto& buffer : buffers_) buffer.mul_(factor);
}

}  // namespace graft
