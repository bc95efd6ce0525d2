// shmq_competing_consumers: one group's throughput with 1, 2 and 4 competing consumer processes.
//
// What it measures (64-byte messages, Durability::Memory, one channel, one group "workers"):
//   One producer process publishes --messages messages (sequence number, five derived words,
//   checksum), then one END message per consumer. N consumer processes join the group and share
//   its messages: each polls, checks the message (checksum, its sequence above the one it saw
//   before, inner id = the producer's and (seq + base), delivered once), acks it, and marks the
//   sequence in its own bitmap; it stops at its END. msgs/s = messages from sequence --tp-warmup
//   (one lap of the ring, so that its pages are touched) to the last, over the time from the first
//   consumer's receipt of a message at or past that sequence to the last consumer's END.
//   The parent then checks the bitmaps: every sequence the producer sent was acked by exactly one
//   consumer (none lost, none twice), the consumers' counts add up, every consumer saw the same
//   producer id and base. Any failure is printed with "*** FAIL", that case's figure is not
//   reported, and the exit status is 1.
//   ack ns: the median time of Consumer::ack, sampled on every 64th message (fenced TSC stamps).
//
// Waiting. With more processes than CPUs (2 CPUs here: 1 producer + 2 consumers already make 3),
// a spinning consumer takes a CPU from the process it waits for, and the figure measures the
// scheduler. So Wait::Spin runs only where every process has its own CPU (and then each is
// pinned); otherwise consumers and producer wait by Wait::Yield or Wait::Block, unpinned, and the
// output says so. "vs 1" compares with one consumer waiting the same way.
//
// Usage: shmq_competing_consumers [--quick] [--consumers 1,2,4] [--waits spin,yield,block]
//          [--messages N] [--tp-warmup N] [--ring-mib N] [--repeat N] [--budget S] [--stall S]
//          [--json FILE] [--csv FILE]

#include <shmq/shmq.hpp>

#include <chrono>
#include <filesystem>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
using namespace bench;

constexpr std::uint32_t kMaxConsumers = 16;

struct Config {
  bool quick = false;
  std::string json_path, csv_path;
  std::vector<std::uint64_t> consumers{1, 2, 4};
  std::vector<shmq::Wait> waits{shmq::Wait::Spin, shmq::Wait::Yield, shmq::Wait::Block};
  std::uint64_t messages = 4'000'000;
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
               "usage: %s [--quick] [--consumers 1,2,4] [--waits spin,yield,block] [--messages N] [--tp-warmup N]\n"
               "       [--ring-mib N] [--repeat N] [--budget SECONDS] [--stall SECONDS] [--json FILE] [--csv FILE]\n",
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
    } else if (a == "--consumers") {
      c.consumers = parse_list(value(), usage);
      for (auto n : c.consumers)
        if (n > kMaxConsumers) usage("at most 16 consumers");
    } else if (a == "--waits") {
      c.waits.clear();
      std::string s = value();
      for (std::size_t at = 0; at <= s.size();) {
        const std::size_t comma = s.find(',', at);
        const std::string w = s.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
        if (w == "spin") c.waits.push_back(shmq::Wait::Spin);
        else if (w == "yield") c.waits.push_back(shmq::Wait::Yield);
        else if (w == "block") c.waits.push_back(shmq::Wait::Block);
        else usage("--waits takes spin, yield, block");
        if (comma == std::string::npos) break;
        at = comma + 1;
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
  std::uint64_t start_ns = 0;      // first receipt of a sequence >= tp_warmup (0: none)
  std::uint64_t end_ns = 0;        // receipt of its END
  std::uint64_t producer_id = 0;   // inner id's producer, the same on every message
  std::uint64_t base = 0;          // inner id seq - message seq, the same on every message
  std::uint32_t got_end = 0;
  Histogram ack;                   // sampled Consumer::ack times, ns
};

struct CaseControl : Control {
  alignas(64) std::uint64_t sent = 0;  // data messages published with Ok (END excluded)
  std::uint32_t stopped_early = 0;
  ConsumerReport consumers[kMaxConsumers];
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

void producer(const Config& cfg, const std::string& name, const std::filesystem::path& jdir, shmq::Wait wait,
              std::uint32_t consumers, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, jdir));
  shmq::Producer out(ch, "producer");
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = wait;
  wait_all_ready(c, consumers + 1, cfg.stall_s);

  const auto budget_ns = static_cast<std::uint64_t>(cfg.budget_s * 1e9);
  const std::uint64_t t_start = mono_ns();
  Msg m{};
  std::uint64_t seq = 0;
  auto publish = [&] {
    const shmq::Published r = out.publish(bytes_of(m), popts);
    if (r.status != shmq::Status::Ok)
      die("publish of sequence %" PRIu64 " returned %s", m.seq, shmq::to_string(r.status));
  };
  for (; seq < cfg.messages; ++seq) {
    if ((seq & 4095u) == 0 && seq > cfg.tp_warmup && mono_ns() - t_start > budget_ns) {
      c.stopped_early = 1;
      break;
    }
    fill(m, seq);
    publish();
  }
  c.sent = seq;
  for (std::uint32_t i = 0; i < consumers; ++i) {  // one END each: a consumer stops at its first
    fill(m, seq + i, kEnd);
    publish();
  }
}

