// Sequence classifiers to and from Hugging Face's *ForSequenceClassification layout: the head
// becomes score.weight, the label names id2label; the Python reference check lives in the e2e
// Transfer tests.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>

#include "convert/hf_model.h"
#include "convert/peft.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

Transformer tinyClassifier(const std::string& arch, const std::string& pooling) {
  ModelConfig c;
  c.arch = arch;
  c.n_layers = 1;
  c.dim = 16;
  c.hidden_dim = 32;
  c.n_heads = c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.seq_len = 8;
  c.tied = arch == "gpt2";
  Transformer m(c);
  m->initialise(3);
  m->addClassifierHead(3, pooling, 9, {"card_arrival", "refund", "top up"});
  return m;
}

TEST(HfClassifier, RoundTripKeepsTheHeadTheLabelsAndTheLogits) {
  for (const std::string arch : {"llama", "gpt2"}) {
    const std::string dir = ::testing::TempDir() + "/hf_classifier_" + arch;
    auto m = tinyClassifier(arch, "last");
    saveHfModel(m, dir, StDType::F32);
    const Json config = parseJson(readFile(dir + "/config.json"), "config.json");
    EXPECT_EQ(config.at("architectures", "").asArray("")[0].asString(""),
              arch == "gpt2" ? "GPT2ForSequenceClassification" : "LlamaForSequenceClassification");
    EXPECT_EQ(config.at("id2label", "").at("2", "").asString(""), "top up");
    auto back = loadHfModel(dir);
    EXPECT_EQ(back->config().num_classes, 3);
    EXPECT_EQ(back->config().label_names, m->config().label_names);
    EXPECT_EQ(back->config().pooling, "last");
    EXPECT_TRUE(torch::equal(back->head->weight, m->head->weight));
    torch::NoGradGuard no_grad;
    const auto ids = torch::tensor({1, 5, 7, 9, 2, 3, 0, 0}, torch::kInt64).view({2, 4});
    const auto lengths = torch::tensor({4, 2}, torch::kInt64);
    EXPECT_TRUE(torch::equal(back->classifySequences(ids, lengths), m->classifySequences(ids, lengths))) << arch;
  }
}

TEST(HfClassifier, MeanPoolingHasNoHfEquivalentAndSaysSo) {
  auto m = tinyClassifier("llama", "mean");
  try {
    saveHfModel(m, ::testing::TempDir() + "/hf_classifier_mean", StDType::F32);
    FAIL() << "exported a mean-pooling head";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("task.pooling = last"), std::string::npos) << e.what();
  }
}

TEST(HfClassifier, PeftExportRefusesToDropTheHead) {
  auto m = tinyClassifier("llama", "last");
  try {
    savePeftAdapter(m, ::testing::TempDir() + "/hf_classifier_peft", "base");
    FAIL() << "exported adapters without the trained head";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--format hf"), std::string::npos) << e.what();
  }
}

TEST(HfClassifier, BadId2LabelIsNamed) {
  const std::string dir = ::testing::TempDir() + "/hf_classifier_bad";
  auto m = tinyClassifier("llama", "last");
  saveHfModel(m, dir, StDType::F32);
  std::string text = readFile(dir + "/config.json");
  text.replace(text.find("\"2\": \"top up\""), 13, "\"7\": \"top up\"");
  writeFileAtomically(dir + "/config.json", text);
  try {
    loadHfModel(dir);
    FAIL() << "loaded an id2label with a gap";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("id2label key \"7\""), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft
