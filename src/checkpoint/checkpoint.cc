#include "checkpoint/checkpoint.h"

#include <dirent.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <sstream>

#include "checkpoint/manifest.h"
#include "formats/hdf5.h"
#include "convert/model_io.h"
#include "util/checksum.h"
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

// Fails early, with a clear message and before anything is written, when the file system cannot
// hold one more checkpoint (the previous ones stay until the new one is verified).
std::uint64_t modelBytes(Transformer& model, bool adapter_only) {
  std::uint64_t bytes = 0;
  for (const auto& p : model->parameters())
    if (!adapter_only || p.requires_grad()) bytes += static_cast<std::uint64_t>(p.numel()) * 4;
  return bytes;
}

void requireSpace(const std::string& dir, std::uint64_t bytes) {
  bytes += 64u << 10;  // metadata, attributes, RNG states
  struct statvfs fs {};
  if (::statvfs(dir.c_str(), &fs) != 0) return;  // unknown: let the write itself report
  const std::uint64_t free_bytes = static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free_bytes < bytes + bytes / 10)
    throw Error(dir + ": not enough disk space for a checkpoint (needs about " + std::to_string(bytes >> 10) +
                " KiB, " + std::to_string(free_bytes >> 10) + " KiB free; disk full?); earlier checkpoints are intact");
}

// The manifest of what `file` has written: "object crc32 bytes" per tensor, in order.
std::string manifestOf(const H5File& file) {
  std::string manifest;
  for (const auto& t : file.written()) manifest += formatManifestLine({t.object, t.crc32, t.bytes});
  return manifest;
}

// Reads every tensor `manifest` lists (but virtual ones when `skip_virtual`) and checks its size and
// CRC; throws InputError naming the file and the first damaged or unreadable tensor.
void verifyTensors(const H5File& file, const std::string& manifest, const std::string& path, bool skip_virtual) {
  for (const auto& [object, crc, bytes] : parseManifest(manifest, path)) {
    if (skip_virtual && file.isVirtual(object)) continue;
    at::Tensor t;
    try {
      t = file.readTensor(object).contiguous();
    } catch (const Error& e) {
      throw InputError(path + ": tensor " + object + " cannot be read (" + e.what() + ")");
    }
    const std::size_t have = static_cast<std::size_t>(t.numel()) * t.element_size();
    if (have != bytes || crc32(t.data_ptr(), have) != crc)
      throw InputError(path + ": tensor " + object + " is damaged (checksum or size differs from the manifest)");
  }
}

}  // namespace

std::string readManifest(const H5File& file) {
  if (file.exists("/manifest")) {
    const at::Tensor bytes = file.readTensor("/manifest").contiguous();
    if (bytes.scalar_type() != at::kByte || bytes.dim() != 1)
      throw InputError(file.path() + ": /manifest is not a 1-D uint8 dataset");
    return std::string(static_cast<const char*>(bytes.data_ptr()), static_cast<std::size_t>(bytes.numel()));
  }
  if (file.hasAttr("/", "manifest")) return file.stringAttr("/", "manifest");  // format version 1
  throw InputError(file.path() + ": no manifest; not a complete graft checkpoint");
}

void writeManifest(H5File& file, const std::string& manifest) {
  std::string copy = manifest;  // from_blob wants a mutable pointer; writeTensor only reads it
  file.writeTensor("/manifest", torch::from_blob(copy.data(), {static_cast<std::int64_t>(copy.size())}, torch::kUInt8));
}

std::string checkpointName(std::int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld.h5", static_cast<long long>(step));
  return name;
}

std::string checkpointPartName(std::int64_t step, int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "step-%08lld.part-%05d-of-%05d.h5", static_cast<long long>(step), rank, world);
  return name;
}

std::string writeCheckpointPart(const std::string& dir, std::int64_t step, int rank, int world, std::uint64_t bytes,
                                const std::function<void(H5File&)>& write) {
  makeDirectories(dir);
  requireSpace(dir, bytes);
  const std::string path = dir + "/" + checkpointPartName(step, rank, world);
  const std::string tmp = path + ".tmp";
  try {
    H5File file = H5File::create(tmp);
    file.setAttr("/", "format", std::string("graft-checkpoint-part"));
    file.setAttr("/", "step", step);
    file.setAttr("/", "rank", std::int64_t{rank});
    file.setAttr("/", "world_size", std::int64_t{world});
    write(file);
    std::string manifest = manifestOf(file);
    writeManifest(file, manifest);
    file.close();
    publishFile(tmp, path);
    verifyTensors(H5File::openRead(path), manifest, path, false);  // read back, as the checkpoint file is
    return manifest;
  } catch (const Error& e) {
    ::unlink(tmp.c_str());
    throw Error(std::string(e.what()) + "; part " + std::to_string(rank) + " of checkpoint " + std::to_string(step) +
                " not written, earlier checkpoints are intact");
  }
}

std::string writeCheckpoint(const std::string& dir, Transformer& model, const OptimizerWriter& optimizer,
                            const Schedule& schedule, const TrainingState& state, const GroupWriter& model_tensors) {
  const bool model_parts = static_cast<bool>(model_tensors.write);
  const std::uint64_t bytes =
      (model_parts ? model_tensors.bytes : modelBytes(model, state.transfer.adapterOnly())) + optimizer.bytes;
  return completeCheckpoint(draftCheckpoint(dir, model, optimizer, schedule, state, model_tensors, bytes), {});
}

CheckpointDraft draftCheckpoint(const std::string& dir, Transformer& model, const OptimizerWriter& optimizer,
                                const Schedule& schedule, const TrainingState& state, const GroupWriter& model_tensors,
                                std::uint64_t bytes) {
  makeDirectories(dir);
  requireSpace(dir, bytes);
  CheckpointDraft draft;
  draft.path = dir + "/" + checkpointName(state.step);
  draft.tmp = draft.path + ".tmp";
  draft.step = state.step;
  const bool model_parts = static_cast<bool>(model_tensors.write);
  try {
    H5File file = H5File::create(draft.tmp);
    file.setAttr("/", "format", std::string("graft-checkpoint"));
    file.setAttr("/", "version", kCheckpointVersion);
    file.setAttr("/", "step", state.step);
    file.setAttr("/", "world_size", state.world_size);
    file.setAttr("/", "tokens_seen", state.tokens_seen);
    file.setAttr("/", "skipped_steps", state.skipped_steps);
    file.setAttr("/", "config", state.config);
    file.setAttr("/", "created_unix", static_cast<std::int64_t>(std::time(nullptr)));
    writeModelGroup(file, model, state.transfer.adapterOnly(), /*tensors=*/!model_parts);
    if (model_parts) model_tensors.write(file);
    if (state.transfer.adapterOnly()) writeTransferGroup(file, state.transfer, state.base_model);
    optimizer.write(file);
    schedule.save(file, "/schedule");
    file.setAttr("/sampler", "seed", static_cast<std::int64_t>(state.seed));
    file.setAttr("/sampler", "next_batch", state.next_batch);
    file.writeTensor("/rng/torch_cpu", state.rng_states);
    if (state.device_rng_states.defined()) file.writeTensor("/rng/torch_cuda", state.device_rng_states);
    draft.entries = file.written();
    file.close();
  } catch (const Error& e) {
    ::unlink(draft.tmp.c_str());  // free the space; the previous checkpoints were not touched
    throw Error(std::string(e.what()) + "; checkpoint of step " + std::to_string(state.step) +
                " not written, earlier checkpoints are intact");
  }
  return draft;
}

std::string completeCheckpoint(const CheckpointDraft& draft, const std::vector<H5File::Written>& raw) {
  std::string manifest, own;  // every tensor; those rank 0 wrote through HDF5 (not virtual, not raw)
  try {
    H5File file = H5File::openReadWrite(draft.tmp);
    for (auto entry : draft.entries) {
      const auto it = std::find_if(raw.begin(), raw.end(), [&](const H5File::Written& w) { return w.object == entry.object; });
      if (it != raw.end()) entry = *it;
      manifest += formatManifestLine({entry.object, entry.crc32, entry.bytes});
      if (it == raw.end() && !file.isVirtual(entry.object)) own += formatManifestLine({entry.object, entry.crc32, entry.bytes});
    }
    writeManifest(file, manifest);
    file.setAttr("/", "complete", std::int64_t{1});
    file.close();
    publishFile(draft.tmp, draft.path);
  } catch (const Error& e) {
    ::unlink(draft.tmp.c_str());
    throw Error(std::string(e.what()) + "; checkpoint of step " + std::to_string(draft.step) +
                " not written, earlier checkpoints are intact");
  }
  // Read back what was written here; parts and raw rows were verified by the ranks that wrote them.
  verifyTensors(H5File::openRead(draft.path), own, draft.path, /*skip_virtual=*/false);
  return draft.path;
}

