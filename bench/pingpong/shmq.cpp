// shmq.cpp: shmq itself, four times: Wait::Spin (consumers poll spinning), Wait::Spin with an
// exclusive producer and consumer (ProducerOptions::exclusive, ConsumerOptions::exclusive: claims
// and takes with plain stores), the same with the receiver taking batches (poll_batch of 64,
// ack_up_to), and Wait::Block (they sleep on the futex). Every channel is Durability::Memory, created by the parent (so that the children only
// attach) and removed at the end; its journal directory is the session's.
// The ends: the sender publishes the frame (publish options: the same wait, the stall limit as the
// timeout); the receiver polls one message, checks its inner id (the same producer, each one the
// next: nothing lost or duplicated below the frame's sequence) and that it was delivered once,
// returns its payload in place, and acks it on release() (after the pinger's stamp, after the
// ponger's echo: acks are outside the timed path).

#include <shmq/shmq.hpp>

#include <chrono>
#include <optional>
#include <type_traits>
#include <vector>

#include "transport.hpp"

namespace pingpong {
namespace {

using namespace std::chrono_literals;

shmq::ChannelOptions channel_options(std::size_t ring_bytes, const std::filesystem::path& journal_dir) {
  shmq::ChannelOptions o;
  o.ring_bytes = ring_bytes;
  o.max_message_bytes = std::min(o.max_message_bytes, ring_bytes / 4);  // the channel's limit
  o.durability = shmq::Durability::Memory;
  o.journal_dir = journal_dir;
  return o;
}

shmq::ConsumerOptions consumer_options(shmq::Wait wait, bool exclusive) {
  return {.start = shmq::Start::Earliest, .wait = wait, .max_in_flight = 64, .exclusive = exclusive};
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

shmq::PublishOptions publish_options(const Config& cfg, shmq::Wait wait) {
  shmq::PublishOptions popts;
  popts.timeout = std::chrono::nanoseconds(static_cast<std::int64_t>(cfg.stall_s * 1e9));
  popts.wait = wait;
  return popts;
}

struct Tx {
  shmq::Channel ch;
  shmq::Producer out;
  shmq::PublishOptions popts;
  Tx(const std::string& name, std::size_t ring_bytes, const Session& s, shmq::Wait wait, bool exclusive)
      : ch(shmq::Channel::open(name, channel_options(ring_bytes, s.dir))),
        out(ch, "sender", shmq::ProducerOptions{.exclusive = exclusive}),
        popts(publish_options(s.cfg, wait)) {}
  void send(std::span<const std::byte> m, std::uint64_t seq) { publish_or_die(out, m, popts, seq); }
};

struct Rx {
  shmq::Channel ch;
  shmq::Consumer in;
  IdCheck ids;
  std::optional<shmq::Message> held;  // from recv() to release()
  std::uint64_t held_seq = 0;
  Rx(const std::string& name, std::size_t ring_bytes, const Session& s, shmq::Wait wait, bool exclusive)
      : ch(shmq::Channel::open(name, channel_options(ring_bytes, s.dir))),
        in(ch, "receiver", consumer_options(wait, exclusive)) {}
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    held.emplace(poll_one(in, w, seq));
    held_seq = seq;
    ids.next(*held, seq);
    return held->payload();
  }
  void release() {
    ack_or_die(in, *held, held_seq);
    held.reset();
  }
};

// The receiver of the batched row: takes up to 64 messages with one poll_batch() (one move of the
// group's cursor), hands them out one by one, and acks them all with one ack_up_to() when the
// last is released (acks stay outside the timed path, as above).
struct BatchRx {
  shmq::Channel ch;
  shmq::Consumer in;
  IdCheck ids;
  std::vector<shmq::Message> batch = std::vector<shmq::Message>(64);
  std::size_t have = 0, next = 0;  // batch[next .. have) not handed out yet
  std::uint64_t held_seq = 0;
  BatchRx(const std::string& name, std::size_t ring_bytes, const Session& s, shmq::Wait wait, bool exclusive)
      : ch(shmq::Channel::open(name, channel_options(ring_bytes, s.dir))),
        in(ch, "receiver", consumer_options(wait, exclusive)) {}
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    if (next == have) {
      w.reset();
      for (next = 0; (have = in.poll_batch(batch, 10ms)) == 0;) {
        const shmq::Status st = in.status();
        if (st != shmq::Status::Timeout && st != shmq::Status::WouldBlock)
          die("poll_batch returned nothing with status %s while waiting for sequence %" PRIu64, shmq::to_string(st), seq);
        w.check(seq);
      }
    }
    held_seq = seq;
    ids.next(batch[next], seq);
    return batch[next++].payload();
  }
  void release() {
    if (next == have && in.ack_up_to(batch[have - 1]) != have)
      die("ack_up_to of the batch ending at sequence %" PRIu64 " acked fewer than its %zu messages", held_seq, have);
  }
};

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

// A channel and the ring it gets (the latency channels are small: see Config::lat_ring_bytes).
struct Chan {
  std::string name;
  std::size_t ring_bytes;
};

template <class Receiver = Rx>
Row run_shmq(Session& s, const Plan& p, shmq::Wait wait, bool exclusive = false) {
  const Config& cfg = s.cfg;
  const bool spin = wait == shmq::Wait::Spin;
  constexpr bool batched = std::is_same_v<Receiver, BatchRx>;
  Row r = batched     ? make_row("shmq-batch", "shmq (Wait::Spin, exclusive ends, poll_batch of 64)", "spin (poll_batch)", Kind::Shmq, p)
          : exclusive ? make_row("shmq-excl", "shmq (Wait::Spin, exclusive ends)", "spin (poll)", Kind::Shmq, p)
                      : make_row(spin ? "shmq" : "shmq-block", spin ? "shmq (Wait::Spin)" : "shmq (Wait::Block)",
                                 spin ? "spin (poll)" : "futex (poll)", Kind::Shmq, p);
  const std::string base = "shmqpp_" + std::to_string(::getpid()) + "_" + std::to_string(p.size) +
                           (batched ? "_batch" : exclusive ? "_excl" : spin ? "_spin" : "_block");
  Chan ping{base + "_ping", cfg.lat_ring_bytes}, pong{base + "_pong", cfg.lat_ring_bytes},
      stream{base + "_stream", cfg.ring_bytes};
  bool created = true;
  for (const Chan* c : {&ping, &pong, &stream}) created = created && create_channel(c->ring_bytes, c->name, s.dir);
  if (created)
    run_both(
        r, cfg, p, p.ring_warmup, ping, pong, stream,
        [&](const Chan& c) { return Tx(c.name, c.ring_bytes, s, wait, exclusive); },
        [&](const Chan& c) { return Receiver(c.name, c.ring_bytes, s, wait, exclusive); });
  for (const Chan* c : {&ping, &pong, &stream})
    if (shmq::Channel::exists(c->name)) s.cleanup_ok = remove_channel(c->name, s.dir) && s.cleanup_ok;
  return r;
}

Row run_spin(Session& s, const Plan& p) { return run_shmq(s, p, shmq::Wait::Spin); }
Row run_block(Session& s, const Plan& p) { return run_shmq(s, p, shmq::Wait::Block); }
Row run_exclusive(Session& s, const Plan& p) { return run_shmq(s, p, shmq::Wait::Spin, true); }
Row run_batched(Session& s, const Plan& p) { return run_shmq<BatchRx>(s, p, shmq::Wait::Spin, true); }

const Register spin_reg{{.key = "shmq", .order = 10, .kind = Kind::Shmq, .run = run_spin}};
const Register block_reg{{.key = "shmq-block", .order = 11, .kind = Kind::Shmq, .run = run_block}};
const Register exclusive_reg{{.key = "shmq-excl", .order = 12, .kind = Kind::Shmq, .run = run_exclusive}};
const Register batched_reg{{.key = "shmq-batch", .order = 13, .kind = Kind::Shmq, .run = run_batched}};

}  // namespace
}  // namespace pingpong
