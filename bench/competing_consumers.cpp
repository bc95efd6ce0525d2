// shmq_competing_consumers: one channel's throughput with P producer processes, G groups (fan-out:
// every group receives every message) and C competing consumer processes in each group.
//
// What it measures (64-byte messages, Durability::Memory, one channel). Cases are P x G x C
// (--topologies; default 1x1x1, 1x1x2, 1x1x4: competing consumers; 4x1x1: four producers;
// 1x2x1, 1x4x1: fan-out to 2 and 4 groups):
//   Each producer process publishes its share of --messages (its own sequence numbers, five
//   derived words, a checksum); when the last producer is done it publishes C END messages, which
//   every group receives, one for each of its consumers. Each consumer joins its group and
//   shares its messages with the group's other consumers: it polls, checks the message (checksum,
//   each producer's sequences rising, inner id = that producer's id and (seq + a fixed base),
//   delivered once), acks it, and marks it in its own bitmap; it stops at its END.
//   msgs/s = messages published from each producer's share of --tp-warmup on (one lap of the
//   ring, so that its pages are touched) to the last, over the time from the first consumer's
//   receipt of such a message to the last consumer's END; deliveries/s = msgs/s x G.
//   The parent then checks the bitmaps, group by group: every message a producer sent was acked
//   by exactly one consumer of the group (none lost, none twice), the consumers' counts add up.
//   Any failure is printed with "*** FAIL", that case's figure is not reported, and the exit
//   status is 1.
//   ack ns: the median time of Consumer::ack, sampled on every 64th message (fenced TSC stamps).
//
// Waiting. With more processes than CPUs (2 CPUs here: 1 producer + 2 consumers already make 3),
// a spinning process takes a CPU from the process it waits for, and the figure measures the
// scheduler. So Wait::Spin runs only where every process has its own CPU (and then each is
// pinned); otherwise consumers and producers wait by Wait::Block (or Yield, with --waits),
// unpinned, and the output says so. "vs 1x1x1" compares with one producer, one group, one
// consumer waiting the same way.
//
// Usage: shmq_competing_consumers [--quick] [--topologies PxGxC,...] [--consumers 1,2,4]
//          [--waits spin,yield,block] [--messages N] [--tp-warmup N] [--ring-mib N] [--repeat N]
//          [--budget S] [--stall S] [--json FILE] [--csv FILE] [--summary FILE]

#include <shmq/shmq.hpp>

#include <chrono>
#include <filesystem>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
using namespace bench;

constexpr std::uint32_t kMaxConsumers = 16;  // over all groups
constexpr std::uint32_t kMaxProducers = 8;
constexpr unsigned kProducerShift = 40;      // Msg::seq = producer << 40 | the producer's own sequence

// One case's shape: P producers, G groups, C consumers in each group.
struct Topology {
  std::uint32_t producers = 1, groups = 1, consumers = 1;
  std::uint32_t processes() const { return producers + groups * consumers; }
  std::string name() const {
    return std::to_string(producers) + "x" + std::to_string(groups) + "x" + std::to_string(consumers);
  }
  bool operator==(const Topology&) const = default;
};

struct Config {
  bool quick = false;
  std::string json_path, csv_path, summary_path;
  std::vector<Topology> topologies{{1, 1, 1}, {1, 1, 2}, {1, 1, 4}, {4, 1, 1}, {1, 2, 1}, {1, 4, 1}};
  std::vector<shmq::Wait> waits{shmq::Wait::Spin, shmq::Wait::Block};
  std::uint64_t messages = 4'000'000;  // over all producers
  std::uint64_t tp_warmup = 0;  // 0: one lap of the ring
  std::size_t ring_bytes = std::size_t{64} << 20;
  std::uint64_t repeat = 3;
  double budget_s = 10;
  double stall_s = 10;
};

const char* g_argv0 = "shmq_competing_consumers";

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", g_argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--topologies PxGxC,...] [--consumers 1,2,4] [--waits spin,yield,block]\n"
               "       [--messages N] [--tp-warmup N] [--ring-mib N] [--repeat N] [--budget SECONDS]\n"
               "       [--stall SECONDS] [--json FILE] [--csv FILE] [--summary FILE]\n"
               "  PxGxC: P producers (at most 8), G groups of C consumers (G x C at most 16)\n",
               g_argv0);
  std::exit(why != nullptr ? 2 : 0);
}
void usage(const char* why) { usage_exit(why); }

