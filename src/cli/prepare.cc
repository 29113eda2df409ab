#include <unistd.h>

#include <cstdio>

#include "cli/cli.h"
#include "config/command_line.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace po = boost::program_options;

int runPrepare(const Args& args) {
  std::string tokenizer_spec, input, output, delimiter, train_on;
  PrepareOptions opt;
  po::options_description options("graft prepare options");
  options.add_options()
      ("tokenizer", po::value(&tokenizer_spec)->required(),
       "tokenizer: llama2.c .bin, SentencePiece .model, GPT-2 encoder.json/vocab.bpe, tokenizer.json, a Hugging Face folder, or 'bytes'")
      ("input", po::value(&input)->required(), "text (documents separated by blank lines), .jsonl or .csv/.tsv")
      ("out", po::value(&output)->required(), "HDF5 token dataset to write (replaced atomically)")
      ("format", po::value(&opt.source.format)->default_value("auto"), "auto | text | jsonl | csv (auto: by extension)")
      ("text-field", po::value(&opt.source.text_field)->default_value("text"), "jsonl key / csv column of the text")
      ("prompt-field", po::value(&opt.source.prompt_field)->default_value("prompt"), "jsonl key / csv column of prompts")
      ("completion-field", po::value(&opt.source.completion_field)->default_value("completion"),
       "jsonl key / csv column of completions (the only tokens the loss is taken on)")
      ("label-field", po::value(&opt.source.label_field)->default_value("label"),
       "jsonl key / csv column of class labels (banking77: category); '' = none")
      ("delimiter", po::value(&delimiter), "csv field separator (default ',' or tab for .tsv)")
      ("val-fraction", po::value(&opt.val_fraction)->default_value(0.1),
       "share held out for validation (per label for labelled data)")
      ("max-per-label", po::value(&opt.max_per_label)->default_value(0),
       "few-shot: keep at most this many train examples per label (0 = all)")
      ("seed", po::value(&opt.seed)->default_value(1234), "seed of the train/validation split")
      ("chat-template", po::value(&opt.chat_template),
       "conversations (jsonl \"messages\"): chatml | llama3 | mistral | plain (default: the one a Hugging Face "
       "tokenizer folder's tokenizer_config.json names)")
      ("train-on", po::value(&train_on)->default_value("assistant"),
       "conversations: which tokens the loss reads: assistant (every assistant turn and its end-of-turn token) | "
       "last (the last assistant turn) | all")
      ("messages-field", po::value(&opt.source.messages_field)->default_value("messages"), "jsonl key of conversations");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft prepare --tokenizer T --input FILE --out DATA.h5 [--val-fraction F] [--chat-template NAME]\n"
                              "Tokenizes documents (BOS first) into train and val splits (docs/data-format.md),\n"
                              "streaming the input in constant memory.",
                        options, vm))
    return 0;
  // A label column asked for by name must exist; the default one is used only when present.
  opt.source.require_label = !vm["label-field"].defaulted() && !opt.source.label_field.empty();
  if (vm.count("delimiter")) {
    if (delimiter == "\\t" || delimiter == "tab") delimiter = "\t";
    if (delimiter.size() != 1) throw InputError("--delimiter must be one character (or 'tab')");
    opt.source.delimiter = delimiter[0];
  }
  opt.train_on = parseTrainOn(train_on, "--train-on");
  const auto tokenizer = loadTokenizer(tokenizer_spec);
  if (opt.chat_template.empty()) {  // the tokenizer's own, when its folder says which (read at the first conversation)
    auto endsWith = [&](const std::string& tail) {
      return tokenizer_spec.size() >= tail.size() && tokenizer_spec.compare(tokenizer_spec.size() - tail.size(), tail.size(), tail) == 0;
    };
    const bool hf = isDirectory(tokenizer_spec) || endsWith("tokenizer.json") || endsWith("tokenizer.model");
    const std::string config = (isDirectory(tokenizer_spec) ? tokenizer_spec : parentDirectory(tokenizer_spec)) + "/tokenizer_config.json";
    if (hf && fileExists(config)) opt.chat_template_config = config;
  } else {
    ChatTemplate{opt.chat_template};  // an unknown name fails here, before any work
  }
  const bool tty = isatty(fileno(stderr));
  const auto stats = prepareDataset(input, *tokenizer, output, opt, [&](std::int64_t done, std::int64_t total) {
    if (!tty) return;
    if (total > 0) {
      const int width = 30, filled = static_cast<int>(width * done / total);
      std::fprintf(stderr, "\rprepare: [%.*s%*s] %5.1f%% of %.1f MB", filled, "##############################",
                   width - filled, "", 100.0 * done / total, total / 1e6);
    } else {
      std::fprintf(stderr, "\rprepare: %.1f MB read", done / 1e6);
    }
  });
  if (tty) std::fprintf(stderr, "\n");
  std::printf("%s: train %lld docs / %lld tokens, val %lld docs / %lld tokens (%s)", output.c_str(),
              static_cast<long long>(stats.train_docs), static_cast<long long>(stats.train_tokens),
              static_cast<long long>(stats.val_docs), static_cast<long long>(stats.val_tokens), tokenizer->describe().c_str());
  if (!stats.labels.empty()) std::printf(", %zu labels", stats.labels.size());
  if (stats.skipped) std::printf(", %lld examples beyond --max-per-label left out", static_cast<long long>(stats.skipped));
  if (stats.conversations) {
    const std::string from = opt.chat_template.empty() ? " (recognised in " + opt.chat_template_config + "'s chat_template)"
                                                       : std::string(" (--chat-template)");
    std::printf(", %lld conversations with chat template %s%s, loss on %s", static_cast<long long>(stats.conversations),
                stats.chat_template.c_str(), from.c_str(),
                opt.train_on == TrainOn::All ? "every token" : opt.train_on == TrainOn::Last ? "the last assistant turn" : "assistant turns");
    if (stats.piecewise)
      std::printf("; %lld of them encoded part by part, as the tokenizer could not give their text back (their tokens "
                  "may differ from a whole rendering's)", static_cast<long long>(stats.piecewise));
  }
  else if (stats.loss_mask)
    std::printf(", loss on completions only");
  std::printf("\n");
  return 0;
}

}  // namespace graft
