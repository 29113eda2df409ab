// Record readers (text, JSONL, CSV) and the stratified split. banking77's CSV is checked against
// Python's csv module, an independent parser; the hand-written inputs are read with several
// buffer sizes so that every chunk boundary falls inside quotes, CRLFs and the BOM.
#include "data/text_sources.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>

#include "util/error.h"

namespace graft {
namespace {

const std::string kBanking = std::string(GRAFT_SHARED_DATA) + "/datasets/banking77/train.csv";

struct Result {
  std::vector<TextRecord> records;
  std::string error;  // the InputError's message, "" when none
};

Result readAll(const std::string& data, const std::string& what, const SourceOptions& options) {
  Result result;
  try {
    auto reader = openRecordsFromString(data, what, options);
    TextRecord r;
    while (reader->next(r)) result.records.push_back(r);
    EXPECT_EQ(reader->bytesRead(), reader->bytesTotal());
  } catch (const InputError& e) {
    result.error = e.what();
  }
  return result;
}

// Reads with buffers of 4 to 9 bytes and the default, and checks that all agree.
Result readChunked(const std::string& data, const std::string& what, SourceOptions options = {}) {
  const Result whole = readAll(data, what, options);
  for (int chunk = 4; chunk <= 9; ++chunk) {
    options.read_buffer_bytes = chunk;
    const Result part = readAll(data, what, options);
    EXPECT_EQ(part.error, whole.error) << "buffer " << chunk;
    EXPECT_EQ(part.records.size(), whole.records.size()) << "buffer " << chunk;
    for (std::size_t i = 0; i < part.records.size() && i < whole.records.size(); ++i) {
      EXPECT_EQ(part.records[i].text, whole.records[i].text) << "buffer " << chunk << " record " << i;
      EXPECT_EQ(part.records[i].label, whole.records[i].label) << "buffer " << chunk << " record " << i;
      EXPECT_EQ(part.records[i].line, whole.records[i].line) << "buffer " << chunk << " record " << i;
    }
  }
  EXPECT_EQ(whole.error.find('\n'), std::string::npos) << whole.error;
  return whole;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string tempPath(const std::string& name) { return ::testing::TempDir() + "/graft_ts_" + std::to_string(getpid()) + "_" + name; }

// "<line> <hex text> <hex category>" per row, from Python's csv module.
std::vector<std::string> pythonBankingRows() {
  const std::string script = tempPath("ref.py");
  std::ofstream(script) << "import csv, sys\n"
                           "with open(sys.argv[1], newline='', encoding='utf-8-sig') as f:\n"
                           "    r = csv.reader(f)\n"
                           "    h = next(r)\n"
                           "    t, c = h.index('text'), h.index('category')\n"
                           "    start = r.line_num + 1\n"
                           "    for row in r:\n"
                           "        print(start, row[t].encode().hex(), row[c].encode().hex())\n"
                           "        start = r.line_num + 1\n";
  FILE* pipe = popen((GRAFT_PYTHON " " + script + " " + kBanking).c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  std::vector<std::string> rows;
  std::string line;
  for (int c; pipe && (c = std::fgetc(pipe)) != EOF;) {
    if (c != '\n') {
      line += static_cast<char>(c);
    } else {
      rows.push_back(line);
      line.clear();
    }
  }
  EXPECT_EQ(pipe ? pclose(pipe) : -1, 0);
  std::remove(script.c_str());
  return rows;
}

SourceOptions bankingOptions() {
  SourceOptions o;
  o.label_field = "category";
  o.require_label = true;
  return o;
}

TEST(TextSources, Banking77MatchesPythonCsv) {
  const auto expected = pythonBankingRows();
  ASSERT_EQ(expected.size(), 10003u);
  for (std::int64_t buffer : {std::int64_t{1} << 16, std::int64_t{5}}) {
    SourceOptions options = bankingOptions();
    options.read_buffer_bytes = buffer;
    auto reader = openRecords(kBanking, options);
    TextRecord r;
    std::size_t n = 0;
    while (reader->next(r)) {
      ASSERT_LT(n, expected.size());
      ASSERT_EQ(std::to_string(r.line) + " " + hex(r.text) + " " + hex(r.label), expected[n]) << "record " << n;
      ++n;
    }
    EXPECT_EQ(n, expected.size());
    EXPECT_EQ(reader->bytesRead(), reader->bytesTotal());
  }
}

TEST(TextSources, CsvQuotesNewlinesCrlfBomAndEmptyFields) {
  const std::string csv =
      "\xEF\xBB\xBF" "id,text,label\r\n"
      "1,plain,a\r\n"
      "2,\"with, comma\",b\n"
      "3,\"two\r\nlines and \"\"quotes\"\"\",\"\"\r\n"
      "\r\n"
      "4,,c\n"
      "5,say 5\" wide,d\n"
      "6,\"\",\n"
      "7,\"last\nno newline\",e";
  const Result r = readChunked(csv, "t.csv");
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.records.size(), 7u);
  const std::vector<std::string> texts = {"plain", "with, comma", "two\r\nlines and \"quotes\"", "", "say 5\" wide", "",
                                          "last\nno newline"};
  const std::vector<std::string> labels = {"a", "b", "", "c", "d", "", "e"};
  const std::vector<std::int64_t> lines = {2, 3, 4, 7, 8, 9, 10};
  for (std::size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(r.records[i].text, texts[i]) << i;
    EXPECT_EQ(r.records[i].label, labels[i]) << i;
    EXPECT_EQ(r.records[i].line, lines[i]) << i;
  }
}

TEST(TextSources, CsvTsvAndPromptCompletionColumns) {
  const Result tsv = readChunked("label\ttext\nx\thello, world\n", "t.tsv");
  ASSERT_EQ(tsv.error, "");
  ASSERT_EQ(tsv.records.size(), 1u);
  EXPECT_EQ(tsv.records[0].text, "hello, world");
  EXPECT_EQ(tsv.records[0].label, "x");

  const Result pc = readChunked("prompt,completion\n\"Q: 1+1\",2\n", "t.csv");
  ASSERT_EQ(pc.error, "");
  ASSERT_EQ(pc.records.size(), 1u);
  EXPECT_EQ(pc.records[0].prompt, "Q: 1+1");
  EXPECT_EQ(pc.records[0].completion, "2");
  EXPECT_EQ(pc.records[0].text, "");

  SourceOptions semicolon;
  semicolon.format = "csv";
  semicolon.delimiter = ';';
  const Result s = readChunked("text;label\na,b;c\n", "data.txt", semicolon);
  ASSERT_EQ(s.records.size(), 1u);
  EXPECT_EQ(s.records[0].text, "a,b");
}

TEST(TextSources, CsvErrorsNameFileAndLine) {
  EXPECT_EQ(readChunked("", "e.csv").error, "e.csv:1: no header row (empty file)");
  EXPECT_EQ(readChunked("text,label\n", "e.csv").records.size(), 0u);
  EXPECT_EQ(readChunked("id,body\n1,x\n", "e.csv").error,
            "e.csv:1: no column \"text\" (nor \"prompt\" and \"completion\"); the header has \"id\", \"body\"");
  EXPECT_EQ(readChunked("text,cat\nx,y\n", "e.csv", bankingOptions()).error,
            "e.csv:1: no column \"category\"; the header has \"text\", \"cat\"");
  EXPECT_EQ(readChunked("text,label\n\"a\nb\",1\nx,1,extra\n", "e.csv").error,
            "e.csv:4: row has 3 fields, the header has 2");
  EXPECT_EQ(readChunked("text,label\nx,1\nonly\n", "e.csv").error, "e.csv:3: row has 1 field, the header has 2");
  EXPECT_EQ(readChunked("text,label\nx,1\n\"open\n\nnever closed,1\n", "e.csv").error,
            "e.csv:3: quoted field is not closed by the end of the input");
  EXPECT_EQ(readChunked("text,label\n\"a\"b,1\n", "e.csv").error,
            "e.csv:2: text after the closing quote of a field (a quote inside a quoted field is written \"\")");
  SourceOptions small;
  small.max_record_bytes = 10;
  EXPECT_EQ(readChunked("text,label\nshort,1\n\"" + std::string(100, 'x'), "e.csv", small).error,
            "e.csv:3: record longer than 10 bytes (is a closing quote missing?)");
  // A header name with a line break is listed on one line.
  EXPECT_EQ(readChunked("\"a\nb\",c\n", "e.csv").error,
            "e.csv:1: no column \"text\" (nor \"prompt\" and \"completion\"); the header has \"a\\x0ab\", \"c\"");
  SourceOptions quote;
  quote.delimiter = '"';
  EXPECT_EQ(readChunked("text\n", "e.csv", quote).error, "e.csv: a quote or a line break cannot be the CSV delimiter");
}

TEST(TextSources, JsonlTextPromptCompletionAndLabels) {
  const std::string jsonl =
      "{\"text\": \"first\\nstory\", \"label\": \"pos\"}\n"
      "\n"
      "  \r\n"
      "{\"prompt\": \"Q\", \"completion\": \"A\", \"label\": 7}\r\n"
      "{\"text\": \"\\u00e9\", \"prompt\": \"ignored\"}";
  const Result r = readChunked(jsonl, "d.jsonl");
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.records[0].text, "first\nstory");
  EXPECT_EQ(r.records[0].label, "pos");
  EXPECT_EQ(r.records[0].line, 1);
  EXPECT_EQ(r.records[1].prompt, "Q");
  EXPECT_EQ(r.records[1].completion, "A");
  EXPECT_EQ(r.records[1].text, "");
  EXPECT_EQ(r.records[1].label, "7");
  EXPECT_EQ(r.records[1].line, 4);
  EXPECT_EQ(r.records[2].text, "\xC3\xA9");
  EXPECT_EQ(r.records[2].label, "");
  EXPECT_EQ(r.records[2].line, 5);

  SourceOptions custom;
  custom.text_field = "body";
  custom.label_field = "intent";
  const Result c = readChunked("{\"body\": \"b\", \"intent\": \"i\"}\n", "x.json", custom);
  ASSERT_EQ(c.records.size(), 1u);
  EXPECT_EQ(c.records[0].text, "b");
  EXPECT_EQ(c.records[0].label, "i");
}

TEST(TextSources, JsonlErrorsNameFileAndLine) {
  const std::string good = "{\"text\": \"ok\"}\n";
  EXPECT_EQ(readChunked(good + "{\"text\": \"ok\"\n", "b.jsonl").error.rfind("b.jsonl:2: invalid JSON at byte", 0), 0u);
  EXPECT_EQ(readChunked(good + "\n[1, 2]\n", "b.jsonl").error, "b.jsonl:3: expected a JSON object, found an array");
  EXPECT_EQ(readChunked(good + "{\"prompt\": \"p\"}\n", "b.jsonl").error,
            "b.jsonl:2: no \"messages\" nor \"text\" field (nor \"prompt\" and \"completion\")");
  EXPECT_EQ(readChunked("{\"text\": 5}\n", "b.jsonl").error, "b.jsonl:1: \"text\": expected a string, found a number");
  EXPECT_EQ(readChunked("{\"text\": \"t\", \"label\": 1.5}\n", "b.jsonl").error,
            "b.jsonl:1: \"label\": expected a string or an integer, found a number");
  SourceOptions need;
  need.require_label = true;
  EXPECT_EQ(readChunked(good, "b.jsonl", need).error, "b.jsonl:1: no \"label\" field");
  // A decoded key with a line break in a JSON error stays on one line.
  const std::string error = readChunked("{\"a\\nb\" 1}\n", "b.jsonl").error;
  EXPECT_EQ(error.rfind("b.jsonl:1: invalid JSON", 0), 0u) << error;
  SourceOptions small;
  small.max_record_bytes = 8;
  EXPECT_EQ(readChunked(good, "b.jsonl", small).error, "b.jsonl:1: line longer than 8 bytes");
}

TEST(TextSources, TextDocumentsSeparatedByBlankLines) {
  const Result r = readChunked("\xEF\xBB\xBF" "one\ntwo\n\n \t\r\n\nthree\r\nfour\n\n\nfive", "s.txt");
  ASSERT_EQ(r.error, "");
  ASSERT_EQ(r.records.size(), 3u);
  EXPECT_EQ(r.records[0].text, "one\ntwo");
  EXPECT_EQ(r.records[0].line, 1);
  EXPECT_EQ(r.records[1].text, "three\r\nfour");  // '\r' kept, as prepareDataset always did
  EXPECT_EQ(r.records[1].line, 6);
  EXPECT_EQ(r.records[2].text, "five");
  EXPECT_EQ(r.records[2].line, 10);
  EXPECT_EQ(readChunked("\n\n  \n", "s.txt").records.size(), 0u);

  SourceOptions small;
  small.max_record_bytes = 10;
  EXPECT_EQ(readChunked("a\n\n12345\n12345\n", "s.txt", small).error, "s.txt:3: document longer than 10 bytes");
  EXPECT_EQ(readChunked("a\n\n12345678901\n", "s.txt", small).error, "s.txt:3: line longer than 10 bytes");
  const Result exact = readChunked("12345\n1234\n\n1234567890", "s.txt", small);  // at the limit, not over
  ASSERT_EQ(exact.error, "");
  EXPECT_EQ(exact.records.at(0).text, "12345\n1234");
  EXPECT_EQ(exact.records.at(1).text, "1234567890");
}

TEST(TextSources, TinyStoriesDocumentsMatchBlankLineSplit) {
  const std::string path = std::string(GRAFT_SHARED_DATA) + "/datasets/tinystories_sample/tinystories_sample.txt";
  std::ifstream in(path, std::ios::binary);
  std::string line, doc;
  std::vector<std::string> docs;
  auto flush = [&] {
    if (!doc.empty()) docs.push_back(doc.substr(0, doc.size() - 1));
    doc.clear();
  };
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) flush();
    else doc += line + "\n";
  }
  flush();
  ASSERT_GT(docs.size(), 100u);
  auto reader = openRecords(path, SourceOptions());
  TextRecord r;
  std::size_t n = 0;
  while (reader->next(r)) {
    ASSERT_LT(n, docs.size());
    EXPECT_EQ(r.text, docs[n]) << n;
    ++n;
  }
  EXPECT_EQ(n, docs.size());
}

