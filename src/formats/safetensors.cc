#include "formats/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <unordered_set>

#include "util/error.h"
#include "util/files.h"
#include "util/json.h"

// Tensor bytes are copied to and from memory as they are stored, which is little endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace graft {
namespace {

// The reference implementation's limit; real headers are well under 1 MB.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// parseJson builds a 112-byte node per JSON value, so a 100 MB header of "0,0,0,..." would take
// gigabytes before any validation. Two million values is about 250,000 tensors, far above any
// real file, and bounds the parse to a few hundred MB.
constexpr std::uint64_t kMaxHeaderValues = 2'000'000;

constexpr StDType kAllDTypes[] = {StDType::F64, StDType::F32, StDType::F16, StDType::BF16, StDType::I64,
                                  StDType::I32, StDType::I16, StDType::I8,  StDType::U8,   StDType::BOOL};

// Names and dtype strings come from the file: escape control bytes and cap the length, so every
// error stays one readable line.
std::string printable(const std::string& s, std::size_t max_chars = 200) {
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max_chars; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_chars) out += "...";
  return out;
}

std::string shapeString(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::string rangeString(std::uint64_t begin, std::uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// numel of a shape with no negative dims, or false on 64-bit overflow. A zero dim anywhere makes
// the tensor empty whatever the other dims are, so it is looked for before multiplying.
bool checkedNumel(const std::vector<std::int64_t>& shape, std::uint64_t& numel) {
  numel = 0;
  for (std::int64_t d : shape)
    if (d == 0) return true;
  numel = 1;
  for (std::int64_t d : shape)
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel)) return false;
  return true;
}

// An upper bound on the JSON values in `text`: each one but the first follows ',', '[' or '{'
// (outside strings).
std::uint64_t countJsonValues(const std::string& text) {
  std::uint64_t n = 1;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == ',' || c == '[' || c == '{') {
      ++n;
    }
  }
  return n;
}

bool parseDType(const std::string& s, StDType& out) {
  for (StDType d : kAllDTypes)
    if (s == stDTypeName(d)) {
      out = d;
      return true;
    }
  return false;
}

bool isFloatDType(StDType d) {
  return d == StDType::F64 || d == StDType::F32 || d == StDType::F16 || d == StDType::BF16;
}

// Round to nearest even like the cast, but spelled out for doubles beyond float's range, where
// the cast is undefined behaviour in C++.
float doubleToFloat(double d) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (std::isfinite(d) && std::fabs(d) > kMax) {
    const double halfway = std::ldexp(1.0, 128) - std::ldexp(1.0, 103);  // FLT_MAX + half an ulp
    const float mag = std::fabs(d) >= halfway ? std::numeric_limits<float>::infinity() : static_cast<float>(kMax);
    return d < 0 ? -mag : mag;
  }
  return static_cast<float>(d);
}

