// Internal to journal/: file descriptors, directory operations relative to an open directory, the
// names of segment files, and the errors they raise. Not installed, not for other layers.
#pragma once

#include <shmq/shmq.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace shmq::journal::detail {

// An owned file descriptor: closed on destruction, movable.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  int release() noexcept { const int f = fd_; fd_ = -1; return f; }
  void reset() noexcept;

 private:
  int fd_ = -1;
};

// Errors. Every message starts with "shmq journal '<dir>'"; system_error appends the cause.
[[noreturn]] void throw_errno(int err, const std::filesystem::path& dir, const std::string& what);
[[noreturn]] void throw_error(std::errc code, const std::filesystem::path& dir, const std::string& what);

// Creates DIR with mode 0700 if it is missing (its parent must exist), then opens it. A DIR it
// creates is made durable: its parent is fsync'd after the mkdir.
Fd open_or_create_dir(const std::filesystem::path& dir);
// Creates DIR and every missing parent, each mode 0700 whatever the umask (mkdir, then fchmod of
// the new directory opened with O_NOFOLLOW), fsyncing the parent of each directory it creates, so
// that after a host crash the path still leads to DIR. Existing components are used as they are.
void create_directories(const std::filesystem::path& dir);
// Opens DIR, which must exist.
Fd open_dir(const std::filesystem::path& dir);
void sync_dir(int dirfd, const std::filesystem::path& dir);

// Segment files: "%020llu.log".
inline constexpr std::size_t kSegmentNameLength = 24;
std::string segment_name(std::uint64_t first_position);
std::optional<std::uint64_t> parse_segment_name(std::string_view name) noexcept;

struct SegmentFile {
  std::uint64_t first;  // from the name
  std::string name;
};
// The segment files of the directory, in position order (other names are ignored).
std::vector<SegmentFile> list_segments(int dirfd, const std::filesystem::path& dir);

// Opens NAME in the directory without following a symlink and checks it is a regular file.
Fd open_regular(int dirfd, const std::filesystem::path& dir, const std::string& name, int flags);
std::uint64_t file_size(int fd, const std::filesystem::path& dir, const std::string& name);

// Whole-buffer I/O at an offset, looping over short transfers and EINTR. Throw with the errno.
void write_all_at(int fd, std::span<const std::byte> bytes, std::uint64_t offset, const std::filesystem::path& dir,
                  const std::string& name);
// Reads exactly BYTES.size() bytes; throws if the file ends first (it shrank).
void read_all_at(int fd, std::span<std::byte> bytes, std::uint64_t offset, const std::filesystem::path& dir,
                 const std::string& name);

}  // namespace shmq::journal::detail
