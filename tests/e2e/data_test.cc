// graft prepare on the inputs people have: banking77's CSV (quoted commas and newlines; labels,
// a stratified validation split, few-shot subsets), prompt/completion JSONL (loss on completions
// only), checked with Python's csv module and h5py, plus training on the prepared data and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "e2e_util.h"
#include "util/files.h"

namespace graft::e2e {
namespace {

const std::string kTok = data("llama2c/tok512.bin");
const std::string kBanking = data("datasets/banking77/train.csv");

std::string python(const std::string& script) {
  const auto r = run(GRAFT_PYTHON " -c \"" + script + "\"");
  EXPECT_EQ(r.code, 0) << r.output;
  return r.output;
}

TEST(Data, Banking77CsvLabelsAndStratifiedSplitMatchPythonCsv) {
  const std::string dir = freshDir("data_banking");
  const auto r = run(graft() + " prepare --tokenizer " + kTok + " --input " + kBanking + " --out " + dir +
                     "/b.h5 --label-field category --val-fraction 0.1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("77 labels"), std::string::npos) << r.output;
  // Python's csv module: label order of first appearance, per-label counts; h5py: what graft wrote.
  const std::string check = python(
      "import csv, json, h5py, collections\n"
      "rows = list(csv.DictReader(open('" + kBanking + "', newline='')))\n"
      "order = list(dict.fromkeys(r['category'] for r in rows))\n"
      "count = collections.Counter(r['category'] for r in rows)\n"
      "f = h5py.File('" + dir + "/b.h5', 'r')\n"
      "names = json.loads(f.attrs['label_names'])\n"
      "tr = collections.Counter(f['train/labels'][:]); va = collections.Counter(f['val/labels'][:])\n"
      "ok = all(abs(va[i] - round(0.1 * count[n])) <= 1 and va[i] + tr[i] == count[n] for i, n in enumerate(names))\n"
      "docs = len(f['train/doc_offsets']) - 1 + len(f['val/doc_offsets']) - 1\n"
      "print(names == order, ok, docs == len(rows), f.attrs['version'], len(f['train/labels']) == len(f['train/doc_offsets']) - 1)\n");
  EXPECT_EQ(check, "True True True 2 True\n");
  // The first training document is BOS + the first row's text, as graft tokenize encodes it.
  const std::string first = python("import csv; print(next(csv.DictReader(open('" + kBanking + "', newline='')))['text'], end='')");
  const auto ids = run(graft() + " tokenize --tokenizer " + kTok + " --text '" + first + "'");
  const std::string stored = python("import h5py; f = h5py.File('" + dir + "/b.h5', 'r'); o = f['train/doc_offsets']; "
                                    "print(' '.join(str(t) for t in f['train/tokens'][o[0]:o[1]]))");
  EXPECT_EQ(stored, ids.output);

  // Few-shot: 10 train examples per intent, the same validation set.
  const auto few = run(graft() + " prepare --tokenizer " + kTok + " --input " + kBanking + " --out " + dir +
                       "/few.h5 --label-field category --val-fraction 0.1 --max-per-label 10");
  ASSERT_EQ(few.code, 0) << few.output;
  EXPECT_EQ(python("import h5py, numpy as np, collections\n"
                   "a = h5py.File('" + dir + "/b.h5', 'r'); b = h5py.File('" + dir + "/few.h5', 'r')\n"
                   "c = collections.Counter(b['train/labels'][:])\n"
                   "print(sorted(set(c.values())), len(c), np.array_equal(a['val/tokens'][:], b['val/tokens'][:]))\n"),
            "[10] 77 True\n");
}

TEST(Data, PromptCompletionJsonlLearnsOnlyCompletions) {
  const std::string dir = freshDir("data_sft");
  {
    std::ofstream out(dir + "/sft.jsonl");
    for (int i = 0; i < 60; ++i)
      out << "{\"prompt\": \"Q: what comes after " << i << "?\\nA:\", \"completion\": \" " << i + 1 << ".\"}\n";
  }
  const auto r = run(graft() + " prepare --tokenizer " + kTok + " --input " + dir + "/sft.jsonl --out " + dir +
                     "/sft.h5 --val-fraction 0.2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("loss on completions only"), std::string::npos) << r.output;
  // Per document: the masked-out tokens are exactly BOS + the prompt's ids (graft tokenize of the
  // prompt), the rest is the completion and EOS.
  const auto prompt_ids = run(graft() + " tokenize --tokenizer " + kTok + " --text \"$(printf 'Q: what comes after 0?\\nA:')\"");
  ASSERT_EQ(prompt_ids.code, 0) << prompt_ids.output;
  const std::string summary = python(
      "import h5py\n"
      "f = h5py.File('" + dir + "/sft.h5', 'r')\n"
      "t, m, o = f['train/tokens'][:], f['train/loss_mask'][:], f['train/doc_offsets'][:]\n"
      "print(len(m) == len(t), all(m[o[d]:o[d + 1]].tolist() == sorted(m[o[d]:o[d + 1]].tolist()) for d in range(len(o) - 1)), t[o[1] - 1])\n");
  EXPECT_EQ(summary, "True True 2\n");  // masks are 0...0 1...1 per document; each ends with EOS (2)
  std::istringstream ids(prompt_ids.output);
  int n_prompt = 0;
  for (std::string id; ids >> id;) ++n_prompt;
  EXPECT_EQ(python("import h5py; f = h5py.File('" + dir + "/sft.h5', 'r'); m = f['train/loss_mask'][:]; o = f['train/doc_offsets'][:]\n"
                   "print(sorted(set(int((m[o[d]:o[d + 1]] == 0).sum()) for d in range(len(o) - 1))))"),
            "[" + std::to_string(n_prompt) + ", " + std::to_string(n_prompt + 1) + "]\n");  // 1- and 2-digit numbers

  // graft eval's loss on the split equals an independent reference (tests/e2e/hf_reference.py on
  // the model exported to HF layout) that reads the mask as docs/data-format.md defines it.
  ASSERT_EQ(run(graft() + " export --model " + data("llama2c/stories260K.bin") + " --format hf --out " + dir + "/hf").code, 0);
  // Under --packing windows the windows run across documents; by default (documents) each
  // document is scored alone, and --per-document gives each one's loss.
  for (const std::string packing : {"windows", "auto"}) {
    const bool windows = packing == "windows";
    const auto ref = run(hfReference() + (windows ? " masked " : " documents ") + dir + "/hf " + dir + "/sft.h5 val 32 " +
                         dir + "/ref_docs.jsonl");
    const auto ours = run(graft() + " eval --model " + data("llama2c/stories260K.bin") + " --data " + dir +
                          "/sft.h5 --split val --seq-len 32 --packing " + packing +
                          (windows ? "" : " --per-document " + dir + "/docs.jsonl"));
    ASSERT_EQ(ours.code, 0) << ours.output;
    double ref_loss = 0, our_loss = 0;
    long long ref_counted = 0, our_counted = 0;
    ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lld", &ref_loss, &ref_counted), 2) << ref.output;
    ASSERT_EQ(sscanf(resultOf(ours.output), "{\"loss\": %lf, \"tokens\": %lld", &our_loss, &our_counted), 2) << ours.output;
    EXPECT_EQ(our_counted, ref_counted) << packing;
    EXPECT_NEAR(our_loss, ref_loss, 1e-5 * ref_loss) << packing;
    if (windows) continue;
    EXPECT_NE(ours.output.find("\"packing\": \"documents\""), std::string::npos) << ours.output;
    EXPECT_EQ(python("import json\n"
                     "a = [json.loads(l) for l in open('" + dir + "/docs.jsonl')]\n"
                     "b = [json.loads(l) for l in open('" + dir + "/ref_docs.jsonl')]\n"
                     "print(len(a) == len(b) > 5, all(x['document'] == y['document'] and x['tokens'] == y['tokens'] > 0 and "
                     "abs(x['loss'] - y['loss']) <= 1e-5 * y['loss'] for x, y in zip(a, b)))\n"),
              "True True\n");
  }

  // Training on it: losses are finite and decrease (the completions are learnable).
  std::ofstream(dir + "/t.ini") << tinyConfig(dir + "/run", dir + "/sft.h5") << "[train]\n";
  const auto t = run(graft() + " train --config " + dir + "/t.ini --model.path=" + data("llama2c/stories260K.bin") +
                     " --train.seq_len=32 --train.steps=10 --eval.every=10");
  ASSERT_EQ(t.code, 0) << t.output;
  const auto l = losses(dir + "/run");
  ASSERT_FALSE(l.empty());
  EXPECT_LT(std::stod(l.back()), std::stod(l.front())) << t.output;
  // Streamed from the file instead of held in memory: the same run, bit for bit.
  const auto streamed = run(graft() + " train --config " + dir + "/t.ini --model.path=" + data("llama2c/stories260K.bin") +
                            " --train.seq_len=32 --train.steps=10 --eval.every=10 --data.load=stream --run.dir=" + dir + "/run_stream");
  ASSERT_EQ(streamed.code, 0) << streamed.output;
  EXPECT_NE(streamed.output.find("data: streamed from " + dir + "/sft.h5"), std::string::npos) << streamed.output;
  EXPECT_EQ(losses(dir + "/run_stream"), l);
  // The mask is what the loss reads: the same run on a copy without loss_mask (every token a
  // target, prompts included) starts from a different loss.
  python("import h5py, shutil; shutil.copy('" + dir + "/sft.h5', '" + dir + "/nomask.h5'); f = h5py.File('" + dir +
         "/nomask.h5', 'a'); del f['train/loss_mask']; del f['val/loss_mask']");
  const auto u = run(graft() + " train --config " + dir + "/t.ini --model.path=" + data("llama2c/stories260K.bin") +
                     " --train.seq_len=32 --train.steps=10 --eval.every=10 --run.dir=" + dir + "/run_nomask --data.path=" + dir +
                     "/nomask.h5");
  ASSERT_EQ(u.code, 0) << u.output;
  const auto unmasked = losses(dir + "/run_nomask");
  ASSERT_FALSE(unmasked.empty());
  EXPECT_GT(std::abs(std::stod(unmasked.front()) - std::stod(l.front())), 0.05) << l.front() << " vs " << unmasked.front();
}

// Instruction tuning end to end (issue 31). A Hugging Face tokenizer folder whose
// tokenizer_config.json has a ChatML chat_template renders conversations as chatml without being
// told (and says where it found it); stories260K fine-tunes on the plain-template conversations of
// tests/make_conversations.py, packed, and a run stopped at step 2 resumes to the straight run's
// bits; a resume with another packing is refused naming data.packing; every transfer flavour and
// bf16 train on packed documents (the soft prompt read by every document).
TEST(Data, ConversationsPackAndTrainWithEveryFlavourAndResumeBitwise) {
  const std::string dir = freshDir("data_conversations");
  ASSERT_EQ(run(GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/make_conversations.py " +
                data("datasets/tinystories_sample/tinystories_sample.txt") + " " + dir + "/c.jsonl 120").code, 0);
  // The chat tokenizer: tiny GPT-2's tokenizer.json with <|im_start|> and <|im_end|> added.
  std::ofstream(dir + "/chat_tok.py") << "import json, os, sys\n"
                                          "t = json.load(open(sys.argv[1]))\n"
                                          "t['added_tokens'] += [dict(id=1000 + i, content=c, single_word=False, lstrip=False,"
                                          " rstrip=False, normalized=False, special=True)"
                                          " for i, c in enumerate(['<|im_start|>', '<|im_end|>'])]\n"
                                          "os.makedirs(sys.argv[2])\n"
                                          "json.dump(t, open(sys.argv[2] + '/tokenizer.json', 'w'))\n"
                                          "template = \"{% for message in messages %}{{'<|im_start|>' + message['role'] + "
                                          "'\\\\n' + message['content'] + '<|im_end|>' + '\\\\n'}}{% endfor %}\"\n"
                                          "json.dump({'eos_token': '<|im_end|>', 'chat_template': template},"
                                          " open(sys.argv[2] + '/tokenizer_config.json', 'w'))\n";
  ASSERT_EQ(run(GRAFT_PYTHON " " + dir + "/chat_tok.py " + data("hf/tiny-random-gpt2/tokenizer.json") + " " + dir + "/chat_tok").code, 0);
  const auto hf = run(graft() + " prepare --tokenizer " + dir + "/chat_tok --input " + dir + "/c.jsonl --out " + dir + "/hf.h5");
  ASSERT_EQ(hf.code, 0) << hf.output;
  EXPECT_NE(hf.output.find("conversations with chat template chatml (recognised in " + dir +
                           "/chat_tok/tokenizer_config.json's chat_template)"),
            std::string::npos) << hf.output;
  EXPECT_EQ(python("import h5py; f = h5py.File('" + dir + "/hf.h5', 'r'); t = f['train/tokens'][:]; m = f['train/loss_mask'][:]\n"
                   "print(f.attrs['chat_template'] in ('chatml', b'chatml'), (t == 1000).sum() > 100, set(m[t == 1001].tolist()))\n"),
            "True True {0, 1}\n");  // <|im_end|> is learnt after assistant turns only

  // A folder whose chat_template is none graft knows: plain text still prepares (the template is
  // read at the first conversation), conversations are refused naming the file.
  run("mkdir " + dir + "/other_tok && cp " + dir + "/chat_tok/tokenizer.json " + dir + "/other_tok/");
  std::ofstream(dir + "/other_tok/tokenizer_config.json") << R"({"chat_template": "<start_of_turn>user\n{{ m }}<end_of_turn>"})";
  const auto text = run(graft() + " prepare --tokenizer " + dir + "/other_tok --input " +
                        data("datasets/tinystories_sample/tinystories_sample.txt") + " --out " + dir + "/text.h5");
  EXPECT_EQ(text.code, 0) << text.output;
  const auto other = run(graft() + " prepare --tokenizer " + dir + "/other_tok --input " + dir + "/c.jsonl --out " + dir + "/other.h5");
  EXPECT_NE(other.code, 0);
  EXPECT_NE(other.output.find(dir + "/other_tok/tokenizer_config.json: its chat_template (\"<start_of_turn>user "),
            std::string::npos) << other.output;
  EXPECT_FALSE(fileExists(dir + "/other.h5"));

  const auto p = run(graft() + " prepare --tokenizer " + data("llama2c/tok512.bin") + " --input " + dir +
                     "/c.jsonl --out " + dir + "/c.h5 --chat-template plain");
  ASSERT_EQ(p.code, 0) << p.output;
  std::ofstream(dir + "/t.ini") << tinyConfig(dir + "/run", dir + "/c.h5") << "[train]\n";
  const std::string base = graft() + " train --config " + dir + "/t.ini --model.path=" + data("llama2c/stories260K.bin") +
                           " --train.seq_len=128 --train.steps=4 --eval.every=4 --checkpoint.keep_last=0 ";
  const std::string every2 = "--checkpoint.every=2 ";
  const auto straight = run(base + every2 + "--run.dir=" + dir + "/straight");
  ASSERT_EQ(straight.code, 0) << straight.output;
  EXPECT_NE(straight.output.find("data: packing documents"), std::string::npos) << straight.output;
  ASSERT_EQ(run(base + every2 + "--run.dir=" + dir + "/resumed --train.stop_after=2").code, 0);
  const auto resumed = run(base + every2 + "--run.dir=" + dir + "/resumed");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(losses(dir + "/resumed"), losses(dir + "/straight"));
  EXPECT_EQ(run("cmp " + dir + "/straight/checkpoints/step-00000004.h5 " + dir + "/resumed/checkpoints/step-00000004.h5").code == 0 ||
                python("import h5py, numpy as np\n"
                       "a = h5py.File('" + dir + "/straight/checkpoints/step-00000004.h5', 'r')['model']\n"
                       "b = h5py.File('" + dir + "/resumed/checkpoints/step-00000004.h5', 'r')['model']\n"
                       "print(all(np.array_equal(a[k][:], b[k][:]) for k in a))\n") == "True\n",
            true);
  run("cp -r " + dir + "/straight " + dir + "/repacked && rm " + dir + "/repacked/checkpoints/step-00000004.h5");
  const auto refused = run(base + every2 + "--run.dir=" + dir + "/repacked --data.packing=padded");
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.output.find("was saved with data.packing = documents, this run has padded"), std::string::npos) << refused.output;

  for (const std::string flavour : {"--transfer.mode=lora", "--transfer.mode=lora --transfer.quantize=nf4",
                                    "--transfer.mode=prompt --transfer.prompt_tokens=4", "--transfer.mode=feature",
                                    "--train.precision=bf16 --train.lr=1e-3", "--data.packing=padded --train.lr=1e-3"}) {
    const auto r = run(base + "--run.dir=" + dir + "/flavour --checkpoint.every=0 " + flavour);
    run("rm -rf " + dir + "/flavour");
    ASSERT_EQ(r.code, 0) << flavour << "\n" << r.output;
    double before = 0, after = 0;
    const auto b = r.output.find("val loss before training: "), a = r.output.find("done: val loss ");
    ASSERT_TRUE(b != std::string::npos && a != std::string::npos) << r.output;
    before = std::stod(r.output.substr(b + 26)), after = std::stod(r.output.substr(a + 15));
    EXPECT_LT(after, before) << flavour << "\n" << r.output;
  }
}

// Classification reads whole documents: the metrics count their own tokens (here all the same
// length, read from the file by h5py), not seq_len per document.
TEST(Data, ClassificationCountsTheDocumentsOwnTokens) {
  const std::string dir = freshDir("data_doc_tokens");
  {
    std::ofstream out(dir + "/same.csv");
    out << "text,label\n";
    for (int i = 0; i < 40; ++i) out << "the cat sat on the mat," << (i % 2 ? "a" : "b") << "\n";
  }
  ASSERT_EQ(run(graft() + " prepare --tokenizer " + kTok + " --input " + dir + "/same.csv --out " + dir +
                "/same.h5 --label-field label --val-fraction 0.2").code, 0);
  const std::string lengths = python("import h5py, numpy; o = h5py.File('" + dir + "/same.h5', 'r')['train/doc_offsets'][:]; "
                                     "print(sorted(set(numpy.diff(o).tolist())))");
  int length = 0;
  ASSERT_EQ(sscanf(lengths.c_str(), "[%d]", &length), 1) << lengths;
  ASSERT_LT(length, 32);
  std::ofstream(dir + "/t.ini") << tinyConfig(dir + "/run", dir + "/same.h5");
  const auto t = run(graft() + " train --config " + dir + "/t.ini --train.steps=3 --checkpoint.every=0");
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_EQ(python("import json; print(json.loads(open('" + dir + "/run/metrics.jsonl').read().splitlines()[-1])['tokens'])"),
            std::to_string(3 * 8 * length) + "\n");
  // Documents streamed from the file: the same run, bit for bit.
  const auto s = run(graft() + " train --config " + dir + "/t.ini --train.steps=3 --checkpoint.every=0 --data.load=stream --run.dir=" +
                     dir + "/run_stream");
  ASSERT_EQ(s.code, 0) << s.output;
  EXPECT_EQ(losses(dir + "/run_stream"), losses(dir + "/run"));
}

TEST(Data, BadInputNamesFileAndLineAndWritesNothing) {
  const std::string dir = freshDir("data_bad");
  std::ofstream(dir + "/ragged.csv") << "text,category\nhello,a\n\"quoted, comma\",b,extra\n";
  auto r = run(graft() + " prepare --tokenizer " + kTok + " --input " + dir + "/ragged.csv --out " + dir +
               "/x.h5 --label-field category");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(dir + "/ragged.csv:3"), std::string::npos) << r.output;
  r = run(graft() + " prepare --tokenizer " + kTok + " --input " + kBanking + " --out " + dir + "/x.h5 --label-field intent");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("intent"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("category"), std::string::npos) << r.output;  // lists the columns it has
  std::ofstream(dir + "/bad.jsonl") << "{\"text\": \"fine\"}\n{\"text\": oops}\n";
  r = run(graft() + " prepare --tokenizer " + kTok + " --input " + dir + "/bad.jsonl --out " + dir + "/x.h5");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(dir + "/bad.jsonl:2"), std::string::npos) << r.output;
  EXPECT_FALSE(std::ifstream(dir + "/x.h5").good());
  EXPECT_FALSE(std::ifstream(dir + "/x.h5.tmp").good());
}

}  // namespace
}  // namespace graft::e2e
