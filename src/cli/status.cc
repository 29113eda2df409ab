// graft status RUN_DIR [--json]: how far a run is and whether its checkpoints are good, so that
// nobody has to open its files: step / total, last loss and validation loss, tokens/s, ETA, time since
// the last step (a stalled run shows it), each checkpoint with its step, size and whether it
// verifies against its manifest, how often the run started, resumed and was requeued, and the last
// error it recorded. Reads metrics.jsonl, journal.jsonl and checkpoints/ (monitor/run_history.h);
// works while the run is going and after it ended.
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "cli/cli.h"
#include "config/command_line.h"
#include "formats/hdf5.h"
#include "monitor/run_history.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"
#include "util/log.h"

namespace graft {
namespace po = boost::program_options;
namespace {

// The checkpoint file and its part files (dist.shard = parameters): step-N.h5, step-N.part-*.h5.
std::int64_t checkpointBytes(const std::string& path) {
  const std::string dir = parentDirectory(path), stem = path.substr(dir.size() + 1, 13);  // "step-00000010"
  std::int64_t bytes = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name == stem + ".h5" || (name.rfind(stem + ".part-", 0) == 0 && endsWith(name, ".h5"))) bytes += fileBytes(entry.path().string());
  }
  return bytes;
}

Json checkpointsJson(const std::string& run_dir, bool verify) {
  Json list = Json::array();
  for (const auto& path : completeCheckpoints(run_dir + "/checkpoints")) {
    Json c = Json::object();
    c.set("path", path);
    c.set("step", static_cast<std::int64_t>(std::stoll(path.substr(path.size() - 11, 8))));
    c.set("bytes", checkpointBytes(path));
    if (verify) {
      try {
        verifyCheckpoint(path);
        c.set("verified", true);
      } catch (const std::exception& e) {
        c.set("verified", false);
        c.set("error", e.what());
      }
    }
    list.push(c);
  }
  return list;
}

Json status(const std::string& run_dir, bool verify) {
  if (!isDirectory(run_dir)) throw InputError(run_dir + ": no such run directory");
  const auto metrics = readMetrics(run_dir);
  std::size_t damaged_lines = 0;
  const auto journal = readJournal(run_dir, &damaged_lines);
  if (metrics.empty() && journal.empty() && !isDirectory(run_dir + "/checkpoints"))
    throw InputError(run_dir + ": not a graft run directory (no metrics.jsonl, journal.jsonl or checkpoints/)");
  Json doc = Json::object();
  doc.set("run", run_dir);

  // The journal: starts (fresh, resumed, requeued), the last start and the last event.
  std::int64_t starts = 0, resumes = 0, requeues = 0, preemptions = 0, total = 0, attempt_start = 0, errors = 0;
  const Json* first_error = nullptr;  // of the last start: the cause; later ones are often its echoes on other ranks
  const auto integer = [](const Json& e, const char* key) {
    const Json* v = e.find(key);
    return v && v->isInteger() ? v->asInt(key) : std::int64_t{0};
  };
  std::string state = journal.empty() ? "unknown" : "running";
  std::string host;  // rank 0's host and pid at the last start
  std::int64_t pid = 0;
  for (const auto& e : journal) {
    const std::string event = e.at("event", "journal").asString("journal: event");
    if (event == "start") {
      ++starts;
      attempt_start = integer(e, "step");
      total = integer(e, "steps");
      if (attempt_start > 0) ++resumes;
      if (integer(e, "slurm_restart_count") > 0) ++requeues;
      state = "running";
      const Json* h = e.find("host");
      host = h && h->isString() ? h->asString("host") : "";
      pid = integer(e, "pid");
      first_error = nullptr;
      errors = 0;
    } else if (event == "end") {
      const Json* status = e.find("status");
      state = status && status->isString() ? status->asString("status") : "ended";
      if (state == "preempted") ++preemptions;
    } else if (event == "error") {
      if (!first_error) first_error = &e;
      ++errors;
      state = "failed";
    }
  }
  // A run killed with -9 (or by the kernel's OOM killer) writes no end: on rank 0's host, a
  // process that is gone says so. Elsewhere only since_last_step_s can tell.
  if (state == "running" && pid > 0 && host == hostName() && !graftProcessAlive(pid)) state = "died";
  doc.set("state", state);
  doc.set("steps", total);
  if (!metrics.empty()) {
    const MetricsLine& m = metrics.back();
    doc.set("step", m.step);
    doc.set("loss", std::isfinite(m.loss) ? Json(m.loss) : Json());
    doc.set("tokens", m.tokens);
    doc.set("tokens_per_s", m.tokens_per_s);
    for (auto it = metrics.rbegin(); it != metrics.rend(); ++it)
      if (!std::isnan(it->val_loss)) {
        doc.set("val_loss", it->val_loss);
        doc.set("val_step", it->step);
        if (!std::isnan(it->val_accuracy)) doc.set("val_accuracy", it->val_accuracy);
        break;
      }
    if (state == "running" && total > m.step && m.step > attempt_start)
      doc.set("eta_s", m.elapsed_s / static_cast<double>(m.step - attempt_start) * static_cast<double>(total - m.step));
    if (!std::isnan(m.time)) doc.set("since_last_step_s", unixTime() - m.time);
    doc.set("skipped_steps", m.skipped_total);
  } else {
    doc.set("step", std::int64_t{0});
  }
  doc.set("starts", starts);
  doc.set("resumes", resumes);
  doc.set("requeues", requeues);
  doc.set("preemptions", preemptions);
  doc.set("checkpoints", checkpointsJson(run_dir, verify));
  if (first_error) {
    Json err = Json::object();
    for (const char* key : {"rank", "message", "time"})
      if (const Json* v = first_error->find(key)) err.set(key, *v);
    err.set("errors", errors);
    doc.set("last_error", err);
  }
  if (damaged_lines > 0) doc.set("journal_damaged_lines", static_cast<std::int64_t>(damaged_lines));
  return doc;
}

