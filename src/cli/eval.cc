#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "cli/cli.h"
#include "config/command_line.h"
#include "convert/hf_model.h"
#include "convert/peft.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "model/device.h"
#include "convert/model_io.h"
#include "tokenizer/tokenizer.h"
#include "train/batches.h"
#include "util/error.h"
#include "util/json.h"
#include "util/files.h"

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
  auto rows = logits.cpu().contiguous();
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
struct DatasetEvalOptions {
  std::string split = "val", zero_shot, predictions;  // predictions: JSONL path, one line per example
  int shots = 0;
  std::int64_t max_examples = 0, micro_batch = 16;
  int seq_len = 0;  // language modelling: window length (0 = the model's context)
  std::string packing = "auto", per_document;  // per_document: JSONL path, one line per document
  std::uint64_t seed = 1234;
};

// One line per scored example, written at the end (temporary file + rename).
class Predictions {
 public:
  Predictions(const std::string& path, const TokenDataset& data) : path_(path), names_(data.labelNames()) {}
  void add(std::int64_t example, int label, std::int64_t predicted, double score) {
    if (path_.empty()) return;
    Json line = Json::object();
    line.set("example", example);
    line.set("label", names_[static_cast<std::size_t>(label)]);
    line.set("predicted", names_[static_cast<std::size_t>(predicted)]);
    line.set("score", score);
    text_ += line.dump() + "\n";
  }
  void write() const {
    if (!path_.empty()) writeFileAtomically(path_, text_);
  }

 private:
  std::string path_, text_;
  const std::vector<std::string>& names_;
};

// A labelled dataset scored with a classification head: accuracy and mean cross-entropy.
void evalClassifier(Transformer& model, const TokenDataset& data, const DatasetEvalOptions& o) {
  const std::int64_t n = o.max_examples > 0 ? std::min(o.max_examples, data.numDocuments()) : data.numDocuments();
  Predictions predictions(o.predictions, data);  // score: the predicted class's probability
  double loss = 0, correct = 0;
  for (std::int64_t at = 0; at < n; at += o.micro_batch) {
    const std::int64_t count = std::min(o.micro_batch, n - at);
    std::vector<std::int64_t> part(static_cast<std::size_t>(count));
    std::iota(part.begin(), part.end(), at);
    const auto b = documentBatch(data, part, model->config().seq_len, model->device());
    auto logits = model->classifySequences(b.ids, b.lengths);
    const auto& labels = b.labels;
    loss += torch::nn::functional::cross_entropy(logits, labels,
                                                 torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += logits.argmax(1).eq(labels).sum().item<double>();
    const auto [best_p_anywhere, best_anywhere] = torch::softmax(logits, 1).max(1);
    const auto best_p = best_p_anywhere.to(torch::kCPU, torch::kDouble), best = best_anywhere.cpu();  // one copy each
    for (std::int64_t i = 0; i < count; ++i)
      predictions.add(at + i, data.label(at + i), best[i].item<std::int64_t>(), best_p[i].item<double>());
  }
  predictions.write();
  std::printf("{\"accuracy\": %.6f, \"loss\": %.9g, \"examples\": %lld, \"labels\": %zu, \"mode\": \"classifier\"}\n",
              correct / n, loss / n, static_cast<long long>(n), data.labelNames().size());
}

// Per-document losses: each target's loss added to the document it belongs to, in file order.
class DocumentLosses {
 public:
  explicit DocumentLosses(const TokenDataset& data) : loss_(static_cast<std::size_t>(data.numDocuments()), 0.0),
                                                      targets_(loss_.size(), 0) {}
  // Sample `index`'s per-target losses [seq_len] (0 where a target does not count) and its targets.
  void add(const TokenDataset& data, std::int64_t index, const float* losses, const std::int64_t* targets) {
    const auto [first, last] = data.documentsOf(index);
    std::int64_t j = 0;
    for (auto d = first; d < last && j < data.seqLen(); ++d)
      for (std::int64_t p = 0; p < data.documentLength(d) && j < data.seqLen(); ++p, ++j)
        if (targets[j] != TokenDataset::kIgnoreTarget) {
          loss_[static_cast<std::size_t>(d)] += losses[j];
          ++targets_[static_cast<std::size_t>(d)];
        }
  }
  // One JSON line per document: {"document", "tokens" (targets that count), "loss" (their mean, null without any)}.
  void write(const std::string& path, const TokenDataset& data) const {
    std::string text;
    for (std::size_t d = 0; d < loss_.size(); ++d) {
      Json line = Json::object();
      line.set("document", static_cast<std::int64_t>(d));
      line.set("tokens", targets_[d]);
      if (targets_[d] > 0) line.set("loss", loss_[d] / static_cast<double>(targets_[d]));
      else line.set("loss", Json());
      if (data.documentLength(static_cast<std::int64_t>(d)) > data.seqLen() + 1) line.set("cut", true);
      text += line.dump() + "\n";
    }
    writeFileAtomically(path, text);
  }

 private:
  std::vector<double> loss_;
  std::vector<std::int64_t> targets_;
};

// A language-modelling split scored sample by sample, as training reads them (data.packing):
// mean next-token cross-entropy over the targets that count (all tokens, or the completions and
// assistant turns of prompt/completion data and conversations). With --per-document, the loss of
// each document of the split as well, documents isolated as in packing.
void evalLanguageModel(Transformer& model, const TokenDataset& data, const std::string& path, const DatasetEvalOptions& o) {
  const int seq_len = data.seqLen();
  std::int64_t n = data.numSamples();
  if (n == 0) throw InputError(path + ": the '" + o.split + "' split holds fewer than " + std::to_string(seq_len + 1) + " tokens");
  if (o.max_examples > 0) n = std::min(n, o.max_examples);
  std::unique_ptr<DocumentLosses> documents;
  if (!o.per_document.empty()) documents = std::make_unique<DocumentLosses>(data);
  double loss = 0, counted = 0;
  for (std::int64_t at = 0; at < n; at += o.micro_batch) {
    const std::int64_t count = std::min(o.micro_batch, n - at);
    std::vector<std::int64_t> part(static_cast<std::size_t>(count));
    std::iota(part.begin(), part.end(), at);
    const auto batch = windowBatch(data, part, model->device());
    const auto logits = windowLogits(model, batch);
    const auto window_loss = tokenLoss(logits, batch);
    loss += window_loss.sum.item<double>();
    counted += static_cast<double>(window_loss.counted);
    if (!documents) continue;
    const auto each = torch::nn::functional::cross_entropy(
                          logits.reshape({-1, logits.size(-1)}), batch.targets.to(logits.device()).reshape({-1}),
                          torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone).ignore_index(TokenDataset::kIgnoreTarget))
                          .to(torch::kCPU, torch::kFloat32).contiguous();
    const auto targets = batch.targets.cpu().contiguous();
    for (std::int64_t i = 0; i < count; ++i)
      documents->add(data, part[static_cast<std::size_t>(i)], each.data_ptr<float>() + i * seq_len,
                     targets.data_ptr<std::int64_t>() + i * seq_len);
  }
  if (documents) documents->write(o.per_document, data);
  std::printf("{\"loss\": %.9g, \"tokens\": %.0f, \"windows\": %lld, \"seq_len\": %d, \"packing\": \"%s\", \"mode\": \"lm\"}\n",
              loss / counted, counted, static_cast<long long>(n), seq_len, packingName(data.packing()));
}

