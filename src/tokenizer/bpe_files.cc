// Reading byte-pair encoding files into a BpeSpec (tokenizer/bpe.h): GPT-2's encoder.json +
// vocab.bpe or vocab.json + merges.txt, and Hugging Face tokenizer.json (with
// tokenizer_config.json's special tokens). A component of tokenizer.json that graft does not
// implement is an InputError naming it: tokenizing differently from the model's training would go
// unnoticed otherwise.
#include <string>
#include <string_view>

#include "tokenizer/bpe.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"
#include "util/json.h"

namespace graft {
namespace {

void readVocab(const Json& vocab, const std::string& what, BpeSpec& spec) {
  for (const auto& [piece, value] : vocab.asObject(what)) {
    const std::string entry = what + "[" + quotedPiece(piece) + "]";
    const std::int64_t id = value.asInt(entry);
    if (id < 0 || id >= kMaxId) throw InputError(entry + ": id " + std::to_string(id) + " is out of range");
    if (!spec.vocab.emplace(piece, static_cast<int>(id)).second) throw InputError(entry + ": listed twice");
  }
}

int pieceId(const BpeSpec& spec, const std::string& piece, const std::string& where, const std::string& merge) {
  const auto it = spec.vocab.find(piece);
  if (it == spec.vocab.end())
    throw InputError(where + ": merge " + quotedPiece(merge) + " needs " + quotedPiece(piece) +
                     ", which is not in the vocabulary");
  return it->second;
}

void addMerge(BpeSpec& spec, const std::string& a, const std::string& b, const std::string& where) {
  if (a.empty() || b.empty()) throw InputError(where + ": a merge needs two non-empty pieces");
  const std::string merge = a + " " + b;
  const int left = pieceId(spec, a, where, merge), right = pieceId(spec, b, where, merge);
  pieceId(spec, a + b, where, merge);
  spec.merges.emplace_back(left, right);
}

// vocab.bpe / merges.txt: one "a b" pair per line; a "#version" line is a header.
void readMergesText(std::string_view text, const std::string& name, BpeSpec& spec) {
  std::size_t line_no = 0;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t end = text.find('\n', at);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(at, end - at);
    at = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || line.substr(0, 8) == "#version") continue;
    const std::size_t space = line.find(' ');
    const std::string where = name + ": line " + std::to_string(line_no);
    if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos)
      throw InputError(where + ": expected two pieces separated by one space, found " + quotedPiece(line));
    addMerge(spec, std::string(line.substr(0, space)), std::string(line.substr(space + 1)), where);
  }
}

// A token named by a special-token setting: an added token or a vocabulary piece, else -1.
int findToken(const BpeSpec& spec, const std::string& content) {
  for (const auto& token : spec.added)
    if (token.content == content) return token.id;
  const auto it = spec.vocab.find(content);
  return it == spec.vocab.end() ? -1 : it->second;
}

// bos/eos by the names most tokenizers use, when no tokenizer_config.json says.
void conventionalSpecials(BpeSpec& spec) {
  for (const char* name : {"<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"})
    if (spec.bos < 0) spec.bos = findToken(spec, name);
  for (const char* name : {"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"})
    if (spec.eos < 0) spec.eos = findToken(spec, name);
}

const Json* member(const Json& object, const char* key) {
  const Json* j = object.find(key);
  return (j && !j->isNull()) ? j : nullptr;
}

bool flag(const Json& object, const char* key, bool fallback, const std::string& what) {
  const Json* j = member(object, key);
  return j ? j->asBool(what + "." + key) : fallback;
}

std::string stringMember(const Json& object, const char* key, const std::string& what) {
  return object.at(key, what).asString(what + "." + key);
}

[[noreturn]] void unsupported(const std::string& what, const std::string& detail) {
  throw InputError(what + ": " + detail + " is not supported (graft implements BPE with the ByteLevel or "
                   "Metaspace pre-tokenizer, Prepend/Replace normalizers and byte fallback)");
}

std::string typeOf(const Json& component, const std::string& what) { return stringMember(component, "type", what); }

// The members of a Sequence component, or the component itself.
std::vector<const Json*> flatten(const Json& component, const char* list_key, const std::string& what) {
  if (typeOf(component, what) != "Sequence") return {&component};
  std::vector<const Json*> out;
  for (const auto& item : component.at(list_key, what).asArray(what + "." + list_key)) out.push_back(&item);
  return out;
}

void readNormalizer(const Json& root, const std::string& name, BpeSpec& spec) {
  const Json* normalizer = member(root, "normalizer");
  if (!normalizer) return;
  const std::string what = name + ": normalizer";
  for (const Json* step : flatten(*normalizer, "normalizers", what)) {
    const std::string type = typeOf(*step, what);
    if (type == "Prepend") {
      spec.normalizer.emplace_back("", stringMember(*step, "prepend", what));
    } else if (type == "Replace") {
      const Json& pattern = step->at("pattern", what);
      const Json* literal = pattern.find("String");
      if (!literal) unsupported(what, "Replace with a regex pattern");
      const std::string from = literal->asString(what + ".pattern.String");
      if (from.empty()) unsupported(what, "Replace of the empty string");
      spec.normalizer.emplace_back(from, stringMember(*step, "content", what));
    } else {
      unsupported(what, type);
    }
  }
}

