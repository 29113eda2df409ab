#include "monitor/plot.h"

#include <cmath>

#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

// True for .svg, false for .png; anything else is the user's mistake, in any build.
bool svgOrPng(const std::string& path) {
  if (endsWith(path, ".svg")) return true;
  if (endsWith(path, ".png")) return false;
  throw InputError(path + ": the plot's file name must end in .svg or .png");
}

}  // namespace

double ChartFrame::px(double x) const { return left + (x - x_min) / (x_max - x_min) * (right - left); }
double ChartFrame::py(double y) const {
  const auto f = [this](double v) { return log_y ? std::log10(v) : v; };
  return bottom - (f(y) - f(y_min)) / (f(y_max) - f(y_min)) * (bottom - top);
}

}  // namespace graft

#ifdef GRAFT_NO_CAIRO
// A build without cairo (-DGRAFT_WITH_CAIRO=OFF, or a GPU machine without it: CMakeLists.txt):
// everything but `graft plot` works.
namespace graft {
ChartFrame drawChart(std::vector<Series>&, const ChartOptions&, const std::string& path) {
  svgOrPng(path);
  throw InputError(path + ": this graft was built without cairo, so it cannot draw charts (install libcairo2-dev and "
                   "build again, or plot on another machine: graft plot reads only the run's metrics.jsonl)");
}
}  // namespace graft
#else
#include <cairo-svg.h>
#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

struct Rgb {
  double r, g, b;
};
// A palette that stays distinguishable in print and for the common colour-vision deficiencies.
constexpr Rgb kPalette[] = {{0.122, 0.467, 0.706}, {1.000, 0.498, 0.055}, {0.173, 0.627, 0.173}, {0.839, 0.153, 0.157},
                            {0.580, 0.404, 0.741}, {0.549, 0.337, 0.294}, {0.890, 0.467, 0.761}, {0.498, 0.498, 0.498},
                            {0.737, 0.741, 0.133}, {0.090, 0.745, 0.812}};
constexpr int kPaletteSize = sizeof(kPalette) / sizeof(kPalette[0]);

// Tick positions over [lo, hi] at 1, 2 or 5 times a power of ten, about `want` of them.
std::vector<double> linearTicks(double lo, double hi, int want) {
  const double raw = (hi - lo) / std::max(1, want);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * magnitude >= raw) { step = m * magnitude; break; }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

// Log axis ticks: every decade, and 2 and 5 times each when the range spans under two decades.
std::vector<double> logTicks(double lo, double hi) {
  std::vector<double> ticks;
  const bool fine = std::log10(hi / lo) < 2;
  for (int e = static_cast<int>(std::floor(std::log10(lo))); e <= static_cast<int>(std::ceil(std::log10(hi))); ++e)
    for (double m : {1.0, 2.0, 5.0}) {
      const double t = m * std::pow(10.0, e);
      if ((m == 1.0 || fine) && t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push_back(t);
    }
  return ticks;
}

std::string tickLabel(double v) {
  char buf[32];
  if (v != 0 && (std::abs(v) >= 1e6 || std::abs(v) < 1e-3)) std::snprintf(buf, sizeof(buf), "%.0e", v);
  else std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

void setColour(cairo_t* cr, const Rgb& c, double alpha = 1) { cairo_set_source_rgba(cr, c.r, c.g, c.b, alpha); }

double textWidth(cairo_t* cr, const std::string& text) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, text.c_str(), &e);
  return e.x_advance;
}

void drawText(cairo_t* cr, double x, double y, const std::string& text, double align = 0) {
  cairo_move_to(cr, x - align * textWidth(cr, text), y);
  cairo_show_text(cr, text.c_str());
}

void drawAxes(cairo_t* cr, const ChartFrame& f, const ChartOptions& o) {
  cairo_set_line_width(cr, 1);
  const auto yticks = f.log_y ? logTicks(f.y_min, f.y_max) : linearTicks(f.y_min, f.y_max, 6);
  const auto xticks = linearTicks(f.x_min, f.x_max, 8);
  cairo_set_font_size(cr, 12);
  for (double t : yticks) {
    cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
    cairo_move_to(cr, f.left, std::round(f.py(t)) + 0.5);
    cairo_line_to(cr, f.right, std::round(f.py(t)) + 0.5);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    drawText(cr, f.left - 6, f.py(t) + 4, tickLabel(t), 1);
  }
  for (double t : xticks) {
    cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
    cairo_move_to(cr, std::round(f.px(t)) + 0.5, f.top);
    cairo_line_to(cr, std::round(f.px(t)) + 0.5, f.bottom);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
    drawText(cr, f.px(t), f.bottom + 16, tickLabel(t), 0.5);
  }
  cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  cairo_rectangle(cr, f.left + 0.5, f.top + 0.5, f.right - f.left - 1, f.bottom - f.top - 1);
  cairo_stroke(cr);
  cairo_set_font_size(cr, 13);
  drawText(cr, (f.left + f.right) / 2, f.bottom + 36, o.x_label, 0.5);
  cairo_save(cr);
  cairo_translate(cr, 18, (f.top + f.bottom) / 2);
  cairo_rotate(cr, -M_PI / 2);
  drawText(cr, 0, 0, o.y_label + (f.log_y ? " (log scale)" : ""), 0.5);
  cairo_restore(cr);
  if (!o.title.empty()) {
    cairo_set_font_size(cr, 15);
    drawText(cr, (f.left + f.right) / 2, 24, o.title, 0.5);
  }
}

