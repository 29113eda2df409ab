#include "train/checkpointing.h"

#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "checkpoint/manifest.h"
#include "data/dataset.h"
#include "util/checksum.h"
#include "formats/hdf5.h"
#include "parallel/heartbeat.h"
#include "parallel/shard_plan.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {

namespace {

using ModelRows = std::shared_ptr<const std::vector<AdamW::Rows>>;

// Bytes of this rank's part: both moments of its optimizer rows, and its rows of model tensors.
std::uint64_t partBytes(const AdamW& optimizer, const std::vector<AdamW::Rows>& model_rows) {
  std::uint64_t bytes = 0;
  for (const auto& s : optimizer.slots()) bytes += static_cast<std::uint64_t>(s.param.numel()) * 8;
  for (const auto& r : model_rows) bytes += static_cast<std::uint64_t>(r.rows.numel()) * 4;
  return bytes;
}

// Writes this rank's part of checkpoint `step` and returns its manifest. Local: no collective.
std::string writePart(const std::string& dir, std::int64_t step, int rank, int world, const AdamW& optimizer,
                      const std::vector<AdamW::Rows>& model_rows) {
  torch::NoGradGuard no_grad;  // grad mode is per thread
  return writeCheckpointPart(dir, step, rank, world, partBytes(optimizer, model_rows), [&](H5File& part) {
    optimizer.savePart(part, "/optimizer");
    for (const auto& r : model_rows) part.writeTensor("/model/" + r.name, r.rows);
  });
}

// (crc, bytes) of every tensor of a part, from its manifest, in a fixed order (moments slot by
// slot, then the model's tensors): the same on every rank.
std::vector<std::uint64_t> partSums(const std::string& manifest, const std::string& part_name, const AdamW& optimizer,
                                    const std::vector<AdamW::Rows>& model_rows) {
  std::map<std::string, ManifestEntry> entries;
  for (const auto& e : parseManifest(manifest, part_name)) entries[e.object] = e;
  std::vector<std::uint64_t> sums;
  auto add = [&](const std::string& object) {
    const auto it = entries.find(object);
    if (it == entries.end()) throw InputError(part_name + ": checkpoint part has no " + object);
    sums.push_back(it->second.crc32);
    sums.push_back(it->second.bytes);
  };
  for (const auto& s : optimizer.slots())
    for (const std::string& object : {"/optimizer/exp_avg/" + s.name, "/optimizer/exp_avg_sq/" + s.name}) add(object);
  for (const auto& r : model_rows) add("/model/" + r.name);
  return sums;
}

// Rank 0: the writers of the checkpoint's index of the parts, from every rank's partSums (`all`,
// rank after rank).
PartWriters indexWriters(std::shared_ptr<const std::vector<std::uint64_t>> all, std::int64_t step, int world,
                         std::shared_ptr<const AdamW> optimizer, ModelRows model_rows) {
  const std::size_t per_rank = all->size() / static_cast<std::size_t>(world);
  // Rank r's rows of a tensor with `rows` rows whose (crc, bytes) sit at `index` of its sums.
  auto parts_of = [all, per_rank, step, world](std::int64_t rows, std::size_t index) {
    std::vector<AdamW::Part> parts;
    for (int r = 0; r < world; ++r) {
      const RowRange mine = shardRows(rows, r, world);
      const std::size_t at = static_cast<std::size_t>(r) * per_rank + index * 2;
      parts.push_back({checkpointPartName(step, r, world), mine.begin, mine.end, static_cast<std::uint32_t>((*all)[at]), (*all)[at + 1]});
    }
    return parts;
  };
  PartWriters out;
  out.optimizer = {0, [optimizer, parts_of](H5File& file) {
                     optimizer->saveIndex(file, "/optimizer", [&](std::size_t slot, const std::string& object) {
                       const std::size_t which = object.find("/exp_avg_sq/") != std::string::npos ? 1 : 0;
                       return parts_of(optimizer->slots()[slot].global_shape[0], slot * 2 + which);
                     });
                   }};
  if (!model_rows->empty()) {
    const std::size_t first = optimizer->slots().size() * 2;
    out.model = {0, [model_rows, parts_of, first](H5File& file) {
                   for (std::size_t i = 0; i < model_rows->size(); ++i) {
                     const auto& r = (*model_rows)[i];
                     writeRowIndex(file, "/model/" + r.name, r.global_shape, parts_of(r.global_shape[0], first + i));
                   }
                 }};
  }
  return out;
}

// Note [one file, every rank's rows]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A sharded run's synchronous checkpoint is one HDF5 file laid out as an unsharded run's (the
// layout of docs/checkpoint-format.md, no part files, no index), and every rank writes its own
// rows into it, at the same time:
//   1. rank 0 drafts the file: everything but the rows of the sharded tensors, which it creates
//      contiguous with their space allocated (H5File::createRawFloat32), and sends their offsets;
//   2. the ranks open the draft as a SharedFile (MPI-IO) and write, in one collective write each,
//      their rows of every tensor at offset + first row x row bytes; the file is synced and closed,
//      and every rank reads its rows back and checks their CRC-32;
//   3. the ranks' CRCs go to rank 0, which combines them in row order into each whole tensor's
//      (crc32_combine: the checksum an unsharded write gives), writes the manifest and complete,
//      and publishes the file (temp + fsync + rename).
// Step 2 runs on a helper thread beside the heartbeat (the SharedFile has its own communicator:
// Note [MPI-IO beside the heartbeat]), so a rank that stalls while writing is still named. Where
// MPI-IO cannot open the file (no MPI_THREAD_MULTIPLE, no MPI-IO component, a file system that
// refuses), the draft goes and the checkpoint is written as checkpoint.files = per_rank (a part
// file per rank, mapped by rank 0's file), and the log says why. checkpoint.async keeps part files
// too: step 1 needs the ranks to meet, and its helpers must not.
struct RowWrite {
  std::string object;
  std::vector<std::int64_t> shape;  // the whole tensor's
  std::int64_t row_begin = 0;
  at::Tensor rows;
};

// This rank's rows of every tensor the file holds rows of, in the order rank 0 creates them (the
// model's tensors, then each slot's two moments).
std::vector<RowWrite> rowWrites(const AdamW& optimizer, const std::vector<AdamW::Rows>& model_rows) {
  std::vector<RowWrite> out;
  for (const auto& r : model_rows) out.push_back({"/model/" + r.name, r.global_shape, r.row_begin, r.rows});
  for (const auto& s : optimizer.slots()) {
    out.push_back({"/optimizer/exp_avg/" + s.name, s.global_shape, s.row_begin, s.exp_avg});
    out.push_back({"/optimizer/exp_avg_sq/" + s.name, s.global_shape, s.row_begin, s.exp_avg_sq});
  }
  return out;
}

// Step 2, collective over `file`: writes this rank's rows at their offsets in `tmp` (flushed to
// storage), reads them back; returns (crc32, bytes) per tensor.
std::vector<std::uint64_t> writeRowsOrThrow(SharedFile& file, const std::string& tmp, const std::vector<RowWrite>& writes,
                                            const std::vector<std::uint64_t>& offsets) {
  std::vector<std::uint64_t> sums;
  std::vector<at::Tensor> contiguous;
  std::vector<SharedFile::Piece> pieces;
  for (std::size_t i = 0; i < writes.size(); ++i) {
    contiguous.push_back(writes[i].rows.detach().cpu().contiguous());
    const auto& t = contiguous.back();
    std::uint64_t row_bytes = 4;
    for (std::size_t d = 1; d < writes[i].shape.size(); ++d) row_bytes *= static_cast<std::uint64_t>(writes[i].shape[d]);
    pieces.push_back({offsets[i] + row_bytes * static_cast<std::uint64_t>(writes[i].row_begin), t.data_ptr(),
                      static_cast<std::uint64_t>(t.numel()) * 4});
    sums.push_back(crc32(t.data_ptr(), pieces.back().bytes));
    sums.push_back(pieces.back().bytes);
  }
  file.writeAndClose(pieces);
  const ReadOnlyFile back = ReadOnlyFile::open(tmp);  // read back, as every checkpoint is
  std::string buffer;
  for (std::size_t i = 0; i < writes.size(); ++i) {
    buffer.resize(static_cast<std::size_t>(pieces[i].bytes));
    back.readAt(pieces[i].offset, buffer.data(), buffer.size());
    if (crc32(buffer.data(), buffer.size()) != sums[2 * i])
      throw Error(tmp + ": this rank's rows of " + writes[i].object +
                  " read back differently from what was written (a write that failed: disk full, a quota or a file size "
                  "limit? " + (freeBytesAt(tmp) < 0 ? std::string("free space unknown") : std::to_string(freeBytesAt(tmp) >> 10) + " KiB free there") + ")");
  }
  return sums;
}

// writeRowsOrThrow; on failure the error says that the earlier checkpoints are intact (rank 0
// removes the draft once every rank is done with it: writeRowsIntoOneFile).
std::vector<std::uint64_t> writeRows(SharedFile& file, const std::string& tmp, const std::vector<RowWrite>& writes,
                                     const std::vector<std::uint64_t>& offsets) {
  auto failed = [](const char* what) {
    return Error(std::string(what) + "; checkpoint not written, earlier checkpoints are intact");
  };
  try {
    return writeRowsOrThrow(file, tmp, writes, offsets);
  } catch (const Error& e) {
    throw failed(e.what());
  } catch (const FileError& e) {
    throw failed(e.what());
  }
}

}  // namespace

