// `graft launch [options] -- <graft command>`: plans the mpirun/srun command (launch_plan.h) and
// prints it (--dry-run) or replaces this process with it.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>

#include "launch.h"
#include "launch_plan.h"
#include "util/error.h"

extern char** environ;

namespace graft {
namespace po = boost::program_options;

namespace {
std::map<std::string, std::string> environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    const char* eq = std::strchr(*e, '=');
    if (eq) env[std::string(*e, static_cast<std::size_t>(eq - *e))] = eq + 1;
  }
  return env;
}

std::string selfPath() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : "graft";
}
}  // namespace

int runLaunch(const std::vector<std::string>& args) {
  LaunchRequest request;
  bool dry_run = false;
  const auto split = std::find(args.begin(), args.end(), "--");
  const std::vector<std::string> mine(args.begin(), split);
  if (split != args.end()) request.command.assign(split + 1, args.end());
  po::options_description options("graft launch options");
  options.add_options()
      ("help,h", "print this help")
      ("nodes", po::value(&request.nodes)->default_value(1), "nodes to run on")
      ("gpus-per-node", po::value(&request.gpus_per_node)->default_value(0), "GPUs per node: one rank per GPU")
      ("ranks-per-node", po::value(&request.ranks_per_node)->default_value(0), "CPU runs: ranks per node (0 = 1)")
      ("hostfile", po::value(&request.hostfile), "Open MPI hostfile (outside Slurm, for several nodes)")
      ("dry-run", po::bool_switch(&dry_run), "print the command instead of running it");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(mine).options(options).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(std::string(e.what()) + " (see graft launch --help)");
  }
  if (vm.count("help")) {
    std::cout << "usage: graft launch [--nodes N] [--gpus-per-node G | --ranks-per-node R] [--hostfile F] [--dry-run]"
                 " -- train --config X.ini [...]\n"
                 "Starts one rank per GPU (or R CPU ranks) on each node: srun inside a Slurm allocation,\n"
                 "mpirun otherwise. Exit code: the job's.\n\n"
              << options << "\n";
    return kExitOk;
  }
  request.graft = selfPath();
  const LaunchPlan plan = planLaunch(request, environment());
  if (dry_run) {
    std::cout << shellLine(plan.argv) << "\n";
    return kExitOk;
  }
  std::fprintf(stderr, "graft launch: %d rank(s) via %s\n", plan.ranks, plan.launcher.c_str());
  std::vector<char*> argv;
  for (const auto& a : plan.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  throw InputError(plan.launcher + ": cannot start (" + std::strerror(errno) + "); is it installed and on PATH?");
}

}  // namespace graft
