// SentencePiece .model files, encoded by libsentencepiece itself (its normalizer and BPE / unigram
// models are not worth re-implementing); decoding one piece at a time follows its decoder.
//
// libsentencepiece is reached through the C interface of spm_shim.h, in libgraft_spm.so, which is
// dlopen()ed on first use with its own symbol scope: Debian's libsentencepiece carries a protobuf
// runtime that must not meet LibTorch's (see spm_shim.h). The library is looked for at
//   $GRAFT_SPM_LIBRARY                       when set (and nowhere else), else
//   GRAFT_SPM_SHIM                           the path CMake compiles in (the build tree), then
//   libgraft_spm.so beside the executable    (/proc/self/exe), for a moved build.
// With GRAFT_SPM_DIRECT defined, spm_shim.cc is compiled into the same binary and called directly
// (the torch-free fuzz build, where ASan forbids RTLD_DEEPBIND).
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/spm_shim.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_internal.h"
#include "util/error.h"

#ifndef GRAFT_SPM_DIRECT
#include <dlfcn.h>
#include <unistd.h>
// AddressSanitizer refuses RTLD_DEEPBIND.
#if defined(__SANITIZE_ADDRESS__)
#define GRAFT_SPM_NO_DEEPBIND
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GRAFT_SPM_NO_DEEPBIND
#endif
#endif
#endif

