// `graft launch`: turns "N nodes x G GPUs (or R CPU ranks) per node, run this graft command" into
// the exact mpirun or srun command line. planLaunch is a pure function of the request and the
// environment (so it is unit-tested without starting anything); runLaunch prints or execs it.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace graft {

struct LaunchRequest {
  int nodes = 1;
  int gpus_per_node = 0;    // > 0: one rank per GPU
  int ranks_per_node = 0;   // CPU runs: ranks per node (0 = 1)
  std::string hostfile;     // mpirun outside Slurm, for more than one node
  std::string graft;        // path of the graft executable to run on every rank
  std::vector<std::string> command;  // the graft subcommand and its arguments, e.g. {"train", "--config", "x.ini"}
};

struct LaunchPlan {
  std::vector<std::string> argv;  // argv[0] is mpirun or srun
  std::string launcher;           // "mpirun" or "srun"
  int ranks = 0;
};

// Throws InputError naming the option for requests that cannot work (no command, several nodes
// without a hostfile or Slurm allocation, a GPU count the allocation does not have...).
LaunchPlan planLaunch(const LaunchRequest& request, const std::map<std::string, std::string>& env);

// The plan as one shell-quoted line (what --dry-run prints).
std::string shellLine(const std::vector<std::string>& argv);

}  // namespace graft
