// shmq_pingpong: shmq across two processes, beside a floor and its peers, in one run.
//
// What it measures (64-byte messages; every shmq channel Durability::Memory):
//   latency     two processes pinned to two CPUs play ping-pong over a transport (A->B, B->A).
//               A stamps the time, sends a ping, receives the pong; B receives the ping, checks
//               it, sends it back. One-way latency = round trip / 2, reported as p50 / p99 /
//               p99.9 / max over --rtt round trips after a warm-up. shmq's acks are outside the
//               timed path (B acks after its reply; A acks after it stamps the arrival).
//   throughput  one process sends --messages messages (sequence number, checksum) to a consumer
//               process that checks every one (order and checksum; shmq: also its inner id, and
//               acks it); msgs/s and MB/s (payload bytes) in the consumer's steady state: timed
//               from its receipt of message --tp-warmup to its last message.
//   transports  shmq Wait::Spin and shmq Wait::Block (consumers poll with that wait);
//               floor: a bare single-producer single-consumer ring in shared memory (head and
//               tail on their own cache lines, each side caching the other's index, 64-byte
//               slots): what the hardware gives when nothing else is done;
//               peers: POSIX message queues (mq_send / mq_receive, blocking), a Unix domain
//               socket pair (SOCK_SEQPACKET, blocking send / recv), Boost.Interprocess
//               message_queue (blocking send / receive: a process-shared mutex and condition),
//               iceoryx 2 (publish / subscribe through RouDi, the subscriber busy-polls take();
//               built when libiceoryx-posh-dev is installed; the run starts iox-roudi itself).
//               Every transport carries the same bytes and gets the same checks.
//   ratios      shmq / this: above 1 is slower for latency, below 1 is slower for throughput;
//               both against shmq Spin and against shmq Block (the like-for-like figure for a
//               peer whose receiver blocks in the kernel).
//
// Failures are loud: a send or publish that fails, a lost, duplicated, reordered or corrupt
// message, a child that crashes or makes no progress for --stall seconds is printed with
// "*** FAIL", the figure is not reported, and the exit status is 1. A peer that cannot be set up
// here (no iceoryx, mq_open refused) is SKIPPED with its reason: not a failure, not a figure.
// A case that reaches its time budget (--budget seconds) stops early and says so: a figure over
// fewer messages, not a failure. No wall-clock limit is asserted.
//
// Usage: shmq_pingpong [--quick] [--json FILE] [--csv FILE] [--rtt N] [--warmup N] [--messages N]
//                      [--tp-warmup N] [--ring-mib N] [--lat-ring-kib N] [--budget S] [--stall S]
//                      [--cpus A,B] [--only LIST] [--mq-depth N] [--queue-depth N]

#include <shmq/shmq.hpp>

#include <fcntl.h>
#include <mqueue.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <boost/interprocess/ipc/message_queue.hpp>

#if defined(SHMQ_BENCH_ICEORYX)
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_hoofs/log/logmanager.hpp"
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

struct Config {
  bool quick = false;
  std::string json_path, csv_path;
  std::uint64_t warmup = 20'000;        // round trips before the measured ones
  std::uint64_t rtt = 200'000;          // measured round trips
  std::uint64_t messages = 10'000'000;  // throughput case
  std::uint64_t tp_warmup = 0;  // throughput: messages before the timed window; 0: one pass of the ring
  std::size_t ring_bytes = std::size_t{64} << 20;     // throughput channel / floor ring
  std::size_t lat_ring_bytes = std::size_t{1} << 20;  // ping and pong channels / floor rings
  std::uint64_t mq_depth = 1024;     // POSIX mq_maxmsg for throughput (raised in /proc if root and needed)
  std::uint64_t queue_depth = 1024;  // Boost.Interprocess message_queue max_num_msg for throughput
  double budget_s = 10;  // a case stops early past this (and says so)
  double stall_s = 10;   // no progress this long: a hang, reported as a failure
  int cpu_a = -1;
  int cpu_b = -1;
  std::vector<std::string> only;  // transports to run (empty: all)
  bool wants(const char* key) const {
    return only.empty() || std::find(only.begin(), only.end(), key) != only.end();
  }
};

const char* g_argv0 = "shmq_pingpong";

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", g_argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--csv FILE] [--rtt N] [--warmup N] [--messages N]\n"
               "       [--tp-warmup N] [--ring-mib N] [--lat-ring-kib N] [--budget SECONDS] [--stall SECONDS]\n"
               "       [--cpus A,B] [--only floor,shmq,shmq-block,mq,uds,boost,iceoryx] [--mq-depth N] [--queue-depth N]\n",
               g_argv0);
  std::exit(why != nullptr ? 2 : 0);
}
void usage(const char* why) { usage_exit(why); }