const char* wait_name(shmq::Wait w) {
  switch (w) {
    case shmq::Wait::Spin: return "Spin";
    case shmq::Wait::Yield: return "Yield";
    case shmq::Wait::Block: return "Block";
  }
  return "?";
}

Topology parse_topology(const std::string& text) {
  Topology t;
  char tail = 0;
  if (std::sscanf(text.c_str(), "%ux%ux%u%c", &t.producers, &t.groups, &t.consumers, &tail) != 3)
    usage("a topology is PxGxC, e.g. 1x2x1");
  if (t.producers < 1 || t.producers > kMaxProducers || t.groups < 1 || t.consumers < 1 ||
      t.groups * t.consumers > kMaxConsumers)
    usage("topology out of range: 1-8 producers, groups x consumers at most 16");
  return t;
}

Config parse_args(int argc, char** argv) {
  Config c;
  bool messages_set = false, repeat_set = false, budget_set = false;
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
    } else if (a == "--topologies") {
      c.topologies.clear();
      for (const auto& t : split_list(value())) c.topologies.push_back(parse_topology(t));
    } else if (a == "--consumers") {  // one producer, one group of N consumers
      c.topologies.clear();
      for (auto n : parse_list(value(), usage)) {
        if (n > kMaxConsumers) usage("at most 16 consumers");
        c.topologies.push_back({1, 1, static_cast<std::uint32_t>(n)});
      }
    } else if (a == "--waits") {
      c.waits.clear();
      for (const auto& w : split_list(value())) {
        if (w == "spin") c.waits.push_back(shmq::Wait::Spin);
        else if (w == "yield") c.waits.push_back(shmq::Wait::Yield);
        else if (w == "block") c.waits.push_back(shmq::Wait::Block);
        else usage("--waits takes spin, yield, block");
      }
    } else if (a == "--messages") {
      c.messages = parse_count(value(), usage);
      messages_set = true;
    } else if (a == "--tp-warmup") {
      c.tp_warmup = parse_count(value(), usage);
    } else if (a == "--ring-mib") {
      c.ring_bytes = static_cast<std::size_t>(parse_count(value(), usage)) << 20;
      if ((c.ring_bytes & (c.ring_bytes - 1)) != 0) usage("--ring-mib must be a power of two");
    } else if (a == "--repeat") {
      c.repeat = parse_count(value(), usage);
      repeat_set = true;
    } else if (a == "--budget") {
      c.budget_s = parse_seconds(value(), usage);
      budget_set = true;
    } else if (a == "--stall") {
      c.stall_s = parse_seconds(value(), usage);
    } else if (a == "--help" || a == "-h") {
      usage_exit(nullptr);
    } else {
      usage("unknown argument");
    }
  }
  if (c.quick) {
    if (!messages_set) c.messages = 1'000'000;
    if (!repeat_set) c.repeat = 1;
    if (!budget_set) c.budget_s = 3;
  }
  // A 64-byte payload takes a 40-byte record header: 104 bytes of ring a message.
  if (c.tp_warmup == 0) c.tp_warmup = c.ring_bytes / 104;
  c.tp_warmup = std::min(c.tp_warmup, c.messages / 2);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Shared state of one case.

struct alignas(64) ConsumerReport {
  std::uint64_t received = 0;      // data messages acked (END excluded)
  std::uint64_t start_ns = 0;      // first receipt of a message past its producer's warm-up (0: none)
  std::uint64_t end_ns = 0;        // receipt of its END
  std::uint32_t got_end = 0;
  Histogram ack;                   // sampled Consumer::ack times, ns
};

struct CaseControl : Control {
  alignas(64) std::atomic<std::uint32_t> producers_done{0};  // the last one publishes the ENDs
  std::uint64_t sent[kMaxProducers] = {};  // data messages published with Ok, per producer (END excluded)
  std::uint32_t stopped_early = 0;
  ConsumerReport consumers[kMaxConsumers];  // group g's consumer i at g * C + i
};

// What one case is: its shape, its wait, and each producer's share of the messages.
struct Case {
  Topology t;
  shmq::Wait wait;
  std::string channel;
  std::uint64_t per_producer = 0;  // messages each producer publishes, at most
  std::uint64_t warmup = 0;        // of them, untimed
  std::string group(std::uint32_t g) const { return "workers-" + std::to_string(g); }
};

