#include "train/metrics.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "model/block_reuse.h"
#include "monitor/run_history.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace {

// A "Key:  N kB" line of /proc/self/status in bytes (0 where unknown).
std::int64_t statusBytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(key.size())) * 1024;
  return 0;
}

// VmHWM: the most this process has held in RAM.
std::int64_t peakResidentBytes() { return statusBytes("VmHWM:"); }

// JSON has no NaN or Infinity: non-finite values are written as null.
std::string jsonNumber(double value, int digits) {
  if (!std::isfinite(value)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
  return buf;
}

}  // namespace

Metrics::Metrics(std::string run_dir, std::int64_t total_steps, std::int64_t log_every, bool classify, bool tensorboard,
                 int rank, Logger log)
    : run_dir_(std::move(run_dir)), path_(run_dir_ + "/metrics.jsonl"), total_steps_(total_steps), log_every_(log_every),
      classify_(classify), tensorboard_(tensorboard), rank_(rank), log_(std::move(log)) {}

Metrics::~Metrics() = default;

void Metrics::begin(std::int64_t start, const std::string& config_text) {
  if (rank_ != 0) return;
  truncateAfter(start);
  // TensorBoard is for watching: a failure to write it (a full disk, a damaged old file) is said
  // once and turns it off, and the run goes on (metrics.jsonl still has every step).
  const std::string dir = run_dir_ + "/tensorboard";
  try {
    truncateEventFiles(dir, start);  // also with train.tensorboard off, so that a later start finds no stale steps
    if (!tensorboard_) return;
    events_ = std::make_unique<EventWriter>(dir);
    // Markdown: the INI text as a code block (four spaces before each line).
    std::string markdown, line;
    std::istringstream in(config_text);
    while (std::getline(in, line)) markdown += "    " + line + "\n";
    events_->text(start, unixTime(), "config", markdown);
  } catch (const std::exception& e) {
    tensorboardFailed(e);
  }
}

void Metrics::tensorboardFailed(const std::exception& e) {
  events_.reset();
  log_.info(std::string("tensorboard: ") + e.what() + "; no more event files this run (metrics.jsonl goes on)");
}

void Metrics::step(const StepReport& r) {
  if (rank_ != 0) return;
  const bool has_val = !std::isnan(r.val_loss);
  const double now = unixTime();
  char phases[300];
  const StepPhases& p = r.phases;
  std::snprintf(phases, sizeof(phases),
                ", \"step_s\": %.6f, \"phase_s\": {\"data\": %.6f, \"forward\": %.6f, \"backward\": %.6f, "
                "\"communication\": %.6f, \"optimizer\": %.6f}",
                p.total(), p.data, p.forward, p.backward, p.communication, p.optimizer);
  char json[1000];
  std::snprintf(json, sizeof(json),
                "{\"step\": %lld, \"loss\": %s, \"lr\": %.9g, \"grad_norm\": %s, \"tokens\": %lld, "
                "\"tokens_per_s\": %.1f, \"elapsed_s\": %.3f, \"time\": %.3f, \"skipped\": %d, \"skipped_total\": %lld%s%s}",
                static_cast<long long>(r.step), jsonNumber(r.loss, 17).c_str(), r.lr, jsonNumber(r.grad_norm, 9).c_str(),
                static_cast<long long>(r.tokens_seen), r.tokens_per_s, r.elapsed_s, now, r.applied ? 0 : 1,
                static_cast<long long>(r.skipped_total),
                has_val ? (", \"val_loss\": " + jsonNumber(r.val_loss, 9) +
                           (classify_ ? ", \"val_accuracy\": " + jsonNumber(r.val_accuracy, 6) : std::string())).c_str()
                        : "",
                phases);
  append(json);
  if (events_) {
    std::vector<std::pair<std::string, float>> scalars = {
        {"train/loss", static_cast<float>(r.loss)},
        {"train/lr", static_cast<float>(r.lr)},
        {"train/grad_norm", static_cast<float>(r.grad_norm)},
        {"train/tokens_per_s", static_cast<float>(r.tokens_per_s)},
        {"train/skipped_steps", static_cast<float>(r.skipped_total)}};
    if (has_val) scalars.emplace_back("val/loss", static_cast<float>(r.val_loss));
    if (has_val && classify_) scalars.emplace_back("val/accuracy", static_cast<float>(r.val_accuracy));
    try {
      events_->scalars(r.step, now, scalars);
    } catch (const std::exception& e) {
      tensorboardFailed(e);
    }
  }
  if (r.step % log_every_ != 0 && r.step != total_steps_ && !has_val) return;
  const double eta = r.elapsed_s / static_cast<double>(r.step - r.start) * static_cast<double>(total_steps_ - r.step);
  char line[256];
  std::snprintf(line, sizeof(line), "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s",
                static_cast<long long>(r.step), static_cast<long long>(total_steps_), r.loss, r.lr, r.tokens_per_s,
                formatDuration(eta).c_str(),
                has_val ? (" | val loss " + std::to_string(r.val_loss) +
                           (classify_ ? " | val accuracy " + std::to_string(r.val_accuracy).substr(0, 6) : std::string())).c_str()
                        : "");
  log_.main(line);
}

