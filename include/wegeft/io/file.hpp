// Files: a read-only memory map and an atomic writer (temp file in the same directory, fsync,
// rename, fsync of the directory), so a reader never sees a half-written file and a failed write
// leaves the previous file untouched. POSIX.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>

#include "wegeft/core/error.hpp"

namespace wegeft {

/// A whole file mapped read-only. Movable, not copyable.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : m_path(path) {
    // A FIFO or device would block open() or read() forever: refuse anything but a regular file
    // before opening, and open without blocking in case it changed in between.
    struct stat pre {};
    WEGEFT_CHECK(::stat(path.c_str(), &pre) == 0, path << ": cannot open: " << std::strerror(errno));
    WEGEFT_CHECK(S_ISREG(pre.st_mode), path << ": not a regular file" << (S_ISDIR(pre.st_mode) ? " (a directory)" : S_ISFIFO(pre.st_mode) ? " (a FIFO)" : ""));
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    WEGEFT_CHECK(fd >= 0, path << ": cannot open: " << std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      WEGEFT_CHECK(false, path << ": not a regular file");
    }
    m_size = static_cast<std::size_t>(st.st_size);
    if (m_size > 0) {
      void* p = ::mmap(nullptr, m_size, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      WEGEFT_CHECK(p != MAP_FAILED, path << ": cannot map " << m_size << " bytes: " << std::strerror(err));
      m_data = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  MappedFile(MappedFile&& o) noexcept : m_path(std::move(o.m_path)), m_data(o.m_data), m_size(o.m_size) {
    o.m_data = nullptr;
    o.m_size = 0;
  }
  MappedFile& operator=(MappedFile&&) = delete;
  MappedFile(const MappedFile&) = delete;
  ~MappedFile() {
    if (m_data) ::munmap(const_cast<unsigned char*>(m_data), m_size);
  }
  const unsigned char* data() const { return m_data; }
  std::size_t size() const { return m_size; }
  const std::string& path() const { return m_path; }

 private:
  std::string m_path;
  const unsigned char* m_data = nullptr;
  std::size_t m_size = 0;
};

/// Writes `path` atomically: the bytes go to a temporary file next to it, which is flushed to
/// disk and renamed over `path`. On any error the temporary file is removed, `path` keeps its
/// previous content, and wegeft::Error names the path and the reason.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path) : m_path(std::move(path)) {
    std::random_device rd;
    m_tmp = m_path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
    m_fd = ::open(m_tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    WEGEFT_CHECK(m_fd >= 0, m_path << ": cannot create a temporary file: " << std::strerror(errno));
  }
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;
  ~AtomicWriter() {
    if (m_fd >= 0) ::close(m_fd);
    if (!m_committed) ::unlink(m_tmp.c_str());
  }

  void write(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(m_fd, p, n);
      if (w < 0 && errno == EINTR) continue;
      WEGEFT_CHECK(w > 0, m_path << ": write failed: " << std::strerror(errno));
      p += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  void write(std::string_view s) { write(s.data(), s.size()); }

  /// Flushes, renames over the target and flushes the directory entry.
  void commit() {
    WEGEFT_CHECK(::fsync(m_fd) == 0, m_path << ": fsync failed: " << std::strerror(errno));
    WEGEFT_CHECK(::close(m_fd) == 0, m_path << ": close failed: " << std::strerror(errno));
    m_fd = -1;
    WEGEFT_CHECK(::rename(m_tmp.c_str(), m_path.c_str()) == 0,
                 m_path << ": cannot rename the temporary file into place: " << std::strerror(errno));
    m_committed = true;
    const std::string dir = std::filesystem::path(m_path).parent_path().string();
    const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::string m_path, m_tmp;
  int m_fd = -1;
  bool m_committed = false;
};

/// Writes a whole text file atomically.
inline void write_file_atomic(const std::string& path, std::string_view content) {
  AtomicWriter w(path);
  w.write(content);
  w.commit();
}

/// Writes a directory of files as a whole. Files go into a fresh sibling folder (`path(name)`);
/// commit() hard-links there whatever else an existing `dir` holds, then swaps the two folders in
/// one atomic rename (Linux renameat2 RENAME_EXCHANGE) and removes the old one. A reader sees the
/// old directory or the new one, never a mix; on any error before commit() `dir` is untouched and
/// the temporary folder is removed.
class DirectoryWriter {
 public:
  explicit DirectoryWriter(std::string dir) : m_dir(std::move(dir)) {
    while (!m_dir.empty() && m_dir.back() == '/') m_dir.pop_back();
    WEGEFT_CHECK(!m_dir.empty(), "an output directory needs a name");
    const std::filesystem::path p(m_dir);
    WEGEFT_CHECK(!std::filesystem::exists(p) || std::filesystem::is_directory(p), m_dir << ": exists and is not a directory");
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    std::random_device rd;
    m_tmp = m_dir + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(rd());
    WEGEFT_CHECK(::mkdir(m_tmp.c_str(), 0755) == 0, m_dir << ": cannot create a temporary folder: " << std::strerror(errno));
  }
  DirectoryWriter(const DirectoryWriter&) = delete;
  DirectoryWriter& operator=(const DirectoryWriter&) = delete;
  ~DirectoryWriter() {
    std::error_code ec;
    if (!m_committed) std::filesystem::remove_all(m_tmp, ec);
  }
  /// Where to write file `name` of the directory before commit().
  std::string path(const std::string& name) const { return (std::filesystem::path(m_tmp) / name).string(); }

  void commit() {
    namespace fs = std::filesystem;
    if (!fs::exists(m_dir)) {
      WEGEFT_CHECK(::rename(m_tmp.c_str(), m_dir.c_str()) == 0, m_dir << ": cannot move the new directory into place: "
                                                                 << std::strerror(errno));
      m_committed = true;
      return;
    }
    for (const auto& e : fs::directory_iterator(m_dir)) {
      const fs::path target = fs::path(m_tmp) / e.path().filename();
      if (fs::exists(fs::symlink_status(target))) continue;  // replaced by the new content
      fs::copy(e.path(), target, fs::copy_options::recursive | fs::copy_options::create_hard_links | fs::copy_options::copy_symlinks);
    }
    WEGEFT_CHECK(::renameat2(AT_FDCWD, m_tmp.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_EXCHANGE) == 0,
                 m_dir << ": cannot swap the new directory into place: " << std::strerror(errno));
    m_committed = true;
    std::error_code ec;
    fs::remove_all(m_tmp, ec);  // now the old directory
  }

 private:
  std::string m_dir, m_tmp;
  bool m_committed = false;
};

/// Reads a whole (small) file; throws naming the path if it cannot.
inline std::string read_text_file(const std::string& path) {
  const MappedFile f(path);
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

}  // namespace wegeft