PartWriters writeParts(Communicator& comm, const std::string& dir, std::int64_t step, std::shared_ptr<const AdamW> optimizer,
                       std::shared_ptr<const std::vector<AdamW::Rows>> model_rows, double limit_s, double delay_s) {
  const int rank = comm.rank(), world = comm.size();
  if (!model_rows) model_rows = std::make_shared<const std::vector<AdamW::Rows>>();
  auto manifest = std::make_shared<std::string>();
  try {
    runWithHeartbeat(comm, "ckpt/part", limit_s,
                     "part " + std::to_string(rank) + " of checkpoint " + std::to_string(step) + " in " + dir,
                     " (a stalled file system?); earlier checkpoints are intact", [=] {
                       if (delay_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay_s * (rank + 1)));
                       *manifest = writePart(dir, step, rank, world, *optimizer, *model_rows);
                     });
  } catch (const AgreedError&) {  // another rank's part failed: this one is of no use, and takes space
    ::unlink((dir + "/" + checkpointPartName(step, rank, world)).c_str());
    throw;
  }
  const auto sums = partSums(*manifest, checkpointPartName(step, rank, world), *optimizer, *model_rows);
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums.size() * static_cast<std::size_t>(world));
  comm.allGatherBytes(sums.data(), sums.size() * sizeof(std::uint64_t), all->data(), "ckpt/part_checksums");
  if (rank != 0) return {};
  return indexWriters(all, step, world, optimizer, model_rows);
}

OptimizerWriter writeOptimizerParts(Communicator& comm, const std::string& dir, std::int64_t step,
                                    std::shared_ptr<const AdamW> optimizer, double limit_s) {
  return writeParts(comm, dir, step, std::move(optimizer), nullptr, limit_s).optimizer;
}

OptimizerWriter wholeOptimizer(std::shared_ptr<const AdamW> optimizer) {
  return {optimizer->stateBytes(), [optimizer](H5File& file) { optimizer->save(file, "/optimizer"); }};
}

namespace {

// Every rank's state of the generator of `device`, rank by rank (collective).
at::Tensor gatherGeneratorStates(Communicator& comm, const at::Generator& generator, const char* tag) {
  at::Generator gen = generator;
  at::Tensor mine;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    mine = gen.get_state();
  }
  auto all = torch::empty({comm.size(), mine.numel()}, torch::kUInt8);
  comm.allGatherBytes(mine.data_ptr(), static_cast<std::size_t>(mine.nbytes()), all.data_ptr(), tag);
  return all;
}

