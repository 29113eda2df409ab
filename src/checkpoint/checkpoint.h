// Training checkpoints: one HDF5 file per checkpoint under RUN_DIR/checkpoints/, named
// step-<8 digits>.h5, written by rank 0 as step-XXXXXXXX.h5.tmp, fsynced, renamed, and its
// directory fsynced. Layout (format version 2) in docs/checkpoint-format.md:
//   /             attrs format="graft-checkpoint", version, step, world_size, tokens_seen, skipped_steps,
//                 config (resolved INI text), data_fingerprint, created_unix, complete=1 (written last)
//   /model        see convert/model_io.h (adapter-only for transfer.mode = lora: the adapters alone)
//   /transfer     attrs of the flavour and the base model path (adapter-only checkpoints)
//   /optimizer    attributes written and read by the optimizer itself (optim/adamw.h); the
//                 moments, whole tensors, written as Note [one checkpoint writer] says: in a sharded
//                 run each rank's rows, in this file or (virtual datasets) in part files
//                 step-<8 digits>.part-<rank>-of-<world>.h5 beside it, one per rank
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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/tensor_rows.h"
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

// Any rank, before the checkpoint file of `step` is written: writes this rank's part file
// (checkpointPartName) in `dir` with `write` into a temporary file, reads it back and checks every
// tensor, then publishes it (fsync + rename); returns the part's manifest ("object crc32 bytes" per
// tensor, also stored in the part as dataset /manifest). On failure the temporary file is removed.
std::string writeCheckpointPart(const std::string& dir, std::int64_t step, int rank, int world, std::uint64_t bytes,
                                const std::function<void(H5File&)>& write);

// Note [one checkpoint writer]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A checkpoint is written one way, whatever dist.shard is and whether training waits for it. Who
// writes what is said once, by the data-parallel strategy: every rank hands over its rows of every
// tensor the checkpoint holds (DataParallel::checkpointRows: the same tensors in the same order on
// every rank), and the ranks share where each one's rows lie (the row map). When training goes on
// meanwhile (checkpoint.async) those rows are copied first (CheckpointContent::copied): the writer
// never reads a live tensor. Then:
//   1. a tensor whose rows rank 0 holds all of (a replicated run, one rank) rank 0 writes into the
//      checkpoint file itself, through HDF5, and reads back before it publishes the file;
//   2. a tensor whose rows several ranks hold, each writes its rows of: either into the checkpoint
//      file at their offset (RowFiles::kOneFile: rank 0 allocates the tensor in the draft, the
//      ranks write with MPI-IO, train/checkpointing.cc) or into a part file of its own, which the
//      checkpoint file maps (RowFiles::kParts: a virtual dataset over the parts); each writer
//      reads its rows back and checks them;
//   3. rank 0 combines the ranks' checksums of each tensor in row order (crc32_combine) into the
//      whole tensor's, writes the manifest and complete = 1, and only then publishes the file
//      (temp + fsync + rename) and prunes older ones.
// h5py and every reader see whole tensors whichever way a checkpoint was written.
enum class RowFiles { kOneFile, kParts };

// What one rank hands the writer for the checkpoint of `state.step`.
struct CheckpointContent {
  TrainingState state;                     // rank 0's is written
  Schedule schedule;
  Transformer model{nullptr};              // the /model group's attributes (its configuration); none when null
  std::shared_ptr<const AdamW> optimizer;  // the /optimizer group's attributes, slots' step counts
  std::vector<TensorRows> rows;            // this rank's rows of every tensor, the same order on every rank
  int rank = 0, world = 1;

  // Whether the ranks write tensor i of `rows` together (step 2); else rank 0 holds it whole.
  bool split(std::size_t i) const { return rows[i].sharded && world > 1; }
  bool anySplit() const;
  // "" when this rank's rows are those its tensors' layout gives it (TensorRows::sharded), with
  // the tensor's trailing shape; else what is wrong, naming the tensor.
  std::string rowsProblem() const;
  // Every rank's rows of tensor i, in row order: (rank, [begin, end)), ranks without rows left out.
  std::vector<std::pair<int, std::pair<std::int64_t, std::int64_t>>> holders(std::size_t i) const;
  // The same with this rank's rows (and the optimizer's attributes) copied into host memory.
  CheckpointContent copied() const;
};

// Every tensor whole on rank 0 of 1: the checkpoint one process writes of `model` and `optimizer`
// (their trainable parameters only when `state.transfer` is adapter-only).
CheckpointContent wholeContent(Transformer model, std::shared_ptr<const AdamW> optimizer, Schedule schedule,
                               TrainingState state);

// Rank 0, step 1 (and the layout of step 2): drafts DIR/step-<8 digits>.h5.tmp with everything but
// the split tensors' bytes, each split tensor allocated (kOneFile: its file offset appended to
// *offsets, in order) or mapped over the ranks' parts (kParts); no manifest, not complete. Checks
// first that the file system has room for what the file will hold. On failure the draft goes.
struct CheckpointDraft {
  std::string path, tmp;                  // the checkpoint's name, and the temporary file being written
  std::int64_t step = 0;
  std::vector<H5File::Written> entries;   // every tensor in order; split ones with crc32 and bytes 0
  bool damage_for_tests = false;          // TrainingState::damage_for_tests
  bool kill_for_tests = false;            // TrainingState::kill_for_tests
};
CheckpointDraft draftCheckpoint(const std::string& dir, const CheckpointContent& content, RowFiles files,
                                std::vector<std::uint64_t>* offsets = nullptr);
// Step 2 under kParts, any rank: its rows of every split tensor into its part file (read back,
// published); returns their (crc32, bytes), two numbers per split tensor in order.
std::vector<std::uint64_t> writeRowsPart(const std::string& dir, const CheckpointContent& content);
// The same numbers as rank `rank`'s writeRowsPart returned, read from its published part's manifest.
std::vector<std::uint64_t> partSums(const std::string& dir, const CheckpointContent& content, int rank);
// Rank 0, when the parts are written by helpers that do not meet (checkpoint.async): every rank's
// partSums, rank after rank, each read as its part appears (its writer publishes it by rename),
// waiting at most `limit_s` for the last; `check` is called while waiting and throws to give up
// (another rank's part failed).
std::vector<std::uint64_t> awaitPartSums(const std::string& dir, const CheckpointContent& content, double limit_s,
                                         const std::function<void()>& check);
// Bytes of one row of tensor i of `rows`.
std::uint64_t rowBytes(const TensorRows& t);
// Rank 0, step 3: every rank's sums (`all`: rank after rank, as writeRowsPart returns them)
// combined into each split tensor's, the manifest and complete = 1, a read-back of what rank 0
// wrote itself, and only then temp -> publish. Returns the checkpoint's path. On failure (a tensor
// that reads back differently included) the temporary file is removed and nothing older is
// touched: no file that failed its check ever has a checkpoint's name.
std::string completeCheckpoint(const CheckpointDraft& draft, const CheckpointContent& content,
                               const std::vector<std::uint64_t>& all);
// Steps 1 and 3 in one process whose content splits no tensor (wholeContent; a run of one rank).
std::string writeCheckpoint(const std::string& dir, const CheckpointContent& content);

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
