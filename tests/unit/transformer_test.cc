#include <gtest/gtest.h>
#include <torch/torch.h>

#include "formats/llama2c.h"
#include "model/device.h"
#include "model_fixtures.h"
#include "util/error.h"

namespace graft {
namespace {

TEST(Transformer, ParameterNamesAreCheckpointNames) {
  ModelConfig c;
  c.n_layers = 1;
  c.tied = false;
  Transformer m(c);
  std::vector<std::string> names;
  for (const auto& p : m->named_parameters()) names.push_back(p.key());
  const std::vector<std::string> expected = {
      "tok_embeddings.weight", "layers.0.attention_norm.weight", "layers.0.attention.wq.weight",
      "layers.0.attention.wk.weight", "layers.0.attention.wv.weight", "layers.0.attention.wo.weight",
      "layers.0.ffn_norm.weight", "layers.0.feed_forward.w1.weight", "layers.0.feed_forward.w2.weight",
      "layers.0.feed_forward.w3.weight", "norm.weight", "output.weight"};
  EXPECT_EQ(names, expected);
}

// Scoring continuations of a shared prefix (one prefix pass, its keys and values shared) gives
// what the plain forward pass gives on prefix | row: llama with grouped-query attention and a
// sliding window shorter than the prefix, gpt2, a soft prompt, and a single row.
TEST(Transformer, ContinuationLogProbsEqualTheFullForward) {
  struct Case {
    std::string arch;
    int window, prompt, rows;
  };
  for (const Case& k : {Case{"llama", 3, 0, 4}, Case{"gpt2", 0, 0, 3}, Case{"llama", 0, 2, 3}, Case{"llama", 3, 0, 1}}) {
    ModelConfig c;
    c.arch = k.arch;
    c.n_layers = 2;
    c.dim = 32;
    c.hidden_dim = 48;
    c.n_heads = 4;
    c.n_kv_heads = k.arch == "gpt2" ? 4 : 2;
    c.vocab_size = 50;
    c.seq_len = 24;
    c.sliding_window = k.window;
    Transformer m(c);
    m->initialise(7);
    if (k.prompt) m->addSoftPrompt(k.prompt, 3);
    torch::NoGradGuard no_grad;
    const auto prefix = torch::tensor({1, 4, 9, 16, 25, 36, 49}, torch::kInt64).unsqueeze(0);
    const auto rows = torch::randint(c.vocab_size, {k.rows, 5}, torch::kInt64);
    const auto got = m->continuationLogProbs(prefix, rows);
    ASSERT_EQ(got.sizes(), (std::vector<std::int64_t>{k.rows, 5}));
    for (int l = 0; l < k.rows; ++l) {
      const auto ids = torch::cat({prefix, rows[l].unsqueeze(0)}, 1);
      const auto logp = torch::log_softmax(m->forward(ids), -1)[0];
      for (int j = 0; j < 5; ++j) {
        const double want = logp[6 + j][rows[l][j].item<std::int64_t>()].item<double>();
        EXPECT_NEAR(got[l][j].item<double>(), want, 1e-4) << k.arch << " window " << k.window << " row " << l << " token " << j;
      }
    }
  }
}

TEST(Transformer, IsCausal) {
  ModelConfig c;
  c.n_layers = 2;
  Transformer m(c);
  m->initialise(1);
  torch::NoGradGuard g;
  auto a = torch::tensor({{1, 5, 9, 13}}, torch::kInt64);
  auto b = torch::tensor({{1, 5, 9, 200}}, torch::kInt64);
  auto la = m->forward(a), lb = m->forward(b);
  EXPECT_TRUE(torch::equal(la.narrow(1, 0, 3), lb.narrow(1, 0, 3)));
  EXPECT_FALSE(torch::equal(la.narrow(1, 3, 1), lb.narrow(1, 3, 1)));
}

// Incremental decoding (one position at a time, key/value cache) must give the logits of the full
// causal forward, for every family and with a sliding window shorter than the sequence.
TEST(Transformer, StepwiseDecodingMatchesFullForward) {
  for (const char* variant : {"llama", "gpt2", "window", "qkv_bias"}) {
    ModelConfig c;
    c.n_layers = 2;
    c.seq_len = 16;
    c.n_kv_heads = 2;
    if (std::string(variant) == "gpt2") c.arch = "gpt2", c.n_kv_heads = c.n_heads;
    if (std::string(variant) == "window") c.sliding_window = 3;
    if (std::string(variant) == "qkv_bias") c.qkv_bias = true;
    Transformer m(c);
    m->initialise(3);
    torch::NoGradGuard g;
    for (auto& p : m->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);  // non-zero biases too
    const std::vector<std::int64_t> ids = {1, 7, 30, 2, 99, 5, 41, 8};
    auto full = m->forward(torch::tensor(ids).unsqueeze(0)).squeeze(0);
    std::vector<KVSlot> cache;
    for (std::size_t pos = 0; pos < ids.size(); ++pos) {
      auto step = m->forwardStep(ids[pos], static_cast<std::int64_t>(pos), cache);
      EXPECT_TRUE(torch::allclose(step, full[static_cast<std::int64_t>(pos)], 1e-4, 1e-5)) << variant << " at " << pos;
    }
  }
}

// Sequences of 128 positions and more attend in blocks of queries (Note [causal attention in
// blocks]): the logits of a 200-position forward equal those of decoding one position at a time
// (the cache path, one piece) at the blocks' edges, and the gradients of a loss on its first 100
// positions equal those of the 100-position prefix run alone (one piece, no blocks); in a batch of
// two, each row's logits are its own. A sliding window shorter than the sequence keeps one piece.
TEST(Transformer, LongSequencesAttendInBlocksAsInOnePiece) {
  for (const char* arch : {"llama", "gpt2", "window"}) {
    ModelConfig c = testing::smallModel(std::string(arch) == "window" ? "llama" : arch);
    c.seq_len = 256;
    if (std::string(arch) == "window") c.sliding_window = 150;
    Transformer m(c);
    m->initialise(5);
    {
      torch::NoGradGuard g;
      for (auto& p : m->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);
    }
    torch::manual_seed(9);
    const auto ids = torch::randint(0, c.vocab_size, {1, 200}, torch::kInt64);
    {
      torch::NoGradGuard g;
      const auto full = m->forward(ids).squeeze(0);
      std::vector<KVSlot> cache;
      for (std::int64_t pos = 0; pos < 200; ++pos) {
        const auto step = m->forwardStep(ids[0][pos].item<std::int64_t>(), pos, cache);
        if (pos % 64 == 0 || pos % 64 == 63 || pos == 199) {
          EXPECT_LT(testing::relative(full[pos], step), 1e-5) << arch << " at " << pos;
        }
      }
      const auto two = torch::cat({ids, torch::randint(0, c.vocab_size, {1, 200}, torch::kInt64)});
      const auto both = m->forward(two);
      for (std::int64_t r = 0; r < 2; ++r)
        EXPECT_LT(testing::relative(both[r], m->forward(two.narrow(0, r, 1))[0]), 1e-6) << arch << " row " << r;
    }
    auto grads = [&](std::int64_t length) {
      for (auto& p : m->parameters()) p.mutable_grad() = torch::Tensor();
      const auto logits = m->forward(ids.narrow(1, 0, length)).narrow(1, 0, 100);
      torch::manual_seed(3);
      (logits * torch::randn(logits.sizes())).sum().backward();
      std::vector<torch::Tensor> out;
      for (auto& p : m->parameters()) out.push_back(p.grad().clone());
      return out;
    };
    const auto blocked = grads(200), alone = grads(100);
    // Absolute beside relative: the key bias's gradient is zero but for rounding (a bias added to
    // every key of a query moves its scores alike, and softmax ignores that).
    const auto names = m->named_parameters().keys();
    double largest = 0;
    for (const auto& g : alone) largest = std::max(largest, g.norm().item<double>());
    for (std::size_t i = 0; i < blocked.size(); ++i)
      EXPECT_LE((blocked[i] - alone[i]).norm().item<double>(), 1e-5 * (alone[i].norm().item<double>() + largest))
          << arch << " " << names[i] << ": gradient norm " << alone[i].norm().item<double>();
  }
}

// Packed documents leak nothing (Note [packed documents]): two rows of two documents each,
// padded, give every document the logits it has alone, and the gradients of the packed batch's
// summed loss equal the sum of each document's alone; for llama with grouped-query attention,
// gpt2 (learned positions), a sliding window shorter than a document, a soft prompt, and both (the
// window reaching back into the prompt from each document's own positions). (Rotary
// angles enter the scores only as differences, so for llama the positions' restart shows only in
// rounding; gpt2's learned positions are what catch a missing restart: watched fail both ways.)
TEST(Transformer, PackedDocumentsEachRunAsIfAlone) {
  for (const std::string arch : {"llama", "gpt2", "window", "prompt", "window+prompt"}) {
    ModelConfig c = testing::smallModel(arch == "gpt2" ? "gpt2" : "llama");
    if (arch.rfind("window", 0) == 0) c.sliding_window = 4;
    Transformer m(c);
    m->initialise(5);
    if (arch.find("prompt") != std::string::npos) m->addSoftPrompt(3, 8);
    {
      torch::NoGradGuard g;
      for (auto& p : m->parameters()) p.add_(torch::randn(p.sizes()) * 0.05);
    }
    torch::manual_seed(11);
    const std::int64_t T = 20;
    const std::vector<std::vector<int>> rows = {{5, 9}, {3, 7}};  // document lengths per row
    auto ids = torch::zeros({2, T}, torch::kInt64), positions = torch::zeros({2, T}, torch::kInt64);
    auto targets = torch::full({2, T}, -100, torch::kInt64);
    std::vector<torch::Tensor> docs;
    std::vector<std::pair<std::int64_t, std::int64_t>> where;  // row, first column
    for (std::int64_t r = 0; r < 2; ++r) {
      std::int64_t at = 0;
      for (const int length : rows[static_cast<std::size_t>(r)]) {
        const auto doc = torch::randint(1, c.vocab_size, {length}, torch::kInt64);
        ids[r].narrow(0, at, length).copy_(doc);
        positions[r].narrow(0, at, length).copy_(torch::arange(length, torch::kInt64));
        targets[r].narrow(0, at, length - 1).copy_(doc.narrow(0, 1, length - 1));
        docs.push_back(doc);
        where.emplace_back(r, at);
        at += length;
      }
      positions[r].narrow(0, at, T - at).copy_(torch::arange(T - at, torch::kInt64));  // padding: a document of its own
      ids[r].narrow(0, at, T - at).fill_(c.vocab_size - 1);
    }
    auto grads = [&]() {
      std::vector<torch::Tensor> out;
      for (auto& p : m->parameters()) out.push_back(p.grad().clone()), p.mutable_grad() = torch::Tensor();
      return out;
    };
    const auto packed_logits = m->forward(ids, positions);
    torch::nn::functional::cross_entropy(packed_logits.reshape({-1, c.vocab_size}), targets.reshape({-1}),
                                         torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-100))
        .backward();
    const auto packed = grads();
    std::vector<torch::Tensor> alone(packed.size());
    for (std::size_t d = 0; d < docs.size(); ++d) {
      const auto length = docs[d].size(0);
      const auto logits = m->forward(docs[d].unsqueeze(0))[0];
      const auto in_pack = packed_logits[where[d].first].narrow(0, where[d].second, length);
      EXPECT_LT(testing::relative(in_pack, logits), 1e-5) << arch << " document " << d;
      torch::nn::functional::cross_entropy(logits.narrow(0, 0, length - 1), docs[d].narrow(0, 1, length - 1),
                                           torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
          .backward();
      const auto g = grads();
      for (std::size_t i = 0; i < g.size(); ++i) alone[i] = alone[i].defined() ? alone[i] + g[i] : g[i];
    }
    const auto names = m->named_parameters().keys();
    for (std::size_t i = 0; i < packed.size(); ++i)
      EXPECT_LE((packed[i] - alone[i]).norm().item<double>(), 1e-5 * alone[i].norm().item<double>() + 1e-7)
          << arch << " " << names[i];
  }
}

// weightProduct (Note [products that keep no weight copies]) against autograd through the plain
// product it replaces, x @ cat(W)^T in the compute dtype: the same output, and the same gradients
// for x and each weight, with weights of different heights, one frozen, x of 3 and 2 dimensions,
// x needing no gradient; in bf16 the gradients come back float32, as the masters are.
TEST(Transformer, WeightProductGivesAutogradsGradients) {
  for (const auto dtype : {torch::kFloat, torch::kBFloat16}) {
    for (const bool three_d : {true, false}) {
      for (const bool x_grad : {true, false}) {
        torch::manual_seed(21);
        auto make = [&] {
          std::vector<torch::Tensor> w = {torch::randn({5, 8}), torch::randn({3, 8}), torch::randn({4, 8})};
          w[0].requires_grad_(true), w[2].requires_grad_(true);  // w[1] frozen
          return w;
        };
        const auto ws = make(), ref_ws = make();
        for (std::size_t i = 0; i < ws.size(); ++i) {
          torch::NoGradGuard g;
          ref_ws[i].copy_(ws[i]);
        }
        const auto shape = three_d ? std::vector<std::int64_t>{2, 3, 8} : std::vector<std::int64_t>{6, 8};
        const auto x0 = torch::randn(shape);
        auto x = x0.clone().requires_grad_(x_grad), rx = x0.clone().requires_grad_(x_grad);
        const auto y = weightProduct(x, ws, dtype);
        const auto ry = torch::matmul(rx.to(dtype), torch::cat(ref_ws).to(dtype).t());
        const std::string what = std::string(dtype == torch::kFloat ? "fp32" : "bf16") + (three_d ? " 3-d" : " 2-d") +
                                 (x_grad ? "" : " x without gradient");
        EXPECT_TRUE(torch::equal(y, ry)) << what;
        const auto up = torch::randn(y.sizes()).to(dtype);
        (y * up).sum().backward();
        (ry * up).sum().backward();
        const double tolerance = dtype == torch::kFloat ? 1e-6 : 1e-2;
        if (x_grad) {
          ASSERT_TRUE(x.grad().defined()) << what;
          EXPECT_EQ(x.grad().scalar_type(), torch::kFloat) << what;
          EXPECT_LT(testing::relative(x.grad(), rx.grad()), tolerance) << what;
        }
        for (std::size_t i = 0; i < ws.size(); ++i) {
          EXPECT_EQ(ws[i].grad().defined(), i != 1) << what << " weight " << i;
          if (i == 1) continue;
          EXPECT_EQ(ws[i].grad().scalar_type(), torch::kFloat) << what;
          EXPECT_LT(testing::relative(ws[i].grad(), ref_ws[i].grad()), tolerance) << what << " weight " << i;
        }
      }
    }
  }
}

TEST(Transformer, SlidingWindowLimitsHowFarBackTokensSee) {
  ModelConfig c;
  c.n_layers = 1;  // one layer: position t sees exactly positions (t - window, t]
  c.sliding_window = 2;
  Transformer m(c);
  m->initialise(1);
  torch::NoGradGuard g;
  auto a = m->forward(torch::tensor({{1, 5, 9, 13}}, torch::kInt64));
  auto b = m->forward(torch::tensor({{1, 6, 9, 13}}, torch::kInt64));  // change position 1
  EXPECT_FALSE(torch::equal(a.select(1, 2), b.select(1, 2)));           // 2 sees 1
  EXPECT_TRUE(torch::equal(a.select(1, 3), b.select(1, 3)));            // 3 sees only 2 and 3
}

// train.precision = bf16 (Note [mixed precision]): products in bfloat16, everything the optimizer
// and the checkpoint see in float32, and results within bfloat16's rounding of float32's.
TEST(Transformer, Bfloat16ProductsKeepFloat32MastersAndStayNearFloat32) {
  for (const std::string arch : {"llama", "gpt2"}) {
    ModelConfig c = testing::smallModel(arch, 96);
    c.tied = arch == "gpt2";
    Transformer full(c), half(c);
    full->initialise(3);
    half->initialise(3);
    if (arch == "llama")  // LoRA terms on two projections, drawn alike (B starts at 0: the base's outputs)
      for (auto* m : {&full, &half})
        for (auto& [name, p] : (*m)->projections())
          if (name == "layers.0.attention.wq" || name == "layers.1.feed_forward.w2") {
            auto gen = at::detail::createCPUGenerator(11);
            p->addLora(4, 8.0, 0.0, gen);
          }
    half->setComputeDtype(torch::kBFloat16);
    const auto ids = torch::randint(c.vocab_size, {2, c.seq_len + 1}, at::detail::createCPUGenerator(5), torch::kInt64);
    const auto inputs = ids.narrow(1, 0, c.seq_len), targets = ids.narrow(1, 1, c.seq_len);
    const auto logits_full = full->forward(inputs), logits_half = half->forward(inputs);
    ASSERT_EQ(logits_half.scalar_type(), torch::kFloat) << arch;
    const double logits_off = testing::relative(logits_half, logits_full);
    EXPECT_GT(logits_off, 0) << arch << ": no product ran in bfloat16";
    EXPECT_LT(logits_off, 1e-2) << arch;
    const auto loss_full = full->loss(inputs, targets), loss_half = half->loss(inputs, targets);
    EXPECT_LT(testing::relative(loss_half, loss_full), 1e-2) << arch;
    loss_full.backward();
    loss_half.backward();
    const auto a = full->named_parameters(), b = half->named_parameters();
    double total = 0;  // the whole gradient's norm: a floor for gradients that are 0 in exact arithmetic (key biases)
    for (const auto& p : a) total += p.value().grad().to(torch::kFloat64).square().sum().item<double>();
    for (const auto& p : a) {
      const auto& q = b[p.key()];
      EXPECT_EQ(q.scalar_type(), torch::kFloat) << p.key();
      ASSERT_TRUE(q.grad().defined()) << p.key();
      EXPECT_EQ(q.grad().scalar_type(), torch::kFloat) << p.key();
      const double off = (q.grad().to(torch::kFloat64) - p.value().grad().to(torch::kFloat64)).norm().item<double>();
      EXPECT_LT(off, 5e-2 * p.value().grad().norm().item<double>() + 1e-3 * std::sqrt(total)) << arch << " " << p.key();
    }
  }
}

TEST(Device, AutoTakesAGpuWhereThereIsOneAndCudaWithoutOneSaysWhy) {
  EXPECT_EQ(chooseDeviceType("cpu"), c10::DeviceType::CPU);
  EXPECT_EQ(deviceOfRank(c10::DeviceType::CPU, 3), c10::Device(c10::DeviceType::CPU));
  EXPECT_EQ(computeDtype("bf16"), torch::kBFloat16);
  if (torch::cuda::is_available()) {  // a GPU machine: auto takes it, and rank r its GPU r mod count
    EXPECT_EQ(chooseDeviceType("auto"), c10::DeviceType::CUDA);
    EXPECT_EQ(deviceOfRank(c10::DeviceType::CUDA, static_cast<int>(torch::cuda::device_count())).index(), 0);
    return;
  }
  EXPECT_EQ(chooseDeviceType("auto"), c10::DeviceType::CPU);
  try {
    chooseDeviceType("cuda");
    ADD_FAILURE() << "train.device = cuda accepted without a GPU";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("train.device = cuda"), std::string::npos) << e.what();
  }
}

TEST(Llama2c, SaveLoadRoundTripIsBitwise) {
  const std::string src = std::string(GRAFT_SHARED_DATA) + "/llama2c/stories260K.bin";
  auto m = loadLlama2c(src);
  EXPECT_EQ(m->config().dim, 64);
  EXPECT_EQ(m->config().n_kv_heads, 4);
  EXPECT_TRUE(m->config().tied);
  const std::string out = ::testing::TempDir() + "/rt260k.bin";
  saveLlama2c(m, out);
  auto back = loadLlama2c(out);
  auto p1 = m->named_parameters(), p2 = back->named_parameters();
  for (const auto& item : p1) EXPECT_TRUE(torch::equal(item.value(), p2[item.key()])) << item.key();
}

TEST(Llama2c, LyingHeaderIsAnInputError) {
  const std::string path = ::testing::TempDir() + "/lying.bin";
  FILE* f = fopen(path.c_str(), "wb");
  const int header[7] = {64, 172, 5, 8, 4, 512, 512};  // claims 260K parameters, holds none
  fwrite(header, 4, 7, f);
  fclose(f);
  try {
    loadLlama2c(path);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("needs"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft
