// harness.hpp: what the cross-process benchmarks share (shmq_pingpong, shmq_competing_consumers,
// shmq_durability). Header-only; each binary is one translation unit that includes it.
//
// Contract. The parent process sets up (channels, shared maps), then run_children() forks the
// processes of one case, pins them if asked, and watches them: a child that fails calls die(),
// which prints "*** FAIL [role]: ...", records the text in the case's Control, tells the other
// children to stop (Control::abort) and exits 1. The parent reports a case whose children did not
// all exit 0 as FAILED; its figures are never printed. A child that makes no progress for --stall
// seconds ends itself (Waiter); one that is stuck where no Waiter looks is killed by the parent.
// Nothing here asserts a wall-clock limit: a time budget only ends a case early, and says so.
//
// Also here: the clocks (TSC calibrated against CLOCK_MONOTONIC), the CPU others took while a case
// ran (/proc/stat minus our children's rusage), a log-linear latency histogram that lives in
// shared memory, and Table: one markdown table on stdout, the same rows as CSV and JSON.
#pragma once

#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <x86intrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <new>
#include <optional>
#include <string>
#include <span>
#include <string_view>
#include <vector>

namespace bench {

// ---------------------------------------------------------------------------------------------
// Clocks. Intervals inside one process use the TSC (calibrated against CLOCK_MONOTONIC) where the
// CPU has an invariant one, else CLOCK_MONOTONIC; times compared across processes always use
// CLOCK_MONOTONIC, the same clock in every process.

inline std::uint64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

struct Ticks {
  bool tsc = false;
  double ns_per_tick = 1.0;
  const char* name() const { return tsc ? "rdtsc (calibrated)" : "clock_gettime(CLOCK_MONOTONIC)"; }
};
inline Ticks g_ticks;

inline bool cpu_has_invariant_tsc() {
#if defined(__x86_64__)
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return false;
  char line[4096];
  bool constant = false, nonstop = false;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "flags", 5) != 0) continue;
    constant = std::strstr(line, " constant_tsc") != nullptr;
    nonstop = std::strstr(line, " nonstop_tsc") != nullptr;
    break;
  }
  std::fclose(f);
  return constant && nonstop;
#else
  return false;
#endif
}

// A fenced stamp: not taken before the work above it is done, nor after the work below it starts.
inline std::uint64_t ticks() {
#if defined(__x86_64__)
  if (g_ticks.tsc) {
    _mm_lfence();
    const std::uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
  }
#endif
  return mono_ns();
}

inline double ticks_to_ns(std::uint64_t t) { return static_cast<double>(t) * g_ticks.ns_per_tick; }

inline void calibrate_ticks() {
  g_ticks = Ticks{};
  if (!cpu_has_invariant_tsc()) return;
  g_ticks.tsc = true;
  const std::uint64_t n0 = mono_ns();
  const std::uint64_t t0 = ticks();
  while (mono_ns() - n0 < 100'000'000u) {
  }
  const std::uint64_t n1 = mono_ns();
  const std::uint64_t t1 = ticks();
  if (t1 <= t0) {
    g_ticks.tsc = false;
    return;
  }
  g_ticks.ns_per_tick = static_cast<double>(n1 - n0) / static_cast<double>(t1 - t0);
}

// ---------------------------------------------------------------------------------------------
// Messages. Msg is the 64-byte message of every transport in shmq_pingpong and of the competing
// consumers: a sequence number, a flag, five words derived from the sequence, and a checksum.
// Sized payloads (shmq_durability) start with a SizedHead and fill the rest with words derived
// from (producer, seq); the checksum covers everything.

struct Msg {
  std::uint64_t seq;
  std::uint64_t flags;  // kEnd on the last message of a run
  std::uint64_t words[5];
  std::uint64_t checksum;
};
static_assert(sizeof(Msg) == 64);
constexpr std::uint64_t kEnd = 0x454e44;  // "END"

inline std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 31;
  x *= 0x9e3779b97f4a7c15u;
  return x ^ (x >> 29);
}

inline std::uint64_t checksum_of(const Msg& m) {
  std::uint64_t h = mix(m.seq ^ 0x5348'4d51'0000'0000u) ^ (m.flags * 0xff51afd7ed558ccdu);
  for (std::uint64_t w : m.words) h = mix(h ^ w);
  return h;
}

inline void fill(Msg& m, std::uint64_t seq, std::uint64_t flags = 0) {
  m.seq = seq;
  m.flags = flags;
  for (std::uint64_t i = 0; i < 5; ++i) m.words[i] = (seq + i) * 0xc2b2ae3d27d4eb4fu;
  m.checksum = checksum_of(m);
}

// "" when m is the message `seq` intact, else what is wrong with it.
inline std::string check(const Msg& m, std::uint64_t seq) {
  char why[200];
  if (m.seq != seq) {
    std::snprintf(why, sizeof why, "sequence %" PRIu64 " where %" PRIu64 " was due (%s)", m.seq, seq,
                  m.seq < seq ? "duplicate or reordered" : "lost or reordered");
    return why;
  }
  if (m.checksum != checksum_of(m)) {
    std::snprintf(why, sizeof why, "checksum mismatch on sequence %" PRIu64 " (corrupt payload)", seq);
    return why;
  }
  for (std::uint64_t i = 0; i < 5; ++i) {
    if (m.words[i] != (seq + i) * 0xc2b2ae3d27d4eb4fu) {
      std::snprintf(why, sizeof why, "word %" PRIu64 " wrong on sequence %" PRIu64, i, seq);
      return why;
    }
  }
  if (m.flags != 0 && m.flags != kEnd) {
    std::snprintf(why, sizeof why, "bad flags on sequence %" PRIu64, seq);
    return why;
  }
  return {};
}

// Only checks the integrity of m (not which sequence it is): "" when intact.
inline std::string check_intact(const Msg& m) { return check(m, m.seq); }

struct SizedHead {
  std::uint64_t seq;
  std::uint32_t producer;
  std::uint32_t flags;  // kEnd on a producer's last message
  std::uint64_t size;   // bytes of the whole payload
  std::uint64_t checksum;
};
static_assert(sizeof(SizedHead) == 32);

inline std::uint64_t sized_word(std::uint32_t producer, std::uint64_t seq, std::size_t i) {
  return (seq * 0x9e3779b97f4a7c15u) ^ (static_cast<std::uint64_t>(producer) << 56) ^ (i * 0xc2b2ae3d27d4eb4fu);
}

// Fills SIZE bytes (a multiple of 8, at least 32) at P.
inline void fill_sized(std::byte* p, std::size_t size, std::uint32_t producer, std::uint64_t seq, std::uint32_t flags) {
  SizedHead h{seq, producer, flags, size, 0};
  std::uint64_t sum = mix(seq ^ (static_cast<std::uint64_t>(producer) << 40) ^ flags ^ (size << 20));
  auto* w = reinterpret_cast<std::uint64_t*>(p + sizeof h);
  for (std::size_t i = 0; i < (size - sizeof h) / 8; ++i) {
    w[i] = sized_word(producer, seq, i);
    sum += w[i];
  }
  h.checksum = sum;
  std::memcpy(p, &h, sizeof h);
}

// "" when the SIZE bytes at P are an intact sized payload (and set HEAD), else what is wrong.
inline std::string check_sized(const std::byte* p, std::size_t size, SizedHead& head) {
  char why[200];
  if (size < sizeof(SizedHead) || size % 8 != 0) {
    std::snprintf(why, sizeof why, "payload of %zu bytes", size);
    return why;
  }
  std::memcpy(&head, p, sizeof head);
  if (head.size != size) {
    std::snprintf(why, sizeof why, "payload of %zu bytes says it has %" PRIu64, size, head.size);
    return why;
  }
  std::uint64_t sum = mix(head.seq ^ (static_cast<std::uint64_t>(head.producer) << 40) ^ head.flags ^ (size << 20));
  for (std::size_t i = 0; i < (size - sizeof head) / 8; ++i) {
    std::uint64_t w;
    std::memcpy(&w, p + sizeof head + 8 * i, sizeof w);
    if (w != sized_word(head.producer, head.seq, i)) {
      std::snprintf(why, sizeof why, "word %zu wrong in producer %u's sequence %" PRIu64 " (corrupt payload)", i,
                    head.producer, head.seq);
      return why;
    }
    sum += w;
  }
  if (sum != head.checksum) {
    std::snprintf(why, sizeof why, "checksum mismatch in producer %u's sequence %" PRIu64, head.producer, head.seq);
    return why;
  }
  if (head.flags != 0 && head.flags != kEnd) {
    std::snprintf(why, sizeof why, "bad flags in producer %u's sequence %" PRIu64, head.producer, head.seq);
    return why;
  }
  return {};
}

// Frames: the messages of shmq_pingpong, of any size from 48 bytes (64 B, 1 KiB, 64 KiB there).
//
//   +-------------------------------+---------------------------------------+-----------+
//   | FrameHead: seq, flags, size,  | body: template (seq % kTemplates),    | tail word |
//   | tail, checksum (32 bytes)     | size - 40 bytes, fixed per template   | f(seq)    |
//   +-------------------------------+---------------------------------------+-----------+
//
// The sender keeps kTemplates frames of SIZE bytes and, per message, stamps the head and the tail
// word of the one picked by seq into place (two cache lines) and sends it: one copy of SIZE bytes,
// as an application that sends a buffer does. The receiver checks every word: the head (sequence,
// flags, size, checksum formula), the tail word (the sequence again: a torn or stale end), and the
// sum of all the body words against the template's (a corrupt middle, or a stale one: a slot one
// ring lap old carries another template unless the lap is a multiple of kTemplates messages).
// Checking reads all SIZE bytes, so it is on every receiver's path, the floor's included.

struct FrameHead {
  std::uint64_t seq;
  std::uint32_t flags;  // kEnd on the last message
  std::uint32_t size;   // bytes of the whole frame
  std::uint64_t tail;   // the value of the frame's last word
  std::uint64_t checksum;
};
static_assert(sizeof(FrameHead) == 32);

// The sum of N 8-byte words at P (unaligned loads; the compiler vectorises it).
inline std::uint64_t sum_words(const std::byte* p, std::size_t n) {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t w;
    std::memcpy(&w, p + 8 * i, sizeof w);
    s += w;
  }
  return s;
}

