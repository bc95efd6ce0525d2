// shmq-torture: the kill-everything audit of one channel (issue 11, item 14).
//
// Contract. `shmq-torture [options]` creates a channel, runs N producer, M consumer (in K groups)
// and one dead-letter reader processes on it (each a fork/exec of this binary in a role mode), and
// for --duration seconds follows a schedule drawn from --seed: every 20-200 ms it SIGKILLs one
// process (a producer, a consumer, the dead-letter reader, or whichever process hosts the journaler
// at that moment) and starts it again; on a durable channel it also crashes the whole host now and
// then (every process SIGKILLed at once, the journal cut past the durable position the segment
// states as a power cut drops the page cache, the segments unlinked as a reboot does, everything
// started again: the first open rebuilds the channel from the journal). In builds with crash
// points a share of the processes it starts are armed to die at a named point of the protocol.
// Then it stops the producers, lets the consumers drain the channel, stops them and audits what
// the processes wrote down (tools/TORTURE.md says more):
//
//   published   seqs whose publish returned Ok, or whose retry after a restart returned Duplicate
//               (then flushed before it counts), per the producers' Ok logs
//   delivered   (group, message) pairs that some consumer of the group received
//   lost        published and never delivered in a group (for a poison message of that group:
//               never delivered and never seen in NAME.dlq), per group
//   dup         a delivery in a group of a message that was, at that moment, held by another live
//               consumer that had not nacked it, or already acked in that group; the only excuses are
//               the holder's death (our SIGKILL, its crash point, or its logged exit or error), its
//               logged nack, and a host crash in between (acks after the last checkpoint come back:
//               at-least-once)
//   redelivered deliveries that one of those excuses allows
//   corrupt     deliveries whose payload checksum fails or whose inner id disagrees with it
//   dlq         poison messages seen in NAME.dlq (a poison message is nacked by its target group
//               until it is dead-lettered; the other groups ack it like any other)
//   async loss  on an Async channel a loss whose Ok time is less than flush_interval + --async-slack-ms
//               before a host crash is within the stated bound; any other loss is beyond it
//
// Exit status 0 when nothing was lost (beyond the Async bound), duplicated, corrupt, stuck, crashed
// or refused; 1 on any violation; 2 for bad usage or a setup failure of the tool itself.
//
// Record formats (all fixed size, written with one write() on an O_APPEND descriptor, so that a
// SIGKILL leaves either the whole record or nothing; each ends with a checksum of the rest, and the
// audit skips what does not check):
//   PN.ok     OkRecord: seq, how it was confirmed, the steady-clock time of the confirmation
//   PN.state  8 bytes at offset 0: the last seq this producer started to publish (its outbox)
//   GG-CJ.log ConsumerRecord: delivery, ack, nack, leave, error of consumer J of group G
//   dlq.log   ConsumerRecord: what the dead-letter reader received from NAME.dlq
// Times are CLOCK_MONOTONIC nanoseconds (std::chrono::steady_clock), one clock for every process of
// the host; the supervisor keeps its own events (kills, host crashes) in memory and in events.log.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <shmq/shmq.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "shm/crash_point.hpp"  // only its list of names: which points a child may be armed with

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
}

std::uint64_t fnv1a(const void* data, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// ---- options -------------------------------------------------------------------------------------

struct Config {
  std::string durability = "async";  // memory | async | sync
  std::uint64_t seed = 0;
  bool seed_given = false;
  double duration_s = 30;
  int producers = 3;
  int consumers = 4;
  int groups = 2;
  // The producer and each group's consumer are exclusive (ProducerOptions / ConsumerOptions::
  // exclusive: plain-store claims and takes): needs --producers 1 and --consumers equal to
  // --groups. A restarted process waits (up to 10 s) for the one it replaces to be gone.
  bool exclusive = false;
  int kill_min_ms = 20;
  int kill_max_ms = 200;
  double host_crash_every_s = 10;  // mean interval; 0: none (never on Memory)
  int poison_every = 100;          // one message in this many is poison for one group; 0: none
  int rate = 500;                  // messages per second per producer
  int flush_interval_ms = 5;
  int async_slack_ms = 50;
  int max_deliveries = 3;
  std::size_t ring_bytes = 1 << 20;
  int drain_timeout_s = 30;
  std::string dir;                 // run directory; default a fresh one under $TMPDIR
  bool keep = false;
  bool json = false;
  // Self-check of the audit: a consumer of group 0 breaks its own log on purpose for one message in
  // 997 of producer 0 ("lose": no delivery record; "dup": the delivery recorded twice, as if two live
  // consumers held it; "corrupt": recorded with a failed checksum). The run must then FAIL with the
  // matching count. Empty: off.
  std::string inject;
  // In builds with crash points (-DSHMQ_CRASH_POINTS=ON) this share of the processes started is
  // armed (SHMQ_CRASH_AT=point:N, point and N drawn from the seed) to die by SIGKILL at a named
  // point of the protocol: the narrow windows that a timed SIGKILL rarely hits.
  double crash_point_share = 0.3;
  std::vector<std::string> crash_point_names;  // --crash-points a,b: only these (default: every listed point)
  // Host crashes also drop what the page cache held and fdatasync had not made durable: the
  // journal is cut at the first record at or past the segment's durable position (half the time
  // in the middle of that record: a torn write). Off: only the segment is lost.
  bool power_cut = true;
  // The consumers of the last group sleep this long after each batch, so that the group lags and
  // a host crash finds records it has not received yet (the Async bound is then measured on them).
  int lag_ms = 0;
  // The dead-letter reader sleeps 0-2N ms after each record: dead letters wait in NAME.dlq.
  int dlq_lag_ms = 0;
  // Role mode (internal): the supervisor execs this binary with --role.
  std::string role;
  std::string name;
  int index = 0;
  int incarnation = 0;
};

shmq::Durability durability_of(const Config& c) {
  if (c.durability == "memory") return shmq::Durability::Memory;
  if (c.durability == "sync") return shmq::Durability::Sync;
  return shmq::Durability::Async;
}

shmq::ChannelOptions channel_options(const Config& c) {
  shmq::ChannelOptions o;
  o.durability = durability_of(c);
  o.ring_bytes = c.ring_bytes;
  o.max_message_bytes = 4096;
  o.journal_dir = fs::path(c.dir) / "journal";
  o.flush_interval = std::chrono::milliseconds(c.flush_interval_ms);
  o.max_deliveries = static_cast<std::uint32_t>(c.max_deliveries);
  o.liveness_interval = 100ms;
  o.retention = std::chrono::seconds(0);  // keep the journal small; retention is not under test here
  return o;
}

// The options of NAME.dlq as the library opens it (shm/consumer.cpp, dead_letter()).
shmq::ChannelOptions dlq_options(const Config& c) {
  shmq::ChannelOptions o;
  o.durability = durability_of(c);  // as durable as the origin, its journal beside the origin's
  o.journal_dir = fs::path(c.dir) / "journal";
  o.flush_interval = std::chrono::milliseconds(c.flush_interval_ms);
  o.max_message_bytes = 4096;
  o.ring_bytes = std::max<std::size_t>(std::size_t(1) << 20, std::bit_ceil(std::size_t(4) * o.max_message_bytes));
  return o;
}

std::string group_name(int g) { return "g" + std::to_string(g); }

// ---- records -------------------------------------------------------------------------------------

// Payload of every message:  [PayloadHead][body_len bytes]; checksum covers head (checksum field
// zero) and body.
struct PayloadHead {
  std::uint32_t magic;         // kPayloadMagic
  std::uint32_t producer;      // producer index
  std::uint64_t seq;
  std::int32_t poison_group;   // group that must nack it until it is dead-lettered; -1: none
  std::uint32_t body_len;
  std::uint64_t checksum;
};
static_assert(sizeof(PayloadHead) == 32);
constexpr std::uint32_t kPayloadMagic = 0x52545254;  // "TRTR"

std::uint64_t payload_checksum(PayloadHead h, const std::byte* body, std::size_t n) {
  h.checksum = 0;
  return fnv1a(body, n, fnv1a(&h, sizeof h));
}

enum OkKind : std::uint32_t { kOkPublished = 1, kOkDuplicate = 2 };
struct OkRecord {
  std::uint32_t magic;  // kOkMagic
  std::uint32_t kind;   // OkKind
  std::uint64_t seq;
  std::uint64_t time_ns;
  std::uint64_t position;  // ring position of the record (publish's Published::position; 0 if not known)
  std::uint64_t check;
};
static_assert(sizeof(OkRecord) == 40);
constexpr std::uint32_t kOkMagic = 0x4f4b4f4b;

enum RecordKind : std::uint8_t { kDeliver = 1, kAck = 2, kNack = 3, kAckFailed = 4, kLeave = 5, kError = 6, kDlq = 7 };
struct ConsumerRecord {
  std::uint32_t magic;        // kConsumerMagic
  std::uint8_t kind;          // RecordKind
  std::uint8_t payload_ok;    // 1: checksum and inner id agree with the payload
  std::uint16_t group;
  std::uint32_t incarnation;  // which process wrote it (the supervisor numbers every start)
  std::uint32_t deliveries;   // Message::deliveries(); for kAckFailed: the Status
  std::int32_t producer;      // from the payload (-1: unreadable)
  std::int32_t poison_group;  // from the payload
  std::uint64_t seq;          // from the payload
  std::uint64_t inner_producer;
  std::uint64_t inner_seq;
  std::uint64_t position;
  std::uint64_t time_ns;
  std::uint64_t check;
};
static_assert(sizeof(ConsumerRecord) == 72);
constexpr std::uint32_t kConsumerMagic = 0x434f4e53;

template <class R>
void seal(R& r) {
  r.check = fnv1a(&r, sizeof r - sizeof r.check);
}
template <class R>
bool sealed(const R& r, std::uint32_t magic) {
  return r.magic == magic && r.check == fnv1a(&r, sizeof r - sizeof r.check);
}

int open_append(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::fprintf(stderr, "shmq-torture: open %s: %s\n", p.c_str(), std::strerror(errno));
    std::_Exit(2);
  }
  return fd;
}

