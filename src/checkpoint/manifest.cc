#include "checkpoint/manifest.h"

#include <set>

#include "util/error.h"

namespace graft {
namespace {

// A decimal number of at most `max`, the whole of `word`.
bool parseDecimal(const std::string& word, std::uint64_t max, std::uint64_t& out) {
  if (word.empty() || word.size() > 20) return false;
  std::uint64_t v = 0;
  for (char c : word) {
    if (c < '0' || c > '9') return false;
    const std::uint64_t digit = static_cast<std::uint64_t>(c - '0');
    if (v > (max - digit) / 10) return false;
    v = v * 10 + digit;
  }
  out = v;
  return true;
}

}  // namespace

std::string formatManifestLine(const ManifestEntry& e) {
  return e.object + " " + std::to_string(e.crc32) + " " + std::to_string(e.bytes) + "\n";
}

std::vector<ManifestEntry> parseManifest(const std::string& text, const std::string& what) {
  std::vector<ManifestEntry> entries;
  std::set<std::string> seen;
  std::size_t start = 0;
  int line_no = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    ++line_no;
    auto bad = [&](const std::string& why) {
      return InputError(what + ": manifest line " + std::to_string(line_no) + ": " + why);
    };
    const auto first = line.find(' '), second = first == std::string::npos ? first : line.find(' ', first + 1);
    if (second == std::string::npos || line.find(' ', second + 1) != std::string::npos)
      throw bad("expected 'object crc32 bytes'");
    ManifestEntry e;
    e.object = line.substr(0, first);
    std::uint64_t crc = 0;
    if (e.object.size() < 2 || e.object[0] != '/') throw bad("object name must be an absolute HDF5 path");
    for (unsigned char c : e.object)
      if (c < 0x21 || c > 0x7e) throw bad("object name holds a non-printable byte");
    if (!parseDecimal(line.substr(first + 1, second - first - 1), 0xFFFFFFFFull, crc)) throw bad("bad crc32");
    if (!parseDecimal(line.substr(second + 1), std::uint64_t{1} << 50, e.bytes)) throw bad("bad byte count");
    e.crc32 = static_cast<std::uint32_t>(crc);
    if (!seen.insert(e.object).second) throw bad("object " + e.object + " listed twice");
    entries.push_back(std::move(e));
  }
  if (entries.empty()) throw InputError(what + ": empty manifest");
  return entries;
}

}  // namespace graft
