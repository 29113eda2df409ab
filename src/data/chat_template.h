// Conversations into tokens and a loss mask, by a named chat template (docs/data-format.md):
//
//   chatml   (Qwen2)  <|im_start|>ROLE\nCONTENT<|im_end|>\n per message
//   llama3            <|begin_of_text|> then <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
//                     per message (content trimmed, as Meta's template does)
//   mistral           BOS [INST] USER [/INST]ASSISTANT EOS ... (a system prompt goes before the first
//                     user message, followed by a blank line); roles must alternate user/assistant
//   plain             BOS (when the tokenizer has one) then "System: ...\n", "User: ...\n",
//                     "Assistant: ...\n": no special tokens, for tokenizers without any (llama2.c's)
//
// The loss mask (--train-on): assistant (default) the assistant turns' content and their end-of-turn
// token (<|im_end|>, <|eot_id|>, EOS, or plain's newline), nothing of system or user turns nor of
// the headers; last: the last assistant turn only; all: every token. Special tokens are looked up
// as single tokens of the tokenizer (its added tokens), never split: a template whose special token
// the tokenizer does not have as one token is refused, naming it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/text_sources.h"

namespace graft {

class Tokenizer;

enum class TrainOn { All, Assistant, Last };
// "all" | "assistant" | "last"; anything else is an InputError naming `key`.
TrainOn parseTrainOn(const std::string& value, const std::string& key);

class ChatTemplate {
 public:
  // chatml | llama3 | mistral | plain; another name is an InputError that lists these.
  explicit ChatTemplate(const std::string& name);
  const std::string& name() const { return name_; }
  static const std::vector<std::string>& names();

  // The built-in template a Hugging Face tokenizer_config.json's "chat_template" is, recognised by
  // the markers only that template writes (or its name written as the value): <|im_start|> and
  // <|im_end|>; <|start_header_id|>, <|end_header_id|> and <|eot_id|>; [INST] and " [/INST]"
  // without Llama 2's <<SYS>> or a [SYSTEM_PROMPT]. "" when the file has no chat_template. One the
  // markers do not identify is an InputError naming the file: graft does not guess.
  static std::string recognise(const std::string& config_json, const std::string& config_name);

  // Checks that every special token the template writes is one token of `tokenizer` (else an
  // InputError naming the token, the template and the tokenizer).
  void check(const Tokenizer& tokenizer) const;

  // The conversation's ids and loss mask (1: a target the loss reads). `where` ("FILE:LINE") names
  // it in errors: a role other than system, user or assistant; no assistant turn to learn from;
  // mistral's turns out of order. False when some text had to be encoded piece by piece (the
  // tokenizer could not give it back, so token offsets were unknown): then the tokens may differ
  // from those of the whole rendering.
  bool encode(const Tokenizer& tokenizer, const std::vector<ChatMessage>& messages, TrainOn train_on,
              const std::string& where, std::vector<int>& ids, std::vector<std::uint8_t>& mask) const;

 private:
  std::string name_;
};

}  // namespace graft