template <class R>
void append(int fd, R& r) {
  seal(r);
  // One write() of a whole record on O_APPEND: a SIGKILL leaves all of it or none (regular file).
  const ssize_t n = ::write(fd, &r, sizeof r);
  if (n != static_cast<ssize_t>(sizeof r)) {
    std::fprintf(stderr, "shmq-torture: log write: %s\n", n < 0 ? std::strerror(errno) : "short");
    std::_Exit(2);
  }
}

template <class R>
std::vector<R> read_records(const fs::path& p, std::uint32_t magic, std::uint64_t& torn) {
  std::vector<R> out;
  FILE* f = std::fopen(p.c_str(), "rb");
  if (!f) return out;
  R r;
  while (std::fread(&r, sizeof r, 1, f) == 1) {
    if (sealed(r, magic)) out.push_back(r);
    else ++torn;
  }
  std::fclose(f);
  return out;
}

// ---- roles ---------------------------------------------------------------------------------------

volatile std::sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

// The supervisor starts a role with SIGTERM blocked (a SIGTERM sent before the handler is in
// place stays pending instead of killing it); the role unblocks it once the handler is installed.
void install_term_handler() {
  struct sigaction sa{};
  sa.sa_handler = on_term;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  ::sigprocmask(SIG_UNBLOCK, &term, nullptr);
}

fs::path producer_file(const Config& c, int i, const char* ext) {
  return fs::path(c.dir) / ("p" + std::to_string(i) + ext);
}
fs::path consumer_file(const Config& c, int g, int j) {
  return fs::path(c.dir) / ("g" + std::to_string(g) + "-c" + std::to_string(j) + ".log");
}

// Producer i: the outbox pattern. PN.state holds the last seq it started to publish; a restart
// retries that seq first (Ok or Duplicate both confirm it; a Duplicate is flushed before it counts,
// since it says nothing about durability), then goes on with the next.
// Makes a Producer or Consumer with MAKE; an exclusive one whose predecessor (killed by us a
// moment ago) still counts as live is tried again, for up to 10 s.
template <class Make>
auto join_exclusive(Make make) -> decltype(make()) {
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    try {
      return make();
    } catch (const shmq::Error& e) {
      if (e.code() != std::errc::device_or_resource_busy || Clock::now() >= deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

int run_producer(const Config& c) {
  const int i = c.index;
  const int state_fd = ::open(producer_file(c, i, ".state").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (state_fd < 0) return 2;
  std::uint64_t last = 0;
  if (::pread(state_fd, &last, sizeof last, 0) != static_cast<ssize_t>(sizeof last)) last = 0;
  const int ok_fd = open_append(producer_file(c, i, ".ok"));
  shmq::Channel ch = shmq::Channel::open(c.name, channel_options(c));
  shmq::Producer p = join_exclusive([&] { return shmq::Producer(ch, "tp" + std::to_string(i), {.exclusive = c.exclusive}); });
  std::vector<std::byte> buf(sizeof(PayloadHead) + 600);
  const auto period = std::chrono::nanoseconds(1000000000ll / std::max(1, c.rate));
  auto next_at = Clock::now();
  std::uint64_t seq = last == 0 ? 1 : last;  // retry the last one started: it may not have been confirmed
  bool retry = last != 0;
  while (!g_stop) {
    // Outbox first: a restart retries this seq. One pwrite of 8 bytes: a kill leaves old or new.
    if (!retry && ::pwrite(state_fd, &seq, sizeof seq, 0) != static_cast<ssize_t>(sizeof seq)) {
      std::fprintf(stderr, "shmq-torture: producer %d: outbox write: %s\n", i, std::strerror(errno));
      return 2;
    }
    // The payload is a function of (seed, producer, seq), so a retry sends the same bytes.
    std::mt19937_64 body_rng(c.seed ^ (static_cast<std::uint64_t>(i) << 48) ^ seq);
    PayloadHead h{};
    h.magic = kPayloadMagic;
    h.producer = static_cast<std::uint32_t>(i);
    h.seq = seq;
    h.poison_group = (c.poison_every > 0 && body_rng() % static_cast<std::uint64_t>(c.poison_every) == 0)
                         ? static_cast<std::int32_t>(body_rng() % static_cast<std::uint64_t>(c.groups))
                         : -1;
    h.body_len = static_cast<std::uint32_t>(16 + body_rng() % 512);
    std::byte* body = buf.data() + sizeof h;
    for (std::uint32_t k = 0; k < h.body_len; ++k) body[k] = static_cast<std::byte>(body_rng());
    h.checksum = payload_checksum(h, body, h.body_len);
    std::memcpy(buf.data(), &h, sizeof h);
    shmq::PublishOptions po;
    po.seq = seq;
    po.timeout = 2s;
    po.wait = shmq::Wait::Yield;
    const shmq::Published r = p.publish(std::span<const std::byte>(buf.data(), sizeof h + h.body_len), po);
    bool confirmed = false;
    OkRecord rec{};
    rec.magic = kOkMagic;
    rec.seq = seq;
    rec.position = r.position;
    if (r.status == shmq::Status::Ok) {
      rec.kind = kOkPublished;
      confirmed = true;
    } else if (r.status == shmq::Status::Duplicate) {
      // Accepted before (by an earlier life of this producer): confirmed once it is durable.
      if (p.flush(2s)) {
        rec.kind = kOkDuplicate;
        confirmed = true;
      }
    } else if (r.status == shmq::Status::Timeout || r.status == shmq::Status::WouldBlock) {
      // Not confirmed: retried (a published-but-not-durable Sync record answers Duplicate next).
    } else {
      std::fprintf(stderr, "shmq-torture: producer %d seq %llu: publish returned %s\n", i,
                   static_cast<unsigned long long>(seq), shmq::to_string(r.status));
      return 3;
    }
    if (confirmed) {
      rec.time_ns = now_ns();
      append(ok_fd, rec);
      ++seq;
      retry = false;
      next_at += period;
      std::this_thread::sleep_until(next_at);
      if (Clock::now() - next_at > 1s) next_at = Clock::now();  // do not burst after a stall
    } else {
      retry = true;
      std::this_thread::sleep_for(5ms);
    }
  }
  return 0;
}

ConsumerRecord describe(const shmq::Message& m, RecordKind kind, int group, int incarnation) {
  ConsumerRecord r{};
  r.magic = kConsumerMagic;
  r.kind = kind;
  r.group = static_cast<std::uint16_t>(group);
  r.incarnation = static_cast<std::uint32_t>(incarnation);
  r.deliveries = m.deliveries();
  r.inner_producer = m.id().producer;
  r.inner_seq = m.id().seq;
  r.position = m.position();
  r.producer = -1;
  r.poison_group = -1;
  const auto pl = m.payload();
  PayloadHead h{};
  if (pl.size() >= sizeof h) {
    std::memcpy(&h, pl.data(), sizeof h);
    if (h.magic == kPayloadMagic && sizeof h + h.body_len == pl.size()) {
      r.producer = static_cast<std::int32_t>(h.producer);
      r.poison_group = h.poison_group;
      r.seq = h.seq;
      r.payload_ok = payload_checksum(h, pl.data() + sizeof h, h.body_len) == h.checksum && h.seq == m.id().seq;
    }
  }
  return r;
}

// Consumer j of group g: takes a batch of 1-8 messages, logs each delivery before anything else,
// then nacks its group's poison (logged before the nack: from then on someone else may hold it)
// and acks the rest (logged after the ack returned). A SIGTERM ends it cleanly: "leave" is logged
// before the Consumer gives back what it holds.
int run_consumer(const Config& c, bool dlq_reader) {
  const int g = dlq_reader ? 0 : c.index % c.groups;
  const int fd = open_append(dlq_reader ? fs::path(c.dir) / "dlq.log" : consumer_file(c, g, c.index));
  std::optional<shmq::Channel> ch;
  if (dlq_reader) {
    ch.emplace(shmq::Channel::open(c.name + ".dlq", dlq_options(c)));
  } else {
    ch.emplace(shmq::Channel::open(c.name, channel_options(c)));
  }
  shmq::ConsumerOptions co;
  co.wait = shmq::Wait::Block;
  co.max_in_flight = 16;
  co.exclusive = c.exclusive && !dlq_reader;
  std::optional<shmq::Consumer> cons;
  cons.emplace(join_exclusive([&] { return shmq::Consumer(*ch, dlq_reader ? "dead-letters" : group_name(g), co); }));
  std::mt19937_64 rng(c.seed * 31 + static_cast<std::uint64_t>(c.incarnation));
  std::vector<shmq::Message> batch, got;
  while (!g_stop) {
    if (dlq_reader && c.dlq_lag_ms > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<long long>(rng() % static_cast<std::uint64_t>(2 * c.dlq_lag_ms + 1))));
    if (!dlq_reader && c.lag_ms > 0 && g == c.groups - 1 && c.groups > 1)
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<long long>(rng() % static_cast<std::uint64_t>(2 * c.lag_ms + 1))));
    batch.clear();
    const std::size_t want = dlq_reader ? 1 : 1 + rng() % 8;
    // Half the batches are taken with one poll_batch() (a run of records per cursor move) and
    // acked with one ack() of the batch or ack_up_to() of its last message.
    const bool batched = !dlq_reader && (rng() & 1);
    std::size_t taken = 0;  // of got[], with a batched take
    while (batch.size() < want && !g_stop) {
      std::optional<shmq::Message> m;
      try {
        if (batched) {
          if (taken == 0) {
            got.resize(want);
            const std::size_t n = cons->poll_batch(got, 50ms);
            if (n == 0) break;
            got.resize(n);
          }
          if (taken == got.size()) break;
          m = got[taken++];
        } else {
          m = cons->poll(batch.empty() ? std::chrono::nanoseconds(50ms) : std::chrono::nanoseconds(2ms));
        }
      } catch (const std::exception& e) {
        ConsumerRecord r{};
        r.magic = kConsumerMagic;
        r.kind = kError;
        r.incarnation = static_cast<std::uint32_t>(c.incarnation);
        r.time_ns = now_ns();
        append(fd, r);
        std::fprintf(stderr, "shmq-torture: %s %d: poll threw: %s\n", dlq_reader ? "dlq reader" : "consumer",
                     c.index, e.what());
        return 3;
      }
      if (!m) break;
      ConsumerRecord r = describe(*m, dlq_reader ? kDlq : kDeliver, g, c.incarnation);
      r.time_ns = now_ns();
      const bool injected = !dlq_reader && !c.inject.empty() && g == 0 && r.producer == 0 && r.seq % 997 == 0 &&
                            r.poison_group != g;
      if (injected && c.inject == "corrupt") r.payload_ok = 0;
      if (!(injected && c.inject == "lose")) append(fd, r);
      if (injected && c.inject == "dup") {
        r.time_ns = now_ns() + 1;
        append(fd, r);
      }
      batch.push_back(*m);
    }
    if (batched && !batch.empty() &&
        std::none_of(batch.begin(), batch.end(), [&](const shmq::Message& m) { return describe(m, kAck, g, c.incarnation).poison_group == g; })) {
      const std::size_t acked = (rng() & 1) ? cons->ack(std::span<const shmq::Message>(batch)) : cons->ack_up_to(batch.back());
      const std::uint64_t t = now_ns();  // after the acks returned
      for (const shmq::Message& m : batch) {
        ConsumerRecord r = describe(m, kAck, g, c.incarnation);
        r.time_ns = t;
        if (acked != batch.size()) {  // which one failed is not known: all are reported
          r.kind = kAckFailed;
          r.deliveries = static_cast<std::uint32_t>(shmq::Status::NotHeld);
        }
        append(fd, r);
      }
      continue;
    }
    for (const shmq::Message& m : batch) {
      ConsumerRecord r = describe(m, kAck, g, c.incarnation);
      if (!dlq_reader && r.poison_group == g) {
        r.kind = kNack;
        r.time_ns = now_ns();  // before the nack: from here on another consumer may hold it
        append(fd, r);
        (void)cons->nack(m);
        continue;
      }
      const shmq::Status st = cons->ack(m);
      r.time_ns = now_ns();  // after the ack returned
      if (st != shmq::Status::Ok) {
        r.kind = kAckFailed;
        r.deliveries = static_cast<std::uint32_t>(st);
      }
      append(fd, r);
    }
  }
  ConsumerRecord r{};
  r.magic = kConsumerMagic;
  r.kind = kLeave;
  r.incarnation = static_cast<std::uint32_t>(c.incarnation);
  r.time_ns = now_ns();  // before the Consumer gives back what it holds
  append(fd, r);
  cons.reset();
  return 0;
}

int run_role(const Config& c) {
  install_term_handler();
  alarm(static_cast<unsigned>(c.duration_s + c.drain_timeout_s + 120));  // never outlive the supervisor for long
  try {
    if (c.role == "producer") return run_producer(c);
    if (c.role == "consumer") return run_consumer(c, false);
    if (c.role == "dlq") return run_consumer(c, true);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmq-torture: %s %d (incarnation %d): %s\n", c.role.c_str(), c.index, c.incarnation,
                 e.what());
    return 3;
  }
  std::fprintf(stderr, "shmq-torture: unknown role %s\n", c.role.c_str());
  return 2;
}

