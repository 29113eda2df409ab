// Tokenizers. Ids 0, 1, 2 are <unk>, BOS and EOS in every tokenizer graft ships, and ids 3..258
// are the 256 byte-fallback pieces, as in llama2.c's SentencePiece export.
//
//   loadTokenizer("path/tok512.bin")  llama2.c / SentencePiece BPE (see ../shared/data/llama2c/FORMAT.md)
//   loadTokenizer("bytes")            byte-level: id = byte + 3, vocab 259, for corpora without a
//                                     trained tokenizer (the quick-start demo uses it)
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace graft {

class Tokenizer {
 public:
  static constexpr int kUnk = 0, kBos = 1, kEos = 2;
  virtual ~Tokenizer() = default;
  virtual int vocabSize() const = 0;
  virtual std::vector<int> encode(const std::string& text, bool bos, bool eos) const = 0;
  // The bytes token `token` stands for when it follows `prev`, as llama2.c's run.c decodes
  // (a piece after BOS loses one leading space; "<0xHH>" pieces become the byte).
  virtual std::string decode(int prev, int token) const = 0;
  // What run.c's safe_printf would print of a decoded piece (drops lone non-printable bytes).
  static std::string printable(const std::string& piece);
  virtual std::string describe() const = 0;
};

std::unique_ptr<Tokenizer> loadTokenizer(const std::string& spec);

}  // namespace graft
