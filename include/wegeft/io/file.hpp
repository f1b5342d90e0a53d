// Files: a read-only memory map and an atomic writer (temp file in the same directory, fsync,
// rename, fsync of the directory), so a reader never sees a half-written file and a failed write
// leaves the previous file untouched. POSIX.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
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
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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

/// Reads a whole (small) file; throws naming the path if it cannot.
inline std::string read_text_file(const std::string& path) {
  const MappedFile f(path);
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

}  // namespace wegeft
