#include "e2e_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace graft::e2e {

Result run(const std::string& command) {
  Result r;
  FILE* pipe = popen(("( " + command + " ) 2>&1").c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  std::size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string graft() { return std::string("'") + GRAFT_EXECUTABLE + "'"; }

std::string mpirun(int ranks) {
  return std::string(GRAFT_MPIEXEC) + " -np " + std::to_string(ranks) + " --oversubscribe --bind-to none";
}

std::string withoutMpiIo() {
  // ompi_info beside mpirun lists the components as "MCA io: romio321 (MCA v2.1.0, ...)".
  std::string dir = GRAFT_MPIEXEC;
  dir = dir.find('/') == std::string::npos ? std::string() : dir.substr(0, dir.rfind('/') + 1);
  const auto listed = run(dir + "ompi_info 2>/dev/null | sed -n 's/^ *MCA io: \\([A-Za-z0-9_]*\\).*/\\1/p'");
  std::string names;
  std::istringstream in(listed.output);
  for (std::string name; in >> name;) names += (names.empty() ? "" : ",") + name;
  EXPECT_FALSE(names.empty()) << "ompi_info listed no MPI-IO component: " << listed.output;
  return "OMPI_MCA_io=^" + names;
}

std::string data(const std::string& relative) { return std::string(GRAFT_SHARED_DATA) + "/" + relative; }

std::string freshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "graft_e2e/" + name;
  run("rm -rf '" + dir + "' && mkdir -p '" + dir + "'");
  return dir;
}

std::string readText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::vector<std::string> losses(const std::string& run_dir) {
  std::vector<std::string> out;
  std::istringstream in(readText(run_dir + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    const auto at = line.find("\"loss\": ");
    if (at == std::string::npos) continue;
    out.push_back(line.substr(at + 8, line.find(',', at) - at - 8));
  }
  return out;
}

void expectResumedFrom(const std::string& output, const std::string& run_dir, long long step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld.h5", step);
  EXPECT_NE(output.find("resuming from " + run_dir + "/checkpoints/" + name + " at step " + std::to_string(step) + " "),
            std::string::npos)
      << output;
  const Json status = statusOf(run_dir);
  const Json* resumes = status.find("resumes");
  ASSERT_NE(resumes, nullptr) << status.dump(2);
  EXPECT_GE(resumes->asInt("resumes"), 1) << status.dump(2);
}

const char* resultOf(const std::string& output) {
  const auto at = output.find('{');
  return output.c_str() + (at == std::string::npos ? output.size() : at);
}

std::string tinyConfig(const std::string& run_dir, const std::string& data_path) {
  return "[run]\ndir = " + run_dir + "\n[model]\ndim = 32\nhidden_dim = 64\nn_layers = 2\nn_heads = 4\n"
         "n_kv_heads = 2\nmax_seq_len = 32\n[data]\npath = " + data_path + "\n[train]\nsteps = 20\n"
         "batch_size = 8\nmicro_batch = 2\nseq_len = 32\nlr = 3e-3\nmin_lr = 3e-4\nwarmup = 3\nseed = 11\n"
         "threads = 1\nlog_every = 5\n[eval]\nevery = 10\nbatches = 2\n[checkpoint]\nevery = 5\nkeep_last = 2\n";
}

std::string banking77FewShot() {
  static std::string path;
  if (path.empty()) {
    const std::string dir = freshDir("banking77");
    path = dir + "/b77_10shot.h5";
    const auto r = run(graft() + " prepare --tokenizer " + data("llama2c/tok512.bin") + " --input " +
                       data("datasets/banking77/train.csv") + " --label-field category --val-fraction 0.1 --max-per-label 10 --out " + path);
    EXPECT_EQ(r.code, 0) << r.output;
  }
  return path;
}

std::string storiesDataset() {
  static std::string path;
  if (path.empty()) {
    const std::string dir = freshDir("stories_data");
    path = dir + "/stories.h5";
    const auto r = run(graft() + " prepare --tokenizer " + data("llama2c/tok512.bin") + " --input " +
                       data("datasets/tinystories_sample/tinystories_sample.txt") + " --out " + path +
                       " --val-fraction 0.1");
    EXPECT_EQ(r.code, 0) << r.output;
  }
  return path;
}

Result checkTensorboard(const std::string& run_dir, bool classify) {
  return run(GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/e2e/check_tensorboard.py " + run_dir +
             (classify ? " --classify" : ""));
}

Json statusOf(const std::string& run_dir) {
  const auto r = run(graft() + " status " + run_dir + " --json 2>/dev/null");
  EXPECT_EQ(r.code, 0) << run(graft() + " status " + run_dir).output;
  try {
    return parseJson(r.output, "graft status --json");
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what() << "\n" << r.output;
    return Json::object();
  }
}

std::string hfReference() { return GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/e2e/hf_reference.py"; }

}  // namespace graft::e2e