std::uint32_t floatBits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float bitsFloat(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

const char* stDTypeName(StDType dtype) {
  switch (dtype) {
    case StDType::F64: return "F64";
    case StDType::F32: return "F32";
    case StDType::F16: return "F16";
    case StDType::BF16: return "BF16";
    case StDType::I64: return "I64";
    case StDType::I32: return "I32";
    case StDType::I16: return "I16";
    case StDType::I8: return "I8";
    case StDType::U8: return "U8";
    case StDType::BOOL: return "BOOL";
  }
  return "?";
}

std::size_t stDTypeSize(StDType dtype) {
  switch (dtype) {
    case StDType::F64: case StDType::I64: return 8;
    case StDType::F32: case StDType::I32: return 4;
    case StDType::F16: case StDType::BF16: case StDType::I16: return 2;
    case StDType::I8: case StDType::U8: case StDType::BOOL: return 1;
  }
  return 0;
}

std::int64_t StTensorInfo::numel() const {
  std::uint64_t n = 0;
  if (!checkedNumel(shape, n) || n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    throw Error("tensor " + printable(name) + ": shape " + shapeString(shape) + " has no 64-bit element count");
  return static_cast<std::int64_t>(n);
}

// ---------------------------------------------------------------------------------------------
// Conversions

float halfToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exp = (h >> 10) & 0x1F;
  std::uint32_t mant = h & 0x3FF;
  if (exp == 0x1F) return bitsFloat(sign | 0x7F800000 | (mant << 13));  // inf, nan (payload kept)
  if (exp == 0) {
    if (mant == 0) return bitsFloat(sign);
    // Subnormal: normalise; 2^-14 is float exponent 113.
    exp = 113;
    while (!(mant & 0x400)) {
      mant <<= 1;
      --exp;
    }
    return bitsFloat(sign | (exp << 23) | ((mant & 0x3FF) << 13));
  }
  return bitsFloat(sign | ((exp + 112) << 23) | (mant << 13));
}

std::uint16_t floatToHalf(float f) {
  const std::uint32_t x = floatBits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
  const std::uint32_t ax = x & 0x7FFFFFFF;
  if (ax > 0x7F800000) return sign | 0x7E00 | static_cast<std::uint16_t>((ax >> 13) & 0x3FF);  // quiet nan
  if (ax >= 0x47800000) return sign | 0x7C00;  // >= 2^16 (or inf): infinity
  if (ax < 0x38800000) {
    // Below 2^-14: a half subnormal, in units of 2^-24. Integer rounding, so the result does not
    // depend on the floating-point environment.
    const std::uint32_t e = ax >> 23;
    if (e < 102) return sign;  // below 2^-25, the halfway point to the smallest subnormal
    const std::uint32_t m = (ax & 0x7FFFFF) | 0x800000;
    const std::uint32_t shift = 126 - e;  // 14..24
    std::uint32_t q = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;  // may carry into the smallest normal, correctly
    return sign | static_cast<std::uint16_t>(q);
  }
  // Normal: rebias the exponent, round the 13 dropped bits to nearest even. A carry out of the
  // mantissa bumps the exponent, up to infinity for values from 65520.
  const std::uint32_t rounded = ax + 0xFFF + ((ax >> 13) & 1);
  return sign | static_cast<std::uint16_t>((rounded - (112u << 23)) >> 13);
}

float bf16ToFloat(std::uint16_t b) { return bitsFloat(static_cast<std::uint32_t>(b) << 16); }

std::uint16_t floatToBf16(float f) {
  const std::uint32_t x = floatBits(f);
  if ((x & 0x7FFFFFFF) > 0x7F800000) return static_cast<std::uint16_t>((x >> 16) | 0x40);  // quiet nan
  return static_cast<std::uint16_t>((x + 0x7FFF + ((x >> 16) & 1)) >> 16);
}

// ---------------------------------------------------------------------------------------------
// Reading

struct SafetensorsFile::Source {
  std::string path;
  std::string bytes;  // the whole file, when it came from memory
  int fd = -1;        // else the open file
  mutable std::atomic<std::uint64_t> bytes_read{0};  // tensor data read so far (bytesRead())

  Source() = default;
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;
  ~Source() {
    if (fd >= 0) ::close(fd);
  }

  // Offsets are validated against the file size before any read; a short read means the file
  // shrank since open().
  void read(std::uint64_t offset, char* out, std::size_t n) const {
    if (n == 0) return;  // `out` may be null then
    bytes_read += n;
    if (fd < 0) {
      std::memcpy(out, bytes.data() + offset, n);
      return;
    }
    while (n > 0) {
      const ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) throw Error(path + ": read failed at byte " + std::to_string(offset) + " (" + std::strerror(errno) + ")");
      if (got == 0) throw InputError(path + ": file ends at byte " + std::to_string(offset) + "; was it truncated since it was opened?");
      out += got;
      offset += static_cast<std::uint64_t>(got);
      n -= static_cast<std::size_t>(got);
    }
  }
};

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  auto source = std::make_shared<Source>();
  source->path = path;
  source->fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (source->fd < 0) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(source->fd, &st) != 0) throw InputError(path + ": cannot stat (" + std::strerror(errno) + ")");
  if (S_ISDIR(st.st_mode)) throw InputError(path + ": is a directory, expected a .safetensors file");
  return parse(std::move(source), static_cast<std::uint64_t>(st.st_size), path);
}

