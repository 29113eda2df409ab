// The `graft` executable: dispatches subcommands, owns the one place where errors are caught,
// printed on one line, and turned into an exit code (docs/exit-codes.md).
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "communicator.h"
#include "util/error.h"
#include "launch.h"
#include "signals.h"
#include "world.h"

namespace {

const char* const kUsage =
    "usage: graft <command> [options]   (graft <command> --help for its options)\n"
    "\n"
    "commands:\n"
    "  train      fine-tune or pretrain on N ranks: mpirun -np N graft train --config configs/X.ini\n"
    "  launch     plan and start mpirun/srun: graft launch --nodes 2 --gpus-per-node 8 -- train --config X.ini\n"
    "  prepare    text file -> HDF5 token dataset with train and validation parts\n"
    "  generate   sample text from a model (run.c-exact at --temperature 0)\n"
    "  eval       mean next-token loss of a text or of token ids, as JSON\n"
    "  tokenize   print the token ids of a text\n"
    "  inspect    what a model, checkpoint, dataset or tokenizer file holds (--json)\n"
    "  status     how far a run is: step, loss, ETA, checkpoints verified, resumes, last error (--json)\n"
    "  plot       loss curves of one or more runs: graft plot RUN_DIR... --out curves.svg|.png\n"
    "  export     write a model for other tools: --format hf | llama2c | graft\n"
    "  convert    convert a model between formats: graft convert IN OUT\n";

int dispatch(const std::string& command, const graft::Args& args) {
  if (command == "tokenize") return graft::runTokenize(args);
  if (command == "generate") return graft::runGenerate(args);
  if (command == "eval") return graft::runEval(args);
  if (command == "prepare") return graft::runPrepare(args);
  if (command == "inspect") return graft::runInspect(args);
  if (command == "status") return graft::runStatus(args);
  if (command == "plot") return graft::runPlot(args);
  if (command == "export") return graft::runExport(args);
  if (command == "convert") return graft::runConvert(args);
  if (command == "launch") return graft::runLaunch(args);
  if (command == "train") {
    graft::installStopSignals();
    return graft::runTrain(
        args,
        [](const std::string& backend, bool on_cuda) { return graft::makeCommunicator(backend, on_cuda); },
        graft::stopRequested);
  }
  std::fprintf(stderr, "graft: unknown command '%s'\n%s", command.c_str(), kUsage);
  return graft::kExitBadInput;
}

// Note [allocator]: glibc returns large freed blocks to the OS (munmap / trim) and then faults them
// in again on the next step; a training step allocates the same sizes every time, so keep them.
// Measured on the demo fine-tune: about +40% tokens/s (docs/building.md). MALLOC_* variables in the
// environment still override these.
void keepFreedMemory() {
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("GLIBC_TUNABLES")) return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // the largest value glibc accepts on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 256 << 20);
}

}  // namespace

// Note [exit after an error]: after a failure the process leaves with std::_Exit, skipping atexit
// handlers: HDF5's would try to close objects of a file whose write failed (disk full) and crash,
// turning a clean one-line error into a segfault. Everything that matters was published (temp +
// fsync + rename) or deliberately abandoned before the error reached here.
int main(int argc, char** argv) {
  keepFreedMemory();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::printf("%s", kUsage);
    return argc < 2 ? graft::kExitBadInput : graft::kExitOk;
  }
  const std::string command = argv[1];
  const graft::Args args(argv + 2, argv + argc);
  try {
    return dispatch(command, args);
  } catch (const graft::AgreedError& e) {
    // Every rank has the same error (Note [heartbeat]): rank 0 prints it, and the ranks leave
    // together with its exit code, no MPI_Abort. Not through MPI_Finalize: it ends HDF5 too, which
    // crashes on the objects of a file whose write failed (Note [exit after an error]).
    if (graft::worldRank() == 0) std::fprintf(stderr, "graft %s: error: %s\n", command.c_str(), e.what());
    std::fflush(stderr);
    graft::leaveTogether();
    std::_Exit(e.exitCode());
  } catch (const graft::InputError& e) {
    std::fprintf(stderr, "%sgraft %s: error: %s\n", graft::rankPrefix().c_str(), command.c_str(), e.what());
    graft::abortWorld(graft::kExitBadInput);
    std::_Exit(graft::kExitBadInput);  // see Note [exit after an error]
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%sgraft %s: error: %s\n", graft::rankPrefix().c_str(), command.c_str(), e.what());
    graft::abortWorld(graft::kExitFailure);
    std::_Exit(graft::kExitFailure);
  }
}
