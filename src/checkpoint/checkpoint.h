// Training checkpoints: one HDF5 file per checkpoint under RUN_DIR/checkpoints/, named
// step-<8 digits>.h5, written by rank 0 as step-XXXXXXXX.h5.tmp, fsynced, renamed, and its
// directory fsynced. Layout (format version 2) in docs/checkpoint-format.md:
//   /             attrs format="graft-checkpoint", version, step, world_size, tokens_seen, skipped_steps,
//                 config (resolved INI text), data_fingerprint, created_unix, complete=1 (written last)
//   /model        see convert/model_io.h (adapter-only for transfer.mode = lora: the adapters alone)
//   /transfer     attrs of the flavour and the base model path (adapter-only checkpoints)
//   /optimizer    written and read by the optimizer itself (optim/adamw.h), whole tensors; in a
//                 sharded run (dist.shard) virtual datasets over part files step-<8 digits>.part-
//                 <rank>-of-<world>.h5 beside it, one per rank, each written by its rank
//   /schedule     attrs lr, min_lr, warmup, total (optim/schedule.h)
//   /sampler      attrs seed, next_batch (global batch index the run continues with)
//   /rng/torch_cpu  uint8 [world_size, n]: each rank's CPU generator state
//   /rng/torch_cuda uint8 [world_size, n]: each rank's CUDA generator state (runs on CUDA only)
//   /manifest     uint8 text, "object crc32 bytes" per tensor, written just before complete=1 (a
//                 dataset: an attribute in the object header holds at most 64 KiB, less than an
//                 80-layer model's manifest); a copy stays in the root attribute `manifest`,
//                 where version 1 kept it, for older readers
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "formats/hdf5.h"
#include "model/transfer.h"
#include "model/transformer.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace graft {

constexpr std::int64_t kCheckpointVersion = 2;  // reads 1 and 2

// The manifest of a checkpoint or part file, wherever its version keeps it (InputError naming the
// file when it has none); and where version 2 writes it.
std::string readManifest(const H5File& file);
void writeManifest(H5File& file, const std::string& manifest);

struct TrainingState {
  std::int64_t step = 0;          // optimizer steps completed
  std::int64_t tokens_seen = 0;
  std::int64_t skipped_steps = 0;  // steps skipped for a non-finite loss or gradient
  std::int64_t world_size = 1;
  std::uint64_t seed = 0;
  std::int64_t next_batch = 0;    // sampler cursor
  std::string config;             // resolved INI
  std::string data_fingerprint;   // datasetFingerprint of the training data ("" when not recorded)
  TransferConfig transfer;        // lora: only the adapters are written (adapter-only checkpoint)
  std::string base_model;         // model.path, recorded for adapter-only checkpoints
  at::Tensor rng_states;          // uint8 [world_size, n]
  at::Tensor device_rng_states;   // uint8 [world_size, n]: CUDA runs only, else undefined
  bool damage_for_tests = false;  // debug.damage_checkpoint: a byte of the draft flipped before it is verified
  bool kill_for_tests = false;    // debug.kill_before_verify: the process killed between writing the draft and verifying it
};

std::string checkpointName(std::int64_t step);
// "step-00000010.part-00001-of-00004.h5": rank 1's part of checkpoint 10 of a 4-rank sharded run.
std::string checkpointPartName(std::int64_t step, int rank, int world);

// How a group's tensors get into the checkpoint file: `write` writes them (whole tensors, or an
// index of the rows that part files hold); `bytes` is what it adds on disk (for the free-space check).
struct GroupWriter {
  std::uint64_t bytes = 0;
  std::function<void(H5File&)> write;
};
using OptimizerWriter = GroupWriter;  // group /optimizer

// Any rank, before the checkpoint file of `step` is written: writes this rank's part file
// (checkpointPartName) in `dir` with `write` into a temporary file, reads it back and checks every
// tensor, then publishes it (fsync + rename); returns the part's manifest ("object crc32 bytes" per tensor, also stored in the
// part as dataset /manifest). On failure the temporary file is removed.
std::string writeCheckpointPart(const std::string& dir, std::int64_t step, int rank, int world, std::uint64_t bytes,
                                const std::function<void(H5File&)>& write);

// Rank 0 only. Writes and publishes the checkpoint, then reads it back and verifies it (but the
// rows in part files, which their writers verified); returns its path. On failure (disk full...)
// the temporary file is removed and nothing older is touched. The tensors of /model come from
// `model`, or from `model_tensors` when it has a writer (dist.shard = parameters: an index of the
// ranks' parts; `model` then gives the attributes only).
std::string writeCheckpoint(const std::string& dir, Transformer& model, const OptimizerWriter& optimizer,
                            const Schedule& schedule, const TrainingState& state, const GroupWriter& model_tensors = {});

// A checkpoint written in two steps, so that other ranks can write rows into it in between (a
// sharded run's checkpoint in one file; train/checkpointing.cc). Rank 0 first drafts the
// temporary file: everything writeCheckpoint writes but the bytes of the tensors its writers made
// with H5File::createRawFloat32, and neither manifest nor complete. `bytes`: what the whole
// checkpoint holds (for the free-space check).
struct CheckpointDraft {
  std::string path, tmp;                  // the checkpoint's name, and the temporary file being written
  std::int64_t step = 0;
  std::vector<H5File::Written> entries;   // every tensor in order, raw ones with crc32 and bytes 0
  bool damage_for_tests = false;          // TrainingState::damage_for_tests
  bool kill_for_tests = false;            // TrainingState::kill_for_tests
};
CheckpointDraft draftCheckpoint(const std::string& dir, Transformer& model, const OptimizerWriter& optimizer,
                                const Schedule& schedule, const TrainingState& state, const GroupWriter& model_tensors,
                                std::uint64_t bytes);