SafetensorsFile SafetensorsFile::fromBytes(std::string bytes, const std::string& what) {
  auto source = std::make_shared<Source>();
  source->path = what;
  source->bytes = std::move(bytes);
  const std::uint64_t size = source->bytes.size();
  return parse(std::move(source), size, what);
}

SafetensorsFile SafetensorsFile::parse(std::shared_ptr<const Source> source, std::uint64_t file_size,
                                       const std::string& what) {
  if (file_size < 8)
    throw InputError(what + ": " + std::to_string(file_size) + " bytes, too short for a safetensors file (8-byte header length first)");
  unsigned char len_bytes[8];
  source->read(0, reinterpret_cast<char*>(len_bytes), 8);
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  if (header_len > kMaxHeaderBytes)
    throw InputError(what + ": header length " + std::to_string(header_len) + " is over the " +
                     std::to_string(kMaxHeaderBytes) + "-byte limit; is this a safetensors file?");
  if (header_len > file_size - 8)
    throw InputError(what + ": header length " + std::to_string(header_len) + " runs past the end of the file (" +
                     std::to_string(file_size) + " bytes); truncated?");

  std::string header(static_cast<std::size_t>(header_len), '\0');
  source->read(8, header.data(), header.size());
  source->bytes_read = 0;  // bytesRead() counts tensor data only
  if (countJsonValues(header) > kMaxHeaderValues)
    throw InputError(what + ": header holds over " + std::to_string(kMaxHeaderValues) + " JSON values; not a real safetensors header");
  Json root;
  try {
    root = parseJson(header, what + " header");
  } catch (const JsonError& e) {
    throw JsonError(printable(e.what(), std::string::npos));  // the parser quotes keys, which may hold newlines
  }

  SafetensorsFile file;
  file.path_ = what;
  file.data_start_ = 8 + header_len;
  const std::uint64_t data_size = file_size - file.data_start_;
  bool have_metadata = false;
  for (const auto& [name, entry] : root.asObject(what + " header")) {
    if (name == "__metadata__") {
      if (have_metadata) throw InputError(what + ": __metadata__ appears twice");
      have_metadata = true;
      for (const auto& [key, value] : entry.asObject(what + ": __metadata__"))
        file.metadata_.emplace_back(key, value.asString(what + ": __metadata__ key \"" + printable(key) + "\""));
      continue;
    }
    const std::string where = what + ": tensor " + printable(name);
    if (!file.index_.emplace(name, file.tensors_.size()).second) throw InputError(where + ": appears twice in the header");
    entry.asObject(where);
    StTensorInfo t;
    t.name = name;

    const std::string& dtype = entry.at("dtype", where).asString(where + ": dtype");
    if (!parseDType(dtype, t.dtype)) throw InputError(where + ": unsupported dtype \"" + printable(dtype) + "\"");

    for (const Json& d : entry.at("shape", where).asArray(where + ": shape")) {
      t.shape.push_back(d.asInt(where + ": shape"));
      if (t.shape.back() < 0) throw InputError(where + ": shape " + shapeString(t.shape) + " has a negative dimension");
    }
    std::uint64_t need = 0;
    if (!checkedNumel(t.shape, need) || __builtin_mul_overflow(need, stDTypeSize(t.dtype), &need))
      throw InputError(where + ": shape " + shapeString(t.shape) + " " + dtype + " overflows a 64-bit byte count");

    const auto& offsets = entry.at("data_offsets", where).asArray(where + ": data_offsets");
    if (offsets.size() != 2)
      throw InputError(where + ": data_offsets must be [begin, end], found " + std::to_string(offsets.size()) + " values");
    const std::int64_t begin = offsets[0].asInt(where + ": data_offsets"), end = offsets[1].asInt(where + ": data_offsets");
    if (begin < 0 || end < 0 || begin > end)
      throw InputError(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] are not a byte range");
    t.begin = static_cast<std::uint64_t>(begin);
    t.end = static_cast<std::uint64_t>(end);
    if (t.end > data_size)
      throw InputError(where + ": data_offsets " + rangeString(t.begin, t.end) + " run past the data section's " +
                       std::to_string(data_size) + " bytes; truncated file?");
    if (t.end - t.begin != need)
      throw InputError(where + ": data_offsets " + rangeString(t.begin, t.end) + " hold " + std::to_string(t.end - t.begin) +
                       " bytes but shape " + shapeString(t.shape) + " " + dtype + " needs " + std::to_string(need));
    file.tensors_.push_back(std::move(t));
  }

  // Overlap: in begin order, each non-empty range must start at or after every earlier end.
  std::vector<std::size_t> order(file.tensors_.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const auto& x = file.tensors_[a];
    const auto& y = file.tensors_[b];
    return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
  });
  const StTensorInfo* last = nullptr;  // the non-empty tensor reaching furthest so far
  for (std::size_t i : order) {
    const StTensorInfo& t = file.tensors_[i];
    if (t.begin == t.end) continue;
    if (last && t.begin < last->end)
      throw InputError(what + ": tensor " + printable(t.name) + ": data_offsets " + rangeString(t.begin, t.end) +
                       " overlap tensor " + printable(last->name) + " " + rangeString(last->begin, last->end));
    if (!last || t.end > last->end) last = &t;
  }
  file.source_ = std::move(source);
  return file;
}

const StTensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const StTensorInfo& SafetensorsFile::get(const std::string& name) const {
  const StTensorInfo* t = find(name);
  if (!t) throw InputError(path_ + ": no tensor " + printable(name));
  return *t;
}

std::string SafetensorsFile::readRaw(const std::string& name) const {
  const StTensorInfo& t = get(name);
  std::string out(static_cast<std::size_t>(t.end - t.begin), '\0');
  source_->read(data_start_ + t.begin, out.data(), out.size());
  return out;
}

std::vector<float> SafetensorsFile::readFloat32(const std::string& name) const {
  const StTensorInfo& t = get(name);
  std::vector<float> out(static_cast<std::size_t>(t.end - t.begin) / stDTypeSize(t.dtype));
  readFloat32Rows(name, 0, t.shape.empty() ? 1 : t.shape[0], out.data());
  return out;
}

namespace {
// n values of `dtype` (a floating-point type) from `raw` as float32: F16 and BF16 exactly, F64
// rounded to nearest.
void toFloat32(StDType dtype, const char* raw, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == StDType::F64) {
      double d;
      std::memcpy(&d, raw + 8 * i, 8);
      out[i] = doubleToFloat(d);
    } else {
      std::uint16_t h;
      std::memcpy(&h, raw + 2 * i, 2);
      out[i] = dtype == StDType::F16 ? halfToFloat(h) : bf16ToFloat(h);
    }
  }
}
}  // namespace

const StTensorInfo& SafetensorsFile::floatTensor(const std::string& name) const {
  const StTensorInfo& t = get(name);
  if (!isFloatDType(t.dtype))
    throw InputError(path_ + ": tensor " + printable(name) + ": dtype " + stDTypeName(t.dtype) + " is not a floating-point type");
  return t;
}

void SafetensorsFile::readFloat32Rows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const {
  const StTensorInfo& t = floatTensor(name);
  const std::int64_t rows = t.shape.empty() ? 1 : t.shape[0];
  if (begin < 0 || end < begin || end > rows)
    throw InputError(path_ + ": tensor " + printable(name) + ": rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                     ") outside its " + std::to_string(rows));
  const std::size_t size = stDTypeSize(t.dtype);
  const std::uint64_t row_bytes = rows > 0 ? (t.end - t.begin) / static_cast<std::uint64_t>(rows) : 0;
  const std::size_t n = static_cast<std::size_t>(row_bytes * static_cast<std::uint64_t>(end - begin)) / size;
  const std::uint64_t at = data_start_ + t.begin + row_bytes * static_cast<std::uint64_t>(begin);
  if (t.dtype == StDType::F32) {
    source_->read(at, reinterpret_cast<char*>(out), n * size);
    return;
  }
  std::string raw(n * size, '\0');
  source_->read(at, raw.data(), raw.size());
  toFloat32(t.dtype, raw.data(), n, out);
}

