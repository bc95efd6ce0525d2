#include "journal/files.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

namespace shmq::journal::detail {

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.release();
  }
  return *this;
}
Fd::~Fd() { reset(); }
void Fd::reset() noexcept {
  if (fd_ >= 0) ::close(fd_);  // close errors carry no information about data: fsync reported them
  fd_ = -1;
}

namespace {
std::string prefix(const std::filesystem::path& dir) { return "shmq journal '" + dir.string() + "': "; }
}  // namespace

void throw_errno(int err, const std::filesystem::path& dir, const std::string& what) {
  throw Error(std::error_code(err, std::generic_category()), prefix(dir) + what);
}
void throw_error(std::errc code, const std::filesystem::path& dir, const std::string& what) {
  throw Error(std::make_error_code(code), prefix(dir) + what);
}

Fd open_dir(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno(errno, dir, "cannot open the journal directory");
  return Fd(fd);
}

namespace {
// After creating DIR: fsync its parent, which now names it.
void sync_parent_of(const std::filesystem::path& dir) {
  std::filesystem::path parent = dir.parent_path();
  if (parent.empty()) parent = ".";
  const int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_errno(errno, dir, "cannot open the parent directory " + parent.string() + " to make the new directory durable");
  const Fd owned(fd);
  if (::fsync(fd) != 0) throw_errno(errno, dir, "fsync of the parent directory " + parent.string() + " failed");
}
}  // namespace

Fd open_or_create_dir(const std::filesystem::path& dir) {
  if (dir.empty()) throw_error(std::errc::invalid_argument, dir, "empty journal directory path");
  if (::mkdir(dir.c_str(), 0700) == 0) sync_parent_of(dir);
  else if (errno != EEXIST) throw_errno(errno, dir, "cannot create the journal directory");
  return open_dir(dir);
}

void create_directories(const std::filesystem::path& dir) {
  if (dir.empty()) throw_error(std::errc::invalid_argument, dir, "empty journal directory path");
  const std::filesystem::path norm = dir.lexically_normal();
  // The missing ones, deepest first; at most as many as the path has components.
  std::vector<std::filesystem::path> missing;
  for (std::filesystem::path p = norm; !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (::stat(p.c_str(), &st) == 0) {
      if (!S_ISDIR(st.st_mode)) throw_error(std::errc::not_a_directory, dir, p.string() + " is not a directory");
      break;
    }
    if (errno != ENOENT) throw_errno(errno, dir, "stat of " + p.string() + " failed");
    missing.push_back(p);
    if (p == p.parent_path()) break;  // the root
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), 0700) != 0) {
      if (errno == EEXIST) continue;
      throw_errno(errno, dir, "cannot create directory " + it->string());
    }
    const int fd = ::open(it->c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) throw_errno(errno, dir, "cannot open the new directory " + it->string());
    const Fd made(fd);
    if (::fchmod(fd, 0700) != 0) throw_errno(errno, dir, "cannot make " + it->string() + " mode 0700");
    sync_parent_of(*it);
  }
}

void sync_dir(int dirfd, const std::filesystem::path& dir) {
  if (::fsync(dirfd) != 0) throw_errno(errno, dir, "fsync of the directory failed");
}

std::string segment_name(std::uint64_t first_position) {
  char buf[kSegmentNameLength + 1];
  std::snprintf(buf, sizeof buf, "%020llu.log", static_cast<unsigned long long>(first_position));
  return buf;
}

std::optional<std::uint64_t> parse_segment_name(std::string_view name) noexcept {
  if (name.size() != kSegmentNameLength || name.substr(20) != ".log") return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 20; ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return std::nullopt;
    const auto digit = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return std::nullopt;  // does not fit 64 bits
    v = v * 10 + digit;
  }
  return v;
}

std::vector<SegmentFile> list_segments(int dirfd, const std::filesystem::path& dir) {
  const int fd = ::dup(dirfd);
  if (fd < 0) throw_errno(errno, dir, "dup of the directory descriptor failed");
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    const int err = errno;
    ::close(fd);
    throw_errno(err, dir, "cannot list the journal directory");
  }
  ::rewinddir(d);  // the duplicate shares its offset with DIRFD
  std::vector<SegmentFile> out;
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d);
    if (e == nullptr) break;
    if (auto first = parse_segment_name(e->d_name)) out.push_back({*first, e->d_name});
  }
  const int err = errno;
  ::closedir(d);
  if (err != 0) throw_errno(err, dir, "cannot list the journal directory");
  std::sort(out.begin(), out.end(), [](const SegmentFile& a, const SegmentFile& b) { return a.first < b.first; });
  return out;
}

Fd open_regular(int dirfd, const std::filesystem::path& dir, const std::string& name, int flags) {
  const int fd = ::openat(dirfd, name.c_str(), flags | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) throw_errno(errno, dir, "cannot open " + name);
  Fd f(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_errno(errno, dir, "fstat of " + name + " failed");
  if (!S_ISREG(st.st_mode)) throw_error(std::errc::not_supported, dir, name + " is not a regular file");
  return f;
}

std::uint64_t file_size(int fd, const std::filesystem::path& dir, const std::string& name) {
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_errno(errno, dir, "fstat of " + name + " failed");
  return static_cast<std::uint64_t>(st.st_size);
}

void write_all_at(int fd, std::span<const std::byte> bytes, std::uint64_t offset, const std::filesystem::path& dir,
                  const std::string& name) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(errno, dir, "write to " + name + " at offset " + std::to_string(offset + done) + " failed");
    }
    done += static_cast<std::size_t>(n);
  }
}

void read_all_at(int fd, std::span<std::byte> bytes, std::uint64_t offset, const std::filesystem::path& dir,
                 const std::string& name) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno(errno, dir, "read of " + name + " at offset " + std::to_string(offset + done) + " failed");
    }
    if (n == 0)
      throw_error(std::errc::io_error, dir,
                  name + " shrank while being read (ends before offset " + std::to_string(offset + bytes.size()) + ")");
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace shmq::journal::detail
