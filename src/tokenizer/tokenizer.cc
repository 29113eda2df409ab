// The Tokenizer base, the "bytes" and llama2.c tokenizers, and loadTokenizer's choice of format.
// BPE from GPT-2 / Hugging Face files is in bpe_tokenizer.cc, SentencePiece in sentencepiece_tokenizer.cc.
#include "tokenizer/tokenizer.h"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <unordered_map>

#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {

int byteFallbackValue(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

std::string quotedPiece(std::string_view piece) {
  constexpr std::size_t kMaxShown = 40;
  std::string out = "\"";
  for (std::size_t i = 0; i < piece.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(piece[i]);
    if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (piece.size() > kMaxShown) out += "...";
  return out + "\"";
}

void appendSpecial(std::vector<int>& ids, int id, const char* what, const std::string& name) {
  if (id < 0) throw InputError(name + ": this tokenizer has no " + what + " token");
  ids.push_back(id);
}

namespace {

// The fixed ids of the two tokenizers in this file (llama2.c's SentencePiece export and "bytes").
constexpr int kBos = 1, kEos = 2;

std::string byteToken(unsigned char byte) { return std::string(1, static_cast<char>(byte)); }

class ByteTokenizer final : public Tokenizer {
 public:
  int vocabSize() const override { return 259; }
  int bos() const override { return kBos; }
  int eos() const override { return kEos; }
  std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int> ids;
    ids.reserve(text.size() + 2);
    if (add_bos) ids.push_back(kBos);
    for (unsigned char c : text) ids.push_back(c + 3);
    if (add_eos) ids.push_back(kEos);
    return ids;
  }
  std::string decode(int, int token) const override {
    if (token >= 3 && token < 259) return byteToken(static_cast<unsigned char>(token - 3));
    return "";
  }
  std::string describe() const override { return "bytes (vocab 259)"; }
};

// SentencePiece BPE as exported by llama2.c: scores are merge priorities.
class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::string_view bytes, const std::string& name) : name_(name) {
    std::size_t at = 0;
    auto take = [&](void* out, std::size_t n, const char* what) {
      if (n > bytes.size() - at)
        throw InputError(name + ": truncated tokenizer file while reading " + what + " of piece " +
                         std::to_string(pieces_.size()));
      std::memcpy(out, bytes.data() + at, n);
      at += n;
    };
    std::int32_t max_len = 0;
    take(&max_len, 4, "max_token_length");
    if (max_len <= 0 || max_len > 4096)
      throw InputError(name + ": max_token_length " + std::to_string(max_len) +
                       " is not plausible: not a llama2.c tokenizer (graft also reads a SentencePiece .model, "
                       "tokenizer.json, encoder.json or vocab.json with vocab.bpe or merges.txt, or a folder of them)");
    while (at < bytes.size()) {
      float score = 0;
      std::int32_t len = 0;
      take(&score, 4, "score");
      take(&len, 4, "length");
      if (len < 0 || len > max_len)
        throw InputError(name + ": piece " + std::to_string(pieces_.size()) + " has length " +
                         std::to_string(len) + " (max_token_length is " + std::to_string(max_len) + ")");
      std::string piece(static_cast<std::size_t>(len), '\0');
      take(piece.data(), piece.size(), "bytes");
      pieces_.push_back(piece);
      scores_.push_back(score);
    }
    if (pieces_.size() < 259)
      throw InputError(name + ": only " + std::to_string(pieces_.size()) +
                       " pieces; a llama2.c tokenizer has <unk>, BOS, EOS and 256 byte pieces first");
    for (int id = static_cast<int>(pieces_.size()) - 1; id >= 0; --id) lookup_[pieces_[id]] = id;
  }

  int vocabSize() const override { return static_cast<int>(pieces_.size()); }
  int bos() const override { return kBos; }
  int eos() const override { return kEos; }

  std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int> ids;
    if (add_bos) ids.push_back(kBos);
    std::vector<int> work;
    if (!text.empty()) {
      const int space = find(" ");
      if (space >= 0) work.push_back(space);  // SentencePiece's dummy prefix
    }
    for (std::size_t i = 0; i < text.size();) {
      std::size_t len = 1;
      const unsigned char lead = static_cast<unsigned char>(text[i]);
      if (lead >= 0xC0) len = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
      while (i + len > text.size()) --len;
      // Continuation bytes must really continue; otherwise fall back to one byte.
      for (std::size_t k = 1; k < len; ++k)
        if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) { len = k; break; }
      const int id = find(text.substr(i, len));
      if (id >= 0) {
        work.push_back(id);
      } else {
        for (std::size_t k = 0; k < len; ++k) work.push_back(static_cast<unsigned char>(text[i + k]) + 3);
      }
      i += len;
    }
    mergePairs(work);
    ids.insert(ids.end(), work.begin(), work.end());
    if (add_eos) ids.push_back(kEos);
    return ids;
  }

  std::string decode(int prev, int token) const override {
    if (token < 0 || token >= vocabSize()) return "";
    std::string piece = pieces_[token];
    if ((prev == kBos || prev < 0) && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    const int byte = byteFallbackValue(piece);
    if (byte >= 0) return byteToken(static_cast<unsigned char>(byte));
    return piece;
  }

  std::string describe() const override {
    return "llama2.c BPE " + name_ + " (vocab " + std::to_string(vocabSize()) + ")";
  }

 private:
  int find(const std::string& piece) const {
    const auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  // Repeatedly merge the adjacent pair with the best score (first one on ties), as run.c does.
  void mergePairs(std::vector<int>& ids) const {
    while (ids.size() > 1) {
      float best_score = -1e10f;
      int best_id = -1;
      std::size_t best_at = 0;
      for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
        const int id = find(pieces_[ids[i]] + pieces_[ids[i + 1]]);
        if (id >= 0 && scores_[id] > best_score) {
          best_score = scores_[id];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id < 0) return;
      ids[best_at] = best_id;
      ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
    }
  }

  std::string name_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
};

std::string join(const std::string& dir, const char* file) { return dir + "/" + file; }

std::string baseName(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}


std::unique_ptr<Tokenizer> loadGpt2(const std::string& vocab_path, const std::string& merges_path) {
  return gpt2TokenizerFromBytes(readFile(vocab_path), vocab_path, readFile(merges_path), merges_path);
}

std::unique_ptr<Tokenizer> loadHf(const std::string& path) {
  // bos_token / eos_token live in tokenizer_config.json beside tokenizer.json, when there is one.
  const std::string config = join(parentDirectory(path), "tokenizer_config.json");
  if (fileExists(config) && !isDirectory(config)) return hfTokenizerFromBytes(readFile(path), path, readFile(config), config);
  return hfTokenizerFromBytes(readFile(path), path);
}

// The first of `candidates` beside `path`, or "" when none is there.
std::string sibling(const std::string& path, std::initializer_list<const char*> candidates) {
  for (const char* name : candidates) {
    const std::string p = join(parentDirectory(path), name);
    if (fileExists(p) && !isDirectory(p)) return p;
  }
  return "";
}

std::unique_ptr<Tokenizer> loadFolder(const std::string& dir) {
  auto has = [&](const char* name) { return fileExists(join(dir, name)); };
  if (has("tokenizer.json")) return loadHf(join(dir, "tokenizer.json"));
  if (has("vocab.json") && has("merges.txt")) return loadGpt2(join(dir, "vocab.json"), join(dir, "merges.txt"));
  if (has("tokenizer.model"))
    return sentencePieceTokenizerFromBytes(readFile(join(dir, "tokenizer.model")), join(dir, "tokenizer.model"));
  if (has("encoder.json") && has("vocab.bpe")) return loadGpt2(join(dir, "encoder.json"), join(dir, "vocab.bpe"));
  throw InputError(dir + ": no tokenizer in this folder (looked for tokenizer.json, vocab.json + merges.txt, "
                   "tokenizer.model, encoder.json + vocab.bpe)");
}

std::unique_ptr<Tokenizer> loadFile(const std::string& path) {
  const std::string base = baseName(path);
  if (endsWith(base, ".model")) return sentencePieceTokenizerFromBytes(readFile(path), path);
  const std::string bytes = readFile(path);
  if (base == "vocab.bpe" || base == "merges.txt" || bytes.compare(0, 8, "#version") == 0) {
    const std::string vocab = base == "merges.txt" ? sibling(path, {"vocab.json", "encoder.json"})
                                                   : sibling(path, {"encoder.json", "vocab.json"});
    if (vocab.empty())
      throw InputError(path + ": BPE merges without a vocabulary beside them (looked for encoder.json, vocab.json)");
    return gpt2TokenizerFromBytes(readFile(vocab), vocab, bytes, path);
  }
  if (base == "encoder.json" || base == "vocab.json") {
    const std::string merges = base == "vocab.json" ? sibling(path, {"merges.txt", "vocab.bpe"})
                                                    : sibling(path, {"vocab.bpe", "merges.txt"});
    if (merges.empty())
      throw InputError(path + ": BPE vocabulary without merges beside it (looked for vocab.bpe, merges.txt)");
    return gpt2TokenizerFromBytes(bytes, path, readFile(merges), merges);
  }
  const std::size_t first = bytes.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && bytes[first] == '{') {
    const std::string config = sibling(path, {"tokenizer_config.json"});
    if (!config.empty()) return hfTokenizerFromBytes(bytes, path, readFile(config), config);
    return hfTokenizerFromBytes(bytes, path);
  }
  return llama2cTokenizerFromBytes(bytes, path);
}

}  // namespace

std::string Tokenizer::decodeAll(const std::vector<int>& ids) const {
  std::string text;
  int prev = bos();
  for (int id : ids) {
    text += decode(prev, id);
    prev = id;
  }
  return text;
}

std::string Tokenizer::printable(const std::string& piece) {
  if (piece.size() == 1) {
    const unsigned char c = static_cast<unsigned char>(piece[0]);
    if (!(std::isprint(c) || std::isspace(c))) return "";
  }
  return piece;
}

std::unique_ptr<Tokenizer> llama2cTokenizerFromBytes(std::string_view bytes, const std::string& name) {
  return std::make_unique<Llama2cTokenizer>(bytes, name);
}

std::unique_ptr<Tokenizer> loadTokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec.empty())
    throw InputError("no tokenizer given (expected 'bytes', a tokenizer file, or a folder holding one)");
  if (!fileExists(spec)) throw InputError(spec + ": tokenizer file not found");
  return isDirectory(spec) ? loadFolder(spec) : loadFile(spec);
}

}  // namespace graft
