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

// Note [one file, every rank's rows]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// Step 2 of Note [one checkpoint writer] (checkpoint/checkpoint.h) under checkpoint.files = one:
// a sharded run's synchronous checkpoint is one HDF5 file laid out as an unsharded run's (no part
// files, no index), and every rank writes its own rows into it, at the same time:
//   1. rank 0 drafts the file with the split tensors allocated contiguously (draftCheckpoint,
//      RowFiles::kOneFile) and sends their offsets;
//   2. the ranks open the draft as a SharedFile (MPI-IO) and write, in one collective write each,
//      their rows of every split tensor at offset + first row x row bytes; the file is synced and
//      closed, and every rank reads its rows back and checks their CRC-32;
//   3. the ranks' CRCs go to rank 0, which completes and publishes the file (completeCheckpoint).
// Step 2 runs on a helper thread beside the heartbeat (the SharedFile has its own communicator:
// Note [MPI-IO beside the heartbeat]), so a rank that stalls while writing is still named. Where
// MPI-IO cannot open the file (no MPI_THREAD_MULTIPLE, no MPI-IO component, a file system that
// refuses), the draft goes and the checkpoint is written with a part file per rank
// (RowFiles::kParts), and the log says why. checkpoint.async writes part files too: step 1 needs
// the ranks to meet, and its helpers must not.

// Step 2, collective over `file`: writes this rank's rows of the split tensors at their offsets in
// `tmp` (flushed to storage), reads them back; returns (crc32, bytes) per split tensor.
std::vector<std::uint64_t> writeRowsOrThrow(SharedFile& file, const std::string& tmp, const CheckpointContent& content,
                                            const std::vector<std::uint64_t>& offsets) {
  std::vector<std::uint64_t> sums;
  std::vector<at::Tensor> contiguous;
  std::vector<SharedFile::Piece> pieces;
  std::vector<const TensorRows*> split;
  for (std::size_t i = 0; i < content.rows.size(); ++i)
    if (content.split(i)) split.push_back(&content.rows[i]);
  for (std::size_t j = 0; j < split.size(); ++j) {
    contiguous.push_back(split[j]->rows.detach().cpu().contiguous());
    const auto& t = contiguous.back();
    pieces.push_back({offsets.at(j) + rowBytes(*split[j]) * static_cast<std::uint64_t>(split[j]->row_begin), t.data_ptr(),
                      static_cast<std::uint64_t>(t.numel()) * t.element_size()});
    sums.push_back(crc32(t.data_ptr(), pieces.back().bytes));
    sums.push_back(pieces.back().bytes);
  }
  file.writeAndClose(pieces);
  const ReadOnlyFile back = ReadOnlyFile::open(tmp);  // read back, as every checkpoint is
  std::string buffer;
  for (std::size_t j = 0; j < split.size(); ++j) {
    buffer.resize(static_cast<std::size_t>(pieces[j].bytes));
    back.readAt(pieces[j].offset, buffer.data(), buffer.size());
    if (crc32(buffer.data(), buffer.size()) != sums[2 * j])
      throw Error(tmp + ": this rank's rows of " + split[j]->object +
                  " read back differently from what was written (a write that failed: disk full, a quota or a file size "
                  "limit? " + (freeBytesAt(tmp) < 0 ? std::string("free space unknown") : std::to_string(freeBytesAt(tmp) >> 10) + " KiB free there") + ")");
  }
  return sums;
}

// writeRowsOrThrow; on failure the error says that the earlier checkpoints are intact (rank 0
// removes the draft once every rank is done with it: writeIntoOneFile).
std::vector<std::uint64_t> writeRows(SharedFile& file, const std::string& tmp, const CheckpointContent& content,
                                     const std::vector<std::uint64_t>& offsets) {
  auto failed = [](const char* what) {
    return Error(std::string(what) + "; checkpoint not written, earlier checkpoints are intact");
  };
  try {
    return writeRowsOrThrow(file, tmp, content, offsets);
  } catch (const Error& e) {
    throw failed(e.what());
  } catch (const FileError& e) {
    throw failed(e.what());
  }
}

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

