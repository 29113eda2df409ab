#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

const std::string kData = GRAFT_SHARED_DATA;
const std::string kTok = kData + "/llama2c/tok512.bin";
const std::string kGpt2 = kData + "/tokenizers/gpt2";
const std::string kTinyGpt2 = kData + "/hf/tiny-random-gpt2";

// A folder of this test process's own, for scripts, models and hostile files.
const std::string& scratch() {
  static const std::string dir = [] {
    const std::string d = ::testing::TempDir() + "/graft_tokenizer_test_" + std::to_string(::getpid());
    ::mkdir(d.c_str(), 0755);
    static const auto* removed_at_exit = new std::string(d);  // outlives the static being built
    std::atexit([] { std::filesystem::remove_all(*removed_at_exit); });
    return d;
  }();
  return dir;
}

std::string writeFile(const std::string& name, const std::string& bytes) {
  const std::string path = scratch() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// stdout of a shell command that must succeed.
std::string run(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run " + command);
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
  const int status = pclose(pipe);
  if (status != 0) throw std::runtime_error(command + " exited with status " + std::to_string(status));
  return out;
}

std::vector<std::vector<int>> parseIdLines(const std::string& text) {
  std::vector<std::vector<int>> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    lines.emplace_back();
    for (int id; words >> id;) lines.back().push_back(id);
  }
  return lines;
}

// Texts for the reference comparisons: contractions, digits, runs of spaces, newlines, accents, CJK,
// emoji, Unicode spaces and numbers.
const std::vector<std::string> kVariedTexts = {
    "Hello world",
    "It's a test: we'll see, they've gone, I'm here, you'd know, it'd've been DON'T 'quoted' ''s",
    "In 1999 there were 12345 people; 3.14159 and 1,000,000 or 42nd.",
    "a  b   c    d     e",
    "   leading and trailing   ",
    "line one\nline two\n\n\nline  three\r\n\ttabbed \n ",
    "Caf\u00e9 na\u00efve fa\u00e7ade \u00c5ngstr\u00f6m \u00fcber Stra\u00dfe",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u4e2d\u6587 \ud55c\uad6d\uc5b4",
    "Emoji: \U0001F642\U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 \U0001F469\u200D\U0001F469\u200D\U0001F467!",
    "foo\u2014bar \u00abquotes\u00bb \u00bfqu\u00e9? \u00a1s\u00ed! x\u00b2+y\u00b3 \u00bd \u216b",
    "nbsp\u00a0here\u2003em\u3000ideographic \u0665\u0666 Arabic digits",
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.",
};

// OpenAI's GPT-2 encoder.py written out independently: bytes_to_unicode, the pre-tokenizer regex (the
// `regex` module), and BPE by merge rank. Reads texts separated by NUL bytes, prints ids per text.
const char* kGpt2Reference = R"PY(
import json, sys, regex

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))

def get_pairs(word):
    return set(zip(word, word[1:]))

def bpe(token, ranks):
    word = tuple(token)
    pairs = get_pairs(word)
    while pairs:
        bigram = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if bigram not in ranks:
            break
        first, second = bigram
        new_word, i = [], 0
        while i < len(word):
            if first not in word[i:]:
                new_word.extend(word[i:])
                break
            j = word.index(first, i)
            new_word.extend(word[i:j])
            i = j
            if i < len(word) - 1 and word[i + 1] == second:
                new_word.append(first + second)
                i += 2
            else:
                new_word.append(word[i])
                i += 1
        word = tuple(new_word)
        pairs = get_pairs(word)
    return word

byte_encoder = bytes_to_unicode()
pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
texts = open(sys.argv[1], "rb").read().split(b"\0")
for spec in sys.argv[2:]:
    kind, *paths = spec.split(":")
    if kind == "openai":
        encoder = json.load(open(paths[0], encoding="utf-8"))
        merges = [tuple(line.split()) for line in open(paths[1], encoding="utf-8").read().split("\n")[1:-1]]
    else:
        model = json.load(open(paths[0], encoding="utf-8"))["model"]
        encoder = model["vocab"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    ranks = dict(zip(merges, range(len(merges))))
    for text in texts:
        ids = []
        for token in pat.findall(text.decode("utf-8")):
            token = "".join(byte_encoder[b] for b in token.encode("utf-8"))
            # Hugging Face's BPE drops characters its vocabulary lacks when there is no unk_token
            # (tiny-random-gpt2 lacks some bytes; GPT-2's own files have all 256).
            token = "".join(c for c in token if c in encoder)
            if token:
                ids.extend(encoder[piece] for piece in bpe(token, ranks))
        print(" ".join(map(str, ids)))
)PY";

