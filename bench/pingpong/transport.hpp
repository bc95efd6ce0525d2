// transport.hpp: what a transport of shmq_pingpong provides, and the roles, cases and results that
// every transport shares. The driver (main.cpp) runs every registered transport at every message
// size, in the registry's order, and reports them beside each other.
//
// Contract of a transport (one .cpp file in bench/pingpong/, listed in bench/CMakeLists.txt):
//   - it registers itself with a static `Register` (key for --only, order of its row, kind, and a
//     `run` function; optional `start` / `stop` called once per run around every size, for state a
//     run shares such as a broker or raised kernel limits);
//   - `run(session, plan)` returns one Row for that message size: SKIPPED with its reason when it
//     cannot be set up here, else the figures of latency_case() and throughput_case();
//   - it provides ends for the shared roles below. An end that sends has
//       void send(std::span<const std::byte> message, std::uint64_t seq)
//     and an end that receives has
//       std::span<const std::byte> recv(std::uint64_t seq, Waiter&)   a view, valid until
//       void release()                                                 is called
//     The ends are made in the child process that uses them (attach there; create in the parent,
//     before the fork, when the transport needs one creator).
//   - The receiver-side checks are the roles', the same for every transport: the frame's sequence
//     (nothing lost, duplicated or reordered), its head, its tail word and the sum of every body
//     word (Frames in harness.hpp). A transport may check more (shmq: inner ids and deliveries in
//     its recv) but never less.
// Failures are loud (die() in a child, "*** FAIL" and no figure); a case that reaches its time
// budget stops early and says so; nothing asserts a wall-clock limit.
#pragma once

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "../harness.hpp"