// datasetFingerprint of the run's data, read once per process, while the run loads
// (rememberDataFingerprint, beside a heartbeat): a checkpoint then records it without reading the
// file again, even if it has moved since.
std::string fingerprintOf(const std::string& data_path) {
  static std::mutex mutex;
  static std::string path, fingerprint;
  std::lock_guard<std::mutex> lock(mutex);
  if (path != data_path) fingerprint = datasetFingerprint(data_path), path = data_path;
  return fingerprint;
}

// Collective (every rank's RNG states are gathered: the CPU's, and the GPU's of a run on CUDA).
TrainingState snapshot(Communicator& comm, const TrainConfig& c, std::int64_t step, RunCounters counters,
                       const torch::Device& device) {
  TrainingState state;
  state.step = step;
  state.tokens_seen = counters.tokens_seen;
  state.skipped_steps = counters.skipped_steps;
  state.world_size = comm.size();
  state.seed = c.seed;
  state.next_batch = step;
  state.config = c.resolved();
  state.data_fingerprint = fingerprintOf(c.data_path);
  state.transfer = c.transfer;
  state.base_model = c.model_path;
  state.damage_for_tests = c.damage_checkpoint == step;
  state.kill_for_tests = c.kill_before_verify == step;
  state.rng_states = gatherGeneratorStates(comm, at::detail::getDefaultCPUGenerator(), "ckpt/rng");
  if (device.is_cuda())
    state.device_rng_states = gatherGeneratorStates(comm, at::globalContext().defaultGenerator(device), "ckpt/rng_cuda");
  return state;
}


// This rank's rows of the model's tensors that the checkpoint holds: under dist.shard = parameters
// the rows it holds; under optimizer or gradient sharding, for a one-file checkpoint
// (`all_write_rows`), the same rows of its whole copy, so that the ranks share writing the model
// as they share writing the optimizer state. Else null: rank 0 writes the model's tensors whole.
std::shared_ptr<std::vector<AdamW::Rows>> modelRows(const TrainConfig& c, Transformer& model, DataParallel& dp,
                                                    const Communicator& comm, bool all_write_rows) {
  if (!dp.shardsParameters() && !all_write_rows) return nullptr;
  auto rows = std::make_shared<std::vector<AdamW::Rows>>();
  const bool adapter_only = c.transfer.adapterOnly();
  if (dp.shardsParameters()) {
    for (auto& r : dp.parameterRows())
      if (!adapter_only || model->named_parameters()[r.name].requires_grad()) rows->push_back(std::move(r));
    return rows;
  }
  for (const auto& p : model->named_parameters()) {
    if (adapter_only && !p.value().requires_grad()) continue;
    const at::Tensor& t = p.value();
    if (t.dim() == 0) return nullptr;  // no rows to share out (no such parameter today)
    const RowRange mine = shardRows(t.size(0), comm.rank(), comm.size());
    rows->push_back({p.key(), t.detach().narrow(0, mine.begin, mine.size()), mine.begin, t.sizes().vec()});
  }
  return rows;
}

std::string seconds(double s) { return std::to_string(s).substr(0, 5); }

// Collective, before a checkpoint: rank 0 deletes the drafts an interrupted write left before
// anything is written or any free space is counted (after a crash under a tight quota they would
// fail every next checkpoint), and what `also` deletes, beside a heartbeat (deleting a file of
// hundreds of GB takes a while on some file systems). No rank writes in `dir` meanwhile: the
// checkpoint before is complete (PendingCheckpoint waited for it), and every rank starts writing
// only after this returns.
void clearStaleDrafts(Communicator& comm, const TrainConfig& c, const std::string& dir, Logger& log,
                      std::function<void()> also = nullptr) {
  std::function<void()> work;
  if (comm.rank() == 0)
    work = [dir, log, also] {
      const auto removed = removeStaleDrafts(dir);
      if (also) also();
      if (removed.empty()) return;
      std::string names;
      for (const auto& name : removed) names += (names.empty() ? "" : ", ") + name;
      log.info("checkpoint: removed " + std::to_string(removed.size()) + " draft(s) that an interrupted write left: " + names);
    };
  runWithHeartbeat(comm, "ckpt/drafts", c.slow_phase_timeout_s, "removing stale drafts in " + dir, "", std::move(work));
}

// checkpoint.async: copies of what a checkpoint holds, so that training may go on changing the
// originals while a helper writes them. In host memory: a GPU's memory is for training.
at::Tensor hostCopy(const at::Tensor& t) {
  return t.to(at::Device(at::kCPU), t.scalar_type(), /*non_blocking=*/false, /*copy=*/true);
}

std::shared_ptr<const AdamW> copyOf(const AdamW& optimizer) {
  auto copy = std::make_shared<AdamW>(optimizer);
  for (auto& s : copy->slots()) {
    s.exp_avg = hostCopy(s.exp_avg);
    s.exp_avg_sq = hostCopy(s.exp_avg_sq);
    s.grad = at::Tensor();
  }
  return copy;
}

ModelRows copyOf(const std::shared_ptr<std::vector<AdamW::Rows>>& rows) {
  auto copy = std::make_shared<std::vector<AdamW::Rows>>();
  if (rows)
    for (const auto& r : *rows) copy->push_back({r.name, hostCopy(r.rows), r.row_begin, r.global_shape});
  return copy;
}

// The model's tensors (those the checkpoint holds) copied, and their writer.
GroupWriter wholeModelCopy(const TrainConfig& c, Transformer& model) {
  auto tensors = std::make_shared<std::vector<std::pair<std::string, at::Tensor>>>();
  std::uint64_t bytes = 0;
  for (const auto& p : model->named_parameters())
    if (!c.transfer.adapterOnly() || p.value().requires_grad()) {
      tensors->emplace_back(p.key(), hostCopy(p.value().detach()));
      bytes += static_cast<std::uint64_t>(p.value().numel()) * 4;
    }
  return {bytes, [tensors](H5File& file) {
            for (const auto& [name, t] : *tensors) file.writeTensor("/model/" + name, t);
          }};
}