// ---- supervisor ----------------------------------------------------------------------------------

struct Proc {
  std::string role;  // producer | consumer | dlq
  int index = 0;
  pid_t pid = 0;
  int incarnation = 0;
  std::string armed;  // SHMQ_CRASH_AT of this incarnation, or empty
};

struct Supervisor {
  Config cfg;
  std::string self;  // /proc/self/exe, resolved
  std::vector<Proc> procs;
  int next_incarnation = 1;
  // Per incarnation: when the supervisor sent its SIGKILL (0: never), or saw it end.
  std::unordered_map<int, std::uint64_t> killed_at;
  // A host crash takes from `start` (before the first SIGKILL) to `end` (every process reaped): a
  // process may still log in between, so a record in that span is from before the crash.
  struct HostCrash {
    std::uint64_t start, end;
    // The durable position the power cut kept the journal up to (records at or past it were
    // dropped); ~0: nothing was dropped (no power cut, or the journal was left whole).
    std::uint64_t durable = ~0ull;
  };
  std::vector<HostCrash> host_crashes;
  // Times the supervisor itself did not run for much longer than its 5 ms sleeps (the whole machine
  // stalled: CPU starvation, an I/O stall, swap): [start, end). The Async bound is a bound on how
  // long the journaler had the machine, so the stalled time before a host crash is not counted in
  // a lost message's age (said in the report).
  std::vector<HostCrash> stalls;
  std::uint64_t last_tick = 0;
  void tick() {
    const std::uint64_t now = now_ns();
    if (last_tick && now - last_tick > kStallNs) {
      stalls.push_back({last_tick, now});
      event("the supervisor did not run for " + std::to_string((now - last_tick) / 1000000) + " ms (a machine stall)");
    }
    last_tick = now;
  }
  static constexpr std::uint64_t kStallNs = 100'000'000;  // 20 sleeps of 5 ms
  // Of [a, b), the time the supervisor saw stalled.
  std::uint64_t stalled_between(std::uint64_t a, std::uint64_t b) const {
    std::uint64_t n = 0;
    for (const HostCrash& s : stalls) {
      const std::uint64_t lo = std::max(a, s.start), hi = std::min(b, s.end);
      if (hi > lo) n += hi - lo;
    }
    return n;
  }
  // Incarnations that died without our SIGKILL (at their armed crash point, or by an error or a
  // crash): when that was seen. The audit takes the time of the last record such a process wrote
  // as its death (it was alive when it wrote it and dead when seen): a little lenient, never strict.
  std::unordered_map<int, std::uint64_t> died_alone;
  std::uint64_t crash_point_deaths = 0;
  std::map<std::string, std::uint64_t> crash_points_fired;
  std::mt19937_64 arm_rng;
  // Who every incarnation was, for the diagnosis of a violation: role, index, armed point.
  std::unordered_map<int, std::string> who;
  std::uint64_t kills = 0, journaler_kills = 0;
  std::uint64_t unexpected_exits = 0;  // a role that died by itself (error, crash) during the run
  std::vector<std::string> unexpected;
  FILE* events = nullptr;

  void event(const std::string& what) {
    std::fprintf(events, "%llu %s\n", static_cast<unsigned long long>(now_ns()), what.c_str());
    std::fflush(events);
  }

