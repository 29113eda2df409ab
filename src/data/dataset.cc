#include "data/dataset.h"

#include <torch/torch.h>

#include <unistd.h>

#include <algorithm>
#include <unordered_map>

#include "data/sampler.h"
#include "formats/hdf5.h"
#include "util/checksum.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

// One split being written: buffers flushed to growing HDF5 datasets every ~1M tokens, so memory
// stays constant whatever the input size.
class SplitWriter {
 public:
  SplitWriter(H5File& file, std::string name) : file_(file), name_(std::move(name)) {
    file_.createGrowing(name_ + "/tokens", torch::kInt);
    file_.createGrowing(name_ + "/doc_offsets", torch::kLong);
    offsets_.push_back(0);
  }

  void add(const std::vector<int>& ids, const std::vector<std::uint8_t>& mask, int label) {
    tokens_.insert(tokens_.end(), ids.begin(), ids.end());
    total_tokens_ += static_cast<std::int64_t>(ids.size());
    offsets_.push_back(total_tokens_);
    if (has_mask_) mask_.insert(mask_.end(), mask.begin(), mask.end());
    if (has_labels_) labels_.push_back(label);
    ++docs_;
    if (tokens_.size() >= (1u << 20)) flush();
  }

  // Masks start when the first prompt/completion record arrives; tokens before it were all targets.
  void startMask() {
    if (has_mask_) return;
    flush();
    file_.createGrowing(name_ + "/loss_mask", torch::kByte);
    const std::vector<std::uint8_t> ones(1 << 16, 1);
    for (std::int64_t left = total_tokens_; left > 0; left -= static_cast<std::int64_t>(ones.size()))
      file_.append(name_ + "/loss_mask", torch::kByte, ones.data(), std::min<std::int64_t>(left, ones.size()));
    has_mask_ = true;
  }

  void startLabels() {
    file_.createGrowing(name_ + "/labels", torch::kInt);
    has_labels_ = true;
  }

  void flush() {
    file_.append(name_ + "/tokens", torch::kInt, tokens_.data(), static_cast<std::int64_t>(tokens_.size()));
    file_.append(name_ + "/doc_offsets", torch::kLong, offsets_.data(), static_cast<std::int64_t>(offsets_.size()));
    if (has_mask_) file_.append(name_ + "/loss_mask", torch::kByte, mask_.data(), static_cast<std::int64_t>(mask_.size()));
    if (has_labels_) file_.append(name_ + "/labels", torch::kInt, labels_.data(), static_cast<std::int64_t>(labels_.size()));
    tokens_.clear();
    offsets_.clear();
    mask_.clear();
    labels_.clear();
  }

  std::int64_t docs() const { return docs_; }
  std::int64_t tokens() const { return total_tokens_; }

 private:
  H5File& file_;
  std::string name_;
  std::vector<std::int32_t> tokens_, labels_;
  std::vector<std::int64_t> offsets_;
  std::vector<std::uint8_t> mask_;
  std::int64_t docs_ = 0, total_tokens_ = 0;
  bool has_mask_ = false, has_labels_ = false;
};

// A record's token ids and loss mask. Prompt and completion are encoded together (the tokenizer
// sees the text a model will see) and the prompt's share is found by encoding it alone; when the
// prompt's ids are not a prefix of the whole (a merge across the boundary), both parts are encoded
// separately and concatenated.
// False when a conversation had to be encoded piece by piece (ChatTemplate::encode).
bool encodeRecord(const Tokenizer& tokenizer, const TextRecord& r, const ChatTemplate* chat, TrainOn train_on,
                  const std::string& where, std::vector<int>& ids, std::vector<std::uint8_t>& mask) {
  if (!r.messages.empty()) return chat->encode(tokenizer, r.messages, train_on, where, ids, mask);
  const bool pair = r.text.empty() && (!r.prompt.empty() || !r.completion.empty());
  if (!pair) {
    ids = tokenizer.encode(r.text, /*add_bos=*/true, /*add_eos=*/false);
    mask.assign(ids.size(), 1);
    return true;
  }
  const bool eos = tokenizer.eos() >= 0;
  const auto prompt = tokenizer.encode(r.prompt, true, false);
  ids = tokenizer.encode(r.prompt + r.completion, true, eos);
  if (ids.size() < prompt.size() || !std::equal(prompt.begin(), prompt.end(), ids.begin())) {
    ids = prompt;
    std::vector<int> rest = tokenizer.encode(r.completion, false, eos);
    ids.insert(ids.end(), rest.begin(), rest.end());
  }
  mask.assign(ids.size(), 1);
  std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(prompt.size()), 0);
  return true;
}

}  // namespace

PrepareStats prepareDataset(const std::string& input, const Tokenizer& tokenizer, const std::string& output,
                            const PrepareOptions& options,
                            const std::function<void(std::int64_t, std::int64_t)>& progress) {
  if (options.val_fraction < 0 || options.val_fraction >= 1) throw InputError("--val-fraction must be in [0, 1)");
  auto records = openRecords(input, options.source);
  StratifiedSplit stratified(options.val_fraction, options.seed);
  FewShotLimit few_shot(options.max_per_label);
  PrepareStats stats;
  std::unordered_map<std::string, int> label_ids;

  const std::string tmp = output + ".tmp";
  try {
    H5File file = H5File::create(tmp);
    SplitWriter train(file, "/train"), val(file, "/val");
    // The newest train document waits here before it is written: if validation is still empty at
    // the end, it goes there instead (one document of memory, not the corpus).
    struct Held {
      std::vector<int> ids;
      std::vector<std::uint8_t> mask;
      int label = -1;
      bool valid = false;
    } held;
    TextRecord record;
    std::unique_ptr<ChatTemplate> chat;  // made at the first conversation
    std::vector<int> ids;
    std::vector<std::uint8_t> mask;
    std::int64_t index = 0, last_report = 0;
    bool first = true, labelled = false;
    while (records->next(record)) {
      const bool has_label = !record.label.empty();
      if (first) {
        labelled = has_label;
        if (labelled) train.startLabels(), val.startLabels();
        first = false;
      } else if (has_label != labelled) {
        throw InputError(input + ":" + std::to_string(record.line) + ": " +
                         (labelled ? "record without a label" : "record with a label") +
                         ", unlike the records before it");
      }
      const std::string where = input + ":" + std::to_string(record.line);
      if (!record.messages.empty() && !chat) {
        std::string name = options.chat_template;
        if (name.empty() && !options.chat_template_config.empty())
          name = ChatTemplate::recognise(readFile(options.chat_template_config), options.chat_template_config);
        if (name.empty())
          throw InputError(where + ": a conversation (\"messages\") needs a chat template: --chat-template chatml, llama3, "
                                   "mistral or plain (or a tokenizer folder whose tokenizer_config.json has one)");
        chat = std::make_unique<ChatTemplate>(name);
        chat->check(tokenizer);
        stats.chat_template = name;
      }
      if (!encodeRecord(tokenizer, record, chat.get(), options.train_on, where, ids, mask)) ++stats.piecewise;
      if (!record.messages.empty()) ++stats.conversations;
      if (!record.prompt.empty() || !record.completion.empty() || !record.messages.empty()) {
        train.startMask();
        val.startMask();
        stats.loss_mask = true;
      }
      int label = -1;
      bool to_val;
      if (labelled) {
        const auto it = label_ids.emplace(record.label, static_cast<int>(label_ids.size())).first;
        if (it->second == static_cast<int>(stats.labels.size())) stats.labels.push_back(record.label);
        label = it->second;
        to_val = stratified.isVal(record.label);
        if (!to_val && !few_shot.take(record.label)) {
          ++stats.skipped;
          continue;
        }
      } else {
        const double u = static_cast<double>(mix64(options.seed ^ mix64(static_cast<std::uint64_t>(index)))) / 18446744073709551616.0;
        to_val = u < options.val_fraction;
      }
      ++index;
      if (to_val) {
        val.add(ids, mask, label);
      } else {
        if (held.valid) train.add(held.ids, held.mask, held.label);
        held = {ids, mask, label, true};
      }
      if (records->bytesRead() - last_report > (1 << 20)) {
        progress(records->bytesRead(), records->bytesTotal());
        last_report = records->bytesRead();
      }
    }
    if (index == 0) throw InputError(input + ": no documents (empty file?)");
    if (held.valid) {
      const bool move_to_val = options.val_fraction > 0 && val.docs() == 0 && train.docs() >= 1;
      (move_to_val ? val : train).add(held.ids, held.mask, held.label);
    }
    train.flush();
    val.flush();
    progress(records->bytesRead(), records->bytesTotal());
    const bool v2 = stats.loss_mask || labelled;
    file.setAttr("/", "format", std::string("graft-tokens"));
    file.setAttr("/", "version", std::int64_t{v2 ? 2 : 1});
    file.setAttr("/", "tokenizer", tokenizer.describe());
    file.setAttr("/", "vocab_size", std::int64_t{tokenizer.vocabSize()});
    file.setAttr("/", "source", input);
    if (chat) file.setAttr("/", "chat_template", chat->name());
    if (labelled) {
      Json names = Json::array();
      for (const auto& l : stats.labels) names.push(l);
      file.setAttr("/", "label_names", names.dump());
    }
    stats.train_docs = train.docs();
    stats.val_docs = val.docs();
    stats.train_tokens = train.tokens();
    stats.val_tokens = val.tokens();
    file.close();
  } catch (...) {
    ::unlink(tmp.c_str());  // an error leaves nothing behind, and `output` untouched
    throw;
  }
  publishFile(tmp, output);
  return stats;
}

DataResidency parseResidency(const std::string& value, const std::string& key) {
  if (value == "auto") return DataResidency::Auto;
  if (value == "memory") return DataResidency::Memory;
  if (value == "stream") return DataResidency::Stream;
  throw InputError(key + " = " + value + ": expected auto, memory or stream");
}

Packing parsePacking(const std::string& value, const std::string& key) {
  if (value == "auto") return Packing::Auto;
  if (value == "windows") return Packing::Windows;
  if (value == "documents") return Packing::Documents;
  if (value == "padded") return Packing::Padded;
  throw InputError(key + " = " + value + ": expected auto, windows, documents or padded");
}

const char* packingName(Packing packing) {
  switch (packing) {
    case Packing::Auto: return "auto";
    case Packing::Windows: return "windows";
    case Packing::Documents: return "documents";
    case Packing::Padded: return "padded";
  }
  return "?";
}

std::string describePacking(const TokenDataset& data, const std::string& setting) {
  std::string line = std::string("data: packing ") + packingName(data.packing());
  if (setting == "auto")
    line += data.hasLossMask() ? " (data.packing = auto: the data has a loss mask, so documents stay apart)"
                               : " (data.packing = auto: plain text)";
  if (data.packing() == Packing::Windows) return line + ", windows of " + std::to_string(data.seqLen()) + " tokens across documents";
  const double slots = static_cast<double>(data.numSamples()) * (data.seqLen() + 1);
  char fill[32];
  std::snprintf(fill, sizeof fill, "%.1f%%", slots > 0 ? 100.0 * static_cast<double>(data.packedTokens()) / slots : 0.0);
  line += ": " + std::to_string(data.numDocuments()) + " training documents in " + std::to_string(data.numSamples()) +
          " sequences of " + std::to_string(data.seqLen() + 1) + " token slots, " + fill + " of them tokens; " +
          std::to_string(data.cutDocuments()) + " document(s) longer than that cut";
  if (data.cutDocuments() > 0) {
    line += ", losing " + std::to_string(data.lostTargets()) + " target token(s)";
    if (data.cutWithoutTargets() > 0)
      line += "; " + std::to_string(data.cutWithoutTargets()) + " of them keep no target at all (a longer train.seq_len keeps them)";
  }
  return line;
}

TokenDataset::TokenDataset(TokenDataset&&) noexcept = default;
TokenDataset::~TokenDataset() = default;

