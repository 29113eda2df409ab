// Who holds which rows: the shard plan of sharded data parallelism (dist.shard, ZeRO). A pure
// function, the same on every rank, checked across ranks at start-up by its hash (plan_check.h).
//
// Note [shard layout]
// ~~~~~~~~~~~~~~~~~~~
// A parameter's shard is a slab of rows (dim 0; a 0-d parameter is one row): with R rows over N
// ranks, rank r holds rows [r*c, min(R, (r+1)*c)) with c = ceil(R/N), so the last ranks hold fewer
// rows or none. The trainable parameters of one unit (a transformer block "layers.7", the
// embeddings, the final norm, the head, ...) are packed into one flat per-rank buffer in which every
// parameter takes c rows (zero padding past its real rows), so the buffer has the same size and the
// same offsets on every rank: one unit is one all-gather and one reduce-scatter of equal blocks.
// Rank r's block of a unit in the all-gathered buffer holds r's rows of each parameter at that
// parameter's offset. Frozen parameters belong to no unit: they are never communicated.
//
// The layout depends on N; checkpoints do not (they hold every tensor whole, in its global shape),
// so a run resumes on any number of ranks by reading its own rows of each tensor (an HDF5
// hyperslab, whichever ranks' part files hold them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/tensor_rows.h"

namespace graft {

// RowRange, shardRows and rowsPerRank: model/tensor_rows.h (the checkpoint writer uses them too).

// "layers.7.attention.wq.weight" -> "layers.7"; "tok_embeddings.weight" -> "tok_embeddings".
std::string unitOf(const std::string& param_name);

struct ShardParamInfo {
  std::string name;
  std::vector<std::int64_t> shape;
  bool trainable = true;
  std::int64_t rows() const;      // shape[0], or 1 for a 0-d parameter
  std::int64_t rowNumel() const;  // elements per row
};

struct ShardUnit {
  std::string name;
  std::vector<std::size_t> params;    // indices into the parameter list, in registration order
  std::vector<std::int64_t> offsets;  // element offset of each parameter's slot in the per-rank buffer
  std::int64_t numel = 0;             // elements of the per-rank buffer (padding included)
};

struct ShardPlan {
  int world = 1;
  std::vector<ShardUnit> units;  // in registration order of their first parameter
  std::vector<int> unit_of;      // per parameter: its unit, or -1 when frozen
  std::uint64_t hash = 0;        // of names, shapes, world, units and offsets
  // One line per parameter ("name [shape] unit offset" or "name [shape] frozen") to name the first
  // difference between ranks.
  std::vector<std::string> lines;
};

ShardPlan planShards(const std::vector<ShardParamInfo>& params, int world);

}  // namespace graft
