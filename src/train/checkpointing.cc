#include "train/checkpointing.h"

#include <torch/torch.h>

#include <cstdio>
#include <chrono>
#include <map>
#include <thread>

#include "checkpoint/manifest.h"
#include "io/hdf5.h"
#include "parallel/heartbeat.h"
#include "parallel/shard_plan.h"
#include "util/error.h"

namespace graft {

PartWriters writeParts(Communicator& comm, const std::string& dir, std::int64_t step, std::shared_ptr<const AdamW> optimizer,
                       std::shared_ptr<const std::vector<AdamW::Rows>> model_rows, double limit_s) {
  const int rank = comm.rank(), world = comm.size();
  if (!model_rows) model_rows = std::make_shared<const std::vector<AdamW::Rows>>();
  std::uint64_t mine_bytes = 0;
  for (const auto& s : optimizer->slots()) mine_bytes += static_cast<std::uint64_t>(s.param.numel()) * 8;
  for (const auto& r : *model_rows) mine_bytes += static_cast<std::uint64_t>(r.rows.numel()) * 4;
  auto manifest = std::make_shared<std::string>();
  runWithHeartbeat(comm, "ckpt/part", limit_s,
                   "part " + std::to_string(rank) + " of checkpoint " + std::to_string(step) + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact",
                   [=] {
                     torch::NoGradGuard no_grad;  // grad mode is per thread
                     *manifest = writeCheckpointPart(dir, step, rank, world, mine_bytes, [&](H5File& part) {
                       optimizer->savePart(part, "/optimizer");
                       for (const auto& r : *model_rows) part.writeTensor("/model/" + r.name, r.rows);
                     });
                   });
  // (crc, bytes) of every tensor of the part, in a fixed order (moments slot by slot, then the
  // model's tensors), from every rank.
  std::map<std::string, ManifestEntry> entries;
  for (const auto& e : parseManifest(*manifest, checkpointPartName(step, rank, world))) entries[e.object] = e;
  std::vector<std::uint64_t> sums;
  auto add = [&](const std::string& object) {
    sums.push_back(entries.at(object).crc32);
    sums.push_back(entries.at(object).bytes);
  };
  for (const auto& s : optimizer->slots())
    for (const std::string& object : {"/optimizer/exp_avg/" + s.name, "/optimizer/exp_avg_sq/" + s.name}) add(object);
  for (const auto& r : *model_rows) add("/model/" + r.name);
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums.size() * static_cast<std::size_t>(world));
  comm.allGather(sums.data(), sums.size() * sizeof(std::uint64_t), all->data(), "ckpt/part_checksums");
  if (rank != 0) return {};
  const std::size_t per_rank = sums.size();
  // Rank r's rows of a tensor with `rows` rows whose (crc, bytes) sit at `index` of its sums.
  auto parts_of = [all, per_rank, step, world](std::int64_t rows, std::size_t index) {
    std::vector<AdamW::Part> parts;
    for (int r = 0; r < world; ++r) {
      const RowRange mine = shardRows(rows, r, world);
      const std::size_t at = static_cast<std::size_t>(r) * per_rank + index * 2;
      parts.push_back({checkpointPartName(step, r, world), mine.begin, mine.end, static_cast<std::uint32_t>((*all)[at]), (*all)[at + 1]});
    }
    return parts;
  };
  PartWriters out;
  out.optimizer = {0, [optimizer, parts_of](H5File& file) {
                     optimizer->saveIndex(file, "/optimizer", [&](std::size_t slot, const std::string& object) {
                       const std::size_t which = object.find("/exp_avg_sq/") != std::string::npos ? 1 : 0;
                       return parts_of(optimizer->slots()[slot].global_shape[0], slot * 2 + which);
                     });
                   }};
  if (!model_rows->empty()) {
    const std::size_t first = optimizer->slots().size() * 2;
    out.model = {0, [model_rows, parts_of, first](H5File& file) {
                   for (std::size_t i = 0; i < model_rows->size(); ++i) {
                     const auto& r = (*model_rows)[i];
                     writeRowIndex(file, "/model/" + r.name, r.global_shape, parts_of(r.global_shape[0], first + i));
                   }
                 }};
  }
  return out;
}

OptimizerWriter writeOptimizerParts(Communicator& comm, const std::string& dir, std::int64_t step,
                                    std::shared_ptr<const AdamW> optimizer, double limit_s) {
  return writeParts(comm, dir, step, std::move(optimizer), nullptr, limit_s).optimizer;
}

OptimizerWriter wholeOptimizer(std::shared_ptr<const AdamW> optimizer) {
  return {optimizer->stateBytes(), [optimizer](H5File& file) { optimizer->save(file, "/optimizer"); }};
}

namespace {

// Collective (every rank's RNG state is gathered).
TrainingState snapshot(Communicator& comm, const TrainConfig& c, std::int64_t step, RunCounters counters) {
  TrainingState state;
  state.step = step;
  state.tokens_seen = counters.tokens_seen;
  state.skipped_steps = counters.skipped_steps;
  state.world_size = comm.size();
  state.seed = c.seed;
  state.next_batch = step;
  state.config = c.resolved();
  state.transfer = c.transfer;
  state.base_model = c.model_path;
  at::Tensor mine;
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    mine = gen.get_state();
  }
  auto all = torch::empty({comm.size(), mine.numel()}, torch::kUInt8);
  comm.allGather(mine.data_ptr(), static_cast<std::size_t>(mine.numel()), all.data_ptr(), "ckpt/rng");
  state.rng_states = all;
  return state;
}

}  // namespace