// Rank 0, once the raw tensors' bytes are written and verified by their writers: their checksums
// (`raw`, by object, combined from the writers'), the manifest and complete = 1, a read-back of
// what rank 0 wrote itself, and only then temp -> publish. Returns the checkpoint's path. On
// failure (a tensor that reads back differently included) the temporary file is removed and
// nothing older is touched: no file that failed its check ever has a checkpoint's name.
std::string completeCheckpoint(const CheckpointDraft& draft, const std::vector<H5File::Written>& raw);

// Complete checkpoints in `dir`, newest first (a checkpoint is complete when its file has the
// graft format attribute and complete=1; partial or foreign files are skipped).
std::vector<std::string> completeCheckpoints(const std::string& dir);
// Whether a checkpoint's /model holds every weight (false for an adapter-only run's, which holds
// only what trained). Error when the file does not open.
bool holdsTheWholeModel(const std::string& path);

// Reads every tensor of a complete checkpoint and checks it against the manifest; throws
// InputError naming the file and the first damaged or missing tensor. Without `parts_too`, tensors
// whose rows live in part files are left out (their writers verified them).
void verifyCheckpoint(const std::string& path, bool parts_too = true);

// Verification shared by the ranks of a run (resume, model.path): part `part` of `parts` reads rows
// [rows x part / parts, rows x (part + 1) / parts) of every tensor the manifest of `path` lists
// under `prefix` ("/" for all), in blocks of at most 64 MiB, and returns (crc32, bytes) of each,
// in manifest order: exactly `count` pairs (manifestEntries, which rank 0 found), so that every
// rank sends the same amount whatever it could read. A tensor it cannot read gets
// (0, kUnreadableRows) and its error goes to `*error` (the first one). Local: no collective.
constexpr std::uint64_t kUnreadableRows = ~std::uint64_t{0};
std::vector<std::uint64_t> checkpointRowSums(const std::string& path, const std::string& prefix, std::size_t count,
                                             int part, int parts, std::string* error);
std::size_t manifestEntries(const std::string& path, const std::string& prefix = "/");
// Combines every part's sums (`all`: part after part, as checkpointRowSums returned them) into each
// whole tensor's (crc32_combine, in row order) and checks it against the manifest; InputError
// naming the file and the first tensor that is damaged or that a part could not read.
void checkRowSums(const std::string& path, const std::string& prefix, const std::vector<std::uint64_t>& all, int parts);
// The checkpoints a model file's use reads: `path` when it is a checkpoint, then for an
// adapter-only one its base when that is a checkpoint too (and so on). Empty for other files.
std::vector<std::string> modelFilesToVerify(const std::string& path);

// A model file that is a graft checkpoint (format "graft-checkpoint"), read as a model by one
// process (graft eval/generate/export/convert; a run's model.path: verifyModelPath in
// train/checkpointing.h, the ranks sharing the reading): its /model tensors are checked against
// its manifest, in blocks of at most 64 MiB, before anything reads them, so that a damaged
// checkpoint or one whose part file is missing (whose rows read as NaN) is refused in one line
// instead of giving wrong outputs; for an adapter-only checkpoint its base too when that is a
// checkpoint. Returns how many tensors it verified; 0 and nothing read when `path` is not a
// checkpoint. InputError naming file and tensor.
int verifyModelFile(const std::string& path);
bool isCheckpointFile(const std::string& path);
// The command-line tools' use of it: verifies (or, with `verify` false, does not) and says which on
// stderr, in one line, when `path` is a checkpoint (--no-verify, for very large ones).
void checkModelFile(const std::string& path, bool verify);

// Reads a checkpoint into `model` and `optimizer` (shapes checked; errors name file and tensor);
// the optimizer reads only the rows its slots hold, so any sharding resumes any checkpoint. With
// `model_rows` (dist.shard = parameters once each rank keeps only its rows), the model's tensors
// are read there instead: this rank's rows of each, never a whole tensor.
TrainingState readCheckpoint(const std::string& path, Transformer& model, AdamW& optimizer,
                             const std::vector<AdamW::Rows>& model_rows = {});

// Rank 0, while no rank is writing in `dir` (before a checkpoint starts): deletes the temporary
// files (*.tmp) that interrupted writes left, so that they never count against the free-space
// check of the next checkpoint. Returns their names.
std::vector<std::string> removeStaleDrafts(const std::string& dir);

// Deletes complete checkpoints beyond the newest `keep` up to step `written` (0 keeps all), with
// their part files; stale .tmp files; and part files whose checkpoint file does not exist or was
// written with another number of ranks. Complete checkpoints newer than `written` belong to a run
// history that resume abandoned (it found them damaged): they are neither counted nor deleted. A
// checkpoint file that cannot be opened keeps its parts. Call it only after checkpoint `written`
// was verified.
void pruneCheckpoints(const std::string& dir, std::int64_t keep, std::int64_t written);

}  // namespace graft
