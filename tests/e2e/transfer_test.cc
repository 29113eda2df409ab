// Parameter-efficient transfer end to end under mpirun: LoRA and QLoRA fine-tunes of stories260K on
// two ranks; adapter-only checkpoints; exact resume; merged and PEFT exports checked against an
// independent forward in transformers' layout; frozen weights untouched and never communicated.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "e2e_util.h"

namespace graft::e2e {
namespace {

const std::string kBase = data("llama2c/stories260K.bin");

std::string python(const std::string& script) {
  const auto r = run(GRAFT_PYTHON " -c \"" + script + "\"");
  EXPECT_EQ(r.code, 0) << r.output;
  return r.output;
}

std::string loraConfig(const std::string& run_dir, const std::string& quantize, const std::string& targets) {
  return "[run]\ndir = " + run_dir + "\n[model]\npath = " + kBase + "\n[transfer]\nmode = lora\nlora_rank = 4\n"
         "lora_alpha = 8\nlora_targets = " + targets + "\nquantize = " + quantize + "\n[data]\npath = " + storiesDataset() +
         "\n[train]\nsteps = 8\nbatch_size = 4\nmicro_batch = 2\nseq_len = 64\nlr = 5e-3\nmin_lr = 5e-4\nwarmup = 1\n"
         "threads = 1\nseed = 3\n[eval]\nevery = 8\nbatches = 1\n[checkpoint]\nevery = 4\n";
}

std::string train(const std::string& dir, const std::string& config, const std::string& extra = "") {
  std::ofstream(dir + "/lora.ini") << config;
  const auto r = run(mpirun(2) + " " + graft() + " train --config " + dir + "/lora.ini " + extra);
  EXPECT_EQ(r.code, 0) << r.output;
  return r.output;
}

TEST(Transfer, LoraOnTwoRanksWritesAdaptersOnlyAndExportsMergedAndPeft) {
  const std::string dir = freshDir("lora");
  const auto out = train(dir, loraConfig(dir + "/run", "none", "wq,wk,wv,wo"));
  // 5 layers x (wq 4x64 + 64x4, wk 4x64 + 32x4, wv the same, wo 4x64 + 64x4) adapter parameters.
  const int trainable = 5 * (2 * (256 + 256) + 2 * (256 + 128));
  EXPECT_NE(out.find(std::to_string(trainable) + " of " + std::to_string(260032 + trainable) + " parameters train"),
            std::string::npos) << out;
  EXPECT_NE(out.find(std::to_string(trainable) + " elements per step"), std::string::npos) << out;  // only adapters are all-reduced
  const auto l = losses(dir + "/run");
  ASSERT_EQ(l.size(), 8u);
  for (const auto& loss : l) EXPECT_TRUE(std::isfinite(std::stod(loss))) << loss;
  const std::string ckpt = dir + "/run/checkpoints/step-00000008.h5";
  // Adapter-only: the model and optimizer groups hold lora_A / lora_B and nothing else.
  EXPECT_EQ(python("import h5py; f = h5py.File('" + ckpt + "', 'r'); names = list(f['model']) + list(f['optimizer/exp_avg']); "
                   "m = f['transfer'].attrs['mode']; print(len(names), all('lora_' in n for n in names), m.decode() if isinstance(m, bytes) else m)"),
            "80 True lora\n");
  // Merged export (Hugging Face) vs the adapter checkpoint: the same logits, checked by the
  // reference forward in transformers' layout.
  ASSERT_EQ(run(graft() + " export --model " + ckpt + " --format hf --out " + dir + "/merged").code, 0);
  const std::string ids = "1 403 407 9 35 270 300 12 55";
  const auto ours = run(graft() + " eval --model " + ckpt + " --ids '" + ids + "' --logits " + dir + "/adapter.csv");
  ASSERT_EQ(ours.code, 0) << ours.output;
  const auto ref = run(hfReference() + " logits " + dir +
                       "/merged '" + ids + "' " + dir + "/adapter.csv");
  double ref_loss = 0, diff = 1;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lf", &ref_loss, &diff), 2) << ref.output;
  EXPECT_LT(diff, 1e-4);
  // PEFT export, loaded back onto the base: the same loss as the adapter checkpoint.
  const auto peft = run(graft() + " export --model " + ckpt + " --format peft --out " + dir + "/peft");
  ASSERT_EQ(peft.code, 0) << peft.output;
  EXPECT_NE(readText(dir + "/peft/adapter_config.json").find("model.layers.4.self_attn.q_proj"), std::string::npos);
  EXPECT_EQ(std::string(resultOf(run(graft() + " eval --model " + kBase + " --adapter " + dir + "/peft --ids '" + ids + "'").output)),
            std::string(resultOf(run(graft() + " eval --model " + ckpt + " --ids '" + ids + "'").output)));
  // ... and read as PEFT defines it (W + alpha/r B A on the HF base) by the reference.
  ASSERT_EQ(run(graft() + " export --model " + kBase + " --format hf --out " + dir + "/base_hf").code, 0);
  const auto peft_ref = run(hfReference() + " peft " + dir + "/base_hf " + dir + "/peft '" + ids + "' " + dir + "/adapter.csv");
  ASSERT_EQ(sscanf(peft_ref.output.c_str(), "%lf %lf", &ref_loss, &diff), 2) << peft_ref.output;
  EXPECT_LT(diff, 1e-4);
  // Frozen weights keep their exact bytes: LoRA on wq only, merged; everything but wq equals the base.
  const std::string wq_dir = freshDir("lora_wq");
  train(wq_dir, loraConfig(wq_dir + "/run", "none", "wq"), "--train.steps=2 --checkpoint.every=2");
  ASSERT_EQ(run(graft() + " export --model " + wq_dir + "/run/checkpoints/step-00000002.h5 --format graft --out " + wq_dir + "/m.h5").code, 0);
  ASSERT_EQ(run(graft() + " export --model " + kBase + " --format graft --out " + wq_dir + "/base.h5").code, 0);
  EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + wq_dir + "/m.h5', 'r')['model']; b = h5py.File('" + wq_dir +
                   "/base.h5', 'r')['model']; same = [np.array_equal(a[k][:], b[k][:]) for k in b]; "
                   "print(sum(same), len(b) - sum(same), all(s or 'wq' in k for s, k in zip(same, b)))"),
            "42 5 True\n");
}