// Collective: the run's state at `step`, with every rank's RNG states (the CPU's, and the GPU's of
// a run on CUDA), and what this rank hands the checkpoint writer beside it.
CheckpointContent contentOf(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                            const Schedule& schedule, std::int64_t step, RunCounters counters) {
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
  if (model->device().is_cuda())
    state.device_rng_states = gatherGeneratorStates(comm, at::globalContext().defaultGenerator(model->device()), "ckpt/rng_cuda");
  return checkpointContent(comm, dp, c.transfer.adapterOnly(), std::move(state), schedule, model);
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

void sleepFor(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// Collective: steps 1 and 2 of Note [one file, every rank's rows], each beside a heartbeat.
// Returns rank 0's step 3 (complete, publish and prune; it sets `path`), an empty function
// elsewhere. Where the ranks cannot share the file, nullopt on every rank with the reason in
// *why_not (the draft is gone).
std::optional<std::function<void()>> writeIntoOneFile(Communicator& comm, const TrainConfig& c,
                                                      std::shared_ptr<const CheckpointContent> content,
                                                      std::shared_ptr<std::string> path, std::string* why_not) {
  const std::string dir = c.run_dir + "/checkpoints", tmp = dir + "/" + checkpointName(content->state.step) + ".tmp";
  auto draft = std::make_shared<CheckpointDraft>();
  auto offsets = std::make_shared<std::vector<std::uint64_t>>();
  std::size_t split = 0;
  for (std::size_t i = 0; i < content->rows.size(); ++i) split += content->split(i) ? 1 : 0;
  std::function<void()> lay_out;
  if (comm.rank() == 0)
    lay_out = [=, delay = c.slow_checkpoint_s] {
      torch::NoGradGuard no_grad;  // grad mode is per thread
      sleepFor(delay);
      *draft = draftCheckpoint(dir, *content, RowFiles::kOneFile, offsets.get());
    };
  const std::string step = std::to_string(content->state.step);
  runWithHeartbeat(comm, "ckpt/layout", c.slow_phase_timeout_s, "checkpoint of step " + step + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact", std::move(lay_out));
  offsets->resize(split);
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
                     [file = *file, tmp, content, offsets, sums, delay = c.slow_rows_s * (comm.rank() + 1)] {
                       sleepFor(delay);
                       *sums = writeRows(*file, tmp, *content, *offsets);
                     });
  } catch (...) {  // a rank could not write its rows: every rank is done with the draft (Note [heartbeat])
    if (comm.rank() == 0) ::unlink(tmp.c_str());
    throw;
  }
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums->size() * static_cast<std::size_t>(comm.size()));
  comm.allGatherBytes(sums->data(), sums->size() * sizeof(std::uint64_t), all->data(), "ckpt/row_checksums");
  if (comm.rank() != 0) return std::function<void()>();
  return [draft, content, all, dir, keep = c.keep_last, path] {
    *path = completeCheckpoint(*draft, *content, *all);
    pruneCheckpoints(dir, keep, content->state.step);
  };
}

