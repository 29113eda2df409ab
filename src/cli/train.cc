#include <malloc.h>

#include <cstdio>
#include <cstdlib>

#include <chrono>

#include "cli/cli.h"
#include "communicator.h"
#include "stalling_communicator.h"
#include "util/error.h"
#include "config/train_config.h"
#include "model/device.h"
#include "monitor/run_history.h"
#include "train/trainer.h"
#include "util/files.h"
#include "util/log.h"

namespace graft {

namespace {

int train(const TrainConfig& config, const CommunicatorFactory& make_communicator, const std::function<bool()>& stop_requested,
          int& rank) {
  // dist.shard = parameters: blocks of 1 MiB and more straight from mmap, and back to the system
  // when freed. glibc would otherwise raise this threshold after the first such free and keep
  // freed blocks resident: what ZeRO-3 frees between uses (a unit's parameters) would stay in the
  // process. Measured on a 32M Llama at 4 ranks: peak resident set 776 -> 613 MiB. The heap's
  // freed top goes back too (glibc's default trim threshold and top pad, not keepFreedMemory's
  // 1 GiB and 256 MiB): the 155M Llama at 4 ranks peaked at 1376 MiB per rank with them, 1213 MiB
  // without, at the same tokens/s (issue 26). Only there: every other mode frees nothing it will
  // not allocate again next micro-step, and mapping and faulting in its activations afresh each
  // time cost a quarter of the stories260K fine-tune's speed at micro_batch 8 (issue 29: 23.4k ->
  // 31.5k tokens/s at 2 ranks without it; bench/step_speed.sh).
  if (config.shard == "parameters" && !std::getenv("MALLOC_MMAP_THRESHOLD_") && !std::getenv("GLIBC_TUNABLES")) {
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 10);
    mallopt(M_TOP_PAD, 128 << 10);
  }
  // The device first: dist.backend = auto depends on it (nccl exactly when training on CUDA).
  const bool on_cuda = chooseDeviceType(config.device) == c10::DeviceType::CUDA;
  if (const std::string why = backendRefusal(config.backend, on_cuda, ncclCompiledIn()); !why.empty()) throw InputError(why);
  // On CUDA, gradient hooks run on autograd's device thread and start collectives from there.
  if (const char* threads = std::getenv("GRAFT_MPI_THREADS"); on_cuda && threads && std::string(threads) == "funneled")
    throw InputError("GRAFT_MPI_THREADS=funneled: training on CUDA starts collectives from autograd's device thread, "
                     "which MPI_THREAD_FUNNELED forbids; unset it");
  auto owned = make_communicator(config.backend, on_cuda);
  if (!config.stall_at.empty() && owned->rank() == config.stall_rank)
    owned = stallingCommunicator(std::move(owned), config.stall_at);
  Communicator& comm = *owned;
  rank = comm.rank();
  comm.setTimeout(std::chrono::milliseconds(static_cast<std::int64_t>(config.timeout_s * 1000)));
  Trainer trainer(config, comm, stop_requested);
  const TrainResult result = trainer.run();
  Logger log(comm.rank(), comm.size());
  char line[256];
  if (result.preempted) {
    log.main("exiting with code " + std::to_string(kExitRequeue) + " (checkpointed, requeue me)");
    return kExitRequeue;
  }
  if (result.stopped_early) {
    std::snprintf(line, sizeof(line), "stopped after step %lld as asked (train.stop_after); run again to resume",
                  static_cast<long long>(result.steps_done));
  } else {
    std::snprintf(line, sizeof(line), "done: val loss %.4f (at start of this run %.4f), %.0f tokens/s%s",
                  result.final_val_loss, result.base_val_loss, result.tokens_per_second,
                  result.skipped_steps ? (", " + std::to_string(result.skipped_steps) + " step(s) skipped (not finite)").c_str() : "");
  }
  log.main(line);
  return 0;
}

}  // namespace

int runTrain(const Args& args, const CommunicatorFactory& make_communicator, const std::function<bool()>& stop_requested) {
  TrainConfig config;
  if (!parseTrainConfig(args, config)) return 0;
  int rank = -1;  // not known before the communicator exists
  try {
    return train(config, make_communicator, stop_requested, rank);
  } catch (const std::exception& e) {
    // Each failing rank leaves its error in the run's journal, for `graft status`; an error that
    // every rank raised together, rank 0 alone.
    const auto* agreed = dynamic_cast<const AgreedError*>(&e);
    if (isDirectory(config.run_dir) && (!agreed || rank <= 0)) {
      try {
        Json fields = Json::object();
        fields.set("rank", agreed ? agreed->failedRank() : rank);
        fields.set("message", e.what());
        appendJournal(config.run_dir, "error", fields);
      } catch (const std::exception&) {
        // the run directory is not writable (a full disk): the error still reaches stderr
      }
    }
    throw;
  }
}

}  // namespace graft
