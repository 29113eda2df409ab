#include "util/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace graft {

std::string readFile(const std::string& path) {
  if (isDirectory(path)) throw InputError(path + ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

ReadOnlyFile ReadOnlyFile::open(const std::string& path) {
  if (isDirectory(path)) throw InputError(path + ": is a directory, expected a file");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  ReadOnlyFile f;
  f.path_ = path;
  f.fd_ = std::shared_ptr<const int>(new int(fd), [](const int* p) {
    ::close(*p);
    delete p;
  });
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw InputError(path + ": cannot stat (" + std::strerror(errno) + ")");
  f.size_ = static_cast<std::uint64_t>(st.st_size);
  return f;
}

void ReadOnlyFile::readAt(std::uint64_t offset, void* out, std::size_t n) const {
  auto* at = static_cast<char*>(out);
  while (n > 0) {
    const ssize_t got = ::pread(*fd_, at, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw InputError(path_ + ": read failed at byte " + std::to_string(offset) + " (" + std::strerror(errno) + ")");
    if (got == 0) throw InputError(path_ + ": ends at byte " + std::to_string(offset) + ", before the data it should hold");
    at += got, offset += static_cast<std::uint64_t>(got), n -= static_cast<std::size_t>(got);
  }
}

bool fileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::int64_t fileBytes(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::int64_t>(st.st_size) : 0;
}

std::int64_t freeBytesAt(const std::string& path) {
  struct statvfs fs {};
  if (::statvfs(path.c_str(), &fs) != 0 && ::statvfs(parentDirectory(path).c_str(), &fs) != 0) return -1;
  return static_cast<std::int64_t>(fs.f_bavail) * static_cast<std::int64_t>(fs.f_frsize);
}

bool isDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void makeDirectories(const std::string& path) {
  std::string partial;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    partial = path.substr(0, pos);
    if (partial.empty() || isDirectory(partial)) continue;
    if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
      throw Error(partial + ": cannot create directory (" + std::strerror(errno) + ")");
  }
}

void syncPath(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(path + ": cannot open for fsync (" + std::strerror(errno) + ")");
  const int rc = ::fsync(fd);
  const int saved = errno;
  ::close(fd);
  if (rc != 0) throw Error(path + ": fsync failed (" + std::strerror(saved) + ")");
}

std::string parentDirectory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

void publishFile(const std::string& tmp_path, const std::string& final_path) {
  syncPath(tmp_path);
  if (::rename(tmp_path.c_str(), final_path.c_str()) != 0)
    throw Error(final_path + ": cannot rename from " + tmp_path + " (" + std::strerror(errno) + ")");
  syncPath(parentDirectory(final_path));
}

void writeFileAtomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp + ": cannot create (" + std::strerror(errno) + ")");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out.flush()) throw Error(tmp + ": write failed (" + std::strerror(errno) + ")");
  }
  publishFile(tmp, path);
}

}  // namespace graft
