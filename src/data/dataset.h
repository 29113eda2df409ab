// Token datasets in HDF5 (layout in docs/data-format.md):
//   /            attrs format="graft-tokens", version (1; 2 with loss masks or labels), tokenizer,
//                vocab_size, source, and label_names (a JSON array) for classification data
//   /<split>/tokens       int32 [n]   documents back to back, each starting with BOS
//   /<split>/doc_offsets  int64 [d+1] where each document starts in tokens
//   /<split>/loss_mask    uint8 [n]   (prompt/completion data) 1 where the token is a target to learn
//   /<split>/labels       int32 [d]   (classification data) the label id of each document
// with <split> = train | val. A language-modelling sample is seq_len + 1 tokens (inputs are its
// first seq_len, targets its last seq_len), laid out by the packing (data.packing):
//   windows    the window starting at token i * seq_len, across documents (pretraining text)
//   documents  whole documents, greedily packed in file order into sequences of seq_len + 1 tokens
//              (a longer document is cut to that), each attending only to itself, positions
//              restarting at 0 with each, padding never a target (Note [packed documents])
//   padded     one document per sequence, padded: documents without packing, for comparison
// Packing depends on the documents alone, never on the number of ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/text_sources.h"
#include "tokenizer/tokenizer.h"

namespace graft {

struct PrepareOptions {
  SourceOptions source;      // format and field/column names of the input
  std::string chat_template;           // conversations: chatml | llama3 | mistral | plain ("" = none given)
  std::string chat_template_config;    // else: a tokenizer_config.json whose chat_template decides, read at the first conversation
  TrainOn train_on = TrainOn::Assistant;  // conversations: which turns the loss reads
  double val_fraction = 0.1;
  std::uint64_t seed = 1234;
  std::int64_t max_per_label = 0;  // few-shot: at most this many train examples per label (0 = all)
};

struct PrepareStats {
  std::int64_t train_docs = 0, val_docs = 0, train_tokens = 0, val_tokens = 0;
  std::int64_t skipped = 0;  // examples left out by max_per_label
  std::vector<std::string> labels;  // label names by id (classification data)
  bool loss_mask = false;           // prompt/completion records: loss on completions only
  std::int64_t conversations = 0;   // records that were conversations (chat template applied)
  std::string chat_template;        // the template they were rendered with
  std::int64_t piecewise = 0;       // conversations whose text the tokenizer could not give back (ChatTemplate::encode)
};

// Streams `input` (text: documents separated by blank lines; jsonl; csv; see data/text_sources.h)
// in constant memory: each record is tokenized with BOS first and appended to train or val.
//   text records     go to val with probability val_fraction (a seeded hash of their index);
//   labelled records are split per label (StratifiedSplit), labels numbered by first appearance;
//   prompt/completion records are encoded as prompt + completion (+ EOS), and only completion
//                    tokens are targets (loss_mask);
//   conversations    ("messages") are rendered by options.chat_template (data/chat_template.h),
//                    and the tokens options.train_on names are targets (loss_mask).
// At least one document goes to val when val_fraction > 0 and there are two or more. Writes
// `output` via a temporary file + rename; `progress(bytes_read, bytes_total)` is called now and then.
PrepareStats prepareDataset(const std::string& input, const Tokenizer& tokenizer, const std::string& output,
                            const PrepareOptions& options,
                            const std::function<void(std::int64_t, std::int64_t)>& progress);

class H5File;

// What identifies a dataset's samples without reading its tokens: "bytes=<file size>
// offsets_crc32=<CRC-32 of every split's doc_offsets, splits in name order>". A checkpoint records
// it; resume refuses a different one (the data a run continues on would not be the data it began
// with). Cheap: offsets are a few bytes per document.
std::string datasetFingerprint(const std::string& path);

// Where a split's tokens (and loss mask) live while a run reads them. Memory: read once at open
// (every token checked against the vocabulary then). Stream: read from the file sample by sample
// (HDF5 hyperslabs; tokens checked as they are read), so a split far larger than RAM trains in
// constant memory. Auto: memory up to kAutoMemoryBytes of tokens, else stream. Offsets and labels
// (a few bytes per document) are always in memory. Both give the same samples, bit for bit.
enum class DataResidency { Auto, Memory, Stream };
constexpr std::int64_t kAutoMemoryBytes = std::int64_t{2} << 30;
// "auto" | "memory" | "stream"; anything else is an InputError naming `key`.
DataResidency parseResidency(const std::string& value, const std::string& key);

// data.packing. Auto: documents for data with a loss mask (conversations, prompt/completion),
// windows for plain text. Classification data reads whole documents whatever it says.
enum class Packing { Auto, Windows, Documents, Padded };
// "auto" | "windows" | "documents" | "padded"; anything else is an InputError naming `key`.
Packing parsePacking(const std::string& value, const std::string& key);
const char* packingName(Packing packing);

class TokenDataset;
// One line for the log: the packing in force, why (`setting`, data.packing's value), and under
// documents or padded how many sequences, how many documents were cut and how full they are.
std::string describePacking(const TokenDataset& data, const std::string& setting);

class TokenDataset {
 public:
  // Throws InputError naming the file when it is not a graft token dataset or lacks `split`.
  TokenDataset(const std::string& path, const std::string& split, int seq_len,
               DataResidency residency = DataResidency::Auto, Packing packing = Packing::Auto);
  TokenDataset(TokenDataset&&) noexcept;
  ~TokenDataset();
  bool streamed() const { return file_ != nullptr; }
  std::int64_t numSamples() const;
  std::int64_t numTokens() const { return num_tokens_; }
  int vocabSize() const { return vocab_size_; }
  // Writes seq_len + 1 tokens of sample `index` to `out`.
  void sample(std::int64_t index, std::int64_t* out) const;
  // True when some tokens are not targets (prompt/completion data).
  bool hasLossMask() const { return has_mask_; }
  // The seq_len targets of sample `index`: its last seq_len tokens, with kIgnoreTarget where the
  // loss mask says the token is not learned.
  void targets(std::int64_t index, std::int64_t* out) const;
  int seqLen() const { return seq_len_; }
  // The packing in force (never Auto), and, under documents or padded, how many documents were
  // longer than a sequence and cut, and how many of a sequence's slots hold tokens, in all.
  Packing packing() const { return packing_; }
  std::int64_t cutDocuments() const { return cut_documents_; }
  // Of the cut documents: the targets (loss mask 1) beyond the cut, and how many keep none.
  std::int64_t lostTargets() const { return lost_targets_; }
  std::int64_t cutWithoutTargets() const { return cut_without_targets_; }
  std::int64_t packedTokens() const { return packed_tokens_; }
  // Documents and padded: the position of each of sample `index`'s seq_len inputs in its document
  // (0 where one starts; the padding after the last document counts as one of its own).
  void positions(std::int64_t index, std::int64_t* out) const;
  // How many of sample `index`'s seq_len inputs are tokens of the split (not padding).
  std::int64_t inputTokens(std::int64_t index) const {
    const auto [begin, end] = tokenRange(index);
    return std::min<std::int64_t>(end - begin, seq_len_);
  }
  // How many of sample `index`'s targets count (not kIgnoreTarget), reading only what that needs.
  std::int64_t countTargets(std::int64_t index) const;
  // Documents and padded: the documents [first, last) that sample `index` holds.
  std::pair<std::int64_t, std::int64_t> documentsOf(std::int64_t index) const;

  // Classification data (labels present): one sample per document.
  bool hasLabels() const { return !labels_.empty(); }
  std::int64_t numDocuments() const { return static_cast<std::int64_t>(offsets_.size()) - 1; }
  // Document `index`'s tokens, the first `max_tokens` of them, appended to `out`; returns how many.
  std::int64_t document(std::int64_t index, std::int64_t max_tokens, std::vector<std::int64_t>& out) const;
  std::int64_t documentLength(std::int64_t index) const {
    return offsets_[static_cast<std::size_t>(index) + 1] - offsets_[static_cast<std::size_t>(index)];
  }
  int label(std::int64_t index) const { return labels_[static_cast<std::size_t>(index)]; }
  const std::vector<std::string>& labelNames() const { return label_names_; }

  static constexpr std::int64_t kIgnoreTarget = -100;  // torch's cross_entropy ignore_index

 private:
  // Tokens [begin, begin + n) (checked against the vocabulary when streamed), and their mask bytes.
  void readTokens(std::int64_t begin, std::int64_t n, std::int32_t* out) const;
  void readMask(std::int64_t begin, std::int64_t n, std::uint8_t* out) const;
  std::vector<std::uint8_t> learnable(std::int64_t index, std::int64_t begin, std::int64_t end) const;
  // The tokens [begin, end) sample `index` holds (end - begin <= seq_len + 1).
  std::pair<std::int64_t, std::int64_t> tokenRange(std::int64_t index) const;
  void pack();  // fills sequences_ for documents and padded

  std::string path_, tokens_object_, mask_object_;
  std::unique_ptr<H5File> file_;  // open while streamed
  std::int64_t num_tokens_ = 0;
  bool has_mask_ = false;
  std::vector<std::int32_t> tokens_;       // memory residency only
  std::vector<std::uint8_t> loss_mask_;    // memory residency only
  std::vector<std::int64_t> offsets_;
  std::vector<std::int32_t> labels_;
  std::vector<std::string> label_names_;
  int seq_len_;
  int vocab_size_;
  Packing packing_ = Packing::Windows;
  std::vector<std::int64_t> sequences_;  // documents and padded: sequence i holds documents [s[i], s[i + 1])
  std::int64_t cut_documents_ = 0, packed_tokens_ = 0, lost_targets_ = 0, cut_without_targets_ = 0;
};

}  // namespace graft
