// Chat templates against independent renderings: each expected text below is written from the
// template's published format (ChatML as Qwen2 documents it, Meta's Llama 3 prompt format,
// Mistral-7B-Instruct's [INST] format, and plain), encoded whole by the tokenizer; the expected
// loss mask comes from where the published format says an assistant turn starts and ends, turned
// into token indices by encoding the text before that point. Nothing here calls graft's renderer
// except the thing under test.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sys/stat.h>

#include "data/chat_template.h"
#include "data/dataset.h"
#include "formats/hdf5.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

const std::string kData = GRAFT_SHARED_DATA;

// The tiny GPT-2 tokenizer.json with the templates' special tokens added (ids 1000 on), BOS <s>
// and EOS </s>, as a chat model's tokenizer carries them.
std::unique_ptr<Tokenizer> chatTokenizer() {
  Json root = parseJson(readFile(kData + "/hf/tiny-random-gpt2/tokenizer.json"), "tokenizer.json");
  Json added = Json::array();
  int id = 1000;
  for (const char* token : {"<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>", "<s>", "</s>"}) {
    Json t = Json::object();
    t.set("id", id++);
    t.set("content", token);
    t.set("single_word", false);
    t.set("lstrip", false);
    t.set("rstrip", false);
    t.set("normalized", false);
    t.set("special", true);
    added.push(t);
  }
  root.set("added_tokens", added);
  return hfTokenizerFromBytes(root.dump(), "chat tokenizer.json", R"({"bos_token": "<s>", "eos_token": "</s>"})",
                              "tokenizer_config.json");
}

const std::vector<ChatMessage> kConversation = {{"system", "You are terse."},
                                                {"user", "Hi there"},
                                                {"assistant", "Hello! How can I help?"},
                                                {"user", "Count to 3"},
                                                {"assistant", "1 2 3"}};

// Expected ids and mask of `text` (after `prefix` ids) with [begin, end) byte spans as targets.
struct Expected {
  std::vector<int> ids;
  std::vector<std::uint8_t> mask;
};
Expected expected(const Tokenizer& tok, const std::vector<int>& prefix, const std::string& text,
                  const std::vector<std::pair<std::size_t, std::size_t>>& spans) {
  Expected e{prefix, std::vector<std::uint8_t>(prefix.size(), 0)};
  const auto ids = tok.encode(text, false, false);
  e.ids.insert(e.ids.end(), ids.begin(), ids.end());
  e.mask.resize(e.ids.size(), 0);
  for (const auto& [begin, end] : spans) {
    const auto first = tok.encode(text.substr(0, begin), false, false).size() + prefix.size();
    const auto last = tok.encode(text.substr(0, end), false, false).size() + prefix.size();
    for (auto i = first; i < last; ++i) e.mask[i] = 1;
  }
  return e;
}

// The byte spans of `turns` in `text`: each from the end of `open` (searched from the last span
// on) to the end of `close` after it.
std::vector<std::pair<std::size_t, std::size_t>> spansBetween(const std::string& text, const std::string& open,
                                                              const std::string& close) {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (auto at = text.find(open); at != std::string::npos; at = text.find(open, at + 1)) {
    const auto begin = at + open.size(), end = text.find(close, begin) + close.size();
    out.emplace_back(begin, end);
  }
  return out;
}

void expectRendering(const std::string& name, const Tokenizer& tok, const Expected& want, TrainOn on = TrainOn::Assistant) {
  std::vector<int> ids;
  std::vector<std::uint8_t> mask;
  ChatTemplate(name).encode(tok, kConversation, on, "test", ids, mask);
  EXPECT_EQ(ids, want.ids) << name;
  EXPECT_EQ(mask, want.mask) << name;
  int targets = 0;
  for (auto m : mask) targets += m;
  EXPECT_GE(targets, 4) << name;
}

