#include "config/train_config.h"

#include <boost/program_options.hpp>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>

#include "config/command_line.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace po = boost::program_options;

namespace {

// Every option, declared once: its key, target, default, help, and how to print its value.
class OptionTable {
 public:
  explicit OptionTable(TrainConfig& c) : desc_("graft train options (INI [section] key, or --section.key=value)") {
    add("run.dir", c.run_dir, "run directory: checkpoints/, metrics.jsonl; an existing one is resumed");
    add("model.path", c.model_path, "pretrained model: llama2.c .bin, graft .h5, or Hugging Face folder / .safetensors; empty = random init");
    add("model.verify", c.model_verify,
        "a graft checkpoint as model.path is checked against its manifest before training starts, each rank a share "
        "of its tensors (false: not checked, for very large ones; the log says so)");
    add("model.arch", c.arch.arch, "llama or gpt2 (random init only)");
    add("model.dim", c.arch.dim, "width (random init only)");
    add("model.hidden_dim", c.arch.hidden_dim, "feed-forward width (random init only)");
    add("model.n_layers", c.arch.n_layers, "layers (random init only)");
    add("model.n_heads", c.arch.n_heads, "attention heads (random init only)");
    add("model.n_kv_heads", c.arch.n_kv_heads, "key/value heads (random init only)");
    add("model.max_seq_len", c.arch.seq_len, "rotary table length (random init only)");
    add("model.tied", c.arch.tied, "classifier shares the embedding (random init only)");
    add("transfer.mode", c.transfer.mode,
        "full (every parameter trains) | lora (frozen base + low-rank adapters) | prompt (frozen base + soft prompt) | "
        "feature (frozen base, head only)");
    add("transfer.prompt_tokens", c.transfer.prompt_tokens, "prompt mode: trainable vectors put before every input");
    add("transfer.lora_rank", c.transfer.lora_rank, "LoRA rank r");
    add("transfer.lora_alpha", c.transfer.lora_alpha, "LoRA alpha: the update is scaled by alpha / r");
    add("transfer.lora_dropout", c.transfer.lora_dropout, "dropout on the adapters' input while training");
    add("transfer.lora_targets", c.transfer.lora_targets,
        "projections that get adapters: names (wq,wk,wv,wo,w1,w2,w3,output) or globs (layers.1?.attention.*)");
    add("transfer.quantize", c.transfer.quantize, "QLoRA: hold the frozen base as none | int8 | nf4");
    add("transfer.cache_features", c.transfer.cache_features,
        "feature mode: compute the frozen features once (RUN_DIR/features.h5) and train the head from them");
    add("transfer.layer_lr_decay", c.transfer.layer_lr_decay,
        "full mode: layer i of L trains at lr x decay^(L-1-i), embeddings at decay^L (1 = off)");
    add("transfer.unfreeze_every", c.transfer.unfreeze_every,
        "full mode: gradual unfreezing, top layer first, one more layer every N steps (0 = off)");
    add("task.type", c.task, "auto (classify when the dataset has labels, else lm) | lm | classify");
    add("task.pooling", c.pooling, "classification features: last (the last token's hidden state) | mean");
    add("data.path", c.data_path, "token dataset from `graft prepare` (HDF5)");
    add("data.load", c.data_load, "auto (in memory up to 2 GiB of tokens per split, else streamed from the file) | memory | stream");
    add("data.packing", c.data_packing,
        "auto (documents for conversations and prompt/completion data, else windows) | windows (seq_len-token windows "
        "across documents) | documents (whole documents packed per sequence, attending only to themselves) | padded "
        "(one document per sequence)");
    add("train.steps", c.steps, "optimizer steps in the whole run");
    add("train.batch_size", c.batch_size, "global batch (sequences per optimizer step, all ranks)");
    add("train.micro_batch", c.micro_batch, "sequences per rank per forward/backward");
    add("train.seq_len", c.seq_len, "tokens per training sequence");
    add("train.lr", c.lr, "peak learning rate");
    add("train.min_lr", c.min_lr, "learning rate at the end of the cosine decay");
    add("train.warmup", c.warmup, "linear warm-up steps");
    add("train.weight_decay", c.weight_decay, "AdamW decoupled weight decay (matrices only)");
    add("train.beta1", c.beta1, "AdamW beta1");
    add("train.beta2", c.beta2, "AdamW beta2");
    add("train.eps", c.eps, "AdamW epsilon");
    add("train.grad_clip", c.grad_clip, "global gradient-norm clip (0 = off)");
    add("train.seed", c.seed, "seed for initialisation and data order");
    add("train.threads", c.threads, "intra-op threads per rank (0 = cores / ranks on the host)");
    add("train.log_every", c.log_every, "progress line every N steps");
    add("train.stop_after", c.stop_after, "checkpoint and stop after this step (0 = run to the end)");
    add("train.max_bad_steps", c.max_bad_steps, "consecutive steps with a non-finite loss or gradient that stop the run");
    add("train.tensorboard", c.tensorboard, "write TensorBoard event files to RUN_DIR/tensorboard (rank 0)");
    add("train.recompute", c.recompute,
        "activation checkpointing: each block keeps only its input in forward and runs again in backward "
        "(less memory for activations, about one more forward pass of compute; same results)");
    add("train.device", c.device,
        "auto (cuda in a CUDA build of graft when a GPU is visible, else cpu) | cpu | cuda; rank r of a host "
        "takes GPU (local rank mod visible GPUs)");
    add("train.precision", c.precision,
        "fp32 | bf16 (matrix products and attention in bfloat16; master weights, norms, softmax, losses, "
        "gradients and optimizer state stay float32, so checkpoints and resume are unchanged)");
    add("eval.every", c.eval_every, "validation loss every N steps (0 = only at the end)");
    add("eval.batches", c.eval_batches, "validation batches of micro_batch sequences per rank");
    add("dist.backend", c.backend,
        "collectives: auto (under mpirun/srun: nccl when training on CUDA in a build with NCCL, else mpi; one "
        "process alone: local), mpi, local, nccl (CUDA only)");
    add("dist.reduce_dtype", c.reduce_dtype,
        "fp32 | bf16: the dtype gradients travel and are summed in (bf16 halves the bytes; each sum rounds to "
        "bfloat16)");
    add("dist.timeout_s", c.timeout_s, "seconds a collective may wait before the run stops with an error naming it");
    add("dist.slow_phase_timeout_s", c.slow_phase_timeout_s,
        "longest long local work may take (loading, checkpoint verify/read/write; ranks check on each other meanwhile), "
        "and the timeout of the first barrier and the initial broadcast (seconds)");
    add("dist.bucket_mb", c.bucket_mb, "gradient bucket size (MiB)");
    add("dist.first_bucket_mb", c.first_bucket_mb, "first (last-layer) gradient bucket size (MiB)");
    add("dist.overlap", c.overlap, "start each bucket's all-reduce during backward as soon as it is ready");
    add("dist.prefetch", c.prefetch,
        "dist.shard = parameters: start the all-gather of the unit that comes next while the current one computes: "
        "true, false (each gather waits for its use) or auto (true where collectives progress during compute, as "
        "NCCL's; false on MPI, where it only costs memory); the same results either way");
    add("dist.accumulate", c.accumulate,
        "dist.shard = gradients | parameters under gradient accumulation: rows (each micro-step reduce-scatters its "
        "gradients into the ranks' rows: whole gradients never outlive a unit; one reduce-scatter per micro-step) | "
        "whole (gradients accumulate whole until the last micro-step: 4 bytes per parameter on every rank, one "
        "reduce-scatter per step, the replicated run's bits at 1 and 2 ranks)");
    add("dist.shard", c.shard,
        "who holds the optimizer state and gradients: none (every rank, all of it), optimizer (ZeRO-1: each rank "
        "its rows of the AdamW moments), gradients (ZeRO-2: also its rows of the averaged gradients), parameters "
        "(ZeRO-3: also its rows of the parameters, each unit gathered whole only while it computes); docs/sharding.md");
    add("debug.nan_from", c.nan_from, "fault injection (tests): NaN loss from this step (0 = off)");
    add("debug.nan_count", c.nan_count, "fault injection: for this many steps");
    add("debug.nan_rank", c.nan_rank, "fault injection: on this rank");
    add("debug.slow_checkpoint_s", c.slow_checkpoint_s, "fault injection: rank 0 sleeps this long before each checkpoint write");
    add("debug.slow_rows_s", c.slow_rows_s,
        "fault injection: rank r sleeps (r + 1) x this long before writing its rows or part of each checkpoint");
    add("debug.damage_checkpoint", c.damage_checkpoint,
        "fault injection: rank 0 flips one byte of the checkpoint of this step after writing it and before "
        "verifying it (0 = off)");
    add("debug.kill_before_verify", c.kill_before_verify,
        "fault injection: rank 0 kills its own process (SIGKILL) once the checkpoint of this step is written whole, "
        "before it is read back and published (0 = off)");
    add("debug.slow_load_s", c.slow_load_s, "fault injection: every rank sleeps this long before loading the data and model");
    add("debug.stall_at", c.stall_at,
        "fault injection: rank debug.stall_rank stops for good before the collective with this tag (ag/bwd/layers.1)");
    add("debug.stall_rank", c.stall_rank, "fault injection: the rank that debug.stall_at stops");
    add("checkpoint.every", c.checkpoint_every, "checkpoint every N steps (0 = only at the end)");
    add("checkpoint.keep_last", c.keep_last, "complete checkpoints to keep (0 = all)");
    add("checkpoint.files", c.checkpoint_files,
        "sharded runs (dist.shard), synchronous checkpoints: one (every rank writes its rows into the one checkpoint "
        "file) or per_rank (each rank writes a part file beside it, which the checkpoint maps; faster where one "
        "file's writes serialise); docs/sharding.md");
    add("checkpoint.async", c.checkpoint_async,
        "write checkpoints in the background: training pauses only to copy the state (host memory for one more "
        "copy of what this rank checkpoints), the next checkpoint and the end of the run wait for the previous");
    add("resume.allow", c.resume_allow,
        "what may differ from the checkpoint a run resumes, comma-separated: seed, batch_size, seq_len, data (the "
        "training data's size or document offsets), transfer (transfer.* but cache_features); anything else "
        "that differs is refused in one line naming it (empty: nothing may differ)");
  }

