// Checks shared by the record-reader fuzz targets (csv_fuzz.cc, jsonl_fuzz.cc): beyond what the
// sanitizers catch, a reader must fail only with a one-line InputError naming the input and a
// line, give the same records with a 4-byte read buffer as with the default one (the chunk
// boundaries a large file meets), number records by increasing line, and end at bytesTotal.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "data/text_sources.h"
#include "util/error.h"

namespace graft::fuzz {

inline void check(bool ok, const char* what, const std::string& detail = "") {
  if (ok) return;
  std::fprintf(stderr, "fuzz check failed: %s %s\n", what, detail.c_str());
  std::abort();
}

struct Outcome {
  std::vector<TextRecord> records;
  std::string error;
};

inline Outcome readRecords(const std::string& input, const std::string& what, const SourceOptions& options) {
  Outcome out;
  try {
    auto reader = openRecordsFromString(input, what, options);
    check(reader->bytesTotal() == static_cast<std::int64_t>(input.size()), "bytesTotal");
    TextRecord r;
    std::int64_t read = reader->bytesRead();
    while (reader->next(r)) {
      check(r.line >= 1 && (out.records.empty() || r.line > out.records.back().line), "record lines increase");
      check(static_cast<std::int64_t>(r.text.size() + r.prompt.size() + r.completion.size()) <= options.max_record_bytes,
            "record within max_record_bytes");
      check(reader->bytesRead() >= read, "bytesRead never goes back");
      read = reader->bytesRead();
      out.records.push_back(r);
    }
    check(reader->bytesRead() == reader->bytesTotal(), "bytesRead reaches bytesTotal at the end");
  } catch (const InputError& e) {
    out.error = e.what();
    check(out.error.find('\n') == std::string::npos, "one-line error", out.error);
    std::size_t at = what.size() + 1;
    check(out.error.rfind(what + ":", 0) == 0, "error names the input", out.error);
    while (at < out.error.size() && out.error[at] >= '0' && out.error[at] <= '9') ++at;
    check(at > what.size() + 1 && out.error.compare(at, 2, ": ") == 0, "error names a line", out.error);
  }
  return out;
}

// Reads `input` with the default buffer and with a 4-byte one; both must agree.
inline Outcome readBothWays(const std::string& input, const std::string& what, SourceOptions options) {
  const Outcome whole = readRecords(input, what, options);
  options.read_buffer_bytes = 4;
  const Outcome chunked = readRecords(input, what, options);
  check(whole.error == chunked.error, "same error with a small buffer", whole.error + " | " + chunked.error);
  check(whole.records.size() == chunked.records.size(), "same record count with a small buffer");
  for (std::size_t i = 0; i < whole.records.size(); ++i) {
    const TextRecord &a = whole.records[i], &b = chunked.records[i];
    check(a.text == b.text && a.prompt == b.prompt && a.completion == b.completion && a.label == b.label &&
              a.line == b.line,
          "same records with a small buffer");
  }
  return whole;
}

}  // namespace graft::fuzz