TEST(ChatTemplate, ChatmlAsPublished) {
  const auto tok = chatTokenizer();
  const std::string text =
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
      "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n<|im_start|>user\nCount to 3<|im_end|>\n"
      "<|im_start|>assistant\n1 2 3<|im_end|>\n";
  const auto spans = spansBetween(text, "<|im_start|>assistant\n", "<|im_end|>");
  ASSERT_EQ(spans.size(), 2u);
  expectRendering("chatml", *tok, expected(*tok, {}, text, spans));
  // --train-on last: the last assistant turn only; all: every token.
  expectRendering("chatml", *tok, expected(*tok, {}, text, {spans[1]}), TrainOn::Last);
  expectRendering("chatml", *tok, expected(*tok, {}, text, {{0, text.size()}}), TrainOn::All);
  // The special tokens are single tokens, not pieces of text.
  EXPECT_EQ(tok->encode(text, false, false)[0], 1000);
}

TEST(ChatTemplate, Llama3AsPublished) {
  const auto tok = chatTokenizer();
  const std::string text =
      "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
      "<|start_header_id|>user<|end_header_id|>\n\nCount to 3<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n1 2 3<|eot_id|>";
  expectRendering("llama3", *tok, expected(*tok, {}, text, spansBetween(text, "assistant<|end_header_id|>\n\n", "<|eot_id|>")));
}

TEST(ChatTemplate, MistralAsPublished) {
  const auto tok = chatTokenizer();
  // The system prompt goes before the first user message, then a blank line.
  const std::string text = "<s>[INST] You are terse.\n\nHi there [/INST]Hello! How can I help?</s>[INST] Count to 3 [/INST]1 2 3</s>";
  expectRendering("mistral", *tok, expected(*tok, {}, text, spansBetween(text, "[/INST]", "</s>")));
  std::vector<int> ids;
  std::vector<std::uint8_t> mask;
  try {
    ChatTemplate("mistral").encode(*tok, {{"user", "a"}, {"user", "b"}, {"assistant", "c"}}, TrainOn::Assistant, "c.jsonl:4", ids, mask);
    ADD_FAILURE() << "two user turns in a row were accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "c.jsonl:4: the mistral template needs user and assistant turns in turn (after an optional system "
                           "message); message 2 is user");
  }
}

TEST(ChatTemplate, PlainOnTheLlama2cTokenizer) {
  const auto tok = loadTokenizer(kData + "/llama2c/tok512.bin");
  const std::string text =
      "System: You are terse.\nUser: Hi there\nAssistant: Hello! How can I help?\nUser: Count to 3\nAssistant: 1 2 3\n";
  expectRendering("plain", *tok, expected(*tok, {tok->bos()}, text, spansBetween(text, "Assistant:", "\n")));
}