shmq::ChannelOptions channel_options(const Config& cfg, const std::filesystem::path& jdir) {
  shmq::ChannelOptions o;
  o.ring_bytes = cfg.ring_bytes;
  o.max_message_bytes = std::min(o.max_message_bytes, cfg.ring_bytes / 4);
  o.durability = shmq::Durability::Memory;
  o.journal_dir = jdir;
  return o;
}

std::span<const std::byte> bytes_of(const Msg& m) { return std::as_bytes(std::span<const Msg, 1>(&m, 1)); }

std::uint64_t tagged(std::uint32_t producer, std::uint64_t seq) {
  return static_cast<std::uint64_t>(producer) << kProducerShift | seq;
}

void producer(const Config& cfg, const Case& k, const std::filesystem::path& jdir, std::uint32_t me, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(k.channel, channel_options(cfg, jdir));
  shmq::Producer out(ch, "producer-" + std::to_string(me));
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = k.wait;
  wait_all_ready(c, k.t.processes(), cfg.stall_s);

  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  const std::uint64_t t_start = mono_ns();
  Msg m{};
  std::uint64_t seq = 0;
  auto publish = [&] {
    const shmq::Published r = out.publish(bytes_of(m), popts);
    if (r.status != shmq::Status::Ok)
      die("publish of sequence %" PRIu64 " returned %s", m.seq, shmq::to_string(r.status));
  };
  for (; seq < k.per_producer; ++seq) {
    if ((seq & 4095u) == 0 && seq > k.warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, tagged(me, seq));
    publish();
  }
  c.sent[me] = seq;
  // acq_rel: the last producer's ENDs follow every producer's data; pairs with the other producers' increments.
  if (c.producers_done.fetch_add(1, std::memory_order_acq_rel) + 1 != k.t.producers) return;
  for (std::uint32_t i = 0; i < k.t.consumers; ++i) {  // each group gets them all; a consumer stops at its first
    fill(m, tagged(me, seq + i), kEnd);
    publish();
  }
}

// What a consumer expects of one producer's messages: rising sequences, a fixed inner-id base.
struct ProducerTrack {
  bool seen = false;
  std::uint64_t last = 0;  // the producer's own sequence
  std::uint64_t id = 0, base = 0;
};

void consumer(const Config& cfg, const Case& k, const std::filesystem::path& jdir, std::uint32_t g, std::uint32_t me,
              std::uint8_t* bitmap, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(k.channel, channel_options(cfg, jdir));
  shmq::Consumer in(ch, k.group(g), {.start = shmq::Start::Earliest, .wait = k.wait, .max_in_flight = 64});
  ConsumerReport& rep = c.consumers[g * k.t.consumers + me];
  wait_all_ready(c, k.t.processes(), cfg.stall_s);

  Waiter w(cfg.stall_s, "waiting for the next message");
  ProducerTrack track[kMaxProducers];
  std::uint64_t received = 0;
  for (;;) {
    std::optional<shmq::Message> got = in.poll(10ms);
    if (!got) {
      const shmq::Status s = in.status();
      if (s != shmq::Status::Timeout && s != shmq::Status::WouldBlock)
        die("poll returned nothing with status %s after %" PRIu64 " messages", shmq::to_string(s), received);
      w.check(received);
      continue;
    }
    w.reset();
    const shmq::Message& msg = *got;
    if (msg.payload().size() != sizeof(Msg)) die("a message of %zu bytes, expected %zu", msg.payload().size(), sizeof(Msg));
    Msg m;
    std::memcpy(&m, msg.payload().data(), sizeof m);
    if (auto why = check_intact(m); !why.empty()) die("%s", why.c_str());
    const auto p = static_cast<std::uint32_t>(m.seq >> kProducerShift);
    const std::uint64_t seq = m.seq & ((std::uint64_t{1} << kProducerShift) - 1);
    if (p >= k.t.producers) die("a message from producer %u; there are %u", p, k.t.producers);
    ProducerTrack& tr = track[p];
    if (tr.seen && seq <= tr.last)
      die("producer %u's sequence %" PRIu64 " after %" PRIu64 ": a group hands out its messages in order", p, seq, tr.last);
    if (msg.deliveries() != 1) die("producer %u's sequence %" PRIu64 " delivered %u times", p, seq, msg.deliveries());
    const shmq::InnerId id = msg.id();
    if (!tr.seen) {
      tr.id = id.producer;
      tr.base = id.seq - seq;
    } else if (id.producer != tr.id || id.seq - seq != tr.base) {
      die("inner id (%" PRIu64 ", %" PRIu64 ") on producer %u's sequence %" PRIu64 ": expected (%" PRIu64 ", %" PRIu64 ")",
          id.producer, id.seq, p, seq, tr.id, seq + tr.base);
    }
    tr.seen = true;
    tr.last = seq;
    const bool end = m.flags == kEnd;
    const bool sample = (received & 63u) == 0;
    const std::uint64_t t0 = sample ? ticks() : 0;
    const shmq::Status s = in.ack(msg);
    if (sample) rep.ack.add(static_cast<std::uint64_t>(ticks_to_ns(ticks() - t0)));
    if (s != shmq::Status::Ok) die("ack of producer %u's sequence %" PRIu64 " returned %s", p, seq, shmq::to_string(s));
    if (end) {
      rep.end_ns = mono_ns();
      rep.received = received;
      rep.got_end = 1;
      return;
    }
    if (seq >= k.per_producer) die("producer %u's sequence %" PRIu64 " is beyond its share of the run", p, seq);
    const std::uint64_t bit = p * k.per_producer + seq;
    bitmap[bit >> 3] = static_cast<std::uint8_t>(bitmap[bit >> 3] | (1u << (bit & 7)));  // our own bitmap
    if (rep.start_ns == 0 && seq >= k.warmup) rep.start_ns = mono_ns();
    ++received;
  }
}

