// shmq_pingpong: shmq across two processes, beside a floor, in one run.
//
// What it measures (64-byte messages; every shmq channel Durability::Memory, consumers Wait::Spin):
//   latency     two processes pinned to two CPUs play ping-pong over two channels (A->B, B->A).
//               A stamps the time, publishes a ping, polls the pong; B polls the ping, checks it,
//               publishes it back, then acks. One-way latency = round trip / 2, reported as
//               p50 / p99 / p99.9 / max over --rtt round trips after a warm-up. Acks are outside
//               the timed path (B acks after its reply; A acks after it stamps the arrival).
//   throughput  one process publishes --messages messages (sequence number, checksum) to a consumer
//               process that checks every one (order and checksum) and acks it; msgs/s and MB/s
//               (payload bytes) in the consumer's steady state: timed from its receipt of message
//               --tp-warmup (by then the ring's pages have been touched) to its last message.
//   floor       the same two measurements over a bare single-producer single-consumer ring in
//               shared memory (MAP_SHARED|MAP_ANONYMOUS before fork; head and tail on their own
//               cache lines, each side caching the other's index; 64-byte slots): what the
//               hardware gives when nothing else is done. ratio = shmq / floor.
//
// Failures are loud: a publish that does not return Ok, a lost, duplicated, reordered or corrupt
// message, a child that crashes or makes no progress for --stall seconds is printed with
// "*** FAIL", the figure is not reported, and the exit status is 1.
// A case that reaches its time budget (--budget seconds) stops early and says so: a figure over
// fewer messages, not a failure. No wall-clock limit is asserted.
//
// Usage: shmq_pingpong [--quick] [--json FILE] [--rtt N] [--warmup N] [--messages N]
//                      [--tp-warmup N] [--ring-mib N] [--lat-ring-kib N] [--budget S] [--stall S] [--cpus A,B]

#include <shmq/shmq.hpp>

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
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------------------------
// Configuration

struct Config {
  bool quick = false;
  std::string json_path;
  std::uint64_t warmup = 20'000;        // round trips before the measured ones
  std::uint64_t rtt = 200'000;          // measured round trips
  std::uint64_t messages = 10'000'000;  // throughput case
  std::uint64_t tp_warmup = 0;  // throughput: messages before the timed window; 0: one pass of the ring
  std::size_t ring_bytes = std::size_t{64} << 20;     // throughput channel / floor ring
  std::size_t lat_ring_bytes = std::size_t{1} << 20;  // ping and pong channels / floor rings
  double budget_s = 10;  // a case stops early past this (and says so)
  double stall_s = 10;   // no progress this long: a hang, reported as a failure
  int cpu_a = -1;
  int cpu_b = -1;
};

// Prints the usage; WHY == nullptr (--help): to stdout, exit 0; else to stderr, exit 2.
[[noreturn]] void usage(const char* argv0, const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--rtt N] [--warmup N] [--messages N]\n"
               "       [--tp-warmup N] [--ring-mib N] [--lat-ring-kib N] [--budget SECONDS] [--stall SECONDS] [--cpus A,B]\n",
               argv0);
  std::exit(why != nullptr ? 2 : 0);
}

std::uint64_t parse_count(const char* argv0, const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || v == 0) usage(argv0, "expected a positive count");
  return v;
}

double parse_seconds(const char* argv0, const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(v > 0)) usage(argv0, "expected a positive number of seconds");
  return v;
}

Config parse_args(int argc, char** argv) {
  Config c;
  bool rtt_set = false, warmup_set = false, messages_set = false, budget_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage(argv[0], "missing value");
      return argv[++i];
    };
    if (a == "--quick") {
      c.quick = true;
    } else if (a == "--json") {
      c.json_path = value();
    } else if (a == "--rtt") {
      c.rtt = parse_count(argv[0], value());
      rtt_set = true;
    } else if (a == "--warmup") {
      c.warmup = parse_count(argv[0], value());
      warmup_set = true;
    } else if (a == "--messages") {
      c.messages = parse_count(argv[0], value());
      messages_set = true;
    } else if (a == "--tp-warmup") {
      c.tp_warmup = parse_count(argv[0], value());
    } else if (a == "--ring-mib") {
      c.ring_bytes = static_cast<std::size_t>(parse_count(argv[0], value())) << 20;
      if ((c.ring_bytes & (c.ring_bytes - 1)) != 0) usage(argv[0], "--ring-mib must be a power of two");
    } else if (a == "--lat-ring-kib") {
      c.lat_ring_bytes = static_cast<std::size_t>(parse_count(argv[0], value())) << 10;
      if ((c.lat_ring_bytes & (c.lat_ring_bytes - 1)) != 0 || c.lat_ring_bytes < (64u << 10))
        usage(argv[0], "--lat-ring-kib must be a power of two, at least 64");
    } else if (a == "--budget") {
      c.budget_s = parse_seconds(argv[0], value());
      budget_set = true;
    } else if (a == "--stall") {
      c.stall_s = parse_seconds(argv[0], value());
    } else if (a == "--cpus") {
      const char* v = value();
      if (std::sscanf(v, "%d,%d", &c.cpu_a, &c.cpu_b) != 2 || c.cpu_a < 0 || c.cpu_b < 0)
        usage(argv[0], "--cpus takes two CPU numbers, e.g. 0,1");
    } else if (a == "--help" || a == "-h") {
      usage(argv[0], nullptr);
    } else {
      usage(argv[0], "unknown argument");
    }
  }
  if (c.quick) {
    if (!rtt_set) c.rtt = 20'000;
    if (!messages_set) c.messages = 2'000'000;
    if (!budget_set) c.budget_s = 3;
  }
  if (c.tp_warmup == 0) c.tp_warmup = c.ring_bytes / sizeof(std::uint64_t[8]);
  c.tp_warmup = std::min(c.tp_warmup, c.messages / 2);
  (void)warmup_set;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Clocks. Round trips are timed with the TSC (calibrated against CLOCK_MONOTONIC) where the CPU
