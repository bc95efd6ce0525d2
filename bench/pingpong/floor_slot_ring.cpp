// floor_slot_ring.cpp: the throughput floor, a per-slot-sequence SPSC ring in shared memory
// (Vyukov's bounded queue, single producer, single consumer).
//
// Contract: one producer process sends, one consumer process receives. Position N (0, 1, ...) is
// slot N & mask. Each slot carries its sequence in its first word: the consumer at position N
// waits until that word says N (acquire), reads the slot in place, and moves on; it publishes its
// head (the first position it has not finished) only every kPublishEvery messages. The producer
// keeps the head it last read and reads the shared one only when that copy says the ring is full
// (it then waits until the head moves). Per message the only line that moves between the cores is
// the slot's own; the head's line moves once per kPublishEvery messages.
//
// The slot's sequence word is the message's own first word: a frame (harness.hpp) starts with its
// sequence, which is the position here, so a 64 B message is exactly one cache line, sequence
// included (a separate word would make it two lines). The producer checks that the word it
// publishes is its position (a frame that is not would hang the consumer: it dies instead).
// The ring starts with every slot's word at kEmpty, which no position has.

#include "transport.hpp"

namespace pingpong {
namespace {

constexpr std::uint64_t kEmpty = ~std::uint64_t{0};

struct alignas(64) SlotRing {
  alignas(64) std::atomic<std::uint64_t> head{0};  // consumer's published head; pairs with the producer's acquire
  alignas(64) std::uint64_t capacity = 0;          // slots, power of two (written before fork)
  std::uint64_t slot_bytes = 0;                    // a multiple of 64 (written before fork)
  std::uint64_t publish_every = 0;                 // the consumer stores head every this many messages
  // capacity slots of slot_bytes follow, 64-byte aligned.

  std::byte* slot(std::uint64_t pos) {
    return reinterpret_cast<std::byte*>(this + 1) + (pos & (capacity - 1)) * slot_bytes;
  }
  // The slot's sequence: its first word (placement-new'd by the parent before fork).
  std::atomic<std::uint64_t>& seq_of(std::uint64_t pos) {
    return *std::launder(reinterpret_cast<std::atomic<std::uint64_t>*>(slot(pos)));
  }
};
static_assert(sizeof(SlotRing) % 64 == 0);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

struct Tx {
  SlotRing& ring;
  Waiter w;
  std::uint64_t tail = 0;         // next position to write (this process only)
  std::uint64_t head_cached = 0;  // the head as last read
  void send(std::span<const std::byte> m, std::uint64_t seq) {
    if (tail - head_cached >= ring.capacity) {
      w.reset();
      // acquire: pairs with the consumer's release store of head; the slots below it are read.
      while (tail - (head_cached = ring.head.load(std::memory_order_acquire)) >= ring.capacity) w.spin(seq);
    }
    std::uint64_t word;
    std::memcpy(&word, m.data(), sizeof word);
    if (word != tail) die("slot ring: message %" PRIu64 " starts with %" PRIu64 ", not its position", tail, word);
    std::memcpy(ring.slot(tail) + sizeof word, m.data() + sizeof word, m.size() - sizeof word);
    // release: publishes the slot's bytes written above; pairs with the consumer's acquire in recv().
    ring.seq_of(tail).store(word, std::memory_order_release);
    ++tail;
  }
};

struct Rx {
  SlotRing& ring;
  std::size_t size;
  std::uint64_t pos = 0;  // next position to read (this process only)
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) {
    std::atomic<std::uint64_t>& word = ring.seq_of(pos);
    // acquire: pairs with the producer's release store of the word; the slot's bytes are visible.
    if (word.load(std::memory_order_acquire) != pos) {
      w.reset();
      while (word.load(std::memory_order_acquire) != pos) w.spin(seq);
    }
    return {ring.slot(pos), size};
  }
  void release() {
    ++pos;
    // release: our reads of the slots below pos are done; pairs with the producer's acquire of head.
    if (pos % ring.publish_every == 0) ring.head.store(pos, std::memory_order_release);
  }
};

// A ring of RING_BYTES in its own shared map, slots of the message size rounded up to 64.
struct RingMap {
  static std::size_t slot_bytes(std::size_t size) { return (size + 63) / 64 * 64; }
  static std::size_t slots(std::size_t ring_bytes, std::size_t size) {
    return std::max<std::size_t>(4, std::bit_floor(ring_bytes / slot_bytes(size)));
  }
  RingMap(std::size_t ring_bytes, std::size_t size)
      : map(sizeof(SlotRing) + slots(ring_bytes, size) * slot_bytes(size)), ring(new (map.data()) SlotRing()) {
    ring->capacity = slots(ring_bytes, size);
    ring->slot_bytes = slot_bytes(size);
    // Every 256 messages; a ring of fewer than 1024 slots (64 KiB messages in a 1 MiB ring) every
    // quarter of it, so that the producer never waits for a head the consumer will not publish.
    ring->publish_every = std::min<std::uint64_t>(256, ring->capacity / 4);
    for (std::uint64_t i = 0; i < ring->capacity; ++i) new (ring->slot(i)) std::atomic<std::uint64_t>(kEmpty);
  }
  SharedMap map;
  SlotRing* ring;
};

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("floor-slots", "floor: slot-sequence ring", "spin", Kind::Floor, p);
  RingMap pings(cfg.lat_ring_bytes, p.size), pongs(cfg.lat_ring_bytes, p.size), stream(cfg.ring_bytes, p.size);
  r.wait += " (head every " + std::to_string(stream.ring->publish_every) + ")";
  run_both(
      r, cfg, p, p.ring_warmup, pings, pongs, stream,
      [&](RingMap& m) { return Tx{*m.ring, Waiter(cfg.stall_s, "waiting for ring space")}; },
      [&](RingMap& m) { return Rx{*m.ring, p.size}; });
  return r;
}

const Register reg{{.key = "floor-slots", .order = 21, .kind = Kind::Floor, .run = run}};

}  // namespace
}  // namespace pingpong
