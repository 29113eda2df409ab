// The data-parallel strategy: who holds what, and everything that depends on it. The training
// step calls it the same way whatever it is, and never asks which kind it is:
//
//   dp->beginStep();
//   for each micro-step m:  dp->beginMicroStep(m == last);  forward; backward;
//   dp->finish();                       // gradients averaged over the ranks (what this rank needs)
//   norm = dp->gradNorm();  dp->scaleGradients(clip / norm);
//   dp->step(lr);                       // AdamW on what this rank owns; parameters whole again
//
// dist.shard (Note [shard layout] in shard_plan.h says which rows a rank owns):
//   none       Replicated: every rank holds parameters, gradients and optimizer state whole;
//              gradients are all-reduced in buckets during backward (grad_reducer.h).
//   optimizer  ZeRO-1: gradients all-reduced as above; each rank keeps AdamW moments of its own
//              rows only (8 bytes/param / N), updates them, and one all-gather per unit makes the
//              parameters whole again.
//   gradients  ZeRO-2: as optimizer, but gradients are reduce-scattered per unit during backward
//              (a unit goes as soon as all its gradients are ready) and whole gradients are freed
//              at once: each rank keeps the averaged gradient of its own rows only. With gradient
//              accumulation (Note [accumulating in rows]) every micro-step does so by default.
//   parameters ZeRO-3: as gradients, and each rank keeps only its rows of the parameters (frozen
//              ones too); a unit is all-gathered just before its forward and its backward and
//              freed after each (parameter_shards.h).
//
// Results do not depend on the mode: the gradient norm is always computed the same way (Note
// [gradient norm]) and AdamW is elementwise, so at one and two ranks every mode gives the same bits
// (tests/mpi/data_parallel_test.cc, tests/e2e/shard_test.cc), with one exception: gradients and
// parameters accumulating over micro-steps in rows sum in another order (within 1e-6; with
// dist.accumulate = whole, the same bits).
//
// Note [accumulating in rows]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Under gradient accumulation a replicated rank adds each micro-step's gradients into whole
// gradients and all-reduces their sum once. Sharded the same way (dist.accumulate = whole), every
// rank holds whole gradients (4 bytes per parameter) between micro-steps, which is what ZeRO-2/3
// exist to avoid. With dist.accumulate = rows (the default) each micro-step reduce-scatters each
// unit as its gradients are ready, as FSDP does, and adds the result into the rank's rows: whole
// gradients live for at most a few units at a time, at the price of one reduce-scatter per
// micro-step instead of per step, and of another order of summation (the ranks' sums of each
// micro-step, added up, rather than the sum over ranks of each rank's micro-steps).
//
// Collective: construction (plan check), broadcastParameters, finish, gradNorm, step, and backward
// on a syncing micro-step (on every micro-step, and beginMicroStep too, under gradients and
// parameters sharding with dist.accumulate = rows). Devices and communicators stay out
// of it: tensors live where the model's parameters live, and collectives go through Communicator.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model/tensor_rows.h"
#include "communicator.h"
#include "model/parameter_storage.h"
#include "optim/adamw.h"
#include "parallel/grad_reducer.h"

