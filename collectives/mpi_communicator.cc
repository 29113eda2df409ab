#include "mpi_communicator.h"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <thread>
#include <vector>

namespace graft {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kNoticeTag = 7101;
constexpr int kRingTagBase = 8000, kRingTags = 16000;  // Note [ring reduce-scatter]: 8000..23999

// Note [segmented all-reduce]: Open MPI 4.1 moves one large all-reduce slowly (64 MiB in one
// MPI_Allreduce: 0.4 GB/s bus bandwidth on a 2-core machine, vs 5 GB/s for the same bytes as 8 MiB
// calls), and its non-blocking MPI_Iallreduce is slower still per call. graft posts an
// all-reduce as consecutive non-blocking segments of segmentBytes(), all in flight at once; every
// rank splits identically, so the segments match up. Measured by bench/allreduce_bench.
// GRAFT_MPI_SEGMENT_BYTES overrides the default of 256 KiB (measured best of 128 KiB-4 MiB).
std::size_t segmentBytes() {
  static const std::size_t bytes = [] {
    const char* v = std::getenv("GRAFT_MPI_SEGMENT_BYTES");
    const long long n = v ? std::atoll(v) : 0;
    return n > 0 ? static_cast<std::size_t>(n) : std::size_t{256} << 10;
  }();
  return bytes;
}

// Note [bfloat16 over MPI]: MPI has no bfloat16. It travels as a 2-byte type of graft's own, and
// its reductions are user operations that add (or compare) in float32 and round back to nearest
// even, as a bfloat16 sum in PyTorch or NCCL does: each partial sum rounds to bfloat16.
float bf16ToFloat(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

std::uint16_t floatToBf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

template <typename Combine>
void bf16Reduce(void* in, void* inout, int* len, Combine combine) {
  const auto* a = static_cast<const std::uint16_t*>(in);
  auto* b = static_cast<std::uint16_t*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = floatToBf16(combine(bf16ToFloat(a[i]), bf16ToFloat(b[i])));
}
void bf16Sum(void* in, void* inout, int* len, MPI_Datatype*) { bf16Reduce(in, inout, len, [](float x, float y) { return x + y; }); }
// NaN wins either way round, so the operations commute as MPI assumes.
void bf16Max(void* in, void* inout, int* len, MPI_Datatype*) {
  bf16Reduce(in, inout, len, [](float x, float y) { return x != x || y != y ? x + y : std::max(x, y); });
}
void bf16Min(void* in, void* inout, int* len, MPI_Datatype*) {
  bf16Reduce(in, inout, len, [](float x, float y) { return x != x || y != y ? x + y : std::min(x, y); });
}

// The bfloat16 type and its operations, made once MPI is initialised (never freed: MPI_Finalize does).
struct Bf16 {
  MPI_Datatype type = MPI_DATATYPE_NULL;
  MPI_Op sum = MPI_OP_NULL, max = MPI_OP_NULL, min = MPI_OP_NULL;
};
const Bf16& bf16() {
  static const Bf16 made = [] {
    Bf16 b;
    MPI_Type_contiguous(2, MPI_BYTE, &b.type);
    MPI_Type_commit(&b.type);
    MPI_Op_create(&bf16Sum, /*commute=*/1, &b.sum);
    MPI_Op_create(&bf16Max, 1, &b.max);
    MPI_Op_create(&bf16Min, 1, &b.min);
    return b;
  }();
  return made;
}

MPI_Op toMpi(ReduceOp op, DType type) {
  if (type == DType::BFloat16) {
    const Bf16& b = bf16();
    return op == ReduceOp::Max ? b.max : op == ReduceOp::Min ? b.min : b.sum;
  }
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_SUM;
}

MPI_Datatype toMpi(DType type) {
  switch (type) {
    case DType::Float32: return MPI_FLOAT;
    case DType::Float64: return MPI_DOUBLE;
    case DType::Int32: return MPI_INT32_T;
    case DType::Int64: return MPI_INT64_T;
    case DType::UInt8: return MPI_UINT8_T;
    case DType::BFloat16: return bf16().type;
    case DType::Float16: return MPI_DATATYPE_NULL;
  }
  return MPI_DATATYPE_NULL;
}

// Where a rank is: the collective it is waiting in (see Note [who did not arrive]).
struct Notice {
  std::uint64_t seq;
  char op[16];
  char tag[48];
};

class MpiCommunicator;

class MpiWork final : public Work {
 public:
  // Called when every request of a round has completed: posts the next round into `requests`
  // and returns true, or returns false when the operation is complete (Note [ring reduce-scatter]).
  using NextRound = std::function<bool(std::vector<MPI_Request>& requests)>;
  MpiWork(MpiCommunicator& comm, std::vector<MPI_Request> requests, const char* op, const char* tag, std::uint64_t seq,
          NextRound next = {})
      : comm_(comm), requests_(std::move(requests)), op_(op), tag_(tag), seq_(seq), next_(std::move(next)) {}
  ~MpiWork() override;
  bool test() override;
  void wait(std::chrono::milliseconds timeout) override;

 private:
  MpiCommunicator& comm_;
  std::vector<MPI_Request> requests_;
  const char* op_;
  std::string tag_;
  std::uint64_t seq_;
  NextRound next_;
  bool done_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      int provided = 0;
      // SharedFile writes are large row slabs per rank: collective buffering only moves every byte
      // between the ranks first. Open MPI's OMPIO does not take that from the hints of
      // openSharedFile, and its default (fcoll vulcan) made a 386 MB checkpoint 2.8x slower here
      // (measured at 4 ranks). Only MPI-IO reads this; an OMPI_MCA_fcoll or --mca fcoll of the
      // user's comes first.
      setenv("OMPI_MCA_fcoll", "individual", /*overwrite=*/0);
      const char* level = std::getenv("GRAFT_MPI_THREADS");  // "funneled": no MPI-IO checkpoints (part files)
      const int wanted = level && std::string(level) == "funneled" ? MPI_THREAD_FUNNELED : MPI_THREAD_MULTIPLE;
      if (MPI_Init_thread(nullptr, nullptr, wanted, &provided) != MPI_SUCCESS)
        throw CollectiveError("MPI_Init_thread failed (is this process started by mpirun or srun?)");
      owns_mpi_ = true;
    }
    for (MPI_Comm* c : {&comm_, &watch_, &files_}) {
      MPI_Comm_dup(MPI_COMM_WORLD, c);
      MPI_Comm_set_errhandler(*c, MPI_ERRORS_RETURN);
    }
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_);
    MPI_Comm_rank(node_, &local_rank_);
    MPI_Comm_size(node_, &local_size_);
  }

  ~MpiCommunicator() override {
    // Never throws or blocks on peers. A failed communicator is left as it is: main() aborts. So is
    // one destroyed by an error on this rank alone (rank 0's disk filled): MPI_Finalize would wait
    // for peers that are waiting in the next collective, when main() is about to abort them.
    if (failed_ || std::uncaught_exceptions() > 0) return;
    drainNotices();
    for (MPI_Comm* c : {&node_, &files_, &watch_, &comm_})
      if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (owns_mpi_ && !finalised) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int localRank() const override { return local_rank_; }
  int localSize() const override { return local_size_; }
  std::string backend() const override { return "mpi"; }
  std::unique_ptr<SharedFile> openSharedFile(const std::string& path, std::string* why_not) override;

  // See Note [segmented all-reduce].
  WorkPtr allReduceAsync(void* data, std::size_t count, DType type, ReduceOp op, const char* tag) override {
    const std::size_t segment = std::max<std::size_t>(1, segmentBytes() / sizeOf(type));
    const std::size_t segments = std::max<std::size_t>(1, (count + segment - 1) / segment);
    return start("allReduce", tag, type, segments, [&](std::size_t i, MPI_Request* r) {
      const std::size_t first = i * segment, n = std::min(segment, count - first);
      return MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(data) + first * sizeOf(type), toCount(n, "allReduce", tag),
                            toMpi(type), toMpi(op, type), comm_, r);
    });
  }
  // Note [ring reduce-scatter]
  // ~~~~~~~~~~~~~~~~~~~~~~~~~~
  // Open MPI's MPI_Ireduce_scatter_block (libnbc) moved a 48 MiB unit at 4 ranks on this 2-core
  // machine in 77-97 ms, and its temporaries raised the peak resident set by 96 MiB, twice its
  // send buffer (under dist.shard = parameters, beside a unit's gradients and their packed copy:
  // the process's peak). Where the caller lets the order of the sums change (dist.accumulate =
  // rows; reduceScatterAnyOrderAsync), graft runs the ring itself: N-1 rounds in which each rank sends one block
  // (its own at first, then the partial sum it received) to the next rank, receives the next
  // partial sum from the one before and adds its own block to it (MPI_Reduce_local, so every type
  // and operation MPI has, bfloat16's own included). 20-32 ms for the same 50 MB, one block of
  // scratch, the result straight into `recv`. Block b's sum starts at rank b+1 and ends at rank b,
  // the same order on every run; at 2 ranks it is a + b as any all-reduce. Each call's messages
  // carry a tag of their own (from the collective's sequence number), so rings in flight together
  // never take each other's messages.
  WorkPtr reduceScatterAnyOrderAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                                     const char* tag) override {
    if (size_ >= 2 && count > 0) return ringReduceScatter(send, recv, count, type, op, tag);
    return reduceScatterAsync(send, recv, count, type, op, tag);
  }
  WorkPtr reduceScatterAsync(const void* send, void* recv, std::size_t count, DType type, ReduceOp op,
                             const char* tag) override {
    return start("reduceScatter", tag, type, 1, [&](std::size_t, MPI_Request* r) {
      return MPI_Ireduce_scatter_block(send, recv, toCount(count, "reduceScatter", tag), toMpi(type), toMpi(op, type), comm_, r);
    });
  }
  WorkPtr allGatherAsync(const void* send, void* recv, std::size_t count, DType type, const char* tag) override {
    return start("allGather", tag, type, 1, [&](std::size_t, MPI_Request* r) {
      const int n = toCount(count, "allGather", tag);
      return MPI_Iallgather(send, n, toMpi(type), recv, n, toMpi(type), comm_, r);
    });
  }
  WorkPtr broadcastAsync(void* data, std::size_t count, DType type, int root, const char* tag) override {
    if (root < 0 || root >= size_) throw CollectiveError(context("broadcast", tag, seq_ + 1) + ": root " + std::to_string(root) + " out of range");
    return start("broadcast", tag, type, 1, [&](std::size_t, MPI_Request* r) {
      return MPI_Ibcast(data, toCount(count, "broadcast", tag), toMpi(type), root, comm_, r);
    });
  }
  WorkPtr barrierAsync(const char* tag) override {
    return start("barrier", tag, DType::UInt8, 1, [&](std::size_t, MPI_Request* r) { return MPI_Ibarrier(comm_, r); });
  }

  std::string context(const char* op, const std::string& tag, std::uint64_t seq) const {
    return std::string("mpi ") + op + " '" + tag + "' #" + std::to_string(seq) + " on rank " + std::to_string(rank_) +
           "/" + std::to_string(size_);
  }

  void check(int rc, const char* op, const std::string& tag, std::uint64_t seq) {
    if (rc == MPI_SUCCESS) return;
    failed_ = true;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    throw CollectiveError(context(op, tag, seq) + " failed: " + std::string(text, static_cast<std::size_t>(len)));
  }

  void markFailed() { failed_ = true; }
  bool failed() const { return failed_; }

  // See Note [who did not arrive] in mpi_communicator.h.
  [[noreturn]] void timedOut(const char* op, const std::string& tag, std::uint64_t seq, std::chrono::milliseconds waited) {
    failed_ = true;
    Notice mine{};
    mine.seq = seq;
    std::strncpy(mine.op, op, sizeof(mine.op) - 1);
    std::strncpy(mine.tag, tag.c_str(), sizeof(mine.tag) - 1);
    outbox_.push_back(mine);
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      MPI_Request r;
      MPI_Isend(&outbox_.back(), sizeof(Notice), MPI_BYTE, peer, kNoticeTag, watch_, &r);
      MPI_Request_free(&r);  // point-to-point: freeing an active send is allowed
    }
    const auto grace = std::min<std::chrono::milliseconds>(waited, std::chrono::milliseconds(3000));
    std::map<int, Notice> heard = collectNotices(Clock::now() + grace, seq);
    std::string missing;
    for (int peer = 0; peer < size_; ++peer) {
      if (peer == rank_) continue;
      const auto it = heard.find(peer);
      std::string why;
      if (it == heard.end()) why = "no reply";
      else if (it->second.seq != seq || tag != it->second.tag)
        why = std::string("waiting in ") + it->second.op + " '" + it->second.tag + "' #" + std::to_string(it->second.seq);
      if (!why.empty()) missing += (missing.empty() ? "" : ", ") + std::to_string(peer) + " (" + why + ")";
    }
    if (missing.empty()) missing = "none (all peers are waiting in the same collective)";
    throw CollectiveError(context(op, tag, seq) + " timed out after " + std::to_string(waited.count() / 1000.0).substr(0, 5) +
                          " s; ranks that did not arrive: " + missing);
  }

 private:
  template <typename Starter>
  WorkPtr start(const char* op, const char* tag, DType type, std::size_t parts, Starter starter) {
    if (failed_) throw CollectiveError(context(op, tag, seq_ + 1) + ": communicator already failed");
    if (toMpi(type) == MPI_DATATYPE_NULL)
      throw CollectiveError(context(op, tag, seq_ + 1) + ": " + nameOf(type) + " is not supported by the MPI backend");
    const std::uint64_t seq = ++seq_;
    std::vector<MPI_Request> requests(parts, MPI_REQUEST_NULL);
    for (std::size_t i = 0; i < parts; ++i) check(starter(i, &requests[i]), op, tag, seq);
    return std::make_unique<MpiWork>(*this, std::move(requests), op, tag, seq);
  }

  WorkPtr ringReduceScatter(const void* send, void* recv, std::size_t count, DType type, ReduceOp op, const char* tag) {
    const std::size_t bytes = count * sizeOf(type);
    const int n = toCount(count, "reduceScatter", tag);
    const MPI_Datatype t = toMpi(type);
    if (failed_) throw CollectiveError(context("reduceScatter", tag, seq_ + 1) + ": communicator already failed");
    if (t == MPI_DATATYPE_NULL)
      throw CollectiveError(context("reduceScatter", tag, seq_ + 1) + ": " + nameOf(type) + " is not supported by the MPI backend");
    const MPI_Op o = toMpi(op, type);
    const std::uint64_t seq = ++seq_;
    const int message_tag = kRingTagBase + static_cast<int>(seq % kRingTags);
    struct Ring {
      std::unique_ptr<char[]> scratch;  // not value-initialised: every byte is received before it is read
      char* into[2];  // round k receives into into[k % 2]; the last round (N-2) into recv
      int round = 0;
    };
    auto ring = std::make_shared<Ring>();
    if (size_ > 2) ring->scratch.reset(new char[bytes]);
    ring->into[(size_ - 2) % 2] = static_cast<char*>(recv);
    ring->into[(size_ - 1) % 2] = ring->scratch.get();
    const int right = (rank_ + 1) % size_, left = (rank_ + size_ - 1) % size_;
    const std::string tag_copy = tag;  // the caller's tag need not outlive the rounds
    auto own = [send, bytes, this](int block) { return static_cast<const char*>(send) + static_cast<std::size_t>((block % size_ + size_) % size_) * bytes; };
    auto post = [=](std::vector<MPI_Request>& requests) {
      const int k = ring->round;
      const void* out = k == 0 ? static_cast<const void*>(own(rank_ - 1)) : ring->into[(k - 1) % 2];
      requests.assign(2, MPI_REQUEST_NULL);
      check(MPI_Isend(out, n, t, right, message_tag, comm_, &requests[0]), "reduceScatter", tag_copy, seq);
      check(MPI_Irecv(ring->into[k % 2], n, t, left, message_tag, comm_, &requests[1]), "reduceScatter", tag_copy, seq);
    };
    std::vector<MPI_Request> requests;
    post(requests);
    return std::make_unique<MpiWork>(*this, std::move(requests), "reduceScatter", tag, seq,
                                     [=](std::vector<MPI_Request>& next) {
                                       const int k = ring->round;
                                       check(MPI_Reduce_local(own(rank_ - 2 - k), ring->into[k % 2], n, t, o), "reduceScatter", tag_copy, seq);
                                       if (++ring->round == size_ - 1) return false;
                                       post(next);
                                       return true;
                                     });
  }

  // Receives notices until every peer reported `seq` or the deadline passes; keeps the newest per peer.
  std::map<int, Notice> collectNotices(Clock::time_point deadline, std::uint64_t seq) {
    std::map<int, Notice> heard;
    while (Clock::now() < deadline) {
      int flag = 0;
      MPI_Status status;
      MPI_Iprobe(MPI_ANY_SOURCE, kNoticeTag, watch_, &flag, &status);
      if (!flag) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        continue;
      }
      Notice n{};
      MPI_Recv(&n, sizeof(n), MPI_BYTE, status.MPI_SOURCE, kNoticeTag, watch_, MPI_STATUS_IGNORE);
      n.tag[sizeof(n.tag) - 1] = n.op[sizeof(n.op) - 1] = '\0';
      if (!heard.count(status.MPI_SOURCE) || heard[status.MPI_SOURCE].seq < n.seq) heard[status.MPI_SOURCE] = n;
      int agreeing = 0;
      for (const auto& [peer, notice] : heard) agreeing += notice.seq == seq;
      if (agreeing == size_ - 1) break;
    }
    return heard;
  }

  void drainNotices() {
    int flag = 1;
    while (flag) {
      MPI_Status status;
      MPI_Iprobe(MPI_ANY_SOURCE, kNoticeTag, watch_, &flag, &status);
      if (!flag) break;
      Notice n{};
      MPI_Recv(&n, sizeof(n), MPI_BYTE, status.MPI_SOURCE, kNoticeTag, watch_, MPI_STATUS_IGNORE);
    }
  }

  int toCount(std::size_t n, const char* op, const char* tag) const {
    if (n > static_cast<std::size_t>(INT32_MAX))
      throw CollectiveError(context(op, tag, seq_ + 1) + ": " + std::to_string(n) + " elements exceed MPI's int count; split the buffer");
    return static_cast<int>(n);
  }

  MPI_Comm comm_ = MPI_COMM_NULL, watch_ = MPI_COMM_NULL, node_ = MPI_COMM_NULL;
  MPI_Comm files_ = MPI_COMM_NULL;  // SharedFile's: Note [MPI-IO beside the heartbeat]
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool owns_mpi_ = false, failed_ = false;
  std::uint64_t seq_ = 0;
  std::vector<Notice> outbox_;  // notices stay alive until the process ends
};

