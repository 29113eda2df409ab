// Whole training runs under mpirun: data-parallel equivalence, exact resume, loss going down on
// real data, and the checkpoint read back by h5py + an independent PyTorch forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "e2e_util.h"
#include "formats/hdf5.h"
#include "util/error.h"

namespace graft::e2e {
namespace {

std::string writeConfig(const std::string& dir, const std::string& text) {
  const std::string path = dir + "/config.ini";
  std::ofstream(path) << text;
  return path;
}

std::string lastCheckpoint(const std::string& run_dir) {
  const auto found = completeCheckpoints(run_dir + "/checkpoints");
  return found.empty() ? "" : found.front();
}

// ||a - b|| / ||a|| over the whole parameter vector of `group`. (Per tensor, a few small tensors
// reach ~1e-5: AdamW's first updates are nearly sign(g), which turns float32 rounding in gradient
// elements that cancel to ~0 into a full-size step either way.)
double relativeDifference(const std::string& a_path, const std::string& b_path, const std::string& group) {
  auto a = H5File::openRead(a_path), b = H5File::openRead(b_path);
  double diff = 0, norm = 0;
  for (const auto& name : a.list(group)) {
    auto x = a.readTensor(group + "/" + name).to(torch::kFloat64), y = b.readTensor(group + "/" + name).to(torch::kFloat64);
    diff += (x - y).pow(2).sum().item<double>();
    norm += x.pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}

bool bitwiseEqual(const std::string& a_path, const std::string& b_path, const std::string& group) {
  auto a = H5File::openRead(a_path), b = H5File::openRead(b_path);
  const auto names = a.list(group);
  if (names.empty() || names != b.list(group)) return false;
  for (const auto& name : names)
    if (!torch::equal(a.readTensor(group + "/" + name), b.readTensor(group + "/" + name))) return false;
  return true;
}

// `graft plot` of two runs (both named "run": the legend uses their paths). Every point it reports
// drawing is a value of metrics.jsonl, the SVG's curves pass through exactly those points as the
// frame maps them, and the PNG has the size asked for.
void expectPlotOf(const std::string& a, const std::string& b, const std::string& dir) {
#ifdef GRAFT_NO_CAIRO
  // A build without cairo cannot draw: graft plot says so in one line naming the file.
  const auto refused = run(graft() + " plot " + a + " --out " + dir + "/curves.svg");
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find(dir + "/curves.svg: this graft was built without cairo"), std::string::npos) << refused.output;
  return;
#endif
  const auto r = run(graft() + " plot " + a + " " + b + " --out " + dir + "/curves.svg --print 2>/dev/null");
  ASSERT_EQ(r.code, 0) << run(graft() + " plot " + a + " " + b + " --out " + dir + "/curves.svg").output;
  const Json doc = parseJson(r.output, "graft plot --print");
  const Json& f = doc.at("frame", "");
  const auto num = [&](const char* key) { return f.at(key, "").asNumber(key); };
  const auto& series = doc.at("series", "").asArray("");
  ASSERT_EQ(series.size(), 4u) << r.output;  // a train, a val, b train, b val
  const std::string svg = readText(dir + "/curves.svg");
  // 900 x 540 points: cairo 1.16 writes the unit ("900pt"), 1.18 leaves it out (points are SVG's default).
  EXPECT_TRUE(std::regex_search(svg, std::regex("width=\"900(pt)?\" height=\"540(pt)?\""))) << svg.substr(0, 300);
  for (std::size_t k = 0; k < 4; ++k) {
    const std::string run_dir = k < 2 ? a : b;
    EXPECT_EQ(series[k].at("label", "").asString(""), run_dir + (k % 2 ? " val" : " train"));
    const auto& x = series[k].at("x", "").asArray(""), &y = series[k].at("y", "").asArray("");
    // The data: every step's loss, or the validation loss where it was measured (steps 10 and 20).
    std::vector<std::pair<double, double>> want;
    std::istringstream in(readText(run_dir + "/metrics.jsonl"));
    for (std::string line; std::getline(in, line);) {
      const Json m = parseJson(line, "metrics.jsonl");
      const Json* v = m.find(k % 2 ? "val_loss" : "loss");
      if (v && !v->isNull()) want.emplace_back(m.at("step", "").asNumber(""), v->asNumber(""));
    }
    ASSERT_EQ(x.size(), want.size()) << k;
    ASSERT_EQ(want.size(), k % 2 ? 2u : 20u);
    for (std::size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(x[i].asNumber(""), want[i].first);
      EXPECT_EQ(y[i].asNumber(""), want[i].second);
    }
    // The drawing: a path "M x y L x y ..." through the mapped points (cairo keeps 1/256 pixel).
    bool found = false;
    for (std::size_t at = svg.find(" d=\"M "); at != std::string::npos && !found; at = svg.find(" d=\"M ", at + 1)) {
      std::istringstream path(svg.substr(at + 4, svg.find('"', at + 4) - at - 4));
      std::vector<double> coords;
      bool polyline = true;  // M and L only (glyphs and markers also have curves: C, Z)
      for (std::string token; polyline && path >> token;)
        if (token != "M" && token != "L") {
          polyline = token.find_first_not_of("0123456789.-") == std::string::npos;
          if (polyline) coords.push_back(std::stod(token));
        }
      if (!polyline || coords.size() != 2 * want.size()) continue;
      found = true;
      for (std::size_t i = 0; i < want.size() && found; ++i) {
        const double px = num("left") + (want[i].first - num("x_min")) / (num("x_max") - num("x_min")) * (num("right") - num("left"));
        const double py =
            num("bottom") - (want[i].second - num("y_min")) / (num("y_max") - num("y_min")) * (num("bottom") - num("top"));
        found = std::abs(coords[2 * i] - px) < 0.01 && std::abs(coords[2 * i + 1] - py) < 0.01;
      }
    }
    EXPECT_TRUE(found) << "no SVG path through the points of " << series[k].at("label", "").asString("");
  }
  // PNG: the signature and the IHDR width and height (big-endian); x by tokens is metrics.jsonl's "tokens".
  const auto png = run(graft() + " plot " + a + " --out " + dir + "/curves.png --width 640 --height 400 --log-y --x tokens --print");
  ASSERT_EQ(png.code, 0) << png.output;
  const Json by_tokens = parseJson(png.output, "graft plot --x tokens --print");
  const auto& token_x = by_tokens.at("series", "").asArray("")[0].at("x", "").asArray("");
  std::istringstream metrics(readText(a + "/metrics.jsonl"));
  std::size_t i = 0;
  for (std::string line; std::getline(metrics, line); ++i) {
    ASSERT_LT(i, token_x.size());
    EXPECT_EQ(token_x[i].asNumber(""), parseJson(line, "metrics.jsonl").at("tokens", "").asNumber(""));
  }
  EXPECT_EQ(i, token_x.size());
  const std::string bytes = readText(dir + "/curves.png");
  ASSERT_GT(bytes.size(), 24u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const auto be32 = [&](std::size_t at) {
    return (static_cast<unsigned char>(bytes[at]) << 24) | (static_cast<unsigned char>(bytes[at + 1]) << 16) |
           (static_cast<unsigned char>(bytes[at + 2]) << 8) | static_cast<unsigned char>(bytes[at + 3]);
  };
  EXPECT_EQ(bytes.substr(12, 4), "IHDR");
  EXPECT_EQ(be32(16), 640);
  EXPECT_EQ(be32(20), 400);
}

std::string fineTuneConfig(const std::string& run_dir, int micro_batch) {
  return "[run]\ndir = " + run_dir + "\n[model]\npath = " + data("llama2c/stories260K.bin") +
         "\n[data]\npath = " + storiesDataset() + "\n[train]\nsteps = 5\nbatch_size = 4\nmicro_batch = " +
         std::to_string(micro_batch) + "\nseq_len = 64\nlr = 1e-3\nmin_lr = 1e-4\nwarmup = 1\nthreads = 1\nseed = 5\n"
         "[eval]\nevery = 0\nbatches = 1\n[checkpoint]\nevery = 0\n";
}

TEST(Training, TwoRanksTimesBEqualOneRankTimes2B) {
  const std::string one = freshDir("dp_np1"), two = freshDir("dp_np2");
  const auto r1 = run(mpirun(1) + " " + graft() + " train --config " + writeConfig(one, fineTuneConfig(one + "/run", 4)));
  ASSERT_EQ(r1.code, 0) << r1.output;
  const auto r2 = run(mpirun(2) + " " + graft() + " train --config " + writeConfig(two, fineTuneConfig(two + "/run", 2)));
  ASSERT_EQ(r2.code, 0) << r2.output;
  EXPECT_NE(r2.output.find("on 2 rank(s) on 1 host(s) (mpi"), std::string::npos) << r2.output;
  const auto l1 = losses(one + "/run"), l2 = losses(two + "/run");
  ASSERT_EQ(l1.size(), 5u);
  ASSERT_EQ(l2.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_NEAR(std::stod(l1[i]), std::stod(l2[i]), 1e-5 * std::stod(l1[i])) << i;
  const auto c1 = lastCheckpoint(one + "/run"), c2 = lastCheckpoint(two + "/run");
  EXPECT_LT(relativeDifference(c1, c2, "/model"), 1e-5);
  EXPECT_NE(l1.front(), l1.back());  // the model did train
}

// train.precision = bf16 with dist.reduce_dtype = bf16 at two ranks: losses near float32's (and not
// equal: the products did run in bfloat16), a resume bit for bit equal to the straight run, and
// float32 masters in the checkpoint (read by h5py).
TEST(Training, Bfloat16TracksFloat32ResumesBitwiseAndCheckpointsFloat32) {
  const std::string fp32 = freshDir("bf16_ref"), straight = freshDir("bf16_straight"), split = freshDir("bf16_split");
  const std::string bf16 = " --train.precision=bf16 --dist.reduce_dtype=bf16";
  const auto a = run(mpirun(2) + " " + graft() + " train --config " + writeConfig(fp32, fineTuneConfig(fp32 + "/run", 2)));
  ASSERT_EQ(a.code, 0) << a.output;
  const auto b = run(mpirun(2) + " " + graft() + " train --config " +
                     writeConfig(straight, fineTuneConfig(straight + "/run", 2)) + bf16);
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_NE(b.output.find("cpu bf16)"), std::string::npos) << b.output;
  const std::string cfg = writeConfig(split, fineTuneConfig(split + "/run", 2));
  const auto c1 = run(mpirun(2) + " " + graft() + " train --config " + cfg + bf16 + " --train.stop_after=2");
  ASSERT_EQ(c1.code, 0) << c1.output;
  const auto c2 = run(mpirun(2) + " " + graft() + " train --config " + cfg + bf16);
  ASSERT_EQ(c2.code, 0) << c2.output;
  expectResumedFrom(c2.output, split + "/run", 2);
  const auto reference = losses(fp32 + "/run"), half = losses(straight + "/run");
  ASSERT_EQ(reference.size(), 5u);
  ASSERT_EQ(half.size(), 5u);
  EXPECT_EQ(losses(split + "/run"), half);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_NEAR(std::stod(half[i]), std::stod(reference[i]), 2e-2 * std::stod(reference[i])) << i;
  EXPECT_NE(half, reference);
  // The same under ZeRO-3 with recomputed blocks: bf16 products inside gathered units, gradients
  // reduce-scattered in bf16. At two ranks every element's sum has two terms, whose order cannot
  // matter: the same bits as the replicated bf16 run (measured so; a tolerance of 1e-2 once hid
  // any difference below that).
  const std::string zero3 = freshDir("bf16_zero3");
  const auto z = run(mpirun(2) + " " + graft() + " train --config " + writeConfig(zero3, fineTuneConfig(zero3 + "/run", 2)) +
                     bf16 + " --dist.shard=parameters --train.recompute=true");
  ASSERT_EQ(z.code, 0) << z.output;
  const auto sharded = losses(zero3 + "/run");
  ASSERT_EQ(sharded.size(), 5u);
  EXPECT_EQ(sharded, half);
  const auto checkpoint = lastCheckpoint(split + "/run");
  EXPECT_TRUE(bitwiseEqual(lastCheckpoint(straight + "/run"), checkpoint, "/model"));
  const auto dtypes = run(GRAFT_PYTHON " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
                          "print(sorted({str(d.dtype) for d in f['model'].values()}))\" " + checkpoint);
  ASSERT_EQ(dtypes.code, 0) << dtypes.output;
  EXPECT_EQ(dtypes.output, "['float32']\n");
}

TEST(Training, ResumeIsBitwiseIdenticalToAStraightRun) {
  const std::string straight = freshDir("resume_straight"), split = freshDir("resume_split");
  const std::string dataset = storiesDataset();
  const auto a = run(mpirun(2) + " " + graft() + " train --config " +
                     writeConfig(straight, tinyConfig(straight + "/run", dataset)));
  ASSERT_EQ(a.code, 0) << a.output;
  const std::string cfg = writeConfig(split, tinyConfig(split + "/run", dataset));
  const auto b1 = run(mpirun(2) + " " + graft() + " train --config " + cfg + " --train.stop_after=10");
  ASSERT_EQ(b1.code, 0) << b1.output;
  EXPECT_EQ(losses(split + "/run").size(), 10u);
  const auto b2 = run(mpirun(2) + " " + graft() + " train --config " + cfg);
  ASSERT_EQ(b2.code, 0) << b2.output;
  expectResumedFrom(b2.output, split + "/run", 10);
  EXPECT_EQ(losses(straight + "/run"), losses(split + "/run"));
  ASSERT_EQ(losses(split + "/run").size(), 20u);
  const auto ca = lastCheckpoint(straight + "/run"), cb = lastCheckpoint(split + "/run");
  ASSERT_NE(cb.find("step-00000020.h5"), std::string::npos);
  EXPECT_TRUE(bitwiseEqual(ca, cb, "/model"));
  EXPECT_TRUE(bitwiseEqual(ca, cb, "/optimizer/exp_avg"));
  EXPECT_TRUE(bitwiseEqual(ca, cb, "/optimizer/exp_avg_sq"));
  // keep_last = 2: only the two newest checkpoints remain.
  EXPECT_EQ(completeCheckpoints(split + "/run/checkpoints").size(), 2u);
  // TensorBoard: the resumed run's second event file continues the first, nothing twice.
  const auto events = checkTensorboard(split + "/run");
  EXPECT_EQ(events.code, 0) << events.output;
  EXPECT_NE(events.output.find("2 file(s), 20 steps"), std::string::npos) << events.output;
  expectPlotOf(straight + "/run", split + "/run", split);

  // The checkpoint, read by h5py, has the documented layout, and its weights give the same loss
  // in an independent PyTorch forward as `graft eval` computes from the .h5.
  const auto ours = run(graft() + " eval --model " + cb + " --ids '1 403 407 261 378 429 271 260 301'");
  ASSERT_EQ(ours.code, 0) << ours.output;
  const auto check = run(GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/e2e/check_checkpoint.py " + cb +
                         " 20 2 '1 403 407 261 378 429 271 260 301'");
  ASSERT_EQ(check.code, 0) << check.output;
  double our_loss = 0, ref_loss = -1;
  ASSERT_EQ(sscanf(resultOf(ours.output), "{\"loss\": %lf", &our_loss), 1) << ours.output;
  ASSERT_EQ(sscanf(check.output.c_str(), "loss %lf", &ref_loss), 1) << check.output;
  EXPECT_NEAR(our_loss, ref_loss, 1e-4 * ref_loss);
}

// Checkpoints of format version 1 (the manifest in a root attribute, before version 2 moved it
// to dataset /manifest) still verify, resume and evaluate. h5py rewrites a version-2 checkpoint
// the way version 1 laid it out; a flipped manifest line in it must then be caught, so the old
// manifest is really read, not skipped.
TEST(Training, AFormatVersionOneCheckpointStillVerifiesAndResumes) {
  const std::string dir = freshDir("format_v1");
  const std::string cfg = writeConfig(dir, tinyConfig(dir + "/run", storiesDataset()));
  const auto first = run(mpirun(2) + " " + graft() + " train --config " + cfg + " --train.stop_after=10");
  ASSERT_EQ(first.code, 0) << first.output;
  const std::string ckpt = dir + "/run/checkpoints/step-00000010.h5";
  auto downgrade = [&](const std::string& path, bool damage) {
    const std::string py = GRAFT_PYTHON " -c \"import h5py, numpy as np, sys\n"
                           "f = h5py.File(sys.argv[1], 'r+')\n"
                           "text = np.asarray(f['manifest'][()], dtype=np.uint8).tobytes()\n"
                           "if sys.argv[2] == '1': text = text.replace(b'/model/norm.weight ', b'/model/norm.weight 1', 1)\n"
                           "del f['manifest']\n"
                           "f.attrs['manifest'] = np.bytes_(text)\n"
                           "f.attrs['version'] = np.int64(1)\n"
                           "f.close()\" " + path + (damage ? " 1" : " 0");
    const auto r = run(py);
    ASSERT_EQ(r.code, 0) << r.output;
  };
  run("cp " + ckpt + " " + dir + "/damaged.h5");
  downgrade(dir + "/damaged.h5", true);
  EXPECT_THROW(verifyCheckpoint(dir + "/damaged.h5"), InputError);
  downgrade(ckpt, false);
  ASSERT_EQ(H5File::openRead(ckpt).intAttr("/", "version"), 1);
  EXPECT_NO_THROW(verifyCheckpoint(ckpt));
  const auto eval = run(graft() + " eval --model " + ckpt + " --ids '1 403 407 261 378'");
  EXPECT_EQ(eval.code, 0) << eval.output;
  const auto second = run(mpirun(2) + " " + graft() + " train --config " + cfg);
  ASSERT_EQ(second.code, 0) << second.output;
  EXPECT_NE(second.output.find("resuming from " + ckpt + " at step 10"), std::string::npos) << second.output;
  EXPECT_EQ(losses(dir + "/run").size(), 20u);
  // What it writes from then on is version 2.
  EXPECT_EQ(H5File::openRead(lastCheckpoint(dir + "/run")).intAttr("/", "version"), kCheckpointVersion);
}

// Resume refuses a run that is not the one the checkpoint belongs to (Note [a resume continues the
// same run]): one key changed between the first half and the second, the second refuses in one
// line naming it and changes nothing; allowed with resume.allow, it resumes and says so.
void expectResumeRefused(const std::string& name, const std::string& key, const std::string& change,
                         const std::string& ini_extra = "") {
  const std::string dir = freshDir("refuse_" + name);
  const std::string cfg = writeConfig(dir, tinyConfig(dir + "/run", storiesDataset()) + ini_extra);
  const auto first = run(graft() + " train --config " + cfg + " --train.stop_after=5");
  ASSERT_EQ(first.code, 0) << first.output;
  const auto refused = run(graft() + " train --config " + cfg + " " + change);
  EXPECT_EQ(refused.code, 2) << refused.output;
  EXPECT_NE(refused.output.find("step-00000005.h5 was saved with " + key + " = "), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("use a new run.dir, or allow it with --resume.allow=" + name), std::string::npos) << refused.output;
  EXPECT_EQ(losses(dir + "/run").size(), 5u);  // nothing trained, nothing logged
  const auto allowed = run(graft() + " train --config " + cfg + " " + change + " --resume.allow=" + name);
  EXPECT_EQ(allowed.code, 0) << allowed.output;
  EXPECT_NE(allowed.output.find("resuming from " + dir + "/run/checkpoints/step-00000005.h5"), std::string::npos) << allowed.output;
  EXPECT_NE(allowed.output.find("resume: " + key), std::string::npos) << allowed.output;
  EXPECT_NE(allowed.output.find("(allowed by resume.allow)"), std::string::npos) << allowed.output;
}

TEST(Training, ResumeRefusesAnotherSeed) { expectResumeRefused("seed", "train.seed", "--train.seed=12"); }
TEST(Training, ResumeRefusesAnotherGlobalBatch) {
  expectResumeRefused("batch_size", "train.batch_size", "--train.batch_size=16");
}
TEST(Training, ResumeRefusesAnotherSequenceLength) { expectResumeRefused("seq_len", "train.seq_len", "--train.seq_len=16"); }
TEST(Training, ResumeRefusesAnotherTransferSetup) {
  // A LoRA run continued with another dropout draws other masks from then on: another run.
  expectResumeRefused("transfer", "transfer.lora_dropout", "--transfer.lora_dropout=0.2",
                      "[transfer]\nmode = lora\nlora_dropout = 0.1\n");
}
TEST(Training, ResumeRefusesOtherData) {
  // The same file, the same size, the same tokens, but one document boundary moved by a token:
  // other samples from then on. (A file of another size is refused the same way.)
  const std::string other = freshDir("refuse_data_file") + "/stories_moved_boundary.h5";
  run("cp " + storiesDataset() + " " + other);
  const auto moved = run(GRAFT_PYTHON " -c \"import h5py, sys\n"
                         "f = h5py.File(sys.argv[1], 'r+')\n"
                         "f['train/doc_offsets'][1] += 1\n"
                         "f.close()\" " + other + " && stat -c %s " + storiesDataset() + " " + other);
  ASSERT_EQ(moved.code, 0) << moved.output;
  std::istringstream sizes(moved.output);
  std::string before, after;
  sizes >> before >> after;
  ASSERT_EQ(before, after) << "the edited copy changed size, so its offsets would not be what is tested";
  expectResumeRefused("data", "data (" + other + ")", "--data.path=" + other);
}

// (loss, grad_norm) of every step in RUN_DIR/metrics.jsonl.
std::vector<std::pair<double, double>> lossAndNorm(const std::string& run_dir) {
  std::vector<std::pair<double, double>> out;
  std::istringstream in(readText(run_dir + "/metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    const Json j = parseJson(line, run_dir + "/metrics.jsonl");
    out.emplace_back(j.at("loss", "").asNumber(""), j.at("grad_norm", "").asNumber(""));
  }
  return out;
}

// Gradient accumulation is how a global batch is split, not what it computes: the same global
// batch of 8 windows at accumulation 1, 2 and 8 on one rank, and 4 on two, gives the same loss and
// gradient norm at every step within 1e-6. The train split holds exactly those 8 windows, so the
// first step averages all of them whatever the order: its loss and gradient norm (before clipping)
// must equal an independent float64 PyTorch autograd of stories260K over the 8 windows
// (tests/e2e/grad_reference.py). A gradient A times too large passed every test once (AdamW hides
// a constant scale): not this one.
TEST(Training, AccumulationFactorsGiveTheSameStepsAndTheReferenceGradientNorm) {
  const std::string dir = freshDir("accumulation");
  const std::string data_path = dir + "/eight_windows.h5";
  const auto made = run(GRAFT_PYTHON " -c \"import h5py, numpy as np, sys\n"
                        "src = h5py.File(sys.argv[1], 'r'); dst = h5py.File(sys.argv[2], 'w')\n"
                        "for k, v in src.attrs.items(): dst.attrs[k] = v\n"
                        "t = src['train/tokens'][:8 * 32 + 1]\n"
                        "dst['train/tokens'] = t; dst['train/doc_offsets'] = np.array([0, len(t)], dtype=np.int64)\n"
                        "src.copy('val', dst)\n"
                        "dst.close()\" " + storiesDataset() + " " + data_path);
  ASSERT_EQ(made.code, 0) << made.output;
  const std::string model = data("llama2c/stories260K.bin");
  auto train = [&](int np, int micro_batch) {
    const std::string run_dir = dir + "/np" + std::to_string(np) + "_mb" + std::to_string(micro_batch);
    const std::string cfg = writeConfig(dir, "[run]\ndir = " + run_dir + "\n[model]\npath = " + model + "\n[data]\npath = " +
                                                 data_path + "\n[train]\nsteps = 3\nbatch_size = 8\nmicro_batch = " +
                                                 std::to_string(micro_batch) + "\nseq_len = 32\nlr = 1e-3\nwarmup = 1\n"
                                                 "grad_clip = 0.5\nthreads = 1\nseed = 3\n[eval]\nevery = 0\n"
                                                 "[checkpoint]\nevery = 0\n");
    const auto r = run(mpirun(np) + " " + graft() + " train --config " + cfg);
    EXPECT_EQ(r.code, 0) << r.output;
    return lossAndNorm(run_dir);
  };
  const auto one = train(1, 8);
  ASSERT_EQ(one.size(), 3u);
  for (const auto& [np, micro_batch] : std::vector<std::pair<int, int>>{{1, 4}, {1, 1}, {2, 1}}) {
    const auto other = train(np, micro_batch);
    const std::string what = "np " + std::to_string(np) + ", accumulation " + std::to_string(8 / (np * micro_batch));
    ASSERT_EQ(other.size(), one.size()) << what;
    for (std::size_t i = 0; i < one.size(); ++i) {
      EXPECT_NEAR(other[i].first, one[i].first, 1e-6 * one[i].first) << what << ", step " << i + 1 << " loss";
      EXPECT_NEAR(other[i].second, one[i].second, 1e-6 * one[i].second) << what << ", step " << i + 1 << " grad_norm";
    }
  }
  const auto ref = run(GRAFT_PYTHON " " + std::string(GRAFT_SOURCE_DIR) + "/tests/e2e/grad_reference.py " + model + " " +
                       data_path + " 32");
  ASSERT_EQ(ref.code, 0) << ref.output;
  double ref_loss = 0, ref_norm = 0;
  ASSERT_EQ(sscanf(ref.output.c_str(), "%lf %lf", &ref_loss, &ref_norm), 2) << ref.output;
  EXPECT_NEAR(one[0].first, ref_loss, 1e-5 * ref_loss);
  EXPECT_NEAR(one[0].second, ref_norm, 1e-4 * ref_norm);
  EXPECT_GT(one[0].second, 0.5) << "grad_clip = 0.5 must act in the first step, so that clipping is compared too";
}

TEST(Training, LossGoesDownOnTinyStories) {
  const std::string dir = freshDir("loss_down");
  const auto r = run(graft() + " train --config " + writeConfig(dir, tinyConfig(dir + "/run", storiesDataset())) +
                     " --train.steps=30 --eval.every=30");
  ASSERT_EQ(r.code, 0) << r.output;
  double before = 0, after = 0;
  const auto at = r.output.find("val loss before training: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  before = std::stod(r.output.substr(at + 26));
  const std::string metrics = readText(dir + "/run/metrics.jsonl");
  const auto v = metrics.rfind("\"val_loss\": ");
  ASSERT_NE(v, std::string::npos) << metrics;
  after = std::stod(metrics.substr(v + 12));
  EXPECT_GT(before, 5.5);           // ~ln(512) at random initialisation
  EXPECT_LT(after, before - 1.0) << r.output;
}

}  // namespace
}  // namespace graft::e2e

namespace graft::e2e {
namespace {

TEST(Training, LaunchPlansAndStartsTheRanks) {
  const std::string dir = freshDir("launch");
  const std::string cfg = writeConfig(dir, tinyConfig(dir + "/run", storiesDataset()));
  const auto dry = run(graft() + " launch --ranks-per-node 2 --dry-run -- train --config " + cfg);
  ASSERT_EQ(dry.code, 0) << dry.output;
  EXPECT_EQ(dry.output.rfind("mpirun -np 2 --map-by ppr:2:node", 0), 0u) << dry.output;
  const auto r = run(graft() + " launch --ranks-per-node 2 -- train --config " + cfg + " --train.steps=3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("on 2 rank(s) on 1 host(s) (mpi"), std::string::npos) << r.output;
  EXPECT_EQ(losses(dir + "/run").size(), 3u);
  EXPECT_EQ(run(graft() + " launch --nodes 2 -- train --config " + cfg).code, 2);
}

// cluster/train_mpirun.sbatch's mpirun line (--map-by ppr:N:node --bind-to core), run as the job
// script runs it but on this host alone, outside Slurm: Open MPI 4.1's mpirun and 5's (PRRTE) both
// take it, and the script passes graft's exit code on.
TEST(Training, TheMpirunJobScriptStartsTheRanks) {
  const std::string dir = freshDir("job_script");
  const std::string cfg = writeConfig(dir, tinyConfig(dir + "/run", storiesDataset()));
  const auto r = run("cd " + dir + " && SLURM_NTASKS_PER_NODE=2 GRAFT=" + graft() + " bash " + GRAFT_SOURCE_DIR +
                     "/cluster/train_mpirun.sbatch " + cfg + " --train.steps=3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("on 2 rank(s) on 1 host(s) (mpi"), std::string::npos) << r.output;
  EXPECT_EQ(losses(dir + "/run").size(), 3u);
  const auto bad = run("cd " + dir + " && SLURM_NTASKS_PER_NODE=2 GRAFT=" + graft() + " bash " + GRAFT_SOURCE_DIR +
                       "/cluster/train_mpirun.sbatch " + dir + "/missing.ini");
  EXPECT_EQ(bad.code, 2) << bad.output;
}

}  // namespace
}  // namespace graft::e2e
