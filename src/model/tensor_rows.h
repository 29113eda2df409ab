// How a tensor's rows are spread over ranks (Note [shard layout] in parallel/shard_plan.h), and one
// tensor of a checkpoint as one rank holds it: what the data-parallel strategy hands the checkpoint
// writer (parallel/data_parallel.h, checkpoint/checkpoint.h). Below both, so that each can use it.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace graft {

struct RowRange {
  std::int64_t begin = 0, end = 0;
  std::int64_t size() const { return end > begin ? end - begin : 0; }
  bool operator==(const RowRange& o) const { return begin == o.begin && end == o.end; }
};

// ceil(rows / world): the rows every rank's slot for this parameter holds, padding included.
inline std::int64_t rowsPerRank(std::int64_t rows, int world) { return (rows + world - 1) / world; }
// Rows of `rows` that rank `rank` of `world` holds (Note [shard layout] in parallel/shard_plan.h):
// with c = ceil(rows / world), rank r holds [r*c, min(rows, (r+1)*c)).
inline RowRange shardRows(std::int64_t rows, int rank, int world) {
  const std::int64_t c = rowsPerRank(rows, world);
  return {std::min(rows, rank * c), std::min(rows, (rank + 1) * c)};
}

// Rows [row_begin, row_begin + rows.size(0)) of the tensor `object` ("/model/<name>",
// "/optimizer/exp_avg/<name>", ...) whose whole shape is `shape`. `rows` may hold no rows (a rank
// that writes none of it). A 0-d tensor is one row.
struct TensorRows {
  std::string object;
  std::vector<std::int64_t> shape;
  std::int64_t row_begin = 0;
  at::Tensor rows;
  // How the ranks hold the tensor: its rows split over them as shardRows splits them, or (false)
  // all of it on rank 0 and none elsewhere.
  bool sharded = false;

  std::int64_t wholeRows() const { return shape.empty() ? 1 : shape[0]; }
  std::int64_t rowCount() const { return rows.dim() == 0 ? 1 : rows.size(0); }
};

}  // namespace graft
