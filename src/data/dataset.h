// Token datasets in HDF5 (layout in docs/data-format.md):
//   /            attrs format="graft-tokens", version=1, tokenizer, vocab_size
//   /<split>/tokens       int32 [n]   documents back to back, each starting with BOS
//   /<split>/doc_offsets  int64 [d+1] where each document starts in tokens
// with <split> = train | val. A sample is a window of seq_len + 1 tokens starting at
// i * seq_len (inputs are its first seq_len tokens, targets its last seq_len).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace graft {

struct PrepareStats {
  std::int64_t train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
};

// Reads `input` (documents separated by blank lines), tokenizes each document with BOS first,
// assigns it to val with probability `val_fraction` (seeded, at least one val document when
// val_fraction > 0 and there are two or more), and writes `output` via a temporary file + rename.
// `progress(bytes_read, bytes_total)` is called now and then.
PrepareStats prepareDataset(const std::string& input, const Tokenizer& tokenizer, const std::string& output,
                            double val_fraction, std::uint64_t seed,
                            const std::function<void(std::int64_t, std::int64_t)>& progress);

class TokenDataset {
 public:
  // Throws InputError naming the file when it is not a graft token dataset or lacks `split`.
  TokenDataset(const std::string& path, const std::string& split, int seq_len);
  std::int64_t numSamples() const;
  std::int64_t numTokens() const { return static_cast<std::int64_t>(tokens_.size()); }
  int vocabSize() const { return vocab_size_; }
  // Writes seq_len + 1 tokens of sample `index` to `out`.
  void sample(std::int64_t index, std::int64_t* out) const;
  int seqLen() const { return seq_len_; }

 private:
  std::vector<std::int32_t> tokens_;
  int seq_len_;
  int vocab_size_;
};

}  // namespace graft