// Gradual unfreezing: with one layer per 100 steps, a 3-step run trains the top and the last layer
// only; every other weight keeps its exact bytes. Layer-wise decay runs alongside.
TEST(Transfer, GradualUnfreezingLeavesLowerLayersUntouched) {
  const std::string dir = freshDir("unfreeze");
  std::string config = loraConfig(dir + "/run", "none", "wq");
  config.replace(config.find("mode = lora"), 11, "mode = full\nunfreeze_every = 100\nlayer_lr_decay = 0.8");
  std::ofstream(dir + "/full.ini") << config;
  const auto r = run(mpirun(2) + " " + graft() + " train --config " + dir + "/full.ini --train.steps=3 --checkpoint.every=3");
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(run(graft() + " export --model " + kBase + " --format graft --out " + dir + "/base.h5").code, 0);
  EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + dir + "/run/checkpoints/step-00000003.h5', 'r')['model']; "
                   "b = h5py.File('" + dir + "/base.h5', 'r')['model']; "
                   "changed = sorted(k for k in b if not np.array_equal(a[k][:], b[k][:])); "
                   "print(all(k.startswith('layers.4.') or k == 'norm.weight' for k in changed), len(changed))"),
            "True 10\n");  // layers.4: 9 tensors, and the final norm
}

TEST(Transfer, PromptTuningCheckpointsThePromptResumesAndExportsToPeft) {
  const std::string straight = freshDir("prompt"), split = freshDir("prompt_split");
  std::string config = loraConfig(straight + "/run", "none", "wq");
  config.replace(config.find("mode = lora"), 11, "mode = prompt\nprompt_tokens = 8");
  std::string split_config = config;
  split_config.replace(split_config.find(straight), straight.size(), split);
  const auto out = train(straight, config);
  EXPECT_NE(out.find("8 soft-prompt vectors, 512 of"), std::string::npos) << out;  // 8 x 64
  train(split, split_config, "--train.stop_after=5");
  expectResumedFrom(train(split, split_config), split + "/run", 5);
  EXPECT_EQ(losses(straight + "/run"), losses(split + "/run"));
  const std::string ckpt = straight + "/run/checkpoints/step-00000008.h5";
  EXPECT_EQ(python("import h5py; print(list(h5py.File('" + ckpt + "', 'r')['model']))"), "['soft_prompt']\n");
  ASSERT_EQ(run(graft() + " export --model " + ckpt + " --format peft --out " + straight + "/peft").code, 0);
  EXPECT_NE(readText(straight + "/peft/adapter_config.json").find("PROMPT_TUNING"), std::string::npos);
  const std::string ids = "1 403 407 9 35 270 300 12 55";
  const auto from_ckpt = run(graft() + " eval --model " + ckpt + " --ids '" + ids + "'");
  EXPECT_EQ(std::string(resultOf(run(graft() + " eval --model " + kBase + " --adapter " + straight + "/peft --ids '" + ids + "'").output)),
            std::string(resultOf(from_ckpt.output)));
  EXPECT_NE(std::string(resultOf(run(graft() + " eval --model " + kBase + " --ids '" + ids + "'").output)),
            std::string(resultOf(from_ckpt.output)));  // the prompt matters
  const auto merged = run(graft() + " export --model " + ckpt + " --format hf --out " + straight + "/hf");
  EXPECT_EQ(merged.code, 2) << merged.output;
  EXPECT_NE(merged.output.find("--format peft"), std::string::npos) << merged.output;
}

