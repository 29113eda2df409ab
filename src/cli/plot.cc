// graft plot RUN_DIR... --out FILE.svg|FILE.png: the training and validation loss curves of one or
// more runs on one chart (monitor/plot.h), read from each run's metrics.jsonl. --print also prints,
// as JSON, every point drawn and the frame that maps data to pixels.
#include <cstdio>

#include "cli/cli.h"
#include "config/command_line.h"
#include "monitor/plot.h"
#include "monitor/run_history.h"
#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

namespace graft {
namespace po = boost::program_options;
namespace {

Json numbers(const std::vector<double>& values) {
  Json a = Json::array();
  for (double v : values) a.push(Json(v));
  return a;
}

// Legend names: each run's last path component, or the whole path where two runs share it.
std::vector<std::string> legendNames(const std::vector<std::string>& runs) {
  std::vector<std::string> names;
  for (const auto& r : runs) names.push_back(runName(r));
  for (std::size_t i = 0; i < runs.size(); ++i)
    for (std::size_t j = 0; j < runs.size(); ++j)
      if (i != j && runName(runs[i]) == runName(runs[j])) names[i] = runs[i];
  return names;
}

}  // namespace

int runPlot(const Args& args) {
  std::vector<std::string> runs;
  std::string out, x_axis = "step", title;
  bool log_y = false, print = false, train = true, val = true;
  ChartOptions o;
  po::options_description options("graft plot options");
  options.add_options()
      ("run", po::value(&runs)->multitoken(), "run directories (RUN_DIR/metrics.jsonl)")
      ("out", po::value(&out)->required(), "the chart to write: FILE.svg or FILE.png")
      ("x", po::value(&x_axis)->default_value("step"), "x axis: step | tokens (tokens read by all ranks)")
      ("log-y", po::bool_switch(&log_y), "logarithmic loss axis")
      ("train", po::value(&train)->default_value(true), "draw the training loss (solid)")
      ("val", po::value(&val)->default_value(true), "draw the validation loss (dashed, with markers)")
      ("title", po::value(&title)->default_value(""), "title above the chart")
      ("width", po::value(&o.width)->default_value(900), "pixels (SVG: points)")
      ("height", po::value(&o.height)->default_value(540), "pixels (SVG: points)")
      ("print", po::bool_switch(&print), "also print every drawn point and the data-to-pixel frame as JSON");
  po::positional_options_description positional;
  positional.add("run", -1);
  po::variables_map vm;
  if (!parseCommandLine(args, "usage: graft plot RUN_DIR... --out FILE.svg|FILE.png [--x step|tokens] [--log-y] [--print]\n"
                              "Training and validation loss of one or more runs on one chart, one colour per run.",
                        options, vm, &positional))
    return 0;
  if (runs.empty()) throw InputError("plot: name at least one run directory");
  if (!train && !val) throw InputError("plot: nothing to draw with both --train and --val false");
  if (x_axis != "step" && x_axis != "tokens") throw InputError("--x: expected step or tokens, got '" + x_axis + "'");
  if (o.width < 200 || o.height < 150 || o.width > 10000 || o.height > 10000)
    throw InputError("--width/--height: expected 200-10000 x 150-10000 pixels");
  o.log_y = log_y;
  o.title = title;
  o.x_label = x_axis == "step" ? "step" : "tokens";
  o.y_label = "loss";

  const auto names = legendNames(runs);
  std::vector<Series> series;
  for (std::size_t r = 0; r < runs.size(); ++r) {
    if (!isDirectory(runs[r])) throw InputError(runs[r] + ": no such run directory");
    if (!fileExists(runs[r] + "/metrics.jsonl")) throw InputError(runs[r] + ": no metrics.jsonl (not a graft run directory, or no step done yet)");
    Series t{names[r] + " train", {}, {}, static_cast<int>(r), false}, v{names[r] + " val", {}, {}, static_cast<int>(r), true};
    for (const auto& m : readMetrics(runs[r])) {
      const double x = x_axis == "step" ? static_cast<double>(m.step) : static_cast<double>(m.tokens);
      t.x.push_back(x), t.y.push_back(m.loss);
      if (!std::isnan(m.val_loss)) v.x.push_back(x), v.y.push_back(m.val_loss);
    }
    if (train) series.push_back(std::move(t));
    if (val) series.push_back(std::move(v));
  }
  const ChartFrame f = drawChart(series, o, out);
  std::size_t points = 0;
  for (const auto& s : series) points += s.x.size();
  if (print) {
    Json doc = Json::object(), frame = Json::object(), list = Json::array();
    for (const auto& [key, value] : {std::pair<const char*, double>{"x_min", f.x_min}, {"x_max", f.x_max}, {"y_min", f.y_min},
                                     {"y_max", f.y_max}, {"left", f.left}, {"right", f.right}, {"top", f.top}, {"bottom", f.bottom}})
      frame.set(key, value);
    frame.set("log_y", f.log_y);
    for (const auto& s : series) {
      Json one = Json::object();
      one.set("label", s.label);
      one.set("x", numbers(s.x));
      one.set("y", numbers(s.y));
      list.push(one);
    }
    doc.set("out", out);
    doc.set("width", o.width);
    doc.set("height", o.height);
    doc.set("frame", frame);
    doc.set("series", list);
    std::printf("%s\n", doc.dump().c_str());
  } else {
    std::printf("wrote %s (%zu run(s), %zu point(s))\n", out.c_str(), runs.size(), points);
  }
  return 0;
}

}  // namespace graft
