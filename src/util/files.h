// Small file helpers with errors that name the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace graft {

// Whole file as bytes; throws InputError("<path>: <reason>") when it cannot be read.
std::string readFile(const std::string& path);
bool fileExists(const std::string& path);
bool isDirectory(const std::string& path);
// Size of a file in bytes; 0 when it does not exist.
std::int64_t fileBytes(const std::string& path);
// Bytes free to this user on the file system that holds `path` (its folder, when `path` does not
// exist); -1 when unknown.
std::int64_t freeBytesAt(const std::string& path);
// mkdir -p; throws Error naming the path.
void makeDirectories(const std::string& path);
// fsync a file or a directory by path; throws Error naming the path.
void syncPath(const std::string& path);
// rename(2) then fsync of the parent directory: the publish step of temp + fsync + rename.
void publishFile(const std::string& tmp_path, const std::string& final_path);
std::string parentDirectory(const std::string& path);
// True when `path` ends with `tail` (".bin", "/config.json").
inline bool endsWith(std::string_view path, std::string_view tail) {
  return path.size() >= tail.size() && path.substr(path.size() - tail.size()) == tail;
}
// A file opened for reading at offsets (pread), shared by copies; closed with the last one.
class ReadOnlyFile {
 public:
  // InputError("<path>: cannot open (...)") when it cannot be opened.
  static ReadOnlyFile open(const std::string& path);
  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }
  // Exactly `n` bytes at `offset`; InputError naming the file when they are not there (it shrank).
  void readAt(std::uint64_t offset, void* out, std::size_t n) const;

 private:
  std::string path_;
  std::uint64_t size_ = 0;
  std::shared_ptr<const int> fd_;
};

// Writes `bytes` to path.tmp, then publishFile(): readers see the old file or the whole new one.
void writeFileAtomically(const std::string& path, const std::string& bytes);

}  // namespace graft
