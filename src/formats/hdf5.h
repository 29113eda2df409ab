// A small move-only RAII layer over the HDF5 C API, with errors that name the file and object.
// HDF5's own error printing is switched off; every failure becomes an Error (or InputError when
// reading a file that does not have what graft expects).
//
// Object paths use '/' for groups; dataset names may contain dots (parameter names do).
#pragma once

#include <ATen/core/Tensor.h>
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace graft {

// Starts the HDF5 library on this thread. A parallel HDF5 build makes MPI calls when it starts:
// call this on the main thread, with the communicator's other calls, before helper threads touch
// HDF5 (parallel/heartbeat.h).
void initialiseHdf5();

class H5File {
 public:
  static H5File create(const std::string& path);  // truncates
  static H5File openRead(const std::string& path);
  // Opens an existing file to add to it (a checkpoint finished after its ranks wrote their rows).
  static H5File openReadWrite(const std::string& path);
  // True when the file starts with the HDF5 signature.
  static bool isHdf5(const std::string& path);

  H5File(H5File&& other) noexcept;
  H5File& operator=(H5File&& other) noexcept;
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;
  ~H5File();

  const std::string& path() const { return path_; }
  // Flushes and closes; throws on failure (the destructor closes silently).
  void close();

  bool exists(const std::string& object) const;
  // True when `object` is a virtual dataset (writeVirtualRows): its rows live in other files.
  bool isVirtual(const std::string& object) const;
  // Names directly under `group`, sorted.
  std::vector<std::string> list(const std::string& group) const;

  // Tensors: float32, float64, int32, int64, uint8 (contiguous copy is made as needed); parents created.
  // Every tensor written is remembered with the CRC-32 of its bytes (see written()).
  void writeTensor(const std::string& object, const at::Tensor& tensor);
  // A float32 dataset of `global_shape` whose rows live in other files (an HDF5 virtual dataset):
  // rows [begin, end) are dataset `dataset` of file `file` (a name relative to this file's folder,
  // shaped like those rows). Readers see one whole tensor; rows whose file is missing read as NaN. `crc32` and `bytes` are those of the
  // whole tensor's bytes (for the manifest; the parts were checksummed as they were written).
  struct RowSource {
    std::string file, dataset;
    std::int64_t begin = 0, end = 0;
  };
  void writeVirtualRows(const std::string& object, const std::vector<std::int64_t>& global_shape,
                        const std::vector<RowSource>& sources, std::uint32_t crc32, std::uint64_t bytes);
  // Every tensor written through this handle, in order, with the CRC-32 and size of its bytes
  // (what a checkpoint's manifest lists: checkpoint/manifest.h).
  struct Written {
    std::string object;
    std::uint32_t crc32 = 0;
    std::uint64_t bytes = 0;
    bool operator==(const Written& o) const { return object == o.object && crc32 == o.crc32 && bytes == o.bytes; }
  };
  const std::vector<Written>& written() const { return written_; }
  // A float32 dataset of `shape` stored contiguously, its file space allocated now and never
  // filled, whose bytes are written by others with pwrite at the returned file offset (a sharded
  // checkpoint's ranks each write their own rows into the one file). written() lists it with
  // crc32 and bytes 0: the writers know them. Returns 0 for a dataset without elements.
  std::uint64_t createRawFloat32(const std::string& object, const std::vector<std::int64_t>& shape);
  at::Tensor readTensor(const std::string& object) const;
  // Where a contiguous dataset's bytes start in the file (fault injection in tests flips one).
  std::uint64_t dataOffset(const std::string& object) const;
  // Where a dataset's bytes lie in this file exactly as readTensor() would return them: stored
  // contiguously, allocated, and in the native byte layout of its element type. 0 otherwise (a
  // virtual, chunked or empty dataset, or another byte order): read it through HDF5 then.
  std::uint64_t rawOffset(const std::string& object) const;
  // Rows [begin, end) of a dataset (dim 0; a 0-d dataset is one row): a sharded run's rank reads
  // only its own rows (parallel/shard_plan.h). InputError when the range is outside the dataset.
  at::Tensor readRows(const std::string& object, std::int64_t begin, std::int64_t end) const;
  std::vector<std::int64_t> shape(const std::string& object) const;
  // The element type a dataset is stored as (InputError when it is none graft reads).
  at::ScalarType scalarType(const std::string& object) const;
  // 1-D datasets that grow: created empty and chunked, then extended by append(), so a dataset of
  // any size is written in constant memory. dtype: kInt, kLong or kByte; `data` holds `count`
  // elements of it.
  void createGrowing(const std::string& object, at::ScalarType dtype, std::int64_t chunk_elements = 1 << 16);
  void append(const std::string& object, at::ScalarType dtype, const void* data, std::int64_t count);
  // Reads elements [offset, offset + count) of a 1-D dataset into `out`, converted to int32 / uint8.
  void readSlice(const std::string& object, std::int64_t offset, std::int64_t count, std::int32_t* out) const;
  void readSlice(const std::string& object, std::int64_t offset, std::int64_t count, std::uint8_t* out) const;

  // Scalar attributes on an object ("/" for the file); parents created on write. Strings up to
  // kFixedStringAttrMax bytes are fixed-length, longer ones variable-length (no size limit: an
  // object header holds at most 64 KiB of fixed-length attributes); both read back alike.
  static constexpr std::size_t kFixedStringAttrMax = 16 << 10;
  void setAttr(const std::string& object, const std::string& key, std::int64_t value);
  void setAttr(const std::string& object, const std::string& key, double value);
  void setAttr(const std::string& object, const std::string& key, const std::string& value);
  bool hasAttr(const std::string& object, const std::string& key) const;
  std::int64_t intAttr(const std::string& object, const std::string& key) const;
  double doubleAttr(const std::string& object, const std::string& key) const;
  std::string stringAttr(const std::string& object, const std::string& key) const;

 private:
  H5File(hid_t id, std::string path) : id_(id), path_(std::move(path)) {}
  static H5File open(const std::string& path, unsigned flags);  // H5F_ACC_RDONLY or H5F_ACC_RDWR
  hid_t ensureGroup(const std::string& group);
  std::string where(const std::string& object) const;
  hid_t id_ = -1;
  std::string path_;
  std::vector<Written> written_;
};

}  // namespace graft