void readPreTokenizer(const Json& root, const std::string& name, BpeSpec& spec) {
  const Json* pre = member(root, "pre_tokenizer");
  if (!pre) return;
  const std::string what = name + ": pre_tokenizer";
  const auto steps = flatten(*pre, "pretokenizers", what);
  if (steps.size() > 1) unsupported(what, "a Sequence of " + std::to_string(steps.size()) + " pre-tokenizers");
  if (steps.empty()) return;
  const Json& step = *steps[0];
  const std::string type = typeOf(step, what);
  if (type == "ByteLevel") {
    spec.pre = PreTokenizer::kByteLevel;
    spec.add_prefix_space = flag(step, "add_prefix_space", true, what);
    spec.use_regex = flag(step, "use_regex", true, what);
  } else if (type == "Metaspace") {
    spec.pre = PreTokenizer::kMetaspace;
    spec.replacement = stringMember(step, "replacement", what);
    if (spec.replacement.empty()) unsupported(what, "Metaspace with an empty replacement");
    spec.split = flag(step, "split", true, what);
    if (const Json* scheme = member(step, "prepend_scheme")) {
      const std::string s = scheme->asString(what + ".prepend_scheme");
      if (s == "always") spec.prepend = Prepend::kAlways;
      else if (s == "first") spec.prepend = Prepend::kFirst;
      else if (s == "never") spec.prepend = Prepend::kNever;
      else unsupported(what, "Metaspace prepend_scheme " + quotedPiece(s));
    } else {
      spec.prepend = flag(step, "add_prefix_space", true, what) ? Prepend::kAlways : Prepend::kNever;
    }
  } else {
    unsupported(what, type);
  }
}

void readDecoder(const Json& root, const std::string& name, BpeSpec& spec) {
  const Json* decoder = member(root, "decoder");
  if (!decoder) {  // undo what the pre-tokenizer did, rather than show its marks
    spec.byte_level_decode = spec.pre == PreTokenizer::kByteLevel;
    if (spec.pre == PreTokenizer::kMetaspace) {
      spec.decode_replace.emplace_back(spec.replacement, " ");
      spec.strip_first_space = spec.prepend != Prepend::kNever;
    }
    return;
  }
  const std::string what = name + ": decoder";
  for (const Json* step : flatten(*decoder, "decoders", what)) {
    const std::string type = typeOf(*step, what);
    if (type == "ByteLevel") {
      spec.byte_level_decode = true;
    } else if (type == "ByteFallback") {
      spec.byte_fallback_decode = true;
    } else if (type == "Fuse") {
      // Joining decoded tokens is what concatenation does anyway.
    } else if (type == "Replace") {
      const Json* literal = step->at("pattern", what).find("String");
      if (!literal) unsupported(what, "Replace with a regex pattern");
      const std::string from = literal->asString(what + ".pattern.String");
      if (from.empty()) unsupported(what, "Replace of the empty string");
      spec.decode_replace.emplace_back(from, stringMember(*step, "content", what));
    } else if (type == "Strip") {
      const std::int64_t start = step->at("start", what).asInt(what + ".start");
      const std::int64_t stop = step->at("stop", what).asInt(what + ".stop");
      if (stringMember(*step, "content", what) != " " || start > 1 || stop != 0)
        unsupported(what, "Strip other than one leading space");
      spec.strip_first_space = start == 1;
    } else if (type == "Metaspace") {
      const std::string rep = stringMember(*step, "replacement", what);
      if (rep.empty()) unsupported(what, "Metaspace with an empty replacement");
      spec.decode_replace.emplace_back(rep, " ");
      const Json* scheme = member(*step, "prepend_scheme");
      spec.strip_first_space = scheme ? scheme->asString(what + ".prepend_scheme") != "never"
                                      : flag(*step, "add_prefix_space", true, what);
    } else {
      unsupported(what, type);
    }
  }
}