  void spawn(Proc& p) {
    p.incarnation = next_incarnation++;
    who[p.incarnation] = p.role + " " + std::to_string(p.index);
    std::vector<std::string> args = {self,
                                     "--role", p.role,
                                     "--name", cfg.name,
                                     "--dir", cfg.dir,
                                     "--index", std::to_string(p.index),
                                     "--incarnation", std::to_string(p.incarnation),
                                     "--seed", std::to_string(cfg.seed),
                                     "--durability", cfg.durability,
                                     "--groups", std::to_string(cfg.groups),
                                     "--poison-every", std::to_string(cfg.poison_every),
                                     "--rate", std::to_string(cfg.rate),
                                     "--flush-interval-ms", std::to_string(cfg.flush_interval_ms),
                                     "--max-deliveries", std::to_string(cfg.max_deliveries),
                                     "--ring-bytes", std::to_string(cfg.ring_bytes),
                                     "--duration", std::to_string(cfg.duration_s)};
    args.push_back("--lag-ms");
    args.push_back(std::to_string(cfg.lag_ms));
    if (cfg.exclusive) {
      args.push_back("--exclusive");
      args.push_back("on");
    }
    args.push_back("--dlq-lag-ms");
    args.push_back(std::to_string(cfg.dlq_lag_ms));
    if (!cfg.inject.empty()) {
      args.push_back("--inject");
      args.push_back(cfg.inject);
    }
    const std::string err = (fs::path(cfg.dir) / (p.role + std::to_string(p.index) + ".err")).string();
    p.armed.clear();
    if (shmq::detail::crash_points_enabled() && cfg.crash_point_share > 0 &&
        std::uniform_real_distribution<double>(0, 1)(arm_rng) < cfg.crash_point_share) {
      std::vector<std::string_view> names(std::begin(shmq::detail::kCrashPoints), std::end(shmq::detail::kCrashPoints));
      if (!cfg.crash_point_names.empty())
        std::erase_if(names, [&](std::string_view n) {
          return std::find(cfg.crash_point_names.begin(), cfg.crash_point_names.end(), n) == cfg.crash_point_names.end();
        });
      const std::string_view point = names[arm_rng() % names.size()];
      p.armed = std::string(point) + ":" + std::to_string(1 + arm_rng() % 50);
      who[p.incarnation] += " armed " + p.armed;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("shmq-torture: fork");
      std::exit(2);
    }
    if (pid == 0) {
      const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      sigset_t term;
      sigemptyset(&term);
      sigaddset(&term, SIGTERM);
      ::sigprocmask(SIG_BLOCK, &term, nullptr);  // kept across exec; the role unblocks it
      if (!p.armed.empty()) ::setenv("SHMQ_CRASH_AT", p.armed.c_str(), 1);
      else ::unsetenv("SHMQ_CRASH_AT");
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(self.c_str(), argv.data());
      _exit(127);
    }
    p.pid = pid;
    event("spawn " + p.role + " " + std::to_string(p.index) + " incarnation " + std::to_string(p.incarnation) +
          " pid " + std::to_string(pid) + (p.armed.empty() ? "" : " armed " + p.armed));
  }

  // A role that ended without being killed by us: note it (an error or a crash is a violation),
  // and start it again.
  void note_exit(Proc& p, int status, bool during_run) {
    std::string how = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                        : "signal " + std::to_string(WTERMSIG(status));
    event("ended " + p.role + " " + std::to_string(p.index) + " incarnation " + std::to_string(p.incarnation) + " " +
          how);
    if (!p.armed.empty() && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) {  // its crash point fired
      died_alone.emplace(p.incarnation, now_ns());
      ++crash_point_deaths;
      ++crash_points_fired[p.armed.substr(0, p.armed.find(':'))];
      p.pid = 0;
      return;
    }
    died_alone.emplace(p.incarnation, now_ns());
    if (during_run || !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      ++unexpected_exits;
      if (unexpected.size() < 20)
        unexpected.push_back(p.role + " " + std::to_string(p.index) + " incarnation " +
                             std::to_string(p.incarnation) + ": " + how + " (see " + p.role +
                             std::to_string(p.index) + ".err)");
    }
    p.pid = 0;
  }

  void reap_and_restart(bool restart) {
    for (Proc& p : procs) {
      if (p.pid == 0) continue;
      int status = 0;
      const pid_t r = ::waitpid(p.pid, &status, WNOHANG);
      if (r == p.pid) {
        note_exit(p, status, true);
        if (restart) spawn(p);
      }
    }
  }

  void kill_proc(Proc& p, const char* why = "") {
    if (p.pid == 0) return;
    killed_at[p.incarnation] = now_ns();  // before the signal: the kill happens after this time
    ::kill(p.pid, SIGKILL);
    int status = 0;
    while (::waitpid(p.pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) note_exit(p, status, true);  // died on its own first
    event("killed " + p.role + " " + std::to_string(p.index) + " incarnation " + std::to_string(p.incarnation) + why);
    p.pid = 0;
  }

  int journaler_pid() {
    try {
      shmq::Channel ch = shmq::Channel::attach(cfg.name, false);
      return ch.stats().journaler_pid;
    } catch (const std::exception&) {
      return 0;
    }
  }

  void unlink_segments() {
    std::error_code ec;
    const std::string prefix = "shmq." + cfg.name;
    for (const auto& e : fs::directory_iterator("/dev/shm", ec)) {
      const std::string f = e.path().filename().string();
      if (f == prefix || f.rfind(prefix + ".", 0) == 0) fs::remove(e.path(), ec);
    }
  }

  // What a power cut does to the journal: every data record at or past the durable position the
  // segment states is gone (its bytes were in the page cache only); half the time the first of them
  // is cut in the middle instead (a torn write). Reads the journal format of journal/format.hpp:
  // records back to back at 8-byte aligned offsets, length at +4, position at +8, flags at +44.
  std::uint64_t power_cut_bytes = 0, power_cuts_torn = 0;
  // Returns the durable position it cut at (~0 when it left the journal whole).
  std::uint64_t cut_unsynced_journal() {
    std::uint64_t durable = 0;
    try {
      shmq::Channel ch = shmq::Channel::attach(cfg.name, false);
      durable = ch.stats().durable_position;
    } catch (const std::exception& e) {
      event(std::string("power cut: no durable position (") + e.what() + "): journal left whole");
      return ~0ull;
    }
    std::error_code ec;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(fs::path(cfg.dir) / "journal" / cfg.name, ec))
      if (e.path().extension() == ".log") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      const std::uint64_t size = fs::file_size(f, ec);
      if (ec) continue;
      const int fd = ::open(f.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) continue;
      // Self-check of the audit (--inject cut-durable): the cut takes the last 256 KiB of durable
      // records too (as a disk that lied about fdatasync would), and the audit must report them
      // as lost although durable.
      const std::uint64_t cut_from = cfg.inject == "cut-durable" ? durable - std::min<std::uint64_t>(durable, 256 << 10) : durable;
      std::uint64_t off = 0;
      bool cut = false;
      unsigned char h[48];
      while (off + sizeof h <= size) {
        if (::pread(fd, h, sizeof h, static_cast<off_t>(off)) != static_cast<ssize_t>(sizeof h)) break;
        std::uint32_t length = 0, flags = 0;
        std::uint64_t position = 0;
        std::memcpy(&length, h + 4, 4);
        std::memcpy(&position, h + 8, 8);
        std::memcpy(&flags, h + 44, 4);
        const std::uint64_t span = (std::uint64_t{length} + 7) & ~std::uint64_t{7};
        if (length < sizeof h || off + span > size) break;  // already a torn tail: recovery's business
        if (flags == 0 && position >= cut_from) {
          std::uint64_t at = off;
          if (arm_rng() % 2) {
            at += 1 + arm_rng() % (span - 1);
            ++power_cuts_torn;
          }
          power_cut_bytes += size - at;
          if (::ftruncate(fd, static_cast<off_t>(at)) != 0) event("power cut: ftruncate failed");
          event("power cut: " + f.filename().string() + " cut at " + std::to_string(at) + " of " +
                std::to_string(size) + " (durable position " + std::to_string(durable) + ")");
          cut = true;
          break;
        }
        off += span;
      }
      ::close(fd);
      (void)cut;
    }
    return durable;
  }

  void host_crash() {
    // Who journals and how far behind, just before: the diagnosis of an Async loss beyond the bound.
    try {
      shmq::Channel ch = shmq::Channel::attach(cfg.name, false);
      const shmq::ChannelStats st = ch.stats();
      std::string host = "none";
      for (const Proc& p : procs)
        if (st.journaler_pid && p.pid == st.journaler_pid) host = p.role + " " + std::to_string(p.index);
      event("before the host crash: write position " + std::to_string(st.write_position) + ", durable position " +
            std::to_string(st.durable_position) + ", journaler pid " + std::to_string(st.journaler_pid) + " (" +
            host + ")");
    } catch (const std::exception& e) {
      event(std::string("before the host crash: no stats: ") + e.what());
    }
    const std::uint64_t t = now_ns();
    for (Proc& p : procs)
      if (p.pid) {
        killed_at[p.incarnation] = t;
        ::kill(p.pid, SIGKILL);
      }
    for (Proc& p : procs)
      if (p.pid) {
        int status = 0;
        while (::waitpid(p.pid, &status, 0) < 0 && errno == EINTR) {
        }
        p.pid = 0;
      }
    const std::uint64_t end = now_ns();
    host_crashes.push_back({t, end, cfg.power_cut ? cut_unsynced_journal() : ~0ull});
    unlink_segments();  // as a reboot does: /dev/shm is gone, the journal stays
    event("host crash");
    for (Proc& p : procs) spawn(p);
  }

  // True when every group of NAME and "dead-letters" of NAME.dlq has nothing left to deliver.
  bool drained(std::string& why) {
    try {
      shmq::Channel ch = shmq::Channel::attach(cfg.name, false);
      for (const shmq::GroupStats& g : ch.stats().groups)
        if (g.lag_messages || g.in_flight || g.given_back) {
          why = "group " + g.name + ": lag " + std::to_string(g.lag_messages) + " in flight " +
                std::to_string(g.in_flight) + " given back " + std::to_string(g.given_back);
          return false;
        }
    } catch (const std::exception& e) {
      why = e.what();
      return false;
    }
    try {
      shmq::Channel d = shmq::Channel::attach(cfg.name + ".dlq", false);
      for (const shmq::GroupStats& g : d.stats().groups)
        if (g.name == "dead-letters" && (g.lag_messages || g.in_flight || g.given_back)) {
          why = "NAME.dlq: lag " + std::to_string(g.lag_messages) + " in flight " + std::to_string(g.in_flight);
          return false;
        }
    } catch (const std::exception&) {
      // no dead letter ever: no NAME.dlq
    }
    return true;
  }

  void stop_role(const std::string& role, int timeout_s) {
    const std::uint64_t term_sent = now_ns();
    for (Proc& p : procs)
      if (p.role == role && p.pid) ::kill(p.pid, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    for (Proc& p : procs) {
      if (p.role != role || p.pid == 0) continue;
      int status = 0;
      for (;;) {
        const pid_t r = ::waitpid(p.pid, &status, WNOHANG);
        if (r == p.pid) {
          if (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) {
            // Our SIGTERM reached it before its handler was in place (seen under TSan, whose
            // start-up is slow): a kill like the others, sent at term_sent.
            killed_at.emplace(p.incarnation, term_sent);
            event("stopped " + p.role + " " + std::to_string(p.index) + " incarnation " +
                  std::to_string(p.incarnation) + " by SIGTERM before its handler");
          } else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            note_exit(p, status, false);
          }
          killed_at.emplace(p.incarnation, now_ns());
          p.pid = 0;
          break;
        }
        if (Clock::now() > deadline) {
          ++unexpected_exits;
          unexpected.push_back(p.role + " " + std::to_string(p.index) + " did not stop on SIGTERM within " +
                               std::to_string(timeout_s) + " s (hang)");
          kill_proc(p);
          break;
        }
        std::this_thread::sleep_for(5ms);
      }
    }
  }

  int run();
  int audit(bool drain_ok, const std::string& drain_why, double seconds);
};

