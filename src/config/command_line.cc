#include "config/command_line.h"

#include <iostream>

#include "util/error.h"

namespace graft {
namespace po = boost::program_options;

std::string optionErrorMessage(po::error& err) {
  if (auto* named = dynamic_cast<po::error_with_option_name*>(&err)) named->set_substitute("value", "");
  return err.what();
}

bool parseCommandLine(const std::vector<std::string>& args, const std::string& usage, po::options_description& options,
                      po::variables_map& vm, const po::positional_options_description* positional) {
  options.add_options()("help,h", "print this help");
  try {
    auto parser = po::command_line_parser(args).options(options);
    if (positional) parser.positional(*positional);
    po::store(parser.run(), vm);
    if (vm.count("help")) {
      std::cout << usage << "\n\n" << options << "\n";
      return false;
    }
    po::notify(vm);
  } catch (po::error& e) {
    throw InputError(optionErrorMessage(e) + " (see --help)");
  }
  return true;
}

}  // namespace graft
