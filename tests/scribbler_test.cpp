// The scribbler (issue 11.16): a peer writes seeded random bytes over the header, the tables and
// the ring of a live channel while an honest process publishes, consumes, acks, nacks, claims,
// joins and reads stats. The honest process maps the segment between PROT_NONE guard pages (the
// test seam detail::set_guard_pages), so an access outside the segment is a SIGSEGV. It may see
// Status::Corrupt or a shmq::Error (and then stops, as an application would); it must never die
// of a signal (SIGSEGV, SIGBUS, abort) nor hang (each trial has a deadline).
//
// Every seed is one trial: a fresh channel, one honest child (a producer thread and a consumer on
// the main thread), the parent scribbling through its own raw mapping. One seed in four makes an
// Async channel (made by a short-lived child, so that the honest child is its journaler: the
// journaler thread reads the scribbled ring too). The seed is printed for
// every failure; one seed is replayed with SHMQ_SCRIBBLER_FIRST_SEED=S SHMQ_SCRIBBLER_SEEDS=1.
//
// make test runs 1000 seeds (100 under the sanitizers). The long run (knobs: SHMQ_SCRIBBLER_RUN_MS,
// the honest process's run per trial, 15; SHMQ_SCRIBBLER_WRITES, writes per trial at most, 24):
//   SHMQ_SCRIBBLER_SEEDS=20000 build/tests/scribbler_test
//   SHMQ_SCRIBBLER_SEEDS=5000 SHMQ_SCRIBBLER_WRITES=200 SHMQ_SCRIBBLER_RUN_MS=30 build/tests/scribbler_test
#include <execinfo.h>
#include <gtest/gtest.h>
#include <link.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>

#include "hostile_support.hpp"
#include "shm/segment.hpp"
#include "support.hpp"

namespace {
using namespace shmq;
using namespace shmq::test;

constexpr int kStoppedOnCorrupt = 4;  // the honest child met Corrupt or an Error and stopped: correct

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : fallback;
}

ChannelOptions scribbled_options() {
  ChannelOptions o = memory_options(1 << 16, 1 << 10);  // 64 KiB ring: records wrap quickly
  o.max_producers = 4;
  o.max_groups = 2;
  o.max_consumers = 4;
  o.dedup_window = 64;
  o.liveness_interval = std::chrono::milliseconds(5);
  return o;
}

// In the honest child: on SIGSEGV/SIGBUS/SIGABRT, print the faulting address and the stack as
// offsets into the test executable (addr2line -f -C -e scribbler_test OFFSET names them), then
// die of the signal as before.
std::uintptr_t g_exe_base = 0;
void report_crash(int sig, siginfo_t* info, void*) {
  char line[160];
  int n = std::snprintf(line, sizeof line, "honest process: signal %d at address %p; stack (offsets in the executable):\n", sig,
                        info ? info->si_addr : nullptr);
  (void)!::write(2, line, static_cast<std::size_t>(n));
  void* frames[48];
  const int depth = ::backtrace(frames, 48);
  for (int i = 0; i < depth; ++i) {
    n = std::snprintf(line, sizeof line, "  #%d 0x%lx\n", i, static_cast<unsigned long>(reinterpret_cast<std::uintptr_t>(frames[i]) - g_exe_base));
    (void)!::write(2, line, static_cast<std::size_t>(n));
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}
void install_crash_reporter() {
  ::dl_iterate_phdr([](dl_phdr_info* info, std::size_t, void*) {
    g_exe_base = info->dlpi_addr;  // the first object is the executable
    return 1;
  }, nullptr);
  void* warm[1];
  (void)::backtrace(warm, 1);  // loads libgcc now, not in the handler
  struct sigaction sa {};
  sa.sa_sigaction = &report_crash;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT}) ::sigaction(sig, &sa, nullptr);
}