  po::options_description& description() { return desc_; }
  std::string resolved() const {
    std::ostringstream out;
    std::string section;
    for (const auto& [key, print] : printers_) {
      const auto dot = key.find('.');
      if (key.substr(0, dot) != section) {
        section = key.substr(0, dot);
        out << (out.tellp() > 0 ? "\n" : "") << "[" << section << "]\n";
      }
      out << key.substr(dot + 1) << " = " << print() << "\n";
    }
    return out.str();
  }

 private:
  template <typename T>
  void add(const char* key, T& target, const char* help) {
    std::ostringstream shown;  // short form for --help; resolved() prints full precision
    shown << std::boolalpha << target;
    desc_.add_options()(key, po::value<T>(&target)->default_value(target, shown.str()), help);
    printers_.emplace_back(key, [&target]() {
      std::ostringstream s;
      s.precision(17);
      s << std::boolalpha << target;
      return s.str();
    });
  }
  void add(const char* key, std::string& target, const char* help) {
    desc_.add_options()(key, po::value<std::string>(&target)->default_value(target), help);
    printers_.emplace_back(key, [&target]() { return target; });
  }

  po::options_description desc_;
  std::vector<std::pair<std::string, std::function<std::string()>>> printers_;
};

struct IniEntry {
  std::string key, value;
  int line;
};

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

std::vector<IniEntry> readIni(const std::string& text, const std::string& origin) {
  std::vector<IniEntry> entries;
  std::istringstream in(text);
  std::string raw, section;
  int number = 0;
  while (std::getline(in, raw)) {
    ++number;
    const std::string line = trim(raw);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[') {
      if (line.back() != ']') throw InputError(origin + ":" + std::to_string(number) + ": malformed section header '" + line + "'");
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) throw InputError(origin + ":" + std::to_string(number) + ": expected 'key = value', got '" + line + "'");
    if (section.empty()) throw InputError(origin + ":" + std::to_string(number) + ": key outside of any [section]");
    std::string value = trim(line.substr(eq + 1));
    const auto comment = value.find(" #");
    if (comment != std::string::npos) value = trim(value.substr(0, comment));
    entries.push_back({section + "." + trim(line.substr(0, eq)), value, number});
  }
  return entries;
}

// Stores the INI entries (lower priority than anything already stored) with errors at FILE:LINE.
void storeIni(const std::vector<IniEntry>& entries, const std::string& origin, po::options_description& desc,
              po::variables_map& vm) {
  std::map<std::string, int> seen;
  for (const auto& e : entries) {
    const std::string at = origin + ":" + std::to_string(e.line);
    if (!desc.find_nothrow(e.key, false)) throw InputError(at + ": unknown key '" + e.key + "' (see graft train --help)");
    if (seen.count(e.key)) throw InputError(at + ": key '" + e.key + "' repeats line " + std::to_string(seen[e.key]));
    seen[e.key] = e.line;
    po::parsed_options parsed(&desc);
    parsed.options.emplace_back(e.key, std::vector<std::string>{e.value});
    try {
      po::store(parsed, vm);
    } catch (po::error& err) {
      throw InputError(at + ": " + e.key + " = '" + e.value + "': " + optionErrorMessage(err));
    }
  }
}

void finish(po::variables_map& vm, TrainConfig& config) {
  try {
    po::notify(vm);
  } catch (po::error& err) {
    throw InputError(optionErrorMessage(err));
  }
}

}  // namespace