namespace graft {

class UnitGate;  // model/transformer.h

struct DataParallelOptions {
  std::string shard = "none";  // none | optimizer | gradients | parameters
  GradReducerOptions buckets;  // none and optimizer: the all-reduce buckets
  AdamWOptions adamw;
  bool prefetch = true;  // parameters: start the next unit's gather while this one computes (Note [prefetch])
  bool accumulate_rows = true;  // gradients, parameters: reduce-scatter every micro-step (Note [accumulating in rows])
};

// Note [gradient norm]
// ~~~~~~~~~~~~~~~~~~~~
// The global gradient norm decides clipping, so a norm that depended on who holds which rows would
// make sharded runs drift from replicated ones. It is defined once: per trainable parameter (in
// registration order), per row, the sum of squares in double precision, summed serially in row
// order; then all rows summed serially in (parameter, row) order. A row's sum is the same wherever
// it is computed, so a sharded rank computes its own rows, one all-gather of those per-row sums
// (rows, not elements: small) gives every rank all of them, and every rank adds them up in the
// global order: bit for bit the norm of the replicated run.
class DataParallel {
 public:
  virtual ~DataParallel() = default;
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Collective: every rank starts from rank 0's parameters (all of them, frozen included).
  void broadcastParameters();
  virtual void beginStep() = 0;
  virtual void beginMicroStep(bool sync) = 0;
  // Collective. Afterwards the gradients this rank's optimizer reads hold the average over ranks.
  virtual void finish() = 0;
  // Collective. sqrt of the sum of squared averaged gradients (Note [gradient norm]).
  virtual double gradNorm() = 0;
  virtual void scaleGradients(double factor) = 0;
  // Collective. One AdamW update of what this rank owns; every rank ends with the same parameters.
  virtual void step(double lr) = 0;
  AdamW& optimizer() { return *optimizer_; }
  std::shared_ptr<AdamW> sharedOptimizer() { return optimizer_; }
  // True when each rank's optimizer holds only its rows (shardRows of every parameter): then every
  // rank writes its rows into a checkpoint part of its own (train/checkpointing.h).
  virtual bool shardsOptimizer() const = 0;
  // dist.shard = parameters (ZeRO-3) holds only this rank's rows of each parameter between uses
  // (parameter_shards.h); the model calls enterUnit/leaveUnit around each use of a unit
  // (model/transformer.h UnitGate). The others hold them whole and ignore these calls.
  virtual bool shardsParameters() const { return false; }
  virtual void enterUnit(const std::string&) {}
  virtual void leaveUnit(const std::string&, const at::Tensor& /*input*/, const at::Tensor& /*output*/,
                         bool /*backward_reads_params*/) {}
  // This rank's rows of every parameter, in registration order (parameters only; else empty).
  virtual std::vector<AdamW::Rows> parameterRows() const { return {}; }
  // What this rank writes of a checkpoint (Note [one checkpoint writer] in checkpoint/checkpoint.h):
  // its rows of every parameter (the trainable ones only with `trainable_only`: an adapter run's),
  // then of both AdamW moments of every slot, in the same order on every rank. Replicated, rank 0
  // holds every tensor whole and the others none of it; sharded, each rank its rows (shardRows) of
  // the moments and of the parameters (of its whole copy under optimizer and gradients sharding).
  // Views of the live tensors, not copies: training changes them in place.
  std::vector<TensorRows> checkpointRows(bool trainable_only) const;
  // Once, after the parameters were broadcast or loaded whole: each rank keeps its rows of them
  // and frees the rest. Parameters built without memory (model/parameter_storage.h) are read
  // from `fill`, this rank's rows only (parameters only; the others need whole parameters).
  virtual void keepOwnRows(const RowFill& /*fill*/ = {}) {}
  // Collective. Every parameter whole on every rank from now on (to inspect or export them).
  virtual void gatherParameters() {}
  // One line for the log: what is communicated and what this rank holds.
  virtual std::string describe() const = 0;
  // What this rank's training state should take by the ZeRO formulas (docs/sharding.md), in bytes:
  // `state` parameters, gradients and AdamW moments as this mode holds them; `in_flight` the whole
  // units a step holds at once besides (gathered parameters, whole gradients and packed buffers of
  // the units being reduce-scattered); `between_micro_steps` what gradient accumulation adds
  // (whole gradients kept from one micro-step to the next). Activations are not included.
  struct MemoryPlan {
    std::int64_t state = 0, in_flight = 0, between_micro_steps = 0;
  };
  virtual MemoryPlan memoryPlan() const = 0;

 protected:
  DataParallel(const std::vector<std::pair<std::string, at::Tensor>>& params, Communicator& comm)
      : params_(params), comm_(comm) {}
  std::vector<std::pair<std::string, at::Tensor>> params_;  // every parameter, registration order
  Communicator& comm_;
  std::shared_ptr<AdamW> optimizer_;
};

// `params`: the model's named parameters in registration order; those with requires_grad() false
// are frozen (never communicated after the initial broadcast, no optimizer state).
std::unique_ptr<DataParallel> makeDataParallel(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                               Communicator& comm, const DataParallelOptions& options);

// The model's uses of its units passed on to `dp` (enterUnit / leaveUnit), as a gate for
// Transformer::setUnitGate; `dp` must outlive it.
std::shared_ptr<UnitGate> unitGateOf(DataParallel& dp);

// The sharded strategies (sharded.cc); makeDataParallel chooses.
std::unique_ptr<DataParallel> makeShardedDataParallel(const std::vector<std::pair<std::string, at::Tensor>>& params,
                                                      Communicator& comm, const DataParallelOptions& options);

// Note [gradient norm]: the per-row sums of squares of gradients, in the order appended. On the
// CPU a row's sum is serial, in double; on a GPU it is computed there in double (deterministic on
// one device, so every dist.shard mode still agrees, though not bit for bit with the CPU), and all
// of them reach the host in one copy when values() is called: no synchronisation per parameter.
class RowSquares {
 public:
  // A contiguous float32 gradient viewed as `rows` rows.
  void append(const at::Tensor& grad, std::int64_t rows);
  // Zeros until there are `n` values (no-op when there are as many already).
  void padTo(std::size_t n);
  std::vector<double> values();

 private:
  void flush();
  std::vector<double> host_;
  std::vector<at::Tensor> pending_;  // device sums after host_, not yet copied
  std::size_t size_ = 0;
};
// The serial sum of `row_squares`, square-rooted.
double normOfRowSquares(const std::vector<double>& row_squares);

}  // namespace graft
