#include "shm/process.hpp"

#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

namespace shmq::detail {
namespace {

// Start time (clock ticks since boot) of PID from /proc/PID/stat; 0 if it has none or is a zombie.
std::uint64_t start_time_of(int pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name (field 2) is in parentheses and may hold spaces: fields resume after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p || p[1] != ' ') return 0;
  p += 2;
  const char state = *p;
  if (state == 'Z' || state == 'X' || state == 'x') return 0;
  // From field 3 (state) to field 22 (starttime): skip 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return 0;
    ++p;
  }
  return std::strtoull(p, nullptr, 10);
}

std::uint64_t make_token(int pid) noexcept {
  const std::uint64_t start = start_time_of(pid);
  return static_cast<std::uint32_t>(pid) | (static_cast<std::uint64_t>(static_cast<std::uint32_t>(start)) << 32);
}

std::atomic<std::uint64_t> g_token{0};
std::atomic<int> g_token_pid{0};

}  // namespace

std::uint64_t self_token() noexcept {
  const int pid = ::getpid();
  if (g_token_pid.load(std::memory_order_acquire) != pid) {  // first use, or a forked child
    g_token.store(make_token(pid), std::memory_order_relaxed);
    g_token_pid.store(pid, std::memory_order_release);
  }
  return g_token.load(std::memory_order_relaxed);
}

bool token_alive(std::uint64_t token) noexcept {
  const int pid = token_pid(token);
  if (pid <= 0) return false;
  if (pid == ::getpid()) return token == self_token();
  const std::uint64_t start = start_time_of(pid);
  return start != 0 && static_cast<std::uint32_t>(start) == static_cast<std::uint32_t>(token >> 32);
}

bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, std::chrono::nanoseconds timeout) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout.count() > 0) {
    ts.tv_sec = static_cast<time_t>(timeout.count() / 1000000000);
    ts.tv_nsec = static_cast<long>(timeout.count() % 1000000000);
    tsp = &ts;
  }
  // Not FUTEX_PRIVATE_FLAG: the word is shared between processes.
  const long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, tsp, nullptr, 0);
  return !(rc == -1 && errno == ETIMEDOUT);
}

void futex_wake_all(std::atomic<std::uint32_t>& word) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

std::uint64_t now_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t wall_clock_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace shmq::detail
