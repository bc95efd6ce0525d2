// shmq_durability: what durability costs. Memory vs Async vs Sync, 1 and 4 producer processes,
// 64 B and 1 KiB payloads, beside this disk's bare fdatasync measured in the same run.
//
// What it measures. Each case: P producer processes publish into one channel for --seconds
// (each its own Producer, closed loop: the next publish starts when the last returned), and one
// consumer process (group "verify", Wait::Block) checks every message: per producer, sequences in
// order with none missing, the payload's words and checksum, the inner id (the producer's id, and
// its seq a fixed offset from ours), one delivery; then acks it.
//   msgs/s published  the producers' publishes that returned Ok inside the window (from --warmup
//                     seconds after all were ready to the end), over the window. With Sync, a
//                     publish returns only once the journal holds it fdatasync'd: durable msgs/s.
//   msgs/s delivered  the consumer's receipts over its own window (from the first message it took
//                     after the warm-up to the last one).
//   publish p50 / p99 the time of Producer::publish (fenced TSC stamps), every publish with Sync,
//                     every 8th with Memory and Async (a stamp costs about as much as a publish).
//                     A full ring's wait is part of it: back-pressure is what a publisher feels.
//   fdatasync         the physical reference, in the same directory as the journal, around each
//                     Sync case (half of --fsync-seconds right before it, half right after, pooled):
//                     a loop of write(payload size) at the end of a file + fdatasync; its rate and
//                     its p50 / p99. The Sync p50 ratio is taken against its own pair.
// Goals (reported, never asserted): Async msgs/s >= 0.7 x Memory's (same producers and size);
// Sync publish p50 <= 1.3 x bare fdatasync p50; 4 Sync producers >= 3 x the msgs/s of one
// (group commit: one fdatasync covers what every waiting producer appended).
//
// Every channel journals into a directory made for the run under $SHMQ_BENCH_DIR, else /tmp
// (--dir), removed at the end; the run says which filesystem and device that is (a tmpfs makes
// fdatasync free, and the Sync figures then say nothing about a disk).
// A failure (a publish not Ok, a message lost, duplicated, reordered or corrupt, a process that
// crashes or hangs) is printed with "*** FAIL", its figures are not reported, the exit status is 1.
//
// Usage: shmq_durability [--quick] [--seconds S] [--warmup S] [--repeat N] [--producers 1,4]
//          [--sizes 64,1024] [--modes memory,async,sync] [--fsync-seconds S] [--dir DIR]
//          [--ring-mib N] [--stall S] [--json FILE] [--csv FILE] [--summary FILE]

#include <shmq/shmq.hpp>

#include <fcntl.h>
#include <sys/statfs.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <tuple>

#include "harness.hpp"

