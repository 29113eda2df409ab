// TensorBoard event files: what TensorBoard, torch.utils.tensorboard and tf.summary read.
//
// A file is a sequence of TFRecords, each
//     uint64 length | uint32 masked CRC-32C of the 8 length bytes | data | uint32 masked CRC-32C of data
// (little-endian; masked = rotate right by 15, plus 0xa282ead8), whose data is one serialised
// tensorflow.Event protobuf message. graft writes three kinds of event: the file-version event that
// opens every file, a scalar summary per step (one value per tag), and text (the text plugin's
// string tensor). The few protobuf fields involved are encoded by hand (Note [event fields] in
// tfevents.cc): no protobuf library, so nothing to clash with LibTorch's.
//
// A run writes a new file each time it starts (fresh, resumed or requeued) in the same folder, and
// TensorBoard shows them as one run. A run resumed from an older checkpoint first drops the events
// past that checkpoint from the earlier files (truncateEventFiles), so no step appears twice.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace graft {

class EventWriter {
 public:
  // Creates DIR (mkdir -p) and DIR/events.out.tfevents.<unix seconds>.<host>.<pid>.graft, whose
  // first record is the version event. Throws Error naming the file when it cannot be written.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // One event at `step` holding one scalar per (tag, value).
  void scalars(std::int64_t step, double wall_time, const std::vector<std::pair<std::string, float>>& values);
  // Markdown text under `tag` (TensorBoard's Text tab).
  void text(std::int64_t step, double wall_time, const std::string& tag, const std::string& markdown);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);  // frames it and flushes it to the OS
  std::string path_;
  std::FILE* file_ = nullptr;
};

// The events of one file, in order. Reading stops at the first record that is cut short or whose
// CRC does not match (a run killed while writing): `damaged` says so, and `good_bytes` is where
// the intact records end.
struct EventFile {
  std::vector<std::string> events;  // serialised Event messages
  std::uint64_t good_bytes = 0;
  bool damaged = false;
};
EventFile readEventFile(const std::string& path);
EventFile parseEventFile(const std::string& bytes);

// The step field of a serialised Event (0 when it has none, as in the version event). Throws
// InputError on a malformed message.
std::int64_t eventStep(const std::string& event);

// The event files of DIR (events.out.tfevents.*), sorted by name (= by start time).
std::vector<std::string> eventFiles(const std::string& dir);

// Rewrites each event file of DIR that holds events past `step`, text at `step` (the config a
// start from the same checkpoint wrote) or a damaged tail, without them (temp file + rename), and
// removes temporary files a crash left. Returns how many events were dropped. A TensorBoard that
// is already running keeps showing the dropped steps until it is restarted.
std::int64_t truncateEventFiles(const std::string& dir, std::int64_t step);

// The masked CRC-32C of TFRecord framing.
std::uint32_t maskedCrc32c(const void* data, std::size_t bytes);

}  // namespace graft