void consumer(const Config& cfg, const std::string& name, const std::filesystem::path& jdir, shmq::Wait wait,
              std::uint32_t consumers, std::uint32_t me, std::uint8_t* bitmap, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, jdir));
  shmq::Consumer in(ch, "workers", {.start = shmq::Start::Earliest, .wait = wait, .max_in_flight = 64});
  ConsumerReport& rep = c.consumers[me];
  wait_all_ready(c, consumers + 1, cfg.stall_s);

  Waiter w(cfg.stall_s, "waiting for the next message");
  std::optional<std::uint64_t> last;
  std::uint64_t received = 0;
  for (;;) {
    std::optional<shmq::Message> got = in.poll(10ms);
    if (!got) {
      const shmq::Status s = in.status();
      if (s != shmq::Status::Timeout && s != shmq::Status::WouldBlock)
        die("poll returned nothing with status %s after %" PRIu64 " messages", shmq::to_string(s), received);
      w.check(last.value_or(0));
      continue;
    }
    w.reset();
    const shmq::Message& msg = *got;
    if (msg.payload().size() != sizeof(Msg)) die("a message of %zu bytes, expected %zu", msg.payload().size(), sizeof(Msg));
    Msg m;
    std::memcpy(&m, msg.payload().data(), sizeof m);
    if (auto why = check_intact(m); !why.empty()) die("%s", why.c_str());
    if (last && m.seq <= *last)
      die("sequence %" PRIu64 " after %" PRIu64 ": a group hands out its messages in order", m.seq, *last);
    if (msg.deliveries() != 1) die("sequence %" PRIu64 " delivered %u times", m.seq, msg.deliveries());
    const shmq::InnerId id = msg.id();
    if (!last) {
      rep.producer_id = id.producer;
      rep.base = id.seq - m.seq;
    } else if (id.producer != rep.producer_id || id.seq - m.seq != rep.base) {
      die("inner id (%" PRIu64 ", %" PRIu64 ") on sequence %" PRIu64 ": expected producer %" PRIu64 " and seq %" PRIu64,
          id.producer, id.seq, m.seq, rep.producer_id, m.seq + rep.base);
    }
    last = m.seq;
    const bool end = m.flags == kEnd;
    const bool sample = (received & 63u) == 0;
    const std::uint64_t t0 = sample ? ticks() : 0;
    const shmq::Status s = in.ack(msg);
    if (sample) rep.ack.add(static_cast<std::uint64_t>(ticks_to_ns(ticks() - t0)));
    if (s != shmq::Status::Ok) die("ack of sequence %" PRIu64 " returned %s", m.seq, shmq::to_string(s));
    if (end) {
      rep.end_ns = mono_ns();
      rep.received = received;
      rep.got_end = 1;
      return;
    }
    if (m.seq >= cfg.messages) die("sequence %" PRIu64 " is beyond the %" PRIu64 " messages of the run", m.seq, cfg.messages);
    bitmap[m.seq >> 3] = static_cast<std::uint8_t>(bitmap[m.seq >> 3] | (1u << (m.seq & 7)));  // our own bitmap
    if (rep.start_ns == 0 && m.seq >= cfg.tp_warmup) rep.start_ns = mono_ns();
    ++received;
  }
}

