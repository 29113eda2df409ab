// Plans that every rank computes for itself (gradient buckets, shards) must agree: each is hashed,
// and the hashes are compared across ranks at start-up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "communicator.h"

namespace graft {

// FNV-1a over a sequence of strings (each followed by a separator, so "ab"+"c" != "a"+"bc").
class PlanHash {
 public:
  void add(const std::string& s) {
    for (unsigned char c : s) h_ = (h_ ^ c) * 1099511628211ull;
    h_ = (h_ ^ 0xff) * 1099511628211ull;
  }
  std::uint64_t value() const { return h_; }

 private:
  std::uint64_t h_ = 14695981039346656037ull;
};

// Collective. Returns when every rank has the same `hash`. Otherwise every rank compares its
// `lines` (one per parameter) with rank 0's and all throw the same Error naming the first
// parameter where any rank differs: "<what> differ between ranks, first at parameter #i: rank 0
// has '...', rank r has '...' (<hint>)"; `same_lines_hint` when the lines agree but hashes do not.
void verifyPlanAcrossRanks(Communicator& comm, std::uint64_t hash, const std::vector<std::string>& lines,
                           const std::string& what, const std::string& hint, const std::string& same_lines_hint,
                           const char* tag);

}  // namespace graft