// Rank 0, checkpoint.async: every rank's partSums, read from the parts' manifests as each part
// appears (its writer publishes it by rename), waiting at most `limit_s` for the last, and no
// longer once `cancel` says that another rank's part failed.
std::shared_ptr<std::vector<std::uint64_t>> sumsFromParts(const std::string& dir, std::int64_t step, int world,
                                                          const AdamW& optimizer, const std::vector<AdamW::Rows>& rows,
                                                          double limit_s, const CancelToken& cancel) {
  const auto start = std::chrono::steady_clock::now();
  auto all = std::make_shared<std::vector<std::uint64_t>>();
  for (int r = 0; r < world; ++r) {
    const std::string name = checkpointPartName(step, r, world), path = dir + "/" + name;
    while (!fileExists(path)) {
      throwIfCancelled(cancel);
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit_s)
        throw Error(path + ": part of checkpoint " + std::to_string(step) + " not written within dist.slow_phase_timeout_s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const auto sums = partSums(readManifest(H5File::openRead(path)), name, optimizer, rows);
    all->insert(all->end(), sums.begin(), sums.end());
  }
  return all;
}

// Rank 0, step 1 of Note [one file, every rank's rows]: drafts the checkpoint with the tensors of
// `writes` created where the ranks will write their rows; their offsets go to `offsets`, in order.
CheckpointDraft layOut(const std::string& dir, Transformer model, const AdamW& optimizer, const std::vector<RowWrite>& writes,
                       const std::vector<AdamW::Rows>* model_rows, const Schedule& schedule, const TrainingState& state,
                       std::vector<std::uint64_t>& offsets) {
  std::size_t made = 0;
  auto create = [&](H5File& file, const std::string& object, const std::vector<std::int64_t>& shape) {
    if (made >= writes.size() || writes[made].object != object)
      throw Error("checkpoint layout: tensor " + std::to_string(made) + " is " + object + ", which the ranks do not write there");
    offsets.at(made++) = file.createRawFloat32(object, shape);
  };
  GroupWriter model_layout;
  if (model_rows)
    model_layout.write = [&](H5File& file) {
      for (const auto& r : *model_rows) create(file, "/model/" + r.name, r.global_shape);
    };
  const OptimizerWriter optimizer_layout{0, [&](H5File& file) {
                                           optimizer.saveLayout(file, "/optimizer", [&](const std::string& object, const std::vector<std::int64_t>& shape) {
                                             create(file, object, shape);
                                           });
                                         }};
  std::uint64_t bytes = optimizer.stateBytes();  // what the finished file holds
  for (const auto& p : model->named_parameters()) bytes += static_cast<std::uint64_t>(p.value().numel()) * 4;
  return draftCheckpoint(dir, model, optimizer_layout, schedule, state, model_layout, bytes);
}

// Rank 0, step 3: each tensor's (crc32, bytes) from every rank's (`all`: rank after rank, two
// numbers per tensor of `writes`), combined in row order.
std::vector<H5File::Written> wholeSums(const std::vector<RowWrite>& writes, const std::vector<std::uint64_t>& all, int world) {
  std::vector<H5File::Written> out;
  const std::size_t per_rank = all.size() / static_cast<std::size_t>(world);
  for (std::size_t i = 0; i < writes.size(); ++i) {
    H5File::Written whole{writes[i].object, crc32(nullptr, 0), 0};
    for (int r = 0; r < world; ++r) {  // ranks hold consecutive rows, in rank order
      const std::size_t at = static_cast<std::size_t>(r) * per_rank + 2 * i;
      whole.crc32 = crc32Combine(whole.crc32, static_cast<std::uint32_t>(all[at]), all[at + 1]);
      whole.bytes += all[at + 1];
    }
    out.push_back(whole);
  }
  return out;
}

// Collective: steps 1 and 2 of Note [one file, every rank's rows], each beside a heartbeat.
// Returns rank 0's step 3 (complete, publish and prune; it sets `path`), an empty function
// elsewhere. Where the ranks cannot share the file, nullopt on every rank with the reason in
// *why_not (the draft is gone).
std::optional<std::function<void()>> writeRowsIntoOneFile(Communicator& comm, const TrainConfig& c, Transformer model,
                                           std::shared_ptr<const AdamW> optimizer, const Schedule& schedule,
                                           const TrainingState& state,
                                           std::shared_ptr<const std::vector<AdamW::Rows>> model_rows,
                                           std::shared_ptr<std::string> path, std::string* why_not) {
  const std::string dir = c.run_dir + "/checkpoints", tmp = dir + "/" + checkpointName(state.step) + ".tmp";
  const auto writes = std::make_shared<const std::vector<RowWrite>>(
      rowWrites(*optimizer, model_rows ? *model_rows : std::vector<AdamW::Rows>{}));
  auto draft = std::make_shared<CheckpointDraft>();
  auto offsets = std::make_shared<std::vector<std::uint64_t>>(writes->size());
  std::function<void()> lay_out;
  if (comm.rank() == 0)
    lay_out = [=, delay = c.slow_checkpoint_s] {
      torch::NoGradGuard no_grad;  // grad mode is per thread
      if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
      *draft = layOut(dir, model, *optimizer, *writes, model_rows.get(), schedule, state, *offsets);
    };
  const std::string step = std::to_string(state.step);
  runWithHeartbeat(comm, "ckpt/layout", c.slow_phase_timeout_s, "checkpoint of step " + step + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact", std::move(lay_out));
  comm.broadcastBytes(offsets->data(), offsets->size() * sizeof(std::uint64_t), 0, "ckpt/offsets");
  auto file = std::make_shared<std::shared_ptr<SharedFile>>();
  auto reason = std::make_shared<std::string>();
  runWithHeartbeat(comm, "ckpt/open", c.slow_phase_timeout_s, "opening " + tmp + " on every rank",
                   " (a stalled file system?); earlier checkpoints are intact",
                   [&comm, file, reason, tmp] { *file = comm.openSharedFile(tmp, reason.get()); });
  if (!*file) {  // every rank
    *why_not = reason->empty() ? "the communicator has no shared files" : *reason;
    if (comm.rank() == 0) ::unlink(tmp.c_str());
    return std::nullopt;
  }
  auto sums = std::make_shared<std::vector<std::uint64_t>>();
  try {
    runWithHeartbeat(comm, "ckpt/rows", c.slow_phase_timeout_s, "this rank's rows of checkpoint " + step + " in " + tmp,
                     " (a stalled file system?); earlier checkpoints are intact",
                     [file = *file, tmp, writes, offsets, sums, delay = c.slow_rows_s * (comm.rank() + 1)] {
                       if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
                       *sums = writeRows(*file, tmp, *writes, *offsets);
                     });
  } catch (...) {  // a rank could not write its rows: every rank is done with the draft (Note [heartbeat])
    if (comm.rank() == 0) ::unlink(tmp.c_str());
    throw;
  }
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums->size() * static_cast<std::size_t>(comm.size()));
  comm.allGatherBytes(sums->data(), sums->size() * sizeof(std::uint64_t), all->data(), "ckpt/row_checksums");
  if (comm.rank() != 0) return std::function<void()>();
  return [draft, writes, all, world = comm.size(), dir, keep = c.keep_last, step = state.step, path] {
    *path = completeCheckpoint(*draft, wholeSums(*writes, *all, world));
    pruneCheckpoints(dir, keep, step);
  };
}

}  // namespace

