#include "monitor/run_history.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>

#include "util/files.h"

namespace graft {
namespace {

// Complete lines of a text file (an unterminated last line is being written: left out).
std::vector<std::string> completeLines(const std::string& path) {
  std::vector<std::string> lines;
  if (!fileExists(path)) return lines;
  const std::string text = readFile(path);
  std::size_t at = 0;
  for (std::size_t nl; (nl = text.find('\n', at)) != std::string::npos; at = nl + 1) lines.push_back(text.substr(at, nl - at));
  return lines;
}

double numberOr(const Json& line, const char* key, double fallback, const std::string& what) {
  const Json* v = line.find(key);
  return v && !v->isNull() ? v->asNumber(what + ": " + key) : fallback;
}

}  // namespace

std::vector<MetricsLine> readMetrics(const std::string& run_dir) {
  const std::string path = run_dir + "/metrics.jsonl";
  std::vector<MetricsLine> out;
  const auto lines = completeLines(path);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].empty()) continue;
    const std::string what = path + " line " + std::to_string(i + 1);
    const Json j = parseJson(lines[i], what);
    MetricsLine m;
    m.step = j.at("step", what).asInt(what + ": step");
    m.loss = numberOr(j, "loss", m.loss, what);
    m.lr = numberOr(j, "lr", 0, what);
    m.grad_norm = numberOr(j, "grad_norm", m.grad_norm, what);
    m.tokens = static_cast<std::int64_t>(numberOr(j, "tokens", 0, what));
    m.tokens_per_s = numberOr(j, "tokens_per_s", 0, what);
    m.elapsed_s = numberOr(j, "elapsed_s", 0, what);
    m.time = numberOr(j, "time", m.time, what);
    m.skipped = numberOr(j, "skipped", 0, what) != 0;
    m.skipped_total = static_cast<std::int64_t>(numberOr(j, "skipped_total", 0, what));
    m.val_loss = numberOr(j, "val_loss", m.val_loss, what);
    m.val_accuracy = numberOr(j, "val_accuracy", m.val_accuracy, what);
    out.push_back(m);
  }
  return out;
}

std::vector<Json> readJournal(const std::string& run_dir, std::size_t* damaged) {
  const std::string path = run_dir + "/journal.jsonl";
  std::vector<Json> out;
  std::size_t bad = 0;
  for (const auto& line : completeLines(path)) {
    if (line.empty()) continue;
    try {
      Json event = parseJson(line, path);
      if (!event.isObject() || !event.find("event") || !event.find("event")->isString()) throw InputError(path + ": no event");
      out.push_back(std::move(event));
    } catch (const InputError&) {
      ++bad;
    }
  }
  if (damaged) *damaged = bad;
  return out;
}

void appendJournal(const std::string& run_dir, const std::string& event, const Json& fields) {
  Json line = Json::object();
  line.set("event", event);
  line.set("time", unixTime());
  if (fields.isObject())
    for (const auto& [key, value] : fields.asObject("journal fields")) line.set(key, value);
  std::string text = line.dump() + "\n";
  const std::string path = run_dir + "/journal.jsonl";
  const int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(path + ": cannot open for appending (" + std::strerror(errno) + ")");
  char last = '\n';
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size > 0 && ::pread(fd, &last, 1, size - 1) == 1 && last != '\n') text.insert(text.begin(), '\n');
  const ssize_t written = ::write(fd, text.data(), text.size());
  const int saved = errno;
  ::close(fd);
  if (written != static_cast<ssize_t>(text.size())) throw Error(path + ": write failed (" + std::strerror(saved) + ")");
}

double unixTime() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

std::string runName(const std::string& run_dir) {
  std::string dir = run_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const auto slash = dir.find_last_of('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

}  // namespace graft