void SafetensorsFile::readFloat32Columns(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const {
  const StTensorInfo& t = floatTensor(name);
  if (t.shape.size() != 2)
    throw InputError(path_ + ": tensor " + printable(name) + ": columns asked of a tensor with " +
                     std::to_string(t.shape.size()) + " dimensions");
  const std::int64_t rows = t.shape[0], cols = t.shape[1];
  if (begin < 0 || end < begin || end > cols)
    throw InputError(path_ + ": tensor " + printable(name) + ": columns [" + std::to_string(begin) + ", " +
                     std::to_string(end) + ") outside its " + std::to_string(cols));
  const std::size_t size = stDTypeSize(t.dtype), n = static_cast<std::size_t>(end - begin);
  // One read per row, of that row's columns only (a few KB each: the row count of a weight is in
  // the thousands, and the page cache serves the rest).
  std::string raw(t.dtype == StDType::F32 ? 0 : n * size, '\0');
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint64_t at = data_start_ + t.begin + (static_cast<std::uint64_t>(r) * static_cast<std::uint64_t>(cols) +
                                                      static_cast<std::uint64_t>(begin)) * size;
    float* row = out + static_cast<std::size_t>(r) * n;
    if (t.dtype == StDType::F32) {
      source_->read(at, reinterpret_cast<char*>(row), n * size);
    } else {
      source_->read(at, raw.data(), raw.size());
      toFloat32(t.dtype, raw.data(), n, row);
    }
  }
}

std::uint64_t SafetensorsFile::bytesRead() const { return source_->bytes_read; }

// ---------------------------------------------------------------------------------------------
// Writing

void writeSafetensors(const std::string& path, const std::vector<StTensorOut>& tensors,
                      const std::vector<std::pair<std::string, std::string>>& metadata) {
  // The header is built as text: Json::set() scans for an existing key, quadratic in the tensors.
  std::string header = "{";
  if (!metadata.empty()) {
    std::unordered_set<std::string> keys;
    Json m = Json::object();
    for (const auto& [key, value] : metadata) {
      if (!keys.insert(key).second) throw Error(path + ": metadata key \"" + printable(key) + "\" given twice");
      m.set(key, value);
    }
    header += "\"__metadata__\":" + m.dump();
  }
  std::unordered_set<std::string> names;
  std::uint64_t offset = 0;
  for (const StTensorOut& t : tensors) {
    const std::string where = path + ": tensor " + printable(t.name);
    if (t.name == "__metadata__") throw Error(where + ": the name is reserved for the metadata");
    if (!names.insert(t.name).second) throw Error(where + ": given twice");
    std::uint64_t need = 0;
    if (!checkedNumel(t.shape, need) || __builtin_mul_overflow(need, stDTypeSize(t.dtype), &need) || need != t.bytes ||
        (t.bytes > 0 && !t.data))
      throw Error(where + ": " + std::to_string(t.bytes) + " bytes given for shape " + shapeString(t.shape) + " " +
                  stDTypeName(t.dtype));
    if (header.size() > 1) header += ',';
    header += Json(t.name).dump() + ":{\"dtype\":\"" + stDTypeName(t.dtype) + "\",\"shape\":[";
    for (std::size_t i = 0; i < t.shape.size(); ++i) header += (i ? "," : "") + std::to_string(t.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.bytes) + "]}";
    offset += t.bytes;
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');  // JSON whitespace; makes the data 8-aligned

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp + ": cannot create (" + std::strerror(errno) + ")");
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    for (const StTensorOut& t : tensors) out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.bytes));
    out.close();
    if (!out) {
      std::remove(tmp.c_str());
      throw Error(tmp + ": write failed (disk full?)");
    }
  }
  publishFile(tmp, path);
}

