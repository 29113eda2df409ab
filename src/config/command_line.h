// Shared command-line parsing for subcommands: --help prints usage + options and returns false.
#pragma once

#include <boost/program_options.hpp>
#include <string>
#include <vector>

namespace graft {

// The message of a Boost.Program_options error. Boost 1.74 substitutes %value% into its template in
// a loop that never ends when the value itself holds "%value%"; the value is dropped from the
// template (callers that want it quote it themselves).
std::string optionErrorMessage(boost::program_options::error& err);

// Parses `args` against `options` (and `positional`, when given); returns false after printing
// help for --help. Unknown options and bad values throw InputError naming the option.
bool parseCommandLine(const std::vector<std::string>& args, const std::string& usage,
                      boost::program_options::options_description& options,
                      boost::program_options::variables_map& vm,
                      const boost::program_options::positional_options_description* positional = nullptr);

}  // namespace graft
