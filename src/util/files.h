// Small file helpers with errors that name the file.
#pragma once

#include <string>
#include <string_view>

namespace graft {

// Whole file as bytes; throws InputError("<path>: <reason>") when it cannot be read.
std::string readFile(const std::string& path);
bool fileExists(const std::string& path);
bool isDirectory(const std::string& path);
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
// Writes `bytes` to path.tmp, then publishFile(): readers see the old file or the whole new one.
void writeFileAtomically(const std::string& path, const std::string& bytes);

}  // namespace graft
