#include "journal/checkpoint.hpp"

#include "journal/crc32c.hpp"
#include "journal/files.hpp"
#include "shm/crash_point.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace shmq::journal {

namespace {

void check_name(const std::filesystem::path& dir, std::string_view name) {
  const auto ends_with = [&](std::string_view s) { return name.size() >= s.size() && name.substr(name.size() - s.size()) == s; };
  bool ok = !name.empty() && name.size() <= 200 && name[0] != '.' && name != "LOCK" && name != kDurableMarkName &&
            !ends_with(".tmp") && !ends_with(".log") && !ends_with(kPreviousSuffix);
  for (const char c : name)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-');
  if (!ok) detail::throw_error(std::errc::invalid_argument, dir, "invalid checkpoint name '" + std::string(name) + "'");
}

std::uint32_t checksum(const std::byte* length_field, std::span<const std::byte> bytes) {
  return mask_crc(crc32c(crc32c(0, length_field, 8), bytes.data(), bytes.size()));
}

// One file: nothing when it does not exist; the bytes when whole; else the problem.
CheckpointVersion read_version(int dirfd, const std::filesystem::path& dir, const std::string& file) {
  CheckpointVersion v;
  v.file = file;
  const int f = ::openat(dirfd, file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (f < 0) {
    if (errno == ENOENT) return v;
    if (errno == ELOOP) {
      v.exists = true;
      v.problem = "checkpoint " + file + " is a symbolic link";
      return v;
    }
    detail::throw_errno(errno, dir, "cannot open checkpoint " + file);
  }
  v.exists = true;
  detail::Fd fd(f);
  struct stat st;
  if (::fstat(f, &st) != 0) detail::throw_errno(errno, dir, "fstat of checkpoint " + file + " failed");
  const auto corrupt = [&](const std::string& why) {
    v.problem = "checkpoint " + file + " is corrupt: " + why;
    return v;
  };
  if (!S_ISREG(st.st_mode)) return corrupt("not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kCheckpointHeaderBytes) return corrupt("shorter than its header (" + std::to_string(size) + " bytes)");
  std::byte header[kCheckpointHeaderBytes];
  detail::read_all_at(f, header, 0, dir, file);
  std::uint32_t magic, crc;
  std::uint64_t length;
  std::memcpy(&magic, header, 4);
  std::memcpy(&crc, header + 4, 4);
  std::memcpy(&length, header + 8, 8);
  if (magic != kCheckpointMagic) return corrupt("bad magic");
  if (length != size - kCheckpointHeaderBytes)
    return corrupt("its header says " + std::to_string(length) + " bytes, the file holds " +
                   std::to_string(size - kCheckpointHeaderBytes));
  std::vector<std::byte> bytes(static_cast<std::size_t>(length));
  detail::read_all_at(f, bytes, kCheckpointHeaderBytes, dir, file);
  if (checksum(header + 8, bytes) != crc) return corrupt("checksum mismatch");
  v.bytes = std::move(bytes);
  return v;
}

}  // namespace

void write_checkpoint(const std::filesystem::path& dir, std::string_view name, std::span<const std::byte> bytes,
                      unsigned mode, void (*after_write)()) {
  check_name(dir, name);
  if ((mode & ~0777u) != 0) detail::throw_error(std::errc::invalid_argument, dir, "checkpoint mode beyond 0777");
  const detail::Fd dirfd = detail::open_or_create_dir(dir);
  const std::string final_name(name);
  const std::string tmp = final_name + ".tmp";
  const std::string prev = final_name + std::string(kPreviousSuffix);

  std::byte header[kCheckpointHeaderBytes];
  const std::uint64_t length = bytes.size();
  std::memcpy(header, &kCheckpointMagic, 4);
  std::memcpy(header + 8, &length, 8);
  const std::uint32_t crc = checksum(header + 8, bytes);
  std::memcpy(header + 4, &crc, 4);

  // A NAME.tmp left by a crash is replaced; O_EXCL then makes sure we write a file of our own.
  if (::unlinkat(dirfd.get(), tmp.c_str(), 0) != 0 && errno != ENOENT)
    detail::throw_errno(errno, dir, "cannot remove the leftover " + tmp);
  const int f = ::openat(dirfd.get(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                         static_cast<mode_t>(mode));
  if (f < 0) detail::throw_errno(errno, dir, "cannot create checkpoint " + tmp);
  detail::Fd fd(f);
  if (::fchmod(f, static_cast<mode_t>(mode)) != 0) detail::throw_errno(errno, dir, "fchmod of " + tmp + " failed");
  detail::write_all_at(f, header, 0, dir, tmp);
  detail::write_all_at(f, bytes, kCheckpointHeaderBytes, dir, tmp);
  if (::fdatasync(f) != 0) detail::throw_errno(errno, dir, "fdatasync of " + tmp + " failed");
  fd.reset();
  if (after_write) after_write();
  // Keep the current version as NAME.prev: a hard link, so that NAME exists at every instant. A
  // crash between the unlink and the link leaves NAME alone (the previous version is then the one
  // before it, gone: one version fewer to fall back to, never a wrong one).
  if (::unlinkat(dirfd.get(), prev.c_str(), 0) != 0 && errno != ENOENT)
    detail::throw_errno(errno, dir, "cannot remove the previous checkpoint " + prev);
  // A file system without hard links (EPERM, ENOTSUP, EMLINK) keeps no previous version: the
  // fallback is then the journal alone, and the checkpoint itself is still written.
  if (::linkat(dirfd.get(), final_name.c_str(), dirfd.get(), prev.c_str(), 0) != 0 && errno != ENOENT &&
      errno != EPERM && errno != ENOTSUP && errno != EOPNOTSUPP && errno != EMLINK)
    detail::throw_errno(errno, dir, "cannot keep " + final_name + " as " + prev);
  SHMQ_CRASH_POINT("checkpoint.after_keep_previous");
  if (::renameat(dirfd.get(), tmp.c_str(), dirfd.get(), final_name.c_str()) != 0)
    detail::throw_errno(errno, dir, "cannot rename " + tmp + " to " + final_name);
  detail::sync_dir(dirfd.get(), dir);
}

std::array<CheckpointVersion, 2> read_checkpoint_versions(const std::filesystem::path& dir, std::string_view name) {
  check_name(dir, name);
  const detail::Fd dirfd = detail::open_dir(dir);
  const std::string file(name);
  return {read_version(dirfd.get(), dir, file), read_version(dirfd.get(), dir, file + std::string(kPreviousSuffix))};
}

std::optional<std::vector<std::byte>> read_checkpoint(const std::filesystem::path& dir, std::string_view name) {
  auto versions = read_checkpoint_versions(dir, name);
  if (!versions[0].exists && !versions[1].exists) return std::nullopt;
  for (auto& v : versions)
    if (v.bytes) return std::move(v.bytes);
  std::string why;
  for (const auto& v : versions)
    if (v.exists) why += (why.empty() ? "" : "; ") + v.problem;
  detail::throw_error(std::errc::illegal_byte_sequence, dir, why);
}

// ---- the durable mark --------------------------------------------------------------------------

namespace {
std::uint32_t mark_checksum(const std::byte* body) { return mask_crc(crc32c(0, body, 16)); }
}  // namespace

bool record_durable_mark(const std::filesystem::path& dir, std::uint64_t end, unsigned mode) noexcept {
  std::byte buf[kDurableMarkBytes] = {};
  std::memcpy(buf, &kDurableMarkMagic, 4);
  std::memcpy(buf + 8, &end, 8);
  const std::uint32_t crc = mark_checksum(buf + 8);
  std::memcpy(buf + 4, &crc, 4);
  const std::string path = (dir / kDurableMarkName).string();
  const int f = ::open(path.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, static_cast<mode_t>(mode & 0777u));
  if (f < 0) return false;
  // One write of 24 bytes at offset 0: within one page, so a reader sees the old mark or the new.
  const bool ok = ::pwrite(f, buf, sizeof buf, 0) == static_cast<ssize_t>(sizeof buf);
  ::close(f);
  return ok;
}

std::optional<std::uint64_t> read_durable_mark(const std::filesystem::path& dir) noexcept {
  const std::string path = (dir / kDurableMarkName).string();
  const int f = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (f < 0) return std::nullopt;
  std::byte buf[kDurableMarkBytes];
  const ssize_t n = ::pread(f, buf, sizeof buf, 0);
  ::close(f);
  if (n != static_cast<ssize_t>(sizeof buf)) return std::nullopt;
  std::uint32_t magic, crc;
  std::uint64_t end;
  std::memcpy(&magic, buf, 4);
  std::memcpy(&crc, buf + 4, 4);
  std::memcpy(&end, buf + 8, 8);
  if (magic != kDurableMarkMagic || crc != mark_checksum(buf + 8)) return std::nullopt;
  return end;
}

}  // namespace shmq::journal
