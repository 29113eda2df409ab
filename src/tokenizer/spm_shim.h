// A C interface over libsentencepiece, implemented by spm_shim.cc. Debian's libsentencepiece embeds
// and exports its own protobuf 3.14 runtime, which cannot share a process's global symbol scope with
// the libprotobuf 3.21 that LibTorch loads (start-up crash or a version abort). So graft builds
// spm_shim.cc into its own libgraft_spm.so, which sentencepiece_tokenizer.cc dlopen()s with
// RTLD_LOCAL | RTLD_DEEPBIND; builds without torch (the fuzz targets) compile spm_shim.cc in and
// define GRAFT_SPM_DIRECT instead. Only plain C types cross this interface: no exceptions, no
// std::string, and memory the shim allocates is released by the shim.
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// The library is built with hidden visibility: only these functions are exported.
#define GRAFT_SPM_API __attribute__((visibility("default")))

typedef struct graft_spm graft_spm;

// Piece flags of graft_spm_piece_flags.
enum { GRAFT_SPM_CONTROL = 1, GRAFT_SPM_UNKNOWN = 2, GRAFT_SPM_BYTE = 4 };

// A processor for the serialized model `data`, or NULL with a one-line reason in `error` (always
// NUL-terminated when error_size > 0).
GRAFT_SPM_API graft_spm* graft_spm_load(const char* data, size_t size, char* error, size_t error_size);
GRAFT_SPM_API void graft_spm_free(graft_spm* spm);

GRAFT_SPM_API int graft_spm_piece_size(const graft_spm* spm);
GRAFT_SPM_API int graft_spm_bos_id(const graft_spm* spm);  // -1 when the model has none
GRAFT_SPM_API int graft_spm_eos_id(const graft_spm* spm);
GRAFT_SPM_API int graft_spm_unk_id(const graft_spm* spm);

// GRAFT_SPM_* bits of piece `id`; 0 for an id out of range.
GRAFT_SPM_API int graft_spm_piece_flags(const graft_spm* spm, int id);
// The piece of `id` (not NUL-terminated; *size bytes), owned by `spm`; NULL for an id out of range.
GRAFT_SPM_API const char* graft_spm_id_to_piece(const graft_spm* spm, int id, size_t* size);

// Encodes `text` into *ids (*count of them, release with graft_spm_free_buffer). Returns 0, or -1 with a
// one-line reason in `error`.
GRAFT_SPM_API int graft_spm_encode(const graft_spm* spm, const char* text, size_t text_size, int** ids, size_t* count,
                     char* error, size_t error_size);
// Decodes `count` ids into *text (*text_size bytes, release with graft_spm_free_buffer). Returns 0, or -1
// with a one-line reason in `error`.
GRAFT_SPM_API int graft_spm_decode(const graft_spm* spm, const int* ids, size_t count, char** text, size_t* text_size,
                     char* error, size_t error_size);
GRAFT_SPM_API void graft_spm_free_buffer(void* buffer);

#ifdef __cplusplus
}
#endif