namespace pingpong {

using namespace bench;

// ---------------------------------------------------------------------------------------------
// Configuration (main.cpp parses it).

struct Config {
  bool quick = false;
  std::string json_path, csv_path, summary_path;
  std::vector<std::uint64_t> sizes{64, 1024, 64 << 10};
  std::uint64_t warmup = 20'000;        // round trips before the measured ones (64 B; a quarter above)
  std::uint64_t rtt = 200'000;          // measured round trips (64 B; a quarter above)
  std::uint64_t messages = 10'000'000;  // throughput case, at most
  std::uint64_t tp_bytes = 8ull << 30;  // throughput case, at most this many payload bytes
  std::uint64_t tp_warmup = 0;  // throughput: messages before the timed window; 0: one lap of the ring
  std::size_t ring_bytes = std::size_t{64} << 20;     // throughput channel / floor rings
  std::size_t lat_ring_bytes = std::size_t{1} << 20;  // ping and pong channels / floor rings
  std::uint64_t mq_depth = 1024;     // POSIX mq_maxmsg for throughput, at most (raised in /proc if root)
  std::uint64_t queue_depth = 1024;  // Boost.Interprocess message_queue max_num_msg for throughput, at most
  double budget_s = 10;        // a 64 B case stops early past this (and says so)
  double large_budget_s = 4;   // a case of larger messages, the same
  double memcpy_s = 0.5;       // how long the memcpy reference copies, per size
  double stall_s = 10;   // no progress this long: a hang, reported as a failure
  int cpu_a = -1;
  int cpu_b = -1;
  std::vector<std::string> only;  // transport keys to run (empty: all)
};

// What one message size gets: counts scaled so that the whole run stays within minutes.
struct Plan {
  std::size_t size = 64;
  std::uint64_t warmup = 0, rtt = 0;    // latency: round trips
  std::uint64_t messages = 0;           // throughput
  std::uint64_t ring_warmup = 0;        // throughput, shmq and the floors: one lap of the ring
  std::uint64_t peer_warmup = 0;        // throughput, peers (no ring pages to touch)
  double budget_s = 10;
};

inline Limits limits(const Config& cfg, const Plan& p) { return {p.budget_s, cfg.stall_s}; }

inline std::string size_name(std::size_t s) {
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

// What a transport is, for the report: shmq itself, a floor (what the hardware gives: shmq's
// ratios and goals are taken against the strongest floor of the run, per metric), a reference
// that is not a transport (memcpy), or a peer (another queue users could pick).
enum class Kind { Shmq, Floor, Reference, Peer };

struct Row {
  std::string key;      // --only name
  std::string name;     // for the table
  std::string wait;     // how its receiver waits
  Kind kind = Kind::Peer;
  std::size_t size = 0;
  std::string skipped;  // not run here, and why (empty: it ran)
  bool has_latency = true;     // memcpy has none
  bool has_throughput = true;  // the mailbox floor has none (a depth-1 queue is a latency floor only)
  Latency latency;
  Throughput throughput;
  bool ran() const { return skipped.empty(); }
  bool ok() const { return !ran() || ((!has_latency || latency.ok) && (!has_throughput || throughput.ok)); }
  bool lat_ok() const { return ran() && has_latency && latency.ok; }
  bool tp_ok() const { return ran() && has_throughput && throughput.ok; }
};

// ---------------------------------------------------------------------------------------------
// The registry.

// Run-wide state a transport may use: the configuration, a directory for files of the run (shmq's
// journal directory; removed at the end), notes printed under the table, and whether every
// clean-up worked (a failed clean-up fails the run).
struct Session {
  const Config& cfg;
  std::filesystem::path dir;
  std::string roudi_log;  // where a broker started for the run logs (iceoryx)
  std::vector<std::string> notes;
  bool cleanup_ok = true;
};

struct Transport {
  const char* key;   // --only name, unique
  int order;         // rows of one size are in this order
  Kind kind;
  std::function<Row(Session&, const Plan&)> run;
  std::function<void(Session&)> start = nullptr;  // once, before the first size (if selected)
  std::function<void(Session&)> stop = nullptr;   // once, after the last size (if selected)
};

inline std::vector<const Transport*>& registry() {
  static std::vector<const Transport*> all;
  return all;
}

// `static const Register r{{...}};` at namespace scope in a transport's file registers it.
struct Register {
  explicit Register(Transport t) : transport(std::move(t)) { registry().push_back(&transport); }
  Register(const Register&) = delete;
  Register& operator=(const Register&) = delete;
  Transport transport;
};

inline Row make_row(const char* key, const char* name, const char* wait, Kind kind, const Plan& p) {
  Row r;
  r.key = key;
  r.name = name;
  r.wait = wait;
  r.kind = kind;
  r.size = p.size;
  return r;
}

// The label of a case in failure messages.
inline std::string label(const Row& r, const char* what) { return r.name + " " + size_name(r.size) + " " + what; }

// A peer's throughput queue: as many messages as fit in 4 MiB, between 16 and CAP.
inline std::uint64_t peer_depth(std::size_t size, std::uint64_t cap) {
  return std::clamp<std::uint64_t>((std::uint64_t{4} << 20) / size, 16, std::max<std::uint64_t>(16, cap));
}

inline Latency summarize(std::vector<std::uint64_t> rtt_ticks, bool stopped_early) {
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
// The four roles, the same for every transport (see the contract above).

inline bool past_budget(std::uint64_t t_start, const Plan& p) {
  return mono_ns() - t_start > static_cast<std::uint64_t>(p.budget_s * 1e9);
}

// A: stamps the time, sends ping SEQ, receives pong SEQ, stamps, then checks it.
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

// B: receives ping SEQ, echoes the same bytes, then checks them (checking 64 KiB is not the
// transport's latency) and releases them.
template <class Tx, class Rx>
void run_ponger(const Config& cfg, const Plan& p, PairControl& c, Tx& out, Rx& in) {
  const Frames frames(p.size);
  wait_all_ready(c, 2, cfg.stall_s);
  Waiter w(cfg.stall_s, "waiting for a ping");
  for (std::uint64_t seq = 0;; ++seq) {
    const std::span<const std::byte> ping = in.recv(seq, w);
    const bool end = Frames::peek(ping).flags == kEnd;
    if (!end) out.send(ping, seq);  // echo first
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

inline Latency latency_case(const Config& cfg, const Plan& p, const std::string& name, const Pinger& pinger,
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

// WARMUP: messages before the timed window (shmq and the floors: a lap of the ring, so that its
// pages are touched; the peers: fewer).
inline Throughput throughput_case(const Config& cfg, const Plan& p, std::uint64_t warmup, const std::string& name,
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

// The common case of a transport whose ends are made from two factories: MAKE_TX(channel) and
// MAKE_RX(channel) build an end in the child on the shared object of that channel (PING, PONG for
// the latency; STREAM for the throughput). Used by transports whose ends are cheap to build.
template <class MakeTx, class MakeRx, class Chan>
void run_both(Row& r, const Config& cfg, const Plan& p, std::uint64_t warmup, Chan& ping, Chan& pong, Chan& stream,
              MakeTx make_tx, MakeRx make_rx) {
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* s) {
        auto out = make_tx(ping);
        auto in = make_rx(pong);
        run_pinger(cfg, p, c, s, out, in);
      },
      [&](PairControl& c) {
        auto out = make_tx(pong);
        auto in = make_rx(ping);
        run_ponger(cfg, p, c, out, in);
      });
  r.throughput = throughput_case(
      cfg, p, warmup, label(r, "throughput"),
      [&](PairControl& c) {
        auto out = make_tx(stream);
        run_producer(cfg, p, warmup, c, out);
      },
      [&](PairControl& c) {
        auto in = make_rx(stream);
        run_consumer(cfg, p, warmup, c, in);
      });
}

}  // namespace pingpong
