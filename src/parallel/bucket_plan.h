// Which gradient goes into which communication bucket: a pure function, the same on every rank,
// checked across ranks at start-up by its hash (GradReducer::verifyAcrossRanks).
//
// Parameters are taken in reverse registration order (the order their gradients become ready in
// backward: last layer first); frozen parameters get no bucket. The first bucket holds up to
// `first_cap_bytes` (small, so communication starts early), the others up to `cap_bytes`; a
// parameter larger than the cap gets a bucket of its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace graft {

struct ParamInfo {
  std::string name;
  std::int64_t numel = 0;
  std::size_t element_size = 4;
  bool trainable = true;
};

struct Bucket {
  std::vector<std::size_t> params;    // indices into the ParamInfo list, in bucket order
  std::vector<std::int64_t> offsets;  // element offset of each parameter in the bucket
  std::int64_t numel = 0;
};

struct BucketPlan {
  std::vector<Bucket> buckets;
  std::vector<int> bucket_of;  // per parameter: its bucket, or -1 when frozen
  std::uint64_t hash = 0;      // of names, sizes, buckets and offsets
  // One line per parameter ("name numel trainable|frozen"), to name the first difference between ranks.
  std::vector<std::string> lines;
};

BucketPlan planBuckets(const std::vector<ParamInfo>& params, std::size_t first_cap_bytes, std::size_t cap_bytes);

}  // namespace graft
