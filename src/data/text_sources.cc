#include "data/text_sources.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <vector>

#include "data/sampler.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {

RecordReader::~RecordReader() = default;

namespace {

// main() prints an error as one line, so control bytes quoted from the input are escaped.
std::string oneLine(const std::string& s, std::size_t max_bytes = 200) {
  std::string out;
  for (unsigned char c : s.substr(0, max_bytes)) {
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_bytes) out += "...";
  return out;
}

// Bytes in chunks of a bounded size, from a file or from memory; the memory path is cut into the
// same chunks so that tests and fuzzers exercise the chunk boundaries a large file meets.
class ByteStream {
 public:
  ByteStream(std::unique_ptr<std::istream> file, std::string memory, std::int64_t total, std::int64_t chunk,
             std::string what)
      : file_(std::move(file)), memory_(std::move(memory)), total_(total),
        chunk_(static_cast<std::size_t>(std::clamp<std::int64_t>(chunk, 4, std::int64_t{1} << 26))),
        what_(std::move(what)) {
    if (file_) buffer_.resize(chunk_);
    // A UTF-8 byte order mark says nothing about the content; the first chunk holds all 3 bytes.
    if (fill() && end_ - pos_ >= 3 && std::memcmp(data_ + pos_, "\xEF\xBB\xBF", 3) == 0) {
      pos_ += 3;
      consumed_ += 3;
    }
  }

  int get() {
    if (pos_ == end_ && !fill()) return -1;
    ++consumed_;
    return static_cast<unsigned char>(data_[pos_++]);
  }
  int peek() {
    if (pos_ == end_ && !fill()) return -1;
    return static_cast<unsigned char>(data_[pos_]);
  }

  enum class Line { kEnd, kOk, kTooLong };
  // The bytes before the next '\n' (which is consumed, not stored). kEnd: nothing was left.
  // kTooLong: more than `limit` bytes; the rest of the line is not read.
  Line readLine(std::string& line, std::size_t limit) {
    line.clear();
    bool any = false;
    while (pos_ < end_ || fill()) {
      any = true;
      const char* from = data_ + pos_;
      const auto* newline = static_cast<const char*>(std::memchr(from, '\n', end_ - pos_));
      const std::size_t n = newline ? static_cast<std::size_t>(newline - from) : end_ - pos_;
      if (line.size() + n > limit) return Line::kTooLong;
      line.append(from, n);
      pos_ += n;
      consumed_ += static_cast<std::int64_t>(n);
      if (newline) {
        ++pos_;
        ++consumed_;
        return Line::kOk;
      }
    }
    return any ? Line::kOk : Line::kEnd;
  }

  std::int64_t consumed() const { return consumed_; }
  std::int64_t total() const { return total_; }

 private:
  bool fill() {
    pos_ = end_ = 0;
    if (file_) {
      file_->read(buffer_.data(), static_cast<std::streamsize>(chunk_));
      if (file_->bad()) throw Error(what_ + ": read error after " + std::to_string(consumed_) + " bytes");
      data_ = buffer_.data();
      end_ = static_cast<std::size_t>(file_->gcount());
    } else {
      data_ = memory_.data() + memory_at_;
      end_ = std::min(chunk_, memory_.size() - memory_at_);
      memory_at_ += end_;
    }
    return end_ > 0;
  }

  std::unique_ptr<std::istream> file_;
  std::string memory_;
  std::size_t memory_at_ = 0;
  std::int64_t total_, consumed_ = 0;
  std::size_t chunk_;
  std::string what_;
  std::vector<char> buffer_;
  const char* data_ = nullptr;
  std::size_t pos_ = 0, end_ = 0;
};

class StreamReader : public RecordReader {
 public:
  StreamReader(std::unique_ptr<ByteStream> in, std::string what, const SourceOptions& options)
      : in_(std::move(in)), what_(std::move(what)), options_(options),
        limit_(static_cast<std::size_t>(options.max_record_bytes)) {}
  std::int64_t bytesRead() const override { return in_->consumed(); }
  std::int64_t bytesTotal() const override { return in_->total(); }

 protected:
  [[noreturn]] void fail(std::int64_t line, const std::string& why) const {
    throw InputError(what_ + ":" + std::to_string(line) + ": " + why);
  }
  std::string tooLong(const char* what) const {
    return std::string(what) + " longer than " + std::to_string(options_.max_record_bytes) + " bytes";
  }