class Frames {
 public:
  static constexpr std::size_t kTemplates = 7;  // prime: ring laps of a power of two rarely align with it
  static constexpr std::size_t kMinSize = sizeof(FrameHead) + 16;

  // SIZE: a multiple of 8, at least kMinSize.
  explicit Frames(std::size_t size) : size_(size), words_((size - sizeof(FrameHead)) / 8) {
    for (std::size_t k = 0; k < kTemplates; ++k) {
      buffers_[k].assign(size, std::byte{0});
      std::byte* body = buffers_[k].data() + sizeof(FrameHead);
      std::uint64_t sum = 0;
      for (std::size_t i = 0; i + 1 < words_; ++i) {  // all but the tail word
        const std::uint64_t w = mix((k + 1) * 0x9e3779b97f4a7c15u + i);
        std::memcpy(body + 8 * i, &w, sizeof w);
        sum += w;
      }
      body_sum_[k] = sum;
    }
  }
  std::size_t size() const { return size_; }

  // The frame for SEQ, stamped; valid until the next make() with a seq of the same template.
  std::span<const std::byte> make(std::uint64_t seq, std::uint32_t flags = 0) {
    std::byte* f = buffers_[seq % kTemplates].data();
    const FrameHead h = head(seq, flags);
    std::memcpy(f, &h, sizeof h);
    std::memcpy(f + size_ - 8, &h.tail, sizeof h.tail);
    return {f, size_};
  }

  // "" when F is the intact frame SEQ (FLAGS then tells kEnd or 0), else what is wrong with it.
  std::string check(std::span<const std::byte> f, std::uint64_t seq, std::uint32_t& flags) const {
    char why[200];
    if (f.size() != size_) {
      std::snprintf(why, sizeof why, "a message of %zu bytes where %zu were due (sequence %" PRIu64 ")", f.size(), size_,
                    seq);
      return why;
    }
    FrameHead got;
    std::memcpy(&got, f.data(), sizeof got);
    if (got.seq != seq) {
      std::snprintf(why, sizeof why, "sequence %" PRIu64 " where %" PRIu64 " was due (%s)", got.seq, seq,
                    got.seq < seq ? "duplicate or reordered" : "lost or reordered");
      return why;
    }
    flags = got.flags;
    const FrameHead want = head(seq, got.flags);
    if ((got.flags != 0 && got.flags != kEnd) || got.size != want.size || got.tail != want.tail ||
        got.checksum != want.checksum) {
      std::snprintf(why, sizeof why, "head of sequence %" PRIu64 " corrupt", seq);
      return why;
    }
    std::uint64_t tail;
    std::memcpy(&tail, f.data() + size_ - 8, sizeof tail);
    if (tail != want.tail) {
      std::snprintf(why, sizeof why, "tail word of sequence %" PRIu64 " wrong (torn or stale message)", seq);
      return why;
    }
    if (sum_words(f.data() + sizeof(FrameHead), words_ - 1) != body_sum_[seq % kTemplates]) {
      std::snprintf(why, sizeof why, "body of sequence %" PRIu64 " corrupt or stale (checksum mismatch)", seq);
      return why;
    }
    return {};
  }

  // Only the head: the sequence and flags of a frame, for a receiver that checks the rest later.
  static FrameHead peek(std::span<const std::byte> f) {
    FrameHead h{};
    if (f.size() >= sizeof h) std::memcpy(&h, f.data(), sizeof h);
    return h;
  }

 private:
  FrameHead head(std::uint64_t seq, std::uint32_t flags) const {
    FrameHead h{seq, flags, static_cast<std::uint32_t>(size_), mix(seq ^ 0x7461696c00000000u), 0};
    h.checksum = mix(seq ^ (static_cast<std::uint64_t>(flags) << 32) ^ size_) + body_sum_[seq % kTemplates] + h.tail;
    return h;
  }

  std::size_t size_;
  std::size_t words_;  // body words, the tail included
  std::vector<std::byte> buffers_[kTemplates];
  std::uint64_t body_sum_[kTemplates] = {};
};

// ---------------------------------------------------------------------------------------------
// Shared state of one case, mapped before fork. A binary derives its per-case fields from Control.

