// Byte-pair encoding from GPT-2 files (encoder.json + vocab.bpe, vocab.json + merges.txt) and Hugging
// Face tokenizer.json files: byte-level BPE behind GPT-2's pre-tokenizer regex, and Metaspace BPE with
// byte fallback (Llama / Mistral). Merges apply lowest rank first, leftmost on ties, which is what both
// OpenAI's encoder.py and Hugging Face tokenizers compute; results are cached per word. The files
// are read into a BpeSpec by bpe_files.cc.
#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/unicode_tables.h"
#include "util/error.h"
#include "util/json.h"

namespace graft {
namespace {

constexpr std::int64_t kMaxUnusedIds = 1 << 16;  // unused ids tolerated below the largest one
constexpr std::size_t kMaxCachedWord = 256;      // bytes; longer words (whole Metaspace segments) are not cached
constexpr std::size_t kMaxCacheEntries = 1 << 16;

void appendUtf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves and the others move to U+0100
// upwards, so that every byte is a visible character in the vocabulary files. Element b is the code
// point of byte b.
const std::array<char32_t, 256>& byteCodePoints() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool visible = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      t[b] = visible ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

// The byte a byte-level code point stands for, or -1.
int byteOfCodePoint(char32_t cp) {
  static const std::array<int, 0x144> table = [] {
    std::array<int, 0x144> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byteCodePoints()[b]] = b;
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

std::string toByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) appendUtf8(byteCodePoints()[b], out);
  return out;
}

std::string replaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t at = 0;
  for (std::size_t hit; (hit = s.find(from, at)) != std::string_view::npos; at = hit + from.size()) {
    out.append(s.substr(at, hit - at));
    out.append(to);
  }
  out.append(s.substr(at));
  return out;
}

// Calls on_piece with each match of GPT-2's pre-tokenizer pattern, in order:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Bytes that are not valid UTF-8 count as characters of the [^\s\p{L}\p{N}] class.
template <typename F>
void splitGpt2(std::string_view text, F&& on_piece) {
  std::vector<std::size_t> at;
  std::vector<CharClass> cls;
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp;
    const std::size_t len = utf8Char(text, i, &cp);
    at.push_back(i);
    cls.push_back(charClass(cp));
    i += len;
  }
  const std::size_t n = cls.size();
  at.push_back(text.size());
  auto runOf = [&](std::size_t from, CharClass c) {
    while (from < n && cls[from] == c) ++from;
    return from;
  };
  auto contraction = [&](std::size_t i) -> std::size_t {  // characters after the quote, 0 if none
    const std::string_view rest = text.substr(at[i] + 1);
    for (const char* c : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      const std::string_view suffix(c);
      if (rest.substr(0, suffix.size()) == suffix) return suffix.size();
    }
    return 0;
  };
  for (std::size_t i = 0; i < n;) {
    std::size_t end;
    const std::size_t quoted = text[at[i]] == '\'' ? contraction(i) : 0;
    if (quoted > 0) {
      end = i + 1 + quoted;
    } else if (cls[i] != CharClass::kSpace) {
      end = runOf(i, cls[i]);
    } else if (text[at[i]] == ' ' && i + 1 < n && cls[i + 1] != CharClass::kSpace) {
      end = runOf(i + 1, cls[i + 1]);  // the optional space before letters, numbers or others
    } else {
      // \s+(?!\S) leaves the last white space before a non-space to that word; \s+ takes a lone one.
      const std::size_t k = runOf(i, CharClass::kSpace);
      end = (k == n || k - i == 1) ? k : k - 1;
    }
    on_piece(text.substr(at[i], at[end] - at[i]));
    i = end;
  }
}

// Finds added tokens in text, leftmost first and the longest of those starting at one place.
class AddedTokenMatcher {
 public:
  // `pattern` is the text that stands for the token: its content, or that content normalized.
  void add(const std::string& pattern, const AddedToken& token) {
    if (pattern.empty()) return;
    auto& list = by_first_byte_[static_cast<unsigned char>(pattern[0])];
    const auto after = std::find_if(list.begin(), list.end(),
                                    [&](const Entry& e) { return e.pattern.size() < pattern.size(); });
    list.insert(after, {pattern, token});
  }