// has an invariant one, else with CLOCK_MONOTONIC; throughput always with CLOCK_MONOTONIC, which
// is the same clock in every process.

std::uint64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

struct Ticks {
  bool tsc = false;
  double ns_per_tick = 1.0;
  const char* name() const { return tsc ? "rdtsc (calibrated)" : "clock_gettime(CLOCK_MONOTONIC)"; }
};
Ticks g_ticks;

bool cpu_has_invariant_tsc() {
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

inline std::uint64_t ticks() {
#if defined(__x86_64__)
  if (g_ticks.tsc) {
    _mm_lfence();  // the stamp is not taken before the work above it is done
    const std::uint64_t t = __rdtsc();
    _mm_lfence();  // nor after the work below it starts
    return t;
  }
#endif
  return mono_ns();
}

void calibrate_ticks() {
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
// The 64-byte message: a sequence number, a flag, five words derived from the sequence, and a
// checksum over all of them. Both transports carry exactly these bytes.

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
std::string check(const Msg& m, std::uint64_t seq) {
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

// ---------------------------------------------------------------------------------------------
// Shared state between the parent and the two children of a case, mapped before fork.

struct alignas(64) Control {
  alignas(64) std::atomic<std::uint32_t> ready{0};  // children that finished setup
  alignas(64) std::atomic<std::uint32_t> abort{0};  // set by whoever fails: the others stop waiting
  alignas(64) std::uint64_t start_ns = 0;           // throughput: consumer got message tp_warmup
  std::uint64_t end_ns = 0;                          // throughput: consumer got the last message
  std::uint64_t sent = 0;                            // messages (round trips) produced, END excluded
  std::uint64_t received = 0;                        // messages consumed, END excluded
  std::uint32_t stopped_early = 0;                   // the time budget cut the run short
  char error[512] = {};
  // Written by the parent after the case: how much of the host's CPUs others took meanwhile.
  double others_cpu_pct = 0;  // busy time not spent by our two children, % of all CPUs
  double steal_pct = 0;       // time the hypervisor gave to other guests, % of all CPUs
};

// An anonymous shared mapping, made before fork, unmapped by the owner's destructor.
class SharedMap {
 public:
  explicit SharedMap(std::size_t bytes) : bytes_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "*** FAIL: mmap of %zu shared bytes: %s\n", bytes, std::strerror(errno));
      std::exit(1);
    }
    base_ = p;
  }
  ~SharedMap() { ::munmap(base_, bytes_); }
  SharedMap(const SharedMap&) = delete;
  SharedMap& operator=(const SharedMap&) = delete;
  void* data() const { return base_; }

 private:
  void* base_ = nullptr;
  std::size_t bytes_;
};

// The role running in this child, for messages.
const char* g_role = "parent";
Control* g_control = nullptr;

// Prints the failure loudly, records it for the parent, tells the other child to stop, exits 1.
[[noreturn]] __attribute__((format(printf, 1, 2))) void die(const char* fmt, ...) {
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

// Spin-wait bookkeeping: every 4096 spins (or every empty poll) it reads the clock; no progress for
// --stall seconds, or the other side failed, ends the child.
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
      die("stopping: the other process failed");
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

void wait_both_ready(Control& c, double stall_s) {
  c.ready.fetch_add(1, std::memory_order_acq_rel);  // pairs with the acquire load below in the other child
  Waiter w(stall_s, "waiting for the other process to set up");
  while (c.ready.load(std::memory_order_acquire) < 2) w.spin(0);
}

void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0) die("sched_setaffinity(cpu %d): %s", cpu, std::strerror(errno));
}

// ---------------------------------------------------------------------------------------------
// The floor: a bare single-producer single-consumer ring of 64-byte slots in shared memory.
// Contract: one producer process calls push, one consumer process calls pop. Positions never wrap;
// the slot is position & mask. Each side keeps a private copy of the other's index and reads the
// shared one only when the copy says full (producer) or empty (consumer).

struct alignas(64) FloorRing {
  alignas(64) std::atomic<std::uint64_t> head{0};  // next slot to read; written by the consumer
  alignas(64) std::uint64_t tail_cached = 0;       // consumer's copy of tail
  alignas(64) std::atomic<std::uint64_t> tail{0};  // next slot to write; written by the producer
  alignas(64) std::uint64_t head_cached = 0;       // producer's copy of head
  alignas(64) std::uint64_t capacity = 0;          // slots, power of two
  // Msg slots[capacity] follow, 64-byte aligned.

  Msg* slots() { return reinterpret_cast<Msg*>(this + 1); }
  static std::size_t bytes_for(std::size_t capacity) { return sizeof(FloorRing) + capacity * sizeof(Msg); }

  void push(const Msg& m, Waiter& w) {
    const std::uint64_t t = tail.load(std::memory_order_relaxed);  // our own index
    if (t - head_cached >= capacity) {
      w.reset();
      // acquire: pairs with the release store of head in pop(); the slot is free to overwrite.
      while (t - (head_cached = head.load(std::memory_order_acquire)) >= capacity) w.spin(m.seq);
    }
    slots()[t & (capacity - 1)] = m;
    // release: publishes the slot written above; pairs with the acquire load of tail in pop().
    tail.store(t + 1, std::memory_order_release);
  }

