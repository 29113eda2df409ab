#include <gtest/gtest.h>

#include <fstream>

#include "launch_plan.h"
#include "util/error.h"

namespace graft {
namespace {

LaunchRequest request(int nodes, int gpus, int ranks) {
  LaunchRequest r;
  r.nodes = nodes;
  r.gpus_per_node = gpus;
  r.ranks_per_node = ranks;
  r.graft = "/opt/graft";
  r.command = {"train", "--config", "x.ini"};
  return r;
}

TEST(LaunchPlan, LocalMpirun) {
  const auto plan = planLaunch(request(1, 0, 2), {});
  EXPECT_EQ(plan.launcher, "mpirun");
  EXPECT_EQ(plan.ranks, 2);
  EXPECT_EQ(shellLine(plan.argv),
            "mpirun -np 2 --map-by ppr:2:node --bind-to none --oversubscribe -x OMP_WAIT_POLICY=passive /opt/graft "
            "train --config x.ini");
}

TEST(LaunchPlan, HostfileBindsCpuRanksToCores) {
  const std::string hosts = ::testing::TempDir() + "/hosts";
  std::ofstream(hosts) << "n1 slots=4\nn2 slots=4\n";
  auto r = request(2, 0, 4);
  r.hostfile = hosts;
  const auto line = shellLine(planLaunch(r, {}).argv);
  EXPECT_NE(line.find("mpirun -np 8 --map-by ppr:4:node --hostfile " + hosts + " --bind-to core"), std::string::npos) << line;
}

TEST(LaunchPlan, InsideSlurmUsesSrunWithPmixAndOneRankPerGpu) {
  const auto plan = planLaunch(request(2, 4, 0), {{"SLURM_JOB_ID", "77"}, {"SLURM_JOB_NUM_NODES", "2"}});
  EXPECT_EQ(plan.launcher, "srun");
  EXPECT_EQ(plan.ranks, 8);
  EXPECT_EQ(shellLine(plan.argv),
            "srun --mpi=pmix --nodes=2 --ntasks-per-node=4 --kill-on-bad-exit=1 --gpus-per-task=1 --gpu-bind=closest "
            "/opt/graft train --config x.ini");
}

TEST(LaunchPlan, BadRequestsNameTheOption) {
  auto expectError = [](const LaunchRequest& r, const std::map<std::string, std::string>& env, const std::string& needle) {
    try {
      planLaunch(r, env);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expectError(request(2, 0, 1), {}, "--hostfile");
  expectError(request(4, 1, 0), {{"SLURM_JOB_ID", "5"}, {"SLURM_JOB_NUM_NODES", "2"}}, "--nodes 4");
  expectError(request(1, 2, 3), {}, "--ranks-per-node");
  auto none = request(1, 0, 1);
  none.command.clear();
  expectError(none, {}, "nothing to run");
  auto missing = request(2, 0, 1);
  missing.hostfile = "/no/hosts";
  expectError(missing, {}, "/no/hosts");
}

TEST(LaunchPlan, ShellLineQuotesWhatNeedsIt) {
  EXPECT_EQ(shellLine({"a", "b c", "it's", ""}), "a 'b c' 'it'\\''s' ''");
}

}  // namespace
}  // namespace graft
