// convert/model_source.h: a model file read row range by row range (what each rank reads under
// dist.shard = parameters) gives exactly the rows of the whole tensors, for every format and
// layout: llama2.c, graft .h5, Hugging Face GPT-2 (Conv1D, fused q|k|v, F32) and Llama (rotary
// halves, BF16). The whole loads themselves are checked against independent references by the
// e2e Formats and Inference tests (transformers' and run.c's outputs).
#include <gtest/gtest.h>

#include <filesystem>
#include <torch/torch.h>

#include "convert/hf_model.h"
#include "convert/model_io.h"
#include "convert/model_source.h"
#include "formats/llama2c_header.h"
#include "model/parameter_storage.h"
#include "parallel/shard_plan.h"
#include "util/error.h"

namespace graft {
namespace {

const std::string kData = GRAFT_SHARED_DATA;

// Every parameter, cut as 1..5 ranks would cut it (row ranges of every size, empty ones too),
// read by rows, equals the same rows of the whole load. Where the source counts the bytes it reads
// (a Hugging Face folder, `element_bytes` > 0 as stored there), a read of n rows reads n rows'
// bytes, whatever the layout: a transposed Conv1D weight, one part of GPT-2's fused q|k|v, rotary
// q/k rows (those read whole heads: up to a head's rows more at each end).
void expectRowsOfTheWhole(const std::string& path, int element_bytes = 0, std::int64_t head_dim = 0) {
  auto source = openModelSource(path);
  ASSERT_TRUE(source) << path;
  auto whole = loadModel(path);
  std::size_t checked = 0;
  for (const auto& p : whole->named_parameters()) {
    const auto& t = p.value();
    const std::int64_t row_bytes = t.size(0) > 0 ? t.numel() / t.size(0) * element_bytes : 0;
    const bool rotary = p.key().find(".wq.") != std::string::npos || p.key().find(".wk.") != std::string::npos;
    const std::int64_t slack = rotary ? 2 * head_dim : 0;  // head_dim 0 where q/k are not rotated in the file
    for (int world = 1; world <= 5; ++world)
      for (int rank = 0; rank < world; ++rank) {
        const RowRange rows = shardRows(t.size(0), rank, world);
        auto shape = t.sizes().vec();
        shape[0] = rows.size();
        auto out = torch::full(shape, -7.0f);
        const std::int64_t before = source->bytesRead();
        source->read(p.key(), rows.begin, rows.end, out);
        ASSERT_TRUE(torch::equal(out, t.narrow(0, rows.begin, rows.size())))
            << path << ": " << p.key() << " rows [" << rows.begin << ", " << rows.end << ")";
        if (element_bytes > 0) {
          const std::int64_t read = source->bytesRead() - before;
          EXPECT_GE(read, rows.size() * row_bytes) << path << ": " << p.key() << " rows [" << rows.begin << ", " << rows.end << ")";
          EXPECT_LE(read, std::min(rows.size() + slack, t.size(0)) * row_bytes)
              << path << ": " << p.key() << " rows [" << rows.begin << ", " << rows.end << ") of " << t.size(0);
        }
        ++checked;
      }
  }
  EXPECT_GT(checked, 0u);
  if (element_bytes == 0) {
    EXPECT_EQ(source->bytesRead(), -1) << path << ": a source that does not count says so";
  }
}

// The bytes a llama2.c header implies are counted per kind of tensor, not by listing every layer:
// the same count as the list for a real model, and at once for a header claiming 2^20 layers
// (the list took 2.3 GB: the fuzzer's out-of-memory).
TEST(Llama2cHeader, FileBytesAreCountedWithoutListingEveryLayer) {
  ModelConfig c;
  c.dim = 64, c.hidden_dim = 172, c.n_layers = 5, c.n_heads = 8, c.n_kv_heads = 4, c.vocab_size = 512, c.seq_len = 512;
  std::uint64_t listed = static_cast<std::uint64_t>(c.seq_len) * static_cast<std::uint64_t>(c.headDim()), layer = 0;
  for (const auto& t : llama2cTensors(c)) {
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<std::uint64_t>(d);
    listed += n;
    if (t.name.rfind("layers.0.", 0) == 0) layer += n;
  }
  const std::uint64_t five = llama2cFileBytes(c);
  EXPECT_EQ(five, kLlama2cHeaderBytes + 4 * listed);
  EXPECT_EQ(five, std::filesystem::file_size(kData + "/llama2c/stories260K.bin"));
  c.n_layers = 1 << 20;
  EXPECT_EQ(llama2cFileBytes(c), five + 4 * layer * ((1u << 20) - 5));
}

TEST(ModelSource, Llama2cRowsAreTheWholeTensorsRows) { expectRowsOfTheWhole(kData + "/llama2c/stories260K.bin"); }

TEST(ModelSource, HuggingFaceGpt2RowsAreTheWholeTensorsRows) {
  expectRowsOfTheWhole(kData + "/hf/tiny-random-gpt2", /*element_bytes=*/4);  // F32
}

TEST(ModelSource, HuggingFaceLlamaBf16AndGraftH5RowsAreTheWholeTensorsRows) {
  ModelConfig c;
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 37, c.seq_len = 16;
  c.tied = false;
  Transformer m(c);
  m->initialise(11);
  const std::string dir = ::testing::TempDir() + "/source_llama_bf16";
  saveHfModel(m, dir, StDType::BF16);  // q/k rows stored as rotated halves, two bytes a value
  expectRowsOfTheWhole(dir, /*element_bytes=*/2, /*head_dim=*/c.dim / c.n_heads);
  const std::string h5 = ::testing::TempDir() + "/source_model.h5";
  saveModel(m, "graft", h5);
  expectRowsOfTheWhole(h5);
  auto source = openModelSource(h5);
  auto rows = torch::empty({3, 32});
  source->read("output.weight", 30, 33, rows);
  EXPECT_TRUE(torch::equal(rows, m->output->weight.narrow(0, 30, 3)));
  EXPECT_THROW(source->read("layers.9.attention.wq.weight", 0, 3, rows), InputError);
}

// A model built without memory has every parameter's shape and no values; the initialisation
// source draws any rows of any parameter alone, equal to Transformer::initialise's whole model.
TEST(ModelSource, InitialisationRowsEqualTheWholeInitialisation) {
  ModelConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 2, c.n_heads = 2, c.n_kv_heads = 2, c.vocab_size = 29, c.seq_len = 8;
  Transformer whole(c);
  whole->initialise(5);
  auto empty = modelWithoutMemory(c);
  auto source = initialisationSource(c, 5);
  auto a = whole->named_parameters(), b = empty->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : b) {
    EXPECT_FALSE(hasMemory(p.value())) << p.key();
    EXPECT_EQ(p.value().sizes(), a[p.key()].sizes()) << p.key();
    const std::int64_t n = p.value().size(0);
    auto shape = p.value().sizes().vec();
    shape[0] = n - n / 2;
    auto out = torch::empty(shape);
    source->read(p.key(), n / 2, n, out);  // the second half alone
    EXPECT_TRUE(torch::equal(out, a[p.key()].narrow(0, n / 2, n - n / 2))) << p.key();
  }
  // Memory given back and refilled keeps the tensor (what the shards and the model refer to).
  auto p = b["norm.weight"];
  auto values = refill(p);
  values.fill_(2.0f);
  EXPECT_TRUE(hasMemory(p));
  EXPECT_EQ(p.sum().item<float>(), 2.0f * c.dim);
  releaseMemory(p);
  EXPECT_FALSE(hasMemory(p));
}

// A file that does not hold what config.json implies is refused when the source opens, before any
// data is read, naming the file and the tensor.
TEST(ModelSource, MissingTensorIsNamedWhenTheSourceOpens) {
  ModelConfig c;
  c.dim = 16, c.hidden_dim = 24, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.vocab_size = 29, c.seq_len = 8;
  Transformer m(c);
  m->initialise(1);
  c.n_layers = 2;  // attributes of a two-layer model over the tensors of one layer
  Transformer two(c);
  two->initialise(1);
  const std::string h5b = ::testing::TempDir() + "/source_wrong2.h5";
  {
    H5File f = H5File::create(h5b);
    writeModelGroup(f, two, false, /*tensors=*/false);
    for (const auto& p : m->named_parameters()) f.writeTensor("/model/" + p.key(), p.value());
    f.close();
  }
  try {
    openModelSource(h5b);
    FAIL() << "opened";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(h5b), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("layers.1."), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft
