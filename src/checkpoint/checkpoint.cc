#include "checkpoint/checkpoint.h"

#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <torch/torch.h>

#include <algorithm>
#include <optional>
#include <chrono>
#include <thread>
#include <map>
#include <cstdio>
#include <ctime>
#include <fstream>
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
void requireSpace(const std::string& dir, std::uint64_t bytes) {
  bytes += 64u << 10;  // metadata, attributes, RNG states
  const std::int64_t free_at = freeBytesAt(dir);
  if (free_at < 0) return;  // unknown: let the write itself report
  const auto free_bytes = static_cast<std::uint64_t>(free_at);
  if (free_bytes < bytes + bytes / 10) {
    // Checkpoints that resume found damaged are set aside, never deleted by graft: say what they hold.
    std::uint64_t damaged = 0;
    int count = 0;
    for (const auto& name : listDir(dir))
      if (endsWith(name, ".damaged")) damaged += static_cast<std::uint64_t>(fileBytes(dir + "/" + name)), ++count;
    const std::string aside = count == 0 ? std::string()
                                         : "; " + std::to_string(count) + " damaged checkpoint(s) set aside as *.damaged hold " +
                                               std::to_string(damaged >> 10) + " KiB: delete them to make room";
    throw Error(dir + ": not enough disk space for a checkpoint (needs about " + std::to_string(bytes >> 10) +
                " KiB, " + std::to_string(free_bytes >> 10) + " KiB free; disk full?" + aside +
                "); earlier checkpoints are intact");
  }
}

// debug.damage_checkpoint: flips one byte of `object`'s data in the draft `path`, after it was
// written and before it is verified (a write the disk got wrong).
void damageForTests(const std::string& path, const std::string& object) {
  const std::uint64_t offset = H5File::openRead(path).dataOffset(object);
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  char byte = 0;
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(&byte, 1);
  byte = static_cast<char>(byte ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&byte, 1);
  if (!f.flush()) throw Error(path + ": debug.damage_checkpoint could not flip a byte");
}

// The manifest of what `file` has written: "object crc32 bytes" per tensor, in order.
std::string manifestOf(const H5File& file) {
  std::string manifest;
  for (const auto& t : file.written()) manifest += formatManifestLine({t.object, t.crc32, t.bytes});
  return manifest;
}

// The CRC-32 and size of a share of a tensor's rows, read a block at a time: verifying never
// holds a whole tensor (a 405B model's embedding is 8.4 GB in float32). Rows stored as they are
// read (every tensor graft writes into one file) are read from the file itself through one small
// buffer, which stays in the CPU's cache between the read and the checksum: no fresh memory for
// each block, no copy through HDF5. Others (rows in part files) are read through HDF5 in blocks.
class RowChecksums {
 public:
  explicit RowChecksums(const H5File& file) : file_(file) {}

  // Rows [rows * part / parts, rows * (part + 1) / parts) of `object` (a 0-d tensor is one row).
  ManifestEntry of(const std::string& object, int part = 0, int parts = 1) {
    constexpr std::uint64_t kBlockBytes = 64u << 20, kRawBlockBytes = 4u << 20;
    const auto shape = file_.shape(object);
    const std::int64_t rows = shape.empty() ? 1 : shape[0];
    std::uint64_t row_bytes = c10::elementSize(file_.scalarType(object));
    for (std::size_t d = 1; d < shape.size(); ++d) row_bytes *= static_cast<std::uint64_t>(shape[d]);
    const std::int64_t begin = rows * part / parts, end = rows * (part + 1) / parts;
    ManifestEntry sum{object, crc32(nullptr, 0), 0};
    const std::uint64_t offset = begin < end ? file_.rawOffset(object) : 0;
    if (offset > 0) {
      if (!raw_) raw_.emplace(ReadOnlyFile::open(file_.path()));
      buffer_.resize(kRawBlockBytes);
      const std::uint64_t first = offset + static_cast<std::uint64_t>(begin) * row_bytes,
                          total = static_cast<std::uint64_t>(end - begin) * row_bytes;
      for (std::uint64_t at = 0; at < total; at += buffer_.size()) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), total - at));
        raw_->readAt(first + at, buffer_.data(), n);
        sum.crc32 = crc32Combine(sum.crc32, crc32(buffer_.data(), n), n);
      }
      sum.bytes = total;
      return sum;
    }
    const std::int64_t block = std::max<std::int64_t>(1, static_cast<std::int64_t>(kBlockBytes / std::max<std::uint64_t>(row_bytes, 1)));
    for (std::int64_t r = begin; r < end; r += block) {
      const at::Tensor t = file_.readRows(object, r, std::min(end, r + block)).contiguous();
      const std::size_t n = static_cast<std::size_t>(t.numel()) * t.element_size();
      sum.crc32 = crc32Combine(sum.crc32, crc32(t.data_ptr(), n), n);
      sum.bytes += n;
    }
    return sum;
  }

 private:
  const H5File& file_;
  std::optional<ReadOnlyFile> raw_;
  std::vector<char> buffer_;
};

// Reads every tensor `manifest` lists (but virtual ones when `skip_virtual`) and checks its size and
// CRC; throws InputError naming the file and the first damaged or unreadable tensor.
void verifyTensors(const H5File& file, const std::string& manifest, const std::string& path, bool skip_virtual) {
  RowChecksums sums(file);
  for (const auto& [object, crc, bytes] : parseManifest(manifest, path)) {
    if (skip_virtual && file.isVirtual(object)) continue;
    ManifestEntry have;
    try {
      have = sums.of(object);
    } catch (const Error& e) {
      throw InputError(path + ": tensor " + object + " cannot be read (" + e.what() + ")");
    }
    if (have.bytes != bytes || have.crc32 != crc)
      throw InputError(path + ": tensor " + object + " is damaged (checksum or size differs from the manifest" +
                       (file.isVirtual(object) ? "; its rows live in part files beside it: is one missing?" : "") + ")");
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
  // A copy where version 1 kept it (a variable-length string when long: no size limit), so that a
  // graft of before version 2, run on this run directory, verifies the checkpoint and then refuses
  // its version in one line, instead of taking it for damaged and setting it aside.
  file.setAttr("/", "manifest", manifest);
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
    verifyTensors(H5File::openRead(tmp), manifest, tmp, false);  // read back, then publish what verified
    publishFile(tmp, path);
    return manifest;
  } catch (const Error& e) {
    ::unlink(tmp.c_str());
    throw Error(std::string(e.what()) + "; part " + std::to_string(rank) + " of checkpoint " + std::to_string(step) +
                " not written, earlier checkpoints are intact");
  }
}

bool CheckpointContent::anySplit() const {
  for (std::size_t i = 0; i < rows.size(); ++i)
    if (split(i)) return true;
  return false;
}

std::vector<std::pair<int, std::pair<std::int64_t, std::int64_t>>> CheckpointContent::holders(std::size_t i) const {
  const std::int64_t whole = rows[i].wholeRows();
  if (!split(i)) return {{0, {0, whole}}};
  std::vector<std::pair<int, std::pair<std::int64_t, std::int64_t>>> out;
  for (int r = 0; r < world; ++r) {
    const RowRange range = shardRows(whole, r, world);
    if (range.size() > 0) out.push_back({r, {range.begin, range.end}});
  }
  return out;
}

std::string CheckpointContent::rowsProblem() const {
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const TensorRows& t = rows[i];
    const std::int64_t whole = t.wholeRows();
    const RowRange expected = split(i) ? shardRows(whole, rank, world) : RowRange{0, rank == 0 ? whole : 0};
    const bool zero_d = t.shape.empty() && t.rows.dim() == 0;
    const bool trailing = zero_d || (t.rows.dim() == static_cast<std::int64_t>(std::max<std::size_t>(t.shape.size(), 1)) &&
                                     std::equal(t.shape.begin() + (t.shape.empty() ? 0 : 1), t.shape.end(), t.rows.sizes().begin() + 1));
    if (!trailing || (expected.size() > 0 && t.row_begin != expected.begin) || t.rowCount() != expected.size())
      return t.object + ": rank " + std::to_string(rank) + " holds rows [" + std::to_string(t.row_begin) + ", " +
             std::to_string(t.row_begin + t.rowCount()) + ") shaped " + c10::str(t.rows.sizes()) + ", not rows [" +
             std::to_string(expected.begin) + ", " + std::to_string(expected.end) + ") of a tensor of " +
             std::to_string(whole) + " rows (" + (split(i) ? "split over the ranks" : "held whole by rank 0") + ")";
  }
  return "";
}