std::vector<std::string> completeCheckpoints(const std::string& dir) {
  std::vector<std::string> found;
  auto names = listDir(dir);
  for (auto it = names.rbegin(); it != names.rend(); ++it)
    if (isCheckpointName(*it) && isComplete(dir + "/" + *it)) found.push_back(dir + "/" + *it);
  return found;
}

void verifyCheckpoint(const std::string& path, bool parts_too) {
  H5File file = H5File::openRead(path);
  verifyTensors(file, readManifest(file), path, !parts_too);
}

namespace {

// This rank's rows of each model tensor (an adapter-only checkpoint holds the trainable ones only;
// the others keep the base's values).
void readModelRows(const H5File& file, const std::vector<AdamW::Rows>& rows) {
  const bool adapter_only = file.hasAttr("/model", "adapter_only") && file.intAttr("/model", "adapter_only") != 0;
  torch::NoGradGuard no_grad;
  for (const auto& r : rows) {
    const std::string object = "/model/" + r.name;
    if (adapter_only && !file.exists(object)) continue;
    checkModelTensor(file, r.name, r.global_shape);
    if (r.rows.size(0) == 0) continue;
    r.rows.copy_(file.readRows(object, r.row_begin, r.row_begin + r.rows.size(0)).view(r.rows.sizes()));
  }
}

}  // namespace

TrainingState readCheckpoint(const std::string& path, Transformer& model, AdamW& optimizer,
                             const std::vector<AdamW::Rows>& model_rows) {
  H5File file = H5File::openRead(path);
  const auto version = file.intAttr("/", "version");
  if (version < 1 || version > kCheckpointVersion)
    throw InputError(path + ": checkpoint format version " + std::to_string(version) + " is not supported (this graft reads 1 to " +
                     std::to_string(kCheckpointVersion) + ")");
  const ModelConfig stored = readModelConfig(file);
  if (!(stored == model->config()))
    throw InputError(path + ": checkpoint holds a model of " + stored.describe() + ", but this run builds " +
                     model->config().describe());
  if (model_rows.empty()) readModelWeights(file, model);
  else readModelRows(file, model_rows);
  optimizer.load(file, "/optimizer");
  TrainingState state;
  state.step = file.intAttr("/", "step");
  state.world_size = file.intAttr("/", "world_size");
  state.tokens_seen = file.intAttr("/", "tokens_seen");
  state.skipped_steps = file.intAttr("/", "skipped_steps");
  state.config = file.stringAttr("/", "config");
  state.seed = static_cast<std::uint64_t>(file.intAttr("/sampler", "seed"));
  state.next_batch = file.intAttr("/sampler", "next_batch");
  state.rng_states = file.readTensor("/rng/torch_cpu");
  if (file.exists("/rng/torch_cuda")) state.device_rng_states = file.readTensor("/rng/torch_cuda");
  return state;
}

void pruneCheckpoints(const std::string& dir, std::int64_t keep, std::int64_t written) {
  for (const auto& name : listDir(dir))
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) ::unlink((dir + "/" + name).c_str());
  auto stepOf = [](const std::string& path) { return std::stoll(path.substr(path.size() - 11, 8)); };
  std::vector<std::string> history;  // newest first, none newer than `written`
  for (const auto& path : completeCheckpoints(dir))
    if (stepOf(path) <= written) history.push_back(path);
  std::vector<std::string> deleted;  // "step-XXXXXXXX" of the checkpoints deleted here
  for (std::size_t i = keep > 0 ? static_cast<std::size_t>(keep) : history.size(); i < history.size(); ++i) {
    ::unlink(history[i].c_str());
    deleted.push_back(history[i].substr(history[i].size() - 16, 13));
  }
  // Part files: "step-XXXXXXXX.part-RRRRR-of-WWWWW.h5".
  for (const auto& name : listDir(dir)) {
    if (name.size() != 36 || name.compare(0, 5, "step-") != 0 || name.compare(13, 6, ".part-") != 0 ||
        !std::all_of(name.begin() + 28, name.begin() + 33, ::isdigit))
      continue;
    const std::string stem = name.substr(0, 13), main = dir + "/" + stem + ".h5";
    bool remove = std::find(deleted.begin(), deleted.end(), stem) != deleted.end() || !fileExists(main);
    if (!remove) {
      try {  // parts left by an attempt with another number of ranks
        remove = H5File::openRead(main).intAttr("/", "world_size") != std::stoll(name.substr(28, 5));
      } catch (const Error&) {
        // unreadable now: keep its parts, it may be fine later
      }
    }
    if (remove) ::unlink((dir + "/" + name).c_str());
  }
}

}  // namespace graft
