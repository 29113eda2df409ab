// Shared command-line parsing for subcommands: --help prints usage + options and returns false.
#pragma once

#include <boost/program_options.hpp>
#include <string>
#include <vector>

namespace graft {

// Parses `args` against `options`; returns false after printing help for --help.
// Unknown options and bad values throw InputError naming the option.
bool parseCommandLine(const std::vector<std::string>& args, const std::string& usage,
                      boost::program_options::options_description& options,
                      boost::program_options::variables_map& vm);

}  // namespace graft