  // Calls on_text(segment, at_start) for the text between tokens (never empty; at_start when it begins
  // `text`) and on_token(id) for each token; lstrip/rstrip tokens swallow the white space beside them.
  template <typename T, typename K>
  void split(std::string_view text, T&& on_text, K&& on_token) const {
    std::size_t from = 0;
    for (std::size_t i = 0; i < text.size();) {
      const Entry* hit = nullptr;
      for (const auto& entry : by_first_byte_[static_cast<unsigned char>(text[i])])
        if (text.compare(i, entry.pattern.size(), entry.pattern) == 0) {
          hit = &entry;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      std::size_t begin = i, end = i + hit->pattern.size();
      if (hit->token.lstrip) begin = whiteSpaceBefore(text, from, begin);
      if (hit->token.rstrip) end = whiteSpaceAfter(text, end);
      if (begin > from) on_text(text.substr(from, begin - from), from == 0);
      on_token(hit->token.id);
      from = i = end;
    }
    if (from < text.size()) on_text(text.substr(from), from == 0);
  }

 private:
  static bool isWhiteSpace(std::string_view text, std::size_t at, std::size_t* len) {
    char32_t cp;
    *len = utf8Char(text, at, &cp);
    return charClass(cp) == CharClass::kSpace;
  }
  static std::size_t whiteSpaceAfter(std::string_view text, std::size_t at) {
    std::size_t len;
    while (at < text.size() && isWhiteSpace(text, at, &len)) at += len;
    return at;
  }
  static std::size_t whiteSpaceBefore(std::string_view text, std::size_t from, std::size_t at) {
    while (at > from) {
      std::size_t start = at - 1, len;
      while (start > from && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80 && at - start < 4) --start;
      if (!isWhiteSpace(text, start, &len) || start + len != at) break;
      at = start;
    }
    return at;
  }

  struct Entry {
    std::string pattern;
    AddedToken token;
  };
  std::array<std::vector<Entry>, 256> by_first_byte_;  // longest first
};

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(BpeSpec spec) : spec_(std::move(spec)) {
    std::int64_t max_id = -1;
    for (const auto& [piece, id] : spec_.vocab) max_id = std::max<std::int64_t>(max_id, id);
    for (const auto& token : spec_.added) max_id = std::max<std::int64_t>(max_id, token.id);
    if (max_id < 0) throw InputError(spec_.name + ": the vocabulary is empty");
    const auto listed = static_cast<std::int64_t>(spec_.vocab.size() + spec_.added.size());
    if (max_id + 1 - listed > kMaxUnusedIds)
      throw InputError(spec_.name + ": ids run to " + std::to_string(max_id) + " but only " + std::to_string(listed) +
                       " tokens are listed; not a plausible vocabulary");
    std::vector<const std::string*> by_id(static_cast<std::size_t>(max_id + 1), nullptr);
    for (const auto& [piece, id] : spec_.vocab) {
      if (by_id[id])
        throw InputError(spec_.name + ": pieces " + quotedPiece(*by_id[id]) + " and " + quotedPiece(piece) +
                         " both have id " + std::to_string(id));
      by_id[id] = &piece;
    }
    decoded_.resize(by_id.size());
    for (std::size_t id = 0; id < by_id.size(); ++id)
      if (by_id[id]) decoded_[id] = decodePiece(*by_id[id]);
    is_added_.assign(by_id.size(), false);
    for (const auto& token : spec_.added) {
      decoded_[token.id] = token.content;
      is_added_[token.id] = true;
      if (token.normalized) normalized_added_.add(normalize(token.content), token);
      else raw_added_.add(token.content, token);
    }
    for (int rank = 0; rank < static_cast<int>(spec_.merges.size()); ++rank) {
      const auto [a, b] = spec_.merges[rank];
      merges_[pairKey(a, b)] = {rank, spec_.vocab.at(*by_id[a] + *by_id[b])};
    }
    byte_pieces_.fill(-1);
    if (spec_.byte_fallback)
      for (int b = 0; b < 256; ++b) {
        static const char* kHex = "0123456789ABCDEF";
        const auto it = spec_.vocab.find(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">");
        if (it != spec_.vocab.end()) byte_pieces_[b] = it->second;
      }
  }

