// Bad input: one-line errors that name the key or file, exit code 2, nothing written.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include <torch/cuda.h>

#include "e2e_util.h"

namespace graft::e2e {
namespace {

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

void expectInputError(const Result& r, const std::string& must_name) {
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(must_name), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
}

TEST(Errors, ConfigProblemsNameKeyFileAndLine) {
  const std::string dir = freshDir("errors_cfg");
  std::ofstream(dir + "/bad.ini") << tinyConfig(dir + "/run", storiesDataset()) << "[train]\nlearning_rate = 1\n";
  auto r = run(graft() + " train --config " + dir + "/bad.ini");
  expectInputError(r, dir + "/bad.ini:");
  EXPECT_NE(r.output.find("train.learning_rate"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;

  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", storiesDataset());
  expectInputError(run(graft() + " train --config " + dir + "/ok.ini --train.stepz=3"), "train.stepz");
  expectInputError(run(graft() + " train --config " + dir + "/ok.ini --train.steps=abc"), "train.steps");
  expectInputError(run(graft() + " train --config " + dir + "/missing.ini"), dir + "/missing.ini");
  expectInputError(run(graft() + " train --config " + dir + "/ok.ini --train.batch_size=7"), "train.batch_size");
  EXPECT_FALSE(std::ifstream(dir + "/run/metrics.jsonl").good());
}

// Devices and backends a run cannot have are refused before anything starts, in one line; what
// dist.backend = auto picks is never refused (tests/unit/config_test.cc tries every case).
TEST(Errors, DevicesAndBackendsThisBuildCannotUseAreRefusedInOneLine) {
  const std::string dir = freshDir("errors_device");
  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", storiesDataset());
  const std::string train = graft() + " train --config " + dir + "/ok.ini";
  auto nccl = run(train + " --dist.backend=nccl --train.device=cpu");
  expectInputError(nccl, "dist.backend = nccl");
  EXPECT_NE(nccl.output.find("train.device"), std::string::npos) << nccl.output;
  EXPECT_EQ(lines(nccl.output), 1) << nccl.output;
  expectInputError(run(train + " --train.device=tpu"), "train.device");
  expectInputError(run(train + " --train.precision=fp16"), "train.precision");
  if (!torch::cuda::is_available()) {  // here: cuda is refused, saying what is missing
    auto cuda = run(train + " --train.device=cuda");
    expectInputError(cuda, "train.device = cuda");
    EXPECT_EQ(lines(cuda.output), 1) << cuda.output;
  }
  EXPECT_FALSE(std::ifstream(dir + "/run/metrics.jsonl").good());
}

TEST(Errors, MissingAndMalformedFilesAreNamed) {
  const std::string dir = freshDir("errors_files");
  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", storiesDataset());
  expectInputError(run(graft() + " train --config " + dir + "/ok.ini --model.path=" + dir + "/nope.bin"), dir + "/nope.bin");
  expectInputError(run(graft() + " train --config " + dir + "/ok.ini --data.path=" + dir + "/nope.h5"), dir + "/nope.h5");
  std::ofstream(dir + "/garbage.bin") << "this is not a model";
  expectInputError(run(graft() + " eval --model " + dir + "/garbage.bin --ids '1 2 3'"), dir + "/garbage.bin");
  expectInputError(run(graft() + " generate --model " + data("llama2c/stories260K.bin") + " --tokenizer bytes"), "bytes");
  expectInputError(run(graft() + " eval --model " + data("llama2c/stories260K.bin") + " --ids '1 9999'"), "9999");
  expectInputError(run(graft() + " tokenize --tokenizer " + dir + "/none.bin --text hi"), dir + "/none.bin");
  expectInputError(run(graft() + " prepare --tokenizer bytes --input " + dir + "/none.txt --out " + dir + "/x.h5"), dir + "/none.txt");
  EXPECT_EQ(run(graft() + " frobnicate").code, 2);
  // graft status and plot: a missing run, a folder that is not one, a damaged metrics line.
  expectInputError(run(graft() + " status " + dir + "/no_run"), dir + "/no_run: no such run directory");
  run("mkdir -p " + dir + "/empty");
  expectInputError(run(graft() + " status " + dir + "/empty"), dir + "/empty: not a graft run directory");
  expectInputError(run(graft() + " plot " + dir + "/empty --out " + dir + "/p.svg"), dir + "/empty: no metrics.jsonl");
  run("mkdir -p " + dir + "/bad");
  std::ofstream(dir + "/bad/metrics.jsonl") << "{\"step\": 1, \"loss\": 2.5}\n{\"step\": 2, \"loss\": oops}\n";
  expectInputError(run(graft() + " status " + dir + "/bad"), dir + "/bad/metrics.jsonl line 2");
  expectInputError(run(graft() + " plot " + dir + "/bad --out " + dir + "/p.svg"), dir + "/bad/metrics.jsonl line 2");
  std::ofstream(dir + "/bad/metrics.jsonl") << "{\"step\": 1, \"loss\": 2.5}\n";
  expectInputError(run(graft() + " plot " + dir + "/bad --out " + dir + "/p.pdf"), dir + "/p.pdf: the plot's file name must end in .svg or .png");
  EXPECT_FALSE(std::ifstream(dir + "/p.svg").good());
}

// graft plot of a run with no validation points draws its training curve alone; of a run whose
// every loss is null (not finite) and that has no validation point, it draws nothing and says so
// in one line (exit 2), leaving no file behind.
TEST(Errors, PlotOfARunWithoutValidationOrWithOnlyNullLossesIsClear) {
#ifdef GRAFT_NO_CAIRO
  GTEST_SKIP() << "this build has no cairo (GRAFT_NO_CAIRO): graft plot cannot draw";
#endif
  const std::string dir = freshDir("errors_plot_nulls");
  auto line = [](int step, const std::string& loss) {
    return "{\"step\": " + std::to_string(step) + ", \"loss\": " + loss + ", \"lr\": 0.001, \"grad_norm\": 1.0, \"tokens\": " +
           std::to_string(100 * step) + ", \"tokens_per_s\": 10.0, \"elapsed_s\": " + std::to_string(step) +
           ", \"time\": 1.0, \"skipped\": 0, \"skipped_total\": 0}\n";
  };
  run("mkdir -p " + dir + "/no_val " + dir + "/all_null");
  std::ofstream(dir + "/no_val/metrics.jsonl") << line(1, "2.5") << line(2, "2.25") << line(3, "2.0");
  std::ofstream(dir + "/all_null/metrics.jsonl") << line(1, "null") << line(2, "null");
  const auto drawn = run(graft() + " plot " + dir + "/no_val --out " + dir + "/no_val.svg --print 2>/dev/null");
  ASSERT_EQ(drawn.code, 0) << drawn.output;
  const Json doc = parseJson(drawn.output, "graft plot --print");
  const auto& series = doc.at("series", "").asArray("");
  ASSERT_EQ(series.size(), 1u) << drawn.output;
  EXPECT_EQ(series[0].at("label", "").asString(""), "no_val train");
  EXPECT_EQ(series[0].at("y", "").asArray("").size(), 3u);
  EXPECT_TRUE(std::ifstream(dir + "/no_val.svg").good());
  expectInputError(run(graft() + " plot " + dir + "/all_null --out " + dir + "/null.svg"), "nothing to plot");
  EXPECT_FALSE(std::ifstream(dir + "/null.svg").good());
  EXPECT_FALSE(std::ifstream(dir + "/null.svg.tmp").good());
}

// Files that exist but cannot be what they claim: folders where files belong, a truncated dataset,
// a folder without a tokenizer, a label column that is not there. One line each, exit code 2.
TEST(Errors, UnreadableAndTruncatedInputsAreNamed) {
  const std::string dir = freshDir("errors_unreadable");
  run("mkdir -p " + dir + "/folder");
  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", storiesDataset());
  auto one_line = [](const Result& r) { return std::count(r.output.begin(), r.output.end(), '\n') == 1; };
  auto r = run(graft() + " train --config " + dir + "/ok.ini --model.path=" + dir + "/folder");
  expectInputError(r, dir + "/folder");
  EXPECT_TRUE(one_line(r)) << r.output;
  r = run(graft() + " train --config " + dir + "/ok.ini --data.path=" + dir + "/folder");
  expectInputError(r, dir + "/folder");
  r = run(graft() + " tokenize --tokenizer " + dir + "/folder --text hi");
  expectInputError(r, dir + "/folder");
  EXPECT_TRUE(one_line(r)) << r.output;
  r = run(graft() + " train --config " + dir + "/folder");
  expectInputError(r, dir + "/folder");
  // A dataset cut short: HDF5 cannot read it, and the error names the file.
  run("head -c 3000 " + storiesDataset() + " > " + dir + "/cut.h5");
  r = run(graft() + " train --config " + dir + "/ok.ini --data.path=" + dir + "/cut.h5");
  expectInputError(r, dir + "/cut.h5");
  EXPECT_TRUE(one_line(r)) << r.output;
  EXPECT_FALSE(std::ifstream(dir + "/run/metrics.jsonl").good());
}

TEST(Errors, DatasetSmallerThanOneBatch) {
  const std::string dir = freshDir("errors_small");
  std::ofstream(dir + "/tiny.txt") << "Just a few words.\n\nAnd a second doc.\n";
  ASSERT_EQ(run(graft() + " prepare --tokenizer bytes --input " + dir + "/tiny.txt --out " + dir + "/tiny.h5").code, 0);
  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", dir + "/tiny.h5");
  const auto r = run(graft() + " train --config " + dir + "/ok.ini");
  expectInputError(r, "fewer than one global batch");
}

TEST(Errors, ConfigErrorUnderMpirunStopsAllRanks) {
  const std::string dir = freshDir("errors_mpi");
  std::ofstream(dir + "/ok.ini") << tinyConfig(dir + "/run", storiesDataset());
  const auto r = run(mpirun(2) + " " + graft() + " train --config " + dir + "/ok.ini --train.nope=1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("train.nope"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace graft::e2e
