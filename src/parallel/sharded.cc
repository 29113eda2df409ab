// dist.shard = optimizer | gradients | parameters (ZeRO-1, -2, -3): each rank updates only its
// rows (data_parallel.h, Note [shard layout] in shard_plan.h); with parameters it also holds only
// its rows of the parameters between uses (parameter_shards.h).
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <deque>
#include <map>

#include "parallel/data_parallel.h"
#include "parallel/grad_hooks.h"
#include "parallel/parameter_shards.h"
#include "parallel/plan_check.h"
#include "parallel/shard_plan.h"
#include "parallel/tensor_collectives.h"
#include "util/error.h"

namespace graft {
namespace {

// Copies every rank's rows of a parameter from an all-gathered unit buffer (`world` blocks of
// `unit_numel`, the parameter at `offset` in each) into `whole` (Note [shard layout]).
void unpackRows(const at::Tensor& all, std::int64_t unit_numel, std::int64_t offset, int world, at::Tensor whole) {
  const std::int64_t rows = whole.size(0), row_numel = rows > 0 ? whole.numel() / rows : 0;
  for (int r = 0; r < world; ++r) {
    const RowRange theirs = shardRows(rows, r, world);
    if (theirs.size() == 0) continue;
    auto dst = whole.narrow(0, theirs.begin, theirs.size());
    dst.copy_(all.narrow(0, r * unit_numel + offset, theirs.size() * row_numel).view(dst.sizes()));
  }
}

class Sharded final : public DataParallel {
 public:
  Sharded(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm,
          const DataParallelOptions& options)
      : DataParallel(params, comm),
        shard_gradients_(options.shard != "optimizer"),
        accumulate_rows_(options.accumulate_rows),
        prefetch_(options.prefetch),
        reduce_dtype_(options.buckets.reduce_dtype),
        floats_(at::TensorOptions(at::kFloat).device(params.empty() ? at::Device(at::kCPU) : params.front().second.device())) {
    if (options.shard == "parameters") {
      shards_ = std::make_unique<ParameterShards>(params, comm, options.prefetch);
      shards_->onReleasedInBackward([this] {  // Note [reduce-scatter after the release]
        if (launching_) launchReady();
      });
    }
    std::vector<ShardParamInfo> infos;
    for (const auto& [name, p] : params_) {
      if (p.requires_grad() && (p.dim() == 0 || p.scalar_type() != at::kFloat))
        throw Error("dist.shard: parameter " + name + " must be a float32 tensor of at least one dimension");
      infos.push_back({name, std::vector<std::int64_t>(p.sizes().begin(), p.sizes().end()), p.requires_grad()});
    }
    plan_ = planShards(infos, comm.size());
    verifyPlanAcrossRanks(comm, plan_.hash, plan_.lines, "shard plans",
                          "every rank must build the same model with the same frozen parameters",
                          "every rank must run with the same number of ranks", "shard/plan_hash");
    if (shards_)
      for (const auto& unit : plan_.units) {
        const auto u = shards_->unitIndex(unit.name);
        if (!u) throw Error("dist.shard = parameters: unit " + unit.name + " of the trainable parameters is not a unit of the gathered ones");
        gathered_unit_.push_back(*u);
      }
    // Where each trainable parameter sits: its unit, its offset there, its row-sum offset (norm).
    std::vector<AdamW::Rows> rows;
    slot_of_.assign(params_.size(), -1);
    offset_of_.assign(params_.size(), 0);
    row_offset_of_.assign(params_.size(), 0);
    for (const auto& unit : plan_.units)
      for (std::size_t i = 0; i < unit.params.size(); ++i) offset_of_[unit.params[i]] = unit.offsets[i];
    for (std::size_t k = 0; k < params_.size(); ++k) {
      if (plan_.unit_of[k] < 0) continue;
      const auto& [name, p] = params_[k];
      const RowRange mine = shardRows(p.size(0), comm.rank(), comm.size());
      slot_of_[k] = static_cast<int>(rows.size());
      rows.push_back({name, shards_ ? shards_->rows(k) : p.detach().narrow(0, mine.begin, mine.size()), mine.begin,
                      infos[k].shape});
      owned_elements_ += mine.size() * infos[k].rowNumel();
      trainable_elements_ += p.numel();
    }
    std::int64_t row_offset = 0;  // per unit, per parameter: its slot of rowsPerRank rows
    for (const auto& unit : plan_.units)
      for (const auto k : unit.params) {
        row_offset_of_[k] = row_offset;
        row_offset += rowsPerRank(params_[k].second.size(0), comm.size());
      }
    norm_rows_ = row_offset;
    optimizer_ = std::make_shared<AdamW>(AdamW::ofRows(rows, options.adamw));
    for (const auto& unit : plan_.units) tags_.push_back({"rs/grads/" + unit.name, "ag/params/" + unit.name});
    if (shard_gradients_) {
      for (std::size_t u = 0; u < plan_.units.size(); ++u) {
        shard_grads_.push_back(torch::zeros({plan_.units[u].numel}, floats_));
        for (const auto k : plan_.units[u].params) {
          auto& slot = optimizer_->slots()[static_cast<std::size_t>(slot_of_[k])];
          slot.grad = shard_grads_[u].narrow(0, offset_of_[k], slot.param.numel()).view(slot.param.sizes());
        }
      }
      pending_.assign(plan_.units.size(), 0);
      ready_.assign(plan_.units.size(), false);
      unused_in_unit_.assign(plan_.units.size(), 0);
      unused_.assign(params_.size(), false);
      got_grad_.assign(params_.size(), false);
      arrival_.assign(params_.size(), -1);
      for (std::size_t u = plan_.units.size(); u-- > 0;) launch_order_.push_back(u);  // until the first step says
      for (std::size_t u = 0; u < plan_.units.size(); ++u) unit_index_[plan_.units[u].name] = u;
      entered_.assign(plan_.units.size(), false);
      works_.resize(plan_.units.size());
      sends_.resize(plan_.units.size());
      add_after_.resize(plan_.units.size());
      std::vector<at::Tensor> tensors;
      for (const auto& [name, p] : params_) tensors.push_back(p);
      hooks_ = std::make_unique<GradReadyHooks>(tensors, [this](std::size_t k) { onGradReady(k); });
    } else {
      reducer_ = std::make_unique<GradReducer>(params, comm, options.buckets);
    }
  }

