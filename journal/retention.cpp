#include "journal/retention.hpp"

#include "journal/files.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>

namespace shmq::journal {

std::vector<std::filesystem::path> delete_segments_before(const std::filesystem::path& dir, std::uint64_t position,
                                                          std::chrono::seconds min_age,
                                                          std::uint64_t max_total_bytes) {
  const detail::Fd dirfd = detail::open_dir(dir);
  const auto files = detail::list_segments(dirfd.get(), dir);
  struct Info {
    std::uint64_t bytes;
    std::int64_t mtime_s;
  };
  std::vector<Info> info;
  std::uint64_t total = 0;
  for (const auto& f : files) {
    struct stat st;
    if (::fstatat(dirfd.get(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT) {
        info.push_back({0, 0});
        continue;
      }
      detail::throw_errno(errno, dir, "stat of " + f.name + " failed");
    }
    info.push_back({static_cast<std::uint64_t>(st.st_size), static_cast<std::int64_t>(st.st_mtim.tv_sec)});
    total += static_cast<std::uint64_t>(st.st_size);
  }
  const std::int64_t now = static_cast<std::int64_t>(std::time(nullptr));
  std::vector<std::filesystem::path> deleted;
  for (std::size_t i = 0; i + 1 < files.size(); ++i) {
    if (files[i + 1].first > position) break;  // file i may hold records at or above POSITION
    const bool old = now - info[i].mtime_s >= min_age.count();
    const bool over = total > max_total_bytes;
    if (!old && !over) break;
    if (::unlinkat(dirfd.get(), files[i].name.c_str(), 0) != 0) {
      if (errno != ENOENT) {
        const int err = errno;
        if (!deleted.empty()) ::fsync(dirfd.get());  // keep what was done durable; the unlink error is the one to report
        detail::throw_errno(err, dir, "cannot delete " + files[i].name);
      }
    } else {
      deleted.push_back(dir / files[i].name);
    }
    total -= info[i].bytes;
  }
  if (!deleted.empty()) detail::sync_dir(dirfd.get(), dir);
  return deleted;
}

}  // namespace shmq::journal