// Note [MPI-IO beside the heartbeat]: a SharedFile is opened and written on the caller's helper
// thread while the main thread keeps the heartbeat's all-reduces going on comm_: two threads in
// MPI at once, which needs MPI_THREAD_MULTIPLE (asked for at MPI_Init_thread; where the library
// grants less, openSharedFile says so and returns nullptr). The file's collectives run on files_,
// a duplicate made when the communicator was, so they never meet comm_'s; one SharedFile at a
// time. A rank's pieces go in rounds of at most 1 GiB (one MPI_File_write_all each, every rank
// the same number of rounds): a file view of its byte ranges in file order and a memory type of
// the buffers' addresses. No collective buffering (the hints below, and fcoll individual in the
// constructor) and no data sieving: the pieces are large row slabs.
std::uint64_t shared_file_round_bytes = std::uint64_t{1} << 30;

class MpiSharedFile final : public SharedFile {
 public:
  MpiSharedFile(std::string path, MPI_Comm comm, MPI_File file) : path_(std::move(path)), comm_(comm), file_(file) {}
  // A file left open (an error on the way) stays so: the job is ending, and closing is collective.
  ~MpiSharedFile() override = default;

  void writeAndClose(std::vector<Piece> pieces) override {
    // Note [a write error on one rank]: every MPI call below is collective, so a rank with an error
    // (its pieces overlap, its write failed: its disk full, its quota spent) still takes part in
    // every one, writing nothing more, and reports its first error only once the file is closed:
    // the other ranks return and learn of it where they next meet (runWithHeartbeat agrees on
    // it), instead of waiting in MPI_File_sync for a rank that has left.
    std::string first_error;
    std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.offset < b.offset; });
    for (std::size_t i = 1; i < pieces.size() && first_error.empty(); ++i)
      if (pieces[i - 1].offset + pieces[i - 1].bytes > pieces[i].offset)
        first_error = path_ + ": this rank's pieces overlap at byte " + std::to_string(pieces[i].offset);
    if (!first_error.empty()) pieces.clear();
    const std::uint64_t kRound = shared_file_round_bytes;  // per rank and call (int counts)
    std::vector<std::vector<Block>> rounds(1);
    std::uint64_t in_round = 0;
    for (const Piece& p : pieces)
      for (std::uint64_t done = 0; done < p.bytes;) {
        if (in_round == kRound) {
          rounds.emplace_back();
          in_round = 0;
        }
        const std::uint64_t n = std::min(kRound - in_round, p.bytes - done);
        rounds.back().push_back({p.offset + done, static_cast<const char*>(p.data) + done, static_cast<int>(n)});
        in_round += n;
        done += n;
      }
    int count = static_cast<int>(rounds.size());
    check(MPI_Allreduce(MPI_IN_PLACE, &count, 1, MPI_INT, MPI_MAX, comm_), "agreeing on the rounds");
    auto note = [&first_error, this](int rc, const char* what) {
      if (first_error.empty() && rc != MPI_SUCCESS) first_error = describe(rc, what);
    };
    // (Open MPI 4.1's ompio reports a failed write(2), ENOSPC or EFBIG, on stderr only and returns
    // success: the rows' read-back finds it, writeRows.)
    for (int r = 0; r < count; ++r)
      note(writeRound(r < static_cast<int>(rounds.size()) && first_error.empty() ? rounds[r] : std::vector<Block>{}),
           "writing (disk full?)");
    note(MPI_File_sync(file_), "flushing to storage");
    note(MPI_File_close(&file_), "closing");
    if (!first_error.empty()) throw FileError(first_error);
  }

 private:
  struct Block {
    std::uint64_t offset;
    const char* data;
    int bytes;
  };

  // Collective: one MPI_File_write_all of `blocks` (in file order; none is fine); its MPI status.
  int writeRound(const std::vector<Block>& blocks) {
    const int n = static_cast<int>(blocks.size());
    std::vector<int> lengths;
    std::vector<MPI_Aint> at_file, at_memory;
    for (const Block& b : blocks) {
      lengths.push_back(b.bytes);
      at_file.push_back(static_cast<MPI_Aint>(b.offset));
      MPI_Aint address = 0;
      MPI_Get_address(b.data, &address);
      at_memory.push_back(address);
    }
    MPI_Datatype in_file = MPI_BYTE, in_memory = MPI_BYTE;  // an empty round views bytes and writes none
    if (n > 0) {
      MPI_Type_create_hindexed(n, lengths.data(), at_file.data(), MPI_BYTE, &in_file);
      MPI_Type_create_hindexed(n, lengths.data(), at_memory.data(), MPI_BYTE, &in_memory);
      MPI_Type_commit(&in_file);
      MPI_Type_commit(&in_memory);
    }
    // Both calls are collective: the write is called even where the view failed (writing nothing).
    const int viewed = MPI_File_set_view(file_, 0, MPI_BYTE, in_file, "native", MPI_INFO_NULL);
    const bool any = n > 0 && viewed == MPI_SUCCESS;
    const int rc = MPI_File_write_all(file_, any ? MPI_BOTTOM : nullptr, any ? 1 : 0, in_memory, MPI_STATUS_IGNORE);
    if (n > 0) {
      MPI_Type_free(&in_file);
      MPI_Type_free(&in_memory);
    }
    return viewed != MPI_SUCCESS ? viewed : rc;
  }

  std::string describe(int rc, const char* what) const {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return path_ + ": MPI-IO " + what + " failed: " + std::string(text, static_cast<std::size_t>(len));
  }

  void check(int rc, const char* what) const {
    if (rc != MPI_SUCCESS) throw FileError(describe(rc, what));
  }

  std::string path_;
  MPI_Comm comm_;  // the communicator's files_
  MPI_File file_;
};