  void beginStep() override {
    if (reducer_) reducer_->beginStep();
    micro_step_ = -1;
  }

  void beginMicroStep(bool sync) override {
    if (reducer_) return reducer_->beginMicroStep(sync);
    if (shards_) shards_->afterBackward();  // of the micro-step before
    if (launching_) flush();  // the micro-step before reduce-scattered its units (Note [accumulating in rows])
    ++micro_step_;
    sync_ = sync;
    launching_ = sync || accumulate_rows_;
    next_launch_ = 0;
    for (std::size_t u = 0; u < plan_.units.size(); ++u) {
      pending_[u] = plan_.units[u].params.size() - unused_in_unit_[u];
      ready_[u] = pending_[u] == 0;  // no gradient expected: it waits only for its turn
    }
  }

  void finish() override {
    if (reducer_) {
      reducer_->finish();
      for (std::size_t k = 0; k < params_.size(); ++k) {  // this rank's rows of the averaged gradients
        if (slot_of_[k] < 0) continue;
        auto& slot = optimizer_->slots()[static_cast<std::size_t>(slot_of_[k])];
        slot.grad = params_[k].second.grad().narrow(0, slot.row_begin, slot.param.size(0));
      }
      return;
    }
    if (!sync_) throw Error("DataParallel::finish() on a micro-step that does not sync");
    // Units backward left whole (their input needed no gradient) are freed before their gradients
    // are packed (Note [reduce-scatter after the release]), as beginMicroStep() does.
    if (shards_) shards_->afterBackward();
    flush();
    sync_ = false;
    launching_ = false;
    micro_step_ = -1;  // a next beginMicroStep without beginStep starts a step, never adds to this one
    if (!learned_) learnFromFirstStep();
  }

