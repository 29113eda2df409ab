#include "checkpoint/checkpoint.h"

#include <dirent.h>
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "io/hdf5.h"
#include "io/model_io.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

std::vector<std::string> listDir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return names;
  while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

bool isCheckpointName(const std::string& name) {
  return name.size() == 16 && name.compare(0, 5, "step-") == 0 && name.compare(13, 3, ".h5") == 0 &&
         std::all_of(name.begin() + 5, name.begin() + 13, ::isdigit);
}

bool isComplete(const std::string& path) {
  try {
    H5File file = H5File::openRead(path);
    return file.hasAttr("/", "format") && file.stringAttr("/", "format") == "graft-checkpoint" &&
           file.hasAttr("/", "complete") && file.intAttr("/", "complete") == 1;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

std::string checkpointName(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld.h5", static_cast<long long>(step));
  return name;
}

std::string writeCheckpoint(const std::string& dir, Llama& model, AdamW& optimizer, const Schedule& schedule,
                            const TrainingState& state) {
  makeDirectories(dir);
  const std::string path = dir + "/" + checkpointName(state.step);
  const std::string tmp = path + ".tmp";
  {
    H5File file = H5File::create(tmp);
    file.setAttr("/", "format", std::string("graft-checkpoint"));
    file.setAttr("/", "version", kCheckpointVersion);
    file.setAttr("/", "step", state.step);
    file.setAttr("/", "world_size", state.world_size);
    file.setAttr("/", "tokens_seen", state.tokens_seen);
    file.setAttr("/", "skipped_steps", state.skipped_steps);
    file.setAttr("/", "config", state.config);
    file.setAttr("/", "created_unix", static_cast<std::int64_t>(std::time(nullptr)));
    writeModelGroup(file, model);
    const auto& o = optimizer.options();
    file.setAttr("/optimizer", "step_count", optimizer.stepCount());
    file.setAttr("/optimizer", "beta1", o.beta1);
    file.setAttr("/optimizer", "beta2", o.beta2);
    file.setAttr("/optimizer", "eps", o.eps);
    file.setAttr("/optimizer", "weight_decay", o.weight_decay);
    for (const auto& s : optimizer.slots()) {
      file.writeTensor("/optimizer/exp_avg/" + s.name, s.exp_avg);
      file.writeTensor("/optimizer/exp_avg_sq/" + s.name, s.exp_avg_sq);
    }
    file.setAttr("/schedule", "lr", schedule.lr);
    file.setAttr("/schedule", "min_lr", schedule.min_lr);
    file.setAttr("/schedule", "warmup", schedule.warmup);
    file.setAttr("/schedule", "total", schedule.total);
    file.setAttr("/sampler", "seed", static_cast<std::int64_t>(state.seed));
    file.setAttr("/sampler", "next_batch", state.next_batch);
    file.writeTensor("/rng/torch_cpu", state.rng_states);
    file.setAttr("/", "complete", std::int64_t{1});
    file.close();
  }
  publishFile(tmp, path);
  return path;
}

std::vector<std::string> completeCheckpoints(const std::string& dir) {
  std::vector<std::string> found;
  auto names = listDir(dir);
  for (auto it = names.rbegin(); it != names.rend(); ++it)
    if (isCheckpointName(*it) && isComplete(dir + "/" + *it)) found.push_back(dir + "/" + *it);
  return found;
}

TrainingState readCheckpoint(const std::string& path, Llama& model, AdamW& optimizer) {
  H5File file = H5File::openRead(path);
  const auto version = file.intAttr("/", "version");
  if (version != kCheckpointVersion)
    throw InputError(path + ": checkpoint format version " + std::to_string(version) + " is not supported (expected " +
                     std::to_string(kCheckpointVersion) + ")");
  const LlamaConfig stored = readModelConfig(file);
  if (!(stored == model->config()))
    throw InputError(path + ": checkpoint holds a model of " + stored.describe() + ", but this run builds " +
                     model->config().describe());
  readModelWeights(file, model);
  torch::NoGradGuard no_grad;
  for (auto& s : optimizer.slots()) {
    for (auto* pair : {&s.exp_avg, &s.exp_avg_sq}) {
      const std::string object = std::string("/optimizer/") + (pair == &s.exp_avg ? "exp_avg/" : "exp_avg_sq/") + s.name;
      if (!file.exists(object)) throw InputError(path + ": optimizer tensor " + object + " is missing");
      auto t = file.readTensor(object);
      if (t.sizes() != pair->sizes()) throw InputError(path + ": optimizer tensor " + object + " has the wrong shape");
      pair->copy_(t);
    }
  }
  optimizer.setStepCount(file.intAttr("/optimizer", "step_count"));
  TrainingState state;
  state.step = file.intAttr("/", "step");
  state.world_size = file.intAttr("/", "world_size");
  state.tokens_seen = file.intAttr("/", "tokens_seen");
  state.skipped_steps = file.intAttr("/", "skipped_steps");
  state.config = file.stringAttr("/", "config");
  state.seed = static_cast<std::uint64_t>(file.intAttr("/sampler", "seed"));
  state.next_batch = file.intAttr("/sampler", "next_batch");
  state.rng_states = file.readTensor("/rng/torch_cpu");
  return state;
}

void pruneCheckpoints(const std::string& dir, std::int64_t keep) {
  for (const auto& name : listDir(dir))
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) ::unlink((dir + "/" + name).c_str());
  if (keep <= 0) return;
  const auto complete = completeCheckpoints(dir);
  for (std::size_t i = static_cast<std::size_t>(keep); i < complete.size(); ++i) ::unlink(complete[i].c_str());
}

}  // namespace graft
