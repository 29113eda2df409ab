#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "checkpoint/checkpoint.h"
#include "cli/cli.h"
#include "config/command_line.h"
#include "convert/hf_model.h"
#include "convert/model_io.h"
#include "tokenizer/tokenizer.h"
#include "model/device.h"
#include "model/generate.h"
#include "util/error.h"

namespace graft {
namespace po = boost::program_options;

int runGenerate(const Args& args) {
  std::string model_path, tokenizer_spec, prompt, device;
  SampleOptions sample;
  int threads = 1;
  bool no_verify = false;
  po::options_description options("graft generate options");
  options.add_options()
      ("model", po::value(&model_path)->required(), "model: llama2.c .bin, graft .h5, or Hugging Face folder")
      ("tokenizer", po::value(&tokenizer_spec), "tokenizer file or folder (default: the model's folder when it has one)")
      ("prompt", po::value(&prompt)->default_value(""), "text to continue")
      ("steps", po::value(&sample.steps)->default_value(256), "positions to run, prompt included (0 = model seq_len)")
      ("temperature", po::value(&sample.temperature)->default_value(1.0f), "0 = greedy (argmax)")
      ("top-p", po::value(&sample.top_p)->default_value(0.9f), "nucleus sampling threshold (0 or 1 = off)")
      ("seed", po::value(&sample.seed)->default_value(0), "sampling seed (0 = from the clock)")
      ("threads", po::value(&threads)->default_value(1), "intra-op threads")
      ("device", po::value(&device)->default_value("auto"), "auto (a GPU when this build and machine have one) | cpu | cuda")
      ("no-verify", po::bool_switch(&no_verify), "do not check a graft checkpoint given as --model against its manifest first (for very large ones; the log says so)");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft generate --model M --tokenizer T [--prompt TEXT] [--steps N] [--temperature 0]\n"
                              "Prints the continuation exactly as llama2.c's run.c does.", options, vm))
    return 0;
  if (sample.temperature < 0) throw InputError("--temperature must be >= 0");
  torch::set_num_threads(threads);
  if (tokenizer_spec.empty() && isHfModel(model_path)) tokenizer_spec = hfModelFolder(model_path);
  if (tokenizer_spec.empty()) throw InputError("--tokenizer is required (the model is not a Hugging Face folder)");
  checkModelFile(model_path, !no_verify);
  auto model = loadModel(model_path);
  moveModel(model, deviceOfRank(chooseDeviceType(device, "--device"), 0));
  const auto tokenizer = loadTokenizer(tokenizer_spec);
  // Hugging Face models may pad their vocabulary beyond the tokenizer's; otherwise a different size
  // means the wrong tokenizer.
  const int model_vocab = model->config().vocab_size, tokenizer_vocab = tokenizer->vocabSize();
  if (isHfModel(model_path) ? tokenizer_vocab > model_vocab : tokenizer_vocab != model_vocab)
    throw InputError(tokenizer_spec + ": tokenizer has " + std::to_string(tokenizer->vocabSize()) +
                     " pieces but " + model_path + " has vocab " + std::to_string(model->config().vocab_size));
  const auto start = std::chrono::steady_clock::now();
  const int produced = generate(model, *tokenizer, prompt, sample, [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::printf("\n");
  std::fflush(stdout);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "achieved tok/s: %.1f\n", produced / std::max(seconds, 1e-9));
  return 0;
}

}  // namespace graft