TEST(TextSources, FormatsAndOpenErrors) {
  SourceOptions bad;
  bad.format = "xml";
  EXPECT_EQ(readAll("x", "a.txt", bad).error, "a.txt: unknown format 'xml' (expected auto, text, jsonl or csv)");
  EXPECT_EQ(readAll("{\"text\": \"x\"}", "A.JSONL", {}).records.at(0).text, "x");
  EXPECT_EQ(readAll("{\"text\": \"x\"}", "dir.csv/a.txt", {}).records.at(0).text, "{\"text\": \"x\"}");
  try {
    openRecords("/nonexistent/graft.csv", {});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("/nonexistent/graft.csv: cannot open", 0), 0u) << e.what();
  }
  EXPECT_THROW(openRecords(GRAFT_SHARED_DATA, {}), InputError);
}

// A 24 MB CSV: bytesRead advances with each record (nothing is slurped) and reaches the total.
TEST(TextSources, LargeInputStreams) {
  const std::string path = tempPath("big.csv");
  const std::int64_t rows = 200000;
  {
    std::ofstream out(path, std::ios::binary);
    out << "text,label\n";
    const std::string body(100, 'x');
    for (std::int64_t i = 0; i < rows; ++i) out << "\"row " << i << ", " << body << "\"\"q\"\"\"," << i % 77 << "\r\n";
  }
  auto reader = openRecords(path, {});
  ASSERT_GT(reader->bytesTotal(), 20 << 20);
  TextRecord r;
  std::int64_t n = 0, last = 0;
  while (reader->next(r)) {
    if (n == 0) {
      EXPECT_LT(reader->bytesRead(), 1000);
    }
    EXPECT_GT(reader->bytesRead(), last);
    last = reader->bytesRead();
    ++n;
  }
  EXPECT_EQ(n, rows);
  EXPECT_EQ(r.line, 0);  // next() returned false and cleared it
  EXPECT_EQ(reader->bytesRead(), reader->bytesTotal());

  std::remove(path.c_str());

  // One 20 MB line is refused at the record limit rather than read into memory.
  const std::string text = tempPath("line.txt");
  { std::ofstream(text, std::ios::binary) << std::string(20 << 20, 'y'); }
  reader = openRecords(text, {});
  try {
    reader->next(r);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), text + ":1: line longer than 16777216 bytes");
  }
  EXPECT_LE(reader->bytesRead(), (16 << 20) + (1 << 16));
  std::remove(text.c_str());
}