struct alignas(64) Control {
  alignas(64) std::atomic<std::uint32_t> ready{0};  // children that finished setup
  alignas(64) std::atomic<std::uint32_t> abort{0};  // set by whoever fails: the others stop waiting
  alignas(64) std::atomic<std::uint64_t> go_ns{0};  // CLOCK_MONOTONIC when the last child got ready
  char error[512] = {};
  // Written by the parent after the case: how much of the host's CPUs others took meanwhile.
  double others_cpu_pct = 0;  // busy time not spent by our children, % of all CPUs
  double steal_pct = 0;       // time the hypervisor gave to other guests, % of all CPUs
};

// An anonymous shared mapping, made before fork, unmapped by the owner's destructor.
class SharedMap {
 public:
  explicit SharedMap(std::size_t bytes) : bytes_(std::max<std::size_t>(bytes, 1)) {
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "*** FAIL: mmap of %zu shared bytes: %s\n", bytes_, std::strerror(errno));
      std::exit(1);
    }
    base_ = p;
  }
  ~SharedMap() { ::munmap(base_, bytes_); }
  SharedMap(const SharedMap&) = delete;
  SharedMap& operator=(const SharedMap&) = delete;
  void* data() const { return base_; }
  std::size_t size() const { return bytes_; }

 private:
  void* base_ = nullptr;
  std::size_t bytes_;
};

// A T constructed in its own shared mapping (T's destructor is not run: keep T trivial to drop).
template <class T>
class Shared {
 public:
  Shared() : map_(sizeof(T)), p_(new (map_.data()) T()) {}
  T& operator*() const { return *p_; }
  T* operator->() const { return p_; }
  T* get() const { return p_; }

 private:
  SharedMap map_;
  T* p_;
};

// The role running in this child, for messages.
inline const char* g_role = "parent";
inline Control* g_control = nullptr;

// Prints the failure loudly, records it for the parent, tells the other children to stop, exits 1.
[[noreturn]] __attribute__((format(printf, 1, 2))) inline void die(const char* fmt, ...) {
  char text[384];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n*** FAIL [%s]: %s\n", g_role, text);
  std::fflush(stderr);
  if (g_control != nullptr) {
    if (g_control->error[0] == '\0') std::snprintf(g_control->error, sizeof g_control->error, "[%s] %s", g_role, text);
    g_control->abort.store(1, std::memory_order_release);  // pairs with the acquire loads in Waiter
  }
  ::_exit(1);
}

// Spin-wait bookkeeping: every 4096 spins (or every check()) it reads the clock; no progress for
// --stall seconds, or another child failed, ends this child.
class Waiter {
 public:
  Waiter(double stall_s, const char* what) : stall_ns_(static_cast<std::uint64_t>(stall_s * 1e9)), what_(what) {}
  void reset() {
    spins_ = 0;
    since_ = 0;
  }
  // Called in a spin loop; cheap except every 4096th call.
  void spin(std::uint64_t seq) {
    if ((++spins_ & 4095u) == 0) check(seq);
  }
  void check(std::uint64_t seq) {
    if (g_control->abort.load(std::memory_order_acquire) != 0)  // pairs with the release in die()
      die("stopping: another process of the case failed");
    const std::uint64_t now = mono_ns();
    if (since_ == 0) {
      since_ = now;
    } else if (now - since_ > stall_ns_) {
      die("no progress for %.0f s while %s (sequence %" PRIu64 "): a hang", static_cast<double>(stall_ns_) / 1e9,
          what_, seq);
    }
  }

 private:
  std::uint64_t spins_ = 0;
  std::uint64_t since_ = 0;
  std::uint64_t stall_ns_;
  const char* what_;
};

// Every child calls this once set up; it returns when all N have (go_ns is then set).
inline void wait_all_ready(Control& c, std::uint32_t n, double stall_s) {
  // acq_rel: our setup happens before the others leave; pairs with the acquire load below.
  if (c.ready.fetch_add(1, std::memory_order_acq_rel) + 1 == n) c.go_ns.store(mono_ns(), std::memory_order_release);
  Waiter w(stall_s, "waiting for the other processes to set up");
  while (c.ready.load(std::memory_order_acquire) < n) w.spin(0);
  while (c.go_ns.load(std::memory_order_acquire) == 0) w.spin(0);  // pairs with the release store above
}

inline void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity(cpu %d): %s", cpu, std::strerror(errno));
}

// The CPUs this process may run on.
inline std::vector<int> usable_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  return cpus;
}

// ---------------------------------------------------------------------------------------------
// Disturbance: the host's busy and stolen CPU time, from /proc/stat, in ns.

struct Disturbance {
  double others_cpu_pct = 0;
  double steal_pct = 0;
};

struct HostCpu {
  bool ok = false;
  std::uint64_t busy_ns = 0;
  std::uint64_t steal_ns = 0;
};