// Prompt-based transfer without training: each label's verbalisation (TEMPLATE with {label}
// replaced) is scored as a continuation of the document, optionally after `shots` solved
// training examples; the label with the highest total log-probability wins.
void evalZeroShot(Transformer& model, const Tokenizer& tokenizer, const TokenDataset& data, const TokenDataset& train,
                  const DatasetEvalOptions& o) {
  const auto& names = data.labelNames();
  auto verbalise = [&](const std::string& label) {
    std::string text = o.zero_shot;
    const auto at = text.find("{label}");
    if (at == std::string::npos) throw InputError("--zero-shot template needs {label} (e.g. \" Topic: {label}.\")");
    std::string words = label;  // card_arrival -> "card arrival": closer to text a model has read
    std::replace(words.begin(), words.end(), '_', ' ');
    text.replace(at, 7, words);
    std::vector<std::int64_t> ids;
    for (int id : tokenizer.encode(text, false, false)) ids.push_back(id);
    return ids;
  };
  std::vector<std::vector<std::int64_t>> verbal;
  for (const auto& n : names) verbal.push_back(verbalise(n));
  // The few-shot prefix: `shots` training documents chosen by seed, each followed by its answer.
  std::vector<std::int64_t> prefix;
  for (int k = 0; k < o.shots; ++k) {
    const auto index = static_cast<std::int64_t>(mix64(o.seed + static_cast<std::uint64_t>(k)) %
                                                 static_cast<std::uint64_t>(train.numDocuments()));
    std::vector<std::int64_t> doc;
    train.document(index, model->config().seq_len, doc);
    prefix.insert(prefix.end(), doc.begin() + (prefix.empty() ? 0 : 1), doc.end());  // one BOS, at the start
    const auto& answer = verbal[static_cast<std::size_t>(train.label(index))];
    prefix.insert(prefix.end(), answer.begin(), answer.end());
  }
  const std::int64_t n = o.max_examples > 0 ? std::min(o.max_examples, data.numDocuments()) : data.numDocuments();
  const std::int64_t context = model->config().seq_len - model->promptLength();
  std::size_t longest = 0;
  for (const auto& v : verbal) longest = std::max(longest, v.size());
  if (static_cast<std::int64_t>(longest) + 1 > context)
    throw InputError("--zero-shot: a label's verbalisation of " + std::to_string(longest) + " tokens leaves no room for the document in a context of " +
                     std::to_string(context));
  Predictions predictions(o.predictions, data);  // score: the predicted label's total log-probability
  double correct = 0;
  for (std::int64_t k = 0; k < n; ++k) {
    // Evenly spaced over the split (files are often sorted by label).
    const std::int64_t i = k * data.numDocuments() / n;
    std::vector<std::int64_t> doc;
    data.document(i, context, doc);
    std::vector<std::int64_t> stem = prefix;
    stem.insert(stem.end(), doc.begin() + (prefix.empty() ? 0 : 1), doc.end());
    // Keep the end of the stem (the document) when the context is short.
    if (static_cast<std::int64_t>(stem.size() + longest) > context)
      stem.erase(stem.begin(), stem.begin() + static_cast<std::ptrdiff_t>(stem.size() + longest - static_cast<std::size_t>(context)));
    // The stem runs once; each label's verbalisation (right-padded to the longest) continues it.
    const auto L = static_cast<std::int64_t>(verbal.size());
    auto rows = torch::zeros({L, static_cast<std::int64_t>(longest)}, torch::kInt64);
    auto counts = torch::zeros({L, static_cast<std::int64_t>(longest)});
    for (std::int64_t l = 0; l < L; ++l) {
      const auto& v = verbal[static_cast<std::size_t>(l)];
      std::copy(v.begin(), v.end(), rows[l].data_ptr<std::int64_t>());
      counts[l].narrow(0, 0, static_cast<std::int64_t>(v.size())).fill_(1);
    }
    const auto logp = model->continuationLogProbs(torch::tensor(stem, torch::kInt64).unsqueeze(0), rows);  // [L, longest]
    const auto summed = (logp * counts.to(logp.device())).sum(1).to(torch::kFloat64).cpu().contiguous();
    const std::vector<double> score(summed.data_ptr<double>(), summed.data_ptr<double>() + L);
    const auto best = std::max_element(score.begin(), score.end()) - score.begin();
    correct += best == data.label(i) ? 1 : 0;
    predictions.add(i, data.label(i), best, score[static_cast<std::size_t>(best)]);
  }
  predictions.write();
  std::printf("{\"accuracy\": %.6f, \"examples\": %lld, \"labels\": %zu, \"mode\": \"%d-shot\"}\n", correct / n,
              static_cast<long long>(n), names.size(), o.shots);
}

}  // namespace

