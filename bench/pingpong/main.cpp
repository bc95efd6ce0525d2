// main.cpp, shmq_pingpong: shmq across two processes, beside the floors and its peers, in one run.
// This file is the driver (arguments, the loop over sizes and transports, the table, the goals,
// CSV / JSON / summary output); each transport is a file of its own behind transport.hpp.
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
//               lap of the ring for shmq, the floors and Boost.Lockfree) to its last message.
//   transports  shmq Wait::Spin and shmq Wait::Block (consumers poll with that wait);
//               the floors (what the hardware gives when nothing else is done; the receiver
//               checks every message as for shmq): a one-cache-line mailbox each way (the
//               latency floor), a per-slot-sequence SPSC ring whose consumer publishes its head
//               every 256 messages (the throughput floor), and the head/tail index ring that was
//               the floor before them (a reference); shmq's ratios and goals are taken against the
//               strongest floor of the run, per metric;
//               memcpy: one pinned core copying messages of the size from a hot buffer into a
//               64 MiB one, the same run: the floor of throughput for large messages;
//               peers: POSIX message queues (mq_send / mq_receive, blocking), a Unix domain
//               socket pair (SOCK_SEQPACKET, blocking send / recv), Boost.Interprocess
//               message_queue (blocking send / receive: a process-shared mutex and condition),
//               Boost.Lockfree spsc_queue constructed in a shared segment (spins), iceoryx 2
//               (publish / subscribe through RouDi, the subscriber busy-polls take(); built when
//               libiceoryx-posh-dev is installed; the run starts iox-roudi itself).
//               Every transport carries the same bytes and gets the same checks.
//   ratios      shmq / this: above 1 is slower for latency, below 1 is slower for throughput;
//               both against shmq Spin and against shmq Block (the like-for-like figure for a
//               peer whose receiver blocks in the kernel).
//   goals       (64 B, shmq Wait::Spin, against the strongest floor of the metric) p50 <= 1.1 x,
//               p99.9 <= 2 x, max <= 10 x, below every peer at p50 and p99.9; msgs/s >= 0.9 x
//               floor, >= 3 x Boost.Interprocess, >= 10 x iceoryx; (64 KiB) MB/s >= 0.95 x floor
//               and >= 0.7 x memcpy. Printed as met / MISSED, never asserted.
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
//                      [--cpus A,B] [--only KEYS] [--mq-depth N] [--queue-depth N]

#include <unistd.h>

#include <filesystem>

#include "transport.hpp"

namespace pingpong {
namespace {

const char* g_argv0 = "shmq_pingpong";

// The registered transports in row order.
std::vector<const Transport*> transports() {
  std::vector<const Transport*> all = registry();
  std::sort(all.begin(), all.end(), [](const Transport* a, const Transport* b) { return a->order < b->order; });
  return all;
}

const Transport* find_transport(const std::string& key) {
  for (const Transport* t : registry())
    if (key == t->key) return t;
  return nullptr;
}

std::string key_list() {
  std::string s;
  for (const Transport* t : transports()) s += (s.empty() ? "" : ",") + std::string(t->key);
  return s;
}

bool wants(const Config& c, const Transport& t) {
  if (c.only.empty()) return true;
  for (const auto& k : c.only)
    if (k == t.key || (k == "floor" && t.kind == Kind::Floor)) return true;
  return false;
}

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", g_argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--csv FILE] [--summary FILE] [--sizes 64,1024,65536]\n"
               "       [--rtt N] [--warmup N] [--messages N] [--tp-warmup N] [--tp-gib N] [--ring-mib N]\n"
               "       [--lat-ring-kib N] [--budget SECONDS] [--large-budget SECONDS] [--stall SECONDS]\n"
               "       [--cpus A,B] [--only KEYS] [--mq-depth N] [--queue-depth N]\n"
               "KEYS, comma-separated: %s, or floor (every floor)\n",
               g_argv0, key_list().c_str());
  std::exit(why != nullptr ? 2 : 0);
}
void usage(const char* why) { usage_exit(why); }


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
        if (k != "floor" && find_transport(k) == nullptr) usage("--only: unknown transport (see the keys below)");
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

