#include "data/dataset.h"

#include <torch/torch.h>

#include <fstream>

#include "data/sampler.h"
#include "io/hdf5.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

struct Split {
  std::vector<std::int32_t> tokens;
  std::vector<std::int64_t> offsets{0};
  void add(const std::vector<int>& ids) {
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    offsets.push_back(static_cast<std::int64_t>(tokens.size()));
  }
  std::int64_t docs() const { return static_cast<std::int64_t>(offsets.size()) - 1; }
  void write(H5File& file, const std::string& name) const {
    file.writeTensor(name + "/tokens", torch::from_blob(const_cast<std::int32_t*>(tokens.data()),
                                                        {static_cast<std::int64_t>(tokens.size())}, torch::kInt32));
    file.writeTensor(name + "/doc_offsets", torch::from_blob(const_cast<std::int64_t*>(offsets.data()),
                                                             {static_cast<std::int64_t>(offsets.size())}, torch::kInt64));
  }
};

bool isBlank(const std::string& line) { return line.find_first_not_of(" \t\r") == std::string::npos; }

}  // namespace

PrepareStats prepareDataset(const std::string& input, const Tokenizer& tokenizer, const std::string& output,
                            double val_fraction, std::uint64_t seed,
                            const std::function<void(std::int64_t, std::int64_t)>& progress) {
  if (val_fraction < 0 || val_fraction >= 1) throw InputError("--val-fraction must be in [0, 1)");
  if (isDirectory(input)) throw InputError(input + ": is a directory, expected a text file");
  std::ifstream in(input, std::ios::binary);
  if (!in) throw InputError(input + ": cannot open input text");
  in.seekg(0, std::ios::end);
  const std::int64_t total = in.tellg();
  in.seekg(0);

  Split train, val;
  std::string line, doc;
  std::int64_t index = 0, read = 0, last_report = 0;
  std::vector<int> last_train_doc;
  auto flush = [&]() {
    if (doc.empty()) return;
    if (doc.back() == '\n') doc.pop_back();
    const auto ids = tokenizer.encode(doc, /*bos=*/true, /*eos=*/false);
    const double u = static_cast<double>(mix64(seed ^ mix64(static_cast<std::uint64_t>(index++)))) / 18446744073709551616.0;
    if (u < val_fraction) {
      val.add(ids);
    } else {
      train.add(ids);
      last_train_doc = ids;
    }
    doc.clear();
  };
  while (std::getline(in, line)) {
    read += static_cast<std::int64_t>(line.size()) + 1;
    if (isBlank(line)) {
      flush();
    } else {
      doc += line;
      doc += '\n';
    }
    if (read - last_report > (1 << 20)) {
      progress(read, total);
      last_report = read;
    }
  }
  flush();
  if (index == 0) throw InputError(input + ": no documents (empty file?)");
  if (val_fraction > 0 && val.docs() == 0 && train.docs() >= 2) {  // move the last train document
    val.add(last_train_doc);
    train.tokens.resize(train.tokens.size() - last_train_doc.size());
    train.offsets.pop_back();
  }
  progress(total, total);

  const std::string tmp = output + ".tmp";
  {
    H5File file = H5File::create(tmp);
    file.setAttr("/", "format", std::string("graft-tokens"));
    file.setAttr("/", "version", std::int64_t{1});
    file.setAttr("/", "tokenizer", tokenizer.describe());
    file.setAttr("/", "vocab_size", std::int64_t{tokenizer.vocabSize()});
    file.setAttr("/", "source", input);
    train.write(file, "/train");
    val.write(file, "/val");
    file.close();
  }
  publishFile(tmp, output);
  return {train.docs(), val.docs(), static_cast<std::int64_t>(train.tokens.size()),
          static_cast<std::int64_t>(val.tokens.size())};
}

TokenDataset::TokenDataset(const std::string& path, const std::string& split, int seq_len) : seq_len_(seq_len) {
  H5File file = H5File::openRead(path);
  if (!file.hasAttr("/", "format") || file.stringAttr("/", "format") != "graft-tokens")
    throw InputError(path + ": not a graft token dataset (make one with `graft prepare`)");
  if (file.intAttr("/", "version") != 1)
    throw InputError(path + ": dataset format version " + std::to_string(file.intAttr("/", "version")) +
                     " is not supported (expected 1)");
  vocab_size_ = static_cast<int>(file.intAttr("/", "vocab_size"));
  const std::string object = "/" + split + "/tokens";
  if (!file.exists(object)) throw InputError(path + ": has no '" + split + "' split");
  auto t = file.readTensor(object);
  if (t.dim() != 1 || t.scalar_type() != torch::kInt)
    throw InputError(path + ":" + object + ": expected a 1-D int32 dataset");
  tokens_.assign(t.data_ptr<std::int32_t>(), t.data_ptr<std::int32_t>() + t.numel());
  for (std::size_t i = 0; i < tokens_.size(); ++i)
    if (tokens_[i] < 0 || tokens_[i] >= vocab_size_)
      throw InputError(path + ":" + object + ": token " + std::to_string(tokens_[i]) + " at " + std::to_string(i) +
                       " is outside the vocabulary of " + std::to_string(vocab_size_));
}

std::int64_t TokenDataset::numSamples() const {
  const auto n = static_cast<std::int64_t>(tokens_.size());
  return n <= seq_len_ ? 0 : (n - 1) / seq_len_;
}

void TokenDataset::sample(std::int64_t index, std::int64_t* out) const {
  const std::int64_t start = index * seq_len_;
  for (int i = 0; i <= seq_len_; ++i) out[i] = tokens_[static_cast<std::size_t>(start + i)];
}

}  // namespace graft
