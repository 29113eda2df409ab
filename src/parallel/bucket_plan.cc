#include "parallel/bucket_plan.h"

#include "parallel/plan_check.h"

namespace graft {

BucketPlan planBuckets(const std::vector<ParamInfo>& params, std::size_t first_cap_bytes, std::size_t cap_bytes) {
  BucketPlan plan;
  plan.bucket_of.assign(params.size(), -1);
  std::size_t bytes = 0;
  for (std::size_t k = params.size(); k-- > 0;) {
    const ParamInfo& p = params[k];
    if (!p.trainable) continue;
    const std::size_t cap = plan.buckets.size() <= 1 ? first_cap_bytes : cap_bytes;
    const std::size_t size = static_cast<std::size_t>(p.numel) * p.element_size;
    if (plan.buckets.empty() || (bytes > 0 && bytes + size > cap)) {
      plan.buckets.emplace_back();
      bytes = 0;
    }
    Bucket& b = plan.buckets.back();
    plan.bucket_of[k] = static_cast<int>(plan.buckets.size()) - 1;
    b.params.push_back(k);
    b.offsets.push_back(b.numel);
    b.numel += p.numel;
    bytes += size;
  }
  PlanHash hash;
  plan.lines.reserve(params.size());
  for (std::size_t k = 0; k < params.size(); ++k) {
    plan.lines.push_back(params[k].name + " " + std::to_string(params[k].numel) +
                         (params[k].trainable ? " trainable" : " frozen"));
    hash.add(plan.lines.back());
    hash.add(std::to_string(plan.bucket_of[k]));
  }
  for (const Bucket& b : plan.buckets) hash.add(std::to_string(b.numel));
  plan.hash = hash.value();
  return plan;
}

}  // namespace graft
