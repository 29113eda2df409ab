// libFuzzer target: the INI reader of src/config/train_config.cc, through parseTrainConfigText
// (the entry point tests and checkpoint resume use), on arbitrary bytes. Bad input must be a
// one-line InputError naming the origin; a config that parses must print (resolved()) as INI
// that parses back to the same config, and validate() may only throw InputError.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "config/train_config.h"
#include "util/error.h"

namespace {

[[noreturn]] void failed(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz check failed: %s\n%s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace graft;
  const std::string ini(reinterpret_cast<const char*>(data), size);
  TrainConfig config;
  try {
    config = parseTrainConfigText(ini, "fuzz.ini");
  } catch (const InputError& e) {
    const std::string message = e.what();
    if (message.find('\n') != std::string::npos) failed("error spans lines", message);
    return 0;
  }
  for (int world : {1, 3}) {
    try {
      config.validate(world);
    } catch (const InputError&) {
    }
  }
  const std::string resolved = config.resolved();
  try {
    const std::string again = parseTrainConfigText(resolved, "resolved.ini").resolved();
    if (again != resolved) failed("resolved() does not parse back to itself", resolved + "----\n" + again);
  } catch (const InputError& e) {
    failed("resolved() does not parse", resolved + "----\n" + e.what());
  }
  return 0;
}