// Feature extraction for language modelling trains the LM head alone (untied from the embedding);
// graft eval --data scores the split the way training validates it.
TEST(Transfer, LmHeadAloneAndEvalOnAnUnlabelledSplit) {
  const std::string dir = freshDir("lm_head");
  std::string config = loraConfig(dir + "/run", "none", "wq");
  config.replace(config.find("mode = lora"), 11, "mode = feature");
  const auto out = train(dir, config, "--eval.batches=1");
  EXPECT_NE(out.find("(LM head alone), 32768 of"), std::string::npos) << out;  // 512 x 64
  const std::string ckpt = dir + "/run/checkpoints/step-00000008.h5";
  EXPECT_EQ(python("import h5py; print(list(h5py.File('" + ckpt + "', 'r')['model']))"), "['output.weight']\n");
  ASSERT_EQ(run(graft() + " export --model " + ckpt + " --format graft --out " + dir + "/m.h5").code, 0);
  ASSERT_EQ(run(graft() + " export --model " + kBase + " --format graft --out " + dir + "/base.h5").code, 0);
  EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + dir + "/m.h5', 'r')['model']; b = h5py.File('" + dir +
                   "/base.h5', 'r')['model']; print(all(np.array_equal(a[k][:], b[k][:]) for k in b), 'output.weight' in a)"),
            "True True\n");  // the base is untouched; the head is new
  // Validation at the end read windows 0..3 of val (1 batch x 2 sequences x 2 ranks).
  const std::string metrics = readText(dir + "/run/metrics.jsonl");
  const double val = std::stod(metrics.substr(metrics.rfind("\"val_loss\": ") + 12));
  const auto eval = run(graft() + " eval --model " + ckpt + " --data " + storiesDataset() + " --seq-len 64 --max-examples 4");
  ASSERT_EQ(eval.code, 0) << eval.output;
  double loss = 0;
  ASSERT_EQ(sscanf(resultOf(eval.output), "{\"loss\": %lf", &loss), 1) << eval.output;
  EXPECT_NEAR(loss, val, 1e-5 * val) << eval.output;
}

TEST(Transfer, QloraResumesBitwise) {
  for (const char* quantize : {"nf4"}) {
    const std::string straight = freshDir(std::string("qlora_straight_") + quantize), split = freshDir(std::string("qlora_split_") + quantize);
    const auto out = train(straight, loraConfig(straight + "/run", quantize, "wq,wv,w2"));
    EXPECT_NE(out.find("base " + std::string(quantize)), std::string::npos) << out;
    train(split, loraConfig(split + "/run", quantize, "wq,wv,w2"), "--train.stop_after=5");
    expectResumedFrom(train(split, loraConfig(split + "/run", quantize, "wq,wv,w2")), split + "/run", 5);
    EXPECT_EQ(losses(straight + "/run"), losses(split + "/run"));
    EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + straight + "/run/checkpoints/step-00000008.h5', 'r'); b = h5py.File('" +
                     split + "/run/checkpoints/step-00000008.h5', 'r'); "
                     "print(all(np.array_equal(a[g][k][:], b[g][k][:]) for g in ('model', 'optimizer/exp_avg', 'optimizer/exp_avg_sq') for k in a[g]))"),
              "True\n");
  }
}