  std::unique_ptr<ByteStream> in_;
  std::string what_;
  SourceOptions options_;
  std::size_t limit_;
  std::int64_t line_ = 0;  // lines consumed so far
};

bool isBlank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

// Lines keep a trailing '\r', as prepareDataset always did, so token streams stay the same.
class TextReader : public StreamReader {
 public:
  using StreamReader::StreamReader;

  bool next(TextRecord& out) override {
    out = TextRecord();
    while (true) {
      const auto status = in_->readLine(line_text_, limit_);
      if (status == ByteStream::Line::kEnd) break;
      ++line_;
      if (status == ByteStream::Line::kTooLong) fail(line_, tooLong("line"));
      if (isBlank(line_text_)) {
        if (!out.text.empty()) break;
        continue;
      }
      if (out.text.empty()) out.line = line_;
      if (out.text.size() + line_text_.size() > limit_) fail(out.line, tooLong("document"));
      out.text += line_text_;
      out.text += '\n';
    }
    if (out.text.empty()) return false;
    out.text.pop_back();
    return true;
  }

 private:
  std::string line_text_;
};

class JsonlReader : public StreamReader {
 public:
  using StreamReader::StreamReader;

  bool next(TextRecord& out) override {
    out = TextRecord();
    while (true) {
      const auto status = in_->readLine(line_text_, limit_);
      if (status == ByteStream::Line::kEnd) return false;
      ++line_;
      if (status == ByteStream::Line::kTooLong) fail(line_, tooLong("line"));
      if (isBlank(line_text_)) continue;
      out.line = line_;
      try {
        parse(out);
      } catch (const InputError& e) {
        // JsonError texts already start with what_:LINE; they may quote decoded keys.
        throw InputError(oneLine(e.what(), 1000));
      }
      return true;
    }
  }

 private:
  void parse(TextRecord& out) const {
    const std::string at = what_ + ":" + std::to_string(line_);
    const Json j = parseJson(line_text_, at);
    if (!j.isObject()) fail(line_, std::string("expected a JSON object, found ") + jsonTypeName(j.type()));
    auto field = [&](const std::string& key) { return key.empty() ? nullptr : j.find(key); };
    auto text = [&](const Json* value, const std::string& key) { return value->asString(at + ": \"" + key + "\""); };
    if (const Json* m = field(options_.messages_field)) {
      const std::string key = at + ": \"" + oneLine(options_.messages_field) + "\"";
      for (const Json& message : m->asArray(key)) {
        if (!message.isObject()) fail(line_, "\"" + oneLine(options_.messages_field) + "\": each message must be an object with \"role\" and \"content\"");
        const Json* role = message.find("role");
        const Json* content = message.find("content");
        if (!role || !content)
          fail(line_, "\"" + oneLine(options_.messages_field) + "\": a message without \"" + (role ? "content" : "role") + "\"");
        out.messages.push_back({role->asString(key + " role"), content->asString(key + " content")});
      }
      if (out.messages.empty()) fail(line_, "\"" + oneLine(options_.messages_field) + "\": an empty conversation");
    } else if (const Json* t = field(options_.text_field)) {
      out.text = text(t, options_.text_field);
    } else {
      const Json* p = field(options_.prompt_field);
      const Json* c = field(options_.completion_field);
      if (!p || !c)
        fail(line_, "no \"" + oneLine(options_.messages_field) + "\" nor \"" + oneLine(options_.text_field) + "\" field (nor \"" +
                        oneLine(options_.prompt_field) + "\" and \"" + oneLine(options_.completion_field) + "\")");
      out.prompt = text(p, options_.prompt_field);
      out.completion = text(c, options_.completion_field);
    }
    if (const Json* label = field(options_.label_field)) {
      if (label->isInteger()) out.label = std::to_string(label->asInt(at));
      else if (label->isString()) out.label = label->asString(at);
      else fail(line_, "\"" + oneLine(options_.label_field) + "\": expected a string or an integer, found " +
                           jsonTypeName(label->type()));
    } else if (options_.require_label) {
      fail(line_, "no \"" + oneLine(options_.label_field) + "\" field");
    }
  }

  std::string line_text_;
};

class CsvReader : public StreamReader {
 public:
  CsvReader(std::unique_ptr<ByteStream> in, std::string what, const SourceOptions& options, char delimiter)
      : StreamReader(std::move(in), std::move(what), options), delimiter_(static_cast<unsigned char>(delimiter)) {
    readHeader();
  }

