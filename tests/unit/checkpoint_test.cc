#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/manifest.h"
#include "train/checkpointing.h"
#include "formats/hdf5.h"
#include "util/error.h"
#include "parallel/shard_plan.h"
#include "util/files.h"

namespace graft {
namespace {

// The checkpoint one process writes of `model` and `optimizer` (both owned by the test), all whole.
std::string writeWhole(const std::string& dir, Transformer model, const AdamW& optimizer, Schedule schedule,
                       TrainingState state) {
  return writeCheckpoint(dir, wholeContent(model, std::shared_ptr<const AdamW>(&optimizer, [](const AdamW*) {}),
                                           std::move(schedule), std::move(state)));
}

// The checkpoint a sharded run of `world` ranks writes with a part file per rank (Note [one
// checkpoint writer]), by one process playing every rank: rank r's rows (shardRows) of every
// tensor of wholeContent go into its part, and rank 0 drafts, completes and publishes the file.
std::string writeInParts(const std::string& dir, Transformer model, std::shared_ptr<const AdamW> optimizer,
                         TrainingState state, int world) {
  state.world_size = world;
  const CheckpointContent whole = wholeContent(model, optimizer, Schedule{}, std::move(state));
  std::vector<CheckpointContent> ranks(static_cast<std::size_t>(world), whole);
  std::vector<std::uint64_t> sums;
  for (int r = 0; r < world; ++r) {
    auto& content = ranks[static_cast<std::size_t>(r)];
    content.rank = r;
    content.world = world;
    for (auto& t : content.rows) {
      const RowRange mine = shardRows(t.wholeRows(), r, world);
      t.row_begin = mine.begin;
      t.rows = t.rows.narrow(0, mine.begin, mine.size());
      t.sharded = true;
    }
    EXPECT_EQ(content.rowsProblem(), "");
    const auto part = writeRowsPart(dir, content);
    sums.insert(sums.end(), part.begin(), part.end());
  }
  const CheckpointDraft draft = draftCheckpoint(dir, ranks[0], RowFiles::kParts);
  return completeCheckpoint(draft, ranks[0], sums);
}

ModelConfig tiny() {
  ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 20;
  c.seq_len = 8;
  return c;
}

TEST(Hdf5, TensorsAndAttributesRoundTrip) {
  const std::string path = ::testing::TempDir() + "/rt.h5";
  auto a = torch::randn({3, 4});
  auto b = torch::arange(10, torch::kInt32);
  {
    auto f = H5File::create(path);
    f.writeTensor("/g/a.with.dots", a);
    f.writeTensor("/b", b);
    f.setAttr("/g", "n", std::int64_t{42});
    f.setAttr("/", "s", std::string("hello"));
    f.close();
  }
  auto f = H5File::openRead(path);
  EXPECT_TRUE(torch::equal(f.readTensor("/g/a.with.dots"), a));
  EXPECT_TRUE(torch::equal(f.readTensor("/b"), b));
  EXPECT_EQ(f.intAttr("/g", "n"), 42);
  EXPECT_EQ(f.stringAttr("/", "s"), "hello");
  EXPECT_FALSE(f.exists("/nope/x"));
  EXPECT_THROW(f.readTensor("/nope"), InputError);
  EXPECT_THROW(f.intAttr("/", "missing"), InputError);
}

// verifyCheckpoint reads each tensor a block at a time (4 MiB from the file itself, or 64 MiB
// through HDF5), never whole: a tensor of several blocks, one that ends mid-block, every element
// type and shape (0-d, empty) verify against the CRC-32s writeTensor took in
// memory, and a flipped byte in a tensor's last block is named. (That no whole tensor is held is
// BlockReuse.VerifyingACheckpointHoldsNoWholeTensor: its allocator counts the blocks.)
TEST(Checkpoint, VerifyingReadsTensorsInBlocksAndSeesTheirLastByte) {
  const std::string path = ::testing::TempDir() + "/blocks.h5";
  std::uint64_t big_bytes = 0;
  {
    auto f = H5File::create(path);
    f.writeTensor("/big", torch::randn({2600, 1000}));  // 10.4 MB: 3 blocks, the last one partial
    f.writeTensor("/i64", torch::arange(60, torch::kLong).view({5, 4, 3}));
    f.writeTensor("/u8", torch::randint(0, 256, {1001}, torch::kUInt8));
    f.writeTensor("/f64_scalar", torch::tensor(3.25, torch::kDouble));
    f.writeTensor("/empty", torch::zeros({0, 5}));
    std::string manifest;
    for (const auto& w : f.written()) manifest += formatManifestLine({w.object, w.crc32, w.bytes});
    big_bytes = f.written().front().bytes;
    writeManifest(f, manifest);
    f.close();
  }
  EXPECT_NO_THROW(verifyCheckpoint(path));
  std::uint64_t offset = 0;
  {
    auto f = H5File::openRead(path);
    offset = f.dataOffset("/big");
  }
  ASSERT_GT(offset, 0u);
  {
    std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
    file.seekg(static_cast<std::streamoff>(offset + big_bytes - 1));
    char c = 0;
    file.read(&c, 1);
    c ^= 0x01;
    file.seekp(static_cast<std::streamoff>(offset + big_bytes - 1));
    file.write(&c, 1);
  }
  try {
    verifyCheckpoint(path);
    FAIL() << "a flipped byte in the last block went unseen";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("/big"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is damaged"), std::string::npos) << e.what();
  }
}

// An object header holds at most 64 KiB of fixed-length attributes: a longer string (a manifest of
// an 80-layer model once, a classifier's label names, a long config) must still round-trip, beside
// a short one on the same object, and h5py must read it back (it is read by Python tools too).
TEST(Hdf5, StringAttributesOfAnyLengthRoundTrip) {
  const std::string path = ::testing::TempDir() + "/long_attr.h5";
  std::string long_text;
  for (int i = 0; long_text.size() < (3u << 20); ++i) long_text += "/model/layers." + std::to_string(i) + ".w 123 456\n";
  {
    auto f = H5File::create(path);
    f.setAttr("/", "short", std::string("hello"));
    f.setAttr("/", "long", long_text);
    f.setAttr("/", "edge", std::string(H5File::kFixedStringAttrMax, 'x'));
    f.setAttr("/", "edge_plus_one", std::string(H5File::kFixedStringAttrMax + 1, 'y'));
    f.close();
  }
  auto f = H5File::openRead(path);
  EXPECT_EQ(f.stringAttr("/", "short"), "hello");
  EXPECT_EQ(f.stringAttr("/", "long"), long_text);
  EXPECT_EQ(f.stringAttr("/", "edge"), std::string(H5File::kFixedStringAttrMax, 'x'));
  EXPECT_EQ(f.stringAttr("/", "edge_plus_one"), std::string(H5File::kFixedStringAttrMax + 1, 'y'));
  const std::string py = std::string(GRAFT_PYTHON) + " -c \"import h5py,sys; a=h5py.File(sys.argv[1],'r').attrs['long']; "
                         "a=a.decode() if isinstance(a,bytes) else a; print(len(a))\" " + path;
  FILE* pipe = ::popen(py.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buffer[64] = {0};
  const bool read = std::fgets(buffer, sizeof(buffer), pipe) != nullptr;
  ::pclose(pipe);
  ASSERT_TRUE(read) << py;
  EXPECT_EQ(std::stoull(buffer), long_text.size());
}


// Verification reads a tensor's bytes straight from the file where rawOffset says they lie as
// readTensor returns them; anywhere else (rows in other files, chunks, another byte order) it must
// say 0, or a good checkpoint would read as damaged.
TEST(Hdf5, RawOffsetIsWhereTheStoredBytesAreReadAsTheyAreOrNone) {
  const std::string path = ::testing::TempDir() + "/raw.h5", other = ::testing::TempDir() + "/raw_byte_order.h5";
  const auto a = torch::randn({5, 7});
  const auto b = torch::arange(11, torch::kInt64);
  {
    auto f = H5File::create(path);
    f.writeTensor("/a", a);
    f.writeTensor("/b", b);
    f.createGrowing("/grows", at::kInt);
    const std::int32_t some[3] = {1, 2, 3};
    f.append("/grows", at::kInt, some, 3);
    f.writeVirtualRows("/v", {5, 7}, {{"raw.h5", "/a", 0, 5}}, 0, 0);
    f.close();
  }
  const auto f = H5File::openRead(path);
  const ReadOnlyFile raw = ReadOnlyFile::open(path);
  for (const auto& [object, t] : {std::pair<std::string, at::Tensor>{"/a", a}, {"/b", b}}) {
    const std::uint64_t offset = f.rawOffset(object);
    ASSERT_GT(offset, 0u) << object;
    std::string bytes(static_cast<std::size_t>(t.nbytes()), '\0');
    raw.readAt(offset, bytes.data(), bytes.size());
    EXPECT_EQ(std::memcmp(bytes.data(), t.data_ptr(), bytes.size()), 0) << object;
  }
  EXPECT_EQ(f.rawOffset("/grows"), 0u);
  EXPECT_EQ(f.rawOffset("/v"), 0u);
  // Float32 stored big-endian (h5py writes what it is told): read through HDF5, which converts.
  const std::string py = std::string(GRAFT_PYTHON) + " -c \"import h5py,numpy,sys; f=h5py.File(sys.argv[1],'w'); "
                         "f['big']=numpy.arange(6,dtype='>f4'); f['little']=numpy.arange(6,dtype='<f4')\" " + other;
  ASSERT_EQ(std::system(py.c_str()), 0) << py;
  const auto o = H5File::openRead(other);
  EXPECT_EQ(o.rawOffset("big"), 0u);
  EXPECT_GT(o.rawOffset("little"), 0u);
  EXPECT_TRUE(o.readTensor("big").equal(torch::arange(6, torch::kFloat)));
}
TEST(Checkpoint, WriteReadIsBitwiseAndOnlyCompleteFilesCount) {
  const std::string dir = ::testing::TempDir() + "/ckpt_rt";
  Transformer model(tiny());
  model->initialise(5);
  AdamW opt(model->named_parameters().pairs(), {0.9, 0.95, 1e-8, 0.1});
  for (auto& s : opt.slots()) s.exp_avg.normal_(), s.exp_avg_sq.uniform_();
  opt.setStepCount(17);
  for (std::size_t i = 0; i < opt.slots().size(); ++i) opt.slots()[i].steps = 17 - static_cast<std::int64_t>(i % 5);
  TrainingState st;
  st.step = 17;
  st.world_size = 2;
  st.next_batch = 17;
  st.config = "[train]\nsteps = 20\n";
  st.rng_states = torch::arange(10, torch::kUInt8).view({2, 5});
  writeWhole(dir, model, opt, Schedule{1e-3, 1e-4, 2, 20}, st);
  // A half-written newer checkpoint and a foreign file must be ignored.
  std::ofstream(dir + "/" + checkpointName(18)) << "not hdf5";
  std::ofstream(dir + "/" + checkpointName(19) + ".tmp") << "partial";
  const auto found = completeCheckpoints(dir);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0], dir + "/" + checkpointName(17));

  Transformer other(tiny());
  other->initialise(6);
  AdamW opt2(other->named_parameters().pairs(), {0.9, 0.95, 1e-8, 0.1});
  const auto back = readCheckpoint(found[0], other, opt2);
  EXPECT_EQ(back.step, 17);
  EXPECT_EQ(back.world_size, 2);
  EXPECT_EQ(back.config, st.config);
  EXPECT_TRUE(torch::equal(back.rng_states, st.rng_states));
  EXPECT_EQ(opt2.stepCount(), 17);
  auto p1 = model->named_parameters(), p2 = other->named_parameters();
  for (const auto& item : p1) EXPECT_TRUE(torch::equal(item.value(), p2[item.key()])) << item.key();
  for (std::size_t i = 0; i < opt.slots().size(); ++i) {
    EXPECT_TRUE(torch::equal(opt.slots()[i].exp_avg, opt2.slots()[i].exp_avg));
    EXPECT_TRUE(torch::equal(opt.slots()[i].exp_avg_sq, opt2.slots()[i].exp_avg_sq));
    EXPECT_EQ(opt.slots()[i].steps, opt2.slots()[i].steps);
  }
  pruneCheckpoints(dir, 1, 1000);
  std::ifstream tmp(dir + "/" + checkpointName(19) + ".tmp");
  EXPECT_FALSE(tmp.good());
}

TEST(Checkpoint, OtherArchitectureIsRejectedWithBothShapes) {
  const std::string dir = ::testing::TempDir() + "/ckpt_arch";
  Transformer model(tiny());
  AdamW opt(model->named_parameters().pairs(), {});
  TrainingState st;
  st.rng_states = torch::zeros({1, 4}, torch::kUInt8);
  const auto path = writeWhole(dir, model, opt, Schedule{}, st);
  auto c = tiny();
  c.n_layers = 3;
  Transformer bigger(c);
  AdamW opt2(bigger->named_parameters().pairs(), {});
  try {
    readCheckpoint(path, bigger, opt2);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("layers 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("layers 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft

namespace graft {
namespace {

// Flips one byte inside the stored data of `object` (found by searching for its bytes).
void flipByteOf(const std::string& path, const std::string& object) {
  at::Tensor t;
  {
    auto f = H5File::openRead(path);
    t = f.readTensor(object).contiguous();
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string needle(static_cast<const char*>(t.data_ptr()), 64);
  const auto at = bytes.find(needle);
  ASSERT_NE(at, std::string::npos);
  bytes[at + 10] ^= 0x40;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST(Checkpoint, FlippedByteIsDetectedAndNamed) {
  const std::string dir = ::testing::TempDir() + "/ckpt_flip";
  Transformer model(tiny());
  model->initialise(9);
  AdamW opt(model->named_parameters().pairs(), {});
  TrainingState st;
  st.step = 3;
  st.rng_states = torch::zeros({1, 4}, torch::kUInt8);
  const auto path = writeWhole(dir, model, opt, Schedule{}, st);
  EXPECT_NO_THROW(verifyCheckpoint(path));
  flipByteOf(path, "/model/layers.1.feed_forward.w2.weight");
  try {
    verifyCheckpoint(path);
    FAIL() << "damage not detected";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("/model/layers.1.feed_forward.w2.weight"), std::string::npos) << e.what();
  }
}

// The writer trusts the layout each tensor declares (Note [one checkpoint writer]): a rank whose
// rows are not those the layout gives it is refused before anything is written, naming the tensor,
// and rows that do not make the whole tensor never complete a checkpoint.
TEST(Checkpoint, RowsOtherThanTheLayoutGivesAreRefused) {
  Transformer model(tiny());
  model->initialise(3);
  auto opt = std::make_shared<AdamW>(model->named_parameters().pairs(), AdamWOptions{});
  TrainingState st;
  st.step = 5;
  st.world_size = 2;
  st.rng_states = torch::zeros({2, 4}, torch::kUInt8);
  CheckpointContent content = wholeContent(model, opt, Schedule{}, st);
  EXPECT_EQ(content.rowsProblem(), "");
  content.world = 2;
  content.rank = 1;
  EXPECT_NE(content.rowsProblem().find("rank 1 holds rows [0, "), std::string::npos) << "rank 1 holding rank 0's tensors";
  for (auto& t : content.rows) {
    const RowRange mine = shardRows(t.wholeRows(), 1, 2);
    t.rows = t.rows.narrow(0, mine.begin, mine.size());
    t.row_begin = mine.begin;
    t.sharded = true;
  }
  EXPECT_EQ(content.rowsProblem(), "");
  content.rows[3].row_begin -= 1;  // the right number of rows, from the wrong place
  EXPECT_NE(content.rowsProblem().find(content.rows[3].object), std::string::npos) << content.rowsProblem();
  content.rows[3].row_begin += 1;
  content.rows[3].rows = content.rows[3].rows.narrow(1, 0, 1);  // another trailing shape
  EXPECT_NE(content.rowsProblem().find(content.rows[3].object), std::string::npos) << content.rowsProblem();
  // Completion: checksums whose bytes do not make the whole tensor leave no checkpoint.
  const std::string dir = ::testing::TempDir() + "/ckpt_layout";
  std::system(("rm -rf '" + dir + "'").c_str());
  CheckpointContent rank0 = wholeContent(model, opt, Schedule{}, st);
  rank0.world = 2;
  for (auto& t : rank0.rows) t.sharded = true;
  const CheckpointDraft draft = draftCheckpoint(dir, rank0, RowFiles::kParts);
  std::vector<std::uint64_t> sums;
  for (int r = 0; r < 2; ++r)
    for (const auto& t : rank0.rows) {
      sums.push_back(0);
      sums.push_back(rowBytes(t) * static_cast<std::uint64_t>(shardRows(t.wholeRows(), r, 2).size()) - (r == 1 ? 4 : 0));
    }
  try {
    completeCheckpoint(draft, rank0, sums);
    FAIL() << "a checkpoint completed with rows short of the whole tensor";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bytes of " + rank0.rows[0].object), std::string::npos) << e.what();
  }
  EXPECT_TRUE(completeCheckpoints(dir).empty());
  EXPECT_FALSE(fileExists(draft.tmp));
}

// A sharded run's checkpoint: the optimizer's rows in part files, mapped by the checkpoint file.
// Damage in a part or a missing part is found by verification; pruning takes parts along.
TEST(Checkpoint, ShardedPartsAreVerifiedAndPrunedWithTheirCheckpoint) {
  const std::string dir = ::testing::TempDir() + "/ckpt_parts";
  std::system(("rm -rf '" + dir + "'").c_str());
  Transformer model(tiny());
  model->initialise(4);
  auto opt = std::make_shared<AdamW>(model->named_parameters().pairs(), AdamWOptions{});
  for (auto& s : opt->slots()) s.exp_avg.normal_(), s.exp_avg_sq.uniform_();
  opt->setStepCount(3);
  std::vector<std::string> paths;
  for (std::int64_t step = 1; step <= 3; ++step) {
    TrainingState st;
    st.step = step;
    st.rng_states = torch::zeros({1, 4}, torch::kUInt8);
    paths.push_back(writeInParts(dir, model, opt, st, 2));
  }
  const auto some_rows = [&](H5File& f) { f.writeTensor("/optimizer/exp_avg/x", torch::ones({2, 3})); };
  writeCheckpointPart(dir, 4, 0, 2, 0, some_rows);  // no checkpoint file
  writeCheckpointPart(dir, 3, 1, 3, 0, some_rows);  // another world size
  {  // a newer checkpoint that resume abandoned (damaged): not counted, not deleted
    TrainingState st;
    st.step = 9;
    st.rng_states = torch::zeros({1, 4}, torch::kUInt8);
    writeInParts(dir, model, opt, st, 2);
  }
  const std::string part3 = dir + "/" + checkpointPartName(3, 0, 2);
  ASSERT_TRUE(fileExists(part3));
  EXPECT_NO_THROW(verifyCheckpoint(paths[2]));
  {
    Transformer other(tiny());
    AdamW read(other->named_parameters().pairs(), {});
    readCheckpoint(paths[2], other, read);
    for (std::size_t i = 0; i < read.slots().size(); ++i)
      EXPECT_TRUE(torch::equal(read.slots()[i].exp_avg_sq, opt->slots()[i].exp_avg_sq)) << read.slots()[i].name;
  }
  pruneCheckpoints(dir, 2, 3);
  EXPECT_FALSE(fileExists(paths[0]));
  EXPECT_FALSE(fileExists(dir + "/" + checkpointPartName(1, 0, 2)));
  EXPECT_FALSE(fileExists(dir + "/" + checkpointPartName(1, 1, 2)));
  EXPECT_FALSE(fileExists(dir + "/" + checkpointPartName(4, 0, 2)));
  EXPECT_TRUE(fileExists(dir + "/" + checkpointPartName(2, 0, 2)));
  EXPECT_TRUE(fileExists(part3));
  EXPECT_TRUE(fileExists(dir + "/" + checkpointPartName(3, 1, 2)));
  EXPECT_FALSE(fileExists(dir + "/" + checkpointPartName(3, 1, 3)));
  EXPECT_TRUE(fileExists(dir + "/" + checkpointName(9)));
  EXPECT_TRUE(fileExists(dir + "/" + checkpointPartName(9, 0, 2)));

  const std::string object = "/optimizer/exp_avg/layers.0.attention.wq.weight";
  flipByteOf(part3, object);
  try {
    verifyCheckpoint(paths[2]);
    FAIL() << "damage in a part not detected";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(object), std::string::npos) << e.what();
  }
  ::unlink((dir + "/" + checkpointPartName(2, 1, 2)).c_str());
  EXPECT_THROW(verifyCheckpoint(paths[1]), InputError);
  // A rank that reads without verifying (only rank 0 verifies) still refuses the missing rows.
  Transformer other(tiny());
  AdamW read(other->named_parameters().pairs(), {});
  try {
    readCheckpoint(paths[1], other, read);
    FAIL() << "a missing part was read as data";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("part file missing"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace graft