int Supervisor::run() {
  events = std::fopen((fs::path(cfg.dir) / "events.log").c_str(), "w");
  if (!events) return 2;
  // Setup: the channel and its groups exist before anything is published (Start::Earliest), and
  // NAME.dlq with its reader's group, so that no dead letter is published before it is retained.
  try {
    shmq::Channel ch = shmq::Channel::open(cfg.name, channel_options(cfg));
    for (int g = 0; g < cfg.groups; ++g) ch.ensure_group(group_name(g), shmq::Start::Earliest);
    shmq::Channel d = shmq::Channel::open(cfg.name + ".dlq", dlq_options(cfg));
    d.ensure_group("dead-letters", shmq::Start::Earliest);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shmq-torture: setup of channel %s: %s\n", cfg.name.c_str(), e.what());
    return 2;
  }
  for (int i = 0; i < cfg.producers; ++i) procs.push_back(Proc{"producer", i, 0, 0, ""});
  for (int j = 0; j < cfg.consumers; ++j) procs.push_back(Proc{"consumer", j, 0, 0, ""});
  procs.push_back(Proc{"dlq", 0, 0, 0, ""});
  for (Proc& p : procs) spawn(p);

  const bool host_crashes_on = durability_of(cfg) != shmq::Durability::Memory && cfg.host_crash_every_s > 0;
  std::mt19937_64 rng(cfg.seed);
  auto draw_host_crash = [&] {
    std::uniform_real_distribution<double> d(0.5 * cfg.host_crash_every_s, 1.5 * cfg.host_crash_every_s);
    return Clock::now() + std::chrono::milliseconds(static_cast<long long>(d(rng) * 1000));
  };
  const auto start = Clock::now();
  const auto end = start + std::chrono::milliseconds(static_cast<long long>(cfg.duration_s * 1000));
  // The first one within the run however short it is (a sanitizer build runs a few seconds).
  auto next_host_crash = Clock::time_point::max();
  if (host_crashes_on) {
    std::uniform_real_distribution<double> d(0.25, 0.75);
    next_host_crash = Clock::now() + std::chrono::milliseconds(static_cast<long long>(
                                         d(rng) * std::min(cfg.host_crash_every_s, cfg.duration_s) * 1000));
  }
  while (Clock::now() < end) {
    const int wait_ms = cfg.kill_min_ms + static_cast<int>(rng() % static_cast<std::uint64_t>(cfg.kill_max_ms - cfg.kill_min_ms + 1));
    const std::uint64_t pick = rng();
    const auto until = Clock::now() + std::chrono::milliseconds(wait_ms);
    while (Clock::now() < until) {
      tick();
      reap_and_restart(true);
      std::this_thread::sleep_for(5ms);
    }
    tick();
    if (Clock::now() >= end) break;
    if (Clock::now() >= next_host_crash) {
      host_crash();
      next_host_crash = draw_host_crash();
      continue;
    }
    // One in five kills (durable channels) goes to whichever process journals right now.
    Proc* victim = nullptr;
    bool victim_is_journaler = false;
    if (host_crashes_on || durability_of(cfg) != shmq::Durability::Memory) {
      if (pick % 5 == 0) {
        const int jp = journaler_pid();
        for (Proc& p : procs)
          if (jp && p.pid == jp) victim = &p;
        if (victim) ++journaler_kills;
        victim_is_journaler = victim != nullptr;
      }
    }
    if (!victim) victim = &procs[(pick >> 8) % procs.size()];
    kill_proc(*victim, victim_is_journaler ? " (the journaler's host)" : "");
    ++kills;
    spawn(*victim);
  }
  // Stop publishing, let the consumers drain, then stop them.
  reap_and_restart(true);
  stop_role("producer", 10);
  const auto drain_deadline = Clock::now() + std::chrono::seconds(cfg.drain_timeout_s);
  bool drain_ok = false;
  std::string why;
  while (Clock::now() < drain_deadline) {
    reap_and_restart(true);
    if (drained(why)) {
      drain_ok = true;
      break;
    }
    std::this_thread::sleep_for(50ms);
  }
  if (drain_ok) std::this_thread::sleep_for(200ms);  // the dlq reader logs its last records
  stop_role("consumer", 10);
  stop_role("dlq", 10);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return audit(drain_ok, why, seconds);
}

// ---- audit ---------------------------------------------------------------------------------------

struct Delivery {
  std::uint64_t time;
  int incarnation;
  std::uint32_t deliveries;
  std::uint64_t position;
};
struct Release {  // a nack or an ack by one incarnation
  std::uint64_t time;
  int incarnation;
  bool ack;
};