CheckpointContent CheckpointContent::copied() const {
  // In host memory: a GPU's memory is for training.
  auto host = [](const at::Tensor& t) { return t.to(at::Device(at::kCPU), t.scalar_type(), false, /*copy=*/true); };
  CheckpointContent copy = *this;
  for (auto& t : copy.rows) t.rows = host(t.rows);
  if (optimizer) {  // its attributes only: the moments are among the rows
    auto attributes = std::make_shared<AdamW>(*optimizer);
    for (auto& s : attributes->slots()) s.param = s.grad = s.exp_avg = s.exp_avg_sq = at::Tensor();
    copy.optimizer = attributes;
  }
  return copy;
}

CheckpointContent wholeContent(Transformer model, std::shared_ptr<const AdamW> optimizer, Schedule schedule,
                               TrainingState state) {
  CheckpointContent content{std::move(state), std::move(schedule), model, optimizer, {}, 0, 1};
  auto add = [&](const std::string& object, const at::Tensor& t) {
    content.rows.push_back({object, t.sizes().vec(), 0, t.detach(), /*sharded=*/false});
  };
  for (const auto& p : model->named_parameters())
    if (!content.state.transfer.adapterOnly() || p.value().requires_grad()) add("/model/" + p.key(), p.value());
  for (const auto& s : optimizer->slots()) {
    add("/optimizer/exp_avg/" + s.name, s.exp_avg);
    add("/optimizer/exp_avg_sq/" + s.name, s.exp_avg_sq);
  }
  return content;
}

std::uint64_t rowBytes(const TensorRows& t) {
  std::uint64_t bytes = c10::elementSize(t.rows.scalar_type());
  for (std::size_t d = 1; d < t.shape.size(); ++d) bytes *= static_cast<std::uint64_t>(t.shape[d]);
  return bytes;
}

namespace {

std::uint64_t wholeBytes(const TensorRows& t) { return rowBytes(t) * static_cast<std::uint64_t>(t.wholeRows()); }

// The part file of rank r holds its rows of every split tensor, under the tensor's own name.
std::vector<std::size_t> splitTensors(const CheckpointContent& content) {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < content.rows.size(); ++i)
    if (content.split(i)) out.push_back(i);
  return out;
}

}  // namespace

CheckpointDraft draftCheckpoint(const std::string& dir, const CheckpointContent& content, RowFiles files,
                                std::vector<std::uint64_t>* offsets) {
  const TrainingState& state = content.state;
  // Where each split tensor's rows come from (the ranks' rows must cover it exactly once), and what
  // this file will hold.
  std::map<std::size_t, std::vector<H5File::RowSource>> sources;
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < content.rows.size(); ++i) {
    const TensorRows& t = content.rows[i];
    if (content.split(i))
      for (const auto& [rank, range] : content.holders(i))
        sources[i].push_back({checkpointPartName(state.step, rank, content.world), t.object, range.first, range.second});
    if (files == RowFiles::kOneFile || !content.split(i)) bytes += wholeBytes(t);
  }
  makeDirectories(dir);
  requireSpace(dir, bytes);
  CheckpointDraft draft;
  draft.path = dir + "/" + checkpointName(state.step);
  draft.tmp = draft.path + ".tmp";
  draft.step = state.step;
  draft.damage_for_tests = state.damage_for_tests;
  draft.kill_for_tests = state.kill_for_tests;
  try {
    H5File file = H5File::create(draft.tmp);
    file.setAttr("/", "format", std::string("graft-checkpoint"));
    file.setAttr("/", "version", kCheckpointVersion);
    file.setAttr("/", "step", state.step);
    file.setAttr("/", "world_size", state.world_size);
    file.setAttr("/", "tokens_seen", state.tokens_seen);
    file.setAttr("/", "skipped_steps", state.skipped_steps);
    file.setAttr("/", "config", state.config);
    if (!state.data_fingerprint.empty()) file.setAttr("/", "data_fingerprint", state.data_fingerprint);
    file.setAttr("/", "created_unix", static_cast<std::int64_t>(std::time(nullptr)));
    if (!content.model.is_empty()) {
      Transformer model = content.model;
      writeModelGroup(file, model, state.transfer.adapterOnly(), /*tensors=*/false);
    }
    if (state.transfer.adapterOnly()) writeTransferGroup(file, state.transfer, state.base_model);
    for (std::size_t i = 0; i < content.rows.size(); ++i) {
      const TensorRows& t = content.rows[i];
      if (!content.split(i)) {
        if (t.rows.sizes().vec() != t.shape) throw Error(t.object + ": rank 0 holds " + c10::str(t.rows.sizes()) + " of it, not all of it");
        file.writeTensor(t.object, t.rows);  // rank 0 holds it whole
      } else if (files == RowFiles::kOneFile) {
        if (t.rows.scalar_type() != at::kFloat) throw Error(t.object + ": only float32 rows are written by the ranks into one file");
        const std::uint64_t offset = file.createRawFloat32(t.object, t.shape);
        if (offsets) offsets->push_back(offset);
      } else {
        file.writeVirtualRows(t.object, t.shape, sources.at(i), 0, 0);  // the checksum comes with the parts' (step 3)
      }
    }
    content.optimizer->saveAttributes(file, "/optimizer");
    content.schedule.save(file, "/schedule");
    file.setAttr("/sampler", "seed", static_cast<std::int64_t>(state.seed));
    file.setAttr("/sampler", "next_batch", state.next_batch);
    file.writeTensor("/rng/torch_cpu", state.rng_states);
    if (state.device_rng_states.defined()) file.writeTensor("/rng/torch_cuda", state.device_rng_states);
    draft.entries = file.written();
    file.close();
  } catch (const std::exception& e) {
    ::unlink(draft.tmp.c_str());  // free the space; the previous checkpoints were not touched
    throw Error(std::string(e.what()) + "; checkpoint of step " + std::to_string(state.step) +
                " not written, earlier checkpoints are intact");
  }
  return draft;
}

