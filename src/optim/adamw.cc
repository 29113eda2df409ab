#include "optim/adamw.h"

#include <torch/torch.h>

#include <cmath>

#include "formats/hdf5.h"
#include "model/torch_compat.h"
#include "util/checksum.h"
#include "util/error.h"

namespace graft {

bool AdamW::Slot::whole() const {
  return row_begin == 0 && std::vector<std::int64_t>(param.sizes().begin(), param.sizes().end()) == global_shape;
}

AdamW::AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions options) : options_(options) {
  for (const auto& [name, p] : params) {
    Slot s{name, p, {}, torch::zeros_like(p), torch::zeros_like(p), p.dim() >= 2, 1.0, 0, 0, p.sizes().vec()};
    slots_.push_back(std::move(s));
  }
}

AdamW AdamW::ofRows(const std::vector<Rows>& params, AdamWOptions options) {
  AdamW out({}, options);
  for (const auto& r : params) {
    Slot s{r.name, r.rows, {}, torch::zeros_like(r.rows), torch::zeros_like(r.rows), r.rows.dim() >= 2, 1.0, 0,
           r.row_begin, r.global_shape.empty() ? r.rows.sizes().vec() : r.global_shape};
    out.slots_.push_back(std::move(s));
  }
  return out;
}

// Note [multi-tensor step]: slots that share their hyper-parameters for this step (step count,
// learning-rate scale, weight decay) are updated together. On CUDA with LibTorch >= 2.1 a group
// is one fused AdamW kernel (compat::fusedAdamW: it reads each element once and writes the
// parameter and both moments). Elsewhere LibTorch's _foreach_ operations do it: on CUDA each is
// one kernel over many tensors instead of one per tensor and operation; on the CPU they are the
// same per-tensor operations, so the result is the same bits either way. The fused kernel does
// the same arithmetic in float32 with the bias corrections computed on the device, so its
// results differ from the portable path's in the last bits only. A group is cut at
// kGroupElements, which bounds the portable path's temporary denominators.
namespace {
constexpr std::int64_t kGroupElements = std::int64_t{1} << 25;  // 128 MiB of float32 denominators
}  // namespace

void AdamW::step(double lr) {
  torch::NoGradGuard no_grad;
  ++step_count_;
  struct Group {
    std::int64_t steps = 0;
    double lr_scale = 1.0;
    bool decay = false;
    std::int64_t elements = 0;
    std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs;
  };
  std::vector<Group> groups;
  for (auto& s : slots_) {
    const auto& g = s.grad.defined() ? s.grad : s.param.grad();
    if (!g.defined() || s.lr_scale == 0.0) continue;
    ++s.steps;
    const bool decay = s.decay && options_.weight_decay != 0;
    Group* group = nullptr;
    for (auto& candidate : groups)
      if (candidate.steps == s.steps && candidate.lr_scale == s.lr_scale && candidate.decay == decay &&
          candidate.elements + s.param.numel() <= kGroupElements) {
        group = &candidate;
        break;
      }
    if (!group) {
      group = &groups.emplace_back();
      group->steps = s.steps, group->lr_scale = s.lr_scale, group->decay = decay;
    }
    group->elements += s.param.numel();
    group->params.push_back(s.param);
    group->grads.push_back(g);
    group->exp_avgs.push_back(s.exp_avg);
    group->exp_avg_sqs.push_back(s.exp_avg_sq);
  }
  fused_groups_ = 0, groups_ = static_cast<int>(groups.size());
  for (auto& group : groups) {
    const double bc1 = 1.0 - std::pow(options_.beta1, static_cast<double>(group.steps));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(options_.beta2, static_cast<double>(group.steps)));
    const double slot_lr = lr * group.lr_scale, step_size = slot_lr / bc1;
    if (compat::fusedAdamW(group.params, group.grads, group.exp_avgs, group.exp_avg_sqs, group.steps, slot_lr,
                           options_.beta1, options_.beta2, group.decay ? options_.weight_decay : 0.0, options_.eps)) {
      ++fused_groups_;
      continue;
    }
    if (group.decay) at::_foreach_mul_(group.params, 1.0 - slot_lr * options_.weight_decay);
    at::_foreach_mul_(group.exp_avgs, options_.beta1);
    at::_foreach_add_(group.exp_avgs, group.grads, 1.0 - options_.beta1);
    at::_foreach_mul_(group.exp_avg_sqs, options_.beta2);
    at::_foreach_addcmul_(group.exp_avg_sqs, group.grads, group.grads, 1.0 - options_.beta2);
    auto denoms = at::_foreach_sqrt(group.exp_avg_sqs);
    at::_foreach_div_(denoms, bc2_sqrt);
    at::_foreach_add_(denoms, options_.eps);
    at::_foreach_addcdiv_(group.params, group.exp_avgs, denoms, -step_size);
  }
}

std::uint64_t AdamW::stateBytes() const {
  std::uint64_t bytes = 0;
  for (const auto& s : slots_) {
    std::uint64_t n = 8;  // two float32 moments
    for (const auto d : s.global_shape) n *= static_cast<std::uint64_t>(d);
    bytes += n;
  }
  return bytes;
}

void AdamW::saveAttributes(H5File& file, const std::string& group) const {
  file.setAttr(group, "step_count", step_count_);
  file.setAttr(group, "beta1", options_.beta1);
  file.setAttr(group, "beta2", options_.beta2);
  file.setAttr(group, "eps", options_.eps);
  file.setAttr(group, "weight_decay", options_.weight_decay);
  for (const auto& s : slots_) file.setAttr(group + "/exp_avg/" + s.name, "steps", s.steps);
}

void AdamW::load(const H5File& file, const std::string& group) {
  const std::string& path = file.path();
  torch::NoGradGuard no_grad;
  step_count_ = file.intAttr(group, "step_count");
  for (auto& s : slots_) {
    const std::int64_t rows = s.param.dim() == 0 ? 1 : s.param.size(0);
    for (auto* moment : {&s.exp_avg, &s.exp_avg_sq}) {
      const std::string object = group + (moment == &s.exp_avg ? "/exp_avg/" : "/exp_avg_sq/") + s.name;
      if (!file.exists(object)) throw InputError(path + ": optimizer tensor " + object + " is missing");
      if (file.shape(object) != s.global_shape) throw InputError(path + ": optimizer tensor " + object + " has the wrong shape");
      moment->copy_(file.readRows(object, s.row_begin, s.row_begin + rows).view(moment->sizes()));
      // Moments are never NaN (a non-finite step is skipped): NaN rows are a missing part file.
      if (torch::isnan(*moment).any().item<bool>())
        throw InputError(path + ": optimizer tensor " + object + " has rows that cannot be read (a part file missing?)");
    }
    // Checkpoints from before per-parameter counts: every slot had them all.
    const std::string object = group + "/exp_avg/" + s.name;
    s.steps = file.hasAttr(object, "steps") ? file.intAttr(object, "steps") : step_count_;
    if (s.steps < 0 || s.steps > step_count_)
      throw InputError(path + ": " + object + " attribute steps = " + std::to_string(s.steps) + " is out of range");
  }
}

}  // namespace graft
