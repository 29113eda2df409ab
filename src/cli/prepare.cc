#include <unistd.h>

#include <cstdio>

#include "cli/cli.h"
#include "cli/options.h"
#include "data/dataset.h"
#include "io/tokenizer.h"

namespace graft {
namespace po = boost::program_options;

int runPrepare(const Args& args) {
  std::string tokenizer_spec, input, output;
  double val_fraction = 0.1;
  std::uint64_t seed = 1234;
  po::options_description options("graft prepare options");
  options.add_options()
      ("tokenizer", po::value(&tokenizer_spec)->required(), "tokenizer: llama2.c .bin or 'bytes'")
      ("input", po::value(&input)->required(), "UTF-8 text; documents are separated by blank lines")
      ("out", po::value(&output)->required(), "HDF5 token dataset to write (replaced atomically)")
      ("val-fraction", po::value(&val_fraction)->default_value(0.1), "share of documents held out for validation")
      ("seed", po::value(&seed)->default_value(1234), "seed of the train/validation split");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft prepare --tokenizer T --input FILE.txt --out DATA.h5 [--val-fraction F]\n"
                              "Tokenizes documents (BOS first) into train and val splits (docs/data-format.md).",
                        options, vm))
    return 0;
  const auto tokenizer = loadTokenizer(tokenizer_spec);
  const bool tty = isatty(fileno(stderr));
  const auto stats = prepareDataset(input, *tokenizer, output, val_fraction, seed, [&](std::int64_t done, std::int64_t total) {
    if (tty) std::fprintf(stderr, "\rprepare: %5.1f%% of %lld bytes", total ? 100.0 * done / total : 100.0, static_cast<long long>(total));
  });
  if (tty) std::fprintf(stderr, "\n");
  std::printf("%s: train %lld docs / %lld tokens, val %lld docs / %lld tokens (%s)\n", output.c_str(),
              static_cast<long long>(stats.train_docs), static_cast<long long>(stats.train_tokens),
              static_cast<long long>(stats.val_docs), static_cast<long long>(stats.val_tokens), tokenizer->describe().c_str());
  return 0;
}

}  // namespace graft