inline HostCpu host_cpu() {
  HostCpu h;
  FILE* f = std::fopen("/proc/stat", "r");
  if (f == nullptr) return h;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait,
                            &irq, &softirq, &steal);
  std::fclose(f);
  if (n < 7) return h;
  const double ns_per_tick = 1e9 / static_cast<double>(::sysconf(_SC_CLK_TCK));
  h.busy_ns = static_cast<std::uint64_t>(static_cast<double>(user + nice + system + irq + softirq) * ns_per_tick);
  h.steal_ns = static_cast<std::uint64_t>(static_cast<double>(steal) * ns_per_tick);
  h.ok = true;
  return h;
}

inline std::uint64_t rusage_ns(const rusage& r) {
  const auto tv = [](const timeval& t) {
    return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(t.tv_usec) * 1000u;
  };
  return tv(r.ru_utime) + tv(r.ru_stime);
}

inline volatile sig_atomic_t g_interrupted = 0;
extern "C" inline void bench_on_signal(int) { g_interrupted = 1; }
inline void install_signal_handlers() {
  ::signal(SIGINT, bench_on_signal);
  ::signal(SIGTERM, bench_on_signal);
}

// ---------------------------------------------------------------------------------------------
// Running a case: N children, each pinned to its CPU (or not: cpu < 0), watched by the parent.

struct Child {
  std::string role;
  int cpu = -1;
  std::function<void()> body;
};

struct Limits {
  double budget_s = 10;  // a case stops early past this (the children look at it)
  double stall_s = 10;   // no progress this long: a hang
};

// Runs the children. Returns true when every one exited 0; otherwise prints why, loudly, and
// returns false. Kills them all if they outlive the hang limit; also records the CPU time others
// took meanwhile in CONTROL.
inline bool run_children(const Limits& lim, const char* name, Control& control, const std::vector<Child>& children) {
  std::fflush(stdout);
  std::fflush(stderr);
  g_control = &control;
  const HostCpu cpu_before = host_cpu();
  std::uint64_t children_ns = 0;  // CPU time of our children
  const std::uint64_t started = mono_ns();
  std::vector<pid_t> pids(children.size(), -1);
  bool ok = true;
  for (std::size_t i = 0; i < children.size() && ok; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::fprintf(stderr, "*** FAIL [%s]: fork: %s\n", name, std::strerror(errno));
      ok = false;
      break;
    }
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      g_role = children[i].role.c_str();
      pin_to(children[i].cpu);
      try {
        children[i].body();
      } catch (const std::exception& e) {
        die("exception: %s", e.what());
      } catch (...) {
        die("unknown exception");
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(0);  // skip the parent's atexit handlers and static destructors
    }
    pids[i] = pid;
  }
  if (!ok) control.abort.store(1, std::memory_order_release);

  // Generous: a child that makes no progress ends itself after --stall seconds; this catches one
  // that is stuck somewhere no Waiter looks (inside a library call).
  const double hang_limit_s = lim.budget_s + 3 * lim.stall_s + 30;
  const std::uint64_t t0 = mono_ns();
  std::size_t alive = 0;
  for (pid_t p : pids) alive += p > 0;
  bool killed = false;
  std::uint64_t failed_at = ok ? 0 : t0;  // when a child failed: the others get a short grace
  while (alive > 0) {
    for (std::size_t i = 0; i < pids.size(); ++i) {
      pid_t& pid = pids[i];
      if (pid <= 0) continue;
      int status = 0;
      rusage usage{};
      const pid_t r = ::wait4(pid, &status, WNOHANG, &usage);
      if (r == 0) continue;
      if (r > 0) children_ns += rusage_ns(usage);
      const char* role = children[i].role.c_str();
      if (r < 0) {
        std::fprintf(stderr, "*** FAIL [%s]: wait4: %s\n", name, std::strerror(errno));
        ok = false;
      } else if (WIFSIGNALED(status)) {
        std::fprintf(stderr, "\n*** FAIL [%s]: %s died of signal %d (%s)%s\n", name, role, WTERMSIG(status),
                     strsignal(WTERMSIG(status)), killed ? " (killed by the watchdog)" : "");
        ok = false;
      } else if (WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "*** FAIL [%s]: %s exited with status %d\n", name, role, WEXITSTATUS(status));
        ok = false;
      }
      if (!ok) {
        control.abort.store(1, std::memory_order_release);  // the survivors stop waiting
        if (failed_at == 0) failed_at = mono_ns();
      }
      pid = -1;
      --alive;
    }
    if (alive == 0) break;
    const std::uint64_t now = mono_ns();
    const double elapsed = static_cast<double>(now - t0) / 1e9;
    const bool survivor_stuck = failed_at != 0 && now - failed_at > 2'000'000'000u;
    if (!killed && (elapsed > hang_limit_s || g_interrupted || survivor_stuck)) {
      if (g_interrupted)
        std::fprintf(stderr, "\n*** [%s] interrupted: killing the children\n", name);
      else if (survivor_stuck)
        std::fprintf(stderr, "\n*** FAIL [%s]: another process failed and these did not stop within 2 s (stuck "
                             "in a library call?): killing them\n", name);
      else
        std::fprintf(stderr, "\n*** FAIL [%s]: HANG: still running after %.0f s; killing the children\n", name, elapsed);
      for (pid_t pid : pids)
        if (pid > 0) ::kill(pid, SIGKILL);
      killed = true;
      ok = false;
    }
    ::usleep(2000);
  }
  if (control.error[0] != '\0') {
    std::fprintf(stderr, "*** FAIL [%s]: %s\n", name, control.error);
    ok = false;
  }
  const HostCpu cpu_after = host_cpu();
  if (cpu_before.ok && cpu_after.ok) {
    const double all_ns =
        static_cast<double>(mono_ns() - started) * static_cast<double>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
    const double others_ns = static_cast<double>(cpu_after.busy_ns - cpu_before.busy_ns) - static_cast<double>(children_ns);
    control.others_cpu_pct = std::max(0.0, 100.0 * others_ns / all_ns);
    control.steal_pct = 100.0 * static_cast<double>(cpu_after.steal_ns - cpu_before.steal_ns) / all_ns;
  }
  g_control = nullptr;
  return ok;
}