std::vector<std::uint64_t> writeRowsPart(const std::string& dir, const CheckpointContent& content) {
  const auto split = splitTensors(content);
  std::uint64_t bytes = 0;
  for (const std::size_t i : split) bytes += rowBytes(content.rows[i]) * static_cast<std::uint64_t>(content.rows[i].rowCount());
  writeCheckpointPart(dir, content.state.step, content.rank, content.world, bytes, [&](H5File& part) {
    for (const std::size_t i : split) part.writeTensor(content.rows[i].object, content.rows[i].rows);
  });
  return partSums(dir, content, content.rank);
}

std::vector<std::uint64_t> partSums(const std::string& dir, const CheckpointContent& content, int rank) {
  const std::string name = checkpointPartName(content.state.step, rank, content.world);
  const std::string path = dir + "/" + name;
  std::map<std::string, ManifestEntry> entries;
  for (const auto& e : parseManifest(readManifest(H5File::openRead(path)), path)) entries[e.object] = e;
  std::vector<std::uint64_t> sums;
  for (const std::size_t i : splitTensors(content)) {
    const auto it = entries.find(content.rows[i].object);
    if (it == entries.end()) throw InputError(path + ": checkpoint part has no " + content.rows[i].object);
    sums.push_back(it->second.crc32);
    sums.push_back(it->second.bytes);
  }
  return sums;
}

std::vector<std::uint64_t> awaitPartSums(const std::string& dir, const CheckpointContent& content, double limit_s,
                                         const std::function<void()>& check) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::uint64_t> all;
  for (int r = 0; r < content.world; ++r) {
    const std::string path = dir + "/" + checkpointPartName(content.state.step, r, content.world);
    while (!fileExists(path)) {
      check();
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit_s)
        throw Error(path + ": part of checkpoint " + std::to_string(content.state.step) + " not written within dist.slow_phase_timeout_s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const auto sums = partSums(dir, content, r);
    all.insert(all.end(), sums.begin(), sums.end());
  }
  return all;
}