  void pop(Msg& out, Waiter& w, std::uint64_t seq) {
    const std::uint64_t h = head.load(std::memory_order_relaxed);  // our own index
    if (h == tail_cached) {
      w.reset();
      // acquire: pairs with the release store of tail in push(); the slot's bytes are visible.
      while (h == (tail_cached = tail.load(std::memory_order_acquire))) w.spin(seq);
    }
    out = slots()[h & (capacity - 1)];
    // release: our read of the slot is done; pairs with the acquire load of head in push().
    head.store(h + 1, std::memory_order_release);
  }
};
static_assert(sizeof(FloorRing) % 64 == 0);

// ---------------------------------------------------------------------------------------------
// Results

// How disturbed a case was: CPU time others took while it ran.
struct Disturbance {
  double others_cpu_pct = 0;
  double steal_pct = 0;
};

struct Latency {
  bool ok = false;
  std::uint64_t samples = 0;
  bool stopped_early = false;
  Disturbance disturbance;
  double p50 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;  // one-way, ns
};

struct Throughput {
  bool ok = false;
  std::uint64_t messages = 0;  // timed, after the warm-up
  bool stopped_early = false;
  Disturbance disturbance;
  double seconds = 0;
  double msgs_per_s = 0;
  double mb_per_s = 0;  // payload bytes, 10^6 per MB
};

struct Transport {
  Latency latency;
  Throughput throughput;
};

Latency summarize(std::vector<std::uint64_t> rtt_ticks, bool stopped_early) {
  Latency l;
  l.samples = rtt_ticks.size();
  l.stopped_early = stopped_early;
  if (rtt_ticks.empty()) return l;
  std::sort(rtt_ticks.begin(), rtt_ticks.end());
  const auto one_way_ns = [](std::uint64_t t) { return static_cast<double>(t) * g_ticks.ns_per_tick / 2.0; };
  const auto at = [&](double q) {  // nearest rank
    auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(rtt_ticks.size())));
    rank = std::clamp<std::size_t>(rank, 1, rtt_ticks.size());
    return one_way_ns(rtt_ticks[rank - 1]);
  };
  l.p50 = at(0.50);
  l.p99 = at(0.99);
  l.p999 = at(0.999);
  l.max = one_way_ns(rtt_ticks.back());
  double sum = 0;
  for (auto t : rtt_ticks) sum += static_cast<double>(t);
  l.mean = one_way_ns(1) * sum / static_cast<double>(rtt_ticks.size());
  l.ok = true;
  return l;
}

// ---------------------------------------------------------------------------------------------
// Running a case: two children, pinned, watched by the parent.

// Busy and stolen CPU time of the whole host so far, from /proc/stat, in ns.
struct HostCpu {
  bool ok = false;
  std::uint64_t busy_ns = 0;
  std::uint64_t steal_ns = 0;
};

