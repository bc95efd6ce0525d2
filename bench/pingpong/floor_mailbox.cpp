// floor_mailbox.cpp: the latency floor, one mailbox each way in shared memory. At 64 B a mailbox
// is one cache line: the message, whose first word (a frame's sequence, harness.hpp) is the
// mailbox's sequence word. The sender writes the rest of the message, then stores the sequence
// word (release); the receiver spins on that word (acquire) until it says the sequence it waits
// for, then copies the mailbox out (one line, already in its cache at 64 B) and checks the copy.
// Copy, not read in place: a mailbox has one slot, and in ping-pong the echo goes out before the
// ponger checks the ping, so the pinger may already be writing the next ping into it.
// Contract: one sender and one receiver process per mailbox; the sender writes message N+1 only
// after the receiver has copied N out (ping-pong guarantees it: the pong is the proof). That is
// why it is a latency floor only: a depth-1 queue has no throughput worth a row.
// The word starts at kEmpty, which no sequence has.

#include "transport.hpp"

namespace pingpong {
namespace {

constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

// A mailbox of the message size rounded up to 64, in its own shared map (page aligned).
struct Mailbox {
  explicit Mailbox(std::size_t size) : map((size + 63) / 64 * 64) {
    new (map.data()) std::atomic<std::uint64_t>(kEmpty);
  }
  std::byte* bytes() const { return static_cast<std::byte*>(map.data()); }
  std::atomic<std::uint64_t>& seq() const {
    return *std::launder(reinterpret_cast<std::atomic<std::uint64_t>*>(map.data()));
  }
  SharedMap map;
};

struct Tx {
  const Mailbox& box;
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    std::uint64_t word;
    std::memcpy(&word, m.data(), sizeof word);
    if (word != seq) die("mailbox: message %" PRIu64 " starts with %" PRIu64 ", not its sequence", seq, word);
    std::memcpy(box.bytes() + sizeof word, m.data() + sizeof word, m.size() - sizeof word);
    // release: publishes the bytes written above; pairs with the receiver's acquire in recv().
    box.seq().store(word, std::memory_order_release);
  }
};

struct Rx {
  const Mailbox& box;
  std::vector<std::byte> copy;
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    // acquire: pairs with the sender's release store; the mailbox's bytes are visible.
    if (box.seq().load(std::memory_order_acquire) != seq) {
      w.reset();
      while (box.seq().load(std::memory_order_acquire) != seq) w.spin(seq);
    }
    std::memcpy(copy.data(), &seq, sizeof seq);  // the word we just read
    std::memcpy(copy.data() + sizeof seq, box.bytes() + sizeof seq, copy.size() - sizeof seq);
    return copy;
  }
  void release() {}
};

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("floor-mailbox", "floor: mailbox (1 line each way)", "spin", Kind::Floor, p);
  r.has_throughput = false;
  Mailbox ping(p.size), pong(p.size);
  r.latency = latency_case(
      cfg, p, label(r, "latency"),
      [&](PairControl& c, std::uint64_t* samples) {
        Tx out{ping};
        Rx in{pong, std::vector<std::byte>(p.size)};
        run_pinger(cfg, p, c, samples, out, in);
      },
      [&](PairControl& c) {
        Tx out{pong};
        Rx in{ping, std::vector<std::byte>(p.size)};
        run_ponger(cfg, p, c, out, in);
      });
  return r;
}

const Register reg{{.key = "floor-mailbox", .order = 20, .kind = Kind::Floor, .run = run}};

}  // namespace
}  // namespace pingpong