namespace {

using namespace std::chrono_literals;
using namespace bench;

constexpr std::uint32_t kMaxProducers = 16;
// A journal record is a 48-byte header and the payload, 8-byte aligned (journal/README.md): what
// "journal MB/s" counts per message.
constexpr std::size_t kJournalHeaderBytes = 48;

struct Config {
  bool quick = false;
  std::string json_path, csv_path, summary_path;
  double seconds = 2.0;       // per case, warm-up included
  double warmup_s = 0.4;      // excluded from the figures
  std::uint64_t repeat = 3;
  std::vector<std::uint64_t> producers{1, 4};
  std::vector<std::uint64_t> sizes{64, 1024};
  std::vector<shmq::Durability> modes{shmq::Durability::Memory, shmq::Durability::Async, shmq::Durability::Sync};
  double fsync_s = 1.0;
  std::string dir;            // parent of the run's directory
  std::size_t ring_bytes = std::size_t{64} << 20;
  double stall_s = 10;
};

const char* g_argv0 = "shmq_durability";

[[noreturn]] void usage_exit(const char* why) {
  if (why != nullptr) std::fprintf(stderr, "%s: %s\n", g_argv0, why);
  std::fprintf(why != nullptr ? stderr : stdout,
               "usage: %s [--quick] [--seconds S] [--warmup S] [--repeat N] [--producers 1,4] [--sizes 64,1024]\n"
               "       [--modes memory,async,sync] [--fsync-seconds S] [--dir DIR] [--ring-mib N] [--stall S]\n"
               "       [--json FILE] [--csv FILE] [--summary FILE]\n",
               g_argv0);
  std::exit(why != nullptr ? 2 : 0);
}
void usage(const char* why) { usage_exit(why); }

const char* mode_name(shmq::Durability d) {
  switch (d) {
    case shmq::Durability::Memory: return "Memory";
    case shmq::Durability::Async: return "Async";
    case shmq::Durability::Sync: return "Sync";
  }
  return "?";
}

Config parse_args(int argc, char** argv) {
  Config c;
  bool seconds_set = false, warmup_set = false, repeat_set = false, fsync_set = false;
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
    } else if (a == "--seconds") {
      c.seconds = parse_seconds(value(), usage);
      seconds_set = true;
    } else if (a == "--warmup") {
      c.warmup_s = parse_seconds(value(), usage);
      warmup_set = true;
    } else if (a == "--repeat") {
      c.repeat = parse_count(value(), usage);
      repeat_set = true;
    } else if (a == "--producers") {
      c.producers = parse_list(value(), usage);
      for (auto p : c.producers)
        if (p > kMaxProducers) usage("at most 16 producers");
    } else if (a == "--sizes") {
      c.sizes = parse_list(value(), usage);
      for (auto s : c.sizes)
        if (s < sizeof(SizedHead) || s % 8 != 0 || s > (1u << 20)) usage("sizes: multiples of 8 from 32 to 1 MiB");
    } else if (a == "--modes") {
      c.modes.clear();
      for (const std::string& m : split_list(value())) {
        if (m == "memory") c.modes.push_back(shmq::Durability::Memory);
        else if (m == "async") c.modes.push_back(shmq::Durability::Async);
        else if (m == "sync") c.modes.push_back(shmq::Durability::Sync);
        else usage("--modes takes memory, async, sync");
      }
    } else if (a == "--fsync-seconds") {
      c.fsync_s = parse_seconds(value(), usage);
      fsync_set = true;
    } else if (a == "--dir") {
      c.dir = value();
    } else if (a == "--ring-mib") {
      c.ring_bytes = static_cast<std::size_t>(parse_count(value(), usage)) << 20;
      if ((c.ring_bytes & (c.ring_bytes - 1)) != 0) usage("--ring-mib must be a power of two");
    } else if (a == "--stall") {
      c.stall_s = parse_seconds(value(), usage);
    } else if (a == "--help" || a == "-h") {
      usage_exit(nullptr);
    } else {
      usage("unknown argument");
    }
  }
  if (c.quick) {
    if (!seconds_set) c.seconds = 0.8;
    if (!warmup_set) c.warmup_s = 0.2;
    if (!repeat_set) c.repeat = 1;
    if (!fsync_set) c.fsync_s = 0.5;
  }
  if (c.warmup_s >= c.seconds) usage("--warmup must be shorter than --seconds");
  if (c.dir.empty()) {
    const char* env = std::getenv("SHMQ_BENCH_DIR");
    c.dir = env != nullptr && *env != '\0' ? env : "/tmp";
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// Shared state of one case.

struct alignas(64) ProducerReport {
  std::uint64_t in_window = 0;      // publishes that returned Ok inside the window
  std::uint64_t last_ns = 0;        // when the last of them returned
  std::uint64_t sent = 0;           // data messages published (END excluded)
  Histogram latency;                // publish times inside the window, sampled
};

struct CaseControl : Control {
  alignas(64) std::uint64_t window_start_ns = 0;  // go + warm-up (set by the parent's children at go)
  std::uint64_t consumer_first_ns = 0, consumer_last_ns = 0;
  std::uint64_t consumer_first_count = 0, consumer_last_count = 0;
  std::uint64_t received = 0;                     // data messages the consumer acked
  std::uint64_t received_from[kMaxProducers] = {};
  ProducerReport producers[kMaxProducers];
};

shmq::ChannelOptions channel_options(const Config& cfg, shmq::Durability mode, const std::filesystem::path& jdir) {
  shmq::ChannelOptions o;
  o.ring_bytes = cfg.ring_bytes;
  o.max_message_bytes = std::min<std::size_t>(o.max_message_bytes, cfg.ring_bytes / 4);
  o.durability = mode;
  o.journal_dir = jdir;
  o.retention_bytes = 256u << 20;  // journal files every group acked go once past 256 MiB: a long run stays small
  return o;
}

void producer(const Config& cfg, const std::string& name, shmq::Durability mode, const std::filesystem::path& jdir,
              std::uint32_t producers, std::uint32_t me, std::size_t size, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, mode, jdir));
  shmq::Producer out(ch, "producer-" + std::to_string(me));
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = shmq::Wait::Block;  // a full ring: sleep, leave the CPU to the consumer and the journaler
  std::vector<std::byte> buf(size);
  ProducerReport& rep = c.producers[me];
  wait_all_ready(c, producers + 1, cfg.stall_s);

  const std::uint64_t go = c.go_ns.load(std::memory_order_acquire);
  const std::uint64_t window_start = go + static_cast<std::uint64_t>(cfg.warmup_s * 1e9);
  const std::uint64_t stop = go + static_cast<std::uint64_t>(cfg.seconds * 1e9);
  const bool sync = mode == shmq::Durability::Sync;
  const std::uint64_t check_every = sync ? 1 : 64;  // clock reads
  const std::uint64_t sample_every = sync ? 1 : 8;  // timed publishes
  bool in_window = false;
  std::uint64_t seq = 0;
  for (;; ++seq) {
    if (seq % check_every == 0) {
      const std::uint64_t now = mono_ns();
      if (now >= stop) break;
      in_window = now >= window_start;
    }
    fill_sized(buf.data(), size, me, seq, 0);
    const bool timed = in_window && seq % sample_every == 0;
    const std::uint64_t t0 = timed ? ticks() : 0;
    const shmq::Published r = out.publish(std::span<const std::byte>(buf), popts);
    if (timed) rep.latency.add(static_cast<std::uint64_t>(ticks_to_ns(ticks() - t0)));
    if (r.status != shmq::Status::Ok)
      die("publish of sequence %" PRIu64 " (%zu B, %s) returned %s", seq, size, mode_name(mode), shmq::to_string(r.status));
    if (in_window) ++rep.in_window;
  }
  rep.last_ns = mono_ns();
  rep.sent = seq;
  fill_sized(buf.data(), size, me, seq, static_cast<std::uint32_t>(kEnd));
  const shmq::Published r = out.publish(std::span<const std::byte>(buf), popts);
  if (r.status != shmq::Status::Ok) die("publish of the END message returned %s", shmq::to_string(r.status));
}