void saveRunCheckpoint(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                       const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log) {
  const auto start = std::chrono::steady_clock::now();
  const std::string dir = c.run_dir + "/checkpoints";
  auto path = std::make_shared<std::string>();
  // dist.shard = parameters: each rank's rows of the model's tensors (those the checkpoint holds)
  // go into its part too, and the checkpoint maps them; nobody gathers the whole model.
  std::shared_ptr<std::vector<AdamW::Rows>> model_rows;
  if (dp.shardsParameters()) {
    model_rows = std::make_shared<std::vector<AdamW::Rows>>();
    const bool adapter_only = c.transfer.adapterOnly();
    for (auto& r : dp.parameterRows())
      if (!adapter_only || model->named_parameters()[r.name].requires_grad()) model_rows->push_back(std::move(r));
  }
  // Sharded: every rank writes its rows first (collective); rank 0's file then maps them.
  const PartWriters parts = dp.shardsOptimizer()
                                ? writeParts(comm, dir, step, dp.sharedOptimizer(), model_rows, c.slow_phase_timeout_s)
                                : PartWriters{wholeOptimizer(dp.sharedOptimizer()), {}};
  TrainingState state = snapshot(comm, c, step, counters);
  std::function<void()> write;
  if (comm.rank() == 0)
    // The writer owns what it reads (tensor handles are shared, not copied): it may outlive the
    // caller only on the way to exiting after an error.
    write = [dir, model, parts, schedule, state, keep = c.keep_last, delay = c.slow_checkpoint_s, path]() mutable {
      torch::NoGradGuard no_grad;  // grad mode is per thread
      if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
      *path = writeCheckpoint(dir, model, parts.optimizer, schedule, state, parts.model);
      pruneCheckpoints(dir, keep, state.step);
    };
  runWithHeartbeat(comm, "ckpt/write", c.slow_phase_timeout_s, "checkpoint of step " + std::to_string(step) + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact", std::move(write));
  if (comm.rank() == 0)
    log.main("checkpoint: " + *path + " (" +
             std::to_string(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()).substr(0, 5) +
             " s)");
}

Resumed resumeRun(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp, Logger& log) {
  const std::string dir = c.run_dir + "/checkpoints";
  // Rank 0 picks the newest complete checkpoint whose tensors match their manifest (damaged ones
  // are skipped); reading every byte of a big one takes a while, so the others keep a heartbeat.
  auto found = std::make_shared<std::int64_t>(-1);
  std::function<void()> verify;
  if (comm.rank() == 0)
    verify = [dir, log, found] {
      for (const auto& candidate : completeCheckpoints(dir)) {
        try {
          verifyCheckpoint(candidate);
        } catch (const InputError& e) {
          // Set aside, so that pruning never counts it as one of the checkpoints it keeps.
          const bool moved = ::rename(candidate.c_str(), (candidate + ".damaged").c_str()) == 0;
          log.info(std::string("skipping damaged checkpoint: ") + e.what() +
                   (moved ? "; renamed to " + candidate + ".damaged" : std::string()));
          continue;
        }
        *found = std::stoll(candidate.substr(candidate.size() - 11, 8));
        return;
      }
    };
  runWithHeartbeat(comm, "resume/verify", c.slow_phase_timeout_s, "verifying the checkpoints in " + dir, "",
                   std::move(verify));
  std::int64_t step[1] = {*found};
  comm.allReduce(step, 1, ReduceOp::Max, "resume/step");
  if (step[0] < 0) return {};
  // Every rank reads it (at its own file-system speed), again with a heartbeat. The reader works
  // on handles that share this run's tensors; the step counts are copied back after.
  const std::string path = dir + "/" + checkpointName(step[0]);
  auto read = std::make_shared<TrainingState>();
  AdamW& optimizer = dp.optimizer();
  auto into = std::make_shared<AdamW>(optimizer);
  runWithHeartbeat(comm, "resume/read", c.slow_phase_timeout_s, "reading " + path, "",
                   [path, model, into, read]() mutable { *read = readCheckpoint(path, model, *into); });
  optimizer.setStepCount(into->stepCount());
  for (std::size_t i = 0; i < optimizer.slots().size(); ++i) optimizer.slots()[i].steps = into->slots()[i].steps;
  const TrainingState& state = *read;
  if (state.world_size == comm.size() && state.rng_states.defined() && state.rng_states.size(0) == comm.size()) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state.rng_states[comm.rank()].contiguous());
  }
  log.main("resuming from " + path + " at step " + std::to_string(state.step) + " (saved with " +
           std::to_string(state.world_size) + " ranks, now " + std::to_string(comm.size()) + ")");
  return {state.step, {state.tokens_seen, state.skipped_steps}};
}

}  // namespace graft
