// shmq_pingpong: shmq across two processes, beside a floor and its peers, in one run.
//
// What it measures, for each message size (--sizes, default 64 B, 1 KiB, 64 KiB; every shmq
// channel Durability::Memory):
//   latency     two processes pinned to two CPUs play ping-pong over a transport (A->B, B->A).
//               A stamps the time, sends a ping, receives the pong; B receives the ping, sends it
//               back, then checks it. One-way latency = round trip / 2, reported as p50 / p99 /
//               p99.9 / max over --rtt round trips after a warm-up. shmq's acks are outside the
//               timed path (B acks after its reply; A acks after it stamps the arrival).
//   throughput  one process sends messages to a consumer process that checks every one (see
//               Frames in harness.hpp: sequence, tail word, checksum of every byte; shmq: also its
//               inner id, and acks it); msgs/s and MB/s (payload bytes, 10^6) in the consumer's
//               steady state: timed from its receipt of the first message after the warm-up (one
//               lap of the ring for shmq and the floor) to its last message.
//   transports  shmq Wait::Spin and shmq Wait::Block (consumers poll with that wait);
//               floor: a bare single-producer single-consumer ring in shared memory (head and
//               tail on their own cache lines, each side caching the other's index and reading the
//               shared one only when its copy runs out, so a reader takes a batch of slots per
//               look; slots of the message size, read in place): what the hardware gives when
//               nothing else is done;
//               memcpy: one pinned core copying messages of the size from a hot buffer into a
//               64 MiB one, the same run: the floor of throughput for large messages;
//               peers: POSIX message queues (mq_send / mq_receive, blocking), a Unix domain
//               socket pair (SOCK_SEQPACKET, blocking send / recv), Boost.Interprocess
//               message_queue (blocking send / receive: a process-shared mutex and condition),
//               iceoryx 2 (publish / subscribe through RouDi, the subscriber busy-polls take();
//               built when libiceoryx-posh-dev is installed; the run starts iox-roudi itself).
//               Every transport carries the same bytes and gets the same checks.
//   ratios      shmq / this: above 1 is slower for latency, below 1 is slower for throughput;
//               both against shmq Spin and against shmq Block (the like-for-like figure for a
//               peer whose receiver blocks in the kernel).
//   goals       (64 B, shmq Wait::Spin) p50 <= 1.3 x floor, p99.9 <= 2 x floor, below every peer
//               at p50 and p99.9; msgs/s >= 0.9 x floor, >= 3 x Boost.Interprocess, >= 10 x
//               iceoryx; (64 KiB) MB/s >= 0.7 x memcpy. Printed as met / MISSED, never asserted.
//
// Failures are loud: a send or publish that fails, a lost, duplicated, reordered or corrupt
// message, a child that crashes or makes no progress for --stall seconds is printed with
// "*** FAIL", the figure is not reported, and the exit status is 1. A peer that cannot be set up
// here (no iceoryx, mq_open refused) is SKIPPED with its reason: not a failure, not a figure.
// A case that reaches its time budget stops early and says so: a figure over fewer messages, not a
// failure. No wall-clock limit is asserted.
//
// Usage: shmq_pingpong [--quick] [--json FILE] [--csv FILE] [--summary FILE] [--sizes 64,1024,65536]
//                      [--rtt N] [--warmup N] [--messages N] [--tp-warmup N] [--tp-gib N]
//                      [--ring-mib N] [--lat-ring-kib N] [--budget S] [--large-budget S] [--stall S]
//                      [--cpus A,B] [--only LIST] [--mq-depth N] [--queue-depth N]

#include <shmq/shmq.hpp>

#include <fcntl.h>
#include <mqueue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <boost/interprocess/ipc/message_queue.hpp>

#if defined(SHMQ_BENCH_ICEORYX)
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#endif

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
using namespace bench;

// ---------------------------------------------------------------------------------------------
// Configuration

constexpr std::size_t kShmqRecordHeader = 40;  // ringbuffer/record_ring.hpp: kHeaderBytes

struct Config {
  bool quick = false;
  std::string json_path, csv_path, summary_path;
  std::vector<std::uint64_t> sizes{64, 1024, 64 << 10};
  std::uint64_t warmup = 20'000;        // round trips before the measured ones (64 B; a quarter above)
  std::uint64_t rtt = 200'000;          // measured round trips (64 B; a quarter above)
  std::uint64_t messages = 10'000'000;  // throughput case, at most
  std::uint64_t tp_bytes = 8ull << 30;  // throughput case, at most this many payload bytes
  std::uint64_t tp_warmup = 0;  // throughput: messages before the timed window; 0: one lap of the ring
  std::size_t ring_bytes = std::size_t{64} << 20;     // throughput channel / floor ring
  std::size_t lat_ring_bytes = std::size_t{1} << 20;  // ping and pong channels / floor rings
  std::uint64_t mq_depth = 1024;     // POSIX mq_maxmsg for throughput, at most (raised in /proc if root)
  std::uint64_t queue_depth = 1024;  // Boost.Interprocess message_queue max_num_msg for throughput, at most
  double budget_s = 10;        // a 64 B case stops early past this (and says so)
  double large_budget_s = 4;   // a case of larger messages, the same
  double memcpy_s = 0.5;       // how long the memcpy reference copies, per size
  double stall_s = 10;   // no progress this long: a hang, reported as a failure
  int cpu_a = -1;
  int cpu_b = -1;
  std::vector<std::string> only;  // transports to run (empty: all)
  bool wants(const char* key) const {
    return only.empty() || std::find(only.begin(), only.end(), key) != only.end();
  }
};

// What one message size gets: counts scaled so that the whole run stays within minutes.
struct Plan {
  std::size_t size = 64;
  std::uint64_t warmup = 0, rtt = 0;    // latency: round trips
  std::uint64_t messages = 0;           // throughput
  std::uint64_t ring_warmup = 0;        // throughput, shmq and floor: one lap of the ring
  std::uint64_t peer_warmup = 0;        // throughput, peers (no ring pages to touch)
  double budget_s = 10;
};

const char* g_argv0 = "shmq_pingpong";

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", g_argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--csv FILE] [--summary FILE] [--sizes 64,1024,65536]\n"
               "       [--rtt N] [--warmup N] [--messages N] [--tp-warmup N] [--tp-gib N] [--ring-mib N]\n"
               "       [--lat-ring-kib N] [--budget SECONDS] [--large-budget SECONDS] [--stall SECONDS]\n"
               "       [--cpus A,B] [--only floor,memcpy,shmq,shmq-block,mq,uds,boost,iceoryx] [--mq-depth N]\n"
               "       [--queue-depth N]\n",
               g_argv0);
  std::exit(why != nullptr ? 2 : 0);
}
void usage(const char* why) { usage_exit(why); }

constexpr const char* kKeys[] = {"floor", "memcpy", "shmq", "shmq-block", "mq", "uds", "boost", "iceoryx"};

Config parse_args(int argc, char** argv) {
  Config c;
  bool rtt_set = false, warmup_set = false, messages_set = false, budget_set = false, large_set = false,
       bytes_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) usage("missing value");
      return argv[++i];
    };
    if (a == "--quick") {
      c.quick = true;
    } else if (a == "--json") {
      c.json_path = value();
    } else if (a == "--csv") {
      c.csv_path = value();
    } else if (a == "--summary") {
      c.summary_path = value();
    } else if (a == "--sizes") {
      c.sizes = parse_list(value(), usage);
      for (auto s : c.sizes)
        if (s < Frames::kMinSize || s % 8 != 0 || s > (1u << 20)) usage("sizes: multiples of 8 from 48 to 1 MiB");
    } else if (a == "--rtt") {
      c.rtt = parse_count(value(), usage);
      rtt_set = true;
    } else if (a == "--warmup") {
      c.warmup = parse_count(value(), usage);
      warmup_set = true;
    } else if (a == "--messages") {
      c.messages = parse_count(value(), usage);
      messages_set = true;
    } else if (a == "--tp-gib") {
      c.tp_bytes = parse_count(value(), usage) << 30;
      bytes_set = true;
    } else if (a == "--tp-warmup") {
      c.tp_warmup = parse_count(value(), usage);
    } else if (a == "--ring-mib") {
      c.ring_bytes = static_cast<std::size_t>(parse_count(value(), usage)) << 20;
      if ((c.ring_bytes & (c.ring_bytes - 1)) != 0) usage("--ring-mib must be a power of two");
    } else if (a == "--lat-ring-kib") {
      c.lat_ring_bytes = static_cast<std::size_t>(parse_count(value(), usage)) << 10;
      if ((c.lat_ring_bytes & (c.lat_ring_bytes - 1)) != 0 || c.lat_ring_bytes < (64u << 10))
        usage("--lat-ring-kib must be a power of two, at least 64");
    } else if (a == "--mq-depth") {
      c.mq_depth = parse_count(value(), usage);
    } else if (a == "--queue-depth") {
      c.queue_depth = parse_count(value(), usage);
    } else if (a == "--budget") {
      c.budget_s = parse_seconds(value(), usage);
      budget_set = true;
    } else if (a == "--large-budget") {
      c.large_budget_s = parse_seconds(value(), usage);
      large_set = true;
    } else if (a == "--stall") {
      c.stall_s = parse_seconds(value(), usage);
    } else if (a == "--cpus") {
      const char* v = value();
      if (std::sscanf(v, "%d,%d", &c.cpu_a, &c.cpu_b) != 2 || c.cpu_a < 0 || c.cpu_b < 0)
        usage("--cpus takes two CPU numbers, e.g. 0,1");
    } else if (a == "--only") {
      for (std::string& k : split_list(value())) c.only.push_back(std::move(k));
      for (const auto& k : c.only)
        if (std::find(std::begin(kKeys), std::end(kKeys), k) == std::end(kKeys))
          usage("--only takes floor, memcpy, shmq, shmq-block, mq, uds, boost, iceoryx");
    } else if (a == "--help" || a == "-h") {
      usage_exit(nullptr);
    } else {
      usage("unknown argument");
    }
  }
  if (c.quick) {
    if (!rtt_set) c.rtt = 20'000;
    if (!warmup_set) c.warmup = 10'000;
    if (!messages_set) c.messages = 2'000'000;
    if (!bytes_set) c.tp_bytes = 1ull << 30;
    if (!budget_set) c.budget_s = 3;
    if (!large_set) c.large_budget_s = 1.5;
    c.memcpy_s = 0.2;
  }
  return c;
}