// ---------------------------------------------------------------------------------------------
// Folders

SafetensorsFolder SafetensorsFolder::open(const std::string& folder_or_file) {
  std::string single, index;
  if (isDirectory(folder_or_file)) {
    // Hugging Face transformers prefers the single file when both exist; so do we.
    if (fileExists(folder_or_file + "/model.safetensors")) single = folder_or_file + "/model.safetensors";
    else if (fileExists(folder_or_file + "/model.safetensors.index.json")) index = folder_or_file + "/model.safetensors.index.json";
    else throw InputError(folder_or_file + ": no model.safetensors or model.safetensors.index.json");
  } else if (folder_or_file.size() >= 5 && folder_or_file.compare(folder_or_file.size() - 5, 5, ".json") == 0) {
    index = folder_or_file;
  } else {
    single = folder_or_file;
  }

  SafetensorsFolder folder;
  if (!single.empty()) {
    folder.what_ = single;
    folder.shards_.push_back(std::make_shared<const SafetensorsFile>(SafetensorsFile::open(single)));
    for (const StTensorInfo& t : folder.shards_[0]->tensors()) folder.tensors_.emplace(t.name, Where{0, &t});
    return folder;
  }

  folder.what_ = index;
  const Json root = parseJson(readFile(index), index);
  std::unordered_map<std::string, std::size_t> shard_of_file;
  for (const auto& [name, file_json] : root.at("weight_map", index).asObject(index + ": weight_map")) {
    const std::string where = index + ": tensor " + printable(name);
    const std::string& file = file_json.asString(where);
    // Shards sit beside the index; a name reaching elsewhere is not a Hugging Face shard.
    if (file.empty() || file[0] == '/' || file == ".." || file.rfind("../", 0) == 0 || file.find("/../") != std::string::npos)
      throw InputError(where + ": shard \"" + printable(file) + "\" is not a file name beside the index");
    auto it = shard_of_file.find(file);
    if (it == shard_of_file.end()) {
      const std::string path = parentDirectory(index) + "/" + file;
      if (!fileExists(path)) throw InputError(where + ": shard " + printable(file) + " not found (" + printable(path) + ")");
      folder.shards_.push_back(std::make_shared<const SafetensorsFile>(SafetensorsFile::open(path)));
      it = shard_of_file.emplace(file, folder.shards_.size() - 1).first;
    }
    const StTensorInfo* info = folder.shards_[it->second]->find(name);
    if (!info) throw InputError(where + ": shard " + printable(file) + " has no such tensor");
    if (!folder.tensors_.emplace(name, Where{it->second, info}).second) throw InputError(where + ": appears twice in weight_map");
  }
  return folder;
}

std::vector<std::string> SafetensorsFolder::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& entry : tensors_) out.push_back(entry.first);
  std::sort(out.begin(), out.end());
  return out;
}

const SafetensorsFolder::Where& SafetensorsFolder::where(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw InputError(what_ + ": no tensor " + printable(name));
  return it->second;
}

const StTensorInfo& SafetensorsFolder::info(const std::string& name) const { return *where(name).info; }

std::vector<float> SafetensorsFolder::readFloat32(const std::string& name) const {
  return shards_[where(name).shard]->readFloat32(name);
}

void SafetensorsFolder::readFloat32Rows(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const {
  shards_[where(name).shard]->readFloat32Rows(name, begin, end, out);
}

void SafetensorsFolder::readFloat32Columns(const std::string& name, std::int64_t begin, std::int64_t end, float* out) const {
  shards_[where(name).shard]->readFloat32Columns(name, begin, end, out);
}

std::uint64_t SafetensorsFolder::bytesRead() const {
  std::uint64_t total = 0;
  for (const auto& shard : shards_) total += shard->bytesRead();
  return total;
}

std::string SafetensorsFolder::fileOf(const std::string& name) const { return shards_[where(name).shard]->path(); }

}  // namespace graft
