// A system-call interposer for the journal fault tests (tests/journal_fault_test.cpp), built as a
// shared library and linked into that test only, ahead of libc, so that every call the library
// makes to these functions reaches it first; it forwards to the real one (dlsym(RTLD_NEXT)).
//
// Contract. Dormant unless the environment holds SHMQ_FAULT_DIR=DIR (read at every call, so a
// test may set it before it forks). Then:
//   - Injected failures: if DIR/fail holds "ERRNO COUNT", the next COUNT fdatasync calls on a
//     journal segment file (a name ending in ".log") fail with ERRNO without syncing anything
//     (counted across processes: the file is rewritten under an flock).
//   - What a failed fdatasync cost: Linux reports a writeback error once and marks the pages clean,
//     so the bytes written since the file's last good sync may never reach the disk, whatever the
//     page cache says. The shim keeps, per segment file, the byte ranges written since its last
//     good fdatasync/fsync; a failed one moves them to the file's LOST ranges. A later pwrite over
//     a lost range takes it out (written again, dirty again), ftruncate clips them. This process's
//     lost ranges are in DIR/lost.PID, one "PATH FIRST END" a line, rewritten at every change: a
//     test simulates a host crash by zeroing them (the disk never got them) before it recovers.
//   - Events, appended to DIR/events, one a line, for the directory-durability checks:
//     "mkdir PATH", "create PATH" (openat/open with O_CREAT that made a new file), "unlink PATH",
//     "rename PATH" (the new name), "fsyncdir PATH" (fsync or fdatasync of a directory).
// Paths are absolute, as /proc/self/fd tells them. Everything here is for tests: it allocates and
// takes a lock in calls the library makes on its slow paths only.
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;  // [first, end), sorted, disjoint

template <class F>
F real(const char* name) {
  return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}

const char* fault_dir() { return std::getenv("SHMQ_FAULT_DIR"); }

// Our own file I/O goes straight to the kernel, never back through the interposed functions.
int raw_open(const std::string& path, int flags, mode_t mode = 0600) {
  return static_cast<int>(::syscall(SYS_openat, AT_FDCWD, path.c_str(), flags | O_CLOEXEC, mode));
}
void raw_write(int fd, const std::string& s) {
  std::size_t done = 0;
  while (done < s.size()) {
    const long n = ::syscall(SYS_write, fd, s.data() + done, s.size() - done);
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}
std::string raw_read(int fd) {
  std::string s;
  char buf[256];
  for (;;) {
    const long n = ::syscall(SYS_read, fd, buf, sizeof buf);
    if (n <= 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
  }
}

std::string fd_path(int fd) {
  char link[64], target[PATH_MAX];
  std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(link, target, sizeof target - 1);
  if (n <= 0) return {};
  return std::string(target, static_cast<std::size_t>(n));
}
std::string at_path(int dirfd, const char* name) {
  if (name[0] == '/') return name;
  std::string base;
  if (dirfd == AT_FDCWD) {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) == nullptr) return name;
    base = cwd;
  } else {
    base = fd_path(dirfd);
  }
  return base + "/" + name;
}
bool is_segment(const std::string& path) { return path.size() > 4 && path.compare(path.size() - 4, 4, ".log") == 0; }

void add(Ranges& r, std::uint64_t first, std::uint64_t end) {
  if (first >= end) return;
  r.emplace_back(first, end);
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const auto& x : r) {
    if (!out.empty() && x.first <= out.back().second) out.back().second = std::max(out.back().second, x.second);
    else out.push_back(x);
  }
  r = std::move(out);
}
bool subtract(Ranges& r, std::uint64_t first, std::uint64_t end) {
  Ranges out;
  bool changed = false;
  for (const auto& x : r) {
    if (x.second <= first || x.first >= end) {
      out.push_back(x);
      continue;
    }
    changed = true;
    if (x.first < first) out.emplace_back(x.first, first);
    if (x.second > end) out.emplace_back(end, x.second);
  }
  r = std::move(out);
  return changed;
}

struct Files {
  std::map<std::string, Ranges> dirty, lost;
};
pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;
Files* g_files = nullptr;

struct Locked {
  Locked() { pthread_mutex_lock(&g_mutex); }
  ~Locked() { pthread_mutex_unlock(&g_mutex); }
  Files& files() {
    if (!g_files) g_files = new Files;
    return *g_files;
  }
};

void child_after_fork() {
  // Another thread of the parent may have held the lock at the fork; this child starts afresh, and
  // its lost ranges are those of its own writes from now on.
  g_mutex = PTHREAD_MUTEX_INITIALIZER;
  g_files = nullptr;
}
__attribute__((constructor)) void install_fork_handler() { pthread_atfork(nullptr, nullptr, &child_after_fork); }

void persist_lost(const Files& f) {
  const char* dir = fault_dir();
  if (!dir) return;
  std::string text;
  for (const auto& [path, ranges] : f.lost)
    for (const auto& [first, end] : ranges) text += path + " " + std::to_string(first) + " " + std::to_string(end) + "\n";
  const std::string name = std::string(dir) + "/lost." + std::to_string(::getpid());
  const std::string tmp = name + ".tmp";
  const int fd = raw_open(tmp, O_WRONLY | O_CREAT | O_TRUNC);
  if (fd < 0) return;
  raw_write(fd, text);
  ::syscall(SYS_close, fd);
  ::syscall(SYS_rename, tmp.c_str(), name.c_str());
}

void event(const std::string& what, const std::string& path) {
  const char* dir = fault_dir();
  if (!dir) return;
  const int fd = raw_open(std::string(dir) + "/events", O_WRONLY | O_CREAT | O_APPEND);
  if (fd < 0) return;
  raw_write(fd, what + " " + path + "\n");
  ::syscall(SYS_close, fd);
}

// An injected failure for this call, if DIR/fail asks for one: its errno, else 0.
int take_injected_failure() {
  const char* dir = fault_dir();
  if (!dir) return 0;
  const int fd = raw_open(std::string(dir) + "/fail", O_RDWR);
  if (fd < 0) return 0;
  ::syscall(SYS_flock, fd, LOCK_EX);
  int err = 0;
  long count = 0;
  const std::string text = raw_read(fd);
  if (std::sscanf(text.c_str(), "%d %ld", &err, &count) == 2 && count > 0) {
    ::syscall(SYS_ftruncate, fd, 0);
    ::syscall(SYS_lseek, fd, 0, SEEK_SET);
    raw_write(fd, std::to_string(err) + " " + std::to_string(count - 1) + "\n");
  } else {
    err = 0;
  }
  ::syscall(SYS_close, fd);  // releases the flock
  return err;
}

int sync_common(int fd, int (*real_sync)(int), bool data_only) {
  if (!fault_dir()) return real_sync(fd);
  struct stat st;
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    const int rc = real_sync(fd);
    if (rc == 0) event("fsyncdir", fd_path(fd));
    return rc;
  }
  const std::string path = fd_path(fd);
  if (!is_segment(path)) return real_sync(fd);
  const int injected = data_only ? take_injected_failure() : 0;
  const int rc = injected ? -1 : real_sync(fd);
  const int err = injected ? injected : errno;
  Locked l;
  Files& f = l.files();
  auto& dirty = f.dirty[path];
  if (rc != 0) {
    for (const auto& [first, end] : dirty) add(f.lost[path], first, end);
    persist_lost(f);
  }
  dirty.clear();  // synced, or (failed) marked clean by the kernel
  errno = err;
  return rc;
}

}  // namespace

extern "C" {

int fdatasync(int fd) { return sync_common(fd, real<int (*)(int)>("fdatasync"), true); }
int fsync(int fd) { return sync_common(fd, real<int (*)(int)>("fsync"), false); }

ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  static const auto next = real<ssize_t (*)(int, const void*, size_t, off_t)>("pwrite");
  const ssize_t rc = next(fd, buf, n, offset);
  if (rc <= 0 || !fault_dir()) return rc;
  const int saved = errno;
  const std::string path = fd_path(fd);
  if (is_segment(path)) {
    Locked l;
    Files& f = l.files();
    const auto first = static_cast<std::uint64_t>(offset), end = first + static_cast<std::uint64_t>(rc);
    add(f.dirty[path], first, end);
    if (subtract(f.lost[path], first, end)) persist_lost(f);
  }
  errno = saved;
  return rc;
}

int ftruncate(int fd, off_t length) {
  static const auto next = real<int (*)(int, off_t)>("ftruncate");
  const int rc = next(fd, length);
  if (rc != 0 || !fault_dir()) return rc;
  const std::string path = fd_path(fd);
  if (is_segment(path)) {
    Locked l;
    Files& f = l.files();
    subtract(f.dirty[path], static_cast<std::uint64_t>(length), UINT64_MAX);
    if (subtract(f.lost[path], static_cast<std::uint64_t>(length), UINT64_MAX)) persist_lost(f);
  }
  return rc;
}

int mkdir(const char* path, mode_t mode) {
  static const auto next = real<int (*)(const char*, mode_t)>("mkdir");
  const int rc = next(path, mode);
  if (rc == 0 && fault_dir()) {
    const int saved = errno;
    event("mkdir", at_path(AT_FDCWD, path));
    errno = saved;
  }
  return rc;
}

int openat(int dirfd, const char* path, int flags, ...) {
  static const auto next = real<int (*)(int, const char*, int, ...)>("openat");
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = static_cast<mode_t>(va_arg(ap, int));
    va_end(ap);
  }
  bool existed = true;
  if ((flags & O_CREAT) != 0 && fault_dir()) {
    struct stat st;
    existed = ::fstatat(dirfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
  }
  const int rc = next(dirfd, path, flags, mode);
  if (rc >= 0 && !existed) {
    const int saved = errno;
    event("create", fd_path(rc));
    errno = saved;
  }
  return rc;
}

int open(const char* path, int flags, ...) {
  mode_t mode = 0;
  if ((flags & O_CREAT) != 0 || (flags & O_TMPFILE) == O_TMPFILE) {
    va_list ap;
    va_start(ap, flags);
    mode = static_cast<mode_t>(va_arg(ap, int));
    va_end(ap);
  }
  return openat(AT_FDCWD, path, flags, mode);
}

int unlinkat(int dirfd, const char* path, int flags) {
  static const auto next = real<int (*)(int, const char*, int)>("unlinkat");
  const std::string full = fault_dir() ? at_path(dirfd, path) : std::string();
  const int rc = next(dirfd, path, flags);
  if (rc == 0 && fault_dir()) {
    const int saved = errno;
    event("unlink", full);
    errno = saved;
  }
  return rc;
}

int renameat(int olddirfd, const char* oldpath, int newdirfd, const char* newpath) {
  static const auto next = real<int (*)(int, const char*, int, const char*)>("renameat");
  const int rc = next(olddirfd, oldpath, newdirfd, newpath);
  if (rc == 0 && fault_dir()) {
    const int saved = errno;
    event("rename", at_path(newdirfd, newpath));
    errno = saved;
  }
  return rc;
}

}  // extern "C"
