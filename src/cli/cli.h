// The `graft` subcommands. Each takes the arguments after its name, parses them with
// Boost.Program_options (every option declared once, with its help text), and returns an exit code.
// Errors are thrown (InputError for bad input, exit code 2); launcher/main.cc prints them.
#pragma once

#include <string>
#include <vector>

namespace graft {

class Communicator;
using Args = std::vector<std::string>;

int runTokenize(const Args& args);
int runGenerate(const Args& args);
int runEval(const Args& args);
int runPrepare(const Args& args);
// Collective: every rank of `comm` calls it.
int runTrain(const Args& args, Communicator& comm);

}  // namespace graft
