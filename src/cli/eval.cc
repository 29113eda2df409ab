#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/cli.h"
#include "cli/options.h"
#include "io/hf_model.h"
#include "io/model_io.h"
#include "io/tokenizer.h"
#include "util/error.h"

namespace graft {
namespace po = boost::program_options;

namespace {
std::vector<std::int64_t> parseIds(const std::string& text, int vocab) {
  std::vector<std::int64_t> ids;
  std::istringstream in(text);
  std::string word;
  while (in >> word) {
    std::size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || id < 0 || id >= vocab)
      throw InputError("--ids: '" + word + "' is not a token id in [0, " + std::to_string(vocab) + ")");
    ids.push_back(id);
  }
  return ids;
}

void writeLogitsCsv(const std::string& path, const torch::Tensor& logits) {
  std::ofstream out(path);
  if (!out) throw InputError(path + ": cannot create logits file");
  auto rows = logits.contiguous();
  const auto n = rows.size(0), v = rows.size(1);
  const float* data = rows.data_ptr<float>();
  char buf[32];
  for (std::int64_t r = 0; r < n; ++r) {
    for (std::int64_t c = 0; c < v; ++c) {
      std::snprintf(buf, sizeof(buf), "%.9g", data[r * v + c]);
      out << (c ? "," : "") << buf;
    }
    out << "\n";
  }
  if (!out.flush()) throw Error(path + ": write failed");
}
}  // namespace

int runEval(const Args& args) {
  std::string model_path, adapter, tokenizer_spec, text, ids_text, logits_path;
  po::options_description options("graft eval options");
  options.add_options()
      ("model", po::value(&model_path)->required(), "model: llama2.c .bin, graft .h5, or Hugging Face folder")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter folder to apply to the model")
      ("tokenizer", po::value(&tokenizer_spec), "tokenizer (with --text; default: the model's folder when it has one)")
      ("text", po::value(&text), "text to score (BOS first where the tokenizer expects it)")
      ("ids", po::value(&ids_text), "token ids to score, separated by spaces, instead of --text")
      ("logits", po::value(&logits_path), "also write one CSV row of raw logits per input position");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft eval --model M (--tokenizer T --text TEXT | --ids \"1 403 407\") [--logits F.csv]\n"
                              "Prints {\"loss\": mean next-token cross-entropy (nats), \"tokens\": predicted tokens}.",
                        options, vm))
    return 0;
  if (vm.count("text") == vm.count("ids")) throw InputError("give exactly one of --text and --ids");
  auto model = loadModel(model_path);
  if (!adapter.empty()) loadPeftAdapter(model, adapter);
  std::vector<std::int64_t> ids;
  if (vm.count("text")) {
    if (tokenizer_spec.empty() && isHfModel(model_path)) tokenizer_spec = hfModelFolder(model_path);
    if (tokenizer_spec.empty()) throw InputError("--text needs --tokenizer");
    const auto tokenizer = loadTokenizer(tokenizer_spec);
    for (int id : tokenizer->encode(text, tokenizer->addsBos(), false)) ids.push_back(id);
  } else {
    ids = parseIds(ids_text, model->config().vocab_size);
  }
  if (ids.size() < 2) throw InputError("need at least 2 tokens to score (got " + std::to_string(ids.size()) + ")");
  if (static_cast<int>(ids.size()) - 1 > model->config().seq_len)
    throw InputError(std::to_string(ids.size()) + " tokens exceed the model's context of " +
                     std::to_string(model->config().seq_len));
  torch::NoGradGuard no_grad;
  model->eval();
  auto all = torch::tensor(ids, torch::kInt64).unsqueeze(0);
  const auto n = all.size(1) - 1;
  auto logits = model->forward(all.narrow(1, 0, n)).squeeze(0);
  auto loss = torch::nn::functional::cross_entropy(logits, all.narrow(1, 1, n).squeeze(0));
  if (!logits_path.empty()) writeLogitsCsv(logits_path, logits);
  std::printf("{\"loss\": %.9g, \"tokens\": %lld}\n", loss.item<double>(), static_cast<long long>(n));
  return 0;
}

}  // namespace graft
