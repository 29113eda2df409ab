// Streaming readers for the text that `graft prepare` turns into datasets, without torch:
//   text   documents separated by blank lines (lines joined with '\n', no trailing newline)
//   jsonl  one JSON object per line: "messages" (a conversation: a list of {"role", "content"}),
//          "text", or "prompt" + "completion"; optional "label"
//   csv    RFC 4180 with a header row; columns chosen by name; also .tsv (tab-delimited)
// Memory is constant in the input size: a bounded read buffer plus the current record, and a
// record longer than SourceOptions::max_record_bytes is an error, so a missing closing quote
// or a file without newlines fails quickly instead of filling memory. Inputs are untrusted
// (libFuzzer targets tests/fuzz/csv_fuzz.cc and jsonl_fuzz.cc); every error is an InputError
// of one line that starts with "FILE:LINE: ".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace graft {

// One turn of a conversation: role is system, user or assistant (checked by the chat template).
struct ChatMessage {
  std::string role, content;
};

struct TextRecord {
  std::vector<ChatMessage> messages;  // jsonl "messages": a conversation (then text, prompt, completion are empty)
  std::string text;                // text and jsonl "text"; empty when prompt/completion are set
  std::string prompt, completion;  // jsonl or csv records with prompt and completion fields
  std::string label;               // "" when the record has none; integers as decimal text
  std::int64_t line = 0;           // first line of the record, 1-based
};

class RecordReader {
 public:
  virtual ~RecordReader();
  // The next record, or false at the end of the input. Throws InputError("FILE:LINE: ...").
  virtual bool next(TextRecord& out) = 0;
  // Bytes consumed so far and the input's size (-1 when unknown, e.g. a pipe), for progress.
  virtual std::int64_t bytesRead() const = 0;
  virtual std::int64_t bytesTotal() const = 0;
};

struct SourceOptions {
  std::string format = "auto";  // auto | text | jsonl | csv; auto: .jsonl/.json -> jsonl, .csv/.tsv -> csv, else text
  std::string messages_field = "messages";  // jsonl key of conversations
  std::string text_field = "text";  // jsonl keys and csv column names
  std::string prompt_field = "prompt", completion_field = "completion";
  std::string label_field = "label";  // banking77: "category"; "" = ignore labels
  bool require_label = false;         // a record (jsonl) or header (csv) without the label is an error
  char delimiter = 0;                 // csv: 0 = ',' or '\t' for .tsv
  std::int64_t max_record_bytes = std::int64_t{16} << 20;
  std::int64_t read_buffer_bytes = 1 << 16;  // clamped to [4, 64 MiB]; tests shrink it to cross chunk boundaries
};

// Opens `path`; throws InputError naming it when it cannot be read or an option is invalid.
std::unique_ptr<RecordReader> openRecords(const std::string& path, const SourceOptions& options);
// The same over bytes in memory; `what` names them in errors and picks the format under "auto".
std::unique_ptr<RecordReader> openRecordsFromString(std::string data, const std::string& what,
                                                    const SourceOptions& options);

// Train/validation split of a classification stream, decided per label: the k-th example
// (0-based) of a label goes to val when floor((k + 1) f + phase) > floor(k f + phase), with
// phase in [0, 1) hashed from (label, seed). So whatever the order, a label seen n times has
// floor(n f + phase) val examples: round(n f) give or take one, and the split is reproducible.
class StratifiedSplit {
 public:
  // Throws InputError unless 0 <= val_fraction < 1.
  StratifiedSplit(double val_fraction, std::uint64_t seed);
  bool isVal(const std::string& label);

 private:
  struct Count {
    std::int64_t seen = 0;
    double phase = 0;
  };
  double fraction_;
  std::uint64_t seed_;
  std::unordered_map<std::string, Count> labels_;
};

// Few-shot training sets: take() is true for the first `per_label` examples of each label
// (all of them when per_label is 0). Apply it to train examples after StratifiedSplit, so the
// validation set stays the same whatever the shot count.
class FewShotLimit {
 public:
  explicit FewShotLimit(std::int64_t per_label);  // throws InputError when negative
  bool take(const std::string& label);

 private:
  std::int64_t per_label_;
  std::unordered_map<std::string, std::int64_t> taken_;
};

}  // namespace graft
