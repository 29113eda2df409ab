#include <dirent.h>
#include <gtest/gtest.h>

#include <fstream>
#include <tuple>

#include "communicator.h"
#include "config/train_config.h"
#include "util/error.h"

namespace graft {
namespace {

std::string errorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Config, DefaultsAndOverridesAndFile) {
  const std::string path = ::testing::TempDir() + "/cfg_ok.ini";
  std::ofstream(path) << "# comment\n[train]\nsteps = 7\nlr = 0.5  # peak\n\n[run]\ndir = /tmp/x\n";
  TrainConfig c;
  ASSERT_TRUE(parseTrainConfig({"--config", path, "--train.lr=0.25"}, c));
  EXPECT_EQ(c.steps, 7);
  EXPECT_DOUBLE_EQ(c.lr, 0.25);  // command line wins over the file
  EXPECT_EQ(c.run_dir, "/tmp/x");
  EXPECT_EQ(c.micro_batch, TrainConfig().micro_batch);
}

TEST(Config, UnknownKeyInFileNamesFileLineAndKey) {
  const std::string path = ::testing::TempDir() + "/cfg_unknown.ini";
  std::ofstream(path) << "[train]\nsteps = 7\nstpes = 8\n";
  TrainConfig c;
  const auto msg = errorOf([&] { parseTrainConfig({"--config", path}, c); });
  EXPECT_NE(msg.find(path + ":3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.stpes"), std::string::npos) << msg;
}

TEST(Config, BadValueNamesTheKey) {
  const std::string path = ::testing::TempDir() + "/cfg_bad.ini";
  std::ofstream(path) << "[train]\nsteps = many\n";
  TrainConfig c;
  const auto msg = errorOf([&] { parseTrainConfig({"--config", path}, c); });
  EXPECT_NE(msg.find(path + ":2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.steps"), std::string::npos) << msg;
}

TEST(Config, UnknownOverrideAndMissingFile) {
  TrainConfig c;
  EXPECT_NE(errorOf([&] { parseTrainConfig({"--train.nope=1"}, c); }).find("train.nope"), std::string::npos);
  EXPECT_NE(errorOf([&] { parseTrainConfig({"--config", "/no/such.ini"}, c); }).find("/no/such.ini"), std::string::npos);
}

TEST(Config, ValidationNamesTheKey) {
  TrainConfig c;
  c.run_dir = "r";
  c.data_path = "d";
  c.batch_size = 6;
  c.micro_batch = 4;
  EXPECT_NE(errorOf([&] { c.validate(1); }).find("train.batch_size"), std::string::npos);
  c.batch_size = 8;
  EXPECT_NO_THROW(c.validate(2));
  EXPECT_NE(errorOf([&] { c.validate(4); }).find("train.batch_size"), std::string::npos);
}

TEST(Config, DevicePrecisionAndReduceDtypeTakeOnlyTheirValues) {
  TrainConfig c;
  c.run_dir = "r";
  c.data_path = "d";
  EXPECT_NO_THROW(c.validate(1));
  for (const auto& [key, field, bad] : std::vector<std::tuple<std::string, std::string*, std::string>>{
           {"train.device", &c.device, "gpu"}, {"train.precision", &c.precision, "fp16"},
           {"dist.reduce_dtype", &c.reduce_dtype, "bfloat16"}}) {
    const std::string good = *field;
    *field = bad;
    const std::string error = errorOf([&] { c.validate(1); });
    EXPECT_NE(error.find(key), std::string::npos) << error;
    EXPECT_NE(error.find("'" + bad + "'"), std::string::npos) << error;
    *field = good;
  }
  TrainConfig parsed;
  ASSERT_TRUE(parseTrainConfig({"--run.dir=r", "--data.path=d", "--train.device=cpu", "--train.precision=bf16",
                                "--dist.reduce_dtype=bf16"}, parsed));
  EXPECT_EQ(parsed.device, "cpu");
  EXPECT_EQ(parsed.precision, "bf16");
  EXPECT_EQ(parsed.reduce_dtype, "bf16");
}

// dist.backend = auto: nccl exactly when the run trains on CUDA in a build with NCCL; and whatever
// auto picks, `graft train` accepts (the refusal it checks before making the communicator).
TEST(Backend, AutoPicksNcclExactlyOnCudaAndNeverWhatTrainingRefuses) {
  for (const bool on_cuda : {false, true})
    for (const bool nccl_built : {false, true})
      for (const bool launched : {false, true}) {
        const std::string picked = resolveBackend("auto", on_cuda, nccl_built, launched);
        SCOPED_TRACE("cuda " + std::to_string(on_cuda) + " nccl " + std::to_string(nccl_built) + " launched " +
                     std::to_string(launched) + ": " + picked);
        EXPECT_EQ(picked == "nccl", on_cuda && nccl_built && launched);
        if (picked != "nccl") {
          EXPECT_EQ(picked, launched ? "mpi" : "local");
        }
        EXPECT_EQ(backendRefusal(picked, on_cuda, nccl_built), "");
        EXPECT_EQ(backendRefusal("auto", on_cuda, nccl_built), "");
      }
  EXPECT_NE(backendRefusal("nccl", /*on_cuda=*/false, true).find("train.device"), std::string::npos);
  EXPECT_NE(backendRefusal("nccl", /*on_cuda=*/true, false).find("GRAFT_WITH_NCCL"), std::string::npos);
  EXPECT_EQ(backendRefusal("mpi", /*on_cuda=*/true, false), "");  // through host memory
  EXPECT_EQ(resolveBackend("mpi", true, true, false), "mpi");    // asked for by name: kept
}

TEST(Config, ResolvedTextParsesBackToTheSameConfig) {
  TrainConfig c;
  c.run_dir = "runs/x";
  c.lr = 0.1 + 0.2;  // not exactly representable in few digits
  c.arch.tied = false;
  const TrainConfig back = parseTrainConfigText(c.resolved(), "resolved");
  EXPECT_EQ(back.resolved(), c.resolved());
  EXPECT_EQ(back.lr, c.lr);
  EXPECT_FALSE(back.arch.tied);
}

TEST(Config, EveryShippedConfigParses) {
  const std::string dir = std::string(GRAFT_SOURCE_DIR) + "/configs";
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  int count = 0;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() < 4 || name.substr(name.size() - 4) != ".ini") continue;
    TrainConfig c;
    EXPECT_NO_THROW(parseTrainConfig({"--config", dir + "/" + name}, c)) << name;
    EXPECT_NO_THROW(c.validate(1)) << name;
    EXPECT_NO_THROW(c.validate(2)) << name;
    ++count;
  }
  closedir(d);
  EXPECT_GE(count, 2);
}

}  // namespace
}  // namespace graft
