// libgraft_spm.so: the C interface of spm_shim.h over libsentencepiece. The only file of graft that
// includes sentencepiece's headers (see spm_shim.h for why). Every function catches everything: no
// exception may leave through the C interface.
#include "tokenizer/spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

struct graft_spm {
  sentencepiece::SentencePieceProcessor processor;
};

namespace {

// Copies `message` into `error` as one NUL-terminated line, cut to fit.
void setError(char* error, std::size_t error_size, const std::string& message) noexcept {
  if (!error || error_size == 0) return;
  const std::size_t n = message.size() < error_size - 1 ? message.size() : error_size - 1;
  for (std::size_t i = 0; i < n; ++i) error[i] = message[i] == '\n' || message[i] == '\r' ? ' ' : message[i];
  error[n] = '\0';
}

void setError(char* error, std::size_t error_size, const char* what, const std::exception* e) noexcept {
  try {
    setError(error, error_size, std::string(what) + (e ? std::string(": ") + e->what() : std::string()));
  } catch (...) {
    setError(error, error_size, std::string());  // out of memory: at least an empty, terminated line
  }
}

bool inRange(const graft_spm* spm, int id) noexcept {
  try {
    return spm && id >= 0 && id < spm->processor.GetPieceSize();
  } catch (...) {
    return false;
  }
}

}  // namespace

extern "C" {

graft_spm* graft_spm_load(const char* data, size_t size, char* error, size_t error_size) {
  try {
    auto spm = std::make_unique<graft_spm>();
    const auto status = spm->processor.LoadFromSerializedProto({data, size});
    if (!status.ok()) {
      setError(error, error_size, status.ToString());
      return nullptr;
    }
    setError(error, error_size, std::string());
    return spm.release();
  } catch (const std::exception& e) {
    setError(error, error_size, "sentencepiece failed", &e);
  } catch (...) {
    setError(error, error_size, "sentencepiece failed", nullptr);
  }
  return nullptr;
}

void graft_spm_free(graft_spm* spm) {
  try {
    delete spm;
  } catch (...) {
  }
}

int graft_spm_piece_size(const graft_spm* spm) {
  try {
    return spm->processor.GetPieceSize();
  } catch (...) {
    return 0;
  }
}

int graft_spm_bos_id(const graft_spm* spm) {
  try {
    return spm->processor.bos_id();
  } catch (...) {
    return -1;
  }
}

int graft_spm_eos_id(const graft_spm* spm) {
  try {
    return spm->processor.eos_id();
  } catch (...) {
    return -1;
  }
}

int graft_spm_unk_id(const graft_spm* spm) {
  try {
    return spm->processor.unk_id();
  } catch (...) {
    return -1;
  }
}

int graft_spm_piece_flags(const graft_spm* spm, int id) {
  if (!inRange(spm, id)) return 0;
  try {
    const auto& p = spm->processor;
    return (p.IsControl(id) ? GRAFT_SPM_CONTROL : 0) | (p.IsUnknown(id) ? GRAFT_SPM_UNKNOWN : 0) |
           (p.IsByte(id) ? GRAFT_SPM_BYTE : 0);
  } catch (...) {
    return 0;
  }
}

const char* graft_spm_id_to_piece(const graft_spm* spm, int id, size_t* size) {
  *size = 0;
  if (!inRange(spm, id)) return nullptr;
  try {
    const std::string& piece = spm->processor.IdToPiece(id);  // lives in the model, as long as spm
    *size = piece.size();
    return piece.data();
  } catch (...) {
    return nullptr;
  }
}

int graft_spm_encode(const graft_spm* spm, const char* text, size_t text_size, int** ids, size_t* count,
                     char* error, size_t error_size) {
  *ids = nullptr;
  *count = 0;
  try {
    std::vector<int> pieces;
    const auto status = spm->processor.Encode({text, text_size}, &pieces);
    if (!status.ok()) {
      setError(error, error_size, status.ToString());
      return -1;
    }
    // malloc(0) may return NULL: allocate at least one int so that NULL only ever means failure.
    int* out = static_cast<int*>(std::malloc((pieces.empty() ? 1 : pieces.size()) * sizeof(int)));
    if (!out) throw std::bad_alloc();
    if (!pieces.empty()) std::memcpy(out, pieces.data(), pieces.size() * sizeof(int));
    *ids = out;
    *count = pieces.size();
    return 0;
  } catch (const std::exception& e) {
    setError(error, error_size, "sentencepiece failed", &e);
  } catch (...) {
    setError(error, error_size, "sentencepiece failed", nullptr);
  }
  return -1;
}

int graft_spm_decode(const graft_spm* spm, const int* ids, size_t count, char** text, size_t* text_size,
                     char* error, size_t error_size) {
  *text = nullptr;
  *text_size = 0;
  try {
    std::string decoded;
    const auto status = spm->processor.Decode(std::vector<int>(ids, ids + count), &decoded);
    if (!status.ok()) {
      setError(error, error_size, status.ToString());
      return -1;
    }
    char* out = static_cast<char*>(std::malloc(decoded.size() + 1));
    if (!out) throw std::bad_alloc();
    std::memcpy(out, decoded.data(), decoded.size());
    out[decoded.size()] = '\0';
    *text = out;
    *text_size = decoded.size();
    return 0;
  } catch (const std::exception& e) {
    setError(error, error_size, "sentencepiece failed", &e);
  } catch (...) {
    setError(error, error_size, "sentencepiece failed", nullptr);
  }
  return -1;
}

void graft_spm_free_buffer(void* buffer) { std::free(buffer); }

}  // extern "C"