  bool next(TextRecord& out) override {
    out = TextRecord();
    for (auto& f : fields_) f.clear();
    std::int64_t count = 0;
    if (!readRow(&count)) return false;
    if (count != static_cast<std::int64_t>(columns_.size()))
      fail(row_line_, "row has " + std::to_string(count) + " field" + (count == 1 ? "" : "s") + ", the header has " +
                          std::to_string(columns_.size()));
    out.line = row_line_;
    if (has_text_) {
      out.text = std::move(fields_[kText]);
    } else {
      out.prompt = std::move(fields_[kPrompt]);
      out.completion = std::move(fields_[kCompletion]);
    }
    out.label = std::move(fields_[kLabel]);
    return true;
  }

 private:
  enum Slot { kText, kPrompt, kCompletion, kLabel, kSlots };
  static constexpr std::size_t kMaxColumns = 1 << 16;

  void readHeader() {
    header_mode_ = true;
    std::int64_t count = 0;
    if (!readRow(&count)) fail(1, "no header row (empty file)");
    header_mode_ = false;
    auto find = [&](const std::string& name) -> std::int64_t {
      if (name.empty()) return -1;
      const auto it = std::find(header_.begin(), header_.end(), name);
      return it == header_.end() ? -1 : it - header_.begin();
    };
    columns_.assign(header_.size(), -1);
    auto assign = [&](std::int64_t column, Slot slot) {
      if (column >= 0 && columns_[static_cast<std::size_t>(column)] < 0) columns_[static_cast<std::size_t>(column)] = slot;
    };
    const std::int64_t text = find(options_.text_field), prompt = find(options_.prompt_field),
                       completion = find(options_.completion_field), label = find(options_.label_field);
    has_text_ = text >= 0;
    if (!has_text_ && (prompt < 0 || completion < 0))
      fail(row_line_, "no column \"" + oneLine(options_.text_field) + "\" (nor \"" + oneLine(options_.prompt_field) +
                          "\" and \"" + oneLine(options_.completion_field) + "\"); the header has " + listColumns());
    if (label < 0 && options_.require_label)
      fail(row_line_, "no column \"" + oneLine(options_.label_field) + "\"; the header has " + listColumns());
    if (has_text_) {
      assign(text, kText);
    } else {
      assign(prompt, kPrompt);
      assign(completion, kCompletion);
    }
    assign(label, kLabel);
    header_.clear();
    header_.shrink_to_fit();
  }

  std::string listColumns() const {
    std::string list;
    for (std::size_t i = 0; i < header_.size() && i < 20; ++i) list += (i ? ", \"" : "\"") + oneLine(header_[i], 64) + "\"";
    if (header_.size() > 20) list += ", ... (" + std::to_string(header_.size()) + " columns)";
    return list;
  }

  // Where field `index` of the current row goes: a header name, a wanted slot, or nowhere.
  std::string* target(std::int64_t index) {
    if (header_mode_) {
      if (header_.size() == kMaxColumns) fail(row_line_, "more than " + std::to_string(kMaxColumns) + " columns");
      header_.emplace_back();
      return &header_.back();
    }
    if (index >= static_cast<std::int64_t>(columns_.size())) return nullptr;
    const int slot = columns_[static_cast<std::size_t>(index)];
    return slot < 0 ? nullptr : &fields_[slot];
  }

  // One RFC 4180 record: fields split at the delimiter, ending at LF or CRLF (or the end of the
  // input); a field that starts with '"' runs to the matching quote and may hold delimiters,
  // newlines and "" for a quote. A quote inside an unquoted field is kept as text. Empty lines
  // are skipped. False when no record is left; *count gets the number of fields.
  bool readRow(std::int64_t* count) {
    int c;
    while (true) {
      c = in_->get();
      if (c < 0) return false;
      if (c == '\n') {
        ++line_;
        continue;
      }
      if (c == '\r' && in_->peek() == '\n') {
        in_->get();
        ++line_;
        continue;
      }
      break;
    }
    row_line_ = line_ + 1;
    std::size_t bytes = 0;
    auto take = [&](std::string* field, int ch) {
      if (++bytes > limit_) fail(row_line_, tooLong("record") + " (is a closing quote missing?)");
      if (field) field->push_back(static_cast<char>(ch));
    };
    for (std::int64_t index = 0;; ++index) {
      std::string* field = target(index);
      if (c == '"') {
        while (true) {
          c = in_->get();
          if (c < 0) fail(row_line_, "quoted field is not closed by the end of the input");
          if (c == '"') {
            if (in_->peek() != '"') break;
            in_->get();
          }
          if (c == '\n') ++line_;
          take(field, c);
        }
        c = in_->get();
        if (c == '\r' && in_->peek() == '\n') c = in_->get();
        if (c >= 0 && c != delimiter_ && c != '\n')
          fail(line_ + 1, "text after the closing quote of a field (a quote inside a quoted field is written \"\")");
      } else {
        while (c >= 0 && c != delimiter_ && c != '\n') {
          if (c == '\r' && in_->peek() == '\n') {
            c = in_->get();
            break;
          }
          take(field, c);
          c = in_->get();
        }
      }
      if (c != delimiter_) {
        *count = index + 1;
        if (c == '\n') ++line_;
        return true;
      }
      take(nullptr, c);
      c = in_->get();
    }
  }

