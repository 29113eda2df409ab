// What graft writes for watching runs: CRC-32C, TensorBoard event records (bytes against the
// protobuf and TFRecord specifications, worked out by hand), truncation after a fall-back, the
// chart frame, and reading metrics.jsonl while it is being written.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>

#ifndef GRAFT_NO_CAIRO
#include <cairo.h>
#endif

#include "monitor/plot.h"
#include "monitor/run_history.h"
#include "monitor/tfevents.h"
#include "train/metrics.h"
#include "util/checksum.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

std::string tempDir(const std::string& name) {
  const std::string dir = "/tmp/graft_monitor_test_" + std::to_string(getpid()) + "/" + name;
  std::system(("rm -rf '" + dir + "'").c_str());
  makeDirectories(dir);
  return dir;
}

class MonitorTest : public ::testing::Test {
 protected:
  void TearDown() override { std::system(("rm -rf /tmp/graft_monitor_test_" + std::to_string(getpid())).c_str()); }
};

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the check value of CRC-32C
  const std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);  // RFC 3720 B.4
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
}

TEST_F(MonitorTest, ScalarEventHasTheSpecifiedBytes) {
  const std::string dir = tempDir("bytes");
  std::string path;
  {
    EventWriter w(dir);
    w.scalars(1, 0.0, {{"a", 1.0f}});
    path = w.path();
  }
  EXPECT_EQ(path.substr(0, dir.size() + 21), dir + "/events.out.tfevents.");
  const EventFile file = readEventFile(path);
  ASSERT_EQ(file.events.size(), 2u);
  EXPECT_FALSE(file.damaged);
  EXPECT_NE(file.events[0].find("brain.Event:2"), std::string::npos);
  // Event{wall_time=0 (field 1, fixed64), step=1 (field 2, varint), summary (field 5) {value (field 1)
  // {tag "a" (field 1), simple_value 1.0f (field 2, fixed32 0x3f800000)}}}.
  const std::string want("\x09\0\0\0\0\0\0\0\0" "\x10\x01" "\x2a\x0a" "\x0a\x08" "\x0a\x01" "a" "\x15\x00\x00\x80\x3f", 23);
  EXPECT_EQ(file.events[1], want);
  // Framing: length, masked CRC of the length, data, masked CRC of the data.
  const std::string bytes = readFile(path);
  const std::string record = bytes.substr(bytes.size() - 39);
  std::uint64_t length;
  std::memcpy(&length, record.data(), 8);
  EXPECT_EQ(length, 23u);
  const std::uint32_t crc = crc32c(want.data(), want.size());
  const std::uint32_t masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
  std::uint32_t stored;
  std::memcpy(&stored, record.data() + 35, 4);
  EXPECT_EQ(stored, masked);
  EXPECT_EQ(eventStep(file.events[1]), 1);
  EXPECT_EQ(eventStep(file.events[0]), 0);
  // The version event: wall_time, then file_version (field 3) "brain.Event:2".
  EXPECT_EQ(file.events[0].substr(9), std::string("\x1a\x0d" "brain.Event:2"));
}

TEST_F(MonitorTest, TextEventHasTheSpecifiedBytes) {
  const std::string dir = tempDir("text");
  std::string path;
  {
    EventWriter w(dir);
    w.text(2, 0.0, "c", "x");
    path = w.path();
  }
  const EventFile file = readEventFile(path);
  ASSERT_EQ(file.events.size(), 2u);
  // Event{wall_time 0, step 2, summary {value {tag "c" (1), tensor (8) {dtype DT_STRING = 7 (1),
  // tensor_shape {} (2), string_val "x" (8)}, metadata (9) {plugin_data (1) {plugin_name "text"},
  // data_class TENSOR = 2 (4)}}}}.
  const std::string want(
      "\x09\0\0\0\0\0\0\0\0" "\x10\x02" "\x2a\x1a" "\x0a\x18"
      "\x0a\x01" "c"
      "\x42\x07" "\x08\x07" "\x12\x00" "\x42\x01" "x"
      "\x4a\x0a" "\x0a\x06" "\x0a\x04" "text" "\x20\x02",
      39);
  EXPECT_EQ(file.events[1], want);
}