// ---------------------------------------------------------------------------------------------
// A log-linear histogram of nanoseconds: exact below 64 ns, then 32 buckets per power of two
// (about 3% wide). Plain data: it may live in a shared map and be filled by a child.

struct Histogram {
  static constexpr int kSub = 32;
  static constexpr int kMaxExp = 47;  // values up to 2^48 ns (3 days)
  static constexpr int kBuckets = 64 + (kMaxExp - 5) * kSub;
  std::uint64_t count = 0;
  std::uint64_t sum_ns = 0;
  std::uint64_t max_ns = 0;
  std::uint64_t min_ns = ~0ull;
  std::uint64_t buckets[kBuckets] = {};

  static int index(std::uint64_t v) {
    if (v < 64) return static_cast<int>(v);
    const int e = 63 - std::countl_zero(v);  // v in [2^e, 2^(e+1))
    if (e > kMaxExp) return kBuckets - 1;
    const auto sub = static_cast<int>((v >> (e - 5)) & (kSub - 1));
    return 64 + (e - 6) * kSub + sub;
  }
  // The middle of bucket I, in ns.
  static double value(int i) {
    if (i < 64) return i;
    const int e = (i - 64) / kSub + 6;
    const int sub = (i - 64) % kSub;
    const double lo = std::ldexp(1.0, e) + sub * std::ldexp(1.0, e - 5);
    return lo + std::ldexp(1.0, e - 6);
  }
  void add(std::uint64_t ns) {
    ++count;
    sum_ns += ns;
    max_ns = std::max(max_ns, ns);
    min_ns = std::min(min_ns, ns);
    ++buckets[index(ns)];
  }
  void merge(const Histogram& o) {
    count += o.count;
    sum_ns += o.sum_ns;
    max_ns = std::max(max_ns, o.max_ns);
    min_ns = std::min(min_ns, o.min_ns);
    for (int i = 0; i < kBuckets; ++i) buckets[i] += o.buckets[i];
  }
  // Nearest rank; the bucket's middle (capped by the exact max).
  double percentile(double q) const {
    if (count == 0) return 0;
    auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count)));
    rank = std::clamp<std::uint64_t>(rank, 1, count);
    std::uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += buckets[i];
      if (seen >= rank) return std::min(value(i), static_cast<double>(max_ns));
    }
    return static_cast<double>(max_ns);
  }
  double mean() const { return count ? static_cast<double>(sum_ns) / static_cast<double>(count) : 0; }
};

// Nearest-rank percentile of sorted values.
inline double percentile_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  rank = std::clamp<std::size_t>(rank, 1, sorted.size());
  return sorted[rank - 1];
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// ---------------------------------------------------------------------------------------------
// Output. Table: printed as markdown, written as CSV (one row per line, a header) and as JSON (an
// array of objects keyed by the column names). A cell keeps its number for CSV and JSON and its
// text for the markdown table.

