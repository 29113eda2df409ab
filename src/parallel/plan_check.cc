#include "parallel/plan_check.h"

#include <algorithm>
#include <climits>

#include "util/error.h"

namespace graft {

void verifyPlanAcrossRanks(Communicator& comm, std::uint64_t hash, const std::vector<std::string>& lines,
                           const std::string& what, const std::string& hint, const std::string& same_lines_hint,
                           const char* tag) {
  std::int64_t both[2] = {static_cast<std::int64_t>(hash), -static_cast<std::int64_t>(hash)};
  comm.allReduce(both, 2, ReduceOp::Max, tag);
  if (both[0] == static_cast<std::int64_t>(hash) && -both[1] == static_cast<std::int64_t>(hash)) return;
  // Plans differ somewhere: every rank compares with rank 0's, line by line, and all agree on the
  // first parameter where any rank differs, so every rank's error names the same parameter.
  std::string text;
  for (const auto& line : lines) text += line + "\n";
  std::int64_t length = static_cast<std::int64_t>(text.size());
  comm.broadcast(&length, 1, 0, tag);
  std::string root = comm.rank() == 0 ? text : std::string(static_cast<std::size_t>(length), '\0');
  comm.broadcastBytes(root.data(), root.size(), 0, tag);
  std::vector<std::string> root_lines;
  for (std::size_t at = 0, end; (end = root.find('\n', at)) != std::string::npos; at = end + 1)
    root_lines.push_back(root.substr(at, end - at));
  std::int64_t first = INT64_MAX - 1;
  for (std::size_t i = 0; i < std::max(root_lines.size(), lines.size()); ++i)
    if (i >= root_lines.size() || i >= lines.size() || root_lines[i] != lines[i]) {
      first = static_cast<std::int64_t>(i);
      break;
    }
  comm.allReduce(&first, 1, ReduceOp::Min, tag);
  if (first == INT64_MAX - 1) throw Error(what + " differ between ranks although their parameters agree: " + same_lines_hint);
  const auto at = static_cast<std::size_t>(first);
  auto lineOr = [](const std::vector<std::string>& from, std::size_t i) {
    return i < from.size() ? "'" + from[i] + "'" : std::string("no such parameter");
  };
  throw Error(what + " differ between ranks, first at parameter #" + std::to_string(first) + ": rank 0 has " +
              lineOr(root_lines, at) + ", rank " + std::to_string(comm.rank()) + " has " + lineOr(lines, at) + " (" +
              hint + ")");
}

}  // namespace graft
