#include "parallel/shard_plan.h"

#include <algorithm>
#include <map>

#include "parallel/plan_check.h"

namespace graft {

std::string unitOf(const std::string& param_name) {
  const auto dot = param_name.find('.');
  const std::string head = param_name.substr(0, dot);
  if (head == "layers" && dot != std::string::npos) {
    const auto next = param_name.find('.', dot + 1);
    return param_name.substr(0, next);
  }
  return head;
}

std::int64_t ShardParamInfo::rows() const { return shape.empty() ? 1 : shape[0]; }

std::int64_t ShardParamInfo::rowNumel() const {
  std::int64_t n = 1;
  for (std::size_t d = 1; d < shape.size(); ++d) n *= shape[d];
  return n;
}

ShardPlan planShards(const std::vector<ShardParamInfo>& params, int world) {
  ShardPlan plan;
  plan.world = world;
  plan.unit_of.assign(params.size(), -1);
  std::map<std::string, int> index;
  for (std::size_t k = 0; k < params.size(); ++k) {
    const ShardParamInfo& p = params[k];
    if (!p.trainable) continue;
    const std::string unit = unitOf(p.name);
    auto [at, added] = index.emplace(unit, static_cast<int>(plan.units.size()));
    if (added) plan.units.push_back({unit, {}, {}, 0});
    ShardUnit& u = plan.units[static_cast<std::size_t>(at->second)];
    plan.unit_of[k] = at->second;
    u.params.push_back(k);
    u.offsets.push_back(u.numel);
    u.numel += rowsPerRank(p.rows(), world) * p.rowNumel();
  }
  PlanHash hash;
  hash.add("world " + std::to_string(world));
  for (std::size_t k = 0; k < params.size(); ++k) {
    std::string shape;
    for (const auto d : params[k].shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    std::string line = params[k].name + " [" + shape + "]";
    if (plan.unit_of[k] < 0) {
      line += " frozen";
    } else {
      const ShardUnit& u = plan.units[static_cast<std::size_t>(plan.unit_of[k])];
      const auto i = static_cast<std::size_t>(std::find(u.params.begin(), u.params.end(), k) - u.params.begin());
      line += " " + u.name + " @" + std::to_string(u.offsets[i]);
    }
    plan.lines.push_back(line);
    hash.add(line);
  }
  for (const auto& u : plan.units) hash.add(u.name + " " + std::to_string(u.numel));
  plan.hash = hash.value();
  return plan;
}

}  // namespace graft