inline std::string fmt(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

struct Cell {
  std::string text;
  std::optional<double> number;  // absent: a text cell (or a figure that failed)
};
inline Cell num(double v, int decimals) { return {fmt(v, decimals), v}; }
inline Cell txt(std::string s) { return {std::move(s), std::nullopt}; }

class Table {
 public:
  // RIGHT: per column, right-aligned (numbers); columns past its end are. Default: the first is not.
  explicit Table(std::vector<std::string> columns, std::vector<bool> right = {false})
      : columns_(std::move(columns)), right_(std::move(right)) {
    right_.resize(columns_.size(), true);  // numbers right-aligned unless told otherwise
  }
  void add(std::vector<Cell> row) {
    row.resize(columns_.size(), txt(""));
    rows_.push_back(std::move(row));
  }
  bool empty() const { return rows_.empty(); }

  void print_markdown(FILE* out = stdout) const {
    std::fprintf(out, "|");
    for (const auto& c : columns_) std::fprintf(out, " %s |", c.c_str());
    std::fprintf(out, "\n|");
    for (std::size_t i = 0; i < columns_.size(); ++i) std::fprintf(out, "%s|", right_[i] ? "---:" : "---");
    std::fprintf(out, "\n");
    for (const auto& r : rows_) {
      std::fprintf(out, "|");
      for (const auto& c : r) std::fprintf(out, " %s |", c.text.c_str());
      std::fprintf(out, "\n");
    }
  }

  static std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char ch : s) {
      if (ch == '"') q += '"';
      q += ch;
    }
    return q + "\"";
  }
  static std::string json_string(const std::string& s) {
    std::string q = "\"";
    for (char ch : s) {
      if (ch == '"' || ch == '\\') {
        q += '\\';
        q += ch;
      } else if (static_cast<unsigned char>(ch) < 0x20) {
        q += ' ';
      } else {
        q += ch;
      }
    }
    return q + "\"";
  }
  static std::string raw(const Cell& c) {
    if (!c.number) return c.text;
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", *c.number);
    return b;
  }

  // Appends the rows to OUT as CSV; with HEADER the column names first. PREFIX columns (e.g. the
  // table's name) go in front of every row.
  void write_csv(FILE* out, const std::vector<std::pair<std::string, std::string>>& prefix, bool header) const {
    if (header) {
      for (const auto& p : prefix) std::fprintf(out, "%s,", csv_field(p.first).c_str());
      for (std::size_t i = 0; i < columns_.size(); ++i)
        std::fprintf(out, "%s%s", csv_field(columns_[i]).c_str(), i + 1 < columns_.size() ? "," : "\n");
    }
    for (const auto& r : rows_) {
      for (const auto& p : prefix) std::fprintf(out, "%s,", csv_field(p.second).c_str());
      for (std::size_t i = 0; i < r.size(); ++i)
        std::fprintf(out, "%s%s", csv_field(raw(r[i])).c_str(), i + 1 < r.size() ? "," : "\n");
    }
  }

  // A JSON array of objects, one per row.
  void write_json(FILE* out) const {
    std::fprintf(out, "[");
    for (std::size_t k = 0; k < rows_.size(); ++k) {
      std::fprintf(out, "%s\n    {", k ? "," : "");
      for (std::size_t i = 0; i < columns_.size(); ++i) {
        const Cell& c = rows_[k][i];
        const std::string v = c.number && std::isfinite(*c.number) ? raw(c) : json_string(c.text);
        std::fprintf(out, "%s%s: %s", i ? ", " : "", json_string(columns_[i]).c_str(), v.c_str());
      }
      std::fprintf(out, "}");
    }
    std::fprintf(out, "\n  ]");
  }

 private:
  std::vector<std::string> columns_;
  std::vector<bool> right_;
  std::vector<std::vector<Cell>> rows_;
};

// Writes the named tables and some context to a CSV file (one table after another, each with its
// header and a leading "table" column) and to a JSON file. Either path may be empty.
struct Report {
  std::vector<std::pair<std::string, std::string>> context;  // key, value (strings)
  std::vector<std::pair<std::string, const Table*>> tables;

  bool write(const std::string& csv_path, const std::string& json_path, const char* tool, bool ok) const {
    bool fine = true;
    if (!csv_path.empty()) {
      if (FILE* f = std::fopen(csv_path.c_str(), "w")) {
        for (const auto& [name, t] : tables) t->write_csv(f, {{"table", name}}, true);
        fine = std::fclose(f) == 0 && fine;
      } else {
        std::fprintf(stderr, "*** FAIL: cannot write %s: %s\n", csv_path.c_str(), std::strerror(errno));
        fine = false;
      }
    }
    if (!json_path.empty()) {
      if (FILE* f = std::fopen(json_path.c_str(), "w")) {
        std::fprintf(f, "{\n  \"tool\": \"%s\",\n  \"ok\": %s,\n  \"context\": {", tool, ok ? "true" : "false");
        for (std::size_t i = 0; i < context.size(); ++i)
          std::fprintf(f, "%s\n    %s: %s", i ? "," : "", Table::json_string(context[i].first).c_str(),
                       Table::json_string(context[i].second).c_str());
        std::fprintf(f, "\n  }");
        for (const auto& [name, t] : tables) {
          std::fprintf(f, ",\n  %s: ", Table::json_string(name).c_str());
          t->write_json(f);
        }
        std::fprintf(f, "\n}\n");
        fine = std::fclose(f) == 0 && fine;
      } else {
        std::fprintf(stderr, "*** FAIL: cannot write %s: %s\n", json_path.c_str(), std::strerror(errno));
        fine = false;
      }
    }
    return fine;
  }
};

