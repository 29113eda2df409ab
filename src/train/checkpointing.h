// The training run's side of checkpoints: saving one (what each rank holds, beside a heartbeat) and
// resuming from the newest good one. checkpoint/checkpoint.h has the file itself.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "checkpoint/checkpoint.h"
#include "communicator.h"
#include "config/train_config.h"
#include "optim/adamw.h"
#include "parallel/data_parallel.h"
#include "parallel/heartbeat.h"
#include "util/log.h"

namespace graft {

// Collective: what this rank hands the checkpoint writer (Note [one checkpoint writer] in
// checkpoint/checkpoint.h): its rows of every tensor as the strategy says
// (DataParallel::checkpointRows, the trainable parameters only with `trainable_only`), every
// rank's row ranges, and `state`, `schedule`, `model` (may be null: no /model attributes) beside
// them. Views of the live tensors: copied() before training goes on.
CheckpointContent checkpointContent(Communicator& comm, DataParallel& dp, bool trainable_only, TrainingState state,
                                    Schedule schedule, Transformer model);

// Collective, beside heartbeats (Note [heartbeat]): writes `content` as its checkpoint in
// RUN_DIR/checkpoints (c.run_dir) and prunes older ones. Rank 0 alone writes a tensor it holds
// whole; a tensor the ranks hold rows of, every rank writes its rows of: into the one file
// (c.checkpoint_files = one: Note [one file, every rank's rows]) or, where they cannot open it
// together or per_rank asks for it, into a part file each. A rank that cannot write abandons the
// checkpoint on every rank (AgreedError naming the rank), and what the others wrote goes. Returns
// on rank 0 the checkpoint's path and how it was written ("" when rank 0 wrote it alone).
struct WrittenCheckpoint {
  std::string path, how;
};
WrittenCheckpoint writeCheckpointTogether(Communicator& comm, const TrainConfig& c,
                                          std::shared_ptr<const CheckpointContent> content);

// What a checkpoint carries of the run besides model, optimizer and schedule.
struct RunCounters {
  std::int64_t tokens_seen = 0;    // tokens read by all ranks since step 0
  std::int64_t skipped_steps = 0;  // steps skipped for a non-finite loss or gradient
};

// checkpoint.async = true: the checkpoint being written by a helper while training goes on. One is
// in flight at a time: starting the next, and the end of the run, wait for it.
class PendingCheckpoint {
 public:
  PendingCheckpoint() = default;
  ~PendingCheckpoint();
  // Collective. Waits (beside a heartbeat) for the previous checkpoint, copies what this rank
  // hands the writer for the checkpoint of `step` (checkpointContent) and starts writing it: every
  // rank its part of the tensors the ranks hold rows of, rank 0 the checkpoint file, with the parts'
  // checksums read from their manifests (the helper makes no collective call).
  void start(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp, const Schedule& schedule,
             std::int64_t step, RunCounters counters, Logger& log);
  // Collective. Waits beside a heartbeat for the checkpoint in flight (if any) and logs it; an
  // error in writing it, on any rank, is rethrown here on every rank (AgreedError), and this rank's
  // part of the abandoned checkpoint goes.
  void wait(Communicator& comm, const TrainConfig& c, Logger& log);
  // True when this rank's part of the checkpoint in flight failed (does not wait): the ranks check
  // every step (Trainer), so that a failed write stops the run at once, not one checkpoint later.
  bool failedHere() { return work_ && work_->failed(); }

 private:
  std::unique_ptr<BackgroundWork> work_;
  int world_ = 1;
  std::shared_ptr<std::string> path_;
  std::int64_t step_ = 0;
  std::chrono::steady_clock::time_point started_;
  double snapshot_s_ = 0;  // how long training paused to copy the state
};

// Collective. Writes the checkpoint of `step` into RUN_DIR/checkpoints (writeCheckpointTogether)
// while training waits, every rank's RNG states gathered; all ranks keep a heartbeat, so a rank
// stalling during a long write is still named within dist.timeout_s. With checkpoint.async and
// `pending`, it starts the write there instead and returns.
void saveRunCheckpoint(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp,
                       const Schedule& schedule, std::int64_t step, RunCounters counters, Logger& log,
                       PendingCheckpoint* pending = nullptr);

// Reads the training data's fingerprint (datasetFingerprint) while the run loads, so that
// checkpoints record it and resume compares it without reading the data file again.
void rememberDataFingerprint(const std::string& data_path);

// Collective, before the run loads its model: when model.path is a graft checkpoint (or an adapter
// checkpoint whose base is one), every rank reads its rows of each /model tensor and rank 0 checks
// the combined checksums against the manifest (Note [verification shared by the ranks]), so a
// damaged one, or one whose part file is missing, stops the run on every rank in one line naming
// the tensor (InputError) before anything reads it. model.verify = false skips it and says so.
// Nothing is verified when run.dir has a checkpoint of the whole model to resume from (`deferrable`):
// true is returned then, and the caller verifies model.path after all (deferrable = false) if no
// checkpoint turns out to verify.
bool verifyModelPath(Communicator& comm, const TrainConfig& c, Logger& log, bool deferrable = true);

struct Resumed {
  std::int64_t step = 0;  // 0: nothing to resume
  RunCounters counters;
  std::string checkpoint;  // the file resumed from ("" when none)
};

// Collective. Rank 0 picks the newest complete checkpoint in run.dir that verifies against its
// manifest (damaged ones are named and skipped); its step on every rank, -1 when there is none.
std::int64_t findResumePoint(Communicator& comm, const TrainConfig& c, Logger& log);

// The newest complete checkpoint in run.dir that holds the whole model, when this run is a full
// fine-tune (not adapter-only); "" otherwise. Not verified:
// a start-up uses it to know the model's shape without model.path and to skip model.path's
// verification; findResumePoint says which checkpoint is read.
std::string checkpointHoldingTheWholeModel(const TrainConfig& c);

// Collective. Every rank reads the checkpoint of step `found` (findResumePoint; nothing when < 0)
// into `model` and its optimizer's rows, with a heartbeat, whatever the number of ranks or
// dist.shard it was saved with. Once the strategy keeps only its rows of the parameters
// (`own_rows`), only those rows are read.
Resumed resumeRun(Communicator& comm, const TrainConfig& c, Transformer model, DataParallel& dp, Logger& log,
                  std::int64_t found, bool own_rows = false);

}  // namespace graft
