// Faults injected into real runs: a NaN loss on one rank, NaNs that persist, and SIGTERM on one
// rank in the middle of a run.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <torch/torch.h>

#include "checkpoint/checkpoint.h"
#include "e2e_util.h"
#include "io/hdf5.h"

namespace graft::e2e {
namespace {

std::string configIn(const std::string& dir, const std::string& extra) {
  const std::string path = dir + "/config.ini";
  std::ofstream(path) << tinyConfig(dir + "/run", storiesDataset()) << extra;
  return path;
}

std::vector<std::string> metricLines(const std::string& run_dir) {
  std::vector<std::string> lines;
  std::istringstream in(readText(run_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST(Reliability, NanOnOneRankSkipsTheStepOnAllRanks) {
  const std::string dir = freshDir("nan_once");
  const auto cfg = configIn(dir, "[debug]\nnan_from = 4\nnan_count = 1\nnan_rank = 1\n");
  const auto r = run(mpirun(2) + " " + graft() + " train --config " + cfg + " --train.steps=8");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 4: loss nan"), std::string::npos) << r.output;
  const auto lines = metricLines(dir + "/run");
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_NE(lines[3].find("\"loss\": null"), std::string::npos) << lines[3];
  EXPECT_NE(lines[3].find("\"skipped\": 1"), std::string::npos) << lines[3];
  EXPECT_NE(lines[7].find("\"skipped\": 0, \"skipped_total\": 1"), std::string::npos) << lines[7];
  auto file = H5File::openRead(completeCheckpoints(dir + "/run/checkpoints").front());
  EXPECT_EQ(file.intAttr("/", "skipped_steps"), 1);
  for (const auto& name : file.list("/model"))
    EXPECT_TRUE(torch::isfinite(file.readTensor("/model/" + name)).all().item<bool>()) << name;
}

TEST(Reliability, PersistentNanStopsWithTheLastGoodCheckpointIntact) {
  const std::string dir = freshDir("nan_persistent");
  const auto cfg = configIn(dir, "[debug]\nnan_from = 6\nnan_count = 100\nnan_rank = 0\n");
  const auto r = run(mpirun(2) + " " + graft() + " train --config " + cfg + " --train.max_bad_steps=3");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("steps 6-8: loss or gradient norm not finite 3 times in a row"), std::string::npos) << r.output;
  const auto complete = completeCheckpoints(dir + "/run/checkpoints");
  ASSERT_FALSE(complete.empty());
  EXPECT_NE(complete.front().find("step-00000005.h5"), std::string::npos) << complete.front();
  EXPECT_NE(r.output.find(complete.front()), std::string::npos) << r.output;
}

TEST(Reliability, SigtermOnOneRankCheckpointsAllAndExitsWithTheRequeueCode) {
  const std::string dir = freshDir("sigterm");
  const auto cfg = configIn(dir, "");
  // A long run; once three steps are logged, SIGTERM goes to one of mpirun's rank processes.
  const std::string script =
      mpirun(2) + " " + graft() + " train --config " + cfg + " --train.steps=100000 --checkpoint.every=0 > " + dir +
      "/log 2>&1 & M=$!; for i in $(seq 1 1200); do [ \"$(cat " + dir + "/run/metrics.jsonl 2>/dev/null | wc -l)\" -ge 3 ] && break; "
      "sleep 0.05; done; kill -TERM $(pgrep -P $M | tail -1); wait $M; echo rc=$?";
  const auto r = run(script);
  const std::string log = readText(dir + "/log");
  EXPECT_NE(r.output.find("rc=75"), std::string::npos) << r.output << log;
  EXPECT_NE(log.find("stop requested (signal): checkpointed at step"), std::string::npos) << log;
  const auto complete = completeCheckpoints(dir + "/run/checkpoints");
  ASSERT_EQ(complete.size(), 1u) << log;
  const auto steps = metricLines(dir + "/run").size();
  EXPECT_NE(complete.front().find(checkpointName(static_cast<std::int64_t>(steps))), std::string::npos);
  // The run resumes from that checkpoint.
  const auto again = run(mpirun(2) + " " + graft() + " train --config " + cfg + " --train.steps=100000 --train.stop_after=" +
                         std::to_string(steps + 2));
  EXPECT_EQ(again.code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming from " + complete.front()), std::string::npos) << again.output;
}

}  // namespace
}  // namespace graft::e2e