void readModel(const Json& root, const std::string& name, BpeSpec& spec) {
  const std::string what = name + ": model";
  const Json* model = member(root, "model");
  if (!model || !model->isObject())
    throw InputError(name + ": no \"model\" object; is this a tokenizer.json? (a GPT-2 vocabulary must be named "
                     "encoder.json or vocab.json)");
  const Json* type = member(*model, "type");
  if (type && type->asString(what + ".type") != "BPE") unsupported(what, "model type " + quotedPiece(type->asString("")));
  if (const Json* dropout = member(*model, "dropout"); dropout && dropout->asNumber(what + ".dropout") != 0)
    unsupported(what, "BPE dropout");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const Json* j = member(*model, affix); j && !j->asString(what + "." + affix).empty())
      unsupported(what, std::string("a ") + affix);
  readVocab(model->at("vocab", what), what + ".vocab", spec);
  spec.byte_fallback = flag(*model, "byte_fallback", false, what);
  spec.fuse_unk = flag(*model, "fuse_unk", false, what);
  spec.ignore_merges = flag(*model, "ignore_merges", false, what);
  if (const Json* unk = member(*model, "unk_token")) {
    const std::string& piece = unk->asString(what + ".unk_token");
    const auto it = spec.vocab.find(piece);
    if (it == spec.vocab.end())
      throw InputError(what + ".unk_token: " + quotedPiece(piece) + " is not in the vocabulary");
    spec.unk = it->second;
  }
  const auto& merges = model->at("merges", what).asArray(what + ".merges");
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const std::string where = what + ".merges[" + std::to_string(i) + "]";
    if (merges[i].isString()) {  // "a b"
      const std::string& line = merges[i].asString(where);
      const std::size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos)
        throw InputError(where + ": expected two pieces separated by one space, found " + quotedPiece(line));
      addMerge(spec, line.substr(0, space), line.substr(space + 1), where);
    } else {  // ["a", "b"]
      const auto& pair = merges[i].asArray(where);
      if (pair.size() != 2) throw InputError(where + ": expected a pair of pieces");
      addMerge(spec, pair[0].asString(where + "[0]"), pair[1].asString(where + "[1]"), where);
    }
  }
}

void readAddedTokens(const Json& root, const std::string& name, BpeSpec& spec) {
  const Json* added = member(root, "added_tokens");
  if (!added) return;
  const auto& list = added->asArray(name + ": added_tokens");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string what = name + ": added_tokens[" + std::to_string(i) + "]";
    AddedToken token;
    const std::int64_t id = list[i].at("id", what).asInt(what + ".id");
    if (id < 0 || id >= kMaxId) throw InputError(what + ": id " + std::to_string(id) + " is out of range");
    token.id = static_cast<int>(id);
    token.content = stringMember(list[i], "content", what);
    if (token.content.empty()) throw InputError(what + ": empty content");
    if (flag(list[i], "single_word", false, what)) unsupported(what, "single_word");
    token.lstrip = flag(list[i], "lstrip", false, what);
    token.rstrip = flag(list[i], "rstrip", false, what);
    token.normalized = flag(list[i], "normalized", !flag(list[i], "special", false, what), what);
    spec.added.push_back(token);
  }
}

// tokenizer_config.json's bos_token / eos_token: a string, {"content": ...}, or null for none.
void readConfigSpecials(std::string_view config_json, const std::string& config_name, BpeSpec& spec) {
  const Json config = parseJson(config_json, config_name);
  for (auto [key, out] : {std::pair<const char*, int*>{"bos_token", &spec.bos}, {"eos_token", &spec.eos}}) {
    const Json* setting = config.find(key);
    if (!setting) continue;
    const std::string what = config_name + ": " + key;
    *out = -1;
    if (setting->isNull()) continue;
    const std::string content = setting->isString() ? setting->asString(what) : stringMember(*setting, "content", what);
    *out = findToken(spec, content);
    if (*out < 0) throw InputError(what + ": " + quotedPiece(content) + " is not a token of " + spec.name);
  }
}

}  // namespace

std::unique_ptr<Tokenizer> gpt2TokenizerFromBytes(std::string_view vocab_json, const std::string& vocab_name,
                                                  std::string_view merges, const std::string& merges_name) {
  BpeSpec spec;
  spec.name = vocab_name;
  spec.kind = "GPT-2 BPE";
  readVocab(parseJson(vocab_json, vocab_name), vocab_name + ": vocabulary", spec);
  readMergesText(merges, merges_name, spec);
  spec.pre = PreTokenizer::kByteLevel;
  spec.add_prefix_space = false;
  spec.byte_level_decode = true;
  const int end_of_text = findToken(spec, "<|endoftext|>");
  if (end_of_text >= 0) spec.added.push_back(AddedToken{"<|endoftext|>", end_of_text});
  conventionalSpecials(spec);
  return makeBpeTokenizer(std::move(spec));
}

std::unique_ptr<Tokenizer> hfTokenizerFromBytes(std::string_view tokenizer_json, const std::string& name,
                                                std::string_view config_json, const std::string& config_name) {
  const Json root = parseJson(tokenizer_json, name);
  root.asObject(name);
  BpeSpec spec;
  spec.name = name;
  spec.kind = "Hugging Face BPE";
  readModel(root, name, spec);
  readAddedTokens(root, name, spec);
  readNormalizer(root, name, spec);
  readPreTokenizer(root, name, spec);
  readDecoder(root, name, spec);
  // Byte pieces are the model's own: a decoder that forgets them would print "<0xE2>" for text.
  spec.byte_fallback_decode = spec.byte_fallback_decode || spec.byte_fallback;
  // Hugging Face's ByteLevel decoder keeps the space add_prefix_space put in front; decode() promises
  // to drop it, so that decodeAll(encode(text)) is the text.
  if (spec.pre == PreTokenizer::kByteLevel && spec.add_prefix_space) spec.strip_first_space = true;
  conventionalSpecials(spec);
  if (!config_json.empty()) readConfigSpecials(config_json, config_name, spec);
  return makeBpeTokenizer(std::move(spec));
}

}  // namespace graft
