#include "launch_plan.h"

#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

std::string get(const std::map<std::string, std::string>& env, const std::string& key) {
  const auto it = env.find(key);
  return it == env.end() ? "" : it->second;
}

void append(std::vector<std::string>& argv, std::initializer_list<std::string> more) {
  argv.insert(argv.end(), more.begin(), more.end());
}

}  // namespace

LaunchPlan planLaunch(const LaunchRequest& r, const std::map<std::string, std::string>& env) {
  if (r.command.empty()) throw InputError("graft launch: nothing to run; put the graft command after --, e.g. -- train --config x.ini");
  if (r.nodes < 1) throw InputError("--nodes must be at least 1");
  if (r.gpus_per_node < 0 || r.ranks_per_node < 0) throw InputError("--gpus-per-node and --ranks-per-node must be >= 0");
  if (r.gpus_per_node > 0 && r.ranks_per_node > 0 && r.ranks_per_node != r.gpus_per_node)
    throw InputError("--ranks-per-node differs from --gpus-per-node: graft runs one rank per GPU");
  const int per_node = r.gpus_per_node > 0 ? r.gpus_per_node : (r.ranks_per_node > 0 ? r.ranks_per_node : 1);
  LaunchPlan plan;
  plan.ranks = r.nodes * per_node;
  const bool in_slurm = !get(env, "SLURM_JOB_ID").empty();
  if (in_slurm) {
    const std::string allocated = get(env, "SLURM_JOB_NUM_NODES");
    if (!allocated.empty() && std::stoi(allocated) < r.nodes)
      throw InputError("--nodes " + std::to_string(r.nodes) + " exceeds the " + allocated + " node(s) of Slurm job " +
                       get(env, "SLURM_JOB_ID"));
    plan.launcher = "srun";
    // PMIx is the only process-management interface Debian's Open MPI supports under srun.
    append(plan.argv, {"srun", "--mpi=pmix", "--nodes=" + std::to_string(r.nodes),
                       "--ntasks-per-node=" + std::to_string(per_node), "--kill-on-bad-exit=1"});
    if (r.gpus_per_node > 0) append(plan.argv, {"--gpus-per-task=1", "--gpu-bind=closest"});
    else append(plan.argv, {"--cpu-bind=cores"});
  } else {
    if (r.nodes > 1 && r.hostfile.empty())
      throw InputError("--nodes " + std::to_string(r.nodes) + " outside a Slurm allocation needs --hostfile");
    if (!r.hostfile.empty() && !fileExists(r.hostfile)) throw InputError(r.hostfile + ": hostfile not found");
    plan.launcher = "mpirun";
    append(plan.argv, {"mpirun", "-np", std::to_string(plan.ranks), "--map-by", "ppr:" + std::to_string(per_node) + ":node"});
    if (!r.hostfile.empty()) append(plan.argv, {"--hostfile", r.hostfile});
    // On cluster nodes (hostfile, CPU ranks) each rank gets its cores; GPU ranks and a single
    // local machine run unbound (graft sets threads per rank itself), oversubscribing if asked.
    const bool bind = !r.hostfile.empty() && r.gpus_per_node == 0;
    append(plan.argv, {"--bind-to", bind ? "core" : "none"});
    if (r.hostfile.empty()) append(plan.argv, {"--oversubscribe"});
    append(plan.argv, {"-x", "OMP_WAIT_POLICY=passive"});
  }
  plan.argv.push_back(r.graft);
  plan.argv.insert(plan.argv.end(), r.command.begin(), r.command.end());
  return plan;
}

std::string shellLine(const std::vector<std::string>& argv) {
  std::string line;
  for (const auto& arg : argv) {
    const bool plain = !arg.empty() && arg.find_first_not_of(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == std::string::npos;
    std::string quoted = arg;
    if (!plain) {
      quoted = "'";
      for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
      quoted += "'";
    }
    line += (line.empty() ? "" : " ") + quoted;
  }
  return line;
}

}  // namespace graft
