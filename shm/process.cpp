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

constexpr std::uint64_t kUnknown = ~0ull;  // /proc could not be read: not evidence of death

// Reads /proc file PATH into BUF (NUL-terminated); the byte count, 0 when the file is gone (ENOENT,
// ESRCH: the task exited), -1 on another error (fd exhaustion, EINTR...).
ssize_t read_proc(const char* path, char* buf, std::size_t size) noexcept {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || errno == ESRCH ? 0 : -1;
  const ssize_t n = ::read(fd, buf, size - 1);
  const int err = errno;
  ::close(fd);
  if (n < 0) return err == ESRCH ? 0 : -1;  // ESRCH: it exited while we read
  buf[n] = '\0';
  return n;
}

// The state letter of a /proc .../stat line (field 3), or 0 when the line is malformed. The command
// name (field 2) is in parentheses and may hold spaces: fields resume after the last ')'.
const char* fields_after_name(const char* line) noexcept {
  const char* p = std::strrchr(line, ')');
  return p && p[1] == ' ' ? p + 2 : nullptr;
}
bool exited_state(char state) noexcept { return state == 'Z' || state == 'X' || state == 'x'; }

// 1 when some thread of PID's thread group other than its leader has not exited, 0 when none has,
// -1 when /proc could not tell. A process whose main thread called pthread_exit() shows its
// leader as a zombie in /proc/PID/stat while its other threads run: it is alive. The walk is
// bounded by a count of our own (a group of more threads than that counts as alive).
int other_thread_alive(int pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/task", pid);
  const int dfd = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno == ENOENT || errno == ESRCH ? 0 : -1;
  int result = 0;
  alignas(8) char entries[4096];
  constexpr int kMaxEntries = 1 << 16;
  for (int seen = 0; result == 0;) {
    const long n = ::syscall(SYS_getdents64, dfd, entries, sizeof entries);
    if (n == 0) break;
    if (n < 0) {
      result = errno == ENOENT || errno == ESRCH ? 0 : -1;
      break;
    }
    for (long off = 0; off < n && result == 0;) {
      struct Dirent64 {
        std::uint64_t ino;
        std::int64_t off;
        unsigned short reclen;
        unsigned char type;
        char name[1];
      };
      const auto* d = reinterpret_cast<const Dirent64*>(entries + off);
      if (d->reclen == 0) break;
      off += d->reclen;
      if (++seen > kMaxEntries) {
        result = 1;
        break;
      }
      char* end = nullptr;
      const long tid = std::strtol(d->name, &end, 10);
      if (end == d->name || *end != '\0' || tid <= 0 || tid == pid) continue;
      char stat_path[96];
      std::snprintf(stat_path, sizeof stat_path, "/proc/%d/task/%ld/stat", pid, tid);
      char buf[1024];
      const ssize_t got = read_proc(stat_path, buf, sizeof buf);
      if (got < 0) result = -1;
      else if (got > 0) {
        const char* f = fields_after_name(buf);
        if (f && !exited_state(*f)) result = 1;
      }
    }
  }
  ::close(dfd);
  return result;
}

// Start time (clock ticks since boot) of PID from /proc/PID/stat; 0 if it has none (no such
// process, or one whose every thread exited: a zombie); kUnknown when /proc fails for another
// reason (fd exhaustion, EINTR...): a lock is never stolen, nor a claim padded, on such an error.
// Liveness is the thread group's: a zombie leader with a live thread is alive.
std::uint64_t start_time_of(int pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  char buf[1024];
  const ssize_t n = read_proc(path, buf, sizeof buf);
  if (n < 0) return kUnknown;
  if (n == 0) return 0;
  const char* p = fields_after_name(buf);
  if (!p) return 0;
  if (exited_state(*p)) {
    const int others = other_thread_alive(pid);
    if (others < 0) return kUnknown;
    if (others == 0) return 0;
  }
  // From field 3 (state) to field 22 (starttime): skip 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return 0;
    ++p;
  }
  return std::strtoull(p, nullptr, 10);
}