// The peers' throughput warm-up: they have no ring pages to touch, and some of them move a few
// hundred thousand messages a second; a lap of shmq's ring would eat their budget.
constexpr std::uint64_t kPeerWarmup = 50'000;

Plan plan_for(const Config& cfg, std::size_t size) {
  Plan p;
  p.size = size;
  const bool large = size > 64;  // fewer round trips and a shorter budget: the run stays short
  p.warmup = large ? std::max<std::uint64_t>(1, cfg.warmup / 4) : cfg.warmup;
  p.rtt = large ? std::max<std::uint64_t>(1, cfg.rtt / 4) : cfg.rtt;
  p.budget_s = large ? std::min(cfg.budget_s, cfg.large_budget_s) : cfg.budget_s;
  p.messages = std::max<std::uint64_t>(2, std::min(cfg.messages, cfg.tp_bytes / size));
  // One lap of the ring for the floor (slots of SIZE bytes) and more than one for shmq (a record
  // header on each): every page of both has been touched before the window opens.
  p.ring_warmup = cfg.tp_warmup != 0 ? cfg.tp_warmup : cfg.ring_bytes / size;
  p.ring_warmup = std::min(p.ring_warmup, p.messages / 2);
  p.peer_warmup = std::min({p.ring_warmup, kPeerWarmup, p.messages / 2});
  return p;
}

Limits limits(const Config& cfg, const Plan& p) { return {p.budget_s, cfg.stall_s}; }

std::string size_name(std::size_t s) {
  return s % 1024 == 0 ? std::to_string(s / 1024) + " KiB" : std::to_string(s) + " B";
}

// Shared state of one case: the harness's Control and what the two children report.
struct PairControl : Control {
  alignas(64) std::uint64_t start_ns = 0;  // throughput: consumer got the first message of the window
  std::uint64_t end_ns = 0;                 // throughput: consumer got the last message
  std::uint64_t sent = 0;                   // messages (round trips) produced, END excluded
  std::uint64_t received = 0;               // messages consumed, END excluded
  std::uint32_t stopped_early = 0;          // the time budget cut the run short
  double bytes_per_s = 0;                   // memcpy reference
};

// ---------------------------------------------------------------------------------------------
// The floor: a bare single-producer single-consumer ring of fixed-size slots in shared memory.
// Contract: one producer process calls push, one consumer process calls peek then release.
// Positions never wrap; the slot is position & mask. Each side keeps a private copy of the other's
// index and reads the shared one only when the copy says full (producer) or empty (consumer): one
// look at the producer's index serves every slot it had filled by then (batched reads).

struct alignas(64) FloorRing {
  alignas(64) std::atomic<std::uint64_t> head{0};  // next slot to read; written by the consumer
  alignas(64) std::uint64_t tail_cached = 0;       // consumer's copy of tail
  alignas(64) std::atomic<std::uint64_t> tail{0};  // next slot to write; written by the producer
  alignas(64) std::uint64_t head_cached = 0;       // producer's copy of head
  alignas(64) std::uint64_t capacity = 0;          // slots, power of two
  std::uint64_t slot_bytes = 0;                    // a multiple of 64
  // capacity slots of slot_bytes follow, 64-byte aligned.

  std::byte* slot(std::uint64_t pos) {
    return reinterpret_cast<std::byte*>(this + 1) + (pos & (capacity - 1)) * slot_bytes;
  }
  static std::size_t bytes_for(std::size_t capacity, std::size_t slot_bytes) {
    return sizeof(FloorRing) + capacity * slot_bytes;
  }

  void push(std::span<const std::byte> m, Waiter& w, std::uint64_t seq) {
    const std::uint64_t t = tail.load(std::memory_order_relaxed);  // our own index
    if (t - head_cached >= capacity) {
      w.reset();
      // acquire: pairs with the release store of head in release(); the slot is free to overwrite.
      while (t - (head_cached = head.load(std::memory_order_acquire)) >= capacity) w.spin(seq);
    }
    std::memcpy(slot(t), m.data(), m.size());
    // release: publishes the slot written above; pairs with the acquire load of tail in peek().
    tail.store(t + 1, std::memory_order_release);
  }

  // The next slot, read in place until release().
  std::span<const std::byte> peek(std::size_t size, Waiter& w, std::uint64_t seq) {
    const std::uint64_t h = head.load(std::memory_order_relaxed);  // our own index
    if (h == tail_cached) {
      w.reset();
      // acquire: pairs with the release store of tail in push(); the slot's bytes are visible.
      while (h == (tail_cached = tail.load(std::memory_order_acquire))) w.spin(seq);
    }
    return {slot(h), size};
  }

