// One tensor of a checkpoint as one rank holds it: what the data-parallel strategy hands the
// checkpoint writer (parallel/data_parallel.h, checkpoint/writer.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace graft {

// Rows [row_begin, row_begin + rows.size(0)) of the tensor `object` ("/model/<name>",
// "/optimizer/exp_avg/<name>", ...) whose whole shape is `shape`. `rows` may hold no rows (a rank
// that writes none of it). A 0-d tensor is one row.
struct TensorRows {
  std::string object;
  std::vector<std::int64_t> shape;
  std::int64_t row_begin = 0;
  at::Tensor rows;
  // How the ranks hold the tensor: its rows split over them as shardRows splits them
  // (parallel/shard_plan.h), or (false) all of it on rank 0 and none elsewhere.
  bool sharded = false;

  std::int64_t wholeRows() const { return shape.empty() ? 1 : shape[0]; }
  std::int64_t rowCount() const { return rows.dim() == 0 ? 1 : rows.size(0); }
};

}  // namespace graft