void saveRunCheckpoint(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                       const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log,
                       PendingCheckpoint* pending) {
  if (c.checkpoint_async && pending) return pending->start(comm, c, model, dp, schedule, step, counters, log);
  const auto start = std::chrono::steady_clock::now();
  const std::string dir = c.run_dir + "/checkpoints";
  auto path = std::make_shared<std::string>();
  clearStaleDrafts(comm, c, dir, log);
  bool one_file = dp.shardsOptimizer() && c.checkpoint_files == "one";
  // Each rank's rows of the model's tensors (those the checkpoint holds) go into the file beside
  // its rows of the optimizer state: under dist.shard = parameters nobody gathers the whole model.
  auto model_rows = modelRows(c, model, dp, comm, one_file);
  TrainingState state = snapshot(comm, c, step, counters, model->device());
  std::function<void()> write;
  std::string how;
  if (one_file) {
    std::string why_not;
    auto wrote = writeRowsIntoOneFile(comm, c, model, dp.sharedOptimizer(), schedule, state, model_rows, path, &why_not);
    one_file = wrote.has_value();
    if (one_file) {
      write = std::move(*wrote);
      how = "one file, " + std::to_string(comm.size()) + " ranks writing their rows";
    } else {  // as checkpoint.files = per_rank
      model_rows = modelRows(c, model, dp, comm, /*all_write_rows=*/false);
      how = "a part file per rank, since the ranks cannot write one file together: " + why_not;
    }
  }
  if (!one_file) {
    // checkpoint.files = per_rank: every rank writes its rows into a part file first (collective),
    // and rank 0's file maps them. Unsharded: rank 0 writes every tensor itself.
    const PartWriters parts = dp.shardsOptimizer()
                                  ? writeParts(comm, dir, step, dp.sharedOptimizer(), model_rows, c.slow_phase_timeout_s,
                                               c.slow_rows_s)
                                  : PartWriters{wholeOptimizer(dp.sharedOptimizer()), {}};
    if (comm.rank() == 0)
      // The writer owns what it reads (tensor handles are shared, not copied): it may outlive the
      // caller only on the way to exiting after an error.
      write = [dir, model, parts, schedule, state, keep = c.keep_last, delay = c.slow_checkpoint_s, path]() mutable {
        torch::NoGradGuard no_grad;  // grad mode is per thread
        if (delay > 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
        *path = writeCheckpoint(dir, model, parts.optimizer, schedule, state, parts.model);
        pruneCheckpoints(dir, keep, state.step);
      };
    if (dp.shardsOptimizer() && how.empty()) how = "a part file per rank";
  }
  runWithHeartbeat(comm, "ckpt/write", c.slow_phase_timeout_s, "checkpoint of step " + std::to_string(step) + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact", std::move(write));
  if (comm.rank() == 0)
    log.main("checkpoint: " + *path + " (" + seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()) +
             " s" + (how.empty() ? "" : "; " + how) + ")");
}

PendingCheckpoint::~PendingCheckpoint() = default;

void PendingCheckpoint::start(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                              const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log) {
  wait(comm, c, log);  // one checkpoint in flight at a time
  const auto begin = std::chrono::steady_clock::now();
  const std::string dir = c.run_dir + "/checkpoints";
  const int rank = comm.rank(), world = comm.size();
  const bool sharded = dp.shardsOptimizer();
  // Parts of this step left by an earlier attempt (a run that died after writing them) must not be
  // mistaken for this one's: rank 0 removes them before any rank starts.
  clearStaleDrafts(comm, c, dir, log, [dir, step, world, sharded] {
    if (sharded)
      for (int r = 0; r < world; ++r) ::unlink((dir + "/" + checkpointPartName(step, r, world)).c_str());
  });
  const TrainingState state = snapshot(comm, c, step, counters, model->device());
  // Unsharded, rank 0 alone writes the optimizer state: the others copy none of it (a whole copy
  // of 8 bytes per parameter on every rank otherwise).
  const std::shared_ptr<const AdamW> optimizer = sharded || rank == 0 ? copyOf(dp.optimizer()) : nullptr;
  // A sharded optimizer's ranks each copy their rows of the model too and write them into their
  // parts: the helper must never read the live model, which training updates in place while it
  // writes (that once gave a checkpoint with a later step's weights beside step `step`'s moments).
  const auto own_rows = modelRows(c, model, dp, comm, /*all_write_rows=*/sharded);
  const auto rows = copyOf(own_rows);
  // Unsharded, or no rows to share out (a 0-d parameter): rank 0 copies the model whole instead.
  const GroupWriter whole_model = (!sharded || !own_rows) && rank == 0 ? wholeModelCopy(c, model) : GroupWriter{};
  path_ = std::make_shared<std::string>();
  step_ = step;
  world_ = world;
  const CancelToken cancel = makeCancelToken();
  started_ = std::chrono::steady_clock::now();
  snapshot_s_ = std::chrono::duration<double>(started_ - begin).count();
  work_ = std::make_unique<BackgroundWork>([=, path = path_, keep = c.keep_last, delay = c.slow_checkpoint_s,
                                            limit = c.slow_phase_timeout_s, part_delay = c.slow_rows_s * (rank + 1)]() mutable {
    torch::NoGradGuard no_grad;  // grad mode is per thread
    if (delay > 0 && rank == 0) std::this_thread::sleep_for(std::chrono::duration<double>(delay));
    if (part_delay > 0 && sharded) std::this_thread::sleep_for(std::chrono::duration<double>(part_delay));
    if (sharded) writePart(dir, step, rank, world, *optimizer, *rows);
    if (rank != 0) return;
    PartWriters parts = sharded ? indexWriters(sumsFromParts(dir, step, world, *optimizer, *rows, limit, cancel), step,
                                               world, optimizer, rows)
                                : PartWriters{wholeOptimizer(optimizer), whole_model};
    if (!parts.model.write) parts.model = whole_model;  // never the live model: training changes it meanwhile
    *path = writeCheckpoint(dir, model, parts.optimizer, schedule, state, parts.model);
    pruneCheckpoints(dir, keep, state.step);
  }, cancel);
}

void PendingCheckpoint::wait(Communicator& comm, const TrainConfig& c, Logger& log) {
  if (!work_) return;
  const std::string dir = c.run_dir + "/checkpoints";
  const auto waited = std::chrono::steady_clock::now();
  try {
    awaitWithHeartbeat(comm, "ckpt/async", c.slow_phase_timeout_s,
                       "checkpoint of step " + std::to_string(step_) + " in " + dir + " (written in the background)",
                       " (a stalled file system?); earlier checkpoints are intact", *work_);
  } catch (const AgreedError&) {
    // A rank's part failed: the others' parts are of no use, and take space; unless rank 0 failed
    // after publishing the checkpoint (syncing its folder, pruning), which maps them.
    if (!fileExists(dir + "/" + checkpointName(step_)))
      ::unlink((dir + "/" + checkpointPartName(step_, comm.rank(), world_)).c_str());
    throw;
  }
  const auto now = std::chrono::steady_clock::now();
  if (comm.rank() == 0)
    log.main("checkpoint: " + *path_ + " (" + seconds(std::chrono::duration<double>(now - started_).count()) +
             " s in the background; training paused " +
             seconds(snapshot_s_ + std::chrono::duration<double>(now - waited).count()) + " s for it)");
  work_.reset();
}

void rememberDataFingerprint(const std::string& data_path) { fingerprintOf(data_path); }

namespace {

// Note [a resume continues the same run]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A checkpoint resumes bit for bit only when the run around it is the run that wrote it. A seed,
// global batch, sequence length, packing, data file or transfer setup that changed in between would make
// the resumed run follow another trajectory with nothing to show for it (the model's shape is
// checked when the checkpoint is read). Rank 0 compares each with what the checkpoint recorded,
// before its tensors are verified or read, and every rank gets its verdict: the keys as text in its
// resolved config (written by TrainConfig::resolved(), as this run's is, so a key that another
// graft version added or dropped is simply absent on one side, never a parse error that would
// switch the comparison off) and the data's fingerprint when it has one (version 2). A difference
// is refused in one line that names the key, unless resume.allow lists its name. (A base model
// given by another path is not compared: the same file is often reached by several.)

// "section.key" -> value of a resolved INI text ("[section]" lines, then "key = value" lines).
std::map<std::string, std::string> iniValues(const std::string& text) {
  std::map<std::string, std::string> values;
  std::string section;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.size() > 2 && line.front() == '[' && line.back() == ']') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    const auto eq = line.find(" = ");
    if (eq != std::string::npos) values[section + "." + line.substr(0, eq)] = line.substr(eq + 3);
  }
  return values;
}