Config parse_args(int argc, char** argv) {
  Config c;
  bool rtt_set = false, messages_set = false, budget_set = false;
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
    } else if (a == "--rtt") {
      c.rtt = parse_count(value(), usage);
      rtt_set = true;
    } else if (a == "--warmup") {
      c.warmup = parse_count(value(), usage);
    } else if (a == "--messages") {
      c.messages = parse_count(value(), usage);
      messages_set = true;
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
    } else if (a == "--stall") {
      c.stall_s = parse_seconds(value(), usage);
    } else if (a == "--cpus") {
      const char* v = value();
      if (std::sscanf(v, "%d,%d", &c.cpu_a, &c.cpu_b) != 2 || c.cpu_a < 0 || c.cpu_b < 0)
        usage("--cpus takes two CPU numbers, e.g. 0,1");
    } else if (a == "--only") {
      std::string s = value();
      for (std::size_t at = 0; at <= s.size();) {
        const std::size_t comma = s.find(',', at);
        c.only.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
        if (comma == std::string::npos) break;
        at = comma + 1;
      }
      for (const auto& k : c.only)
        if (k != "floor" && k != "shmq" && k != "shmq-block" && k != "mq" && k != "uds" && k != "boost" &&
            k != "iceoryx")
          usage("--only takes floor, shmq, shmq-block, mq, uds, boost, iceoryx");
    } else if (a == "--help" || a == "-h") {
      usage_exit(nullptr);
    } else {
      usage("unknown argument");
    }
  }
  if (c.quick) {
    if (!rtt_set) c.rtt = 20'000;
    if (!messages_set) c.messages = 2'000'000;
    if (!budget_set) c.budget_s = 3;
  }
  if (c.tp_warmup == 0) c.tp_warmup = c.ring_bytes / sizeof(std::uint64_t[8]);
  c.tp_warmup = std::min(c.tp_warmup, c.messages / 2);
  return c;
}

// Shared state of one case: the harness's Control and what the two children report.
struct PairControl : Control {
  alignas(64) std::uint64_t start_ns = 0;  // throughput: consumer got message tp_warmup
  std::uint64_t end_ns = 0;                 // throughput: consumer got the last message
  std::uint64_t sent = 0;                   // messages (round trips) produced, END excluded
  std::uint64_t received = 0;               // messages consumed, END excluded
  std::uint32_t stopped_early = 0;          // the time budget cut the run short
};

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
  std::string key;   // --only name
  std::string name;  // for the table
  std::string wait;  // how its receiver waits
  std::string skipped;  // not run here, and why (empty: it ran)
  Latency latency;
  Throughput throughput;
  bool ran() const { return skipped.empty(); }
  bool ok() const { return !ran() || (latency.ok && throughput.ok); }
};

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

Limits limits(const Config& cfg) { return {cfg.budget_s, cfg.stall_s}; }

// The peers' throughput warm-up: they have no ring pages to touch, and some of them move a few
// hundred thousand messages a second; a lap of shmq's ring would eat their budget.
constexpr std::uint64_t kPeerWarmup = 50'000;
std::uint64_t peer_warmup(const Config& cfg) { return std::min(cfg.tp_warmup, kPeerWarmup); }

// ---------------------------------------------------------------------------------------------
// The four roles over any transport whose ends look like
//   Tx: void send(const Msg&)
//   Rx: void recv(Msg& out, std::uint64_t seq, Waiter&)
// (the floor, the peers). shmq has its own below: it also checks inner ids and acks.

template <class Tx, class Rx>
void run_pinger(const Config& cfg, PairControl& c, std::uint64_t* samples, Tx& out, Rx& in) {
  wait_all_ready(c, 2, cfg.stall_s);
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
    out.send(m);
    in.recv(got, seq, w);
    const std::uint64_t t1 = ticks();
    if (auto why = check(got, seq); !why.empty()) die("pong: %s", why.c_str());
    if (seq >= cfg.warmup) samples[seq - cfg.warmup] = t1 - t0;
  }
  fill(m, seq, kEnd);
  out.send(m);
  c.sent = seq;
}

template <class Tx, class Rx>
void run_ponger(const Config& cfg, PairControl& c, Tx& out, Rx& in) {
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a ping");
  Msg got{};
  for (std::uint64_t seq = 0;; ++seq) {
    in.recv(got, seq, w);
    if (auto why = check(got, seq); !why.empty()) die("ping: %s", why.c_str());
    if (got.flags == kEnd) {
      c.received = seq;
      return;
    }
    out.send(got);
  }
}