void TrainConfig::validate(int world) const {
  auto need = [](bool ok, const std::string& key, const std::string& why) {
    if (!ok) throw InputError("config key " + key + ": " + why);
  };
  need(!run_dir.empty(), "run.dir", "is required");
  need(!data_path.empty(), "data.path", "is required");
  need(data_load == "auto" || data_load == "memory" || data_load == "stream", "data.load", "must be auto, memory or stream");
  need(data_packing == "auto" || data_packing == "windows" || data_packing == "documents" || data_packing == "padded",
       "data.packing", "must be auto, windows, documents or padded");
  need(steps > 0, "train.steps", "must be positive");
  need(micro_batch > 0, "train.micro_batch", "must be positive");
  need(batch_size > 0 && batch_size % (micro_batch * world) == 0, "train.batch_size",
       std::to_string(batch_size) + " is not a positive multiple of micro_batch x ranks = " +
           std::to_string(micro_batch) + " x " + std::to_string(world));
  need(seq_len > 0, "train.seq_len", "must be positive");
  transfer.validate();
  need(task == "auto" || task == "lm" || task == "classify", "task.type", "'" + task + "' is not auto, lm or classify");
  need(pooling == "last" || pooling == "mean", "task.pooling", "'" + pooling + "' is not last or mean");
  need(lr > 0, "train.lr", "must be positive");
  need(min_lr >= 0 && min_lr <= lr, "train.min_lr", "must be in [0, train.lr]");
  need(warmup >= 0, "train.warmup", "must be >= 0");
  need(beta1 >= 0 && beta1 < 1, "train.beta1", "must be in [0, 1)");
  need(beta2 >= 0 && beta2 < 1, "train.beta2", "must be in [0, 1)");
  need(eps > 0, "train.eps", "must be positive");
  need(grad_clip >= 0, "train.grad_clip", "must be >= 0");
  need(weight_decay >= 0, "train.weight_decay", "must be >= 0");
  need(threads >= 0, "train.threads", "must be >= 0");
  need(log_every > 0, "train.log_every", "must be positive");
  need(stop_after >= 0, "train.stop_after", "must be >= 0");
  need(max_bad_steps > 0, "train.max_bad_steps", "must be positive");
  need(nan_from >= 0 && nan_count >= 0 && nan_rank >= 0, "debug.nan_from", "fault injection values must be >= 0");
  need(slow_checkpoint_s >= 0, "debug.slow_checkpoint_s", "must be >= 0");
  need(slow_rows_s >= 0, "debug.slow_rows_s", "must be >= 0");
  need(slow_load_s >= 0, "debug.slow_load_s", "must be >= 0");
  need(damage_checkpoint >= 0, "debug.damage_checkpoint", "must be >= 0");
  need(kill_before_verify >= 0, "debug.kill_before_verify", "must be >= 0");
  need(eval_every >= 0, "eval.every", "must be >= 0");
  need(eval_batches > 0, "eval.batches", "must be positive");
  need(checkpoint_every >= 0, "checkpoint.every", "must be >= 0");
  need(backend == "auto" || backend == "mpi" || backend == "local" || backend == "nccl", "dist.backend",
       "'" + backend + "' is not one of auto, mpi, local, nccl");
  need(device == "auto" || device == "cpu" || device == "cuda", "train.device", "'" + device + "' is not one of auto, cpu, cuda");
  need(precision == "fp32" || precision == "bf16", "train.precision", "'" + precision + "' is not one of fp32, bf16");
  need(reduce_dtype == "fp32" || reduce_dtype == "bf16", "dist.reduce_dtype",
       "'" + reduce_dtype + "' is not one of fp32, bf16");
  need(timeout_s > 0, "dist.timeout_s", "must be positive");
  need(slow_phase_timeout_s > 0, "dist.slow_phase_timeout_s", "must be positive");
  need(bucket_mb > 0 && first_bucket_mb > 0, "dist.bucket_mb", "bucket sizes must be positive");
  need(keep_last >= 0, "checkpoint.keep_last", "must be >= 0");
  need(checkpoint_files == "one" || checkpoint_files == "per_rank", "checkpoint.files",
       "'" + checkpoint_files + "' is not one of one, per_rank");
  for (std::size_t start = 0; start < resume_allow.size();) {
    std::size_t end = resume_allow.find(',', start);
    if (end == std::string::npos) end = resume_allow.size();
    const std::string name = resume_allow.substr(start, end - start);
    need(name == "seed" || name == "batch_size" || name == "seq_len" || name == "data" || name == "transfer",
         "resume.allow", "'" + name + "' is not one of seed, batch_size, seq_len, data, transfer");
    start = end + 1;
  }
  need(accumulate == "rows" || accumulate == "whole", "dist.accumulate", "must be rows or whole");
  need(prefetch == "auto" || prefetch == "true" || prefetch == "false", "dist.prefetch",
       "'" + prefetch + "' is not one of auto, true, false");
  need(shard == "none" || shard == "optimizer" || shard == "gradients" || shard == "parameters", "dist.shard",
       "'" + shard + "' is not one of none, optimizer, gradients, parameters");
}

