// Checkpoints at the tensor counts of the models users fine-tune: random-init Llamas as deep as
// Llama-3-70B (80 layers) and Llama-3.1-405B (126 layers), 8 wide so that they train in seconds.
// A limit that only a long list of tensors reaches (the manifest was once an HDF5 attribute, which
// holds 64 KiB: no model deeper than about 36 layers could be checkpointed) shows here, in every
// dist.shard mode, synchronous and asynchronous, at 1 to 4 ranks; then a resume at another number
// of ranks, graft status and graft export of what was written.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "e2e_util.h"
#include "formats/hdf5.h"
#include "util/files.h"

namespace graft::e2e {
namespace {

std::string deepConfig(const std::string& run_dir, int layers) {
  return "[run]\ndir = " + run_dir + "\n[model]\ndim = 8\nhidden_dim = 16\nn_layers = " + std::to_string(layers) +
         "\nn_heads = 2\nn_kv_heads = 1\nmax_seq_len = 16\n[data]\npath = " + storiesDataset() +
         "\n[train]\nsteps = 4\nbatch_size = 12\nmicro_batch = 1\nseq_len = 16\nlr = 1e-3\nmin_lr = 1e-4\n"
         "warmup = 1\nseed = 3\nthreads = 1\nlog_every = 1\n[eval]\nevery = 0\nbatches = 1\n"
         "[checkpoint]\nevery = 2\nkeep_last = 0\n";
}

Result trainDeep(int ranks, const std::string& dir, int layers, const std::string& options) {
  const std::string cfg = dir + ".ini";
  std::ofstream(cfg) << deepConfig(dir, layers);
  return run(mpirun(ranks) + " " + graft() + " train --config " + cfg + " " + options);
}

// Lines of a checkpoint's manifest that start with `prefix`.
int manifestLines(const std::string& path, const std::string& prefix) {
  std::istringstream in(readManifest(H5File::openRead(path)));
  int n = 0;
  for (std::string line; std::getline(in, line);) n += line.rfind(prefix, 0) == 0 ? 1 : 0;
  return n;
}

struct Case {
  int np;
  std::string mode;
  bool async;
};

// Trains `layers` deep in each case, checks its two checkpoints hold every tensor and verify.
void everyModeCheckpoints(int layers, const std::vector<Case>& cases) {
  const int model_tensors = 9 * layers + 2;  // 9 per layer, the embedding (tied) and the final norm
  const std::string base = freshDir("deep" + std::to_string(layers));
  for (const auto& c : cases) {
    const std::string what = std::to_string(layers) + " layers, np " + std::to_string(c.np) + ", " + c.mode +
                             (c.async ? ", async" : ", sync");
    const std::string dir = base + "/" + c.mode + "_np" + std::to_string(c.np) + (c.async ? "_async" : "");
    const auto r = trainDeep(c.np, dir, layers,
                             "--dist.shard=" + c.mode + " --checkpoint.async=" + (c.async ? "true" : "false"));
    ASSERT_EQ(r.code, 0) << what << "\n" << r.output;
    const auto found = completeCheckpoints(dir + "/checkpoints");
    ASSERT_EQ(found.size(), 2u) << what << "\n" << r.output;
    for (const auto& path : found) {
      EXPECT_EQ(manifestLines(path, "/model/"), model_tensors) << what << ": " << path;
      EXPECT_EQ(manifestLines(path, "/optimizer/"), 2 * model_tensors) << what << ": " << path;
      EXPECT_NO_THROW(verifyCheckpoint(path)) << what << ": " << path;
    }
  }
}

// Llama-3-70B's depth: every mode, at 1 to 4 ranks, synchronous and asynchronous checkpoints.
TEST(Scale, SeventyBDepthCheckpointsInEveryMode) {
  everyModeCheckpoints(80, {{1, "none", false}, {2, "none", true}, {2, "optimizer", false}, {3, "optimizer", true},
                            {3, "gradients", false}, {4, "gradients", true}, {4, "parameters", false}, {2, "parameters", true}});
}

// Llama-3.1-405B's depth (1137 model tensors, 3411 in the manifest with the moments): written under
// ZeRO-3 at 4 ranks, resumed at 2 ranks under ZeRO-1, then graft status verifies every checkpoint
// and graft export writes the model, which evaluates as the checkpoint does.
TEST(Scale, FourHundredFiveBDepthCheckpointsResumesAtAnotherWorldSizeAndExports) {
  const int layers = 126;
  everyModeCheckpoints(layers, {{4, "parameters", true}, {1, "none", false}});
  const std::string dir = freshDir("deep126_resume") + "/run";
  auto r = trainDeep(4, dir, layers, "--dist.shard=parameters --train.stop_after=2");
  ASSERT_EQ(r.code, 0) << r.output;
  r = trainDeep(2, dir, layers, "--dist.shard=optimizer");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from " + dir + "/checkpoints/step-00000002.h5 at step 2 (saved with 4 ranks, now 2)"),
            std::string::npos)
      << r.output;
  const Json status = statusOf(dir);
  EXPECT_EQ(status.at("step", "").asInt(""), 4);
  EXPECT_EQ(status.at("resumes", "").asInt(""), 1);
  const auto& checkpoints = status.at("checkpoints", "").asArray("");
  ASSERT_EQ(checkpoints.size(), 2u) << status.dump(2);
  for (const auto& c : checkpoints) EXPECT_TRUE(c.at("verified", "").asBool("")) << status.dump(2);

  const std::string last = dir + "/checkpoints/step-00000004.h5", out = dir + "/exported";
  r = run(graft() + " export --model " + last + " --format hf --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string text = " --tokenizer " + data("llama2c/tok512.bin") + " --text 'Once upon a time there was a cat'";
  const auto from_checkpoint = run(graft() + " eval --model " + last + text);
  const auto from_export = run(graft() + " eval --model " + out + text);
  ASSERT_EQ(from_checkpoint.code, 0) << from_checkpoint.output;
  ASSERT_EQ(from_export.code, 0) << from_export.output;
  // The result line ({"loss": ..., "tokens": ...}); the checkpoint's run also says it verified it.
  auto result = [](const std::string& output) { return output.substr(std::min(output.find("{\"loss\""), output.size())); };
  EXPECT_NE(result(from_checkpoint.output), "") << from_checkpoint.output;
  EXPECT_EQ(result(from_checkpoint.output), result(from_export.output));
  EXPECT_NE(from_checkpoint.output.find(last + " verified against its manifest (" + std::to_string(9 * layers + 2) + " tensors"),
            std::string::npos)
      << from_checkpoint.output;
}

}  // namespace
}  // namespace graft::e2e
