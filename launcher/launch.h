#pragma once
#include <string>
#include <vector>
namespace graft {
// `graft launch`: see launch_plan.h. Returns only for --help, --dry-run or an error.
int runLaunch(const std::vector<std::string>& args);
}  // namespace graft
