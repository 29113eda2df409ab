// Line charts of training curves, drawn with cairo into SVG or PNG: what `graft plot` writes.
// No torch: a chart is series of (x, y) points, and the frame says how data maps to pixels, so
// a caller (or a test) can check every drawn point against its data.
#pragma once

#include <string>
#include <vector>

namespace graft {

struct Series {
  std::string label;           // legend text
  std::vector<double> x, y;    // the points, in drawing order
  int colour = 0;              // palette index (one per run)
  bool dashed = false;         // validation curves: dashed, with a marker at each point
};

struct ChartOptions {
  int width = 900, height = 540;  // pixels (SVG: points)
  bool log_y = false;
  std::string title, x_label, y_label;
};

// Where the data lands: the data range of each axis and the pixel box of the plot area. A point
// (x, y) is drawn at left + (x - x_min) / (x_max - x_min) * (right - left) and
// bottom - (f(y) - f(y_min)) / (f(y_max) - f(y_min)) * (bottom - top), f = log10 on a log axis.
struct ChartFrame {
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;
  double left = 0, right = 0, top = 0, bottom = 0;
  bool log_y = false;
  double px(double x) const;
  double py(double y) const;
};

// Draws the chart into `path` (.svg or .png, by its extension; written to a temporary file and
// renamed into place). Points that cannot be drawn (not finite; <= 0 on a log axis) are left out
// of `series` first, so what is returned is what was drawn. Throws InputError for another
// extension or when there is nothing to draw, Error when the file cannot be written.
ChartFrame drawChart(std::vector<Series>& series, const ChartOptions& options, const std::string& path);

}  // namespace graft