void refuseAnotherRun(const TrainConfig& c, const TrainingState& saved, const std::string& path, Logger& log) {
  auto allowed = [&](const std::string& name) { return ("," + c.resume_allow + ",").find("," + name + ",") != std::string::npos; };
  std::vector<std::string> allowed_differences;
  auto check = [&](const std::string& name, const std::string& key, const std::string& then, const std::string& now) {
    if (then == now) return;
    if (allowed(name)) {
      allowed_differences.push_back(key + " " + then + " -> " + now);
      return;
    }
    throw InputError(path + " was saved with " + key + " = " + then + ", this run has " + now +
                     ": resuming would continue another run; use a new run.dir, or allow it with --resume.allow=" + name);
  };
  if (!saved.data_fingerprint.empty())
    check("data", "data (" + c.data_path + ")", saved.data_fingerprint, fingerprintOf(c.data_path));
  const auto then = iniValues(saved.config), now = iniValues(c.resolved());
  auto compare = [&](const std::string& name, const std::string& key) {
    const auto a = then.find(key), b = now.find(key);
    if (a != then.end() && b != now.end()) check(name, key, a->second, b->second);
  };
  compare("seed", "train.seed");
  compare("batch_size", "train.batch_size");
  compare("seq_len", "train.seq_len");
  compare("packing", "data.packing");  // as the data resolved it (Trainer records documents or windows, never auto)
  if (!then.empty() && !then.count("data.packing") && now.count("data.packing") && now.at("data.packing") != "windows")
    check("packing", "data.packing", "windows (saved before data.packing existed)", now.at("data.packing"));
  // Every transfer.* key but cache_features, which changes how fast the head trains, not what.
  for (const auto& [key, value] : now)
    if (key.rfind("transfer.", 0) == 0 && key != "transfer.cache_features") compare("transfer", key);
  for (const auto& d : allowed_differences) log.main("resume: " + d + " (allowed by resume.allow)");
}

// Rank 0: "" when the checkpoint `path` belongs to this run (allowed differences are logged), else
// the one-line refusal. Reads the checkpoint's attributes only.
std::string refusalOf(const TrainConfig& c, const std::string& path, Logger& log) {
  TrainingState saved;
  try {
    const H5File file = H5File::openRead(path);
    saved.config = file.stringAttr("/", "config");
    if (file.hasAttr("/", "data_fingerprint")) saved.data_fingerprint = file.stringAttr("/", "data_fingerprint");
  } catch (const Error&) {
    return "";  // unreadable: verification names what is wrong with it
  }
  try {
    refuseAnotherRun(c, saved, path, log);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

namespace {

// Note [verification shared by the ranks]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Resume reads back every byte of the checkpoint it picks (840 GB for a 70B full fine-tune) before
// trusting it. Rank 0 alone took that long while the others waited; instead every rank reads its
// share of the rows of every tensor (1/N of the bytes, in 64 MiB blocks), the ranks' (crc32,
// bytes) are gathered, and rank 0 combines them in row order into each whole tensor's checksum
// (crc32_combine), which the manifest holds: the same check, the reading spread over N ranks and
// their file-system clients. Candidates go newest first; a damaged one is named, renamed to
// .damaged (pruning never counts it) and the next is tried. Every rank sends the same number of
// sums whatever it could read (the count comes from rank 0), so no rank is left in a collective.
// Broadcasts rank 0's `text` to every rank.
void broadcastString(Communicator& comm, std::string& text, const char* tag) {
  std::int64_t size = static_cast<std::int64_t>(text.size());
  comm.broadcastBytes(&size, sizeof(size), 0, tag);
  text.resize(static_cast<std::size_t>(size));
  if (size > 0) comm.broadcastBytes(text.data(), text.size(), 0, tag);
}

// What the ranks found reading a checkpoint: "" when it verifies; `damaged` when a tensor's checksum
// or size differs from the manifest, or the manifest itself is missing or malformed (the file is
// bad); otherwise some rank could not read it (an I/O error, a node's file-system client: the file
// may be fine, so it is never set aside for that).
struct Verdict {
  std::string problem;
  bool damaged = false;
};

// Collective: every rank reads its rows of the tensors of `path` under `prefix` and rank 0 checks
// the combined sums (Note [verification shared by the ranks]); rank 0's reads of the manifest and
// its checks run beside heartbeats too. Returns the same Verdict on every rank; `*tensors`: how
// many it covered.
Verdict verifySharedByRanks(Communicator& comm, const TrainConfig& c, const std::string& path, const std::string& prefix,
                            Logger& log, std::int64_t* tensors) {
  const int rank = comm.rank(), world = comm.size();
  auto verdict = std::make_shared<Verdict>();
  auto count = std::make_shared<std::int64_t>(0);
  auto judge = [verdict](const std::function<void()>& check) {
    try {
      check();
    } catch (const InputError& e) {
      *verdict = {e.what(), true};
    } catch (const Error& e) {
      *verdict = {e.what(), false};
    }
  };
  std::function<void()> count_work;
  if (rank == 0)
    count_work = [=] { judge([&] { *count = static_cast<std::int64_t>(manifestEntries(path, prefix)); }); };
  runWithHeartbeat(comm, "verify/manifest", c.slow_phase_timeout_s, "reading the manifest of " + path, "", count_work);
  comm.broadcastBytes(count.get(), sizeof(std::int64_t), 0, "verify/manifest_size");
  if (*count > 0) {
    auto sums = std::make_shared<std::vector<std::uint64_t>>();
    auto error = std::make_shared<std::string>();
    runWithHeartbeat(comm, "verify/rows", c.slow_phase_timeout_s, "verifying this rank's rows of " + path, "",
                     [path, prefix, count, rank, world, sums, error] {
                       *sums = checkpointRowSums(path, prefix, static_cast<std::size_t>(*count), rank, world, error.get());
                     });
    if (!error->empty()) log.info("verifying " + path + ": " + *error);
    auto all = std::make_shared<std::vector<std::uint64_t>>(sums->size() * static_cast<std::size_t>(world));
    comm.allGatherBytes(sums->data(), sums->size() * sizeof(std::uint64_t), all->data(), "verify/row_sums");
    std::function<void()> check_work;
    if (rank == 0) check_work = [=] { judge([&] { checkRowSums(path, prefix, *all, world); }); };
    runWithHeartbeat(comm, "verify/check", c.slow_phase_timeout_s, "checking the checksums of " + path, "", check_work);
  } else if (rank == 0 && verdict->problem.empty()) {
    *verdict = {path + ": the manifest lists no tensor under " + prefix, true};
  }
  broadcastString(comm, verdict->problem, "verify/verdict");
  std::int64_t damaged = verdict->damaged ? 1 : 0;
  comm.broadcastBytes(&damaged, sizeof(damaged), 0, "verify/damaged");
  verdict->damaged = damaged != 0;
  if (tensors) *tensors = *count;
  return *verdict;
}

std::int64_t newestVerifiedCheckpoint(Communicator& comm, const TrainConfig& c, const std::string& dir, Logger& log) {
  auto steps = std::make_shared<std::vector<std::int64_t>>();
  std::function<void()> list;
  if (comm.rank() == 0)
    list = [dir, steps] {
      for (const auto& path : completeCheckpoints(dir)) steps->push_back(std::stoll(path.substr(path.size() - 11, 8)));
    };
  runWithHeartbeat(comm, "resume/list", c.slow_phase_timeout_s, "listing the checkpoints in " + dir, "", list);
  std::int64_t candidates = static_cast<std::int64_t>(steps->size());
  comm.broadcastBytes(&candidates, sizeof(candidates), 0, "resume/candidates");
  steps->resize(static_cast<std::size_t>(candidates));
  if (candidates > 0) comm.broadcastBytes(steps->data(), steps->size() * sizeof(std::int64_t), 0, "resume/steps");
  for (const std::int64_t step : *steps) {
    const std::string path = dir + "/" + checkpointName(step);
    // Before reading its tensors: does it belong to this run? (Note [a resume continues the same run])
    auto refusal = std::make_shared<std::string>();
    std::function<void()> compare;
    if (comm.rank() == 0) compare = [c, path, refusal, log]() mutable { *refusal = refusalOf(c, path, log); };
    runWithHeartbeat(comm, "resume/compare", c.slow_phase_timeout_s, "comparing this run with " + path, "", compare);
    broadcastString(comm, *refusal, "resume/refusal");
    if (!refusal->empty()) throw InputError(*refusal);
    const auto start = std::chrono::steady_clock::now();
    std::int64_t count = 0;
    const Verdict verdict = verifySharedByRanks(comm, c, path, "/", log, &count);
    if (verdict.problem.empty()) {
      log.main("resume: " + path + " verified (" + std::to_string(count) + " tensors, each rank its rows, " +
               seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()) + " s)");
      return step;
    }
    if (!verdict.damaged)  // the file may be fine: stop, naming what could not be read, and touch nothing
      throw Error("resume: " + verdict.problem + "; the checkpoint is left as it is (run again once it reads)");
    if (comm.rank() == 0) {  // set aside, so that pruning never counts it as one of the checkpoints it keeps
      const bool moved = ::rename(path.c_str(), (path + ".damaged").c_str()) == 0;
      log.info("skipping damaged checkpoint: " + verdict.problem + (moved ? "; renamed to " + path + ".damaged" : std::string()));
    }
  }
  return -1;
}

}  // namespace

bool verifyModelPath(Communicator& comm, const TrainConfig& c, Logger& log, bool deferrable) {
  // Rank 0 lists what to verify: nothing when a full fine-tune resumes (its checkpoint holds every
  // weight and is verified itself); an adapter run's base is read again, so it is verified.
  auto listed = std::make_shared<std::string>();
  auto error = std::make_shared<std::string>();
  auto deferred = std::make_shared<std::string>();  // "1": left for after the resume point is known
  std::function<void()> list;
  if (comm.rank() == 0)
    list = [c, listed, error, deferred, deferrable] {
      try {
        if (deferrable && !checkpointHoldingTheWholeModel(c).empty()) *deferred = "1";
        else
          for (const auto& f : modelFilesToVerify(c.model_path)) *listed += f + "\n";
      } catch (const Error& e) {
        *error = e.what();
      }
    };
  runWithHeartbeat(comm, "verify/model_files", c.slow_phase_timeout_s, "looking at " + c.model_path, "", list);
  broadcastString(comm, *error, "verify/model_error");
  if (!error->empty()) throw InputError(*error);
  broadcastString(comm, *deferred, "verify/model_deferred");
  if (*deferred == "1") return true;
  broadcastString(comm, *listed, "verify/model_files");
  std::vector<std::string> files;
  for (std::size_t start = 0, end; (end = listed->find('\n', start)) != std::string::npos; start = end + 1)
    files.push_back(listed->substr(start, end - start));
  if (files.empty()) return false;
  if (!c.model_verify) {
    log.main("model: " + c.model_path + " is not verified against its manifest (model.verify = false)");
    return false;
  }
  for (const auto& file : files) {
    const auto start = std::chrono::steady_clock::now();
    std::int64_t count = 0;
    const Verdict verdict = verifySharedByRanks(comm, c, file, "/model/", log, &count);
    if (!verdict.problem.empty())
      throw InputError("model.path: " + verdict.problem + (verdict.damaged ? "" : " (model.verify = false skips this check)"));
    log.main("model: " + file + " verified against its manifest (" + std::to_string(count) + " tensors, each rank its rows, " +
             seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()) +
             " s; model.verify = false skips this)");
  }
  return false;
}