// Collective, beside heartbeats: every rank writes its part of the split tensors while rank 0
// drafts the checkpoint file (RowFiles::kParts; a checkpoint without split tensors has no parts).
// Returns rank 0's step 3, an empty function elsewhere. A part that one rank cannot write abandons
// the checkpoint on every rank (AgreedError naming the rank), and the parts the others wrote go.
std::function<void()> writeWithParts(Communicator& comm, const TrainConfig& c, std::shared_ptr<const CheckpointContent> content,
                                     std::shared_ptr<std::string> path) {
  const std::string dir = c.run_dir + "/checkpoints";
  const int rank = comm.rank();
  const std::int64_t step = content->state.step;
  const bool split = content->anySplit();
  auto draft = std::make_shared<CheckpointDraft>();
  auto sums = std::make_shared<std::vector<std::uint64_t>>();
  try {
    runWithHeartbeat(comm, "ckpt/write", c.slow_phase_timeout_s, "checkpoint of step " + std::to_string(step) + " in " + dir,
                     " (a stalled file system?); earlier checkpoints are intact",
                     [=, delay = rank == 0 ? c.slow_checkpoint_s : 0.0, part_delay = c.slow_rows_s * (rank + 1)] {
                       torch::NoGradGuard no_grad;  // grad mode is per thread
                       sleepFor(delay);
                       if (split) {
                         sleepFor(part_delay);
                         *sums = writeRowsPart(dir, *content);
                       }
                       if (rank == 0) *draft = draftCheckpoint(dir, *content, RowFiles::kParts);
                     });
  } catch (const AgreedError&) {  // another rank failed: this rank's part is of no use, and takes space
    if (split) ::unlink((dir + "/" + checkpointPartName(step, rank, comm.size())).c_str());
    if (rank == 0) ::unlink((dir + "/" + checkpointName(step) + ".tmp").c_str());
    throw;
  }
  auto all = std::make_shared<std::vector<std::uint64_t>>(sums->size() * static_cast<std::size_t>(comm.size()));
  if (split) comm.allGatherBytes(sums->data(), sums->size() * sizeof(std::uint64_t), all->data(), "ckpt/part_checksums");
  if (rank != 0) return {};
  return [draft, content, all, dir, keep = c.keep_last, path] {
    *path = completeCheckpoint(*draft, *content, *all);
    pruneCheckpoints(dir, keep, content->state.step);
  };
}

}  // namespace

CheckpointContent checkpointContent(Communicator& comm, DataParallel& dp, bool trainable_only, TrainingState state,
                                    Schedule schedule, Transformer model) {
  CheckpointContent content;
  content.state = std::move(state);
  content.schedule = std::move(schedule);
  content.model = model;
  content.optimizer = dp.sharedOptimizer();
  content.rows = dp.checkpointRows(trainable_only);
  content.rank = comm.rank();
  content.world = comm.size();
  // Every rank must hand over the same tensors, in the same order and layout, and hold the rows
  // that layout gives it: else one rank's rows would be written where another tensor's belong, and
  // the checksums would vouch for them. Each rank checks its own, and a digest of the list is
  // compared across ranks (three numbers each, whatever the model's size).
  const std::string problem = content.rowsProblem();
  std::string list;
  for (const auto& t : content.rows) list += t.object + " " + c10::str(t.shape) + (t.sharded ? " rows\n" : " whole\n");
  const std::int64_t mine[3] = {static_cast<std::int64_t>(content.rows.size()), crc32(list.data(), list.size()), problem.empty() ? 0 : 1};
  std::vector<std::int64_t> all(3 * static_cast<std::size_t>(content.world));
  comm.allGatherBytes(mine, sizeof(mine), all.data(), "ckpt/rows_agree");
  if (!problem.empty()) throw Error("checkpoint of step " + std::to_string(content.state.step) + ": " + problem);
  for (int r = 0; r < content.world; ++r) {
    const std::int64_t* theirs = &all[3 * static_cast<std::size_t>(r)];
    if (theirs[2] != 0)
      throw Error("checkpoint of step " + std::to_string(content.state.step) + ": rank " + std::to_string(r) +
                  " holds other rows than the strategy's layout gives it (its error names the tensor)");
    if (theirs[0] != mine[0] || theirs[1] != mine[1])
      throw Error("checkpoint of step " + std::to_string(content.state.step) + ": rank " + std::to_string(r) +
                  " hands the writer other tensors than rank " + std::to_string(content.rank) + " (" + std::to_string(theirs[0]) +
                  " against " + std::to_string(mine[0]) + ")");
  }
  return content;
}

