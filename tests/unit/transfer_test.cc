// LoRA and QLoRA on the Transformer: the adapted model starts as the base, merging is exact up to
// float rounding, frozen weights get no gradient, targets select projections by name or glob.
#include <gtest/gtest.h>
#include <map>
#include <torch/torch.h>

#include "model/quant.h"
#include "model/transfer_apply.h"
#include "util/error.h"

namespace graft {
namespace {

Transformer tinyModel(const std::string& arch) {
  ModelConfig c;
  c.arch = arch;
  c.n_layers = 2;
  c.n_kv_heads = arch == "gpt2" ? c.n_heads : 2;
  c.tied = arch == "gpt2";
  Transformer m(c);
  m->initialise(9);
  return m;
}

TransferConfig lora(const std::string& targets, const std::string& quantize = "none") {
  TransferConfig t;
  t.mode = "lora";
  t.lora_rank = 4;
  t.lora_targets = targets;
  t.quantize = quantize;
  return t;
}

const auto kIds = torch::tensor({{1, 7, 30, 2, 99, 5, 41, 8}}, torch::kInt64);

TEST(Transfer, LoraWithZeroBReproducesTheBaseExactly) {
  for (const char* arch : {"llama", "gpt2"}) {
    auto m = tinyModel(arch);
    torch::NoGradGuard g;
    const auto base = m->forward(kIds);
    const auto adapted = applyTransfer(m, lora("wq,wk,wv,wo,w1,w2,w3,output"), 1);
    EXPECT_GE(adapted.size(), 12u) << arch;
    EXPECT_TRUE(torch::equal(m->forward(kIds), base)) << arch;
  }
}

TEST(Transfer, MergedWeightsEqualTheAdapterForward) {
  for (const char* arch : {"llama", "gpt2"}) {
    auto m = tinyModel(arch);
    applyTransfer(m, lora("wq,wv,w2"), 1);
    torch::NoGradGuard g;
    for (auto& [path, p] : m->projections())
      if (p->hasLora()) p->lora_B.normal_(0, 0.2);
    const auto adapted = m->forward(kIds);
    mergeAdapters(m);
    for (auto& [path, p] : m->projections()) EXPECT_FALSE(p->hasLora()) << path;
    EXPECT_TRUE(torch::allclose(m->forward(kIds), adapted, 1e-5, 1e-5)) << arch;
  }
}

TEST(Transfer, OnlyAdaptersGetGradients) {
  auto m = tinyModel("llama");
  applyTransfer(m, lora("wq,wv"), 1);
  const std::int64_t before = trainableParameters(m);
  EXPECT_EQ(before, 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4)));  // per layer: wq (A 4x64, B 64x4), wv (A 4x64, B 32x4)
  m->loss(kIds, kIds).backward();
  for (const auto& p : m->named_parameters()) {
    const bool adapter = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), adapter) << p.key();
    EXPECT_EQ(p.value().grad().defined(), adapter) << p.key();
  }
}

// QLoRA's product keeps the codes for backward, not a dequantized copy (Note [quantized products
// keep no dequantized copies]); it must give what autograd's own product of the dequantized
// weights gives: the same output and the same gradient of the input, one weight or fused parts.
TEST(Transfer, QuantizedProductsGiveAutogradsInputGradient) {
  torch::manual_seed(3);
  const auto a = quantize(torch::randn({48, 64}), QuantKind::NF4), b = quantize(torch::randn({16, 64}), QuantKind::NF4),
             c = quantize(torch::randn({32, 64}), QuantKind::Int8);
  // Odd shapes, and NF4 blocks of 32 that straddle rows.
  const auto d = quantize(torch::randn({33, 63}), QuantKind::NF4, 32), e = quantize(torch::randn({17, 63}), QuantKind::Int8);
  const std::vector<std::vector<const QuantizedWeight*>> cases = {{&a}, {&c}, {&a, &b, &c}, {&d, &e}};
  for (const auto dtype : {torch::kFloat, torch::kBFloat16})
    for (const auto& parts : cases) {
      const auto x0 = torch::randn({2, 5, parts.front()->shape[1]});
      const auto g = torch::randn({2, 5, 96});
      auto x = x0.clone().requires_grad_(true), r = x0.clone().requires_grad_(true);
      const auto y = dequantizedProduct(x, parts, dtype);
      std::vector<torch::Tensor> w;
      for (const auto* q : parts) w.push_back(q->dequantize());
      const auto ref = torch::matmul(r.to(dtype), torch::cat(w).to(dtype).t());
      ASSERT_EQ(y.sizes(), ref.sizes());
      EXPECT_TRUE(torch::equal(y, ref)) << dtype << " " << parts.size();
      y.backward(g.narrow(-1, 0, y.size(-1)).to(dtype));
      ref.backward(g.narrow(-1, 0, ref.size(-1)).to(dtype));
      EXPECT_TRUE(torch::allclose(x.grad(), r.grad(), 1e-6, 1e-6)) << dtype << " " << parts.size() << ": "
                                                                   << (x.grad() - r.grad()).abs().max().item<float>();
    }
}

