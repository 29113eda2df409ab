// libFuzzer target: the CSV reader of src/data/text_sources.cc on arbitrary bytes, with the
// header choosing columns (text + label, or prompt + completion under a second configuration),
// and the checks of record_fuzz.h. A small record limit makes the "record too long" path reachable.
#include <cstddef>
#include <cstdint>

#include "record_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace graft;
  const std::string input(reinterpret_cast<const char*>(data), size);
  SourceOptions options;
  options.max_record_bytes = 1024;
  fuzz::readBothWays(input, "fuzz.csv", options);

  SourceOptions other;  // ';'-delimited, no text column: prompt + completion, label required
  other.format = "csv";
  other.delimiter = ';';
  other.text_field = "";
  other.require_label = true;
  other.max_record_bytes = 1024;
  fuzz::readBothWays(input, "fuzz.txt", other);
  return 0;
}