  void release() {
    // release: our reads of the slot are done; pairs with the acquire load of head in push().
    head.store(head.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
};
static_assert(sizeof(FloorRing) % 64 == 0);

// ---------------------------------------------------------------------------------------------
// Results: one Row per (transport, message size).

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

struct Row {
  std::string key;      // --only name
  std::string name;     // for the table
  std::string wait;     // how its receiver waits
  std::size_t size = 0;
  std::string skipped;  // not run here, and why (empty: it ran)
  bool has_latency = true;  // memcpy has none
  Latency latency;
  Throughput throughput;
  bool ran() const { return skipped.empty(); }
  bool ok() const { return !ran() || ((!has_latency || latency.ok) && throughput.ok); }
};

Row make_row(const char* key, const char* name, const char* wait, const Plan& p) {
  Row r;
  r.key = key;
  r.name = name;
  r.wait = wait;
  r.size = p.size;
  return r;
}

Latency summarize(std::vector<std::uint64_t> rtt_ticks, bool stopped_early) {
  Latency l;
  l.samples = rtt_ticks.size();
  l.stopped_early = stopped_early;
  if (rtt_ticks.empty()) return l;
  std::sort(rtt_ticks.begin(), rtt_ticks.end());
  const auto one_way_ns = [](std::uint64_t t) { return ticks_to_ns(t) / 2.0; };
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
// The four roles over any transport whose ends look like
//   Tx: void send(std::span<const std::byte> message, std::uint64_t seq)
//   Rx: std::span<const std::byte> recv(std::uint64_t seq, Waiter&)   a view, valid until
//       void release()                                                 is called
// (the floor, the peers). shmq has its own below: it also checks inner ids and acks.

bool past_budget(std::uint64_t t_start, const Plan& p) {
  return mono_ns() - t_start > static_cast<std::uint64_t>(p.budget_s * 1e9);
}

template <class Tx, class Rx>
void run_pinger(const Config& cfg, const Plan& p, PairControl& c, std::uint64_t* samples, Tx& out, Rx& in) {
  Frames frames(p.size);
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a pong");
  const std::uint64_t total = p.warmup + p.rtt;
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < total; ++seq) {
    if ((seq & 1023u) == 0 && seq > p.warmup && past_budget(t_start, p)) {
      c.stopped_early = 1;
      break;
    }
    const std::span<const std::byte> ping = frames.make(seq);
    const std::uint64_t t0 = ticks();
    out.send(ping, seq);
    const std::span<const std::byte> pong = in.recv(seq, w);
    const std::uint64_t t1 = ticks();
    std::uint32_t flags = 0;
    if (auto why = frames.check(pong, seq, flags); !why.empty()) die("pong: %s", why.c_str());
    in.release();
    if (seq >= p.warmup) samples[seq - p.warmup] = t1 - t0;
  }
  out.send(frames.make(seq, kEnd), seq);
  c.sent = seq;
}

template <class Tx, class Rx>
void run_ponger(const Config& cfg, const Plan& p, PairControl& c, Tx& out, Rx& in) {
  const Frames frames(p.size);
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a ping");
  for (std::uint64_t seq = 0;; ++seq) {
    const std::span<const std::byte> ping = in.recv(seq, w);
    const bool end = Frames::peek(ping).flags == kEnd;
    if (!end) out.send(ping, seq);  // echo first: checking 64 KiB is not the transport's latency
    std::uint32_t flags = 0;
    if (auto why = frames.check(ping, seq, flags); !why.empty()) die("ping: %s", why.c_str());
    in.release();
    if (end) {
      c.received = seq;
      return;
    }
  }
}

template <class Tx>
void run_producer(const Config& cfg, const Plan& p, std::uint64_t warmup, PairControl& c, Tx& out) {
  Frames frames(p.size);
  wait_all_ready(c, 2, cfg.stall_s);
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < p.messages; ++seq) {
    if ((seq & 1023u) == 0 && seq > warmup && past_budget(t_start, p)) {
      c.stopped_early = 1;
      break;
    }
    out.send(frames.make(seq), seq);
  }
  out.send(frames.make(seq, kEnd), seq);
  c.sent = seq;
}

template <class Rx>
void run_consumer(const Config& cfg, const Plan& p, std::uint64_t warmup, PairControl& c, Rx& in) {
  const Frames frames(p.size);
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for the next message");
  for (std::uint64_t seq = 0;; ++seq) {
    const std::span<const std::byte> got = in.recv(seq, w);
    std::uint32_t flags = 0;
    if (auto why = frames.check(got, seq, flags); !why.empty()) die("%s", why.c_str());
    in.release();
    if (seq == warmup) c.start_ns = mono_ns();
    if (flags == kEnd) {
      c.end_ns = mono_ns();
      c.received = seq;
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cases, as seen from the parent: two children, pinned, watched.

using Pinger = std::function<void(PairControl&, std::uint64_t*)>;
using Role = std::function<void(PairControl&)>;

Latency latency_case(const Config& cfg, const Plan& p, const std::string& name, const Pinger& pinger,
                     const Role& ponger) {
  Shared<PairControl> control;
  PairControl& c = *control;
  SharedMap samples_map(p.rtt * sizeof(std::uint64_t));
  auto* samples = static_cast<std::uint64_t*>(samples_map.data());
  const bool ok = run_children(limits(cfg, p), name.c_str(), c,
                               {{"pinger", cfg.cpu_a, [&] { pinger(c, samples); }},
                                {"ponger", cfg.cpu_b, [&] { ponger(c); }}});
  if (!ok) return {};
  const std::uint64_t measured = c.sent > p.warmup ? c.sent - p.warmup : 0;
  if (c.received != c.sent) {
    std::fprintf(stderr, "*** FAIL [%s]: pinger sent %" PRIu64 " pings, ponger saw %" PRIu64 "\n", name.c_str(),
                 c.sent, c.received);
    return {};
  }
  if (measured == 0) {
    std::fprintf(stderr, "*** FAIL [%s]: the time budget ended the run during the warm-up: no sample\n", name.c_str());
    return {};
  }
  Latency l = summarize(std::vector<std::uint64_t>(samples, samples + measured), c.stopped_early != 0);
  l.disturbance = {c.others_cpu_pct, c.steal_pct};
  return l;
}

// WARMUP: messages before the timed window (shmq and the floor: a lap of the ring, so that its
// pages are touched; the peers: fewer).
Throughput throughput_case(const Config& cfg, const Plan& p, std::uint64_t warmup, const std::string& name,
                           const Role& producer, const Role& consumer) {
  Shared<PairControl> control;
  PairControl& c = *control;
  const bool ok = run_children(limits(cfg, p), name.c_str(), c,
                               {{"producer", cfg.cpu_a, [&] { producer(c); }},
                                {"consumer", cfg.cpu_b, [&] { consumer(c); }}});
  if (!ok) return {};
  if (c.received != c.sent) {
    std::fprintf(stderr, "*** FAIL [%s]: producer sent %" PRIu64 " messages, consumer received %" PRIu64 "\n",
                 name.c_str(), c.sent, c.received);
    return {};
  }
  if (c.end_ns <= c.start_ns || c.start_ns == 0 || c.sent <= warmup) {
    std::fprintf(stderr, "*** FAIL [%s]: no measurable interval (start %" PRIu64 ", end %" PRIu64 ")\n", name.c_str(),
                 c.start_ns, c.end_ns);
    return {};
  }
  Throughput t;
  t.messages = c.sent - warmup;  // from message `warmup` to END: sent - warmup gaps
  t.stopped_early = c.stopped_early != 0;
  t.disturbance = {c.others_cpu_pct, c.steal_pct};
  t.seconds = static_cast<double>(c.end_ns - c.start_ns) / 1e9;
  t.msgs_per_s = static_cast<double>(t.messages) / t.seconds;
  t.mb_per_s = t.msgs_per_s * static_cast<double>(p.size) / 1e6;
  t.ok = true;
  return t;
}

// The label of a case in failure messages.
std::string label(const Row& r, const char* what) { return r.name + " " + size_name(r.size) + " " + what; }

// ---------------------------------------------------------------------------------------------
// Floor

struct FloorTx {
  FloorRing& ring;
  Waiter w;
  void send(std::span<const std::byte> m, std::uint64_t seq) { ring.push(m, w, seq); }
};
struct FloorRx {
  FloorRing& ring;
  std::size_t size;
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) { return ring.peek(size, w, seq); }
  void release() { ring.release(); }
};

// A floor ring of RING_BYTES in its own shared map, slots of the message size rounded up to 64.
struct FloorMap {
  static std::size_t slot_bytes(std::size_t size) { return (size + 63) / 64 * 64; }
  static std::size_t slots(std::size_t ring_bytes, std::size_t size) {
    return std::max<std::size_t>(2, std::bit_floor(ring_bytes / slot_bytes(size)));
  }
  FloorMap(std::size_t ring_bytes, std::size_t size)
      : map(FloorRing::bytes_for(slots(ring_bytes, size), slot_bytes(size))), ring(new (map.data()) FloorRing()) {
    ring->capacity = slots(ring_bytes, size);
    ring->slot_bytes = slot_bytes(size);
  }
  SharedMap map;
  FloorRing* ring;
};

Row run_floor(const Config& cfg, const Plan& p) {
  Row r = make_row("floor", "floor (bare SPSC ring)", "spin", p);
  {
    FloorMap pings(cfg.lat_ring_bytes, p.size), pongs(cfg.lat_ring_bytes, p.size);
    r.latency = latency_case(
        cfg, p, label(r, "latency"),
        [&](PairControl& c, std::uint64_t* s) {
          FloorTx out{*pings.ring, Waiter(cfg.stall_s, "waiting for ring space")};
          FloorRx in{*pongs.ring, p.size};
          run_pinger(cfg, p, c, s, out, in);
        },
        [&](PairControl& c) {
          FloorTx out{*pongs.ring, Waiter(cfg.stall_s, "waiting for ring space")};
          FloorRx in{*pings.ring, p.size};
          run_ponger(cfg, p, c, out, in);
        });
  }
  {
    FloorMap stream(cfg.ring_bytes, p.size);
    r.throughput = throughput_case(
        cfg, p, p.ring_warmup, label(r, "throughput"),
        [&](PairControl& c) {
          FloorTx out{*stream.ring, Waiter(cfg.stall_s, "waiting for ring space")};
          run_producer(cfg, p, p.ring_warmup, c, out);
        },
        [&](PairControl& c) {
          FloorRx in{*stream.ring, p.size};
          run_consumer(cfg, p, p.ring_warmup, c, in);
        });
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// memcpy: the floor of throughput for large messages. One pinned process copies messages of the
// size, one after another, from kTemplates hot buffers (what a producer's buffers are) into a
// 64 MiB destination walked like a ring (pre-faulted), for --memcpy seconds; bytes per second.

void copy_for(std::size_t size, double seconds, PairControl& c) {
  const std::size_t dest_bytes = std::size_t{64} << 20;
  std::vector<std::byte> dest(dest_bytes, std::byte{1});  // touched: no page fault in the loop
  Frames frames(size);
  const std::size_t slots = dest_bytes / size;
  const auto limit = static_cast<std::uint64_t>(seconds * 1e9);
  std::uint64_t copied = 0;
  const std::uint64_t t0 = mono_ns();
  std::uint64_t now = t0;
  for (std::uint64_t i = 0; now - t0 < limit; ++i) {
    std::memcpy(dest.data() + (i % slots) * size, frames.make(i).data(), size);
    asm volatile("" : : "r"(dest.data()) : "memory");  // the copy is not optimised away
    copied += size;
    if ((i & 63u) == 0) now = mono_ns();
  }
  now = mono_ns();
  c.bytes_per_s = static_cast<double>(copied) / (static_cast<double>(now - t0) / 1e9);
}

Row run_memcpy(const Config& cfg, const Plan& p) {
  Row r = make_row("memcpy", "memcpy (1 core)", "-", p);
  r.has_latency = false;
  Shared<PairControl> control;
  PairControl& c = *control;
  if (!run_children(limits(cfg, p), label(r, "").c_str(), c,
                    {{"memcpy", cfg.cpu_a, [&] { copy_for(p.size, cfg.memcpy_s, c); }}}))
    return r;
  r.throughput.ok = c.bytes_per_s > 0;
  r.throughput.mb_per_s = c.bytes_per_s / 1e6;
  r.throughput.msgs_per_s = c.bytes_per_s / static_cast<double>(p.size);
  r.throughput.seconds = cfg.memcpy_s;
  r.throughput.disturbance = {c.others_cpu_pct, c.steal_pct};
  return r;
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

shmq::ConsumerOptions consumer_options(shmq::Wait wait) {
  return {.start = shmq::Start::Earliest, .wait = wait, .max_in_flight = 64};
}

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

// Every check a shmq receiver makes on message SEQ: the frame, the inner id, one delivery.
std::uint32_t check_message(const Frames& frames, IdCheck& ids, const shmq::Message& m, std::uint64_t seq,
                            const char* what) {
  std::uint32_t flags = 0;
  if (auto why = frames.check(m.payload(), seq, flags); !why.empty()) die("%s%s", what, why.c_str());
  ids.next(m, seq);
  return flags;
}

shmq::PublishOptions publish_options(const Config& cfg, shmq::Wait wait) {
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = wait;
  return popts;
}

struct ShmqCase {
  const Config& cfg;
  const Plan& p;
  const Names& n;
  const std::filesystem::path& jdir;
  shmq::Wait wait;
};

// Ping-pong over shmq. A: the timer. B: the echo.
void shmq_pinger(const ShmqCase& k, PairControl& c, std::uint64_t* samples) {
  shmq::Channel pongs = shmq::Channel::open(k.n.pong, channel_options(k.cfg.lat_ring_bytes, k.jdir));
  shmq::Consumer in(pongs, "pinger", consumer_options(k.wait));
  shmq::Channel pings = shmq::Channel::open(k.n.ping, channel_options(k.cfg.lat_ring_bytes, k.jdir));
  shmq::Producer out(pings, "pinger");
  const shmq::PublishOptions popts = publish_options(k.cfg, k.wait);
  Frames frames(k.p.size);
  wait_all_ready(c, 2, k.cfg.stall_s);

  Waiter w(k.cfg.stall_s, "waiting for a pong");
  IdCheck ids;
  const std::uint64_t total = k.p.warmup + k.p.rtt;
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < total; ++seq) {
    if ((seq & 1023u) == 0 && seq > k.p.warmup && past_budget(t_start, k.p)) {
      c.stopped_early = 1;
      break;
    }
    const std::span<const std::byte> ping = frames.make(seq);
    const std::uint64_t t0 = ticks();
    publish_or_die(out, ping, popts, seq);
    shmq::Message reply = poll_one(in, w, seq);
    const std::uint64_t t1 = ticks();
    check_message(frames, ids, reply, seq, "pong: ");
    ack_or_die(in, reply, seq);
    if (seq >= k.p.warmup) samples[seq - k.p.warmup] = t1 - t0;
  }
  publish_or_die(out, frames.make(seq, kEnd), popts, seq);
  c.sent = seq;
}

void shmq_ponger(const ShmqCase& k, PairControl& c) {
  shmq::Channel pings = shmq::Channel::open(k.n.ping, channel_options(k.cfg.lat_ring_bytes, k.jdir));
  shmq::Consumer in(pings, "ponger", consumer_options(k.wait));
  shmq::Channel pongs = shmq::Channel::open(k.n.pong, channel_options(k.cfg.lat_ring_bytes, k.jdir));
  shmq::Producer out(pongs, "ponger");
  const shmq::PublishOptions popts = publish_options(k.cfg, k.wait);
  const Frames frames(k.p.size);
  wait_all_ready(c, 2, k.cfg.stall_s);

  Waiter w(k.cfg.stall_s, "waiting for a ping");
  IdCheck ids;
  for (std::uint64_t seq = 0;; ++seq) {
    shmq::Message ping = poll_one(in, w, seq);
    const bool end = Frames::peek(ping.payload()).flags == kEnd;
    if (!end) publish_or_die(out, ping.payload(), popts, seq);  // echo straight from the ring first
    check_message(frames, ids, ping, seq, "ping: ");
    ack_or_die(in, ping, seq);
    if (end) {
      c.received = seq;
      return;
    }
  }
}

void shmq_producer(const ShmqCase& k, PairControl& c) {
  shmq::Channel ch = shmq::Channel::open(k.n.stream, channel_options(k.cfg.ring_bytes, k.jdir));
  shmq::Producer out(ch, "producer");
  const shmq::PublishOptions popts = publish_options(k.cfg, k.wait);
  Frames frames(k.p.size);
  wait_all_ready(c, 2, k.cfg.stall_s);

  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < k.p.messages; ++seq) {
    if ((seq & 1023u) == 0 && seq > k.p.ring_warmup && past_budget(t_start, k.p)) {
      c.stopped_early = 1;
      break;
    }
    publish_or_die(out, frames.make(seq), popts, seq);
  }
  publish_or_die(out, frames.make(seq, kEnd), popts, seq);
  c.sent = seq;
}

void shmq_consumer(const ShmqCase& k, PairControl& c) {
  shmq::Channel ch = shmq::Channel::open(k.n.stream, channel_options(k.cfg.ring_bytes, k.jdir));
  shmq::Consumer in(ch, "consumer", consumer_options(k.wait));
  const Frames frames(k.p.size);
  wait_all_ready(c, 2, k.cfg.stall_s);

  Waiter w(k.cfg.stall_s, "waiting for the next message");
  IdCheck ids;
  for (std::uint64_t seq = 0;; ++seq) {
    shmq::Message msg = poll_one(in, w, seq);
    const std::uint32_t flags = check_message(frames, ids, msg, seq, "");
    ack_or_die(in, msg, seq);
    if (seq == k.p.ring_warmup) c.start_ns = mono_ns();
    if (flags == kEnd) {
      c.end_ns = mono_ns();
      c.received = seq;
      return;
    }
  }
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

Row run_shmq(const Config& cfg, const Plan& p, const std::filesystem::path& jdir, shmq::Wait wait, bool& cleanup_ok) {
  const bool spin = wait == shmq::Wait::Spin;
  Row r = make_row(spin ? "shmq" : "shmq-block", spin ? "shmq (Wait::Spin)" : "shmq (Wait::Block)",
                   spin ? "spin (poll)" : "futex (poll)", p);
  const std::string base =
      "shmqpp_" + std::to_string(::getpid()) + "_" + std::to_string(p.size) + (spin ? "_spin" : "_block");
  const Names n{base + "_ping", base + "_pong", base + "_stream"};
  const ShmqCase k{cfg, p, n, jdir, wait};
  if (create_channel(cfg.lat_ring_bytes, n.ping, jdir) && create_channel(cfg.lat_ring_bytes, n.pong, jdir)) {
    r.latency = latency_case(
        cfg, p, label(r, "latency"), [&](PairControl& c, std::uint64_t* s) { shmq_pinger(k, c, s); },
        [&](PairControl& c) { shmq_ponger(k, c); });
  }
  if (create_channel(cfg.ring_bytes, n.stream, jdir)) {
    r.throughput = throughput_case(
        cfg, p, p.ring_warmup, label(r, "throughput"), [&](PairControl& c) { shmq_producer(k, c); },
        [&](PairControl& c) { shmq_consumer(k, c); });
  }
  for (const auto& name : {n.ping, n.pong, n.stream})
    if (shmq::Channel::exists(name)) cleanup_ok = remove_channel(name, jdir) && cleanup_ok;
  return r;
}

// A peer's throughput queue: as many messages as fit in 4 MiB, between 16 and CAP.
std::uint64_t peer_depth(std::size_t size, std::uint64_t cap) {
  return std::clamp<std::uint64_t>((std::uint64_t{4} << 20) / size, 16, std::max<std::uint64_t>(16, cap));
}

// ---------------------------------------------------------------------------------------------
// POSIX message queues. The parent creates the queues (O_EXCL) and unlinks them at the end; the
// children open them by name. Blocking mq_send / mq_receive: the kernel queue's natural use.
// Limits: /proc/sys/fs/mqueue/msg_max and msgsize_max cap a queue for an unprivileged process, and
// RLIMIT_MSGQUEUE its bytes; as root we raise them for the run (and put the /proc values back at
// the end); otherwise we use what we may and say so.

struct MqLimits {
  long msg_max = -1, msgsize_max = -1, queues_max = -1;
  long old_msg_max = -1, old_msgsize_max = -1;  // to restore, when we raised them
  std::string note;
};

long read_long(const char* path) {
  long v = -1;
  if (FILE* f = std::fopen(path, "r")) {
    if (std::fscanf(f, "%ld", &v) != 1) v = -1;
    std::fclose(f);
  }
  return v;
}

bool write_long(const char* path, long v) {
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) return false;
  const bool ok = std::fprintf(f, "%ld\n", v) > 0;
  return std::fclose(f) == 0 && ok;
}

constexpr const char* kMsgMax = "/proc/sys/fs/mqueue/msg_max";
constexpr const char* kMsgsizeMax = "/proc/sys/fs/mqueue/msgsize_max";

// Reads the limits and, as root, raises them to what this run needs (DEPTH messages of SIZE).
MqLimits raise_mq_limits(long depth, long size) {
  MqLimits lim{read_long(kMsgMax), read_long(kMsgsizeMax), read_long("/proc/sys/fs/mqueue/queues_max"), -1, -1, {}};
  char buf[256];
  std::snprintf(buf, sizeof buf, "POSIX mq: /proc/sys/fs/mqueue msg_max %ld, msgsize_max %ld, queues_max %ld",
                lim.msg_max, lim.msgsize_max, lim.queues_max);
  lim.note = buf;
  if (::geteuid() != 0) return lim;
  if (lim.msg_max >= 0 && lim.msg_max < depth && write_long(kMsgMax, depth)) {
    lim.old_msg_max = lim.msg_max;
    lim.msg_max = depth;
    lim.note += "; raised msg_max to " + std::to_string(depth);
  }
  if (lim.msgsize_max >= 0 && lim.msgsize_max < size && write_long(kMsgsizeMax, size)) {
    lim.old_msgsize_max = lim.msgsize_max;
    lim.msgsize_max = size;
    lim.note += "; raised msgsize_max to " + std::to_string(size);
  }
  const rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
  if (::setrlimit(RLIMIT_MSGQUEUE, &unlimited) == 0)
    lim.note += "; RLIMIT_MSGQUEUE unlimited";
  else
    lim.note += std::string("; RLIMIT_MSGQUEUE not raised (") + std::strerror(errno) + "): large queues are shortened";
  lim.note += " (root, for this run)";
  return lim;
}

void restore_mq_limits(MqLimits& lim) {
  if (lim.old_msg_max >= 0 && !write_long(kMsgMax, lim.old_msg_max))
    lim.note += "; could NOT restore msg_max to " + std::to_string(lim.old_msg_max);
  if (lim.old_msgsize_max >= 0 && !write_long(kMsgsizeMax, lim.old_msgsize_max))
    lim.note += "; could NOT restore msgsize_max to " + std::to_string(lim.old_msgsize_max);
}

// Opens (creates) a queue of DEPTH messages of SIZE bytes. Returns -1 and sets WHY when it cannot.
mqd_t mq_create(const std::string& name, long depth, std::size_t size, std::string& why) {
  mq_attr attr{};
  attr.mq_maxmsg = depth;
  attr.mq_msgsize = static_cast<long>(size);
  ::mq_unlink(name.c_str());
  const mqd_t q = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
  if (q == static_cast<mqd_t>(-1))
    why = "mq_open(" + name + ", maxmsg " + std::to_string(depth) + ", msgsize " + std::to_string(size) +
          "): " + std::strerror(errno);
  return q;
}

struct MqEnd {
  mqd_t q;
  std::vector<std::byte> buf;
  MqEnd(const std::string& name, std::size_t size) : q(::mq_open(name.c_str(), O_RDWR)), buf(size) {
    if (q == static_cast<mqd_t>(-1)) die("mq_open(%s): %s", name.c_str(), std::strerror(errno));
  }
  ~MqEnd() { ::mq_close(q); }
  MqEnd(const MqEnd&) = delete;
  MqEnd& operator=(const MqEnd&) = delete;
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    while (::mq_send(q, reinterpret_cast<const char*>(m.data()), m.size(), 0) != 0)
      if (errno != EINTR) die("mq_send of sequence %" PRIu64 ": %s", seq, std::strerror(errno));
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::mq_receive(q, reinterpret_cast<char*>(buf.data()), buf.size(), nullptr);
      if (n >= 0) return {buf.data(), static_cast<std::size_t>(n)};
      if (errno == EINTR) continue;
      die("mq_receive at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
    }
  }
  void release() {}
};

Row run_posix_mq(const Config& cfg, const Plan& p, const MqLimits& lim) {
  Row r = make_row("mq", "POSIX mq", "blocking mq_receive", p);
  const std::string base = "/shmqpp-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  std::string why;
  long depth = static_cast<long>(peer_depth(p.size, cfg.mq_depth));
  if (lim.msg_max > 0 && lim.msg_max < depth) depth = lim.msg_max;  // not root: what we may
  mqd_t qs[3] = {mq_create(ping, 1, p.size, why), mq_create(pong, 1, p.size, why), static_cast<mqd_t>(-1)};
  if (qs[0] != static_cast<mqd_t>(-1) && qs[1] != static_cast<mqd_t>(-1)) {
    qs[2] = mq_create(stream, depth, p.size, why);
    // Past RLIMIT_MSGQUEUE (bytes of all our queues) mq_open says EMFILE: halve the depth until it fits.
    while (qs[2] == static_cast<mqd_t>(-1) && errno == EMFILE && depth > 1)
      qs[2] = mq_create(stream, depth /= 2, p.size, why);
  }
  if (qs[0] == static_cast<mqd_t>(-1) || qs[1] == static_cast<mqd_t>(-1) || qs[2] == static_cast<mqd_t>(-1)) {
    r.skipped = why;
  } else {
    r.wait += " (maxmsg " + std::to_string(depth) + ")";
    r.latency = latency_case(
        cfg, p, label(r, "latency"),
        [&](PairControl& c, std::uint64_t* s) {
          MqEnd out(ping, p.size), in(pong, p.size);
          run_pinger(cfg, p, c, s, out, in);
        },
        [&](PairControl& c) {
          MqEnd out(pong, p.size), in(ping, p.size);
          run_ponger(cfg, p, c, out, in);
        });
    r.throughput = throughput_case(
        cfg, p, p.peer_warmup, label(r, "throughput"),
        [&](PairControl& c) {
          MqEnd out(stream, p.size);
          run_producer(cfg, p, p.peer_warmup, c, out);
        },
        [&](PairControl& c) {
          MqEnd in(stream, p.size);
          run_consumer(cfg, p, p.peer_warmup, c, in);
        });
  }
  for (mqd_t q : qs)
    if (q != static_cast<mqd_t>(-1)) ::mq_close(q);
  for (const auto& name : {ping, pong, stream}) ::mq_unlink(name.c_str());
  return r;
}

// ---------------------------------------------------------------------------------------------
// Unix domain socket: a SOCK_SEQPACKET pair made before fork (message boundaries kept; one
// message per send, as every transport here). Blocking send / recv, default buffer sizes.

struct SockEnd {
  int fd;
  std::vector<std::byte> buf;
  SockEnd(int f, std::size_t size) : fd(f), buf(size + 8) {}  // 8 more: a longer message shows as one
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    for (;;) {
      const ssize_t n = ::send(fd, m.data(), m.size(), MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(m.size())) return;
      if (n < 0 && errno == EINTR) continue;
      die("send of sequence %" PRIu64 ": %s", seq, n < 0 ? std::strerror(errno) : "short send");
    }
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n > 0) return {buf.data(), static_cast<std::size_t>(n)};
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) die("recv at sequence %" PRIu64 ": the other end closed", seq);
      die("recv at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
    }
  }
  void release() {}
};

