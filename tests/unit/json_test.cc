#include "util/json.h"

#include <gtest/gtest.h>

namespace graft {
namespace {

TEST(Json, ParsesNestedDocumentAndKeepsKeyOrder) {
  const Json j = parseJson(R"( {"b": [1, -2, 3.5e1, true, null], "a": {"s": "x\"\u00e9\ud83d\ude00\n"}} )", "doc");
  const auto& members = j.asObject("doc");
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].first, "b");
  const auto& b = j.at("b", "doc").asArray("b");
  EXPECT_EQ(b[0].asInt("b0"), 1);
  EXPECT_EQ(b[1].asInt("b1"), -2);
  EXPECT_FALSE(b[2].isInteger());
  EXPECT_DOUBLE_EQ(b[2].asNumber("b2"), 35.0);
  EXPECT_TRUE(b[3].asBool("b3"));
  EXPECT_TRUE(b[4].isNull());
  EXPECT_EQ(j.at("a", "doc").at("s", "a").asString("s"), "x\"\xC3\xA9\xF0\x9F\x98\x80\n");
}

TEST(Json, DumpThenParseRoundTrips) {
  Json j = Json::object();
  j.set("name", "tiny\t\"gpt\"");
  j.set("n", std::int64_t{1} << 40);
  j.set("eps", 1e-5);
  j.set("list", Json::array()).push(Json(3));
  j.set("none", Json());
  for (int indent : {-1, 2}) {
    const Json back = parseJson(j.dump(indent), "dump");
    EXPECT_EQ(back.dump(), j.dump());
    EXPECT_EQ(back.at("n", "x").asInt("n"), std::int64_t{1} << 40);
    EXPECT_DOUBLE_EQ(back.at("eps", "x").asNumber("eps"), 1e-5);
  }
}

TEST(Json, ErrorsNameTheSourceAndOffset) {
  auto message = [](const std::string& text) {
    try {
      parseJson(text, "cfg.json");
    } catch (const JsonError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("{\"a\": 1,}"), "cfg.json: invalid JSON at byte 8: expected a string key");
  EXPECT_NE(message("[1, 2").find("expected ',' or ']'"), std::string::npos);
  EXPECT_NE(message("\"abc").find("unterminated string"), std::string::npos);
  EXPECT_NE(message("{} x").find("after the JSON value"), std::string::npos);
  EXPECT_NE(message("\"\\ud800\"").find("surrogate"), std::string::npos);
  EXPECT_NE(message(std::string(100000, '[')).find("nested deeper"), std::string::npos);
  const Json j = parseJson("{\"a\": \"s\"}", "x");
  EXPECT_THROW(j.at("a", "x.a").asInt("x.a"), JsonError);
  EXPECT_THROW(j.at("missing", "x"), JsonError);
}

}  // namespace
}  // namespace graft