// ---------------------------------------------------------------------------------------------

struct Run {
  bool ok = false;
  double msgs_per_s = 0;
  std::uint64_t messages = 0;  // timed
  bool stopped_early = false;
  double share_min = 0, share_max = 0;  // % of the messages, over the consumers
  double ack_ns = 0;
  Disturbance disturbance;
};

// Checks the bitmaps and the reports; "" when every message was acked exactly once.
std::string verify(const CaseControl& c, std::uint32_t n, const std::uint8_t* bitmaps, std::size_t stride) {
  char why[300];
  std::uint64_t total = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const ConsumerReport& r = c.consumers[i];
    if (r.got_end != 1) {
      std::snprintf(why, sizeof why, "consumer %u ended without its END message", i);
      return why;
    }
    if (i > 0 && r.received > 0 && c.consumers[0].received > 0 &&
        (r.producer_id != c.consumers[0].producer_id || r.base != c.consumers[0].base)) {
      std::snprintf(why, sizeof why, "consumers 0 and %u saw different inner ids for the same producer", i);
      return why;
    }
    total += r.received;
  }
  if (total != c.sent) {
    std::snprintf(why, sizeof why, "the producer published %" PRIu64 " messages with Ok; the consumers acked %" PRIu64
                  " (%s)", c.sent, total, total < c.sent ? "LOST" : "DUPLICATED");
    return why;
  }
  // Every sequence below `sent`: in exactly one bitmap; none at or above it.
  const std::size_t bytes = (c.sent + 7) / 8;
  for (std::size_t b = 0; b < stride; ++b) {
    unsigned seen = 0, twice = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const unsigned v = bitmaps[i * stride + b];
      twice |= seen & v;
      seen |= v;
    }
    unsigned want = 0;
    if (b + 1 < bytes) want = 0xff;
    else if (b + 1 == bytes) want = c.sent % 8 == 0 ? 0xffu : (1u << (c.sent % 8)) - 1;
    if (twice != 0 || seen != want) {
      const unsigned bad = twice != 0 ? twice : (seen ^ want);
      const std::uint64_t seq = b * 8 + static_cast<std::uint64_t>(std::countr_zero(bad));
      std::snprintf(why, sizeof why, "sequence %" PRIu64 " was %s", seq,
                    twice != 0 ? "acked by two consumers" : (seen & ~want) ? "acked but never sent" : "never acked (LOST)");
      return why;
    }
  }
  return {};
}