Row run_unix_socket(const Config& cfg, const Plan& p, std::string& note) {
  Row r = make_row("uds", "Unix socket (SEQPACKET)", "blocking recv", p);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    r.skipped = std::string("socketpair(AF_UNIX, SOCK_SEQPACKET): ") + std::strerror(errno);
    return r;
  }
  int sndbuf = 0;
  socklen_t len = sizeof sndbuf;
  ::getsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, &len);
  note = "Unix socket: socketpair(AF_UNIX, SOCK_SEQPACKET), SO_SNDBUF " + std::to_string(sndbuf) + " B (default)";
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* s) {
        SockEnd end(sv[0], p.size);
        run_pinger(cfg, p, c, s, end, end);
      },
      [&](PairControl& c) {
        SockEnd end(sv[1], p.size);
        run_ponger(cfg, p, c, end, end);
      });
  ::close(sv[0]);
  ::close(sv[1]);
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    std::fprintf(stderr, "*** FAIL [Unix socket]: socketpair: %s\n", std::strerror(errno));
    return r;
  }
  r.throughput = throughput_case(
      cfg, p, p.peer_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        SockEnd out(sv[0], p.size);
        run_producer(cfg, p, p.peer_warmup, c, out);
      },
      [&](PairControl& c) {
        SockEnd in(sv[1], p.size);
        run_consumer(cfg, p, p.peer_warmup, c, in);
      });
  ::close(sv[0]);
  ::close(sv[1]);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Boost.Interprocess message_queue (header-only): a queue in a named shared-memory segment,