std::string TrainConfig::resolved() const {
  TrainConfig copy = *this;
  return OptionTable(copy).resolved();
}

bool parseTrainConfig(const std::vector<std::string>& args, TrainConfig& config) {
  OptionTable table(config);
  po::options_description cli("graft train");
  cli.add_options()("help,h", "print this help")("config", po::value<std::string>(), "INI file (configs/*.ini)");
  cli.add(table.description());
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(cli).run(), vm);
  } catch (po::error& err) {
    throw InputError(optionErrorMessage(err) + " (see graft train --help)");
  }
  if (vm.count("help")) {
    std::cout << "usage: mpirun -np N graft train --config configs/X.ini [--section.key=value ...]\n\n" << cli << "\n";
    return false;
  }
  if (vm.count("config")) {
    config.config_file = vm["config"].as<std::string>();
    if (!fileExists(config.config_file)) throw InputError(config.config_file + ": config file not found");
    storeIni(readIni(readFile(config.config_file), config.config_file), config.config_file, table.description(), vm);
  }
  finish(vm, config);
  return true;
}

TrainConfig parseTrainConfigText(const std::string& ini, const std::string& origin) {
  TrainConfig config;
  OptionTable table(config);
  po::variables_map vm;
  storeIni(readIni(ini, origin), origin, table.description(), vm);
  finish(vm, config);
  return config;
}

}  // namespace graft