std::vector<std::string> bankingLabels() {
  auto reader = openRecords(kBanking, bankingOptions());
  std::vector<std::string> labels;
  TextRecord r;
  while (reader->next(r)) labels.push_back(r.label);
  return labels;
}

TEST(StratifiedSplit, EveryBanking77LabelGetsItsShareWhateverTheOrder) {
  std::vector<std::string> labels = bankingLabels();
  std::map<std::string, std::int64_t> total;
  for (const auto& l : labels) ++total[l];
  ASSERT_EQ(total.size(), 77u);
  for (double f : {0.1, 0.25}) {
    for (int order = 0; order < 2; ++order) {
      if (order) std::shuffle(labels.begin(), labels.end(), std::mt19937(7));
      StratifiedSplit split(f, 1234);
      std::map<std::string, std::int64_t> val;
      for (const auto& l : labels) val[l] += split.isVal(l);
      std::int64_t all = 0;
      for (const auto& [label, n] : total) {
        EXPECT_LE(std::abs(val[label] - std::llround(n * f)), 1) << label << " f=" << f;
        all += val[label];
      }
      EXPECT_NEAR(static_cast<double>(all), f * static_cast<double>(labels.size()), 77);
    }
  }
}

TEST(StratifiedSplit, ReproducibleAndValidated) {
  const auto labels = bankingLabels();
  StratifiedSplit a(0.2, 9), b(0.2, 9), c(0.2, 10);
  int same = 0, differ = 0;
  for (const auto& l : labels) {
    const bool va = a.isVal(l);
    same += va == b.isVal(l);
    differ += va != c.isVal(l);
  }
  EXPECT_EQ(same, static_cast<int>(labels.size()));
  EXPECT_GT(differ, 0);
  EXPECT_THROW(StratifiedSplit(1.0, 1), InputError);
  EXPECT_THROW(StratifiedSplit(-0.1, 1), InputError);
  StratifiedSplit none(0, 1);
  for (const auto& l : labels) ASSERT_FALSE(none.isVal(l));
}

TEST(FewShotLimit, AtMostNTrainExamplesPerLabel) {
  const auto labels = bankingLabels();
  StratifiedSplit split(0.1, 1);
  FewShotLimit limit(8);
  std::map<std::string, int> train, val;
  for (const auto& l : labels) {
    if (split.isVal(l)) ++val[l];
    else if (limit.take(l)) ++train[l];
  }
  ASSERT_EQ(train.size(), 77u);
  for (const auto& [label, n] : train) EXPECT_EQ(n, 8) << label;
  FewShotLimit all(0);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(all.take("x"));
  EXPECT_THROW(FewShotLimit(-1), InputError);
}

}  // namespace
}  // namespace graft