int Supervisor::audit(bool drain_ok, const std::string& drain_why, double seconds) {
  const bool is_async = durability_of(cfg) == shmq::Durability::Async;
  const bool is_memory = durability_of(cfg) == shmq::Durability::Memory;
  std::uint64_t torn = 0;
  // Published: (producer, seq) -> confirmation time; and the ring position it was published at.
  std::map<std::pair<int, std::uint64_t>, std::uint64_t> published, position_of;
  for (int i = 0; i < cfg.producers; ++i)
    for (const OkRecord& r : read_records<OkRecord>(producer_file(cfg, i, ".ok"), kOkMagic, torn)) {
      published.emplace(std::make_pair(i, r.seq), r.time_ns);
      position_of.emplace(std::make_pair(i, r.seq), r.position);
    }
  // A message the journal held when a host crash cut it: confirmed before that crash, at a
  // position below the durable position the power cut kept. Losing one is never within the Async
  // bound, whatever its age (a Duplicate's position is the first copy's: it counts the same).
  auto was_durable = [&](const std::pair<int, std::uint64_t>& key, std::uint64_t ok_time) {
    const std::uint64_t pos = position_of[key];
    for (const HostCrash& h : host_crashes)
      if (h.end >= ok_time) return pos != 0 && h.durable != ~0ull && pos < h.durable;
    return false;
  };
  // Poison target of each message (from the payload the producers wrote, recomputed).
  auto poison_of = [&](int i, std::uint64_t seq) {
    std::mt19937_64 body_rng(cfg.seed ^ (static_cast<std::uint64_t>(i) << 48) ^ seq);
    return (cfg.poison_every > 0 && body_rng() % static_cast<std::uint64_t>(cfg.poison_every) == 0)
               ? static_cast<int>(body_rng() % static_cast<std::uint64_t>(cfg.groups))
               : -1;
  };
  // Confirmed less than the Async bound before a host crash began (or while it went on), not
  // counting the time the machine stalled in between (see `stalls`).
  auto running_age = [&](std::uint64_t ok_time, const HostCrash& h) {
    return h.start > ok_time ? h.start - ok_time - stalled_between(ok_time, h.start) : 0;
  };
  auto within_bound = [&](std::uint64_t ok_time) {
    for (const HostCrash& h : host_crashes)
      if (ok_time <= h.end && running_age(ok_time, h) <= static_cast<std::uint64_t>(cfg.flush_interval_ms + cfg.async_slack_ms) * 1000000ull)
        return true;
    return false;
  };
  auto crash_between = [&](std::uint64_t a, std::uint64_t b) {
    for (const HostCrash& h : host_crashes)
      if (h.end >= a && h.start <= b) return true;
    return false;
  };
  // The deaths between two times, for the diagnosis of a duplicate (the reaper of a dead peer
  // is the usual suspect): "; deaths between: incarnation 12 (consumer 3 armed poll.x:5) died at
  // its crash point, ...".
  auto deaths_between = [&](std::uint64_t a, std::uint64_t b) {
    std::string out;
    int n = 0;
    for (const auto& [inc, t] : killed_at)
      if (t >= a && t <= b && n++ < 4) out += ", incarnation " + std::to_string(inc) + " (" + who[inc] + ") killed";
    for (const auto& [inc, t] : died_alone)
      if (t >= a && t <= b + 200000000ull && n++ < 4)  // seen up to 200 ms after it died
        out += ", incarnation " + std::to_string(inc) + " (" + who[inc] + ") died on its own";
    return out.empty() ? std::string("; no death in between") : "; deaths between" + out;
  };
  // Last record time of every consumer incarnation (for those that died at a crash point).
  std::unordered_map<int, std::uint64_t> last_record;
  auto note_record = [&](const ConsumerRecord& r) {
    auto& t = last_record[static_cast<int>(r.incarnation)];
    t = std::max(t, r.time_ns);
  };
  auto dead_by = [&](int incarnation, std::uint64_t t) {
    auto it = killed_at.find(incarnation);
    if (it != killed_at.end() && it->second <= t) return true;
    if (died_alone.count(incarnation)) {
      auto lr = last_record.find(incarnation);
      return lr == last_record.end() || lr->second <= t;
    }
    return false;
  };

  struct GroupResult {
    std::uint64_t delivered = 0, lost = 0, dup = 0, dup_after_ack = 0, dup_held_twice = 0, redelivered = 0,
                  redelivered_after_crash = 0, corrupt = 0, ack_failed = 0, unconfirmed = 0, never_acked = 0, lost_within = 0,
                  lost_beyond = 0, lost_durable = 0, dlq_lost_host_crash = 0, dlq = 0, errors = 0;
    std::vector<std::string> examples;
    std::vector<std::string> info;
  };
  std::vector<GroupResult> results(static_cast<std::size_t>(cfg.groups));
  // Dead letters seen by the reader: (producer, seq, target group).
  std::set<std::pair<int, std::uint64_t>> in_dlq;
  std::uint64_t dlq_records = 0, dlq_corrupt = 0;
  for (const ConsumerRecord& r : read_records<ConsumerRecord>(fs::path(cfg.dir) / "dlq.log", kConsumerMagic, torn)) {
    if (r.kind != kDlq) continue;
    ++dlq_records;
    if (!r.payload_ok) ++dlq_corrupt;
    else in_dlq.emplace(r.producer, r.seq);
  }
  std::uint64_t total_errors = 0;
  std::uint64_t max_loss_age_ns = 0;
  std::map<std::string, std::uint64_t> dup_suspects;  // duplicates by the death between their deliveries  // of a lost message, the time from its confirmation to the crash
  std::uint64_t corrupt_total = dlq_corrupt;
  for (int g = 0; g < cfg.groups; ++g) {
    GroupResult& res = results[static_cast<std::size_t>(g)];
    std::map<std::pair<int, std::uint64_t>, std::vector<Delivery>> deliveries;
    std::map<std::pair<int, std::uint64_t>, std::vector<Release>> releases;
    std::map<int, std::uint64_t> leave_time;  // incarnation -> logged leave
    for (int j = 0; j < cfg.consumers; ++j) {
      if (j % cfg.groups != g) continue;
      for (const ConsumerRecord& r : read_records<ConsumerRecord>(consumer_file(cfg, g, j), kConsumerMagic, torn)) {
        const int inc = static_cast<int>(r.incarnation);
        note_record(r);
        if (r.kind == kLeave) {
          leave_time[inc] = r.time_ns;
          continue;
        }
        if (r.kind == kError) {  // logged before the process leaves (and gives back what it holds)
          ++res.errors;
          auto [it, fresh] = leave_time.emplace(inc, r.time_ns);
          if (!fresh) it->second = std::min(it->second, r.time_ns);
          continue;
        }
        if (!r.payload_ok || r.producer < 0 || r.producer >= cfg.producers) {
          if (r.kind == kDeliver) {
            ++res.corrupt;
            if (res.examples.size() < 5)
              res.examples.push_back("corrupt payload at position " + std::to_string(r.position) + " (inner id " +
                                     std::to_string(r.inner_producer) + "/" + std::to_string(r.inner_seq) + ")");
          }
          continue;
        }
        const auto key = std::make_pair(r.producer, r.seq);
        if (r.kind == kDeliver) deliveries[key].push_back({r.time_ns, inc, r.deliveries, r.position});
        else if (r.kind == kAck) releases[key].push_back({r.time_ns, inc, true});
        else if (r.kind == kNack) releases[key].push_back({r.time_ns, inc, false});
        else if (r.kind == kAckFailed) ++res.ack_failed;
      }
    }
    total_errors += res.errors;
    corrupt_total += res.corrupt;
    for (auto& [key, ds] : deliveries) {
      std::sort(ds.begin(), ds.end(), [](const Delivery& a, const Delivery& b) { return a.time < b.time; });
      if (!published.count(key)) ++res.unconfirmed;  // delivered, never confirmed to its producer: fine
      ++res.delivered;
      auto& rs = releases[key];
      // Information, not a verdict: no ack was logged, and the group did not deliver it again
      // (a kill between an ack and its record looks the same as a held message dropped on a kill).
      if (poison_of(key.first, key.second) != g &&
          std::none_of(rs.begin(), rs.end(), [](const Release& r) { return r.ack; })) {
        ++res.never_acked;
        const Delivery& last = ds.back();
        if (res.info.size() < 4)
          res.info.push_back("never acked: producer " + std::to_string(key.first) + " seq " + std::to_string(key.second) +
                             " position " + std::to_string(last.position) + ", last delivered to incarnation " +
                             std::to_string(last.incarnation) + " (" + who[last.incarnation] + ")" +
                             (killed_at.count(last.incarnation) ? ", which we killed" : "") +
                             (died_alone.count(last.incarnation) ? ", which died on its own" : "") +
                             (crash_between(last.time, ~0ull) ? ", before a host crash" : ""));
      }
      for (std::size_t k = 1; k < ds.size(); ++k) {
        const Delivery& prev = ds[k - 1];
        const Delivery& next = ds[k];
        if (crash_between(prev.time, next.time)) {
          ++res.redelivered_after_crash;
          continue;
        }
        bool acked = false, nacked = false;
        for (const Release& r : rs)
          if (r.incarnation == prev.incarnation && r.time >= prev.time && r.time <= next.time)
            (r.ack ? acked : nacked) = true;
        const auto lt = leave_time.find(prev.incarnation);
        const bool left = lt != leave_time.end() && lt->second >= prev.time && lt->second <= next.time;
        if (acked) {
          ++res.dup;
          ++res.dup_after_ack;
        } else if (nacked || left || dead_by(prev.incarnation, next.time)) {
          ++res.redelivered;
          continue;
        } else {
          ++res.dup;
          ++res.dup_held_twice;
        }
        {  // the suspect: the crash point a peer died at in between, else a kill, else none
          std::string suspect;
          for (const auto& [inc, t] : died_alone)
            if (t >= prev.time && t <= next.time + 200000000ull) {
              const std::string& w = who[inc];
              const auto at = w.find(" armed ");
              if (at != std::string::npos) suspect = w.substr(at + 7, w.find(':', at) - at - 7);
            }
          if (suspect.empty())
            for (const auto& [inc, t] : killed_at)
              if (t >= prev.time && t <= next.time) suspect = "a SIGKILL";
          ++dup_suspects[suspect.empty() ? "no death in between" : suspect];
        }
        if (res.examples.size() < 8)
          res.examples.push_back(std::string(acked ? "delivered again after its ack" : "held by two consumers at once") +
                                 ": producer " + std::to_string(key.first) + " seq " + std::to_string(key.second) +
                                 " positions " + std::to_string(prev.position) + " -> " + std::to_string(next.position) +
                                 " deliveries " + std::to_string(prev.deliveries) + " -> " +
                                 std::to_string(next.deliveries) + ", incarnations " + std::to_string(prev.incarnation) +
                                 " -> " + std::to_string(next.incarnation) + ", " +
                                 std::to_string((next.time - prev.time) / 1000) + " us apart" +
                                 deaths_between(prev.time, next.time));
      }
    }
    for (const auto& [key, ok_time] : published) {
      const int target = poison_of(key.first, key.second);
      const bool seen = deliveries.count(key) != 0;
      if (target == g) {
        if (in_dlq.count(key)) {
          ++res.dlq;
          continue;
        }
        if (seen && !is_memory) {
          // Delivered in its group, never seen in NAME.dlq, and a host crash came after. Either
          // the power cut took it from the journal before it was dead-lettered (possible only
          // for an Async message confirmed within the bound before the crash: counted as such
          // a loss below), or it was dead-lettered into NAME.dlq, a Memory channel, which the
          // crash dropped before its reader logged it.
          bool crash_after = false;
          for (const HostCrash& h : host_crashes) crash_after |= h.end >= deliveries[key].front().time;
          if (crash_after && !(is_async && within_bound(ok_time))) {
            ++res.dlq_lost_host_crash;
            if (res.examples.size() < 8)
              res.examples.push_back("dead letter lost with NAME.dlq at a host crash: producer " +
                                     std::to_string(key.first) + " seq " + std::to_string(key.second) +
                                     ", delivered " + std::to_string(deliveries[key].size()) + " times");
            continue;
          }
        }
      } else if (seen) {
        continue;
      }
      ++res.lost;
      const bool durable_lost = was_durable(key, ok_time);
      if (durable_lost) ++res.lost_durable;
      const bool within = is_async && !durable_lost && within_bound(ok_time);
      (within ? res.lost_within : res.lost_beyond) += 1;
      {  // how long before the next host crash it was confirmed: the measured Async window
        std::uint64_t age = ~0ull;
        for (const HostCrash& h : host_crashes)
          if (h.end >= ok_time) age = std::min(age, running_age(ok_time, h));
        if (age != ~0ull) max_loss_age_ns = std::max(max_loss_age_ns, age);
      }
      if (!within && res.examples.size() < 8) {
        std::uint64_t before = 0;
        for (const HostCrash& h : host_crashes)
          if (h.start >= ok_time && (before == 0 || h.start - ok_time < before)) before = h.start - ok_time;
        res.examples.push_back(std::string(target == g ? "poison message lost (not in NAME.dlq)" : "lost") +
                               (durable_lost ? " although the journal held it (below the durable position of the crash)" : "") + ": producer " +
                               std::to_string(key.first) + " seq " + std::to_string(key.second) +
                               (before ? ", confirmed " + std::to_string(before / 1000000) + " ms before a host crash (" +
                                             std::to_string(stalled_between(ok_time, ok_time + before) / 1000000) + " ms of it stalled)"
                                       : ", no host crash after its confirmation"));
      }
    }
  }

  // Totals and the verdict.
  GroupResult t;
  for (const GroupResult& r : results) {
    t.delivered += r.delivered;
    t.lost += r.lost;
    t.dup += r.dup;
    t.redelivered += r.redelivered + r.redelivered_after_crash;
    t.lost_within += r.lost_within;
    t.lost_beyond += r.lost_beyond;
    t.lost_durable += r.lost_durable;
    t.dlq += r.dlq;
    t.dlq_lost_host_crash += r.dlq_lost_host_crash;
    t.ack_failed += r.ack_failed;
    t.unconfirmed += r.unconfirmed;
  }
  // Losses that break a promise: all of them, except (Async) those within the stated bound.
  const std::uint64_t bad_losses = is_async ? t.lost_beyond : t.lost;
  const bool pass = bad_losses == 0 && t.dup == 0 && corrupt_total == 0 && t.dlq_lost_host_crash == 0 &&
                    total_errors == 0 && unexpected_exits == 0 && drain_ok;

  for (int g = 0; g < cfg.groups; ++g) {
    const GroupResult& r = results[static_cast<std::size_t>(g)];
    std::printf("group %s: published=%zu delivered=%llu lost=%llu dup=%llu (after_ack=%llu held_twice=%llu) "
                "redelivered=%llu (after_host_crash=%llu) corrupt=%llu dlq=%llu dlq_lost_host_crash=%llu "
                "ack_not_ok=%llu never_acked=%llu (info) errors=%llu\n",
                group_name(g).c_str(), published.size(), static_cast<unsigned long long>(r.delivered),
                static_cast<unsigned long long>(r.lost),
                static_cast<unsigned long long>(r.dup), static_cast<unsigned long long>(r.dup_after_ack),
                static_cast<unsigned long long>(r.dup_held_twice),
                static_cast<unsigned long long>(r.redelivered + r.redelivered_after_crash),
                static_cast<unsigned long long>(r.redelivered_after_crash), static_cast<unsigned long long>(r.corrupt),
                static_cast<unsigned long long>(r.dlq), static_cast<unsigned long long>(r.dlq_lost_host_crash),
                static_cast<unsigned long long>(r.ack_failed), static_cast<unsigned long long>(r.never_acked),
                static_cast<unsigned long long>(r.errors));
    for (const std::string& e : r.examples) std::printf("  g%d: %s\n", g, e.c_str());
    for (const std::string& e : r.info) std::printf("  g%d (info): %s\n", g, e.c_str());
  }
  if (!drain_ok) std::printf("not drained within %d s: %s\n", cfg.drain_timeout_s, drain_why.c_str());
  for (const std::string& u : unexpected) std::printf("unexpected: %s\n", u.c_str());
  if (unexpected_exits > unexpected.size())
    std::printf("unexpected: ... %llu in all\n", static_cast<unsigned long long>(unexpected_exits));
  if (!dup_suspects.empty()) {
    std::printf("duplicates by the death between the two deliveries:");
    for (const auto& [name, n] : dup_suspects) std::printf(" %s=%llu", name.c_str(), static_cast<unsigned long long>(n));
    std::printf("\n");
  }
  if (!crash_points_fired.empty()) {
    std::printf("crash points fired:");
    for (const auto& [name, n] : crash_points_fired) std::printf(" %s=%llu", name.c_str(), static_cast<unsigned long long>(n));
    std::printf("\n");
  }
  if (t.lost && !host_crashes.empty())
    std::printf("losses: the oldest lost message was confirmed %.1f ms of running time before the host crash began "
                "(bound: %d + %d ms; stalled time not counted)\n",
                static_cast<double>(max_loss_age_ns) / 1e6, cfg.flush_interval_ms, cfg.async_slack_ms);
  if (!stalls.empty()) {
    std::uint64_t total = 0, longest = 0;
    for (const HostCrash& s : stalls) {
      total += s.end - s.start;
      longest = std::max(longest, s.end - s.start);
    }
    std::printf("machine stalls: the supervisor did not run for %zu stretches over %llu ms (%.1f ms longest, %.1f ms in all)\n",
                stalls.size(), static_cast<unsigned long long>(kStallNs / 1000000), static_cast<double>(longest) / 1e6,
                static_cast<double>(total) / 1e6);
  }
  if (!host_crashes.empty())
    std::printf("power cuts: %llu journal bytes past the durable position dropped, %llu records torn\n",
                static_cast<unsigned long long>(power_cut_bytes), static_cast<unsigned long long>(power_cuts_torn));
  if (torn) std::printf("note: %llu log records torn by kills were skipped\n", static_cast<unsigned long long>(torn));
  if (!cfg.inject.empty()) std::printf("self-check: --inject %s was on\n", cfg.inject.c_str());
  std::printf("reproduce: %s --durability %s --seed %llu --duration %g --producers %d --consumers %d --groups %d%s\n",
              self.c_str(), cfg.durability.c_str(), static_cast<unsigned long long>(cfg.seed), cfg.duration_s,
              cfg.producers, cfg.consumers, cfg.groups, cfg.exclusive ? " --exclusive on" : "");
  char line[1024];
  std::snprintf(line, sizeof line,
                "torture seed=%llu durability=%s dur=%.0fs kills=%llu journaler_kills=%llu crash_points=%llu host_crashes=%zu "
                "published=%zu delivered=%llu lost=%llu dup=%llu redelivered=%llu corrupt=%llu dlq=%llu "
                "dlq_lost_host_crash=%llu async_lost_within_bound=%llu beyond=%llu (durable=%llu) errors=%llu drained=%s => %s",
                static_cast<unsigned long long>(cfg.seed), cfg.durability.c_str(), seconds,
                static_cast<unsigned long long>(kills), static_cast<unsigned long long>(journaler_kills),
                static_cast<unsigned long long>(crash_point_deaths), host_crashes.size(), published.size(), static_cast<unsigned long long>(t.delivered),
                static_cast<unsigned long long>(t.lost), static_cast<unsigned long long>(t.dup),
                static_cast<unsigned long long>(t.redelivered), static_cast<unsigned long long>(corrupt_total),
                static_cast<unsigned long long>(t.dlq), static_cast<unsigned long long>(t.dlq_lost_host_crash),
                static_cast<unsigned long long>(is_async ? t.lost_within : 0),
                static_cast<unsigned long long>(is_async ? t.lost_beyond : 0), static_cast<unsigned long long>(t.lost_durable),
                static_cast<unsigned long long>(std::max<std::uint64_t>(total_errors, unexpected_exits)), drain_ok ? "yes" : "no",
                pass ? "PASS" : "FAIL");
  std::printf("%s\n", line);
  if (cfg.json) {
    std::printf("{\"seed\":%llu,\"durability\":\"%s\",\"seconds\":%.1f,\"kills\":%llu,\"journaler_kills\":%llu,"
                "\"host_crashes\":%zu,\"published\":%zu,\"delivered\":%llu,\"lost\":%llu,\"dup\":%llu,"
                "\"redelivered\":%llu,\"corrupt\":%llu,\"dlq\":%llu,\"dlq_lost_host_crash\":%llu,"
                "\"async_lost_within_bound\":%llu,\"async_lost_beyond\":%llu,\"errors\":%llu,\"drained\":%s,"
                "\"pass\":%s}\n",
                static_cast<unsigned long long>(cfg.seed), cfg.durability.c_str(), seconds,
                static_cast<unsigned long long>(kills), static_cast<unsigned long long>(journaler_kills),
                host_crashes.size(), published.size(), static_cast<unsigned long long>(t.delivered),
                static_cast<unsigned long long>(t.lost), static_cast<unsigned long long>(t.dup),
                static_cast<unsigned long long>(t.redelivered), static_cast<unsigned long long>(corrupt_total),
                static_cast<unsigned long long>(t.dlq), static_cast<unsigned long long>(t.dlq_lost_host_crash),
                static_cast<unsigned long long>(is_async ? t.lost_within : 0),
                static_cast<unsigned long long>(is_async ? t.lost_beyond : 0),
                static_cast<unsigned long long>(std::max<std::uint64_t>(total_errors, unexpected_exits)), drain_ok ? "true" : "false",
                pass ? "true" : "false");
  }
  std::fflush(stdout);
  return pass ? 0 : 1;
}