void drawSeries(cairo_t* cr, const ChartFrame& f, const Series& s) {
  setColour(cr, kPalette[s.colour % kPaletteSize]);
  cairo_set_line_width(cr, s.dashed ? 1.5 : 1.25);
  const double dash[] = {6, 4};
  cairo_set_dash(cr, dash, s.dashed ? 2 : 0, 0);
  for (std::size_t i = 0; i < s.x.size(); ++i) {
    if (i == 0) cairo_move_to(cr, f.px(s.x[i]), f.py(s.y[i]));
    else cairo_line_to(cr, f.px(s.x[i]), f.py(s.y[i]));
  }
  cairo_stroke(cr);
  cairo_set_dash(cr, dash, 0, 0);
  // Validation points always get markers; a training curve of one point (a run of one step) has
  // no length to stroke, so it gets one too.
  if (!s.dashed && s.x.size() != 1) return;
  for (std::size_t i = 0; i < s.x.size(); ++i) {
    cairo_new_sub_path(cr);
    cairo_arc(cr, f.px(s.x[i]), f.py(s.y[i]), 3, 0, 2 * M_PI);
  }
  cairo_fill(cr);
}

void drawLegend(cairo_t* cr, const ChartFrame& f, const std::vector<Series>& series) {
  cairo_set_font_size(cr, 12);
  double widest = 0;
  for (const auto& s : series) widest = std::max(widest, textWidth(cr, s.label));
  const double row = 18, w = widest + 46, h = row * static_cast<double>(series.size()) + 8;
  const double x = f.right - w - 10, y = f.top + 10;
  cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
  cairo_rectangle(cr, x, y, w, h);
  cairo_fill_preserve(cr);
  cairo_set_source_rgb(cr, 0.75, 0.75, 0.75);
  cairo_set_line_width(cr, 1);
  cairo_stroke(cr);
  const double dash[] = {6, 4};
  for (std::size_t i = 0; i < series.size(); ++i) {
    const double cy = y + 4 + row * (static_cast<double>(i) + 0.5);
    setColour(cr, kPalette[series[i].colour % kPaletteSize]);
    cairo_set_line_width(cr, 2);
    cairo_set_dash(cr, dash, series[i].dashed ? 2 : 0, 0);
    cairo_move_to(cr, x + 8, cy);
    cairo_line_to(cr, x + 34, cy);
    cairo_stroke(cr);
    cairo_set_dash(cr, dash, 0, 0);
    cairo_set_source_rgb(cr, 0.1, 0.1, 0.1);
    drawText(cr, x + 40, cy + 4, series[i].label);
  }
}

// The frame: data ranges (y padded by 5%, or to whole factors on a log axis) and the plot box.
ChartFrame frameFor(const std::vector<Series>& series, const ChartOptions& o) {
  ChartFrame f;
  f.log_y = o.log_y;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  if (x1 <= x0) x0 -= 0.5, x1 += 0.5;
  if (o.log_y) {
    if (y1 <= y0) y0 /= 1.5, y1 *= 1.5;
    const double pad = std::pow(y1 / y0, 0.05);
    y0 /= pad, y1 *= pad;
  } else {
    if (y1 <= y0) y0 -= 0.5, y1 += 0.5;
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad, y1 += pad;
  }
  f.x_min = x0, f.x_max = x1, f.y_min = y0, f.y_max = y1;
  f.left = 72, f.right = o.width - 20, f.top = o.title.empty() ? 16 : 40, f.bottom = o.height - 50;
  if (f.right - f.left < 50 || f.bottom - f.top < 50) throw InputError("plot: --width/--height too small for a chart");
  return f;
}

}  // namespace

ChartFrame drawChart(std::vector<Series>& series, const ChartOptions& options, const std::string& path) {
  const bool svg = svgOrPng(path);
  std::size_t points = 0;
  for (auto& s : series) {
    std::vector<double> x, y;
    for (std::size_t i = 0; i < s.x.size(); ++i)
      if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]) && (!options.log_y || s.y[i] > 0)) x.push_back(s.x[i]), y.push_back(s.y[i]);
    s.x = std::move(x), s.y = std::move(y);
    points += s.x.size();
  }
  series.erase(std::remove_if(series.begin(), series.end(), [](const Series& s) { return s.x.empty(); }), series.end());
  if (points == 0) throw InputError(path + ": nothing to plot (no finite values in the runs' metrics)");
  const ChartFrame frame = frameFor(series, options);

  const std::string tmp = path + ".tmp";
  cairo_surface_t* surface = svg ? cairo_svg_surface_create(tmp.c_str(), options.width, options.height)
                                 : cairo_image_surface_create(CAIRO_FORMAT_ARGB32, options.width, options.height);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  drawAxes(cr, frame, options);
  cairo_save(cr);
  cairo_rectangle(cr, frame.left, frame.top, frame.right - frame.left, frame.bottom - frame.top);
  cairo_clip(cr);
  cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
  for (const auto& s : series) drawSeries(cr, frame, s);
  cairo_restore(cr);
  drawLegend(cr, frame, series);
  cairo_status_t status = cairo_status(cr);
  cairo_destroy(cr);
  if (!svg && status == CAIRO_STATUS_SUCCESS) status = cairo_surface_write_to_png(surface, tmp.c_str());
  cairo_surface_finish(surface);
  if (status == CAIRO_STATUS_SUCCESS) status = cairo_surface_status(surface);
  cairo_surface_destroy(surface);
  if (status != CAIRO_STATUS_SUCCESS) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot write the plot (" + cairo_status_to_string(status) + ")");
  }
  publishFile(tmp, path);
  return frame;
}

}  // namespace graft
#endif  // GRAFT_NO_CAIRO