// The reference's ids for kVariedTexts from GPT-2's encoder.json + vocab.bpe, or from tiny-random-gpt2's
// tokenizer.json. One Python run computes both: interpreters are slow to start.
const std::vector<std::vector<int>>& gpt2Reference(bool tiny) {
  static const auto ids = [] {
    std::string joined;
    for (std::size_t i = 0; i < kVariedTexts.size(); ++i) joined += (i ? std::string(1, '\0') : "") + kVariedTexts[i];
    const std::string script = writeFile("gpt2_reference.py", kGpt2Reference);
    const std::string texts = writeFile("gpt2_texts.bin", joined);
    const auto all = parseIdLines(run(std::string(GRAFT_PYTHON) + " " + script + " " + texts + " openai:" + kGpt2 + "/encoder.json:" +
                                      kGpt2 + "/vocab.bpe hf:" + kTinyGpt2 + "/tokenizer.json"));
    if (all.size() != 2 * kVariedTexts.size()) throw std::runtime_error("the reference printed too few lines");
    const auto half = all.begin() + static_cast<std::ptrdiff_t>(kVariedTexts.size());
    return std::array<std::vector<std::vector<int>>, 2>{std::vector<std::vector<int>>(all.begin(), half),
                                                        std::vector<std::vector<int>>(half, all.end())};
  }();
  return ids[tiny ? 1 : 0];
}

const Tokenizer& gpt2() {
  static const auto tok = loadTokenizer(kGpt2);
  return *tok;
}

// --- llama2.c and bytes ---------------------------------------------------------------------------

// The llama2.c tokenizer that prepares every TinyStories dataset, against run.c's algorithm on
// punctuation, digits, whitespace runs, accents, CJK, emoji (byte fallback) and leading spaces.
// The reference is tests/llama2c_encoder.py, written from the format's documentation.
TEST(Tokenizer, Llama2cMatchesAnIndependentRunCEncoder) {
  std::string joined;
  for (std::size_t i = 0; i < kVariedTexts.size(); ++i) joined += (i ? std::string(1, '\0') : "") + kVariedTexts[i];
  const std::string texts = writeFile("llama2c_texts.bin", joined);
  const auto expected =
      parseIdLines(run(std::string(GRAFT_PYTHON) + " " + std::string(GRAFT_SOURCE_DIR) + "/tests/llama2c_encoder.py " + texts + " " + kTok + " 512"));
  ASSERT_EQ(expected.size(), kVariedTexts.size());
  auto tok = loadTokenizer(kTok);
  std::size_t fallback = 0;
  for (std::size_t i = 0; i < kVariedTexts.size(); ++i) {
    SCOPED_TRACE(kVariedTexts[i]);
    const auto ids = tok->encode(kVariedTexts[i], false, false);
    EXPECT_EQ(ids, expected[i]);
    for (const int id : ids) fallback += id >= 3 && id < 259 ? 1 : 0;
    EXPECT_EQ(tok->decodeAll(ids), kVariedTexts[i]);
  }
  EXPECT_GT(fallback, 20u);  // byte fallback took part
}

TEST(Tokenizer, Llama2cKnownPieces) {
  auto tok = loadTokenizer(kTok);
  EXPECT_EQ(tok->vocabSize(), 512);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  // FORMAT.md: " Once" is id 403; BOS first, dummy-prefix space merged into the word.
  const auto ids = tok->encode("Once", true, false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 403);
}

