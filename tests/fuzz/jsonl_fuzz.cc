// libFuzzer target: the line-based readers of src/data/text_sources.cc on arbitrary bytes, with
// the checks of record_fuzz.h. JSONL: every record read is also written back as a JSON line with
// Json::dump and must read back the same, whatever bytes its strings hold. Text: every document
// is non-empty and none of its lines is blank (blank lines separate documents).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "record_fuzz.h"
#include "util/json.h"

namespace {

void roundTrip(const graft::fuzz::Outcome& outcome, const graft::SourceOptions& options) {
  using namespace graft;
  std::string lines;
  for (const TextRecord& r : outcome.records) {
    Json j = Json::object();
    if (r.prompt.empty() && r.completion.empty()) {
      j.set("text", r.text);
    } else {
      j.set("prompt", r.prompt);
      j.set("completion", r.completion);
    }
    j.set("label", r.label);
    lines += j.dump() + "\n";
  }
  SourceOptions plain = options;
  plain.text_field = "text";
  plain.label_field = "label";
  plain.require_label = false;
  plain.max_record_bytes = std::int64_t{1} << 30;  // escapes make lines longer than the texts
  const fuzz::Outcome back = fuzz::readRecords(lines, "back.jsonl", plain);
  fuzz::check(back.error.empty(), "dumped records read back", back.error);
  fuzz::check(back.records.size() == outcome.records.size(), "dumped record count");
  for (std::size_t i = 0; i < back.records.size(); ++i) {
    const TextRecord &a = outcome.records[i], &b = back.records[i];
    fuzz::check(a.text == b.text && a.prompt == b.prompt && a.completion == b.completion && a.label == b.label,
                "dumped record reads back the same");
  }
}

void checkDocuments(const graft::fuzz::Outcome& outcome) {
  for (const graft::TextRecord& r : outcome.records) {
    std::size_t start = 0;
    while (true) {
      const std::size_t end = std::min(r.text.find('\n', start), r.text.size());
      graft::fuzz::check(r.text.find_first_not_of(" \t\r", start) < end, "no blank line inside a document");
      if (end == r.text.size()) break;
      start = end + 1;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace graft;
  const std::string input(reinterpret_cast<const char*>(data), size);
  SourceOptions options;
  options.max_record_bytes = 1024;
  roundTrip(fuzz::readBothWays(input, "fuzz.jsonl", options), options);

  SourceOptions other;  // prompt + completion only, label "y" required
  other.format = "jsonl";
  other.text_field = "";
  other.label_field = "y";
  other.require_label = true;
  other.max_record_bytes = 1024;
  roundTrip(fuzz::readBothWays(input, "fuzz.txt", other), other);

  SourceOptions text;
  text.max_record_bytes = 1024;
  checkDocuments(fuzz::readBothWays(input, "fuzz.txt", text));
  return 0;
}
