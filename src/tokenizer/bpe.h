// Byte-pair encoding, shared by the tokenizer (bpe_tokenizer.cc) and the readers of its files
// (bpe_files.cc): what the files say, as a BpeSpec, and the tokenizer that runs one. Internal to
// tokenizer/; the public entry points are in tokenizer/tokenizer.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace graft {

constexpr std::int64_t kMaxId = 1 << 24;  // a vocabulary past this is not plausible

struct AddedToken {
  std::string content;
  int id = -1;
  bool lstrip = false, rstrip = false;
  bool normalized = false;  // matched in normalized text, as the normalizer rewrites its content
};

enum class PreTokenizer { kNone, kByteLevel, kMetaspace };
enum class Prepend { kNever, kFirst, kAlways };

// What the files say; BpeTokenizer runs it.
struct BpeSpec {
  std::string name;  // the file(s), for errors and describe()
  std::string kind;  // "GPT-2 BPE", "Hugging Face BPE"
  std::unordered_map<std::string, int> vocab;
  std::vector<std::pair<int, int>> merges;  // by rank
  std::vector<AddedToken> added;
  std::vector<std::pair<std::string, std::string>> normalizer;  // prepend (first empty) or replace first by second
  PreTokenizer pre = PreTokenizer::kNone;
  bool add_prefix_space = false, use_regex = true;  // ByteLevel
  std::string replacement;                          // Metaspace
  Prepend prepend = Prepend::kNever;
  bool split = false;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int unk = -1, bos = -1, eos = -1;
  // Decoding.
  bool byte_level_decode = false, byte_fallback_decode = false, strip_first_space = false;
  std::vector<std::pair<std::string, std::string>> decode_replace;
};

// The tokenizer that runs `spec` (bpe_tokenizer.cc).
std::unique_ptr<Tokenizer> makeBpeTokenizer(BpeSpec spec);

}  // namespace graft