// ---------------------------------------------------------------------------------------------

struct Run {
  bool ok = false;
  double msgs_per_s = 0;
  std::uint64_t messages = 0;  // timed, over all producers
  bool stopped_early = false;
  double share_min = 0, share_max = 0;  // % of its group's messages, over the consumers
  double ack_ns = 0;
  Disturbance disturbance;
};

// "" when, in group G, every message each producer sent was acked by exactly one consumer.
std::string verify_group(const Case& k, const CaseControl& c, std::uint32_t g, const std::uint8_t* bitmaps,
                         std::size_t stride) {
  char why[300];
  const std::uint32_t n = k.t.consumers;
  std::uint64_t total = 0, sent = 0;
  for (std::uint32_t p = 0; p < k.t.producers; ++p) sent += c.sent[p];
  for (std::uint32_t i = 0; i < n; ++i) {
    const ConsumerReport& r = c.consumers[g * n + i];
    if (r.got_end != 1) {
      std::snprintf(why, sizeof why, "group %u's consumer %u ended without its END message", g, i);
      return why;
    }
    total += r.received;
  }
  if (total != sent) {
    std::snprintf(why, sizeof why, "the producers published %" PRIu64 " messages with Ok; group %u acked %" PRIu64 " (%s)",
                  sent, g, total, total < sent ? "LOST" : "DUPLICATED");
    return why;
  }
  const std::uint8_t* mine = bitmaps + static_cast<std::size_t>(g) * n * stride;
  auto bit = [&](std::uint32_t i, std::uint64_t b) { return (mine[i * stride + (b >> 3)] >> (b & 7)) & 1u; };
  for (std::uint32_t p = 0; p < k.t.producers; ++p) {
    for (std::uint64_t seq = 0; seq < k.per_producer; ++seq) {
      const std::uint64_t b = p * k.per_producer + seq;
      unsigned count = 0;
      for (std::uint32_t i = 0; i < n; ++i) count += bit(i, b);
      const unsigned want = seq < c.sent[p] ? 1 : 0;
      if (count != want) {
        std::snprintf(why, sizeof why, "group %u: producer %u's sequence %" PRIu64 " was %s", g, p, seq,
                      count > 1 ? "acked by two consumers" : want == 0 ? "acked but never sent" : "never acked (LOST)");
        return why;
      }
    }
  }
  return {};
}

