// Models in and out: Hugging Face folders (gpt2, llama, mistral, qwen2; F32/F16/BF16; sharded),
// llama2.c files and graft .h5, checked against an independent PyTorch forward written in
// transformers' own layout (tests/e2e/hf_reference.py), plus export/convert/inspect and hostile files.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <tuple>

#include "e2e_util.h"

namespace graft::e2e {
namespace {

const std::string kGpt2 = data("hf/tiny-random-gpt2");
const std::string kStories = data("llama2c/stories260K.bin");


// graft's logits for `ids` on `model` vs the reference forward on `hf_folder` (the same weights in
// Hugging Face layout): returns {graft loss, reference loss, max |logit difference|, max |logit|}.
std::vector<double> compareLogits(const std::string& model, const std::string& hf_folder, const std::string& ids,
                                  const std::string& dir) {
  const auto ours = run(graft() + " eval --model " + model + " --ids '" + ids + "' --logits " + dir + "/logits.csv");
  EXPECT_EQ(ours.code, 0) << ours.output;
  const auto ref = run(hfReference() + " logits " + hf_folder + " '" + ids + "' " + dir + "/logits.csv");
  EXPECT_EQ(ref.code, 0) << ref.output;
  double our_loss = 0, ref_loss = 0, diff = 1, scale = 0;
  long long tokens = 0;
  EXPECT_EQ(sscanf(resultOf(ours.output), "{\"loss\": %lf, \"tokens\": %lld}", &our_loss, &tokens), 2) << ours.output;
  EXPECT_EQ(sscanf(ref.output.c_str(), "%lf %lf %lf", &ref_loss, &diff, &scale), 3) << ref.output;
  return {our_loss, ref_loss, diff, scale};
}

// tiny-random-gpt2 as stored gives logits under 0.5, where GELU's tanh approximation and the exact
// GELU differ by 5e-6: no tolerance could tell them apart. With its matrices scaled x25 the logits
// reach 11 and the two GELUs differ by 3.4e-3, so a relative 1e-5 of the largest logit can.
TEST(Formats, HuggingFaceGpt2LogitsMatchAnIndependentForward) {
  const std::string dir = freshDir("fmt_gpt2");
  const std::string ids = "0 5 9 13 200 999 4 17 300 2 1 77 500";
  const auto plain = compareLogits(kGpt2, kGpt2, ids, dir);
  EXPECT_NEAR(plain[0], plain[1], 1e-5 * plain[1]);
  EXPECT_LT(plain[2], 1e-4);
  ASSERT_EQ(run(hfReference() + " scaled " + kGpt2 + " " + dir + "/scaled 25").code, 0);
  const auto scaled = compareLogits(dir + "/scaled", dir + "/scaled", ids, dir);
  EXPECT_GT(scaled[3], 5.0);  // logits large enough to tell activations apart
  EXPECT_LT(scaled[2], 1e-5 * scaled[3]) << "max |difference| " << scaled[2] << " of logits up to " << scaled[3];
  EXPECT_NEAR(scaled[0], scaled[1], 1e-5 * scaled[1]);
}

TEST(Formats, ShardedFolderLoadsLikeOneFile) {
  const std::string dir = freshDir("fmt_shard");
  ASSERT_EQ(run(hfReference() + " shard " + kGpt2 + " " + dir + "/sharded").code, 0);
  const std::string ids = "0 5 9 13 200 999";
  EXPECT_EQ(run(graft() + " eval --model " + dir + "/sharded --ids '" + ids + "'").output,
            run(graft() + " eval --model " + kGpt2 + " --ids '" + ids + "'").output);
}

// Mistral's sliding window and Qwen2's q/k/v biases, stored as F32, F16 and BF16; the rotary
// permutation (Note [rotary layouts]) is checked by the reference's rotate-half forward.
TEST(Formats, LlamaFamilyVariantsAndDtypesMatchTheReference) {
  const std::string dir = freshDir("fmt_llama");
  for (const auto& [type, dtype] : std::vector<std::pair<std::string, std::string>>{
           {"llama", "F32"}, {"mistral", "BF16"}, {"qwen2", "F16"}}) {
    const std::string folder = dir + "/" + type + "_" + dtype;
    ASSERT_EQ(run(hfReference() + " random " + folder + " " + type + " " + dtype).code, 0);
    const auto r = compareLogits(folder, folder, "1 5 9 13 20 96 4 17 30 2 0 77", dir);
    EXPECT_NEAR(r[0], r[1], 1e-5 * r[1]) << type << " " << dtype;
    EXPECT_LT(r[2], 1e-4) << type << " " << dtype;
  }
}

TEST(Formats, Llama2cModelExportedToHfRunsInTransformersLayout) {
  const std::string dir = freshDir("fmt_export");
  const auto e = run(graft() + " export --model " + kStories + " --format hf --out " + dir + "/hf");
  ASSERT_EQ(e.code, 0) << e.output;
  const auto r = compareLogits(kStories, dir + "/hf", "1 403 407 9 35 270 300 12 55", dir);
  EXPECT_NEAR(r[0], r[1], 1e-5 * r[1]);
  EXPECT_LT(r[2], 1e-4);
}

TEST(Formats, ExportThenImportIsBitwise) {
  const std::string dir = freshDir("fmt_bitwise");
  // gpt2: HF -> graft -> HF gives the original tensors byte for byte.
  ASSERT_EQ(run(graft() + " export --model " + kGpt2 + " --format hf --out " + dir + "/a").code, 0);
  ASSERT_EQ(run(graft() + " export --model " + dir + "/a --format hf --out " + dir + "/b").code, 0);
  EXPECT_EQ(run("cmp " + dir + "/a/model.safetensors " + dir + "/b/model.safetensors").code, 0);
  const auto same = run(GRAFT_PYTHON " -c \"import sys; sys.path.insert(0, '" + std::string(GRAFT_SOURCE_DIR) +
                        "/tests/e2e'); import hf_reference as h, torch; a = h.read_folder('" + kGpt2 +
                        "'); b = h.read_folder('" + dir + "/a'); print(sorted(a) == sorted(b) and "
                        "all(torch.equal(a[k], b[k]) for k in a))\"");
  EXPECT_EQ(same.output, "True\n");
  // llama2.c -> HF -> llama2.c -> HF: the Q/K permutation is undone exactly.
  ASSERT_EQ(run(graft() + " export --model " + kStories + " --format hf --out " + dir + "/c").code, 0);
  ASSERT_EQ(run(graft() + " convert " + dir + "/c " + dir + "/c.bin").code, 0);
  ASSERT_EQ(run(graft() + " convert " + dir + "/c.bin " + dir + "/d").code, 0);
  EXPECT_EQ(run("cmp " + dir + "/c/model.safetensors " + dir + "/d/model.safetensors").code, 0);
  // The llama2.c weights (everything before the legacy rotary tables) come back unchanged.
  const auto weights = run("cmp -n 1040156 " + kStories + " " + dir + "/c.bin");
  EXPECT_EQ(weights.code, 0) << weights.output;
  // graft's own .h5 round trip.
  ASSERT_EQ(run(graft() + " convert " + dir + "/c " + dir + "/e.h5").code, 0);
  ASSERT_EQ(run(graft() + " convert " + dir + "/e.h5 " + dir + "/f").code, 0);
  EXPECT_EQ(run("cmp " + dir + "/c/model.safetensors " + dir + "/f/model.safetensors").code, 0);
}

// Each 16-bit export against the float32 model it came from: the reference decodes the exported
// bytes itself (F16 as IEEE half, BF16 as the top half of a float32) and its logits must be the
// float32 model's within that dtype's rounding, as must graft's own eval of the export. (Compared
// with itself, as it once was, an export that wrote f16 bytes under a BF16 label passed while
// every weight was destroyed: eval loss 6.24 = ln 512, a uniform model, against 12.24.)
TEST(Formats, SixteenBitExportsHalveTheFileAndKeepTheModel) {
  const std::string dir = freshDir("fmt_bf16");
  const std::string ids = "1 403 407 9 35 270";
  ASSERT_EQ(run(graft() + " export --model " + kStories + " --format hf --out " + dir + "/f32").code, 0);
  const auto f32 = compareLogits(kStories, dir + "/f32", ids, dir);  // graft's float32 logits, the reference's of the f32 export
  ASSERT_LT(f32[2], 1e-4 * f32[3]);
  // Relative tolerances of each dtype on this model's logits (bf16 keeps 8 bits of mantissa, f16 11).
  for (const auto& [dtype, label, tolerance] : std::vector<std::tuple<std::string, std::string, double>>{
           {"bf16", "bfloat16", 3e-2}, {"f16", "float16", 4e-3}}) {
    const std::string out = dir + "/" + dtype;
    ASSERT_EQ(run(graft() + " export --model " + kStories + " --format hf --dtype " + dtype + " --out " + out).code, 0);
    std::ifstream a(out + "/model.safetensors", std::ios::ate | std::ios::binary);
    std::ifstream b(dir + "/f32/model.safetensors", std::ios::ate | std::ios::binary);
    EXPECT_NEAR(static_cast<double>(a.tellg()) / static_cast<double>(b.tellg()), 0.5, 0.01) << dtype;
    EXPECT_NE(readText(out + "/config.json").find("\"torch_dtype\": \"" + label + "\""), std::string::npos) << dtype;
    // graft's float32 logits against the reference's of the 16-bit bytes.
    const auto r = compareLogits(kStories, out, ids, dir);
    EXPECT_GT(r[2], 0) << dtype << ": the export holds exactly the float32 weights, so it cannot be " << dtype;
    EXPECT_LT(r[2], tolerance * r[3]) << dtype << ": max |logit difference| " << r[2] << " of logits up to " << r[3];
    EXPECT_NEAR(r[1], f32[0], tolerance * f32[0]) << dtype << ": the reference's loss on the export";
    // graft reading its own export back.
    const auto back = compareLogits(out, dir + "/f32", ids, dir);
    EXPECT_NEAR(back[0], f32[0], tolerance * f32[0]) << dtype << ": graft's loss on the export";
  }
}

TEST(Formats, ExportRefusesToOverwrite) {
  const std::string dir = freshDir("fmt_overwrite");
  ASSERT_EQ(run(graft() + " export --model " + kGpt2 + " --format hf --out " + dir + "/a").code, 0);
  const std::string before = readText(dir + "/a/model.safetensors");
  const auto again = run(graft() + " export --model " + kStories + " --format hf --out " + dir + "/a");
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("--force"), std::string::npos) << again.output;
  EXPECT_EQ(readText(dir + "/a/model.safetensors"), before);
  const auto gpt2_as_llama2c = run(graft() + " export --model " + kGpt2 + " --format llama2c --out " + dir + "/g.bin");
  EXPECT_EQ(gpt2_as_llama2c.code, 2) << gpt2_as_llama2c.output;
  EXPECT_NE(gpt2_as_llama2c.output.find("plain llama"), std::string::npos) << gpt2_as_llama2c.output;
}

TEST(Formats, InspectReportsArchitectureTensorsAndParameters) {
  const auto ref = run(hfReference() + " tensors " + kGpt2);  // "<tensor count> <parameter count>"
  long long tensors = 0, params = 0;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lld %lld", &tensors, &params), 2) << ref.output;
  const auto r = run(graft() + " inspect " + kGpt2 + " --json > /tmp/graft_inspect.json && " GRAFT_PYTHON " -c \""
                     "import json; d = json.load(open('/tmp/graft_inspect.json')); "
                     "print(d['format'], d['architecture']['family'], d['architecture']['hidden_dim'], len(d['tensors']), d['parameters'])\"");
  ASSERT_EQ(r.code, 0) << r.output;
  // n_inner is null in config.json: 4 x n_embd = 128.
  EXPECT_EQ(r.output, "hugging face model gpt2 128 " + std::to_string(tensors) + " " + std::to_string(params) + "\n");
  const auto text = run(graft() + " inspect " + kStories);
  EXPECT_NE(text.output.find("format: llama2.c model"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("parameters: 260,032"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("layers.4.feed_forward.w3.weight"), std::string::npos) << text.output;
  const auto tok = run(graft() + " inspect " + data("llama2c/tok512.bin"));
  EXPECT_NE(tok.output.find("format: tokenizer"), std::string::npos) << tok.output;
}

// LoRA on GPT-2's q and v (and c_proj), exported for PEFT: q/k/v live in one fused c_attn there,
// so they become one c_attn adapter of twice the rank (Note [fused c_attn]). PEFT's own merge rule
// (the reference, with fan_in_fan_out and rank_pattern) gives graft's logits, and loading the
// folder back gives the checkpoint's loss.
TEST(Formats, Gpt2LoraOnQAndVExportsAsOneFusedCAttnPeftAdapter) {
  const std::string dir = freshDir("fmt_gpt2_peft");
  ASSERT_EQ(run("head -c 20000 " + data("datasets/tinyshakespeare/input.txt") + " > " + dir + "/s.txt && " + graft() +
                " prepare --tokenizer " + kGpt2 + " --input " + dir + "/s.txt --out " + dir + "/s.h5 --val-fraction 0.1").code, 0);
  std::ofstream(dir + "/lora.ini") << "[run]\ndir = " << dir << "/run\n[model]\npath = " << kGpt2 << "\n[data]\npath = "
                                   << dir << "/s.h5\n[transfer]\nmode = lora\nlora_rank = 2\nlora_alpha = 6\n"
                                   << "lora_targets = wq,wv,wo\n[train]\nsteps = 4\nbatch_size = 2\nmicro_batch = 2\n"
                                   << "seq_len = 32\nlr = 1e-2\nwarmup = 1\nthreads = 1\n[eval]\nevery = 4\nbatches = 1\n"
                                   << "[checkpoint]\nevery = 4\n";
  const auto t = run(graft() + " train --config " + dir + "/lora.ini");
  ASSERT_EQ(t.code, 0) << t.output;
  const std::string ckpt = dir + "/run/checkpoints/step-00000004.h5";
  const auto e = run(graft() + " export --model " + ckpt + " --format peft --out " + dir + "/peft");
  ASSERT_EQ(e.code, 0) << e.output;
  const std::string config = readText(dir + "/peft/adapter_config.json");
  EXPECT_NE(config.find("transformer.h.1.attn.c_attn"), std::string::npos) << config;
  EXPECT_NE(config.find("\"rank_pattern\": {\n    \"transformer.h.0.attn.c_attn\": 4"), std::string::npos) << config;
  const std::string ids = "0 5 9 13 200 999 4 17 300 2 1 77";
  const auto ours = run(graft() + " eval --model " + ckpt + " --ids '" + ids + "' --logits " + dir + "/ckpt.csv");
  ASSERT_EQ(ours.code, 0) << ours.output;
  const auto ref = run(hfReference() + " peft " + kGpt2 + " " + dir + "/peft '" + ids + "' " + dir + "/ckpt.csv");
  double ref_loss = 0, diff = 1;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lf", &ref_loss, &diff), 2) << ref.output;
  EXPECT_LT(diff, 1e-4);
  // The base's own logits differ: the adapters are not zero.
  const auto base = run(hfReference() + " logits " + kGpt2 + " '" + ids + "' " + dir + "/ckpt.csv");
  double base_loss = 0, base_diff = 0;
  ASSERT_EQ(sscanf(base.output.c_str(), "%lf %lf", &base_loss, &base_diff), 2) << base.output;
  EXPECT_GT(base_diff, 1e-3);
  EXPECT_EQ(std::string(resultOf(run(graft() + " eval --model " + kGpt2 + " --adapter " + dir + "/peft --ids '" + ids + "'").output)),
            std::string(resultOf(ours.output)));
}

// Hostile files: one line naming the file and the tensor or field, exit code 2, never a crash.
TEST(Formats, HostileHfFilesGiveOneLineErrors) {
  const std::string dir = freshDir("fmt_hostile");
  auto copy = [&](const std::string& name) {
    run("rm -rf " + dir + "/" + name + " && cp -r " + kGpt2 + " " + dir + "/" + name);
    return dir + "/" + name;
  };
  auto expect = [&](const std::string& model, const std::string& must_name) {
    const auto r = run(graft() + " eval --model " + model + " --ids '0 1 2'");
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(must_name), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  };
  const std::string truncated = copy("truncated");
  run("truncate -s 100000 " + truncated + "/model.safetensors");
  expect(truncated, "model.safetensors");
  const std::string garbage = copy("garbage");
  run("printf '\\377\\377\\377\\377\\377\\377\\377\\177junk' > " + garbage + "/model.safetensors");
  expect(garbage, "model.safetensors");
  const std::string wrong_type = copy("bert");
  run("sed -i 's/\"model_type\": \"gpt2\"/\"model_type\": \"bert\"/' " + wrong_type + "/config.json");
  expect(wrong_type, "model_type 'bert' is not supported");
  const std::string lying_shape = copy("lying");  // config claims a wider model than the tensors hold
  run("sed -i 's/\"n_embd\": 32/\"n_embd\": 64/' " + lying_shape + "/config.json");
  expect(lying_shape, "transformer.wte.weight");
  const std::string bad_json = copy("badjson");
  run("printf '{\"model_type\": \"gpt2\",' > " + bad_json + "/config.json");
  expect(bad_json, "config.json: invalid JSON at byte");
  const std::string scaling = dir + "/scaling";
  ASSERT_EQ(run(hfReference() + " random " + scaling + " llama F32").code, 0);
  run("sed -i 's/\"hidden_act\"/\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}, \"hidden_act\"/' " + scaling + "/config.json");
  expect(scaling, "rope_scaling");
}

// The round trip users make: a Hugging Face model and its tokenizer in, a data-parallel fine-tune,
// a Hugging Face model out that transformers' layout (the reference forward) runs identically.
TEST(Formats, FineTuneAHuggingFaceGpt2OnTwoRanksAndExportIt) {
  const std::string dir = freshDir("fmt_finetune");
  const auto prep = run("head -c 60000 " + data("datasets/tinyshakespeare/input.txt") + " > " + dir + "/shakespeare.txt && " +
                        graft() + " prepare --tokenizer " + kGpt2 + " --input " + dir + "/shakespeare.txt --out " + dir +
                        "/s.h5 --val-fraction 0.1");
  ASSERT_EQ(prep.code, 0) << prep.output;
  std::ofstream(dir + "/ft.ini") << "[run]\ndir = " << dir << "/run\n[model]\npath = " << kGpt2 << "\n[data]\npath = "
                                 << dir << "/s.h5\n[train]\nsteps = 12\nbatch_size = 4\nmicro_batch = 2\nseq_len = 64\n"
                                 << "lr = 3e-3\nmin_lr = 3e-4\nwarmup = 2\nthreads = 1\n[eval]\nevery = 12\nbatches = 2\n"
                                 << "[checkpoint]\nevery = 12\n";
  const auto t = run(mpirun(2) + " " + graft() + " train --config " + dir + "/ft.ini");
  ASSERT_EQ(t.code, 0) << t.output;
  const auto l = losses(dir + "/run");
  ASSERT_EQ(l.size(), 12u) << t.output;
  EXPECT_LT(std::stod(l.back()), std::stod(l.front()));
  const std::string ckpt = dir + "/run/checkpoints/step-00000012.h5";
  // inspect shows the training state of the checkpoint.
  const auto info = run(graft() + " inspect " + ckpt + " --json > " + dir + "/i.json && " GRAFT_PYTHON " -c \"import json; "
                        "d = json.load(open('" + dir + "/i.json')); t = d['training']; "
                        "print(d['format'], d['architecture']['family'], t['step'], t['world_size'], t['flavour'])\"");
  EXPECT_EQ(info.output, "graft checkpoint gpt2 12 2 full\n");
  const auto e = run(graft() + " export --model " + ckpt + " --format hf --out " + dir + "/hf");
  ASSERT_EQ(e.code, 0) << e.output;
  const auto r = compareLogits(ckpt, dir + "/hf", "0 5 9 13 200 999 4 17 300 2 1 77", dir);
  EXPECT_NEAR(r[0], r[1], 1e-5 * r[1]);
  EXPECT_LT(r[2], 1e-4);
}

}  // namespace
}  // namespace graft::e2e