std::int64_t findResumePoint(Communicator& comm, const TrainConfig& c, Logger& log) {
  return newestVerifiedCheckpoint(comm, c, c.run_dir + "/checkpoints", log);
}

std::string checkpointHoldingTheWholeModel(const TrainConfig& c) {
  if (c.transfer.adapterOnly()) return "";
  for (const auto& path : completeCheckpoints(c.run_dir + "/checkpoints")) {
    try {
      if (holdsTheWholeModel(path)) return path;
    } catch (const Error&) {
      // unreadable now: an older one may do (resume verifies whichever it reads)
    }
  }
  return "";
}

Resumed resumeRun(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp, Logger& log,
                  std::int64_t found, bool own_rows) {
  const std::string dir = c.run_dir + "/checkpoints";
  std::int64_t step[1] = {found};
  if (step[0] < 0) return {};
  // Every rank reads it (at its own file-system speed), again with a heartbeat. The reader works
  // on handles that share this run's tensors; the step counts are copied back after.
  const std::string path = dir + "/" + checkpointName(step[0]);
  auto read = std::make_shared<TrainingState>();
  AdamW& optimizer = dp.optimizer();
  auto into = std::make_shared<AdamW>(optimizer);
  const auto rows = own_rows ? dp.parameterRows() : std::vector<AdamW::Rows>{};
  runWithHeartbeat(comm, "resume/read", c.slow_phase_timeout_s, "reading " + path, "",
                   [path, model, into, read, rows]() mutable { *read = readCheckpoint(path, model, *into, rows); });
  optimizer.setStepCount(into->stepCount());
  for (std::size_t i = 0; i < optimizer.slots().size(); ++i) optimizer.slots()[i].steps = into->slots()[i].steps;
  const TrainingState& state = *read;
  if (state.world_size == comm.size() && state.rng_states.defined() && state.rng_states.size(0) == comm.size()) {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state.rng_states[comm.rank()].contiguous());
  }
  const bool same_world = state.world_size == comm.size();
  if (same_world && model->device().is_cuda() && state.device_rng_states.defined() &&
      state.device_rng_states.size(0) == comm.size()) {
    at::Generator gen = at::globalContext().defaultGenerator(model->device());
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state.device_rng_states[comm.rank()].contiguous());
  }
  log.main("resuming from " + path + " at step " + std::to_string(state.step) + " (saved with " +
           std::to_string(state.world_size) + " ranks, now " + std::to_string(comm.size()) + ")");
  return {state.step, {state.tokens_seen, state.skipped_steps}, path};
}

}  // namespace graft