  double gradNorm() override {
    // Note [gradient norm]: this rank's rows, each parameter padded to rowsPerRank, one all-gather.
    RowSquares squares;
    for (const auto& unit : plan_.units)
      for (const auto k : unit.params) {
        const auto& slot = optimizer_->slots()[static_cast<std::size_t>(slot_of_[k])];
        squares.append(slot.grad.contiguous(), slot.param.size(0));
        squares.padTo(static_cast<std::size_t>(row_offset_of_[k] + rowsPerRank(params_[k].second.size(0), comm_.size())));
      }
    std::vector<double> mine = squares.values();
    std::vector<double> all(mine.size() * static_cast<std::size_t>(comm_.size()));
    comm_.allGatherAsync(mine.data(), all.data(), mine.size(), DType::Float64, "grad/norm")->wait(comm_.timeout());
    std::vector<double> ordered;  // (parameter, row) order, as a replicated rank has them
    for (std::size_t k = 0; k < params_.size(); ++k) {
      if (slot_of_[k] < 0) continue;
      const std::int64_t rows = params_[k].second.size(0);
      for (int r = 0; r < comm_.size(); ++r) {
        const auto at = all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::int64_t>(r) * norm_rows_ + row_offset_of_[k]);
        ordered.insert(ordered.end(), at, at + shardRows(rows, r, comm_.size()).size());
      }
    }
    return normOfRowSquares(ordered);
  }

  void scaleGradients(double factor) override {
    torch::NoGradGuard no_grad;
    for (auto& slot : optimizer_->slots()) slot.grad.mul_(factor);
  }

  void step(double lr) override {
    optimizer_->step(lr);
    if (shards_) return;  // the parameters' rows were updated in place; forward gathers them
    torch::NoGradGuard no_grad;
    for (std::size_t u = 0; u < plan_.units.size(); ++u) {  // parameters whole again, unit by unit
      const auto all = gatherUnit(u, [](const AdamW::Slot& s) { return s.param; }, tags_[u][1].c_str());
      for (const auto k : plan_.units[u].params)
        unpackRows(all, plan_.units[u].numel, offset_of_[k], comm_.size(), params_[k].second.detach());
    }
  }

  bool shardsOptimizer() const override { return true; }
  bool shardsParameters() const override { return shards_ != nullptr; }
  void enterUnit(const std::string& unit) override {
    if (shards_) shards_->enter(unit);
    if (!learned_ && !backward_seen_ && shard_gradients_ && torch::GradMode::is_enabled()) {
      const auto it = unit_index_.find(unit);
      if (it != unit_index_.end() && !entered_[it->second]) entered_[it->second] = true, forward_order_.push_back(it->second);
    }
  }
  void leaveUnit(const std::string& unit, const at::Tensor& input, const at::Tensor& output, bool reads) override {
    if (shards_) shards_->leave(unit, input, output, reads);
  }
  std::vector<AdamW::Rows> parameterRows() const override {
    std::vector<AdamW::Rows> out;
    if (!shards_) return out;
    for (std::size_t k = 0; k < params_.size(); ++k) {
      const auto& [name, p] = params_[k];
      out.push_back({name, shards_->rows(k), shardRows(p.size(0), comm_.rank(), comm_.size()).begin, p.sizes().vec()});
    }
    return out;
  }
  void keepOwnRows(const RowFill& fill) override {
    if (shards_) shards_->adopt(fill);
  }
  void gatherParameters() override {
    if (shards_) shards_->gatherAll();
  }