TEST(Tokenizer, Llama2cRoundTripsTextThroughDecode) {
  auto tok = loadTokenizer(kTok);
  const std::string text = "Lily's mom said, \"Let's go to the park.\" \u00dcberall \U0001F642";
  const auto ids = tok->encode(text, true, false);
  std::string decoded;
  for (std::size_t i = 1; i < ids.size(); ++i) decoded += tok->decode(ids[i - 1], ids[i]);
  EXPECT_EQ(decoded, text);  // leading dummy space is dropped after BOS
  EXPECT_EQ(tok->decodeAll(tok->encode(text, false, false)), text);
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
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
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
  const int header[3] = {7, 0, 5};  // max_len, then a score and a length 5 with no bytes
  const std::string path = writeFile("truncated_tok.bin", std::string(reinterpret_cast<const char*>(header), 12));
  EXPECT_THROW(loadTokenizer(path), InputError);
}

// --- GPT-2 byte-level BPE -------------------------------------------------------------------------

TEST(Gpt2Tokenizer, HelloWorldFromEveryWayOfNamingTheFiles) {
  EXPECT_EQ(gpt2().encode("Hello world", false, false), (std::vector<int>{15496, 995}));  // the folder
  EXPECT_EQ(gpt2().vocabSize(), 50257);
  EXPECT_EQ(gpt2().bos(), 50256);
  EXPECT_EQ(gpt2().eos(), 50256);
  for (const std::string& spec : {kGpt2 + "/encoder.json", kGpt2 + "/vocab.bpe"}) {
    SCOPED_TRACE(spec);
    EXPECT_EQ(loadTokenizer(spec)->encode("Hello world", false, false), (std::vector<int>{15496, 995}));
  }
  EXPECT_EQ(gpt2().encode("Hello world", true, true), (std::vector<int>{50256, 15496, 995, 50256}));
  EXPECT_NE(gpt2().describe().find("GPT-2 BPE"), std::string::npos);
}

TEST(Gpt2Tokenizer, MatchesAnIndependentEncoderPy) {
  const auto& expected = gpt2Reference(false);
  for (std::size_t i = 0; i < kVariedTexts.size(); ++i) {
    SCOPED_TRACE(kVariedTexts[i]);
    const auto ids = gpt2().encode(kVariedTexts[i], false, false);
    EXPECT_EQ(ids, expected[i]);
    EXPECT_EQ(gpt2().decodeAll(ids), kVariedTexts[i]);  // bit for bit
  }
}

TEST(Gpt2Tokenizer, TinyRandomGpt2TokenizerJsonMatchesTheReference) {
  const auto& expected = gpt2Reference(true);
  const auto from_json = loadTokenizer(kTinyGpt2);  // the folder: tokenizer.json first
  const auto from_vocab = loadTokenizer(kTinyGpt2 + "/vocab.json");
  EXPECT_NE(from_json->describe().find("Hugging Face BPE"), std::string::npos);
  EXPECT_EQ(from_json->vocabSize(), 1000);
  EXPECT_EQ(from_json->bos(), 0);  // tokenizer_config.json: <|endoftext|>
  EXPECT_EQ(from_json->eos(), 0);
  for (std::size_t i = 0; i < kVariedTexts.size(); ++i) {
    SCOPED_TRACE(kVariedTexts[i]);
    EXPECT_EQ(from_json->encode(kVariedTexts[i], false, false), expected[i]);
    EXPECT_EQ(from_vocab->encode(kVariedTexts[i], false, false), expected[i]);
  }
  const std::string ascii = "It's 12 o'clock;  the  end.\n";
  EXPECT_EQ(from_json->decodeAll(from_json->encode(ascii, false, false)), ascii);

  // add_prefix_space (RoBERTa style) encodes "Hello" as " Hello"; decoding drops that space again.
  Json root = parseJson(readFile(kTinyGpt2 + "/tokenizer.json"), "tokenizer.json");
  Json pre = Json::object();
  pre.set("type", "ByteLevel");
  pre.set("add_prefix_space", true);
  root.set("pre_tokenizer", pre);
  const auto prefixed = hfTokenizerFromBytes(root.dump(), "prefixed.json");
  const auto ids = prefixed->encode("Hello world", false, false);
  EXPECT_EQ(ids, from_json->encode(" Hello world", false, false));
  EXPECT_EQ(prefixed->decodeAll(ids), "Hello world");
}

