#include "util/json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace graft {

const char* jsonTypeName(Json::Type type) {
  switch (type) {
    case Json::Type::Null: return "null";
    case Json::Type::Bool: return "a boolean";
    case Json::Type::Number: return "a number";
    case Json::Type::String: return "a string";
    case Json::Type::Array: return "an array";
    case Json::Type::Object: return "an object";
  }
  return "?";
}

namespace {
[[noreturn]] void wrongType(const std::string& what, const char* expected, Json::Type found) {
  throw JsonError(what + ": expected " + expected + ", found " + jsonTypeName(found));
}
}  // namespace

bool Json::asBool(const std::string& what) const {
  if (type_ != Type::Bool) wrongType(what, "a boolean", type_);
  return bool_;
}
double Json::asNumber(const std::string& what) const {
  if (type_ != Type::Number) wrongType(what, "a number", type_);
  return number_;
}
std::int64_t Json::asInt(const std::string& what) const {
  if (type_ != Type::Number || !is_integer_) wrongType(what, "an integer", type_);
  return integer_;
}
const std::string& Json::asString(const std::string& what) const {
  if (type_ != Type::String) wrongType(what, "a string", type_);
  return string_;
}
const std::vector<Json>& Json::asArray(const std::string& what) const {
  if (type_ != Type::Array) wrongType(what, "an array", type_);
  return array_;
}
const Json::Members& Json::asObject(const std::string& what) const {
  if (type_ != Type::Object) wrongType(what, "an object", type_);
  return object_;
}

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (const auto& m : object_)
    if (m.first == key) return &m.second;
  return nullptr;
}

const Json& Json::at(const std::string& key, const std::string& what) const {
  asObject(what);
  const Json* j = find(key);
  if (!j) throw JsonError(what + ": no \"" + key + "\"");
  return *j;
}

Json& Json::set(const std::string& key, Json value) {
  if (type_ == Type::Null) type_ = Type::Object;
  asObject("json set");
  for (auto& m : object_)
    if (m.first == key) return m.second = std::move(value);
  object_.emplace_back(key, std::move(value));
  return object_.back().second;
}

Json& Json::push(Json value) {
  if (type_ == Type::Null) type_ = Type::Array;
  asArray("json push");
  array_.push_back(std::move(value));
  return array_.back();
}

namespace {

void dumpString(const std::string& s, std::string& out) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void dumpValue(const Json& j, int indent, int depth, std::string& out) {
  auto newline = [&](int d) {
    if (indent < 0) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent * d), ' ');
  };
  switch (j.type()) {
    case Json::Type::Null: out += "null"; break;
    case Json::Type::Bool: out += j.asBool("") ? "true" : "false"; break;
    case Json::Type::Number: {
      if (j.isInteger()) {
        out += std::to_string(j.asInt(""));
      } else {
        const double d = j.asNumber("");
        if (!std::isfinite(d)) {
          out += "null";  // JSON has no inf/nan
        } else {
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%.17g", d);
          out += buf;
        }
      }
      break;
    }
    case Json::Type::String: dumpString(j.asString(""), out); break;
    case Json::Type::Array: {
      const auto& a = j.asArray("");
      // Arrays of scalars (shapes, id lists) stay on one line when pretty-printing.
      bool flat = true;
      for (const auto& e : a) flat = flat && !e.isArray() && !e.isObject();
      out += '[';
      for (std::size_t i = 0; i < a.size(); ++i) {
        if (i) out += flat && indent >= 0 ? ", " : ",";
        if (!flat) newline(depth + 1);
        dumpValue(a[i], indent, depth + 1, out);
      }
      if (!a.empty() && !flat) newline(depth);
      out += ']';
      break;
    }
    case Json::Type::Object: {
      const auto& o = j.asObject("");
      out += '{';
      for (std::size_t i = 0; i < o.size(); ++i) {
        if (i) out += ',';
        newline(depth + 1);
        dumpString(o[i].first, out);
        out += indent < 0 ? ":" : ": ";
        dumpValue(o[i].second, indent, depth + 1, out);
      }
      if (!o.empty()) newline(depth);
      out += '}';
      break;
    }
  }
}