TEST(ChatTemplate, RefusesWhatItCannotRenderInOneLine) {
  const auto llama2c = loadTokenizer(kData + "/llama2c/tok512.bin");
  auto message = [](auto f) {
    try {
      f();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([] { ChatTemplate("vicuna"); }),
            "chat template 'vicuna' is not one graft knows: chatml, llama3, mistral or plain");
  EXPECT_NE(message([&] { ChatTemplate("chatml").check(*llama2c); }).find("chat template chatml needs <|im_start|> as one token"),
            std::string::npos);
  std::vector<int> ids;
  std::vector<std::uint8_t> mask;
  EXPECT_EQ(message([&] { ChatTemplate("plain").encode(*llama2c, {{"tool", "x"}}, TrainOn::Assistant, "a.jsonl:2", ids, mask); }),
            "a.jsonl:2: message 1 has role 'tool'; conversations hold system, user and assistant messages");
  EXPECT_EQ(message([&] { ChatTemplate("plain").encode(*llama2c, {{"user", "x"}}, TrainOn::Assistant, "a.jsonl:3", ids, mask); }),
            "a.jsonl:3: a conversation without an assistant turn has nothing to learn under --train-on assistant");
  // tokenizer_config.json: recognised by the markers only one template writes, or refused.
  EXPECT_EQ(ChatTemplate::recognise(R"({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"})", "c.json"), "chatml");
  EXPECT_EQ(ChatTemplate::recognise(R"({"chat_template": "<|start_header_id|>x<|end_header_id|>y<|eot_id|>"})", "c.json"), "llama3");
  EXPECT_EQ(ChatTemplate::recognise(R"({"chat_template": "{{ bos_token }}[INST] {{ m }} [/INST]"})", "c.json"), "mistral");
  EXPECT_EQ(ChatTemplate::recognise(R"({"bos_token": "<s>"})", "c.json"), "");
  // Llama 2's template has [INST] too, with a <<SYS>> block; later Mistral formats drop the space
  // before [/INST]: neither is taken for mistral.
  for (const char* other : {R"({"chat_template": "[INST] <<SYS>>\n{{ system }}\n<</SYS>>\n\n{{ m }} [/INST]"})",
                            R"({"chat_template": "[INST]{{ m }}[/INST]"})"})
    EXPECT_NE(message([&] { ChatTemplate::recognise(other, "c.json"); }).find("is none of chatml, llama3 or mistral"),
              std::string::npos) << other;
  // A special token the tokenizer swallows into <unk> is no single token of it either.
  EXPECT_NE(message([&] { ChatTemplate("llama3").check(*llama2c); }).find("needs <|begin_of_text|> as one token"),
            std::string::npos);
  EXPECT_EQ(message([] { ChatTemplate::recognise(R"({"chat_template": "<start_of_turn>user\n"})", "gemma/tokenizer_config.json"); }),
            "gemma/tokenizer_config.json: its chat_template (\"<start_of_turn>user \") is none of chatml, llama3 or mistral; "
            "pass --chat-template with the one to use");
}

// A conversation longer than a training sequence is cut: sample 0 under documents packing holds
// its first seq_len + 1 tokens, and its targets are those tokens' (shifted) where the mask says so.
TEST(ChatTemplate, AConversationCutBySeqLenKeepsItsMaskUpToTheCut) {
  const auto tok = chatTokenizer();
  const std::string dir = ::testing::TempDir() + "/chat_cut";
  ::mkdir(dir.c_str(), 0755);
  std::string assistant;
  for (int i = 0; i < 20; ++i) assistant += "word" + std::to_string(i) + " ";
  {
    std::ofstream out(dir + "/c.jsonl");
    out << R"({"messages": [{"role": "user", "content": "Say many words"}, {"role": "assistant", "content": ")" << assistant
        << "\"}]}\n";
  }
  PrepareOptions options;
  options.val_fraction = 0;
  options.chat_template = "chatml";
  prepareDataset(dir + "/c.jsonl", *tok, dir + "/c.h5", options, [](std::int64_t, std::int64_t) {});
  std::vector<int> ids;
  std::vector<std::uint8_t> mask;
  ChatTemplate("chatml").encode(*tok, {{"user", "Say many words"}, {"assistant", assistant}}, TrainOn::Assistant, "t", ids, mask);
  const int seq_len = 24;
  ASSERT_GT(static_cast<int>(ids.size()), seq_len + 1);
  const TokenDataset data(dir + "/c.h5", "train", seq_len, DataResidency::Auto, Packing::Auto);
  ASSERT_EQ(data.packing(), Packing::Documents);
  ASSERT_EQ(data.numSamples(), 1);
  EXPECT_EQ(data.cutDocuments(), 1);
  std::vector<std::int64_t> window(seq_len + 1), targets(seq_len), positions(seq_len);
  data.sample(0, window.data());
  data.targets(0, targets.data());
  data.positions(0, positions.data());
  for (int j = 0; j < seq_len; ++j) {
    EXPECT_EQ(window[j], ids[j]) << j;
    EXPECT_EQ(positions[j], j);
    EXPECT_EQ(targets[j], mask[j + 1] ? ids[j + 1] : TokenDataset::kIgnoreTarget) << j;
  }
  EXPECT_EQ(window[seq_len], ids[seq_len]);
  EXPECT_EQ(data.countTargets(0), std::count(mask.begin() + 1, mask.begin() + seq_len + 1, 1));
}