TEST(Gpt2Tokenizer, SpecialTokenInTextAndInvalidUtf8) {
  const std::string text = "one<|endoftext|>two";
  const auto ids = gpt2().encode(text, false, false);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 50256), 1);
  EXPECT_EQ(gpt2().decodeAll(ids), text);
  const std::string broken = "ok \xff\xfe \xe6\x97 \xc3 end\x80";  // stray and truncated UTF-8
  EXPECT_EQ(gpt2().decodeAll(gpt2().encode(broken, false, false)), broken);
}

// --- Hugging Face Metaspace BPE (Llama style), checked against SentencePiece ------------------------

// A tiny SentencePiece BPE model with byte fallback, trained once, and spm_encode's ids for some lines.
// Identity normalization keeps runs of spaces, so the tokenizer.json files built from it below must
// agree with spm_encode exactly.
struct SpmModel {
  std::string model, lines;
  std::vector<std::vector<int>> ids;
};
const SpmModel& spmModel() {
  static const SpmModel m = [] {
    SpmModel s;
    const std::string corpus = scratch() + "/spm_corpus.txt";
    run("head -n 2000 " + kData + "/datasets/tinyshakespeare/input.txt > " + corpus);
    run("spm_train --input=" + corpus + " --model_prefix=" + scratch() +
        "/spm --vocab_size=400 --model_type=bpe --byte_fallback=true --normalization_rule_name=identity "
        "--remove_extra_whitespaces=false --num_threads=1 --minloglevel=2 >/dev/null 2>&1");
    s.model = scratch() + "/spm.model";
    s.lines = writeFile("spm_lines.txt",
                        "First Citizen:\nBefore we proceed any further, hear me speak.\nYou are all resolved "
                        "rather to die than to famish?\nCaf\u00e9 \u00fcber  two  spaces \U0001F642 and \u4e2d\u6587\n"
                        "What's 12345 + 678?\tTabbed\n");
    s.ids = parseIdLines(run("spm_encode --model=" + s.model + " --output_format=id < " + s.lines));
    return s;
  }();
  return m;
}

std::vector<std::string> lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

TEST(SentencePieceTokenizer, MatchesSpmEncodeAndRoundTrips) {
  const auto& m = spmModel();
  const auto tok = loadTokenizer(m.model);
  EXPECT_EQ(tok->vocabSize(), 400);
  EXPECT_EQ(tok->bos(), 1);
  EXPECT_EQ(tok->eos(), 2);
  const auto texts = lines(m.lines);
  ASSERT_EQ(m.ids.size(), texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    SCOPED_TRACE(texts[i]);
    const auto ids = tok->encode(texts[i], true, true);
    ASSERT_EQ(ids.size(), m.ids[i].size() + 2);
    EXPECT_EQ(std::vector<int>(ids.begin() + 1, ids.end() - 1), m.ids[i]);
    EXPECT_EQ(tok->decodeAll(ids), texts[i]);
    std::string streamed;
    for (std::size_t k = 1; k < ids.size(); ++k) streamed += tok->decode(ids[k - 1], ids[k]);
    EXPECT_EQ(streamed, texts[i]);
  }
}

TEST(SentencePieceTokenizer, FolderWithTokenizerModel) {
  const std::string dir = scratch() + "/spm_folder";
  ::mkdir(dir.c_str(), 0755);
  run("cp " + spmModel().model + " " + dir + "/tokenizer.model");
  EXPECT_NE(loadTokenizer(dir)->describe().find("SentencePiece"), std::string::npos);
}

