#include <gtest/gtest.h>

#include "io/tokenizer.h"
#include "util/error.h"

namespace graft {
namespace {

const std::string kTok = std::string(GRAFT_SHARED_DATA) + "/llama2c/tok512.bin";

TEST(Tokenizer, Llama2cKnownPieces) {
  auto tok = loadTokenizer(kTok);
  EXPECT_EQ(tok->vocabSize(), 512);
  // FORMAT.md: " Once" is id 403; BOS first, dummy-prefix space merged into the word.
  const auto ids = tok->encode("Once", true, false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 403);
}

TEST(Tokenizer, Llama2cRoundTripsTextThroughDecode) {
  auto tok = loadTokenizer(kTok);
  const std::string text = "Lily's mom said, \"Let's go to the park.\" Überall 🙂";
  const auto ids = tok->encode(text, true, false);
  std::string decoded;
  for (std::size_t i = 1; i < ids.size(); ++i) decoded += tok->decode(ids[i - 1], ids[i]);
  EXPECT_EQ(decoded, text);  // leading dummy space is dropped after BOS
}

TEST(Tokenizer, EmptyTextIsJustBos) {
  auto tok = loadTokenizer(kTok);
  EXPECT_EQ(tok->encode("", true, false), std::vector<int>{1});
}

TEST(Tokenizer, BytesTokenizerIsOffsetBytes) {
  auto tok = loadTokenizer("bytes");
  EXPECT_EQ(tok->vocabSize(), 259);
  EXPECT_EQ(tok->encode("Hi", true, true), (std::vector<int>{1, 'H' + 3, 'i' + 3, 2}));
  EXPECT_EQ(tok->decode(1, 'x' + 3), "x");
}

TEST(Tokenizer, PrintableDropsLoneControlBytes) {
  EXPECT_EQ(Tokenizer::printable(std::string(1, '\x01')), "");
  EXPECT_EQ(Tokenizer::printable("\n"), "\n");
  EXPECT_EQ(Tokenizer::printable("ab"), "ab");
}

TEST(Tokenizer, MissingAndTruncatedFilesNameTheFile) {
  try {
    loadTokenizer("/nonexistent/tok.bin");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tok.bin"), std::string::npos);
  }
  const std::string path = ::testing::TempDir() + "/truncated_tok.bin";
  FILE* f = fopen(path.c_str(), "wb");
  const int header[3] = {7, 0, 5};  // max_len, then a score and a length 5 with no bytes
  fwrite(header, 4, 3, f);
  fclose(f);
  EXPECT_THROW(loadTokenizer(path), InputError);
}

}  // namespace
}  // namespace graft