template <class Tx>
void run_producer(const Config& cfg, std::uint64_t tp_warmup, PairControl& c, Tx& out) {
  wait_all_ready(c, 2, cfg.stall_s);
  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  Msg m{};
  const std::uint64_t t_start = mono_ns();
  std::uint64_t seq = 0;
  for (; seq < cfg.messages; ++seq) {
    if ((seq & 4095u) == 0 && seq > tp_warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    out.send(m);
  }
  fill(m, seq, kEnd);
  out.send(m);
  c.sent = seq;
}

template <class Rx>
void run_consumer(const Config& cfg, std::uint64_t tp_warmup, PairControl& c, Rx& in) {
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for the next message");
  Msg got{};
  for (std::uint64_t seq = 0;; ++seq) {
    in.recv(got, seq, w);
    if (auto why = check(got, seq); !why.empty()) die("%s", why.c_str());
    if (seq == tp_warmup) c.start_ns = mono_ns();
    if (got.flags == kEnd) {
      c.end_ns = mono_ns();
      c.received = seq;
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Cases, as seen from the parent: two children, pinned, watched.

Latency latency_case(const Config& cfg, const std::string& name,
                     const std::function<void(PairControl&, std::uint64_t*)>& pinger,
                     const std::function<void(PairControl&)>& ponger) {
  Shared<PairControl> control;
  PairControl& c = *control;
  SharedMap samples_map(cfg.rtt * sizeof(std::uint64_t));
  auto* samples = static_cast<std::uint64_t*>(samples_map.data());
  const bool ok = run_children(limits(cfg), name.c_str(), c,
                               {{"pinger", cfg.cpu_a, [&] { pinger(c, samples); }},
                                {"ponger", cfg.cpu_b, [&] { ponger(c); }}});
  if (!ok) return {};
  const std::uint64_t measured = c.sent > cfg.warmup ? c.sent - cfg.warmup : 0;
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

// TP_WARMUP: messages before the timed window (shmq and the floor: one lap of the ring, so that its
// pages are touched; the peers: kPeerWarmup).
Throughput throughput_case(const Config& cfg, std::uint64_t tp_warmup, const std::string& name,
                           const std::function<void(PairControl&)>& producer,
                           const std::function<void(PairControl&)>& consumer) {
  Shared<PairControl> control;
  PairControl& c = *control;
  const bool ok = run_children(limits(cfg), name.c_str(), c,
                               {{"producer", cfg.cpu_a, [&] { producer(c); }},
                                {"consumer", cfg.cpu_b, [&] { consumer(c); }}});
  if (!ok) return {};
  if (c.received != c.sent) {
    std::fprintf(stderr, "*** FAIL [%s]: producer sent %" PRIu64 " messages, consumer received %" PRIu64 "\n",
                 name.c_str(), c.sent, c.received);
    return {};
  }
  if (c.end_ns <= c.start_ns || c.start_ns == 0 || c.sent <= tp_warmup) {
    std::fprintf(stderr, "*** FAIL [%s]: no measurable interval (start %" PRIu64 ", end %" PRIu64 ")\n", name.c_str(),
                 c.start_ns, c.end_ns);
    return {};
  }
  Throughput t;
  t.messages = c.sent - tp_warmup;  // from message tp_warmup to END: sent - tp_warmup gaps
  t.stopped_early = c.stopped_early != 0;
  t.disturbance = {c.others_cpu_pct, c.steal_pct};
  t.seconds = static_cast<double>(c.end_ns - c.start_ns) / 1e9;
  t.msgs_per_s = static_cast<double>(t.messages) / t.seconds;
  t.mb_per_s = t.msgs_per_s * static_cast<double>(sizeof(Msg)) / 1e6;
  t.ok = true;
  return t;
}

// ---------------------------------------------------------------------------------------------
// Floor

struct FloorTx {
  FloorRing& ring;
  Waiter w;
  void send(const Msg& m) { ring.push(m, w); }
};
struct FloorRx {
  FloorRing& ring;
  void recv(Msg& out, std::uint64_t seq, Waiter& w) { ring.pop(out, w, seq); }
};

Transport run_floor(const Config& cfg) {
  Transport r{"floor", "floor (bare SPSC ring)", "spin", "", {}, {}};
  {
    const std::size_t cap = cfg.lat_ring_bytes / sizeof(Msg);
    SharedMap a(FloorRing::bytes_for(cap)), b(FloorRing::bytes_for(cap));
    auto* pings = new (a.data()) FloorRing();
    auto* pongs = new (b.data()) FloorRing();
    pings->capacity = pongs->capacity = cap;
    r.latency = latency_case(
        cfg, "floor latency",
        [&](PairControl& c, std::uint64_t* s) {
          FloorTx out{*pings, Waiter(cfg.stall_s, "waiting for ring space")};
          FloorRx in{*pongs};
          run_pinger(cfg, c, s, out, in);
        },
        [&](PairControl& c) {
          FloorTx out{*pongs, Waiter(cfg.stall_s, "waiting for ring space")};
          FloorRx in{*pings};
          run_ponger(cfg, c, out, in);
        });
  }
  {
    const std::size_t cap = cfg.ring_bytes / sizeof(Msg);
    SharedMap a(FloorRing::bytes_for(cap));
    auto* ring = new (a.data()) FloorRing();
    ring->capacity = cap;
    r.throughput = throughput_case(
        cfg, cfg.tp_warmup, "floor throughput",
        [&](PairControl& c) {
          FloorTx out{*ring, Waiter(cfg.stall_s, "waiting for ring space")};
          run_producer(cfg, cfg.tp_warmup, c, out);
        },
        [&](PairControl& c) {
          FloorRx in{*ring};
          run_consumer(cfg, cfg.tp_warmup, c, in);
        });
  }
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

shmq::PublishOptions publish_options(const Config& cfg, shmq::Wait wait) {
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = wait;
  return popts;
}

// Ping-pong over shmq. A: the timer. B: the echo.
void shmq_pinger(const Config& cfg, const Names& n, const std::filesystem::path& jdir, shmq::Wait wait,
                 PairControl& c, std::uint64_t* samples) {
  shmq::Channel pongs = shmq::Channel::open(n.pong, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Consumer in(pongs, "pinger", consumer_options(wait));
  shmq::Channel pings = shmq::Channel::open(n.ping, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Producer out(pings, "pinger");
  const shmq::PublishOptions popts = publish_options(cfg, wait);
  wait_all_ready(c, 2, cfg.stall_s);

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

void shmq_ponger(const Config& cfg, const Names& n, const std::filesystem::path& jdir, shmq::Wait wait,
                 PairControl& c) {
  shmq::Channel pings = shmq::Channel::open(n.ping, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Consumer in(pings, "ponger", consumer_options(wait));
  shmq::Channel pongs = shmq::Channel::open(n.pong, channel_options(cfg.lat_ring_bytes, jdir));
  shmq::Producer out(pongs, "ponger");
  const shmq::PublishOptions popts = publish_options(cfg, wait);
  wait_all_ready(c, 2, cfg.stall_s);

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

void shmq_producer(const Config& cfg, const Names& n, const std::filesystem::path& jdir, shmq::Wait wait,
                   PairControl& c) {
  shmq::Channel ch = shmq::Channel::open(n.stream, channel_options(cfg.ring_bytes, jdir));
  shmq::Producer out(ch, "producer");
  const shmq::PublishOptions popts = publish_options(cfg, wait);
  wait_all_ready(c, 2, cfg.stall_s);

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

void shmq_consumer(const Config& cfg, const Names& n, const std::filesystem::path& jdir, shmq::Wait wait,
                   PairControl& c) {
  shmq::Channel ch = shmq::Channel::open(n.stream, channel_options(cfg.ring_bytes, jdir));
  shmq::Consumer in(ch, "consumer", consumer_options(wait));
  wait_all_ready(c, 2, cfg.stall_s);

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

Transport run_shmq(const Config& cfg, const std::filesystem::path& jdir, shmq::Wait wait, bool& cleanup_ok) {
  const bool spin = wait == shmq::Wait::Spin;
  Transport r{spin ? "shmq" : "shmq-block", spin ? "shmq (Wait::Spin)" : "shmq (Wait::Block)",
              spin ? "spin (poll)" : "futex (poll)", "", {}, {}};
  const std::string base = "shmqpp_" + std::to_string(::getpid()) + (spin ? "_spin" : "_block");
  const Names n{base + "_ping", base + "_pong", base + "_stream"};
  if (create_channel(cfg.lat_ring_bytes, n.ping, jdir) && create_channel(cfg.lat_ring_bytes, n.pong, jdir)) {
    r.latency = latency_case(
        cfg, r.name + " latency", [&](PairControl& c, std::uint64_t* s) { shmq_pinger(cfg, n, jdir, wait, c, s); },
        [&](PairControl& c) { shmq_ponger(cfg, n, jdir, wait, c); });
  }
  if (create_channel(cfg.ring_bytes, n.stream, jdir)) {
    r.throughput = throughput_case(
        cfg, cfg.tp_warmup, r.name + " throughput", [&](PairControl& c) { shmq_producer(cfg, n, jdir, wait, c); },
        [&](PairControl& c) { shmq_consumer(cfg, n, jdir, wait, c); });
  }
  for (const auto& name : {n.ping, n.pong, n.stream})
    if (shmq::Channel::exists(name)) cleanup_ok = remove_channel(name, jdir) && cleanup_ok;
  return r;
}

// ---------------------------------------------------------------------------------------------
// POSIX message queues. The parent creates the queues (O_EXCL) and unlinks them at the end; the
// children open them by name. Blocking mq_send / mq_receive: the kernel queue's natural use.
// Queue length: /proc/sys/fs/mqueue/msg_max caps mq_maxmsg for an unprivileged process; as root
// we raise it for the run if it is below --mq-depth (and put the old value back at the end).

struct MqLimits {
  long msg_max = -1, msgsize_max = -1, queues_max = -1;
  long old_msg_max = -1;  // to restore, when we raised it
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

MqLimits mq_limits() {
  return {read_long("/proc/sys/fs/mqueue/msg_max"), read_long("/proc/sys/fs/mqueue/msgsize_max"),
          read_long("/proc/sys/fs/mqueue/queues_max"), -1};
}

// Opens (creates) a queue of DEPTH messages of 64 B. Returns -1 and sets WHY when it cannot.
mqd_t mq_create(const std::string& name, long depth, std::string& why) {
  mq_attr attr{};
  attr.mq_maxmsg = depth;
  attr.mq_msgsize = sizeof(Msg);
  ::mq_unlink(name.c_str());
  const mqd_t q = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
  if (q == static_cast<mqd_t>(-1)) why = "mq_open(" + name + ", maxmsg " + std::to_string(depth) + "): " + std::strerror(errno);
  return q;
}

struct MqEnd {
  mqd_t q;
  explicit MqEnd(const std::string& name) : q(::mq_open(name.c_str(), O_RDWR)) {
    if (q == static_cast<mqd_t>(-1)) die("mq_open(%s): %s", name.c_str(), std::strerror(errno));
  }
  ~MqEnd() { ::mq_close(q); }
  MqEnd(const MqEnd&) = delete;
  MqEnd& operator=(const MqEnd&) = delete;
  void send(const Msg& m) {
    while (::mq_send(q, reinterpret_cast<const char*>(&m), sizeof m, 0) != 0)
      if (errno != EINTR) die("mq_send of sequence %" PRIu64 ": %s", m.seq, std::strerror(errno));
  }
  void recv(Msg& out, std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::mq_receive(q, reinterpret_cast<char*>(&out), sizeof out, nullptr);
      if (n == static_cast<ssize_t>(sizeof out)) return;
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("mq_receive at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
      die("mq_receive at sequence %" PRIu64 " returned %zd bytes, expected %zu", seq, n, sizeof out);
    }
  }
};

Transport run_posix_mq(const Config& cfg, std::string& note) {
  Transport r{"mq", "POSIX mq", "blocking mq_receive", "", {}, {}};
  MqLimits lim = mq_limits();
  const long want = static_cast<long>(cfg.mq_depth);
  char buf[256];
  std::snprintf(buf, sizeof buf, "POSIX mq: /proc/sys/fs/mqueue msg_max %ld, msgsize_max %ld, queues_max %ld", lim.msg_max,
                lim.msgsize_max, lim.queues_max);
  note = buf;
  if (lim.msg_max >= 0 && lim.msg_max < want && ::geteuid() == 0) {
    if (write_long("/proc/sys/fs/mqueue/msg_max", want)) {
      lim.old_msg_max = lim.msg_max;
      note += "; raised msg_max to " + std::to_string(want) + " for this run (root)";
    }
  }
  const std::string base = "/shmqpp-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  std::string why;
  mqd_t qs[3] = {mq_create(ping, 1, why), mq_create(pong, 1, why), static_cast<mqd_t>(-1)};
  long depth = want;
  if (qs[0] != static_cast<mqd_t>(-1) && qs[1] != static_cast<mqd_t>(-1)) {
    qs[2] = mq_create(stream, depth, why);
    if (qs[2] == static_cast<mqd_t>(-1) && lim.msg_max > 0 && lim.msg_max < depth) {  // not root: what we may
      depth = lim.msg_max;
      qs[2] = mq_create(stream, depth, why);
    }
  }
  if (qs[0] == static_cast<mqd_t>(-1) || qs[1] == static_cast<mqd_t>(-1) || qs[2] == static_cast<mqd_t>(-1)) {
    r.skipped = why;
  } else {
    note += "; queues: ping/pong maxmsg 1, throughput maxmsg " + std::to_string(depth) + ", msgsize 64";
    r.latency = latency_case(
        cfg, "POSIX mq latency",
        [&](PairControl& c, std::uint64_t* s) {
          MqEnd out(ping), in(pong);
          run_pinger(cfg, c, s, out, in);
        },
        [&](PairControl& c) {
          MqEnd out(pong), in(ping);
          run_ponger(cfg, c, out, in);
        });
    r.throughput = throughput_case(
        cfg, peer_warmup(cfg), "POSIX mq throughput",
        [&](PairControl& c) {
          MqEnd out(stream);
          run_producer(cfg, peer_warmup(cfg), c, out);
        },
        [&](PairControl& c) {
          MqEnd in(stream);
          run_consumer(cfg, peer_warmup(cfg), c, in);
        });
  }
  for (mqd_t q : qs)
    if (q != static_cast<mqd_t>(-1)) ::mq_close(q);
  for (const auto& name : {ping, pong, stream}) ::mq_unlink(name.c_str());
  if (lim.old_msg_max >= 0 && !write_long("/proc/sys/fs/mqueue/msg_max", lim.old_msg_max))
    note += "; could NOT restore msg_max to " + std::to_string(lim.old_msg_max);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Unix domain socket: a SOCK_SEQPACKET pair made before fork (message boundaries kept; one
// message per send, as every transport here). Blocking send / recv, default buffer sizes.

struct SockEnd {
  int fd;
  void send(const Msg& m) {
    for (;;) {
      const ssize_t n = ::send(fd, &m, sizeof m, MSG_NOSIGNAL);
      if (n == static_cast<ssize_t>(sizeof m)) return;
      if (n < 0 && errno == EINTR) continue;
      die("send of sequence %" PRIu64 ": %s", m.seq, n < 0 ? std::strerror(errno) : "short send");
    }
  }
  void recv(Msg& out, std::uint64_t seq, Waiter&) {
    for (;;) {
      const ssize_t n = ::recv(fd, &out, sizeof out, 0);
      if (n == static_cast<ssize_t>(sizeof out)) return;
      if (n < 0 && errno == EINTR) continue;
      if (n == 0) die("recv at sequence %" PRIu64 ": the other end closed", seq);
      if (n < 0) die("recv at sequence %" PRIu64 ": %s", seq, std::strerror(errno));
      die("recv at sequence %" PRIu64 " returned %zd bytes, expected %zu", seq, n, sizeof out);
    }
  }
};

Transport run_unix_socket(const Config& cfg, std::string& note) {
  Transport r{"uds", "Unix socket (SEQPACKET)", "blocking recv", "", {}, {}};
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
      cfg, "Unix socket latency",
      [&](PairControl& c, std::uint64_t* s) {
        SockEnd end{sv[0]};
        run_pinger(cfg, c, s, end, end);
      },
      [&](PairControl& c) {
        SockEnd end{sv[1]};
        run_ponger(cfg, c, end, end);
      });
  ::close(sv[0]);
  ::close(sv[1]);
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    std::fprintf(stderr, "*** FAIL [Unix socket]: socketpair: %s\n", std::strerror(errno));
    return r;
  }
  r.throughput = throughput_case(
      cfg, peer_warmup(cfg), "Unix socket throughput",
      [&](PairControl& c) {
        SockEnd out{sv[0]};
        run_producer(cfg, peer_warmup(cfg), c, out);
      },
      [&](PairControl& c) {
        SockEnd in{sv[1]};
        run_consumer(cfg, peer_warmup(cfg), c, in);
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
  explicit BoostEnd(const std::string& name) : q(bip::open_only, name.c_str()) {}
  void send(const Msg& m) { q.send(&m, sizeof m, 0); }
  void recv(Msg& out, std::uint64_t seq, Waiter&) {
    bip::message_queue::size_type got = 0;
    unsigned int prio = 0;
    q.receive(&out, sizeof out, got, prio);
    if (got != sizeof out) die("receive at sequence %" PRIu64 " returned %zu bytes, expected %zu", seq, static_cast<std::size_t>(got), sizeof out);
  }
};

Transport run_boost_mq(const Config& cfg, std::string& note) {
  Transport r{"boost", "Boost.Interprocess mq", "blocking receive", "", {}, {}};
  const std::string base = "shmqpp-boost-" + std::to_string(::getpid());
  const std::string ping = base + "-ping", pong = base + "-pong", stream = base + "-stream";
  auto remove_all = [&] {
    for (const auto& name : {ping, pong, stream}) bip::message_queue::remove(name.c_str());
  };
  remove_all();
  try {
    bip::message_queue a(bip::create_only, ping.c_str(), 1, sizeof(Msg));
    bip::message_queue b(bip::create_only, pong.c_str(), 1, sizeof(Msg));
    bip::message_queue s(bip::create_only, stream.c_str(), cfg.queue_depth, sizeof(Msg));
  } catch (const std::exception& e) {
    r.skipped = std::string("creating the queues: ") + e.what();
    remove_all();
    return r;
  }
  note = "Boost.Interprocess message_queue (Boost " + std::to_string(BOOST_VERSION / 100000) + "." +
         std::to_string(BOOST_VERSION / 100 % 1000) + "): ping/pong max_num_msg 1, throughput max_num_msg " +
         std::to_string(cfg.queue_depth) + ", msg size 64";
  r.latency = latency_case(
      cfg, "Boost mq latency",
      [&](PairControl& c, std::uint64_t* s) {
        BoostEnd out(ping), in(pong);
        run_pinger(cfg, c, s, out, in);
      },
      [&](PairControl& c) {
        BoostEnd out(pong), in(ping);
        run_ponger(cfg, c, out, in);
      });
  r.throughput = throughput_case(
      cfg, peer_warmup(cfg), "Boost mq throughput",
      [&](PairControl& c) {
        BoostEnd out(stream);
        run_producer(cfg, peer_warmup(cfg), c, out);
      },
      [&](PairControl& c) {
        BoostEnd in(stream);
        run_consumer(cfg, peer_warmup(cfg), c, in);
      });
  remove_all();
  return r;
}

// ---------------------------------------------------------------------------------------------
// iceoryx 2 (zero-copy publish / subscribe). RouDi, its broker, must run: we start iox-roudi for
// the run (its output goes to a log file beside the JSON, or /dev/null) unless one already runs,
// and stop it at the end. Each child registers its own runtime (unique name), makes its
// publisher and subscriber, and waits until both are connected before it says ready.
// Publisher: loan 64 B, copy the message in, publish (ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER);
// subscriber: busy-polls take() (QueueFullPolicy::BLOCK_PRODUCER, so nothing is ever dropped),
// copies the message out, releases the chunk.

#if defined(SHMQ_BENCH_ICEORYX)
constexpr bool kHaveIceoryx = true;

struct IoxEnds {
  iox::popo::UntypedPublisher pub;
  iox::popo::UntypedSubscriber sub;
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
  IoxEnds(const std::string& instance, const std::string& out, const std::string& in, std::uint64_t depth)
      : pub({id("shmqpp"), id(instance), id(out.empty() ? "unused-out" : out)}, pub_options()),
        sub({id("shmqpp"), id(instance), id(in.empty() ? "unused-in" : in)}, sub_options(depth)) {}

  // Waits until our subscriber is subscribed and our publisher has its subscriber.
  void connect(bool need_pub, bool need_sub, double stall_s) {
    Waiter w(stall_s, "waiting for iceoryx to connect publisher and subscriber");
    while ((need_sub && sub.getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) ||
           (need_pub && !pub.hasSubscribers())) {
      ::usleep(1000);
      w.check(0);
    }
  }
  void send(const Msg& m) {
    auto loaned = pub.loan(sizeof(Msg), alignof(Msg));
    if (loaned.has_error()) die("iceoryx loan of sequence %" PRIu64 " failed (AllocationError %d)", m.seq, static_cast<int>(loaned.get_error()));
    void* chunk = loaned.value();
    std::memcpy(chunk, &m, sizeof m);
    pub.publish(chunk);
  }
  void recv(Msg& out, std::uint64_t seq, Waiter& w) {
    w.reset();
    for (;;) {
      auto taken = sub.take();
      if (!taken.has_error()) {
        const void* chunk = taken.value();
        std::memcpy(&out, chunk, sizeof out);
        sub.release(chunk);
        return;
      }
      if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE)
        die("iceoryx take at sequence %" PRIu64 " failed (ChunkReceiveResult %d)", seq, static_cast<int>(taken.get_error()));
      w.spin(seq);
    }
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

// iox-roudi, started for the run (pid > 0) or found running (pid 0, started false).
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

Transport run_iceoryx(const Config& cfg, const std::string& roudi_log, std::string& note) {
  Transport r{"iceoryx", "iceoryx 2 (untyped pub/sub)", "spin (take)", "", {}, {}};
  Roudi roudi = start_roudi(roudi_log);
  if (roudi.pid < 0) {
    r.skipped = roudi.why;
    return r;
  }
  const std::uint64_t depth = iox::MAX_SUBSCRIBER_QUEUE_CAPACITY;
  note = std::string("iceoryx ") + "2.0: RouDi " + (roudi.pid > 0 ? "started for this run" : "already running") +
         " with its default memory pools; subscriber queueCapacity 1 (latency) and " + std::to_string(depth) +
         " (throughput, the maximum), BLOCK_PRODUCER / WAIT_FOR_CONSUMER";
  const std::string inst = std::to_string(::getpid());
  r.latency = latency_case(
      cfg, "iceoryx latency",
      [&](PairControl& c, std::uint64_t* s) {
        iox_init("pinger");
        {
          IoxEnds e(inst, "ping", "pong", 1);
          e.connect(true, true, cfg.stall_s);
          run_pinger(cfg, c, s, e, e);
        }
        iox_exit();
      },
      [&](PairControl& c) {
        iox_init("ponger");
        {
          IoxEnds e(inst, "pong", "ping", 1);
          e.connect(true, true, cfg.stall_s);
          run_ponger(cfg, c, e, e);
        }
        iox_exit();
      });
  r.throughput = throughput_case(
      cfg, peer_warmup(cfg), "iceoryx throughput",
      [&](PairControl& c) {
        iox_init("producer");
        {
          IoxEnds e(inst, "stream", "", depth);
          e.connect(true, false, cfg.stall_s);
          run_producer(cfg, peer_warmup(cfg), c, e);
        }
        iox_exit();
      },
      [&](PairControl& c) {
        iox_init("consumer");
        {
          IoxEnds e(inst, "", "stream", depth);
          e.connect(false, true, cfg.stall_s);
          run_consumer(cfg, peer_warmup(cfg), c, e);
        }
        iox_exit();
      });
  stop_roudi(roudi);
  return r;
}
#else
constexpr bool kHaveIceoryx = false;
#endif

// ---------------------------------------------------------------------------------------------
// Report

const Transport* find(const std::vector<Transport>& all, const char* key) {
  for (const auto& t : all)
    if (t.key == key && t.ran()) return &t;
  return nullptr;
}

Table make_table(const std::vector<Transport>& all) {
  Table t({"transport", "receiver waits by", "p50 (ns)", "p99 (ns)", "p99.9 (ns)", "max (ns)", "M msgs/s", "MB/s",
           "ratio Spin: p50", "ratio Spin: p99", "ratio Spin: msgs/s", "ratio Block: p50", "ratio Block: msgs/s"},
          {false, false});
  const Transport* spin = find(all, "shmq");
  const Transport* block = find(all, "shmq-block");
  for (const auto& x : all) {
    if (!x.ran()) {
      t.add({txt(x.name), txt(x.wait), txt("SKIPPED: " + x.skipped)});
      continue;
    }
    const Latency& l = x.latency;
    const Throughput& p = x.throughput;
    auto lat = [&](double v) { return l.ok ? num(v, 0) : txt("FAILED"); };
    auto ratio = [](bool ok, double a, double b) { return ok && b > 0 ? num(a / b, 2) : txt("-"); };
    const bool sl = spin && spin->latency.ok && l.ok, st = spin && spin->throughput.ok && p.ok;
    const bool bl = block && block->latency.ok && l.ok, bt = block && block->throughput.ok && p.ok;
    t.add({txt(x.name), txt(x.wait), lat(l.p50), lat(l.p99), lat(l.p999), lat(l.max),
           p.ok ? num(p.msgs_per_s / 1e6, 2) : txt("FAILED"), p.ok ? num(p.mb_per_s, 0) : txt("FAILED"),
           ratio(sl, spin ? spin->latency.p50 : 0, l.p50), ratio(sl, spin ? spin->latency.p99 : 0, l.p99),
           ratio(st, spin ? spin->throughput.msgs_per_s : 0, p.msgs_per_s),
           ratio(bl, block ? block->latency.p50 : 0, l.p50),
           ratio(bt, block ? block->throughput.msgs_per_s : 0, p.msgs_per_s)});
  }
  return t;
}

// The same figures, one row per (transport, measurement), for CSV and JSON.
Table make_detail(const std::vector<Transport>& all) {
  Table t({"transport", "key", "kind", "ok", "stopped_early", "samples_or_messages", "p50_ns", "p99_ns", "p999_ns",
           "max_ns", "mean_ns", "seconds", "msgs_per_s", "mb_per_s", "others_cpu_pct", "steal_pct", "skipped"});
  for (const auto& x : all) {
    if (!x.ran()) {
      t.add({txt(x.name), txt(x.key), txt("-"), txt("false"), txt(""), txt(""), txt(""), txt(""), txt(""), txt(""),
             txt(""), txt(""), txt(""), txt(""), txt(""), txt(""), txt(x.skipped)});
      continue;
    }
    const Latency& l = x.latency;
    const Throughput& p = x.throughput;
    t.add({txt(x.name), txt(x.key), txt("latency"), txt(l.ok ? "true" : "false"), txt(l.stopped_early ? "true" : "false"),
           num(static_cast<double>(l.samples), 0), num(l.p50, 1), num(l.p99, 1), num(l.p999, 1), num(l.max, 1),
           num(l.mean, 1), txt(""), txt(""), txt(""), num(l.disturbance.others_cpu_pct, 1),
           num(l.disturbance.steal_pct, 1), txt("")});
    t.add({txt(x.name), txt(x.key), txt("throughput"), txt(p.ok ? "true" : "false"),
           txt(p.stopped_early ? "true" : "false"), num(static_cast<double>(p.messages), 0), txt(""), txt(""), txt(""),
           txt(""), txt(""), num(p.seconds, 6), num(p.msgs_per_s, 1), num(p.mb_per_s, 1),
           num(p.disturbance.others_cpu_pct, 1), num(p.disturbance.steal_pct, 1), txt("")});
  }
  return t;
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

}  // namespace

int main(int argc, char** argv) {
  g_argv0 = argv[0];
  Config cfg = parse_args(argc, argv);
  choose_cpus(cfg);
  calibrate_ticks();
  install_signal_handlers();

  const std::string model = cpu_model();
  const double load = load1();
  std::printf("shmq_pingpong%s: %zu-byte messages; shmq Durability::Memory\n", cfg.quick ? " (--quick)" : "", sizeof(Msg));
  std::printf("host: %s, %ld CPUs online, load average %.2f at start\n", model.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN),
              load);
  if (cfg.cpu_a >= 0)
    std::printf("processes pinned to CPU %d and CPU %d\n", cfg.cpu_a, cfg.cpu_b);
  else
    std::printf("WARNING: fewer than 2 CPUs available: processes NOT pinned; spinning ping-pong on one CPU "
                "measures the scheduler, not the queue\n");
  std::printf("latency: %" PRIu64 " round trips after %" PRIu64 " warm-up, shmq and floor rings of %zu KiB, timer %s "
              "(%.4f ns/tick)\n",
              cfg.rtt, cfg.warmup, cfg.lat_ring_bytes >> 10, g_ticks.name(), g_ticks.ns_per_tick);
  std::printf("throughput: %" PRIu64 " messages (the first %" PRIu64 " untimed), each checked for order and "
              "checksum, shmq and floor rings of %zu MiB\nbudget: %.0f s per case\n",
              cfg.messages, cfg.tp_warmup, cfg.ring_bytes >> 20, cfg.budget_s);

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
  std::vector<Transport> all;
  std::vector<std::string> notes;
  auto go = [&](const char* key) { return cfg.wants(key) && !g_interrupted; };
  if (go("shmq")) all.push_back(run_shmq(cfg, jdir, shmq::Wait::Spin, cleanup_ok));
  if (go("shmq-block")) all.push_back(run_shmq(cfg, jdir, shmq::Wait::Block, cleanup_ok));
  if (go("floor")) all.push_back(run_floor(cfg));
  std::string note;
  if (go("mq")) {
    all.push_back(run_posix_mq(cfg, note));
    notes.push_back(note);
  }
  if (go("uds")) {
    all.push_back(run_unix_socket(cfg, note));
    notes.push_back(note);
  }
  if (go("boost")) {
    all.push_back(run_boost_mq(cfg, note));
    notes.push_back(note);
  }
  if (go("iceoryx")) {
#if defined(SHMQ_BENCH_ICEORYX)
    all.push_back(run_iceoryx(cfg, roudi_log, note));
    notes.push_back(note);
#else
    all.push_back({"iceoryx", "iceoryx", "-",
                   "not built: libiceoryx-posh-dev was not found at configure time (Debian: apt-get install "
                   "libiceoryx-posh-dev iceoryx; then re-run cmake)",
                   {}, {}});
#endif
  }
  (void)kHaveIceoryx;
  std::error_code ec;
  std::filesystem::remove_all(jdir, ec);

  bool ok = cleanup_ok && !g_interrupted;
  for (const auto& t : all) ok = ok && t.ok();
  std::printf("\n");
  const Table table = make_table(all);
  table.print_markdown();
  for (const auto& t : all) {
    if (t.ran() && t.latency.ok && t.latency.stopped_early)
      std::printf("note: %s latency stopped early by the time budget: %" PRIu64 " samples\n", t.name.c_str(),
                  t.latency.samples);
    if (t.ran() && t.throughput.ok && t.throughput.stopped_early)
      std::printf("note: %s throughput stopped early by the time budget: %" PRIu64 " messages\n", t.name.c_str(),
                  t.throughput.messages);
  }
  std::printf("latency: one-way = round trip / 2. ratio Spin = shmq (Wait::Spin) / this, ratio Block = shmq "
              "(Wait::Block) / this:\nabove 1 shmq is slower for latency, below 1 shmq is slower for throughput. "
              "Ratio Block is the like-for-like one for a peer whose receiver blocks in the kernel.\n");
  for (const auto& n : notes)
    if (!n.empty()) std::printf("%s\n", n.c_str());
  std::vector<std::pair<std::string, Disturbance>> dist;
  for (const auto& t : all) {
    if (!t.ran()) continue;
    if (t.latency.ok) dist.push_back({t.key + " latency", t.latency.disturbance});
    if (t.throughput.ok) dist.push_back({t.key + " throughput", t.throughput.disturbance});
  }
  print_disturbance(dist);

  bool files_ok = true;
  if (!cfg.json_path.empty() || !cfg.csv_path.empty()) {
    const Table detail = make_detail(all);
    Report rep;
    char b[64];
    std::snprintf(b, sizeof b, "%.2f", load);
    rep.context = {{"cpu", model},
                   {"load1_at_start", b},
                   {"timer", g_ticks.name()},
                   {"cpus", std::to_string(cfg.cpu_a) + "," + std::to_string(cfg.cpu_b)},
                   {"quick", cfg.quick ? "true" : "false"},
                   {"rtt", std::to_string(cfg.rtt)},
                   {"warmup", std::to_string(cfg.warmup)},
                   {"messages", std::to_string(cfg.messages)},
                   {"tp_warmup", std::to_string(cfg.tp_warmup)},
                   {"message_bytes", std::to_string(sizeof(Msg))},
                   {"budget_s", fmt(cfg.budget_s, 1)}};
    for (std::size_t i = 0; i < notes.size(); ++i) rep.context.push_back({"note" + std::to_string(i), notes[i]});
    rep.tables = {{"pingpong", &table}, {"pingpong_detail", &detail}};
    files_ok = rep.write(cfg.csv_path, cfg.json_path, "shmq_pingpong", ok);
  }
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_pingpong FAILED: see the *** FAIL lines above; no figure is reported for a "
                         "failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}
