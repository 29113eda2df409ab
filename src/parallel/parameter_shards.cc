#include "parallel/parameter_shards.h"

#include <c10/core/StorageImpl.h>
#include <torch/torch.h>

#include <set>

#include "model/parameter_storage.h"
#include "parallel/tensor_collectives.h"
#include "util/error.h"

namespace graft {

ParameterShards::ParameterShards(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
                                 bool prefetch)
    : params_(params), comm_(comm), prefetch_(prefetch) {
  std::vector<ShardParamInfo> infos;
  std::set<const void*> storages;
  for (const auto& [name, p] : params_) {
    if (p.dim() == 0 || p.scalar_type() != at::kFloat)
      throw Error("dist.shard = parameters: parameter " + name + " must be a float32 tensor of at least one dimension");
    const auto& storage = *p.storage().unsafeGetStorageImpl();
    const bool alone = storage.nbytes() == static_cast<std::size_t>(p.numel()) * p.element_size() || storage.nbytes() == 0;
    if (!p.is_contiguous() || p.storage_offset() != 0 || !alone || !storages.insert(&storage).second)
      throw Error("dist.shard = parameters: parameter " + name +
                  " does not own its storage alone (a view or a shared tensor cannot be freed between uses)");
    // Every parameter is sharded, the frozen ones too: here a unit is what is gathered together.
    infos.push_back({name, std::vector<std::int64_t>(p.sizes().begin(), p.sizes().end()), /*trainable=*/true});
  }
  plan_ = planShards(infos, comm.size());
  for (std::size_t u = 0; u < plan_.units.size(); ++u) {
    const auto& unit = plan_.units[u];
    unit_index_[unit.name] = u;
    buffers_.push_back(torch::zeros({unit.numel}, params_[unit.params.front()].second.options().requires_grad(false)));
    tags_.push_back({"ag/fwd/" + unit.name, "ag/bwd/" + unit.name});
  }
  whole_.assign(plan_.units.size(), true);
  next_[kForward].assign(plan_.units.size(), -1);
  next_[kBackward].assign(plan_.units.size(), -1);
}

at::Tensor ParameterShards::rows(std::size_t k) const {
  const auto u = static_cast<std::size_t>(plan_.unit_of[k]);
  const auto& p = params_[k].second;
  const RowRange mine = shardRows(p.size(0), comm_.rank(), comm_.size());
  std::vector<std::int64_t> shape(p.sizes().begin(), p.sizes().end());
  shape[0] = mine.size();
  const std::int64_t row_numel = p.numel() / p.size(0);
  const auto& unit = plan_.units[u];
  const auto i = static_cast<std::size_t>(std::find(unit.params.begin(), unit.params.end(), k) - unit.params.begin());
  return buffers_[u].narrow(0, unit.offsets[i], mine.size() * row_numel).view(shape);
}

void ParameterShards::adopt(const RowFill& fill) {
  torch::NoGradGuard no_grad;
  for (std::size_t k = 0; k < params_.size(); ++k) {
    const auto& [name, p] = params_[k];
    const RowRange mine = shardRows(p.size(0), comm_.rank(), comm_.size());
    if (hasMemory(p)) {
      rows(k).copy_(p.detach().narrow(0, mine.begin, mine.size()));
    } else if (mine.size() > 0) {
      if (!fill) throw Error("dist.shard = parameters: parameter " + name + " has no values and nothing to read them from");
      fill(name, mine.begin, mine.end, rows(k));
    }
  }
  all_whole_ = false;
  for (std::size_t u = 0; u < plan_.units.size(); ++u) release(u);
}

void ParameterShards::gatherAll() {
  finishPrefetch();
  for (std::size_t u = 0; u < plan_.units.size(); ++u)
    if (!whole_[u]) gather(u, kForward);
  all_whole_ = true;
}

void ParameterShards::enter(const std::string& unit) {
  const auto it = unit_index_.find(unit);
  if (it == unit_index_.end()) return;
  finishPrefetch();
  if (!whole_[it->second]) gather(it->second, kForward);
  used(it->second, kForward);
}

void ParameterShards::used(std::size_t u, Pass pass) {
  if (!prefetch_ || all_whole_) return;
  if (first_unit_ < 0) first_unit_ = static_cast<long>(u);
  if (last_[pass] >= 0 && static_cast<long>(u) != first_unit_) {  // learn: u follows last_ (never into a forward's start)
    long& seen = next_[pass][static_cast<std::size_t>(last_[pass])];
    seen = seen == -1 ? static_cast<long>(u) : seen == static_cast<long>(u) ? seen : -2;
  }
  last_[pass] = static_cast<long>(u);
  const long next = next_[pass][u];
  if (next < 0 || next == first_unit_ || whole_[static_cast<std::size_t>(next)] || in_flight_) return;
  const auto v = static_cast<std::size_t>(next);
  in_flight_ = std::make_unique<InFlight>(startGather(v, pass));
}

void ParameterShards::finishPrefetch() {
  if (!in_flight_) return;
  auto flight = std::move(in_flight_);
  finishGather(*flight);
  ++prefetched_;
}

void ParameterShards::leave(const std::string& unit, const at::Tensor& input, const at::Tensor& output,
                            bool backward_reads_params) {
  const auto it = unit_index_.find(unit);
  if (it == unit_index_.end() || all_whole_) return;
  const std::size_t u = it->second;
  auto before = std::move(gather_pending_);  // the unit whose output may be this one's input
  gather_pending_.reset();
  if (backward_reads_params && at::GradMode::is_enabled() && output.defined() && output.requires_grad()) {
    // Note [freeing parameters]: whole again before the unit's backward, freed after it.
    if (input.defined() && input.requires_grad()) {
      // Note [free, then gather]: the unit before's gather waits for this release.
      const bool chained = before && before->output.lock().get() == input.unsafeGetTensorImpl();
      if (chained) *before->moved = true;
      const long next = chained ? static_cast<long>(before->unit) : -1;
      at::Tensor(input).register_hook([this, u, next](const at::Tensor&) {
        if (all_whole_) return;
        release(u);
        if (released_) released_();
        if (next >= 0) gatherForBackward(static_cast<std::size_t>(next));
      });
    }
    auto moved = std::make_shared<bool>(false);
    at::Tensor(output).register_hook([this, u, moved](const at::Tensor&) {
      if (!*moved) gatherForBackward(u);
    });
    gather_pending_ = Pending{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(output.getIntrusivePtr()), u,
                              std::move(moved)};
  }
  release(u);
}

void ParameterShards::gatherForBackward(std::size_t u) {
  finishPrefetch();
  if (!whole_[u]) gather(u, kBackward);
  used(u, kBackward);
}

std::optional<std::size_t> ParameterShards::unitIndex(const std::string& unit) const {
  const auto it = unit_index_.find(unit);
  return it == unit_index_.end() ? std::nullopt : std::optional<std::size_t>(it->second);
}

void ParameterShards::afterBackward() {
  gather_pending_.reset();
  finishPrefetch();  // before any optimizer step changes the rows it reads
  last_ = {-1, -1};
  if (all_whole_) return;
  for (std::size_t u = 0; u < plan_.units.size(); ++u) release(u);
}

std::int64_t ParameterShards::shardBytes() const {
  std::int64_t bytes = 0;
  for (const auto& b : buffers_) bytes += b.numel() * b.element_size();
  return bytes;
}

std::int64_t ParameterShards::largestUnitBytes() const {
  std::int64_t bytes = 0;
  for (const auto& b : buffers_) bytes = std::max<std::int64_t>(bytes, b.numel() * b.element_size() * comm_.size());
  return bytes;
}

void ParameterShards::gather(std::size_t u, Pass pass) {
  auto flight = startGather(u, pass);
  finishGather(flight);
}

// Note [gathered straight into place]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A unit is gathered into one block, one all-gather per parameter: parameter k's c rows from every
// rank (Note [shard layout]: c = ceil(R/N) rows each, padded) land side by side, which is already
// k's whole tensor in row order (rank r's rows begin at r*c), followed by padding. Each parameter's
// storage then points into the block (refillFrom). Nothing is unpacked: the gathered buffer and
// the copy out of it, one more unit-sized block and one more pass over it per gather, are gone.
// The block is as large as a gathered unit, so the one that a unit's release or its packed
// gradients gave back serves the next gather (Note [reusing large blocks] in model/block_reuse.h).
ParameterShards::InFlight ParameterShards::startGather(std::size_t u, Pass pass) {
  torch::NoGradGuard no_grad;
  const ShardUnit& unit = plan_.units[u];
  const int world = comm_.size();
  InFlight flight{u, torch::empty({world * unit.numel}, buffers_[u].options()), {}};
  for (std::size_t i = 0; i < unit.params.size(); ++i) {
    const std::int64_t slot = slotNumel(u, i);
    if (slot == 0) continue;
    auto into = flight.block.narrow(0, world * unit.offsets[i], world * slot);
    flight.works.push_back(allGather(comm_, buffers_[u].narrow(0, unit.offsets[i], slot), into, tags_[u][pass].c_str()));
  }
  ++gathers_;
  return flight;
}

void ParameterShards::finishGather(InFlight& flight) {
  for (auto& work : flight.works) work->wait(comm_.timeout());
  const ShardUnit& unit = plan_.units[flight.unit];
  for (std::size_t i = 0; i < unit.params.size(); ++i)
    refillFrom(params_[unit.params[i]].second, flight.block, comm_.size() * unit.offsets[i]);
  whole_[flight.unit] = true;
}

std::int64_t ParameterShards::slotNumel(std::size_t u, std::size_t i) const {
  const ShardUnit& unit = plan_.units[u];
  return (i + 1 < unit.params.size() ? unit.offsets[i + 1] : unit.numel) - unit.offsets[i];
}

void ParameterShards::release(std::size_t u) {
  if (!whole_[u]) return;
  for (const auto k : plan_.units[u].params) releaseMemory(params_[k].second);
  whole_[u] = false;
}

}  // namespace graft