std::unique_ptr<SharedFile> MpiCommunicator::openSharedFile(const std::string& path, std::string* why_not) {
  int level = MPI_THREAD_SINGLE;
  MPI_Query_thread(&level);
  if (level < MPI_THREAD_MULTIPLE) {  // the same on every rank: one library, one request
    *why_not = "this MPI library grants thread level " + std::to_string(level) + ", not MPI_THREAD_MULTIPLE (" +
               std::to_string(MPI_THREAD_MULTIPLE) + "), which MPI-IO beside the heartbeat needs";
    return nullptr;
  }
  MPI_Info hints = MPI_INFO_NULL;
  MPI_Info_create(&hints);
  MPI_Info_set(hints, "collective_buffering", "false");  // the standard's name
  MPI_Info_set(hints, "romio_cb_write", "disable");      // ROMIO's (MPICH, or Open MPI's romio component)
  MPI_Info_set(hints, "romio_ds_write", "disable");      // no read-modify-write of the gaps between slabs
  MPI_File file = MPI_FILE_NULL;
  const int rc = MPI_File_open(files_, path.c_str(), MPI_MODE_WRONLY, hints, &file);
  MPI_Info_free(&hints);
  std::int32_t opened[2] = {rc == MPI_SUCCESS ? 1 : 0, rc == MPI_SUCCESS ? size_ : rank_};  // all opened; first that did not
  const int agreed = MPI_Allreduce(MPI_IN_PLACE, opened, 2, MPI_INT32_T, MPI_MIN, files_);
  if (agreed != MPI_SUCCESS) {
    *why_not = "MPI-IO: the ranks could not agree whether " + path + " opened";
    return nullptr;
  }
  if (opened[0]) return std::make_unique<MpiSharedFile>(path, files_, file);
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    *why_not = "MPI-IO cannot open " + path + " on rank " + std::to_string(rank_) + ": " + std::string(text, static_cast<std::size_t>(len));
  } else {
    *why_not = "MPI-IO cannot open " + path + " on rank " + std::to_string(opened[1]);
  }
  // A handle opened here while another rank's open failed stays open (closing is collective); the
  // next open may then fail too, and every checkpoint takes the part-file way. Not seen in practice:
  // MPI_File_open is itself collective.
  return nullptr;
}

