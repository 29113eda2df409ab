#include "formats/hdf5.h"

#include <torch/torch.h>

#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>

#include "util/checksum.h"
#include "util/error.h"

namespace graft {
namespace {

struct QuietHdf5 {
  QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};
void quiet() { static QuietHdf5 once; }

// This build of HDF5 is not thread-safe (no H5_HAVE_THREADSAFE), and a checkpoint may be written
// on a helper thread while training reads streamed data (checkpoint.async): every call into the
// library holds this lock. Recursive: methods call each other.
std::recursive_mutex& hdf5Mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}
struct Hdf5Lock {
  std::lock_guard<std::recursive_mutex> guard{hdf5Mutex()};
};

// Closes an HDF5 handle of any kind at scope exit.
class Handle {
 public:
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() {
    if (id_ >= 0) H5Idec_ref(id_);  // closes a handle of any kind
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
};

hid_t memType(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return H5T_NATIVE_FLOAT;
    case at::kDouble: return H5T_NATIVE_DOUBLE;
    case at::kInt: return H5T_NATIVE_INT32;
    case at::kLong: return H5T_NATIVE_INT64;
    case at::kByte: return H5T_NATIVE_UINT8;
    default: return -1;
  }
}

at::ScalarType scalarTypeOf(hid_t type) {
  const H5T_class_t cls = H5Tget_class(type);
  const std::size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT) return size == 8 ? at::kDouble : at::kFloat;
  if (cls == H5T_INTEGER) {
    if (size == 1) return at::kByte;
    return size == 8 ? at::kLong : at::kInt;
  }
  return at::kByte;
}

std::string attrTarget(const std::string& object) { return object.empty() ? "/" : object; }

}  // namespace

void initialiseHdf5() {
  const Hdf5Lock lock;
  H5open();
  quiet();
}

H5File H5File::create(const std::string& path) {
  const Hdf5Lock lock;
  quiet();
  // CLOSE_STRONG: closing the file closes every object in it, even after a failed write (disk
  // full), so nothing is left for HDF5's exit handler to trip over.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  const hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  if (id < 0) throw Error(path + ": cannot create HDF5 file");
  return H5File(id, path);
}

H5File H5File::openRead(const std::string& path) { return open(path, H5F_ACC_RDONLY); }

H5File H5File::openReadWrite(const std::string& path) { return open(path, H5F_ACC_RDWR); }

H5File H5File::open(const std::string& path, unsigned flags) {
  const Hdf5Lock lock;
  quiet();
  if (!isHdf5(path)) throw InputError(path + ": not an HDF5 file (or missing)");
  const hid_t id = H5Fopen(path.c_str(), flags, H5P_DEFAULT);
  if (id < 0) throw InputError(path + ": cannot open HDF5 file (truncated or corrupt?)");
  return H5File(id, path);
}

bool H5File::isHdf5(const std::string& path) {
  const Hdf5Lock lock;
  std::ifstream in(path, std::ios::binary);
  char sig[8] = {};
  if (!in.read(sig, 8)) return false;
  return std::memcmp(sig, "\x89HDF\r\n\x1a\n", 8) == 0;
}

H5File::H5File(H5File&& other) noexcept
    : id_(other.id_), path_(std::move(other.path_)), written_(std::move(other.written_)) {
  const Hdf5Lock lock;
  other.id_ = -1;
}

H5File& H5File::operator=(H5File&& other) noexcept {
  const Hdf5Lock lock;
  if (this != &other) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = other.id_;
    path_ = std::move(other.path_);
    written_ = std::move(other.written_);
    other.id_ = -1;
  }
  return *this;
}

H5File::~H5File() {
  const Hdf5Lock lock;
  if (id_ >= 0) H5Fclose(id_);
}

void H5File::close() {
  const Hdf5Lock lock;
  if (id_ < 0) return;
  const herr_t flushed = H5Fflush(id_, H5F_SCOPE_GLOBAL);
  const herr_t closed = H5Fclose(id_);
  id_ = -1;
  if (flushed < 0 || closed < 0) throw Error(path_ + ": HDF5 flush/close failed (disk full?)");
}

std::string H5File::where(const std::string& object) const { return path_ + ":" + object; }