void appendUtf8(std::uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace

std::string Json::dump(int indent) const {
  std::string out;
  dumpValue(*this, indent, 0, out);
  return out;
}

class JsonParser {
 public:
  JsonParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  Json parseDocument() {
    Json v = value(0);
    skipSpace();
    if (at_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 512;

  [[noreturn]] void fail(const std::string& why) const {
    throw JsonError(what_ + ": invalid JSON at byte " + std::to_string(at_) + ": " + why);
  }

  // Input text quoted in an error: at most 64 bytes, control and non-ASCII bytes as \xNN, so the
  // message stays one line whatever the file holds.
  static std::string quote(std::string_view text) {
    std::string out;
    for (unsigned char c : text.substr(0, 64)) {
      if (c >= 0x20 && c < 0x7f) {
        out += static_cast<char>(c);
      } else {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\x%02x", c);
        out += buf;
      }
    }
    return out;
  }

  void skipSpace() {
    while (at_ < s_.size() && (s_[at_] == ' ' || s_[at_] == '\n' || s_[at_] == '\r' || s_[at_] == '\t')) ++at_;
  }

  bool consume(char c) {
    skipSpace();
    if (at_ < s_.size() && s_[at_] == c) {
      ++at_;
      return true;
    }
    return false;
  }

  void expectWord(const char* word) {
    for (const char* p = word; *p; ++p, ++at_)
      if (at_ >= s_.size() || s_[at_] != *p) fail(std::string("expected '") + word + "'");
  }

  Json value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    skipSpace();
    if (at_ >= s_.size()) fail("unexpected end of input");
    const char c = s_[at_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return Json(string());
    if (c == 't') { expectWord("true"); return Json(true); }
    if (c == 'f') { expectWord("false"); return Json(false); }
    if (c == 'n') { expectWord("null"); return Json(); }
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    fail("unexpected character '" + quote(std::string_view(&s_[at_], 1)) + "'");
  }

  Json object(int depth) {
    ++at_;  // {
    Json obj = Json::object();
    if (consume('}')) return obj;
    do {
      skipSpace();
      if (at_ >= s_.size() || s_[at_] != '"') fail("expected a string key");
      std::string key = string();
      if (!consume(':')) fail("expected ':' after key \"" + quote(key) + "\"");
      obj.object_.emplace_back(std::move(key), value(depth + 1));
    } while (consume(','));
    if (!consume('}')) fail("expected ',' or '}' in object");
    return obj;
  }

  Json array(int depth) {
    ++at_;  // [
    Json arr = Json::array();
    if (consume(']')) return arr;
    do {
      arr.array_.push_back(value(depth + 1));
    } while (consume(','));
    if (!consume(']')) fail("expected ',' or ']' in array");
    return arr;
  }

  unsigned hex4() {
    if (at_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[at_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad hex digit in \\u escape");
    }
    return v;
  }

  std::string string() {
    ++at_;  // "
    std::string out;
    while (true) {
      if (at_ >= s_.size()) fail("unterminated string");
      const char c = s_[at_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (at_ >= s_.size()) fail("unterminated escape");
      const char e = s_[at_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00) {  // high surrogate: a low one must follow
            if (at_ + 2 <= s_.size() && s_[at_] == '\\' && s_[at_ + 1] == 'u') {
              at_ += 2;
              const std::uint32_t lo = hex4();
              if (lo < 0xDC00 || lo >= 0xE000) fail("unpaired surrogate in \\u escape");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              fail("unpaired surrogate in \\u escape");
            }
          } else if (cp >= 0xDC00 && cp < 0xE000) {
            fail("unpaired surrogate in \\u escape");
          }
          appendUtf8(cp, out);
          break;
        }
        default: fail("bad escape '\\" + quote(std::string_view(&e, 1)) + "'");
      }
    }
  }

  Json number() {
    const std::size_t start = at_;
    bool integral = true;
    if (s_[at_] == '-') ++at_;
    auto digits = [&]() {
      const std::size_t from = at_;
      while (at_ < s_.size() && s_[at_] >= '0' && s_[at_] <= '9') ++at_;
      if (at_ == from) fail("expected a digit");
    };
    digits();
    if (at_ < s_.size() && s_[at_] == '.') {
      integral = false;
      ++at_;
      digits();
    }
    if (at_ < s_.size() && (s_[at_] == 'e' || s_[at_] == 'E')) {
      integral = false;
      ++at_;
      if (at_ < s_.size() && (s_[at_] == '+' || s_[at_] == '-')) ++at_;
      digits();
    }
    const std::string text(s_.substr(start, at_ - start));
    if (integral) {
      errno = 0;
      char* end = nullptr;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (errno == 0 && end == text.c_str() + text.size()) return Json(static_cast<std::int64_t>(v));
    }
    return Json(std::strtod(text.c_str(), nullptr));
  }

  std::string_view s_;
  const std::string& what_;
  std::size_t at_ = 0;
};

Json parseJson(std::string_view text, const std::string& what) { return JsonParser(text, what).parseDocument(); }

}  // namespace graft
