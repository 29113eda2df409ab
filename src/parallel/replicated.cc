// dist.shard = none: every rank holds everything (data_parallel.h), plus what every strategy shares.
#include <torch/torch.h>

#include <cmath>

#include "model/transformer.h"
#include "parallel/data_parallel.h"
#include "parallel/shard_plan.h"
#include "parallel/tensor_collectives.h"
#include "util/error.h"

namespace graft {

void DataParallel::broadcastParameters() {
  torch::NoGradGuard no_grad;
  for (auto& [name, p] : params_) broadcast(comm_, p, 0, "init/params")->wait(comm_.timeout());
}

void RowSquares::append(const at::Tensor& grad, std::int64_t rows) {
  if (!grad.is_contiguous() || grad.scalar_type() != at::kFloat)
    throw Error("RowSquares: the gradient must be contiguous float32");
  size_ += static_cast<std::size_t>(rows);
  if (rows == 0) return;
  if (!grad.device().is_cpu()) {
    pending_.push_back(grad.view({rows, grad.numel() / rows}).to(at::kDouble).square().sum(1));
    return;
  }
  flush();
  std::vector<double>& out = host_;
  const float* data = grad.data_ptr<float>();
  const std::int64_t row_numel = grad.numel() / rows;
  const std::size_t base = out.size();
  out.resize(base + static_cast<std::size_t>(rows));
  at::parallel_for(0, rows, 64, [&](std::int64_t begin, std::int64_t end) {  // rows are independent
    for (std::int64_t r = begin; r < end; ++r) {
      double sum = 0;
      const float* row = data + r * row_numel;
      for (std::int64_t i = 0; i < row_numel; ++i) sum += static_cast<double>(row[i]) * row[i];
      out[base + static_cast<std::size_t>(r)] = sum;
    }
  });
}

void RowSquares::padTo(std::size_t n) {
  if (n <= size_) return;
  if (pending_.empty()) host_.resize(n, 0.0);
  else pending_.push_back(torch::zeros({static_cast<std::int64_t>(n - size_)}, pending_.back().options()));
  size_ = n;
}

std::vector<double> RowSquares::values() {
  flush();
  return host_;
}

void RowSquares::flush() {
  if (pending_.empty()) return;
  const auto all = torch::cat(pending_).cpu();
  pending_.clear();
  host_.insert(host_.end(), all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
}

std::vector<TensorRows> DataParallel::checkpointRows(bool trainable_only) const {
  const int rank = comm_.rank(), world = comm_.size();
  const bool sharded = shardsOptimizer();
  // This rank's rows of a tensor held whole (replicated: all of it on rank 0, none elsewhere).
  auto mine = [&](const std::string& object, const at::Tensor& whole) -> TensorRows {
    const at::Tensor t = whole.detach();
    if (t.dim() == 0) return {object, {}, 0, rank == 0 ? t : t.reshape({1}).narrow(0, 0, 0), false};  // one row: rank 0's
    const RowRange range = sharded ? shardRows(t.size(0), rank, world) : RowRange{0, rank == 0 ? t.size(0) : 0};
    return {object, t.sizes().vec(), range.begin, t.narrow(0, range.begin, range.size()), sharded};
  };
  std::vector<TensorRows> out;
  const auto held = shardsParameters() ? parameterRows() : std::vector<AdamW::Rows>{};
  if (!held.empty() && held.size() != params_.size())
    throw Error("checkpoint: the strategy holds rows of " + std::to_string(held.size()) + " parameters, the model has " +
                std::to_string(params_.size()));
  for (std::size_t k = 0; k < params_.size(); ++k) {
    const auto& [name, p] = params_[k];
    if (trainable_only && !p.requires_grad()) continue;
    if (held.empty()) {
      out.push_back(mine("/model/" + name, p));
    } else {  // ZeRO-3: the rows it keeps are all it has
      if (held[k].name != name) throw Error("checkpoint: the strategy's rows of " + held[k].name + " stand where " + name + " is");
      out.push_back({"/model/" + name, held[k].global_shape, held[k].row_begin, held[k].rows.detach(), true});
    }
  }
  for (const auto& s : optimizer_->slots())
    for (const auto& [moment, t] : {std::pair<std::string, at::Tensor>{"exp_avg", s.exp_avg}, {"exp_avg_sq", s.exp_avg_sq}}) {
      if (sharded) {
        out.push_back({"/optimizer/" + moment + "/" + s.name, s.global_shape, s.row_begin, t.detach(), true});
      } else {
        out.push_back(mine("/optimizer/" + moment + "/" + s.name, t));
      }
    }
  return out;
}

double normOfRowSquares(const std::vector<double>& row_squares) {
  double sum = 0;
  for (const double v : row_squares) sum += v;
  return std::sqrt(sum);
}

namespace {

std::int64_t rowsOf(const at::Tensor& t) { return t.dim() == 0 ? 1 : t.size(0); }

class Replicated final : public DataParallel {
 public:
  Replicated(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
             const DataParallelOptions& options)
      : DataParallel(params, comm), reducer_(params, comm, options.buckets) {
    std::vector<std::pair<std::string, at::Tensor>> trainable;
    for (const auto& p : params)
      if (p.second.requires_grad()) trainable.push_back(p);
    optimizer_ = std::make_shared<AdamW>(trainable, options.adamw);
  }

  void beginStep() override { reducer_.beginStep(); }
  void beginMicroStep(bool sync) override { reducer_.beginMicroStep(sync); }
  void finish() override { reducer_.finish(); }

  double gradNorm() override {
    RowSquares rows;
    for (const auto& s : optimizer_->slots()) rows.append(s.param.grad(), rowsOf(s.param));
    return normOfRowSquares(rows.values());
  }

  void scaleGradients(double factor) override { reducer_.scaleGradients(factor); }
  void step(double lr) override { optimizer_->step(lr); }

  bool shardsOptimizer() const override { return false; }

  MemoryPlan memoryPlan() const override {
    std::int64_t all = 0, trainable = 0;
    for (const auto& [name, p] : params_) {
      all += p.numel();
      if (p.requires_grad()) trainable += p.numel();
    }
    return {4 * all + 4 * trainable + 8 * trainable, 0, 0};  // gradients live in the buckets all along
  }

  std::string describe() const override {
    std::int64_t elements = 0;
    for (const auto& b : reducer_.plan().buckets) elements += b.numel;
    return "gradients: " + std::to_string(reducer_.plan().buckets.size()) + " all-reduce bucket(s), " +
           std::to_string(elements) + " elements per step (frozen parameters are not communicated)";
  }

 private:
  GradReducer reducer_;
};

}  // namespace

namespace {
class StrategyGate final : public UnitGate {
 public:
  explicit StrategyGate(DataParallel& dp) : dp_(dp) {}
  void enter(const std::string& unit) override { dp_.enterUnit(unit); }
  void leave(const std::string& unit, const torch::Tensor& input, const torch::Tensor& output, bool reads) override {
    dp_.leaveUnit(unit, input, output, reads);
  }

 private:
  DataParallel& dp_;
};
}  // namespace

std::shared_ptr<UnitGate> unitGateOf(DataParallel& dp) { return std::make_shared<StrategyGate>(dp); }

std::unique_ptr<DataParallel> makeDataParallel(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                               Communicator& comm, const DataParallelOptions& options) {
  if (options.shard == "none") return std::make_unique<Replicated>(params, comm, options);
  if (options.shard == "optimizer" || options.shard == "gradients" || options.shard == "parameters")
    return makeShardedDataParallel(params, comm, options);
  throw InputError("dist.shard = " + options.shard + ": expected none, optimizer, gradients or parameters");
}

}  // namespace graft