void consumer(const Config& cfg, const std::string& name, shmq::Durability mode, const std::filesystem::path& jdir,
              std::uint32_t producers, std::size_t size, CaseControl& c) {
  shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, mode, jdir));
  shmq::Consumer in(ch, "verify", {.start = shmq::Start::Earliest, .wait = shmq::Wait::Block, .max_in_flight = 64});
  wait_all_ready(c, producers + 1, cfg.stall_s);
  const std::uint64_t window_start =
      c.go_ns.load(std::memory_order_acquire) + static_cast<std::uint64_t>(cfg.warmup_s * 1e9);

  struct Expect {
    std::uint64_t next = 0;
    std::uint64_t id = 0, base = 0;
    bool seen = false, ended = false;
  };
  std::vector<Expect> expect(producers);
  Waiter w(cfg.stall_s, "waiting for the next message");
  std::uint32_t ended = 0;
  std::uint64_t received = 0;
  bool in_window = false;
  while (ended < producers) {
    std::optional<shmq::Message> got = in.poll(10ms);
    if (!got) {
      const shmq::Status s = in.status();
      if (s != shmq::Status::Timeout && s != shmq::Status::WouldBlock)
        die("poll returned nothing with status %s after %" PRIu64 " messages", shmq::to_string(s), received);
      w.check(received);
      continue;
    }
    w.reset();
    const shmq::Message& m = *got;
    SizedHead h{};
    if (m.payload().size() != size) die("a message of %zu bytes, expected %zu", m.payload().size(), size);
    if (auto why = check_sized(m.payload().data(), size, h); !why.empty()) die("%s", why.c_str());
    if (h.producer >= producers) die("a message from producer %u; there are %u", h.producer, producers);
    Expect& e = expect[h.producer];
    if (e.ended) die("producer %u's sequence %" PRIu64 " after its END", h.producer, h.seq);
    if (h.seq != e.next)
      die("producer %u's sequence %" PRIu64 " where %" PRIu64 " was due (%s)", h.producer, h.seq, e.next,
          h.seq < e.next ? "duplicate or reordered" : "LOST or reordered");
    if (m.deliveries() != 1) die("producer %u's sequence %" PRIu64 " delivered %u times", h.producer, h.seq, m.deliveries());
    const shmq::InnerId id = m.id();
    if (!e.seen) {
      e.id = id.producer;
      e.base = id.seq - h.seq;
      e.seen = true;
    } else if (id.producer != e.id || id.seq - h.seq != e.base) {
      die("producer %u's sequence %" PRIu64 " has inner id (%" PRIu64 ", %" PRIu64 "), expected (%" PRIu64 ", %" PRIu64 ")",
          h.producer, h.seq, id.producer, id.seq, e.id, h.seq + e.base);
    }
    ++e.next;
    const shmq::Status s = in.ack(m);
    if (s != shmq::Status::Ok) die("ack of producer %u's sequence %" PRIu64 " returned %s", h.producer, h.seq, shmq::to_string(s));
    if (h.flags == kEnd) {
      e.ended = true;
      ++ended;
      c.received_from[h.producer] = h.seq;
      continue;
    }
    ++received;
    if (!in_window && (received & 63u) == 0) {
      const std::uint64_t now = mono_ns();
      if (now >= window_start) {
        in_window = true;
        c.consumer_first_ns = now;
        c.consumer_first_count = received;
      }
    }
    if (in_window) {
      c.consumer_last_count = received;
      if ((received & 63u) == 0) c.consumer_last_ns = mono_ns();
    }
  }
  c.received = received;
}

// ---------------------------------------------------------------------------------------------
// The physical reference: write + fdatasync at the end of a file in DIR.

struct FsyncRef {
  bool ok = false;
  std::uint64_t syncs = 0;
  double per_s = 0;
  double p50_ns = 0, p99_ns = 0;
  std::string error;
};