std::string classifyConfig(const std::string& run_dir, const std::string& transfer) {
  return "[run]\ndir = " + run_dir + "\n[model]\npath = " + kBase + "\n[transfer]\n" + transfer + "\n[data]\npath = " +
         banking77FewShot() + "\n[train]\nsteps = 40\nbatch_size = 32\nmicro_batch = 16\nseq_len = 512\nlr = 1e-2\n"
         "min_lr = 1e-3\nwarmup = 4\nweight_decay = 0\nthreads = 1\nseed = 4\nlog_every = 10\n[eval]\nevery = 20\n"
         "[checkpoint]\nevery = 20\n";
}

// The val_accuracy field of the last metrics line that has one.
double lastAccuracy(const std::string& run_dir) {
  const std::string metrics = readText(run_dir + "/metrics.jsonl");
  const auto at = metrics.rfind("\"val_accuracy\": ");
  return at == std::string::npos ? -1 : std::stod(metrics.substr(at + 16));
}

TEST(Transfer, Banking77FeatureExtractionFromCachedFeatures) {
  const std::string dir = freshDir("b77_feature");
  const auto out = train(dir, classifyConfig(dir + "/run", "mode = feature\ncache_features = true"));
  EXPECT_NE(out.find("task: classify 77 labels"), std::string::npos) << out;
  EXPECT_NE(out.find("770 training documents"), std::string::npos) << out;
  EXPECT_NE(out.find("cached in " + dir + "/run/features.h5"), std::string::npos) << out;
  // The two ranks pooled half the documents each: the cache equals one rank pooling them all (up to
  // float rounding: the micro-batches pad to other lengths; measured 1.1e-5).
  const auto one = run(graft() + " train --config " + dir + "/lora.ini --run.dir=" + dir + "/run1 --train.steps=5 --eval.every=0");
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + dir + "/run/features.h5', 'r'); b = h5py.File('" + dir +
                   "/run1/features.h5', 'r'); print(all(a[s].shape == b[s].shape and np.allclose(a[s][:], b[s][:], atol=1e-4) "
                   "for s in ('train', 'val')), a['train'].shape[0])"),
            "True 770\n");
  EXPECT_NE(out.find("4928 elements per step"), std::string::npos) << out;  // the head alone: 77 x 64
  const double accuracy = lastAccuracy(dir + "/run");
  // Against a baseline computed here: always answering the split's most frequent label (1.9% of the
  // 1006 validation documents). After 40 steps on 770 examples the head must do 1.5x better
  // (measured 3.6%).
  const double majority = std::stod(python("import h5py, numpy as np; l = h5py.File('" + banking77FewShot() +
                                           "', 'r')['val/labels'][:]; print(np.bincount(l).max() / len(l))"));
  EXPECT_GT(majority, 0.0);
  EXPECT_GT(accuracy, 1.5 * majority) << out;
  // The checkpoint holds the head only, and graft eval reproduces the run's accuracy from it.
  EXPECT_EQ(python("import h5py; f = h5py.File('" + dir + "/run/checkpoints/step-00000040.h5', 'r'); print(list(f['model']))"),
            "['head.weight']\n");
  const auto eval = run(graft() + " eval --model " + dir + "/run/checkpoints/step-00000040.h5 --data " + banking77FewShot() +
                        " --predictions " + dir + "/predictions.jsonl");
  ASSERT_EQ(eval.code, 0) << eval.output;
  double eval_accuracy = -1;
  ASSERT_EQ(sscanf(resultOf(eval.output), "{\"accuracy\": %lf", &eval_accuracy), 1) << eval.output;
  EXPECT_NEAR(eval_accuracy, accuracy, 1e-6);
  EXPECT_EQ(python("import json; rows = [json.loads(l) for l in open('" + dir + "/predictions.jsonl')]; "
                   "print('%.6f' % (sum(r['label'] == r['predicted'] for r in rows) / len(rows)), all(0 < r['score'] <= 1 for r in rows))"),
            std::to_string(eval_accuracy).substr(0, 8) + " True\n");
  // Exported as a Hugging Face sequence classifier, it scores the split as transformers' would (the
  // reference: score on the last token, labels matched by name through id2label) and loads back.
  ASSERT_EQ(run(graft() + " export --model " + dir + "/run/checkpoints/step-00000040.h5 --format hf --out " + dir + "/hf").code, 0);
  const auto ref = run(hfReference() + " classify " + dir + "/hf " + banking77FewShot() + " val");
  double ref_accuracy = -1, ref_loss = -1;
  long long ref_documents = 0;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lf %lld", &ref_accuracy, &ref_loss, &ref_documents), 3) << ref.output;
  const auto back = run(graft() + " eval --model " + dir + "/hf --data " + banking77FewShot());
  double back_accuracy = -1, back_loss = -1;
  ASSERT_EQ(sscanf(resultOf(back.output), "{\"accuracy\": %lf, \"loss\": %lf", &back_accuracy, &back_loss), 2) << back.output;
  EXPECT_NEAR(back_accuracy, ref_accuracy, 1e-9);
  EXPECT_NEAR(back_accuracy, eval_accuracy, 1e-9);
  EXPECT_NEAR(back_loss, ref_loss, 1e-5 * ref_loss);
  // Resume from step 20 reuses the cache and ends bitwise where the straight run ended.
  const std::string split = freshDir("b77_feature_split");
  run("mkdir -p " + split + "/run && cp " + dir + "/run/features.h5 " + split + "/run/");
  const auto first = train(split, classifyConfig(split + "/run", "mode = feature\ncache_features = true"), "--train.stop_after=20");
  EXPECT_NE(first.find("features: reused"), std::string::npos) << first;
  expectResumedFrom(train(split, classifyConfig(split + "/run", "mode = feature\ncache_features = true")), split + "/run", 20);
  EXPECT_EQ(losses(split + "/run"), losses(dir + "/run"));
}

