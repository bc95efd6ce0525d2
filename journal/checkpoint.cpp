#include "journal/checkpoint.hpp"

#include "journal/crc32c.hpp"
#include "journal/files.hpp"

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
  bool ok = !name.empty() && name.size() <= 200 && name[0] != '.' && name != "LOCK" && !ends_with(".tmp") && !ends_with(".log");
  for (const char c : name)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-');
  if (!ok) detail::throw_error(std::errc::invalid_argument, dir, "invalid checkpoint name '" + std::string(name) + "'");
}

std::uint32_t checksum(const std::byte* length_field, std::span<const std::byte> bytes) {
  return mask_crc(crc32c(crc32c(0, length_field, 8), bytes.data(), bytes.size()));
}

}  // namespace

void write_checkpoint(const std::filesystem::path& dir, std::string_view name, std::span<const std::byte> bytes,
                      unsigned mode, void (*after_write)()) {
  check_name(dir, name);
  if ((mode & ~0777u) != 0) detail::throw_error(std::errc::invalid_argument, dir, "checkpoint mode beyond 0777");
  const detail::Fd dirfd = detail::open_or_create_dir(dir);
  const std::string final_name(name);
  const std::string tmp = final_name + ".tmp";

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
  if (::renameat(dirfd.get(), tmp.c_str(), dirfd.get(), final_name.c_str()) != 0)
    detail::throw_errno(errno, dir, "cannot rename " + tmp + " to " + final_name);
  detail::sync_dir(dirfd.get(), dir);
}

std::optional<std::vector<std::byte>> read_checkpoint(const std::filesystem::path& dir, std::string_view name) {
  check_name(dir, name);
  const detail::Fd dirfd = detail::open_dir(dir);
  const std::string file(name);
  const int f = ::openat(dirfd.get(), file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (f < 0) {
    if (errno == ENOENT) return std::nullopt;
    detail::throw_errno(errno, dir, "cannot open checkpoint " + file);
  }
  detail::Fd fd(f);
  struct stat st;
  if (::fstat(f, &st) != 0) detail::throw_errno(errno, dir, "fstat of checkpoint " + file + " failed");
  if (!S_ISREG(st.st_mode)) detail::throw_error(std::errc::not_supported, dir, "checkpoint " + file + " is not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  const auto corrupt = [&](const std::string& why) {
    detail::throw_error(std::errc::illegal_byte_sequence, dir, "checkpoint " + file + " is corrupt: " + why);
  };
  if (size < kCheckpointHeaderBytes) corrupt("shorter than its header (" + std::to_string(size) + " bytes)");
  std::byte header[kCheckpointHeaderBytes];
  detail::read_all_at(f, header, 0, dir, file);
  std::uint32_t magic, crc;
  std::uint64_t length;
  std::memcpy(&magic, header, 4);
  std::memcpy(&crc, header + 4, 4);
  std::memcpy(&length, header + 8, 8);
  if (magic != kCheckpointMagic) corrupt("bad magic");
  if (length != size - kCheckpointHeaderBytes)
    corrupt("its header says " + std::to_string(length) + " bytes, the file holds " + std::to_string(size - kCheckpointHeaderBytes));
  std::vector<std::byte> bytes(static_cast<std::size_t>(length));
  detail::read_all_at(f, bytes, kCheckpointHeaderBytes, dir, file);
  if (checksum(header + 8, bytes) != crc) corrupt("checksum mismatch");
  return bytes;
}

}  // namespace shmq::journal