  int delimiter_;
  bool header_mode_ = false, has_text_ = false;
  std::vector<std::string> header_;
  std::vector<int> columns_;  // column -> Slot, or -1
  std::string fields_[kSlots];
  std::int64_t row_line_ = 0;
};

std::string extension(const std::string& path) {
  const auto slash = path.find_last_of('/');
  const auto dot = path.find_last_of('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  std::string ext = path.substr(dot + 1);
  for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext;
}

std::unique_ptr<RecordReader> makeReader(std::unique_ptr<ByteStream> in, const std::string& what,
                                         const SourceOptions& options) {
  if (options.max_record_bytes <= 0) throw InputError(what + ": max_record_bytes must be positive");
  std::string format = options.format;
  const std::string ext = extension(what);
  if (format == "auto") format = ext == "jsonl" || ext == "json" ? "jsonl" : ext == "csv" || ext == "tsv" ? "csv" : "text";
  if (format == "text") return std::make_unique<TextReader>(std::move(in), what, options);
  if (format == "jsonl") return std::make_unique<JsonlReader>(std::move(in), what, options);
  if (format == "csv") {
    const char delimiter = options.delimiter ? options.delimiter : ext == "tsv" ? '\t' : ',';
    if (delimiter == '"' || delimiter == '\n' || delimiter == '\r')
      throw InputError(what + ": a quote or a line break cannot be the CSV delimiter");
    return std::make_unique<CsvReader>(std::move(in), what, options, delimiter);
  }
  throw InputError(what + ": unknown format '" + oneLine(options.format) + "' (expected auto, text, jsonl or csv)");
}

}  // namespace

std::unique_ptr<RecordReader> openRecords(const std::string& path, const SourceOptions& options) {
  if (isDirectory(path)) throw InputError(path + ": is a directory, expected a file");
  auto file = std::make_unique<std::ifstream>(path, std::ios::binary);
  if (!*file) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  const std::int64_t total = ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : -1;
  return makeReader(std::make_unique<ByteStream>(std::move(file), std::string(), total, options.read_buffer_bytes, path),
                    path, options);
}

std::unique_ptr<RecordReader> openRecordsFromString(std::string data, const std::string& what,
                                                    const SourceOptions& options) {
  const auto total = static_cast<std::int64_t>(data.size());
  return makeReader(std::make_unique<ByteStream>(nullptr, std::move(data), total, options.read_buffer_bytes, what),
                    what, options);
}

StratifiedSplit::StratifiedSplit(double val_fraction, std::uint64_t seed) : fraction_(val_fraction), seed_(seed) {
  if (!(val_fraction >= 0 && val_fraction < 1)) throw InputError("validation fraction must be in [0, 1)");
}

bool StratifiedSplit::isVal(const std::string& label) {
  auto [it, added] = labels_.try_emplace(label);
  Count& count = it->second;
  if (added) {
    std::uint64_t h = 14695981039346656037ull;  // FNV-1a over the label, then mixed with the seed
    for (unsigned char ch : label) h = (h ^ ch) * 1099511628211ull;
    count.phase = static_cast<double>(mix64(seed_ ^ mix64(h)) >> 11) * 0x1p-53;
  }
  const auto k = static_cast<double>(count.seen++);
  return std::floor((k + 1) * fraction_ + count.phase) > std::floor(k * fraction_ + count.phase);
}

FewShotLimit::FewShotLimit(std::int64_t per_label) : per_label_(per_label) {
  if (per_label < 0) throw InputError("examples per label must be >= 0");
}

bool FewShotLimit::take(const std::string& label) {
  if (per_label_ == 0) return true;
  std::int64_t& taken = taken_[label];
  if (taken >= per_label_) return false;
  ++taken;
  return true;
}

}  // namespace graft