HostCpu host_cpu() {
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

std::uint64_t rusage_ns(const rusage& r) {
  const auto tv = [](const timeval& t) {
    return static_cast<std::uint64_t>(t.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(t.tv_usec) * 1000u;
  };
  return tv(r.ru_utime) + tv(r.ru_stime);
}

volatile sig_atomic_t g_interrupted = 0;
extern "C" void on_signal(int) { g_interrupted = 1; }

// Runs a (on cpu_a) and b (on cpu_b) in two children. Returns true when both exited 0; otherwise
// prints why, loudly, and returns false. Kills both if they outlive the hang limit.
bool run_pair(const Config& cfg, const char* name, Control& control, const char* role_a,
              const std::function<void()>& a, const char* role_b, const std::function<void()>& b) {
  std::fflush(stdout);
  std::fflush(stderr);
  g_control = &control;
  const HostCpu cpu_before = host_cpu();
  std::uint64_t children_ns = 0;  // CPU time of our two children
  const std::uint64_t started = mono_ns();
  auto spawn = [&](int cpu, const char* role, const std::function<void()>& body) -> pid_t {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::fprintf(stderr, "*** FAIL [%s]: fork: %s\n", name, std::strerror(errno));
      return -1;
    }
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      g_role = role;
      pin_to(cpu);
      try {
        body();
      } catch (const std::exception& e) {
        die("exception: %s", e.what());
      } catch (...) {
        die("unknown exception");
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(0);  // skip the parent's atexit handlers and static destructors
    }
    return pid;
  };
  pid_t pids[2] = {spawn(cfg.cpu_a, role_a, a), -1};
  if (pids[0] > 0) pids[1] = spawn(cfg.cpu_b, role_b, b);
  bool ok = pids[0] > 0 && pids[1] > 0;
  if (!ok) control.abort.store(1, std::memory_order_release);

  // Generous: a child that makes no progress ends itself after --stall seconds; this catches one
  // that is stuck somewhere no Waiter looks (inside a library call).
  const double hang_limit_s = cfg.budget_s + 3 * cfg.stall_s + 30;
  const std::uint64_t t0 = mono_ns();
  int alive = (pids[0] > 0) + (pids[1] > 0);
  bool killed = false;
  std::uint64_t failed_at = ok ? 0 : t0;  // when a child failed: the other gets a short grace
  while (alive > 0) {
    for (auto& pid : pids) {
      if (pid <= 0) continue;
      int status = 0;
      rusage usage{};
      const pid_t r = ::wait4(pid, &status, WNOHANG, &usage);
      if (r == 0) continue;
      if (r > 0) children_ns += rusage_ns(usage);
      if (r < 0) {
        std::fprintf(stderr, "*** FAIL [%s]: wait4: %s\n", name, std::strerror(errno));
        ok = false;
      } else if (WIFSIGNALED(status)) {
        std::fprintf(stderr, "\n*** FAIL [%s]: %s died of signal %d (%s)%s\n", name, pid == pids[0] ? role_a : role_b,
                     WTERMSIG(status), strsignal(WTERMSIG(status)), killed ? " (killed by the watchdog)" : "");
        ok = false;
      } else if (WEXITSTATUS(status) != 0) {
        std::fprintf(stderr, "*** FAIL [%s]: %s exited with status %d\n", name, pid == pids[0] ? role_a : role_b,
                     WEXITSTATUS(status));
        ok = false;
      }
      if (!ok) {
        control.abort.store(1, std::memory_order_release);  // the survivor stops waiting
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
        std::fprintf(stderr, "\n*** FAIL [%s]: the other process failed and this one did not stop within 2 s (stuck "
                             "in a library call?): killing it\n", name);
      else
        std::fprintf(stderr, "\n*** FAIL [%s]: HANG: still running after %.0f s; killing the children\n", name, elapsed);
      for (auto pid : pids)
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
// shmq

struct Names {
  std::string ping, pong, stream;  // A->B, B->A, producer->consumer
};

shmq::ChannelOptions channel_options(std::size_t ring_bytes, const std::filesystem::path& journal_dir) {
  shmq::ChannelOptions o;
  o.ring_bytes = ring_bytes;
  o.max_message_bytes = std::min(o.max_message_bytes, ring_bytes / 4);  // the channel's limit
  o.durability = shmq::Durability::Memory;
  o.journal_dir = journal_dir;
  return o;
}

const shmq::ConsumerOptions kSpin{.start = shmq::Start::Earliest, .wait = shmq::Wait::Spin, .max_in_flight = 64};

// Polls until a message comes, checking for stalls between polls.
shmq::Message poll_one(shmq::Consumer& c, Waiter& w, std::uint64_t seq) {
  w.reset();
  for (;;) {
    if (auto m = c.poll(10ms)) return *m;
    const shmq::Status s = c.status();
    if (s != shmq::Status::Timeout && s != shmq::Status::WouldBlock)
      die("poll returned nothing with status %s while waiting for sequence %" PRIu64, shmq::to_string(s), seq);
    w.check(seq);
  }
}

Msg read_msg(const shmq::Message& m, std::uint64_t seq) {
  if (m.payload().size() != sizeof(Msg))
    die("message for sequence %" PRIu64 " has %zu bytes, expected %zu", seq, m.payload().size(), sizeof(Msg));
  Msg out;
  std::memcpy(&out, m.payload().data(), sizeof out);
  return out;
}

void publish_or_die(shmq::Producer& p, std::span<const std::byte> bytes, const shmq::PublishOptions& opts,
                    std::uint64_t seq) {
  const shmq::Published r = p.publish(bytes, opts);
  if (r.status != shmq::Status::Ok)
    die("publish of sequence %" PRIu64 " returned %s", seq, shmq::to_string(r.status));
}

void ack_or_die(shmq::Consumer& c, const shmq::Message& m, std::uint64_t seq) {
  const shmq::Status s = c.ack(m);
  if (s != shmq::Status::Ok) die("ack of sequence %" PRIu64 " returned %s", seq, shmq::to_string(s));
}

std::span<const std::byte> bytes_of(const Msg& m) { return std::as_bytes(std::span<const Msg, 1>(&m, 1)); }

// The inner ids of one producer's messages, seen by one consumer, must follow each other.
struct IdCheck {
  std::optional<shmq::InnerId> last;
  void next(const shmq::Message& m, std::uint64_t seq) {
    const shmq::InnerId id = m.id();
    if (last && (id.producer != last->producer || id.seq != last->seq + 1))
      die("inner id (%" PRIu64 ", %" PRIu64 ") follows (%" PRIu64 ", %" PRIu64 ") at sequence %" PRIu64, id.producer,
          id.seq, last->producer, last->seq, seq);
    if (m.deliveries() > 1) die("sequence %" PRIu64 " delivered %u times", seq, m.deliveries());
    last = id;
  }
};

// Ping-pong over shmq. A: the timer. B: the echo.
void shmq_pinger(const Config& cfg, const Names& n, const std::filesystem::path& jdir, Control& c,
                 std::uint64_t* samples) {
  shmq::Channel pongs = shmq::Channel::open(n.pong, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Consumer in(pongs, "pinger", kSpin);
  shmq::Channel pings = shmq::Channel::open(n.ping, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Producer out(pings, "pinger");
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  wait_both_ready(c, cfg.stall_s);

  Waiter w(cfg.stall_s, "waiting for a pong");
  IdCheck ids;
  const std::uint64_t total = cfg.warmup + cfg.rtt;
  const std::uint64_t t_start = mono_ns();
  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  Msg m{};
  std::uint64_t seq = 0;
  for (; seq < total; ++seq) {
    if ((seq & 1023u) == 0 && seq > cfg.warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    const std::uint64_t t0 = ticks();
    publish_or_die(out, bytes_of(m), popts, seq);
    shmq::Message reply = poll_one(in, w, seq);
    const std::uint64_t t1 = ticks();
    const Msg got = read_msg(reply, seq);
    if (auto why = check(got, seq); !why.empty()) die("pong: %s", why.c_str());
    ids.next(reply, seq);
    ack_or_die(in, reply, seq);
    if (seq >= cfg.warmup) samples[seq - cfg.warmup] = t1 - t0;
  }
  fill(m, seq, kEnd);
  publish_or_die(out, bytes_of(m), popts, seq);
  c.sent = seq;
}

void shmq_ponger(const Config& cfg, const Names& n, const std::filesystem::path& jdir, Control& c) {
  shmq::Channel pings = shmq::Channel::open(n.ping, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Consumer in(pings, "ponger", kSpin);
  shmq::Channel pongs = shmq::Channel::open(n.pong, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Producer out(pongs, "ponger");
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  wait_both_ready(c, cfg.stall_s);

  Waiter w(cfg.stall_s, "waiting for a ping");
  IdCheck ids;
  for (std::uint64_t seq = 0;; ++seq) {
    shmq::Message ping = poll_one(in, w, seq);
    const Msg got = read_msg(ping, seq);
    if (auto why = check(got, seq); !why.empty()) die("ping: %s", why.c_str());
    ids.next(ping, seq);
    if (got.flags == kEnd) {
      ack_or_die(in, ping, seq);
      c.received = seq;
      return;
    }
    publish_or_die(out, ping.payload(), popts, seq);  // echo straight from the ring, then ack
    ack_or_die(in, ping, seq);
  }
}

void shmq_producer(const Config& cfg, const Names& n, const std::filesystem::path& jdir, Control& c) {
  shmq::Channel ch = shmq::Channel::open(n.stream, channel_options(cfg.ring_bytes, jdir));
  shmq::Producer out(ch, "producer");
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  wait_both_ready(c, cfg.stall_s);

  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  Msg m{};
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < cfg.messages; ++seq) {
    if ((seq & 4095u) == 0 && seq > cfg.tp_warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    publish_or_die(out, bytes_of(m), popts, seq);
  }
  fill(m, seq, kEnd);
  publish_or_die(out, bytes_of(m), popts, seq);
  c.sent = seq;
}

void shmq_consumer(const Config& cfg, const Names& n, const std::filesystem::path& jdir, Control& c) {
  shmq::Channel ch = shmq::Channel::open(n.stream, channel_options(cfg.ring_bytes, jdir));
  shmq::Consumer in(ch, "consumer", kSpin);
  wait_both_ready(c, cfg.stall_s);

  Waiter w(cfg.stall_s, "waiting for the next message");
  IdCheck ids;
  for (std::uint64_t seq = 0;; ++seq) {
    shmq::Message msg = poll_one(in, w, seq);
    const Msg got = read_msg(msg, seq);
    if (auto why = check(got, seq); !why.empty()) die("%s", why.c_str());
    ids.next(msg, seq);
    ack_or_die(in, msg, seq);
    if (seq == cfg.tp_warmup) c.start_ns = mono_ns();
    if (got.flags == kEnd) {
      c.end_ns = mono_ns();
      c.received = seq;
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Floor

void floor_pinger(const Config& cfg, FloorRing& pings, FloorRing& pongs, Control& c, std::uint64_t* samples) {
  wait_both_ready(c, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a pong");
  const std::uint64_t total = cfg.warmup + cfg.rtt;
  const std::uint64_t t_start = mono_ns();
  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  Msg m{}, got{};
  std::uint64_t seq = 0;
  for (; seq < total; ++seq) {
    if ((seq & 1023u) == 0 && seq > cfg.warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    const std::uint64_t t0 = ticks();
    pings.push(m, w);
    pongs.pop(got, w, seq);
    const std::uint64_t t1 = ticks();
    if (auto why = check(got, seq); !why.empty()) die("pong: %s", why.c_str());
    if (seq >= cfg.warmup) samples[seq - cfg.warmup] = t1 - t0;
  }
  fill(m, seq, kEnd);
  pings.push(m, w);
  c.sent = seq;
}

void floor_ponger(const Config& cfg, FloorRing& pings, FloorRing& pongs, Control& c) {
  wait_both_ready(c, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a ping");
  Msg got{};
  for (std::uint64_t seq = 0;; ++seq) {
    pings.pop(got, w, seq);
    if (auto why = check(got, seq); !why.empty()) die("ping: %s", why.c_str());
    if (got.flags == kEnd) {
      c.received = seq;
      return;
    }
    pongs.push(got, w);
  }
}

void floor_producer(const Config& cfg, FloorRing& ring, Control& c) {
  wait_both_ready(c, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for ring space");
  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  Msg m{};
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < cfg.messages; ++seq) {
    if ((seq & 4095u) == 0 && seq > cfg.tp_warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    ring.push(m, w);
  }
  fill(m, seq, kEnd);
  ring.push(m, w);
  c.sent = seq;
}

void floor_consumer(const Config& cfg, FloorRing& ring, Control& c) {
  wait_both_ready(c, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for the next message");
  Msg got{};
  for (std::uint64_t seq = 0;; ++seq) {
    ring.pop(got, w, seq);
    if (auto why = check(got, seq); !why.empty()) die("%s", why.c_str());
    if (seq == cfg.tp_warmup) c.start_ns = mono_ns();
    if (got.flags == kEnd) {
      c.end_ns = mono_ns();
      c.received = seq;
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cases, as seen from the parent.

Control* new_control(SharedMap& map) { return new (map.data()) Control(); }

Latency latency_case(const Config& cfg, const char* name, const std::function<void(Control&, std::uint64_t*)>& pinger,
                     const std::function<void(Control&)>& ponger) {
  SharedMap control_map(sizeof(Control));
  SharedMap samples_map(cfg.rtt * sizeof(std::uint64_t));
  Control& c = *new_control(control_map);
  auto* samples = static_cast<std::uint64_t*>(samples_map.data());
  const bool ok = run_pair(
      cfg, name, c, "pinger", [&] { pinger(c, samples); }, "ponger", [&] { ponger(c); });
  if (!ok) return {};
  const std::uint64_t measured = c.sent > cfg.warmup ? c.sent - cfg.warmup : 0;
  if (c.received != c.sent) {
    std::fprintf(stderr, "*** FAIL [%s]: pinger sent %" PRIu64 " pings, ponger saw %" PRIu64 "\n", name, c.sent,
                 c.received);
    return {};
  }
  if (measured == 0) {
    std::fprintf(stderr, "*** FAIL [%s]: the time budget ended the run during the warm-up: no sample\n", name);
    return {};
  }
  Latency l = summarize(std::vector<std::uint64_t>(samples, samples + measured), c.stopped_early != 0);
  l.disturbance = {c.others_cpu_pct, c.steal_pct};
  return l;
}

Throughput throughput_case(const Config& cfg, const char* name, const std::function<void(Control&)>& producer,
                           const std::function<void(Control&)>& consumer) {
  SharedMap control_map(sizeof(Control));
  Control& c = *new_control(control_map);
  const bool ok = run_pair(
      cfg, name, c, "producer", [&] { producer(c); }, "consumer", [&] { consumer(c); });
  if (!ok) return {};
  if (c.received != c.sent) {
    std::fprintf(stderr, "*** FAIL [%s]: producer sent %" PRIu64 " messages, consumer received %" PRIu64 "\n", name,
                 c.sent, c.received);
    return {};
  }
  if (c.end_ns <= c.start_ns || c.start_ns == 0 || c.sent <= cfg.tp_warmup) {
    std::fprintf(stderr, "*** FAIL [%s]: no measurable interval (start %" PRIu64 ", end %" PRIu64 ")\n", name,
                 c.start_ns, c.end_ns);
    return {};
  }
  Throughput t;
  t.messages = c.sent - cfg.tp_warmup;  // from message tp_warmup to END: sent - tp_warmup gaps
  t.stopped_early = c.stopped_early != 0;
  t.disturbance = {c.others_cpu_pct, c.steal_pct};
  t.seconds = static_cast<double>(c.end_ns - c.start_ns) / 1e9;
  t.msgs_per_s = static_cast<double>(t.messages) / t.seconds;
  t.mb_per_s = t.msgs_per_s * static_cast<double>(sizeof(Msg)) / 1e6;
  t.ok = true;
  return t;
}

Transport run_floor(const Config& cfg) {
  Transport r;
  {
    const std::size_t cap = cfg.lat_ring_bytes / sizeof(Msg);
    SharedMap a(FloorRing::bytes_for(cap)), b(FloorRing::bytes_for(cap));
    auto* pings = new (a.data()) FloorRing();
    auto* pongs = new (b.data()) FloorRing();
    pings->capacity = pongs->capacity = cap;
    r.latency = latency_case(
        cfg, "floor latency", [&](Control& c, std::uint64_t* s) { floor_pinger(cfg, *pings, *pongs, c, s); },
        [&](Control& c) { floor_ponger(cfg, *pings, *pongs, c); });
  }
  {
    const std::size_t cap = cfg.ring_bytes / sizeof(Msg);
    SharedMap a(FloorRing::bytes_for(cap));
    auto* ring = new (a.data()) FloorRing();
    ring->capacity = cap;
    r.throughput = throughput_case(
        cfg, "floor throughput", [&](Control& c) { floor_producer(cfg, *ring, c); },
        [&](Control& c) { floor_consumer(cfg, *ring, c); });
  }
  return r;
}

// Creates the channel in the parent (and closes it again) so that the children only attach.
bool create_channel(std::size_t ring_bytes, const std::string& name, const std::filesystem::path& jdir) {
  try {
    if (shmq::Channel::exists(name)) shmq::Channel::remove(name, jdir);
    shmq::Channel ch = shmq::Channel::open(name, channel_options(ring_bytes, jdir));
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\n*** FAIL [shmq]: creating channel %s: %s\n", name.c_str(), e.what());
    return false;
  }
}

bool remove_channel(const std::string& name, const std::filesystem::path& jdir) {
  try {
    shmq::Channel::remove(name, jdir);
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [shmq]: removing channel %s: %s\n", name.c_str(), e.what());
    return false;
  }
}

Transport run_shmq(const Config& cfg, const std::filesystem::path& jdir, bool& cleanup_ok) {
  Transport r;
  const std::string base = "shmqpp_" + std::to_string(::getpid());
  const Names n{base + "_ping", base + "_pong", base + "_stream"};
  if (create_channel(cfg.lat_ring_bytes, n.ping, jdir) && create_channel(cfg.lat_ring_bytes, n.pong, jdir)) {
    r.latency = latency_case(
        cfg, "shmq latency", [&](Control& c, std::uint64_t* s) { shmq_pinger(cfg, n, jdir, c, s); },
        [&](Control& c) { shmq_ponger(cfg, n, jdir, c); });
  }
  if (create_channel(cfg.ring_bytes, n.stream, jdir)) {
    r.throughput = throughput_case(
        cfg, "shmq throughput", [&](Control& c) { shmq_producer(cfg, n, jdir, c); },
        [&](Control& c) { shmq_consumer(cfg, n, jdir, c); });
  }
  for (const auto& name : {n.ping, n.pong, n.stream})
    if (shmq::Channel::exists(name)) cleanup_ok = remove_channel(name, jdir) && cleanup_ok;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Report

std::string fmt(double v, int decimals) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", decimals, v);
  return b;
}

struct Row {
  std::string name;
  bool ok;
  double shmq, floor;
  int decimals;
};

std::vector<Row> rows(const Transport& s, const Transport& f) {
  const bool lat = s.latency.ok && f.latency.ok;
  const bool tp = s.throughput.ok && f.throughput.ok;
  return {
      {"one-way latency p50 (ns)", lat, s.latency.p50, f.latency.p50, 0},
      {"one-way latency p99 (ns)", lat, s.latency.p99, f.latency.p99, 0},
      {"one-way latency p99.9 (ns)", lat, s.latency.p999, f.latency.p999, 0},
      {"one-way latency max (ns)", lat, s.latency.max, f.latency.max, 0},
      {"throughput 64 B (M msgs/s)", tp, s.throughput.msgs_per_s / 1e6, f.throughput.msgs_per_s / 1e6, 2},
      {"throughput 64 B (MB/s)", tp, s.throughput.mb_per_s, f.throughput.mb_per_s, 0},
  };
}

void print_table(const Transport& s, const Transport& f) {
  std::printf("| case | shmq | floor | ratio (shmq/floor) |\n|---|---:|---:|---:|\n");
  const bool each_ok[2][2] = {{s.latency.ok, f.latency.ok}, {s.throughput.ok, f.throughput.ok}};
  int i = 0;
  for (const Row& r : rows(s, f)) {
    const bool* ok = each_ok[i++ < 4 ? 0 : 1];
    const std::string a = ok[0] ? fmt(r.shmq, r.decimals) : "FAILED";
    const std::string b = ok[1] ? fmt(r.floor, r.decimals) : "FAILED";
    const std::string ratio = r.ok && r.floor > 0 ? fmt(r.shmq / r.floor, 2) : "-";
    std::printf("| %s | %s | %s | %s |\n", r.name.c_str(), a.c_str(), b.c_str(), ratio.c_str());
  }
}

void json_latency(FILE* f, const Latency& l) {
  if (!l.ok) {
    std::fprintf(f, "null");
    return;
  }
  std::fprintf(f,
               "{\"samples\": %" PRIu64 ", \"stopped_early\": %s, \"p50_ns\": %.1f, \"p99_ns\": %.1f, "
               "\"p999_ns\": %.1f, \"max_ns\": %.1f, \"mean_ns\": %.1f, \"others_cpu_pct\": %.1f, \"steal_pct\": %.1f}",
               l.samples, l.stopped_early ? "true" : "false", l.p50, l.p99, l.p999, l.max, l.mean,
               l.disturbance.others_cpu_pct, l.disturbance.steal_pct);
}

void json_throughput(FILE* f, const Throughput& t) {
  if (!t.ok) {
    std::fprintf(f, "null");
    return;
  }
  std::fprintf(f,
               "{\"messages\": %" PRIu64 ", \"stopped_early\": %s, \"seconds\": %.6f, \"msgs_per_s\": %.1f, "
               "\"mb_per_s\": %.1f, \"others_cpu_pct\": %.1f, \"steal_pct\": %.1f}",
               t.messages, t.stopped_early ? "true" : "false", t.seconds, t.msgs_per_s, t.mb_per_s,
               t.disturbance.others_cpu_pct, t.disturbance.steal_pct);
}

bool write_json(const Config& cfg, const Transport& s, const Transport& f, bool ok, const std::string& cpu_model,
                double load1) {
  FILE* out = std::fopen(cfg.json_path.c_str(), "w");
  if (out == nullptr) {
    std::fprintf(stderr, "*** FAIL: cannot write %s: %s\n", cfg.json_path.c_str(), std::strerror(errno));
    return false;
  }
  std::string model;
  for (char ch : cpu_model)
    if (ch != '"' && ch != '\\') model += ch;
  std::fprintf(out, "{\n  \"tool\": \"shmq_pingpong\",\n  \"ok\": %s,\n", ok ? "true" : "false");
  std::fprintf(out,
               "  \"config\": {\"quick\": %s, \"warmup\": %" PRIu64 ", \"rtt\": %" PRIu64 ", \"messages\": %" PRIu64
               ", \"tp_warmup\": %" PRIu64 ", \"message_bytes\": %zu, \"ring_bytes\": %zu, \"lat_ring_bytes\": %zu, \"budget_s\": %.1f, \"cpus\": [%d, %d], "
               "\"durability\": \"Memory\", \"wait\": \"Spin\"},\n",
               cfg.quick ? "true" : "false", cfg.warmup, cfg.rtt, cfg.messages, cfg.tp_warmup, sizeof(Msg), cfg.ring_bytes, cfg.lat_ring_bytes,
               cfg.budget_s, cfg.cpu_a, cfg.cpu_b);
  std::fprintf(out, "  \"host\": {\"cpu\": \"%s\", \"load1_at_start\": %.2f, \"timer\": \"%s\", \"ns_per_tick\": %.6f},\n",
               model.c_str(), load1, g_ticks.name(), g_ticks.ns_per_tick);
  std::fprintf(out, "  \"shmq\": {\"latency\": ");
  json_latency(out, s.latency);
  std::fprintf(out, ", \"throughput\": ");
  json_throughput(out, s.throughput);
  std::fprintf(out, "},\n  \"floor\": {\"latency\": ");
  json_latency(out, f.latency);
  std::fprintf(out, ", \"throughput\": ");
  json_throughput(out, f.throughput);
  std::fprintf(out, "},\n  \"ratios_shmq_over_floor\": {");
  bool first = true;
  const char* keys[] = {"latency_p50", "latency_p99", "latency_p999", "latency_max", "msgs_per_s", "mb_per_s"};
  int i = 0;
  for (const Row& r : rows(s, f)) {
    if (r.ok && r.floor > 0) {
      std::fprintf(out, "%s\"%s\": %.3f", first ? "" : ", ", keys[i], r.shmq / r.floor);
      first = false;
    }
    ++i;
  }
  std::fprintf(out, "}\n}\n");
  const bool closed = std::fclose(out) == 0;
  if (!closed) std::fprintf(stderr, "*** FAIL: writing %s: %s\n", cfg.json_path.c_str(), std::strerror(errno));
  return closed;
}

std::string cpu_model() {
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

double load1() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

// The first two CPUs this process may run on (unless --cpus said).
void choose_cpus(Config& cfg) {
  if (cfg.cpu_a >= 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return;
  std::vector<int> cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  if (cpus.size() >= 2) {
    cfg.cpu_a = cpus[0];
    cfg.cpu_b = cpus[1];
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg = parse_args(argc, argv);
  choose_cpus(cfg);
  calibrate_ticks();
  ::signal(SIGINT, on_signal);
  ::signal(SIGTERM, on_signal);

  const std::string model = cpu_model();
  const double load = load1();
  std::printf("shmq_pingpong%s: %zu-byte messages, Durability::Memory, Wait::Spin\n", cfg.quick ? " (--quick)" : "",
              sizeof(Msg));
  std::printf("host: %s, %ld CPUs online, load average %.2f at start\n", model.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN),
              load);
  if (cfg.cpu_a >= 0)
    std::printf("processes pinned to CPU %d and CPU %d\n", cfg.cpu_a, cfg.cpu_b);
  else
    std::printf("WARNING: fewer than 2 CPUs available: processes NOT pinned; spinning ping-pong on one CPU "
                "measures the scheduler, not the queue\n");
  std::printf("latency: %" PRIu64 " round trips after %" PRIu64 " warm-up, rings of %zu KiB, timer %s (%.4f ns/tick)\n",
              cfg.rtt, cfg.warmup, cfg.lat_ring_bytes >> 10, g_ticks.name(), g_ticks.ns_per_tick);
  std::printf("throughput: %" PRIu64 " messages (the first %" PRIu64 " untimed), each checked for order and "
              "checksum, ring of %zu MiB\nbudget: %.0f s per case\n",
              cfg.messages, cfg.tp_warmup, cfg.ring_bytes >> 20, cfg.budget_s);

  char dir[] = "/tmp/shmq-pingpong-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::fprintf(stderr, "*** FAIL: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  const std::filesystem::path jdir = dir;

  bool cleanup_ok = true;
  const Transport floor = run_floor(cfg);
  const Transport shmq = g_interrupted ? Transport{} : run_shmq(cfg, jdir, cleanup_ok);
  std::error_code ec;
  std::filesystem::remove_all(jdir, ec);

  const bool ok = floor.latency.ok && floor.throughput.ok && shmq.latency.ok && shmq.throughput.ok && cleanup_ok &&
                  !g_interrupted;
  std::printf("\n");
  print_table(shmq, floor);
  for (const auto* t : {&shmq.latency, &floor.latency})
    if (t->ok && t->stopped_early)
      std::printf("note: %s latency stopped early by the time budget: %" PRIu64 " samples\n",
                  t == &shmq.latency ? "shmq" : "floor", t->samples);
  for (const auto* t : {&shmq.throughput, &floor.throughput})
    if (t->ok && t->stopped_early)
      std::printf("note: %s throughput stopped early by the time budget: %" PRIu64 " messages\n",
                  t == &shmq.throughput ? "shmq" : "floor", t->messages);
  std::printf("ratio = shmq / floor: above 1 is slower for latency, below 1 is slower for throughput.\n");
  // Others' CPU use while each case ran: on a shared machine, the figures' context.
  struct Case {
    const char* name;
    bool ok;
    Disturbance d;
  };
  const Case cases[] = {{"floor latency", floor.latency.ok, floor.latency.disturbance},
                        {"floor throughput", floor.throughput.ok, floor.throughput.disturbance},
                        {"shmq latency", shmq.latency.ok, shmq.latency.disturbance},
                        {"shmq throughput", shmq.throughput.ok, shmq.throughput.disturbance}};
  std::printf("CPU taken by other processes / stolen by the hypervisor while each case ran (%% of all CPUs):");
  bool disturbed = false;
  for (const Case& k : cases) {
    if (!k.ok) continue;
    std::printf(" %s %.0f/%.0f;", k.name, k.d.others_cpu_pct, k.d.steal_pct);
    disturbed = disturbed || k.d.others_cpu_pct + k.d.steal_pct > 10;
  }
  std::printf("\n");
  if (disturbed)
    std::printf("WARNING: other work took more than 10%% of the CPUs during a case: those figures are disturbed; "
                "run again on a quieter machine.\n");

  bool json_ok = true;
  if (!cfg.json_path.empty()) json_ok = write_json(cfg, shmq, floor, ok, model, load);
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_pingpong FAILED: see the *** FAIL lines above; no figure is reported for a "
                         "failed case.\n");
    return 1;
  }
  return json_ok ? 0 : 1;
}