// Adds each write + fdatasync time to H and the loop's duration to SECONDS_TOTAL.
FsyncRef bare_fdatasync(const std::filesystem::path& dir, std::size_t size, double seconds, Histogram& h,
                        double& seconds_total) {
  FsyncRef r;
  const std::filesystem::path file = dir / "bare-fdatasync";
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    r.error = "open " + file.string() + ": " + std::strerror(errno);
    return r;
  }
  std::vector<std::byte> buf(size, std::byte{0x5a});
  const std::uint64_t count_before = h.count;
  const std::uint64_t t_start = mono_ns();
  const auto limit = static_cast<std::uint64_t>(seconds * 1e9);
  std::uint64_t now = t_start;
  while (now - t_start < limit) {
    const std::uint64_t t0 = mono_ns();
    if (::write(fd, buf.data(), size) != static_cast<ssize_t>(size) || ::fdatasync(fd) != 0) {
      r.error = "write + fdatasync of " + file.string() + ": " + std::strerror(errno);
      ::close(fd);
      return r;
    }
    now = mono_ns();
    h.add(now - t0);
  }
  ::close(fd);
  std::error_code ec;
  std::filesystem::remove(file, ec);
  r.ok = h.count > count_before;
  if (!r.ok) r.error = "no write + fdatasync finished";
  seconds_total += static_cast<double>(now - t_start) / 1e9;
  return r;
}

// The reference for Async: how many bytes a second this disk takes when a writer appends 1 MiB at
// a time and fdatasyncs every 5 ms (what the journaler does with flush_interval 5 ms, in big writes).
struct StreamRef {
  bool ok = false;
  double mb_per_s = 0;
  std::string error;
};

StreamRef bare_stream(const std::filesystem::path& dir, double seconds) {
  StreamRef r;
  const std::filesystem::path file = dir / "bare-stream";
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    r.error = "open " + file.string() + ": " + std::strerror(errno);
    return r;
  }
  constexpr std::size_t kChunk = 1 << 20;
  std::vector<std::byte> buf(kChunk, std::byte{0xa5});
  const std::uint64_t t_start = mono_ns();
  const auto limit = static_cast<std::uint64_t>(seconds * 1e9);
  std::uint64_t bytes = 0, last_sync = t_start, now = t_start;
  bool fine = true;
  while (fine && now - t_start < limit) {
    fine = ::write(fd, buf.data(), kChunk) == static_cast<ssize_t>(kChunk);
    bytes += kChunk;
    now = mono_ns();
    if (fine && now - last_sync >= 5'000'000) {
      fine = ::fdatasync(fd) == 0;
      last_sync = now = mono_ns();
    }
  }
  fine = fine && ::fdatasync(fd) == 0;
  now = mono_ns();
  if (!fine) r.error = "write + fdatasync of " + file.string() + ": " + std::strerror(errno);
  ::close(fd);
  std::error_code ec;
  std::filesystem::remove(file, ec);
  r.ok = fine;
  r.mb_per_s = static_cast<double>(bytes) / 1e6 / (static_cast<double>(now - t_start) / 1e9);
  return r;
}

// What the journal directory is on: device, filesystem type, mount options (from /proc/mounts).
std::string filesystem_of(const std::filesystem::path& dir, bool& memory_fs) {
  memory_fs = false;
  struct statfs sf {};
  if (::statfs(dir.c_str(), &sf) == 0) memory_fs = sf.f_type == 0x01021994 /* tmpfs */ || sf.f_type == 0x858458f6 /* ramfs */;
  std::string best_mp, best;
  if (FILE* f = std::fopen("/proc/mounts", "r")) {
    char dev[512], mp[512], type[64], opts[512];
    const std::string path = std::filesystem::weakly_canonical(dir).string();
    while (std::fscanf(f, "%511s %511s %63s %511s %*d %*d", dev, mp, type, opts) == 4) {
      const std::string m = mp;
      const bool under = path == m || (path.rfind(m, 0) == 0 && (m == "/" || path[m.size()] == '/'));
      if (under && m.size() >= best_mp.size()) {
        best_mp = m;
        best = std::string(dev) + " (" + type + ", mounted on " + m + ", " + opts + ")";
      }
    }
    std::fclose(f);
  }
  return best.empty() ? "unknown filesystem" : best;
}

// ---------------------------------------------------------------------------------------------

struct Run {
  bool ok = false;
  double published_per_s = 0;
  double delivered_per_s = 0;
  double p50_ns = 0, p99_ns = 0;
  std::uint64_t samples = 0;
  std::uint64_t verified = 0;  // messages the consumer checked
  FsyncRef fsync;              // Sync: measured right before
  Disturbance disturbance;
};