TEST_F(MonitorTest, TruncationDropsLaterStepsAndADamagedTail) {
  const std::string dir = tempDir("truncate");
  std::string first;
  {
    EventWriter w(dir);
    for (int step = 1; step <= 5; ++step) w.scalars(step, 1.0 * step, {{"train/loss", 2.0f / static_cast<float>(step)}});
    first = w.path();
  }
  std::ofstream(first, std::ios::app) << std::string("\x30\0\0\0\0\0\0\0partial", 15);  // a record cut short
  EventFile file = readEventFile(first);
  EXPECT_TRUE(file.damaged);
  EXPECT_EQ(file.events.size(), 6u);
  EXPECT_EQ(truncateEventFiles(dir, 3), 2);
  file = readEventFile(first);
  EXPECT_FALSE(file.damaged);
  ASSERT_EQ(file.events.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(eventStep(file.events[i]), i);
  EXPECT_EQ(truncateEventFiles(dir, 3), 0);  // nothing more to drop
  EXPECT_EQ(eventFiles(dir), std::vector<std::string>{first});
  // A second start from step 3 wrote its config text at step 3; a third start from step 3 drops
  // that text (it writes its own) but keeps step 3's scalars. A leftover temporary file goes.
  std::ofstream(dir + "/events.out.tfevents.1.host.1.graft.tmp") << "stale";
  {
    EventWriter w(dir);
    w.text(3, 9.0, "config", "    [train]");
    w.scalars(4, 10.0, {{"train/loss", 0.5f}});
  }
  EXPECT_EQ(truncateEventFiles(dir, 3), 2);
  EXPECT_FALSE(fileExists(dir + "/events.out.tfevents.1.host.1.graft.tmp"));
  std::int64_t events = 0;
  for (const auto& path : eventFiles(dir)) events += static_cast<std::int64_t>(readEventFile(path).events.size());
  EXPECT_EQ(events, 5);  // two version events, steps 1-3
}

TEST_F(MonitorTest, RestartDropsLaterAndDamagedMetricsLines) {
  const std::string dir = tempDir("restart");
  std::ofstream(dir + "/metrics.jsonl") << "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": 1}\n{\"step\": 3, \"lo";
  Metrics metrics(dir, 10, 1, false, true, 0, Logger(0, 1));
  metrics.begin(1, "[train]\nsteps = 10\n");
  EXPECT_EQ(readFile(dir + "/metrics.jsonl"), "{\"step\": 1, \"loss\": 2}\n");
  ASSERT_EQ(eventFiles(dir + "/tensorboard").size(), 1u);
  const EventFile file = readEventFile(eventFiles(dir + "/tensorboard")[0]);
  ASSERT_EQ(file.events.size(), 2u);  // version, config text at step 1
  EXPECT_EQ(eventStep(file.events[1]), 1);
  EXPECT_NE(file.events[1].find("    steps = 10\n"), std::string::npos);
}

TEST(Chart, FrameMapsDataToThePlotBox) {
  ChartFrame f;
  f.x_min = 0, f.x_max = 10, f.y_min = 1, f.y_max = 100, f.left = 50, f.right = 150, f.top = 20, f.bottom = 220;
  EXPECT_DOUBLE_EQ(f.px(0), 50);
  EXPECT_DOUBLE_EQ(f.px(5), 100);
  EXPECT_DOUBLE_EQ(f.py(1), 220);
  EXPECT_DOUBLE_EQ(f.py(100), 20);
  f.log_y = true;
  EXPECT_DOUBLE_EQ(f.py(10), 120);  // halfway in decades
}

TEST_F(MonitorTest, ChartLeavesOutWhatCannotBeDrawn) {
#ifdef GRAFT_NO_CAIRO
  GTEST_SKIP() << "this build has no cairo (GRAFT_NO_CAIRO): graft plot cannot draw";
#endif
  const std::string dir = tempDir("chart");
  std::vector<Series> series = {{"a", {1, 2, 3, 4}, {2.0, std::nan(""), 0.0, 1.0}, 0, false}};
  ChartOptions o;
  o.log_y = true;
  const ChartFrame f = drawChart(series, o, dir + "/c.svg");
  ASSERT_EQ(series.size(), 1u);
  EXPECT_EQ(series[0].x, (std::vector<double>{1, 4}));  // NaN and 0 (on a log axis) left out
  EXPECT_LT(f.y_min, 1.0);
  EXPECT_GT(f.y_max, 2.0);
  EXPECT_TRUE(fileExists(dir + "/c.svg"));
  EXPECT_FALSE(fileExists(dir + "/c.svg.tmp"));
  std::vector<Series> none = {{"b", {1}, {std::nan("")}, 0, false}};
  EXPECT_THROW(drawChart(none, o, dir + "/d.svg"), InputError);
  EXPECT_THROW(drawChart(series, o, dir + "/c.jpg"), InputError);
}

// A training curve of a single point (a run of one step) is drawn: a line through one point has no
// length, so it gets a marker; the pixel where it sits is the series' colour, not the background
// nor a grid line.
TEST_F(MonitorTest, AOneStepRunIsDrawnAsAPoint) {
#ifdef GRAFT_NO_CAIRO
  GTEST_SKIP() << "this build has no cairo (GRAFT_NO_CAIRO): graft plot cannot draw";
#else
  const std::string dir = tempDir("one_point");
  std::vector<Series> series = {{"one step", {1}, {2.5}, 0, false}};
  const ChartFrame f = drawChart(series, ChartOptions{}, dir + "/p.png");
  cairo_surface_t* png = cairo_image_surface_create_from_png((dir + "/p.png").c_str());
  ASSERT_EQ(cairo_surface_status(png), CAIRO_STATUS_SUCCESS);
  cairo_surface_flush(png);
  const int stride = cairo_image_surface_get_stride(png);
  const unsigned char* data = cairo_image_surface_get_data(png);
  const int x = static_cast<int>(f.px(1)), y = static_cast<int>(f.py(2.5));
  // The first colour of the palette, (31, 119, 180): blue well above red (grid lines are grey).
  const auto* pixel = reinterpret_cast<const std::uint32_t*>(data + y * stride + x * 4);
  const int red = (*pixel >> 16) & 0xFF, blue = *pixel & 0xFF;
  cairo_surface_destroy(png);
  EXPECT_GT(blue - red, 80) << "no point of the series' colour where it is (" << x << ", " << y << "): rgb " << std::hex << *pixel;
#endif
}

TEST_F(MonitorTest, MetricsBeingWrittenAreReadUpToTheLastCompleteLine) {
  const std::string dir = tempDir("metrics");
  std::ofstream(dir + "/metrics.jsonl") << "{\"step\": 1, \"loss\": 3.5, \"tokens\": 64, \"val_loss\": null}\n"
                                           "{\"step\": 2, \"loss\": null, \"val_loss\": 3.25, \"time\": 17.5}\n"
                                           "{\"step\": 3, \"lo";
  const auto lines = readMetrics(dir);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].loss, 3.5);
  EXPECT_EQ(lines[0].tokens, 64);
  EXPECT_TRUE(std::isnan(lines[0].val_loss));
  EXPECT_TRUE(std::isnan(lines[1].loss));
  EXPECT_EQ(lines[1].val_loss, 3.25);
  EXPECT_EQ(lines[1].time, 17.5);
  std::ofstream(dir + "/metrics.jsonl") << "{\"step\": 1}\nnot json\n";
  try {
    readMetrics(dir);
    FAIL() << "a damaged line was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(dir + "/metrics.jsonl line 2"), std::string::npos) << e.what();
  }
  Json fields = Json::object();
  fields.set("step", 4);
  std::ofstream(dir + "/journal.jsonl") << "{\"event\": \"start\", \"ti";  // cut short by a full disk
  appendJournal(dir, "start", fields);
  std::size_t damaged = 0;
  const auto journal = readJournal(dir, &damaged);
  EXPECT_EQ(damaged, 1u);
  ASSERT_EQ(journal.size(), 1u);
  EXPECT_EQ(journal[0].at("event", "").asString(""), "start");
  EXPECT_EQ(journal[0].at("step", "").asInt(""), 4);
  EXPECT_GT(journal[0].at("time", "").asNumber(""), 1.6e9);
  EXPECT_EQ(runName("/a/b/run/"), "run");
}

}  // namespace
}  // namespace graft
