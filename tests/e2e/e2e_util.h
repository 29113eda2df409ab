// Helpers for end-to-end tests: run the real `graft` executable (under mpirun where asked) and
// read what it wrote.
#pragma once

#include <string>
#include <vector>

#include "util/json.h"

namespace graft::e2e {

struct Result {
  int code = -1;
  std::string output;  // stdout and stderr together
};

Result run(const std::string& command);
std::string graft();                    // quoted path of the graft executable
std::string mpirun(int ranks);          // "mpirun -np N --oversubscribe --bind-to none"
// "OMPI_MCA_io=^ompio,romio321": every MPI-IO component of the installed Open MPI left out, by the
// names ompi_info gives (4.1's ROMIO is romio321, 5's romio341), for a run where MPI-IO cannot open.
std::string withoutMpiIo();
std::string data(const std::string& relative);  // path under ../shared/data
std::string freshDir(const std::string& name);  // empty directory under the test temp dir
std::string readText(const std::string& path);
// "<GRAFT_PYTHON> .../tests/e2e/hf_reference.py": the independent PyTorch reference.
std::string hfReference();
// tests/e2e/check_tensorboard.py: an independent reader of RUN_DIR/tensorboard, against metrics.jsonl
// (code 0 when every step's scalars match and nothing is duplicated).
Result checkTensorboard(const std::string& run_dir, bool classify = false);
// `graft status RUN_DIR --json`, parsed; fails the test when the command fails.
Json statusOf(const std::string& run_dir);
// The "loss" field of every line of RUN_DIR/metrics.jsonl, as printed (17 significant digits).
std::vector<std::string> losses(const std::string& run_dir);
// The JSON result line of `graft eval` in `output` (stdout and stderr together; a checkpoint read
// as a model adds a line on stderr saying it was verified): from the first '{' on.
const char* resultOf(const std::string& output);
// A resume really happened: `output` (of the second half of a split run) says it resumed from
// RUN_DIR/checkpoints/step-<step>.h5 at that step, and graft status counts one resume or more. A
// resume that silently started afresh can end bit for bit where the straight run did (same
// seed): without this, such a test passes either way.
void expectResumedFrom(const std::string& output, const std::string& run_dir, long long step);
// A tiny random-init training config (stories tokenizer dataset) as INI text.
std::string tinyConfig(const std::string& run_dir, const std::string& data_path);
// Prepares the TinyStories sample with tok512 once per test binary run; returns the .h5 path.
std::string storiesDataset();
// banking77 with 10 examples per intent (the few-shot setting), 77 classes, prepared once per process.
std::string banking77FewShot();

}  // namespace graft::e2e