  std::string describe() const override {
    if (shards_)
      return "dist.shard = parameters (ZeRO-3): each unit's parameters all-gathered before its forward and again "
             "before its backward, freed after each, gradients reduce-scattered, in " +
             std::to_string(shards_->units()) + " unit(s) over " + std::to_string(comm_.size()) + " rank(s)" +
             (prefetch_ ? ", the next unit's gather started while one computes" : "") + "; this rank holds " + std::to_string(shards_->shardBytes() / 4) + " parameter elements and updates " +
             std::to_string(owned_elements_) + " of the " + std::to_string(trainable_elements_) + " trainable ones" +
             accumulation();
    std::string what = shard_gradients_ ? "dist.shard = gradients (ZeRO-2): gradients reduce-scattered"
                                        : "dist.shard = optimizer (ZeRO-1): gradients all-reduced";
    if (reducer_) what += " in " + std::to_string(reducer_->plan().buckets.size()) + " bucket(s)";
    return what + ", parameters all-gathered, in " + std::to_string(plan_.units.size()) + " unit(s) over " +
           std::to_string(comm_.size()) + " rank(s); " + std::to_string(trainable_elements_) +
           " elements per step (frozen parameters are not communicated); this rank updates " +
           std::to_string(owned_elements_) + " of them" + (shard_gradients_ ? accumulation() : std::string());
  }

  MemoryPlan memoryPlan() const override {
    std::int64_t all = 0, largest_unit = 0;
    for (const auto& [name, p] : params_) all += p.numel();
    for (const auto& unit : plan_.units) largest_unit = std::max(largest_unit, unit.numel * comm_.size());
    MemoryPlan plan;
    const std::int64_t parameters = shards_ ? shards_->shardBytes() : 4 * all;
    const std::int64_t gradients = shard_gradients_ ? 4 * owned_elements_ : 4 * trainable_elements_;
    plan.state = parameters + gradients + 8 * owned_elements_;
    // Whole units at once (Note [free, then gather], Note [reduce-scatter after the release]):
    // under parameters the unit in use (and the next one, with dist.prefetch) and its whole
    // gradients, whose packed copy is made once the unit is freed; under gradients one unit's
    // whole gradients and their packed copy; and the packs still travelling.
    if (shards_) plan.in_flight += (prefetch_ ? 2 : 1) * shards_->largestUnitBytes();
    if (shard_gradients_)
      plan.in_flight += static_cast<std::int64_t>((shards_ ? 1 : 2) + max_in_flight_) * 4 * largest_unit;
    if (shard_gradients_ && !accumulate_rows_) plan.between_micro_steps = 4 * trainable_elements_;
    return plan;
  }

  std::string accumulation() const {
    return accumulate_rows_ ? "; under accumulation each micro-step's gradients go to their ranks' rows (dist.accumulate = rows)"
                            : "; under accumulation gradients stay whole until the last micro-step (dist.accumulate = whole)";
  }

 private:
  // Collective. Every rank's rows of unit `u` (what `part` gives of each slot), rank by rank.
  template <typename Part>
  at::Tensor gatherUnit(std::size_t u, Part part, const char* tag) {
    const ShardUnit& unit = plan_.units[u];
    auto send = torch::zeros({unit.numel}, floats_);
    for (std::size_t i = 0; i < unit.params.size(); ++i) {
      const auto& own = part(optimizer_->slots()[static_cast<std::size_t>(slot_of_[unit.params[i]])]);
      send.narrow(0, unit.offsets[i], own.numel()).copy_(own.reshape({-1}));
    }
    auto all = torch::empty({comm_.size() * unit.numel}, floats_);
    allGather(comm_, send, all, tag)->wait(comm_.timeout());
    return all;
  }

  // Collective. Ends a micro-step's reduce-scatters: units whose gradients never all arrived
  // (unused parameters) still take part, in order, and every one completes.
  void flush() {
    for (std::size_t u = 0; u < plan_.units.size(); ++u) ready_[u] = true;
    launchReady(/*force=*/true);
    for (std::size_t u = 0; u < works_.size(); ++u) complete(u);
    in_flight_.clear();
  }

  // Waits for unit u's reduce-scatter, if any, and adds a later micro-step's rows into the step's.
  void complete(std::size_t u) {
    if (works_[u]) works_[u]->wait(comm_.timeout());
    works_[u].reset();
    sends_[u] = at::Tensor();
    if (add_after_[u].defined()) {
      torch::NoGradGuard no_grad;
      shard_grads_[u].add_(add_after_[u]);
      add_after_[u] = at::Tensor();
    }
  }