Run run_case(const Config& cfg, const std::filesystem::path& run_dir, shmq::Durability mode, std::uint32_t producers,
             std::size_t size, const std::string& label, int index) {
  Run run;
  const std::string name = "shmqdur_" + std::to_string(::getpid()) + "_" + std::to_string(index);
  const std::filesystem::path jdir = run_dir / "journals";
  // Sync: the reference is taken in two halves, right before and right after the case, and pooled:
  // this disk's latency drifts from one second to the next.
  Histogram fsync_hist;
  double fsync_seconds = 0;
  auto measure_fsync = [&]() -> bool {
    const FsyncRef f = bare_fdatasync(run_dir, size, cfg.fsync_s / 2, fsync_hist, fsync_seconds);
    if (!f.ok) std::fprintf(stderr, "*** FAIL [%s]: bare fdatasync: %s\n", label.c_str(), f.error.c_str());
    return f.ok;
  };
  if (mode == shmq::Durability::Sync && !measure_fsync()) return run;
  try {
    if (shmq::Channel::exists(name)) shmq::Channel::remove(name, jdir);
    shmq::Channel ch = shmq::Channel::open(name, channel_options(cfg, mode, jdir));
    ch.ensure_group("verify", shmq::Start::Earliest);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: creating channel %s: %s\n", label.c_str(), name.c_str(), e.what());
    return run;
  }
  Shared<CaseControl> control;
  CaseControl& c = *control;
  std::vector<Child> children;
  for (std::uint32_t i = 0; i < producers; ++i)
    children.push_back({"producer " + std::to_string(i), -1, [&, i] { producer(cfg, name, mode, jdir, producers, i, size, c); }});
  children.push_back({"consumer", -1, [&] { consumer(cfg, name, mode, jdir, producers, size, c); }});
  const bool ok = run_children({cfg.seconds, cfg.stall_s}, label.c_str(), c, children);
  try {
    shmq::Channel::remove(name, jdir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "*** FAIL [%s]: removing channel %s: %s\n", label.c_str(), name.c_str(), e.what());
    return run;
  }
  if (!ok) return run;
  if (mode == shmq::Durability::Sync) {
    if (!measure_fsync()) return run;
    run.fsync.ok = true;
    run.fsync.syncs = fsync_hist.count;
    run.fsync.per_s = static_cast<double>(fsync_hist.count) / fsync_seconds;
    run.fsync.p50_ns = fsync_hist.percentile(0.50);
    run.fsync.p99_ns = fsync_hist.percentile(0.99);
  }
  // Every producer's data messages reached the consumer (it checked order and content one by one).
  std::uint64_t sent = 0, in_window = 0, last = 0;
  Histogram lat;
  for (std::uint32_t i = 0; i < producers; ++i) {
    const ProducerReport& p = c.producers[i];
    if (c.received_from[i] != p.sent) {
      std::fprintf(stderr, "*** FAIL [%s]: producer %u published %" PRIu64 " messages with Ok; the consumer got %" PRIu64 "\n",
                   label.c_str(), i, p.sent, c.received_from[i]);
      return run;
    }
    sent += p.sent;
    in_window += p.in_window;
    last = std::max(last, p.last_ns);
    lat.merge(p.latency);
  }
  if (c.received != sent) {
    std::fprintf(stderr, "*** FAIL [%s]: %" PRIu64 " published, %" PRIu64 " received\n", label.c_str(), sent, c.received);
    return run;
  }
  const std::uint64_t window_start = c.go_ns + static_cast<std::uint64_t>(cfg.warmup_s * 1e9);
  if (in_window == 0 || last <= window_start || lat.count == 0) {
    std::fprintf(stderr, "*** FAIL [%s]: no publish inside the window (%" PRIu64 " published in all)\n", label.c_str(), sent);
    return run;
  }
  run.ok = true;
  run.published_per_s = static_cast<double>(in_window) / (static_cast<double>(last - window_start) / 1e9);
  if (c.consumer_last_ns > c.consumer_first_ns && c.consumer_last_count > c.consumer_first_count)
    run.delivered_per_s = static_cast<double>(c.consumer_last_count - c.consumer_first_count) /
                          (static_cast<double>(c.consumer_last_ns - c.consumer_first_ns) / 1e9);
  run.p50_ns = lat.percentile(0.50);
  run.p99_ns = lat.percentile(0.99);
  run.samples = lat.count;
  run.verified = c.received;
  run.disturbance = {c.others_cpu_pct, c.steal_pct};
  return run;
}

std::string size_name(std::size_t s) { return s % 1024 == 0 ? std::to_string(s / 1024) + " KiB" : std::to_string(s) + " B"; }

std::string rate_text(double v) {
  if (v >= 1e6) return fmt(v / 1e6, 2) + " M";
  if (v >= 1e4) return fmt(v / 1e3, 0) + " k";
  return fmt(v, 0);
}

std::string us_text(double ns) { return ns >= 1e5 ? fmt(ns / 1e3, 0) : ns >= 1e3 ? fmt(ns / 1e3, 1) : fmt(ns / 1e3, 2); }

}  // namespace