// The honest process: a producer thread (publish, claim/commit), the main thread consuming in two
// groups (ack, nack), joining and leaving, and reading stats, for RUN of time after GO. Returns 0,
// or kStoppedOnCorrupt when something told it the channel is corrupt.
int honest(const std::string& name, const Pipe& ready, const Pipe& go, std::chrono::milliseconds run, bool journal) {
#if defined(SHMQ_CRASH_POINTS)
  detail::set_guard_pages(true);
#endif
  install_crash_reporter();
  std::atomic<bool> corrupt{false}, stop{false};
  try {
    Channel ch = Channel::attach(name, journal);  // a durable channel: this process is its journaler
    Consumer c1(ch, "g1");
    ConsumerOptions timed;
    timed.visibility_timeout = 3ms;  // the reaper's timeout path runs too
    std::optional<Consumer> c2(std::in_place, ch, "g2", timed);
    Producer p(ch, "p");
    for (int i = 0; i < 4; ++i) CHILD_CHECK(p.publish("before").status == Status::Ok);
    // A consumer that dies holding a message: the reaper gives it back during the run, over
    // scribbled tables.
    const pid_t dying = ::fork();
    if (dying == 0) {
      try {
        Channel d = Channel::attach(name, false);
        Consumer c(d, "g1");
        (void)c.poll(100ms);
      } catch (...) {
      }
      ::_exit(0);
    }
    CHILD_CHECK(dying > 0 && wait_child(dying, 10s).exited);
    CHILD_CHECK(ready.send('r'));
    char x;
    CHILD_CHECK(go.receive(x, 10s));
    const auto end = Clock::now() + run;
    std::thread producer([&] {
      try {
        PublishOptions po;
        po.timeout = 2ms;
        for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
          if (i % 7 == 3) {
            Claim c = p.claim(24, po);
            if (c) {
              std::memset(c.data().data(), 'c', 24);
              if (c.commit().status == Status::Corrupt) corrupt = true;
            }
          } else if (i % 5 == 1) {  // a retry of an id that may be in the dedup window
            PublishOptions retry = po;
            retry.seq = 1 + i / 2;
            const Published r = p.publish("retry " + std::to_string(i), retry);
            if (r.status == Status::Corrupt) corrupt = true;
          } else {
            const Published r = p.publish("message " + std::to_string(i), po);
            if (r.status == Status::Corrupt) corrupt = true;
          }
          if (corrupt) break;
        }
      } catch (const Error&) {
        corrupt = true;
      }
    });
    try {
      for (std::uint64_t i = 0; Clock::now() < end && !corrupt; ++i) {
        Consumer& c = (i % 3 == 2 && c2) ? *c2 : c1;
        if (auto m = c.poll(1ms)) {
          (void)m->payload();
          (void)m->key();
          const Status s = i % 11 == 5 ? c.nack(*m) : c.ack(*m);
          if (s == Status::Corrupt) corrupt = true;
        } else if (c.status() == Status::Corrupt) {
          corrupt = true;
        }
        if (i % 64 == 17) (void)ch.stats();
        if (i % 97 == 50) {  // leave and join again
          c2.reset();
          c2.emplace(ch, "g2", timed);
        }
      }
    } catch (const Error&) {
      corrupt = true;
    }
    stop = true;
    producer.join();
  } catch (const Error&) {
    corrupt = true;
  }
  return corrupt ? kStoppedOnCorrupt : 0;
}

// Where the scribbler writes: a seeded choice of region, offset and value.
struct Scribbler {
  std::mt19937_64 rng;
  const RawSegment& raw;
  // Where things are, taken before the first write (the header is scribbled over later).
  std::size_t ring_offset = raw.ring_offset();
  std::size_t ring_data = raw.ring_data();
  std::size_t ring_tail = raw.ring_tail();
  std::uint64_t capacity = raw.ring_capacity();

  std::uint64_t below(std::uint64_t n) { return n ? rng() % n : 0; }

  // A value that hits the checks: small, huge, misaligned, near a position, random.
  std::uint64_t value(std::uint64_t near) {
    switch (below(10)) {
      case 0: return 0;
      case 1: return ~0ull;
      case 2: return below(64);
      case 3: return near + below(4 * capacity) - 2 * capacity;        // a position nearby, any alignment
      case 4: return (near & ~7ull) + 8 * below(capacity / 8);         // an aligned one ahead
      case 5: return std::uint64_t(1) << (below(64));
      case 6: return capacity - 4 + capacity * below(4);                // index capacity - 4
      case 7: return near + (std::uint64_t(1) << 40);
      default: return rng();
    }
  }

  void one() {
    const std::uint64_t tail = raw.load64(ring_tail);
    std::size_t at;
    switch (below(6)) {
      case 0: at = below(sizeof(detail::SegmentHeader)); break;             // the header
      case 1: at = ring_offset + below(ring_data - ring_offset); break;    // ring header, claimers
      case 2: at = ring_data + ((tail + below(512) - 256) & (capacity - 1)); break;  // near the tail
      case 3: at = ring_data + below(capacity); break;                     // anywhere in the ring
      default: at = 4096 + below(ring_offset - 4096); break;               // producer/group/consumer/dedup tables
    }
    if (below(3) == 0) {  // a run of random bytes
      const std::size_t n = 1 + below(32);
      for (std::size_t i = 0; i < n && at + i < raw.bytes(); ++i)
        reinterpret_cast<std::atomic<std::uint8_t>*>(raw.base() + at + i)->store(static_cast<std::uint8_t>(rng()), std::memory_order_relaxed);
    } else {  // one aligned word
      at &= ~std::size_t(7);
      if (at + 8 <= raw.bytes()) raw.store64(at, value(tail));
    }
  }
};

struct Outcome {
  std::uint64_t trials = 0, clean = 0, stopped_on_corrupt = 0, failures = 0;
};

