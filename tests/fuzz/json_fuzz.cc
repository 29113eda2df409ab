// libFuzzer target: parseJson (src/util/json.cc) on arbitrary bytes. Besides memory errors and
// unbounded recursion, it checks that a rejection is a one-line JsonError naming the source and
// the byte offset (graft prints errors as one line), and that anything parsed dumps (compact and pretty) to JSON that
// parses back to the same value: numbers compare as doubles (so -0.0 may come back as 0, and
// 100.0 as the integer 100), integers stay exact, and non-finite numbers (1e999) dump as null.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "util/json.h"

namespace {

using graft::Json;

bool sameValue(const Json& a, const Json& b) {
  if (a.isNumber() && !std::isfinite(a.asNumber(""))) return b.isNull();
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case Json::Type::Null: return true;
    case Json::Type::Bool: return a.asBool("") == b.asBool("");
    case Json::Type::Number:
      if (a.isInteger() && (!b.isInteger() || a.asInt("") != b.asInt(""))) return false;
      return a.asNumber("") == b.asNumber("");
    case Json::Type::String: return a.asString("") == b.asString("");
    case Json::Type::Array: {
      const auto &x = a.asArray(""), &y = b.asArray("");
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (!sameValue(x[i], y[i])) return false;
      return true;
    }
    case Json::Type::Object: {
      const auto &x = a.asObject(""), &y = b.asObject("");
      if (x.size() != y.size()) return false;
      for (std::size_t i = 0; i < x.size(); ++i)
        if (x[i].first != y[i].first || !sameValue(x[i].second, y[i].second)) return false;
      return true;
    }
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Json value;
  try {
    value = graft::parseJson(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
  } catch (const graft::JsonError& e) {
    const std::string message = e.what();
    if (message.rfind("fuzz.json: invalid JSON at byte ", 0) != 0 || message.find('\n') != std::string::npos) {
      std::fprintf(stderr, "fuzz check failed: error is not one line naming the source and offset: %s\n", message.c_str());
      std::abort();
    }
    return 0;
  }
  for (int indent : {-1, 2}) {
    const std::string text = value.dump(indent);
    Json back;
    try {
      back = graft::parseJson(text, "dump");
    } catch (const graft::JsonError& e) {
      std::fprintf(stderr, "fuzz check failed: dump() wrote JSON that does not parse: %s\n", e.what());
      std::abort();
    }
    if (!sameValue(value, back)) {
      std::fprintf(stderr, "fuzz check failed: dump then parse changed the value:\n%s\n", text.c_str());
      std::abort();
    }
  }
  return 0;
}