  int vocabSize() const override { return static_cast<int>(decoded_.size()); }
  int bos() const override { return spec_.bos; }
  int eos() const override { return spec_.eos; }
  bool addsBos() const override { return spec_.bos >= 0 && spec_.pre != PreTokenizer::kByteLevel; }

  std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int> ids;
    if (add_bos) appendSpecial(ids, spec_.bos, "BOS", spec_.name);
    auto token = [&](int id) { ids.push_back(id); };
    raw_added_.split(
        text,
        [&](std::string_view segment, bool at_start) {
          const std::string normalized = normalize(segment);
          normalized_added_.split(
              normalized,
              [&](std::string_view piece, bool first) { preTokenize(piece, at_start && first, ids); }, token);
        },
        token);
    if (add_eos) appendSpecial(ids, spec_.eos, "EOS", spec_.name);
    return ids;
  }

  std::string decode(int prev, int token) const override {
    if (token < 0 || token >= vocabSize()) return "";
    const std::string& text = decoded_[token];
    if (spec_.strip_first_space && (prev < 0 || prev == spec_.bos) && !is_added_[token] && !text.empty() &&
        text[0] == ' ')
      return text.substr(1);
    return text;
  }

  std::string describe() const override {
    std::string how = spec_.pre == PreTokenizer::kByteLevel   ? "byte-level"
                      : spec_.pre == PreTokenizer::kMetaspace ? "Metaspace"
                                                              : "no pre-tokenizer";
    if (spec_.byte_fallback) how += ", byte fallback";
    return spec_.kind + " " + spec_.name + " (vocab " + std::to_string(vocabSize()) + ", " + how + ")";
  }

 private:
  struct Merge {
    int rank, result;
  };
  static std::uint64_t pairKey(int a, int b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  std::string decodePiece(const std::string& piece) const {
    if (spec_.byte_level_decode) {
      std::string out;
      for (std::size_t i = 0; i < piece.size();) {
        char32_t cp;
        const std::size_t len = utf8Char(piece, i, &cp);
        const int byte = byteOfCodePoint(cp);
        if (byte >= 0) out += static_cast<char>(byte);
        else out.append(piece, i, len);  // not a byte-level character: as written, as Hugging Face does
        i += len;
      }
      return out;
    }
    const int byte = spec_.byte_fallback_decode ? byteFallbackValue(piece) : -1;
    if (byte >= 0) return std::string(1, static_cast<char>(byte));
    std::string out = piece;
    for (const auto& [from, to] : spec_.decode_replace) out = replaceAll(out, from, to);
    return out;
  }

  std::string normalize(std::string_view segment) const {
    std::string s(segment);
    for (const auto& [from, to] : spec_.normalizer) s = from.empty() ? to + s : replaceAll(s, from, to);
    return s;
  }

  void preTokenize(std::string_view text, bool at_start, std::vector<int>& ids) const {
    switch (spec_.pre) {
      case PreTokenizer::kNone:
        encodeWord(text, ids);
        return;
      case PreTokenizer::kByteLevel: {
        const std::string s = (spec_.add_prefix_space && text[0] != ' ') ? " " + std::string(text) : std::string(text);
        if (!spec_.use_regex) return encodeWord(toByteLevel(s), ids);
        splitGpt2(s, [&](std::string_view word) { encodeWord(toByteLevel(word), ids); });
        return;
      }
      case PreTokenizer::kMetaspace: {
        const std::string& rep = spec_.replacement;
        std::string s = replaceAll(text, " ", rep);
        const bool prepend = spec_.prepend == Prepend::kAlways || (spec_.prepend == Prepend::kFirst && at_start);
        if (prepend && s.compare(0, rep.size(), rep) != 0) s = rep + s;
        if (!spec_.split) return encodeWord(s, ids);
        // Each replacement character starts a word.
        std::size_t from = 0;
        for (std::size_t hit; (hit = s.find(rep, from + 1)) != std::string::npos; from = hit)
          encodeWord(std::string_view(s).substr(from, hit - from), ids);
        encodeWord(std::string_view(s).substr(from), ids);
        return;
      }
    }
  }

  void encodeWord(std::string_view word, std::vector<int>& ids) const {
    if (word.empty()) return;
    const bool cacheable = word.size() <= kMaxCachedWord;
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      const auto it = cache_.find(std::string(word));
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int> symbols = initialSymbols(word);
    mergeAll(symbols);
    ids.insert(ids.end(), symbols.begin(), symbols.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= kMaxCacheEntries) cache_.clear();
      cache_.emplace(std::string(word), std::move(symbols));
    }
  }

  // One symbol per character; a character outside the vocabulary becomes its "<0xHH>" byte pieces
  // with byte fallback, else the unknown piece (consecutive ones fused with fuse_unk), else nothing:
  // Hugging Face's rules.
  std::vector<int> initialSymbols(std::string_view word) const {
    std::vector<int> symbols;
    if (spec_.ignore_merges) {
      const auto it = spec_.vocab.find(std::string(word));
      if (it != spec_.vocab.end()) return {it->second};
    }
    bool last_unknown = false;
    std::string ch;
    for (std::size_t i = 0; i < word.size();) {
      char32_t cp;
      const std::size_t len = utf8Char(word, i, &cp);
      ch.assign(word.substr(i, len));
      i += len;
      const auto it = spec_.vocab.find(ch);
      if (it != spec_.vocab.end()) {
        symbols.push_back(it->second);
        last_unknown = false;
        continue;
      }
      if (spec_.byte_fallback) {
        bool all = true;
        for (unsigned char b : ch) all = all && byte_pieces_[b] >= 0;
        if (all) {
          for (unsigned char b : ch) symbols.push_back(byte_pieces_[b]);
          last_unknown = false;
          continue;
        }
      }
      if (spec_.unk >= 0 && !(spec_.fuse_unk && last_unknown)) {
        symbols.push_back(spec_.unk);
        last_unknown = true;
      }
    }
    return symbols;
  }

  // Applies merges to adjacent symbols, lowest rank first and leftmost among equals, over a linked
  // list with a queue of candidate pairs: O(n log n) even for a whole Metaspace segment.
  void mergeAll(std::vector<int>& symbols) const {
    const int n = static_cast<int>(symbols.size());
    if (n < 2) return;
    struct Candidate {
      int rank, pos;
      bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<int> prev(n), next(n);
    std::priority_queue<Candidate> queue;
    auto consider = [&](int left, int right) {
      if (left < 0 || right >= n) return;
      const auto it = merges_.find(pairKey(symbols[left], symbols[right]));
      if (it != merges_.end()) queue.push({it->second.rank, left});
    };
    for (int i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1;
    }
    for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      const int right = next[c.pos];
      if (symbols[c.pos] < 0 || right >= n) continue;
      const auto it = merges_.find(pairKey(symbols[c.pos], symbols[right]));
      if (it == merges_.end() || it->second.rank != c.rank) continue;  // the pair changed since queued
      symbols[c.pos] = it->second.result;
      symbols[right] = -1;
      next[c.pos] = next[right];
      if (next[c.pos] < n) prev[next[c.pos]] = c.pos;
      consider(prev[c.pos], c.pos);
      consider(c.pos, next[c.pos]);
    }
    symbols.erase(std::remove(symbols.begin(), symbols.end(), -1), symbols.end());
  }

  BpeSpec spec_;
  std::vector<std::string> decoded_;  // by id: the bytes each id stands for
  std::vector<bool> is_added_;
  AddedTokenMatcher raw_added_, normalized_added_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<int, 256> byte_pieces_{};
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> makeBpeTokenizer(BpeSpec spec) { return std::make_unique<BpeTokenizer>(std::move(spec)); }

}  // namespace graft