// guarded by a process-shared mutex and conditions. The parent creates it; the children open it.

namespace bip = boost::interprocess;

struct BoostEnd {
  bip::message_queue q;
  std::vector<std::byte> buf;
  BoostEnd(const std::string& name, std::size_t size) : q(bip::open_only, name.c_str()), buf(size) {}
  void send(std::span<const std::byte> m, std::uint64_t) { q.send(m.data(), m.size(), 0); }
  std::span<const std::byte> recv(std::uint64_t, Waiter&) {
    bip::message_queue::size_type got = 0;
    unsigned int prio = 0;
    q.receive(buf.data(), buf.size(), got, prio);
    return {buf.data(), static_cast<std::size_t>(got)};
  }
  void release() {}
};

Row run_boost_mq(const Config& cfg, const Plan& p) {
  Row r = make_row("boost", "Boost.Interprocess mq", "blocking receive", p);
  const std::string base = "shmqpp-boost-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  auto remove_all = [&] {
    for (const auto& name : {ping, pong, stream}) bip::message_queue::remove(name.c_str());
  };
  remove_all();
  const std::uint64_t depth = peer_depth(p.size, cfg.queue_depth);
  try {
    bip::message_queue a(bip::create_only, ping.c_str(), 1, p.size);
    bip::message_queue b(bip::create_only, pong.c_str(), 1, p.size);
    bip::message_queue s(bip::create_only, stream.c_str(), depth, p.size);
  } catch (const std::exception& e) {
    r.skipped = std::string("creating the queues: ") + e.what();
    remove_all();
    return r;
  }
  r.wait += " (max_num_msg " + std::to_string(depth) + ")";
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* s) {
        BoostEnd out(ping, p.size), in(pong, p.size);
        run_pinger(cfg, p, c, s, out, in);
      },
      [&](PairControl& c) {
        BoostEnd out(pong, p.size), in(ping, p.size);
        run_ponger(cfg, p, c, out, in);
      });
  r.throughput = throughput_case(
      cfg, p, p.peer_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        BoostEnd out(stream, p.size);
        run_producer(cfg, p, p.peer_warmup, c, out);
      },
      [&](PairControl& c) {
        BoostEnd in(stream, p.size);
        run_consumer(cfg, p, p.peer_warmup, c, in);
      });
  remove_all();
  return r;
}

