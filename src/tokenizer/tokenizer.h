// Tokenizers behind one interface. Special ids differ between tokenizers: ask bos() and eos().
//
//   loadTokenizer("bytes")                byte-level: id = byte + 3 (0 <unk>, 1 BOS, 2 EOS), vocab 259, for
//                                         corpora without a trained tokenizer (the quick-start demo uses it)
//   loadTokenizer("path/tok512.bin")      llama2.c / SentencePiece BPE (see ../shared/data/llama2c/FORMAT.md)
//   loadTokenizer("path/m.model")         a SentencePiece model, run by libsentencepiece
//   loadTokenizer("path/tokenizer.json")  Hugging Face BPE: byte-level (GPT-2 family) or Metaspace with
//                                         byte fallback (Llama / Mistral family)
//   loadTokenizer("path/encoder.json")    GPT-2 byte-level BPE from encoder.json + vocab.bpe or vocab.json +
//                                         merges.txt; either file of a pair names it, the other lies beside it
//   loadTokenizer("path/folder")          the first of tokenizer.json, vocab.json + merges.txt,
//                                         tokenizer.model, encoder.json + vocab.bpe found in the folder
//
// Added tokens written literally in the text (GPT-2's "<|endoftext|>") encode to their id, as in
// Hugging Face tokenizers. Files are untrusted: anything malformed is an InputError naming the file.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace graft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // One past the largest id.
  virtual int vocabSize() const = 0;
  // Begin- and end-of-sequence ids, or -1 where the tokenizer has none (encode then refuses to add one).
  virtual int bos() const = 0;
  virtual int eos() const = 0;
  // Whether text is conventionally encoded with BOS first (llama2.c, SentencePiece and Llama-style
  // tokenizers: yes; GPT-2 byte-level BPE: no, as transformers does). graft tokenize and graft eval
  // --text follow it; datasets always start documents with bos() as a separator.
  virtual bool addsBos() const { return bos() >= 0; }
  // Ids of `text` (any bytes), with bos() first and eos() last on request.
  virtual std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const = 0;
  // The bytes token `token` stands for when it follows `prev` (bos() or -1 at the start), as llama2.c's
  // run.c decodes: a piece at the start or after BOS loses the one leading space the encoder added,
  // "<0xHH>" pieces become the byte. A byte-level piece may hold part of a UTF-8 character, so only
  // the concatenation of decoded tokens is text.
  virtual std::string decode(int prev, int token) const = 0;
  // The concatenation of decode() over ids, the first taken as following bos(): for text the vocabulary
  // covers, decodeAll(encode(text, false, false)) == text.
  virtual std::string decodeAll(const std::vector<int>& ids) const;
  // What run.c's safe_printf would print of a decoded piece (drops lone non-printable bytes).
  static std::string printable(const std::string& piece);
  virtual std::string describe() const = 0;
};

std::unique_ptr<Tokenizer> loadTokenizer(const std::string& spec);

// The constructors behind loadTokenizer, from bytes already read (tests, the fuzz target). `name`
// stands for the file in error messages.
std::unique_ptr<Tokenizer> llama2cTokenizerFromBytes(std::string_view bytes, const std::string& name);
std::unique_ptr<Tokenizer> sentencePieceTokenizerFromBytes(std::string_view bytes, const std::string& name);
// GPT-2 byte-level BPE: vocab_json maps pieces to ids (encoder.json, vocab.json); merges holds one
// "a b" pair per line in priority order (vocab.bpe, merges.txt; a "#version" line is skipped).
std::unique_ptr<Tokenizer> gpt2TokenizerFromBytes(std::string_view vocab_json, const std::string& vocab_name,
                                                  std::string_view merges, const std::string& merges_name);
// A Hugging Face tokenizer.json with a BPE model. bos/eos come from tokenizer_config.json's bos_token and
// eos_token when config_json is not empty, else from conventional names (<s>, <|endoftext|>, ...).
std::unique_ptr<Tokenizer> hfTokenizerFromBytes(std::string_view tokenizer_json, const std::string& name,
                                                std::string_view config_json = {},
                                                const std::string& config_name = {});

}  // namespace graft