Run run_case(const Config& cfg, const std::filesystem::path& jdir, Case& k, bool pin, const std::vector<int>& cpus,
             const std::string& label) {
  Run run;
  k.channel = "shmqcc_" + std::to_string(::getpid()) + "_" + k.t.name() + wait_name(k.wait);
  k.per_producer = cfg.messages / k.t.producers;
  k.warmup = cfg.tp_warmup / k.t.producers;
  try {
    if (shmq::Channel::exists(k.channel)) shmq::Channel::remove(k.channel, jdir);
    shmq::Channel ch = shmq::Channel::open(k.channel, channel_options(cfg, jdir));
    for (std::uint32_t g = 0; g < k.t.groups; ++g)
      ch.ensure_group(k.group(g), shmq::Start::Earliest);  // from the first message, whoever joins first
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: creating channel %s: %s\n", label.c_str(), k.channel.c_str(), e.what());
    return run;
  }
  Shared<CaseControl> control;
  CaseControl& c = *control;
  const std::size_t stride = (k.per_producer * k.t.producers + 7) / 8 + 1;
  const std::uint32_t n_consumers = k.t.groups * k.t.consumers;
  SharedMap bitmaps(stride * n_consumers);
  auto* bits = static_cast<std::uint8_t*>(bitmaps.data());
  std::vector<Child> children;
  std::size_t next_cpu = 0;
  auto cpu = [&] { return pin ? cpus[next_cpu++ % cpus.size()] : -1; };
  for (std::uint32_t p = 0; p < k.t.producers; ++p)
    children.push_back({"producer " + std::to_string(p), cpu(), [&, p] { producer(cfg, k, jdir, p, c); }});
  for (std::uint32_t g = 0; g < k.t.groups; ++g)
    for (std::uint32_t i = 0; i < k.t.consumers; ++i) {
      std::uint8_t* mine = bits + (g * k.t.consumers + i) * stride;
      children.push_back({"group " + std::to_string(g) + " consumer " + std::to_string(i), cpu(),
                          [&, g, i, mine] { consumer(cfg, k, jdir, g, i, mine, c); }});
    }
  const bool ok = run_children({cfg.budget_s, cfg.stall_s}, label.c_str(), c, children);
  try {
    shmq::Channel::remove(k.channel, jdir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: removing channel %s: %s\n", label.c_str(), k.channel.c_str(), e.what());
    return run;
  }
  if (!ok) return run;
  for (std::uint32_t g = 0; g < k.t.groups; ++g) {
    if (auto why = verify_group(k, c, g, bits, stride); !why.empty()) {
      std::fprintf(stderr, "\n*** FAIL [%s]: %s\n", label.c_str(), why.c_str());
      return run;
    }
  }
  std::uint64_t start = ~0ull, end = 0, sent = 0, warm = 0;
  Histogram ack;
  double lo = 100, hi = 0;
  for (std::uint32_t p = 0; p < k.t.producers; ++p) {
    sent += c.sent[p];
    warm += std::min(c.sent[p], k.warmup);
  }
  for (std::uint32_t i = 0; i < n_consumers; ++i) {
    const ConsumerReport& r = c.consumers[i];
    if (r.start_ns != 0) start = std::min(start, r.start_ns);
    end = std::max(end, r.end_ns);
    ack.merge(r.ack);
    const double share = sent ? 100.0 * static_cast<double>(r.received) / static_cast<double>(sent) : 0;
    lo = std::min(lo, share);
    hi = std::max(hi, share);
  }
  if (start == ~0ull || end <= start || sent <= warm) {
    std::fprintf(stderr, "*** FAIL [%s]: no measurable interval\n", label.c_str());
    return run;
  }
  run.ok = true;
  run.messages = sent - warm;
  run.msgs_per_s = static_cast<double>(run.messages) / (static_cast<double>(end - start) / 1e9);
  run.stopped_early = c.stopped_early != 0;
  run.share_min = lo;
  run.share_max = hi;
  run.ack_ns = ack.percentile(0.5);
  run.disturbance = {c.others_cpu_pct, c.steal_pct};
  return run;
}

// One line of the table: a topology waiting one way, its runs and their median.
struct Row {
  Topology t;
  shmq::Wait wait;
  bool pinned;
  std::vector<Run> runs;
  bool ok = true;
  double median = 0;
};

const Row* baseline(const std::vector<Row>& rows, shmq::Wait wait) {
  for (const Row& o : rows)
    if (o.t == Topology{1, 1, 1} && o.wait == wait && o.ok && o.median > 0) return &o;
  return nullptr;
}

std::string procs_text(const Row& r, std::size_t cpus) {
  return std::to_string(r.t.processes()) + " / " + std::to_string(cpus) + (r.pinned ? " (pinned)" : " (not pinned)");
}

Table make_table(std::vector<Row>& rows, std::size_t cpus, std::vector<SummaryRow>& summary,
                 std::vector<std::pair<std::string, Disturbance>>& dist) {
  Table table({"producers", "groups", "consumers / group", "processes / CPUs", "wait", "M msgs/s (median)",
               "M deliveries/s", "min - max", "vs 1x1x1", "share per consumer %", "ack ns (p50)", "verified"},
              {true, true, true, true, false, true, true, true, true, true, true, false});
  for (Row& r : rows) {
    std::vector<double> v, acks;
    double lo = 1e300, hi = 0, share_lo = 100, share_hi = 0;
    bool early = false;
    for (const Run& run : r.runs) {
      if (!run.ok) continue;
      v.push_back(run.msgs_per_s);
      lo = std::min(lo, run.msgs_per_s);
      hi = std::max(hi, run.msgs_per_s);
      share_lo = std::min(share_lo, run.share_min);
      share_hi = std::max(share_hi, run.share_max);
      acks.push_back(run.ack_ns);
      early = early || run.stopped_early;
      dist.push_back({r.t.name() + wait_name(r.wait), run.disturbance});
    }
    const Cell p = num(r.t.producers, 0), g = num(r.t.groups, 0), n = num(r.t.consumers, 0);
    SummaryRow s{"topology (shmq, 64 B, Memory): producers x groups x consumers per group",
                 r.t.name() + ", Wait::" + wait_name(r.wait) + (r.pinned ? ", pinned" : ", not pinned"),
                 "shmq", {}, {}, {}, {}, {}, {}, "", ""};
    if (!r.ok || v.empty()) {
      table.add({p, g, n, txt(procs_text(r, cpus)), txt(wait_name(r.wait)), txt("FAILED"), txt("-"), txt("-"), txt("-"),
                 txt("-"), txt("-"), txt("FAILED")});
      s.vs = "FAILED: see the *** FAIL lines";
      summary.push_back(s);
      continue;
    }
    r.median = median(v);
    const Row* one = baseline(rows, r.wait);
    table.add({p, g, n, txt(procs_text(r, cpus)), txt(wait_name(r.wait)), num(r.median / 1e6, 2),
               num(r.median * r.t.groups / 1e6, 2),
               txt(fmt(lo / 1e6, 2) + " - " + fmt(hi / 1e6, 2) + (early ? " (budget cut)" : "")),
               one ? num(r.median / one->median, 2) : txt("-"),
               r.t.groups * r.t.consumers > 1 ? txt(fmt(share_lo, 0) + " - " + fmt(share_hi, 0)) : txt("100"),
               num(median(acks), 0), txt(std::to_string(r.runs.size()) + " run(s): every message acked once per group")});
    s.msgs_per_s = r.median;
    s.mb_per_s = r.median * static_cast<double>(sizeof(Msg)) / 1e6;
    s.vs = "deliveries/s " + fmt(r.median * r.t.groups / 1e6, 2) + " M";
    if (one && one != &r) s.vs += "; / 1x1x1 (same wait): " + times(r.median / one->median);
    summary.push_back(s);
  }
  return table;
}

Table make_detail(const std::vector<Row>& rows) {
  Table detail({"producers", "groups", "consumers_per_group", "wait", "run", "ok", "msgs_per_s", "messages",
                "stopped_early", "share_min_pct", "share_max_pct", "ack_ns", "others_cpu_pct", "steal_pct"});
  for (const Row& r : rows)
    for (std::size_t k = 0; k < r.runs.size(); ++k) {
      const Run& run = r.runs[k];
      detail.add({num(r.t.producers, 0), num(r.t.groups, 0), num(r.t.consumers, 0), txt(wait_name(r.wait)),
                  num(static_cast<double>(k + 1), 0), txt(run.ok ? "true" : "false"), num(run.msgs_per_s, 1),
                  num(static_cast<double>(run.messages), 0), txt(run.stopped_early ? "true" : "false"),
                  num(run.share_min, 2), num(run.share_max, 2), num(run.ack_ns, 1),
                  num(run.disturbance.others_cpu_pct, 1), num(run.disturbance.steal_pct, 1)});
    }
  return detail;
}

// The rows to run: Wait::Spin only where every process has its own CPU.
std::vector<Row> plan_rows(const Config& cfg, std::size_t cpus, std::vector<std::string>& skipped) {
  std::vector<Row> rows;
  for (shmq::Wait wait : cfg.waits) {
    for (const Topology& t : cfg.topologies) {
      const bool fits = t.processes() <= cpus;
      if (wait == shmq::Wait::Spin && !fits) {
        skipped.push_back(t.name() + " with Wait::Spin: " + std::to_string(t.processes()) + " processes on " +
                          std::to_string(cpus) + " CPUs would measure the scheduler");
        continue;
      }
      rows.push_back({t, wait, fits, {}});
    }
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  g_argv0 = argv[0];
  const Config cfg = parse_args(argc, argv);
  calibrate_ticks();
  install_signal_handlers();
  const std::vector<int> cpus = usable_cpus();
  const std::string model = cpu_model();
  const double load = load1();

  std::printf("shmq_competing_consumers%s: P producer processes, G groups (each gets every message) of C consumer "
              "processes (they share the group's messages); 64-byte messages, Durability::Memory, ring %zu MiB\n",
              cfg.quick ? " (--quick)" : "", cfg.ring_bytes >> 20);
  std::printf("host: %s, %zu CPUs usable, load average %.2f at start\n", model.c_str(), cpus.size(), load);
  std::printf("each case: %" PRIu64 " messages over the producers (the first %" PRIu64 " untimed), every one checked "
              "and acked in every group, then each checked acked exactly once per group; %" PRIu64 " run(s) a case, "
              "median reported; budget %.0f s a run\n",
              cfg.messages, cfg.tp_warmup, cfg.repeat, cfg.budget_s);

  char dir[] = "/tmp/shmq-competing-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::fprintf(stderr, "*** FAIL: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  const std::filesystem::path jdir = dir;

  std::vector<std::string> skipped;
  std::vector<Row> rows = plan_rows(cfg, cpus.size(), skipped);
  bool ok = true;
  for (Row& r : rows) {
    for (std::uint64_t k = 0; k < cfg.repeat && !g_interrupted; ++k) {
      const std::string label = r.t.name() + ", Wait::" + wait_name(r.wait) + ", run " + std::to_string(k + 1);
      Case c{r.t, r.wait, "", 0, 0};
      Run run = run_case(cfg, jdir, c, r.pinned, cpus, label);
      r.ok = r.ok && run.ok;
      r.runs.push_back(run);
    }
    ok = ok && r.ok && !r.runs.empty();
    if (g_interrupted) break;
  }
  std::error_code ec;
  std::filesystem::remove_all(jdir, ec);
  ok = ok && !g_interrupted;

  std::vector<SummaryRow> summary;
  std::vector<std::pair<std::string, Disturbance>> dist;
  const Table table = make_table(rows, cpus.size(), summary, dist);
  std::printf("\n");
  table.print_markdown();
  std::printf("PxGxC: P producers, G groups, C consumers in each. msgs/s: messages published, as the consumers took "
              "them; deliveries/s = msgs/s x G.\nvs 1x1x1: this median / the median of one producer, one group, one "
              "consumer waiting the same way. share: each consumer's part of its group's messages\n(min - max over "
              "consumers and runs). ack ns: median of Consumer::ack, sampled every 64th message.\n");
  for (const auto& s : skipped) std::printf("not run: %s\n", s.c_str());
  if (cpus.size() < 5)
    std::printf("NOTE: %zu CPUs: with more processes than CPUs every process waits by Block (or Yield), unpinned; more "
                "consumers, producers or groups cannot add CPU here, they share it.\n",
                cpus.size());
  print_disturbance(dist);

  bool files_ok = write_summary(cfg.summary_path, summary);
  if (!cfg.json_path.empty() || !cfg.csv_path.empty()) {
    const Table detail = make_detail(rows);
    Report rep;
    rep.context = {{"cpu", model},
                   {"cpus", std::to_string(cpus.size())},
                   {"load1_at_start", fmt(load, 2)},
                   {"messages", std::to_string(cfg.messages)},
                   {"tp_warmup", std::to_string(cfg.tp_warmup)},
                   {"ring_bytes", std::to_string(cfg.ring_bytes)},
                   {"repeat", std::to_string(cfg.repeat)},
                   {"quick", cfg.quick ? "true" : "false"}};
    rep.tables = {{"competing_consumers", &table}, {"competing_consumers_runs", &detail}};
    files_ok = rep.write(cfg.csv_path, cfg.json_path, "shmq_competing_consumers", ok) && files_ok;
  }
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_competing_consumers FAILED: see the *** FAIL lines above; no figure is reported "
                         "for a failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}