// ---------------------------------------------------------------------------------------------
// The run's summary. Each binary writes its headline figures with --summary FILE, one row per
// (case, system), each beside what it is compared with; run.sh prints all of them as one markdown
// table and plots them. Tab-separated, a header line first; an empty field is "no such figure".
//   section case system p50_ns p99_ns p999_ns max_ns msgs_per_s mb_per_s vs goal
// vs: the ratios, text ("shmq / this" unless it says otherwise); goal: each goal and met / MISSED.

struct SummaryRow {
  std::string section, case_name, system;
  std::optional<double> p50_ns, p99_ns, p999_ns, max_ns, msgs_per_s, mb_per_s;
  std::string vs, goal;
};

inline const char* verdict(bool met) { return met ? "met" : "MISSED"; }

// "0.92x": two decimals from 0.1 to 100, none above, two significant digits below ("0.0042x").
inline std::string times(double ratio) {
  if (ratio >= 0.1) return fmt(ratio, ratio >= 100 ? 0 : 2) + "x";
  char b[32];
  std::snprintf(b, sizeof b, "%.2gx", ratio);
  return b;
}

inline bool write_summary(const std::string& path, const std::vector<SummaryRow>& rows) {
  if (path.empty()) return true;
  FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "*** FAIL: cannot write %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  const auto field = [](const std::string& s) {  // no tabs or newlines inside a field
    std::string out = s;
    for (char& c : out)
      if (c == '\t' || c == '\n') c = ' ';
    return out;
  };
  const auto figure = [](const std::optional<double>& v) {
    if (!v || !std::isfinite(*v)) return std::string();
    char b[64];
    std::snprintf(b, sizeof b, "%.6g", *v);
    return std::string(b);
  };
  std::fprintf(f, "section\tcase\tsystem\tp50_ns\tp99_ns\tp999_ns\tmax_ns\tmsgs_per_s\tmb_per_s\tvs\tgoal\n");
  for (const auto& r : rows)
    std::fprintf(f, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", field(r.section).c_str(), field(r.case_name).c_str(),
                 field(r.system).c_str(), figure(r.p50_ns).c_str(), figure(r.p99_ns).c_str(), figure(r.p999_ns).c_str(),
                 figure(r.max_ns).c_str(), figure(r.msgs_per_s).c_str(), figure(r.mb_per_s).c_str(), field(r.vs).c_str(),
                 field(r.goal).c_str());
  const bool ok = std::fclose(f) == 0;
  if (!ok) std::fprintf(stderr, "*** FAIL: writing %s: %s\n", path.c_str(), std::strerror(errno));
  return ok;
}

// ---------------------------------------------------------------------------------------------
// Host

inline std::string cpu_model() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return "unknown";
  char line[512];
  std::string model = "unknown";
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::strncmp(line, "model name", 10) == 0) {
      const char* colon = std::strchr(line, ':');
      if (colon != nullptr) {
        model = colon + 2;
        while (!model.empty() && (model.back() == '\n' || model.back() == ' ')) model.pop_back();
      }
      break;
    }
  }
  std::fclose(f);
  return model;
}

inline double load1() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

// The "CPU taken by others" line and its warning, for a list of (case, disturbance).
inline void print_disturbance(const std::vector<std::pair<std::string, Disturbance>>& cases) {
  std::printf("CPU taken by other processes / stolen by the hypervisor while each case ran (%% of all CPUs):");
  bool disturbed = false;
  for (const auto& [name, d] : cases) {
    std::printf(" %s %.0f/%.0f;", name.c_str(), d.others_cpu_pct, d.steal_pct);
    disturbed = disturbed || d.others_cpu_pct + d.steal_pct > 10;
  }
  std::printf("\n");
  if (disturbed)
    std::printf("WARNING: other work took more than 10%% of the CPUs during a case: those figures are disturbed; "
                "run again on a quieter machine.\n");
}

// Parsing helpers: a bad argument prints the usage (to stderr) and exits 2.
inline std::uint64_t parse_count(const char* text, void (*usage)(const char*)) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v == 0) usage("expected a positive count");
  return v;
}

inline double parse_seconds(const char* text, void (*usage)(const char*)) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v > 0)) usage("expected a positive number of seconds");
  return v;
}

// "a,b,,c" -> {"a", "b", "", "c"}
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t at = 0; at <= s.size();) {
    const std::size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

// "1,2,4" -> {1, 2, 4}
inline std::vector<std::uint64_t> parse_list(const char* text, void (*usage)(const char*)) {
  std::vector<std::uint64_t> out;
  for (const std::string& part : split_list(text)) out.push_back(parse_count(part.c_str(), usage));
  return out;
}

}  // namespace bench
