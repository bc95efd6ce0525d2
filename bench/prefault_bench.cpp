// shmq_prefault_bench: what the first lap of a new ring costs a producer, with and without
// ChannelOptions::prefault and ChannelOptions::huge_pages.
//
// For each case, the parent creates the channel (Memory durability, a 64 MiB ring by default, no
// group: nothing gates the lap) and times the open; a child process attaches with the same options
// (timing its open too), publishes one message to warm its code, then 0.9 of a lap of 64-byte
// messages, timing each publish (CLOCK_MONOTONIC around the call) and counting its page faults
// (getrusage around the lap). It reports p50 / p99 / p99.9 / max, the faults, and the opens. The
// sparse 4 KiB case (prefault off, huge pages off) is the reference the others are compared with.
//
// Huge pages need a hugetlbfs mount and free huge pages (see ChannelOptions::huge_pages); where the
// host has none, their rows say why they were not measured (the Error open threw). To measure them
// without touching the host's mounts (root):
//   sudo unshare -m sh -c 'mkdir -p /tmp/huge && mount -t hugetlbfs none /tmp/huge &&
//        n=$(cat /proc/sys/vm/nr_hugepages); echo $((n + 80)) > /proc/sys/vm/nr_hugepages;
//        build/bench/shmq_prefault_bench; echo $n > /proc/sys/vm/nr_hugepages'
//
// Usage: shmq_prefault_bench [--ring-bytes N] [--size BYTES] [--runs R]
#include <shmq/shmq.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::uint64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

struct LapResult {
  int ok = 0;  // 1: measured
  std::uint64_t messages = 0;
  std::uint64_t p50 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
  long minor_faults = 0, major_faults = 0;
  std::uint64_t attach_ns = 0;
  char error[512] = {};
};

struct Case {
  const char* name;
  bool prefault;
  bool huge_pages;
};

// In the child: attach, warm, publish 0.9 of a lap, measure.
LapResult publish_first_lap(const std::string& channel, const shmq::ChannelOptions& o, std::size_t size) {
  LapResult r;
  try {
    const std::uint64_t t0 = mono_ns();
    shmq::Channel ch = shmq::Channel::open(channel, o);
    r.attach_ns = mono_ns() - t0;
    shmq::Producer p(ch, "bench");
    const std::string payload(size, 'x');
    if (p.publish(payload).status != shmq::Status::Ok) throw std::runtime_error("the warm-up publish failed");
    // A record: its 40-byte header (ring::kHeaderBytes) and payload, 8-byte aligned.
    const std::uint64_t frame = (size + 40 + 7) / 8 * 8;
    const std::uint64_t n = o.ring_bytes * 9 / 10 / frame;
    std::vector<std::uint64_t> lat(n);
    rusage before{}, after{};
    ::getrusage(RUSAGE_SELF, &before);
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::uint64_t a = mono_ns();
      const shmq::Published pub = p.publish(payload);
      lat[i] = mono_ns() - a;
      if (pub.status != shmq::Status::Ok) throw std::runtime_error(std::string("publish: ") + shmq::to_string(pub.status));
    }
    ::getrusage(RUSAGE_SELF, &after);
    r.minor_faults = after.ru_minflt - before.ru_minflt;
    r.major_faults = after.ru_majflt - before.ru_majflt;
    std::uint64_t sum = 0;
    for (std::uint64_t v : lat) sum += v;
    std::sort(lat.begin(), lat.end());
    auto at = [&](double q) { return lat[std::min<std::uint64_t>(n - 1, static_cast<std::uint64_t>(q * static_cast<double>(n)))]; };
    r.messages = n;
    r.p50 = at(0.50);
    r.p99 = at(0.99);
    r.p999 = at(0.999);
    r.max = lat.back();
    r.mean = sum / n;
    r.ok = 1;
  } catch (const std::exception& e) {
    std::snprintf(r.error, sizeof r.error, "%s", e.what());
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t ring_bytes = 64u << 20, size = 64;
  int runs = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--ring-bytes" && i + 1 < argc) ring_bytes = std::strtoull(argv[++i], nullptr, 0);
    else if (a == "--size" && i + 1 < argc) size = std::strtoull(argv[++i], nullptr, 0);
    else if (a == "--runs" && i + 1 < argc) runs = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--ring-bytes N] [--size BYTES] [--runs R]\n", argv[0]);
      return 2;
    }
  }
  const Case cases[] = {
      {"4 KiB pages, sparse (prefault off)", false, false},
      {"4 KiB pages, prefault", true, false},
      {"huge pages, prefault off", false, true},
      {"huge pages, prefault", true, true},
  };
  std::printf("# shmq first-lap publish: %zu-byte messages, 0.9 of a %zu MiB ring, Memory, no group; "
              "one attaching producer process; %d runs a case\n\n",
              size, ring_bytes >> 20, runs);
  std::printf("| case | run | messages | p50 ns | p99 ns | p99.9 ns | max ns | mean ns | minor faults | major faults | "
              "create ms | attach ms |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  int failed = 0;
  for (const Case& c : cases) {
    for (int run = 1; run <= runs; ++run) {
      const std::string channel = "bench-prefault-" + std::to_string(::getpid());
      shmq::ChannelOptions o;
      o.durability = shmq::Durability::Memory;
      o.ring_bytes = ring_bytes;
      o.prefault = c.prefault;
      o.huge_pages = c.huge_pages;
      try {
        if (shmq::Channel::exists(channel)) shmq::Channel::remove(channel);
      } catch (...) {
      }
      std::uint64_t create_ns = 0;
      try {
        const std::uint64_t t0 = mono_ns();
        shmq::Channel ch = shmq::Channel::open(channel, o);
        create_ns = mono_ns() - t0;
        int fds[2];
        if (::pipe(fds) != 0) return 1;
        std::fflush(stdout);
        const pid_t pid = ::fork();
        if (pid == 0) {
          ::close(fds[0]);
          const LapResult r = publish_first_lap(channel, o, size);
          (void)!::write(fds[1], &r, sizeof r);
          ::_exit(r.ok ? 0 : 1);
        }
        ::close(fds[1]);
        LapResult r;
        const bool got = ::read(fds[0], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
        ::close(fds[0]);
        int status = 0;
        ::waitpid(pid, &status, 0);
        if (!got || !r.ok) {
          std::printf("| %s | %d | FAILED: %s |\n", c.name, run, got ? r.error : "the child died");
          ++failed;
        } else {
          std::printf("| %s | %d | %llu | %llu | %llu | %llu | %llu | %llu | %ld | %ld | %.1f | %.1f |\n", c.name, run,
                      static_cast<unsigned long long>(r.messages), static_cast<unsigned long long>(r.p50),
                      static_cast<unsigned long long>(r.p99), static_cast<unsigned long long>(r.p999),
                      static_cast<unsigned long long>(r.max), static_cast<unsigned long long>(r.mean), r.minor_faults,
                      r.major_faults, static_cast<double>(create_ns) / 1e6, static_cast<double>(r.attach_ns) / 1e6);
        }
      } catch (const shmq::Error& e) {
        std::printf("| %s | %d | not measured: %s |\n", c.name, run, e.what());
        break;  // the same Error every run
      }
      try {
        shmq::Channel::remove(channel);
      } catch (...) {
      }
      std::fflush(stdout);
    }
  }
  return failed == 0 ? 0 : 1;
}