// tokenizer.json as transformers' converter writes it for a SentencePiece BPE model (spm_export_vocab's
// "piece<TAB>score" lines): vocabulary in id order, merges of every split of every piece, ordered by the
// merged piece's score. `legacy` picks Llama 2's Prepend + Replace normalizer, else the Metaspace
// pre-tokenizer of newer files.
std::string spmToHfJson(const std::string& vocab_tsv, bool legacy) {
  std::vector<std::pair<std::string, double>> pieces;
  std::map<std::string, int> ids;
  Json vocab = Json::object();
  for (const auto& line : lines(vocab_tsv)) {
    const auto tab = line.find('\t');
    pieces.emplace_back(line.substr(0, tab), std::stod(line.substr(tab + 1)));
    ids[pieces.back().first] = static_cast<int>(pieces.size()) - 1;
    vocab.set(pieces.back().first, static_cast<int>(pieces.size()) - 1);
  }
  struct Merge {
    std::string a, b;
    double score;
  };
  std::vector<Merge> merges;
  for (const auto& [piece, score] : pieces) {
    std::vector<Merge> local;
    for (std::size_t i = 1; i < piece.size(); ++i)
      if (ids.count(piece.substr(0, i)) && ids.count(piece.substr(i))) local.push_back({piece.substr(0, i), piece.substr(i), score});
    std::sort(local.begin(), local.end(), [&](const Merge& x, const Merge& y) {
      return std::make_pair(ids[x.a], ids[x.b]) < std::make_pair(ids[y.a], ids[y.b]);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& x, const Merge& y) { return x.score > y.score; });
  Json model = Json::object(), merge_list = Json::array(), added = Json::array();
  for (const auto& m : merges) merge_list.push(m.a + " " + m.b);
  model.set("type", "BPE");
  model.set("unk_token", "<unk>");
  model.set("fuse_unk", true);
  model.set("byte_fallback", true);
  model.set("vocab", vocab);
  model.set("merges", merge_list);
  for (int id = 0; id < 3; ++id) {
    Json token = Json::object();
    token.set("id", id);
    token.set("content", pieces[id].first);
    token.set("normalized", false);
    token.set("special", true);
    added.push(token);
  }
  const std::string space = "\u2581";
  std::string root = R"({"version": "1.0", "added_tokens": )" + added.dump() + R"(, "model": )" + model.dump();
  if (legacy)
    return root + R"(, "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": ")" + space +
           R"("}, {"type": "Replace", "pattern": {"String": " "}, "content": ")" + space + R"("}]},
         "pre_tokenizer": null,
         "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": ")" + space +
           R"("}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
                     {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}})";
  const std::string metaspace = R"({"type": "Metaspace", "replacement": ")" + space +
                                R"(", "prepend_scheme": "first", "split": false})";
  return root + R"(, "normalizer": null, "pre_tokenizer": )" + metaspace + R"(, "decoder": )" + metaspace + "}";
}

TEST(HfMetaspaceTokenizer, LlamaStyleTokenizerJsonMatchesSpmEncode) {
  const auto& m = spmModel();
  const std::string tsv = scratch() + "/spm_vocab.tsv";
  run("spm_export_vocab --model=" + m.model + " --output=" + tsv + " 2>/dev/null");
  const auto texts = lines(m.lines);
  for (const bool legacy : {true, false}) {
    SCOPED_TRACE(legacy ? "legacy" : "metaspace");
    const auto tok = hfTokenizerFromBytes(spmToHfJson(tsv, legacy), "tokenizer.json");
    EXPECT_EQ(tok->bos(), 1);
    EXPECT_EQ(tok->eos(), 2);
    EXPECT_NE(tok->describe().find("byte fallback"), std::string::npos);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      SCOPED_TRACE(texts[i]);
      const auto ids = tok->encode(texts[i], false, false);
      EXPECT_EQ(ids, m.ids[i]);
      EXPECT_EQ(tok->decodeAll(ids), texts[i]);
    }
    // "</s>" written in the text is the token; "b" after it gets the dummy prefix only in the legacy
    // file, whose Prepend normalizer runs on every segment.
    const int b = tok->encode("b", false, false)[0], a = tok->encode("a", false, false)[0];
    const auto ids = tok->encode("a</s>b", false, false);
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids[0], a);
    EXPECT_EQ(ids[1], 2);
    if (legacy) EXPECT_EQ(ids, (std::vector<int>{a, 2, b}));
    else EXPECT_NE(ids, (std::vector<int>{a, 2, b}));
  }
}

// A hand-made Metaspace vocabulary: which of byte fallback, <unk> and merges wins.
std::string metaspaceJson(bool byte_fallback) {
  return R"({"added_tokens": [{"id": 0, "content": "<unk>", "special": true},
                              {"id": 8, "content": "<mask>", "lstrip": true, "special": true}],
             "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": true},
             "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always"},
             "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": )" +
         std::string(byte_fallback ? "true" : "false") + R"(,
                       "vocab": {"<unk>": 0, "\u2581": 1, "a": 2, "b": 3, "\u2581a": 4, "ab": 5, "<0xC3>": 6, "<0xA9>": 7},
                       "merges": [["\u2581", "a"], "a b"]}})";
}

TEST(HfMetaspaceTokenizer, ByteFallbackUnknownAndMergeOrder) {
  const auto with_bytes = hfTokenizerFromBytes(metaspaceJson(true), "bytes.json");
  // "▁ab▁é": "▁ a" (rank 0) wins over "a b", so "b" stays alone; é falls back to its two bytes.
  EXPECT_EQ(with_bytes->encode("ab \u00e9", false, false), (std::vector<int>{4, 3, 1, 6, 7}));
  EXPECT_EQ(with_bytes->decodeAll({4, 3, 1, 6, 7}), "ab \u00e9");
  const auto with_unk = hfTokenizerFromBytes(metaspaceJson(false), "unk.json");
  EXPECT_EQ(with_unk->encode("ab \u00e9\u00e9", false, false), (std::vector<int>{4, 3, 1, 0}));  // fused
  // <mask> swallows the space before it (lstrip); the text after it is a new segment, prefixed again.
  EXPECT_EQ(with_bytes->encode("a <mask>a", false, false), (std::vector<int>{4, 8, 4}));
  EXPECT_EQ(with_bytes->bos(), -1);
  EXPECT_THROW(with_bytes->encode("a", true, false), InputError);
}

// --- Hostile files --------------------------------------------------------------------------------

// Runs `load`, which must throw an InputError whose one-line message contains every one of `needles`.
template <typename F>
void expectInputError(F&& load, std::initializer_list<std::string> needles) {
  try {
    load();
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const auto& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
  }
}

TEST(TokenizerHostileFiles, Gpt2VocabularyAndMerges) {
  const std::string good_vocab = R"({"a": 0, "b": 1, "ab": 2})";
  auto gpt2From = [](const std::string& vocab, const std::string& merges) {
    return [=] { gpt2TokenizerFromBytes(vocab, "v.json", merges, "m.txt"); };
  };
  const std::string real = run("head -c 5000 " + kGpt2 + "/encoder.json");
  expectInputError(gpt2From(real, "#version: 0.2\n"), {"v.json", "invalid JSON"});
  expectInputError(gpt2From(good_vocab, "#version: 0.2\na c\n"), {"m.txt: line 2", "\"c\"", "not in the vocabulary"});
  expectInputError(gpt2From(R"({"a": 0, "b": 1})", "a b\n"), {"m.txt: line 1", "\"ab\""});
  expectInputError(gpt2From(good_vocab, "a b c\n"), {"m.txt: line 1", "two pieces"});
  expectInputError(gpt2From(good_vocab, "a\n"), {"m.txt: line 1"});
  expectInputError(gpt2From(R"({"a": -1})", ""), {"v.json: vocabulary[\"a\"]", "out of range"});
  expectInputError(gpt2From(R"({"a": 99999999999})", ""), {"v.json: vocabulary[\"a\"]", "out of range"});
  expectInputError(gpt2From(R"({"a": 1.5})", ""), {"v.json: vocabulary[\"a\"]", "integer"});
  expectInputError(gpt2From(R"({"a": "0"})", ""), {"v.json: vocabulary[\"a\"]"});
  expectInputError(gpt2From(R"({"a": 0, "b": 0})", ""), {"v.json", "both have id 0"});
  expectInputError(gpt2From(R"({"a": 0, "a": 1})", ""), {"v.json: vocabulary[\"a\"]", "twice"});
  expectInputError(gpt2From(R"({"a": 0, "b": 10000000})", ""), {"v.json", "not a plausible vocabulary"});
  expectInputError(gpt2From(R"(["a", "b"])", ""), {"v.json", "expected an object"});
  expectInputError(gpt2From(R"({"\u0001\n": 0, "\u0001\n": 1})", ""), {"v.json: vocabulary[\"\\x01\\x0a\"]", "twice"});
  // No special tokens in a vocabulary without them: asking for BOS is an error, not a made-up id.
  const auto plain = gpt2TokenizerFromBytes(good_vocab, "v.json", "a b\n", "m.txt");
  EXPECT_EQ(plain->bos(), -1);
  expectInputError([&] { plain->encode("ab", true, false); }, {"v.json", "no BOS"});
}