// A peer keeps pointing the durable position into the record a producer thread of this process is
// writing (its header and payload) while this process reads stats(), which reads the frame word and
// the timestamp there. Those loads race with the producer's copy by design (the values are validated,
// and the figure is then garbage): the producer's stores must be atomic ones too, or ThreadSanitizer
// reports the copy (CI, seed 44 of the scribbler). In other builds: stats() neither crashes nor
// reports a lag beyond the write position.
TEST(Scribbler, StatsAtADurablePositionInsideARecordBeingWrittenIsNotADataRace) {
  const std::string name = unique_name("lagrace");
  TestDir dir("scribbler-lagrace");
  ChannelOptions o = scribbled_options();
  o.durability = Durability::Async;
  o.journal_dir = dir.path();
  o.flush_interval = std::chrono::milliseconds(50);
  Channel ch = Channel::open(name, o);
  RawSegment raw(name);
  const std::size_t tail_at = raw.ring_tail();
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    Producer p(ch, "p");
    PublishOptions po;
    po.timeout = 1ms;
    const std::string body(400, 'x');
    while (!stop.load(std::memory_order_relaxed)) (void)p.publish(body, po);
  });
  std::thread scribbler([&] {
    std::mt19937_64 rng(7);
    while (!stop.load(std::memory_order_relaxed)) {
      const std::uint64_t t = raw.load64(tail_at);
      raw.store64(offsetof(detail::SegmentHeader, durable_position), t - 8 * (1 + rng() % 64));
    }
  });
  std::uint64_t reads = 0;
  for (const auto end = Clock::now() + 300ms; Clock::now() < end; ++reads) {
    const ChannelStats st = ch.stats();
    EXPECT_LE(st.durable_lag_bytes, st.write_position);
  }
  stop = true;
  producer.join();
  scribbler.join();
  EXPECT_GT(reads, 0u);
  ::unlink(segment_path(name).c_str());
}

TEST(Scribbler, HonestProcessesNeverCrashReadOutsideTheSegmentOrHang) {
  const std::uint64_t seeds = env_or("SHMQ_SCRIBBLER_SEEDS", scaled(1000));
  const std::uint64_t first = env_or("SHMQ_SCRIBBLER_FIRST_SEED", 1);
  const auto run = std::chrono::milliseconds(env_or("SHMQ_SCRIBBLER_RUN_MS", 15));
  const std::uint64_t max_writes = env_or("SHMQ_SCRIBBLER_WRITES", 24);  // per trial, at most
  Outcome out;
  for (std::uint64_t seed = first; seed < first + seeds; ++seed) {
    const std::string name = unique_name("s" + std::to_string(seed));
    ::unlink(segment_path(name).c_str());
    ++out.trials;
    const bool journal = seed % 4 == 0;
    std::optional<TestDir> dir;
    if (journal) {
      dir.emplace("scribbler-" + std::to_string(seed));
      ChannelOptions o = scribbled_options();
      o.durability = Durability::Async;
      o.journal_dir = dir->path();
      const pid_t creator = fork_child([&] {
        Channel ch = Channel::open(name, o);
        return 0;
      }, 20);
      const ChildResult made = wait_child(creator, 20s);
      ASSERT_TRUE(made.ok()) << "seed " << seed << ": making the Async channel: " << made.describe();
    }
    {
      std::optional<Channel> ch;
      if (!journal) ch.emplace(Channel::open(name, scribbled_options()));
      Pipe ready, go;
      const pid_t child = fork_child([&] { return honest(name, ready, go, run, journal); }, 20);
      char x;
      if (!ready.receive(x, 10s)) {
        const ChildResult r = wait_child(child, 5s);
        ADD_FAILURE() << "seed " << seed << ": the honest process did not start: " << r.describe();
        ++out.failures;
        ::unlink(segment_path(name).c_str());
        continue;
      }
      RawSegment raw(name);
      Scribbler s{std::mt19937_64(seed), raw};
      const std::uint64_t writes = 1 + s.below(max_writes);
      ASSERT_TRUE(go.send('g'));
      const auto start = Clock::now();
      for (std::uint64_t i = 0; i < writes; ++i) {
        // Spread over the honest process's run.
        std::this_thread::sleep_until(start + run * i / writes);
        s.one();
      }
      const ChildResult r = wait_child(child, 10s);
      if (r.exited && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) {
        ++out.clean;
      } else if (r.exited && WIFEXITED(r.status) && WEXITSTATUS(r.status) == kStoppedOnCorrupt) {
        ++out.stopped_on_corrupt;
      } else {
        ++out.failures;
        ADD_FAILURE() << "seed " << seed << " (" << writes << " writes): the honest process " << r.describe()
                      << "; replay: SHMQ_SCRIBBLER_FIRST_SEED=" << seed << " SHMQ_SCRIBBLER_SEEDS=1";
      }
    }
    ::unlink(segment_path(name).c_str());
  }
  std::printf("scribbler: %lu trials from seed %lu: %lu clean, %lu stopped on Corrupt/Error, %lu failures (crash or hang)\n",
              static_cast<unsigned long>(out.trials), static_cast<unsigned long>(first),
              static_cast<unsigned long>(out.clean), static_cast<unsigned long>(out.stopped_on_corrupt),
              static_cast<unsigned long>(out.failures));
  EXPECT_EQ(out.failures, 0u);
}

}  // namespace
