// Helpers shared by the tokenizer implementations (tokenizer.cc, bpe_tokenizer.cc,
// sentencepiece_tokenizer.cc); not part of the public interface.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace graft {

// The byte a "<0xHH>" byte-fallback piece stands for, or -1 when `piece` is not one.
int byteFallbackValue(std::string_view piece);

// `piece` in quotes for an error message, non-printable bytes as \xHH and long pieces cut, so that a
// hostile vocabulary cannot break the one-line error.
std::string quotedPiece(std::string_view piece);

// Appends a BOS or EOS id; `id` < 0 means the tokenizer `name` has none, which is an InputError.
void appendSpecial(std::vector<int>& ids, int id, const char* what, const std::string& name);

}  // namespace graft
