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
// Every gather is a collective: ranks run the same units in the same order (the same model and
// batch shapes), forward and backward alike. Tags name the pass and the unit ("ag/fwd/layers.7",
// "ag/bwd/layers.7") so that a stalled rank is named within dist.timeout_s.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <map>
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
  ParameterShards(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm);
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
  // Bytes of this rank's rows of every parameter (padding included).
  std::int64_t shardBytes() const;
  std::size_t units() const { return plan_.units.size(); }

 private:
  void gather(std::size_t u, const char* pass);
  void release(std::size_t u);

  std::vector<std::pair<std::string, at::Tensor>> params_;
  Communicator& comm_;
  ShardPlan plan_;                         // every parameter, frozen too, in a unit
  std::map<std::string, std::size_t> unit_index_;
  std::vector<at::Tensor> buffers_;        // per unit: this rank's rows of its parameters
  std::vector<bool> whole_;                // per unit
  bool all_whole_ = true;                  // before adopt(), and after gatherAll()
  std::vector<std::array<std::string, 2>> tags_;  // per unit: forward and backward gather
};

// Copies every rank's rows of a parameter from an all-gathered unit buffer (`world` blocks of
// `unit_numel`, the parameter at `offset` in each) into `whole` (Note [shard layout]).
void unpackRows(const at::Tensor& all, std::int64_t unit_numel, std::int64_t offset, int world, at::Tensor whole);

}  // namespace graft