WrittenCheckpoint writeCheckpointTogether(Communicator& comm, const TrainConfig& c,
                                          std::shared_ptr<const CheckpointContent> content) {
  const std::string dir = c.run_dir + "/checkpoints";
  auto path = std::make_shared<std::string>();
  std::function<void()> complete;
  std::string how;
  bool written = false;
  if (content->anySplit() && c.checkpoint_files == "one") {
    std::string why_not;
    auto wrote = writeIntoOneFile(comm, c, content, path, &why_not);
    written = wrote.has_value();
    if (written) {
      complete = std::move(*wrote);
      how = "one file, " + std::to_string(comm.size()) + " ranks writing their rows";
    } else {
      how = "a part file per rank, since the ranks cannot write one file together: " + why_not;
    }
  }
  if (!written) {
    complete = writeWithParts(comm, c, content, path);
    if (content->anySplit() && how.empty()) how = "a part file per rank";
  }
  runWithHeartbeat(comm, "ckpt/complete", c.slow_phase_timeout_s,
                   "checkpoint of step " + std::to_string(content->state.step) + " in " + dir,
                   " (a stalled file system?); earlier checkpoints are intact", std::move(complete));
  return {*path, how};
}

void saveRunCheckpoint(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                       const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log,
                       PendingCheckpoint* pending) {
  if (c.checkpoint_async && pending) return pending->start(comm, c, model, dp, schedule, step, counters, log);
  const auto start = std::chrono::steady_clock::now();
  clearStaleDrafts(comm, c, c.run_dir + "/checkpoints", log);
  // Training waits for this checkpoint: the rows are written from the live tensors.
  const auto written = writeCheckpointTogether(
      comm, c, std::make_shared<const CheckpointContent>(contentOf(comm, c, model, dp, schedule, step, counters)));
  if (comm.rank() == 0)
    log.main("checkpoint: " + written.path + " (" +
             seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()) + " s" +
             (written.how.empty() ? "" : "; " + written.how) + ")");
}

PendingCheckpoint::~PendingCheckpoint() = default;

void PendingCheckpoint::start(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                              const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log) {
  wait(comm, c, log);  // one checkpoint in flight at a time
  const auto begin = std::chrono::steady_clock::now();
  const std::string dir = c.run_dir + "/checkpoints";
  const int rank = comm.rank(), world = comm.size();
  // Parts of this step left by an earlier attempt (a run that died after writing them) must not be
  // mistaken for this one's: rank 0 removes them before any rank starts.
  clearStaleDrafts(comm, c, dir, log, [dir, step, world] {
    for (int r = 0; r < world; ++r) ::unlink((dir + "/" + checkpointPartName(step, r, world)).c_str());
  });
  // Training goes on changing the tensors while the helper writes: it writes copies, taken now.
  const auto content = std::make_shared<const CheckpointContent>(contentOf(comm, c, model, dp, schedule, step, counters).copied());
  path_ = std::make_shared<std::string>();
  step_ = step;
  world_ = world;
  const CancelToken cancel = makeCancelToken();
  started_ = std::chrono::steady_clock::now();
  snapshot_s_ = std::chrono::duration<double>(started_ - begin).count();
  work_ = std::make_unique<BackgroundWork>([=, path = path_, keep = c.keep_last, delay = c.slow_checkpoint_s,
                                            limit = c.slow_phase_timeout_s, part_delay = c.slow_rows_s * (rank + 1)] {
    torch::NoGradGuard no_grad;  // grad mode is per thread
    const bool split = content->anySplit();
    if (rank == 0) sleepFor(delay);
    if (split) {
      sleepFor(part_delay);
      writeRowsPart(dir, *content);
    }
    if (rank != 0) return;
    const CheckpointDraft draft = draftCheckpoint(dir, *content, RowFiles::kParts);
    try {
      const auto all = split ? awaitPartSums(dir, *content, limit, [cancel] { throwIfCancelled(cancel); })
                             : std::vector<std::uint64_t>{};
      *path = completeCheckpoint(draft, *content, all);
    } catch (...) {
      ::unlink(draft.tmp.c_str());
      throw;
    }
    pruneCheckpoints(dir, keep, step);
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