namespace graft {
namespace {

const std::string kSpaceSymbol = "\xE2\x96\x81";     // U+2581, SentencePiece's stand-in for a space
const std::string kUnknownSurface = " \xE2\x81\x87 ";  // " ⁇ ", what SentencePiece prints for <unk>

// The shim's functions.
struct SpmApi {
  decltype(&graft_spm_load) load = nullptr;
  decltype(&graft_spm_free) free = nullptr;
  decltype(&graft_spm_piece_size) piece_size = nullptr;
  decltype(&graft_spm_bos_id) bos_id = nullptr;
  decltype(&graft_spm_eos_id) eos_id = nullptr;
  decltype(&graft_spm_piece_flags) piece_flags = nullptr;
  decltype(&graft_spm_id_to_piece) id_to_piece = nullptr;
  decltype(&graft_spm_encode) encode = nullptr;
  decltype(&graft_spm_decode) decode = nullptr;
  decltype(&graft_spm_free_buffer) free_buffer = nullptr;
};

#ifdef GRAFT_SPM_DIRECT

const SpmApi& spmApi(const std::string&) {
  static const SpmApi api{&graft_spm_load,     &graft_spm_free,        &graft_spm_piece_size, &graft_spm_bos_id,
                          &graft_spm_eos_id,   &graft_spm_piece_flags, &graft_spm_id_to_piece, &graft_spm_encode,
                          &graft_spm_decode,   &graft_spm_free_buffer};
  return api;
}

#else

constexpr const char* kShimName = "libgraft_spm.so";

// The folder of the running executable, or "" when /proc/self/exe cannot be read.
std::string executableDir() {
  std::vector<char> buf(4096);
  const ssize_t n = ::readlink("/proc/self/exe", buf.data(), buf.size());
  if (n <= 0 || static_cast<std::size_t>(n) >= buf.size()) return "";
  const std::string exe(buf.data(), static_cast<std::size_t>(n));
  const auto slash = exe.rfind('/');
  return slash == std::string::npos ? "" : exe.substr(0, slash);
}

template <typename F>
bool resolve(void* handle, const char* symbol, F& fn, std::string& error) {
  ::dlerror();
  fn = reinterpret_cast<F>(::dlsym(handle, symbol));
  if (fn) return true;
  const char* why = ::dlerror();
  error = std::string(symbol) + " missing (" + (why ? why : "null") + ")";
  return false;
}

// Opens the shim at `path` into `api`; on failure returns false with the reason in `error`.
bool openShim(const std::string& path, SpmApi& api, std::string& error) {
  // RTLD_LOCAL | RTLD_DEEPBIND: the shim and libsentencepiece (with its protobuf) resolve their
  // symbols among themselves first and add nothing to the global scope. Without RTLD_DEEPBIND (an
  // ASan build) a process that also loads torch's libprotobuf meets the clash of spm_shim.h.
  int flags = RTLD_NOW | RTLD_LOCAL;
#ifndef GRAFT_SPM_NO_DEEPBIND
  flags |= RTLD_DEEPBIND;
#endif
  ::dlerror();
  void* handle = ::dlopen(path.c_str(), flags);
  if (!handle) {
    const char* why = ::dlerror();
    error = why ? why : "dlopen failed";
    return false;
  }
  // The handle is never closed: tokenizers may live until exit.
  return resolve(handle, "graft_spm_load", api.load, error) && resolve(handle, "graft_spm_free", api.free, error) &&
         resolve(handle, "graft_spm_piece_size", api.piece_size, error) &&
         resolve(handle, "graft_spm_bos_id", api.bos_id, error) &&
         resolve(handle, "graft_spm_eos_id", api.eos_id, error) &&
         resolve(handle, "graft_spm_piece_flags", api.piece_flags, error) &&
         resolve(handle, "graft_spm_id_to_piece", api.id_to_piece, error) &&
         resolve(handle, "graft_spm_encode", api.encode, error) &&
         resolve(handle, "graft_spm_decode", api.decode, error) &&
         resolve(handle, "graft_spm_free_buffer", api.free_buffer, error);
}

struct LoadedShim {
  SpmApi api;
  std::string failure;  // "" when api is usable, else every path tried with its reason
};

LoadedShim loadShim() {
  std::vector<std::string> candidates;
  const char* env = std::getenv("GRAFT_SPM_LIBRARY");
  if (env && *env) {
    candidates.push_back(env);
  } else {
#ifdef GRAFT_SPM_SHIM
    candidates.push_back(GRAFT_SPM_SHIM);
#endif
    const std::string dir = executableDir();
    if (!dir.empty() && (candidates.empty() || candidates[0] != dir + "/" + kShimName))
      candidates.push_back(dir + "/" + kShimName);
    if (candidates.empty()) candidates.push_back(kShimName);  // the dynamic loader's search path
  }
  LoadedShim shim;
  for (const auto& path : candidates) {
    std::string error;
    if (openShim(path, shim.api, error)) {
      shim.failure.clear();
      return shim;
    }
    shim.failure += (shim.failure.empty() ? "tried " : "; tried ") + path + ": " + error;
  }
  shim.api = SpmApi{};
  return shim;
}

// The shim's functions, loaded on first use (thread-safe); an Error naming `name` when the shim
// cannot be loaded.
const SpmApi& spmApi(const std::string& name) {
  static const LoadedShim shim = loadShim();
  if (!shim.failure.empty())
    throw Error(name + ": SentencePiece .model support needs " + kShimName + " (" + shim.failure +
                "; GRAFT_SPM_LIBRARY may name it)");
  return shim.api;
}

#endif  // GRAFT_SPM_DIRECT

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string_view bytes, const std::string& name) : api_(spmApi(name)), name_(name) {
    char error[512];
    spm_ = api_.load(bytes.data(), bytes.size(), error, sizeof error);
    if (!spm_) throw InputError(name + ": not a SentencePiece model (" + error + ")");
    try {
      init();
    } catch (...) {
      api_.free(spm_);
      throw;
    }
  }
  ~SentencePieceTokenizer() override { api_.free(spm_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  int vocabSize() const override { return vocab_size_; }
  int bos() const override { return bos_; }
  int eos() const override { return eos_; }

  std::vector<int> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    int* pieces = nullptr;
    std::size_t count = 0;
    char error[512];
    if (api_.encode(spm_, text.data(), text.size(), &pieces, &count, error, sizeof error) != 0)
      throw Error(name_ + ": SentencePiece cannot encode the text (" + error + ")");
    std::vector<int> ids;
    try {
      ids.reserve(count + 2);
      if (add_bos) appendSpecial(ids, bos(), "BOS", name_);
      ids.insert(ids.end(), pieces, pieces + count);
      if (add_eos) appendSpecial(ids, eos(), "EOS", name_);
    } catch (...) {
      api_.free_buffer(pieces);
      throw;
    }
    api_.free_buffer(pieces);
    return ids;
  }

  std::string decode(int prev, int token) const override {
    if (token < 0 || token >= vocabSize() || has(token, GRAFT_SPM_CONTROL)) return "";
    if (has(token, GRAFT_SPM_UNKNOWN)) return kUnknownSurface;
    const std::string_view piece = pieceOf(token);
    if (has(token, GRAFT_SPM_BYTE)) {
      const int byte = byteFallbackValue(piece);
      return byte < 0 ? "" : std::string(1, static_cast<char>(byte));
    }
    std::size_t from = 0;
    const bool at_start = prev < 0 || prev >= vocabSize() || has(prev, GRAFT_SPM_CONTROL);
    if (strip_first_space_ && at_start && piece.compare(0, kSpaceSymbol.size(), kSpaceSymbol) == 0)
      from = kSpaceSymbol.size();
    std::string out;
    for (std::size_t hit; (hit = piece.find(kSpaceSymbol, from)) != std::string_view::npos; from = hit + kSpaceSymbol.size())
      out.append(piece.substr(from, hit - from)).append(" ");
    return out.append(piece.substr(from));
  }

  std::string describe() const override {
    return "SentencePiece " + name_ + " (vocab " + std::to_string(vocabSize()) + ")";
  }

 private:
  // Sizes, special ids and piece flags, which never change, asked once.
  void init() {
    vocab_size_ = api_.piece_size(spm_);
    bos_ = api_.bos_id(spm_);
    eos_ = api_.eos_id(spm_);
    flags_.resize(static_cast<std::size_t>(vocab_size_ > 0 ? vocab_size_ : 0));
    for (int id = 0; id < vocab_size_; ++id) flags_[static_cast<std::size_t>(id)] = api_.piece_flags(spm_, id);
    // The decoder drops the leading space of the first piece when the normalizer added a dummy prefix
    // or removes extra white space; which of those the model does, only its decoder can say here.
    for (int id = 0; id < vocab_size_; ++id) {
      const std::string_view piece = pieceOf(id);
      if (isText(id) && piece.size() > kSpaceSymbol.size() && piece.compare(0, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
        char* decoded = nullptr;
        std::size_t size = 0;
        char error[512];
        const bool ok = api_.decode(spm_, &id, 1, &decoded, &size, error, sizeof error) == 0;
        strip_first_space_ = ok && (size == 0 || decoded[0] != ' ');
        api_.free_buffer(decoded);
        break;
      }
    }
  }

  // `id` must be in [0, vocabSize()).
  bool has(int id, int flag) const { return (flags_[static_cast<std::size_t>(id)] & flag) != 0; }
  bool isText(int id) const { return !has(id, GRAFT_SPM_CONTROL | GRAFT_SPM_UNKNOWN | GRAFT_SPM_BYTE); }
  std::string_view pieceOf(int id) const {
    std::size_t size = 0;
    const char* data = api_.id_to_piece(spm_, id, &size);
    return data ? std::string_view(data, size) : std::string_view();
  }

  const SpmApi& api_;
  std::string name_;
  graft_spm* spm_ = nullptr;
  int vocab_size_ = 0, bos_ = -1, eos_ = -1;
  std::vector<int> flags_;  // GRAFT_SPM_* bits per id
  bool strip_first_space_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> sentencePieceTokenizerFromBytes(std::string_view bytes, const std::string& name) {
  return std::make_unique<SentencePieceTokenizer>(bytes, name);
}

}  // namespace graft
