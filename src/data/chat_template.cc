#include "data/chat_template.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/json.h"

namespace graft {
namespace {

// A rendered conversation is a list of pieces: text, or one special token (by its text, or the
// tokenizer's BOS/EOS), each a target of the loss or not.
struct Piece {
  enum Kind { Text, Special, Bos, Eos } kind;
  std::string text;
  bool target;
};

std::string trimmed(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\n\r"), last = s.find_last_not_of(" \t\n\r");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

const std::vector<std::string>& specialsOf(const std::string& name) {
  static const std::vector<std::string> chatml = {"<|im_start|>", "<|im_end|>"};
  static const std::vector<std::string> llama3 = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
  static const std::vector<std::string> none;
  return name == "chatml" ? chatml : name == "llama3" ? llama3 : none;
}

// The template's pieces for `messages`; `learn(i)` says whether message i's turn is a target.
template <typename Learn>
std::vector<Piece> render(const std::string& name, const std::vector<ChatMessage>& messages, bool all, Learn learn,
                          const Tokenizer& tokenizer, const std::string& where) {
  std::vector<Piece> out;
  auto text = [&](std::string t, bool target) { out.push_back({Piece::Text, std::move(t), target || all}); };
  auto special = [&](std::string t, bool target) { out.push_back({Piece::Special, std::move(t), target || all}); };
  if (name == "chatml") {
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const auto& m = messages[i];
      special("<|im_start|>", false);
      text(m.role + "\n", false);
      text(m.content, learn(i));
      special("<|im_end|>", learn(i));
      text("\n", false);
    }
  } else if (name == "llama3") {
    special("<|begin_of_text|>", false);
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const auto& m = messages[i];
      special("<|start_header_id|>", false);
      text(m.role, false);
      special("<|end_header_id|>", false);
      text("\n\n", false);
      text(trimmed(m.content), learn(i));
      special("<|eot_id|>", learn(i));
    }
  } else if (name == "mistral") {
    out.push_back({Piece::Bos, "", all});
    std::size_t i = 0;
    std::string system;
    if (messages[0].role == "system") system = messages[0].content + "\n\n", i = 1;
    for (bool user = true; i < messages.size(); ++i, user = !user) {
      const auto& m = messages[i];
      if (m.role != (user ? "user" : "assistant"))
        throw InputError(where + ": the mistral template needs user and assistant turns in turn (after an optional system "
                                 "message); message " + std::to_string(i + 1) + " is " + m.role);
      if (user) {
        text("[INST] " + system + m.content + " [/INST]", false);
        system.clear();
      } else {
        text(m.content, learn(i));
        out.push_back({Piece::Eos, "", learn(i) || all});
      }
    }
  } else {  // plain
    if (tokenizer.bos() >= 0) out.push_back({Piece::Bos, "", all});
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const auto& m = messages[i];
      std::string role = m.role;
      role[0] = static_cast<char>(role[0] - 'a' + 'A');
      text(role + ":", false);
      text(" " + m.content + "\n", learn(i));  // the newline ends the turn
    }
  }
  return out;
}

int specialId(const Tokenizer& tokenizer, const std::string& token, const std::string& template_name) {
  const auto ids = tokenizer.encode(token, false, false);
  // One id that decodes to the token itself (not an <unk> that swallowed it).
  if (ids.size() != 1 || tokenizer.decode(-1, ids[0]) != token)
    throw InputError("chat template " + template_name + " needs " + token + " as one token, and tokenizer " + tokenizer.describe() +
                     " has no such token (it encodes to " + std::to_string(ids.size()) +
                     " pieces); use a template of this tokenizer's own, or --chat-template plain");
  return ids[0];
}

// The ids of `text` with each token marked: target when it starts in a piece that is one.
// Offsets come from decoding: each token's bytes follow the bytes before it, so a token starts
// where the decoded text so far ends. When the tokenizer does not give back the text (bytes it
// cannot represent), each piece is encoded alone instead, and tokens keep their piece's mark.
// False when it had to fall back to pieces.
bool encodeSpan(const Tokenizer& tokenizer, const std::vector<const Piece*>& pieces, std::vector<int>& ids,
                std::vector<std::uint8_t>& mask) {
  std::string text;
  std::vector<std::size_t> ends;  // where each piece ends in text
  for (const auto* p : pieces) ends.push_back((text += p->text).size());
  if (text.empty()) return true;
  const auto span = tokenizer.encode(text, false, false);
  std::vector<std::size_t> starts;
  std::size_t at = 0;
  int prev = -1;
  for (const int id : span) {
    starts.push_back(at);
    at += tokenizer.decode(prev, id).size();
    prev = id;
  }
  if (at != text.size()) {
    for (const auto* p : pieces) {
      const auto alone = tokenizer.encode(p->text, false, false);
      ids.insert(ids.end(), alone.begin(), alone.end());
      mask.insert(mask.end(), alone.size(), p->target ? 1 : 0);
    }
    return false;
  }
  for (std::size_t t = 0; t < span.size(); ++t) {
    const auto piece = static_cast<std::size_t>(std::upper_bound(ends.begin(), ends.end(), starts[t]) - ends.begin());
    ids.push_back(span[t]);
    mask.push_back(pieces[std::min(piece, pieces.size() - 1)]->target ? 1 : 0);
  }
  return true;
}

}  // namespace

