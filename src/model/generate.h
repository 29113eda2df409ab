// Autoregressive generation with llama2.c run.c's exact rules: BOS at position 0, prompt tokens
// forced, then argmax (temperature 0) or softmax(logits / T) + top-p with run.c's xorshift RNG;
// stops after `steps` positions or when BOS is produced.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "tokenizer/tokenizer.h"
#include "model/transformer.h"

namespace graft {

struct SampleOptions {
  int steps = 256;          // 0 or > seq_len means seq_len
  float temperature = 1.0f;  // 0: greedy
  float top_p = 0.9f;        // <= 0 or >= 1: plain multinomial
  std::uint64_t seed = 0;    // 0: time-based, like run.c
};

// Calls `emit` with each decoded piece, in order (prompt pieces included, as run.c prints them).
// Returns the number of tokens produced after the prompt.
int generate(Transformer& model, const Tokenizer& tokenizer, const std::string& prompt, const SampleOptions& options,
             const std::function<void(const std::string&)>& emit);

}  // namespace graft
