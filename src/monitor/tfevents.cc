#include "monitor/tfevents.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string_view>

#include "monitor/run_history.h"
#include "util/checksum.h"
#include "util/error.h"
#include "util/files.h"

namespace graft {
namespace {

// Note [event fields]: the protobuf messages and field numbers graft writes (tensorflow's
// event.proto, summary.proto, tensor.proto, tensor_shape.proto):
//   Event           1 wall_time (double)  2 step (int64)  3 file_version (string)  5 summary (Summary)
//   Summary         1 value (repeated Summary.Value)
//   Summary.Value   1 tag (string)  2 simple_value (float)  8 tensor (TensorProto)  9 metadata (SummaryMetadata)
//   SummaryMetadata 1 plugin_data (PluginData: 1 plugin_name (string))  4 data_class (enum, TENSOR = 2)
//   TensorProto     1 dtype (enum, DT_STRING = 7)  2 tensor_shape (empty: a scalar)  8 string_val (bytes)
// Wire types: 0 varint, 1 fixed 64-bit, 2 length-delimited, 5 fixed 32-bit.
enum Wire { kVarint = 0, kFixed64 = 1, kBytes = 2, kFixed32 = 5 };

void putVarint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void putKey(std::string& out, int field, Wire wire) { putVarint(out, static_cast<std::uint64_t>(field) << 3 | wire); }
void putBytes(std::string& out, int field, const std::string& bytes) {
  putKey(out, field, kBytes);
  putVarint(out, bytes.size());
  out += bytes;
}
template <typename T>
void putLittleEndian(std::string& out, T value) {  // x86 and ARM Linux are little-endian
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

std::string eventHeader(std::int64_t step, double wall_time) {
  std::string event;
  putKey(event, 1, kFixed64);
  putLittleEndian(event, wall_time);
  if (step != 0) {
    putKey(event, 2, kVarint);
    putVarint(event, static_cast<std::uint64_t>(step));
  }
  return event;
}

std::uint64_t getVarint(std::string_view in, std::size_t& at) {
  std::uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (at >= in.size()) throw InputError("event: varint runs past the end");
    const auto byte = static_cast<unsigned char>(in[at++]);
    v |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
    if (!(byte & 0x80)) return v;
  }
  throw InputError("event: varint longer than 10 bytes");
}

// The fields of one protobuf message, in order; InputError on a malformed one.
struct Field {
  int number;
  std::uint64_t varint;    // wire type 0
  std::string_view bytes;  // wire type 2
};
std::vector<Field> fieldsOf(std::string_view message) {
  std::vector<Field> fields;
  std::size_t at = 0;
  while (at < message.size()) {
    const std::uint64_t key = getVarint(message, at);
    Field f{static_cast<int>(key >> 3), 0, {}};
    std::uint64_t skip = 0;
    switch (key & 7) {
      case kVarint: f.varint = getVarint(message, at); break;
      case kFixed64: skip = 8; break;
      case kFixed32: skip = 4; break;
      case kBytes: skip = getVarint(message, at); break;
      default: throw InputError("event: unknown wire type " + std::to_string(key & 7));
    }
    if (skip > message.size() - at) throw InputError("event: field runs past the end");
    if ((key & 7) == kBytes) f.bytes = message.substr(at, skip);
    at += skip;
    fields.push_back(f);
  }
  return fields;
}

// A text summary (a value with a tensor) rather than scalars.
bool holdsText(std::string_view event) {
  for (const auto& summary : fieldsOf(event))
    if (summary.number == 5)
      for (const auto& value : fieldsOf(summary.bytes))
        if (value.number == 1)
          for (const auto& part : fieldsOf(value.bytes))
            if (part.number == 8) return true;
  return false;
}

std::uint32_t readU32(const char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

std::uint32_t maskedCrc32c(const void* data, std::size_t bytes) {
  const std::uint32_t crc = crc32c(data, bytes);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

EventWriter::EventWriter(const std::string& dir) {
  makeDirectories(dir);
  char host[256] = "host";
  gethostname(host, sizeof(host) - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<long long>(std::time(nullptr))) + "." + host + "." +
          std::to_string(getpid()) + ".graft";
  file_ = std::fopen(path_.c_str(), "ab");
  if (!file_) throw Error(path_ + ": cannot create (" + std::strerror(errno) + ")");
  std::string event = eventHeader(0, unixTime());
  putBytes(event, 3, "brain.Event:2");
  record(event);
}

EventWriter::~EventWriter() {
  if (file_) std::fclose(file_);
}

void EventWriter::scalars(std::int64_t step, double wall_time, const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, value] : values) {
    std::string v;
    putBytes(v, 1, tag);
    putKey(v, 2, kFixed32);
    putLittleEndian(v, value);
    putBytes(summary, 1, v);
  }
  std::string event = eventHeader(step, wall_time);
  putBytes(event, 5, summary);
  record(event);
}

void EventWriter::text(std::int64_t step, double wall_time, const std::string& tag, const std::string& markdown) {
  std::string plugin, metadata, tensor, value, summary;
  putBytes(plugin, 1, "text");
  putBytes(metadata, 1, plugin);
  putKey(metadata, 4, kVarint);  // data_class = DATA_CLASS_TENSOR, as tf.summary.text writes
  putVarint(metadata, 2);
  putKey(tensor, 1, kVarint);
  putVarint(tensor, 7);  // DT_STRING
  putBytes(tensor, 2, "");
  putBytes(tensor, 8, markdown);
  putBytes(value, 1, tag);
  putBytes(value, 8, tensor);
  putBytes(value, 9, metadata);
  putBytes(summary, 1, value);
  std::string event = eventHeader(step, wall_time);
  putBytes(event, 5, summary);
  record(event);
}

void EventWriter::record(const std::string& event) {
  std::string framed;
  putLittleEndian(framed, static_cast<std::uint64_t>(event.size()));
  putLittleEndian(framed, maskedCrc32c(framed.data(), 8));
  framed += event;
  putLittleEndian(framed, maskedCrc32c(event.data(), event.size()));
  if (std::fwrite(framed.data(), 1, framed.size(), file_) != framed.size() || std::fflush(file_) != 0)
    throw Error(path_ + ": write failed (" + std::strerror(errno) + ")");
}

EventFile readEventFile(const std::string& path) { return parseEventFile(readFile(path)); }

EventFile parseEventFile(const std::string& bytes) {
  EventFile file;
  std::size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < 12 || readU32(bytes.data() + at + 8) != maskedCrc32c(bytes.data() + at, 8)) break;
    std::uint64_t length;
    std::memcpy(&length, bytes.data() + at, 8);
    if (length > bytes.size() - at - 12 || bytes.size() - at - 12 - length < 4) break;
    const char* data = bytes.data() + at + 12;
    if (readU32(data + length) != maskedCrc32c(data, length)) break;
    file.events.emplace_back(data, length);
    at += 16 + length;
  }
  file.good_bytes = at;
  file.damaged = at < bytes.size();
  return file;
}