// ---------------------------------------------------------------------------------------------
// Report: the table (one row per transport and size), the goals, the summary rows.

const Row* find(const std::vector<Row>& all, const char* key, std::size_t size) {
  for (const auto& r : all)
    if (r.key == key && r.size == size && r.ran()) return &r;
  return nullptr;
}

// The strongest floor of the run at one size, per metric: the lowest latency and the highest
// throughput any floor measured (each with the floor that measured it). Ratios and goals of shmq
// are taken against these; the other floors are still rows of their own.
struct Best {
  const Row* row = nullptr;
  double value = 0;
  std::string of() const { return row != nullptr ? " (" + row->key + ")" : ""; }
};
struct StrongestFloor {
  Best p50, p999, max, mb_per_s;
};

StrongestFloor strongest_floor(const std::vector<Row>& all, std::size_t size) {
  StrongestFloor f;
  const auto lower = [](Best& b, const Row& r, double v) {
    if (b.row == nullptr || v < b.value) b = {&r, v};
  };
  for (const auto& r : all) {
    if (r.kind != Kind::Floor || r.size != size) continue;
    if (r.lat_ok()) {
      lower(f.p50, r, r.latency.p50);
      lower(f.p999, r, r.latency.p999);
      lower(f.max, r, r.latency.max);
    }
    if (r.tp_ok() && (f.mb_per_s.row == nullptr || r.throughput.mb_per_s > f.mb_per_s.value))
      f.mb_per_s = {&r, r.throughput.mb_per_s};
  }
  return f;
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
    const bool lat_ok = x.has_latency && l.ok, tp_ok = x.has_throughput && p.ok;
    const bool sl = spin && spin->latency.ok && lat_ok, st = spin && spin->throughput.ok && tp_ok;
    const bool bl = block && block->latency.ok && lat_ok, bt = block && block->throughput.ok && tp_ok;
    auto tp = [&](Cell c) { return !x.has_throughput ? txt("-") : p.ok ? c : txt("FAILED"); };
    t.add({txt(size_name(x.size)), txt(x.name), txt(x.wait), lat(l.p50), lat(l.p99), lat(l.p999), lat(l.max),
           tp(num(p.msgs_per_s / 1e6, p.msgs_per_s < 1e5 ? 3 : 2)), tp(num(p.mb_per_s, 0)),
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
    if (x.has_throughput)
      t.add({txt(x.name), txt(x.key), size, txt("throughput"), txt(p.ok ? "true" : "false"),
             txt(p.stopped_early ? "true" : "false"), num(static_cast<double>(p.messages), 0), txt(""), txt(""),
             txt(""),
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

// The speed goals of shmq (Wait::Spin) against the strongest floor of each metric, memcpy and the
// peers of the same run (issue 12's goals for the floor; the peers' and memcpy's as before).
std::vector<Goal> goals(const std::vector<Row>& all) {
  std::vector<Goal> out;
  const Row* s = find(all, "shmq", 64);
  const StrongestFloor f = strongest_floor(all, 64);
  const bool sl = s && s->lat_ok(), st = s && s->tp_ok();
  auto goal = [&](const std::string& text, bool have, bool met) {
    out.push_back({text, have ? std::optional<bool>(met) : std::nullopt});
  };
  // MINE <= FACTOR x the floor's best (latency) or >= (throughput).
  auto lat_floor = [&](const char* what, double mine, const Best& b, double factor) {
    goal("64 B " + std::string(what) + " <= " + fmt(factor, factor < 2 ? 1 : 0) + " x strongest floor" + b.of(),
         sl && b.row != nullptr, mine <= factor * b.value);
  };
  lat_floor("p50", sl ? s->latency.p50 : 0, f.p50, 1.1);
  lat_floor("p99.9", sl ? s->latency.p999 : 0, f.p999, 2.0);
  lat_floor("max", sl ? s->latency.max : 0, f.max, 10.0);
  for (const auto& o : all) {
    if (o.kind != Kind::Peer || o.size != 64 || !o.ran()) continue;
    goal("64 B p50 below " + o.name, sl && o.lat_ok(), sl && s->latency.p50 < o.latency.p50);
    goal("64 B p99.9 below " + o.name, sl && o.lat_ok(), sl && s->latency.p999 < o.latency.p999);
  }
  goal("64 B msgs/s >= 0.9 x strongest floor" + f.mb_per_s.of(), st && f.mb_per_s.row != nullptr,
       st && s->throughput.mb_per_s >= 0.9 * f.mb_per_s.value);
  auto tp_peer = [&](const char* key, const char* text, double factor) {
    if (const Row* o = find(all, key, 64))
      goal(text, st && o->tp_ok(), st && s->throughput.msgs_per_s >= factor * o->throughput.msgs_per_s);
  };
  tp_peer("boost", "64 B msgs/s >= 3 x Boost.Interprocess mq", 3.0);
  tp_peer("iceoryx", "64 B msgs/s >= 10 x iceoryx", 10.0);
  const Row* big = find(all, "shmq", 64 << 10);
  const StrongestFloor fb = strongest_floor(all, 64 << 10);
  const bool bt = big && big->tp_ok();
  if (big || fb.mb_per_s.row)
    goal("64 KiB MB/s >= 0.95 x strongest floor" + fb.mb_per_s.of(), bt && fb.mb_per_s.row != nullptr,
         bt && big->throughput.mb_per_s >= 0.95 * fb.mb_per_s.value);
  const Row* mc = find(all, "memcpy", 64 << 10);
  if (big || mc)
    goal("64 KiB MB/s >= 0.7 x memcpy (1 core)", bt && mc && mc->tp_ok(),
         bt && mc && big->throughput.mb_per_s >= 0.7 * mc->throughput.mb_per_s);
  return out;
}

// "p50 0.86x, p99.9 1.90x, MB/s 0.20x" of MINE / THEIRS, the figures both have.
std::string ratios(const Row& mine, const Row& theirs) {
  std::vector<std::string> parts;
  const bool lat = mine.has_latency && theirs.has_latency && mine.latency.ok && theirs.latency.ok;
  if (lat && theirs.latency.p50 > 0) parts.push_back("p50 " + times(mine.latency.p50 / theirs.latency.p50));
  if (lat && theirs.latency.p999 > 0) parts.push_back("p99.9 " + times(mine.latency.p999 / theirs.latency.p999));
  if (mine.tp_ok() && theirs.tp_ok() && theirs.throughput.mb_per_s > 0)
    parts.push_back("MB/s " + times(mine.throughput.mb_per_s / theirs.throughput.mb_per_s));
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

// "p50 1.20x (floor-mailbox), p99.9 ..., max ..., MB/s 0.50x (floor-slots)": MINE / the strongest floor.
std::string ratios_to_floor(const Row& mine, const StrongestFloor& f) {
  std::vector<std::string> parts;
  const auto add = [&](const char* what, double v, const Best& b) {
    if (b.row != nullptr && b.value > 0) parts.push_back(what + times(v / b.value) + b.of());
  };
  if (mine.lat_ok()) {
    add("p50 ", mine.latency.p50, f.p50);
    add("p99.9 ", mine.latency.p999, f.p999);
    add("max ", mine.latency.max, f.max);
  }
  if (mine.tp_ok()) add("MB/s ", mine.throughput.mb_per_s, f.mb_per_s);
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

// The summary rows: every transport at every size, each with its ratios (shmq's rows: to the
// strongest floor of each metric, and to memcpy for large messages; the others: shmq Spin / this, and Block / this for a
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
    if (x.tp_ok()) {
      s.msgs_per_s = x.throughput.msgs_per_s;
      s.mb_per_s = x.throughput.mb_per_s;
    }
    if (!x.ok()) s.vs = "FAILED: see the *** FAIL lines";
    const Row* spin = find(all, "shmq", x.size);
    const Row* block = find(all, "shmq-block", x.size);
    const Row* mc = find(all, "memcpy", x.size);
    auto add_vs = [&](const std::string& what, const Row* a, const Row* b) {
      if (a == nullptr || b == nullptr) return;
      const std::string r = ratios(*a, *b);
      if (!r.empty()) s.vs += (s.vs.empty() ? "" : "; ") + what + r;
    };
    if (x.kind == Kind::Shmq) {
      if (const std::string r = ratios_to_floor(x, strongest_floor(all, x.size)); !r.empty())
        s.vs += (s.vs.empty() ? "" : "; ") + ("/ strongest floor: " + r);
      if (x.size > 64) add_vs("/ memcpy: ", &x, mc);
    } else if (x.kind != Kind::Reference) {
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
    if (r.tp_ok() && r.throughput.stopped_early)
      std::printf("note: %s %s throughput stopped early by the time budget: %" PRIu64 " messages\n", r.name.c_str(),
                  size_name(r.size).c_str(), r.throughput.messages);
  }
  std::printf("latency: one-way = round trip / 2. Spin / this = shmq (Wait::Spin) / this, Block / this = shmq "
              "(Wait::Block) / this,\nat the same size: above 1 shmq is slower for latency, below 1 shmq is slower "
              "for throughput. Block / this is the like-for-like one\nfor a peer whose receiver blocks in the "
              "kernel. memcpy: one core copying the messages, no second process, no check.\n");
  for (const auto& n : notes)
    if (!n.empty()) std::printf("%s\n", n.c_str());
  std::vector<std::size_t> sizes;
  for (const auto& r : all)
    if (std::find(sizes.begin(), sizes.end(), r.size) == sizes.end()) sizes.push_back(r.size);
  for (std::size_t size : sizes) {
    const StrongestFloor f = strongest_floor(all, size);
    if (f.p50.row == nullptr && f.mb_per_s.row == nullptr) continue;
    std::printf("strongest floor at %s (what shmq's ratios and goals are taken against):", size_name(size).c_str());
    if (f.p50.row != nullptr)
      std::printf(" p50 %.0f ns%s, p99.9 %.0f ns%s, max %.0f ns%s;", f.p50.value, f.p50.of().c_str(), f.p999.value,
                  f.p999.of().c_str(), f.max.value, f.max.of().c_str());
    if (f.mb_per_s.row != nullptr)
      std::printf(" %.0f MB/s%s", f.mb_per_s.value, f.mb_per_s.of().c_str());
    std::printf("\n");
  }
  std::printf("\ngoals (shmq Wait::Spin, figures of this run):\n");
  for (const auto& g : gs) std::printf("  %s\n", g.line().c_str());
  std::vector<std::pair<std::string, Disturbance>> dist;
  for (const auto& r : all) {
    if (!r.ran()) continue;
    const std::string k = r.key + "/" + size_name(r.size);
    if (r.has_latency && r.latency.ok) dist.push_back({k + " latency", r.latency.disturbance});
    if (r.tp_ok()) dist.push_back({k + " throughput", r.throughput.disturbance});
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

int run(int argc, char** argv) {
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
  Session session{cfg, dir, {}, {}, true};
  session.roudi_log = cfg.json_path.empty()
                          ? std::string("/dev/null")
                          : (std::filesystem::path(cfg.json_path).parent_path() / "iox-roudi.log").string();

  std::vector<const Transport*> selected;
  for (const Transport* t : transports())
    if (wants(cfg, *t)) selected.push_back(t);
  for (const Transport* t : selected)
    if (t->start) t->start(session);
  std::vector<Row> all;
  for (std::uint64_t size : cfg.sizes) {
    const Plan p = plan_for(cfg, size);
    for (const Transport* t : selected)
      if (!g_interrupted) all.push_back(t->run(session, p));
  }
  for (auto it = selected.rbegin(); it != selected.rend(); ++it)
    if ((*it)->stop) (*it)->stop(session);
  std::error_code ec;
  std::filesystem::remove_all(session.dir, ec);

  bool ok = session.cleanup_ok && !g_interrupted;
  for (const auto& r : all) ok = ok && r.ok();
  const Table table = make_table(all);
  const std::vector<Goal> gs = goals(all);
  print_results(all, table, gs, session.notes);
  const bool files_ok = write_files(cfg, all, table, gs, session.notes, model, load, ok);
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_pingpong FAILED: see the *** FAIL lines above; no figure is reported for a "
                         "failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}

}  // namespace
}  // namespace pingpong

int main(int argc, char** argv) { return pingpong::run(argc, argv); }