TokenDataset::TokenDataset(const std::string& path, const std::string& split, int seq_len, DataResidency residency,
                           Packing packing)
    : path_(path), seq_len_(seq_len) {
  auto file = std::make_unique<H5File>(H5File::openRead(path));
  if (!file->hasAttr("/", "format") || file->stringAttr("/", "format") != "graft-tokens")
    throw InputError(path + ": not a graft token dataset (make one with `graft prepare`)");
  const auto version = file->intAttr("/", "version");
  if (version != 1 && version != 2)
    throw InputError(path + ": dataset format version " + std::to_string(version) + " is not supported (expected 1 or 2)");
  vocab_size_ = static_cast<int>(file->intAttr("/", "vocab_size"));
  tokens_object_ = "/" + split + "/tokens";
  const std::string& object = tokens_object_;
  if (!file->exists(object)) throw InputError(path + ": has no '" + split + "' split");
  const auto token_shape = file->shape(object);
  if (token_shape.size() != 1 || file->scalarType(object) != torch::kInt)
    throw InputError(path + ":" + object + ": expected a 1-D int32 dataset");
  num_tokens_ = token_shape[0];
  mask_object_ = "/" + split + "/loss_mask";
  has_mask_ = file->exists(mask_object_);
  if (has_mask_ && (file->shape(mask_object_) != std::vector<std::int64_t>{num_tokens_} ||
                    file->scalarType(mask_object_) != torch::kByte))
    throw InputError(path + ":" + mask_object_ + ": expected uint8 [" + std::to_string(num_tokens_) + "], one per token");
  const std::int64_t bytes = num_tokens_ * (has_mask_ ? 5 : 4);
  const bool stream = residency == DataResidency::Stream || (residency == DataResidency::Auto && bytes > kAutoMemoryBytes);
  if (!stream) {
    tokens_.resize(static_cast<std::size_t>(num_tokens_));
    if (num_tokens_ > 0) file->readSlice(object, 0, num_tokens_, tokens_.data());
    for (std::size_t i = 0; i < tokens_.size(); ++i)
      if (tokens_[i] < 0 || tokens_[i] >= vocab_size_)
        throw InputError(path + ":" + object + ": token " + std::to_string(tokens_[i]) + " at " + std::to_string(i) +
                         " is outside the vocabulary of " + std::to_string(vocab_size_));
    if (has_mask_) {
      loss_mask_.resize(static_cast<std::size_t>(num_tokens_));
      if (num_tokens_ > 0) file->readSlice(mask_object_, 0, num_tokens_, loss_mask_.data());
    }
  }
  const std::string offsets = "/" + split + "/doc_offsets";
  if (file->exists(offsets)) {
    auto o = file->readTensor(offsets);
    if (o.dim() != 1 || o.scalar_type() != torch::kLong) throw InputError(path + ":" + offsets + ": expected a 1-D int64 dataset");
    offsets_.assign(o.data_ptr<std::int64_t>(), o.data_ptr<std::int64_t>() + o.numel());
    for (std::size_t i = 0; i < offsets_.size(); ++i)
      if (offsets_[i] < 0 || offsets_[i] > num_tokens_ || (i && offsets_[i] < offsets_[i - 1]))
        throw InputError(path + ":" + offsets + ": offset " + std::to_string(i) + " is out of order or range");
  }
  const std::string labels = "/" + split + "/labels";
  if (file->exists(labels) && file->hasAttr("/", "label_names")) {
    const Json names = parseJson(file->stringAttr("/", "label_names"), path + ": label_names");
    for (const auto& n : names.asArray(path + ": label_names")) label_names_.push_back(n.asString(path + ": label name"));
    auto l = file->readTensor(labels);
    if (l.dim() != 1 || l.scalar_type() != torch::kInt) throw InputError(path + ":" + labels + ": expected a 1-D int32 dataset");
    labels_.assign(l.data_ptr<std::int32_t>(), l.data_ptr<std::int32_t>() + l.numel());
    if (static_cast<std::int64_t>(labels_.size()) != numDocuments())
      throw InputError(path + ":" + labels + ": " + std::to_string(labels_.size()) + " labels for " +
                       std::to_string(numDocuments()) + " documents");
    for (auto v : labels_)
      if (v < 0 || v >= static_cast<int>(label_names_.size()))
        throw InputError(path + ":" + labels + ": label " + std::to_string(v) + " is not in label_names");
  }
  if (stream) file_ = std::move(file);
  packing_ = packing == Packing::Auto ? (has_mask_ ? Packing::Documents : Packing::Windows) : packing;
  if (hasLabels()) packing_ = Packing::Windows;  // classification reads whole documents
  if (packing_ != Packing::Windows) {
    if (offsets_.empty()) throw InputError(path + ": has no document offsets in '" + split + "' to pack");
    pack();
  }
}

