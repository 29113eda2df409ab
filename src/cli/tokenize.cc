#include <iostream>

#include "cli/cli.h"
#include "config/command_line.h"
#include "tokenizer/tokenizer.h"

namespace graft {
namespace po = boost::program_options;

int runTokenize(const Args& args) {
  std::string tokenizer_spec, text;
  bool no_bos = false;
  po::options_description options("graft tokenize options");
  options.add_options()
      ("tokenizer", po::value(&tokenizer_spec)->required(),
       "llama2.c .bin, SentencePiece .model, GPT-2 encoder.json/vocab.bpe, tokenizer.json, a Hugging Face folder, or 'bytes'")
      ("text", po::value(&text)->required(), "text to encode")
      ("no-bos", po::bool_switch(&no_bos), "never prepend BOS");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft tokenize --tokenizer T --text TEXT\n"
                              "Prints the token ids separated by spaces, BOS first where the tokenizer's models\n"
                              "expect it (llama2.c, SentencePiece; not GPT-2).", options, vm))
    return 0;
  const auto tokenizer = loadTokenizer(tokenizer_spec);
  const auto ids = tokenizer->encode(text, !no_bos && tokenizer->addsBos(), false);
  for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

}  // namespace graft
