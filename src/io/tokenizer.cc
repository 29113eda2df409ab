#include "io/tokenizer.h"

#include <cctype>
#include <cstdint>
#include <cstring>
#include <unordered_map>

#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

std::string byteToken(unsigned char byte) { return std::string(1, static_cast<char>(byte)); }

// Parses "<0xHH>" into a byte; returns -1 when the piece is not a byte-fallback piece.
int byteFallback(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(piece[3]), lo = hex(piece[4]);
  return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

class ByteTokenizer final : public Tokenizer {
 public:
  int vocabSize() const override { return 259; }
  std::vector<int> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int> ids;
    ids.reserve(text.size() + 2);
    if (bos) ids.push_back(kBos);
    for (unsigned char c : text) ids.push_back(c + 3);
    if (eos) ids.push_back(kEos);
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
  explicit Llama2cTokenizer(const std::string& path) : path_(path) {
    const std::string bytes = readFile(path);
    std::size_t at = 0;
    auto take = [&](void* out, std::size_t n, const char* what) {
      if (at + n > bytes.size())
        throw InputError(path + ": truncated tokenizer file while reading " + what + " of piece " +
                         std::to_string(pieces_.size()));
      std::memcpy(out, bytes.data() + at, n);
      at += n;
    };
    std::int32_t max_len = 0;
    take(&max_len, 4, "max_token_length");
    if (max_len <= 0 || max_len > 4096)
      throw InputError(path + ": max_token_length " + std::to_string(max_len) +
                       " is not plausible; is this a llama2.c tokenizer file?");
    while (at < bytes.size()) {
      float score = 0;
      std::int32_t len = 0;
      take(&score, 4, "score");
      take(&len, 4, "length");
      if (len < 0 || len > max_len)
        throw InputError(path + ": piece " + std::to_string(pieces_.size()) + " has length " +
                         std::to_string(len) + " (max_token_length is " + std::to_string(max_len) + ")");
      std::string piece(static_cast<std::size_t>(len), '\0');
      take(piece.data(), piece.size(), "bytes");
      pieces_.push_back(piece);
      scores_.push_back(score);
    }
    if (pieces_.size() < 259)
      throw InputError(path + ": only " + std::to_string(pieces_.size()) +
                       " pieces; a llama2.c tokenizer has <unk>, BOS, EOS and 256 byte pieces first");
    for (int id = static_cast<int>(pieces_.size()) - 1; id >= 0; --id) lookup_[pieces_[id]] = id;
  }

  int vocabSize() const override { return static_cast<int>(pieces_.size()); }

  std::vector<int> encode(const std::string& text, bool bos, bool eos) const override {
    std::vector<int> ids;
    if (bos) ids.push_back(kBos);
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
    if (eos) ids.push_back(kEos);
    return ids;
  }

  std::string decode(int prev, int token) const override {
    if (token < 0 || token >= vocabSize()) return "";
    std::string piece = pieces_[token];
    if (prev == kBos && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    const int byte = byteFallback(piece);
    if (byte >= 0) return byteToken(static_cast<unsigned char>(byte));
    return piece;
  }

  std::string describe() const override {
    return "llama2.c BPE " + path_ + " (vocab " + std::to_string(vocabSize()) + ")";
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

  std::string path_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> lookup_;
};

}  // namespace

std::string Tokenizer::printable(const std::string& piece) {
  if (piece.size() == 1) {
    const unsigned char c = static_cast<unsigned char>(piece[0]);
    if (!(std::isprint(c) || std::isspace(c))) return "";
  }
  return piece;
}

std::unique_ptr<Tokenizer> loadTokenizer(const std::string& spec) {
  if (spec == "bytes") return std::make_unique<ByteTokenizer>();
  if (spec.empty()) throw InputError("no tokenizer given (a llama2.c tokenizer .bin file, or 'bytes')");
  if (!fileExists(spec)) throw InputError(spec + ": tokenizer file not found");
  return std::make_unique<Llama2cTokenizer>(spec);
}

}  // namespace graft
