#include "train/checkpointing.h"

#include <torch/torch.h>

#include <map>

#include "checkpoint/manifest.h"
#include "io/hdf5.h"
#include "parallel/heartbeat.h"
#include "parallel/shard_plan.h"

namespace graft {

OptimizerWriter writeOptimizerParts(Communicator& comm, const std::string& dir, std::int64_t step,
                                    std::shared_ptr<const AdamW> optimizer, double limit_s) {
  const int rank = comm.rank(), world = comm.size();
  std::uint64_t mine_bytes = 0;
  for (const auto& s : optimizer->slots()) mine_bytes += static_cast<std::uint64_t>(s.param.numel()) * 8;
  auto manifest = std::make_shared<std::string>();
  runWithHeartbeat(comm, "ckpt/part", limit_s,
                   "part " + std::to_string(rank) + " of checkpoint " + std::to_string(step) + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact",
                   [=] {
                     torch::NoGradGuard no_grad;  // grad mode is per thread
                     *manifest = writeCheckpointPart(dir, step, rank, world, mine_bytes,
                                                     [&](H5File& part) { optimizer->savePart(part, "/optimizer"); });
                   });
  // (crc, bytes) of both moments of every slot, in slot order, from every rank.
  std::map<std::string, ManifestEntry> entries;
  for (const auto& e : parseManifest(*manifest, checkpointPartName(step, rank, world))) entries[e.object] = e;
  std::vector<std::uint64_t> sums;
  for (const auto& s : optimizer->slots())
    for (const std::string object : {"/optimizer/exp_avg/" + s.name, "/optimizer/exp_avg_sq/" + s.name}) {
      sums.push_back(entries.at(object).crc32);
      sums.push_back(entries.at(object).bytes);
    }
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums.size() * static_cast<std::size_t>(world));
  comm.allGather(sums.data(), sums.size() * sizeof(std::uint64_t), all->data(), "ckpt/part_checksums");
  if (rank != 0) return {};
  const std::size_t per_rank = sums.size();
  return {0, [optimizer, all, per_rank, step, world](H5File& file) {
            optimizer->saveIndex(file, "/optimizer", [&](std::size_t slot, const std::string& object) {
              const auto& s = optimizer->slots()[slot];
              const std::size_t which = object.find("/exp_avg_sq/") != std::string::npos ? 1 : 0;
              std::vector<AdamW::Part> parts;
              for (int r = 0; r < world; ++r) {
                const RowRange rows = shardRows(s.global_shape[0], r, world);
                const std::size_t at = static_cast<std::size_t>(r) * per_rank + (slot * 2 + which) * 2;
                parts.push_back({checkpointPartName(step, r, world), rows.begin, rows.end,
                                 static_cast<std::uint32_t>((*all)[at]), (*all)[at + 1]});
              }
              return parts;
            });
          }};
}

OptimizerWriter wholeOptimizer(std::shared_ptr<const AdamW> optimizer) {
  return {optimizer->stateBytes(), [optimizer](H5File& file) { optimizer->save(file, "/optimizer"); }};
}

}  // namespace graft