void TokenDataset::pack() {
  // Next-fit in file order: a document joins the current sequence when it fits in what is left of
  // its seq_len + 1 slots, else starts the next one; a longer document fills one alone, cut.
  const std::int64_t slots = static_cast<std::int64_t>(seq_len_) + 1;
  std::int64_t used = slots;  // no open sequence yet
  for (std::int64_t d = 0; d < numDocuments(); ++d) {
    const auto length = documentLength(d);
    if (length == 0) continue;
    if (length > slots) {  // what the cut keeps and loses of its targets
      ++cut_documents_;
      const auto begin = offsets_[static_cast<std::size_t>(d)];
      std::int64_t kept = slots - 1, lost = length - slots;
      if (has_mask_) {
        std::vector<std::uint8_t> mask(static_cast<std::size_t>(length));
        readMask(begin, length, mask.data());
        kept = std::count_if(mask.begin() + 1, mask.begin() + slots, [](std::uint8_t v) { return v != 0; });
        lost = std::count_if(mask.begin() + slots, mask.end(), [](std::uint8_t v) { return v != 0; });
      }
      lost_targets_ += lost;
      if (kept == 0) ++cut_without_targets_;
    }
    const auto taken = std::min(length, slots);
    if (packing_ == Packing::Padded || used + taken > slots) {
      sequences_.push_back(d);
      used = 0;
    }
    used += taken;
    packed_tokens_ += taken;
  }
  sequences_.push_back(numDocuments());
}

void TokenDataset::readTokens(std::int64_t begin, std::int64_t n, std::int32_t* out) const {
  if (!file_) {
    std::copy(tokens_.begin() + begin, tokens_.begin() + begin + n, out);
    return;
  }
  if (n == 0) return;
  file_->readSlice(tokens_object_, begin, n, out);
  for (std::int64_t i = 0; i < n; ++i)
    if (out[i] < 0 || out[i] >= vocab_size_)
      throw InputError(path_ + ":" + tokens_object_ + ": token " + std::to_string(out[i]) + " at " + std::to_string(begin + i) +
                       " is outside the vocabulary of " + std::to_string(vocab_size_));
}

void TokenDataset::readMask(std::int64_t begin, std::int64_t n, std::uint8_t* out) const {
  if (!file_) std::copy(loss_mask_.begin() + begin, loss_mask_.begin() + begin + n, out);
  else if (n > 0) file_->readSlice(mask_object_, begin, n, out);
}

std::int64_t TokenDataset::numSamples() const {
  if (packing_ != Packing::Windows) return static_cast<std::int64_t>(sequences_.size()) - 1;
  const auto n = num_tokens_;
  return n <= seq_len_ ? 0 : (n - 1) / seq_len_;
}

std::pair<std::int64_t, std::int64_t> TokenDataset::documentsOf(std::int64_t index) const {
  return {sequences_[static_cast<std::size_t>(index)], sequences_[static_cast<std::size_t>(index) + 1]};
}

std::pair<std::int64_t, std::int64_t> TokenDataset::tokenRange(std::int64_t index) const {
  if (packing_ == Packing::Windows) return {index * seq_len_, index * seq_len_ + seq_len_ + 1};
  // A sequence's documents are consecutive, so its tokens are one range of the split.
  const auto [first, last] = documentsOf(index);
  const auto begin = offsets_[static_cast<std::size_t>(first)];
  return {begin, std::min(offsets_[static_cast<std::size_t>(last)], begin + seq_len_ + 1)};
}