TEST(Transfer, Banking77LoraClassifierResumesBitwise) {
  const std::string straight = freshDir("b77_lora"), split = freshDir("b77_lora_split");
  const std::string transfer = "mode = lora\nlora_rank = 4\nlora_targets = wq,wv";
  const auto out = train(straight, classifyConfig(straight + "/run", transfer), "--train.steps=20 --checkpoint.every=10 --eval.every=20");
  EXPECT_NE(out.find("elements per step"), std::string::npos) << out;
  train(split, classifyConfig(split + "/run", transfer), "--train.steps=20 --checkpoint.every=10 --eval.every=20 --train.stop_after=10");
  expectResumedFrom(train(split, classifyConfig(split + "/run", transfer), "--train.steps=20 --checkpoint.every=10 --eval.every=20"),
                    split + "/run", 10);
  EXPECT_EQ(losses(straight + "/run"), losses(split + "/run"));
  const auto events = checkTensorboard(split + "/run", true);  // val/accuracy too
  EXPECT_EQ(events.code, 0) << events.output;
  EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + straight + "/run/checkpoints/step-00000020.h5', 'r')['model']; "
                   "b = h5py.File('" + split + "/run/checkpoints/step-00000020.h5', 'r')['model']; "
                   "print(sorted(a) == sorted(b), 'head.weight' in a, all(np.array_equal(a[k][:], b[k][:]) for k in a))"),
            "True True True\n");
}

TEST(Transfer, ZeroAndFewShotScoringOfLabelVerbalisations) {
  const std::string dir = freshDir("zero_shot");
  for (int shots : {0, 2}) {
    const std::string file = dir + "/p" + std::to_string(shots) + ".jsonl";
    const auto r = run(graft() + " eval --model " + kBase + " --tokenizer " + data("llama2c/tok512.bin") + " --data " +
                       banking77FewShot() + " --zero-shot ' Topic: {label}.' --max-examples 8 --shots " + std::to_string(shots) +
                       " --predictions " + file);
    ASSERT_EQ(r.code, 0) << r.output;
    double accuracy = -1;
    ASSERT_EQ(sscanf(resultOf(r.output), "{\"accuracy\": %lf", &accuracy), 1) << r.output;
    EXPECT_NE(r.output.find("\"mode\": \"" + std::to_string(shots) + "-shot\""), std::string::npos) << r.output;
    // The predictions file: 8 examples spread over the split, each true label the dataset's own (h5py),
    // each prediction a known label with a finite log-probability, and the accuracy theirs.
    EXPECT_EQ(python("import h5py, json; f = h5py.File('" + banking77FewShot() + "', 'r'); names = json.loads(f.attrs['label_names']); "
                     "labels = f['val/labels'][:]; rows = [json.loads(l) for l in open('" + file + "')]; "
                     "n = len(labels); ok = all(r['label'] == names[labels[r['example']]] and r['predicted'] in names and "
                     "r['score'] < 0 for r in rows); "
                     "print(len(rows), [r['example'] for r in rows] == [k * n // 8 for k in range(8)], ok, "
                     "'%.6f' % (sum(r['label'] == r['predicted'] for r in rows) / len(rows)))"),
              "8 True True " + std::to_string(accuracy).substr(0, 8) + "\n");
  }
  // The zero-shot scores against an independent forward (the same model exported to transformers'
  // layout, its own tokenizer and scoring): the same predicted label for each of the 8 examples,
  // and the winning total log-probability within 1e-5 relative.
  ASSERT_EQ(run(graft() + " export --model " + kBase + " --format hf --out " + dir + "/hf").code, 0);
  const auto ref = run(hfReference() + " zeroshot " + dir + "/hf " + banking77FewShot() + " val " + data("llama2c/tok512.bin") +
                       " ' Topic: {label}.' " + dir + "/p0.jsonl");
  int agree = -1, examples = -1;
  double worst = 1;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%d %d %lf", &agree, &examples, &worst), 3) << ref.output;
  EXPECT_EQ(examples, 8);
  EXPECT_EQ(agree, 8) << ref.output;
  EXPECT_LT(worst, 1e-5) << ref.output;
  const auto no_label = run(graft() + " eval --model " + kBase + " --tokenizer " + data("llama2c/tok512.bin") + " --data " +
                            banking77FewShot() + " --zero-shot ' Topic:'");
  EXPECT_EQ(no_label.code, 2) << no_label.output;
}