void printHuman(const Json& d) {
  const auto num = [&](const char* key) { return d.find(key) ? d.find(key)->asNumber(key) : std::nan(""); };
  const std::int64_t step = d.at("step", "status").asInt("step"), total = d.at("steps", "status").asInt("steps");
  std::printf("%s: %s\n", d.at("run", "status").asString("run").c_str(), d.at("state", "status").asString("state").c_str());
  std::printf("  step       %lld/%lld", static_cast<long long>(step), static_cast<long long>(total));
  if (total > 0) std::printf(" (%.0f%%)", 100.0 * static_cast<double>(step) / static_cast<double>(total));
  std::printf("\n");
  if (d.find("loss") && !d.find("loss")->isNull()) std::printf("  loss       %.4f\n", num("loss"));
  if (d.find("val_loss")) {
    std::printf("  val loss   %.4f (step %lld)", num("val_loss"), static_cast<long long>(d.find("val_step")->asInt("val_step")));
    if (d.find("val_accuracy")) std::printf(", accuracy %.4f", num("val_accuracy"));
    std::printf("\n");
  }
  if (d.find("tokens_per_s")) std::printf("  speed      %.0f tokens/s\n", num("tokens_per_s"));
  if (d.find("eta_s")) std::printf("  ETA        %s\n", formatDuration(num("eta_s")).c_str());
  if (d.find("since_last_step_s")) std::printf("  last step  %s ago\n", formatDuration(num("since_last_step_s")).c_str());
  if (num("skipped_steps") > 0) std::printf("  skipped    %.0f step(s) (not finite)\n", num("skipped_steps"));
  std::printf("  starts     %.0f (%.0f resumed from a checkpoint, %.0f requeued by Slurm, %.0f preempted)\n", num("starts"),
              num("resumes"), num("requeues"), num("preemptions"));
  const auto& checkpoints = d.at("checkpoints", "status").asArray("checkpoints");
  if (checkpoints.empty()) std::printf("  checkpoints none\n");
  for (std::size_t i = 0; i < checkpoints.size(); ++i) {
    const Json& c = checkpoints[i];
    const Json* verified = c.find("verified");
    std::printf("  %s %s  %.1f MiB  %s\n", i == 0 ? "checkpoints" : "           ", c.at("path", "").asString("").c_str(),
                c.at("bytes", "").asNumber("") / (1 << 20),
                !verified ? "(not verified)" : verified->asBool("") ? "verified" : ("DAMAGED: " + c.at("error", "").asString("")).c_str());
  }
  if (const Json* e = d.find("last_error")) {
    const Json *rank = e->find("rank"), *message = e->find("message");
    const std::int64_t errors = e->at("errors", "").asInt("");
    std::printf("  last error rank %lld: %s%s\n", rank && rank->isInteger() ? static_cast<long long>(rank->asInt("")) : -1LL,
                message && message->isString() ? message->asString("").c_str() : "(no message)",
                errors > 1 ? (" (first of " + std::to_string(errors) + " errors of that start)").c_str() : "");
  }
  if (d.find("journal_damaged_lines"))
    std::printf("  journal    %.0f damaged line(s) skipped\n", num("journal_damaged_lines"));
}

}  // namespace

int runStatus(const Args& args) {
  std::string run_dir;
  bool json = false, no_verify = false;
  po::options_description options("graft status options");
  options.add_options()
      ("run", po::value(&run_dir)->required(), "run directory")
      ("json", po::bool_switch(&json), "print one JSON document instead of text")
      ("no-verify", po::bool_switch(&no_verify), "list checkpoints without reading them back against their manifests");
  po::positional_options_description positional;
  positional.add("run", 1);
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft status RUN_DIR [--json] [--no-verify]\n"
                              "Step, loss, speed, ETA, time since the last step, checkpoints (verified), starts and\n"
                              "resumes, and the last error of a run, while it runs or after it ended.",
                        options, vm, &positional))
    return 0;
  initialiseHdf5();
  const Json doc = status(run_dir, !no_verify);
  if (json) std::printf("%s\n", doc.dump(2).c_str());
  else printHuman(doc);
  return 0;
}

}  // namespace graft