std::uint64_t make_token(int pid) noexcept {
  std::uint64_t start = start_time_of(pid);
  for (int i = 0; i < 100 && start == kUnknown; ++i) start = start_time_of(pid);  // a passing failure
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
  if (start == kUnknown) return true;
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

namespace {

std::uint64_t realtime_ns() noexcept {
  timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

bool invariant_tsc() noexcept {
  const int fd = ::open("/proc/cpuinfo", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[8192];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  return std::strstr(buf, " constant_tsc") && std::strstr(buf, " nonstop_tsc");
}

// Nanoseconds per TSC tick, measured once; 0 until then, negative where the TSC is not usable.
std::atomic<double> g_ns_per_tick{0.0};

struct ThreadClock {
  std::uint64_t tsc_base = 0, ns_base = 0;  // the last real reading and the TSC at it
  std::uint64_t rebase_at = 0;              // TSC value past which the real clock is read again
  std::uint64_t first_tsc = 0, first_ns = 0;
  double ns_per_tick = 0;
};
thread_local ThreadClock t_clock;

}  // namespace

void calibrate_wall_clock() noexcept {
  if (g_ns_per_tick.load(std::memory_order_acquire) != 0.0) return;
  if (!invariant_tsc()) {
    g_ns_per_tick.store(-1.0, std::memory_order_release);
    return;
  }
  // A few milliseconds of busy measurement: the rate's error is then ~1e-5, and a thread reads
  // the real clock every millisecond of ticks, refining the rate as its interval grows.
  const std::uint64_t t0 = __builtin_ia32_rdtsc(), n0 = now_ns();
  std::uint64_t n1;
  while ((n1 = now_ns()) - n0 < 3'000'000) {
  }
  const std::uint64_t t1 = __builtin_ia32_rdtsc();
  const double rate = t1 > t0 ? static_cast<double>(n1 - n0) / static_cast<double>(t1 - t0) : -1.0;
  g_ns_per_tick.store(rate > 0.01 && rate < 100 ? rate : -1.0, std::memory_order_release);
}

std::uint64_t wall_clock_ns() noexcept {
  ThreadClock& c = t_clock;
  const std::uint64_t tsc = __builtin_ia32_rdtsc();
  if (tsc < c.rebase_at) return c.ns_base + static_cast<std::uint64_t>(static_cast<double>(tsc - c.tsc_base) * c.ns_per_tick);
  const double rate = g_ns_per_tick.load(std::memory_order_acquire);
  const std::uint64_t now = realtime_ns();
  if (rate <= 0) return now;  // not calibrated (yet), or no invariant TSC: the real clock
  // A thread preempted between the two reads would pair this tick with a later time, and every
  // stamp of the next millisecond would be ahead by the time it lost (seen: 23 us on a loaded
  // machine). Rebase only on a pair read within 2 us; otherwise the next call tries again.
  if (static_cast<double>(__builtin_ia32_rdtsc() - tsc) * rate > 2000.0) return now;
  if (c.first_tsc == 0 || now < c.first_ns) {
    c.first_tsc = tsc;
    c.first_ns = now;
    c.ns_per_tick = rate;
  } else if (now - c.first_ns > 100'000'000) {  // refine over the thread's whole interval
    c.ns_per_tick = static_cast<double>(now - c.first_ns) / static_cast<double>(tsc - c.first_tsc);
  }
  c.tsc_base = tsc;
  c.ns_base = now;
  c.rebase_at = tsc + static_cast<std::uint64_t>(1'000'000 / c.ns_per_tick);  // a millisecond
  return now;
}

}  // namespace shmq::detail

#if defined(__SANITIZE_THREAD__)
// ThreadSanitizer builds only. shmq's tests fork real processes from a process that runs threads
// (a durable channel runs its journaler thread), and the children open channels, which starts
// threads again. TSan refuses that by default ("starting new threads after multi-threaded fork is
// not supported"): it cannot model the parent's other threads in the child. This is a limit of
// the tool with fork, not a report about our code; every other report still fails the run.
extern "C" const char* __tsan_default_options() { return "die_after_fork=0"; }
#endif
