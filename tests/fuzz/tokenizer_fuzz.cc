// libFuzzer target: the tokenizer loaders (src/tokenizer/tokenizer.cc, bpe_tokenizer.cc) on hostile files.
// The first byte picks the format, the rest is the file; where a format takes two files they are
// split at the first NUL byte:
//   0 llama2.c .bin   1 GPT-2 vocabulary JSON + merges   2 tokenizer.json   3 tokenizer.json + tokenizer_config.json
// A load may only fail with a one-line graft::InputError naming the file. A tokenizer that loads must
// encode a fixed text into ids below vocabSize() and decode any id, in or out of range, without
// throwing.
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace {

void check(bool ok, const char* what, const std::string& detail = "") {
  if (ok) return;
  std::fprintf(stderr, "fuzz check failed: %s %s\n", what, detail.c_str());
  std::abort();
}

// Plain and accented text, contractions, runs of spaces, CJK, an emoji, special-token spellings, invalid UTF-8.
const std::string kText =
    "Hello world! It's 12 o'clock.  Caf\u00e9 \u4e2d\u6587 \U0001F642<|endoftext|><s></s><mask>\n\t  \xff\xc3 end";

std::unique_ptr<graft::Tokenizer> load(int format, const std::string& body) {
  const std::size_t nul = body.find('\0');
  const std::string first = body.substr(0, nul);
  const std::string second = nul == std::string::npos ? "" : body.substr(nul + 1);
  switch (format) {
    case 0: return graft::llama2cTokenizerFromBytes(body, "tok.bin");
    case 1: return graft::gpt2TokenizerFromBytes(first, "vocab.json", second, "merges.txt");
    case 2: return graft::hfTokenizerFromBytes(body, "tokenizer.json");
    default: return graft::hfTokenizerFromBytes(first, "tokenizer.json", second, "tokenizer_config.json");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int format = data[0] % 4;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::unique_ptr<graft::Tokenizer> tok;
  try {
    tok = load(format, body);
  } catch (const graft::InputError& e) {
    const std::string message = e.what();
    check(message.find('\n') == std::string::npos, "one-line error", message);
    check(message.rfind("tok.bin:", 0) == 0 || message.rfind("vocab.json:", 0) == 0 ||
              message.rfind("merges.txt:", 0) == 0 || message.rfind("tokenizer.json:", 0) == 0 ||
              message.rfind("tokenizer_config.json:", 0) == 0,
          "error names the file", message);
    return 0;
  }
  const int vocab = tok->vocabSize();
  check(vocab > 0, "vocabSize > 0");
  check(tok->bos() < vocab && tok->eos() < vocab, "bos/eos below vocabSize");
  // bos/eos are asked for only where they exist, so nothing here may throw.
  const auto ids = tok->encode(kText, tok->bos() >= 0, tok->eos() >= 0);
  for (int id : ids) check(id >= 0 && id < vocab, "id in range", std::to_string(id));
  tok->decodeAll(ids);
  for (int id : {-1, 0, vocab - 1, vocab, INT_MAX, INT_MIN}) tok->decode(id, id);
  tok->describe();
  return 0;
}