int main(int argc, char** argv) {
  g_argv0 = argv[0];
  const Config cfg = parse_args(argc, argv);
  calibrate_ticks();
  install_signal_handlers();
  const std::string model = cpu_model();
  const double load = load1();
  const std::size_t ncpu = usable_cpus().size();

  std::string templ = (std::filesystem::path(cfg.dir) / "shmq-durability-XXXXXX").string();
  std::vector<char> dirbuf(templ.begin(), templ.end());
  dirbuf.push_back('\0');
  if (::mkdtemp(dirbuf.data()) == nullptr) {
    std::fprintf(stderr, "*** FAIL: mkdtemp %s: %s\n", templ.c_str(), std::strerror(errno));
    return 1;
  }
  const std::filesystem::path run_dir = dirbuf.data();
  bool memory_fs = false;
  const std::string fs = filesystem_of(run_dir, memory_fs);

  std::printf("shmq_durability%s: P producer processes (closed loop) and one checking consumer process, ring %zu MiB, "
              "flush_interval 5 ms (Async)\n",
              cfg.quick ? " (--quick)" : "", cfg.ring_bytes >> 20);
  std::printf("host: %s, %zu CPUs usable, load average %.2f at start\n", model.c_str(), ncpu, load);
  std::printf("journal: %s on %s\n", run_dir.c_str(), fs.c_str());
  if (memory_fs)
    std::printf("WARNING: the journal directory is on a memory filesystem: fdatasync costs nothing there; the Sync "
                "figures say nothing about a disk. Set SHMQ_BENCH_DIR (or --dir) to a directory on one.\n");
  std::printf("each case: %.1f s (the first %.1f s untimed), %" PRIu64 " run(s), median reported; publish latency "
              "sampled on every publish (Sync) or every 8th (Memory, Async)\n",
              cfg.seconds, cfg.warmup_s, cfg.repeat);

  struct Key {
    shmq::Durability mode;
    std::uint32_t producers;
    std::size_t size;
    bool operator<(const Key& o) const {
      return std::tie(size, producers, mode) < std::tie(o.size, o.producers, o.mode);
    }
  };
  std::map<Key, std::vector<Run>> runs;
  std::map<Key, bool> failed;
  bool ok = true;
  int index = 0;
  std::vector<double> stream_mb;
  const bool any_async = std::find(cfg.modes.begin(), cfg.modes.end(), shmq::Durability::Async) != cfg.modes.end();
  for (std::uint64_t k = 0; k < cfg.repeat && !g_interrupted; ++k) {
    if (any_async) {
      const StreamRef sr = bare_stream(run_dir, cfg.fsync_s);
      if (!sr.ok) {
        std::fprintf(stderr, "*** FAIL: bare sequential write: %s\n", sr.error.c_str());
        ok = false;
      } else {
        stream_mb.push_back(sr.mb_per_s);
      }
    }
    for (std::uint64_t size : cfg.sizes) {
      for (std::uint64_t p : cfg.producers) {
        for (shmq::Durability mode : cfg.modes) {
          if (g_interrupted) break;
          const Key key{mode, static_cast<std::uint32_t>(p), size};
          const std::string label = std::string(mode_name(mode)) + ", " + std::to_string(p) + " producer(s), " +
                                    size_name(size) + ", run " + std::to_string(k + 1);
          Run r = run_case(cfg, run_dir, mode, key.producers, size, label, index++);
          if (!r.ok) {
            failed[key] = true;
            ok = false;
          }
          runs[key].push_back(r);
        }
      }
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(run_dir, ec);
  ok = ok && !g_interrupted;

  // Medians per case.
  struct Med {
    bool ok = false;
    double pub = 0, del = 0, p50 = 0, p99 = 0, fs_rate = 0, fs_p50 = 0, fs_p99 = 0, fs_ratio = 0;
    std::uint64_t verified = 0;
  };
  std::map<Key, Med> med;
  for (const auto& [key, list] : runs) {
    Med m;
    std::vector<double> pub, del, p50, p99, fr, f50, f99, ratio;
    for (const Run& r : list) {
      if (!r.ok) continue;
      pub.push_back(r.published_per_s);
      del.push_back(r.delivered_per_s);
      p50.push_back(r.p50_ns);
      p99.push_back(r.p99_ns);
      m.verified += r.verified;
      if (key.mode == shmq::Durability::Sync) {
        fr.push_back(r.fsync.per_s);
        f50.push_back(r.fsync.p50_ns);
        f99.push_back(r.fsync.p99_ns);
        ratio.push_back(r.p50_ns / r.fsync.p50_ns);  // paired: the reference measured just before
      }
    }
    m.ok = !failed[key] && !pub.empty();
    m.pub = median(pub);
    m.del = median(del);
    m.p50 = median(p50);
    m.p99 = median(p99);
    m.fs_rate = median(fr);
    m.fs_p50 = median(f50);
    m.fs_p99 = median(f99);
    m.fs_ratio = median(ratio);
    med[key] = m;
  }
  auto find = [&](shmq::Durability mode, std::uint32_t p, std::size_t s) -> const Med* {
    auto it = med.find(Key{mode, p, s});
    return it != med.end() && it->second.ok ? &it->second : nullptr;
  };

  Table table({"durability", "producers", "payload", "msgs/s published", "msgs/s delivered", "journal MB/s",
               "publish p50 (us)", "publish p99 (us)", "vs Memory", "vs 1 producer", "p50 / fdatasync p50", "goal"},
              {false, true, true, true, true, true, true, true, true, true, true, false});
  std::vector<std::string> goals_summary;
  std::vector<SummaryRow> summary;  // the run's one table (run.sh): the references, then shmq's figures
  const std::string section = "durability: P producer processes, 1 checking consumer; publish latency";
  if (!stream_mb.empty())
    summary.push_back({section, "Async reference", "bare 1 MiB writes + fdatasync every 5 ms", {}, {}, {}, {}, {},
                       median(stream_mb), "", ""});
  if (!stream_mb.empty())
    table.add({txt("bare 1 MiB writes + fdatasync every 5 ms"), num(1, 0), txt("-"), txt("-"), txt("-"),
               num(median(stream_mb), 0), txt("-"), txt("-"), txt("-"), txt("-"), txt("-"),
               txt("the physical reference for Async")});
  for (std::uint64_t size : cfg.sizes) {
    // The physical reference for this size: the fdatasync loops run before its Sync cases.
    std::vector<double> fr, f50, f99;
    for (const auto& [key, list] : runs)
      if (key.size == size && key.mode == shmq::Durability::Sync)
        for (const Run& r : list)
          if (r.fsync.ok) {
            fr.push_back(r.fsync.per_s);
            f50.push_back(r.fsync.p50_ns);
            f99.push_back(r.fsync.p99_ns);
          }
    if (!fr.empty())
      summary.push_back({section, size_name(size) + ", Sync reference", "bare write + fdatasync", median(f50), median(f99),
                         {}, {}, median(fr), median(fr) * static_cast<double>(size) / 1e6, "", ""});
    if (!fr.empty())
      table.add({txt("bare write + fdatasync"), num(1, 0), txt(size_name(size)), {rate_text(median(fr)), median(fr)},
                 txt("-"), num(median(fr) * static_cast<double>(size) / 1e6, 2), {us_text(median(f50)), median(f50) / 1e3},
                 {us_text(median(f99)), median(f99) / 1e3}, txt("-"), txt("-"), txt("1.00"), txt("the physical reference")});
    for (std::uint64_t p64 : cfg.producers) {
      const auto p = static_cast<std::uint32_t>(p64);
      for (shmq::Durability mode : cfg.modes) {
        const Key key{mode, p, size};
        if (runs.find(key) == runs.end()) continue;
        const Med* m = find(mode, p, size);
        const std::string case_name = size_name(size) + ", " + std::to_string(p) + " producer(s), " + mode_name(mode);
        if (m == nullptr) {
          table.add({txt(mode_name(mode)), num(p, 0), txt(size_name(size)), txt("FAILED"), txt("FAILED"), txt("-"),
                     txt("FAILED"), txt("FAILED"), txt("-"), txt("-"), txt("-"), txt("-")});
          summary.push_back({section, case_name, "shmq", {}, {}, {}, {}, {}, {}, "FAILED: see the *** FAIL lines", ""});
          continue;
        }
        const Med* mem = find(shmq::Durability::Memory, p, size);
        const Med* one = p != 1 ? find(mode, 1, size) : nullptr;
        const double vs_mem = mem ? m->pub / mem->pub : 0;
        const double vs_one = one ? m->pub / one->pub : 0;
        std::string goal = "-";
        if (mode == shmq::Durability::Async && mem) {
          goal = "vs Memory >= 0.7: " + std::string(verdict(vs_mem >= 0.7));
        } else if (mode == shmq::Durability::Sync) {
          goal = "p50 <= 1.3 x fdatasync: " + std::string(verdict(m->fs_ratio <= 1.3));
          if (one) goal += "; vs 1 producer >= 3: " + std::string(verdict(vs_one >= 3));
        }
        if (goal != "-")
          goals_summary.push_back(std::string(mode_name(mode)) + ", " + std::to_string(p) + " producer(s), " +
                                  size_name(size) + ": " + goal);
        const double journal_mb = m->pub * static_cast<double>(kJournalHeaderBytes + size) / 1e6;
        std::string vs;
        if (mem && mode != shmq::Durability::Memory) vs = "/ Memory: " + times(vs_mem);
        if (one) vs += (vs.empty() ? "" : "; ") + std::string("/ 1 producer: ") + times(vs_one);
        if (mode == shmq::Durability::Sync)
          vs += (vs.empty() ? "" : "; ") + std::string("p50 / bare fdatasync p50: ") + times(m->fs_ratio);
        summary.push_back({section, case_name, "shmq", m->p50, m->p99, {}, {}, m->pub,
                           m->pub * static_cast<double>(size) / 1e6, vs, goal == "-" ? "" : goal});
        table.add({txt(mode_name(mode)), num(p, 0), txt(size_name(size)), {rate_text(m->pub), m->pub},
                   {m->del > 0 ? rate_text(m->del) : "-", m->del},
                   mode == shmq::Durability::Memory ? txt("-") : num(journal_mb, journal_mb < 10 ? 2 : 0),
                   {us_text(m->p50), m->p50 / 1e3}, {us_text(m->p99), m->p99 / 1e3},
                   mem && mode != shmq::Durability::Memory ? num(vs_mem, 2) : txt("-"),
                   one ? num(vs_one, 2) : txt("-"),
                   mode == shmq::Durability::Sync ? num(m->fs_ratio, 2) : txt("-"), txt(goal)});
      }
    }
  }
  std::printf("\n");
  table.print_markdown();
  std::printf("msgs/s published: publishes that returned Ok in the window (Sync: durable ones); delivered: what the "
              "consumer took meanwhile; journal MB/s: msgs/s published x (48-byte journal header + payload).\nvs Memory / vs 1 producer: msgs/s published "
              "over Memory's (same producers and size) / over one producer's (same durability and size). p50 / "
              "fdatasync p50: paired with the fdatasync loop run just before each Sync case (median of the pairs).\n"
              "Every message was checked by the consumer: in order per producer, none missing, payload and inner id "
              "intact, delivered once.\n");
  if (ncpu < 6)
    std::printf("NOTE: %zu CPUs: 4 producers + a consumer (+ the journaler thread) outnumber them; every process "
                "waits by Block (futex), none is pinned.\n", ncpu);
  std::vector<std::pair<std::string, Disturbance>> dist;
  for (const auto& [key, list] : runs)
    for (const Run& r : list)
      if (r.ok)
        dist.push_back({std::string(mode_name(key.mode)) + "/" + std::to_string(key.producers) + "/" + size_name(key.size),
                        r.disturbance});
  print_disturbance(dist);

  bool files_ok = write_summary(cfg.summary_path, summary);
  if (!cfg.json_path.empty() || !cfg.csv_path.empty()) {
    Table detail({"durability", "producers", "payload_bytes", "run", "ok", "published_per_s", "delivered_per_s",
                  "publish_p50_ns", "publish_p99_ns", "latency_samples", "verified_messages", "fdatasync_per_s",
                  "fdatasync_p50_ns", "fdatasync_p99_ns", "others_cpu_pct", "steal_pct"});
    for (const auto& [key, list] : runs)
      for (std::size_t k = 0; k < list.size(); ++k) {
        const Run& r = list[k];
        const bool s = key.mode == shmq::Durability::Sync;
        detail.add({txt(mode_name(key.mode)), num(key.producers, 0), num(static_cast<double>(key.size), 0),
                    num(static_cast<double>(k + 1), 0), txt(r.ok ? "true" : "false"), num(r.published_per_s, 1),
                    num(r.delivered_per_s, 1), num(r.p50_ns, 0), num(r.p99_ns, 0), num(static_cast<double>(r.samples), 0),
                    num(static_cast<double>(r.verified), 0), s ? num(r.fsync.per_s, 1) : txt(""),
                    s ? num(r.fsync.p50_ns, 0) : txt(""), s ? num(r.fsync.p99_ns, 0) : txt(""),
                    num(r.disturbance.others_cpu_pct, 1), num(r.disturbance.steal_pct, 1)});
      }
    Report rep;
    rep.context = {{"cpu", model},
                   {"cpus", std::to_string(ncpu)},
                   {"bare_stream_mb_per_s", stream_mb.empty() ? "" : fmt(median(stream_mb), 1)},
                   {"load1_at_start", fmt(load, 2)},
                   {"journal_filesystem", fs},
                   {"seconds", fmt(cfg.seconds, 2)},
                   {"warmup_s", fmt(cfg.warmup_s, 2)},
                   {"repeat", std::to_string(cfg.repeat)},
                   {"ring_bytes", std::to_string(cfg.ring_bytes)},
                   {"quick", cfg.quick ? "true" : "false"}};
    for (std::size_t i = 0; i < goals_summary.size(); ++i) rep.context.push_back({"goal" + std::to_string(i), goals_summary[i]});
    rep.tables = {{"durability", &table}, {"durability_runs", &detail}};
    files_ok = rep.write(cfg.csv_path, cfg.json_path, "shmq_durability", ok) && files_ok;
  }
  std::fflush(stdout);
  if (!ok) {
    std::fprintf(stderr, "\n*** shmq_durability FAILED: see the *** FAIL lines above; no figure is reported for a "
                         "failed case.\n");
    return 1;
  }
  return files_ok ? 0 : 1;
}