TrainOn parseTrainOn(const std::string& value, const std::string& key) {
  if (value == "all") return TrainOn::All;
  if (value == "assistant") return TrainOn::Assistant;
  if (value == "last") return TrainOn::Last;
  throw InputError(key + " = " + value + ": expected all, assistant or last");
}

const std::vector<std::string>& ChatTemplate::names() {
  static const std::vector<std::string> all = {"chatml", "llama3", "mistral", "plain"};
  return all;
}

ChatTemplate::ChatTemplate(const std::string& name) : name_(name) {
  if (std::find(names().begin(), names().end(), name) == names().end())
    throw InputError("chat template '" + name + "' is not one graft knows: chatml, llama3, mistral or plain");
}

std::string ChatTemplate::recognise(const std::string& config_json, const std::string& config_name) {
  const Json config = parseJson(config_json, config_name);
  const Json* value = config.isObject() ? config.find("chat_template") : nullptr;
  if (!value || value->isNull()) return "";
  std::string text;
  if (value->isString()) {
    text = value->asString(config_name + ": chat_template");
  } else {  // a list of {"name", "template"}: the default one
    for (const auto& t : value->asArray(config_name + ": chat_template")) {
      const Json* n = t.isObject() ? t.find("name") : nullptr;
      const Json* body = t.isObject() ? t.find("template") : nullptr;
      if (n && body && n->isString() && n->asString(config_name) == "default") text = body->asString(config_name);
    }
  }
  if (std::find(names().begin(), names().end(), text) != names().end()) return text;
  auto has = [&](std::initializer_list<const char*> markers) {
    return std::all_of(markers.begin(), markers.end(), [&](const char* m) { return text.find(m) != std::string::npos; });
  };
  if (has({"<|im_start|>", "<|im_end|>"})) return "chatml";
  if (has({"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"})) return "llama3";
  // Mistral-7B-Instruct's own: [INST] and " [/INST]" with its space; Llama 2's <<SYS>> block and
  // the later Mistral formats (no space before [/INST], [SYSTEM_PROMPT]) are other templates.
  if (has({"[INST]", " [/INST]"}) && !has({"<<SYS>>"}) && !has({"[SYSTEM_PROMPT]"})) return "mistral";
  std::string start;
  for (const char ch : text.substr(0, 60)) start += static_cast<unsigned char>(ch) < 0x20 ? ' ' : ch;
  while (!start.empty() && (static_cast<unsigned char>(start.back()) & 0xC0) == 0x80) start.pop_back();  // no cut character
  if (!start.empty() && static_cast<unsigned char>(start.back()) >= 0xC0) start.pop_back();
  throw InputError(config_name + ": its chat_template (\"" + start + (text.size() > 60 ? "..." : "") +
                   "\") is none of chatml, llama3 or mistral; pass --chat-template with the one to use");
}

void ChatTemplate::check(const Tokenizer& tokenizer) const {
  for (const auto& token : specialsOf(name_)) specialId(tokenizer, token, name_);
  if (name_ == "mistral" && (tokenizer.bos() < 0 || tokenizer.eos() < 0))
    throw InputError("chat template mistral needs BOS and EOS tokens, and tokenizer " + tokenizer.describe() + " lacks one");
}

bool ChatTemplate::encode(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages, TrainOn train_on,
                          const std::string& where, std::vector<int>& ids, std::vector<std::uint8_t>& mask) const {
  std::size_t last_assistant = messages.size();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      std::string shown = role.substr(0, 40);
      for (auto& ch : shown)
        if (static_cast<unsigned char>(ch) < 0x20) ch = ' ';  // one line, whatever the file holds
      throw InputError(where + ": message " + std::to_string(i + 1) + " has role '" + shown +
                       "'; conversations hold system, user and assistant messages");
    }
    if (role == "assistant") last_assistant = i;
  }
  if (last_assistant == messages.size() && train_on != TrainOn::All)
    throw InputError(where + ": a conversation without an assistant turn has nothing to learn under --train-on " +
                     (train_on == TrainOn::Last ? "last" : "assistant"));
  auto learn = [&](std::size_t i) {
    return messages[i].role == "assistant" && (train_on != TrainOn::Last || i == last_assistant);
  };
  const auto pieces = render(name_, messages, train_on == TrainOn::All, learn, tokenizer, where);
  ids.clear();
  mask.clear();
  // Text between special tokens is encoded as one span (as tokenizers split at added tokens first).
  std::vector<const Piece*> span;
  bool exact = true;
  for (const auto& p : pieces) {
    if (p.kind == Piece::Text) {
      span.push_back(&p);
      continue;
    }
    exact = encodeSpan(tokenizer, span, ids, mask) && exact;
    span.clear();
    ids.push_back(p.kind == Piece::Bos ? tokenizer.bos() : p.kind == Piece::Eos ? tokenizer.eos() : specialId(tokenizer, p.text, name_));
    mask.push_back(p.target ? 1 : 0);
  }
  return encodeSpan(tokenizer, span, ids, mask) && exact;
}

}  // namespace graft