// ---- main ----------------------------------------------------------------------------------------

void usage() {
  std::fprintf(stderr,
               "usage: shmq-torture [--durability memory|async|sync] [--seed N] [--duration SECONDS]\n"
               "                    [--producers N] [--consumers M] [--groups K] [--kill-min-ms 20] [--kill-max-ms 200]\n"
               "                    [--host-crash-every S (0: none; never on memory)] [--poison-every N (0: none)]\n"
               "                    [--rate MSGS_PER_S_PER_PRODUCER] [--flush-interval-ms 5] [--async-slack-ms 50]\n"
               "                    [--max-deliveries 3] [--ring-bytes 1048576] [--drain-timeout S] [--dir DIR]\n"
               "                    [--keep] [--json] [--inject lose|dup|corrupt|cut-durable (self-check of the audit)]\n"
               "                    [--crash-point-share 0.3 (crash-point builds: share of starts armed)]\n"
               "                    [--crash-points NAME,NAME (only these points; default: all of kCrashPoints)]\n"
               "                    [--power-cut on|off (host crashes drop the journal past the durable position)]\n"
               "                    [--lag-ms N (the last group sleeps 0-2N ms after each batch: it lags)]\n"
               "                    [--dlq-lag-ms N (the dead-letter reader sleeps 0-2N ms after each record)]\n"
               "                    [--exclusive on|off (exclusive producer and consumers: --producers 1, --consumers = --groups)]\n");
}