int runEval(const Args& args) {
  std::string model_path, adapter, tokenizer_spec, text, ids_text, logits_path, data_path, device;
  DatasetEvalOptions dataset;
  bool no_verify = false;
  po::options_description options("graft eval options");
  options.add_options()
      ("model", po::value(&model_path)->required(), "model: llama2.c .bin, graft .h5, or Hugging Face folder")
      ("adapter", po::value(&adapter), "a PEFT LoRA adapter folder to apply to the model")
      ("tokenizer", po::value(&tokenizer_spec), "tokenizer (with --text; default: the model's folder when it has one)")
      ("text", po::value(&text), "text to score (BOS first where the tokenizer expects it)")
      ("ids", po::value(&ids_text), "token ids to score, separated by spaces, instead of --text")
      ("logits", po::value(&logits_path), "also write one CSV row of raw logits per input position")
      ("data", po::value(&data_path),
       "a dataset from graft prepare: labelled -> accuracy of the model's classifier (or with --zero-shot of the "
       "language model); unlabelled -> mean next-token loss over its windows")
      ("split", po::value(&dataset.split)->default_value("val"), "dataset split to score")
      ("seq-len", po::value(&dataset.seq_len)->default_value(0),
       "unlabelled data: window length, as train.seq_len (0 = the model's context)")
      ("packing", po::value(&dataset.packing)->default_value("auto"),
       "unlabelled data: how samples are cut, as data.packing: auto (documents for conversations and prompt/completion "
       "data, else windows) | windows | documents | padded")
      ("per-document", po::value(&dataset.per_document),
       "unlabelled data: also write one JSON line per document of the split (document, tokens, loss) to this file, "
       "documents isolated as in packing")
      ("zero-shot", po::value(&dataset.zero_shot), "score each label's verbalisation, e.g. ' Intent: {label}.' (needs --tokenizer)")
      ("shots", po::value(&dataset.shots)->default_value(0), "with --zero-shot: solved training examples put before each question")
      ("predictions", po::value(&dataset.predictions),
       "with a labelled --data: write one JSON line per example (example, label, predicted, score) to this file")
      ("max-examples", po::value(&dataset.max_examples)->default_value(0),
       "score at most this many examples, evenly spaced over the split (0 = all)")
      ("seed", po::value(&dataset.seed)->default_value(1234), "which training examples --shots uses")
      ("device", po::value(&device)->default_value("auto"), "auto (a GPU when this build and machine have one) | cpu | cuda")
      ("no-verify", po::bool_switch(&no_verify), "do not check a graft checkpoint given as --model against its manifest first (for very large ones; the log says so)");
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft eval --model M (--tokenizer T --text TEXT | --ids \"1 403 407\") [--logits F.csv]\n"
                              "       graft eval --model M --data LABELLED.h5 [--zero-shot ' Intent: {label}.' --tokenizer T [--shots K]]\n"
                              "       graft eval --model M --data DATA.h5 [--split val] [--seq-len 128] [--per-document OUT.jsonl]\n"
                              "Prints {\"loss\": mean next-token cross-entropy (nats), \"tokens\": predicted tokens}, or for\n"
                              "a labelled dataset {\"accuracy\": ...}.",
                        options, vm))
    return 0;
  checkModelFile(model_path, !no_verify);
  auto model = loadModel(model_path);
  if (!adapter.empty()) loadPeftAdapter(model, adapter);
  moveModel(model, deviceOfRank(chooseDeviceType(device, "--device"), 0));
  if (!data_path.empty()) {
    torch::NoGradGuard no_grad;
    model->eval();
    // The window length matters for language modelling only; documents are cut to the context.
    const int seq_len = dataset.seq_len > 0 ? dataset.seq_len : static_cast<int>(model->config().seq_len - model->promptLength());
    auto packing = parsePacking(dataset.packing, "--packing");
    if (!dataset.per_document.empty()) {
      if (packing == Packing::Windows) throw InputError("--per-document needs documents apart: --packing documents or padded, not windows");
      if (packing == Packing::Auto) packing = Packing::Documents;
      if (!isDirectory(parentDirectory(dataset.per_document)))
        throw InputError("--per-document " + dataset.per_document + ": its folder does not exist");
    }
    const TokenDataset data(data_path, dataset.split, seq_len, DataResidency::Auto, packing);
    if (!dataset.predictions.empty() && !isDirectory(parentDirectory(dataset.predictions)))
      throw InputError("--predictions " + dataset.predictions + ": its folder does not exist");
    if (!data.hasLabels()) {
      if (!dataset.zero_shot.empty()) throw InputError(data_path + ": --zero-shot needs labels (prepare it with --label-field)");
      if (!dataset.predictions.empty()) throw InputError(data_path + ": --predictions needs labels (prepare it with --label-field)");
      if (!dataset.per_document.empty() && data.numSamples() == 0) throw InputError(data_path + ": the '" + dataset.split + "' split has no documents");
      evalLanguageModel(model, data, data_path, dataset);
      return 0;
    }
    if (!dataset.zero_shot.empty()) {
      if (tokenizer_spec.empty() && isHfModel(model_path)) tokenizer_spec = hfModelFolder(model_path);
      if (tokenizer_spec.empty()) throw InputError("--zero-shot needs --tokenizer to encode the label verbalisations");
      const TokenDataset train(data_path, "train", model->config().seq_len);
      evalZeroShot(model, *loadTokenizer(tokenizer_spec), data, train, dataset);
    } else {
      if (model->config().num_classes != static_cast<int>(data.labelNames().size()))
        throw InputError(model_path + ": has no " + std::to_string(data.labelNames().size()) +
                         "-class head for " + data_path + " (train one with task.type = classify, or use --zero-shot)");
      const auto& names = model->config().label_names;
      if (!names.empty() && names != data.labelNames())
        throw InputError(model_path + ": its head's labels (" + names.front() + ", ...) are not " + data_path +
                         "'s labels (" + data.labelNames().front() + ", ...) in the same order");
      evalClassifier(model, data, dataset);
    }
    return 0;
  }
  if (vm.count("text") == vm.count("ids")) throw InputError("give exactly one of --text and --ids (or --data)");
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
  auto loss = torch::nn::functional::cross_entropy(logits, all.narrow(1, 1, n).squeeze(0).to(logits.device()));
  if (!logits_path.empty()) writeLogitsCsv(logits_path, logits);
  std::printf("{\"loss\": %.9g, \"tokens\": %lld}\n", loss.item<double>(), static_cast<long long>(n));
  return 0;
}

}  // namespace graft