  // ZeRO-2: called on the backward thread when parameter k's gradient was accumulated.
  void onGradReady(std::size_t k) {
    if (!learned_ && !backward_seen_) {  // the first backward of the run: Note [the first step's order]
      backward_seen_ = true;
      orderFromForward();
    }
    if (!launching_) return;
    const auto u = static_cast<std::size_t>(plan_.unit_of[k]);
    if (unused_[k])
      throw Error("dist.shard = gradients: parameter " + params_[k].first +
                  " received a gradient although it received none in the first step (the parameters a step uses "
                  "must not change during a run)");
    if (pending_[u] == 0)
      throw Error("dist.shard = gradients: parameter " + params_[k].first +
                  " received a second gradient in one backward after its unit was sent");
    got_grad_[k] = true;
    arrival_[k] = arrivals_++;
    if (--pending_[u] == 0) ready_[u] = true;
    launchReady();
    for (std::size_t v = 0; v < plan_.units.size(); ++v)  // drive progress of units in flight
      if (works_[v]) works_[v]->test();
  }

  // Units start in launch_order_, the same on every rank: reverse registration order in the first
  // step, then the order learnt from it on rank 0 (learnFromFirstStep).
  // Under parameters a unit also waits until backward has freed it, unless `force` (Note
  // [reduce-scatter after the release]).
  void launchReady(bool force = false) {
    const std::size_t n = plan_.units.size();
    while (next_launch_ < n && ready_[launch_order_[next_launch_]] &&
           (force || !shards_ || !shards_->whole(gathered_unit_[launch_order_[next_launch_]])))
      launch(launch_order_[next_launch_++]);
  }

  // Note [the first step's order]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
  // Reduce-scatters start in one order on every rank, and until the first step has shown when each
  // unit's gradients arrive (learnFromFirstStep), that order was reverse registration: a unit that
  // backward reaches late (a soft prompt, registered last and used first) or never (an untied
  // output under a classification head) then held back every unit behind it, whole gradients and
  // all, to the end of the first step, and of the first step after every resume. Backward reaches
  // units in the reverse of the order in which the forward entered them, which every rank sees
  // alike (the model's UnitGate, dist.shard = gradients and parameters): the first backward starts
  // units in that order, and units the forward never entered come last.
  void orderFromForward() {
    if (forward_order_.empty()) return;  // no gate told us (a model without one): reverse registration
    std::vector<std::size_t> order(forward_order_.rbegin(), forward_order_.rend());
    for (const auto u : launch_order_)
      if (!entered_[u]) order.push_back(u);
    launch_order_ = std::move(order);
  }