void TokenDataset::sample(std::int64_t index, std::int64_t* out) const {
  const auto [begin, end] = tokenRange(index);
  std::vector<std::int32_t> window(static_cast<std::size_t>(seq_len_) + 1, 0);  // padding: token 0, never a target
  readTokens(begin, end - begin, window.data());
  std::copy(window.begin(), window.end(), out);
}

void TokenDataset::positions(std::int64_t index, std::int64_t* out) const {
  TORCH_CHECK(packing_ != Packing::Windows, "positions: windows have none of their own");
  const auto [begin, end] = tokenRange(index);
  const auto [first, last] = documentsOf(index);
  std::int64_t i = 0;
  for (auto d = first; d < last && i < seq_len_; ++d)
    for (std::int64_t p = 0; p < documentLength(d) && offsets_[static_cast<std::size_t>(d)] + p < end && i < seq_len_; ++p)
      out[i++] = p;
  for (std::int64_t p = 0; i < seq_len_; ++p) out[i++] = p;  // the padding
}

std::int64_t TokenDataset::document(std::int64_t index, std::int64_t max_tokens, std::vector<std::int64_t>& out) const {
  const auto begin = offsets_[static_cast<std::size_t>(index)], end = offsets_[static_cast<std::size_t>(index) + 1];
  const auto n = std::min(end - begin, max_tokens);
  std::vector<std::int32_t> doc(static_cast<std::size_t>(n));
  readTokens(begin, n, doc.data());
  out.insert(out.end(), doc.begin(), doc.end());
  return n;
}

// Which of sample `index`'s tokens [begin, end) are targets of the input before them: a token of
// the split (not padding), taken by the loss mask, and (packed) not the first token of a document.
std::vector<std::uint8_t> TokenDataset::learnable(std::int64_t index, std::int64_t begin, std::int64_t end) const {
  std::vector<std::uint8_t> learn(static_cast<std::size_t>(end - begin), 1);
  if (has_mask_) readMask(begin, end - begin, learn.data());
  if (!learn.empty()) learn[0] = 0;  // no input before it in this sample
  if (packing_ != Packing::Windows) {
    const auto [first, last] = documentsOf(index);
    for (auto d = first; d < last; ++d) {  // an empty document starts nothing
      const auto at = offsets_[static_cast<std::size_t>(d)];
      if (documentLength(d) > 0 && at < end) learn[static_cast<std::size_t>(at - begin)] = 0;
    }
  }
  return learn;
}

void TokenDataset::targets(std::int64_t index, std::int64_t* out) const {
  const auto [begin, end] = tokenRange(index);
  const auto n = end - begin;
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(n));
  readTokens(begin, n, tokens.data());
  const auto learn = learnable(index, begin, end);
  for (std::int64_t j = 0; j < seq_len_; ++j)
    out[j] = j + 1 < n && learn[static_cast<std::size_t>(j) + 1] ? tokens[static_cast<std::size_t>(j) + 1] : kIgnoreTarget;
}

std::int64_t TokenDataset::countTargets(std::int64_t index) const {
  if (!has_mask_ && packing_ == Packing::Windows) return seq_len_;
  const auto [begin, end] = tokenRange(index);
  const auto learn = learnable(index, begin, end);
  return std::count_if(learn.begin(), learn.end(), [](std::uint8_t v) { return v != 0; });
}

std::string datasetFingerprint(const std::string& path) {
  const H5File file = H5File::openRead(path);
  std::uint32_t crc = crc32(nullptr, 0);
  for (const auto& split : file.list("/")) {
    const std::string object = "/" + split + "/doc_offsets";
    if (!file.exists(object)) continue;
    const at::Tensor offsets = file.readTensor(object).contiguous();
    const std::size_t bytes = static_cast<std::size_t>(offsets.numel()) * offsets.element_size();
    crc = crc32Combine(crc, crc32(offsets.data_ptr(), bytes), bytes);
  }
  return "bytes=" + std::to_string(fileBytes(path)) + " offsets_crc32=" + std::to_string(crc);
}

}  // namespace graft
