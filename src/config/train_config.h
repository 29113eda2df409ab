// The training configuration: an INI file (configs/*.ini) plus `--section.key=value` overrides.
// Every key is declared once, with its default and help text, in train_config.cc; `graft train
// --help` prints them all and docs/config.md lists them. Unknown keys, bad values and missing
// files are InputErrors that name the key and, for file entries, FILE:LINE.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.h"
#include "model/transfer.h"

namespace graft {

struct TrainConfig {
  std::string config_file;
  // [run]
  std::string run_dir;
  // [model]
  std::string model_path;  // llama2.c .bin or graft .h5; empty = random init with `arch`
  ModelConfig arch;        // used when model_path is empty (vocab_size comes from the dataset)
  bool model_verify = true;  // a graft checkpoint as model_path is checked against its manifest first
  // [transfer]
  TransferConfig transfer;
  // [task]
  std::string task = "auto";     // auto | lm | classify
  std::string pooling = "last";  // classification features: last | mean
  // [data]
  std::string data_path;
  std::string data_load = "auto";  // auto | memory | stream (data/dataset.h DataResidency)
  std::string data_packing = "auto";  // auto | windows | documents | padded (data/dataset.h Packing)
  // [train]
  std::int64_t steps = 100;
  std::int64_t batch_size = 8;  // global batch, in sequences, per optimizer step
  std::int64_t micro_batch = 4; // per rank, per forward/backward
  int seq_len = 64;
  double lr = 1e-3, min_lr = 1e-4;
  std::int64_t warmup = 10;
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 1.0;
  std::uint64_t seed = 1234;
  int threads = 0;              // 0 = cores / ranks on this host
  std::int64_t log_every = 1;
  std::int64_t stop_after = 0;  // stop (with a checkpoint) after this step; 0 = run to the end
  std::int64_t max_bad_steps = 5;  // consecutive non-finite steps that stop the run
  bool recompute = false;          // activation checkpointing per block (model/transformer.h)
  bool tensorboard = true;         // TensorBoard event files in RUN_DIR/tensorboard (monitor/tfevents.h)
  std::string device = "auto";     // auto | cpu | cuda (model/device.h)
  std::string precision = "fp32";  // fp32 | bf16: what matrix products and attention compute in
  // [eval]
  std::int64_t eval_every = 50;
  std::int64_t eval_batches = 8;
  // [dist]
  std::string backend = "auto";  // auto | mpi | local | nccl
  double timeout_s = 30;          // a collective that makes no progress this long is an error
  double slow_phase_timeout_s = 600;  // the same during set-up; the most a checkpoint write may take
  double bucket_mb = 25, first_bucket_mb = 1;
  bool overlap = true;
  std::string accumulate = "rows";  // dist.accumulate: rows | whole (Note [accumulating in rows])
  std::string prefetch = "auto";  // dist.shard = parameters: start the next unit's gather early (auto | true | false)
  std::string shard = "none";  // none | optimizer | gradients | parameters (parallel/data_parallel.h)
  std::string reduce_dtype = "fp32";  // fp32 | bf16: what gradients travel and are summed in
  // [debug] fault injection for tests: a NaN loss on one rank for `nan_count` steps from `nan_from`
  std::int64_t nan_from = 0, nan_count = 1;
  int nan_rank = 0;
  double slow_checkpoint_s = 0;  // rank 0 sleeps this long before each checkpoint write (a slow disk)
  double slow_rows_s = 0;        // rank r sleeps (r + 1) x this before writing its rows or part of a checkpoint
  std::int64_t damage_checkpoint = 0;  // rank 0 flips a byte of this step's checkpoint before verifying it
  std::int64_t kill_before_verify = 0;  // rank 0 kills itself (SIGKILL) once this step's checkpoint is written, before it is verified
  double slow_load_s = 0;        // every rank sleeps this long before loading the data and model
  std::string stall_at;          // rank stall_rank stops for good before the collective with this tag
  int stall_rank = 1;
  // [checkpoint]
  std::int64_t checkpoint_every = 50;
  std::int64_t keep_last = 3;
  bool checkpoint_async = false;  // write checkpoints in the background (train/checkpointing.h)
  std::string checkpoint_files = "one";
  // [resume] what may differ from the checkpoint a run resumes (seed, batch_size, seq_len, data,
  // transfer), comma-separated; anything else that differs is refused (train/checkpointing.h)
  std::string resume_allow;  // sharded runs: one file every rank writes its rows into, or per_rank parts

  std::int64_t accumulation(int world) const { return batch_size / (micro_batch * world); }
  // Throws InputError naming the key when values do not fit `world` ranks.
  void validate(int world) const;
  // Every key = value, as an INI text that parses back to this config.
  std::string resolved() const;
};

// Parses `graft train` arguments. Returns false when --help was printed.
bool parseTrainConfig(const std::vector<std::string>& args, TrainConfig& config);
// Parses an INI text (for tests and for reading the config stored in a checkpoint).
TrainConfig parseTrainConfigText(const std::string& ini, const std::string& origin);

}  // namespace graft