void Metrics::truncateAfter(std::int64_t step) {
  if (!fileExists(path_)) return;
  const std::string text = readFile(path_);
  std::string kept;
  std::size_t at = 0, damaged = 0;
  for (std::size_t nl; (nl = text.find('\n', at)) != std::string::npos; at = nl + 1) {
    const std::string line = text.substr(at, nl - at);
    if (line.empty()) continue;
    try {
      if (parseJson(line, path_).at("step", path_).asInt(path_) <= step) kept += line + "\n";
    } catch (const InputError&) {
      ++damaged;  // a line cut short by a full disk
    }
  }
  if (at < text.size()) ++damaged;  // unterminated: cut short
  if (damaged) log_.info(path_ + ": dropped " + std::to_string(damaged) + " damaged line(s)");
  writeFileAtomically(path_, kept);
}

void Metrics::memory(Communicator& comm, std::int64_t expected_bytes) {
  std::int64_t peak[2] = {peakResidentBytes(), -peakResidentBytes()};
  comm.allReduce(peak, 2, ReduceOp::Max, "train/memory");
  char line[240];
  std::snprintf(line, sizeof(line), "memory: peak resident set %.1f MiB per rank (largest), %.1f MiB (smallest)",
                static_cast<double>(peak[0]) / (1 << 20), static_cast<double>(-peak[1]) / (1 << 20));
  std::string text = line;
  if (expected_bytes > 0) {
    std::snprintf(line, sizeof(line), "; expected %.1f MiB (%.2fx)", static_cast<double>(expected_bytes) / (1 << 20),
                  static_cast<double>(peak[0]) / static_cast<double>(expected_bytes));
    text += line;
  }
  if (const BlockReuseStats reuse = blockReuseStats(); reuse.requests > 0) {
    std::snprintf(line, sizeof(line), "; rank %d reused %.1f%% of %lld large blocks (kept at most %.1f MiB, in use at most %.1f MiB)", comm.rank(),
                  100.0 * static_cast<double>(reuse.reused) / static_cast<double>(reuse.requests), static_cast<long long>(reuse.requests),
                  static_cast<double>(reuse.limit_bytes) / (1 << 20), static_cast<double>(reuse.peak_live_bytes) / (1 << 20));
    text += line;
  }
  log_.main(text);
}

std::int64_t residentBytes() { return statusBytes("VmRSS:"); }

void Metrics::append(const std::string& json) {
  std::ofstream out(path_, std::ios::app);
  out << json << "\n";
  if (!out.flush()) throw Error(path_ + ": write failed");
}

}  // namespace graft