bool parse(int argc, char** argv, Config& c) {
  for (int a = 1; a < argc; ++a) {
    const std::string k = argv[a];
    if (k == "--keep") { c.keep = true; continue; }
    if (k == "--json") { c.json = true; continue; }
    if (k == "--help" || k == "-h") return false;
    if (a + 1 >= argc) return false;
    const std::string v = argv[++a];
    try {
      if (k == "--durability") c.durability = v;
      else if (k == "--seed") { c.seed = std::stoull(v); c.seed_given = true; }
      else if (k == "--duration") c.duration_s = std::stod(v);
      else if (k == "--producers") c.producers = std::stoi(v);
      else if (k == "--consumers") c.consumers = std::stoi(v);
      else if (k == "--groups") c.groups = std::stoi(v);
      else if (k == "--kill-min-ms") c.kill_min_ms = std::stoi(v);
      else if (k == "--kill-max-ms") c.kill_max_ms = std::stoi(v);
      else if (k == "--host-crash-every") c.host_crash_every_s = std::stod(v);
      else if (k == "--poison-every") c.poison_every = std::stoi(v);
      else if (k == "--rate") c.rate = std::stoi(v);
      else if (k == "--flush-interval-ms") c.flush_interval_ms = std::stoi(v);
      else if (k == "--async-slack-ms") c.async_slack_ms = std::stoi(v);
      else if (k == "--max-deliveries") c.max_deliveries = std::stoi(v);
      else if (k == "--ring-bytes") c.ring_bytes = std::stoull(v);
      else if (k == "--drain-timeout") c.drain_timeout_s = std::stoi(v);
      else if (k == "--dir") c.dir = v;
      else if (k == "--inject") c.inject = v;
      else if (k == "--crash-point-share") c.crash_point_share = std::stod(v);
      else if (k == "--crash-points") {
        for (std::size_t at = 0; at <= v.size();) {
          const std::size_t comma = std::min(v.find(',', at), v.size());
          if (comma > at) c.crash_point_names.push_back(v.substr(at, comma - at));
          at = comma + 1;
        }
      }
      else if (k == "--power-cut") c.power_cut = v != "0" && v != "off";
      else if (k == "--lag-ms") c.lag_ms = std::stoi(v);
      else if (k == "--exclusive") c.exclusive = v != "0" && v != "off";
      else if (k == "--dlq-lag-ms") c.dlq_lag_ms = std::stoi(v);
      else if (k == "--role") c.role = v;
      else if (k == "--name") c.name = v;
      else if (k == "--index") c.index = std::stoi(v);
      else if (k == "--incarnation") c.incarnation = std::stoi(v);
      else return false;
    } catch (const std::exception&) {
      return false;
    }
  }
  if (c.durability != "memory" && c.durability != "async" && c.durability != "sync") return false;
  if (c.producers < 1 || c.consumers < 1 || c.groups < 1 || c.groups > c.consumers) return false;
  if (c.role.empty() && c.exclusive && (c.producers != 1 || c.consumers != c.groups)) {  // (children do not get the counts)
    std::fprintf(stderr, "shmq-torture: --exclusive on needs --producers 1 and --consumers equal to --groups\n");
    return false;
  }
  if (c.kill_min_ms < 1 || c.kill_max_ms < c.kill_min_ms) return false;
  for (const std::string& n : c.crash_point_names)
    if (std::find(std::begin(shmq::detail::kCrashPoints), std::end(shmq::detail::kCrashPoints), n) ==
        std::end(shmq::detail::kCrashPoints)) {
      std::fprintf(stderr, "shmq-torture: no crash point named %s in shm/crash_point.hpp\n", n.c_str());
      return false;
    }
  if (!c.inject.empty() && c.inject != "lose" && c.inject != "dup" && c.inject != "corrupt" && c.inject != "cut-durable")
    return false;
  if (c.max_deliveries < 1 || c.rate < 1 || c.duration_s <= 0) return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config cfg;
  if (!parse(argc, argv, cfg)) {
    usage();
    return 2;
  }
  if (!cfg.role.empty()) return run_role(cfg);

  if (!cfg.seed_given) cfg.seed = std::random_device{}() ^ (now_ns() & 0xffffffff);
  std::printf("shmq-torture: seed %llu (replay with --seed %llu)\n", static_cast<unsigned long long>(cfg.seed),
              static_cast<unsigned long long>(cfg.seed));
  std::fflush(stdout);
  Supervisor s;
  std::error_code ec;
  s.self = fs::read_symlink("/proc/self/exe", ec).string();
  if (s.self.empty()) s.self = argv[0];
  const bool own_dir = cfg.dir.empty();
  if (own_dir) {
    const char* tmp = std::getenv("TMPDIR");
    cfg.dir = (fs::path(tmp && *tmp ? tmp : "/tmp") / ("shmq-torture-" + std::to_string(::getpid()))).string();
  }
  fs::create_directories(cfg.dir, ec);
  if (ec) {
    std::fprintf(stderr, "shmq-torture: cannot create %s: %s\n", cfg.dir.c_str(), ec.message().c_str());
    return 2;
  }
  cfg.name = "torture-" + std::to_string(::getpid());
  s.cfg = cfg;
  s.arm_rng.seed(cfg.seed ^ 0x9e3779b97f4a7c15ull);
  s.unlink_segments();
  const int rc = s.run();
  s.unlink_segments();
  // A self-check (--inject) fails on purpose: its directory is not worth keeping.
  if ((rc == 0 || !cfg.inject.empty()) && own_dir && !cfg.keep) {
    fs::remove_all(cfg.dir, ec);
  } else {
    std::printf("logs kept in %s\n", cfg.dir.c_str());
  }
  return rc;
}