bool H5File::exists(const std::string& object) const {
  const Hdf5Lock lock;
  if (object == "/" || object.empty()) return true;
  // Check each prefix: H5Lexists fails on a missing intermediate group.
  std::size_t pos = 0;
  while (true) {
    pos = object.find('/', pos + 1);
    const std::string prefix = object.substr(0, pos);
    if (!prefix.empty() && prefix != "/" && H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

std::vector<std::string> H5File::list(const std::string& group) const {
  const Hdf5Lock lock;
  std::vector<std::string> names;
  if (!exists(group)) return names;
  Handle g(H5Gopen2(id_, group.c_str(), H5P_DEFAULT));
  if (!g.ok()) throw InputError(where(group) + ": not a group");
  H5G_info_t info{};
  H5Gget_info(g.get(), &info);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    std::string name(static_cast<std::size_t>(len), '\0');
    H5Lget_name_by_idx(g.get(), ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size() + 1, H5P_DEFAULT);
    names.push_back(name);
  }
  return names;
}

hid_t H5File::ensureGroup(const std::string& group) {
  const Hdf5Lock lock;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = group.find('/', pos + 1);
    const std::string prefix = group.substr(0, pos);
    if (prefix.empty() || prefix == "/") continue;
    if (H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) {
      const hid_t g = H5Gcreate2(id_, prefix.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      if (g < 0) throw Error(where(prefix) + ": cannot create group");
      H5Gclose(g);
    }
  }
  return 0;
}

void H5File::writeTensor(const std::string& object, const at::Tensor& tensor) {
  const Hdf5Lock lock;
  ensureGroup(object.substr(0, object.find_last_of('/')));
  auto t = tensor.detach().cpu().contiguous();
  const hid_t type = memType(t.scalar_type());
  if (type < 0) throw Error(where(object) + ": unsupported dtype " + std::string(c10::toString(t.scalar_type())));
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle ds(H5Dcreate2(id_, object.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!ds.ok()) throw Error(where(object) + ": cannot create dataset");
  if (t.numel() > 0 && H5Dwrite(ds.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
    throw Error(where(object) + ": write failed (disk full?)");
  const std::size_t bytes = static_cast<std::size_t>(t.numel()) * t.element_size();
  written_.push_back({object, crc32(t.data_ptr(), bytes), static_cast<std::uint64_t>(bytes)});
}

std::uint64_t H5File::createRawFloat32(const std::string& object, const std::vector<std::int64_t>& shape) {
  const Hdf5Lock lock;
  ensureGroup(object.substr(0, object.find_last_of('/')));
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  if (H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS) < 0 || H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY) < 0 ||
      H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER) < 0)
    throw Error(where(object) + ": cannot set up a contiguous dataset");
  Handle ds(H5Dcreate2(id_, object.c_str(), H5T_NATIVE_FLOAT, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!ds.ok()) throw Error(where(object) + ": cannot create dataset (disk full?)");
  written_.push_back({object, 0, 0});
  std::int64_t elements = 1;
  for (const auto d : shape) elements *= d;
  if (elements == 0) return 0;
  const haddr_t offset = H5Dget_offset(ds.get());
  if (offset == HADDR_UNDEF) throw Error(where(object) + ": the dataset has no file offset");
  return static_cast<std::uint64_t>(offset);
}

std::uint64_t H5File::dataOffset(const std::string& object) const {
  const Hdf5Lock lock;
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw InputError(where(object) + ": no such dataset");
  const haddr_t offset = H5Dget_offset(ds.get());
  if (offset == HADDR_UNDEF) throw Error(where(object) + ": not stored contiguously in this file");
  return static_cast<std::uint64_t>(offset);
}

std::uint64_t H5File::rawOffset(const std::string& object) const {
  const Hdf5Lock lock;
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw InputError(where(object) + ": no such dataset");
  Handle dcpl(H5Dget_create_plist(ds.get()));
  if (!dcpl.ok() || H5Pget_layout(dcpl.get()) != H5D_CONTIGUOUS) return 0;
  Handle ftype(H5Dget_type(ds.get()));
  const hid_t native = memType(scalarTypeOf(ftype.get()));
  if (native < 0 || H5Tequal(ftype.get(), native) <= 0) return 0;
  const haddr_t offset = H5Dget_offset(ds.get());
  return offset == HADDR_UNDEF ? 0 : static_cast<std::uint64_t>(offset);
}

void H5File::writeVirtualRows(const std::string& object, const std::vector<std::int64_t>& global_shape,
                              const std::vector<RowSource>& sources, std::uint32_t crc, std::uint64_t bytes) {
  const Hdf5Lock lock;
  ensureGroup(object.substr(0, object.find_last_of('/')));
  if (global_shape.empty()) throw Error(where(object) + ": a virtual dataset needs at least one dimension");
  std::vector<hsize_t> dims(global_shape.begin(), global_shape.end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  // Rows whose part file is missing read as NaN, not as zeros that look like data.
  const float missing = std::numeric_limits<float>::quiet_NaN();
  H5Pset_fill_value(dcpl.get(), H5T_NATIVE_FLOAT, &missing);
  for (const auto& source : sources) {
    if (source.end <= source.begin) continue;
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = static_cast<hsize_t>(source.begin);
    count[0] = static_cast<hsize_t>(source.end - source.begin);
    Handle selected(H5Scopy(space.get()));
    Handle rows(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
    if (H5Sselect_hyperslab(selected.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0 ||
        H5Pset_virtual(dcpl.get(), selected.get(), source.file.c_str(), source.dataset.c_str(), rows.get()) < 0)
      throw Error(where(object) + ": cannot map rows " + std::to_string(source.begin) + ".." + std::to_string(source.end) +
                  " to " + source.file);
  }
  Handle ds(H5Dcreate2(id_, object.c_str(), H5T_NATIVE_FLOAT, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!ds.ok()) throw Error(where(object) + ": cannot create virtual dataset");
  written_.push_back({object, crc, bytes});
}

void H5File::createGrowing(const std::string& object, at::ScalarType dtype, std::int64_t chunk_elements) {
  const Hdf5Lock lock;
  ensureGroup(object.substr(0, object.find_last_of('/')));
  const hid_t type = memType(dtype);
  if (type < 0) throw Error(where(object) + ": unsupported dtype for a growing dataset");
  hsize_t zero = 0, unlimited = H5S_UNLIMITED, chunk = static_cast<hsize_t>(chunk_elements);
  Handle space(H5Screate_simple(1, &zero, &unlimited));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.get(), 1, &chunk);
  Handle ds(H5Dcreate2(id_, object.c_str(), type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!ds.ok()) throw Error(where(object) + ": cannot create dataset");
}

void H5File::append(const std::string& object, at::ScalarType dtype, const void* data, std::int64_t count) {
  const Hdf5Lock lock;
  if (count <= 0) return;
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw Error(where(object) + ": missing dataset");
  hsize_t size = 0;
  {
    Handle space(H5Dget_space(ds.get()));
    H5Sget_simple_extent_dims(space.get(), &size, nullptr);
  }
  hsize_t grown = size + static_cast<hsize_t>(count), n = static_cast<hsize_t>(count);
  if (H5Dset_extent(ds.get(), &grown) < 0) throw Error(where(object) + ": cannot grow (disk full?)");
  Handle space(H5Dget_space(ds.get()));
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &size, nullptr, &n, nullptr);
  Handle mem(H5Screate_simple(1, &n, nullptr));
  if (H5Dwrite(ds.get(), memType(dtype), mem.get(), space.get(), H5P_DEFAULT, data) < 0)
    throw Error(where(object) + ": write failed (disk full?)");
}

std::vector<std::int64_t> H5File::shape(const std::string& object) const {
  const Hdf5Lock lock;
  if (!exists(object)) throw InputError(where(object) + ": missing");
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw InputError(where(object) + ": not a dataset");
  Handle space(H5Dget_space(ds.get()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0 || rank > 8) throw InputError(where(object) + ": bad dataspace");
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<std::int64_t>(dims.begin(), dims.end());
}

at::Tensor H5File::readTensor(const std::string& object) const {
  const Hdf5Lock lock;
  const auto dims = shape(object);
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  Handle ftype(H5Dget_type(ds.get()));
  auto t = torch::empty(dims, torch::TensorOptions().dtype(scalarTypeOf(ftype.get())));
  if (t.numel() > 0 && H5Dread(ds.get(), memType(t.scalar_type()), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) < 0)
    throw InputError(where(object) + ": read failed (truncated or corrupt file?)");
  return t;
}

bool H5File::isVirtual(const std::string& object) const {
  const Hdf5Lock lock;
  if (!exists(object)) return false;
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) return false;
  Handle dcpl(H5Dget_create_plist(ds.get()));
  return dcpl.ok() && H5Pget_layout(dcpl.get()) == H5D_VIRTUAL;
}

at::Tensor H5File::readRows(const std::string& object, std::int64_t begin, std::int64_t end) const {
  const Hdf5Lock lock;
  const auto dims = shape(object);
  const std::int64_t rows = dims.empty() ? 1 : dims[0];
  if (begin < 0 || end < begin || end > rows)
    throw InputError(where(object) + ": rows " + std::to_string(begin) + ".." + std::to_string(end) + " asked of " +
                     std::to_string(rows));
  if (dims.empty()) return readTensor(object);
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  Handle ftype(H5Dget_type(ds.get()));
  std::vector<std::int64_t> part = dims;
  part[0] = end - begin;
  auto t = torch::empty(part, torch::TensorOptions().dtype(scalarTypeOf(ftype.get())));
  if (t.numel() == 0) return t;
  std::vector<hsize_t> start(dims.size(), 0), count(part.begin(), part.end());
  start[0] = static_cast<hsize_t>(begin);
  Handle space(H5Dget_space(ds.get()));
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  Handle mem(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
  if (H5Dread(ds.get(), memType(t.scalar_type()), mem.get(), space.get(), H5P_DEFAULT, t.data_ptr()) < 0)
    throw InputError(where(object) + ": cannot read rows " + std::to_string(begin) + ".." + std::to_string(end) +
                     " (truncated or corrupt file?)");
  return t;
}

at::ScalarType H5File::scalarType(const std::string& object) const {
  const Hdf5Lock lock;
  Handle ds(H5Dopen2(id_, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw InputError(where(object) + ": missing dataset");
  Handle ftype(H5Dget_type(ds.get()));
  return scalarTypeOf(ftype.get());
}

namespace {
void readSliceAs(hid_t file, const std::string& where, const std::string& object, std::int64_t offset, std::int64_t count,
                 hid_t mem_type, void* out) {
  Handle ds(H5Dopen2(file, object.c_str(), H5P_DEFAULT));
  if (!ds.ok()) throw InputError(where + ": missing dataset");
  Handle space(H5Dget_space(ds.get()));
  hsize_t start = static_cast<hsize_t>(offset), n = static_cast<hsize_t>(count);
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr);
  Handle mem(H5Screate_simple(1, &n, nullptr));
  if (H5Dread(ds.get(), mem_type, mem.get(), space.get(), H5P_DEFAULT, out) < 0)
    throw InputError(where + ": cannot read elements " + std::to_string(offset) + ".." + std::to_string(offset + count));
}
}  // namespace

void H5File::readSlice(const std::string& object, std::int64_t offset, std::int64_t count, std::int32_t* out) const {
  const Hdf5Lock lock;
  readSliceAs(id_, where(object), object, offset, count, H5T_NATIVE_INT32, out);
}

void H5File::readSlice(const std::string& object, std::int64_t offset, std::int64_t count, std::uint8_t* out) const {
  const Hdf5Lock lock;
  readSliceAs(id_, where(object), object, offset, count, H5T_NATIVE_UINT8, out);
}

namespace {
template <typename Writer>
void putAttr(hid_t file, const std::string& where, const std::string& object, const std::string& key, hid_t type,
             hid_t space, Writer write) {
  Handle obj(H5Oopen(file, attrTarget(object).c_str(), H5P_DEFAULT));
  if (!obj.ok()) throw Error(where + ": cannot open for attribute " + key);
  if (H5Aexists(obj.get(), key.c_str()) > 0) H5Adelete(obj.get(), key.c_str());
  Handle attr(H5Acreate2(obj.get(), key.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT));
  if (!attr.ok() || write(attr.get()) < 0) throw Error(where + ": cannot write attribute " + key);
}
}  // namespace

void H5File::setAttr(const std::string& object, const std::string& key, std::int64_t value) {
  const Hdf5Lock lock;
  ensureGroup(attrTarget(object));
  Handle space(H5Screate(H5S_SCALAR));
  putAttr(id_, where(object), object, key, H5T_NATIVE_INT64, space.get(),
          [&](hid_t a) { return H5Awrite(a, H5T_NATIVE_INT64, &value); });
}

void H5File::setAttr(const std::string& object, const std::string& key, double value) {
  const Hdf5Lock lock;
  ensureGroup(attrTarget(object));
  Handle space(H5Screate(H5S_SCALAR));
  putAttr(id_, where(object), object, key, H5T_NATIVE_DOUBLE, space.get(),
          [&](hid_t a) { return H5Awrite(a, H5T_NATIVE_DOUBLE, &value); });
}

void H5File::setAttr(const std::string& object, const std::string& key, const std::string& value) {
  const Hdf5Lock lock;
  ensureGroup(attrTarget(object));
  if (value.size() > kFixedStringAttrMax) {
    // A fixed-length string lives in the object header, which holds at most 64 KiB of attributes;
    // a variable-length one keeps only a reference there (its bytes go to the global heap).
    Handle type(H5Tcopy(H5T_C_S1));
    H5Tset_size(type.get(), H5T_VARIABLE);
    Handle space(H5Screate(H5S_SCALAR));
    const char* text = value.c_str();
    putAttr(id_, where(object), object, key, type.get(), space.get(),
            [&](hid_t a) { return H5Awrite(a, type.get(), &text); });
    return;
  }
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), value.empty() ? 1 : value.size());
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  Handle space(H5Screate(H5S_SCALAR));
  const std::string padded = value.empty() ? std::string(1, '\0') : value;
  putAttr(id_, where(object), object, key, type.get(), space.get(),
          [&](hid_t a) { return H5Awrite(a, type.get(), padded.data()); });
}

bool H5File::hasAttr(const std::string& object, const std::string& key) const {
  const Hdf5Lock lock;
  if (!exists(attrTarget(object))) return false;
  return H5Aexists_by_name(id_, attrTarget(object).c_str(), key.c_str(), H5P_DEFAULT) > 0;
}

namespace {
hid_t openAttr(hid_t file, const std::string& where, const std::string& object, const std::string& key) {
  const hid_t attr = H5Aexists_by_name(file, attrTarget(object).c_str(), key.c_str(), H5P_DEFAULT) > 0
                         ? H5Aopen_by_name(file, attrTarget(object).c_str(), key.c_str(), H5P_DEFAULT, H5P_DEFAULT)
                         : -1;
  if (attr < 0) throw InputError(where + ": missing attribute '" + key + "'");
  return attr;
}
}  // namespace

std::int64_t H5File::intAttr(const std::string& object, const std::string& key) const {
  const Hdf5Lock lock;
  std::int64_t v = 0;
  Handle attr(openAttr(id_, where(object), object, key));
  if (H5Aread(attr.get(), H5T_NATIVE_INT64, &v) < 0) throw InputError(where(object) + ": attribute '" + key + "' is not an integer");
  return v;
}

double H5File::doubleAttr(const std::string& object, const std::string& key) const {
  const Hdf5Lock lock;
  double v = 0;
  Handle attr(openAttr(id_, where(object), object, key));
  if (H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &v) < 0) throw InputError(where(object) + ": attribute '" + key + "' is not a number");
  return v;
}

std::string H5File::stringAttr(const std::string& object, const std::string& key) const {
  const Hdf5Lock lock;
  Handle attr(openAttr(id_, where(object), object, key));
  Handle type(H5Aget_type(attr.get()));
  if (H5Tget_class(type.get()) != H5T_STRING) throw InputError(where(object) + ": attribute '" + key + "' is not a string");
  if (H5Tis_variable_str(type.get()) > 0) {
    char* text = nullptr;
    Handle mem(H5Tget_native_type(type.get(), H5T_DIR_ASCEND));
    if (H5Aread(attr.get(), mem.get(), &text) < 0) throw InputError(where(object) + ": cannot read attribute '" + key + "'");
    std::string out = text ? text : "";
    H5free_memory(text);
    return out;
  }
  std::string out(H5Tget_size(type.get()), '\0');
  if (H5Aread(attr.get(), type.get(), out.data()) < 0) throw InputError(where(object) + ": cannot read attribute '" + key + "'");
  out.resize(std::strlen(out.c_str()));
  return out;
}

}  // namespace graft