std::string completeCheckpoint(const CheckpointDraft& draft, const CheckpointContent& content,
                               const std::vector<std::uint64_t>& all) {
  std::string manifest, own;  // every tensor; those rank 0 wrote through HDF5
  try {
    // Each split tensor's checksum, from its holders' in row order; their bytes must make the
    // whole tensor (rows of another shape would overlap or leave a gap that no checksum shows).
    const auto split = splitTensors(content);
    const std::size_t per_rank = split.size() * 2;
    if (all.size() != per_rank * static_cast<std::size_t>(content.world))
      throw Error(draft.tmp + ": " + std::to_string(all.size()) + " checksums from the ranks, not " +
                  std::to_string(per_rank * static_cast<std::size_t>(content.world)));
    std::map<std::string, H5File::Written> combined;
    for (std::size_t j = 0; j < split.size(); ++j) {
      const TensorRows& t = content.rows[split[j]];
      H5File::Written whole{t.object, crc32(nullptr, 0), 0};
      for (const auto& holder : content.holders(split[j])) {
        const std::size_t at = static_cast<std::size_t>(holder.first) * per_rank + 2 * j;
        whole.crc32 = crc32Combine(whole.crc32, static_cast<std::uint32_t>(all[at]), all[at + 1]);
        whole.bytes += all[at + 1];
      }
      if (whole.bytes != wholeBytes(t))
        throw Error(draft.tmp + ": the ranks wrote " + std::to_string(whole.bytes) + " bytes of " + t.object + ", not " +
                    std::to_string(wholeBytes(t)));
      combined[t.object] = whole;
    }
    H5File file = H5File::openReadWrite(draft.tmp);
    for (auto entry : draft.entries) {
      const auto it = combined.find(entry.object);
      if (it != combined.end()) entry = it->second;
      manifest += formatManifestLine({entry.object, entry.crc32, entry.bytes});
      if (it == combined.end()) own += formatManifestLine({entry.object, entry.crc32, entry.bytes});
    }
    writeManifest(file, manifest);
    file.setAttr("/", "complete", std::int64_t{1});
    file.close();
    if (draft.damage_for_tests && !own.empty()) damageForTests(draft.tmp, parseManifest(own, draft.tmp).front().object);
    if (draft.kill_for_tests) ::kill(::getpid(), SIGKILL);  // the draft is whole and marked complete, not yet verified
    // Read back what was written here, before it is published: a draft that does not verify never
    // gets a checkpoint's name. The ranks' rows were verified by the ranks that wrote them.
    verifyTensors(H5File::openRead(draft.tmp), own, draft.tmp, /*skip_virtual=*/false);
    publishFile(draft.tmp, draft.path);
  } catch (const std::exception& e) {
    ::unlink(draft.tmp.c_str());
    throw Error(std::string(e.what()) + "; checkpoint of step " + std::to_string(draft.step) +
                " not written, earlier checkpoints are intact");
  }
  return draft.path;
}

std::string writeCheckpoint(const std::string& dir, const CheckpointContent& content) {
  if (content.anySplit()) throw Error("writeCheckpoint: the ranks' rows of a checkpoint are written by all of them together");
  return completeCheckpoint(draftCheckpoint(dir, content, RowFiles::kParts), content, {});
}

std::vector<std::string> completeCheckpoints(const std::string& dir) {
  std::vector<std::string> found;
  auto names = listDir(dir);
  for (auto it = names.rbegin(); it != names.rend(); ++it)
    if (isCheckpointName(*it) && isComplete(dir + "/" + *it)) found.push_back(dir + "/" + *it);
  return found;
}

namespace {
std::vector<ManifestEntry> entriesUnder(const H5File& file, const std::string& path, const std::string& prefix) {
  std::vector<ManifestEntry> entries;
  for (auto& e : parseManifest(readManifest(file), path))
    if (e.object.rfind(prefix, 0) == 0) entries.push_back(std::move(e));
  return entries;
}
}  // namespace

std::size_t manifestEntries(const std::string& path, const std::string& prefix) {
  return entriesUnder(H5File::openRead(path), path, prefix).size();
}

std::vector<std::uint64_t> checkpointRowSums(const std::string& path, const std::string& prefix, std::size_t count,
                                             int part, int parts, std::string* error) {
  std::vector<std::uint64_t> sums(2 * count, 0);
  for (std::size_t i = 0; i < count; ++i) sums[2 * i + 1] = kUnreadableRows;
  auto fail = [error](const std::string& why) {
    if (error && error->empty()) *error = why;
  };
  std::vector<ManifestEntry> entries;
  std::optional<H5File> file;
  try {
    file.emplace(H5File::openRead(path));
    entries = entriesUnder(*file, path, prefix);
  } catch (const Error& e) {
    fail(e.what());
    return sums;
  }
  if (entries.size() != count) fail(path + ": the manifest lists " + std::to_string(entries.size()) + " tensors here, " +
                                    std::to_string(count) + " on rank 0");
  RowChecksums read(*file);
  for (std::size_t i = 0; i < std::min(count, entries.size()); ++i) {
    const std::string& object = entries[i].object;
    try {
      const ManifestEntry sum = read.of(object, part, parts);
      sums[2 * i] = sum.crc32;
      sums[2 * i + 1] = sum.bytes;
    } catch (const Error& e) {
      fail(path + ": tensor " + object + " cannot be read (" + e.what() + ")");
    }
  }
  return sums;
}