  // Collective, once, after the first step (as DDP rebuilds its buckets). Units that backward
  // completes later than registration order suggests (a soft prompt, registered last but used
  // first) would hold back every unit behind them, and a parameter that never gets a gradient
  // (an untied output layer under a classification head) would hold back its unit until finish():
  // either keeps whole gradients alive. So: a parameter no rank saw a gradient for is not waited
  // for again, and units start in the order in which their last awaited gradient arrived on rank 0
  // (units that await none first).
  void learnFromFirstStep() {
    learned_ = true;
    // The first step's order came from each rank's own forward (Note [the first step's order]):
    // had the ranks seen different ones, same-sized units (every block) would have been summed
    // into each other without a word. Caught here, before the optimizer uses those rows.
    std::uint64_t digest = 0;
    for (const auto u : forward_order_) digest = digest * 1000003u + u + 1;
    const auto mine = static_cast<std::int64_t>(digest >> 1);  // >= 0: its negation is one too
    std::int64_t extremes[2] = {mine, -mine};                   // Max of both: the highest, minus the lowest
    comm_.allReduce(extremes, 2, ReduceOp::Max, "shard/forward_order");
    if (extremes[0] != -extremes[1])
      throw Error("dist.shard: the ranks' first forward passes entered the model's units in different orders, so their "
                  "first reduce-scatters did not match (a model whose structure differs between ranks?)");
    std::vector<std::int32_t> used(params_.size());
    for (std::size_t k = 0; k < params_.size(); ++k) used[k] = got_grad_[k] ? 1 : 0;
    comm_.allReduce(used.data(), used.size(), ReduceOp::Max, "shard/learn_used");
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (plan_.unit_of[k] >= 0 && !used[k]) {
        unused_[k] = true;
        ++unused_in_unit_[static_cast<std::size_t>(plan_.unit_of[k])];
      }
    // A unit is ready when the last gradient it waits for arrives (first, when it waits for none).
    std::vector<std::int64_t> ready_at(plan_.units.size(), -1);
    for (std::size_t k = 0; k < params_.size(); ++k)
      if (plan_.unit_of[k] >= 0 && !unused_[k]) {
        auto& at = ready_at[static_cast<std::size_t>(plan_.unit_of[k])];
        at = std::max(at, arrival_[k]);
      }
    std::vector<std::int64_t> order(launch_order_.begin(), launch_order_.end());
    std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
      return ready_at[static_cast<std::size_t>(a)] < ready_at[static_cast<std::size_t>(b)];
    });
    comm_.broadcast(order.data(), order.size(), 0, "shard/learn_order");  // rank 0's
    for (std::size_t i = 0; i < order.size(); ++i) launch_order_[i] = static_cast<std::size_t>(order[i]);
  }

  // Packs every rank's rows of unit u's whole gradients (averaged: x 1/world) and starts the
  // reduce-scatter that leaves this rank the sum of its rows; the whole gradients are freed.
  void launch(std::size_t u) {
    torch::NoGradGuard no_grad;
    const ShardUnit& unit = plan_.units[u];
    const int world = comm_.size();
    // Each rank's slot of each parameter: its rows x 1/world (the average, folded in as the
    // replicated reducer does: the same float products), then zeros for the padding; a parameter
    // unused this step is all zeros. One pass over the buffer, not a fill, a copy and a scaling.
    auto send = torch::empty({world * unit.numel}, floats_);
    const auto scale = at::scalar_tensor(1.0 / world, at::TensorOptions(at::kDouble));
    for (const auto k : unit.params) {
      auto& p = params_[k].second;
      const std::int64_t rows = p.size(0), row_numel = p.numel() / rows, slot = rowsPerRank(rows, world) * row_numel;
      const auto g = p.grad().defined() ? p.grad().reshape({rows, row_numel}) : at::Tensor();
      for (int r = 0; r < world; ++r) {
        const RowRange theirs = shardRows(rows, r, world);
        const std::int64_t filled = g.defined() ? theirs.size() * row_numel : 0;
        auto into = send.narrow(0, r * unit.numel + offset_of_[k], slot);
        if (filled > 0) {
          auto rows_out = into.narrow(0, 0, filled);
          const auto rows_in = g.narrow(0, theirs.begin, theirs.size()).reshape({-1});
          if (world > 1) at::mul_out(rows_out, rows_in, scale);
          else rows_out.copy_(rows_in);
        }
        if (filled < slot) into.narrow(0, filled, slot - filled).zero_();
      }
      p.mutable_grad() = at::Tensor();
    }
    // The step's first reduce-scatter of a unit writes its rows; a later micro-step's is added to them.
    at::Tensor into = shard_grads_[u];
    if (micro_step_ > 0 && accumulate_rows_) into = add_after_[u] = torch::empty_like(shard_grads_[u]);
    // Under dist.accumulate = rows the sums are another order than the replicated run's anyway
    // (Note [accumulating in rows]): the backend adds in its fastest (Note [ring reduce-scatter]).
    // The ring moves only while it is waited for: only where each reduce-scatter is waited for at once.
    const bool any_order = accumulate_rows_ && max_in_flight_ == 0;
    works_[u] = reduceScatter(comm_, send, into, ReduceOp::Sum, tags_[u][0].c_str(), reduce_dtype_, any_order);
    sends_[u] = send;
    in_flight_.push_back(u);
    // At most max_in_flight_ packed units at a time: a packed unit is as large as its whole gradients.
    while (in_flight_.size() > max_in_flight_) {
      const std::size_t oldest = in_flight_.front();
      in_flight_.pop_front();
      complete(oldest);
    }
  }

  // Note [reduce-scatter after the release]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
  // A unit's packed gradients are as large as the unit. Where collectives progress while a rank
  // computes (NCCL), up to two reduce-scatters stay in flight behind the backward. MPI moves bytes
  // only inside MPI calls, so a reduce-scatter left in flight travels when it is waited for
  // anyway, holding its packed buffer meanwhile: there each one completes as soon as it starts.
  // Under parameters a unit's reduce-scatter also starts only once its gradients are ready and
  // backward has freed the unit's gathered parameters (whichever comes last), not while they are
  // still whole: the
  // unit's parameters, its whole gradients and their packed copy never coexist (155M Llama, 4
  // ranks: the most bytes in large blocks at once 260 -> 114 MiB per rank). Units still start in
  // launch_order_, so every rank starts the same collectives in the same order.
  static constexpr std::size_t kInFlight = 2;
  const std::size_t max_in_flight_ = comm_.progressesWhileComputing() ? kInFlight : 0;

  bool shard_gradients_;
  bool accumulate_rows_;  // dist.accumulate = rows (Note [accumulating in rows])
  bool prefetch_;  // dist.prefetch (parameters only)
  at::ScalarType reduce_dtype_;  // dist.reduce_dtype: what gradients travel and are summed in
  at::TensorOptions floats_;     // float32 where the parameters live
  ShardPlan plan_;
  std::vector<int> slot_of_;                 // per parameter: its optimizer slot, or -1 when frozen
  std::vector<std::int64_t> offset_of_;      // per parameter: element offset in its unit's buffer
  std::vector<std::int64_t> row_offset_of_;  // per parameter: offset in the per-rank row-sum vector
  std::int64_t norm_rows_ = 0;
  std::int64_t owned_elements_ = 0, trainable_elements_ = 0;
  std::vector<std::array<std::string, 2>> tags_;  // per unit: reduce-scatter, parameter all-gather
  std::unique_ptr<GradReducer> reducer_;     // optimizer: the replicated all-reduce of gradients
  // gradients:
  std::vector<at::Tensor> shard_grads_;      // per unit: this rank's rows of the averaged gradients
  std::vector<at::Tensor> sends_;            // per unit: packed gradients until their reduce-scatter ends
  std::deque<std::size_t> in_flight_;        // units whose reduce-scatter may still run, oldest first
  std::vector<std::size_t> pending_;
  std::vector<bool> ready_;
  std::vector<WorkPtr> works_;
  std::vector<at::Tensor> add_after_;        // per unit: a later micro-step's rows, added once received
  std::size_t next_launch_ = 0;
  bool sync_ = false;
  bool launching_ = false;                   // this micro-step reduce-scatters units as they are ready
  int micro_step_ = -1;                      // of the step
  std::vector<std::size_t> launch_order_;     // units, in the order their reduce-scatters start
  std::vector<std::int64_t> arrival_;         // per parameter: when its gradient arrived in the first step
  std::int64_t arrivals_ = 0;
  bool learned_ = false;                      // launch_order_ and unused_ come from the first step
  bool backward_seen_ = false;                // the run's first backward has begun (Note [the first step's order])
  std::vector<std::size_t> forward_order_;    // units, in the order the first forward entered them
  std::vector<bool> entered_;                 // per unit: in forward_order_
  std::map<std::string, std::size_t> unit_index_;
  std::vector<bool> got_grad_, unused_;       // per parameter
  std::vector<std::size_t> unused_in_unit_;
  std::unique_ptr<GradReadyHooks> hooks_;
  std::unique_ptr<ParameterShards> shards_;  // parameters: this rank's rows of every parameter
  std::vector<std::size_t> gathered_unit_;   // parameters: per unit of plan_, the same unit in shards_
};

}  // namespace

std::unique_ptr<DataParallel> makeShardedDataParallel(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                                      Communicator& comm, const DataParallelOptions& options) {
  return std::make_unique<Sharded>(params, comm, options);
}

}  // namespace graft
