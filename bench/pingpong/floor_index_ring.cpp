// floor_index_ring.cpp: the third floor, a reference (today's floor before the physical ones came):
// a bare single-producer single-consumer ring of fixed-size slots in shared memory with a head and
// a tail index. Contract: one producer process calls push, one consumer process calls peek then
// release. Positions never wrap; the slot is position & mask. Head and tail are on their own cache
// lines; each side keeps a private copy of the other's index and reads the shared one only when
// its copy says full (producer) or empty (consumer): one look at the tail serves every slot filled
// by then. Unlike the slot-sequence ring the consumer stores its head after every message, and
// every message moves the tail's line as well as the slot's: two lines per message.

#include "transport.hpp"

namespace pingpong {
namespace {

struct alignas(64) IndexRing {
  alignas(64) std::atomic<std::uint64_t> head{0};  // next slot to read; written by the consumer
  alignas(64) std::uint64_t tail_cached = 0;       // consumer's copy of tail
  alignas(64) std::atomic<std::uint64_t> tail{0};  // next slot to write; written by the producer
  alignas(64) std::uint64_t head_cached = 0;       // producer's copy of head
  alignas(64) std::uint64_t capacity = 0;          // slots, power of two
  std::uint64_t slot_bytes = 0;                    // a multiple of 64
  // capacity slots of slot_bytes follow, 64-byte aligned.

  std::byte* slot(std::uint64_t pos) {
    return reinterpret_cast<std::byte*>(this + 1) + (pos & (capacity - 1)) * slot_bytes;
  }
  static std::size_t bytes_for(std::size_t capacity, std::size_t slot_bytes) {
    return sizeof(IndexRing) + capacity * slot_bytes;
  }

  void push(std::span<const std::byte> m, Waiter& w, std::uint64_t seq) {
    const std::uint64_t t = tail.load(std::memory_order_relaxed);  // our own index
    if (t - head_cached >= capacity) {
      w.reset();
      // acquire: pairs with the release store of head in release(); the slot is free to overwrite.
      while (t - (head_cached = head.load(std::memory_order_acquire)) >= capacity) w.spin(seq);
    }
    std::memcpy(slot(t), m.data(), m.size());
    // release: publishes the slot written above; pairs with the acquire load of tail in peek().
    tail.store(t + 1, std::memory_order_release);
  }

  // The next slot, read in place until release().
  std::span<const std::byte> peek(std::size_t size, Waiter& w, std::uint64_t seq) {
    const std::uint64_t h = head.load(std::memory_order_relaxed);  // our own index
    if (h == tail_cached) {
      w.reset();
      // acquire: pairs with the release store of tail in push(); the slot's bytes are visible.
      while (h == (tail_cached = tail.load(std::memory_order_acquire))) w.spin(seq);
    }
    return {slot(h), size};
  }

  void release() {
    // release: our reads of the slot are done; pairs with the acquire load of head in push().
    head.store(head.load(std::memory_order_relaxed) + 1, std::memory_order_release);
  }
};
static_assert(sizeof(IndexRing) % 64 == 0);

struct Tx {
  IndexRing& ring;
  Waiter w;
  void send(std::span<const std::byte> m, std::uint64_t seq) { ring.push(m, w, seq); }
};
struct Rx {
  IndexRing& ring;
  std::size_t size;
  std::span<const std::byte> recv(std::uint64_t seq, Waiter& w) { return ring.peek(size, w, seq); }
  void release() { ring.release(); }
};

// A ring of RING_BYTES in its own shared map, slots of the message size rounded up to 64.
struct RingMap {
  static std::size_t slot_bytes(std::size_t size) { return (size + 63) / 64 * 64; }
  static std::size_t slots(std::size_t ring_bytes, std::size_t size) {
    return std::max<std::size_t>(2, std::bit_floor(ring_bytes / slot_bytes(size)));
  }
  RingMap(std::size_t ring_bytes, std::size_t size)
      : map(IndexRing::bytes_for(slots(ring_bytes, size), slot_bytes(size))), ring(new (map.data()) IndexRing()) {
    ring->capacity = slots(ring_bytes, size);
    ring->slot_bytes = slot_bytes(size);
  }
  SharedMap map;
  IndexRing* ring;
};

Row run(Session& s, const Plan& p) {
  const Config& cfg = s.cfg;
  Row r = make_row("floor-ring", "floor: head/tail ring (reference)", "spin", Kind::Floor, p);
  RingMap pings(cfg.lat_ring_bytes, p.size), pongs(cfg.lat_ring_bytes, p.size), stream(cfg.ring_bytes, p.size);
  run_both(
      r, cfg, p, p.ring_warmup, pings, pongs, stream,
      [&](RingMap& m) { return Tx{*m.ring, Waiter(cfg.stall_s, "waiting for ring space")}; },
      [&](RingMap& m) { return Rx{*m.ring, p.size}; });
  return r;
}

const Register reg{{.key = "floor-ring", .order = 22, .kind = Kind::Floor, .run = run}};

}  // namespace
}  // namespace pingpong