MpiWork::~MpiWork() {
  // A non-blocking collective cannot be cancelled; finish it unless the communicator has failed.
  if (done_ || comm_.failed()) return;
  bool flag = false;
  const auto deadline = Clock::now() + comm_.timeout();
  while (!flag && Clock::now() < deadline) {
    try {
      flag = test();
    } catch (const std::exception&) {
      break;
    }
    if (!flag) std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  if (!flag) comm_.markFailed();
}

bool MpiWork::test() {
  while (!done_) {
    int flag = 0;
    comm_.check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &flag, MPI_STATUSES_IGNORE), op_, tag_, seq_);
    if (!flag) return false;
    done_ = !next_ || !next_(requests_);  // Note [ring reduce-scatter]: the next round, if any
  }
  return true;
}

void MpiWork::wait(std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  const auto deadline = start + timeout;
  // MPI progresses only inside MPI calls, so poll without sleeping while the collective is
  // plausibly busy (yielding the core to other threads); after a second, poll every millisecond.
  for (std::uint64_t polls = 0; !test(); ++polls) {
    const auto now = Clock::now();
    if (now >= deadline)
      comm_.timedOut(op_, tag_, seq_, std::chrono::duration_cast<std::chrono::milliseconds>(now - start));
    if (now - start > std::chrono::seconds(1)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    else if (polls > 1000) std::this_thread::yield();
  }
}

}  // namespace

void setSharedFileRoundBytesForTesting(std::uint64_t bytes) { shared_file_round_bytes = std::max<std::uint64_t>(1, bytes); }

std::unique_ptr<Communicator> makeMpiCommunicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace graft
