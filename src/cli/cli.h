// The `graft` subcommands. Each takes the arguments after its name, parses them with
// Boost.Program_options (every option declared once, with its help text), and returns an exit code.
// Errors are thrown (InputError for bad input, exit code 2); launcher/main.cc prints them.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace graft {

class Communicator;
using Args = std::vector<std::string>;

int runTokenize(const Args& args);
int runGenerate(const Args& args);
int runEval(const Args& args);
int runPrepare(const Args& args);
int runExport(const Args& args);
int runConvert(const Args& args);
int runInspect(const Args& args);
int runPlot(const Args& args);
int runStatus(const Args& args);
// Makes the communicator for dist.backend ("auto" included; resolveBackend in communicator.h) of a
// run that trains on CUDA (`on_cuda`) or on the CPU.
using CommunicatorFactory = std::function<std::unique_ptr<Communicator>(const std::string& backend, bool on_cuda)>;
// Every rank calls it. The config is parsed before any collective, so a config error is reported
// by each rank on its own; the communicator is made afterwards from [dist] backend.
// `stop_requested` is polled once per step (signals); a stopped run exits with kExitRequeue.
int runTrain(const Args& args, const CommunicatorFactory& make_communicator, const std::function<bool()>& stop_requested);

}  // namespace graft
