// A small JSON reader and writer for the files graft meets: Hugging Face config.json, tokenizer.json,
// safetensors headers, PEFT adapter configs, JSONL records. No torch.
//
// Hostile input is expected (libFuzzer target tests/fuzz/json_fuzz.cc): nesting is bounded, every
// error is a JsonError naming what was parsed and the byte offset, and nothing reads out of range.
// Objects keep their keys in file order; find() is a linear scan (these objects are small, and
// the large ones, vocabularies, are iterated, not searched).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "util/error.h"

namespace graft {

class JsonError : public InputError {
 public:
  using InputError::InputError;
};

class Json {
 public:
  enum class Type { Null, Bool, Number, String, Array, Object };
  using Members = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(bool b) : type_(Type::Bool), bool_(b) {}
  Json(double d) : type_(Type::Number), number_(d) {}
  Json(std::int64_t i) : type_(Type::Number), number_(static_cast<double>(i)), integer_(i), is_integer_(true) {}
  Json(int i) : Json(static_cast<std::int64_t>(i)) {}
  Json(std::string s) : type_(Type::String), string_(std::move(s)) {}
  Json(const char* s) : Json(std::string(s)) {}
  static Json array() { Json j; j.type_ = Type::Array; return j; }
  static Json object() { Json j; j.type_ = Type::Object; return j; }

  Type type() const { return type_; }
  bool isNull() const { return type_ == Type::Null; }
  bool isNumber() const { return type_ == Type::Number; }
  bool isString() const { return type_ == Type::String; }
  bool isArray() const { return type_ == Type::Array; }
  bool isObject() const { return type_ == Type::Object; }
  bool isInteger() const { return type_ == Type::Number && is_integer_; }

  // Typed access; a wrong type throws JsonError("<what>: expected <type>, found <type>").
  bool asBool(const std::string& what) const;
  double asNumber(const std::string& what) const;
  std::int64_t asInt(const std::string& what) const;  // exact integers only
  const std::string& asString(const std::string& what) const;
  const std::vector<Json>& asArray(const std::string& what) const;
  const Members& asObject(const std::string& what) const;

  // Member of an object, or nullptr when absent or this is not an object.
  const Json* find(const std::string& key) const;
  // Member that must exist: throws JsonError("<what>: no \"key\"").
  const Json& at(const std::string& key, const std::string& what) const;

  // Building.
  Json& set(const std::string& key, Json value);  // replaces an existing key
  Json& push(Json value);

  // Compact when indent < 0, else pretty with that many spaces. Keys in insertion order.
  std::string dump(int indent = -1) const;

 private:
  friend class JsonParser;
  Type type_ = Type::Null;
  bool bool_ = false;
  double number_ = 0;
  std::int64_t integer_ = 0;
  bool is_integer_ = false;
  std::string string_;
  std::vector<Json> array_;
  Members object_;
};

const char* jsonTypeName(Json::Type type);

// Parses one JSON value (surrounding whitespace allowed, nothing else). `what` names the source in
// errors, e.g. "model/config.json".
Json parseJson(std::string_view text, const std::string& what);

}  // namespace graft