// Through a whole model: QLoRA's adapters get the gradients they get on the same base held as
// float32 parameters (dequantizeBase), with fused q|k|v and w1|w3, in fp32 and bf16, with
// activations recomputed in backward or not.
TEST(Transfer, QloraAdaptersGetTheGradientsOfTheDequantizedBase) {
  for (const auto dtype : {torch::kFloat, torch::kBFloat16})
    for (const bool recompute : {false, true}) {
      std::vector<std::map<std::string, torch::Tensor>> grads;
      for (const bool quantized : {true, false}) {
        auto m = tinyModel("llama");
        applyTransfer(m, lora("wq,wv,w1,w2", "nf4"), 1);
        {
          torch::NoGradGuard g;
          torch::manual_seed(11);
          for (auto& [path, p] : m->projections())
            if (p->hasLora()) p->lora_B.normal_(0, 0.2);
        }
        if (!quantized)
          for (auto& [path, p] : m->projections())
            if (p->quantized()) p->dequantizeBase();
        m->setComputeDtype(dtype);
        m->setRecompute(recompute);
        m->loss(kIds, kIds).backward();
        std::map<std::string, torch::Tensor> g;
        for (const auto& p : m->named_parameters())
          if (p.value().requires_grad()) g[p.key()] = p.value().grad();
        grads.push_back(g);
      }
      ASSERT_EQ(grads[0].size(), grads[1].size());
      ASSERT_FALSE(grads[0].empty());
      for (const auto& [name, g] : grads[0]) {
        ASSERT_TRUE(g.defined()) << name;
        const double tolerance = dtype == torch::kFloat ? 1e-5 : 2e-2;
        EXPECT_TRUE(torch::allclose(g, grads[1].at(name), tolerance, tolerance))
            << name << (dtype == torch::kFloat ? " fp32" : " bf16") << (recompute ? " recompute" : "") << ": "
            << (g - grads[1].at(name)).abs().max().item<float>();
      }
    }
}

TEST(Transfer, QuantizedBaseRunsTheDequantizedWeights) {
  for (const char* kind : {"int8", "nf4"}) {
    auto m = tinyModel("llama");
    applyTransfer(m, lora("wq", kind), 1);
    // Projections are ~85% of this model: int8 keeps them in ~1/4 of float32, nf4 in ~1/7.
    const double float_bytes = 4.0 * static_cast<double>(totalParameters(m) - trainableParameters(m));
    EXPECT_LT(frozenBytes(m), float_bytes * (std::string(kind) == "int8" ? 0.4 : 0.3)) << kind;
    for (const auto& p : m->named_parameters()) EXPECT_EQ(p.key().find("wk.weight"), std::string::npos) << p.key();
    torch::NoGradGuard g;
    const auto quantized = m->forward(kIds);
    mergeAdapters(m);  // B = 0: the dequantized weights as plain parameters
    EXPECT_TRUE(torch::equal(m->forward(kIds), quantized)) << kind;
  }
}

TEST(Transfer, SoftPromptTrainsAloneAndDecodesStepwiseLikeTheFullForward) {
  for (const char* arch : {"llama", "gpt2"}) {
    auto m = tinyModel(arch);
    TransferConfig t;
    t.mode = "prompt";
    t.prompt_tokens = 5;
    EXPECT_EQ(applyTransfer(m, t, 1), std::vector<std::string>{"soft_prompt"});
    EXPECT_EQ(trainableParameters(m), 5 * 64);
    const auto ids = kIds;
    auto full = m->forward(ids).squeeze(0);
    EXPECT_EQ(full.size(0), ids.size(1));  // outputs keep the inputs' positions
    m->loss(ids, ids).backward();
    for (const auto& p : m->named_parameters()) EXPECT_EQ(p.value().grad().defined(), p.key() == "soft_prompt") << p.key();
    torch::NoGradGuard g;
    std::vector<KVSlot> cache;
    for (std::int64_t pos = 0; pos < ids.size(1); ++pos)
      EXPECT_TRUE(torch::allclose(m->forwardStep(ids[0][pos].item<std::int64_t>(), pos, cache), full[pos], 1e-4, 1e-5))
          << arch << " at " << pos;
  }
}

TEST(Transfer, TargetsByNameAndGlob) {
  auto m = tinyModel("llama");
  const auto adapted = applyTransfer(m, lora("layers.1.attention.*"), 1);
  EXPECT_EQ(adapted, (std::vector<std::string>{"layers.1.attention.wq", "layers.1.attention.wk", "layers.1.attention.wv",
                                               "layers.1.attention.wo"}));
  auto other = tinyModel("llama");
  EXPECT_THROW(applyTransfer(other, lora("q_proj"), 1), InputError);
  TransferConfig bad;
  bad.quantize = "nf4";  // full fine-tuning of a quantized base
  EXPECT_THROW(bad.validate(), InputError);
}

}  // namespace
}  // namespace graft