TEST(TokenizerHostileFiles, TokenizerJsonComponentsWeDoNotImplement) {
  auto hf = [](const std::string& json) { return [=] { hfTokenizerFromBytes(json, "t.json"); }; };
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0}, "merges": []})";
  expectInputError(hf(R"({"model": {"type": "Unigram", "vocab": []}})"), {"t.json: model", "Unigram", "not supported"});
  expectInputError(hf("{" + model + R"(, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "x"}}})"),
                   {"t.json: pre_tokenizer", "Split"});
  expectInputError(hf("{" + model + R"(, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split"},
                       {"type": "ByteLevel", "use_regex": false}]}})"),
                   {"t.json: pre_tokenizer", "Sequence of 2"});
  expectInputError(hf("{" + model + R"(, "normalizer": {"type": "NFC"}})"), {"t.json: normalizer", "NFC"});
  expectInputError(hf("{" + model + R"(, "decoder": {"type": "WordPiece"}})"), {"t.json: decoder", "WordPiece"});
  expectInputError(hf(R"({"model": {"type": "BPE", "dropout": 0.1, "vocab": {}, "merges": []}})"), {"dropout"});
  expectInputError(hf(R"({"model": {"vocab": {"a": 0}, "merges": ["a a"]}})"), {"t.json: model.merges[0]", "\"aa\""});
  expectInputError(hf(R"({"model": {"vocab": {"a": 0}, "merges": [["a"]]}})"), {"t.json: model.merges[0]", "pair"});
  expectInputError(hf(R"({"model": {"vocab": {"a": 0}, "merges": [], "unk_token": "<unk>"}})"), {"unk_token"});
  expectInputError(hf("{" + model + R"(, "added_tokens": [{"id": -5, "content": "x"}]})"),
                   {"t.json: added_tokens[0]", "out of range"});
  expectInputError(hf("{" + model + R"(, "added_tokens": [{"id": 1, "content": "x", "single_word": true}]})"),
                   {"t.json: added_tokens[0]", "single_word"});
  expectInputError(hf(R"({"vocab": {"a": 0}})"), {"t.json", "no \"model\""});
  expectInputError(hf(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [)"), {"t.json", "invalid JSON"});
  expectInputError([&] { hfTokenizerFromBytes("{" + model + "}", "t.json", R"({"bos_token": "<s>"})", "c.json"); },
                   {"c.json: bos_token", "\"<s>\""});
}

TEST(TokenizerHostileFiles, UnknownFilesAndFolders) {
  const std::string empty_dir = scratch() + "/empty_folder";
  ::mkdir(empty_dir.c_str(), 0755);
  expectInputError([&] { loadTokenizer(empty_dir); }, {empty_dir, "tokenizer.json", "tokenizer.model"});
  const std::string junk = writeFile("junk.dat", std::string("\x7f\x45\x4c\x46 not a tokenizer", 20));
  expectInputError([&] { loadTokenizer(junk); }, {junk, "not a llama2.c tokenizer"});
  const std::string bad_model = writeFile("bad.model", "\x0a\x05hello");
  expectInputError([&] { loadTokenizer(bad_model); }, {bad_model, "SentencePiece"});
  const std::string lone_merges = scratch() + "/empty_folder/merges.txt";
  std::ofstream(lone_merges) << "#version: 0.2\n";
  expectInputError([&] { loadTokenizer(lone_merges); }, {lone_merges, "vocab.json"});
  expectInputError([] { loadTokenizer(""); }, {"no tokenizer given"});
}

}  // namespace
}  // namespace graft