std::int64_t eventStep(const std::string& event) {
  std::int64_t step = 0;
  for (const auto& f : fieldsOf(event))
    if (f.number == 2) step = static_cast<std::int64_t>(f.varint);
  return step;
}

std::vector<std::string> eventFiles(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("events.out.tfevents.", 0) == 0 && !endsWith(name, ".tmp")) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::int64_t truncateEventFiles(const std::string& dir, std::int64_t step) {
  std::int64_t dropped = 0;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec))  // left by a crash mid-rewrite
    if (endsWith(entry.path().string(), ".tmp")) std::filesystem::remove(entry.path(), ec);
  for (const auto& path : eventFiles(dir)) {
    const std::string bytes = readFile(path);
    const EventFile file = parseEventFile(bytes);
    std::string kept;
    std::size_t at = 0;
    bool changed = file.damaged;
    for (const auto& event : file.events) {
      const std::size_t framed = 16 + event.size();
      bool keep;
      try {
        const std::int64_t s = eventStep(event);
        keep = s < step || (s == step && !holdsText(event));
      } catch (const InputError&) {
        keep = false;  // intact framing around a message that does not parse: not graft's, dropped
      }
      if (keep) kept.append(bytes, at, framed);
      else ++dropped, changed = true;
      at += framed;
    }
    if (!changed) continue;
    // The temporary name must not contain "tfevents": TensorBoard would read a leftover one.
    const std::string tmp = dir + "/rewrite.tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << kept;
      if (!out.flush()) throw Error(tmp + ": write failed");
    }
    publishFile(tmp, path);
  }
  return dropped;
}

}  // namespace graft
