#include "model/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <ctime>
#include <numeric>
#include <vector>

namespace graft {
namespace {

// run.c's xorshift* generator, so sampled output matches run.c for the same seed.
class XorShift {
 public:
  explicit XorShift(std::uint64_t seed) : state_(seed) {}
  float uniform() { return static_cast<float>(next() >> 8) / 16777216.0f; }

 private:
  std::uint32_t next() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<std::uint32_t>((state_ * 0x2545F4914F6CDD1Dull) >> 32);
  }
  std::uint64_t state_;
};

int sampleMultinomial(const std::vector<float>& probs, float coin) {
  float cdf = 0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    cdf += probs[i];
    if (coin < cdf) return static_cast<int>(i);
  }
  return static_cast<int>(probs.size()) - 1;
}

int sampleTopP(const std::vector<float>& probs, float top_p, float coin) {
  const float cutoff = (1.0f - top_p) / static_cast<float>(probs.size() - 1);
  std::vector<int> order;
  for (std::size_t i = 0; i < probs.size(); ++i)
    if (probs[i] >= cutoff) order.push_back(static_cast<int>(i));
  std::sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  float cumulative = 0;
  std::size_t last = order.size() - 1;
  for (std::size_t i = 0; i < order.size(); ++i) {
    cumulative += probs[order[i]];
    if (cumulative > top_p) {
      last = i;
      break;
    }
  }
  const float r = coin * cumulative;
  float cdf = 0;
  for (std::size_t i = 0; i <= last; ++i) {
    cdf += probs[order[i]];
    if (r < cdf) return order[i];
  }
  return order[last];
}

}  // namespace

int generate(Transformer& model, const Tokenizer& tokenizer, const std::string& prompt, const SampleOptions& options,
             const std::function<void(const std::string&)>& emit) {
  torch::NoGradGuard no_grad;
  model->eval();
  const int seq_len = model->config().seq_len;
  const int steps = (options.steps <= 0 || options.steps > seq_len) ? seq_len : options.steps;
  const std::vector<int> prompt_ids = tokenizer.encode(prompt, /*bos=*/true, /*eos=*/false);
  XorShift rng(options.seed ? options.seed : static_cast<std::uint64_t>(std::time(nullptr)));

  std::vector<KVSlot> cache;  // keys and values of the positions fed so far, as run.c keeps them
  int token = prompt_ids[0];
  int produced = 0;
  for (int pos = 0; pos < steps; ++pos) {
    auto logits = model->forwardStep(token, pos, cache);
    int next;
    if (pos + 1 < static_cast<int>(prompt_ids.size())) {
      next = prompt_ids[pos + 1];
    } else {
      if (options.temperature == 0.0f) {
        next = static_cast<int>(logits.argmax().item<std::int64_t>());
      } else {
        auto probs_t = torch::softmax(logits / options.temperature, -1).cpu().contiguous();
        std::vector<float> probs(probs_t.data_ptr<float>(), probs_t.data_ptr<float>() + probs_t.numel());
        const float coin = rng.uniform();
        next = (options.top_p <= 0 || options.top_p >= 1) ? sampleMultinomial(probs, coin)
                                                          : sampleTopP(probs, options.top_p, coin);
      }
      ++produced;
    }
    if (next == tokenizer.bos() || next == tokenizer.eos()) break;  // run.c stops at BOS; HF models end with EOS
    // run.c drops lone non-printable bytes; byte-level BPE pieces (GPT-2) carry parts of UTF-8
    // characters, so they are passed through whole.
    const std::string piece = tokenizer.decode(token, next);
    emit(tokenizer.addsBos() ? Tokenizer::printable(piece) : piece);
    token = next;
  }
  return produced;
}

}  // namespace graft