// ---------------------------------------------------------------------------------------------
// iceoryx 2 (zero-copy publish / subscribe). RouDi, its broker, must run: we start iox-roudi for
// the run (its output goes to a log file beside the JSON, or /dev/null) unless one already runs,
// and stop it at the end. Each child registers its own runtime (unique name), makes its
// publisher and subscriber, and waits until both are connected before it says ready.
// Publisher: loan the message size, copy the message in, publish (WAIT_FOR_CONSUMER); subscriber:
// busy-polls take() (BLOCK_PRODUCER, so nothing is ever dropped), checks the message in the
// chunk, releases it.

#if defined(SHMQ_BENCH_ICEORYX)
constexpr bool kHaveIceoryx = true;

// RouDi's default memory pools (iceoryx 2.0) hold 200 chunks of 128 KiB: a 64 KiB message's
// subscriber queue must leave some to the publisher.
std::uint64_t iox_depth(std::size_t size) {
  return size + 64 <= 16 * 1024 ? iox::MAX_SUBSCRIBER_QUEUE_CAPACITY : std::uint64_t{128};
}

struct IoxEnds {
  iox::popo::UntypedPublisher pub;
  iox::popo::UntypedSubscriber sub;
  const void* held = nullptr;  // the chunk recv() returned, until release()
  std::size_t size;
  static iox::popo::PublisherOptions pub_options() {
    iox::popo::PublisherOptions o;
    o.historyCapacity = 0;
    o.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    return o;
  }
  static iox::popo::SubscriberOptions sub_options(std::uint64_t depth) {
    iox::popo::SubscriberOptions o;
    o.queueCapacity = depth;
    o.historyRequest = 0;
    o.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    return o;
  }
  static iox::capro::IdString_t id(const std::string& s) { return iox::capro::IdString_t(iox::cxx::TruncateToCapacity, s.c_str()); }
  // Publishes on topic OUT, subscribes to topic IN (either may be empty: not used).
  IoxEnds(const std::string& instance, const std::string& out, const std::string& in, std::uint64_t depth,
          std::size_t message_size)
      : pub({id("shmqpp"), id(instance), id(out.empty() ? "unused-out" : out)}, pub_options()),
        sub({id("shmqpp"), id(instance), id(in.empty() ? "unused-in" : in)}, sub_options(depth)),
        size(message_size) {}

  // Waits until our subscriber is subscribed and our publisher has its subscriber.
  void connect(bool need_pub, bool need_sub, double stall_s) {
    Waiter w(stall_s, "waiting for iceoryx to connect publisher and subscriber");
    while ((need_sub && sub.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) ||
           (need_pub && !pub.hasSubscribers())) {
      ::usleep(1000);
      w.check(0);
    }
  }
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    auto loaned = pub.loan(static_cast<std::uint32_t>(m.size()), alignof(std::uint64_t));
    if (loaned.has_error())
      die("iceoryx loan of sequence %" PRIu64 " failed (AllocationError %d)", seq, static_cast<int>(loaned.get_error()));
    void* chunk = loaned.value();
    std::memcpy(chunk, m.data(), m.size());
    pub.publish(chunk);
  }
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    w.reset();
    for (;;) {
      auto taken = sub.take();
      if (!taken.has_error()) {
        held = taken.value();
        const auto* header = iox::mepoo::ChunkHeader::fromUserPayload(held);
        return {static_cast<const std::byte*>(held), header->userPayloadSize()};
      }
      if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE)
        die("iceoryx take at sequence %" PRIu64 " failed (ChunkReceiveResult %d)", seq, static_cast<int>(taken.get_error()));
      w.spin(seq);
    }
  }
  void release() {
    sub.release(held);
    held = nullptr;
  }
};

void iox_init(const char* role) {
  // Its clients log at Debug level by default: keep the tables readable.
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn,
                                                           iox::log::LogLevelOutput::kHideLogLevel);
  const std::string name = std::string("shmqpp-") + role + "-" + std::to_string(::getpid());
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, name.c_str()));
}

// A child that used iceoryx ends with exit(), not _exit(): the runtime's destructor (a static)
// deregisters the process from RouDi, which otherwise reports it "not responding" and, at its
// own shutdown, fails to kill it.
[[noreturn]] void iox_exit() {
  std::fflush(nullptr);
  std::exit(0);
}

// iox-roudi, started for the run (pid > 0) or found running (pid 0).
struct Roudi {
  pid_t pid = -1;
  std::string why;  // when it could not be had
};

bool roudi_running() {
  for (const auto& e : std::filesystem::directory_iterator("/proc", std::filesystem::directory_options::skip_permission_denied)) {
    std::ifstream comm(e.path() / "comm");
    std::string name;
    if (comm && std::getline(comm, name) && name == "iox-roudi") return true;
  }
  return false;
}

