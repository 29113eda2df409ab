#include "cli/options.h"

#include <iostream>

#include "util/error.h"

namespace graft {
namespace po = boost::program_options;

bool parseCommandLine(const std::vector<std::string>& args, const std::string& usage, po::options_description& options,
                      po::variables_map& vm) {
  options.add_options()("help,h", "print this help");
  try {
    po::store(po::command_line_parser(args).options(options).run(), vm);
    if (vm.count("help")) {
      std::cout << usage << "\n\n" << options << "\n";
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw InputError(std::string(e.what()) + " (see --help)");
  }
  return true;
}

}  // namespace graft