Run run_case(const Config& cfg, const std::filesystem::path& jdir, std::uint32_t n, shmq::Wait wait, bool pin,
             const std::vector<int>& cpus, const std::string& label) {
  Run run;
  const std::string name = "shmqcc_" + std::to_string(::getpid()) + "_" + std::to_string(n) + wait_name(wait);
  try {
    if (shmq::Channel::exists(name)) shmq::Channel::remove(name, jdir);
    shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, jdir));
    ch.ensure_group("workers", shmq::Start::Earliest);  // from the first message, whoever joins first
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: creating channel %s: %s\n", label.c_str(), name.c_str(), e.what());
    return run;
  }
  Shared<CaseControl> control;
  CaseControl& c = *control;
  const std::size_t stride = (cfg.messages + 7) / 8 + 1;
  SharedMap bitmaps(stride * n);
  auto* bits = static_cast<std::uint8_t*>(bitmaps.data());
  std::vector<Child> children;
  children.push_back({"producer", pin ? cpus[0] : -1, [&] { producer(cfg, name, jdir, wait, n, c); }});
  for (std::uint32_t i = 0; i < n; ++i)
    children.push_back({"consumer " + std::to_string(i), pin ? cpus[(i + 1) % cpus.size()] : -1,
                        [&, i] { consumer(cfg, name, jdir, wait, n, i, bits + i * stride, c); }});
  const bool ok = run_children({cfg.budget_s, cfg.stall_s}, label.c_str(), c, children);
  try {
    shmq::Channel::remove(name, jdir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: removing channel %s: %s\n", label.c_str(), name.c_str(), e.what());
    return run;
  }
  if (!ok) return run;
  if (auto why = verify(c, n, bits, stride); !why.empty()) {
    std::fprintf(stderr, "\n*** FAIL [%s]: %s\n", label.c_str(), why.c_str());
    return run;
  }
  std::uint64_t start = ~0ull, end = 0;
  Histogram ack;
  double lo = 100, hi = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    const ConsumerReport& r = c.consumers[i];
    if (r.start_ns != 0) start = std::min(start, r.start_ns);
    end = std::max(end, r.end_ns);
    ack.merge(r.ack);
    const double share = c.sent ? 100.0 * static_cast<double>(r.received) / static_cast<double>(c.sent) : 0;
    lo = std::min(lo, share);
    hi = std::max(hi, share);
  }
  if (start == ~0ull || end <= start || c.sent <= cfg.tp_warmup) {
    std::fprintf(stderr, "*** FAIL [%s]: no measurable interval\n", label.c_str());
    return run;
  }
  run.ok = true;
  run.messages = c.sent - cfg.tp_warmup;
  run.msgs_per_s = static_cast<double>(run.messages) / (static_cast<double>(end - start) / 1e9);
  run.stopped_early = c.stopped_early != 0;
  run.share_min = lo;
  run.share_max = hi;
  run.ack_ns = ack.percentile(0.5);
  run.disturbance = {c.others_cpu_pct, c.steal_pct};
  return run;
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

  std::printf("shmq_competing_consumers%s: one producer process, N consumer processes in one group; 64-byte "
              "messages, Durability::Memory, ring %zu MiB\n",
              cfg.quick ? " (--quick)" : "", cfg.ring_bytes >> 20);
  std::printf("host: %s, %zu CPUs usable, load average %.2f at start\n", model.c_str(), cpus.size(), load);
  std::printf("each case: %" PRIu64 " messages (the first %" PRIu64 " untimed), every one checked and acked, then "
              "each sequence checked acked exactly once across the consumers; %" PRIu64 " run(s) a case, median "
              "reported; budget %.0f s a run\n",
              cfg.messages, cfg.tp_warmup, cfg.repeat, cfg.budget_s);

  char dir[] = "/tmp/shmq-competing-XXXXXX";
  if (::mkdtemp(dir) == nullptr) {
    std::fprintf(stderr, "*** FAIL: mkdtemp: %s\n", std::strerror(errno));
    return 1;
  }
  const std::filesystem::path jdir = dir;

  struct Row {
    std::uint32_t n;
    shmq::Wait wait;
    bool pinned;
    std::vector<Run> runs;
    bool ok = true;
    double median = 0;
  };
  std::vector<Row> rows;
  std::vector<std::string> skipped;
  for (shmq::Wait wait : cfg.waits) {
    for (std::uint64_t n64 : cfg.consumers) {
      const auto n = static_cast<std::uint32_t>(n64);
      const bool fits = n + 1 <= cpus.size();
      if (wait == shmq::Wait::Spin && !fits) {
        skipped.push_back(std::to_string(n) + " consumer(s) with Wait::Spin: " + std::to_string(n + 1) +
                          " processes on " + std::to_string(cpus.size()) + " CPUs would measure the scheduler");
        continue;
      }
      rows.push_back({n, wait, fits, {}});
    }
  }

  bool ok = true;
  for (Row& r : rows) {
    for (std::uint64_t k = 0; k < cfg.repeat && !g_interrupted; ++k) {
      const std::string label = std::to_string(r.n) + " consumer(s), Wait::" + wait_name(r.wait) + ", run " +
                                std::to_string(k + 1);
      Run run = run_case(cfg, jdir, r.n, r.wait, r.pinned, cpus, label);
      r.ok = r.ok && run.ok;
      r.runs.push_back(run);
    }
    ok = ok && r.ok && !r.runs.empty();
    if (g_interrupted) break;
  }
  std::error_code ec;
  std::filesystem::remove_all(jdir, ec);
  ok = ok && !g_interrupted;

  Table table({"consumers", "processes / CPUs", "wait", "M msgs/s (median)", "min - max", "vs 1 consumer",
               "share per consumer %", "ack ns (p50)", "verified"},
              {true, true, false, true, true, true, true, true, false});
  std::vector<std::pair<std::string, Disturbance>> dist;
  for (Row& r : rows) {
    std::vector<double> v;
    double lo = 1e300, hi = 0, share_lo = 100, share_hi = 0;
    std::vector<double> acks;
    std::uint64_t verified = 0;
    bool early = false;
    for (const Run& run : r.runs) {
      if (!run.ok) continue;
      v.push_back(run.msgs_per_s);
      lo = std::min(lo, run.msgs_per_s);
      hi = std::max(hi, run.msgs_per_s);
      share_lo = std::min(share_lo, run.share_min);
      share_hi = std::max(share_hi, run.share_max);
      acks.push_back(run.ack_ns);
      verified += run.messages;
      early = early || run.stopped_early;
      dist.push_back({std::to_string(r.n) + "x" + wait_name(r.wait), run.disturbance});
    }
    const std::string procs = std::to_string(r.n + 1) + " / " + std::to_string(cpus.size()) +
                              (r.pinned ? " (pinned)" : " (not pinned)");
    if (!r.ok || v.empty()) {
      table.add({num(r.n, 0), txt(procs), txt(wait_name(r.wait)), txt("FAILED"), txt("-"), txt("-"), txt("-"), txt("-"),
                 txt("FAILED")});
      continue;
    }
    r.median = median(v);
    const Row* one = nullptr;
    for (const Row& o : rows)
      if (o.n == 1 && o.wait == r.wait && o.ok && o.median > 0) one = &o;
    table.add({num(r.n, 0), txt(procs), txt(wait_name(r.wait)), num(r.median / 1e6, 2),
               txt(fmt(lo / 1e6, 2) + " - " + fmt(hi / 1e6, 2) + (early ? " (budget cut)" : "")),
               one ? num(r.median / one->median, 2) : txt("-"),
               r.n > 1 ? txt(fmt(share_lo, 0) + " - " + fmt(share_hi, 0)) : txt("100"), num(median(acks), 0),
               txt(std::to_string(r.runs.size()) + " run(s): every message acked once")});
  }
  std::printf("\n");
  table.print_markdown();
  std::printf("msgs/s: consumer side, the group's total. vs 1 consumer: this median / the median of 1 consumer "
              "waiting the same way.\nshare: each consumer's part of the messages (min - max over consumers and "
              "runs). ack ns: median of Consumer::ack, sampled every 64th message.\n");
  for (const auto& s : skipped) std::printf("not run: %s\n", s.c_str());
  if (cpus.size() < 5)
    std::printf("NOTE: %zu CPUs: with 2 or 4 consumers the processes outnumber the CPUs; consumers (and the producer, "
                "on a full ring) wait by Yield or Block, unpinned; more consumers cannot add CPU here, they share it.\n",
                cpus.size());
  print_disturbance(dist);

  bool files_ok = true;
  if (!cfg.json_path.empty() || !cfg.csv_path.empty()) {
    Table detail({"consumers", "wait", "run", "ok", "msgs_per_s", "messages", "stopped_early", "share_min_pct",
                  "share_max_pct", "ack_ns", "others_cpu_pct", "steal_pct"});
    for (const Row& r : rows)
      for (std::size_t k = 0; k < r.runs.size(); ++k) {
        const Run& run = r.runs[k];
        detail.add({num(r.n, 0), txt(wait_name(r.wait)), num(static_cast<double>(k + 1), 0), txt(run.ok ? "true" : "false"),
                    num(run.msgs_per_s, 1), num(static_cast<double>(run.messages), 0),
                    txt(run.stopped_early ? "true" : "false"), num(run.share_min, 2), num(run.share_max, 2),
                    num(run.ack_ns, 1), num(run.disturbance.others_cpu_pct, 1), num(run.disturbance.steal_pct, 1)});
      }
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
    files_ok = rep.write(cfg.csv_path, cfg.json_path, "shmq_competing_consumers", ok);
  }
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_competing_consumers FAILED: see the *** FAIL lines above; no figure is reported "
                         "for a failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}