Roudi start_roudi(const std::string& log_path) {
  Roudi r;
  if (roudi_running()) {
    r.pid = 0;
    return r;
  }
  const char* candidates[] = {"/usr/bin/iox-roudi", "/usr/local/bin/iox-roudi"};
  const char* exe = nullptr;
  for (const char* c : candidates)
    if (::access(c, X_OK) == 0) exe = c;
  if (exe == nullptr) {
    r.why = "iox-roudi not found (Debian package iceoryx)";
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = ::fork();
  if (pid < 0) {
    r.why = std::string("fork: ") + std::strerror(errno);
    return r;
  }
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execl(exe, exe, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Ready once its management segment exists; it may still need a moment for its IPC channel,
  // which initRuntime in the children waits for.
  const std::uint64_t t0 = mono_ns();
  while (mono_ns() - t0 < 10'000'000'000u) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      r.why = "iox-roudi exited at start (status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
              "); see " + log_path;
      return r;
    }
    if (::access("/dev/shm/iceoryx_mgmt", F_OK) == 0) {
      ::usleep(200'000);
      r.pid = pid;
      return r;
    }
    ::usleep(10'000);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  r.why = "iox-roudi did not come up within 10 s; see " + log_path;
  return r;
}

void stop_roudi(Roudi& r) {
  if (r.pid <= 0) return;
  ::kill(r.pid, SIGTERM);
  for (int i = 0; i < 500; ++i) {
    if (::waitpid(r.pid, nullptr, WNOHANG) == r.pid) {
      r.pid = -1;
      return;
    }
    ::usleep(10'000);
  }
  ::kill(r.pid, SIGKILL);
  ::waitpid(r.pid, nullptr, 0);
  r.pid = -1;
}

// Runs BODY in a child with an iceoryx runtime and the ends IoxEnds(instance, OUT, IN, DEPTH).
template <class Body>
void with_iox(const char* role, const std::string& inst, const std::string& out, const std::string& in,
              std::uint64_t depth, const Config& cfg, const Plan& p, Body body) {
  iox_init(role);
  {
    IoxEnds e(inst, out, in, depth, p.size);
    e.connect(!out.empty(), !in.empty(), cfg.stall_s);
    body(e);
  }
  iox_exit();
}

Row run_iceoryx(const Config& cfg, const Plan& p, const Roudi& roudi) {
  Row r = make_row("iceoryx", "iceoryx 2 (untyped pub/sub)", "spin (take)", p);
  if (roudi.pid < 0) {
    r.skipped = roudi.why;
    return r;
  }
  const std::uint64_t depth = iox_depth(p.size);
  r.wait += " (queue " + std::to_string(depth) + ")";
  const std::string inst = std::to_string(::getpid()) + "-" + std::to_string(p.size);
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* s) {
        with_iox("pinger", inst, "ping", "pong", 1, cfg, p, [&](IoxEnds& e) { run_pinger(cfg, p, c, s, e, e); });
      },
      [&](PairControl& c) {
        with_iox("ponger", inst, "pong", "ping", 1, cfg, p, [&](IoxEnds& e) { run_ponger(cfg, p, c, e, e); });
      });
  r.throughput = throughput_case(
      cfg, p, p.peer_warmup, label(r, "throughput"),
      [&](PairControl& c) {
        with_iox("producer", inst, "stream", "", depth, cfg, p,
                 [&](IoxEnds& e) { run_producer(cfg, p, p.peer_warmup, c, e); });
      },
      [&](PairControl& c) {
        with_iox("consumer", inst, "", "stream", depth, cfg, p,
                 [&](IoxEnds& e) { run_consumer(cfg, p, p.peer_warmup, c, e); });
      });
  return r;
}
#else
constexpr bool kHaveIceoryx = false;
struct Roudi {
  pid_t pid = -1;
};
#endif

// ---------------------------------------------------------------------------------------------
// Report: the table (one row per transport and size), the goals, the summary rows.

const Row* find(const std::vector<Row>& all, const char* key, std::size_t size) {
  for (const auto& r : all)
    if (r.key == key && r.size == size && r.ran()) return &r;
  return nullptr;
}

// A / B as a cell, or "-" when either figure is missing.
Cell ratio_cell(bool ok, double a, double b) { return ok && b > 0 ? num(a / b, a / b < 0.1 ? 3 : 2) : txt("-"); }

Table make_table(const std::vector<Row>& all) {
  Table t({"size", "transport", "receiver waits by", "p50 (ns)", "p99 (ns)", "p99.9 (ns)", "max (ns)", "M msgs/s",
           "MB/s", "Spin / this: p50", "p99.9", "MB/s", "Block / this: p50", "MB/s"},
          {false, false, false});
  for (const auto& x : all) {
    if (!x.ran()) {
      t.add({txt(size_name(x.size)), txt(x.name), txt(x.wait), txt("SKIPPED: " + x.skipped)});
      continue;
    }
    const Row* spin = find(all, "shmq", x.size);
    const Row* block = find(all, "shmq-block", x.size);
    const Latency& l = x.latency;
    const Throughput& p = x.throughput;
    auto lat = [&](double v) { return !x.has_latency ? txt("-") : l.ok ? num(v, 0) : txt("FAILED"); };
    const bool lat_ok = x.has_latency && l.ok;
    const bool sl = spin && spin->latency.ok && lat_ok, st = spin && spin->throughput.ok && p.ok;
    const bool bl = block && block->latency.ok && lat_ok, bt = block && block->throughput.ok && p.ok;
    t.add({txt(size_name(x.size)), txt(x.name), txt(x.wait), lat(l.p50), lat(l.p99), lat(l.p999), lat(l.max),
           p.ok ? num(p.msgs_per_s / 1e6, p.msgs_per_s < 1e5 ? 3 : 2) : txt("FAILED"),
           p.ok ? num(p.mb_per_s, 0) : txt("FAILED"),
           ratio_cell(sl, spin ? spin->latency.p50 : 0, l.p50), ratio_cell(sl, spin ? spin->latency.p999 : 0, l.p999),
           ratio_cell(st, spin ? spin->throughput.mb_per_s : 0, p.mb_per_s),
           ratio_cell(bl, block ? block->latency.p50 : 0, l.p50),
           ratio_cell(bt, block ? block->throughput.mb_per_s : 0, p.mb_per_s)});
  }
  return t;
}

// The same figures, one row per (transport, size, measurement), for CSV and JSON.
Table make_detail(const std::vector<Row>& all) {
  Table t({"transport", "key", "size", "kind", "ok", "stopped_early", "samples_or_messages", "p50_ns", "p99_ns",
           "p999_ns", "max_ns", "mean_ns", "seconds", "msgs_per_s", "mb_per_s", "others_cpu_pct", "steal_pct",
           "skipped"});
  for (const auto& x : all) {
    const Cell size = num(static_cast<double>(x.size), 0);
    if (!x.ran()) {
      t.add({txt(x.name), txt(x.key), size, txt("-"), txt("false"), txt(""), txt(""), txt(""), txt(""), txt(""),
             txt(""), txt(""), txt(""), txt(""), txt(""), txt(""), txt(""), txt(x.skipped)});
      continue;
    }
    const Latency& l = x.latency;
    const Throughput& p = x.throughput;
    if (x.has_latency)
      t.add({txt(x.name), txt(x.key), size, txt("latency"), txt(l.ok ? "true" : "false"),
             txt(l.stopped_early ? "true" : "false"), num(static_cast<double>(l.samples), 0), num(l.p50, 1),
             num(l.p99, 1), num(l.p999, 1), num(l.max, 1), num(l.mean, 1), txt(""), txt(""), txt(""),
             num(l.disturbance.others_cpu_pct, 1), num(l.disturbance.steal_pct, 1), txt("")});
    t.add({txt(x.name), txt(x.key), size, txt("throughput"), txt(p.ok ? "true" : "false"),
           txt(p.stopped_early ? "true" : "false"), num(static_cast<double>(p.messages), 0), txt(""), txt(""), txt(""),
           txt(""), txt(""), num(p.seconds, 6), num(p.msgs_per_s, 1), num(p.mb_per_s, 1),
           num(p.disturbance.others_cpu_pct, 1), num(p.disturbance.steal_pct, 1), txt("")});
  }
  return t;
}

// One goal: its text and, when both figures are there, whether it is met.
struct Goal {
  std::string text;
  std::optional<bool> met;  // absent: a figure is missing (failed or skipped)
  std::string line() const { return text + ": " + (met ? verdict(*met) : "n/a (figure missing)"); }
};

// The speed goals of shmq (Wait::Spin) against the floor, memcpy and the peers of the same run.
std::vector<Goal> goals(const std::vector<Row>& all) {
  std::vector<Goal> out;
  const Row* s = find(all, "shmq", 64);
  const Row* f = find(all, "floor", 64);
  const bool sl = s && s->latency.ok, st = s && s->throughput.ok;
  auto lat_goal = [&](const std::string& text, const Row* o, double mine, double theirs, double factor) {
    const bool have = sl && o && o->latency.ok;
    out.push_back({text, have ? std::optional<bool>(mine <= factor * theirs) : std::nullopt});
  };
  auto tp_goal = [&](const std::string& text, const Row* o, double factor) {
    const bool have = st && o && o->throughput.ok;
    out.push_back({text, have ? std::optional<bool>(s->throughput.msgs_per_s >= factor * o->throughput.msgs_per_s)
                              : std::nullopt});
  };
  lat_goal("64 B p50 <= 1.3 x floor", f, sl ? s->latency.p50 : 0, f ? f->latency.p50 : 0, 1.3);
  lat_goal("64 B p99.9 <= 2 x floor", f, sl ? s->latency.p999 : 0, f ? f->latency.p999 : 0, 2.0);
  for (const char* peer : {"mq", "uds", "boost", "iceoryx"}) {
    const Row* o = find(all, peer, 64);
    if (o == nullptr) continue;
    lat_goal("64 B p50 below " + o->name, o, sl ? s->latency.p50 : 0, o->latency.p50, 1.0);
    lat_goal("64 B p99.9 below " + o->name, o, sl ? s->latency.p999 : 0, o->latency.p999, 1.0);
  }
  tp_goal("64 B msgs/s >= 0.9 x floor", f, 0.9);
  if (const Row* b = find(all, "boost", 64)) tp_goal("64 B msgs/s >= 3 x Boost.Interprocess mq", b, 3.0);
  if (const Row* i = find(all, "iceoryx", 64)) tp_goal("64 B msgs/s >= 10 x iceoryx", i, 10.0);
  const Row* big = find(all, "shmq", 64 << 10);
  const Row* mc = find(all, "memcpy", 64 << 10);
  if (big || mc) {
    const bool have = big && big->throughput.ok && mc && mc->throughput.ok;
    out.push_back({"64 KiB MB/s >= 0.7 x memcpy (1 core)",
                   have ? std::optional<bool>(big->throughput.mb_per_s >= 0.7 * mc->throughput.mb_per_s) : std::nullopt});
  }
  return out;
}

// "p50 0.86x, p99.9 1.90x, MB/s 0.20x" of MINE / THEIRS, the figures both have.
std::string ratios(const Row& mine, const Row& theirs) {
  std::vector<std::string> parts;
  const bool lat = mine.has_latency && theirs.has_latency && mine.latency.ok && theirs.latency.ok;
  if (lat && theirs.latency.p50 > 0) parts.push_back("p50 " + times(mine.latency.p50 / theirs.latency.p50));
  if (lat && theirs.latency.p999 > 0) parts.push_back("p99.9 " + times(mine.latency.p999 / theirs.latency.p999));
  if (mine.throughput.ok && theirs.throughput.ok && theirs.throughput.mb_per_s > 0)
    parts.push_back("MB/s " + times(mine.throughput.mb_per_s / theirs.throughput.mb_per_s));
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

// The summary rows: every transport at every size, each with its ratios (shmq's rows: to the
// floor, and to memcpy for large messages; the others: shmq Spin / this, and Block / this for a
// peer that blocks in the kernel); the goals go in shmq Spin's 64 B and 64 KiB rows.
std::vector<SummaryRow> summary_rows(const std::vector<Row>& all, const std::vector<Goal>& gs) {
  std::vector<SummaryRow> out;
  for (const auto& x : all) {
    SummaryRow s;
    s.section = "cross-process, 2 pinned processes, Memory";
    s.case_name = size_name(x.size);
    s.system = x.name;
    if (!x.ran()) {
      s.vs = "SKIPPED: " + x.skipped;
      out.push_back(s);
      continue;
    }
    if (x.has_latency && x.latency.ok) {
      s.p50_ns = x.latency.p50;
      s.p99_ns = x.latency.p99;
      s.p999_ns = x.latency.p999;
      s.max_ns = x.latency.max;
    }
    if (x.throughput.ok) {
      s.msgs_per_s = x.throughput.msgs_per_s;
      s.mb_per_s = x.throughput.mb_per_s;
    }
    if (!x.ok()) s.vs = "FAILED: see the *** FAIL lines";
    const Row* spin = find(all, "shmq", x.size);
    const Row* block = find(all, "shmq-block", x.size);
    const Row* floor = find(all, "floor", x.size);
    const Row* mc = find(all, "memcpy", x.size);
    auto add_vs = [&](const std::string& what, const Row* a, const Row* b) {
      if (a == nullptr || b == nullptr) return;
      const std::string r = ratios(*a, *b);
      if (!r.empty()) s.vs += (s.vs.empty() ? "" : "; ") + what + r;
    };
    if (x.key == "shmq" || x.key == "shmq-block") {
      add_vs("/ floor: ", &x, floor);
      if (x.size > 64) add_vs("/ memcpy: ", &x, mc);
    } else if (x.key != "memcpy") {
      add_vs("shmq Spin / this: ", spin, &x);
      if (x.wait.rfind("blocking", 0) == 0) add_vs("shmq Block / this: ", block, &x);
    }
    if (x.key == "shmq")
      for (const auto& g : gs)
        if ((x.size == 64 && g.text.rfind("64 B", 0) == 0) || (x.size == 65536 && g.text.rfind("64 KiB", 0) == 0))
          s.goal += (s.goal.empty() ? "" : "; ") + g.line();
    out.push_back(s);
  }
  return out;
}

// The first two CPUs this process may run on (unless --cpus said).
void choose_cpus(Config& cfg) {
  if (cfg.cpu_a >= 0) return;
  const std::vector<int> cpus = usable_cpus();
  if (cpus.size() >= 2) {
    cfg.cpu_a = cpus[0];
    cfg.cpu_b = cpus[1];
  }
}

void print_header(const Config& cfg, const std::string& model, double load) {
  std::printf("shmq_pingpong%s: messages of", cfg.quick ? " (--quick)" : "");
  for (auto s : cfg.sizes) std::printf(" %s", size_name(s).c_str());
  std::printf("; shmq Durability::Memory\n");
  std::printf("host: %s, %ld CPUs online, load average %.2f at start\n", model.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN),
              load);
  if (cfg.cpu_a >= 0)
    std::printf("processes pinned to CPU %d and CPU %d\n", cfg.cpu_a, cfg.cpu_b);
  else
    std::printf("WARNING: fewer than 2 CPUs available: processes NOT pinned; spinning ping-pong on one CPU "
                "measures the scheduler, not the queue\n");
  std::printf("latency: %" PRIu64 " round trips after %" PRIu64 " warm-up (a quarter of each above 64 B), shmq and "
              "floor rings of %zu KiB, timer %s (%.4f ns/tick)\n",
              cfg.rtt, cfg.warmup, cfg.lat_ring_bytes >> 10, g_ticks.name(), g_ticks.ns_per_tick);
  std::printf("throughput: up to %" PRIu64 " messages or %" PRIu64 " MiB a case (a ring lap untimed), each checked "
              "for order and every byte, shmq and floor rings of %zu MiB\nbudget: %.0f s per case at 64 B, %.1f s "
              "above\n",
              cfg.messages, cfg.tp_bytes >> 20, cfg.ring_bytes >> 20, cfg.budget_s, cfg.large_budget_s);
}

void print_results(const std::vector<Row>& all, const Table& table, const std::vector<Goal>& gs,
                   const std::vector<std::string>& notes) {
  std::printf("\n");
  table.print_markdown();
  for (const auto& r : all) {
    if (r.ran() && r.latency.ok && r.latency.stopped_early)
      std::printf("note: %s %s latency stopped early by the time budget: %" PRIu64 " samples\n", r.name.c_str(),
                  size_name(r.size).c_str(), r.latency.samples);
    if (r.ran() && r.throughput.ok && r.throughput.stopped_early)
      std::printf("note: %s %s throughput stopped early by the time budget: %" PRIu64 " messages\n", r.name.c_str(),
                  size_name(r.size).c_str(), r.throughput.messages);
  }
  std::printf("latency: one-way = round trip / 2. Spin / this = shmq (Wait::Spin) / this, Block / this = shmq "
              "(Wait::Block) / this,\nat the same size: above 1 shmq is slower for latency, below 1 shmq is slower "
              "for throughput. Block / this is the like-for-like one\nfor a peer whose receiver blocks in the "
              "kernel. memcpy: one core copying the messages, no second process, no check.\n");
  for (const auto& n : notes)
    if (!n.empty()) std::printf("%s\n", n.c_str());
  std::printf("\ngoals (shmq Wait::Spin, figures of this run):\n");
  for (const auto& g : gs) std::printf("  %s\n", g.line().c_str());
  std::vector<std::pair<std::string, Disturbance>> dist;
  for (const auto& r : all) {
    if (!r.ran()) continue;
    const std::string k = r.key + "/" + size_name(r.size);
    if (r.has_latency && r.latency.ok) dist.push_back({k + " latency", r.latency.disturbance});
    if (r.throughput.ok) dist.push_back({k + " throughput", r.throughput.disturbance});
  }
  print_disturbance(dist);
}

bool write_files(const Config& cfg, const std::vector<Row>& all, const Table& table, const std::vector<Goal>& gs,
                 const std::vector<std::string>& notes, const std::string& model, double load, bool ok) {
  bool files_ok = write_summary(cfg.summary_path, summary_rows(all, gs));
  if (cfg.json_path.empty() && cfg.csv_path.empty()) return files_ok;
  const Table detail = make_detail(all);
  Report rep;
  rep.context = {{"cpu", model},
                 {"load1_at_start", fmt(load, 2)},
                 {"timer", g_ticks.name()},
                 {"cpus", std::to_string(cfg.cpu_a) + "," + std::to_string(cfg.cpu_b)},
                 {"quick", cfg.quick ? "true" : "false"},
                 {"rtt_64B", std::to_string(cfg.rtt)},
                 {"warmup_64B", std::to_string(cfg.warmup)},
                 {"messages_max", std::to_string(cfg.messages)},
                 {"tp_bytes_max", std::to_string(cfg.tp_bytes)},
                 {"budget_s", fmt(cfg.budget_s, 1)},
                 {"large_budget_s", fmt(cfg.large_budget_s, 1)}};
  for (std::size_t i = 0; i < notes.size(); ++i) rep.context.push_back({"note" + std::to_string(i), notes[i]});
  for (std::size_t i = 0; i < gs.size(); ++i) rep.context.push_back({"goal" + std::to_string(i), gs[i].line()});
  rep.tables = {{"pingpong", &table}, {"pingpong_detail", &detail}};
  return rep.write(cfg.csv_path, cfg.json_path, "shmq_pingpong", ok) && files_ok;
}

}  // namespace

int main(int argc, char** argv) {
  g_argv0 = argv[0];
  Config cfg = parse_args(argc, argv);
  choose_cpus(cfg);
  calibrate_ticks();
  install_signal_handlers();

  const std::string model = cpu_model();
  const double load = load1();
  print_header(cfg, model, load);

  char dir[] = "/tmp/shmq-pingpong-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::fprintf(stderr, "*** FAIL: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  const std::filesystem::path jdir = dir;
  const std::string roudi_log =
      cfg.json_path.empty() ? std::string("/dev/null")
                            : (std::filesystem::path(cfg.json_path).parent_path() / "iox-roudi.log").string();

  bool cleanup_ok = true;
  std::vector<Row> all;
  std::vector<std::string> notes;
  auto go = [&](const char* key) { return cfg.wants(key) && !g_interrupted; };

  const std::uint64_t largest = *std::max_element(cfg.sizes.begin(), cfg.sizes.end());
  MqLimits mq_lim;
  if (cfg.wants("mq")) {
    mq_lim = raise_mq_limits(static_cast<long>(peer_depth(Frames::kMinSize, cfg.mq_depth)), static_cast<long>(largest));
  }
  Roudi roudi;
#if defined(SHMQ_BENCH_ICEORYX)
  if (cfg.wants("iceoryx")) {
    roudi = start_roudi(roudi_log);
    if (roudi.pid >= 0)
      notes.push_back(std::string("iceoryx 2.0: RouDi ") + (roudi.pid > 0 ? "started for this run" : "already running") +
                      " with its default memory pools; subscriber queue 1 (latency), up to 256 (throughput), "
                      "BLOCK_PRODUCER / WAIT_FOR_CONSUMER");
  }
#endif
  notes.push_back("Boost.Interprocess message_queue (Boost " + std::to_string(BOOST_VERSION / 100000) + "." +
                  std::to_string(BOOST_VERSION / 100 % 1000) + "): ping/pong max_num_msg 1");
  std::string uds_note;
  for (std::uint64_t size : cfg.sizes) {
    const Plan p = plan_for(cfg, size);
    if (go("shmq")) all.push_back(run_shmq(cfg, p, jdir, shmq::Wait::Spin, cleanup_ok));
    if (go("shmq-block")) all.push_back(run_shmq(cfg, p, jdir, shmq::Wait::Block, cleanup_ok));
    if (go("floor")) all.push_back(run_floor(cfg, p));
    if (go("memcpy")) all.push_back(run_memcpy(cfg, p));
    if (go("mq")) all.push_back(run_posix_mq(cfg, p, mq_lim));
    if (go("uds")) all.push_back(run_unix_socket(cfg, p, uds_note));
    if (go("boost")) all.push_back(run_boost_mq(cfg, p));
    if (go("iceoryx")) {
#if defined(SHMQ_BENCH_ICEORYX)
      all.push_back(run_iceoryx(cfg, p, roudi));
#else
      Row r = make_row("iceoryx", "iceoryx", "-", p);
      r.skipped = "not built: libiceoryx-posh-dev was not found at configure time (Debian: apt-get install "
                  "libiceoryx-posh-dev iceoryx; then re-run cmake)";
      all.push_back(r);
#endif
    }
  }
#if defined(SHMQ_BENCH_ICEORYX)
  stop_roudi(roudi);
#endif
  (void)kHaveIceoryx;
  (void)roudi;
  (void)roudi_log;
  if (cfg.wants("mq")) {
    restore_mq_limits(mq_lim);
    notes.push_back(mq_lim.note);
  }
  notes.push_back(uds_note);
  std::error_code ec;
  std::filesystem::remove_all(jdir, ec);

  bool ok = cleanup_ok && !g_interrupted;
  for (const auto& r : all) ok = ok && r.ok();
  const Table table = make_table(all);
  const std::vector<Goal> gs = goals(all);
  print_results(all, table, gs, notes);
  const bool files_ok = write_files(cfg, all, table, gs, notes, model, load, ok);
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_pingpong FAILED: see the *** FAIL lines above; no figure is reported for a "
                         "failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}