// Issue "never lose a run": every flavour, stopped inside an epoch and (at one rank) inside
// gradient accumulation, resumes to the same losses and the same trainable bytes (weights and both
// AdamW moments), at 1 and 4 ranks (2 ranks: the tests above).
TEST(Transfer, EveryFlavourResumesBitwiseAtOneAndFourRanks) {
  struct Flavour {
    std::string name, transfer;
    bool classify;
  };
  const std::vector<Flavour> flavours = {
      {"qlora", "mode = lora\nlora_rank = 4\nlora_targets = wq,wv,w2\nquantize = nf4", false},
      // int8 QLoRA with dropout: the masks after the resume must be the ones the straight run drew
      // (each rank's generator state is in the checkpoint).
      {"qlora_int8_dropout", "mode = lora\nlora_rank = 4\nlora_targets = wq,wv,w2\nquantize = int8\nlora_dropout = 0.1", false},
      {"prompt", "mode = prompt\nprompt_tokens = 4", false},
      {"unfreeze", "mode = full\nunfreeze_every = 2\nlayer_lr_decay = 0.7", false},
      {"feature", "mode = feature\ncache_features = true", true}};
  for (const auto& f : flavours) {
    for (int np : {1, 4}) {
      const std::string tag = f.name + "_np" + std::to_string(np);
      auto config = [&](const std::string& dir) {
        std::string c = f.classify ? classifyConfig(dir + "/run", f.transfer) : loraConfig(dir + "/run", "none", "wq");
        if (!f.classify) c.replace(c.find("mode = lora"), c.find("\n[data]") - c.find("mode = lora"), f.transfer);
        return c;
      };
      const std::string args = "--train.steps=6 --train.batch_size=8 --train.micro_batch=2 --checkpoint.every=3 --eval.every=6";
      const std::string straight = freshDir("resume_" + tag), split = freshDir("resume_split_" + tag);
      auto go = [&](const std::string& dir, const std::string& extra) {
        std::ofstream(dir + "/c.ini") << config(dir);
        const auto r = run(mpirun(np) + " " + graft() + " train --config " + dir + "/c.ini " + args + " " + extra);
        EXPECT_EQ(r.code, 0) << tag << "\n" << r.output;
        return r.output;
      };
      go(straight, "");
      go(split, "--train.stop_after=3");
      expectResumedFrom(go(split, ""), split + "/run", 3);
      EXPECT_EQ(losses(straight + "/run"), losses(split + "/run")) << tag;
      EXPECT_EQ(python("import h5py, numpy as np; a = h5py.File('" + straight + "/run/checkpoints/step-00000006.h5', 'r'); b = h5py.File('" +
                       split + "/run/checkpoints/step-00000006.h5', 'r'); "
                       "print(all(np.array_equal(a[g][k][:], b[g][k][:]) for g in ('model', 'optimizer/exp_avg', 'optimizer/exp_avg_sq') for k in a[g]))"),
                "True\n") << tag;
    }
  }
}

}  // namespace
}  // namespace graft::e2e
