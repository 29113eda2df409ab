// dist.shard = parameters (ZeRO-3, FSDP's full shard): between uses, each rank holds only its rows
// of every parameter (Note [shard layout] in shard_plan.h; frozen parameters too), and a unit's
// parameters are whole only while that unit computes, in forward and again in backward.
//
// Note [freeing parameters]
// ~~~~~~~~~~~~~~~~~~~~~~~~~
// A parameter stays the same tensor all run long (the module, autograd's graph and the gradient
// hooks refer to it); only its storage comes and goes. release() hands the storage's memory back
// and leaves it 0 bytes long; gather() allocates it again and fills it through an alias of the
// storage, so the parameter's version counter does not move and what autograd saved in forward
// (the parameter itself) reads the refilled values in backward.
//
// In backward, a hook on a unit's output gradient gathers the unit before its first node runs,
// and a hook on its input gradient releases it after its last: the input's gradient is complete
// only once every node of the unit that leads to it has run. That covers every node that reads a
// parameter's values as long as no such node leads to weights only (a weight computed from two
// parameters would); no op in model/transformer.cc does. A unit whose input needs no gradient
// (the first block under frozen embeddings, a head on frozen features) stays whole until the
// micro-step's backward ends (afterBackward).
//
// Note [free, then gather]
// ~~~~~~~~~~~~~~~~~~~~~~~~
// In a chain of units the input of unit u is the output of the unit before, v: one tensor, whose
// gradient is what tells both that u's backward is done and that v's may start. Hooks on a tensor
// run in the order they were registered, and v's (gather) was registered first, in v's forward:
// so v was gathered while u was still whole, two units at once. When u's input is v's output,
// v's gather moves into u's release hook, after the release: one unit whole at a time (155M
// Llama, 4 ranks: the most bytes in large blocks at once 213 -> 164 MiB per rank). Where the
// tensors differ, each hook stays where it was.
//
// Every gather is a collective: ranks run the same units in the same order (the same model and
// batch shapes), forward and backward alike. Tags name the pass and the unit ("ag/fwd/layers.7",
// "ag/bwd/layers.7") so that a stalled rank is named within dist.timeout_s.
//
// Note [prefetch]
// ~~~~~~~~~~~~~~~
// With dist.prefetch, the gather of the unit that comes next is started as soon as the current
// one is whole, so that it travels while the current unit computes. Which unit comes next is
// learned from the order units were used in (forward and backward separately): unit v follows u
// when v was used right after u every time so far; a unit seen after two different units predicts
// nothing. Every rank sees the same order, so every rank starts the same gathers in the same
// order, as collectives must. A prefetched gather is finished (and its unit made whole) at the
// next use of any unit, and by afterBackward(), before any optimizer step changes the rows it
// reads; the first unit of a forward is never prefetched, so no gather crosses a step. A
// prefetch changes when rows travel, not what arrives: results are the same bits.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "communicator.h"
#include "model/parameter_storage.h"
#include "parallel/shard_plan.h"

namespace graft {

class ParameterShards {
 public:
  // `params`: every named parameter in registration order, whole (as loaded). Nothing is freed
  // until adopt().
  ParameterShards(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm, bool prefetch = true);
  ParameterShards(const ParameterShards&) = delete;
  ParameterShards& operator=(const ParameterShards&) = delete;

  // This rank's rows of parameter k, a view into its unit's buffer (what the optimizer updates).
  at::Tensor rows(std::size_t k) const;
  // Copies this rank's rows out of the whole parameters (after they were broadcast or loaded),
  // then frees every parameter. A parameter built without memory (model/parameter_storage.h) gets
  // its rows from `fill` instead, so it is never whole.
  void adopt(const RowFill& fill = {});
  // Collective. Every parameter whole on every rank, and kept whole from now on.
  void gatherAll();
  // Around a unit's use (model/transformer.h UnitGate). Collective when the unit is not whole.
  void enter(const std::string& unit);
  void leave(const std::string& unit, const at::Tensor& input, const at::Tensor& output, bool backward_reads_params);
  // Frees what a backward left whole (units whose input needed no gradient).
  void afterBackward();
  // Called right after backward frees a unit (from autograd's thread): the reduce-scatters of
  // gradients wait for it (Note [reduce-scatter after the release] in sharded.cc).
  void onReleasedInBackward(std::function<void()> f) { released_ = std::move(f); }
  // Bytes of this rank's rows of every parameter (padding included).
  std::int64_t shardBytes() const;
  // Bytes of the largest unit when gathered whole (every rank's rows).
  std::int64_t largestUnitBytes() const;
  std::size_t units() const { return plan_.units.size(); }
  // The index of the unit named `unit` (the plan holds every parameter, so every unit of a plan
  // over the trainable ones is here too), or none.
  std::optional<std::size_t> unitIndex(const std::string& unit) const;
  // Whether unit `u` is gathered now, to be freed after its use (false for every unit after
  // gatherAll()).
  bool whole(std::size_t u) const { return !all_whole_ && whole_[u]; }
  // Gathers that a prefetch had started (Note [prefetch]), and all gathers, so far.
  std::int64_t prefetchedGathers() const { return prefetched_; }
  std::int64_t gathers() const { return gathers_; }

 private:
  enum Pass { kForward = 0, kBackward = 1 };
  void gather(std::size_t u, Pass pass);
  void release(std::size_t u);
  // Note [prefetch]: records that `u` is used now, then starts the gather of what follows it.
  void used(std::size_t u, Pass pass);
  void finishPrefetch();
  void gatherForBackward(std::size_t u);
  struct InFlight;
  InFlight startGather(std::size_t u, Pass pass);
  void finishGather(InFlight& flight);
  // Elements of parameter i's slot (its c rows, padded) in unit u's per-rank buffer.
  std::int64_t slotNumel(std::size_t u, std::size_t i) const;

  std::vector<std::pair<std::string, at::Tensor>> params_;
  Communicator& comm_;
  ShardPlan plan_;                         // every parameter, frozen too, in a unit
  std::map<std::string, std::size_t> unit_index_;
  std::vector<at::Tensor> buffers_;        // per unit: this rank's rows of its parameters
  std::vector<bool> whole_;                // per unit
  bool all_whole_ = true;                  // before adopt(), and after gatherAll()
  std::vector<std::array<std::string, 2>> tags_;  // per unit: forward and backward gather
  // Note [prefetch]
  bool prefetch_;
  std::array<std::vector<long>, 2> next_;  // per pass, per unit: the unit used next (-1 unknown, -2 not one)
  std::array<long, 2> last_{-1, -1};       // per pass: the unit used last
  long first_unit_ = -1;                   // the first unit a forward uses
  struct InFlight {
    std::size_t unit;
    at::Tensor block;            // the unit's parameters, whole (Note [gathered straight into place])
    std::vector<WorkPtr> works;  // one all-gather per parameter
  };
  std::unique_ptr<InFlight> in_flight_;
  std::int64_t prefetched_ = 0, gathers_ = 0;
  std::function<void()> released_;
  // Note [free, then gather]: the unit that left last, its output, and whether its gather moved
  // into the release hook of the unit that took that output as input.
  struct Pending {
    // Weak: held strongly, the last unit's output (the logits, micro_batch x seq_len x vocab)
    // would outlive the loss's forward into the whole backward.
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> output;
    std::size_t unit;
    std::shared_ptr<bool> moved;
  };
  std::optional<Pending> gather_pending_;
};

}  // namespace graft
