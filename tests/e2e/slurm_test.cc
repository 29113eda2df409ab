// A real Slurm (cluster/local/slurm-up.sh: slurmctld + two slurmd "nodes" on this machine) runs
// a 2-node x 2-rank fine-tune with cluster/train.sbatch; the job is requeued mid-run (SIGTERM to
// every rank), resumes from its checkpoint, and must end with the same parameters as an
// uninterrupted job. Needs root (CI has it); label slurm.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <fstream>

#include "checkpoint/checkpoint.h"
#include "e2e_util.h"
#include "formats/hdf5.h"

namespace graft::e2e {
namespace {

const std::string kSlurmDir = "/tmp/graft-test-slurm";

class Slurm : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (geteuid() != 0) return;
    const auto r = run("GRAFT_SLURM_DIR=" + kSlurmDir + " bash " + std::string(GRAFT_SOURCE_DIR) + "/cluster/local/slurm-up.sh");
    up_ = r.code == 0;
    if (!up_) std::fprintf(stderr, "slurm-up failed:\n%s\n", r.output.c_str());
  }
  static void TearDownTestSuite() {
    if (up_) run("GRAFT_SLURM_DIR=" + kSlurmDir + " bash " + std::string(GRAFT_SOURCE_DIR) + "/cluster/local/slurm-down.sh");
  }
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "a local Slurm needs root";
    ASSERT_TRUE(up_) << "the local Slurm did not start";
  }
  // A Slurm client command with the test cluster's environment.
  static Result slurm(const std::string& command) {
    return run(". " + kSlurmDir + "/env.sh && export GRAFT=" + graft() + " && " + command);
  }
  static inline bool up_ = false;
};

std::string sbatch(const std::string& dir, const std::string& cfg, const std::string& run_dir, bool wait) {
  return std::string("sbatch --parsable ") + (wait ? "--wait " : "") + "--output=" + dir + "/job-%j.out --chdir=" + dir +
         " " + GRAFT_SOURCE_DIR + "/cluster/train.sbatch " + cfg + " --run.dir=" + run_dir + " --train.steps=120";
}

TEST_F(Slurm, RequeuedJobResumesAndEndsLikeAnUninterruptedOne) {
  const std::string dir = freshDir("slurm");
  const std::string cfg = dir + "/config.ini";
  std::ofstream(cfg) << tinyConfig(dir + "/unused", storiesDataset());
  const auto straight = slurm(sbatch(dir, cfg, dir + "/straight", true));
  ASSERT_EQ(straight.code, 0) << straight.output;

  const auto submitted = slurm(sbatch(dir, cfg, dir + "/requeued", false));
  ASSERT_EQ(submitted.code, 0) << submitted.output;
  const std::string job = submitted.output.substr(0, submitted.output.find_first_of(";\n"));
  // Requeued once it has a checkpoint, while it runs: a requeue of a finished job would leave every
  // other assertion true without SIGTERM -> checkpoint -> exit 75 -> requeue ever happening. (It
  // once waited for step 20's checkpoint, which keep_last = 2 deletes by step 30: a missed window.)
  const auto requeue = slurm("for i in $(seq 1 600); do ls " + dir + "/requeued/checkpoints/step-*.h5 >/dev/null 2>&1 && break; "
                             "sleep 0.1; done; scontrol show job " + job + " | grep -o 'JobState=[A-Z]*'; scontrol requeue " + job);
  ASSERT_EQ(requeue.code, 0) << requeue.output;
  ASSERT_NE(requeue.output.find("JobState=RUNNING"), std::string::npos) << "requeued a job that was not running\n" << requeue.output;
  const auto finished = slurm("for i in $(seq 1 240); do scontrol show job " + job +
                              " | grep -q JobState=COMPLETED && break; sleep 1; done; scontrol show job " + job);
  const std::string log = readText(dir + "/job-" + job + ".out");
  ASSERT_NE(finished.output.find("JobState=COMPLETED"), std::string::npos) << finished.output << log;
  EXPECT_NE(finished.output.find("Restarts=1"), std::string::npos) << finished.output;
  EXPECT_NE(log.find("on 4 rank(s) on 2 host(s) (mpi"), std::string::npos) << log;
  EXPECT_NE(log.find("resuming from " + dir + "/requeued/checkpoints/"), std::string::npos) << log;
  // graft status counts the requeue (SLURM_RESTART_COUNT reached rank 0) and the completed end.
  const Json status = statusOf(dir + "/requeued");
  EXPECT_EQ(status.at("requeues", "").asInt(""), 1) << status.dump(2);
  // The first run stopped on the signal: it checkpointed and exited 75 ("requeue me"), which the
  // run's journal records as a preemption.
  EXPECT_EQ(status.at("preemptions", "").asInt(""), 1) << status.dump(2);
  EXPECT_EQ(status.at("state", "").asString(""), "completed") << status.dump(2);

  auto a = H5File::openRead(completeCheckpoints(dir + "/straight/checkpoints").front());
  auto b = H5File::openRead(completeCheckpoints(dir + "/requeued/checkpoints").front());
  EXPECT_EQ(a.intAttr("/", "step"), 120);
  EXPECT_EQ(b.intAttr("/", "step"), 120);
  for (const std::string group : {"/model", "/optimizer/exp_avg", "/optimizer/exp_avg_sq"})
    for (const auto& name : a.list(group))
      EXPECT_TRUE(torch::equal(a.readTensor(group + "/" + name), b.readTensor(group + "/" + name))) << group << "/" << name;
}

}  // namespace
}  // namespace graft::e2e

namespace graft::e2e {
namespace {

// graft train under mpirun across two network namespaces the test creates (TCP between them),
// against the same run as 4 ranks on one host.
TEST(Netns, TrainingAcrossTwoNamespacesMatchesOneHost) {
  if (geteuid() != 0) GTEST_SKIP() << "network namespaces need root";
  const std::string dir = freshDir("netns");
  const std::string cfg = dir + "/config.ini";
  std::ofstream(cfg) << tinyConfig(dir + "/unused", storiesDataset());
  const std::string scripts = std::string(GRAFT_SOURCE_DIR) + "/cluster/local/";
  const auto two = run("bash " + scripts + "netns-mpirun.sh " + graft() + " train --config " + cfg + " --run.dir=" + dir +
                       "/two --train.steps=12");
  run("bash " + scripts + "netns-down.sh");
  ASSERT_EQ(two.code, 0) << two.output;
  EXPECT_NE(two.output.find("on 4 rank(s) on 2 host(s) (mpi"), std::string::npos) << two.output;
  const auto one = run(mpirun(4) + " " + graft() + " train --config " + cfg + " --run.dir=" + dir + "/one --train.steps=12");
  ASSERT_EQ(one.code, 0) << one.output;
  const auto a = losses(dir + "/two"), b = losses(dir + "/one");
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), 12u);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(std::stod(a[i]), std::stod(b[i]), 1e-6 * std::stod(b[i])) << i;
}

}  // namespace
}  // namespace graft::e2e