void checkRowSums(const std::string& path, const std::string& prefix, const std::vector<std::uint64_t>& all, int parts) {
  const auto entries = entriesUnder(H5File::openRead(path), path, prefix);
  const std::size_t per_part = all.size() / static_cast<std::size_t>(parts);
  if (per_part != 2 * entries.size()) throw InputError(path + ": the ranks verified another number of tensors than the manifest lists");
  for (std::size_t i = 0; i < entries.size(); ++i) {
    std::uint32_t crc = crc32(nullptr, 0);
    std::uint64_t bytes = 0;
    for (int p = 0; p < parts; ++p) {
      const std::size_t at = static_cast<std::size_t>(p) * per_part + 2 * i;
      if (all[at + 1] == kUnreadableRows)
        throw InputError(path + ": tensor " + entries[i].object + " cannot be read by rank " + std::to_string(p) +
                         " (its error is in that rank's log)");
      crc = crc32Combine(crc, static_cast<std::uint32_t>(all[at]), all[at + 1]);
      bytes += all[at + 1];
    }
    if (bytes != entries[i].bytes || crc != entries[i].crc32)
      throw InputError(path + ": tensor " + entries[i].object + " is damaged (checksum or size differs from the manifest" +
                       (H5File::openRead(path).isVirtual(entries[i].object)
                            ? "; its rows live in part files beside it: is one missing?"
                            : "") +
                       ")");
  }
}

std::vector<std::string> modelFilesToVerify(const std::string& path) {
  std::vector<std::string> files;
  if (!isCheckpointFile(path)) return files;
  files.push_back(path);
  const H5File file = H5File::openRead(path);
  if (hasTransferGroup(file)) {
    std::string base;
    readTransferGroup(file, base);
    if (!base.empty() && fileExists(base))
      for (auto& f : modelFilesToVerify(base)) files.push_back(std::move(f));
  }
  return files;
}

bool isCheckpointFile(const std::string& path) {
  if (!H5File::isHdf5(path)) return false;
  const H5File file = H5File::openRead(path);
  return file.hasAttr("/", "format") && file.stringAttr("/", "format") == "graft-checkpoint";
}

int verifyModelFile(const std::string& path) {
  int verified = 0;
  for (const auto& file : modelFilesToVerify(path)) {
    const H5File h5 = H5File::openRead(file);
    if (!h5.hasAttr("/", "complete") || h5.intAttr("/", "complete") != 1)
      throw InputError(file + ": an incomplete checkpoint (its write never finished); use a complete one");
    const std::size_t count = manifestEntries(file, "/model/");
    std::string error;
    const auto sums = checkpointRowSums(file, "/model/", count, 0, 1, &error);
    if (!error.empty()) throw InputError(error);
    checkRowSums(file, "/model/", sums, 1);
    verified += static_cast<int>(count);
  }
  return verified;
}

void checkModelFile(const std::string& path, bool verify) {
  if (!verify) {
    if (isCheckpointFile(path)) std::fprintf(stderr, "model: %s is not verified against its manifest (--no-verify)\n", path.c_str());
    return;
  }
  const int verified = verifyModelFile(path);
  if (verified > 0)
    std::fprintf(stderr, "model: %s verified against its manifest (%d tensors; --no-verify skips this)\n", path.c_str(), verified);
}

void verifyCheckpoint(const std::string& path, bool parts_too) {
  H5File file = H5File::openRead(path);
  verifyTensors(file, readManifest(file), path, !parts_too);
}

namespace {

// This rank's rows of each model tensor (an adapter-only checkpoint holds the trainable ones only;
// the others keep the base's values).
bool adapterOnly(const H5File& file) {
  return file.hasAttr("/model", "adapter_only") && file.intAttr("/model", "adapter_only") != 0;
}

void readModelRows(const H5File& file, const std::vector<AdamW::Rows>& rows) {
  const bool adapter_only = adapterOnly(file);
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

bool holdsTheWholeModel(const std::string& path) { return !adapterOnly(H5File::openRead(path)); }

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
  if (file.hasAttr("/", "data_fingerprint")) state.data_fingerprint = file.stringAttr("/", "data_fingerprint");
  state.seed = static_cast<std::uint64_t>(file.intAttr("/sampler", "seed"));
  state.next_batch = file.intAttr("/sampler", "next_batch");
  state.rng_states = file.readTensor("/rng/torch_cpu");
  if (file.exists("/rng/torch_cuda")) state.device_rng_states = file.readTensor("/rng/torch_cuda");
  return state;
}

std::vector<std::string> removeStaleDrafts(const std::string& dir) {
  std::vector<std::string> removed;
  for (const auto& name : listDir(dir))
    if (endsWith(name, ".tmp") && ::unlink((dir + "/" + name).c_str()) == 0) removed.push_back(name);
  return removed;
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
