// generate / eval / tokenize against independent references: llama2.c's own greedy output and a
// PyTorch forward pass written in the test from the .bin file.
#include <gtest/gtest.h>

#include <fstream>

#include "e2e_util.h"

namespace graft::e2e {
namespace {

const std::string kModel = data("llama2c/stories260K.bin");
const std::string kTok = data("llama2c/tok512.bin");

TEST(Inference, GreedyGenerationMatchesLlama2cRunC) {
  const auto r = run(graft() + " generate --model " + kModel + " --tokenizer " + kTok +
                     " --steps 200 --temperature 0 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.output;
  // run.c ends with a newline that the reference file does not keep.
  const std::string expected = readText(data("llama2c/reference/upstream_expected_greedy_n200.txt")) + "\n";
  EXPECT_EQ(r.output, expected);
}

TEST(Inference, PromptIsEchoedAndContinued) {
  const auto r = run(graft() + " generate --model " + kModel + " --tokenizer " + kTok +
                     " --prompt 'Once upon a time' --steps 40 --temperature 0 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.output;
}

TEST(Inference, SampledGenerationIsSeeded) {
  const std::string cmd = graft() + " generate --model " + kModel + " --tokenizer " + kTok +
                          " --steps 60 --temperature 0.8 --top-p 0.9 --seed 42 2>/dev/null";
  const auto a = run(cmd), b = run(cmd);
  ASSERT_EQ(a.code, 0) << a.output;
  EXPECT_EQ(a.output, b.output);
  EXPECT_NE(a.output, run(graft() + " generate --model " + kModel + " --tokenizer " + kTok +
                          " --steps 60 --temperature 0 2>/dev/null").output);
}

TEST(Inference, TokenizePrintsIdsWithBosFirst) {
  const auto r = run(graft() + " tokenize --tokenizer " + kTok + " --text 'Once'");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "1 403\n");
}

// A short text (one piece of attention) and one of more than 128 tokens (attention in blocks of
// queries: Note [causal attention in blocks]).
void expectEvalLikePyTorch(int repeats) {
  const std::string dir = freshDir("eval_ref_" + std::to_string(repeats));
  std::string text;
  for (int i = 0; i < repeats; ++i) text += "Once upon a time, there was a little dog named Max. He liked to run in the park. ";
  const auto ids = run(graft() + " tokenize --tokenizer " + kTok + " --text '" + text + "'");
  ASSERT_EQ(ids.code, 0) << ids.output;
  const auto ours = run(graft() + " eval --model " + kModel + " --tokenizer " + kTok + " --text '" + text +
                        "' --logits " + dir + "/logits.csv");
  ASSERT_EQ(ours.code, 0) << ours.output;
  const auto by_ids = run(graft() + " eval --model " + kModel + " --ids '" + ids.output.substr(0, ids.output.size() - 1) + "'");
  EXPECT_EQ(by_ids.output, ours.output);
  const auto ref = run(GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/e2e/llama2c_reference.py " + kModel +
                       " '" + ids.output.substr(0, ids.output.size() - 1) + "' " + dir + "/logits.csv");
  ASSERT_EQ(ref.code, 0) << ref.output;
  // The script prints the reference loss and the max |logit difference| vs our CSV.
  double ref_loss = 0, max_diff = 1;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lf", &ref_loss, &max_diff), 2) << ref.output;
  double our_loss = 0;
  long long tokens = 0;
  ASSERT_EQ(sscanf(resultOf(ours.output), "{\"loss\": %lf, \"tokens\": %lld}", &our_loss, &tokens), 2) << ours.output;
  EXPECT_NEAR(our_loss, ref_loss, 1e-4 * ref_loss);
  EXPECT_LT(max_diff, 1e-3);
  EXPECT_GT(tokens, repeats > 1 ? 128 : 10);
}

TEST(Inference, EvalLossMatchesAnIndependentPyTorchForward) { expectEvalLikePyTorch(1); }
TEST(Inference, EvalLossOfALongTextMatchesAnIndependentPyTorchForward) { expectEvalLikePyTorch(8); }

}  // namespace
}  // namespace graft::e2e
