// Files: a read-only memory map and an atomic writer (temp file in the same directory, fsync,
// rename, fsync of the directory), so a reader never sees a half-written file and a failed write
// leaves the previous file untouched. POSIX.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
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
    WEGEFT_CHECK(::stat(path.c_str(), &pre) == 0,
                 path << ": cannot open: " << std::strerror(errno));
    WEGEFT_CHECK(S_ISREG(pre.st_mode), path << ": not a regular file"
                                            << (S_ISDIR(pre.st_mode)    ? " (a directory)"
                                                : S_ISFIFO(pre.st_mode) ? " (a FIFO)"
                                                                        : ""));
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
      WEGEFT_CHECK(p != MAP_FAILED,
                   path << ": cannot map " << m_size << " bytes: " << std::strerror(err));
      m_data = static_cast<const unsigned char*>(p);
    } else {
      ::close(fd);
    }
  }
  MappedFile(MappedFile&& o) noexcept
      : m_path(std::move(o.m_path)), m_data(o.m_data), m_size(o.m_size) {
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

namespace detail {

/// The name prefix of temporaries written beside `target`: ".NAME.wegeft-tmp-" with NAME cut to
/// 200 bytes, so that the temporary's name fits the 255-byte limit whatever the target's length.
inline std::string temp_prefix(const std::filesystem::path& target) {
  return "." + target.filename().string().substr(0, 200) + ".wegeft-tmp-";
}

/// A fresh temporary path beside `target`: the prefix, this process's id and a random number.
inline std::string temp_path(const std::filesystem::path& target) {
  std::random_device rd;
  return (target.parent_path() /
          (temp_prefix(target) + std::to_string(::getpid()) + "-" + std::to_string(rd())))
      .string();
}

/// Removes the temporaries beside `target` (our naming) whose writing process no longer exists:
/// what a killed write left behind.
inline void remove_stale_temporaries(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  const std::string prefix = temp_prefix(target);
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());
    const std::size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || dash > 9 ||
        rest.find_first_not_of("0123456789") != dash)
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dash)));
    if (pid == ::getpid() || ::kill(pid, 0) == 0 || errno == EPERM)
      continue;  // still being written
    std::error_code ignored;
    fs::remove_all(it->path(), ignored);
  }
}

}  // namespace detail

/// Writes `path` atomically: the bytes go to a temporary file next to it (".NAME.wegeft-tmp-PID-N"),
/// which is flushed to disk and renamed over `path`. On any error the temporary file is removed,
/// `path` keeps its previous content, and wegeft::Error names the path and the reason. A replaced
/// file keeps its permission bits; a new one gets 0666 less the umask. `path` must not be a
/// symbolic link or anything but a regular file (a device, a FIFO, a directory). Temporaries of
/// earlier writes to `path` whose process was killed are removed first.
class AtomicWriter {
 public:
  explicit AtomicWriter(std::string path) : m_path(std::move(path)) {
    struct stat st {};
    mode_t mode = 0666;
    bool keep_mode = false;
    if (::lstat(m_path.c_str(), &st) == 0) {
      WEGEFT_CHECK(!S_ISLNK(st.st_mode),
                   m_path << ": is a symbolic link; wegeft replaces files atomically and does not "
                             "write through links (give the link's target instead)");
      WEGEFT_CHECK(S_ISREG(st.st_mode), m_path
                                            << ": exists and is not a regular file"
                                            << (S_ISDIR(st.st_mode)    ? " (a directory)"
                                                : S_ISFIFO(st.st_mode) ? " (a FIFO)"
                                                                       : " (a device or socket)"));
      mode = st.st_mode & 07777;
      keep_mode = true;
    }
    detail::remove_stale_temporaries(m_path);
    m_tmp = detail::temp_path(m_path);
    m_fd = ::open(m_tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    WEGEFT_CHECK(m_fd >= 0, m_path << ": cannot create a temporary file: " << std::strerror(errno));
    if (keep_mode) (void)::fchmod(m_fd, mode);
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
    WEGEFT_CHECK(
        ::rename(m_tmp.c_str(), m_path.c_str()) == 0,
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

/// Writes a directory of files as a whole. Files go into a fresh hidden sibling folder (`path(name)`);
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
    WEGEFT_CHECK(!std::filesystem::exists(p) || std::filesystem::is_directory(p),
                 m_dir << ": exists and is not a directory");
    WEGEFT_CHECK(!std::filesystem::is_symlink(p),
                 m_dir << ": is a symbolic link; wegeft replaces directories atomically "
                          "and does not write through links (give the link's target instead)");
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    detail::remove_stale_temporaries(p);
    m_tmp = detail::temp_path(p);
    WEGEFT_CHECK(::mkdir(m_tmp.c_str(), 0755) == 0,
                 m_dir << ": cannot create a temporary folder: " << std::strerror(errno));
  }
  DirectoryWriter(const DirectoryWriter&) = delete;
  DirectoryWriter& operator=(const DirectoryWriter&) = delete;
  ~DirectoryWriter() {
    std::error_code ec;
    if (!m_committed) std::filesystem::remove_all(m_tmp, ec);
  }
  /// Where to write file `name` of the directory before commit().
  std::string path(const std::string& name) const {
    return (std::filesystem::path(m_tmp) / name).string();
  }

  void commit() {
    namespace fs = std::filesystem;
    if (!fs::exists(m_dir)) {
      WEGEFT_CHECK(::rename(m_tmp.c_str(), m_dir.c_str()) == 0,
                   m_dir << ": cannot move the new directory into place: " << std::strerror(errno));
      m_committed = true;
      return;
    }
    for (const auto& e : fs::directory_iterator(m_dir)) {
      const fs::path target = fs::path(m_tmp) / e.path().filename();
      if (fs::exists(fs::symlink_status(target))) continue;  // replaced by the new content
      fs::copy(e.path(), target,
               fs::copy_options::recursive | fs::copy_options::create_hard_links |
                   fs::copy_options::copy_symlinks);
    }
    WEGEFT_CHECK(
        ::renameat2(AT_FDCWD, m_tmp.c_str(), AT_FDCWD, m_dir.c_str(), RENAME_EXCHANGE) == 0,
        m_dir << ": cannot swap the new directory into place: " << std::strerror(errno));
    m_committed = true;
    std::error_code ec;
    fs::remove_all(m_tmp, ec);  // now the old directory
  }

 private:
  std::string m_dir, m_tmp;
  bool m_committed = false;
};

/// CRC-32 (the polynomial of zlib, PNG and gzip) of `n` bytes, continuing from `crc`
/// (0 to start): crc32("123456789") = 0xCBF43926.
inline std::uint32_t crc32(const void* data, std::size_t n, std::uint32_t crc = 0) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

/// Reads a whole (small) file; throws naming the path if it cannot.
inline std::string read_text_file(const std::string& path) {
  const MappedFile f(path);
  return std::string(reinterpret_cast<const char*>(f.data()), f.size());
}

}  // namespace wegeft