// Every packing, with and without a loss mask, on documents of every awkward length (empty ones
// first, in the middle and last; one of exactly seq_len + 1 tokens; one longer, cut; one token),
// memory and streamed: what countTargets says is what targets() gives, positions restart at 0 with
// each document, every target is the token after its input in the same document, and the samples
// cover every document in file order.
TEST(Packing, TargetsCountsAndPositionsAgreeForEveryDocumentShape) {
  const std::string path = ::testing::TempDir() + "/packing_shapes.h5";
  const int seq_len = 8;
  const std::vector<std::int64_t> lengths = {0, 4, 0, 9, 1, 12, 3, 0, 5, 2, 0};
  std::vector<std::int64_t> offsets = {0};
  for (auto l : lengths) offsets.push_back(offsets.back() + l);
  const auto n = offsets.back();
  auto tokens = torch::arange(1, n + 1, torch::kInt);  // token = 1 + its index: where it came from shows
  auto mask = (torch::arange(n, torch::kInt) % 3 != 0).to(torch::kByte);
  for (const bool masked : {false, true}) {
    {
      H5File f = H5File::create(path);
      f.setAttr("/", "format", std::string("graft-tokens"));
      f.setAttr("/", "version", std::int64_t{2});
      f.setAttr("/", "vocab_size", std::int64_t{n + 1});
      f.writeTensor("/train/tokens", tokens);
      f.writeTensor("/train/doc_offsets", torch::tensor(offsets, torch::kLong));
      if (masked) f.writeTensor("/train/loss_mask", mask);
      f.close();
    }
    for (const auto packing : {Packing::Windows, Packing::Documents, Packing::Padded})
      for (const auto residency : {DataResidency::Memory, DataResidency::Stream}) {
        const TokenDataset data(path, "train", seq_len, residency, packing);
        const std::string what = std::string(packingName(packing)) + (masked ? " masked" : "") +
                                 (residency == DataResidency::Stream ? " streamed" : "");
        std::int64_t counted_all = 0;
        for (std::int64_t i = 0; i < data.numSamples(); ++i) {
          std::vector<std::int64_t> window(seq_len + 1), targets(seq_len), positions(seq_len);
          data.sample(i, window.data());
          data.targets(i, targets.data());
          const auto counted = std::count_if(targets.begin(), targets.end(), [](std::int64_t t) { return t != TokenDataset::kIgnoreTarget; });
          EXPECT_EQ(data.countTargets(i), counted) << what << " sample " << i;
          counted_all += counted;
          if (packing == Packing::Windows) continue;
          data.positions(i, positions.data());
          EXPECT_EQ(positions[0], 0) << what;
          for (int j = 0; j < seq_len; ++j) {
            if (targets[j] == TokenDataset::kIgnoreTarget) continue;
            EXPECT_EQ(targets[j], window[j] + 1) << what << " sample " << i << " at " << j;  // the next token of the split
            if (j + 1 < seq_len) {
              EXPECT_EQ(positions[j + 1], positions[j] + 1) << what;  // the same document
            }
            if (masked) {
              EXPECT_EQ(mask[targets[j] - 1].item<int>(), 1) << what;
            }
          }
        }
        if (packing == Packing::Windows) continue;
        // Every target a document can have within seq_len + 1 tokens, counted once.
        std::int64_t expected = 0;
        for (std::size_t d = 0; d + 1 < offsets.size(); ++d)
          for (auto t = offsets[d] + 1; t < std::min(offsets[d + 1], offsets[d] + seq_len + 1); ++t)
            expected += masked ? mask[t].item<int>() : 1;
        EXPECT_EQ(counted_all, expected) << what;
        EXPECT_EQ(data.cutDocuments(), 1) << what;  // 12 tokens; 9 fill seq_len + 1 exactly
      }
  }
}

}  // namespace
}  // namespace graft
